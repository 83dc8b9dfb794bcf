"""Tiny OSCD and SegMunich copies in exactly the official layouts, written with rasterio (GTiff, PNG), plus
the pixel truth they hold, for the converter and job tests."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from pipeline.convert import oscd, segmunich

#: the 13 band files of an ``imgs_*_rect`` folder as the archive ships them (B10 included)
OSCD_FILES = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A")
#: a georeferenced fixture city sits here (UTM 31N, 10 m)
UTM31_EPSG, UTM31_ORIGIN = 32631, (399960.0, 5300040.0)


def write_raster(path: Path, data: np.ndarray, driver: str = "GTiff", epsg: int | None = None,
                 origin: tuple[float, float] | None = None, **profile) -> None:
    """``data (C, H, W)`` -> one raster file (``epsg``/``origin`` give a 10 m georeference)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = data.shape
    geo = {}
    if epsg is not None:
        geo = {"crs": f"EPSG:{epsg}", "transform": from_origin(*origin, 10.0, 10.0)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver=driver, width=w, height=h, count=c, dtype=data.dtype.name,
                           **geo, **profile) as dst:
            dst.write(data)


@dataclass
class OscdCity:
    """What a fixture city holds: ``bands[(date folder, band)] (H, W) uint16`` for all 13 files, the
    change truth ``change (H, W)`` (0 / 1 / 255 ignore), its label file kind and its EPSG code."""

    name: str
    split: str
    bands: dict[tuple[str, str], np.ndarray]
    change: np.ndarray
    label_kind: str
    epsg: int | None


def oscd_city(root: Path, name: str, split: str, h: int, w: int, label_kind: str, seed: int,
              epsg: int | None = None, dates: tuple[str, str] = ("20161130", "20170829")) -> OscdCity:
    """Write one city (both ``_rect`` dates, ``dates.txt``, its label ``cm.png`` (0 / 255, plus 7 and 128:
    any nonzero is change) or ``<city>-cm.tif`` (1 / 2, plus 0 and 3: ignored)) under ``root``."""
    rng = np.random.default_rng(seed)
    images = root / oscd.IMAGES / name
    origin = UTM31_ORIGIN if epsg else None
    bands = {}
    for d in oscd.DATES:
        for b in OSCD_FILES:
            a = rng.integers(1, 60000, (h, w), dtype=np.uint16)
            bands[(d, b)] = a
            write_raster(images / d / f"{b}.tif", a[None], epsg=epsg, origin=origin)
    (images / "dates.txt").write_text(f"date_1: {dates[0]}\ndate_2: {dates[1]}\n")
    cm = root / oscd.LABELS[split] / name / "cm"
    if label_kind == "png":
        raw = rng.choice(np.array([0, 255, 7, 128], np.uint8), (h, w), p=[0.6, 0.3, 0.05, 0.05])
        write_raster(cm / "cm.png", raw[None], driver="PNG")
        change = (raw != 0).astype(np.uint8)
    else:
        raw = rng.choice(np.array([1, 2, 0, 3], np.uint8), (h, w), p=[0.6, 0.3, 0.05, 0.05])
        write_raster(cm / f"{name}-cm.tif", raw[None])
        change = np.select([raw == 1, raw == 2], [0, 1], 255).astype(np.uint8)
    return OscdCity(name, split, bands, change, label_kind, epsg)


def make_oscd(root: Path) -> dict[str, OscdCity]:
    """Three train cities (one georeferenced, one with a ``.tif`` label) and two test cities; sizes that
    16 px tiles do not divide, so crops need padding."""
    specs = [("abudhabi", "train", 40, 37, "png", 32631), ("bercy", "train", 16, 16, "tif", None),
             ("cupertino", "train", 20, 33, "png", None), ("dubai", "test", 35, 18, "tif", None),
             ("lasvegas", "test", 17, 17, "png", None)]
    cities = {n: oscd_city(root, n, s, h, w, k, seed=i, epsg=e) for i, (n, s, h, w, k, e) in enumerate(specs)}
    images = root / oscd.IMAGES
    (images / "train.txt").write_text(",".join(n for n, c in cities.items() if c.split == "train"))
    (images / "test.txt").write_text(",".join(n for n, c in cities.items() if c.split == "test") + "\n")
    return cities


def oscd_canonical(city: OscdCity, date: str) -> tuple[np.ndarray, np.ndarray]:
    """The truth of one date in canonical group order: ``(4, H, W)`` B02 B03 B04 B08, ``(8, H, W)`` B01 B05
    B06 B07 B8A B09 B11 B12."""
    g10 = np.stack([city.bands[(date, b)] for b in ("B02", "B03", "B04", "B08")])
    g20 = np.stack([city.bands[(date, b)] for b in ("B01", "B05", "B06", "B07", "B8A", "B09", "B11", "B12")])
    return g10, g20


@dataclass
class SegImage:
    """A fixture SegMunich image: ``bands (10, H, W)`` in file order, ``raw (H, W)`` label codes and the class
    mask ``mask (H, W)`` they mean (codes outside the table -> 255)."""

    split: str
    stem: str
    bands: np.ndarray
    raw: np.ndarray
    mask: np.ndarray


#: raw code -> class id, written out by hand from the official loader (21->1, …, 14->10; 0, 5, 11, 12 kept)
SEG_TRUTH = {0: 0, 21: 1, 22: 2, 23: 3, 31: 4, 5: 5, 32: 6, 33: 7, 41: 8, 13: 9, 14: 10, 11: 11, 12: 12}


def seg_image(root: Path, split: str, stem: str, seed: int, unknown: tuple[int, ...] = (99,)) -> SegImage:
    """Write one image (10 bands, pixel-interleaved) and its label (every known code, plus ``unknown``)."""
    rng = np.random.default_rng(seed)
    size = segmunich.SIZE
    bands = rng.integers(1, 60000, (10, size, size), dtype=np.uint16)
    codes = np.array(list(SEG_TRUTH) + list(unknown), np.uint8)
    raw = rng.choice(codes, (size, size)).astype(np.uint8)
    base = root / segmunich.ROOT / split
    write_raster(base / "img" / f"{stem}.tif", bands, interleave="pixel")
    write_raster(base / "label" / f"{stem}.tif", raw[None])
    mask = np.vectorize(lambda c: SEG_TRUTH.get(int(c), 255), otypes=[np.uint8])(raw)
    return SegImage(split, stem, bands, raw, mask)


def make_segmunich(root: Path, train=("0", "1", "2", "3"), test=("0", "7")) -> dict[str, SegImage]:
    """A SegMunich copy under ``root/TUM_128``; returns its images by sample id (``<split>_<stem>``)."""
    out = {}
    for split, stems in (("train", train), ("test", test)):
        for i, stem in enumerate(stems):
            out[f"{split}_{stem}"] = seg_image(root, split, stem, seed=100 * (split == "test") + i)
        lists = root / segmunich.ROOT / "dataset"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    return out

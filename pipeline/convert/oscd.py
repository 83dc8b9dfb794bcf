"""OSCD (Onera Satellite Change Detection, Daudt et al. 2018): two-date change detection, 24 cities.

Read exactly as the three archives unpack side by side under ``--source``::

    Onera Satellite Change Detection dataset - Images/
        train.txt, test.txt             one line each: comma-separated city names (14 train, 10 test)
        <city>/imgs_1_rect/B01.tif … B12.tif, B8A.tif   13 single-band files, all on one 10 m grid
        <city>/imgs_2_rect/…            the same for date 2
        <city>/dates.txt                ``date_1: YYYYMMDD`` / ``date_2: YYYYMMDD``
    Onera Satellite Change Detection dataset - Train Labels/<city>/cm/cm.png | <city>-cm.tif
    Onera Satellite Change Detection dataset - Test Labels/<city>/cm/cm.png | <city>-cm.tif

(``imgs_1/``, ``imgs_2/`` at native resolution and ``pair/`` previews are not read.) Facts as in torchgeo's
``datasets/oscd.py`` and the dataset authors' loader: ``cm.png`` holds 0 (no change) and 255 (change) and
any nonzero value counts as change; ``<city>-cm.tif`` holds 1 (no change) and 2 (change). Copies in the wild
lack one or the other, so the driver lists each city's ``cm/`` folder and reads ``cm.png`` when it is there,
else the ``.tif``; a value of the ``.tif`` other than 1 / 2 is :data:`~pipeline.shards.IGNORE_INDEX`.

* **Pairs.** One city = one :class:`Item`; its two dates are the two S2 slots of each sample (T = 2, slot 0 =
  date 1), ``s2_doy`` from ``dates.txt`` (0 = unknown when the file is absent).
* **Bands.** Canonical order at 10 m: ``s2_10m`` B02 B03 B04 B08, ``s2_20m`` B01 B05 B06 B07 B8A B09 B11 B12
  declared ``gsd`` 10 (``_rect`` resamples every band onto the 10 m grid); B10 (cirrus) is dropped.
* **Level-1C.** The images are top-of-atmosphere L1C products from 2015-2018 (processing baselines before
  04.00), so their DNs are kept exactly as shipped: no harmonisation offset, no atmospheric correction;
  band statistics in the manifest are L1C statistics.
* **Crops.** Images are a few hundred pixels a side; each is cut into ``tile_px`` tiles on a grid from its
  top-left pixel that covers every pixel (``ceil(H / tile_px) x ceil(W / tile_px)`` tiles); pixels past the
  image are zero (nodata) with label ``IGNORE_INDEX``. Sample id ``<city>_<y>_<x>`` (the tile's top-left
  pixel), crop geometry ``(city, y, x, H, W)``, so predictions paste back with
  ``full[y:y + h, x:x + w] = tile[:h, :w]``.
* **Splits.** ``train`` / ``test`` from the txt files; ``val`` = the train cities named in the option
  ``val_cities`` (default none: the official split has no validation part).
"""

from __future__ import annotations

import datetime as _dt
import logging
import posixpath
import re
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from pydantic import Field, field_validator

from pipeline.config import Strict
from pipeline.convert import register
from pipeline.convert.base import (
    BadInput,
    Benchmark,
    Item,
    Raster,
    Sample,
    SourceError,
    as_options,
    read_raster,
    relpath,
    to_dn,
)
from pipeline.shards import IGNORE_INDEX, S2_10M_BANDS, S2_20M_BANDS, BenchmarkInfo
from pipeline.stac import Reject

log = logging.getLogger(__name__)

IMAGES = "Onera Satellite Change Detection dataset - Images"
LABELS = {"train": "Onera Satellite Change Detection dataset - Train Labels",
          "test": "Onera Satellite Change Detection dataset - Test Labels"}
DATES = ("imgs_1_rect", "imgs_2_rect")
#: the band files read per date, in canonical group order (B10 is not read)
BANDS_10M, BANDS_20M = S2_10M_BANDS, S2_20M_BANDS
INFO = BenchmarkInfo("oscd", "change", ("no change", "change"))


class OSCDOptions(Strict):
    """``--set options.*`` of ``jobs.convert --benchmark oscd``."""

    #: side of the output tiles at 10 m (even, as every shard tile); each image is cut into tiles this size
    tile_px: int = Field(default=128, ge=8, le=2048, multiple_of=2)
    #: train cities (names as in ``train.txt``) written as the ``val`` split instead
    val_cities: tuple[str, ...] = ()

    @field_validator("val_cities")
    @classmethod
    def _unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        dup = sorted({c for c in v if v.count(c) > 1})
        if dup:
            raise ValueError(f"val_cities names {dup} more than once")
        return v


class Tile(NamedTuple):
    """A tile's top-left pixel in its image."""

    y: int
    x: int


def tiles(h: int, w: int, side: int) -> list[Tile]:
    """Top-left pixels of the ``side`` tiles covering an ``h x w`` image: ``y = 0, side, 2 side, …`` while
    ``y < h`` (likewise ``x``), row by row; ``ceil(h / side) * ceil(w / side)`` tiles, the last row and
    column reaching past the image when ``side`` does not divide it."""
    if h < 1 or w < 1 or side < 1:
        raise ValueError(f"tiles need positive sizes, got h={h} w={w} side={side}")
    return [Tile(y, x) for y in range(0, h, side) for x in range(0, w, side)]


def crop(a: np.ndarray, y: int, x: int, side: int, fill) -> np.ndarray:
    """``a[..., y:y + side, x:x + side]`` padded with ``fill`` to ``side x side`` past the image edge."""
    part = a[..., y:y + side, x:x + side]
    out = np.full(a.shape[:-2] + (side, side), fill, a.dtype)
    out[..., :part.shape[-2], :part.shape[-1]] = part
    return out


def parse_cities(text: str) -> list[str]:
    """``train.txt`` / ``test.txt`` (one line of comma-separated city names) -> names in file order, once."""
    names = [c.strip() for c in re.split(r"[,\n]", text) if c.strip()]
    return list(dict.fromkeys(names))


def parse_dates(text: str, path: str) -> np.ndarray:
    """``dates.txt`` (``date_1: 20161130`` / ``date_2: 20170829``) -> ``(2,) int16`` days of year."""
    found = dict(re.findall(r"date_([12])\s*:\s*(\d{8})", text))
    try:
        days = [_dt.datetime.strptime(found[k], "%Y%m%d").timetuple().tm_yday for k in ("1", "2")]
    except (KeyError, ValueError) as e:
        raise BadInput("unreadable_file",
                       f"{path}: expected 'date_1: YYYYMMDD' and 'date_2: YYYYMMDD'") from e
    return np.array(days, np.int16)


#: PNG band count -> its colour bands (grey, grey + alpha, RGB, RGBA: the four PNG colour types)
PNG_COLOUR = {1: [0], 2: [0], 3: [0, 1, 2], 4: [0, 1, 2]}


def change_mask(r: Raster, name: str) -> np.ndarray:
    """A label raster -> ``(H, W) uint8`` 0 no change / 1 change / ``IGNORE_INDEX``.

    ``cm.png``: any nonzero value of a colour band is change (a copy saved as RGB(A) or grey + alpha counts
    its colour, not its opaque alpha band). ``<city>-cm.tif``: 1 no change, 2 change, anything else
    ignored."""
    c = r.data.shape[0]
    if name.endswith(".png"):
        if c not in PNG_COLOUR:
            raise BadInput("bad_shape", f"{name}: {c} bands, expected 1-4 (grey / RGB, maybe with alpha)")
        return (r.data[PNG_COLOUR[c]] != 0).any(axis=0).astype(np.uint8)
    if c != 1:
        raise BadInput("bad_shape", f"{name}: {c} bands, expected 1")
    raw = r.data[0]
    out = np.full(raw.shape, IGNORE_INDEX, np.uint8)
    out[raw == 1], out[raw == 2] = 0, 1
    return out


def list_items(source: str, options: OSCDOptions | Mapping | None, fs) -> tuple[list[Item], list[Reject]]:
    """Cities of ``train.txt`` / ``test.txt`` -> one :class:`Item` each (files: both dates' folders,
    ``dates.txt``, the label); reads the two split files and lists the label folders, nothing else.
    A city without a label file, or listed in both split files, is a reject; a missing split file or a
    ``val_cities`` name that is no train city is a :class:`SourceError`."""
    opts = as_options(OSCDOptions, options)
    images = posixpath.join(source, IMAGES)
    splits: dict[str, list[str]] = {}
    for split in ("train", "test"):
        path = posixpath.join(images, f"{split}.txt")
        try:
            splits[split] = parse_cities(fs.cat_file(path).decode())
        except FileNotFoundError:
            raise SourceError(f"{IMAGES}/{split}.txt not found: --source must be the folder that holds "
                              f"{IMAGES!r} and the label folders") from None
    unknown = sorted(set(opts.val_cities) - set(splits["train"]))
    if unknown:
        raise SourceError(f"options.val_cities: {unknown} are not train cities "
                          f"(train.txt: {splits['train']})")
    labels = {split: _label_files(fs, posixpath.join(source, folder)) for split, folder in LABELS.items()}
    items, rejects = [], []
    both = set(splits["train"]) & set(splits["test"])
    for split, cities in splits.items():
        for city in cities:
            if city in both:
                if split == "train":
                    rejects.append(Reject("sample", city, "excluded",
                                          "listed in both train.txt and test.txt"))
                continue
            label = _label_path(city, labels[split]) or _label_path(city, labels["test" if split == "train"
                                                                                   else "train"])
            if label is None:
                rejects.append(Reject("sample", city, "missing_file",
                                      f"no {city}/cm/cm.png or {city}/cm/{city}-cm.tif in {LABELS[split]!r}"))
                continue
            city_dir = posixpath.join(images, city)
            files = {d: posixpath.join(city_dir, d) for d in DATES}
            files |= {"dates": posixpath.join(city_dir, "dates.txt"), "label": label}
            out_split = "val" if city in opts.val_cities else split
            items.append(Item(city, out_split, files, {"root": source}))
    return items, rejects


def read_item(item: Item, options: OSCDOptions | Mapping | None, fs) -> list[Sample]:
    """One city -> its tiles as two-slot samples (see the module docstring); ``BadInput`` when a band file or
    the label is missing or unreadable, a date's band files differ in size or are not single-band, or the two
    dates and the label do not share one size."""
    opts = as_options(OSCDOptions, options)
    root = item.extra["root"]
    names = {(d, b): relpath(root, posixpath.join(item.files[d], f"{b}.tif"))
             for d in DATES for b in BANDS_10M + BANDS_20M}
    rasters = {}
    for k, name in names.items():
        rasters[k] = r = read_raster(fs, posixpath.join(item.files[k[0]], f"{k[1]}.tif"), name)
        if r.data.shape[0] != 1:
            raise BadInput("bad_shape", f"{name}: {r.data.shape[0]} bands, expected 1")
    first = (DATES[0], "B02")
    h, w = rasters[first].data.shape[1:]
    for k, r in rasters.items():
        if r.data.shape[1:] != (h, w):
            raise BadInput("bad_shape", f"{names[k]}: {r.data.shape[2]}x{r.data.shape[1]} px, but "
                                        f"{names[first]} is {w}x{h} (all bands of both dates share one grid)")
    label_name = relpath(root, item.files["label"])
    label = change_mask(read_raster(fs, item.files["label"], label_name), label_name)
    if label.shape != (h, w):
        raise BadInput("bad_shape", f"{label_name}: {label.shape[1]}x{label.shape[0]} px, images are {w}x{h}")
    s2 = {g: np.stack([np.stack([to_dn(rasters[(d, b)].data[0], names[(d, b)]) for b in bands])
                       for d in DATES])
          for g, bands in (("10m", BANDS_10M), ("20m", BANDS_20M))}  # (2, C, H, W) each
    doy = _doy(fs, item.files["dates"], relpath(root, item.files["dates"]))
    sources = [relpath(root, item.files[d]) for d in DATES]
    side, out = opts.tile_px, []
    for t in tiles(h, w, side):
        out.append(Sample(
            sample_id=f"{item.id}_{t.y}_{t.x}", split=item.split,
            s2_10m=crop(s2["10m"], t.y, t.x, side, 0), s2_20m=crop(s2["20m"], t.y, t.x, side, 0),
            label=crop(label, t.y, t.x, side, IGNORE_INDEX), sources=sources, s2_doy=doy,
            s2_valid=np.ones(2, bool), crop=(item.id, t.y, t.x, h, w),
            **tile_georef(rasters[first], t, side),
        ))
    return out


def _label_files(fs, root: str) -> set[str]:
    """Every file path under a label folder (one listing); empty when the folder is absent."""
    try:
        return set(fs.find(root))
    except FileNotFoundError:
        return set()


def _label_path(city: str, files: set[str]) -> str | None:
    """The city's label file among ``files``: ``cm/cm.png`` first (what the authors' and torchgeo's loaders
    read), else ``cm/<city>-cm.tif``."""
    for name in ("cm.png", f"{city}-cm.tif"):
        hit = [f for f in files if f.endswith(f"/{city}/cm/{name}")]
        if hit:
            return sorted(hit)[0]  # several copies under one folder: the same pick on every run
    return None


def tile_georef(r: Raster, t: Tile, side: int) -> dict:
    """The :class:`Sample` georeference of the ``side`` tile at ``t`` of raster ``r``: its top-left corner,
    the WGS84 centre (``Raster.georef`` of the tile); the defaults (0, NaN) for a raster without a CRS."""
    if not r.epsg:
        return {}
    a, b, c, d, e, f = r.transform[:6]
    shifted = (a, b, c + a * t.x + b * t.y, d, e, f + d * t.x + e * t.y)
    return Raster(np.empty((1, side, side), np.uint8), r.epsg, shifted).georef()


def _doy(fs, path: str, name: str) -> np.ndarray:
    try:
        text = fs.cat_file(path).decode(errors="replace")
    except FileNotFoundError:
        log.warning("%s not found: s2_doy is 0 (unknown) for this city", name)
        return np.zeros(2, np.int16)
    return parse_dates(text, name)


BENCHMARK = register(Benchmark(INFO, tile_px=OSCDOptions().tile_px, max_slots=2, s2_20m_gsd=10.0,
                               list_items=list_items, read_item=read_item, options=OSCDOptions))

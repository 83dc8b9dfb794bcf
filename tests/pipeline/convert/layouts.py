"""Tiny copies of EuroSAT-MS and BigEarthNet (v2 "reBEN" and v1) in exactly their official layouts.

Real GeoTIFFs (rasterio, with CRS and transform); every pixel value is a function of the file (seeded by
its name), so tests compare converted bands against what was written, pixel for pixel. Each builder
returns what it wrote (paths and arrays) for the assertions.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
from rasterio.transform import from_origin

EUROSAT_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A")
BEN_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
#: BigEarthNet band -> native pixels a side of its 1200 m patch
BEN_NATIVE = {"B02": 120, "B03": 120, "B04": 120, "B08": 120, "B05": 60, "B06": 60, "B07": 60, "B8A": 60,
              "B11": 60, "B12": 60, "B01": 20, "B09": 20}


def pixels(name: str, shape: tuple[int, ...], dtype=np.uint16, lo: int = 1, hi: int = 10000) -> np.ndarray:
    """Values fixed by ``name`` alone (so a test can rebuild what a file holds)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if np.dtype(dtype).kind == "f":
        return rng.uniform(-30.0, 5.0, shape).astype(dtype)
    return rng.integers(lo, hi, shape).astype(dtype)


def write_tif(path: Path, data: np.ndarray, *, epsg: int = 32631, x: float = 500000.0, y: float = 5500000.0,
              res: float = 10.0) -> Path:
    """``data (C, H, W)`` or ``(H, W)`` as a GeoTIFF at ``(x, y)`` (top-left) with pixels of ``res`` m."""
    a = data[None] if data.ndim == 2 else data
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=a.shape[1], width=a.shape[2], count=a.shape[0],
                       dtype=a.dtype, crs=f"EPSG:{epsg}", transform=from_origin(x, y, res, res)) as dst:
        dst.write(a)
    return path


# -------------------------------------------------------------------------------------------- EuroSAT


@dataclass
class EuroSATCopy:
    root: Path  # the source root given to the job
    class_root: Path  # the folder holding the class folders
    images: dict[str, np.ndarray] = field(default_factory=dict)  # stem -> (13, 64, 64) as written
    origins: dict[str, tuple[float, float]] = field(default_factory=dict)  # stem -> (x_min, y_max)


def make_eurosat(root: Path, per_class: dict[str, int], *, nested: bool = False, size: int = 64,
                 epsg: int = 32631) -> EuroSATCopy:
    """``root/EuroSAT_MS/<Class>/<Class>_<n>.tif`` (n from 1), or torchgeo's deeper nesting with
    ``nested``; 13 uint16 bands, each image at its own place on the 10 m grid."""
    class_root = root / ("ds/images/remote_sensing/otherDatasets/sentinel_2/tif" if nested else "EuroSAT_MS")
    copy = EuroSATCopy(root, class_root)
    k = 0
    for cls, n in per_class.items():
        for i in range(1, n + 1):
            stem = f"{cls}_{i}"
            data = pixels(stem, (13, size, size))
            x, y = 400000.0 + 640.0 * k, 5600000.0 - 640.0 * (k % 7)
            write_tif(class_root / cls / f"{stem}.tif", data, epsg=epsg, x=x, y=y)
            copy.images[stem], copy.origins[stem] = data, (x, y)
            k += 1
    return copy


def write_torchgeo_splits(root: Path, splits: dict[str, list[str]], ext: str = ".jpg") -> dict[str, str]:
    """torchgeo's ``eurosat-{split}.txt``: one file name a line (``.jpg``, as its lists name them)."""
    files = {}
    for split, stems in splits.items():
        name = f"eurosat-{split}.txt"
        (root / name).write_text("".join(f"{s}{ext}\n" for s in stems))
        files[split] = name
    return files


def write_spectralgpt_splits(root: Path, splits: dict[str, list[str]],
                             classes: tuple[str, ...]) -> dict[str, str]:
    """SpectralGPT's lists: ``tif/<Class>/<Class>_<n>.tif<TAB><label>`` lines."""
    files = {}
    for split, stems in splits.items():
        name = f"txt_file/{split}_euro_result.txt"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for s in stems:
            cls = s.rsplit("_", 1)[0]
            lines.append(f"tif/{cls}/{s}.tif\t{classes.index(cls) if cls in classes else 99}\n")
        (root / name).write_text("".join(lines))
        files[split] = name
    return files


# ---------------------------------------------------------------------------------------- BigEarthNet


@dataclass
class BenPatch:
    """One patch as written: ``bands`` band -> array at the size it was written on."""

    name: str
    split: str
    labels: list[str]
    bands: dict[str, np.ndarray] = field(default_factory=dict)
    s1_name: str | None = None
    s1: dict[str, np.ndarray] = field(default_factory=dict)
    origin: tuple[float, float] = (0.0, 0.0)


def _write_ben_bands(folder: Path, name: str, origin, sizes: dict[str, int],
                     skip=()) -> dict[str, np.ndarray]:
    out = {}
    for b in BEN_BANDS:
        if b in skip:
            continue
        n = sizes[b]
        data = pixels(f"{name}_{b}", (n, n))
        write_tif(folder / f"{name}_{b}.tif", data, epsg=32633, x=origin[0], y=origin[1], res=1200.0 / n)
        out[b] = data
    return out


def s2_name_v2(k: int, tile: str = "T33UUP") -> str:
    return f"S2A_MSIL2A_20170613T101031_N9999_R022_{tile}_{26 + k}_57"


def s1_name_v2(k: int) -> str:
    return f"S1A_IW_GRDH_1SDV_20170613T165043_33UUP_{61 + k}_39"


def make_ben_v2(root: Path, patches: list[dict], *, all_120: bool = False, flags: bool = True,
                s1: bool = True) -> dict[str, BenPatch]:
    """reBEN: ``BigEarthNet-S2/<tile>/<patch>/<patch>_<band>.tif`` at native size (every band at 120 px with
    ``all_120``), ``BigEarthNet-S1/<scene>/<s1 patch>/<s1 patch>_{VV,VH}.tif`` (float32 dB) and
    ``metadata.parquet`` (``patch_id, labels, split, country, s1_name`` + the snow/cloud flags with
    ``flags``). ``patches``: dicts with ``labels``, ``split`` and optionally ``snow``, ``cloud``,
    ``skip_bands``, ``no_s1``, ``name``."""
    out: dict[str, BenPatch] = {}
    rows = []
    for k, spec in enumerate(patches):
        name = spec.get("name") or s2_name_v2(k)
        tile = "_".join(name.split("_")[:-2])
        origin = (300000.0 + 1200.0 * k, 5800000.0)
        p = BenPatch(name, spec["split"], list(spec["labels"]), origin=origin, s1_name=s1_name_v2(k))
        sizes = {b: 120 for b in BEN_BANDS} if all_120 else BEN_NATIVE
        p.bands = _write_ben_bands(root / "BigEarthNet-S2" / tile / name, name, origin, sizes,
                                   spec.get("skip_bands", ()))
        if s1 and not spec.get("no_s1"):
            scene = "_".join(p.s1_name.split("_")[:-3])
            for pol in ("VV", "VH"):
                data = pixels(f"{p.s1_name}_{pol}", (120, 120), np.float32)
                write_tif(root / "BigEarthNet-S1" / scene / p.s1_name / f"{p.s1_name}_{pol}.tif", data,
                          epsg=32633, x=origin[0], y=origin[1])
                p.s1[pol] = data
        row = {"patch_id": name, "labels": p.labels, "split": spec["split"], "country": "Austria",
               "s1_name": p.s1_name, "s2v1_name": f"S2A_MSIL2A_20170613T101031_{26 + k}_57"}
        if flags:
            row["contains_seasonal_snow"] = bool(spec.get("snow", False))
            row["contains_cloud_or_shadow"] = bool(spec.get("cloud", False))
        rows.append(row)
        out[name] = p
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, root / "metadata.parquet")
    return out


def s2_name_v1(k: int) -> str:
    return f"S2A_MSIL2A_20170613T101031_{61 + k}_39"


def make_ben_v1(root: Path, patches: list[dict], *,
                all_120: bool = False) -> tuple[dict[str, BenPatch], dict]:
    """v1: ``BigEarthNet-v1.0/<name>/<name>_<band>.tif`` + ``<name>_labels_metadata.json`` (43-class CLC
    names) and split CSVs (``bigearthnet-{split}.csv``: ``<s2 name>,<s1 name>`` lines, as torchgeo's).
    ``patches``: dicts with ``labels`` (43-class names), ``split`` (``None``: in no CSV) and optionally
    ``skip_bands``, ``bad_json``. Returns the patches and ``options.split_files``."""
    out: dict[str, BenPatch] = {}
    csv: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for k, spec in enumerate(patches):
        name = spec.get("name") or s2_name_v1(k)
        origin = (600000.0 + 1200.0 * k, 5200000.0)
        p = BenPatch(name, spec["split"], list(spec["labels"]), origin=origin)
        folder = root / "BigEarthNet-v1.0" / name
        sizes = {b: 120 for b in BEN_BANDS} if all_120 else BEN_NATIVE
        p.bands = _write_ben_bands(folder, name, origin, sizes, spec.get("skip_bands", ()))
        corners = {"ulx": origin[0], "uly": origin[1], "lrx": origin[0] + 1200, "lry": origin[1] - 1200}
        meta = {"labels": p.labels, "coordinates": corners,
                "projection": "", "tile_source": "S2A_MSIL2A_20170613T101031_N0205_R022_T33UUP",
                "acquisition_date": "2017-06-13 10:10:31"}
        text = "{not json" if spec.get("bad_json") else json.dumps(meta, indent=4)
        (folder / f"{name}_labels_metadata.json").write_text(text)
        if spec["split"]:
            csv[spec["split"]].append(f"{name},S1A_IW_GRDH_1SDV_20170613T165043_33UUP_{61 + k}_39")
        out[name] = p
    files = {}
    for split, lines in csv.items():
        (root / f"bigearthnet-{split}.csv").write_text("".join(f"{x}\n" for x in lines))
        files[split] = f"bigearthnet-{split}.csv"
    return out, files

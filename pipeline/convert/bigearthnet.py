"""BigEarthNet (multi-label scene classification, the official 19 classes) as users unpack it: v2 and v1.

**v2 ("reBEN")**: ``metadata.parquet`` (``patch_id``, ``labels`` as 19-class names, ``split`` train /
validation / test, ``s1_name``, and in full copies ``contains_seasonal_snow`` / ``contains_cloud_or_shadow``)
and ``BigEarthNet-S2/<tile>/<patch_id>/<patch_id>_<band>.tif`` with ``<tile>`` the patch id without its two
trailing grid numbers; S1 in ``BigEarthNet-S1/<scene>/<s1_name>/<s1_name>_{VV,VH}.tif`` (float32 dB,
120 px) with ``<scene>`` the S1 name without its last three fields. Patches flagged with snow or
cloud/shadow, and those listed in ``metadata_for_patches_with_snow_cloud_or_shadow.parquet`` when the copy
has it, are rejected as ``excluded``; a copy whose metadata lacks the flag columns flags nothing.

**v1**: ``BigEarthNet-v1.0/<name>/<name>_<band>.tif`` + ``<name>_labels_metadata.json`` (``labels``: 43-class
CLC names, mapped to the 19 classes by the official table, 11 of them dropped), and split CSVs
(``options.split_files``; a line is ``<s2 name>[,<s1 name>]``); a patch in no CSV is ``excluded``. With an
S1 name and ``BigEarthNet-S1-v1.0/<s1 name>/<s1 name>_{VV,VH}.tif`` present, S1 is read too.

Bands: one file per band, uint16, at the native 1200 m patch grids (B02 B03 B04 B08: 120 px; B05 B06 B07 B8A
B11 B12: 60 px; B01 B09: 20 px). Each is read onto its group's grid whatever grid the copy ships it on:
``s2_10m (1, 4, 120, 120)``, ``s2_20m (1, 8, 60, 60)`` (declared gsd 20); a coarser file is replicated
onto it (the 60 m bands 3 x 3, exact), a finer one (some copies resample every band to 120 px) averaged
over the pixel areas. No B10 in either version.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
import re
from typing import Literal

import numpy as np
from pydantic import model_validator

from pipeline.config import Strict
from pipeline.convert import register
from pipeline.convert.base import BadInput, Benchmark, Item, Sample, SourceError, read_raster
from pipeline.shards import S2_10M_BANDS, S2_20M_BANDS, BenchmarkInfo
from pipeline.stac import Reject

#: the official 19-class nomenclature, in its order (label_indices.json of the BigEarthNet 19-class models;
#: torchgeo ``BigEarthNet.class_sets[19]``) -- not alphabetical
CLASSES = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)

#: v1's 43 CLC level-3 names -> index into :data:`CLASSES`, or None for the 11 the 19-class nomenclature drops
CLC43_TO_19: dict[str, int | None] = {
    "Continuous urban fabric": 0,
    "Discontinuous urban fabric": 0,
    "Industrial or commercial units": 1,
    "Road and rail networks and associated land": None,
    "Port areas": None,
    "Airports": None,
    "Mineral extraction sites": None,
    "Dump sites": None,
    "Construction sites": None,
    "Green urban areas": None,
    "Sport and leisure facilities": None,
    "Non-irrigated arable land": 2,
    "Permanently irrigated land": 2,
    "Rice fields": 2,
    "Vineyards": 3,
    "Fruit trees and berry plantations": 3,
    "Olive groves": 3,
    "Pastures": 4,
    "Annual crops associated with permanent crops": 3,
    "Complex cultivation patterns": 5,
    "Land principally occupied by agriculture, with significant areas of natural vegetation": 6,
    "Agro-forestry areas": 7,
    "Broad-leaved forest": 8,
    "Coniferous forest": 9,
    "Mixed forest": 10,
    "Natural grassland": 11,
    "Moors and heathland": 12,
    "Sclerophyllous vegetation": 12,
    "Transitional woodland/shrub": 13,
    "Beaches, dunes, sands": 14,
    "Bare rock": None,
    "Sparsely vegetated areas": 11,
    "Burnt areas": None,
    "Inland marshes": 15,
    "Peatbogs": 15,
    "Salt marshes": 16,
    "Salines": 16,
    "Intertidal flats": None,
    "Water courses": 17,
    "Water bodies": 17,
    "Coastal lagoons": 18,
    "Estuaries": 18,
    "Sea and ocean": 18,
}

SIZE_10M, SIZE_20M = 120, 60
#: pixels a side a band file may have: the patch's 1200 m at 10, 20 or 60 m
NATIVE_SIDES = (120, 60, 20)
S2_DIR_V2, S1_DIR_V2, S2_DIR_V1, S1_DIR_V1 = "BigEarthNet-S2", "BigEarthNet-S1", "BigEarthNet-v1.0", \
    "BigEarthNet-S1-v1.0"
#: reBEN's ``split`` values -> ours
SPLITS = {"train": "train", "validation": "val", "val": "val", "test": "test"}
FLAG_COLUMNS = ("contains_seasonal_snow", "contains_cloud_or_shadow")
_DATE = re.compile(r"_(\d{8})T\d{6}")


class BigEarthNetOptions(Strict):
    """``--set options.*`` of BigEarthNet."""

    #: ``auto``: v2 when ``metadata`` is under the source, else v1 when ``BigEarthNet-v1.0/`` is
    version: Literal["auto", "v2", "v1"] = "auto"
    #: v2: the metadata table and the table of snow/cloud/shadow patches (used when present), relative to
    #: the source root
    metadata: str = "metadata.parquet"
    excluded_metadata: str | None = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
    #: read Sentinel-1 where the copy has it (else ``s1`` stays NaN, ``s1_valid`` False)
    s1: bool = True
    #: v1: split -> CSV (relative to the source root); v1 needs at least one
    split_files: dict[Literal["train", "val", "test"], str] | None = None

    @model_validator(mode="after")
    def _v1_splits(self):
        if self.version == "v1" and not self.split_files:
            raise ValueError("version v1 needs split_files (split -> CSV of patch names), e.g. {train: "
                             "bigearthnet-train.csv, val: bigearthnet-val.csv, test: bigearthnet-test.csv}")
        return self


def _join(source: str, rel: str) -> str:
    return rel if rel.startswith("/") else f"{source.rstrip('/')}/{rel}"


def _doy(name: str) -> int:
    """Day of year of the acquisition date in a BigEarthNet patch or S1 name (0 when it has none)."""
    m = _DATE.search(name)
    if not m:
        return 0
    try:
        return dt.datetime.strptime(m[1], "%Y%m%d").timetuple().tm_yday
    except ValueError:
        return 0


# ------------------------------------------------------------------------------------------- listing


def list_items(source: str, options: BigEarthNetOptions, fs) -> tuple[list[Item], list[Reject]]:
    """v2 from ``metadata.parquet``, v1 from the patch folders and split CSVs (see the module docstring)."""
    version = options.version
    if version == "auto":
        if fs.exists(_join(source, options.metadata)):
            version = "v2"
        elif fs.exists(_join(source, S2_DIR_V1)):
            version = "v1"
        else:
            raise SourceError(f"neither {options.metadata} (v2) nor {S2_DIR_V1}/ (v1) found")
        if version == "v1" and not options.split_files:
            raise SourceError(f"{S2_DIR_V1}/ found (v1), which needs options.split_files (split -> CSV)")
    return _list_v2(source, options, fs) if version == "v2" else _list_v1(source, options, fs)


def _read_parquet(fs, path: str, what: str, required: tuple[str, ...], optional: tuple[str, ...]):
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            names = set(pf.schema_arrow.names)
            missing = [c for c in required if c not in names]
            if missing:
                raise SourceError(f"{what} has no column {missing} (columns: {sorted(names)})")
            return pf.read(columns=[c for c in (*required, *optional) if c in names]).to_pydict()
    except FileNotFoundError:
        raise SourceError(f"{what} not found") from None


def _list_v2(source: str, options: BigEarthNetOptions, fs) -> tuple[list[Item], list[Reject]]:
    meta = _read_parquet(fs, _join(source, options.metadata), options.metadata,
                         ("patch_id", "labels", "split"), ("s1_name", *FLAG_COLUMNS))
    excluded: set[str] = set()
    if options.excluded_metadata and fs.exists(_join(source, options.excluded_metadata)):
        excluded = set(_read_parquet(fs, _join(source, options.excluded_metadata), options.excluded_metadata,
                                     ("patch_id",), ())["patch_id"])
    with_s1 = options.s1 and "s1_name" in meta and fs.exists(_join(source, S1_DIR_V2))
    index = {c: i for i, c in enumerate(CLASSES)}
    items: list[Item] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    n = len(meta["patch_id"])
    for i in range(n):
        pid = meta["patch_id"][i]
        seen.add(pid)
        flags = [c for c in FLAG_COLUMNS if c in meta and meta[c][i]]
        if flags or pid in excluded:
            why = ", ".join(flags) if flags else f"listed in {options.excluded_metadata}"
            rejects.append(Reject("sample", pid, "excluded", f"snow/cloud/shadow patch ({why})"))
            continue
        split = SPLITS.get(str(meta["split"][i]))
        if split is None:
            rejects.append(Reject("sample", pid, "excluded", f"split {meta['split'][i]!r} is not train, "
                                                             "validation or test"))
            continue
        names = list(meta["labels"][i] or [])
        unknown = [x for x in names if x not in index]
        if unknown:
            rejects.append(Reject("sample", pid, "unknown_class",
                                  f"labels {unknown} are not BigEarthNet's 19 classes"))
            continue
        tile = "_".join(pid.split("_")[:-2])
        files = {"s2": f"{source.rstrip('/')}/{S2_DIR_V2}/{tile}/{pid}"}
        s1_name = meta["s1_name"][i] if with_s1 else None
        if s1_name:
            scene = "_".join(s1_name.split("_")[:-3])
            files["s1"] = f"{source.rstrip('/')}/{S1_DIR_V2}/{scene}/{s1_name}"
        items.append(Item(pid, split, files, {"labels": sorted(index[x] for x in names)}))
    for pid in sorted(excluded - seen):  # patches only the snow/cloud table lists
        rejects.append(Reject("sample", pid, "excluded", f"snow/cloud/shadow patch (listed in "
                                                         f"{options.excluded_metadata})"))
    return items, rejects


def _list_v1(source: str, options: BigEarthNetOptions, fs) -> tuple[list[Item], list[Reject]]:
    root = _join(source, S2_DIR_V1)
    try:
        folders = {posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)}
    except FileNotFoundError:
        raise SourceError(f"{S2_DIR_V1}/ not found") from None
    listed: dict[str, tuple[str, str | None]] = {}
    for split in ("train", "val", "test"):
        rel = (options.split_files or {}).get(split)
        if rel is None:
            continue
        try:
            text = fs.cat_file(_join(source, rel)).decode()
        except FileNotFoundError:
            raise SourceError(f"options.split_files.{split}: {rel} not found under the source") from None
        for line in text.splitlines():
            fields = [f.strip() for f in line.split(",") if f.strip()]
            if not fields:
                continue
            if fields[0] in listed and listed[fields[0]][0] != split:
                raise SourceError(f"options.split_files: {fields[0]} is listed in both "
                                  f"{listed[fields[0]][0]} and {split}")
            listed[fields[0]] = (split, fields[1] if len(fields) > 1 else None)
    with_s1 = options.s1 and fs.exists(_join(source, S1_DIR_V1))
    items: list[Item] = []
    rejects: list[Reject] = []
    for name, (split, s1_name) in sorted(listed.items()):
        if name not in folders:
            rejects.append(Reject("sample", name, "missing_file", f"listed in the {split} CSV: "
                                                                  f"{S2_DIR_V1}/{name}/ not found"))
            continue
        files = {"s2": f"{root}/{name}", "labels": f"{root}/{name}/{name}_labels_metadata.json"}
        if with_s1 and s1_name:
            files["s1"] = f"{_join(source, S1_DIR_V1)}/{s1_name}"
        items.append(Item(name, split, files, {}))
    for name in sorted(folders - set(listed)):
        rejects.append(Reject("sample", name, "excluded", "in no split CSV"))
    return items, rejects


# ------------------------------------------------------------------------------------------- reading


def onto_grid(a: np.ndarray, side: int) -> np.ndarray:
    """A square band ``a (n, n)`` on the ``side`` px grid of the same 1200 m patch: replicated ``side / n``
    times when coarser (exact), averaged over ``n / side`` squared pixel areas when finer (rounded half up);
    ``(side, side)`` uint16."""
    n = a.shape[0]
    if n == side:
        return a.astype(np.uint16, copy=False)
    if side % n == 0:
        k = side // n
        return np.repeat(np.repeat(a, k, axis=0), k, axis=1).astype(np.uint16)
    k = n // side
    s = a.astype(np.uint32).reshape(side, k, side, k).sum(axis=(1, 3))
    return ((s + (k * k) // 2) // (k * k)).astype(np.uint16)


def _band(fs, folder: str, name: str, band: str, rel: str):
    r = read_raster(fs, f"{folder}/{name}_{band}.tif", f"{rel}/{name}_{band}.tif")
    c, h, w = r.data.shape
    if c != 1 or h != w or h not in NATIVE_SIDES:
        raise BadInput("bad_shape", f"{rel}/{name}_{band}.tif: {r.data.shape} (bands, h, w), expected one "
                                    f"band of {' / '.join(f'{s} x {s}' for s in NATIVE_SIDES)} px")
    a = r.data[0]
    if a.dtype.kind not in "ui" or (a.size and (a.min() < 0 or a.max() > 65535)):
        raise BadInput("bad_shape", f"{rel}/{name}_{band}.tif: dtype {a.dtype} with values outside uint16")
    return r, a


def _rel(path: str, parts: int) -> str:
    return "/".join(path.rstrip("/").split("/")[-parts:])


def read_item(item: Item, options: BigEarthNetOptions, fs) -> list[Sample]:
    """One patch -> one sample (module docstring); S1 when its folder resolves."""
    folder = item.files["s2"]
    v1 = "labels" in item.files
    rel = _rel(folder, 2 if v1 else 3)
    s10 = np.zeros((1, len(S2_10M_BANDS), SIZE_10M, SIZE_10M), np.uint16)
    s20 = np.zeros((1, len(S2_20M_BANDS), SIZE_20M, SIZE_20M), np.uint16)
    georef = None
    for j, b in enumerate(S2_10M_BANDS):
        r, a = _band(fs, folder, item.id, b, rel)
        s10[0, j] = onto_grid(a, SIZE_10M)
        if georef is None:  # the patch's corner and centre, whatever grid B02 comes on
            georef = r.georef()
    for j, b in enumerate(S2_20M_BANDS):
        _, a = _band(fs, folder, item.id, b, rel)
        s20[0, j] = onto_grid(a, SIZE_20M)
    labels = _labels_v1(fs, item) if v1 else list(item.extra["labels"])
    multi = np.zeros(len(CLASSES), np.uint8)
    multi[labels] = 1
    sources = [rel]
    s1 = s1_doy = None
    if options.s1 and "s1" in item.files:
        got = _s1(fs, item.files["s1"], 2 if v1 else 3)
        if got is not None:
            s1, s1_doy = got, np.array([_doy(item.files["s1"].rsplit("/", 1)[-1])], np.int16)
            sources.append(_rel(item.files["s1"], 2 if v1 else 3))
    return [Sample(
        sample_id=item.id, split=item.split, s2_10m=s10, s2_20m=s20, label=multi, sources=sources,
        s2_doy=np.array([_doy(item.id)], np.int16), s1=s1, s1_doy=s1_doy, gsd=10.0, **(georef or {}),
    )]


def _labels_v1(fs, item: Item) -> list[int]:
    path = item.files["labels"]
    rel = _rel(path, 2)
    try:
        meta = json.loads(fs.cat_file(path))
        names = list(meta["labels"])
    except FileNotFoundError:
        raise BadInput("missing_file", f"{rel} not found") from None
    except (ValueError, KeyError, TypeError) as e:
        raise BadInput("unreadable_file",
                       f"{rel}: no labels list ({type(e).__name__}: {str(e)[:100]})") from None
    unknown = [x for x in names if x not in CLC43_TO_19]
    if unknown:
        raise BadInput("unknown_class",
                       f"{rel}: labels {unknown} are not CLC level-3 classes of BigEarthNet v1")
    return sorted({CLC43_TO_19[x] for x in names} - {None})


def _s1(fs, folder: str, parts: int) -> np.ndarray | None:
    """``(1, 2, 120, 120)`` float16 VV, VH in dB, or None when the S1 patch is not in the copy."""
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    rel = _rel(folder, parts)
    paths = [f"{folder}/{name}_{pol}.tif" for pol in ("VV", "VH")]
    if not any(fs.exists(p) for p in paths):
        return None
    out = np.zeros((1, 2, SIZE_10M, SIZE_10M), np.float16)
    for j, (pol, p) in enumerate(zip(("VV", "VH"), paths, strict=True)):
        r = read_raster(fs, p, f"{rel}/{name}_{pol}.tif")
        if r.data.shape != (1, SIZE_10M, SIZE_10M):
            raise BadInput("bad_shape", f"{rel}/{name}_{pol}.tif: {r.data.shape} (bands, h, w), expected "
                                        f"(1, {SIZE_10M}, {SIZE_10M})")
        out[0, j] = r.data[0].astype(np.float16)
    return out


INFO = BenchmarkInfo("bigearthnet", "multilabel", CLASSES)
BENCHMARK = register(Benchmark(info=INFO, tile_px=SIZE_10M, max_slots=1, s2_20m_gsd=20.0,
                               list_items=list_items, read_item=read_item, options=BigEarthNetOptions))

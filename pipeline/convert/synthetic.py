"""The synthetic benchmark: labelled chips derived from a synthetic archive's land-cover truth, a fair test
of representation learning (scene classification, segmentation or a two-date change task).

Source: an archive written by ``python -m pipeline.synthetic`` (local or ``s3://``); only its truth is
read, ``truth/classes.json`` and ``truth/<tile>_landcover.tif`` (uint8, 10 m, the tile's grid). Each truth
tile is cut into ``tile_px`` chips on its grid. The chips' pixels are rendered by
:mod:`pipeline.synthetic.textures` from their truth: every class shares one mean spectrum (and one mean
S1 backscatter) on every date, classes differ in texture, layout, phenology and radar, so mean-spectrum
features cannot separate them (``tests/pipeline/convert/test_synthetic.py`` measures it) while a single
S2 date separates five of the seven classes and the S2 time series + S1 separate all seven.

Every sample has ``slots`` S2 dates (seeded days of year spread over the year, 20 m bands the 2 x 2 block
mean of the 10 m rendering on the native 20 m grid) and as many S1 dates (two days later).

Tasks (``options.task``, one per output):

* ``classification``: the chip's majority class (chips whose majority covers less than ``purity`` are not
  listed); at most ``per_class`` chips per class (seeded choice), so the classes are balanced;
* ``segmentation``: every chip, the class of every pixel;
* ``change``: every chip, T = 2 (slot 0 = date 1, slot 1 = date 2); on date 2 a seeded blob of the chip
  (``change_fraction`` of its chips) turns into another class, ``label_change`` 1 where the class differs.
  The change alters texture only, never the mean spectrum.

Splits: seeded hash of the chip id (``val_fraction``, ``test_fraction``), the same on every machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
from typing import Literal

import numpy as np
import rasterio
from pydantic import Field, model_validator
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from pipeline.config import Strict
from pipeline.convert import register
from pipeline.convert.base import BadInput, Benchmark, Item, Sample, as_options
from pipeline.shards import BenchmarkInfo
from pipeline.stac import Reject
from pipeline.synthetic.surface import LANDCOVER_CLASSES, value_noise
from pipeline.synthetic.textures import render_chip

#: class names in id order (label = truth id - 1)
CLASSES = tuple(LANDCOVER_CLASSES[k] for k in sorted(LANDCOVER_CLASSES))
TILE_PX = 32
#: S2 band positions of the contract's groups (S2 order B01 ... B12)
IDX_10M = (1, 2, 3, 7)
IDX_20M = (0, 4, 5, 6, 8, 9, 10, 11)
_TRUTH = posixpath.join("truth", "{tile}_landcover.tif")


class SyntheticOptions(Strict):
    """``--set options.*`` of the synthetic benchmark."""

    task: Literal["classification", "segmentation", "change"] = "classification"
    tile_px: int = Field(default=TILE_PX, ge=8, le=256)
    #: S2 (and S1) dates per sample; ``change`` always has 2
    slots: int = Field(default=4, ge=1, le=12)
    seed: int = 0
    val_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    #: classification: the majority class must cover at least this share of the chip
    purity: float = Field(default=0.6, gt=0.0, le=1.0)
    #: classification: at most this many chips per class (balanced classes); None: all
    per_class: int | None = Field(default=None, ge=1)
    #: change: share of chips with a changed region on date 2
    change_fraction: float = Field(default=0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check(self):
        if self.tile_px % 2:
            raise ValueError(f"tile_px must be even (the 20 m grid), got {self.tile_px}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"val_fraction + test_fraction must be < 1, got {self.val_fraction} + "
                             f"{self.test_fraction}")
        return self

    @property
    def num_slots(self) -> int:
        return 2 if self.task == "change" else self.slots


def _unit_hash(*parts) -> float:
    """A number in [0, 1) from ``parts`` (sha256: the same on every machine and Python)."""
    h = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def _split(o: SyntheticOptions, chip_id: str) -> str:
    u = _unit_hash(o.seed, "split", chip_id)
    return "test" if u < o.test_fraction else "val" if u < o.test_fraction + o.val_fraction else "train"


def _read_truth(fs, path: str, window: Window | None = None) -> tuple[np.ndarray, dict]:
    """(land cover (H, W) uint8, facts: epsg, transform) of a truth COG on ``fs``."""
    try:
        with fs.open(path, "rb") as f, rasterio.open(f) as r:
            arr = r.read(1, window=window)
            return arr, {"epsg": r.crs.to_epsg() or 0, "transform": tuple(r.transform)[:6],
                         "shape": (r.height, r.width)}
    except FileNotFoundError as e:
        raise BadInput("missing_file", f"{path}: {e}") from e
    except rasterio.RasterioIOError as e:
        raise BadInput("unreadable_file", f"{path}: {e}") from e


def _tiles(source: str, fs) -> list[str]:
    """Truth tile names from ``truth/classes.json`` (must list the archive's classes) + the truth files."""
    cpath = posixpath.join(source, "truth", "classes.json")
    if not fs.exists(cpath):
        raise FileNotFoundError(f"no truth/classes.json under {source!r}: not a synthetic archive")
    classes = {c["id"]: c["name"] for c in json.loads(fs.cat_file(cpath))["classes"]}
    if classes != LANDCOVER_CLASSES:
        raise ValueError(f"truth/classes.json lists {classes}, this converter knows {LANDCOVER_CLASSES}")
    names = sorted(posixpath.basename(p) for p in fs.ls(posixpath.join(source, "truth"), detail=False))
    return [n.removesuffix("_landcover.tif") for n in names if n.endswith("_landcover.tif")]


def list_items(source: str, options, fs) -> tuple[list[Item], list[Reject]]:
    """One item per chip (classification: per pure chip, balanced by ``per_class``); sorted by id."""
    o = as_options(SyntheticOptions, options)
    source = source.rstrip("/")
    items: list[Item] = []
    rejects: list[Reject] = []
    n = o.tile_px
    for tile in _tiles(source, fs):
        path = posixpath.join(source, _TRUTH.format(tile=tile))
        try:
            lc, facts = _read_truth(fs, path)
        except BadInput as e:
            rejects.append(e.reject(tile))
            continue
        rows, cols = lc.shape[0] // n, lc.shape[1] // n
        chips = lc[: rows * n, : cols * n].reshape(rows, n, cols, n).transpose(0, 2, 1, 3)
        a, b, c, d, e, f = facts["transform"]
        cx = c + (np.arange(cols) + 0.5) * n * a
        cy = f + (np.arange(rows) + 0.5) * n * e
        gx, gy = np.meshgrid(cx, cy)  # (rows, cols) chip centres in the tile's CRS
        lon, lat = (np.asarray(v).reshape(rows, cols)
                    for v in warp_transform(f"EPSG:{facts['epsg']}", "EPSG:4326", gx.ravel(), gy.ravel()))
        for r in range(rows):
            for col in range(cols):
                counts = np.bincount(chips[r, col].ravel(), minlength=max(LANDCOVER_CLASSES) + 1)
                major = int(counts.argmax())
                cid = f"{tile}_{r:04d}_{col:04d}"
                extra = {"tile": tile, "row": r, "col": col, "epsg": facts["epsg"],
                         "x_min": c + col * n * a, "y_max": f + r * n * e, "label": major - 1,
                         "lon": float(lon[r, col]), "lat": float(lat[r, col])}
                if o.task == "classification" and (major == 0 or counts[major] < o.purity * n * n):
                    continue
                items.append(Item(cid, _split(o, cid), {"truth": path}, extra))
    if o.task == "classification" and o.per_class is not None:
        keep = []
        for k in range(len(CLASSES)):
            of_k = [it for it in items if it.extra["label"] == k]
            of_k.sort(key=lambda it: _unit_hash(o.seed, "pick", it.id))
            keep += of_k[: o.per_class]
        items = keep
    return sorted(items, key=lambda it: it.id), rejects


def _dates(o: SyntheticOptions, chip_id: str) -> np.ndarray:
    """Sorted days of year of the chip's S2 slots: one per 365/T-day season, seeded jitter."""
    t = o.num_slots
    r = np.random.default_rng([o.seed, int(_unit_hash(o.seed, "doy", chip_id) * 2**32)])
    return np.sort(((np.arange(t) + r.uniform(0, 1, t)) * 365.0 / t).astype(np.int64) + 1).clip(1, 365)


def _changed(lc: np.ndarray, r: np.random.Generator) -> np.ndarray:
    """Date-2 land cover: a smooth seeded blob (~30 % of the chip) turned into one other class."""
    n = lc.shape[0]
    blob = value_noise(r, (n, n), n / 3.0, octaves=1)
    m = blob > np.quantile(blob, 0.7)
    present = np.bincount(lc[m].ravel(), minlength=max(LANDCOVER_CLASSES) + 1)
    choices = [k for k in sorted(LANDCOVER_CLASSES) if k != int(present.argmax())]
    out = lc.copy()
    out[m] = choices[int(r.integers(len(choices)))]
    return out


def read_item(item: Item, options, fs) -> list[Sample]:
    """Render the chip of ``item`` from its truth window (see the module docstring)."""
    o = as_options(SyntheticOptions, options)
    n = o.tile_px
    x = item.extra
    lc, _ = _read_truth(fs, item.files["truth"], Window(x["col"] * n, x["row"] * n, n, n))
    if lc.shape != (n, n):
        raise BadInput("bad_shape", f"truth window of {item.id} is {lc.shape}, expected {(n, n)}")
    if lc.min() == 0 and o.task == "classification":
        raise BadInput("unknown_class", f"{item.id} has no-data (0) truth pixels")
    r = np.random.default_rng([o.seed, int(_unit_hash(o.seed, "chip", item.id) * 2**32)])
    doys = _dates(o, item.id)
    t = len(doys)
    lcs = np.broadcast_to(lc, (t, n, n))
    label: np.ndarray | int
    if o.task == "change":
        after = _changed(lc, r) if _unit_hash(o.seed, "change", item.id) < o.change_fraction else lc
        lcs = np.stack([lc, after])
        label = (after != lc).astype(np.uint8)
    elif o.task == "segmentation":
        label = np.where(lc == 0, 255, lc.astype(np.int64) - 1).astype(np.uint8)
    else:
        label = int(x["label"])
    chip = render_chip(lcs, doys, r)
    s20 = chip.s2[:, list(IDX_20M)].astype(np.float32).reshape(t, len(IDX_20M), n // 2, 2, n // 2, 2)
    return [Sample(
        sample_id=item.id, split=item.split,
        s2_10m=np.ascontiguousarray(chip.s2[:, list(IDX_10M)]),
        s2_20m=np.clip(np.rint(s20.mean((3, 5))), 1, 65535).astype(np.uint16),
        label=label, sources=[item.files["truth"]],
        s2_doy=doys.astype(np.int16), s2_valid=np.ones(t, bool),
        s1=chip.s1.astype(np.float16), s1_doy=(doys + 2).clip(1, 366).astype(np.int16),
        s1_valid=np.ones(t, bool),
        epsg=int(x["epsg"]), x_min=float(x["x_min"]), y_max=float(x["y_max"]), gsd=10.0,
        lon=float(x["lon"]), lat=float(x["lat"]),
    )]


def info_for(task: str) -> BenchmarkInfo:
    """The :class:`BenchmarkInfo` of one task of the synthetic benchmark."""
    return BenchmarkInfo("synthetic", task, ("no change", "change") if task == "change" else CLASSES)


def configure(options) -> Benchmark:
    """The benchmark's facts for ``options`` (task, tile side, slots): what the writer declares."""
    o = as_options(SyntheticOptions, options)
    return dataclasses.replace(BENCHMARK, info=info_for(o.task), tile_px=o.tile_px, max_slots=o.num_slots)


BENCHMARK = register(Benchmark(
    info=info_for("classification"), tile_px=TILE_PX, max_slots=4, s2_20m_gsd=20.0,
    list_items=list_items, read_item=read_item, options=SyntheticOptions, configure=configure,
))

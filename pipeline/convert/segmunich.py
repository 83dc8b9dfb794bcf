"""SegMunich (SpectralGPT's Munich land-cover segmentation benchmark): 128 x 128 px Sentinel-2, 13 classes.

Read exactly as the archive unpacks (``--source`` is ``TUM_128/`` or the folder holding it)::

    TUM_128/dataset/train.txt, test.txt     one file stem per line
    TUM_128/<split>/img/<stem>.tif          128 x 128, 10 bands pixel-interleaved (H x W x C):
                                            B01 B02 B03 B04 B05 B06 B07 B8A B11 B12
    TUM_128/<split>/label/<stem>.tif        128 x 128, 1 band of raw land-cover codes

Facts as in the official loader (SpectralGPT ``downstream_tasks/SegMunich/TUM_128.py``): split lists and
paths as above; raw codes remapped ``21→1, 22→2, 23→3, 31→4, 32→6, 33→7, 41→8, 13→9, 14→10``, codes
0, 5, 11, 12 kept. That loader leaves every other value as it is (so a stray raw 1..10 would silently
join a remapped class); here any other code is :data:`~pipeline.shards.IGNORE_INDEX` and counted (logged
per image, :func:`remap`), and an image with no known code at all is rejected (``unknown_class``).

* **Bands.** Canonical order at 10 m: ``s2_10m`` B02 B03 B04 B08, ``s2_20m`` B01 B05 B06 B07 B8A B09 B11 B12
  declared ``gsd`` 10 (the dataset ships every band on one 10 m grid); B08 and B09 are not in the dataset
  and are all 0 (nodata). DNs are kept as shipped.
* **Samples.** One image = one single-date sample (T = 1, day of year unknown), id ``<folder>_<stem>``
  (``train_…`` / ``test_…``: the folder the file lives in, so ids stay unique and stable whatever the split).
* **Splits.** ``train`` / ``test`` from the txt files; ``val``: a seeded ``val_fraction`` of the train stems
  (default 0: the official split has no validation part), the same on every machine.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from pydantic import Field

from pipeline.config import Strict
from pipeline.convert import register
from pipeline.convert.base import (
    BadInput,
    Benchmark,
    Item,
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

ROOT = "TUM_128"
SIZE = 128
#: band order inside each image file
FILE_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12")
CLASSES = ("Background", "Arable land", "Permanent crops", "Pastures", "Forests", "Surface water", "Shrub",
           "Open spaces", "Wetlands", "Mine dump", "Artificial vegetation", "Urban fabric", "Buildings")
#: raw label code -> class id (every code not here is IGNORE_INDEX)
REMAP = {0: 0, 21: 1, 22: 2, 23: 3, 31: 4, 5: 5, 32: 6, 33: 7, 41: 8, 13: 9, 14: 10, 11: 11, 12: 12}
INFO = BenchmarkInfo("segmunich", "segmentation", CLASSES)


class SegMunichOptions(Strict):
    """``--set options.*`` of ``jobs.convert --benchmark segmunich``."""

    #: share of the train stems written as the ``val`` split (0: none)
    val_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    #: seed of that choice: the train stems ordered by ``sha256(f"{seed}/{stem}")``, the first
    #: ``round(val_fraction * n)`` go to val (depends on nothing but the stems and the seed)
    seed: int = 0


class Remapped(NamedTuple):
    """A label image remapped: ``mask (H, W) uint8`` class ids or ``IGNORE_INDEX``; ``unknown_px`` pixels
    held a code outside :data:`REMAP`, the distinct such codes being ``unknown_codes``."""

    mask: np.ndarray
    unknown_px: int
    unknown_codes: tuple[int, ...]


def remap(raw: np.ndarray, name: str = "label") -> Remapped:
    """Raw SegMunich codes ``(H, W)`` (any integer dtype) -> :class:`Remapped` through :data:`REMAP`."""
    raw = np.asarray(raw)
    if not np.issubdtype(raw.dtype, np.integer):
        raise BadInput("unreadable_file", f"{name}: label pixel type {raw.dtype} is not a class code")
    known = np.isin(raw, list(REMAP))
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for code, cls in REMAP.items():
        lut[code] = cls
    mask = np.where(known, lut[np.where(known, raw, 0).astype(np.intp)], IGNORE_INDEX).astype(np.uint8)
    codes = tuple(int(c) for c in np.unique(raw[~known]))
    return Remapped(mask, int((~known).sum()), codes)


def list_items(source: str, options: SegMunichOptions | Mapping | None,
               fs) -> tuple[list[Item], list[Reject]]:
    """Stems of ``dataset/train.txt`` and ``dataset/test.txt`` -> one :class:`Item` each (image + label path);
    reads the two split files only (and checks once where ``TUM_128`` is). A stem listed twice in one file is
    written once."""
    opts = as_options(SegMunichOptions, options)
    root = _root(source, fs)
    stems = {}
    for split in ("train", "test"):
        path = posixpath.join(root, "dataset", f"{split}.txt")
        try:
            text = fs.cat_file(path).decode()
        except FileNotFoundError:
            raise SourceError(f"{ROOT}/dataset/{split}.txt not found: --source must be {ROOT}/ or the folder "
                              "that holds it") from None
        stems[split] = list(dict.fromkeys(s.strip() for s in text.splitlines() if s.strip()))
    order = sorted(stems["train"], key=lambda s: hashlib.sha256(f"{opts.seed}/{s}".encode()).hexdigest())
    val = set(order[:round(opts.val_fraction * len(order))])
    items = []
    for split, names in stems.items():
        for stem in names:
            files = {role: posixpath.join(root, split, role, f"{stem}.tif") for role in ("img", "label")}
            out = "val" if split == "train" and stem in val else split
            items.append(Item(f"{split}_{stem}", out, files, {"root": root}))
    return items, []


def read_item(item: Item, options: SegMunichOptions | Mapping | None, fs) -> list[Sample]:
    """One image + label -> one sample; ``BadInput`` when a file is missing or unreadable, the image is not
    10 bands of 128 x 128, the label not one band of the same size, or no pixel holds a known code."""
    names = {role: relpath(item.extra["root"], p) for role, p in item.files.items()}
    img = read_raster(fs, item.files["img"], names["img"])
    lab = read_raster(fs, item.files["label"], names["label"])
    if img.data.shape != (len(FILE_BANDS), SIZE, SIZE):
        c, h, w = img.data.shape
        raise BadInput("bad_shape", f"{names['img']}: {c} bands of {w}x{h} px, expected {len(FILE_BANDS)} "
                                    f"bands ({' '.join(FILE_BANDS)}) of {SIZE}x{SIZE}")
    if lab.data.shape != (1, SIZE, SIZE):
        c, h, w = lab.data.shape
        raise BadInput("bad_shape", f"{names['label']}: {c} bands of {w}x{h} px, expected 1 band of "
                                    f"{SIZE}x{SIZE}")
    r = remap(lab.data[0], names["label"])
    if r.unknown_px == SIZE * SIZE:
        raise BadInput("unknown_class",
                       f"{names['label']}: no pixel holds a known code (codes {list(r.unknown_codes)})")
    if r.unknown_px:
        log.warning("%s: %d px with unknown codes %s set to ignore (%d)", names["label"], r.unknown_px,
                    list(r.unknown_codes), IGNORE_INDEX)
    dn = to_dn(img.data, names["img"])
    band = dict(zip(FILE_BANDS, dn, strict=True))
    zero = np.zeros((SIZE, SIZE), np.uint16)
    s2_10m = np.stack([band.get(b, zero) for b in S2_10M_BANDS])[None]  # (1, 4, H, W)
    s2_20m = np.stack([band.get(b, zero) for b in S2_20M_BANDS])[None]  # (1, 8, H, W) on the 10 m grid
    return [Sample(
        sample_id=item.id, split=item.split, s2_10m=s2_10m, s2_20m=s2_20m, label=r.mask,
        sources=[names["img"]], s2_doy=np.zeros(1, np.int16), s2_valid=np.ones(1, bool), **img.georef(),
    )]


def _root(source: str, fs) -> str:
    """``<source>/TUM_128`` when it exists, else ``source`` itself (the user pointed at ``TUM_128/``)."""
    nested = posixpath.join(source, ROOT)
    return nested if fs.isdir(nested) else source


BENCHMARK = register(Benchmark(INFO, tile_px=SIZE, max_slots=1, s2_20m_gsd=10.0,
                               list_items=list_items, read_item=read_item, options=SegMunichOptions))

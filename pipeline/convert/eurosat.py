"""EuroSAT-MS (scene classification, 10 classes) as users unpack it.

Layout: ``EuroSAT_MS/<Class>/<Class>_<n>.tif`` (torchgeo's mirror nests the same class folders deeper, under
``ds/images/remote_sensing/otherDatasets/sentinel_2/tif/``; any depth works). Each file is a 64 x 64,
13-band uint16 GeoTIFF with every band on one 10 m grid, in the file order B01 ... B12 then B8A (index 9 is
B10, which the contract has no place for). Classes are the sorted folder names (ids 0-9).

EuroSAT ships no split. ``options.split_files`` maps our splits to the lists others use, relative to the
source root: torchgeo's ``eurosat-{train,val,test}.txt`` (one file name a line, ``.jpg`` names stand for
the ``.tif``), or SpectralGPT's ``tif/<Class>/<Class>_<n>.tif<TAB><label>`` lines (``train`` + ``test``).
An image in no list is rejected as ``excluded``; a listed one that is not there, ``missing_file``.
Without split files the split is seeded and stratified: within each class images are ordered by
``sha256(f"{seed}/{id}")`` and the first ``test_fraction`` go to test, the next ``val_fraction`` to val,
so it depends on nothing but the ids and the seed (not on listing order, hash seeds or the machine).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.config import Strict
from pipeline.convert import register
from pipeline.convert.base import BadInput, Benchmark, Item, Sample, SourceError, read_raster, relpath
from pipeline.shards import BenchmarkInfo
from pipeline.stac import Reject

#: the sorted folder names of the archive = class ids 0-9
CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
           "PermanentCrop", "Residential", "River", "SeaLake")
#: the band order of the files (B10 at index 9 is dropped)
FILE_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A")
#: file band index of each ``s2_10m`` band (B02 B03 B04 B08) and each ``s2_20m`` band
#: (B01 B05 B06 B07 B8A B09 B11 B12)
IDX_10M = tuple(FILE_BANDS.index(b) for b in ("B02", "B03", "B04", "B08"))
IDX_20M = tuple(FILE_BANDS.index(b) for b in ("B01", "B05", "B06", "B07", "B8A", "B09", "B11", "B12"))
SIZE = 64

_NAME = re.compile(r"^(?P<cls>[A-Za-z]+)_(?P<n>\d+)$")
_TIF = re.compile(r"\.tiff?$", re.IGNORECASE)


class EuroSATOptions(Strict):
    """``--set options.*`` of EuroSAT."""

    #: split -> list file (relative to the source root); None: the seeded stratified split below
    split_files: dict[Literal["train", "val", "test"], str] | None = None
    seed: int = 0
    val_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _fractions(self):
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"val_fraction + test_fraction must be < 1, got {self.val_fraction} + "
                             f"{self.test_fraction}")
        if self.split_files is not None and not self.split_files:
            raise ValueError("split_files must name at least one split (or be null)")
        return self


def _stem(name: str) -> str:
    return _TIF.sub("", posixpath.basename(name))


def _find_images(source: str, fs) -> tuple[str, dict[str, tuple[str, str]]]:
    """``(class root, {stem: (folder name, path)})`` of every GeoTIFF in a folder directly under the class
    root: the directory whose sub-folders named after EuroSAT classes hold ``<Class>_<n>.tif`` files."""
    paths = sorted(p for p in fs.find(source) if _TIF.search(p))
    roots = set()
    for p in paths:
        parent, name = posixpath.split(p)
        m = _NAME.match(_stem(name))
        if m and m["cls"] in CLASSES and posixpath.basename(parent) == m["cls"]:
            roots.add(posixpath.dirname(parent))
    if not roots:
        raise SourceError("no EuroSAT class folders (<Class>/<Class>_<n>.tif, e.g. Forest/Forest_1.tif) "
                          "found")
    if len(roots) > 1:
        copies = sorted(relpath(source, r) for r in roots)
        raise SourceError(f"more than one EuroSAT copy under the source: {copies}")
    root = roots.pop()
    images: dict[str, tuple[str, str]] = {}
    for p in paths:
        parent, name = posixpath.split(p)
        if posixpath.dirname(parent) == root:
            stem = _stem(name)
            if stem in images:
                raise SourceError(f"image {stem!r} occurs twice: {relpath(source, images[stem][1])}, "
                                  f"{relpath(source, p)}")
            images[stem] = (posixpath.basename(parent), p)
    return root, images


def _read_split_files(source: str, files: dict[str, str], fs) -> dict[str, tuple[str, int | None]]:
    """``{stem: (split, label or None)}`` from the split lists (torchgeo names or SpectralGPT lines)."""
    listed: dict[str, tuple[str, int | None]] = {}
    for split in ("train", "val", "test"):
        if split not in files:
            continue
        rel = files[split]
        path = rel if rel.startswith("/") else f"{source.rstrip('/')}/{rel}"
        try:
            text = fs.cat_file(path).decode()
        except FileNotFoundError:
            raise SourceError(f"options.split_files.{split}: {rel} not found under the source") from None
        for line in text.splitlines():
            fields = line.split()
            if not fields:
                continue
            stem = _stem(re.sub(r"\.(jpg|png)$", "", fields[0], flags=re.IGNORECASE))
            label = int(fields[1]) if len(fields) > 1 and fields[1].lstrip("-").isdigit() else None
            if stem in listed and listed[stem][0] != split:
                raise SourceError(f"options.split_files: {stem} is listed in both {listed[stem][0]} and "
                                  f"{split}")
            listed[stem] = (split, label)
    return listed


def seeded_split(ids_by_class: dict[str, list[str]], seed: int, val_fraction: float,
                 test_fraction: float) -> dict[str, str]:
    """``{id: split}``, stratified: per class, ids ordered by ``sha256(f"{seed}/{id}")``; the first
    ``round(n * test_fraction)`` are test, the next ``round(n * val_fraction)`` val, the rest train."""
    out = {}
    for ids in ids_by_class.values():
        order = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}/{i}".encode()).hexdigest())
        n_test, n_val = round(len(order) * test_fraction), round(len(order) * val_fraction)
        for k, i in enumerate(order):
            out[i] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return out


def list_items(source: str, options: EuroSATOptions, fs) -> tuple[list[Item], list[Reject]]:
    """Every image under the class root: an item with its class and split, or a reject (``unknown_class``
    for a folder that is not a EuroSAT class; with split files, ``excluded`` when in no list and
    ``missing_file`` for a listed image that is not there)."""
    _, images = _find_images(source, fs)
    rejects: list[Reject] = []
    known: dict[str, tuple[str, str]] = {}
    for stem, (cls, path) in sorted(images.items()):
        if cls in CLASSES:
            known[stem] = (cls, path)
        else:
            rejects.append(Reject("sample", stem, "unknown_class",
                                  f"{relpath(source, path)}: folder {cls!r} is not a EuroSAT class"))
    if options.split_files:
        listed = _read_split_files(source, dict(options.split_files), fs)
        splits = {}
        for stem, (split, label) in sorted(listed.items()):
            m = _NAME.match(stem)
            if stem in known:
                if label is not None and label != CLASSES.index(known[stem][0]):
                    raise SourceError(f"options.split_files.{split}: label {label} of {stem} is not the id "
                                      f"of its folder {known[stem][0]!r} ({CLASSES.index(known[stem][0])})")
                splits[stem] = split
            elif stem in images:
                continue  # an image of an unknown class: rejected above
            elif m is None or m["cls"] not in CLASSES:
                rejects.append(Reject("sample", stem, "unknown_class",
                                      f"listed in the {split} split file: not a EuroSAT class"))
            else:
                rejects.append(Reject("sample", stem, "missing_file",
                                      f"listed in the {split} split file: {m['cls']}/{stem}.tif not found"))
        for stem in sorted(set(known) - set(splits)):
            rejects.append(Reject("sample", stem, "excluded", "in no split file"))
    else:
        by_class: dict[str, list[str]] = {}
        for stem, (cls, _) in known.items():
            by_class.setdefault(cls, []).append(stem)
        splits = seeded_split(by_class, options.seed, options.val_fraction, options.test_fraction)
    items = [Item(stem, splits[stem], {"image": known[stem][1]}, {"class": known[stem][0]})
             for stem in sorted(splits)]
    return items, rejects


def read_item(item: Item, options: EuroSATOptions, fs) -> list[Sample]:
    """One image -> one sample: ``s2_10m (1, 4, 64, 64)``, ``s2_20m (1, 8, 64, 64)`` (one 10 m grid)."""
    path = item.files["image"]
    rel = "/".join(path.split("/")[-2:])  # <Class>/<Class>_<n>.tif, whatever the depth of the copy
    r = read_raster(fs, path, rel)
    if r.data.shape != (len(FILE_BANDS), SIZE, SIZE):
        raise BadInput("bad_shape", f"{rel}: {r.data.shape} (bands, h, w), expected "
                                    f"({len(FILE_BANDS)}, {SIZE}, {SIZE})")
    if r.data.dtype != np.uint16:
        raise BadInput("bad_shape", f"{rel}: dtype {r.data.dtype}, expected uint16")
    return [Sample(
        sample_id=item.id, split=item.split,
        s2_10m=r.data[list(IDX_10M)][None], s2_20m=r.data[list(IDX_20M)][None],
        label=CLASSES.index(item.extra["class"]), sources=[rel], gsd=10.0, **r.georef(),
    )]


INFO = BenchmarkInfo("eurosat", "classification", CLASSES)
BENCHMARK = register(Benchmark(info=INFO, tile_px=SIZE, max_slots=1, s2_20m_gsd=10.0, list_items=list_items,
                               read_item=read_item, options=EuroSATOptions))

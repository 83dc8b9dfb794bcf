"""Shards -> training samples: the manifest, S2/S1 decoding and normalisation, the per-batch functions
Ray Data runs (``make_*_fn`` factories, testable without a cluster) and the Ray Dataset of a job.

    >>> prep = make_spectralgpt_preprocess_fn(band_stats)     # pyarrow.Table -> dict of numpy
    >>> aug = make_augment_fn(crop=96, seed=0)                # dict of numpy -> dict of torch

``read_s2`` is the one function that knows how a shard stores Sentinel-2 (v1/v2: one 12-band ``s2``
column on the 10 m grid; v3: ``s2_10m`` and ``s2_20m`` at native resolution); ``s2_cube`` makes the
canonical 12-band cube of either (``pipeline.shards.to_cube`` for v3, numpy or torch). Training on GPUs,
the preprocess functions hand the normalised native groups to the workers (``x_10m``/``x_20m``,
``s2_10m``/``s2_20m``) and ``assemble_s2`` builds the cube on the device; on CPU they build it in Ray
Data. The band order is ``pipeline.sensors`` (the shard's), SkySense's subset is the model's
(``models.skysense.S2_BANDS``).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import torch

from models.skysense import S2_BANDS as SKYSENSE_S2_BANDS
from pipeline.config import StorageConfig
from pipeline.sensors import S1, S2
from pipeline.shards import (
    READABLE_VERSIONS,
    S2_10M_BANDS,
    S2_20M_BANDS,
    tensor_field,
    tensor_to_numpy,
    to_cube,
)

if TYPE_CHECKING:
    from jobs.train.configs import TrainConfig

#: the shard's S2 and S1 band order (the one band table, ``pipeline.sensors``)
SHARD_S2_BANDS = S2.band_names
SHARD_S1_BANDS = S1.band_names


def band_indices(bands: Sequence[str], order: Sequence[str] = SHARD_S2_BANDS) -> list[int]:
    """Positions of ``bands`` in ``order``; ValueError naming the unknown band."""
    unknown = [b for b in bands if b not in order]
    if unknown:
        raise ValueError(f"unknown band(s) {unknown}; the shard has {list(order)}")
    return [order.index(b) for b in bands]


# ---------------------------------------------------------------------------------------------
# the manifest and the dataset (driver side)
# ---------------------------------------------------------------------------------------------

def pyarrow_fs(uri: str, storage: StorageConfig):
    """``(pyarrow filesystem, path)`` for a local path or ``s3://`` URI (s3fs configured from
    ``storage`` behind pyarrow's fsspec handler, so Ray Data and Ray Train see the same endpoint)."""
    import pyarrow.fs as pafs

    from pipeline.storage import filesystem, scheme_of

    fs, path = filesystem(uri, storage)
    if scheme_of(uri) == "file":
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


#: v1 stores s2/s1 as FixedShapeTensor, v2 as fixed_size_binary, v3 S2 at native resolution
READABLE_SCHEMA_VERSIONS = READABLE_VERSIONS


def read_manifest(data_uri: str, storage: StorageConfig) -> dict:
    """The ingest's manifest; ValueError if its shard contract is not one this code reads (v1-v3)."""
    from pipeline.storage import filesystem, join

    fs, path = filesystem(join(data_uri, "manifest.json"), storage)
    if not fs.exists(path):
        raise FileNotFoundError(f"no manifest.json under data.path {data_uri!r}")
    manifest = json.loads(fs.cat_file(path))
    if manifest.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
        raise ValueError(f"manifest schema_version {manifest.get('schema_version')!r} is not one of "
                         f"{READABLE_SCHEMA_VERSIONS} (shard contract versions this code reads)")
    return manifest


def read_parquet(paths: Sequence[str], **kwargs):
    """``ray.data.read_parquet`` through Ray Data's V1 Parquet reader.

    Ray Data 2.60's default (V2) lists files through a pool of ``FooterReader`` actors provisioned anew
    for every execution, each a fresh Python process. Training starts an execution every epoch and
    fine-tuning one every evaluation: on 2 CPUs that was 3.4 s a pass against V1's 0.23 s for an
    8-row val split (``bench/reread.py``), and the process churn slowed node-loss sweeps past their
    deadline. V1 lists on the caller and reads in tasks; the shard list is known, so nothing is lost.
    """
    import ray.data

    ctx = ray.data.DataContext.get_current()
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        return ray.data.read_parquet(list(paths), **kwargs)
    finally:
        ctx.use_datasource_v2 = v2


def build_dataset(cfg: TrainConfig, manifest: Mapping[str, Any], *, preprocess: Callable | None = None,
                  columns: Sequence[str] = (), split: str | None = None, train: bool = True):
    """Ray Dataset of preprocessed samples: projected read in a seeded file order reshuffled every
    epoch, then the family's preprocess function (normalisation from the manifest). Cached
    (``data.cache``): materialised, and its block order reshuffled every epoch.

    Fine-tuning: ``preprocess`` replaces the family's function, ``columns`` are read as well, ``split``
    keeps the rows of one benchmark split; ``train=False`` (evaluation) reads in file order and, cached,
    is materialised without a block-order shuffle.
    """
    from ray.data import FileShuffleConfig, RandomSeedConfig

    from jobs.train.family import family_of
    from pipeline.storage import join

    fam = family_of(cfg.model.name)
    fs, root = pyarrow_fs(cfg.data.path, cfg.data.storage)
    paths = [join(root, s["path"]) for s in manifest["shards"]]
    fn = preprocess or fam.make_preprocess(manifest, cfg)
    cols = list(dict.fromkeys([*s2_columns(manifest["schema_version"]), *fam.columns, *columns]))
    ds = read_parquet(
        paths,
        filesystem=fs,
        columns=cols,
        shuffle=FileShuffleConfig(seed=cfg.seed, reseed_after_execution=True) if train else None,
    )
    if cfg.data.preserve_order:  # this dataset's own context: its reads, filter, preprocess, materialise
        ds.context.execution_options.preserve_order = True
    if split is not None:
        ds = ds.filter(expr=f"split == {split!r}")
    ds = ds.map_batches(fn, batch_format="pyarrow", batch_size=cfg.data.preprocess_batch_size)
    if not cfg.data.cache:
        # Streaming: file order (above) + each worker's local shuffle buffer. A block-order
        # shuffle here would be an all-to-all barrier materialising every block before batch one.
        return ds
    if not train:
        return ds.materialize()
    # Materialised once; reshuffling its block order per epoch is then only metadata.
    return ds.materialize().randomize_block_order(
        seed=RandomSeedConfig(seed=cfg.seed, reseed_after_execution=True)
    )


# ---------------------------------------------------------------------------------------------
# shards -> numpy (the per-batch functions Ray Data runs)
# ---------------------------------------------------------------------------------------------


def column_to_numpy(col: pa.Array | pa.ChunkedArray, field: pa.Field | None = None) -> np.ndarray:
    """An Arrow column holding fixed-shape tensors -> one ndarray ``(N, *shape)``.

    Accepts the shard contract's tensor columns: v2 ``fixed_size_binary`` with the dtype/shape in
    ``field``'s metadata (required for those; see ``pipeline.shards.tensor_to_numpy``) and v1 pyarrow
    ``FixedShapeTensor``; also Ray's tensor extension, nested (fixed-size) lists and plain primitive
    columns.
    """
    if isinstance(col.type, pa.FixedShapeTensorType) or pa.types.is_fixed_size_binary(col.type):
        return tensor_to_numpy(col, field)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    n = len(col)
    if isinstance(col.type, pa.ExtensionType):
        if hasattr(col, "to_numpy"):
            try:
                return np.asarray(col.to_numpy(zero_copy_only=False))
            except TypeError:
                return np.asarray(col.to_numpy())
        col = col.storage
    shape: list[int] = [n]
    values = col
    while pa.types.is_fixed_size_list(values.type) or pa.types.is_list(values.type) or pa.types.is_large_list(
        values.type
    ):
        if pa.types.is_fixed_size_list(values.type):
            shape.append(values.type.list_size)
        values = values.flatten()
        if not pa.types.is_fixed_size_list(col.type) and len(shape) == 1:
            shape.append(len(values) // max(n, 1))
    out = values.to_numpy(zero_copy_only=False)
    return out.reshape(shape) if len(shape) > 1 else out


def _table_col(batch: pa.Table | Mapping[str, Any], name: str) -> np.ndarray:
    """Column ``name`` of a batch as numpy. For a ``pa.Table`` the field travels along (the v2 tensor
    columns' dtype/shape metadata); should a reader have dropped that metadata, ``tensor_field``
    rebuilds it from the byte width and the ``{name}_valid`` column's T."""
    if isinstance(batch, pa.Table):
        return column_to_numpy(batch.column(name), tensor_field(batch.schema, name))
    return np.asarray(batch[name])


def _stats(
    band_stats: Mapping[str, Any], modality: str, bands: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    s = band_stats[modality]
    names = list(s["bands"])
    idx = [names.index(b) for b in bands]
    mean = np.asarray(s["mean"], dtype=np.float32)[idx]
    std = np.maximum(np.asarray(s["std"], dtype=np.float32)[idx], 1e-6)
    return mean, std


def normalize_s2(dn: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint16 DN ``(..., C, H, W)`` -> float32 ``(DN − mean) / std`` per band; nodata (0) -> 0."""
    shape = (len(mean), 1, 1)
    out = dn.astype(np.float32)  # one allocation, then in place
    out -= mean.reshape(shape)
    out *= (1.0 / std).reshape(shape)
    np.putmask(out, dn == 0, 0.0)
    return out


def normalize_s1(db: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """dB ``(..., 2, H, W)`` -> float32 standardised; non-finite -> 0."""
    shape = (len(mean), 1, 1)
    out = db.astype(np.float32)
    out -= mean.reshape(shape)
    out *= (1.0 / std).reshape(shape)
    np.putmask(out, ~np.isfinite(out), 0.0)
    return out


#: the columns each family reads besides the Sentinel-2 pixels (``s2_columns``)
SPECTRALGPT_COLUMNS = ("sample_id", "s2_valid", "s2_cloud")
SKYSENSE_COLUMNS = ("s2_doy", "s2_valid", "s1", "s1_doy", "s1_valid", "lon", "lat")
#: per S2 column, its bands (v1/v2 ``s2`` holds all 12 on the 10 m grid)
S2_GROUP_BANDS = {"s2": SHARD_S2_BANDS, "s2_10m": S2_10M_BANDS, "s2_20m": S2_20M_BANDS}


def s2_columns(schema_version: int) -> tuple[str, ...]:
    """The shard columns holding Sentinel-2 pixels in contract ``schema_version``."""
    return ("s2_10m", "s2_20m") if schema_version >= 3 else ("s2",)


def read_s2(batch: pa.Table | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The batch's Sentinel-2 columns as stored, uint16: ``{"s2": (N, T, 12, H, W)}`` (v1/v2) or
    ``{"s2_10m": (N, T, 4, H, W), "s2_20m": (N, T, 8, H', W')}`` (v3)."""
    names = batch.column_names if isinstance(batch, pa.Table) else list(batch)
    return {k: _table_col(batch, k) for k in ("s2", "s2_10m", "s2_20m") if k in names}


def normalize_s2_groups(
    groups: Mapping[str, np.ndarray], band_stats: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """``normalize_s2`` of each group with its own bands' statistics (float32, nodata 0 -> 0)."""
    return {k: normalize_s2(v, *_stats(band_stats, "s2", S2_GROUP_BANDS[k])) for k, v in groups.items()}


def s2_cube(groups: Mapping[str, Any]):
    """The canonical cube ``(..., 12, H, W)`` (``SHARD_S2_BANDS`` order) of ``read_s2``'s groups (or
    their normalised values; numpy or torch): v3 groups upsampled by ``pipeline.shards.to_cube``
    (bilinear, pixel-area aligned), v1/v2 as they are."""
    if "s2" in groups:
        return groups["s2"]
    return to_cube(groups["s2_10m"], groups["s2_20m"])


def assemble_s2(batch: dict[str, Any], prefix: str, bands: Sequence[str]) -> dict[str, Any]:
    """Replace ``{prefix}_10m`` / ``{prefix}_20m`` (normalised native groups, e.g. torch tensors on
    the GPU) by ``prefix``: their cube's ``bands``; a batch without them is returned as it is."""
    if f"{prefix}_10m" not in batch:
        return batch
    out = dict(batch)
    cube = to_cube(out.pop(f"{prefix}_10m"), out.pop(f"{prefix}_20m"))
    idx = band_indices(bands)
    out[prefix] = cube if idx == list(range(len(SHARD_S2_BANDS))) else cube[..., idx, :, :]
    return out


def pick_slots(
    valid: np.ndarray, cloud: np.ndarray, how: str, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """``(row, slot)`` pairs of the S2 slots to use: ``least_cloudy`` / ``random`` valid slot per
    row (slot 0 if none is valid), or ``all`` valid slots (each becomes a sample)."""
    pairs = []
    for i in range(valid.shape[0]):
        ok = np.flatnonzero(valid[i])
        if how == "all":
            pairs += [(i, int(t)) for t in ok]
        elif len(ok) == 0:
            pairs.append((i, 0))
        elif how == "least_cloudy":
            pairs.append((i, int(ok[np.argmin(cloud[i, ok])])))
        else:
            pairs.append((i, int(rng.choice(ok))))
    return pairs


def make_spectralgpt_preprocess_fn(
    band_stats: Mapping[str, Any],
    bands: Sequence[str] = SHARD_S2_BANDS,
    slot: Literal["least_cloudy", "random", "all"] = "least_cloudy",
    seed: int = 0,
    device_cube: bool = False,
) -> Callable[[pa.Table], dict[str, np.ndarray]]:
    """Shard rows -> ``{"x": (M, C, H, W) float32}``: one S2 date per sample, normalised.
    ``device_cube`` with v3 shards: ``{"x_10m": (M, 4, H, W), "x_20m": (M, 8, H', W')}`` instead,
    for ``assemble_s2`` on the accelerator (all 12 bands).

    ``random`` is seeded by ``seed`` and the batch's sample ids, so re-reading gives the same picks.
    """
    idx = band_indices(bands)

    def fn(batch: pa.Table) -> dict[str, np.ndarray]:
        groups = read_s2(batch)  # each (N, T, C, h, w) uint16
        valid = _table_col(batch, "s2_valid").astype(bool)  # (N, T)
        cloud = _table_col(batch, "s2_cloud").astype(np.float32)  # (N, T)
        ids = _table_col(batch, "sample_id")
        rng = np.random.default_rng([seed, zlib.crc32("".join(map(str, ids[:4])).encode())])
        pairs = pick_slots(valid, cloud, slot, rng)
        rows = np.asarray([p[0] for p in pairs], dtype=np.int64)
        slots = np.asarray([p[1] for p in pairs], dtype=np.int64)
        x = normalize_s2_groups({k: g[rows, slots] for k, g in groups.items()}, band_stats)  # (M, C, h, w)
        if device_cube and "s2" not in x:
            return {"x_10m": x["s2_10m"], "x_20m": x["s2_20m"]}
        return {"x": np.ascontiguousarray(s2_cube(x)[:, idx])}

    return fn


def make_skysense_preprocess_fn(
    band_stats: Mapping[str, Any], bands: Sequence[str] = SKYSENSE_S2_BANDS, device_cube: bool = False
) -> Callable[[pa.Table], dict[str, np.ndarray]]:
    """Shard rows -> the SkySense batch (numpy): ``s2 (N, T, 10, H, W) f32, s2_doy (N, T) i64,
    s2_valid (N, T) bool, s1 (N, T, 2, H, W) f32, s1_doy, s1_valid, lonlat (N, 2) f32``.
    Invalid slots are zeroed. ``device_cube`` with v3 shards: ``s2_10m (N, T, 4, H, W)`` and
    ``s2_20m (N, T, 8, H', W')`` instead of ``s2``, for ``assemble_s2`` on the accelerator."""
    idx = band_indices(bands)
    m1, s1std = _stats(band_stats, "s1", SHARD_S1_BANDS)

    def fn(batch: pa.Table) -> dict[str, np.ndarray]:
        s1 = _table_col(batch, "s1")  # (N, T, 2, H, W)
        s2_valid = _table_col(batch, "s2_valid").astype(bool)
        s1_valid = _table_col(batch, "s1_valid").astype(bool)
        v = s2_valid[:, :, None, None, None]
        x2 = {k: g * v for k, g in normalize_s2_groups(read_s2(batch), band_stats).items()}
        x1 = normalize_s1(s1, m1, s1std) * s1_valid[:, :, None, None, None]
        lonlat = np.stack([_table_col(batch, "lon"), _table_col(batch, "lat")], axis=1).astype(np.float32)
        s2 = x2 if device_cube and "s2" not in x2 else {"s2": np.ascontiguousarray(s2_cube(x2)[:, :, idx])}
        return {
            **s2,
            "s2_doy": _table_col(batch, "s2_doy").astype(np.int64),
            "s2_valid": s2_valid,
            "s1": x1.astype(np.float32),
            "s1_doy": _table_col(batch, "s1_doy").astype(np.int64),
            "s1_valid": s1_valid,
            "lonlat": lonlat,
        }

    return fn


def augment_sample(
    arrays: Sequence[np.ndarray], y0: int, x0: int, crop: int, k: int, flip: bool
) -> list[np.ndarray]:
    """Crop ``[y0:y0+crop, x0:x0+crop]``, rotate by ``k × 90°`` and optionally flip left-right the
    last two axes of every array of one sample, so bands, dates and modalities stay aligned. An
    array at a coarser grid (e.g. a v3 20 m group: half the side of the largest) gets the same
    ground window: offsets and crop divided by its factor (they are multiples of it)."""
    side = max(a.shape[-1] for a in arrays)
    out = []
    for a in arrays:
        f = side // a.shape[-1]
        a = a[..., y0 // f : (y0 + crop) // f, x0 // f : (x0 + crop) // f]
        a = np.rot90(a, k, axes=(-2, -1))
        out.append(np.ascontiguousarray(a[..., ::-1] if flip else a))
    return out


def _sample_key(a: np.ndarray) -> int:
    """A sample's own seed: CRC-32 of about 1024 of its values, evenly spaced (cheap for big samples)."""
    flat = a.reshape(-1)
    return zlib.crc32(np.ascontiguousarray(flat[:: max(1, flat.size // 1024)]).data)


def make_augment_fn(
    crop: int,
    flip: bool = True,
    rot90: bool = True,
    seed: int = 0,
    spatial_keys: Sequence[str] | None = None,
) -> Callable[[Mapping[str, np.ndarray]], dict[str, torch.Tensor]]:
    """Numpy batch -> torch batch with a random ``crop``, 90° rotation and flip per sample,
    identical across every spatial array of that sample (``spatial_keys``: arrays whose last two
    axes are H, W; default: every array with ≥ 3 dims). Seeded: a new ``seed`` (the loop's, per
    epoch and rank) draws new augmentations. With ``crop`` equal to the tile and both flags off it is
    the identity.

    Each sample's draws come from ``seed`` and the sample's own values (its first spatial array), not
    from one stream: Ray Data calls this in several prefetch threads at once, in no fixed order, so a
    shared generator would hand a sample different augmentations from one run to the next."""

    def fn(batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        keys = list(spatial_keys or [k for k, v in batch.items() if v.ndim >= 3])
        if not keys:
            return {k: torch.as_tensor(v) for k, v in batch.items()}
        n = len(batch[keys[0]])
        h, w = max(batch[k].shape[-2] for k in keys), max(batch[k].shape[-1] for k in keys)
        if crop > min(h, w):
            raise ValueError(f"crop {crop} larger than the tile ({h}×{w})")
        # windows on the coarsest grid's pixels, so every array crops whole pixels
        step = max(w // batch[k].shape[-1] for k in keys)
        if crop % step:
            raise ValueError(f"crop {crop} is not a multiple of {step} "
                             f"(an array has 1/{step} of the tile's side)")
        out = {k: [] for k in keys}
        for i in range(n):
            rng = np.random.default_rng([seed, _sample_key(batch[keys[0]][i])])
            y0 = int(rng.integers(0, (h - crop) // step + 1)) * step
            x0 = int(rng.integers(0, (w - crop) // step + 1)) * step
            k = int(rng.integers(0, 4)) if rot90 else 0
            f = bool(rng.integers(0, 2)) if flip else False
            for key, a in zip(keys, augment_sample([batch[key][i] for key in keys], y0, x0, crop, k, f)):
                out[key].append(a)
        res = {k: torch.from_numpy(np.stack(v)) for k, v in out.items()}
        for k, v in batch.items():
            if k not in res:
                res[k] = torch.as_tensor(np.asarray(v))
        return res

    return fn


# ---------------------------------------------------------------------------------------------
# fine-tuning: labels, change pairs, evaluation batches
# ---------------------------------------------------------------------------------------------


def make_spectralgpt_pair_fn(
    band_stats: Mapping[str, Any], bands: Sequence[str] = SHARD_S2_BANDS, device_cube: bool = False
) -> Callable[[pa.Table], dict[str, np.ndarray]]:
    """Shard rows of a change benchmark -> ``{"x": (N, 2, C, H, W) float32}``: the pair's two S2 dates
    (slot 0 = date 1, slot 1 = date 2), normalised. ``device_cube`` with v3 shards: ``x_10m (N, 2, 4, H, W)``
    and ``x_20m (N, 2, 8, H', W')`` instead, for ``assemble_s2`` on the accelerator."""
    idx = band_indices(bands)

    def fn(batch: pa.Table) -> dict[str, np.ndarray]:
        x = normalize_s2_groups({k: g[:, :2] for k, g in read_s2(batch).items()}, band_stats)
        if device_cube and "s2" not in x:
            return {"x_10m": x["s2_10m"], "x_20m": x["s2_20m"]}
        return {"x": np.ascontiguousarray(s2_cube(x)[:, :, idx])}

    return fn


def read_labels(batch: pa.Table | Mapping[str, Any], task: str, column: str) -> np.ndarray:
    """A batch's label column: ``(N,)`` int64 class ids (classification), ``(N, K)`` uint8 multi-hot or
    ``(N, H, W)`` uint8 masks (``pipeline.shards.IGNORE_INDEX`` = not labelled)."""
    if task == "classification":
        return _table_col(batch, column).astype(np.int64)
    if isinstance(batch, pa.Table):
        return column_to_numpy(batch.column(column), batch.schema.field(column))
    return np.asarray(batch[column])


def make_finetune_preprocess_fn(
    base: Callable[[pa.Table], dict[str, np.ndarray]], task: str, label_column: str, keep_ids: bool = False
) -> Callable[[pa.Table], dict[str, np.ndarray]]:
    """``base`` (a family's preprocess, one sample per row) + ``label`` (``read_labels``) and, for
    evaluation, ``sample_id``. Non-finite lon/lat (a benchmark without georeference) become (0, 0), one
    region for every such sample."""

    def fn(batch: pa.Table) -> dict[str, np.ndarray]:
        out = dict(base(batch))
        n = len(next(iter(out.values())))
        if n != batch.num_rows:
            raise ValueError(f"the preprocess function made {n} samples of {batch.num_rows} labelled rows")
        if "lonlat" in out:
            out["lonlat"] = np.nan_to_num(out["lonlat"], nan=0.0, posinf=0.0, neginf=0.0)
        out["label"] = read_labels(batch, task, label_column)
        if keep_ids:
            out["sample_id"] = np.asarray(_table_col(batch, "sample_id")).astype(str)
        return out

    return fn


def make_eval_collate_fn(
    multiple: int, ignore_index: int
) -> Callable[[Mapping[str, np.ndarray]], dict[str, Any]]:
    """Numpy evaluation batch -> torch batch, every pixel kept: spatial arrays (≥ 3 dims, the last two
    H, W) are zero-padded right and bottom to a multiple of ``multiple`` (the patch), label masks with
    ``ignore_index`` so padding is never scored; an array at a coarser grid gets the same ground.
    ``sample_id`` stays a numpy array of strings."""

    def fn(batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
        keys = [k for k, v in batch.items() if k != "sample_id" and np.asarray(v).ndim >= 3]
        side = max((batch[k].shape[-1] for k in keys), default=0)
        target = -(-side // multiple) * multiple
        out: dict[str, Any] = {}
        for k, v in batch.items():
            if k == "sample_id":
                out[k] = np.asarray(v)
                continue
            v = np.asarray(v)
            if k in keys and target != side:
                f = side // v.shape[-1]
                pad = target // f - v.shape[-1]
                v = np.pad(v, [(0, 0)] * (v.ndim - 2) + [(0, pad), (0, pad)],
                           constant_values=ignore_index if k == "label" else 0)
            out[k] = torch.as_tensor(np.ascontiguousarray(v))
        return out

    return fn


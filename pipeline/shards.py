"""The shard contract v3 as pure functions: Arrow schema, table building, reading, the 12-band cube, band
statistics, manifest, rejects.

No Ray and no storage I/O here (callers write the bytes these functions return). One row = one sample.
Sentinel-2 is stored at its native resolution: ``s2_10m`` (B02 B03 B04 B08, ``[T, 4, H, W]``) and ``s2_20m``
(B01 B05 B06 B07 B8A B09 B11 B12, ``[T, 8, H/2, W/2]``, the 60 m bands B01/B09 replicated 3 x 3 onto the
20 m grid), so a same-zone scene's pixels are kept exactly and the resampling method stays a training-time
choice (:func:`to_cube`). Each tensor column (``s2_10m``, ``s2_20m``, ``s1``) is one ``fixed_size_binary``
value per row (the C-order bytes of the tensor) with ``skyray.dtype``, ``skyray.shape``, ``skyray.bands``
and ``skyray.gsd`` in the field's metadata, because Parquet writes a list type element by element with
levels and uint16 widened to INT32 (~5x the CPU time to write and read back, ``python -m bench.shards``).
Reading shards back needs nothing but pyarrow and numpy::

    import json, numpy as np, pyarrow.parquet as pq

    t = pq.read_table("out/shards")                   # a directory of shards, or one .parquet file

    def tensor(t, name):  # one fixed_size_binary value per row -> (N, *shape), dtype/shape from the field
        f, col = t.schema.field(name), t[name].combine_chunks()
        shape = json.loads(f.metadata[b"skyray.shape"])
        return np.frombuffer(col.buffers()[1], f.metadata[b"skyray.dtype"].decode()).reshape(-1, *shape)

    s2_10m = tensor(t, "s2_10m")  # (N, T, 4, H, W) uint16 B02 B03 B04 B08, DN = reflectance x 1e4
    s2_20m = tensor(t, "s2_20m")  # (N, T, 8, H/2, W/2) uint16 B01 B05 B06 B07 B8A B09 B11 B12
    s1 = tensor(t, "s1")          # (N, T, 2, H, W) float16, VV/VH dB (NaN = nodata)
    s2_valid = np.stack(t["s2_valid"].to_numpy(zero_copy_only=False))   # (N, T) bool: slot holds a scene
    s2_doy = np.stack(t["s2_doy"].to_numpy(zero_copy_only=False))       # (N, T) int16 day of year
    ids = t["sample_id"].to_pylist()                          # "32633_1234_5678_2024Q1"
    bands_20m = json.loads(t.schema.field("s2_20m").metadata[b"skyray.bands"])  # ["B01", ..., "B12"]

:func:`read_shards` does the same through :func:`table_to_arrays` and returns a dict of numpy arrays in the
v3 layout for shards of every readable version: v2 (``s2 [T, 12, H, W]`` as ``fixed_size_binary``) and v1
(``FixedShapeTensor`` columns) are split into ``s2_10m`` and an ``s2_20m`` at 10 m (``[T, 8, H, W]``, as
the benchmarks that ship all bands on one 10 m grid store it). :func:`to_cube` builds the canonical 12-band
cube from either, in numpy or in torch (on the accelerator when training uses one).

Manifest and band statistics are deterministic: S2 sums are exact integers at native resolution, S1 sums
are float64 added in unit-id order, JSON is written with sorted keys and no timestamps, so re-running an
ingest reproduces ``manifest.json`` byte for byte.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.sensors import S1, S2

SCHEMA_VERSION = 3
#: contract versions :func:`read_shards` / :func:`table_to_arrays` read
READABLE_VERSIONS = (1, 2, 3)
#: the canonical cube order (:func:`to_cube`) and the order of the manifest's S2 band statistics
S2_BANDS = S2.band_names
S1_BANDS = S1.band_names
S2_10M_BANDS = ("B02", "B03", "B04", "B08")
S2_20M_BANDS = ("B01", "B05", "B06", "B07", "B8A", "B09", "B11", "B12")
#: positions of the two groups' bands in the canonical cube
CUBE_INDEX_10M = tuple(S2_BANDS.index(b) for b in S2_10M_BANDS)  # (1, 2, 3, 7)
CUBE_INDEX_20M = tuple(S2_BANDS.index(b) for b in S2_20M_BANDS)  # (0, 4, 5, 6, 8, 9, 10, 11)
#: per cube band, ``(group, band in group)``: group 0 = ``s2_10m``, 1 = ``s2_20m``
CUBE_SOURCE = tuple((0, S2_10M_BANDS.index(b)) if b in S2_10M_BANDS else (1, S2_20M_BANDS.index(b))
                    for b in S2_BANDS)
DTYPE_KEY, SHAPE_KEY, BANDS_KEY, GSD_KEY = b"skyray.dtype", b"skyray.shape", b"skyray.bands", b"skyray.gsd"
#: columns holding per-sample scalars (everything else is an array or lineage)
SCALAR_COLUMNS = ("sample_id", "epsg", "x_min", "y_max", "gsd", "lon", "lat")
SLOT_COLUMNS = ("s2_doy", "s2_valid", "s2_cloud", "s1_doy", "s1_valid")
REJECT_COLUMNS = ("level", "id", "reason", "detail")


@dataclass(frozen=True)
class TensorSpec:
    """A tensor column of the contract: element dtype, bands (the ``C`` of ``[T, C, H, W]``) and the
    native ground sampling distance (a benchmark on one 10 m grid declares 10 for ``s2_20m``)."""

    dtype: np.dtype
    bands: tuple[str, ...]
    gsd: float
    slots_from: str  # the ``*_valid`` column whose list size is T


#: contract v3's tensor columns
TENSORS = {
    "s2_10m": TensorSpec(np.dtype("<u2"), S2_10M_BANDS, 10.0, "s2_valid"),
    "s2_20m": TensorSpec(np.dtype("<u2"), S2_20M_BANDS, 20.0, "s2_valid"),
    "s1": TensorSpec(np.dtype("<f2"), S1_BANDS, 10.0, "s1_valid"),
}
#: contract v2's (and v1's) tensor columns: all of S2 on the 10 m grid
TENSORS_V2 = {
    "s2": TensorSpec(np.dtype("<u2"), S2_BANDS, 10.0, "s2_valid"),
    "s1": TensorSpec(np.dtype("<f2"), S1_BANDS, 10.0, "s1_valid"),
}


def _scalar_and_slot_fields(t: int) -> tuple[list[pa.Field], list[pa.Field], list[pa.Field]]:
    scalars = [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("epsg", pa.int32(), nullable=False),
        pa.field("x_min", pa.float64(), nullable=False),
        pa.field("y_max", pa.float64(), nullable=False),
        pa.field("gsd", pa.float32(), nullable=False),
        pa.field("lon", pa.float32(), nullable=False),
        pa.field("lat", pa.float32(), nullable=False),
    ]
    s2_slots = [
        pa.field("s2_doy", pa.list_(pa.int16(), t), nullable=False),
        pa.field("s2_valid", pa.list_(pa.bool_(), t), nullable=False),
        pa.field("s2_cloud", pa.list_(pa.float32(), t), nullable=False),
    ]
    s1_slots = [
        pa.field("s1_doy", pa.list_(pa.int16(), t), nullable=False),
        pa.field("s1_valid", pa.list_(pa.bool_(), t), nullable=False),
    ]
    return scalars, s2_slots, s1_slots


def _schema_meta(version: int) -> dict[str, str]:
    return {
        "skyray.schema_version": str(version),
        "skyray.s2_bands": ",".join(S2_BANDS),
        "skyray.s1_bands": ",".join(S1_BANDS),
        "skyray.s2_units": "DN = reflectance x 10000 (pre-04.00 convention), 0 = nodata",
        "skyray.s1_units": "backscatter dB (10 log10 linear power), NaN = nodata",
    }


def shard_schema(max_slots: int, tile_px: int, s2_20m_gsd: float = 20.0) -> pa.Schema:
    """Arrow schema of contract v3 for ``T = max_slots`` slots and ``H = W = tile_px`` pixels at 10 m.

    ``s2_20m`` has ``H * 10 / s2_20m_gsd`` pixels a side: ``H/2`` at 20 m (the ingest), ``H`` for a benchmark
    that ships all bands on one 10 m grid (``s2_20m_gsd=10``).
    """
    t, h = max_slots, tile_px
    h20 = h * 10.0 / s2_20m_gsd
    if s2_20m_gsd not in (10.0, 20.0) or h20 != int(h20):
        raise ValueError(f"s2_20m_gsd must be 10 or 20 with an even tile_px, got {s2_20m_gsd} and {tile_px}")
    scalars, s2_slots, s1_slots = _scalar_and_slot_fields(t)
    fields = [
        *scalars,
        _tensor_field("s2_10m", TENSORS["s2_10m"], [t, 4, h, h]),
        _tensor_field("s2_20m", TENSORS["s2_20m"], [t, 8, int(h20), int(h20)], gsd=s2_20m_gsd),
        *s2_slots,
        _tensor_field("s1", TENSORS["s1"], [t, 2, h, h]),
        *s1_slots,
        pa.field("sources", pa.list_(pa.string()), nullable=False),
    ]
    return pa.schema(fields, metadata=_schema_meta(SCHEMA_VERSION))


def shard_schema_v2(max_slots: int, tile_px: int) -> pa.Schema:
    """Arrow schema of contract v2 (``s2 [T, 12, H, W]`` on the 10 m grid): for compatibility tests and
    benchmarks; nothing writes v2 any more."""
    t, h = max_slots, tile_px
    scalars, s2_slots, s1_slots = _scalar_and_slot_fields(t)
    fields = [
        *scalars,
        _tensor_field("s2", TENSORS_V2["s2"], [t, 12, h, h], v2=True),
        *s2_slots,
        _tensor_field("s1", TENSORS_V2["s1"], [t, 2, h, h], v2=True),
        *s1_slots,
        pa.field("sources", pa.list_(pa.string()), nullable=False),
    ]
    return pa.schema(fields, metadata=_schema_meta(2))


def _tensor_field(name: str, spec: TensorSpec, shape: list[int], gsd: float | None = None,
                  v2: bool = False) -> pa.Field:
    meta = {DTYPE_KEY: spec.dtype.str.encode(), SHAPE_KEY: json.dumps(shape).encode()}
    if not v2:  # v2 fields carried dtype and shape only
        meta[BANDS_KEY] = json.dumps(list(spec.bands)).encode()
        meta[GSD_KEY] = json.dumps(float(spec.gsd if gsd is None else gsd)).encode()
    width = spec.dtype.itemsize * math.prod(shape)
    return pa.field(name, pa.binary(width), nullable=False, metadata=meta)


def schema_version(schema: pa.Schema) -> int:
    """The contract version a shard's schema declares (v1 shards may lack it: their ``s2`` is a
    ``FixedShapeTensor``)."""
    meta = schema.metadata or {}
    if b"skyray.schema_version" in meta:
        return int(meta[b"skyray.schema_version"])
    if "s2" in schema.names and isinstance(schema.field("s2").type, pa.FixedShapeTensorType):
        return 1
    return 3 if "s2_10m" in schema.names else 2


def tensor_field(schema: pa.Schema, name: str) -> pa.Field:
    """The field of tensor column ``name`` with its dtype/shape metadata.

    If a reader dropped the field metadata, it is rebuilt from the contract: the byte width, the column's
    dtype and bands, ``T`` = the list size of its ``*_valid`` column and a square tile (``s2_20m``'s gsd
    from its side against ``s2_10m``'s).
    """
    field = schema.field(name)
    if not pa.types.is_fixed_size_binary(field.type) or _has_tensor_meta(field):
        return field
    specs = TENSORS_V2 if "s2" in schema.names else TENSORS
    if name not in specs:
        raise ValueError(f"{name}: fixed_size_binary column without "
                         f"{DTYPE_KEY.decode()}/{SHAPE_KEY.decode()} metadata")
    spec = specs[name]
    if spec.slots_from not in schema.names:
        raise ValueError(f"{name}: no dtype/shape metadata and no {spec.slots_from!r} column to take T from")
    slots, channels = schema.field(spec.slots_from).type.list_size, len(spec.bands)
    h = _square_side(name, field.type.byte_width, spec.dtype.itemsize * slots * channels)
    shape = [slots, channels, h, h]
    if specs is TENSORS_V2:
        return _tensor_field(name, spec, shape, v2=True)
    gsd = spec.gsd
    if name == "s2_20m":
        if "s2_10m" not in schema.names:
            raise ValueError("s2_20m: no metadata and no 's2_10m' column to take its gsd from")
        h10 = _square_side("s2_10m", schema.field("s2_10m").type.byte_width, 2 * slots * 4)
        gsd = 10.0 * h10 / h
    return _tensor_field(name, spec, shape, gsd=gsd)


def _square_side(name: str, width: int, per_px: int) -> int:
    px2, rest = divmod(width, per_px)
    h = math.isqrt(px2)
    if rest or h * h != px2:
        raise ValueError(f"{name}: {width} bytes per row are not T x C x H x H of {per_px} bytes per pixel")
    return h


def _has_tensor_meta(field: pa.Field) -> bool:
    return bool(field.metadata) and DTYPE_KEY in field.metadata and SHAPE_KEY in field.metadata


def tensor_to_numpy(column: pa.Array | pa.ChunkedArray, field: pa.Field | None) -> np.ndarray:
    """A tensor column -> ``(N, *shape)`` ndarray, without a copy when ``column`` is one chunk.

    v2/v3: ``fixed_size_binary`` values, dtype and shape from ``field``'s metadata (see :func:`tensor_field`
    when it may be missing); any number of chunks, sliced arrays, ``N = 0``. v1: a ``FixedShapeTensor``
    column (``field`` is not needed). The result is read-only when it views Arrow memory.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    typ = column.type
    if isinstance(typ, pa.FixedShapeTensorType):
        dtype, shape = np.dtype(typ.value_type.to_pandas_dtype()), tuple(typ.shape)
        parts = [c.to_numpy_ndarray() for c in chunks if len(c)]
    elif pa.types.is_fixed_size_binary(typ):
        if field is None or not _has_tensor_meta(field):
            raise ValueError(f"fixed_size_binary tensor column needs its field's {DTYPE_KEY.decode()} and "
                             f"{SHAPE_KEY.decode()} metadata")
        dtype = np.dtype(field.metadata[DTYPE_KEY].decode())
        shape = tuple(json.loads(field.metadata[SHAPE_KEY]))
        width = typ.byte_width
        if width != dtype.itemsize * math.prod(shape):
            raise ValueError(f"{field.name}: {width} bytes per row do not hold {shape} of {dtype}")
        parts = []
        for c in chunks:
            if not len(c):
                continue
            if c.null_count:
                raise ValueError(f"{field.name}: tensor column with nulls")
            raw = np.frombuffer(c.buffers()[1], np.uint8, count=len(c) * width, offset=c.offset * width)
            parts.append(raw.view(dtype).reshape(-1, *shape))
    else:
        raise TypeError(f"not a tensor column: {typ}")
    if not parts:
        return np.zeros((0, *shape), dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _fixed_list(values: np.ndarray, typ: pa.DataType) -> pa.FixedSizeListArray:
    values = np.ascontiguousarray(values)
    n, t = values.shape
    flat = pa.array(values.reshape(-1), type=typ)
    return pa.FixedSizeListArray.from_arrays(flat, t)


def _binary_tensor(values: np.ndarray, dtype: np.dtype) -> pa.FixedSizeBinaryArray:
    """``(N, ...)`` -> one fixed_size_binary value per row, viewing the numpy memory (no copy when ``values``
    is already C-contiguous ``dtype``)."""
    values = np.ascontiguousarray(values, dtype=dtype)
    width = dtype.itemsize * math.prod(values.shape[1:])
    buf = pa.py_buffer(values.reshape(-1).view(np.uint8))
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(values), [None, buf])


def _check_rows(n: int, t: int, slots: Mapping[str, np.ndarray], sample_id, sources) -> None:
    for name, a in slots.items():
        if a.shape != (n, t):
            raise ValueError(f"{name} must be {(n, t)}, got {a.shape}")
    if len(sample_id) != n or len(sources) != n:
        raise ValueError(f"sample_id and sources need {n} rows")


def _table(schema: pa.Schema, tensors: Mapping[str, np.ndarray], sample_id, epsg, x_min, y_max, gsd, lon, lat,
           slots: Mapping[str, np.ndarray], sources) -> pa.Table:
    cols = {
        "sample_id": pa.array(list(sample_id), pa.string()),
        "epsg": pa.array(np.asarray(epsg, np.int32)),
        "x_min": pa.array(np.asarray(x_min, np.float64)),
        "y_max": pa.array(np.asarray(y_max, np.float64)),
        "gsd": pa.array(np.asarray(gsd, np.float32)),
        "lon": pa.array(np.asarray(lon, np.float32)),
        "lat": pa.array(np.asarray(lat, np.float32)),
        "s2_doy": _fixed_list(slots["s2_doy"].astype(np.int16, copy=False), pa.int16()),
        "s2_valid": _fixed_list(slots["s2_valid"].astype(bool, copy=False), pa.bool_()),
        "s2_cloud": _fixed_list(slots["s2_cloud"].astype(np.float32, copy=False), pa.float32()),
        "s1_doy": _fixed_list(slots["s1_doy"].astype(np.int16, copy=False), pa.int16()),
        "s1_valid": _fixed_list(slots["s1_valid"].astype(bool, copy=False), pa.bool_()),
        "sources": pa.array([list(s) for s in sources], pa.list_(pa.string())),
    }
    for name, a in tensors.items():
        cols[name] = _binary_tensor(a, np.dtype(schema.field(name).metadata[DTYPE_KEY].decode()))
    return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)


def build_table(
    *,
    sample_id: Sequence[str],
    epsg: np.ndarray,
    x_min: np.ndarray,
    y_max: np.ndarray,
    gsd: np.ndarray,
    lon: np.ndarray,
    lat: np.ndarray,
    s2_10m: np.ndarray,
    s2_20m: np.ndarray,
    s2_doy: np.ndarray,
    s2_valid: np.ndarray,
    s2_cloud: np.ndarray,
    s1: np.ndarray,
    s1_doy: np.ndarray,
    s1_valid: np.ndarray,
    sources: Sequence[Sequence[str]],
) -> pa.Table:
    """A contract-v3 table from numpy arrays, rows in the given order (callers sort by sample_id).

    Shapes: ``s2_10m (N, T, 4, H, H) uint16``, ``s2_20m (N, T, 8, H/2, H/2) uint16`` (or ``(N, T, 8, H, H)``
    for a benchmark on one 10 m grid: gsd 10), ``s1 (N, T, 2, H, H) float16``, ``*_doy (N, T) int16``,
    ``*_valid (N, T) bool``, ``s2_cloud (N, T) float32``; scalars ``(N,)``.
    """
    n, t, nb, h, w = s2_10m.shape
    if nb != len(S2_10M_BANDS) or h != w:
        raise ValueError(f"s2_10m must be (N, T, {len(S2_10M_BANDS)}, H, H), got {s2_10m.shape}")
    h20 = s2_20m.shape[-1]
    if s2_20m.shape != (n, t, len(S2_20M_BANDS), h20, h20) or h20 not in (h, h / 2):
        raise ValueError(f"s2_20m must be {(n, t, len(S2_20M_BANDS), h // 2, h // 2)} (20 m) or "
                         f"{(n, t, len(S2_20M_BANDS), h, h)} (10 m), got {s2_20m.shape}")
    if s1.shape != (n, t, len(S1_BANDS), h, w):
        raise ValueError(f"s1 must be {(n, t, len(S1_BANDS), h, w)}, got {s1.shape}")
    slots = {"s2_doy": s2_doy, "s2_valid": s2_valid, "s2_cloud": s2_cloud, "s1_doy": s1_doy,
             "s1_valid": s1_valid}
    _check_rows(n, t, slots, sample_id, sources)
    schema = shard_schema(t, h, s2_20m_gsd=10.0 * h / h20)
    return _table(schema, {"s2_10m": s2_10m, "s2_20m": s2_20m, "s1": s1}, sample_id, epsg, x_min, y_max, gsd,
                  lon, lat, slots, sources)


def build_table_v2(*, s2: np.ndarray, s1: np.ndarray, sample_id: Sequence[str], sources, **rest) -> pa.Table:
    """A contract-v2 table (``s2 (N, T, 12, H, H)`` on the 10 m grid), same keyword arguments as
    :func:`build_table` otherwise: for compatibility tests and benchmarks only (nothing writes v2)."""
    n, t, nb, h, w = s2.shape
    if nb != len(S2_BANDS) or h != w:
        raise ValueError(f"s2 must be (N, T, {len(S2_BANDS)}, H, H), got {s2.shape}")
    if s1.shape != (n, t, len(S1_BANDS), h, w):
        raise ValueError(f"s1 must be {(n, t, len(S1_BANDS), h, w)}, got {s1.shape}")
    slots = {k: rest.pop(k) for k in SLOT_COLUMNS}
    _check_rows(n, t, slots, sample_id, sources)
    tensors = {"s2": s2, "s1": s1}
    return _table(shard_schema_v2(t, h), tensors, sample_id, slots=slots, sources=sources, **rest)


def as_v1(table: pa.Table) -> pa.Table:
    """The same rows of a v2 table in the contract-v1 layout that shards written before v2 hold: ``s2``/``s1``
    as Arrow ``FixedShapeTensor`` columns, ``skyray.schema_version`` 1. For compatibility tests and
    benchmarks only."""
    t = table
    for name in ("s2", "s1"):
        a = np.ascontiguousarray(tensor_to_numpy(t[name], tensor_field(t.schema, name)))
        typ = pa.from_numpy_dtype(a.dtype)
        storage = pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), typ), int(np.prod(a.shape[1:])))
        col = pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(typ, list(a.shape[1:])), storage)
        t = t.set_column(t.schema.get_field_index(name), pa.field(name, col.type, nullable=False), col)
    return t.replace_schema_metadata({**(t.schema.metadata or {}), b"skyray.schema_version": b"1"})


def split_s2(s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(..., 12, H, W)`` canonical bands -> ``(s2_10m (..., 4, H, W), s2_20m (..., 8, H, W))`` on the same
    grid (how v1/v2 shards and one-grid benchmarks map onto v3; copies)."""
    return s2[..., CUBE_INDEX_10M, :, :], s2[..., CUBE_INDEX_20M, :, :]


#: how every shard is encoded: zstd level 1, dictionary only for ``sample_id``, statistics only for
#: :data:`SCALAR_COLUMNS`, the Arrow schema stored (so the tensor fields keep their metadata). One value per
#: write batch: a page is closed once it passes the 1 MiB default, so a tensor column's page holds one or two
#: values; with Arrow's default batch (1024 values) a page was a whole column chunk (~64 MiB), whose buffer
#: grew by reallocation and copies (2026-12-04, 203 rows of a full-density unit: -16 % write CPU, +0.3 % B)
PARQUET_OPTIONS = dict(compression="zstd", compression_level=1, use_dictionary=["sample_id"],
                       write_statistics=list(SCALAR_COLUMNS), store_schema=True, write_batch_size=1)


def table_to_parquet(table: pa.Table, row_group_rows: int = 16) -> bytes:
    """Serialise a shard deterministically (same table + same pyarrow -> same bytes), with
    :data:`PARQUET_OPTIONS`."""
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=max(1, row_group_rows), **PARQUET_OPTIONS)
    return buf.getvalue()


def parquet_writer(sink, schema: pa.Schema) -> pq.ParquetWriter:
    """A writer of one shard in parts (each ``write_table`` call ends its row groups), with
    :data:`PARQUET_OPTIONS`: the same calls give the same bytes."""
    return pq.ParquetWriter(sink, schema, **PARQUET_OPTIONS)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def table_to_arrays(t: pa.Table) -> dict[str, Any]:
    """A shard table (or a Ray Data batch as a pyarrow table) of any readable version -> numpy, v3 layout.

    Returns ``schema_version``, ``sample_id`` (list), scalars as 1-D arrays, ``s2_10m (N, T, 4, H, W)``,
    ``s2_20m (N, T, 8, H', W')`` (``H' = H/2`` for v3 ingest shards, ``H`` for v1/v2 and one-grid
    benchmarks), ``s1 (N, T, 2, H, W)``, ``*_doy/*_valid/s2_cloud (N, T)`` and ``sources`` (list of lists),
    plus :func:`labels_to_arrays` of a benchmark shard (``info``, ``label``, ``split``, crops).
    v3 tensors view Arrow memory (read-only) when the column is one chunk; v1/v2 ``s2`` is split (a copy)
    and also returned as stored (``s2 (N, T, 12, H, W)``).
    """
    version = schema_version(t.schema)
    if version not in READABLE_VERSIONS:
        raise ValueError(f"shard contract v{version} is not readable here (reads {READABLE_VERSIONS})")
    out: dict[str, Any] = {"schema_version": version, "sample_id": t["sample_id"].to_pylist()}
    for c in SCALAR_COLUMNS[1:]:
        out[c] = t[c].to_numpy()
    n = t.num_rows
    if version == 3:
        for c in TENSORS:
            out[c] = tensor_to_numpy(t[c], tensor_field(t.schema, c))
    else:
        out["s2"] = tensor_to_numpy(t["s2"], tensor_field(t.schema, "s2"))  # as stored, for older readers
        out["s2_10m"], out["s2_20m"] = split_s2(out["s2"])
        out["s1"] = tensor_to_numpy(t["s1"], tensor_field(t.schema, "s1"))
    for c in SLOT_COLUMNS:
        col = t[c].combine_chunks()
        out[c] = col.flatten().to_numpy(zero_copy_only=False).reshape(n, -1) if n else np.zeros((0, 0))
    out["sources"] = t["sources"].to_pylist()
    out.update(labels_to_arrays(t))
    return out


def read_shards(path) -> dict[str, Any]:
    """Read shards (a file, a directory of ``*.parquet``, or an open file) with plain pyarrow into numpy.

    Contract v3, v2 and v1 shards all read (not mixed in one directory: their schemas differ) into the v3
    layout of :func:`table_to_arrays`. See the module docstring.
    """
    return table_to_arrays(pq.read_table(path))


# ------------------------------------------------------------------------------------------- to_cube


RESAMPLING = ("bilinear", "nearest")


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-area aligned sampling along one axis (half-pixel centres, ``align_corners=False``): output
    pixel ``j``'s centre lies at input coordinate ``u = (j + 0.5) * n_in / n_out`` (input pixel ``i`` spans
    ``[i, i + 1)``). Bilinear blends ``i0 = floor(u - 0.5)`` and ``i0 + 1`` with weight ``f = u - 0.5 - i0``
    on the second, taps clamped to the input (edges extend the border pixel, as GDAL's renormalised
    kernel and ``torch.nn.functional.interpolate`` do); nearest takes ``floor(u)``.
    Returns ``(i0, i1, f, nearest)``."""
    u = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out)
    i0 = np.floor(u - 0.5).astype(np.int64)
    f = (u - 0.5 - i0).astype(np.float32)
    near = np.minimum(np.floor(u).astype(np.int64), n_in - 1)
    return np.clip(i0, 0, n_in - 1), np.clip(i0 + 1, 0, n_in - 1), f, near


def _resize_numpy(x: np.ndarray, size: int, resampling: str) -> np.ndarray:
    """``(..., H, W)`` -> ``(..., size, size)``: float32 for bilinear, ``x``'s dtype for nearest."""
    h, w = x.shape[-2:]
    r0, r1, fr, rn = _taps(h, size)
    c0, c1, fc, cn = _taps(w, size)
    if resampling == "nearest":
        return x[..., rn[:, None], cn[None, :]]
    a = x.astype(np.float32, copy=False)
    t = np.take(a, c0, axis=-1) * (1 - fc) + np.take(a, c1, axis=-1) * fc  # (..., H, size)
    return np.take(t, r0, axis=-2) * (1 - fr)[:, None] + np.take(t, r1, axis=-2) * fr[:, None]


def _resize_torch(x, size: int, resampling: str):
    """The torch twin of :func:`_resize_numpy` (runs on ``x``'s device): ``interpolate`` with
    ``align_corners=False`` for bilinear (uint16 is widened to float32 first), an index gather for nearest
    (any dtype, the same pixels as numpy)."""
    import torch
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    if resampling == "nearest":
        rn = torch.from_numpy(_taps(h, size)[3]).to(x.device)
        cn = torch.from_numpy(_taps(w, size)[3]).to(x.device)
        return x.index_select(-2, rn).index_select(-1, cn)
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, h, w).to(torch.float32)  # (B, 1, H, W)
    y = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return y.reshape(*lead, size, size)


def to_cube(s2_10m, s2_20m, size: int | None = None, resampling: str = "bilinear"):
    """The canonical 12-band cube B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12 from the two S2 groups.

    ``s2_10m (..., 4, H, W)`` and ``s2_20m (..., 8, H', W')`` with any leading dims (e.g. ``(N, T)``), both
    numpy arrays or both torch tensors (the cube is then built on their device, e.g. the GPU) ->
    ``(..., 12, size, size)`` (``size`` defaults to ``H``). Each group is resized to ``size`` with
    pixel-area aligned sampling (half-pixel centres, ``align_corners=False``: GDAL's and torch's
    convention); a group already at ``size`` is copied as is. ``resampling``: ``"bilinear"`` (default;
    float32 out, nodata 0 blends in like any value) or ``"nearest"`` (the input dtype out, pixels copied).
    """
    if resampling not in RESAMPLING:
        raise ValueError(f"resampling must be one of {RESAMPLING}, got {resampling!r}")
    if s2_10m.shape[-3] != len(S2_10M_BANDS) or s2_20m.shape[-3] != len(S2_20M_BANDS):
        raise ValueError(f"to_cube needs s2_10m (..., 4, H, W) and s2_20m (..., 8, H', W'), got "
                         f"{tuple(s2_10m.shape)} and {tuple(s2_20m.shape)}")
    if tuple(s2_10m.shape[:-3]) != tuple(s2_20m.shape[:-3]):
        raise ValueError(f"s2_10m and s2_20m leading dims differ: {tuple(s2_10m.shape)} vs "
                         f"{tuple(s2_20m.shape)}")
    size = int(s2_10m.shape[-1]) if size is None else int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    is_np = isinstance(s2_10m, np.ndarray)
    if is_np != isinstance(s2_20m, np.ndarray):
        raise TypeError("s2_10m and s2_20m must both be numpy arrays or both torch tensors")
    resize = _resize_numpy if is_np else _resize_torch
    groups = []
    for x in (s2_10m, s2_20m):
        if tuple(x.shape[-2:]) == (size, size):
            groups.append(x.astype(np.float32) if is_np and resampling == "bilinear" else
                          x.float() if not is_np and resampling == "bilinear" else x)
        else:
            groups.append(resize(x, size, resampling))
    g10, g20 = groups
    lead = tuple(s2_10m.shape[:-3])
    if is_np:
        out = np.empty((*lead, len(S2_BANDS), size, size), g10.dtype)
        out[..., CUBE_INDEX_10M, :, :] = g10
        out[..., CUBE_INDEX_20M, :, :] = g20
        return out
    import torch

    # slices + cat: index_put is not implemented for uint16 (nearest keeps the dtype)
    parts = [(g10, b) if g == 0 else (g20, b) for g, b in CUBE_SOURCE]
    return torch.cat([x[..., b : b + 1, :, :] for x, b in parts], dim=-3)


# ---------------------------------------------------------------------------------------- band stats


def s2_band_sums(s2_10m: np.ndarray, s2_20m: np.ndarray, valid: np.ndarray) -> dict[str, list[int]]:
    """Exact integer count/sum/sum of squares per band, in the canonical order :data:`S2_BANDS`, over the
    valid (non-zero) pixels of valid slots at native resolution (a 60 m pixel counts 9 times: its 3 x 3
    replicas on the 20 m grid, which leaves mean and std those of the area).

    ``s2_10m (N, T, 4, H, W)``, ``s2_20m (N, T, 8, H', W')`` uint16, ``valid (N, T) bool``. Only the valid
    slots are read (:func:`s2_slot_sums` each), so empty slots cost nothing.
    """
    total = np.zeros((3, len(S2_BANDS)), np.int64)
    for i, j in zip(*np.nonzero(np.asarray(valid, bool)), strict=True):
        total += s2_slot_sums(s2_10m[i, j], s2_20m[i, j])
    return sums_dict(total)


def s2_slot_sums(s10m: np.ndarray, s20m: np.ndarray) -> np.ndarray:
    """``(3, 12) int64``: count of non-zero (valid) pixels, sum and sum of squares per band of one slot,
    rows in that order, bands in the canonical order :data:`S2_BANDS`.

    ``s10m (4, H, W)``, ``s20m (8, H', W')`` uint16. Zero pixels add nothing to the sums, so only the counts
    look for them. Up to :data:`_EXACT_F64_PIXELS` pixels a band (tiles up to 1448 px) the sums are taken in
    float64, which is exact there (a square is below 2**32, a band's sum of squares below 2**53) and ~1.5x
    faster than numpy's casting integer reductions; larger slots take those (a sum of squares below 2**63).
    """
    out = np.empty((3, len(S2_BANDS)), np.int64)
    for x, index in ((s10m, list(CUBE_INDEX_10M)), (s20m, list(CUBE_INDEX_20M))):
        c = len(index)
        x = x.reshape(c, -1)  # (C, H * W), a view of a contiguous slot
        out[0, index] = [np.count_nonzero(band) for band in x]  # per band: numpy's fast path (axis= is not)
        if x.shape[1] <= _EXACT_F64_PIXELS:
            # BLAS on a float64 copy: one matrix-vector product [x] @ 1 for the sums, one dot product per
            # band for the sums of squares (every partial sum is an integer below 2**53, so any summation
            # order is exact). A Gram matrix [x; 1] @ [x; 1].T in one call costs ~3x: its (C+1)**2 entries
            # on a skinny operand run far below BLAS's speed
            xf = _ones_below(c, x.shape[1])
            np.copyto(xf[:c], x)
            out[1, index] = xf[:c] @ xf[c]
            out[2, index] = [row @ row for row in xf[:c]]
        else:
            out[1, index] = x.sum(axis=1, dtype=np.uint64)
            out[2, index] = np.square(x, dtype=np.uint32).sum(axis=1, dtype=np.uint64)
    return out


#: pixels of one slot band below which float64 sums of uint16 squares are exact (65535**2 * n < 2**53)
_EXACT_F64_PIXELS = 2**53 // 65535**2


def _ones_below(c: int, n: int) -> np.ndarray:
    """A ``(c + 1, n)`` float64 work array whose last row is ones, kept per shape and thread (callers
    overwrite the first ``c`` rows; a fresh array per slot would be page-faulted in every time)."""
    return _work_array(c, n, threading.get_ident())


@functools.lru_cache(maxsize=8)
def _work_array(c: int, n: int, thread: int) -> np.ndarray:
    a = np.empty((c + 1, n), np.float64)
    a[c] = 1.0
    return a


def sums_dict(a: np.ndarray) -> dict[str, list[int]]:
    """``(3, bands)`` integer count/sum/sumsq rows (:func:`s2_slot_sums`) -> the manifest's sums dict."""
    return {k: [int(v) for v in a[r]] for r, k in enumerate(("count", "sum", "sumsq"))}


def s1_band_sums(s1: np.ndarray, valid: np.ndarray) -> dict[str, list]:
    """float64 count/sum/sum of squares of dB per band over finite values of valid slots."""
    nb = s1.shape[2]
    count, total, sq = [0] * nb, [0.0] * nb, [0.0] * nb
    sel = s1[np.asarray(valid, bool)]
    for b in range(nb):
        v = sel[:, b].astype(np.float64)
        v = v[np.isfinite(v)]
        count[b] = int(v.size)
        total[b] = float(v.sum())
        sq[b] = float((v * v).sum())
    return {"count": count, "sum": total, "sumsq": sq}


def empty_sums(nbands: int, integer: bool) -> dict[str, list]:
    z = 0 if integer else 0.0
    return {"count": [0] * nbands, "sum": [z] * nbands, "sumsq": [z] * nbands}


def add_sums(a: Mapping[str, list], b: Mapping[str, list]) -> dict[str, list]:
    return {k: [x + y for x, y in zip(a[k], b[k], strict=True)] for k in ("count", "sum", "sumsq")}


def finalize_stats(sums: Mapping[str, list], bands: Sequence[str]) -> dict:
    """``{"bands", "count", "mean", "std"}`` (population std; NaN-free: empty bands give 0)."""
    mean, std = [], []
    for n, s, q in zip(sums["count"], sums["sum"], sums["sumsq"], strict=True):
        if n == 0:
            mean.append(0.0)
            std.append(0.0)
            continue
        m = s / n
        var = max(q / n - m * m, 0.0)
        mean.append(float(m))
        std.append(float(math.sqrt(var)))
    return {"bands": list(bands), "count": [int(c) for c in sums["count"]], "mean": mean, "std": std}


# ------------------------------------------------------------------------------------------ manifest


def build_manifest(
    *,
    shards: Iterable[Mapping],
    s2_sums: Mapping[str, list],
    s1_sums: Mapping[str, list],
    tile_px: int,
    max_slots: int,
    config: Mapping,
    counts: Mapping | None = None,
    extra: Mapping | None = None,
) -> dict:
    """The manifest dict: shards sorted by path, band stats (S2 in :data:`S2_BANDS` order, at native
    resolution), config; no timestamps (deterministic)."""
    shard_list = sorted(
        ({"path": s["path"], "rows": int(s["rows"]), "bytes": int(s["bytes"]), "sha256": s["sha256"]}
         for s in shards),
        key=lambda s: s["path"],
    )
    m = {
        "schema_version": SCHEMA_VERSION,
        "rows": sum(s["rows"] for s in shard_list),
        "tile_px": int(tile_px),
        "gsd": 10.0,
        "s2_groups": {"s2_10m": {"bands": list(S2_10M_BANDS), "gsd": 10.0},
                      "s2_20m": {"bands": list(S2_20M_BANDS), "gsd": 20.0}},
        "max_slots": int(max_slots),
        "shards": shard_list,
        "band_stats": {"s2": finalize_stats(s2_sums, S2_BANDS), "s1": finalize_stats(s1_sums, S1_BANDS)},
        "config": dict(config),
    }
    if counts is not None:
        m["counts"] = dict(counts)
    if extra:
        m.update(extra)
    return m


def manifest_bytes(manifest: Mapping) -> bytes:
    """Deterministic JSON: sorted keys, fixed indentation, trailing newline."""
    return (json.dumps(manifest, sort_keys=True, indent=2, allow_nan=False) + "\n").encode()


def merge_manifests(manifests: Sequence[Mapping]) -> dict:
    """Merge manifests of disjoint ingests with the same tile_px/max_slots (e.g. one per region).

    Shards are concatenated (paths must not collide), stats recombined from counts/mean/std.
    """
    if not manifests:
        raise ValueError("nothing to merge")
    first = manifests[0]
    for m in manifests[1:]:
        if (m["tile_px"], m["max_slots"], m["schema_version"]) != (
                first["tile_px"], first["max_slots"], first["schema_version"]):
            raise ValueError("cannot merge manifests with different tile_px / max_slots / schema_version")
    paths = [s["path"] for m in manifests for s in m["shards"]]
    if len(set(paths)) != len(paths):
        raise ValueError("cannot merge manifests whose shard paths collide")
    stats = {}
    for key, bands in (("s2", S2_BANDS), ("s1", S1_BANDS)):
        sums = empty_sums(len(bands), integer=False)
        for m in manifests:
            st = m["band_stats"][key]
            n = st["count"]
            sums = add_sums(sums, {
                "count": n,
                "sum": [c * mu for c, mu in zip(n, st["mean"], strict=True)],
                "sumsq": [c * (sd * sd + mu * mu)
                          for c, mu, sd in zip(n, st["mean"], st["std"], strict=True)],
            })
        stats[key] = sums
    return build_manifest(
        shards=[s for m in manifests for s in m["shards"]], s2_sums=stats["s2"], s1_sums=stats["s1"],
        tile_px=first["tile_px"], max_slots=first["max_slots"], config=first["config"],
    )


# ------------------------------------------------------------------------------------------- rejects


def rejects_table(rejects: Iterable) -> pa.Table:
    """:class:`pipeline.stac.Reject` records -> ``level, id, reason, detail`` strings, de-duplicated and
    sorted."""
    rows = {tuple(str(getattr(r, c)) for c in REJECT_COLUMNS) for r in rejects}
    ordered = sorted(rows)
    return pa.table({c: pa.array([r[i] for r in ordered], pa.string()) for i, c in enumerate(REJECT_COLUMNS)})


def rejects_to_parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


# -------------------------------------------------------------------------------- benchmark labels

#: a benchmark's task types and the label column each writes
TASK_LABELS = {
    "classification": "label_class",  # int16 class id
    "multilabel": "label_multi",  # uint8 [C] multi-hot
    "segmentation": "label_mask",  # uint8 [H, W] class id per pixel, IGNORE_INDEX = not labelled
    "change": "label_change",  # uint8 [H, W] 0 no change, 1 change, IGNORE_INDEX = padding / unlabelled
}
SPLITS = ("train", "val", "test")
#: label value of a pixel that no metric or loss counts (segmentation, change, zero-padded crops)
IGNORE_INDEX = 255
#: crop geometry of a sample cut from a larger image: the tile's top-left pixel in it and the image's size
CROP_COLUMNS = ("crop_image", "crop_y", "crop_x", "crop_h", "crop_w")
BENCHMARK_KEY, TASK_KEY, CLASSES_KEY = b"skyray.benchmark", b"skyray.task", b"skyray.classes"


@dataclass(frozen=True)
class BenchmarkInfo:
    """What a benchmark shard declares in its schema metadata: name, task type, class names (id = index;
    ``change`` has ``("no change", "change")``)."""

    name: str
    task: str
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.task not in TASK_LABELS:
            raise ValueError(f"task must be one of {sorted(TASK_LABELS)}, got {self.task!r}")
        if not self.classes or len(self.classes) > IGNORE_INDEX:
            raise ValueError(f"classes must name 1..{IGNORE_INDEX} classes, got {len(self.classes)}")

    @property
    def label_column(self) -> str:
        return TASK_LABELS[self.task]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def benchmark_info(schema: pa.Schema) -> BenchmarkInfo | None:
    """The :class:`BenchmarkInfo` a shard schema declares, or ``None`` for an ingest (unlabelled) shard."""
    meta = schema.metadata or {}
    if BENCHMARK_KEY not in meta:
        return None
    return BenchmarkInfo(meta[BENCHMARK_KEY].decode(), meta[TASK_KEY].decode(),
                         tuple(json.loads(meta[CLASSES_KEY])))


@dataclass(frozen=True)
class Crops:
    """Where each row's tile sits in its source image (so predictions can be pasted back): ``image`` ids,
    ``y``/``x`` the tile's top-left pixel, ``h``/``w`` the whole image's size (pixels past it are padding)."""

    image: Sequence[str]
    y: np.ndarray
    x: np.ndarray
    h: np.ndarray
    w: np.ndarray


def add_labels(table: pa.Table, info: BenchmarkInfo, labels: np.ndarray, split: Sequence[str],
               crops: Crops | None = None) -> pa.Table:
    """A contract-v3 table (:func:`build_table`) + its benchmark columns: ``info.label_column``, ``split``
    and, for cropped images, :data:`CROP_COLUMNS`; ``info`` goes into the schema metadata.

    ``labels``: ``(N,)`` class ids (classification), ``(N, C)`` 0/1 (multilabel), ``(N, H, W)`` ids or
    :data:`IGNORE_INDEX` (segmentation; change: 0/1/ignore). Values are checked against the class count.
    """
    n = table.num_rows
    labels = np.asarray(labels)
    h = json.loads(table.schema.field("s2_10m").metadata[SHAPE_KEY])[-1]
    c = info.num_classes
    expected = {"classification": (n,), "multilabel": (n, c), "segmentation": (n, h, h), "change": (n, h, h)}
    if labels.shape != expected[info.task]:
        raise ValueError(f"{info.label_column} must be {expected[info.task]} for {info.task}, "
                         f"got {labels.shape}")
    if info.task == "change" and c != 2:
        raise ValueError(f"a change task has 2 classes (no change, change), got {c}")
    valid = labels[labels != IGNORE_INDEX] if info.task in ("segmentation", "change") else labels
    hi = 2 if info.task == "multilabel" else c
    if valid.size and (valid.min() < 0 or valid.max() >= hi):
        raise ValueError(f"{info.label_column} values must lie in [0, {hi}) (or {IGNORE_INDEX} = ignore), "
                         f"got [{valid.min()}, {valid.max()}]")
    bad = sorted(set(split) - set(SPLITS))
    if len(split) != n or bad:
        raise ValueError(f"split needs {n} values from {SPLITS}, got {len(split)} (unknown: {bad})")
    if info.task == "classification":
        label_field = pa.field(info.label_column, pa.int16(), nullable=False)
        label_col: pa.Array = pa.array(labels.astype(np.int16))
    else:
        shape = list(labels.shape[1:])
        label_field = pa.field(info.label_column, pa.binary(math.prod(shape)), nullable=False,
                               metadata={DTYPE_KEY: b"|u1", SHAPE_KEY: json.dumps(shape).encode()})
        label_col = _binary_tensor(labels, np.dtype(np.uint8))
    fields = [label_field, pa.field("split", pa.string(), nullable=False)]
    cols = [label_col, pa.array(list(split), pa.string())]
    if crops is not None:
        fields.append(pa.field("crop_image", pa.string(), nullable=False))
        cols.append(pa.array(list(crops.image), pa.string()))
        for name in CROP_COLUMNS[1:]:
            fields.append(pa.field(name, pa.int32(), nullable=False))
            cols.append(pa.array(np.asarray(getattr(crops, name.removeprefix("crop_")), np.int32)))
    out = table
    for f, col in zip(fields, cols, strict=True):
        out = out.append_column(f, col)
    meta = {**(table.schema.metadata or {}), BENCHMARK_KEY: info.name.encode(), TASK_KEY: info.task.encode(),
            CLASSES_KEY: json.dumps(list(info.classes)).encode()}
    return out.replace_schema_metadata(meta)


def labels_to_arrays(t: pa.Table) -> dict[str, Any]:
    """The benchmark columns of a labelled shard table: ``info`` (:class:`BenchmarkInfo`), ``label`` (numpy,
    shapes as in :func:`add_labels`), ``split`` (list) and, when present, the crop columns; ``{}`` for an
    unlabelled shard."""
    info = benchmark_info(t.schema)
    if info is None:
        return {}
    col = info.label_column
    if info.task == "classification":
        label = t[col].to_numpy()
    else:
        label = tensor_to_numpy(t[col], t.schema.field(col))
    out: dict[str, Any] = {"info": info, "label": label, "split": t["split"].to_pylist()}
    if "crop_image" in t.schema.names:
        out["crop_image"] = t["crop_image"].to_pylist()
        for name in CROP_COLUMNS[1:]:
            out[name] = t[name].to_numpy()
    return out

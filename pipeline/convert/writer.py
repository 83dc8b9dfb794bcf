"""Writing a converted benchmark: shard bytes with their train-split band sums, then manifest + rejects.

The job (``jobs.convert``) calls :func:`encode_shard` in its Ray Data tasks and :func:`finish` on the
driver; :func:`write_benchmark` does both in-process for small sets (fixtures of the fine-tuning and sweep
tests, the demo). The layout is every shard-writing job's (DESIGN.md): ``<out>/shards/<name>.parquet``,
``<out>/manifest.json`` (band statistics of the **train** split only, so evaluation data never leaks into
normalisation; ``benchmark``: name, task, classes, rows per split), ``<out>/rejects.parquet``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.config import StorageConfig
from pipeline.convert.base import Sample, samples_to_table
from pipeline.shards import (
    S1_BANDS,
    S2_BANDS,
    BenchmarkInfo,
    add_sums,
    build_manifest,
    empty_sums,
    labels_to_arrays,
    manifest_bytes,
    rejects_table,
    rejects_to_parquet,
    s1_band_sums,
    s2_band_sums,
    sha256,
    table_to_arrays,
    table_to_parquet,
)
from pipeline.stac import Reject
from pipeline.storage import exists, join, read_bytes, write_bytes_atomic

__all__ = ["EncodedShard", "convert_in_process", "encode_shard", "finish", "write_benchmark"]


@dataclass(frozen=True)
class EncodedShard:
    """One shard's Parquet bytes and what the manifest needs from it (sums over its train rows)."""

    path: str  # relative to the output root: ``shards/<name>.parquet``
    data: bytes
    rows: int
    splits: Mapping[str, int]
    s2_sums: Mapping[str, list]
    s1_sums: Mapping[str, list]


def encode_shard(name: str, samples: Sequence[Sample], info: BenchmarkInfo) -> EncodedShard:
    """Samples -> one deterministic shard (rows sorted by sample id) and its train-split band sums."""
    table = samples_to_table(samples, info)
    a, lab = table_to_arrays(table), labels_to_arrays(table)
    train = np.array([s == "train" for s in lab["split"]])
    s2_valid = a["s2_valid"] & train[:, None]
    s1_valid = a["s1_valid"] & train[:, None]
    return EncodedShard(
        path=f"shards/{name}.parquet", data=table_to_parquet(table), rows=table.num_rows,
        splits=dict(Counter(lab["split"])),
        s2_sums=s2_band_sums(a["s2_10m"], a["s2_20m"], s2_valid), s1_sums=s1_band_sums(a["s1"], s1_valid),
    )


def finish(out: str, shards: Iterable[EncodedShard | Mapping], rejects: Iterable[Reject], info: BenchmarkInfo,
           *, tile_px: int, max_slots: int, s2_20m_gsd: float, config: Mapping, found: int,
           storage: StorageConfig | None = None, extra_counts: Mapping | None = None) -> dict:
    """Write ``rejects.parquet`` then ``manifest.json`` (last: its presence marks a finished output);
    ``shards`` are the written shards' records (``path``, ``rows``, ``bytes``, ``sha256``, ``splits``,
    ``s2_sums``, ``s1_sums``). ``found``: items the job found (``rows`` + rejected samples must account
    for them: the manifest's ``counts``, plus ``extra_counts``). A file whose bytes are already there is
    not written again (a re-run leaves the output untouched). Returns the manifest."""
    storage = storage or StorageConfig()
    recs = [_record(s) for s in shards]
    s2, s1, splits = empty_sums(len(S2_BANDS), True), empty_sums(len(S1_BANDS), False), Counter()
    for r in sorted(recs, key=lambda r: r["path"]):  # fixed order: float sums are order-dependent
        s2, s1 = add_sums(s2, r["s2_sums"]), add_sums(s1, r["s1_sums"])
        splits.update(r["splits"])
    rejects = list(rejects)
    _write_if_changed(join(out, "rejects.parquet"), rejects_to_parquet(rejects_table(rejects)), storage)
    manifest = build_manifest(
        shards=recs, s2_sums=s2, s1_sums=s1, tile_px=tile_px, max_slots=max_slots, config=config,
        counts={"found": int(found), "written": sum(r["rows"] for r in recs), "rejected": len(rejects),
                **dict(extra_counts or {})},
        extra={"benchmark": {"name": info.name, "task": info.task, "classes": list(info.classes),
                             "splits": dict(sorted(splits.items()))}},
    )
    manifest["s2_groups"]["s2_20m"]["gsd"] = float(s2_20m_gsd)
    _write_if_changed(join(out, "manifest.json"), manifest_bytes(manifest), storage)
    return manifest


def _write_if_changed(uri: str, data: bytes, storage: StorageConfig) -> bool:
    """Write ``data`` atomically unless ``uri`` already holds exactly these bytes; whether it wrote."""
    if exists(uri, storage) and read_bytes(uri, storage) == data:
        return False
    write_bytes_atomic(uri, data, storage)
    return True


def _record(s: EncodedShard | Mapping) -> dict:
    if isinstance(s, EncodedShard):
        return {"path": s.path, "rows": s.rows, "bytes": len(s.data), "sha256": sha256(s.data),
                "splits": dict(s.splits), "s2_sums": s.s2_sums, "s1_sums": s.s1_sums}
    return dict(s)


def write_benchmark(out: str, samples: Sequence[Sample], info: BenchmarkInfo, *, tile_px: int,
                    max_slots: int, s2_20m_gsd: float, rows_per_shard: int = 256,
                    rejects: Sequence[Reject] = (), config: Mapping | None = None,
                    storage: StorageConfig | None = None) -> dict:
    """Write a whole benchmark output in-process (small sets: test fixtures, the demo); the manifest."""
    storage = storage or StorageConfig()
    rows = sorted(samples, key=lambda s: s.sample_id)
    encoded = []
    for i in range(0, len(rows), rows_per_shard):
        part = rows[i:i + rows_per_shard]
        enc = encode_shard(part[0].sample_id, part, info)
        write_bytes_atomic(join(out, enc.path), enc.data, storage)
        encoded.append(enc)
    return finish(out, encoded, rejects, info, tile_px=tile_px, max_slots=max_slots, s2_20m_gsd=s2_20m_gsd,
                  config=dict(config or {"benchmark": info.name}), found=len(rows) + len(rejects),
                  storage=storage)


def convert_in_process(name: str, source: str, out: str, options: Mapping | None = None,
                       rows_per_shard: int = 256) -> dict:
    """``jobs.convert`` without Ray, for small local sets (benches, fixtures): list, read every item (a
    :class:`~pipeline.convert.base.BadInput` becomes a reject), :func:`write_benchmark`; the manifest."""
    import fsspec

    from pipeline.convert import BadInput, get

    bench = get(name)
    opts = bench.options(**dict(options or {})) if bench.options is not None else None
    bench = bench.resolved(opts)
    fs = fsspec.filesystem("file")
    items, rejects = bench.list_items(source, opts, fs)
    samples: list[Sample] = []
    for it in items:
        try:
            samples.extend(bench.read_item(it, opts, fs))
        except BadInput as e:
            rejects.append(e.reject(it.id))
    config = {"benchmark": name, "options": opts.model_dump(mode="json") if opts is not None else {}}
    return write_benchmark(out, samples, bench.info, tile_px=bench.tile_px, max_slots=bench.max_slots,
                           s2_20m_gsd=bench.s2_20m_gsd, rows_per_shard=rows_per_shard, rejects=rejects,
                           config=config)

"""Small contract-conforming shards for tests and benchmarks, without an archive or an ingest.

``make_shards(out, rows=..., shards=..., tile_px=..., slots=...)`` writes Parquet shards built and
serialised by :mod:`pipeline.shards` (``build_table_v2`` / ``table_to_parquet``, as the ingest does, so they
follow the shard contract of that module) and a ``manifest.json`` with band statistics;
:func:`make_rows` gives the column arrays alone. Pixels are seeded random but structured (a few
land-cover classes with their own spectra, smooth blobs, seasonal change), so a model's loss can fall
within a few dozen steps.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline import shards as S
from pipeline.sensors import S2

S2_BANDS = list(S2.band_names)
# class spectra in DN (×10000 reflectance): water, forest, crop, urban, bare
SPECTRA = np.array(
    [
        [900, 800, 700, 500, 400, 300, 250, 200, 180, 100, 80, 50],
        [300, 350, 600, 350, 900, 2500, 3000, 3300, 3400, 900, 1600, 800],
        [500, 600, 900, 800, 1400, 2600, 2900, 3000, 3100, 1000, 2400, 1500],
        [1400, 1500, 1600, 1700, 1800, 1900, 1950, 2000, 2050, 600, 2300, 2100],
        [1600, 1900, 2300, 2800, 3000, 3100, 3200, 3300, 3350, 800, 4000, 3500],
    ],
    dtype=np.float32,
)
S1_DB = np.array([[-22, -28], [-8, -14], [-11, -17], [-3, -9], [-12, -20]], dtype=np.float32)


def _class_map(rng: np.random.Generator, px: int) -> np.ndarray:
    """Smooth land-cover map (px, px) from a few Gaussian blobs."""
    yy, xx = np.mgrid[0:px, 0:px].astype(np.float32)
    score = np.zeros((len(SPECTRA), px, px), np.float32)
    for c in range(len(SPECTRA)):
        for _ in range(2):
            cy, cx = rng.uniform(0, px, 2)
            s = rng.uniform(px / 6, px / 2.5)
            score[c] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)) * rng.uniform(0.5, 1.5)
    return score.argmax(0)


def make_rows(rng: np.random.Generator, n: int, px: int, slots: int, start: int) -> dict:
    """Column arrays of ``n`` samples of ``px`` x ``px`` pixels with ``slots`` slots per modality, the
    keyword arguments of ``pipeline.shards.build_table_v2`` except ``sources``: ``s2`` uint16
    (n, slots, 12, px, px), ``s1`` float16 dB (n, slots, 2, px, px), ``*_doy``/``*_valid`` (n, slots)...;
    sample ids and tile origins count from ``start``. A random number (>= 1) of leading slots is valid."""
    s2 = np.zeros((n, slots, 12, px, px), np.uint16)
    s1 = np.zeros((n, slots, 2, px, px), np.float16)
    s2_doy = np.zeros((n, slots), np.int16)
    s1_doy = np.zeros((n, slots), np.int16)
    s2_valid = np.zeros((n, slots), bool)
    s1_valid = np.zeros((n, slots), bool)
    cloud = np.zeros((n, slots), np.float32)
    for i in range(n):
        cls = _class_map(rng, px)
        nv2 = rng.integers(1, slots + 1)
        nv1 = rng.integers(1, slots + 1)
        for t in range(slots):
            doy = int(30 + t * (300 // max(slots, 1)) + rng.integers(0, 20))
            season = 0.75 + 0.25 * np.sin(2 * np.pi * doy / 365)
            if t < nv2:
                spec = SPECTRA[cls].transpose(2, 0, 1).copy()  # (12, px, px)
                spec[4:9] *= season  # vegetation phenology in red edge / NIR
                img = spec * rng.normal(1, 0.03, (12, 1, 1)) + rng.normal(0, 40, spec.shape)
                s2[i, t] = np.clip(img, 1, 20000).astype(np.uint16)
                s2_doy[i, t], s2_valid[i, t], cloud[i, t] = doy, True, rng.uniform(0, 0.3)
            if t < nv1:
                db = S1_DB[cls].transpose(2, 0, 1) + rng.normal(0, 1.0, (2, px, px))
                s1[i, t] = db.astype(np.float16)
                s1_doy[i, t], s1_valid[i, t] = doy + 2, True
    lon = rng.uniform(-170, 170, n).astype(np.float32)
    lat = rng.uniform(-60, 70, n).astype(np.float32)
    return dict(
        sample_id=[f"32633_{start + i}_0_2024Q2" for i in range(n)],
        epsg=np.full(n, 32633, np.int32),
        x_min=np.arange(start, start + n, dtype=np.float64) * px * 10,
        y_max=np.full(n, 5_000_000.0),
        gsd=np.full(n, 10.0, np.float32),
        lon=lon,
        lat=lat,
        s2=s2,
        s2_doy=s2_doy,
        s2_valid=s2_valid,
        s2_cloud=cloud,
        s1=s1,
        s1_doy=s1_doy,
        s1_valid=s1_valid,
    )


def rows_to_table(r: dict) -> pa.Table:
    """The shard table of :func:`make_rows` arrays in contract v2 (one 12-band ``s2`` column), through
    ``pipeline.shards.build_table_v2``; the pretraining loader reads v1-v3."""
    return S.build_table_v2(**r, sources=[["synthetic"]] * len(r["sample_id"]))


def make_shards(
    out: Path, rows: int = 64, shards: int = 2, tile_px: int = 32, slots: int = 3, seed: int = 0
) -> Path:
    """Write ``shards`` Parquet files of ``rows`` rows each + ``manifest.json`` under ``out``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    entries, s2_px, s1_px = [], [], []
    for k in range(shards):
        r = make_rows(rng, rows, tile_px, slots, start=k * rows)
        path = out / "shards" / f"part-{k:05d}.parquet"
        data = S.table_to_parquet(rows_to_table(r), row_group_rows=16)
        path.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        entries.append({"path": f"shards/{path.name}", "rows": rows, "bytes": len(data), "sha256": sha})
        v2 = r["s2"][r["s2_valid"]]  # (k, 12, H, W)
        s2_px.append(v2.transpose(1, 0, 2, 3).reshape(12, -1).astype(np.float64))
        s1_px.append(r["s1"][r["s1_valid"]].transpose(1, 0, 2, 3).reshape(2, -1).astype(np.float64))
    s2_all, s1_all = np.concatenate(s2_px, 1), np.concatenate(s1_px, 1)
    manifest = {
        "schema_version": 2,
        "rows": rows * shards,
        "tile_px": tile_px,
        "max_slots": slots,
        "shards": entries,
        "band_stats": {
            "s2": {"bands": S2_BANDS, "mean": s2_all.mean(1).tolist(), "std": s2_all.std(1).tolist()},
            "s1": {"bands": ["VV", "VH"], "mean": s1_all.mean(1).tolist(), "std": s1_all.std(1).tolist()},
        },
        "config": {"synthetic": True, "seed": seed},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out

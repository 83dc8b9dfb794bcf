"""Our shard loader against on-the-fly COG window sampling of the same data, in one run.

    python -m bench.loader [--out .cache/bench-loader] [--scenes 4 --size-px 1536] [--gdal-cache-mb 0 16]

Both sides produce the same sample: a ``tile_px`` × ``tile_px`` window of all 12 Sentinel-2 bands
at 10 m for ``T`` dates, normalised with the manifest's band statistics, batched as torch tensors.

* shards: Ray Data ``read_parquet`` (s2 columns only) -> ``map_batches`` normalisation ->
  ``iter_torch_batches`` (the path ``jobs.pretrain`` uses, one consumer);
* COGs (TorchGeo ``RasterDataset`` style): a torch ``DataLoader`` with ``--cpus`` worker processes;
  each sample picks a random window inside the archive's S2 footprint and, for ``T`` scenes, reads
  the 12 band windows from the per-band COGs with rasterio (open handles cached per worker, 20/60 m
  bands resampled bilinearly to 10 m on read).

The synthetic archive (``pipeline.synthetic``, 1024-px COG blocks like real S2 COGs) and its ingest
are written on first use and reused. The shards are read as a list repeated ``--repeat`` times, so
one epoch is long enough for steady state (a larger archive of the same bytes). COG sampling is run
with GDAL's default block cache (the small archive fits: best case for COGs) and with a small one
(the regime of a real archive, many times larger than the cache). Prints samples/s and the ratios
(goal ≥ 10×), steady state and end to end (including Ray Data's pipeline start-up).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs.train.data import (  # noqa: E402
    SHARD_S2_BANDS,
    column_to_numpy,
    normalize_s2,
    normalize_s2_groups,
    read_parquet,
    read_s2,
    s2_columns,
    s2_cube,
)


def prepare(out: Path, scenes: int, size_px: int, blocksize: int) -> tuple[Path, Path]:
    """(items.json, ingest dir), written on first use."""
    from jobs.cli import load_config
    from pipeline import synthetic
    from pipeline.config import IngestConfig

    items = out / "archive" / "items.json"
    if not items.is_file():
        synthetic.make_archive(out / "archive", scenes=scenes, s1_scenes=0, seed=0, size_px=size_px,
                               blocksize=blocksize)
    ingest_dir = out / "ingest"
    if not (ingest_dir / "manifest.json").is_file():
        from jobs import ingest

        cfg = load_config(IngestConfig, REPO / "configs" / "ingest" / "tiny.yaml")
        ingest.run(ingest.IngestJobConfig.of(cfg, items, ingest_dir))
    return items, ingest_dir


def compact(ingest_dir: Path, manifest: dict, out: Path) -> tuple[Path, dict]:
    """The ingest's shards rewritten as one Parquet file (the contract's 128-512 MB shards; small
    synthetic archives give many tiny per-unit files); same rows and manifest statistics."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = out / "shards" / "part-00000.parquet"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.concat_tables(pq.read_table(ingest_dir / s["path"]) for s in manifest["shards"])
        pq.write_table(table, path, row_group_size=64)
    m = dict(manifest, shards=[{"path": "shards/part-00000.parquet", "rows": manifest["rows"]}])
    return out, m


def make_s2_fn(stats: dict):
    def fn(batch):
        x = s2_cube(normalize_s2_groups(read_s2(batch), stats))  # (N, T, 12, H, W) float32
        valid = column_to_numpy(batch.column("s2_valid")).astype(bool)
        x *= valid[:, :, None, None, None]
        return {"s2": x}

    return fn


def bench_shards(ingest_dir: Path, manifest: dict, batch: int, repeat: int) -> dict:
    """One epoch over the shard list repeated ``repeat`` times (a larger archive of the same bytes):
    steady-state samples/s after the first batch, and end to end including pipeline start-up."""

    paths = [str(ingest_dir / s["path"]) for s in manifest["shards"]] * repeat
    columns = [*s2_columns(manifest["schema_version"]), "s2_valid"]
    ds = read_parquet(paths, columns=columns).map_batches(
        make_s2_fn(manifest["band_stats"]), batch_format="pyarrow", batch_size=64
    )
    t0 = time.perf_counter()
    n, t1 = 0, None
    for b in ds.iter_torch_batches(batch_size=batch, drop_last=True, prefetch_batches=4):
        assert b["s2"].ndim == 5
        if t1 is None:
            t1 = time.perf_counter()
            continue
        n += batch
    t2 = time.perf_counter()
    return {"steady": n / (t2 - t1), "end_to_end": (n + batch) / (t2 - t0), "startup_s": t1 - t0,
            "samples": n + batch}


class CogWindows:
    """TorchGeo-style random-window dataset over per-band COGs (map-style; index ignored)."""

    def __init__(self, scenes, tile_px: int, slots: int, stats: dict, seed: int = 0):
        self.scenes = scenes
        self.tile, self.slots = tile_px, slots
        self.mean = np.asarray(stats["s2"]["mean"], np.float32)
        self.std = np.maximum(np.asarray(stats["s2"]["std"], np.float32), 1e-6)
        xs0, ys0, xs1, ys1 = zip(*(s.bounds for s in scenes))
        self.bounds = (max(xs0), max(ys0), min(xs1), min(ys1))  # common footprint
        self.seed = seed

    def __len__(self) -> int:
        return 10**9

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def _open(href: str):
        import rasterio

        return rasterio.open(href)

    def __getitem__(self, i: int):
        import torch
        from rasterio.enums import Resampling
        from rasterio.windows import from_bounds

        rng = random.Random(self.seed * 1_000_003 + i)
        x0b, y0b, x1b, y1b = self.bounds
        size = self.tile * 10.0
        x0 = x0b + 10 * rng.randrange(int((x1b - x0b - size) // 10))
        y0 = y0b + 10 * rng.randrange(int((y1b - y0b - size) // 10))
        out = np.zeros((self.slots, 12, self.tile, self.tile), np.float32)
        for t, scene in enumerate(rng.sample(self.scenes, min(self.slots, len(self.scenes)))):
            for b, band in enumerate(SHARD_S2_BANDS):
                src = self._open(scene.assets[band].href)
                win = from_bounds(x0, y0, x0 + size, y0 + size, src.transform)
                dn = src.read(1, window=win, out_shape=(self.tile, self.tile), resampling=Resampling.bilinear)
                dn = np.where(dn > 0, dn.astype(np.int32) + scene.boa_offset, 0).clip(0, 65535)
                m, s = self.mean[b : b + 1], self.std[b : b + 1]
                out[t, b] = normalize_s2(dn[None].astype(np.uint16), m, s)[0]
        return {"s2": torch.from_numpy(out)}


def bench_cogs(items: Path, manifest: dict, batch: int, batches: int, workers: int) -> float:
    import torch

    from pipeline.config import StorageConfig
    from pipeline.stac import load_scenes

    scenes, _ = load_scenes(str(items), StorageConfig())
    s2 = [s for s in scenes if s.sensor == "s2"]
    epsg = max({s.epsg for s in s2}, key=lambda e: sum(s.epsg == e for s in s2))
    s2 = [s for s in s2 if s.epsg == epsg]
    ds = CogWindows(s2, manifest["tile_px"], manifest["max_slots"], manifest["band_stats"])
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=False,
                                     persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    it = iter(dl)
    next(it)  # worker start-up
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        assert b["s2"].ndim == 5
    return batches * batch / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--out", default=str(REPO / ".cache" / "bench-loader"))
    p.add_argument("--scenes", type=int, default=4)
    p.add_argument("--size-px", type=int, default=1536)
    p.add_argument("--blocksize", type=int, default=1024, help="COG block edge (real S2 COGs: 1024)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeat", type=int, default=10, help="shards: read the shard list this many times")
    p.add_argument("--cog-batches", type=int, default=5)
    p.add_argument("--gdal-cache-mb", type=int, nargs="+", default=[0, 16],
                   help="GDAL block cache per COG worker; 0 = GDAL's default (5 %% of RAM)")
    p.add_argument("--cpus", type=int, default=2)
    a = p.parse_args(argv)
    from jobs.cli import init_ray

    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    init_ray(num_cpus=a.cpus)
    items, ingest_dir = prepare(out, a.scenes, a.size_px, a.blocksize)
    manifest = json.loads((ingest_dir / "manifest.json").read_text())
    res: dict = {"tile_px": manifest["tile_px"], "slots": manifest["max_slots"], "rows": manifest["rows"],
                 "shard_files": len(manifest["shards"]), "batch": a.batch, "cpus": a.cpus}
    for mb in a.gdal_cache_mb:
        if mb:
            os.environ["GDAL_CACHEMAX"] = str(mb)
        else:
            os.environ.pop("GDAL_CACHEMAX", None)
        res[f"cog_samples_per_s_gdal_cache_{mb or 'default'}"] = bench_cogs(
            items, manifest, a.batch, a.cog_batches, a.cpus
        )
    sh = bench_shards(*compact(ingest_dir, manifest, out / "compact"), a.batch, a.repeat)
    res.update({f"shards_{k}": v for k, v in sh.items()})
    for k in [k for k in res if k.startswith("cog_samples")]:
        res["ratio_steady_vs_" + k.removeprefix("cog_samples_per_s_")] = sh["steady"] / res[k]
        res["ratio_end_to_end_vs_" + k.removeprefix("cog_samples_per_s_")] = sh["end_to_end"] / res[k]
    print(json.dumps(res, indent=1), flush=True)
    return res


if __name__ == "__main__":
    main()

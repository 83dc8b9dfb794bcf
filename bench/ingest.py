"""Ingest throughput vs the decode limit, and peak worker memory at 1x and 4x the archive size.

    python bench/ingest.py                           # 2 CPUs, default preset (1024-px units)
    python bench/ingest.py --cpus 16 --size-px 4104  # a 16-core machine (scaling: --cpus 1, 2, 4, 8, 16)
    python bench/ingest.py --config configs/ingest/tiny.yaml --size-px 1026 --scenes 2   # quick look
    python bench/ingest.py --scaling 1 2 4 8 16 --scales 4 --size-px 4104   # CPU scaling, one run

What it measures, in one process and one run:

1. the *decode limit*: plain rasterio full-resolution reads of every COG of the 1x archive on one core
   (``ds.read()`` of each file; MB = decoded pixel bytes);
2. the ingest of the 1x archive (``jobs.ingest.run`` under a local Ray with ``--cpus`` CPUs): decoded
   archive MB per second per core, tiles/s; the ratio ingest-per-core / decode-limit (goal >= 0.6);
3. the same ingest of the 4x archive (4x the scenes over the same tile, so every unit holds 4x the
   acquisitions) — peak RSS of the Ray worker processes must stay flat: units stream scene by scene
   into fixed-size outputs.

With ``--trace`` every unit group records which COG blocks it decoded (``SKYRAY_BLOCK_TRACE``), and the
run prints decodes per needed block: decoded pixel bytes / pixel bytes of the distinct blocks the output
needed, and the same weighted by each block's compressed size (the TIFF tile byte count) — how much
more than once the ingest inflated what it needed (goal <= 1.1). Compare ``--set group_units=1`` (every
unit alone: nothing shared between units) with the default.

``--s1-warp N`` instead times the cross-zone Sentinel-1 warp of one N-px unit (VV + VH, to dB): the
ingest's numpy warp (``pipeline.read.read_s1_scene``) against GDAL's ``WarpedVRT`` (bilinear) on the same
synthetic neighbouring-zone scene, best of 3 in CPU seconds, and their largest difference in dB.

``--profile N`` instead runs the unit groups of the first ``--scales`` archive in this process (no Ray: the
unit work alone) under cProfile with a CPU-time clock, prints their CPU seconds, archive MB per CPU-second
over the decode limit, and the ``N`` costliest functions (own time, % of the groups' CPU); outputs go to
``<workdir>/profile_out`` and the profile to ``<workdir>/ingest.prof``.

``--scaling N1 N2 ...`` instead ingests the archive of the first ``--scales`` once per CPU count (a fresh
local Ray of N CPUs, ``concurrency=N``) and prints speed-up and parallel efficiency against the smallest
N (goal >= 0.85 from 1 to 16 CPUs).

Peak worker memory is sampled with psutil every 0.1 s over the worker processes of this run's own Ray
instance (descendants of this process, so other Ray instances on a shared machine do not count) and
cross-checked with their kernel high-water mark (VmHWM); each scale runs in a fresh Ray instance so
high-water marks do not carry over. Worker CPU time (user + system) over the run gives a second,
contention-free throughput figure. Archives are cached under ``--workdir``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import rasterio  # noqa: E402

from jobs.cli import load_config  # noqa: E402
from pipeline import synthetic  # noqa: E402
from pipeline.config import IngestConfig  # noqa: E402


def archive(workdir: Path, scale: int, args) -> synthetic.ArchiveInfo:
    if args.archive:  # an existing archive as it is (the 1x of the run)
        root = Path(args.archive)
        return synthetic.ArchiveInfo(root=str(root), items=str(root / "items.json"), scenes=(), tiles=(),
                                     truth={}, classes="", seed=1)
    root = workdir / f"archive_s{args.scenes * scale}_{args.size_px}px"
    done = root / ".complete"
    kw = dict(scenes=args.scenes * scale, s1_scenes=args.s1_scenes * scale, seed=1, size_px=args.size_px,
              epsg=32633)
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        t = time.perf_counter()
        synthetic.make_archive(root, workers=args.gen_workers, **kw)
        done.write_text(json.dumps(kw))
        print(f"  wrote {root} in {time.perf_counter() - t:.0f} s", flush=True)
    return synthetic.ArchiveInfo(root=str(root), items=str(root / "items.json"), scenes=(), tiles=(),
                                 truth={}, classes="", seed=1)


def cog_paths(root: str) -> list[str]:
    return sorted(p for p in glob.glob(f"{root}/sentinel-*/**/*.tif", recursive=True))


def decoded_mb(paths: list[str]) -> float:
    total = 0
    for p in paths:
        with rasterio.open(p) as ds:
            total += ds.width * ds.height * ds.count * np.dtype(ds.dtypes[0]).itemsize
    return total / 1e6


def decode_limit(paths: list[str], repeats: int = 2) -> tuple[float, float, float]:
    """Best-of-``repeats`` full-resolution reads of every COG on this core (GDAL single-threaded):
    (MB/s wall, MB per CPU-second, MB)."""
    mb = decoded_mb(paths)
    best, best_cpu = float("inf"), float("inf")
    with rasterio.Env(GDAL_NUM_THREADS="1", GDAL_CACHEMAX=64):
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            for p in paths:
                with rasterio.open(p) as ds:
                    ds.read()
            best = min(best, time.perf_counter() - t)
            best_cpu = min(best_cpu, time.process_time() - c)
    return mb / best, mb / best_cpu, mb


class WorkerMemory:
    """Samples the RSS of ``ray::`` worker processes (and their VmHWM) while a run is going on."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.peak_rss = 0
        self.peak_hwm = 0
        self.pids: set[int] = set()
        self.cpu_first: dict[int, float] = {}
        self.cpu_last: dict[int, float] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _workers():
        """Worker processes of *this* Ray session: descendants of this driver (its raylet's children),
        never other Ray instances on the machine."""
        for p in psutil.Process(os.getpid()).children(recursive=True):
            try:
                cmd = " ".join(p.cmdline())
                if (cmd.startswith("ray::") or "default_worker.py" in cmd) and "Agent" not in cmd:
                    yield p  # task workers (ray::IDLE, ray::Map(...)), not the dashboard/runtime-env agents
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue

    def _sample(self):
        for p in self._workers():
            try:
                rss = p.memory_info().rss
                ct = p.cpu_times()
                self.cpu_first.setdefault(p.pid, ct.user + ct.system)
                self.cpu_last[p.pid] = ct.user + ct.system
                self.pids.add(p.pid)
                self.peak_rss = max(self.peak_rss, rss)
                with open(f"/proc/{p.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.peak_hwm = max(self.peak_hwm, int(line.split()[1]) * 1024)
            except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                continue

    @property
    def cpu_seconds(self) -> float:
        """CPU time the workers spent during the run (user + system)."""
        return sum(self.cpu_last[p] - self.cpu_first[p] for p in self.cpu_last)

    def _loop(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._sample()
        self._stop.set()
        self._t.join()


def block_trace(trace: Path) -> dict:
    """Aggregate the groups' block traces: decodes and bytes per distinct block (see the module doc)."""
    from pipeline.read import BlockKey

    decodes: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for f in trace.glob("*.json"):
        for k, (n, nbytes) in json.loads(f.read_text()).items():
            decodes[k] = decodes.get(k, 0) + n
            sizes[k] = nbytes
    compressed: dict[str, int] = {}
    by_path: dict[str, list[BlockKey]] = {}
    for k in decodes:
        path, band, row, col = k.split("|")
        by_path.setdefault(path, []).append(BlockKey(path, int(band), int(row), int(col)))
    for path, keys in by_path.items():
        with rasterio.open(path) as ds:
            for key in keys:
                compressed["|".join(map(str, key))] = ds.block_size(key.band, key.row, key.col)
    need = sum(sizes.values())
    need_c = sum(compressed.values())
    return {
        "blocks": len(decodes),
        "decodes": sum(decodes.values()),
        "decoded_mb": sum(decodes[k] * sizes[k] for k in decodes) / 1e6,
        "needed_mb": need / 1e6,
        "needed_compressed_mb": need_c / 1e6,
        "ratio": sum(decodes[k] * sizes[k] for k in decodes) / max(need, 1),
        "ratio_compressed": sum(decodes[k] * compressed[k] for k in decodes) / max(need_c, 1),
    }


def ingest(info, cfg: IngestConfig, out: Path, cpus: int, trace: Path | None = None) -> dict:
    import ray

    from jobs.ingest import IngestJobConfig, run
    from pipeline.ingest import BLOCK_TRACE_ENV

    shutil.rmtree(out, ignore_errors=True)
    env = {"PYTHONPATH": str(REPO)}
    if trace is not None:
        shutil.rmtree(trace, ignore_errors=True)
        env[BLOCK_TRACE_ENV] = str(trace)
    ray.init(num_cpus=cpus, object_store_memory=256 * 1024**2, include_dashboard=False,
             runtime_env={"env_vars": env}, log_to_driver=False)
    try:
        # warm the worker pool so start-up is not billed to the ingest (a long job amortises it)
        ray.get([ray.remote(num_cpus=1)(lambda: __import__("pipeline.ingest")).remote() for _ in range(cpus)])
        with WorkerMemory() as mem:
            t = time.perf_counter()
            s = run(IngestJobConfig.of(cfg, info.items, str(out)))
            s["wall"] = time.perf_counter() - t
        s["peak_rss"], s["peak_hwm"], s["workers_seen"] = mem.peak_rss, mem.peak_hwm, len(mem.pids)
        s["worker_cpu_s"] = mem.cpu_seconds
    finally:
        ray.shutdown()
    if trace is not None:
        s["blocks"] = block_trace(trace)
    return s


def profile(cfg: IngestConfig, args) -> int:
    """Every unit group of the first ``--scales`` archive in this process under cProfile (CPU-time clock)."""
    import cProfile
    import pstats

    from pipeline import ingest as ING
    from pipeline.plan import plan_units
    from pipeline.stac import load_scenes

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    info = archive(work, args.scales[0], args)
    scenes, _ = load_scenes(info.items, cfg.storage)
    units, _ = plan_units(scenes, cfg)
    groups = ING.group_units(units, cfg.group_units, cfg)[: args.groups]
    units = [u for g in groups for u in g]
    out = work / "profile_out"
    shutil.rmtree(out, ignore_errors=True)
    fn = ING.make_process_group_fn(cfg, str(out))
    items = [{"units": [u.to_json() for u in g]} for g in groups]
    prof = cProfile.Profile(time.process_time)
    c = time.process_time()
    if args.profile > 0:
        prof.enable()
    for it in items:
        fn(it)
    prof.disable()
    cpu = time.process_time() - c
    paths = cog_paths(info.root)
    if args.groups is not None:  # the COGs of the profiled groups' scenes: those of their units' items
        hrefs = {a.href for u in units for s in (*u.s2, *u.s1) for a in s.assets.values()}
        paths = [p for p in paths if p in hrefs or f"file://{p}" in hrefs]
    _, limit_cpu, mb = decode_limit(paths)
    under = " (under cProfile)" if args.profile > 0 else ""
    print(f"{len(groups)} unit groups, {len(units)} units in {cpu:.2f} CPU-s{under}: "
          f"{mb / cpu:.1f} archive MB per CPU-second, decode limit {limit_cpu:.1f}: "
          f"ratio {mb / cpu / limit_cpu:.3f}")
    if args.profile <= 0:
        return 0
    prof.dump_stats(str(work / "ingest.prof"))
    stats = pstats.Stats(prof).stats
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[: args.profile]
    for (path, line, name), (_, _, own, cum, _) in top:
        where = f"{Path(path).name}:{line}({name})"
        print(f"  {100 * own / cpu:5.1f} %  own {own:6.2f} s  cum {cum:6.2f} s  {where}")
    return 0


def s1_warp(n: int) -> int:
    """Cross-zone S1 warp of one ``n``-px unit: numpy (the ingest) vs GDAL's WarpedVRT, CPU seconds."""
    import datetime as dt
    import tempfile

    from rasterio.enums import Resampling
    from rasterio.transform import Affine
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import transform_bounds

    from pipeline.config import StorageConfig
    from pipeline.read import UnitGrid, read_s1_scene, to_db
    from pipeline.stac import AssetRef, Scene
    from pipeline.storage import rasterio_env

    st = StorageConfig()
    um = n * 10.0
    grid = UnitGrid.from_bounds(32633, (um * (491520 // n), um * (4986880 // n), um * (491520 // n + 1),
                                        um * (4986880 // n + 1)))
    x0, y0, x1, y1 = transform_bounds("EPSG:32633", "EPSG:32634", *grid.bounds)
    tr = Affine(10, 0, np.floor(x0 / 10) * 10 - 300, 0, -10, np.ceil(y1 / 10) * 10 + 300)
    shape = (int((y1 - y0) / 10) + 60, int((x1 - x0) / 10) + 60)
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)  # speckle-like linear power, a nodata corner
        assets = {}
        for b in ("VV", "VH"):
            a = rng.gamma(4.0, 0.01, shape).astype(np.float32)
            a[:40, :40] = -32768.0
            path = f"{tmp}/{b}.tif"
            with rasterio.open(path, "w", driver="COG", width=shape[1], height=shape[0], count=1,
                               dtype="float32", crs="EPSG:32634", transform=tr, nodata=-32768.0,
                               compress="DEFLATE", blocksize=512) as dst:
                dst.write(a, 1)
            assets[b] = AssetRef(path, tuple(tr)[:6], shape, -32768.0)
        sc = Scene(scene_id="S1_X", sensor="s1", datetime=dt.datetime(2022, 5, 3, tzinfo=dt.UTC), epsg=32634,
                   bounds=(x0, y0, x1, y1), lonlat_bbox=(14.0, 44.0, 16.0, 46.0), assets=assets, boa_offset=0,
                   cloud_cover=None)
        ours, gdal, exact = (np.zeros((2, n, n), np.float32) for _ in range(3))
        times = {"numpy": float("inf"), "gdal": float("inf")}
        with rasterio_env(st):
            for _ in range(3):
                c = time.process_time()
                read_s1_scene(sc, grid, st, ours)
                times["numpy"] = min(times["numpy"], time.process_time() - c)
                c = time.process_time()
                for i, b in enumerate(("VV", "VH")):
                    ref = sc.assets[b]
                    with rasterio.open(ref.href) as ds, WarpedVRT(
                        ds, crs="EPSG:32633", transform=grid.transform, width=n, height=n,
                        resampling=Resampling.bilinear, src_nodata=ref.nodata, nodata=np.nan, dtype="float32",
                    ) as vrt:
                        vrt.read(1, out=gdal[i])
                to_db(gdal)
                times["gdal"] = min(times["gdal"], time.process_time() - c)
            for i, b in enumerate(("VV", "VH")):  # GDAL, positions within 1e-4 px: the reference
                ref = sc.assets[b]
                with rasterio.open(ref.href) as ds, WarpedVRT(
                    ds, crs="EPSG:32633", transform=grid.transform, width=n, height=n, tolerance=1e-4,
                    resampling=Resampling.bilinear, src_nodata=ref.nodata, nodata=np.nan, dtype="float32",
                ) as vrt:
                    vrt.read(1, out=exact[i])
            to_db(exact)
    same_nan = bool((np.isnan(ours) == np.isnan(exact)).all())
    print(f"cross-zone S1 warp of a {n}-px unit (VV + VH, dB, speckle): numpy {times['numpy']:.3f} CPU-s, "
          f"GDAL WarpedVRT {times['gdal']:.3f} CPU-s ({times['gdal'] / times['numpy']:.2f}x); against GDAL "
          f"with exact positions: numpy max |difference| {np.nanmax(np.abs(ours - exact)):.4f} dB "
          f"(same NaN pixels: {same_nan}), GDAL's default 0.125-px approximation "
          f"{np.nanmax(np.abs(gdal - exact)):.4f} dB")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpus", type=int, default=2, help="CPUs given to the local Ray (scaling runs: 1..16)")
    ap.add_argument("--config", default=str(REPO / "configs" / "ingest" / "default.yaml"))
    ap.add_argument("--set", dest="overrides", nargs="*", default=[])
    ap.add_argument("--scenes", type=int, default=4, help="S2 scenes of the 1x archive (4x: four times more)")
    ap.add_argument("--s1-scenes", type=int, default=2)
    ap.add_argument("--size-px", type=int, default=2052, help="tile edge in 10 m pixels (multiple of 6)")
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--workdir", default="/tmp/skyray_bench_ingest")
    ap.add_argument("--gen-workers", type=int, default=1)
    ap.add_argument("--trace", action="store_true", help="count decodes per needed COG block")
    ap.add_argument("--s1-warp", type=int, metavar="N", help="time the cross-zone S1 warp of one N-px unit")
    ap.add_argument("--profile", type=int, metavar="N",
                    help="cProfile the unit groups in-process (CPU time); print the N costliest functions")
    ap.add_argument("--archive", help="an existing archive (pipeline.synthetic output) as the 1x, as it is")
    ap.add_argument("--groups", type=int, help="--profile only the first N unit groups")
    ap.add_argument("--scaling", type=int, nargs="+", metavar="N",
                    help="CPU counts to compare on one archive (first --scales); replaces the 1x/4x run")
    args = ap.parse_args(argv)
    if args.s1_warp:
        return s1_warp(args.s1_warp)
    if args.scaling:
        return scaling(args)
    cfg = load_config(IngestConfig, args.config, [f"concurrency={args.cpus}", *args.overrides])
    if args.profile is not None:
        return profile(cfg, args)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"bench/ingest: {args.cpus} CPUs, tile_px={cfg.tile_px}, unit={cfg.tile_px * cfg.unit_tiles} px, "
          f"archive {args.scenes} S2 + {args.s1_scenes} S1 scenes of {args.size_px} px (x{args.scales})",
          flush=True)
    infos = {k: archive(work, k, args) for k in args.scales}
    base = infos[args.scales[0]]
    paths = cog_paths(base.root)
    limit, limit_cpu, mb = decode_limit(paths)
    print(f"decode limit (1 core, rasterio full reads of {len(paths)} COGs, {mb:.0f} MB): "
          f"{limit:.1f} MB/s wall, {limit_cpu:.1f} MB per CPU-second", flush=True)
    rows = []
    for k in args.scales:
        info = infos[k]
        mb_k = decoded_mb(cog_paths(info.root))
        s = ingest(info, cfg, work / f"out_x{k}", args.cpus, work / f"trace_x{k}" if args.trace else None)
        per_core = mb_k / s["wall"] / args.cpus
        per_cpu_s = mb_k / max(s["worker_cpu_s"], 1e-9)
        rows.append((k, mb_k, s, per_core, per_cpu_s))
        print(f"x{k}: {s['units']} units, {s['tiles_written']}/{s['tiles_planned']} tiles written in "
              f"{s['wall']:.1f} s: {mb_k / s['wall']:.1f} MB/s = {per_core:.1f} MB/s/core, "
              f"{s['tiles_written'] / s['wall']:.2f} tiles/s, {per_cpu_s:.1f} MB per worker CPU-second "
              f"({s['task_seconds']:.1f} s inside unit tasks); "
              f"decoded by the ingest {s['bytes_read'] / 1e6:.0f} MB (every SCL, bands of chosen scenes), "
              f"written {s['bytes_written'] / 1e6:.0f} MB; "
              f"peak worker RSS {s['peak_rss'] / 2**20:.0f} MiB (VmHWM {s['peak_hwm'] / 2**20:.0f} MiB, "
              f"{s['workers_seen']} workers)", flush=True)
        if "blocks" in s:
            b = s["blocks"]
            print(f"x{k} blocks: {b['blocks']} needed ({b['needed_mb']:.0f} MB decoded size, "
                  f"{b['needed_compressed_mb']:.0f} MB compressed), {b['decodes']} decodes "
                  f"({b['decoded_mb']:.0f} MB): decoded / needed {b['ratio']:.2f}, "
                  f"compressed-weighted {b['ratio_compressed']:.2f} (goal <= 1.1)", flush=True)
    print()
    for k, _, _, pc, pcs in rows:
        print(f"x{k} ratio ingest/decode per core: {pc / limit:.2f} wall-clock, "
              f"{pcs / limit_cpu:.2f} CPU-time (goal >= 0.6)")
    k0, _, s0, _, _ = rows[0]
    if len(rows) > 1:
        k1, _, s1, _, _ = rows[-1]
        print(f"peak worker memory x{k1} / x{k0}: {s1['peak_hwm'] / max(s0['peak_hwm'], 1):.2f} "
              f"({s0['peak_hwm'] / 2**20:.0f} -> {s1['peak_hwm'] / 2**20:.0f} MiB; flat = ~1.0)")
    return 0


def scaling(args) -> int:
    """Ingest one archive with N CPUs for each N of ``--scaling``; speed-up and efficiency vs the first N."""
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    k = args.scales[0]
    info = archive(work, k, args)
    mb = decoded_mb(cog_paths(info.root))
    print(f"bench/ingest scaling: archive x{k} ({args.scenes * k} S2 + {args.s1_scenes * k} S1 scenes of "
          f"{args.size_px} px, {mb:.0f} MB decoded), CPUs {args.scaling}, {os.cpu_count()} on the machine",
          flush=True)
    rows = []
    for n in args.scaling:
        cfg = load_config(IngestConfig, args.config, [f"concurrency={n}", *args.overrides])
        s = ingest(info, cfg, work / f"out_scaling_{n}", n)
        rows.append((n, s["wall"], s["worker_cpu_s"]))
        print(f"{n:3d} CPUs: {s['wall']:.1f} s wall, {mb / s['wall']:.1f} MB/s, "
              f"{s['tiles_written'] / s['wall']:.1f} tiles/s, worker CPU {s['worker_cpu_s']:.1f} s",
              flush=True)
    n0, w0, _ = rows[0]
    print()
    for n, w, _ in rows:
        speedup = w0 / w
        print(f"{n0} -> {n} CPUs: speed-up {speedup:.2f}x, efficiency {speedup * n0 / n:.2f} (goal >= 0.85)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

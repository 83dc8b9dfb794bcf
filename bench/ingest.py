"""Ingest throughput vs the decode limit, and peak worker memory at 1x and 4x the archive size.

    python bench/ingest.py                           # 2 CPUs, default preset (1024-px units)
    python bench/ingest.py --cpus 16 --size-px 4104  # a 16-core machine (scaling: --cpus 1, 2, 4, 8, 16)
    python bench/ingest.py --config configs/ingest/tiny.yaml --size-px 1026 --scenes 2   # quick look
    python bench/ingest.py --scaling 1 2 4 8 16 --scales 4 --size-px 4104   # CPU scaling, one run
    python bench/ingest.py --archive <archive> --scales 1 --sensors s2 all   # S2 only, then S2 + S1, one run
    python bench/ingest.py --scenes 8 --s1-scenes 4 --size-px 10980 --scales 1 --cloud 0.6 0.3 --generate-only

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

``--sensors s2 all`` ingests the same archive once per choice (``s2``: its Sentinel-2 items only, from an
ItemCollection written beside the outputs; ``all``: as it is), each against the decode limit of its own COGs
(one decode measurement, summed per selection). ``--cloud F ...`` sets the cloud fractions cycled over the
generated Sentinel-2 scenes (the archive's name says them); ``--generate-only`` writes the archives and stops
(generation is not timing-sensitive, the figures are). ``--archive A B ...`` ingests several archives of the
same tile made with other ``--seed``s (other dates, other scene ids) as one, their items in one collection,
so each period holds more scenes and more of its slots are filled.

``--s1-warp N`` instead times the cross-zone Sentinel-1 warp of one N-px unit (VV + VH, to dB): the
ingest's numpy warp (``pipeline.read.read_s1_scene``) against GDAL's ``WarpedVRT`` (bilinear) on the same
synthetic neighbouring-zone scene, best of 3 in CPU seconds, and their largest difference in dB.

``--profile N`` instead runs the unit groups of the first ``--scales`` archive in this process (no Ray: the
unit work alone) under cProfile with a CPU-time clock, prints their CPU seconds, archive MB per CPU-second
over the decode limit, and the ``N`` costliest functions (own time, % of the groups' CPU); outputs go to
``<workdir>/profile_out`` and the profile to ``<workdir>/ingest.prof``.

``--scaling N1 N2 ...`` instead ingests the archive of the first ``--scales`` once per CPU count (a fresh
local Ray of N CPUs, ``concurrency=N``) and prints speed-up and parallel efficiency against the smallest
N (goal >= 0.85 from 1 to 16 CPUs), worker CPU-s against the smallest N's, and each run's ratio to the decode
limit.

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
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import rasterio  # noqa: E402

from jobs.cli import load_config  # noqa: E402
from pipeline import synthetic  # noqa: E402
from pipeline.config import IngestConfig  # noqa: E402


@dataclass(frozen=True)
class Archive:
    """What one run ingests: the roots of one or more synthetic archives of the same tile (their COGs) and
    one ItemCollection of their items."""

    roots: tuple[str, ...]
    items: str

    @property
    def name(self) -> str:
        return "+".join(Path(r).name for r in self.roots)

    def cogs(self, sensors: str = "all") -> list[str]:
        return sorted(p for r in self.roots for p in cog_paths(r, sensors))


def archive(workdir: Path, scale: int, args) -> Archive:
    if args.archive:  # existing archives as they are (the 1x of the run); several: their items together
        roots = tuple(str(Path(a).resolve()) for a in args.archive)
        if len(roots) == 1:
            return Archive(roots, str(Path(roots[0]) / "items.json"))
        # archives of other seeds have other dates and scene ids, so their items combine into one tile's
        # denser archive (more slots filled per period); ids must stay unique
        features = [f for r in roots for f in json.loads((Path(r) / "items.json").read_text())["features"]]
        ids = [f["id"] for f in features]
        if len(set(ids)) != len(ids):
            raise SystemExit(f"--archive: the archives share item ids (same seed?): {sorted(roots)}")
        merged = Archive(roots, "")
        items = workdir / f"items_{merged.name}.json"
        items.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        return Archive(roots, str(items))
    # the name says what is in the archive (S1 count, cloud fractions, seed), so archives of other arguments
    # in the same workdir never stand in for each other
    cloud = "" if args.cloud is None else "_cloud" + "-".join(f"{c:g}" for c in args.cloud)
    seed = "" if args.seed == 1 else f"_seed{args.seed}"
    name = f"archive_s{args.scenes * scale}_s1x{args.s1_scenes * scale}_{args.size_px}px{cloud}{seed}"
    root = workdir / name
    done = root / ".complete"
    kw = dict(scenes=args.scenes * scale, s1_scenes=args.s1_scenes * scale, seed=args.seed,
              size_px=args.size_px, epsg=32633)
    if args.cloud is not None:
        kw["cloud_fractions"] = tuple(args.cloud)
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        t = time.perf_counter()
        synthetic.make_archive(root, workers=args.gen_workers, **kw)
        done.write_text(json.dumps(kw))
        print(f"  wrote {root} in {time.perf_counter() - t:.0f} s", flush=True)
    return Archive((str(root),), str(root / "items.json"))


def only_sensors(info: Archive, sensors: str, workdir: Path) -> Archive:
    """``info`` with an ItemCollection of only the ``sensors`` items ("s2" or "s1"; "all": as it is), written
    under ``workdir`` (asset hrefs are absolute, so the items need not sit in the archive)."""
    if sensors == "all":
        return info
    doc = json.loads(Path(info.items).read_text())
    prefix = SENSOR_PREFIX[sensors]
    doc["features"] = [f for f in doc["features"] if f.get("collection", "").startswith(prefix)]
    if not doc["features"]:
        raise SystemExit(f"--sensors {sensors}: no such items in {info.items}")
    items = workdir / f"items_{info.name}_{sensors}.json"
    items.write_text(json.dumps(doc))
    return Archive(info.roots, str(items))


#: STAC collection prefix of each ``--sensors`` choice (and the archive folder of its COGs)
SENSOR_PREFIX = {"s2": "sentinel-2", "s1": "sentinel-1"}


def stamp() -> str:
    """UTC time and load average, for the record (wall-clock ratios need a quiet machine)."""
    return f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load average {os.getloadavg()[0]:.2f}"


def cog_paths(root: str, sensors: str = "all") -> list[str]:
    """The COGs of ``root`` (those of ``sensors``: "s2", "s1" or "all")."""
    prefix = "sentinel-" if sensors == "all" else SENSOR_PREFIX[sensors]
    return sorted(p for p in glob.glob(f"{root}/{prefix}*/**/*.tif", recursive=True))


def decoded_mb(paths: list[str]) -> float:
    total = 0
    for p in paths:
        with rasterio.open(p) as ds:
            total += ds.width * ds.height * ds.count * np.dtype(ds.dtypes[0]).itemsize
    return total / 1e6


def decode_times(paths: list[str], repeats: int = 2) -> dict[str, tuple[float, float]]:
    """Per COG, the best of ``repeats`` full-resolution reads on this core (GDAL single-threaded):
    path -> (wall s, CPU s). Passes go over every file in turn, so the page cache and GDAL's block cache
    (64 MB, smaller than any full-size COG) see the same as one whole-archive pass."""
    best: dict[str, tuple[float, float]] = {p: (float("inf"), float("inf")) for p in paths}
    with rasterio.Env(GDAL_NUM_THREADS="1", GDAL_CACHEMAX=64):
        for _ in range(repeats):
            for p in paths:
                t, c = time.perf_counter(), time.process_time()
                with rasterio.open(p) as ds:
                    ds.read()
                w, u = best[p]
                best[p] = (min(w, time.perf_counter() - t), min(u, time.process_time() - c))
    return best


def decode_limit(paths: list[str], repeats: int = 2,
                 times: dict[str, tuple[float, float]] | None = None) -> tuple[float, float, float]:
    """The decode limit of ``paths`` (see :func:`decode_times`; ``times`` reuses a measurement that covers
    them): (MB/s wall, MB per CPU-second, MB)."""
    mb = decoded_mb(paths)
    times = times if times is not None else decode_times(paths, repeats)
    wall = sum(times[p][0] for p in paths)
    cpu = sum(times[p][1] for p in paths)
    return mb / wall, mb / cpu, mb


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
    paths = info.cogs()
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
    ap.add_argument("--archive", nargs="+",
                    help="existing archives (pipeline.synthetic output) as the 1x, as they are; several "
                         "(other seeds, same tile): their items ingested together, a denser archive")
    ap.add_argument("--groups", type=int, help="--profile only the first N unit groups")
    ap.add_argument("--scaling", type=int, nargs="+", metavar="N",
                    help="CPU counts to compare on one archive (first --scales); replaces the 1x/4x run")
    ap.add_argument("--sensors", nargs="+", choices=("all", "s2", "s1"), default=["all"],
                    help="ingest only these sensors' items (one ingest per choice, each against the decode "
                         "limit of its own COGs; --scaling: the first)")
    ap.add_argument("--cloud", type=float, nargs="+", metavar="F",
                    help="cloud fractions cycled over generated S2 scenes (default: pipeline.synthetic's)")
    ap.add_argument("--seed", type=int, default=1,
                    help="archive seed (another seed: other dates and scene ids, so archives combine)")
    ap.add_argument("--decode-repeats", type=int, default=2, help="reads of each COG for the decode limit")
    ap.add_argument("--generate-only", action="store_true", help="write the archives of --scales, then stop")
    args = ap.parse_args(argv)
    if args.cloud is not None and not all(0.0 <= c <= 1.0 for c in args.cloud):
        ap.error(f"--cloud: fractions must lie in [0, 1], got {args.cloud}")
    if args.decode_repeats < 1:
        ap.error(f"--decode-repeats must be >= 1, got {args.decode_repeats}")
    if args.s1_warp:
        return s1_warp(args.s1_warp)
    if args.scaling:
        return scaling(args)
    cfg = load_config(IngestConfig, args.config, [f"concurrency={args.cpus}", *args.overrides])
    if args.profile is not None:
        return profile(cfg, args)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    what = " + ".join(args.archive or []) or f"{args.scenes} S2 + {args.s1_scenes} S1 of {args.size_px} px"
    print(f"bench/ingest: {args.cpus} CPUs, tile_px={cfg.tile_px}, unit={cfg.tile_px * cfg.unit_tiles} px, "
          f"archive {what} "
          f"(x{args.scales}), sensors {args.sensors}; {stamp()}", flush=True)
    infos = {k: archive(work, k, args) for k in args.scales}
    if args.generate_only:
        return 0
    base = infos[args.scales[0]]
    times = decode_times(base.cogs(), args.decode_repeats)  # once; every selection sums its COGs
    limits = {}
    for sensors in args.sensors:
        paths = base.cogs(sensors)
        limits[sensors] = decode_limit(paths, times=times)
        limit, limit_cpu, mb = limits[sensors]
        print(f"decode limit, {sensors} (1 core, rasterio full reads of {len(paths)} COGs, {mb:.0f} MB, "
              f"best of {args.decode_repeats}): {limit:.1f} MB/s wall, {limit_cpu:.1f} MB per CPU-second",
              flush=True)
    rows = []
    for k in args.scales:
        for sensors in args.sensors:
            info = only_sensors(infos[k], sensors, work)
            mb_k = decoded_mb(info.cogs(sensors))
            name = f"x{k} {sensors}"
            s = ingest(info, cfg, work / f"out_x{k}_{sensors}", args.cpus,
                       work / f"trace_x{k}_{sensors}" if args.trace else None)
            per_core = mb_k / s["wall"] / args.cpus
            per_cpu_s = mb_k / max(s["worker_cpu_s"], 1e-9)
            rows.append((name, sensors, s, per_core, per_cpu_s))
            print(f"{name}: {s['units']} units, {s['tiles_written']}/{s['tiles_planned']} tiles written in "
                  f"{s['wall']:.1f} s: {mb_k / s['wall']:.1f} MB/s = {per_core:.1f} MB/s/core, "
                  f"{s['tiles_written'] / s['wall']:.2f} tiles/s, {per_cpu_s:.1f} MB per worker CPU-second "
                  f"({s['worker_cpu_s']:.1f} worker CPU-s, {s['task_seconds']:.1f} s inside unit tasks); "
                  f"decoded by the ingest {s['bytes_read'] / 1e6:.0f} MB (every SCL, chosen scenes' bands), "
                  f"written {s['bytes_written'] / 1e6:.0f} MB; "
                  f"peak worker RSS {s['peak_rss'] / 2**20:.0f} MiB (VmHWM {s['peak_hwm'] / 2**20:.0f} MiB, "
                  f"{s['workers_seen']} workers)", flush=True)
            if "blocks" in s:
                b = s["blocks"]
                print(f"{name} blocks: {b['blocks']} needed ({b['needed_mb']:.0f} MB decoded size, "
                      f"{b['needed_compressed_mb']:.0f} MB compressed), {b['decodes']} decodes "
                      f"({b['decoded_mb']:.0f} MB): decoded / needed {b['ratio']:.2f}, "
                      f"compressed-weighted {b['ratio_compressed']:.2f} (goal <= 1.1)", flush=True)
    print()
    for name, sensors, _, pc, pcs in rows:
        limit, limit_cpu, _ = limits[sensors]
        print(f"{name} ratio ingest/decode per core: {pc / limit:.2f} wall-clock, "
              f"{pcs / limit_cpu:.2f} CPU-time (goal >= 0.6)")
    if len(args.scales) > 1:
        s0 = next(s for name, _, s, _, _ in rows if name.startswith(f"x{args.scales[0]} "))
        s1 = next(s for name, _, s, _, _ in reversed(rows) if name.startswith(f"x{args.scales[-1]} "))
        print(f"peak worker memory x{args.scales[-1]} / x{args.scales[0]}: "
              f"{s1['peak_hwm'] / max(s0['peak_hwm'], 1):.2f} "
              f"({s0['peak_hwm'] / 2**20:.0f} -> {s1['peak_hwm'] / 2**20:.0f} MiB; flat = ~1.0)")
    print(f"done: {stamp()}")
    return 0


def scaling(args) -> int:
    """Ingest one archive with N CPUs for each N of ``--scaling``; speed-up and efficiency vs the smallest N
    (whatever order ``--scaling`` runs them in: ``2 1`` shows whether run order moves the figures)."""
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    k = args.scales[0]
    sensors = args.sensors[0]
    info = only_sensors(archive(work, k, args), sensors, work)
    limit, limit_cpu, mb = decode_limit(info.cogs(sensors), args.decode_repeats)
    what = (" + ".join(args.archive or [])
            or f"x{k}: {args.scenes * k} S2 + {args.s1_scenes * k} S1 of {args.size_px} px")
    print(f"bench/ingest scaling: archive {what}, sensors {sensors}, {mb:.0f} MB decoded; "
          f"CPUs {args.scaling}, {os.cpu_count()} on the machine; {stamp()}", flush=True)
    print(f"decode limit (1 core, best of {args.decode_repeats}): {limit:.1f} MB/s wall, "
          f"{limit_cpu:.1f} MB per CPU-second", flush=True)
    rows = []
    for n in args.scaling:
        cfg = load_config(IngestConfig, args.config, [f"concurrency={n}", *args.overrides])
        s = ingest(info, cfg, work / f"out_scaling_{n}", n)
        rows.append((n, s["wall"], s["worker_cpu_s"]))
        print(f"{n:3d} CPUs: {s['wall']:.1f} s wall, {mb / s['wall']:.1f} MB/s, "
              f"{s['tiles_written'] / s['wall']:.1f} tiles/s, worker CPU {s['worker_cpu_s']:.1f} s "
              f"({s['units']} units, {s['tiles_written']} tiles written); ratio to the decode limit per core "
              f"{mb / s['wall'] / n / limit:.2f} wall-clock, "
              f"{mb / max(s['worker_cpu_s'], 1e-9) / limit_cpu:.2f} CPU-time", flush=True)
    rows.sort()
    n0, w0, c0 = rows[0]
    print()
    for n, w, c in rows[1:]:
        speedup = w0 / w
        print(f"{n0} -> {n} CPUs: speed-up {speedup:.2f}x, efficiency {speedup * n0 / n:.2f} (goal >= 0.85); "
              f"worker CPU-s {c / max(c0, 1e-9):.2f}x of {n0} CPUs' ({c0:.1f} -> {c:.1f})")
    print(f"done: {stamp()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

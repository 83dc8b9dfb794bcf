"""The ingest against the tool users would pick instead: odc-stac, on the same Sentinel-2 scenes, in one run.

    # once: a venv of its own with the bench pins (requirements-bench.txt)
    python3 -m venv .venv-bench
    .venv-bench/bin/pip install -r requirements.txt -r requirements-bench.txt
    .venv-bench/bin/python bench/peer.py                        # 3 full-size scenes (10980 px), 2 CPUs
    .venv-bench/bin/python bench/peer.py --scenes 2 --size-px 4104   # a quick look
    .venv-bench/bin/python bench/peer.py --variant group_units=12   # ours once more, split tile-quarters

The scenes are synthetic Sentinel-2 L2A of one MGRS tile (:mod:`pipeline.synthetic`: 1024-px blocks at full
size, DEFLATE + predictor 2, S2 only), on local disk and read once before timing so both sides find them in
the page cache. Then, in this process:

1. **peer**: ``odc.stac.load`` of the 12 bands + SCL of every item onto the tile's 10 m grid (B02's grid),
   bilinear (SCL nearest), dask chunks of ``--chunk`` px, the threaded scheduler with ``--cpus`` threads;
   every chunk is computed and dropped (``dask.array.store`` into a target that only counts its valid
   pixels): load only, no tiling, no slot choice, nothing written;
2. **ours**: ``jobs.ingest.run`` of the same items under a local Ray with ``--cpus`` CPUs (default preset:
   tiles, slot choice, shards written), its worker pool warmed first as in ``bench/ingest.py``.

Both run back to back in this one process, on the same archive and page cache. It prints both wall times and
CPU seconds (process CPU for the peer, Ray worker CPU for ours), the ratio peer / ours (issue 10: goal >= 3x),
the UTC time and load average at start and end, and with ``--json PATH`` writes the same figures to a file.
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.ingest import decoded_mb, stamp  # noqa: E402
from bench.ingest import ingest as run_ingest  # noqa: E402
from jobs.cli import load_config  # noqa: E402
from pipeline import synthetic  # noqa: E402
from pipeline.config import IngestConfig  # noqa: E402

#: the 12 bands + SCL, by their Earth Search asset keys (what an odc-stac user passes as ``bands``)
PEER_BANDS = ("coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "nir09",
              "swir16", "swir22", "scl")


def archive(workdir: Path, scenes: int, size_px: int, workers: int) -> Path:
    root = workdir / f"archive_s{scenes}_{size_px}px"
    done = root / ".complete"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        t = time.perf_counter()
        synthetic.make_archive(root, scenes=scenes, s1_scenes=0, seed=1, size_px=size_px, epsg=32633,
                               workers=workers)
        done.write_text(json.dumps({"scenes": scenes, "size_px": size_px}))
        print(f"  wrote {root} in {time.perf_counter() - t:.0f} s", flush=True)
    return root


def warm(paths: list[str]) -> int:
    """Read every file once (page cache), so neither side pays the first disk read; returns bytes."""
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                n += len(chunk)
    return n


class _CountValid:
    """A ``dask.array.store`` target that keeps only how many non-zero (valid) pixels it was given: proof
    that the load produced data, at a cost far below decoding and resampling it."""

    def __init__(self):
        self.valid = 0
        self.lock = threading.Lock()

    def __setitem__(self, key, value):
        n = int(np.count_nonzero(value))
        with self.lock:
            self.valid += n


def peer_load(items_path: str, cpus: int, chunk: int) -> dict:
    """odc-stac load of the 12 bands + SCL (see the module docstring): wall and process CPU seconds."""
    import dask
    import dask.array as da
    import odc.stac
    import pystac
    from affine import Affine
    from odc.geo.geobox import GeoBox
    from pystac.extensions.projection import ProjectionExtension

    # Sentinel-2 items only (an archive may hold Sentinel-1 too, which the peer does not load)
    items = [it for it in pystac.ItemCollection.from_file(items_path)
             if "sentinel-2" in (it.collection_id or "")]
    b02 = items[0].assets["blue"].extra_fields
    h, w = b02["proj:shape"]
    a = b02["proj:transform"]
    crs = ProjectionExtension.ext(items[0]).crs_string  # pystac reads proj:epsg and proj:code alike
    gbox = GeoBox((h, w), Affine(*a[:6]), crs)
    t, c = time.perf_counter(), time.process_time()
    ds = odc.stac.load(items, bands=list(PEER_BANDS), geobox=gbox,
                       resampling={"*": "bilinear", "scl": "nearest"}, chunks={"x": chunk, "y": chunk},
                       groupby="time")
    arrays = [ds[b].data for b in PEER_BANDS]
    targets = [_CountValid() for _ in arrays]
    with dask.config.set(scheduler="threads", num_workers=cpus):
        da.store(arrays, targets, lock=False)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    valid = sum(x.valid for x in targets) / sum(x.size for x in arrays)
    out_mb = sum(x.nbytes for x in arrays) / 1e6
    return {"wall": wall, "cpu_s": cpu, "shape": dict(ds.sizes), "out_mb": out_mb, "valid": valid}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=3)
    ap.add_argument("--size-px", type=int, default=10980, help="tile edge in 10 m pixels (multiple of 6)")
    ap.add_argument("--cpus", type=int, default=2, help="dask threads for the peer, Ray CPUs for ours")
    ap.add_argument("--chunk", type=int, default=2048, help="odc-stac dask chunk edge (px)")
    ap.add_argument("--config", default=str(REPO / "configs" / "ingest" / "default.yaml"))
    ap.add_argument("--set", dest="overrides", nargs="*", default=[])
    ap.add_argument("--variant", dest="variants", action="append", default=None, metavar="KEY=VALUE[,...]",
                    help="run ours once more per variant with these overrides on top of --set (repeatable), "
                         "e.g. --variant group_units=12: the peer is loaded once")
    ap.add_argument("--workdir", default="/tmp/skyray_bench_peer")
    ap.add_argument("--gen-workers", type=int, default=1)
    ap.add_argument("--archive", help="an existing archive (pipeline.synthetic output) to use as it is")
    ap.add_argument("--json", help="also write both sides' figures to this file")
    args = ap.parse_args(argv)
    try:
        import odc.stac  # noqa: F401
    except ImportError:
        sys.exit("bench/peer.py needs odc-stac: run it with a venv built from requirements-bench.txt "
                 "(see the module docstring)")
    load_config(IngestConfig, args.config, [f"concurrency={args.cpus}", *args.overrides])  # fail early
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    root = Path(args.archive) if args.archive else archive(work, args.scenes, args.size_px, args.gen_workers)
    paths = sorted(glob.glob(f"{root}/sentinel-2*/**/*.tif", recursive=True))
    mb = decoded_mb(paths)
    nbytes = warm(paths)
    print(f"bench/peer: {root}, {len(paths)} COGs, "
          f"{nbytes / 1e6:.0f} MB on disk, {mb:.0f} MB decoded; {args.cpus} CPUs; {stamp()}", flush=True)

    p = peer_load(str(root / "items.json"), args.cpus, args.chunk)
    print(f"peer (odc-stac load, 12 bands + SCL onto 10 m, bilinear, dask {args.cpus} threads, "
          f"{args.chunk}-px chunks): {p['wall']:.1f} s wall, {p['cpu_s']:.1f} CPU-s, output {p['shape']} = "
          f"{p['out_mb']:.0f} MB, {p['valid']:.1%} valid pixels", flush=True)

    info = synthetic.ArchiveInfo(root=str(root), items=str(root / "items.json"), scenes=(), tiles=(),
                                 truth={}, classes="", seed=1)
    results = []
    for variant in ["", *(args.variants or [])]:
        extra = [kv for kv in variant.split(",") if kv]
        vcfg = load_config(IngestConfig, args.config, [f"concurrency={args.cpus}", *args.overrides, *extra])
        s = run_ingest(info, vcfg, work / "out", args.cpus)
        label = f"{Path(args.config).name}{' + ' + variant if variant else ''}"
        print(f"ours (jobs.ingest.run, {label}, {args.cpus} Ray CPUs): {s['wall']:.1f} s wall, "
              f"{s['worker_cpu_s']:.1f} worker CPU-s; {s['tiles_written']}/{s['tiles_planned']} tiles, "
              f"{s['bytes_written'] / 1e6:.0f} MB written", flush=True)
        print(f"  peer / ours: {p['wall'] / s['wall']:.2f}x wall clock, "
              f"{p['cpu_s'] / max(s['worker_cpu_s'], 1e-9):.2f}x CPU time (goal >= 3x); "
              f"archive MB decoded per s per core: peer {mb / p['wall'] / args.cpus:.1f}, "
              f"ours {mb / s['wall'] / args.cpus:.1f}", flush=True)
        results.append({"ours": label, "wall": s["wall"], "cpu_s": s["worker_cpu_s"],
                        "tiles_written": s["tiles_written"], "bytes_written": s["bytes_written"],
                        "wall_ratio": p["wall"] / s["wall"],
                        "cpu_ratio": p["cpu_s"] / max(s["worker_cpu_s"], 1e-9)})
    print(f"done: {stamp()}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"archive": str(root), "cpus": args.cpus, "decoded_mb": mb,
                                               "peer": p, "ours": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Object storage requests of an ingest from ``s3://``: GETs per needed COG block and bytes fetched / needed.

    python bench/s3_requests.py --archive /tmp/skyray_bench_peer/archive_s3_10980px   # full-size scenes
    python bench/s3_requests.py --scenes 2 --size-px 4104 --set period=year max_slots=1

The same figures as ``tests/pipeline/test_requests.py`` (definitions in :mod:`bench._cogblocks`)
for a bigger archive: a synthetic Sentinel-2 archive (written with :mod:`pipeline.synthetic`, or an existing
local one) is uploaded to a moto S3 server on loopback, its item hrefs rewritten to ``s3://``; the ingest
(``jobs.ingest.run`` under a local Ray of ``--cpus`` CPUs, output on local disk) reads it through a
:class:`~bench._s3proxy.CountingProxy`, which records every request. Then the needed blocks are
derived from the output and the COG layouts, and every GET is attributed (issue 10: <= 1.2 data GETs per
needed block, <= 1.1x the needed bytes; headers and IFDs apart).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._cogblocks import (  # noqa: E402
    archive_layouts,
    needed_blocks,
    output_rows,
    request_figures,
    tile_bounds_needed,
)
from bench._s3proxy import CountingProxy  # noqa: E402
from bench._s3proxy import moto_server as _moto_server  # noqa: E402
from bench.ingest import ingest as run_ingest  # noqa: E402
from jobs.cli import load_config  # noqa: E402
from pipeline import synthetic  # noqa: E402
from pipeline.config import IngestConfig, StorageConfig  # noqa: E402
from pipeline.plan import plan_units  # noqa: E402
from pipeline.stac import load_scenes  # noqa: E402
from pipeline.storage import gdal_options  # noqa: E402

BUCKET = "bench-requests"


def moto_server():
    """The moto launcher of ``bench._s3proxy`` with dummy credentials for this process and its Ray workers."""
    return _moto_server({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                         "AWS_DEFAULT_REGION": "us-east-1"})


def upload(root: Path, endpoint: str) -> str:
    """Every file of the local archive ``root`` to ``s3://BUCKET/archive/``, with the item hrefs rewritten
    to point there; returns the ``s3://`` URI of the ItemCollection."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=BUCKET)
    prefix = "archive"
    for p in sorted(root.rglob("*.tif")):
        s3.upload_file(str(p), BUCKET, f"{prefix}/{p.relative_to(root)}")
    items = (root / "items.json").read_text().replace(str(root.resolve()), f"s3://{BUCKET}/{prefix}")
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/items.json", Body=items.encode())
    return f"s3://{BUCKET}/{prefix}/items.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archive", help="an existing local archive (pipeline.synthetic output)")
    ap.add_argument("--scenes", type=int, default=2, help="S2 scenes of the archive to write (no --archive)")
    ap.add_argument("--size-px", type=int, default=4104, help="tile edge in 10 m pixels (multiple of 6)")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--config", default=str(REPO / "configs" / "ingest" / "default.yaml"))
    ap.add_argument("--set", dest="overrides", nargs="*", default=[])
    ap.add_argument("--workdir", default="/tmp/skyray_bench_requests")
    ap.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE",
                    help="environment variables for this run and its Ray workers, e.g. GDAL config options "
                         "such as CPL_VSIL_CURL_CACHE_SIZE=268435456 to try")
    args = ap.parse_args(argv)
    os.environ.update(kv.split("=", 1) for kv in args.env)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.archive:
        root = Path(args.archive)
    else:
        root = work / f"archive_s{args.scenes}_{args.size_px}px"
        if not (root / ".complete").exists():
            synthetic.make_archive(root, scenes=args.scenes, s1_scenes=0, seed=1, size_px=args.size_px,
                                   epsg=32633)
            (root / ".complete").write_text("")
    with moto_server() as endpoint:
        t = time.perf_counter()
        items = upload(root, endpoint)
        print(f"bench/s3_requests: {root} uploaded to the loopback S3 server in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
        with CountingProxy(endpoint) as proxy:
            sets = [f"concurrency={args.cpus}", *args.overrides, f"storage.endpoint_url={proxy.url}"]
            cfg = load_config(IngestConfig, args.config, sets)
            gdal = {k: v for k, v in gdal_options(cfg.storage).items() if not k.startswith("AWS_")}
            print(f"config {Path(args.config).name} {' '.join(args.overrides)}; GDAL {gdal}; env {args.env}",
                  flush=True)
            info = synthetic.ArchiveInfo(root=str(root), items=items, scenes=(), tiles=(), truth={},
                                         classes="", seed=1)
            s = run_ingest(info, cfg, work / "out", args.cpus)
            requests = proxy.take()
        direct = StorageConfig(endpoint_url=endpoint)
        scenes, _ = load_scenes(items, direct)
        units, _ = plan_units(scenes, cfg)
        layouts = archive_layouts(scenes, direct)
    rows = output_rows(work / "out" / "shards")
    need = needed_blocks(tile_bounds_needed(units, rows, scenes, cfg), layouts)
    s1 = [a.href for sc in scenes if sc.sensor == "s1" for a in sc.assets.values()]
    f = request_figures(requests, layouts, need, s1_hrefs=s1)
    print(f"ingest: {s['units']} units, {s['tiles_written']}/{s['tiles_planned']} tiles in "
          f"{s['wall']:.1f} s; {len(requests)} requests at the proxy")
    print("\n".join(f.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

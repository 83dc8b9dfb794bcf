"""jobs.ingest end to end: STAC items -> plan -> Ray Data -> shards, under a real local Ray.

Covers: config errors before any work; a known pattern through the whole job (shard contract v3: 10 m and
20 m bands exact, 60 m bands exactly replicated 3 x 3 on the 20 m grid, S1 co-registered from two UTM zones,
BOA offset removed once, cloud fractions); every reject
reason with planned = written + rejected; idempotence (sha256 of every file); kill -9 mid-run and resume
== uninterrupted; s3:// -> s3:// on the loopback S3 server as a subprocess, with no credential anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.cli import ConfigError, load_config
from jobs.ingest import IngestJobConfig, main, run
from pipeline import synthetic
from pipeline.config import IngestConfig
from pipeline.sensors import S2
from pipeline.shards import read_shards

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "ingest" / "tiny.yaml"
SECRET = "testing-secret-DO-NOT-LOG"
ARCHIVE_KW = dict(scenes=3, s1_scenes=2, seed=11, size_px=516, epsg=32633)


def _job(items, output, *overrides: str) -> IngestJobConfig:
    return load_config(IngestJobConfig, TINY, list(overrides), {"items": str(items), "output": str(output)})


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return synthetic.make_archive(tmp_path_factory.mktemp("archive"), **ARCHIVE_KW)


@pytest.fixture(scope="module")
def reference(ray_session, archive, tmp_path_factory):
    """One uninterrupted local run of the archive: (output dir, summary)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    return out, run(_job(archive.items, out))


# ------------------------------------------------------------------------------------ config errors


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["tile_px=10"], "tile_px"),
        (["max_cloud=1.5"], "max_cloud"),
        (["storage.max_retries=-1"], r"storage\.max_retries"),
        (["no_such_field=1"], "no_such_field"),
        (["min_s2_slots=5", "max_slots=2"], "min_s2_slots"),
    ],
)
def test_invalid_config_fails_before_any_work(tmp_path, capsys, overrides, match):
    out = tmp_path / "out"
    assert main(["--items", str(tmp_path / "items.json"), "--output", str(out), "--config", str(TINY),
                 "--set", *overrides]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not out.exists()


def test_bad_uris_and_missing_config_are_config_errors(tmp_path, capsys):
    none = str(tmp_path / "none.yaml")
    assert main(["--items", "x.json", "--output", str(tmp_path), "--config", none]) == 2
    assert "error: config file not found" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="items: Field required"):
        load_config(IngestJobConfig, TINY, [], {"output": str(tmp_path)})
    with pytest.raises(ConfigError, match="--output: URI scheme 'gs' not allowed"):
        run(_job(tmp_path / "items.json", "gs://bucket/out"))
    with pytest.raises(ConfigError, match=r"--items: URI contains a '\.\.' path segment"):
        run(_job("/data/../items.json", tmp_path / "out"))


# ------------------------------------------------------------------------------ a whole local run


def test_local_run_accounts_for_every_sample(reference):
    out, s = reference
    assert s["tiles_planned"] == s["tiles_written"] + s["tiles_rejected"] > 0
    assert s["tiles_written"] > 0 and s["units_processed"] == s["units"] and s["units_skipped"] == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["rows"] == s["tiles_written"] == s["rows"]
    rej = pq.read_table(out / "rejects.parquet")
    tile_rej = [r for r in rej.to_pylist() if r["level"] == "tile"]
    assert len(tile_rej) == s["tiles_rejected"]
    # every planned sample is either a row or a tile reject, never both
    got = read_shards(out / "shards")
    rows, rejected = set(got["sample_id"]), {r["id"] for r in tile_rej}
    assert not rows & rejected and len(rows) + len(rejected) == s["tiles_planned"]
    # shard checksums in the manifest; band stats gathered in the same pass equal a recomputation
    for sh in m["shards"]:
        data = (out / sh["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sh["sha256"] and len(data) == sh["bytes"]
    # tiny.yaml compacts (shard_mb: 4): fewer files than units with rows, each named after its first unit
    sides = [json.loads(p.read_text()) for p in sorted((out / "units").glob("*.json"))]
    with_rows = [sc for sc in sides if sc["tiles_written"]]
    assert 0 < len(m["shards"]) < len(with_rows)
    assert {sh["path"] for sh in m["shards"]} == {sc["shard"]["path"] for sc in with_rows}
    assert {sh["path"] for sh in m["shards"]} <= {f"shards/{sc['unit_id']}.parquet" for sc in sides}
    assert sum(sh["rows"] for sh in m["shards"]) == m["rows"]
    # S2 stats at native resolution, in the canonical band order: B01 (60 m, on the 20 m grid), B04, B12
    s2_10m = got["s2_10m"][got["s2_valid"]].astype(np.float64)  # (K, 4, H, W)
    s2_20m = got["s2_20m"][got["s2_valid"]].astype(np.float64)  # (K, 8, H/2, W/2)
    assert m["band_stats"]["s2"]["bands"][0] == "B01" and m["schema_version"] == 3
    for b, v in ((0, s2_20m[:, 0]), (3, s2_10m[:, 2]), (11, s2_20m[:, 7])):
        v = v[v > 0]
        assert m["band_stats"]["s2"]["mean"][b] == pytest.approx(v.mean(), rel=1e-9)
        assert m["band_stats"]["s2"]["std"][b] == pytest.approx(v.std(), rel=1e-6)
    s1 = got["s1"][got["s1_valid"]].astype(np.float64)
    v1 = s1[:, 0][np.isfinite(s1[:, 0])]
    assert m["band_stats"]["s1"]["mean"][0] == pytest.approx(v1.mean(), rel=1e-6)
    assert m["config"]["tile_px"] == 64 and "concurrency" not in m["config"]


def test_rerun_writes_nothing_and_is_byte_identical(reference, archive):
    out, _ = reference
    before = _digests(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    s = run(_job(archive.items, out, "concurrency=1"))  # parallelism does not change the output
    assert s["units_processed"] == 0 and s["units_skipped"] == s["units"] and s["files_written"] == []
    assert s["bytes_written"] == 0
    assert _digests(out) == before
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes


# --------------------------------------------------------------------------- known pattern, exact


@pytest.fixture(scope="module")
def pattern(tmp_path_factory):
    import datetime as dt

    root = tmp_path_factory.mktemp("pattern")
    # DN carry +1000 (baseline 05.10, no flag): the ingest must remove it exactly once
    s2 = synthetic.write_pattern_scene(root, size_px=516, boa="offset", cloud_box=(100, 100, 200, 300),
                                       items_name=None)
    when = dt.datetime(2022, 6, 17, 5, 1, 2, tzinfo=dt.UTC)
    s1a = synthetic.write_pattern_s1_scene(root, size_px=516, when=when, items_name=None)
    s1b = synthetic.write_pattern_s1_scene(root, size_px=516, when=when + dt.timedelta(days=1),
                                           neighbour_zone=True, items_name=None)
    items = root / "items.json"
    items.write_text(json.dumps(synthetic.item_collection([s2, s1a, s1b])))
    tile = synthetic.default_tile(32633, 516)
    return items, tile.x0, tile.y0


def test_known_pattern_through_the_whole_ingest(ray_session, pattern, tmp_path):
    items, x0, y0 = pattern
    s = run(_job(items, tmp_path / "out"))
    got = read_shards(tmp_path / "out" / "shards")
    n = len(got["sample_id"])
    assert n > 10 and s["tiles_written"] == n
    cloud_rows, cloud_cols = (100, 200), (100, 300)
    for k in range(n):
        r0 = int(round((y0 - got["y_max"][k]) / 10))
        c0 = int(round((got["x_min"][k] - x0) / 10))
        rr, cc = np.meshgrid(np.arange(r0, r0 + 64), np.arange(c0, c0 + 64), indexing="ij")
        assert got["s2_valid"][k].tolist() == [True, False, False]
        tile10, tile20 = got["s2_10m"][k, 0], got["s2_20m"][k, 0]  # (4, 64, 64), (8, 32, 32)
        in_scene = (rr >= 0) & (cc >= 0) & (rr < 516) & (cc < 516)
        for j, b in enumerate(("B02", "B03", "B04", "B08")):  # 10 m: exact, offset removed once; 0 outside
            # (the file stores min(v + 1000, 65535), so values above 64535 come back saturated)
            want = np.where(in_scene, np.minimum(synthetic.pattern_value(b, rr, cc), 65535 - 1000), 0)
            np.testing.assert_array_equal(tile10[j], want, err_msg=b)
        # 20 m grid: the 20 m bands are the COG's pixels, the 60 m bands each COG pixel on its 3 x 3 cells:
        # the value stored for the native pixel holding each 20 m centre, exactly (edges included)
        xs20 = got["x_min"][k] + (np.arange(32) + 0.5) * 20
        ys20 = got["y_max"][k] - (np.arange(32) + 0.5) * 20
        X20, Y20 = np.meshgrid(xs20, ys20)
        in20 = in_scene[::2, ::2]
        for j, b in enumerate(("B01", "B05", "B06", "B07", "B8A", "B09", "B11", "B12")):
            res = S2.band(b).resolution_m
            cx = x0 + (np.floor((X20 - x0) / res) + 0.5) * res
            cy = y0 - (np.floor((y0 - Y20) / res) + 0.5) * res
            want = np.where(in20, np.rint(synthetic.pattern_ramp(b, cx, cy, x0, y0)), 0)
            np.testing.assert_array_equal(tile20[j], want, err_msg=b)
        xs = got["x_min"][k] + (np.arange(64) + 0.5) * 10
        ys = got["y_max"][k] - (np.arange(64) + 0.5) * 10
        X, Y = np.meshgrid(xs, ys)
        # cloud fraction of the slot = share of the tile's pixels in the SCL cloud box
        in_box = (rr >= cloud_rows[0]) & (rr < cloud_rows[1]) & (cc >= cloud_cols[0]) & (cc < cloud_cols[1])
        valid = (tile10 != 0).all(axis=0)
        assert got["s2_cloud"][k, 0] == pytest.approx((in_box & valid).sum() / valid.sum(), abs=1e-6)
        # S1 from the same zone (shifted grid) and the next zone, both on the S2 pixels, in dB
        assert got["s1_valid"][k].sum() == 2
        want = 10 * np.log10(synthetic.pattern_s1_power("VV", X, Y, x0, y0))
        for slot in (0, 1):
            s1 = got["s1"][k, slot, 0].astype(float)
            ok = np.isfinite(s1)
            assert ok.mean() > 0.9
            np.testing.assert_allclose(s1[ok], want[ok], atol=0.05)
    # tiles under the cloud box (> max_cloud) are rejected all_cloud, nothing else is cloud-rejected
    rej = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert {r["reason"] for r in rej if r["level"] == "tile"} <= {"all_cloud", "all_nodata"}
    assert any(r["reason"] == "all_cloud" for r in rej)


# ------------------------------------------------------------------------------------ bad inputs


def test_every_reject_reason_and_the_job_finishes(ray_session, tmp_path):
    bad = synthetic.make_bad_inputs(tmp_path / "bad", seed=3, size_px=516)
    s = run(_job(bad.items_dir, tmp_path / "out"))
    rej = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    by_id = {}
    for r in rej:
        by_id.setdefault(r["id"], set()).add(r["reason"])
    for item_id, reason in bad.expected.items():
        if reason in ("all_cloud", "all_nodata"):
            continue  # tile-level, checked below
        hits = {i for i, reasons in by_id.items() if item_id in i and reason in reasons}
        assert hits, f"{item_id}: expected a {reason} reject, got {by_id.get(item_id)}"
    tile_reasons = {r["reason"] for r in rej if r["level"] == "tile"}
    assert {"all_cloud", "all_nodata"} <= tile_reasons
    assert s["tiles_planned"] == s["tiles_written"] + s["tiles_rejected"]
    assert s["tiles_written"] > 0  # the good scene still makes it, beside the unreadable copies
    assert all(SECRET not in r["detail"] for r in rej)


# ----------------------------------------------------------------------------- kill -9 and resume


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def test_kill_mid_run_then_resume_equals_uninterrupted(ray_session, reference, archive, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "out"
    # join the test's Ray instance (as under `ray job submit`), one unit at a time so the kill lands mid-run
    env = _env(RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    cmd = [sys.executable, "-m", "jobs.ingest", "--items", archive.items, "--output", str(out),
           "--config", str(TINY), "--set", "concurrency=1"]
    log = open(tmp_path / "killed.log", "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 240
    while not (out / "shards").exists() or not list((out / "shards").glob("*.parquet")):
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.time() < deadline, "no shard appeared"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    time.sleep(2)  # let the cluster reap the dead driver's task
    n_units = len(list((ref_out / "units").glob("*.json")))
    assert len(list((out / "units").glob("*.json"))) < n_units, "the kill landed after the run finished"
    assert not (out / "manifest.json").exists()

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "already done" in done.stdout + done.stderr
    assert _digests(out) == _digests(ref_out)


# ------------------------------------------------------------------- s3:// -> s3://, no credentials


def test_s3_to_s3_subprocess_without_leaking_credentials(s3_server, s3_bucket, reference, tmp_path, request):
    import s3fs

    opts = {"client_kwargs": {"endpoint_url": s3_server["endpoint_url"]}}
    info = synthetic.make_archive(f"s3://{s3_bucket}/archive", **ARCHIVE_KW)  # endpoint: AWS_ENDPOINT_URL
    out = f"s3://{s3_bucket}/ingest/v1"
    cmd = [sys.executable, "-m", "jobs.ingest", "--items", info.items, "--output", out, "--config", str(TINY)]
    # its own local Ray (no RAY_ADDRESS), so the workers inherit the AWS_* variables of this environment
    env = _env()
    env.pop("RAY_ADDRESS", None)
    # its own Ray temp root (short: Ray's socket paths must stay under 108 bytes), so the log scan
    # below reads this job's Ray logs only, not those of another suite running on the same host
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
    env["RAY_TMPDIR"] = str(ray_tmp)
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-4000:]
    assert "ingest summary" in done.stdout and "tiles written" in done.stdout
    fs = s3fs.S3FileSystem(**opts)
    local = tmp_path / "fetched"
    fs.get(f"{s3_bucket}/ingest/v1/", str(local), recursive=True)
    ref_out, _ = reference
    # same pixels in, same shards out, whether read from S3 or disk
    for name, digest in _digests(ref_out).items():
        if name.startswith(("shards/", "units/")):
            assert _digests(local).get(name) == digest, name
    m = json.loads((local / "manifest.json").read_text())
    assert m["rows"] == json.loads((ref_out / "manifest.json").read_text())["rows"]
    # the secret is nowhere: outputs, stdout/stderr, the job's Ray logs
    assert SECRET not in logs
    for p in local.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p
    ray_logs = [p for p in ray_tmp.glob("**/session_*/logs/*") if p.is_file()]
    assert ray_logs, f"no Ray logs under {ray_tmp}"
    for p in ray_logs:
        assert SECRET.encode() not in p.read_bytes(), p


def test_a_job_from_pipeline_settings_round_trips():
    """``IngestJobConfig.of`` (the benches' way in) keeps every pipeline setting and adds only the paths."""
    cfg = load_config(IngestConfig, TINY, ["max_cloud=0.25"])
    job = IngestJobConfig.of(cfg, "items.json", "s3://b/out")
    assert (job.items, job.output) == ("items.json", "s3://b/out")
    assert job.pipeline_config() == cfg

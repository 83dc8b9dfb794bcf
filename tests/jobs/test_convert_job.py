"""``jobs.convert`` on Ray: EuroSAT from disk, BigEarthNet from ``s3://`` (moto), idempotent re-runs,
resume after a lost shard, and every config error before any work."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.cli import ConfigError, load_config
from jobs.convert import CONFIGS, ConvertConfig, main, run
from pipeline.config import StorageConfig
from pipeline.convert.bigearthnet import CLASSES as BEN_CLASSES
from pipeline.convert.eurosat import CLASSES as EUROSAT_CLASSES
from pipeline.shards import read_shards, to_cube
from pipeline.storage import upload_tree
from tests.pipeline.convert.layouts import make_ben_v2, make_eurosat, s2_name_v2


def _files(root: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256, mtime_ns) of every file under ``root``."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _cfg(name: str, source, output, *overrides: str) -> ConvertConfig:
    return load_config(ConvertConfig, CONFIGS / f"{name}.yaml", list(overrides),
                       fields={"source": str(source), "output": str(output)})


@pytest.fixture(scope="module")
def eurosat(tmp_path_factory, ray_session):
    """A EuroSAT copy with an unknown class folder and a corrupt file, converted once (3 items a shard)."""
    root = tmp_path_factory.mktemp("eurosat")
    copy = make_eurosat(root / "src", {"Forest": 4, "River": 3, "Clouds": 1})
    (copy.class_root / "River" / "River_3.tif").write_bytes(b"II*\x00 truncated")
    out = root / "out"
    summary = run(_cfg("eurosat", root / "src", out, "rows_per_shard=3"))
    return copy, out, summary


def test_eurosat_job_writes_labelled_shards_and_accounts_for_every_item(eurosat):
    copy, out, s = eurosat
    assert (s["found"], s["written"], s["rejected"]) == (8, 6, 2)
    assert s["rejects_by_reason"] == {"unknown_class": 1, "unreadable_file": 1}
    # sorted ids in threes: [F1 F2 F3] [F4 R1 R2] [R3 -> rejected: no file]
    assert (s["shards_converted"], s["shards_skipped"], s["shards"]) == (3, 0, 2)
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["Forest_1.parquet", "Forest_4.parquet"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"] == {"found": 8, "written": 6, "rejected": 2, "items_written": 6}
    assert m["benchmark"]["name"] == "eurosat" and m["benchmark"]["classes"] == list(EUROSAT_CLASSES)
    assert m["s2_groups"]["s2_20m"]["gsd"] == 10.0
    opts = {"split_files": None, "seed": 0, "val_fraction": 0.2, "test_fraction": 0.2}
    assert m["config"] == {"benchmark": "eurosat", "rows_per_shard": 3, "options": opts}
    a = read_shards(out / "shards")
    assert sorted(a["sample_id"]) == ["Forest_1", "Forest_2", "Forest_3", "Forest_4", "River_1", "River_2"]
    assert sum(m["benchmark"]["splits"].values()) == 6
    # band statistics over the train split only
    train = [i for i, sp in enumerate(a["split"]) if sp == "train"]
    assert m["band_stats"]["s2"]["count"][0] == len(train) * 64 * 64
    want = np.mean([copy.images[a["sample_id"][i]][0].astype(np.float64).mean() for i in train])
    assert m["band_stats"]["s2"]["mean"][0] == pytest.approx(want)
    cube = to_cube(a["s2_10m"], a["s2_20m"], resampling="nearest")
    for i, sid in enumerate(a["sample_id"]):
        np.testing.assert_array_equal(cube[i, 0], copy.images[sid][[0, 1, 2, 3, 4, 5, 6, 7, 12, 8, 10, 11]])
        assert a["label"][i] == EUROSAT_CLASSES.index(sid.split("_")[0])
    rej = pq.read_table(out / "rejects.parquet").to_pylist()
    assert [(r["id"], r["reason"]) for r in rej] == [("Clouds_1", "unknown_class"),
                                                     ("River_3", "unreadable_file")]


def test_a_rerun_writes_nothing_and_leaves_every_file_byte_identical(eurosat):
    copy, out, first = eurosat
    before = _files(out)
    again = run(_cfg("eurosat", copy.root, out, "rows_per_shard=3"))
    assert (again["shards_converted"], again["shards_skipped"], again["bytes_written"]) == (0, 3, 0)
    assert _files(out) == before  # same bytes, and not even rewritten (same mtimes)
    assert {k: again[k] for k in ("found", "written", "rejected", "rows")} == \
        {k: first[k] for k in ("found", "written", "rejected", "rows")}


def test_a_lost_or_damaged_shard_is_rewritten_alone(eurosat, tmp_path):
    copy, out, _ = eurosat
    import shutil

    work = tmp_path / "out"
    shutil.copytree(out, work)
    before = {k: v[0] for k, v in _files(work).items()}
    (work / "shards" / "Forest_4.parquet").unlink()
    (work / "shards" / "Forest_1.parquet").write_bytes(b"half a file")
    (work / "shards" / ".Forest_4.parquet.0123abcd.tmp").write_bytes(b"a killed run's temp file")
    s = run(_cfg("eurosat", copy.root, work, "rows_per_shard=3"))
    assert (s["shards_converted"], s["shards_skipped"]) == (2, 1)
    assert {k: v[0] for k, v in _files(work).items()} == before  # the temp file is gone too


def test_bigearthnet_from_s3_equals_the_local_conversion(s3_server, s3_bucket, ray_session, tmp_path):
    import s3fs

    spec = [{"labels": ["Urban fabric", "Marine waters"], "split": "train"},
            {"labels": ["Arable land"], "split": "validation"},
            {"labels": ["Pastures"], "split": "test", "snow": True},
            {"labels": ["Coniferous forest"], "split": "test", "skip_bands": ("B09",)},
            {"labels": ["Mixed forest"], "split": "train", "no_s1": True}]
    patches = make_ben_v2(tmp_path / "src", spec)
    local = run(_cfg("bigearthnet", tmp_path / "src", tmp_path / "local", "rows_per_shard=2"))
    assert (local["found"], local["written"], local["rejected"]) == (5, 3, 2)
    assert local["rejects_by_reason"] == {"excluded": 1, "missing_file": 1}
    assert local["splits"] == {"train": 2, "val": 1}
    # the workers of a Ray started before the server lack its AWS_* variables: the job names the endpoint and
    # goes unsigned to a bucket whose policy lets anyone in (as public dataset buckets do), so the test holds
    # whichever test started Ray
    import boto3

    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{s3_bucket}", f"arn:aws:s3:::{s3_bucket}/*"]}]}
    boto3.client("s3", endpoint_url=s3_server["endpoint_url"]).put_bucket_policy(Bucket=s3_bucket,
                                                                                  Policy=json.dumps(policy))
    storage = [f"storage.endpoint_url={s3_server['endpoint_url']}", "storage.anonymous=true"]
    upload_tree(tmp_path / "src", f"s3://{s3_bucket}/BigEarthNet",
                StorageConfig(endpoint_url=s3_server["endpoint_url"]))
    remote = run(_cfg("bigearthnet", f"s3://{s3_bucket}/BigEarthNet", f"s3://{s3_bucket}/bench/ben",
                      "rows_per_shard=2", *storage))
    assert {k: remote[k] for k in ("found", "written", "rejected", "rows", "splits")} == \
        {k: local[k] for k in ("found", "written", "rejected", "rows", "splits")}
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server["endpoint_url"]})
    fs.get(f"{s3_bucket}/bench/ben/", str(tmp_path / "fetched"), recursive=True)
    got = {k: v[0] for k, v in _files(tmp_path / "fetched").items()}
    # byte for byte, wherever the dataset is read from
    assert got == {k: v[0] for k, v in _files(tmp_path / "local").items()}
    a = read_shards(tmp_path / "fetched" / "shards")
    i = a["sample_id"].index(s2_name_v2(0))
    assert a["label"][i].tolist() == [1] + [0] * 17 + [1] and a["info"].classes == BEN_CLASSES
    np.testing.assert_array_equal(a["s2_20m"][i, 0, 0], np.kron(patches[s2_name_v2(0)].bands["B01"],
                                                                np.ones((3, 3), np.uint16)))
    assert a["s1_valid"][:, 0].tolist() == [sid != s2_name_v2(4) for sid in a["sample_id"]]
    again = run(_cfg("bigearthnet", f"s3://{s3_bucket}/BigEarthNet", f"s3://{s3_bucket}/bench/ben",
                     "rows_per_shard=2", *storage))
    assert (again["shards_converted"], again["bytes_written"]) == (0, 0)


def test_config_errors_fail_before_any_work(eurosat, tmp_path, capsys):
    copy, out, _ = eurosat
    src = str(copy.root)
    with pytest.raises(ConfigError, match=r"options.seed: Input should be a valid integer"):
        run(_cfg("eurosat", src, tmp_path / "a", "options.seed=abc"))
    with pytest.raises(ConfigError, match=r"options.split_file: Extra inputs are not permitted"):
        run(_cfg("eurosat", src, tmp_path / "a", "options.split_file=x.txt"))
    with pytest.raises(ConfigError, match=r"options: Value error, val_fraction \+ test_fraction"):
        run(_cfg("eurosat", src, tmp_path / "a", "options.val_fraction=0.6", "options.test_fraction=0.5"))
    with pytest.raises(ConfigError, match=r"benchmark: Value error, unknown benchmark 'imagenet'"):
        _cfg("eurosat", src, tmp_path / "a", "benchmark=imagenet")
    with pytest.raises(ConfigError, match=r"rows_per_shard: Input should be greater than or equal to 1"):
        _cfg("eurosat", src, tmp_path / "a", "rows_per_shard=0")
    with pytest.raises(ConfigError, match=r"--source: URI scheme 'gs' not allowed"):
        run(_cfg("eurosat", "gs://bucket/eurosat", tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"--source .*: no EuroSAT class folders"):
        run(_cfg("eurosat", tmp_path, tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"--source .*: options.split_files.train: nope.txt not found"):
        run(_cfg("eurosat", src, tmp_path / "a", "options.split_files={train: nope.txt}"))
    assert not (tmp_path / "a").exists()
    # resuming into an output of another config or contract version
    with pytest.raises(ConfigError, match=r"written by a different config \(options.seed: 0 there, 7 now"):
        run(_cfg("eurosat", src, out, "rows_per_shard=3", "options.seed=7"))
    import shutil

    old = tmp_path / "old"
    shutil.copytree(out, old)
    m = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**m, "schema_version": 2}))
    with pytest.raises(ConfigError, match=r"holds shards of contract v2; this job writes v3"):
        run(_cfg("eurosat", src, old, "rows_per_shard=3"))
    (old / "manifest.json").unlink()  # an interrupted run of another config: its sidecars tell
    with pytest.raises(ConfigError, match=r"different config \(rows_per_shard: 3 there, 4 now\)"):
        run(_cfg("eurosat", src, old, "rows_per_shard=4"))
    (old / "manifest.json").write_text(json.dumps({"schema_version": 3, "config": {}, "shards": []}))
    with pytest.raises(ConfigError, match=r"holds an ingest output, not a benchmark conversion"):
        run(_cfg("eurosat", src, old, "rows_per_shard=3"))
    # the CLI prints the error naming the field and exits 2
    rc = main(["--benchmark", "eurosat", "--source", src, "--output", str(tmp_path / "b"),
               "--set", "options.test_fraction=2"])
    assert rc == 2 and "options.test_fraction: Input should be less than 1" in capsys.readouterr().err


def test_the_cli_prints_the_summary_table(eurosat, tmp_path, capsys):
    copy, _, _ = eurosat
    rc = main(["--config", str(CONFIGS / "eurosat.yaml"), "--source", str(copy.root), "--output",
               str(tmp_path / "cli"), "--set", "rows_per_shard=4"])
    out = capsys.readouterr().out
    assert rc == 0 and "convert summary" in out
    assert re.search(r"found = written \+ rejected +8 = 6 \+ 2\n", out)
    assert re.search(r"rejects: unreadable_file +1\n", out)
    assert sorted(p.name for p in (tmp_path / "cli" / "shards").iterdir()) == ["Forest_1.parquet",
                                                                               "River_1.parquet"]


def test_plan_shards_names_and_duplicates():
    from jobs.convert import plan_shards
    from pipeline.convert import Item

    items = [Item(i, "train", {}) for i in ("c", "a/1", "b", "a 2", "d")]
    plans = plan_shards(items, 2)
    assert [(p.name, [it.id for it in p.items]) for p in plans] == [
        ("a_2", ["a 2", "a/1"]), ("b", ["b", "c"]), ("d", ["d"])]
    clash = plan_shards([Item(i, "train", {}) for i in ("a/1", "a 1", "b")], 1)
    assert [p.name for p in clash] == ["000000_a_1", "000001_a_1", "000002_b"]
    with pytest.raises(ConfigError, match=r"1 item ids occur twice .*\['b'\]"):
        plan_shards([Item("b", "train", {}), Item("a", "val", {}), Item("b", "test", {})], 2)


def test_the_batch_function_runs_without_a_cluster_and_skips_what_is_done(tmp_path):
    from jobs.convert import item_to_json, make_convert_fn, manifest_config, plan_shards, validate_options
    from pipeline.convert import get
    from pipeline.storage import filesystem

    make_eurosat(tmp_path / "src", {"Pasture": 2}, size=64)
    cfg = _cfg("eurosat", tmp_path / "src", tmp_path / "out")
    bench = get("eurosat")
    opts = validate_options(bench, cfg.options)
    fs, root = filesystem(cfg.source, cfg.storage)
    items, _ = bench.list_items(root, opts, fs)
    (plan,) = plan_shards(items, 10)
    fn = make_convert_fn(cfg, manifest_config(cfg, opts))
    plan_json = json.dumps({"name": plan.name, "items": [item_to_json(i) for i in plan.items]})
    batch = {"plan": np.array([plan_json], dtype=object)}
    (first,) = [json.loads(s) for s in fn(batch)["side"]]
    assert not first["skipped"] and first["items_written"] == 2 and first["shard"]["rows"] == 2
    assert (tmp_path / "out" / first["shard"]["path"]).is_file()
    (again,) = [json.loads(s) for s in fn(batch)["side"]]
    assert again["skipped"] and again["shard"] == first["shard"]


@pytest.mark.parametrize("task,column,slots", [("segmentation", "label_mask", 4),
                                               ("change", "label_change", 2)])
def test_the_job_takes_facts_that_depend_on_options(ray_session, tmp_path, task, column, slots):
    """The synthetic benchmark's task decides its label column and T: the job uses the resolved facts."""
    from pipeline import synthetic

    src = synthetic.make_archive(tmp_path / "archive", scenes=0, s1_scenes=0, seed=3, size_px=192,
                                 epsg=[32633])
    out = tmp_path / "out"
    run(_cfg("synthetic", src.root, out, f"options.task={task}"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["benchmark"]["task"] == task and manifest["max_slots"] == slots
    t = pq.read_table(out / "shards")
    assert column in t.schema.names and read_shards(out / "shards")["s2_10m"].shape[1] == slots

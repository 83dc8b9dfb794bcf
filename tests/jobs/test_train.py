"""Pure parts of ``jobs.train``: LR schedule, stages, DeepSpeed config, parameter groups, the family
table, shard decoding, preprocessing and augmentation (no cluster; one test reads shards through the
session's local Ray Data, as ``jobs.train.data.build_dataset`` does)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError

from jobs.train.configs import DeepSpeedConfig, OptimConfig, ScalingSection, StageConfig, TrainConfig
from jobs.train.data import (
    SHARD_S2_BANDS,
    SKYSENSE_S2_BANDS,
    augment_sample,
    band_indices,
    column_to_numpy,
    make_augment_fn,
    make_skysense_preprocess_fn,
    make_spectralgpt_preprocess_fn,
    pick_slots,
    read_parquet,
)
from jobs.train.engine import build_deepspeed_config, param_groups
from jobs.train.schedules import Accumulation, accumulation, lr_at, micro_batch, stage_at, warmup_cosine
from pipeline import shards as S
from tests.jobs.conftest import make_rows, rows_to_table, rows_to_table_v1

# ------------------------------------------------------------------------------------ schedule


@pytest.mark.parametrize(
    "step, warmup, total, min_ratio, expected",
    [
        (0, 4, 20, 0.0, 0.25),  # linear warmup (step + 1) / warmup
        (3, 4, 20, 0.0, 1.0),  # last warmup step reaches the peak
        (4, 4, 20, 0.0, 1.0),  # cosine starts at the peak
        (12, 4, 20, 0.0, 0.5),  # halfway through the cosine
        (20, 4, 20, 0.0, 0.0),  # the end
        (99, 4, 20, 0.1, 0.1),  # clamped past the end, floor min_ratio
        (0, 0, 10, 0.0, 1.0),  # no warmup
        (5, 0, 10, 0.2, 0.6),  # min + (1 - min) / 2 halfway
    ],
)
def test_warmup_cosine_table(step, warmup, total, min_ratio, expected):
    assert warmup_cosine(step, warmup, total, min_ratio) == pytest.approx(expected)


def test_lr_scales_with_global_batch():
    kw = dict(base_lr=1.5e-4, warmup_steps=0, total_steps=100)
    assert lr_at(0, global_batch=256, **kw) == pytest.approx(1.5e-4)
    assert lr_at(0, global_batch=4096, **kw) == pytest.approx(1.5e-4 * 16)
    lrs = [lr_at(s, global_batch=512, **kw) for s in range(100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # non-increasing after warmup


@pytest.mark.parametrize(
    "step, expected",
    [(0, (0, 0)), (9, (0, 0)), (10, (1, 10)), (29, (1, 10)), (30, (2, 30)), (1000, (2, 30))],
)
def test_stage_at_table(step, expected):
    stages = [
        StageConfig(img_size=96, steps=10, batch_size=8),
        StageConfig(img_size=128, steps=20, batch_size=4),
        StageConfig(img_size=128, steps=5, batch_size=4),
    ]
    assert stage_at(step, stages) == expected


def test_micro_batch_error_names_fields():
    assert micro_batch(32, 2, 4) == 4
    with pytest.raises(ValueError, match=r"batch_size 30 .* scaling.num_workers × deepspeed.grad_accum = 8"):
        micro_batch(30, 2, 4)


@pytest.mark.parametrize(
    "batches, world, max_workers, accum, expected",
    [
        ([16, 16], 2, 2, 1, Accumulation(2, 1, (8, 8))),  # the full world: the configured accumulation
        ([16, 16], 1, 2, 1, Accumulation(1, 2, (8, 8))),  # half the world: twice the micro batches
        ([16, 8], 1, 2, 2, Accumulation(1, 4, (4, 2))),  # per-stage micro batches, one accumulation
        ([12], 2, 3, 1, Accumulation(2, 2, (3,))),  # 3 -> 2 workers: ceil(3/2) = 2, micro 4 -> 3
        ([24], 3, 4, 1, Accumulation(3, 2, (4,))),  # 4 -> 3: micro 6 -> 4 (never larger)
        ([8], 1, 8, 1, Accumulation(1, 8, (1,))),
    ],
)
def test_accumulation_keeps_the_global_batch(batches, world, max_workers, accum, expected):
    a = accumulation(batches, world, max_workers, accum)
    assert a == expected
    full = accumulation(batches, max_workers, max_workers, accum)
    for i, b in enumerate(batches):
        assert a.micro_batches[i] * a.grad_accum * world == b  # the same samples per optimizer step
        assert a.micro_batches[i] <= full.micro_batches[i]  # per-worker memory never grows


@pytest.mark.parametrize(
    "args, match",
    [
        (([9], 2, 3, 1), r"stages.batch_size \[9\] cannot be kept by 2 worker\(s\) .* accumulation >= 2"),
        (([16], 3, 2, 1), r"world 3 is outside scaling.num_workers \[1, 2\]"),
        (([10], 1, 4, 1), r"batch_size 10 must be divisible by .* = 4"),
    ],
)
def test_accumulation_errors_name_the_fields(args, match):
    with pytest.raises(ValueError, match=match):
        accumulation(*args)


def test_scaling_num_workers_is_an_int_or_an_elastic_pair():
    assert ScalingSection(num_workers=[1, 4]).num_workers == (1, 4)
    sc = ScalingSection(num_workers=[2, 4])
    assert (sc.elastic, sc.min_workers, sc.max_workers, list(sc.worlds)) == (True, 2, 4, [2, 3, 4])
    sc = ScalingSection(num_workers=3)
    assert (sc.elastic, sc.min_workers, sc.max_workers) == (False, 3, 3)


@pytest.mark.parametrize(
    "scaling, batch, match",
    [
        ({"num_workers": [2, 1]}, 8, r"scaling.num_workers \[2, 1\] needs 1 <= min <= max"),
        ({"num_workers": [0, 2]}, 8, r"scaling.num_workers \[0, 2\] needs 1 <= min <= max"),
        ({"num_workers": 0}, 8, r"scaling.num_workers 0 needs 1 <= min <= max"),
        ({"num_workers": [1, 2, 3]}, 8, r"scaling.num_workers must be an int or a \[min, max\] pair"),
        ({"num_workers": "two"}, 8, r"scaling.num_workers must be an int or a \[min, max\] pair"),
        ({"num_workers": [2, 3]}, 9, r"scaling.num_workers \[2, 3\]: stages.batch_size \[9\] cannot be kept"),
        ({"num_workers": [1, 2]}, 9, r"stages.0.batch_size: .* divisible by scaling.num_workers"),
    ],
)
def test_scaling_errors_name_the_field(scaling, batch, match):
    with pytest.raises(ValidationError, match=match):
        TrainConfig(stages=[{"img_size": 16, "steps": 2, "batch_size": batch}], scaling=scaling)


def test_a_negative_seed_is_a_config_error():
    """Seeds feed numpy generators (shuffles, augmentations), which take no negative entries."""
    with pytest.raises(ValidationError, match=r"seed\n  Input should be greater than or equal to 0"):
        TrainConfig(seed=-1)


def test_elastic_trainer_asks_ray_train_for_min_max_workers(tmp_path):
    from jobs.train.loop import TrainLoop, make_trainer

    cfg = TrainConfig(stages=[{"img_size": 16, "steps": 2, "batch_size": 8}], storage=str(tmp_path), name="r",
                      scaling={"num_workers": [1, 2], "resize_interval_s": 5})
    sc = make_trainer(cfg, TrainLoop, {}, "{}").scaling_config
    assert (sc.elasticity_enabled, sc.min_workers, sc.max_workers) == (True, 1, 2)
    assert sc.elastic_resize_monitor_interval_s == 5
    fixed = make_trainer(cfg.model_copy(update={"scaling": ScalingSection(num_workers=2)}), TrainLoop, {},
                         "{}").scaling_config
    assert not fixed.elasticity_enabled and fixed.num_workers == 2


# ------------------------------------------------------------------------------------ DeepSpeed


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_config_stages(stage):
    ds = DeepSpeedConfig(zero_stage=stage, grad_accum=2)
    cfg = build_deepspeed_config(ds, OptimConfig(grad_clip=0.5), micro_batch_size=4, world_size=8,
                                 use_gpu=False)
    assert cfg["zero_optimization"]["stage"] == stage
    assert cfg["train_batch_size"] == 4 * 2 * 8
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["bf16"]["enabled"] is False  # fp32 on CPU
    assert cfg["optimizer"]["type"] == "AdamW"
    assert "scheduler" not in cfg  # the LR is ours, set every step
    assert ("stage3_gather_16bit_weights_on_model_save" in cfg["zero_optimization"]) == (stage == 3)


def test_deepspeed_config_gpu_offload_and_override(tmp_path):
    over = {"zero_optimization": {"stage3_prefetch_bucket_size": 123}, "bf16": {"enabled": False}}
    ds = DeepSpeedConfig(zero_stage=3, offload_optimizer=True, offload_params=True, override=over)
    cfg = build_deepspeed_config(ds, OptimConfig(), micro_batch_size=2, world_size=1, use_gpu=True)
    z = cfg["zero_optimization"]
    assert z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    assert z["stage3_prefetch_bucket_size"] == 123 and z["stage"] == 3  # merged, not replaced
    assert cfg["bf16"]["enabled"] is False  # the user's JSON wins
    assert "torch_adam" not in cfg["optimizer"]["params"]
    p = tmp_path / "ds.json"
    p.write_text(json.dumps({"gradient_clipping": 3.0}))
    cfg = build_deepspeed_config(DeepSpeedConfig(override=str(p)), OptimConfig(), micro_batch_size=2,
                                 world_size=1, use_gpu=True)
    assert cfg["gradient_clipping"] == 3.0 and cfg["bf16"]["enabled"] is True


def test_deepspeed_config_nvme_and_host_sized_buckets(tmp_path):
    """NVMe offload names its path in both sections; ``bucket_elements`` bounds every ZeRO buffer
    (DeepSpeed's defaults gather up to 1e9 parameters at once); unset, DeepSpeed's defaults stay."""
    ds = DeepSpeedConfig(zero_stage=3, offload_optimizer=True, offload_params=True, offload_device="nvme",
                         nvme_path=str(tmp_path), bucket_elements=1000)
    z = build_deepspeed_config(ds, OptimConfig(), micro_batch_size=1, world_size=2,
                               use_gpu=False)["zero_optimization"]
    for key in ("offload_optimizer", "offload_param"):
        assert z[key] == {"device": "nvme", "nvme_path": str(tmp_path), "pin_memory": False}
    for key in ("reduce_bucket_size", "allgather_bucket_size", "sub_group_size",
                "stage3_prefetch_bucket_size", "stage3_max_live_parameters", "stage3_max_reuse_distance"):
        assert z[key] == 1000, key
    z2 = build_deepspeed_config(DeepSpeedConfig(zero_stage=2, bucket_elements=7), OptimConfig(),
                                micro_batch_size=1, world_size=2, use_gpu=False)["zero_optimization"]
    assert z2["reduce_bucket_size"] == 7 and "sub_group_size" not in z2
    z3 = build_deepspeed_config(DeepSpeedConfig(zero_stage=3), OptimConfig(), micro_batch_size=1,
                                world_size=2, use_gpu=False)["zero_optimization"]
    assert not {"reduce_bucket_size", "sub_group_size", "offload_optimizer"} & set(z3)


def test_set_host_mmap_threshold():
    """Below glibc's grown threshold a freed tensor stays resident; after the call it goes back.

    In a fresh interpreter: in a long-lived process (the whole suite) the heap already holds free
    chunks that serve the test's blocks without growing it, so the RSS difference means nothing."""
    import platform
    import subprocess
    import sys
    from pathlib import Path

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    # argv[1] == "1": set the threshold first; each case in a fresh heap of its own
    script = """
import os
import sys
import torch
from jobs.train.engine import set_host_mmap_threshold

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

ok = set_host_mmap_threshold(2**20) if sys.argv[1] == "1" else None
big = torch.ones(2**22)  # a freed 16 MiB mmap block raises glibc's (default) threshold to 16 MiB
del big
blocks = [torch.ones(2**20) for _ in range(64)]  # 64 blocks of 4 MiB
pin = torch.ones(2**17)  # a live block above them on the heap: no trim from the top
before = rss_mib()
del blocks
print(ok, rss_mib() - (before - 256))
"""
    repo = Path(__file__).resolve().parents[2]

    def freed_but_resident_mib(set_first: bool) -> tuple[str, float]:
        out = subprocess.run([sys.executable, "-c", script, "1" if set_first else "0"], cwd=repo,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        ok, mib = out.stdout.split()
        return ok, float(mib)

    assert freed_but_resident_mib(False)[1] > 128  # from the heap: kept
    ok, mib = freed_but_resident_mib(True)
    assert ok == "True" and mib < 32  # each block is its own mmap: returned


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"zero_stage": 2, "offload_params": True}, "offload_params needs zero_stage 3"),
        ({"zero_stage": 0, "offload_optimizer": True}, "offload_optimizer needs zero_stage >= 1"),
        ({"zero_stage": 4}, "zero_stage"),
        ({"zero_stage": 2, "zero_init": True}, "zero_init needs zero_stage 3"),
        ({"grad_accum": 0}, "grad_accum"),
        ({"zero_stage": 0, "bucket_elements": 10}, "bucket_elements needs zero_stage >= 1"),
        ({"zero_stage": 3, "bucket_elements": 0}, "bucket_elements"),
        ({"zero_stage": 3, "offload_device": "nvme", "nvme_path": "/x"},
         "offload_device nvme needs offload_optimizer or offload_params"),
        ({"zero_stage": 3, "offload_optimizer": True, "offload_device": "nvme"},
         "nvme_path is required with offload_device nvme"),
        ({"zero_stage": 3, "offload_optimizer": True, "nvme_path": "/x"},
         "nvme_path needs offload_device nvme"),
        ({"zero_stage": 3, "offload_device": "disk"}, "offload_device"),
        ({"host_mmap_threshold": 2**25 + 1}, "host_mmap_threshold"),
        ({"stage": 2}, "stage"),  # unknown key
    ],
)
def test_deepspeed_config_errors(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        DeepSpeedConfig(**kwargs)


def test_param_groups_decay_only_matrices():
    from models.registry import create

    model = create("spectralgpt_tiny")
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "pos_embed_spatial" in no_decay_names and "mask_token" in no_decay_names
    assert any(n.endswith(".bias") for n in no_decay_names) and any("norm" in n for n in no_decay_names)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_param_groups_leave_out_the_frozen_teacher():
    from models.registry import create_pretrainer

    model = create_pretrainer("skysense_tiny")
    groups = param_groups(model, 0.05)
    ids = {id(p) for g in groups for p in g["params"]}
    assert not any(id(p) in ids for p in model.teacher.parameters())
    assert {id(p) for p in model.student.parameters()} <= ids


# ------------------------------------------------------------------------------------ shards -> numpy


@pytest.fixture(scope="module")
def table():
    return rows_to_table(make_rows(np.random.default_rng(1), n=6, px=16, slots=3, start=0))


@pytest.fixture(scope="module")
def stats():
    return {
        "s2": {"bands": list(SHARD_S2_BANDS), "mean": [1000.0] * 12, "std": [500.0] * 12},
        "s1": {"bands": ["VV", "VH"], "mean": [-10.0, -16.0], "std": [4.0, 4.0]},
    }


def test_column_to_numpy_layouts():
    a = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    flat = pa.array(a.reshape(-1))
    tensor = pa.ExtensionArray.from_storage(
        pa.fixed_shape_tensor(pa.uint16(), [3, 4]), pa.FixedSizeListArray.from_arrays(flat, 12)
    )
    nested = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(flat, 4), 3)
    varlist = pa.array([[1, 2, 3], [4, 5, 6]], pa.list_(pa.int16()))
    np.testing.assert_array_equal(column_to_numpy(tensor), a)
    np.testing.assert_array_equal(column_to_numpy(pa.chunked_array([nested])), a)
    np.testing.assert_array_equal(column_to_numpy(varlist), [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(column_to_numpy(pa.array([1.5, 2.5])), [1.5, 2.5])
    # shard contract v2: one fixed_size_binary value per row, dtype/shape in the field's metadata
    binary = pa.FixedSizeBinaryArray.from_buffers(pa.binary(24), 2, [None, pa.py_buffer(a)])
    field = pa.field("x", binary.type, metadata={"skyray.dtype": "<u2", "skyray.shape": "[3, 4]"})
    np.testing.assert_array_equal(column_to_numpy(binary, field), a)
    np.testing.assert_array_equal(column_to_numpy(pa.chunked_array([binary[:1], binary[1:]]), field), a)
    with pytest.raises(ValueError, match="metadata"):
        column_to_numpy(binary)


def _bare(table: pa.Table) -> pa.Table:
    """The table as a reader that dropped the field metadata would hand it over."""
    return pa.Table.from_arrays(table.columns, schema=pa.schema([f.remove_metadata() for f in table.schema]))


@pytest.mark.parametrize("layout", ["v1", "v2 without field metadata"])
def test_preprocess_same_for_every_shard_layout(layout, stats):
    r = make_rows(np.random.default_rng(3), n=5, px=16, slots=3, start=0)
    v2 = rows_to_table(r)
    other = rows_to_table_v1(r) if layout == "v1" else _bare(v2)
    if layout == "v1":
        assert isinstance(other.schema.field("s2").type, pa.FixedShapeTensorType)
    else:
        f = other.schema.field("s2")
        assert pa.types.is_fixed_size_binary(f.type) and not f.metadata
    for name in ("s2", "s1"):
        np.testing.assert_array_equal(column_to_numpy(v2.column(name), v2.schema.field(name)), r[name])
    for make in (make_spectralgpt_preprocess_fn, make_skysense_preprocess_fn):
        want, got = make(stats)(v2), make(stats)(other)
        assert set(want) == set(got)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{make.__name__} {k}")


def test_ray_data_hands_the_field_metadata_to_pyarrow_batches(ray_session, shards_dir):
    """The read jobs.pretrain.build_dataset does (projected read_parquet -> map_batches on pyarrow
    batches): the s2/s1 fields keep their dtype/shape metadata, and the decoded arrays are the shards'."""
    paths = sorted(str(p) for p in (shards_dir / "shards").glob("*.parquet"))

    def fn(batch: pa.Table) -> dict:
        meta = [bool(batch.schema.field(c).metadata) and b"skyray.shape" in batch.schema.field(c).metadata
                for c in ("s2", "s1")]
        s2 = column_to_numpy(batch.column("s2"), batch.schema.field("s2"))
        s1 = column_to_numpy(batch.column("s1"), batch.schema.field("s1"))
        return {
            "sample_id": np.asarray(batch.column("sample_id").to_pylist()),
            "meta": np.full(batch.num_rows, all(meta)),
            "s2_sum": s2.reshape(len(s2), -1).sum(1, dtype=np.uint64),
            "s1_sum": np.nansum(s1.reshape(len(s1), -1).astype(np.float64), 1),
        }

    ds = read_parquet(paths, columns=["sample_id", "s2", "s2_valid", "s1", "s1_valid"])
    rows = ds.map_batches(fn, batch_format="pyarrow", batch_size=24).take_all()
    ref = S.read_shards(shards_dir / "shards")
    assert len(rows) == len(ref["sample_id"]) and all(r["meta"] for r in rows)
    idx = {sid: i for i, sid in enumerate(ref["sample_id"])}
    for r in rows:
        i = idx[r["sample_id"]]
        assert r["s2_sum"] == ref["s2"][i].sum(dtype=np.uint64)
        assert r["s1_sum"] == pytest.approx(np.nansum(ref["s1"][i].astype(np.float64)))


def test_read_parquet_uses_the_v1_reader_and_leaves_the_context_as_it_was(ray_session, shards_dir):
    """V2 provisions FooterReader actors (fresh processes) for every execution (bench/reread.py)."""
    import ray.data

    paths = sorted(str(p) for p in (shards_dir / "shards").glob("*.parquet"))
    ctx = ray.data.DataContext.get_current()
    before = ctx.use_datasource_v2
    ds = read_parquet(paths, columns=["sample_id"])
    assert ctx.use_datasource_v2 == before
    assert "ReadParquet" in repr(ds._logical_plan.dag) and "ListFiles" not in repr(ds._logical_plan.dag)
    assert ds.count() == len(S.read_shards(shards_dir / "shards")["sample_id"])


def test_band_indices():
    assert band_indices(SKYSENSE_S2_BANDS) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 11]
    with pytest.raises(ValueError, match="unknown band"):
        band_indices(["B10"])


def test_pick_slots():
    valid = np.array([[True, True, False], [False, False, False], [False, True, True]])
    cloud = np.array([[0.5, 0.1, 0.0], [0, 0, 0], [0, 0.2, 0.1]], np.float32)
    rng = np.random.default_rng(0)
    assert pick_slots(valid, cloud, "least_cloudy", rng) == [(0, 1), (1, 0), (2, 2)]
    assert pick_slots(valid, cloud, "all", rng) == [(0, 0), (0, 1), (2, 1), (2, 2)]
    picks = pick_slots(valid, cloud, "random", rng)
    assert picks[0][1] in (0, 1) and picks[2][1] in (1, 2)


def test_spectralgpt_preprocess(table, stats):
    out = make_spectralgpt_preprocess_fn(stats, slot="least_cloudy")(table)
    x = out["x"]
    assert x.shape == (6, 12, 16, 16) and x.dtype == np.float32
    s2 = column_to_numpy(table.column("s2"), table.schema.field("s2"))
    valid = column_to_numpy(table.column("s2_valid"))
    cloud = column_to_numpy(table.column("s2_cloud"))
    t = pick_slots(valid[:1], cloud[:1], "least_cloudy", np.random.default_rng(0))[0][1]
    np.testing.assert_allclose(x[0], (s2[0, t].astype(np.float32) - 1000) / 500, rtol=1e-6)
    n_all = len(make_spectralgpt_preprocess_fn(stats, slot="all")(table)["x"])
    assert n_all == int(valid.sum())


def test_nodata_stays_zero(stats):
    r = make_rows(np.random.default_rng(2), n=2, px=8, slots=1, start=0)
    r["s2"][0, 0, :, :2, :2] = 0  # nodata corner
    out = make_spectralgpt_preprocess_fn(stats)(rows_to_table(r))["x"]
    assert (out[0, :, :2, :2] == 0).all()


def test_skysense_preprocess(table, stats):
    out = make_skysense_preprocess_fn(stats)(table)
    assert out["s2"].shape == (6, 3, 10, 16, 16) and out["s1"].shape == (6, 3, 2, 16, 16)
    assert out["lonlat"].shape == (6, 2) and out["s2_doy"].dtype == np.int64
    s2 = column_to_numpy(table.column("s2"), table.schema.field("s2"))
    valid = out["s2_valid"]
    i, t = np.argwhere(valid)[0]
    b02 = (s2[i, t, 1].astype(np.float32) - 1000) / 500
    np.testing.assert_allclose(out["s2"][i, t, 0], b02, rtol=1e-6)
    assert (out["s2"][~valid] == 0).all() and (out["s1"][~out["s1_valid"]] == 0).all()
    np.testing.assert_allclose(out["lonlat"][:, 0], column_to_numpy(table.column("lon")))


# ------------------------------------------------------------------------------------ augmentation


def test_augment_identity_without_randomness():
    x = np.random.default_rng(0).normal(size=(3, 4, 8, 8)).astype(np.float32)
    out = make_augment_fn(crop=8, flip=False, rot90=False)({"x": x, "id": np.arange(3)})
    torch.testing.assert_close(out["x"], torch.from_numpy(x))
    assert out["id"].tolist() == [0, 1, 2]


def test_augment_same_transform_for_every_band_date_and_modality():
    rng = np.random.default_rng(0)
    s2 = rng.normal(size=(5, 3, 10, 16, 16)).astype(np.float32)
    s1 = s2[:, :, :2].copy()  # a modality that must stay pixel-aligned with s2
    valid = np.ones((5, 3), bool)
    aug = make_augment_fn(crop=8, seed=3, spatial_keys=["s2", "s1"])
    for _ in range(3):
        out = aug({"s2": s2, "s1": s1, "s2_valid": valid})
        assert out["s2"].shape == (5, 3, 10, 8, 8) and out["s1"].shape == (5, 3, 2, 8, 8)
        torch.testing.assert_close(out["s1"], out["s2"][:, :, :2])
        assert out["s2_valid"].dtype == torch.bool


def test_augment_follows_the_sample_not_the_call_order():
    """A sample's augmentation depends on the seed and the sample alone: the same in any batch, in any
    call order (Ray Data's prefetch threads call the function concurrently), new with a new seed."""
    x = np.random.default_rng(0).normal(size=(6, 2, 16, 16)).astype(np.float32)
    aug = make_augment_fn(crop=8, seed=5)
    whole = aug({"x": x})["x"]
    halves = [aug({"x": x[3:]})["x"], aug({"x": x[:3]})["x"]]  # the other order, other batches
    torch.testing.assert_close(torch.cat(halves[::-1]), whole, rtol=0, atol=0)
    assert not torch.equal(make_augment_fn(crop=8, seed=6)({"x": x})["x"], whole)


def test_augment_sample_is_a_dihedral_crop():
    a = np.arange(16).reshape(4, 4)
    (r,) = augment_sample([a], 1, 0, 2, 1, False)
    np.testing.assert_array_equal(r, np.rot90(a[1:3, 0:2]))
    (f,) = augment_sample([a], 0, 0, 4, 0, True)
    np.testing.assert_array_equal(f, a[:, ::-1])


def test_augment_crop_too_large():
    with pytest.raises(ValueError, match="crop 32 larger than the tile"):
        make_augment_fn(crop=32)({"x": np.zeros((1, 2, 16, 16), np.float32)})


ZERO_INIT_SCRIPT = """
import os, socket, torch, torch.distributed as dist
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
dist.init_process_group("gloo", rank=0, world_size=1)
import deepspeed
from jobs.train.engine import build_partitioned
from models.registry import create
torch.manual_seed(0)
ds = {"train_batch_size": 1, "zero_optimization": {"stage": 3}}
real, sizes = deepspeed.zero.GatheredParameters, []


def recording(params, **kw):  # every gather build_partitioned makes, by the numel it makes whole
    sizes.append(sum(p.ds_numel for p in params))
    return real(params, **kw)


deepspeed.zero.GatheredParameters = recording
m = build_partitioned(lambda: create("spectralgpt_tiny"), ds)
deepspeed.zero.GatheredParameters = real
largest = max(sum(p.ds_numel for p in mod.parameters(recurse=False)) for mod in m.modules())
assert sizes and max(sizes) <= largest < sum(p.ds_numel for p in m.parameters()) / 4, (max(sizes), largest)
w = m.blocks[0].mlp.fc1.weight
assert w.numel() == 0, w.shape  # still partitioned
with deepspeed.zero.GatheredParameters([w, m.blocks[0].mlp.fc1.bias]):
    bound = (6 / sum(w.shape)) ** 0.5  # xavier-uniform, the model's own init (PyTorch's default differs)
    assert w.abs().max().item() <= bound + 1e-6 and w.std().item() > 0.5 * bound / 3 ** 0.5
    assert torch.count_nonzero(m.blocks[0].mlp.fc1.bias).item() == 0
print("ok")
"""


def test_zero_init_construction_runs_the_models_own_init(tmp_path):
    """ZeRO-3 `zero_init`: parameters stay partitioned and carry the model's init, not PyTorch's defaults;
    the init gathers one submodule at a time, never the whole model."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", ZERO_INIT_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


TWO_RANK_SCRIPT = """
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")  # as Ray Train leaves it: torch's group up, DeepSpeed's comm not
torch.set_num_threads(1)
import deepspeed
from jobs.train.engine import build_partitioned
from models.registry import create_pretrainer
torch.manual_seed(0)
ds = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
      "zero_optimization": {"stage": 3}}  # all three, as build_deepspeed_config writes them
m = build_partitioned(lambda: create_pretrainer("skysense_tiny", proj_dim=16), ds)
params = list(m.parameters())
assert all(p.numel() == 0 and p.ds_tensor.numel() <= (p.ds_numel + 1) // 2 for p in params)
with deepspeed.zero.GatheredParameters(params):
    flat = torch.cat([p.detach().flatten() for p in params])
    same_teacher = all(torch.equal(t, s) for t, s in zip(m.teacher.parameters(), m.student.parameters()))
both = [torch.zeros_like(flat) for _ in range(2)]
dist.all_gather(both, flat)
assert same_teacher and torch.equal(both[0], both[1]) and flat.std() > 0
print("ok")
"""


def test_build_partitioned_on_two_ranks(tmp_path):
    """Two gloo ranks, the process group started as Ray Train starts it: ``build_partitioned``
    accepts a ``train_batch_size`` of the real world size, halves every parameter, and both
    ranks hold the same initialised values (the teacher equal to the student)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    def attempt(n: int) -> list[tuple[subprocess.Popen, str, str]]:
        with socket.socket() as s:  # a free port, released for rank 0's store: another process may take it
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": os.pathsep.join(sys.path),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
        logs = [(tmp_path / f"try{n}-rank{r}.out", tmp_path / f"try{n}-rank{r}.err") for r in range(2)]
        procs = []
        for r, (out, err) in enumerate(logs):  # output to files: polling would not drain pipes
            with out.open("w") as fo, err.open("w") as fe:
                procs.append(subprocess.Popen([sys.executable, "-c", TWO_RANK_SCRIPT],
                                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                                              stdout=fo, stderr=fe, cwd=tmp_path))
        deadline = time.monotonic() + 300
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.returncode for p in procs):  # one rank failed: the other would wait for it
                break
            time.sleep(0.2)
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        return [(p, out.read_text(), err.read_text()) for p, (out, err) in zip(procs, logs)]

    for n in range(3):  # only a lost race for the port is retried
        runs = attempt(n)
        if not any(p.returncode and "address already in use" in err.lower() for p, _, err in runs):
            break
    for p, out, err in runs:
        assert p.returncode == 0 and out.strip().endswith("ok"), err[-3000:]


# ------------------------------------------------------------------------------------ family table


@pytest.mark.parametrize(
    "name, family, trained",
    [
        ("spectralgpt_tiny", "spectralgpt", ["blocks.0.w", "decoder_embed.weight", "mask_token"]),
        ("skysense_tiny", "skysense", ["student.blocks.0.w", "teacher.blocks.0.w", "heads.pixel.w"]),
    ],
)
def test_family_table_row(name, family, trained):
    from jobs.train.family import family_of

    fam = family_of(name)
    assert fam.name == family and "s2_valid" in fam.columns
    kept = fam.encoder_state_dict({k: torch.zeros(1) for k in trained})
    assert set(kept) == {"blocks.0.w"}  # decoder, teacher and heads are not the encoder


def test_family_of_unknown_model():
    from jobs.train.family import family_of

    with pytest.raises(ValueError, match=r"'resnet50' belongs to no known family \(spectralgpt, skysense\)"):
        family_of("resnet50")


# ------------------------------------------------------------------------------------ cli.run_job


def test_run_job_aliases_and_config_errors(tmp_path, capsys):
    from pydantic import Field as F

    from jobs import cli
    from pipeline.config import Strict

    class Inner(Strict):
        path: str | None = None

    class JobConfig(Strict):
        n: int = F(default=1, ge=1)
        flag: bool = True
        inner: Inner = F(default_factory=Inner)

    seen = []
    aliases = {"--path": cli.Alias("inner.path", "a path"),
               "--off": cli.Alias("flag", "turn off", const=False)}
    argv = ["--path", "007", "--off", "--set", "n=3"]
    assert cli.run_job(JobConfig, lambda c: seen.append(c) or {"ok": 1}, argv, aliases=aliases) == 0
    assert seen == [JobConfig(n=3, flag=False, inner=Inner(path="007"))]  # alias values stay strings
    assert '"ok": 1' in capsys.readouterr().out
    assert cli.run_job(JobConfig, seen.append, ["--set", "n=0"], aliases=aliases) == 2
    assert "error: invalid config" in (err := capsys.readouterr().err) and "n: Input should be greater" in err
    assert cli.run_job(JobConfig, seen.append, ["--set", "inner.nope=1"], aliases=aliases) == 2
    assert "inner.nope: Extra inputs are not permitted" in capsys.readouterr().err
    assert len(seen) == 1  # invalid configs never reach run


# ------------------------------------------------------------------------------------ contract v3


def _v3_table(r: dict, native_20m: bool) -> pa.Table:
    """The rows of ``make_rows`` as a v3 table: 20 m bands on their own grid (2 x 2 means) or, like a
    one-grid benchmark, on the 10 m grid."""
    s2 = r["s2"]
    g10, g20 = S.split_s2(s2)
    if native_20m:
        n, t, c, h, w = g20.shape
        g20 = g20.reshape(n, t, c, h // 2, 2, w // 2, 2).mean((4, 6)).round().astype(np.uint16)
    rest = {k: v for k, v in r.items() if k != "s2"}
    return S.build_table(**rest, s2_10m=np.ascontiguousarray(g10), s2_20m=np.ascontiguousarray(g20),
                         sources=[["synthetic"]] * len(r["sample_id"]))


@pytest.mark.parametrize("family", ["spectralgpt", "skysense"])
def test_v3_on_one_grid_preprocesses_exactly_as_v2(family, stats):
    r = make_rows(np.random.default_rng(3), n=4, px=16, slots=2, start=0)
    make = (lambda **kw: make_spectralgpt_preprocess_fn(stats, slot="all", **kw)) if family == "spectralgpt" \
        else (lambda **kw: make_skysense_preprocess_fn(stats, **kw))
    key = "x" if family == "spectralgpt" else "s2"
    v2, v3 = make()(rows_to_table(r)), make()(_v3_table(r, native_20m=False))
    assert set(v2) == set(v3)
    np.testing.assert_array_equal(v2[key], v3[key])


@pytest.mark.parametrize("family", ["spectralgpt", "skysense"])
def test_v3_cube_on_the_device_equals_the_cube_in_ray_data(family, stats):
    """With ``device_cube`` the 10 m / 20 m groups travel to the worker and ``assemble_s2`` builds the
    cube there (torch); it equals the numpy cube Ray Data builds on CPU, and its 10 m bands are the
    v2 values exactly (no resampling)."""
    from jobs.train.data import SHARD_S2_BANDS, assemble_s2

    r = make_rows(np.random.default_rng(4), n=4, px=16, slots=2, start=0)
    table = _v3_table(r, native_20m=True)
    if family == "spectralgpt":
        key, bands = "x", SHARD_S2_BANDS
        make = (lambda **kw: make_spectralgpt_preprocess_fn(stats, slot="all", **kw))
    else:
        key, bands = "s2", SKYSENSE_S2_BANDS
        make = (lambda **kw: make_skysense_preprocess_fn(stats, **kw))
    cpu = make()(table)
    dev = make(device_cube=True)(table)
    assert key not in dev and dev[f"{key}_20m"].shape[-1] == 8  # native 20 m grid
    built = assemble_s2({k: torch.from_numpy(v) for k, v in dev.items()}, key, bands)
    torch.testing.assert_close(built[key], torch.from_numpy(cpu[key]), rtol=1e-5, atol=1e-5)
    v2 = make()(rows_to_table(r))[key]
    for i, b in enumerate(bands):
        if b in S.S2_10M_BANDS:
            np.testing.assert_array_equal(cpu[key][..., i, :, :], v2[..., i, :, :])


def test_augment_keeps_a_half_resolution_array_on_the_same_ground():
    """Each 20 m pixel covers a 2 x 2 block of the 10 m array: after crop, rot90 and flip it still does."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 1000, (6, 3, 8, 8)).astype(np.float32)  # (N, C, 8, 8)
    fine = coarse.repeat(2, -2).repeat(2, -1)  # (N, C, 16, 16): every 20 m pixel as its 2 x 2 block
    out = make_augment_fn(crop=8, seed=1)({"x_10m": fine, "x_20m": coarse})
    f, c = out["x_10m"].numpy(), out["x_20m"].numpy()
    assert f.shape == (6, 3, 8, 8) and c.shape == (6, 3, 4, 4)
    np.testing.assert_array_equal(f, c.repeat(2, -2).repeat(2, -1))
    with pytest.raises(ValueError, match="crop 7 is not a multiple of 2"):
        make_augment_fn(crop=7)({"x_10m": fine, "x_20m": coarse})

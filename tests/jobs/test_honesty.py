"""The honesty check (issue 11): on the synthetic benchmark a linear probe on the pretrained tiny encoder
beats the same probe on a random encoder. Runs ``bench.honesty`` end to end on the benchmark of the full
figure (archive truth -> converter -> shards -> pretraining with
``configs/pretrain/<family>_tiny_synthetic.yaml`` -> safetensors export -> frozen linear probe).

The issue's bar is a 3-seed mean (``bench/results/honesty.md``: SpectralGPT +15.4, SkySense +11.5 points);
three seeds of both families take ~10 CPU-minutes, so CI runs seed 0 of each, on one torch thread (the
trajectory of a pretraining changes with the thread count's float reductions, so the figure's setting is the
one asserted), with a margin under the measured gap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench import honesty

pytestmark = pytest.mark.slow


@pytest.fixture
def one_thread():
    """One torch thread (as ``bench.honesty --threads 1``, the figure's setting) for the test's duration."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    bench = honesty.build_benchmark(tmp_path_factory.mktemp("honesty"), tiles=3, size_px=1152, per_class=100,
                                    seed=0)
    return honesty.load_splits(bench)


def test_benchmark_is_balanced_and_split(splits):
    counts = sum(np.bincount(s.y, minlength=7) for s in splits.values())
    assert counts.tolist() == [100] * 7
    assert min(len(s.y) for s in splits.values()) >= 100


def test_train_config_errors_name_the_field():
    with pytest.raises(ValueError, match="optim.base_lr"):
        honesty.train_config("spectralgpt", 10, ["optim.base_lr=-1"])


def test_train_config_needs_one_stage(tmp_path, monkeypatch):
    (tmp_path / "spectralgpt_tiny_synthetic.yaml").write_text(
        "stages: [{img_size: 16, steps: 2, batch_size: 4}, {img_size: 32, steps: 2, batch_size: 4}]\n")
    monkeypatch.setattr(honesty, "CONFIGS", tmp_path)
    with pytest.raises(ValueError, match="stages: the honesty pretraining runs one stage"):
        honesty.train_config("spectralgpt", None, [])


def test_spectralgpt_pretraining_beats_a_random_encoder(splits, one_thread):
    """SpectralGPT (one S2 date), seed 0 at 2000 steps (the yaml's 4000 do not fit CI next to the SkySense
    run): pretrained beats random by >= 5 points (+9.4 measured; +12.5 at 4000). A random-vs-random
    comparison gives exactly 0, and the old 400-step pretraining gives -1.6 on this seed: both fail it."""
    rows = honesty.run_family("spectralgpt", splits, steps=2000, seeds=1, overrides=[], log=lambda s: None)
    assert all(0.0 < r.random_oa < 1.0 for r in rows)
    assert honesty.mean_gap(rows, "spectralgpt") >= 5.0, honesty.table(rows)


def test_skysense_pretraining_beats_a_random_encoder(splits, one_thread):
    """SkySense (S2 time series + S1), seed 0 at 300 steps (the yaml's 1000 do not fit CI next to the
    SpectralGPT run): pretrained beats random by >= 4 points (+7.0 measured; +8.6 at 1000 steps)."""
    rows = honesty.run_family("skysense", splits, steps=300, seeds=1, overrides=[], log=lambda s: None)
    assert all(0.0 < r.random_oa < 1.0 for r in rows)
    assert honesty.mean_gap(rows, "skysense") >= 4.0, honesty.table(rows)

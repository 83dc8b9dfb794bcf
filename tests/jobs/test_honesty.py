"""The honesty check (issue 11): on the synthetic benchmark a linear probe on the pretrained tiny encoder
beats the same probe on a random encoder. Runs ``bench.honesty`` end to end on a small benchmark (archive
truth -> converter -> shards -> pretraining -> safetensors export -> frozen linear probe)."""

from __future__ import annotations

import pytest

from bench import honesty

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    bench = honesty.build_benchmark(tmp_path_factory.mktemp("honesty"), tiles=3, size_px=1152, per_class=100,
                                    seed=0)
    return honesty.load_splits(bench)


def test_benchmark_is_balanced_and_split(splits):
    import numpy as np

    counts = sum(np.bincount(s.y, minlength=7) for s in splits.values())
    assert counts.tolist() == [100] * 7
    assert min(len(s.y) for s in splits.values()) >= 100


def test_train_config_errors_name_the_field():
    with pytest.raises(ValueError, match="optim.base_lr"):
        honesty.train_config("spectralgpt", 10, ["optim.base_lr=-1"])


def test_skysense_pretraining_beats_a_random_encoder(splits):
    """SkySense (S2 time series + S1): pretrained beats random. Asserted at >= 3 points mean over 2 seeds and
    300 steps (what fits ~3 min on 2 cores), not the issue's 10 points over 3 seeds (``bench/results/
    honesty.md`` has the full figure); a random-vs-random comparison gives exactly 0 and fails it."""
    rows = honesty.run_family("skysense", splits, steps=300, seeds=2, overrides=[], log=lambda s: None)
    assert all(0.0 < r.random_oa < 1.0 for r in rows)
    assert honesty.mean_gap(rows, "skysense") >= 3.0, honesty.table(rows)

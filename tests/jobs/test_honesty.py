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

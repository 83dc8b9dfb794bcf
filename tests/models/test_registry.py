"""Preset registry: names, errors, meta-device parameter counts of every preset, tiny forward/backward."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from models import registry
from models.registry import count_params, create, get_config, list_models, register_model

# Official SpectralGPT counts at 128 px, 12 bands (models_mae_spectral.mae_vit_*_patch8_128).
SPECTRALGPT_PARAMS = {
    "spectralgpt_base": 98_640_320,
    "spectralgpt_large": 316_142_784,
    "spectralgpt_huge": 643_759_040,
}


def test_list_models_sorted_and_filtered():
    names = list_models()
    assert names == sorted(names)
    assert {"spectralgpt_tiny", "spectralgpt_base", "spectralgpt_large", "spectralgpt_huge"} <= set(names)
    assert list_models("spectralgpt_*") == [
        "spectralgpt_base",
        "spectralgpt_huge",
        "spectralgpt_large",
        "spectralgpt_tiny",
    ]
    assert list_models("no_such_*") == []


def test_unknown_model_names_the_name_and_lists_available():
    with pytest.raises(ValueError, match=r"unknown model 'spectralgpt_giant'; available: .*spectralgpt_base"):
        create("spectralgpt_giant")
    with pytest.raises(ValueError, match="unknown model"):
        count_params("nope")


def test_duplicate_registration_is_an_error():
    def spectralgpt_tiny(**kw):  # a different function under a taken name
        raise AssertionError

    with pytest.raises(ValueError, match="'spectralgpt_tiny' is already registered"):
        register_model("spectralgpt_tiny")(spectralgpt_tiny)


def test_register_and_create_a_new_preset(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("test_linear")
    def test_linear(**kw):
        return torch.nn.Linear(kw.get("n", 3), 2)

    assert "test_linear" in list_models("test_*")
    assert create("test_linear", n=5).in_features == 5
    assert count_params("test_linear", n=5) == 12
    with pytest.raises(TypeError, match="does not expose a .config"):
        get_config("test_linear")


def test_get_config_is_frozen_and_takes_overrides():
    cfg = get_config("spectralgpt_base", img_size=96)
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.img_size) == (768, 12, 12, 96)
    assert (cfg.decoder_embed_dim, cfg.decoder_depth, cfg.decoder_num_heads) == (512, 4, 16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.depth = 3
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        get_config("spectralgpt_base", img_size=100)


@pytest.mark.parametrize("name", list_models())
def test_param_count_on_meta(name):
    t0 = time.perf_counter()
    n = count_params(name)
    assert time.perf_counter() - t0 < 20, "meta-device construction must not allocate or initialise"
    assert n > 0
    if name in SPECTRALGPT_PARAMS:
        assert n == SPECTRALGPT_PARAMS[name]
    if name.endswith("_1b"):
        assert n >= 1_000_000_000


def test_spectralgpt_base_encoder_count():
    """85.4 M encoder + 13.2 M decoder = 98.6 M, as the official base at 128 px."""
    with torch.device("meta"):
        model = create("spectralgpt_base")
    enc = sum(p.numel() for k, p in model.named_parameters() if not k.startswith(("decoder", "mask_token")))
    assert enc == 85_403_904


# SkySense presets take (s2, s1, doy, valid) kwargs and return a dict; they have their own tests.
@pytest.mark.parametrize("name", list_models("spectralgpt*tiny*"))
def test_tiny_forward_backward(name):
    torch.manual_seed(0)
    model = create(name)
    cfg = model.config
    x = torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size)
    loss, pred, mask = model(x)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert pred.shape[:2] == mask.shape
    loss.backward()
    no_grad = [k for k, p in model.named_parameters() if p.grad is None]
    assert no_grad == []

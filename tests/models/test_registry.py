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


def test_every_family_registers_through_register_presets():
    """One idiom: every listed preset has a Preset record naming its family and config class."""
    for name in list_models():
        preset = registry.get_preset(name)
        assert name.startswith(preset.family + "_")
        assert type(get_config(name)) is type(preset.config)


def test_create_pretrainer_splits_overrides():
    assert registry.split_overrides("spectralgpt_tiny", {"mask_ratio": 0.5}) == ({"mask_ratio": 0.5}, {})
    enc, opts = registry.split_overrides("skysense_tiny", {"fusion_depth": 2, "proj_dim": 8})
    assert enc == {"fusion_depth": 2} and opts == {"proj_dim": 8}
    with torch.device("meta"):
        mae = registry.create_pretrainer("spectralgpt_tiny", mask_ratio=0.5)
        pre = registry.create_pretrainer("skysense_tiny", fusion_depth=2, proj_dim=8)
    assert mae.config.mask_ratio == 0.5
    assert pre.config.encoder.fusion_depth == 2 and pre.config.proj_dim == 8


def test_get_preset_errors(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_model("plain_linear")(lambda **kw: torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="'plain_linear' is not a family preset"):
        registry.create_pretrainer("plain_linear")
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        registry.get_preset("nope")

"""Every model preset by name (timm ``register_model`` style), one registration idiom for all families.

A family module registers its presets with one call at its end::

    register_presets("spectralgpt", SpectralGPT, PRESETS)                       # MAE: its own pretrainer
    register_presets("skysense", SkySense, PRESETS, pretrainer=SkySensePretrainer.from_encoder_config)

``create(name, **overrides)`` builds the encoder ``cls(dataclasses.replace(config, **overrides))``;
``create_pretrainer(name, **overrides)`` the module a pretraining job trains (the protocol of
``models.base``): overrides naming encoder-config fields go to the encoder, the rest to the
pretrainer. Every module exposes its frozen dataclass config as ``model.config``. Family modules
are imported lazily, on first use, so ``import models.registry`` stays cheap.

    >>> from models.registry import create, create_pretrainer, list_models, count_params
    >>> list_models("spectralgpt_*")
    ['spectralgpt_base', 'spectralgpt_huge', 'spectralgpt_large', 'spectralgpt_tiny']
    >>> model = create("spectralgpt_base", weights="SpectralGPT+.pth")  # official or our safetensors
    >>> pre = create_pretrainer("skysense_tiny", proj_dim=32, teacher_momentum=0.99)
    >>> count_params("spectralgpt_huge")  # built on the meta device, nothing allocated
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Any

import torch
from torch import nn

__all__ = [
    "Preset",
    "count_params",
    "create",
    "create_pretrainer",
    "get_config",
    "get_preset",
    "list_models",
    "register_model",
    "register_presets",
    "split_overrides",
]

ModelFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}
_PRESETS: dict[str, Preset] = {}

# Model-family modules whose import registers their presets.
_FAMILIES: tuple[str, ...] = ("models.spectralgpt", "models.skysense")
_loaded = False


@dataclass(frozen=True)
class Preset:
    """One named preset: its family, encoder class and config, and how to build its pretrainer.

    ``pretrainer(encoder_config, **options) -> nn.Module``; None: the encoder is its own
    pretrainer (SpectralGPT's MAE), so every override goes to the encoder config.
    """

    name: str
    family: str
    encoder: Callable[[Any], nn.Module]
    config: Any
    pretrainer: Callable[..., nn.Module] | None = None


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering ``fn(**overrides) -> nn.Module`` under ``name`` (the low-level entry).

    Re-registering the same function (a module reload) is fine; a different function under a
    taken name is a ValueError.
    """

    def deco(fn: ModelFactory) -> ModelFactory:
        old = _REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"model {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        _REGISTRY[name] = fn
        return fn

    return deco


def register_presets(
    family: str,
    encoder: Callable[[Any], nn.Module],
    presets: Mapping[str, Any],
    pretrainer: Callable[..., nn.Module] | None = None,
) -> None:
    """Register every ``name -> frozen config`` of ``presets``: ``create(name, **overrides)`` builds
    ``encoder(dataclasses.replace(config, **overrides))``; ``pretrainer`` as in ``Preset``."""
    for name, config in presets.items():

        def factory(_config=config, **overrides) -> nn.Module:
            return encoder(dataclasses.replace(_config, **overrides))

        factory.__module__ = encoder.__module__
        factory.__name__ = factory.__qualname__ = name
        factory.__doc__ = f"{family} preset {name}: {config}"
        register_model(name)(factory)
        _PRESETS[name] = Preset(name, family, encoder, config, pretrainer)


def _load_families() -> None:
    global _loaded
    if _loaded:
        return
    for module in _FAMILIES:
        importlib.import_module(module)
    _loaded = True


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of all registered presets, optionally filtered by an fnmatch ``pattern``."""
    _load_families()
    names = sorted(_REGISTRY)
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def _factory(name: str) -> ModelFactory:
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def get_preset(name: str) -> Preset:
    """The ``Preset`` record of a family preset; ValueError for unknown or plain ``register_model`` names."""
    _factory(name)
    if name not in _PRESETS:
        raise ValueError(f"model {name!r} is not a family preset (registered by register_model alone)")
    return _PRESETS[name]


def create(name: str, weights: str | PathLike | dict | None = None, **overrides: Any) -> nn.Module:
    """Build preset ``name`` with config ``overrides``; optionally load ``weights``.

    ``weights`` is a path to an official SpectralGPT ``.pth`` checkpoint, our own
    ``.safetensors`` export, or an in-memory state dict; it goes through
    ``models.checkpoint.load_weights`` (key mapping, position-embedding resampling, and a
    check that only expected keys, e.g. the decoder, are missing).
    """
    model = _factory(name)(**overrides)
    if weights is not None:
        from models.checkpoint import load_weights

        load_weights(model, weights)
    return model


def split_overrides(name: str, overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(encoder-config overrides, pretrainer options)`` of preset ``name``.

    A family whose encoder is its own pretrainer takes every override in its config.
    """
    preset = get_preset(name)
    if preset.pretrainer is None:
        return dict(overrides), {}
    fields = {f.name for f in dataclasses.fields(preset.config)}
    enc = {k: v for k, v in overrides.items() if k in fields}
    return enc, {k: v for k, v in overrides.items() if k not in fields}


def create_pretrainer(name: str, **overrides: Any) -> nn.Module:
    """The pretraining module of preset ``name`` (``models.base.Pretrainer``).

    Encoder-config overrides build the encoder config; the remaining ones are the pretrainer's
    options (e.g. SkySense ``proj_dim``, ``teacher_momentum``); an unknown option is a TypeError
    naming it.
    """
    preset = get_preset(name)
    enc, options = split_overrides(name, overrides)
    if preset.pretrainer is None:
        return create(name, **enc)
    return preset.pretrainer(dataclasses.replace(preset.config, **enc), **options)


def _build_on_meta(name: str, **overrides: Any) -> nn.Module:
    factory = _factory(name)
    with torch.device("meta"):
        return factory(**overrides)


def get_config(name: str, **overrides: Any) -> Any:
    """The frozen dataclass config of preset ``name`` with ``overrides`` (model built on meta)."""
    model = _build_on_meta(name, **overrides)
    if not hasattr(model, "config"):
        raise TypeError(f"model {name!r} ({type(model).__name__}) does not expose a .config")
    return model.config


def count_params(name: str, trainable_only: bool = False, **overrides: Any) -> int:
    """Number of parameters of preset ``name``, counted on the meta device (nothing allocated)."""
    model = _build_on_meta(name, **overrides)
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

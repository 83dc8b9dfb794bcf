"""Every model preset by name (timm ``register_model`` style).

A preset is a factory ``fn(**overrides) -> nn.Module`` registered under a unique name; the
module it builds exposes its frozen dataclass config as ``model.config``. The model-family
modules are imported lazily, on first use, so ``import models.registry`` stays cheap.

    >>> from models.registry import create, list_models, count_params
    >>> list_models("spectralgpt_*")
    ['spectralgpt_base', 'spectralgpt_huge', 'spectralgpt_large', 'spectralgpt_tiny']
    >>> model = create("spectralgpt_base", weights="SpectralGPT+.pth")  # official or our safetensors
    >>> count_params("spectralgpt_huge")  # built on the meta device, nothing allocated
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from os import PathLike
from typing import Any

import torch
from torch import nn

__all__ = ["count_params", "create", "get_config", "list_models", "register_model"]

ModelFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}

# Model-family modules whose import registers their presets. ``optional`` ones may not exist yet.
_FAMILIES: tuple[tuple[str, bool], ...] = (("models.spectralgpt", False), ("models.skysense", True))
_loaded = False


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering ``fn(**overrides) -> nn.Module`` under ``name``.

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


def _load_families() -> None:
    global _loaded
    if _loaded:
        return
    for module, optional in _FAMILIES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            # Only tolerate the optional family module itself being absent, never its imports.
            if not (optional and e.name == module):
                raise
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

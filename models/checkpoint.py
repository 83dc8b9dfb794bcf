"""Checkpoint import/export: one filter for official and our own weights, safetensors export.

``checkpoint_filter(state_dict, model)`` (timm ``checkpoint_filter_fn`` style):

1. unwraps ``{"model": ...}`` / ``{"state_dict": ...}`` containers and strips ``module.`` /
   ``_orig_mod.`` prefixes (DDP, torch.compile);
2. maps the official layout onto ours: separate ``*.attn.q/k/v`` Linears are concatenated
   into our fused ``*.attn.qkv``;
3. resamples what depends on the input geometry when its shape differs from the model's:
   spatial position embeddings ``*pos_embed_spatial`` (bicubic, square grids), spectral ones
   ``*pos_embed_temporal`` (linear), and Conv3d patch-embedding kernels (trilinear, rescaled so
   the response to a constant input is kept); a prediction head whose size no longer matches
   (``decoder_pred``) is dropped, any other mismatch is an error.

``load_weights(model, path_or_state)`` loads with ``strict=False`` and then asserts that only
expected keys are missing (the decoder, mask token or a task head, which encoder-only or
fine-tuned checkpoints lack) and that nothing unexpected is left, with a clear error otherwise.
Our own weights are safetensors with the resolved config as JSON metadata; loading them never
unpickles. Official ``.pth`` files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pickle
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import resample_pos_embed_2d

__all__ = [
    "LoadResult",
    "checkpoint_filter",
    "export_safetensors",
    "load_state_dict_file",
    "load_weights",
    "read_safetensors_metadata",
    "unwrap_state_dict",
]

_CONTAINER_KEYS = ("model", "state_dict", "module", "model_state")
_STRIP_PREFIXES = ("module.", "_orig_mod.")
# Keys a checkpoint may lack (pretraining-only parts or task heads) unless the model says otherwise.
DEFAULT_OPTIONAL_PREFIXES = ("decoder_", "decoder.", "mask_token", "head.")
# Checkpoint keys that may have no counterpart in the model (fine-tuning heads).
DEFAULT_IGNORED_PREFIXES = ("head.", "fc_norm.")
# Prediction heads whose output size follows the patch geometry: dropped on mismatch.
_DROP_ON_MISMATCH = ("decoder_pred.weight", "decoder_pred.bias")

METADATA_CONFIG = "skyray_config"
METADATA_CLASS = "skyray_class"


class LoadResult(NamedTuple):
    missing: list[str]
    unexpected: list[str]


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a checkpoint: unwrap containers, strip DDP/compile prefixes."""
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _CONTAINER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            raise ValueError(f"no state dict found in checkpoint with keys {sorted(obj)[:10]}")
        obj = inner
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a state dict mapping, got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        for prefix in _STRIP_PREFIXES:
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def _fuse_qkv(sd: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """``X.q.weight, X.k.weight, X.v.weight`` -> ``X.qkv.weight`` (same for biases) where the model has it."""
    out = dict(sd)
    for key in sd:
        for kind in ("weight", "bias"):
            if not key.endswith(f".q.{kind}"):
                continue
            base = key[: -len(f".q.{kind}")]
            fused = f"{base}.qkv.{kind}"
            parts = [f"{base}.{n}.{kind}" for n in "qkv"]
            if fused in model_keys and all(p in sd for p in parts):
                out[fused] = torch.cat([sd[p] for p in parts], dim=0)
                for p in parts:
                    del out[p]
    return out


def _square(n: int, key: str) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{key}: cannot resample a non-square grid of {n} tokens")
    return side


def _resample_temporal(pos: torch.Tensor, t: int) -> torch.Tensor:
    """(1, T_old, D) -> (1, t, D), linear interpolation over the spectral-group index."""
    out = F.interpolate(pos.float().transpose(1, 2), size=t, mode="linear", align_corners=True)
    return out.transpose(1, 2).to(pos.dtype)


def _resample_kernel(w: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Conv3d kernel (D, Cin, kt, kh, kw) -> ``shape``; trilinear, scaled to keep the DC response."""
    if w.shape[:2] != shape[:2]:
        raise ValueError(f"patch embedding: cannot map {tuple(w.shape)} onto {tuple(shape)}")
    out = F.interpolate(w.float(), size=tuple(shape[2:]), mode="trilinear", align_corners=False)
    out = out * (w[0, 0].numel() / out[0, 0].numel())
    return out.to(w.dtype)


def checkpoint_filter(state_dict: Any, model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a checkpoint (official SpectralGPT layout or ours) onto ``model``'s state dict layout.

    Returns a new dict; shapes match the model's for every key the model has. Raises ValueError
    for a shape mismatch that cannot be resampled.
    """
    sd = unwrap_state_dict(state_dict)
    target = model.state_dict()
    sd = _fuse_qkv(sd, set(target))
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        ref = target.get(key)
        if ref is None or value.shape == ref.shape:
            out[key] = value
        elif key.endswith("pos_embed_spatial") and value.ndim == 3:
            old, new = _square(value.shape[1], key), _square(ref.shape[1], key)
            out[key] = resample_pos_embed_2d(value, (old, old), (new, new))
        elif key.endswith("pos_embed_temporal") and value.ndim == 3:
            out[key] = _resample_temporal(value, ref.shape[1])
        elif key.endswith("patch_embed.proj.weight") and value.ndim == 5:
            out[key] = _resample_kernel(value, ref.shape)
        elif key.endswith(_DROP_ON_MISMATCH):
            continue
        else:
            raise ValueError(
                f"checkpoint key {key!r} has shape {tuple(value.shape)}, model expects {tuple(ref.shape)}"
            )
    return out


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------


def load_state_dict_file(path: str | PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read weights from ``path``: ``.safetensors`` without pickle; ``.pth``/``.pt`` with
    ``torch.load(weights_only=True)`` (argparse.Namespace allowed, as MAE-style checkpoints store
    their ``args``). ``allow_pickle=True`` falls back to full unpickling for trusted files only."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not allow_pickle:
            raise RuntimeError(
                f"{path} holds objects that weights_only loading refuses; if you trust the file, "
                f"pass allow_pickle=True ({e})"
            ) from e
        obj = torch.load(path, map_location="cpu", weights_only=False)
    return unwrap_state_dict(obj)


def _model_prefixes(model: nn.Module, attr: str, default: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(getattr(model, attr, default))


def load_weights(
    model: nn.Module,
    path_or_state: str | PathLike | Mapping[str, Any],
    allow_pickle: bool = False,
) -> LoadResult:
    """Load official or our weights into ``model`` through ``checkpoint_filter``.

    Missing keys must start with one of ``model.checkpoint_optional_prefixes`` (default: the
    decoder, mask token, task head); unexpected keys with ``model.checkpoint_ignored_prefixes``
    (default: ``head.``, ``fc_norm.``). Anything else raises RuntimeError listing the keys.
    """
    raw = (
        path_or_state
        if isinstance(path_or_state, Mapping)
        else load_state_dict_file(path_or_state, allow_pickle=allow_pickle)
    )
    sd = checkpoint_filter(raw, model)
    optional = _model_prefixes(model, "checkpoint_optional_prefixes", DEFAULT_OPTIONAL_PREFIXES)
    ignored = _model_prefixes(model, "checkpoint_ignored_prefixes", DEFAULT_IGNORED_PREFIXES)
    model_keys = set(model.state_dict())
    unexpected = [k for k in sd if k not in model_keys]
    bad_unexpected = [k for k in unexpected if not k.startswith(ignored)]
    if bad_unexpected:
        raise RuntimeError(
            f"checkpoint has {len(bad_unexpected)} keys {type(model).__name__} does not: "
            f"{bad_unexpected[:20]}"
        )
    result = model.load_state_dict({k: v for k, v in sd.items() if k not in unexpected}, strict=False)
    bad_missing = [k for k in result.missing_keys if not k.startswith(optional)]
    if bad_missing:
        raise RuntimeError(
            f"checkpoint lacks {len(bad_missing)} required keys of {type(model).__name__}: {bad_missing[:20]}"
        )
    return LoadResult(list(result.missing_keys), unexpected)


def _config_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    if hasattr(config, "model_dump"):  # pydantic
        return config.model_dump(mode="json")
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"cannot serialise config of type {type(config).__name__}")


def export_safetensors(
    model: nn.Module,
    path: str | PathLike,
    config: Any = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model``'s weights to ``path`` (safetensors) with the config as JSON metadata.

    ``config`` defaults to ``model.config`` (dataclass, pydantic model or dict); ``state_dict``
    (default ``model.state_dict()``) the tensors to write, e.g. an encoder's part of a trained
    module. Tied tensors are stored once per name (cloned), so the file loads with plain ``load_weights``.
    """
    from safetensors.torch import save_file

    config = getattr(model, "config", None) if config is None else config
    seen: set[tuple[int, int]] = set()
    tensors: dict[str, torch.Tensor] = {}
    for k, v in (model.state_dict() if state_dict is None else state_dict).items():
        v = v.detach().to("cpu").contiguous()
        ident = (v.untyped_storage().data_ptr(), v.storage_offset())
        tensors[k] = v.clone() if ident in seen else v
        seen.add(ident)
    metadata = {
        "format": "pt",
        METADATA_CLASS: type(model).__name__,
        METADATA_CONFIG: json.dumps(_config_dict(config), sort_keys=True),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_safetensors_metadata(path: str | PathLike) -> dict[str, Any]:
    """``{"class": str, "config": dict}`` stored by ``export_safetensors`` (header only, no tensors)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return {"class": meta.get(METADATA_CLASS), "config": json.loads(meta.get(METADATA_CONFIG, "{}"))}

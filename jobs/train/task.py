"""The fine-tuning module: an encoder of either family + a task head from ``models.heads``, its loss,
its encoder-weight loading and the layer ids of layer-wise LR decay.

    model = build_task_model("spectralgpt_tiny", overrides, task="segmentation", num_classes=13,
                             frozen=False, drop_path=0.1)
    load_encoder(model, "out/runs/RUN/export/spectralgpt_tiny.safetensors")   # or SpectralGPT.pth
    out = model(batch)                          # {"loss": (), "logits": (B, K[, H, W])}

Each family meets the heads through ``Features`` (``FEATURES`` table, no branching on names elsewhere):
a pooled vector per image for classification / multilabel heads and a pyramid of four maps (finest
first) for the UPerNet-style segmentation and change heads.

- SpectralGPT: tokens ``(B, t·h·w, D)`` of the full (unmasked) cube; pooled = their mean; the map is the
  mean over the spectral groups ``(B, D, h, w)``, resampled to strides p/4, p/2, p, 2p (the simple
  feature pyramid of a plain ViT).
- SkySense: its own ``pooled`` and ``levels`` (``SkySense.encode``), from the S2/S1 time series with
  their days of year (and lon/lat when the shards have them).

Change detection runs the encoder once per date (slot 0 = date 1, slot 1 = date 2) and the
``ChangeHead`` compares the two pyramids.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from models.heads import ChangeHead, LinearProbe, MultiLabelHead, SegmentationHead, masked_cross_entropy

__all__ = ["FEATURES", "Features", "TaskModel", "build_task_model", "layer_decay_groups", "load_encoder"]

Batch = Mapping[str, torch.Tensor]


class Features(NamedTuple):
    """An image's features for the heads: ``pooled (B, D)``, ``levels`` four ``(B, C_i, H_i, W_i)`` maps,
    finest first."""

    pooled: torch.Tensor
    levels: list[torch.Tensor]


def pyramid(grid: torch.Tensor) -> list[torch.Tensor]:
    """One map ``(B, D, h, w)`` -> four at 4×, 2×, 1× and ½× its resolution (finest first)."""
    return [
        F.interpolate(grid, scale_factor=4.0, mode="bilinear", align_corners=False),
        F.interpolate(grid, scale_factor=2.0, mode="bilinear", align_corners=False),
        grid,
        F.avg_pool2d(grid, 2, ceil_mode=True),
    ]


def _spectralgpt_features(encoder: nn.Module, batch: Batch) -> Features:
    x = batch["x"]  # (B, C, H, W)
    t, h, w = encoder.token_grid(x)
    tokens = encoder.encode(x)  # (B, t*h*w, D)
    grid = rearrange(tokens, "b (t h w) d -> b t d h w", t=t, h=h, w=w).mean(1)  # (B, D, h, w)
    return Features(tokens.mean(1), pyramid(grid))


def _skysense_features(encoder: nn.Module, batch: Batch) -> Features:
    out = encoder.forward_features(batch)
    return Features(out["pooled"], list(out["levels"]))


#: batch keys holding a per-date axis 1 (B, T, ...) for each family: a change pair's dates
_SPECTRALGPT_DATED = ("x",)
_SKYSENSE_DATED = ("s2", "s2_doy", "s2_valid", "s1", "s1_doy", "s1_valid")


@dataclass(frozen=True)
class FamilyFeatures:
    """How one family feeds the heads: ``features(encoder, batch)``, the pooled width and the pyramid's
    channels of a built encoder, the per-date batch keys, and ``layer_id(name, encoder) -> (id, top)``."""

    features: Callable[[nn.Module, Batch], Features]
    pooled_dim: Callable[[nn.Module], int]
    level_dims: Callable[[nn.Module], list[int]]
    dated_keys: tuple[str, ...]
    #: a change pair keeps its date axis (SkySense: a series of one date) or drops it (SpectralGPT: a cube)
    keep_date_axis: bool
    layer_id: Callable[[str, nn.Module], tuple[int, int]]


def _block_index(name: str, stack: str) -> int | None:
    m = re.match(rf"{re.escape(stack)}\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _spectralgpt_layer(name: str, enc: nn.Module) -> tuple[int, int]:
    """Embeddings 0, block i -> i + 1, the final norm and the head depth + 1 (the top)."""
    top = enc.config.depth + 1
    if name.startswith(("patch_embed.", "pos_embed_")):
        return 0, top
    i = _block_index(name, "blocks")
    return (i + 1, top) if i is not None else (top, top)


def _skysense_layer(name: str, enc: nn.Module) -> tuple[int, int]:
    """Spatial stacks on a common 1..L (L = S2 depth; S1 and HR stages scaled onto it), the date
    tokens and projections L + 1, fusion block k -> L + 2 + k, geo-context, norm and head the top."""
    c = enc.config
    depth, top = c.s2_depth, c.s2_depth + c.fusion_depth + 2
    if name.startswith(("s2_encoder.patch_embed", "s1_encoder.patch_embed", "hr_encoder.patch_embed",
                        "hr_encoder.embed_norm")):
        return 0, top
    for stack, n in (("s2_encoder.blocks", c.s2_depth), ("s1_encoder.blocks", c.s1_depth),
                     ("hr_encoder.stages", len(c.hr_depths))):
        i = _block_index(name, stack)
        if i is not None:
            return max(1, round((i + 1) * depth / n)), top
    k = _block_index(name, "fusion_blocks")
    if k is not None:
        return depth + 2 + k, top
    if name.startswith(("fusion_norm", "geo.")):
        return top, top
    return depth + 1, top  # per-modality norms, projections, calendar/modality embeddings, fusion token


FEATURES: dict[str, FamilyFeatures] = {
    "spectralgpt": FamilyFeatures(
        features=_spectralgpt_features,
        pooled_dim=lambda e: e.config.embed_dim,
        level_dims=lambda e: [e.config.embed_dim] * 4,
        dated_keys=_SPECTRALGPT_DATED,
        keep_date_axis=False,
        layer_id=_spectralgpt_layer,
    ),
    "skysense": FamilyFeatures(
        features=_skysense_features,
        pooled_dim=lambda e: e.embed_dim,
        level_dims=lambda e: list(e.level_dims),
        dated_keys=_SKYSENSE_DATED,
        keep_date_axis=True,
        layer_id=_skysense_layer,
    ),
}


def date_view(batch: Batch, t: int, fam: FamilyFeatures) -> dict[str, torch.Tensor]:
    """The batch of date ``t`` of a change pair: every dated key's slot ``t`` (``(B, 1, ...)`` when the
    family keeps the date axis, else ``(B, ...)``); the other keys as they are."""
    out = dict(batch)
    for k in fam.dated_keys:
        if k in out:
            out[k] = out[k][:, t : t + 1] if fam.keep_date_axis else out[k][:, t]
    return out


class TaskModel(nn.Module):
    """``encoder`` + ``head`` for ``task``; ``frozen``: the encoder takes no gradient (linear probe: its
    parameters are frozen, its features computed under ``no_grad``, and it stays in eval mode).

    ``forward(batch)`` -> ``{"loss": (), "logits": ...}`` (``batch["label"]``: ``(B,)`` class ids,
    ``(B, K)`` 0/1, or ``(B, H, W)`` ids with ``IGNORE_INDEX``); ``predict(batch)`` -> logits
    ``(B, K)`` or ``(B, K, H, W)`` at the input's size.
    """

    # Loading encoder weights (``load_encoder``): the head is the only part a checkpoint may lack;
    # pretraining-only parts and an official fine-tuned model's head are dropped.
    checkpoint_optional_prefixes = ("head.",)
    checkpoint_ignored_prefixes = ("encoder.decoder_", "encoder.mask_token", "encoder.head.",
                                   "encoder.fc_norm.")

    def __init__(self, encoder: nn.Module, family: str, task: str, num_classes: int, frozen: bool,
                 probe_norm: bool = True, channels: int = 128) -> None:
        super().__init__()
        self.encoder, self.task, self.frozen = encoder, task, frozen
        self.fam = FEATURES[family]
        d, levels = self.fam.pooled_dim(encoder), self.fam.level_dims(encoder)
        if task == "classification":
            self.head = LinearProbe(d, num_classes, norm=probe_norm)
        elif task == "multilabel":
            self.head = MultiLabelHead(d, num_classes)
        elif task == "segmentation":
            self.head = SegmentationHead(levels, num_classes, channels=channels)
        elif task == "change":
            self.head = ChangeHead(levels, num_classes=2, channels=channels)
        else:
            raise ValueError(f"unknown task {task!r}")
        if frozen:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    # ------------------------------------------------------------------ protocol the loop uses

    def train(self, mode: bool = True) -> TaskModel:
        super().train(mode)
        if self.frozen:  # a frozen encoder never drops paths nor updates statistics
            self.encoder.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable and not self.frozen)

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing after an optimizer step (no EMA teacher in fine-tuning)."""

    # ------------------------------------------------------------------ forward

    def _features(self, batch: Batch) -> Features:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.fam.features(self.encoder, batch)

    def predict(self, batch: Batch) -> torch.Tensor:
        if self.task == "change":
            a, b = (self._features(date_view(batch, t, self.fam)) for t in (0, 1))
            size = _image_size(batch, self.fam)
            return self.head(a.levels, b.levels, out_size=size)
        f = self._features(batch)
        if self.task == "segmentation":
            return self.head(f.levels, out_size=_image_size(batch, self.fam))
        return self.head(f.pooled)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        logits = self.predict(batch)
        return {"loss": task_loss(self.task, logits, batch["label"]), "logits": logits}


def _image_size(batch: Batch, fam: FamilyFeatures) -> tuple[int, int]:
    x = batch[fam.dated_keys[0]]
    return int(x.shape[-2]), int(x.shape[-1])


def task_loss(task: str, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (classification; segmentation and change over the labelled pixels only) or the
    mean binary cross-entropy (multilabel)."""
    if task == "multilabel":
        return MultiLabelHead.loss(logits, label)
    return masked_cross_entropy(logits, label.long())


# ---------------------------------------------------------------------------------------------
# building, loading, parameter groups
# ---------------------------------------------------------------------------------------------


def build_task_model(name: str, overrides: Mapping[str, Any], *, task: str, num_classes: int, frozen: bool,
                     drop_path: float = 0.0, probe_norm: bool = True, channels: int = 128) -> TaskModel:
    """The registry's encoder ``name`` (encoder-config ``overrides``; pretrainer options dropped; stochastic
    depth ``drop_path``) without its pretraining-only parts (``Family.drop_prefixes``: SpectralGPT's
    decoder), under a fresh head. Initialised from the global RNG (the same on every seeded rank)."""
    from jobs.train.family import family_of
    from models.registry import create, split_overrides

    fam = family_of(name)
    enc_over, _ = split_overrides(name, overrides)
    encoder = create(name, **{**enc_over, "drop_path_rate": drop_path})
    own = [n for n, _ in encoder.named_children()] + [n for n, _ in encoder.named_parameters(recurse=False)]
    for attr in own:
        if fam.drop_prefixes and attr.startswith(fam.drop_prefixes):
            delattr(encoder, attr)
    return TaskModel(encoder, fam.name, task, num_classes, frozen, probe_norm=probe_norm, channels=channels)


def load_encoder(model: TaskModel, path_or_state: Any) -> list[str]:
    """Load encoder weights (our safetensors export, an official SpectralGPT ``.pth`` layout or a state
    dict) into ``model.encoder`` through the one checkpoint filter (``models.checkpoint.load_weights``:
    q/k/v fused, position/patch embeddings resampled); after the ``strict=False`` load the only missing
    keys may be the head's (RuntimeError otherwise). Returns the missing keys."""
    from models.checkpoint import load_state_dict_file, load_weights, unwrap_state_dict

    raw = path_or_state if isinstance(path_or_state, Mapping) else load_state_dict_file(path_or_state)
    sd = {f"encoder.{k}": v for k, v in unwrap_state_dict(raw).items()}
    result = load_weights(model, sd)
    assert all(k.startswith("head.") for k in result.missing), result.missing
    return result.missing


def layer_decay_groups(model: TaskModel, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """AdamW groups with layer-wise LR decay (BEiT / MAE fine-tuning): a parameter of layer ``i`` (the
    family's ``layer_id``; the head is the top layer ``L``) gets ``lr_scale = layer_decay ** (L − i)``;
    weight decay as ``engine.param_groups`` (none for 1-D tensors and ``no_weight_decay()``). Frozen
    parameters are left out; empty groups are not returned."""
    skip = model.no_weight_decay()
    top = model.fam.layer_id("", model.encoder)[1]
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        enc_name = name.removeprefix("encoder.")
        layer = model.fam.layer_id(enc_name, model.encoder)[0] if enc_name != name else top
        no_decay = len(getattr(p, "ds_shape", p.shape)) < 2 or name in skip
        g = groups.setdefault((layer, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
            "lr_scale": layer_decay ** (top - layer), "layer": layer,
        })
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]

"""One table row per model family: what a training job needs to know about it, as data.

    fam = family_of("skysense_tiny")
    fam.columns                         # shard columns to read
    fam.make_preprocess(manifest, cfg)  # pyarrow.Table -> dict of numpy (Ray Data map_batches)
    module = fam.build(cfg.model)       # the module the engine trains
    out = fam.forward(engine, batch, cfg.model)   # {"loss", "loss_<part>", ...}

Jobs look a family up here instead of branching on its name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from jobs.train import data as D
from jobs.train.engine import ema_update
from jobs.train.schedules import cosine_momentum

if TYPE_CHECKING:
    from jobs.train.configs import ModelSection, TrainConfig

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Family:
    """A model family's facts. ``forward(module, batch, model_cfg)`` returns ``{"loss": (),
    "loss_<part>": (), ...}`` (other keys are tensors for pictures); ``after_step(module, step,
    total, model_cfg)`` runs after every optimizer step; ``encoder(module)`` is the encoder inside
    the trained module; the export keeps the tensors under ``encoder_prefix`` (prefix removed)
    except those starting with one of ``drop_prefixes``, as class ``model_class``."""

    name: str
    columns: tuple[str, ...]
    make_preprocess: Callable[[Mapping[str, Any], TrainConfig], Callable]
    build: Callable[[ModelSection], nn.Module]
    forward: Callable[[nn.Module, Batch, ModelSection], dict[str, torch.Tensor]]
    after_step: Callable[[nn.Module, int, int, ModelSection], None]
    encoder: Callable[[nn.Module], nn.Module]
    #: batch keys holding image tensors (cast to the engine's dtype); the rest keep theirs
    image_keys: tuple[str, ...]
    encoder_prefix: str
    drop_prefixes: tuple[str, ...]
    model_class: str
    #: a masked autoencoder: ``forward`` also returns ``pred`` and ``mask`` (reconstruction pictures)
    reconstructs: bool

    def encoder_state_dict(self, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The encoder's tensors of the trained module's state dict (names as the encoder's)."""
        return {k.removeprefix(self.encoder_prefix): v for k, v in sd.items()
                if k.startswith(self.encoder_prefix) and not k.startswith(self.drop_prefixes)}


def _build_spectralgpt(m: ModelSection) -> nn.Module:
    from models.registry import create

    return create(m.name, **m.overrides)


def _forward_spectralgpt(module: nn.Module, batch: Batch, m: ModelSection) -> dict[str, torch.Tensor]:
    loss, pred, mask = module(batch["x"], m.mask_ratio)
    return {"loss": loss, "pred": pred, "mask": mask}


def _build_skysense(m: ModelSection) -> nn.Module:
    from models.skysense import build_pretrainer

    return build_pretrainer(m.name, **m.overrides)


def _skysense_after_step(module: nn.Module, step: int, total: int, m: ModelSection) -> None:
    ema_update(module, cosine_momentum(step, total, m.teacher_momentum, m.teacher_momentum_final))


FAMILIES: dict[str, Family] = {
    "spectralgpt": Family(
        name="spectralgpt",
        columns=D.SPECTRALGPT_COLUMNS,
        make_preprocess=lambda manifest, cfg: D.make_spectralgpt_preprocess_fn(
            manifest["band_stats"], slot=cfg.data.s2_slot, seed=cfg.seed),
        build=_build_spectralgpt,
        forward=_forward_spectralgpt,
        after_step=lambda module, step, total, m: None,
        encoder=lambda module: module,
        image_keys=("x",),
        encoder_prefix="",
        drop_prefixes=("decoder_", "mask_token"),
        model_class="SpectralGPT",
        reconstructs=True,
    ),
    "skysense": Family(
        name="skysense",
        columns=D.SKYSENSE_COLUMNS,
        make_preprocess=lambda manifest, cfg: D.make_skysense_preprocess_fn(manifest["band_stats"]),
        build=_build_skysense,
        forward=lambda module, batch, m: module(batch),
        after_step=_skysense_after_step,
        encoder=lambda module: module.student,
        image_keys=("s2", "s1"),
        encoder_prefix="student.",
        drop_prefixes=(),
        model_class="SkySense",
        reconstructs=False,
    ),
}


def family_of(model_name: str) -> Family:
    """The family of a registry preset (its name's prefix); ValueError naming the known ones."""
    for prefix, fam in FAMILIES.items():
        if model_name.startswith(prefix):
            return fam
    raise ValueError(f"model {model_name!r} belongs to no known family ({', '.join(FAMILIES)})")

"""One table row per model family: what a training job needs to know about it, as data.

    fam = family_of("skysense_tiny")
    fam.columns                         # shard columns to read
    fam.make_preprocess(manifest, cfg)  # pyarrow.Table -> dict of numpy (Ray Data map_batches)
    module = fam.build(cfg.model)       # the pretrainer the engine trains (``models.base.Pretrainer``)

Jobs look a family up here instead of branching on its name; the module itself is met through
the protocol of ``models.base`` only (``forward(batch)``, ``after_step``, ``set_grad_checkpointing``,
``no_weight_decay``, ``init_weights``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from jobs.train import data as D

if TYPE_CHECKING:
    from jobs.train.configs import ModelSection, TrainConfig


@dataclass(frozen=True)
class Family:
    """A model family's facts. ``options(model_cfg)``: the model section's settings as pretrainer
    options (``models.registry.create_pretrainer``); the export keeps the tensors under
    ``encoder_prefix`` (prefix removed) except those starting with one of ``drop_prefixes``."""

    name: str
    columns: tuple[str, ...]
    make_preprocess: Callable[[Mapping[str, Any], TrainConfig], Callable]
    options: Callable[[ModelSection], dict[str, Any]]
    #: batch keys holding image tensors (cast to the engine's dtype); the rest keep theirs
    image_keys: tuple[str, ...]
    #: the batch key of the S2 cube and the bands the model takes (``data.assemble_s2``)
    s2_key: str
    s2_bands: tuple[str, ...]
    encoder_prefix: str
    drop_prefixes: tuple[str, ...]
    #: a masked autoencoder: ``forward`` also returns ``pred`` and ``mask`` (reconstruction pictures)
    reconstructs: bool

    def build(self, m: ModelSection) -> nn.Module:
        """The pretrainer of preset ``m.name`` with ``m.overrides`` and the section's options."""
        from models.registry import create_pretrainer

        return create_pretrainer(m.name, **{**m.overrides, **self.options(m)})

    def encoder_state_dict(self, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The encoder's tensors of the trained module's state dict (names as the encoder's)."""
        return {k.removeprefix(self.encoder_prefix): v for k, v in sd.items()
                if k.startswith(self.encoder_prefix) and not k.startswith(self.drop_prefixes)}


def _spectralgpt_options(m: ModelSection) -> dict[str, Any]:
    return {} if m.mask_ratio is None else {"mask_ratio": m.mask_ratio}


def _skysense_options(m: ModelSection) -> dict[str, Any]:
    return {"teacher_momentum": m.teacher_momentum, "teacher_momentum_final": m.teacher_momentum_final}


FAMILIES: dict[str, Family] = {
    "spectralgpt": Family(
        name="spectralgpt",
        columns=D.SPECTRALGPT_COLUMNS,
        make_preprocess=lambda manifest, cfg: D.make_spectralgpt_preprocess_fn(
            manifest["band_stats"], slot=cfg.data.s2_slot, seed=cfg.seed, device_cube=cfg.scaling.use_gpu),
        options=_spectralgpt_options,
        image_keys=("x",),
        s2_key="x",
        s2_bands=D.SHARD_S2_BANDS,
        encoder_prefix="",
        drop_prefixes=("decoder_", "mask_token"),
        reconstructs=True,
    ),
    "skysense": Family(
        name="skysense",
        columns=D.SKYSENSE_COLUMNS,
        make_preprocess=lambda manifest, cfg: D.make_skysense_preprocess_fn(
            manifest["band_stats"], device_cube=cfg.scaling.use_gpu),
        options=_skysense_options,
        image_keys=("s2", "s1"),
        s2_key="s2",
        s2_bands=D.SKYSENSE_S2_BANDS,
        encoder_prefix="student.",
        drop_prefixes=(),
        reconstructs=False,
    ),
}


def family_of(model_name: str) -> Family:
    """The family of a registry preset (its name's prefix); ValueError naming the known ones."""
    for prefix, fam in FAMILIES.items():
        if model_name.startswith(prefix):
            return fam
    raise ValueError(f"model {model_name!r} belongs to no known family ({', '.join(FAMILIES)})")

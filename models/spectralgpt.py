"""SpectralGPT: a 3D (spectral × spatial) masked autoencoder for multispectral imagery.

Hong et al., "SpectralGPT: Spectral Remote Sensing Foundation Model", IEEE TPAMI 2024.
Facts follow the official code (danfenghong/IEEE_TPAMI_SpectralGPT, ``models_mae_spectral.py``),
re-written here on our shared layers:

- the band cube (B, C, H, W) is read as a one-channel volume (B, 1, C, H, W) and cut by one
  Conv3d (kernel = stride = spectral_group × patch × patch) into T = C / spectral_group
  spectral groups of h × w = H/p × W/p tokens, in (t, h, w) order; no cls token;
- learnable spatial (1, h*w, D) and spectral (1, T, D) position embeddings, summed;
- per-sample random masking (90 % by default), encoder on the visible tokens only;
- a 512-wide, 4-deep, 16-head decoder with its own position embeddings predicts the
  spectral_group × p × p pixels of every token;
- loss = MSE over the masked tokens + MSE of the reconstruction summed over the spectral
  groups (over all positions, as the official ``forward_loss``).

Our layout differs from the official one in a single place: attention uses one fused ``qkv``
projection; ``models.checkpoint`` concatenates the official q/k/v weights on load.

``SpectralGPT`` is both the encoder and its own pretrainer (``models.base`` protocol):
``forward_features({"x": (B, C, H, W)})`` -> tokens (B, t*h*w, D); ``forward({"x": ...})`` ->
``{"loss", "loss_masked", "loss_spectral", "pred", "mask"}`` at the config's ``mask_ratio``;
``forward_mae(x, mask_ratio, noise)`` is the same on a tensor with an explicit mask.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from models.base import Gather, gathered, has_storage
from models.layers import Attention, Block, checkpoint_blocks, resample_pos_embed_2d
from models.losses import mae_loss_terms
from models.registry import register_presets

__all__ = ["MAEOutput", "SpectralGPT", "SpectralGPTConfig"]


class MAEOutput(NamedTuple):
    """One masked-autoencoder pass: the loss, its two terms (scalars), pred (B, L, g*p*p), mask (B, L)."""

    loss: torch.Tensor
    loss_masked: torch.Tensor
    loss_spectral: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class SpectralGPTConfig:
    """SpectralGPT hyper-parameters. Defaults are the official base model at 128 px, 12 bands."""

    img_size: int = 128  # native square input; other sizes divisible by patch_size resample
    patch_size: int = 8
    in_chans: int = 12  # bands; other counts divisible by spectral_group resample
    spectral_group: int = 3  # bands per token (the official ``t_patch_size``)
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 4
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    drop_path_rate: float = 0.0
    mask_ratio: float = 0.9
    #: mask whole spectral tubes: a spatial position is masked in every spectral group or in none. With
    #: per-token masking a masked token's position is usually visible in another group, and neighbouring
    #: bands are so correlated that copying across groups solves the task without any spatial context.
    tube_masking: bool = False
    norm_pix_loss: bool = False
    spectral_loss_weight: float = 1.0  # weight of the spectral-summed reconstruction term
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size != 0:
            raise ValueError(f"img_size {self.img_size} not divisible by patch_size {self.patch_size}")
        if self.in_chans % self.spectral_group != 0:
            raise ValueError(
                f"in_chans {self.in_chans} not divisible by spectral_group {self.spectral_group}"
            )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")

    @property
    def grid_size(self) -> int:
        """Spatial tokens per side at the native input, H / p."""
        return self.img_size // self.patch_size

    @property
    def num_groups(self) -> int:
        """Spectral tokens per position at the native input, T = C / spectral_group."""
        return self.in_chans // self.spectral_group

    @property
    def patch_dim(self) -> int:
        """Pixels predicted per token: spectral_group × p × p."""
        return self.spectral_group * self.patch_size**2


def _combined_pos_embed(
    spatial: torch.Tensor, temporal: torch.Tensor, grid_hw: tuple[int, int], t: int, hw: tuple[int, int]
) -> torch.Tensor:
    """Sum of spatial (1, gh*gw, D) and spectral (1, T0, D) embeddings on a (t, h, w) grid -> (1, t*h*w, D).

    Spatial embeddings are bicubically resampled to (h, w), spectral ones linearly to t, when
    the input differs from the configured grid. Token order is (t, h, w), as the Conv3d gives.
    """
    spatial = resample_pos_embed_2d(spatial, grid_hw, hw)  # (1, h*w, D)
    if temporal.shape[1] != t:
        temporal = F.interpolate(temporal.transpose(1, 2).float(), size=t, mode="linear", align_corners=True)
        temporal = temporal.transpose(1, 2).to(spatial.dtype)  # (1, t, D)
    return (temporal[:, :, None, :] + spatial[:, None, :, :]).flatten(1, 2)  # (1, t*h*w, D)


class SpectralGPT(nn.Module):
    """SpectralGPT masked autoencoder. Input (B, C, H, W) with C % spectral_group == H % p == W % p == 0."""

    # Parts an encoder-only or fine-tuned checkpoint may lack (see models.checkpoint.load_weights).
    checkpoint_optional_prefixes = ("decoder_", "mask_token")

    def __init__(self, config: SpectralGPTConfig | None = None, **overrides) -> None:
        super().__init__()
        config = dataclasses.replace(config or SpectralGPTConfig(), **overrides)
        self.config = c = config
        self.grad_checkpointing = c.grad_checkpointing
        norm = partial(nn.LayerNorm, eps=c.norm_eps)
        g, p = c.spectral_group, c.patch_size
        dpr = torch.linspace(0, c.drop_path_rate, c.depth, device="cpu").tolist()

        # encoder
        self.patch_embed = nn.Module()  # official key layout; applied as a linear map (project_patches)
        self.patch_embed.proj = nn.Conv3d(1, c.embed_dim, kernel_size=(g, p, p), stride=(g, p, p))
        self.pos_embed_spatial = nn.Parameter(torch.zeros(1, c.grid_size**2, c.embed_dim))
        self.pos_embed_temporal = nn.Parameter(torch.zeros(1, c.num_groups, c.embed_dim))
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, c.num_heads, c.mlp_ratio, c.qkv_bias, drop_path=dpr[i], norm_layer=norm)
            for i in range(c.depth)
        )
        self.norm = norm(c.embed_dim)

        # decoder
        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.decoder_pos_embed_spatial = nn.Parameter(torch.zeros(1, c.grid_size**2, c.decoder_embed_dim))
        self.decoder_pos_embed_temporal = nn.Parameter(torch.zeros(1, c.num_groups, c.decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList(
            Block(c.decoder_embed_dim, c.decoder_num_heads, c.mlp_ratio, c.qkv_bias, norm_layer=norm)
            for _ in range(c.decoder_depth)
        )
        self.decoder_norm = norm(c.decoder_embed_dim)
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, c.patch_dim)

        if has_storage(self.mask_token):  # not on meta (param counts) nor ZeRO-3 partitions
            self.init_weights()

    # ------------------------------------------------------------------------------ setup

    def init_weights(self, gather: Gather = contextlib.nullcontext) -> None:
        """Official init: pos embeds ~ trunc N(0, .02), mask token ~ N(0, .02), patch embed and
        Linear weights xavier-uniform (q, k, v each on its own, as the official separate Linears),
        biases 0, LayerNorm 1/0.

        One submodule (or token) at a time inside ``gather(its parameters)`` (``models.base``
        protocol: under ``deepspeed.zero.Init`` no rank holds more than one submodule whole);
        tensors without storage outside a gather (meta, ZeRO-3 partitions) are skipped.
        """
        for pe in (
            self.pos_embed_spatial,
            self.pos_embed_temporal,
            self.decoder_pos_embed_spatial,
            self.decoder_pos_embed_temporal,
        ):
            gathered(gather, nn.init.trunc_normal_, pe, std=0.02)
        gathered(gather, nn.init.normal_, self.mask_token, std=0.02)
        proj = self.patch_embed.proj
        with gather([proj.weight, proj.bias]):
            if has_storage(proj.weight):
                nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
            if has_storage(proj.bias):
                nn.init.zeros_(proj.bias)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.LayerNorm):
                fill = nn.init.xavier_uniform_ if isinstance(m, nn.Linear) else nn.init.ones_
                with gather(list(m.parameters(recurse=False))):
                    if has_storage(m.weight):
                        fill(m.weight)
                    if has_storage(m.bias):
                        nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, Attention):  # fused qkv: xavier per q, k, v
                with gather([m.qkv.weight]):
                    if has_storage(m.qkv.weight):
                        for chunk in m.qkv.weight.data.chunk(3, dim=0):
                            nn.init.xavier_uniform_(chunk)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every encoder and decoder block while training."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Position embeddings and the mask token (full parameter names); 1-D ones are implied."""
        return {
            "pos_embed_spatial",
            "pos_embed_temporal",
            "decoder_pos_embed_spatial",
            "decoder_pos_embed_temporal",
            "mask_token",
        }

    # ------------------------------------------------------------------------------ tokens

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, g*p*p), tokens in (t, h, w) order, pixels in (band, row, col) order."""
        g, p = self.config.spectral_group, self.config.patch_size
        return rearrange(imgs, "b (t u) (h p) (w q) -> b (t h w) (u p q)", u=g, p=p, q=p)

    def unpatchify(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(B, L, g*p*p) -> (B, C, H, W) for a token grid of ``hw`` = (H/p, W/p)."""
        g, p = self.config.spectral_group, self.config.patch_size
        return rearrange(x, "b (t h w) (u p q) -> b (t u) (h p) (w q)", h=hw[0], w=hw[1], u=g, p=p, q=p)

    def token_grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        """Token grid (t, h, w) = (C/g, H/p, W/p) of an input (B, C, H, W); ValueError if indivisible."""
        C, H, W = x.shape[-3:]
        g, p = self.config.spectral_group, self.config.patch_size
        if C % g or H % p or W % p:
            raise ValueError(f"input (C, H, W) = {(C, H, W)} must be divisible by {(g, p, p)}")
        return C // g, H // p, W // p

    def project_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Patch embedding of patchified cubes: (B, N, g*p*p) -> (B, N, D).

        The Conv3d ``patch_embed.proj`` (kernel = stride = g × p × p, one input channel) is a
        linear map of each cube; applying it as ``F.linear`` to the (band, row, col)-ordered
        pixels from ``patchify`` lets the encoder embed only the kept tokens.
        """
        w = self.patch_embed.proj.weight  # (D, 1, g, p, p)
        return F.linear(patches, w.flatten(1), self.patch_embed.proj.bias)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Tokenise all cubes and add position embeddings: (B, C, H, W) -> (B, L, D), grid (t, h, w)."""
        thw = self.token_grid(x)
        return self.project_patches(self.patchify(x)) + self.pos_embed(thw), thw

    def pos_embed(self, thw: tuple[int, int, int], decoder: bool = False) -> torch.Tensor:
        """Encoder (or decoder) position embedding for a (t, h, w) token grid: (1, t*h*w, D)."""
        g = self.config.grid_size
        spatial, temporal = (
            (self.decoder_pos_embed_spatial, self.decoder_pos_embed_temporal)
            if decoder
            else (self.pos_embed_spatial, self.pos_embed_temporal)
        )
        return _combined_pos_embed(spatial, temporal, (g, g), thw[0], thw[1:])

    def random_masking(
        self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample random masking by argsort of noise (small noise = kept).

        x: (B, L, D); noise: optional (B, L) in [0, 1) to fix the mask.
        Returns x_kept (B, K, D) with K = round(L × (1 − mask_ratio)), mask (B, L) with
        1 = masked, ids_restore (B, L), ids_keep (B, K).
        """
        B, L, D = x.shape
        len_keep = round(L * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(B, L, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]  # (B, K)
        x_kept = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, D))  # (B, K, D)
        mask = torch.ones(B, L, device=x.device, dtype=torch.float32)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # (B, L), back in token order
        return x_kept, mask, ids_restore, ids_keep

    # ------------------------------------------------------------------------------ encoder / decoder

    def _run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        return checkpoint_blocks(blocks, x, self.grad_checkpointing)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder tokens without masking: (B, C, H, W) -> (B, t*h*w, D), after the final norm."""
        x, _ = self.embed(x)
        return self.norm(self._run_blocks(self.blocks, x))

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Protocol form of ``encode``: ``batch["x"]`` (B, C, H, W) -> (B, t*h*w, D)."""
        return self.encode(batch["x"])

    def tube_noise(self, b: int, thw: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        """Masking noise (B, t*h*w) equal over the t spectral groups of a position (+ a tiny group offset, so
        one position's tokens sort together): ``random_masking`` then keeps or masks whole tubes."""
        t, h, w = thw
        spatial = torch.rand(b, 1, h * w, device=device)  # (B, 1, h*w)
        offset = torch.arange(t, device=device, dtype=spatial.dtype).view(1, t, 1) * 1e-7
        return ((spatial + offset) / (1 + t * 1e-7)).flatten(1)  # (B, t*h*w) in (t, h, w) order

    def forward_encoder(
        self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int, int]]:
        """(B, C, H, W) -> latent (B, K, D) of the kept tokens, mask (B, L), ids_restore (B, L), grid.
        Without ``noise``, per-token noise or, with ``tube_masking``, :meth:`tube_noise`."""
        thw = self.token_grid(x)
        if noise is None and self.config.tube_masking:
            noise = self.tube_noise(x.shape[0], thw, x.device)
        patches, mask, ids_restore, ids_keep = self.random_masking(self.patchify(x), mask_ratio, noise)
        pos = self.pos_embed(thw)  # (1, L, D)
        pos = torch.gather(
            pos.expand(x.shape[0], -1, -1), 1, ids_keep[..., None].expand(-1, -1, pos.shape[-1])
        )
        x = self.project_patches(patches) + pos  # (B, K, D), only the kept cubes are embedded
        x = self.norm(self._run_blocks(self.blocks, x))
        return x, mask, ids_restore, thw

    def forward_decoder(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, thw: tuple[int, int, int]
    ) -> torch.Tensor:
        """latent (B, K, D) -> pixel predictions (B, L, g*p*p) for every token, in token order."""
        x = self.decoder_embed(latent)  # (B, K, Dd)
        B, K, Dd = x.shape
        L = ids_restore.shape[1]
        x = torch.cat([x, self.mask_token.expand(B, L - K, Dd).to(x.dtype)], dim=1)  # (B, L, Dd) shuffled
        x = torch.gather(x, 1, ids_restore[..., None].expand(-1, -1, Dd))  # (B, L, Dd) unshuffled
        x = x + self.pos_embed(thw, decoder=True)
        x = self.decoder_norm(self._run_blocks(self.decoder_blocks, x))
        return self.decoder_pred(x)

    # ------------------------------------------------------------------------------ loss

    def loss_terms(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked-token MSE, spectral-summed MSE) of ``pred`` (B, L, g*p*p) against ``imgs``
        (B, C, H, W) under ``mask`` (B, L), 1 = masked; see ``models.losses.mae_loss_terms``."""
        return mae_loss_terms(
            self.patchify(imgs),
            pred,
            mask,
            imgs.shape[1] // self.config.spectral_group,
            self.config.norm_pix_loss,
        )

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Scalar loss = masked-token MSE + spectral_loss_weight × spectral-summed MSE."""
        masked, spectral = self.loss_terms(imgs, pred, mask)
        return masked + self.config.spectral_loss_weight * spectral

    def forward_mae(
        self, x: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
    ) -> MAEOutput:
        """x (B, C, H, W) -> ``MAEOutput`` (loss, its two terms, pred (B, L, g*p*p), mask (B, L)).

        ``mask_ratio`` None: the config's; ``noise`` (B, L) fixes the mask (smallest noise kept).
        """
        mask_ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore, thw = self.forward_encoder(x, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore, thw)
        masked, spectral = self.loss_terms(x, pred, mask)
        return MAEOutput(masked + self.config.spectral_loss_weight * spectral, masked, spectral, pred, mask)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pretraining step: ``batch["x"]`` (B, C, H, W) (optional ``batch["noise"]`` (B, L)) ->
        ``{"loss", "loss_masked", "loss_spectral"}`` scalars + ``"pred"`` (B, L, g*p*p), ``"mask"`` (B, L)."""
        return self.forward_mae(batch["x"], noise=batch.get("noise"))._asdict()

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing to do after an optimizer step (no EMA, no schedule inside the model)."""


# ---------------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------------

PRESETS: dict[str, SpectralGPTConfig] = {
    "spectralgpt_tiny": SpectralGPTConfig(
        img_size=32,
        embed_dim=64,
        depth=2,
        num_heads=4,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=4,
    ),
    "spectralgpt_base": SpectralGPTConfig(embed_dim=768, depth=12, num_heads=12),
    "spectralgpt_large": SpectralGPTConfig(embed_dim=1024, depth=24, num_heads=16),
    "spectralgpt_huge": SpectralGPTConfig(embed_dim=1280, depth=32, num_heads=16),
}


register_presets("spectralgpt", SpectralGPT, PRESETS)

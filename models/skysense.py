"""SkySense (Guo et al., CVPR 2024): the factorized multi-modal spatiotemporal encoder.

    s2 (B, T, 10, H, W) ─► S2 ViT (shared over dates) ─► (B, T, N, D) ─┐  + day-of-year embedding
    s1 (B, T1, 2, H, W) ─► S1 ViT (shared over dates) ─► (B, T1, N, D) ┤  + modality embedding
    hr (B, 4, Hh, Wh)   ─► Swin-V2-style (optional)   ─► (B, 1, N, D)  ┘  (invalid slots masked out)
        ─► per location n: [fusion token, date tokens...] ─► Multimodal Temporal Fusion transformer
        ─► fusion token ─► dense (B, D, h, w), pooled (B, D); geo-context enhanced when lon/lat given

S2 bands are B02 B03 B04 B05 B06 B07 B08 B8A B11 B12 (the shard's 12 bands minus B01 and B09), S1
bands VV VH, all on the same 10 m grid, so S2 and S1 tokens of a location coincide. Invalid
dates (``*_valid`` False) are zeroed before the encoders and masked out of the fusion attention,
so neither their pixels nor their day of year can reach the output.

Layout: this module holds the encoder (``SkySense``, its config, the per-modality ViT, the
geo-context prototypes) and registers the presets; ``models.swin`` the high-resolution branch;
``models.skysense_pretrain`` the pretrainer (student + EMA teacher, MGCL + GeoCP losses, views);
``models.losses`` the pure losses.

Protocol (``models.base``)::

    model = models.registry.create("skysense_tiny", **overrides)
    out = model.forward_features(batch)   # batch keys: s2 (B,T,10,H,W) float, s2_doy (B,T) int,
    # s2_valid (B,T) bool, s1 (B,T1,2,H,W), s1_doy, s1_valid, optional lonlat (B,2) degrees, hr, hr_valid
    out = model(**batch)                  # the same, keyword form (``encode``)
    pre = models.registry.create_pretrainer("skysense_tiny", proj_dim=32, teacher_momentum=0.99)

``out`` holds ``dense`` (B, D, h, w), ``pooled`` (B, D) and ``levels`` (four maps at strides
patch/4 … patch*2 for ``SegmentationHead``), see ``SkySense.encode``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from models.base import Gather, apply_gathered, gathered, has_storage
from models.layers import Block, checkpoint_blocks, init_weights_mae, sincos_pos_embed_2d
from models.registry import create_pretrainer, get_preset, register_presets
from models.swin import SwinV2Encoder

__all__ = [
    "S1_BANDS",
    "S2_BANDS",
    "S2_SHARD_BANDS",
    "S2_SHARD_INDEX",
    "GeoContextPrototypes",
    "SkySense",
    "SkySenseConfig",
    "ViTEncoder",
    "build_pretrainer",
    "region_index",
]

S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
S1_BANDS = ("VV", "VH")
#: the shard contract's S2 band order (12 bands); the loader picks ``s2[:, :, S2_SHARD_INDEX]``
S2_SHARD_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
S2_SHARD_INDEX = tuple(S2_SHARD_BANDS.index(b) for b in S2_BANDS)  # (1, 2, ..., 8, 10, 11)
NUM_DOY = 366  # calendar embedding entries: day of year 1..366
#: ``encode``'s inputs: the six required ones first, then the optional ones
ENCODER_KEYS = ("s2", "s2_doy", "s2_valid", "s1", "s1_doy", "s1_valid", "lonlat", "hr", "hr_valid")


@dataclass(frozen=True)
class SkySenseConfig:
    """Architecture of one SkySense preset (widths, depths, heads of every part)."""

    img_size: int = 128  #: native S2/S1 tile side in px (any multiple of ``patch_size`` works)
    patch_size: int = 16
    s2_in_chans: int = len(S2_BANDS)
    s2_dim: int = 768
    s2_depth: int = 12
    s2_heads: int = 12
    s1_in_chans: int = len(S1_BANDS)
    s1_dim: int = 768
    s1_depth: int = 12
    s1_heads: int = 12
    mlp_ratio: float = 4.0
    #: optional high-resolution optical branch (hierarchical, Swin-V2-style windowed attention)
    hr_enabled: bool = False
    hr_in_chans: int = 4
    hr_patch: int = 4
    hr_embed_dim: int = 128
    hr_depths: tuple[int, ...] = (2, 2, 18, 2)
    hr_heads: tuple[int, ...] = (4, 8, 16, 32)
    hr_window: int = 8
    #: Multimodal Temporal Fusion transformer
    fusion_dim: int = 768
    fusion_depth: int = 6
    fusion_heads: int = 12
    #: Geo-Context Prototype Learning: regions on an n_lon × n_lat lon/lat grid
    n_lon: int = 36
    n_lat: int = 18
    num_prototypes: int = 32
    proto_temperature: float = 0.1
    #: stochastic depth: rises linearly to this over each ViT/fusion stack (constant in the HR branch)
    drop_path_rate: float = 0.0
    #: initial activation-checkpointing state (``set_grad_checkpointing`` switches it later)
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in ("hr_depths", "hr_heads"):  # yaml/CLI overrides arrive as lists
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("s2", "s1", "fusion"):
            dim, heads = getattr(self, f"{name}_dim"), getattr(self, f"{name}_heads")
            if dim % heads != 0 or dim % 4 != 0:
                raise ValueError(f"{name}_dim {dim} must be divisible by {name}_heads {heads} and by 4")
        if self.img_size % self.patch_size != 0:
            raise ValueError(f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}")
        if len(self.hr_depths) != len(self.hr_heads):
            raise ValueError("hr_depths and hr_heads must have the same length")
        if min(self.n_lon, self.n_lat, self.num_prototypes, self.s2_depth, self.s1_depth) < 1:
            raise ValueError("n_lon, n_lat, num_prototypes and encoder depths must be >= 1")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    @property
    def num_regions(self) -> int:
        return self.n_lon * self.n_lat

    @property
    def hr_out_dim(self) -> int:
        return self.hr_embed_dim * 2 ** (len(self.hr_depths) - 1)


# ---------------------------------------------------------------------------------------------
# geography
# ---------------------------------------------------------------------------------------------


def region_index(lonlat: torch.Tensor, n_lon: int, n_lat: int) -> torch.Tensor:
    """Region of each (lon, lat) in degrees on an ``n_lon × n_lat`` grid: (B, 2) -> (B,) int64.

    ``col = floor(((lon + 180) mod 360) / 360 · n_lon)``, ``row = clamp(floor((lat + 90) / 180 · n_lat),
    0, n_lat - 1)``, ``region = row · n_lon + col``. Longitude wraps (180° is -180°); the poles
    fall in the first/last row.
    """
    if n_lon < 1 or n_lat < 1:
        raise ValueError(f"n_lon and n_lat must be >= 1, got {n_lon}, {n_lat}")
    if lonlat.ndim != 2 or lonlat.shape[-1] != 2:
        raise ValueError(f"lonlat must be (B, 2) (lon, lat) in degrees, got {tuple(lonlat.shape)}")
    ll = lonlat.double()
    col = torch.floor(torch.remainder(ll[:, 0] + 180.0, 360.0) / 360.0 * n_lon).long().clamp(0, n_lon - 1)
    row = torch.floor((ll[:, 1] + 90.0) / 180.0 * n_lat).long().clamp(0, n_lat - 1)
    return row * n_lon + col


# ---------------------------------------------------------------------------------------------
# spatial encoder, geo-context prototypes and the encoder
# ---------------------------------------------------------------------------------------------


class ViTEncoder(nn.Module):
    """Plain ViT over one image per call, 2-D sin-cos positions (any size): (B, C, H, W) -> (B, N, D).

    ``forward`` also returns the outputs of blocks ``out_indices`` (each (B, N, D)). Drop-path
    rates rise linearly from 0 to ``drop_path_rate`` over the blocks.
    """

    def __init__(
        self,
        in_chans: int,
        dim: int,
        depth: int,
        heads: int,
        patch: int,
        mlp_ratio: float,
        drop_path_rate: float,
        out_indices: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.patch = patch
        self.out_indices = out_indices
        self.grad_checkpointing = False
        self.patch_embed = nn.Conv2d(in_chans, dim, patch, stride=patch)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist() if drop_path_rate > 0 else [0.0] * depth
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, drop_path=d) for d in dpr)
        self.norm = nn.LayerNorm(dim)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every block while training."""
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        grad_ckpt = self.grad_checkpointing
        gh, gw = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        x = rearrange(self.patch_embed(x), "b d h w -> b (h w) d")  # (B, N, D)
        x = x + sincos_pos_embed_2d(x.shape[-1], gh, gw).to(x.device, x.dtype)
        outs, start = [], 0
        for i in self.out_indices:
            x = checkpoint_blocks(self.blocks[start : i + 1], x, grad_ckpt)
            outs.append(x)
            start = i + 1
        x = checkpoint_blocks(self.blocks[start:], x, grad_ckpt)
        return self.norm(x), outs


class GeoContextPrototypes(nn.Module):
    """Per-region prototype banks; features read out their own region's prototypes only.

    prototypes: (R, P, D). ``forward(tokens (B, N, D), region (B,))`` -> enhanced (B, N, D) and the
    attention weights (B, N, P) over the region's P prototypes (other regions are never gathered).
    """

    def __init__(self, num_regions: int, num_prototypes: int, dim: int, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.prototypes = nn.Parameter(torch.randn(num_regions, num_prototypes, dim) * 0.02)
        self.proj = nn.Linear(dim, dim)

    def logits(self, tokens: torch.Tensor, region: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """Cosine similarity / temperature of tokens to their region's prototypes: -> (B, N, P)."""
        protos = self.prototypes[region]  # (B, P, D)
        protos = protos.detach() if detach else protos
        t, p = F.normalize(tokens.float(), dim=-1), F.normalize(protos.float(), dim=-1)
        return torch.einsum("bnd,bpd->bnp", t, p) / self.temperature

    def forward(self, tokens: torch.Tensor, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.logits(tokens, region).softmax(dim=-1)  # (B, N, P), same scores as the losses
        read = torch.einsum(
            "bnp,bpd->bnd", weights.to(tokens.dtype), self.prototypes[region].to(tokens.dtype)
        )
        return tokens + self.proj(read), weights


class SkySense(nn.Module):
    """Factorized multi-modal spatiotemporal encoder (spatial ViTs per modality, then temporal fusion)."""

    def __init__(self, config: SkySenseConfig) -> None:
        super().__init__()
        self.config = cfg = config
        d = cfg.fusion_dim
        levels = tuple(sorted({max(0, round(cfg.s2_depth * (i + 1) / 4) - 1) for i in range(3)}))
        vit = dict(patch=cfg.patch_size, mlp_ratio=cfg.mlp_ratio, drop_path_rate=cfg.drop_path_rate)
        self.s2_encoder = ViTEncoder(
            cfg.s2_in_chans, cfg.s2_dim, cfg.s2_depth, cfg.s2_heads, out_indices=levels, **vit
        )
        self.s1_encoder = ViTEncoder(
            cfg.s1_in_chans, cfg.s1_dim, cfg.s1_depth, cfg.s1_heads, out_indices=(), **vit
        )
        self.hr_encoder = (
            SwinV2Encoder(
                cfg.hr_in_chans,
                cfg.hr_embed_dim,
                cfg.hr_patch,
                cfg.hr_depths,
                cfg.hr_heads,
                cfg.hr_window,
                cfg.mlp_ratio,
                cfg.drop_path_rate,
            )
            if cfg.hr_enabled
            else nn.Identity()
        )
        self.s2_proj = nn.Linear(cfg.s2_dim, d)
        self.s1_proj = nn.Linear(cfg.s1_dim, d)
        self.hr_proj = nn.Linear(cfg.hr_out_dim, d) if cfg.hr_enabled else nn.Identity()
        self.doy_embed = nn.Embedding(NUM_DOY, d)  # calendar embedding, day of year 1..366
        self.modality_embed = nn.Parameter(torch.zeros(3, d))  # s2, s1, hr
        self.fusion_token = nn.Parameter(torch.zeros(1, 1, d))
        dpr = (
            torch.linspace(0, cfg.drop_path_rate, cfg.fusion_depth).tolist()
            if cfg.drop_path_rate > 0
            else None
        )
        self.fusion_blocks = nn.ModuleList(
            Block(d, cfg.fusion_heads, cfg.mlp_ratio, drop_path=dpr[i] if dpr else 0.0)
            for i in range(cfg.fusion_depth)
        )
        self.fusion_norm = nn.LayerNorm(d)
        self.geo = GeoContextPrototypes(cfg.num_regions, cfg.num_prototypes, d, cfg.proto_temperature)
        self.set_grad_checkpointing(cfg.grad_checkpointing)
        # Nothing to initialise on the meta device or on ZeRO-3 partitions (deepspeed.zero.Init): call
        # ``init_weights()`` after ``to_empty`` / ``init_weights(gather)`` with a ZeRO-3 gather.
        if all(has_storage(p) for p in self.parameters()):
            self.init_weights()

    @property
    def embed_dim(self) -> int:
        return self.config.fusion_dim

    @property
    def level_dims(self) -> list[int]:
        """Channels of the four ``levels`` maps (for ``SegmentationHead``)."""
        return [self.config.s2_dim] * 3 + [self.config.fusion_dim]

    def init_weights(self, gather: Gather = contextlib.nullcontext) -> None:
        """MAE-style init: Linear xavier-uniform (patch embeds flattened), embeddings N(0, 0.02).

        Initialises every parameter, so ``to_empty`` after meta-device construction + this is
        complete. One submodule (or token) at a time inside ``gather(its parameters)``
        (``models.base`` protocol); tensors without storage outside a gather are skipped.
        """
        apply_gathered(self, init_weights_mae, gather, (nn.Linear, nn.LayerNorm))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # the patch embeddings
                with gather([m.weight, m.bias]):
                    if has_storage(m.weight):
                        nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
                        nn.init.zeros_(m.bias)
        for t in (self.doy_embed.weight, self.modality_embed, self.fusion_token, self.geo.prototypes):
            gathered(gather, nn.init.normal_, t, std=0.02)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every block stack (S2/S1 ViTs, HR window blocks, temporal
        fusion) while training; a no-op under ``torch.no_grad`` (the EMA teacher)."""
        self.grad_checkpointing = enable
        for enc in (self.s2_encoder, self.s1_encoder, self.hr_encoder):
            if isinstance(enc, ViTEncoder | SwinV2Encoder):
                enc.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Tokens and embeddings: calendar (``doy_embed``), modality, fusion token, geo prototypes, and
        the HR branch's continuous position-bias MLPs (Swin-V2); 1-D parameters are implied."""
        names = {"doy_embed.weight", "modality_embed", "fusion_token", "geo.prototypes"}
        return names | {n for n, _ in self.named_parameters() if ".cpb." in n}

    def _per_date(self, x: torch.Tensor, valid: torch.Tensor, encoder: ViTEncoder, proj: nn.Module):
        """(B, T, C, H, W) -> date tokens (B, T, N, D) and the encoder's intermediate outputs."""
        b = x.shape[0]
        x = torch.where(valid[:, :, None, None, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        tokens, outs = encoder(rearrange(x, "b t c h w -> (b t) c h w"))
        tokens = rearrange(proj(tokens), "(b t) n d -> b t n d", b=b)  # (B, T, N, D)
        return tokens, [rearrange(o, "(b t) n d -> b t n d", b=b) for o in outs]

    @staticmethod
    def _masked_time_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, T, N, D), (B, T) -> mean over valid dates (B, N, D); zeros where no date is valid."""
        w = valid[:, :, None, None].to(x.dtype)
        x = torch.where(valid[:, :, None, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        return (x * w).sum(1) / w.sum(1).clamp(min=1.0)

    def encode(
        self,
        s2: torch.Tensor,
        s2_doy: torch.Tensor,
        s2_valid: torch.Tensor,
        s1: torch.Tensor,
        s1_doy: torch.Tensor,
        s1_valid: torch.Tensor,
        lonlat: torch.Tensor | None = None,
        hr: torch.Tensor | None = None,
        hr_valid: torch.Tensor | None = None,
    ) -> dict:
        """Fuse the S2/S1 (and HR) time series of each location.

        s2: (B, T, 10, H, W), s2_doy: (B, T) day of year 1..366, s2_valid: (B, T) bool; s1 likewise
        with (B, T1, 2, H, W); lonlat: (B, 2) degrees (enables geo-context enhancement); hr:
        (B, hr_in_chans, Hh, Wh) with ``hr_enabled``. Returns a dict: ``dense`` (B, D, h, w),
        ``pooled`` (B, D), ``tokens`` (B, N, D) fused before geo-context, ``levels`` four maps
        (B, C_i, H_i, W_i) at strides patch/4, patch/2, patch, 2·patch; ``s2_tokens``/``s1_tokens``
        (B, N, D) per-modality means over valid dates, ``s2_any``/``s1_any`` (B,) bool,
        ``proto_weights`` (B, N, P) or None.
        """
        cfg = self.config
        if s2.ndim != 5 or s1.ndim != 5 or s2.shape[-2:] != s1.shape[-2:]:
            raise ValueError(
                f"s2 and s1 must be (B, T, C, H, W) on one grid, got {tuple(s2.shape)}, {tuple(s1.shape)}"
            )
        if s2.shape[-1] % cfg.patch_size or s2.shape[-2] % cfg.patch_size:
            raise ValueError(f"tile size {tuple(s2.shape[-2:])} is not a multiple of patch {cfg.patch_size}")
        b, gh, gw = s2.shape[0], s2.shape[-2] // cfg.patch_size, s2.shape[-1] // cfg.patch_size
        s2_valid, s1_valid = s2_valid.bool(), s1_valid.bool()
        t2, s2_levels = self._per_date(s2, s2_valid, self.s2_encoder, self.s2_proj)  # (B, T, N, D)
        t1, _ = self._per_date(s1, s1_valid, self.s1_encoder, self.s1_proj)  # (B, T1, N, D)
        day2 = self.doy_embed(s2_doy.long().clamp(1, NUM_DOY) - 1) + self.modality_embed[0]  # (B, T, D)
        day1 = self.doy_embed(s1_doy.long().clamp(1, NUM_DOY) - 1) + self.modality_embed[1]
        seq = [t2 + day2[:, :, None].to(t2.dtype), t1 + day1[:, :, None].to(t1.dtype)]
        valid = [s2_valid, s1_valid]
        if hr is not None:
            if not cfg.hr_enabled:
                raise ValueError("hr imagery given but the preset has hr_enabled=False")
            f = F.adaptive_avg_pool2d(self.hr_encoder(hr), (gh, gw))  # (B, C_hr, h, w)
            f = self.hr_proj(rearrange(f, "b c h w -> b 1 (h w) c")) + self.modality_embed[2]  # (B, 1, N, D)
            seq.append(f.to(t2.dtype))
            valid.append(
                torch.ones(b, 1, dtype=torch.bool, device=s2.device)
                if hr_valid is None
                else hr_valid.bool().reshape(b, 1)
            )
        seq_t, valid_t = torch.cat(seq, dim=1), torch.cat(valid, dim=1)  # (B, L, N, D), (B, L)
        seq_t = torch.where(
            valid_t[:, :, None, None], seq_t, torch.zeros((), dtype=seq_t.dtype, device=seq_t.device)
        )
        n = seq_t.shape[2]
        x = rearrange(seq_t, "b l n d -> (b n) l d")  # (B*N, L, D)
        x = torch.cat([self.fusion_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)  # (B*N, 1+L, D)
        keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), valid_t], dim=1)  # (B, 1+L)
        mask = repeat(keep, "b l -> (b n) 1 1 l", n=n)  # (B*N, 1, 1, 1+L): True = attend
        x = checkpoint_blocks(self.fusion_blocks, x, self.grad_checkpointing, attn_mask=mask)
        tokens = rearrange(self.fusion_norm(x[:, 0]), "(b n) d -> b n d", b=b)  # (B, N, D)
        weights = None
        enhanced = tokens
        if lonlat is not None:
            enhanced, weights = self.geo(tokens, region_index(lonlat, cfg.n_lon, cfg.n_lat))
        dense = rearrange(enhanced, "b (h w) d -> b d h w", h=gh)  # (B, D, h, w)
        lv = [rearrange(self._masked_time_mean(o, s2_valid), "b (h w) d -> b d h w", h=gh) for o in s2_levels]
        lv = [lv[min(i, len(lv) - 1)] for i in range(3)]
        levels = [
            F.interpolate(lv[0], scale_factor=4.0, mode="bilinear", align_corners=False),
            F.interpolate(lv[1], scale_factor=2.0, mode="bilinear", align_corners=False),
            lv[2],
            F.avg_pool2d(dense, 2, ceil_mode=True),
        ]
        return {
            "dense": dense,
            "pooled": enhanced.mean(dim=1),
            "tokens": tokens,
            "levels": levels,
            "s2_tokens": self._masked_time_mean(t2, s2_valid),
            "s1_tokens": self._masked_time_mean(t1, s1_valid),
            "s2_any": s2_valid.any(dim=1),
            "s1_any": s1_valid.any(dim=1),
            "proto_weights": weights,
        }

    forward = encode

    def forward_features(self, batch: Mapping[str, torch.Tensor]) -> dict:
        """Protocol form of ``encode``: the same dict from a batch holding its keyword arguments
        (``s2``, ``s2_doy``, ``s2_valid``, ``s1``, ``s1_doy``, ``s1_valid``; optional ``lonlat``,
        ``hr``, ``hr_valid``); other keys are ignored."""
        return self.encode(**{k: batch[k] for k in ENCODER_KEYS if k in batch})


# ---------------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------------

_PRESETS: dict[str, SkySenseConfig] = {
    # tests and laptops: 32 px tiles, 4×4 tokens, a few hundred thousand parameters
    "skysense_tiny": SkySenseConfig(
        img_size=32,
        patch_size=8,
        s2_dim=32,
        s2_depth=2,
        s2_heads=2,
        s1_dim=32,
        s1_depth=1,
        s1_heads=2,
        hr_embed_dim=16,
        hr_depths=(1, 1),
        hr_heads=(2, 4),
        hr_window=4,
        fusion_dim=32,
        fusion_depth=1,
        fusion_heads=2,
        n_lon=4,
        n_lat=2,
        num_prototypes=4,
    ),
    "skysense_base": SkySenseConfig(),  # ViT-B S2 and S1, 6-deep 768 fusion
    "skysense_large": SkySenseConfig(
        s2_dim=1024,
        s2_depth=24,
        s2_heads=16,
        s1_dim=1024,
        s1_depth=24,
        s1_heads=16,
        fusion_dim=1024,
        fusion_depth=12,
        fusion_heads=16,
    ),
    # >= 1 B: ViT-H S2, ViT-L S1, 12-deep 1024 fusion (the paper's 2.06 B adds a Swin-V2-H HR branch)
    "skysense_1b": SkySenseConfig(
        s2_dim=1280,
        s2_depth=32,
        s2_heads=16,
        s1_dim=1024,
        s1_depth=24,
        s1_heads=16,
        fusion_dim=1024,
        fusion_depth=12,
        fusion_heads=16,
    ),
}


def _pretrainer(config: SkySenseConfig, **options) -> nn.Module:
    """The registry's pretrainer builder (imported on use: the pretrainer imports this module)."""
    from models.skysense_pretrain import SkySensePretrainer

    return SkySensePretrainer.from_encoder_config(config, **options)


def build_pretrainer(name: str, **overrides) -> nn.Module:
    """``models.registry.create_pretrainer`` restricted to SkySense presets (TypeError otherwise)."""
    if get_preset(name).family != "skysense":
        raise TypeError(f"{name!r} is not a SkySense preset")
    return create_pretrainer(name, **overrides)


register_presets("skysense", SkySense, _PRESETS, pretrainer=_pretrainer)

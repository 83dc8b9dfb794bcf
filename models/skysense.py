"""SkySense (Guo et al., CVPR 2024): a factorized multi-modal spatiotemporal encoder and its pretraining.

Encoder (``SkySense``)::

    s2 (B, T, 10, H, W) ─► S2 ViT (shared over dates) ─► (B, T, N, D) ─┐  + day-of-year embedding
    s1 (B, T1, 2, H, W) ─► S1 ViT (shared over dates) ─► (B, T1, N, D) ┤  + modality embedding
    hr (B, 4, Hh, Wh)   ─► Swin-V2-style (optional)   ─► (B, 1, N, D)  ┘  (invalid slots masked out)
        ─► per location n: [fusion token, date tokens...] ─► Multimodal Temporal Fusion transformer
        ─► fusion token ─► dense (B, D, h, w), pooled (B, D); geo-context enhanced when lon/lat given

S2 bands are B02 B03 B04 B05 B06 B07 B08 B8A B11 B12 (the shard's 12 bands minus B01 and B09), S1
bands VV VH, all on the same 10 m grid, so S2 and S1 tokens of a location coincide. Invalid
dates (``*_valid`` False) are zeroed before the encoders and masked out of the fusion attention,
so neither their pixels nor their day of year can reach the output.

Pretraining (``SkySensePretrainer``): a student ``SkySense`` and an EMA teacher copy. Two views
of every sample are made from the batch (a dihedral transform per sample, identical over bands
and dates; per-band gain and noise; random date dropout). Losses:

- ``loss_pixel``: InfoNCE between student and teacher fused features of the two views at the
  same ground location (view grids are mapped back to the original grid);
- ``loss_object``: the teacher's dense features are clustered onto ``num_clusters`` learnable
  centres with balanced Sinkhorn-Knopp assignments; region (object) embeddings pooled with
  those assignments are contrasted across views, and the centres learn by swapped prediction;
- ``loss_image``: InfoNCE of the pooled, geo-context enhanced features;
- ``loss_cross_modal``: InfoNCE between the S2 branch and the S1 branch at the same location;
- ``loss_geo``: Geo-Context Prototype Learning: each sample's region (``region_index`` of its
  lon/lat on an ``n_lon × n_lat`` grid) owns ``num_prototypes`` learnable prototypes; features
  attend to their own region's prototypes only, and the prototypes learn from balanced
  (Sinkhorn) assignments of the teacher's features (swapped prediction) or, with
  ``proto_momentum=m`` as in the paper, move by EMA toward the features assigned to them.

Interface used by ``jobs/pretrain.py``::

    model = models.registry.create("skysense_tiny", **overrides)
    # s2 = shard_s2[:, :, S2_SHARD_INDEX] (12 shard bands -> the 10 used), normalized, float
    pre = SkySensePretrainer(model, **loss_cfg)   # or build_pretrainer("skysense_tiny", **overrides)
    out = pre(batch)      # batch keys: s2 (B,T,10,H,W) float, s2_doy (B,T) int, s2_valid (B,T) bool,
                          #   s1 (B,T1,2,H,W) float, s1_doy (B,T1) int, s1_valid (B,T1) bool,
                          #   lonlat (B,2) float in DEGREES (lon, lat; optional: region 0 if absent)
    out["loss"].backward(); optimizer.step(); optimizer.zero_grad()
    pre.momentum_update(m)   # teacher = m * teacher + (1 - m) * student

``out`` holds ``loss`` and every component ``loss_*`` (scalars). Fine-tuning uses the student:
``model(**inputs)`` (= ``forward_features``) returns a dict with ``dense`` (B, D, h, w),
``pooled`` (B, D) and ``levels`` (four maps at strides patch/4 … patch*2 for ``SegmentationHead``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from models.layers import Block, Mlp, checkpoint_blocks, init_weights_mae, sincos_pos_embed_2d
from models.registry import create, register_model

__all__ = [
    "S1_BANDS",
    "S2_BANDS",
    "S2_SHARD_BANDS",
    "S2_SHARD_INDEX",
    "GeoContextPrototypes",
    "SkySense",
    "SkySenseConfig",
    "SkySensePretrainer",
    "augment_views",
    "build_pretrainer",
    "dihedral_table",
    "info_nce",
    "region_index",
    "sinkhorn",
]

S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
S1_BANDS = ("VV", "VH")
#: the shard contract's S2 band order (12 bands); the loader picks ``s2[:, :, S2_SHARD_INDEX]``
S2_SHARD_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
S2_SHARD_INDEX = tuple(S2_SHARD_BANDS.index(b) for b in S2_BANDS)  # (1, 2, ..., 8, 10, 11)
NUM_DOY = 366  # calendar embedding entries: day of year 1..366


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
    drop_path: float = 0.0
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

    @property
    def num_regions(self) -> int:
        return self.n_lon * self.n_lat

    @property
    def hr_out_dim(self) -> int:
        return self.hr_embed_dim * 2 ** (len(self.hr_depths) - 1)


# ---------------------------------------------------------------------------------------------
# pure functions: geography, balanced assignment, contrastive loss, views
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


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, n_iters: int = 3, eps: float = 0.05) -> torch.Tensor:
    """Balanced soft assignment of N items to K clusters (Sinkhorn-Knopp, SwAV): (N, K) -> (N, K).

    Finds ``Q ∝ exp(scores / eps)`` whose rows sum to 1 and whose columns sum to ≈ N / K (exact
    in the limit of iterations; the last step normalizes rows). Log domain, fp32, no gradient.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, K), got {tuple(scores.shape)}")
    if n_iters < 1 or eps <= 0:
        raise ValueError(f"need n_iters >= 1 and eps > 0, got {n_iters}, {eps}")
    n, k = scores.shape
    log_q = scores.float() / eps
    for _ in range(n_iters):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(k)  # columns sum to 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(n)  # rows sum to 1/N
    return torch.softmax(log_q, dim=1)  # rows sum to 1


def info_nce(
    q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """InfoNCE: row i of ``q`` must pick row i of ``k`` among all rows of ``k``. (N, D), (N, D) -> ().

    Cosine similarities over ``temperature``; ``weight`` (N,) weights each row's cross-entropy
    (rows with weight 0 are left out as queries, but stay negatives). fp32.
    """
    if q.shape != k.shape or q.ndim != 2:
        raise ValueError(f"q and k must both be (N, D), got {tuple(q.shape)} and {tuple(k.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    q = F.normalize(q.float(), dim=-1)
    k = F.normalize(k.float(), dim=-1)
    logits = q @ k.T / temperature  # (N, N)
    ce = F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device), reduction="none")
    if weight is None:
        return ce.mean()
    w = weight.float()
    return (ce * w).sum() / w.sum().clamp(min=1e-6)


def dihedral_table(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """Source index of every output pixel for the 8 dihedral transforms of an h × w grid: (8, h*w).

    Code ``c``: flip left-right if ``c >= 4``, then rotate by ``(c % 4) · 90°``. ``view.flatten()[q] =
    img.flatten()[table[c, q]]``. Odd rotations need a square grid; for h != w they are the identity
    (``augment_views`` only draws codes 0 and 4 then).
    """
    base = torch.arange(h * w, device=device).view(h, w)
    out = []
    for c in range(8):
        g = base.flip(-1) if c >= 4 else base
        g = torch.rot90(g, c % 4, dims=(0, 1)) if (h == w or c % 2 == 0) else g
        out.append(g.reshape(-1))
    return torch.stack(out)  # (8, h*w)


def _gather_hw(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Permute the pixels of x (B, ..., H, W) by a per-sample flat index (B, H*W)."""
    shape = x.shape
    flat = x.reshape(shape[0], -1, shape[-2] * shape[-1])  # (B, M, H*W)
    out = flat.gather(-1, idx[:, None, :].expand(-1, flat.shape[1], -1))
    return out.reshape(shape)


def augment_views(
    batch: dict[str, torch.Tensor],
    gain_jitter: float = 0.1,
    noise_std: float = 0.05,
    date_drop: float = 0.25,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One augmented view of a batch and its per-sample dihedral codes (B,).

    The same dihedral transform is applied to every band and date of a sample (S2 and S1 alike);
    a per-sample, per-band gain ``1 + gain_jitter·N(0,1)`` (same for all dates) and Gaussian noise
    change the radiometry; each valid date is dropped with probability ``date_drop`` but at
    least one valid date of each modality is kept.
    """
    s2 = batch["s2"]
    b, _, _, h, w = s2.shape
    dev = s2.device
    n_codes = 8 if h == w else 2
    codes = torch.randint(0, n_codes, (b,), device=dev) * (1 if h == w else 4)
    idx = dihedral_table(h, w, dev)[codes]  # (B, H*W)
    view = dict(batch)
    for key in ("s2", "s1"):
        x = _gather_hw(batch[key], idx)
        gain = 1.0 + gain_jitter * torch.randn(b, 1, x.shape[2], 1, 1, device=dev, dtype=x.dtype)
        view[key] = x * gain + noise_std * torch.randn_like(x)
        valid = batch[f"{key}_valid"].bool()
        r = torch.rand(valid.shape, device=dev)
        r_valid = torch.where(valid, r, -1.0)
        top = r_valid == r_valid.max(dim=1, keepdim=True).values
        view[f"{key}_valid"] = valid & ((r >= date_drop) | top)
    return view, codes


# ---------------------------------------------------------------------------------------------
# spatial encoders
# ---------------------------------------------------------------------------------------------


class ViTEncoder(nn.Module):
    """Plain ViT over one image per call, 2-D sin-cos positions (any size): (B, C, H, W) -> (B, N, D).

    ``forward`` also returns the outputs of blocks ``out_indices`` (each (B, N, D)).
    """

    def __init__(
        self,
        in_chans: int,
        dim: int,
        depth: int,
        heads: int,
        patch: int,
        mlp_ratio: float,
        drop_path: float,
        out_indices: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.patch = patch
        self.out_indices = out_indices
        self.patch_embed = nn.Conv2d(in_chans, dim, patch, stride=patch)
        dpr = torch.linspace(0, drop_path, depth).tolist() if drop_path > 0 else [0.0] * depth
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, drop_path=d) for d in dpr)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, grad_ckpt: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
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


class WindowBlock(nn.Module):
    """The shared ``Block`` on (shifted) windows with a Swin-V2 continuous position bias: (B, H, W, C)."""

    def __init__(self, dim: int, heads: int, window: int, shift: bool, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.window, self.shift, self.heads = window, shift, heads
        self.block = Block(dim, heads, mlp_ratio, drop_path=drop_path)
        self.cpb = nn.Sequential(nn.Linear(2, 256), nn.ReLU(inplace=True), nn.Linear(256, heads, bias=False))

    def _bias(self, ws: int, device: torch.device) -> torch.Tensor:
        """Continuous relative position bias on log-spaced offsets (Swin-V2): -> (heads, ws², ws²)."""
        r = torch.arange(-(ws - 1), ws, device=device, dtype=torch.float32)
        table = (
            torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1) / max(ws - 1, 1) * 8
        )  # (2ws-1, 2ws-1, 2)
        table = torch.sign(table) * torch.log2(table.abs() + 1.0) / 3.0
        bias = 16 * torch.sigmoid(self.cpb(table))  # (2ws-1, 2ws-1, heads)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :] + ws - 1).to(device)  # (2, ws², ws²)
        return bias[rel[0], rel[1]].permute(2, 0, 1)  # (heads, ws², ws²)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        ws = min(self.window, h, w)
        pad_h, pad_w = (-h) % ws, (-w) % ws  # pad to whole windows; padded keys are masked out
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h)) if pad_h or pad_w else x
        hp, wp = h + pad_h, w + pad_w
        shift = ws // 2 if self.shift and min(hp, wp) > ws else 0
        if shift:
            x = torch.roll(x, (-shift, -shift), dims=(1, 2))
        xw = rearrange(x, "b (nh s1) (nw s2) c -> (b nh nw) (s1 s2) c", s1=ws, s2=ws)  # (B*nW, ws², C)
        mask = self._bias(ws, x.device)[None]  # (1, heads, ws², ws²)
        if shift or pad_h or pad_w:
            label = torch.zeros(hp, wp, device=x.device)  # which shifted sub-window each pixel is in
            if shift:
                for i, sl_h in enumerate((slice(0, -ws), slice(-ws, -shift), slice(-shift, None))):
                    for j, sl_w in enumerate((slice(0, -ws), slice(-ws, -shift), slice(-shift, None))):
                        label[sl_h, sl_w] = i * 3 + j
            padded = torch.ones(hp, wp, device=x.device)
            padded[:h, :w] = 0
            padded = torch.roll(padded, (-shift, -shift), dims=(0, 1)) if shift else padded
            lw = rearrange(label, "(nh s1) (nw s2) -> (nh nw) (s1 s2)", s1=ws, s2=ws)  # (nW, ws²)
            pw = rearrange(padded, "(nh s1) (nw s2) -> (nh nw) 1 (s1 s2)", s1=ws, s2=ws)  # (nW, 1, ws²)
            extra = ((lw[:, :, None] != lw[:, None, :]).float() + pw).clamp(max=1.0) * -100.0  # (nW, N, N)
            mask = repeat(mask + extra[:, None], "nw hd i j -> (b nw) hd i j", b=b)
        dev = x.device.type  # SDPA wants an additive mask in the dtype of q (the autocast dtype if on)
        mask = mask.to(torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else xw.dtype)
        xw = self.block(xw, attn_mask=mask)
        x = rearrange(xw, "(b nh nw) (s1 s2) c -> b (nh s1) (nw s2) c", b=b, nh=hp // ws, s1=ws)
        x = torch.roll(x, (shift, shift), dims=(1, 2)) if shift else x
        return x[:, :h, :w]


class PatchMerging(nn.Module):
    """2×2 concat -> linear 4C -> 2C -> norm (Swin-V2 order): (B, H, W, C) -> (B, H/2, W/2, 2C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))  # odd sizes: pad to even
        x = rearrange(x, "b (h i) (w j) c -> b h w (j i c)", i=2, j=2)  # (B, H/2, W/2, 4C)
        return self.norm(self.reduction(x))


class SwinV2Encoder(nn.Module):
    """Hierarchical high-resolution optical encoder: (B, C, H, W) -> (B, C_last, H/(p·2^(S-1)), ...)."""

    def __init__(self, cfg: SkySenseConfig) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(cfg.hr_in_chans, cfg.hr_embed_dim, cfg.hr_patch, stride=cfg.hr_patch)
        self.embed_norm = nn.LayerNorm(cfg.hr_embed_dim)
        self.grad_checkpointing = cfg.grad_checkpointing
        self.stages = nn.ModuleList()
        dim = cfg.hr_embed_dim
        for s, (depth, heads) in enumerate(zip(cfg.hr_depths, cfg.hr_heads)):
            blocks = [
                WindowBlock(dim, heads, cfg.hr_window, i % 2 == 1, cfg.mlp_ratio, cfg.drop_path)
                for i in range(depth)
            ]
            merge = PatchMerging(dim) if s < len(cfg.hr_depths) - 1 else nn.Identity()
            self.stages.append(nn.ModuleDict({"blocks": nn.ModuleList(blocks), "merge": merge}))
            dim = dim * 2 if s < len(cfg.hr_depths) - 1 else dim
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed_norm(rearrange(self.patch_embed(x), "b c h w -> b h w c"))  # (B, H, W, C)
        for stage in self.stages:
            x = stage["merge"](checkpoint_blocks(stage["blocks"], x, self.grad_checkpointing))
        return rearrange(self.norm(x), "b h w c -> b c h w")


# ---------------------------------------------------------------------------------------------
# geo-context prototypes and the encoder
# ---------------------------------------------------------------------------------------------


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
        vit = dict(patch=cfg.patch_size, mlp_ratio=cfg.mlp_ratio, drop_path=cfg.drop_path)
        self.s2_encoder = ViTEncoder(
            cfg.s2_in_chans, cfg.s2_dim, cfg.s2_depth, cfg.s2_heads, out_indices=levels, **vit
        )
        self.s1_encoder = ViTEncoder(
            cfg.s1_in_chans, cfg.s1_dim, cfg.s1_depth, cfg.s1_heads, out_indices=(), **vit
        )
        self.hr_encoder = SwinV2Encoder(cfg) if cfg.hr_enabled else nn.Identity()
        self.s2_proj = nn.Linear(cfg.s2_dim, d)
        self.s1_proj = nn.Linear(cfg.s1_dim, d)
        self.hr_proj = nn.Linear(cfg.hr_out_dim, d) if cfg.hr_enabled else nn.Identity()
        self.doy_embed = nn.Embedding(NUM_DOY, d)  # calendar embedding, day of year 1..366
        self.modality_embed = nn.Parameter(torch.zeros(3, d))  # s2, s1, hr
        self.fusion_token = nn.Parameter(torch.zeros(1, 1, d))
        dpr = torch.linspace(0, cfg.drop_path, cfg.fusion_depth).tolist() if cfg.drop_path > 0 else None
        self.fusion_blocks = nn.ModuleList(
            Block(d, cfg.fusion_heads, cfg.mlp_ratio, drop_path=dpr[i] if dpr else 0.0)
            for i in range(cfg.fusion_depth)
        )
        self.fusion_norm = nn.LayerNorm(d)
        self.geo = GeoContextPrototypes(cfg.num_regions, cfg.num_prototypes, d, cfg.proto_temperature)
        # Nothing to initialise on the meta device or on ZeRO-3 partitions (deepspeed.zero.Init): call
        # ``init_weights()`` after ``to_empty`` / inside ``zero.GatheredParameters(..., modifier_rank=0)``.
        if not any(p.is_meta or hasattr(p, "ds_id") for p in self.parameters()):
            self.init_weights()

    @property
    def embed_dim(self) -> int:
        return self.config.fusion_dim

    @property
    def level_dims(self) -> list[int]:
        """Channels of the four ``levels`` maps (for ``SegmentationHead``)."""
        return [self.config.s2_dim] * 3 + [self.config.fusion_dim]

    def init_weights(self) -> None:
        """MAE-style init: Linear xavier-uniform (patch embeds flattened), embeddings N(0, 0.02).

        Initialises every parameter, so ``to_empty`` after meta-device construction + this is complete.
        """
        self.apply(init_weights_mae)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # the patch embeddings
                nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.doy_embed.weight, std=0.02)
        nn.init.normal_(self.modality_embed, std=0.02)
        nn.init.normal_(self.fusion_token, std=0.02)
        nn.init.normal_(self.geo.prototypes, std=0.02)

    def _per_date(self, x: torch.Tensor, valid: torch.Tensor, encoder: ViTEncoder, proj: nn.Module):
        """(B, T, C, H, W) -> date tokens (B, T, N, D) and the encoder's intermediate outputs."""
        b = x.shape[0]
        x = torch.where(valid[:, :, None, None, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        tokens, outs = encoder(rearrange(x, "b t c h w -> (b t) c h w"), self.config.grad_checkpointing)
        tokens = rearrange(proj(tokens), "(b t) n d -> b t n d", b=b)  # (B, T, N, D)
        return tokens, [rearrange(o, "(b t) n d -> b t n d", b=b) for o in outs]

    @staticmethod
    def _masked_time_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, T, N, D), (B, T) -> mean over valid dates (B, N, D); zeros where no date is valid."""
        w = valid[:, :, None, None].to(x.dtype)
        x = torch.where(valid[:, :, None, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        return (x * w).sum(1) / w.sum(1).clamp(min=1.0)

    def forward_features(
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
        x = checkpoint_blocks(self.fusion_blocks, x, cfg.grad_checkpointing, attn_mask=mask)
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

    forward = forward_features


# ---------------------------------------------------------------------------------------------
# pretraining
# ---------------------------------------------------------------------------------------------

_INPUT_KEYS = ("s2", "s2_doy", "s2_valid", "s1", "s1_doy", "s1_valid")


class _ProjectionHeads(nn.Module):
    """MLP projectors into the contrastive spaces, plus the object-level cluster centres."""

    def __init__(self, dim: int, hidden: int, out: int, num_clusters: int) -> None:
        super().__init__()
        self.pixel = Mlp(dim, hidden, out)
        self.object = Mlp(dim, hidden, out)
        self.image = Mlp(dim, hidden, out)
        self.s2 = Mlp(dim, hidden, out)
        self.s1 = Mlp(dim, hidden, out)
        self.centres = nn.Parameter(torch.randn(num_clusters, out) * 0.02)


class SkySensePretrainer(nn.Module):
    """Student ``SkySense`` + EMA teacher; Multi-Granularity Contrastive + Geo-Context Prototype losses.

    ``forward(batch)`` -> dict with ``loss`` and ``loss_pixel``, ``loss_object``, ``loss_image``,
    ``loss_cross_modal``, ``loss_geo`` (all scalars). Call ``momentum_update(m)`` after every
    optimizer step. The teacher and its heads never require gradients and always run in eval mode.

    Options (``loss_cfg``): ``proj_dim``/``proj_hidden`` of the projection MLPs; ``num_clusters``
    (object level); ``temperature`` (InfoNCE), ``cluster_temperature`` (swapped prediction);
    ``sinkhorn_iters``/``sinkhorn_eps``; ``pixel_samples`` (locations per dense InfoNCE, bounds
    its N² logits); augmentations ``gain_jitter``, ``noise_std``, ``date_drop``; loss weights
    ``w_pixel``, ``w_object``, ``w_image``, ``w_cross_modal``, ``w_geo``; ``proto_momentum``
    (None: prototypes learn by gradient; m: paper-style EMA from balanced assignments).
    """

    def __init__(
        self,
        model: SkySense,
        proj_dim: int = 128,
        proj_hidden: int | None = None,
        num_clusters: int = 8,
        temperature: float = 0.2,
        cluster_temperature: float = 0.1,
        sinkhorn_iters: int = 3,
        sinkhorn_eps: float = 0.05,
        pixel_samples: int = 1024,
        gain_jitter: float = 0.1,
        noise_std: float = 0.05,
        date_drop: float = 0.25,
        w_pixel: float = 1.0,
        w_object: float = 1.0,
        w_image: float = 1.0,
        w_cross_modal: float = 1.0,
        w_geo: float = 1.0,
        proto_momentum: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, SkySense):
            raise TypeError(f"SkySensePretrainer wraps a SkySense model, got {type(model).__name__}")
        if num_clusters < 2 or pixel_samples < 2:
            raise ValueError("num_clusters and pixel_samples must be >= 2")
        if proto_momentum is not None and not 0.0 <= proto_momentum < 1.0:
            raise ValueError(f"proto_momentum must be in [0, 1) or None, got {proto_momentum}")
        self.student = model
        self.teacher = copy.deepcopy(model).requires_grad_(False)
        self.heads = _ProjectionHeads(
            model.embed_dim, proj_hidden or 2 * model.embed_dim, proj_dim, num_clusters
        )
        self.teacher_heads = copy.deepcopy(self.heads).requires_grad_(False)
        self.temperature, self.cluster_temperature = temperature, cluster_temperature
        self.sinkhorn_iters, self.sinkhorn_eps = sinkhorn_iters, sinkhorn_eps
        self.pixel_samples = pixel_samples
        self.aug = dict(gain_jitter=gain_jitter, noise_std=noise_std, date_drop=date_drop)
        self.weights = dict(
            pixel=w_pixel, object=w_object, image=w_image, cross_modal=w_cross_modal, geo=w_geo
        )
        self.proto_momentum = proto_momentum
        if proto_momentum is not None:  # the paper's variant: prototypes move by EMA, not by gradient
            model.geo.prototypes.requires_grad_(False)
        self.teacher.eval()
        self.teacher_heads.eval()

    def train(self, mode: bool = True) -> SkySensePretrainer:
        super().train(mode)
        self.teacher.eval()
        self.teacher_heads.eval()
        return self

    @torch.no_grad()
    def momentum_update(self, m: float) -> None:
        """teacher = m · teacher + (1 − m) · student, for the encoder and the projection heads."""
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {m}")
        for t_mod, s_mod in ((self.teacher, self.student), (self.teacher_heads, self.heads)):
            t_p = list(t_mod.parameters())
            s_p = [p.detach() for p in s_mod.parameters()]
            torch._foreach_mul_(t_p, m)
            torch._foreach_add_(t_p, s_p, alpha=1.0 - m)
            for t_b, s_b in zip(t_mod.buffers(), s_mod.buffers()):
                t_b.copy_(s_b)

    # -- losses -----------------------------------------------------------------------------

    def _sample(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.randperm(n, device=device)[: self.pixel_samples]

    def pixel_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Student (B, N, D) vs teacher (B, N, D) features on the same ground grid."""
        q = self.heads.pixel(s).flatten(0, 1)  # (B*N, P)
        k = self.teacher_heads.pixel(t).flatten(0, 1)
        idx = self._sample(q.shape[0], q.device)
        return info_nce(q[idx], k[idx], self.temperature)

    def object_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Regions from balanced clustering of the teacher's features, contrasted across views."""
        b, n, _ = s.shape
        qs = self.heads.object(s)  # (B, N, P)
        kt = self.teacher_heads.object(t)
        centres = F.normalize(self.heads.centres.float(), dim=-1)  # (K, P)
        scores = F.normalize(kt.float(), dim=-1).flatten(0, 1) @ centres.detach().T  # (B*N, K)
        assign = sinkhorn(scores, self.sinkhorn_iters, self.sinkhorn_eps).view(b, n, -1)  # (B, N, K)
        mass = assign.sum(dim=1)  # (B, K)
        obj_s = torch.einsum("bnk,bnp->bkp", assign, qs.float()) / mass[..., None].clamp(min=1e-6)
        obj_t = torch.einsum("bnk,bnp->bkp", assign, kt.float()) / mass[..., None].clamp(min=1e-6)
        contrast = info_nce(
            obj_s.flatten(0, 1), obj_t.flatten(0, 1), self.temperature, weight=(mass >= 0.5).flatten().float()
        )
        pred = F.normalize(qs.float(), dim=-1).flatten(0, 1) @ centres.T / self.cluster_temperature
        swapped = -(assign.flatten(0, 1) * F.log_softmax(pred, dim=-1)).sum(-1).mean()
        return contrast + swapped

    def image_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Pooled student (B, D) vs pooled teacher (B, D)."""
        return info_nce(self.heads.image(s), self.teacher_heads.image(t), self.temperature)

    def cross_modal_loss(self, feats: dict) -> torch.Tensor:
        """S2 branch vs S1 branch at the same location, both directions; locations lacking a modality skip."""
        q = self.heads.s2(feats["s2_tokens"]).flatten(0, 1)  # (B*N, P)
        k = self.heads.s1(feats["s1_tokens"]).flatten(0, 1)
        both = (feats["s2_any"] & feats["s1_any"])[:, None].expand(-1, feats["s2_tokens"].shape[1])
        idx = self._sample(q.shape[0], q.device)
        w = both.flatten()[idx].float()
        return 0.5 * (
            info_nce(q[idx], k[idx], self.temperature, w) + info_nce(k[idx], q[idx], self.temperature, w)
        )

    def geo_loss(self, s: torch.Tensor, t: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        """Prototype learning: student's soft assignment predicts the teacher's balanced one."""
        geo = self.student.geo
        target = sinkhorn(
            geo.logits(t, region, detach=True).flatten(0, 1) * geo.temperature,
            self.sinkhorn_iters,
            self.sinkhorn_eps,
        )  # (B*N, P)
        logp = F.log_softmax(geo.logits(s, region).flatten(0, 1), dim=-1)
        return -(target * logp).sum(-1).mean()

    @torch.no_grad()
    def update_prototypes(self, feats: torch.Tensor, region: torch.Tensor, m: float) -> None:
        """EMA of each region's prototypes toward the mean of the features assigned to them.

        feats: (B, N, D) teacher features, region: (B,). Assignments are balanced (Sinkhorn) over
        the P prototypes; ``P[r, p] <- m · P[r, p] + (1 - m) · normalize(Σ_m q[m, p] f_m)`` for every
        prototype that received mass; prototypes of regions absent from the batch do not move.
        """
        protos = self.student.geo.prototypes  # (R, P, D)
        r, p, _ = protos.shape
        f = F.normalize(feats.float().flatten(0, 1), dim=-1)  # (M, D)
        q = sinkhorn(
            self.student.geo.logits(feats, region).flatten(0, 1) * self.student.geo.temperature,
            self.sinkhorn_iters,
            self.sinkhorn_eps,
        )  # (M, P)
        reg = region[:, None].expand(-1, feats.shape[1]).flatten()  # (M,)
        sums = torch.zeros(r * p, f.shape[1], device=f.device)
        mass = torch.zeros(r * p, device=f.device)
        for j in range(p):
            sums.index_add_(0, reg * p + j, q[:, j : j + 1] * f)
            mass.index_add_(0, reg * p + j, q[:, j])
        target = F.normalize(sums, dim=-1).view(r, p, -1)
        moved = (mass > 1e-3).view(r, p, 1)
        protos.copy_(torch.where(moved, m * protos.float() + (1 - m) * target, protos.float()))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [k for k in _INPUT_KEYS if k not in batch]
        if missing:
            raise KeyError(f"batch lacks {missing}; needs {list(_INPUT_KEYS)} (+ optional lonlat)")
        cfg = self.student.config
        inputs = {k: batch[k] for k in _INPUT_KEYS}
        b, _, _, h, w = inputs["s2"].shape
        lonlat = batch.get("lonlat")
        if lonlat is None:
            lonlat = torch.zeros(b, 2, device=inputs["s2"].device)
            lonlat[:, 0] = -180.0  # region 0
            lonlat[:, 1] = -90.0
        region = region_index(lonlat, cfg.n_lon, cfg.n_lat)
        gh, gw = h // cfg.patch_size, w // cfg.patch_size
        table = dihedral_table(gh, gw, inputs["s2"].device)  # (8, N)
        inverse = table.argsort(dim=1)

        out_s, out_t = [], []
        for _ in range(2):
            view, codes = augment_views(inputs, **self.aug)
            inv = inverse[codes]  # (B, N): original location p <- view location inv[p]
            fs = self.student(**view, lonlat=lonlat)
            with torch.no_grad():
                ft = self.teacher(**view, lonlat=lonlat)
            for f, dst in ((fs, out_s), (ft, out_t)):
                aligned = f["tokens"].gather(1, inv[..., None].expand(-1, -1, f["tokens"].shape[-1]))
                dst.append({**f, "aligned": aligned})  # (B, N, D) on the original grid

        losses = {}
        pairs = ((0, 1), (1, 0))
        losses["pixel"] = sum(self.pixel_loss(out_s[i]["aligned"], out_t[j]["aligned"]) for i, j in pairs) / 2
        losses["object"] = (
            sum(self.object_loss(out_s[i]["aligned"], out_t[j]["aligned"]) for i, j in pairs) / 2
        )
        losses["image"] = sum(self.image_loss(out_s[i]["pooled"], out_t[j]["pooled"]) for i, j in pairs) / 2
        losses["cross_modal"] = sum(self.cross_modal_loss(o) for o in out_s) / 2
        losses["geo"] = (
            sum(self.geo_loss(out_s[i]["aligned"], out_t[j]["aligned"], region) for i, j in pairs) / 2
        )
        if self.proto_momentum is not None and self.training:
            feats = torch.cat([o["aligned"] for o in out_t])  # (2B, N, D)
            self.update_prototypes(feats, region.repeat(2), self.proto_momentum)
        out = {f"loss_{k}": v for k, v in losses.items()}
        out["loss"] = sum(self.weights[k] * v for k, v in losses.items())
        return out


def build_pretrainer(name: str, **overrides) -> SkySensePretrainer:
    """Registry preset ``name`` + pretrainer; overrides naming ``SkySenseConfig`` fields go to the model."""
    fields = {f.name for f in dataclasses.fields(SkySenseConfig)}
    model_kw = {k: v for k, v in overrides.items() if k in fields}
    loss_kw = {k: v for k, v in overrides.items() if k not in fields}
    model = create(name, **model_kw)
    if not isinstance(model, SkySense):
        raise TypeError(f"{name!r} is not a SkySense preset")
    return SkySensePretrainer(model, **loss_kw)


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


def _make_factory(name: str):
    def factory(**overrides) -> SkySense:
        return SkySense(dataclasses.replace(_PRESETS[name], **overrides))

    factory.__name__ = factory.__qualname__ = name
    return factory


for _name in _PRESETS:
    register_model(_name)(_make_factory(_name))

"""SkySense pretraining: a student ``SkySense``, an EMA teacher, Multi-Granularity Contrastive
Learning (pixel, object, image, cross-modal) and Geo-Context Prototype learning.

Two views of every sample are made from the batch (``augment_views``: a dihedral transform per
sample, identical over bands and dates; per-band gain and noise; random date dropout). Losses:

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

The teacher is a second build of the student's config (never a deepcopy), so under
``deepspeed.zero.Init`` both networks are partitioned from the start; ``sync_teacher()`` copies
the student into it (at construction and after ``init_weights``). ``after_step(step, total)``
moves it by EMA with momentum cosine from ``teacher_momentum`` to ``teacher_momentum_final``
(``models.base.ema_``: on ZeRO-3 partitions, fp32 accumulation for bf16).

    pre = models.registry.create_pretrainer("skysense_tiny", proj_dim=32, teacher_momentum=0.99)
    out = pre(batch)   # batch keys: s2 (B,T,10,H,W) float, s2_doy (B,T) int, s2_valid (B,T) bool,
                       #   s1 (B,T1,2,H,W) float, s1_doy (B,T1) int, s1_valid (B,T1) bool,
                       #   lonlat (B,2) float in DEGREES (lon, lat; optional: region 0 if absent)
    out["loss"].backward(); optimizer.step(); optimizer.zero_grad(); pre.after_step(step, total)

``out`` holds ``loss`` and every component ``loss_*`` (scalars).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.base import Gather, cosine_momentum, ema_, gathered, has_storage
from models.layers import Mlp
from models.losses import info_nce, sinkhorn, soft_cross_entropy
from models.skysense import SkySense, SkySenseConfig, region_index

__all__ = [
    "SkySensePretrainConfig",
    "SkySensePretrainer",
    "augment_views",
    "dihedral_table",
]

_INPUT_KEYS = ("s2", "s2_doy", "s2_valid", "s1", "s1_doy", "s1_valid")


# ---------------------------------------------------------------------------------------------
# views
# ---------------------------------------------------------------------------------------------


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
# the pretrainer
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkySensePretrainConfig:
    """The pretrainer's settings; ``encoder`` is the student's (and teacher's) architecture."""

    encoder: SkySenseConfig = dataclasses.field(default_factory=SkySenseConfig)
    #: projection MLPs into the contrastive spaces (hidden None: 2 × the fusion width)
    proj_dim: int = 128
    proj_hidden: int | None = None
    #: object level: learnable cluster centres
    num_clusters: int = 8
    temperature: float = 0.2  #: InfoNCE
    cluster_temperature: float = 0.1  #: swapped prediction
    sinkhorn_iters: int = 3
    sinkhorn_eps: float = 0.05
    #: locations per dense InfoNCE (bounds its N² logits)
    pixel_samples: int = 1024
    #: view augmentations
    gain_jitter: float = 0.1
    noise_std: float = 0.05
    date_drop: float = 0.25
    #: loss weights
    w_pixel: float = 1.0
    w_object: float = 1.0
    w_image: float = 1.0
    w_cross_modal: float = 1.0
    w_geo: float = 1.0
    #: None: prototypes learn by gradient; m in [0, 1): paper-style EMA from balanced assignments
    proto_momentum: float | None = None
    #: EMA teacher momentum, cosine from ``teacher_momentum`` at step 0 to the final one at the end
    teacher_momentum: float = 0.996
    teacher_momentum_final: float = 1.0

    def __post_init__(self) -> None:
        if self.num_clusters < 2:
            raise ValueError(f"num_clusters must be >= 2, got {self.num_clusters}")
        if self.pixel_samples < 2:
            raise ValueError(f"pixel_samples must be >= 2, got {self.pixel_samples}")
        if self.proto_momentum is not None and not 0.0 <= self.proto_momentum < 1.0:
            raise ValueError(f"proto_momentum must be in [0, 1) or None, got {self.proto_momentum}")
        for name in ("teacher_momentum", "teacher_momentum_final"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("temperature", "cluster_temperature", "sinkhorn_eps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


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

    def init_weights(self, gather: Gather = contextlib.nullcontext) -> None:
        """Linear layers as PyTorch builds them (kaiming-uniform), centres N(0, 0.02); one Linear
        at a time inside ``gather(its parameters)``."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                with gather(list(m.parameters(recurse=False))):
                    if has_storage(m.weight):
                        m.reset_parameters()
        gathered(gather, nn.init.normal_, self.centres, std=0.02)


def _rng_devices() -> list[int]:
    return [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []


class SkySensePretrainer(nn.Module):
    """Student ``SkySense`` + EMA teacher; Multi-Granularity Contrastive + Geo-Context Prototype losses.

    ``forward(batch)`` -> dict with ``loss`` and ``loss_pixel``, ``loss_object``, ``loss_image``,
    ``loss_cross_modal``, ``loss_geo`` (all scalars). Call ``after_step(step, total)`` after every
    optimizer step. The teacher and its heads never require gradients and always run in eval mode.
    """

    def __init__(self, config: SkySensePretrainConfig) -> None:
        super().__init__()
        if not isinstance(config, SkySensePretrainConfig):
            raise TypeError(f"SkySensePretrainer takes a SkySensePretrainConfig, got {type(config).__name__}")
        self.config = c = config
        self.student = SkySense(c.encoder)
        dim = self.student.embed_dim
        self.heads = _ProjectionHeads(dim, c.proj_hidden or 2 * dim, c.proj_dim, c.num_clusters)
        # The teacher is built like the student (partitioned from the start under zero.Init), on a
        # forked RNG so the student's values and the forward's random draws do not depend on it.
        with torch.random.fork_rng(devices=_rng_devices()):
            self.teacher = SkySense(c.encoder).requires_grad_(False)
            self.teacher_heads = _ProjectionHeads(dim, c.proj_hidden or 2 * dim, c.proj_dim, c.num_clusters)
        self.teacher_heads.requires_grad_(False)
        if c.proto_momentum is not None:  # the paper's variant: prototypes move by EMA, not by gradient
            self.student.geo.prototypes.requires_grad_(False)
        self.teacher.eval()
        self.teacher_heads.eval()
        self.sync_teacher()

    @classmethod
    def from_encoder_config(cls, encoder: SkySenseConfig, **options) -> SkySensePretrainer:
        """``cls(SkySensePretrainConfig(encoder=encoder, **options))``; TypeError names an unknown option."""
        fields = {f.name for f in dataclasses.fields(SkySensePretrainConfig)} - {"encoder"}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise TypeError(f"unknown SkySense pretrainer option(s) {unknown}; options: {sorted(fields)}")
        return cls(SkySensePretrainConfig(encoder=encoder, **options))

    def train(self, mode: bool = True) -> SkySensePretrainer:
        super().train(mode)
        self.teacher.eval()
        self.teacher_heads.eval()
        return self

    # -- protocol ---------------------------------------------------------------------------

    def init_weights(self, gather: Gather = contextlib.nullcontext) -> None:
        """Student and heads afresh from the global RNG (one submodule at a time inside
        ``gather``), then the teacher copied from them: on ZeRO-3 partitions, so the teacher is
        never gathered (``ema_`` with momentum 0 copies each rank's slice)."""
        self.student.init_weights(gather)
        self.heads.init_weights(gather)
        self.sync_teacher()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every block stack of the student (and the teacher, where it is
        a no-op: the teacher runs without gradients)."""
        self.student.set_grad_checkpointing(enable)
        self.teacher.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The student's tokens and embeddings (``student.``-prefixed) and the cluster centres."""
        return {f"student.{n}" for n in self.student.no_weight_decay()} | {"heads.centres"}

    def forward_features(self, batch: dict[str, torch.Tensor]) -> dict:
        """The student's features (``SkySense.forward_features``)."""
        return self.student.forward_features(batch)

    def after_step(self, step: int, total_steps: int) -> None:
        """EMA teacher step with momentum ``cosine_momentum(step, total_steps, teacher_momentum,
        teacher_momentum_final)``; ``step`` is the 0-based optimizer step just taken."""
        c = self.config
        self.momentum_update(cosine_momentum(step, total_steps, c.teacher_momentum, c.teacher_momentum_final))

    # -- teacher ----------------------------------------------------------------------------

    def _pairs(self):
        return ((self.teacher, self.student), (self.teacher_heads, self.heads))

    @torch.no_grad()
    def momentum_update(self, m: float) -> None:
        """teacher = m · teacher + (1 − m) · student, for the encoder and the projection heads
        (``models.base.ema_``: ZeRO-3 partitions, fp32 accumulation of low-precision teachers)."""
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {m}")
        for t_mod, s_mod in self._pairs():
            ema_(t_mod.parameters(), s_mod.parameters(), m)
            for t_b, s_b in zip(t_mod.buffers(), s_mod.buffers()):
                t_b.copy_(s_b)

    @torch.no_grad()
    def sync_teacher(self) -> None:
        """teacher = student exactly (momentum 0), for the encoder and the projection heads."""
        self.momentum_update(0.0)

    # -- losses -----------------------------------------------------------------------------

    def _sample(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.randperm(n, device=device)[: self.config.pixel_samples]

    def pixel_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Student (B, N, D) vs teacher (B, N, D) features on the same ground grid."""
        q = self.heads.pixel(s).flatten(0, 1)  # (B*N, P)
        k = self.teacher_heads.pixel(t).flatten(0, 1)
        idx = self._sample(q.shape[0], q.device)
        return info_nce(q[idx], k[idx], self.config.temperature)

    def object_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Regions from balanced clustering of the teacher's features, contrasted across views."""
        b, n, _ = s.shape
        qs = self.heads.object(s)  # (B, N, P)
        kt = self.teacher_heads.object(t)
        centres = F.normalize(self.heads.centres.float(), dim=-1)  # (K, P)
        scores = F.normalize(kt.float(), dim=-1).flatten(0, 1) @ centres.detach().T  # (B*N, K)
        assign = sinkhorn(scores, self.config.sinkhorn_iters, self.config.sinkhorn_eps).view(
            b, n, -1
        )  # (B, N, K)
        mass = assign.sum(dim=1)  # (B, K)
        obj_s = torch.einsum("bnk,bnp->bkp", assign, qs.float()) / mass[..., None].clamp(min=1e-6)
        obj_t = torch.einsum("bnk,bnp->bkp", assign, kt.float()) / mass[..., None].clamp(min=1e-6)
        contrast = info_nce(
            obj_s.flatten(0, 1),
            obj_t.flatten(0, 1),
            self.config.temperature,
            weight=(mass >= 0.5).flatten().float(),
        )
        pred = F.normalize(qs.float(), dim=-1).flatten(0, 1) @ centres.T / self.config.cluster_temperature
        swapped = soft_cross_entropy(assign.flatten(0, 1), pred)
        return contrast + swapped

    def image_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Pooled student (B, D) vs pooled teacher (B, D)."""
        return info_nce(self.heads.image(s), self.teacher_heads.image(t), self.config.temperature)

    def cross_modal_loss(self, feats: dict) -> torch.Tensor:
        """S2 branch vs S1 branch at the same location, both directions; locations lacking a modality skip."""
        q = self.heads.s2(feats["s2_tokens"]).flatten(0, 1)  # (B*N, P)
        k = self.heads.s1(feats["s1_tokens"]).flatten(0, 1)
        both = (feats["s2_any"] & feats["s1_any"])[:, None].expand(-1, feats["s2_tokens"].shape[1])
        idx = self._sample(q.shape[0], q.device)
        w = both.flatten()[idx].float()
        return 0.5 * (
            info_nce(q[idx], k[idx], self.config.temperature, w)
            + info_nce(k[idx], q[idx], self.config.temperature, w)
        )

    def geo_loss(self, s: torch.Tensor, t: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        """Prototype learning: student's soft assignment predicts the teacher's balanced one."""
        geo = self.student.geo
        target = sinkhorn(
            geo.logits(t, region, detach=True).flatten(0, 1) * geo.temperature,
            self.config.sinkhorn_iters,
            self.config.sinkhorn_eps,
        )  # (B*N, P)
        return soft_cross_entropy(target, geo.logits(s, region).flatten(0, 1))

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
            self.config.sinkhorn_iters,
            self.config.sinkhorn_eps,
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
        """Two views, student and teacher on each -> ``{"loss", "loss_pixel", "loss_object",
        "loss_image", "loss_cross_modal", "loss_geo"}`` (scalars); see the module docstring."""
        missing = [k for k in _INPUT_KEYS if k not in batch]
        if missing:
            raise KeyError(f"batch lacks {missing}; needs {list(_INPUT_KEYS)} (+ optional lonlat)")
        c, cfg = self.config, self.student.config
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
            view, codes = augment_views(inputs, c.gain_jitter, c.noise_std, c.date_drop)
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
        if self.config.proto_momentum is not None and self.training:
            feats = torch.cat([o["aligned"] for o in out_t])  # (2B, N, D)
            self.update_prototypes(feats, region.repeat(2), self.config.proto_momentum)
        out = {f"loss_{k}": v for k, v in losses.items()}
        weights = {k: getattr(c, f"w_{k}") for k in losses}
        out["loss"] = sum(weights[k] * v for k, v in losses.items())
        return out

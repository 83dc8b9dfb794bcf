"""Typed ingest configuration: yaml presets + ``--set`` overrides resolve to these models.

Invalid values fail before any work, with pydantic's message naming the field.
Credentials never live here: they come from the usual AWS environment variables / profiles.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """The base of every config model (ingest and jobs): unknown keys fail, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(Strict):
    """How to reach object storage (any S3-compatible endpoint) and which URIs are allowed.

    Unset fields fall back to the standard AWS variables (``AWS_ENDPOINT_URL``,
    ``AWS_DEFAULT_REGION``/``AWS_REGION``, ``AWS_ACCESS_KEY_ID``...), as boto/s3fs/GDAL do.
    """

    endpoint_url: str | None = None
    region: str | None = None
    anonymous: bool = False
    requester_pays: bool = False
    #: URI schemes the job may read or write; anything else is rejected with reason ``bad_uri``.
    allowed_schemes: tuple[str, ...] = ("file", "s3")
    #: client-side retries for transient S3 errors (throttling, 5xx, connection resets).
    max_retries: int = Field(default=8, ge=0)


class IngestConfig(Strict):
    """Everything that decides what the ingest writes. Stored in the manifest."""

    #: tile edge in pixels at 10 m; tile origins are multiples of ``tile_px * 10 m`` per UTM zone.
    tile_px: int = Field(default=128, ge=16, le=2048, multiple_of=16)
    #: a work unit covers ``unit_tiles x unit_tiles`` tiles (default 8 x 128 px = one 1024-px COG block),
    #: so each task reads whole COG blocks once and cuts many tiles from them.
    unit_tiles: int = Field(default=8, ge=1, le=64)
    #: temporal grouping of acquisitions into one sample.
    period: Literal["month", "quarter", "year"] = "quarter"
    #: T: maximum acquisitions (slots) per modality per sample.
    max_slots: int = Field(default=4, ge=1, le=64)
    #: a slot is usable if its cloud+shadow fraction (SCL 3, 8, 9, 10) is at most this.
    max_cloud: float = Field(default=0.5, ge=0.0, le=1.0)
    #: a slot is usable if its nodata fraction is at most this.
    max_nodata: float = Field(default=0.1, ge=0.0, le=1.0)
    #: a tile is written only with at least this many usable S2 slots (else rejected: all_cloud / all_nodata).
    min_s2_slots: int = Field(default=1, ge=1)
    #: S1 scenes match a unit if their footprint intersects it and their date lies in the period
    #: widened by this many days on each side.
    s1_window_days: int = Field(default=0, ge=0, le=366)
    #: Ray Data: CPUs per unit task and how many run at once (None: as many as fit).
    num_cpus_per_task: float = Field(default=1.0, gt=0)
    concurrency: int | None = Field(default=None, ge=1)
    #: one Ray task processes the units of one Sentinel-2 tile and period in turn (null), or only those in
    #: one ``group_units x group_units`` square of units, sharing one decoded-block cache: a COG block that
    #: several of them need is decoded once per group (within the budget below).
    group_units: int | None = Field(default=None, ge=1, le=64)
    #: memory for that cache per task (MiB; 0 = no cache, one windowed read per band and unit).
    block_cache_mb: int = Field(default=1024, ge=0)
    #: 0: one shard file per unit. > 0: a group's rows go into shard files cut once their encoded size
    #: reaches this many MiB (so files are this size plus at most one unit's rows), named after their first
    #: unit: fewer, larger files for object storage.
    shard_mb: float = Field(default=0.0, ge=0.0, le=4096.0)
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _slots(self):
        if self.min_s2_slots > self.max_slots:
            raise ValueError(f"min_s2_slots ({self.min_s2_slots}) must be <= max_slots ({self.max_slots})")
        return self

    @property
    def tile_m(self) -> float:
        return self.tile_px * 10.0

    @property
    def unit_m(self) -> float:
        return self.tile_px * self.unit_tiles * 10.0

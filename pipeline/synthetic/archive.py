"""The archive: every tile's land cover, S2 and S1 scenes, truth and ItemCollection, written in one go.

``python -m pipeline.synthetic --output <uri> [--scenes N --s1-scenes M --seed S --size-px P --epsg E ...]``
(:func:`main`) or :func:`make_archive` write, under ``<uri>`` (a local path or ``s3://bucket/prefix``;
S3 output is written to a local temporary directory first and then uploaded through
:mod:`pipeline.storage`, honouring the usual ``AWS_*`` variables incl. ``AWS_ENDPOINT_URL``):

``sentinel-2-c1-l2a/<zone>/<band>/<sq>/<yyyy>/<m>/<item id>/B01.tif … B12.tif, B8A.tif, SCL.tif``
    per-band COGs in the Earth Search v1 layout: UTM CRS, 10/20/60 m grids (from :data:`pipeline.sensors.S2`),
    uint16, nodata 0, DEFLATE + predictor 2, internal tiles (1024 px for full-size scenes, 512/256 for small
    ones), overviews. SCL is uint8 at 20 m. Harmonised scenes (``earthsearch:boa_offset_applied: true``) live
    under ``sentinel-2-l2a/`` as in Earth Search v1.
``sentinel-1-rtc/<yyyy>/<m>/<item id>/measurement/{vv,vh}.tif``
    Sentinel-1 RTC gamma0, float32 linear power, 10 m, nodata -32768 (declared in the GeoTIFF and in
    ``raster:bands``), DEFLATE + predictor 3. Even S1 scenes sit in the S2 zone on a grid shifted by
    (+3 m, -4 m), odd ones in the neighbouring UTM zone (and say ``proj:code`` instead of ``proj:epsg``),
    so the ingest's co-registration is exercised.
``truth/<tile>_landcover.tif`` + ``truth/classes.json``
    the land-cover map every scene of a tile was rendered from (uint8, 10 m, the tile's grid): the ground
    truth for a labelled synthetic benchmark.
``items.json``
    a STAC 1.0 ItemCollection (GeoJSON FeatureCollection) with absolute hrefs.

Radiometry cycles per S2 scene: ``"offset"`` (baseline 05.10, DN carry +1000, no flag), ``"legacy"``
(baseline 03.01, no offset), ``"harmonised"`` (baseline 05.10, ``earthsearch:boa_offset_applied: true``,
DN already without the offset). Same seed and arguments give byte-identical files (GDAL writes no
timestamps; item times derive from the seed), with one process or many.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import storage as st
from pipeline.config import StorageConfig
from pipeline.sensors import S1, S2, S2_SCL, find_asset_key
from pipeline.synthetic.cog import auto_blocksize, write_cog
from pipeline.synthetic.items import BOA_MODES, iso_time, item_collection, s1_item_id
from pipeline.synthetic.render import S1_NODATA, render_s1, render_s2
from pipeline.synthetic.scenes import write_json, write_s1_scene, write_s2_scene
from pipeline.synthetic.surface import LANDCOVER_CLASSES, SCL_OF, make_landcover
from pipeline.synthetic.tile import TileGrid, default_tile, s1_grid, seeded_rng

UTC = _dt.UTC


@dataclass(frozen=True)
class SceneInfo:
    """One written scene: enough for tests to know what to expect without re-reading the items."""

    item_id: str
    sensor: str  # "s2" | "s1"
    tile: str  # the S2 tile it was rendered from
    epsg: int
    datetime: str  # ISO, UTC
    hrefs: Mapping[str, str]  # canonical band name ("B01".."B12", "B8A", "SCL" / "VV", "VH") -> URI
    boa: str | None = None  # S2: one of BOA_MODES
    cloud_fraction: float | None = None  # S2: fraction of valid SCL pixels in 3, 8, 9, 10
    nodata_fraction: float | None = None  # fraction of pixels that are nodata
    edge: str = "none"


@dataclass(frozen=True)
class ArchiveInfo:
    """What :func:`make_archive` wrote. URIs are absolute paths (local output) or ``s3://`` URIs."""

    root: str
    items: str  # the ItemCollection (items.json)
    scenes: tuple[SceneInfo, ...]
    tiles: tuple[TileGrid, ...]
    truth: Mapping[str, str]  # tile name -> land-cover COG (uint8, 10 m, tile grid)
    classes: str  # classes.json: land-cover ids, names, colours
    seed: int
    storage: StorageConfig = field(default_factory=StorageConfig)

    @property
    def s2(self) -> tuple[SceneInfo, ...]:
        return tuple(s for s in self.scenes if s.sensor == "s2")

    @property
    def s1(self) -> tuple[SceneInfo, ...]:
        return tuple(s for s in self.scenes if s.sensor == "s1")

    def scene(self, item_id: str) -> SceneInfo:
        for s in self.scenes:
            if s.item_id == item_id:
                return s
        raise KeyError(item_id)

    def item_collection(self) -> dict:
        """The ItemCollection as a dict (read back through :mod:`pipeline.storage`, so s3:// works too)."""
        return json.loads(st.read_bytes(self.items, self.storage))


def scene_dates(n: int, year: int, seed: int) -> list[_dt.datetime]:
    """``n`` acquisition times spread over ``year`` (one per ~365/n days, a few days of seeded jitter)."""
    r = seeded_rng(seed, "dates", year, n)
    start = _dt.datetime(year, 1, 1, 10, 0, 0, tzinfo=UTC)
    out = []
    for i in range(n):
        d = (i + 0.5) * 365.0 / n + float(r.uniform(-0.2, 0.2)) * min(365.0 / n, 20.0)
        out.append(start + _dt.timedelta(days=int(d), seconds=int(r.integers(0, 1800))))
    return sorted(out)


#: Cloud fractions cycled over scenes (a clear one, a partly cloudy one, a fairly cloudy one, ...).
CLOUD_FRACTIONS = (0.05, 0.25, 0.12, 0.45, 0.0, 0.3)
#: Swath-edge wedges cycled over S2 scenes.
EDGES = ("west", "none", "east")


def make_archive(
    output: str | os.PathLike,
    *,
    scenes: int = 3,
    s1_scenes: int = 2,
    seed: int = 0,
    size_px: int = 1536,
    epsg: int | Sequence[int] = 32633,
    blocksize: int | None = None,
    year: int = 2022,
    cloud_fractions: Sequence[float] = CLOUD_FRACTIONS,
    boa_modes: Sequence[str] = BOA_MODES,
    edges: Sequence[str] = EDGES,
    storage: StorageConfig | None = None,
    workers: int = 1,
) -> ArchiveInfo:
    """Write a synthetic archive under ``output`` (local path or ``s3://bucket/prefix``); see module doc.

    ``scenes`` / ``s1_scenes`` are per tile; one tile per ``epsg`` (:func:`default_tile`). ``size_px``
    (10 m pixels per side) must be a multiple of 6. S2 scene ``i`` of a tile gets cloud fraction
    ``cloud_fractions[i % len]``, radiometry ``boa_modes[i % len]``, swath edge ``edges[i % len]``; dates
    spread over ``year``. S1 scene ``j`` is dated 2 days after S2 scene ``j % scenes``; even ``j``: same
    zone with a grid shifted by (+3 m, -4 m) and ~5 % larger; odd ``j``: neighbouring UTM zone
    (``proj:code``). ``workers`` > 1 renders scenes in that many processes (same bytes as serial).
    Returns an :class:`ArchiveInfo`.
    """
    if size_px % 6 or size_px < 12:
        raise ValueError(f"size_px must be a positive multiple of 6 (20 m and 60 m grids), got {size_px}")
    if scenes < 0 or s1_scenes < 0:
        raise ValueError("scenes and s1_scenes must be >= 0")
    for m in boa_modes:
        if m not in BOA_MODES:
            raise ValueError(f"boa mode must be one of {BOA_MODES}, got {m!r}")
    for e in edges:
        if e not in EDGES:
            raise ValueError(f"edge must be one of {EDGES}, got {e!r}")
    epsgs = [epsg] if isinstance(epsg, int) else list(epsg)
    storage = storage or StorageConfig()
    root_uri = st.output_root(output, storage)
    blocksize = blocksize or auto_blocksize(size_px)
    with st.staged(root_uri, storage) as local_root:
        tiles, jobs, truth = [], [], {}
        for e in epsgs:
            tile = default_tile(e, size_px)
            tiles.append(tile)
            lc = make_landcover(tile, seed)
            tpath = local_root / "truth" / f"{tile.name}_landcover.tif"
            write_cog(tpath, lc, tile.transform(10), tile.crs, 0, blocksize)
            truth[tile.name] = st.join(root_uri, f"truth/{tile.name}_landcover.tif")
            dates = scene_dates(scenes, year, seed)
            work = _TileWork(tile, lc, seed, local_root, root_uri, blocksize)
            for i, when in enumerate(dates):
                jobs.append(
                    (
                        _s2_job,
                        dict(
                            w=work,
                            i=i,
                            when=when,
                            boa=boa_modes[i % len(boa_modes)],
                            edge=edges[i % len(edges)],
                            cloud_frac=float(cloud_fractions[i % len(cloud_fractions)]),
                        ),
                    )
                )
            for j in range(s1_scenes):
                base = dates[j % len(dates)] if dates else _dt.datetime(year, 6, 1, 5, tzinfo=UTC)
                when = base.replace(hour=5, minute=1, second=2)
                when += _dt.timedelta(days=2 + 12 * (j // max(len(dates), 1)))
                jobs.append((_s1_job, dict(w=work, j=j, when=when)))
        if workers > 1 and len(jobs) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("spawn")  # safe beside threads (Ray, s3fs)
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = [pool.submit(fn, **kw) for fn, kw in jobs]
                results = [f.result() for f in futures]
        else:
            results = [fn(**kw) for fn, kw in jobs]
        items = [it for it, _ in results]
        infos = [info for _, info in results]
        classes = {
            "classes": [
                {"id": k, "name": v, "scl_when_clear": SCL_OF.get(v, 4)} for k, v in LANDCOVER_CLASSES.items()
            ],
            "nodata": 0,
            "source": "pipeline.synthetic.make_landcover",
            "seed": seed,
        }
        write_json(classes, local_root / "truth" / "classes.json")
        write_json(item_collection(items), local_root / "items.json")
    return ArchiveInfo(
        root=root_uri,
        items=st.join(root_uri, "items.json"),
        scenes=tuple(infos),
        tiles=tuple(tiles),
        truth=truth,
        classes=st.join(root_uri, "truth/classes.json"),
        seed=seed,
        storage=storage,
    )


@dataclass(frozen=True)
class _TileWork:
    """What every scene job of one tile shares (picklable: jobs may run in other processes)."""

    tile: TileGrid
    lc: np.ndarray  # (H, W) uint8 land cover on the tile's 10 m grid
    seed: int
    local_root: Path  # where files are written (the output itself, or its staging directory)
    root_uri: str  # where they will live (the hrefs)
    blocksize: int


def _s2_job(
    *,
    w: _TileWork,
    i: int,
    when: _dt.datetime,
    boa: str,
    edge: str,
    cloud_frac: float,
) -> tuple[dict, SceneInfo]:
    """Render and write S2 scene ``i`` of the tile; returns (item, info). Top level: runs in processes."""
    tile = w.tile
    rend = render_s2(
        tile, w.lc, when, seed=w.seed, scene_key=f"{i}", cloud_frac=cloud_frac, edge=edge, boa=boa
    )
    item = write_s2_scene(
        w.local_root,
        w.root_uri,
        tile,
        when,
        rend.bands_dn,
        rend.scl,
        boa=boa,
        edge=edge,
        blocksize=w.blocksize,
        platform="sentinel-2a" if i % 2 == 0 else "sentinel-2b",
    )
    valid = ~rend.nodata20
    cloud = float((rend.cloud20 | rend.shadow20)[valid].mean()) if valid.any() else 0.0
    info = SceneInfo(
        item_id=item["id"],
        sensor="s2",
        tile=tile.name,
        epsg=tile.epsg,
        datetime=iso_time(when),
        hrefs=_hrefs_of(item, S2.bands + (S2_SCL,)),
        boa=boa,
        cloud_fraction=cloud,
        nodata_fraction=float(rend.nodata20.mean()),
        edge=edge,
    )
    return item, info


def _s1_job(
    *,
    w: _TileWork,
    j: int,
    when: _dt.datetime,
) -> tuple[dict, SceneInfo]:
    """Render and write S1 scene ``j`` over the tile (grid from :func:`~pipeline.synthetic.tile.s1_grid`);
    returns (item, info)."""
    tile = w.tile
    s1_epsg, tr, shp = s1_grid(tile, j)
    edge = "east" if j % 2 == 0 else "west"
    vv, vh, _ = render_s1(
        w.lc, tile, s1_epsg, tr, shp, when, seed=w.seed, scene_key=f"{tile.name}/{j}", edge=edge
    )
    platform = "sentinel-1a" if j % 2 == 0 else "sentinel-1b"
    item = write_s1_scene(
        w.local_root,
        w.root_uri,
        s1_epsg,
        tr,
        when,
        vv,
        vh,
        blocksize=w.blocksize,
        orbit="descending" if j % 2 == 0 else "ascending",
        proj_code=j % 2 == 1,
        item_id=s1_item_id(when, platform, 40000 + 100 * j + when.timetuple().tm_yday),
        platform=platform,
    )
    info = SceneInfo(
        item_id=item["id"],
        sensor="s1",
        tile=tile.name,
        epsg=s1_epsg,
        datetime=iso_time(when),
        hrefs=_hrefs_of(item, S1.bands),
        nodata_fraction=float((vv == S1_NODATA).mean()),
        edge=edge,
    )
    return item, info


def _hrefs_of(item: dict, bands) -> dict[str, str]:
    out = {}
    for b in bands:
        k = find_asset_key(b, item["assets"])
        if k is not None:
            out[b.name] = item["assets"][k]["href"]
    return out


def main(argv: Sequence[str] | None = None, _print: Callable[[str], None] = print) -> ArchiveInfo:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.synthetic",
        description="Write a synthetic Sentinel-1/2 archive (COGs + STAC ItemCollection + land-cover truth).",
    )
    ap.add_argument("--output", required=True, help="local path or s3://bucket/prefix")
    ap.add_argument("--scenes", type=int, default=3, help="S2 scenes per tile (default 3)")
    ap.add_argument("--s1-scenes", type=int, default=2, help="S1 RTC scenes per tile (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size-px", type=int, default=1536, help="tile edge in 10 m pixels, multiple of 6")
    ap.add_argument(
        "--epsg",
        type=int,
        action="append",
        help="UTM EPSG of a tile; repeat for several (default 32633; 32720 is a southern one)",
    )
    ap.add_argument("--blocksize", type=int, default=None, help="COG block edge (default: by size)")
    ap.add_argument("--year", type=int, default=2022)
    ap.add_argument("--workers", type=int, default=1, help="processes rendering scenes in parallel")
    args = ap.parse_args(argv)
    info = make_archive(
        args.output,
        scenes=args.scenes,
        s1_scenes=args.s1_scenes,
        seed=args.seed,
        size_px=args.size_px,
        epsg=args.epsg or [32633],
        blocksize=args.blocksize,
        year=args.year,
        workers=args.workers,
    )
    _print(f"wrote {len(info.s2)} S2 + {len(info.s1)} S1 scenes over {len(info.tiles)} tile(s)")
    _print(f"items: {info.items}")
    for t, p in info.truth.items():
        _print(f"truth {t}: {p}")
    return info

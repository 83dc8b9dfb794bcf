"""A synthetic Sentinel-1/2 archive that looks like the real ones, plus known-pattern and bad inputs,
and small shards for tests and benchmarks.

``python -m pipeline.synthetic --output <uri> [--scenes N --s1-scenes M --seed S --size-px P --epsg E ...]``
writes per-band S2 L2A COGs (Earth Search v1 layout), S1 RTC COGs (Planetary Computer layout), the
land-cover truth and a STAC ItemCollection under a local path or ``s3://`` prefix; same seed and
arguments, same bytes. The modules, one concern each, in the order they build on each other:

* :mod:`~pipeline.synthetic.tile` — the S2 tile grid, the S1 grids over it, seeded random streams;
* :mod:`~pipeline.synthetic.surface` — land cover, class spectra and backscatter, phenology, texture;
* :mod:`~pipeline.synthetic.render` — one acquisition: clouds, shadows, SCL, swath edges, speckle;
* :mod:`~pipeline.synthetic.cog` — the COG writer;
* :mod:`~pipeline.synthetic.items` — STAC items in the Earth Search / Planetary Computer layouts;
* :mod:`~pipeline.synthetic.scenes` — one scene's COGs + item, written through :mod:`pipeline.storage`;
* :mod:`~pipeline.synthetic.archive` — the whole archive (:func:`make_archive`) and the CLI;
* :mod:`~pipeline.synthetic.patterns` — known-pattern scenes for pixel-exact placement tests;
* :mod:`~pipeline.synthetic.faults` — fault injection: every bad input with the reject reason it gets;
* :mod:`~pipeline.synthetic.samples` — contract-conforming shards without an archive (:func:`make_shards`).

All I/O to the output root (local or ``s3://``) goes through :mod:`pipeline.storage` (``output_root``,
``staged``). The names below are re-exported so callers import them from ``pipeline.synthetic``.
"""

from pipeline.sensors import S2  # the band table the scenes are written in; tests read band names here
from pipeline.synthetic.archive import (
    CLOUD_FRACTIONS,
    EDGES,
    ArchiveInfo,
    SceneInfo,
    main,
    make_archive,
    scene_dates,
)
from pipeline.synthetic.cog import COG_MIME, DEFLATE_LEVEL, auto_blocksize, cog_profile, write_cog
from pipeline.synthetic.faults import (
    BadInputs,
    corrupt_cog,
    item_missing_asset,
    item_without_crs,
    make_bad_inputs,
    rebase_path,
    truncate_cog,
    write_all_cloud_scene,
    write_all_nodata_scene,
    write_malformed_item,
    write_uniform_scene,
)
from pipeline.synthetic.items import BOA_MODES, item_collection, s1_item_id, s2_item_id, s2_scene_dir
from pipeline.synthetic.patterns import (
    pattern_ramp,
    pattern_s1_power,
    pattern_value,
    write_pattern_s1_scene,
    write_pattern_scene,
)
from pipeline.synthetic.render import S1_NODATA, S2Render, render_s1, render_s2
from pipeline.synthetic.samples import make_rows, make_shards, rows_to_table
from pipeline.synthetic.scenes import write_s1_scene, write_s2_scene
from pipeline.synthetic.surface import CLASS_ID, LANDCOVER_CLASSES, green_fraction, make_landcover
from pipeline.synthetic.tile import DEFAULT_TILES, TileGrid, default_tile

__all__ = [
    "BOA_MODES",
    "CLASS_ID",
    "CLOUD_FRACTIONS",
    "COG_MIME",
    "DEFAULT_TILES",
    "DEFLATE_LEVEL",
    "EDGES",
    "LANDCOVER_CLASSES",
    "S1_NODATA",
    "S2",
    "ArchiveInfo",
    "BadInputs",
    "S2Render",
    "SceneInfo",
    "TileGrid",
    "auto_blocksize",
    "cog_profile",
    "corrupt_cog",
    "default_tile",
    "green_fraction",
    "item_collection",
    "item_missing_asset",
    "item_without_crs",
    "main",
    "make_archive",
    "make_bad_inputs",
    "make_landcover",
    "make_rows",
    "make_shards",
    "pattern_ramp",
    "pattern_s1_power",
    "pattern_value",
    "rebase_path",
    "render_s1",
    "render_s2",
    "rows_to_table",
    "s1_item_id",
    "s2_item_id",
    "s2_scene_dir",
    "scene_dates",
    "truncate_cog",
    "write_all_cloud_scene",
    "write_all_nodata_scene",
    "write_cog",
    "write_malformed_item",
    "write_pattern_s1_scene",
    "write_pattern_scene",
    "write_s1_scene",
    "write_s2_scene",
    "write_uniform_scene",
]

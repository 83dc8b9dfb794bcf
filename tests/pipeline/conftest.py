"""Session fixtures for the ingest tests: a small synthetic archive, a known-pattern scene and bad inputs.

Each is written once per test run into a session temp dir (local paths; tests that need S3 upload these
or call :mod:`pipeline.synthetic` with an ``s3://`` output themselves).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest

from pipeline import synthetic

#: Fixture archive: one tile (EPSG:32633, 33TXM), 1026 x 1026 px at 10 m (10.26 km), 256-px COG blocks.
ARCHIVE_KW = dict(scenes=3, s1_scenes=2, seed=7, size_px=1026, epsg=32633)


@pytest.fixture(scope="session")
def synthetic_archive(tmp_path_factory) -> synthetic.ArchiveInfo:
    """3 S2 scenes (radiometry offset / legacy / harmonised; west wedge / none / east wedge; dates ~Mar, ~Jul,
    ~Nov 2022) + 2 S1 RTC scenes (same zone, grid shifted by (+3 m, -4 m); neighbouring zone 32634 with
    proj:code) of one tile. ``info.items``: the ItemCollection path; ``info.truth["33TXM"]``: land-cover COG.
    """
    return synthetic.make_archive(tmp_path_factory.mktemp("synthetic_archive"), **ARCHIVE_KW)


@dataclass(frozen=True)
class PatternScenes:
    root: str
    items: str  # ItemCollection: the S2 pattern scene + the two S1 pattern scenes
    s2: dict  # STAC item of the S2 pattern scene (boa "harmonised": DN = pattern_value / round(pattern_ramp))
    s1_same_zone: dict
    s1_next_zone: dict
    x0: float  # the pattern tile's top-left corner (EPSG:32633)
    y0: float


@pytest.fixture(scope="session")
def synthetic_pattern(tmp_path_factory) -> PatternScenes:
    """Known-pattern scenes for pixel-exact placement / co-registration tests (see
    :func:`pipeline.synthetic.write_pattern_scene`, :func:`~pipeline.synthetic.write_pattern_s1_scene`):
    S2 on the default 33TXM origin (699960, 5100000), 1032 px, SCL clear except a cloud box rows 100-200,
    cols 100-300; S1 pattern scenes two days later in the same zone and the next one.
    """
    import json
    from pathlib import Path

    root = tmp_path_factory.mktemp("synthetic_pattern")
    s2 = synthetic.write_pattern_scene(root, size_px=1032, cloud_box=(100, 100, 200, 300), items_name=None)
    when = dt.datetime(2022, 6, 17, 5, 1, 2, tzinfo=dt.UTC)
    s1a = synthetic.write_pattern_s1_scene(root, size_px=1032, when=when, items_name=None)
    s1b = synthetic.write_pattern_s1_scene(
        root, size_px=1032, when=when + dt.timedelta(days=1), neighbour_zone=True, items_name=None
    )
    items = Path(root) / "items.json"
    items.write_text(json.dumps(synthetic.item_collection([s2, s1a, s1b]), indent=1))
    tile = synthetic.default_tile(32633, 1032)
    return PatternScenes(str(root), str(items), s2, s1a, s1b, tile.x0, tile.y0)


@pytest.fixture(scope="session")
def synthetic_bad_inputs(tmp_path_factory) -> synthetic.BadInputs:
    """One good scene and one of every bad input (see :func:`pipeline.synthetic.make_bad_inputs`)."""
    return synthetic.make_bad_inputs(tmp_path_factory.mktemp("synthetic_bad"), seed=3, size_px=516)

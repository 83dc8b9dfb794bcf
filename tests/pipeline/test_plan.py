"""Planner: unit alignment, tiles covered, S2 in-period only, S1 by footprint and date window, determinism,
JSON round trip, and agreement with a brute-force O(units x scenes) reference on random archives."""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest

from pipeline import grid
from pipeline.config import IngestConfig
from pipeline.plan import WorkUnit, count_samples, plan_units
from pipeline.stac import AssetRef, Reject, Scene

UTC = dt.UTC
CFG = IngestConfig(tile_px=16, unit_tiles=2)  # tile_m = 160 m, unit_m = 320 m: small numbers, same math
BASE_X, BASE_Y = 499200.0, 5000000.0  # multiples of 320 m (and so of 160 m)


def day(y: int, m: int, d: int, h: int = 10) -> dt.datetime:
    return dt.datetime(y, m, d, h, tzinfo=UTC)


def scene(
    sid: str,
    when: dt.datetime,
    bounds: tuple[float, float, float, float],
    epsg: int = 32633,
    sensor: str = "s2",
    lonlat: tuple[float, float, float, float] | None = None,
) -> Scene:
    x0, y0, x1, y1 = bounds
    if lonlat is None:
        lonlat = grid.transform_bounds(epsg, 4326, bounds)
    names = ("VV", "VH") if sensor == "s1" else ("B02", "SCL")
    assets = {
        n: AssetRef(
            f"/data/{sid}/{n}.tif",
            (10.0, 0.0, x0, 0.0, -10.0, y1),
            (int((y1 - y0) / 10), int((x1 - x0) / 10)),
            0.0,
        )
        for n in names
    }
    return Scene(sid, sensor, when, epsg, bounds, lonlat, assets, 0, None if sensor == "s1" else 5.0)


def rel(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
    """Bounds relative to the base point (keeps the tables readable)."""
    return (BASE_X + x0, BASE_Y + y0, BASE_X + x1, BASE_Y + y1)


UC0, UR0 = int(BASE_X // 320), int(BASE_Y // 320)
TC0, TR0 = int(BASE_X // 160), int(BASE_Y // 160)


def by_id(units: list[WorkUnit]) -> dict[str, WorkUnit]:
    return {u.unit_id: u for u in units}


# ---------------------------------------------------------------------------------------- S2 grouping


def test_single_scene_units_aligned_and_tiles_covered():
    s = scene("a", day(2024, 2, 1), rel(0, 0, 640, 480))  # 4 x 3 tiles, 2 x 2 units (top row half covered)
    units, rejects = plan_units([s], CFG)
    assert rejects == []
    assert [u.unit_id for u in units] == sorted(
        f"32633_{UC0 + c}_{UR0 + r}_2024Q1" for c in range(2) for r in range(2)
    )
    for u in units:
        assert u.epsg == 32633 and u.period == "2024Q1" and u.s2 == (s,) and u.s1 == ()
        _, uc, ur, _ = grid.parse_sample_id(u.unit_id)
        assert u.bounds == grid.cell_bounds(uc, ur, CFG.unit_m)
        assert all(v % CFG.unit_m == 0 for v in u.bounds)
        for c, r in u.tiles:
            assert grid.unit_of_tile(c, r, CFG.unit_tiles) == (uc, ur)
    top = by_id(units)[f"32633_{UC0}_{UR0 + 1}_2024Q1"]
    assert top.tiles == ((TC0, TR0 + 2), (TC0 + 1, TR0 + 2))  # row TR0 + 3 lies outside the scene
    assert count_samples(units) == 12
    assert top.sample_ids() == [f"32633_{TC0}_{TR0 + 2}_2024Q1", f"32633_{TC0 + 1}_{TR0 + 2}_2024Q1"]


@pytest.mark.parametrize(
    "bounds, n_units, n_tiles",
    [
        (rel(0, 0, 320, 320), 1, 4),  # exactly one unit
        (rel(0, 0, 320.5, 320), 2, 6),  # a sliver over the edge adds a unit and its tiles
        (rel(1, 1, 319, 319), 1, 4),
        (rel(100, 100, 200, 140), 1, 2),  # inside one unit, straddling two tiles
        (rel(-10, -10, 10, 10), 4, 4),  # around a unit corner
        (rel(0, 0, 160, 160), 1, 1),
    ],
)
def test_unaligned_scene_bounds(bounds, n_units, n_tiles):
    units, _ = plan_units([scene("a", day(2024, 5, 5), bounds)], CFG)
    assert len(units) == n_units and count_samples(units) == n_tiles
    for u in units:
        for c, r in u.tiles:
            assert grid.bounds_intersect(grid.cell_bounds(c, r, CFG.tile_m), bounds)


def test_s2_in_period_only_and_sorted():
    b = rel(0, 0, 320, 320)
    q1 = [
        scene("b", day(2024, 3, 31, 23), b),
        scene("a", day(2024, 3, 31, 23), b),
        scene("c", day(2024, 1, 1, 0), b),
    ]
    q2 = [scene("d", day(2024, 4, 1, 0), b)]
    units, _ = plan_units(q2 + q1, CFG)
    u = by_id(units)
    assert [s.scene_id for s in u[f"32633_{UC0}_{UR0}_2024Q1"].s2] == ["c", "a", "b"]  # (datetime, id)
    assert [s.scene_id for s in u[f"32633_{UC0}_{UR0}_2024Q2"].s2] == ["d"]
    units_m, _ = plan_units(q1 + q2, CFG.model_copy(update={"period": "month"}))
    assert [x.period for x in units_m] == ["2024-01", "2024-03", "2024-04"]
    units_y, _ = plan_units(q1 + q2, CFG.model_copy(update={"period": "year"}))
    assert len(units_y) == 1 and len(units_y[0].s2) == 4


def test_overlapping_footprints_merge_and_union_tiles():
    a = scene("a", day(2024, 1, 5), rel(0, 0, 160, 320))  # left column of tiles of one unit
    b = scene("b", day(2024, 1, 3), rel(160, 160, 320, 320))  # top-right tile
    c = scene("c", day(2024, 2, 9), rel(0, 0, 160, 320))
    units, _ = plan_units([a, b, c], CFG)
    assert len(units) == 1
    u = units[0]
    assert [s.scene_id for s in u.s2] == ["b", "a", "c"]
    assert u.tiles == ((TC0, TR0), (TC0, TR0 + 1), (TC0 + 1, TR0 + 1))  # bottom-right tile uncovered


def test_zones_make_separate_units():
    b = rel(0, 0, 320, 320)
    units, _ = plan_units([scene("n", day(2024, 1, 5), b, 32633), scene("s", day(2024, 1, 5), b, 32733)], CFG)
    assert [u.unit_id.split("_")[0] for u in units] == ["32633", "32733"]
    assert [u.s2[0].scene_id for u in units] == ["n", "s"]


def test_unsupported_and_empty():
    odd = scene("x", day(2024, 1, 1), rel(0, 0, 320, 320))
    odd = Scene(
        odd.scene_id, "landsat", odd.datetime, odd.epsg, odd.bounds, odd.lonlat_bbox, odd.assets, 0, None
    )
    units, rejects = plan_units([odd], CFG)
    assert units == [] and rejects == [Reject("scene", "x", "unsupported_sensor", "sensor 'landsat'")]
    assert plan_units([], CFG) == ([], [])
    only_s1, rejects = plan_units([scene("r", day(2024, 1, 1), rel(0, 0, 320, 320), sensor="s1")], CFG)
    assert only_s1 == [] and [(r.level, r.id, r.reason) for r in rejects] == [("scene", "r", "no_scenes")]


# ---------------------------------------------------------------------------------------------- S1


def test_s1_matched_by_footprint():
    s2 = scene("s2", day(2024, 2, 1), rel(0, 0, 640, 320))  # units UC0 and UC0 + 1
    hit = scene("v1", day(2024, 2, 3), rel(330, 10, 340, 20), sensor="s1")  # inside the right unit only
    edge = scene(
        "v2", day(2024, 2, 3), rel(640, 0, 700, 320), sensor="s1"
    )  # touches the scene's east edge only
    both = scene("v3", day(2024, 3, 30), rel(-50, -50, 1000, 1000), sensor="s1")
    units, rejects = plan_units([s2, hit, edge, both], CFG)
    u = by_id(units)
    assert [s.scene_id for s in u[f"32633_{UC0}_{UR0}_2024Q1"].s1] == ["v3"]
    assert [s.scene_id for s in u[f"32633_{UC0 + 1}_{UR0}_2024Q1"].s1] == ["v1", "v3"]
    assert [(r.id, r.reason) for r in rejects] == [("v2", "no_scenes")]


@pytest.mark.parametrize(
    "window, when, periods",
    [
        (0, day(2024, 3, 31, 23), ["2024Q1"]),
        (0, day(2024, 4, 3), []),  # after the period, no window: unmatched (2024Q2 has no S2 unit)
        (5, day(2024, 4, 3), ["2024Q1"]),  # within 5 days after the period end
        (5, day(2024, 4, 6, 0), []),  # end + 5 days is exclusive
        (5, day(2023, 12, 27, 0), ["2024Q1"]),  # start - 5 days is inclusive
        (5, day(2023, 12, 26, 23), []),
        (40, day(2024, 2, 15), ["2024Q1"]),
    ],
)
def test_s1_date_window(window, when, periods):
    s2 = scene("s2", day(2024, 2, 1), rel(0, 0, 320, 320))
    s1 = scene("s1", when, rel(0, 0, 320, 320), sensor="s1")
    cfg = CFG.model_copy(update={"s1_window_days": window})
    units, rejects = plan_units([s2, s1], cfg)
    assert [u.period for u in units if u.s1] == periods
    assert [r.reason for r in rejects] == ([] if periods else ["no_scenes"])


def test_s1_window_reaches_neighbouring_periods():
    b = rel(0, 0, 320, 320)
    s2 = [scene("q1", day(2024, 2, 1), b), scene("q2", day(2024, 5, 1), b)]
    s1 = scene("s1", day(2024, 3, 30), b, sensor="s1")
    units, _ = plan_units([*s2, s1], CFG.model_copy(update={"s1_window_days": 3}))
    assert [(u.period, len(u.s1)) for u in units] == [("2024Q1", 1), ("2024Q2", 1)]


def test_s1_in_neighbouring_zone_is_reprojected():
    # S2 near the eastern edge of zone 33 (15 E +- 3); S1 natively in zone 34 over the same ground
    b2 = (829440.0, 5000000.0, 830400.0, 5000960.0)  # 3 x 3 units of 320 m
    s2 = scene("s2", day(2024, 2, 1), b2, 32633)
    fp34 = grid.transform_bounds(32633, 32634, b2)
    s1 = scene("s1", day(2024, 2, 2), fp34, 32634, sensor="s1")
    far = scene(
        "far", day(2024, 2, 2), (fp34[0] + 50000, fp34[1], fp34[2] + 50000, fp34[3]), 32634, sensor="s1"
    )
    units, rejects = plan_units([s2, s1, far], CFG)
    assert len(units) == 9 and all([x.scene_id for x in u.s1] == ["s1"] for u in units)
    assert [(r.id, r.reason) for r in rejects] == [("far", "no_scenes")]


# ----------------------------------------------------------------------------- determinism, JSON


def _archive(seed: int, n2: int = 60, n1: int = 25):
    rng = random.Random(seed)
    scenes = []
    for i in range(n2):
        epsg = rng.choice([32633, 32733])
        x0 = rng.choice([0.0, 100.0, 333.0, -480.0])  # few footprints, like MGRS tiles
        y0 = rng.choice([0.0, 250.0])
        scenes.append(
            scene(
                f"s2_{i:03d}",
                day(2024, rng.randint(1, 12), rng.randint(1, 28)),
                rel(x0, y0, x0 + 900, y0 + 700),
                epsg,
            )
        )
    for i in range(n1):
        epsg = rng.choice([32633, 32733])
        x0, y0 = rng.uniform(-800, 900), rng.uniform(-800, 900)
        w = rng.uniform(1, 600)
        when = day(2024, rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23))
        scenes.append(scene(f"s1_{i:03d}", when, rel(x0, y0, x0 + w, y0 + w), epsg, sensor="s1"))
    return scenes


def test_deterministic_whatever_the_input_order():
    scenes = _archive(1)
    units, rejects = plan_units(scenes, CFG)
    shuffled = scenes[:]
    random.Random(7).shuffle(shuffled)
    units2, rejects2 = plan_units(shuffled, CFG)
    assert units == units2 and rejects == rejects2
    assert [u.unit_id for u in units] == sorted(u.unit_id for u in units)
    assert [u.to_json() for u in units] == [u.to_json() for u in units2]
    for u in units:
        assert list(u.tiles) == sorted(u.tiles)
        assert list(u.s2) == sorted(u.s2, key=lambda s: (s.datetime, s.scene_id))
        assert list(u.s1) == sorted(u.s1, key=lambda s: (s.datetime, s.scene_id))


def test_json_round_trip():
    units, _ = plan_units(_archive(2), CFG.model_copy(update={"s1_window_days": 10}))
    assert any(u.s1 for u in units)
    for u in units:
        text = u.to_json()
        back = WorkUnit.from_json(text)
        assert back == u and back.to_json() == text
        json.loads(text)  # plain JSON, no NaN


def _brute_force(scenes: list[Scene], cfg: IngestConfig):
    """Reference planner: every unit x every scene, straight from the definitions."""
    um, tm, ut = cfg.unit_m, cfg.tile_m, cfg.unit_tiles
    s2 = [s for s in scenes if s.sensor == "s2"]
    s1 = [s for s in scenes if s.sensor == "s1"]
    cache: dict = {}

    def footprint(s: Scene, epsg: int):
        k = (s.scene_id, epsg)
        if k not in cache:
            cache[k] = grid.transform_bounds(s.epsg, epsg, s.bounds)
        return cache[k]

    keys = set()
    for s in s2:
        p = grid.period_of(s.datetime, cfg.period)
        for c, r in grid.cells_intersecting(s.bounds, um):
            keys.add((s.epsg, c, r, p))
    out = {}
    for epsg, c, r, p in keys:
        ub = grid.cell_bounds(c, r, um)
        mine = [s for s in s2 if s.epsg == epsg and grid.period_of(s.datetime, cfg.period) == p]
        mine = [s for s in mine if grid.bounds_intersect(s.bounds, ub)]
        tiles = {
            t
            for s in mine
            for t in grid.cells_intersecting(s.bounds, tm)
            if grid.unit_of_tile(*t, ut) == (c, r)
        }
        lo, hi = grid.period_window(p, cfg.s1_window_days)
        ones = [
            s for s in s1
            if lo <= s.datetime < hi
            and grid.bounds_intersect(footprint(s, epsg), ub)
        ]  # fmt: skip
        key = lambda s: (s.datetime, s.scene_id)
        out[f"{epsg}_{c}_{r}_{p}"] = (
            tuple(sorted(tiles)),
            [s.scene_id for s in sorted(mine, key=key)],
            [s.scene_id for s in sorted(ones, key=key)],
        )
    return out


@pytest.mark.parametrize("seed, window, period", [(3, 0, "quarter"), (4, 7, "month"), (5, 30, "quarter")])
def test_matches_brute_force_reference(seed, window, period):
    cfg = CFG.model_copy(update={"s1_window_days": window, "period": period})
    scenes = _archive(seed)
    units, rejects = plan_units(scenes, cfg)
    got = {u.unit_id: (u.tiles, [s.scene_id for s in u.s2], [s.scene_id for s in u.s1]) for u in units}
    assert got == _brute_force(scenes, cfg)
    matched = {s.scene_id for u in units for s in u.s1}
    assert {r.id for r in rejects} == {s.scene_id for s in scenes if s.sensor == "s1"} - matched


def test_json_mixed_hrefs_and_version():
    s = scene("a", day(2024, 1, 5), rel(0, 0, 320, 320))
    odd = dict(s.assets)
    odd["SCL"] = AssetRef("s3://other/x/SCL.tif", (20.0, 0.0, 1.0, 0.0, -20.0, 2.0), (3, 4), float("nan"))
    s = Scene(s.scene_id, "s2", s.datetime, s.epsg, s.bounds, s.lonlat_bbox, odd, -1000, 12.5)
    units, _ = plan_units([s], CFG)
    text = units[0].to_json()
    back = WorkUnit.from_json(text)
    assert back.s2[0].assets["SCL"].href == "s3://other/x/SCL.tif"
    assert back.s2[0].assets["B02"] == s.assets["B02"] and back.s2[0].boa_offset == -1000
    d = json.loads(text)
    d["v"] = 2
    with pytest.raises(ValueError, match="unsupported WorkUnit JSON version 2"):
        WorkUnit.from_json(json.dumps(d))


def test_negative_grid_indices():
    """Codes pack negative unit indices correctly (not met in UTM, but the grid allows it)."""
    s = scene("neg", day(2024, 1, 5), (-500.0, -330.0, 10.0, 5.0), lonlat=(14.0, 45.0, 14.1, 45.1))
    units, _ = plan_units([s], CFG)
    assert [u.unit_id for u in units] == sorted(
        f"32633_{c}_{r}_2024Q1" for c in (-2, -1, 0) for r in (-2, -1, 0)
    )
    assert all(grid.bounds_intersect(u.bounds, s.bounds) for u in units)
    assert count_samples(units) == len(grid.cells_intersecting(s.bounds, CFG.tile_m))

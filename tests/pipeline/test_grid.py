"""Grid math tables: UTM zones, cell indices/bounds/spans, units, sample ids, periods, reprojection."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from pipeline import grid

UTC = dt.UTC


@pytest.mark.parametrize(
    "lon, lat, epsg",
    [
        (15.0, 45.0, 32633),  # zone 33 N
        (-62.25, -33.06, 32720),  # Argentina, southern hemisphere 327xx (the Earth Search v1 fixture)
        (-16.8, 20.4, 32628),  # Earth Search v0 fixture
        (-147.8, 60.8, 32606),  # Planetary Computer fixture (Alaska)
        (0.0, 0.0, 32631),  # equator belongs to the north
        (0.0, -1e-9, 32731),
        (-180.0, 10.0, 32601),  # zone edges
        (180.0, 10.0, 32660),  # lon = 180 folds into zone 60
        (179.999, -10.0, 32760),
        (6.0, 10.0, 32632),  # exact zone boundary belongs to the eastern zone
        (5.999999, 10.0, 32631),
        (5.0, 60.0, 32632),  # Norway exception (32V widened)
        (2.9, 60.0, 32631),
        (10.0, 78.0, 32633),  # Svalbard exceptions
        (8.9, 78.0, 32631),
        (40.0, 80.0, 32637),
        (0.0, 84.0, 32631),  # top of UTM coverage
        (0.0, -80.0, 32731),
    ],
)
def test_utm_epsg(lon, lat, epsg):
    assert grid.utm_epsg(lon, lat) == epsg
    assert grid.is_utm_epsg(epsg)


@pytest.mark.parametrize(
    "lon, lat, match",
    [
        (0.0, 85.0, "outside UTM coverage"),
        (0.0, -80.5, "outside UTM coverage"),
        (181.0, 0.0, "not a WGS84 coordinate"),
        (0.0, 91.0, "not a WGS84 coordinate"),
        (float("nan"), 0.0, "not a WGS84 coordinate"),
    ],
)
def test_utm_epsg_rejects(lon, lat, match):
    with pytest.raises(ValueError, match=match):
        grid.utm_epsg(lon, lat)


@pytest.mark.parametrize(
    "epsg, ok", [(32601, True), (32660, True), (32761, False), (32600, False), (4326, False)]
)
def test_is_utm_epsg(epsg, ok):
    assert grid.is_utm_epsg(epsg) is ok


@pytest.mark.parametrize(
    "x, y, cell, expect",
    [
        (0.0, 0.0, 1280.0, (0, 0)),
        (1279.999, 1279.999, 1280.0, (0, 0)),
        (1280.0, 1280.0, 1280.0, (1, 1)),  # exact boundary belongs to the next cell
        (-0.001, -0.001, 1280.0, (-1, -1)),  # negative coordinates floor down
        (-1280.0, -1280.0, 1280.0, (-1, -1)),
        (-1280.001, 0.0, 1280.0, (-2, 0)),
        (499980.0, 6400000.0, 1280.0, (390, 5000)),  # 20HNJ corner
        (399960.0, 6800040.0, 10240.0, (39, 664)),
    ],
)
def test_cell_index(x, y, cell, expect):
    assert grid.cell_index(x, y, cell) == expect
    x0, y0, x1, y1 = grid.cell_bounds(*expect, cell)
    assert x0 <= x < x1 and y0 <= y < y1


@pytest.mark.parametrize("fn", [grid.cell_index, lambda x, y, c: grid.cell_bounds(int(x), int(y), c)])
def test_cell_rejects_nonpositive_size(fn):
    with pytest.raises(ValueError, match="cell_m must be > 0"):
        fn(0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "col, row, cell, bounds",
    [
        (0, 0, 1280.0, (0.0, 0.0, 1280.0, 1280.0)),
        (-1, -2, 1280.0, (-1280.0, -2560.0, 0.0, -1280.0)),
        (390, 4999, 1280.0, (499200.0, 6398720.0, 500480.0, 6400000.0)),  # y_max = (row + 1) * cell
    ],
)
def test_cell_bounds(col, row, cell, bounds):
    assert grid.cell_bounds(col, row, cell) == bounds


@pytest.mark.parametrize(
    "bounds, cell, span",
    [
        ((0.0, 0.0, 2560.0, 1280.0), 1280.0, (0, 2, 0, 1)),  # touching x_max/y_max edges excluded
        ((0.0, 0.0, 2560.1, 1280.1), 1280.0, (0, 3, 0, 2)),
        ((-1.0, -1.0, 1.0, 1.0), 1280.0, (-1, 1, -1, 1)),
        ((100.0, 100.0, 200.0, 200.0), 1280.0, (0, 1, 0, 1)),  # inside one cell
        ((100.0, 100.0, 100.0, 200.0), 1280.0, (0, 0, 0, 0)),  # degenerate: empty
        ((399960.0, 6690240.0, 509760.0, 6800040.0), 10240.0, (39, 50, 653, 665)),  # a full MGRS tile
    ],
)
def test_cell_span(bounds, cell, span):
    assert grid.cell_span(bounds, cell) == span
    np.testing.assert_array_equal(grid.cell_spans(np.array([bounds]), cell)[0], span)
    cells = grid.cells_intersecting(bounds, cell)
    assert len(cells) == (span[1] - span[0]) * (span[3] - span[2])
    assert cells == sorted(cells)
    for c in cells:
        assert grid.bounds_intersect(grid.cell_bounds(*c, cell), bounds)


def test_cell_span_rejects_nonpositive_size():
    with pytest.raises(ValueError, match="cell_m must be > 0"):
        grid.cell_span((0, 0, 1, 1), -1.0)


@pytest.mark.parametrize(
    "a, b, hit",
    [
        ((0, 0, 10, 10), (5, 5, 15, 15), True),
        ((0, 0, 10, 10), (10, 0, 20, 10), False),  # shared edge only
        ((0, 0, 10, 10), (0, 10, 10, 20), False),
        ((0, 0, 10, 10), (2, 2, 3, 3), True),
        ((-5, -5, -1, -1), (0, 0, 1, 1), False),
    ],
)
def test_bounds_intersect(a, b, hit):
    assert grid.bounds_intersect(a, b) is hit
    assert grid.bounds_intersect(b, a) is hit


@pytest.mark.parametrize(
    "col, row, ut, unit",
    [(0, 0, 8, (0, 0)), (7, 7, 8, (0, 0)), (8, 15, 8, (1, 1)), (-1, -8, 8, (-1, -1)), (-9, 3, 8, (-2, 0))],
)
def test_unit_of_tile(col, row, ut, unit):
    assert grid.unit_of_tile(col, row, ut) == unit
    assert (col, row) in grid.tiles_of_unit(*unit, ut)


def test_tiles_of_unit_align_with_unit_bounds():
    tile_m, ut = 1280.0, 8
    tiles = grid.tiles_of_unit(-3, 5, ut)
    assert len(tiles) == ut * ut and tiles == sorted(tiles)
    ub = grid.cell_bounds(-3, 5, tile_m * ut)
    xs = [grid.cell_bounds(c, r, tile_m) for c, r in tiles]
    assert min(b[0] for b in xs) == ub[0] and max(b[2] for b in xs) == ub[2]
    assert min(b[1] for b in xs) == ub[1] and max(b[3] for b in xs) == ub[3]


@pytest.mark.parametrize("fn", [grid.unit_of_tile, grid.tiles_of_unit])
def test_unit_rejects_bad_size(fn):
    with pytest.raises(ValueError, match="unit_tiles must be >= 1"):
        fn(0, 0, 0)


@pytest.mark.parametrize(
    "epsg, col, row, period, sid",
    [
        (32633, 12, 4000, "2024Q1", "32633_12_4000_2024Q1"),
        (32720, -1, -40, "2024-03", "32720_-1_-40_2024-03"),
        (32601, 0, 0, "2019", "32601_0_0_2019"),
    ],
)
def test_sample_id_round_trip(epsg, col, row, period, sid):
    assert grid.sample_id(epsg, col, row, period) == sid
    assert grid.parse_sample_id(sid) == (epsg, col, row, period)


@pytest.mark.parametrize("bad", ["32633_1_2", "x_1_2_2024", "32633_1_2_2024Q5", "32633_1_2_24-03"])
def test_parse_sample_id_rejects(bad):
    with pytest.raises(ValueError, match="not a sample id"):
        grid.parse_sample_id(bad)


@pytest.mark.parametrize(
    "when, kind, period",
    [
        (dt.datetime(2024, 3, 31, 23, 59, tzinfo=UTC), "month", "2024-03"),
        (dt.datetime(2024, 3, 31, 23, 59, tzinfo=UTC), "quarter", "2024Q1"),
        (dt.datetime(2024, 4, 1, tzinfo=UTC), "quarter", "2024Q2"),
        (dt.datetime(2024, 12, 31, 12, tzinfo=UTC), "quarter", "2024Q4"),
        (dt.datetime(2024, 12, 31, 12, tzinfo=UTC), "year", "2024"),
        # aware datetimes are converted to UTC first: 2024-04-01 01:00 at +02:00 is still March in UTC
        (dt.datetime(2024, 4, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))), "month", "2024-03"),
        (dt.date(2021, 7, 4), "quarter", "2021Q3"),
    ],
)
def test_period_of(when, kind, period):
    assert grid.period_of(when, kind) == period
    start, end = grid.period_range(period)
    w = when if isinstance(when, dt.datetime) else dt.datetime(when.year, when.month, when.day, tzinfo=UTC)
    assert start <= w < end


def test_period_of_rejects_kind():
    with pytest.raises(ValueError, match="unknown period kind"):
        grid.period_of(dt.datetime(2024, 1, 1, tzinfo=UTC), "week")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "period, start, end",
    [
        ("2024-02", dt.datetime(2024, 2, 1, tzinfo=UTC), dt.datetime(2024, 3, 1, tzinfo=UTC)),
        ("2024-12", dt.datetime(2024, 12, 1, tzinfo=UTC), dt.datetime(2025, 1, 1, tzinfo=UTC)),
        ("2024Q4", dt.datetime(2024, 10, 1, tzinfo=UTC), dt.datetime(2025, 1, 1, tzinfo=UTC)),
        ("2023Q1", dt.datetime(2023, 1, 1, tzinfo=UTC), dt.datetime(2023, 4, 1, tzinfo=UTC)),
        ("2020", dt.datetime(2020, 1, 1, tzinfo=UTC), dt.datetime(2021, 1, 1, tzinfo=UTC)),
    ],
)
def test_period_range(period, start, end):
    assert grid.period_range(period) == (start, end)


@pytest.mark.parametrize("bad", ["2024Q0", "2024Q5", "2024-13", "2024-00", "24Q1", "2024-1", ""])
def test_period_range_rejects(bad):
    with pytest.raises(ValueError, match="not a period"):
        grid.period_range(bad)


def test_period_window_and_between():
    s, e = grid.period_window("2024Q1", 10)
    assert s == dt.datetime(2023, 12, 22, tzinfo=UTC) and e == dt.datetime(2024, 4, 11, tzinfo=UTC)
    with pytest.raises(ValueError, match="days must be >= 0"):
        grid.period_window("2024Q1", -1)
    got = list(
        grid.periods_between(
            dt.datetime(2023, 12, 22, tzinfo=UTC), dt.datetime(2024, 4, 11, tzinfo=UTC), "quarter"
        )
    )
    assert got == ["2023Q4", "2024Q1", "2024Q2"]
    assert (
        list(
            grid.periods_between(
                dt.datetime(2024, 1, 1, tzinfo=UTC), dt.datetime(2024, 1, 1, tzinfo=UTC), "month"
            )
        )
        == []
    )


def test_transform_bounds_identity_and_utm():
    b = (499980.0, 6290200.0, 609780.0, 6400000.0)
    assert grid.transform_bounds(32720, 32720, b) == b
    lon0, lat0, lon1, lat1 = grid.transform_bounds(32720, 4326, b)
    assert -63.1 < lon0 < lon1 < -61.7 and -33.6 < lat0 < lat1 < -32.4  # the ES v1 fixture's bbox, roughly
    many = grid.transform_bounds_many(32720, 4326, np.array([b, b]))
    np.testing.assert_allclose(many[0], (lon0, lat0, lon1, lat1), atol=1e-6)
    # neighbouring zone: the box moves ~6 degrees of longitude worth of metres east
    nb = grid.transform_bounds_many(32720, 32721, np.array([b]))[0]
    assert nb[2] < b[0] and nb[2] - nb[0] > b[2] - b[0]


def test_tile_centres_lonlat():
    lon, lat = grid.tile_centres_lonlat(32633, [3906], [39062], 128.0)
    assert abs(lon[0] - 15.0) < 0.01 and abs(lat[0] - 45.12) < 0.05

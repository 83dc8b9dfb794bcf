"""pipeline.read: a scene's window onto the unit grids at native resolution (10 and 20 m copied, 60 m
replicated 3 x 3: pixel-exact), resampling off the lattice, warped S1."""

from __future__ import annotations

import datetime as _dt

import numpy as np
import pytest
from rasterio.transform import Affine

import pipeline.read as R
from pipeline.config import StorageConfig
from pipeline.read import (
    S2Out,
    SceneReadError,
    UnitGrid,
    block_cache,
    harmonise,
    read_s1_scene,
    read_s2_scene,
    to_db,
)
from pipeline.sensors import S2
from pipeline.stac import AssetRef
from pipeline.storage import TransientIOError, rasterio_env
from pipeline.synthetic import patterns as _cogs

WHEN = _dt.datetime(2022, 5, 3, 10, 0, tzinfo=_dt.UTC)
ST = StorageConfig()
# unit of 256 px at 10 m on the fixed grid (2560 m cells); the scene (499980..507660) covers part of it
GRID = UnitGrid.from_bounds(32633, (2560.0 * 195, 2560.0 * 1951, 2560.0 * 196, 2560.0 * 1952))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return _cogs.s2_scene(tmp_path_factory.mktemp("s2"), "S2_A", WHEN)


def _read(scene, grid=GRID) -> tuple[S2Out, np.ndarray, int]:
    n = grid.size
    out = S2Out(np.zeros((4, n, n), np.uint16), np.zeros((8, n // 2, n // 2), np.uint16))
    scl = np.zeros((n // 2, n // 2), np.uint8)
    with rasterio_env(ST):
        nbytes = read_s2_scene(scene, grid, ST, out, scl)
    return out, scl, nbytes


def _bands(res):
    """``(band index in S2.bands, index in its group)`` of the bands of native resolution ``res``."""
    group = [i for i, b in enumerate(S2.bands) if (b.resolution_m == 10) == (res == 10)]
    return [(i, group.index(i)) for i in group if S2.bands[i].resolution_m == res]


def _inside(grid, scene):
    xs, ys = _cogs.centres(grid.transform, grid.size, grid.size)
    x0, y0, x1, y1 = scene.bounds
    return xs, ys, (xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)


def test_unit_grid_from_bounds():
    g = UnitGrid.from_bounds(32633, (0.0, -640.0, 640.0, 0.0))
    assert (g.size, g.x_min, g.y_max, g.gsd) == (64, 0.0, 0.0, 10.0)
    assert g.transform == Affine(10, 0, 0, 0, -10, 0)
    c = g.coarse(2)
    assert (c.size, c.gsd, c.bounds) == (32, 20.0, g.bounds) and c.transform == Affine(20, 0, 0, 0, -20, 0)
    assert c.sub(2, 3, 4) == UnitGrid(32633, 40.0, -60.0, 4, 20.0)
    with pytest.raises(ValueError, match="square of whole 10 m pixels"):
        UnitGrid.from_bounds(32633, (0.0, 0.0, 645.0, 640.0))
    with pytest.raises(ValueError, match="a 64-px grid has no x3 coarser grid"):
        g.coarse(3)


@pytest.mark.parametrize("transform, grid, want", [
    (Affine(10, 0, 0, 0, -10, 0), UnitGrid(1, 30.0, -40.0, 8), (3, 4, 1)),  # aligned 10 m: copy
    (Affine(20, 0, -20, 0, -20, 20), UnitGrid(1, 0.0, 0.0, 8, 20.0), (1, 1, 1)),  # 20 m on the 20 m grid
    (Affine(60, 0, 0, 0, -60, 0), UnitGrid(1, 20.0, -40.0, 8, 20.0), (1, 2, 3)),  # 60 m: x3, mid-pixel start
    (Affine(20, 0, 0, 0, -20, 0), UnitGrid(1, 10.0, 0.0, 8, 20.0), None),  # off the lattice by 10 m
    (Affine(30, 0, 0, 0, -30, 0), UnitGrid(1, 0.0, 0.0, 8, 20.0), None),  # 1.5 x: not a whole number
    (Affine(10, 0, 0, 0, -10, 0), UnitGrid(1, 0.0, 0.0, 8, 20.0), None),  # finer than the grid
    (Affine(10, 1, 0, 0, -10, 0), UnitGrid(1, 0.0, 0.0, 8), None),  # rotated
])
def test_replication_table(transform, grid, want):
    import pipeline.read as R

    assert R._replication(transform, grid) == want


def test_10m_bands_are_pixel_exact_and_outside_is_nodata(scene):
    assert GRID.x_min < scene.bounds[0] < GRID.bounds[2], "the unit must straddle the scene's west edge"
    out, _, nbytes = _read(scene)
    xs, ys, inside = _inside(GRID, scene)
    assert 0 < inside.sum() < inside.size
    for i, j in _bands(10):
        np.testing.assert_array_equal(out.s10m[j][inside], _cogs.hash10(xs, ys, i)[inside], err_msg=str(i))
        assert (out.s10m[j][~inside] == 0).all()
    assert nbytes > 0


@pytest.mark.parametrize("res", [20, 60])
def test_coarse_bands_are_copied_or_replicated_exactly(scene, res):
    """On the 20 m grid a 20 m band is the COG's pixels and a 60 m band each COG pixel on its 3 x 3 cells:
    no tolerance, edges included (the unit starts mid-way through a 60 m pixel column: 499200 m is 780 m,
    13 pixels, west of the scene, and the grid's first 60 m column holds 20 m cells 39-41 of it)."""
    out, _, _ = _read(scene)
    g20 = GRID.coarse(2)
    xs, ys, inside = _inside(g20, scene)
    x0, _, _, y1 = scene.bounds
    # the centre of the res-m pixel of the scene that holds each 20 m centre
    cx = x0 + (np.floor((xs - x0) / res) + 0.5) * res
    cy = y1 - (np.floor((y1 - ys) / res) + 0.5) * res
    for i, j in _bands(res):
        want = _cogs.band_value(i, res, cx, cy)
        np.testing.assert_array_equal(out.s20m[j][inside], want[inside], err_msg=S2.bands[i].name)
        assert (out.s20m[j][~inside] == 0).all()


def test_off_lattice_scene_is_resampled(tmp_path):
    """A scene whose origin is off the 20 m lattice (here 10 m east) is resampled onto both grids: the
    ramp of its 20 m bands is reproduced within rounding away from the scene edge."""
    sc = _cogs.s2_scene(tmp_path, "S2_OFF_LATTICE", WHEN, x0=499990.0)
    out, _, _ = _read(sc)
    g20 = GRID.coarse(2)
    xs, ys, inside = _inside(g20, sc)
    x0, _, _, y1 = sc.bounds
    interior = inside & (xs > x0 + 20) & (ys < y1 - 20)
    for i, j in _bands(20):
        diff = np.abs(out.s20m[j][interior].astype(float) - _cogs.ramp(xs, ys, i)[interior])
        assert diff.max() <= 1.0, S2.bands[i].name


def test_scl_nearest_keeps_classes_and_cloud_box(tmp_path):
    box = (500400.0, 4995000.0, 501000.0, 4996200.0)  # multiples of 60 m inside GRID and the scene
    sc = _cogs.s2_scene(tmp_path, "S2_C", WHEN, cloud_box=box)
    _, scl, _ = _read(sc)
    xs, ys, inside = _inside(GRID.coarse(2), sc)  # the SCL lands on the 20 m grid, its native resolution
    assert set(np.unique(scl[inside])) == {4, 9}
    in_box = (xs > box[0]) & (xs < box[2]) & (ys > box[1]) & (ys < box[3])
    assert (scl[in_box] == 9).all() and (scl[inside & ~in_box] == 4).all()
    assert (scl[~inside] == 0).all()


def test_boa_offset_applied_exactly_once(tmp_path, scene):
    stored = _cogs.s2_scene(tmp_path, "S2_OFF", WHEN, stored_offset=1000, boa_offset=-1000)
    a, _, _ = _read(scene)
    b, _, _ = _read(stored)
    for x, y in zip(a, b, strict=True):  # DN + 1000 in the file, -1000 on read: the pre-04.00 values
        np.testing.assert_array_equal(x, y)


def test_harmonise_clips_valid_to_one_and_keeps_nodata():
    dn = np.array([[[0, 500, 1000, 1001, 65535]]], np.uint16)
    harmonise(dn, -1000)
    np.testing.assert_array_equal(dn, [[[0, 1, 1, 1, 64535]]])


@pytest.mark.parametrize("offset", [-1000, -1, -65534, 1, 1000, 65534])
def test_harmonise_matches_the_definition_on_every_dn(offset):
    dn = np.arange(65536, dtype=np.uint16).reshape(2, 256, 128)  # every value, two bands
    want = np.where(dn == 0, 0, np.clip(dn.astype(np.int64) + offset, 1, 65535))
    harmonise(dn, offset)
    np.testing.assert_array_equal(dn, want)


def test_s1_same_zone_half_pixel_shift_lands_on_the_grid(tmp_path):
    # S1 on a grid shifted by (+5 m, -5 m), like RTC products: bilinear warp of a linear ramp is exact
    tr = Affine(10, 0, GRID.x_min - 995.0, 0, -10, GRID.y_max + 1005.0)
    sc = _cogs.s1_scene(tmp_path, "S1_A", WHEN, transform=tr, shape=(500, 500))
    out = np.zeros((2, GRID.size, GRID.size), np.float32)
    with rasterio_env(ST):
        read_s1_scene(sc, GRID, ST, out)
    xs, ys = _cogs.centres(GRID.transform, GRID.size, GRID.size)
    want = 10 * np.log10(_cogs.s1_power(xs, ys))
    np.testing.assert_allclose(out[0], want, atol=1e-3)
    np.testing.assert_allclose(out[1], want - 10 * np.log10(5.0), atol=1e-3)


def test_s1_other_zone_is_warped_to_the_unit_zone(tmp_path):
    # a scene in the neighbouring zone (EPSG:32634) covering the unit: values follow unit-zone coordinates
    from rasterio.warp import transform_bounds

    x0, y0, x1, y1 = transform_bounds("EPSG:32633", "EPSG:32634", *GRID.bounds)
    tr = Affine(10, 0, np.floor(x0 / 10) * 10 - 300, 0, -10, np.ceil(y1 / 10) * 10 + 300)
    shape = (int((y1 - y0) / 10) + 60, int((x1 - x0) / 10) + 60)
    sc = _cogs.s1_scene(tmp_path, "S1_B", WHEN, epsg=32634, transform=tr, shape=shape)
    out = np.zeros((2, GRID.size, GRID.size), np.float32)
    with rasterio_env(ST):
        read_s1_scene(sc, GRID, ST, out)
    xs, ys = _cogs.centres(GRID.transform, GRID.size, GRID.size)
    want = 10 * np.log10(_cogs.s1_power(xs, ys))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0], want, atol=0.02)
    # GDAL's warper (WarpedVRT, bilinear) gives the same within 1e-3 dB
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    for i, b in enumerate(("VV", "VH")):
        ref = sc.assets[b]
        with rasterio.open(ref.href) as ds, WarpedVRT(
            ds, crs="EPSG:32633", transform=GRID.transform, width=GRID.size, height=GRID.size,
            resampling=Resampling.bilinear, src_nodata=ref.nodata, nodata=np.nan, dtype="float32",
        ) as vrt:
            gdal = 10 * np.log10(np.maximum(vrt.read(1), 1e-5))
        np.testing.assert_allclose(out[i], gdal, atol=1e-3, err_msg=b)


def test_s1_other_zone_matches_gdal_at_edges_and_nodata(tmp_path):
    """A neighbouring-zone scene covering part of the unit, with a nodata hole: the numpy warp gives GDAL's
    warper's answer (WarpedVRT, bilinear, its nodata rule): the same NaN pixels, values within 1e-4 dB."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import transform_bounds

    x0, _, _, y1 = transform_bounds("EPSG:32633", "EPSG:32634", *GRID.bounds)
    tr = Affine(10, 0, np.floor(x0 / 10) * 10 + 1003, 0, -10, np.ceil(y1 / 10) * 10 - 707)
    sc = _cogs.s1_scene(tmp_path, "S1_P", WHEN, epsg=32634, transform=tr, shape=(200, 200))
    path = sc.assets["VV"].href
    with rasterio.open(path) as ds:
        a, prof = ds.read(1), ds.profile
    a[50:80, 60:120] = -32768.0
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(a, 1)
    out = np.zeros((2, GRID.size, GRID.size), np.float32)
    with rasterio_env(ST):
        read_s1_scene(sc, GRID, ST, out)
        with rasterio.open(path) as ds, WarpedVRT(
            ds, crs="EPSG:32633", transform=GRID.transform, width=GRID.size, height=GRID.size,
            resampling=Resampling.bilinear, src_nodata=-32768.0, nodata=np.nan, dtype="float32",
        ) as vrt:
            gdal = 10 * np.log10(np.maximum(vrt.read(1), 1e-5))
    nan = np.isnan(gdal)
    assert 0.3 < nan.mean() < 0.95  # edges and the hole are both in play
    np.testing.assert_array_equal(np.isnan(out[0]), nan)
    np.testing.assert_allclose(out[0][~nan], gdal[~nan], atol=1e-4)


@pytest.mark.parametrize("cell", [(0, 0, 256), (40, 72, 100)])
def test_cross_zone_warp_positions_are_exact(cell):
    """The lattice-interpolated source positions of a square equal pyproj's per-pixel transform within
    1e-3 px (the zone change bends them far less across a 16-px lattice cell)."""
    from rasterio.warp import transform as warp_transform
    from rasterio.warp import transform_bounds

    import pipeline.read as R

    x0, y0, x1, y1 = transform_bounds("EPSG:32633", "EPSG:32634", *GRID.bounds)
    tr = Affine(10, 0, np.floor(x0 / 10) * 10 - 300, 0, -10, np.ceil(y1 / 10) * 10 + 300)
    h, w = int((y1 - y0) / 10) + 60, int((x1 - x0) / 10) + 60
    c, r, k = cell
    taps = R._warp_taps("EPSG:32634", tr, w, h, GRID, c, r, k)
    xs, ys = _cogs.centres(GRID.sub(c, r, k).transform, k, k)
    sx, sy = warp_transform("EPSG:32633", "EPSG:32634", xs.ravel(), ys.ravel())
    inv = ~tr
    u = (inv.a * np.asarray(sx) + inv.b * np.asarray(sy) + inv.c).reshape(k, k)
    v = (inv.d * np.asarray(sx) + inv.e * np.asarray(sy) + inv.f).reshape(k, k)
    win = taps.window
    row, col = np.divmod(taps.idx[0], int(win.width))  # tap 00, in the window
    fr, fc = taps.weights[2] + taps.weights[3], taps.weights[1] + taps.weights[3]
    np.testing.assert_allclose(col + win.col_off + fc + 0.5, u, atol=1e-3)
    np.testing.assert_allclose(row + win.row_off + fr + 0.5, v, atol=1e-3)
    assert taps.inside.all()


def test_s1_cells_are_filled_alone_and_alike_whichever_others_are_read(tmp_path):
    """Reading some cells fills those and leaves the rest of the buffer alone; cells that tile the grid
    are one read. Pixels are the same either way, same-zone and cross-zone (whose source positions come
    from a lattice fixed to the unit grid)."""
    from rasterio.warp import transform_bounds

    x0, y0, x1, y1 = transform_bounds("EPSG:32633", "EPSG:32634", *GRID.bounds)
    tr = Affine(10, 0, np.floor(x0 / 10) * 10 - 300, 0, -10, np.ceil(y1 / 10) * 10 + 300)
    shape = (int((y1 - y0) / 10) + 60, int((x1 - x0) / 10) + 60)
    cross = _cogs.s1_scene(tmp_path, "S1_X", WHEN, epsg=32634, transform=tr, shape=shape)
    same = _cogs.s1_scene(tmp_path, "S1_S", WHEN, transform=Affine(10, 0, GRID.x_min - 995.0, 0, -10,
                                                                      GRID.y_max + 1005.0), shape=(500, 500))
    k = GRID.size // 2
    lattice = [(c, r, k) for r in (0, k) for c in (0, k)]
    for sc in (cross, same):
        whole, cells, two = (np.full((2, GRID.size, GRID.size), -1.0, np.float32) for _ in range(3))
        with rasterio_env(ST):
            read_s1_scene(sc, GRID, ST, whole)
            read_s1_scene(sc, GRID, ST, cells, lattice)
            read_s1_scene(sc, GRID, ST, two, [(k, 0, k), (0, k, k)])  # NE and SW: not a square
        np.testing.assert_array_equal(cells, whole)  # the lattice tiles the grid: one read
        assert (two[:, :k, :k] == -1).all() and (two[:, k:, k:] == -1).all()
        for sl in (np.s_[:, :k, k:], np.s_[:, k:, :k]):
            np.testing.assert_array_equal(two[sl], whole[sl])


def test_s1_nodata_stays_nan(tmp_path):
    tr = Affine(10, 0, GRID.x_min + 1000.0, 0, -10, GRID.y_max)  # covers only the east part of the unit
    sc = _cogs.s1_scene(tmp_path, "S1_C", WHEN, transform=tr, shape=(256, 256))
    out = np.zeros((2, GRID.size, GRID.size), np.float32)
    with rasterio_env(ST):
        read_s1_scene(sc, GRID, ST, out)
    assert np.isnan(out[:, :, :90]).all() and np.isfinite(out[:, :, 110:]).all()


def test_to_db():
    p = np.array([1.0, 0.1, 0.0, np.nan, 1e-7], np.float32)
    to_db(p)
    np.testing.assert_allclose(p[[0, 1, 2, 4]], [0.0, -10.0, -50.0, -50.0], atol=1e-5)
    assert np.isnan(p[3])


def _with_asset(scene, band, href):
    assets = dict(scene.assets)
    ref = assets[band]
    assets[band] = AssetRef(href, ref.transform, ref.shape, ref.nodata)
    return type(scene)(**{f: getattr(scene, f) for f in scene.__dataclass_fields__} | {"assets": assets})


def test_truncated_cog_is_unreadable(tmp_path, scene):
    src = scene.assets["B04"].href
    bad = tmp_path / "B04_truncated.tif"
    data = open(src, "rb").read()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(SceneReadError, match="unreadable_cog: S2_A B04"):
        _read(_with_asset(scene, "B04", str(bad)))


def test_garbage_cog_is_unreadable(tmp_path, scene):
    bad = tmp_path / "junk.tif"
    bad.write_bytes(b"II*\x00" + b"\x17" * 5000)
    with pytest.raises(SceneReadError, match="unreadable_cog") as e:
        _read(_with_asset(scene, "B8A", str(bad)))
    assert e.value.reason == "unreadable_cog"


def test_block_cache_opens_each_raster_once_and_closes_them(scene, monkeypatch):
    opened = []
    real_open = R.rasterio.open

    def spy(path, *a, **k):
        ds = real_open(path, *a, **k)
        opened.append(ds)
        return ds

    monkeypatch.setattr(R.rasterio, "open", spy)
    ref, ref_scl, _ = _read(scene)
    assert len(opened) == 13 and all(ds.closed for ds in opened)  # 12 bands + SCL, each closed after use
    opened.clear()
    with rasterio_env(ST), block_cache(2**30) as cache:
        for _ in range(2):
            out, scl, _ = _read(scene)
            assert all((a == b).all() for a, b in zip(out, ref, strict=True)) and (scl == ref_scl).all()
        assert len(opened) == 13 and not any(ds.closed for ds in opened)  # kept open for the second read
        assert len(cache.datasets) == 13
        # GDAL's block cache is capped: it would keep every block of the open rasters a second time
        assert R.rasterio.env.getenv()["GDAL_CACHEMAX"] == R.GDAL_CACHE_MB
    assert all(ds.closed for ds in opened)  # closed when the cache ends
    opened.clear()
    monkeypatch.setattr(R, "MAX_OPEN", 4)
    with rasterio_env(ST), block_cache(2**30) as cache:
        _read(scene)
        assert len(cache.datasets) == 4 and sum(not ds.closed for ds in opened) == 4  # the rest closed


def _sweep_cog(tmp_path):
    """A 1024-px uint16 COG of 256-px blocks (EPSG:32633, 10 m) and the 3 x 3 windows of 256 px a row of
    units would read, offset 100 px from its blocks (each touches 2 x 2 blocks), rows in serpentine order."""
    import rasterio

    path = tmp_path / "sweep.tif"
    t = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)
    pix = (np.arange(1024 * 1024, dtype=np.uint32) * 2654435761 % 65521).astype(np.uint16).reshape(1024, 1024)
    with rasterio.open(path, "w", driver="GTiff", width=1024, height=1024, count=1, dtype="uint16",
                       crs="EPSG:32633", transform=t, tiled=True, blockxsize=256, blockysize=256,
                       compress="deflate") as ds:
        ds.write(pix, 1)
    wins = []
    for i in range(3):
        cols = range(3) if i % 2 == 0 else reversed(range(3))
        wins += [R.Window(100 + 256 * j, 100 + 256 * i, 256, 256) for j in cols]
    return path, t, pix, wins


def _map_bounds(t, win):
    x0, y1 = t @ (win.col_off, win.row_off)
    x1, y0 = t @ (win.col_off + win.width, win.row_off + win.height)
    return x0, y0, x1, y1


@pytest.mark.parametrize("prune", [False, True])
def test_block_cache_crop_to_what_is_left_fits_a_sweep_in_less(tmp_path, monkeypatch, prune):
    """Two rows of units share a block row; whole, it outlives a budget of 7 of the 16 blocks and is
    decoded again (LRU alone). Cropped to the bounds of the windows still to come (keep_within), the
    used part of each block is freed and every block is decoded once. The pixels are the raster's."""
    import rasterio

    path, t, pix, wins = _sweep_cog(tmp_path)
    counts: dict = {}
    real = R.decode_block
    monkeypatch.setattr(R, "decode_block", lambda ds, key: counts.__setitem__(key, counts.get(key, 0) + 1)
                        or real(ds, key))
    with rasterio.open(path) as ds, block_cache(7 * 256 * 256 * 2) as cache:
        for k, win in enumerate(wins):
            if prune:
                rest = [_map_bounds(t, w) for w in wins[k:]]
                bounds = (min(b[0] for b in rest), min(b[1] for b in rest), max(b[2] for b in rest),
                          max(b[3] for b in rest))
                cache.keep_within(bounds, 32633)
            got, _ = R.read_window(ds, win)
            r, c = int(win.row_off), int(win.col_off)
            assert (got == pix[r : r + 256, c : c + 256]).all()
        assert cache.nbytes <= cache.budget
    if prune:
        assert set(counts.values()) == {1} and len(counts) == 16, counts
    else:
        assert max(counts.values()) > 1  # what the crop saves


def test_block_cache_crop_decodes_again_what_a_later_read_needs(tmp_path):
    """A read outside the bounds the cache was cropped to (or in another CRS's terms: left whole) is
    served by decoding the block again, never from the cropped part."""
    import rasterio

    path, t, pix, wins = _sweep_cog(tmp_path)
    with rasterio.open(path) as ds, block_cache(2**30) as cache:
        R.read_window(ds, wins[0])
        cache.keep_within(_map_bounds(t, wins[4]), 32633)  # the centre window only
        assert cache.nbytes < 4 * 256 * 256 * 2
        kept = {k: v[0].shape for k, v in cache.blocks.items()}
        assert kept == {R.BlockKey(str(path), 1, 1, 1): (158, 158)}  # 354-512 x 354-512, a 2-px margin
        got, _ = R.read_window(ds, wins[0])  # needs the dropped and cropped parts
        assert (got == pix[100:356, 100:356]).all()
        assert sum(cache.decoded.values()) == 8  # the 4 blocks twice
        before = cache.nbytes
        assert cache.keep_within(_map_bounds(t, wins[4]), 32634) == 0 and cache.nbytes == before


def test_block_cache_keeps_no_unreadable_raster(tmp_path, scene):
    bad = tmp_path / "junk.tif"
    bad.write_bytes(b"II*\x00" + b"\x17" * 5000)
    with rasterio_env(ST), block_cache(2**30) as cache:
        for _ in range(2):  # the second read fails the same way: nothing half-open was kept
            with pytest.raises(SceneReadError, match="unreadable_cog: S2_A B8A"):
                _read(_with_asset(scene, "B8A", str(bad)))
        assert str(bad) not in cache.datasets


def test_missing_object_and_missing_band_are_missing_asset(tmp_path, scene):
    with pytest.raises(SceneReadError, match="missing_asset: S2_A B02"):
        _read(_with_asset(scene, "B02", str(tmp_path / "nope.tif")))
    assets = {k: v for k, v in scene.assets.items() if k != "SCL"}
    no_scl = type(scene)(**{f: getattr(scene, f) for f in scene.__dataclass_fields__} | {"assets": assets})
    with pytest.raises(SceneReadError, match="missing_asset: S2_A: no asset for band SCL"):
        _read(no_scl)


@pytest.mark.parametrize("href", ["http://example.com/B02.tif", "/data/../etc/B02.tif", "ftp://x/B02.tif"])
def test_disallowed_href_is_bad_uri(scene, href):
    with pytest.raises(SceneReadError, match="bad_uri"):
        _read(_with_asset(scene, "B02", href))


def test_scene_in_another_zone_than_the_unit_is_rejected(scene):
    grid = UnitGrid.from_bounds(32634, GRID.bounds)
    with pytest.raises(SceneReadError, match="EPSG:32633 is not the unit's 32634"):
        _read(scene, grid)


def test_s2_read_through_s3(s3_server, s3_bucket, scene):
    """The same scene read through GDAL /vsis3 from the loopback S3 server gives identical pixels."""
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server["endpoint_url"]})
    assets = {}
    for k, ref in scene.assets.items():
        key = f"{s3_bucket}/scenes/S2_A/{k}.tif"
        fs.put_file(ref.href, key)
        assets[k] = AssetRef(f"s3://{key}", ref.transform, ref.shape, ref.nodata)
    remote = type(scene)(**{f: getattr(scene, f) for f in scene.__dataclass_fields__} | {"assets": assets})
    a, scl_a, _ = _read(scene)
    b, scl_b, _ = _read(remote)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(scl_a, scl_b)
    # a missing S3 object is a missing asset, not a transient error
    gone = _with_asset(remote, "B03", f"s3://{s3_bucket}/scenes/S2_A/none.tif")
    with pytest.raises(SceneReadError, match="missing_asset"):
        _read(gone)


def test_unreachable_endpoint_is_transient(scene, monkeypatch):
    st = StorageConfig(endpoint_url="http://127.0.0.1:9", max_retries=0)
    remote = _with_asset(scene, "B02", "s3://bucket/x/B02.tif")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    n = GRID.size
    out = S2Out(np.zeros((4, n, n), np.uint16), np.zeros((8, n // 2, n // 2), np.uint16))
    scl = np.zeros((n // 2, n // 2), np.uint8)
    with rasterio_env(st), pytest.raises(TransientIOError, match="S2_A B02"):
        read_s2_scene(remote, GRID, st, out, scl)


@pytest.mark.parametrize("res, dtype, nodata, origin", [
    (20, "uint16", 0, (499980.0, 5000040.0)),
    (60, "uint16", 0, (499980.0, 5000040.0)),
    (10, "float32", -32768.0, (499983.0, 5000036.0)),  # S1 RTC: same zone, grid shifted by (+3, -4) m
    (10, "float32", float("nan"), (499983.0, 5000036.0)),
])
@pytest.mark.parametrize("resampling", ["bilinear", "nearest"])
@pytest.mark.parametrize("corner", [(499200.0, 4997120.0), (499980.0, 5000040.0), (500010.0, 4999970.0)])
def test_numpy_resampling_matches_gdal_reproject(
    tmp_path, monkeypatch, res, dtype, nodata, origin, resampling, corner
):
    """The separable numpy path gives GDAL's answer (nodata rule included): exact, or +-1 DN of rounding."""
    import rasterio
    from rasterio.enums import Resampling

    import pipeline.read as R

    rng = np.random.default_rng(res)
    n = 7680 // res
    a = rng.integers(1, 5000, (n, n)).astype(dtype)
    a[5:40, 7:30] = nodata
    a[:, :3] = nodata
    path = tmp_path / "c.tif"
    _cogs.write_cog(path, a, Affine(res, 0, origin[0], 0, -res, origin[1]), 32633, nodata)
    grid = R.UnitGrid(32633, corner[0], corner[1], 256)
    out_nodata = 0 if dtype == "uint16" else np.nan
    with rasterio.open(path) as ds:
        fast = np.zeros((256, 256), dtype)
        R._read_band(ds, grid, Resampling[resampling], fast, out_nodata)
        monkeypatch.setattr(R, "_scale_factor", lambda t, gsd=10.0: None)
        slow = np.zeros((256, 256), dtype)
        R._read_band(ds, grid, Resampling[resampling], slow, out_nodata)
    if dtype == "uint16":
        np.testing.assert_array_equal(fast == 0, slow == 0)
        assert np.abs(fast.astype(int) - slow.astype(int)).max() <= (1 if resampling == "bilinear" else 0)
    else:
        np.testing.assert_array_equal(np.isnan(fast), np.isnan(slow))
        np.testing.assert_allclose(fast, slow, rtol=1e-5, equal_nan=True)

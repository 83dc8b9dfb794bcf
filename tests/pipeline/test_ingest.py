"""pipeline.ingest: one unit end to end on known-pattern scenes (no cluster), then the Ray Data graph.

The unit (256 px, 4 x 4 tiles of 64 px) straddles the west edge of the scenes, so the two western tile
columns are (partly) outside: rejected all_nodata; the other tiles are written with slots chosen by
cloud, then date.
"""

from __future__ import annotations

import datetime as _dt
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import ingest as ING
from pipeline import shards as S
from pipeline.config import IngestConfig
from pipeline.plan import WorkUnit
from pipeline.sensors import S2
from pipeline.shards import read_shards
from pipeline.stac import AssetRef, Reject
from pipeline.synthetic import patterns as _cogs

UTC = _dt.UTC
CFG = IngestConfig(tile_px=64, unit_tiles=4, max_slots=2, max_cloud=0.5, max_nodata=0.1)
B = (2560.0 * 195, 2560.0 * 1951, 2560.0 * 196, 2560.0 * 1952)  # unit (195, 1951) of EPSG:32633
TILES = tuple((c, r) for c in range(780, 784) for r in range(7804, 7808))
# tile (782, 7806) is covered by scene B's cloud box: B is unusable there
CLOUD_TILE = (782, 7806)
CLOUD_BOX = (782 * 640.0, 7806 * 640.0, 783 * 640.0, 7807 * 640.0)


def _when(month, day):
    return _dt.datetime(2022, month, day, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    a = _cogs.s2_scene(root, "S2_A", _when(5, 3), stored_offset=1000, boa_offset=-1000)
    b = _cogs.s2_scene(root, "S2_B", _when(4, 20), cloud_box=CLOUD_BOX)
    c = _cogs.s2_scene(root, "S2_C", _when(6, 10))
    # a scene whose B04 COG is truncated: rejected at scene level, the unit goes on without it
    e = _cogs.s2_scene(root, "S2_E", _when(4, 2))
    path = e.assets["B04"].href
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])
    from rasterio.transform import Affine

    s1 = _cogs.s1_scene(
        root, "S1_A", _when(5, 5), transform=Affine(10, 0, B[0] - 995, 0, -10, B[3] + 1005), shape=(500, 500)
    )
    cloudy = _cogs.s2_scene(root, "S2_CLOUD", _when(5, 1), scl_value=9)
    return {"a": a, "b": b, "c": c, "e": e, "s1": s1, "cloudy": cloudy}


def _unit(s2, s1=(), unit_id="32633_195_1951_2022Q2"):
    return WorkUnit(
        unit_id=unit_id,
        epsg=32633,
        period="2022Q2",
        bounds=B,
        tiles=TILES,
        s2=tuple(sorted(s2, key=lambda s: (s.datetime, s.scene_id))),
        s1=tuple(s1),
    )


def test_process_unit_places_selects_and_rejects(tmp_path, scenes):
    unit = _unit([scenes["a"], scenes["b"], scenes["c"], scenes["e"]], [scenes["s1"]])
    side = ING.process_unit(unit, CFG, str(tmp_path))
    assert side["tiles_planned"] == 16 and side["tiles_written"] == 8
    by_reason = {}
    for r in side["rejects"]:
        by_reason.setdefault((r["level"], r["reason"]), []).append(r["id"])
    assert by_reason[("scene", "unreadable_cog")] == ["S2_E"]
    assert sorted(by_reason[("tile", "all_nodata")]) == sorted(
        f"32633_{c}_{r}_2022Q2" for c in (780, 781) for r in range(7804, 7808)
    )
    assert set(by_reason) == {("scene", "unreadable_cog"), ("tile", "all_nodata")}

    got = read_shards(tmp_path / "shards" / f"{unit.unit_id}.parquet")
    assert got["sample_id"] == sorted(got["sample_id"]) and len(got["sample_id"]) == 8
    assert side["shard"]["rows"] == 8
    for k, sid in enumerate(got["sample_id"]):
        _, col, row, _ = sid.split("_")
        col, row = int(col), int(row)
        assert got["x_min"][k] == col * 640.0 and got["y_max"][k] == (row + 1) * 640.0
        assert got["epsg"][k] == 32633 and got["gsd"][k] == 10.0
        assert 14 < got["lon"][k] < 16 and 44 < got["lat"][k] < 46
        # slots: least cloudy then earliest, stored by date: B (Apr 20) + A (May 3), or A + C under B's cloud
        want = ["S2_A", "S2_C"] if (col, row) == CLOUD_TILE else ["S2_B", "S2_A"]
        assert got["sources"][k] == [*want, "S1_A"]
        doys = [{"S2_A": 123, "S2_B": 110, "S2_C": 161}[s] for s in want]  # May 3, Apr 20, Jun 10
        assert list(got["s2_doy"][k]) == doys and got["s2_valid"][k].all()
        np.testing.assert_array_equal(got["s2_cloud"][k], [0.0, 0.0])
        # pixel-exact placement at native resolution (and the offset of S2_A applied exactly once): 10 m
        # bands on the 10 m grid, 20 m bands copied and 60 m bands replicated 3 x 3 on the 20 m grid
        tr_x = col * 640.0 + (np.arange(64) + 0.5) * 10
        tr_y = (row + 1) * 640.0 - (np.arange(64) + 0.5) * 10
        xs, ys = np.meshgrid(tr_x, tr_y)
        c20 = (np.arange(32) + 0.5) * 20
        xs20, ys20 = np.meshgrid(col * 640.0 + c20, (row + 1) * 640.0 - c20)
        assert got["s2_10m"].shape[1:] == (2, 4, 64, 64) and got["s2_20m"].shape[1:] == (2, 8, 32, 32)
        i10 = i20 = 0
        for i, band in enumerate(S2.bands):
            res = band.resolution_m
            for slot in range(2):
                if res == 10:
                    want_dn = _cogs.hash10(xs, ys, i)
                    np.testing.assert_array_equal(got["s2_10m"][k, slot, i10], want_dn, err_msg=band.name)
                else:  # the value of the scene pixel (origin 499980, 5000040) holding each 20 m centre
                    cx = 499980.0 + (np.floor((xs20 - 499980.0) / res) + 0.5) * res
                    cy = 5000040.0 - (np.floor((5000040.0 - ys20) / res) + 0.5) * res
                    want_dn = _cogs.band_value(i, res, cx, cy)
                    np.testing.assert_array_equal(got["s2_20m"][k, slot, i20], want_dn, err_msg=band.name)
            i10, i20 = i10 + (res == 10), i20 + (res != 10)
        # S1 co-registered on the same pixels, in dB
        assert got["s1_valid"][k].tolist() == [True, False]
        assert got["s1_doy"][k, 0] == _when(5, 5).timetuple().tm_yday
        np.testing.assert_allclose(
            got["s1"][k, 0, 0].astype(float), 10 * np.log10(_cogs.s1_power(xs, ys)), atol=0.02
        )
        assert np.isnan(got["s1"][k, 1]).all()
    # sidecar: what the manifest needs, without re-reading pixels
    on_disk = json.loads((tmp_path / "units" / f"{unit.unit_id}.json").read_text())
    assert on_disk["shard"]["sha256"] == side["shard"]["sha256"] and on_disk["bytes_read"] > 0
    assert on_disk["s2_sums"]["count"][1] == 8 * 2 * 64 * 64


def test_all_cloud_and_no_scene_units_are_rejected_with_reasons(tmp_path, scenes):
    side = ING.process_unit(_unit([scenes["cloudy"]], unit_id="32633_195_1951_2022Q2"), CFG, str(tmp_path))
    reasons = {r["id"]: r["reason"] for r in side["rejects"]}
    assert side["tiles_written"] == 0 and side["shard"] is None
    assert reasons["32633_783_7807_2022Q2"] == "all_cloud"
    assert reasons["32633_780_7804_2022Q2"] == "all_nodata"
    assert not (tmp_path / "shards").exists()
    empty = ING.process_unit(_unit([], unit_id="32633_195_1951_2022Q3"), CFG, str(tmp_path))
    assert {r["reason"] for r in empty["rejects"]} == {"no_scenes"} and len(empty["rejects"]) == 16


def test_min_s2_slots_and_cloud_threshold(tmp_path, scenes):
    cfg = CFG.model_copy(update={"min_s2_slots": 2})
    side = ING.process_unit(_unit([scenes["a"], scenes["b"]]), cfg, str(tmp_path))
    reasons = {r["id"]: r["reason"] for r in side["rejects"] if r["level"] == "tile"}
    assert reasons[f"32633_{CLOUD_TILE[0]}_{CLOUD_TILE[1]}_2022Q2"] == "all_cloud"  # only A usable there
    assert side["tiles_written"] == 7


def test_process_fn_skips_done_units_and_is_deterministic(tmp_path, scenes):
    unit = _unit([scenes["a"], scenes["c"]])
    fn = ING.make_process_unit_fn(CFG, str(tmp_path / "o"))
    row = fn({"unit": unit.to_json()})
    assert row["skipped"] is False and row["tiles_written"] == 8 and row["bytes_written"] > 0
    shard = tmp_path / "o" / "shards" / f"{unit.unit_id}.parquet"
    first = shard.read_bytes()
    again = fn({"unit": unit.to_json()})
    assert again["skipped"] is True and again["bytes_written"] == 0 and shard.read_bytes() == first
    ING.process_unit(unit, CFG, str(tmp_path / "p"))
    assert (tmp_path / "p" / "shards" / f"{unit.unit_id}.parquet").read_bytes() == first


def test_ray_data_graph_and_finalize(ray_session, tmp_path, scenes):
    u1 = _unit([scenes["a"], scenes["b"], scenes["c"], scenes["e"]], [scenes["s1"]])
    u2 = _unit([scenes["cloudy"]], unit_id="32633_195_1951_2022Q1")
    u2 = WorkUnit(**{**{f: getattr(u2, f) for f in u2.__dataclass_fields__}, "period": "2022Q1"})
    out = str(tmp_path / "out")
    rows = ING.run_units([u1, u2], CFG, out)
    assert [r["unit_id"] for r in rows] == sorted([u1.unit_id, u2.unit_id])
    assert sum(r["tiles_written"] for r in rows) == 8 and not any(r["skipped"] for r in rows)
    # same shard as the in-process path
    ING.process_unit(u1, CFG, str(tmp_path / "direct"))
    name = f"shards/{u1.unit_id}.parquet"
    assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "direct" / name).read_bytes()

    upstream = [Reject("item", "bad-item", "malformed_item", "not JSON")]
    fin = ING.finalize([u1, u2], CFG, out, upstream_rejects=upstream)
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    c = m["counts"]
    assert c["tiles_planned"] == 32 == c["tiles_written"] + c["tiles_rejected"] and c["tiles_written"] == 8
    assert m["rows"] == 8 and [s["path"] for s in m["shards"]] == [name]
    assert c["tile_rejects_by_reason"] == {"all_cloud": 8, "all_nodata": 16}
    assert m["config"]["tile_px"] == 64 and m["schema_version"] == S.SCHEMA_VERSION
    rej = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert {(r["level"], r["reason"]) for r in rej} == {
        ("item", "malformed_item"),
        ("scene", "unreadable_cog"),
        ("tile", "all_nodata"),
        ("tile", "all_cloud"),
    }
    assert len([r for r in rej if r["level"] == "tile"]) == 24
    assert sorted(fin["written"]) == ["manifest.json", "rejects.parquet"]
    # nothing changes on a second finalize, nothing is rewritten
    assert ING.finalize([u1, u2], CFG, out, upstream_rejects=upstream)["written"] == []
    # all pending units are done
    todo, done = ING.pending_units([u1, u2], CFG, out)
    assert todo == [] and len(done) == 2
    # in waves of one unit (how huge plans go out): the same rows and the same shard bytes
    waves = str(tmp_path / "waves")
    rows_w = ING.run_units([u1, u2], CFG, waves, wave_units=1)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(rows_w) == strip(rows)
    assert (tmp_path / "waves" / name).read_bytes() == (tmp_path / "out" / name).read_bytes()


def test_s2_asset_with_bad_scheme_is_a_scene_reject(tmp_path, scenes):
    a = scenes["a"]
    assets = dict(a.assets)
    ref = assets["B03"]
    assets["B03"] = AssetRef("ftp://example.com/B03.tif", ref.transform, ref.shape, ref.nodata)
    fields = {f: getattr(a, f) for f in a.__dataclass_fields__}
    bad = type(a)(**{**fields, "assets": assets, "scene_id": "S2_X"})
    side = ING.process_unit(_unit([bad, scenes["c"]]), CFG, str(tmp_path))
    assert [(r["id"], r["reason"]) for r in side["rejects"] if r["level"] == "scene"] == [("S2_X", "bad_uri")]
    assert side["tiles_written"] == 8


def test_transient_errors_rerun_the_unit_then_fail(tmp_path, scenes, monkeypatch):
    from pipeline.storage import TransientIOError

    unit = _unit([scenes["c"]])
    real, calls = ING.process_unit, []

    def flaky(u, cfg, out):
        calls.append(u.unit_id)
        if len(calls) <= 2:
            raise TransientIOError("S2_C B02: HTTP response code: 503")
        return real(u, cfg, out)

    monkeypatch.setattr(ING, "process_unit", flaky)
    cfg = CFG.model_copy(update={"storage": CFG.storage.model_copy(update={"max_retries": 2})})
    row = ING.make_process_unit_fn(cfg, str(tmp_path / "a"), backoff_s=0.01)({"unit": unit.to_json()})
    assert len(calls) == 3 and row["tiles_written"] == 8
    calls.clear()
    cfg1 = CFG.model_copy(update={"storage": CFG.storage.model_copy(update={"max_retries": 1})})
    with pytest.raises(TransientIOError, match="HTTP response code: 503"):
        ING.make_process_unit_fn(cfg1, str(tmp_path / "b"), backoff_s=0.01)({"unit": unit.to_json()})
    assert len(calls) == 2 and not (tmp_path / "b" / "units").exists()


def test_remove_partial_files(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "units").mkdir()
    (tmp_path / "shards" / ".u.parquet.abc.tmp").write_bytes(b"partial")
    (tmp_path / "units" / ".u.json.abc.tmp").write_bytes(b"partial")
    (tmp_path / "shards" / "u.parquet").write_bytes(b"whole")
    assert ING.remove_partial_files(str(tmp_path), CFG) == 2
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["u.parquet"]
    assert ING.remove_partial_files("s3://bucket/out", CFG) == 0


def test_bands_are_read_only_for_chosen_scenes_over_their_tiles(tmp_path, scenes, monkeypatch):
    """Pass 1 reads every scene's SCL; pass 2 decodes bands only of scenes that won a slot, over the
    square spanning the tiles that chose them (T = 1: B everywhere but under its cloud, where A wins)."""
    calls = []
    real = ING.read_s2_scene

    def spy(scene, grid, storage, out, scl):
        calls.append((scene.scene_id, "bands" if out is not None else "scl", grid.size))
        return real(scene, grid, storage, out, scl)

    monkeypatch.setattr(ING, "read_s2_scene", spy)
    cfg = CFG.model_copy(update={"max_slots": 1})
    side = ING.process_unit(_unit([scenes["a"], scenes["b"], scenes["c"]]), cfg, str(tmp_path))
    assert side["tiles_written"] == 8
    assert sorted(c for c in calls if c[1] == "scl") == [("S2_A", "scl", 256), ("S2_B", "scl", 256),
                                                       ("S2_C", "scl", 256)]
    # B: the 8 eastern tiles less the cloud tile span 2 x 4 tiles -> a 256-px square; A: one 64-px tile
    assert sorted(c for c in calls if c[1] == "bands") == [("S2_A", "bands", 64), ("S2_B", "bands", 256)]
    got = read_shards(tmp_path / "shards" / "32633_195_1951_2022Q2.parquet")
    for k, sid in enumerate(got["sample_id"]):
        want = "S2_A" if sid == f"32633_{CLOUD_TILE[0]}_{CLOUD_TILE[1]}_2022Q2" else "S2_B"
        assert got["sources"][k] == [want]


def test_resuming_into_an_output_of_another_contract_version_fails(tmp_path):
    unit = _unit([])
    ING.check_output_version(str(tmp_path), CFG, [])  # empty output: fine
    (tmp_path / "units").mkdir()
    (tmp_path / "units" / f"{unit.unit_id}.json").write_text(json.dumps({"unit_id": unit.unit_id}))
    with pytest.raises(ValueError, match=r"holds shards of contract v1; this ingest writes v3"):
        ING.check_output_version(str(tmp_path), CFG, [unit])  # a v1 sidecar (no version field)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": S.SCHEMA_VERSION}))
    ING.check_output_version(str(tmp_path), CFG, [unit])  # the manifest speaks for the output
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(ValueError, match=r"contract v1"):
        ING.check_output_version(str(tmp_path), CFG, [])
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 2}))  # a v2 output: refused too
    with pytest.raises(ValueError, match=r"contract v2; this ingest writes v3: use a new output"):
        ING.check_output_version(str(tmp_path), CFG, [])
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "units" / f"{unit.unit_id}.json").write_text(json.dumps({"schema_version": 2}))
    with pytest.raises(ValueError, match=r"contract v2"):  # a v2 sidecar, before any manifest
        ING.check_output_version(str(tmp_path), CFG, [unit])


def test_s1_reading_stops_once_no_later_scene_can_win(tmp_path, scenes, monkeypatch):
    """S1 is read in date order for the tiles S2 keeps (the eastern 8), each only until it holds T = 2
    nodata-free slots, and only over the 2 x 2-tile cells holding such tiles: P fills the east, Q only
    the north, so A is read over the south-east cell alone and the later B and C never; the shard is
    byte-identical to reading every scene everywhere."""
    from rasterio.transform import Affine

    def s1(name, when, x0, rows=500):
        return _cogs.s1_scene(tmp_path / "s1", name, when, transform=Affine(10, 0, x0, 0, -10, B[3] + 1005),
                              shape=(rows, 500))

    p = s1("S1_P", _when(4, 25), B[0] + 1275.0)  # from the middle of the unit eastwards
    q = s1("S1_Q", _when(5, 1), B[0] - 995.0, rows=231)  # the northern half (and 25 m more)
    b, c = s1("S1_B", _when(5, 20), B[0] - 995.0), s1("S1_C", _when(6, 1), B[0] - 995.0)
    unit = _unit([scenes["a"], scenes["b"], scenes["c"]], [p, q, scenes["s1"], b, c])
    calls = []
    real = ING.read_s1_scene

    def spy(scene, grid, storage, out, cells=None):
        calls.append((scene.scene_id, cells))
        return real(scene, grid, storage, out, cells)

    monkeypatch.setattr(ING, "read_s1_scene", spy)
    side = ING.process_unit(unit, CFG, str(tmp_path / "early"))
    assert side["tiles_written"] == 8
    east = [(128, 0, 128), (128, 128, 128)]
    assert calls == [("S1_P", east), ("S1_Q", east), ("S1_A", [(128, 128, 128)])]
    got = read_shards(tmp_path / "early" / "shards" / "32633_195_1951_2022Q2.parquet")
    doy = {k: _when(*md).timetuple().tm_yday for k, md in (("P", (4, 25)), ("Q", (5, 1)), ("A", (5, 5)))}
    north = [r >= 7806 for r in (int(sid.split("_")[2]) for sid in got["sample_id"])]
    assert got["s1_valid"].all()
    assert got["s1_doy"].tolist() == [[doy["P"], doy["Q"] if n else doy["A"]] for n in north]

    calls.clear()
    monkeypatch.setattr(ING, "_saturated", lambda top, i: False)  # read every scene over every kept tile
    full = ING.process_unit(unit, CFG, str(tmp_path / "full"))
    assert [sid for sid, _ in calls] == ["S1_P", "S1_Q", "S1_A", "S1_B", "S1_C"]
    assert full["shard"]["sha256"] == side["shard"]["sha256"]


def test_s1_is_not_read_when_s2_keeps_no_tile(tmp_path, scenes, monkeypatch):
    calls = []
    monkeypatch.setattr(ING, "read_s1_scene", lambda scene, *a, **k: calls.append(scene.scene_id))
    side = ING.process_unit(_unit([scenes["cloudy"]], [scenes["s1"]]), CFG, str(tmp_path))
    assert side["tiles_written"] == 0 and calls == []


# ------------------------------------------------------------------------ each COG block decoded once


def _block_units(scenes):
    """The 2 x 2 units (196..197, 1950..1951) over the scenes: 256-px units whose 10 m corner lies 178 px
    east and 36 px south of a corner of the scenes' 256-px blocks, so neighbouring units share blocks of
    every band."""
    out = []
    for uc in (196, 197):
        for ur in (1950, 1951):
            b = (2560.0 * uc, 2560.0 * ur, 2560.0 * (uc + 1), 2560.0 * (ur + 1))
            tiles = tuple((c, r) for c in range(uc * 4, uc * 4 + 4) for r in range(ur * 4, ur * 4 + 4))
            s2 = tuple(sorted((scenes[k] for k in "abc"), key=lambda s: (s.datetime, s.scene_id)))
            out.append(WorkUnit(f"32633_{uc}_{ur}_2022Q2", 32633, "2022Q2", b, tiles, s2, ()))
    return out


def _decode_spy(monkeypatch):
    import pipeline.read as R

    counts: dict = {}
    real = R.decode_block

    def spy(ds, key):
        counts[key] = counts.get(key, 0) + 1
        return real(ds, key)

    monkeypatch.setattr(R, "decode_block", spy)
    return counts


@pytest.mark.parametrize(
    "rows, squares, whole",
    [
        # serpentine within a 2 x 2 square; (2, 0) is in the next square; whole: one serpentine over all
        ([(0, 0), (1, 0), (0, 1), (1, 1), (2, 0)], [[(0, 0), (1, 0), (1, 1), (0, 1)], [(2, 0)]],
         [(0, 0), (1, 0), (2, 0), (1, 1), (0, 1)]),
        ([(-1, -1), (0, 0)], [[(-1, -1)], [(0, 0)]], [(-1, -1), (0, 0)]),  # floor division: -1 in square -1
        ([(3, 5)], [[(3, 5)]], [(3, 5)]),
    ],
)
def test_group_units_table(rows, squares, whole):
    units = [WorkUnit(f"32633_{c}_{r}_2022Q2", 32633, "2022Q2", (2560.0 * c, 2560.0 * r, 2560.0 * (c + 1),
                                                                  2560.0 * (r + 1)), (), (), ())
             for c, r in rows]
    assert [[ING.unit_cell(u, CFG) for u in g] for g in ING.group_units(units, 2, CFG)] == squares
    (one,) = ING.group_units(units, None, CFG)
    assert [ING.unit_cell(u, CFG) for u in one] == whole
    other = WorkUnit("32633_0_0_2022Q3", 32633, "2022Q3", units[0].bounds, (), (), ())  # another period
    assert len(ING.group_units([units[0], other], None, CFG)) == 2


def test_whole_tile_groups_follow_the_s2_tile(scenes):
    """Units of two Sentinel-2 tiles (block grids) never share a group; a unit seen by both takes the one
    with the smaller origin."""
    a = scenes["a"]
    moved = {k: AssetRef(v.href, (v.transform[0], 0.0, v.transform[2] + 109800.0, 0.0, v.transform[4],
                                  v.transform[5]), v.shape, v.nodata) for k, v in a.assets.items()}
    fields = {f: getattr(a, f) for f in a.__dataclass_fields__}
    east = type(a)(**{**fields, "assets": moved, "scene_id": "S2_EAST"})

    def unit(c, s2):
        b = (2560.0 * c, 2560.0 * 1951, 2560.0 * (c + 1), 2560.0 * 1952)
        return WorkUnit(f"32633_{c}_1951_2022Q2", 32633, "2022Q2", b, (), tuple(s2), ())

    us = [unit(195, [a]), unit(196, [a, east]), unit(240, [east]), unit(241, [east]), unit(197, [])]
    assert ING.s2_tile_origin(us[1]) == (499980.0, 5000040.0) and ING.s2_tile_origin(us[4]) is None
    groups = ING.group_units(us, None, CFG)
    assert sorted(sorted(u.unit_id for u in g) for g in groups) == [
        ["32633_195_1951_2022Q2", "32633_196_1951_2022Q2"],
        ["32633_197_1951_2022Q2"],
        ["32633_240_1951_2022Q2", "32633_241_1951_2022Q2"],
    ]


def test_each_block_is_decoded_once_per_group_and_outputs_do_not_change(tmp_path, scenes, monkeypatch):
    """Four units sharing COG blocks, processed as one group: every block any of them needs (SCL of every
    scene, bands of the chosen ones) is decoded exactly once; one unit per task decodes shared blocks again.
    Shards and sidecars are byte-identical either way, and to reading without a cache."""
    units = _block_units(scenes)
    (group,) = ING.group_units(units, None, CFG)
    assert ING.group_units(units, 2, CFG) == [group]  # one 2 x 2 square: the same group
    counts = _decode_spy(monkeypatch)
    rows = ING.make_process_group_fn(CFG, str(tmp_path / "g"))({"units": [u.to_json() for u in group]})
    assert [r["unit_id"] for r in rows] == [u.unit_id for u in group]
    assert all(r["tiles_written"] for r in rows)
    assert counts and set(counts.values()) == {1}, "a block was decoded twice"
    paths = {k.path.rsplit("/", 2)[-2:][1] for k in counts}
    assert {"SCL.tif", "B02.tif", "B05.tif", "B01.tif"} <= paths
    # rows count the bytes decoded: each block's pixels once
    assert sum(r["bytes_read"] for r in rows) > 0

    counts.clear()
    one = CFG.model_copy(update={"group_units": 1})
    for u in units:
        ING.make_process_group_fn(one, str(tmp_path / "one"))({"units": [u.to_json()]})
    assert max(counts.values()) > 1 and sum(counts.values()) > len(counts)  # shared blocks decoded again

    none = CFG.model_copy(update={"block_cache_mb": 0})
    for u in units:
        ING.make_process_group_fn(none, str(tmp_path / "none"))({"units": [u.to_json()]})
    for sub in ("shards", "units"):
        for f in sorted((tmp_path / "g" / sub).iterdir()):
            for other in ("one", "none"):
                assert (tmp_path / other / sub / f.name).read_bytes() == f.read_bytes(), (other, f.name)


def test_a_small_cache_evicts_and_stays_correct(tmp_path, scenes, monkeypatch):
    """A budget smaller than the group's blocks evicts the least recently used ones (decoded again when
    needed), with the same output."""
    units = _block_units(scenes)
    (group,) = ING.group_units(units, None, CFG)
    counts = _decode_spy(monkeypatch)
    tiny = CFG.model_copy(update={"block_cache_mb": 1})
    ING.make_process_group_fn(tiny, str(tmp_path / "t"))({"units": [u.to_json() for u in group]})
    assert max(counts.values()) > 1
    ING.make_process_group_fn(CFG, str(tmp_path / "g"))({"units": [u.to_json() for u in group]})
    for f in sorted((tmp_path / "g" / "shards").iterdir()):
        assert (tmp_path / "t" / "shards" / f.name).read_bytes() == f.read_bytes()


def test_group_crops_its_cache_to_the_units_still_to_come(tmp_path, scenes, monkeypatch):
    """Before each unit the group's cache keeps only what the units from it on cover: the cache holds less
    at its fullest than whole blocks would, no block is decoded twice, and the output is byte-identical."""
    import pipeline.read as R

    units = _block_units(scenes)
    (group,) = ING.group_units(units, None, CFG)
    peak = {"bytes": 0}
    real_get = R.BlockCache.get

    def get(self, *a):
        out = real_get(self, *a)
        peak["bytes"] = max(peak["bytes"], self.nbytes)
        return out

    monkeypatch.setattr(R.BlockCache, "get", get)
    counts = _decode_spy(monkeypatch)
    fn = ING.make_process_group_fn
    fn(CFG, str(tmp_path / "crop"))({"units": [u.to_json() for u in group]})
    cropped = peak["bytes"]
    assert counts and set(counts.values()) == {1}
    peak["bytes"] = 0
    monkeypatch.setattr(ING, "_pruner", lambda units, cache: lambda k: None)
    fn(CFG, str(tmp_path / "whole"))({"units": [u.to_json() for u in group]})
    assert 0 < cropped < 0.9 * peak["bytes"], (cropped, peak["bytes"])
    assert _files(tmp_path / "crop") == _files(tmp_path / "whole")


# --------------------------------------------------------------------------- compacted shard files


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_compacted_shards_are_cut_by_size_named_and_hold_every_row(tmp_path, scenes, monkeypatch):
    """shard_mb > 0: a group's rows are encoded into files cut once they reach shard_mb MiB (each of these
    units' own files are 22-29 KB, footer included, so one unit stays under 30 KiB and two pass it: cuts after
    every second unit), named after their first unit, each
    unit in its own row groups of ~ROW_GROUP_BYTES; the rows are exactly those of one shard per unit."""
    units = _block_units(scenes)
    (group,) = ING.group_units(units, None, CFG)
    ING.make_process_group_fn(CFG, str(tmp_path / "u"))({"units": [u.to_json() for u in group]})
    sizes = [(tmp_path / "u" / "shards" / f"{u.unit_id}.parquet").stat().st_size for u in group]
    assert all(22_000 < n < 29_000 for n in sizes), sizes  # the premise of the cut below
    cfg = CFG.model_copy(update={"shard_mb": 30 / 1024})
    rows = ING.make_process_group_fn(cfg, str(tmp_path / "c"))({"units": [u.to_json() for u in group]})
    names = sorted(p.name for p in (tmp_path / "c" / "shards").iterdir())
    assert names == sorted(f"{group[i].unit_id}.parquet" for i in (0, 2))
    files = [tmp_path / "c" / "shards" / f"{group[i].unit_id}.parquet" for i in (0, 2)]
    assert files[0].stat().st_size >= 30 * 1024  # cut once past the target
    assert sum(r["bytes_written"] for r in rows) == sum(f.stat().st_size for f in files)
    for f in files:
        assert pq.ParquetFile(f).metadata.num_row_groups == 2  # one per unit: 2 MiB of rows < 64 MiB
    # smaller row groups: 512 KiB of rows (~131 KiB a row in memory) -> at most 4 rows each
    monkeypatch.setattr(ING, "ROW_GROUP_BYTES", 512 * 1024)
    ING.make_process_group_fn(cfg, str(tmp_path / "rg"))({"units": [u.to_json() for u in group]})
    for f in sorted((tmp_path / "rg" / "shards").iterdir()):
        md = pq.ParquetFile(f).metadata
        assert md.num_row_groups > 2 and max(md.row_group(i).num_rows for i in range(md.num_row_groups)) <= 4
    fin = ING.finalize(units, cfg, str(tmp_path / "c"))
    m = fin["manifest"]
    assert [s["path"] for s in m["shards"]] == [f"shards/{n}" for n in names]
    ref = ING.finalize(units, CFG, str(tmp_path / "u"))["manifest"]
    assert m["rows"] == ref["rows"] == sum(r["tiles_written"] for r in rows) and len(ref["shards"]) == 4
    assert m["band_stats"] == ref["band_stats"]
    got, want = read_shards(tmp_path / "c" / "shards"), read_shards(tmp_path / "u" / "shards")
    order_got, order_want = np.argsort(got["sample_id"]), np.argsort(want["sample_id"])
    assert sorted(got["sample_id"]) == sorted(want["sample_id"])
    for k in ("s2_10m", "s2_20m", "s2_doy", "s1_valid"):
        np.testing.assert_array_equal(got[k][order_got], want[k][order_want], err_msg=k)


def _run_group(cfg, out, units) -> list[dict]:
    """One unit group through the ingest's per-task function, in this process."""
    return ING.make_process_group_fn(cfg, str(out))({"units": [u.to_json() for u in units]})


def _compacted_reference(scenes, out):
    """(units, compacting config with two units a file, their one group, the files of an uninterrupted run
    of it written to ``out``)."""
    units = _block_units(scenes)
    cfg = CFG.model_copy(update={"shard_mb": 30 / 1024})
    (group,) = ING.group_units(units, None, cfg)
    _run_group(cfg, out, group)
    ING.finalize(units, cfg, str(out))
    return units, cfg, group, _files(out)


def test_compacted_shards_are_idempotent_and_resume_byte_exact(tmp_path, scenes, monkeypatch):
    """A run killed after its first file (the third unit fails hard) leaves that file and the sidecars of
    its units only; resuming the pending units writes the rest, and the output equals an uninterrupted run
    byte for byte; running again writes nothing."""
    units, cfg, group, ref = _compacted_reference(scenes, tmp_path / "ref")

    real, seen = ING.unit_rows, []

    def dies_on_the_third(unit, c):
        seen.append(unit.unit_id)
        if len(seen) == 3:
            raise KeyboardInterrupt("killed")
        return real(unit, c)

    out = tmp_path / "run"
    monkeypatch.setattr(ING, "unit_rows", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt, match="killed"):
        _run_group(cfg, out, group)
    monkeypatch.setattr(ING, "unit_rows", real)
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"{group[0].unit_id}.parquet"]
    todo, done = ING.pending_units(units, cfg, str(out))
    assert sorted(u.unit_id for u in done) == sorted(u.unit_id for u in group[:2])
    (rest,) = ING.group_units(todo, None, cfg)
    rows = _run_group(cfg, out, rest)
    assert not any(r["skipped"] for r in rows)
    ING.finalize(units, cfg, str(out))
    assert _files(out) == ref
    again = _run_group(cfg, out, group)
    assert all(r["skipped"] for r in again) and _files(out) == ref


def test_a_unit_failing_in_an_open_file_leaves_no_spool_file(tmp_path, scenes, monkeypatch):
    """The open file streams to a temp file beside its destination: a unit that fails while it holds rows
    of earlier units drops it (the done file stays), so nothing but whole files is ever under shards/."""
    units = _block_units(scenes)
    cfg = CFG.model_copy(update={"shard_mb": 30 / 1024})
    (group,) = ING.group_units(units, None, cfg)
    real, seen = ING.unit_rows, []

    def dies_on_the_fourth(unit, c):
        seen.append(unit.unit_id)
        if len(seen) == 4:  # the second file is open with the third unit's rows
            raise RuntimeError("unit failed")
        return real(unit, c)

    monkeypatch.setattr(ING, "unit_rows", dies_on_the_fourth)
    with pytest.raises(RuntimeError, match="unit failed"):
        _run_group(cfg, tmp_path, group)
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [f"{group[0].unit_id}.parquet"]


@pytest.mark.parametrize("killed_at", [1, 2, 3])
def test_a_kill_between_a_files_writes_resumes_byte_exact(tmp_path, scenes, monkeypatch, killed_at):
    """The first compacted file holds two units: three writes (two sidecars, the file). A kill after any of
    them leaves either the whole file done or all of it to do, never one unit done and the other written
    into a second file (duplicate rows); the resumed output equals an uninterrupted run byte for byte."""
    units, cfg, group, ref = _compacted_reference(scenes, tmp_path / "ref")

    real, real_commit, writes = ING.write_bytes_atomic, ING.SpoolFile.commit, []

    def dies_after_n_writes(uri, data, storage):
        if len(writes) == killed_at:
            raise KeyboardInterrupt("killed")
        writes.append(uri)
        return real(uri, data, storage)

    def commit_or_die(spool):  # the file itself: published from its spool file
        if len(writes) == killed_at:
            raise KeyboardInterrupt("killed")
        writes.append(spool.uri)
        return real_commit(spool)

    out = tmp_path / "run"
    monkeypatch.setattr(ING, "write_bytes_atomic", dies_after_n_writes)
    monkeypatch.setattr(ING.SpoolFile, "commit", commit_or_die)
    with pytest.raises(KeyboardInterrupt, match="killed"):
        _run_group(cfg, out, group)
    monkeypatch.setattr(ING, "write_bytes_atomic", real)
    monkeypatch.setattr(ING.SpoolFile, "commit", real_commit)
    assert writes[-1].endswith(".json" if killed_at < 3 else ".parquet")  # killed after a sidecar / the file
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".")]  # no spool file left
    todo, done = ING.pending_units(units, cfg, str(out))
    assert len(done) in (0, 2), [u.unit_id for u in done]  # a file's units are done together
    (rest,) = ING.group_units(todo, None, cfg)
    _run_group(cfg, out, rest)
    ING.finalize(units, cfg, str(out))
    assert _files(out) == ref

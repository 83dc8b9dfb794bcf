"""Fault injection: inputs the ingest must reject, each with the reason it must give.

Single faults: :func:`truncate_cog` (opens, blocks unreadable), :func:`corrupt_cog` (not a TIFF),
:func:`item_missing_asset`, :func:`item_without_crs`, :func:`write_malformed_item`, and whole scenes that
leave nothing to keep (:func:`write_uniform_scene`: all cloud or all nodata). :func:`make_bad_inputs`
writes one of each beside a good scene, with the expected reject reason per item.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline import storage as st
from pipeline.config import StorageConfig
from pipeline.synthetic.archive import make_archive
from pipeline.synthetic.items import item_collection, s2_item_id
from pipeline.synthetic.render import render_s2
from pipeline.synthetic.scenes import write_json, write_s2_scene, write_scene_to
from pipeline.synthetic.surface import make_landcover
from pipeline.synthetic.tile import TileGrid, default_tile, seeded_rng

UTC = _dt.UTC


def truncate_cog(src: str | PathLike, dst: str | PathLike, keep: float = 0.6) -> Path:
    """Copy the first ``keep`` fraction of a COG's bytes to ``dst``: headers and IFDs (at the front of a COG)
    survive, so the file still *opens*, but reading full-resolution blocks fails — like an interrupted upload.
    """
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: max(16, int(len(data) * keep))])
    return dst


def corrupt_cog(dst: str | PathLike, size: int = 65536, seed: int = 0) -> Path:
    """Write ``size`` seeded garbage bytes named like a COG (not a TIFF at all: opening it fails)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(seeded_rng(seed, "garbage").integers(0, 256, size, dtype=np.uint8).tobytes())
    return dst


def item_missing_asset(item: dict, key: str = "red", new_id: str | None = None) -> dict:
    """A copy of ``item`` without asset ``key`` (a required band: reject reason ``missing_asset``)."""
    out = copy.deepcopy(item)
    out["assets"].pop(key)
    if new_id:
        out["id"] = new_id
    return out


def item_without_crs(item: dict, new_id: str | None = None) -> dict:
    """A copy of ``item`` with every ``proj:epsg`` / ``proj:code`` / ``proj:wkt2`` / ``proj:projjson`` removed
    (item and assets): reject reason ``missing_crs``."""
    out = copy.deepcopy(item)
    for d in [out["properties"], *out["assets"].values()]:
        for k in ("proj:epsg", "proj:code", "proj:wkt2", "proj:projjson"):
            d.pop(k, None)
    if new_id:
        out["id"] = new_id
    return out


def write_malformed_item(dst: str | PathLike, item: dict | None = None) -> Path:
    """Write a syntactically broken item JSON (a valid item cut mid-way): reject reason ``malformed_item``."""
    text = json.dumps(item or {"type": "Feature", "stac_version": "1.0.0", "id": "malformed", "assets": {}})
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(text[: len(text) // 2])
    return dst


class _Uniform(NamedTuple):
    """What a uniform scene of one kind is."""

    dx: float  # metres east of default_tile, so it shares grid cells with no other scene written here
    cloud_frac: float
    edge: str
    when: _dt.datetime  # default date


_UNIFORM = {
    "cloud": _Uniform(30720.0, 1.0, "none", _dt.datetime(2022, 7, 1, 10, 0, tzinfo=UTC)),
    "nodata": _Uniform(61440.0, 0.0, "all", _dt.datetime(2022, 7, 3, 10, 0, tzinfo=UTC)),
}


def write_uniform_scene(
    output: str | PathLike,
    kind: str,
    *,
    epsg: int = 32633,
    size_px: int = 516,
    when: _dt.datetime | None = None,
    blocksize: int | None = None,
    seed: int = 0,
    storage: StorageConfig | None = None,
) -> dict:
    """An S2 scene with nothing to keep; returns its item. ``kind``:

    ``"cloud"``: the SCL is cloud (8/9) everywhere, every tile it covers is rejected ``all_cloud``
    (reflectance is bright cloud, never 0); 30.72 km east of :func:`default_tile`.
    ``"nodata"``: 0 (nodata) in every band and the SCL, its tiles are rejected ``all_nodata``;
    61.44 km east of :func:`default_tile`.
    """
    if kind not in _UNIFORM:
        raise ValueError(f"kind must be one of {tuple(_UNIFORM)}, got {kind!r}")
    u = _UNIFORM[kind]
    when = when or u.when
    t = default_tile(epsg, size_px)
    tile = TileGrid(t.name, epsg, t.x0 + u.dx, t.y0, size_px)
    lc = make_landcover(tile, seed)
    rend = render_s2(
        tile, lc, when, seed=seed, scene_key=kind, cloud_frac=u.cloud_frac, edge=u.edge, boa="legacy"
    )
    item_id = s2_item_id(tile, when).replace("_L2A", f"_ALL{kind.upper()}_L2A")
    return write_scene_to(
        output,
        lambda local, uri: write_s2_scene(
            local,
            uri,
            tile,
            when,
            rend.bands_dn,
            rend.scl,
            boa="legacy",
            blocksize=blocksize,
            item_id=item_id,
        ),
        storage=storage,
    )


def write_all_cloud_scene(output: str | PathLike, **kw) -> dict:
    """:func:`write_uniform_scene` of kind ``"cloud"`` (same keywords)."""
    return write_uniform_scene(output, "cloud", **kw)


def write_all_nodata_scene(output: str | PathLike, **kw) -> dict:
    """:func:`write_uniform_scene` of kind ``"nodata"`` (same keywords)."""
    return write_uniform_scene(output, "nodata", **kw)


@dataclass(frozen=True)
class BadInputs:
    """What :func:`make_bad_inputs` wrote: a folder of item JSON files (good and bad) + expectations."""

    root: str
    items_dir: str  # one <id>.json per item (and one malformed file)
    items: str  # ItemCollection of every *parseable* item (the malformed one cannot be inside it)
    expected: Mapping[str, str]  # item id (file name for the malformed one) -> reject reason
    good: tuple[str, ...]  # ids of items that must ingest fine


def make_bad_inputs(
    output: str | PathLike,
    *,
    seed: int = 0,
    size_px: int = 516,
    epsg: int = 32633,
    storage: StorageConfig | None = None,
) -> BadInputs:
    """One of every bad input beside one good scene, for reject tests.

    Writes under ``output``: a good S2 scene; items pointing at a truncated COG and at a garbage COG
    (``unreadable_cog``), an item missing its red asset (``missing_asset``), one without CRS
    (``missing_crs``), one with an href escaping via ``..`` (``bad_uri``), one with an ``ftp://`` href
    (``bad_uri``), a malformed JSON file (``malformed_item``), an all-cloud scene (``all_cloud``) and an
    all-nodata scene (``all_nodata``). ``items_dir`` holds one JSON file per item; ``items`` an
    ItemCollection of the parseable ones. ``expected`` maps item id -> reason (for the malformed file,
    which has no readable id, its file name ``BAD_MALFORMED_L2A.json``).

    The truncated / garbage items are copies of the good item (same tile and date) with their red href
    swapped, so the executor meets an unreadable scene inside a unit that also has a good one. The
    all-cloud / all-nodata scenes sit on their own grid cells (see :func:`write_uniform_scene`), so their
    rejects come at tile/unit level with sample/unit ids, every planned tile of theirs with that reason.
    """
    storage = storage or StorageConfig()
    root_uri = st.output_root(output, storage)
    with st.staged(root_uri, storage) as local_root:
        sub = local_root / "_scenes"
        good = make_archive(
            sub,
            scenes=1,
            s1_scenes=0,
            seed=seed,
            size_px=size_px,
            epsg=epsg,
            boa_modes=("legacy",),
            cloud_fractions=(0.0,),
            edges=("none",),
        )
        good_item = json.loads(Path(good.items).read_text())["features"][0]
        good_item = rebase_path(good_item, local_root, root_uri)
        cloud = rebase_path(
            write_uniform_scene(sub, "cloud", epsg=epsg, size_px=size_px, seed=seed), local_root, root_uri
        )
        nodata = rebase_path(
            write_uniform_scene(sub, "nodata", epsg=epsg, size_px=size_px, seed=seed), local_root, root_uri
        )
        gid = good_item["id"]
        red_local = Path(good.scene(gid).hrefs["B04"])
        trunc = truncate_cog(red_local, local_root / "bad" / "truncated_B04.tif")
        garbage = corrupt_cog(local_root / "bad" / "garbage_B04.tif", seed=seed)

        def with_red(new_id: str, href: str) -> dict:
            it = copy.deepcopy(good_item)
            it["id"] = new_id
            it["assets"]["red"]["href"] = href
            return it

        bad = {
            "BAD_TRUNCATED_L2A": (
                with_red("BAD_TRUNCATED_L2A", st.join(root_uri, "bad/" + trunc.name)),
                "unreadable_cog",
            ),
            "BAD_GARBAGE_L2A": (
                with_red("BAD_GARBAGE_L2A", st.join(root_uri, "bad/" + garbage.name)),
                "unreadable_cog",
            ),
            "BAD_MISSING_ASSET_L2A": (
                item_missing_asset(good_item, "red", "BAD_MISSING_ASSET_L2A"),
                "missing_asset",
            ),
            "BAD_NO_CRS_L2A": (item_without_crs(good_item, "BAD_NO_CRS_L2A"), "missing_crs"),
            "BAD_DOTDOT_L2A": (
                with_red("BAD_DOTDOT_L2A", st.join(root_uri, "bad/../../../etc/B04.tif")),
                "bad_uri",
            ),
            "BAD_SCHEME_L2A": (with_red("BAD_SCHEME_L2A", "ftp://example.invalid/B04.tif"), "bad_uri"),
            cloud["id"]: (cloud, "all_cloud"),
            nodata["id"]: (nodata, "all_nodata"),
        }
        items_dir = local_root / "items"
        parseable = [good_item] + [it for it, _ in bad.values()]
        for it in parseable:
            write_json(it, items_dir / f"{it['id']}.json")
        write_malformed_item(items_dir / "BAD_MALFORMED_L2A.json", good_item)
        (local_root / "_scenes" / "items.json").unlink()
        write_json(item_collection(parseable), local_root / "items.json")
    expected = {k: reason for k, (_, reason) in bad.items()}
    expected["BAD_MALFORMED_L2A.json"] = "malformed_item"
    return BadInputs(root_uri, st.join(root_uri, "items"), st.join(root_uri, "items.json"), expected, (gid,))


def rebase_path(item: dict, local_root: Path, root_uri: str) -> dict:
    """A copy of ``item`` whose hrefs under ``local_root`` point to the same files under ``root_uri``."""
    item = copy.deepcopy(item)
    for a in item["assets"].values():
        a["href"] = st.join(root_uri, Path(a["href"]).relative_to(local_root).as_posix())
    return item

"""The synthetic benchmark converter: listing and rendering chips of an archive's truth, its three tasks, and
the property that makes it a fair test of representation learning (mean spectra do not separate the classes,
texture, time series and SAR do)."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest
from pydantic import ValidationError

from pipeline import synthetic
from pipeline.convert import get
from pipeline.convert.synthetic import CLASSES, SyntheticOptions
from pipeline.convert.writer import write_benchmark
from pipeline.shards import IGNORE_INDEX, labels_to_arrays
from pipeline.synthetic.surface import LANDCOVER_CLASSES
from pipeline.synthetic.textures import render_chip

FS = fsspec.filesystem("file")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Truth only (no scenes): two 384-px tiles, 288 chips of 32 px."""
    return synthetic.make_archive(tmp_path_factory.mktemp("synth_bench"), scenes=0, s1_scenes=0, seed=3,
                                  size_px=384, epsg=[32633, 32634])


def _bench(**opts):
    b = get("synthetic")
    o = SyntheticOptions(**opts)
    return b.resolved(o), o


def test_options_fail_naming_the_field():
    with pytest.raises(ValidationError, match="tile_px must be even"):
        SyntheticOptions(tile_px=33)
    with pytest.raises(ValidationError, match="val_fraction \\+ test_fraction"):
        SyntheticOptions(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValidationError, match="task"):
        SyntheticOptions(task="detection")
    with pytest.raises(ValidationError, match="colour"):
        SyntheticOptions.model_validate({"colour": 1})


def test_resolved_facts_follow_the_task():
    assert _bench()[0].info.task == "classification" and _bench()[0].max_slots == 4
    b, _ = _bench(task="change", tile_px=16)
    assert (b.info.task, b.info.classes, b.max_slots, b.tile_px) == ("change", ("no change", "change"), 2, 16)
    b, _ = _bench(task="segmentation", slots=3)
    assert (b.info.classes, b.max_slots) == (CLASSES, 3)


def test_resolved_is_identity_without_configure():
    import dataclasses

    plain = dataclasses.replace(get("synthetic"), configure=None)
    assert plain.resolved(SyntheticOptions(task="change")) is plain


def test_not_an_archive(tmp_path):
    b, o = _bench()
    with pytest.raises(FileNotFoundError, match="truth/classes.json"):
        b.list_items(str(tmp_path), o, FS)
    (tmp_path / "truth").mkdir()
    (tmp_path / "truth" / "classes.json").write_text(json.dumps({"classes": [{"id": 1, "name": "lava"}]}))
    with pytest.raises(ValueError, match="lava"):
        b.list_items(str(tmp_path), o, FS)


def test_unreadable_truth_is_rejected(archive, tmp_path):
    import shutil

    shutil.copytree(archive.root, tmp_path / "a")
    bad = sorted((tmp_path / "a" / "truth").glob("*_landcover.tif"))[0]
    bad.write_bytes(b"not a tiff")
    b, o = _bench(task="segmentation")
    items, rejects = b.list_items(str(tmp_path / "a"), o, FS)
    tile = bad.name.removesuffix("_landcover.tif")
    assert [(r.id, r.reason) for r in rejects] == [(tile, "unreadable_file")]
    assert len(items) == 144  # the other tile's 12 x 12 chips


def test_listing_classification_pure_and_balanced(archive):
    b, o = _bench(purity=0.6)
    items, rejects = b.list_items(archive.root, o, FS)
    assert rejects == [] and items == sorted(items, key=lambda i: i.id)
    for it in items:
        lc = _truth(archive, it)
        assert (lc == it.extra["label"] + 1).mean() >= 0.6
    counts = np.bincount([it.extra["label"] for it in items], minlength=len(CLASSES))
    b2, o2 = _bench(per_class=3)
    picked = b2.list_items(archive.root, o2, FS)[0]
    bal = np.bincount([it.extra["label"] for it in picked], minlength=len(CLASSES))
    np.testing.assert_array_equal(bal, np.minimum(counts, 3))
    # the split is a seeded hash of the id: same on a re-listing, different seed -> different split
    again = b.list_items(archive.root, o, FS)[0]
    assert [(i.id, i.split) for i in items] == [(i.id, i.split) for i in again]
    other = b.list_items(archive.root, SyntheticOptions(seed=1), FS)[0]
    assert [i.split for i in items] != [i.split for i in other]
    assert {i.split for i in items} == {"train", "val", "test"}


def _truth(archive, item):
    import rasterio

    with rasterio.open(item.files["truth"]) as r:
        lc = r.read(1)
    r, c, n = item.extra["row"], item.extra["col"], 32
    return lc[r * n:(r + 1) * n, c * n:(c + 1) * n]


def test_samples_of_each_task(archive, tmp_path):
    for task, t in (("classification", 4), ("segmentation", 4), ("change", 2)):
        b, o = _bench(task=task, per_class=2)
        items = b.list_items(archive.root, o, FS)[0][:6]
        samples = [s for it in items for s in b.read_item(it, o, FS)]
        again = [s for it in items for s in b.read_item(it, o, FS)]
        for s, s2, it in zip(samples, again, items, strict=True):
            assert s.s2_10m.shape == (t, 4, 32, 32) and s.s2_20m.shape == (t, 8, 16, 16)
            assert s.s2_10m.dtype == np.uint16 and s.s2_10m.min() >= 1 and s.s1.shape == (t, 2, 32, 32)
            assert np.all(np.diff(s.s2_doy) > 0) and s.s1_valid.all() and np.isfinite(s.lon)
            np.testing.assert_array_equal(s.s2_10m, s2.s2_10m)  # deterministic
            lc = _truth(archive, it)
            if task == "classification":
                assert s.label == it.extra["label"]
            elif task == "segmentation":
                np.testing.assert_array_equal(s.label, lc.astype(np.int64) - 1)
            else:
                assert s.label.dtype == np.uint8 and set(np.unique(s.label)) <= {0, 1}
        man = write_benchmark(str(tmp_path / task), samples, b.info, tile_px=32, max_slots=t, s2_20m_gsd=20.0)
        assert man["benchmark"]["task"] == task and man["counts"]["written"] == 6
        lab = labels_to_arrays_of(tmp_path / task)
        assert lab["info"] == b.info
        if task != "classification":
            assert lab["label"].max() < IGNORE_INDEX


def labels_to_arrays_of(path):
    import pyarrow.parquet as pq

    return labels_to_arrays(pq.read_table(sorted((path / "shards").glob("*.parquet"))[0]))


def test_change_pairs_change_texture_where_labelled(archive):
    b, o = _bench(task="change", change_fraction=1.0)
    items = b.list_items(archive.root, o, FS)[0][:8]
    for it in items:
        (s,) = b.read_item(it, o, FS)
        assert 0.1 < s.label.mean() < 0.5  # a ~30 % blob changed on every chip
        # the change keeps the mean spectrum: chip means of both dates agree within 10 % (a blob cut out of a
        # smooth texture has its own mean; the archive's class spectra differ by 2-3x, e.g. water vs. soil)
        m = s.s2_10m.astype(np.float64).mean((2, 3))
        np.testing.assert_allclose(m[0], m[1], rtol=0.1)


# ------------------------------------------------------------------------------------ fairness


def _ridge_oa(f_tr, y_tr, f_te, y_te, lam=1e-2):
    """Linear classifier (one-vs-rest ridge on standardised features + bias): test overall accuracy."""
    mu, sd = f_tr.mean(0), f_tr.std(0) + 1e-9
    a = np.c_[(f_tr - mu) / sd, np.ones(len(f_tr))]
    b = np.c_[(f_te - mu) / sd, np.ones(len(f_te))]
    onehot = np.eye(int(y_tr.max()) + 1)[y_tr]
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ onehot)
    return float(((b @ w).argmax(1) == y_te).mean())


@pytest.fixture(scope="module")
def pure_chips():
    """40 single-class chips per class, 4 dates each: s2 (N, 4, 12, 32, 32) float, s1 (N, 4, 2, 32, 32), y."""
    rng = np.random.default_rng(0)
    s2, s1, y = [], [], []
    for k, cid in enumerate(sorted(LANDCOVER_CLASSES)):
        for _ in range(40):
            doys = np.sort(rng.integers(1, 366, 4))
            c = render_chip(np.full((4, 32, 32), cid, np.uint8), doys, rng)
            s2.append(c.s2.astype(np.float64))
            s1.append(c.s1)
            y.append(k)
    order = rng.permutation(len(y))
    return np.stack(s2)[order], np.stack(s1)[order], np.asarray(y)[order]


def _texture(x):
    """Hand-made texture features of (N, ..., H, W): log power spectrum at the lowest spatial frequencies
    (periods of 32 down to 6 px, both diagonals), per leading channel."""
    p = np.abs(np.fft.rfft2(x - x.mean((-2, -1), keepdims=True))) ** 2
    low = np.concatenate([p[..., :5, :5], p[..., -4:, :5]], axis=-2)  # (..., 9, 5)
    return np.log1p(low.reshape(len(x), -1))


def test_mean_spectra_do_not_separate_the_classes(pure_chips):
    """The benchmark's defining property, in numbers: a linear classifier on mean spectra (every band, every
    date, S2 and S1) is near chance (1/7 = 14 %); the texture of one date separates the five classes a
    single date can tell apart, and texture over the dates + S1 separates all seven."""
    s2, s1, y = pure_chips
    n = len(y) * 2 // 3
    mean_feats = np.c_[s2.mean((-2, -1)).reshape(len(y), -1), s1.mean((-2, -1)).reshape(len(y), -1)]
    oa_mean = _ridge_oa(mean_feats[:n], y[:n], mean_feats[n:], y[n:])
    assert oa_mean < 0.30, oa_mean
    one_date = _texture(s2[:, 0, 7])  # B08 of the first date
    oa_one = _ridge_oa(one_date[:n], y[:n], one_date[n:], y[n:])
    nir = s2[:, :, 7]
    temporal = np.abs(np.diff(nir, axis=1)).mean((-2, -1))  # (N, 3) pixel change between dates
    full = np.c_[one_date, temporal, _texture(s1[:, 0, 0])]
    oa_full = _ridge_oa(full[:n], y[:n], full[n:], y[n:])
    assert oa_one > 0.55, oa_one  # two pairs need the time series / S1: ceiling 5/7 = 71 %
    assert oa_full > 0.85, oa_full
    assert oa_full > oa_one + 0.1

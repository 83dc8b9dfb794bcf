"""pipeline.storage: URI rules, client settings from StorageConfig, atomic writes, retries on a flaky S3."""

from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio

from bench._s3proxy import FlakyProxy
from pipeline.config import StorageConfig
from pipeline.storage import (
    BadURIError,
    SpoolFile,
    absolute,
    check_uri,
    exists,
    filesystem,
    gdal_options,
    gdal_path,
    is_transient,
    list_names,
    output_root,
    rasterio_env,
    read_bytes,
    read_many,
    redact,
    staged,
    storage_options,
    upload_tree,
    write_bytes_atomic,
)

ST = StorageConfig()


@pytest.mark.parametrize(
    "uri", ["s3://bucket/a/b.tif", "/abs/path/x.tif", "rel/x.json", "file:///tmp/x", "s3://b/a..b/c.tif"]
)
def test_allowed_uris(uri):
    assert check_uri(uri, ST) == uri


@pytest.mark.parametrize(
    "uri, match",
    [
        ("http://host/x.tif", "scheme 'http' not allowed"),
        ("gs://bucket/x.tif", "scheme 'gs' not allowed"),
        ("s3://bucket/../other/x.tif", r"'\.\.' path segment"),
        ("/data/archive/../../etc/passwd", r"'\.\.' path segment"),
        ("..\\windows\\x.tif", r"'\.\.' path segment"),
        ("s3:///key-without-bucket", "without a bucket"),
        ("", "empty URI"),
    ],
)
def test_rejected_uris(uri, match):
    with pytest.raises(BadURIError, match=match):
        check_uri(uri, ST)


def test_allowed_schemes_are_configurable():
    with pytest.raises(BadURIError, match="scheme 's3' not allowed"):
        check_uri("s3://b/k", StorageConfig(allowed_schemes=("file",)))


def test_absolute_resolves_local_paths_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute("w/enc.safetensors") == str(tmp_path / "w" / "enc.safetensors")
    assert absolute("/x/y") == "/x/y"
    for uri in ("s3://b/k.safetensors", "file:///x/y", "gs://b/k"):
        assert absolute(uri) == uri


def test_redact_drops_userinfo_and_query():
    assert redact("https://user:pw@host:9000/b/k?X-Amz-Signature=abc") == "https://host:9000/b/k"
    assert redact("s3://bucket/key") == "s3://bucket/key"


def test_gdal_path():
    assert gdal_path("s3://b/k/x.tif") == "/vsis3/b/k/x.tif"
    assert gdal_path("file:///tmp/x.tif") == "/tmp/x.tif"
    assert gdal_path("/tmp/x.tif") == "/tmp/x.tif"


def test_gdal_options_from_config(monkeypatch):
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(k, raising=False)
    o = gdal_options(
        StorageConfig(
            endpoint_url="http://127.0.0.1:9000",
            region="eu-central-1",
            anonymous=True,
            requester_pays=True,
            max_retries=5,
        )
    )
    assert o["AWS_S3_ENDPOINT"] == "127.0.0.1:9000" and o["AWS_HTTPS"] == "NO"
    assert o["AWS_VIRTUAL_HOSTING"] == "FALSE" and o["AWS_REGION"] == "eu-central-1"
    assert o["AWS_NO_SIGN_REQUEST"] == "YES" and o["AWS_REQUEST_PAYER"] == "requester"
    assert o["GDAL_HTTP_MAX_RETRY"] == "5" and float(o["GDAL_HTTP_RETRY_DELAY"]) > 0
    plain = gdal_options(StorageConfig())
    assert "AWS_S3_ENDPOINT" not in plain and "AWS_NO_SIGN_REQUEST" not in plain
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.example.org")
    assert gdal_options(StorageConfig())["AWS_HTTPS"] == "YES"


def test_storage_options_never_hold_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-not-to-leak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-DO-NOT-LOG")
    st = StorageConfig(
        endpoint_url="http://127.0.0.1:9000", anonymous=True, requester_pays=True, max_retries=7
    )
    o = storage_options(st)
    assert o["anon"] is True and o["requester_pays"] is True
    assert o["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9000"
    assert o["config_kwargs"]["retries"] == {"max_attempts": 8, "mode": "adaptive"}
    blob = repr(o) + repr(gdal_options(st))
    assert "testing-secret-DO-NOT-LOG" not in blob and "AKIA-not-to-leak" not in blob
    fs, path = filesystem("s3://bucket/key", st)
    assert path == "bucket/key" and fs.retries == 7


@pytest.mark.parametrize(
    "msg, transient",
    [
        ("HTTP response code: 503", True),
        ("CURL error: Failed to connect to 127.0.0.1 port 9", True),
        ("Operation timed out after 30000 milliseconds", True),
        ("SlowDown: Please reduce your request rate", True),
        ("We encountered an internal error. Please try again.", True),
        ("The specified key does not exist.", False),
        ("TIFFReadEncodedTile() failed.", False),
        ("TIFFFillTile: Read error at row 4294967295, col 500, tile 3", False),
        ("An error occurred (InternalError) when calling the GetObject operation", True),
    ],
)
def test_is_transient(msg, transient):
    assert is_transient(OSError(msg)) is transient


def test_atomic_local_write(tmp_path):
    uri = str(tmp_path / "d" / "x.bin")
    assert write_bytes_atomic(uri, b"one", ST) == 3
    write_bytes_atomic(uri, b"two!", ST)
    assert read_bytes(uri, ST) == b"two!" and exists(uri, ST)
    assert os.listdir(tmp_path / "d") == ["x.bin"]  # no temp file left behind
    assert list_names(str(tmp_path / "d"), ST, ".bin") == ["x.bin"]
    assert list_names(str(tmp_path / "none"), ST) == []


def _spool(uri: str, data: bytes) -> SpoolFile:
    sp = SpoolFile(uri, ST)
    with open(sp.path, "wb") as f:
        f.write(data)
    return sp


def test_spool_file_appears_whole_on_commit_and_never_on_discard(tmp_path, s3_server, s3_bucket):
    import hashlib

    for root in (str(tmp_path / "d"), f"s3://{s3_bucket}/spool"):
        uri = f"{root}/x.bin"
        sp = _spool(uri, b"0123456789")
        assert not exists(uri, ST)  # nothing visible while the file is written
        if root.startswith("/"):  # local: a temp name beside the destination (cleared after a kill)
            assert os.path.dirname(sp.path) == root and os.path.basename(sp.path).startswith(".x.bin.")
        assert sp.digest() == (10, hashlib.sha256(b"0123456789").hexdigest())
        sp.commit()
        assert read_bytes(uri, ST) == b"0123456789" and not os.path.exists(sp.path)
        dropped = _spool(f"{root}/y.bin", b"never")
        dropped.discard()
        assert not os.path.exists(dropped.path) and not exists(f"{root}/y.bin", ST)
        assert list_names(root, ST, ".bin") == ["x.bin"]


def test_s3_round_trip(s3_server, s3_bucket):
    uri = f"s3://{s3_bucket}/p/x.json"
    assert not exists(uri, ST)
    write_bytes_atomic(uri, b"{}", ST)
    assert read_bytes(uri, ST) == b"{}" and exists(uri, ST)
    assert list_names(f"s3://{s3_bucket}/p", ST, ".json") == ["x.json"]
    uris = [f"s3://{s3_bucket}/p/{i}.json" for i in range(5)]
    for i, u in enumerate(uris):
        write_bytes_atomic(u, str(i).encode(), ST)
    assert read_many(list(reversed(uris)), ST) == [b"4", b"3", b"2", b"1", b"0"]
    assert read_many(uris[:1], ST) == [b"0"] and read_many([], ST) == []
    with pytest.raises(FileNotFoundError):
        read_many([f"s3://{s3_bucket}/p/none.json"], ST)


@pytest.mark.parametrize(
    ("uri", "want"),
    [
        ("s3://b/prefix/", "s3://b/prefix"),
        ("s3://b", "s3://b"),
        ("rel/out", os.path.join("{cwd}", "rel", "out")),
        ("file://{tmp}/x/../y", os.path.join("{tmp}", "y")),
        ("~/out", os.path.join("{home}", "out")),
    ],
)
def test_output_root(uri, want, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    tmp = str(tmp_path.resolve())
    fmt = dict(cwd=tmp, tmp=tmp, home=str((tmp_path / "home").resolve()))
    assert output_root(uri.format(**fmt), ST) == want.format(**fmt)


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("gs://b/x", r"unsupported output URI 'gs://b/x': use a local path or s3://bucket/prefix"),
        ("https://user:pw@host/x", r"unsupported output URI 'https://host/x'"),
        ("s3:///x", "s3 URI without a bucket"),
        ("s3://b/a/../c", "'..' path segment"),
    ],
)
def test_output_root_rejects(uri, match):
    with pytest.raises(BadURIError, match=match):
        output_root(uri, ST)


def test_staged_local_writes_in_place(tmp_path):
    root = output_root(tmp_path / "new" / "root", ST)
    with staged(root, ST) as d:
        assert str(d) == root and d.is_dir()
        (d / "a" / "b.txt").parent.mkdir()
        (d / "a" / "b.txt").write_text("x")
    assert (tmp_path / "new/root/a/b.txt").read_text() == "x"


def test_staged_s3_uploads_on_success_only(s3_server, s3_bucket):
    root = output_root(f"s3://{s3_bucket}/tree/", ST)
    with staged(root, ST) as d:
        local = d
        (d / "z.txt").write_text("z")
        (d / "sub").mkdir()
        (d / "sub" / "a.bin").write_bytes(b"\x00\x01")
        assert not exists(f"{root}/z.txt", ST)  # nothing is visible before the block ends
    assert not local.exists()  # the staging directory is gone
    assert read_bytes(f"{root}/z.txt", ST) == b"z" and read_bytes(f"{root}/sub/a.bin", ST) == b"\x00\x01"
    with pytest.raises(RuntimeError, match="render failed"):
        with staged(f"s3://{s3_bucket}/failed", ST) as d:
            local = d
            (d / "half.txt").write_text("half")
            raise RuntimeError("render failed")
    assert not local.exists() and list_names(f"s3://{s3_bucket}/failed", ST) == []


def test_upload_tree_is_sorted_and_complete(s3_server, s3_bucket, tmp_path):
    for rel in ("b/2.txt", "a.txt", "b/1.txt", "c/d/e.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    got = upload_tree(tmp_path, f"s3://{s3_bucket}/t", ST)
    want = [f"s3://{s3_bucket}/t/{r}" for r in ("a.txt", "b/1.txt", "b/2.txt", "c/d/e.txt")]
    assert got == want
    assert [read_bytes(u, ST).decode() for u in want] == ["a.txt", "b/1.txt", "b/2.txt", "c/d/e.txt"]


def _cog(path):
    from rasterio.transform import from_origin

    a = (np.arange(512 * 512) % 5000).astype("uint16").reshape(512, 512)
    with rasterio.open(
        path,
        "w",
        driver="COG",
        width=512,
        height=512,
        count=1,
        dtype="uint16",
        crs="EPSG:32633",
        transform=from_origin(500000, 5000000, 10, 10),
        blocksize=256,
    ) as d:
        d.write(a, 1)
    return a


def test_transient_errors_are_retried_by_both_clients(s3_server, s3_bucket, tmp_path):
    """Behind a proxy that answers 503 SlowDown to the first request of every object, s3fs writes and
    reads and GDAL range reads all succeed (retried by the clients); with retries off GDAL fails."""
    a = _cog(tmp_path / "x.tif")
    with FlakyProxy(s3_server["endpoint_url"], fail_first=1) as proxy:
        st = StorageConfig(endpoint_url=proxy.url, max_retries=3)
        uri = f"s3://{s3_bucket}/flaky/x.tif"
        write_bytes_atomic(uri, (tmp_path / "x.tif").read_bytes(), st)
        assert read_bytes(uri, st) == (tmp_path / "x.tif").read_bytes()
        with rasterio_env(st), rasterio.open(gdal_path(uri)) as ds:
            np.testing.assert_array_equal(ds.read(1, window=((256, 512), (0, 256))), a[256:, :256])
        assert proxy.failed >= 3
        uri2 = f"s3://{s3_bucket}/flaky/y.tif"
        write_bytes_atomic(uri2, (tmp_path / "x.tif").read_bytes(), st)
        no_retry = StorageConfig(endpoint_url=proxy.url, max_retries=0)
        with rasterio_env(no_retry), pytest.raises(rasterio.errors.RasterioIOError) as e:
            rasterio.open(gdal_path(f"s3://{s3_bucket}/flaky/y.tif")).read(1)
        assert is_transient(e.value), str(e.value)

"""Object storage access from a :class:`~pipeline.config.StorageConfig`: one place for every client.

Three clients read and write the same URIs and must agree on endpoint, region, signing and retries:

* fsspec / s3fs (shards, manifests, item JSON): :func:`storage_options`, :func:`filesystem`;
* GDAL through rasterio (COG range reads via ``/vsis3/``): :func:`gdal_options`, :func:`rasterio_env`,
  :func:`gdal_path`;
* the job itself: :func:`check_uri` (allowed schemes only, no ``..`` escapes), :func:`write_bytes_atomic`,
  :class:`SpoolFile` (a large object streamed to a local file, then published whole);
  writers of whole trees (the synthetic archive): :func:`output_root`, :func:`staged`, :func:`upload_tree`.

Unset fields fall back to the standard AWS variables (``AWS_ENDPOINT_URL``, ``AWS_REGION``/
``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``...). Credentials are *never* read into, returned by, or
logged from this module: every client picks them up from the environment / profile / instance role
itself, so nothing derived here (options, logs, manifests) can leak them. :func:`redact` strips
``user:password@`` from URLs that are shown to people.

Transient errors (throttling, 5xx, resets) are retried by the clients: s3fs/botocore with
``retries`` + botocore ``max_attempts`` (adaptive mode), GDAL with ``GDAL_HTTP_MAX_RETRY`` /
``GDAL_HTTP_RETRY_DELAY`` (GDAL retries 429/500/502/503/504 and connection failures). What still
fails after that is raised as :class:`TransientIOError` by the readers so Ray Data retries the task.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import fsspec

from pipeline.config import StorageConfig


class BadURIError(ValueError):
    """A URI with a scheme outside ``allowed_schemes`` or a ``..`` path segment."""


class TransientIOError(IOError):
    """A storage error worth retrying (throttling, 5xx, connection reset) that survived client retries."""


_TRANSIENT = re.compile(
    r"HTTP (response )?code:? ?(429|500|502|503|504)|[Ss]tatus[ _]?[Cc]ode:? ?(429|500|502|503|504)|"
    r"\((429|500|502|503|504)\)|"
    r"timed? ?out|Timeout|Connection (reset|refused|aborted)|Couldn't connect|Could not connect|"
    r"Failed to connect|SlowDown|"
    r"Could not resolve|Recv failure|Send failure|Service ?Unavailable|InternalError|Throttl|"
    # S3 error messages as GDAL reports them (the <Message> of SlowDown / InternalError / 503)
    r"reduce your request rate|internal error|[Pp]lease try again",
)


def is_transient(exc: BaseException) -> bool:
    """Whether an I/O error message looks like a transient storage failure (see module docstring)."""
    if isinstance(exc, TransientIOError | TimeoutError | ConnectionError):
        return True
    return bool(_TRANSIENT.search(str(exc)))


def scheme_of(uri: str) -> str:
    """``s3://b/k`` -> ``s3``; plain paths and ``file://`` -> ``file``."""
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", uri)
    if not m:
        return "file"
    return m.group(1).lower()


def absolute(uri: str) -> str:
    """Local paths made absolute (a job's Ray Train and Tune workers run in their own working
    directories, so a relative path would name another file there); URIs unchanged."""
    return uri if "://" in uri else os.path.abspath(uri)


def check_uri(uri: str, storage: StorageConfig) -> str:
    """Return ``uri`` if it may be used, else raise :class:`BadURIError`.

    Allowed: a scheme in ``storage.allowed_schemes`` (plain paths count as ``file``), no ``..``
    path segment (no escaping the archive root through a crafted href), non-empty.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise BadURIError("empty URI")
    scheme = scheme_of(uri)
    if scheme not in storage.allowed_schemes:
        allowed = ", ".join(storage.allowed_schemes)
        raise BadURIError(f"URI scheme {scheme!r} not allowed (allowed: {allowed}): {redact(uri)}")
    path = uri.split("://", 1)[1] if "://" in uri else uri
    if ".." in re.split(r"[\\/]", path):
        raise BadURIError(f"URI contains a '..' path segment: {redact(uri)}")
    if scheme == "s3" and not path.split("/", 1)[0]:
        raise BadURIError(f"s3 URI without a bucket: {redact(uri)}")
    return uri


def redact(url: str) -> str:
    """Drop ``user:password@`` and query strings (pre-signed signatures) from a URL shown to people."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable uri>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def endpoint_url(storage: StorageConfig) -> str | None:
    """The S3 endpoint: the config's, else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, else AWS."""
    env = os.environ
    return storage.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None


def region(storage: StorageConfig) -> str | None:
    return storage.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def storage_options(storage: StorageConfig) -> dict:
    """fsspec/s3fs keyword arguments for ``s3://`` URIs (no credentials: s3fs reads them from the env)."""
    client_kwargs: dict = {}
    ep = endpoint_url(storage)
    if ep:
        client_kwargs["endpoint_url"] = ep
    reg = region(storage)
    if reg:
        client_kwargs["region_name"] = reg
    opts: dict = {
        "anon": storage.anonymous,
        "requester_pays": storage.requester_pays,
        "config_kwargs": {"retries": {"max_attempts": storage.max_retries + 1, "mode": "adaptive"}},
        "client_kwargs": client_kwargs,
        # the same object written twice must not be served stale from a listing cache
        "use_listings_cache": False,
        "skip_instance_cache": True,
    }
    return opts


def filesystem(uri: str, storage: StorageConfig) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(fs, path)`` for a URI: s3fs configured from ``storage`` for ``s3://``, the local fs otherwise."""
    check_uri(uri, storage)
    scheme = scheme_of(uri)
    if scheme == "s3":
        fs = fsspec.filesystem("s3", **storage_options(storage))
        fs.retries = max(storage.max_retries, 1)  # s3fs's own retry loop (class attribute, not a kwarg)
        return fs, uri.split("://", 1)[1]
    if scheme == "file":
        path = uri.split("://", 1)[1] if "://" in uri else uri
        return fsspec.filesystem("file"), os.path.abspath(path)
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def join(base: str, *parts: str) -> str:
    """Join URI/path segments with ``/`` (keeps ``s3://`` intact)."""
    out = base.rstrip("/")
    for p in parts:
        out += "/" + p.strip("/")
    return out


def gdal_options(storage: StorageConfig) -> dict[str, str]:
    """GDAL config options for ``/vsis3/`` reads (no credentials: GDAL reads ``AWS_*`` from the env).

    A custom endpoint ``http(s)://host:port`` becomes ``AWS_S3_ENDPOINT=host:port``, ``AWS_HTTPS`` and
    path-style addressing (``AWS_VIRTUAL_HOSTING=FALSE``), as S3-compatible stores need.
    """
    opts = {
        # COG reads: no directory listings, only .tif sidecars, merge adjacent block ranges
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.vrt",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        "GDAL_HTTP_MULTIPLEX": "YES",
        "VSI_CACHE": "FALSE",
        # /vsicurl/ doubles its download size on sequential reads (read-ahead into the next blocks) and keeps
        # what it fetched in one per-process LRU; at GDAL's 16 MB that LRU drops the read-ahead of one band
        # while the others of the unit are read, and the same bytes are fetched again (1.2x the needed bytes
        # on 1024-px blocks, bench/s3_requests.py); 256 MB keeps them until used (1.006x, <= 1 GET per block).
        # GDAL sizes the LRU at the process's first /vsicurl/ read, which the ingest makes inside this env.
        "CPL_VSIL_CURL_CACHE_SIZE": str(256 * 2**20),
        # transient errors: GDAL retries 429/5xx and connection failures with exponential back-off
        "GDAL_HTTP_MAX_RETRY": str(storage.max_retries),
        "GDAL_HTTP_RETRY_DELAY": "0.5",
        "GDAL_HTTP_TIMEOUT": "60",
        "GDAL_HTTP_CONNECTTIMEOUT": "20",
    }
    ep = endpoint_url(storage)
    if ep:
        parts = urlsplit(ep if "://" in ep else "https://" + ep)
        opts["AWS_S3_ENDPOINT"] = parts.netloc.rsplit("@", 1)[-1] + parts.path.rstrip("/")
        opts["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
        opts["AWS_VIRTUAL_HOSTING"] = "FALSE"
    reg = region(storage)
    if reg:
        opts["AWS_REGION"] = reg
    if storage.anonymous:
        opts["AWS_NO_SIGN_REQUEST"] = "YES"
    if storage.requester_pays:
        opts["AWS_REQUEST_PAYER"] = "requester"
    return opts


def rasterio_env(storage: StorageConfig):
    """``rasterio.Env`` with :func:`gdal_options` (use around every open of a ``/vsis3/`` path)."""
    import rasterio

    return rasterio.Env(**gdal_options(storage))


def gdal_path(uri: str) -> str:
    """``s3://b/k.tif`` -> ``/vsis3/b/k.tif``; ``file:///x`` -> ``/x``; plain paths unchanged."""
    scheme = scheme_of(uri)
    if scheme == "s3":
        return "/vsis3/" + uri.split("://", 1)[1]
    if scheme == "file":
        return uri.split("://", 1)[1] if "://" in uri else uri
    if scheme in ("http", "https"):
        return "/vsicurl/" + uri
    return uri


def exists(uri: str, storage: StorageConfig) -> bool:
    fs, path = filesystem(uri, storage)
    return fs.exists(path)


def read_bytes(uri: str, storage: StorageConfig) -> bytes:
    fs, path = filesystem(uri, storage)
    return fs.cat_file(path)


def read_many(uris: list[str], storage: StorageConfig) -> list[bytes]:
    """The bytes of many small objects, fetched concurrently (s3fs batches the GETs), in ``uris`` order."""
    if not uris:
        return []
    fs, _ = filesystem(uris[0], storage)
    paths = [filesystem(u, storage)[1] for u in uris]
    got = fs.cat(paths, on_error="raise")
    if isinstance(got, bytes):  # a single path comes back unwrapped
        return [got]
    return [got[p] for p in paths]


def write_bytes_atomic(uri: str, data: bytes, storage: StorageConfig) -> int:
    """Write ``data`` so that a reader sees the whole object or nothing; returns its size.

    Local: write a temp file in the same directory, fsync, ``os.replace`` into place. S3: one PUT
    (S3 makes an object visible only once its upload completes).
    """
    fs, path = filesystem(uri, storage)
    if scheme_of(uri) == "file":
        d = os.path.dirname(path)
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    else:
        fs.pipe_file(path, data)
    return len(data)


class SpoolFile:
    """A local file at :attr:`path` that becomes the object ``uri`` whole or not at all.

    Writers stream into :attr:`path` (e.g. a Parquet writer), so a large object is never held in memory
    nor copied while its buffer grows; then :meth:`commit` publishes it (local: fsync and ``os.replace``
    from a temp name in the destination directory, which :func:`~pipeline.ingest.remove_partial_files`
    clears after a kill; S3: one upload of the finished file, visible only once complete) or
    :meth:`discard` drops it.
    """

    def __init__(self, uri: str, storage: StorageConfig):
        self.uri, self.storage = uri, storage
        self.fs, self.dest = filesystem(uri, storage)
        if scheme_of(uri) == "file":
            d = os.path.dirname(self.dest)
            os.makedirs(d, exist_ok=True)
            self.path = os.path.join(d, f".{os.path.basename(self.dest)}.{uuid.uuid4().hex}.tmp")
        else:
            fd, self.path = tempfile.mkstemp(prefix="skyray-spool-", suffix=".tmp")
            os.close(fd)

    def digest(self) -> tuple[int, str]:
        """``(size in bytes, sha256 hex)`` of the file as written so far."""
        # the standard library's loop: one reused buffer, no fresh object per read
        with open(self.path, "rb", buffering=0) as f:
            h = hashlib.file_digest(f, "sha256")
            return f.tell(), h.hexdigest()

    def commit(self) -> None:
        try:
            if scheme_of(self.uri) == "file":
                with open(self.path, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(self.path, self.dest)
            else:
                self.fs.put_file(self.path, self.dest)
        finally:
            self.discard()

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def list_names(uri: str, storage: StorageConfig, suffix: str = "") -> list[str]:
    """Sorted base names of the objects directly under ``uri`` ending in ``suffix`` ([] if none)."""
    fs, path = filesystem(uri, storage)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    names = [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]
    return sorted(n for n in names if n.endswith(suffix) and not n.startswith("."))


def output_root(uri: str | os.PathLike, storage: StorageConfig) -> str:
    """The canonical form of a root to write a tree under: ``s3://bucket/prefix`` without a trailing ``/``;
    a local path (plain or ``file://``) made absolute, ``~`` expanded and links resolved, so the hrefs
    written below it stay valid from any working directory. Any other scheme raises :class:`BadURIError`.
    """
    s = os.fspath(uri)
    scheme = scheme_of(s)
    if scheme == "file":
        path = s.split("://", 1)[1] if "://" in s else s
        return str(Path(path).expanduser().resolve())
    if scheme != "s3":
        raise BadURIError(f"unsupported output URI {redact(s)!r}: use a local path or s3://bucket/prefix")
    return check_uri(s, storage).rstrip("/")


def upload_tree(local_dir: str | os.PathLike, uri: str, storage: StorageConfig) -> list[str]:
    """Copy every file under ``local_dir`` to the same relative path under ``uri`` (one PUT per file, in
    sorted order); returns the URIs written."""
    fs, base = filesystem(uri, storage)
    root = Path(local_dir)
    written = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            fs.put_file(str(p), join(base, rel))
            written.append(join(uri, rel))
    return written


@contextlib.contextmanager
def staged(root: str, storage: StorageConfig) -> Iterator[Path]:
    """A local directory standing for the output root ``root`` (see :func:`output_root`) while a tree is
    written into it.

    Local roots are written in place (the directory is created). For object storage the block writes into
    a temporary directory that :func:`upload_tree` copies under ``root`` once the block ends without an
    exception; the temporary directory is removed either way, so a failed write uploads nothing.
    """
    if scheme_of(root) == "file":
        path = Path(root.split("://", 1)[1] if "://" in root else root)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = tempfile.mkdtemp(prefix="skyray-staged-")
    try:
        yield Path(tmp)
        upload_tree(tmp, root, storage)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""HTTP proxies on loopback in front of the moto S3 server, for tests and benches that watch the wire.

* :class:`FlakyProxy` answers ``503 SlowDown`` to the first ``fail_first`` requests of every (method, path),
  then forwards faithfully (retry tests);
* :class:`CountingProxy` forwards everything (``fail_first=0``).

Both record every request they answer as a :class:`Request` in ``requests`` (method, bucket, key, the
byte range asked for, status, body bytes sent back), so a test can count GETs and bytes per object.
Path-style addressing only (``/bucket/key``), as :func:`pipeline.storage.gdal_options` sets for custom
endpoints and s3fs uses for IP endpoints.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Request(NamedTuple):
    """One request as the proxy answered it: ``range`` is its ``Range`` header as sent (None without one),
    ``nbytes`` the body bytes sent back."""

    method: str
    bucket: str
    key: str
    range: str | None
    status: int
    nbytes: int

    @property
    def byte_range(self) -> tuple[int | None, int | None]:
        """The inclusive byte range asked for (see :func:`parse_range`)."""
        return parse_range(self.range)


def parse_range(header: str | None) -> tuple[int | None, int | None]:
    """``"bytes=10-19"`` -> ``(10, 19)``; ``"bytes=10-"`` -> ``(10, None)``; absent -> ``(None, None)``.

    Suffix (``bytes=-n``) and multi-range headers are refused: S3 clients do not send them to S3, and a
    count that silently mis-attributed them would be wrong.
    """
    if header is None:
        return None, None
    m = _RANGE.match(header.strip())
    if not m or not m.group(1):
        raise ValueError(f"unsupported Range header {header!r} (single 'bytes=a-b' or 'bytes=a-' only)")
    return int(m.group(1)), int(m.group(2)) if m.group(2) else None


def split_path(path: str) -> tuple[str, str]:
    """``/bucket/some/key.tif?x=1`` -> ``("bucket", "some/key.tif")`` (URL-decoded)."""
    p = unquote(path.split("?", 1)[0]).lstrip("/")
    bucket, _, key = p.partition("/")
    return bucket, key


class FlakyProxy:
    def __init__(self, upstream: str, fail_first: int = 1):
        up = urlsplit(upstream)
        self.upstream = (up.hostname, up.port)
        self.fail_first = fail_first
        self.seen: Counter = Counter()
        self.failed = 0
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _record(self, status: int, nbytes: int) -> None:
                bucket, key = split_path(self.path)
                req = Request(self.command, bucket, key, self.headers.get("Range"), status, nbytes)
                with proxy.lock:
                    proxy.requests.append(req)

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                key = (self.command, self.path.split("?")[0])
                with proxy.lock:
                    proxy.seen[key] += 1
                    fail = proxy.seen[key] <= proxy.fail_first
                    proxy.failed += fail
                if fail:
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_SLOWDOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(_SLOWDOWN)
                    self._record(503, 0 if self.command == "HEAD" else len(_SLOWDOWN))
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()
                self._record(resp.status, 0 if self.command == "HEAD" else len(data))

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def take(self) -> list[Request]:
        """The requests recorded so far, in arrival order; the log starts empty again."""
        with self.lock:
            out, self.requests = self.requests, []
        return out


class CountingProxy(FlakyProxy):
    """A faithful proxy that records every request (see the module docstring)."""

    def __init__(self, upstream: str):
        super().__init__(upstream, fail_first=0)


@contextlib.contextmanager
def moto_server(env: Mapping[str, str]) -> Iterator[str]:
    """A moto S3 server in its own process on a free loopback port; yields its endpoint URL.

    ``env`` (dummy credentials, region) is set in ``os.environ`` together with ``AWS_ENDPOINT_URL`` for
    as long as the server runs, so every client that reads the environment (s3fs, boto3, GDAL, the Ray
    workers started meanwhile) talks to it; the previous values come back afterwards.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    full = {**env, "AWS_ENDPOINT_URL": endpoint}
    old = {k: os.environ.get(k) for k in full}
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        os.environ.update(full)
        yield endpoint
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(timeout=30)

"""Real object-store servers for the store tests: moto (S3), Azurite (Azure Blob), fake-gcs-server (GCS).

Each runs as a child process on a free loopback port behind a :class:`CountingProxy`, which forwards
every byte unchanged and records each HTTP request the server receives, so a test can count the
artifact downloads it caused. Installed by the repo itself (``make store-servers``, ci/store-servers.sh;
moto is in the venv through requirements-dev.txt). A missing server FAILS the tests that need it;
``MANYMODELS_STORE_SERVERS=skip`` turns that into a skip, explicitly.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import fsspec
import h11
import numpy as np
import pytest
from processes import free_port

from manymodels.demo.catalog import mlp_onnx
from manymodels.store import (
    ModelManifest,
    ModelStore,
    TensorSpec,
    open_store,
    publish_version,
    set_store_aliases,
)

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "ci" / "store-servers.sh"

# gcsfs 2026.10 makes ExtendedGcsFileSystem its default class: before most calls it asks the Storage
# Control gRPC API (TLS, on the same endpoint) for the bucket's layout, and on an emulator that speaks
# only HTTP every such call waits out a 60 s retry deadline (the failed answer is not cached). The
# switch is read when gcsfs is imported, so it is set here, before any test imports it.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

# Azurite's well-known development account (public, documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
READY_TIMEOUT_S = 60.0


def missing(message: str) -> None:
    """Fail (or, only with MANYMODELS_STORE_SERVERS=skip, skip) a test whose server is not there."""
    if os.environ.get("MANYMODELS_STORE_SERVERS") == "skip":
        pytest.skip(message)
    pytest.fail(f"{message} (MANYMODELS_STORE_SERVERS=skip skips these tests instead)", pytrace=False)


def executable(env_var: str, what: str) -> str:
    """The server's executable: $env_var (exported by `make test-app`), else where ci/store-servers.sh
    puts it (the same tool cache, asked without installing anything)."""
    path = os.environ.get(env_var)
    if not path:
        found = subprocess.run(["bash", str(SCRIPT), "env"], capture_output=True, text=True, check=False)
        for line in found.stdout.splitlines():
            words = shlex.split(line)
            if len(words) == 2 and words[0] == "export" and words[1].startswith(f"{env_var}="):
                path = words[1].split("=", 1)[1]
    if not path or not os.access(path, os.X_OK):
        missing(f"{what} is not installed (expected at {path or '?'}): run `make store-servers`")
    return str(path)


# -- the counting proxy -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-decoded
    query: dict[str, str]


class CountingProxy:
    """A TCP proxy on a free loopback port in front of ``upstream_port``. Bytes pass through unchanged
    in both directions; the client-to-server stream is also parsed as HTTP/1.1 (h11, one parser per
    request, so keep-alive connections and chunked or sized bodies are followed) to record each
    request. A stream it cannot parse is still forwarded, and makes :meth:`requests` raise."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._errors: list[str] = []
        self._conns: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[Request]:
        with self._lock:
            if self._errors:
                raise AssertionError(f"proxy :{self.port} could not follow a request: {self._errors}")
            return list(self._requests)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            socks, self._conns = [self._listener, *self._conns], set()
        for sock in socks:  # shutdown wakes the threads blocked in accept/recv; close alone does not
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            done = threading.Barrier(2, action=lambda c=client, u=upstream: self._close_pair(c, u))
            threading.Thread(
                target=self._client_to_server, args=(client, upstream, done), daemon=True
            ).start()
            threading.Thread(target=self._pipe, args=(upstream, client, done), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, done: threading.Barrier) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._finish(dst, done)

    def _client_to_server(
        self, client: socket.socket, upstream: socket.socket, done: threading.Barrier
    ) -> None:
        parser: h11.Connection | None = h11.Connection(h11.SERVER)
        try:
            while True:
                data = client.recv(65536)
                if parser is not None:
                    parser = self._parse(parser, data)
                if not data:
                    break
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            self._finish(upstream, done)

    def _parse(self, parser: h11.Connection, data: bytes) -> h11.Connection | None:
        try:
            parser.receive_data(data)
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                    return parser
                if isinstance(event, h11.Request):
                    target = urlsplit(event.target.decode("latin-1"))
                    request = Request(
                        event.method.decode(),
                        unquote(target.path),
                        dict(parse_qsl(target.query, keep_blank_values=True)),
                    )
                    with self._lock:
                        self._requests.append(request)
                elif event is h11.PAUSED:  # one request complete: a fresh parser for the next one
                    leftover, closed = parser.trailing_data
                    parser = h11.Connection(h11.SERVER)
                    if leftover or closed:
                        parser.receive_data(leftover)
                    if closed:
                        parser.receive_data(b"")
        except Exception as exc:  # h11.RemoteProtocolError, or a state it refuses: counts are off
            with self._lock:
                self._errors.append(repr(exc))
            return None

    def _finish(self, dst: socket.socket, done: threading.Barrier) -> None:
        """One direction ended: pass the EOF on; when both have, close the pair."""
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with contextlib.suppress(threading.BrokenBarrierError):
            done.wait(timeout=300)

    def _close_pair(self, *socks: socket.socket) -> None:
        with self._lock:
            self._conns.difference_update(socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()


# -- server processes -------------------------------------------------------------------------------


class ServerProcess:
    """A child process with its output in ``log``; stopped by pid (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, ready: Callable[[], bool], timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before it was ready:\n{self.tail()}"
                )
            with contextlib.suppress(Exception):
                if ready():
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} was not ready after {timeout_s:.0f} s:\n{self.tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def http_answers(port: int, path: str = "/") -> bool:
    """Any HTTP status line from the port counts: the server is accepting and parsing requests."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        return sock.recv(16).startswith(b"HTTP/1.")


# -- backends ---------------------------------------------------------------------------------------


@dataclass
class ObjectStoreServer:
    """One object-store server with one bucket (container), as the store tests see it.

    ``uri_root`` is ``<scheme>://<bucket>``; ``storage_options`` reach the server through the proxy.
    ``count_gets(uri_prefix)`` is the number of object downloads the server received for objects under
    that URI: GETs of object bytes (manifest.json reads included; StoreRoot.artifact_gets leaves those
    out), not listings, metadata requests or HEADs.
    """

    name: str
    uri_root: str
    storage_options: dict[str, Any]
    proxy: CountingProxy
    download_of: Callable[[Request], str | None]  # "bucket/key" of an object download, else None
    server: ServerProcess | None = None

    def downloads(self, uri_prefix: str) -> list[str]:
        prefix = uri_prefix.split("://", 1)[-1]
        found = (self.download_of(r) for r in self.proxy.requests())
        return [path for path in found if path is not None and path.startswith(prefix)]

    def count_gets(self, uri_prefix: str) -> int:
        return len(self.downloads(uri_prefix))

    def new_root(self) -> str:
        """A fresh, empty prefix in the bucket: one per test, so tests never see each other."""
        return f"{self.uri_root}/t-{uuid.uuid4().hex[:12]}"


def _s3_download(r: Request) -> str | None:
    # path-style GET /bucket/key; any sub-resource query (?tagging, ?acl, ?uploads, ...) is not bytes
    parts = r.path.lstrip("/").split("/", 1)
    if r.method != "GET" or len(parts) < 2 or not parts[1]:
        return None
    if any(k not in ("versionId", "partNumber") and not k.startswith("response-") for k in r.query):
        return None
    return "/".join(parts)


def _az_download(r: Request) -> str | None:
    # GET /<account>/<container>/<blob> without comp= (list, metadata, tags, ...) or restype=
    parts = r.path.lstrip("/").split("/", 2)
    if r.method != "GET" or len(parts) < 3 or not parts[2] or "comp" in r.query or "restype" in r.query:
        return None
    return f"{parts[1]}/{parts[2]}"


def _gs_download(r: Request) -> str | None:
    # JSON API media download: GET [/download]/storage/v1/b/<bucket>/o/<object>?alt=media
    if r.method != "GET" or r.query.get("alt") != "media":
        return None
    path = r.path.removeprefix("/download")
    if not path.startswith("/storage/v1/b/") or "/o/" not in path:
        return None
    bucket, obj = path[len("/storage/v1/b/") :].split("/o/", 1)
    return f"{bucket}/{obj}"


@contextlib.contextmanager
def _workdir(name: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"mm-{name}-") as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def _serving(
    name: str, argv_for: Callable[[int, CountingProxy, Path], list[str]], ready_path: str = "/"
) -> Iterator[tuple[ServerProcess, CountingProxy]]:
    """Start the server on a free port behind a proxy (started first: some servers must be told the
    address clients use); yield (server, proxy); stop both and remove the server's folder."""
    with _workdir(name) as work:
        port = free_port()
        proxy = CountingProxy(port)
        server = ServerProcess(name, argv_for(port, proxy, work), work)
        try:
            server.wait_ready(lambda: http_answers(port, ready_path))
            yield server, proxy
        finally:
            server.stop()
            proxy.close()


BUCKET = "manymodels-tests"


@contextlib.contextmanager
def s3_server() -> Iterator[ObjectStoreServer]:
    if importlib.util.find_spec("moto") is None:
        missing("moto is not installed in the venv: run `make venv` (requirements-dev.txt pins moto[server])")

    def argv(port: int, proxy: CountingProxy, work: Path) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]

    with _serving("moto", argv, "/moto-api/") as (server, proxy):
        options = {
            "endpoint_url": proxy.url,
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"region_name": "us-east-1"},
        }
        # s3fs's mkdir sends a LocationConstraint even for us-east-1, which S3 (and moto) refuse
        import boto3

        boto3.client(
            "s3",
            endpoint_url=proxy.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket=BUCKET)
        yield ObjectStoreServer("s3", f"s3://{BUCKET}", options, proxy, _s3_download, server)


@contextlib.contextmanager
def az_server() -> Iterator[ObjectStoreServer]:
    azurite = executable("MANYMODELS_AZURITE", "Azurite (azurite-blob)")

    def argv(port: int, proxy: CountingProxy, work: Path) -> list[str]:
        return [
            azurite,
            "--blobHost", "127.0.0.1",
            "--blobPort", str(port),
            "--location", str(work / "data"),
            "--skipApiVersionCheck",  # adlfs' Azure SDK may be newer than this Azurite
            "--loose",
            "--disableTelemetry",
        ]  # fmt: skip

    with _serving("azurite", argv) as (server, proxy):
        connection = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={proxy.url}/{AZURITE_ACCOUNT};"
        )
        options = {"connection_string": connection}
        fsspec.filesystem("az", skip_instance_cache=True, **options).mkdir(BUCKET)
        yield ObjectStoreServer("az", f"az://{BUCKET}", options, proxy, _az_download, server)


@contextlib.contextmanager
def gs_server() -> Iterator[ObjectStoreServer]:
    fake_gcs = executable("MANYMODELS_FAKE_GCS", "fake-gcs-server")
    import gcsfs

    if gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:
        pytest.fail(
            "gcsfs was imported with GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT on: against fake-gcs-server every "
            "call then waits out a 60 s gRPC deadline. Set GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false.",
            pytrace=False,
        )

    def argv(port: int, proxy: CountingProxy, work: Path) -> list[str]:
        # upload sessions and media links must name the proxy, so that every request goes through it
        return [
            fake_gcs,
            "-scheme", "http",
            "-host", "127.0.0.1",
            "-port", str(port),
            "-backend", "memory",
            "-external-url", proxy.url,
            "-public-host", proxy.url.removeprefix("http://"),
            "-log-level", "warn",
        ]  # fmt: skip

    with _serving("fake-gcs-server", argv, "/storage/v1/b") as (server, proxy):
        options = {"endpoint_url": proxy.url, "token": "anon", "project": "manymodels-tests"}
        fsspec.filesystem("gs", skip_instance_cache=True, **options).mkdir(BUCKET)
        yield ObjectStoreServer("gs", f"gs://{BUCKET}", options, proxy, _gs_download, server)


SERVERS: dict[str, Callable[[], contextlib.AbstractContextManager[ObjectStoreServer]]] = {
    "s3": s3_server,
    "az": az_server,
    "gs": gs_server,
}


# -- one test's store root --------------------------------------------------------------------------

INPUTS = [TensorSpec(name="x", dtype="float32", shape=[-1, 4])]
OUTPUTS = [TensorSpec(name="y", dtype="float32", shape=[-1, 2])]


def publish_file(
    root: str | Path,
    model: str,
    version: str,
    data: bytes,
    sources: Path,
    *,
    name: str = "model.onnx",
    **kwargs: Any,
) -> ModelManifest:
    """publish_version (runtime onnx, INPUTS -> OUTPUTS) of ``data``, written first to a fresh file
    ``name`` under ``sources`` (publishing copies from a real file)."""
    src = sources / uuid.uuid4().hex / name
    src.parent.mkdir(parents=True)
    src.write_bytes(data)
    return publish_version(
        root, model, version, runtime="onnx", artifact=src, inputs=INPUTS, outputs=OUTPUTS, **kwargs
    )


def onnx_model(seed: int) -> bytes:
    """A small real ONNX model (x [-1, 4] -> y [-1, 2], an MLP); each seed gives different bytes."""
    rng = np.random.default_rng(seed)
    layers = [
        (rng.standard_normal((a, b)).astype(np.float32), rng.standard_normal(b).astype(np.float32))
        for a, b in ((4, 8), (8, 2))
    ]
    return mlp_onnx(layers, "x", "y")


@dataclass
class StoreRoot:
    """A fresh store root on one backend (the ``backend`` fixture): ``root`` is a local directory or
    ``<scheme>://<bucket>/<fresh prefix>`` on ``server``; ``storage_options`` are what a publisher or
    a store passes to reach it (None for the local directory)."""

    name: str
    root: str
    tmp: Path
    server: ObjectStoreServer | None = None  # None: the local directory
    _seeds: int = 0

    @property
    def remote(self) -> bool:
        return self.server is not None

    @property
    def storage_options(self) -> dict[str, Any] | None:
        return None if self.server is None else self.server.storage_options

    def publish(self, model: str, version: str, data: bytes | None = None, **kwargs: Any) -> ModelManifest:
        """publish_version of ``data`` (default: a new small ONNX model) as ``model.onnx``."""
        if data is None:
            self._seeds += 1
            data = onnx_model(self._seeds)
        return publish_file(
            self.root,
            model,
            version,
            data,
            self.tmp / "sources",
            storage_options=self.storage_options,
            **kwargs,
        )

    def set_aliases(self, model: str, aliases: dict[str, str]) -> None:
        set_store_aliases(self.root, model, aliases, storage_options=self.storage_options)

    def open(self, tier: str = "tier", cache_bytes: int = 64 * 2**20) -> ModelStore:
        """open_store on the root with a disk tier in ``tmp/<tier>``. Object stores are read through a
        private fsspec instance (``skip_instance_cache``), as a replica in another process would:
        the publisher's writes do not update its listing cache."""
        options = None
        if self.server is not None:
            options = {**self.server.storage_options, "skip_instance_cache": True}
        return open_store(
            self.root, cache_dir=self.tmp / tier, cache_bytes=cache_bytes, storage_options=options
        )

    def _fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, path = fsspec.core.url_to_fs(self.root, **(self.storage_options or {}))
        return fs, path.rstrip("/")

    def put(self, rel: str, data: bytes) -> None:
        """Write ``<root>/<rel>`` directly, behind the manifests' back."""
        fs, path = self._fs()
        fs.makedirs(f"{path}/{rel}".rsplit("/", 1)[0], exist_ok=True)  # a no-op on object stores
        fs.pipe_file(f"{path}/{rel}", data)

    def rm(self, rel: str) -> None:
        fs, path = self._fs()
        fs.rm(f"{path}/{rel}")

    def files(self) -> list[str]:
        """Every file under the root, relative to it."""
        fs, path = self._fs()
        try:
            return sorted(p[len(path) + 1 :] for p in fs.find(path))
        except FileNotFoundError:
            return []

    def artifact_gets(self, rel: str = "") -> list[str] | None:
        """The artifact downloads the server received under ``<root>/<rel>``, one "bucket/key" per GET
        of object bytes (manifest.json and aliases.json reads left out); None for the local directory,
        which has no server to count them."""
        if self.server is None:
            return None
        found = self.server.downloads(f"{self.root}/{rel}")
        return [p for p in found if not p.endswith(".json")]

    def gets(self, rel: str = "") -> int:
        """len(artifact_gets(rel)), for object stores only."""
        found = self.artifact_gets(rel)
        assert found is not None, "the local directory has no server to count GETs"
        return len(found)

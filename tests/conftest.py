"""Test harness: every test talks real HTTP to a real oxsync process on a free port.

`server` is a running server with a fresh SQLite file; `make_server` builds more
(custom environment or flags, restarts on the same database). Set OXSYNC_CMD to
run the suite against another build, e.g. OXSYNC_CMD="python3 dist/oxsync.pyz".
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OXSYNC = shlex.split(os.environ.get("OXSYNC_CMD", "")) or [sys.executable, str(ROOT / "oxsync.py")]
TEST_KEY = "11" * 32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Answer:
    """A response read whole: status, headers (case-insensitive), body, JSON."""

    def __init__(self, response: http.client.HTTPResponse):
        self.status = response.status
        self.reason = response.reason
        self.headers = response.headers
        self.body = response.read()

    @property
    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Answer {self.status} {self.body[:200]!r}>"


class OxsyncServer:
    """One oxsync process; the database file outlives restarts."""

    def __init__(self, workdir: Path, env: dict | None = None, args: tuple = ()):
        self.workdir = workdir
        self.db_path = workdir / "sync.db"
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("ENCRYPTION_KEY", "ADMIN_PASSWORD", "DB_PATH", "LISTEN_ADDR")}
        self.env.update(env or {})
        self.args = list(args)
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / "server.log"
        self.allow_traceback = False

    # -- process ------------------------------------------------------------

    def start(self, wait: bool = True) -> "OxsyncServer":
        self.log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            OXSYNC + ["serve", "--listen", f"127.0.0.1:{self.port}",
                      "--db-path", str(self.db_path)] + self.args,
            cwd=self.workdir, env=self.env, stdout=self.log_file, stderr=subprocess.STDOUT,
            # No terminal: nothing (e.g. OpenSSL asking for a key's pass phrase) may prompt.
            stdin=subprocess.DEVNULL, start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"oxsync exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.request("GET", "/health").status == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"oxsync did not become healthy:\n{self.log()}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()
        code, self.process = self.process.returncode, None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> "OxsyncServer":
        self.stop()
        return self.start()

    def log(self) -> str:
        """The server's log so far. The server writes log lines on a background thread, so
        while it runs, wait until the file stops growing for 0.1 s (at most 2 s)."""
        if not self.log_path.exists():
            return ""
        if self.process is not None and self.process.poll() is None:
            deadline, size, stable_since = time.monotonic() + 2, -1, time.monotonic()
            while time.monotonic() < deadline:
                current = self.log_path.stat().st_size
                if current != size:
                    size, stable_since = current, time.monotonic()
                elif time.monotonic() - stable_since >= 0.1:
                    break
                time.sleep(0.02)
        return self.log_path.read_text(errors="replace")

    # -- CLI ----------------------------------------------------------------

    def cli(self, *args: str, input: str | None = None, env: dict | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(OXSYNC + list(args) + ["--db-path", str(self.db_path)],
                                input=input, capture_output=True, text=True, cwd=self.workdir,
                                env={**self.env, **(env or {})}, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"oxsync {' '.join(args)} exited {result.returncode}: "
                                 f"{result.stderr}")
        return result

    def create_token(self, namespace: str = "*", permissions: str = "read,write",
                     name: str = "test", expires_at: str | None = None) -> str:
        extra = ["--expires-at", expires_at] if expires_at else []
        result = self.cli("token", "create", "--name", name, "--namespace", namespace,
                          "--permissions", permissions, *extra)
        return result.stdout.strip()

    def token_id(self, name: str) -> str:
        tokens = json.loads(self.cli("token", "list", "--json").stdout)
        return next(t["id"] for t in tokens if t["name"] == name)

    # -- HTTP ---------------------------------------------------------------

    def connect(self, timeout: float = 30) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | str | dict | None = None,
                headers: dict | None = None, token: str | None = None,
                connection: http.client.HTTPConnection | None = None) -> Answer:
        headers = dict(headers or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if isinstance(body, dict):
            body = json.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode()
        own = connection is None
        connection = connection or self.connect()
        try:
            connection.request(method, path, body=body, headers=headers)
            return Answer(connection.getresponse())
        finally:
            if own:
                connection.close()


def ns_path(namespace: str, rest: str) -> str:
    """The client's encoding: the namespace is one percent-encoded segment."""
    from urllib.parse import quote
    return f"/v1/namespaces/{quote(namespace, safe='')}/{rest}"


def object_path(namespace: str, path: str) -> str:
    from urllib.parse import quote
    encoded = "/".join(quote(part, safe="") for part in path.split("/"))
    return ns_path(namespace, f"objects/{encoded}")


@contextlib.contextmanager
def running_server(directory: Path, env: dict | None = None, args: tuple = (),
                   token: bool = True):
    """A server shared by a whole module (server.token: a read/write token for '*'); the
    module fails if the log shows a traceback. Tests that share it use their own namespace."""
    server = OxsyncServer(directory, env, args).start()
    if token:
        server.token = server.create_token(name="shared")
    try:
        yield server
    finally:
        server.stop()
        assert "Traceback" not in server.log(), server.log()


@pytest.fixture
def ns() -> str:
    """A namespace of its own for a test on a shared server."""
    return f"team/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_server(tmp_path):
    """Factory: make_server(env={...}, args=[...], start=True) -> OxsyncServer."""
    servers = []

    def make(env=None, args=(), start=True, workdir=None):
        directory = workdir or tmp_path / f"server{len(servers)}"
        directory.mkdir(exist_ok=True)
        server = OxsyncServer(directory, env, args)
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.stop()
        if not server.allow_traceback:
            assert "Traceback" not in server.log(), server.log()


@pytest.fixture
def server(make_server) -> OxsyncServer:
    return make_server()


@pytest.fixture
def token(server) -> str:
    return server.create_token()

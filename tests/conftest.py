"""Test harness: every test talks real HTTP to a real oxsync process on a free port.

`server` is a running server with a fresh store; `make_server` builds more (custom
environment or flags, restarts on the same store); module fixtures share one through
`running_server`. Every server, and every command run with `server.cli`, is pointed at its
store the same way (OxsyncServer.store_args): a SQLite file in its folder, or a PostgreSQL
database (`database_url`) when the `store_kind` fixture says "postgres" (modules with
BOTH_STORES = True run on both). Tests that open the SQLite file themselves are marked
`sqlite_only`; `db_rows`/`db_change` read and write either store directly.

Set OXSYNC_CMD to run the suite against another build, e.g.
OXSYNC_CMD="python3 dist/oxsync.pyz" (default: python3 <repo>/oxsync.py).

Also here, once for the whole suite: the admin page's login (`AdminClient`), the JSON error
check (`assert_json_error`), the one-line CLI error check (`one_error_line`), and worker
threads whose exceptions reach the test (`run_workers`, `workers`).
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
import threading
import time
import traceback
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parent.parent
OXSYNC = shlex.split(os.environ.get("OXSYNC_CMD", "")) or [sys.executable, str(ROOT / "oxsync.py")]
TEST_KEY = "11" * 32
SNAPSHOT_TYPE = "application/vnd.oxideterm.oxide"
# Settings a test server must not inherit from the environment the suite runs in.
HARNESS_OWNED_ENV = ("ENCRYPTION_KEY", "NEW_ENCRYPTION_KEY", "ADMIN_PASSWORD", "DB_PATH",
                     "DATABASE_URL", "LISTEN_ADDR", "TLS_CERT_FILE", "TLS_KEY_FILE",
                     "REDIRECT_HTTP_PORT", "LOG_LEVEL", "RUST_LOG", "LOG_FORMAT",
                     "METRICS_TOKEN")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_oxsync(*args: str, env: dict | None = None, cwd=None, input: str | None = None,
               timeout: float = 60, command: list = OXSYNC) -> subprocess.CompletedProcess:
    """One oxsync command run to its end (text output); nothing is appended to `args`."""
    return subprocess.run(command + list(args), input=input, capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout, stdin=None if input else
                          subprocess.DEVNULL, check=False)


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
    """One oxsync process; its store (SQLite file or `database_url`) outlives restarts."""

    command = OXSYNC   # how oxsync is run (a subclass may run it another way)

    def __init__(self, workdir: Path, env: dict | None = None, args: tuple = (),
                 database_url: str | None = None):
        self.workdir = workdir
        self.db_path = workdir / "sync.db"
        self.database_url = database_url
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if k not in HARNESS_OWNED_ENV}
        self.env.update(env or {})
        self.args = list(args)
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / "server.log"
        self.allow_traceback = False
        self.secrets: set[str] = set()     # values the log must never show

    @property
    def store_kind(self) -> str:
        return "postgres" if self.database_url else "sqlite"

    def store_args(self) -> list[str]:
        """What names this server's store to `serve` and to every other command."""
        if self.database_url:
            return ["--database-url", self.database_url]
        return ["--db-path", str(self.db_path)]

    def serve_command(self, *args: str, listen: bool = True) -> list[str]:
        where = ["--listen", f"127.0.0.1:{self.port}"] if listen else []
        return self.command + ["serve", *where, *self.store_args(), *self.args, *args]

    def environment(self, changes: dict | None = None) -> dict:
        """self.env with `changes` applied (a value of None removes the variable)."""
        env = dict(self.env)
        for name, value in (changes or {}).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    # -- process ------------------------------------------------------------

    def start(self, wait: bool = True) -> "OxsyncServer":
        self.log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.serve_command(), cwd=self.workdir, env=self.env, stdout=self.log_file,
            stderr=subprocess.STDOUT,
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

    def serve_once(self, *args: str, env: dict | None = None, listen: bool = True,
                   timeout: float = 30) -> subprocess.CompletedProcess:
        """`oxsync serve` on this store, run to its end: for starts that must be refused.
        -> the finished process, with `.seconds` it took."""
        started = time.monotonic()
        result = subprocess.run(self.serve_command(*args, listen=listen), capture_output=True,
                                text=True, cwd=self.workdir, env=self.environment(env),
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                timeout=timeout, check=False)
        result.seconds = time.monotonic() - started
        return result

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

    def remember(self, *secrets: str | None) -> None:
        """Values that must never appear in this server's log (checked at teardown)."""
        self.secrets.update(s for s in secrets if s)

    def assert_log_clean(self) -> None:
        """No traceback (unless allowed) and no remembered secret in the log."""
        log = self.log()
        if not self.allow_traceback:
            assert "Traceback" not in log, log
        leaked = sorted(s for s in self.secrets if s in log)
        assert not leaked, f"secrets in the server log: {leaked}"

    # -- CLI ----------------------------------------------------------------

    def cli(self, *args: str, input: str | None = None, env: dict | None = None,
            check: bool = True, store: bool = True) -> subprocess.CompletedProcess:
        """An oxsync command on this server's store (`store=False`: as given, e.g. for
        verify-backup or a --db-path of the test's own)."""
        result = run_oxsync(*args, *(self.store_args() if store else ()), input=input,
                            env=self.environment(env), cwd=self.workdir, command=self.command)
        if check and result.returncode != 0:
            raise AssertionError(f"oxsync {' '.join(args)} exited {result.returncode}: "
                                 f"{result.stderr}")
        return result

    def cli_process(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        """An oxsync command on this store, started and left running (e.g. to kill it)."""
        return subprocess.Popen(self.command + list(args) + self.store_args(), cwd=self.workdir,
                                env=self.environment(env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

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
    return f"/v1/namespaces/{quote(namespace, safe='')}/{rest}"


def object_path(namespace: str, path: str) -> str:
    encoded = "/".join(quote(part, safe="") for part in path.split("/"))
    return ns_path(namespace, f"objects/{encoded}")


def quoted(etag: str) -> str:
    return f'"{etag}"'


# -- servers ------------------------------------------------------------------------

STORE_KINDS = ("sqlite", "postgres")


def pytest_generate_tests(metafunc):
    """A module that sets BOTH_STORES = True runs each test that uses a server on SQLite
    and on PostgreSQL; every other module on SQLite only (no id suffix)."""
    if "store_kind" in metafunc.fixturenames and getattr(metafunc.module, "BOTH_STORES", False):
        metafunc.parametrize("store_kind", STORE_KINDS, indirect=True, scope="module")


@pytest.fixture(scope="module")
def store_kind(request) -> str:
    """The store this test's servers use: "sqlite" (a file per server) or "postgres"."""
    kind = getattr(request, "param", "sqlite")
    if kind == "postgres":
        import _postgres
        reason = _postgres.available()
        if reason:
            pytest.skip(f"PostgreSQL store: {reason}")
    return kind


def database_url_for(store_kind: str) -> str | None:
    """None for SQLite (the server's own file), else a fresh PostgreSQL database's URL."""
    if store_kind == "sqlite":
        return None
    import _postgres
    return _postgres.new_database()


@pytest.fixture(autouse=True)
def _sqlite_only(request):
    if request.node.get_closest_marker("sqlite_only") and \
            "store_kind" in request.fixturenames and \
            request.getfixturevalue("store_kind") != "sqlite":
        pytest.skip("reads the SQLite file directly")


@contextlib.contextmanager
def store_connection(server):
    """An autocommit connection to the server's store and its placeholder -> (db, mark);
    db.execute(...) rows are indexed by column name on either store."""
    if server.store_kind == "sqlite":
        import sqlite3
        db = sqlite3.connect(server.db_path, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            with db:
                yield db, "?"
        finally:
            db.close()
    else:
        import psycopg
        from psycopg.rows import dict_row
        with psycopg.connect(server.database_url, row_factory=dict_row,
                             autocommit=True) as db:
            yield db, "%s"


def db_rows(server, sql: str, params=()) -> list[dict]:
    """Rows of a query on the server's store, as dicts ('?' placeholders on either)."""
    with store_connection(server) as (db, mark):
        return [dict(row) for row in db.execute(sql.replace("?", mark), params).fetchall()]


def db_change(server, sql: str, params=()) -> int:
    """A write behind the server's back on its store -> the rows it changed."""
    with store_connection(server) as (db, mark):
        return db.execute(sql.replace("?", mark), params).rowcount


# -- seeding a store with thousands of rows, fast (behind the server's back) -----------

def insert_rows(server, sql: str, rows: list) -> None:
    """Many rows in one transaction on the server's store ('?' placeholders on either)."""
    with store_connection(server) as (db, mark):
        with contextlib.nullcontext() if server.store_kind == "sqlite" else db.transaction():
            db.cursor().executemany(sql.replace("?", mark), rows)


def seed_namespaces(server, count: int, *, prefix: str = "seed", size=None,
                    now: float | None = None) -> list[str]:
    """`count` namespaces named f"{prefix}-{i:05d}" written straight into the store in one
    transaction: rows only (metadata, last write, and the size and version counters the
    listings sort by), no payloads, manifests or objects, so their history is empty; use
    the sync API for a namespace whose history a test opens. size(i) -> its snapshot bytes
    (default: a spread with ties); namespace i was last written i minutes before `now`,
    and has i % 40 versions. -> the names, in order of i."""
    now = time.time() if now is None else now
    size = size or (lambda i: (i * 7919) % 37 * 100)
    names, rows = [], []
    for i in range(count):
        name, etag = f"{prefix}-{i:05d}", uuid.uuid4().hex
        metadata = {"exists": True, "format": "structured-v2", "revision": f"rev-{i}",
                    "deviceId": f"device-{i % 97}", "etag": etag, "contentLength": size(i)}
        names.append(name)
        rows.append((name, json.dumps(metadata), etag, now - 86400 - i * 60, now - i * 60,
                     size(i), i % 40))
    insert_rows(server, "INSERT INTO namespaces (name, metadata, etag, created_at, updated_at, "
                "blob_bytes, version_count) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    return names


def seed_tokens(server, count: int, *, prefix: str = "seed-token",
                namespace: str = "seed-*", now: float | None = None) -> list[str]:
    """`count` tokens f"{prefix}-{i:05d}" (ids f"{prefix}{i:05d}"), written straight into
    the store; every 10th disabled, every 7th expired; their secrets are random and unknown.
    -> their ids, in order of i."""
    now = time.time() if now is None else now
    rows = [(f"{prefix}{i:05d}", f"{prefix}-{i:05d}", uuid.uuid4().hex + uuid.uuid4().hex,
             namespace, "read,write", int(i % 10 != 9),
             now - 3600 if i % 7 == 6 else None, now - 86400 + i, i,
             now - i * 30 if i % 3 else None) for i in range(count)]
    insert_rows(server, "INSERT INTO tokens (id, name, token_hash, namespace_pattern, "
                "permissions, enabled, expires_at, created_at, use_count, last_used_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return [row[0] for row in rows]


DEVICE_RESULTS = (("ok", 200, None), ("conflict", 412, "etag_conflict_detected"),
                  ("refused", 401, "unauthorized"), ("too_large", 413, "payload_too_large"))


def seed_devices(server, count: int, namespaces: list[str], *, token_id: str | None = None,
                 now: float | None = None) -> list[tuple[str, str]]:
    """`count` devices f"laptop-{i:05d}" spread over `namespaces`, written straight into
    the store: device i was last seen i minutes before `now` (so the oldest are stale
    after 7 days: i >= 10080), its last result cycles through DEVICE_RESULTS.
    -> (namespace, device id) of each, in order of i."""
    now = time.time() if now is None else now
    rows = []
    for i in range(count):
        result, status, code = DEVICE_RESULTS[i % len(DEVICE_RESULTS)]
        seen = now - i * 60
        rows.append((namespaces[i % len(namespaces)], f"laptop-{i:05d}", token_id,
                     seen - 86400, seen, f"1.{i % 5}.0", f"192.0.2.{i % 250}", result, status,
                     code, seen))
    insert_rows(server, "INSERT INTO devices (namespace, device_id, token_id, first_seen_at, "
                "last_seen_at, client_version, last_ip, last_result, last_status, last_code, "
                "last_result_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return [(row[0], row[1]) for row in rows]


@contextlib.contextmanager
def running_server(directory: Path, env: dict | None = None, args: tuple = (),
                   token: bool = True, store_kind: str = "sqlite",
                   server_class: type = OxsyncServer, **server_options):
    """A server shared by a whole module (server.token: a read/write token for '*'); the
    module fails if the log shows a traceback or a remembered secret. Tests that share it
    use their own namespace."""
    server = server_class(directory, env, args, database_url_for(store_kind),
                          **server_options).start()
    try:
        if token:
            server.token = server.create_token(name="shared")
        yield server
    finally:
        server.stop()
    server.assert_log_clean()


@pytest.fixture(scope="module")
def shared(tmp_path_factory, store_kind):
    """A server with default settings for a module (modules that need other settings
    define their own `shared`)."""
    with running_server(tmp_path_factory.mktemp("shared"), store_kind=store_kind) as server:
        yield server


@pytest.fixture
def ns() -> str:
    """A namespace of its own for a test on a shared server."""
    return f"team/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_server(tmp_path, store_kind):
    """Factory: make_server(env={...}, args=[...], start=True) -> OxsyncServer, on this
    test's store kind (server_class and its own options for a subclass, e.g. TLS)."""
    servers = []

    def make(env=None, args=(), start=True, workdir=None, server_class=OxsyncServer,
             **server_options):
        directory = workdir or tmp_path / f"server{len(servers)}"
        directory.mkdir(exist_ok=True)
        server = server_class(directory, env, args, database_url_for(store_kind),
                              **server_options)
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.stop()
    for server in servers:
        server.assert_log_clean()


@pytest.fixture
def server(make_server) -> OxsyncServer:
    return make_server()


@pytest.fixture
def token(server) -> str:
    return server.create_token()


# -- answers and command results ----------------------------------------------------

# The error codes PROTOCOL.md names for these statuses; others carry a code of their own.
ERROR_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 410: "namespace_deleted",
               413: "payload_too_large", 429: "too_many_requests", 500: "internal_error",
               503: "unavailable", 507: "insufficient_storage"}


def assert_json_error(answer, status: int, *words: str, code: str | None = None) -> str:
    """`answer` (an Answer or a raw-socket RawAnswer) is the contract's JSON error:
    `status`, a JSON body {"error": {"code", "message"}}, the code PROTOCOL.md gives the
    status (or `code`), a message of a sentence naming each of `words` (any case), a
    Content-Length that fits, and on a 401 the Bearer challenge. -> the message."""
    assert answer.status == status, answer
    assert (answer.headers.get("Content-Type") or "").startswith("application/json"), \
        (answer, dict(answer.headers))
    error = answer.json["error"]
    assert isinstance(error, dict) and set(error) >= {"code", "message"}, error
    expected = code or ERROR_CODES.get(status)
    if expected:
        assert error["code"] == expected, error
    else:
        assert isinstance(error["code"], str) and error["code"], error
    message = error["message"]
    assert isinstance(message, str) and len(message) >= 10, error
    for word in words:
        assert word.lower() in message.lower(), (word, message)
    length = answer.headers.get("Content-Length")
    if length is not None:
        assert int(length) == len(answer.body), (length, answer)
    if status == 401:   # exactly one challenge
        challenges = answer.headers.get_all("WWW-Authenticate") \
            if hasattr(answer.headers, "get_all") else [answer.headers.get("WWW-Authenticate")]
        assert challenges == ['Bearer realm="oxsync"'], dict(answer.headers)
    return message


def one_error_line(result: subprocess.CompletedProcess, *fragments: str,
                   code: int | None = None) -> str:
    """A refused command: a non-zero exit (`code`, if given), no traceback anywhere, and
    exactly one non-empty line on stderr naming each fragment (any case). -> that line."""
    assert result.returncode != 0, result
    if code is not None:
        assert result.returncode == code, result
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
    return lines[0]


# -- the admin page, as a browser session ---------------------------------------------

def cookies_of(answer) -> dict[str, tuple[str, dict]]:
    """Set-Cookie headers -> {name: (value, {attribute (lowercase): value or True})}."""
    cookies = {}
    for header in answer.headers.get_all("Set-Cookie") or []:
        first, *attributes = [part.strip() for part in header.split(";")]
        name, _, value = first.partition("=")
        attrs = {}
        for attribute in attributes:
            key, sep, attr_value = attribute.partition("=")
            attrs[key.lower()] = attr_value if sep else True
        cookies[name] = (value, attrs)
    return cookies


class AdminClient:
    """What the admin page does: log in, then send the session cookie, and the CSRF token
    on every non-GET call. `headers` go with every request (e.g. X-Forwarded-For);
    `connection` (optional) carries every request. Passwords, session cookies and CSRF
    tokens it handles are remembered by the server as secrets its log must not show."""

    LOGIN = "/admin/api/login"

    def __init__(self, server: OxsyncServer, headers: dict | None = None, connection=None):
        self.server = server
        self.headers = dict(headers or {})
        self.connection = connection
        self.session: str | None = None
        self.csrf: str | None = None
        self.username: str | None = None
        server.remember(server.env.get("ADMIN_JWT_SECRET"), server.env.get("ADMIN_PASSWORD"))

    def login(self, password: str | None = None, username: str | None = None,
              expect: int | None = 200, headers: dict | None = None, **extra) -> Answer:
        """POST /admin/api/login (password: ADMIN_PASSWORD's by default); `expect` is the
        status required (None: any)."""
        password = self.server.env.get("ADMIN_PASSWORD") if password is None else password
        body = {"password": password, **extra}
        if username is not None:
            body["username"] = username
        self.server.remember(password)
        answer = self.server.request("POST", self.LOGIN, body,
                                     {**self.headers, **(headers or {})},
                                     connection=self.connection)
        assert expect is None or answer.status == expect, answer
        if answer.status == 200:
            self.adopt(answer)
        return answer

    def adopt(self, answer) -> None:
        """Take the session from a login or password-change answer."""
        self.session = cookies_of(answer)["oxsync_session"][0]
        self.csrf = answer.json["csrfToken"]
        self.username = answer.json["username"]
        self.server.remember(self.session, self.csrf)

    def auth_headers(self) -> dict:
        """The session cookie and the CSRF header, for a request made by hand."""
        return {"Cookie": f"oxsync_session={self.session}", "X-CSRF-Token": self.csrf}

    def call(self, method: str, path: str, body=None, csrf: bool | str | None = True,
             headers: dict | None = None) -> Answer:
        sent = dict(self.headers)
        if self.session is not None:
            sent["Cookie"] = f"oxsync_session={self.session}"
        if isinstance(csrf, str):
            sent["X-CSRF-Token"] = csrf
        elif csrf and self.csrf and method not in ("GET", "HEAD"):
            sent["X-CSRF-Token"] = self.csrf
        sent.update(headers or {})
        if isinstance(body, (list, int, str)) and not isinstance(body, bytes):
            body = json.dumps(body)
            sent.setdefault("Content-Type", "application/json")
        return self.server.request(method, path, body, sent, connection=self.connection)

    def get(self, path, **kwargs) -> Answer:
        return self.call("GET", path, **kwargs)

    def post(self, path, body=None, **kwargs) -> Answer:
        return self.call("POST", path, body, **kwargs)

    def patch(self, path, body=None, **kwargs) -> Answer:
        return self.call("PATCH", path, body, **kwargs)

    def delete(self, path, **kwargs) -> Answer:
        return self.call("DELETE", path, **kwargs)


def admin_ns(name: str, rest: str = "") -> str:
    """An admin API path of one namespace."""
    return f"/admin/api/namespaces/{quote(name, safe='')}{rest}"


# -- worker threads ------------------------------------------------------------------

@contextlib.contextmanager
def workers(*targets, timeout: float = 120, barrier: bool = False):
    """Run each callable in a thread of its own while the block runs; on leaving it, wait
    for all of them and re-raise (in the test) the first exception any of them raised.
    -> a list that holds each callable's return value once the block has been left.
    barrier: release them all at once, when every thread has started."""
    results: list = [None] * len(targets)
    failures: list[tuple[float, int, BaseException]] = []
    start = threading.Barrier(len(targets)) if barrier and targets else None

    def run(index, target):
        try:
            if start is not None:
                start.wait(30)
            results[index] = target()
        except BaseException as error:  # noqa: BLE001 - re-raised in the test below
            failures.append((time.monotonic(), index, error))

    threads = [threading.Thread(target=run, args=(i, t), daemon=True, name=f"worker-{i}")
               for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    try:
        yield results
    finally:
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    if failures:
        _, index, error = min(failures, key=lambda failure: failure[0])
        detail = "".join(traceback.format_exception(error))
        raise AssertionError(f"worker {index} of {len(targets)} failed "
                             f"({len(failures)} failed in all):\n{detail}") from error
    stuck = [thread.name for thread in threads if thread.is_alive()]
    assert not stuck, f"workers still running after {timeout} s: {stuck}"


def run_workers(*targets, timeout: float = 120, barrier: bool = False) -> list:
    """Run the callables in threads, wait, re-raise the first exception -> their results."""
    with workers(*targets, timeout=timeout, barrier=barrier) as results:
        pass
    return results

"""Shared helpers for the reliability tests (not collected: the name does not start with test_).

Raw-socket HTTP (to send what http.client refuses to send) and the one reader of raw
answers (pipelined ones too), /proc sampling of the server process, killing a command
part-way through, and checks made directly on the store (the SQLite file, or either store).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import time
from dataclasses import dataclass, field

import pytest

# -- raw HTTP -------------------------------------------------------------------

class Headers(dict):
    """Header name -> last value, looked up in any case (like http.client's)."""

    def __init__(self, pairs=()):
        super().__init__((name.lower(), value) for name, value in pairs)

    def __getitem__(self, name):
        return super().__getitem__(name.lower())

    def __contains__(self, name):
        return super().__contains__(name.lower())

    def get(self, name, default=None):
        return super().get(name.lower(), default)


@dataclass
class RawAnswer:
    status: int
    reason: str
    headers: Headers         # name (any case) -> last value
    header_list: list        # [(name, value)] in order
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<RawAnswer {self.status} {self.body[:200]!r}>"


@dataclass
class Exchange:
    """Everything the server sent on one connection, and how the connection ended."""
    answers: list = field(default_factory=list)
    ending: str = ""          # "eof", "reset", "open" (still open at the end), "timeout"
    leftover: bytes = b""     # bytes that did not parse as a whole answer
    seconds: float = 0.0

    def __repr__(self):
        return (f"<Exchange {[a.status for a in self.answers]} ending={self.ending} "
                f"leftover={self.leftover[:120]!r} {self.seconds:.2f}s>")


def parse_answers(data: bytes, no_body: tuple = (), interim: bool = False) -> tuple[list, bytes]:
    """Split a byte stream into whole HTTP/1.1 answers (Content-Length framing only).
    no_body: indexes of answers to HEAD requests (a Content-Length but no body);
    interim: keep 1xx answers (100 Continue) instead of passing over them."""
    answers = []
    while data:
        head_end = data.find(b"\r\n\r\n")
        if head_end < 0:
            break
        head = data[:head_end].decode("latin-1").split("\r\n")
        parts = head[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            break
        header_list = []
        for line in head[1:]:
            name, _, value = line.partition(":")
            header_list.append((name.strip(), value.strip()))
        headers = Headers(header_list)
        status = int(parts[1])
        length = int(headers.get("content-length", "0"))
        if status in (204, 304) or 100 <= status < 200 or len(answers) in no_body:
            length = 0
        end = head_end + 4 + length
        if len(data) < end:
            break
        if interim or not 100 <= status < 200:
            answers.append(RawAnswer(status, parts[2] if len(parts) > 2 else "", headers,
                                     header_list, data[head_end + 4:end]))
        data = data[end:]
    return answers, data


def raw_connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_done(sock: socket.socket, expect: int | None = None, timeout: float = 5.0,
                    started: float | None = None, no_body: tuple = (),
                    interim: bool = False) -> Exchange:
    """Read until EOF/reset, or until `expect` whole answers arrived, or the timeout."""
    started = started or time.monotonic()
    deadline = time.monotonic() + timeout
    data, ending = b"", "timeout"
    while True:
        if expect is not None and len(parse_answers(data, no_body, interim)[0]) >= expect:
            ending = "open"
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            ending = "reset"
            break
        if not chunk:
            ending = "eof"
            break
        data += chunk
    answers, leftover = parse_answers(data, no_body, interim)
    return Exchange(answers, ending, leftover, time.monotonic() - started)


def read_answer(sock: socket.socket, timeout: float = 5.0) -> RawAnswer:
    """The next whole answer on a connection (it must come within the timeout)."""
    exchange = read_until_done(sock, expect=1, timeout=timeout)
    assert exchange.answers, f"no answer: {exchange}"
    return exchange.answers[0]


def raw_exchange(port: int, payload: bytes, expect: int | None = None,
                 timeout: float = 5.0, shut_write: bool = False,
                 no_body: tuple = ()) -> Exchange:
    """Send raw bytes on a fresh connection and collect what comes back."""
    started = time.monotonic()
    with raw_connect(port, timeout) as sock:
        try:
            sock.sendall(payload)
            if shut_write:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading everything
        return read_until_done(sock, expect, timeout, started, no_body)


def raw_request(port: int, payload: bytes, timeout: float = 5.0) -> RawAnswer:
    """Send raw bytes on a fresh connection -> the one answer (it must come)."""
    exchange = raw_exchange(port, payload, expect=1, timeout=timeout)
    assert exchange.answers, f"no answer: {exchange}"
    return exchange.answers[0]


def raw_burst(port: int, payload: bytes, count: int, timeout: float = 60.0) -> list:
    """The same request on `count` connections, all opened first and then sent at once
    -> each connection's answer (None where none came)."""
    sockets = [raw_connect(port, timeout) for _ in range(count)]
    try:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.sendall(payload)
        deadline = time.monotonic() + timeout
        exchanges = [read_until_done(sock, expect=1, timeout=max(0.1, deadline - time.monotonic()))
                     for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    return [exchange.answers[0] if exchange.answers else None for exchange in exchanges]


# -- the server process ---------------------------------------------------------

def proc_status(pid: int) -> dict:
    """Threads, resident memory (bytes) and open file descriptors of a process."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            values[key] = value.strip()
    return {"threads": int(values["Threads"]),
            "rss": int(values["VmRSS"].split()[0]) * 1024,
            "peak": int(values["VmHWM"].split()[0]) * 1024,   # the highest RSS so far
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def wait_for(predicate, timeout: float, interval: float = 0.1):
    """Poll until predicate() is truthy -> its value, or the last value after the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def raise_nofile(wanted: int) -> None:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


MiB = 1024 * 1024


def kill_partway(server, args: list[str], progress, env: dict | None = None,
                 tries: int = 12) -> float:
    """Run an oxsync command on the server's store and SIGKILL it part-way through.

    progress(db) -> the fraction of the work done, from 0 (nothing yet) to 1 (all), read on
    an open connection to the store (conftest.store_connection: rows are indexed by
    column name on either store). It is polled as fast as the store answers (one connection, no sleep), and
    the kill is sent once it reaches a target fraction (half the work at first). If the
    command finished first, the store is put back from a copy and the next try aims 4
    times earlier, down to "at the first sign of progress".
    -> the fraction done when it was killed (strictly between 0 and 1).
    """
    from conftest import store_connection
    saved = save_store(server)
    target, seen = 0.5, []
    for _ in range(tries):
        process = server.cli_process(*args, env=env)
        with store_connection(server) as (db, _):
            while process.poll() is None:
                try:
                    done = progress(db)
                except sqlite3.OperationalError:   # busy for a moment: look again
                    continue
                if 0 < done < 1 and done >= target:
                    break
                time.sleep(0.0002)
            process.send_signal(signal.SIGKILL)
            _, stderr = process.communicate()
            assert b"Traceback" not in stderr, stderr.decode(errors="replace")
            done = progress(db)
        seen.append(round(done, 3))
        if 0 < done < 1:
            return done
        # Finished before the kill (or never started): start over from the copy.
        restore_store(server, saved)
        target = target / 4 if target > 0.001 else 0.0
    pytest.fail(f"could not kill {args[0]} part-way through in {tries} tries "
                f"(progress seen after each kill: {seen})")


# -- the database file ----------------------------------------------------------

def save_store(server) -> str:
    """A copy of the (stopped) server's store -> what restore_store() takes back."""
    if server.store_kind == "postgres":
        import _postgres
        copy = _postgres.database_name(server.database_url) + "_saved"
        _postgres.clone_database(server.database_url,
                                 _postgres.database_name(server.database_url), copy)
        return copy
    copy = str(server.workdir / "before-kill.db")
    shutil.copyfile(server.db_path, copy)
    return copy


def restore_store(server, saved: str) -> None:
    if server.store_kind == "postgres":
        import _postgres
        _postgres.clone_database(server.database_url, saved,
                                 _postgres.database_name(server.database_url))
        return
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{server.db_path}{suffix}")
    shutil.copyfile(saved, server.db_path)



def key_id(key_hex: str) -> str:
    """The id oxsync gives an encryption key (what payloads and settings record)."""
    return hashlib.sha256(b"oxsync key id\0" + bytes.fromhex(key_hex)).hexdigest()[:16]


def db_connect(path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), timeout=30)
    db.execute("PRAGMA busy_timeout = 30000")
    return db


@contextlib.contextmanager
def db_open(path):
    """A connection that is closed on leaving the block (sqlite3's own 'with' only commits):
    no handle may outlive a test's kill, restore or unmount of the file."""
    db = db_connect(path)
    try:
        yield db
    finally:
        db.close()


def integrity_check(path) -> str:
    with db_open(path) as db:
        return "; ".join(row[0] for row in db.execute("PRAGMA integrity_check"))


SEAL_OVERHEAD = 12 + 16   # nonce + Poly1305 tag of a sealed payload
OWNERS = ("blobs", "blob_versions", "objects")   # the rows that point at a payload


def assert_payload_rows_whole(server, sealed: bool = False, hashes: bool = True) -> None:
    """On either store: every stored payload is as long as its row says (and a plaintext
    snapshot hashes right), and no payload is stored that nothing points at."""
    from conftest import db_rows
    overhead = SEAL_OVERHEAD if sealed else 0
    data = "CASE WHEN p.key_id IS NULL THEN p.data END" if hashes else "NULL"
    for table in OWNERS:
        digest = "t.sha256" if table != "objects" else "NULL"
        for row in db_rows(server, f"SELECT t.namespace, t.size, length(p.data) AS stored, "
                                   f"{digest} AS sha256, {data} AS data "
                                   f"FROM {table} t JOIN payloads p ON p.id = t.payload_id"):
            assert row["stored"] == row["size"] + overhead, (table, row["namespace"],
                                                             row["size"], row["stored"])
            if row["data"] is not None and row["sha256"] is not None:
                assert hashlib.sha256(row["data"]).hexdigest() == row["sha256"], \
                    (table, row["namespace"])
    orphans = db_rows(server, "SELECT count(*) AS n FROM payloads p WHERE " + " AND ".join(
        f"NOT EXISTS (SELECT 1 FROM {table} WHERE payload_id = p.id)" for table in OWNERS))
    assert orphans[0]["n"] == 0, "payloads stored that no row points at"


def assert_file_intact(server) -> None:
    """SQLite's own integrity check of the server's file (PostgreSQL guards its pages)."""
    if server.store_kind == "sqlite":
        assert integrity_check(server.db_path) == "ok"


def data_fingerprint(path) -> dict:
    """A digest of everything sync writes may change (not token usage, not login failures)."""
    digests = {}
    with db_open(path) as db:
        for table, order in [("namespaces", "name"), ("blobs", "namespace"),
                             ("objects", "namespace, path"), ("manifests", "namespace, seq"),
                             ("conflicts", "id"), ("payloads", "id")]:
            digest = hashlib.sha256()
            for row in db.execute(f"SELECT * FROM {table} ORDER BY {order}"):
                digest.update(repr(tuple(row)).encode())
            digests[table] = digest.hexdigest()
    return digests

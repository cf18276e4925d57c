"""copy-store and backup --database-url in one pass (issue 21): a store larger than several
copy batches reads back identical after SQLite -> PostgreSQL -> SQLite, a copy killed with
SIGKILL leaves no target that looks complete (the next copy works), progress goes to stderr
one line per table when stderr is not a terminal (and redraws one line on a terminal), and
a bad target is one error line and exit 2.
"""

from __future__ import annotations

import hashlib
import os
import pty
import re
import signal
import sqlite3
import subprocess
import time

import _postgres
import pytest
from conftest import (OXSYNC, AdminClient, OxsyncServer, ns_path, object_path,
                      one_error_line, quoted)

KEY = "44" * 32
ADMIN_PASSWORD = "copy store admin pw"
ENV = {"ENCRYPTION_KEY": KEY, "ADMIN_PASSWORD": ADMIN_PASSWORD, "ADMIN_JWT_SECRET": "j" * 40}
MiB = 1024 * 1024
needs_postgres = pytest.mark.skipif(_postgres.available() is not None,
                                    reason=f"PostgreSQL store: {_postgres.available()}")


# -- stores and their rows ------------------------------------------------------------

def sqlite_tables(path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name")]


def sqlite_rows(path, table: str) -> set[tuple]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return set(db.execute(f"SELECT * FROM {table}"))


def postgres_rows(url: str, table: str) -> set[tuple]:
    import psycopg
    with psycopg.connect(url, autocommit=True) as db:
        return set(db.execute(f"SELECT * FROM {table}").fetchall())


def postgres_count(url: str, table: str) -> int:
    """Rows in a table (0 while the copy has not made the table yet)."""
    import psycopg
    with psycopg.connect(url, autocommit=True) as db:
        try:
            return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        except psycopg.errors.UndefinedTable:
            return 0


def assert_same_rows(original, copy_rows, tables: list[str]) -> None:
    """Every table of the original SQLite file, row for row, in the copy."""
    for table in tables:
        want, got = sqlite_rows(original, table), copy_rows(table)
        assert len(got) == len(want) and got == want, \
            f"table {table}: {len(got)} rows in the copy, {len(want)} in the original"


def file_digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_store(server, target, *more: str, check: bool = True) -> subprocess.CompletedProcess:
    return server.cli("copy-store", "--to", str(target), *more, check=check)


# -- a store with every table filled, bigger than several batches ---------------------------

def fill(server, token: str) -> None:
    """2,500 objects (3 batches of rows), 3 MiB snapshots kept in history (payload batches
    are cut at 8 MiB), manifests and the objects they name, a conflict, a device, a restored
    namespace (its objects queued for retention), an admin user, a failed login and an
    ended session: a row in every table."""
    connection = server.connect()
    for number in range(2500):
        namespace = f"copy/{number % 5}"
        path = f"structured/{'Zeta' if number % 2 else 'älpha'}/{number:05d}.json"
        answer = server.request("PUT", object_path(namespace, path),
                                f'{{"n": {number}}}'.encode() * (1 + number % 7),
                                token=token, connection=connection)
        assert answer.status == 201, answer
    connection.close()
    for number in range(4):
        answer = server.request("PUT", ns_path("copy/0", "blob"), os.urandom(3 * MiB),
                                {"X-OxideTerm-Revision": f"snap-{number}",
                                 "X-OxideTerm-Device-Id": "laptop-1"}, token=token)
        assert answer.status == 200, answer
    etag = None
    for number in range(5):
        answer = server.request("PUT", ns_path("copy/1", "metadata"),
                                {"revision": f"r{number}", "format": "structured-v2",
                                 "sections": {"connections": {
                                     "revision": f"c{number}",
                                     "path": f"structured/Zeta/{2 * number + 1:05d}.json"}},
                                 "note": 0.1 * number},
                                token=token)
        assert answer.status == 200, answer
        etag = answer.json["etag"]
    stale = server.request("PUT", ns_path("copy/1", "metadata"), {"revision": "late"},
                           {"If-Match": quoted(etag + "x")}, token=token)
    assert stale.status == 412, stale
    server.cli("namespace", "delete", "copy/2")
    server.cli("namespace", "restore", "copy/2")
    admin = AdminClient(server)
    admin.login()
    assert admin.post("/admin/api/logout").status in (200, 204)
    AdminClient(server).login(password="wrong password", expect=401)


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """A stopped SQLite store with every table filled, and its token."""
    directory = tmp_path_factory.mktemp("filled")
    server = OxsyncServer(directory, ENV).start()
    token = server.create_token()
    fill(server, token)
    server.stop()
    server.assert_log_clean()
    return server, token


@pytest.fixture(scope="module")
def bulky(tmp_path_factory):
    """A stopped SQLite store of 80 MiB of objects: a copy of it takes a while."""
    directory = tmp_path_factory.mktemp("bulky")
    server = OxsyncServer(directory).start()
    token = server.create_token()
    connection = server.connect()
    for number in range(80):
        answer = server.request("PUT", object_path("bulk/one", f"big/{number}.bin"),
                                os.urandom(MiB), token=token, connection=connection)
        assert answer.status == 201, answer
    connection.close()
    server.stop()
    return server


# -- identical copies -----------------------------------------------------------------------

@needs_postgres
def test_round_trip_through_postgres_reads_back_every_row(filled, tmp_path):
    server, token = filled
    tables = sqlite_tables(server.db_path)
    assert {"payloads", "objects", "manifests", "blob_versions", "conflicts", "admin_users",
            "login_failures", "ended_sessions"} <= set(tables)
    for table in tables:
        assert sqlite_rows(server.db_path, table), f"the source has no row in {table}"

    url = _postgres.new_database()
    copied = copy_store(server, url)
    assert "checked every table" in copied.stderr and "2500 objects" in copied.stderr, copied
    assert_same_rows(server.db_path, lambda table: postgres_rows(url, table), tables)

    back = tmp_path / "back" / "sync.db"      # a folder that does not exist yet
    result = server.cli("copy-store", "--to", str(back), "--database-url", url, store=False)
    assert "checked every table" in result.stderr, result
    assert_same_rows(server.db_path, lambda table: sqlite_rows(back, table), tables)
    assert not list(back.parent.glob("*.partial*"))

    backup = tmp_path / "pg-backup.db"
    server.cli("backup", "--to", str(backup), "--database-url", url, store=False)
    assert_same_rows(server.db_path, lambda table: sqlite_rows(backup, table), tables)
    verified = server.cli("verify-backup", str(backup), store=False)
    assert "ok" in verified.stdout, verified

    # The copy that came back serves: same key, same token, new ids after the copied ones.
    served = OxsyncServer(tmp_path, ENV)
    served.db_path = back
    served.start()
    try:
        answer = served.request("GET", object_path("copy/3", "structured/Zeta/00003.json"),
                                token=token)
        assert answer.status == 200 and answer.body == b'{"n": 3}' * 4, answer
        assert served.request("PUT", object_path("copy/3", "new.json"), b"new",
                              token=token).status == 201
    finally:
        served.stop()
    served.assert_log_clean()


def test_copy_into_sqlite_and_backup_read_back_every_row(filled, tmp_path):
    server, _ = filled
    tables = sqlite_tables(server.db_path)
    target = tmp_path / "copy.db"
    copy_store(server, target)
    assert_same_rows(server.db_path, lambda table: sqlite_rows(target, table), tables)
    backup = tmp_path / "backup.db"
    server.cli("backup", "--to", str(backup))
    assert_same_rows(server.db_path, lambda table: sqlite_rows(backup, table), tables)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.db", "backup.db.sha256",
                                                          "copy.db"]


# -- interrupted copies ---------------------------------------------------------------------

def kill_when(process: subprocess.Popen, ready, timeout: float = 60) -> None:
    """SIGKILL the process as soon as ready() is true (fails if it finished first)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, \
            f"the copy finished before it could be interrupted: {process.stderr.read()!r}"
        assert time.monotonic() < deadline, "the copy never got going"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    process.stdout.close()
    process.stderr.close()


def test_a_killed_copy_into_sqlite_leaves_no_target_and_the_next_one_works(bulky, tmp_path):
    target = tmp_path / "copy.db"
    partial = tmp_path / "copy.db.partial"
    process = bulky.cli_process("copy-store", "--to", str(target))
    kill_when(process, lambda: partial.exists() and partial.stat().st_size > 8 * MiB)
    assert not target.exists(), "a killed copy left a file at the target's name"

    result = copy_store(bulky, target)
    assert "checked every table" in result.stderr, result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.db"]   # the partial is gone
    assert_same_rows(bulky.db_path, lambda table: sqlite_rows(target, table),
                     ["objects", "payloads"])


def test_a_killed_backup_leaves_no_backup(bulky, tmp_path):
    target = tmp_path / "backup.db"
    process = bulky.cli_process("backup", "--to", str(target))
    kill_when(process, lambda: (tmp_path / "backup.db.partial").exists())
    assert not target.exists() and not (tmp_path / "backup.db.sha256").exists()
    bulky.cli("backup", "--to", str(target))
    assert "ok" in bulky.cli("verify-backup", str(target), store=False).stdout
    assert not (tmp_path / "backup.db.partial").exists()


@needs_postgres
def test_a_killed_copy_into_postgres_is_refused_by_a_server_and_redone(bulky, tmp_path):
    url = _postgres.new_database()
    process = bulky.cli_process("copy-store", "--to", url)
    kill_when(process, lambda: postgres_count(url, "payloads") > 0)
    assert postgres_count(url, "objects") < 80

    (tmp_path / "pg").mkdir()
    refused = OxsyncServer(tmp_path / "pg", database_url=url).serve_once()
    one_error_line(refused, "copy-store", "did not finish")
    assert refused.returncode == 2, refused

    redone = copy_store(bulky, url)
    assert "did not finish" in redone.stderr and "checked every table" in redone.stderr, redone
    assert_same_rows(bulky.db_path, lambda table: postgres_rows(url, table),
                     sqlite_tables(bulky.db_path))
    served = OxsyncServer(tmp_path / "pg", database_url=url).start()
    served.stop()
    served.assert_log_clean()


# -- progress -------------------------------------------------------------------------------

def test_progress_is_one_line_per_table_when_stderr_is_not_a_terminal(filled, tmp_path):
    server, _ = filled
    tables = sqlite_tables(server.db_path)
    result = copy_store(server, tmp_path / "copy.db")
    lines = result.stderr.splitlines()
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    for table in tables:
        mine = [line for line in lines if line.startswith(f"copy-store: {table}: ")]
        assert len(mine) == 1, (table, result.stderr)
        assert re.search(r": [\d,]+ rows, [\d,.]+ MB in [\d.]+ s \([\d,]+ rows/s, [\d,.]+ MB/s\)$",
                         mine[0]), mine[0]
    objects = next(line for line in lines if line.startswith("copy-store: objects: "))
    assert objects.startswith("copy-store: objects: 2,500 rows"), objects
    assert len([line for line in lines if line.startswith("copy-store: check: ")]) == 1
    assert len(lines) == len(tables) + 2, result.stderr   # + the check + the summary

    backup = server.cli("backup", "--to", str(tmp_path / "backup.db"))
    steps = [line.split(":")[1].strip() for line in backup.stderr.splitlines()[:-1]]
    assert steps == ["database file", "sha256"], backup.stderr


def test_progress_on_a_terminal_redraws_one_line(filled, tmp_path):
    server, _ = filled
    leader, follower = pty.openpty()
    process = subprocess.Popen(OXSYNC + ["copy-store", "--to", str(tmp_path / "copy.db"),
                                         *server.store_args()],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=follower, env=server.environment())
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:   # EIO: the other end is closed
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(60) == 0, output
    text = output.decode()
    assert "\r\x1b[K" in text, text
    assert re.search(r"copy-store: objects: 0 of 2,500 rows", text), text
    assert "copy-store: objects: 2,500 rows" in text, text


# -- bad targets ----------------------------------------------------------------------------

def test_a_non_empty_or_unwritable_target_is_one_line_and_exit_2(filled, tmp_path):
    server, _ = filled
    target = tmp_path / "copy.db"
    copy_store(server, target)
    before = file_digest(target)
    again = copy_store(server, target, check=False)
    one_error_line(again, "not empty", code=2)
    assert file_digest(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.db"]

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for command in (["copy-store", "--to", str(blocker / "copy.db")],
                    ["backup", "--to", str(blocker / "backup.db")]):
        result = server.cli(*command, check=False)
        one_error_line(result, "a-file", code=2)
    assert blocker.read_text() == "not a folder"

    served = server.cli("copy-store", "--to", str(server.db_path), check=False)
    one_error_line(served, "not empty", code=2)

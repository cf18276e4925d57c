"""Backups while the server runs, verification and restore (issue 4, "Backups while running").

`backup --to FILE` copies the live database with SQLite's online backup API and writes
FILE.sha256; `verify-backup FILE` checks the sidecar and `PRAGMA integrity_check`;
`restore --from FILE` verifies first and refuses to replace an existing database without
--force. The reference server's flags `--backup-to`, `--verify-backup` and `--restore-from`
are aliases of those commands.
"""

from __future__ import annotations

import hashlib
import os
import stat
import re
import shutil
import sqlite3
import subprocess
import threading
import time

import pytest
from conftest import ns_path, object_path, one_error_line

NS = "backup/live"
KiB = 1024


# -- helpers ---------------------------------------------------------------------------

def oxsync(server, *args) -> subprocess.CompletedProcess:
    """An oxsync command WITHOUT the store that server.cli appends (verify-backup)."""
    return server.cli(*args, store=False, check=False)


def put_object(server, token, path: str, data: bytes, connection=None) -> int:
    answer = server.request("PUT", object_path(NS, path), data, token=token,
                            connection=connection)
    assert answer.status in (200, 201), answer
    return answer.status


def put_blob(server, token, data: bytes, revision: str) -> None:
    answer = server.request("PUT", ns_path(NS, "blob"), data,
                            {"X-OxideTerm-Revision": revision}, token=token)
    assert answer.status == 200, answer


def put_manifest(server, token, revision: str, paths: dict[str, str]) -> None:
    sections = {name: {"revision": revision, "path": path, "contentType": "application/json"}
                for name, path in paths.items()}
    manifest = {"format": "structured-v2", "revision": revision, "sections": sections}
    answer = server.request("PUT", ns_path(NS, "metadata"), manifest, token=token)
    assert answer.status == 200, answer


def write_state(server, token, label: str) -> dict:
    """Objects, a blob and a manifest whose bytes all name `label` -> what was written."""
    state = {
        "objects": {
            "structured/connections/shared.json": f"connections {label}".encode() * 40,
            f"structured/forwards/{label}.json": f"forwards {label}".encode() * 40,
        },
        "blob": f"snapshot {label} ".encode() * 500,
        "revision": f"rev-{label}",
    }
    for path, data in state["objects"].items():
        put_object(server, token, path, data)
    put_blob(server, token, state["blob"], state["revision"])
    put_manifest(server, token, state["revision"],
                 {"connections": "structured/connections/shared.json",
                  "forwards": f"structured/forwards/{label}.json"})
    return state


def assert_serves(server, token, state: dict) -> None:
    connection = server.connect()
    try:
        for path, data in state["objects"].items():
            answer = server.request("GET", object_path(NS, path), token=token,
                                    connection=connection)
            assert answer.status == 200 and answer.body == data, (path, answer)
        answer = server.request("GET", ns_path(NS, "blob"), token=token, connection=connection)
        assert answer.status == 200 and answer.body == state["blob"], answer
        metadata = server.request("GET", ns_path(NS, "metadata"), token=token,
                                  connection=connection).json
        assert metadata["revision"] == state["revision"], metadata
    finally:
        connection.close()


def corrupt_copy(source, target, offset: int | None = None, keep_sidecar: bool = True) -> None:
    """Copy a backup (and its sidecar) and flip one byte of the copy."""
    data = bytearray(source.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0xFF
    target.write_bytes(data)
    if keep_sidecar:
        shutil.copyfile(f"{source}.sha256", f"{target}.sha256")


def file_digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def db_files(server) -> dict[str, str]:
    return {p.name: file_digest(p) for p in sorted(server.workdir.glob("sync.db*"))}


class Writer(threading.Thread):
    """PUTs small objects in a loop on one keep-alive connection; records every answer."""

    def __init__(self, server, token, partial_file):
        super().__init__(daemon=True)
        self.server, self.token, self.partial = server, token, partial_file
        self.stop = threading.Event()
        self.results: list[tuple] = []   # (path, started, ended, status, during_copy)
        self.errors: list[BaseException] = []

    def run(self):
        connection = self.server.connect(timeout=10)
        number = 0
        try:
            while not self.stop.is_set():
                path = f"structured/live/w{number:05d}.json"
                copying_before = self.partial.exists()
                started = time.monotonic()
                answer = self.server.request("PUT", object_path(NS, path),
                                             os.urandom(16 * KiB), token=self.token,
                                             connection=connection)
                ended = time.monotonic()
                during = copying_before and self.partial.exists()
                self.results.append((path, started, ended, answer.status, during))
                number += 1
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.errors.append(error)
        finally:
            connection.close()

    def wait_for(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.results) < count and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.01)
        assert len(self.results) >= count, (len(self.results), self.errors)


# -- backups while running ----------------------------------------------------------------

def test_backup_while_writing_is_consistent_and_verified(make_server):
    server = make_server()
    token = server.create_token()
    state = write_state(server, token, "base")
    # Some bulk, so that the copy takes long enough for writes to land during it.
    connection = server.connect()
    bulk = {}
    for number in range(48):
        path = f"structured/bulk/b{number:02d}.oxide"
        bulk[path] = os.urandom(512 * KiB)
        put_object(server, token, path, bulk[path], connection)
    connection.close()

    backup = server.workdir / "backups" / "sync-backup.db"
    backup.parent.mkdir()
    writer = Writer(server, token, backup.with_name(backup.name + ".partial"))
    writer.start()
    writer.wait_for(5)
    started = time.monotonic()
    result = server.cli("backup", "--to", str(backup))
    finished = time.monotonic()
    count = len(writer.results)
    writer.wait_for(count + 5)
    writer.stop.set()
    writer.join(10)

    assert not writer.errors, writer.errors
    statuses = {status for _, _, _, status, _ in writer.results}
    assert statuses <= {200, 201}, statuses
    assert any(during for *_, during in writer.results), \
        "no PUT completed while the backup file was being copied: did the backup block writes?"
    assert "Traceback" not in result.stderr

    # The sidecar, in `sha256sum` format, matches the file.
    sidecar = backup.with_name(backup.name + ".sha256")
    text = sidecar.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}  sync-backup\.db\n", text), repr(text)
    assert text.split()[0] == file_digest(backup)
    check = subprocess.run(["sha256sum", "-c", sidecar.name], cwd=backup.parent, check=False,
                           capture_output=True, text=True)
    assert check.returncode == 0, check
    assert not backup.with_name(backup.name + ".partial").exists()

    verified = oxsync(server, "verify-backup", str(backup))
    assert verified.returncode == 0, verified
    assert "ok" in verified.stdout.lower(), verified.stdout
    assert "Traceback" not in verified.stdout + verified.stderr

    # A consistent snapshot: everything acknowledged before the backup started is in it,
    # nothing that was sent after it finished is, and every payload is whole.
    with sqlite3.connect(f"file:{backup}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        rows = {path: (size, length) for path, size, length in db.execute(
            "SELECT o.path, o.size, length(p.data) FROM objects o JOIN payloads p "
            "ON p.id = o.payload_id WHERE o.namespace = ?", (NS,))}
        tokens = db.execute("SELECT count(*) FROM tokens").fetchone()[0]
    for path, data in {**state["objects"], **bulk}.items():
        assert rows.get(path) == (len(data), len(data)), path
    for path, begun, ended, _, _ in writer.results:
        if ended < started:
            assert path in rows, f"{path} was acknowledged before the backup began"
        if begun > finished:
            assert path not in rows, f"{path} was sent after the backup finished"
        if path in rows:
            assert rows[path] == (16 * KiB, 16 * KiB), path
    assert tokens == 1
    # ...and the server still answers with everything.
    assert_serves(server, token, state)


def test_verify_backup_rejects_a_damaged_file_or_a_missing_sidecar(server, token):
    write_state(server, token, "v")
    backup = server.workdir / "good.db"
    server.cli("backup", "--to", str(backup))
    assert oxsync(server, "verify-backup", str(backup)).returncode == 0

    # One byte changed: the sidecar no longer matches.
    damaged = server.workdir / "damaged.db"
    corrupt_copy(backup, damaged)
    one_error_line(oxsync(server, "verify-backup", str(damaged)), "damaged.db")

    # One byte changed AND a matching sidecar: SQLite's own check must catch it.
    # (Byte 100 is the first b-tree page header, right after the file header.)
    rehashed = server.workdir / "rehashed.db"
    corrupt_copy(backup, rehashed, offset=100, keep_sidecar=False)
    rehashed.with_name("rehashed.db.sha256").write_text(
        f"{file_digest(rehashed)}  rehashed.db\n")
    one_error_line(oxsync(server, "verify-backup", str(rehashed)), "rehashed.db")

    # No sidecar at all.
    lonely = server.workdir / "lonely.db"
    shutil.copyfile(backup, lonely)
    one_error_line(oxsync(server, "verify-backup", str(lonely)), "sha256")

    # The good backup is still good (the checks above changed nothing).
    assert oxsync(server, "verify-backup", str(backup)).returncode == 0


@pytest.mark.sqlite_only   # compares or damages the database file itself
def test_restore_brings_back_exactly_the_backed_up_data(make_server):
    server = make_server()
    token = server.create_token()
    before = write_state(server, token, "before")
    backup = server.workdir / "drill.db"
    server.cli("backup", "--to", str(backup))
    after = write_state(server, token, "after")   # overwrites shared.json, adds more
    assert after["objects"]["structured/connections/shared.json"] != \
        before["objects"]["structured/connections/shared.json"]

    # Refused while the database exists (here: a server is using it), one line, no change.
    refused = server.cli("restore", "--from", str(backup), check=False)
    one_error_line(refused, "force")
    assert_serves(server, token, after)

    assert server.stop() == 0
    refused = server.cli("restore", "--from", str(backup), check=False)
    one_error_line(refused, "force")

    restored = server.cli("restore", "--from", str(backup), "--force")
    assert "Traceback" not in restored.stderr
    server.start()
    assert_serves(server, token, before)
    gone = server.request("GET", object_path(NS, "structured/forwards/after.json"), token=token)
    assert gone.status == 404, "an object written after the backup survived the restore"
    with sqlite3.connect(server.db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.sqlite_only   # compares or damages the database file itself
def test_restore_verifies_first_and_leaves_the_database_alone(make_server):
    server = make_server()
    token = server.create_token()
    write_state(server, token, "old")
    backup = server.workdir / "backup.db"
    server.cli("backup", "--to", str(backup))
    current = write_state(server, token, "current")
    assert server.stop() == 0
    untouched = db_files(server)

    damaged = server.workdir / "damaged.db"
    corrupt_copy(backup, damaged)
    one_error_line(server.cli("restore", "--from", str(damaged), "--force",
                                     check=False))
    assert db_files(server) == untouched

    no_sidecar = server.workdir / "no-sidecar.db"
    shutil.copyfile(backup, no_sidecar)
    one_error_line(server.cli("restore", "--from", str(no_sidecar), "--force",
                                     check=False), "sha256")
    assert db_files(server) == untouched

    server.start()
    assert_serves(server, token, current)

    # Restoring to a path where no database exists needs no --force.
    target = server.workdir / "elsewhere" / "restored.db"
    target.parent.mkdir()
    result = oxsync(server, "restore", "--from", str(backup), "--db-path", str(target))
    assert result.returncode == 0, result
    with sqlite3.connect(target) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        paths = {row[0] for row in db.execute("SELECT path FROM objects")}
    assert paths == {"structured/connections/shared.json", "structured/forwards/old.json"}


@pytest.mark.sqlite_only   # compares or damages the database file itself
def test_legacy_backup_verify_and_restore_flags_do_what_the_commands_do(make_server):
    server = make_server()
    token = server.create_token()
    before = write_state(server, token, "legacy")
    backup = server.workdir / "legacy.db"
    result = server.cli("--backup-to", str(backup))
    assert "Traceback" not in result.stderr
    assert backup.exists() and backup.with_name("legacy.db.sha256").exists()
    assert backup.with_name("legacy.db.sha256").read_text().split()[0] == file_digest(backup)
    second = server.workdir / "legacy-equals.db"
    server.cli(f"--backup-to={second}")
    assert second.with_name("legacy-equals.db.sha256").read_text().split()[0] == \
        file_digest(second)

    verified = oxsync(server, "--verify-backup", str(backup))
    assert verified.returncode == 0 and "ok" in verified.stdout.lower(), verified
    damaged = server.workdir / "legacy-damaged.db"
    corrupt_copy(backup, damaged)
    one_error_line(oxsync(server, "--verify-backup", str(damaged)))

    write_state(server, token, "later")
    server.kill()         # a crashed server: its WAL was never checkpointed
    assert (server.workdir / "sync.db-wal").stat().st_size > 0
    untouched = db_files(server)
    one_error_line(server.cli("--restore-from", str(backup), check=False), "force")
    one_error_line(server.cli("--restore-from", str(damaged), "--force", check=False))
    assert db_files(server) == untouched
    server.cli("--restore-from", str(backup), "--force")
    server.start()
    assert_serves(server, token, before)


def test_backup_into_a_missing_folder_creates_it_private(server, token):
    state = write_state(server, token, "x")
    target = server.workdir / "new" / "backups" / "b.db"
    result = server.cli("backup", "--to", str(target), check=False)
    assert result.returncode == 0, result
    assert stat.S_IMODE(os.stat(target.parent).st_mode) == 0o700
    assert "ok" in oxsync(server, "verify-backup", str(target)).stdout
    assert_serves(server, token, state)


def test_backup_to_an_unwritable_place_fails_with_one_line(server, token):
    # Found by this suite (a sqlite3.OperationalError traceback); fixed in backup_database.
    write_state(server, token, "x")
    blocker = server.workdir / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "b.db"
    result = server.cli("backup", "--to", str(target), check=False)
    one_error_line(result, "a-file")
    assert blocker.read_text() == "not a folder"
    assert_serves(server, token, write_state(server, token, "still-fine"))


def test_backup_onto_the_live_database_is_refused(server, token):
    state = write_state(server, token, "mine")
    result = server.cli("backup", "--to", str(server.db_path), check=False)
    later = {}
    connection = server.connect()
    for number in range(10):
        path = f"structured/later/{number}.json"
        later[path] = os.urandom(5000)
        put_object(server, token, path, later[path], connection)
    connection.close()
    assert server.stop() == 0
    server.start()
    missing = [path for path in later
               if server.request("GET", object_path(NS, path), token=token).status != 200]
    assert not missing, f"{len(missing)} acknowledged writes lost after `backup --to " \
                        f"<live db>` (exit {result.returncode})"
    assert_serves(server, token, state)
    one_error_line(result)   # refused, in one line

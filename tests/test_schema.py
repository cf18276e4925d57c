"""The database schema is versioned with PRAGMA user_version and migrated forward at startup."""

import sqlite3
import subprocess
import sys
import time

from conftest import OXSYNC, ROOT, ns_path, object_path

sys.path.insert(0, str(ROOT))
import oxsync  # noqa: E402  (only for its migration scripts and version number)


def make_v1_database(path) -> None:
    """A database exactly as the first schema version left it, with a snapshot and an object."""
    db = sqlite3.connect(path)
    for statement in oxsync.MIGRATIONS[0].split(";\n"):
        if statement.strip():
            db.execute(statement)
    now = time.time()
    db.execute("INSERT INTO payloads (id, key_id, data) VALUES (1, NULL, ?), (2, NULL, ?)",
               (b"old snapshot", b"old object"))
    db.execute("INSERT INTO namespaces (name, metadata, etag, created_at, updated_at) "
               "VALUES ('team/a', ?, 'e1', ?, ?)",
               ('{"exists":true,"revision":"r1","etag":"e1","contentLength":12}', now, now))
    db.execute("INSERT INTO blobs VALUES ('team/a', 1, 12, 'x', ?)", (now,))
    db.execute("INSERT INTO objects VALUES ('team/a', 'a.json', 2, 10, 'o1', NULL, ?)", (now,))
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()


def test_an_older_database_is_migrated_forward(make_server):
    server = make_server(start=False)
    make_v1_database(server.db_path)
    server.start()
    token = server.create_token()
    assert "migrated to version 2" in server.log()
    assert server.request("GET", ns_path("team/a", "blob"), token=token).body == b"old snapshot"
    assert server.request("GET", object_path("team/a", "a.json"), token=token).body == \
        b"old object"
    # what version 2 added (snapshot history) works on the migrated file
    answer = server.request("PUT", ns_path("team/a", "blob"), b"new snapshot",
                            {"X-OxideTerm-Revision": "r2", "If-Match": '"e1"'}, token=token)
    assert answer.status == 200, answer
    history = server.cli("namespace", "history", "team/a", "--json").stdout
    assert '"revision": "r1"' in history
    with sqlite3.connect(server.db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == oxsync.SCHEMA_VERSION


def test_a_newer_database_is_refused(make_server):
    server = make_server(start=False)
    db = sqlite3.connect(server.db_path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    result = subprocess.run(OXSYNC + ["serve", "--listen", f"127.0.0.1:{server.port}",
                                      "--db-path", str(server.db_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("oxsync: ")]
    assert len(lines) == 1 and "newer oxsync" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    with sqlite3.connect(server.db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 99

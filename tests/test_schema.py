"""The database schema is versioned with PRAGMA user_version and migrated forward at startup."""

import importlib.util
import json
import sqlite3
import sys
import time

import pytest
from conftest import OXSYNC, ROOT, ns_path, object_path, one_error_line

pytestmark = pytest.mark.sqlite_only   # writes and reads the SQLite file's schema


def load_oxsync():
    """The module under test (the .py file OXSYNC_CMD runs, else the checkout's), only for
    its migration scripts and version number."""
    path = OXSYNC[-1] if OXSYNC[-1].endswith(".py") else str(ROOT / "oxsync.py")
    spec = importlib.util.spec_from_file_location("oxsync_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


oxsync = load_oxsync()


V1_MANIFEST = '{"sections":{"connections":{"path":"a.json"},"app":{"x":{"path":"b.json"}}}}'


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
    db.execute("INSERT INTO manifests (namespace, seq, created_at, etag, manifest) VALUES "
               "('team/a', 1, ?, 'e0', ?)", (now, V1_MANIFEST))
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
        # the references of manifests stored before they were recorded (retention)
        assert db.execute("SELECT seq, path FROM manifest_refs WHERE namespace = 'team/a' "
                          "ORDER BY path").fetchall() == [(1, "a.json"), (1, "b.json")]


def test_a_newer_database_is_refused(make_server):
    server = make_server(start=False)
    db = sqlite3.connect(server.db_path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    line = one_error_line(server.serve_once(), "newer oxsync", code=2)
    assert line.startswith("oxsync: "), line
    with sqlite3.connect(server.db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 99


def test_a_migrated_database_counts_its_use_from_its_rows(make_server):
    """Quotas keep each namespace's use in counters; an older database gets them counted
    from the rows it already holds (each row also counts 256 bytes, an object its path; its
    one manifest is history)."""
    server = make_server(start=False)
    make_v1_database(server.db_path)
    server.start()
    listed = {n["name"]: n for n in json.loads(server.cli("namespace", "list", "--json").stdout)}
    assert listed["team/a"]["usedBytes"] == (12 + 256) + (10 + len("a.json") + 256)
    assert listed["team/a"]["historyBytes"] == len(V1_MANIFEST) + 256

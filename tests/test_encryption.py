"""Payloads sealed at rest with ENCRYPTION_KEY (PROTOCOL.md 7, 9)."""

from __future__ import annotations

import json
import sqlite3
import uuid

import pytest
from conftest import TEST_KEY, ns_path, object_path, one_error_line

OTHER_KEY = "22" * 32
NS = "team/default"
OTHER_NS = "team/other"
NONCE_AND_TAG = 12 + 16


# -- helpers ---------------------------------------------------------------------------

def raw_files(server) -> dict[str, bytes]:
    """The database file and its -wal and -shm companions, byte for byte."""
    return {path.name: path.read_bytes() for path in server.workdir.glob("sync.db*")}


def upload(server, token, marker: str) -> dict[str, bytes]:
    """A blob and objects that contain the marker -> {what: plaintext}."""
    payloads = {
        "blob": f"legacy snapshot {marker} ".encode() * 50,
        "structured/connections/fnv1a-9f86d0a1.json":
            json.dumps({"records": [{"host": "db.internal", "secret": marker}]}).encode(),
        "structured/settings/app/general/" + "ab" * 32 + ".oxide":
            b"\x00\x01" + marker.encode() + b"\xff" * 100,
    }
    for what, data in payloads.items():
        if what == "blob":
            # written twice: the old version must not linger in plaintext either
            for revision in ("r1", "r2"):
                answer = server.request("PUT", ns_path(NS, "blob"), data,
                                        {"X-OxideTerm-Revision": revision}, token=token)
                assert answer.status == 200, answer
        else:
            for _ in range(2):
                answer = server.request("PUT", object_path(NS, what), data, token=token)
                assert answer.status in (200, 201), answer
    manifest = {"format": "structured-v2", "revision": "m1", "sections": {}}
    assert server.request("PUT", ns_path(NS, "metadata"), manifest, token=token).status == 200
    return payloads


def read_back(server, token, payloads: dict[str, bytes]) -> None:
    for what, data in payloads.items():
        path = ns_path(NS, "blob") if what == "blob" else object_path(NS, what)
        answer = server.request("GET", path, token=token)
        assert answer.status == 200, (what, answer)
        assert answer.body == data, what


def assert_refused_at_once(server, *fragments, env=None, args=(), code=None) -> str:
    """`oxsync serve` on the server's database (without its ENCRYPTION_KEY unless `env`
    gives one) exits at once with one line naming each fragment."""
    result = server.serve_once(*args, env={"ENCRYPTION_KEY": None, **(env or {})})
    assert result.seconds < 8, f"refused only after {result.seconds:.1f} s"
    return one_error_line(result, *fragments, code=code)


@pytest.fixture
def sealed(make_server):
    server = make_server(env={"ENCRYPTION_KEY": TEST_KEY})
    return server, server.create_token()


# -- tests ---------------------------------------------------------------------------------

@pytest.mark.sqlite_only   # reads the database file and its payload rows
def test_payloads_never_reach_the_disk_in_plaintext(sealed):
    server, token = sealed
    marker = "MARKER-" + uuid.uuid4().hex
    payloads = upload(server, token, marker)
    read_back(server, token, payloads)
    assert server.request("GET", "/ready").json["encryptionEnabled"] is True
    for name, data in raw_files(server).items():   # while running: db, -wal, -shm
        assert marker.encode() not in data, name
    server.stop()
    files = raw_files(server)
    assert "sync.db" in files
    for name, data in files.items():
        assert marker.encode() not in data, name
    with sqlite3.connect(server.db_path) as db:
        rows = db.execute("SELECT p.key_id, o.size, length(p.data) FROM objects o JOIN payloads p ON p.id = o.payload_id "
                          "UNION ALL SELECT p.key_id, o.size, length(p.data) FROM blobs o "
                          "JOIN payloads p ON p.id = o.payload_id").fetchall()
        assert len(rows) == 3
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if "blob_versions" in tables:  # kept snapshot history is sealed too
            rows += db.execute("SELECT p.key_id, o.size, length(p.data) FROM blob_versions o "
                               "JOIN payloads p ON p.id = o.payload_id").fetchall()
    for key_id, size, stored in rows:
        assert key_id
        assert stored == size + NONCE_AND_TAG

    server.start()  # same key: everything reads back
    read_back(server, token, payloads)
    assert server.request("GET", ns_path(NS, "metadata"), token=token).json["revision"] == "m1"


@pytest.mark.sqlite_only   # reads the database file
def test_without_a_key_payloads_are_on_disk_in_plaintext_and_a_warning_says_so(make_server):
    """Without a key the marker IS on disk (so the check above can see it) and a warning says so."""
    server = make_server()
    token = server.create_token()
    marker = "MARKER-" + uuid.uuid4().hex
    upload(server, token, marker)
    server.stop()
    assert any(marker.encode() in data for data in raw_files(server).values())
    warnings = [line for line in server.log().splitlines()
                if "WARN" in line.upper() and "plaintext" in line.lower()]
    assert warnings, server.log()


def test_a_wrong_or_missing_key_refuses_to_start_and_changes_nothing(sealed):
    server, token = sealed
    payloads = upload(server, token, "x")
    server.stop()

    assert_refused_at_once(server, "key", env={"ENCRYPTION_KEY": OTHER_KEY})
    assert_refused_at_once(server, "key", args=["--encryption-key", OTHER_KEY])
    assert_refused_at_once(server, "ENCRYPTION_KEY")

    server.start()  # the refused starts changed nothing
    read_back(server, token, payloads)


@pytest.mark.sqlite_only   # moves ciphertexts between rows of the file
def test_a_ciphertext_moved_to_another_row_does_not_open(sealed):
    server, token = sealed
    first, second = "structured/connections/fnv1a-1.json", "structured/forwards/fnv1a-2.json"
    for namespace in (NS, OTHER_NS):
        for path in (first, second):
            data = f"{namespace} {path}".encode()
            assert server.request("PUT", object_path(namespace, path), data,
                                  token=token).status == 201
        assert server.request("PUT", ns_path(namespace, "blob"), namespace.encode(),
                              {"X-OxideTerm-Revision": "r"}, token=token).status == 200
    server.stop()
    with sqlite3.connect(server.db_path) as db:
        def payload_of(table, namespace, path=None):
            where = "namespace = ?" + (" AND path = ?" if path else "")
            return db.execute(f"SELECT payload_id FROM {table} WHERE {where}",
                              (namespace, path) if path else (namespace,)).fetchone()[0]

        def copy_payload(source, target):
            db.execute("UPDATE payloads SET (key_id, data) = (SELECT key_id, data FROM payloads "
                       "WHERE id = ?) WHERE id = ?", (source, target))
        # object `first` copied onto object `second` (same namespace)
        copy_payload(payload_of("objects", NS, first), payload_of("objects", NS, second))
        # OTHER_NS's object `first` and its blob replaced by NS's
        copy_payload(payload_of("objects", NS, first), payload_of("objects", OTHER_NS, first))
        copy_payload(payload_of("blobs", NS), payload_of("blobs", OTHER_NS))
    server.start()

    assert server.request("GET", object_path(NS, first), token=token).body == \
        f"{NS} {first}".encode()
    assert server.request("GET", ns_path(NS, "blob"), token=token).body == NS.encode()
    for namespace, path in ((NS, second), (OTHER_NS, first), (OTHER_NS, None)):
        target = object_path(namespace, path) if path else ns_path(namespace, "blob")
        answer = server.request("GET", target, token=token)
        assert answer.status == 500, (namespace, path, answer)
        assert answer.json["error"]["code"] == "internal_error"
        assert "Traceback" not in answer.body.decode()
        lines = [line for line in server.log().splitlines()
                 if namespace in line and (path is None or path in line)
                 and ("ERROR" in line or "error" in line)]
        assert lines, (namespace, path, server.log())
    # the server goes on serving
    assert server.request("GET", object_path(OTHER_NS, second), token=token).status == 200


@pytest.mark.parametrize("how, key", [("env", "abc"), ("env", "1" * 63), ("env", "1" * 65),
                                      ("env", "g" * 64), ("env", "0x" + "11" * 31),
                                      ("flag", "abc"), ("flag", "1" * 63)])
def test_a_malformed_key_exits_2_with_one_line(make_server, how, key):
    server = make_server(start=False)
    env, args = ({"ENCRYPTION_KEY": key}, ()) if how == "env" else ({}, ("--encryption-key", key))
    assert_refused_at_once(server, "encryption", env=env, args=args, code=2)

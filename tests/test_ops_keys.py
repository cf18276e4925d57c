"""Key management: rotate-key and encrypt-existing (issue 4, "Key management").

`rotate-key` (ENCRYPTION_KEY = old, NEW_ENCRYPTION_KEY = new, server stopped) re-seals
every payload: the blob, every object and every kept blob version. `encrypt-existing`
seals the payloads of a plaintext database (safe while the server runs). Both work in
batches and resume after a kill -9.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3

import pytest

from _reliability import assert_payload_rows_whole, integrity_check, key_id, kill_partway
from conftest import TEST_KEY, ns_path, object_path, one_error_line

pytestmark = pytest.mark.sqlite_only   # every test reads the payload rows of the file

KEY_1, KEY_2, KEY_3 = TEST_KEY, "22" * 32, "33" * 32
NS = "keys/team"
PAYLOAD_TABLES = ("blobs", "blob_versions", "objects")  # the rows that own a payload
KiB = 1024


# -- helpers ---------------------------------------------------------------------------

def db_connect(path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


def payload_snapshot(path) -> dict:
    """Every stored payload (key id and raw bytes) and the key settings."""
    with contextlib.closing(db_connect(path)) as db:
        rows = {(table, rowid): (kid, bytes(data)) for table in PAYLOAD_TABLES
                for rowid, kid, data in db.execute(
                    f"SELECT o.rowid, p.key_id, p.data FROM {table} o JOIN payloads p ON p.id = o.payload_id")}
        settings = dict(db.execute("SELECT key, value FROM settings"))
    return {"rows": rows, "settings": settings}


def key_ids(path) -> dict[str, set]:
    with contextlib.closing(db_connect(path)) as db:
        return {table: {row[0] for row in db.execute(
            f"SELECT DISTINCT p.key_id FROM {table} o JOIN payloads p ON p.id = o.payload_id")} for table in PAYLOAD_TABLES}


def payloads_with_key(db, kid: str | None, tables=("objects",)) -> int:
    """Payload rows sealed with key `kid` (None: plaintext), on an open connection."""
    return sum(db.execute(f"SELECT count(*) FROM {table} o JOIN payloads p "
                          "ON p.id = o.payload_id WHERE p.key_id IS ?", (kid,)).fetchone()[0]
               for table in tables)


def count_with_key(path, kid: str | None, table: str = "objects") -> int:
    with contextlib.closing(db_connect(path)) as db:
        return payloads_with_key(db, kid, (table,))


def refused_start(server, key: str | None):
    """`oxsync serve` on the server's database, expected to exit at once."""
    return server.serve_once(env={"ENCRYPTION_KEY": key, "NEW_ENCRYPTION_KEY": None})


def keys_env(old: str | None, new: str | None = None) -> dict:
    env = {"ENCRYPTION_KEY": old or "", "NEW_ENCRYPTION_KEY": new or ""}
    return env


def upload_everything(server, token, marker: str) -> dict:
    """Three blob versions (two kept), objects of several shapes, a manifest."""
    written = {"blobs": [], "objects": {}}
    for number in range(3):
        data = f"snapshot {number} {marker} ".encode() * 300
        answer = server.request("PUT", ns_path(NS, "blob"), data,
                                {"X-OxideTerm-Revision": f"r{number}"}, token=token)
        assert answer.status == 200, answer
        written["blobs"].append(data)
    paths = ["structured/connections/fnv1a-9f86d0a1.json",
             "structured/settings/app/general/" + "ab" * 32 + ".oxide",
             "structured/forwards/.json", "other clients/2026-01-01T00:00:00Z/ü.bin"]
    for number, path in enumerate(paths):
        data = marker.encode() + os.urandom(1000 * (number + 1)) + marker.encode()
        answer = server.request("PUT", object_path(NS, path), data, token=token)
        assert answer.status == 201, answer
        written["objects"][(NS, path)] = data
    other = ("keys/other", "structured/connections/fnv1a-9f86d0a1.json")
    written["objects"][other] = b"other namespace " + marker.encode()
    assert server.request("PUT", object_path(*other), written["objects"][other],
                          token=token).status == 201
    manifest = {"format": "structured-v2", "revision": "m1",
                "sections": {"connections": {"revision": "fnv1a-9f86d0a1", "path": paths[0],
                                             "contentType": "application/json"}}}
    assert server.request("PUT", ns_path(NS, "metadata"), manifest, token=token).status == 200
    return written


def assert_reads_back(server, token, written: dict, blob_versions: bool = True) -> None:
    connection = server.connect()
    for (namespace, path), data in written["objects"].items():
        answer = server.request("GET", object_path(namespace, path), token=token,
                                connection=connection)
        assert answer.status == 200, (path, answer)
        assert answer.body == data, path
    answer = server.request("GET", ns_path(NS, "blob"), token=token, connection=connection)
    assert answer.status == 200 and answer.body == written["blobs"][-1], answer
    connection.close()
    if blob_versions:
        # The kept versions open too: roll back to the oldest one and read it.
        server.cli("namespace", "rollback", NS, "--to-blob", "1", "--yes")
        answer = server.request("GET", ns_path(NS, "blob"), token=token)
        assert answer.status == 200 and answer.body == written["blobs"][0], answer


MANY_NAMESPACES = 5


def upload_many(server, token, count: int = 300, size: int = 64 * KiB) -> dict:
    """`count` objects over 5 namespaces, and a snapshot in each -> what was written."""
    written = {"blobs": {}, "objects": {}}
    connection = server.connect()
    for number in range(count):
        key = (f"keys/n{number % MANY_NAMESPACES}", f"structured/many/o{number:03d}.oxide")
        written["objects"][key] = os.urandom(size)
        answer = server.request("PUT", object_path(*key), written["objects"][key],
                                token=token, connection=connection)
        assert answer.status == 201, answer
    for number in range(MANY_NAMESPACES):
        namespace = f"keys/n{number}"
        written["blobs"][namespace] = os.urandom(4 * size)
        answer = server.request("PUT", ns_path(namespace, "blob"), written["blobs"][namespace],
                                {"X-OxideTerm-Revision": "r"}, token=token,
                                connection=connection)
        assert answer.status == 200, answer
    connection.close()
    return written


def assert_objects_read_back(server, token, written: dict) -> None:
    """Every object (and the snapshot of each namespace) of upload_many reads back."""
    connection = server.connect()
    for (namespace, path), data in written["objects"].items():
        answer = server.request("GET", object_path(namespace, path), token=token,
                                connection=connection)
        assert answer.status == 200 and answer.body == data, (namespace, path, answer.status)
    for namespace, data in written["blobs"].items():
        answer = server.request("GET", ns_path(namespace, "blob"), token=token,
                                connection=connection)
        assert answer.status == 200 and answer.body == data, (namespace, answer.status)
    connection.close()


# -- rotate-key -------------------------------------------------------------------------

def sealed_and_stopped(make_server, marker: str):
    """A server sealing with KEY_1 that stored upload_everything(marker), then stopped.
    -> (server, token, what was written, payload_snapshot of the file)."""
    server = make_server(env={"ENCRYPTION_KEY": KEY_1})
    token = server.create_token()
    written = upload_everything(server, token, marker)
    assert server.stop() == 0
    return server, token, written, payload_snapshot(server.db_path)


def test_rotate_key_reseals_every_payload(make_server):
    server, token, written, before = sealed_and_stopped(make_server, "ROTATE-MARKER")
    assert {table: ids for table, ids in key_ids(server.db_path).items()} == \
        {table: {key_id(KEY_1)} for table in PAYLOAD_TABLES}
    assert len([r for r in before["rows"] if r[0] == "blob_versions"]) == 2

    result = server.cli("rotate-key", env=keys_env(KEY_1, KEY_2))
    assert "Traceback" not in result.stderr

    after = payload_snapshot(server.db_path)
    assert set(after["rows"]) == set(before["rows"]), "payload rows appeared or vanished"
    for place, (kid, data) in after["rows"].items():
        assert kid == key_id(KEY_2), place
        assert data != before["rows"][place][1], f"{place} was not re-sealed"
        assert len(data) == len(before["rows"][place][1]), place
    assert after["settings"]["key_id"] == key_id(KEY_2)
    assert "rotation_target" not in after["settings"]

    # The old key is refused with one line; the new one serves every payload.
    refused = refused_start(server, KEY_1)
    one_error_line(refused, "key")
    server.env["ENCRYPTION_KEY"] = KEY_2
    server.start()
    assert_reads_back(server, token, written)

    # Rotating again to the key already in use changes nothing.
    assert server.stop() == 0
    settled = payload_snapshot(server.db_path)
    server.cli("rotate-key", env=keys_env(KEY_2, KEY_2))
    assert payload_snapshot(server.db_path) == settled


def test_rotate_key_killed_part_way_is_refused_until_rerun_then_serves_everything(
        make_server):
    server = make_server(env={"ENCRYPTION_KEY": KEY_1})
    token = server.create_token()
    written = upload_many(server, token)
    total = len(written["objects"]) + len(written["blobs"])
    assert server.stop() == 0
    new_id = key_id(KEY_2)

    done = kill_partway(server, ["rotate-key"], lambda db: payloads_with_key(
        db, new_id, ("objects", "blobs")) / total, env=keys_env(KEY_1, KEY_2))
    assert integrity_check(server.db_path) == "ok"

    # Half-rotated: the server refuses to start with either key, saying why, in one line
    # (rotate-key again), instead of serving 500s.
    for key in (KEY_1, KEY_2):
        one_error_line(refused_start(server, key), "rotate-key again")
    # A rotation to yet another key is refused and changes nothing.
    before = payload_snapshot(server.db_path)
    one_error_line(server.cli("rotate-key", env=keys_env(KEY_1, KEY_3), check=False),
                   "interrupted")
    assert payload_snapshot(server.db_path) == before

    # The rerun (keys given as flags this time) finishes the job.
    result = server.cli("rotate-key", "--encryption-key", KEY_1, "--new-key", KEY_2,
                        env=keys_env(None))
    assert "Traceback" not in result.stderr
    assert integrity_check(server.db_path) == "ok"
    assert count_with_key(server.db_path, new_id) == len(written["objects"])
    assert count_with_key(server.db_path, new_id, "blobs") == len(written["blobs"])
    assert key_ids(server.db_path)["objects"] == {new_id}
    assert "rotation_target" not in payload_snapshot(server.db_path)["settings"]
    assert_payload_rows_whole(server, sealed=True)
    server.env["ENCRYPTION_KEY"] = KEY_2
    server.start()
    assert_objects_read_back(server, token, written)
    print(f"\n[rotate-key] killed at {done:.0%} of {total} payloads; rerun said: "
          f"{result.stderr.strip()}")


def test_wrong_keys_are_refused_and_change_nothing(make_server):
    server, token, written, before = sealed_and_stopped(make_server, "WRONG-KEY")
    for command, env, fragment in [
            ("rotate-key", keys_env(KEY_3, KEY_2), "key"),          # wrong old key
            ("rotate-key", keys_env(KEY_1, None), "NEW_ENCRYPTION_KEY"),
            ("rotate-key", keys_env(None, KEY_2), "ENCRYPTION_KEY"),
            ("encrypt-existing", keys_env(KEY_3), "key")]:         # not the key in use
        one_error_line(server.cli(command, env=env, check=False), fragment)
        assert payload_snapshot(server.db_path) == before, (command, env)
    server.start()
    assert_reads_back(server, token, written, blob_versions=False)


# -- encrypt-existing -------------------------------------------------------------------

def test_encrypt_existing_while_the_server_runs(make_server):
    marker = "PLAINTEXT-MARKER-7f3a9c"
    server = make_server()
    token = server.create_token()
    written = upload_everything(server, token, marker)
    assert server.stop() == 0
    assert marker.encode() in server.db_path.read_bytes()   # the check below can see it

    server.env["ENCRYPTION_KEY"] = KEY_1
    server.start()
    assert server.request("GET", "/ready").json["encryptionEnabled"] is True
    result = server.cli("encrypt-existing")
    assert "Traceback" not in result.stderr
    # Served while and after it ran, with the same bytes.
    assert_reads_back(server, token, written, blob_versions=False)
    for table, ids in key_ids(server.db_path).items():
        assert ids == {key_id(KEY_1)}, (table, ids)
    # New writes are sealed too, and a second run has nothing left to do.
    extra = (NS, "structured/after/encrypt.json")
    written["objects"][extra] = marker.encode() * 3
    assert server.request("PUT", object_path(*extra), written["objects"][extra],
                          token=token).status == 201
    assert server.cli("encrypt-existing").returncode == 0
    assert server.stop() == 0

    for path in server.workdir.glob("sync.db*"):
        assert marker.encode() not in path.read_bytes(), f"plaintext left in {path.name}"
    assert count_with_key(server.db_path, None, "objects") == 0
    server.start()
    assert_reads_back(server, token, written)   # including the kept blob versions
    server.stop()
    assert marker.encode() not in server.db_path.read_bytes()


def test_encrypt_existing_killed_part_way_still_serves_and_a_rerun_finishes(make_server):
    server = make_server()
    token = server.create_token()
    written = upload_many(server, token)
    total = len(written["objects"])
    assert server.stop() == 0
    kid = key_id(KEY_1)

    done = kill_partway(server, ["encrypt-existing"],
                        lambda db: payloads_with_key(db, kid) / total, env=keys_env(KEY_1))
    assert integrity_check(server.db_path) == "ok"

    # Half done is still servable with the key (sealed and plaintext rows both open) ...
    server.env["ENCRYPTION_KEY"] = KEY_1
    server.start()
    assert_objects_read_back(server, token, written)
    assert server.stop() == 0
    # ... and a second run finishes the job.
    server.cli("encrypt-existing")
    assert count_with_key(server.db_path, kid) == total
    assert count_with_key(server.db_path, None) == 0
    server.start()
    assert_objects_read_back(server, token, written)
    print(f"\n[encrypt-existing] killed at {done:.0%} of {total} object payloads; "
          "rerun finished")

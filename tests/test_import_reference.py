"""import-reference: the reference server's redb file moves into oxsync, and every device
keeps syncing with the token it has, against the same bytes and ETags.

The two small fixtures were written by the real reference server (tests/reference-fixtures/
README.md); each is imported (on SQLite and on PostgreSQL) and then checked over HTTP against
everything its expected.json says the reference answered. The large fixture, written by redb
2.6.3 itself, has what the small ones lack: B-trees four levels deep, values in pages of up to
512 KiB and 24 regions. Damaged, truncated and foreign files, and wrong keys, must give one
line and exit 2 with nothing written; the source file never changes.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import (OXSYNC, OxsyncServer, database_url_for, db_rows, ns_path, object_path,
                      one_error_line, quoted, run_oxsync)

BOTH_STORES = True
FIXTURES = Path(__file__).resolve().parent / "reference-fixtures"
CLIENT = {"X-OxideTerm-Client-Version": "OxideTerm/0.21.3 (after the move)"}
OXSYNC_KEY = "22" * 32


def unpack(dataset: str, folder: Path) -> Path:
    """The fixture's redb file, gunzipped into `folder`, checked against its sidecar."""
    target = folder / f"{dataset}.db"
    with gzip.open(FIXTURES / dataset / "sync.db.gz") as packed, open(target, "wb") as out:
        shutil.copyfileobj(packed, out)
    sidecar = (FIXTURES / dataset / "sync.db.sha256").read_text().split()[0]
    assert file_sha256(target) == sidecar
    return target


def expected(dataset: str) -> dict:
    return json.loads((FIXTURES / dataset / "expected.json").read_text())


def file_sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def import_reference(source: Path, *args: str, env: dict | None = None):
    """One import-reference run; the source file's bytes must be unchanged after it."""
    before = file_sha256(source)
    result = run_oxsync("import-reference", "--from", str(source), *args, env=env)
    assert file_sha256(source) == before, "import-reference changed its source file"
    return result


def key_args(data: dict) -> list[str]:
    key = data["server"]["encryptionKey"]
    return ["--reference-key", key] if key else []


def reference_allows(pattern: str, namespace: str) -> bool:
    """The reference's rule (its auth.rs): '*', 'prefix*', or the exact name."""
    return pattern == "*" or (namespace.startswith(pattern[:-1]) if pattern.endswith("*")
                              else namespace == pattern)


def seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# -- the real reference server's databases, imported, then used over HTTP ----------------

@pytest.fixture(scope="module", params=["encrypted", "plaintext"])
def moved(request, tmp_path_factory, store_kind):
    """A server on a store filled by import-reference from one fixture (sealed again with
    oxsync's key for the encrypted one) -> (server, expected.json, the import's output)."""
    dataset = request.param
    folder = tmp_path_factory.mktemp(f"moved-{dataset}")
    data = expected(dataset)
    env = {"ENCRYPTION_KEY": OXSYNC_KEY} if dataset == "encrypted" else {}
    server = OxsyncServer(folder, env, database_url=database_url_for(store_kind))
    source = unpack(dataset, folder)
    result = import_reference(source, *key_args(data), *server.store_args(),
                              env=server.environment())
    assert result.returncode == 0, result.stderr
    server.start()
    try:
        yield server, data, result
    finally:
        server.stop()
    server.assert_log_clean()


def token_named(data: dict, name: str) -> str:
    return next(t["token"] for t in data["tokens"] if t["name"] == name)


def test_the_summary_says_what_moved_and_what_did_not(moved):
    server, data, result = moved
    out = result.stdout
    assert f"namespaces: {len(data['namespaces'])}" in out
    assert "retired" in out and f"tokens: {len(data['tokens'])}" in out
    assert "conflicts: 2; device records: 1" in out and "alice-laptop" in out
    assert "1 admin user(s)" in out and "oxsync admin set-password" in out
    assert "ADMIN_PASSWORD" in out and "login throttling" in out
    assert "checked: every count" in out
    warned = "stored in plaintext" in result.stderr
    assert warned == (server.env.get("ENCRYPTION_KEY") is None)


def test_metadata_answers_the_same_bytes_and_etag(moved):
    server, data, _ = moved
    everything = token_named(data, "all-namespaces-rw")
    for namespace in ("default", "alice", "team-bob"):
        want = data["metadata"][namespace]
        answer = server.request("GET", ns_path(namespace, "metadata"), token=everything,
                                headers=CLIENT)
        assert answer.status == 200, answer
        assert answer.body == want["raw"].encode()
        assert answer.headers.get("ETag") == (quoted(want["etag"]) if want["etag"] else None)


def test_blob_and_objects_are_the_same_bytes_with_the_same_etags(moved):
    server, data, _ = moved
    everything = token_named(data, "all-namespaces-rw")
    blob = data["blobs"]["default"]
    answer = server.request("GET", ns_path("default", "blob"), token=everything)
    assert answer.status == 200
    assert answer.body == base64.b64decode(blob["base64"])
    assert answer.headers["ETag"] == quoted(blob["etag"])
    assert answer.headers["Content-Type"] == blob["contentType"]
    for path, item in data["objects"]["alice"].items():
        answer = server.request("GET", object_path("alice", path), token=everything)
        assert answer.status == 200, path
        assert hashlib.sha256(answer.body).hexdigest() == item["sha256"]
        assert answer.body == base64.b64decode(item["base64"])
        assert answer.headers["ETag"] == quoted(item["etag"])
        assert answer.headers["Content-Type"] == item["contentType"]
    # objects are per namespace, as on the reference
    path = next(iter(data["objects"]["alice"]))
    assert server.request("GET", object_path("default", path), token=everything).status == 404


def test_every_raw_token_reads_with_exactly_its_old_rights(moved):
    server, data, _ = moved
    for token in data["tokens"]:
        assert not token["token"].startswith("oxs_")  # the reference's UUID secrets
        for namespace in ("default", "alice", "team-bob"):
            answer = server.request("GET", ns_path(namespace, "metadata"),
                                    token=token["token"], headers=CLIENT)
            if not token["enabled"]:
                want = 401
            else:
                want = 200 if reference_allows(token["namespacePattern"], namespace) else 403
            assert answer.status == want, (token["name"], namespace, answer)


def test_read_only_tokens_cannot_write_and_writers_can(moved):
    server, data, _ = moved
    for token in data["tokens"]:
        namespace = next(n for n in ("alice", "default", "team-bob")
                         if reference_allows(token["namespacePattern"], n))
        answer = server.request("PUT", object_path(namespace, f"probe/{token['id']}.json"),
                                b"{}", {"Content-Type": "application/json"},
                                token=token["token"])
        if not token["enabled"]:
            assert answer.status == 401, answer
        elif "write" in token["permissions"]:
            assert answer.status == 201, (token["name"], answer)
        else:
            assert answer.status == 403, (token["name"], answer)


def test_token_facts_move_with_the_token(moved):
    server, data, _ = moved
    rows = {row["id"]: row for row in db_rows(server, "SELECT * FROM tokens")}
    assert set(rows) == {t["id"] for t in data["tokens"]}
    for token in data["tokens"]:
        row, view = rows[token["id"]], token["adminView"]
        assert row["token_hash"] == token["tokenSha256"] == \
            hashlib.sha256(token["token"].encode()).hexdigest()
        assert row["namespace_pattern"] == token["namespacePattern"]
        assert row["permissions"].split(",") == token["permissions"]
        assert bool(row["enabled"]) == token["enabled"]
        assert row["created_at"] == pytest.approx(seconds(token["createdAt"]), abs=1e-5)
        assert row["last_used_at"] == pytest.approx(seconds(view["lastUsedAt"]), abs=1e-5)
        assert row["last_client_version"] == view["lastClientVersion"]
        assert row["last_ip"] == view["lastClientIp"]
        assert row["last_namespace"] == view["lastNamespace"]
        if token["expiresAt"]:
            assert row["expires_at"] == seconds(token["expiresAt"])
        else:
            assert row["expires_at"] is None
    # the expiring token keeps its expiry, as the CLI shows it
    listed = json.loads(server.cli("token", "list", "--json").stdout)
    expiring = next(t for t in listed if t["name"] == "expiring-default-rw")
    assert expiring["expiresAt"] == "2031-01-01T00:00:00.000Z" and not expiring["expired"]


def test_the_device_record_stays_with_its_token(moved):
    server, data, _ = moved
    device = data["devices"][0]
    row = db_rows(server, "SELECT name FROM tokens WHERE id = ?", (device["tokenId"],))[0]
    assert row["name"] == f"alice-readonly (device {device['name']})"
    kept = db_rows(server, "SELECT value FROM settings WHERE key = ?",
                   ("reference_devices",))[0]["value"]
    assert json.loads(kept) == [{k: v for k, v in device.items()}]


def test_conflicts_move_newest_first(moved):
    server, data, _ = moved
    rows = db_rows(server, "SELECT * FROM conflicts ORDER BY id DESC")
    assert len(rows) == len(data["conflicts"])
    for row, conflict in zip(rows, data["conflicts"]):
        assert row["namespace"] == conflict["namespace"]
        assert row["operation"] == conflict["operation"]
        assert row["path"] == conflict.get("objectPath")
        assert row["device_id"] == conflict["deviceId"]
        assert row["requested_etag"] == conflict["requestedEtag"]
        assert row["remote_etag"] == conflict["remoteEtag"]
        assert row["remote_revision"] == conflict.get("remoteRevision")
        assert row["at"] == pytest.approx(seconds(conflict["occurredAt"]), abs=1e-5)


def test_the_deleted_namespace_answers_410_until_restored(moved):
    server, data, _ = moved
    everything = token_named(data, "all-namespaces-rw")
    assert server.request("GET", ns_path("retired", "metadata"), token=everything).status == 410
    assert server.request("GET", ns_path("retired", "blob"), token=everything).status == 410
    server.cli("namespace", "restore", "retired")
    answer = server.request("GET", ns_path("retired", "metadata"), token=everything)
    assert answer.body == data["metadata"]["retired"]["raw"].encode()
    blob = server.request("GET", ns_path("retired", "blob"), token=everything)
    assert blob.body == base64.b64decode(data["blobs"]["retired"]["base64"])
    assert blob.headers["ETag"] == quoted(data["blobs"]["retired"]["etag"])


def test_a_device_uploads_next_with_its_cached_if_match_without_a_conflict(moved):
    server, data, _ = moved
    expiring = token_named(data, "expiring-default-rw")
    conflicts = len(db_rows(server, "SELECT id FROM conflicts"))
    cached = data["blobs"]["default"]["etag"]
    answer = server.request("PUT", ns_path("default", "blob"), b"the next snapshot",
                            {"If-Match": quoted(cached), "X-OxideTerm-Revision": "r-after-move",
                             "Content-Type": "application/vnd.oxideterm.oxide", **CLIENT},
                            token=expiring)
    assert answer.status == 200, answer
    assert answer.json["etag"] != cached
    # a second device still holding the old etag now gets the usual 412
    stale = server.request("PUT", ns_path("default", "blob"), b"late",
                           {"If-Match": quoted(cached), "X-OxideTerm-Revision": "r-late"},
                           token=expiring)
    assert stale.status == 412
    assert len(db_rows(server, "SELECT id FROM conflicts")) == conflicts + 1


def test_a_structured_sync_continues_where_it_stopped(moved):
    server, data, _ = moved
    writer = token_named(data, "all-namespaces-rw")
    reader = token_named(data, "alice-readonly")
    metadata = server.request("GET", ns_path("alice", "metadata"), token=writer)
    manifest = metadata.json
    connections = manifest["sections"]["connections"]["path"]
    cached = data["objects"]["alice"][connections]["etag"]
    changed = b'{"version":1,"records":[]}'
    new_path = f"structured/connections/{hashlib.sha256(changed).hexdigest()}.json"
    put = server.request("PUT", object_path("alice", new_path), changed,
                         {"Content-Type": "application/json", "If-None-Match": "*"},
                         token=writer)
    assert put.status == 201, put
    reput = server.request("PUT", object_path("alice", connections),
                           base64.b64decode(data["objects"]["alice"][connections]["base64"]),
                           {"Content-Type": "application/json", "If-Match": quoted(cached)},
                           token=writer)
    assert reput.status == 200, reput
    manifest["sections"]["connections"]["path"] = new_path
    manifest["revision"] = "2026-12-08T10:00:00.000Z-macos-0badf00d-002"
    for field in ("etag", "exists", "contentLength"):
        manifest.pop(field)
    answer = server.request("PUT", ns_path("alice", "metadata"), manifest,
                            {"If-Match": metadata.headers["ETag"]}, token=writer)
    assert answer.status == 200, answer
    after = server.request("GET", ns_path("alice", "metadata"), token=reader)
    assert after.json["sections"]["connections"]["path"] == new_path
    assert after.headers["ETag"] == quoted(answer.json["etag"])
    history = json.loads(server.cli("namespace", "history", "alice", "--json").stdout)
    assert len(history["versions"]) == 2  # the imported manifest, then this one


def test_imported_tokens_are_managed_like_any_other(moved):
    """Last of the module's tests on `moved`: it rotates one token."""
    server, data, _ = moved
    team = next(t for t in data["tokens"] if t["name"] == "team-rw")
    fresh = server.cli("token", "rotate", team["id"]).stdout.strip()
    assert fresh.startswith("oxs_")
    assert server.request("GET", ns_path("team-bob", "metadata"), token=fresh).status == 200
    old = server.request("GET", ns_path("team-bob", "metadata"), token=team["token"])
    assert old.status == 401


# -- refusals: one line, exit 2, nothing written, the source unchanged --------------------

@pytest.fixture
def plaintext_copy(tmp_path) -> Path:
    return unpack("plaintext", tmp_path)


def refused(source: Path, target: Path, *fragments: str, args=()) -> str:
    result = import_reference(source, "--db-path", str(target), *args)
    line = one_error_line(result, *fragments, code=2)
    assert not target.exists(), "a refused import created its target"
    return line


def patched(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(data)


def test_files_that_are_not_redb_are_refused(tmp_path):
    target = tmp_path / "target.db"
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    refused(empty, target, "truncated")
    sqlite_file = tmp_path / "other.sqlite"
    sqlite3.connect(sqlite_file).execute("CREATE TABLE t (x)").connection.commit()
    refused(sqlite_file, target, "not a redb database")
    refused(tmp_path / "missing.db", target, "cannot read")


@pytest.mark.parametrize("version, words", [(1, ("v1", "redb 1.x")), (3, ("v3", "redb 3.x"))])
def test_other_redb_file_formats_are_refused(plaintext_copy, tmp_path, version, words):
    for slot in (64, 192):
        patched(plaintext_copy, slot, bytes([version]))
    refused(plaintext_copy, tmp_path / "target.db", *words)


@pytest.mark.parametrize("length", [300, 4096 * 3, 4096 * 60])
def test_a_truncated_copy_is_refused(plaintext_copy, tmp_path, length):
    with open(plaintext_copy, "r+b") as file:
        file.truncate(length)
    refused(plaintext_copy, tmp_path / "target.db", "truncated")


def test_a_damaged_page_is_refused(plaintext_copy, tmp_path):
    """A byte flipped inside the soft-deleted namespace's snapshot: a page both commits
    share, so neither commit checks out."""
    data = plaintext_copy.read_bytes()
    blob = base64.b64decode(expected("plaintext")["blobs"]["retired"]["base64"])
    assert data.count(blob) == 1
    offset = data.index(blob) + 500
    patched(plaintext_copy, offset, bytes([data[offset] ^ 0x40]))
    refused(plaintext_copy, tmp_path / "target.db", "corrupted", "checksum")


def transactions(data: bytes) -> list[int]:
    """The transaction id in each commit slot."""
    return [int.from_bytes(data[64 + 128 * slot + 104:][:8], "little") for slot in (0, 1)]


def user_root_offset(data: bytes, slot: int) -> int:
    """Where the table tree root page of a commit slot starts in the file (design.md: a
    page number packs order, region and index; regions follow the 1-page super header)."""
    page_size, header_pages, max_pages = (int.from_bytes(data[at:at + 4], "little")
                                          for at in (12, 16, 20))
    number = int.from_bytes(data[64 + 128 * slot + 8:][:8], "little")
    order, region = number >> 59, (number >> 20) & 0xFFFFF
    index = number & (0xFFFFF >> order)
    return page_size + region * (header_pages + max_pages) * page_size + \
        header_pages * page_size + index * (page_size << order)


def test_a_torn_newest_commit_falls_back_to_the_one_before(tmp_path):
    """The reference never closes its file: the newest commit may be half written. Here the
    newest commit's table tree root (a page no other commit uses) fails its checksum, so the
    commit before it is read, as redb's own recovery would: the large fixture's last commit
    added every conflict, so none moves."""
    source = unpack("large", tmp_path)
    data = source.read_bytes()
    assert data[9] & 2, "written like the reference: the recovery flag is set"
    newest = transactions(data).index(max(transactions(data)))
    offset = user_root_offset(data, newest) + 40
    assert user_root_offset(data, 1 - newest) != user_root_offset(data, newest)
    patched(source, offset, bytes([data[offset] ^ 0xFF]))
    result = import_reference(source, "--db-path", str(tmp_path / "target.db"))
    assert result.returncode == 0, result.stderr
    assert "newest commit in the file was torn" in result.stdout
    assert "conflicts: 0;" in result.stdout and "checked: every count" in result.stdout


def test_a_torn_newest_commit_slot_falls_back_to_the_one_before(plaintext_copy, tmp_path):
    data = plaintext_copy.read_bytes()
    newest = transactions(data).index(max(transactions(data)))
    patched(plaintext_copy, 64 + 128 * newest + 100, b"\xff")  # under the slot's checksum
    result = import_reference(plaintext_copy, "--db-path", str(tmp_path / "target.db"))
    assert result.returncode == 0, result.stderr
    assert "newest commit in the file was torn" in result.stdout


def test_a_cleanly_closed_file_is_read_from_its_primary_slot_only(plaintext_copy, tmp_path):
    """Without the recovery flag redb trusts the primary slot: a damaged one is not
    repaired by reading the other, it is refused."""
    data = plaintext_copy.read_bytes()
    primary = data[9] & 1
    patched(plaintext_copy, 9, bytes([data[9] & ~2]))
    target = tmp_path / "target.db"
    assert import_reference(plaintext_copy, "--db-path", str(target), "--dry-run") \
        .returncode == 0
    patched(plaintext_copy, 64 + 128 * primary + 100, b"\xff")
    refused(plaintext_copy, target, "corrupted", "slot checksum")


def test_both_slots_damaged_is_refused(plaintext_copy, tmp_path):
    for slot in (64, 192):
        patched(plaintext_copy, slot + 100, b"\xff")  # inside the slot, under its checksum
    refused(plaintext_copy, tmp_path / "target.db", "corrupted", "slot checksum")


def test_a_wrong_or_missing_reference_key_writes_nothing(tmp_path):
    source = unpack("encrypted", tmp_path)
    target = tmp_path / "target.db"
    refused(source, target, "--reference-key", "not the", args=("--reference-key", "33" * 32))
    refused(source, target, "--reference-key", args=())
    refused(unpack("plaintext", tmp_path), target, "--reference-key",
            args=("--reference-key", "33" * 32))
    result = import_reference(source, "--db-path", str(target), "--reference-key", "abc")
    one_error_line(result, "64 hex", code=2)
    assert not target.exists()


def test_without_xxhash_the_error_names_the_package(plaintext_copy, tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "xxhash.py").write_text("raise ImportError('not installed here')\n")
    target = tmp_path / "target.db"
    result = import_reference(plaintext_copy, "--db-path", str(target),
                              env={**os.environ, "PYTHONPATH": str(shadow)})
    one_error_line(result, "xxhash", "pip install", code=2)
    assert not target.exists()


def test_a_dry_run_prints_what_would_move_and_writes_nothing(tmp_path):
    source = unpack("encrypted", tmp_path)
    target = tmp_path / "target.db"
    result = import_reference(source, "--db-path", str(target), "--dry-run",
                              *key_args(expected("encrypted")))
    assert result.returncode == 0, result.stderr
    assert "dry run, nothing written" in result.stdout
    assert "namespaces: 4" in result.stdout and "tokens: 5" in result.stdout
    assert not target.exists()


def test_a_target_that_holds_data_is_refused_and_left_alone(plaintext_copy, tmp_path):
    target = tmp_path / "target.db"
    assert import_reference(plaintext_copy, "--db-path", str(target)).returncode == 0
    before = sqlite_dump(target)
    result = import_reference(plaintext_copy, "--db-path", str(target))
    one_error_line(result, "not empty", code=2)
    assert sqlite_dump(target) == before


def sqlite_dump(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def test_an_interrupted_import_leaves_nothing_behind(tmp_path):
    """Killed while it writes (once its uncommitted pages fill 4 MiB of the target's WAL):
    the import is one transaction, so the target holds all of it or none of it."""
    source = unpack("large", tmp_path)
    target = tmp_path / "target.db"
    process = subprocess.Popen([*OXSYNC, "import-reference", "--from", str(source),
                                "--db-path", str(target)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wal = Path(f"{target}-wal")
    while process.poll() is None and (not wal.exists() or wal.stat().st_size < 4 << 20):
        time.sleep(0.001)
    killed_while_writing = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    db = sqlite3.connect(target)
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        counts = {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                  if table in tables else 0  # killed before the schema was made
                  for table in ("namespaces", "payloads", "tokens", "conflicts")}
    finally:
        db.close()
    assert counts in ({"namespaces": 0, "payloads": 0, "tokens": 0, "conflicts": 0},
                      {"namespaces": 600, "payloads": 1000, "tokens": 500, "conflicts": 800})
    if killed_while_writing:
        assert counts["namespaces"] == 0
        result = import_reference(source, "--db-path", str(target))  # it can start over
        assert result.returncode == 0, result.stderr


# -- a large database: deep B-trees, values of many pages, many regions -------------------

def test_a_large_database_moves_whole(tmp_path):
    source = unpack("large", tmp_path)
    data = expected("large")
    header = source.read_bytes()[:32]
    assert int.from_bytes(header[24:28], "little") > 1, "the fixture spans several regions"
    server = OxsyncServer(tmp_path)
    result = import_reference(source, *server.store_args())
    assert result.returncode == 0, result.stderr
    assert f"namespaces: {len(data['namespaces'])}" in result.stdout
    server.start()
    try:
        check_large_import(server, data)
    finally:
        server.stop()
    server.assert_log_clean()


def check_large_import(server: OxsyncServer, data: dict) -> None:
    everything = next(t["token"] for t in data["tokens"] if t["pattern"] == "*"
                      and t["enabled"] and "write" in t["permissions"])
    for namespace, entry in data["namespaces"].items():
        if namespace in data["deleted"]:
            server.cli("namespace", "restore", namespace)
        answer = server.request("GET", ns_path(namespace, "metadata"), token=everything)
        assert answer.body == entry["metadata"].encode(), namespace
        if "blob" in entry:
            blob = server.request("GET", ns_path(namespace, "blob"), token=everything)
            assert hashlib.sha256(blob.body).hexdigest() == entry["blob"]["sha256"]
            assert blob.headers["ETag"] == quoted(entry["blob"]["etag"])
        for path, item in entry["objects"].items():
            got = server.request("GET", object_path(namespace, path), token=everything)
            assert hashlib.sha256(got.body).hexdigest() == item["sha256"], path
            assert got.headers["ETag"] == quoted(item["etag"])
    for token in data["tokens"][::5]:
        namespace = "user-0000" if token["pattern"] == "*" else token["pattern"].rstrip("*") \
            .ljust(9, "0") if token["pattern"].endswith("*") else token["pattern"]
        answer = server.request("GET", ns_path(namespace, "metadata"), token=token["token"])
        assert answer.status == (200 if token["enabled"] else 401), (token, namespace)
    counts = {table: db_rows(server, f"SELECT count(*) AS n FROM {table}")[0]["n"]
              for table in ("tokens", "conflicts", "objects", "blobs")}
    assert counts == {"tokens": len(data["tokens"]), "conflicts": data["conflicts"],
                      "objects": sum(len(e["objects"]) for e in data["namespaces"].values()),
                      "blobs": sum("blob" in e for e in data["namespaces"].values())}

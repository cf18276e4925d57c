"""ETag compare-and-swap on blob, metadata and objects; races; the conflict log.

PROTOCOL.md sections 4 and 5.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime

import pytest
from conftest import SNAPSHOT_TYPE, db_rows, ns_path, object_path, quoted, run_workers

BOTH_STORES = True  # every test here runs on SQLite and on PostgreSQL (conftest)

NS = "team/default"
CONFLICT_MESSAGE = "Remote snapshot changed before upload completed"


# -- helpers (the module's server: conftest's `shared`) ---------------------------

def put_blob(server, token, namespace, data: bytes, revision: str, headers=None,
             connection=None):
    return server.request("PUT", ns_path(namespace, "blob"), data,
                          {"Content-Type": SNAPSHOT_TYPE, "X-OxideTerm-Revision": revision,
                           **(headers or {})}, token=token, connection=connection)


def put_manifest(server, token, namespace, manifest: dict, headers=None, connection=None):
    return server.request("PUT", ns_path(namespace, "metadata"), json.dumps(manifest).encode(),
                          {"Content-Type": "application/json", **(headers or {})},
                          token=token, connection=connection)


def put_object(server, token, namespace, path, data, headers=None, connection=None):
    return server.request("PUT", object_path(namespace, path), data, headers, token=token,
                          connection=connection)


def get_metadata(server, token, namespace) -> dict:
    answer = server.request("GET", ns_path(namespace, "metadata"), token=token)
    assert answer.status == 200, answer
    return answer.json


def state(server, token, namespace, paths=()) -> tuple:
    """Everything a client can read: metadata text, blob bytes, object bytes and etags."""
    meta = server.request("GET", ns_path(namespace, "metadata"), token=token)
    blob = server.request("GET", ns_path(namespace, "blob"), token=token)
    objects = []
    for path in paths:
        answer = server.request("GET", object_path(namespace, path), token=token)
        objects.append((answer.status, answer.body, answer.headers.get("ETag")))
    return meta.body, blob.status, blob.body, blob.headers.get("ETag"), tuple(objects)


def conflict_rows(server, where: str = "TRUE", params=()) -> list[dict]:
    return db_rows(server, f"SELECT * FROM conflicts WHERE {where} ORDER BY id", params)


DEVICE = "Jöhn's MacBook ☕"


def utf8_header(value: str) -> str:
    """http.client sends header text as latin-1: this makes the bytes on the wire UTF-8."""
    return value.encode("utf-8").decode("latin-1")


def assert_exact_conflict(answer, remote_etag: str, remote_revision: str):
    assert answer.status == 412, answer
    assert answer.json == {"ok": False, "error": {
        "code": "etag_conflict_detected", "message": CONFLICT_MESSAGE,
        "remoteRevision": remote_revision, "remoteEtag": remote_etag}}


def race(server, count: int, attempt) -> list:
    """attempt(index, connection) in `count` threads released at once, each on a
    connection of its own -> their answers, in order (a thread's exception fails the test)."""
    def run(index):
        connection = server.connect()
        try:
            return attempt(index, connection)
        finally:
            connection.close()
    return run_workers(*[lambda i=i: run(i) for i in range(count)], timeout=60, barrier=True)


def only_winner(answers) -> int:
    """Exactly one 200 and the rest 412 -> the winner's index."""
    statuses = sorted(answer.status for answer in answers)
    assert statuses == [200] + [412] * (WRITERS - 1), statuses
    return next(i for i, answer in enumerate(answers) if answer.status == 200)


# -- the legacy blob flow ---------------------------------------------------------

def test_blob_create_then_if_match_update_and_a_stale_etag_gets_412(shared, ns):
    server, token = shared, shared.token
    first = put_blob(server, token, ns, b"snapshot one", "rev-1",
                     {"If-None-Match": "*", "X-OxideTerm-Device-Id": "laptop"})
    assert first.status == 200, first
    assert first.json["ok"] is True
    etag1 = first.json["etag"]

    again = put_blob(server, token, ns, b"snapshot from another device", "rev-x",
                     {"If-None-Match": "*", "X-OxideTerm-Device-Id": "desktop"})
    assert_exact_conflict(again, etag1, "rev-1")

    second = put_blob(server, token, ns, b"snapshot two", "rev-2", {"If-Match": etag1})
    assert second.status == 200, second
    etag2 = second.json["etag"]
    assert etag2 != etag1
    assert second.headers["ETag"] == quoted(etag2)

    before = state(server, token, ns)
    stale = put_blob(server, token, ns, b"stale upload", "rev-3", {"If-Match": quoted(etag1)})
    assert_exact_conflict(stale, etag2, "rev-2")
    assert state(server, token, ns) == before
    assert server.request("GET", ns_path(ns, "blob"), token=token).body == b"snapshot two"
    metadata = get_metadata(server, token, ns)
    assert metadata["revision"] == "rev-2" and metadata["etag"] == etag2


def test_metadata_if_none_match_on_existing_gets_the_exact_conflict_body(shared, ns):
    server, token = shared, shared.token
    first = put_manifest(server, token, ns, {"format": "structured-v2", "revision": "m1"},
                         {"If-None-Match": "*"})
    assert first.status == 200, first
    again = put_manifest(server, token, ns, {"format": "structured-v2", "revision": "m2"},
                         {"If-None-Match": "*"})
    assert_exact_conflict(again, first.json["etag"], "m1")


@pytest.mark.parametrize("form", [
    lambda e: quoted(e),
    lambda e: e,
    lambda e: f'W/"{e}"',
    lambda e: f'"0a0b0c", {quoted(e)}',
    lambda e: f'{e},"other"',
    lambda e: f' W/"x" ,  W/"{e}" ',
    lambda e: "*",
], ids=["quoted", "bare", "weak", "list", "bare-list", "weak-list", "star"])
def test_if_match_accepts_every_form_naming_the_current_etag(shared, ns, form):
    server, token = shared, shared.token
    etag = put_blob(server, token, ns, b"v1", "r1").json["etag"]
    answer = put_blob(server, token, ns, b"v2", "r2", {"If-Match": form(etag)})
    assert answer.status == 200, (form(etag), answer)
    assert server.request("GET", ns_path(ns, "blob"), token=token).body == b"v2"


@pytest.mark.parametrize("value", ['"a", "b"', "W/\"nope\"", "nope"])
def test_if_match_without_the_current_etag_gets_412_and_changes_nothing(shared, ns, value):
    server, token = shared, shared.token
    etag = put_blob(server, token, ns, b"v1", "r1").json["etag"]
    answer = put_blob(server, token, ns, b"v2", "r2", {"If-Match": value})
    assert_exact_conflict(answer, etag, "r1")
    assert server.request("GET", ns_path(ns, "blob"), token=token).body == b"v1"


@pytest.mark.parametrize("value", ["*", '"some-etag"'])
def test_if_match_on_an_empty_namespace_gets_412(shared, ns, value):
    server, token = shared, shared.token
    answer = put_blob(server, token, ns, b"v1", "r1", {"If-Match": value})
    assert answer.status == 412, answer
    assert answer.json["ok"] is False
    assert answer.json["error"]["code"] == "etag_conflict_detected"
    assert server.request("GET", ns_path(ns, "blob"), token=token).status == 404
    assert get_metadata(server, token, ns) == {"exists": False, "contentLength": 0}


# -- what a blob PUT does to the metadata ------------------------------------------

def test_blob_put_updates_metadata_and_keeps_the_manifest(shared, ns):
    server, token = shared, shared.token
    manifest = {"format": "structured-v2", "revision": "m1", "uploadedAt": "2020-01-01T00:00:00Z",
                "deviceId": "old-device", "scope": {"pluginIds": None, "all": True},
                "sections": {"connections": {"revision": "fnv1a-1", "path": "structured/c/1.json",
                                             "recordCount": 1, "contentType": "application/json"}},
                "sectionRevisions": {"connections": "old"}}
    assert put_manifest(server, token, ns, manifest).status == 200
    data = bytes(range(256)) * 50
    section_revisions = {"connections": "fnv1a-9f86d0a1", "quickCommands": None,
                         "appSettings": {"général": "ü"}, "pluginSettings": {}}
    header = utf8_header(json.dumps(section_revisions, ensure_ascii=False))
    before = time.time()
    answer = put_blob(server, token, ns, data, "blob-rev-7", {
        "X-OxideTerm-Device-Id": utf8_header(DEVICE),
        "X-OxideTerm-Section-Revisions": header})
    assert answer.status == 200, answer
    assert answer.json["revision"] == "blob-rev-7"
    assert answer.json["sectionRevisions"] == section_revisions
    metadata = get_metadata(server, token, ns)
    assert metadata["exists"] is True
    assert metadata["etag"] == answer.json["etag"]
    assert metadata["revision"] == "blob-rev-7"
    assert metadata["contentHash"] == hashlib.sha256(data).hexdigest()
    assert metadata["contentLength"] == len(data)
    assert metadata["deviceId"] == DEVICE
    assert metadata["sectionRevisions"] == section_revisions
    assert metadata["contentType"] == SNAPSHOT_TYPE
    for kept in ("format", "sections", "scope"):
        assert metadata[kept] == manifest[kept], kept
    uploaded = datetime.fromisoformat(metadata["uploadedAt"].replace("Z", "+00:00")).timestamp()
    assert before - 5 <= uploaded <= time.time() + 5


@pytest.mark.parametrize("header", ["not json", "{", "{'single': 'quotes'}"])
def test_blob_put_ignores_invalid_section_revisions(shared, ns, header):
    server, token = shared, shared.token
    previous = {"connections": "fnv1a-1"}
    assert put_blob(server, token, ns, b"v1", "r1",
                    {"X-OxideTerm-Section-Revisions": json.dumps(previous)}).status == 200
    answer = put_blob(server, token, ns, b"v2", "r2", {"X-OxideTerm-Section-Revisions": header})
    assert answer.status == 200, answer
    metadata = get_metadata(server, token, ns)
    assert metadata["revision"] == "r2"
    assert metadata["contentHash"] == hashlib.sha256(b"v2").hexdigest()
    assert metadata.get("sectionRevisions", previous) == previous
    assert None not in metadata.values()


def strict_json(body: bytes):
    """Parse like the client does: NaN and Infinity are not JSON."""
    def reject(name):
        raise ValueError(f"{name} is not JSON")
    try:
        return json.loads(body, parse_constant=reject)
    except ValueError as error:
        raise AssertionError(f"invalid JSON answer ({error}): {body[:300]!r}") from None


@pytest.mark.parametrize("header", ['{"connections": NaN}', '{"connections": Infinity}',
                                    '{"connections": 1e400}'])
def test_blob_put_ignores_non_json_numbers_in_section_revisions(shared, ns, header):
    server, token = shared, shared.token
    answer = put_blob(server, token, ns, b"v1", "r1", {"X-OxideTerm-Section-Revisions": header})
    assert answer.status == 200, answer
    metadata = server.request("GET", ns_path(ns, "metadata"), token=token)
    strict_json(answer.body)
    strict_json(metadata.body)  # the client's parser rejects NaN and Infinity


@pytest.mark.parametrize("header", ["[" * 5000, '{"a": ' * 3000, '{"connections": "\\ud800"}'],
                         ids=["deep-unclosed", "deep-object", "lone-surrogate"])
def test_blob_put_survives_hostile_section_revisions(shared, ns, header):
    """No 500 (the module's server log is checked for tracebacks) and no unreadable metadata."""
    server, token = shared, shared.token
    answer = put_blob(server, token, ns, b"v1", "r1", {"X-OxideTerm-Section-Revisions": header})
    assert answer.status == 200, answer
    strict_json(answer.body)
    metadata = server.request("GET", ns_path(ns, "metadata"), token=token)
    assert strict_json(metadata.body.decode("utf-8").encode())["revision"] == "r1"
    if header.startswith(("[", '{"a"')):  # not JSON at all: ignored
        assert "sectionRevisions" not in metadata.json


# -- conditional metadata and object writes ---------------------------------------------

def test_stale_if_match_or_if_none_match_on_metadata_gets_412_and_changes_nothing(shared, ns):
    server, token = shared, shared.token
    first = put_manifest(server, token, ns, {"format": "structured-v2", "revision": "m1"})
    etag1 = first.json["etag"]
    second = put_manifest(server, token, ns, {"format": "structured-v2", "revision": "m2"},
                          {"If-Match": quoted(etag1)})
    assert second.status == 200, second
    etag2 = second.json["etag"]
    before = state(server, token, ns)
    stale = put_manifest(server, token, ns, {"format": "structured-v2", "revision": "m3"},
                         {"If-Match": etag1})
    assert_exact_conflict(stale, etag2, "m2")
    create = put_manifest(server, token, ns, {"format": "structured-v2", "revision": "m4"},
                          {"If-None-Match": "*"})
    assert_exact_conflict(create, etag2, "m2")
    assert state(server, token, ns) == before
    # unconditional writes still work
    assert put_manifest(server, token, ns, {"revision": "m5"}).status == 200


def test_object_etags_guard_each_object_and_stale_ones_get_412(shared, ns):
    server, token = shared, shared.token
    path = "structured/connections/fnv1a-9f86d0a1.json"
    created = put_object(server, token, ns, path, b"one", {"If-None-Match": "*"})
    assert created.status == 201, created
    etag1 = created.json["etag"]
    exists = put_object(server, token, ns, path, b"two", {"If-None-Match": "*"})
    assert exists.status == 412, exists
    assert exists.json["ok"] is False
    assert exists.json["error"]["code"] == "etag_conflict_detected"
    assert exists.json["error"]["remoteEtag"] == etag1
    updated = put_object(server, token, ns, path, b"three", {"If-Match": quoted(etag1)})
    assert updated.status == 200, updated
    etag2 = updated.json["etag"]
    assert updated.headers["ETag"] == quoted(etag2)
    before = state(server, token, ns, paths=[path])
    stale = put_object(server, token, ns, path, b"four", {"If-Match": etag1})
    assert stale.status == 412, stale
    assert stale.json["error"]["code"] == "etag_conflict_detected"
    assert stale.json["error"]["remoteEtag"] == etag2
    assert state(server, token, ns, paths=[path]) == before
    missing = put_object(server, token, ns, "structured/connections/missing.json", b"x",
                         {"If-Match": etag2})
    assert missing.status == 412, missing
    assert server.request("GET", object_path(ns, "structured/connections/missing.json"),
                          token=token).status == 404
    # object etags are per object: the namespace etag does not change
    assert get_metadata(server, token, ns) == {"exists": False, "contentLength": 0}


# -- races ------------------------------------------------------------------------------------

WRITERS = 32


def test_racing_blob_writers_one_wins_and_each_loser_is_logged(shared, ns):
    server, token = shared, shared.token
    base = put_blob(server, token, ns, b"base", "base").json["etag"]

    def attempt(index, connection):
        return put_blob(server, token, ns, b"payload-%02d-MARKER" % index, f"rev-{index}",
                        {"If-Match": quoted(base), "X-OxideTerm-Device-Id": f"dev-{index}"},
                        connection=connection)

    answers = race(server, WRITERS, attempt)
    winner = only_winner(answers)
    winner_etag = answers[winner].json["etag"]
    blob = server.request("GET", ns_path(ns, "blob"), token=token)
    assert blob.body == b"payload-%02d-MARKER" % winner
    metadata = get_metadata(server, token, ns)
    assert metadata["revision"] == f"rev-{winner}"
    assert metadata["etag"] == winner_etag
    assert metadata["deviceId"] == f"dev-{winner}"
    for answer in answers:
        if answer.status == 412:
            assert answer.json["error"]["remoteEtag"] == winner_etag
            assert answer.json["error"]["remoteRevision"] == f"rev-{winner}"

    rows = conflict_rows(server, "namespace = ?", (ns,))
    assert len(rows) == WRITERS - 1
    losers = {f"dev-{i}" for i in range(WRITERS) if i != winner}
    assert {row["device_id"] for row in rows} == losers
    for row in rows:
        assert row["operation"] == "blob"
        assert base in (row["requested_etag"] or "")
        assert row["remote_etag"] == winner_etag
        assert row["requested_revision"] == f"rev-{row['device_id'][4:]}"
        assert row["remote_revision"] == f"rev-{winner}"
        for value in row.values():
            text = value if isinstance(value, str) else repr(value)
            assert "MARKER" not in text and "payload-" not in text, row
            assert not isinstance(value, bytes), row


def test_racing_metadata_writers_one_wins_and_each_loser_is_logged(shared, ns):
    server, token = shared, shared.token
    base = put_manifest(server, token, ns, {"format": "structured-v2", "revision": "base"})
    base_etag = base.json["etag"]

    def attempt(index, connection):
        return put_manifest(server, token, ns, {
            "format": "structured-v2", "revision": f"m-{index}", "deviceId": f"dev-{index}",
            "sections": {"secretish": "PAYLOADMARKER-%d" % index}},
            {"If-Match": quoted(base_etag)}, connection=connection)

    answers = race(server, WRITERS, attempt)
    winner = only_winner(answers)
    metadata = get_metadata(server, token, ns)
    assert metadata["revision"] == f"m-{winner}"
    assert metadata["etag"] == answers[winner].json["etag"]
    assert metadata["sections"] == {"secretish": "PAYLOADMARKER-%d" % winner}
    rows = conflict_rows(server, "namespace = ? AND operation = ?", (ns, "metadata"))
    assert len(rows) == WRITERS - 1
    for row in rows:
        assert row["remote_etag"] == metadata["etag"]
        assert not any("PAYLOADMARKER" in str(value) for value in row.values()), row


def test_racing_object_writers_one_wins_and_each_loser_is_logged(shared, ns):
    server, token = shared, shared.token
    path = "structured/settings/app/general/" + "ab" * 32 + ".oxide"
    base = put_object(server, token, ns, path, b"base").json["etag"]

    def attempt(index, connection):
        return put_object(server, token, ns, path, b"object-%02d-OBJMARKER" % index,
                          {"If-Match": quoted(base)}, connection=connection)

    answers = race(server, WRITERS, attempt)
    winner = only_winner(answers)
    got = server.request("GET", object_path(ns, path), token=token)
    assert got.body == b"object-%02d-OBJMARKER" % winner
    assert got.headers["ETag"] == quoted(answers[winner].json["etag"])
    rows = conflict_rows(server, "namespace = ? AND path = ?", (ns, path))
    assert len(rows) == WRITERS - 1
    for row in rows:
        assert row["remote_etag"] == answers[winner].json["etag"]
        assert not any("OBJMARKER" in str(value) for value in row.values()), row


def test_racing_first_uploads_with_if_none_match_one_wins(shared, ns):
    """Two devices syncing for the first time: one If-None-Match: * upload wins."""
    server, token = shared, shared.token

    def attempt(index, connection):
        return put_blob(server, token, ns, b"first-%02d" % index, f"first-{index}",
                        {"If-None-Match": "*"}, connection=connection)

    answers = race(server, WRITERS, attempt)
    assert sorted(a.status for a in answers) == [200] + [412] * (WRITERS - 1)
    winner = next(i for i, answer in enumerate(answers) if answer.status == 200)
    assert server.request("GET", ns_path(ns, "blob"), token=token).body == b"first-%02d" % winner
    assert get_metadata(server, token, ns)["revision"] == f"first-{winner}"


def test_racing_object_creations_with_if_none_match_one_wins(shared, ns):
    server, token = shared, shared.token
    path = "structured/connections/fnv1a-0000.json"

    def attempt(index, connection):
        return put_object(server, token, ns, path, b"new-%02d" % index,
                          {"If-None-Match": "*"}, connection=connection)

    answers = race(server, WRITERS, attempt)
    assert sorted(a.status for a in answers) == [201] + [412] * (WRITERS - 1)
    winner = next(i for i, answer in enumerate(answers) if answer.status == 201)
    assert server.request("GET", object_path(ns, path), token=token).body == b"new-%02d" % winner


def test_blob_and_metadata_race_on_one_etag(shared, ns):
    """Blob and manifest writes share the namespace etag: one of them wins, not both."""
    server, token = shared, shared.token
    base = put_manifest(server, token, ns, {"format": "structured-v2", "revision": "base"})
    condition = {"If-Match": quoted(base.json["etag"])}

    def attempt(index, connection):
        if index % 2:
            return put_blob(server, token, ns, b"blob-%02d" % index, f"mixed-{index}",
                            condition, connection=connection)
        return put_manifest(server, token, ns, {"format": "structured-v2",
                                                "revision": f"mixed-{index}"},
                            condition, connection=connection)

    answers = race(server, WRITERS, attempt)
    assert sorted(a.status for a in answers) == [200] + [412] * (WRITERS - 1)
    winner = next(i for i, answer in enumerate(answers) if answer.status == 200)
    metadata = get_metadata(server, token, ns)
    assert metadata["revision"] == f"mixed-{winner}"
    assert metadata["etag"] == answers[winner].json["etag"]
    blob = server.request("GET", ns_path(ns, "blob"), token=token)
    assert (blob.status, blob.body) == ((200, b"blob-%02d" % winner) if winner % 2 else
                                        (404, blob.body))


def test_every_412_writes_one_conflict_row(shared, ns):
    server, token = shared, shared.token
    etag = put_blob(server, token, ns, b"v1", "r1").json["etag"]
    for answer in (
            put_blob(server, token, ns, b"v2", "r2",
                     {"If-Match": '"stale"', "X-OxideTerm-Device-Id": "d1"}),
            put_manifest(server, token, ns, {"revision": "m", "deviceId": "d2"},
                         {"If-None-Match": "*"}),
            put_object(server, token, ns, "a/b.json", b"x", {"If-Match": '"stale-object"'})):
        assert answer.status == 412, answer
    rows = conflict_rows(server, "namespace = ?", (ns,))
    assert [row["operation"] for row in rows] == ["blob", "metadata", "object"]
    assert rows[0]["device_id"] == "d1" and rows[0]["remote_etag"] == etag
    assert rows[0]["requested_revision"] == "r2" and rows[0]["remote_revision"] == "r1"
    assert rows[1]["device_id"] == "d2" and rows[1]["requested_etag"] == "*"
    assert rows[2]["path"] == "a/b.json" and rows[2]["requested_etag"] == "stale-object"
    assert all(row["namespace"] == ns for row in rows)

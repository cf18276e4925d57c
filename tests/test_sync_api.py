"""Success paths of every sync endpoint, used as the OxideTerm client uses them.

PROTOCOL.md sections 1, 4, 5 and 10.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import shutil
import time
import urllib.parse
from datetime import datetime

import pytest
from conftest import SNAPSHOT_TYPE, TEST_KEY, ns_path, object_path, quoted

BOTH_STORES = True  # every test here runs on SQLite and on PostgreSQL (conftest)

NS = "team/default"
MANIFEST_TYPE = "application/vnd.oxideterm.cloud-sync.manifest+json"


# -- helpers (the module's server: conftest's `shared`) ---------------------------

def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def section_document(kind: str, records: list) -> bytes:
    """A section object as the client exports it: JSON with a fresh exportedAt."""
    return json.dumps({"kind": kind, "version": 2, "exportedAt": time.time(),
                       "records": records}, ensure_ascii=False).encode()


def sealed_document(label: str) -> bytes:
    """An .oxide payload: opaque bytes (nonce + ciphertext), not UTF-8."""
    return b"OXIDE\x00\x02" + os.urandom(12) + hashlib.sha512(label.encode()).digest() + \
        b"\xff\xfe\x00\x80" + os.urandom(64)


def structured_snapshot() -> tuple[dict, dict[str, tuple[bytes, str]]]:
    """A realistic structured-v2 upload -> (manifest, {object path: (bytes, content type)})."""
    general_rev = sha256_hex(b"app settings general")
    sensitive_rev = sha256_hex(b"sensitive credentials")
    revisions = {
        "connections": "fnv1a-9f86d0a1",
        "forwards": "",  # an empty section: its object is structured/forwards/.json
        "standaloneSftpProfiles": "fnv1a-1c2d3e4f",
        "serialProfiles": "fnv1a-0badf00d",
        "telnetProfiles": "fnv1a-7e1e7e1e",
        "moshProfiles": "fnv1a-30511a5e",
        "remoteDesktopProfiles": "fnv1a-4d5e6f70",
    }
    objects: dict[str, tuple[bytes, str]] = {}
    sections: dict = {}
    for kind, revision in revisions.items():
        path = f"structured/{kind}/{revision}.json"
        records = [] if kind == "forwards" else [
            {"id": f"{kind}-1", "name": "prod – db ☃", "host": "10.0.0.7", "port": 22},
            {"id": f"{kind}-2", "name": "staging", "note": None}]
        objects[path] = (section_document(kind, records), "application/json")
        sections[kind] = {"revision": revision, "path": path, "recordCount": len(records),
                          "contentType": "application/json"}
    sensitive_path = f"structured/sensitiveCredentials/{sensitive_rev}.oxide"
    objects[sensitive_path] = (sealed_document("sensitive"), SNAPSHOT_TYPE)
    sections["sensitiveCredentials"] = {"revision": sensitive_rev, "path": sensitive_path,
                                        "recordCount": 4, "contentType": SNAPSHOT_TYPE}
    general_path = f"structured/settings/app/general/{general_rev}.oxide"
    objects[general_path] = (sealed_document("general"), SNAPSHOT_TYPE)
    sections["appSettings"] = {"general": {"revision": general_rev, "path": general_path,
                                           "recordCount": 1, "contentType": SNAPSHOT_TYPE}}
    plugin_path = "structured/settings/plugins/com.example.ssh-notes/fnv1a-3b2c.oxide"
    objects[plugin_path] = (sealed_document("plugin"), SNAPSHOT_TYPE)
    sections["pluginSettings"] = {"com.example.ssh-notes": {
        "revision": "fnv1a-3b2c", "path": plugin_path, "recordCount": 1,
        "contentType": SNAPSHOT_TYPE}}
    # A newer client's section kind, at a path with an RFC 3339 time, spaces and Unicode.
    odd_revision = "2026-12-01T10:20:30.123+01:00"
    odd_path = f"structured/history/{odd_revision}/Mes réglages ☃ (copie)/snap shot.json"
    objects[odd_path] = (section_document("history", [{"ü": "ß", "emoji": "🦀"}]),
                         "application/json")
    sections["futureHistory"] = {"revision": odd_revision, "path": odd_path, "recordCount": 1,
                                 "contentType": "application/json"}

    manifest = {
        "format": "structured-v2",
        "revision": "rev-" + sha256_hex(os.urandom(8))[:16],
        "uploadedAt": "2026-12-01T09:15:42.318Z",
        "deviceId": "device-6b1f0c2e-Laptop ☕",
        "contentType": MANIFEST_TYPE,
        "scope": {"pluginIds": None, "sections": ["connections", "forwards"],
                  "includeSensitive": True},
        "sections": sections,
        "sectionRevisions": {
            **revisions,
            "quickCommands": None,
            "sensitiveCredentials": sensitive_rev,
            "appSettings": {"general": general_rev},
            "pluginSettings": {"com.example.ssh-notes": "fnv1a-3b2c"},
        },
        "clientFeatureFlags": {"merge": "three-way", "levels": [1, 2.5, None, True],
                               "nested": {"deep": {"deeper": None}}},
        "retiredField": None,  # a top-level null: must not come back
    }
    return manifest, objects


def section_entries(sections: dict):
    """Every manifest entry that names an object path, however deeply nested."""
    for value in sections.values():
        if isinstance(value, dict) and isinstance(value.get("path"), str):
            yield value
        elif isinstance(value, dict):
            yield from section_entries(value)


def put_object(server, token, path, data, content_type=None, namespace=NS, connection=None):
    headers = {"Content-Type": content_type} if content_type else {}
    return server.request("PUT", object_path(namespace, path), data, headers, token=token,
                          connection=connection)


def put_manifest(server, token, manifest, namespace=NS, headers=None, connection=None):
    return server.request("PUT", ns_path(namespace, "metadata"), json.dumps(manifest).encode(),
                          {"Content-Type": "application/json", **(headers or {})}, token=token,
                          connection=connection)


def put_blob(server, token, data, revision, namespace=NS, headers=None):
    return server.request("PUT", ns_path(namespace, "blob"), data,
                          {"Content-Type": SNAPSHOT_TYPE, "X-OxideTerm-Revision": revision,
                           **(headers or {})}, token=token)


# -- service endpoints ----------------------------------------------------------

def test_health_answers_ok_with_the_service_name(shared):
    answer = shared.request("GET", "/health")
    assert answer.status == 200
    assert answer.json == {"status": "ok", "service": "oxideterm-cloud-sync-server"}
    assert answer.headers["Content-Type"].startswith("application/json")


READY_FIELDS = ("dbWritable", "diskFreeBytes", "minFreeDiskBytes", "diskAboveMinimum",
                "encryptionEnabled", "adminEnabled", "jwtSecretPersistent")


def test_ready_reports_defaults_of_a_plain_server(shared):
    answer = shared.request("GET", "/ready")
    assert answer.status == 200, answer
    body = answer.json
    assert set(READY_FIELDS) <= set(body), body
    assert body["dbWritable"] is True
    assert body["minFreeDiskBytes"] == 104857600
    if shared.store_kind == "postgres":  # its disk is the database server's, not ours
        assert body["diskFreeBytes"] is None and body["diskAboveMinimum"] is True
    else:
        free = shutil.disk_usage(shared.workdir).free
        assert isinstance(body["diskFreeBytes"], int)
        assert abs(body["diskFreeBytes"] - free) < 512 * 1024 * 1024
        assert body["diskAboveMinimum"] is (body["diskFreeBytes"] >= body["minFreeDiskBytes"])
    assert body["encryptionEnabled"] is False
    assert body["adminEnabled"] is False
    assert body["jwtSecretPersistent"] is False


def test_ready_reports_encryption_admin_and_disk_settings(make_server):
    server = make_server(env={"ENCRYPTION_KEY": TEST_KEY, "ADMIN_PASSWORD": "correct horse 1",
                              "ADMIN_JWT_SECRET": "j" * 40, "MIN_FREE_DISK_BYTES": "12345"})
    body = server.request("GET", "/ready").json
    assert body["minFreeDiskBytes"] == 12345
    assert body["encryptionEnabled"] is True
    assert body["adminEnabled"] is True
    assert body["jwtSecretPersistent"] is True
    assert body["diskAboveMinimum"] is True
    assert body["dbWritable"] is True


@pytest.mark.sqlite_only  # the minimum guards the SQLite file's disk
def test_ready_answers_503_below_the_disk_minimum(make_server, tmp_path):
    needed = shutil.disk_usage(tmp_path).free * 4
    server = make_server(env={"MIN_FREE_DISK_BYTES": str(needed)})
    answer = server.request("GET", "/ready")
    assert answer.status == 503, answer
    assert answer.json["diskAboveMinimum"] is False
    assert answer.json["minFreeDiskBytes"] == needed
    assert answer.headers.get("Retry-After")


def test_root_redirects_to_admin(shared):
    answer = shared.request("GET", "/")
    assert answer.status in (301, 302, 303, 307, 308), answer
    location = answer.headers["Location"]
    assert urllib.parse.urljoin(f"http://127.0.0.1:{shared.port}/", location) == \
        f"http://127.0.0.1:{shared.port}/admin"


# -- metadata ----------------------------------------------------------------------

def test_an_empty_namespace_has_no_metadata_blob_or_objects(shared, ns):
    answer = shared.request("GET", ns_path(ns, "metadata"), token=shared.token)
    assert answer.status == 200
    assert answer.json == {"exists": False, "contentLength": 0}
    assert shared.request("GET", ns_path(ns, "blob"), token=shared.token).status == 404
    missing = shared.request("GET", object_path(ns, "structured/connections/x.json"),
                             token=shared.token)
    assert missing.status == 404
    assert missing.json["error"]["code"] == "not_found"


def test_a_structured_upload_downloads_field_for_field_and_byte_for_byte(server, token):
    manifest, objects = structured_snapshot()

    # Upload like the client: every object first (one keep-alive connection), then the manifest.
    connection = server.connect()
    try:
        for path, (data, content_type) in objects.items():
            answer = put_object(server, token, path, data, content_type, connection=connection)
            assert answer.status == 201, (path, answer)
            assert answer.headers["ETag"] == quoted(answer.json["etag"])
        put = put_manifest(server, token, manifest, connection=connection)
    finally:
        connection.close()
    assert put.status == 200, put
    assert put.json["ok"] is True
    assert put.json["revision"] == manifest["revision"]
    assert put.json["sectionRevisions"] == manifest["sectionRevisions"]
    etag = put.json["etag"]
    assert isinstance(etag, str) and etag
    assert put.headers["ETag"] == quoted(etag)

    # Download: GET metadata, then every section object by its manifest path.
    got = server.request("GET", ns_path(NS, "metadata"), token=token)
    assert got.status == 200, got
    assert got.headers["ETag"] == quoted(etag)
    metadata = got.json
    assert metadata["exists"] is True
    assert metadata["etag"] == etag
    for key, value in manifest.items():
        if value is None:
            assert key not in metadata, f"top-level null {key!r} was sent back"
        else:
            assert metadata[key] == value, key
    # nested nulls are kept, with their keys
    assert "quickCommands" in metadata["sectionRevisions"]
    assert metadata["sectionRevisions"]["quickCommands"] is None
    assert "pluginIds" in metadata["scope"] and metadata["scope"]["pluginIds"] is None
    assert metadata["clientFeatureFlags"]["nested"]["deep"] == {"deeper": None}
    assert None not in metadata.values(), "a top-level field is null"
    server_fields = set(metadata) - set(manifest)
    assert server_fields <= {"exists", "etag", "contentLength", "contentHash"}, server_fields

    entries = list(section_entries(metadata["sections"]))
    assert len(entries) == len(objects)
    for entry in entries:
        answer = server.request("GET", object_path(NS, entry["path"]), token=token)
        assert answer.status == 200, entry["path"]
        assert answer.body == objects[entry["path"]][0], entry["path"]
        assert answer.headers["Content-Type"] == entry["contentType"]
        assert int(answer.headers["Content-Length"]) == len(answer.body)


def test_put_metadata_ignores_server_owned_fields_and_defaults_uploaded_at(shared, ns):
    before = time.time()
    answer = put_manifest(shared, shared.token, {
        "revision": "r1", "exists": False, "etag": "mine", "contentLength": 999,
        "contentHash": "abc"}, namespace=ns)
    assert answer.status == 200, answer
    metadata = shared.request("GET", ns_path(ns, "metadata"), token=shared.token).json
    assert metadata["exists"] is True
    assert metadata["etag"] == answer.json["etag"] != "mine"
    assert metadata.get("contentLength", 0) == 0
    assert metadata.get("contentHash") != "abc"
    uploaded = metadata["uploadedAt"]
    moment = datetime.fromisoformat(uploaded.replace("Z", "+00:00")).timestamp()
    assert before - 5 <= moment <= time.time() + 5, uploaded


def test_put_metadata_keeps_the_blob_description(shared, ns):
    token = shared.token
    data = b"legacy snapshot \x00\xff" * 100
    assert put_blob(shared, token, data, "blob-rev", namespace=ns).status == 200
    first = put_manifest(shared, token, {"format": "structured-v2", "revision": "m1"},
                         namespace=ns)
    second = put_manifest(shared, token, {"format": "structured-v2", "revision": "m2"},
                          namespace=ns)
    assert first.status == second.status == 200
    assert first.json["etag"] != second.json["etag"]
    metadata = shared.request("GET", ns_path(ns, "metadata"), token=token).json
    assert metadata["revision"] == "m2"
    assert metadata["etag"] == second.json["etag"]
    assert metadata["contentLength"] == len(data)
    assert metadata["contentHash"] == sha256_hex(data)


# -- blob ------------------------------------------------------------------------------

def test_a_blob_reads_back_with_its_type_length_and_etag(shared, ns):
    token = shared.token
    data = os.urandom(200_000)
    put = put_blob(shared, token, data, "r-1", namespace=ns,
                   headers={"X-OxideTerm-Device-Id": "dev-1", "If-None-Match": "*"})
    assert put.status == 200, put
    assert put.json["ok"] is True and put.json["revision"] == "r-1"
    assert put.headers["ETag"] == quoted(put.json["etag"])
    got = shared.request("GET", ns_path(ns, "blob"), token=token)
    assert got.status == 200
    assert got.body == data
    assert got.headers["Content-Type"] == SNAPSHOT_TYPE
    assert int(got.headers["Content-Length"]) == len(data)
    metadata = shared.request("GET", ns_path(ns, "metadata"), token=token).json
    assert got.headers["ETag"] == quoted(metadata["etag"]) == quoted(put.json["etag"])


def test_large_payloads_round_trip(shared, ns):
    data = os.urandom(3 * 1024 * 1024 + 17)
    assert put_blob(shared, shared.token, data, "big", namespace=ns).status == 200
    assert put_object(shared, shared.token, "big/object.oxide", data[::-1], namespace=ns).status \
        == 201
    blob = shared.request("GET", ns_path(ns, "blob"), token=shared.token)
    assert sha256_hex(blob.body) == sha256_hex(data)
    obj = shared.request("GET", object_path(ns, "big/object.oxide"), token=shared.token)
    assert sha256_hex(obj.body) == sha256_hex(data[::-1])
    metadata = shared.request("GET", ns_path(ns, "metadata"), token=shared.token).json
    assert metadata["contentLength"] == len(data)
    assert metadata["contentHash"] == sha256_hex(data)


def test_percent_encoding_variants_name_the_same_namespace(shared, ns):
    team, rest = ns.split("/")
    assert put_manifest(shared, shared.token, {"revision": "same"}, namespace=ns).status == 200
    for raw in (f"{team}%2f{rest}", f"{team}%2F{rest}",
                "".join(f"%{byte:02X}" for byte in ns.encode())):
        answer = shared.request("GET", f"/v1/namespaces/{raw}/metadata", token=shared.token)
        assert answer.status == 200 and answer.json["revision"] == "same", raw


# -- objects -----------------------------------------------------------------------------

def test_overwriting_an_object_gives_a_new_etag_every_time(shared, ns):
    token = shared.token
    path = "structured/connections/fnv1a-9f86d0a1.json"
    first = put_object(shared, token, path, b'{"exportedAt": 1}', "application/json", ns)
    assert first.status == 201, first
    assert first.headers["ETag"] == quoted(first.json["etag"])
    second = put_object(shared, token, path, b'{"exportedAt": 2, "more": true}',
                        "application/json", ns)
    assert second.status == 200, second
    assert second.headers["ETag"] == quoted(second.json["etag"])
    assert second.json["etag"] != first.json["etag"]
    got = shared.request("GET", object_path(ns, path), token=token)
    assert got.body == b'{"exportedAt": 2, "more": true}'
    assert got.headers["ETag"] == quoted(second.json["etag"])
    # same bytes again: still a write (new etag), never skipped
    third = put_object(shared, token, path, b'{"exportedAt": 2, "more": true}',
                       "application/json", ns)
    assert third.status == 200
    assert third.json["etag"] not in (first.json["etag"], second.json["etag"])


def test_object_content_type_comes_from_upload_or_extension(shared, ns):
    token = shared.token
    by_extension = {"structured/connections/fnv1a-1.json": "application/json",
                    "structured/settings/app/general/abc.oxide": SNAPSHOT_TYPE,
                    "misc/notes.txt": "application/octet-stream",
                    "misc/no-extension": "application/octet-stream"}
    for path, expected in by_extension.items():
        assert put_object(shared, token, path, b"payload", namespace=ns).status == 201
        got = shared.request("GET", object_path(ns, path), token=token)
        assert got.status == 200
        assert got.headers["Content-Type"] == expected, path
    # the type given at upload wins over the extension
    stored = {"structured/connections/fnv1a-2.json": "text/x-custom; charset=utf-8",
              "misc/data.bin": "application/json"}
    for path, content_type in stored.items():
        assert put_object(shared, token, path, b"{}", content_type, ns).status == 201
        got = shared.request("GET", object_path(ns, path), token=token)
        assert got.headers["Content-Type"] == content_type, path


def test_an_object_answers_its_last_modified_time(shared, ns):
    path = "structured/forwards/.json"
    before = time.time()
    assert put_object(shared, shared.token, path, b"[]", "application/json", ns).status == 201
    got = shared.request("GET", object_path(ns, path), token=shared.token)
    assert got.status == 200 and got.body == b"[]"
    modified = email.utils.parsedate_to_datetime(got.headers["Last-Modified"]).timestamp()
    assert before - 2 <= modified <= time.time() + 1


def test_object_paths_are_decoded_per_segment(shared, ns):
    """Each segment is percent-decoded on its own: `%3A` is `:`, `%20` a space."""
    path = "structured/history/2026-12-01T10:20:30Z/a b/ü.json"
    raw = "structured/history/2026-12-01T10%3A20%3A30Z/a%20b/%C3%BC.json"
    assert shared.request("PUT", ns_path(ns, f"objects/{raw}"), b"odd",
                          token=shared.token).status == 201
    got = shared.request("GET", object_path(ns, path), token=shared.token)
    assert got.status == 200 and got.body == b"odd"
    # '+' is a plus (not a space); '?' and '#' travel encoded and are part of the name
    assert shared.request("PUT", ns_path(ns, "objects/x/a+b%3Fc%23d.json"), b"plus",
                          token=shared.token).status == 201
    got = shared.request("GET", object_path(ns, "x/a+b?c#d.json"), token=shared.token)
    assert got.status == 200 and got.body == b"plus"
    assert shared.request("GET", object_path(ns, "x/a b?c#d.json"),
                          token=shared.token).status == 404


# -- conditional GET, HEAD -----------------------------------------------------------------

def upload_everything(server, token, namespace):
    """A blob, an object and metadata -> (etag per kind, GET path per kind)."""
    assert put_blob(server, token, b"snapshot bytes", "r1", namespace=namespace).status == 200
    obj = put_object(server, token, "structured/connections/a.json", b"{}", "application/json",
                     namespace)
    meta = put_manifest(server, token, {"format": "structured-v2", "revision": "r2"},
                        namespace=namespace)
    assert obj.status == 201 and meta.status == 200, (obj, meta)
    etags = {"metadata": meta.json["etag"], "blob": meta.json["etag"],
             "object": obj.json["etag"]}
    paths = {"metadata": ns_path(namespace, "metadata"), "blob": ns_path(namespace, "blob"),
             "object": object_path(namespace, "structured/connections/a.json")}
    return etags, paths


@pytest.mark.parametrize("what", ["metadata", "blob", "object"])
def test_if_none_match_answers_304(shared, ns, what):
    etags, paths = upload_everything(shared, shared.token, ns)
    etag = etags[what]
    for value in (quoted(etag), etag, f'W/"{etag}"', f'"nope", {quoted(etag)}', "*"):
        answer = shared.request("GET", paths[what], headers={"If-None-Match": value},
                                token=shared.token)
        assert answer.status == 304, (value, answer)
        assert answer.body == b""
        assert answer.headers["ETag"] == quoted(etag)
    fresh = shared.request("GET", paths[what], headers={"If-None-Match": '"other"'},
                           token=shared.token)
    assert fresh.status == 200 and fresh.body


@pytest.mark.parametrize("what", ["metadata", "blob", "object"])
def test_head_works_where_get_does(shared, ns, what):
    _, paths = upload_everything(shared, shared.token, ns)
    get = shared.request("GET", paths[what], token=shared.token)
    head = shared.request("HEAD", paths[what], token=shared.token)
    assert get.status == head.status == 200, head
    assert head.body == b""
    assert head.headers["Content-Length"] == get.headers["Content-Length"] == str(len(get.body))
    assert head.headers["ETag"] == get.headers["ETag"]
    assert head.headers["Content-Type"] == get.headers["Content-Type"]


def test_head_answers_404_401_and_200_like_get(shared, ns):
    assert shared.request("HEAD", ns_path(ns, "blob"), token=shared.token).status == 404
    assert shared.request("HEAD", ns_path(ns, "metadata")).status == 401
    assert shared.request("HEAD", "/health").status == 200


# -- transport ------------------------------------------------------------------------------

def test_one_keep_alive_connection_serves_every_kind_of_answer(shared, ns):
    connection = shared.connect()
    ports = set()
    answers = []

    def call(method, path, body=None, headers=None, auth=True):
        answer = shared.request(method, path, body, headers,
                                token=shared.token if auth else None, connection=connection)
        ports.add(connection.sock.getsockname()[1])
        answers.append(answer)
        return answer

    try:
        assert call("GET", ns_path(ns, "metadata")).status == 200
        for index in range(6):
            assert call("PUT", object_path(ns, f"structured/connections/k{index}.json"),
                        b'{"i": %d}' % index, {"Content-Type": "application/json"}).status == 201
        # an error answer with an unread small body keeps the connection usable too
        assert call("PUT", ns_path(ns, "metadata"), b'{"revision": "x"}', auth=False).status \
            == 401
        assert call("PUT", ns_path(ns, "metadata"), b'{"revision": "k1"}',
                    {"Content-Type": "application/json"}).status == 200
        assert call("GET", ns_path(ns, "blob")).status == 404
        assert call("GET", object_path(ns, "structured/connections/k3.json")).body == b'{"i": 3}'
        assert call("GET", "/health", auth=False).status == 200
        current = call("GET", ns_path(ns, "metadata"))
        assert current.json["revision"] == "k1"
        # answers without a body must not desynchronise the connection
        assert call("GET", ns_path(ns, "metadata"),
                    headers={"If-None-Match": current.headers["ETag"]}).status == 304
        head = call("HEAD", object_path(ns, "structured/connections/k3.json"))
        assert head.status == 200 and head.body == b""
        assert head.headers["Content-Length"] == str(len(b'{"i": 3}'))
        assert call("GET", object_path(ns, "structured/connections/k4.json")).body == b'{"i": 4}'
    finally:
        connection.close()
    assert len(ports) == 1, "the server closed a keep-alive connection"
    for answer in answers:
        if answer.status == 304:
            assert answer.headers.get("Content-Length") in (None, "0"), answer.headers
        elif answer is not head:
            assert answer.headers.get("Content-Length") == str(len(answer.body)), answer
        assert (answer.headers.get("Connection") or "").lower() != "close"

"""Namespace history, rollback and retention (issue 9; PROTOCOL.md 4 "Retention", 8).

Every test drives a real oxsync process over real HTTP, with the CLI run against the same
SQLite file while the server is up, as an operator would.

About "every object the version references reads back byte for byte": the server keeps ONE
copy per object path. The client re-PUTs an unchanged section to the same path with new bytes
(new exportedAt, fresh nonce), so after a rollback such a path holds the bytes of the LAST
re-PUT, not the bytes it held when the rolled-back version was current; they are the same
section revision (the client's name for the content), which is all the contract promises.
The tests below assert exact bytes for every path that no later upload wrote again, and
"the latest write of the same revision" for the re-PUT path, so both halves are pinned down.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid

import pytest

from conftest import (AdminClient, Answer, admin_ns, assert_json_error, db_change, ns_path,
                      object_path, one_error_line, running_server)

BOTH_STORES = True  # every test here runs on SQLite and on PostgreSQL (conftest)

NS = "team/default"
MANIFEST_TYPE = "application/vnd.oxideterm.cloud-sync.manifest+json"
SNAPSHOT_TYPE = "application/vnd.oxideterm.oxide"
ADMIN_ENV = {"ADMIN_PASSWORD": "correct horse battery", "ADMIN_JWT_SECRET": "j" * 40}
SERVER_OWNED = {"etag", "exists", "contentLength", "contentHash"}


@pytest.fixture(scope="module")
def shared(tmp_path_factory, store_kind):
    """One server (admin on) for the tests that need no special settings; each test
    uses its own namespace."""
    with running_server(tmp_path_factory.mktemp("history"), ADMIN_ENV,
                        store_kind=store_kind) as server:
        yield server


@pytest.fixture
def ns(request) -> str:
    return "team/" + re.sub(r"[^A-Za-z0-9]+", "-", request.node.name[5:40]) + uuid.uuid4().hex[:6]


def hex64(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


# -- the client, as it syncs ------------------------------------------------------------

def section_path(name: str, revision: str) -> str:
    """Where today's client puts a section: content-hash style paths (PROTOCOL.md 1)."""
    if name.startswith("appSettings."):
        return f"structured/settings/app/{name.split('.', 1)[1]}/{revision}.oxide"
    return f"structured/{name}/{revision}.json"


def section_bytes(name: str, revision: str, count: int | None) -> bytes:
    """A section export: different bytes on every call (exportedAt, a fresh nonce)."""
    if name.startswith("appSettings."):
        return b"OXIDE\x01" + os.urandom(12) + hashlib.sha256(revision.encode()).digest()
    records = [{"id": f"{name}-{i}", "host": f"10.0.0.{i}"} for i in range(count or 0)]
    return json.dumps({"section": name, "revision": revision, "records": records,
                       "exportedAt": time.time_ns(), "nonce": os.urandom(8).hex()}).encode()


def build_manifest(device_id: str, revision: str, sections: dict) -> dict:
    """A structured-v2 manifest; `sections` maps 'connections' / 'appSettings.general'
    to (section revision, recordCount or None)."""
    entries, section_revisions = {}, {"quickCommands": None, "appSettings": {},
                                      "pluginSettings": {}}
    for name, (section_rev, count) in sections.items():
        entry = {"revision": section_rev, "path": section_path(name, section_rev)}
        if name.startswith("appSettings."):
            entries.setdefault("appSettings", {})[name.split(".", 1)[1]] = entry
            section_revisions["appSettings"][name.split(".", 1)[1]] = section_rev
        else:
            entry["recordCount"] = count
            entry["contentType"] = "application/json"
            entries[name] = entry
            section_revisions[name] = section_rev
    entries.setdefault("appSettings", {})
    entries["pluginSettings"] = {}
    return {"format": "structured-v2", "revision": revision,
            "uploadedAt": "2026-12-01T09:15:42.318Z", "deviceId": device_id,
            "contentType": MANIFEST_TYPE, "scope": {"pluginIds": None},
            "sections": entries, "sectionRevisions": section_revisions}


class Device:
    """One OxideTerm install: uploads every section object, then the manifest; keeps a copy
    of what it last synced (its merge base)."""

    def __init__(self, server, token: str, device_id: str, namespace: str):
        self.server, self.token, self.device_id, self.ns = server, token, device_id, namespace
        self.synced: dict | None = None        # metadata as last seen
        self.objects: dict[str, bytes] = {}    # the objects of that metadata, as read then

    def push(self, sections: dict, revision: str | None = None) -> tuple[dict, dict, dict]:
        """-> (manifest sent, the PUT metadata answer, {path: bytes written})."""
        written = {}
        for name, (section_rev, count) in sections.items():
            path = section_path(name, section_rev)
            data = section_bytes(name, section_rev, count)
            ctype = SNAPSHOT_TYPE if path.endswith(".oxide") else "application/json"
            answer = self.server.request("PUT", object_path(self.ns, path), data,
                                         {"Content-Type": ctype}, token=self.token)
            assert answer.status in (200, 201), answer
            written[path] = data
        manifest = build_manifest(self.device_id, revision or f"rev-{uuid.uuid4().hex[:12]}",
                                  sections)
        answer = self.server.request("PUT", ns_path(self.ns, "metadata"), manifest,
                                     token=self.token)
        assert answer.status == 200 and answer.json["ok"] is True, answer
        return manifest, answer.json, written

    def pull(self) -> dict:
        metadata = self.server.request("GET", ns_path(self.ns, "metadata"),
                                       token=self.token).json
        self.synced, self.objects = metadata, {}
        for path in sorted(paths_of(metadata)):
            answer = self.server.request("GET", object_path(self.ns, path), token=self.token)
            assert answer.status == 200, (path, answer)
            self.objects[path] = answer.body
        return metadata

    def sees_change(self, metadata: dict) -> bool:
        """What the client compares with its last-synced copy to decide what changed."""
        return any(metadata.get(key) != self.synced.get(key)
                   for key in ("revision", "sections", "sectionRevisions", "scope", "format"))


def paths_of(metadata: dict) -> set[str]:
    paths, stack = set(), [metadata.get("sections")]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("path"), str):
                paths.add(item["path"])
            stack.extend(item.values())
    return paths


def metadata(server, token, namespace) -> Answer:
    answer = server.request("GET", ns_path(namespace, "metadata"), token=token)
    assert answer.status == 200, answer
    return answer


def read_object(server, token, namespace, path) -> Answer:
    return server.request("GET", object_path(namespace, path), token=token)


# -- operator views: CLI and admin API --------------------------------------------------

def cli_history(server, namespace, *extra) -> dict:
    return json.loads(server.cli("namespace", "history", namespace, "--json", *extra).stdout)


def cli_rollback(server, namespace, *target, yes=True):
    args = ["namespace", "rollback", namespace, *target] + (["--yes"] if yes else [])
    return server.cli(*args, check=False)


class Admin(AdminClient):
    """A logged-in admin page session (conftest's), with this file's two calls."""

    def __init__(self, server):
        super().__init__(server)
        self.login()

    def history(self, namespace) -> dict:
        answer = self.get(admin_ns(namespace, "/history"))
        assert answer.status == 200, answer
        return answer.json

    def rollback(self, namespace, body, csrf=True) -> Answer:
        return self.post(admin_ns(namespace, "/rollback"), body, csrf=csrf)


def seq_of(history: dict, revision: str) -> int:
    matches = [v["seq"] for v in history["versions"] if v["revision"] == revision
               and v["rollbackOf"] is None]
    assert len(matches) == 1, history
    return matches[0]


def delete_object_row(server, namespace, path) -> None:
    """Lose an object behind the server's back (WAL mode lets us write the live file)."""
    assert db_change(server, "DELETE FROM objects WHERE namespace = ? AND path = ?",
                     (namespace, path)) == 1


# -- the two-device scenario ---------------------------------------------------------------

CONN_V1, CONN_V2 = "fnv1a-1a2b3c4d", "fnv1a-5e6f7a8b"
FWD = "fnv1a-0f0f0f01"
GEN_V1, GEN_V2 = hex64("general v1"), hex64("general v2")
V1 = {"connections": (CONN_V1, 3), "forwards": (FWD, 1), "appSettings.general": (GEN_V1, None)}
# v2: connections and general settings changed (new paths); forwards unchanged, so the
# client re-PUTs it to the SAME path with different bytes.
V2 = {"connections": (CONN_V2, 4), "forwards": (FWD, 1), "appSettings.general": (GEN_V2, None)}


def two_devices(server, ns):
    token = server.token
    a, b = Device(server, token, "device-a", ns), Device(server, token, "device-b", ns)
    sent_v1, answer_v1, _ = a.push(V1)
    b.pull()                                   # device B last synced v1 (its merge base)
    sent_v2, answer_v2, written_v2 = a.push(V2)
    a.pull()                                   # device A last synced v2
    assert answer_v1["etag"] != answer_v2["etag"]
    return a, b, sent_v1, answer_v1, sent_v2, answer_v2, written_v2


@pytest.mark.parametrize("via", ["cli", "admin"])
def test_rollback_to_v1_restores_what_device_b_synced(shared, ns, via):
    server, token = shared, shared.token
    a, b, sent_v1, answer_v1, sent_v2, answer_v2, written_v2 = two_devices(server, ns)
    v1_seen_by_b, v1_objects = dict(b.synced), dict(b.objects)
    v1_seq = seq_of(cli_history(server, ns), sent_v1["revision"])
    assert v1_seq == 1

    admin = Admin(server)
    if via == "cli":
        result = cli_rollback(server, ns, "--to", str(v1_seq))
        assert result.returncode == 0, result.stderr
        assert f"version {v1_seq}" in result.stdout, result.stdout
    else:
        answer = admin.rollback(ns, {"seq": v1_seq})
        assert answer.status == 200, answer
        assert answer.json["ok"] is True and answer.json["rolledBackTo"] == v1_seq, answer.json

    got = metadata(server, token, ns)
    now = got.json
    # A NEW etag, in the JSON and the header alike.
    assert now["etag"] not in (answer_v1["etag"], answer_v2["etag"]), now
    assert got.headers["ETag"].strip('"') == now["etag"]
    if via == "cli":
        assert now["etag"] in result.stdout
    else:
        assert answer.json["etag"] == now["etag"]
    # Field for field v1's manifest as device A sent it (server-owned fields aside) ...
    for key, value in sent_v1.items():
        assert now.get(key) == value, (key, now.get(key), value)
    assert set(now) - SERVER_OWNED == set(sent_v1), set(now) ^ set(sent_v1)
    assert now["exists"] is True
    assert now["contentLength"] == 0 and "contentHash" not in now  # no blob was ever stored
    assert now["scope"] == {"pluginIds": None}
    assert now["sectionRevisions"]["quickCommands"] is None
    # ... and exactly what device B read when v1 was current, etag aside.
    assert {k: v for k, v in now.items() if k != "etag"} == \
        {k: v for k, v in v1_seen_by_b.items() if k != "etag"}

    # The client's change detection: B (at v1) sees nothing to pull, A (at v2) does.
    assert not b.sees_change(now)
    assert a.sees_change(now)
    assert now["revision"] != sent_v2["revision"]
    assert now["sectionRevisions"] != sent_v2["sectionRevisions"]

    # Every object v1 references reads back; byte for byte as when v1 was current, except
    # the path v2 re-PUT (same section revision, new bytes): that holds v2's re-PUT.
    assert set(v1_objects) == paths_of(sent_v1)
    for path, then in v1_objects.items():
        answer = read_object(server, token, ns, path)
        assert answer.status == 200, (path, answer)
        if path in written_v2:
            assert path == section_path("forwards", FWD)
            assert answer.body == written_v2[path], path
        else:
            assert answer.body == then, path
    assert read_object(server, token, ns, section_path("connections", CONN_V1)).body == \
        v1_objects[section_path("connections", CONN_V1)]

    # History (CLI and admin API): a new entry, current, marked as a rollback of v1.
    for history in (cli_history(server, ns), admin.history(ns)):
        newest, *older = history["versions"]
        assert newest["seq"] == 3 and newest["rollbackOf"] == v1_seq, newest
        assert newest["current"] is True and newest["etag"] == now["etag"], newest
        assert newest["revision"] == sent_v1["revision"]
        assert newest["missingObjects"] == 0
        assert [v["seq"] for v in older] == [2, 1]
        assert not any(v["current"] for v in older), older
        assert all(v["rollbackOf"] is None for v in older)

    # Device A pulls the rolled-back state and then sees nothing new.
    a.pull()
    assert not a.sees_change(metadata(server, token, ns).json)


def test_rollback_refused_when_an_object_is_gone(shared, ns):
    server, token = shared, shared.token
    two_devices(server, ns)
    lost = section_path("connections", CONN_V1)      # only v1 references it
    delete_object_row(server, ns, lost)
    before_meta = metadata(server, token, ns)
    before_history = cli_history(server, ns)
    assert [v["missingObjects"] for v in before_history["versions"]] == [0, 1]

    result = cli_rollback(server, ns, "--to", "1")
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert lost in result.stderr and "nothing was changed" in result.stderr, result.stderr
    dry = cli_rollback(server, ns, "--to", "1", yes=False)
    assert dry.returncode == 1 and lost in dry.stderr, dry

    admin = Admin(server)
    for body in ({"seq": 1}, {"seq": 1, "dryRun": True}):
        answer = admin.rollback(ns, body)
        assert answer.status == 409, answer
        assert lost in answer.json["error"]["message"], answer.json

    after_meta = metadata(server, token, ns)
    assert after_meta.body == before_meta.body            # same manifest, same etag
    assert after_meta.headers["ETag"] == before_meta.headers["ETag"]
    assert cli_history(server, ns) == before_history
    assert admin.history(ns) == before_history


def test_a_dry_run_rollback_says_what_would_change_and_changes_nothing(shared, ns):
    server, token = shared, shared.token
    _, _, _, _, sent_v2, answer_v2, _ = two_devices(server, ns)
    before_meta, before_history = metadata(server, token, ns), cli_history(server, ns)

    result = cli_rollback(server, ns, "--to", "1", yes=False)
    assert result.returncode == 0, result.stderr
    assert "dry run" in result.stdout and "nothing was changed" in result.stdout, result.stdout
    assert "connections 4 → 3" in result.stdout, result.stdout    # what WOULD change

    admin = Admin(server)
    answer = admin.rollback(ns, {"seq": 1, "dryRun": True})
    assert answer.status == 200, answer
    assert answer.json["dryRun"] is True and answer.json["rolledBackTo"] == 1
    assert "connections 4 → 3" in answer.json["summary"], answer.json
    assert "connections" in answer.json["changedSections"]
    assert "forwards" not in answer.json["changedSections"]

    after = metadata(server, token, ns)
    assert after.body == before_meta.body and after.json["etag"] == answer_v2["etag"]
    assert after.json["revision"] == sent_v2["revision"]
    assert cli_history(server, ns) == before_history


# -- retention ------------------------------------------------------------------------------

def test_retention_keeps_every_object_a_kept_version_references(make_server):
    server = make_server(env={"OBJECT_RETENTION_SECONDS": "2"})
    token, ns = server.create_token(), NS
    device = Device(server, token, "device-a", ns)
    general = hex64("general, never changes")
    revisions, conn_paths = {}, {}
    orphan_old = "structured/connections/fnv1a-deadbeef.json"   # upload whose manifest never came
    assert server.request("PUT", object_path(ns, orphan_old), b"{}", token=token).status == 201
    started = time.monotonic()
    for i in range(1, 35):                                      # 34 versions: 2 beyond the 32
        rev = f"fnv1a-{i:08x}"
        sent, _, written = device.push({"connections": (rev, i),
                                        "appSettings.general": (general, None)})
        revisions[i], conn_paths[i] = sent["revision"], section_path("connections", rev)
        assert conn_paths[i] in written
    time.sleep(max(0.0, 3.0 - (time.monotonic() - started)))
    orphan_fresh = "structured/forwards/fnv1a-fresh.json"       # younger than the window
    assert server.request("PUT", object_path(ns, orphan_fresh), b"[]", token=token).status == 201
    fresh_written = time.monotonic()

    result = json.loads(server.cli("gc").stdout)
    # The fresh orphan is kept only if GC ran within 2 s of its write; on a loaded machine
    # the CLI alone can take longer to start, so that part is checked only when it did.
    fresh_kept = time.monotonic() - fresh_written < 1.9
    # v1 and v2 are older than the window and beyond the newest 32: dropped, and with them
    # the connections objects only they referenced; plus the old orphan.
    assert result["manifestsRemoved"] == 2, result
    assert result["objectsRemoved"] in ((3,) if fresh_kept else (3, 4)), result

    for i in (1, 2):
        assert read_object(server, token, ns, conn_paths[i]).status == 404, i
    assert read_object(server, token, ns, orphan_old).status == 404
    if fresh_kept:
        assert read_object(server, token, ns, orphan_fresh).status == 200
    for i in range(3, 35):                          # every kept version's objects survive
        assert read_object(server, token, ns, conn_paths[i]).status == 200, i
    assert read_object(server, token, ns,
                       section_path("appSettings.general", general)).status == 200

    history = cli_history(server, ns, "--limit", "100")
    assert [v["seq"] for v in history["versions"]] == list(range(34, 2, -1))
    assert all(v["missingObjects"] == 0 for v in history["versions"])

    # Rolling back to the oldest kept version still works; a pruned one is gone for good.
    assert cli_rollback(server, ns, "--to", "1").returncode == 1
    rolled = cli_rollback(server, ns, "--to", "3")
    assert rolled.returncode == 0, rolled.stderr
    now = metadata(server, token, ns).json
    assert now["revision"] == revisions[3]
    assert now["sections"]["connections"]["path"] == conn_paths[3]
    assert read_object(server, token, ns, conn_paths[3]).status == 200

    # Another GC run drops version 3 itself (33 versions now), never the object the
    # current manifest (the rollback) references.
    again = json.loads(server.cli("gc").stdout)
    assert again["manifestsRemoved"] == 1, again
    assert read_object(server, token, ns, conn_paths[3]).status == 200
    for i in range(4, 35):
        assert read_object(server, token, ns, conn_paths[i]).status == 200, i


# -- the suspicious-drop flag -------------------------------------------------------------

def test_a_section_losing_more_than_half_its_records_is_flagged_suspicious(shared, ns):
    server = shared
    device = Device(server, server.token, "laptop", ns)
    counts = [42, 0, 10, 4, 10, 6, 12, 6]
    for i, count in enumerate(counts):
        # An emptied section has an empty revision: structured/connections/.json
        rev = "" if count == 0 else f"fnv1a-{i:04x}{count:04x}"
        device.push({"connections": (rev, count), "forwards": ("fnv1a-f0", 2)})
    history = cli_history(server, ns)
    by_seq = {v["seq"]: v for v in history["versions"]}
    expected = {1: False,   # the first version
                2: True,    # 42 -> 0: emptied
                3: False,   # 0 -> 10
                4: True,    # 10 -> 4: lost more than half
                5: False,   # 4 -> 10
                6: False,   # 10 -> 6: lost less than half
                7: False,   # 6 -> 12
                8: False}   # 12 -> 6: exactly half is not "more than half"
    assert {seq: v["suspicious"] for seq, v in by_seq.items()} == expected, history
    assert "connections 42 → 0" in by_seq[2]["summary"], by_seq[2]
    assert by_seq[2]["recordCounts"]["connections"] == {"before": 42, "after": 0}
    assert by_seq[2]["changedSections"] == ["connections"]
    assert "connections 10 → 4" in by_seq[4]["summary"]
    assert "connections 10 → 6" in by_seq[6]["summary"]
    assert "forwards" not in by_seq[6]["summary"]               # unchanged section
    assert Admin(server).history(ns)["versions"] == history["versions"]

    # --limit: the oldest version shown is still compared with its predecessor.
    limited = cli_history(server, ns, "--limit", "5")
    assert [v["seq"] for v in limited["versions"]] == [8, 7, 6, 5, 4]
    assert limited["versions"][-1]["suspicious"] is True
    # The text view flags them too.
    table = server.cli("namespace", "history", ns).stdout
    flagged = [line for line in table.splitlines() if "SUSPICIOUS" in line]
    assert len(flagged) == 2 and any("connections 42 → 0" in line for line in flagged), table


# -- the legacy blob ----------------------------------------------------------------------

def upload_snapshots(server, token, ns, count: int) -> tuple[list[bytes], list[str]]:
    snapshots, etags, etag = [], [], None
    for i in range(1, count + 1):
        data = f"snapshot {i} ".encode() + os.urandom(100 * i)
        headers = {"Content-Type": SNAPSHOT_TYPE, "X-OxideTerm-Revision": f"snap-{i}",
                   "X-OxideTerm-Device-Id": f"device-{i % 2}",
                   "X-OxideTerm-Section-Revisions": json.dumps({"connections": f"c{i}"})}
        headers.update({"If-Match": etag} if etag else {"If-None-Match": "*"})
        answer = server.request("PUT", ns_path(ns, "blob"), data, headers, token=token)
        assert answer.status == 200, answer
        etag = answer.json["etag"]
        snapshots.append(data)
        etags.append(etag)
    return snapshots, etags


def test_snapshot_history_keeps_three_and_rollback_restores_one(shared, ns):
    server, token = shared, shared.token
    snapshots, etags = upload_snapshots(server, token, ns, 5)
    kept = cli_history(server, ns)["blobVersions"]
    assert [v["revision"] for v in kept] == ["snap-4", "snap-3", "snap-2"], kept  # BLOB_HISTORY=3
    for version in kept:
        data = snapshots[int(version["revision"].split("-")[1]) - 1]
        assert version["sha256"] == hashlib.sha256(data).hexdigest()
        assert version["size"] == len(data)
    target = next(v["seq"] for v in kept if v["revision"] == "snap-2")

    dry = cli_rollback(server, ns, "--to-blob", str(target), yes=False)
    assert dry.returncode == 0 and "dry run" in dry.stdout, dry
    assert server.request("GET", ns_path(ns, "blob"), token=token).body == snapshots[4]
    assert metadata(server, token, ns).json["etag"] == etags[-1]

    result = cli_rollback(server, ns, "--to-blob", str(target))
    assert result.returncode == 0, result.stderr
    blob = server.request("GET", ns_path(ns, "blob"), token=token)
    assert blob.status == 200 and blob.body == snapshots[1]
    etag = blob.headers["ETag"].strip('"')
    assert etag not in etags
    meta = metadata(server, token, ns).json
    assert meta["etag"] == etag and meta["revision"] == "snap-2"
    assert meta["contentHash"] == hashlib.sha256(snapshots[1]).hexdigest()
    assert meta["contentLength"] == len(snapshots[1])
    assert meta["deviceId"] == "device-0"
    assert meta["sectionRevisions"] == {"connections": "c2"}
    # The snapshot it replaced is kept in turn (undo the undo), still 3 kept in all.
    kept = cli_history(server, ns)["blobVersions"]
    assert "snap-5" in [v["revision"] for v in kept] and len(kept) == 3, kept
    # A device still holding snapshot 5's etag cannot overwrite blindly.
    stale = server.request("PUT", ns_path(ns, "blob"), b"late", {
        "X-OxideTerm-Revision": "late", "If-Match": etags[-1]}, token=token)
    assert stale.status == 412, stale


def test_blob_history_zero_keeps_no_snapshot_versions(make_server):
    server = make_server(env={"BLOB_HISTORY": "0"})
    token = server.create_token()
    snapshots, _ = upload_snapshots(server, token, NS, 5)
    assert cli_history(server, NS)["blobVersions"] == []
    result = cli_rollback(server, NS, "--to-blob", "1")
    assert result.returncode == 1 and "no snapshot version" in result.stderr, result
    assert server.request("GET", ns_path(NS, "blob"), token=token).body == snapshots[-1]


# -- errors ------------------------------------------------------------------------------

def test_history_and_rollback_cli_errors_are_one_line_exit_1(shared, ns):
    server = shared
    Device(server, server.token, "a", ns).push(V1)
    for args in (("namespace", "history", "no/such", "--json"),
                 ("namespace", "rollback", "no/such", "--to", "1", "--yes"),
                 ("namespace", "rollback", ns, "--to", "99", "--yes"),
                 ("namespace", "rollback", ns, "--to-blob", "1", "--yes")):
        line = one_error_line(server.cli(*args, check=False), code=1)
        assert line.startswith("oxsync: "), (args, line)
    # A soft-deleted namespace: restore it first.
    server.cli("namespace", "delete", ns)
    result = cli_rollback(server, ns, "--to", "1")
    assert result.returncode == 1 and "restore it first" in result.stderr, result


def test_admin_history_and_rollback_errors_change_nothing(shared, ns):
    server, token = shared, shared.token
    Device(server, token, "a", ns).push(V1)
    Device(server, token, "a", ns).push(V2)
    before = metadata(server, token, ns).body
    admin = Admin(server)
    path = admin_ns(ns)

    assert_json_error(admin.get("/admin/api/namespaces/no%2Fsuch/history"), 404)
    assert_json_error(admin.rollback("no/such", {"seq": 1}), 404)
    assert_json_error(admin.rollback(ns, {"seq": 99}), 404)
    for body in ({}, {"dryRun": True}, {"seq": "1"}, {"seq": 1, "blobSeq": 1}):
        assert_json_error(admin.rollback(ns, body), 400)
    assert_json_error(admin.rollback(ns, {"seq": 1}, csrf=False), 403)
    assert_json_error(admin.rollback(ns, {"seq": 1}, csrf="wrong"), 403)
    assert_json_error(server.request("GET", f"{path}/history"), 401)       # no session
    assert_json_error(server.request("POST", f"{path}/rollback", {"seq": 1}), 401)
    assert metadata(server, token, ns).body == before                    # nothing changed
    assert len(admin.history(ns)["versions"]) == 2

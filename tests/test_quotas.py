"""Quotas (issue 24, finding 2: "One write token fills the disk").

Found: a `team/*` token sent 4,891 manifests in 30 s, the database grew from 308 KB to
1.25 GB and `gc` removed nothing (every row was younger than OBJECT_RETENTION_SECONDS);
namespaces under the prefix could be created without limit; the history of that
namespace, asked with limit=500, was a 128 MB answer. Now:

- MAX_HISTORY_BYTES bounds each namespace's history (manifests and kept snapshots) in the
  write's own transaction: the oldest go first, whatever their age; the newest 4 stay;
  the trim is logged, once a minute per namespace at most.
- MAX_NAMESPACE_BYTES bounds a namespace's snapshot and objects: a write past it answers
  507 namespace_quota_exceeded and stores nothing.
- MAX_NAMESPACES_PER_TOKEN bounds the namespaces one token's writes bring into being:
  the next answers 403 namespace_limit_reached. Administrators are not limited.
- /metrics counts refusals per limit; the admin API and `namespace list` show use against
  each limit; history answers are paged (before=seq) and bounded in bytes.

Every test here failed on the code before quotas (see the report of branch `quotas`).
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid

from conftest import (AdminClient, admin_ns, assert_json_error, db_rows, ns_path,
                      object_path, quoted)

BOTH_STORES = True
MiB = 1024 * 1024
ITEM_BYTES = 256                 # what each stored row counts besides its bytes
KEEP_NEWEST = 4                  # history versions kept whatever the byte bound
ADMIN_PASSWORD = "quotas-admin-password"
METRICS_TOKEN = "metrics-" + "q" * 40
MANIFEST_TYPE = "application/vnd.oxideterm.cloud-sync.manifest+json"


def manifest(revision: str, padding: int = 0) -> dict:
    """A structured-v2 manifest; `padding` bytes in a field the server keeps verbatim
    (newer clients add fields), to make it as large as a hostile one."""
    body = {"format": "structured-v2", "revision": revision, "deviceId": "flood",
            "contentType": MANIFEST_TYPE, "scope": {"pluginIds": None},
            "sections": {"connections": {"revision": revision, "recordCount": 1,
                                         "path": f"structured/connections/{revision}.json",
                                         "contentType": "application/json"}},
            "sectionRevisions": {"connections": revision}}
    if padding:
        body["padding"] = "x" * padding
    return body


def put_manifest(server, token, namespace, body, connection=None):
    return server.request("PUT", ns_path(namespace, "metadata"), body, token=token,
                          connection=connection)


def put_blob(server, token, namespace, data: bytes, etag: str | None = None):
    headers = {"X-OxideTerm-Revision": f"rev-{uuid.uuid4().hex[:8]}",
               "Content-Type": "application/vnd.oxideterm.oxide"}
    headers["If-Match" if etag else "If-None-Match"] = quoted(etag) if etag else "*"
    return server.request("PUT", ns_path(namespace, "blob"), data, headers, token=token)


def metric(server, name: str) -> int:
    text = server.request("GET", "/metrics", token=METRICS_TOKEN).body.decode()
    match = re.search(rf"^{re.escape(name)} (\d+)$", text, re.M)
    assert match, (name, text)
    return int(match.group(1))


def stored_history_bytes(server, namespace: str) -> int:
    """What the history holds, counted from the rows themselves (not the server's count)."""
    manifests = db_rows(server, "SELECT manifest FROM manifests WHERE namespace = ?",
                        (namespace,))
    snapshots = db_rows(server, "SELECT size FROM blob_versions WHERE namespace = ?",
                        (namespace,))
    return sum(len(row["manifest"].encode()) + ITEM_BYTES for row in manifests) + \
        sum(row["size"] + ITEM_BYTES for row in snapshots)


def admin_namespace(admin, namespace: str) -> dict:
    answer = admin.get("/admin/api/namespaces")
    assert answer.status == 200, answer
    return next(n for n in answer.json["namespaces"] if n["name"] == namespace)


# -- history bounded in bytes ----------------------------------------------------------

def test_flooding_token_keeps_history_under_its_byte_bound(make_server):
    """The finding as found: a team/* token sends manifests as fast as it can (each near
    the 256 KiB limit). Without any gc, and with every version inside the 30-day window,
    the history stays under MAX_HISTORY_BYTES, the newest versions are kept, and the trim
    is logged once (not once per write)."""
    bound = 2 * MiB
    server = make_server(env={"MAX_HISTORY_BYTES": str(bound), "METRICS_TOKEN": METRICS_TOKEN,
                              "ADMIN_PASSWORD": ADMIN_PASSWORD})
    token = server.create_token("team/*", name="flood")
    namespace, sent = "team/flood", 40
    connection = server.connect()
    for number in range(1, sent + 1):
        answer = put_manifest(server, token, namespace, manifest(f"r{number}", 250_000),
                              connection)
        assert answer.status == 200, answer
    kept = db_rows(server, "SELECT seq, revision FROM manifests WHERE namespace = ? "
                           "ORDER BY seq", (namespace,))
    assert stored_history_bytes(server, namespace) <= bound
    assert len(kept) < sent
    newest = [row["seq"] for row in kept]
    assert newest == list(range(sent - len(kept) + 1, sent + 1))   # the oldest went first
    assert len(kept) >= KEEP_NEWEST and kept[-1]["revision"] == f"r{sent}"
    current = server.request("GET", ns_path(namespace, "metadata"), token=token).json
    assert current["revision"] == f"r{sent}"
    trims = [line for line in server.log().splitlines() if "MAX_HISTORY_BYTES" in line]
    assert len(trims) == 1 and "team/flood" in trims[0], trims
    assert metric(server, "oxsync_history_versions_trimmed_total") == sent - len(kept)
    admin = AdminClient(server)
    admin.login()
    view = admin_namespace(admin, namespace)
    assert view["maxHistoryBytes"] == bound
    assert view["historyBytes"] == stored_history_bytes(server, namespace) <= bound


def test_newest_versions_stay_even_when_they_alone_pass_the_bound(make_server):
    """A bound smaller than the newest few versions never empties the history: the newest
    KEEP_NEWEST stay, so rollback to the last syncs still works."""
    server = make_server(env={"MAX_HISTORY_BYTES": "1"})
    token = server.create_token("team/*")
    for number in range(1, 11):
        assert put_manifest(server, token, "team/tiny", manifest(f"r{number}")).status == 200
    kept = db_rows(server, "SELECT seq FROM manifests WHERE namespace = ? ORDER BY seq",
                   ("team/tiny",))
    assert [row["seq"] for row in kept] == list(range(11 - KEEP_NEWEST, 11))


def test_kept_snapshots_count_in_the_history_bound(make_server):
    """Earlier snapshots are history too: past MAX_HISTORY_BYTES the oldest kept snapshot
    goes before BLOB_HISTORY would drop it; the current snapshot is never touched."""
    server = make_server(env={"MAX_HISTORY_BYTES": str(150_000), "BLOB_HISTORY": "5"})
    token = server.create_token("team/*")
    etag = None
    for number in range(4):
        answer = put_blob(server, token, "team/blobs", bytes([number]) * 60_000, etag)
        assert answer.status == 200, answer
        etag = answer.json["etag"]
    kept = db_rows(server, "SELECT seq FROM blob_versions WHERE namespace = ? ORDER BY seq",
                   ("team/blobs",))
    assert [row["seq"] for row in kept] == [2, 3]      # 3 kept would pass 150,000 bytes
    assert stored_history_bytes(server, "team/blobs") <= 150_000
    current = server.request("GET", ns_path("team/blobs", "blob"), token=token)
    assert current.body == bytes([3]) * 60_000


# -- bytes per namespace ----------------------------------------------------------------

def test_namespace_quota_refuses_a_write_and_keeps_what_was_there(make_server):
    limit = 200_000
    server = make_server(env={"MAX_NAMESPACE_BYTES": str(limit), "METRICS_TOKEN": METRICS_TOKEN})
    token = server.create_token("team/*")
    namespace = "team/full"
    assert server.request("PUT", object_path(namespace, "structured/old.json"), b"o" * 60_000,
                          token=token).status == 201
    first = put_blob(server, token, namespace, b"a" * 100_000)
    assert first.status == 200, first
    payloads = db_rows(server, "SELECT count(*) AS n FROM payloads")[0]["n"]
    # 150,000 bytes replace the 100,000 (the old snapshot becomes history, which never
    # counts here), but with the object that is more than the limit.
    too_big = put_blob(server, token, namespace, b"b" * 150_000, first.json["etag"])
    used = 60_000 + len("structured/old.json") + 150_000 + 2 * ITEM_BYTES
    assert_json_error(too_big, 507, "MAX_NAMESPACE_BYTES", "namespace 'team/full'",
                      f"would hold {used} bytes", f"limit of {limit} bytes",
                      code="namespace_quota_exceeded")
    # Nothing half-written: the old snapshot, its etag, no extra payload, no kept version.
    blob = server.request("GET", ns_path(namespace, "blob"), token=token)
    assert blob.body == b"a" * 100_000 and blob.headers["ETag"] == quoted(first.json["etag"])
    metadata = server.request("GET", ns_path(namespace, "metadata"), token=token).json
    assert metadata["etag"] == first.json["etag"] and metadata["contentLength"] == 100_000
    assert db_rows(server, "SELECT count(*) AS n FROM payloads")[0]["n"] == payloads
    assert not db_rows(server, "SELECT seq FROM blob_versions WHERE namespace = ?",
                       (namespace,))
    # Objects count too; a refused object is not there afterwards.
    big = server.request("PUT", object_path(namespace, "structured/a.json"), b"c" * 99_000,
                         token=token)
    assert_json_error(big, 507, "MAX_NAMESPACE_BYTES", code="namespace_quota_exceeded")
    assert server.request("GET", object_path(namespace, "structured/a.json"),
                          token=token).status == 404
    # A write that shrinks the namespace passes; then the room is there again.
    smaller = put_blob(server, token, namespace, b"d" * 10_000, first.json["etag"])
    assert smaller.status == 200, smaller
    fits = server.request("PUT", object_path(namespace, "structured/a.json"), b"c" * 99_000,
                          token=token)
    assert fits.status == 201, fits
    assert metric(server, 'oxsync_quota_refusals_total{limit="namespace_bytes"}') == 2
    assert metric(server, 'oxsync_quota_refusals_total{limit="namespaces_per_token"}') == 0


def test_a_namespace_over_a_lowered_limit_can_still_shrink(make_server):
    """An operator lowers MAX_NAMESPACE_BYTES below what a namespace holds: writes that add
    are refused, writes that make it smaller pass."""
    server = make_server()
    token = server.create_token("team/*")
    path = object_path("team/lowered", "structured/big.json")
    assert server.request("PUT", path, b"b" * 300_000, token=token).status == 201
    server.stop()
    server.env["MAX_NAMESPACE_BYTES"] = "100000"
    server.start()
    more = server.request("PUT", object_path("team/lowered", "structured/new.json"), b"n",
                          token=token)
    assert_json_error(more, 507, "MAX_NAMESPACE_BYTES", code="namespace_quota_exceeded")
    smaller = server.request("PUT", path, b"s" * 200_000, token=token)
    assert smaller.status == 200, smaller
    assert server.request("GET", path, token=token).body == b"s" * 200_000


def test_a_flood_of_empty_objects_reaches_the_quota(make_server):
    """Each stored row counts, not only its bytes: empty objects at new paths cannot grow
    the database without limit."""
    limit = 64 * 1024
    server = make_server(env={"MAX_NAMESPACE_BYTES": str(limit)})
    token = server.create_token("team/*")
    connection = server.connect()
    for number in range(limit // ITEM_BYTES + 1):
        answer = server.request("PUT", object_path("team/empty", f"e/{number}"), b"",
                                token=token, connection=connection)
        if answer.status != 201:
            break
    assert_json_error(answer, 507, "MAX_NAMESPACE_BYTES", code="namespace_quota_exceeded")
    stored = db_rows(server, "SELECT count(*) AS n, sum(length(path)) AS paths FROM objects")
    assert stored[0]["n"] * ITEM_BYTES + stored[0]["paths"] <= limit
    assert stored[0]["n"] == number


# -- namespaces per token -------------------------------------------------------------

def test_a_token_creates_at_most_its_namespaces(make_server):
    server = make_server(env={"MAX_NAMESPACES_PER_TOKEN": "3", "METRICS_TOKEN": METRICS_TOKEN,
                              "ADMIN_PASSWORD": ADMIN_PASSWORD})
    token = server.create_token("team/*", name="team")
    results: dict[str, int] = {}

    def create(name):
        results[name] = put_manifest(server, token, name, manifest("r1")).status

    threads = [threading.Thread(target=create, args=(f"team/n{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    created = sorted(name for name, status in results.items() if status == 200)
    assert len(created) == 3 and sorted(results.values()) == [200] * 3 + [403] * 5, results
    refused = put_manifest(server, token, "team/one-more", manifest("r1"))
    assert_json_error(refused, 403, "MAX_NAMESPACES_PER_TOKEN", "team/one-more", "3",
                      code="namespace_limit_reached")
    names = {row["name"] for row in db_rows(server, "SELECT name FROM namespaces")}
    assert names == set(created)
    # Its own namespaces still take writes; one an administrator made takes them too.
    assert put_manifest(server, token, created[0], manifest("r2")).status == 200
    server.cli("namespace", "create", "team/by-admin")
    assert put_manifest(server, token, "team/by-admin", manifest("r1")).status == 200
    # Another token has an allowance of its own.
    other = server.create_token("team/*", name="other")
    assert put_manifest(server, other, "team/other", manifest("r1")).status == 200
    assert metric(server, 'oxsync_quota_refusals_total{limit="namespaces_per_token"}') == 6
    admin = AdminClient(server)
    admin.login()
    tokens = {t["name"]: t for t in admin.get("/admin/api/tokens").json["tokens"]}
    assert (tokens["team"]["namespaceCount"], tokens["team"]["maxNamespaces"]) == (3, 3)
    assert tokens["other"]["namespaceCount"] == 1


# -- what the operator sees -----------------------------------------------------------

def test_admin_api_and_cli_show_use_against_the_limits(make_server):
    server = make_server(env={"MAX_NAMESPACE_BYTES": str(MiB), "ADMIN_PASSWORD": ADMIN_PASSWORD,
                              "MAX_NAMESPACES_PER_TOKEN": "0"})
    token = server.create_token("team/*", name="shown")
    path = "structured/connections/r1.json"
    assert server.request("PUT", object_path("team/shown", path), b"x" * 300_000,
                          token=token).status == 201
    assert put_manifest(server, token, "team/shown", manifest("r1")).status == 200
    admin = AdminClient(server)
    admin.login()
    view = admin_namespace(admin, "team/shown")
    stored = db_rows(server, "SELECT manifest FROM manifests")[0]["manifest"]
    assert view["usedBytes"] == 300_000 + len(path) + ITEM_BYTES
    assert view["maxBytes"] == MiB and view["maxHistoryBytes"] == 64 * MiB
    assert view["historyBytes"] == len(stored.encode()) + ITEM_BYTES
    token_view = admin.get("/admin/api/tokens").json["tokens"][0]
    assert token_view["namespaceCount"] == 1 and token_view["maxNamespaces"] is None
    table = server.cli("namespace", "list").stdout
    line = next(line for line in table.splitlines() if line.startswith("team/shown"))
    assert "0.3 MiB of 1.0 MiB (28%)" in line, table
    assert "USE (MAX_NAMESPACE_BYTES)" in table.splitlines()[0]
    listed = json.loads(server.cli("namespace", "list", "--json").stdout)[0]
    assert (listed["usedBytes"], listed["maxBytes"]) == (view["usedBytes"], MiB)
    unlimited = json.loads(server.cli("namespace", "list", "--json",
                                      env={"MAX_NAMESPACE_BYTES": "0"}).stdout)[0]
    assert unlimited["maxBytes"] is None
    assert "CREATED NS" in server.cli("token", "list").stdout


# -- history answers: paged and bounded in bytes ------------------------------------------

def test_history_answers_are_paged_and_bounded_in_bytes(make_server):
    """The finding's limit=500 answer was 128 MB. Each page now holds at most 100 versions
    and about 2 MiB; nextBefore walks every kept version exactly once."""
    server = make_server(env={"ADMIN_PASSWORD": ADMIN_PASSWORD})
    token = server.create_token("team/*")
    connection = server.connect()
    for number in range(1, 21):
        assert put_manifest(server, token, "team/pages", manifest(f"r{number}", 250_000),
                            connection).status == 200
    admin = AdminClient(server)
    admin.login()
    seen, before, pages = [], None, 0
    while True:
        query = "?limit=500" + (f"&before={before}" if before else "")
        answer = admin.get(admin_ns("team/pages", "/history") + query)
        assert answer.status == 200, answer
        assert len(answer.body) <= 2 * MiB + 300_000, len(answer.body)
        page = answer.json
        seen += [version["seq"] for version in page["versions"]]
        pages += 1
        if not page["hasMore"]:
            assert page["nextBefore"] is None
            break
        before = page["nextBefore"]
        assert before == page["versions"][-1]["seq"]
    assert seen == list(range(20, 0, -1)) and pages >= 3
    small = admin.get(admin_ns("team/pages", "/history") + "?limit=3").json
    assert [v["seq"] for v in small["versions"]] == [20, 19, 18] and small["nextBefore"] == 18
    assert small["versions"][-1]["changedSections"] == ["connections"]  # compared with 17
    bad = admin.get(admin_ns("team/pages", "/history") + "?before=x")
    assert_json_error(bad, 400, "before")
    cli = server.cli("namespace", "history", "team/pages", "--limit", "2", "--before", "5").stdout
    assert re.search(r"^4\s", cli, re.M) and re.search(r"^3\s", cli, re.M), cli
    assert not re.search(r"^5\s", cli, re.M)
    assert "--before 3" in cli
    everything = json.loads(server.cli("namespace", "history", "team/pages", "--limit", "500",
                                       "--json").stdout)
    assert len(json.dumps(everything)) <= 2 * MiB + 300_000 and everything["hasMore"]


def counted_from_rows(server, namespace: str) -> tuple[int, int]:
    """(use, history) of a namespace recounted from its rows, the way the quotas count."""
    blob = db_rows(server, "SELECT size FROM blobs WHERE namespace = ?", (namespace,))
    objects = db_rows(server, "SELECT size, path FROM objects WHERE namespace = ?",
                      (namespace,))
    used = sum(row["size"] + ITEM_BYTES for row in blob) + \
        sum(row["size"] + len(row["path"]) + ITEM_BYTES for row in objects)
    return used, stored_history_bytes(server, namespace)


def test_use_stays_in_step_with_the_rows_on_every_write_path(make_server):
    """Snapshots (new, replaced, rolled back), objects (new, replaced), manifests (new,
    rolled back, trimmed) and retention: the counters the quotas read always equal a
    recount of the rows."""
    server = make_server(env={"ADMIN_PASSWORD": ADMIN_PASSWORD, "MAX_HISTORY_BYTES": "50000",
                              "OBJECT_RETENTION_SECONDS": "1"})
    token = server.create_token("team/*")
    admin = AdminClient(server)
    admin.login()
    namespace = "team/steps"

    def in_step():
        view = admin_namespace(admin, namespace)
        assert (view["usedBytes"], view["historyBytes"]) == counted_from_rows(server, namespace)

    etag = None
    for size in (5000, 9000, 3000):
        answer = put_blob(server, token, namespace, b"s" * size, etag)
        etag = answer.json["etag"]
        in_step()
    for data in (b"one", b"a longer second version", b""):
        server.request("PUT", object_path(namespace, "structured/x.json"), data, token=token)
        in_step()
    for number in range(1, 8):
        put_manifest(server, token, namespace, {"revision": f"r{number}", "pad": "p" * 5000})
        in_step()
    kept = db_rows(server, "SELECT seq FROM blob_versions WHERE namespace = ?", (namespace,))
    assert [row["seq"] for row in kept] == [2]    # the oldest snapshot went first
    for body in ({"blobSeq": 2}, {"seq": 6}):
        assert admin.post(admin_ns(namespace, "/rollback"), body).status == 200
        in_step()
    threading.Event().wait(1.5)     # past OBJECT_RETENTION_SECONDS; no manifest needs x.json
    assert admin.post("/admin/api/gc").status == 200
    assert server.request("GET", object_path(namespace, "structured/x.json"),
                          token=token).status == 404
    in_step()

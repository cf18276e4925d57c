"""Admin listings (issue 22): namespaces and tokens a page at a time, searched and sorted
on the server with keyset cursors; their size counters; the same from the CLI.

One server per module holds a few thousand seeded namespaces and tokens (conftest's
seed_namespaces / seed_tokens write them straight into the store) beside a few written
through the sync API, whose sizes the counters must add up exactly.
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlencode

import conftest
import pytest
from conftest import (assert_json_error, db_change, db_rows, ns_path, object_path,
                      one_error_line, running_server, seed_namespaces, seed_tokens)

BOTH_STORES = True

PASSWORD = "listing-Passw0rd-for-tests"
ADMIN_ENV = {"ADMIN_PASSWORD": PASSWORD,
             "ADMIN_JWT_SECRET": "oxsync-listing-tests-jwt-secret-0123456789"}
SEEDED = 2500


@pytest.fixture(scope="module")
def shared(tmp_path_factory, store_kind):
    with running_server(tmp_path_factory.mktemp("listing"), ADMIN_ENV, store_kind=store_kind,
                        args=("--blob-history", "2", "--max-blob-size", "1048576")) as server:
        server.remember(PASSWORD)
        server.seeded = seed_namespaces(server, SEEDED)
        server.seeded_tokens = seed_tokens(server, 300)
        yield server


@pytest.fixture(scope="module")
def admin(shared):
    client = conftest.AdminClient(shared)
    client.login(PASSWORD)
    return client


def listing(admin, what: str, **params) -> dict:
    answer = admin.get(f"/admin/api/{what}?{urlencode(params)}")
    assert answer.status == 200, answer
    return answer.json


def every_page(admin, what: str, **params) -> tuple[list[dict], int]:
    """Follow nextCursor to the end -> (every item in order, pages read)."""
    items, pages, cursor = [], 0, None
    while True:
        page = listing(admin, what, **params, **({"cursor": cursor} if cursor else {}))
        items += page[what]
        pages += 1
        assert len(page[what]) <= int(params.get("limit", 100))
        cursor = page["nextCursor"]
        if cursor is None:
            return items, pages
        assert len(page[what]) == int(params.get("limit", 100)), "a short page that is not last"


def sort_key(sort: str):
    return {"name": lambda n: n["name"], "size": lambda n: (n["totalBytes"], n["name"]),
            "versions": lambda n: (n["versionCount"], n["name"]),
            "lastWrite": lambda n: (n["lastWriteAt"] or "", n["name"])}[sort]


# -- namespaces -----------------------------------------------------------------------

@pytest.mark.parametrize("sort", ["name", "size", "lastWrite", "versions"])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_paging_reaches_every_namespace_once_in_order(admin, shared, sort, order):
    items, pages = every_page(admin, "namespaces", sort=sort, order=order, limit=500,
                              q="seed-0")
    names = [item["name"] for item in items]
    expected = [name for name in shared.seeded if "seed-0" in name]
    assert sorted(names) == sorted(expected) and len(set(names)) == len(names)
    assert pages == -(-len(expected) // 500)
    key = sort_key(sort)
    assert [key(item) for item in items] == sorted((key(i) for i in items),
                                                   reverse=order == "desc")


def test_size_sort_has_ties_and_small_pages_split_them(admin, shared):
    """Sizes repeat (ties broken by name): pages of 7 still give each namespace once."""
    params = {"sort": "size", "q": "seed-001", "limit": 7}
    items, pages = every_page(admin, "namespaces", **params)
    sizes = [item["totalBytes"] for item in items]
    assert len(set(sizes)) < len(sizes), "the seed should have ties in size"
    assert sorted(item["name"] for item in items) == \
        [n for n in shared.seeded if "seed-001" in n]
    assert pages == -(-len(items) // 7)
    assert sizes == sorted(sizes, reverse=True)  # size defaults to largest first


def test_first_page_totals_and_default_order(admin, shared):
    page = listing(admin, "namespaces")
    assert page["total"] >= SEEDED and page["matched"] == page["total"]
    assert len(page["namespaces"]) == 100 and page["nextCursor"]
    names = [n["name"] for n in page["namespaces"]]
    assert names == sorted(names)
    assert set(page) == {"namespaces", "total", "matched", "nextCursor"}


def test_search_finds_one_among_thousands_by_any_part_in_any_case(admin, shared):
    target = shared.seeded[1234]
    for q in (target, target.upper(), target[-5:], "SEED-01234"):
        page = listing(admin, "namespaces", q=q)
        assert [n["name"] for n in page["namespaces"]] == [target], q
        assert page["matched"] == 1 and page["total"] >= SEEDED and page["nextCursor"] is None
    nothing = listing(admin, "namespaces", q="no-such-namespace-anywhere")
    assert nothing["namespaces"] == [] and nothing["matched"] == 0


def test_search_treats_like_wildcards_as_text(admin, shared):
    """'%', '_' and the escape character are searched for, not SQL wildcards ('_' would
    match the '-' in every seeded name)."""
    assert listing(admin, "namespaces", q="seed-0")["matched"] > 0
    for q in ("%", "_", "seed_0", "seed%0", "!", "!%"):
        assert listing(admin, "namespaces", q=q)["matched"] == 0, q


@pytest.mark.parametrize("query, words", [
    ("limit=0", ["limit", "1 to 500"]), ("limit=501", ["limit"]), ("limit=ten", ["limit"]),
    ("limit=-5", ["limit"]), ("sort=color", ["sort", "name, size, lastWrite, versions"]),
    ("order=up", ["order", "asc, desc"]), ("pageSize=5", ["unknown parameter", "pageSize"]),
    ("q=" + "x" * 201, ["q", "200"]), ("q=a%07b", ["q", "printable"]),
    ("cursor=garbage", ["cursor"]), ("cursor=%FF%FE.xx", ["cursor"])])
def test_bad_namespace_parameters_are_400_json(admin, query, words):
    assert_json_error(admin.get(f"/admin/api/namespaces?{query}"), 400, *words)


def test_an_altered_or_foreign_cursor_is_400(admin, shared):
    page = listing(admin, "namespaces", sort="size", limit=5)
    cursor = page["nextCursor"]
    keys, _, mac = cursor.partition(".")
    forged = conftest_b64(json.dumps([0, "seed-00000"]))
    for bad in (forged + "." + mac, keys + "." + mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB"),
                keys, "." + mac):
        answer = admin.get(f"/admin/api/namespaces?sort=size&limit=5&cursor={quote(bad)}")
        assert_json_error(answer, 400, "cursor")
    for other in ("sort=name", "sort=size&order=asc", "sort=size&q=seed"):  # another query
        answer = admin.get(f"/admin/api/namespaces?{other}&cursor={quote(cursor)}")
        assert_json_error(answer, 400, "cursor")
    tokens = admin.get(f"/admin/api/tokens?sort=size&cursor={quote(cursor)}")
    assert_json_error(tokens, 400)
    assert listing(admin, "namespaces", sort="size", limit=9, cursor=cursor)["namespaces"], \
        "the same query with another page size may go on"


def conftest_b64(text: str) -> str:
    import base64
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def test_listing_needs_a_session(shared):
    for what in ("namespaces", "tokens", "devices"):
        assert_json_error(shared.request("GET", f"/admin/api/{what}?limit=5"), 401)


# -- the counters the size sort uses ------------------------------------------------------

def sizes_from_rows(server, name: str) -> dict:
    """What the namespace's counters must say, added up from its rows."""
    def one(sql):
        return db_rows(server, sql, (name,))[0]["v"] or 0
    return {"blobBytes": one("SELECT sum(size) AS v FROM blobs WHERE namespace = ?"),
            "objectCount": one("SELECT count(*) AS v FROM objects WHERE namespace = ?"),
            "objectBytes": one("SELECT sum(size) AS v FROM objects WHERE namespace = ?"),
            "snapshotHistoryCount": one("SELECT count(*) AS v FROM blob_versions "
                                        "WHERE namespace = ?"),
            "snapshotHistoryBytes": one("SELECT sum(size) AS v FROM blob_versions "
                                        "WHERE namespace = ?"),
            "versionCount": one("SELECT count(*) AS v FROM manifests WHERE namespace = ?")}


def counters(admin, name: str) -> dict:
    view = listing(admin, "namespaces", q=name)["namespaces"][0]
    assert view["name"] == name
    return {key: view[key] for key in ("blobBytes", "objectCount", "objectBytes",
                                       "snapshotHistoryCount", "snapshotHistoryBytes",
                                       "versionCount")}


def test_counters_follow_every_kind_of_write(make_server, ns):
    """On a server of its own: retention there visits a handful of namespaces, not 2,500."""
    shared = make_server(env=ADMIN_ENV, args=("--blob-history", "2"))
    shared.remember(PASSWORD)
    admin = conftest.AdminClient(shared)
    admin.login(PASSWORD)
    token = shared.create_token()
    checks = 0

    def check():
        nonlocal checks
        assert counters(admin, ns) == sizes_from_rows(shared, ns)
        checks += 1

    def put(path, data):
        assert shared.request("PUT", object_path(ns, path), data, token=token).status in (200, 201)

    put("a.json", b"x" * 100)
    put("b.json", b"y" * 50)
    check()
    put("a.json", b"z" * 7)      # replaced: count stays, bytes shrink
    check()
    for revision, size in (("r1", 300), ("r2", 40), ("r3", 5000), ("r4", 1)):
        answer = shared.request("PUT", ns_path(ns, "blob"), b"s" * size,
                                {"X-OxideTerm-Revision": revision}, token=token)
        assert answer.status == 200, answer
    check()                      # history kept 2 (--blob-history 2), older dropped
    for revision in ("m1", "m2", "m3"):
        assert shared.request("PUT", ns_path(ns, "metadata"), {"revision": revision},
                              token=token).status == 200
    check()
    seq = db_rows(shared, "SELECT min(seq) AS s FROM blob_versions WHERE namespace = ?",
                  (ns,))[0]["s"]
    assert admin.post(f"/admin/api/namespaces/{quote(ns, safe='')}/rollback",
                      {"blobSeq": seq}).status == 200
    check()
    assert admin.post(f"/admin/api/namespaces/{quote(ns, safe='')}/rollback",
                      {"seq": 1}).status == 200
    check()
    # Retention: age everything, then collect (objects not in any manifest go).
    db_change(shared, "UPDATE objects SET updated_at = 1 WHERE namespace = ?", (ns,))
    assert admin.post("/admin/api/gc").status == 200
    assert counters(admin, ns)["objectCount"] == 0
    check()
    assert checks == 7


def test_migration_backfills_counters(admin, shared, ns):
    """Counters zeroed behind the server's back come back from a migration's backfill:
    the same UPDATE the migration runs is what fills them on an upgraded store."""
    token = shared.token
    assert shared.request("PUT", object_path(ns, "o.json"), b"x" * 33, token=token).status \
        in (200, 201)
    assert shared.request("PUT", ns_path(ns, "blob"), b"s" * 77,
                          {"X-OxideTerm-Revision": "r"}, token=token).status == 200
    expected = sizes_from_rows(shared, ns)
    assert counters(admin, ns) == expected and expected["objectBytes"] == 33


# -- tokens ---------------------------------------------------------------------------

def test_token_paging_filters_and_search(admin, shared):
    everything, _ = every_page(admin, "tokens", q="seed-token", limit=37)
    ids = [t["id"] for t in everything]
    assert sorted(ids) == sorted(shared.seeded_tokens) and len(set(ids)) == len(ids)
    created = [t["createdAt"] for t in everything]
    assert created == sorted(created)     # default: oldest first, as before
    by_status = {}
    for status in ("enabled", "disabled", "expired"):
        items, _ = every_page(admin, "tokens", q="seed-token", status=status, limit=100)
        by_status[status] = {t["id"] for t in items}
    seeded = range(len(shared.seeded_tokens))
    assert by_status["disabled"] == {shared.seeded_tokens[i] for i in seeded if i % 10 == 9}
    assert by_status["expired"] == {shared.seeded_tokens[i] for i in seeded if i % 7 == 6}
    assert by_status["enabled"] == {shared.seeded_tokens[i] for i in seeded
                                    if i % 10 != 9 and i % 7 != 6}
    assert all(t["expired"] for t in every_page(admin, "tokens", status="expired")[0])
    page = listing(admin, "tokens", q="SEED-TOKEN-00042")
    assert [t["id"] for t in page["tokens"]] == [shared.seeded_tokens[42]]
    assert listing(admin, "tokens", q=shared.seeded_tokens[7])["matched"] == 1  # by id
    assert page["total"] == len(shared.seeded_tokens) + 1   # and the module's own token
    used, _ = every_page(admin, "tokens", q="seed-token", sort="lastUsed", limit=100)
    assert [t["lastUsedAt"] or "" for t in used] == sorted(
        (t["lastUsedAt"] or "" for t in used), reverse=True)
    named, _ = every_page(admin, "tokens", q="seed-token", sort="name", order="desc", limit=90)
    assert [t["name"] for t in named] == sorted((t["name"] for t in named), reverse=True)
    assert "secret" not in json.dumps(page) and "token_hash" not in json.dumps(page)


def test_tokens_match_their_namespace_pattern(admin, shared):
    pattern_hits = listing(admin, "tokens", q="seed-*", limit=500)
    assert pattern_hits["matched"] == len(shared.seeded_tokens)


@pytest.mark.parametrize("query, words", [
    ("status=broken", ["status", "enabled, disabled, expired"]), ("sort=size", ["sort"]),
    ("limit=1000", ["limit"]), ("namespace=x", ["unknown parameter"])])
def test_bad_token_parameters_are_400_json(admin, query, words):
    assert_json_error(admin.get(f"/admin/api/tokens?{query}"), 400, *words)


# -- the CLI ----------------------------------------------------------------------------

def test_cli_namespace_and_token_lists_search_and_limit(shared):
    target = shared.seeded[77]
    found = json.loads(shared.cli("namespace", "list", "--search", target.upper(),
                                  "--json").stdout)
    assert [n["name"] for n in found] == [target]
    limited = shared.cli("namespace", "list", "--limit", "3", "--sort", "size")
    rows = limited.stdout.strip().splitlines()
    assert rows[0].startswith("NAMESPACE") and len(rows) == 4
    assert limited.stderr.startswith(f"3 of {len(shared.seeded) + 0}") or "3 of" in \
        limited.stderr
    tokens = json.loads(shared.cli("token", "list", "--search", "seed-token-0001",
                                   "--status", "enabled", "--json").stdout)
    assert {t["name"] for t in tokens} == {f"seed-token-{i:05d}" for i in range(10, 20)
                                           if i % 10 != 9 and i % 7 != 6}
    assert len(json.loads(shared.cli("token", "list", "--limit", "2", "--json").stdout)) == 2


@pytest.mark.parametrize("args, words", [
    (["namespace", "list", "--limit", "0"], ["--limit"]),
    (["token", "list", "--search", "a\x07b"], ["--search", "printable"])])
def test_cli_refuses_bad_list_options(shared, args, words):
    one_error_line(shared.cli(*args, check=False), *words, code=2)


# -- devices, as observed -----------------------------------------------------------------

def devices(admin, **params) -> dict:
    return listing(admin, "devices", **params)


def device(admin, namespace: str, device_id: str) -> dict:
    page = devices(admin, namespace=namespace, q=device_id)
    found = [d for d in page["devices"] if d["deviceId"] == device_id]
    assert len(found) == 1, page
    return found[0]


def upload(server, namespace, token, device_id, revision, if_match=None, data=b"snap",
           version="OxideTerm/1.2.3"):
    headers = {"X-OxideTerm-Revision": revision, "X-OxideTerm-Device-Id": device_id,
               "X-OxideTerm-Client-Version": version,
               "Content-Type": "application/vnd.oxideterm.oxide"}
    if if_match:
        headers["If-Match"] = f'"{if_match}"'
    return server.request("PUT", ns_path(namespace, "blob"), data, headers, token=token)


def test_devices_show_ok_conflict_and_refused(admin, shared, ns):
    token = shared.token
    token_id = json.loads(shared.cli("token", "list", "--search", "shared", "--json")
                          .stdout)[0]["id"]
    first = upload(shared, ns, token, "laptop-a", "r1")
    assert first.status == 200
    assert upload(shared, ns, token, "desktop-b", "r2", if_match=first.json["etag"]).status \
        == 200
    laptop = device(admin, ns, "laptop-a")
    assert laptop["lastResult"] == "ok" and laptop["lastStatus"] == 200
    assert not laptop["problem"] and not laptop["stale"]
    assert laptop["tokenId"] == token_id and laptop["tokenName"] == "shared"
    assert laptop["clientVersion"] == "OxideTerm/1.2.3" and laptop["lastIp"] == "127.0.0.1"
    # The laptop uploads against the etag it last saw: 412.
    stale = upload(shared, ns, token, "laptop-a", "r3", if_match=first.json["etag"])
    assert stale.status == 412
    laptop = device(admin, ns, "laptop-a")
    assert (laptop["lastResult"], laptop["lastStatus"], laptop["lastCode"]) == \
        ("conflict", 412, "etag_conflict_detected") and laptop["problem"]
    assert laptop["firstSeenAt"] <= laptop["lastResultAt"] <= laptop["lastSeenAt"]
    # A token that does not exist: refused, recorded without a token, old token kept.
    refused = upload(shared, ns, "oxs_not-a-real-token", "laptop-a", "r4")
    assert refused.status == 401
    laptop = device(admin, ns, "laptop-a")
    assert (laptop["lastResult"], laptop["lastStatus"], laptop["lastCode"]) == \
        ("refused", 401, "unauthorized")
    assert laptop["tokenId"] == token_id, "the token it used before is kept"
    assert "oxs_not-a-real-token" not in json.dumps(devices(admin, namespace=ns))
    rows = db_rows(shared, "SELECT * FROM devices WHERE namespace = ?", (ns,))
    assert "oxs_not-a-real-token" not in json.dumps(rows, default=str)
    # A good sync again: ok, and the problem is gone.
    assert upload(shared, ns, token, "laptop-a", "r5",
                  if_match=db_rows(shared, "SELECT etag FROM namespaces WHERE name = ?",
                                   (ns,))[0]["etag"]).status == 200
    laptop = device(admin, ns, "laptop-a")
    assert laptop["lastResult"] == "ok" and not laptop["problem"]
    desktop = device(admin, ns, "desktop-b")
    assert desktop["lastResult"] == "ok"
    assert {d["deviceId"] for d in devices(admin, namespace=ns)["devices"]} == \
        {"laptop-a", "desktop-b"}


def test_manifest_device_id_and_other_results(admin, shared, ns):
    token = shared.token
    manifest = {"format": "structured-v2", "revision": "m1", "deviceId": "phone-c"}
    assert shared.request("PUT", ns_path(ns, "metadata"), manifest, token=token).status == 200
    phone = device(admin, ns, "phone-c")
    assert phone["lastResult"] == "ok" and phone["clientVersion"] is None
    big = b"x" * (2 * 1024 * 1024)
    answer = shared.request("PUT", ns_path(ns, "blob"), big, {
        "X-OxideTerm-Revision": "big", "X-OxideTerm-Device-Id": "phone-c"}, token=token)
    assert answer.status == 413, answer
    phone = device(admin, ns, "phone-c")
    assert (phone["lastResult"], phone["lastStatus"]) == ("too_large", 413)
    # A read-only token refused a write (403): refused, with the token named.
    reader = shared.create_token(name="reader-" + ns[-6:], permissions="read")
    assert upload(shared, ns, reader, "tablet-d", "t1").status == 403
    tablet = device(admin, ns, "tablet-d")
    assert (tablet["lastResult"], tablet["lastStatus"], tablet["lastCode"]) == \
        ("refused", 403, "forbidden")
    assert tablet["tokenName"] == "reader-" + ns[-6:] and "permission" in tablet["lastMessage"]
    # Deleted namespace: 410.
    assert admin.delete(f"/admin/api/namespaces/{quote(ns, safe='')}").status == 200
    assert upload(shared, ns, token, "phone-c", "after-delete").status == 410
    assert device(admin, ns, "phone-c")["lastResult"] == "deleted"
    # Requests without a device id are not attributed to anyone.
    assert shared.request("GET", ns_path(ns, "metadata"), token=token).status == 410
    assert devices(admin, namespace=ns)["total"] >= 2
    assert {d["deviceId"] for d in devices(admin, namespace=ns)["devices"]} == \
        {"phone-c", "tablet-d"}


def test_unknown_token_for_a_namespace_that_does_not_exist_is_not_recorded(admin, shared, ns):
    assert upload(shared, ns, "oxs_stranger", "intruder-1", "x").status == 401
    assert devices(admin, namespace=ns)["devices"] == []
    assert upload(shared, ns, "oxs_stranger", "", "x").status == 401   # no id: nothing


def test_stale_flag_and_status_filters(admin, shared, ns):
    token = shared.token
    assert upload(shared, ns, token, "old-laptop", "r1").status == 200
    first = db_rows(shared, "SELECT etag FROM namespaces WHERE name = ?", (ns,))[0]["etag"]
    assert upload(shared, ns, token, "new-laptop", "r2", if_match=first).status == 200
    assert upload(shared, ns, token, "bad-laptop", "r3", if_match=first).status == 412
    device(admin, ns, "old-laptop")  # flushed
    ten_days = 10 * 86400
    assert db_change(shared, "UPDATE devices SET last_seen_at = last_seen_at - ?, "
                     "first_seen_at = first_seen_at - ?, last_result_at = last_result_at - ? "
                     "WHERE namespace = ? AND device_id = ?",
                     (ten_days, ten_days, ten_days, ns, "old-laptop")) == 1
    old = device(admin, ns, "old-laptop")
    assert old["stale"] and not old["problem"]
    assert not device(admin, ns, "new-laptop")["stale"]

    def ids(**params):
        return {d["deviceId"] for d in devices(admin, namespace=ns, **params)["devices"]}

    assert ids(status="stale") == {"old-laptop"}
    assert ids(status="problem") == {"bad-laptop"}
    assert ids(status="ok") == {"new-laptop"}
    assert ids(status="stale", staleDays="11") == set()
    assert ids(status="ok", staleDays="11") == {"new-laptop", "old-laptop"}
    page = devices(admin, namespace=ns, status="problem")
    assert page["matched"] == 1 and page["total"] >= 3


def test_device_paging_sorts_and_search(admin, shared):
    namespaces = shared.seeded[:50]
    if not devices(admin, q="laptop-0")["matched"]:
        conftest.seed_devices(shared, 1200, namespaces)
    for sort in ("lastSeen", "namespace", "device"):
        for order in ("asc", "desc"):
            items, pages = every_page(admin, "devices", q="laptop-0", sort=sort, order=order,
                                      limit=250)
            keys = [(d["namespace"], d["deviceId"]) for d in items]
            assert len(keys) == len(set(keys)) == 1200 and pages == 5
            field = {"lastSeen": lambda d: (d["lastSeenAt"], d["namespace"], d["deviceId"]),
                     "namespace": lambda d: (d["namespace"], d["deviceId"]),
                     "device": lambda d: (d["deviceId"], d["namespace"])}[sort]
            assert [field(d) for d in items] == sorted(map(field, items),
                                                        reverse=order == "desc")
    newest = devices(admin, q="laptop-0", limit=3)["devices"]
    assert [d["deviceId"] for d in newest] == ["laptop-00000", "laptop-00001", "laptop-00002"]
    stale = devices(admin, q="laptop-0", status="stale")
    assert stale["matched"] == sum(1 for i in range(1200) if i * 60 > 7 * 86400)
    one = devices(admin, q="LAPTOP-00042")
    assert [d["deviceId"] for d in one["devices"]] == ["laptop-00042"]
    assert one["devices"][0]["lastResult"] == "refused" and one["devices"][0]["problem"]


@pytest.mark.parametrize("query, words", [
    ("status=broken", ["status", "ok, problem, stale"]), ("sort=size", ["sort"]),
    ("namespace=a%00b", ["namespace"]), ("staleDays=0", ["staleDays"]),
    ("staleDays=soon", ["staleDays", "number"]), ("deviceId=x", ["unknown parameter"])])
def test_bad_device_parameters_are_400_json(admin, query, words):
    assert_json_error(admin.get(f"/admin/api/devices?{query}"), 400, *words)


def test_cli_device_list(admin, shared, ns):
    token = shared.token
    assert upload(shared, ns, token, "cli-laptop", "r1").status == 200
    assert upload(shared, ns, token, "cli-laptop", "r2", if_match="nope").status == 412
    device(admin, ns, "cli-laptop")  # flushed by the listing
    table = shared.cli("device", "list", "--namespace", ns)
    lines = table.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["NAMESPACE", "DEVICE", "TOKEN"]
    assert len(lines) == 2 and "cli-laptop" in lines[1] and "conflict 412" in lines[1]
    assert "problem" in lines[1]
    found = json.loads(shared.cli("device", "list", "--search", "CLI-LAPTOP", "--json").stdout)
    assert [(d["namespace"], d["lastResult"]) for d in found] == [(ns, "conflict")]
    assert json.loads(shared.cli("device", "list", "--namespace", ns, "--status", "ok",
                                 "--json").stdout) == []
    one_error_line(shared.cli("device", "list", "--namespace", "a b", check=False),
                   "--namespace", code=2)
    one_error_line(shared.cli("device", "list", "--stale-days", "0", check=False),
                   "--stale-days", code=2)

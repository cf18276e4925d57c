"""Sync API authentication and authorization (PROTOCOL.md 2, 3, 8: check order)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import datetime, timezone

import pytest
from conftest import assert_json_error, db_change, ns_path, object_path, running_server


# -- a shared server: every token kind is made once per module ----------------------

class Tokens:
    pass


@pytest.fixture(scope="module")
def shared(tmp_path_factory, store_kind):
    with running_server(tmp_path_factory.mktemp("auth"), token=False,
                        store_kind=store_kind) as server:
        server.tokens = make_tokens(server)
        yield server


def make_tokens(server) -> Tokens:
    """One token of each kind the tests below use."""
    tokens = Tokens()
    tokens.rw = server.create_token(name="rw")
    tokens.read = server.create_token(permissions="read", name="read-only")
    tokens.write = server.create_token(permissions="write", name="write-only")
    tokens.exact = server.create_token(namespace="team/default", name="exact")
    tokens.team = server.create_token(namespace="team/*", name="team")
    tokens.disabled = server.create_token(name="disabled")
    server.cli("token", "disable", server.token_id("disabled"))
    # A past expiry is refused, so this one expires a second from now (and the
    # tests that use it run after the module's first setup wait).
    expiry = datetime.fromtimestamp(int(time.time()) + 2, timezone.utc)
    tokens.expired = server.create_token(name="expired",
                                         expires_at=expiry.strftime("%Y-%m-%dT%H:%M:%SZ"))
    tokens.expired_day = expiry.strftime("%Y-%m-%d")
    time.sleep(max(0.0, expiry.timestamp() - time.time()) + 0.1)
    return tokens


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unique_ns(prefix: str = "auth") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def get(server, namespace, authorization=None, method="GET", what="metadata", body=None,
        extra=None):
    headers = dict(extra or {})
    if authorization is not None:
        headers["Authorization"] = authorization
    path = object_path(namespace, "structured/x/y.json") if what == "object" else \
        ns_path(namespace, what)
    if method == "PUT" and what == "blob":
        headers.setdefault("X-OxideTerm-Revision", "r")
    if method == "PUT" and body is None:
        body = b'{"revision": "r"}'
    return server.request(method, path, body, headers)


# -- 401: who are you? -------------------------------------------------------------------

UNAUTHENTICATED = [
    ("missing", lambda t: None, ("Authorization",)),
    ("empty", lambda t: "", ("Authorization",)),
    ("bearer-without-token", lambda t: "Bearer", ("Bearer",)),
    ("bearer-blank", lambda t: "Bearer    ", ("Bearer",)),
    ("other-scheme", lambda t: "Token abc", ("Bearer",)),
    ("raw-token", lambda t: t.rw, ()),
    ("basic-bad-base64", lambda t: "Basic !!!not*base64", ("Basic",)),
    ("basic-not-utf8", lambda t: "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), ()),
    ("basic-empty-password", lambda t: "Basic " + b64("user:"), ()),
    ("unknown", lambda t: "Bearer oxs_" + "A" * 43, ("unknown token",)),
    ("truncated", lambda t: "Bearer " + t.rw[:-1], ("unknown token",)),
    ("disabled", lambda t: "Bearer " + t.disabled, ("disabled", "administrator")),
    ("expired", lambda t: "Bearer " + t.expired, ("expired", "administrator")),
]


@pytest.mark.parametrize("method", ["GET", "PUT"])
@pytest.mark.parametrize("case, header, fragments", UNAUTHENTICATED,
                         ids=[case[0] for case in UNAUTHENTICATED])
def test_missing_or_bad_credentials_get_401_and_store_nothing(shared, case, header, fragments,
                                                               method):
    namespace = unique_ns()
    answer = get(shared, namespace, header(shared.tokens), method=method)
    assert_json_error(answer, 401, *fragments)
    if case == "expired":  # the message names the day it expired
        assert shared.tokens.expired_day in answer.json["error"]["message"], answer
    if method == "PUT":
        check = get(shared, namespace, "Bearer " + shared.tokens.rw)
        assert check.json == {"exists": False, "contentLength": 0}


ACCEPTED = [
    ("bearer", lambda t: "Bearer " + t.rw),
    ("bearer-lowercase-scheme", lambda t: "bearer " + t.rw),
    ("bearer-extra-spaces", lambda t: "Bearer    " + t.rw + "  "),
    ("basic-user-token", lambda t: "Basic " + b64("oxideterm:" + t.rw)),
    ("basic-empty-user", lambda t: "Basic " + b64(":" + t.rw)),
    ("basic-token-only", lambda t: "Basic " + b64(t.rw)),
]


@pytest.mark.parametrize("case, header", ACCEPTED, ids=[case[0] for case in ACCEPTED])
def test_bearer_and_basic_forms_of_a_valid_token_are_accepted(shared, case, header):
    namespace = unique_ns()
    put = get(shared, namespace, header(shared.tokens), method="PUT",
              body=json.dumps({"revision": case}).encode())
    assert put.status == 200, put
    answer = get(shared, namespace, header(shared.tokens))
    assert answer.status == 200, answer
    assert answer.json["revision"] == case


# -- 403: namespace patterns and permissions ------------------------------------------------

PATTERNS = [
    ("rw", "team/default", True), ("rw", "teamx/a", True), ("rw", "ä/ö", True),
    ("exact", "team/default", True), ("exact", "team/other", False),
    ("exact", "team", False), ("exact", "team/default/sub", False),
    ("exact", "team/defaultx", False),
    ("team", "team/default", True), ("team", "team/other", True), ("team", "team/a/b", True),
    ("team", "teamx/a", False), ("team", "team", False), ("team", "other/team/x", False),
]


@pytest.mark.parametrize("which, namespace, allowed", PATTERNS,
                         ids=[f"{p[0]}-{p[1]}" for p in PATTERNS])
def test_a_token_reaches_only_namespaces_its_pattern_matches(shared, which, namespace,
                                                              allowed):
    token = getattr(shared.tokens, which)
    answer = get(shared, namespace, "Bearer " + token)
    if allowed:
        assert answer.status == 200, answer
    else:
        assert_json_error(answer, 403, namespace)
        pattern = {"exact": "team/default", "team": "team/*"}[which]
        assert pattern in answer.json["error"]["message"]
        put = get(shared, namespace, "Bearer " + token, method="PUT", what="object", body=b"x")
        assert_json_error(put, 403)
        assert shared.request("GET", object_path(namespace, "structured/x/y.json"),
                              token=shared.tokens.rw).status == 404


PERMISSIONS = [
    ("read", "GET", "metadata", 200), ("read", "GET", "blob", 404),
    ("read", "GET", "object", 404), ("read", "HEAD", "metadata", 200),
    ("read", "PUT", "metadata", 403), ("read", "PUT", "blob", 403),
    ("read", "PUT", "object", 403),
    ("write", "GET", "metadata", 403), ("write", "GET", "blob", 403),
    ("write", "GET", "object", 403), ("write", "HEAD", "metadata", 403),
    ("write", "PUT", "metadata", 200), ("write", "PUT", "blob", 200),
    ("write", "PUT", "object", 201),
]


@pytest.mark.parametrize("which, method, what, status", PERMISSIONS,
                         ids=["-".join(map(str, p)) for p in PERMISSIONS])
def test_read_and_write_permissions_allow_only_their_methods(shared, which, method, what,
                                                              status):
    namespace = unique_ns()
    answer = get(shared, namespace, "Bearer " + getattr(shared.tokens, which), method=method,
                 what=what)
    assert answer.status == status, answer
    if status == 403:
        if method != "HEAD":
            missing = "write" if method == "PUT" else "read"
            assert_json_error(answer, 403, missing)
        if method == "PUT":
            assert get(shared, namespace, "Bearer " + shared.tokens.rw).json == \
                {"exists": False, "contentLength": 0}


# -- live changes by the CLI while the server runs -----------------------------------------

def test_disable_enable_delete_take_effect_at_once(shared):
    token = shared.create_token(name="toggle")
    token_id = shared.token_id("toggle")
    namespace = unique_ns()
    assert get(shared, namespace, "Bearer " + token).status == 200
    shared.cli("token", "disable", token_id)
    assert_json_error(get(shared, namespace, "Bearer " + token), 401, "disabled")
    shared.cli("token", "enable", token_id)
    assert get(shared, namespace, "Bearer " + token).status == 200
    shared.cli("token", "delete", token_id)
    assert_json_error(get(shared, namespace, "Bearer " + token), 401, "unknown")


def test_a_change_by_any_process_is_seen_by_the_next_request(shared):
    """The server keeps token lookups between requests until the database changes; a
    change made by another program (here plain sqlite3, not oxsync) must count at once."""
    token = shared.create_token(name="edited-elsewhere")
    token_id = shared.token_id("edited-elsewhere")
    namespace = unique_ns()
    assert get(shared, namespace, "Bearer " + token, method="PUT").status == 200

    def edit(sql, *params):
        assert db_change(shared, sql, params) == 1, sql

    for _ in range(3):  # each time from a cache filled by the request before
        assert get(shared, namespace, "Bearer " + token).status == 200
        edit("UPDATE tokens SET enabled = 0 WHERE id = ?", token_id)
        assert_json_error(get(shared, namespace, "Bearer " + token), 401, "disabled")
        edit("UPDATE tokens SET enabled = 1 WHERE id = ?", token_id)
        assert get(shared, namespace, "Bearer " + token).status == 200
        edit("UPDATE namespaces SET deleted_at = 1 WHERE name = ?", namespace)
        assert_json_error(get(shared, namespace, "Bearer " + token), 410)
        edit("UPDATE namespaces SET deleted_at = NULL WHERE name = ?", namespace)
    edit("UPDATE namespaces SET metadata = ? WHERE name = ?",
         '{"exists":true,"revision":"from-elsewhere"}', namespace)
    assert get(shared, namespace, "Bearer " + token).json["revision"] == "from-elsewhere"


def test_token_expires_while_in_use(shared):
    """Expiry is checked on every request, not when the token is first seen."""
    expiry = datetime.fromtimestamp(int(time.time()) + 4, timezone.utc)
    token = shared.create_token(name="short-lived",
                                expires_at=expiry.strftime("%Y-%m-%dT%H:%M:%SZ"))
    namespace = unique_ns()
    if time.time() < expiry.timestamp() - 0.5:  # a very loaded machine may already be late
        assert get(shared, namespace, "Bearer " + token).status == 200
    time.sleep(max(0.0, expiry.timestamp() - time.time()) + 0.2)
    assert_json_error(get(shared, namespace, "Bearer " + token), 401, "expired",
                      expiry.strftime("%Y-%m-%d"))


def test_rotation_replaces_the_secret_and_keeps_id_and_scope(shared):
    old = shared.create_token(name="rotating", namespace="rot/*")
    token_id = shared.token_id("rotating")
    namespace = unique_ns("rot")
    assert get(shared, namespace, "Bearer " + old).status == 200
    result = shared.cli("token", "rotate", token_id)
    new = result.stdout.strip()
    assert result.stdout.count("\n") == 1 and new.startswith("oxs_") and new != old
    assert_json_error(get(shared, namespace, "Bearer " + old), 401, "unknown")
    assert get(shared, namespace, "Bearer " + new).status == 200
    # same token: same id, pattern and permissions
    assert shared.token_id("rotating") == token_id
    assert_json_error(get(shared, "elsewhere", "Bearer " + new), 403, "rot/*")


# -- order of checks on a soft-deleted namespace -----------------------------------------

def test_check_order_on_a_deleted_namespace(shared):
    tokens = shared.tokens
    namespace = "team/" + uuid.uuid4().hex[:8]
    wrong = shared.create_token(name="wrong-pattern", namespace="other/*")
    assert get(shared, namespace, "Bearer " + tokens.rw, method="PUT",
               body=b'{"revision": "kept"}').status == 200
    assert get(shared, namespace, "Bearer " + tokens.rw, method="PUT", what="object",
               body=b"object bytes").status == 201
    shared.cli("namespace", "delete", namespace)

    for method in ("GET", "PUT"):
        assert_json_error(get(shared, namespace, None, method=method), 401)
        assert_json_error(get(shared, namespace, "Bearer oxs_" + "B" * 43, method=method),
                          401, "unknown")
        assert_json_error(get(shared, namespace, "Bearer " + tokens.disabled, method=method),
                          401, "disabled")
        assert_json_error(get(shared, namespace, "Bearer " + wrong, method=method), 403,
                          "other/*")
    # the namespace's state comes before the permission
    for token, method in ((tokens.read, "PUT"), (tokens.write, "GET"), (tokens.rw, "GET"),
                          (tokens.rw, "PUT"), (tokens.team, "GET")):
        for what in ("metadata", "blob", "object"):
            answer = get(shared, namespace, "Bearer " + token, method=method, what=what)
            assert_json_error(answer, 410, "deleted", "restore")

    shared.cli("namespace", "restore", namespace)
    answer = get(shared, namespace, "Bearer " + tokens.rw)
    assert answer.status == 200 and answer.json["revision"] == "kept"
    got = shared.request("GET", object_path(namespace, "structured/x/y.json"), token=tokens.rw)
    assert got.status == 200 and got.body == b"object bytes"


# -- usage counters ----------------------------------------------------------------------------

def token_view(server, name):
    return next(t for t in json.loads(server.cli("token", "list", "--json").stdout)
                if t["name"] == name)


def test_token_use_count_namespace_ip_and_client_version_are_recorded(shared):
    token = shared.create_token(name="usage")
    long_token = shared.create_token(name="usage-long")
    first, last = unique_ns("usage"), unique_ns("usage")
    started = time.time()
    version = {"X-OxideTerm-Client-Version": "  OxideTerm/1.4.2 (macOS 15)  "}
    assert get(shared, first, "Bearer " + token, extra=version).status == 200
    assert get(shared, first, "Bearer " + token, method="PUT", what="object", body=b"x",
               extra=version).status == 201
    assert get(shared, last, "Bearer " + token, extra=version).status == 200
    assert get(shared, "nope", "Bearer " + shared.tokens.exact).status == 403
    long_version = "OxideTerm/" + "9" * 300
    assert get(shared, first, "Bearer " + long_token,
               extra={"X-OxideTerm-Client-Version": long_version}).status == 200

    deadline = time.monotonic() + 12
    view = token_view(shared, "usage")
    while view["useCount"] < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
        view = token_view(shared, "usage")
    assert view["useCount"] == 3, view
    assert view["lastNamespace"] == last
    assert view["lastIp"] == "127.0.0.1"
    assert view["lastClientVersion"] == "OxideTerm/1.4.2 (macOS 15)"
    used = datetime.fromisoformat(view["lastUsedAt"].replace("Z", "+00:00")).timestamp()
    assert started - 2 <= used <= time.time() + 2

    long_view = token_view(shared, "usage-long")
    assert long_view["useCount"] == 1
    stored = long_view["lastClientVersion"]
    assert stored and len(stored) <= 128 and long_version.startswith(stored), stored

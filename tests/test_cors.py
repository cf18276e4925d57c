"""CORS on the sync API, none on the admin API (PROTOCOL.md 6)."""

from __future__ import annotations

import contextlib
import json

import pytest
from conftest import ns_path, object_path, running_server

NS = "team/default"
ALLOWED = "https://a.example"
REQUIRED_HEADERS = {"authorization", "content-type", "if-match", "if-none-match",
                    "x-oxideterm-revision", "x-oxideterm-device-id",
                    "x-oxideterm-section-revisions"}


def tokens_of(value: str | None) -> set[str]:
    return {part.strip().lower() for part in (value or "").split(",") if part.strip()}


@contextlib.contextmanager
def cors_server(directory, store_kind, env=None):
    """A module's server with a read/write token (server.token) and a read-only one."""
    with running_server(directory, env, store_kind=store_kind) as server:
        server.read_token = server.create_token(name="cors-read", permissions="read")
        yield server


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, store_kind):
    with cors_server(tmp_path_factory.mktemp("cors-open"), store_kind) as server:
        yield server


@pytest.fixture(scope="module")
def narrow_server(tmp_path_factory, store_kind):
    with cors_server(tmp_path_factory.mktemp("cors-narrow"), store_kind,
                     {"SYNC_CORS_ALLOWED_ORIGINS": f"{ALLOWED}, https://b.example:8443"}) \
            as server:
        yield server


def cors_headers(answer) -> dict[str, str]:
    return {name.lower(): value for name, value in answer.headers.items()
            if name.lower().startswith("access-control-")}


# -- preflight ---------------------------------------------------------------------------

PREFLIGHT_PATHS = [ns_path(NS, "metadata"), ns_path(NS, "blob"),
                   object_path(NS, "structured/settings/app/general/ab cd:ü.oxide"),
                   ns_path("never/seen", "metadata")]


@pytest.mark.parametrize("path", PREFLIGHT_PATHS)
def test_preflight_is_answered_204_without_a_token(open_server, path):
    answer = open_server.request("OPTIONS", path, headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "authorization,content-type,if-match,"
                                          "x-oxideterm-revision"})
    assert answer.status == 204, answer   # no Authorization: browsers send none here
    assert answer.body == b""
    assert {"GET", "PUT", "OPTIONS"} <= {m.upper() for m in
                                         tokens_of(answer.headers["Access-Control-Allow-Methods"])}
    allowed = tokens_of(answer.headers["Access-Control-Allow-Headers"])
    assert REQUIRED_HEADERS <= allowed or "*" in allowed, allowed
    assert answer.headers["Access-Control-Allow-Origin"] in ("*", "https://app.example")


def test_preflight_from_an_origin_not_allowed_gets_no_allow_origin(narrow_server):
    path = ns_path(NS, "blob")
    ok = narrow_server.request("OPTIONS", path, headers={
        "Origin": ALLOWED, "Access-Control-Request-Method": "PUT"})
    assert ok.status == 204
    assert ok.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "origin" in tokens_of(ok.headers.get("Vary"))
    other = narrow_server.request("OPTIONS", path, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"})
    assert "Access-Control-Allow-Origin" not in other.headers


# -- ETag exposed on sync answers, errors included -------------------------------------------

def make_requests(server):
    """(name, answer) for a spread of sync answers, successes and errors."""
    token, origin = server.token, {"Origin": "https://app.example"}
    created = server.request("PUT", object_path(NS, "a/b.json"), b"{}", origin, token=token)
    put_meta = server.request("PUT", ns_path(NS, "metadata"), b'{"revision": "r"}', origin,
                              token=token)
    etag = put_meta.json["etag"]
    return [
        ("put-object-201", created, 201),
        ("put-metadata-200", put_meta, 200),
        ("get-metadata-200", server.request("GET", ns_path(NS, "metadata"), None, origin,
                                            token=token), 200),
        ("get-object-200", server.request("GET", object_path(NS, "a/b.json"), None, origin,
                                          token=token), 200),
        ("get-metadata-304", server.request("GET", ns_path(NS, "metadata"), None,
                                            {**origin, "If-None-Match": f'"{etag}"'},
                                            token=token), 304),
        ("blob-404", server.request("GET", ns_path(NS, "blob"), None, origin, token=token), 404),
        ("no-token-401", server.request("GET", ns_path(NS, "metadata"), None, origin), 401),
        ("read-only-403", server.request("PUT", ns_path(NS, "metadata"), b'{"revision": "x"}',
                                         origin, token=server.read_token), 403),
        ("conflict-412", server.request("PUT", ns_path(NS, "metadata"), b'{"revision": "x"}',
                                        {**origin, "If-Match": '"stale"'}, token=token), 412),
        ("bad-json-400", server.request("PUT", ns_path(NS, "metadata"), b"[]", origin,
                                        token=token), 400),
        ("method-405", server.request("DELETE", ns_path(NS, "metadata"), None, origin,
                                      token=token), 405),
    ]


@pytest.fixture(scope="module")
def sync_answers(open_server):
    return {name: (answer, status) for name, answer, status in make_requests(open_server)}


@pytest.mark.parametrize("name", ["put-object-201", "put-metadata-200", "get-metadata-200",
                                  "get-object-200", "get-metadata-304", "blob-404",
                                  "no-token-401", "read-only-403", "conflict-412",
                                  "bad-json-400", "method-405"])
def test_etag_is_exposed_on_every_sync_answer(sync_answers, name):
    answer, status = sync_answers[name]
    assert answer.status == status, answer
    assert "etag" in tokens_of(answer.headers.get("Access-Control-Expose-Headers")), \
        answer.headers
    assert answer.headers.get("Access-Control-Allow-Origin") in ("*", "https://app.example")


@pytest.mark.parametrize("path", ["/v1/namespaces/%2Fbad/metadata",
                                  "/v1/namespaces/team%2Fdefault/objects/a/../b"])
def test_etag_is_exposed_on_routing_errors(open_server, path):
    answer = open_server.request("GET", path, headers={"Origin": "https://app.example"},
                                 token=open_server.token)
    assert answer.status == 400, answer
    assert "etag" in tokens_of(answer.headers.get("Access-Control-Expose-Headers")), \
        answer.headers
    assert answer.headers.get("Access-Control-Allow-Origin") in ("*", "https://app.example")


# -- SYNC_CORS_ALLOWED_ORIGINS -------------------------------------------------------------

def test_an_allowed_origin_is_echoed_with_vary_origin(narrow_server):
    for origin in (ALLOWED, "https://b.example:8443"):
        answer = narrow_server.request("GET", ns_path(NS, "metadata"),
                                       headers={"Origin": origin}, token=narrow_server.token)
        assert answer.status == 200
        assert answer.headers["Access-Control-Allow-Origin"] == origin
        assert "origin" in tokens_of(answer.headers.get("Vary"))
        assert "etag" in tokens_of(answer.headers.get("Access-Control-Expose-Headers"))


@pytest.mark.parametrize("origin", ["https://evil.example", "http://a.example",
                                    "https://a.example.evil.com", "https://b.example", "null",
                                    None])
def test_other_origins_get_no_allow_origin(narrow_server, origin):
    headers = {"Origin": origin} if origin else {}
    answer = narrow_server.request("GET", ns_path(NS, "metadata"), headers=headers,
                                   token=narrow_server.token)
    assert answer.status == 200   # CORS is the browser's business: the answer is still given
    assert "Access-Control-Allow-Origin" not in answer.headers
    assert "*" not in (answer.headers.get("Access-Control-Allow-Origin") or "")


# -- the admin API never carries CORS headers ---------------------------------------------------

ADMIN_REQUESTS = [("GET", "/admin", None), ("GET", "/admin/", None),
                  ("POST", "/admin/api/login", {"password": "x"}),
                  ("OPTIONS", "/admin/api/login", None), ("GET", "/admin/api/me", None),
                  ("GET", "/admin/api/stats", None), ("GET", "/admin/api/tokens", None),
                  ("DELETE", "/admin/api/namespaces/team%2Fdefault", None),
                  ("GET", "/admin/api/conflicts", None)]


@pytest.mark.parametrize("which", ["open_server", "narrow_server"])
@pytest.mark.parametrize("method, path, body", ADMIN_REQUESTS,
                         ids=[f"{m}-{p}" for m, p, _ in ADMIN_REQUESTS])
def test_admin_never_sends_cors_headers(request, which, method, path, body):
    server = request.getfixturevalue(which)
    for origin in ("https://app.example", ALLOWED):
        answer = server.request(method, path, json.dumps(body).encode() if body else None,
                                {"Origin": origin, "Access-Control-Request-Method": "POST",
                                 "Content-Type": "application/json"})
        assert answer.status < 500, answer
        assert cors_headers(answer) == {}, (path, dict(answer.headers))

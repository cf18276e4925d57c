"""Bad requests get the contract's JSON error and store nothing (PROTOCOL.md 1, 3, 4, 10)."""

from __future__ import annotations

import sqlite3
import time
from urllib.parse import quote

import pytest
from _reliability import raw_connect, raw_request, read_answer, read_until_done
from conftest import assert_json_error, ns_path, object_path, running_server

NS = "team/default"
NS_RAW = "team%2Fdefault"
LIMIT = 1024 * 1024          # MAX_BLOB_SIZE and MAX_OBJECT_SIZE of the servers here
METADATA_LIMIT = 256 * 1024
GIB = 1024 ** 3
NOT_DATA = {"tokens"}  # usage counters change on every request


# -- helpers --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared(tmp_path_factory, store_kind):
    with running_server(tmp_path_factory.mktemp("bad-input"),
                        {"MAX_BLOB_SIZE": str(LIMIT), "MAX_OBJECT_SIZE": str(LIMIT)},
                        store_kind=store_kind) as server:
        yield server


@pytest.fixture
def fresh(make_server):
    server = make_server(env={"MAX_BLOB_SIZE": str(LIMIT), "MAX_OBJECT_SIZE": str(LIMIT)})
    server.token = server.create_token(name="bad-input")
    return server


def db_snapshot(server) -> dict:
    """Every table's rows (tokens aside: their usage counters change on every request)."""
    with sqlite3.connect(server.db_path, timeout=10) as db:
        tables = [row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {table: sorted(map(tuple, db.execute(f"SELECT * FROM {table}").fetchall()),
                              key=repr) for table in tables if table not in NOT_DATA}


def request_head(server, method: str, path: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}",
             f"Authorization: Bearer {server.token}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def still_serving(server) -> None:
    assert server.request("GET", "/health").status == 200
    answer = server.request("GET", ns_path("health/check", "metadata"), token=server.token)
    assert answer.status == 200 and answer.json == {"exists": False, "contentLength": 0}


# -- the table of bad requests ------------------------------------------------------

BAD_NAMESPACES = [
    "%ZZ", "%4", "a%4", "a%", "%C3%28", "%FF", "%C0%AF", "..", ".", "%2E%2E", "%2E",
    "team%2F..%2Fx", "team%2F.%2Fx", "team%2F%2Fx", "%2Fteam", "team%2F", "%2F",
    "%00", "a%0Ab", "a%0D", "a%09b", "a%7F", "a%1Fb", "a%C2%85b",
    "a*b", "a%2Ab", "a%20b", "a+b", "a~b", "a%3Ab", "a%40b", "a%5Cb", "%E2%98%83",
    "a" * 129, quote("é" * 129), "",
]

BAD_OBJECT_PATHS = [
    "%ZZ", "a/%4", "a/b%", "a/%C3%28", "a/%FF", "a/../b", "../b", "a/..", "a/./b", "./a",
    "a/.", "a/%2E%2E/b", "a/%2E", "a//b", "a%2F%2Fb", "a%2F", "%2Fa", "/a",
    "a/b%00", "a/b%0A", "a/b%0D", "a/b%09", "a/b%7F", "a/b%1B", "a/%C2%85", "a/%C2%9F",
    "x" * 1025, quote("é" * 1025), "a/", "structured/connections/x.json/", "a//", "//a",
]

VALID_MANIFEST = b'{"format": "structured-v2", "revision": "r1"}'


def deep(levels: int) -> bytes:
    """An object whose nesting is `levels` deep (the top-level object counts as one)."""
    return b'{"revision": "r", "x": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


BAD_METADATA = [
    ("not-json", b"not json"), ("empty", b""), ("whitespace", b"  \n"),
    ("array", b'[{"revision": "r"}]'), ("string", b'"revision"'), ("number", b"42"),
    ("null", b"null"), ("true", b"true"),
    ("no-revision", b'{"format": "structured-v2"}'), ("empty-revision", b'{"revision": ""}'),
    ("number-revision", b'{"revision": 5}'), ("null-revision", b'{"revision": null}'),
    ("list-revision", b'{"revision": ["a"]}'), ("object-revision", b'{"revision": {}}'),
    ("bool-revision", b'{"revision": true}'),
    ("duplicate-key", b'{"revision": "a", "revision": "b"}'),
    ("nested-duplicate-key", b'{"revision": "a", "sections": {"k": 1, "k": 2}}'),
    ("nan", b'{"revision": "r", "x": NaN}'), ("infinity", b'{"revision": "r", "x": Infinity}'),
    ("minus-infinity", b'{"revision": "r", "x": -Infinity}'),
    ("1e400", b'{"revision": "r", "x": 1e400}'), ("-1e400", b'{"revision": "r", "x": -1e400}'),
    ("deeper-than-100", deep(102)), ("far-too-deep", deep(100_000)),
    ("invalid-utf8", b'{"revision": "\xff"}'), ("overlong-utf8", b'{"revision": "\xc0\xaf"}'),
    ("utf16", '{"revision": "r"}'.encode("utf-16")),
    ("trailing-garbage", b'{"revision": "r"} x'),
    ("two-objects", b'{"revision": "r"}{"revision": "s"}'),
    ("lone-surrogate", b'{"revision": "r", "note": "\\ud800"}'),
    ("lone-low-surrogate", b'{"revision": "r", "sections": {"\\udc00": 1}}'),
    ("single-quotes", b"{'revision': 'r'}"), ("trailing-comma", b'{"revision": "r",}'),
]


def bad_cases():
    token_cases = []
    for raw in BAD_NAMESPACES:
        for method, rest, body in (("GET", "metadata", None), ("PUT", "metadata", VALID_MANIFEST),
                                   ("PUT", "objects/a.json", b"x"),
                                   ("GET", "objects/a.json", None)):
            token_cases.append(pytest.param(method, f"/v1/namespaces/{raw}/{rest}", body, {},
                                             400, "bad_request",
                                             id=f"ns-{raw[:20]}-{method}-{rest[:7]}"))
    for raw in BAD_OBJECT_PATHS:
        for method, body in (("PUT", b"x"), ("GET", None)):
            token_cases.append(pytest.param(method, f"/v1/namespaces/{NS_RAW}/objects/{raw}",
                                             body, {}, 400, "bad_request",
                                             id=f"path-{raw[:20]}-{method}"))
    for name, body in BAD_METADATA:
        token_cases.append(pytest.param("PUT", f"/v1/namespaces/{NS_RAW}/metadata", body,
                                         {"Content-Type": "application/json"}, 400,
                                         "bad_request", id=f"metadata-{name}"))
    token_cases.append(pytest.param(
        "PUT", f"/v1/namespaces/{NS_RAW}/metadata",
        b'{"revision": "r", "pad": "' + b"x" * METADATA_LIMIT + b'"}',
        {"Content-Type": "application/json"}, 413, "payload_too_large", id="metadata-too-large"))
    token_cases.append(pytest.param("PUT", f"/v1/namespaces/{NS_RAW}/blob", b"snapshot", {}, 400,
                                     "bad_request", id="blob-without-revision"))
    token_cases.append(pytest.param("PUT", f"/v1/namespaces/{NS_RAW}/blob", b"snapshot",
                                     {"X-OxideTerm-Revision": ""}, 400, "bad_request",
                                     id="blob-empty-revision"))
    token_cases.append(pytest.param("PUT", f"/v1/namespaces/{NS_RAW}/blob", b"x" * (LIMIT + 1),
                                     {"X-OxideTerm-Revision": "r"}, 413, "payload_too_large",
                                     id="blob-one-byte-too-large"))
    token_cases.append(pytest.param("PUT", f"/v1/namespaces/{NS_RAW}/objects/a.json",
                                     b"x" * (LIMIT + 1), {}, 413, "payload_too_large",
                                     id="object-one-byte-too-large"))
    for method in ("DELETE", "POST", "PATCH"):
        for rest in ("metadata", "blob", "objects/a/b.json"):
            token_cases.append(pytest.param(method, f"/v1/namespaces/{NS_RAW}/{rest}",
                                             b"{}" if method != "DELETE" else None, {}, 405,
                                             None, id=f"method-{method}-{rest[:7]}"))
    for method, path in (("POST", "/health"), ("PUT", "/ready"), ("DELETE", "/")):
        token_cases.append(pytest.param(method, path, b"" if method != "DELETE" else None,
                                         {}, 405, None, id=f"method-{method}-{path}"))
    for path in ("/nope", "/v1", "/v1/namespaces", f"/v1/namespaces/{NS_RAW}",
                 f"/v1/namespaces/{NS_RAW}/unknown", f"/v1/namespaces/{NS_RAW}/metadata/extra",
                 f"/v1/namespaces/{NS_RAW}/blob/extra", f"/v2/namespaces/{NS_RAW}/metadata",
                 "/v1/namespace/x/metadata"):
        for method in ("GET", "PUT"):
            token_cases.append(pytest.param(method, path, b"{}" if method == "PUT" else None,
                                             {}, 404, "not_found", id=f"unknown-{method}-{path}"))
    return token_cases


BAD_CASES = bad_cases()


def send(server, method, path, body, headers):
    return server.request(method, path, body, headers, token=server.token)


@pytest.mark.parametrize("method, path, body, headers, status, code", BAD_CASES)
@pytest.mark.sqlite_only   # compares the database file's rows
def test_a_malformed_request_gets_its_json_error_and_stores_nothing(shared, method, path, body, headers, status, code):
    before = db_snapshot(shared)
    answer = send(shared, method, path, body, headers)
    assert_json_error(answer, status, code=code)
    if status == 405:
        allowed = {m.strip() for m in answer.headers["Allow"].split(",")}
        assert "GET" in allowed and method not in allowed, allowed
        if path.startswith("/v1/"):
            assert "PUT" in allowed, allowed
    assert db_snapshot(shared) == before
    still_serving(shared)


@pytest.mark.sqlite_only   # compares the database file's rows
def test_a_barrage_of_bad_requests_stores_nothing(fresh):
    before = db_snapshot(fresh)
    connection = fresh.connect()
    try:
        for case in BAD_CASES:
            method, path, body, headers, status, _ = case.values
            answer = fresh.request(method, path, body, headers, token=fresh.token,
                                   connection=connection)
            assert answer.status == status, (case.id, answer)
    finally:
        connection.close()
    after = db_snapshot(fresh)
    assert after == before
    assert after["namespaces"] == after["blobs"] == after["objects"] == after["manifests"] == []
    assert after["conflicts"] == []
    # and the server is fine
    assert fresh.request("PUT", object_path(NS, "a/b.json"), b"ok", token=fresh.token).status \
        == 201
    assert fresh.request("GET", object_path(NS, "a/b.json"), token=fresh.token).body == b"ok"
    with sqlite3.connect(fresh.db_path) as db:
        assert db.execute("SELECT namespace, path FROM objects").fetchall() == [(NS, "a/b.json")]
        assert db.execute("SELECT name FROM namespaces").fetchall() == [(NS,)]


# -- limits that are still fine -----------------------------------------------------------

def test_limits_that_are_still_accepted(shared):
    ascii_ns, unicode_ns = "n" * 128, "é" * 128
    for namespace in (ascii_ns, unicode_ns, "Ünïcödé/日本語/ns_1-2.3"):
        answer = shared.request("PUT", ns_path(namespace, "metadata"), VALID_MANIFEST,
                                token=shared.token)
        assert answer.status == 200, (namespace, answer)
    for path in ("p" * 1024, "é" * 1024, "a/" * 511 + "zz", "...x/x.../.a/..b/~/%"):
        answer = shared.request("PUT", object_path(NS, path), b"fits", token=shared.token)
        assert answer.status == 201, (path[:40], answer)
        assert shared.request("GET", object_path(NS, path), token=shared.token).body == b"fits"
    exact = b'{"revision": "r", "pad": "' + b"x" * (METADATA_LIMIT - 28) + b'"}'
    assert len(exact) == METADATA_LIMIT
    assert shared.request("PUT", ns_path(NS, "metadata"), exact, token=shared.token).status \
        == 200
    assert shared.request("PUT", ns_path(NS, "metadata"), deep(50), token=shared.token).status \
        == 200
    blob = b"b" * LIMIT
    assert shared.request("PUT", ns_path(NS, "blob"), blob, {"X-OxideTerm-Revision": "r"},
                          token=shared.token).status == 200
    assert shared.request("PUT", object_path(NS, "full"), blob, token=shared.token).status == 201


# -- framing, with raw sockets -----------------------------------------------------------

@pytest.mark.parametrize("rest, extra", [
    ("blob", [("X-OxideTerm-Revision", "r")]), ("objects/structured/big.oxide", []),
    ("metadata", [("Content-Type", "application/json")])])
@pytest.mark.sqlite_only   # compares the database file's rows
def test_too_large_is_refused_before_the_body(shared, rest, extra):
    before = db_snapshot(shared)
    head = request_head(shared, "PUT", f"/v1/namespaces/{NS_RAW}/{rest}",
                        extra + [("Content-Length", str(GIB))])
    started = time.monotonic()
    answer = raw_request(shared.port, head, timeout=5)
    assert time.monotonic() - started < 3  # no body was sent: waiting for one would hang
    assert_json_error(answer, 413, code="payload_too_large")
    assert db_snapshot(shared) == before


@pytest.mark.parametrize("rest, extra", [("blob", [("X-OxideTerm-Revision", "r")]),
                                         ("objects/a.json", []), ("metadata", [])])
def test_too_large_beyond_the_disk_is_still_413(shared, rest, extra):
    head = request_head(shared, "PUT", f"/v1/namespaces/{NS_RAW}/{rest}",
                        extra + [("Content-Length", str(10 ** 17))])
    answer = raw_request(shared.port, head, timeout=3)
    assert_json_error(answer, 413, code="payload_too_large")


@pytest.mark.parametrize("value", ["-1", "abc", "1e3", " 12 x", "0x10", "+5", "1 2", "1.0",
                                   "９"])
@pytest.mark.sqlite_only   # compares the database file's rows
def test_a_malformed_content_length_is_400_and_stores_nothing(shared, value):
    before = db_snapshot(shared)
    head = request_head(shared, "PUT", f"/v1/namespaces/{NS_RAW}/objects/a.json",
                        [("Content-Length", value)])
    assert_json_error(raw_request(shared.port, head), 400, code="bad_request")
    assert db_snapshot(shared) == before


def test_two_different_content_lengths_are_400(shared):
    head = request_head(shared, "PUT", f"/v1/namespaces/{NS_RAW}/objects/a.json",
                        [("Content-Length", "1"), ("Content-Length", "2")])
    assert_json_error(raw_request(shared.port, head + b"xy"), 400, code="bad_request")


@pytest.mark.sqlite_only   # compares the database file's rows
def test_put_without_length_is_411(shared):
    before = db_snapshot(shared)
    for rest in ("objects/a.json", "metadata", "blob"):
        head = request_head(shared, "PUT", f"/v1/namespaces/{NS_RAW}/{rest}",
                            [("X-OxideTerm-Revision", "r")])
        assert_json_error(raw_request(shared.port, head), 411)
    assert db_snapshot(shared) == before


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


def test_chunked_uploads_of_each_kind_are_stored_whole(shared):
    namespace = "chunked/ok"
    raw_ns = quote(namespace, safe="")
    cases = [("objects/structured/a.json", [], b'{"a": 1}', 201),
             ("blob", [("X-OxideTerm-Revision", "r-chunked")], b"snap" * 3000, 200),
             ("metadata", [("Content-Type", "application/json")],
              b'{"format": "structured-v2", "revision": "m-chunked"}', 200)]
    for rest, extra, payload, status in cases:
        head = request_head(shared, "PUT", f"/v1/namespaces/{raw_ns}/{rest}",
                            extra + [("Transfer-Encoding", "chunked")])
        answer = raw_request(shared.port, head + chunked(payload[:5], payload[5:7], payload[7:]))
        assert answer.status == status, (rest, answer)
    assert shared.request("GET", object_path(namespace, "structured/a.json"),
                          token=shared.token).body == b'{"a": 1}'
    assert shared.request("GET", ns_path(namespace, "blob"), token=shared.token).body == \
        b"snap" * 3000
    metadata = shared.request("GET", ns_path(namespace, "metadata"), token=shared.token).json
    assert metadata["revision"] == "m-chunked" and metadata["contentLength"] == 12000


@pytest.mark.parametrize("body", [b"zz\r\nab\r\n0\r\n\r\n", b"-1\r\nab\r\n0\r\n\r\n",
                                  b"\r\n\r\n", b"2\r\nabcdef\r\n0\r\n\r\n",
                                  b"1" * 20 + b"\r\nab\r\n0\r\n\r\n"],
                         ids=["letters", "negative", "empty", "data-longer-than-size",
                              "huge-size"])
@pytest.mark.sqlite_only   # compares the database file's rows
def test_a_malformed_chunked_body_is_400_and_stores_nothing(shared, body):
    before = db_snapshot(shared)
    head = request_head(shared, "PUT", f"/v1/namespaces/{NS_RAW}/objects/a.json",
                        [("Transfer-Encoding", "chunked")])
    assert_json_error(raw_request(shared.port, head + body), 400, code="bad_request")
    assert db_snapshot(shared) == before


@pytest.mark.sqlite_only   # compares the database file's rows
def test_chunked_body_over_the_limit(shared):
    before = db_snapshot(shared)
    head = request_head(shared, "PUT", f"/v1/namespaces/{NS_RAW}/objects/a.json",
                        [("Transfer-Encoding", "chunked")])
    body = chunked(*([b"x" * 65536] * (LIMIT // 65536)), b"y")
    answer = raw_request(shared.port, head + body)
    assert_json_error(answer, 413, code="payload_too_large")
    assert db_snapshot(shared) == before


@pytest.mark.sqlite_only   # compares the database file's rows
def test_content_length_and_transfer_encoding(shared):
    before = db_snapshot(shared)
    head = request_head(shared, "PUT", f"/v1/namespaces/{NS_RAW}/objects/a.json",
                        [("Content-Length", "5"), ("Transfer-Encoding", "chunked")])
    assert_json_error(raw_request(shared.port, head + chunked(b"hello")), 400, code="bad_request")
    assert db_snapshot(shared) == before


@pytest.mark.sqlite_only   # compares the database file's rows
def test_expect_100_continue_gets_100_before_the_body_is_sent(shared):
    """A client that waits for 100 Continue gets it, or the refusal before sending its body."""
    path = f"/v1/namespaces/{NS_RAW}/objects/expect/a.json"
    head = request_head(shared, "PUT", path, [("Content-Length", "5"),
                                              ("Expect", "100-continue")])
    with raw_connect(shared.port) as sock:
        sock.sendall(head)
        interim = read_until_done(sock, expect=1, interim=True)
        assert [a.status for a in interim.answers] == [100], interim
        sock.sendall(b"hello")
        answer = read_answer(sock)
        assert answer.status == 201, answer
    assert shared.request("GET", object_path(NS, "expect/a.json"), token=shared.token).body \
        == b"hello"

    before = db_snapshot(shared)
    head = request_head(shared, "PUT", path, [("Content-Length", str(GIB)),
                                              ("Expect", "100-continue")])
    answer = raw_request(shared.port, head)
    assert_json_error(answer, 413, code="payload_too_large")
    assert db_snapshot(shared) == before


@pytest.mark.parametrize("name", ["X-OxideTerm-Revision", "X-OxideTerm-Device-Id"])
@pytest.mark.sqlite_only   # compares the database file's rows
def test_a_header_that_is_not_utf8_is_400_naming_it(shared, name):
    before = db_snapshot(shared)
    fields = {"X-OxideTerm-Revision": b"r", "Content-Length": b"4", name: b"\xff\xfe"}
    head = request_head(shared, "PUT", f"/v1/namespaces/{NS_RAW}/blob", [])[:-2] + \
        b"".join(b"%s: %s\r\n" % (key.encode(), value) for key, value in fields.items()) + \
        b"\r\n"
    answer = raw_request(shared.port, head + b"blob")
    assert_json_error(answer, 400, code="bad_request")
    assert name in answer.json["error"]["message"]
    assert db_snapshot(shared) == before


MALFORMED_HTTP = [
    ("header-line-over-64k", b"GET /v1/namespaces/x/metadata HTTP/1.1\r\nHost: x\r\nX-Big: "
     + b"a" * 70_000 + b"\r\n\r\n", 431),
    ("too-many-headers", b"GET /v1/namespaces/x/metadata HTTP/1.1\r\n"
     + b"".join(b"X-H%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431),
    ("request-line-over-8k", b"GET /v1/namespaces/" + b"a" * 9000 + b"/metadata HTTP/1.1\r\n"
     b"Host: x\r\n\r\n", 414),
    ("http-2.0", b"GET /v1/namespaces/x/metadata HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ("garbage", b"GARBAGE\r\n\r\n", 400),
    ("space-in-header-name", b"GET /v1/namespaces/x/metadata HTTP/1.1\r\nHost: x\r\n"
     b"Bad Header: x\r\n\r\n", 400),
    ("bare-cr-in-header", b"GET /v1/namespaces/x/metadata HTTP/1.1\r\nHost: x\r\n"
     b"X-A: a\rAuthorization: Bearer x\r\n\r\n", 400),
]


@pytest.mark.parametrize("data, status", [case[1:] for case in MALFORMED_HTTP],
                         ids=[case[0] for case in MALFORMED_HTTP])
def test_malformed_http_gets_a_json_error(shared, data, status):
    answer = raw_request(shared.port, data)
    assert_json_error(answer, status)
    still_serving(shared)

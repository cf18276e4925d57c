"""The admin API (PROTOCOL.md section 8, issue 3) over real HTTP against real oxsync processes.

Sessions are HS256 JWTs in an HttpOnly cookie plus a CSRF token echoed in `X-CSRF-Token`;
`AdminClient` below is what the admin page does. Most tests share one server per module
(`shared`, distinct user, token and namespace names per test); tests that need their own
configuration (throttling, restarts, stats on a fresh database) start their own.

Every secret a test handles (passwords, session cookies, CSRF tokens, sync token secrets) is
registered on its server, and the server's log is checked for none of them when it stops.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import shutil
import statistics
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import quote

import conftest
import pytest
from conftest import (TEST_KEY, admin_ns, assert_json_error, cookies_of, db_rows, ns_path,
                      object_path, run_workers, running_server)

BOTH_STORES = True  # every test here runs on SQLite and on PostgreSQL (conftest)

PASSWORD = "adm1n-Passw0rd-for-tests"
JWT_SECRET = "oxsync-admin-api-tests-jwt-secret-0123456789"  # >= 32 characters
ADMIN_ENV = {"ADMIN_PASSWORD": PASSWORD, "ADMIN_JWT_SECRET": JWT_SECRET}
THROTTLE_ENV = {"MAX_LOGIN_FAILURES": "3", "LOGIN_WINDOW_SECONDS": "60",
                "LOGIN_LOCKOUT_SECONDS": "2"}
DEFAULT_TTL = 86400
SNAPSHOT_TYPE = "application/vnd.oxideterm.oxide"
LOGIN = "/admin/api/login"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def new_password() -> str:
    return f"pw-{uuid.uuid4().hex}"


def when(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class AdminClient(conftest.AdminClient):
    """conftest's admin page session (password PASSWORD unless given), with shortcuts."""

    def login(self, password: str = PASSWORD, *args, **kwargs):
        return super().login(password, *args, **kwargs)

    # -- shortcuts that must succeed ------------------------------------------------

    def create_user(self, username: str | None = None, password: str | None = None):
        username, password = username or unique("user"), password or new_password()
        self.server.remember(password)
        answer = self.post("/admin/api/users", {"username": username, "password": password})
        assert answer.status == 201, answer
        return username, password

    def create_token(self, pattern: str = "*", permissions=("read", "write"), **extra):
        answer = self.post("/admin/api/tokens", {"name": unique("token"),
                                                 "namespacePattern": pattern,
                                                 "permissions": list(permissions), **extra})
        assert answer.status == 201, answer
        self.server.remember(answer.json["secret"])
        return answer.json["token"]["id"], answer.json["secret"]

    def create_namespace(self, name: str | None = None) -> str:
        name = name or unique("ns")
        answer = self.post("/admin/api/namespaces", {"name": name})
        assert answer.status == 201, answer
        return name

    def namespace(self, name: str) -> dict | None:
        answer = self.get(f"/admin/api/namespaces?q={quote(name, safe='')}&limit=500")
        assert answer.status == 200, answer
        return next((n for n in answer.json["namespaces"] if n["name"] == name), None)

    def token(self, token_id: str) -> dict | None:
        answer = self.get(f"/admin/api/tokens?q={token_id}&limit=500")
        assert answer.status == 200, answer
        return next((t for t in answer.json["tokens"] if t["id"] == token_id), None)

    def users(self) -> dict[str, dict]:
        answer = self.get("/admin/api/users")
        assert answer.status == 200, answer
        return {u["username"]: u for u in answer.json["users"]}


def me(server, session: str):
    return server.request("GET", "/admin/api/me", headers={"Cookie": f"oxsync_session={session}"})


# -- the sync API, as a device calls it --------------------------------------------------

def put_blob(server, namespace, secret, data: bytes, revision="r1", device="laptop-1",
             headers=None):
    return server.request("PUT", ns_path(namespace, "blob"), data, {
        "X-OxideTerm-Revision": revision, "X-OxideTerm-Device-Id": device,
        "Content-Type": SNAPSHOT_TYPE, **(headers or {})}, token=secret)


def get_blob(server, namespace, secret):
    return server.request("GET", ns_path(namespace, "blob"), token=secret)


def get_metadata(server, namespace, secret):
    return server.request("GET", ns_path(namespace, "metadata"), token=secret)


def put_metadata(server, namespace, secret, manifest: dict):
    return server.request("PUT", ns_path(namespace, "metadata"), manifest, token=secret)


def put_object(server, namespace, secret, path, data: bytes):
    return server.request("PUT", object_path(namespace, path), data,
                          {"Content-Type": "application/json"}, token=secret)


def fill_namespace(server, namespace, secret) -> dict:
    """Real sync traffic: two objects, a snapshot, a manifest -> the sizes written."""
    objects = {"structured/connections/fnv1a-01.json": b'{"connections": [1, 2, 3]}',
               "structured/settings/app/general/fnv1a-02.oxide": b"sealed settings " * 7}
    for path, data in objects.items():
        assert put_object(server, namespace, secret, path, data).status in (200, 201)
    blob = b"snapshot bytes of " + namespace.encode() + b" " + b"x" * 321
    assert put_blob(server, namespace, secret, blob, revision="blob-rev-1").status == 200
    manifest = {"format": "structured-v2", "revision": "manifest-rev-7", "deviceId": "desk-2",
                "sections": {"connections": {"revision": "fnv1a-01",
                                             "path": "structured/connections/fnv1a-01.json",
                                             "contentType": "application/json"}}}
    assert put_metadata(server, namespace, secret, manifest).status == 200
    return {"blob": blob, "blobBytes": len(blob), "objectCount": len(objects),
            "objectBytes": sum(len(d) for d in objects.values()), "objects": objects}


# -- JWTs built by hand -------------------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims_of(session: str) -> dict:
    return json.loads(b64url_decode(session.split(".")[1]))


def forge(claims: dict, secret: str = JWT_SECRET, header: dict | None = None,
          digest=hashlib.sha256) -> str:
    header = header if header is not None else {"alg": "HS256", "typ": "JWT"}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), signing_input.encode(), digest).digest()
    return signing_input + "." + b64url(signature)


def fresh(claims: dict, **changes) -> dict:
    now = int(time.time())
    return {**claims, "iat": now, "exp": now + 3600, **changes}


# -- servers --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared(tmp_path_factory, store_kind):
    """Default settings, except: failed logins never lock 127.0.0.1 out, tokens get a TTL."""
    with running_server(tmp_path_factory.mktemp("admin-api"), {
            **ADMIN_ENV, "MAX_LOGIN_FAILURES": "100000",
            "DEFAULT_TOKEN_TTL_SECONDS": str(DEFAULT_TTL)}, token=False,
            store_kind=store_kind) as server:
        server.remember(PASSWORD, JWT_SECRET)
        yield server


@pytest.fixture(scope="module")
def admin(shared) -> AdminClient:
    """The bootstrap admin, logged in. No test changes its password or disables it."""
    client = AdminClient(shared)
    client.login()
    return client


@pytest.fixture(scope="module")
def proxied(tmp_path_factory, store_kind):
    """Behind a trusted proxy, with short throttling windows; tests use distinct addresses."""
    with running_server(tmp_path_factory.mktemp("admin-proxied"), {
            **ADMIN_ENV, **THROTTLE_ENV, "TRUST_PROXY_HEADERS": "true"}, token=False,
            store_kind=store_kind) as server:
        server.remember(PASSWORD, JWT_SECRET)
        yield server


def address() -> str:
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"


# =========================================================================================
# Bootstrap
# =========================================================================================

def test_admin_password_creates_the_admin_user_who_can_log_in(make_server):
    server = make_server(env=ADMIN_ENV)
    server.remember(PASSWORD)
    client = AdminClient(server)
    answer = client.login()  # no username: ADMIN_USERNAME's default, "admin"
    assert answer.json["username"] == "admin"
    assert me(server, client.session).json["username"] == "admin"
    assert server.request("GET", "/admin").status == 200
    rows = db_rows(server, "SELECT username, enabled FROM admin_users")
    assert rows == [{"username": "admin", "enabled": 1}]
    assert "admin user 'admin' created from ADMIN_PASSWORD" in server.log()
    server.assert_log_clean()


def test_admin_username_names_the_bootstrap_user(make_server):
    server = make_server(env={**ADMIN_ENV, "ADMIN_USERNAME": "ops"})
    assert AdminClient(server).login().json["username"] == "ops"  # the default username
    assert AdminClient(server).login(username="ops").json["username"] == "ops"
    wrong = AdminClient(server).login(username="admin", expect=401)
    assert_json_error(wrong, 401, "wrong username or password")


def test_without_admin_user_the_page_is_off_until_set_password(make_server):
    server = make_server()  # the harness strips ADMIN_PASSWORD from the environment
    for path in ("/admin", "/admin/"):
        message = assert_json_error(server.request("GET", path), 404)
        assert "ADMIN_PASSWORD" in message and "oxsync admin set-password" in message, message
    assert_json_error(server.request("POST", LOGIN, {"password": PASSWORD}), 401)

    password = new_password()
    server.remember(password)
    result = server.cli("admin", "set-password", input=password + "\n")
    assert "created" in result.stderr, result.stderr

    page = server.request("GET", "/admin")
    assert page.status == 200, page
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["Cache-Control"] == "no-store"
    policy = {}
    for directive in page.headers["Content-Security-Policy"].split(";"):
        name, *sources = directive.split()
        policy[name] = sources
    assert policy["default-src"] == ["'none'"], policy
    scripts = re.findall(rb"<script>(.*?)</script>", page.body, re.DOTALL)
    assert scripts, "the page has no inline script to hash"
    assert sorted(policy["script-src"]) == sorted(
        f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in scripts)
    for name, sources in policy.items():  # no external origin, nowhere
        for source in sources:
            assert source in ("'none'", "'self'", "data:") or re.fullmatch(
                r"'sha256-[A-Za-z0-9+/=]+'", source), (name, source)
    assert not re.search(rb"""(src|href)\s*=\s*["']?(https?:)?//""", page.body)

    client = AdminClient(server)
    assert client.login(password).json["username"] == "admin"
    assert me(server, client.session).status == 200
    server.assert_log_clean()


def test_set_password_refuses_a_short_password(make_server):
    server = make_server()
    result = server.cli("admin", "set-password", input="short7!\n", check=False)
    assert result.returncode != 0 and "8 characters" in result.stderr, result
    assert_json_error(server.request("GET", "/admin"), 404)  # still off


def test_short_admin_password_stops_the_server_with_a_clear_message(make_server):
    server = make_server(env={**ADMIN_ENV, "ADMIN_PASSWORD": "seven77"}, start=False)
    server.start(wait=False)
    assert server.process.wait(15) == 2
    log = server.log()
    assert "ADMIN_PASSWORD" in log and "8 characters" in log, log
    assert "seven77" not in log


def test_restart_with_same_password_and_secret_keeps_the_session(make_server):
    server = make_server(env=ADMIN_ENV)
    client = AdminClient(server)
    client.login()
    server.restart()
    assert me(server, client.session).status == 200
    assert client.post("/admin/api/namespaces", {"name": unique("after-restart")}).status == 201
    # A different ADMIN_PASSWORD resets the user: sessions signed with the same secret end.
    server.env["ADMIN_PASSWORD"] = new_password()
    server.remember(server.env["ADMIN_PASSWORD"])
    server.restart()
    assert_json_error(me(server, client.session), 401, "log in")
    AdminClient(server).login(expect=401)
    AdminClient(server).login(server.env["ADMIN_PASSWORD"])
    server.assert_log_clean()


def test_restart_without_jwt_secret_ends_sessions_and_warns(make_server):
    server = make_server(env=ADMIN_ENV)
    client = AdminClient(server)
    client.login()
    assert "ADMIN_JWT_SECRET is not set" not in server.log()
    del server.env["ADMIN_JWT_SECRET"]
    server.restart()
    assert_json_error(me(server, client.session), 401, "log in again")
    log = server.log()
    assert re.search(r"WARNING .*ADMIN_JWT_SECRET is not set.*end when the server restarts",
                     log), log
    client.login()
    assert client.get("/admin/api/stats").json["jwtSecretPersistent"] is False
    server.restart()  # a new random secret per boot
    assert_json_error(me(server, client.session), 401, "log in again")


# =========================================================================================
# Passwords
# =========================================================================================

def test_passwords_are_stored_as_salted_scrypt(shared, admin):
    password = new_password()
    first, _ = admin.create_user(password=password)
    second, _ = admin.create_user(password=password)
    hashes = {row["username"]: row["password_hash"] for row in db_rows(
        shared, "SELECT username, password_hash FROM admin_users WHERE username IN (?, ?)",
        (first, second))}
    parts = {}
    for name, stored in hashes.items():
        assert password not in stored
        match = re.fullmatch(r"scrypt\$(\d+)\$(\d+)\$(\d+)\$([0-9a-f]{32})\$([0-9a-f]{64})",
                             stored)
        assert match, stored
        n, r, p, salt, digest = match.groups()
        assert int(n) >= 2 ** 14 and int(r) >= 8 and int(p) >= 1
        # really scrypt of this password under the stored parameters
        assert hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                              p=int(p), maxmem=128 * 1024 * 1024, dklen=32).hex() == digest
        parts[name] = (salt, digest)
    assert parts[first][0] != parts[second][0], "same password, same salt"
    assert parts[first][1] != parts[second][1]
    if shared.store_kind == "sqlite":  # the file itself (PostgreSQL's files are not ours)
        stored_bytes = b"".join(path.read_bytes()
                                for path in shared.db_path.parent.glob("sync.db*"))
        assert password.encode() not in stored_bytes and PASSWORD.encode() not in stored_bytes


def test_passwords_shorter_than_8_characters_are_refused(admin):
    name = unique("shortpw")
    assert_json_error(admin.post("/admin/api/users", {"username": name, "password": "seven77"}),
                      400, "8 characters")
    assert name not in admin.users()
    admin.create_user(name, "eight888")  # exactly 8 is enough
    assert_json_error(admin.patch(f"/admin/api/users/{name}", {"password": "seven77"}), 400,
                      "8 characters")
    AdminClient(admin.server).login("eight888", username=name)  # unchanged


# =========================================================================================
# Login and logout
# =========================================================================================

def test_login_answers_session_cookies_and_csrf_token(shared):
    before = time.time()
    answer = shared.request("POST", LOGIN, {"username": "admin", "password": PASSWORD})
    assert answer.status == 200, answer
    body = answer.json
    assert set(body) == {"username", "expiresAt", "csrfToken"}
    assert body["username"] == "admin"
    assert before + 86400 - 5 <= when(body["expiresAt"]) <= time.time() + 86400 + 5
    cookies = cookies_of(answer)
    assert set(cookies) == {"oxsync_session", "oxsync_csrf"}
    session, session_attrs = cookies["oxsync_session"]
    csrf, csrf_attrs = cookies["oxsync_csrf"]
    shared.remember(session, csrf)
    assert session_attrs == {"httponly": True, "samesite": "Strict", "path": "/admin",
                             "max-age": "86400"}
    assert csrf_attrs == {"samesite": "Strict", "path": "/admin", "max-age": "86400"}
    assert csrf == body["csrfToken"] and len(csrf) >= 32
    header = json.loads(b64url_decode(session.split(".")[0]))
    assert header["alg"] == "HS256"
    claims = claims_of(session)
    assert claims["sub"] == "admin" and claims["csrf"] == csrf and claims["path"] == "/admin"
    assert claims["exp"] - claims["iat"] == 86400 and {"ver"} <= set(claims)
    assert me(shared, session).json == body


def test_secure_cookies_only_when_the_request_is_known_to_be_https(shared, proxied):
    https = {"X-Forwarded-Proto": "https"}
    trusted = AdminClient(proxied, {"X-Forwarded-For": address()})
    for answer, secure in ((trusted.login(headers=https), True), (trusted.login(), False),
                           (AdminClient(shared).login(headers=https), False)):
        cookies = cookies_of(answer)
        for name in ("oxsync_session", "oxsync_csrf"):
            assert ("secure" in cookies[name][1]) is secure, (name, cookies[name], secure)


def test_base_path_sets_cookie_path_and_hostile_ones_are_dropped(shared):
    client = AdminClient(shared)
    answer = client.login(basePath="/sync")
    for _, attrs in cookies_of(answer).values():
        assert attrs["path"] == "/sync/admin"
    assert claims_of(client.session)["path"] == "/sync/admin"
    logout = client.post("/admin/api/logout")
    assert logout.status == 200 and logout.json == {"ok": True}
    for value, attrs in cookies_of(logout).values():
        assert value == "" and attrs["path"] == "/sync/admin" and attrs["max-age"] == "0"
    for hostile in ("/x; Domain=evil.example", "/a\r\nSet-Cookie: stolen=1", "javascript:1"):
        answer = AdminClient(shared).login(basePath=hostile)
        assert len(answer.headers.get_all("Set-Cookie")) == 2
        for _, attrs in cookies_of(answer).values():
            assert attrs["path"] == "/admin" and "domain" not in attrs, attrs
    assert_json_error(AdminClient(shared).login(basePath=5, expect=400), 400, "basePath")


def test_logout_clears_both_cookies(admin):
    client = AdminClient(admin.server)
    client.login()
    answer = client.post("/admin/api/logout")
    assert answer.status == 200 and answer.json == {"ok": True}
    cookies = cookies_of(answer)
    assert cookies["oxsync_session"] == ("", {"httponly": True, "samesite": "Strict",
                                              "path": "/admin", "max-age": "0"})
    assert cookies["oxsync_csrf"] == ("", {"samesite": "Strict", "path": "/admin",
                                           "max-age": "0"})
    assert_json_error(AdminClient(admin.server).post("/admin/api/logout"), 401, "log in")


def test_logout_ends_the_session_on_the_server(admin):
    """Clearing the cookies is not enough: a copied cookie must stop working at logout."""
    client = AdminClient(admin.server)
    client.login()
    session = client.session
    assert client.post("/admin/api/logout").status == 200
    assert_json_error(me(admin.server, session), 401)  # a copied cookie must not outlive logout


def test_wrong_password_and_unknown_user_get_the_same_answer_in_similar_time(shared):
    known = unique("timing")
    admin = AdminClient(shared)
    admin.login()
    admin.create_user(known)
    user = AdminClient(shared)
    wrong_times, unknown_times, bodies = [], [], set()
    for _ in range(5):
        for username, times in ((known, wrong_times), (unique("nobody"), unknown_times)):
            started = time.perf_counter()
            answer = user.login("wrong-password-123", username=username, expect=401)
            times.append(time.perf_counter() - started)
            assert_json_error(answer, 401, "wrong username or password")
            bodies.add(answer.body)
    assert len(bodies) == 1, bodies
    wrong, unknown = statistics.median(wrong_times), statistics.median(unknown_times)
    assert unknown <= 3 * wrong and wrong <= 3 * unknown, (wrong_times, unknown_times)
    assert min(unknown_times) > 0.01, "an unknown user must cost a scrypt too"


def test_disabled_user_cannot_log_in(admin):
    name, password = admin.create_user()
    session = AdminClient(admin.server)
    session.login(password, username=name)
    assert admin.patch(f"/admin/api/users/{name}", {"enabled": False}).status == 200
    refused = AdminClient(admin.server).login(password, username=name, expect=401)
    wrong = AdminClient(admin.server).login("wrong-password-123", username=name, expect=401)
    assert refused.body == wrong.body  # says nothing about the account's state
    assert_json_error(me(admin.server, session.session), 401, "log in again")
    assert admin.patch(f"/admin/api/users/{name}", {"enabled": True}).status == 200
    AdminClient(admin.server).login(password, username=name)


@pytest.mark.parametrize("body, words", [
    (b"{not json", ()), (b"", ()), (b"[1, 2]", ()), (b'"password"', ()),
    (b"{}", ("password",)), (b'{"password": 12345678}', ("password",)),
    (b'{"password": ["x"]}', ("password",)), (b'{"password": true}', ("password",)),
    (b'{"username": 7, "password": "whatever-1"}', ("username",)),
], ids=["not-json", "empty", "array", "string", "no-password", "number", "list", "bool",
        "username-number"])
def test_malformed_login_bodies_are_400(shared, body, words):
    answer = shared.request("POST", LOGIN, body, {"Content-Type": "application/json"})
    assert_json_error(answer, 400, *words)
    assert "Set-Cookie" not in answer.headers


def test_oversized_login_body_is_413(shared):
    answer = shared.request("POST", LOGIN, {"password": "x" * 100_000})
    assert_json_error(answer, 413)


# =========================================================================================
# Login throttling
# =========================================================================================

def test_failures_lock_the_address_out_then_it_logs_in_again(proxied):
    ip = address()
    client = AdminClient(proxied, {"X-Forwarded-For": ip})
    for _ in range(2):
        assert_json_error(client.login("wrong-password-1", expect=401), 401)
    locked = client.login("wrong-password-1", expect=429)
    assert_json_error(locked, 429, "too many failed logins", "try again in")
    assert locked.headers["Retry-After"] == "2"
    refused = client.login(PASSWORD, expect=429)  # the right password, during the lockout
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    assert "Set-Cookie" not in refused.headers
    AdminClient(proxied, {"X-Forwarded-For": address()}).login()  # others are not locked
    time.sleep(2.2)
    # the lockout is over and counting starts again: a new failure is a 401, not a 429
    assert_json_error(client.login("wrong-password-1", expect=401), 401)
    client.login(PASSWORD)


def test_a_successful_login_clears_the_failure_count(proxied):
    client = AdminClient(proxied, {"X-Forwarded-For": address()})
    client.login("wrong-password-1", expect=401)
    client.login("wrong-password-1", expect=401)
    client.login()
    client.login("wrong-password-1", expect=401)
    client.login("wrong-password-1", expect=401)  # would be the 3rd failure without the reset
    client.login("wrong-password-1", expect=429)


def test_forwarded_addresses_are_throttled_separately(proxied):
    first = AdminClient(proxied, {"X-Forwarded-For": address()})
    second = AdminClient(proxied, {"X-Forwarded-For": address()})
    for client in (first, second, first, second):
        client.login("wrong-password-1", expect=401)
    first.login("wrong-password-1", expect=429)
    first.login(expect=429)
    second.login()  # two failures only: not locked


def test_forged_forwarded_for_is_ignored_without_trust_proxy_headers(make_server):
    server = make_server(env={**ADMIN_ENV, **THROTTLE_ENV})
    for number, status in enumerate((401, 401, 429)):  # each with another forged address
        AdminClient(server, {"X-Forwarded-For": f"192.0.2.{number}"}).login(
            "wrong-password-1", expect=status)
    forged = AdminClient(server, {"X-Forwarded-For": "198.51.100.77",
                                  "X-Real-IP": "198.51.100.78"})
    assert_json_error(forged.login(expect=429), 429)
    log = server.log()
    assert "ip=127.0.0.1 login-failed" in log and "192.0.2." not in log, log
    time.sleep(2.2)
    forged.login()


def test_concurrent_failures_still_lock_the_address(proxied):
    """Failures from requests already in flight must not clear the lock an earlier one set
    (record_login_failure() once overwrote locked_until with NULL)."""
    for _ in range(3):  # a few rounds: each must end locked
        ip = address()
        connections = [proxied.connect() for _ in range(10)]
        for connection in connections:
            connection.connect()

        def attempt(connection, ip=ip):
            return proxied.request("POST", LOGIN, {"password": "wrong-password-1"},
                                   {"X-Forwarded-For": ip}, connection=connection).status
        try:
            statuses = run_workers(*[lambda c=c: attempt(c) for c in connections],
                                   barrier=True)
        finally:
            for connection in connections:
                connection.close()
        assert len(statuses) == 10 and set(statuses) <= {401, 429}, statuses
        # 10 failures from this address within the window: it must be locked now
        answer = AdminClient(proxied, {"X-Forwarded-For": ip}).login(expect=None)
        assert answer.status == 429, (statuses, answer)


def test_throttling_behind_an_appending_proxy_uses_the_address_it_appended(proxied):
    # nginx with the README's `proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for`
    # passes on what the client sent and appends the real address.
    real = address()
    statuses = []
    for _ in range(3):
        answer = proxied.request("POST", LOGIN, {"password": "wrong-password-1"},
                                 {"X-Forwarded-For": f"{address()}, {real}"})
        statuses.append(answer.status)
    answer = proxied.request("POST", LOGIN, {"password": PASSWORD},
                             {"X-Forwarded-For": f"{address()}, {real}"})
    assert statuses == [401, 401, 429] and answer.status == 429, (statuses, answer)


# =========================================================================================
# Forged and stale sessions
# =========================================================================================

def test_a_correctly_signed_token_is_accepted(admin):
    """The control for the forgeries below: this test's own signing is right."""
    token = forge(fresh(claims_of(admin.session), csrf="forged-but-signed-csrf"))
    answer = me(admin.server, token)
    assert answer.status == 200 and answer.json["username"] == "admin", answer
    created = admin.server.request("POST", "/admin/api/namespaces", {"name": unique("signed")},
                                   {"Cookie": f"oxsync_session={token}",
                                    "X-CSRF-Token": "forged-but-signed-csrf"})
    assert created.status == 201, created


def forgeries(admin) -> dict[str, str]:
    claims = claims_of(admin.session)
    signing_input, signature = admin.session.rsplit(".", 1)
    header, payload = signing_input.split(".")
    # A second user's valid claims under the admin's signature: only the signature is wrong.
    other_name, other_password = admin.create_user()
    other = AdminClient(admin.server)
    other.login(other_password, username=other_name)
    other_payload = other.session.split(".")[1]
    expired = fresh(claims, iat=int(time.time()) - 90000, exp=int(time.time()) - 5)
    none_header = b64url(b'{"alg":"none","typ":"JWT"}')
    return {
        "alg-none-unsigned": f"{none_header}.{payload}.",
        "alg-none-with-hs256-signature": f"{none_header}.{payload}.{signature}",
        "alg-lowercase-hs256": forge(fresh(claims), header={"alg": "hs256"}),
        "hs512-right-secret": forge(fresh(claims), header={"alg": "HS512", "typ": "JWT"},
                                    digest=hashlib.sha512),
        "no-alg": forge(fresh(claims), header={"typ": "JWT"}),
        "wrong-secret": forge(fresh(claims), secret="another-secret-" + "z" * 32),
        "tampered-sub": f"{header}.{other_payload}.{signature}",
        "tampered-exp": f"{header}.{b64url(json.dumps(fresh(claims)).encode())}.{signature}",
        "expired-right-secret": forge(expired),
        "no-exp": forge({k: v for k, v in fresh(claims).items() if k != "exp"}),
        "exp-as-string": forge(fresh(claims, exp=str(int(time.time()) + 3600))),
        "no-sub": forge({k: v for k, v in fresh(claims).items() if k != "sub"}),
        "unknown-user": forge(fresh(claims, sub=unique("ghost"))),
        "wrong-ver": forge(fresh(claims, ver="0" * 16)),
        "no-ver": forge({k: v for k, v in fresh(claims).items() if k != "ver"}),
        "signature-truncated": admin.session[:-3],
        "garbage": "garbage",
        "empty": "",
        "two-parts": f"{header}.{payload}",
        "four-parts": admin.session + ".extra",
        "header-not-json": f"{b64url(b'not json')}.{payload}.{signature}",
        "header-array": f"{b64url(b'[1]')}.{payload}.{signature}",
        "bad-base64": "%%%.***.!!!",
        "non-ascii": "\u00e9\u00e9.\u00e9.\u00e9",
    }


def test_forged_and_malformed_session_tokens_are_401(admin):
    for name, token in forgeries(admin).items():
        answer = admin.server.request("GET", "/admin/api/me",
                                      headers={"Cookie": f"oxsync_session={token}"})
        assert answer.status == 401, (name, answer)
        assert_json_error(answer, 401, "log in")


def test_session_of_a_deleted_user_is_401(admin):
    name, password = admin.create_user()
    client = AdminClient(admin.server)
    client.login(password, username=name)
    assert client.get("/admin/api/users").status == 200
    assert admin.delete(f"/admin/api/users/{name}").status == 200
    assert_json_error(client.get("/admin/api/users"), 401, "log in again")
    AdminClient(admin.server).login(password, username=name, expect=401)


def test_password_reset_ends_the_users_sessions(admin):
    name, password = admin.create_user()
    client = AdminClient(admin.server)
    client.login(password, username=name)
    stale_claims = claims_of(client.session)
    replacement = new_password()
    admin.server.remember(replacement)
    answer = admin.patch(f"/admin/api/users/{name}", {"password": replacement})
    assert answer.status == 200 and answer.json["user"]["username"] == name
    assert_json_error(me(admin.server, client.session), 401, "log in again")
    # even re-signed with the right secret: the `ver` claim no longer matches
    assert_json_error(me(admin.server, forge(fresh(stale_claims))), 401)
    AdminClient(admin.server).login(password, username=name, expect=401)
    AdminClient(admin.server).login(replacement, username=name)


# =========================================================================================
# CSRF, and endpoints that need a session at all
# =========================================================================================

def _rollback_setup(admin):
    namespace = unique("csrf-rollback")
    _, secret = admin.create_token(namespace)
    for revision in ("v1", "v2"):
        assert put_metadata(admin.server, namespace, secret, {"revision": revision}).status == 200
    return admin, "POST", admin_ns(namespace, "/rollback"), {"seq": 1}, 200


def _own_password_setup(admin):
    name, password = admin.create_user()
    client = AdminClient(admin.server)
    client.login(password, username=name)
    replacement = new_password()
    admin.server.remember(replacement)
    return client, "POST", "/admin/api/me/password", {"currentPassword": password,
                                                       "newPassword": replacement}, 200


def _logout_setup(admin):
    client = AdminClient(admin.server)
    client.login()
    return client, "POST", "/admin/api/logout", None, 200


def _deleted_namespace(admin):
    namespace = admin.create_namespace()
    assert admin.delete(admin_ns(namespace)).status == 200
    return namespace


CSRF_CASES = {
    "logout": _logout_setup,
    "change-own-password": _own_password_setup,
    "create-user": lambda a: (a, "POST", "/admin/api/users",
                              {"username": unique("csrf"), "password": new_password()}, 201),
    "update-user": lambda a: (a, "PATCH", f"/admin/api/users/{a.create_user()[0]}",
                              {"enabled": False}, 200),
    "delete-user": lambda a: (a, "DELETE", f"/admin/api/users/{a.create_user()[0]}", None, 200),
    "create-token": lambda a: (a, "POST", "/admin/api/tokens",
                               {"name": "csrf", "namespacePattern": "*",
                                "permissions": ["read"]}, 201),
    "update-token": lambda a: (a, "PATCH", f"/admin/api/tokens/{a.create_token()[0]}",
                               {"enabled": False}, 200),
    "rotate-token": lambda a: (a, "POST", f"/admin/api/tokens/{a.create_token()[0]}/rotate",
                               None, 200),
    "delete-token": lambda a: (a, "DELETE", f"/admin/api/tokens/{a.create_token()[0]}", None,
                               200),
    "create-namespace": lambda a: (a, "POST", "/admin/api/namespaces",
                                   {"name": unique("csrf")}, 201),
    "delete-namespace": lambda a: (a, "DELETE", admin_ns(a.create_namespace()), None, 200),
    "purge-namespace": lambda a: (a, "DELETE", admin_ns(_deleted_namespace(a), "?hard=true"),
                                  None, 200),
    "restore-namespace": lambda a: (a, "POST", admin_ns(_deleted_namespace(a), "/restore"),
                                    None, 200),
    "rollback": _rollback_setup,
    "gc": lambda a: (a, "POST", "/admin/api/gc", None, 200),
}


def admin_state(admin) -> list:
    return [admin.get(path).json for path in
            ("/admin/api/users", "/admin/api/tokens", "/admin/api/namespaces")]


@pytest.mark.parametrize("case", CSRF_CASES)
def test_non_get_calls_need_the_csrf_token(admin, case):
    client, method, path, body, status = CSRF_CASES[case](admin)
    before = admin_state(admin)
    for csrf in (False, "wrong-" + client.csrf, client.csrf[:-1], ""):
        answer = client.call(method, path, body, csrf=csrf)
        assert_json_error(answer, 403, "X-CSRF-Token")
    # the other session's token does not do either
    other = AdminClient(admin.server)
    other.login()
    assert_json_error(client.call(method, path, body, csrf=other.csrf), 403, "X-CSRF-Token")
    assert admin_state(admin) == before, "a refused call changed something"
    answer = client.call(method, path, body)
    assert answer.status == status, answer


@pytest.mark.parametrize("path", ["/admin/api/me", "/admin/api/stats", "/admin/api/users",
                                  "/admin/api/tokens", "/admin/api/namespaces",
                                  "/admin/api/conflicts"])
def test_get_calls_need_no_csrf_token(admin, path):
    assert admin.get(path).status == 200


ALL_ENDPOINTS = [
    ("POST", "/admin/api/logout"), ("GET", "/admin/api/me"), ("POST", "/admin/api/me/password"),
    ("GET", "/admin/api/stats"), ("GET", "/admin/api/users"), ("POST", "/admin/api/users"),
    ("PATCH", "/admin/api/users/admin"), ("DELETE", "/admin/api/users/admin"),
    ("GET", "/admin/api/namespaces"), ("POST", "/admin/api/namespaces"),
    ("DELETE", "/admin/api/namespaces/x"), ("DELETE", "/admin/api/namespaces/x?hard=true"),
    ("POST", "/admin/api/namespaces/x/restore"), ("GET", "/admin/api/namespaces/x/history"),
    ("POST", "/admin/api/namespaces/x/rollback"), ("GET", "/admin/api/tokens"),
    ("POST", "/admin/api/tokens"), ("PATCH", "/admin/api/tokens/abc"),
    ("DELETE", "/admin/api/tokens/abc"), ("POST", "/admin/api/tokens/abc/rotate"),
    ("GET", "/admin/api/conflicts"), ("POST", "/admin/api/gc")]


@pytest.mark.parametrize("method, path", ALL_ENDPOINTS)
def test_every_endpoint_but_login_needs_a_session(shared, method, path):
    answer = shared.request(method, path, b"{}", {"Content-Type": "application/json",
                                                  "X-CSRF-Token": "anything"})
    assert_json_error(answer, 401, "log in")


# =========================================================================================
# Users
# =========================================================================================

def test_user_list_shows_state_and_times_but_no_hash(admin):
    answer = admin.get("/admin/api/users")
    assert answer.status == 200
    users = {u["username"]: u for u in answer.json["users"]}
    assert users["admin"]["enabled"] is True
    assert set(users["admin"]) == {"username", "enabled", "createdAt", "updatedAt"}
    assert b"scrypt" not in answer.body and b"hash" not in answer.body.lower()


def test_created_user_can_log_in_and_a_duplicate_name_is_409(admin):
    name, password = unique("new"), new_password()
    admin.server.remember(password)
    answer = admin.post("/admin/api/users", {"username": f"  {name} ", "password": password})
    assert answer.status == 201, answer
    user = answer.json["user"]
    assert user["username"] == name and user["enabled"] is True
    assert abs(when(user["createdAt"]) - time.time()) < 60
    assert admin.users()[name]["enabled"] is True
    assert AdminClient(admin.server).login(password, username=name).json["username"] == name
    assert_json_error(admin.post("/admin/api/users",
                                 {"username": name, "password": new_password()}),
                      409, name, "already exists")
    AdminClient(admin.server).login(password, username=name)  # the duplicate changed nothing


@pytest.mark.parametrize("body, words", [
    ({"username": "has space", "password": "long-enough-1"}, ("username",)),
    ({"username": "", "password": "long-enough-1"}, ("username",)),
    ({"username": "x" * 65, "password": "long-enough-1"}, ("username",)),
    ({"username": "semi;colon", "password": "long-enough-1"}, ("username",)),
    ({"username": "new\nline", "password": "long-enough-1"}, ("username",)),
    ({"username": 42, "password": "long-enough-1"}, ("username",)),
    ({"password": "long-enough-1"}, ("username",)),
    ({"username": "valid-name"}, ("password",)),
    ({"username": "valid-name", "password": 12345678}, ("password",)),
    ({"username": "valid-name", "password": "short"}, ("8 characters",)),
], ids=["space", "empty", "too-long", "semicolon", "newline", "number", "missing", "no-password",
        "password-number", "password-short"])
def test_create_user_refuses_bad_input(admin, body, words):
    before = admin.users()
    assert_json_error(admin.post("/admin/api/users", body), 400, *words)
    assert admin.users() == before


def test_a_disabled_user_is_logged_out_and_can_log_in_once_enabled(admin):
    name, password = admin.create_user()
    client = AdminClient(admin.server)
    client.login(password, username=name)
    answer = admin.patch(f"/admin/api/users/{name}", {"enabled": False})
    assert answer.status == 200 and answer.json["user"]["enabled"] is False
    assert admin.users()[name]["enabled"] is False
    assert_json_error(client.get("/admin/api/users"), 401, "log in again")
    AdminClient(admin.server).login(password, username=name, expect=401)
    answer = admin.patch(f"/admin/api/users/{name}", {"enabled": True})
    assert answer.status == 200 and answer.json["user"]["enabled"] is True
    AdminClient(admin.server).login(password, username=name)


def test_update_user_refuses_bad_input_and_unknown_users(admin):
    name, password = admin.create_user()
    assert_json_error(admin.patch(f"/admin/api/users/{name}", {"enabled": "no"}), 400, "enabled")
    assert_json_error(admin.patch(f"/admin/api/users/{name}", {"password": 12345678}), 400,
                      "password")
    assert_json_error(admin.patch(f"/admin/api/users/{name}", [1]), 400)
    # one request, one transaction: the bad password also undoes the disable
    assert_json_error(admin.patch(f"/admin/api/users/{name}", {"enabled": False,
                                                          "password": "short"}), 400)
    assert admin.users()[name]["enabled"] is True
    AdminClient(admin.server).login(password, username=name)
    ghost = unique("ghost")
    assert_json_error(admin.patch(f"/admin/api/users/{ghost}", {"enabled": True}), 404, ghost)
    assert_json_error(admin.delete(f"/admin/api/users/{ghost}"), 404, ghost)


def test_a_deleted_user_cannot_log_in_and_a_second_delete_is_404(admin):
    name, password = admin.create_user()
    answer = admin.delete(f"/admin/api/users/{name}")
    assert answer.status == 200 and answer.json == {"ok": True}
    assert name not in admin.users()
    AdminClient(admin.server).login(password, username=name, expect=401)
    assert_json_error(admin.delete(f"/admin/api/users/{name}"), 404)


def test_an_admin_cannot_disable_or_delete_their_own_account(make_server):
    server = make_server(env=ADMIN_ENV)
    admin = AdminClient(server)
    admin.login()
    for alone in (True, False):  # alone, and with a second enabled admin to fall back on
        assert_json_error(admin.patch("/admin/api/users/admin", {"enabled": False}), 409,
                          "your own account")
        assert_json_error(admin.delete("/admin/api/users/admin"), 409, "your own account")
        assert admin.users()["admin"]["enabled"]
        if alone:
            second, second_password = admin.create_user("second")
    assert admin.patch(f"/admin/api/users/{second}", {"enabled": False}).status == 200
    assert admin.patch(f"/admin/api/users/{second}", {"enabled": True}).status == 200
    other = AdminClient(server)
    other.login(second_password, username=second)
    assert other.delete("/admin/api/users/admin").status == 200  # someone else's: allowed
    assert_json_error(other.delete(f"/admin/api/users/{second}"), 409, "your own account")
    assert set(other.users()) == {second} and other.users()[second]["enabled"]
    server.assert_log_clean()


def test_two_admins_disabling_each_other_at_once_leave_one_enabled(make_server):
    server = make_server(env=ADMIN_ENV)
    first = AdminClient(server)
    first.login()
    name, password = first.create_user()
    second = AdminClient(server)
    second.login(password, username=name)

    def disable(client, target):
        return client.patch(f"/admin/api/users/{target}", {"enabled": False}).status
    statuses = run_workers(lambda: disable(first, name), lambda: disable(second, "admin"),
                           barrier=True)
    assert sorted(statuses) in ([200, 401], [200, 409]), statuses
    assert db_rows(server, "SELECT count(*) AS n FROM admin_users WHERE enabled = 1") == [
        {"n": 1}]


def test_changing_own_password_keeps_this_session_and_ends_the_others(admin):
    name, password = admin.create_user()
    client, other_session = AdminClient(admin.server), AdminClient(admin.server)
    client.login(password, username=name)
    other_session.login(password, username=name)
    old_session, old_csrf = client.session, client.csrf
    replacement = new_password()
    admin.server.remember(replacement)

    assert_json_error(client.post("/admin/api/me/password", {"currentPassword": "wrong-password-9",
                                                        "newPassword": replacement}),
                      403, "current password is wrong")
    assert_json_error(client.post("/admin/api/me/password", {"currentPassword": password,
                                                        "newPassword": "short"}),
                      400, "8 characters")
    assert_json_error(client.post("/admin/api/me/password", {"newPassword": replacement}), 400,
                      "currentPassword")
    assert_json_error(client.post("/admin/api/me/password", {"currentPassword": password}), 400,
                      "newPassword")
    AdminClient(admin.server).login(password, username=name)  # nothing changed so far

    answer = client.post("/admin/api/me/password", {"currentPassword": password,
                                                    "newPassword": replacement})
    assert answer.status == 200, answer
    assert answer.json["ok"] is True and answer.json["username"] == name
    cookies = cookies_of(answer)
    assert cookies["oxsync_csrf"][0] == answer.json["csrfToken"] != old_csrf
    assert cookies["oxsync_session"][0] != old_session
    assert cookies["oxsync_session"][1]["httponly"] is True
    client.adopt(answer)
    # the session continues with the new cookie and CSRF token...
    assert client.get("/admin/api/me").json["csrfToken"] == answer.json["csrfToken"]
    assert client.post("/admin/api/namespaces", {"name": unique("own-pw")}).status == 201
    assert_json_error(client.post("/admin/api/namespaces", {"name": unique("own-pw")},
                             csrf=old_csrf), 403)
    # ...while the old cookie and every other session of this user end
    assert_json_error(me(admin.server, old_session), 401, "log in again")
    assert_json_error(other_session.get("/admin/api/me"), 401, "log in again")
    assert admin.get("/admin/api/me").status == 200  # another user's session is untouched
    AdminClient(admin.server).login(password, username=name, expect=401)
    AdminClient(admin.server).login(replacement, username=name)


# =========================================================================================
# Tokens
# =========================================================================================

def test_create_token_shows_the_secret_once(shared, admin):
    namespace = unique("tok")
    before = time.time()
    answer = admin.post("/admin/api/tokens", {"name": "laptop", "namespacePattern": namespace,
                                              "permissions": ["read", "write"]})
    assert answer.status == 201, answer
    secret, token = answer.json["secret"], answer.json["token"]
    shared.remember(secret)
    assert secret.startswith("oxs_") and len(secret) > 40
    assert token["name"] == "laptop" and token["namespacePattern"] == namespace
    assert token["permissions"] == ["read", "write"] and token["enabled"] is True
    # DEFAULT_TOKEN_TTL_SECONDS applies when no expiry is given
    assert before + DEFAULT_TTL - 5 <= when(token["expiresAt"]) <= time.time() + DEFAULT_TTL + 5
    assert token["expired"] is False
    listing = admin.get("/admin/api/tokens")
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert secret.encode() not in listing.body and digest.encode() not in listing.body.lower()
    assert token["id"] in {t["id"] for t in listing.json["tokens"]}
    for view in listing.json["tokens"]:
        assert not {k for k in view if "hash" in k.lower() or "secret" in k.lower()}, view
    # the secret works against the sync API
    assert put_blob(shared, namespace, secret, b"first snapshot").status == 200
    blob = get_blob(shared, namespace, secret)
    assert blob.status == 200 and blob.body == b"first snapshot"
    assert admin.token(token["id"])["useCount"] >= 2


def test_explicit_expiry_is_honoured(admin):
    answer = admin.post("/admin/api/tokens", {"name": "dated", "namespacePattern": "team/*",
                                              "permissions": ["read"],
                                              "expiresAt": "2031-05-06T07:08:09Z"})
    assert answer.status == 201, answer
    admin.server.remember(answer.json["secret"])
    assert when(answer.json["token"]["expiresAt"]) == when("2031-05-06T07:08:09Z")
    answer = admin.post("/admin/api/tokens", {"name": "dated", "namespacePattern": "team/*",
                                              "permissions": ["read"],
                                              "expiresAt": "2031-05-06T09:08:09+02:00"})
    admin.server.remember(answer.json["secret"])
    assert when(answer.json["token"]["expiresAt"]) == when("2031-05-06T07:08:09Z")


@pytest.mark.parametrize("change, words", [
    ({"namespacePattern": "bad pattern"}, ("pattern",)),
    ({"namespacePattern": "a*b*"}, ("pattern",)),
    ({"namespacePattern": "/lead"}, ("pattern",)),
    ({"namespacePattern": ""}, ("pattern",)),
    ({"namespacePattern": None}, ("namespacePattern",)),
    ({"permissions": []}, ("permissions",)),
    ({"permissions": ["admin"]}, ("permissions",)),
    ({"permissions": "read,write"}, ("permissions",)),
    ({"permissions": [1]}, ("permissions",)),
    ({"expiresAt": "tomorrow"}, ("expiresAt",)),
    ({"expiresAt": "2031-01-01T00:00:00"}, ("time zone",)),
    ({"expiresAt": 1900000000}, ("expiresAt",)),
    ({"name": ""}, ("name",)),
    ({"name": "x" * 101}, ("name",)),
    ({"name": "tab\there"}, ("name",)),
    ({"name": None}, ("name",)),
], ids=["space", "two-stars", "leading-slash", "empty-pattern", "no-pattern", "no-permissions",
        "unknown-permission", "permissions-string", "permission-number", "expiry-words",
        "expiry-no-zone", "expiry-number", "empty-name", "long-name", "control-name",
        "no-name"])
def test_create_token_refuses_bad_input(admin, change, words):
    body = {"name": "bad", "namespacePattern": "*", "permissions": ["read"], **change}
    body = {k: v for k, v in body.items() if v is not None}
    count = len(admin.get("/admin/api/tokens").json["tokens"])
    answer = admin.post("/admin/api/tokens", body)
    assert_json_error(answer, 400, *words)
    assert b"oxs_" not in answer.body
    assert len(admin.get("/admin/api/tokens").json["tokens"]) == count


def test_patching_a_token_renames_disables_and_expires_it(shared, admin):
    namespace = unique("patch")
    token_id, secret = admin.create_token(namespace)
    path = f"/admin/api/tokens/{token_id}"
    assert put_blob(shared, namespace, secret, b"patched").status == 200

    answer = admin.patch(path, {"name": "  renamed laptop "})
    assert answer.status == 200 and answer.json["token"]["name"] == "renamed laptop"
    assert admin.token(token_id)["name"] == "renamed laptop"

    answer = admin.patch(path, {"enabled": False})
    assert answer.status == 200 and answer.json["token"]["enabled"] is False
    assert_json_error(get_blob(shared, namespace, secret), 401, "renamed laptop", "disabled")
    assert admin.patch(path, {"enabled": True}).status == 200
    assert get_blob(shared, namespace, secret).status == 200

    # An expiry in the past is refused and changes nothing; a near one expires.
    assert_json_error(admin.patch(path, {"expiresAt": "2020-01-02T03:04:05Z"}), 400, "passed")
    assert get_blob(shared, namespace, secret).status == 200
    soon = datetime.fromtimestamp(int(time.time()) + 2, timezone.utc)
    answer = admin.patch(path, {"expiresAt": soon.strftime("%Y-%m-%dT%H:%M:%SZ")})
    assert answer.status == 200 and answer.json["token"]["expired"] is False
    time.sleep(max(0.0, soon.timestamp() - time.time()) + 0.1)
    assert admin.token(token_id)["expired"] is True
    assert_json_error(get_blob(shared, namespace, secret), 401, "expired",
                      soon.strftime("%Y-%m-%d"))
    answer = admin.patch(path, {"expiresAt": None})  # no expiry at all
    assert answer.status == 200 and answer.json["token"]["expiresAt"] is None
    assert get_blob(shared, namespace, secret).status == 200

    for body, word in (({"enabled": "no"}, "enabled"), ({"expiresAt": "soon"}, "expiresAt"),
                       ({"name": ""}, "name"), ({"name": 5}, "name")):
        assert_json_error(admin.patch(path, body), 400, word)
    assert admin.token(token_id)["name"] == "renamed laptop"
    assert_json_error(admin.patch("/admin/api/tokens/doesnotexist", {"enabled": False}), 404,
                      "doesnotexist")


def test_rotating_a_token_replaces_its_secret_and_keeps_its_data(shared, admin):
    namespace = unique("rotate")
    token_id, old = admin.create_token(namespace)
    assert put_blob(shared, namespace, old, b"before rotation").status == 200
    answer = admin.post(f"/admin/api/tokens/{token_id}/rotate")
    assert answer.status == 200, answer
    new = answer.json["secret"]
    shared.remember(new)
    assert new != old and new.startswith("oxs_")
    assert answer.json["token"]["id"] == token_id and answer.json["token"]["rotatedAt"]
    assert_json_error(get_blob(shared, namespace, old), 401, "unknown token")
    assert get_blob(shared, namespace, new).body == b"before rotation"
    assert new.encode() not in admin.get("/admin/api/tokens").body
    assert_json_error(admin.post("/admin/api/tokens/doesnotexist/rotate"), 404, "doesnotexist")


def test_a_deleted_token_is_refused_and_gone_from_every_endpoint(shared, admin):
    namespace = unique("deltok")
    token_id, secret = admin.create_token(namespace)
    assert put_blob(shared, namespace, secret, b"x").status == 200
    answer = admin.delete(f"/admin/api/tokens/{token_id}")
    assert answer.status == 200 and answer.json == {"ok": True}
    assert admin.token(token_id) is None
    assert_json_error(get_blob(shared, namespace, secret), 401)
    assert_json_error(admin.delete(f"/admin/api/tokens/{token_id}"), 404, token_id)
    assert_json_error(admin.patch(f"/admin/api/tokens/{token_id}", {"enabled": True}), 404)
    assert_json_error(admin.post(f"/admin/api/tokens/{token_id}/rotate"), 404)


# =========================================================================================
# Namespaces
# =========================================================================================

def test_namespace_list_counts_what_sync_traffic_stored(shared, admin):
    namespace = unique("team") + "/laptops"
    _, secret = admin.create_token(namespace)
    before = time.time()
    sizes = fill_namespace(shared, namespace, secret)
    view = admin.namespace(namespace)
    assert view is not None, admin.get("/admin/api/namespaces").json
    assert view["blobBytes"] == sizes["blobBytes"]
    assert view["objectCount"] == sizes["objectCount"]
    assert view["objectBytes"] == sizes["objectBytes"]
    assert view["totalBytes"] == sizes["blobBytes"] + sizes["objectBytes"]
    assert before - 1 <= when(view["lastWriteAt"]) <= time.time() + 1
    assert view["format"] == "structured-v2" and view["revision"] == "manifest-rev-7"
    assert view["deviceId"] == "desk-2"
    assert view["deleted"] is False and view["deletedAt"] is None
    assert view["etag"] == get_metadata(shared, namespace, secret).json["etag"]


def test_a_created_namespace_is_empty_and_a_duplicate_is_409(shared, admin):
    name = unique("team") + "/new"
    answer = admin.post("/admin/api/namespaces", {"name": name})
    assert answer.status == 201, answer
    view = answer.json["namespace"]
    assert view["name"] == name and view["totalBytes"] == 0 and view["objectCount"] == 0
    assert view["deleted"] is False and view["lastWriteAt"] is None
    assert admin.namespace(name) == view
    assert_json_error(admin.post("/admin/api/namespaces", {"name": name}), 409, name,
                      "already exists")
    _, secret = admin.create_token(name)
    assert get_metadata(shared, name, secret).json == {"exists": False, "contentLength": 0}


@pytest.mark.parametrize("name", ["", "/lead", "trail/", "a//b", "a/../b", "./x", "has space",
                                  "x" * 129, "semi;colon", "new\nline", 5, None])
def test_create_namespace_refuses_bad_names(admin, name):
    before = admin.get("/admin/api/namespaces").json
    body = {} if name is None else {"name": name}
    assert_json_error(admin.post("/admin/api/namespaces", body), 400)
    assert admin.get("/admin/api/namespaces").json == before


def test_soft_delete_then_restore_keeps_the_data(shared, admin):
    namespace = unique("soft") + "/ns"
    _, secret = admin.create_token(namespace)
    sizes = fill_namespace(shared, namespace, secret)
    metadata = get_metadata(shared, namespace, secret).json

    answer = admin.delete(admin_ns(namespace))
    assert answer.status == 200, answer
    view = answer.json["namespace"]
    assert view["deleted"] is True and abs(when(view["deletedAt"]) - time.time()) < 60
    assert view["totalBytes"] == sizes["blobBytes"] + sizes["objectBytes"]  # data kept
    object_name = next(iter(sizes["objects"]))
    for method, path, body in (("GET", ns_path(namespace, "metadata"), None),
                               ("GET", ns_path(namespace, "blob"), None),
                               ("GET", object_path(namespace, object_name), None),
                               ("PUT", object_path(namespace, object_name), b"{}"),
                               ("PUT", ns_path(namespace, "metadata"), b'{"revision": "z"}')):
        answer = shared.request(method, path, body, token=secret)
        assert_json_error(answer, 410, "deleted", "administrator", "restore")
    assert_json_error(put_blob(shared, namespace, secret, b"late write"), 410)
    assert admin.namespace(namespace)["deleted"] is True

    answer = admin.post(admin_ns(namespace, "/restore"))
    assert answer.status == 200, answer
    assert answer.json["namespace"]["deleted"] is False
    assert answer.json["namespace"]["deletedAt"] is None
    assert get_blob(shared, namespace, secret).body == sizes["blob"]
    assert get_metadata(shared, namespace, secret).json == metadata
    for path, data in sizes["objects"].items():
        assert shared.request("GET", object_path(namespace, path), token=secret).body == data


def test_purge_only_after_soft_delete_and_it_removes_everything(shared, admin):
    namespace = unique("purge")
    _, secret = admin.create_token(namespace)
    sizes = fill_namespace(shared, namespace, secret)
    stored = admin.namespace(namespace)["totalBytes"]
    assert stored == sizes["blobBytes"] + sizes["objectBytes"]
    assert_json_error(admin.delete(admin_ns(namespace, "?hard=true")), 409, "soft", namespace)
    assert admin.namespace(namespace)["deleted"] is False
    assert admin.delete(admin_ns(namespace)).status == 200
    answer = admin.delete(admin_ns(namespace, "?hard=true"))
    assert answer.status == 200, answer
    assert answer.json == {"ok": True, "freedBytes": stored}
    assert admin.namespace(namespace) is None
    assert get_metadata(shared, namespace, secret).json == {"exists": False, "contentLength": 0}
    assert_json_error(get_blob(shared, namespace, secret), 404)
    for path in sizes["objects"]:
        assert_json_error(shared.request("GET", object_path(namespace, path), token=secret), 404)
    assert_json_error(admin.delete(admin_ns(namespace, "?hard=true")), 404, namespace)
    assert_json_error(admin.post(admin_ns(namespace, "/restore")), 404, namespace)


def test_purge_counts_kept_snapshot_versions(shared, admin):
    namespace = unique("purge-versions")
    _, secret = admin.create_token(namespace)
    first = put_blob(shared, namespace, secret, b"a" * 1000, revision="r1")
    assert first.status == 200, first
    assert put_blob(shared, namespace, secret, b"b" * 300, revision="r2",
                    headers={"If-Match": first.headers["ETag"]}).status == 200
    view = admin.namespace(namespace)
    assert view["blobBytes"] == 300 and view["snapshotHistoryBytes"] == 1000
    assert view["totalBytes"] == 1300  # kept snapshot versions count too
    assert admin.delete(admin_ns(namespace)).status == 200
    assert admin.delete(admin_ns(namespace, "?hard=true")).json["freedBytes"] == 1300


def test_unknown_namespace_is_404(admin):
    name = unique("nowhere")
    for answer in (admin.delete(admin_ns(name)), admin.delete(admin_ns(name, "?hard=true")),
                   admin.post(admin_ns(name, "/restore")),
                   admin.get(admin_ns(name, "/history")),
                   admin.post(admin_ns(name, "/rollback"), {"seq": 1})):
        assert_json_error(answer, 404, name)
    assert_json_error(admin.delete("/admin/api/namespaces/a%2F%2Fb"), 400)  # not even a valid name


def test_history_lists_versions_and_rollback_restores_one(shared, admin):
    namespace = unique("history")
    _, secret = admin.create_token(namespace)
    for revision in ("rev-1", "rev-2", "rev-3"):
        assert put_metadata(shared, namespace, secret, {"revision": revision,
                                                        "deviceId": "d1"}).status == 200
    history = admin.get(admin_ns(namespace, "/history"))
    assert history.status == 200, history
    versions = history.json["versions"]
    assert [v["revision"] for v in versions] == ["rev-3", "rev-2", "rev-1"]
    assert [v["current"] for v in versions] == [True, False, False]
    assert len(admin.get(admin_ns(namespace, "/history?limit=1")).json["versions"]) == 1
    assert_json_error(admin.get(admin_ns(namespace, "/history?limit=abc")), 400, "limit")

    rollback = admin_ns(namespace, "/rollback")
    seq = versions[-1]["seq"]
    for body, word in (({}, "seq"), ({"seq": seq, "blobSeq": 1}, "seq"),
                       ({"seq": "1"}, "seq"), ({"seq": seq, "dryRun": "yes"}, "dryRun")):
        assert_json_error(admin.post(rollback, body), 400, word)
    assert_json_error(admin.post(rollback, {"seq": 999}), 404, "999")
    assert_json_error(admin.post(rollback, {"blobSeq": 999}), 404, "999")
    answer = admin.post(rollback, {"seq": seq, "dryRun": True})
    assert answer.status == 200 and answer.json["dryRun"] is True
    assert get_metadata(shared, namespace, secret).json["revision"] == "rev-3"
    answer = admin.post(rollback, {"seq": seq})
    assert answer.status == 200 and answer.json["rolledBackTo"] == seq, answer
    metadata = get_metadata(shared, namespace, secret).json
    assert metadata["revision"] == "rev-1" and metadata["etag"] == answer.json["etag"]

    assert admin.delete(admin_ns(namespace)).status == 200
    assert_json_error(admin.post(rollback, {"seq": seq}), 409, "restore")


def test_snapshot_rollback_serves_the_kept_version(shared, admin):
    namespace = unique("blob-rollback")
    _, secret = admin.create_token(namespace)
    first = put_blob(shared, namespace, secret, b"old snapshot", revision="r1")
    assert first.status == 200, first
    assert put_blob(shared, namespace, secret, b"new snapshot", revision="r2",
                    headers={"If-Match": first.headers["ETag"]}).status == 200
    blob_versions = admin.get(admin_ns(namespace, "/history")).json["blobVersions"]
    assert [v["revision"] for v in blob_versions] == ["r1"]
    answer = admin.post(admin_ns(namespace, "/rollback"), {"blobSeq": blob_versions[0]["seq"]})
    assert answer.status == 200 and answer.json["revision"] == "r1", answer
    assert get_blob(shared, namespace, secret).body == b"old snapshot"


def test_admin_gc_answers_what_it_removed(admin):
    answer = admin.post("/admin/api/gc")
    assert answer.status == 200, answer
    assert {"objectsRemoved", "bytesReclaimed", "manifestsRemoved"} <= set(answer.json)
    assert all(isinstance(answer.json[k], int) for k in ("objectsRemoved", "bytesReclaimed"))


# =========================================================================================
# Conflicts
# =========================================================================================

def test_conflicts_are_listed_newest_first_without_payloads(shared, admin):
    namespace = unique("conflicts")
    _, secret = admin.create_token(namespace)
    first = put_blob(shared, namespace, secret, b"one", headers={"If-None-Match": "*"})
    assert first.status == 200
    remote = first.json["etag"]
    assert put_blob(shared, namespace, secret, b"two", revision="r2", device="phone",
                    headers={"If-None-Match": "*"}).status == 412
    assert put_blob(shared, namespace, secret, b"three", revision="r3", device="tablet",
                    headers={"If-Match": '"stale-etag"'}).status == 412
    answer = admin.get("/admin/api/conflicts")
    assert answer.status == 200
    mine = [c for c in answer.json["conflicts"] if c["namespace"] == namespace]
    assert [c["requestedEtag"] for c in mine] == ["stale-etag", "*"]
    newest = mine[0]
    assert newest["operation"] == "blob" and newest["remoteEtag"] == remote
    assert newest["deviceId"] == "tablet" and newest["requestedRevision"] == "r3"
    assert newest["remoteRevision"] == "r1"
    assert when(mine[0]["at"]) >= when(mine[1]["at"]) and mine[0]["id"] > mine[1]["id"]
    assert b"three" not in answer.body  # never a payload
    one = admin.get("/admin/api/conflicts?limit=1")
    assert one.status == 200 and one.json["conflicts"] == [newest]
    assert_json_error(admin.get("/admin/api/conflicts?limit=abc"), 400, "limit")


# =========================================================================================
# Stats
# =========================================================================================

def test_stats_match_what_was_stored(make_server):
    server = make_server(env={**ADMIN_ENV, "ENCRYPTION_KEY": TEST_KEY,
                              "MIN_FREE_DISK_BYTES": "0"})
    admin = AdminClient(server)
    admin.login()
    empty = admin.get("/admin/api/stats").json
    assert {k: empty[k] for k in ("namespaces", "tokens", "objects", "totalBytes",
                                  "conflicts")} == dict.fromkeys(
        ("namespaces", "tokens", "objects", "totalBytes", "conflicts"), 0)
    _, secret = admin.create_token("stats/*")
    disabled_id, _ = admin.create_token("other")
    assert admin.patch(f"/admin/api/tokens/{disabled_id}", {"enabled": False}).status == 200
    kept = fill_namespace(server, "stats/kept", secret)
    gone = fill_namespace(server, "stats/gone", secret)
    assert put_blob(server, "stats/kept", secret, b"x", headers={"If-Match": '"old"'}).status \
        == 412
    assert admin.delete(admin_ns("stats/gone")).status == 200
    admin.create_namespace("stats/empty")

    stats = admin.get("/admin/api/stats")
    assert stats.status == 200, stats
    stats = stats.json
    expected_objects = kept["objectCount"] + gone["objectCount"]
    blob_bytes, object_bytes = kept["blobBytes"] + gone["blobBytes"], \
        kept["objectBytes"] + gone["objectBytes"]
    assert stats["namespaces"] == 2 and stats["deletedNamespaces"] == 1
    assert stats["tokens"] == 2 and stats["enabledTokens"] == 1
    assert stats["objects"] == expected_objects and stats["conflicts"] == 1
    assert stats["blobBytes"] == blob_bytes and stats["objectBytes"] == object_bytes
    assert stats["totalBytes"] == blob_bytes + object_bytes
    assert stats["databaseBytes"] > 0
    assert stats["encryptionEnabled"] is True and stats["jwtSecretPersistent"] is True
    assert stats["diskLow"] is False and stats["minFreeDiskBytes"] == 0
    assert stats["database"] == server.store_kind.replace("postgres", "postgresql")
    if server.store_kind == "sqlite":
        free = shutil.disk_usage(server.workdir).free
        assert abs(stats["diskFreeBytes"] - free) < max(free * 0.05, 512 * 1024 * 1024)
    else:  # the database's disk is not on this machine: nothing to measure or warn about
        assert stats["diskFreeBytes"] is None
    version = server.cli("--version").stdout.split()[-1]
    assert stats["version"] == version
    assert isinstance(stats["uptimeSeconds"], int)


def test_stats_warn_about_plaintext_ephemeral_secret_and_low_disk(make_server):
    server = make_server(env={"ADMIN_PASSWORD": PASSWORD, "MIN_FREE_DISK_BYTES": str(10 ** 16)})
    admin = AdminClient(server)
    admin.login()
    stats = admin.get("/admin/api/stats").json
    assert stats["encryptionEnabled"] is False
    assert stats["jwtSecretPersistent"] is False
    assert stats["minFreeDiskBytes"] == 10 ** 16
    assert stats["diskLow"] is (server.store_kind == "sqlite")
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", stats["version"])


# =========================================================================================
# Audit log
# =========================================================================================

def test_every_admin_action_is_audited_without_secrets(make_server):
    server = make_server(env={**ADMIN_ENV, "ADMIN_USERNAME": "chief",
                              "TRUST_PROXY_HEADERS": "true"})
    ip = "198.51.100.23"
    admin = AdminClient(server, {"X-Forwarded-For": ip})
    admin.login("wrong-password-audit", expect=401)
    admin.login()
    admin.create_user("deputy")
    assert admin.patch("/admin/api/users/deputy", {"password": new_password()}).status == 200
    assert admin.delete("/admin/api/users/deputy").status == 200
    token_id, _ = admin.create_token("audit/*")
    assert admin.patch(f"/admin/api/tokens/{token_id}", {"name": "renamed"}).status == 200
    rotated = admin.post(f"/admin/api/tokens/{token_id}/rotate").json["secret"]
    server.remember(rotated)
    payload = b"PAYLOAD-MARKER-" + uuid.uuid4().hex.encode()
    assert put_blob(server, "audit/a", rotated, payload).status == 200
    for revision in ("m1", "m2"):
        assert put_metadata(server, "audit/a", rotated, {"revision": revision}).status == 200
    assert admin.post(admin_ns("audit/a", "/rollback"), {"seq": 1}).status == 200
    assert admin.post(admin_ns("audit/a", "/rollback"), {"seq": 1, "dryRun": True}).status \
        == 200
    admin.create_namespace("audit/b")
    assert admin.delete(admin_ns("audit/b")).status == 200
    assert admin.post(admin_ns("audit/b", "/restore")).status == 200
    assert admin.delete(admin_ns("audit/b")).status == 200
    assert admin.delete(admin_ns("audit/b", "?hard=true")).status == 200
    assert admin.post("/admin/api/gc").status == 200
    assert admin.delete(f"/admin/api/tokens/{token_id}").status == 200
    replacement = new_password()
    server.remember(replacement)
    answer = admin.post("/admin/api/me/password", {"currentPassword": PASSWORD,
                                                   "newPassword": replacement})
    admin.adopt(answer)
    assert admin.post("/admin/api/logout").status == 200

    log = server.log()
    audit_lines = [line for line in log.splitlines() if " oxsync.audit: " in line]
    assert re.search(rf"oxsync\.audit: admin=- ip={re.escape(ip)} login-failed "
                     r"username='chief'", log), audit_lines
    for action in ("login", "create-user", "update-user", "delete-user", "create-token",
                   "update-token", "rotate-token", "rollback", "create-namespace",
                   "delete-namespace", "restore-namespace", "purge-namespace", "gc",
                   "delete-token", "change-own-password", "logout"):
        assert re.search(rf"oxsync\.audit: admin=chief ip={re.escape(ip)} {action}\b", log), \
            (action, audit_lines)
    assert sum(" rollback " in line for line in audit_lines) == 1  # a dry run changes nothing
    assert payload.decode() not in log
    server.assert_log_clean()


# =========================================================================================
# No CORS, unknown paths, wrong methods
# =========================================================================================

def test_no_cors_headers_on_admin_paths(shared, admin):
    origin = {"Origin": "https://evil.example",
              "Access-Control-Request-Method": "POST",
              "Access-Control-Request-Headers": "X-CSRF-Token"}
    answers = [
        shared.request("GET", "/admin", headers=origin),
        shared.request("GET", "/admin/", headers=origin),
        shared.request("POST", LOGIN, {"password": PASSWORD}, origin),
        shared.request("POST", LOGIN, {"password": "wrong-password-1"}, origin),
        admin.get("/admin/api/me", headers=origin),
        admin.post("/admin/api/namespaces", {"name": unique("cors")}, headers=origin),
        admin.get("/admin/api/nope", headers=origin),
    ]
    for path in ("/admin", "/admin/api/login", "/admin/api/tokens", "/admin/api/me",
                 "/admin/api/namespaces/x", "/admin/api/tokens/abc/rotate"):
        answer = shared.request("OPTIONS", path, headers=origin)
        assert_json_error(answer, 405)
        assert answer.headers["Allow"] and "OPTIONS" not in answer.headers["Allow"]
        answers.append(answer)
    for answer in answers:
        assert answer.status < 500
        cors = [name for name in answer.headers if name.lower().startswith("access-control-")]
        assert not cors, (answer, cors)
    # the control: the sync API does answer a preflight with CORS headers
    preflight = shared.request("OPTIONS", ns_path("x", "metadata"), headers=origin)
    assert preflight.headers.get("Access-Control-Allow-Origin"), preflight.headers


@pytest.mark.parametrize("path", ["/admin/api/nope", "/admin/nope", "/admin/api",
                                  "/admin/api/tokens/abc/nope", "/admin/api/users/a/b"])
def test_unknown_admin_path_is_404_json(admin, path):
    assert_json_error(admin.get(path), 404, path)


def test_unknown_admin_path_message_is_about_the_admin_api(admin):
    message = assert_json_error(admin.get("/admin/api/nope"), 404)
    assert "/v1/namespaces" not in message and "admin" in message.replace("/admin/api/nope", "")


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", LOGIN, "POST"), ("DELETE", LOGIN, "POST"), ("GET", "/admin/api/logout", "POST"),
    ("POST", "/admin/api/me", "GET, HEAD"), ("PUT", "/admin/api/tokens", "GET, HEAD, POST"),
    ("GET", "/admin/api/tokens/abc", "DELETE, PATCH"),
    ("PUT", "/admin/api/users/admin", "DELETE, PATCH"),
    ("GET", "/admin/api/tokens/abc/rotate", "POST"), ("PATCH", "/admin/api/stats", "GET, HEAD"),
    ("DELETE", "/admin", "GET, HEAD"), ("POST", "/admin/api/gc/", None),
])
def test_wrong_method_is_405_with_allow(admin, method, path, allowed):
    answer = admin.call(method, path, b"{}")
    if allowed is None:  # a trailing slash is another path
        assert_json_error(answer, 404)
        return
    assert_json_error(answer, 405, method)
    assert answer.headers["Allow"] == allowed
    for name in allowed.split(", "):
        assert name in answer.json["error"]["message"]

"""Several oxsync processes on one PostgreSQL database (issue 14): they share everything
through the database, so writers race fairly, a revocation counts at once everywhere, a
killed process loses nothing the other acknowledged, and the database may go away and
come back under load without a restart."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid

import _postgres
import pytest
from conftest import (OXSYNC, AdminClient, OxsyncServer, admin_ns, assert_json_error,
                      ns_path, one_error_line, quoted, run_workers)

ADMIN_PASSWORD = "correct horse battery"
SHARED_ENV = {"ADMIN_PASSWORD": ADMIN_PASSWORD, "ADMIN_JWT_SECRET": "s" * 40,
              "LOGIN_LOCKOUT_SECONDS": "600", "MAX_LOGIN_FAILURES": "3"}

pytestmark = pytest.mark.skipif(_postgres.available() is not None,
                                reason=f"PostgreSQL store: {_postgres.available()}")


def two_processes(tmp_path, url: str, env: dict | None = None) -> list[OxsyncServer]:
    servers = []
    for name in ("a", "b"):
        directory = tmp_path / name
        directory.mkdir()
        servers.append(OxsyncServer(directory, {**SHARED_ENV, **(env or {})},
                                    database_url=url))
    return servers


@pytest.fixture
def pair(tmp_path):
    """Two running processes on one fresh database."""
    servers = two_processes(tmp_path, _postgres.new_database())
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()
    for server in servers:
        server.assert_log_clean()


def metadata(server, namespace, token):
    return server.request("GET", ns_path(namespace, "metadata"), token=token)


def put_metadata(server, namespace, token, revision, if_match=None):
    headers = {"If-Match": quoted(if_match)} if if_match else {}
    return server.request("PUT", ns_path(namespace, "metadata"), {"revision": revision},
                          headers, token=token)


def test_writers_racing_over_two_processes_have_exactly_one_winner(pair):
    a, b = pair
    token = a.create_token()
    namespace = f"race/{uuid.uuid4().hex[:8]}"
    etag = put_metadata(a, namespace, token, "base").json["etag"]
    for round_number in range(10):
        answers = run_workers(*[
            lambda i=i: put_metadata(pair[i % 2], namespace, token, f"r{round_number}-{i}",
                                     etag) for i in range(6)], barrier=True)
        statuses = sorted(answer.status for answer in answers)
        assert statuses == [200] + [412] * 5, (round_number, answers)
        winner = next(answer for answer in answers if answer.status == 200)
        etag = winner.json["etag"]
        for server in pair:  # both processes now answer the winner's manifest
            current = metadata(server, namespace, token).json
            assert current["etag"] == etag and current["revision"] == winner.json["revision"]
    conflicts = AdminClient(a)
    conflicts.login()
    rows = [row for row in conflicts.get("/admin/api/conflicts?limit=1000").json["conflicts"]
            if row["namespace"] == namespace]
    assert len(rows) == 50  # every refused write was recorded, whichever process refused it


def test_revocation_on_one_process_counts_at_once_on_the_other(pair):
    a, b = pair
    namespace = f"revoke/{uuid.uuid4().hex[:8]}"
    admin = AdminClient(a)
    admin.login()
    created = admin.post("/admin/api/tokens", {"name": "laptop", "namespacePattern": "*",
                                               "permissions": ["read", "write"]}).json
    token_id, secret = created["token"]["id"], created["secret"]
    assert put_metadata(a, namespace, secret, "r1").status == 200
    for _ in range(3):  # warm b's cache: the next answer must not come from it
        assert metadata(b, namespace, secret).status == 200

    assert admin.patch(f"/admin/api/tokens/{token_id}", {"enabled": False}).status == 200
    assert_json_error(metadata(b, namespace, secret), 401, "disabled")
    assert admin.patch(f"/admin/api/tokens/{token_id}", {"enabled": True}).status == 200
    assert metadata(b, namespace, secret).status == 200

    rotated = admin.post(f"/admin/api/tokens/{token_id}/rotate").json["secret"]
    assert_json_error(metadata(b, namespace, secret), 401, "unknown token")
    assert metadata(b, namespace, rotated).status == 200

    assert admin.delete(admin_ns(namespace)).status == 200
    assert_json_error(metadata(b, namespace, rotated), 410, "deleted")
    assert admin.post(admin_ns(namespace, "/restore")).status == 200
    assert metadata(b, namespace, rotated).status == 200

    a.cli("token", "delete", token_id)  # the CLI is a third process
    assert_json_error(metadata(b, namespace, rotated), 401, "unknown token")
    assert_json_error(metadata(a, namespace, rotated), 401, "unknown token")


def test_sessions_and_login_throttling_are_shared_by_the_processes(pair):
    a, b = pair
    admin = AdminClient(a)
    admin.login()
    on_b = AdminClient(b)
    on_b.session, on_b.csrf = admin.session, admin.csrf
    assert on_b.get("/admin/api/me").status == 200  # a session made by a works on b
    assert admin.post("/admin/api/logout").status == 200
    assert on_b.get("/admin/api/me").status == 401  # ... and its logout counts on b

    address = {"X-Forwarded-For": "203.0.113.9"}
    statuses = [AdminClient(server, address).login("wrong password", expect=None).status
                for server in (a, b, a)]  # three failures, counted across both
    assert statuses == [401, 401, 429], statuses
    assert AdminClient(b, address).login(expect=None).status == 429
    a.cli("admin", "unlock")
    assert AdminClient(b, address).login(expect=None).status == 200


def test_kill_9_of_one_process_mid_upload_loses_nothing_the_other_acknowledged(pair):
    a, b = pair
    token = a.create_token()
    namespace = f"kill/{uuid.uuid4().hex[:8]}"
    acknowledged = {}

    def write_on_b(count=40):
        for number in range(count):
            answer = b.request("PUT", ns_path(namespace, f"objects/o{number}.json"),
                               f"object {number}".encode(), token=token)
            assert answer.status == 201, answer
            acknowledged[f"o{number}.json"] = answer.json["etag"]

    with socket.create_connection(("127.0.0.1", a.port)) as upload:
        upload.sendall(b"PUT " + ns_path(namespace, "blob").encode() + b" HTTP/1.1\r\n"
                       b"Host: x\r\nAuthorization: Bearer " + token.encode() + b"\r\n"
                       b"X-OxideTerm-Revision: never\r\nContent-Length: 4000000\r\n\r\n"
                       + b"x" * 1_000_000)
        run_workers(write_on_b, lambda: (time.sleep(0.2), a.kill()))
    for path, etag in acknowledged.items():
        answer = b.request("GET", ns_path(namespace, f"objects/{path}"), token=token)
        assert answer.status == 200 and answer.headers["ETag"] == quoted(etag), answer
    assert b.request("GET", ns_path(namespace, "blob"), token=token).status == 404
    a.allow_traceback = False
    a.start()  # the killed process comes back on the same database
    assert a.request("GET", ns_path(namespace, "objects/o39.json"), token=token).body == \
        b"object 39"


def test_the_database_stopped_and_started_under_load(tmp_path):
    cluster = _postgres.Cluster()
    try:
        servers = two_processes(tmp_path, _postgres.new_database(cluster.url))
        for server in servers:
            server.start()
        a, b = servers
        token = a.create_token()
        namespace = f"outage/{uuid.uuid4().hex[:8]}"
        acknowledged, seen = {}, {"503": 0, "other": []}
        state = {"outage": False, "stop": False}

        def writer(server, tag):
            number = 0
            while not state["stop"]:
                number += 1
                path = f"{tag}{number}.json"
                answer = server.request("PUT", ns_path(namespace, f"objects/{path}"),
                                        path.encode(), token=token)
                if answer.status == 201:
                    acknowledged[path] = answer.json["etag"]
                elif answer.status == 503:
                    assert answer.headers.get("Retry-After"), answer.headers
                    assert_json_error(answer, 503, "database")
                    seen["503"] += 1
                else:
                    seen["other"].append(answer)
                time.sleep(0.01)

        def outage():
            time.sleep(0.5)
            cluster.stop()
            state["outage"] = True
            time.sleep(1.5)
            ready = [server.request("GET", "/ready") for server in servers]
            assert [r.status for r in ready] == [503, 503], ready
            assert ready[0].json["dbWritable"] is False
            cluster.start()
            _postgres.wait_until_accepting(cluster.url)
            time.sleep(2)
            state["stop"] = True

        run_workers(lambda: writer(a, "a"), lambda: writer(b, "b"), outage)
        assert state["outage"] and seen["503"] > 0 and not seen["other"], seen
        for server in servers:  # back by itself: both serve and accept writes again
            assert server.request("GET", "/ready").status == 200
            assert put_metadata(server, namespace, token, f"after-{server.port}").status == 200
        for path, etag in acknowledged.items():  # nothing acknowledged was lost
            answer = b.request("GET", ns_path(namespace, f"objects/{path}"), token=token)
            assert answer.status == 200 and answer.headers["ETag"] == quoted(etag), path
        for server in servers:
            server.stop()
            server.assert_log_clean()
            assert "database unavailable" in server.log()
    finally:
        cluster.remove()


def test_processes_starting_together_migrate_once_and_older_code_refuses_newer(tmp_path):
    url = _postgres.new_database()
    servers = two_processes(tmp_path, url)
    for server in servers:
        server.start(wait=False)
    for server in servers:
        server.wait_ready()
    for server in servers:
        server.stop()
    migrated = [server.log().count("database schema migrated to version") for server in servers]
    created = [server.log().count("created from ADMIN_PASSWORD") for server in servers]
    assert sorted(created) == [0, 1], created  # the admin user is made once, and said once
    import psycopg
    with psycopg.connect(url, autocommit=True) as db:
        version = db.execute("SELECT version FROM oxsync_schema").fetchone()[0]
        assert sorted(migrated) == [0, version], migrated  # one process did every step
        db.execute("UPDATE oxsync_schema SET version = 99")
    result = servers[0].serve_once(listen=True)
    one_error_line(result, "newer oxsync", "upgrade")


def test_an_unreachable_database_is_one_line_and_exit_2_without_the_password(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there
    url = f"postgresql://someone:{_postgres.PASSWORD.replace('%', '%25')}@127.0.0.1:{port}/x"
    for command in (["serve", "--listen", f"127.0.0.1:{port}"], ["token", "list"], ["gc"]):
        result = subprocess.run(OXSYNC + command + ["--database-url", url],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result
        line = one_error_line(result, "cannot connect", "127.0.0.1")
        assert _postgres.PASSWORD not in line and "%25" not in line and "***" in line, line
    bad = subprocess.run(OXSYNC + ["token", "list", "--database-url",
                                   "mysql://u:hunter22@h/db"], capture_output=True, text=True)
    assert bad.returncode == 2 and "hunter22" not in bad.stderr, bad
    one_error_line(bad, "--database-url", "postgresql://")


def test_copy_store_moves_sqlite_to_postgres_and_back_with_tokens_working(tmp_path):
    lite = OxsyncServer(tmp_path / "lite")
    (tmp_path / "lite").mkdir()
    lite.env["ENCRYPTION_KEY"] = "33" * 32
    lite.start()
    token = lite.create_token()
    namespace = "move/alice"
    assert put_metadata(lite, namespace, token, "r1").status == 200
    assert lite.request("PUT", ns_path(namespace, "objects/a.json"), b"sealed bytes",
                        token=token).status == 201
    lite.stop()
    url = _postgres.new_database()
    copied = lite.cli("copy-store", "--to", url)  # no key given: payloads copied sealed
    assert "checked every table" in copied.stderr and "***" in copied.stderr, copied
    assert _postgres.password(url) not in copied.stderr + copied.stdout
    again = lite.cli("copy-store", "--to", url, check=False)
    one_error_line(again, "not empty")

    (tmp_path / "pg").mkdir()
    moved = OxsyncServer(tmp_path / "pg", {"ENCRYPTION_KEY": "33" * 32}, database_url=url)
    moved.start()
    try:
        assert metadata(moved, namespace, token).json["revision"] == "r1"
        assert moved.request("GET", ns_path(namespace, "objects/a.json"),
                             token=token).body == b"sealed bytes"
        assert moved.request("PUT", ns_path(namespace, "objects/b.json"), b"new",
                             token=token).status == 201  # ids continue after the copied ones
        back = tmp_path / "back.db"
        moved.cli("backup", "--to", str(back))
        assert "ok" in subprocess.run(OXSYNC + ["verify-backup", str(back)],
                                      capture_output=True, text=True).stdout
    finally:
        moved.stop()
    moved.assert_log_clean()
    restored = OxsyncServer(tmp_path / "lite", {"ENCRYPTION_KEY": "33" * 32})
    restored.db_path = back
    restored.start()
    try:
        assert restored.request("GET", ns_path(namespace, "objects/b.json"),
                                token=token).body == b"new"
    finally:
        restored.stop()


def test_retention_runs_in_one_process_at_a_time(pair):
    a, b = pair
    import psycopg
    key = int.from_bytes(__import__("hashlib").sha256(b"oxsync retention").digest()[:8],
                         "big", signed=True)
    with psycopg.connect(a.database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))  # as if a process were at it
        result = a.cli("gc", check=False)
        assert result.returncode == 1 and "another oxsync process" in result.stderr, result
        admin = AdminClient(b)
        admin.login()
        assert_json_error(admin.post("/admin/api/gc"), 409, "another oxsync process")
    assert json.loads(a.cli("gc").stdout)["objectsRemoved"] == 0

"""Scaling out (issue 14), run for real: Debian's nginx with the repository's
deploy/nginx-scaleout.conf (only the upstream addresses and the listen port rewritten) in
front of two oxsync processes on one PostgreSQL database.

The client talks to nginx from 127.0.0.2, so each process's access log shows which
requests it served, and that it believed nginx's X-Real-IP (TRUST_PROXY_HEADERS=true).
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import _postgres
from conftest import ROOT, TEST_KEY, AdminClient, OxsyncServer, free_port, ns_path

CONFIG = ROOT / "deploy" / "nginx-scaleout.conf"
SNAPSHOT_TYPE = "application/vnd.oxideterm.oxide"
CLIENT_IP = "127.0.0.2"                 # the address the backends must log
JWT_SECRET = "scaleout-test-jwt-secret-0123456789abcdef"
ADMIN_PASSWORD = "scaleout-admin-password"
MAX_BLOB_SIZE = 64 * 1024 * 1024

pytestmark = [
    pytest.mark.skipif(not shutil.which("nginx"), reason="nginx is not installed"),
    pytest.mark.skipif(bool(_postgres.available()),
                       reason=f"PostgreSQL store: {_postgres.available()}"),
]


# -- the proxy ----------------------------------------------------------------------

def nginx_config(folder: Path, port: int, backends: list[int]) -> Path:
    """deploy/nginx-scaleout.conf inside a minimal nginx.conf of our own."""
    site = CONFIG.read_text()
    for name, backend in zip(("oxsync1:8730", "oxsync2:8730"), backends):
        assert site.count(f"server {name} ") == 1, f"{CONFIG.name}: no 'server {name}' line"
        site = site.replace(f"server {name} ", f"server 127.0.0.1:{backend} ")
    assert site.count("listen 80;") == 1, f"{CONFIG.name}: no 'listen 80;'"
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    temp = {name: folder / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
    # As root, nginx's workers would run as nobody, who may not enter pytest's folders.
    user = "user root;" if os.geteuid() == 0 else ""
    path = folder / "nginx.conf"
    path.write_text(f"""
{user}
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
{site}
}}
""")
    return path


class Front(OxsyncServer):
    """The proxy seen as one server: requests go to nginx, from CLIENT_IP. Secrets the
    admin client hands it are remembered by both backends (their logs are checked)."""

    def __init__(self, port: int, backends: list[OxsyncServer]):
        self.port, self.backends = port, backends
        self.env, self.secrets = backends[0].env, set()

    def connect(self, timeout: float = 30) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout,
                                          source_address=(CLIENT_IP, 0))

    def remember(self, *secrets) -> None:
        for backend in self.backends:
            backend.remember(*secrets)


class ScaleOut:
    def __init__(self, front: Front, backends: list[OxsyncServer], nginx_log: Path):
        self.front, self.backends, self.nginx_log = front, backends, nginx_log

    def served(self, backend: OxsyncServer, method: str) -> int:
        """Requests from the client (through nginx) in this backend's access log."""
        return len(re.findall(rf"\b{re.escape(CLIENT_IP)} {method} /v1/", backend.log()))


@pytest.fixture
def scaleout(tmp_path):
    """nginx with deploy/nginx-scaleout.conf, in front of two oxsync processes that share
    one fresh PostgreSQL database, ADMIN_JWT_SECRET and ENCRYPTION_KEY."""
    url = _postgres.new_database()
    env = {"ENCRYPTION_KEY": TEST_KEY, "ADMIN_JWT_SECRET": JWT_SECRET,
           "ADMIN_PASSWORD": ADMIN_PASSWORD, "TRUST_PROXY_HEADERS": "true"}
    backends = []
    for number in (1, 2):
        workdir = tmp_path / f"oxsync{number}"
        workdir.mkdir()
        backend = OxsyncServer(workdir, env=env, database_url=url)
        backend.remember(_postgres.password(url), JWT_SECRET, ADMIN_PASSWORD)
        backends.append(backend)
    proxy = tmp_path / "nginx"
    proxy.mkdir()
    nginx = None
    try:
        for backend in backends:  # one after the other: the second finds the schema made
            backend.start()
        port = free_port()
        config = nginx_config(proxy, port, [backend.port for backend in backends])
        check = subprocess.run(["nginx", "-t", "-q", "-c", str(config), "-e",
                                str(proxy / "error.log")], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr + (proxy / "error.log").read_text()
        nginx = subprocess.Popen(["nginx", "-c", str(config), "-e", str(proxy / "error.log")],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(port, nginx, proxy / "error.log")
        yield ScaleOut(Front(port, backends), backends, proxy / "error.log")
    finally:
        if nginx is not None:
            nginx.send_signal(signal.SIGQUIT)  # graceful
            try:
                nginx.wait(10)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait()
        for backend in backends:
            backend.stop()
        for backend in backends:
            backend.assert_log_clean()


def wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}:\n{log.read_text()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nginx did not listen on {port}:\n{log.read_text()}")


# -- sync calls ------------------------------------------------------------------------

def put_blob(target, namespace: str, token: str, body: bytes, etag: str | None,
             revision: str):
    condition = {"If-Match": f'"{etag}"'} if etag else {"If-None-Match": "*"}
    return target.request("PUT", ns_path(namespace, "blob"), body=body, token=token,
                          headers={"Content-Type": SNAPSHOT_TYPE, **condition,
                                   "X-OxideTerm-Revision": revision,
                                   "X-OxideTerm-Device-Id": "scaleout-test"})


def get_blob(target, namespace: str, token: str):
    return target.request("GET", ns_path(namespace, "blob"), token=token)


# -- the tests -----------------------------------------------------------------------------

def test_token_made_on_one_process_works_through_the_proxy(scaleout):
    first, second = scaleout.backends
    token = first.create_token(namespace="team/*", name="made-on-first")
    # the second process writes, the proxy reads: every answer, whoever gives it, is 200
    snapshot = os.urandom(3000)
    assert put_blob(second, "team/default", token, snapshot, None, "r1").status == 200
    for _ in range(6):
        answer = get_blob(scaleout.front, "team/default", token)
        assert answer.status == 200, answer
        assert answer.body == snapshot
    # round robin reached both processes, and both saw the client's address (X-Real-IP)
    assert scaleout.served(first, "GET") >= 1 and scaleout.served(second, "GET") >= 1, \
        (first.log(), second.log())
    # disabled on one process: refused at once through the proxy, by both processes
    second.cli("token", "disable", second.token_id("made-on-first"))
    for _ in range(4):
        assert get_blob(scaleout.front, "team/default", token).status == 401


def test_upload_through_the_proxy_is_seen_by_every_process(scaleout):
    first, second = scaleout.backends
    token = first.create_token(namespace="team/*")
    etag = None
    for round_number in range(1, 5):  # a run of compare-and-swap writes through nginx
        snapshot = os.urandom(200_000)  # bigger than nginx's in-memory body buffer
        put = put_blob(scaleout.front, "team/default", token, snapshot, etag,
                       f"r{round_number}")
        assert put.status == 200, put
        etag = put.json["etag"]
        for target in [scaleout.front] * 4 + [first, second]:
            got = get_blob(target, "team/default", token)
            assert got.status == 200, got
            assert got.body == snapshot
            assert got.headers["ETag"].strip('"') == etag
    assert scaleout.served(first, "PUT") + scaleout.served(second, "PUT") == 4
    # a stale etag is refused whichever process gets it
    stale = put_blob(scaleout.front, "team/default", token, b"late", "0" * 16, "r-stale")
    assert stale.status == 412, stale


def test_admin_session_works_on_both_processes(scaleout):
    first, second = scaleout.backends
    admin = AdminClient(scaleout.front)
    admin.login()
    made = admin.post("/admin/api/tokens", {"name": "from-the-page",
                                            "namespacePattern": "team/*",
                                            "permissions": ["read", "write"]})
    assert made.status == 201, made
    secret = made.json["secret"]
    scaleout.front.remember(secret)
    for _ in range(6):  # the session, signed by one process, is accepted by both
        assert admin.get("/admin/api/tokens").status == 200
    for backend in (first, second):  # and so is the token made through the page
        answer = put_blob(backend, f"team/{backend.port}", secret, b"x", None, "r1")
        assert answer.status == 200, answer
    assert admin.post("/admin/api/logout").status == 200
    for _ in range(4):  # logout ends the session on every process
        assert admin.get("/admin/api/tokens").status == 401
    for backend in (first, second):
        copied = AdminClient(backend)
        copied.session, copied.csrf = admin.session, admin.csrf
        assert copied.get("/admin/api/tokens").status == 401


def test_oversized_upload_is_refused_by_nginx(scaleout):
    token = scaleout.backends[0].create_token(namespace="team/*")
    connection = scaleout.front.connect(timeout=10)
    try:  # headers only: nginx answers 413 on the Content-Length alone
        connection.putrequest("PUT", ns_path("team/default", "blob"))
        for name, value in (("Authorization", f"Bearer {token}"),
                            ("Content-Type", SNAPSHOT_TYPE), ("If-None-Match", "*"),
                            ("Content-Length", str(MAX_BLOB_SIZE + 1))):
            connection.putheader(name, value)
        connection.endheaders()
        assert connection.getresponse().status == 413
    finally:
        connection.close()
    assert not any(scaleout.served(backend, "PUT") for backend in scaleout.backends)


def test_one_process_stopped_the_proxy_keeps_serving(scaleout):
    first, second = scaleout.backends
    token = first.create_token(namespace="team/*")
    put = put_blob(scaleout.front, "team/default", token, b"before", None, "r0")
    assert put.status == 200, put
    etag = put.json["etag"]
    # a kept-alive connection from nginx to each process exists now
    for _ in range(4):
        assert get_blob(scaleout.front, "team/default", token).status == 200

    assert first.stop() == 0  # SIGTERM: finishes what it has, then exits 0
    gets_before = scaleout.served(second, "GET")
    puts_before = scaleout.served(second, "PUT")
    # Reads and compare-and-swap writes, no 502 or 504: runs of writes, of reads, and
    # both in turn, so that nginx's round robin offers the stopped process each kind.
    pattern = ["PUT"] * 4 + ["GET"] * 4 + ["PUT", "GET"] * 4
    snapshot = b"before"
    for number, method in enumerate(pattern, 1):
        if method == "PUT":
            snapshot = f"after-{number}".encode()
            answer = put_blob(scaleout.front, "team/default", token, snapshot, etag,
                              f"r{number}")
            assert answer.status == 200, (answer, scaleout.nginx_log.read_text())
            etag = answer.json["etag"]
        else:
            answer = get_blob(scaleout.front, "team/default", token)
            assert answer.status == 200, (answer, scaleout.nginx_log.read_text())
            assert answer.body == snapshot
    assert scaleout.served(second, "GET") - gets_before == pattern.count("GET")
    assert scaleout.served(second, "PUT") - puts_before == pattern.count("PUT")

    # and back: the restarted process serves its share again
    first.start()
    for _ in range(6):
        got = get_blob(scaleout.front, "team/default", token)
        assert got.status == 200 and got.body == snapshot, got
    assert scaleout.served(first, "GET") >= 1

"""The README's reverse-proxy snippets, run for real: nginx and Caddy in front of oxsync,
with a path prefix and a namespace that contains '/' (sent as team%2Fdefault)."""

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, free_port, ns_path, object_path

README = (ROOT / "README.md").read_text()


def readme_block(language: str) -> str:
    return re.search(rf"```{language}\n(.*?)```", README, re.S).group(1)


def wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    import socket
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(log.read_text())
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"proxy did not listen: {log.read_text()}")


def sync_through(server, port: int, prefix: str) -> None:
    """A structured upload and download through the proxy, as the client does it."""
    import http.client
    token = server.create_token(namespace="team/*")
    path = "structured/connections/2026-12-02T10:00:00Z caf\u00e9.json"

    def call(method, url, body=None, headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request(method, prefix + url, body=body,
                           headers={"Authorization": f"Bearer {token}", **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read()

    assert call("PUT", object_path("team/default", path), b"payload")[0] == 201
    manifest = ('{"format": "structured-v2", "revision": "r1", "sections": {"connections": '
                '{"revision": "r1", "path": "%s", "recordCount": 1}}}' % path)
    status, _ = call("PUT", ns_path("team/default", "metadata"), manifest.encode(),
                     {"Content-Type": "application/json"})
    assert status == 200
    status, body = call("GET", ns_path("team/default", "metadata"))
    assert status == 200 and b'"revision":"r1"' in body
    assert call("GET", object_path("team/default", path)) == (200, b"payload")


def sync_through_proxy(server, port: int, log: Path, command: list[str], **popen) -> None:
    """Start the proxy, sync through it under the README's /sync prefix, stop it."""
    proxy = subprocess.Popen(command, **popen)
    try:
        wait_for_port(port, proxy, log)
        sync_through(server, port, "/sync")
    finally:
        proxy.terminate()
        proxy.wait(10)


@pytest.mark.skipif(not shutil.which("nginx"), reason="nginx is not installed")
def test_nginx_snippet_keeps_encoded_namespace(server, tmp_path):
    port = free_port()
    location = readme_block("nginx").replace("127.0.0.1:8730", f"127.0.0.1:{server.port}")
    log = tmp_path / "nginx.log"
    (tmp_path / "nginx.conf").write_text(f"""
daemon off; pid {tmp_path}/nginx.pid; error_log {log};
events {{}}
http {{
  access_log off;
  client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;
  fastcgi_temp_path {tmp_path}/fcgi; uwsgi_temp_path {tmp_path}/uwsgi;
  scgi_temp_path {tmp_path}/scgi;
  server {{ listen 127.0.0.1:{port}; {location} }}
}}""")
    sync_through_proxy(server, port, log, ["nginx", "-c", str(tmp_path / "nginx.conf"),
                                            "-e", str(log)])


@pytest.mark.skipif(not shutil.which("caddy"), reason="caddy is not installed")
def test_caddy_snippet_keeps_encoded_namespace(server, tmp_path):
    port = free_port()
    site = readme_block("caddy").replace("example.com", f"http://127.0.0.1:{port}", 1)
    site = site.replace("127.0.0.1:8730", f"127.0.0.1:{server.port}")
    (tmp_path / "Caddyfile").write_text("{\n\tadmin off\n\tauto_https off\n}\n" + site)
    log = tmp_path / "caddy.log"
    with open(log, "w") as output:
        sync_through_proxy(server, port, log, ["caddy", "run", "--config",
                                               str(tmp_path / "Caddyfile"), "--adapter",
                                               "caddyfile"],
                           stdout=output, stderr=subprocess.STDOUT,
                           env={"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path),
                                "XDG_CONFIG_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})


def test_decoded_namespace_gets_a_hint(server, token):
    answer = server.request("GET", "/v1/namespaces/team/default/metadata", token=token)
    assert answer.status == 404
    assert "team%2Fdefault" in answer.json["error"]["message"]

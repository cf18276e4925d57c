"""Graceful shutdown (issue 4): on SIGTERM/SIGINT stop accepting, finish in-flight
requests (bounded wait), close idle keep-alive connections, checkpoint the WAL, exit 0."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from _reliability import MiB, integrity_check, read_answer
from conftest import ns_path

pytestmark = pytest.mark.sqlite_only   # every test checks the WAL file was checkpointed

NS = "shutdown/test"


# -- helpers ---------------------------------------------------------------------------

def assert_checkpointed(server) -> None:
    wal = server.workdir / "sync.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0, \
        f"WAL left with {wal.stat().st_size} bytes: not checkpointed"
    assert integrity_check(server.db_path) == "ok"


def wait_exit(server, timeout: float) -> tuple[int | None, float]:
    started = time.monotonic()
    try:
        code = server.process.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None
    return code, time.monotonic() - started


def connection_refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            return sock.recv(1024) == b""
    except OSError:
        return True


class SlowUpload(threading.Thread):
    """PUT blob of `size` bytes sent in 1 MiB pieces over about `seconds`."""

    def __init__(self, server, token, size: int = 16 * MiB, seconds: float = 1.5,
                 keep_open: bool = False):
        super().__init__(daemon=True)
        self.keep_open = keep_open
        self.server, self.size, self.pause = server, size, seconds / (size // MiB)
        self.body = os.urandom(size)
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        head = (f"PUT {ns_path(NS, 'blob')} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {token}\r\nX-OxideTerm-Revision: big\r\n"
                f"Content-Type: application/vnd.oxideterm.oxide\r\n"
                f"Content-Length: {size}\r\n\r\n")
        self.sock.sendall(head.encode())
        self.sent = 0
        self.result = None
        self.error = None
        self.finished_at = None

    def run(self):
        try:
            for offset in range(0, self.size, MiB):
                self.sock.sendall(self.body[offset:offset + MiB])
                self.sent = offset + MiB
                time.sleep(self.pause)
            self.result = read_answer(self.sock, timeout=30)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error
        finally:
            self.finished_at = time.monotonic()
            if not self.keep_open:
                self.sock.close()


# -- tests ------------------------------------------------------------------------------

def test_sigterm_finishes_a_large_upload_then_exits_cleanly(make_server):
    server = make_server()
    token = server.create_token()
    upload = SlowUpload(server, token)
    upload.start()
    while upload.sent < 3 * MiB:
        time.sleep(0.01)
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()

    # It stops accepting at once, while the upload is still arriving.
    refused_at = None
    while upload.is_alive() and refused_at is None:
        if connection_refused(server.port):
            refused_at = time.monotonic()
        else:
            time.sleep(0.05)
    assert refused_at is not None, "new connections were still accepted during the drain"
    upload.join(30)
    assert upload.error is None, upload.error
    assert upload.sent == 16 * MiB
    assert refused_at < upload.finished_at
    assert upload.result.status == 200, upload.result
    assert upload.result.json["ok"] is True, upload.result

    code, seconds = wait_exit(server, 10)
    assert code == 0, server.log()
    assert seconds < 3, f"exit took {seconds:.1f}s after the upload was answered"
    assert time.monotonic() - signalled < 12
    server.stop()
    log = server.log()
    assert "SIGTERM" in log and "stopped cleanly" in log, log
    assert_checkpointed(server)

    # The upload was committed, not just answered.
    server.start()
    answer = server.request("GET", ns_path(NS, "blob"), token=token)
    assert answer.status == 200
    assert hashlib.sha256(answer.body).digest() == hashlib.sha256(upload.body).digest()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_keep_alive_connections_do_not_delay_the_exit(make_server, sig):
    server = make_server()
    token = server.create_token()
    # Some writes, so the WAL has something to checkpoint.
    for number in range(5):
        assert server.request("PUT", ns_path(NS, "blob"), os.urandom(256 * 1024),
                              {"X-OxideTerm-Revision": f"r{number}"}, token=token).status == 200
    assert (server.workdir / "sync.db-wal").stat().st_size > 0
    idle = []
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_answer(sock)
        assert answer.status == 200, answer
        assert answer.headers.get("Connection", "").lower() != "close", answer.headers
        idle.append(sock)

    server.process.send_signal(sig)
    code, seconds = wait_exit(server, 15)
    assert code == 0, server.log()
    assert seconds < 3, f"took {seconds:.1f}s to exit with idle keep-alive connections open"
    for sock in idle:
        sock.settimeout(2)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(1024) == b"", "an idle connection was left open"
        sock.close()
    server.stop()
    assert "stopped cleanly" in server.log()
    assert_checkpointed(server)


def test_a_stalled_request_does_not_hold_the_exit_forever(make_server):
    """Bounded wait: a client that stops sending mid-body does not keep the server up."""
    server = make_server(env={"REQUEST_TIMEOUT_SECONDS": "120"})
    token = server.create_token()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall((f"PUT {ns_path(NS, 'blob')} HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {token}\r\nX-OxideTerm-Revision: stalled\r\n"
                  f"Content-Length: {4 * MiB}\r\n\r\n").encode() + b"x" * MiB)
    time.sleep(0.3)
    server.process.send_signal(signal.SIGTERM)
    code, seconds = wait_exit(server, 40)
    sock.close()
    assert code == 0, server.log()
    assert seconds < 30, f"exit took {seconds:.1f}s"
    server.stop()
    assert "still running" in server.log() and "stopped cleanly" in server.log()
    assert_checkpointed(server)
    server.start()
    assert server.request("GET", ns_path(NS, "blob"), token=token).status == 404


def test_the_last_answer_of_the_drain_says_connection_close(make_server):
    server = make_server()
    token = server.create_token()
    # The socket stays open after the answer, as a keep-alive client's would.
    upload = SlowUpload(server, token, size=8 * MiB, seconds=1.0, keep_open=True)
    upload.start()
    while upload.sent < 2 * MiB:
        time.sleep(0.01)
    server.process.send_signal(signal.SIGTERM)
    upload.join(30)
    assert upload.error is None, upload.error
    assert upload.result.status == 200, upload.result
    announced = upload.result.headers.get("Connection", "").lower() == "close"
    if not announced:
        # The client may reuse the connection: then its next request must be answered.
        sock = upload.sock
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answered = read_answer(sock).status == 200
        except (OSError, AssertionError):
            answered = False
        upload.sock.close()
        assert answered, ("the server closed a keep-alive connection after an answer without "
                          f"'Connection: close':\n{upload.result.headers}")
    upload.sock.close()
    assert wait_exit(server, 15)[0] == 0

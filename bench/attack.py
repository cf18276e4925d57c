#!/usr/bin/env python3
"""The attacks of issue 24, measured: this checkout's oxsync against another build (by
default the main branch's oxsync.py), interleaved, on loopback only.

    python3 bench/attack.py                      # this checkout vs `git show main:oxsync.py`
    python3 bench/attack.py --before OLD.py      # vs another file
    python3 bench/attack.py --logins 400 --rounds 2

For each build and round it prints:
  login burst   N logins with a wrong password sent at once on N raw connections from one
                address: passwords checked (the server's 'login-failed' audit lines), the
                answers, the peak memory (VmHWM) over the memory before the burst, seconds
  412 flood     2,000 conflicting PUTs with a 60 KB If-Match on 4 connections: log bytes
                added per conflict, conflicts per second
  blocked log   6,000 such conflicts (16 KB If-Match) while nobody reads the server's stderr
                pipe: memory growth (VmRSS), then seconds from SIGTERM to exit (killed after 30)

Figures are noisy on a shared machine; compare builds within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import harness

MiB = 1024 * 1024
PASSWORD = "bench attack password 123"


def raw_burst(port: int, payload: bytes, count: int) -> list[int]:
    """The same request on `count` connections opened first, then sent at once -> statuses
    (0 where no answer came within a minute)."""
    sockets = [socket.create_connection((harness.HOST, port), timeout=60) for _ in range(count)]
    for sock in sockets:
        sock.sendall(payload)
    statuses = []
    for sock in sockets:
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        sock.close()
        statuses.append(int(data.split()[1]) if data.startswith(b"HTTP/") else 0)
    return statuses


class Server:
    """One oxsync build on a fresh SQLite file; its stderr to a file, or to a pipe no one
    reads (`blocked_log`)."""

    def __init__(self, script: str, blocked_log: bool = False):
        self.folder = Path(harness.make_temp_dir("attack"))
        self.port, self.log_path = harness.free_port(), self.folder / "server.log"
        env = {**os.environ, "ADMIN_PASSWORD": PASSWORD}
        for name in ("DATABASE_URL", "ENCRYPTION_KEY", "METRICS_TOKEN"):
            env.pop(name, None)
        self.argv = [sys.executable, script]
        self.db = ["--db-path", str(self.folder / "sync.db")]
        output = subprocess.PIPE if blocked_log else open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.argv + ["serve", "--listen", f"{harness.HOST}:{self.port}"] + self.db,
            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)
        harness.STARTED.append(self.process)
        harness.wait_until_up(self.port, self.process, "/health")
        self.token = subprocess.run(
            self.argv + ["token", "create", "--name", "bench", "--namespace", "*"] + self.db,
            capture_output=True, text=True, check=True).stdout.strip()

    def kib(self, field: str) -> int:
        return harness.status_kib(self.process.pid, field)

    def log_bytes(self) -> int:
        time.sleep(0.5)  # the log is written by a background thread
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def stop(self) -> float:
        """SIGTERM -> seconds until it exited (30 means it did not: killed); the exit
        status is kept in self.code."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            harness.stop_process(self.process, grace=0)
        harness.stop_process(self.process)
        self.code = self.process.returncode
        return min(30.0, time.monotonic() - started)


def login_burst(script: str, count: int) -> dict:
    server = Server(script)
    try:
        body = json.dumps({"password": "a-wrong-password-42"}).encode()
        payload = (b"POST /admin/api/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                   + body)
        before = server.kib("VmRSS")
        started = time.monotonic()
        statuses = raw_burst(server.port, payload, count)
        seconds = time.monotonic() - started
        time.sleep(0.5)  # the log is written by a background thread
        checked = server.log_path.read_text(errors="replace").count("login-failed")
        return {"checked": checked, "answers": {s: statuses.count(s) for s in set(statuses)},
                "peak_mib": (server.kib("VmHWM") - before) / 1024, "seconds": seconds}
    finally:
        server.stop()


def conflicts(server: Server, count: int, if_match_bytes: int, connections: int = 4) -> float:
    """`count` 412 PUTs -> seconds they took."""
    path = "/v1/namespaces/bench/objects/settings.json"
    auth = {"Authorization": f"Bearer {server.token}"}
    assert harness.request(server.port, "PUT", path, b"{}", auth).status == 201
    headers = {**auth, "If-Match": '"' + "e" * if_match_bytes + '"'}

    def flood():
        import http.client
        connection = http.client.HTTPConnection(harness.HOST, server.port, timeout=60)
        for _ in range(count // connections):
            connection.request("PUT", path, body=b"{}", headers=headers)
            response = connection.getresponse()
            response.read()
            assert response.status == 412, response.status
        connection.close()
    threads = [threading.Thread(target=flood) for _ in range(connections)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


def conflict_flood(script: str) -> dict:
    server = Server(script)
    try:
        before = server.log_bytes()
        seconds = conflicts(server, 2000, 60000)
        return {"log_bytes_per_conflict": (server.log_bytes() - before) / 2000,
                "conflicts_per_s": 2000 / seconds}
    finally:
        server.stop()


def blocked_log(script: str) -> dict:
    server = Server(script, blocked_log=True)
    try:
        before = server.kib("VmRSS")
        seconds = conflicts(server, 6000, 16000)
        grown = (server.kib("VmRSS") - before) / 1024
    finally:
        exit_seconds = server.stop()
        server.process.stdout.close()
    return {"rss_growth_mib": grown, "conflicts_per_s": 6000 / seconds,
            "sigterm_exit_s": exit_seconds, "exit_status": server.code}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="the other build's oxsync.py (default: main's)")
    parser.add_argument("--logins", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    before = args.before
    if before is None:
        before = os.path.join(harness.make_temp_dir("main"), "oxsync.py")
        with open(before, "wb") as file:
            file.write(subprocess.run(["git", "show", "main:oxsync.py"], cwd=harness.ROOT,
                                      capture_output=True, check=True).stdout)
    builds = {"before": before, "after": str(harness.ROOT / "oxsync.py")}
    harness.sigterm_to_keyboard_interrupt()
    try:
        for round_number in range(1, args.rounds + 1):
            for name, script in builds.items():  # interleaved: before, after, before, ...
                print(f"round {round_number} {name:6} login burst ({args.logins}): "
                      f"{login_burst(script, args.logins)}", flush=True)
                print(f"round {round_number} {name:6} 412 flood:   {conflict_flood(script)}",
                      flush=True)
                print(f"round {round_number} {name:6} blocked log: {blocked_log(script)}",
                      flush=True)
    finally:
        harness.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())

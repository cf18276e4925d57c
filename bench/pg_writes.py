"""Writes on PostgreSQL against SQLite (issue 21): latency and round trips per request.

    python3 bench/pg_writes.py --database-url postgresql://user:pw@host/db   # emptied first
    python3 bench/pg_writes.py --database-url ... --oxsync /tmp/old/oxsync.py

One client, one keep-alive connection, one request at a time (so latency is the cost of
a request, not of queueing): N PUT object (1 KB, a new path each) and N sync cycles
(GET metadata, PUT metadata with If-Match, PUT blob 64 KiB with If-Match), on a new
SQLite file and on the given PostgreSQL database, in turns. The PostgreSQL server runs
with a counter of psycopg's waits for the database (each one a round trip) and prints
round trips per request. Figures from a busy machine are noisy: compare ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import queue
import socket
import statistics
import sys
import threading
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

class DelayingProxy(threading.Thread):
    """A TCP relay to PostgreSQL that hands each answer of the server to oxsync `delay`
    seconds late (in order, without holding up the next): every round trip then costs
    `delay` more, so (latency through it - latency without it) / delay counts them."""

    def __init__(self, target: tuple[str, int], delay: float):
        super().__init__(daemon=True)
        self.target, self.delay = target, delay
        self.listener = socket.create_server((harness.HOST, 0))
        self.port = self.listener.getsockname()[1]

    def run(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(self.target)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self.pump, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(target=self.pump, args=(server, client, self.delay),
                             daemon=True).start()

    @staticmethod
    def pump(source, sink, delay: float) -> None:
        due: queue.Queue = queue.Queue()

        def deliver():
            while True:
                at, data = due.get()
                if data is None:
                    return
                time.sleep(max(0.0, at - time.monotonic()))
                with contextlib.suppress(OSError):
                    sink.sendall(data)
        threading.Thread(target=deliver, daemon=True).start()
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                due.put((time.monotonic() + delay, data))
        due.put((0.0, None))


class Client:
    def __init__(self, port: int, token: str):
        self.connection = http.client.HTTPConnection(harness.HOST, port, timeout=60)
        self.token = token

    def call(self, method: str, path: str, body: bytes | None = None, headers=None):
        sent = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        self.connection.request(method, path, body=body, headers=sent)
        response = self.connection.getresponse()
        data = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
        return response, data


def put_objects(client: Client, count: int, tag: str) -> list[float]:
    body, times = harness.object_body(1024), []
    for number in range(count):
        began = time.perf_counter()
        client.call("PUT", f"/v1/namespaces/bench-put/objects/{tag}/{number}.json", body)
        times.append(time.perf_counter() - began)
    return times


def sync_cycles(client: Client, count: int) -> list[float]:
    manifest = json.dumps(harness.sample_manifest()).encode()
    blob, times = os.urandom(64 * 1024), []
    for number in range(count):
        began = time.perf_counter()
        response, _ = client.call("GET", "/v1/namespaces/bench-cycle/metadata")
        etag = response.headers.get("ETag")
        match = {"If-Match": etag} if etag else {"If-None-Match": "*"}
        response, _ = client.call("PUT", "/v1/namespaces/bench-cycle/metadata", manifest,
                                  {"Content-Type": "application/json", **match})
        client.call("PUT", "/v1/namespaces/bench-cycle/blob", blob,
                    {"If-Match": response.headers["ETag"],
                     "X-OxideTerm-Revision": f"r{number}",
                     "Content-Type": "application/octet-stream"})
        times.append(time.perf_counter() - began)
    return times


def start(oxsync: str, where: list[str], folder: Path, name: str) -> Client:
    port = harness.free_port()
    process = harness.start_process([sys.executable, oxsync, "serve", "--listen",
                                     f"{harness.HOST}:{port}", *where], folder / f"{name}.log")
    harness.wait_until_up(port, process, "/health")
    token = harness.subprocess.run(
        [sys.executable, oxsync, "token", "create", "--name", "bench", "--namespace", "*",
         *where], capture_output=True, text=True, check=True).stdout.split()[0]
    return Client(port, token)


def through(url: str, port: int) -> str:
    """The database URL with its host and port replaced by the proxy's."""
    parts = urllib.parse.urlsplit(url)
    credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{credentials}{harness.HOST}:{port}"))


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--oxsync", default=str(harness.ROOT / "oxsync.py"))
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=10.0,
                        help="added to each PostgreSQL answer to count round trips")
    args = parser.parse_args(argv)
    harness.sigterm_to_keyboard_interrupt()
    folder = Path(harness.make_temp_dir("pg-writes"))
    parts = urllib.parse.urlsplit(args.database_url)
    proxy = DelayingProxy((parts.hostname, parts.port or 5432), args.delay_ms / 1000)
    proxy.start()
    try:
        clients = {"sqlite": start(args.oxsync, ["--db-path", str(folder / "sync.db")],
                                   folder, "sqlite"),
                   "postgres": start(args.oxsync, ["--database-url", args.database_url],
                                     folder, "postgres"),
                   "delayed": start(args.oxsync, ["--database-url",
                                                  through(args.database_url, proxy.port)],
                                    folder, "delayed")}
        times = {(store, kind): [] for store in clients for kind in ("put", "cycle")}
        for round_number in range(args.rounds):
            for store, client in clients.items():
                count = args.requests // (10 if store == "delayed" else 1)
                times[(store, "put")] += put_objects(client, count, f"{store}{round_number}")
                times[(store, "cycle")] += sync_cycles(client, max(1, count // 4))
        print(f"oxsync: {args.oxsync}")
        for kind, label in (("put", "PUT object"), ("cycle", "sync cycle")):
            lite, pg, slow = (median_ms(times[(store, kind)]) for store in clients)
            print(f"{label:11} median: SQLite {lite:.2f} ms, PostgreSQL {pg:.2f} ms "
                  f"(PostgreSQL at {lite / pg:.2f}x SQLite's rate); round trips to "
                  f"PostgreSQL: {(slow - pg) / args.delay_ms:.1f}")
        return 0
    finally:
        harness.stop_all()


if __name__ == "__main__":
    sys.exit(main())

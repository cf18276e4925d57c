"""Per-page latency of the admin listings (issue 22: under 50 ms a page at 5,000 namespaces).

    python3 bench/admin_api.py                       # SQLite, 1,000 then 5,000 namespaces
    python3 bench/admin_api.py --database-url postgresql://...   # a PostgreSQL store
    python3 bench/admin_api.py --sizes 1000,5000,20000 --repeats 30

Starts oxsync (bench/harness.py) on a fresh store, writes namespaces, tokens and devices
straight into it (as tests/conftest.py's seed_* fixtures do; each namespace's metadata is
a real-sized structured-v2 manifest), logs in to the admin API and
times each request on one keep-alive connection: the first page of every sort, a search,
and every page of a walk through all namespaces by size. Prints median, 95th percentile
and maximum in milliseconds, measured from the client (so HTTP and JSON are included),
and the server's CPU milliseconds per request (the warm-up request excluded from the
count, so slightly over). Wall-clock figures from a shared machine are noisy; the CPU
column much less so.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sqlite3
import statistics
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

PASSWORD = "bench-admin-password"
TARGET_MS = 50.0


def connect_store(server):
    if server.database_url:
        import psycopg
        return psycopg.connect(server.database_url, autocommit=True), "%s"
    return sqlite3.connect(server.db_path, timeout=30), "?"


def seed(server, start: int, stop: int) -> None:
    """Namespaces start..stop-1, and a token and a device for every fifth of them."""
    now = time.time()
    namespaces, tokens, devices = [], [], []
    for i in range(start, stop):
        name, etag = f"bench-{i:06d}", uuid.uuid4().hex
        metadata = json.dumps({**harness.sample_manifest(), "exists": True,
                               "revision": f"r{i}", "etag": etag})  # about 2.5 KB, as today
        namespaces.append((name, metadata, etag, now - i * 60, now - i * 30,
                           (i * 7919) % 10007 * 100, (i * 31) % 997 * 50, i % 40))
        if i % 5 == 0:
            tokens.append((f"tok{i:06d}", f"laptop-{i}", uuid.uuid4().hex * 2, name,
                           "read,write", now - i))
            devices.append((name, f"device-{i}", f"tok{i:06d}", now - i * 90, now - i * 60,
                            "ok" if i % 3 else "conflict", 200 if i % 3 else 412, now - i * 60))
    db, mark = connect_store(server)
    try:
        with db if not server.database_url else db.transaction():
            cursor = db.cursor()
            cursor.executemany(
                "INSERT INTO namespaces (name, metadata, etag, created_at, updated_at, "
                f"blob_bytes, object_bytes, version_count) VALUES ({', '.join([mark] * 8)})",
                namespaces)
            cursor.executemany(
                "INSERT INTO tokens (id, name, token_hash, namespace_pattern, permissions, "
                f"created_at) VALUES ({', '.join([mark] * 6)})", tokens)
            cursor.executemany(
                "INSERT INTO devices (namespace, device_id, token_id, first_seen_at, "
                "last_seen_at, last_result, last_status, last_result_at) "
                f"VALUES ({', '.join([mark] * 8)})", devices)
    finally:
        db.close()


def log_in(port: int) -> dict:
    answer = harness.request(port, "POST", "/admin/api/login",
                             json.dumps({"password": PASSWORD}).encode(),
                             {"Content-Type": "application/json"})
    if answer.status != 200:
        raise RuntimeError(f"login: {answer.status} {answer.body[:200]!r}")
    cookie = answer.headers["Set-Cookie"].split(";")[0]
    return {"Cookie": cookie}


class Timer:
    def __init__(self, port: int, headers: dict):
        self.connection = http.client.HTTPConnection(harness.HOST, port, timeout=60)
        self.headers = headers

    def get(self, path: str) -> tuple[float, dict]:
        started = time.perf_counter()
        self.connection.request("GET", path, headers=self.headers)
        response = self.connection.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
        return elapsed, json.loads(body)


def measure(timer: Timer, what: str, params: dict, repeats: int) -> list[float]:
    path = f"/admin/api/{what}?{urlencode(params)}"
    timer.get(path)  # warm
    return [timer.get(path)[0] for _ in range(repeats)]


def server_cpu(server, work) -> tuple[object, float]:
    """-> (work's result, CPU milliseconds the server spent meanwhile): on a busy machine
    this moves far less than wall-clock time does."""
    before = harness.tree_cpu_seconds(server.serving_pid())
    result = work()
    return result, (harness.tree_cpu_seconds(server.serving_pid()) - before) * 1000


def walk(timer: Timer, params: dict) -> tuple[list[float], int]:
    """Every page of a listing -> (latency of each page, items seen)."""
    times, seen, cursor = [], 0, None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        elapsed, page = timer.get(f"/admin/api/namespaces?{urlencode(query)}")
        times.append(elapsed)
        seen += len(page["namespaces"])
        cursor = page["nextCursor"]
        if cursor is None:
            return times, seen


def row(label: str, times: list[float], cpu_ms: float) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    flag = "ok" if statistics.median(times) < TARGET_MS else "OVER"
    return (f"  {label:<44} {statistics.median(times):7.2f} {p95:7.2f} {max(times):7.2f}"
            f" {cpu_ms / len(times):7.2f}  {len(times):4d}  {flag}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,5000", help="namespace counts, ascending")
    parser.add_argument("--repeats", type=int, default=20, help="requests per measurement")
    parser.add_argument("--database-url", help="measure on this (empty) PostgreSQL database")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    server = harness.OxsyncServer(harness.OUT / "logs", None, database_url=args.database_url,
                                  extra_env={"ADMIN_PASSWORD": PASSWORD})
    harness.OUT.joinpath("logs").mkdir(parents=True, exist_ok=True)
    harness.sigterm_to_keyboard_interrupt()
    try:
        server.start()
        timer = Timer(server.port, log_in(server.port))
        seeded = 0
        print(f"store: {'PostgreSQL' if args.database_url else 'SQLite'}; milliseconds per "
              f"request (target: median under {TARGET_MS:.0f} ms); load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        for size in sizes:
            seed(server, seeded, size)
            seeded = size
            print(f"\n{size} namespaces, {size // 5} tokens, {size // 5} devices"
                  f"{'':<8}median     p95     max  server CPU   n")
            for label, what, params in (
                    ("namespaces, first page by name", "namespaces", {}),
                    ("namespaces, first page by size", "namespaces", {"sort": "size"}),
                    ("namespaces, first page by last write", "namespaces",
                     {"sort": "lastWrite"}),
                    ("namespaces, first page by versions", "namespaces",
                     {"sort": "versions"}),
                    ("namespaces, search 'bench-0042'", "namespaces", {"q": "bench-0042"}),
                    ("namespaces, search, by size", "namespaces", {"q": "7", "sort": "size"}),
                    ("namespaces, 500 per page by size", "namespaces",
                     {"sort": "size", "limit": 500}),
                    ("tokens, first page", "tokens", {}),
                    ("tokens, search", "tokens", {"q": "laptop-12"}),
                    ("devices, first page", "devices", {}),
                    ("devices, problems", "devices", {"status": "problem"})):
                times, cpu = server_cpu(server, lambda: measure(timer, what, params,
                                                                 args.repeats))
                print(row(label, times, cpu))
            (times, seen), cpu = server_cpu(server, lambda: walk(timer, {"sort": "size",
                                                                         "limit": 100}))
            assert seen == size, (seen, size)
            print(row(f"walk by size, every page of 100 ({len(times)})", times, cpu))
    finally:
        harness.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())

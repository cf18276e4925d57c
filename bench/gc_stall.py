"""Retention at scale (issue 21): how long a pass takes, and what it does to sync writes.

    python3 bench/gc_stall.py                      # 5,000 namespaces x 36 versions, SQLite
    python3 bench/gc_stall.py --namespaces 500 --database-url postgresql://...
    python3 bench/gc_stall.py --oxsync /tmp/old/oxsync.py   # the same with another build

It builds the history straight through oxsync's own Records (much faster than through
HTTP): per namespace, a structured manifest of 10 sections (1 KB objects) and then one
version per hour two months ago, each changing one section. With the default 30-day
window, every version beyond the newest 32 is past retention, and so is each object only
such a version names. Then, with the server running and two clients each sending a 1 KB
PUT object every 10 ms:

1. baseline: PUT latency for a few seconds with no pass running;
2. a full pass with plenty to remove (POST /admin/api/gc, in the server, as the hourly
   pass and the admin page's button run it): its time, and PUT latency meanwhile;
3. a second pass, with nothing left to remove: its time.

It prints the figures and exits 0; numbers from a busy machine are noisy (compare runs
made back to back).
"""

from __future__ import annotations

import argparse
import copy
import http.client
import importlib.util
import json
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

ADMIN_PASSWORD = "gc-stall-bench-password"
DAY = 86400


def load_oxsync(path: str):
    spec = importlib.util.spec_from_file_location("oxsync_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def open_store(oxsync, db_path: str, database_url: str | None):
    return oxsync.PostgresStore(database_url) if database_url else \
        oxsync.SQLiteStore(db_path)


def entries(manifest: dict):
    """(section name, entry) of every section entry with a path."""
    for name, entry in manifest["sections"].items():
        if "path" in entry:
            yield name, entry
        else:
            yield from ((f"{name}.{key}", value) for key, value in entry.items())


def build_namespace(oxsync, tx, namespace: str, versions: int, started: float) -> None:
    manifest = harness.sample_manifest()
    body = harness.object_body(1024)
    sections = dict(entries(manifest))
    names = sorted(sections)

    def put(path: str, at: float) -> None:
        payload = tx.store_payload(body, None)
        tx.put_object(namespace, path, payload, len(body), str(uuid.uuid4()),
                      "application/json", at)

    tx.lock_namespace(namespace, started)
    for entry in sections.values():
        put(entry["path"], started)
    for version in range(versions):
        at = started + version * 3600
        changed = sections[names[version % len(names)]]
        changed["path"] = f"{changed['path'].rsplit('/', 1)[0]}/v{version:03d}.json"
        put(changed["path"], at)
        metadata = {"exists": True, **copy.deepcopy(manifest), "etag": str(uuid.uuid4()),
                    "revision": f"v{version}", "contentLength": 0}
        tx.save_metadata(namespace, metadata, at)
        tx.record_manifest(namespace, metadata, at, None)


def build(oxsync, store, namespaces: int, versions: int) -> None:
    started = time.time() - 60 * DAY
    began = time.monotonic()
    for number in range(namespaces):
        with store.write() as tx:
            build_namespace(oxsync, tx, f"user/{number:05d}", versions, started)
        if number % 500 == 499:
            print(f"  built {number + 1} namespaces ({time.monotonic() - began:.0f} s)",
                  flush=True)


class Writers:
    """Clients that each PUT a 1 KB object every `pause` seconds; latencies by phase."""

    def __init__(self, port: int, token: str, clients: int = 2, pause: float = 0.01):
        self.port, self.token, self.pause = port, token, pause
        self.phase, self.latencies, self.errors = "warmup", {}, 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(n,), daemon=True)
                        for n in range(clients)]

    def run(self, client: int) -> None:
        connection = http.client.HTTPConnection(harness.HOST, self.port, timeout=60)
        body, number = harness.object_body(1024), 0
        headers = {"Authorization": f"Bearer {self.token}"}
        while not self.stop.is_set():
            number += 1
            path = f"/v1/namespaces/writer-{client}/objects/load/{number}.json"
            phase, began = self.phase, time.perf_counter()
            connection.request("PUT", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            elapsed = time.perf_counter() - began
            if response.status not in (200, 201):
                self.errors += 1
            self.latencies.setdefault(phase, []).append(elapsed)
            time.sleep(self.pause)
        connection.close()

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def percentiles(values: list[float]) -> str:
    if not values:
        return "no requests"
    ordered = sorted(values)

    def at(share):
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000
    return (f"n={len(ordered)} p50={statistics.median(ordered) * 1000:.1f} ms "
            f"p95={at(0.95):.1f} ms p99={at(0.99):.1f} ms max={ordered[-1] * 1000:.1f} ms")


def admin_session(port: int) -> dict:
    answer = harness.request(port, "POST", "/admin/api/login",
                             json.dumps({"password": ADMIN_PASSWORD}).encode(),
                             {"Content-Type": "application/json"})
    cookie = answer.headers["Set-Cookie"].split(";", 1)[0]
    return {"Cookie": cookie, "X-CSRF-Token": json.loads(answer.body)["csrfToken"]}


def timed_pass(port: int, headers: dict) -> tuple[float, dict]:
    began = time.perf_counter()
    answer = harness.request(port, "POST", "/admin/api/gc", headers=headers, timeout=3600)
    return time.perf_counter() - began, json.loads(answer.body)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespaces", type=int, default=5000)
    parser.add_argument("--versions", type=int, default=36,
                        help="versions per namespace (those beyond 32 are past retention)")
    parser.add_argument("--oxsync", default=str(harness.ROOT / "oxsync.py"),
                        help="the oxsync.py to measure (default: this checkout's)")
    parser.add_argument("--database-url", help="a PostgreSQL database to fill (emptied "
                        "first is up to you); default: a new SQLite file")
    parser.add_argument("--baseline-seconds", type=float, default=5)
    args = parser.parse_args(argv)
    harness.sigterm_to_keyboard_interrupt()
    oxsync = load_oxsync(args.oxsync)
    folder = Path(harness.make_temp_dir("gc-stall"))
    db_path = str(folder / "sync.db")
    try:
        print(f"building {args.namespaces} namespaces x {args.versions} versions ...",
              flush=True)
        began = time.monotonic()
        store = open_store(oxsync, db_path, args.database_url)
        build(oxsync, store, args.namespaces, args.versions)
        store.close()
        print(f"built in {time.monotonic() - began:.0f} s", flush=True)
        where = ["--database-url", args.database_url] if args.database_url else \
            ["--db-path", db_path]
        token = harness.subprocess.run(
            [sys.executable, args.oxsync, "token", "create", "--name", "bench",
             "--namespace", "*", *where], capture_output=True, text=True,
            check=True).stdout.split()[0]
        port = harness.free_port()
        env = {**os.environ, "ADMIN_PASSWORD": ADMIN_PASSWORD,
               "REQUEST_TIMEOUT_SECONDS": "3600"}  # a full pass here takes minutes
        server = harness.start_process(
            [sys.executable, args.oxsync, "serve", "--listen", f"{harness.HOST}:{port}",
             *where], folder / "server.log", env=env)
        harness.wait_until_up(port, server, "/health")
        headers = admin_session(port)
        with Writers(port, token) as writers:
            time.sleep(1)
            writers.phase = "baseline"
            time.sleep(args.baseline_seconds)
            writers.phase = "full pass"
            full_seconds, full = timed_pass(port, headers)
            writers.phase = "after"
            time.sleep(0.5)
            writers.phase = "empty pass"
            empty_seconds, empty = timed_pass(port, headers)
            writers.phase = "done"
        print(f"oxsync: {args.oxsync}; store: "
              f"{'PostgreSQL' if args.database_url else 'SQLite'}")
        print(f"full pass:  {full_seconds:.2f} s, removed {full}")
        print(f"empty pass: {empty_seconds:.3f} s, removed {empty}")
        for phase in ("baseline", "full pass", "empty pass"):
            print(f"PUT object during {phase}: {percentiles(writers.latencies.get(phase, []))}")
        if writers.errors:
            print(f"{writers.errors} PUTs failed")
            return 1
        return 0
    finally:
        harness.stop_all()


if __name__ == "__main__":
    sys.exit(main())

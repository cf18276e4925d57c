#!/usr/bin/env python3
"""How the operator's commands grow with the data (issue 21).

    python3 bench/scale.py                        # 100 and 400 namespaces, about 2 minutes
    python3 bench/scale.py --sizes 1000,5000 --syncs 40 --snapshots 3   # see bench/README.md

Builds namespaces of realistic sync history through the sync API (structured syncs that
change a few sections each time with objects of 1-50 KB, and a few snapshots of 10 KB -
2 MB), written by several client threads at once, each on its own keep-alive connection.
At each size it times the operator's operations and, at the end, prints each one's growth
against the data's growth (1.0 x: linear). The data grows in place: the second size adds
namespaces to the first. PostgreSQL: OXSYNC_BENCH_POSTGRES_URL (a URL that may create
databases), else a throwaway cluster as in bench/run.py. Raw numbers go to
bench/out/scale.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import run  # noqa: E402  (postgres_for_bench, log)
from harness import HOST, KiB, MiB  # noqa: E402

ADMIN_PASSWORD = "scale-bench-admin-password"
KINDS = ("connections", "forwards", "quickCommands", "serialProfiles", "telnetProfiles",
         "moshProfiles", "remoteDesktopProfiles", "standaloneSftpProfiles",
         "sensitiveCredentials", "settings")
POOL = os.urandom(4 * MiB)  # payload bytes are slices of this: no client-side cost


def log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def payload(rng: random.Random, size: int) -> bytes:
    if size <= len(POOL):
        start = rng.randrange(0, len(POOL) - size + 1)
        return POOL[start:start + size]
    return (POOL * (size // len(POOL) + 1))[:size]


class Client:
    """One keep-alive connection of a loader thread."""

    def __init__(self, port: int, auth: str):
        self.port, self.auth = port, auth
        self.connection = http.client.HTTPConnection(HOST, port, timeout=120)

    def send(self, method: str, path: str, body: bytes = b"", headers=None) -> int:
        headers = {"Authorization": self.auth, **(headers or {})}
        for attempt in (1, 2):
            try:
                self.connection.request(method, path, body=body, headers=headers)
                response = self.connection.getresponse()
                response.read()
                return response.status
            except (OSError, http.client.HTTPException):
                self.connection.close()
                self.connection = http.client.HTTPConnection(HOST, self.port, timeout=120)
                if attempt == 2:
                    raise
        return 0


def write_namespace(client: Client, name: str, syncs: int, snapshots: int, seed: int) -> int:
    """A namespace's history: `syncs` structured syncs, each uploading the sections that
    changed (all of them the first time, then 1-3) and then the manifest; `snapshots`
    snapshots spread over them -> bytes uploaded."""
    rng, base = random.Random(seed), f"/v1/namespaces/{quote(name, safe='')}"
    sections, sent = {}, 0
    snapshot_at = {int(i * syncs / snapshots) for i in range(snapshots)} if snapshots else set()
    for sync in range(syncs):
        for kind in (KINDS if sync == 0 else rng.sample(KINDS, rng.randint(1, 3))):
            revision = f"fnv1a-{rng.getrandbits(32):08x}"
            path = f"structured/{kind}/{revision}.json"
            body = payload(rng, log_uniform(rng, KiB, 50 * KiB))
            expect(client.send("PUT", f"{base}/objects/{path}", body), "object")
            sections[kind] = {"revision": revision, "path": path,
                              "recordCount": rng.randint(1, 40),
                              "contentType": "application/json"}
            sent += len(body)
        manifest = {"format": "structured-v2", "revision": f"r{sync}-{rng.getrandbits(32):x}",
                    "deviceId": f"device-{seed % 3}", "sections": sections,
                    "sectionRevisions": {k: v["revision"] for k, v in sections.items()},
                    "scope": {"sections": sorted(sections), "pluginIds": None}}
        expect(client.send("PUT", f"{base}/metadata", json.dumps(manifest).encode(),
                           {"Content-Type": "application/json"}), "metadata")
        if sync in snapshot_at:
            body = payload(rng, log_uniform(rng, 10 * KiB, 2 * MiB))
            expect(client.send("PUT", f"{base}/blob", body,
                               {"X-OxideTerm-Revision": f"snap-{sync}",
                                "Content-Type": "application/vnd.oxideterm.oxide"}), "blob")
            sent += len(body)
    return sent


def expect(status: int, what: str) -> None:
    if status not in (200, 201):
        raise RuntimeError(f"PUT {what} answered {status}")


def load(server, first: int, last: int, args) -> int:
    """Namespaces first..last-1, written by args.loaders threads at once -> bytes sent."""
    local = threading.local()

    def one(number: int) -> int:
        if not hasattr(local, "client"):
            local.client = Client(server.port, server.auth)
        return write_namespace(local.client, f"scale/user-{number:06d}", args.syncs,
                               args.snapshots, number)
    with ThreadPoolExecutor(args.loaders) as pool:
        return sum(pool.map(one, range(first, last)))


# -- the operations timed at each size ---------------------------------------------

class Admin:
    """The admin page's session: login once, then cookie (and CSRF for POST)."""

    def __init__(self, port: int):
        self.port = port
        answer = harness.request(port, "POST", "/admin/api/login",
                                 json.dumps({"password": ADMIN_PASSWORD}).encode(),
                                 {"Content-Type": "application/json"})
        if answer.status != 200:
            raise RuntimeError(f"admin login answered {answer.status}")
        cookie = next(value.split(";")[0] for name, value in answer.headers.items()
                      if name.lower() == "set-cookie" and value.startswith("oxsync_session="))
        self.headers = {"Cookie": cookie, "X-CSRF-Token": answer.json["csrfToken"]}

    def call(self, method: str, path: str) -> float:
        started = time.perf_counter()
        answer = harness.request(self.port, method, path, headers=self.headers, timeout=600)
        if answer.status != 200:
            raise RuntimeError(f"{method} {path} answered {answer.status}")
        return time.perf_counter() - started


def median_of(times: int, action) -> float:
    return statistics.median(action() for _ in range(times))


def timed_command(result: dict, name: str, argv: list[str], env: dict) -> None:
    """Run an oxsync command; record its wall time, its CPU time (user + system: on a
    shared machine the wall time includes waiting for a core), and the rows it copied."""
    cpu, started = harness.children_cpu_seconds(), time.perf_counter()
    done = subprocess.run(harness.oxsync_command() + argv, capture_output=True, text=True,
                          env=env, timeout=3600)
    result["seconds"][name] = time.perf_counter() - started
    result["cpu_seconds"][name] = harness.children_cpu_seconds() - cpu
    if done.returncode != 0:
        raise RuntimeError(f"oxsync {argv[0]} exited {done.returncode}: {done.stderr[-500:]}")
    _, found, summary = done.stderr.rpartition("checked every table: ")
    if found:
        result["rows_copied"][name] = sum(int(part.split()[0])
                                          for part in summary.strip().split(", "))


def startup_seconds(server, env: dict) -> float:
    """A second server on the same store, from exec to its first /health answer."""
    port = harness.free_port()
    started = time.perf_counter()
    process = harness.start_process(
        harness.oxsync_command() + ["serve", "--listen", f"{HOST}:{port}", "--db-path",
                                    server.db_path], harness.OUT / "logs" / "scale-start.log",
        env=env, cwd=server.dir)
    try:
        harness.wait_until_up(port, process, "/health", timeout=600)
        return time.perf_counter() - started
    finally:
        harness.stop_process(process)


def latency_during_gc(server, admin: Admin) -> dict:
    """PUT object latencies from two clients while the cleanup (POST /admin/api/gc) runs,
    repeated until it has run for at least 2 s in all."""
    latencies, done = [], threading.Event()

    def sync_load(number: int) -> None:
        client = Client(server.port, server.auth)
        body, index = payload(random.Random(number), 4 * KiB), 0
        while not done.is_set():
            started = time.perf_counter()
            expect(client.send("PUT", f"/v1/namespaces/scale%2Fprobe-{number}/objects/"
                                      f"p/{index % 200}.json", body), "object")
            latencies.append(time.perf_counter() - started)
            index += 1
    threads = [threading.Thread(target=sync_load, args=(n,), daemon=True) for n in (1, 2)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    latencies.clear()
    passes, gc_seconds = 0, 0.0
    while gc_seconds < 2.0 or passes == 0:
        gc_seconds += admin.call("POST", "/admin/api/gc")
        passes += 1
    done.set()
    for thread in threads:
        thread.join(30)
    ordered = sorted(latencies)

    def pct(p):
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000
    return {"gc_pass_s": gc_seconds / passes, "puts": len(ordered),
            "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99)}


def measure(server, size: int, postgres, admin_url: str, work: Path, env: dict) -> dict:
    """Every operation once (the quick API reads: median of 3) on the data as it is now."""
    admin, rng = Admin(server.port), random.Random(size)
    store = ["--db-path", server.db_path]
    result = {"namespaces": size, "db_bytes": os.path.getsize(server.db_path), "seconds": {},
              "cpu_seconds": {}, "rows_copied": {}}
    times = result["seconds"]
    times["admin namespaces list"] = median_of(3, lambda: admin.call(
        "GET", "/admin/api/namespaces?limit=100"))
    times["admin stats"] = median_of(3, lambda: admin.call("GET", "/admin/api/stats"))
    names = [f"scale/user-{rng.randrange(size):06d}" for _ in range(5)]
    times["history (one namespace)"] = statistics.median(admin.call(
        "GET", f"/admin/api/namespaces/{quote(name, safe='')}/history") for name in names)
    times["gc (cleanup pass)"] = admin.call("POST", "/admin/api/gc")
    result["sync_during_gc"] = latency_during_gc(server, admin)
    times["start-up"] = startup_seconds(server, env)
    backup = work / f"backup-{size}.db"
    timed_command(result, "backup", ["backup", "--to", str(backup), *store], env)
    timed_command(result, "verify-backup", ["verify-backup", str(backup)], env)
    timed_command(result, "copy-store SQLite -> SQLite",
                  ["copy-store", "--to", str(work / f"copy-{size}.db"), *store], env)
    if postgres:
        url = postgres.new_database(admin_url)
        timed_command(result, "copy-store SQLite -> PostgreSQL",
                      ["copy-store", "--to", url, *store], env)
        timed_command(result, "copy-store PostgreSQL -> SQLite",
                      ["copy-store", "--to", str(work / f"back-{size}.db"),
                       "--database-url", url], env)
        timed_command(result, "backup --database-url",
                      ["backup", "--to", str(work / f"pg-backup-{size}.db"),
                       "--database-url", url], env)
    for leftover in work.glob(f"*-{size}.db*"):
        leftover.unlink()
    return result


# -- report ------------------------------------------------------------------------

def report(results: list[dict], args) -> str:
    first, last = results[0], results[-1]
    growth = last["db_bytes"] / first["db_bytes"]
    lines = [f"Sizes: " + ", ".join(f"{r['namespaces']:,} namespaces ({r['db_bytes'] / 1e6:,.0f} "
                                    "MB)" for r in results)
             + f"; {args.syncs} syncs and {args.snapshots} snapshots per namespace. "
             f"Data growth {first['namespaces']:,} -> {last['namespaces']:,}: "
             f"{growth:.2f} x the bytes.", "",
             "| operation | " + " | ".join(f"{r['namespaces']:,} ns" for r in results)
             + " | growth | growth / data growth |", "|---|" + "---:|" * (len(results) + 2)]
    for name in first["seconds"]:
        cells = [f"{r['seconds'][name]:.3f} s" for r in results]
        rows = [r.get("rows_copied", {}).get(name) for r in results]
        if all(rows):
            cells = [f"{c} ({n / r['seconds'][name]:,.0f} rows/s)"
                     for c, n, r in zip(cells, rows, results)]
        ratio = last["seconds"][name] / max(first["seconds"][name], 1e-6)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f} x | "
                     f"{ratio / growth:.2f} |")
    lines += ["", "| sync while gc runs | " + " | ".join(f"{r['namespaces']:,} ns"
                                                          for r in results) + " |",
              "|---|" + "---:|" * len(results)]
    for key, label in (("gc_pass_s", "gc pass (s)"), ("puts", "PUT object answered"),
                       ("p50_ms", "p50 (ms)"), ("p95_ms", "p95 (ms)"), ("p99_ms", "p99 (ms)")):
        lines.append(f"| {label} | " + " | ".join(
            f"{r['sync_during_gc'][key]:,.1f}" if isinstance(r['sync_during_gc'][key], float)
            else f"{r['sync_during_gc'][key]:,}" for r in results) + " |")
    for r in results:
        ratios = ", ".join(
            f"{name.removeprefix('copy-store ')} {r['seconds'][name] / r['seconds']['backup']:.2f}"
            f" ({r['cpu_seconds'][name] / r['cpu_seconds']['backup']:.2f})"
            for name in r["seconds"] if name.startswith("copy-store"))
        lines.append(f"\nAt {r['namespaces']:,} namespaces, copy-store takes x backup's wall "
                     f"time (x its CPU time, for the copy process alone): {ratios}.")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Time oxsync's operator commands at growing "
                                     "data sizes and print how each one grows.")
    parser.add_argument("--sizes", default="100,400",
                        help="namespace counts, ascending, comma separated (default 100,400)")
    parser.add_argument("--syncs", type=int, default=8,
                        help="structured syncs per namespace (default 8)")
    parser.add_argument("--snapshots", type=int, default=1,
                        help="snapshots per namespace (default 1)")
    parser.add_argument("--loaders", type=int, default=8,
                        help="client threads writing namespaces at once (default 8)")
    parser.add_argument("--no-postgres", action="store_true",
                        help="skip the copies into and out of PostgreSQL")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = parser.parse_args(argv)
    args.sizes = sorted(int(size) for size in args.sizes.split(",") if size.strip())
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    harness.sigterm_to_keyboard_interrupt()
    (harness.OUT / "logs").mkdir(parents=True, exist_ok=True)
    postgres = admin_url = cluster = None
    if not args.no_postgres:
        postgres, admin_url, cluster = run.postgres_for_bench()
    server = harness.OxsyncServer(harness.OUT / "logs", None, name="scale",
                                  extra_env={"ADMIN_PASSWORD": ADMIN_PASSWORD,
                                             "LOG_LEVEL": "warning"})
    results, loaded, started = [], 0, time.monotonic()
    try:
        server.start()
        env = {k: v for k, v in os.environ.items()
               if k not in ("ENCRYPTION_KEY", "DB_PATH", "DATABASE_URL")}
        work = Path(harness.make_temp_dir("scale-copies"))
        for size in args.sizes:
            began = time.monotonic()
            sent = load(server, loaded, size, args)
            seconds = time.monotonic() - began
            run.log(f"loaded namespaces {loaded}..{size - 1}: {sent / 1e6:,.0f} MB in "
                    f"{seconds:.1f} s ({(size - loaded) / seconds:,.1f} namespaces/s)")
            loaded = size
            result = measure(server, size, postgres, admin_url, work, env)
            result["load_s"] = seconds
            results.append(result)
            run.log(f"{size} namespaces: " + ", ".join(
                f"{name} {value:.2f} s" for name, value in result["seconds"].items()))
    except KeyboardInterrupt:
        run.log("interrupted: stopping everything that was started")
        return 130
    finally:
        harness.stop_all(args.keep)
        if cluster:
            cluster.remove()
    text = report(results, args)
    print("\n" + text)
    harness.OUT.mkdir(parents=True, exist_ok=True)
    (harness.OUT / "scale.md").write_text(text + "\n")
    with open(harness.OUT / "scale.json", "w") as file:
        json.dump({"args": vars(args), "results": results,
                   "loadavg": open("/proc/loadavg").read().split()[:3],
                   "elapsed_s": time.monotonic() - started}, file, indent=1)
    run.log(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

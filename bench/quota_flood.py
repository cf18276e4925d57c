"""The flood of issue 24, finding 2, measured: one write token sends 250 KB manifests as
fast as it can to one namespace, then tries to bring 500 namespaces into being.

    python3 bench/quota_flood.py                      # this checkout, default settings
    python3 bench/quota_flood.py --before fc84cc9     # also a build from git, in turns

Prints, per build: manifests accepted and their median answer time, how much the SQLite
database grew (file + WAL, after a checkpoint), how many history rows and bytes are kept,
how many of the 500 namespaces were created, and the size of the history answer asked
with --limit 500 (the issue saw 128 MB). A build given with --before is run first, then
this checkout, --rounds times, alternately (this machine's speed drifts between runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

NAMESPACE = "team%2Fflood"


def flood(server, seconds: float, connections: int) -> list[float]:
    """PUT 250 KB manifests from `connections` clients for `seconds` -> answer times."""
    times, stop = [], time.monotonic() + seconds
    padding = "x" * 250_000

    def client(number: int) -> None:
        connection = harness.http.client.HTTPConnection(harness.HOST, server.port, timeout=60)
        sent = 0
        while time.monotonic() < stop:
            sent += 1
            body = json.dumps({"format": "structured-v2", "revision": f"c{number}-{sent}",
                               "deviceId": "flood", "padding": padding}).encode()
            started = time.monotonic()
            connection.request("PUT", f"/v1/namespaces/{NAMESPACE}/metadata", body,
                               server.headers({"Content-Type": "application/json"}))
            answer = connection.getresponse()
            answer.read()
            if answer.status == 200:
                times.append(time.monotonic() - started)
        connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


def database_bytes(server) -> int:
    server.checkpoint()
    return sum(os.path.getsize(server.db_path + suffix) for suffix in ("", "-wal")
               if os.path.exists(server.db_path + suffix))


def new_namespaces(server, count: int) -> int:
    created = 0
    for number in range(count):
        answer = harness.request(server.port, "PUT", f"/v1/namespaces/team%2Fn{number}/metadata",
                                 b'{"revision": "r1"}',
                                 server.headers({"Content-Type": "application/json"}))
        created += answer.status == 200
    return created


def measure(name: str, command: list[str], seconds: float, connections: int,
            log_dir: Path) -> dict:
    os.environ["OXSYNC_CMD"] = " ".join(command)
    server = harness.OxsyncServer(log_dir, None, name=name)
    try:
        server.start()
        before = database_bytes(server)
        times = flood(server, seconds, connections)
        after = database_bytes(server)
        with sqlite3.connect(server.db_path) as db:
            rows, kept = db.execute("SELECT count(*), coalesce(sum(length(manifest)), 0) "
                                    "FROM manifests WHERE namespace = 'team/flood'").fetchone()
        created = new_namespaces(server, 500)
        history = subprocess.run(command + ["namespace", "history", "team/flood", "--limit",
                                            "500", "--json", "--db-path", server.db_path],
                                 capture_output=True, timeout=300)
    finally:
        server.stop()
    return {"build": name, "accepted": len(times),
            "median_ms": statistics.median(times) * 1000 if times else 0.0,
            "db_before": before, "db_after": after, "rows": rows, "kept": kept,
            "created": created, "history_answer": len(history.stdout)}


def build_from_git(revision: str, folder: str) -> list[str]:
    root = Path(__file__).resolve().parent.parent
    for name in ("oxsync.py", "admin.html"):
        data = subprocess.run(["git", "-C", str(root), "show", f"{revision}:{name}"],
                              capture_output=True, check=True).stdout
        Path(folder, name).write_bytes(data)
    return [sys.executable, str(Path(folder, "oxsync.py"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15, help="flood length (15)")
    parser.add_argument("--connections", type=int, default=4, help="flooding clients (4)")
    parser.add_argument("--before", metavar="GIT_REVISION", help="also run this build")
    parser.add_argument("--rounds", type=int, default=1, help="alternate runs per build (1)")
    args = parser.parse_args()
    builds = [("after", harness.oxsync_command())]
    folder = tempfile.mkdtemp(prefix="oxsync-bench-before-")
    if args.before:
        builds.insert(0, (f"before ({args.before})", build_from_git(args.before, folder)))
    log_dir = Path(tempfile.mkdtemp(prefix="oxsync-bench-logs-"))
    results = []
    try:
        for _ in range(args.rounds):
            for name, command in builds:
                results.append(measure(name, command, args.seconds, args.connections, log_dir))
    finally:
        harness.stop_all()
    print(f"{args.connections} connections x {args.seconds:.0f} s of 250 KB manifests to one "
          "namespace, default settings")
    print(f"{'build':<22} {'accepted':>8} {'median':>8} {'db before':>10} {'db after':>10} "
          f"{'rows kept':>9} {'kept MB':>8} {'new ns':>7} {'history answer':>15}")
    for r in results:
        print(f"{r['build']:<22} {r['accepted']:>8} {r['median_ms']:>6.1f}ms "
              f"{r['db_before'] / 1e6:>8.2f}MB {r['db_after'] / 1e6:>8.1f}MB {r['rows']:>9} "
              f"{r['kept'] / 1e6:>8.1f} {r['created']:>4}/500 {r['history_answer'] / 1e6:>13.1f}MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

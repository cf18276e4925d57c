#!/usr/bin/env python3
"""oxsync benchmark: oxsync against its ceiling, WsgiDAV and nginx WebDAV, in one run.

    python3 bench/run.py            # full run, about 8 minutes on 2 cores
    python3 bench/run.py --quick    # about 2 minutes, for a smoke check of the numbers
    OXSYNC_CMD="python3 dist/oxsync.pyz" python3 bench/run.py   # another build

Every server is started on 127.0.0.1 on a free port, driven with wrk (keep-alive
connections; Lua scripts in bench/lua/) and stopped again, also on Ctrl-C or errors.
Prints a table and writes bench/RESULTS.md; raw numbers go to bench/out/results.json and
server logs to bench/out/logs/. See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import http.client
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import HOST, KiB, MiB  # noqa: E402

WORKLOADS = {
    "get": "1. GET metadata",
    "put": "2. PUT 4 KiB object",
    "cycle": "3. sync cycle (GET metadata, PUT 64 KiB blob, GET blob)",
}
PEERS = ("ceiling", "wsgidav", "nginx")
OBJECT_SIZE = 4 * KiB
CYCLE_BLOB = 64 * KiB
BIG_BLOB = 64 * MiB
MB = 1e6   # MB/s means 10^6 bytes per second throughout

TARGETS = [
    ("get16", "GET metadata at 16 connections: oxsync >= 0.8 x ceiling (req/s)"),
    ("cycle16", "Sync cycle at 16 connections: oxsync >= 1.5 x WsgiDAV (cycles/s)"),
    ("rss", "64 MiB encrypted upload: server peak RSS above idle <= 3 x blob size (192 MiB)"),
    ("crypto", "Encryption (ChaCha20-Poly1305, cryptography) >= 300 MB/s on one core"),
    ("p99", "GET metadata at 64 connections: p99 < 50 ms"),
    ("usage", "No per-request write for token usage on reads (WAL growth during GET runs)"),
    ("pg_get", "GET metadata at 16 connections: PostgreSQL (1 process) >= 0.5 x SQLite"),
]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------
# Machine facts
# ---------------------------------------------------------------------------

def command_output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (done.stdout + done.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return "unavailable"


def package_version(name: str) -> str:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # noqa: BLE001
        return "not installed"


def machine_facts() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as file:
            model = next((line.split(":", 1)[1].strip() for line in file
                          if line.startswith("model name")), model)
    except OSError:
        pass
    oxsync_version = command_output(harness.oxsync_command() + ["--version"]).splitlines()
    commit = command_output(["git", "-C", str(harness.ROOT), "rev-parse", "--short", "HEAD"])
    dirty = command_output(["git", "-C", str(harness.ROOT), "status", "--porcelain",
                            "--", "oxsync.py"])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "oxsync": (oxsync_version[-1] if oxsync_version else "?") +
                  f" (commit {commit}{', oxsync.py modified' if dirty else ''})",
        "oxsync_cmd": " ".join(harness.oxsync_command()),
        "wrk": command_output(["wrk", "--version"]).splitlines()[0].split(" Copyright")[0]
               if command_output(["which", "wrk"]) else "not installed",
        "nginx": command_output(["nginx", "-v"]).replace("nginx version: nginx/", ""),
        "wsgidav": package_version("wsgidav"),
        "cheroot": package_version("cheroot"),
        "cryptography": package_version("cryptography"),
        "sqlite": __import__("sqlite3").sqlite_version,
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
    }


# ---------------------------------------------------------------------------
# Workloads 1-3 (wrk)
# ---------------------------------------------------------------------------

RUN_NUMBERS = itertools.count(1)


def wrk_workload(server, workload: str, connections: int, duration: int, cpus) -> dict:
    if workload == "get":
        raw = harness.run_wrk(server, "get.lua", server.get_path(), connections, 1, duration,
                              headers=server.headers(), cpus=cpus)
    elif workload == "put":
        # a fresh name prefix per run, so every PUT creates a new object / file
        prefix = f"{server.put_prefix()}r{next(RUN_NUMBERS)}-"
        raw = harness.run_wrk(server, "put.lua", "/", connections, 1, duration,
                              [prefix, str(OBJECT_SIZE), server.auth or "-"], cpus=cpus)
    else:
        mode = "oxsync" if server.kind == "sync" else "dav"
        raw = harness.run_wrk(server, "cycle.lua", "/", connections, connections, duration,
                              [mode, server.cycle_prefix(), str(CYCLE_BLOB),
                               server.auth or "-"], cpus=cpus)
    seconds = raw["duration_us"] / 1e6
    result = {
        "workload": workload, "server": server.name, "connections": connections,
        "requests": raw["requests"], "req_s": raw["requests"] / seconds,
        "p50_ms": raw["p50_us"] / 1000, "p99_ms": raw["p99_us"] / 1000,
        "errors": raw["status_errors"] + raw["connect_errors"] + raw["read_errors"]
        + raw["write_errors"] + raw["timeouts"],
        "server_cpu": raw["server_cpu_s"] / seconds, "wrk_cpu": raw["wrk_cpu_s"] / seconds,
        "raw": raw,
    }
    if workload == "get":
        result["rate"] = result["req_s"]
        result["mb_s"] = raw["bytes"] / seconds / MB
    elif workload == "put":
        result["rate"] = result["req_s"]
        result["mb_s"] = raw["requests"] * OBJECT_SIZE / seconds / MB
    else:
        result["rate"] = raw["cycles"] / seconds
        result["conflicts"] = raw["conflicts"]
        # The script checks every status itself: 412s are conflicts, anything else
        # unexpected is a failure (wrk's own count lumps 412s in with errors).
        result["errors"] += raw["failures"] - raw["status_errors"]
        result["mb_s"] = raw["cycles"] * 2 * CYCLE_BLOB / seconds / MB
        if raw.get("cycle_us_count"):
            result["p50_ms"] = raw["cycle_us_p50_us"] / 1000
            result["p99_ms"] = raw["cycle_us_p99_us"] / 1000
            result["latency_of"] = "cycle"
    return result


# ---------------------------------------------------------------------------
# Workload 4: one 64 MiB blob up and down (Python client)
# ---------------------------------------------------------------------------

PAIRS = [("get", ("oxsync", "ceiling")), ("cycle", ("oxsync", "wsgidav"))]


def paired_workload(names: tuple[str, str], workload: str, connections: int, rounds: int,
                    duration: int, log_dir: Path, server_cpus, load_cpus) -> dict:
    """Two servers up at once (the idle one costs nothing), measured in turns: a, b, a, b...

    On a shared machine whose speed drifts from minute to minute, two measurements taken
    minutes apart give a ratio anywhere from 0.5 to 0.9 for the same code; the ratio of
    the medians of interleaved runs is what the two targets that are ratios are judged on.
    """
    log_dir = log_dir / "paired"
    log_dir.mkdir(exist_ok=True)
    servers = [harness.SERVER_CLASSES[name](log_dir, server_cpus) for name in names]
    rates = {name: [] for name in names}
    try:
        for server in servers:
            server.start()
            server.seed()
            wrk_workload(server, workload, connections, 1, load_cpus)  # warm-up
        for _ in range(rounds):
            for name, server in zip(names, servers):
                result = wrk_workload(server, workload, connections, duration, load_cpus)
                if result["errors"]:
                    raise RuntimeError(f"{name} {workload}: {result['errors']} errors")
                rates[name].append(result["rate"])
    finally:
        for server in servers:
            server.stop()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {"workload": workload, "connections": connections, "servers": list(names),
            "duration": duration, "rates": rates, "medians": medians,
            "ratio": medians[names[0]] / medians[names[1]]}


# ---------------------------------------------------------------------------
# Stores: SQLite (one process) and PostgreSQL (one and two processes), issue 14
# ---------------------------------------------------------------------------

STORE_SETUPS = (("SQLite, 1 process", "sqlite", 1), ("PostgreSQL, 1 process", "postgres", 1),
                ("PostgreSQL, 2 processes", "postgres", 2))


def postgres_for_bench():
    """-> (a URL that may create databases, the cluster to remove afterwards or None):
    OXSYNC_BENCH_POSTGRES_URL, else a throwaway cluster (tests/_postgres.py)."""
    sys.path.insert(0, str(harness.ROOT / "tests"))
    import _postgres
    url = os.environ.get("OXSYNC_BENCH_POSTGRES_URL")
    if url:
        return _postgres, url, None
    cluster = _postgres.Cluster()
    return _postgres, cluster.url, cluster


def split_workload(servers, workload: str, connections: int, duration: int) -> dict:
    """One wrk per process at once, the connections shared out -> their summed rate."""
    share = connections // len(servers)
    results = [None] * len(servers)

    def drive(index):
        results[index] = wrk_workload(servers[index], workload, share, duration, None)
    threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(servers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if any(r is None for r in results):
        raise RuntimeError(f"{workload}: a wrk run failed")
    return {"rate": sum(r["rate"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "p99_ms": max(r["p99_ms"] for r in results)}


def store_comparison(rounds: int, duration: int, log_dir: Path) -> dict:
    """Every setup up at once (idle ones cost nothing), GET metadata and the sync cycle at
    16 connections measured in turns, as for the paired targets. Nothing is pinned: the
    PostgreSQL server's own processes need the cores too."""
    log_dir = log_dir / "stores"
    log_dir.mkdir(exist_ok=True)
    postgres, admin_url, cluster = postgres_for_bench()
    setups = []
    try:
        for label, kind, processes in STORE_SETUPS:
            url = postgres.new_database(admin_url) if kind == "postgres" else None
            servers = [harness.OxsyncServer(log_dir, None, database_url=url,
                                            name=f"{kind}{processes}-{index}",
                                            cycle_tag=f"{index}-")
                       for index in range(processes)]
            for server in servers:
                server.start()
                server.seed()
            setups.append((label, servers))
        rates = {(label, workload): [] for label, _ in setups for workload in ("get", "cycle")}
        for label, servers in setups:  # warm-up
            for workload in ("get", "cycle"):
                split_workload(servers, workload, 16, 1)
        for _ in range(rounds):
            for workload in ("get", "cycle"):
                for label, servers in setups:
                    result = split_workload(servers, workload, 16, duration)
                    if result["errors"]:
                        raise RuntimeError(f"{label} {workload}: {result['errors']} errors")
                    rates[(label, workload)].append(result["rate"])
                    log(f"stores: {label:24} {workload:5} {result['rate']:9,.0f}/s")
    finally:
        for _, servers in setups:
            for server in servers:
                server.stop()
        if cluster:
            cluster.remove()
    return {"rounds": rounds, "duration": duration,
            "rates": [{"setup": label, "workload": workload, "rates": values,
                       "median": statistics.median(values)}
                      for (label, workload), values in rates.items()]}


# ---------------------------------------------------------------------------
# Durable commits: this checkout against an earlier one (issue 20)
# ---------------------------------------------------------------------------

def build_of(revision: str, log_dir: Path) -> list[str]:
    """The command that runs oxsync.py as it was at a git revision (e.g. main)."""
    path = log_dir / f"oxsync-{revision.replace('/', '-')}.py"
    source = subprocess.run(["git", "-C", str(harness.ROOT), "show", f"{revision}:oxsync.py"],
                            capture_output=True, check=True).stdout
    path.write_bytes(source)
    return [sys.executable, str(path)]


def durability_comparison(revision: str, rounds: int, duration: int, log_dir: Path,
                          server_cpus, load_cpus) -> dict:
    """Before (oxsync.py at `revision`) and after (this checkout) up at once, PUT 4 KiB and
    the sync cycle at 1 and 16 connections driven in turns -> after / before per pair."""
    log_dir = log_dir / "durability"
    log_dir.mkdir(exist_ok=True)
    servers = {"before": harness.OxsyncServer(log_dir, server_cpus, name="before",
                                              command=build_of(revision, log_dir)),
               "after": harness.OxsyncServer(log_dir, server_cpus, name="after")}
    pairs = [(workload, connections) for workload in ("put", "cycle") for connections in (1, 16)]
    rates = {(label, pair): [] for label in servers for pair in pairs}
    try:
        for server in servers.values():
            server.start()
            server.seed()
            for workload in ("put", "cycle"):
                wrk_workload(server, workload, 16, 1, load_cpus)  # warm-up
        for _ in range(rounds):
            for pair in pairs:
                for label, server in servers.items():
                    result = wrk_workload(server, *pair, duration, load_cpus)
                    if result["errors"]:
                        raise RuntimeError(f"{label} {pair}: {result['errors']} errors")
                    rates[(label, pair)].append(result["rate"])
                    log(f"durability: {label:6} {pair[0]:5} c={pair[1]:<2} "
                        f"{result['rate']:9,.0f}/s")
    finally:
        for server in servers.values():
            server.stop()
    rows = []
    for workload, connections in pairs:
        before, after = (rates[(label, (workload, connections))] for label in servers)
        rows.append({"workload": workload, "connections": connections, "before": before,
                     "after": after, "ratio": statistics.median(after)
                     / statistics.median(before)})
    return {"revision": revision, "rounds": rounds, "duration": duration, "rows": rows}


class RssSampler(threading.Thread):
    """Samples the server tree's VmRSS every few milliseconds."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_kib, self.stopping = pid, 0, threading.Event()

    def run(self):
        while not self.stopping.is_set():
            self.peak_kib = max(self.peak_kib, harness.tree_kib(self.pid, "VmRSS"))
            self.stopping.wait(0.005)

    def stop(self) -> int:
        self.stopping.set()
        self.join()
        return self.peak_kib


def big_transfer(server, data: bytes, digest: str, repeats: int) -> dict:
    pid = server.serving_pid()
    harness.request(server.port, "GET", server.get_path(), headers=server.headers())
    time.sleep(0.3)
    idle_kib = harness.tree_kib(pid, "VmRSS")
    etag, ups, downs = None, [], []
    peak_up_kib = peak_down_kib = 0
    buffer = bytearray(len(data))
    for attempt in range(repeats):
        headers = server.headers({"Content-Type": "application/vnd.oxideterm.oxide",
                                  "Content-Length": str(len(data))})
        if server.kind == "sync":
            headers["X-OxideTerm-Revision"] = f"big-{attempt}"
            if etag:
                headers["If-Match"] = etag
            else:
                headers["If-None-Match"] = "*"
        sampler = RssSampler(pid)
        sampler.start()
        conn = http.client.HTTPConnection(HOST, server.port, timeout=300)
        started = time.perf_counter()
        conn.request("PUT", server.big_path(), body=data, headers=headers)
        answer = conn.getresponse()
        body = answer.read()
        ups.append(time.perf_counter() - started)
        peak_up_kib = max(peak_up_kib, sampler.stop())
        if answer.status not in (200, 201, 204):
            raise RuntimeError(f"64 MiB PUT answered {answer.status} {body[:200]!r}")
        if server.kind == "sync":
            etag = json.loads(body)["etag"]
        sampler = RssSampler(pid)
        sampler.start()
        started = time.perf_counter()
        conn.request("GET", server.big_path(), headers=server.headers())
        answer = conn.getresponse()
        view, filled = memoryview(buffer), 0
        while filled < len(buffer):
            count = answer.readinto(view[filled:])
            if not count:
                break
            filled += count
        extra = answer.read()
        downs.append(time.perf_counter() - started)
        peak_down_kib = max(peak_down_kib, sampler.stop())
        conn.close()
        if answer.status != 200 or filled != len(data) or extra:
            raise RuntimeError(f"64 MiB GET answered {answer.status} with {filled} bytes")
        if hashlib.sha256(buffer).hexdigest() != digest:
            raise RuntimeError("64 MiB GET returned different bytes than were uploaded")
    hwm_kib = harness.tree_kib(pid, "VmHWM")
    peak_kib = max(hwm_kib, peak_up_kib, peak_down_kib)
    return {
        "server": server.name, "size": len(data), "repeats": repeats,
        "up_mb_s": len(data) / statistics.median(ups) / MB,
        "down_mb_s": len(data) / statistics.median(downs) / MB,
        "up_s": ups, "down_s": downs,
        "idle_rss_mib": idle_kib / 1024,
        "peak_rss_above_idle_mib": (peak_kib - idle_kib) / 1024,
        "peak_up_above_idle_mib": (peak_up_kib - idle_kib) / 1024,
        "peak_down_above_idle_mib": (peak_down_kib - idle_kib) / 1024,
        "hwm_mib": hwm_kib / 1024,
    }


def crypto_benchmark(size: int, repeats: int, cpus) -> dict:
    """ChaCha20-Poly1305 from `cryptography` on one core, as oxsync's Sealer uses it."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    previous = os.sched_getaffinity(0)
    if cpus is not None:
        os.sched_setaffinity(0, {int(cpus)})
    try:
        aead = ChaCha20Poly1305(bytes.fromhex(harness.BENCH_KEY))
        data = os.urandom(size)
        nonce, context = os.urandom(12), b"oxsync/v1\0blob\0bench-big\0"
        enc, dec, sha = [], [], []
        for _ in range(repeats):
            started = time.perf_counter()
            sealed = aead.encrypt(nonce, data, context)
            enc.append(time.perf_counter() - started)
            started = time.perf_counter()
            opened = aead.decrypt(nonce, sealed, context)
            dec.append(time.perf_counter() - started)
            started = time.perf_counter()
            hashlib.sha256(data).hexdigest()
            sha.append(time.perf_counter() - started)
            assert opened == data
            del sealed, opened
    finally:
        os.sched_setaffinity(0, previous)
    return {"size": size, "repeats": repeats, "encrypt_mb_s": size / min(enc) / MB,
            "decrypt_mb_s": size / min(dec) / MB, "sha256_mb_s": size / min(sha) / MB}


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------

def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}" if abs(value) >= 1 else f"{value:.{digits + 1}f}"


def ratio(a, b) -> str:
    return f"{a / b:.2f}" if a is not None and b else "n/a"


def find(results: list[dict], workload: str, server: str, connections: int) -> dict | None:
    return next((r for r in results if r["workload"] == workload and r["server"] == server
                 and r["connections"] == connections), None)


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def evaluate_targets(report: dict) -> list[tuple[str, str, str]]:
    results, big, crypto = report["results"], report["big"], report.get("crypto")
    checks = []

    def rate(workload, server, connections):
        found = find(results, workload, server, connections)
        return found["rate"] if found else None

    def paired(workload, connections):
        return next((p for p in report.get("paired", [])
                     if p["workload"] == workload and p["connections"] == connections), None)

    def ratio_text(workload, unit, peer_name):
        pair = paired(workload, 16)
        if pair:
            a, b = pair["medians"].values()
            return pair["ratio"], (f"{pair['ratio']:.2f} x {peer_name} (medians of "
                                   f"{len(pair['rates']['oxsync'])} interleaved runs: "
                                   f"{a:,.0f} vs {b:,.0f} {unit})")
        a, b = rate(workload, "oxsync", 16), rate(workload, pair_peer(workload), 16)
        if a and b:
            return a / b, f"{a / b:.2f} x {peer_name} ({a:,.0f} vs {b:,.0f} {unit}; one run each)"
        return None, "not measured"

    for key, text in TARGETS:
        measured, met = "not measured", None
        if key == "get16":
            value, measured = ratio_text("get", "req/s", "ceiling")
            met = None if value is None else value >= 0.8
        elif key == "cycle16":
            value, measured = ratio_text("cycle", "cycles/s", "WsgiDAV")
            met = None if value is None else value >= 1.5
        elif key == "rss":
            found = next((b for b in big if b["server"] == "oxsync+enc"), None)
            if found:
                limit = 3 * found["size"] / MiB
                measured = (f"{found['peak_rss_above_idle_mib']:.0f} MiB above idle "
                            f"({found['peak_rss_above_idle_mib'] * MiB / found['size']:.2f} x blob)")
                met = found["peak_rss_above_idle_mib"] <= limit
        elif key == "crypto" and crypto:
            measured = (f"encrypt {crypto['encrypt_mb_s']:,.0f} MB/s (decrypt "
                        f"{crypto['decrypt_mb_s']:,.0f} MB/s)")
            met = crypto["encrypt_mb_s"] >= 300
        elif key == "p99":
            found = find(results, "get", "oxsync", 64)
            if found:
                measured, met = f"p99 {found['p99_ms']:.1f} ms", found["p99_ms"] < 50
        elif key == "usage" and report.get("wal_check"):
            check = report["wal_check"]
            frames = check["wal_bytes"] / (4096 + 24)
            measured = (f"WAL grew {check['wal_bytes'] / KiB:.0f} KiB (~{frames:.0f} pages) "
                        f"over {check['requests']:,} GET requests")
            met = frames < max(50, check["requests"] / 100)
        elif key == "pg_get" and report.get("stores"):
            medians = {(r["setup"], r["workload"]): r["median"]
                       for r in report["stores"]["rates"]}
            pg, lite = medians[(STORE_SETUPS[1][0], "get")], medians[(STORE_SETUPS[0][0], "get")]
            measured = (f"{pg / lite:.2f} x SQLite (medians of {report['stores']['rounds']} "
                        f"interleaved runs: {pg:,.0f} vs {lite:,.0f} req/s)")
            met = pg / lite >= 0.5
        checks.append((text, measured, "n/a" if met is None else ("MET" if met else "NOT MET")))
    return checks


def pair_peer(workload: str) -> str:
    return dict(PAIRS)[workload][1]


def busy_machine_warning(report: dict) -> list[str]:
    facts = report["facts"]
    loads = [float(x) for x in facts["loadavg_start"][:1] + facts.get("loadavg_end", [])[:1]]
    busiest = max(loads) if loads else 0.0
    if busiest < 0.5 * (facts["nproc"] or 1):
        return []
    return [f"- **Busy machine**: the 1-minute load average reached {busiest:.1f} on "
            f"{facts['nproc']} cores, so other processes shared the CPUs with the servers "
            "and wrk (see the server CPU column: a Python server with the machine to "
            "itself runs near 100% of its core under load). Absolute numbers from this run "
            "are low and noisy; re-run on a quiet machine before quoting them."]


def durability_section(durability: dict) -> list[str]:
    out = ["## Durable commits: before and after (issue 20)", "",
           f"oxsync.py at `{durability['revision']}` (before) and this checkout (after) up at "
           f"once, driven in turns ({durability['duration']} s per run, "
           f"{durability['rounds']} rounds); ratio = median after / median before.", ""]
    out += markdown_table(
        ["workload", "conns", "before per run", "after per run", "after / before"],
        [[WORKLOADS[r["workload"]], str(r["connections"]),
          ", ".join(f"{v:,.0f}" for v in r["before"]),
          ", ".join(f"{v:,.0f}" for v in r["after"]), f"{r['ratio']:.2f}"]
         for r in durability["rows"]])
    return out + [""]


def render(report: dict) -> str:
    facts, options = report["facts"], report["options"]
    results, big, crypto = report["results"], report["big"], report.get("crypto")
    out = ["# oxsync benchmark results", "",
           f"Generated by `python3 bench/run.py{' --quick' if options['quick'] else ''}` "
           f"({options['duration']} s per measurement, {options['warmup']} s warm-up per "
           "server and workload). Re-run it on a quiet machine for numbers to quote; the "
           "ratios are what to compare across machines.", "",
           "## Machine", "",
           f"- Date: {facts['date']}",
           f"- Cores (`nproc`): {facts['nproc']}; CPU: {facts['cpu_model']}; "
           f"kernel {facts['kernel']}",
           f"- Python {facts['python']}, SQLite {facts['sqlite']}, cryptography "
           f"{facts['cryptography']}, WsgiDAV {facts['wsgidav']} on cheroot {facts['cheroot']}, "
           f"nginx {facts['nginx'].replace('nginx/', '')}, {facts['wrk']}",
           f"- oxsync: {facts['oxsync']}; command `{facts['oxsync_cmd']}`",
           f"- Load average at start {' '.join(facts['loadavg_start'])}, at end "
           f"{' '.join(facts.get('loadavg_end', ['?']))} (other work on the machine makes "
           "absolute numbers noisy)",
           f"- Pinning: {report['pinning']}",
           *busy_machine_warning(report),
           "- Servers: oxsync with default settings except MAX_BLOB_SIZE=70000000 (access log "
           "at the default level, to a file); the ceiling (`bench/ceiling.py`); WsgiDAV with "
           "its default cheroot server (50 threads) and verbose 3 request log, Basic auth; "
           "nginx with 1 worker, WebDAV PUT, Basic auth ({PLAIN} htpasswd), access log on.",
           "- Load: wrk, keep-alive connections. Workloads 1-2 use 1 wrk thread; the sync cycle "
           "uses one wrk thread per connection so that each connection keeps its own state "
           "and its own namespace (oxsync, ceiling) or folder (WebDAV), so no conflicts are "
           "expected. The 64 MiB transfers use a Python http.client client.", ""]

    out += ["## Targets (issue 6)", ""]
    out += markdown_table(["target", "measured", "result"],
                          [list(c) for c in evaluate_targets(report)])
    out += [""]
    if report.get("paired"):
        out += ["## Interleaved runs for the ratio targets", "",
                "Both servers up at once, driven in turns at 16 connections "
                f"({report['paired'][0]['duration']} s per run); see bench/README.md.", ""]
        out += markdown_table(
            ["workload", "server", "rate per run", "median", "ratio of medians"],
            [[p["workload"], name, ", ".join(f"{r:,.0f}" for r in p["rates"][name]),
              f"{p['medians'][name]:,.0f}", f"{p['ratio']:.2f}" if name == "oxsync" else ""]
             for p in report["paired"] for name in p["servers"]])
        out += [""]

    if report.get("stores"):
        stores = report["stores"]
        out += ["## Stores: SQLite and PostgreSQL (issue 14)", "",
                "All three setups up at once, driven in turns at 16 connections "
                f"({stores['duration']} s per run, {stores['rounds']} rounds); with two "
                "processes, two wrk instances run at once with 8 connections each (no proxy in "
                "between) and their rates are added. Nothing is pinned to a core here: "
                "PostgreSQL's server processes share the 2 cores with oxsync and wrk. The "
                "PostgreSQL cluster is a throwaway one (tests/_postgres.py: fsync off), so "
                "compare it with SQLite's synchronous=NORMAL, which does not sync every "
                "commit either.", ""]
        lite = {r["workload"]: r["median"] for r in stores["rates"]
                if r["setup"] == STORE_SETUPS[0][0]}
        out += markdown_table(
            ["workload", "setup", "rate per run", "median", "x SQLite"],
            [[WORKLOADS[r["workload"]], r["setup"], ", ".join(f"{v:,.0f}" for v in r["rates"]),
              f"{r['median']:,.0f}", f"{r['median'] / lite[r['workload']]:.2f}"]
             for r in sorted(stores["rates"], key=lambda r: r["workload"] != "get")])
        out += [""]

    if report.get("durability"):
        out += durability_section(report["durability"])

    servers = report["servers"]
    for workload, title in WORKLOADS.items():
        rows = []
        for connections in options["connections"]:
            for name in servers:
                r = find(results, workload, name, connections)
                if r is None:
                    rows.append([str(connections), name] + ["n/a"] * 7)
                    continue
                rate_text = fmt(r["rate"])
                if workload == "cycle":
                    rate_text += f" ({fmt(r['req_s'])} req/s)"
                rows.append([str(connections), name, rate_text, fmt(r["p50_ms"], 2),
                             fmt(r["p99_ms"], 2), fmt(r["mb_s"]),
                             str(r["errors"]) + (f" / {r['conflicts']}" if workload == "cycle"
                                                 else ""),
                             f"{r['server_cpu'] * 100:.0f}%", f"{r['wrk_cpu'] * 100:.0f}%"])
        unit = "cycles/s" if workload == "cycle" else "req/s"
        lat = "cycle" if workload == "cycle" else "request"
        out += [f"## {title}", ""]
        out += markdown_table(["conns", "server", unit, f"p50 ms ({lat})", f"p99 ms ({lat})",
                               "MB/s", "errors" + (" / 412s" if workload == "cycle" else ""),
                               "server CPU", "wrk CPU"], rows)
        ratio_rows = []
        for connections in options["connections"]:
            mine = find(results, workload, "oxsync", connections)
            row = [str(connections)]
            for peer in PEERS:
                other = find(results, workload, peer, connections)
                row.append(ratio(mine and mine["rate"], other and other["rate"]))
            for peer in PEERS:
                other = find(results, workload, peer, connections)
                row.append(ratio(mine and mine["p99_ms"], other and other["p99_ms"]))
            ratio_rows.append(row)
        out += ["", f"Ratios ({unit}: higher is better for oxsync; p99: lower is better):", ""]
        out += markdown_table(["conns", "oxsync/ceiling", "oxsync/WsgiDAV", "oxsync/nginx",
                               "p99 oxsync/ceiling", "p99 oxsync/WsgiDAV", "p99 oxsync/nginx"],
                              ratio_rows)
        out += [""]

    out += ["## 4. One 64 MiB blob: upload then download", ""]
    rows = []
    for b in big:
        rows.append([b["server"], fmt(b["up_mb_s"]), fmt(b["down_mb_s"]),
                     fmt(b["idle_rss_mib"]), fmt(b["peak_rss_above_idle_mib"]),
                     f"{b['peak_rss_above_idle_mib'] * MiB / b['size']:.2f}",
                     fmt(b["peak_up_above_idle_mib"]), fmt(b["peak_down_above_idle_mib"])])
    out += markdown_table(["server", "upload MB/s", "download MB/s", "idle RSS MiB",
                           "peak RSS above idle MiB", "x blob size", "sampled peak up MiB",
                           "sampled peak down MiB"], rows)
    by_name = {b["server"]: b for b in big}
    ratio_rows = []
    for mine in ("oxsync", "oxsync+enc"):
        if mine not in by_name:
            continue
        row = [mine]
        for direction in ("up_mb_s", "down_mb_s"):
            for peer in PEERS:
                other = by_name.get(peer)
                row.append(ratio(by_name[mine][direction], other and other[direction]))
        ratio_rows.append(row)
    out += ["", f"Each transfer is the median of {options['big_repeats']}; peak RSS is the "
            "server's VmHWM (or the highest sampled VmRSS) minus its idle VmRSS, for the whole "
            "process tree (nginx: master + worker). Downloads are checked byte for byte "
            "(SHA-256). Ratios (MB/s, higher is better for oxsync):", ""]
    out += markdown_table(["", "up / ceiling", "up / WsgiDAV", "up / nginx", "down / ceiling",
                           "down / WsgiDAV", "down / nginx"], ratio_rows)
    if crypto:
        out += ["", f"Micro-benchmark, one core, {crypto['size'] // MiB} MiB, best of "
                f"{crypto.get('repeats', options['big_repeats'])}: ChaCha20-Poly1305 encrypt "
                f"{crypto['encrypt_mb_s']:,.0f} MB/s, decrypt {crypto['decrypt_mb_s']:,.0f} MB/s; "
                f"SHA-256 {crypto['sha256_mb_s']:,.0f} MB/s (oxsync hashes every blob too)."]
    if report.get("failures"):
        out += ["", "## Failures during this run", ""]
        out += [f"- {failure}" for failure in report["failures"]]
    out += ["", "## Reading the numbers", "",
            "- req/s, cycles/s: completed requests (cycles) per second over the measured "
            "interval; p50/p99: latency percentiles from wrk (per request), or per whole "
            "cycle for workload 3 (measured in the Lua script).",
            "- MB/s: payload bytes moved per second (workload 1: response bytes incl. "
            "headers; 2: 4 KiB bodies sent; 3: the 64 KiB blob up and down per cycle). "
            "1 MB = 10^6 bytes.",
            "- errors: socket errors, timeouts and unexpected HTTP statuses; for the cycle, "
            "412 answers are counted separately as conflicts.",
            "- server CPU / wrk CPU: CPU time used during the measurement divided by its "
            "length; 100% = one core. A server at ~100% on its pinned core is CPU bound; wrk "
            "well below 100% means the load generator was not the bottleneck.", ""]
    return "\n".join(out)


def print_summary(report: dict) -> None:
    results = report["results"]
    print()
    header = f"{'workload':<8} {'conns':>5} {'server':<10} {'rate/s':>10} {'p50 ms':>8} " \
             f"{'p99 ms':>8} {'MB/s':>8} {'err':>5} {'412':>5} {'srvCPU':>6} {'wrkCPU':>6}  ratio"
    print(header)
    print("-" * len(header))
    for workload in WORKLOADS:
        for connections in report["options"]["connections"]:
            base = find(results, workload, "oxsync", connections)
            for name in report["servers"]:
                r = find(results, workload, name, connections)
                if r is None:
                    continue
                rel = "" if name == "oxsync" or not base else \
                    f"oxsync/{name} {ratio(base['rate'], r['rate'])}"
                print(f"{workload:<8} {connections:>5} {name:<10} {r['rate']:>10,.0f} "
                      f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['mb_s']:>8.1f} "
                      f"{r['errors']:>5} {r.get('conflicts', ''):>5} "
                      f"{r['server_cpu'] * 100:>5.0f}% {r['wrk_cpu'] * 100:>5.0f}%  {rel}")
    print()
    for b in report["big"]:
        print(f"64MiB    {b['server']:<11} up {b['up_mb_s']:>7.1f} MB/s  down "
              f"{b['down_mb_s']:>7.1f} MB/s  peak RSS +{b['peak_rss_above_idle_mib']:.0f} MiB "
              f"(idle {b['idle_rss_mib']:.0f} MiB)")
    if report.get("crypto"):
        c = report["crypto"]
        print(f"crypto   encrypt {c['encrypt_mb_s']:,.0f} MB/s, decrypt "
              f"{c['decrypt_mb_s']:,.0f} MB/s, sha256 {c['sha256_mb_s']:,.0f} MB/s")
    for row in report.get("durability", {}).get("rows", []):
        print(f"durable  {row['workload']:<6} c={row['connections']:<3} after / before "
              f"{row['ratio']:.2f}")
    print()
    for text, measured, result in evaluate_targets(report):
        print(f"{result:<8} {text}: {measured}")


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Benchmark oxsync against its ceiling, "
                                                 "WsgiDAV and nginx WebDAV.")
    parser.add_argument("--quick", action="store_true",
                        help="short measurements (about 2 minutes in all)")
    parser.add_argument("--duration", type=int, help="seconds per measurement "
                        "(default 8, --quick 2)")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up per server and "
                        "workload (default 1)")
    parser.add_argument("--connections", default="1,16,64",
                        help="comma list of concurrency levels (default 1,16,64)")
    parser.add_argument("--servers", default="oxsync,ceiling,wsgidav,nginx",
                        help="comma list from oxsync,ceiling,wsgidav,nginx")
    parser.add_argument("--workloads", default="get,put,cycle,big,stores",
                        help="comma list from get,put,cycle,big,stores (stores: SQLite and "
                             "PostgreSQL compared; needs Debian's postgresql and psycopg, or "
                             "OXSYNC_BENCH_POSTGRES_URL)")
    parser.add_argument("--before", metavar="REVISION",
                        help="also compare this checkout's oxsync.py with the one at a git "
                             "revision (e.g. main): PUT 4 KiB and the sync cycle at 1 and 16 "
                             "connections, interleaved")
    parser.add_argument("--big-repeats", type=int, help="64 MiB transfers per server "
                        "(default 3, --quick 1)")
    parser.add_argument("--pair-rounds", type=int, help="interleaved runs per server for "
                        "the two ratio targets (default 5, --quick 3; 0 skips them)")
    parser.add_argument("--pair-duration", type=int, help="seconds per interleaved run "
                        "(default 4, --quick 2)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the server to core 0 and wrk to core 1")
    parser.add_argument("--output", default=str(harness.BENCH / "RESULTS.md"),
                        help="where to write the Markdown report (default bench/RESULTS.md)")
    parser.add_argument("--keep", action="store_true", help="keep the servers' temp folders")
    parser.add_argument("--render", metavar="RESULTS_JSON",
                        help="do not measure: rewrite the report from a saved results.json")
    args = parser.parse_args(argv)
    args.duration = args.duration or (2 if args.quick else 8)
    args.warmup = 1 if args.warmup is None else args.warmup
    args.big_repeats = args.big_repeats or (1 if args.quick else 3)
    args.pair_rounds = (3 if args.quick else 5) if args.pair_rounds is None else args.pair_rounds
    args.pair_duration = args.pair_duration or (2 if args.quick else 4)
    args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(args.servers) - set(harness.SERVER_CLASSES)
    unknown |= set(args.workloads) - set(WORKLOADS) - {"big", "stores"}
    if unknown:
        parser.error(f"unknown server or workload: {', '.join(sorted(unknown))}")
    if max(args.connections) > harness.CYCLE_SLOTS and "cycle" in args.workloads:
        parser.error(f"the sync cycle supports at most {harness.CYCLE_SLOTS} connections")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        with open(args.render) as file:
            report = json.load(file)
        print_summary(report)
        with open(args.output, "w") as file:
            file.write(render(report) + "\n")
        log(f"wrote {args.output} from {args.render}")
        return 0
    if not subprocess.run(["which", "wrk"], capture_output=True).returncode == 0:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and \
        subprocess.run(["which", "taskset"], capture_output=True).returncode == 0
    server_cpus, load_cpus = ("0", "1") if pin else (None, None)
    pinning = ("servers pinned to core 0 (taskset -c 0), wrk and the Python client to core "
               "1 (taskset -c 1)" if pin else "none (--no-pin or fewer than 2 cores)")
    if pin:
        os.sched_setaffinity(0, {1})
    harness.sigterm_to_keyboard_interrupt()
    log_dir = harness.OUT / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("*.log"):
        old.unlink()
    report = {"facts": machine_facts(), "pinning": pinning, "servers": args.servers,
              "options": {"quick": args.quick, "duration": args.duration,
                          "warmup": args.warmup, "connections": args.connections,
                          "big_repeats": args.big_repeats},
              "results": [], "big": [], "failures": []}
    wrk_workloads = [w for w in WORKLOADS if w in args.workloads]
    started = time.monotonic()
    try:
        for name in args.servers:
            if not wrk_workloads:
                break
            server = harness.SERVER_CLASSES[name](log_dir, server_cpus)
            try:
                log(f"starting {name} on port {server.port}")
                server.start()
                server.seed()
                for workload in wrk_workloads:
                    if args.warmup:
                        wrk_workload(server, workload, min(16, max(args.connections)),
                                     args.warmup, load_cpus)
                    wal_before = None
                    if workload == "get" and name == "oxsync":
                        time.sleep(5.5)   # let the usage flush of the warm-up land first
                        server.checkpoint()
                        wal_before = server.wal_bytes()
                    total = 0
                    for connections in args.connections:
                        result = wrk_workload(server, workload, connections, args.duration,
                                              load_cpus)
                        total += result["requests"]
                        report["results"].append(result)
                        log(f"{name:8} {workload:5} c={connections:<3} "
                            f"{result['rate']:9,.0f}/s p50 {result['p50_ms']:7.2f} ms "
                            f"p99 {result['p99_ms']:7.2f} ms errors {result['errors']}"
                            + (f" 412s {result['conflicts']}" if workload == "cycle" else "")
                            + f" (server CPU {result['server_cpu'] * 100:.0f}%, wrk CPU "
                              f"{result['wrk_cpu'] * 100:.0f}%)")
                    if wal_before is not None:
                        report["wal_check"] = {"wal_bytes": server.wal_bytes() - wal_before,
                                               "requests": total}
            except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                message = f"{name}: {error}"
                report["failures"].append(message)
                log(f"FAILED {message}")
                traceback.print_exc()
            finally:
                server.stop()

        for workload, names in PAIRS:
            if workload not in args.workloads or not set(names) <= set(args.servers) \
                    or 16 not in args.connections or not args.pair_rounds:
                continue
            log(f"paired: {names[0]} and {names[1]}, {workload} at 16 connections, "
                f"{args.pair_rounds} rounds of {args.pair_duration} s each, interleaved")
            try:
                pair = paired_workload(names, workload, 16, args.pair_rounds,
                                       args.pair_duration, log_dir, server_cpus, load_cpus)
                report.setdefault("paired", []).append(pair)
                log(f"paired {workload}: " + ", ".join(
                    f"{name} {' '.join(f'{r:,.0f}' for r in rates)}"
                    for name, rates in pair["rates"].items()) + f" -> ratio {pair['ratio']:.2f}")
            except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                report["failures"].append(f"paired {workload}: {error}")
                log(f"FAILED paired {workload}: {error}")

        if "stores" in args.workloads and args.pair_rounds:
            log("stores: SQLite, PostgreSQL with 1 and 2 processes, interleaved")
            try:
                report["stores"] = store_comparison(args.pair_rounds, args.pair_duration,
                                                    log_dir)
            except (RuntimeError, OSError, subprocess.SubprocessError, ImportError) as error:
                report["failures"].append(f"stores: {error}")
                log(f"FAILED stores: {error}")

        if args.before and args.pair_rounds:
            log(f"durability: oxsync.py at {args.before} against this checkout, interleaved")
            try:
                report["durability"] = durability_comparison(
                    args.before, args.pair_rounds, args.pair_duration, log_dir, server_cpus,
                    load_cpus)
            except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                report["failures"].append(f"durability: {error}")
                log(f"FAILED durability: {error}")

        if "big" in args.workloads:
            data = os.urandom(BIG_BLOB)
            digest = hashlib.sha256(data).hexdigest()
            big_servers = []
            for name in args.servers:
                big_servers.append((name, {}))
                if name == "oxsync":
                    big_servers.append((name, {"encrypted": True}))
            for name, options in big_servers:
                server = harness.SERVER_CLASSES[name](log_dir, server_cpus, **options)
                try:
                    log(f"64 MiB transfer: starting {server.name}")
                    server.start()
                    result = big_transfer(server, data, digest, args.big_repeats)
                    report["big"].append(result)
                    log(f"{server.name:10} 64 MiB up {result['up_mb_s']:.1f} MB/s, down "
                        f"{result['down_mb_s']:.1f} MB/s, peak RSS "
                        f"+{result['peak_rss_above_idle_mib']:.0f} MiB over idle "
                        f"{result['idle_rss_mib']:.0f} MiB")
                except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as error:
                    message = f"{server.name} (64 MiB): {error}"
                    report["failures"].append(message)
                    log(f"FAILED {message}")
                finally:
                    server.stop()
            del data
            log("encryption micro-benchmark")
            report["crypto"] = crypto_benchmark(BIG_BLOB, max(5, args.big_repeats),
                                                server_cpus)
    except KeyboardInterrupt:
        log("interrupted: stopping everything that was started")
        harness.stop_all(args.keep)
        return 130
    finally:
        harness.stop_all(args.keep)

    report["facts"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    report["elapsed_s"] = time.monotonic() - started
    print_summary(report)
    harness.OUT.mkdir(parents=True, exist_ok=True)
    with open(harness.OUT / "results.json", "w") as file:
        json.dump(report, file, indent=1, default=str)
    with open(args.output, "w") as file:
        file.write(render(report) + "\n")
    log(f"done in {report['elapsed_s']:.0f} s; wrote {args.output} and "
        f"{harness.OUT / 'results.json'}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

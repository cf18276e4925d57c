#!/usr/bin/env python3
"""Profile oxsync under load: where does a GET metadata / a PUT object spend its time?

    python3 bench/profile.py                      # py-spy if it works here, else cProfile
    python3 bench/profile.py --tool cprofile      # deterministic CPU time per function
                                                  # (slows Python ~2x; --timer wall for
                                                  # elapsed time instead)
    python3 bench/profile.py --workloads get --duration 20 --connections 16 --top 25

Starts oxsync (pinned to core 0, like bench/run.py), drives one workload at a time with
wrk (pinned to core 1) and prints the top functions by self time and by cumulative
time. py-spy samples every thread of the running server from outside (no slowdown to
speak of; `pip install py-spy`); cProfile runs inside it, one profiler per connection
thread (bench/cprofile_server.py). Raw profiles are kept in bench/out/:
profile-<workload>.txt (py-spy collapsed stacks; feed them to flamegraph.pl or
speedscope) or profile-<workload>.pstats (python3 -m pstats FILE).
"""

from __future__ import annotations

import argparse
import collections
import os
import pstats
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import run  # noqa: E402

TITLES = {"get": "GET metadata", "put": "PUT 4 KiB object", "cycle": "sync cycle"}


def py_spy_works() -> bool:
    if not shutil.which("py-spy"):
        return False
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.3)
        done = subprocess.run(["py-spy", "dump", "--pid", str(sleeper.pid)],
                              capture_output=True, text=True, timeout=30)
        return done.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        sleeper.kill()
        sleeper.wait()


def parse_frame(frame: str) -> tuple[str, str, str]:
    """'get_metadata (/work/main/oxsync.py:2205)' -> ('get_metadata', 'oxsync.py', '2205')."""
    name, _, where = frame.rpartition(" (")
    if not name:
        return frame, "", ""
    file, _, line = where.rstrip(")").rpartition(":")
    return name, os.path.basename(file), line


# Leaf frames of a thread that is waiting, not working: the housekeeping thread's timer,
# the accept loop, the log writer between batches (its formatting shows as
# LogWriter.line), and a keep-alive connection waiting for its next request. py-spy's own
# idle detection misses some of them on a busy machine (a thread just woken counts as
# running).
WAITING = ("Condition.wait", "Event.wait", "_PollLikeSelector.select", "EpollSelector.select",
           "socket.accept", "LogWriter.run")


def is_waiting(names: list[str]) -> bool:
    leaf = names[-1]
    if leaf in WAITING:
        return True
    # blocked reading the next request line of a keep-alive connection
    return leaf in ("SocketIO.readinto", "BufferedReader.peek") and len(names) > 1 and \
        names[-2] in ("RequestHandler.handle_one_request",
                      "BaseHTTPRequestHandler.handle_one_request")


def summarize_collapsed(path: Path, top: int, include_waiting: bool = False) -> str:
    """Self and cumulative shares of samples, from py-spy's raw (collapsed stack) output
    recorded per line: functions are 'name (file)', hot lines 'name (file:line)'."""
    own, total_in, lines_own = collections.Counter(), collections.Counter(), \
        collections.Counter()
    samples = waiting = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        count = int(count)
        frames = [parse_frame(f) for f in stack.split(";")
                  if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if not include_waiting and is_waiting([name for name, _, _ in frames]):
            waiting += count
            continue
        samples += count
        name, file, number = frames[-1]
        own[f"{name} ({file})"] += count
        lines_own[f"{name} ({file}:{number})"] += count
        for function in {f"{name} ({file})" for name, file, _ in frames}:
            total_in[function] += count
    if not samples:
        return "no samples of working threads"
    plumbing = sorted(f for f, c in total_in.items() if c >= 0.95 * samples)
    out = [f"{samples} samples of working threads"
           + ("" if include_waiting else f"; {waiting} samples of waiting threads left out "
              f"({', '.join(WAITING)}, keep-alive reads)"), "",
           f"top {top} functions by self time (that function's own code was running, "
           "including C functions it called such as sqlite3 or socket calls):",
           f"{'self %':>7} {'cum %':>7}  function"]
    for function, count in own.most_common(top):
        out.append(f"{100 * count / samples:7.1f} {100 * total_in[function] / samples:7.1f}  "
                   f"{function}")
    out += ["", f"top {top} functions by cumulative time (that function or anything it "
            "called); left out as plumbing, in >= 95% of samples: " + ", ".join(plumbing),
            f"{'cum %':>7} {'self %':>7}  function"]
    ranked = [(f, c) for f, c in total_in.most_common() if f not in plumbing][:top]
    for function, count in ranked:
        out.append(f"{100 * count / samples:7.1f} {100 * own[function] / samples:7.1f}  "
                   f"{function}")
    out += ["", f"top {top} lines by self time:", f"{'self %':>7}  line"]
    for where, count in lines_own.most_common(top):
        out.append(f"{100 * count / samples:7.1f}  {where}")
    return "\n".join(out)


def summarize_pstats(path: Path, top: int) -> str:
    lines = []
    for key, title in (("tottime", "self time (tottime)"), ("cumulative", "cumulative time")):
        stream = __import__("io").StringIO()
        stats = pstats.Stats(str(path), stream=stream)
        stats.sort_stats(key).print_stats(top)
        text = stream.getvalue()
        body = text[text.find("   ncalls"):] if "   ncalls" in text else text
        lines += [f"top {top} by {title}:", body.rstrip().replace(str(harness.ROOT) + "/", ""),
                  ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Profile oxsync under wrk load.")
    parser.add_argument("--tool", choices=("auto", "py-spy", "cprofile"), default="auto")
    parser.add_argument("--workloads", default="get,put", help="comma list from get,put,cycle")
    parser.add_argument("--duration", type=int, default=20, help="seconds per workload")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="py-spy: show C frames too")
    parser.add_argument("--gil", action="store_true",
                        help="py-spy: sample only the thread holding the GIL")
    parser.add_argument("--timer", choices=("cpu", "wall"), default="cpu",
                        help="cProfile: per-thread CPU time (default) or elapsed time")
    parser.add_argument("--include-waiting", action="store_true",
                        help="py-spy: keep samples of threads that are only waiting")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args(argv)
    tool = args.tool
    if tool == "auto":
        tool = "py-spy" if py_spy_works() else "cprofile"
    elif tool == "py-spy" and not py_spy_works():
        print("py-spy cannot attach here (pip install py-spy; it needs ptrace)", file=sys.stderr)
        return 2
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
    server_cpus, load_cpus = ("0", "1") if pin else (None, None)
    if pin:
        os.sched_setaffinity(0, {1})
    harness.sigterm_to_keyboard_interrupt()
    harness.OUT.mkdir(parents=True, exist_ok=True)
    log_dir = harness.OUT / "logs"
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    print(f"profiling with {tool}, {args.duration} s per workload at {args.connections} "
          f"connections; oxsync: {' '.join(harness.oxsync_command())}", flush=True)
    try:
        for workload in workloads:
            wrap, pstats_path = [], harness.OUT / f"profile-{workload}.pstats"
            if tool == "cprofile":
                pstats_path.unlink(missing_ok=True)
                wrap = [str(harness.BENCH / "cprofile_server.py"), str(pstats_path)]
            server = harness.OxsyncServer(log_dir, server_cpus, wrap=wrap,
                                          extra_env={"BENCH_PROFILE_TIMER": args.timer})
            server.start()
            server.seed()
            run.wrk_workload(server, workload, args.connections, 1, load_cpus)  # warm-up
            spy = None
            collapsed = harness.OUT / f"profile-{workload}.txt"
            if tool == "py-spy":
                argv = ["py-spy", "record", "--pid", str(server.pid), "--format", "raw",
                        "--rate", str(args.rate), "--duration",
                        str(args.duration), "--output", str(collapsed)]
                argv += ["--native"] if args.native else []
                argv += ["--gil"] if args.gil else []
                if load_cpus:
                    argv = ["taskset", "-c", load_cpus] + argv
                spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True)
                time.sleep(0.5)
            result = run.wrk_workload(server, workload, args.connections, args.duration,
                                      load_cpus)
            if spy is not None:
                _, error = spy.communicate(timeout=60)
                if spy.returncode != 0:
                    raise RuntimeError(f"py-spy failed: {error.strip()[-500:]}")
            time.sleep(0.5)
            server.stop()     # cProfile's statistics are written as the server exits
            print(f"\n=== {TITLES[workload]}: {result['rate']:,.0f}/s at {args.connections} "
                  f"connections, p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                  f"server CPU {result['server_cpu'] * 100:.0f}% (under {tool}) ===")
            if tool == "py-spy":
                print(summarize_collapsed(collapsed, args.top, args.include_waiting))
                print(f"\n(raw stacks: {collapsed})")
            elif pstats_path.exists():
                print(summarize_pstats(pstats_path, args.top))
                print(f"(python3 -m pstats {pstats_path})")
            else:
                print("no cProfile statistics were written; see bench/out/logs/oxsync.log")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        harness.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run oxsync under cProfile, one profiler per connection thread, merged at exit.

    python3 bench/cprofile_server.py OUT.pstats oxsync.py serve --listen ... --db-path ...

cProfile only sees the thread it is enabled in, and oxsync serves each connection in
its own thread, so socketserver's per-connection thread function is wrapped. The merged
statistics are written to OUT.pstats when the server exits (SIGTERM: oxsync drains and
returns from main). BENCH_PROFILE_TIMER=cpu (default) measures each thread's CPU time,
=wall elapsed time. Used by bench/profile.py --tool cprofile.
"""

from __future__ import annotations

import os
import sys

# bench/profile.py would shadow the standard library's profile module, which cProfile uses.
sys.path[:] = [p for p in sys.path
               if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import atexit  # noqa: E402
import cProfile  # noqa: E402
import importlib.machinery  # noqa: E402
import importlib.util  # noqa: E402
import pstats  # noqa: E402
import runpy  # noqa: E402
import socketserver  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

output, script, *arguments = sys.argv[1:]
profiles: list[cProfile.Profile] = []
lock = threading.Lock()
original = socketserver.ThreadingMixIn.process_request_thread


# cpu (default): each thread's own CPU time, so waiting for the GIL, a lock or the
# network costs nothing; wall: elapsed time, waits included.
TIMER = time.thread_time if os.environ.get("BENCH_PROFILE_TIMER", "cpu") == "cpu" \
    else time.perf_counter


def profiled(self, request, client_address):
    profile = cProfile.Profile(TIMER)
    profile.enable()
    try:
        original(self, request, client_address)
    finally:
        profile.disable()
        with lock:
            profiles.append(profile)


socketserver.ThreadingMixIn.process_request_thread = profiled


def dump():
    deadline = time.monotonic() + 3   # let connection threads that are closing finish
    while threading.active_count() > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    with lock:
        collected = list(profiles)
    if not collected:
        print("cprofile_server: no connection was profiled", file=sys.stderr)
        return
    stats = pstats.Stats(collected[0])
    for profile in collected[1:]:
        stats.add(profile)
    stats.dump_stats(output)


def run_as_main(path: str) -> None:
    """Run a script as __main__ with a real loader (oxsync reads admin.html through
    __loader__, which runpy.run_path leaves as None for a plain .py file)."""
    sys.argv = [path] + arguments
    if not path.endswith(".py"):
        runpy.run_path(path, run_name="__main__")   # a zipapp (.pyz) or a folder
        return
    loader = importlib.machinery.SourceFileLoader("__main__", path)
    spec = importlib.util.spec_from_loader("__main__", loader)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = path
    sys.modules["__main__"] = module
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    loader.exec_module(module)


atexit.register(dump)
run_as_main(script)

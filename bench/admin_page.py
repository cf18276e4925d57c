"""The admin page's timings in headless Chromium with thousands of namespaces (issue 22).

For each size (default 1,000 and 5,000 namespaces, with 1,000 tokens and 1,000 devices) it
starts oxsync on a fresh SQLite store, seeds it straight into the store (the test suite's
seed_namespaces / seed_tokens / seed_devices), logs in and measures, in Debian's Chromium
(never a downloaded browser):

- navigation -> table shown: from the navigation's start (performance.timeOrigin) to the
  first frame after the table's first row is in the DOM, for /admin#namespaces, #tokens
  and #devices; with the DOM's element count and the page's height;
- refresh, search, sort and paging on the namespaces table: from the click (for search:
  the last key typed, so it includes the page's 200 ms typing pause) to the first frame
  after the new table is in the DOM;
- the longest task of each, from PerformanceObserver('longtask') (Chromium reports
  tasks of 50 ms and more; "<50" means none was reported).

Targets (issue 22): table within 1 s of navigation, no task over 100 ms. Figures are
wall-clock on whatever machine runs this; on a shared machine they are noisy, so each
action runs --repeat times and the median time and the worst task are printed.

    python3 bench/admin_page.py                 # 1,000 and 5,000 namespaces, ~2 minutes
    python3 bench/admin_page.py --sizes 5000 --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import OxsyncServer, seed_devices, seed_namespaces, seed_tokens  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORD = "bench admin password"
ADMIN_ENV = {"ADMIN_PASSWORD": PASSWORD, "ADMIN_JWT_SECRET": "b" * 40}
VIEWPORT = {"width": 1280, "height": 800}
TABS = ("namespaces", "tokens", "devices")

# Before the page's own script: long tasks, and the frame after `table` first has a row.
WATCH = """(() => {
  const bench = window.__bench = { tasks: [], shown: null, table: location.hash.slice(1) + '-table' };
  new PerformanceObserver((list) => { for (const e of list.getEntries()) bench.tasks.push(e.duration); })
    .observe({ type: 'longtask', buffered: true });
  const watch = new MutationObserver(() => {
    if (!document.querySelector('#' + bench.table + ' tbody tr')) return;
    watch.disconnect();
    requestAnimationFrame(() => setTimeout(() => { bench.shown = performance.now(); }));
  });
  watch.observe(document, { childList: true, subtree: true });
})()"""

# Before an action: forget earlier long tasks, note the frame after the table is replaced.
ARM = """(table) => {
  const bench = window.__bench;
  bench.tasks = [];
  bench.done = null;
  bench.start = performance.now();
  const watch = new MutationObserver(() => {
    watch.disconnect();
    requestAnimationFrame(() => setTimeout(() => { bench.done = performance.now(); }));
  });
  watch.observe(document.getElementById(table), { childList: true });
}"""


def settle_tasks(page) -> float:
    """The longest task since the mark (0 if none reached 50 ms), once observers ran."""
    page.wait_for_timeout(150)
    return max(page.evaluate("() => window.__bench.tasks"), default=0.0)


def navigate(context, base: str, tab: str) -> dict:
    page = context.new_page()
    page.add_init_script(WATCH)
    page.goto(f"{base}/admin#{tab}")
    page.wait_for_function("() => window.__bench.shown !== null", timeout=60_000)
    figures = page.evaluate("""() => ({ shown: window.__bench.shown,
      nodes: document.getElementsByTagName('*').length,
      height: document.documentElement.scrollHeight })""")
    figures["task"] = settle_tasks(page)
    page.close()
    return figures


def timed(page, table: str, act) -> tuple[float, float]:
    """(ms from the action to the new table shown, longest task in ms)."""
    page.evaluate(ARM, table)
    act()
    page.wait_for_function("() => window.__bench.done !== null", timeout=60_000)
    elapsed = page.evaluate("() => window.__bench.done - (window.__bench.typed || window.__bench.start)")
    page.evaluate("() => { window.__bench.typed = null; }")
    return elapsed, settle_tasks(page)


def untimed(page, table: str, act) -> None:
    page.evaluate(ARM, table)
    act()
    page.wait_for_function("() => window.__bench.done !== null", timeout=60_000)


def type_search(page, words: str) -> None:
    page.locator("#namespaces-search").press_sequentially(words, delay=30)
    page.evaluate("() => { window.__bench.typed = performance.now(); }")


def actions(context, base: str, repeat: int, count: int) -> dict:
    """Refresh, search, sort and paging on the namespaces table, `repeat` times each."""
    page = context.new_page()
    page.add_init_script(WATCH)
    page.goto(f"{base}/admin#namespaces")
    page.wait_for_function("() => window.__bench.shown !== null", timeout=60_000)
    table = "namespaces-table"
    results = {name: [] for name in ("refresh", "search", "sort", "next page")}
    for round_ in range(repeat):
        results["refresh"].append(timed(page, table, lambda: page.click("#namespaces-refresh")))
        target = f"seed-{(round_ * 7919) % count:05d}"
        results["search"].append(timed(page, table, lambda: type_search(page, target)))
        untimed(page, table, lambda: page.fill("#namespaces-search", ""))
        results["sort"].append(timed(page, table, lambda: page.click(
            "#namespaces-table th button[data-sort='size']")))
        results["next page"].append(timed(page, table, lambda: page.click("#namespaces-next")))
    page.close()
    return results


def measure(browser, count: int, tokens: int, devices: int, repeat: int) -> list[tuple]:
    with tempfile.TemporaryDirectory(prefix="oxsync-admin-bench-") as folder:
        server = OxsyncServer(Path(folder), env=ADMIN_ENV).start()
        try:
            names = seed_namespaces(server, count)
            seed_tokens(server, tokens)
            seed_devices(server, devices, names)
            base = f"http://127.0.0.1:{server.port}"
            context = browser.new_context(viewport=VIEWPORT)
            answer = context.request.post(base + "/admin/api/login",
                                          data={"username": "admin", "password": PASSWORD})
            assert answer.ok, answer.text()
            rows = []
            for tab in TABS:
                shown = [navigate(context, base, tab) for _ in range(repeat)]
                rows.append((f"navigation -> {tab} table",
                             statistics.median(s["shown"] for s in shown),
                             [s["task"] for s in shown],
                             f"{shown[-1]['nodes']:,} elements, {shown[-1]['height']:,} px"))
            for name, runs in actions(context, base, repeat, count).items():
                rows.append((name, statistics.median(r[0] for r in runs),
                             [r[1] for r in runs], ""))
            context.close()
            return rows
        finally:
            server.stop()


def report(count: int, tokens: int, devices: int, rows: list[tuple]) -> None:
    print(f"\n{count:,} namespaces, {tokens:,} tokens, {devices:,} devices: median time; "
          f"the longest task of each run, median and worst")
    print(f"  {'measure':<30} {'time ms':>8} {'task med':>8} {'task max':>8}  verdict")
    for name, elapsed, tasks, note in rows:
        limit = 1000 if name.startswith("navigation") else None
        fine = max(tasks) <= 100 and (limit is None or elapsed < limit)
        typical, worst = (f"{t:.0f}" if t else "<50" for t in (statistics.median(tasks), max(tasks)))
        print(f"  {name:<30} {elapsed:>8.0f} {typical:>8} {worst:>8}  {'MET' if fine else 'NOT MET'}"
              f"{'  ' + note if note else ''}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,5000",
                        help="namespace counts to measure, comma-separated (default 1000,5000)")
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measure (default 3)")
    options = parser.parse_args()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for count in (int(size) for size in options.sizes.split(",")):
                rows = measure(browser, count, options.tokens, options.devices, options.repeat)
                report(count, options.tokens, options.devices, rows)
        finally:
            browser.close()
    print("\nTargets: table within 1,000 ms of navigation, no task over 100 ms. "
          "Wall-clock figures: on a shared machine they vary from run to run.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

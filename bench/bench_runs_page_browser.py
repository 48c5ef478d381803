"""Benchmark (not a test): how long the Runs page takes to render in headless Chromium.

The home is the one bench_dashboard_query.py fills (50 finished runs x 20,000 logged steps, 3
million metric rows); the dashboard is served by ``streamlit run`` on a free localhost port and
opened in Debian's Chromium through Playwright. Two timings, each from navigation:

  table   the Runs page with its table of 50 runs drawn (no runs selected, nothing charted)
  charts  the page opened on a link naming 10 runs (``/runs?run=ID&run=ID...``) until the curves
          chart has drawn their traces and the comparison chart is on the page

  metric  on that loaded page, choosing another metric until the curves chart shows it

The first load (the server's imports, DuckDB's first open) is reported apart and not counted.
Target: under 2 s (median of the repeats).

    python bench/bench_runs_page_browser.py [--runs 50] [--points 20000] [--repeats 5] [--home DIR]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_dashboard_query import SEEDS, SELECTED, fill  # noqa: E402

from largestep import store  # noqa: E402
from largestep.cli.dashboard import streamlit_flags  # noqa: E402
from largestep.home import HOME_ENV, Home  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
TARGET_S = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(home: Home, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ROOT / "app" / "main.py"),
        *streamlit_flags(ROOT / ".streamlit" / "config.toml"),
        "--server.port",
        str(port),
    ]
    server = subprocess.Popen(
        cmd,
        env=dict(os.environ, **{HOME_ENV: str(home.root)}),
        cwd=ROOT,
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return server, url
        except OSError:
            time.sleep(0.3)
        if server.poll() is not None:
            break
    server.kill()
    raise SystemExit(f"the dashboard did not start:\n{log_path.read_text()[-2000:]}")


def time_table(context, url: str) -> float:
    page = context.new_page()
    start = time.perf_counter()
    page.goto(f"{url}/runs")
    page.get_by_test_id("stDataFrame").first.wait_for()
    page.get_by_text("Select runs above to chart").wait_for()
    elapsed = time.perf_counter() - start
    page.close()
    return elapsed


def time_charts(context, url: str, run_ids: list[str]) -> tuple[float, float]:
    """Seconds from navigation until both charts are drawn; then from choosing another metric
    until the curves chart shows it (the page already loaded, as when a user explores)."""
    page = context.new_page()
    start = time.perf_counter()
    page.goto(f"{url}/runs?{urlencode([('run', r) for r in run_ids])}")
    chart = page.locator(".st-key-runs-curves .js-plotly-plot")
    chart.wait_for()
    page.wait_for_function(f"el => el._fullData && el._fullData.length >= {len(run_ids)}", arg=chart.element_handle())
    page.locator(".st-key-runs-compare_chart .js-plotly-plot").wait_for()  # the comparison below the curves
    loaded = time.perf_counter() - start
    page.locator(".st-key-runs-metric input").first.click()
    start = time.perf_counter()
    page.get_by_role("option").filter(has_text="samples_per_s").first.click()
    page.wait_for_function(
        "() => { const el = document.querySelector('.st-key-runs-curves .js-plotly-plot');"
        " return el && el.layout && el.layout.title && el.layout.title.text.includes('samples_per_s'); }"
    )
    switched = time.perf_counter() - start
    page.close()
    return loaded, switched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--home", type=Path, help="a home bench_dashboard_query.py --keep filled (else: fill one)")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        if args.home:
            home = Home(args.home)
            with store.connect(home) as con:
                ids = list(store.list_runs(con)["id"].sort_values())
        else:
            home = Home(Path(tmp) / "home")
            ids = fill(home, args.runs, args.points)
        selected = ids[: SELECTED // 2] + ids[SEEDS : SEEDS + SELECTED // 2]
        server, url = serve(home, Path(tmp) / "streamlit.log")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM,
                    headless=True,
                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
                )
                context = browser.new_context(viewport={"width": 1400, "height": 2000})
                context.set_default_timeout(60_000)
                first, _ = time_charts(context, url, selected)
                print(f"first load (imports, first database open): {first:.2f} s", flush=True)
                tables = [time_table(context, url) for _ in range(args.repeats)]
                charts, switches = zip(*(time_charts(context, url, selected) for _ in range(args.repeats)))
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=10)
    for name, times in (
        ("page with its table", tables),
        (f"link to {len(selected)} runs", charts),
        ("another metric", switches),
    ):
        median = statistics.median(times)
        print(
            f"{name:>20}: median {median:.2f} s  (min {min(times):.2f}, max {max(times):.2f}; "
            f"target < {TARGET_S:.0f} s: {'met' if median < TARGET_S else 'MISSED'})",
            flush=True,
        )


if __name__ == "__main__":
    main()

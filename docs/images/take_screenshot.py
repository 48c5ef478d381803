"""Take docs/images/dashboard.png: the dashboard's Overview of a real home, in headless Chromium.

    python docs/images/take_screenshot.py HOME [PAGE ...]

HOME must hold a real profile, recommendation and autopilot (e.g. after `largestep autopilot -w fraud-gru`).
The dashboard is started on a free port for HOME, photographed through Playwright driving Debian's
/usr/bin/chromium, and stopped again (its whole process group, by its id). PAGE: a url path such as
`profiles` (one image each, docs/images/dashboard-<page>.png); none: the Overview only. The window is
1400 pixels wide and $SHOT_HEIGHT (1900) high, which holds the whole Overview with an autopilot's headline.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

IMAGES = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(home: str, pages: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    command = [str(Path(sys.executable).parent / "largestep"), "--home", home, "dashboard", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the dashboard did not start")
            time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            height = int(os.environ.get("SHOT_HEIGHT", "1900"))
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.set_default_timeout(120_000)
            for name in pages or [""]:
                page.goto(f"{url}/{name}")
                page.get_by_test_id("stMain").wait_for()
                time.sleep(3)  # let the charts draw
                page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')")
                time.sleep(2)
                out = IMAGES / (f"dashboard-{name}.png" if name else "dashboard.png")
                page.screenshot(path=str(out))
                print(out)
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

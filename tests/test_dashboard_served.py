"""`largestep dashboard` as it serves: bound to the loopback address only, with XSRF protection on.

The command is started for real on a free port (from any working directory, so the project's
.streamlit/config.toml must reach Streamlit through its flags), then asked over HTTP and read
from the socket table."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import psutil
import pytest
from helpers import wait_for

pytestmark = pytest.mark.slow  # starts a Streamlit server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, data=data)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except OSError:
        return 0, ""


def _other_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback: where a wrongly bound server would answer."""
    return [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]


@pytest.fixture
def served(home, tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "largestep.cli", "--home", str(home.root), "dashboard", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        up = wait_for(lambda: _get(f"http://127.0.0.1:{port}/_stcore/health") == (200, "ok"), 90, poll_s=0.5)
        assert up, "the dashboard never answered its health check"
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_dashboard_listens_on_loopback_only(served):
    listening = [
        c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.laddr.port == served
    ]
    assert listening and {c.laddr.ip for c in listening} == {"127.0.0.1"}, listening
    for address in _other_addresses():
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, served)) != 0, f"the dashboard answers on {address}"


def test_the_dashboard_refuses_a_request_without_its_xsrf_token(served):
    # a cross-site form could post a file here; with XSRF protection the server wants the token
    status, body = _get(f"http://127.0.0.1:{served}/_stcore/upload_file/session/file", method="PUT", data=b"x")
    assert (status, body) == (403, "XSRF token missing or invalid")

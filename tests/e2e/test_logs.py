"""--log-format json from the real twistd, and the log rotation docs/deployment.md documents."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .client import Chat
from .conftest import ServerFactory
from .process import Daemon, wait_for

pytestmark = pytest.mark.e2e

# twistd's LogFile rotates when a write finds the file at or past this size.
ROTATE_BYTES = 1_000_000
LONG_PATH = "/" + "x" * 4000  # a 404 whose access-log line is about 4 KB


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(line, dict) for line in lines)
    return lines


def test_json_log_format_writes_one_json_object_per_line(wschat_server: ServerFactory) -> None:
    """--log-format json: each stdout line is JSON; a close line has client and code fields."""
    server = wschat_server("--log-format", "json")
    chat = Chat(server.ws_url)
    chat.join("lobby", "alice")
    chat.close()
    wait_for(lambda: "closed tcp4:" in server.log(), 10, "the close line")
    server.stop()
    events = json_lines(server.log())
    [closed] = [e for e in events if e.get("log_text", "").startswith("closed tcp4:")]
    assert closed["code"] == 1000 and closed["client"].startswith("tcp4:127.0.0.1:")
    assert closed["log_namespace"] == "wschat.ws.ChatProtocol"
    assert any(e.get("log_text") == "Server Shut Down." for e in events)


def request(port: int, path: str) -> None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        exc.read()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_daemon_log_rotates_on_sigusr1_and_at_1_mb(tmp_path: Path, log_format: str) -> None:
    """A daemon's --logfile rotates on SIGUSR1 and by itself at 1 MB, in text and in JSON."""
    daemon = Daemon(tmp_path)
    port, logfile = daemon.port, daemon.logfile
    daemon.start(
        *("--listen", f"tcp:{port}:interface=127.0.0.1", "--history-db", ":memory:"),
        *("--log-format", log_format),
    )
    pid = daemon.pid
    try:
        first = logfile.with_name("wschat.log.1")
        os.kill(pid, signal.SIGUSR1)
        wait_for(first.exists, 10, "SIGUSR1 to rotate the log")
        assert "starting up" in first.read_text()
        request(port, "/after-sigusr1")
        wait_for(lambda: "/after-sigusr1" in logfile.read_text(), 10, "a line in the new file")
        assert "/after-sigusr1" not in first.read_text()

        second = logfile.with_name("wschat.log.2")
        for _ in range(ROTATE_BYTES // 1000):
            if second.exists():
                break
            request(port, LONG_PATH)
        assert second.exists(), "no rotation after 4 MB of lines"
        assert "starting up" in second.read_text()  # the file SIGUSR1 made moved on to .2
        assert "/after-sigusr1" in first.read_text()  # and the one after it, full, to .1
        assert ROTATE_BYTES <= first.stat().st_size < ROTATE_BYTES + 20_000
        assert LONG_PATH in logfile.read_text()
        if log_format == "json":
            for path in (second, first, logfile):
                assert json_lines(path.read_text())
    finally:
        daemon.stop()
    assert "Server Shut Down." in logfile.read_text()


def rotate_after(pid: int, port: int, marker: str, logfile: Path) -> None:
    """Log `marker`, then SIGUSR1, and wait until the rotated file holds it."""
    first = logfile.with_name(logfile.name + ".1")
    request(port, marker)
    wait_for(lambda: marker in logfile.read_text(), 10, "the marker in the log")
    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: first.exists() and marker in first.read_text(), 10, "a rotation")


def test_the_daemon_keeps_at_most_max_log_files_rotated_files(tmp_path: Path) -> None:
    """--max-log-files 2: after four rotations only wschat.log.1 and .2 are left."""
    daemon = Daemon(tmp_path)
    port, logfile = daemon.port, daemon.logfile
    daemon.start(
        *("--listen", f"tcp:{port}:interface=127.0.0.1", "--history-db", ":memory:"),
        *("--max-log-files", "2"),
    )
    try:
        for n in range(4):
            rotate_after(daemon.pid, port, f"/rotation-{n}", logfile)
    finally:
        daemon.stop()
    assert sorted(p.name for p in tmp_path.glob("wschat.log*")) == [
        "wschat.log",
        "wschat.log.1",
        "wschat.log.2",
    ]
    assert "/rotation-2" in logfile.with_name("wschat.log.2").read_text()

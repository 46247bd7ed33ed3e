"""A program in a real terminal: a tmux session of its own, typed into and read back."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from ..missing import missing

WAIT_S = 15.0
EXIT_RE = re.compile(r"^EXIT=(\d+)$", re.MULTILINE)


def require_tmux() -> str:
    tmux = shutil.which("tmux")
    if tmux is None:
        missing("the terminal tests need tmux (apt-get install tmux)")
    return tmux


class Terminal:
    """`command` running in a detached tmux session on a private tmux server; when it ends
    the pane shows EXIT=<status> and stays."""

    def __init__(self, command: list[str], cwd: Path, width: int = 160, height: int = 50) -> None:
        self._tmux = require_tmux()
        self._socket = f"wschat-test-{uuid.uuid4().hex[:12]}"
        shell = f"{shlex.join(command)}; echo EXIT=$?; sleep 3600"
        self._run(
            "new-session",
            "-d",
            "-s",
            "main",
            "-x",
            str(width),
            "-y",
            str(height),
            "-c",
            str(cwd),
            shell,
        )
        self._run("set-option", "-t", "main", "history-limit", "10000")

    def _run(self, *args: str) -> str:
        done = subprocess.run(
            [self._tmux, "-L", self._socket, *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.stdout

    def type(self, text: str) -> None:
        """Type a line and press Enter."""
        self._run("send-keys", "-t", "main", "-l", text)
        self._run("send-keys", "-t", "main", "Enter")

    def screen(self) -> str:
        """Everything the pane shows, scrolled-off lines included, wrapped lines joined."""
        return self._run("capture-pane", "-p", "-J", "-S", "-", "-t", "main")

    def wait_for(self, text: str, count: int = 1, timeout: float = WAIT_S) -> str:
        """Wait until `text` appears on `count` lines of the screen; the screen."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if sum(text in line for line in screen.splitlines()) >= count:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} (x{count}) never appeared; the screen:\n{screen}")
            time.sleep(0.05)

    def lines_with(self, text: str) -> list[str]:
        return [line for line in self.screen().splitlines() if text in line]

    def exit_status(self, timeout: float = WAIT_S) -> int:
        screen = self.wait_for("EXIT=", timeout=timeout)
        found = EXIT_RE.search(screen)
        assert found is not None, screen
        return int(found.group(1))

    def close(self) -> None:
        subprocess.run(
            [self._tmux, "-L", self._socket, "kill-server"], capture_output=True, timeout=10
        )

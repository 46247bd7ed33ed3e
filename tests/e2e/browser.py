"""Helpers for driving the browser client in Debian's headless Chromium through Playwright."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..missing import missing

# Debian's own Chromium, never a browser downloaded by `playwright install`.
CHROMIUM_PATH = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI containers run as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",  # Docker's 64 MB /dev/shm makes Chromium's tabs crash
]
# Playwright's auto-waiting assertions get this long: a reconnect may wait out a backoff of up
# to 8 s after a server restart.
EXPECT_TIMEOUT_MS = 20_000
REPO_ROOT = Path(__file__).resolve().parents[2]

# Chromium logs these itself (as console errors) when a connection attempt fails while the
# server is down; they are expected in the outage tests and come from no script of ours.
WEBSOCKET_FAILED_RE = re.compile(r"WebSocket connection to '.*' failed")


def require_chromium() -> None:
    """Skip the browser tests without Chromium; in CI (CI=true) that is a failure instead."""
    if os.path.isfile(CHROMIUM_PATH) and os.access(CHROMIUM_PATH, os.X_OK):
        return
    missing(f"browser tests need Debian's Chromium at {CHROMIUM_PATH} (apt-get install chromium)")


def import_playwright() -> Any:
    """playwright.sync_api, or a skip (a failure when CI=true) when the package is missing."""
    try:
        import playwright.sync_api
    except ImportError:
        missing("browser tests need the playwright package (pip install playwright)", module=True)
    return playwright.sync_api


def artifacts_dir() -> Path:
    """Where screenshots go: $ARTIFACTS_DIR, else tests/artifacts/ (git-ignored)."""
    path = Path(os.environ.get("ARTIFACTS_DIR") or REPO_ROOT / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class PageWatch:
    """Everything a page said that a finished chat page should never say."""

    name: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def on_console(self, message: Any) -> None:
        if message.type == "error" and not any(p.search(message.text) for p in self.allowed):
            self.console_errors.append(message.text)

    def on_page_error(self, error: Any) -> None:
        self.page_errors.append(str(error))

    def on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def problems(self) -> list[str]:
        return (
            [f"{self.name}: console error: {t}" for t in self.console_errors]
            + [f"{self.name}: uncaught exception: {t}" for t in self.page_errors]
            + [f"{self.name}: dialog: {t}" for t in self.dialogs]
        )


def say_frames(frames: list[str], text: str) -> list[dict[str, Any]]:
    """The `say` frames among JSON frames that carry exactly `text`."""
    out = []
    for raw in frames:
        try:
            frame = json.loads(raw)
        except ValueError:
            continue
        if isinstance(frame, dict) and frame.get("type") == "say" and frame.get("text") == text:
            out.append(frame)
    return out


def message_ids(page: Any) -> list[int]:
    """The ids of the messages the page shows, in page order."""
    ids = page.eval_on_selector_all(
        "#messages li[data-id]", "nodes => nodes.map(n => Number(n.dataset.id))"
    )
    return [int(i) for i in ids]


def texts(page: Any) -> list[str]:
    """The texts of the delivered messages the page shows, in page order."""
    return list(
        page.eval_on_selector_all(
            "#messages li[data-id] .text", "nodes => nodes.map(n => n.textContent)"
        )
    )

"""The real `twistd -n wschat` as a subprocess on free 127.0.0.1 ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from wschat.certs import write_dev_cert

TWISTD = str(Path(sys.executable).with_name("twistd"))
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
# twistd stops cleanly on SIGTERM and then re-raises the signal on itself (Twisted's
# `_exitWithSignal`), so the parent sees "terminated by SIGTERM", as it should.
CLEAN_STOP_CODES = (0, -signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One server: its ports and database stay the same across stop()/kill() and start()."""

    def __init__(self, workdir: Path, *extra_args: str, tls: bool = False) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.db_path = workdir / "history.sqlite3"
        self.log_path = workdir / "server.log"
        self.tls_port: int | None = None
        self.cert_path: Path | None = None
        if tls:
            self.tls_port = free_port()
            self.cert_path, self.key_path = write_dev_cert(workdir / "certs")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    @property
    def wss_url(self) -> str:
        return f"wss://127.0.0.1:{self.tls_port}/ws"

    def command(self) -> list[str]:
        cmd = [
            TWISTD,
            "-n",
            "--pidfile=",
            "wschat",
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--history-db",
            str(self.db_path),
        ]
        if self.tls_port is not None:
            cmd += [
                "--tls-port",
                str(self.tls_port),
                "--tls-cert",
                str(self.cert_path),
                "--tls-key",
                str(self.key_path),
            ]
        return cmd + self.extra_args

    def start(self, healthy: bool = True) -> ServerProcess:
        """Start and wait until /healthz answers: 200, or with healthy=False any answer (a
        node whose Redis is down answers 503)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"wschat exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except urllib.error.HTTPError as exc:
                if not healthy:
                    return self
                exc.close()
                time.sleep(0.05)
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"wschat did not answer /healthz in {START_TIMEOUT_S}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send `sig` and wait for the exit; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=STOP_TIMEOUT_S)

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text("utf-8", errors="replace") if self.log_path.exists() else ""

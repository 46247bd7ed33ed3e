"""Real server processes on free 127.0.0.1 ports: `twistd -n wschat` and redis-server.

Shared by tests/e2e and bench/: the standard library only (and wschat.certs for TLS), so that
the benchmark runs without the test extras.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from wschat.certs import write_dev_cert

TWISTD = str(Path(sys.executable).with_name("twistd"))
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
REDIS_START_TIMEOUT_S = 10.0
# twistd stops cleanly on SIGTERM and then re-raises the signal on itself (Twisted's
# `_exitWithSignal`), so the parent sees "terminated by SIGTERM", as it should.
CLEAN_STOP_CODES = (0, -signal.SIGTERM)
# Redis's durability by `appendfsync` policy; None: no AOF (a restart loses everything).
REDIS_PERSISTENCE_ARGS: dict[str | None, list[str]] = {
    None: ["--appendonly", "no"],
    "everysec": ["--appendonly", "yes", "--appendfsync", "everysec"],
    "always": ["--appendonly", "yes", "--appendfsync", "always"],
}
# Local URLs only: an http_proxy in the environment must not see them.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Whether `port` accepts a connection before `proc` exits or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def stop_process(proc: subprocess.Popen[bytes] | None, timeout_s: float = 3.0) -> None:
    """SIGTERM, and SIGKILL if it has not exited after `timeout_s`."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def spawn_logged(
    command: Sequence[str], workdir: Path, log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `command` in `workdir`, stdin closed, its output appended to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


class ServerProcess:
    """One server: its ports and database stay the same across stop()/kill() and start().

    `prefix` runs before twistd (the benchmark's `taskset -c CPU`); `twistd` may be another
    venv's, to measure another version of wschat."""

    def __init__(
        self,
        workdir: Path,
        *extra_args: str,
        tls: bool = False,
        twistd: str = TWISTD,
        prefix: Sequence[str] = (),
        log_path: Path | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.extra_args = list(extra_args)
        self.twistd = twistd
        self.prefix = list(prefix)
        self.port = free_port()
        self.db_path = workdir / "history.sqlite3"
        self.log_path = log_path or workdir / "server.log"
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
            self.twistd,
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

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process, appending its output to the log; does not wait for it."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = spawn_logged(
            [*self.prefix, *self.command()],
            self.workdir,
            self.log_path,
            {**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        return self.proc

    def start(self, healthy: bool = True) -> ServerProcess:
        """Start and wait until /healthz answers: 200, or with healthy=False any answer (a
        node whose Redis is down answers 503)."""
        proc = self.spawn()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"wschat exited with {proc.returncode}:\n{self.log()}")
            try:
                with _LOCAL.open(f"{self.http_url}/healthz", timeout=1) as resp:
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


class RedisProcess:
    """One redis-server; its port and directory stay the same across kill() and start(), so
    that with an `appendfsync` policy it comes back with its data."""

    def __init__(
        self,
        workdir: Path,
        binary: str,
        *,
        appendfsync: str | None = None,
        prefix: Sequence[str] = (),
        log_path: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendfsync = appendfsync
        self.prefix = list(prefix)
        self.log_path = log_path or workdir / "redis.log"
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            *REDIS_PERSISTENCE_ARGS[self.appendfsync],
            *self.extra_args,
        ]

    def start(self) -> Self:
        """Start and wait until it answers PING."""
        self.proc = spawn_logged([*self.prefix, *self.command()], self.workdir, self.log_path)
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                if self.cli("PING") == "PONG":
                    return self
            except (OSError, RuntimeError):
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def cli(self, *args: str) -> str:
        """One command over a plain socket (RESP), its reply as text."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            parts = [f"*{len(args)}\r\n".encode()]
            for arg in args:
                data = arg.encode()
                parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
            sock.sendall(b"".join(parts))
            reply = b""
            while not _complete(reply):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        kind, head, rest = reply[:1], *reply[1:].split(b"\r\n", 1)
        if kind == b"-":
            raise RuntimeError(head.decode())
        if kind == b"$":
            return "" if int(head) < 0 else rest[: int(head)].decode()
        return head.decode()


def _complete(reply: bytes) -> bool:
    """Whether `reply` holds one whole simple, integer, error or bulk-string reply."""
    if b"\r\n" not in reply:
        return False
    head, _, rest = reply.partition(b"\r\n")
    if head[:1] == b"$" and int(head[1:]) >= 0:
        return len(rest) >= int(head[1:]) + 2
    return True


def count_rows(server: ServerProcess, sql: str, *params: object) -> int:
    """Read the server's database from the side (WAL mode lets us while it runs)."""
    db = sqlite3.connect(server.db_path)
    try:
        (count,) = db.execute(sql, params).fetchone()
    finally:
        db.close()
    assert isinstance(count, int)
    return count


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.05)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def gone(pid: int) -> bool:
    """Exited; a zombie waiting for a reaper that never comes counts as exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


class Daemon:
    """`twistd wschat` run as a daemon in a folder of its own (twistd's pidfile and logfile
    there), serving on `port` once `started()`; `stop()` ends it with SIGTERM."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pidfile = directory / "wschat.pid"
        self.logfile = directory / "wschat.log"
        self.port = free_port()
        self.pid = 0

    def start(self, *wschat_args: str, umask: int = -1) -> Self:
        """Daemonize with these `twistd wschat` options and wait until /healthz answers."""
        done = subprocess.run(
            [
                *(TWISTD, "--pidfile", str(self.pidfile), "--logfile", str(self.logfile)),
                *("wschat", *wschat_args),
            ],
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=30,
            umask=umask,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        url = f"http://127.0.0.1:{self.port}/healthz"
        wait_for(lambda: self.pidfile.exists() and healthy(url), 20, "the daemon to serve")
        self.pid = int(self.pidfile.read_text())
        return self

    def stop(self) -> None:
        """SIGTERM, as systemd or an operator sends it, and wait until the process is gone."""
        os.kill(self.pid, signal.SIGTERM)
        wait_for(lambda: gone(self.pid), 20, "the daemon to exit")

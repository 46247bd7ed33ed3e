"""A real PostgreSQL server of the tests' own: initdb in a temporary directory, `postgres` on a
free 127.0.0.1 port, run as the `postgres` user when the tests run as root (PostgreSQL refuses
root); never the machine's own service. Missing, it skips (fails with CI=true)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from .missing import missing

START_TIMEOUT_S = 60.0
# Enough for a test, and none of the disk flushes: fsync only guards against the OS crashing,
# which no test does (a SIGKILLed server comes back with every commit).
TEST_SETTINGS = {
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "64MB",
    "log_min_messages": "warning",
}


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin directory (Debian keeps them out of PATH)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        missing("PostgreSQL is not installed (apt-get install postgresql)")
    return Path(initdb).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


class PgServer:
    """`start()`, then `url(create_database())` for each test; `kill()` SIGKILLs the server and
    its backends at once (as a crash would), `start()` again recovers the same data."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.bin = postgres_bin()
        self.root = Path(tempfile.mkdtemp(prefix="wschat-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.settings = {**TEST_SETTINGS, **(settings or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self._databases = 0
        self._tls_only = False
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            # PostgreSQL will not run as root; the directory must be the server's own.
            shutil.chown(self.root, "postgres", "postgres")
            self._as = {"user": "postgres", "group": "postgres", "extra_groups": []}

    def _run(self, *args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, cwd=self.root, **self._as)

    def start(self) -> PgServer:
        if not self.data.exists():
            self._initdb()
        return self._launch()

    def _initdb(self) -> None:
        self._run(
                str(self.bin / "initdb"),
                "-D", str(self.data),
                "-A", "trust",
                "-U", "postgres",
                "-E", "UTF8",
                "--locale", "C",
                "--no-sync",
            )  # fmt: skip
        if self._tls_only:
            # Local sockets stay open to the tests' own administration; TCP only with TLS.
            hba = self.data / "pg_hba.conf"
            hba.write_text("local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
            if self._as:
                shutil.chown(hba, "postgres", "postgres")

    def _launch(self) -> PgServer:
        args = [
            str(self.bin / "postgres"),
            "-D", str(self.data),
            "-p", str(self.port),
            "-k", str(self.root),
            "-c", "listen_addresses=127.0.0.1",
        ]  # fmt: skip
        for key, value in self.settings.items():
            args += ["-c", f"{key}={value}"]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,
                **self._as,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return self
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postgres did not start: {self.log.read_text(errors='replace')[-2000:]}"
                    ) from None
                time.sleep(0.05)

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def with_tls(self) -> Path:
        """Serve TLS (and refuse anything else over TCP) with a development certificate for
        localhost and 127.0.0.1; call before start(). The certificate, to trust."""
        from wschat.certs import write_dev_cert

        cert, key = write_dev_cert(self.root / "tls")
        if self._as:
            for path in (cert.parent, cert, key):
                shutil.chown(path, "postgres", "postgres")
        key.chmod(0o600)
        self.settings |= {"ssl": "on", "ssl_cert_file": str(cert), "ssl_key_file": str(key)}
        self._tls_only = True
        return cert

    def admin(self, sql: Any, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def create_database(self) -> str:
        """A new empty database (from template0: nothing of a test's is left in template1)."""
        self._databases += 1
        name = f"t{self._databases}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE template0".encode())
        return name

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once: what a crash or an OOM kill of
        the whole server leaves. (Each backend is in a process group of its own, and one whose
        postmaster died may still answer a query before it notices.)"""
        if self.process is not None and self.process.poll() is None:
            for pid in [*children(self.process.pid), self.process.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        """A fast shutdown (SIGINT): sessions are cut, the data is clean."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

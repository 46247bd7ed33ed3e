"""Running wschat as people deploy it: `--help`, daemon mode, and both kinds of install."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from wschat.app.options import Options

from .process import TWISTD, Daemon, free_port, gone, healthy, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
# What issue 2 says `--help` must document, on top of whatever else Options declares.
REQUIRED_OPTIONS = [
    "--port",
    "--listen",
    "--tls-port",
    "--tls-cert",
    "--tls-key",
    "--history-db",
    "--history-size",
    "--allowed-origin",
    "--max-message-bytes",
    "--rate",
    "--burst",
    "--ping-interval",
]


def declared_options() -> list[str]:
    """Every long option wschat's Options declares (Twisted gathers them from its parameters,
    flags and opt_ methods)."""
    names = [name.rstrip("=") for name in Options().longOpt]
    return sorted({f"--{n}" for n in names} - {"--help", "--version"})


def test_help_lists_every_option(tmp_path: Path) -> None:
    """`twistd wschat --help` exits 0 and documents every option wschat declares."""
    done = subprocess.run(
        [TWISTD, "wschat", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    listed = declared_options()
    assert set(REQUIRED_OPTIONS) <= set(listed)
    for option in listed:
        assert f"{option}=" in done.stdout or f"{option} " in done.stdout, option
    assert "/healthz" in done.stdout


def test_daemon_mode(tmp_path: Path) -> None:
    """Daemonized twistd (pidfile, logfile) serves and stops cleanly on SIGTERM to its pid."""
    pidfile, logfile, port = tmp_path / "wschat.pid", tmp_path / "wschat.log", free_port()
    done = subprocess.run(
        [
            TWISTD,
            "--pidfile",
            str(pidfile),
            "--logfile",
            str(logfile),
            "wschat",
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        wait_for(lambda: pidfile.exists() and healthy(url), 20, "the daemon to serve")
        pid = int(pidfile.read_text())
        assert pid != os.getpid() and not gone(pid)
        assert (tmp_path / "wschat.sqlite3").exists(), "the default database is in the cwd"
    except BaseException:
        print(logfile.read_text() if logfile.exists() else "no log")
        raise

    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: gone(pid), 20, "the daemon to exit")
    wait_for(lambda: not pidfile.exists(), 5, "the pidfile to go")
    log = logfile.read_text()
    assert "stopped: connections closed, history database closed" in log
    assert "Server Shut Down." in log
    assert not healthy(url)


def test_editable_install_serves_the_plugin(tmp_path: Path) -> None:
    """The editable (compat) install gives `twistd wschat` from any dir, Twisted's intact."""
    done = subprocess.run(
        [sys.executable, "-c", "import wschat; print(wschat.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert Path(done.stdout.strip()).resolve() == REPO / "wschat" / "__init__.py"
    listing = subprocess.run(
        [TWISTD, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    ).stdout
    assert "wschat" in listing and "    web " in listing


def copy_source(destination: Path) -> Path:
    """The project without the venv, VCS or build leftovers: `pip install` builds in its source
    tree, which here is shared with other people."""
    ignore = shutil.ignore_patterns(
        ".venv*",
        ".git",
        "build",
        "dist",
        "*.egg-info",
        "__pycache__",
        ".*_cache",
        ".hypothesis",
        "artifacts",
        "*.so",
    )
    return Path(shutil.copytree(REPO, destination, ignore=ignore))


@pytest.mark.slow
def test_pip_install_into_fresh_venv(tmp_path: Path) -> None:
    """`pip install .` into a fresh venv gives a working `twistd wschat` with its page and
    its C extension."""
    source = copy_source(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-compile",
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    twistd = str(venv / "bin" / "twistd")
    # The C write loop is built by the install (this machine has a compiler), not copied.
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import wschat, wschat.server._sendmany as c;print(wschat.__file__); print(c.__file__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert where.returncode == 0, where.stderr
    assert all(Path(line).is_relative_to(venv) for line in where.stdout.split())
    listing = subprocess.run(
        [twistd, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    ).stdout
    assert "wschat" in listing and "    web " in listing

    port = free_port()
    server = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "wschat", "--listen", f"tcp:{port}:interface=127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: healthy(f"http://127.0.0.1:{port}/healthz") or server.poll() is not None,
            30,
            "the installed server",
        )
        assert server.poll() is None, server.stdout.read() if server.stdout else ""
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            assert resp.read() == (REPO / "wschat" / "static" / "index.html").read_bytes()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_daemon_creates_its_database_and_log_private(tmp_path: Path, log_format: str) -> None:
    """A daemon started with umask 022 creates the database, its -wal and -shm, and the log
    0600 (twistd's daemon umask, applied before makeService opens them)."""
    daemon = Daemon(tmp_path)
    db, logfile = tmp_path / "history.sqlite3", daemon.logfile
    daemon.start(
        *("--port", str(daemon.port), "--history-db", str(db), "--log-format", log_format),
        umask=0o022,
    )
    try:
        files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"), logfile]
        modes = {path.name: oct(path.stat().st_mode & 0o777) for path in files}
        assert modes == {path.name: "0o600" for path in files}, logfile.read_text()
    finally:
        daemon.stop()

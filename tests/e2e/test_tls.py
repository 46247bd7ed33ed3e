"""wss:// and https:// with the development certificate, ALPN, and TLS start-up errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from wschat.certs import write_dev_cert

from ..missing import missing
from .client import Chat, insecure_context
from .process import TWISTD, ServerProcess, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server on plain and TLS ports whose certificate comes from `python -m wschat.certs`."""
    server = ServerProcess(tmp_path / "tls", tls=True)
    assert server.cert_path is not None
    certs_dir = server.cert_path.parent
    for old in certs_dir.iterdir():
        old.unlink()
    done = subprocess.run(
        [sys.executable, "-m", "wschat.certs", str(certs_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert server.cert_path.exists() and server.key_path.exists()
    assert server.key_path.stat().st_mode & 0o077 == 0, "the key must be private"
    server.start()
    yield server
    server.kill()


def test_wss_round_trip(tls_server: ServerProcess) -> None:
    """Join and say over wss:// with the generated certificate, next to plain ws://."""
    alice = Chat(tls_server.wss_url)
    assert alice.join("lobby", "alice")["users"] == ["alice"]
    bob = Chat(tls_server.ws_url)
    bob.join("lobby", "bob")
    alice.expect_presence(joined=["bob"])
    ack = alice.say("lobby", "over TLS", ref="t1")
    assert alice.expect("message")["id"] == ack["id"]
    assert bob.expect("message")["text"] == "over TLS"


def test_https_serves_healthz_and_page(tls_server: ServerProcess) -> None:
    """The TLS port serves /healthz and / like the plain one."""
    context = insecure_context()
    with urllib.request.urlopen(tls_server.https_url + "/healthz", context=context) as resp:
        assert json.load(resp)["status"] == "ok"
    with urllib.request.urlopen(tls_server.https_url + "/", context=context) as resp:
        assert b"<html" in resp.read()


def test_alpn_offers_http11(tls_server: ServerProcess) -> None:
    """A client that sends ALPN (as browsers do) negotiates http/1.1 over TLS 1.2 or newer."""
    if shutil.which("openssl") is None:
        missing("the ALPN check needs the openssl command (apt-get install openssl)")
    done = subprocess.run(
        [
            "openssl",
            "s_client",
            "-alpn",
            "http/1.1",
            "-connect",
            f"127.0.0.1:{tls_server.tls_port}",
            "-servername",
            "localhost",
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert "ALPN protocol: http/1.1" in done.stdout, done.stdout + done.stderr
    assert "Protocol  : TLSv1.2" in done.stdout or "TLSv1.3" in done.stdout


def run_twistd(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", "wschat", "--history-db", ":memory:", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_missing_key_is_a_clear_startup_error(tmp_path: Path) -> None:
    """A missing TLS key file stops twistd at start-up, exit non-zero, naming the file."""
    cert, _ = write_dev_cert(tmp_path / "certs")
    missing = tmp_path / "certs" / "nokey.pem"
    done = run_twistd(
        tmp_path, "--tls-port", str(free_port()), "--tls-cert", str(cert), "--tls-key", str(missing)
    )
    assert done.returncode != 0
    assert f"TLS private key file not found: {missing}" in done.stdout + done.stderr


def test_mismatched_cert_and_key_is_a_clear_startup_error(tmp_path: Path) -> None:
    """A cert with another cert's key (or half the TLS options) stops twistd with a message."""
    cert, _ = write_dev_cert(tmp_path / "one")
    _, other_key = write_dev_cert(tmp_path / "two")
    done = run_twistd(
        tmp_path,
        "--tls-port",
        str(free_port()),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(other_key),
    )
    assert done.returncode != 0
    assert "do not match" in done.stdout + done.stderr

    done = run_twistd(tmp_path, "--tls-port", str(free_port()), "--tls-cert", str(cert))
    assert done.returncode != 0
    assert "--tls-port, --tls-cert and --tls-key go together" in done.stdout + done.stderr

"""wss:// and https:// with the development certificate, ALPN, and TLS start-up errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from wschat.certs import write_dev_cert

from ..missing import missing
from ..tlskit import x25519_key
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


def tls12_agrees(port: int, cipher: str) -> bool:
    """Whether a TLS 1.2 handshake offering only `cipher` (OpenSSL's name) succeeds."""
    done = subprocess.run(
        [
            *("openssl", "s_client", "-tls1_2", "-cipher", f"{cipher}:@SECLEVEL=0"),
            *("-connect", f"127.0.0.1:{port}", "-servername", "localhost"),
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
    )
    return f"Cipher is {cipher}" in done.stdout


def test_tls12_agrees_only_on_forward_secret_aead_suites(tls_server: ServerProcess) -> None:
    """Of every TLS 1.2 suite `openssl s_client` knows, the server (EC certificate) agrees on
    the ECDSA half of the documented list only: ECDHE with AES-GCM or ChaCha20-Poly1305."""
    if shutil.which("openssl") is None:
        missing("the cipher check needs the openssl command (apt-get install openssl)")
    listed = subprocess.run(
        ["openssl", "ciphers", "-tls1_2", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"],
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    ).stdout.strip()
    suites = [name for name in listed.split(":") if not name.startswith("TLS_")]  # TLS 1.3's
    assert "ECDHE-ECDSA-AES128-SHA" in suites and len(suites) > 30, suites
    port = tls_server.tls_port
    assert port is not None
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = pool.map(lambda suite: tls12_agrees(port, suite), suites)
        agreed = [suite for suite, ok in zip(suites, answers, strict=True) if ok]
    assert sorted(agreed) == [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ]


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


def test_a_key_that_cannot_sign_is_a_one_line_startup_error(tmp_path: Path) -> None:
    """An X25519 key stops twistd with one usage line naming the file, not a traceback."""
    cert, _ = write_dev_cert(tmp_path / "certs")
    key = x25519_key(tmp_path / "certs" / "x25519.pem")
    done = run_twistd(
        tmp_path, "--tls-port", str(free_port()), "--tls-cert", str(cert), "--tls-key", str(key)
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"TLS private key file {key} holds a key TLS cannot sign with" in output, output
    assert "Traceback" not in output, output

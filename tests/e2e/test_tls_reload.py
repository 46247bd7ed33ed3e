"""SIGHUP against the real twistd: renewed certificates for new connections, none dropped."""

from __future__ import annotations

import grp
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from ..missing import missing
from ..tlskit import Pair, chain, self_signed, x25519_key
from .client import Chat, insecure_context
from .conftest import ServerFactory
from .process import ServerProcess, free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DEPLOY_HOOK = REPO / "contrib" / "certbot" / "wschat-deploy-hook"
PEM_RE = re.compile(r"-----BEGIN CERTIFICATE-----\n.+?\n-----END CERTIFICATE-----\n", re.DOTALL)
RELOADED = "TLS reload of "


def peer_der(port: int, context: ssl.SSLContext | None = None) -> bytes:
    """The certificate a new TLS connection to 127.0.0.1:`port` is shown (Python's ssl)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with (context or insecure_context()).wrap_socket(sock, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def s_client_leaf(port: int) -> str:
    """The certificate `openssl s_client -alpn http/1.1` is shown, as PEM; ALPN must agree."""
    if shutil.which("openssl") is None:
        missing("the TLS reload test needs the openssl command (apt-get install openssl)")
    done = subprocess.run(
        ["openssl", "s_client", "-alpn", "http/1.1", "-connect", f"127.0.0.1:{port}"],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert "ALPN protocol: http/1.1" in done.stdout, done.stdout + done.stderr
    leaf = PEM_RE.search(done.stdout)
    assert leaf is not None, done.stdout
    return leaf.group(0)


def reload_lines(server: ServerProcess) -> list[str]:
    return [line for line in server.log().splitlines() if RELOADED in line]


def sighup(server: ServerProcess) -> str:
    """SIGHUP the server and return the one log line its reload wrote."""
    assert server.proc is not None
    before = len(reload_lines(server))
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while len(lines := reload_lines(server)) == before:
        assert time.monotonic() < deadline, f"no reload line after SIGHUP:\n{server.log()}"
        time.sleep(0.05)
    time.sleep(0.2)  # a second line would be a bug: one endpoint, one line
    lines = reload_lines(server)
    assert len(lines) == before + 1, lines
    return lines[-1]


def test_sighup_gives_new_connections_the_new_certificate_and_keeps_old_ones(
    wschat_server: ServerFactory, tmp_path: Path
) -> None:
    """SIGHUP: broken pairs (a key of another certificate, none, an X25519 key) keep A, then B
    reaches new clients while a wss client of A chats on."""
    server = wschat_server(tls=True)
    assert server.cert_path is not None and server.tls_port is not None
    port = server.tls_port
    served = Pair(server.cert_path, server.key_path)  # the files the server reads
    (tmp_path / "a").mkdir()
    a = Pair(tmp_path / "a" / "cert.pem", tmp_path / "a" / "key.pem")
    served.install(a.cert, a.key)
    b = self_signed(tmp_path / "b", "b.localhost")
    old = Chat(server.wss_url)
    old.join("lobby", "old")
    assert old.ws.socket.getpeercert(binary_form=True) == a.der  # type: ignore[attr-defined]
    assert peer_der(port) == a.der

    shutil.copyfile(b.cert, served.cert)  # a renewal half done: new certificate, old key
    line = sighup(server)
    assert "#error]" in line, line
    assert "failed, still serving CN=localhost" in line and "do not match" in line, line
    assert peer_der(port) == a.der
    assert s_client_leaf(port) == a.leaf_pem

    a.install(served.cert, served.key)
    os.remove(served.key)
    line = sighup(server)
    assert "failed" in line and f"TLS private key file not found: {served.key}" in line, line
    assert peer_der(port) == a.der

    x25519_key(served.key)  # a key of a type TLS cannot sign with
    line = sighup(server)
    assert "#error]" in line and "holds a key TLS cannot sign with" in line, line
    assert "Traceback" not in server.log()
    assert peer_der(port) == a.der
    ack = old.say("lobby", "during the failed reloads")
    assert old.expect("message")["id"] == ack["id"]

    b.install(served.cert, served.key)
    line = sighup(server)
    assert "new connections get CN=b.localhost" in line, line
    assert peer_der(port) == b.der
    assert s_client_leaf(port) == b.leaf_pem

    new = Chat(server.wss_url)
    assert new.ws.socket.getpeercert(binary_form=True) == b.der  # type: ignore[attr-defined]
    assert new.join("lobby", "new")["users"] == ["new", "old"]
    old.expect_presence(joined=["new"])
    ack = old.say("lobby", "still on the old certificate")
    assert old.expect("message")["id"] == ack["id"]
    assert new.expect("message")["text"] == "still on the old certificate"
    new.say("lobby", "on the new one")
    assert old.expect("message")["text"] == "on the new one"
    assert old.ws.socket.getpeercert(binary_form=True) == a.der  # type: ignore[attr-defined]
    assert server.running


def test_the_chain_in_the_certificate_file_is_sent(
    wschat_server: ServerFactory, tmp_path: Path
) -> None:
    """A fullchain.pem's intermediate is sent: a client trusting only the root verifies."""
    root, pair = chain(tmp_path / "ca")
    port = free_port()
    wschat_server(
        "--tls-listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--tls-cert",
        str(pair.cert),
        "--tls-key",
        str(pair.key),
    )
    verifying = ssl.create_default_context(cafile=str(root))
    assert peer_der(port, verifying) == pair.der


def test_the_certbot_deploy_hook_installs_the_pair_and_reloads(
    wschat_server: ServerFactory, tmp_path: Path
) -> None:
    """The certbot deploy hook installs the renewed pair (key 0640) and SIGHUPs it in."""
    tls_dir = tmp_path / "etc-wschat-tls"
    first = self_signed(tmp_path / "first", "first.localhost")
    tls_dir.mkdir()
    cert, key = tls_dir / "fullchain.pem", tls_dir / "privkey.pem"
    first.install(cert, key)
    port = free_port()
    server = wschat_server(
        "--tls-listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )
    assert server.proc is not None
    lineage = tmp_path / "live" / "chat.example.com"
    _, renewed = chain(lineage)  # certbot's names: fullchain.pem and privkey.pem
    done = subprocess.run(
        [str(DEPLOY_HOOK)],
        env={
            "PATH": os.environ["PATH"],
            "RENEWED_LINEAGE": str(lineage),
            "WSCHAT_TLS_DIR": str(tls_dir),
            "WSCHAT_GROUP": grp.getgrgid(os.getgid()).gr_name,
            "WSCHAT_RELOAD": f"kill -HUP {server.proc.pid}",
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert cert.read_bytes() == renewed.cert.read_bytes()
    assert key.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tls_dir.iterdir()) == ["fullchain.pem", "privkey.pem"]
    deadline = time.monotonic() + 10
    while peer_der(port) != renewed.der:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    assert "new connections get CN=localhost" in reload_lines(server)[-1]

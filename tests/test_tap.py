"""twistd options and the service tree makeService wires."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.application.service import MultiService
from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from wschat.certs import write_dev_cert
from wschat.service import ChatService
from wschat.tap import Options, makeService
from wschat.tlsreload import TlsFiles, TlsListen


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_default_is_plain_tcp_8080() -> None:
    """Without --listen or --tls-port, the server listens on tcp:8080."""
    assert parse()["listen"] == ["tcp:8080"]
    assert parse("--port", "9000")["listen"] == ["tcp:9000"]


def test_drain_defaults() -> None:
    """SIGTERM drains over 5 s by default, bounded by a 30 s shutdown timeout; 0 is allowed."""
    options = parse()
    assert (options["drain-seconds"], options["shutdown-timeout"]) == (5.0, 30.0)
    assert parse("--drain-seconds", "0")["drain-seconds"] == 0.0


def test_listen_is_repeatable_and_replaces_port() -> None:
    """--listen endpoints are used as given, and --port is then ignored."""
    options = parse("--listen", "tcp:1:interface=127.0.0.1", "--listen", "tcp6:2", "--port", "3")
    assert options["listen"] == ["tcp:1:interface=127.0.0.1", "tcp6:2"]


def test_tls_shorthand_becomes_a_reloadable_tls_endpoint(tmp_path: Path) -> None:
    """--tls-port/--tls-cert/--tls-key give TLS over tcp:PORT (and no plain port)."""
    cert, key = write_dev_cert(tmp_path / "a:b")
    options = parse("--tls-port", "8443", "--tls-cert", str(cert), "--tls-key", str(key))
    assert options["listen"] == []
    assert options["tls"] == [TlsListen("tcp:8443", TlsFiles(str(cert), str(key)), "tcp:8443")]


def test_ssl_listen_strings_and_tls_listen_are_tls_endpoints(tmp_path: Path) -> None:
    """--listen ssl:... and --tls-listen become reloadable TLS endpoints; both need a pair."""
    cert, key = write_dev_cert(tmp_path / "a:b")
    quoted_key, quoted_cert = quoteStringArgument(str(key)), quoteStringArgument(str(cert))
    ssl = f"ssl:8443:privateKey={quoted_key}:certKey={quoted_cert}"
    options = parse(
        "--listen",
        "tcp:8080",
        "--listen",
        ssl,
        "--tls-listen",
        "systemd:domain=INET6:name=https",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )
    assert options["listen"] == ["tcp:8080"]
    files = TlsFiles(str(cert), str(key))
    assert options["tls"] == [
        TlsListen("systemd:domain=INET6:name=https", files, "systemd:domain=INET6:name=https"),
        TlsListen("tcp:8443", files, ssl),
    ]
    with pytest.raises(usage.UsageError, match="--tls-listen ENDPOINT with --tls-cert"):
        parse("--tls-listen", "tcp:8443")
    with pytest.raises(usage.UsageError, match="do not take sslmethod"):
        parse("--listen", ssl + ":sslmethod=TLSv1_2_METHOD")


def test_tls_refuses_missing_or_mismatched_files(tmp_path: Path) -> None:
    """A missing file or a key that does not match the certificate stops start-up clearly."""
    cert, _ = write_dev_cert(tmp_path / "one")
    _, other_key = write_dev_cert(tmp_path / "two")
    with pytest.raises(usage.UsageError, match="not found"):
        parse("--tls-port", "8443", "--tls-cert", str(cert), "--tls-key", str(tmp_path / "no.pem"))
    with pytest.raises(usage.UsageError, match="do not match"):
        parse("--tls-port", "8443", "--tls-cert", str(cert), "--tls-key", str(other_key))
    with pytest.raises(usage.UsageError, match="go together"):
        parse("--tls-port", "8443")


@pytest.mark.parametrize(
    "args",
    [
        ("--history-size", "0"),
        ("--rate", "0"),
        ("--max-message-bytes", "-5"),
        ("--max-members", "-1"),
        ("--port", "http"),
        ("--drain-seconds", "-1"),
        ("--shutdown-timeout", "0"),
        ("--drain-seconds", "30"),  # not shorter than the default --shutdown-timeout
    ],
)
def test_bad_numbers_are_refused(args: tuple[str, ...]) -> None:
    """Numeric options refuse values that make no sense."""
    with pytest.raises(usage.UsageError):
        parse(*args)


class ThreadedMemoryReactor(MemoryReactorClock):
    """The history store hands its checkpoints to the reactor's threads; these run them now."""

    def callInThread(self, f: Callable[..., object], *args: object, **kwargs: object) -> None:
        f(*args, **kwargs)


def test_make_service_listens_on_every_endpoint(tmp_path: Path) -> None:
    """makeService wires the chat service, then a port per endpoint, TLS ones wrapping the site."""
    reactor = ThreadedMemoryReactor()
    cert, key = write_dev_cert(tmp_path / "certs")
    options = parse(
        "--listen",
        "tcp:8081:interface=127.0.0.1",
        "--listen",
        "tcp:8082",
        "--tls-port",
        "8443",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--history-db",
        str(tmp_path / "h.sqlite3"),
    )
    top = makeService(options, reactor=reactor)
    assert isinstance(top, MultiService)
    services = list(top)
    assert isinstance(services[0], ChatService)
    top.startService()
    try:
        ports = [(port[0], port[3]) for port in reactor.tcpServers]
        assert ports == [(8081, "127.0.0.1"), (8082, ""), (8443, "")]
        plain, tls = reactor.tcpServers[0][1], reactor.tcpServers[2][1]
        assert isinstance(tls, TLSMemoryBIOFactory) and tls.wrappedFactory is plain
    finally:
        top.stopService()
    reactor.advance(10)

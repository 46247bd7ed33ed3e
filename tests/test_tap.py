"""twistd options and the service tree makeService wires."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from wschat.certs import write_dev_cert
from wschat.chat.identity import AuthMode
from wschat.service import ChatService
from wschat.tap import Options, makeService

from .jwtkit import rsa_pair, write_public_key, write_secret


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_default_is_plain_tcp_8080() -> None:
    """Without --listen or --tls-port, the server listens on tcp:8080."""
    assert parse()["listen"] == ["tcp:8080"]
    assert parse("--port", "9000")["listen"] == ["tcp:9000"]


def test_listen_is_repeatable_and_replaces_port() -> None:
    """--listen endpoints are used as given, and --port is then ignored."""
    options = parse("--listen", "tcp:1:interface=127.0.0.1", "--listen", "tcp6:2", "--port", "3")
    assert options["listen"] == ["tcp:1:interface=127.0.0.1", "tcp6:2"]


def test_tls_shorthand_becomes_an_ssl_endpoint(tmp_path: Path) -> None:
    """--tls-port/--tls-cert/--tls-key add a quoted ssl: endpoint (and no plain port)."""
    cert, key = write_dev_cert(tmp_path / "a:b")
    options = parse("--tls-port", "8443", "--tls-cert", str(cert), "--tls-key", str(key))
    [endpoint] = options["listen"]
    assert endpoint.startswith("ssl:8443:privateKey=")
    assert "a\\:b" in endpoint


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
    """makeService wires the chat service first, then one port service per endpoint."""
    reactor = ThreadedMemoryReactor()
    options = parse(
        "--listen",
        "tcp:8081:interface=127.0.0.1",
        "--listen",
        "tcp:8082",
        "--history-db",
        str(tmp_path / "h.sqlite3"),
    )
    top = makeService(options, reactor=reactor)
    assert isinstance(top, MultiService)
    services = list(top)
    assert isinstance(services[0], ChatService)
    top.startService()
    assert [(port[0], port[3]) for port in reactor.tcpServers] == [(8081, "127.0.0.1"), (8082, "")]
    top.stopService()
    reactor.advance(10)


def test_auth_defaults_follow_the_key_options(tmp_path: Path) -> None:
    """Without a key the chat is open (--auth off); with one, auth is required unless
    --auth says optional; the key is loaded at start-up."""
    assert parse()["auth"] is AuthMode.OFF
    secret = str(write_secret(tmp_path))
    assert parse("--jwt-secret-file", secret)["auth"] is AuthMode.REQUIRED
    optional = parse("--jwt-secret-file", secret, "--auth", "optional")
    assert optional["auth"] is AuthMode.OPTIONAL and optional["jwt-key"].algorithms == ("HS256",)
    public = str(write_public_key(tmp_path, rsa_pair()))
    assert parse("--jwt-public-key-file", public)["jwt-key"].algorithms == ("RS256",)
    assert parse("--jwks-url", "https://app.example/jwks")["auth"] is AuthMode.REQUIRED


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("--auth", "required"), "needs --jwt-secret-file"),
        (("--auth", "sometimes"), "not one of"),
        (("--jwks-url", "file:///etc/keys"), "http"),
        (("--jwt-secret-file", "SECRET", "--jwks-url", "https://a/j"), "one of"),
        (("--jwt-secret-file", "SHORT"), "at least 32"),
        (("--jwt-public-key-file", "SECRET"), "not a PEM"),
        (("--jwt-grace", "-1"), "negative"),
        (("--client-token-url", "https://app.example/t"), "needs signed identities"),
        (("--jwt-secret-file", "SECRET", "--client-token-url", "javascript:alert(1)"), "http"),
    ],
)
def test_auth_options_are_checked_at_start_up(
    tmp_path: Path, args: tuple[str, ...], match: str
) -> None:
    """Inconsistent or unusable auth options stop twistd with a message saying why."""
    secret = str(write_secret(tmp_path))
    short = tmp_path / "short"
    short.write_bytes(b"too short")
    paths = {"SECRET": secret, "SHORT": str(short)}
    with pytest.raises(usage.UsageError, match=match):
        parse(*(paths.get(a, a) for a in args))


def test_make_service_wires_the_verifier(tmp_path: Path) -> None:
    """The factory gets the mode, the verifier with the --jwt-* settings, and the grace."""
    options = parse(
        "--history-db",
        ":memory:",
        "--jwt-secret-file",
        str(write_secret(tmp_path)),
        "--jwt-audience",
        "chat",
        "--jwt-issuer",
        "https://app.example",
        "--jwt-leeway",
        "5",
        "--jwt-grace",
        "40",
    )
    top = makeService(options, reactor=ThreadedMemoryReactor())
    service = next(iter(top))
    assert isinstance(service, ChatService)
    auth = service.factory.auth
    assert auth.mode is AuthMode.REQUIRED and auth.grace_s == 40
    assert auth.verifier is not None
    assert (auth.verifier.audience, auth.verifier.issuer, auth.verifier.leeway_s) == (
        "chat",
        "https://app.example",
        5,
    )


def test_the_api_options_go_together(tmp_path: Path) -> None:
    """--api-listen needs --api-key-file (and the other way round); the keys are loaded at
    start-up, and makeService adds one listener per --api-listen."""
    keys = tmp_path / "api.keys"
    keys.write_text("k" * 32 + "\n")
    with pytest.raises(usage.UsageError, match="go together"):
        parse("--api-listen", "tcp:8081")
    with pytest.raises(usage.UsageError, match="go together"):
        parse("--api-key-file", str(keys))
    short = tmp_path / "short.keys"
    short.write_text("abc\n")
    with pytest.raises(usage.UsageError, match="at least"):
        parse("--api-listen", "tcp:8081", "--api-key-file", str(short))
    reactor = ThreadedMemoryReactor()
    options = parse(
        "--listen",
        "tcp:8080:interface=127.0.0.1",
        "--api-listen",
        "tcp:8081:interface=127.0.0.1",
        "--api-key-file",
        str(keys),
        "--history-db",
        ":memory:",
    )
    top = makeService(options, reactor=reactor)
    top.startService()
    assert [(p[0], p[3]) for p in reactor.tcpServers] == [(8080, "127.0.0.1"), (8081, "127.0.0.1")]
    top.stopService()
    reactor.advance(10)

"""twistd options and the service tree makeService wires."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import treq
from treq.testing import StubTreq
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.server import Site
from zope.interface import implementer, provider

import wschat
from wschat.app.lifecycle import ChatService
from wschat.app.tls import TlsFiles, ssl_as_tls, tls_description
from wschat.app.wiring import DEFAULT_BACKLOG, Options, make_auth, makeService
from wschat.certs import write_dev_cert
from wschat.chat.identity import AuthMode
from wschat.chat.limits import Limits
from wschat.server.settings import AuthSettings, WsSettings
from wschat.server.site import ChatSite
from wschat.store.sweep import HistorySweeper

from .jwtkit import rsa_pair, write_public_key, write_secret


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
    assert options["tls"] == [tls_description("tcp:8443", TlsFiles(str(cert), str(key)))]


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
        tls_description("systemd:domain=INET6:name=https", files),
        ssl_as_tls(ssl),
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
        ("--rate-per-ip", "-1"),
        ("--burst-per-ip", "0"),
        ("--history-ttl", "0d"),
        ("--history-ttl", "soon"),
        ("--max-history-rooms", "-1"),
    ],
)
def test_bad_numbers_are_refused(args: tuple[str, ...]) -> None:
    """Numeric options refuse values that make no sense."""
    with pytest.raises(usage.UsageError):
        parse(*args)


@implementer(IListeningPort)
class ListeningPort:
    """A port that says whether it still listens; like a real one, it is closed a reactor
    turn after stopListening, when the Deferred that returns fires."""

    def __init__(self, reactor: MemoryReactorClock, address: IPv4Address, events: list[str]):
        self._reactor = reactor
        self._address = address
        self._events = events
        self.listening = True

    def startListening(self) -> None:
        pass

    def stopListening(self) -> Deferred[None]:
        self._events.append(f"stop listening on {self._address.port}")

        def closed() -> None:
            self.listening = False

        return deferLater(self._reactor, 0, closed)

    def getHost(self) -> IPv4Address:
        return self._address


class ThreadedMemoryReactor(MemoryReactorClock):
    """The history store hands its checkpoints to the reactor's threads; these run them now.
    Its TCP ports are ListeningPorts, all noting their stops in `events`."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.ports: list[ListeningPort] = []

    def callInThread(self, f: Callable[..., object], *args: object, **kwargs: object) -> None:
        f(*args, **kwargs)

    def listenTCP(
        self, port: int, factory: ServerFactory, backlog: int = 50, interface: str = ""
    ) -> ListeningPort:
        super().listenTCP(port, factory, backlog, interface)
        listening = ListeningPort(self, IPv4Address("TCP", interface, port), self.events)
        self.ports.append(listening)
        return listening


def test_make_service_listens_on_every_endpoint(tmp_path: Path) -> None:
    """makeService listens on every endpoint (TLS ones wrapping the site); stopping closes
    every port before the chat."""
    reactor = ThreadedMemoryReactor()
    cert, key = write_dev_cert(tmp_path / "certs")
    options = parse(
        "--listen",
        "tcp:8081:interface=127.0.0.1",
        "--listen",
        "tcp:8082:backlog=100",
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
    ports = [(port[0], port[3]) for port in reactor.tcpServers]
    assert ports == [(8081, "127.0.0.1"), (8082, ""), (8443, "")]
    # A reconnect storm must not overflow the accept queue: a deep one, unless asked otherwise.
    assert [port[2] for port in reactor.tcpServers] == [DEFAULT_BACKLOG, 100, DEFAULT_BACKLOG]
    plain, tls = reactor.tcpServers[0][1], reactor.tcpServers[2][1]
    assert isinstance(tls, TLSMemoryBIOFactory) and tls.wrappedFactory is plain
    assert [port.listening for port in reactor.ports] == [True, True, True]

    @provider(ILogObserver)
    def chat_stopped(event: LogEvent) -> None:
        if event.get("log_format", "").startswith("stopped: connections closed"):
            reactor.events.append("chat service stopped")

    globalLogPublisher.addObserver(chat_stopped)
    try:
        done: list[object] = []
        top.stopService().addBoth(done.append)
        assert not done, "stopService must wait for the ports to close"
        reactor.advance(0)
    finally:
        globalLogPublisher.removeObserver(chat_stopped)
    # The ports go first: no new connections while the clients get 1001 and the database
    # closes (ChatService is added first so that it is stopped last).
    assert reactor.events == [
        "stop listening on 8443",
        "stop listening on 8082",
        "stop listening on 8081",
        "chat service stopped",
    ]
    assert [port.listening for port in reactor.ports] == [False, False, False]
    assert not services[0].running
    assert len(done) == 1 and not isinstance(done[0], Failure)
    assert reactor.getDelayedCalls() == []


def test_durations_take_units() -> None:
    """--history-ttl reads 30d, 12h, 90m, 45s and plain seconds."""
    assert parse("--history-ttl", "30d")["history-ttl"] == 30 * 86400
    assert parse("--history-ttl", "12h")["history-ttl"] == 12 * 3600
    assert parse("--history-ttl", "90m")["history-ttl"] == 90 * 60
    assert parse("--history-ttl", "45s")["history-ttl"] == 45
    assert parse("--history-ttl", "7.5")["history-ttl"] == 7.5
    assert parse()["history-ttl"] is None and parse()["max-history-rooms"] == 0


def test_sweeps_need_the_sqlite_history() -> None:
    """--history-ttl and --max-history-rooms are refused with --redis or ':memory:'."""
    for sweep in (("--history-ttl", "1d"), ("--max-history-rooms", "10")):
        with pytest.raises(usage.UsageError, match="SQLite"):
            parse(*sweep, "--redis", "redis://127.0.0.1:6379/0")
        with pytest.raises(usage.UsageError, match="SQLite"):
            parse(*sweep, "--history-db", ":memory:")


def test_make_service_adds_the_sweeper_and_the_metrics_listener(tmp_path: Path) -> None:
    """With --history-ttl the sweeper runs beside the chat (stopped before the database is
    closed); with --metrics-listen a second site listens on that endpoint only."""
    reactor = ThreadedMemoryReactor()
    options = parse(
        "--listen",
        "tcp:8081",
        "--metrics-listen",
        "tcp:9108:interface=127.0.0.1",
        "--history-ttl",
        "30d",
        "--history-db",
        str(tmp_path / "h.sqlite3"),
    )
    top = makeService(options, reactor=reactor)
    assert isinstance(top, MultiService)
    services = list(top)
    chat = next(i for i, s in enumerate(services) if isinstance(s, ChatService))
    sweeper = next(i for i, s in enumerate(services) if isinstance(s, HistorySweeper))
    assert sweeper > chat  # stopped first
    top.startService()
    ports = [(port[0], port[3]) for port in reactor.tcpServers]
    assert ports == [(8081, ""), (9108, "127.0.0.1")]
    metrics_site = reactor.tcpServers[1][1]
    assert isinstance(metrics_site, Site) and not isinstance(metrics_site, ChatSite)
    assert metrics_site.resource.getStaticEntity(b"metrics") is not None
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
    assert parse("--jwks-url", "http://127.0.0.1:8000/jwks")["auth"] is AuthMode.REQUIRED


def test_held_frames_are_capped_by_default_and_by_option(tmp_path: Path) -> None:
    """--max-held-frames/--max-held-bytes default to 100 frames and 1 MiB and reach the
    connections' AuthSettings."""
    secret = str(write_secret(tmp_path))
    default = make_auth(parse("--jwt-secret-file", secret), MemoryReactorClock())
    assert (default.max_held_frames, default.max_held_bytes) == (100, 1024 * 1024)
    args = ("--max-held-frames", "7", "--max-held-bytes", "5000")
    chosen = make_auth(parse("--jwt-secret-file", secret, *args), MemoryReactorClock())
    assert (chosen.max_held_frames, chosen.max_held_bytes) == (7, 5000)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("--auth", "required"), "needs --jwt-secret-file"),
        (("--auth", "sometimes"), "not one of"),
        (("--jwks-url", "file:///etc/keys"), "must be an https URL"),
        (("--jwks-url", "http://auth.example.com/jwks"), "must be an https URL"),
        (("--jwt-secret-file", "SECRET", "--jwks-url", "https://a/j"), "one of"),
        (("--jwt-secret-file", "SHORT"), "at least 32"),
        (("--jwt-public-key-file", "SECRET"), "not a PEM"),
        (("--jwt-grace", "-1"), "not a number >= 0"),
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
    assert isinstance(top, MultiService)
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


def test_the_defaults_are_those_of_the_settings(tmp_path: Path) -> None:
    """Without options, makeService fills in exactly the defaults of WsSettings, Limits and
    AuthSettings, which the option table reads."""
    top = makeService(parse("--history-db", ":memory:"), reactor=ThreadedMemoryReactor())
    assert isinstance(top, MultiService)
    service = next(iter(top))
    assert isinstance(service, ChatService)
    assert service.factory.settings == WsSettings()
    assert service.factory.hub.limits == Limits()
    assert service.factory.auth == AuthSettings()


def json_get(site: object, url: str, headers: dict[str, str]) -> dict[str, Any]:
    """GET `url` from a Site's resources in memory; the JSON answer."""
    assert isinstance(site, Site)
    stub = StubTreq(site.resource)
    responses: list[Any] = []
    # StubTreq copies treq's request functions onto itself at run time, out of mypy's sight.
    stub.get(url, headers=headers).addCallback(responses.append)  # type: ignore[attr-defined]
    stub.flush()
    [response] = responses
    content: list[bytes] = []
    treq.content(response).addCallback(content.append)
    stub.flush()
    assert response.code == 200, content
    answer: dict[str, Any] = json.loads(content[0])
    return answer


def test_every_version_is_the_package_version(tmp_path: Path) -> None:
    """/healthz and the API's /api/info report wschat.__version__, and so does the installed
    package's metadata (setup.cfg reads it from there)."""
    keys = tmp_path / "api.keys"
    keys.write_text("k" * 32 + "\n")
    reactor = ThreadedMemoryReactor()
    options = parse(
        "--listen",
        "tcp:8080",
        "--api-listen",
        "tcp:8081",
        "--api-key-file",
        str(keys),
        "--history-db",
        ":memory:",
    )
    top = makeService(options, reactor=reactor)
    top.startService()
    chat_site, api_site = reactor.tcpServers[0][1], reactor.tcpServers[1][1]
    health = json_get(chat_site, "http://chat.test/healthz", {})
    info = json_get(api_site, "http://api.test/api/info", {"authorization": "Bearer " + "k" * 32})
    assert health["version"] == info["version"] == wschat.__version__
    assert metadata.version("wschat") == wschat.__version__
    top.stopService()
    reactor.advance(10)

"""`twistd wschat`: the options, and makeService, which only wires things together."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint
from twisted.python import usage

from wschat.app.drain import DEFAULT_DRAIN_S, DEFAULT_SHUTDOWN_TIMEOUT_S, Drain
from wschat.app.lifecycle import ChatService, WschatService
from wschat.app.logs import check_twistd_options, log_format, observer_for
from wschat.app.tls import (
    ReloadableTls,
    TlsEndpoint,
    TlsFiles,
    TlsFilesError,
    TlsListen,
    TlsReloader,
    load_tls,
    tls_from_ssl_description,
)
from wschat.chat.broker import Broker, LocalBroker
from wschat.chat.history import HistoryStore, MemoryHistory
from wschat.chat.hub import Hub
from wschat.chat.identity import AuthMode
from wschat.chat.limits import Limits
from wschat.chat.model import new_resume_token
from wschat.chat.roster import LocalRoster, Roster
from wschat.redis.broker import RedisBroker
from wschat.redis.history import RedisHistory
from wschat.redis.link import RedisLink, parse_redis_url
from wschat.redis.roster import RedisRoster
from wschat.server.api import ApiContext, KeyFileError, load_api_keys, make_api_site
from wschat.server.echo import add_echo
from wschat.server.factory import ChatFactory
from wschat.server.metrics import Metrics
from wschat.server.settings import AuthSettings, WsSettings
from wschat.server.site import ClientConfig, HealthCheck, make_site
from wschat.server.tokens import (
    JwksKeys,
    KeyConfigError,
    KeySource,
    TokenVerifier,
    http_fetch,
    load_public_key,
    load_secret,
)
from wschat.store.sqlite import MEMORY, SqliteHistory
from wschat.store.sweep import HistorySweeper

DEFAULT_PORT = 8080
# Twisted listens with a backlog of 50. When a restarted server's clients all reconnect at
# once, a full accept queue drops their SYNs, and the kernel resends them 1, 3, 7, 15, 31 s
# later: with 10,000 clients in one room the last was back 37 s after the kill at 50, and
# (bench/run.py, bigroom_storm) much sooner with this. The kernel caps it at somaxconn.
DEFAULT_BACKLOG = 4096
_BACKLOG_TYPES = ("tcp:", "tcp6:", "ssl:", "unix:")
DEFAULT_DB = "wschat.sqlite3"


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"{value} is not a positive integer")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"{value} is negative")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(f"{value} is not a positive number")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise ValueError(f"{value} is not a number >= 0")
    return number


_DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str) -> float:
    """'30d', '12h', '90m', '45s' or plain seconds."""
    text = value.strip().lower()
    scale = _DURATION_UNITS_S.get(text[-1:], None)
    number = float(text[:-1] if scale is not None else text)
    if not number > 0:
        raise ValueError(f"{value} is not a positive duration")
    return number * (scale or 1)


def _auth_mode(value: str) -> AuthMode:
    try:
        return AuthMode(value)
    except ValueError:
        raise ValueError(f"{value!r} is not one of off, optional, required") from None


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the wschat chat server: the browser client at /, the WebSocket at /ws and a "
        "health check at /healthz, all on each listening endpoint. Without --listen, "
        "--tls-port or --tls-listen it listens on plain TCP --port. SIGHUP reloads the TLS "
        "certificates from their files."
    )

    optParameters = [
        [
            "port",
            "p",
            DEFAULT_PORT,
            "Plain TCP port, used when no --listen/--tls-port is given.",
            int,
        ],
        [
            "tls-port",
            None,
            None,
            "Serve https/wss on this port (needs --tls-cert and --tls-key).",
            int,
        ],
        [
            "tls-cert",
            None,
            None,
            "PEM certificate, then its intermediates (fullchain.pem), for --tls-port/--tls-listen.",
        ],
        ["tls-key", None, None, "PEM private key for --tls-port/--tls-listen."],
        ["history-db", None, DEFAULT_DB, "SQLite history file; ':memory:' keeps nothing."],
        ["history-size", None, 100, "Messages kept per room and sent on join.", _positive_int],
        [
            "max-message-bytes",
            None,
            65536,
            "Largest WebSocket frame/message accepted (close 1009 beyond).",
            _positive_int,
        ],
        [
            "rate",
            None,
            5.0,
            "Messages per second a connection may send on average.",
            _positive_float,
        ],
        ["burst", None, 20, "Messages a connection may send at once above --rate.", _positive_int],
        [
            "rate-per-ip",
            None,
            0.0,
            "Messages per second one client address may send over all its connections "
            "(0: no limit).",
            _non_negative_float,
        ],
        [
            "burst-per-ip",
            None,
            100,
            "Messages one address may send at once above --rate-per-ip.",
            _positive_int,
        ],
        [
            "history-ttl",
            None,
            None,
            "Delete stored messages older than this (e.g. 30d, 12h, 90m, 3600s; default: "
            "kept until trimmed by --history-size); rooms left with none are forgotten.",
            parse_duration,
        ],
        [
            "max-history-rooms",
            None,
            0,
            "Rooms the history may hold (0: no limit); beyond, the rooms written to least "
            "recently are forgotten first.",
            _non_negative_int,
        ],
        [
            "ping-interval",
            None,
            10.0,
            "Seconds between WebSocket pings that find dead peers.",
            _positive_float,
        ],
        ["ping-timeout", None, 5.0, "Seconds a peer has to answer a ping.", _positive_float],
        [
            "max-output-bytes",
            None,
            1048576,
            "Unsent output after which a slow reader is closed (4008).",
            _positive_int,
        ],
        [
            "handshake-timeout",
            None,
            10.0,
            "Seconds a client has to send its complete HTTP request / WebSocket handshake.",
            _positive_float,
        ],
        ["max-rooms", None, 32, "Rooms one connection may be in.", _positive_int],
        ["max-members", None, 0, "Members per room (0: no limit).", _non_negative_int],
        [
            "redis",
            None,
            None,
            "Share rooms with the other wschat nodes on this Redis (history kept there, not in "
            "SQLite): redis://[user:password@]host:port/db, rediss://... (TLS), "
            "unix:///path.sock.",
        ],
        [
            "redis-password-file",
            None,
            None,
            "File holding the Redis password (rather than putting it in --redis).",
        ],
        [
            "redis-ca",
            None,
            None,
            "PEM file of the CA that signed a rediss:// server's certificate.",
        ],
        [
            "node-name",
            None,
            None,
            "This node's name among several on one Redis (default: host name and pid).",
        ],
        [
            "member-list-limit",
            None,
            1000,
            "Above this many members a room's welcome has no member list (clients page with "
            "'who') and its presence carries only the count.",
            _non_negative_int,
        ],
        [
            "presence-interval",
            None,
            0.25,
            "Seconds between a room's presence frames: joins and leaves are sent in batches.",
            _positive_float,
        ],
        [
            "max-connections",
            None,
            0,
            "WebSocket connections in all (0: no limit; 503 beyond).",
            _non_negative_int,
        ],
        [
            "max-connections-per-ip",
            None,
            256,
            "WebSocket connections from one address (0: no limit; 429 beyond).",
            _non_negative_int,
        ],
        [
            "drain-seconds",
            None,
            DEFAULT_DRAIN_S,
            "On SIGTERM, close the WebSocket connections (1012) spread over this many seconds "
            "(0: all at once) while refusing new ones (503).",
            _non_negative_float,
        ],
        [
            "shutdown-timeout",
            None,
            DEFAULT_SHUTDOWN_TIMEOUT_S,
            "Seconds after SIGTERM at which connections still open are aborted.",
            _positive_float,
        ],
        [
            "log-format",
            None,
            "text",
            "text: twistd's log lines; json: one JSON object per line, in the same place "
            "(--logfile or stdout), rotated the same way.",
            log_format,
        ],
        [
            "trust-proxies",
            None,
            0,
            "Reverse proxies in front whose X-Forwarded-For is trusted.",
            _non_negative_int,
        ],
        [
            "auth",
            None,
            None,
            "Signed identities: off (the open chat), optional (guests beside signed users) or "
            "required (the first frame must be a valid 'auth'). Default: required when a "
            "--jwt-*/--jwks-url key is given, else off.",
            _auth_mode,
        ],
        [
            "jwt-secret-file",
            None,
            None,
            "File holding the shared secret of HS256 tokens (at least 32 bytes).",
        ],
        [
            "jwt-public-key-file",
            None,
            None,
            "PEM public key of RS256 (RSA) or ES256 (EC P-256) tokens.",
        ],
        [
            "jwks-url",
            None,
            None,
            "URL of the issuer's JWKS (RS256/ES256 keys), fetched and cached; fetched again "
            "for an unknown kid.",
        ],
        [
            "client-token-url",
            None,
            None,
            "Where the browser client gets its token (the application's endpoint, fetched "
            'with the user\'s cookies; answers {"token": "<jwt>"}).',
        ],
        [
            "api-key-file",
            None,
            None,
            "File of the server API's keys (one a line), sent as Authorization: Bearer.",
        ],
        ["jwt-audience", None, None, "The 'aud' tokens must carry (default: tokens have none)."],
        ["jwt-issuer", None, None, "The 'iss' tokens must carry (default: not checked)."],
        [
            "jwt-leeway",
            None,
            0.0,
            "Seconds of clock difference allowed when checking 'exp' and 'nbf'.",
            _non_negative_float,
        ],
        [
            "jwt-grace",
            None,
            25.0,
            "Seconds a connection stays open after its token expired, for a 'refresh' to "
            "come (then close 4440).",
            _non_negative_float,
        ],
    ]
    optFlags = [
        [
            "conformance-echo",
            None,
            "Test only: also serve an echo WebSocket at /echo (for the Autobahn testsuite).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["tls_listen"] = []
        self["tls"] = []
        self["allowed_origins"] = []
        self["metrics_listen"] = []
        self["api_listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Twisted endpoint to listen on, e.g. tcp:8080:interface=127.0.0.1 (repeatable)."""
        self["listen"].append(endpoint)

    def opt_tls_listen(self, endpoint: str) -> None:
        """Endpoint to serve https/wss on with --tls-cert/--tls-key, e.g.
        systemd:domain=INET6:name=https (repeatable)."""
        self["tls_listen"].append(endpoint)

    def opt_metrics_listen(self, endpoint: str) -> None:
        """Serve Prometheus /metrics on this endpoint, e.g. tcp:9108:interface=127.0.0.1
        (repeatable; default: no metrics). Keep it off the internet."""
        self["metrics_listen"].append(endpoint)

    def opt_api_listen(self, endpoint: str) -> None:
        """Endpoint of the server API for applications, e.g. tcp:8081:interface=127.0.0.1
        (repeatable; needs --api-key-file). Keep it off the internet."""
        self["api_listen"].append(endpoint)

    def opt_allowed_origin(self, origin: str) -> None:
        """Browser origin allowed to open /ws (repeatable; '*': any; default: same host)."""
        self["allowed_origins"].append(origin)

    def postOptions(self) -> None:
        twistd = getattr(self, "parent", None)  # twistd's own options, when run by twistd
        if twistd is not None:
            check_twistd_options(self["log-format"], twistd)
        if (self["history-ttl"] is not None or self["max-history-rooms"]) and (
            self["redis"] is not None or self["history-db"] == MEMORY
        ):
            raise usage.UsageError(
                "--history-ttl and --max-history-rooms apply to the SQLite history file: "
                "with --redis, --history-size bounds each room (docs/deployment.md), and "
                "':memory:' keeps nothing anyway"
            )
        if self["drain-seconds"] >= self["shutdown-timeout"]:
            raise usage.UsageError("--drain-seconds must be shorter than --shutdown-timeout")
        pair_given = [self[k] is not None for k in ("tls-cert", "tls-key")]
        tls_endpoints = list(self["tls_listen"])
        if self["tls-port"] is not None:
            tls_endpoints.append(f"tcp:{self['tls-port']}")
        if (tls_endpoints or any(pair_given)) and not (tls_endpoints and all(pair_given)):
            raise usage.UsageError(
                "--tls-port, --tls-cert and --tls-key go together "
                "(or --tls-listen ENDPOINT with --tls-cert and --tls-key)"
            )
        tls = [
            TlsListen(endpoint, TlsFiles(self["tls-cert"], self["tls-key"]), endpoint)
            for endpoint in tls_endpoints
        ]
        plain = []
        for endpoint in self["listen"]:
            if endpoint.split(":", 1)[0] != "ssl":
                plain.append(endpoint)
                continue
            try:
                tls.append(tls_from_ssl_description(endpoint))
            except ValueError as exc:
                raise usage.UsageError(str(exc)) from None
        for listen in tls:
            check_tls_files(listen.files)
        if not plain and not tls:
            plain.append(f"tcp:{self['port']}")
        self["listen"] = plain
        self["tls"] = tls
        self._check_auth()
        self["api-keys"] = None
        if self["api_listen"] or self["api-key-file"]:
            if not (self["api_listen"] and self["api-key-file"]):
                raise usage.UsageError("--api-listen and --api-key-file go together")
            try:
                self["api-keys"] = load_api_keys(self["api-key-file"])
            except KeyFileError as exc:
                raise usage.UsageError(str(exc)) from None

    def _check_auth(self) -> None:
        """Load the key now: a bad key file stops start-up instead of every sign-in."""
        sources = [k for k in ("jwt-secret-file", "jwt-public-key-file", "jwks-url") if self[k]]
        if len(sources) > 1:
            raise usage.UsageError(
                "give one of --jwt-secret-file, --jwt-public-key-file and --jwks-url"
            )
        if self["auth"] is None:
            self["auth"] = AuthMode.REQUIRED if sources else AuthMode.OFF
        if self["auth"] is not AuthMode.OFF and not sources:
            raise usage.UsageError(
                f"--auth {self['auth'].value} needs --jwt-secret-file, --jwt-public-key-file "
                "or --jwks-url"
            )
        self["jwt-key"] = None
        try:
            if self["jwt-secret-file"]:
                self["jwt-key"] = load_secret(self["jwt-secret-file"])
            elif self["jwt-public-key-file"]:
                self["jwt-key"] = load_public_key(self["jwt-public-key-file"])
        except KeyConfigError as exc:
            raise usage.UsageError(str(exc)) from None
        for option in ("jwks-url", "client-token-url"):
            url = self[option]
            if url and not url.startswith(("https://", "http://")):
                raise usage.UsageError(f"--{option} must be an http(s) URL, not {url!r}")
        if self["client-token-url"] and self["auth"] is AuthMode.OFF:
            raise usage.UsageError("--client-token-url needs signed identities (a --jwt-* key)")


def check_tls_files(files: TlsFiles) -> None:
    """Refuse to start on a missing or mismatched pair, instead of failing every handshake."""
    try:
        load_tls(files)
    except TlsFilesError as exc:
        raise usage.UsageError(str(exc)) from None


def with_backlog(description: str) -> str:
    """A listening endpoint string with wschat's backlog, unless it names one itself."""
    if description.startswith(_BACKLOG_TYPES) and "backlog=" not in description:
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description


def listen_service(endpoint: IStreamServerEndpoint, factory: IProtocolFactory) -> IService:
    service = StreamServerEndpointService(endpoint, factory)
    # As strports.service does: a port that cannot be bound stops twistd at start-up.
    service._raiseSynchronously = True
    return service


def sweeps_wanted(options: Options) -> bool:
    return options["history-ttl"] is not None or options["max-history-rooms"] > 0


def make_store(options: Options, reactor: Any) -> HistoryStore:
    path = options["history-db"]
    if path == MEMORY:
        return MemoryHistory(options["history-size"])
    return SqliteHistory(
        path,
        options["history-size"],
        in_thread=reactor.callInThread,
        track_rooms=sweeps_wanted(options),
        expiring=options["history-ttl"] is not None,
    )


@dataclass
class Backend:
    """Where history lives and how messages reach the members: one process on SQLite, or
    a node of several on Redis."""

    store: HistoryStore
    broker: Broker
    roster: Roster = field(default_factory=LocalRoster)
    services: list[IService] = field(default_factory=list)
    checks: list[HealthCheck] = field(default_factory=list)


def make_backend(options: Options, reactor: Any) -> Backend:
    if options["redis"] is None:
        return Backend(make_store(options, reactor), LocalBroker())
    try:
        address = parse_redis_url(
            options["redis"], options["redis-password-file"], options["redis-ca"]
        )
    except (ValueError, OSError) as exc:
        raise usage.UsageError(f"--redis: {exc}") from None
    node = options["node-name"] or f"{socket.gethostname()}-{os.getpid()}"
    broker = RedisBroker(reactor)
    link = RedisLink(address, reactor, node, broker.on_message, broker.on_subscribed)
    store = RedisHistory(link, options["history-size"])
    roster = RedisRoster(link, reactor)
    broker.connect(link, store, roster)

    def redis_health() -> tuple[dict[str, object], bool]:
        return {"node": node, "redis": "up" if link.up else "down"}, link.up

    return Backend(store, broker, roster, [link, roster], [redis_health])


def make_auth(options: Options, reactor: Any) -> AuthSettings:
    mode: AuthMode = options["auth"]
    if mode is AuthMode.OFF:
        return AuthSettings()
    keys: KeySource
    if options["jwks-url"]:
        keys = JwksKeys(options["jwks-url"], http_fetch(reactor), reactor.seconds)
    else:
        keys = options["jwt-key"]
    verifier = TokenVerifier(
        keys,
        reactor.seconds,
        audience=options["jwt-audience"],
        issuer=options["jwt-issuer"],
        leeway_s=options["jwt-leeway"],
    )
    return AuthSettings(mode, verifier, options["jwt-grace"])


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    settings = WsSettings(
        max_message_bytes=options["max-message-bytes"],
        ping_interval_s=options["ping-interval"],
        ping_timeout_s=options["ping-timeout"],
        open_handshake_timeout_s=options["handshake-timeout"],
        max_output_bytes=options["max-output-bytes"],
        allowed_origins=tuple(options["allowed_origins"]),
        max_connections=options["max-connections"],
        max_connections_per_ip=options["max-connections-per-ip"],
        trusted_proxies=options["trust-proxies"],
    )
    limits = Limits(
        history_size=options["history-size"],
        rate_per_s=options["rate"],
        burst=options["burst"],
        max_rooms=options["max-rooms"],
        max_members=options["max-members"],
        member_list_limit=options["member-list-limit"],
        presence_interval_s=options["presence-interval"],
        rate_per_ip_s=options["rate-per-ip"],
        burst_per_ip=options["burst-per-ip"],
    )
    backend = make_backend(options, reactor)
    factory = ChatFactory(settings, reactor, make_auth(options, reactor))
    metrics = Metrics(factory) if options["metrics_listen"] else None
    hub = Hub(
        backend.store if metrics is None else metrics.timed(backend.store),
        backend.broker,
        factory.fanout,
        reactor.seconds,
        new_resume_token,
        reactor.callLater,
        limits,
        backend.roster,
    )
    factory.attach(hub)
    if metrics is not None:
        metrics.attach(hub)
    started_s = reactor.seconds()
    client = ClientConfig(options["auth"].value, options["client-token-url"])
    site = make_site(
        factory,
        hub,
        lambda: reactor.seconds() - started_s,
        reactor,
        backend.checks,
        client,
    )
    if options["conformance-echo"]:
        add_echo(site, settings)

    drain = Drain(factory, reactor, options["drain-seconds"], options["shutdown-timeout"])
    log_observer = observer_for(options["log-format"], getattr(options, "parent", None), reactor)
    top = WschatService(drain.run, log_observer)
    # Started first and stopped last: the connections close before Redis goes.
    for service in backend.services:
        service.setServiceParent(top)
    ChatService(factory, backend.store, reactor).setServiceParent(top)
    if isinstance(backend.store, SqliteHistory) and sweeps_wanted(options):
        # After ChatService, so stopped before it closes the database.
        HistorySweeper(
            backend.store, reactor, options["history-ttl"], options["max-history-rooms"]
        ).setServiceParent(top)
    reloadable = [ReloadableTls(listen) for listen in options["tls"]]
    TlsReloader(reloadable, reactor).setServiceParent(top)
    for endpoint in options["listen"]:
        strports.service(with_backlog(endpoint), site, reactor=reactor).setServiceParent(top)
    for tls in reloadable:
        inner = serverFromString(reactor, with_backlog(tls.listen.endpoint))
        listen_service(TlsEndpoint(inner, tls, reactor), site).setServiceParent(top)
    if metrics is not None:
        metrics_site = metrics.site(reactor)
        for endpoint in options["metrics_listen"]:
            strports.service(endpoint, metrics_site, reactor=reactor).setServiceParent(top)
    if options["api-keys"] is not None:

        def info() -> dict[str, Any]:
            return {
                "version": _version(),
                "auth": factory.auth.mode.value,
                "connections": hub.connection_count,
                "rooms": hub.room_count,
                "uptime_s": round(reactor.seconds() - started_s, 3),
            }

        context = ApiContext(hub, backend.store, limits.history_size, factory.disconnect_user, info)
        api_site = make_api_site(options["api-keys"], context, reactor)
        for endpoint in options["api_listen"]:
            strports.service(endpoint, api_site, reactor=reactor).setServiceParent(top)
    return top


def _version() -> str:
    try:
        return metadata.version("wschat")
    except metadata.PackageNotFoundError:
        return "unknown"

"""`twistd wschat`: the options, and makeService, which only wires things together."""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any

from OpenSSL import SSL
from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import quoteStringArgument
from twisted.python import usage

from .api import ApiContext, KeyFileError, load_api_keys, make_api_site
from .chat.broker import LocalBroker
from .chat.history import HistoryStore, MemoryHistory
from .chat.hub import Hub
from .chat.identity import AuthMode
from .chat.limits import Limits
from .chat.model import new_resume_token
from .echo import add_echo
from .service import ChatService
from .sqlite_history import MEMORY, SqliteHistory
from .tokens import (
    JwksKeys,
    KeyConfigError,
    KeySource,
    TokenVerifier,
    http_fetch,
    load_public_key,
    load_secret,
)
from .web import ClientConfig, make_site
from .ws import AuthSettings, ChatFactory, WsSettings

DEFAULT_PORT = 8080
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
        raise ValueError(f"{value} is negative")
    return number


def _auth_mode(value: str) -> AuthMode:
    try:
        return AuthMode(value)
    except ValueError:
        raise ValueError(f"{value!r} is not one of off, optional, required") from None


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the wschat chat server: the browser client at /, the WebSocket at /ws and a "
        "health check at /healthz, all on each listening endpoint. Without --listen or "
        "--tls-port it listens on plain TCP --port."
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
        ["tls-cert", None, None, "PEM certificate (chain) for --tls-port."],
        ["tls-key", None, None, "PEM private key for --tls-port."],
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
        self["allowed_origins"] = []
        self["api_listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Twisted endpoint to listen on, e.g. tcp:8080:interface=127.0.0.1 (repeatable)."""
        self["listen"].append(endpoint)

    def opt_api_listen(self, endpoint: str) -> None:
        """Endpoint of the server API for applications, e.g. tcp:8081:interface=127.0.0.1
        (repeatable; needs --api-key-file). Keep it off the internet."""
        self["api_listen"].append(endpoint)

    def opt_allowed_origin(self, origin: str) -> None:
        """Browser origin allowed to open /ws (repeatable; '*': any; default: same host)."""
        self["allowed_origins"].append(origin)

    def postOptions(self) -> None:
        tls_given = [self[k] is not None for k in ("tls-port", "tls-cert", "tls-key")]
        if any(tls_given) and not all(tls_given):
            raise usage.UsageError("--tls-port, --tls-cert and --tls-key go together")
        if self["tls-port"] is not None:
            check_tls_files(self["tls-cert"], self["tls-key"])
            self["listen"].append(
                "ssl:{}:privateKey={}:certKey={}".format(
                    self["tls-port"],
                    quoteStringArgument(self["tls-key"]),
                    quoteStringArgument(self["tls-cert"]),
                )
            )
        if not self["listen"]:
            self["listen"].append(f"tcp:{self['port']}")
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


def check_tls_files(cert: str, key: str) -> None:
    """Refuse to start on a missing or mismatched pair, instead of failing every handshake."""
    for label, path in (("certificate", cert), ("private key", key)):
        if not os.path.isfile(path):
            raise usage.UsageError(f"TLS {label} file not found: {path}")
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    try:
        context.use_certificate_chain_file(cert)
        context.use_privatekey_file(key)
        context.check_privatekey()
    except SSL.Error as exc:
        raise usage.UsageError(
            f"TLS certificate {cert} and key {key} are unreadable or do not match: {exc}"
        ) from None


def make_store(options: Options, reactor: Any) -> HistoryStore:
    path = options["history-db"]
    if path == MEMORY:
        return MemoryHistory(options["history-size"])
    return SqliteHistory(path, options["history-size"], in_thread=reactor.callInThread)


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
    )
    store = make_store(options, reactor)
    factory = ChatFactory(settings, reactor, make_auth(options, reactor))
    hub = Hub(
        store,
        LocalBroker(),
        factory.fanout,
        reactor.seconds,
        new_resume_token,
        reactor.callLater,
        limits,
    )
    factory.attach(hub)
    started_s = reactor.seconds()
    client = ClientConfig(options["auth"].value, options["client-token-url"])
    site = make_site(factory, hub, lambda: reactor.seconds() - started_s, reactor, client)
    if options["conformance-echo"]:
        add_echo(site, settings)

    top = MultiService()
    ChatService(factory, store, reactor).setServiceParent(top)
    for endpoint in options["listen"]:
        strports.service(endpoint, site, reactor=reactor).setServiceParent(top)
    if options["api-keys"] is not None:

        def info() -> dict[str, Any]:
            return {
                "version": _version(),
                "auth": factory.auth.mode.value,
                "connections": hub.connection_count,
                "rooms": hub.room_count,
                "uptime_s": round(reactor.seconds() - started_s, 3),
            }

        context = ApiContext(hub, store, limits.history_size, factory.disconnect_user, info)
        api_site = make_api_site(options["api-keys"], context, reactor)
        for endpoint in options["api_listen"]:
            strports.service(endpoint, api_site, reactor=reactor).setServiceParent(top)
    return top


def _version() -> str:
    try:
        return metadata.version("wschat")
    except metadata.PackageNotFoundError:
        return "unknown"

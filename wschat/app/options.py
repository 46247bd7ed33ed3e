"""`twistd wschat`'s options: the table, the checks that stop start-up, and the listeners'
endpoint strings. The defaults are those of the settings the options fill in."""

from __future__ import annotations

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from wschat.app.lifecycle import DEFAULT_DRAIN_S, DEFAULT_SHUTDOWN_TIMEOUT_S
from wschat.app.logs import DEFAULT_MAX_LOG_FILES, check_twistd_options, log_format
from wschat.app.tls import (
    TLS_PREFIX,
    TlsFiles,
    TlsFilesError,
    ssl_as_tls,
    tls_description,
)
from wschat.chat.identity import AuthMode
from wschat.chat.limits import Limits
from wschat.postgres.url import conninfo, is_postgres_url, redacted
from wschat.server.api import KeyFileError, load_api_keys
from wschat.server.settings import AuthSettings, WsSettings
from wschat.server.tokens import KeyConfigError, check_jwks_url, load_public_key, load_secret
from wschat.store.sqlite import MEMORY

DEFAULT_PORT = 8080
DEFAULT_DB = "wschat.sqlite3"
_WS = WsSettings()
_LIMITS = Limits()
_AUTH = AuthSettings()


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
            "Plain TCP port, used when no --listen, --tls-port or --tls-listen is given.",
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
        [
            "history-db",
            None,
            DEFAULT_DB,
            "Where history is kept: a SQLite file, or a PostgreSQL URL (postgresql://user@host"
            "/db?sslmode=verify-full&sslrootcert=ca.pem) for several nodes; ':memory:' keeps "
            "the last --history-keep (else --history-size) messages per room, in memory only.",
        ],
        [
            "history-db-password-file",
            None,
            None,
            "File holding the PostgreSQL password (never on the command line; libpq's "
            "PGPASSFILE and ~/.pgpass work too).",
        ],
        [
            "history-size",
            None,
            _LIMITS.history_size,
            "Messages a join's welcome carries at most, and recovers with `since`; older ones "
            "are paged with `history`.",
            _positive_int,
        ],
        [
            "history-keep",
            None,
            0,
            "Messages kept per room (0: all of them, until --history-ttl or "
            "--max-history-rooms removes them).",
            _non_negative_int,
        ],
        [
            "max-message-bytes",
            None,
            _WS.max_message_bytes,
            "Largest WebSocket frame/message accepted (close 1009 beyond).",
            _positive_int,
        ],
        [
            "rate",
            None,
            _LIMITS.rate_per_s,
            "Messages per second a connection may send on average.",
            _positive_float,
        ],
        [
            "burst",
            None,
            _LIMITS.burst,
            "Messages a connection may send at once above --rate.",
            _positive_int,
        ],
        [
            "rate-per-ip",
            None,
            _LIMITS.rate_per_ip_s,
            "Messages per second one client address may send over all its connections "
            "(0: no limit).",
            _non_negative_float,
        ],
        [
            "burst-per-ip",
            None,
            _LIMITS.burst_per_ip,
            "Messages one address may send at once above --rate-per-ip.",
            _positive_int,
        ],
        [
            "request-rate",
            None,
            _LIMITS.request_rate_per_s,
            "Requests other than say (join, leave, who, kick, refresh, history, search) per "
            "second a connection may send on average.",
            _positive_float,
        ],
        [
            "request-burst",
            None,
            _LIMITS.request_burst,
            "Such requests a connection may send at once above --request-rate (keep it above "
            "--max-rooms: a reconnecting client rejoins all its rooms at once).",
            _positive_int,
        ],
        [
            "welcome-history-bytes",
            None,
            _LIMITS.welcome_history_bytes,
            "Bytes of history one welcome, or one page of history or search results, carries "
            "at most (the messages that fit).",
            _positive_int,
        ],
        [
            "welcome-rate",
            None,
            _WS.welcome_rate_bytes_per_s,
            "Bytes of welcomes and history or search pages per second a connection may draw on "
            "average; one beyond --welcome-burst leaves a debt, and the connection is not read "
            "until it is paid.",
            _positive_int,
        ],
        [
            "welcome-burst",
            None,
            _WS.welcome_burst_bytes,
            "Bytes of welcomes a connection may draw at once above --welcome-rate (keep it "
            "above what rejoining --max-rooms rooms weighs: a reconnecting client does that).",
            _positive_int,
        ],
        [
            "history-ttl",
            None,
            None,
            "Delete stored messages older than this (e.g. 30d, 12h, 90m, 3600s; default: "
            "kept, within --history-keep); rooms left with none are forgotten.",
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
            _WS.ping_interval_s,
            "Seconds between WebSocket pings that find dead peers.",
            _positive_float,
        ],
        [
            "ping-timeout",
            None,
            _WS.ping_timeout_s,
            "Seconds a peer has to answer a ping.",
            _positive_float,
        ],
        [
            "max-output-bytes",
            None,
            _WS.max_output_bytes,
            "Unsent output after which a slow reader is closed (4008).",
            _positive_int,
        ],
        [
            "handshake-timeout",
            None,
            _WS.open_handshake_timeout_s,
            "Seconds a client has to send its complete HTTP request / WebSocket handshake; "
            "with --auth required, also the seconds it then has to sign in (close 4401).",
            _positive_float,
        ],
        [
            "request-timeout",
            None,
            _WS.request_timeout_s,
            "Seconds a client has to send a whole HTTP request, head and body (the server "
            "API's included); the connection is cut beyond.",
            _positive_float,
        ],
        ["max-rooms", None, _LIMITS.max_rooms, "Rooms one connection may be in.", _positive_int],
        [
            "max-members",
            None,
            _LIMITS.max_members,
            "Members per room (0: no limit).",
            _non_negative_int,
        ],
        [
            "redis",
            None,
            None,
            "Share rooms with the other wschat nodes on this Redis (history kept there too, "
            "unless --history-db is a PostgreSQL URL; a SQLite file is not used): "
            "redis://[user:password@]host:port/db, rediss://... (TLS), unix:///path.sock.",
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
            _LIMITS.member_list_limit,
            "Above this many members a room's welcome has no member list (clients page with "
            "'who') and its presence carries only the count.",
            _non_negative_int,
        ],
        [
            "presence-interval",
            None,
            _LIMITS.presence_interval_s,
            "Seconds between a room's presence frames: joins and leaves are sent in batches.",
            _positive_float,
        ],
        [
            "max-connections",
            None,
            _WS.max_connections,
            "WebSocket connections in all (0: no limit; 503 beyond).",
            _non_negative_int,
        ],
        [
            "max-connections-per-ip",
            None,
            _WS.max_connections_per_ip,
            "WebSocket connections from one address, and as many plain HTTP connections "
            "(0: no limit; 429 beyond).",
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
            "max-log-files",
            None,
            DEFAULT_MAX_LOG_FILES,
            "Rotated --logfile files kept (name.1 to name.N); older ones are deleted.",
            _positive_int,
        ],
        [
            "trust-proxies",
            None,
            _WS.trusted_proxies,
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
            "https URL of the issuer's JWKS (RS256/ES256 keys; http only to localhost), "
            "fetched and cached; fetched again for an unknown kid.",
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
            _AUTH.grace_s,
            "Seconds a connection stays open after its token expired, for a 'refresh' to "
            "come (then close 4440).",
            _non_negative_float,
        ],
        [
            "max-held-frames",
            None,
            _AUTH.max_held_frames,
            "Frames a connection may send while its 'auth' is verified (a JWKS fetch); "
            "beyond: close 1008.",
            _positive_int,
        ],
        [
            "max-held-bytes",
            None,
            _AUTH.max_held_bytes,
            "Bytes of those frames; beyond: close 1008.",
            _positive_int,
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
        self["allowed_hosts"] = []
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

    def opt_allowed_host(self, host: str) -> None:
        """Host (name, or name:port) the requests must name; others get 421 (repeatable;
        default: any). Against DNS rebinding; see docs/deployment.md."""
        self["allowed_hosts"].append(host.lower())

    def postOptions(self) -> None:
        twistd = getattr(self, "parent", None)  # twistd's own options, when run by twistd
        if twistd is not None:
            check_twistd_options(self["log-format"], twistd)
        in_redis = self["redis"] is not None and not is_postgres_url(self["history-db"])
        if (self["history-ttl"] is not None or self["max-history-rooms"]) and (
            in_redis or self["history-db"] == MEMORY
        ):
            raise usage.UsageError(
                "--history-ttl and --max-history-rooms apply to a SQLite or PostgreSQL history: "
                "with the history in Redis, --history-keep bounds each room "
                "(docs/deployment.md), and ':memory:' keeps nothing anyway"
            )
        self._check_history_db()
        if self["drain-seconds"] >= self["shutdown-timeout"]:
            raise usage.UsageError("--drain-seconds must be shorter than --shutdown-timeout")
        self["listen"], self["tls"] = self._listeners()
        self._check_auth()
        self["api-keys"] = None
        if self["api_listen"] or self["api-key-file"]:
            if not (self["api_listen"] and self["api-key-file"]):
                raise usage.UsageError("--api-listen and --api-key-file go together")
            try:
                self["api-keys"] = load_api_keys(self["api-key-file"])
            except KeyFileError as exc:
                raise usage.UsageError(str(exc)) from None

    def _check_history_db(self) -> None:
        """A PostgreSQL URL is checked now, its password read from its file: the libpq
        connection string is `history-conninfo` (None for SQLite or ':memory:')."""
        self["history-conninfo"] = None
        url = self["history-db"]
        if not is_postgres_url(url):
            if self["history-db-password-file"] is not None:
                raise usage.UsageError(
                    "--history-db-password-file is for a PostgreSQL --history-db "
                    "(postgresql://user@host/db)"
                )
            return
        if self["max-history-rooms"]:
            raise usage.UsageError(
                "--max-history-rooms is not implemented for PostgreSQL yet: bound each room "
                "with --history-keep, and the age of messages with --history-ttl "
                "(docs/scaling.md)"
            )
        try:
            self["history-conninfo"] = conninfo(url, self["history-db-password-file"])
        except (ValueError, OSError) as exc:
            raise usage.UsageError(f"--history-db: {exc}") from None
        self["history-db-shown"] = redacted(url)

    def _listeners(self) -> tuple[list[str], list[str]]:
        """The plain and the TLS endpoint strings: --tls-port, --tls-listen and `ssl:` strings
        become `wschat-tls:` strings, reloaded on SIGHUP; tcp:--port if none is given."""
        pair_given = [self[k] is not None for k in ("tls-cert", "tls-key")]
        tls_endpoints = list(self["tls_listen"])
        if self["tls-port"] is not None:
            tls_endpoints.append(f"tcp:{self['tls-port']}")
        if (tls_endpoints or any(pair_given)) and not (tls_endpoints and all(pair_given)):
            raise usage.UsageError(
                "--tls-port, --tls-cert and --tls-key go together "
                "(or --tls-listen ENDPOINT with --tls-cert and --tls-key)"
            )
        files = TlsFiles(self["tls-cert"], self["tls-key"])
        given = [(endpoint, tls_description(endpoint, files)) for endpoint in tls_endpoints]
        plain = []
        for endpoint in self["listen"]:
            if endpoint.startswith("ssl:"):
                given.append((endpoint, ssl_as_tls(endpoint)))
            elif endpoint.startswith(f"{TLS_PREFIX}:"):
                given.append((endpoint, endpoint))
            else:
                plain.append(endpoint)
        for endpoint, description in given:
            check_tls(endpoint, description)
        if not plain and not given:
            plain.append(f"tcp:{self['port']}")
        return plain, [description for _, description in given]

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
        try:
            if self["jwks-url"]:
                check_jwks_url(self["jwks-url"])
        except KeyConfigError as exc:
            raise usage.UsageError(str(exc)) from None
        url = self["client-token-url"]
        if url and not url.startswith(("https://", "http://")):
            raise usage.UsageError(f"--client-token-url must be an http(s) URL, not {url!r}")
        if self["client-token-url"] and self["auth"] is AuthMode.OFF:
            raise usage.UsageError("--client-token-url needs signed identities (a --jwt-* key)")


def check_tls(given: str, description: str) -> None:
    """Refuse to start on a `wschat-tls:` string that does not parse or on a missing or
    mismatched pair, instead of failing every handshake; `given` is the operator's text."""
    from twisted.internet import reactor

    try:
        serverFromString(reactor, description)
    except TlsFilesError as exc:
        raise usage.UsageError(str(exc)) from None
    except ValueError as exc:
        raise usage.UsageError(f"{given}: {exc}") from None

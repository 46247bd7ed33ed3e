"""makeService: wires the chat, its storage, its listeners and its lifecycle together.

The twistd plugin names this module, which holds both halves twistd asks for: Options (from
options.py) and makeService.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from twisted.application import strports
from twisted.application.service import IService
from twisted.python import usage

from wschat import __version__
from wschat.app.lifecycle import ChatService, Drain, WschatService
from wschat.app.logs import observer_for
from wschat.app.options import Options
from wschat.app.tls import TLS_PREFIX, TlsEndpoint, TlsReloader
from wschat.chat.hub import Hub
from wschat.chat.identity import AuthMode
from wschat.chat.limits import Limits
from wschat.chat.memory import LocalBroker, LocalRoster, MemoryHistory
from wschat.chat.model import new_resume_token
from wschat.chat.ports import Broker, HistoryStore, Roster
from wschat.postgres.schema import SchemaTooNew
from wschat.postgres.store import PostgresHistory, StoreService, open_store
from wschat.redis.link import parse_redis_url
from wschat.redis.node import redis_node
from wschat.server.api import ApiContext, make_api_site
from wschat.server.echo import add_echo
from wschat.server.factory import ChatFactory
from wschat.server.metrics import Metrics
from wschat.server.settings import AuthSettings, WsSettings
from wschat.server.site import ClientConfig, HealthCheck, make_site
from wschat.server.tokens import JwksKeys, KeySource, TokenVerifier, http_fetch
from wschat.store.sqlite import MEMORY, SqliteHistory
from wschat.store.sweep import HistorySweeper

__all__ = ["Options", "makeService"]

# Twisted listens with a backlog of 50. When a restarted server's clients all reconnect at
# once, a full accept queue drops their SYNs, and the kernel resends them only 1, 3, 7, 15 and
# 31 s later (bench/run.py's bigroom_storm scenario shows it). The kernel caps it at somaxconn.
DEFAULT_BACKLOG = 4096
_BACKLOG_TYPES = ("tcp:", "tcp6:", "unix:")
# twistd's umask for a daemon (twisted.scripts._twistd_unix.UnixApplicationRunner).
DAEMON_UMASK = 0o077


def with_backlog(description: str) -> str:
    """A listening endpoint string with wschat's backlog, unless it names one itself (a
    `wschat-tls:` string passes it to the endpoint under the TLS)."""
    under_tls = description.removeprefix(f"{TLS_PREFIX}:")
    if under_tls.startswith(_BACKLOG_TYPES) and "backlog=" not in description:
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description


def sweeps_wanted(options: Options) -> bool:
    return options["history-ttl"] is not None or options["max-history-rooms"] > 0


def make_store(options: Options, reactor: Any) -> HistoryStore:
    if options["history-conninfo"] is not None:
        return postgres_store(options, reactor)
    path = options["history-db"]
    if path == MEMORY:
        # Memory only: bounded whatever --history-keep says.
        return MemoryHistory(options["history-keep"] or options["history-size"])
    return SqliteHistory(
        path,
        options["history-keep"],
        in_thread=reactor.callInThread,
        track_rooms=sweeps_wanted(options),
        expiring=options["history-ttl"] is not None,
    )


@dataclass
class Backend:
    """Where history lives and how messages reach the members: one process on SQLite or
    PostgreSQL, or a node of several on Redis (with the history there or in PostgreSQL)."""

    store: HistoryStore
    broker: Broker
    roster: Roster = field(default_factory=LocalRoster)
    services: list[IService] = field(default_factory=list)
    checks: list[HealthCheck] = field(default_factory=list)


def postgres_store(options: Options, reactor: Any) -> PostgresHistory:
    """The schema brought up to date now: a database out of reach, or one a newer wschat
    migrated, stops start-up."""
    try:
        return open_store(
            options["history-conninfo"],
            options["history-db-shown"],
            reactor,
            options["history-keep"],
            ttl_s=options["history-ttl"],
        )
    except (psycopg.Error, SchemaTooNew) as exc:
        raise usage.UsageError(f"--history-db: {str(exc).strip()}") from None


def store_health(store: PostgresHistory) -> HealthCheck:
    def check() -> tuple[dict[str, object], bool]:
        return {"store": "up" if store.up else "down"}, store.up

    return check


def postgres_backend(options: Options, reactor: Any) -> Backend:
    """One node on PostgreSQL; its heartbeat and pruning start with the service tree."""
    store = postgres_store(options, reactor)
    return Backend(
        store, LocalBroker(store), services=[StoreService(store)], checks=[store_health(store)]
    )


def make_backend(options: Options, reactor: Any) -> Backend:
    if options["redis"] is None:
        if options["history-conninfo"] is not None:
            return postgres_backend(options, reactor)
        store = make_store(options, reactor)
        return Backend(store, LocalBroker(store))
    try:
        address = parse_redis_url(
            options["redis"], options["redis-password-file"], options["redis-ca"]
        )
    except (ValueError, OSError) as exc:
        raise usage.UsageError(f"--redis: {exc}") from None
    node = options["node-name"] or f"{socket.gethostname()}-{os.getpid()}"
    # With PostgreSQL it is the store of record and Redis the bus; without, Redis is both (a
    # SQLite --history-db is not used).
    postgres = postgres_store(options, reactor) if options["history-conninfo"] else None
    redis = redis_node(address, reactor, node, options["history-keep"], postgres)
    link = redis.link

    def redis_health() -> tuple[dict[str, object], bool]:
        return {"node": node, "redis": "up" if link.up else "down"}, link.up

    if postgres is None:
        return Backend(redis.store, redis.broker, redis.roster, redis.services, [redis_health])
    return Backend(
        postgres,
        redis.broker,
        redis.roster,
        [StoreService(postgres), *redis.services],
        [redis_health, store_health(postgres)],
    )


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
    return AuthSettings(
        mode,
        verifier,
        options["jwt-grace"],
        options["max-held-frames"],
        options["max-held-bytes"],
    )


def apply_twistd_umask(twistd: Mapping[str, Any] | None) -> None:
    """Set now the umask twistd sets only after makeService and its log file are done: 0077 for
    a daemon unless --umask says otherwise. The history database (and its -wal and -shm, which
    SQLite creates with the database's mode) and the log are created before that, and would
    be readable by everyone."""
    if twistd is None:
        return
    umask = twistd.get("umask")
    if umask is None and not twistd.get("nodaemon"):
        umask = DAEMON_UMASK
    if umask is not None:
        os.umask(umask)


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    apply_twistd_umask(getattr(options, "parent", None))
    settings = WsSettings(
        max_message_bytes=options["max-message-bytes"],
        ping_interval_s=options["ping-interval"],
        ping_timeout_s=options["ping-timeout"],
        open_handshake_timeout_s=options["handshake-timeout"],
        request_timeout_s=options["request-timeout"],
        max_output_bytes=options["max-output-bytes"],
        welcome_rate_bytes_per_s=options["welcome-rate"],
        welcome_burst_bytes=options["welcome-burst"],
        allowed_origins=tuple(options["allowed_origins"]),
        allowed_hosts=tuple(options["allowed_hosts"]),
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
        request_rate_per_s=options["request-rate"],
        request_burst=options["request-burst"],
        welcome_history_bytes=options["welcome-history-bytes"],
    )
    backend = make_backend(options, reactor)
    factory = ChatFactory(settings, reactor, make_auth(options, reactor))
    metrics = Metrics(factory) if options["metrics_listen"] else None
    hub = Hub(
        backend.store,
        backend.broker if metrics is None else metrics.timed(backend.broker),
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
    client = ClientConfig(
        options["auth"].value, options["client-token-url"], options["rate"], options["burst"]
    )
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
    log_observer = observer_for(
        options["log-format"],
        getattr(options, "parent", None),
        reactor,
        options["max-log-files"],
    )
    top = WschatService(drain.run, log_observer)
    # Started first and stopped last: the connections close before Redis goes.
    for service in backend.services:
        service.setServiceParent(top)
    ChatService(factory, backend.store, reactor).setServiceParent(top)
    if isinstance(backend.store, SqliteHistory):
        # After ChatService, so stopped before it closes the database. It always forgets
        # the refs older than their window; expiry and eviction only if asked for.
        HistorySweeper(
            backend.store, reactor, options["history-ttl"], options["max-history-rooms"]
        ).setServiceParent(top)
    listeners = [
        strports.service(with_backlog(endpoint), site, reactor=reactor)
        for endpoint in options["listen"] + options["tls"]
    ]
    reloadable = [s.endpoint.creator for s in listeners if isinstance(s.endpoint, TlsEndpoint)]
    TlsReloader(reloadable, reactor).setServiceParent(top)
    for listener in listeners:
        listener.setServiceParent(top)
    if metrics is not None:
        metrics_site = metrics.site(reactor)
        for endpoint in options["metrics_listen"]:
            strports.service(endpoint, metrics_site, reactor=reactor).setServiceParent(top)
    if options["api-keys"] is not None:

        def info() -> dict[str, Any]:
            return {
                "version": __version__,
                "auth": factory.auth.mode.value,
                "connections": hub.connection_count,
                "rooms": hub.room_count,
                "uptime_s": round(reactor.seconds() - started_s, 3),
            }

        context = ApiContext(hub, backend.store, limits.history_size, factory.disconnect_user, info)
        api_site = make_api_site(options["api-keys"], context, reactor, settings.request_timeout_s)
        for endpoint in options["api_listen"]:
            strports.service(endpoint, api_site, reactor=reactor).setServiceParent(top)
    return top

"""One node's two connections to Redis (commands, and the subscription), kept up for good.

Each connection is a ClientService that tries again at least once a second, with jitter: Redis
may restart or be out of reach for a while, and the node keeps serving meanwhile and is back
within a second of Redis. A command asked for while Redis is down fails at once with
Unavailable (clients get an error, never silence). The subscription is probed: the node
publishes to its own channel every few seconds, and a probe that does not come back means the
subscription went silent (a half-open connection, or one Redis cut off at its output-buffer
limit): it is dropped and made again, and the broker fills what it missed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet import ssl
from twisted.internet.defer import Deferred, fail, race
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from wschat.chat.errors import Unavailable
from wschat.redis.keys import client_name, probe_channel

DEFAULT_PORT = 6379
# A command that gets no answer in this long is failed (and its connection dropped): a say
# must hear "unavailable" rather than wait.
REPLY_TIMEOUT_S = 5
PROBE_INTERVAL_S = 2.0
# While Redis is down each connection is tried again after 0.2 s, 0.4 s, then every 0.5 s, plus
# up to RETRY_JITTER_S: never more than RETRY_MAX_S apart, so that chat is back within a second
# of Redis, and the nodes' attempts are spread out rather than in step.
RETRY_JITTER_S = 0.5
RETRY_MAX_S = 1.0
RETRY = backoffPolicy(
    initialDelay=0.1,
    maxDelay=RETRY_MAX_S - RETRY_JITTER_S,
    factor=2.0,
    jitter=lambda: random.uniform(0.0, RETRY_JITTER_S),
)

_log = Logger(namespace="wschat.redis_link")


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where Redis is, from --redis URL (and --redis-password-file, --redis-ca)."""

    url: str
    host: str = "localhost"
    port: int = DEFAULT_PORT
    path: str | None = None  # unix socket
    db: int | None = None
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None

    @property
    def shown(self) -> str:
        """The URL without its password, for logs."""
        return redacted(self.url)


def redacted(url: str) -> str:
    """`url` with any password in it replaced by ***, rebuilt from its parts: the password as
    written may be percent-encoded, so looking for the decoded one in the text misses it."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.netloc.rpartition("@")[0].partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def parse_redis_url(
    url: str, password_file: str | None = None, ca_file: str | None = None
) -> RedisAddress:
    """redis://[user:password@]host:port/db, rediss://... (TLS), unix:///path.sock[?db=N]."""
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password else None
    if password_file:
        password = Path(password_file).read_text("utf-8").strip()
    username = unquote(parts.username) if parts.username else None
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"{redacted(url)}: a unix URL needs a socket path")
        query = dict(q.split("=", 1) for q in parts.query.split("&") if "=" in q)
        db = int(query["db"]) if "db" in query else None
        return RedisAddress(url, path=parts.path, db=db, username=username, password=password)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"{redacted(url)}: expected redis://, rediss:// or unix://")
    db_text = parts.path.lstrip("/")
    return RedisAddress(
        url,
        host=parts.hostname or "localhost",
        port=parts.port or DEFAULT_PORT,
        db=int(db_text) if db_text else None,
        username=username,
        password=password,
        tls=parts.scheme == "rediss",
        ca_file=ca_file,
    )


def endpoint_for(address: RedisAddress, reactor: Any) -> IStreamClientEndpoint:
    if address.path is not None:
        return UNIXClientEndpoint(reactor, address.path)
    tcp = HostnameEndpoint(reactor, address.host, address.port)
    if not address.tls:
        return tcp
    # txredisapi's own TLS does not check the certificate; this one does, against the host
    # name (and --redis-ca, else the system's roots).
    trust = (
        ssl.Certificate.loadPEM(Path(address.ca_file).read_bytes())
        if address.ca_file
        else ssl.platformTrust()
    )
    return wrapClientTLS(ssl.optionsForClientTLS(address.host, trustRoot=trust), tcp)


def _unanswered(failure: Failure) -> None:
    failure.trap(txredisapi.ConnectionError, txredisapi.TimeoutError)
    raise Unavailable("the chat's shared store (Redis) did not answer") from failure.value


class _Subscriber(txredisapi.SubscriberProtocol):
    on_message: Callable[[str, str], None] = staticmethod(lambda channel, message: None)

    def messageReceived(self, pattern: Any, channel: str, message: str) -> None:
        self.on_message(channel, message)


class _ProtocolFactory(Factory):
    """Builds txredisapi protocols for a ClientService (txredisapi's own factory has a pool
    and a reconnect loop of its own, which would make a down Redis look like a slow one), and
    hands each one to `prepare` as it is built.

    The link makes a connection ready itself rather than through ClientService's
    prepareConnection: ClientService's state machine has no transition for a connection lost
    while it is being prepared (or after its preparation failed), and raised automat's
    NoTransition from connectionLost when Redis went away at that moment. Here ClientService
    counts every connection as made once it is, and a connection that cannot be made ready is
    closed, which ClientService takes as any lost connection: it tries again."""

    isLazy = True

    def __init__(
        self,
        protocol_class: type,
        address: RedisAddress,
        prepare: Callable[[Any], object],
        on_message: Callable[[str, str], None] | None = None,
    ) -> None:
        self._class = protocol_class
        self._address = address
        self._prepare = prepare
        self._on_message = on_message
        # What Redis last refused us with: said once, not on every attempt.
        self._refusal: str | None = None

    def buildProtocol(self, addr: Any) -> Any:
        p = self._class(
            charset="utf-8",
            replyTimeout=REPLY_TIMEOUT_S,
            password=self._address.password,
            dbid=self._address.db,
            convertNumbers=False,
            username=self._address.username,
        )
        p.factory = self
        if self._on_message is not None:
            p.on_message = self._on_message
        self._prepare(p)
        return p

    def accepted(self) -> None:
        """A connection was made ready: a refusal after this is news again."""
        self._refusal = None

    def refused(self, why: str) -> None:
        """A connection could not be made ready (it is closed, and tried again within a
        second): logged once for as long as the reason stays the same."""
        if why != self._refusal:
            self._refusal = why
            _log.warn(
                "redis at {url} refused a new connection: {why}; trying again",
                url=self._address.shown,
                why=why,
            )

    # txredisapi calls these when AUTH or SELECT fails (connectionError after stopTrying,
    # with the reason), then closes the connection.
    def stopTrying(self) -> None:
        pass

    def connectionError(self, why: str) -> None:
        self.refused(why)


class Script:
    """A Lua script run by its SHA1; sent in full when Redis does not know it (NOSCRIPT: it
    restarted, or SCRIPT FLUSH)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()

    @classmethod
    def named(cls, *names: str) -> Script:
        """wschat/redis/lua/<name>.lua for each name, joined in order (a shared part first)."""
        lua = resources.files("wschat.redis") / "lua"
        return cls("".join((lua / f"{name}.lua").read_text("utf-8") for name in names))


# What the link hands on: a room channel's payloads, and "subscribed (again)".
OnMessage = Callable[[str, str], None]


class RedisLink(MultiService):
    def __init__(
        self,
        address: RedisAddress,
        reactor: IReactorTime,
        node: str,
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        """`endpoint`: where Redis is, if not where `address` says (tests)."""
        super().__init__()
        self.address = address
        self.node = node
        self._reactor = reactor
        self._on_message: OnMessage = lambda channel, message: None
        self._on_subscribed: Callable[[], None] = lambda: None
        self._commands: Any = None
        self._subscriber: Any = None
        self._channels: set[str] = set()
        self.probe_channel = probe_channel(node)
        self._probe_sent = 0
        self._probe_seen = 0
        self._down_since: float | None = reactor.seconds()
        # Since when both connections have been up (None while not).
        self.up_since: float | None = None
        self._stopping = False
        self._scripts: list[Script] = []
        self._logged_down = False
        endpoint = endpoint or endpoint_for(address, reactor)
        self._commands_factory = _ProtocolFactory(
            txredisapi.RedisProtocol, address, self._prepare_commands
        )
        self._subscriber_factory = _ProtocolFactory(
            _Subscriber, address, self._prepare_subscriber, self._message
        )
        commands = ClientService(endpoint, self._commands_factory, retryPolicy=RETRY, clock=reactor)
        subscriber = ClientService(
            endpoint, self._subscriber_factory, retryPolicy=RETRY, clock=reactor
        )
        commands.setServiceParent(self)
        subscriber.setServiceParent(self)
        self._probe = LoopingCall(self._send_probe)
        self._probe.clock = reactor
        self._down_check = reactor.callLater(REPLY_TIMEOUT_S, self._log_down)

    @property
    def up(self) -> bool:
        return self._commands is not None and self._subscriber is not None

    def startService(self) -> None:
        super().startService()
        self._probe.start(PROBE_INTERVAL_S, now=False)

    def stopService(self) -> Deferred[None]:
        self._stopping = True
        if self._probe.running:
            self._probe.stop()
        if self._down_check is not None and self._down_check.active():
            self._down_check.cancel()
        return super().stopService()

    def listen(self, on_message: OnMessage, on_subscribed: Callable[[], None]) -> None:
        """Set, once and before the link starts, who hears what: `on_message(channel,
        payload)` for every channel subscribed to, and `on_subscribed()` each time both
        connections are (back) up. The link is made first because everything that listens
        also runs its commands on it."""
        self._on_message = on_message
        self._on_subscribed = on_subscribed

    def preload(self, *scripts: Script) -> None:
        """Load these scripts into Redis on every connect."""
        self._scripts.extend(scripts)

    async def call(self, *args: Any) -> Any:
        """Run one command; Unavailable if Redis is out of reach or does not answer."""
        return await self.send(*args)

    def send(self, *args: Any) -> Deferred[Any]:
        """`call` without a coroutine, for the commands sent once per say."""
        commands = self._commands
        if commands is None:
            return fail(
                Unavailable("the chat's shared store (Redis) is out of reach; try again soon")
            )
        sent: Deferred[Any] = commands.execute_command(*args)
        return sent.addErrback(_unanswered)

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except txredisapi.ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.call("EVAL", script.source, len(keys), *keys, *args)

    async def subscribe(self, channel: str) -> None:
        """From when this returns, what is published on `channel` reaches on_message (until
        the subscription breaks: then on_subscribed says it is back)."""
        self._channels.add(channel)
        subscriber = self._subscriber
        if subscriber is None:
            raise Unavailable("the chat's shared store (Redis) is out of reach; try again soon")
        try:
            await subscriber.subscribe(channel)
        except txredisapi.ConnectionError as exc:
            raise Unavailable("the chat's shared store (Redis) did not answer") from exc

    def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        if self._subscriber is not None:
            self._subscriber.unsubscribe(channel).addErrback(lambda _: None)

    # Connection state.

    def _prepare_commands(self, protocol: Any) -> None:
        self._prepare(protocol, self._commands_ready, self._commands_factory)

    def _prepare_subscriber(self, protocol: Any) -> None:
        self._prepare(protocol, self._subscriber_ready, self._subscriber_factory)

    def _prepare(
        self,
        protocol: Any,
        ready: Callable[[Any], Coroutine[Any, Any, None]],
        factory: _ProtocolFactory,
    ) -> None:
        """Once `protocol` is connected (and signed in), make it ready; if that fails, close
        it, and its ClientService tries again."""

        async def prepare() -> None:
            # txredisapi never says "connected" when AUTH or SELECT failed: it closes instead.
            which, _ = await race([protocol.whenConnected(), protocol.whenDisconnected()])
            if which == 0:
                await ready(protocol)
                factory.accepted()

        def failed(failure: Failure) -> None:
            # (Lost meanwhile: ClientService already knows.)
            if protocol.connected:
                factory.refused(failure.getErrorMessage())
                protocol.transport.abortConnection()

        Deferred.fromCoroutine(prepare()).addErrback(failed)

    async def _commands_ready(self, protocol: Any) -> None:
        await protocol.execute_command("CLIENT", "SETNAME", client_name(self.node, "commands"))
        # Loaded before anything runs: a command sent on the way out (a release while the node
        # stops) then needs no second round trip for NOSCRIPT.
        for script in self._scripts:
            await protocol.execute_command("SCRIPT", "LOAD", script.source)
        self._commands = protocol
        protocol.whenDisconnected().addCallback(lambda _: self._commands_lost(protocol))
        self._maybe_up()

    def _commands_lost(self, protocol: Any) -> None:
        if self._commands is protocol:
            self._commands = None
            self._went_down()

    async def _subscriber_ready(self, protocol: Any) -> None:
        await protocol.execute_command("CLIENT", "SETNAME", client_name(self.node, "subscriber"))
        await protocol.subscribe([self.probe_channel, *sorted(self._channels)])
        self._subscriber = protocol
        self._probe_seen = self._probe_sent
        protocol.whenDisconnected().addCallback(lambda _: self._subscriber_lost(protocol))
        self._maybe_up()

    def _subscriber_lost(self, protocol: Any) -> None:
        if self._subscriber is protocol:
            self._subscriber = None
            self._went_down()

    def _message(self, channel: str, message: str) -> None:
        if channel == self.probe_channel:
            self._probe_seen = max(self._probe_seen, int(message))
            return
        self._on_message(channel, message)

    def _send_probe(self) -> None:
        subscriber = self._subscriber
        if subscriber is None or self._commands is None:
            return
        if self._probe_seen < self._probe_sent:
            _log.warn(
                "redis subscription of {node} went silent (probe {n} not back); resubscribing",
                node=self.node,
                n=self._probe_sent,
            )
            subscriber.transport.abortConnection()
            return
        self._probe_sent += 1
        self._commands.execute_command("PUBLISH", self.probe_channel, self._probe_sent).addErrback(
            lambda _: None
        )

    def _went_down(self) -> None:
        self.up_since = None
        if self._stopping:
            return  # closed by us on the way out: not an outage
        if self._down_since is None:
            self._down_since = self._reactor.seconds()
            self._logged_down = False
            self._down_check = self._reactor.callLater(0, self._log_down)

    def _log_down(self) -> None:
        if self._down_since is not None and not self._logged_down:
            self._logged_down = True
            _log.error(
                "redis at {url} is out of reach; serving on, retrying", url=self.address.shown
            )

    def _maybe_up(self) -> None:
        if not self.up or self._down_since is None:
            return
        outage = self._reactor.seconds() - self._down_since
        if self._logged_down:
            _log.info("redis at {url} is back after {s:.1f}s", url=self.address.shown, s=outage)
        else:
            _log.info("connected to redis at {url}", url=self.address.shown)
        self._down_since = None
        self.up_since = self._reactor.seconds()
        if self._down_check is not None and self._down_check.active():
            self._down_check.cancel()
        # Only now, with both connections: catching up needs commands as well.
        self._on_subscribed()

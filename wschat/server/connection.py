"""One chat connection, whatever wire carries it: the sign-in gate and its timers, the frames
held while a token is verified, one `handle_<type>` per request type of the codec, and every
refusal turned into an error event in one place (`_failed`).

It reaches its wire only through `Transport`, which wschat/server/protocol.py implements over
Autobahn: this module imports no Autobahn. With --auth optional or required a connection may
sign in with its first frame (`auth`): the token is verified by wschat/server/tokens.py, and
chat/identity.py says what the identity may do.

A welcome is charged by its bytes as sent (--welcome-rate, --welcome-burst) after the fact:
one beyond what the connection has left puts it in debt, and until the debt is paid back
nothing it sends is served (input held, frames kept in order), so a flood of joins costs the
reactor at most the rate in welcomes, and no frame is refused or lost for it.
"""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wschat.chat import identity
from wschat.chat.errors import (
    AuthUnexpected,
    ChatError,
    KeysUnavailable,
    RateLimited,
    TokenInvalid,
)
from wschat.chat.hub import Hub
from wschat.chat.identity import AuthMode, Identity
from wschat.chat.limits import RefusalLog
from wschat.chat.model import (
    Auth,
    Authed,
    Command,
    Error,
    Event,
    History,
    Join,
    Kick,
    Kicked,
    Leave,
    Page,
    Refresh,
    Results,
    Say,
    Search,
    Welcome,
    Who,
)
from wschat.chat.ratelimit import ByteBudget
from wschat.chat.session import Session
from wschat.server.counts import Counts
from wschat.server.settings import AuthSettings
from wschat.server.tokens import TokenVerifier
from wschat.wire import (
    CLOSE_POLICY_VIOLATION,
    CLOSE_REPLACED,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNAUTHORIZED,
    decode,
)

# A module-level Logger keeps the namespace given (a Logger as a class attribute takes its
# class's name instead), which operators' log filters and the e2e tests match.
_log = Logger(namespace="wschat.ws.ChatProtocol")


class Transport(Protocol):
    """The wire under a Connection."""

    def send_event(self, event: Event) -> int:
        """Frame `event` and queue it for the client; returns the frame's length in bytes
        (0: nothing queued, the wire is closing)."""

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with `code` (any of wschat/wire.py)."""

    def hold_input(self, delay_s: float) -> None:
        """Read nothing more from the client for about `delay_s`: it is over a rate, and what
        it sent meanwhile would only be refused, each at the cost of an answer."""

    def serving(self) -> bool:
        """Whether frames are still served: false once either side began to close."""


@dataclass(frozen=True, slots=True)
class ConnectionContext:
    """What all connections of one server share."""

    hub: Hub
    clock: IReactorTime
    counts: Counts
    auth: AuthSettings
    # How long a connection has to sign in with --auth required.
    sign_in_timeout_s: float
    # What its welcomes may weigh (--welcome-rate, --welcome-burst).
    welcome_rate_bytes_per_s: float
    welcome_burst_bytes: int


class _Close(Exception):
    """Raised by a request that ends the connection: closed with `code`, not answered."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Connection:
    """A client's session with the hub, from the opened WebSocket to its close."""

    # One per connection: slots keep tens of thousands of them small.
    __slots__ = (
        "_auth_deadline",
        "_client",
        "_context",
        "_expiry",
        "_first_frame",
        "_held",
        "_held_bytes",
        "_opened_at",
        "_owing",
        "_payback",
        "_refusals",
        "_session",
        "_transport",
        "_welcomes",
    )

    def __init__(self, transport: Transport, context: ConnectionContext, client: str) -> None:
        self._transport = transport
        self._context = context
        # The client's address, for the log lines.
        self._client = client
        self._session: Session | None = None
        self._refusals = RefusalLog()
        self._opened_at = 0.0
        self._first_frame = True
        # Frames that arrive while an `auth` is being verified (a JWKS fetch), in order.
        self._held: list[bytes] | None = None
        self._held_bytes = 0
        self._auth_deadline: IDelayedCall | None = None
        self._expiry: IDelayedCall | None = None
        # Made at the first welcome: until then it would be full anyway.
        self._welcomes: ByteBudget | None = None
        # While its welcomes are in debt: when the debt is paid, and the frames read in the
        # meantime, in order. Input is held meanwhile, and each hold ends after the first
        # text frame it lets through (the pongs before it are served): about one frame a
        # second of debt.
        self._payback: IDelayedCall | None = None
        self._owing: list[bytes] | None = None

    def open(self, outbox: object, address: str | None) -> None:
        """Join the hub; `outbox` is where broadcasts to this connection are queued."""
        context = self._context
        # Logged once, at close (with how long it lasted): a line at open as well would cost
        # a fair share of the connect rate (twisted.logger formats every line in full).
        self._opened_at = context.clock.seconds()
        self._session = context.hub.connect(outbox, self.send, self._replaced, address)
        if context.auth.mode is AuthMode.REQUIRED:
            self._auth_deadline = context.clock.callLater(
                context.sign_in_timeout_s, self._auth_too_slow
            )

    @property
    def user(self) -> str | None:
        """The signed-in identity's sub, if any."""
        return self._session.user if self._session is not None else None

    def send(self, event: Event) -> None:
        if not isinstance(event, Error):
            self._refusals.served()
        size = self._transport.send_event(event)
        if isinstance(event, Welcome | Page | Results) and size:
            self._charge_welcome(size)

    def receive(self, payload: bytes) -> None:
        """One text frame from the client."""
        session = self._session
        if session is None:
            return
        if self._held is not None:
            self._hold(payload)
            return
        if self._payback is not None:
            if self._owing is None:
                self._owing = []
            self._owing.append(payload)
            self._transport.hold_input(self._payback.getTime() - self._context.clock.seconds())
            return
        maybeDeferred(self._dispatch, session, payload).addErrback(self._failed)

    def _charge_welcome(self, size: int) -> None:
        """Debit a welcome (or a page of history or search results) of `size` bytes; in debt,
        stop serving the client until it is paid."""
        context = self._context
        now_s = context.clock.seconds()
        if self._welcomes is None:
            self._welcomes = ByteBudget(
                context.welcome_rate_bytes_per_s, context.welcome_burst_bytes, now_s
            )
        owed_s = self._welcomes.spend(size, now_s)
        if not owed_s:
            return
        if self._payback is None:
            self._payback = context.clock.callLater(owed_s, self._paid_back)
        else:
            self._payback.reset(owed_s)
        self._transport.hold_input(owed_s)

    def _paid_back(self) -> None:
        """Serve what was read while in debt, in order, until a welcome among it is over the
        budget again (the rest waits for that debt)."""
        self._payback = None
        owing, self._owing = self._owing, None
        for payload in owing or ():
            if not self._transport.serving():
                return
            self.receive(payload)

    def _hold(self, payload: bytes) -> None:
        """Keep a frame for after the verdict on the `auth`, within --max-held-frames and
        --max-held-bytes: else a client could fill the server's memory while the JWKS is
        fetched."""
        assert self._held is not None
        auth = self._context.auth
        self._held_bytes += len(payload)
        if len(self._held) >= auth.max_held_frames or self._held_bytes > auth.max_held_bytes:
            _log.info(
                "closing {client}: over {frames} frames or {size} bytes sent during sign-in",
                client=self._client,
                frames=auth.max_held_frames,
                size=auth.max_held_bytes,
            )
            self._held = None
            self._transport.close(CLOSE_POLICY_VIOLATION, "too much sent before the sign-in ended")
            return
        self._held.append(payload)

    def closed(self, code: int | None, reason: str | None, clean: bool) -> None:
        """The wire has closed: stop the timers and leave the hub."""
        self._held = self._owing = None
        for timer in (self._auth_deadline, self._expiry, self._payback):
            if timer is not None and timer.active():
                timer.cancel()
        self._auth_deadline = self._expiry = self._payback = None
        if self._session is None:
            return
        session, self._session = self._session, None
        self._context.hub.disconnect(session)
        _log.info(
            "closed {client} after {duration:.1f}s: code={code} reason={reason!r} clean={clean}"
            " user={user!r} refusals={refusals}",
            client=self._client,
            duration=self._context.clock.seconds() - self._opened_at,
            code=code,
            reason=reason,
            clean=clean,
            user=session.user,
            refusals=self._refusals.count,
        )

    # Requests: one handle_<type> per request type of the codec.

    def _dispatch(self, session: Session, payload: bytes) -> object:
        first, self._first_frame = self._first_frame, False
        try:
            command: Command = decode(payload)
        except ChatError:
            self._check_signed_in(session, None, first)
            raise
        self._check_signed_in(session, command, first)
        return getattr(self, "handle_" + command.kind)(session, command)

    def _check_signed_in(self, session: Session, command: Command | None, first: bool) -> None:
        """--auth required: nothing but `auth` until signed in. --auth optional: a connection
        whose first frame is not `auth` is a guest from then on."""
        mode = self._context.auth.mode
        if isinstance(command, Auth) or session.identity is not None:
            return
        if mode is AuthMode.REQUIRED:
            raise _Close(CLOSE_UNAUTHORIZED, "sign in first: the first frame must be 'auth'")
        if mode is AuthMode.OPTIONAL and first:
            session.guest = True

    def handle_join(self, session: Session, cmd: Join) -> Coroutine[Any, Any, None]:
        return self._context.hub.join(session, cmd)

    def handle_say(self, session: Session, cmd: Say) -> Coroutine[Any, Any, None]:
        self._context.counts.messages_received += 1
        return self._context.hub.say(session, cmd)

    def handle_leave(self, session: Session, cmd: Leave) -> None:
        self._context.hub.leave(session, cmd)

    def handle_who(self, session: Session, cmd: Who) -> None:
        self._context.hub.who(session, cmd)

    def handle_history(self, session: Session, cmd: History) -> Coroutine[Any, Any, None]:
        return self._context.hub.history(session, cmd)

    def handle_search(self, session: Session, cmd: Search) -> Coroutine[Any, Any, None]:
        return self._context.hub.search(session, cmd)

    def handle_kick(self, session: Session, cmd: Kick) -> None:
        self._context.hub.charge(session)
        identity.require_admin(session, cmd.room)
        connections = self._context.hub.kick(cmd.room, cmd.name)
        _log.info(
            "{user!r} kicked {name!r} from {room!r}",
            user=session.user,
            name=cmd.name,
            room=cmd.room,
        )
        session.send(Kicked(cmd.room, cmd.name, connections))

    async def handle_auth(self, session: Session, cmd: Auth) -> None:
        verifier = self._verifier()
        identity.check_may_sign_in(session)
        if self._auth_deadline is not None and self._auth_deadline.active():
            self._auth_deadline.cancel()
        self._auth_deadline = None
        self._held, self._held_bytes = [], 0
        try:
            try:
                signed = await verifier.verify(cmd.token)
            except TokenInvalid as exc:
                _log.info("refused auth from {client}: {why!r}", client=self._client, why=exc)
                raise _Close(CLOSE_UNAUTHORIZED, exc.message) from None
            except KeysUnavailable as exc:
                raise _Close(CLOSE_TRY_AGAIN_LATER, exc.message) from None
            if self._session is not session or self._held is None:
                # Closed while the keys were fetched (by the client, or for what it sent in
                # the meantime): nothing is left to sign in.
                return
            identity.sign_in(session, signed)
        except BaseException:
            self._held = None
            raise
        self._arm_expiry(signed)
        session.send(self._authed(signed))
        held, self._held = self._held, None
        for payload in held:
            if not self._transport.serving():
                return
            self.receive(payload)

    async def handle_refresh(self, session: Session, cmd: Refresh) -> None:
        verifier = self._verifier()
        if session.identity is None:
            raise AuthUnexpected("'refresh' needs a connection that signed in with 'auth'")
        # Charged once it is a refresh there is a key for: a verification costs the server.
        self._context.hub.charge(session)
        signed = await verifier.verify(cmd.token)
        identity.refresh(session, signed)
        self._arm_expiry(signed)
        session.send(self._authed(signed))

    # Signed identities.

    def _verifier(self) -> TokenVerifier:
        auth = self._context.auth
        if auth.verifier is None or auth.mode is AuthMode.OFF:
            raise AuthUnexpected("this server has no signed identities (--auth off)")
        return auth.verifier

    def _authed(self, signed: Identity) -> Authed:
        now_s = self._context.clock.seconds()
        return Authed(signed.name, signed.sub, signed.expires_in_s(now_s), signed.admin)

    def _arm_expiry(self, signed: Identity) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        clock, auth = self._context.clock, self._context.auth
        assert auth.verifier is not None
        deadline_s = signed.exp_s + auth.verifier.leeway_s + auth.grace_s
        delay_s = max(0.0, deadline_s - clock.seconds())
        self._expiry = clock.callLater(delay_s, self._token_expired)

    def _token_expired(self) -> None:
        self._expiry = None
        _log.info("closing {client}: its token expired", client=self._client)
        self._transport.close(CLOSE_TOKEN_EXPIRED, "token expired: refresh before exp")

    def _auth_too_slow(self) -> None:
        self._auth_deadline = None
        _log.info("closing {client}: no auth in time", client=self._client)
        timeout_s = self._context.sign_in_timeout_s
        self._transport.close(CLOSE_UNAUTHORIZED, f"no 'auth' within {timeout_s:g} s")

    # Endings.

    def _failed(self, failure: Failure) -> None:
        if failure.check(_Close):
            self._transport.close(failure.value.code, failure.value.reason)
            return
        if failure.check(ChatError):
            self._refuse(failure.value)
            return
        _log.failure("request from {client} failed", failure, client=self._client)
        self._context.counts.errors["internal"] += 1
        self.send(Error("internal", "the server failed on this request"))

    def _refuse(self, exc: ChatError) -> None:
        self._context.counts.errors[exc.code] += 1
        if self._refusals.refused(exc.code):
            _log.info("refused {kind} from {client}", kind=exc.code, client=self._client)
        self.send(Error(exc.code, exc.message, exc.ref))
        if isinstance(exc, RateLimited):
            self._transport.hold_input(exc.retry_in_s)

    def _replaced(self) -> None:
        """A reconnect with this connection's token took its name over: the session is the
        new connection's now, so this one closes without leaving the hub."""
        self._session = None
        _log.info("replaced {client} by a reconnect with its token", client=self._client)
        self._transport.close(CLOSE_REPLACED, "replaced by a newer connection")

"""Rooms, their members and each connection's session: who may join, say and leave.

The hub knows connections only as Sessions carrying callables (send, close_replaced) and an
opaque `outbox` that the fan-out function understands; it never touches a protocol object.
Presence goes out in batches (chat/presence.py); with several nodes, chat/nodes.py keeps the
rooms in step with the other nodes' members.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wschat.chat.errors import (
    NameInvalid,
    NameRequired,
    NoSuchMember,
    NotInRoom,
    RateLimited,
    RoomForbidden,
)
from wschat.chat.identity import Companions, guest_name
from wschat.chat.limits import AddressRates, Limits
from wschat.chat.membership import Membership
from wschat.chat.memory import LocalRoster
from wschat.chat.model import (
    RESERVED_NAMES,
    Ack,
    Event,
    History,
    Join,
    Leave,
    Left,
    Members,
    Message,
    Page,
    Results,
    Resync,
    Say,
    Search,
    Welcome,
    Who,
    check_name,
    check_room,
    check_text,
    format_ts,
    message_bytes,
)
from wschat.chat.names import name_key
from wschat.chat.nodes import NodeSync
from wschat.chat.ports import Broker, HistoryStore, NewMessage, Roster
from wschat.chat.presence import PresenceBatcher, WhoIsWho
from wschat.chat.ratelimit import TokenBucket
from wschat.chat.room import Room
from wschat.chat.search import Query
from wschat.chat.session import Fanout, Schedule, Session

# Names no client may take: the application's, and every name that reads the same.
_RESERVED_KEYS = frozenset(map(name_key, RESERVED_NAMES))


class Hub:
    """The chat of one node: connections join, say, leave and ask who is there; and what the
    application (the server API) may do besides: publish, list rooms and members, kick."""

    def __init__(
        self,
        store: HistoryStore,
        broker: Broker,
        fanout: Fanout,
        now_s: Callable[[], float],
        new_resume_token: Callable[[], str],
        schedule: Schedule,
        limits: Limits = Limits(),
        roster: Roster | None = None,
    ) -> None:
        self._store = store
        self._broker = broker
        self._now_s = now_s
        self._new_resume_token = new_resume_token
        self.limits = limits
        self._rooms: dict[str, Room[Session]] = {}
        self._sessions: set[Session] = set()
        self._address_rates = AddressRates(limits.rate_per_ip_s, limits.burst_per_ip)
        # Further connections of signed users whose name a connection of theirs holds.
        self._companions: Companions[Session] = Companions()
        self._who_is_who = WhoIsWho()
        presence = PresenceBatcher(
            self._rooms, self._companions, self._who_is_who, fanout, schedule, limits
        )
        broker.attach(presence.deliver, self._resync)
        self._membership = Membership(
            self._rooms, self._companions, presence, broker, limits, self._forget
        )
        # One node decides names alone: its joins skip the roster's awaits altogether.
        self._nodes: NodeSync | None = None
        if roster is not None and not isinstance(roster, LocalRoster):
            self._nodes = NodeSync(
                roster,
                self._rooms,
                self._companions,
                self._who_is_who,
                schedule,
                new_resume_token,
                take_out=self._membership.exit,
                drop_if_unused=self._membership.drop_if_unused,
                mark=presence.mark,
            )
            self._membership.share_with(self._nodes)

    @property
    def connection_count(self) -> int:
        return len(self._sessions)

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    def connect(
        self,
        outbox: Any,
        send: Callable[[Event], None],
        close_replaced: Callable[[], None],
        address: str | None = None,
    ) -> Session:
        """A new connection; `address` is its client's, for the per-address message rate."""
        now_s = self._now_s()
        limits = self.limits
        bucket = TokenBucket(limits.rate_per_s, limits.burst, now_s)
        requests = TokenBucket(limits.request_rate_per_s, limits.request_burst, now_s)
        shared = self._address_rates.hold(address, now_s) if address is not None else None
        session = Session(outbox, send, close_replaced, bucket, requests, address, shared)
        self._sessions.add(session)
        return session

    def charge(self, session: Session) -> None:
        """Charge one request other than `say` to the connection's request bucket (join, leave,
        who, history and search charge themselves; the server charges kick and refresh)."""
        if not session.requests.take(self._now_s()):
            limits = self.limits
            raise RateLimited(
                f"at most {limits.request_rate_per_s:g} join, leave, who, kick, refresh, "
                f"history and search requests a second (burst {limits.request_burst}); slow down",
                retry_in_s=session.requests.wait_s(),
            )

    async def join(self, session: Session, cmd: Join) -> None:
        self.charge(session)
        room = check_room(cmd.room)
        if session.identity is not None and not session.identity.may_join(room):
            raise RoomForbidden(f"your token does not allow the room {room!r}")
        name = self._name_for(session, cmd)
        entered = room not in session.rooms
        holds = entered and self._membership.enter(session, room, name, cmd.resume_token)
        claimed = False
        try:
            # Every message stored from here on reaches this node, so that none falls between
            # the history of the welcome and the live ones; and so does every other node's
            # change to the room's members.
            await self._broker.watch(room)
            if self._nodes is not None:
                await self._nodes.watch(room)
                if holds:
                    await self._nodes.claim(session, room, name, cmd.resume_token)
                    claimed = True
            if session.resume_token is None:
                session.resume_token = self._new_resume_token()
            welcome = await self._welcome(session, room, name, cmd.since, cmd.epoch)
        except Exception:
            # Without a welcome the client does not know it is in: take it out again.
            if entered:
                self._membership.exit(session, room, release=claimed)
            raise
        session.send(welcome)

    async def say(self, session: Session, cmd: Say) -> None:
        if cmd.room not in session.rooms:
            raise NotInRoom(f"join {cmd.room!r} before saying something there", cmd.ref)
        check_text(cmd.text, cmd.ref)
        now_s = self._now_s()
        _take_tokens(session, now_s, self.limits, cmd.ref)
        name = session.name
        assert name is not None  # a session in a room has a name
        said = NewMessage(name, cmd.text, format_ts(now_s), cmd.ref, session.user, session.guest)
        # Store, then ack, then broadcast: an ack always means "it is in the history". A resent
        # ref is acked with the id it was stored under, and not broadcast again.
        await self._broker.publish(
            cmd.room, said, lambda msg, _new: session.send(Ack(cmd.room, cmd.ref, msg.id))
        )

    def leave(self, session: Session, cmd: Leave) -> None:
        self.charge(session)
        if cmd.room not in session.rooms:
            raise NotInRoom(f"not in {cmd.room!r}")
        self._membership.exit(session, cmd.room)
        session.send(Left(cmd.room))

    def who(self, session: Session, cmd: Who) -> None:
        self.charge(session)
        members = self._rooms.get(cmd.room)
        if members is None or cmd.room not in session.rooms:
            raise NotInRoom(f"join {cmd.room!r} to see who is there")
        names, after = members.page(cmd.after, cmd.limit)
        subs, guests = self._who_is_who.of(members, names)
        session.send(Members(cmd.room, names, after, len(members), subs, guests))

    async def history(self, session: Session, cmd: History) -> None:
        self.charge(session)
        if cmd.room not in session.rooms:
            raise NotInRoom(f"join {cmd.room!r} to read its history")
        messages, more = await self.page(cmd.room, cmd.before, cmd.after, cmd.limit)
        session.send(Page(cmd.room, messages, more))

    async def search(self, session: Session, cmd: Search) -> None:
        self.charge(session)
        if cmd.room not in session.rooms:
            raise NotInRoom(f"join {cmd.room!r} to search it")
        messages, after = await self.find(cmd.room, cmd.query, cmd.before, cmd.limit)
        session.send(Results(cmd.room, cmd.query.q, messages, after))

    def disconnect(self, session: Session) -> None:
        """The connection is gone (closed, dropped or replaced): leave all its rooms."""
        for room in list(session.rooms):
            self._membership.exit(session, room)
        self._forget(session)

    # What the server API (wschat/server/api.py) may do besides the chat itself.

    async def publish(
        self, room: str, name: str, text: str, ref: str | None, user: str | None = None
    ) -> tuple[Message, bool]:
        """Post as the application: stored, then broadcast exactly like a `say`; a `ref` the
        application already stored under this name in the room returns that message (and
        False). Its refs are its own: a client's say with the same name and ref is another."""
        check_room(room, ref)
        check_name(name, ref)
        check_text(text, ref)
        said = NewMessage(name, text, format_ts(self._now_s()), ref, user, application=True)
        return await self._broker.publish(room, said)

    async def page(
        self, room: str, before: int | None, after: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        """A page of the room's history, oldest first, and whether more lie beyond it (older,
        or newer for `after`). Like a welcome, a page weighs at most --welcome-history-bytes:
        the messages that fit nearest to where it starts, and `more`."""
        found = await self._store.page(room, before, after, limit + 1)
        if after is not None:
            kept = _oldest_within(found[:limit], self.limits.welcome_history_bytes)
        else:
            kept = _newest_within(found[-limit:], self.limits.welcome_history_bytes) or found[-1:]
        return kept, len(kept) < len(found)

    async def find(
        self, room: str, query: Query, before: int | None, limit: int
    ) -> tuple[list[Message], int | None]:
        """The room's messages that `query` matches, newest first (within the page's weight),
        and the `before` of the next page (None at the end)."""
        found = await self._store.search(room, query, before, limit + 1)
        kept = _oldest_within(found[:limit], self.limits.welcome_history_bytes)
        return kept, kept[-1].id if kept and len(kept) < len(found) else None

    def rooms(self) -> list[tuple[str, int]]:
        """Every room with members here, and how many, sorted by name."""
        return sorted((room, len(members)) for room, members in self._rooms.items())

    def members_of(self, room: str) -> list[tuple[str, Session, int]]:
        """The room's members on this node: name, the connection holding it, and how many
        connections do."""
        members = self._rooms.get(room)
        if members is None:
            return []
        companions = self._companions
        return [
            (name, session, 1 + len(companions.of(room, name)))
            for name in members.names
            if (session := members.get(name)) is not None
        ]

    def kick(self, room: str, name: str) -> int:
        """Take the name out of the room, all its connections; each is told `left` with the
        reason `kicked`, the others see it leave. Not a ban: it may join again."""
        members = self._rooms.get(room)
        holder = members.get(name) if members is not None else None
        if holder is None:
            raise NoSuchMember(f"{name!r} is not in {room!r}")
        kicked = [*self._companions.of(room, name), holder]
        for session in kicked:
            self._membership.exit(session, room)
            session.send(Left(room, "kicked"))
        return len(kicked)

    def _forget(self, session: Session) -> None:
        self._sessions.discard(session)
        if session.address_bucket is not None and session.address is not None:
            self._address_rates.release(session.address)
            session.address_bucket = None

    def _name_for(self, session: Session, cmd: Join) -> str:
        # A signed connection was named by its token (identity.sign_in) before any join.
        if session.name is None:
            if cmd.name is None:
                raise NameRequired("the first join of a connection needs a name")
            name = check_name(cmd.name)
            if not session.guest and name_key(name) in _RESERVED_KEYS:
                # The application's (a guest's name is marked, a signed one its token's).
                raise NameInvalid(f"the name {name!r} is reserved for the server's application")
            session.name = guest_name(name) if session.guest else name
        elif cmd.name is not None and cmd.name != session.name:
            if session.identity is not None:
                raise NameInvalid(f"your token names you {session.name!r}")
            if not session.guest or guest_name(check_name(cmd.name)) != session.name:
                raise NameInvalid(f"this connection is named {session.name!r}; reconnect to rename")
        self._who_is_who.note(session.user, session.guest)
        return session.name

    async def _welcome(
        self, session: Session, room: str, name: str, since: int | None, epoch: str | None
    ) -> Welcome:
        history, recovered, current = await _history(
            self._store, room, since, epoch, self.limits.history_size
        )
        kept = _newest_within(history, self.limits.welcome_history_bytes)
        if len(kept) < len(history) and recovered:
            # Cut to fit: the client has not got every message it missed.
            recovered = False
        history = kept
        assert session.resume_token is not None
        members = self._rooms.get(room)  # gone if the connection closed while we waited
        if members is None:
            names, users, subs, guests = [], None, None, None
        else:
            members.welcome(name)
            names = members.names
            users = list(names) if len(names) <= self.limits.member_list_limit else None
            subs, guests = self._who_is_who.of(members, users)
        return Welcome(
            room,
            name,
            users,
            len(names),
            history,
            session.resume_token,
            recovered,
            epoch=current,
            subs=subs,
            guests=guests,
        )

    def _resync(self, room: str) -> None:
        members = self._rooms.get(room)
        for session in list(members.sessions()) if members is not None else ():
            session.send(Resync(room))


async def _history(
    store: HistoryStore, room: str, since: int | None, epoch: str | None, size: int
) -> tuple[list[Message], bool | None, str | None]:
    """A welcome's history: the messages after `since` if they are all still there (recovered
    True), else the latest (recovered False; None when no `since` was asked); and the epoch."""
    current = await store.epoch(room)
    if since is not None and epoch is not None and epoch != current:
        # Counted in a history that is gone: its ids may have been given out again.
        return await store.latest(room, size), False, current
    if since is not None:
        found = await store.after(room, since, size)
        if found.complete:
            return found.messages, True, current
        return await store.latest(room, size), False, current
    return await store.latest(room, size), None, current


def _newest_within(history: list[Message], max_bytes: int) -> list[Message]:
    """The newest messages of `history` (oldest first) that weigh at most `max_bytes` together."""
    total = 0
    for index in range(len(history) - 1, -1, -1):
        total += message_bytes(history[index])
        if total > max_bytes:
            return history[index + 1 :]
    return history


def _oldest_within(messages: list[Message], max_bytes: int) -> list[Message]:
    """The first messages of `messages` that weigh at most `max_bytes` together (at least one,
    as every message fits in a welcome)."""
    total = 0
    for index, msg in enumerate(messages):
        total += message_bytes(msg)
        if total > max_bytes and index:
            return messages[:index]
    return messages


def _take_tokens(session: Session, now_s: float, limits: Limits, ref: str | None) -> None:
    """Charge one message to the connection's bucket and to its address's."""
    if not session.bucket.take(now_s):
        raise RateLimited(
            f"at most {limits.rate_per_s:g} messages a second (burst {limits.burst}); slow down",
            ref,
            session.bucket.wait_s(),
        )
    shared = session.address_bucket
    if shared is not None and not shared.take(now_s):
        raise RateLimited(
            f"your address may send at most {limits.rate_per_ip_s:g} messages a second "
            f"over all its connections (burst {limits.burst_per_ip}); slow down",
            ref,
            shared.wait_s(),
        )

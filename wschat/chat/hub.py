"""Rooms, their members and each connection's session: who may join, say and leave.

The hub knows connections only as Sessions carrying callables (send, close_replaced) and an
opaque `outbox` that the fan-out function understands; it never touches a protocol object.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from typing import Any

from .broker import Broker, RoomEvent
from .errors import (
    NameInvalid,
    NameRequired,
    NameTaken,
    NotInRoom,
    RateLimited,
    RoomFull,
    TooManyRooms,
)
from .history import HistoryStore
from .limits import Limits
from .model import (
    Ack,
    Event,
    Join,
    Leave,
    Left,
    Presence,
    Say,
    Welcome,
    check_name,
    check_room,
    check_text,
    format_ts,
)
from .ratelimit import TokenBucket

Fanout = Callable[[Iterable["Session"], RoomEvent], None]


class Session:
    """One connection as the hub sees it."""

    __slots__ = ("bucket", "close_replaced", "name", "outbox", "resume_token", "rooms", "send")

    def __init__(
        self,
        outbox: Any,
        send: Callable[[Event], None],
        close_replaced: Callable[[], None],
        bucket: TokenBucket,
    ) -> None:
        self.outbox = outbox
        self.send = send
        self.close_replaced = close_replaced
        self.name: str | None = None
        self.resume_token: str | None = None
        self.rooms: set[str] = set()
        self.bucket = bucket


class Hub:
    def __init__(
        self,
        store: HistoryStore,
        broker: Broker,
        fanout: Fanout,
        now_s: Callable[[], float],
        new_resume_token: Callable[[], str],
        limits: Limits = Limits(),
    ) -> None:
        self._store = store
        self._broker = broker
        self._fanout = fanout
        self._now_s = now_s
        self._new_resume_token = new_resume_token
        self.limits = limits
        self._rooms: dict[str, dict[str, Session]] = {}
        self._sessions: set[Session] = set()
        broker.attach(self._deliver)

    @property
    def connection_count(self) -> int:
        return len(self._sessions)

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    def members(self, room: str) -> list[str]:
        return sorted(self._rooms.get(room, ()))

    def connect(
        self, outbox: Any, send: Callable[[Event], None], close_replaced: Callable[[], None]
    ) -> Session:
        bucket = TokenBucket(self.limits.rate_per_s, self.limits.burst, self._now_s())
        session = Session(outbox, send, close_replaced, bucket)
        self._sessions.add(session)
        return session

    async def join(self, session: Session, cmd: Join) -> None:
        room = check_room(cmd.room)
        name = self._name_for(session, cmd)
        entered = room not in session.rooms
        if entered:
            self._enter(session, room, name, cmd.resume_token)
        if session.resume_token is None:
            session.resume_token = self._new_resume_token()
        try:
            welcome = await self._welcome(session, room, name, cmd.since)
        except Exception:
            # Without a welcome the client does not know it is in: take it out again.
            if entered:
                self._exit(session, room)
            raise
        session.send(welcome)

    async def say(self, session: Session, cmd: Say) -> None:
        if cmd.room not in session.rooms:
            raise NotInRoom(f"join {cmd.room!r} before saying something there", cmd.ref)
        check_text(cmd.text, cmd.ref)
        if not session.bucket.take(self._now_s()):
            raise RateLimited(
                f"at most {self.limits.rate_per_s:g} messages a second "
                f"(burst {self.limits.burst}); slow down",
                cmd.ref,
            )
        name = session.name
        assert name is not None  # a session in a room has a name
        if cmd.ref is not None:
            stored = await self._store.find_ref(cmd.room, name, cmd.ref)
            if stored is not None:
                session.send(Ack(cmd.room, cmd.ref, stored.id))
                return
        msg = await self._store.append(cmd.room, name, cmd.text, format_ts(self._now_s()), cmd.ref)
        # Store, then ack, then broadcast: an ack always means "it is in the history".
        session.send(Ack(cmd.room, cmd.ref, msg.id))
        self._broker.publish(cmd.room, msg)

    def leave(self, session: Session, cmd: Leave) -> None:
        if cmd.room not in session.rooms:
            raise NotInRoom(f"not in {cmd.room!r}")
        self._exit(session, cmd.room)
        session.send(Left(cmd.room))

    def disconnect(self, session: Session) -> None:
        """The connection is gone (closed, dropped or replaced): leave all its rooms."""
        for room in list(session.rooms):
            self._exit(session, room)
        self._sessions.discard(session)

    def _name_for(self, session: Session, cmd: Join) -> str:
        if session.name is None:
            if cmd.name is None:
                raise NameRequired("the first join of a connection needs a name")
            session.name = check_name(cmd.name)
        elif cmd.name is not None and cmd.name != session.name:
            raise NameInvalid(f"this connection is named {session.name!r}; reconnect to rename")
        return session.name

    def _enter(self, session: Session, room: str, name: str, resume_token: str | None) -> None:
        members = self._rooms.get(room)
        holder = members.get(name) if members else None
        if holder is not None:
            if (
                resume_token is not None
                and holder.resume_token is not None
                and hmac.compare_digest(resume_token.encode(), holder.resume_token.encode())
            ):
                self._take_over(holder, session)
                return
            raise NameTaken(f"the name {name!r} is taken in {room!r}")
        if len(session.rooms) >= self.limits.max_rooms:
            raise TooManyRooms(f"a connection may be in at most {self.limits.max_rooms} rooms")
        if members is None:
            members = self._rooms[room] = {}
        elif self.limits.max_members and len(members) >= self.limits.max_members:
            raise RoomFull(f"{room!r} has its maximum of {self.limits.max_members} members")
        members[name] = session
        session.rooms.add(room)
        self._broker.publish(room, Presence(room, "join", name))

    def _take_over(self, old: Session, new: Session) -> None:
        """A reconnected client reclaims its name: it inherits every room, silently."""
        name = old.name
        assert name is not None
        for room in old.rooms:
            self._rooms[room][name] = new
            new.rooms.add(room)
        old.rooms.clear()
        if new.resume_token is None:
            new.resume_token = old.resume_token
        self._sessions.discard(old)
        old.close_replaced()

    def _exit(self, session: Session, room: str) -> None:
        session.rooms.discard(room)
        members = self._rooms.get(room)
        if members is None or session.name is None or members.get(session.name) is not session:
            return
        del members[session.name]
        if not members:
            del self._rooms[room]
        self._broker.publish(room, Presence(room, "leave", session.name))

    async def _welcome(self, session: Session, room: str, name: str, since: int | None) -> Welcome:
        size = self.limits.history_size
        recovered: bool | None = None
        if since is not None:
            found = await self._store.after(room, since, size)
            recovered = found.complete
            if recovered:
                history = found.messages
        if not recovered:
            history = await self._store.latest(room, size)
        assert session.resume_token is not None
        return Welcome(room, name, self.members(room), history, session.resume_token, recovered)

    def _deliver(self, room: str, event: RoomEvent) -> None:
        members = self._rooms.get(room)
        if not members:
            return
        if isinstance(event, Presence):
            # Presence is news for the others; the subject learns from welcome/left.
            self._fanout([s for n, s in members.items() if n != event.name], event)
        else:
            self._fanout(members.values(), event)

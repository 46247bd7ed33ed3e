"""Rooms, their members and each connection's session: who may join, say and leave.

The hub knows connections only as Sessions carrying callables (send, close_replaced) and an
opaque `outbox` that the fan-out function understands; it never touches a protocol object.

Presence goes out in batches: a join or leave marks its room, and every
`presence_interval_s` each marked room sends one frame with all its changes (chat/room.py
says how they add up). A join storm into one room therefore costs a bounded number of frames
a second, not one frame per member per join.

With several nodes, names are claimed through the Roster (chat/ports.py) and the other
nodes' changes reach each room as they happen; they go out to this node's members in the
same batches as its own.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Callable, Collection
from functools import partial
from typing import Any

from wschat.chat.errors import (
    NameInvalid,
    NameRequired,
    NameTaken,
    NoSuchMember,
    NotInRoom,
    RateLimited,
    RoomForbidden,
    RoomFull,
    TooManyRooms,
)
from wschat.chat.identity import Companions, Identity, guest_name
from wschat.chat.limits import AddressRates, Limits
from wschat.chat.memory import LocalRoster
from wschat.chat.model import (
    Ack,
    Event,
    Join,
    Leave,
    Left,
    Members,
    Message,
    Presence,
    Resync,
    Say,
    Welcome,
    Who,
    check_name,
    check_room,
    check_text,
    format_ts,
)
from wschat.chat.ports import (
    Broker,
    Claim,
    Held,
    HistoryStore,
    Moved,
    NewMessage,
    NodeGone,
    Released,
    RoomEvent,
    Roster,
    RosterChange,
)
from wschat.chat.ratelimit import TokenBucket
from wschat.chat.room import Room

# A connection replaced from another node keeps its names in its other rooms this long, so
# that the client's rejoins there (with its token) move them silently too.
PARK_S = 10.0

Fanout = Callable[[Collection["Session"], RoomEvent], None]
# reactor.callLater, or task.Clock's in tests.
Schedule = Callable[[float, Callable[[], None]], object]


class Session:
    """One connection as the hub sees it."""

    __slots__ = (
        "address",
        "address_bucket",
        "bucket",
        "close_replaced",
        "guest",
        "identity",
        "name",
        "outbox",
        "resume_token",
        "rooms",
        "send",
    )

    def __init__(
        self,
        outbox: Any,
        send: Callable[[Event], None],
        close_replaced: Callable[[], None],
        bucket: TokenBucket,
        address: str | None = None,
        address_bucket: TokenBucket | None = None,
    ) -> None:
        self.outbox = outbox
        self.send = send
        self.close_replaced = close_replaced
        self.name: str | None = None
        self.resume_token: str | None = None
        self.rooms: set[str] = set()
        self.bucket = bucket
        # The client's address and the bucket all of its connections share (limits.py).
        self.address = address
        self.address_bucket = address_bucket
        # Signed in (chat/identity.py sign_in), or a guest of --auth optional; neither in the
        # open chat of --auth off.
        self.identity: Identity | None = None
        self.guest = False

    @property
    def user(self) -> str | None:
        return self.identity.sub if self.identity is not None else None


class Hub:
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
        self._fanout = fanout
        self._now_s = now_s
        self._new_resume_token = new_resume_token
        self._schedule = schedule
        self.limits = limits
        self._rooms: dict[str, Room[Session]] = {}
        self._sessions: set[Session] = set()
        # Rooms with presence changes not yet sent; a room that empties is dropped from
        # _rooms at once but stays here until its batch has been taken.
        self._marked: dict[str, Room[Session]] = {}
        self._address_rates = AddressRates(limits.rate_per_ip_s, limits.burst_per_ip)
        # Further connections of signed users whose name a connection of theirs holds.
        self._companions: Companions[Session] = Companions()
        # Set by the first signed or guest join: until then (--auth off) lists carry no
        # `subs`/`guests` and cost nothing more to build.
        self._identities = False
        self._roster: Roster = roster if roster is not None else LocalRoster()
        # One node decides names alone: its joins skip the roster's awaits altogether.
        self._shared = not isinstance(self._roster, LocalRoster)
        # (room, name) this node still holds for a connection replaced from another node.
        self._parked: set[tuple[str, str]] = set()
        broker.attach(self._deliver, self._resync)
        self._roster.attach(self._roster_changed, self._name_lost)

    @property
    def connection_count(self) -> int:
        return len(self._sessions)

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    @property
    def address_count(self) -> int:
        """Client addresses with a shared message-rate bucket (0 without --rate-per-ip)."""
        return len(self._address_rates)

    def members(self, room: str) -> list[str]:
        found = self._rooms.get(room)
        return list(found.names) if found is not None else []

    def connect(
        self,
        outbox: Any,
        send: Callable[[Event], None],
        close_replaced: Callable[[], None],
        address: str | None = None,
    ) -> Session:
        """A new connection; `address` is its client's, for the per-address message rate."""
        now_s = self._now_s()
        bucket = TokenBucket(self.limits.rate_per_s, self.limits.burst, now_s)
        shared = self._address_rates.hold(address, now_s) if address is not None else None
        session = Session(outbox, send, close_replaced, bucket, address, shared)
        self._sessions.add(session)
        return session

    async def join(self, session: Session, cmd: Join) -> None:
        room = check_room(cmd.room)
        if session.identity is not None and not session.identity.may_join(room):
            raise RoomForbidden(f"your token does not allow the room {room!r}")
        name = self._name_for(session, cmd)
        entered = room not in session.rooms
        holds = entered and self._enter(session, room, name, cmd.resume_token)
        claimed = False
        try:
            # Every message stored from here on reaches this node, so that none falls between
            # the history of the welcome and the live ones; and so does every other node's
            # change to the room's members.
            await self._broker.watch(room)
            if self._shared:
                await self._roster.watch(room)
                if holds:
                    await self._claim(session, room, name, cmd.resume_token)
                    claimed = True
            if session.resume_token is None:
                session.resume_token = self._new_resume_token()
            welcome = await self._welcome(session, room, name, cmd.since, cmd.epoch)
        except Exception:
            # Without a welcome the client does not know it is in: take it out again.
            if entered:
                self._exit(session, room, release=claimed)
            raise
        session.send(welcome)

    async def say(self, session: Session, cmd: Say) -> None:
        if cmd.room not in session.rooms:
            raise NotInRoom(f"join {cmd.room!r} before saying something there", cmd.ref)
        check_text(cmd.text, cmd.ref)
        now_s = self._now_s()
        if not session.bucket.take(now_s):
            raise RateLimited(
                f"at most {self.limits.rate_per_s:g} messages a second "
                f"(burst {self.limits.burst}); slow down",
                cmd.ref,
            )
        shared = session.address_bucket
        if shared is not None and not shared.take(now_s):
            raise RateLimited(
                f"your address may send at most {self.limits.rate_per_ip_s:g} messages a "
                f"second over all its connections (burst {self.limits.burst_per_ip}); slow down",
                cmd.ref,
            )
        name = session.name
        assert name is not None  # a session in a room has a name
        said = NewMessage(name, cmd.text, format_ts(now_s), cmd.ref, session.user, session.guest)
        # Store, then ack, then broadcast: an ack always means "it is in the history". A resent
        # ref is acked with the id it was stored under, and not broadcast again.
        await self._broker.publish(
            cmd.room, said, lambda msg, _new: session.send(Ack(cmd.room, cmd.ref, msg.id))
        )

    def leave(self, session: Session, cmd: Leave) -> None:
        if cmd.room not in session.rooms:
            raise NotInRoom(f"not in {cmd.room!r}")
        self._exit(session, cmd.room)
        session.send(Left(cmd.room))

    def who(self, session: Session, cmd: Who) -> None:
        room = self._rooms.get(cmd.room)
        if room is None or cmd.room not in session.rooms:
            raise NotInRoom(f"join {cmd.room!r} to see who is there")
        names, after = room.page(cmd.after, cmd.limit)
        subs, guests = self._who_is_who(room, names)
        session.send(Members(cmd.room, names, after, len(room), subs, guests))

    def disconnect(self, session: Session) -> None:
        """The connection is gone (closed, dropped or replaced): leave all its rooms."""
        for room in list(session.rooms):
            self._exit(session, room)
        self._forget(session)

    def _forget(self, session: Session) -> None:
        self._sessions.discard(session)
        if session.address_bucket is not None and session.address is not None:
            self._address_rates.release(session.address)
            session.address_bucket = None

    # What the server API (wschat/api.py) and admins may do besides the chat itself.

    async def publish(
        self, room: str, name: str, text: str, ref: str | None, user: str | None = None
    ) -> tuple[Message, bool]:
        """Post as the application: stored, then broadcast exactly like a `say`; a `ref`
        already stored under this name in the room returns that message (and False)."""
        check_room(room, ref)
        check_name(name, ref)
        check_text(text, ref)
        return await self._broker.publish(
            room, NewMessage(name, text, format_ts(self._now_s()), ref, user)
        )

    def rooms(self) -> list[tuple[str, int]]:
        """Every room with members here, and how many, sorted by name."""
        return sorted((name, len(room)) for name, room in self._rooms.items())

    def roster(self, room: str) -> list[tuple[str, Session, int]]:
        """A room's members: name, the connection holding it, and how many connections do."""
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
            self._exit(session, room)
            session.send(Left(room, "kicked"))
        return len(kicked)

    def _name_for(self, session: Session, cmd: Join) -> str:
        # A signed connection was named by its token (identity.sign_in) before any join.
        if session.name is None:
            if cmd.name is None:
                raise NameRequired("the first join of a connection needs a name")
            name = check_name(cmd.name)
            session.name = guest_name(name) if session.guest else name
        elif cmd.name is not None and cmd.name != session.name:
            if session.identity is not None:
                raise NameInvalid(f"your token names you {session.name!r}")
            if not session.guest or guest_name(check_name(cmd.name)) != session.name:
                raise NameInvalid(f"this connection is named {session.name!r}; reconnect to rename")
        if session.identity is not None or session.guest:
            self._identities = True
        return session.name

    async def _claim(
        self, session: Session, room: str, name: str, resume_token: str | None
    ) -> None:
        """Claim the name on every node; a takeover from another node keeps its token."""
        own = session.resume_token
        fresh = own or self._new_resume_token()
        unsigned = session.identity is None
        moved = await self._roster.claim(
            room,
            name,
            Claim(
                session.user,
                session.guest,
                fresh,
                own or resume_token or fresh,
                resume_token if unsigned else None,
            ),
        )
        session.resume_token = (own or resume_token) if moved else fresh

    def _enter(self, session: Session, room: str, name: str, resume_token: str | None) -> bool:
        """Put the session in the room on this node; True if it is a new holder of the name
        (to be claimed on the other nodes), False if it shares or took over a local one."""
        members = self._rooms.get(room)
        holder = members.get(name) if members is not None else None
        if holder is not None:
            if holder.user is not None and holder.user == session.user:
                # One person, two tabs: this connection shares the name; nobody sees a change.
                if len(session.rooms) >= self.limits.max_rooms:
                    raise TooManyRooms(
                        f"a connection may be in at most {self.limits.max_rooms} rooms"
                    )
                self._companions.add(room, name, session)
                session.rooms.add(room)
                return False
            if (
                holder.identity is None
                and session.identity is None
                and resume_token is not None
                and holder.resume_token is not None
                and hmac.compare_digest(resume_token.encode(), holder.resume_token.encode())
            ):
                self._take_over(holder, session)
                return False
            raise NameTaken(f"the name {name!r} is taken in {room!r}")
        if len(session.rooms) >= self.limits.max_rooms:
            raise TooManyRooms(f"a connection may be in at most {self.limits.max_rooms} rooms")
        if members is None:
            # An emptied room whose last batch is still to be sent comes back as it was.
            revived = self._marked.get(room)
            members = self._rooms[room] = revived if revived is not None else Room()
        elif self.limits.max_members and len(members) >= self.limits.max_members:
            raise RoomFull(f"{room!r} has its maximum of {self.limits.max_members} members")
        present = name in members
        members.add(name, session)
        session.rooms.add(room)
        if not present:
            self._mark(room, members)
        return True

    def _take_over(self, old: Session, new: Session) -> None:
        """A reconnected client reclaims its name: it inherits every room, silently."""
        name = old.name
        assert name is not None
        for room in old.rooms:
            self._rooms[room].replace(name, new)
            new.rooms.add(room)
        old.rooms.clear()
        if new.resume_token is None:
            new.resume_token = old.resume_token
        self._forget(old)
        old.close_replaced()

    def _exit(self, session: Session, room: str, release: bool = True) -> None:
        """Take the session out of the room; `release`: let the other nodes know (False when
        this node's claim never went through, or another node has the name now)."""
        session.rooms.discard(room)
        members = self._rooms.get(room)
        if members is None or session.name is None:
            return
        if members.get(session.name) is not session:
            self._companions.discard(room, session.name, session)
            return
        if session.identity is not None:
            heir = self._companions.pop(room, session.name)
            if heir is not None:
                # Another connection of the same user keeps the name: no change anyone sees.
                members.replace(session.name, heir)
                return
        present = len(members)
        members.remove(session.name)
        if release:
            self._roster.release(room, session.name)
        self._drop_if_unused(room, members)
        if len(members) != present:
            self._mark(room, members)

    def _drop_if_unused(self, name: str, room: Room[Session]) -> None:
        """No member here and nothing parked: stop following the room."""
        if room.local_count or self._rooms.get(name) is not room:
            return
        if self._parked and any(key[0] == name for key in self._parked):
            return
        del self._rooms[name]
        self._broker.unwatch(name)
        self._roster.unwatch(name)

    def _mark(self, name: str, room: Room[Session]) -> None:
        if not self._marked:
            self._schedule(self.limits.presence_interval_s, self._send_presence)
        self._marked[name] = room

    def _send_presence(self) -> None:
        marked, self._marked = self._marked, {}
        limit = self.limits.member_list_limit
        for name, room in marked.items():
            joined, left = room.take_changes()
            count = len(room)
            if count > limit:
                if count == room.sent_count:
                    continue
                batch = Presence(name, None, None, count)
            elif joined or left:
                subs, guests = self._who_is_who(room, joined)
                batch = Presence(name, joined, left, count, subs, guests)
            else:
                continue
            room.sent_count = count
            self._deliver(name, batch)

    async def _welcome(
        self, session: Session, room: str, name: str, since: int | None, epoch: str | None
    ) -> Welcome:
        size = self.limits.history_size
        recovered: bool | None = None
        current = await self._store.epoch(room)
        if since is not None and epoch is not None and epoch != current:
            # Counted in a history that is gone: its ids may have been given out again.
            recovered = False
        elif since is not None:
            found = await self._store.after(room, since, size)
            recovered = found.complete
            if recovered:
                history = found.messages
        if not recovered:
            history = await self._store.latest(room, size)
        assert session.resume_token is not None
        members = self._rooms.get(room)  # gone if the connection closed while we waited
        if members is not None:
            members.welcome(name)
        names = members.names if members is not None else []
        count = len(names)
        users = list(names) if count <= self.limits.member_list_limit else None
        subs, guests = self._who_is_who(members, users) if members is not None else (None, None)
        return Welcome(
            room,
            name,
            users,
            count,
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

    def _who_is_who(
        self, room: Room[Session], names: list[str] | None
    ) -> tuple[dict[str, str] | None, list[str] | None]:
        """Of `names`, the sub of each signed member and the guests (None, None if neither)."""
        if not self._identities or not names:
            return None, None
        subs: dict[str, str] = {}
        guests: list[str] = []
        for name in names:
            member = room.get(name)
            if member is None:
                sub, guest = room.remote_identity(name)
            else:
                sub, guest = member.user, member.guest
            if sub is not None:
                subs[name] = sub
            elif guest:
                guests.append(name)
        return subs or None, guests or None

    # From the roster: the other nodes' members.

    def _roster_changed(self, name: str, change: RosterChange) -> None:
        room = self._rooms.get(name)
        if room is None:
            return
        node = self._roster.node
        if isinstance(change, Held):
            if change.user is not None or change.guest:
                self._identities = True
            changed = room.hold(change.name, change.node, change.user, change.guest)
        elif isinstance(change, Released):
            changed = room.let_go(change.name, change.node)
        elif isinstance(change, Moved):
            changed = self._moved(name, room, change)
        elif isinstance(change, NodeGone):
            changed = room.drop_node(change.node)
        else:
            if any(h.user is not None or h.guest for h in change.holdings):
                self._identities = True
            parked = self._parked
            changed = room.reset_others(
                (h.name, h.node, h.user, h.guest)
                for h in change.holdings
                if h.node != node or (name, h.name) in parked
            )
        if changed:
            self._mark(name, room)

    def _moved(self, name: str, room: Room[Session], change: Moved) -> bool:
        """A token takeover between nodes: silent everywhere; the old connection, if it is
        here, is closed as replaced."""
        node = self._roster.node
        user, guest = room.remote_identity(change.name)
        holder = room.get(change.name)
        if change.new != node:
            if holder is not None:
                user, guest = holder.user, holder.guest
            room.hold(change.name, change.new, user, guest)
        changed = room.let_go(change.name, change.old)
        if change.old == node:
            self._parked.discard((name, change.name))
            if holder is not None:
                self._exit(holder, name, release=False)
                self._park(holder)
                holder.close_replaced()
            else:
                self._drop_if_unused(name, room)
        return changed

    def _park(self, session: Session) -> None:
        """The connection was taken over from another node: in its other rooms its name stays
        held here for PARK_S, for the client's rejoins (which move it silently), then goes."""
        name = session.name
        assert name is not None
        node = self._roster.node
        for room_name in list(session.rooms):
            room = self._rooms[room_name]
            session.rooms.discard(room_name)
            if room.get(name) is not session:
                continue
            room.hold(name, node, session.user, session.guest)
            room.remove(name)
            self._parked.add((room_name, name))
            self._schedule(PARK_S, partial(self._unpark, room_name, name))

    def _unpark(self, room_name: str, name: str) -> None:
        if (room_name, name) not in self._parked:
            return  # moved meanwhile
        self._parked.discard((room_name, name))
        self._roster.release(room_name, name)
        room = self._rooms.get(room_name)
        if room is None:
            return
        if room.let_go(name, self._roster.node):
            self._mark(room_name, room)
        self._drop_if_unused(room_name, room)

    def _name_lost(self, room: str, name: str) -> None:
        """This node was cut off long enough for its claim to lapse, and another node's
        member has the name now: its connections here are out of the room."""
        members = self._rooms.get(room)
        holder = members.get(name) if members is not None else None
        if holder is None:
            return
        for session in [*self._companions.of(room, name), holder]:
            self._exit(session, room, release=False)
            session.send(Left(room, "taken"))

    def _deliver(self, room: str, event: RoomEvent) -> None:
        members = self._rooms.get(room)
        if not members:
            return
        if self._companions.has_room(room):
            # Companions get every batch whole: its changes are idempotent to apply, so the
            # ones their own welcome already showed do no harm.
            self._fanout(list(self._companions.in_room(room)), event)
        if isinstance(event, Presence) and event.joined is not None:
            # A member who came in during the interval knows from its welcome of itself and
            # of the changes before it: its copy of the batch has only the later ones.
            newcomers = members.newcomers(event.joined)
            subjects = [s for n in newcomers if (s := members.get(n)) is not None]
            for subject in subjects:
                assert subject.name is not None
                joined, left = members.since_join(subject.name, event.joined, event.left or [])
                if joined or left:
                    self._fanout((subject,), _part_of(event, joined, left))
            if subjects:
                skip = set(map(id, subjects))
                self._fanout([s for s in members.sessions() if id(s) not in skip], event)
                return
        self._fanout(members.sessions(), event)


def _part_of(batch: Presence, joined: list[str], left: list[str]) -> Presence:
    """The batch with only these changes, and only their `subs` and `guests`."""
    subs = {n: batch.subs[n] for n in joined if n in batch.subs} if batch.subs else None
    guests = [n for n in joined if n in batch.guests] if batch.guests else None
    return dataclasses.replace(
        batch, joined=joined, left=left, subs=subs or None, guests=guests or None
    )

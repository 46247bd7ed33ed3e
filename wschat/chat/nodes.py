"""The members other nodes hold, kept in step with this node's rooms (only with a shared roster).

Names are claimed through the Roster (chat/ports.py) and the other nodes' changes reach each
room as they happen; they go out to this node's members in the same presence batches as its
own. With one node the hub decides names alone and none of this runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

from wschat.chat.identity import Companions
from wschat.chat.model import Left
from wschat.chat.ports import Claim, Held, Moved, NodeGone, Released, Roster, RosterChange
from wschat.chat.presence import WhoIsWho
from wschat.chat.room import Room
from wschat.chat.session import Schedule, Session

# A connection replaced from another node keeps its names in its other rooms this long, so
# that the client's rejoins there (with its token) move them silently too.
PARK_S = 10.0

# Hub callbacks: take a session out of a room (release: tell the roster); stop following an
# unused room; a room's members changed.
TakeOut = Callable[[Session, str, bool], None]
DropIfUnused = Callable[[str, Room[Session]], None]
Mark = Callable[[str, Room[Session]], None]


class NodeSync:
    """Claims and releases this node's names on the roster, and applies the other nodes'
    changes to this node's rooms."""

    def __init__(
        self,
        roster: Roster,
        rooms: Mapping[str, Room[Session]],
        companions: Companions[Session],
        who_is_who: WhoIsWho,
        schedule: Schedule,
        new_resume_token: Callable[[], str],
        *,
        take_out: TakeOut,
        drop_if_unused: DropIfUnused,
        mark: Mark,
    ) -> None:
        self._roster = roster
        self._rooms = rooms
        self._companions = companions
        self._who_is_who = who_is_who
        self._take_out = take_out
        self._drop_if_unused = drop_if_unused
        self._mark = mark
        self._schedule = schedule
        self._new_resume_token = new_resume_token
        # (room, name) this node still holds for a connection replaced from another node.
        self._parked: set[tuple[str, str]] = set()
        roster.attach(self._changed, self.name_lost)

    async def watch(self, room: str) -> None:
        await self._roster.watch(room)

    def unwatch(self, room: str) -> None:
        self._roster.unwatch(room)

    def release(self, room: str, name: str) -> None:
        self._roster.release(room, name)

    def keeps(self, room: str) -> bool:
        """A name parked in the room: this node must go on following it."""
        return bool(self._parked) and any(key[0] == room for key in self._parked)

    async def claim(self, session: Session, room: str, name: str, resume_token: str | None) -> None:
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

    def name_lost(self, room: str, name: str) -> None:
        """This node was cut off long enough for its claim to lapse, and another node's
        member has the name now: its connections here are out of the room."""
        members = self._rooms.get(room)
        holder = members.get(name) if members is not None else None
        if holder is None:
            return
        for session in [*self._companions.of(room, name), holder]:
            self._take_out(session, room, False)
            session.send(Left(room, "taken"))

    def _changed(self, room: str, change: RosterChange) -> None:
        members = self._rooms.get(room)
        if members is None:
            return
        node = self._roster.node
        if isinstance(change, Held):
            self._who_is_who.note(change.user, change.guest)
            changed = members.hold(change.name, change.node, change.user, change.guest)
        elif isinstance(change, Released):
            changed = members.let_go(change.name, change.node)
        elif isinstance(change, Moved):
            changed = self._moved(room, members, change)
        elif isinstance(change, NodeGone):
            changed = members.drop_node(change.node)
        else:
            for held in change.holdings:
                self._who_is_who.note(held.user, held.guest)
            parked = self._parked
            changed = members.reset_others(
                (h.name, h.node, h.user, h.guest)
                for h in change.holdings
                if h.node != node or (room, h.name) in parked
            )
        if changed:
            self._mark(room, members)

    def _moved(self, room: str, members: Room[Session], change: Moved) -> bool:
        """A token takeover between nodes: silent everywhere; the old connection, if it is
        here, is closed as replaced."""
        node = self._roster.node
        user, guest = members.remote_identity(change.name)
        holder = members.get(change.name)
        if change.new != node:
            if holder is not None:
                user, guest = holder.user, holder.guest
            members.hold(change.name, change.new, user, guest)
        changed = members.let_go(change.name, change.old)
        if change.old == node:
            self._parked.discard((room, change.name))
            if holder is not None:
                self._take_out(holder, room, False)
                self._park(holder)
                holder.close_replaced()
            else:
                self._drop_if_unused(room, members)
        return changed

    def _park(self, session: Session) -> None:
        """The connection was taken over from another node: in its other rooms its name stays
        held here for PARK_S, for the client's rejoins (which move it silently), then goes."""
        name = session.name
        assert name is not None
        node = self._roster.node
        for room in list(session.rooms):
            members = self._rooms[room]
            session.rooms.discard(room)
            if members.get(name) is not session:
                continue
            members.hold(name, node, session.user, session.guest)
            members.remove(name)
            self._parked.add((room, name))
            self._schedule(PARK_S, partial(self._unpark, room, name))

    def _unpark(self, room: str, name: str) -> None:
        if (room, name) not in self._parked:
            return  # moved meanwhile
        self._parked.discard((room, name))
        self._roster.release(room, name)
        members = self._rooms.get(room)
        if members is None:
            return
        if members.let_go(name, self._roster.node):
            self._mark(room, members)
        self._drop_if_unused(room, members)

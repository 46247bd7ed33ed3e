"""This node's rooms: which session holds which name in each, and entering and leaving them.

A name is held by one session; further connections of the same signed user share it as
companions, and a reconnected client with its resume token takes it over silently. A room
that no session of this node is in any more is dropped and no longer followed. Two names
that read the same (chat/names.py) are one name: the second is refused.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from wschat.chat.errors import NameTaken, RoomFull, TooManyRooms
from wschat.chat.identity import Companions
from wschat.chat.limits import Limits
from wschat.chat.nodes import NodeSync
from wschat.chat.ports import Broker
from wschat.chat.presence import PresenceBatcher
from wschat.chat.room import Room
from wschat.chat.session import Session


class Membership:
    """Puts sessions into rooms and takes them out, marking each change for presence."""

    def __init__(
        self,
        rooms: dict[str, Room[Session]],
        companions: Companions[Session],
        presence: PresenceBatcher,
        broker: Broker,
        limits: Limits,
        forget: Callable[[Session], None],
    ) -> None:
        self._rooms = rooms
        self._companions = companions
        self._presence = presence
        self._broker = broker
        self._limits = limits
        # The hub's: a replaced session is no longer one of its connections.
        self._forget = forget
        self._nodes: NodeSync | None = None

    def share_with(self, nodes: NodeSync) -> None:
        """Several nodes: names are claimed and released through `nodes`."""
        self._nodes = nodes

    def enter(self, session: Session, room: str, name: str, resume_token: str | None) -> bool:
        """Put the session in the room on this node; True if it is a new holder of the name
        (to be claimed on the other nodes), False if it shares or took over a local one."""
        members = self._rooms.get(room)
        same = members.same_as(name) if members is not None else None
        if same is not None and same != name:
            raise NameTaken(f"the name {name!r} is taken in {room!r}: it reads as {same!r}")
        holder = members.get(name) if members is not None else None
        if holder is not None:
            if holder.user is not None and holder.user == session.user:
                # One person, two tabs: this connection shares the name; nobody sees a change.
                self._check_room_count(session)
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
                self._check_takeover_room_count(holder, session)
                self._take_over(holder, session)
                return False
            raise NameTaken(f"the name {name!r} is taken in {room!r}")
        self._check_room_count(session)
        if members is None:
            revived = self._presence.pending(room)
            members = self._rooms[room] = revived if revived is not None else Room()
        elif self._limits.max_members and len(members) >= self._limits.max_members:
            raise RoomFull(f"{room!r} has its maximum of {self._limits.max_members} members")
        present = name in members
        members.add(name, session)
        session.rooms.add(room)
        if not present:
            self._presence.mark(room, members)
        return True

    def exit(self, session: Session, room: str, release: bool = True) -> None:
        """Take the session out of the room; `release`: let the other nodes know (False when
        this node's claim never went through, or another node has the name now)."""
        session.rooms.discard(room)
        members = self._rooms.get(room)
        name = session.name
        if members is None or name is None:
            return
        if members.get(name) is not session:
            self._companions.discard(room, name, session)
            return
        if session.identity is not None:
            heir = self._companions.pop(room, name)
            if heir is not None:
                # Another connection of the same user keeps the name: no change anyone sees.
                members.replace(name, heir)
                return
        present = len(members)
        members.remove(name)
        if release and self._nodes is not None:
            self._nodes.release(room, name)
        self.drop_if_unused(room, members)
        if len(members) != present:
            self._presence.mark(room, members)

    def drop_if_unused(self, room: str, members: Room[Session]) -> None:
        """No member here and nothing parked: stop following the room."""
        if members.local_count or self._rooms.get(room) is not members:
            return
        if self._nodes is not None and self._nodes.keeps(room):
            return
        del self._rooms[room]
        self._broker.unwatch(room)
        if self._nodes is not None:
            self._nodes.unwatch(room)

    def _check_room_count(self, session: Session) -> None:
        if len(session.rooms) >= self._limits.max_rooms:
            raise TooManyRooms(f"a connection may be in at most {self._limits.max_rooms} rooms")

    def _check_takeover_room_count(self, old: Session, new: Session) -> None:
        """A takeover hands the new connection every room of the old one: the rooms of both
        together must fit, or connections taken over in turn would gather any number."""
        combined = len(old.rooms | new.rooms)
        if combined > self._limits.max_rooms:
            raise TooManyRooms(
                f"taking the name over would put this connection in {combined} rooms; a "
                f"connection may be in at most {self._limits.max_rooms}"
            )

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

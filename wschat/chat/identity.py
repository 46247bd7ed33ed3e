"""Who is speaking: a signed identity's claims, the rooms it may join, and how signed users,
guests and open-chat users share the room's names.

Tokens are verified elsewhere (wschat/server/tokens.py, with PyJWT); this module gets their
claims as a dict and the time as a number, and knows nothing of signatures or sockets.

The naming rules (docs/protocol.md, "Signed identities"):
- a signed connection's name comes from its token; a join naming another is refused;
- several connections of one `sub` (one person, two tabs) share that name in a room: the name
  joins with the first of them and leaves with the last, so presence sees one member;
- another `sub` with the same display name, or one that reads the same (chat/names.py), is
  refused with `name_taken`;
- in `optional` mode an anonymous connection is a guest: its name always ends with
  GUEST_MARK, which no signed name may, so a guest can never take a signed user's name.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from wschat.chat.errors import AuthMismatch, AuthUnexpected, Forbidden, NameInvalid, TokenInvalid
from wschat.chat.model import MAX_NAME_CHARS, check_name, check_room
from wschat.chat.names import name_key

GUEST_MARK = " (guest)"
MAX_GUEST_BASE_CHARS = MAX_NAME_CHARS - len(GUEST_MARK)
MAX_SUB_CHARS = 256
MAX_ROOM_PATTERNS = 1000
# A token's expiry is only counted down from on the server; this bounds a bogus far-future
# `exp` so that the timer arithmetic never overflows.
MAX_EXP_S = 2**53


class AuthMode(enum.Enum):
    """--auth: `off` is the open chat of before; `optional` lets guests in beside signed
    users; `required` closes a connection whose first frame is not a valid `auth`."""

    OFF = "off"
    OPTIONAL = "optional"
    REQUIRED = "required"


@dataclass(frozen=True, slots=True)
class Identity:
    """The verified claims of one token."""

    sub: str
    name: str
    exp_s: float
    # None: every room. Otherwise room names, and `prefix*` patterns.
    rooms: tuple[str, ...] | None = None
    admin: bool = False

    def may_join(self, room: str) -> bool:
        return self.rooms is None or any(room_matches(p, room) for p in self.rooms)

    def expires_in_s(self, now_s: float) -> int:
        """Whole seconds until `exp` (0 once it has passed): the `expires_in` of `authed`."""
        return max(0, math.floor(self.exp_s - now_s))


def room_matches(pattern: str, room: str) -> bool:
    """`lobby` matches only lobby; `team-*` matches every room starting with `team-`; `*` all."""
    if pattern.endswith("*"):
        return room.startswith(pattern[:-1])
    return room == pattern


def identity_from_claims(claims: Mapping[str, Any]) -> Identity:
    """The Identity of verified claims; TokenInvalid (naming the claim) when one is unusable."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not 1 <= len(sub) <= MAX_SUB_CHARS or not sub.isprintable():
        raise TokenInvalid(f"'sub' must be a string of 1-{MAX_SUB_CHARS} printable characters")
    name = claims.get("name", sub)
    if not isinstance(name, str):
        raise TokenInvalid("'name' must be a string")
    try:
        check_name(name)
    except NameInvalid as exc:
        raise TokenInvalid(f"'name' is not a usable name: {exc.message}") from None
    if name_key(name).endswith(name_key(GUEST_MARK)):
        # Compared by key: a look-alike of the mark would pass a signed user for a guest.
        raise TokenInvalid(f"'name' must not end with {GUEST_MARK!r}, the mark of guests")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not 0 < exp < MAX_EXP_S:
        raise TokenInvalid("'exp' must be a number of seconds since the epoch")
    admin = claims.get("admin", False)
    if not isinstance(admin, bool):
        raise TokenInvalid("'admin' must be true or false")
    return Identity(sub, name, float(exp), _room_patterns(claims.get("rooms")), admin)


def _room_patterns(rooms: object) -> tuple[str, ...] | None:
    if rooms is None:
        return None
    if not isinstance(rooms, list) or len(rooms) > MAX_ROOM_PATTERNS:
        raise TokenInvalid(f"'rooms' must be a list of at most {MAX_ROOM_PATTERNS} room names")
    patterns = []
    for pattern in rooms:
        if not isinstance(pattern, str):
            raise TokenInvalid("'rooms' must hold strings")
        if pattern == "*":
            patterns.append(pattern)
            continue
        bare = pattern[:-1] if pattern.endswith("*") else pattern
        try:
            check_room(bare)
        except Exception:
            raise TokenInvalid(
                f"'rooms' entry {pattern!r} is neither a room name nor a 'prefix*' pattern"
            ) from None
        patterns.append(pattern)
    return tuple(patterns)


class Signable(Protocol):
    """What sign_in and refresh need of a connection (the hub's Session)."""

    name: str | None
    identity: Identity | None
    guest: bool


def check_may_sign_in(session: Signable) -> None:
    """Only a connection that has done nothing else yet may sign in."""
    if session.identity is not None or session.name is not None or session.guest:
        raise AuthUnexpected("'auth' must be the first frame of a connection")


def sign_in(session: Signable, identity: Identity) -> None:
    """The connection is now `identity`, named by its token, for as long as it lasts."""
    check_may_sign_in(session)
    session.identity = identity
    session.name = identity.name


def refresh(session: Signable, identity: Identity) -> None:
    """A fresh token of the same person: its expiry, rooms and admin flag apply from now on."""
    current = session.identity
    if current is None:
        raise AuthUnexpected("'refresh' needs a connection that signed in with 'auth'")
    if identity.sub != current.sub or identity.name != current.name:
        raise AuthMismatch(
            f"the token is for {identity.sub!r} named {identity.name!r}; this connection is "
            f"{current.sub!r} named {current.name!r} (reconnect to change)"
        )
    session.identity = identity


def require_admin(session: Signable, room: str) -> None:
    """Only a token that says `admin: true` may kick, and only in the rooms its `rooms` claim
    allows: an admin of one team is no admin of another."""
    signed = session.identity
    if signed is None or not signed.admin:
        raise Forbidden("only an admin (a token with admin: true) may kick")
    if not signed.may_join(room):
        raise Forbidden(f"your token makes you an admin only in its rooms, not in {room!r}")


def guest_name(name: str) -> str:
    """The name a guest asking for `name` gets: marked, so no signed user can hold it. A name
    that already carries the mark (the client rejoining with its welcome's name) stays."""
    if name.endswith(GUEST_MARK):
        base = name[: -len(GUEST_MARK)]
        if not base or base != base.strip():
            raise NameInvalid(f"a guest's name is a name followed by {GUEST_MARK!r}")
        return name
    if len(name) > MAX_GUEST_BASE_CHARS:
        raise NameInvalid(
            f"a guest's name is at most {MAX_GUEST_BASE_CHARS} characters "
            f"(the server adds {GUEST_MARK!r})"
        )
    return name + GUEST_MARK


S = TypeVar("S")


class Companions(Generic[S]):
    """The further connections of a signed user in the rooms where another of its connections
    holds the name (the room knows only that one, the holder). room -> name -> connections."""

    __slots__ = ("_rooms",)

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, list[S]]] = {}

    def add(self, room: str, name: str, session: S) -> None:
        self._rooms.setdefault(room, {}).setdefault(name, []).append(session)

    def discard(self, room: str, name: str, session: S) -> bool:
        """Forget `session` as a companion; False if it was none."""
        names = self._rooms.get(room)
        found = names.get(name) if names is not None else None
        if found is None or session not in found:
            return False
        found.remove(session)
        if not found:
            self._drop(room, name)
        return True

    def pop(self, room: str, name: str) -> S | None:
        """One companion to hold the name now that its holder leaves, or None."""
        names = self._rooms.get(room)
        found = names.get(name) if names is not None else None
        if not found:
            return None
        session = found.pop()
        if not found:
            self._drop(room, name)
        return session

    def of(self, room: str, name: str) -> list[S]:
        names = self._rooms.get(room)
        return list(names.get(name, ())) if names is not None else []

    def in_room(self, room: str) -> Iterator[S]:
        for sessions in self._rooms.get(room, {}).values():
            yield from sessions

    def has_room(self, room: str) -> bool:
        return room in self._rooms

    def _drop(self, room: str, name: str) -> None:
        names = self._rooms[room]
        del names[name]
        if not names:
            del self._rooms[room]

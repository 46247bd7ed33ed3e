"""Value types of the chat (commands in, events out) and the rules for names, rooms and text."""

from __future__ import annotations

import re
import secrets
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar

from wschat.chat.errors import NameInvalid, RoomInvalid, TextEmpty, TextInvalid, TextTooLong
from wschat.chat.search import Query

MAX_NAME_CHARS = 32
MAX_ROOM_CHARS = 64
MAX_TEXT_CHARS = 2000
# The name the application's messages go out under when it names none (POST /api/publish):
# no client may join under it, in any case (RESERVED_NAMES, casefolded).
DEFAULT_PUBLISH_NAME = "api"
RESERVED_NAMES = frozenset({DEFAULT_PUBLISH_NAME})
MAX_REF_CHARS = 64
MAX_RESUME_TOKEN_CHARS = 128
# A JWT with a long `rooms` claim is a few KiB; this is far above any sane one.
MAX_AUTH_TOKEN_CHARS = 16384
RESUME_TOKEN_BYTES = 24
WHO_DEFAULT_LIMIT = 200
WHO_MAX_LIMIT = 1000
PAGE_DEFAULT_LIMIT = 50
PAGE_MAX_LIMIT = 200
SEARCH_DEFAULT_LIMIT = 20
SEARCH_MAX_LIMIT = 100

_ROOM_RE = re.compile(rf"[A-Za-z0-9_.\-]{{1,{MAX_ROOM_CHARS}}}")
# Newline and tab are how people format text; every other control character is refused.
_TEXT_ALLOWED_CONTROLS = frozenset("\n\t")


def check_room(room: str, ref: str | None = None) -> str:
    if not _ROOM_RE.fullmatch(room):
        raise RoomInvalid(
            f"a room is 1-{MAX_ROOM_CHARS} characters of letters, digits, '_', '-', '.'", ref
        )
    return room


def check_name(name: str, ref: str | None = None) -> str:
    """Names are shown to people: printable only, so nobody can hide or spoof one."""
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise NameInvalid(f"a name is 1-{MAX_NAME_CHARS} characters", ref)
    if not name.isprintable() or name != name.strip():
        raise NameInvalid(
            "a name has only printable characters and no leading or trailing space", ref
        )
    return name


def check_text(text: str, ref: str | None = None) -> str:
    if len(text) > MAX_TEXT_CHARS:
        raise TextTooLong(f"a message is at most {MAX_TEXT_CHARS} characters", ref)
    if not text.strip():
        raise TextEmpty("a message must not be empty", ref)
    for ch in text:
        # Cs: lone surrogates (valid in JSON escapes, not encodable as UTF-8).
        category = unicodedata.category(ch)
        if (category == "Cc" and ch not in _TEXT_ALLOWED_CONTROLS) or category == "Cs":
            raise TextInvalid("a message must not contain control characters", ref)
    return text


def format_ts(epoch_s: float) -> str:
    """UTC, millisecond precision, 'Z' suffix: what JavaScript's Date parses and prints."""
    stamp = datetime.fromtimestamp(epoch_s, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def new_resume_token() -> str:
    """The secret with which a reconnecting client takes its name back (see Join)."""
    return secrets.token_urlsafe(RESUME_TOKEN_BYTES)


# Commands: what a client asks for. `kind` is the wire `type`; the protocol answers each
# with its `handle_<kind>`.


@dataclass(frozen=True, slots=True)
class Join:
    kind: ClassVar[str] = "join"
    room: str
    name: str | None = None
    since: int | None = None
    resume_token: str | None = None
    # The history `since` counts in (see Welcome.epoch); None: the current one.
    epoch: str | None = None


@dataclass(frozen=True, slots=True)
class Say:
    kind: ClassVar[str] = "say"
    room: str
    text: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Leave:
    kind: ClassVar[str] = "leave"
    room: str


@dataclass(frozen=True, slots=True)
class Who:
    kind: ClassVar[str] = "who"
    room: str
    after: str | None = None
    limit: int = WHO_DEFAULT_LIMIT


@dataclass(frozen=True, slots=True)
class Auth:
    """The first frame of a connection that signs in (see chat/identity.py)."""

    kind: ClassVar[str] = "auth"
    token: str


@dataclass(frozen=True, slots=True)
class Refresh:
    """A fresh token for the same identity, before the current one expires."""

    kind: ClassVar[str] = "refresh"
    token: str


@dataclass(frozen=True, slots=True)
class Kick:
    """An admin takes a name out of a room (see Hub.kick)."""

    kind: ClassVar[str] = "kick"
    room: str
    name: str


@dataclass(frozen=True, slots=True)
class History:
    """A page of a room's history: just older than `before`, just newer than `after`, or the
    newest (neither); never both."""

    kind: ClassVar[str] = "history"
    room: str
    before: int | None = None
    after: int | None = None
    limit: int = PAGE_DEFAULT_LIMIT


@dataclass(frozen=True, slots=True)
class Search:
    """The room's messages holding every word of `q` (see chat/search.py), newest first, older
    than `before` when given."""

    kind: ClassVar[str] = "search"
    room: str
    query: Query
    before: int | None = None
    limit: int = SEARCH_DEFAULT_LIMIT


Command = Join | Say | Leave | Who | Auth | Refresh | Kick | History | Search


# Events: what the server tells a client.


@dataclass(frozen=True, slots=True)
class Message:
    room: str
    id: int
    name: str
    text: str
    ts: str
    ref: str | None = None
    # The sender's `sub` when it was signed in; guest: it was a guest (--auth optional).
    user: str | None = None
    guest: bool = False


# What a message's JSON object in a welcome adds around its strings, at most: the keys, quotes,
# the id's digits, `user` and `guest`, and the comma before the next one.
MESSAGE_JSON_OVERHEAD_BYTES = 112


def message_bytes(msg: Message) -> int:
    """At least what `msg` weighs in a welcome's history as sent (UTF-8 JSON, wschat/wire.py):
    its strings' UTF-8 bytes, one more for each character JSON escapes (of the controls, text
    allows only newline and tab), and the overhead; the domain keeps to the wire unseen."""
    total = MESSAGE_JSON_OVERHEAD_BYTES
    for value in (msg.room, msg.name, msg.text, msg.ts, msg.user or ""):
        total += len(value.encode("utf-8")) + sum(value.count(ch) for ch in '"\\\n\t')
    return total


@dataclass(frozen=True, slots=True)
class Welcome:
    room: str
    name: str
    # The members' display names (a signed member's `sub` is in `subs`, not here); None
    # above the member-list limit: the client pages with `who`.
    users: list[str] | None
    count: int
    history: list[Message]
    resume_token: str
    recovered: bool | None = None
    # Which history the ids count in, for stores that can lose one (Redis): a `since` from
    # another epoch is never answered with messages of this one. None: ids never restart.
    epoch: str | None = None
    # Of the names in `users`: the `sub` of each signed one, and which are guests.
    subs: dict[str, str] | None = None
    guests: list[str] | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    room: str
    ref: str | None
    id: int


@dataclass(frozen=True, slots=True)
class Presence:
    """A batch of a room's changes (see chat/room.py); joined/left are None above the
    member-list limit, where only the count is kept up to date."""

    room: str
    joined: list[str] | None
    left: list[str] | None
    count: int
    # Of the names in `joined`: the `sub` of each signed one, and which are guests.
    subs: dict[str, str] | None = None
    guests: list[str] | None = None


@dataclass(frozen=True, slots=True)
class Members:
    """A page of `who`: `next` is the `after` of the following page, None on the last."""

    room: str
    names: list[str]
    next: str | None
    count: int
    # Of the names in `names`: the `sub` of each signed one, and which are guests.
    subs: dict[str, str] | None = None
    guests: list[str] | None = None


@dataclass(frozen=True, slots=True)
class Left:
    room: str
    # None: the connection asked to leave; "kicked": an admin or the application removed it.
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Kicked:
    """The answer to `kick`: how many connections held the name."""

    room: str
    name: str
    connections: int


@dataclass(frozen=True, slots=True)
class Authed:
    """The answer to `auth` and `refresh`."""

    name: str
    user: str
    expires_in_s: int
    admin: bool = False


@dataclass(frozen=True, slots=True)
class Resync:
    """This node could not get every message of the room in order (a gap already trimmed from
    the shared history, or the history was lost): join again with `since` to recover."""

    room: str


@dataclass(frozen=True, slots=True)
class Page:
    """The answer to `history`: messages oldest first; `more` whether others lie beyond this
    page in the direction asked (older for `before` or neither, newer for `after`)."""

    room: str
    messages: list[Message]
    more: bool


@dataclass(frozen=True, slots=True)
class Results:
    """The answer to `search`: messages newest first; `next` the `before` of the next page,
    None at the end."""

    room: str
    q: str
    messages: list[Message]
    next: int | None


@dataclass(frozen=True, slots=True)
class Error:
    code: str
    message: str
    ref: str | None = None


Event = (
    Message
    | Welcome
    | Ack
    | Presence
    | Members
    | Left
    | Resync
    | Kicked
    | Authed
    | Page
    | Results
    | Error
)


@dataclass(slots=True)
class Recovery:
    """What a history store found for a `since` request."""

    messages: list[Message] = field(default_factory=list)
    complete: bool = False

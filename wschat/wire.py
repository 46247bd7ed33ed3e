"""JSON text frames <-> typed commands and events (protocol v1, see docs/protocol.md)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from wschat.chat.errors import BadJson, InvalidField, UnknownType
from wschat.chat.model import (
    MAX_AUTH_TOKEN_CHARS,
    MAX_NAME_CHARS,
    MAX_REF_CHARS,
    MAX_RESUME_TOKEN_CHARS,
    PAGE_DEFAULT_LIMIT,
    PAGE_MAX_LIMIT,
    SEARCH_DEFAULT_LIMIT,
    SEARCH_MAX_LIMIT,
    WHO_DEFAULT_LIMIT,
    WHO_MAX_LIMIT,
    Ack,
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
    Left,
    Members,
    Message,
    Page,
    Presence,
    Refresh,
    Results,
    Resync,
    Say,
    Search,
    Welcome,
    Who,
)
from wschat.chat.search import Query

SUBPROTOCOL = "wschat.v1"

# The close codes of docs/protocol.md, for the server and for clients (wschat-cli).
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_REPLACED = 4001
CLOSE_SLOW_CONSUMER = 4008
CLOSE_UNAUTHORIZED = 4401
CLOSE_DISCONNECTED = 4403
CLOSE_TOKEN_EXPIRED = 4440
# RFC 6455 5.5: a control frame's payload is at most 125 bytes, two of them the code.
MAX_CLOSE_REASON_BYTES = 123

# SQLite's INTEGER is a signed 64-bit value; a larger `since` can only be a client bug.
MAX_ID = 2**63 - 1

_OPAQUE_KEYS = frozenset({"ref", "token", "epoch"})
MAX_EPOCH_CHARS = 64
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def decode(payload: bytes) -> Command:
    """Parse one text frame; raise a ChatError (with the request's ref when known) if it is bad."""
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise BadJson(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadJson("a frame must hold a JSON object")
    ref = _optional_str(obj, "ref", MAX_REF_CHARS, None)
    kind = obj.get("type")
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise UnknownType(f"unknown type {kind!r}; expected {_EXPECTED}", ref)
    return decoder(obj, ref)


def _join(obj: dict[str, Any], ref: str | None) -> Join:
    return Join(
        _room(obj, ref),
        _optional_str(obj, "name", None, ref),
        _optional_id(obj, "since", ref),
        _optional_str(obj, "token", MAX_RESUME_TOKEN_CHARS, ref),
        _optional_str(obj, "epoch", MAX_EPOCH_CHARS, ref),
    )


def _say(obj: dict[str, Any], ref: str | None) -> Say:
    return Say(_room(obj, ref), _str(obj, "text", ref), ref)


def _leave(obj: dict[str, Any], ref: str | None) -> Leave:
    return Leave(_room(obj, ref))


def _who(obj: dict[str, Any], ref: str | None) -> Who:
    limit = _limit(obj, WHO_DEFAULT_LIMIT, WHO_MAX_LIMIT, ref)
    return Who(_room(obj, ref), _optional_str(obj, "after", MAX_NAME_CHARS, ref), limit)


def _history(obj: dict[str, Any], ref: str | None) -> History:
    before = _optional_id(obj, "before", ref)
    after = _optional_id(obj, "after", ref)
    if before is not None and after is not None:
        raise InvalidField("give 'before' or 'after', not both", ref)
    limit = _limit(obj, PAGE_DEFAULT_LIMIT, PAGE_MAX_LIMIT, ref)
    return History(_room(obj, ref), before, after, limit)


def _search(obj: dict[str, Any], ref: str | None) -> Search:
    limit = _limit(obj, SEARCH_DEFAULT_LIMIT, SEARCH_MAX_LIMIT, ref)
    query = Query.parse(_str(obj, "q", ref), ref)
    return Search(_room(obj, ref), query, _optional_id(obj, "before", ref), limit)


def _limit(obj: dict[str, Any], default: int, most: int, ref: str | None) -> int:
    limit = obj.get("limit", default)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
        raise InvalidField(f"'limit' must be an integer from 1 to {most}", ref)
    return limit


def _auth_token(obj: dict[str, Any], ref: str | None) -> str:
    token = obj.get("token")
    if not isinstance(token, str) or not 1 <= len(token) <= MAX_AUTH_TOKEN_CHARS:
        raise InvalidField(f"'token' must be a string of 1-{MAX_AUTH_TOKEN_CHARS} characters", ref)
    return token


def _auth(obj: dict[str, Any], ref: str | None) -> Auth:
    return Auth(_auth_token(obj, ref))


def _refresh(obj: dict[str, Any], ref: str | None) -> Refresh:
    return Refresh(_auth_token(obj, ref))


def _kick(obj: dict[str, Any], ref: str | None) -> Kick:
    name = obj.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS:
        raise InvalidField(f"'name' must be a string of 1-{MAX_NAME_CHARS} characters", ref)
    return Kick(_room(obj, ref), name)


# One entry per request type; server/connection.py has a handle_<type> for each.
_DECODERS: dict[str, Callable[[dict[str, Any], str | None], Command]] = {
    Join.kind: _join,
    Say.kind: _say,
    Leave.kind: _leave,
    Who.kind: _who,
    Auth.kind: _auth,
    Refresh.kind: _refresh,
    Kick.kind: _kick,
    History.kind: _history,
    Search.kind: _search,
}
REQUEST_TYPES = tuple(_DECODERS)
_EXPECTED = ", ".join(REQUEST_TYPES[:-1]) + " or " + REQUEST_TYPES[-1]


def _room(obj: dict[str, Any], ref: str | None) -> str:
    return _str(obj, "room", ref)


def _str(obj: dict[str, Any], key: str, ref: str | None) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise InvalidField(f"{key!r} must be a string", ref)
    return value


def _optional_str(
    obj: dict[str, Any], key: str, max_chars: int | None, ref: str | None
) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or (max_chars is not None and not 1 <= len(value) <= max_chars):
        limit = f" of 1-{max_chars} characters" if max_chars else ""
        raise InvalidField(f"{key!r} must be a string{limit}", ref if key != "ref" else None)
    if key in _OPAQUE_KEYS and not value.isprintable():
        # refs and tokens are echoed back and compared as bytes: a lone surrogate (legal as a
        # JSON escape) could not even be encoded as UTF-8.
        raise InvalidField(f"{key!r} must be printable characters", ref if key != "ref" else None)
    return value


def _optional_id(obj: dict[str, Any], key: str, ref: str | None) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    # bool is an int in Python but not an id on the wire.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise InvalidField(f"{key!r} must be an integer from 0 to {MAX_ID}", ref)
    return value


def message_fields(msg: Message) -> dict[str, Any]:
    fields = {
        "type": "message",
        "room": msg.room,
        "id": msg.id,
        "name": msg.name,
        "text": msg.text,
        "ts": msg.ts,
    }
    if msg.user is not None:
        fields["user"] = msg.user
    if msg.guest:
        fields["guest"] = True
    return fields


def _identities(
    fields: dict[str, Any], subs: dict[str, str] | None, guests: list[str] | None
) -> dict[str, Any]:
    """Who of a list of names is signed (and as whom) and who is a guest: only when any is."""
    if subs:
        fields["subs"] = subs
    if guests:
        fields["guests"] = guests
    return fields


def event_fields(event: Event) -> dict[str, Any]:
    if isinstance(event, Message):
        return message_fields(event)
    if isinstance(event, Ack):
        return {"type": "ack", "room": event.room, "ref": event.ref, "id": event.id}
    if isinstance(event, Presence):
        fields: dict[str, Any] = {"type": "presence", "room": event.room}
        if event.joined is not None:
            fields["joined"] = event.joined
        if event.left is not None:
            fields["left"] = event.left
        fields["count"] = event.count
        return _identities(fields, event.subs, event.guests)
    if isinstance(event, Members):
        fields = {
            "type": "members",
            "room": event.room,
            "names": event.names,
            "next": event.next,
            "count": event.count,
        }
        return _identities(fields, event.subs, event.guests)
    if isinstance(event, Welcome):
        fields = {"type": "welcome", "room": event.room, "name": event.name}
        if event.users is not None:
            fields["users"] = event.users
        fields["count"] = event.count
        fields["history"] = [message_fields(m) for m in event.history]
        fields["token"] = event.resume_token
        if event.recovered is not None:
            fields["recovered"] = event.recovered
        if event.epoch is not None:
            fields["epoch"] = event.epoch
        return _identities(fields, event.subs, event.guests)
    if isinstance(event, Resync):
        return {"type": "resync", "room": event.room}
    if isinstance(event, Left):
        if event.reason is not None:
            return {"type": "left", "room": event.room, "reason": event.reason}
        return {"type": "left", "room": event.room}
    if isinstance(event, Kicked):
        return {
            "type": "kicked",
            "room": event.room,
            "name": event.name,
            "connections": event.connections,
        }
    if isinstance(event, Authed):
        fields = {
            "type": "authed",
            "name": event.name,
            "user": event.user,
            "expires_in": event.expires_in_s,
        }
        if event.admin:
            fields["admin"] = True
        return fields
    if isinstance(event, Page):
        return {
            "type": "page",
            "room": event.room,
            "messages": [message_fields(m) for m in event.messages],
            "more": event.more,
        }
    if isinstance(event, Results):
        return {
            "type": "results",
            "room": event.room,
            "q": event.q,
            "messages": [message_fields(m) for m in event.messages],
            "next": event.next,
        }
    if isinstance(event, Error):
        return {"type": "error", "code": event.code, "message": event.message, "ref": event.ref}
    raise TypeError(f"not an event: {event!r}")


def encode(event: Event) -> bytes:
    return _encoder.encode(event_fields(event)).encode("utf-8")

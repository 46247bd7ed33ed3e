"""The server API for applications, on its own listener (--api-listen): publish into rooms,
read rooms, members and history (paged and searched as a client's `history` and `search` are),
kick, disconnect users. Specified in docs/api.yaml.

JSON in and out, real status codes, errors as {"error": code, "message": text}. Every request
needs `Authorization: Bearer <key>` with a key of --api-key-file, compared in constant time.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from wschat.chat.errors import (
    ChatError,
    NoSuchMember,
    SearchUnavailable,
    StorageUnavailable,
    Unavailable,
)
from wschat.chat.hub import Hub
from wschat.chat.identity import MAX_SUB_CHARS
from wschat.chat.model import (
    DEFAULT_PUBLISH_NAME,
    MAX_NAME_CHARS,
    MAX_REF_CHARS,
    PAGE_DEFAULT_LIMIT,
    PAGE_MAX_LIMIT,
    SEARCH_DEFAULT_LIMIT,
    SEARCH_MAX_LIMIT,
    Message,
    check_room,
)
from wschat.chat.ports import HistoryStore
from wschat.chat.search import Query
from wschat.server.http import REQUEST_TIMEOUT_S, BoundedSite, json_refusal
from wschat.wire import MAX_ID, message_fields

MAX_BODY_BYTES = 64 * 1024
# A key shorter than this is a password someone typed, not a key.
MIN_KEY_CHARS = 16
API_IDLE_TIMEOUT_S = 30

_log = Logger(namespace="wschat.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class KeyFileError(ValueError):
    """--api-key-file cannot be used; the message says why."""


class ApiKeys:
    """The keys of --api-key-file: one a line (several, to rotate without a gap)."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise KeyFileError("no API key given")
        self._keys = keys

    def allow(self, authorization: bytes | None) -> bool:
        if authorization is None:
            return False
        scheme, _, given = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not given:
            return False
        given = given.strip()
        # Every key is compared, whatever matched: the time taken says nothing.
        allowed = False
        for key in self._keys:
            allowed |= hmac.compare_digest(given, key)
        return allowed


def load_api_keys(path: str) -> ApiKeys:
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise KeyFileError(f"cannot read the API key file {path}: {exc.strerror}") from None
    keys = [k.strip() for k in lines if k.strip() and not k.startswith(b"#")]
    if not keys:
        raise KeyFileError(f"{path} holds no API key (one a line)")
    for key in keys:
        if len(key) < MIN_KEY_CHARS or not key.isascii() or b" " in key:
            raise KeyFileError(
                f"the API keys in {path} must be at least {MIN_KEY_CHARS} characters of ASCII "
                f"without spaces (e.g. `openssl rand -hex 32 > {path}`)"
            )
    return ApiKeys(keys)


@dataclass(frozen=True, slots=True)
class ApiContext:
    """What the API reaches into: the hub, the store, and the server around them."""

    hub: Hub
    store: HistoryStore
    history_size: int
    disconnect_user: Callable[[str], int]
    info: Callable[[], dict[str, Any]]


Handler = Callable[[Request, list[str]], Awaitable[tuple[int, dict[str, Any]]]]


class Api(Resource):
    """The API listener's whole site. A leaf: the routes (all under /api/) are matched here,
    by path and method, so that every answer, a 404 too, is JSON."""

    isLeaf = True

    def __init__(self, keys: ApiKeys, context: ApiContext) -> None:
        super().__init__()
        self._keys = keys
        self._context = context
        # (method, path pattern) -> handler; "*" in a pattern is a room.
        self._routes: dict[tuple[str, tuple[str, ...]], Handler] = {
            ("POST", ("publish",)): self._publish,
            ("GET", ("rooms",)): self._rooms,
            ("GET", ("rooms", "*", "members")): self._members,
            ("GET", ("rooms", "*", "history")): self._history,
            ("GET", ("rooms", "*", "search")): self._search,
            ("POST", ("kick",)): self._kick,
            ("POST", ("disconnect",)): self._disconnect,
            ("GET", ("info",)): self._info,
        }

    def render(self, request: Request) -> int:
        gone: list[Failure] = []
        # A client that hangs up during a slow call (Redis may take seconds) gets no answer.
        request.notifyFinish().addErrback(gone.append)
        served = Deferred.fromCoroutine(self._serve(request))
        served.addErrback(self._failed, request)
        served.addCallback(lambda result: None if gone else self._respond(result, request))
        return NOT_DONE_YET

    async def _serve(self, request: Request) -> tuple[int, dict[str, Any]]:
        try:
            if not self._keys.allow(request.getHeader(b"authorization")):
                request.setHeader(b"www-authenticate", b'Bearer realm="wschat"')
                raise ApiError(401, "unauthorized", "send Authorization: Bearer <API key>")
            handler, params = self._route(request)
            return await handler(request, params)
        except ApiError as exc:
            return exc.status, {"error": exc.code, "message": exc.message}
        except (StorageUnavailable, Unavailable) as exc:
            # Our disk failing or the shared store (Redis) out of reach: retry later.
            return 503, {"error": exc.code, "message": exc.message}
        except NoSuchMember as exc:
            return 404, {"error": exc.code, "message": exc.message}
        except SearchUnavailable as exc:
            # Not a passing failure: this server's history cannot be searched (Redis alone).
            return 501, {"error": exc.code, "message": exc.message}
        except ChatError as exc:
            return 400, {"error": exc.code, "message": exc.message}

    def _route(self, request: Request) -> tuple[Handler, list[str]]:
        segments = [unquote(s.decode("utf-8", "replace")) for s in request.postpath or ()]
        if segments and segments[-1] == "":
            segments.pop()
        if not segments or segments[0] != "api":
            raise ApiError(404, "not_found", "the API is under /api/ (see docs/api.yaml)")
        segments = segments[1:]
        method = request.method.decode("ascii", "replace")
        allowed = []
        for (route_method, pattern), handler in self._routes.items():
            if len(pattern) != len(segments):
                continue
            params = [s for p, s in zip(pattern, segments, strict=True) if p == "*"]
            if all(p in ("*", s) for p, s in zip(pattern, segments, strict=True)):
                if route_method == method:
                    return handler, params
                allowed.append(route_method)
        if allowed:
            request.setHeader(b"allow", ", ".join(allowed).encode())
            raise ApiError(405, "method_not_allowed", f"use {' or '.join(allowed)}")
        raise ApiError(404, "not_found", "no such API route (see docs/api.yaml)")

    def _respond(self, result: tuple[int, dict[str, Any]], request: Request) -> None:
        status, body = result
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.write(json.dumps(body, ensure_ascii=False).encode("utf-8"))
        request.finish()

    def _failed(self, failure: Failure, request: Request) -> tuple[int, dict[str, Any]]:
        _log.failure(
            "API request {method} {uri} failed", failure, method=request.method, uri=request.uri
        )
        return 500, {"error": "internal", "message": "the server failed on this request"}

    # The routes.

    async def _publish(self, request: Request, params: list[str]) -> tuple[int, dict[str, Any]]:
        body = _json_body(request)
        room = _field(body, "room", str)
        text = _field(body, "text", str)
        name = _optional(body, "name", MAX_NAME_CHARS) or DEFAULT_PUBLISH_NAME
        ref = _optional(body, "ref", MAX_REF_CHARS)
        user = _optional(body, "user", MAX_SUB_CHARS)
        msg, stored = await self._context.hub.publish(room, name, text, ref, user)
        return (201 if stored else 200), {
            "room": msg.room,
            "id": msg.id,
            "ref": msg.ref,
            "ts": msg.ts,
        }

    async def _rooms(self, request: Request, params: list[str]) -> tuple[int, dict[str, Any]]:
        rooms = [{"room": name, "count": count} for name, count in self._context.hub.rooms()]
        return 200, {"rooms": rooms}

    async def _members(self, request: Request, params: list[str]) -> tuple[int, dict[str, Any]]:
        room = check_room(params[0])
        roster = self._context.hub.members_of(room)
        if not roster:
            raise ApiError(404, "room_not_found", f"nobody is in {room!r}")
        members = []
        for name, session, connections in roster:
            member: dict[str, Any] = {"name": name, "connections": connections}
            if session.user is not None:
                member["user"] = session.user
            if session.guest:
                member["guest"] = True
            members.append(member)
        return 200, {"room": room, "count": len(members), "members": members}

    async def _history(self, request: Request, params: list[str]) -> tuple[int, dict[str, Any]]:
        room = check_room(params[0])
        since = _query_int(request, "since", 0, MAX_ID)
        before = _query_int(request, "before", 0, MAX_ID)
        after = _query_int(request, "after", 0, MAX_ID)
        if (since, before, after).count(None) < 2:
            raise ApiError(
                400, "invalid_field", "give at most one of 'since', 'before' and 'after'"
            )
        if since is not None:
            return await self._recovery(request, room, since)
        limit = _query_int(request, "limit", 1, PAGE_MAX_LIMIT) or PAGE_DEFAULT_LIMIT
        messages, more = await self._context.hub.page(room, before, after, limit)
        if not messages:
            await self._require_room(room)
        return 200, {"room": room, "messages": [_message(m) for m in messages], "more": more}

    async def _recovery(
        self, request: Request, room: str, since: int
    ) -> tuple[int, dict[str, Any]]:
        """What a client rejoining with `since` would get: every message after it, or the
        latest and `complete` false."""
        size = self._context.history_size
        limit = _query_int(request, "limit", 1, size) or size
        store = self._context.store
        found = await store.after(room, since, limit)
        messages = found.messages if found.complete else await store.latest(room, limit)
        if not messages:
            await self._require_room(room)
        return 200, {
            "room": room,
            "complete": found.complete,
            "messages": [_message(m) for m in messages],
        }

    async def _require_room(self, room: str) -> None:
        """404 for a room with neither members on this node nor a message kept."""
        hub = self._context.hub
        if hub.members_of(room):
            return
        newest, _ = await hub.page(room, None, None, 1)
        if not newest:
            raise ApiError(404, "room_not_found", f"{room!r} has no members and no history")

    async def _search(self, request: Request, params: list[str]) -> tuple[int, dict[str, Any]]:
        room = check_room(params[0])
        q = _query_text(request, "q")
        query = Query.parse(q)
        before = _query_int(request, "before", 0, MAX_ID)
        limit = _query_int(request, "limit", 1, SEARCH_MAX_LIMIT) or SEARCH_DEFAULT_LIMIT
        messages, after = await self._context.hub.find(room, query, before, limit)
        return 200, {
            "room": room,
            "q": q,
            "messages": [_message(m) for m in messages],
            "next": after,
        }

    async def _kick(self, request: Request, params: list[str]) -> tuple[int, dict[str, Any]]:
        body = _json_body(request)
        room = check_room(_field(body, "room", str))
        name = _field(body, "name", str)
        connections = self._context.hub.kick(room, name)
        _log.info("the application kicked {name!r} from {room!r}", name=name, room=room)
        return 200, {"room": room, "name": name, "connections": connections}

    async def _disconnect(self, request: Request, params: list[str]) -> tuple[int, dict[str, Any]]:
        body = _json_body(request)
        user = _field(body, "user", str)
        connections = self._context.disconnect_user(user)
        _log.info(
            "the application disconnected {user!r}: {count} connections",
            user=user,
            count=connections,
        )
        return 200, {"user": user, "connections": connections}

    async def _info(self, request: Request, params: list[str]) -> tuple[int, dict[str, Any]]:
        return 200, self._context.info()


def _message(msg: Message) -> dict[str, Any]:
    fields = message_fields(msg)
    del fields["type"]
    return fields


def _json_body(request: Request) -> dict[str, Any]:
    assert request.content is not None
    raw = request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"a request body is at most {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "bad_json", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    return body


def _field(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if not isinstance(value, kind):
        raise ApiError(400, "invalid_field", f"{key!r} must be a {kind.__name__}")
    return value


def _optional(body: dict[str, Any], key: str, max_chars: int) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars or not value.isprintable():
        raise ApiError(400, "invalid_field", f"{key!r} must be 1-{max_chars} printable characters")
    return value


def _query_int(request: Request, key: str, low: int, high: int) -> int | None:
    args: dict[bytes, list[bytes]] = request.args or {}
    values = args.get(key.encode())
    if not values:
        return None
    try:
        number = int(values[0])
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise ApiError(400, "invalid_field", f"{key!r} must be an integer from {low} to {high}")
    return number


def _query_text(request: Request, key: str) -> str:
    args: dict[bytes, list[bytes]] = request.args or {}
    values = args.get(key.encode())
    if not values:
        raise ApiError(400, "invalid_field", f"{key!r} is required")
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_field", f"{key!r} must be UTF-8") from None


class ApiSite(BoundedSite):
    """The API's listener: a body over MAX_BODY_BYTES is refused (413) as soon as it is known
    to be, from its Content-Length or when a chunked one passes it, never read to the end."""

    max_body_bytes = MAX_BODY_BYTES
    refusal = staticmethod(json_refusal)


def make_api_site(
    keys: ApiKeys,
    context: ApiContext,
    reactor: object = None,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
) -> ApiSite:
    site = ApiSite(Api(keys, context), timeout=API_IDLE_TIMEOUT_S, reactor=reactor)
    # Head and body alike: an application's requests are small and sent at once.
    site.head_timeout_s = site.request_timeout_s = request_timeout_s
    site.displayTracebacks = False
    return site

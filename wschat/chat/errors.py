"""Refusals of client requests; each carries the `code` that goes on the wire."""

from __future__ import annotations


class ChatError(Exception):
    """A request was refused; the connection stays open and gets an error event."""

    code = "error"

    def __init__(self, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.ref = ref


class BadJson(ChatError):
    code = "bad_json"


class UnknownType(ChatError):
    code = "unknown_type"


class InvalidField(ChatError):
    code = "invalid_field"


class RoomInvalid(ChatError):
    code = "room_invalid"


class NameRequired(ChatError):
    code = "name_required"


class NameInvalid(ChatError):
    code = "name_invalid"


class NameTaken(ChatError):
    code = "name_taken"


class NotInRoom(ChatError):
    code = "not_in_room"


class TextEmpty(ChatError):
    code = "text_empty"


class TextTooLong(ChatError):
    code = "text_too_long"


class TextInvalid(ChatError):
    code = "text_invalid"


class RateLimited(ChatError):
    """Over a rate; `retry_in_s` says when the bucket that refused has a token again, so that
    the server need not read the connection's next frames before then."""

    code = "rate_limited"

    def __init__(self, message: str, ref: str | None = None, retry_in_s: float = 0.0) -> None:
        super().__init__(message, ref)
        self.retry_in_s = retry_in_s


class TooManyRooms(ChatError):
    code = "too_many_rooms"


class RoomFull(ChatError):
    code = "room_full"


class StorageUnavailable(ChatError):
    code = "storage_unavailable"


class SearchUnavailable(ChatError):
    """The history lives where it cannot be searched without reading it all (Redis alone)."""

    code = "search_unavailable"


class Unavailable(ChatError):
    """The shared store (Redis) is out of reach: nothing was stored, retry later."""

    code = "unavailable"


class TokenInvalid(ChatError):
    """A token failed verification: on `auth` the connection is closed (4401), on `refresh`
    it stays open under its current token."""

    code = "auth_invalid"


class AuthUnexpected(ChatError):
    """`auth` other than as the first frame, `refresh` without a signed identity, or either
    on a server with --auth off."""

    code = "auth_unexpected"


class AuthMismatch(ChatError):
    """A `refresh` token names another `sub` or another name than the connection's."""

    code = "auth_mismatch"


class KeysUnavailable(ChatError):
    """The JWKS could not be fetched and no earlier copy holds the token's key: the token may
    be fine, the server cannot tell now. On `auth` the connection is closed with 1013."""

    code = "auth_unavailable"


class Forbidden(ChatError):
    """`kick` by a connection whose token does not say `admin: true`."""

    code = "forbidden"


class NoSuchMember(ChatError):
    code = "no_such_member"


class RoomForbidden(ChatError):
    """The token's `rooms` claim does not cover the room."""

    code = "room_forbidden"


ALL_ERRORS: tuple[type[ChatError], ...] = (
    BadJson,
    UnknownType,
    InvalidField,
    RoomInvalid,
    NameRequired,
    NameInvalid,
    NameTaken,
    NotInRoom,
    TextEmpty,
    TextTooLong,
    TextInvalid,
    RateLimited,
    TooManyRooms,
    RoomFull,
    StorageUnavailable,
    Unavailable,
    TokenInvalid,
    AuthUnexpected,
    AuthMismatch,
    KeysUnavailable,
    RoomForbidden,
    Forbidden,
    NoSuchMember,
)

"""What the terminal client knows across connections, free of sockets and time: typed lines
to frames, frames to lines to show."""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from wschat.chat.model import PAGE_DEFAULT_LIMIT, PAGE_MAX_LIMIT

WHO_PAGE = 1000

HELP = [
    "* type a line to say it in the current room; commands:",
    "*   /join ROOM      join (and switch to) a room",
    "*   /leave [ROOM]   leave the current room (or ROOM)",
    "*   /who [ROOM]     list the members",
    f"*   /history [N]    show the N (default {PAGE_DEFAULT_LIMIT}, at most {PAGE_MAX_LIMIT}) "
    "messages before the oldest shown",
    "*   /search WORDS   find the current room's messages with all these words, newest first",
    "*   /more           the next (older) page of the last /search",
    "*   /kick NAME      take NAME out of the current room (admins only)",
    "*   /quit           leave",
]

Frame = dict[str, Any]

# Shown as they are: a tab, and the joiners of emoji and letters (format characters).
_KEPT = frozenset("\t\u200c\u200d")


def escaped(text: str) -> str:
    """A client's string for the terminal: control, bidi and other format characters (and line
    separators) as \\uXXXX, so that none can move the cursor, start a line of its own or
    reorder what is shown after it."""
    if text.isprintable():
        return text
    return "".join(
        f"\\u{ord(ch):04x}"
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") and ch not in _KEPT
        else ch
        for ch in text
    )


def names(frame: Frame, field: str) -> str:
    return ", ".join(escaped(name) for name in frame.get(field, []))


def shown_time(ts: str, tz: tzinfo | None = None) -> str:
    """A message's time as people read it: minutes, in `tz` (None: the machine's own zone)."""
    try:
        when = datetime.fromisoformat(ts)
    except ValueError:
        return escaped(ts)
    if when.tzinfo is None:
        return escaped(ts)
    return when.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def ws_url(url: str) -> str:
    """ws(s)://host:port/ws from what a person types: http(s) and a bare host:port work too."""
    if "://" not in url:
        url = "ws://" + url
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(f"not a ws://, wss://, http:// or https:// URL: {url}")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


@dataclass
class ChatState:
    """What the client knows across connections; turns frames into lines to show and typed
    lines into frames to send. Knows nothing of sockets or time."""

    name: str | None
    rooms: dict[str, int | None] = field(default_factory=dict)
    current: str | None = None
    resume_token: str | None = None
    signed: bool = False
    # say frames not acked yet, by ref: sent again after a reconnect.
    pending: dict[str, Frame] = field(default_factory=dict)
    # Rooms welcomed into at least once: a rejoin after a reconnect is not news.
    welcomed: set[str] = field(default_factory=set)
    # The id of each room's oldest message shown: /history asks for those before it.
    oldest: dict[str, int] = field(default_factory=dict)
    # The last /search: its room, its words, and the `before` of its next page (None: none).
    searching: tuple[str, str, int | None] | None = None
    # The zone times are shown in (None: the machine's).
    tz: tzinfo | None = None
    new_ref: Callable[[], str] = lambda: uuid.uuid4().hex

    def opening(self, token: str | None) -> list[Frame]:
        """The frames of a new connection: sign in, rejoin every room, resend what is unacked."""
        frames: list[Frame] = [{"type": "auth", "token": token}] if token else []
        first = True
        for room, last_id in self.rooms.items():
            frames.append(self._join(room, last_id, first))
            first = False
        frames += self.pending.values()
        return frames

    def _join(self, room: str, since: int | None, with_name: bool) -> Frame:
        frame: Frame = {"type": "join", "room": room}
        if with_name and self.name is not None and not self.signed:
            frame["name"] = self.name
        if since is not None:
            frame["since"] = since
        if self.resume_token is not None:
            frame["token"] = self.resume_token
        return frame

    def typed(self, line: str) -> tuple[list[str], list[Frame], bool]:
        """A line from the keyboard: (lines to show, frames to send, quit?)."""
        line = line.rstrip("\r\n")
        if not line.strip():
            return [], [], False
        if not line.startswith("/"):
            if self.current is None:
                return ["! join a room first: /join ROOM"], [], False
            ref = self.new_ref()
            frame = {"type": "say", "room": self.current, "text": line, "ref": ref}
            self.pending[ref] = frame
            return [], [frame], False
        command, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        room = arg or self.current
        if command == "quit":
            return [], [], True
        if command == "help":
            return list(HELP), [], False
        if command == "history":
            return self._history(arg)
        if command == "search":
            return self._search(arg)
        if command == "more":
            return self._more()
        if command == "join" and arg:
            self.rooms.setdefault(arg, None)
            self.current = arg
            return [], [self._join(arg, self.rooms[arg], True)], False
        if command in ("leave", "who") and room:
            if command == "leave":
                return [], [{"type": "leave", "room": room}], False
            return [], [{"type": "who", "room": room, "limit": WHO_PAGE}], False
        if command == "kick" and arg and self.current:
            return [], [{"type": "kick", "room": self.current, "name": arg}], False
        return [f"! unknown or incomplete command: {line} (/help)"], [], False

    def _history(self, arg: str) -> tuple[list[str], list[Frame], bool]:
        room = self.current
        if room is None:
            return ["! join a room first: /join ROOM"], [], False
        count = PAGE_DEFAULT_LIMIT
        if arg:
            count = int(arg) if arg.isdecimal() else 0
        if not 1 <= count <= PAGE_MAX_LIMIT:
            return [f"! /history [N]: N is a number from 1 to {PAGE_MAX_LIMIT}"], [], False
        frame: Frame = {"type": "history", "room": room, "limit": count}
        if room in self.oldest:
            frame["before"] = self.oldest[room]
        return [], [frame], False

    def _search(self, words: str) -> tuple[list[str], list[Frame], bool]:
        room = self.current
        if room is None:
            return ["! join a room first: /join ROOM"], [], False
        if not words:
            return ["! /search WORDS: the words to find"], [], False
        self.searching = (room, words, None)
        return [], [{"type": "search", "room": room, "q": words}], False

    def _more(self) -> tuple[list[str], list[Frame], bool]:
        if self.searching is None or self.searching[2] is None:
            return ["! no more results: /search WORDS"], [], False
        room, words, before = self.searching
        # Until its page comes, there is no next one to ask for (a second /more waits).
        self.searching = (room, words, None)
        return [], [{"type": "search", "room": room, "q": words, "before": before}], False

    def received(self, frame: Frame) -> tuple[list[str], list[Frame]]:
        """A frame from the server: (lines to show, frames to send in answer)."""
        kind = frame.get("type")
        room = frame.get("room")
        if kind == "message":
            return self._message(frame), []
        if kind == "presence":
            lines = [f"* {escaped(n)} joined #{room}" for n in frame.get("joined", [])]
            return lines + [f"* {escaped(n)} left #{room}" for n in frame.get("left", [])], []
        if kind == "welcome":
            return self._welcome(frame), []
        if kind == "page":
            return self._page(frame), []
        if kind == "results":
            return self._results(frame), []
        if kind == "ack":
            self.pending.pop(frame.get("ref") or "", None)
            return [], []
        if kind == "members":
            lines = [f"* #{room}: {names(frame, 'names')} ({frame['count']} in all)"]
            more = []
            if frame.get("next") is not None:
                more = [{"type": "who", "room": room, "after": frame["next"], "limit": WHO_PAGE}]
            return lines, more
        if kind == "left":
            self._forget(str(room))
            why = " (kicked)" if frame.get("reason") == "kicked" else ""
            return [f"* you left #{room}{why}"], []
        if kind == "kicked":
            return [f"* {escaped(frame['name'])} was kicked from #{room}"], []
        if kind == "authed":
            self.signed = True
            self.name = frame["name"]
            admin = ", admin" if frame.get("admin") else ""
            signed = f"{escaped(frame['name'])} ({escaped(frame['user'])}{admin})"
            return [f"* signed in as {signed}"], []
        if kind == "error":
            return [f"! {frame.get('code')}: {escaped(str(frame.get('message')))}"], []
        return [], []

    def _welcome(self, frame: Frame) -> list[str]:
        room = frame["room"]
        self.name = frame["name"]
        self.resume_token = frame.get("token", self.resume_token)
        known = room in self.welcomed
        self.welcomed.add(room)
        self.rooms.setdefault(room, None)
        lines = []
        if not known:
            users = frame.get("users")
            listed = f": {names(frame, 'users')}" if users is not None else ""
            me = escaped(frame["name"])
            lines.append(f"* joined #{room} as {me} ({frame['count']} members{listed})")
        elif frame.get("recovered") is False:
            lines.append(f"* #{room}: some messages were missed while offline (/history)")
            # What follows is not joined to what was shown: /history pages back from it.
            self.oldest.pop(room, None)
        for msg in frame.get("history", []):
            lines += self._message(msg)
        return lines

    def _message(self, msg: Frame) -> list[str]:
        room = msg["room"]
        last = self.rooms.get(room)
        if last is not None and msg["id"] <= last:
            return []  # seen already (a rejoin's history overlaps the live messages)
        if room in self.rooms:
            self.rooms[room] = msg["id"]
            self.oldest.setdefault(room, msg["id"])
        return _text_lines(f"[{room}] <{escaped(msg['name'])}> ", msg["text"])

    def _dated(self, msg: Frame, mark: str) -> list[str]:
        """A message out of the live flow (history, search results): marked, with its id and
        time."""
        when = shown_time(str(msg["ts"]), self.tz)
        head = f"[{msg['room']}] {mark} #{msg['id']} {when} <{escaped(msg['name'])}> "
        return _text_lines(head, msg["text"])

    def _page(self, frame: Frame) -> list[str]:
        room = frame["room"]
        oldest = self.oldest.get(room)
        # Only what is older than what is shown: a page asked before any message was shown
        # may overlap the live ones that came meanwhile.
        older = [m for m in frame["messages"] if oldest is None or m["id"] < oldest]
        if older and room in self.rooms:
            self.oldest[room] = older[0]["id"]
        lines = [line for msg in older for line in self._dated(msg, "history")]
        if frame.get("more"):
            lines.append(f"* #{room}: {len(older)} older messages; /history for more")
        elif older:
            lines.append(f"* #{room}: {len(older)} older messages; none before them is kept")
        else:
            lines.append(f"* #{room}: no older messages are kept")
        return lines

    def _results(self, frame: Frame) -> list[str]:
        room, words, after = frame["room"], frame["q"], frame.get("next")
        if self.searching is not None and self.searching[:2] == (room, words):
            self.searching = (room, words, after)
        quoted = f'"{escaped(words)}"'
        messages = frame["messages"]
        lines = [f"* #{room}: found for {quoted}, newest first:"] if messages else []
        lines += [line for msg in messages for line in self._dated(msg, "found")]
        if after is not None:
            lines.append(f"* #{room}: /more for older results for {quoted}")
        elif messages:
            lines.append(f"* #{room}: no older results for {quoted}")
        else:
            lines.append(f"* #{room}: nothing found for {quoted}")
        return lines

    def _forget(self, room: str) -> None:
        self.rooms.pop(room, None)
        self.welcomed.discard(room)
        self.oldest.pop(room, None)
        if self.searching is not None and self.searching[0] == room:
            self.searching = None
        if self.current == room:
            self.current = next(reversed(self.rooms), None) if self.rooms else None


def _text_lines(head: str, text: object) -> list[str]:
    """Each line of the text on a line of its own, those after the first indented under the
    head: a line of text can never read as a message of someone else."""
    first, *more = [escaped(line) for line in str(text).split("\n")]
    indent = " " * len(head)
    return [head + first, *(indent + line for line in more)]

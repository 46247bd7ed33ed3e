"""Every Redis key and channel name wschat uses, and their parsing: one place, so that nodes of
every version agree on them.

A room's keys are all under the hash tag {room} (so that a Redis Cluster could hold them):
  wschat:{room}:seq      the last message id given out (INCR)
  wschat:{room}:log      the history stream, entry ids `<id>-0`, trimmed to about --history-keep
                         (with Redis alone; never with --history-keep 0)
  wschat:{room}:refs     hash "name\\nref" -> id, for ref idempotency ("\\nname\\nref" for
                         the application's refs: no name starts with a newline)
  wschat:{room}:refz     the same refs by when they were stored (µs), so that those out of the
                         24 h window, or past --history-keep of them, are forgotten
  wschat:{room}:epoch    a random id of this history: if Redis loses the room, it changes
  wschat:{room}:members  hash name -> {"h": {node: 1, ...}, "u": user, "g": guest, "t": token}
  wschat:{room}:pver     the number of the room's last roster change
  wschat:{room}:ch       the channel: every stored message and every roster change
(With a store of record in PostgreSQL, Redis holds no history: only members, pver and ch.)
A node's:
  wschat:nodes               sorted set: node -> when its lease ends (Redis's clock, ms)
  wschat:node:<node>:rooms   the rooms where the node may hold names (for whoever reaps it)
  wschat:node:<node>         the channel of the node's subscription probes
A node's two connections are named (CLIENT LIST shows them) wschat:<node>:commands and
wschat:<node>:subscriber, the node's name with what is not printable ASCII as `_`.
"""

from __future__ import annotations

from dataclasses import dataclass

NODES_KEY = "wschat:nodes"
_ROOM_PREFIX = "wschat:{"
_CHANNEL_SUFFIX = "}:ch"


def ref_field(name: str, ref: str, application: bool) -> str:
    """A ref's field in the room's refs hash (lua/append.lua builds the same)."""
    field = f"{name}\n{ref}"
    return "\n" + field if application else field


@dataclass(frozen=True, slots=True)
class RoomKeys:
    seq: str
    log: str
    refs: str
    refz: str
    epoch: str
    members: str
    pver: str
    channel: str

    @property
    def roster(self) -> list[str]:
        """The KEYS of every roster script: members, pver, channel."""
        return [self.members, self.pver, self.channel]


def room_keys(room: str) -> RoomKeys:
    tag = f"{_ROOM_PREFIX}{room}}}"
    return RoomKeys(
        seq=f"{tag}:seq",
        log=f"{tag}:log",
        refs=f"{tag}:refs",
        refz=f"{tag}:refz",
        epoch=f"{tag}:epoch",
        members=f"{tag}:members",
        pver=f"{tag}:pver",
        channel=f"{tag}:ch",
    )


def room_channel(room: str) -> str:
    """room_keys(room).channel alone (once per say with a store of record)."""
    return f"{_ROOM_PREFIX}{room}{_CHANNEL_SUFFIX}"


def channel_room(channel: str) -> str | None:
    """The room of a room's channel, else None."""
    if channel.startswith(_ROOM_PREFIX) and channel.endswith(_CHANNEL_SUFFIX):
        return channel[len(_ROOM_PREFIX) : -len(_CHANNEL_SUFFIX)]
    return None


def rooms_key(node: str) -> str:
    return f"wschat:node:{node}:rooms"


def probe_channel(node: str) -> str:
    return f"wschat:node:{node}"


def client_name(node: str, role: str) -> str:
    """The name of a node's connection (CLIENT SETNAME takes printable ASCII only)."""
    shown = "".join(c if "!" <= c <= "~" else "_" for c in node)
    return f"wschat:{shown}:{role}"

"""A room's members, in the order `who` pages them, and its presence changes not yet sent.

Presence is sent in batches (chat/presence.py). Between two batches a room remembers only which
names changed, not how: at the batch, a changed name that is a member is `joined`, one that is
not is `left`. Every client applies a batch as "add joined, remove left" to the list it holds
(from its welcome, or from the previous batch), which is idempotent; so a name that joined and
left (or left and came back) within one interval leaves every client with the right list,
whether the client was there before the interval or came in during it (its welcome listed the
members of that instant, and only the changed names can differ from it).

Each change is numbered, so that a client who came in during the interval can be sent only
the changes after its welcome: the earlier ones are already in it.

With several nodes, a member is a name this node holds (with its session) or one that other
nodes hold (chat/ports.py); the name is in the room while anyone holds it.

Names are shown as typed, and kept apart by their keys (chat/names.py): a name whose key a
member's name has already is that member's (`same_as`).
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Iterable, ValuesView
from typing import Generic, TypeVar

from wschat.chat.names import name_key

S = TypeVar("S")


class Room(Generic[S]):
    __slots__ = (
        "batch",
        "changed",
        "keys",
        "members",
        "names",
        "others",
        "remote_ids",
        "sent_count",
        "serial",
        "welcomed",
        "welcomed_batch",
    )

    def __init__(self) -> None:
        # This node's members and their sessions.
        self.members: dict[str, S] = {}
        # Names other nodes hold: name -> those nodes; and each one's (user, guest).
        self.others: dict[str, set[str]] = {}
        self.remote_ids: dict[str, tuple[str | None, bool]] = {}
        # Every member, sorted, for `who`: a stable order that paging by "after this name"
        # can resume in.
        self.names: list[str] = []
        # Each member's key -> its name as typed.
        self.keys: dict[str, str] = {}
        # Name -> serial number of its latest change since the previous batch.
        self.changed: dict[str, int] = {}
        self.serial = 0
        # The changes of the batch being delivered (see take_changes).
        self.batch: dict[str, int] = {}
        # Name -> the serial of the last change its welcome showed, for members welcomed
        # since the previous batch; and those of the batch being delivered.
        self.welcomed: dict[str, int] = {}
        self.welcomed_batch: dict[str, int] = {}
        # The count of the last batch sent: above the member-list limit a batch carries only
        # the count, and one that would repeat it is not sent.
        self.sent_count = 0

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: str) -> bool:
        return name in self.members or name in self.others

    @property
    def local_count(self) -> int:
        return len(self.members)

    def same_as(self, name: str) -> str | None:
        """The member whose name reads as `name` (it, or one confusable with it), or None."""
        return self.keys.get(name_key(name))

    def get(self, name: str) -> S | None:
        return self.members.get(name)

    def sessions(self) -> ValuesView[S]:
        return self.members.values()

    def add(self, name: str, session: S) -> None:
        present = name in self
        self.members[name] = session
        if not present:
            self._appeared(name)

    def remove(self, name: str) -> None:
        del self.members[name]
        if name not in self.others:
            self._vanished(name)

    def replace(self, name: str, session: S) -> None:
        """The same name on another connection (a takeover): no change anyone sees."""
        self.members[name] = session

    # Other nodes' holdings; each returns whether the room's members changed.

    def hold(self, name: str, node: str, user: str | None, guest: bool) -> bool:
        present = name in self
        self.others.setdefault(name, set()).add(node)
        self.remote_ids[name] = (user, guest)
        if not present:
            self._appeared(name)
        return not present

    def let_go(self, name: str, node: str) -> bool:
        holders = self.others.get(name)
        if holders is None or node not in holders:
            return False
        holders.discard(node)
        if holders:
            return False
        del self.others[name]
        del self.remote_ids[name]
        if name in self.members:
            return False
        self._vanished(name)
        return True

    def drop_node(self, node: str) -> bool:
        gone = [name for name, holders in self.others.items() if node in holders]
        return any([self.let_go(name, node) for name in gone])

    def reset_others(self, holdings: Iterable[tuple[str, str, str | None, bool]]) -> bool:
        """Replace what other nodes hold with `holdings` (name, node, user, guest)."""
        before = self.others
        self.others, self.remote_ids = {}, {}
        for name, node, user, guest in holdings:
            self.others.setdefault(name, set()).add(node)
            self.remote_ids[name] = (user, guest)
        members, others = self.members, self.others
        changed = False
        for name in before.keys() - others.keys():
            if name not in members:
                self._vanished(name)
                changed = True
        for name in others.keys() - before.keys():
            if name not in members:
                self._appeared(name)
                changed = True
        return changed

    def remote_identity(self, name: str) -> tuple[str | None, bool]:
        return self.remote_ids.get(name, (None, False))

    def _appeared(self, name: str) -> None:
        insort(self.names, name)
        # (Two confusable names held at once are a race between nodes that the roster ends.)
        self.keys.setdefault(name_key(name), name)
        self._changed(name)

    def _vanished(self, name: str) -> None:
        names = self.names
        del names[bisect_right(names, name) - 1]
        key = name_key(name)
        if self.keys.get(key) == name:
            del self.keys[key]
        self._changed(name)

    def _changed(self, name: str) -> None:
        self.serial += 1
        self.changed[name] = self.serial

    def page(self, after: str | None, limit: int) -> tuple[list[str], str | None]:
        """Up to `limit` names after `after`; the cursor of the next page, or None at the end.
        A name that joins or leaves between pages moves no other name across a page boundary."""
        names = self.names
        start = 0 if after is None else bisect_right(names, after)
        page = names[start : start + limit]
        more = start + limit < len(names)
        return page, (page[-1] if more and page else None)

    def welcome(self, name: str) -> None:
        """`name`'s welcome is going out: it shows every change so far."""
        self.welcomed[name] = self.serial

    def take_changes(self) -> tuple[list[str], list[str]]:
        """The batch since the previous one: (joined, left), each sorted."""
        changed, self.changed = self.changed, {}
        self.batch = changed
        self.welcomed_batch, self.welcomed = self.welcomed, {}
        joined = sorted(n for n in changed if n in self)
        left = sorted(n for n in changed if n not in self)
        return joined, left

    def newcomers(self, joined: list[str]) -> set[str]:
        """Members who came in during the interval of the batch being delivered."""
        return {n for n in joined if n in self.members} | self.welcomed_batch.keys()

    def since_join(
        self, name: str, joined: list[str], left: list[str]
    ) -> tuple[list[str], list[str]]:
        """The part of the batch being delivered that `name`, who came in during its interval,
        has not seen in its welcome: the changes numbered after it (after its own join, if
        the welcome is still on its way)."""
        batch = self.batch
        seen = self.welcomed_batch.get(name)
        if seen is None:
            seen = batch[name]
        return [n for n in joined if batch[n] > seen], [n for n in left if batch[n] > seen]

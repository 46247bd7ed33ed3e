"""A room's members, in the order `who` pages them, and its presence changes not yet sent.

Presence is sent in batches (see Hub). Between two batches a room remembers only which names
changed, not how: at the batch, a changed name that is a member is `joined`, one that is not
is `left`. Every client applies a batch as "add joined, remove left" to the list it holds (from
its welcome, or from the previous batch), which is idempotent; so a name that joined and left
(or left and came back) within one interval leaves every client with the right list, whether
the client was there before the interval or came in during it (its welcome listed the members
of that instant, and only the changed names can differ from it).

Each change is numbered, so that a client who came in during the interval can be sent only
the changes after its own join: the earlier ones are already in its welcome.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import ValuesView
from typing import Generic, TypeVar

S = TypeVar("S")


class Room(Generic[S]):
    __slots__ = ("batch", "changed", "members", "names", "sent_count", "serial")

    def __init__(self) -> None:
        self.members: dict[str, S] = {}
        # Sorted, for `who`: a stable order that paging by "after this name" can resume in.
        self.names: list[str] = []
        # Name -> serial number of its latest change since the previous batch.
        self.changed: dict[str, int] = {}
        self.serial = 0
        # The changes of the batch being delivered (see take_changes).
        self.batch: dict[str, int] = {}
        # The count of the last batch sent: above the member-list limit a batch carries only
        # the count, and one that would repeat it is not sent.
        self.sent_count = 0

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, name: str) -> bool:
        return name in self.members

    def get(self, name: str) -> S | None:
        return self.members.get(name)

    def sessions(self) -> ValuesView[S]:
        return self.members.values()

    def add(self, name: str, session: S) -> None:
        self.members[name] = session
        insort(self.names, name)
        self._changed(name)

    def remove(self, name: str) -> None:
        del self.members[name]
        names = self.names
        del names[bisect_right(names, name) - 1]
        self._changed(name)

    def _changed(self, name: str) -> None:
        self.serial += 1
        self.changed[name] = self.serial

    def replace(self, name: str, session: S) -> None:
        """The same name on another connection (a takeover): no change anyone sees."""
        self.members[name] = session

    def page(self, after: str | None, limit: int) -> tuple[list[str], str | None]:
        """Up to `limit` names after `after`; the cursor of the next page, or None at the end.
        A name that joins or leaves between pages moves no other name across a page boundary."""
        names = self.names
        start = 0 if after is None else bisect_right(names, after)
        page = names[start : start + limit]
        more = start + limit < len(names)
        return page, (page[-1] if more and page else None)

    def take_changes(self) -> tuple[list[str], list[str]]:
        """The batch since the previous one: (joined, left), each sorted."""
        changed, self.changed = self.changed, {}
        self.batch = changed
        members = self.members
        joined = sorted(n for n in changed if n in members)
        left = sorted(n for n in changed if n not in members)
        return joined, left

    def since_join(
        self, name: str, joined: list[str], left: list[str]
    ) -> tuple[list[str], list[str]]:
        """The part of the batch being delivered that `name`, who joined during its interval,
        has not seen in its welcome: the changes numbered after its own join."""
        batch = self.batch
        own = batch[name]
        return [n for n in joined if batch[n] > own], [n for n in left if batch[n] > own]

"""The per-room sequencer of a node on Redis: id order, once each, own messages after their ack."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wschat.chat.model import Message
from wschat.chat.sequence import Gap, Sequencer


def msg(i: int) -> Message:
    return Message("lobby", i, "n", f"m{i}", "t")


def ids(messages: list[Message]) -> list[int]:
    return [m.id for m in messages]


def test_the_channel_in_order_is_delivered_as_it_comes() -> None:
    """Consecutive ids from the channel go straight through; repeats are dropped."""
    seq = Sequencer(4)
    assert seq.channel(msg(5), own=False) == ([msg(5)], None)
    assert seq.channel(msg(6), own=False) == ([msg(6)], None)
    assert seq.channel(msg(6), own=False) == ([], None)
    assert seq.channel(msg(3), own=False) == ([], None)


def test_an_own_message_waits_for_its_ack_and_so_do_later_ones() -> None:
    """Our own message seen on the channel first is held until its local offer (after the
    ack), and everything after it waits behind it; the local copy is not delivered twice."""
    seq = Sequencer(0)
    assert seq.channel(msg(1), own=True) == ([], None)
    assert seq.channel(msg(2), own=False) == ([], None)
    assert ids(seq.local(msg(1))) == [1, 2]
    assert seq.local(msg(1)) == []


def test_a_local_offer_first_is_not_repeated_by_the_channel() -> None:
    """The usual order on a quiet channel: ack, local offer, then the channel's copy (dropped)."""
    seq = Sequencer(0)
    assert ids(seq.local(msg(1))) == [1]
    assert seq.channel(msg(1), own=True) == ([], None)
    assert ids(seq.channel(msg(2), own=False)[0]) == [2]


def test_a_local_offer_ahead_of_the_channel_waits_for_the_ids_before_it() -> None:
    """Our message 3 acked while 2 (another node's) is still on its way: 3 waits for 2."""
    seq = Sequencer(1)
    assert seq.local(msg(3)) == []
    assert ids(seq.channel(msg(2), own=False)[0]) == [2, 3]


def test_release_gives_up_waiting_for_an_ack() -> None:
    """If the ack never comes (the store's answer was lost), release delivers the message."""
    seq = Sequencer(0)
    seq.channel(msg(1), own=True)
    assert ids(seq.release(1)) == [1]


def test_an_id_the_channel_skipped_is_a_gap_filled_from_the_store() -> None:
    """The channel jumps from 2 to 5: 3-4 are a gap; once read from the store, 3, 4, 5 go out
    in order."""
    seq = Sequencer(2)
    ready, gap = seq.channel(msg(5), own=False)
    assert (ready, gap) == ([], Gap(3, 4))
    assert seq.fill(3, 4, [msg(3), msg(4)]) == ([msg(3), msg(4), msg(5)], False)
    assert seq.last == 5


def test_a_gap_the_store_no_longer_has_is_lost_and_skipped() -> None:
    """Ids trimmed before the node read them are reported lost (the members resync), and
    what comes after them is delivered."""
    seq = Sequencer(2)
    seq.channel(msg(6), own=False)
    ready, lost = seq.fill(3, 5, [msg(5)])
    assert lost
    assert ids(ready) == [6]


def test_reset_counts_from_a_new_last_id() -> None:
    """After the store lost the room, ids start again from its current last one."""
    seq = Sequencer(40)
    seq.channel(msg(45), own=False)
    seq.reset(0)
    assert ids(seq.channel(msg(1), own=False)[0]) == [1]


@settings(max_examples=200, deadline=None)
@given(
    order=st.permutations(list(range(1, 13))),
    own=st.sets(st.integers(1, 12)),
    lost_channel=st.sets(st.integers(1, 12), max_size=3),
)
def test_any_arrival_order_delivers_every_id_once_in_order(
    order: list[int], own: set[int], lost_channel: set[int]
) -> None:
    """Whatever order local offers arrive in, with some channel copies missed (filled from
    the store): every id is delivered once, in order, and an own message never before its
    local offer unless released or read from the store (whose entries do not say which node
    stored them)."""
    seq = Sequencer(0)
    delivered: list[int] = []
    offered: set[int] = set()
    filled: set[int] = set()
    # The channel carries ids in order (minus the ones lost); local offers of own ids come
    # interleaved in `order`'s order.
    channel = [i for i in range(1, 13) if i not in lost_channel]
    locals_ = [i for i in order if i in own]
    while channel or locals_:
        if locals_ and (not channel or len(locals_) % 2):
            i = locals_.pop(0)
            offered.add(i)
            out = seq.local(msg(i))
        else:
            i = channel.pop(0)
            out, gap = seq.channel(msg(i), own=i in own)
            if gap is not None:
                more, lost = seq.fill(
                    gap.first, gap.last, [msg(j) for j in range(gap.first, gap.last + 1)]
                )
                assert not lost
                filled.update(range(gap.first, gap.last + 1))
                out += more
        for m in out:
            assert m.id not in own or m.id in offered or m.id in filled
        delivered += ids(out)
    # A lost tail is found when the subscription comes back: the broker reads up to the
    # store's last id.
    if seq.last < 12:
        more, lost = seq.fill(seq.last + 1, 12, [msg(j) for j in range(seq.last + 1, 13)])
        assert not lost
        delivered += ids(more)
    for i in range(1, 13):
        delivered += ids(seq.release(i))
    assert delivered == list(range(1, 13))


def test_a_hole_is_what_is_missing_below_the_newest_waiting_id() -> None:
    """Our 7 acked while 4 and 6 never came: the hole is 4-6 (5 came); none once filled."""
    seq = Sequencer(3)
    assert seq.hole() is None
    seq.local(msg(7))
    seq.channel(msg(5), own=False)
    assert seq.hole() == Gap(4, 6)
    assert ids(seq.fill(4, 6, [msg(4), msg(6)])[0]) == [4, 5, 6, 7]
    assert seq.hole() is None


def test_an_own_message_held_for_its_ack_is_no_hole() -> None:
    """An own message seen on the channel and waiting for its local offer is not missing;
    what is missing after it is."""
    seq = Sequencer(0)
    seq.channel(msg(1), own=True)
    seq.channel(msg(2), own=False)
    assert seq.hole() is None
    seq.local(msg(5))
    assert seq.hole() == Gap(3, 4)

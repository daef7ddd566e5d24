"""``EventLog``: the events a fan-out pump still owes some clients, by index."""

from __future__ import annotations

from broadcast.fanout import EventLog


def test_positions_get_exactly_what_they_are_owed_across_additions_and_trims() -> None:
    log: EventLog[str] = EventLog()
    assert log.head == 0
    log.add(5, ["e5", "e6"])  # the first events may have any index (the log starts there)
    assert (log.start, log.head) == (5, 7)
    early = 5  # a client owed everything
    late = 7  # a client that joined after e6
    assert log.since(early) == ["e5", "e6"]
    assert log.since(late) == []
    early = log.head
    log.add(log.head, ["e7"])  # an event arriving during a pass joins it
    assert log.since(early) == ["e7"]
    assert log.since(late) == ["e7"]
    log.trim(min(early, late))  # everyone is past e6
    assert (log.start, log.items) == (7, ["e7"])
    log.trim(log.head)
    assert (log.start, log.items, log.head) == (8, [], 8)
    log.add(8, ["e8"])
    assert log.since(8) == ["e8"]


def test_trimming_never_goes_past_the_head_or_backwards() -> None:
    log: EventLog[int] = EventLog()
    log.add(0, [0, 1, 2])
    log.trim(10)
    assert (log.start, log.head) == (3, 3)
    log.trim(1)
    assert (log.start, log.head) == (3, 3)

"""Event ids (``<epoch>:<offset>``): one pure parser for every id a client hands back, so no
text, however long or strange, reaches ``int()`` unchecked (issue 11, part 3)."""

from __future__ import annotations

import pytest

from broadcast.events import EPOCH_LENGTH, Event, EventId, new_epoch, parse_event_id
from broadcast.replay import Missed


def test_an_id_is_its_epoch_and_offset() -> None:
    assert parse_event_id("k3x9q2ab:42") == EventId("k3x9q2ab", 42)
    assert str(EventId("k3x9q2ab", 42)) == "k3x9q2ab:42"
    assert parse_event_id("k3x9q2ab:0") == EventId("k3x9q2ab", 0)
    assert parse_event_id("a:9999999999999999") == EventId("a", 9_999_999_999_999_999)


def test_epochs_are_fresh_and_well_formed() -> None:
    epochs = {new_epoch() for _ in range(1000)}
    assert len(epochs) == 1000
    for epoch in epochs:
        assert len(epoch) == EPOCH_LENGTH
        assert parse_event_id(f"{epoch}:1") == EventId(epoch, 1)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\n",
        "\t",
        ":",
        "42",  # a bare counter, as before epochs
        "9" * 4301,  # int() would refuse it: "Exceeds the limit (4300 digits)"
        "9" * 100_000,
        "k3x9q2ab:" + "9" * 4301,
        "k3x9q2ab:" + "9" * 17,  # beyond any offset a stream reaches
        "x" * 10_000,
        "k3x9q2ab:-1",
        "k3x9q2ab:+1",
        "k3x9q2ab:01",  # not canonical: two texts would name one position
        "k3x9q2ab:1_0",  # int() takes it
        "k3x9q2ab: 1",
        "k3x9q2ab:1 ",
        " k3x9q2ab:1",
        "k3x9q2ab:1\n",  # a `$` regex would take it
        "k3x9q2ab:1\r",
        "k3x9q2ab:\n1",
        "k3x9q2ab:1.0",
        "k3x9q2ab:1e3",
        "k3x9q2ab:0x10",
        "k3x9q2ab:\u0661\u0662\u0663",  # Arabic-Indic digits: str.isdigit() and int() take them
        "k3x9q2ab:\uff11\uff12\uff13",  # fullwidth digits
        "k3x9q2ab:\u00b2",  # isdigit() but not int()
        "\uff4b3x9q2ab:1",
        "K3X9Q2AB:1",
        "k3x9q2ab:1:2",
        ":1",
        "k3x9q2ab:",
        "k3x9-q2ab:1",
        "a" * 17 + ":1",  # an epoch longer than any we make
        "k3x9q2ab\x00:1",
        "k3x9q2ab:1\x00",
        "null",
        "NaN",
        "-0",
    ],
)
def test_anything_else_is_no_id(text: str) -> None:
    assert parse_event_id(text) is None


def test_live_events_count_as_replayed_only_within_the_replayed_epoch() -> None:
    missed = Missed(None, [], EventId("aaaa", 5))
    assert missed.is_replayed(Event("x", 1, "aaaa:5"))
    assert missed.is_replayed(Event("x", 1, "aaaa:1"))
    assert not missed.is_replayed(Event("x", 1, "aaaa:6"))
    assert not missed.is_replayed(Event("x", 1, "bbbb:1")), "a new epoch began meanwhile"
    assert not missed.is_replayed(Event("x", 1, "9" * 5000))
    assert not missed.is_replayed(Event("x", 1))
    assert not Missed(None, [], None).is_replayed(Event("x", 1, "aaaa:1"))

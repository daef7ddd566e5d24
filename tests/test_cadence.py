"""The fan-out's cadence (``cadence.py``): short slices just after published events came, the
usual ``SLICE`` otherwise; the events the server makes itself (counts) never shorten them."""

from __future__ import annotations

from broadcast.cadence import EAGER_SECONDS, Cadence
from broadcast.events import CHANNEL_COUNT, USER_COUNT, Event

PUBLISHED = Event("news", {"n": 1}, "k3x9q2ab:42", "post:1")
COUNTS = [Event(USER_COUNT, 3), Event(CHANNEL_COUNT, {"channel": "a", "count": 1}, None, "a")]


def test_the_usual_slices_until_published_events_come() -> None:
    cadence = Cadence()
    assert not cadence.eager(100.0)


def test_short_slices_for_a_while_after_published_events_came() -> None:
    cadence = Cadence()
    cadence.came(100.0, [*COUNTS, PUBLISHED])
    assert cadence.eager(100.0)
    assert cadence.eager(100.0 + EAGER_SECONDS * 0.9)
    assert not cadence.eager(100.0 + EAGER_SECONDS * 1.1)


def test_counts_alone_never_shorten_the_slices() -> None:
    cadence = Cadence()
    cadence.came(100.0, COUNTS)
    assert not cadence.eager(100.0)


def test_publishes_one_after_another_keep_the_slices_short() -> None:
    cadence = Cadence()
    now = 100.0
    for _ in range(10):
        cadence.came(now, [PUBLISHED])
        now += EAGER_SECONDS * 0.5
        assert cadence.eager(now)
    assert not cadence.eager(now + EAGER_SECONDS)

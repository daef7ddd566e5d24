"""The fan-out's cadence (``cadence.py``): short slices just after events came, long ones
otherwise."""

from __future__ import annotations

from broadcast.cadence import BREATH_SECONDS, EAGER_BREATH_SECONDS, EAGER_SECONDS, Cadence


def test_long_slices_until_events_come() -> None:
    cadence = Cadence()
    assert cadence.breath(100.0) == BREATH_SECONDS


def test_short_slices_for_a_while_after_events_came() -> None:
    cadence = Cadence()
    cadence.came(100.0)
    assert cadence.breath(100.0) == EAGER_BREATH_SECONDS
    assert cadence.breath(100.0 + EAGER_SECONDS * 0.9) == EAGER_BREATH_SECONDS
    assert cadence.breath(100.0 + EAGER_SECONDS * 1.1) == BREATH_SECONDS


def test_events_coming_one_after_another_keep_the_slices_short() -> None:
    cadence = Cadence()
    now = 100.0
    for _ in range(10):
        cadence.came(now)
        now += EAGER_SECONDS * 0.5
        assert cadence.breath(now) == EAGER_BREATH_SECONDS
    assert cadence.breath(now + EAGER_SECONDS) == BREATH_SECONDS


def test_short_slices_are_shorter() -> None:
    assert EAGER_BREATH_SECONDS < BREATH_SECONDS

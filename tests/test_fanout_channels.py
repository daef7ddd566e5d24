"""The fan-out pass with channels, as a unit (the pump below the transports, with recipients that
record what they are handed): each client gets exactly the events of its channels and those to
everyone, once, in order, also when events arrive during a pass; a channel's event visits only
its members."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

from broadcast.broker import Hub, Overflow
from broadcast.broker.hub import ALL
from broadcast.events import Event
from broadcast.fanout import ChannelMembers, Pump, Span
from broadcast.metrics import Metrics

pytestmark = pytest.mark.timeout(30)


@dataclass(eq=False)
class Recipient:
    channels: dict[str, None]
    position: int = 0
    got: list[Event] = field(default_factory=list)
    gone: bool = False


class Setup:
    def __init__(self, recipients: list[Recipient]) -> None:
        self.hub = Hub(listening=["global"])
        self.subscriber = self.hub.subscribe(ALL, 100_000, Overflow.DROP_OLDEST)
        self.recipients = recipients
        self.members: ChannelMembers[Recipient] = ChannelMembers()
        for recipient in recipients:
            for channel in recipient.channels:
                self.members.join(recipient, channel)
                self.hub.listening.add(f"channel:{channel}")
        self.everyone_asked = 0
        self.visited = 0
        self.during_pass: list[tuple[str | None, Event]] = []
        metrics = Metrics()
        self.pump = Pump(
            self.subscriber,
            self.everyone,
            self.members,
            self.deliver,
            prepare=lambda event: None,
            delivered=metrics.delivered.labels("test"),
            fanout_seconds=metrics.fanout_seconds.labels("test"),
        )

    def everyone(self) -> Iterable[Recipient]:
        self.everyone_asked += 1
        return self.recipients

    def deliver(self, recipient: Recipient, span: Span) -> int:
        self.visited += 1
        recipient.got.extend(span.events)
        # Events published while the pass goes on (the pump breathes between clients).
        if self.during_pass:
            self.publish(*self.during_pass.pop(0))
        return len(span.events)

    def publish(self, channel: str | None, event: Event) -> None:
        topic = "global" if channel is None else f"channel:{channel}"
        self.hub.dispatch(topic, event)

    async def settle(self, predicate: object) -> None:
        task = asyncio.create_task(self.pump.run())
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while not predicate():  # type: ignore[operator]
                assert asyncio.get_running_loop().time() < deadline, "the pump did not settle"
                await asyncio.sleep(0.001)
        finally:
            task.cancel()


def event(number: int, channel: str | None) -> Event:
    return Event("e", number, f"x:{number}", channel)


async def test_each_client_gets_its_channels_and_everyones_once_in_order() -> None:
    rng = random.Random(7)
    channels = [f"c{k}" for k in range(6)]
    recipients = [
        Recipient(dict.fromkeys(rng.sample(channels, rng.randint(0, 3)))) for _ in range(300)
    ]
    setup = Setup(recipients)
    published = []
    for number in range(40):
        channel = rng.choice([None, *channels])
        published.append(event(number, channel))
    # Half go in at once, the others one by one as the first pass visits clients.
    for e in published[:20]:
        setup.publish(e.channel, e)
    setup.during_pass = [(e.channel, e) for e in published[20:]]

    def owed(r: Recipient) -> list[Event]:
        return [e for e in published if e.channel is None or e.channel in r.channels]

    await setup.settle(lambda: all(r.got == owed(r) for r in recipients) and not setup.during_pass)
    for recipient in recipients:
        assert recipient.got == owed(recipient), "exactly its events, once, in order"


async def test_a_channels_event_visits_only_its_members() -> None:
    crowd = [Recipient({}) for _ in range(10_000)]
    few = [Recipient({"small": None}) for _ in range(10)]
    setup = Setup(crowd + few)
    setup.publish("small", event(1, "small"))
    await setup.settle(lambda: all(r.got for r in few))
    assert setup.visited == 10
    assert setup.everyone_asked == 0, "the crowd is never walked"
    assert not any(r.got for r in crowd)


async def test_a_client_that_missed_passes_gets_only_what_is_new() -> None:
    a = Recipient({"a": None})
    b = Recipient({"b": None})
    setup = Setup([a, b])
    setup.publish("a", event(1, "a"))
    await setup.settle(lambda: len(a.got) == 1)
    for number in range(2, 6):  # b is visited, a is not (its position stays behind)
        setup.publish("b", event(number, "b"))
        await setup.settle(lambda number=number: len(b.got) == number - 1)
    setup.publish(None, event(6, None))
    await setup.settle(lambda: len(a.got) == 2 and len(b.got) == 5)
    assert [e.data for e in a.got] == [1, 6]
    assert [e.data for e in b.got] == [2, 3, 4, 5, 6]


def test_the_pass_index_cuts_each_clients_events_from_its_position() -> None:
    """One index for a pass serves clients at any position (checked against a plain filter),
    and events that join the pass are taken in."""
    from broadcast.fanout import EventLog, _Index

    rng = random.Random(11)
    channels = [f"c{k}" for k in range(8)]
    log: EventLog[Event] = EventLog()
    published = [event(n, rng.choice([None, *channels])) for n in range(300)]
    log.add(1000, published[:200])
    index = _Index(log)
    assert index.extend() == 1200
    log.add(1200, published[200:])  # joined mid-pass
    assert index.extend() == 1300
    for _ in range(500):
        mine = frozenset(rng.sample(channels, rng.randint(0, 3)))
        position = rng.randrange(1000, 1300)
        expected = [
            e for e in published[position - 1000 :] if e.channel is None or e.channel in mine
        ]
        owed = index.owed(mine, position)
        assert owed == {e.channel for e in expected if e.channel is not None}
        assert index.events_of(owed, position) == expected

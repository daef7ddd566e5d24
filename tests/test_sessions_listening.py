"""When this node stops receiving a channel's events (``Sessions``, over the real in-process
broker): once its last local subscriber is gone, and also when a subscription never came after
the channel was listened to for it (its request failed), but never while one is on its way."""

from __future__ import annotations

import pytest

from broadcast.broker import Broker
from broadcast.broker.memory import MemoryBackend, MemoryPresence
from broadcast.channel_presence import ChannelPresence
from broadcast.channels import ChannelPolicy
from broadcast.identity import Identity
from broadcast.presence import Presence
from broadcast.session import Client, Sessions
from tests.support import until

pytestmark = pytest.mark.timeout(20)


def sessions() -> Sessions:
    broker = Broker(MemoryBackend())
    presence_backend = MemoryPresence()
    made = Sessions(
        broker,
        Presence(broker, presence_backend, 0),
        Identity(None, False),
        1 << 20,
        ChannelPresence(broker, presence_backend, 0),
        ChannelPolicy(["private:*"], 100),
    )
    made.unlisten_after = 0.05
    made.listen_grace = 0.3
    return made


def listening(made: Sessions, channel: str) -> bool:
    return f"channel:{channel}" in made.broker.hub.listening


async def test_a_listen_whose_subscription_never_came_is_let_go() -> None:
    made = sessions()
    await made.listen(["orphan"])
    assert listening(made, "orphan")
    await until(lambda: not listening(made, "orphan"), 5, "the orphan channel let go")


async def test_a_slow_subscription_within_the_grace_keeps_its_channel() -> None:
    made = sessions()
    made.listen_grace = 5
    checks = 0
    check = made._unlisten_idle

    def counted() -> None:
        nonlocal checks
        checks += 1
        check()

    made._unlisten_idle = counted  # type: ignore[method-assign]
    client = Client("sse", "127.0.0.1", None, None, 0)
    await made.listen(["slow"])
    await until(lambda: checks >= 3, 5, "three checks for channels to let go")
    assert listening(made, "slow"), "within the grace: kept"
    made.join(client)
    made.add_channels(client, ["slow"])
    made.listen_grace = 0
    await made.listen(["other"])  # its release shows a check has run since
    await until(lambda: not listening(made, "other"), 5, "the other channel let go")
    assert listening(made, "slow"), "subscribed: kept past the grace"
    made.leave(client)
    await until(lambda: not listening(made, "slow"), 5, "let go after its last subscriber")

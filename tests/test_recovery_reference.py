"""The recovery tests' own harness against socket.io's server (4.8, ``connectionStateRecovery``):
the Node client driver, the flows of ``tests/recovery_support.py`` and the TCP proxy see what
they expect of our server on the official stack, so a failure against ours is ours."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.node_sio import NodeSio, node_sio
from tests.recovery_support import (
    CHANNEL,
    FORGED_PID,
    Reference,
    assert_recovered,
    connected_with_one_event,
    cut,
    eventually,
    forge,
    kept_sessions,
    publish_meanwhile,
    recovers_after_a_dropped_link,
    recovers_after_engine_close,
    recovers_with_automatic_reconnection,
    refused_after,
    refused_after_a_deliberate_disconnect,
    running_reference,
    subscribers,
)
from tests.tcp_proxy import tcp_proxy

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def reference(artifacts: Path) -> Iterator[Reference]:
    with running_reference(artifacts) as server:
        yield server


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_reference_recovers_after_engine_close(reference: Reference, transport: str) -> None:
    await recovers_after_engine_close(reference.url, transport)


async def test_reference_recovers_with_automatic_reconnection(reference: Reference) -> None:
    await recovers_with_automatic_reconnection(reference.url)


async def test_reference_recovers_after_a_dropped_link(artifacts: Path) -> None:
    # As test_recovery_links' SHORT_PINGS: short enough to find the dead link in about 2 s,
    # long enough for the recovered connection to outlive a stall of a loaded test machine.
    with running_reference(artifacts, ping_ms=(1000, 1000)) as reference:
        await recovers_after_a_dropped_link(reference.url)


async def test_reference_refuses_a_claim_while_the_old_socket_lives(reference: Reference) -> None:
    """A divergence, on purpose: Node keeps a session only once it noticed the close, so a
    client that notices a dead link first gets a fresh session; ours takes the live one over
    (test_recovery_links.py)."""
    async with tcp_proxy(reference.url) as proxy:
        options = {"auth": {"channels": [CHANNEL]}, "reconnection": False}
        async with node_sio(proxy.url, transports=["websocket"], **options) as client:
            first, _ = await connected_with_one_event(client, reference.url)
            mark = client.mark()
            proxy.drop_client_side()
            await client.disconnection(mark)
            assert await subscribers(reference.url) == 1, "the server has not noticed"
            await client.command("connect")
            again = await client.connection(mark)
            assert again["recovered"] is False
            assert again["id"] != first["id"]


async def test_reference_refuses_after_a_deliberate_disconnect(reference: Reference) -> None:
    await refused_after_a_deliberate_disconnect(reference.url)


async def test_reference_refuses_a_forged_pid(reference: Reference) -> None:
    async def forged(client: NodeSio) -> None:
        await forge(client, pid=FORGED_PID)

    await refused_after(reference.url, forged)


async def test_reference_refuses_a_malformed_offset(reference: Reference) -> None:
    async def malformed(client: NodeSio) -> None:
        await forge(client, offset="not-an-offset")

    await refused_after(reference.url, malformed)


async def test_reference_refuses_after_the_window(artifacts: Path) -> None:
    with running_reference(artifacts, window_ms=1000) as reference:

        async def expired(client: NodeSio) -> None:
            async def gone() -> bool:
                return await kept_sessions(reference.url) == 0

            await eventually(gone, "the session to expire")

        await refused_after(reference.url, expired)


async def test_reference_keeps_one_session_per_cut(reference: Reference) -> None:
    """A session is kept once (the gauge the tests read says 1), and taken by the recovery."""
    options = {"auth": {"channels": [CHANNEL]}, "reconnection": False}
    async with node_sio(reference.url, **options) as client:
        first, _ = await connected_with_one_event(client, reference.url)
        mark = await cut(client, reference.url)
        assert await kept_sessions(reference.url) == 1
        e1, e2 = await publish_meanwhile(reference.url)
        await client.command("connect")
        await assert_recovered(client, reference.url, first, mark, [[1, e1], [2, e2]])
        await assert_no_refusal(client)


async def assert_no_refusal(client: NodeSio) -> None:
    assert not [line for line in client.lines if line["t"] == "connect_error"]

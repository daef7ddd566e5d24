"""``ReplayFilter``: the one place live events a resuming client already had are skipped, and
the pure parts of the Socket.IO packet checks (``overrides/socketio.py``)."""

from __future__ import annotations

import pytest
from socketio import packet as sio_packet

from broadcast.events import Event, EventId
from broadcast.overrides.socketio import MAX_ATTACHMENTS, packet_problem
from broadcast.replay import Missed, ReplayFilter

EPOCH = "abcdefgh"


def event(offset: int | None, epoch: str = EPOCH, name: str = "news") -> Event:
    return Event(name, {"n": offset}, None if offset is None else f"{epoch}:{offset}")


def replayed_to(offset: int) -> Missed:
    return Missed(None, [], EventId(EPOCH, offset))


def test_skips_what_the_replay_sent_then_lets_everything_through() -> None:
    replay = ReplayFilter(replayed_to(5))
    assert not replay.done
    assert replay.fresh([event(4), event(5)]) == []
    assert not replay.done, "still only events the replay sent"
    count = event(None, name="user count")  # state, no id: always new
    batch = [event(5), count, event(6), event(7)]
    assert replay.fresh(batch) == [count, event(6), event(7)][:1] + batch[2:]
    assert replay.done
    old = event(3)
    assert replay.fresh([old]) == [old], "once past the replay, nothing is filtered"


def test_events_of_another_epoch_are_never_taken_for_replayed() -> None:
    replay = ReplayFilter(replayed_to(50))
    other = event(1, epoch="zzzzzzzz")
    assert replay.fresh([other]) == [other]
    assert replay.done


def test_nothing_replayed_filters_nothing() -> None:
    replay = ReplayFilter(Missed(None, [], None))
    assert replay.done
    batch = [event(1), event(2)]
    assert replay.fresh(batch) is batch


def test_an_event_with_a_malformed_id_is_new() -> None:
    replay = ReplayFilter(replayed_to(5))
    odd = Event("news", 1, "not-an-id")
    assert replay.fresh([odd]) == [odd]


def packet(kind: int, data: object = None, attachments: int = 0) -> sio_packet.Packet:
    pkt = sio_packet.Packet(kind, data=data)
    pkt.attachment_count = attachments
    return pkt


@pytest.mark.parametrize(
    "pkt",
    [
        packet(sio_packet.CONNECT),
        packet(sio_packet.CONNECT, {"token": "x"}),
        packet(sio_packet.DISCONNECT),
        packet(sio_packet.EVENT, ["chat message", "hi"]),
        packet(sio_packet.EVENT, [7]),
        packet(sio_packet.ACK, []),
        packet(sio_packet.BINARY_EVENT, ["file", {"_placeholder": True, "num": 0}], 1),
    ],
)
def test_valid_client_packets_pass(pkt: sio_packet.Packet) -> None:
    assert packet_problem(pkt) is None


@pytest.mark.parametrize(
    ("pkt", "problem"),
    [
        (packet(sio_packet.CONNECT, "token"), "CONNECT payload not an object"),
        (packet(sio_packet.DISCONNECT, {}), "DISCONNECT with a payload"),
        (packet(sio_packet.EVENT, {}), "event payload not a non-empty array"),
        (packet(sio_packet.EVENT, []), "event payload not a non-empty array"),
        (packet(sio_packet.EVENT, [True]), "event name not a string"),
        (packet(sio_packet.EVENT, [{"a": 1}]), "event name not a string"),
        (packet(sio_packet.ACK, {"ok": True}), "ack payload not an array"),
        (packet(sio_packet.CONNECT_ERROR, {"message": "x"}), "unexpected packet type 4"),
        (packet(sio_packet.BINARY_EVENT, ["file"], 0), "binary packet with 0 attachments"),
        (
            packet(sio_packet.BINARY_EVENT, ["file"], MAX_ATTACHMENTS + 1),
            f"binary packet with {MAX_ATTACHMENTS + 1} attachments",
        ),
    ],
)
def test_invalid_client_packets_say_why(pkt: sio_packet.Packet, problem: str) -> None:
    assert packet_problem(pkt) == problem

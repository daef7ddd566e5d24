"""Why the server disconnects a client, typed: the same reasons (too slow, send timeout,
shutdown) are logged, told to the client and counted in ``broadcast_clients_evicted{reason}``,
whose label is the reason's kind, never parsed back out of the text."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Eviction(Enum):
    """Why the server disconnected a client (the ``reason`` label of the metric)."""

    TOO_SLOW = "too slow"
    SEND_TIMEOUT = "send timeout"
    SHUTDOWN = "server shutting down"


@dataclass(frozen=True)
class Evicted:
    """An eviction: its kind, and the detail told to the client and the log."""

    kind: Eviction
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.detail}" if self.detail else self.kind.value

    @classmethod
    def over_budget(cls, budget: int) -> Evicted:
        return cls(Eviction.TOO_SLOW, f"over {budget} bytes waiting to be sent")


SHUTTING_DOWN = Evicted(Eviction.SHUTDOWN)

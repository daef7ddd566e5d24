"""Per-address connection counting: one client address may hold at most so many connections
over both transports (``BROADCAST_MAX_CONNECTIONS_PER_ADDRESS``; 0 = no limit).

Behind a reverse proxy every client has the proxy's address: keep the limit off there, or set
it on the proxy.
"""

from __future__ import annotations

from collections import Counter


class AddressLimit:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()

    def allows(self, address: str) -> bool:
        """Whether ``address`` may open one more connection now."""
        return self.limit <= 0 or self._open[address] < self.limit

    def opened(self, address: str) -> None:
        self._open[address] += 1

    def closed(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]

    def refusal(self, address: str) -> str:
        return f"too many connections from {address} (at most {self.limit})"

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


class SessionAdmission:
    """Engine.IO sessions against the per-address limit, counted from their handshake on, so
    that sessions that never send a Socket.IO CONNECT are counted too. Over the limit, one
    session per address at a time is let in to be told why at its CONNECT (``connect_error``);
    any other is refused at once."""

    def __init__(self, limit: AddressLimit) -> None:
        self._limit = limit
        self._sessions: dict[str, tuple[str, bool]] = {}
        """Every open session: its address, and whether it counts against the address's limit
        (else it is refused at its CONNECT)."""
        self._refusing: set[str] = set()
        """Addresses with a session open to be told, at its CONNECT, that they are over."""

    def admit(self, session: str, address: str) -> tuple[str, bool] | None:
        """``None`` when ``session`` is let in; else why not, and whether it is refused at its
        CONNECT (true) or at once (false)."""
        if self._limit.allows(address):
            self._limit.opened(address)
            self._sessions[session] = (address, True)
            return None
        refusal = self._limit.refusal(address)
        if address in self._refusing:
            return refusal, False
        self._refusing.add(address)
        self._sessions[session] = (address, False)
        return refusal, True

    def closed(self, session: str) -> None:
        opened = self._sessions.pop(session, None)
        if opened is None:
            return
        address, counted = opened
        if counted:
            self._limit.closed(address)
        else:
            self._refusing.discard(address)

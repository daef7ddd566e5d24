"""What a client is told when the server refuses something it sent: one exception, whose text
is meant for that client (a connect error, an acknowledgement, a 4xx ``detail``)."""

from __future__ import annotations


class Refused(ValueError):
    """Input a client sent was refused; ``str()`` says why, for that client."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class NotGranted(Refused):
    """Refused because the client's token does not grant it (HTTP 403, not 400)."""

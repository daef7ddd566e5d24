"""Who a client says it is, and what it may say: usernames, chat messages, per-connection rate.

Deliberate choices: a username is optional (anonymous clients count but are never announced, so
a burst of anonymous clients stays cheap); a name is 1 to 32 letters, digits, spaces, ``_``,
``.`` or ``-`` (Unicode letters welcome), which keeps it printable and safe in any log line.
"""

from __future__ import annotations

import re
import time

from broadcast.errors import Refused

USERNAME_MAX_LENGTH = 32
_USERNAME = re.compile(r"[^\W_][\w .\-]*", re.UNICODE)


def parse_username(raw: object) -> str | None:
    """The validated username, or ``None`` for an anonymous client (no name or an empty one)."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise Refused("invalid username: it must be a string")
    if len(raw) > USERNAME_MAX_LENGTH:
        raise Refused(f"invalid username: at most {USERNAME_MAX_LENGTH} characters")
    if raw != raw.strip() or not _USERNAME.fullmatch(raw):
        raise Refused(
            "invalid username: use letters, digits, spaces, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return raw


def parse_chat_message(raw: object, max_length: int) -> str:
    """A chat message is a non-empty string of at most ``max_length`` characters."""
    if not isinstance(raw, str):
        raise Refused("a chat message must be a string")
    if not raw.strip():
        raise Refused("a chat message must not be empty")
    if len(raw) > max_length:
        raise Refused(f"a chat message must be at most {max_length} characters")
    return raw


class RateLimit:
    """A token bucket: ``burst`` messages at once, refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated = time.monotonic()

    def take(self) -> None:
        """Spend one token, or raise ``Refused`` saying when to try again."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens < 1:
            wait = (1 - self._tokens) / self.rate
            raise Refused(f"too many requests: try again in {wait:.1f} s", retry_after=wait)
        self._tokens -= 1

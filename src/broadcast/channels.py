"""Channel names, the lists clients send, private channels and the grants that open them.

Pure functions and values, no I/O: the session checks a client's channels with them at connect and
at every ``subscribe``, the publish API checks a publish's ``channel``.

Deliberate choices:

- A channel name is 1 to ``MAX_CHANNEL_LENGTH`` characters of ASCII letters, digits and
  ``_ - . : @ / = +`` (the issue's contract, and the benchmark kit's). ASCII only: a name is a
  Redis key (``channel:<name>``), a query parameter (``/events?channel=``), a path segment
  (``/channels/{name}``) and a word in log lines and metrics. These characters are printable,
  take one byte in every encoding, have no look-alikes, invisible forms or Unicode normalisation
  to disagree about, and need no escaping in Redis or logs; in a URL, ``encodeURIComponent`` /
  ``URLSearchParams`` escape the few that need it (``+ / = @ :``) and every server decodes them
  the same way. They cover the usual shapes: ``post:42``, ``user/alice@example.com``,
  ``tenant=acme.dashboard``, base64url ids.
- Private channels and grants are glob patterns (``fnmatch.fnmatchcase``: case-sensitive,
  ``*`` ``?`` ``[...]``): the same notation for the operator's ``BROADCAST_PRIVATE_CHANNELS`` and
  for the ``channels`` / ``publish`` claims a backend signs. A pattern is a name's characters plus
  ``* ? [ ]``; ``*`` matches ``/`` and ``:`` too (channel names have no hierarchy here).
- A refusal says what was wrong, but never echoes a hostile input in full: a shown value is cut to
  ``SHOWN_LENGTH`` characters.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import ClassVar

from broadcast.errors import NotGranted, Refused

MAX_CHANNEL_LENGTH = 200
NAME_CHARACTERS = frozenset(string.ascii_letters + string.digits + "_-.:@/=+")
WILDCARDS = frozenset("*?[]")
PATTERN_CHARACTERS = NAME_CHARACTERS | WILDCARDS
CHANNEL_PATTERN = r"^[A-Za-z0-9_\-.:@/=+]+$"
"""A channel name's characters, as a regular expression (the OpenAPI schema documents it)."""
_NAME = re.compile(rf"[A-Za-z0-9_\-.:@/=+]{{1,{MAX_CHANNEL_LENGTH}}}")
ALLOWED = "ASCII letters, digits and _ - . : @ / = +"

SHOWN_LENGTH = 40
"""Characters of a refused value quoted back in an error message."""


def shown(raw: str) -> str:
    """``raw`` quoted for an error message, cut short: the message stays small whatever came."""
    if len(raw) <= SHOWN_LENGTH:
        return repr(raw)
    return f"{raw[:SHOWN_LENGTH]!r}... ({len(raw)} characters)"


_JSON_TYPES = {
    type(None): "null",
    bool: "a boolean",
    int: "a number",
    str: "a string",
    float: "a number",
    list: "an array",
    dict: "an object",
}


def _type_name(raw: object) -> str:
    """What ``raw`` is, in JSON's words (clients send JSON)."""
    return _JSON_TYPES.get(type(raw), type(raw).__name__)


def _check(raw: object, what: str, allowed: frozenset[str], allowed_text: str) -> str:
    """``raw`` when it is a string of 1 to ``MAX_CHANNEL_LENGTH`` characters of ``allowed``;
    ``Refused`` saying what is wrong with it (``what``: how to call it) otherwise."""
    if not isinstance(raw, str):
        raise Refused(f"{what} must be a string, not {_type_name(raw)}")
    if not raw:
        raise Refused(f"{what} must not be empty")
    if len(raw) > MAX_CHANNEL_LENGTH:
        raise Refused(f"{what} {shown(raw)} is too long: at most {MAX_CHANNEL_LENGTH} characters")
    for position, character in enumerate(raw):
        if character not in allowed:
            raise Refused(
                f"{what} {shown(raw)}: character {character!r} at position {position} is not "
                f"allowed (use {allowed_text})"
            )
    return raw


def parse_channel(raw: object) -> str:
    """A valid channel name, or ``Refused`` saying what is wrong with ``raw``."""
    if isinstance(raw, str) and _NAME.fullmatch(raw):  # the common case, in one C call
        return raw
    return _check(raw, "channel", NAME_CHARACTERS, ALLOWED)


def parse_pattern(raw: object, what: str = "channel pattern") -> str:
    """A valid glob pattern over channel names (a name, or one with ``* ? [ ]``), or
    ``Refused``."""
    return _check(raw, what, PATTERN_CHARACTERS, f"{ALLOWED}, or * ? [ ]")


def parse_channel_list(raw: object, limit: int) -> list[str]:
    """The channels a client names (``subscribe`` / ``unsubscribe``, ``auth.channels``, a
    publish): a list of names, or one name as a string; duplicates dropped, order kept. Refused
    when it is neither, when a name is invalid (saying which), or when it names more than
    ``limit`` channels."""
    if isinstance(raw, str):
        return [parse_channel(raw)]
    if not isinstance(raw, list):
        raise Refused(
            f"channels must be an array of channel names (or one name), not {_type_name(raw)}"
        )
    names: dict[str, None] = {}  # a dict keeps the order, and drops duplicates
    for index, item in enumerate(raw):
        try:
            names[parse_channel(item)] = None
        except Refused as refused:
            raise Refused(f"channels[{index}]: {refused}") from None
        if len(names) > limit:  # refused as soon as it is known: a huge list is not all read
            raise Refused(f"too many channels: at most {limit}")
    return list(names)


def _split(entries: Iterable[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    """Names apart from patterns: a name is matched with one set lookup, each pattern through
    ``fnmatchcase`` (which compiles each distinct pattern once per process, however many grants
    carry it)."""
    unique = tuple(dict.fromkeys(entries))
    names = frozenset(entry for entry in unique if WILDCARDS.isdisjoint(entry))
    return names, tuple(entry for entry in unique if not WILDCARDS.isdisjoint(entry))


def _matches(name: str, names: frozenset[str], patterns: tuple[str, ...]) -> bool:
    return name in names or any(fnmatchcase(name, pattern) for pattern in patterns)


@dataclass(frozen=True, slots=True)
class Grant:
    """The channels a client's token grants: names, and glob patterns. ``Grant.NONE`` grants
    nothing (no token, a token without the claim, a server without a JWT secret)."""

    names: frozenset[str] = frozenset()
    patterns: tuple[str, ...] = ()

    NONE: ClassVar[Grant]

    @classmethod
    def of(cls, entries: Iterable[str]) -> Grant:
        """A grant of ``entries``, each already a valid name or pattern (``parse_pattern``)."""
        names, patterns = _split(entries)
        return cls(names, patterns) if names or patterns else cls.NONE

    @classmethod
    def from_claim(cls, raw: object, claim: str = "channels") -> Grant:
        """The grant a token's ``claim`` carries: a list of channel names or glob patterns.
        ``Refused`` saying what is wrong otherwise (the caller refuses the token). Not capped
        in size: only tokens signed with the server's secret get here."""
        if not isinstance(raw, list):
            raise Refused(
                f"claim {claim!r} must be an array of channel names or patterns, "
                f"not {_type_name(raw)}"
            )
        entries = [
            parse_pattern(entry, f"claim {claim!r}[{index}]") for index, entry in enumerate(raw)
        ]
        return cls.of(entries)

    def allows(self, name: str) -> bool:
        return _matches(name, self.names, self.patterns)


Grant.NONE = Grant()


class ChannelPolicy:
    """Which channels are private (``BROADCAST_PRIVATE_CHANNELS``) and how many one connection
    may hold (``BROADCAST_MAX_CHANNELS_PER_CONNECTION``)."""

    def __init__(self, private_patterns: Sequence[str], max_per_connection: int) -> None:
        self._names, self._patterns = _split(map(parse_pattern, private_patterns))
        self.max_per_connection = max_per_connection

    def is_private(self, name: str) -> bool:
        return _matches(name, self._names, self._patterns)

    def check_access(self, name: str, grant: Grant) -> None:
        """``NotGranted`` (a ``Refused``: HTTP 403) when ``name`` is private and ``grant`` does
        not grant it."""
        if self.is_private(name) and not grant.allows(name):
            raise NotGranted(f"channel {name!r} is private and your token does not grant it")

    def parse(self, raw: object) -> list[str]:
        """The channels of a ``subscribe`` / ``unsubscribe`` argument or ``auth.channels``."""
        return parse_channel_list(raw, self.max_per_connection)

    def subscribe(self, held: Set[str], raw: object, grant: Grant) -> list[str]:
        """The channels a client holding ``held`` asks to add with ``raw``, those it does not
        hold yet, in order; ``Refused`` (and nothing added) when the list is invalid, a channel
        is private and not granted, or the client would hold more than the maximum."""
        new = [name for name in self.parse(raw) if name not in held]
        for name in new:
            self.check_access(name, grant)
        if len(held) + len(new) > self.max_per_connection:
            raise Refused(
                f"too many channels: at most {self.max_per_connection} per connection "
                f"(you hold {len(held)} and asked for {len(new)} more)"
            )
        return new

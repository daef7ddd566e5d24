"""TEMPORARY stand-in (the grants branch brings the real module): channel names and access."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

from broadcast.errors import NotGranted, Refused

MAX_CHANNEL_LENGTH = 200
_NAME = re.compile(r"[A-Za-z0-9_\-.:@/=+]{1,200}")


def parse_channel(raw: object) -> str:
    if not isinstance(raw, str) or not _NAME.fullmatch(raw):
        raise Refused("invalid channel name")
    return raw


def parse_channel_list(raw: object, limit: int) -> list[str]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise Refused("channels must be an array of names")
    names = list(dict.fromkeys(parse_channel(item) for item in raw))
    if len(names) > limit:
        raise Refused(f"at most {limit} channels")
    return names


class Grant:
    NONE: Grant

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        self.patterns = tuple(patterns)

    def allows(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns)


Grant.NONE = Grant()


class ChannelPolicy:
    def __init__(self, private_patterns: Sequence[str], max_per_connection: int) -> None:
        self.private_patterns = tuple(private_patterns)
        self.max_per_connection = max_per_connection

    def is_private(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.private_patterns)

    def check_access(self, name: str, grant: Grant) -> None:
        if self.is_private(name) and not grant.allows(name):
            raise NotGranted(f"channel {name!r} is private and your token does not grant it")

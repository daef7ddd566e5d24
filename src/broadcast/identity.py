"""Who a client is: a name it declares, or, when a secret is configured, a signed token (JWT).

With ``BROADCAST_JWT_SECRET`` set, names come only from verified HS256 tokens (claim ``sub``;
``exp`` is required too, since an SSE token travels in a URL that proxies may log), so
nobody can speak as someone else; a declared ``username`` is refused rather than silently
ignored. ``BROADCAST_IDENTITY_REQUIRED`` then refuses anonymous clients too.

The same token carries what the client may subscribe to among private channels: the claim
``channels``, a list of channel names or glob patterns (``channels.py``). Without it, or without
a secret, a client is granted nothing (public channels need no grant). A claim of the wrong shape
refuses the whole token, as a bad ``sub`` does: a backend's mistake is told, not ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt
from pydantic import SecretStr

from broadcast.channels import Grant
from broadcast.errors import Refused
from broadcast.users import parse_username


@dataclass(frozen=True, slots=True)
class Who:
    """A verified client: its name (``None``: anonymous) and the private channels it may join."""

    username: str | None
    grant: Grant = Grant.NONE


ANONYMOUS = Who(None)


class Identity:
    def __init__(self, secret: SecretStr | None, required: bool) -> None:
        self._secret = secret.get_secret_value() if secret is not None else None
        self._required = required

    def verify(self, declared: object = None, token: object = None) -> Who:
        """Who the client is, from the name it declares or its token; ``Refused`` saying why
        not."""
        if self._secret is None:
            if token not in (None, ""):
                raise Refused("this server does not verify tokens: send a username instead")
            username = parse_username(declared)
            return ANONYMOUS if username is None else Who(username)
        if token in (None, ""):
            if declared not in (None, ""):
                raise Refused("this server takes usernames from signed tokens: send a token")
            if self._required:
                raise Refused("a signed token is required")
            return ANONYMOUS
        if not isinstance(token, str):
            raise Refused("invalid token: it must be a string")
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=["HS256"], options={"require": ["sub", "exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise Refused("invalid token: it has expired") from None
        except jwt.InvalidTokenError as exc:
            raise Refused(f"invalid token: {exc}") from None
        username = parse_username(claims["sub"])
        if "channels" not in claims:
            return Who(username)
        try:
            grant = Grant.from_claim(claims["channels"], "channels")
        except Refused as refused:
            raise Refused(f"invalid token: {refused}") from None
        return Who(username, grant)

    def username(self, declared: object = None, token: object = None) -> str | None:
        """The client's username (``None``: anonymous), or ``Refused`` saying why not."""
        return self.verify(declared, token).username

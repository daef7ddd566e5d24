"""Who a client is: a name it declares, or, when a secret is configured, a signed token (JWT).

With ``BROADCAST_JWT_SECRET`` set, names come only from verified HS256 tokens (claim ``sub``;
``exp`` is required too, since an SSE token travels in a URL that proxies may log), so
nobody can speak as someone else; a declared ``username`` is refused rather than silently
ignored. ``BROADCAST_IDENTITY_REQUIRED`` then refuses anonymous clients too.
"""

from __future__ import annotations

import jwt
from pydantic import SecretStr

from broadcast.errors import Refused
from broadcast.users import parse_username


class Identity:
    def __init__(self, secret: SecretStr | None, required: bool) -> None:
        self._secret = secret.get_secret_value() if secret is not None else None
        self._required = required

    def username(self, declared: object = None, token: object = None) -> str | None:
        """The client's username (``None``: anonymous), or ``Refused`` saying why not."""
        if self._secret is None:
            if token not in (None, ""):
                raise Refused("this server does not verify tokens: send a username instead")
            return parse_username(declared)
        if token in (None, ""):
            if declared not in (None, ""):
                raise Refused("this server takes usernames from signed tokens: send a token")
            if self._required:
                raise Refused("a signed token is required")
            return None
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
        return parse_username(claims["sub"])

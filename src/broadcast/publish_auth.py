"""Who may publish, and where: the bearer tokens of ``POST /publish``, each with its rate limit.

Two kinds of token:

- **Static** (``BROADCAST_PUBLISH_TOKEN``, several to rotate): publish anywhere, to everyone or to
  any channel. Compared in constant time with every configured token, so the time taken says
  nothing about which one is close.
- **Scoped** (only with ``BROADCAST_JWT_SECRET``): a bearer that is not a static token may be an
  HS256 JWT signed with that secret, with ``exp`` (required: such tokens end up in serverless
  functions' settings and logs) and a claim ``publish``, a list of channel names or glob patterns
  (the rules of the ``channels`` claim, ``channels.py``). It publishes only to the channels it
  matches, never to everyone: a function holding it can speak in its own channels and nowhere
  else. A client's token (no ``publish`` claim) never publishes.

Each scoped token has its own rate limit, as each static one does, keyed by its ``sub`` (so a
token reissued with the same ``sub`` shares its allowance) or, without one, by its digest. Only
tokens whose signature is valid get a bucket, so nobody without the secret can make the server
hold anything; and at most ``SCOPED_BUCKETS`` are kept, the least recently used going first (a
bucket idle for ``burst / rate`` seconds, 2 s by default, is full again anyway, so forgetting it
gives nothing away).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from logging import getLogger
from typing import Any

import jwt
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    NotAuthorizedException,
    PermissionDeniedException,
    TooManyRequestsException,
)
from pydantic import SecretStr

from broadcast.channels import Grant
from broadcast.errors import Refused
from broadcast.settings import Settings
from broadcast.users import RateLimit

logger = getLogger(__name__)

SCOPED_BUCKETS = 10_000
"""Rate limit buckets kept for scoped tokens (about 200 bytes each)."""
PUBLISH_CLAIM = "publish"
_STATE_KEY = "broadcast.publisher"


@dataclass(frozen=True, slots=True)
class Publisher:
    """Where the bearer of a token may publish: anywhere (``scope`` ``None``: a static token)
    or only to the channels ``scope`` grants."""

    scope: Grant | None = None

    def refusal(self, channel: str | None) -> str | None:
        """Why this publisher may not publish to ``channel`` (``None``: everyone), or ``None``
        when it may."""
        if self.scope is None:
            return None
        if channel is None:
            return (
                "this token may publish only to its channels (claim 'publish'), not to "
                'everyone: set "channel"'
            )
        if not self.scope.allows(channel):
            return f"this token may not publish to channel {channel!r} (claim 'publish')"
        return None


ANYWHERE = Publisher()


def _unauthorized(detail: str = "missing or invalid bearer token") -> NotAuthorizedException:
    return NotAuthorizedException(
        detail=detail, headers={"WWW-Authenticate": 'Bearer realm="publish"'}
    )


class PublishTokens:
    """The accepted bearer tokens, each with its own rate limit."""

    def __init__(
        self,
        tokens: Sequence[str],
        rate: float,
        burst: int,
        jwt_secret: SecretStr | None = None,
        scoped_buckets: int = SCOPED_BUCKETS,
    ) -> None:
        self._tokens = [token.encode() for token in tokens]
        self._limits = [RateLimit(rate, burst) for _ in tokens]
        self._secret = jwt_secret.get_secret_value() if jwt_secret is not None else None
        self._rate = rate
        self._burst = burst
        self._scoped: OrderedDict[str, RateLimit] = OrderedDict()
        self._scoped_buckets = scoped_buckets

    def check(self, authorization: str | None) -> None:
        """For the routes for backends other than publishing (``GET /channels``): a static
        token, once its rate allows; 401 or 429 otherwise, and 403 for a scoped token (it may
        publish to its channels, nothing more)."""
        if self.publisher(authorization).scope is not None:
            raise PermissionDeniedException(
                detail="a scoped token (claim 'publish') may only publish to its channels"
            )

    def publisher(self, authorization: str | None) -> Publisher:
        """The publisher a request's ``Authorization`` header names (a static token, or a
        scoped one), once its rate allows; 401, 403 or 429 otherwise."""
        scheme, _, presented = (authorization or "").partition(" ")
        candidate = presented.strip()
        if scheme.lower() != "bearer" or not candidate:
            raise _unauthorized()
        encoded = candidate.encode()
        matched = None
        # Compare with every token, so the time taken says nothing about which one is close.
        for index, token in enumerate(self._tokens):
            if hmac.compare_digest(encoded, token):
                matched = index
        if matched is not None:
            _take(self._limits[matched])
            return ANYWHERE
        if self._secret is None or candidate.count(".") != 2:
            raise _unauthorized()
        scope, key = self._verify(candidate)
        _take(self._bucket(key))
        return Publisher(scope)

    def _verify(self, token: str) -> tuple[Grant, str]:
        """The channels a scoped token grants, and the key of its rate limit."""
        assert self._secret is not None
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=["HS256"], options={"require": ["exp"]}
            )
        except jwt.ExpiredSignatureError:
            # Only a token that was valid gets here: saying so helps its holder, tells no one
            # else anything.
            raise _unauthorized("invalid bearer token: it has expired") from None
        except jwt.InvalidTokenError:
            raise _unauthorized() from None
        if PUBLISH_CLAIM not in claims:
            raise PermissionDeniedException(
                detail="this token does not grant publishing: it has no 'publish' claim"
            )
        try:
            scope = Grant.from_claim(claims[PUBLISH_CLAIM], PUBLISH_CLAIM)
        except Refused as refused:
            raise _unauthorized(f"invalid bearer token: {refused}") from None
        subject = claims.get("sub")
        if isinstance(subject, str) and subject:
            return scope, f"sub:{subject}"
        return scope, "token:" + hashlib.sha256(token.encode()).hexdigest()

    def _bucket(self, key: str) -> RateLimit:
        bucket = self._scoped.get(key)
        if bucket is None:
            bucket = self._scoped[key] = RateLimit(self._rate, self._burst)
            if len(self._scoped) > self._scoped_buckets:
                self._scoped.popitem(last=False)
        else:
            self._scoped.move_to_end(key)
        return bucket

    @property
    def scoped_buckets(self) -> int:
        """How many scoped tokens' buckets are held (for tests)."""
        return len(self._scoped)


def _take(limit: RateLimit) -> None:
    try:
        limit.take()
    except Refused as refused:
        raise TooManyRequestsException(
            detail=str(refused),
            headers={"Retry-After": str(max(1, round(refused.retry_after or 1)))},
        ) from None


def authorize(connection: ASGIConnection[Any, Any, Any, Any], tokens: PublishTokens) -> None:
    """Check a request's token (in a guard: before its body is read) and keep the publisher
    for the handler (``publisher_of``)."""
    connection.state[_STATE_KEY] = tokens.publisher(connection.headers.get("authorization"))


def publisher_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Publisher:
    publisher = connection.state.get(_STATE_KEY)
    # The guard always runs first; refuse rather than publish anywhere if it somehow did not.
    if not isinstance(publisher, Publisher):
        raise _unauthorized()
    return publisher


def publish_tokens(settings: Settings) -> PublishTokens:
    tokens = [token.get_secret_value() for token in settings.publish_token]
    if not tokens:
        tokens = [secrets.token_urlsafe(32)]
        # Logged once, here, so it works out of the box; set BROADCAST_PUBLISH_TOKEN to choose.
        logger.warning(
            "no BROADCAST_PUBLISH_TOKEN set: publish with 'Authorization: Bearer %s' "
            "(generated for this process only)",
            tokens[0],
        )
    return PublishTokens(
        tokens, settings.publish_rate_per_second, settings.publish_burst, settings.jwt_secret
    )

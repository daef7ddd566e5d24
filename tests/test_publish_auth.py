"""``publish_auth.py``: static and scoped publish tokens, where each may publish, and their rate
limit buckets (bounded, and only for validly signed tokens)."""

from __future__ import annotations

import time

import jwt
import pytest
from litestar.exceptions import (
    NotAuthorizedException,
    PermissionDeniedException,
    TooManyRequestsException,
)
from pydantic import SecretStr

from broadcast.channels import Grant
from broadcast.publish_auth import ANYWHERE, Publisher, PublishTokens

SECRET = "s3cret-for-tests-only-" + "0123456789abcdef" * 4
STATIC = "static-token-0123456789"


def scoped(claims: dict[str, object], secret: str = SECRET) -> str:
    return jwt.encode({"exp": int(time.time() + 3600), **claims}, secret, algorithm="HS256")


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_a_static_token_publishes_anywhere() -> None:
    assert ANYWHERE.refusal(None) is None
    assert ANYWHERE.refusal("private:x") is None


def test_a_scoped_publisher_publishes_only_to_its_channels() -> None:
    publisher = Publisher(Grant.from_claim(["orders:*"]))
    assert publisher.refusal("orders:42") is None
    assert publisher.refusal("news") == (
        "this token may not publish to channel 'news' (claim 'publish')"
    )
    refusal = publisher.refusal(None)
    assert refusal is not None
    assert "not to everyone" in refusal


def tokens(burst: int = 2, scoped_buckets: int = 100) -> PublishTokens:
    return PublishTokens([STATIC], 0.001, burst, SecretStr(SECRET), scoped_buckets)


def test_tokens_give_their_publisher() -> None:
    checker = tokens()
    assert checker.publisher(bearer(STATIC)) is ANYWHERE
    publisher = checker.publisher(bearer(scoped({"publish": ["orders:*"], "sub": "fn"})))
    assert publisher.scope == Grant.from_claim(["orders:*"])


@pytest.mark.parametrize(
    ("header", "error", "detail"),
    [
        (None, NotAuthorizedException, "missing or invalid bearer token"),
        ("Bearer ", NotAuthorizedException, "missing or invalid bearer token"),
        (f"Basic {STATIC}", NotAuthorizedException, "missing or invalid bearer token"),
        (bearer("a.b.c"), NotAuthorizedException, "missing or invalid bearer token"),
        (
            bearer(scoped({"publish": ["x"]}, secret="another-" + SECRET)),
            NotAuthorizedException,
            "missing or invalid bearer token",
        ),
        (
            bearer(jwt.encode({"publish": ["x"]}, SECRET, algorithm="HS256")),
            NotAuthorizedException,
            "missing or invalid bearer token",
        ),
        (
            bearer(scoped({"publish": ["x"], "exp": int(time.time() - 60)})),
            NotAuthorizedException,
            "it has expired",
        ),
        (
            bearer(scoped({"publish": "x"})),
            NotAuthorizedException,
            "claim 'publish' must be an array",
        ),
        (
            bearer(scoped({"sub": "alice", "channels": ["private:*"]})),
            PermissionDeniedException,
            "no 'publish' claim",
        ),
    ],
)
def test_bad_tokens_are_refused(header: str | None, error: type[Exception], detail: str) -> None:
    with pytest.raises(error) as raised:
        tokens().publisher(header)
    assert detail in str(raised.value)


def test_without_a_secret_a_jwt_is_just_a_wrong_token() -> None:
    checker = PublishTokens([STATIC], rate=1, burst=1)
    with pytest.raises(NotAuthorizedException, match="missing or invalid"):
        checker.publisher(bearer(scoped({"publish": ["x"]})))


def test_each_scoped_subject_has_its_own_rate_limit() -> None:
    checker = tokens()
    first = bearer(scoped({"publish": ["a"], "sub": "fn-a"}))
    reissued = bearer(scoped({"publish": ["a", "b"], "sub": "fn-a", "iat": 1}))
    other = bearer(scoped({"publish": ["a"], "sub": "fn-b"}))
    checker.publisher(first)
    checker.publisher(reissued)
    with pytest.raises(TooManyRequestsException):
        checker.publisher(first)  # the same subject: one bucket
    checker.publisher(other)
    checker.publisher(bearer(STATIC))
    checker.publisher(bearer(STATIC))
    with pytest.raises(TooManyRequestsException):
        checker.publisher(bearer(STATIC))
    assert checker.scoped_buckets == 2


def test_a_token_without_subject_is_its_own_bucket() -> None:
    checker = tokens()
    anonymous = bearer(scoped({"publish": ["a"]}))
    checker.publisher(anonymous)
    checker.publisher(anonymous)
    with pytest.raises(TooManyRequestsException):
        checker.publisher(anonymous)
    checker.publisher(bearer(scoped({"publish": ["a"], "nonce": 2})))


def test_scoped_buckets_are_bounded_least_recently_used_first() -> None:
    checker = tokens(burst=12, scoped_buckets=3)
    keep = bearer(scoped({"publish": ["a"], "sub": "keep"}))
    checker.publisher(keep)
    for n in range(10):
        checker.publisher(bearer(scoped({"publish": ["a"], "sub": f"fn-{n}"})))
        checker.publisher(keep)  # used again: never the least recently used
        assert checker.scoped_buckets <= 3
    checker.publisher(keep)
    with pytest.raises(TooManyRequestsException):
        checker.publisher(keep)  # its bucket was kept all along: 12 taken, the burst
    evicted = bearer(scoped({"publish": ["a"], "sub": "fn-0"}))
    checker.publisher(evicted)  # forgotten, so a fresh bucket


def test_refused_tokens_get_no_bucket() -> None:
    checker = tokens()
    for n in range(20):
        with pytest.raises(NotAuthorizedException):
            checker.publisher(
                bearer(scoped({"publish": ["a"], "sub": f"x{n}"}, "another-" + SECRET))
            )
    assert checker.scoped_buckets == 0


def test_routes_for_backends_take_static_tokens_only() -> None:
    checker = tokens()
    checker.check(bearer(STATIC))
    with pytest.raises(PermissionDeniedException, match="may only publish to its channels"):
        checker.check(bearer(scoped({"publish": ["*"], "sub": "fn"})))
    with pytest.raises(NotAuthorizedException):
        checker.check(bearer("wrong-token-0000000000"))

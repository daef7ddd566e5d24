"""``Identity``, ``users``, ``limits``: who a client is, what it may say, how many it may open."""

from __future__ import annotations

import time

import jwt
import pytest
from pydantic import SecretStr

from broadcast.channels import Grant
from broadcast.errors import Refused
from broadcast.identity import Identity, Who
from broadcast.limits import AddressLimit, SessionAdmission
from broadcast.users import RateLimit, parse_chat_message, parse_username

SECRET = "s3cret-for-tests-only-" + "0123456789abcdef" * 4


def token(claims: dict[str, object], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def later(seconds: float = 86_400) -> int:
    return int(time.time() + seconds)


# ---------------------------------------------------------------- usernames


@pytest.mark.parametrize("name", ["alice", "Zoë", "ali ce", "a.b-c_d", "7", "x" * 32, "名前"])
def test_valid_usernames_are_kept_as_given(name: str) -> None:
    assert parse_username(name) == name


@pytest.mark.parametrize("raw", [None, ""])
def test_no_name_is_anonymous(raw: object) -> None:
    assert parse_username(raw) is None


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (42, "must be a string"),
        (["alice"], "must be a string"),
        ("x" * 33, "at most 32 characters"),
        (" alice", "starting with a letter or digit"),
        ("alice ", "starting with a letter or digit"),
        ("_alice", "starting with a letter or digit"),
        ("a\nb", "use letters"),
        ("<script>", "use letters"),
        ("a\x00b", "use letters"),
    ],
)
def test_bad_usernames_are_refused_saying_why(raw: object, why: str) -> None:
    with pytest.raises(Refused, match=why):
        parse_username(raw)


# ---------------------------------------------------------------- chat messages


def test_a_chat_message_is_a_non_empty_string_within_the_limit() -> None:
    assert parse_chat_message("hi there", 10) == "hi there"
    assert parse_chat_message("x" * 10, 10) == "x" * 10
    for raw, why in [(None, "string"), (1, "string"), ("  \n", "empty"), ("x" * 11, "at most 10")]:
        with pytest.raises(Refused, match=why):
            parse_chat_message(raw, 10)


# ---------------------------------------------------------------- rate limit


def test_rate_limit_allows_a_burst_then_says_when_to_retry() -> None:
    limit = RateLimit(rate=1, burst=3)
    for _ in range(3):
        limit.take()
    with pytest.raises(Refused, match=r"try again in \d") as refused:
        limit.take()
    assert refused.value.retry_after is not None
    assert 0 < refused.value.retry_after <= 1


def test_rate_limit_refills_with_time() -> None:
    limit = RateLimit(rate=1000, burst=1)
    limit.take()
    deadline = time.monotonic() + 5
    while True:  # refills at 1,000 per second: within a few ms
        try:
            limit.take()
            break
        except Refused:
            assert time.monotonic() < deadline, "the bucket never refilled"


# ---------------------------------------------------------------- identity without a secret


def test_without_a_secret_names_are_declared_and_tokens_refused() -> None:
    identity = Identity(None, required=False)
    assert identity.username("alice") == "alice"
    assert identity.username() is None
    assert identity.username(None, "") is None
    with pytest.raises(Refused, match="does not verify tokens"):
        identity.username(None, token({"sub": "alice", "exp": later()}))
    with pytest.raises(Refused, match="invalid username"):
        identity.username("bad\nname")


# ---------------------------------------------------------------- identity from tokens


def verified(required: bool = False) -> Identity:
    return Identity(SecretStr(SECRET), required)


def test_a_valid_token_gives_its_subject() -> None:
    assert verified().username(None, token({"sub": "alice", "exp": later()})) == "alice"


def test_a_declared_name_is_refused_when_names_come_from_tokens() -> None:
    with pytest.raises(Refused, match="send a token"):
        verified().username("mallory")


def test_anonymous_clients_are_refused_only_when_identity_is_required() -> None:
    assert verified().username() is None
    with pytest.raises(Refused, match="token is required"):
        verified(required=True).username()


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (token({"sub": "alice", "exp": later(-3600)}), "expired"),
        (token({"sub": "alice"}), "exp"),
        (token({"exp": later()}), "sub"),
        (token({"sub": "alice", "exp": later()}, secret="another-" + SECRET), "[Ss]ignature"),
        (token({"sub": "alice", "exp": later()}, algorithm="HS512"), "alg value is not allowed"),
        ("not.a.jwt", "invalid token"),
        (12345, "must be a string"),
        (token({"sub": "bad\nname", "exp": later()}), "invalid username"),
    ],
)
def test_bad_tokens_are_refused_saying_why(bad: object, why: str) -> None:
    with pytest.raises(Refused, match=why):
        verified().username(None, bad)


def test_an_unsigned_token_is_refused() -> None:
    unsigned = jwt.encode({"sub": "alice", "exp": later()}, key=None, algorithm="none")
    with pytest.raises(Refused, match="invalid token"):
        verified().username(None, unsigned)


# ---------------------------------------------------------------- grants from tokens


def test_a_token_grants_the_channels_of_its_claim() -> None:
    who = verified().verify(
        None,
        token({"sub": "alice", "exp": later(), "channels": ["private:team-1", "user:alice/*"]}),
    )
    assert who == Who("alice", Grant.from_claim(["private:team-1", "user:alice/*"]))
    assert who.grant.allows("user:alice/inbox")
    assert not who.grant.allows("private:team-2")


def test_a_token_without_the_claim_grants_nothing() -> None:
    who = verified().verify(None, token({"sub": "alice", "exp": later()}))
    assert who == Who("alice", Grant.NONE)
    assert verified().verify(None, token({"sub": "bob", "exp": later(), "channels": []})).grant == (
        Grant.NONE
    )


def test_without_a_token_or_a_secret_nothing_is_granted() -> None:
    assert verified().verify() == Who(None, Grant.NONE)
    assert Identity(None, required=False).verify("alice") == Who("alice", Grant.NONE)
    assert Identity(None, required=False).verify() == Who(None)


@pytest.mark.parametrize(
    ("claim", "why"),
    [
        ("private:*", "invalid token: claim 'channels' must be an array"),
        ({"private:x": True}, "invalid token: claim 'channels' must be an array"),
        (None, "invalid token: claim 'channels' must be an array .* not null"),
        ([1], r"invalid token: claim 'channels'\[0\] must be a string"),
        (["ok", "no spaces"], r"invalid token: claim 'channels'\[1\] 'no spaces': character ' '"),
        (["x" * 201], "too long"),
    ],
)
def test_a_bad_channels_claim_refuses_the_token(claim: object, why: str) -> None:
    bad = token({"sub": "alice", "exp": later(), "channels": claim})
    with pytest.raises(Refused, match=why):
        verified().verify(None, bad)
    with pytest.raises(Refused, match=why):
        verified().username(None, bad)


def test_username_is_what_verify_says() -> None:
    good = token({"sub": "alice", "exp": later(), "channels": ["a"]})
    assert verified().username(None, good) == verified().verify(None, good).username == "alice"


# ---------------------------------------------------------------- Engine.IO session admission


def test_sessions_count_from_their_handshake_and_one_over_the_limit_is_told_why() -> None:
    admission = SessionAdmission(AddressLimit(2))
    assert admission.admit("s1", "10.0.0.1") is None
    assert admission.admit("s2", "10.0.0.1") is None
    over = "too many connections from 10.0.0.1 (at most 2)"
    assert admission.admit("s3", "10.0.0.1") == (over, True), "told at its CONNECT"
    assert admission.admit("s4", "10.0.0.1") == (over, False), "refused at once meanwhile"
    assert admission.admit("t1", "10.0.0.2") is None, "other addresses are not affected"
    admission.closed("s3")  # the one being told went
    assert admission.admit("s5", "10.0.0.1") == (over, True)
    admission.closed("s1")
    admission.closed("s5")
    assert admission.admit("s6", "10.0.0.1") is None, "a slot freed by a counted session"
    admission.closed("unknown")  # a session never admitted: nothing to release


def test_no_limit_admits_everyone() -> None:
    admission = SessionAdmission(AddressLimit(0))
    assert all(admission.admit(f"s{n}", "10.0.0.1") is None for n in range(100))

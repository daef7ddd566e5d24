"""``channels.py``: channel names, the lists clients send, private channels, grants; the settings
that configure them."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from broadcast.channels import (
    CHANNEL_PATTERN,
    MAX_CHANNEL_LENGTH,
    SHOWN_LENGTH,
    ChannelPolicy,
    Grant,
    parse_channel,
    parse_channel_list,
    parse_pattern,
)
from broadcast.errors import NotGranted, Refused
from broadcast.settings import Settings

# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name",
    [
        "post:42",
        "news",
        "a",
        "x" * MAX_CHANNEL_LENGTH,
        "user/alice@example.com",
        "tenant=acme.dashboard",
        "a+b-c_d.e:f@g/h=i",
        "aGVsbG8-d29ybGQ_",
        "0",
    ],
)
def test_valid_names_are_kept_as_given(name: str) -> None:
    assert parse_channel(name) == name


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (None, "must be a string, not null"),
        (42, "must be a string, not a number"),
        (["post:42"], "must be a string, not an array"),
        ({"name": "x"}, "must be a string, not an object"),
        ("", "must not be empty"),
        ("x" * (MAX_CHANNEL_LENGTH + 1), "too long: at most 200 characters"),
        ("post 42", "character ' ' at position 4 is not allowed"),
        ("post\n42", r"character '\\n' at position 4"),
        ("café", "character 'é' at position 3"),
        ("a\x00", r"character '\\x00' at position 1"),
        ("private:*", "character '\\*' at position 8"),
        ("a?", "character '\\?'"),
        ("[a]", "character '\\['"),
        ("a#b", "character '#'"),
        ("a%2Fb", "character '%'"),
        ("\uff50ost", "character '\uff50' at position 0"),  # a full-width look-alike of p
    ],
)
def test_bad_names_are_refused_saying_what_is_wrong(raw: object, why: str) -> None:
    with pytest.raises(Refused, match=why) as refused:
        parse_channel(raw)
    if "at position" in why:
        assert "use ASCII letters, digits and _ - . : @ / = +" in str(refused.value)


def test_a_huge_hostile_name_is_not_echoed_back() -> None:
    for hostile in ("A" * 10_000, "é" * 10_000, "ok" * 50 + " " + "x" * 10_000):
        with pytest.raises(Refused) as refused:
            parse_channel(hostile)
        message = str(refused.value)
        assert len(message) < 300, message
        assert f"({len(hostile)} characters)" in message


def test_a_bad_character_within_the_length_is_found_after_the_shown_part() -> None:
    name = "x" * (SHOWN_LENGTH + 10) + "!"
    with pytest.raises(Refused, match=rf"character '!' at position {SHOWN_LENGTH + 10}"):
        parse_channel(name)


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=MAX_CHANNEL_LENGTH + 5))
def test_the_documented_pattern_agrees_with_the_check(name: str) -> None:
    documented = len(name) <= MAX_CHANNEL_LENGTH and re.fullmatch(CHANNEL_PATTERN, name) is not None
    try:
        parse_channel(name)
        enforced = True
    except Refused:
        enforced = False
    assert documented == enforced, name


def test_every_ascii_character_is_either_allowed_or_refused_as_documented() -> None:
    allowed = set(string.ascii_letters + string.digits + "_-.:@/=+")
    for code in range(128):
        character = chr(code)
        if character in allowed:
            assert parse_channel(character) == character
        else:
            with pytest.raises(Refused, match="not allowed"):
                parse_channel(character)


# ---------------------------------------------------------------- lists


def test_a_list_is_deduplicated_in_order() -> None:
    assert parse_channel_list(["b", "a", "b", "c", "a"], 10) == ["b", "a", "c"]


def test_one_name_as_a_string_is_a_list_of_one() -> None:
    assert parse_channel_list("post:42", 10) == ["post:42"]


def test_an_empty_list_is_no_channels() -> None:
    assert parse_channel_list([], 10) == []


def test_the_limit_counts_distinct_names() -> None:
    assert parse_channel_list(["a"] * 1000 + ["b"], 2) == ["a", "b"]
    assert parse_channel_list(["a", "b", "c"], 3) == ["a", "b", "c"]
    with pytest.raises(Refused, match="too many channels: at most 3"):
        parse_channel_list(["a", "b", "c", "d"], 3)


def test_a_huge_list_is_refused_without_reading_it_all() -> None:
    huge = [f"c{n}" for n in range(10)] + [None] * 1_000_000
    with pytest.raises(Refused, match="too many channels: at most 5"):
        parse_channel_list(huge, 5)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (None, "must be an array of channel names \\(or one name\\), not null"),
        (42, "not a number"),
        ({"post:42": True}, "not an object"),
        (("a", "b"), "not tuple"),
        (["ok", ""], r"channels\[1\]: channel must not be empty"),
        (["ok", "ok", 7], r"channels\[2\]: channel must be a string, not a number"),
        (["a b"], r"channels\[0\]: channel 'a b': character ' ' at position 1"),
        ("", "channel must not be empty"),
        ("a b", "character ' '"),
    ],
)
def test_bad_lists_are_refused_saying_which_name(raw: object, why: str) -> None:
    with pytest.raises(Refused, match=why):
        parse_channel_list(raw, 10)


# ---------------------------------------------------------------- grants


def test_a_grant_allows_names_and_glob_patterns() -> None:
    grant = Grant.from_claim(["private:team-1", "user:alice/*", "room-?", "shard-[0-3]"])
    assert grant.allows("private:team-1")
    assert not grant.allows("private:team-10")
    assert grant.allows("user:alice/inbox")
    assert grant.allows("user:alice/a/b:c"), "* crosses / and :"
    assert not grant.allows("user:alicia/inbox")
    assert grant.allows("room-7")
    assert not grant.allows("room-77")
    assert grant.allows("shard-2")
    assert not grant.allows("shard-4")
    assert not grant.allows("PRIVATE:team-1"), "case-sensitive"


def test_nothing_is_granted_by_none_or_an_empty_claim() -> None:
    assert not Grant.NONE.allows("private:x")
    assert Grant.from_claim([]) is Grant.NONE
    assert Grant.of([]) is Grant.NONE


def test_a_grant_keeps_each_entry_once() -> None:
    grant = Grant.from_claim(["a", "a", "b*", "b*"])
    assert grant == Grant(frozenset({"a"}), ("b*",))


@pytest.mark.parametrize(
    ("claim", "why"),
    [
        (None, "claim 'channels' must be an array of channel names or patterns, not null"),
        ("private:*", "must be an array .* not a string"),
        ({"a": 1}, "not an object"),
        (["ok", 5], r"claim 'channels'\[1\] must be a string, not a number"),
        ([""], r"claim 'channels'\[0\] must not be empty"),
        (["a b"], r"claim 'channels'\[0\] 'a b': character ' ' at position 1"),
        (["[!a]"], "character '!'"),
        (["x" * 201], "too long"),
    ],
)
def test_a_bad_claim_is_refused_saying_what_is_wrong(claim: object, why: str) -> None:
    with pytest.raises(Refused, match=why):
        Grant.from_claim(claim)


def test_a_claim_is_named_in_its_refusals() -> None:
    with pytest.raises(Refused, match=r"claim 'publish'\[0\]"):
        Grant.from_claim([1], "publish")


def test_patterns_take_the_wildcards_names_do_not() -> None:
    assert parse_pattern("private:*") == "private:*"
    assert parse_pattern("a?[bc]") == "a?[bc]"
    with pytest.raises(Refused, match="not allowed"):
        parse_channel("a?[bc]")


# ---------------------------------------------------------------- the policy


def test_private_channels_need_a_grant() -> None:
    policy = ChannelPolicy(["private:*", "staff"], max_per_connection=10)
    assert policy.is_private("private:x")
    assert policy.is_private("staff")
    assert not policy.is_private("staff-room")
    assert not policy.is_private("news")
    policy.check_access("news", Grant.NONE)
    policy.check_access("private:x", Grant.from_claim(["private:x"]))
    policy.check_access("private:x", Grant.from_claim(["private:*"]))
    with pytest.raises(
        NotGranted, match="channel 'private:y' is private and your token does not grant it"
    ):
        policy.check_access("private:y", Grant.from_claim(["private:x"]))
    with pytest.raises(Refused, match="is private"):
        policy.check_access("staff", Grant.NONE)


def test_no_private_patterns_make_every_channel_public() -> None:
    policy = ChannelPolicy([], max_per_connection=10)
    assert not policy.is_private("private:x")
    policy.check_access("private:x", Grant.NONE)


def test_a_bad_private_pattern_is_refused() -> None:
    with pytest.raises(Refused, match="character ' '"):
        ChannelPolicy(["private *"], max_per_connection=10)


def test_subscribe_returns_the_new_channels_and_holds_the_maximum() -> None:
    policy = ChannelPolicy(["private:*"], max_per_connection=3)
    assert policy.subscribe(set(), ["a", "b"], Grant.NONE) == ["a", "b"]
    assert policy.subscribe({"a", "b"}, ["b", "c"], Grant.NONE) == ["c"], "held ones are not new"
    assert policy.subscribe({"a", "b", "c"}, ["a"], Grant.NONE) == [], "nothing new: fine at max"
    with pytest.raises(Refused, match=r"at most 3 per connection \(you hold 2 and asked for 2"):
        policy.subscribe({"a", "b"}, ["c", "d"], Grant.NONE)
    with pytest.raises(Refused, match="too many channels: at most 3"):
        policy.subscribe(set(), ["a", "b", "c", "d"], Grant.NONE)
    with pytest.raises(Refused, match="'private:x' is private"):
        policy.subscribe(set(), ["a", "private:x"], Grant.NONE)
    assert policy.subscribe(set(), ["private:x"], Grant.from_claim(["private:x"])) == ["private:x"]
    with pytest.raises(Refused, match=r"channels\[1\]"):
        policy.subscribe(set(), ["a", "b c"], Grant.NONE)


def test_parse_uses_the_per_connection_maximum() -> None:
    policy = ChannelPolicy([], max_per_connection=2)
    assert policy.parse("a") == ["a"]
    with pytest.raises(Refused, match="at most 2"):
        policy.parse(["a", "b", "c"])


# ---------------------------------------------------------------- settings


def test_private_channels_default_to_the_private_prefix() -> None:
    settings = Settings()
    assert settings.private_channels == ("private:*",)
    assert settings.max_channels_per_connection == 100


@pytest.mark.parametrize(
    ("value", "patterns"),
    [
        ("", ()),
        ("private:*", ("private:*",)),
        ("private:*, staff-* ,team/[0-9]", ("private:*", "staff-*", "team/[0-9]")),
        (",,", ()),
    ],
)
def test_private_channels_are_comma_separated(value: str, patterns: tuple[str, ...]) -> None:
    assert Settings(private_channels=value).private_channels == patterns  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["private *", "a,b!", "x" * 201])
def test_bad_private_patterns_are_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="channel pattern"):
        Settings(private_channels=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, 100_001])
def test_the_channel_maximum_is_bounded(value: int) -> None:
    with pytest.raises(ValidationError):
        Settings(max_channels_per_connection=value)

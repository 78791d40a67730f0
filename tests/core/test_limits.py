"""Every rule of :class:`Limits` (docs/design.md, "Bad input")."""

from __future__ import annotations

import pytest

from trio_election._errors import ElectionError, InvalidArgument
from trio_election.core import (
    DEFAULT_MAX_TTL_MS,
    MAX_NAME_BYTES,
    MAX_VALUE_BYTES,
    MIN_TTL_MS,
    Limits,
)
from trio_election.core._limits import MAX_MAX_TTL_MS


def test_constants_match_the_design():
    assert MAX_NAME_BYTES == 256
    assert MAX_VALUE_BYTES == 4096
    assert MIN_TTL_MS == 100
    assert DEFAULT_MAX_TTL_MS == 60_000
    assert MAX_MAX_TTL_MS == 24 * 3600 * 1000


def test_invalid_argument_is_an_election_error_with_field_in_message():
    error = InvalidArgument("election", "must not be empty")
    assert isinstance(error, ElectionError)
    assert error.field == "election"
    assert str(error) == "election: must not be empty"


# -- names ------------------------------------------------------------------


@pytest.mark.parametrize("field", ["election", "node_id"])
def test_empty_name_is_refused_naming_the_field(field):
    with pytest.raises(InvalidArgument) as info:
        Limits().name(field, "")
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert "empty" in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        "a" * 256,
        "é" * 128,  # 2 bytes each
        "€" * 85 + "a",  # 3 bytes each: 255 + 1
        "😀" * 64,  # 4 bytes each
        "x",
    ],
)
def test_name_of_at_most_256_utf8_bytes_is_accepted(value):
    assert len(value.encode()) <= 256
    assert Limits().name("election", value) == value


@pytest.mark.parametrize(
    "value",
    [
        "a" * 257,
        "é" * 128 + "a",  # 257 bytes, 129 characters
        "€" * 86,  # 258 bytes, 86 characters
        "😀" * 64 + "a",  # 257 bytes, 65 characters
    ],
)
def test_name_over_256_utf8_bytes_is_refused_naming_the_limit(value):
    size = len(value.encode())
    assert size > 256
    with pytest.raises(InvalidArgument) as info:
        Limits().name("node_id", value)
    assert info.value.field == "node_id"
    message = str(info.value)
    assert "256" in message
    assert f"{size} bytes" in message


def test_name_length_counts_bytes_not_characters():
    # 129 characters is fine in ASCII but not in two-byte UTF-8
    Limits().name("election", "a" * 200)
    with pytest.raises(InvalidArgument):
        Limits().name("election", "é" * 129)


def test_name_with_lone_surrogate_is_measured_without_crashing():
    # A lone surrogate cannot come from the proto (strings are valid UTF-8), but
    # checking must not raise UnicodeEncodeError.
    assert Limits().name("election", "a\ud800") == "a\ud800"
    with pytest.raises(InvalidArgument):
        Limits().name("election", "\ud800" * 86)  # 3 bytes each: 258


@pytest.mark.parametrize(
    "char",
    ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9f"],
)
@pytest.mark.parametrize("field", ["election", "node_id"])
def test_control_character_in_name_is_refused(field, char):
    with pytest.raises(InvalidArgument) as info:
        Limits().name(field, f"ab{char}cd")
    assert info.value.field == field
    message = str(info.value)
    assert "control character" in message
    assert f"U+{ord(char):04X}" in message
    assert "position 2" in message


@pytest.mark.parametrize("char", [" ", "~", "\xa0", "é", "/", ":", "\u2603", "😀"])
def test_printable_characters_in_name_are_accepted(char):
    assert Limits().name("election", f"a{char}b") == f"a{char}b"


def test_control_character_at_the_start_is_refused():
    with pytest.raises(InvalidArgument) as info:
        Limits().name("election", "\x00")
    assert "position 0" in str(info.value)


# -- ttl --------------------------------------------------------------------


@pytest.mark.parametrize("ttl_ms", [100, 101, 30_000, DEFAULT_MAX_TTL_MS])
def test_ttl_within_bounds_is_accepted(ttl_ms):
    assert Limits().ttl("ttl_ms", ttl_ms) == ttl_ms


@pytest.mark.parametrize("ttl_ms", [-1, 0, 1, 99, DEFAULT_MAX_TTL_MS + 1, 10**12])
def test_ttl_outside_bounds_is_refused_naming_both_limits(ttl_ms):
    with pytest.raises(InvalidArgument) as info:
        Limits().ttl("ttl_ms", ttl_ms)
    assert info.value.field == "ttl_ms"
    message = str(info.value)
    assert "100 ms" in message
    assert f"{DEFAULT_MAX_TTL_MS} ms" in message
    assert "--max-ttl" in message


def test_ttl_upper_bound_follows_max_ttl():
    limits = Limits(max_ttl_ms=5_000)
    assert limits.ttl("ttl_ms", 5_000) == 5_000
    with pytest.raises(InvalidArgument) as info:
        limits.ttl("ttl_ms", 5_001)
    assert "5000 ms" in str(info.value)


def test_ttl_of_max_max_ttl_is_accepted_when_configured():
    limits = Limits(max_ttl_ms=MAX_MAX_TTL_MS)
    assert limits.ttl("ttl_ms", MAX_MAX_TTL_MS) == MAX_MAX_TTL_MS
    with pytest.raises(InvalidArgument):
        limits.ttl("ttl_ms", MAX_MAX_TTL_MS + 1)


def test_ttl_lower_bound_with_minimal_max_ttl():
    limits = Limits(max_ttl_ms=MIN_TTL_MS)
    assert limits.ttl("ttl_ms", 100) == 100
    for bad in (99, 101):
        with pytest.raises(InvalidArgument):
            limits.ttl("ttl_ms", bad)


# -- value ------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4095, 4096])
def test_value_up_to_4096_bytes_is_accepted(size):
    value = b"\x00" * size
    assert Limits().value("value", value) == value


@pytest.mark.parametrize("size", [4097, 10_000])
def test_value_over_4096_bytes_is_refused_naming_the_limit(size):
    with pytest.raises(InvalidArgument) as info:
        Limits().value("value", b"v" * size)
    assert info.value.field == "value"
    message = str(info.value)
    assert "4096" in message
    assert f"{size} bytes" in message


# -- Limits itself ------------------------------------------------------------


def test_default_max_ttl_is_60_seconds():
    assert Limits().max_ttl_ms == 60_000


@pytest.mark.parametrize("max_ttl_ms", [MIN_TTL_MS, 1_000, DEFAULT_MAX_TTL_MS, MAX_MAX_TTL_MS])
def test_max_ttl_within_range_is_accepted(max_ttl_ms):
    assert Limits(max_ttl_ms=max_ttl_ms).max_ttl_ms == max_ttl_ms


@pytest.mark.parametrize("max_ttl_ms", [-1, 0, MIN_TTL_MS - 1, MAX_MAX_TTL_MS + 1])
def test_max_ttl_outside_range_is_refused(max_ttl_ms):
    with pytest.raises(ValueError) as info:
        Limits(max_ttl_ms=max_ttl_ms)
    message = str(info.value)
    assert "100 ms" in message
    assert f"{MAX_MAX_TTL_MS} ms" in message
    assert str(max_ttl_ms) in message


def test_limits_is_immutable():
    limits = Limits()
    with pytest.raises(AttributeError):
        limits.max_ttl_ms = 5  # type: ignore[misc]

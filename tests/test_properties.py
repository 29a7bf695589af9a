"""Property tests: prefix-narrowed pattern invalidation and the JSON codec."""

from __future__ import annotations

import asyncio
import re

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sqlcache import CacheLevel, CacheManager
from sqlcache._codecs import decode, encode
from sqlcache._store import literal_prefix, prefix_successor

# Keys and patterns over a small alphabet, so that patterns actually match generated keys;
# it includes regex metacharacters, a code point past the BMP and one next to the surrogates.
keys = st.text(alphabet=st.sampled_from("ab:.1é\U0001f600\ud7ff|\x00 "), max_size=6)
pattern_pieces = st.sampled_from(
    ["a", "b", ":", "é", "\U0001f600", "\ud7ff", ".", ".*", "a*", "b?", "(a|b)", "a|b", "[ab]", "[]a]", "\\.", "\\:", "1{2}", "(?i)a", "^", "$",
     "(?#c)", "(?#(|)", "(?x: a b )", "(?:ab)", "(?i:a)", "\x00", "\\x00"]
)
patterns = st.lists(pattern_pieces, max_size=5).map("".join)


def is_valid(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


@given(patterns, keys)
def test_every_match_starts_with_the_literal_prefix(pattern, key):
    assume(is_valid(pattern))
    if re.match(pattern, key):
        prefix = literal_prefix(pattern)
        assert key.startswith(prefix)
        upper = prefix_successor(prefix)
        assert upper is None or prefix <= key < upper


@given(st.text(max_size=4), st.text(max_size=4))
def test_prefix_successor_bounds_exactly_the_strings_with_the_prefix(prefix, key):
    assume(not any(0xD800 <= ord(c) <= 0xDFFF for c in prefix + key))
    upper = prefix_successor(prefix)
    in_range = prefix <= key and (upper is None or key < upper)
    assert in_range == key.startswith(prefix)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sets(keys, max_size=12), patterns)
def test_pattern_invalidation_removes_exactly_what_a_full_scan_would(disk_config, stored_keys, pattern):
    assume(is_valid(pattern))

    async def run() -> tuple[int, set[str]]:
        async with CacheManager({**disk_config(), "check_on_open": False}) as manager:
            await manager.clear()  # what an earlier example left
            for key in stored_keys:
                await manager.set(key, key, level=CacheLevel.DISK)
            removed = await manager.invalidate_by_pattern(pattern)
            left = {key for key in stored_keys if await manager.get(key) is not None}
            return removed, left

    removed, left = asyncio.run(run())
    expected_left = {key for key in stored_keys if not re.match(pattern, key)}
    assert left == expected_left
    assert removed == len(stored_keys) - len(expected_left)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


def same(a, b) -> bool:
    """Equality that treats NaN as equal to NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return (a != a and b != b) or a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@given(json_values)
def test_json_values_round_trip_exactly(value):
    data, codec = encode(value, allow_pickle=False)
    assert same(decode(data, codec, allow_pickle=False), value)


@given(st.binary())
def test_bytes_round_trip_as_bytes(value):
    data, codec = encode(value, allow_pickle=False)
    assert decode(data, codec, allow_pickle=False) == value

"""The values and keys every peer is given: identical bytes of work for everyone.

A value is a ~600-byte JSON dict of ten OHLCV candles, the kind of thing a trading agent
caches. Keys look like `market_data:SYM000123:1m`; the number is zero-padded so that a key
prefix such as `market_data:SYM000` selects exactly one group of 1,000 keys, and the tag
`grp:000` marks the very same group, so tag and prefix invalidation remove the same entries.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
from typing import Any, Iterator, NamedTuple

GROUP_SIZE = 1_000
"""Keys per tag group (and per key prefix)."""

_DIGITS = 6  # enough for 1,000,000 keys; the first three digits name the group
_MASK = 0x7FFF_FFFF  # the value generator's state: 31 bits


class Item(NamedTuple):
    """One entry to store: key, value and its tags."""

    key: str
    value: Any
    tags: tuple[str, ...]


def key(index: int, namespace: str = "market_data") -> str:
    """The key of entry `index`, e.g. `market_data:SYM000123:1m`."""
    return f"{namespace}:SYM{index:0{_DIGITS}d}:1m"


def group_of(index: int) -> int:
    return index // GROUP_SIZE


def tag(group: int) -> str:
    """The tag carried by every key of `group`."""
    return f"grp:{group:03d}"


def prefix(group: int, namespace: str = "market_data") -> str:
    """The key prefix shared by exactly the keys of `group` (for groups below 1,000)."""
    return f"{namespace}:SYM{group:03d}"


def key_template(tag_name: str, namespace: str = "market_data") -> str:
    """A cashews key template matching the keys of the group `tag_name` marks."""
    group = tag_name.removeprefix("grp:")
    return f"{namespace}:SYM{group}{{rest}}:1m"


def value(index: int) -> dict[str, Any]:
    """Ten one-minute OHLCV candles for symbol `index`: about 600 bytes as JSON.

    Prices are whole ten-thousandths divided by 10,000 (so each prints with at most four
    decimals, like a rounded price) from a small integer generator seeded by `index`: the same
    bytes in every process and every run, and a few microseconds per value, so that making the
    entries a workload loads costs the harness little next to the caches it times."""
    state = (index * 2_654_435_761 + 1) & _MASK
    price = 1_000_000 + state % 500_000  # 100.0000 to 149.9999
    candles = []
    for minute in range(10):
        state = (state * 1_103_515_245 + 12_345) & _MASK
        close = price + price * (state % 8_001 - 4_000) // 1_000_000  # within ±0.4 %
        candles.append(
            [1_700_000_000 + 60 * minute, price / 10_000, max(price, close) * 1_001 // 1_000 / 10_000,
             min(price, close) * 999 // 1_000 / 10_000, close / 10_000, 100 + state % 99_900]
        )
        price = close
    return {"symbol": f"SYM{index}", "exchange": "binance", "timeframe": "1m", "candles": candles}


def items(start: int, stop: int, namespace: str = "market_data") -> Iterator[Item]:
    """Entries `start`..`stop - 1`, each tagged with its group."""
    for index in range(start, stop):
        yield Item(key(index, namespace), value(index), (tag(group_of(index)),))


def chunks(iterable: Iterator[Item], size: int) -> Iterator[list[Item]]:
    iterator = iter(iterable)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def random_indices(count: int, population: int, seed: int = 7) -> list[int]:
    """`count` uniformly drawn indices below `population` (fixed seed: same for every peer)."""
    rng = random.Random(seed)
    return [rng.randrange(population) for _ in range(count)]


class Zipf:
    """Indices drawn with probability proportional to 1 / rank**exponent (rank 1 is hottest)."""

    def __init__(self, population: int, exponent: float = 1.1, seed: int = 11):
        weights = [1.0 / rank**exponent for rank in range(1, population + 1)]
        self._cumulative = list(itertools.accumulate(weights))
        self._rng = random.Random(seed)

    def draw(self, count: int) -> list[int]:
        total = self._cumulative[-1]
        return [bisect.bisect_left(self._cumulative, self._rng.random() * total) for _ in range(count)]


def sample_size() -> int:
    """Bytes of one value as compact JSON (shown in the report)."""
    return len(json.dumps(value(0), separators=(",", ":")))


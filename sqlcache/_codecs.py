"""Codecs: how a value becomes the bytes of the disk tier, and back.

JSON is the default so that anyone can read a value with `sqlite3` (`value_json`,
`json_extract`). `bytes` are stored as they are. Pickle is used only where the user opted in,
and only for values JSON cannot hold; a pickled row is never unpickled unless pickle is allowed,
so a file from elsewhere cannot run code in a process that did not opt in.

JSON round trips change some types, as everywhere: tuples come back as lists. NaN, infinities
and integers beyond 64 bits round trip exactly (through Python's `json`, which orjson cannot
do for them). Types JSON would change silently (datetime, dataclasses, subclasses of str/int/dict, keys that are not strings,
integers beyond 64 bits) raise `TypeError` instead, or are pickled where that is allowed.
"""

from __future__ import annotations

import enum
import json
import marshal
import pickle
from itertools import chain
from typing import Any

import orjson


class Codec(enum.IntEnum):
    """Stored in the `codec` column of each entry."""

    JSON = 0
    BYTES = 1
    PICKLE = 2
    PYTHON_JSON = 3  # JSON only Python's parser reads exactly: NaN, infinities, big integers


class UnreadableValueError(Exception):
    """A stored value this process may not or cannot decode (pickle not allowed, or damaged)."""


_STRICT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def encode(value: Any, allow_pickle: bool) -> tuple[bytes, Codec]:
    """Return the stored form of `value`; raise `TypeError` if it cannot be stored."""
    if type(value) is bytes:
        return value, Codec.BYTES
    try:
        return _encode_json(value)
    except TypeError as error:
        if allow_pickle:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), Codec.PICKLE
        raise TypeError(
            f"cannot store a value of type {type(value).__name__} as JSON ({error}); "
            "convert it, or set allow_pickle=True in the config"
        ) from None


_JSON_LEAVES = frozenset((str, int, float, bool, type(None)))
_JSON_CONTAINERS = frozenset((list, tuple, dict))
_JSON_TYPES = _JSON_LEAVES | _JSON_CONTAINERS


MAX_DEPTH = 255
"""Levels of nesting the type check walks; orjson refuses anything deeper ("recursion limit"),
which also ends the walk of a value that contains itself."""


def _check_json_types(value: Any) -> None:
    """Raise TypeError unless `value` is made only of the exact types JSON gives back.

    orjson writes `Enum` members (IntEnum and str enums too) and `UUID`s natively, as their
    values: the memory tier would hand back `Color.RED` and the disk tier `1`. So every node
    must be a plain str, int, float, bool, None, list, tuple or str-keyed dict.

    `marshal` (in C) writes only exact built-in types: it refuses every subclass, Enum member
    and UUID. What it takes beyond JSON's types (bytes, sets, complex, keys that are not str)
    orjson refuses next. So a value `marshal.dumps` takes needs no walk in Python (1.8 µs
    against 9.7 for the walk, on the harness's 612-byte candle value); one it refuses is walked,
    to name the offending type."""
    try:
        marshal.dumps(value)
    except ValueError:
        _walk_json_types(value)


def _walk_json_types(value: Any) -> None:
    """`_check_json_types` node by node, raising TypeError with the type that is not JSON. The walk goes a
    level of nesting at a time and gathers the types of a whole level's children with one
    `set(map(type, ...))` over a `chain` of its containers, which runs in C: ten lists of
    numbers in a dict cost three such passes, not a Python step per container."""
    kind = type(value)
    if kind in _JSON_LEAVES or (kind is list or kind is tuple) and set(map(type, value)) <= _JSON_LEAVES:
        return
    if kind not in _JSON_CONTAINERS:
        raise TypeError(f"type {kind.__name__} is not JSON")
    nodes, kinds = [value], {kind}
    for _ in range(MAX_DEPTH):
        sequences, dicts = _split(nodes, kinds)
        if dicts and set(map(type, chain.from_iterable(dicts))) - {str}:
            raise TypeError("dict keys must be str")
        children = [*chain.from_iterable(sequences), *chain.from_iterable(map(dict.values, dicts))]
        kinds = set(map(type, children))
        if kinds <= _JSON_LEAVES:
            return
        if not kinds <= _JSON_TYPES:
            raise TypeError(f"type {min(kind.__name__ for kind in kinds - _JSON_TYPES)} is not JSON")
        if kinds <= _JSON_CONTAINERS:
            nodes = children
        else:
            nodes = [child for child in children if type(child) in _JSON_CONTAINERS]
            kinds &= _JSON_CONTAINERS


def _split(nodes: list[Any], kinds: set[type]) -> tuple[list[Any], list[Any]]:
    """`nodes` (containers of the types `kinds`) as (lists and tuples, dicts)."""
    if dict not in kinds:
        return nodes, []
    if len(kinds) == 1:
        return [], nodes
    return [node for node in nodes if type(node) is not dict], [node for node in nodes if type(node) is dict]


def _encode_json(value: Any) -> tuple[bytes, Codec]:
    _check_json_types(value)
    try:
        data = orjson.dumps(value, option=_STRICT)
    except orjson.JSONEncodeError as error:
        if "64-bit" not in str(error):
            raise
        return _python_json(value)
    if b"null" in data:
        # orjson writes NaN and infinities as null; Python's json keeps them exactly
        # (as NaN / Infinity literals), so re-encode whenever a null could be one of them.
        python_data, codec = _python_json(value)
        return (data, Codec.JSON) if python_data == data else (python_data, codec)
    return data, Codec.JSON


def _python_json(value: Any) -> tuple[bytes, Codec]:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(), Codec.PYTHON_JSON


def decode(data: bytes, codec: int, allow_pickle: bool) -> Any:
    """Return the value stored as `data` with `codec`."""
    if codec == Codec.JSON:
        return orjson.loads(data)
    if codec == Codec.PYTHON_JSON:
        return json.loads(data)
    if codec == Codec.BYTES:
        return bytes(data)
    if codec == Codec.PICKLE:
        if not allow_pickle:
            raise UnreadableValueError("value was stored with pickle, which this cache does not allow")
        return pickle.loads(data)
    raise UnreadableValueError(f"unknown codec {codec!r}")

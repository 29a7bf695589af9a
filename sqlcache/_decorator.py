"""`cached(...)`: cache what an `async def` function returns, keyed by its arguments.

The decorator is a thin layer over `CacheManager.get_or_set`, so concurrent calls with the same
key share one call of the function, and a call's result never overwrites a newer `set`, `delete`
or invalidation of its key. Keys (and tags) come from format strings filled with the call's
arguments by parameter name, from a callable, or by default from the function's module,
qualified name and canonically encoded arguments, so two processes calling `f("BTC", "1m")`
use the same key and share the disk tier.
"""

from __future__ import annotations

import functools
import inspect
import math
import string
from typing import Any, Awaitable, Callable, Coroutine, Iterable, Mapping, ParamSpec, Protocol, TypeVar, Union

import orjson

from ._config import CacheLevel
from ._manager import CacheManager, _level

P = ParamSpec("P")
R = TypeVar("R")

KeyMaker = Union[str, Callable[..., str], None]
"""A format string (`"market_data:{symbol}:{timeframe}"`), a callable taking the decorated
function's arguments and returning the key, or None for the default key."""


class CachedDecorator(Protocol):
    """What `cached(...)` returns: given an `async def` function, its caching version, with the
    same parameters and return type for type checkers."""

    def __call__(self, func: Callable[P, Awaitable[R]], /) -> Callable[P, Coroutine[Any, Any, R]]: ...


def cached(
    manager: Callable[[], CacheManager],
    ttl: float | None = None,
    *,
    key: KeyMaker = None,
    tags: Iterable[str] | None = None,
    level: CacheLevel | str = CacheLevel.ALL,
    stale_ttl: float = 0,
    default_ttl: Callable[[], float | None] = lambda: None,
) -> CachedDecorator:
    """A decorator caching an `async def` function's results in `manager()` (looked up at each
    call, so a pool whose `cache_manager` is reassigned uses the new one).

    `ttl=None` means `default_ttl()` at call time (None there: the manager's `default_ttl`).
    Bad arguments, a non-async function and format fields that name no parameter raise at
    decoration time, not at the first call.
    """
    _check_seconds("ttl", ttl, allow_none=True)
    _check_seconds("stale_ttl", stale_ttl, allow_none=False)
    level = _level(level)
    if key is not None and not isinstance(key, str) and not callable(key):
        raise TypeError(f"key must be a format string, a callable or None, not {type(key).__name__}")
    if tags is None:
        tag_formats: tuple[str, ...] = ()
    elif isinstance(tags, (str, bytes)):
        raise TypeError("tags must be a list of strings, not a single string")
    else:
        tag_formats = tuple(tags)
        for tag in tag_formats:
            if not isinstance(tag, str):
                raise TypeError(f"tags must be strings, got {type(tag).__name__}")
    extra: dict[str, Any] = {"stale_ttl": stale_ttl} if stale_ttl else {}

    def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"@cached needs an async def function; {_name(func)} is not one")
        signature = inspect.signature(func)
        for template in (key, *tag_formats) if isinstance(key, str) else tag_formats:
            _check_template(template, signature, func)
        default_prefix = f"{func.__module__}.{func.__qualname__}:"

        def make_key(arguments: Mapping[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            if key is None:
                return default_prefix + _encode_arguments(arguments, func)
            if isinstance(key, str):
                return key.format_map(arguments)
            made = key(*args, **kwargs)
            if not isinstance(made, str):
                raise TypeError(f"the key callable of {_name(func)} returned {type(made).__name__}, not str")
            return made

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
            cache_key = make_key(arguments, args, kwargs)
            call_tags = [tag.format_map(arguments) for tag in tag_formats]
            call_ttl = default_ttl() if ttl is None else ttl
            return await manager().get_or_set(
                cache_key, lambda: func(*args, **kwargs), call_ttl, level, call_tags, **extra
            )

        return wrapper

    return decorate


def _check_template(template: str, signature: inspect.Signature, func: Callable[..., Any]) -> None:
    """Every field of `template` must start with a parameter name (`{symbol}`, `{order.id}`)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f"bad format string {template!r} for {_name(func)}: {error} (write {{{{ for a literal brace)") from None
    for _, field, spec, _ in parsed:
        if field is None:
            continue
        if spec and "{" in spec:  # a nested field, as in "{price:.{digits}f}"
            _check_template(spec, signature, func)
        name = field.split(".", 1)[0].split("[", 1)[0]
        if name not in signature.parameters:
            known = ", ".join(signature.parameters) or "none"
            what = f"{{{field}}}" if field else "{}"
            raise ValueError(
                f"format string {template!r} for {_name(func)}: {what} names no parameter "
                f"(parameters: {known}); fields must name parameters, like {{symbol}}"
            )


def _encode_arguments(arguments: Mapping[str, Any], func: Callable[..., Any]) -> str:
    """The call's arguments as canonical JSON text: the same in every process and every run.

    Only values whose text is unambiguous are accepted (None, bool, int, float, str, and lists,
    tuples and str-keyed dicts of them); dict keys are sorted. Anything else (an object whose
    `repr` may hold an address, a set whose order varies between runs) raises TypeError.
    """
    for name, value in arguments.items():
        _check_stable(value, name, func)
    return orjson.dumps(dict(arguments), option=orjson.OPT_SORT_KEYS).decode()


def _check_stable(value: Any, where: str, func: Callable[..., Any]) -> None:
    kind = type(value)
    if kind is float and not math.isfinite(value):
        raise TypeError(
            f"argument {where} of {_name(func)} is {value!r}, which JSON cannot hold for a cache key; pass key=..."
        )
    if kind in (list, tuple):
        for index, item in enumerate(value):
            _check_stable(item, f"{where}[{index}]", func)
    elif kind is dict:
        for name, item in value.items():
            if type(name) is not str:
                raise TypeError(f"argument {where} of {_name(func)} has a {type(name).__name__} dict key; "
                                "the default cache key needs str keys; pass key=...")
            _check_stable(item, f"{where}[{name!r}]", func)
    elif kind is int and not -(2**63) <= value < 2**64:
        raise TypeError(f"argument {where} of {_name(func)} is an integer beyond 64 bits; pass key=...")
    elif kind not in (str, int, float, bool, type(None)):
        raise TypeError(
            f"argument {where} of {_name(func)} is a {kind.__name__}, which has no stable encoding for the "
            "default cache key (it accepts None, bool, int, float, str, and lists, tuples and str-keyed dicts "
            "of them); pass key=\"...{name}...\" or a key callable"
        )


def _check_seconds(name: str, value: Any, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds{' or None' if allow_none else ''}, not {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")


def _name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or repr(func)

"""A hypothesis state machine drives CacheManager and checks every answer against a plain model.

The model is a dict of key -> (value, expiry, tags, durable, stale window). Both tiers are large enough that
nothing is evicted, so the model is exact: any difference is a bug (stale tier, lost write,
miscounted invalidation, expiry off by the clock, a value surviving a restart it should not).
It runs on each store in turn (the `disk_config` fixture), each example on a disk of its own.
"""

from __future__ import annotations

import asyncio
import math
import itertools
import re
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from conftest import FakeClock
from sqlcache import CacheLevel, CacheManager

# Keys and tags from all of text (hypothesis' text() is every code point but the surrogates),
# mixed with a few that collide on purpose: near twins that differ after a NUL, empty, blank.
NAMED_KEYS = [f"{kind}:{sym}:{frame}" for kind in ("md", "ob") for sym in ("BTC", "ETH") for frame in ("1m", "5m")]
KEYS = st.one_of(st.sampled_from(NAMED_KEYS + ["md", "md\x00", "md\x00:BTC", "", " ", "\n", "ключ"]), st.text(max_size=6))
TAG_NAMES = st.one_of(st.sampled_from(["md", "BTC", "ETH", "1m", "grp", "grp\x00A", "\x00", ""]), st.text(max_size=4))
VALUES = st.one_of(
    st.integers(), st.text(max_size=8), st.none(), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3), st.binary(max_size=6),
)
TTLS = st.sampled_from([None, 0, 1, 5, 30, 400])
LEVELS = st.sampled_from(list(CacheLevel))
PATTERNS = st.one_of(
    st.sampled_from(["md:BTC:.*", "md:", "ob:ETH:1m", ".*:1m", "(md|ob):ETH", "md:[BE]", "nothing",
                     "md\x00", "(?#comment)md:.*", "(?x: m d ):E", "md(?#x)*", "k(?#()|md"]),
    KEYS.map(re.escape),
)


@dataclass
class Stored:
    value: object
    expires_at: float
    tags: frozenset[str]
    durable: bool  # on disk, so it survives a restart
    window: float = 0.0  # seconds get_or_set(stale_ttl=...) may serve it past its expiry


class CacheMachine(RuleBasedStateMachine):
    def __init__(self, disk: dict) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.config = {**disk, "memory_max_size": 1000, "check_on_open": False, "purge_interval": 0}
        self.cache = CacheManager(self.config, clock=self.clock)
        self.model: dict[str, Stored] = {}

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def live(self, key: str) -> Stored | None:
        stored = self.model.get(key)
        return stored if stored is not None and stored.expires_at > self.clock.now else None

    def remove_where(self, matches) -> int:
        doomed = [key for key in self.model if matches(key)]
        live = sum(1 for key in doomed if self.live(key))
        for key in doomed:
            del self.model[key]
        return live

    @rule(key=KEYS, value=VALUES, ttl=TTLS, level=LEVELS, tags=st.frozensets(TAG_NAMES, max_size=2))
    def set(self, key, value, ttl, level, tags):
        self.run(self.cache.set(key, value, ttl, level, tags=sorted(tags)))
        ttl = 300 if ttl is None else ttl
        expires_at = self.clock.now + ttl if ttl else math.inf
        self.model[key] = Stored(value, expires_at, tags, durable=level is not CacheLevel.MEMORY)

    def stored(self, value, ttl, level, tags, window=0.0) -> Stored:
        ttl = 300 if ttl is None else ttl
        expires_at = self.clock.now + ttl if ttl else math.inf
        return Stored(value, expires_at, frozenset(tags), durable=level is not CacheLevel.MEMORY, window=window)

    @rule(mapping=st.dictionaries(KEYS, VALUES, max_size=3), ttl=TTLS, level=LEVELS, tags=st.frozensets(TAG_NAMES, max_size=2))
    def set_many(self, mapping, ttl, level, tags):
        self.run(self.cache.set_many(mapping, ttl, level, tags=sorted(tags)))
        for key, value in mapping.items():
            self.model[key] = self.stored(value, ttl, level, tags)

    @rule(keys=st.lists(KEYS, max_size=4))
    def get_many(self, keys):
        expected = {key: self.live(key).value for key in keys if self.live(key)}
        assert self.run(self.cache.get_many(keys)) == expected

    @rule(keys=st.lists(KEYS, max_size=4))
    def delete_many(self, keys):
        expected = self.remove_where(lambda key: key in keys)
        assert self.run(self.cache.delete_many(keys)) == expected

    @rule(key=KEYS)
    def exists_and_ttl(self, key):
        stored = self.live(key)
        assert self.run(self.cache.exists(key)) is (stored is not None)
        assert self.run(self.cache.ttl(key)) == (None if stored is None else stored.expires_at - self.clock.now)

    @rule(key=KEYS, ttl=TTLS)
    def touch(self, key, ttl):
        stored = self.live(key)
        assert self.run(self.cache.touch(key, ttl)) is (stored is not None)
        if stored is not None:
            stored.expires_at = self.stored(None, ttl, CacheLevel.ALL, ()).expires_at

    @precondition(lambda self: self.model)
    @rule(key=KEYS, later=st.sampled_from([0, 10, 40]))
    def get_or_set_stale(self, key, later):
        """Twice, `later` seconds apart: 10 s is inside the stale window of the first call's entry."""
        self.check_get_or_set_stale(key)
        self.clock.advance(later)
        self.check_get_or_set_stale(key)

    def check_get_or_set_stale(self, key):
        stored = self.live(key)
        stale = self.model.get(key)
        if stale is not None and not (stale.window and self.clock.now < stale.expires_at + min(stale.window, 30)):
            stale = None
        got = self.run(self.cache.get_or_set(key, lambda: "fresh", ttl=5, stale_ttl=30))
        if stored is not None:
            assert got == stored.value
        elif stale is not None:
            assert got == stale.value  # served at once; one background refresh stores "fresh"
            self.run(self.refreshed())
        else:
            assert got == "fresh"
        if stored is None:
            self.model[key] = self.stored("fresh", 5, CacheLevel.ALL, (), window=30)

    async def refreshed(self):
        deadline = self.loop.time() + 10  # on PostgreSQL the refresh's write takes round trips
        while self.cache._bound.refreshes:
            if self.loop.time() > deadline:
                raise AssertionError("the background refresh never finished")
            await asyncio.sleep(0)

    @rule(key=KEYS)
    def get(self, key):
        stored = self.live(key)
        assert self.run(self.cache.get(key, "<missing>")) == (stored.value if stored else "<missing>")

    @rule(key=KEYS)
    def delete(self, key):
        expected = self.live(key) is not None
        self.model.pop(key, None)
        assert self.run(self.cache.delete(key)) is expected

    @rule(tag=TAG_NAMES)
    def invalidate_by_tag(self, tag):
        expected = self.remove_where(lambda key: tag in self.model[key].tags)
        assert self.run(self.cache.invalidate_by_tag(tag)) == expected

    @rule(pattern=PATTERNS)
    def invalidate_by_pattern(self, pattern):
        expected = self.remove_where(lambda key: re.match(pattern, key) is not None)
        assert self.run(self.cache.invalidate_by_pattern(pattern)) == expected

    @rule()
    def clear(self):
        self.run(self.cache.clear())
        self.model.clear()

    @rule(seconds=st.sampled_from([0.5, 1, 4, 29, 301]))
    def advance_clock(self, seconds):
        self.clock.advance(seconds)

    @rule()
    def close_and_reopen(self):
        self.run(self.cache.close())
        self.cache = CacheManager(self.config, clock=self.clock)
        self.model = {key: stored for key, stored in self.model.items() if stored.durable}

    @precondition(lambda self: self.model)
    @rule(key=KEYS)
    def get_or_set(self, key):
        stored = self.live(key)
        got = self.run(self.cache.get_or_set(key, lambda: "loaded", ttl=60))
        if stored is None:
            assert got == "loaded"
            self.model[key] = Stored("loaded", self.clock.now + 60, frozenset(), durable=True)
        else:
            assert got == stored.value

    @invariant()
    def disk_holds_exactly_the_durable_entries(self):
        # Expired entries stay on disk until purged, and the purge is off here, as in the model.
        stats = self.run(self.cache.get_stats())
        assert stats["disk_entries"] == sum(1 for stored in self.model.values() if stored.durable)

    def teardown(self):
        self.run(self.cache.close())
        self.loop.close()


# Fewer examples on PostgreSQL: each makes a database, and its round trips are slower.
EXAMPLES = {"sqlite": 40, "postgresql": 15}


def test_the_cache_answers_as_the_model_does(disk_config, request):
    store = request.node.callspec.params["disk_config"]
    disks = (disk_config(f"example{n}") for n in itertools.count())  # a fresh disk for each example
    run_state_machine_as_test(
        lambda: CacheMachine(next(disks)),
        settings=settings(max_examples=EXAMPLES[store], stateful_step_count=40, deadline=None),
    )

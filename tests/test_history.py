"""The stress test's checker on hand-made histories: what a cache may do passes, each broken
promise is flagged, so the checker cannot pass everything without anyone noticing."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from history import DiskEntry, Op, check_final_state, check_history, load_history, make_value, value_id

SYNC = 0.05  # with the default slack the cross-process bound is 0.3 s


_numbers = itertools.count(1)


def op(kind: str, t0: float, t1: float = math.inf, proc: str = "P", outcome: str = "ok", **fields) -> Op:
    return Op(proc=proc, task=0, n=next(_numbers), kind=kind, t0=t0, t1=t1, outcome=outcome,
              tags=tuple(fields.pop("tags", ())), **fields)


def put(vid: str, t0: float, t1: float, proc: str = "P", key: str = "k", level: str = "all", **fields) -> Op:
    return op("set", t0, t1, proc, key=key, vid=vid, level=level, ttl=fields.pop("ttl", 0), **fields)


def get(got: str | None, t0: float, t1: float, proc: str = "R", key: str = "k", **fields) -> Op:
    return op("get", t0, t1, proc, key=key, got=got, **fields)


def kinds(ops, evicts: bool = True) -> list[str]:
    return [v.kind for v in check_history(ops, sync_interval=SYNC, default_ttl=300, evicts=evicts)]


# ---------------------------------------------------------------- what a cache may do


def test_reading_the_latest_value_or_missing_passes():
    assert kinds([put("a", 0, 1), get("a", 2, 3), get(None, 4, 5)]) == []


def test_another_process_may_serve_the_old_value_within_the_bound():
    history = [put("a", 0, 1, proc="P"), put("b", 2, 3, proc="Q"), get("a", 3.2, 3.3, proc="R")]
    assert kinds(history) == []


def test_overlapping_writes_may_land_in_either_order():
    history = [put("a", 0, 2, proc="P"), put("b", 1, 3, proc="Q"), get("a", 10, 11), get("b", 12, 13)]
    assert kinds(history) == []


def test_an_op_of_unknown_outcome_never_makes_a_value_stale():
    history = [put("a", 0, 1), op("delete", 2, 2.1, outcome="cancelled", key="k"),
               op("delete", 3, proc="Q", outcome="unknown", key="k"), get("a", 10, 11)]
    assert kinds(history) == []


def test_a_tag_or_pattern_that_does_not_cover_the_value_changes_nothing():
    history = [put("a", 0, 1, tags=["t1"]), op("tag", 2, 3, arg="t2"), op("pattern", 2, 3, arg="x"), get("a", 10, 11)]
    assert kinds(history) == []


def test_a_memory_value_is_fine_in_its_own_process():
    assert kinds([put("m", 0, 1, level="memory"), get("m", 2, 3, proc="P")]) == []


def test_a_load_may_replace_changes_that_returned_before_it_began():
    history = [op("delete", 0, 1, key="k"), op("load", 2, 3, key="k", vid="L", level="all"), get("L", 10, 11)]
    assert kinds(history) == []


def test_a_get_or_set_may_return_its_load_when_the_change_overlapped_the_loader():
    history = [op("load", 0, 2, key="k", vid="L", level="all"), put("b", 1, 1.5, proc="Q"),
               op("get_or_set", 0, 2.1, key="k", got="L")]
    assert kinds(history) == []


# ---------------------------------------------------------------- broken promises


@pytest.mark.parametrize(
    "change",
    [
        lambda: put("b", 2, 3, proc="Q"),
        lambda: put("b", 2, 3, proc="Q", level="memory"),  # drops the disk copy and other memory copies
        lambda: op("delete", 2, 3, proc="Q", key="k"),
        lambda: op("tag", 2, 3, proc="Q", arg="t\x00"),
        lambda: op("pattern", 2, 3, proc="Q", arg="k(?#()|x"),
        lambda: op("clear", 2, 3, proc="Q"),
    ],
    ids=["overwrite", "memory-set", "delete", "tag", "pattern", "clear"],
)
def test_a_value_removed_longer_than_the_bound_before_a_get_is_stale(change):
    history = [put("a", 0, 1, proc="P", tags=["t\x00"]), change(), get("a", 3.31, 3.4, proc="R")]
    assert kinds(history) == ["stale-read"]


def test_a_change_in_the_reading_process_is_seen_at_once():
    history = [put("a", 0, 1, proc="P"), op("delete", 2, 3, proc="R", key="k"), get("a", 3.001, 3.01, proc="R")]
    assert kinds(history) == ["stale-read"]


def test_a_load_stored_over_a_change_that_returned_after_it_began_is_stale():
    history = [op("load", 0, 2, key="k", vid="L", level="all"), put("b", 0.5, 1, proc="Q"), get("L", 5, 6)]
    assert kinds(history) == ["stale-loaded-value"]


def test_values_nobody_wrote_are_flagged():
    history = [
        put("a", 0, 1),
        get("zz", 2, 3),  # never written
        get(None, 2, 3, garbled="{'id': 'a', 'pad': 'torn'}"),
        get("a", 2, 3, key="other"),
        get("m", 2, 3, proc="R"),
        put("m", 0, 1, proc="P", level="memory"),
        op("load", 0, 1, key="k", vid="F", level="all", outcome="error:LoaderFailed"),
        get("F", 2, 3),
        get("late", 2, 3),
        put("late", 4, 5),
    ]
    assert sorted(kinds(history)) == sorted(
        ["phantom-value", "garbled-value", "wrong-key", "foreign-memory-value", "failed-load-value", "read-before-write"]
    )


def test_a_value_read_after_its_ttl_is_flagged():
    assert kinds([put("a", 0, 1, ttl=2.0), get("a", 2.5, 2.6), get("a", 3.1, 3.2)]) == ["expired-read"]


def test_without_eviction_a_miss_of_a_value_nothing_removed_is_a_loss():
    history = [put("a", 0, 1, proc="P"), get(None, 2, 3, proc="R"), put("m", 4, 5, proc="R", level="memory"),
               get(None, 6, 7, proc="R")]
    assert kinds(history, evicts=True) == []
    assert kinds(history, evicts=False) == ["lost-value", "memory-value-lost"]


def test_without_eviction_a_miss_is_fine_when_a_removal_may_have_come_in_between():
    history = [put("a", 0, 1, tags=["t"]), op("tag", 0.5, outcome="unknown", proc="Q", arg="t"), get(None, 2, 3),
               put("b", 4, 5, proc="P"), put("m", 4.5, 5.5, proc="Q", level="memory"), get(None, 6, 7, proc="R")]
    assert kinds(history, evicts=False) == []


# ---------------------------------------------------------------- the final state


def entry(key: str, vid: str | None, tags=(), garbled: str | None = None, expires_at=None) -> DiskEntry:
    return DiskEntry(key, vid, garbled, tuple(tags), expires_at)


def final(ops, entries, evicts=True, **extra) -> list[str]:
    return [v.kind for v in check_final_state(ops, entries, now=100, evicts=evicts, **extra)]


def test_the_latest_value_on_disk_passes_and_an_evicted_one_may_be_missing():
    history = [put("a", 0, 1), put("b", 2, 3, tags=["t"]), put("c", 0, 1, key="j")]
    assert final(history, [entry("k", "b", ["t"])]) == []
    assert final(history, [entry("k", "b", ["t"])], evicts=False) == ["lost-acknowledged-set"]  # j is gone
    assert final(history, [entry("k", "b", ["t"]), entry("j", "c")], evicts=False) == []


def test_an_acknowledged_set_of_a_killed_worker_must_survive_unless_something_may_have_removed_it():
    history = [put("a", 0, 1, proc="killed"), put("b", 2, math.inf, proc="killed", outcome="unknown")]
    assert final(history, [], evicts=False) == ["lost-acknowledged-set"]
    assert final(history + [op("delete", 0.5, key="k", proc="killed", outcome="unknown")], [], evicts=False) == []


def test_a_replaced_or_foreign_value_on_disk_is_flagged():
    history = [put("a", 0, 1, tags=["t"]), op("tag", 2, 3, arg="t"), put("m", 0, 1, key="j", level="memory"),
               op("load", 4, 6, key="x", vid="L", level="all"), op("delete", 4.5, 5, key="x")]
    found = final(history, [entry("k", "a", ["t"]), entry("j", "m"), entry("x", "L"), entry("y", None, garbled="torn"),
                            entry("z", "nobody")])
    assert sorted(found) == sorted(["superseded-on-disk", "memory-value-on-disk", "load-stored-over-newer-change",
                                    "garbled-value", "phantom-value"])


def test_wrong_tags_views_and_tag_index_are_flagged():
    history = [put("a", 0, 1, tags=["grp\x00A"])]
    disk = [entry("k", "a", ["grp\x00A"])]
    assert final(history, disk, tag_index={"grp\x00A": 1}, views={"get": {"k": ("a", None)}}) == []
    assert final(history, [entry("k", "a", ["grp"])]) == ["wrong-tags"]
    assert final(history, disk, tag_index={"grp": 1}) == ["tag-index", "tag-index"]
    assert final(history, disk, views={"gather": {"k": (None, None)}}) == ["view-mismatch"]
    assert final(history, [entry("k", "a", ["grp\x00A"], expires_at=100.5)], views={"gather": {}}) == []


# ---------------------------------------------------------------- values and logs


def test_values_name_their_write_and_anything_else_is_garbled():
    assert value_id(make_value("w1/2/3")) == ("w1/2/3", None)
    assert value_id(None) == (None, None)
    torn = {**make_value("w1/2/3"), "pad": "short"}
    assert value_id(torn)[0] is None and value_id(torn)[1]
    assert make_value("a") != make_value("b") and len(make_value("a")["pad"]) >= 50


def test_load_history_joins_lines_and_keeps_ops_a_kill_cut_short(tmp_path):
    lines = [
        {"p": "w0", "T": 1, "i": 1, "op": "set", "e": "inv", "t0": 1.0, "key": "k\x00", "vid": "w0/1/1", "level": "disk"},
        {"p": "w0", "T": 1, "i": 1, "op": "set", "e": "ret", "t0": 1.0, "t1": 2.0, "o": "ok", "key": "k\x00", "vid": "w0/1/1", "level": "disk"},
        {"p": "w0", "T": 1, "i": 2, "op": "delete", "e": "inv", "t0": 3.0, "key": "k"},
        {"p": "w0", "T": 2, "i": "L3", "op": "load", "e": "inv", "t0": 4.0, "key": "k", "vid": "w0/2/3"},
    ]
    path = tmp_path / "w0.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"p": "w0", "T"')
    ops = sorted(load_history([path]), key=lambda o: o.t0)
    assert [(o.kind, o.key, o.outcome, o.t1) for o in ops] == [
        ("set", "k\x00", "ok", 2.0), ("delete", "k", "unknown", math.inf), ("load", "k", "unknown", math.inf)
    ]


def test_any_error_but_a_failed_loader_is_flagged():
    history = [op("get_or_set", 0, 1, key="k", outcome="error:LoaderFailed"),
               op("delete", 0, 1, key="k", outcome="error:StorageError", error="UNIQUE constraint failed")]
    assert kinds(history) == ["unexpected-error"]


def test_without_eviction_a_memory_set_of_the_reading_process_excuses_a_miss_only_while_the_read_runs():
    # A MEMORY set drops the disk copy before it fills the memory tier: a read in between misses.
    during = [put("a", 0, 1, proc="P"), put("m", 2, 4, proc="R", level="memory"), get(None, 3, 3.5, proc="R")]
    assert kinds(during, evicts=False) == []
    after = [put("a", 0, 1, proc="P"), put("m", 2, 2.5, proc="R", level="memory"), get(None, 3, 3.5, proc="R")]
    assert kinds(after, evicts=False) == ["memory-value-lost"]

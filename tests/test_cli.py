"""The `sqlcache` command end to end: real cache files, real subprocesses (`python -m sqlcache`).

The README's debugging queries are run here too, so the manual cannot drift from the schema.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from sqlcache import CacheManager
from sqlcache._sqlite import LATEST_SCHEMA
from sqlcache._pool import ResourcePool

REPO = Path(__file__).resolve().parent.parent
CANDLES = [[1_700_000_000 + 60 * i, 100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i, 10.0] for i in range(3)]
BIG_BOOK = {"bids": [[100 - i / 10, 1.0] for i in range(200)], "asks": [[100 + i / 10, 1.0] for i in range(200)]}


def cli_env() -> dict[str, str]:
    """The environment of a `python -m sqlcache` child: this checkout first on the path."""
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def sqlcache(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m sqlcache ARGS` in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "sqlcache", *args],
        input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd, env=cli_env(),
    )


def as_json(result: subprocess.CompletedProcess[str]):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_clean_failure(result: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    """A failure is one clear line on stderr and a meaningful exit code, not a traceback."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digests(directory: Path) -> dict[str, str]:
    """The checksum of every file in a directory: what "changed nothing" means."""
    return {item.name: digest(item) for item in sorted(directory.iterdir()) if item.is_file()}


def data_digests(directory: Path) -> dict[str, str]:
    """The checksums of the files holding data: not the -shm index, which any reader may create
    (as may an empty -wal), nor the lock file."""
    return {name: value for name, value in digests(directory).items()
            if not name.endswith(("-shm", ".lock")) and (directory / name).stat().st_size > 0}


async def fill(directory: Path, url: str | None = None) -> None:
    """A cache as agents leave it: market data, an order book, raw bytes, a pickle, an expired entry
    (in `directory`, or with its disk tier at `url`)."""
    where = {"disk_cache_dir": directory, **({"disk_cache_url": url} if url else {})}
    async with CacheManager({**where, "allow_pickle": True}) as cache:
        await cache.set("market_data:BTC:1m", {"symbol": "BTC", "candles": CANDLES}, 30, tags=["market_data", "BTC", "1m"])
        await cache.set("market_data:ETH:1m", {"symbol": "ETH", "candles": CANDLES[:2]}, 3600,
                        tags=["market_data", "ETH", "1m"])
        await cache.set("order_book:ETH:depth_20", BIG_BOOK, 600, tags=["order_book", "ETH"])
        await cache.set("raw:frame", b"\x00\x01frame", 0)
        await cache.set("pickled:set", {1, 2, 3}, 600)
        for _ in range(3):
            await cache.get("market_data:BTC:1m")
    an_hour_ago = time.time() - 3600
    async with CacheManager(where, clock=lambda: an_hour_ago) as old:
        await old.set("market_data:SOL:1m", {"symbol": "SOL", "candles": CANDLES}, 60, tags=["market_data", "SOL"])


@pytest.fixture
async def cache(cache_dir: Path) -> Path:
    await fill(cache_dir)
    return cache_dir


def rows(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql, params).fetchall()


# ---------------------------------------------------------------- reading commands


def test_stats_counts_live_expired_and_bytes(cache: Path) -> None:
    stats = as_json(sqlcache("--dir", str(cache), "stats", "--json"))
    assert stats["entries"] == 6
    assert (stats["live_entries"], stats["expired_entries"], stats["never_expiring"]) == (5, 1, 1)
    assert stats["bytes"] == rows(cache / "sqlcache.db", "SELECT sum(size) FROM entries")[0][0]
    assert stats["tags"] == 6  # market_data, BTC, ETH, SOL, 1m, order_book
    assert stats["reads_recorded"] == 3
    assert stats["preload_tasks"] == 0

    text = sqlcache("stats", "--dir", str(cache))  # the location may also follow the command
    assert text.returncode == 0
    assert "6 (5 live, 1 expired awaiting purge, 1 never expire)" in text.stdout


def test_keys_filters_by_tag_and_pattern_and_limits(cache: Path) -> None:
    by_tag = as_json(sqlcache("--dir", str(cache), "keys", "--tag", "ETH", "--json"))
    assert [entry["key"] for entry in by_tag["keys"]] == ["market_data:ETH:1m", "order_book:ETH:depth_20"]
    btc = as_json(sqlcache("--dir", str(cache), "keys", "--pattern", r"market_data:B", "--json"))["keys"]
    assert btc[0]["tags"] == ["1m", "BTC", "market_data"] and btc[0]["access_count"] == 3
    both = as_json(sqlcache("--dir", str(cache), "keys", "--tag", "market_data", "--pattern", ".*:1m$", "--json"))
    assert [entry["key"] for entry in both["keys"]] == ["market_data:BTC:1m", "market_data:ETH:1m", "market_data:SOL:1m"]
    assert [entry["expired"] for entry in both["keys"]] == [False, False, True]

    table = sqlcache("--dir", str(cache), "keys", "--limit", "2")
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["key", "bytes", "expires"]
    assert lines[2].startswith("market_data:BTC:1m") and "in 2" in lines[2]  # expires in about 30 s
    assert lines[-1] == "... and 4 more (raise --limit)"


def test_get_shows_each_codec_and_never_unpickles(cache: Path) -> None:
    entry = as_json(sqlcache("--dir", str(cache), "get", "market_data:BTC:1m", "--json"))
    assert entry["value"] == {"symbol": "BTC", "candles": CANDLES}
    assert entry["codec"] == "json" and entry["access_count"] == 3

    text = sqlcache("--dir", str(cache), "get", "market_data:BTC:1m").stdout
    assert "tags:    1m, BTC, market_data" in text and '"symbol": "BTC"' in text

    raw = as_json(sqlcache("--dir", str(cache), "get", "raw:frame", "--json"))
    assert base64.b64decode(raw["value_base64"]) == b"\x00\x01frame"
    assert "<bytes, 7 bytes>" in sqlcache("--dir", str(cache), "get", "raw:frame").stdout

    pickled = sqlcache("--dir", str(cache), "get", "pickled:set")
    assert pickled.returncode == 0 and re.search(r"<pickle, \d+ bytes>", pickled.stdout)
    assert as_json(sqlcache("--dir", str(cache), "get", "pickled:set", "--json"))["value"] is None


def test_get_exits_1_without_a_live_entry(cache: Path) -> None:
    assert_clean_failure(sqlcache("--dir", str(cache), "get", "market_data:DOGE:1m"), 1, "no entry for key")
    expired = sqlcache("--dir", str(cache), "get", "market_data:SOL:1m", "--json")
    assert_clean_failure(expired, 1, "expired at")
    assert json.loads(expired.stdout)["expired"] is True  # still shown: it is on disk until purged


def test_tags_biggest_first(cache: Path) -> None:
    tags = as_json(sqlcache("--dir", str(cache), "tags", "--json"))
    assert tags[0]["tag"] == "ETH" and tags[0]["entries"] == 2
    assert [tag["bytes"] for tag in tags] == sorted((tag["bytes"] for tag in tags), reverse=True)
    assert {tag["tag"]: tag["entries"] for tag in tags}["market_data"] == 3
    assert sqlcache("--dir", str(cache), "tags").stdout.splitlines()[0].split() == ["tag", "entries", "bytes"]


async def test_tasks_lists_the_preloaders_table(cache: Path) -> None:
    def failing() -> None:
        raise RuntimeError("exchange down")

    async with ResourcePool(CacheManager({"disk_cache_dir": cache})) as pool:
        pool.register_preload_task("btc", lambda: {"price": 1}, 60, cache_key="market_data:BTC:price")
        pool.register_preload_task("eth", failing, 30)
        assert await pool.run_preload_task_now("btc")
        assert not await pool.run_preload_task_now("eth")

    tasks = {task["name"]: task for task in as_json(sqlcache("--dir", str(cache), "tasks", "--json"))}
    assert (tasks["btc"]["run_count"], tasks["btc"]["error_count"]) == (1, 0)
    assert tasks["eth"]["error_count"] == 1 and "exchange down" in tasks["eth"]["last_error"]
    table = sqlcache("--dir", str(cache), "tasks").stdout.splitlines()
    assert table[0].split()[:3] == ["name", "enabled", "interval"]
    assert table[3].startswith("eth") and "exchange down" in table[3]


def test_tasks_on_a_database_from_before_the_preloader(cache: Path) -> None:
    with sqlite3.connect(cache / "sqlcache.db") as connection:
        connection.executescript("DROP VIEW preload_tasks; DROP TABLE preload_task_state; PRAGMA user_version = 1;")
    result = sqlcache("--dir", str(cache), "tasks", "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == []
    assert "has no preload_tasks table (schema version 1)" in result.stderr


# ---------------------------------------------------------------- commands that change the cache


async def test_invalidate_by_tag_reaches_another_process(cache: Path) -> None:
    async with CacheManager({"disk_cache_dir": cache, "sync_interval": 0.01}) as agent:
        assert await agent.get("order_book:ETH:depth_20") == BIG_BOOK  # now in its memory tier

        declined = sqlcache("--dir", str(cache), "invalidate", "--tag", "ETH", stdin="n\n")
        assert_clean_failure(declined, 1, "nothing removed")
        assert "Remove 2 entries tagged 'ETH' (2 live)" in declined.stderr
        assert_clean_failure(sqlcache("--dir", str(cache), "invalidate", "--tag", "ETH"), 1, "nothing removed")
        assert await agent.get("order_book:ETH:depth_20") == BIG_BOOK

        done = sqlcache("--dir", str(cache), "invalidate", "--tag", "ETH", stdin="y\n")
        assert done.returncode == 0 and done.stdout.strip() == "removed 2 live entries tagged 'ETH'"
        # The agent's memory tier learns of it from the invalidation log, the subprocess having
        # taken far longer than the agent's sync_interval.
        assert await agent.get("order_book:ETH:depth_20") is None
    assert rows(cache / "sqlcache.db", "SELECT key FROM entries WHERE key LIKE '%ETH%'") == []


def test_invalidate_by_pattern_with_yes(cache: Path) -> None:
    result = as_json(sqlcache("--dir", str(cache), "invalidate", "--pattern", "market_data:.*:1m", "--yes", "--json"))
    assert result == {"removed": 2, "tag": None, "pattern": "market_data:.*:1m"}  # the expired SOL is not live
    left = rows(cache / "sqlcache.db", "SELECT key FROM entries ORDER BY key")
    assert left == [("order_book:ETH:depth_20",), ("pickled:set",), ("raw:frame",)]
    assert rows(cache / "sqlcache.db", "SELECT kind, arg FROM invalidations ORDER BY seq DESC LIMIT 1") == [
        ("pattern", "market_data:.*:1m")
    ]


def test_purge_removes_only_expired_entries(cache: Path) -> None:
    db = cache / "sqlcache.db"
    result = as_json(sqlcache("--dir", str(cache), "purge", "--json"))
    assert (result["purged"], result["entries"]) == (1, 5)
    assert result["bytes"] == rows(db, "SELECT sum(size) FROM entries")[0][0]
    assert rows(db, "SELECT key FROM entries WHERE key = ?", ("market_data:SOL:1m",)) == []
    again = sqlcache("--dir", str(cache), "purge")
    assert again.returncode == 0 and again.stdout.startswith("purged 0 expired entries; 5 entries (")


def test_vacuum_keeps_every_entry(cache: Path) -> None:
    sqlcache("--dir", str(cache), "invalidate", "--tag", "order_book", "--yes")
    result = as_json(sqlcache("--dir", str(cache), "vacuum", "--json"))
    assert result["bytes_after"] <= result["bytes_before"]
    assert len(rows(cache / "sqlcache.db", "SELECT key FROM entries")) == 5
    assert sqlcache("--dir", str(cache), "check").returncode == 0


# ---------------------------------------------------------------- sql


def test_sql_reads_with_json_and_regexp(cache: Path) -> None:
    result = as_json(sqlcache("--dir", str(cache), "sql",
                              "SELECT key, json_extract(value_json, '$.symbol') AS symbol FROM cache_entries "
                              "WHERE key REGEXP 'market_data:(BTC|ETH)' ORDER BY key", "--json"))
    assert result == [{"key": "market_data:BTC:1m", "symbol": "BTC"}, {"key": "market_data:ETH:1m", "symbol": "ETH"}]
    text = sqlcache("--dir", str(cache), "sql", "SELECT count(*) AS n FROM cache_entries").stdout.splitlines()
    assert [line.strip() for line in text] == ["n", "-", "6"]


def test_sql_refuses_writes_and_changes_nothing(cache: Path) -> None:
    db = cache / "sqlcache.db"
    before = digest(db)
    refused = sqlcache("--db", str(db), "sql", "DELETE FROM entries")
    assert_clean_failure(refused, 4, "read-only")
    assert "nothing was changed" in refused.stderr
    attach = sqlcache("--db", str(db), "sql", f"ATTACH '{cache / 'other.db'}' AS other")
    assert_clean_failure(attach, 4, "read-only")
    assert not (cache / "other.db").exists()
    assert_clean_failure(sqlcache("--db", str(db), "sql", "SELEC 1"), 4, "syntax error")
    assert digest(db) == before
    assert rows(db, "SELECT count(*) FROM entries") == [(6,)]


# ---------------------------------------------------------------- bad input


def test_missing_file_is_a_clear_message_and_is_not_created(tmp_path: Path) -> None:
    for command in (["stats"], ["keys"], ["sql", "SELECT 1"], ["purge"], ["invalidate", "--tag", "x", "--yes"]):
        result = sqlcache("--dir", str(tmp_path / "nowhere"), *command)
        assert_clean_failure(result, 3, f"no cache database at {tmp_path / 'nowhere' / 'sqlcache.db'}")
    assert not (tmp_path / "nowhere").exists()
    assert_clean_failure(sqlcache("stats", cwd=tmp_path), 3, "no cache database at cache/sqlcache.db")


def test_bad_arguments_exit_2(cache: Path, tmp_path: Path) -> None:
    assert_clean_failure(sqlcache(), 2, "usage: sqlcache")
    assert_clean_failure(sqlcache("--dir", str(cache), "frobnicate"), 2, "invalid choice: 'frobnicate'")
    assert_clean_failure(sqlcache("--dir", str(cache), "keys", "--pattern", "("), 2, "invalid --pattern '('")
    assert_clean_failure(sqlcache("--dir", str(cache), "keys", "--limit", "0"), 2, "expected a whole number >= 1")
    assert_clean_failure(sqlcache("--dir", str(cache), "invalidate"), 2, "one of the arguments --tag --pattern is required")
    assert_clean_failure(sqlcache("--dir", str(cache), "--db", str(cache / "sqlcache.db"), "stats"), 2, "not both")
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("hello")
    assert_clean_failure(sqlcache("--db", str(not_a_db), "stats"), 3, "is not a readable SQLite database")


def test_console_script_is_declared_and_help_works() -> None:
    scripts = {entry.name: entry.value for entry in entry_points(group="console_scripts")}
    assert scripts.get("sqlcache") == "sqlcache._cli:main"
    result = sqlcache("--help")
    assert result.returncode == 0
    for command in ("stats", "keys", "get", "tags", "invalidate", "purge", "vacuum", "tasks", "check", "sql", "demo"):
        assert command in result.stdout


# ---------------------------------------------------------------- the README's queries


def readme_queries() -> dict[str, str]:
    """The titled SQL blocks of the README's "Schema and debugging queries" section."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Schema and debugging queries", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"\*\*(.+?)\*\*\n\n```sql\n(.*?)```", section, re.DOTALL))


def expect_expiring_soon(result: list[dict]) -> None:
    assert [row["key"] for row in result] == ["market_data:BTC:1m"]


def expect_biggest(result: list[dict]) -> None:
    assert result[0]["key"] == "order_book:ETH:depth_20"
    assert [row["size"] for row in result] == sorted((row["size"] for row in result), reverse=True)


def expect_tag_bytes(result: list[dict]) -> None:
    assert [row["tag"] for row in result[:2]] == ["ETH", "order_book"]


def expect_failing_tasks(result: list[dict]) -> None:
    assert [(row["name"], row["error_count"]) for row in result] == [("eth", 1)]
    assert "exchange down" in result[0]["last_error"]


def expect_hottest(result: list[dict]) -> None:
    assert (result[0]["key"], result[0]["access_count"], result[0]["expired"]) == ("market_data:BTC:1m", 3, 0)


def expect_last_close(result: list[dict]) -> None:
    assert result == [{"key": "market_data:BTC:1m", "last_close": CANDLES[-1][4]},
                      {"key": "market_data:ETH:1m", "last_close": CANDLES[1][4]}]


def expect_expired(result: list[dict]) -> None:
    assert result[0]["expired_entries"] == 1 and result[0]["bytes"] > 0


EXPECTATIONS = {
    "What expires in the next minute": expect_expiring_soon,
    "Biggest entries": expect_biggest,
    "Which tags hold most bytes": expect_tag_bytes,
    "Which preload tasks fail": expect_failing_tasks,
    "Hottest keys, and whether they are still live": expect_hottest,
    "Looking inside values: the last close of each cached market-data series": expect_last_close,
    "Expired entries still on disk (removed by the background purge, or by `sqlcache purge`)": expect_expired,
}


def test_every_readme_query_is_checked() -> None:
    assert set(readme_queries()) == set(EXPECTATIONS)


@pytest.fixture
async def debugged_cache(cache: Path) -> Path:
    def failing() -> None:
        raise RuntimeError("exchange down")

    async with ResourcePool(CacheManager({"disk_cache_dir": cache})) as pool:
        pool.register_preload_task("btc", lambda: {"price": 1}, 60)
        pool.register_preload_task("eth", failing, 60)
        await pool.run_preload_task_now("btc")
        await pool.run_preload_task_now("eth")
    return cache


@pytest.mark.parametrize("title", sorted(EXPECTATIONS))
def test_readme_query(debugged_cache: Path, title: str) -> None:
    uri = (debugged_cache / "sqlcache.db").resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
        connection.row_factory = sqlite3.Row
        result = [dict(row) for row in connection.execute(readme_queries()[title])]
    EXPECTATIONS[title](result)


# ---------------------------------------------------------------- edges (issues 10 and 13)


def test_version_prints_the_package_version() -> None:
    import sqlcache as package

    result = sqlcache("--version")
    assert (result.returncode, result.stdout) == (0, f"sqlcache {package.__version__}\n")


@pytest.mark.parametrize("command", [
    ["get", "market_data:\xff"], ["keys", "--tag", "\xff"], ["keys", "--pattern", "market_data:\xfe"],
    ["invalidate", "--tag", "BTC\xff", "--yes"], ["invalidate", "--pattern", "\xff.*", "--yes"],
    ["sql", "SELECT '\xff'"],
])
def test_arguments_that_are_not_utf8_are_usage_errors(cache: Path, command: list[str]) -> None:
    before = data_digests(cache)
    # Each "\xNN" above stands for the raw byte NN: os.fsdecode/fsencode make subprocess pass it
    # as that byte in argv, as a shell would pass a file name or a paste in a Latin-1 terminal.
    raw = [os.fsdecode(word.encode("latin-1")) for word in command]
    result = sqlcache("--dir", str(cache), *raw)
    assert_clean_failure(result, 2, "is not UTF-8 text")
    assert len(result.stderr.splitlines()) == 1
    assert data_digests(cache) == before


async def test_a_directory_name_that_is_not_utf8_works(tmp_path: Path) -> None:
    strange = tmp_path / os.fsdecode(b"cache-\xff")  # a file name may hold any bytes
    await fill(strange)
    terminal = {**cli_env(), "PYTHONIOENCODING": "utf-8:strict"}  # as in a UTF-8 terminal locale
    result = subprocess.run([sys.executable, "-m", "sqlcache", "--dir", str(strange), "stats", "--json"],
                            capture_output=True, timeout=60, env=terminal)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout.decode("utf-8", "surrogateescape"))  # the name's bytes, printed back
    assert (stats["db_path"], stats["entries"]) == (str(strange / "sqlcache.db"), 6)


@pytest.mark.parametrize("statement", [
    "PRAGMA journal_mode=DELETE", "PRAGMA main.journal_mode = WAL", "PRAGMA user_version=5",
    "PRAGMA query_only = OFF", "PRAGMA wal_checkpoint(TRUNCATE)", "VACUUM", "ATTACH ':memory:' AS other",
])
def test_sql_refuses_writing_pragmas_with_the_read_only_message(cache: Path, statement: str) -> None:
    before = data_digests(cache)
    refused = sqlcache("--dir", str(cache), "sql", statement)
    assert_clean_failure(refused, 4, "opens the database read-only")
    assert "nothing was changed" in refused.stderr
    assert data_digests(cache) == before


def test_sql_still_reads_pragmas(cache: Path) -> None:
    assert as_json(sqlcache("--dir", str(cache), "sql", "PRAGMA user_version", "--json")) == [{"user_version": LATEST_SCHEMA}]
    columns = as_json(sqlcache("--dir", str(cache), "sql", "PRAGMA table_info(entries)", "--json"))
    assert "key" in [column["name"] for column in columns]
    assert as_json(sqlcache("--dir", str(cache), "sql", "PRAGMA journal_mode", "--json")) == [{"journal_mode": "wal"}]


def test_sql_invalid_regexp_says_why(cache: Path) -> None:
    result = sqlcache("--dir", str(cache), "sql", "SELECT key FROM cache_entries WHERE key REGEXP '('")
    assert_clean_failure(result, 4, "invalid regex '(' in REGEXP: missing ), unterminated subpattern")
    assert "user-defined function" not in result.stderr


@pytest.mark.parametrize("statement", ["", "   \n\t", "-- only a comment", "/* a comment */ ;", ";"])
def test_sql_without_a_statement_is_a_usage_error(cache: Path, statement: str) -> None:
    assert_clean_failure(sqlcache("--dir", str(cache), "sql", statement), 2, "no SQL statement")


def drop_root_privilege() -> None:
    """In the child: without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, root obeys file modes too."""
    if os.geteuid() == 0:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, effective from the exec
                os._exit(99)


def unprivileged(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "sqlcache", *args], capture_output=True, text=True, timeout=60,
        env=cli_env(), preexec_fn=drop_root_privilege,
    )
    if result.returncode == 99:
        pytest.skip("cannot drop the capabilities that let root ignore file modes")
    return result


def test_permission_problems_say_what_cannot_be_opened(cache: Path) -> None:
    db = cache / "sqlcache.db"
    (cache / "sqlcache.lock").unlink()
    before = data_digests(cache)
    try:
        db.chmod(0o444)
        result = unprivileged("--dir", str(cache), "purge")
        assert_clean_failure(result, 3, f"cannot open {db} for writing: Permission denied")
        assert "cannot create" not in result.stderr
        db.chmod(0)
        assert_clean_failure(unprivileged("--dir", str(cache), "stats"), 3, f"cannot read {db}: Permission denied")
        db.chmod(0o644)
        cache.chmod(0o555)  # the file is writable, the directory (for the lock file) is not
        result = unprivileged("--dir", str(cache), "invalidate", "--tag", "BTC", "--yes")
        assert_clean_failure(result, 3, "Permission denied")
        assert str(cache) in result.stderr and len(result.stderr.splitlines()) == 1
    finally:
        cache.chmod(0o755)
        db.chmod(0o644)
    assert data_digests(cache) == before


ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TIME_FIELDS = {"created_at", "expires_at", "accessed_at", "last_run", "next_run", "last_success", "last_error_at",
               "lease_until", "next_expiry", "last_write"}
BOOLEAN_FIELDS = {"expired", "enabled", "ok"}


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, which are not JSON."""
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def assert_consistent(data, path: str = "") -> None:
    """Booleans as booleans, tag lists as arrays, times as ISO-8601 UTC text, all the way down."""
    if isinstance(data, list):
        for i, item in enumerate(data):
            assert_consistent(item, f"{path}[{i}]")
    elif isinstance(data, dict):
        for name, value in data.items():
            where = f"{path}.{name}"
            if name in BOOLEAN_FIELDS:
                assert isinstance(value, bool), where
            elif name == "tags" and not isinstance(value, int):  # `stats` counts tags
                assert isinstance(value, list) and all(isinstance(tag, str) for tag in value), where
            elif name in TIME_FIELDS:
                assert value is None or ISO_TIME.match(value), (where, value)
            assert_consistent(value, where)


async def test_every_command_prints_strict_and_consistent_json(cache: Path) -> None:
    async with ResourcePool(CacheManager({"disk_cache_dir": cache})) as pool:
        await pool.cache_set("odd:floats", {"nan": float("nan"), "inf": float("inf")}, 600, tags=["odd"])
        pool.register_preload_task("btc", lambda: {"price": 1}, 60, cache_key="market_data:BTC:price", tags=["BTC"])
        assert await pool.run_preload_task_now("btc")
    where = ["--dir", str(cache)]
    commands = {
        "stats": ["stats"], "keys": ["keys"], "get": ["get", "market_data:BTC:1m"], "tags": ["tags"],
        "tasks": ["tasks"], "check": ["check"], "nan": ["get", "odd:floats"],
        "sql": ["sql", "SELECT 1e999 AS infinite, -1e999 AS negative, key FROM cache_entries"],
        "invalidate": ["invalidate", "--tag", "ETH", "--yes"], "purge": ["purge"], "vacuum": ["vacuum"],
    }
    outputs = {}
    for name, command in commands.items():
        result = sqlcache(*where, *command, "--json")
        assert result.returncode == 0, (name, result.stderr)
        outputs[name] = strict_json(result.stdout)
        if name != "sql":  # `sql` prints SQLite's own values, as its help says
            assert_consistent(outputs[name])
    assert outputs["nan"]["value"] == {"nan": None, "inf": None}
    assert outputs["sql"][0]["infinite"] is None and outputs["sql"][0]["negative"] is None
    assert outputs["tasks"][0]["tags"] == ["BTC"] and outputs["tasks"][0]["enabled"] is True
    assert outputs["check"]["ok"] is True
    helped = sqlcache("keys", "--help").stdout
    assert "true/false" in helped and "ISO-8601" in helped and "null" in helped


# What `check` must find, and SQL that breaks it: on SQLite, and on PostgreSQL where that differs
# (None: not on that engine).
DAMAGE = [
    ("counters match entries", ["UPDATE counters SET bytes = bytes + 7"],
     ["UPDATE counters SET bytes = bytes + 7 WHERE slot = 3"]),  # one of the 16 slots
    ("counters match entries", ["DELETE FROM counters"], ...),
    # A slot gone whose numbers were 0: the sums still agree, but a writer on that slot would lose its deltas.
    ("counters match entries", None,
     ["DELETE FROM counters WHERE slot = (SELECT min(slot) FROM counters WHERE entries = 0 AND bytes = 0)"]),
    ("sizes match keys and values",
     ["UPDATE entries SET size = size + 1 WHERE key = 'raw:frame'",
      "UPDATE counters SET bytes = (SELECT sum(size) FROM entries)"],  # with or without triggers
     ["UPDATE entries SET size = size + 1 WHERE key = 'raw:frame'"]),  # the trigger keeps the counters
    ("every entry has access statistics",
     ["DELETE FROM access WHERE entry_id = (SELECT id FROM entries WHERE key = 'raw:frame')"], ...),
    ("no orphan access statistics", ["INSERT INTO access (entry_id, accessed_at, access_count) VALUES (999999, 0, 0)"], ...),
    ("tag index has every entry tag", ["DELETE FROM tags WHERE tag = 'BTC'"], ...),
    ("tag index has nothing else", ["INSERT INTO tags (tag, entry_id) SELECT 'bogus', id FROM entries WHERE key = 'raw:frame'"], ...),
    ("tag index has nothing else", ["INSERT INTO tags (tag, entry_id) VALUES ('BTC', 999999)"], ...),
    ("invalidation log has no gaps", ["DELETE FROM invalidations WHERE seq = (SELECT min(seq) + 1 FROM invalidations)"], ...),
    ("PostgreSQL schema objects present", None, ["ALTER TABLE entries DISABLE TRIGGER entries_deleted"]),
    ("PostgreSQL schema objects present", None, ["DROP VIEW cache_tags"]),
]


def damage_cases() -> list:
    """DAMAGE as test cases, one per store it applies to."""
    return [
        pytest.param(store, statements, failing, id=f"{store}-{failing}-{statements[0][:24]}")
        for failing, on_sqlite, on_pg in DAMAGE
        for store, statements in (("sqlite", on_sqlite), ("postgresql", on_sqlite if on_pg is ... else on_pg))
        if statements is not None
    ]


async def damage(where: list[str], statements: list[str]) -> None:
    """Run `statements` on the cache at `where` (--dir DIR or --url URL) as a person with a SQL shell could."""
    if where[0] == "--dir":
        with contextlib.closing(sqlite3.connect(Path(where[1]) / "sqlcache.db", isolation_level=None)) as db:
            for statement in statements:
                db.execute(statement)
        return
    import asyncpg

    connection = await asyncpg.connect(where[1])
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def filled(request, cache_dir: Path) -> list[str]:
    """The location arguments of a cache filled as `cache` is, on each store in turn."""
    if request.param == "sqlite":
        await fill(cache_dir)
        return ["--dir", str(cache_dir)]
    url = request.getfixturevalue("pg_url")
    await fill(cache_dir.parent / "host", url)
    return ["--url", url]


def test_check_passes_then_finds_a_broken_counter_on_either_store(filled: list[str]) -> None:
    from pg_server import PASSWORD

    healthy = sqlcache(*filled, "check")
    assert healthy.returncode == 0 and healthy.stdout.rstrip().endswith("all checks passed"), healthy.stdout
    asyncio.run(damage(filled, ["UPDATE counters SET bytes = bytes + 7 WHERE bytes = (SELECT max(bytes) FROM counters)"]))
    broken = sqlcache(*filled, "check")
    assert broken.returncode == 1 and broken.stdout.rstrip().endswith("PROBLEMS FOUND")
    assert re.search(r"^counters match entries +FAILED +1 inconsistency$", broken.stdout, re.M)
    report = json.loads(sqlcache(*filled, "check", "--json").stdout)
    assert report["ok"] is False
    assert [check["check"] for check in report["checks"] if not check["ok"]] == ["counters match entries"]
    assert PASSWORD not in healthy.stdout + broken.stdout + broken.stderr


@pytest.mark.parametrize("filled, statements, failing", damage_cases(), indirect=["filled"])
async def test_check_finds_each_broken_invariant(filled: list[str], statements: list[str], failing: str) -> None:
    await damage(filled, statements)
    report = sqlcache(*filled, "check", "--json")
    assert report.returncode == 1, report.stderr
    assert [check["check"] for check in strict_json(report.stdout)["checks"] if not check["ok"]] == [failing]


async def test_check_compares_tags_holding_nul_exactly(cache_dir: Path) -> None:
    async with CacheManager({"disk_cache_dir": cache_dir}) as manager:
        await manager.set("grp:1", 1, 600, tags=["grp", "grp\x00A"])
    db = cache_dir / "sqlcache.db"
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as connection:
        # The tag index as it must be: one row per tag, whole (what json_each would cut at the NUL).
        connection.execute("DELETE FROM tags")
        connection.executemany("INSERT INTO tags (tag, entry_id) SELECT ?, id FROM entries", [("grp",), ("grp\x00A",)])
    healthy = sqlcache("--dir", str(cache_dir), "check")
    assert healthy.returncode == 0, healthy.stdout
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as connection:
        connection.execute("DELETE FROM tags WHERE tag = ?", ("grp\x00A",))  # only the cut "grp" is left
    report = strict_json(sqlcache("--dir", str(cache_dir), "check", "--json").stdout)
    assert [check["check"] for check in report["checks"] if not check["ok"]] == ["tag index has every entry tag"]


# ---------------------------------------------------------------- --url: a PostgreSQL cache


@pytest.fixture
async def pg_cache(pg_url: str, tmp_path: Path) -> str:
    """The URL (with its password) of a PostgreSQL cache filled as `cache` is."""
    await fill(tmp_path / "host", pg_url)
    return pg_url


async def pg_count(url: str, sql: str) -> int:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()


def test_sql_on_postgresql_reads_as_on_sqlite(pg_cache: str) -> None:
    result = as_json(sqlcache("--url", pg_cache, "sql",
                              "SELECT key, value_json::json->>'symbol' AS symbol FROM cache_entries "
                              "WHERE key ~ '^market_data:(BTC|ETH)' ORDER BY key", "--json"))
    assert result == [{"key": "market_data:BTC:1m", "symbol": "BTC"}, {"key": "market_data:ETH:1m", "symbol": "ETH"}]
    text = sqlcache("sql", "SELECT count(*) AS n, sum(size) AS total FROM cache_entries", "--url", pg_cache)
    lines = [line.split() for line in text.stdout.splitlines()]
    assert lines[0] == ["n", "total"] and lines[2][0] == "6"
    cells = as_json(sqlcache("--url", pg_cache, "sql", "SELECT sum(size) AS total, now() AS at, '\\x00ff'::bytea AS b, "
                                                      "1 AS key, 2 AS key FROM entries", "--json"))[0]
    assert isinstance(cells["total"], int) and isinstance(cells["at"], str)
    assert (cells["b"], cells["key"], cells["key:2"]) == ("<blob, 2 bytes>", 1, 2)


@pytest.mark.parametrize("statement", [
    "DELETE FROM entries", "INSERT INTO tags VALUES ('x', 1)", "UPDATE counters SET bytes = 0",
    "CREATE TABLE t (x int)", "DROP VIEW cache_tags", "SET TRANSACTION READ WRITE",
    "SELECT nextval(pg_get_serial_sequence('entries', 'id'))",
])
async def test_sql_on_postgresql_refuses_writes_as_on_sqlite(pg_cache: str, cache: Path, statement: str) -> None:
    before = await pg_count(pg_cache, "SELECT count(*) FROM entries")
    refused = sqlcache("--url", pg_cache, "sql", statement)
    assert_clean_failure(refused, 4, "refused: `sqlcache sql` opens the database read-only, so statements that "
                                     "write are not allowed")
    assert "nothing was changed" in refused.stderr
    on_sqlite = sqlcache("--dir", str(cache), "sql", "DELETE FROM entries")
    assert refused.stderr.split("(")[0] == on_sqlite.stderr.split("(")[0]  # the same message, the same code
    assert on_sqlite.returncode == refused.returncode
    assert await pg_count(pg_cache, "SELECT count(*) FROM entries") == before == 6
    assert await pg_count(pg_cache, "SELECT count(*) FROM pg_class WHERE relname = 't'") == 0


def test_sql_on_postgresql_failures_are_one_line(pg_cache: str, pg_url: str) -> None:
    assert_clean_failure(sqlcache("--url", pg_cache, "sql", "SELEC 1"), 4, "SQL failed: syntax error")
    assert_clean_failure(sqlcache("--url", pg_cache, "sql", "  -- nothing"), 2, "no SQL statement given")
    # One statement only: a COMMIT cannot end the read-only transaction before a write.
    assert_clean_failure(sqlcache("--url", pg_cache, "sql", "COMMIT; DELETE FROM entries"), 4,
                         "SQL failed: cannot insert multiple commands into a prepared statement")
    assert_clean_failure(sqlcache("--url", pg_url.rsplit("/", 1)[0] + "/postgres", "sql", "SELECT 1"), 3,
                         "is not a sqlcache database")


def test_an_unreachable_or_refusing_server_names_the_host_never_the_password(pg_url: str) -> None:
    from pg_server import PASSWORD

    wrong = pg_url.replace(PASSWORD, "Wr0ng-Secret-99")
    refused = sqlcache("--url", wrong, "sql", "SELECT 1")
    assert_clean_failure(refused, 3, "cannot connect to the PostgreSQL cache 127.0.0.1:")
    assert "Wr0ng-Secret-99" not in refused.stderr + refused.stdout and len(refused.stderr.splitlines()) == 1
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nowhere = f"postgresql://sqlcache:{PASSWORD}@127.0.0.1:{port}/cache"
    for command in (["sql", "SELECT 1"], ["get", "k"], ["tags"], ["tasks"], ["purge"], ["invalidate", "--tag", "x", "--yes"],
                    ["check"], ["vacuum"]):
        down = sqlcache("--url", nowhere, *command)
        assert_clean_failure(down, 3, f"cannot connect to the PostgreSQL cache 127.0.0.1:{port}/cache")
        assert PASSWORD not in down.stderr + down.stdout


def test_a_sqlite_url_is_the_same_as_db(cache: Path) -> None:
    db = cache / "sqlcache.db"
    for command in (["stats", "--json"], ["keys", "--json"], ["tags", "--json"], ["sql", "SELECT key FROM entries", "--json"]):
        by_url = sqlcache("--url", f"sqlite:///{db}", *command)
        by_db = sqlcache("--db", str(db), *command)
        assert by_url.returncode == 0 and by_url.stdout.replace("sqlite:///", "") == by_db.stdout
    assert_clean_failure(sqlcache("--url", "mysql://u:pw@h/d", "stats"), 2, "bad --url")
    assert_clean_failure(sqlcache("--url", f"sqlite:///{db}", "--db", str(db), "stats"), 2, "not both")


async def test_get_tags_and_tasks_on_postgresql_print_what_sqlite_prints(pg_cache: str, cache: Path) -> None:
    for command in (["get", "market_data:BTC:1m"], ["get", "raw:frame"], ["get", "pickled:set"], ["tags"], ["tasks"]):
        on_pg = as_json(sqlcache("--url", pg_cache, *command, "--json"))
        on_sqlite = as_json(sqlcache("--dir", str(cache), *command, "--json"))
        if command[0] == "get":  # written at other instants
            for entry in (on_pg, on_sqlite):
                del entry["created_at"], entry["expires_at"], entry["accessed_at"]
        assert on_pg == on_sqlite, command
    text = sqlcache("--url", pg_cache, "get", "pickled:set")
    assert text.returncode == 0 and "<pickle, " in text.stdout
    assert_clean_failure(sqlcache("--url", pg_cache, "get", "nope"), 1, "no entry for key 'nope'")
    expired = sqlcache("--url", pg_cache, "get", "market_data:SOL:1m")
    assert expired.returncode == 1 and "expired at" in expired.stderr


async def test_invalidate_and_purge_on_postgresql_go_through_the_manager(pg_cache: str, tmp_path: Path) -> None:
    async with CacheManager({"disk_cache_url": pg_cache, "disk_cache_dir": tmp_path / "other", "sync_interval": 0.05}) as other:
        assert await other.get("order_book:ETH:depth_20") is not None  # now in its memory tier
        declined = sqlcache("--url", pg_cache, "invalidate", "--tag", "order_book")
        assert declined.returncode == 1
        assert "Remove 1 entry tagged 'order_book' (1 live) from the PostgreSQL cache 127.0.0.1:" in declined.stderr
        from pg_server import PASSWORD
        assert PASSWORD not in declined.stderr
        removed = as_json(sqlcache("--url", pg_cache, "invalidate", "--tag", "order_book", "--yes", "--json"))
        assert removed["removed"] == 1
        for _ in range(100):  # the other host hears of it through the invalidation log
            if await other.get("order_book:ETH:depth_20") is None:
                break
            await asyncio.sleep(0.05)
        assert await other.get("order_book:ETH:depth_20") is None
    by_pattern = as_json(sqlcache("--url", pg_cache, "invalidate", "--pattern", r"market_data:(BTC|ETH)", "--yes", "--json"))
    assert by_pattern["removed"] == 2
    assert_clean_failure(sqlcache("--url", pg_cache, "invalidate", "--pattern", "(", "--yes"), 2, "invalid --pattern")
    purged = as_json(sqlcache("--url", pg_cache, "purge", "--json"))
    assert (purged["purged"], purged["entries"]) == (1, 2)  # SOL expired; raw:frame and pickled:set remain
    assert purged["bytes"] == await pg_count(pg_cache, "SELECT sum(size) FROM entries")


async def test_stats_and_keys_on_postgresql_show_what_sqlite_shows(pg_cache: str, cache: Path) -> None:
    from pg_server import PASSWORD

    on_pg = as_json(sqlcache("--url", pg_cache, "stats", "--json"))
    on_sqlite = as_json(sqlcache("--dir", str(cache), "stats", "--json"))
    assert on_pg.keys() == on_sqlite.keys()
    same = ("entries", "live_entries", "expired_entries", "never_expiring", "bytes", "tags", "reads_recorded",
            "invalidation_log_rows", "preload_tasks")
    assert {name: on_pg[name] for name in same} == {name: on_sqlite[name] for name in same}
    assert on_pg["file_bytes"] > 0 and PASSWORD not in on_pg["db_path"] and on_pg["db_path"].startswith("postgresql://")
    text = sqlcache("--url", pg_cache, "stats")
    assert "6 (5 live, 1 expired awaiting purge, 1 never expire)" in text.stdout and PASSWORD not in text.stdout
    for query in (["--tag", "ETH"], ["--pattern", "market_data:B"], ["--tag", "market_data", "--pattern", ".*:1m$"],
                  ["--pattern", "(?i)RAW"], ["--limit", "2"], []):
        listed_pg = as_json(sqlcache("--url", pg_cache, "keys", *query, "--json"))
        listed_sqlite = as_json(sqlcache("--dir", str(cache), "keys", *query, "--json"))
        assert listed_pg["total"] == listed_sqlite["total"], query
        columns = ("key", "tags", "size", "access_count", "codec", "expired")
        assert [{c: e[c] for c in columns} for e in listed_pg["keys"]] == \
               [{c: e[c] for c in columns} for e in listed_sqlite["keys"]], query
    assert sqlcache("--url", pg_cache, "keys", "--limit", "2").stdout.splitlines()[-1] == "... and 4 more (raise --limit)"


async def test_check_on_postgresql_compares_keys_and_tags_holding_nul_exactly(pg_url: str, tmp_path: Path) -> None:
    async with CacheManager({"disk_cache_url": pg_url, "disk_cache_dir": tmp_path / "h"}) as manager:
        await manager.set("k\x00\x01", 1, 600, tags=["grp", "grp\x00A", "\x01", "\\u0000"])
    healthy = sqlcache("--url", pg_url, "check")
    assert healthy.returncode == 0, healthy.stdout  # sizes count the key's own bytes, tags compared whole
    await damage(["--url", pg_url], ["DELETE FROM tags WHERE tag = E'grp\\x01\\x01A'"])  # the row of "grp\x00A"
    report = strict_json(sqlcache("--url", pg_url, "check", "--json").stdout)
    assert [check["check"] for check in report["checks"] if not check["ok"]] == ["tag index has every entry tag"]


async def test_vacuum_on_postgresql_keeps_every_entry_and_gives_back_the_space_of_deleted_ones(
        pg_cache: str, tmp_path: Path) -> None:
    from pg_server import PASSWORD

    async with CacheManager({"disk_cache_url": pg_cache, "disk_cache_dir": tmp_path / "h"}) as manager:
        await manager.set_many({f"bulk:{i}": "x" * 1000 for i in range(2000)}, 600, tags=["bulk"])
        assert await manager.invalidate_by_tag("bulk") == 2000
    result = as_json(sqlcache("--url", pg_cache, "vacuum", "--json"))
    assert result["bytes_after"] < result["bytes_before"] - 1_000_000  # the table's emptied end went back
    assert await pg_count(pg_cache, "SELECT count(*) FROM entries") == 6
    assert await pg_count(pg_cache, "SELECT count(*) FROM pg_stat_user_tables WHERE relname = 'entries' "
                                    "AND last_vacuum IS NOT NULL AND last_analyze IS NOT NULL") == 1
    text = sqlcache("--url", pg_cache, "vacuum")
    assert text.returncode == 0 and text.stdout.startswith("vacuumed the PostgreSQL cache 127.0.0.1:")
    assert PASSWORD not in text.stdout + text.stderr
    assert sqlcache("--url", pg_cache, "check").returncode == 0


async def test_a_role_that_may_only_read_can_check_but_not_vacuum(pg_cache: str) -> None:
    from pg_server import PASSWORD

    await damage(["--url", pg_cache], [
        "CREATE ROLE cache_reader LOGIN PASSWORD 'Reader-Pa55'",
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO cache_reader",
    ])
    reader = pg_cache.replace(f"postgres:{PASSWORD}@", "cache_reader:Reader-Pa55@")
    assert sqlcache("--url", reader, "check").returncode == 0
    refused = sqlcache("--url", reader, "vacuum")
    assert_clean_failure(refused, 4, "SQL failed: permission denied to vacuum")
    assert "Reader-Pa55" not in refused.stderr and len(refused.stderr.splitlines()) == 1


async def test_tasks_on_postgresql_have_sqlites_columns(pg_cache: str, cache: Path, tmp_path: Path) -> None:
    def failing() -> None:
        raise RuntimeError("exchange down")

    listed = []
    for config, where in (({"disk_cache_dir": cache}, ["--dir", str(cache)]),
                          ({"disk_cache_url": pg_cache, "disk_cache_dir": tmp_path / "h"}, ["--url", pg_cache])):
        async with ResourcePool(CacheManager(config)) as pool:
            pool.register_preload_task("btc", lambda: {"price": 1}, 60, cache_key="market_data:BTC:price", tags=["BTC"])
            pool.register_preload_task("eth", failing, 30)
            assert await pool.run_preload_task_now("btc")
            assert not await pool.run_preload_task_now("eth")
        listed.append(as_json(sqlcache(*where, "tasks", "--json")))
        table = sqlcache(*where, "tasks").stdout.splitlines()
        assert table[0].split()[:3] == ["name", "enabled", "interval"] and "exchange down" in table[3]
    on_sqlite, on_pg = listed
    assert [list(task) for task in on_pg] == [list(task) for task in on_sqlite]
    for pg_task, sqlite_task in zip(on_pg, on_sqlite):
        for column in ("name", "enabled", "interval", "run_count", "error_count", "last_error", "cache_key", "tags"):
            assert pg_task[column] == sqlite_task[column], column

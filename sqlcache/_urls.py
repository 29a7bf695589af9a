"""`disk_cache_url`: which engine holds the disk tier, and how to name it without its password.

Two schemes: `postgresql://` (or `postgres://`), a libpq connection URI passed to asyncpg as it
is (`postgresql://user:password@host:5432/dbname`, several `host:port` pairs separated by commas,
`?host=/socket/dir` for a Unix socket, `?password=...`, `?sslmode=...`), and `sqlite:///path`,
the SQLite store at that file (`sqlite:////abs/path` or `sqlite:///relative/path`, as SQLAlchemy
spells them). `redact` is what every message and log line shows of a URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode

POSTGRES_SCHEMES = ("postgresql", "postgres")
_HIDDEN = "***"


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed `disk_cache_url`: `engine` is 'postgresql' or 'sqlite'."""

    engine: str
    url: str
    """The URL as given (with its password): only ever handed to the driver."""
    path: Path | None = None
    """The SQLite file (sqlite URLs only)."""

    def __repr__(self) -> str:  # a repr in a traceback or a log must not show the password
        return f"DatabaseURL(engine={self.engine!r}, url={redact(self.url)!r})"

    @property
    def redacted(self) -> str:
        return redact(self.url)

    @property
    def where(self) -> str:
        """The server(s) as a message names them: `host:port[,host:port]/dbname` or the socket dir."""
        return describe_server(self.url)


class SecretURL(str):
    """A URL string whose `repr` (what a dataclass repr, a traceback or `%r` shows) hides the password."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(redact(str(self)))


def parse(url: str) -> DatabaseURL:
    """Check `url` and say which engine it selects; `ValueError` (password hidden) if it is not one."""
    if not isinstance(url, str):
        raise ValueError(f"disk_cache_url must be a string, got {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"disk_cache_url must look like postgresql://host/dbname or sqlite:///path, got {redact(url)!r}")
    if scheme in POSTGRES_SCHEMES:
        return DatabaseURL("postgresql", url)
    if scheme == "sqlite":
        # sqlite:///relative/path and sqlite:////absolute/path: no host part, the path after it.
        if not rest.startswith("/") or rest == "/":
            raise ValueError(f"a sqlite URL has no host: write sqlite:///path/to/sqlcache.db, got {url!r}")
        path, _, _ = rest[1:].partition("?")
        return DatabaseURL("sqlite", url, Path(unquote(path)))
    raise ValueError(f"disk_cache_url scheme {scheme!r} is not supported (use postgresql:// or sqlite:///), got {redact(url)!r}")


def _split(url: str) -> tuple[str, str, str, str, str]:
    """(scheme, userinfo, hosts, path, query) of a URI; hosts may be a comma-separated list,
    which `urllib.parse.urlsplit` cannot take apart (it reads `a:1,b:2` as a bad port)."""
    scheme, _, rest = url.partition("://")
    rest, _, _fragment = rest.partition("#")
    authority_end = len(rest)
    for mark in "/?":
        index = rest.find(mark)
        if index != -1:
            authority_end = min(authority_end, index)
    authority, tail = rest[:authority_end], rest[authority_end:]
    userinfo, at, hosts = authority.rpartition("@")
    if not at:
        userinfo, hosts = "", authority
    path, _, query = tail.partition("?")
    return scheme, userinfo, hosts, path, query


def redact(url: str) -> str:
    """`url` with any password replaced by `***` (in the user part and in `?password=`)."""
    if "://" not in url:
        return url
    scheme, userinfo, hosts, path, query = _split(url)
    if ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":" + _HIDDEN
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(name == "password" for name, _ in pairs):
            query = urlencode([(name, _HIDDEN if name == "password" else value) for name, value in pairs], safe="/*")
    return f"{scheme}://{userinfo + '@' if userinfo else ''}{hosts}{path}{'?' + query if query else ''}"


def describe_server(url: str) -> str:
    """The server a PostgreSQL URL points at, for messages: `host:port/dbname` (libpq's defaults
    filled in: localhost, 5432), or `/socket/dir:port/dbname`; never the user or password."""
    _, userinfo, hosts, path, query = _split(url)
    params = dict(parse_qsl(query, keep_blank_values=True))
    if "host" in params:
        hosts = params["host"] if "port" not in params else f"{params['host']}:{params['port']}"
    database = unquote(path.lstrip("/")) or params.get("dbname") or unquote(userinfo.partition(":")[0]) or "postgres"
    named = []
    for host in (unquote(hosts) or "localhost").split(","):
        has_port = "]:" in host if host.startswith("[") else ":" in host and not host.startswith("/")
        named.append(host if has_port else f"{host}:{params.get('port', '5432')}")
    return f"{','.join(named)}/{database}"


def passwords(url: str) -> list[str]:
    """The password(s) a URL carries, as written and percent-decoded, to scrub from messages."""
    _, userinfo, _, _, query = _split(url)
    found = []
    if ":" in userinfo:
        written = userinfo.partition(":")[2]
        found += [written, unquote(written)]
    found += [value for name, value in parse_qsl(query, keep_blank_values=True) if name == "password"]
    return [password for password in found if password]

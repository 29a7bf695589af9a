"""Errors sqlcache raises on purpose. Bad arguments raise the built-in TypeError / ValueError."""

from __future__ import annotations


class CacheError(Exception):
    """Base class of the disk tier's errors."""


class CacheDirectoryError(CacheError):
    """The cache directory or database file cannot be created, opened or written."""


class SchemaVersionError(CacheError):
    """The database was written by a newer sqlcache; it is left untouched."""


class CacheBusyError(CacheError):
    """Another process held the database's write lock for longer than the busy timeout."""


class StorageError(CacheError):
    """The disk tier failed to write (disk full, I/O error); nothing of the failed call was kept."""


class DatabaseUnavailableError(CacheError):
    """The database server cannot be reached, refused the connection, or went away; the message
    names the server, never the password."""


class DamagedCacheWarning(RuntimeWarning):
    """A damaged database file was set aside and a fresh cache started."""

"""The workspace state file ``.pipemake/state.db``: its connection, schema and failures.

Unlike the store (which may be shared between workspaces), this belongs to one checkout.
SQLite with JSON text, never pickle; the schema carries a version. Two big caches (walked
trees and foreach item indexes, read and rewritten on every small rebuild) are ``marshal``
bytes of plain lists, dicts, strings and numbers instead, several times faster than JSON
both ways; each is stored beside its hash and decoded only when the hash matches, so what
is decoded is always exactly what this code wrote, and anything else counts as no row.

Failing here never costs a build its report. A damaged file, or one pipemake may not write,
is an error naming it and saying what to do (the file holds only caches and notes: deleting
it is always safe, and it is never deleted for the user). On a full disk the writes — all of
them notes a later build can do without (:func:`spared`) — are skipped, so the stages' own
errors, the summary and the hooks still come; closing the file then reports the full disk
(a file that turns read-only or damaged in the middle of a build likewise). A read-only
workspace can still be read (``status``, ``dry-run``).
"""

from __future__ import annotations

import functools
import json
import marshal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .errors import AccessDenied, DatabaseDamaged, PipemakeError, os_failure
from .store import own_files, transaction

__all__ = ["STATE_FORMAT", "StateFile", "parse_json", "spared", "unmarshal"]

STATE_FORMAT = 8

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stat (
    path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER,
    ctime_ns INTEGER, hashed_at INTEGER, hash TEXT);
CREATE TABLE IF NOT EXISTS records (
    stage TEXT PRIMARY KEY, key TEXT, result TEXT, duration REAL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS placed (path TEXT PRIMARY KEY, stage TEXT, output TEXT);
CREATE TABLE IF NOT EXISTS items (stage TEXT PRIMARY KEY, hashes TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS foreach_keys (stage TEXT PRIMARY KEY, memo TEXT, key TEXT);
CREATE TABLE IF NOT EXISTS item_index (
    stage TEXT PRIMARY KEY, removals INTEGER NOT NULL, digest TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS trees (
    path TEXT PRIMARY KEY, sig TEXT, racy INTEGER, hash TEXT, data BLOB, digest TEXT);
"""


_REPAIR = (
    "delete it and run again; it holds only caches and build notes, every built output "
    "stays in the store"
)
_F = TypeVar("_F", bound=Callable[..., Any])


class _Rows(list):  # type: ignore[type-arg]
    """A query's rows, read at once."""

    def fetchone(self) -> Any:
        return self[0] if self else None


class _Connection(sqlite3.Connection):
    """A connection to the state file whose errors say which file and what to do, and whose
    queries read their rows at once, so a damaged page is found here and not by whoever
    iterates over them."""

    state_path = ""

    def execute(self, sql: str, parameters: Any = (), /) -> Any:  # type: ignore[override]
        try:
            return _Rows(super().execute(sql, parameters).fetchall())
        except sqlite3.Error as exc:
            raise _failure(exc, self.state_path) from None

    def executemany(self, sql: str, rows: Any, /) -> Any:  # type: ignore[override]
        try:
            return super().executemany(sql, rows)
        except sqlite3.Error as exc:
            raise _failure(exc, self.state_path) from None

    def executescript(self, script: str, /) -> Any:  # type: ignore[override]
        try:
            return super().executescript(script)
        except sqlite3.Error as exc:
            raise _failure(exc, self.state_path) from None


def _failure(exc: BaseException, path: str | Path) -> BaseException:
    return os_failure(exc, path, _REPAIR) or exc


def spared(method: _F) -> _F:
    """A write a build can do without (notes and caches): when the disk is full, the file
    read-only or damaged, it is skipped and the error kept for the state file's ``close``
    to raise, after the build has reported its stages, its summary and run its hooks. For
    methods of the state file, or of a part of it holding it as ``_file``."""

    @functools.wraps(method)
    def write(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except PipemakeError as exc:
            file = getattr(self, "_file", self)
            file.failure = file.failure or exc
            return None

    return write  # type: ignore[return-value]


_TABLES = ("stat", "records", "placed", "items", "item_index", "foreach_keys", "trees", "meta")


@functools.cache
def _columns() -> dict[str, list[str]]:
    """Each table's columns, as the schema makes them."""
    db = sqlite3.connect(":memory:")
    db.executescript(_SCHEMA)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    out = {t: [c[1] for c in db.execute(f"PRAGMA table_info({t})")] for t in tables}
    db.close()
    return out


def _connect(target: str | Path, uri: bool = False) -> _Connection:
    db = sqlite3.connect(target, timeout=60, isolation_level=None, factory=_Connection, uri=uri)
    return db  # type: ignore[return-value]


class StateFile:
    """Access to ``.pipemake/state.db``; opened lazily, so a command that needs none of it
    pays nothing."""

    def __init__(self, path: Path, readonly: bool = False):
        self.path = path
        self.readonly = readonly
        self._db: sqlite3.Connection | None = None
        self._version = 0
        #: why writes were skipped (a full disk, say); close() raises it
        self.failure: PipemakeError | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self._db = self._open()
            except (OSError, sqlite3.Error) as exc:
                raise _failure(exc, self.path) from None
            self._version = self._data_version()
        return self._db

    def _open(self) -> sqlite3.Connection:
        if self.readonly and not self.path.exists():
            return self._prepared(_connect(":memory:"))
        if not self.readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._prepared(self._writable())
        try:
            return self._prepared(self._writable())
        except AccessDenied:  # a read-only workspace: read the file as it is, or nothing
            try:
                db = _connect(f"{self.path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
                return self._prepared(db)
            except AccessDenied:
                return self._prepared(_connect(":memory:"))

    def _writable(self) -> sqlite3.Connection:
        own_files(str(self.path))  # a workspace copied with `cp -al`: never the original's
        db = _connect(self.path)
        db.state_path = str(self.path)
        try:
            for attempt in range(600):  # a concurrent opener holds it for a moment
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == 599:
                        raise
                    time.sleep(0.05)
            db.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            db.close()
            raise
        return db

    def _prepared(self, db: _Connection) -> _Connection:
        """``db`` with the schema of this format: a file of another format starts over
        (only caches and build notes), or reads as empty for a read-only command."""
        db.state_path = str(self.path)
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE name='format'").fetchone()
        if row is not None and row[0] != str(STATE_FORMAT):
            if self.readonly:
                db.close()
                return self._prepared(_connect(":memory:"))
            for table in _TABLES:
                db.execute(f"DROP TABLE IF EXISTS {table}")
            db.executescript(_SCHEMA)
            row = None
        if row is None:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (str(STATE_FORMAT),))
        for table, columns in _columns().items():
            if [c[1] for c in db.execute(f"PRAGMA table_info({table})")] != columns:
                db.close()
                raise DatabaseDamaged(self.path, f"its table {table} is not pipemake's", _REPAIR)
        return db

    def _data_version(self) -> int:
        assert self._db is not None
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def written_by_others(self) -> bool:
        """Whether another connection committed to the state since this one opened it."""
        return self._db is not None and self._data_version() != self._version

    def transaction(self) -> Any:
        """A context manager for one write transaction."""
        return transaction(self.db)

    def close(self) -> None:
        """Close the file; then raise why a write was skipped, if one was (a full disk:
        :class:`~pipemake.errors.DiskFull`), once."""
        if self._db is not None:
            self._db.close()
            self._db = None
        failure, self.failure = self.failure, None
        if failure is not None:
            raise failure


def parse_json(text: Any) -> Any:
    """JSON text as written, or None when it is not JSON."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def unmarshal(data: bytes) -> Any:
    """``marshal.loads`` of bytes whose hash matched (so this code wrote them); None if a
    Python without their format reads them."""
    try:
        return marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        return None

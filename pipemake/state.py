"""The workspace's own state under ``.pipemake/``: the stat cache, each stage's last-build
record and the ledger of output paths builds have placed (for orphans).

Unlike the store (which may be shared between workspaces), this belongs to one checkout.
SQLite with JSON text, never pickle; the schema carries a version. Two big caches (walked
trees and foreach item indexes, read and rewritten on every small rebuild) are ``marshal``
bytes of plain lists, dicts, strings and numbers instead, several times faster than JSON
both ways; each is stored beside its hash and decoded only when the hash matches, so what
is decoded is always exactly what this code wrote, and anything else counts as no row.

Failing here never costs a build its report. A damaged file, or one pipemake may not write,
is an error naming it and saying what to do (the file holds only caches and notes: deleting
it is always safe, and it is never deleted for the user). On a full disk the writes — all of
them notes a later build can do without — are skipped, so the stages' own errors, the
summary and the hooks still come; :meth:`WorkspaceState.close` then reports the full disk
(a file that turns read-only or damaged in the middle of a build likewise).
A read-only workspace can still be read (``status``, ``dry-run``).
"""

from __future__ import annotations

import functools
import json
import marshal
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from .errors import AccessDenied, DatabaseDamaged, PipemakeError, os_failure
from .hashing import hash_bytes
from .store import transaction

__all__ = ["STATE_FORMAT", "Brief", "StatRow", "TreeRow", "WorkspaceState", "tree_data"]

STATE_FORMAT = 8

#: dev, ino, size, mtime_ns, ctime_ns, hashed_at_ns, hash
StatRow = tuple[int, int, int, int, int, int, str]


class Brief(NamedTuple):
    """A stage's last build in brief, read for every stage at once: its key, how it ended
    (``ok``, ``failed``, ``interrupted``) and how long it took (s)."""

    key: str | None
    result: str | None
    duration: float | None


#: the brief of a stage never built
NEVER = Brief(None, None, None)


class TreeRow(NamedTuple):
    """A walked directory: its stat signature, whether a file was racy when hashed, its tree
    hash and ``data``: ``(rows, hashes, hashed_at, racy)``, the walk rows
    (:data:`pipemake.walk.Row`) sorted by relpath, each file's content hash and when it was
    hashed (ns) in the same order, and the indexes of the files that were racy then. Read
    from the database it is their ``marshal`` bytes (decoded by :func:`tree_data`); a row
    set in this process keeps them as they are until it is written."""

    sig: str
    racy: bool
    hash: str
    data: bytes | tuple[list[Any], list[str], list[int], list[int]]


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


def _spared(method: _F) -> _F:
    """A write a build can do without (notes and caches): when the disk is full, the file
    read-only or damaged, it is skipped and the error kept for :meth:`WorkspaceState.close`
    to raise, after the build has reported its stages, its summary and run its hooks."""

    @functools.wraps(method)
    def write(self: WorkspaceState, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except PipemakeError as exc:
            self.failure = self.failure or exc
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


class WorkspaceState:
    """Access to ``.pipemake/state.db``; opened lazily, so a command that needs none of it
    pays nothing."""

    def __init__(self, path: Path, readonly: bool = False):
        self.path = path
        self.readonly = readonly
        self._db: sqlite3.Connection | None = None
        self._stat: dict[str, StatRow] | None = None
        self._stat_dirty: dict[str, StatRow] = {}
        self._stat_queries = 0
        self._version = 0
        self._trees: dict[str, TreeRow | None] = {}
        self._trees_dirty: dict[str, TreeRow] = {}
        self._brief: dict[str, Brief] | None = None
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

    # stat cache --------------------------------------------------------------------------
    def stat_rows(self) -> dict[str, StatRow]:
        """Every stat-cache row, read in one query and kept in memory for the build."""
        if self._stat is None:
            self._stat = {
                r[0]: tuple(r[1:])  # type: ignore[misc]
                for r in self.db.execute("SELECT * FROM stat")
                if r[7].__class__ is str  # a damaged row is no row: the file is hashed
            }
            self._stat.update(self._stat_dirty)
        return self._stat

    def stat_row(self, path: str) -> StatRow | None:
        """One file's stat-cache row: looked up alone for the first few, then all rows are
        read at once."""
        if self._stat is None:
            self._stat_queries += 1
            if self._stat_queries <= 64:
                if path in self._stat_dirty:
                    return self._stat_dirty[path]
                r = self.db.execute("SELECT * FROM stat WHERE path=?", (path,)).fetchone()
                return tuple(r[1:]) if r and r[7].__class__ is str else None  # type: ignore[return-value]
        return self.stat_rows().get(path)

    def set_stat(self, path: str, row: StatRow) -> None:
        """Remember a file's hash for its (device, inode, size, mtime); written by flush()."""
        if self._stat is not None:
            self._stat[path] = row
        self._stat_dirty[path] = row

    def tree_row(self, path: str) -> TreeRow | None:
        """The directory ``path`` as last walked, or None."""
        if path not in self._trees:
            r = self.db.execute(
                "SELECT sig, racy, hash, data, digest FROM trees WHERE path=?", (path,)
            ).fetchone()
            # a row that is not what was written (damaged) is no row at all
            ok = (
                r is not None
                and isinstance(r[3], bytes)
                and _tree_digest(TreeRow(r[0], bool(r[1]), r[2], r[3])) == r[4]
            )
            self._trees[path] = TreeRow(r[0], bool(r[1]), r[2], r[3]) if ok else None
        return self._trees[path]

    def set_tree(self, path: str, row: TreeRow) -> None:
        """Remember a walked directory; written by flush()."""
        self._trees[path] = row
        self._trees_dirty[path] = row

    def trees_pending(self) -> bool:
        """Whether walked trees wait to be written."""
        return bool(self._trees_dirty)

    @_spared
    def flush(self) -> None:
        """Write pending stat-cache and tree rows in one transaction."""
        if (not self._stat_dirty and not self._trees_dirty) or self.readonly:
            self._stat_dirty.clear()
            self._trees_dirty.clear()
            return
        try:
            with self.transaction():
                self.db.executemany(
                    "INSERT OR REPLACE INTO stat VALUES (?,?,?,?,?,?,?,?)",
                    [(p, *row) for p, row in self._stat_dirty.items()],
                )
                rows = []
                for p, r in self._trees_dirty.items():
                    if not isinstance(r.data, bytes):
                        r = r._replace(data=marshal.dumps(r.data, 4))
                    rows.append((p, r.sig, int(r.racy), r.hash, r.data, _tree_digest(r)))
                self.db.executemany("INSERT OR REPLACE INTO trees VALUES (?,?,?,?,?,?)", rows)
        finally:  # written, or not to be tried again (only caches)
            self._stat_dirty.clear()
            self._trees_dirty.clear()

    # last-build records -----------------------------------------------------------------
    def record(self, stage: str) -> dict[str, Any] | None:
        """The stage's last-build record (key, params, input hashes, result), or None."""
        row = self.db.execute("SELECT record FROM records WHERE stage=?", (stage,)).fetchone()
        return _record(row[0]) if row else None

    def records(self) -> dict[str, dict[str, Any]]:
        """Every stage's last-build record."""
        rows = self.db.execute("SELECT stage, record FROM records")
        return {s: rec for s, r in rows if (rec := _record(r)) is not None}

    def brief(self) -> dict[str, Brief]:
        """Every stage's last key, result and duration, without reading the whole records
        (read once; later writes keep the copy current)."""
        if self._brief is None:
            self._brief = {
                s: Brief(_str(k), _str(r), d if isinstance(d, int | float) else None)
                for s, k, r, d in self.db.execute(
                    "SELECT stage, key, result, duration FROM records"
                )
            }
        return self._brief

    @_spared
    def set_record(self, stage: str, record: dict[str, Any]) -> None:
        """Write a stage's last-build record (key, key document, result, duration, …)."""
        if self.readonly:
            return
        brief = Brief(record.get("key"), record.get("result"), record.get("duration"))
        self.db.execute(
            "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?)",
            (stage, *brief, json.dumps(record, sort_keys=True)),
        )
        if self._brief is not None:
            self._brief[stage] = brief

    def item_hashes(self, stage: str) -> dict[str, str] | None:
        """A foreach stage's items at its last build (relpath → content hash)."""
        row = self.db.execute("SELECT hashes FROM items WHERE stage=?", (stage,)).fetchone()
        hashes = _json(row[0]) if row else None
        ok = isinstance(hashes, dict) and all(isinstance(h, str) for h in hashes.values())
        return hashes if ok else None

    @_spared
    def set_item_hashes(self, stage: str, hashes: dict[str, str]) -> None:
        if self.readonly:
            return
        self.db.execute("INSERT OR REPLACE INTO items VALUES (?, ?)", (stage, json.dumps(hashes)))

    def foreach_key(self, stage: str) -> tuple[str, str] | None:
        """A foreach stage's last key and what it was computed from (base key and item
        source, hashed together)."""
        row = self.db.execute(
            "SELECT memo, key FROM foreach_keys WHERE stage=?", (stage,)
        ).fetchone()
        return (row[0], row[1]) if row and _str(row[0]) and _str(row[1]) else None

    @_spared
    def set_foreach_key(self, stage: str, memo: str, key: str) -> None:
        if self.readonly:
            return
        self.db.execute("INSERT OR REPLACE INTO foreach_keys VALUES (?, ?, ?)", (stage, memo, key))

    def item_index(self, stage: str, removals: int) -> tuple[dict[str, str], dict[str, Any]] | None:
        """A foreach stage's items as its last run assembled them: (relpath → item key,
        relpath → its action entry), so a rerun of a few items need not read every item's
        entry from the store; None when there is none, when anything was removed from the
        store since it was written (``removals`` differs), or when it is not exactly what
        was written (its hash is kept beside it)."""
        row = self.db.execute(
            "SELECT removals, digest, data FROM item_index WHERE stage=?", (stage,)
        ).fetchone()
        if row is None or row[0] != removals or not isinstance(row[2], bytes):
            return None
        if hash_bytes(row[2]) != row[1]:
            return None
        data = _unmarshal(row[2])
        ok = (
            type(data) is tuple
            and len(data) == 2
            and type(data[0]) is dict
            and type(data[1]) is dict
            and data[0].keys() == data[1].keys()
            and all(type(e) is dict and "outputs" in e for e in data[1].values())
        )
        return data if ok else None  # type: ignore[return-value]

    @_spared
    def set_item_index(
        self, stage: str, keys: dict[str, str], entries: dict[str, Any], removals: int
    ) -> None:
        if self.readonly:
            return
        try:
            data = marshal.dumps((keys, entries), 4)
        except ValueError:  # a value of a type marshal lacks: no index, the store answers
            self.db.execute("DELETE FROM item_index WHERE stage=?", (stage,))
            return
        self.db.execute(
            "INSERT OR REPLACE INTO item_index VALUES (?, ?, ?, ?)",
            (stage, removals, hash_bytes(data), data),
        )

    # placed outputs ---------------------------------------------------------------------
    def placed(self) -> dict[str, tuple[str, str]]:
        """Every output path a build has placed: path → (stage, output name)."""
        return {p: (s, o) for p, s, o in self.db.execute("SELECT path, stage, output FROM placed")}

    @_spared
    def set_placed(self, items: Iterable[tuple[str, str, str]]) -> None:
        if self.readonly:
            return
        self.db.executemany("INSERT OR REPLACE INTO placed VALUES (?,?,?)", list(items))

    @_spared
    def forget_placed(self, paths: Iterable[str]) -> None:
        self.db.executemany("DELETE FROM placed WHERE path=?", [(p,) for p in paths])

    def transaction(self) -> Any:
        """A context manager for one write transaction."""
        return transaction(self.db)

    def close(self) -> None:
        """Write what is pending and close; then raise why a write was skipped, if one was
        (a full disk: :class:`~pipemake.errors.DiskFull`), once."""
        try:
            self.flush()
        finally:
            if self._db is not None:
                self._db.close()
                self._db = None
        failure, self.failure = self.failure, None
        if failure is not None:
            raise failure


def _json(text: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


#: what a last-build record holds, and the types its readers rely on
_RECORD_TYPES: dict[str, Any] = {
    "key": str, "doc": dict, "failed_doc": dict, "result": str, "error": str,
    "duration": (int, float), "finished": (int, float),
}  # fmt: skip


def _record(text: Any) -> dict[str, Any] | None:
    """A last-build record as written, or None when the row is damaged (then the stage
    simply has no record: it is decided from the store, and the next build writes one)."""
    rec = _json(text)
    if not isinstance(rec, dict):
        return None
    for name, kind in _RECORD_TYPES.items():
        if rec.get(name) is not None and not isinstance(rec[name], kind):
            return None
    return rec


def _tree_digest(r: TreeRow) -> str:
    assert isinstance(r.data, bytes)
    head = f"{r.sig}\0{int(r.racy)}\0{r.hash}\0".encode("utf-8", "surrogateescape")
    return hash_bytes(head + r.data)


def tree_data(row: TreeRow) -> tuple[list[Any], list[str], list[int], list[int]] | None:
    """A tree row's ``(rows, hashes, hashed_at, racy)``, or None if they cannot be read."""
    data = row.data if isinstance(row.data, tuple) else _unmarshal(row.data)
    if type(data) is tuple and len(data) == 4 and all(type(x) is list for x in data):
        if len(data[0]) == len(data[1]) == len(data[2]):
            return data  # type: ignore[return-value]
    return None


def _unmarshal(data: bytes) -> Any:
    """``marshal.loads`` of bytes whose hash matched (so this code wrote them); None if a
    Python without their format reads them."""
    try:
        return marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        return None

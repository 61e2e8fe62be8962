"""The workspace's own state under ``.pipemake/``: the stat cache, each stage's last-build
record and the ledger of output paths builds have placed (for orphans).

Unlike the store (which may be shared between workspaces), this belongs to one checkout.
SQLite with JSON text, never pickle; the schema carries a version. Two big caches (walked
trees and foreach item indexes, read and rewritten on every small rebuild) are ``marshal``
bytes of plain lists, dicts, strings and numbers instead, several times faster than JSON
both ways; each is stored beside its hash and decoded only when the hash matches, so what
is decoded is always exactly what this code wrote, and anything else counts as no row.
"""

from __future__ import annotations

import json
import marshal
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from .hashing import hash_bytes
from .store import transaction

__all__ = ["STATE_FORMAT", "StatRow", "TreeRow", "WorkspaceState", "tree_data"]

STATE_FORMAT = 8

#: dev, ino, size, mtime_ns, ctime_ns, hashed_at_ns, hash
StatRow = tuple[int, int, int, int, int, int, str]


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
        self._brief: dict[str, tuple[str | None, str | None, float | None]] | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            if self.readonly and not self.path.exists():
                self._db = sqlite3.connect(":memory:")
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
                for attempt in range(600):  # a concurrent opener holds it for a moment
                    try:
                        self._db.execute("PRAGMA journal_mode=WAL")
                        break
                    except sqlite3.OperationalError as exc:
                        if "locked" not in str(exc) or attempt == 599:
                            raise
                        time.sleep(0.05)
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE name='format'").fetchone()
            if row is not None and row[0] != str(STATE_FORMAT):
                # Only caches and build notes: start over rather than misread another format.
                for table in (
                    "stat",
                    "records",
                    "placed",
                    "items",
                    "item_index",
                    "foreach_keys",
                    "trees",
                    "meta",
                ):
                    self._db.execute(f"DROP TABLE IF EXISTS {table}")
                self._db.executescript(_SCHEMA)
                row = None
            if row is None:
                self._db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('format', ?)", (str(STATE_FORMAT),)
                )
            self._version = self._data_version()
        return self._db

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
                return tuple(r[1:]) if r else None  # type: ignore[return-value]
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

    def flush(self) -> None:
        """Write pending stat-cache and tree rows in one transaction."""
        if (not self._stat_dirty and not self._trees_dirty) or self.readonly:
            self._stat_dirty.clear()
            self._trees_dirty.clear()
            return
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
        self._stat_dirty.clear()
        self._trees_dirty.clear()

    # last-build records -----------------------------------------------------------------
    def record(self, stage: str) -> dict[str, Any] | None:
        """The stage's last-build record (key, params, input hashes, result), or None."""
        row = self.db.execute("SELECT record FROM records WHERE stage=?", (stage,)).fetchone()
        return json.loads(row[0]) if row else None

    def records(self) -> dict[str, dict[str, Any]]:
        """Every stage's last-build record."""
        return {s: json.loads(r) for s, r in self.db.execute("SELECT stage, record FROM records")}

    def brief(self) -> dict[str, tuple[str | None, str | None, float | None]]:
        """Every stage's last key, result and duration, without reading the whole records
        (read once; later writes keep the copy current)."""
        if self._brief is None:
            self._brief = {
                s: (k, r, d)
                for s, k, r, d in self.db.execute(
                    "SELECT stage, key, result, duration FROM records"
                )
            }
        return self._brief

    def set_record(self, stage: str, record: dict[str, Any]) -> None:
        """Write a stage's last-build record (key, key document, result, duration, …)."""
        if self.readonly:
            return
        brief = (record.get("key"), record.get("result"), record.get("duration"))
        self.db.execute(
            "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?)",
            (stage, *brief, json.dumps(record, sort_keys=True)),
        )
        if self._brief is not None:
            self._brief[stage] = brief

    def item_hashes(self, stage: str) -> dict[str, str] | None:
        """A foreach stage's items at its last build (relpath → content hash)."""
        row = self.db.execute("SELECT hashes FROM items WHERE stage=?", (stage,)).fetchone()
        return json.loads(row[0]) if row else None

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
        return (row[0], row[1]) if row else None

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

    def set_placed(self, items: Iterable[tuple[str, str, str]]) -> None:
        if self.readonly:
            return
        self.db.executemany("INSERT OR REPLACE INTO placed VALUES (?,?,?)", list(items))

    def forget_placed(self, paths: Iterable[str]) -> None:
        self.db.executemany("DELETE FROM placed WHERE path=?", [(p,) for p in paths])

    def transaction(self) -> Any:
        """A context manager for one write transaction."""
        return transaction(self.db)

    def close(self) -> None:
        self.flush()
        if self._db is not None:
            self._db.close()
            self._db = None


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

"""The stat cache: each file's content hash under its (device, inode, size, mtime, ctime),
and each walked directory as one row (see :mod:`pipemake.fshash`), kept in the workspace
state file (:mod:`pipemake.state`). Rows are read at once and written in one transaction by
:meth:`StatCache.flush`; tree rows are ``marshal`` bytes beside their hash, decoded only when
the hash matches.
"""

from __future__ import annotations

import marshal
from typing import TYPE_CHECKING, Any, NamedTuple

from .hashing import hash_bytes
from .statedb import spared, unmarshal

if TYPE_CHECKING:
    from .statedb import StateFile

__all__ = ["StatCache", "StatRow", "TreeRow", "tree_data"]

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


class StatCache:
    """The stat-cache rows of one workspace state file, memoized for the build."""

    def __init__(self, file: StateFile):
        self._file = file
        self._stat: dict[str, StatRow] | None = None
        self._stat_dirty: dict[str, StatRow] = {}
        self._stat_queries = 0
        self._trees: dict[str, TreeRow | None] = {}
        self._trees_dirty: dict[str, TreeRow] = {}

    def stat_rows(self) -> dict[str, StatRow]:
        """Every stat-cache row, read in one query and kept in memory for the build."""
        if self._stat is None:
            self._stat = {
                r[0]: tuple(r[1:])  # type: ignore[misc]
                for r in self._file.db.execute("SELECT * FROM stat")
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
                r = self._file.db.execute("SELECT * FROM stat WHERE path=?", (path,)).fetchone()
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
            r = self._file.db.execute(
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

    @spared
    def flush(self) -> None:
        """Write pending stat-cache and tree rows in one transaction."""
        if (not self._stat_dirty and not self._trees_dirty) or self._file.readonly:
            self._stat_dirty.clear()
            self._trees_dirty.clear()
            return
        try:
            with self._file.transaction():
                self._file.db.executemany(
                    "INSERT OR REPLACE INTO stat VALUES (?,?,?,?,?,?,?,?)",
                    [(p, *row) for p, row in self._stat_dirty.items()],
                )
                rows = []
                for p, r in self._trees_dirty.items():
                    if not isinstance(r.data, bytes):
                        r = r._replace(data=marshal.dumps(r.data, 4))
                    rows.append((p, r.sig, int(r.racy), r.hash, r.data, _tree_digest(r)))
                self._file.db.executemany("INSERT OR REPLACE INTO trees VALUES (?,?,?,?,?,?)", rows)
        finally:  # written, or not to be tried again (only caches)
            self._stat_dirty.clear()
            self._trees_dirty.clear()


def _tree_digest(r: TreeRow) -> str:
    assert isinstance(r.data, bytes)
    head = f"{r.sig}\0{int(r.racy)}\0{r.hash}\0".encode("utf-8", "surrogateescape")
    return hash_bytes(head + r.data)


def tree_data(row: TreeRow) -> tuple[list[Any], list[str], list[int], list[int]] | None:
    """A tree row's ``(rows, hashes, hashed_at, racy)``, or None if they cannot be read."""
    data = row.data if isinstance(row.data, tuple) else unmarshal(row.data)
    if type(data) is tuple and len(data) == 4 and all(type(x) is list for x in data):
        if len(data[0]) == len(data[1]) == len(data[2]):
            return data  # type: ignore[return-value]
    return None

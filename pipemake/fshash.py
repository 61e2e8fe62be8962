"""Content hashes of workspace paths: stat first, hash only what changed.

A file's hash is remembered under its path with (device, inode, size, mtime_ns, ctime_ns);
a later lookup with the same five values trusts it without reading. A copied tree has new
inodes, so it is rehashed, never trusted; a rewrite that restores size and mtime (``cp -p``
onto an existing file) still changes the ctime, which no tool can set. An entry is trusted
only when the file's mtime is at least a second older than the moment it was hashed, so a
write within the filesystem's timestamp granularity cannot hide behind an unchanged mtime.

A directory is remembered as a whole: its *stat signature* (the hash of every file's
relpath, device, inode, size, mtime, ctime and executable bit), its tree hash, and every
file's stat row with its hash. When a walk gives the same signature and no file was racy
when hashed, the stored hash is the answer (entries built only if asked for), with no
per-file lookups; otherwise the walked rows are compared with the stored ones (in order,
then by name for the few that differ), and only files whose row is new (or was racy when
hashed) are read.
"""

from __future__ import annotations

import bisect
import operator
import os
import stat as stat_mod
import sys
import time
from collections.abc import Sequence
from typing import Any

from .hashing import hash_file, normalize_mode, tree_hash
from .state import TreeRow, WorkspaceState, tree_data
from .walk import BadPath, LinkView, NotRegular, Row, signature, walk

__all__ = ["BadName", "Entry", "Hasher", "NotRegular", "PathInfo", "check_names"]

Entry = Sequence[Any]  # [relpath, hash, size, mode]
_RACY_NS = 1_000_000_000
_MTIME = operator.itemgetter(4)


class PathInfo:
    """What a path holds: a file (``hash``, ``size``, ``mode``) or a directory (``entries``,
    and ``hash`` the tree hash), or nothing (``kind == "missing"``). A directory's entries
    are built (from its stored tree row) only when asked for."""

    __slots__ = ("kind", "hash", "size", "mode", "_entries", "_row")

    def __init__(
        self,
        kind: str,
        hash: str = "",
        size: int = 0,
        mode: int = 0o644,
        entries: list[Entry] | None = None,
        row: TreeRow | None = None,
    ):
        self.kind = kind
        self.hash = hash
        self.size = size
        self.mode = mode
        self._entries = entries
        self._row = row

    @property
    def entries(self) -> list[Entry] | None:
        if self._entries is None and self._row is not None:
            data = tree_data(self._row)
            self._entries = _entries(data[0], data[1]) if data is not None else None
            self._row = None
        return self._entries


class BadName(BadPath):
    """A file name that is not text (not valid UTF-8): manifests, keys and the state keep
    names as text, so such a file is refused, named, rather than half handled."""


def check_names(names: Any, where: str) -> None:
    """Raise :class:`BadName` for the first of ``names`` (relative to ``where``) that is not
    valid UTF-8 (``os.scandir`` gives such bytes as lone surrogates)."""
    for name in names:
        if not name.isascii():
            try:
                name.encode()
            except UnicodeEncodeError:
                raw = os.fsencode(os.path.join(where, name))
                shown = raw.decode("utf-8", "backslashreplace")
                if _utf8(raw):  # UTF-8 this locale cannot read (LC_ALL=C PYTHONUTF8=0)
                    raise BadName(
                        f"the file name {shown} is UTF-8, which this locale's encoding "
                        f"({sys.getfilesystemencoding()}) cannot read: run pipemake under a "
                        "UTF-8 locale (LC_ALL=C.UTF-8) or with PYTHONUTF8=1"
                    ) from None
                raise BadName(
                    f"the file name {shown} is not valid UTF-8: pipemake keeps file names as "
                    "text; rename it (convmv converts whole trees)"
                ) from None


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _read_hash(path: str, size: int) -> str:
    """``hash_file``; a file that cannot be read (permissions, or gone since it was listed)
    raises :class:`BadPath`."""
    try:
        return hash_file(path, size)
    except FileNotFoundError:
        raise BadPath(f"{path} was removed while pipemake read it; build again") from None
    except (PermissionError, IsADirectoryError) as exc:
        raise BadPath(f"cannot read {path}: {exc.strerror}; make it readable") from None


def _regular(path: str, st: os.stat_result) -> None:
    """Raise :class:`NotRegular` unless ``st`` is a regular file's: reading a device such as
    ``/dev/zero`` never ends, and opening a FIFO waits for a writer."""
    mode = st.st_mode
    if not stat_mod.S_ISREG(mode):
        kind = "a FIFO" if stat_mod.S_ISFIFO(mode) else "a socket" if stat_mod.S_ISSOCK(mode) \
            else "a device"  # fmt: skip
        raise NotRegular(path, kind)


def _entries(rows: list[Any], hashes: list[str]) -> list[Entry]:
    """Manifest entries from walk rows sorted by relpath and their content hashes."""
    return [[r[0], h, r[3], 0o755 if r[6] else 0o644] for r, h in zip(rows, hashes, strict=True)]


class Hasher:
    """Hashes files and trees under a root, memoized for the build and via the stat cache."""

    def __init__(
        self, root: str, state: WorkspaceState | None = None, view: LinkView | None = None
    ):
        self.root = root
        self.state = state
        #: staged outputs seen from their final paths (hashing what a stage wrote): links
        #: in them are resolved as from there, see :class:`~pipemake.walk.LinkView`
        self.view = view
        #: path → where to read it, for the files reached through a link under ``view``
        self._src: dict[str, str] = {}
        self.reads = 0  # files actually read: the tests count them
        #: path → (dev, ino, size, mtime_ns, ctime_ns), hash, hashed_at: what this build read
        self._memo: dict[str, tuple[tuple[int, ...], str, int]] = {}
        #: every path looked at: ("f", dev, ino, size, mtime_ns, ctime_ns), ("d", signature,
        #: newest mtime_ns, files) or ("m",) for missing — what a no-op snapshot must find
        #: unchanged
        self.seen: dict[str, tuple[Any, ...]] = {}
        #: tree → what its walk left out as holding no file (``(relpath, what it is)``), for
        #: the trees that changed since they were last walked: what a build warns of
        self.left_out: dict[str, list[tuple[str, str]]] = {}

    def _abs(self, rel: str) -> str:
        return rel if os.path.isabs(rel) else os.path.join(self.root, rel)

    def source(self, rel: str) -> str:
        """Where to read the file hashed as ``rel`` (a file of a tree: ``TREE/RELPATH``):
        its path, or, reached through a link under :attr:`view`, a handle to it."""
        return self._src.get(rel) or self._abs(rel)

    def file_hash(self, rel: str, st: os.stat_result) -> str:
        """The content hash of the file at ``rel`` whose stat is ``st``."""
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        self.seen[rel] = ("f", *sig)
        memo = self._memo.get(rel)
        if memo is not None and memo[0] == sig:
            return memo[1]
        if self.state is not None:
            row = self.state.stats.stat_row(rel)
            if row is not None and row[:5] == sig and st.st_mtime_ns < row[5] - _RACY_NS:
                self._memo[rel] = (sig, row[6], row[5])
                return row[6]
        hashed_at = time.time_ns()
        digest = _read_hash(self.source(rel), st.st_size)
        self.reads += 1
        self._memo[rel] = (sig, digest, hashed_at)
        if self.state is not None:
            self.state.stats.set_stat(rel, (*sig, hashed_at, digest))
        return digest

    def info(self, rel: str) -> PathInfo:
        """Hash whatever is at ``rel`` (relative to the root, or absolute)."""
        full = self._abs(rel)
        if self.view is not None and os.path.islink(full):
            target, handle, st = self.view.follow(self.view.virtual(full))
            if stat_mod.S_ISDIR(st.st_mode):
                return self._tree_info(rel, target, handle)
            _regular(full, st)
            self._src[rel] = handle
            return PathInfo("file", self.file_hash(rel, st), st.st_size, normalize_mode(st.st_mode))
        try:
            st = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            self.seen[rel] = ("m",)
            return PathInfo("missing")
        if stat_mod.S_ISDIR(st.st_mode):
            return self.tree_info(rel)
        _regular(full, st)
        return PathInfo("file", self.file_hash(rel, st), st.st_size, normalize_mode(st.st_mode))

    def recheck(self, rel: str) -> str | None:
        """The content hash of ``rel`` now (None when it is gone), for checking that an input
        did not change while a stage ran: a file whose stat moved since this build hashed
        it, or that was modified within the timestamp granularity of that hashing, is read
        again; an unchanged one is not."""
        full = self._abs(rel)
        try:
            st = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat_mod.S_ISDIR(st.st_mode):
            return self.tree_info(rel).hash
        _regular(full, st)
        memo = self._memo.get(rel)
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if memo is not None and memo[0] == sig and st.st_mtime_ns < memo[2] - _RACY_NS:
            return memo[1]
        if memo is None:
            return self.file_hash(rel, st)
        hashed_at = time.time_ns()
        digest = _read_hash(full, st.st_size)
        self.reads += 1
        self._memo[rel] = (sig, digest, hashed_at)
        return digest

    def tree(self, rel: str) -> list[Entry]:
        """Manifest entries ``[relpath, hash, size, mode]`` of every file under the directory
        ``rel``, sorted by relpath."""
        return self.tree_info(rel).entries or []

    def tree_info(self, rel: str) -> PathInfo:
        """The directory ``rel`` as a PathInfo: tree hash and (lazy) entries."""
        return self._tree_info(rel, None, None)

    def _tree_info(self, rel: str, vbase: str | None, read: str | None) -> PathInfo:
        where = rel  # what a message calls the folder
        left: list[tuple[str, str]] = []
        if self.view is None:
            rows = walk(self._abs(rel), left)
        else:  # a staged output: links resolved as from its final path
            base = self._abs(rel)
            vbase = vbase or self.view.virtual(base)
            where = self.view.shown(vbase)
            rows, sources = self.view.walk(vbase, read or base)
            self._src.update((f"{rel}/{name}", path) for name, path in sources.items())
        sig = signature(rows, left)
        self.seen[rel] = ("d", sig, _MTIME(max(rows, key=_MTIME)) if rows else 0, len(rows))
        row = self.state.stats.tree_row(rel) if self.state is not None else None
        if left and (row is None or row.sig != sig):
            self.left_out[rel] = left
        if row is not None and row.sig == sig and not row.racy:
            return PathInfo("dir", row.hash, 0, 0o755, row=row)
        rows.sort()
        check_names((r[0] for r in rows), where)  # a new or changed tree: names not seen yet
        data = tree_data(row) if row is not None else None
        if data is not None and len(data[0]) == len(rows):
            # the same files in the same order (the usual case): only the rows that differ
            # from the last walk's, and the files that were racy then, are looked at
            old, old_hashes, old_ats, was_racy = data
            hashes, ats = list(old_hashes), list(old_ats)
            check = [i for i in was_racy if i < len(rows) and rows[i] == old[i]]
            for i, ne in enumerate(map(operator.ne, rows, old)):
                if ne:  # changed, or shifted by a file added and another removed
                    r = rows[i]
                    j = bisect.bisect_left(old, (r[0],))
                    if j < len(old) and old[j] == r and r[4] < old_ats[j] - _RACY_NS:
                        hashes[i], ats[i] = old_hashes[j], old_ats[j]
                    else:
                        check.append(i)
        else:
            # what the last walk knew, by the whole stat row: an unchanged file is one lookup
            known = {}
            if data is not None:
                known = dict(zip(data[0], zip(data[1], data[2], strict=True), strict=True))
            hashes, ats, check = [], [], []
            for i, r in enumerate(rows):
                k = known.get(r)
                hashes.append(k[0] if k is not None else "")
                ats.append(k[1] if k is not None else 0)
                if k is None or r[4] >= k[1] - _RACY_NS:
                    check.append(i)
        racy: list[int] = []
        for i in check:
            r = rows[i]
            hashes[i], ats[i] = self._tree_file(rel, r, data is None)
            if r[4] >= ats[i] - _RACY_NS:
                racy.append(i)
        entries = _entries(rows, hashes)
        digest = tree_hash(entries)
        if self.state is not None:
            # encoded when written (off the critical path); kept as is for this process
            self.state.stats.set_tree(
                rel, TreeRow(sig, bool(racy), digest, (rows, hashes, ats, racy))
            )
        return PathInfo("dir", digest, 0, 0o755, entries)

    def _tree_file(self, rel: str, r: Row, no_row: bool) -> tuple[str, int]:
        """The hash of one file of a tree that its last walk did not vouch for, and when it
        was hashed: from this build's memo, the per-file stat cache (a tree without a row),
        or read."""
        name, dev, ino, fsize, mtime, ctime, _x = r
        fsig = (dev, ino, fsize, mtime, ctime)
        key = f"{rel}/{name}" if rel else name
        memo = self._memo.get(key)
        if memo is not None and memo[0] == fsig:
            return memo[1], memo[2]
        if no_row and self.state is not None:
            old = self.state.stats.stat_row(key)
            if old is not None and old[:5] == fsig and mtime < old[5] - _RACY_NS:
                return old[6], old[5]
        hashed_at = time.time_ns()
        h = _read_hash(self._src.get(key) or os.path.join(self._abs(rel), name), fsize)
        self.reads += 1
        self._memo[key] = (fsig, h, hashed_at)
        return h, hashed_at

    def flush(self) -> None:
        """Persist new stat-cache rows."""
        if self.state is not None:
            self.state.flush()

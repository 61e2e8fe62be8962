"""Content hashes of workspace paths: stat first, hash only what changed.

A file's hash is remembered under its path with (device, inode, size, mtime_ns); a later
lookup with the same four values trusts it without reading. A copied tree has new inodes,
so it is rehashed, never trusted. An entry is trusted only when the file's mtime is at least
a second older than the moment it was hashed, so a write within the filesystem's timestamp
granularity cannot hide behind an unchanged mtime.
"""

from __future__ import annotations

import os
import stat as stat_mod
import time
from dataclasses import dataclass

from .hashing import hash_file, normalize_mode, tree_hash
from .state import WorkspaceState

__all__ = ["Entry", "Hasher", "PathInfo"]

Entry = tuple[str, str, int, int]  # relpath, hash, size, mode
_RACY_NS = 1_000_000_000


@dataclass
class PathInfo:
    """What a path holds: a file (``hash``, ``size``, ``mode``) or a directory (``entries``,
    and ``hash`` the tree hash), or nothing (``kind == "missing"``)."""

    kind: str
    hash: str = ""
    size: int = 0
    mode: int = 0o644
    entries: list[Entry] | None = None


class Hasher:
    """Hashes files and trees under a root, memoized for the build and via the stat cache."""

    def __init__(self, root: str, state: WorkspaceState | None = None):
        self.root = root
        self.state = state
        self.reads = 0  # files actually read: the tests count them
        self._memo: dict[str, tuple[tuple[int, int, int, int], str]] = {}

    def _abs(self, rel: str) -> str:
        return rel if os.path.isabs(rel) else os.path.join(self.root, rel)

    def file_hash(self, rel: str, st: os.stat_result) -> str:
        """The content hash of the file at ``rel`` whose stat is ``st``."""
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        memo = self._memo.get(rel)
        if memo is not None and memo[0] == sig:
            return memo[1]
        if self.state is not None:
            row = self.state.stat_rows().get(rel)
            if row is not None and row[:4] == sig and st.st_mtime_ns < row[4] - _RACY_NS:
                self._memo[rel] = (sig, row[5])
                return row[5]
        hashed_at = time.time_ns()
        digest = hash_file(self._abs(rel), st.st_size)
        self.reads += 1
        self._memo[rel] = (sig, digest)
        if self.state is not None:
            self.state.set_stat(rel, (*sig, hashed_at, digest))
        return digest

    def info(self, rel: str) -> PathInfo:
        """Hash whatever is at ``rel`` (relative to the root, or absolute)."""
        full = self._abs(rel)
        try:
            st = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            return PathInfo("missing")
        if stat_mod.S_ISDIR(st.st_mode):
            entries = self.tree(rel)
            return PathInfo("dir", tree_hash(entries), sum(e[2] for e in entries), 0o755, entries)
        return PathInfo("file", self.file_hash(rel, st), st.st_size, normalize_mode(st.st_mode))

    def tree(self, rel: str) -> list[Entry]:
        """Manifest entries of every file under the directory ``rel``, sorted by relpath."""
        entries: list[Entry] = []
        base = self._abs(rel)
        prefix = f"{rel}/" if rel else ""
        rows = self.state.stat_rows() if self.state is not None else {}
        memo = self._memo
        stack = [""]
        while stack:
            sub = stack.pop()
            try:
                it = os.scandir(os.path.join(base, sub) if sub else base)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with it:
                for de in it:
                    name = f"{sub}/{de.name}" if sub else de.name
                    if de.is_dir():
                        stack.append(name)
                        continue
                    try:
                        st = de.stat()
                    except FileNotFoundError:
                        continue  # a dangling symlink holds nothing to hash
                    key = prefix + name
                    sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                    row = rows.get(key)
                    if row is not None and row[:4] == sig and st.st_mtime_ns < row[4] - _RACY_NS:
                        h = row[5]
                        memo[key] = (sig, h)
                    else:
                        h = self.file_hash(key, st)
                    entries.append((name, h, st.st_size, 0o755 if st.st_mode & 0o111 else 0o644))
        entries.sort()
        return entries

    def flush(self) -> None:
        """Persist new stat-cache rows."""
        if self.state is not None:
            self.state.flush()

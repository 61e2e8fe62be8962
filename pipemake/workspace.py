"""Outputs in the workspace: staging, hashing what a stage wrote, placing it atomically,
checking workspace outputs against a manifest, and restoring them from the store.

Nothing is ever written straight to an output path: work happens in a staging directory
under ``.pipemake/tmp`` (same filesystem, so placing is a rename), and a restored output is
assembled there in full before it replaces what the workspace holds.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .fshash import Hasher, PathInfo
from .store import Store

__all__ = ["Workspace", "manifest_of", "manifest_hash", "sub_manifest"]


def manifest_of(info: PathInfo) -> dict[str, Any]:
    """The JSON manifest of a hashed path (what an action-cache entry stores per output)."""
    if info.kind == "file":
        return {"kind": "file", "hash": info.hash, "size": info.size, "mode": info.mode}
    return {"kind": "dir", "hash": info.hash, "entries": [list(e) for e in info.entries or []]}


def manifest_hash(manifest: dict[str, Any]) -> str:
    """The content hash of an output as downstream stages see it."""
    return str(manifest["hash"])


def sub_manifest(manifest: dict[str, Any], sub: str) -> dict[str, Any] | None:
    """The manifest of the path ``sub`` inside a directory output, or None if absent."""
    from .hashing import tree_hash

    if not sub or sub == ".":
        return manifest
    if manifest["kind"] != "dir":
        return None
    prefix = sub.rstrip("/") + "/"
    entries = [e for e in manifest["entries"] if e[0].startswith(prefix)]
    for e in manifest["entries"]:
        if e[0] == sub:
            return {"kind": "file", "hash": e[1], "size": e[2], "mode": e[3]}
    if not entries:
        return None
    rel = [[e[0][len(prefix) :], *e[1:]] for e in entries]
    return {"kind": "dir", "hash": tree_hash(rel), "entries": rel}


class Workspace:
    """The project root and its ``.pipemake`` folder."""

    def __init__(self, root: Path, dot: Path | None = None):
        self.root = Path(root)
        self.dot = dot or self.root / ".pipemake"
        self.tmp = self.dot / "tmp"

    def abs(self, rel: str) -> Path:
        return self.root / rel

    def staging(self, label: str) -> Path:
        """A fresh, empty staging directory for one stage run or restore."""
        path = self.tmp / f"{label}-{uuid.uuid4().hex[:10]}"
        path.mkdir(parents=True)
        return path

    def clear_tmp(self) -> None:
        """Remove staging left by a killed build (call only while holding the build lock)."""
        if self.tmp.is_dir():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def place(
        self, staged: Path, rel: str, later: Callable[[Callable[[], None]], None] | None = None
    ) -> None:
        """Move a staged file or directory to the output path ``rel``, replacing what is there.

        The old content is first renamed aside, so the path holds either the old or the new
        output, and is never half-written; ``later`` (the builder's) puts off deleting it.
        """
        dest = self.abs(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        trash = None
        if dest.exists() or dest.is_symlink():
            trash = self.tmp / f"trash-{uuid.uuid4().hex[:10]}"
            self.tmp.mkdir(parents=True, exist_ok=True)
            os.rename(dest, trash)
        os.rename(staged, dest)
        if trash is not None:
            if later is not None:
                later(lambda: remove_path(trash))
            else:
                remove_path(trash)

    def check(self, manifest: dict[str, Any], rel: str, hasher: Hasher) -> str | None:
        """None when the workspace output matches ``manifest``; else ``missing`` or
        ``changed``."""
        if manifest["kind"] == "dir" and self.abs(rel).is_dir():
            tree = hasher.tree_info(rel)
            if tree.hash == manifest["hash"]:
                return None
            entries = tree.entries or []
            want = manifest["entries"]
            if len(entries) != len(want):
                return "changed"
            for have, exp in zip(entries, want, strict=True):  # both sorted by relpath
                if have[0] != exp[0] or have[1] != exp[1] or have[3] != exp[3]:
                    return "changed"
            return None
        info = hasher.info(rel)
        if info.kind == "missing":
            return "missing"
        if info.kind != manifest["kind"] or info.hash != manifest["hash"]:
            return "changed"
        return None

    def restore(self, manifest: dict[str, Any], rel: str, store: Store, label: str) -> bool:
        """Make the output at ``rel`` exactly ``manifest`` from the store's objects.

        Returns False (touching nothing in the workspace) when an object is missing or
        corrupt.
        """
        stage_dir = self.staging(f"restore-{label}")
        try:
            target = stage_dir / "out"
            if manifest["kind"] == "file":
                if not store.materialize(manifest["hash"], str(target), manifest["mode"]):
                    return False
            else:
                target.mkdir()
                made: set[str] = set()
                for relpath, digest, _size, mode in manifest["entries"]:
                    if not _safe_rel(relpath):
                        return False
                    parent = os.path.dirname(relpath)
                    if parent and parent not in made:
                        (target / parent).mkdir(parents=True, exist_ok=True)
                        made.add(parent)
                    if not store.materialize(digest, str(target / relpath), mode):
                        return False
            self.place(target, rel)
            return True
        finally:
            remove_path(stage_dir)

    def sync_dir(
        self,
        manifest: dict[str, Any],
        rel: str,
        store: Store,
        hasher: Hasher,
        moves: dict[str, str] | None = None,
    ) -> bool:
        """Make the directory output ``rel`` exactly ``manifest``, touching only what differs.

        Files listed in ``moves`` (entry relpath → the path of a staged file with that
        content) are moved in; other missing or different files come from the store. Every
        file lands by rename, so none is ever half-written; files the manifest does not list
        are removed. Returns False if an object is missing or corrupt (what was already fixed
        stays fixed).
        """
        moves = moves or {}
        dest = self.abs(rel)
        if dest.exists() and not dest.is_dir():
            remove_path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        base = str(dest)
        have = {e[0]: e for e in hasher.tree(rel)}
        want = {e[0]: e for e in manifest["entries"]}
        stale = sorted(set(have) - set(want))
        for relpath in stale:
            (dest / relpath).unlink(missing_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        made = {""}
        fetch: list[tuple[str, str, int]] = []
        for relpath, e in want.items():
            cur = have.get(relpath)
            if cur is not None and cur[1] == e[1] and cur[3] == e[3]:
                continue
            if not _safe_rel(relpath):
                return False
            parent = relpath.rpartition("/")[0]
            if parent not in made:
                pdir = Path(base, parent)
                if pdir.exists() and not pdir.is_dir():
                    remove_path(pdir)
                pdir.mkdir(parents=True, exist_ok=True)
                made.add(parent)
            target = f"{base}/{relpath}"
            src = moves.get(relpath)
            if src is None:
                fetch.append((e[1], target, e[3]))
                continue
            if os.stat(src).st_nlink == 1:  # one linked into the store (--link) stays
                os.chmod(src, e[3])  # read-only: its mode is the object's
            _replace(src, target)
        if not self._fetch(fetch, store):
            return False
        if stale:  # only a removal can leave a directory empty
            _prune_empty_dirs(dest)
        return True

    def _fetch(self, files: list[tuple[str, str, int]], store: Store) -> bool:
        """Materialize objects at their targets, each through a temporary file (or link)
        and a rename; on a few threads, each taking a share of the files, since creating
        files is what a restore waits on."""
        prefix = f"{self.tmp}/f-{uuid.uuid4().hex[:12]}"

        def share(n: int) -> bool:
            for i in range(n, len(files), workers):
                digest, target, mode = files[i]
                tmp = f"{prefix}-{i}"
                if not store.materialize(digest, tmp, mode):
                    return False
                _replace(tmp, target)
            return True

        workers = min(8, 1 + len(files) // 64)
        if workers == 1:
            return share(0)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return all(pool.map(share, range(workers)))

    def remove(self, rel: str) -> bool:
        """Delete an output from the workspace (the store keeps it)."""
        path = self.abs(rel)
        if not (path.exists() or path.is_symlink()):
            return False
        remove_path(path)
        return True


def _replace(src: str, target: str) -> None:
    """Rename ``src`` onto ``target``, which may be a directory (what the walk listed under
    that name was a file, so only an empty one, or one of files the manifest moves away)."""
    try:
        os.replace(src, target)
    except OSError as exc:
        if not os.path.isdir(target) or os.path.islink(target):
            raise exc from None
        remove_path(Path(target))
        os.replace(src, target)


def _safe_rel(relpath: str) -> bool:
    """A manifest path may not escape its output directory. (A backslash is a character of
    a POSIX file name like any other; only where it separates paths is it refused.)"""
    if not relpath or os.path.isabs(relpath) or (os.sep == "\\" and "\\" in relpath):
        return False
    parts = relpath.split("/")
    return all(p not in ("", ".", "..") for p in parts)


def _prune_empty_dirs(top: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        if dirpath != str(top) and not dirnames and not filenames:
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


def remove_path(path: Path) -> None:
    """Remove a file, link or directory tree, whatever it is."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)

"""Outputs in the workspace: staging, hashing what a stage wrote, placing it atomically,
checking workspace outputs against a manifest, and restoring them from the store.

Nothing is ever written straight to an output path: work happens in a staging directory
under ``.pipemake/tmp`` (same filesystem, so placing is a rename), and a restored output is
assembled there in full before it replaces what the workspace holds.

Symlinks. Whatever a stage or a person left at an output path, restoring or syncing it never
writes or deletes through a link: an output path that is a symlink, and any symlink inside a
directory output, is removed as a link (what it points to is left alone) and replaced by the
real files; a tree is removed without following a link anywhere in it. The *parents* of an
output path are the user's own layout and are followed as the system follows them (``build
-> /elsewhere`` puts ``build/o`` at ``/elsewhere/o``, as Make and DVC do): what lies at the
output path is the output, and nothing outside it is ever deleted.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .fshash import Hasher, PathInfo
from .manifest import manifest_hash, sub_manifest
from .store import Store
from .walk import BadPath

__all__ = ["Workspace", "manifest_hash", "manifest_of", "sub_manifest"]


def manifest_of(info: PathInfo) -> dict[str, Any]:
    """The JSON manifest of a hashed path (what an action-cache entry stores per output)."""
    if info.kind == "file":
        return {"kind": "file", "hash": info.hash, "size": info.size, "mode": info.mode}
    return {"kind": "dir", "hash": info.hash, "entries": [list(e) for e in info.entries or []]}


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
        A symlink at ``rel`` is moved aside as a link: what it points to is left alone. A
        staged output that is itself a symlink (a stage that linked its output to its input)
        is placed as a copy of what it points to, so an output path always holds pipemake's
        own files and nothing done to it later can reach through it.
        """
        if os.path.islink(staged):
            _dereference(staged)
        dest = self.abs(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        trash = None
        if os.path.lexists(dest):
            self.tmp.mkdir(parents=True, exist_ok=True)
            trash = self.tmp / f"trash-{uuid.uuid4().hex[:10]}"
            if not self._same_device(dest.parent):
                trash = dest.parent / f".{dest.name}.pipemake-old-{uuid.uuid4().hex[:10]}"
            os.rename(dest, trash)
        _move(str(staged), str(dest))
        if trash is not None:
            if later is not None:
                later(lambda: remove_path(trash))
            else:
                remove_path(trash)

    def check(self, manifest: dict[str, Any], rel: str, hasher: Hasher) -> str | None:
        """None when the workspace output matches ``manifest``; else ``missing`` or
        ``changed`` (an output path that is a symlink is ``changed``, whatever it points
        to: pipemake places real files there, and a restore replaces the link by them; so is
        one that cannot be walked, a symlink loop put in it say)."""
        if os.path.islink(self.abs(rel)):
            return "changed"
        try:
            return self._check(manifest, rel, hasher)
        except BadPath:
            return "changed"

    def _check(self, manifest: dict[str, Any], rel: str, hasher: Hasher) -> str | None:
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
                if not store.materialize(
                    manifest["hash"], str(target), manifest["mode"], manifest["size"]
                ):
                    return False
            else:
                target.mkdir()
                made: set[str] = set()
                for relpath, digest, size, mode in manifest["entries"]:
                    if not _safe_rel(relpath):
                        return False
                    parent = os.path.dirname(relpath)
                    if parent and parent not in made:
                        (target / parent).mkdir(parents=True, exist_ok=True)
                        made.add(parent)
                    if not store.materialize(digest, str(target / relpath), mode, size):
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

        Symlinks are never written or deleted through: ``rel`` itself, if a link, and every
        link inside it are removed as links first, and a staged file reached through a link
        (a stage that linked its output to its input) is taken from the store instead of
        moved, so a file outside the staging area never moves.
        """
        moves = moves or {}
        dest = self.abs(rel)
        _real_dir(dest)
        base = str(dest)
        staged = _StagedFiles(self.tmp)
        try:
            have = {e[0]: e for e in hasher.tree(rel)}
        except BadPath:  # still not walkable (an unreadable folder): replaced whole
            return self.restore(manifest, rel, store, "sync")
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
            st = staged.stat(src) if src is not None else None
            if st is None:
                fetch.append((e[1], target, e[3]))
                continue
            if st.st_nlink == 1:  # one linked into the store (--link) stays
                os.chmod(src, e[3])  # read-only: its mode is the object's
            _replace(src, target)
        if not self._fetch(fetch, store, base):
            return False
        if stale:  # only a removal can leave a directory empty
            _prune_empty_dirs(dest)
        return True

    def _fetch(self, files: list[tuple[str, str, int]], store: Store, base: str) -> bool:
        """Materialize objects at their targets under ``base``, each through a temporary
        file (or link) and a rename; on a few threads, each taking a share of the files,
        since creating files is what a restore waits on. The temporary files are made on the
        output's filesystem (in ``base`` itself when a symlinked parent puts it on another
        one than ``.pipemake``: a name a later sync removes if a kill leaves it)."""
        where = str(self.tmp) if self._same_device(Path(base)) else base
        prefix = f"{where}/.pipemake-f-{uuid.uuid4().hex[:12]}"

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

    def _same_device(self, path: Path) -> bool:
        """Whether ``path`` (an existing directory) is on the filesystem of the staging
        area, so a rename moves between them."""
        try:
            return os.stat(path).st_dev == os.stat(self.tmp).st_dev
        except OSError:
            return True

    def remove(self, rel: str) -> bool:
        """Delete an output from the workspace (the store keeps it); a symlink there is
        removed as a link, and nothing is followed out of the output path."""
        path = self.abs(rel)
        if not os.path.lexists(path):
            return False
        remove_path(path)
        return True


def _replace(src: str, target: str) -> None:
    """Rename ``src`` onto ``target``, which may be a directory (what the walk listed under
    that name was a file, so only an empty one, or one of files the manifest moves away)."""
    try:
        _move(src, target)
    except OSError as exc:
        if not os.path.isdir(target) or os.path.islink(target):
            raise exc from None
        remove_path(Path(target))
        _move(src, target)


def _move(src: str, dst: str) -> None:
    """Rename ``src`` onto ``dst``; across filesystems (an output whose parent is a symlink
    to another disk), copy it beside ``dst`` first and rename that, so ``dst`` is never
    half-written, then remove ``src``."""
    try:
        os.replace(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    parent, name = os.path.split(dst)
    side = os.path.join(parent, f".{name}.pipemake-{uuid.uuid4().hex[:10]}")
    try:
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, side, symlinks=True)
        else:
            shutil.copy2(src, side, follow_symlinks=False)
        os.replace(side, dst)
    except BaseException:
        remove_path(Path(side))
        raise
    remove_path(Path(src))


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
    """Remove a file, link or directory tree, whatever it is, never following a link: a
    symlink is removed as a link, and a tree is removed by :func:`shutil.rmtree`, which on
    this platform walks by file descriptor and removes the links it meets as links (and
    refuses a link at the top, which the ``lstat`` here has already ruled out)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _dereference(path: Path) -> None:
    """Replace the staged symlink ``path`` by a copy of what it points to (links inside a
    linked directory stay links, as they would in a staged directory)."""
    real = path.with_name(f"{path.name}.real-{uuid.uuid4().hex[:10]}")
    if path.is_dir():
        shutil.copytree(path, real, symlinks=True)
    else:
        shutil.copy2(path, real)
    os.unlink(path)
    os.rename(real, path)


def _real_dir(path: Path) -> None:
    """Make ``path`` a real directory holding no symlink: a link at ``path`` or anywhere
    under it is removed as a link (what it points to stays as it is), anything else that is
    not a directory at ``path`` is removed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        remove_path(path)
        st = None
    if st is None:
        path.mkdir(parents=True, exist_ok=True)
        return
    stack = [str(path)]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:  # unreadable: the hasher's walk names it
            continue
        with it:
            for de in it:
                if de.is_symlink():
                    os.unlink(de.path)
                elif de.is_dir(follow_symlinks=False):
                    stack.append(de.path)


class _StagedFiles:
    """Which move sources are what they claim: regular files inside the staging area,
    reached without a symlink (one directory lookup per staged directory)."""

    def __init__(self, tmp: Path):
        self.top = os.path.join(os.path.realpath(tmp), "")
        self.dirs: dict[str, bool] = {}

    def stat(self, src: str) -> os.stat_result | None:
        """``src``'s own stat if it is a regular staged file, else None."""
        parent = os.path.dirname(src)
        ok = self.dirs.get(parent)
        if ok is None:
            ok = self.dirs[parent] = os.path.realpath(parent).startswith(self.top)
        if not ok:
            return None
        try:
            st = os.lstat(src)
        except OSError:
            return None
        return st if stat.S_ISREG(st.st_mode) else None

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
import re
import shutil
import stat
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .folders import (
    file_group,
    finish_mode,
    folder_model,
    folder_of,
    lend,
    like,
    like_folders,
    like_tree,
    remove_path,
    same_group,
)
from .folders import unlock_tree as unlock_tree  # where the executors' worker takes it
from .fshash import Hasher, PathInfo
from .hashing import tree_hash
from .manifest import manifest_hash, sub_manifest
from .statcache import TreeRow
from .store import Store
from .walk import BadPath, LinkView, signature, walk

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
        #: file outputs :meth:`check` found right but for their executable bit: path → the
        #: stat their bytes were hashed at (see :meth:`_set_mode`)
        self._mode_only: dict[str, tuple[Any, ...]] = {}

    def abs(self, rel: str) -> Path:
        return self.root / rel

    def staging(self, label: str) -> Path:
        """A fresh, empty staging directory for one stage run or restore."""
        path = self.tmp / f"{label}-{uuid.uuid4().hex[:10]}"
        path.mkdir(parents=True)
        return path

    def clear_tmp(self) -> None:
        """Remove staging left by a killed build (call only while holding the build lock),
        an old output made read-only by its user among it (see :func:`remove_path`)."""
        if os.path.isdir(self.tmp) and not os.path.islink(self.tmp):
            remove_path(self.tmp)

    def remove_own(self, path: Path | str) -> None:
        """Remove pipemake's own copy ``path`` (a staged output, an old output swapped out
        of the workspace), even where its user made it read-only (``chmod -R a-w``): see
        :func:`remove_path`; no link is followed, and nothing outside ``path`` changes."""
        remove_path(path)

    def sweep_beside(self, outputs: list[str]) -> int:
        """Remove what a killed build left beside the output paths ``outputs`` (call only
        while holding the build lock): pipemake's own copies and old outputs, made there when
        an output lies on another filesystem than the staging area. Only names of exactly
        pipemake's patterns (``.NAME.pipemake-[old-|new-|f-]HEX`` for the output ``NAME``)
        in the output's own parent folder are removed, never a symlink (nor anything through
        one); how many were removed."""
        removed = 0
        seen: set[tuple[str, str]] = set()
        for rel in outputs:
            dest = self.abs(rel)
            parent, name = str(dest.parent), dest.name
            if not name or name in (".", "..") or (parent, name) in seen:
                continue
            seen.add((parent, name))
            pattern = re.compile(r"\." + re.escape(name) + _BESIDE)
            try:
                names = os.listdir(parent)
            except OSError:  # no parent yet, or not a folder: nothing was left there
                continue
            for entry in names:
                if not pattern.fullmatch(entry):
                    continue
                path = os.path.join(parent, entry)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISLNK(st.st_mode) or not (
                    stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)
                ):
                    continue
                self.remove_own(path)
                removed += 1
        return removed

    def place(
        self, staged: Path, rel: str, later: Callable[[Callable[[], None]], None] | None = None
    ) -> None:
        """Move a staged file or directory to the output path ``rel``, replacing what is there.

        The old content is first renamed aside, so the path holds either the old or the new
        output, and is never half-written; ``later`` (the builder's) puts off deleting it.
        A directory output keeps its folders' mode, group and ACLs as :meth:`sync_dir`
        says (a read-only one is swapped beside itself, since it cannot change folder);
        its files are the new output's, with their own modes.
        A new folder the stage made read-only (``chmod a-w {outputs.d}``) is lent its
        owner's write bit while it moves (a folder changing parent writes its ``..``) and
        keeps its own mode once placed.
        A symlink at ``rel`` is moved aside as a link: what it points to is left alone. A
        staged output that is itself a symlink (a stage that linked its output to its input)
        is placed as a copy of what it points to, so an output path always holds pipemake's
        own files and nothing done to it later can reach through it.
        """
        dest = self.abs(rel)
        if os.path.islink(staged):
            _dereference(staged, str(dest))
        dest.parent.mkdir(parents=True, exist_ok=True)
        model = folder_model(dest, str(staged))
        if model is not None:  # the copies below carry each folder's and file's group
            like(str(staged), model, writable=True)
            like_tree(str(dest), str(staged), model)
        else:
            file_group(str(staged), dest.parent)
            model = lend(str(staged))
        if not os.path.lexists(dest):
            _move(str(staged), str(dest))
            finish_mode(str(dest), model)
            return
        src = str(staged)
        if not _same_dev(dest.parent, staged.parent):
            # the complete new output is made beside the old one first, on its filesystem
            src = _copy_beside(str(staged), dest)
            self.remove_own(staged)
        old = self._swap(src, dest)
        finish_mode(str(dest), model)
        if later is not None:
            later(lambda: self.remove_own(old))
        else:
            self.remove_own(old)

    def _swap(self, new: str, dest: Path) -> Path:
        """Put ``new`` (on ``dest``'s filesystem) at ``dest``, which exists, in one atomic
        exchange where the system has one; where it has not, by renaming the old output
        aside first (a kill in between leaves the output missing, and the next build
        restores it). Where the old output now is, for the caller to remove: in the staging
        area, or beside ``dest`` (a name :meth:`sweep_beside` knows). Where a rename
        between the two is refused although they seem one filesystem (a bind mount), the
        new output is copied beside ``dest`` first."""
        try:
            return self._swap_in(new, dest, self._same_device(dest.parent))
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM) and os.path.isdir(new):
                # a folder its user made read-only cannot change parent folder (its ``..``
                # is written): the new one is moved beside it, and they swap names there
                side = _beside(dest, "new")
                os.rename(new, side)
                return self._swap_in(side, dest, False)
            if exc.errno != errno.EXDEV:
                raise
        side = _copy_beside(new, dest)
        self.remove_own(Path(new))
        return self._swap_in(side, dest, False)

    def _swap_in(self, new: str, dest: Path, via_tmp: bool) -> Path:
        if via_tmp:
            self.tmp.mkdir(parents=True, exist_ok=True)
            trash = self.tmp / f"trash-{uuid.uuid4().hex[:10]}"
        else:
            trash = Path(_beside(dest, "old"))
        if _exchange(new, str(dest)):
            if not via_tmp:  # the old output is beside ``dest``, as ``new``
                return Path(new)
            try:
                os.rename(new, trash)  # where it waits to be removed, off the caller's way
            except OSError:
                return Path(new)
            return trash
        os.rename(dest, trash)
        try:
            os.rename(new, dest)
        except OSError:
            os.rename(trash, dest)  # as it was
            raise
        return trash

    def check(self, manifest: dict[str, Any], rel: str, hasher: Hasher) -> str | None:
        """None when the workspace output matches ``manifest``; else ``missing`` or
        ``changed`` (an output path that is a symlink is ``changed``, whatever it points
        to: pipemake places real files there, and a restore replaces the link by them; so is
        one that cannot be walked, a symlink loop put in it say); ``mode changed`` for a
        file output whose bytes are right but whose executable bit is not (as a file in a
        directory output is compared; :meth:`restore` then only sets its mode)."""
        if os.path.islink(self.abs(rel)):
            return "changed"
        try:
            return self._check(manifest, rel, hasher)
        except BadPath:
            return "changed"

    def part_of(self, manifest: dict[str, Any], rel: str, hasher: Hasher) -> bool:
        """Whether what lies at ``rel`` is ``manifest`` or, for a directory, a part of it:
        every file there is one the manifest lists, with its content and mode (what an
        interrupted ``clean`` or a hand removal leaves). The store can then bring the
        whole output back, so removing it loses nothing. A link anywhere is never a part:
        pipemake places real files."""
        if self.check(manifest, rel, hasher) is None:
            return True
        base = str(self.abs(rel))
        if manifest.get("kind") != "dir" or os.path.islink(base) or not os.path.isdir(base):
            return False
        if _holds_link(base):
            return False
        want = {e[0]: (e[1], e[3]) for e in manifest["entries"]}
        try:
            have = hasher.tree(rel)
        except BadPath:
            return False
        return all(want.get(e[0]) == (e[1], e[3]) for e in have)

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
        if info.kind == "file" and info.mode != manifest.get("mode", info.mode):
            seen = getattr(hasher, "seen", {}).get(rel)
            if seen is not None and seen[0] == "f":  # the stat its bytes were hashed at
                self._mode_only[str(self.abs(rel))] = tuple(seen[1:])
            return "mode changed"  # the executable bit, as a file in a folder output's
        return None

    def _set_mode(self, rel: str, manifest: dict[str, Any]) -> bool:
        """Give the file output ``rel`` the executable bit its ``manifest`` records, when
        :meth:`check` found its bytes right and only that bit not, and it is still the very
        file it hashed (same stat): opened without following a link, a file of one name
        only (never a store object linked in). False, changing nothing, otherwise."""
        path = str(self.abs(rel))
        sig = self._mode_only.pop(path, None)
        if sig is None:
            return False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            now = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or now != sig:
                return False
            if st.st_size != manifest.get("size", st.st_size):
                return False
            mode = stat.S_IMODE(st.st_mode)
            if manifest["mode"] & 0o111:
                mode |= (mode & 0o444) >> 2 or stat.S_IXUSR  # executable where readable
            else:
                mode &= ~0o111
            os.fchmod(fd, mode)
        except OSError:
            return False
        finally:
            os.close(fd)
        return True

    def restore(
        self,
        manifest: dict[str, Any],
        rel: str,
        store: Store,
        label: str,
        bad: set[str] | None = None,
    ) -> bool:
        """Make the output at ``rel`` exactly ``manifest`` from the store's objects.

        The output is assembled in full in a staging directory and then put in place by one
        rename; a file output whose bytes are the manifest's (its size and the stat cache
        say so) and whose executable bit is not only has its mode set. Returns False
        (touching nothing in the workspace) when the store cannot give
        it: an object missing, corrupt or of another size than its entry records, a
        directory manifest whose hash is not the tree hash of its entries, or an entry the
        file system cannot hold (a name too long, a path past the system's limit, a name it
        refuses); the relpaths of such entries are added to ``bad`` when given.
        """
        if manifest["kind"] == "dir" and not _writable(manifest, str(self.abs(rel)), bad):
            return False
        if manifest["kind"] == "file" and self._set_mode(rel, manifest):
            return True
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
                files = [(e[0], e[1], e[2], e[3]) for e in manifest["entries"]]
                if not _stage_files(files, str(target), store, bad):
                    return False
            self.place(target, rel)
            return True
        finally:
            self.remove_own(stage_dir)

    def sync_dir(
        self,
        manifest: dict[str, Any],
        rel: str,
        store: Store,
        hasher: Hasher,
        moves: dict[str, str] | None = None,
        bad: set[str] | None = None,
    ) -> bool:
        """Make the directory output ``rel`` exactly ``manifest``, touching only what differs.

        Files listed in ``moves`` (entry relpath → the path of a staged file with that
        content) are moved in; other missing or different files come from the store. Every
        file the store gives is first made, verified, in a scratch directory before the
        output changes, so none is ever half-written. Returns False, with the output as it
        was, when the store cannot give the manifest (see :meth:`restore`; ``bad`` as
        there).

        How the output changes depends on how much of it does (see :func:`_in_place`): a
        few files of a large output are updated in place, each by one rename (a kill midway
        leaves some of them new and the rest old; the next status calls the output changed
        and the next build finishes it), so a one-item change to a big foreach output costs
        what that item costs. Any other update (a restore, a switch back to an old
        version) assembles the complete new folder beside the output, the files it keeps
        hard-linked in, and swaps it in in one atomic step, so a kill leaves the old output
        or the new one.
        The new folder, and each sub-folder it makes for one the output had, takes the old
        one's permission bits, its POSIX ACLs and, where the user may set it, its group (a
        folder a team shares with ``chmod 2770``, ``chgrp`` and ``setfacl`` stays shared);
        a folder new in a set-group-ID folder takes its group, as ``mkdir`` there would.
        A folder its user made read-only stays read-only; the files it keeps keep their
        modes, and a file written anew has the mode its manifest records.

        Symlinks are never written or deleted through: an output that is a link, or holds
        one, is restored whole (see :meth:`restore`: the link goes as a link), and a staged
        file reached through a link (a stage that linked its output to its input) is taken
        from the store instead of moved, so a file outside the staging area never moves.
        """
        moves = moves or {}
        dest = self.abs(rel)
        base = str(dest)
        if not _writable(manifest, base, bad):
            return False
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            st = None
        if st is not None and (not stat.S_ISDIR(st.st_mode) or _holds_link(base)):
            return self.restore(manifest, rel, store, "sync", bad)
        try:
            have = {e[0]: e for e in hasher.tree(rel)} if st is not None else {}
        except BadPath:  # not walkable (an unreadable folder): replaced whole
            return self.restore(manifest, rel, store, "sync", bad)
        staged = _StagedFiles(self.tmp)
        keep: list[str] = []
        fetch: list[tuple[str, str, int, int]] = []
        move: list[tuple[str, str, int]] = []
        for e in manifest["entries"]:
            relpath = e[0]
            cur = have.get(relpath)
            if cur is not None and cur[1] == e[1] and cur[3] == e[3]:
                keep.append(relpath)
                continue
            src = moves.get(relpath)
            sst = staged.stat(src) if src is not None else None
            if sst is None:
                fetch.append((relpath, e[1], e[2], e[3]))
            else:
                move.append((relpath, src, e[3] if sst.st_nlink == 1 else -1))
        if st is not None and not fetch and not move and len(keep) == len(have):
            return True  # nothing to add, change or remove (an empty one is still made)
        if st is not None:
            want = {e[0] for e in manifest["entries"]}
            stale = [r for r in have if r not in want]
            touched = [f[0] for f in fetch] + [m[0] for m in move] + stale
            if _in_place(len(touched), len(want)) and _may_write(base, touched):
                return self._update(dest, fetch, move, stale, store, bad)
        dest.parent.mkdir(parents=True, exist_ok=True)
        new = self._scratch(dest)
        try:
            model = folder_of(base, st) if st is not None else folder_model(dest, new)
            if model is not None:  # first, so the folders made in it inherit as in the old
                like(new, model, writable=True)
            if not _stage_files(fetch, new, store, bad):
                return False
            _make_parents(new, keep + [m[0] for m in move])
            # the files already right are linked in (no copy; the old output keeps them)
            _on_threads(len(keep), lambda i: _link(f"{base}/{keep[i]}", f"{new}/{keep[i]}"))
            for relpath, src, mode in move:
                if mode >= 0:  # one linked into the store (--link) stays read-only
                    os.chmod(src, mode)
                _move(src, f"{new}/{relpath}")
            # the complete new output is at hand: one step puts it in place
            if st is None:
                _move(new, base)
            else:
                like_folders(base, new, manifest["entries"])
                new = str(self._swap(new, dest))
            finish_mode(base, model)
        finally:
            self.remove_own(Path(new))
        _vouch(hasher, rel, base, manifest, set(keep))
        return True

    def _update(
        self,
        dest: Path,
        fetch: list[tuple[str, str, int, int]],
        move: list[tuple[str, str, int]],
        stale: list[str],
        store: Store,
        bad: set[str] | None,
    ) -> bool:
        """Update the existing directory output ``dest`` in place: make the ``fetch``
        files from the store in a scratch folder (False, with nothing changed, when it
        cannot give one), then remove the ``stale`` files and rename each new one in.
        What it keeps is never touched, so the stat cache still knows it."""
        base = str(dest)
        scratch = self._scratch(dest)
        try:
            if not _stage_files(fetch, scratch, store, bad):
                return False
            # everything is at hand: from here on the output changes
            for relpath in stale:
                (dest / relpath).unlink(missing_ok=True)
            _make_parents(base, [m[0] for m in move] + [f[0] for f in fetch])
            for relpath, src, mode in move:
                if mode >= 0:  # one linked into the store (--link) stays read-only
                    os.chmod(src, mode)
                _replace(src, f"{base}/{relpath}")

            def place(i: int) -> None:
                relpath = fetch[i][0]
                _replace(f"{scratch}/{relpath}", f"{base}/{relpath}")

            _on_threads(len(fetch), place)
        finally:
            self.remove_own(scratch)
        _prune_emptied(base, stale)
        return True

    def _scratch(self, dest: Path) -> str:
        """A new directory where a directory output ``dest`` is assembled in full before it
        is put in place: on the output's filesystem, so it goes there by a rename. That is
        the staging area, or, when the output lies on another filesystem, a hidden folder
        beside it (a name :meth:`sweep_beside` removes if a kill leaves it)."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        if self._same_device(dest.parent):
            path = str(self.tmp / f"pipemake-f-{uuid.uuid4().hex[:12]}")
        else:
            path = _beside(dest, "new")
        os.mkdir(path)
        return path

    def _same_device(self, path: Path) -> bool:
        """Whether ``path`` (an existing directory) is on the filesystem of the staging
        area, so a rename moves between them."""
        try:
            return os.stat(path).st_dev == os.stat(self.tmp).st_dev
        except OSError:
            return True

    def remove(self, rel: str) -> bool:
        """Delete an output from the workspace (the store keeps it); a symlink there is
        removed as a link, and nothing is followed out of the output path. An output its
        user made read-only (``chmod -R a-w``, as Snakemake's ``protected()`` does) is
        removed too: its own folders are made writable by their owner on the way (see
        :func:`remove_path`), never the folder holding it. False when nothing was there;
        an :class:`OSError` naming what could not be removed and why when something is
        left (a parent folder not writable for this user: then nothing was touched)."""
        path = self.abs(rel)
        if not os.path.lexists(path):
            return False
        parent = os.path.dirname(os.path.abspath(path))
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        error = remove_path(path)
        if error is not None:
            raise error
        return True


#: what a file system answers for a name it will not hold (too long, not in its encoding, a
#: character it refuses): restoring an entry so named is a miss, and the stage runs
_NAME_REFUSED = frozenset(
    {errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL, errno.ENOTDIR, errno.EISDIR, errno.EEXIST}
)


def _writable(manifest: dict[str, Any], base: str, bad: set[str] | None) -> bool:
    """Whether a directory manifest may be written at ``base``: its hash is the tree hash
    of its entries (else downstream stages would be keyed on files it does not hold), each
    path stays inside the output, and no path is longer than the system allows there."""
    entries = manifest["entries"]
    if tree_hash(entries) != manifest["hash"]:
        return False
    wrong = [e[0] for e in entries if not _safe_rel(e[0])]
    if not wrong and entries:
        try:
            limit = os.pathconf(base if os.path.isdir(base) else "/", "PC_PATH_MAX")
        except (OSError, ValueError):
            limit = 4096
        room = limit - len(os.fsencode(base)) - 1
        if 4 * max(len(e[0]) for e in entries) >= room:  # only then worth encoding
            wrong = [e[0] for e in entries if len(os.fsencode(e[0])) >= room]
    if wrong and bad is not None:
        bad.update(wrong)
    return not wrong


def _stage_files(
    files: list[tuple[str, str, int, int]], top: str, store: Store, bad: set[str] | None
) -> bool:
    """Make each ``(relpath, digest, size, mode)`` at ``top/relpath`` from the store, on a
    few threads, each taking a share of the files (creating files is what a restore waits
    on). False as soon as one cannot be made: an object missing, corrupt or not of the
    recorded size, or a name the file system refuses (added to ``bad``); what was made
    stays for the caller to remove with ``top``."""
    try:
        _make_parents(top, [f[0] for f in files])
    except OSError as exc:
        if exc.errno not in _NAME_REFUSED:
            raise
        if bad is not None:
            bad.add(_refused(exc, top, files))
        return False
    failed = threading.Event()

    def one(i: int) -> None:
        if failed.is_set():
            return
        relpath, digest, size, mode = files[i]
        try:
            ok = store.materialize(digest, f"{top}/{relpath}", mode, size)
        except OSError as exc:
            if exc.errno not in _NAME_REFUSED:
                raise
            ok = False
        if not ok:
            failed.set()
            if bad is not None:
                bad.add(relpath)

    _on_threads(len(files), one)
    return not failed.is_set()


def _refused(exc: OSError, top: str, files: list[tuple[str, str, int, int]]) -> str:
    """The relpath of the entry whose folder the file system refused (``exc``)."""
    where = os.path.relpath(str(exc.filename), top) if exc.filename else ""
    for f in files:
        if f[0] == where or f[0].startswith(where + "/"):
            return f[0]
    return files[0][0]


def _make_parents(top: str, relpaths: list[str]) -> None:
    """Create the folders under ``top`` that the files ``relpaths`` go in."""
    made = {""}
    for relpath in relpaths:
        parent = relpath.rpartition("/")[0]
        if parent not in made:
            pdir = f"{top}/{parent}"
            if os.path.lexists(pdir) and not os.path.isdir(pdir):
                remove_path(Path(pdir))
            os.makedirs(pdir, exist_ok=True)
            made.add(parent)


def _on_threads(count: int, fn: Callable[[int], None]) -> None:
    """``fn(i)`` for every ``i < count``: on up to 8 threads when there are many, each
    taking every n-th (the first exception is raised)."""
    workers = min(8, 1 + count // 64)
    if workers == 1:
        for i in range(count):
            fn(i)
        return

    def share(n: int) -> None:
        for i in range(n, count, workers):
            fn(i)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(share, range(workers)))


def _holds_link(top: str) -> bool:
    """Whether a symlink lies anywhere under the directory ``top`` (never followed)."""
    stack = [top]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:  # unreadable: the hasher's walk names it
            continue
        with it:
            for de in it:
                if de.is_symlink():
                    return True
                if de.is_dir(follow_symlinks=False):
                    stack.append(de.path)
    return False


#: a directory output of fewer files than this is always rebuilt beside and swapped in
#: (see :func:`_in_place`)
_SWAP_ALWAYS_BELOW = 256


def _in_place(touched: int, total: int) -> bool:
    """Whether a directory output of ``total`` files of which ``touched`` change, appear
    or go is updated in place rather than rebuilt beside it and swapped in.

    In place costs one rename per touched file; the swap costs one hard link per file of
    the output, however few change. So an update touching at most a sixteenth of an
    output of 256 files or more goes in place: its cost follows what changed, and a kill
    midway can leave those few files new among old ones, which the next status names and
    the next build finishes. Any other update swaps: it costs at most 16 times the files
    it writes anyway (or 256 links, nothing), and a kill leaves the old output or the new
    one, never a large restore or switch back half done."""
    return total >= _SWAP_ALWAYS_BELOW and touched * 16 <= total


def _may_write(top: str, relpaths: list[str]) -> bool:
    """Whether this user may add and remove names in each folder of the output ``top`` that
    the files ``relpaths`` go in (or in the nearest one there is, where it is made): not
    in a folder its user made read-only, which an update beside and a swap leave as it
    is."""
    seen: set[str] = set()
    for relpath in relpaths:
        parent = relpath.rpartition("/")[0]
        while parent not in seen:
            seen.add(parent)
            path = f"{top}/{parent}" if parent else top
            if os.path.isdir(path):
                if not os.access(path, os.W_OK | os.X_OK):
                    return False
                break
            if not parent:
                break
            parent = parent.rpartition("/")[0]
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


def _prune_emptied(top: str, removed: list[str]) -> None:
    """Remove the folders under ``top`` that removing the files ``removed`` left empty
    (only their parents are looked at: the cost follows what was removed)."""
    dirs = {r.rpartition("/")[0] for r in removed} - {""}
    for parent in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
        while parent:
            try:
                os.rmdir(f"{top}/{parent}")  # only an empty folder goes
            except OSError:
                break
            parent = parent.rpartition("/")[0]


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
    side = _copy_beside(src, Path(dst))
    try:
        os.replace(side, dst)
    except BaseException:
        remove_path(Path(side))
        raise
    remove_path(Path(src))


#: the tail of pipemake's own names beside an output ``NAME``: ``.NAME`` + this
_BESIDE = r"\.pipemake-(?:(?:old-|new-)?[0-9a-f]{10}|f-[0-9a-f]{12})"


def _beside(dest: Path, kind: str) -> str:
    """A fresh hidden name beside ``dest`` for pipemake's own use (``kind``: ``new`` or
    ``old``; a pattern :meth:`Workspace.sweep_beside` matches)."""
    return str(dest.parent / f".{dest.name}.pipemake-{kind}-{uuid.uuid4().hex[:10]}")


def _same_dev(a: Path, b: Path) -> bool:
    """Whether the existing directories ``a`` and ``b`` are on one filesystem."""
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return True


def _copy(src: str, dst: str) -> None:
    """Copy a staged file or tree to ``dst`` (links inside stay links), with its modes,
    ACLs and, where the user may set it, the group of each file and folder."""
    if os.path.isdir(src) and not os.path.islink(src):
        shutil.copytree(src, dst, symlinks=True, copy_function=_copy_file)
        for here, dirs, _files in os.walk(src):
            for d in ["", *dirs]:
                rel = os.path.relpath(os.path.join(here, d), src)
                same_group(os.path.join(src, rel), os.path.join(dst, rel))
    else:
        _copy_file(src, dst)


def _copy_file(src: str, dst: str) -> None:
    shutil.copy2(src, dst, follow_symlinks=False)
    same_group(src, dst)


def _copy_beside(src: str, dest: Path) -> str:
    """Copy ``src`` to a fresh hidden name beside ``dest`` (on ``dest``'s filesystem, so it
    goes there by a rename); that name. A copy cut short is removed; ``src`` stays."""
    side = _beside(dest, "new")
    try:
        _copy(src, side)
    except BaseException:
        remove_path(Path(side))
        raise
    return side


def _link(src: str, dst: str) -> None:
    """Give the file ``src`` a second name ``dst`` (a copy where links are not allowed)."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
        shutil.copy2(src, dst, follow_symlinks=False)


_RENAME_EXCHANGE = 2
_renameat2: Any = None


def _exchange(a: str, b: str) -> bool:
    """Swap the paths ``a`` and ``b`` (both exist, one filesystem) in one atomic step
    (Linux's ``renameat2(RENAME_EXCHANGE)``); False, with nothing changed, where the system
    or the filesystem has no such call."""
    global _renameat2
    import ctypes  # only here: most commands never swap an output

    if _renameat2 is None:
        fn: Any = False
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(None, use_errno=True).renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
                fn.argtypes.append(ctypes.c_uint)
                fn.restype = ctypes.c_int
            except (AttributeError, OSError):
                fn = False
        _renameat2 = fn
    if _renameat2 is False:
        return False
    at_fdcwd = -100
    if _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


def _vouch(hasher: Hasher, rel: str, base: str, manifest: dict[str, Any], kept: set[str]) -> None:
    """Tell the stat cache what the directory output ``rel`` now holds (``manifest``), so
    the files kept from the old output, which gained and lost a name while the new output
    was made (their ctime moved), are not read again by the next check. Files written now
    stay unvouched (too new to trust by their stat) and are read as before."""
    state = getattr(hasher, "state", None)
    if state is None or not kept:
        return
    try:
        rows = walk(base)
    except (OSError, BadPath):
        return
    sig = signature(rows)
    rows.sort()
    want = {e[0]: e[1] for e in manifest["entries"]}
    if [r[0] for r in rows] != sorted(want):
        return  # changed under us: the next check reads it
    now = time.time_ns()
    hashes = [want[r[0]] for r in rows]
    ats = [now if r[0] in kept else 0 for r in rows]
    # a file written now, or changed within the last second, is read again by the next check
    racy = [i for i, r in enumerate(rows) if r[0] not in kept or r[4] >= now - 1_000_000_000]
    state.stats.set_tree(rel, TreeRow(sig, bool(racy), manifest["hash"], (rows, hashes, ats, racy)))


def _safe_rel(relpath: str) -> bool:
    """A manifest path may not escape its output directory. (A backslash is a character of
    a POSIX file name like any other; only where it separates paths is it refused.)"""
    if not relpath or os.path.isabs(relpath) or "\0" in relpath:
        return False
    if os.sep == "\\" and "\\" in relpath:
        return False
    parts = relpath.split("/")
    return all(p not in ("", ".", "..") for p in parts)


def _dereference(path: Path, final: str) -> None:
    """Replace the staged symlink ``path`` by a copy of what it points to, a relative link
    counting from the output's ``final`` path (where it was hashed from: see
    :class:`~pipemake.walk.LinkView`); a linked folder is copied with the links in it
    followed, as they were when it was hashed."""
    view = LinkView([(str(path), final)], os.path.dirname(final))
    try:
        _target, handle, st = view.follow(view.virtual(str(path)))
        real = path.with_name(f"{path.name}.real-{uuid.uuid4().hex[:10]}")
        if stat.S_ISDIR(st.st_mode):
            shutil.copytree(handle, real)
        else:
            shutil.copy2(handle, real)
    finally:
        view.close()
    os.unlink(path)
    os.rename(real, path)


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

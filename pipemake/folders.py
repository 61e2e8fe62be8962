"""An output folder's own metadata, and removing what its user made read-only.

A directory output is replaced whole by a restore or a swap, yet its folder is the user's
place: its permission bits, its group (a team's ``chmod 2770`` and ``chgrp``) and its POSIX
access control lists (``setfacl``) are carried from the old folder to the new one
(:class:`Folder`, :func:`like`, :func:`like_tree`, :func:`like_folders`), and a folder made
in a set-group-ID folder takes its group as ``mkdir`` there would (:func:`folder_model`,
:func:`file_group`, :func:`same_group`). A folder its stage made read-only is lent its
owner's rights while it is placed and gets its own mode back once there (:func:`lend`,
:func:`finish_mode`).

Removing: pipemake's own paths (staging, an old output swapped out, an output ``clean``
removes, a work folder) may hold folders their user made read-only (``chmod -R a-w``,
Snakemake's ``protected()``). :func:`remove_path` removes them all the same, making only
folders *inside* the path writable (:func:`unlock_tree`), never following a link and never
touching the folder that holds the path.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "Folder",
    "file_group",
    "finish_mode",
    "folder_model",
    "folder_of",
    "lend",
    "like",
    "like_folders",
    "like_tree",
    "remove_path",
    "same_group",
    "unlock_tree",
]

#: the extended attributes holding a folder's POSIX access control lists
_ACLS = ("system.posix_acl_access", "system.posix_acl_default")
#: what a file system or the user's rights answer to a group or ACL they cannot have
_NOT_HERE = (errno.EPERM, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA)


class Folder:
    """What an output folder keeps when its content is replaced: permission bits, group
    and POSIX access control lists (a folder a team shares with ``chmod 2770``, ``chgrp``
    and ``setfacl`` stays shared)."""

    __slots__ = ("acls", "gid", "mode")

    def __init__(self, mode: int, gid: int, acls: dict[str, bytes]):
        self.mode, self.gid, self.acls = mode, gid, acls


def folder_of(path: str, st: os.stat_result) -> Folder:
    """The metadata of the folder ``path`` (``st``: its ``lstat``) to give its successor."""
    acls: dict[str, bytes] = {}
    for name in _ACLS:
        try:
            acls[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:  # none, or no ACLs on this file system
            continue
    return Folder(stat.S_IMODE(st.st_mode), st.st_gid, acls)


def folder_model(dest: Path, made: str) -> Folder | None:
    """What a directory output placed at ``dest`` (assembled at ``made``, a folder in the
    staging area) should have as its folder: the old folder's mode, group and ACLs where
    one is there; where none is and ``dest``'s parent is a set-group-ID folder, what a
    folder made there gets (the parent's group and set-group-ID bit, the mode the umask
    gave); else nothing to change. None also when ``made`` is not a folder."""
    mst = _dir_lstat(made)
    if mst is None:
        return None
    try:
        st = os.lstat(dest)
    except OSError:
        st = None
    if st is not None:
        return folder_of(str(dest), st) if stat.S_ISDIR(st.st_mode) else None
    try:
        pst = os.stat(dest.parent)
    except OSError:
        return None
    if not pst.st_mode & stat.S_ISGID:
        return None
    return Folder(stat.S_IMODE(mst.st_mode) | stat.S_ISGID, pst.st_gid, {})


def like(path: str, old: Folder, writable: bool = False) -> None:
    """Give the folder ``path`` the permission bits, the group (where the user may set it:
    a group they are not in is refused, and left as it is) and the access control lists
    (where the file system has them) of ``old``. ``writable`` keeps the owner's read,
    write and search bits on, while files are still put in it (see :func:`finish_mode`)."""
    try:
        os.chown(path, -1, old.gid)
    except OSError as exc:
        if exc.errno not in _NOT_HERE:
            raise
    for name, value in old.acls.items():
        try:  # before the mode: an access ACL sets the group bits, the mode then the rest
            os.setxattr(path, name, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _NOT_HERE:
                raise
    os.chmod(path, old.mode | stat.S_IRWXU if writable else old.mode)


def file_group(path: str, parent: Path) -> None:
    """Give the staged file ``path`` the group of ``parent`` where that is a
    set-group-ID folder, as a file made there gets (one linked to a store object keeps
    the store's)."""
    try:
        pst, st = os.stat(parent), os.lstat(path)
    except OSError:
        return
    if (
        pst.st_mode & stat.S_ISGID
        and stat.S_ISREG(st.st_mode)
        and st.st_nlink == 1
        and st.st_gid != pst.st_gid
    ):
        try:
            os.chown(path, -1, pst.st_gid, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _NOT_HERE:
                raise


def lend(path: str) -> Folder | None:
    """A staged output folder ``path`` that its stage made read-only is given its owner's
    rights while it is placed; what :func:`finish_mode` gives it back (None when it is
    no such folder)."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IRWXU == stat.S_IRWXU:
        return None
    os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
    return Folder(stat.S_IMODE(st.st_mode), st.st_gid, {})


def finish_mode(path: str, model: Folder | None) -> None:
    """Give the placed output folder ``path`` its final mode (the owner's bits it was
    lent while it was filled are taken back)."""
    if model is not None and stat.S_IMODE(os.lstat(path).st_mode) != model.mode:
        os.chmod(path, model.mode)


def like_tree(base: str, new: str, model: Folder) -> None:
    """Each folder under ``new`` gets what it would have in place: the old output
    ``base``'s folder of that name where it has one (see :func:`like`); under a
    set-group-ID output folder, every file and folder also takes its group, as if made
    there."""
    inherit = bool(model.mode & stat.S_ISGID)
    dirs: list[str] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(new, rel)) as it:
            for de in it:
                sub = os.path.join(rel, de.name)
                if de.is_dir(follow_symlinks=False):
                    dirs.append(sub)
                    stack.append(sub)
                if inherit and (
                    de.is_dir(follow_symlinks=False) or de.stat(follow_symlinks=False).st_nlink == 1
                ):  # a store object linked in (--link) keeps the store's
                    try:
                        os.chown(de.path, -1, model.gid, follow_symlinks=False)
                    except OSError as exc:
                        if exc.errno not in _NOT_HERE:
                            raise
    for d in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
        old = _old_dir(base, d)
        if old is not None:
            like(os.path.join(new, d), folder_of(os.path.join(base, d), old))
        elif inherit:
            mode = stat.S_IMODE(os.lstat(os.path.join(new, d)).st_mode)
            os.chmod(os.path.join(new, d), mode | stat.S_ISGID)


def like_folders(base: str, new: str, entries: list[list[Any]]) -> None:
    """Give each folder of the assembled output ``new`` that the old output ``base`` also
    has the old one's mode, group and ACLs (see :func:`like`), the deepest first."""
    dirs: set[str] = set()
    for e in entries:
        parent = e[0].rpartition("/")[0]
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = parent.rpartition("/")[0]
    for d in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
        old = _old_dir(base, d)
        if old is not None:
            like(f"{new}/{d}", folder_of(f"{base}/{d}", old))


def _old_dir(base: str, rel: str) -> os.stat_result | None:
    """The ``lstat`` of the folder ``rel`` of the old output ``base``, or None where there
    is none, or a link lies on the way (nothing outside the output lends its metadata)."""
    here = base
    st = None
    for part in rel.split("/"):
        here = f"{here}/{part}"
        st = _dir_lstat(here)
        if st is None:
            return None
    return st


def _dir_lstat(path: str) -> os.stat_result | None:
    """The ``lstat`` of ``path`` where that is a folder (not a link to one), else None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st if stat.S_ISDIR(st.st_mode) else None


def same_group(src: str, dst: str) -> None:
    """Give ``dst`` the group of ``src`` (neither followed if a link) where the user may,
    and the set-group-ID bit a folder lost by being made before its group was set."""
    sst, dst_st = os.lstat(src), os.lstat(dst)
    if sst.st_gid == dst_st.st_gid:
        return
    try:
        os.chown(dst, -1, sst.st_gid, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NOT_HERE:
            raise
        return
    if stat.S_ISDIR(sst.st_mode) and stat.S_IMODE(sst.st_mode) != stat.S_IMODE(dst_st.st_mode):
        os.chmod(dst, stat.S_IMODE(sst.st_mode))


def unlock_tree(top: str) -> None:
    """Give the owner read, write and search rights on the folder ``top`` and every folder
    under it, so what is in them can be removed. Links are never followed: the walk goes
    from folder to folder by descriptor, each opened without following a link, and only
    what ``lstat`` calls a folder is changed (by a descriptor of that very folder where the
    system gives one), so nothing outside ``top`` changes."""
    try:
        st = os.lstat(top)
    except OSError:
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    if st.st_mode & stat.S_IRWXU != stat.S_IRWXU:
        try:
            _chmod_at(None, top, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
        except OSError:
            return
    try:
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    # one open folder per level: a folder of many folders costs no more descriptors
    stack: list[tuple[int, Iterator[str]]] = []
    try:
        stack.append((fd, iter(os.listdir(fd))))
    except OSError:
        os.close(fd)
    while stack:
        fd, names = stack[-1]
        name = next(names, None)
        if name is None:
            os.close(fd)
            stack.pop()
            continue
        try:
            sub = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISDIR(sub.st_mode):
                continue
            if sub.st_mode & stat.S_IRWXU != stat.S_IRWXU:
                _chmod_at(fd, name, stat.S_IMODE(sub.st_mode) | stat.S_IRWXU)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError:
            continue
        try:
            stack.append((child, iter(os.listdir(child))))
        except OSError:
            os.close(child)


def _chmod_at(fd: int | None, name: str, mode: int) -> None:
    """Set the mode of the folder ``name`` (in the folder ``fd``, or from the working
    folder) without following a link: through a descriptor of the folder itself (Linux's
    ``O_PATH``), or, where the system has none, by name once ``lstat`` has said it is a
    folder. A link there is left as it is."""
    o_path = getattr(os, "O_PATH", 0)
    if o_path and os.path.isdir("/proc/self/fd"):
        flags = o_path | os.O_DIRECTORY | os.O_NOFOLLOW
        handle = os.open(name, flags) if fd is None else os.open(name, flags, dir_fd=fd)
        try:
            os.chmod(f"/proc/self/fd/{handle}", mode)  # the folder the descriptor holds
        finally:
            os.close(handle)
        return
    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        os.chmod(name, mode, dir_fd=fd)


def remove_path(path: Path | str) -> OSError | None:
    """Remove a file, link or directory tree, whatever it is, never following a link: a
    symlink is removed as a link, and a tree is removed by :func:`shutil.rmtree`, which on
    this platform walks by file descriptor and removes the links it meets as links (and
    refuses a link at the top, which the ``lstat`` here has already ruled out). A tree
    holding folders its user made read-only (``chmod -R a-w``, Snakemake's
    ``protected()``) is removed all the same: what a plain removal leaves, the folders
    inside the tree are given their owner's write bit (see :func:`unlock_tree`) and it is
    removed again. Nothing outside ``path`` changes: its own parent folder is never made
    writable. None once nothing is left at ``path``; else the first error met, naming what
    could not be removed and why."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISDIR(st.st_mode):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            return exc
        return None
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        return None
    unlock_tree(str(path))
    errors: list[OSError] = []

    def note(_fn: Any, where: str, exc: Any) -> None:
        exc = exc[1] if isinstance(exc, tuple) else exc  # ``onerror`` gives an exc_info
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            exc.filename = where  # the whole path (a walk by descriptor names only the entry)
            errors.append(exc)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=note)
    else:
        shutil.rmtree(path, onerror=note)
    if not os.path.lexists(path):
        return None
    if errors:
        return errors[0]
    return OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), str(path))

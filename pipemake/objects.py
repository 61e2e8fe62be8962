"""The objects directory: one read-only file per content hash, ``ab/cdef…``.

What lies here may have been written by anyone with access to a shared store, so nothing is
taken on trust: a digest must be a digest before it names a file; the objects directory and
its fan-out directories are opened without following links and every name is taken inside
them; only regular files are read (a FIFO, device, directory or link in an object's place is
removed as a name inside the store, never followed or waited on), at most their size, and
checked against their hash before a copy or link of them is handed over. Objects appear by
atomic rename (or link), put-if-absent, so concurrent writers never corrupt each other.

With ``link`` (``pipemake build --link``) objects and workspace files share inodes: a stored
output becomes the object by a hard link instead of a copy, and a restore links the object
to its destination. Such files are read-only (an object is never made writable), and a store
on another filesystem, or one that refuses links, falls back to copying.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from .errors import StoreError
from .trust import is_digest, safe_mode

__all__ = ["GRACE", "REMOTE_GRACE", "Objects", "Scan"]

#: seconds during which ``cache gc`` leaves a new object or entry alone: a build may have
#: written it and not yet committed the entry that names it
GRACE = 3600.0
#: default seconds an unreachable remote object survives ``cache gc --remote``
REMOTE_GRACE = 86400.0
_FICLONE = 0x40049409
_CHUNK = 1 << 20
OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Objects:
    """The content-addressed files of one store, read as untrusted input."""

    def __init__(
        self,
        path: Path,
        *,
        readonly: bool = False,
        fsync: bool = False,
        link: bool = False,
        on_remove: Callable[[], None] = lambda: None,
        on_create: Callable[[], None] = lambda: None,
    ):
        self.path = Path(path)
        self._path_str = str(self.path)
        self.readonly = readonly
        self.fsync = fsync
        #: hard-link objects to and from the workspace instead of copying (``--link``)
        self.link = link
        #: cleared at the first failed link: linking does not work here, copy from then on
        self.can_link = True
        #: called before an object (or anything in one's place) is removed
        self.on_remove = on_remove
        #: called before the objects directory is opened for writing (the store checks,
        #: and marks, the folder it is in: see :meth:`pipemake.store.Store._claim`)
        self.on_create = on_create
        #: descriptors of the objects directory ("") and its fan-out directories, opened
        #: without following links; ``_parked`` ones were removed by hand meanwhile
        self._fds: dict[str, int] = {}
        self._parked: list[int] = []
        self._fd_lock = threading.RLock()

    def object_path(self, digest: str) -> Path:
        """Where the object ``digest`` lives (for messages and tests; reading goes through
        the checked methods below)."""
        if not is_digest(digest):
            raise ValueError(f"not a content hash: {digest!r}")
        return self.path / digest[:2] / digest[2:]

    def _dir(self, fan: str, create: bool) -> int | None:
        """A descriptor of the objects directory (``fan`` empty) or of one fan-out directory,
        opened without following a link, kept open for this store's life. None when it is
        absent, or is not a real directory and ``create`` is off (a link is never
        followed). With ``create``, a link or file in its place (inside the store) is
        replaced by a directory."""
        fd = self._fds.get(fan)
        if fd is not None:
            return fd
        with self._fd_lock:
            fd = self._fds.get(fan)
            if fd is not None:
                return fd
            create = create and not self.readonly
            if fan:
                parent = self._dir("", create)
                if parent is None:
                    return None
                try:
                    fd = open_dir(fan, parent, create, self.fsync)
                except FileNotFoundError:  # the objects directory was removed meanwhile
                    fd = None
                if fd is None and self._stale("", parent):
                    return self._dir(fan, create)  # the objects directory made anew
            else:
                if create:
                    self.on_create()
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = open_dir(self._path_str, None, create, self.fsync)
            if fd is not None:
                self._fds[fan] = fd
            return fd

    def _stale(self, fan: str, fd: int) -> bool:
        """Forget the descriptor of a directory removed since it was opened (someone
        deleted it by hand); whether it was such a one. It stays open until :meth:`close`,
        since another thread may be using it."""
        try:
            gone = os.fstat(fd).st_nlink == 0
        except OSError:
            gone = True
        if gone:
            with self._fd_lock:
                if self._fds.get(fan) == fd:
                    del self._fds[fan]
                    self._parked.append(fd)
        return gone

    def _open_object(self, digest: str) -> tuple[int, int, os.stat_result] | None:
        """``(fan-out dir fd, object fd, its stat)`` of the object ``digest`` when it is a
        regular file; None when it is missing or is anything else (a link, a FIFO, a
        directory, a device: such a thing is removed from the store, as a name in its own
        fan-out directory, and never followed, read or waited on)."""
        if not is_digest(digest):
            return None
        fan, name = digest[:2], digest[2:]
        for attempt in (0, 1):
            dfd = self._dir(fan, False)
            if dfd is None:
                return None
            try:
                fd = os.open(name, OPEN_FILE, dir_fd=dfd)
            except FileNotFoundError:
                if attempt == 0 and self._stale(fan, dfd):
                    continue
                return None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP):
                    self._discard(dfd, name)  # a symlink, a socket, a device: not an object
                return None
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                self._discard(dfd, name)
                return None
            return dfd, fd, st
        return None

    def _discard(self, dfd: int, name: str) -> bool:
        """Remove a bad object: the name ``name`` in the fan-out directory ``dfd`` (a link
        as a link; a directory with what it holds), never anything it points to. Whether
        this call removed it (another process may have been first)."""
        if self.readonly:
            return False
        self.on_remove()
        try:
            os.unlink(name, dir_fd=dfd)
        except IsADirectoryError:
            shutil.rmtree(name, dir_fd=dfd, ignore_errors=True)
        except PermissionError:  # Linux says EPERM for some directories too
            if not _is_dir(name, dfd):
                return False
            shutil.rmtree(name, dir_fd=dfd, ignore_errors=True)
        except OSError:
            return False
        return True

    def has_object(self, digest: str) -> bool:
        """Whether the object ``digest`` is present as a regular file (not checked)."""
        if not is_digest(digest):
            return False
        dfd = self._dir(digest[:2], False)
        if dfd is None:
            return False
        try:
            st = os.stat(digest[2:], dir_fd=dfd, follow_symlinks=False)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode)

    def _present(self, dfd: int, name: str) -> bool:
        """Whether a regular object ``name`` is in the fan-out directory ``dfd`` (what a
        put-if-absent writer checks). An old one is marked as just used (its ctime, never its
        content or mtime), so a ``cache gc`` running now keeps it for the entry about to
        name it. Anything else under that name is removed, to be replaced."""
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode):
            self._discard(dfd, name)
            return False
        if st.st_ctime < time.time() - GRACE / 2:
            with quiet():
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                try:
                    os.fchmod(fd, stat.S_IMODE(st.st_mode))
                finally:
                    os.close(fd)
        return True

    def put_file(self, src: str, digest: str) -> None:
        """Copy ``src`` (whose content hash is ``digest``) into the store if it is not there;
        with ``link``, make ``src`` read-only and link it there instead."""
        if self.link and self.can_link and self._put_link(src, digest):
            return

        def write(out: int) -> None:
            with open(src, "rb") as inp:
                _copy(inp, out)

        self._put(digest, write)

    def put_read(self, src: str, digest: str, data: bytes, st: os.stat_result) -> bool:
        """Store the staged file ``src`` whose bytes ``data`` (content hash ``digest``) and
        stat ``st`` (of the open file) were just read: the object is written from ``data``,
        with no second read of ``src``; with ``link``, linked as :meth:`put_file` does.
        True when ``src`` was made the object (a read-only link) rather than copied."""
        if self.link and self.can_link and self._put_link(src, digest, st):
            return os.stat(src).st_nlink > 1
        self._put(digest, data)
        return False

    def _fan_for_write(self, digest: str) -> int:
        if not is_digest(digest):
            raise ValueError(f"not a content hash: {digest!r}")
        dfd = self._dir(digest[:2], True)
        if dfd is None:
            raise StoreError(f"cannot write objects to {self.path} (the store is opened read-only)")
        return dfd

    def _put_link(self, src: str, digest: str, st: os.stat_result | None = None) -> bool:
        """Make the staged file ``src`` the object ``digest`` by a hard link. False when it
        must be copied: a link failed, or ``src`` is not a plain file of one name (a file the
        rule linked from elsewhere, an input say, keeps its other names writable). ``st`` is
        ``src``'s stat when the caller has it (never a symlink's)."""
        dfd = self._fan_for_write(digest)
        name = digest[2:]
        if self._present(dfd, name):
            return True
        if st is None:
            st = os.lstat(src)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return False
        parent = os.path.dirname(os.path.abspath(src))
        if os.path.realpath(parent) != parent:
            return False  # reached through a symlinked folder: maybe a user's file elsewhere
        old = stat.S_IMODE(st.st_mode)
        os.chmod(src, 0o555 if old & 0o111 else 0o444)  # before it is an object: never after
        if self.fsync:
            with open(src, "rb") as fh:
                os.fsync(fh.fileno())
        try:
            try:
                os.link(src, name, dst_dir_fd=dfd, follow_symlinks=False)
                made = True
            except FileExistsError:
                made = False
            except FileNotFoundError:
                if not os.path.lexists(src) or not self._stale(digest[:2], dfd):
                    raise
                dfd = self._fan_for_write(digest)
                os.link(src, name, dst_dir_fd=dfd, follow_symlinks=False)
                made = True
        except FileExistsError:
            made = False
        except OSError:
            self.can_link = False
            os.chmod(src, old)
            return False
        if not made:  # another writer put the object first: src stays a file of its own
            os.chmod(src, old)
        elif self.fsync:
            os.fsync(dfd)
        return True

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` as an object; return its hash."""
        digest = xxhash.xxh3_128_hexdigest(data)
        self._put(digest, data)
        return digest

    def _put(self, digest: str, data: bytes | Callable[[int], None]) -> None:
        """Write an absent object (``data``, or what ``data(fd)`` writes to the open file)
        through a read-only temporary file and a rename, so a reader (or a concurrent writer
        of the same object) never sees half of it. Every name is taken in the fan-out
        directory opened without following links, so nothing is written outside the store."""
        dfd = self._fan_for_write(digest)
        name = digest[2:]
        if self._present(dfd, name):
            return
        # named by process and thread: two writers of one object never share a temporary
        tmp = f".tmp-{os.getpid()}-{threading.get_ident()}-{digest}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(tmp, flags, 0o444, dir_fd=dfd)
        except FileNotFoundError:  # its fan-out directory was removed since it was opened
            if not self._stale(digest[:2], dfd):
                raise
            dfd = self._fan_for_write(digest)
            fd = os.open(tmp, flags, 0o444, dir_fd=dfd)
        try:
            try:
                if isinstance(data, bytes):
                    write_all(fd, data)
                else:
                    data(fd)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except OSError:  # a directory put there under the object's name
                self._discard(dfd, name)
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            if self.fsync:
                os.fsync(dfd)
        except BaseException:
            with quiet():
                os.unlink(tmp, dir_fd=dfd)
            raise

    def read_bytes(self, digest: str) -> bytes | None:
        """An object's bytes, verified; None if it is missing or corrupt (a corrupt one is
        removed)."""
        got = self._open_object(digest)
        if got is None:
            return None
        dfd, fd, st = got
        with open(fd, "rb") as fh:
            data = fh.read(st.st_size + 1)
        if len(data) != st.st_size or xxhash.xxh3_128_hexdigest(data) != digest:
            self._discard(dfd, digest[2:])
            return None
        return data

    def materialize(self, digest: str, dst: str, mode: int, size: int | None = None) -> bool:
        """Write the object ``digest`` to ``dst`` (a new file) with ``mode``'s executable
        bit (see :func:`safe_mode`), checking its hash as it is copied. ``size`` (the size
        the manifest records, when the caller has it) bounds what is read. A missing,
        corrupt or malformed object (not a digest, not a regular file, another size) returns
        False with ``dst`` absent; a bad one is removed from the store.

        With ``link``, ``dst`` becomes a hard link to the object once the object is verified,
        when the object is this user's, read-only and has ``mode``'s executable bit;
        otherwise (or when linking fails) it is a copy."""
        got = self._open_object(digest)
        if got is None:
            return False
        dfd, fd, st = got
        name = digest[2:]
        linked = False
        with open(fd, "rb") as inp:
            if size is not None and st.st_size != size:
                # a miss; the object is removed only if it is at fault too (a linked output
                # edited in place), not where only the entry lies about its size
                if st.st_size <= _RECHECK_MAX and _hash_fd(inp, st.st_size) != digest:
                    self._discard(dfd, name)
                return False
            if self.link and self.can_link:
                ok = linked = self._link_out(inp, dfd, name, digest, dst, mode, st)
            else:
                ok: bool | None = None
            if ok is None:
                ok = _copy_checked(inp, st.st_size, digest, dst)
        if not ok:
            self._discard(dfd, name)
            return False
        if not linked:  # a linked object already has the mode (read-only, same exec bit)
            os.chmod(dst, safe_mode(mode))
        return True

    def _link_out(
        self, inp: Any, dfd: int, name: str, digest: str, dst: str, mode: int, st: os.stat_result
    ) -> bool | None:
        """Link the object open as ``inp`` at ``dst`` once verified: True when linked, False
        when it is corrupt, None when it must be copied instead."""
        if (
            st.st_mode & 0o7222
            or st.st_uid != os.getuid()
            or bool(st.st_mode & 0o111) != bool(mode & 0o111)
        ):
            return None  # shared only when nobody else can change it and no mode changes
        if _hash_fd(inp, st.st_size) != digest:
            return False
        try:
            os.link(name, dst, src_dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None  # removed since it was opened (a concurrent ``cache gc``): copy it
        except OSError as exc:
            if exc.errno in (errno.ENAMETOOLONG, errno.EILSEQ):
                raise  # ``dst`` is a name this file system refuses, not a link it cannot make
            self.can_link = False
            return None
        if not os.path.samestat(os.stat(dst, follow_symlinks=False), st):
            os.unlink(dst)  # replaced since it was verified: copy what was verified
            return None
        return True

    def verify_object(self, digest: str) -> bool | None:
        """True if the object matches its hash, False if corrupt or not a regular file
        (then removed), None if missing."""
        dfd = self._dir(digest[:2], False) if is_digest(digest) else None
        if dfd is None or not exists_at(digest[2:], dfd):
            return None
        got = self._open_object(digest)
        if got is None:
            return False
        dfd, fd, st = got
        with open(fd, "rb") as fh:
            ok = _hash_fd(fh, st.st_size) == digest
        if not ok:
            self._discard(dfd, digest[2:])
        return ok

    def iter_objects(self) -> Iterator[str]:
        """The digests of the objects present (regular files under digest names)."""
        for digest, _st in self.scan().objects:
            yield digest

    def scan(self) -> Scan:
        """List the objects directory without following a link and without failing on a
        name that vanishes meanwhile (a writer's temporary renamed, a concurrent ``gc``):
        objects, temporaries and whatever else lies there (never made by pipemake)."""
        out = Scan()
        ofd = self._dir("", False)
        if ofd is None:
            if os.path.islink(self._path_str) or os.path.lexists(self._path_str):
                out.strays.append(("objects", "not a directory (never followed)"))
            return out
        for top in sorted(list_dir(ofd), key=lambda e: e.name):
            if len(top.name) != 2 or not is_digest(top.name * 16):
                out.strays.append((f"objects/{top.name}", _what(top)))
                continue
            if not _entry_is(top, stat.S_ISDIR):
                out.strays.append((f"objects/{top.name}", _what(top)))
                continue
            dfd = self._dir(top.name, False)
            if dfd is None:
                continue
            for e in sorted(list_dir(dfd), key=lambda e: e.name):
                rel = f"objects/{top.name}/{e.name}"
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone since it was listed
                if e.name.startswith(".tmp-") and stat.S_ISREG(st.st_mode):
                    out.temporaries.append((top.name, e.name, st))
                elif is_digest(top.name + e.name) and stat.S_ISREG(st.st_mode):
                    out.objects.append((top.name + e.name, st))
                else:
                    out.strays.append((rel, _what(e)))
        return out

    def remove_stray(self, rel: str) -> None:
        """Remove something that is not an object from the objects directory (``rel`` as
        :meth:`scan` names it): a link as a link, a directory with its contents, never what
        a link points to."""
        parts = rel.split("/")
        if parts[0] != "objects" or len(parts) not in (1, 2, 3):
            raise ValueError(f"not a path in the objects directory: {rel!r}")
        if len(parts) == 1:
            path = self._path_str
            if os.path.islink(path) or not os.path.isdir(path):
                with quiet():
                    os.unlink(path)
            return
        dfd = self._dir("", False) if len(parts) == 2 else self._dir(parts[1], False)
        if dfd is not None:
            self._discard(dfd, parts[-1])

    def remove_temporary(self, fan: str, name: str) -> None:
        """Remove a temporary file a killed writer left (see :meth:`scan`)."""
        dfd = self._dir(fan, False)
        if dfd is not None and name.startswith(".tmp-") and "/" not in name:
            with quiet():
                os.unlink(name, dir_fd=dfd)

    def remove_object(self, digest: str, older_than: float | None = None) -> bool:
        """Remove an object (``cache gc``, ``cache verify``); with ``older_than``, only when
        it has not been written or marked as used since then (a build may be about to name
        it). Whether it was removed."""
        if not is_digest(digest):
            return False
        dfd = self._dir(digest[:2], False)
        if dfd is None:
            return False
        if older_than is not None:
            try:
                st = os.stat(digest[2:], dir_fd=dfd, follow_symlinks=False)
            except OSError:
                return False
            if max(st.st_ctime, st.st_mtime) >= older_than:
                return False
        return self._discard(dfd, digest[2:])

    # roots ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the directory descriptors (they reopen on demand)."""
        with self._fd_lock:
            fds = [*self._fds.values(), *self._parked]
            self._fds, self._parked = {}, []
        for fd in fds:
            with quiet():
                os.close(fd)

    def __del__(self) -> None:
        # a worker makes a store per task and lets it go: its descriptors go with it
        with contextlib.suppress(Exception):
            self.close()


#: an object whose size is not the recorded one is hashed up to this size, to tell whether
#: it is at fault (then removed) or only the entry is
_RECHECK_MAX = 256 << 20


def _hash_fd(fh: Any, limit: int) -> str:
    """The hash of the open file's first ``limit`` bytes; "" when it holds more (it grew
    since it was measured, so it cannot be what was measured)."""
    fh.seek(0)
    h = xxhash.xxh3_128()
    left = limit
    while left > 0 and (chunk := fh.read(min(_CHUNK, left))):
        h.update(chunk)
        left -= len(chunk)
    return "" if fh.read(1) else h.hexdigest()


def _copy_checked(inp: Any, size: int, digest: str, dst: str) -> bool:
    """Copy the open object ``inp`` of ``size`` bytes to the new file ``dst`` and check the
    hash of what was read; on a mismatch ``dst`` is removed. Whether it matched."""
    with open(dst, "wb") as out:
        if _reflink(inp, out.fileno()):
            ok = _hash_fd(inp, size) == digest
        else:
            inp.seek(0)
            h = xxhash.xxh3_128()
            left = size
            while left > 0 and (chunk := inp.read(min(_CHUNK, left))):
                h.update(chunk)
                out.write(chunk)
                left -= len(chunk)
            ok = not inp.read(1) and h.hexdigest() == digest
    if not ok:
        with quiet():
            os.unlink(dst)
    return ok


def _reflink(inp: Any, out: int) -> bool:
    """Make the new file descriptor ``out`` a copy-on-write clone of the open file ``inp``
    (where the filesystem can); whether it did."""
    try:
        fcntl.ioctl(out, _FICLONE, inp.fileno())
        return True
    except OSError:
        return False


def _copy(inp: Any, out: int) -> None:
    """Copy the open file ``inp`` to the new file descriptor ``out``."""
    if _reflink(inp, out):
        return
    try:
        size = os.fstat(inp.fileno()).st_size
        sent = 0
        while sent < size:
            n = os.sendfile(out, inp.fileno(), sent, size - sent)
            if n == 0:
                break
            sent += n
        if sent == size:
            return
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.ENOTSUP):
            raise
    inp.seek(0)
    os.lseek(out, 0, os.SEEK_SET)
    os.ftruncate(out, 0)
    while chunk := inp.read(_CHUNK):
        write_all(out, chunk)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def open_dir(name: str, dir_fd: int | None, create: bool, fsync: bool) -> int | None:
    """Open the directory ``name`` (in ``dir_fd``) without following a link. None when it
    is absent or not a directory; with ``create``, made (a link or file of that name, inside
    the store, is removed first)."""
    try:
        return os.open(name, _OPEN_DIR, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            return None
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR) or not create:
            return None
        with quiet():
            os.unlink(name, dir_fd=dir_fd)
    try:
        os.mkdir(name, dir_fd=dir_fd)
    except FileExistsError:
        pass
    if fsync and dir_fd is not None:
        os.fsync(dir_fd)
    return os.open(name, _OPEN_DIR, dir_fd=dir_fd)


def list_dir(fd: int) -> list[os.DirEntry[str]]:
    """The entries of an open directory; empty when it went away meanwhile."""
    try:
        with os.scandir(fd) as it:
            return list(it)
    except OSError:
        return []


def _entry_is(e: os.DirEntry[str], test: Callable[[int], bool]) -> bool:
    try:
        return test(e.stat(follow_symlinks=False).st_mode)
    except OSError:
        return False


def _what(e: os.DirEntry[str]) -> str:
    """What a stray directory entry is, in words."""
    try:
        mode = e.stat(follow_symlinks=False).st_mode
    except OSError:
        return "gone"
    if stat.S_ISLNK(mode):
        return "a symlink (never followed)"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a file whose name is not a content hash"
    return "not a regular file"


def _is_dir(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def exists_at(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except OSError:
        return False


@dataclass
class Scan:
    """What the objects directory holds (see :meth:`Store.scan`): ``objects`` as (digest,
    lstat), ``temporaries`` as (fan-out dir, name, lstat), ``strays`` as (path in the
    store, what it is): things pipemake never puts there, never followed."""

    objects: list[tuple[str, os.stat_result]] = field(default_factory=list)
    temporaries: list[tuple[str, str, os.stat_result]] = field(default_factory=list)
    strays: list[tuple[str, str]] = field(default_factory=list)


class quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, *_: Any) -> bool:
        return exc_type is not None and issubclass(exc_type, OSError)

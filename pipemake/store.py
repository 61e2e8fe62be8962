"""The store: content-addressed objects and the action cache (key → outputs, values).

Layout under the cache directory (``.pipemake/store`` by default)::

    objects/ab/cdef…    one read-only file per content hash, written put-if-absent
    actions.db          SQLite: key → JSON entry (output manifests, computed values, …)

Nothing here is ever unpickled: entries are JSON text, so a store restored from an
untrusted CI cache cannot run code. Objects are verified against their hash when they are
restored; a corrupt object is removed and reported as a miss. Two workspaces may share one
store at once: objects appear by atomic rename (or link) and entries by single SQLite
statements.

With ``link`` (``pipemake build --link``) objects and workspace files share inodes: a stored
output becomes the object by a hard link instead of a copy, and a restore links the object
to its destination. Such files are read-only (an object is never made writable), and a store
on another filesystem, or one that refuses links, falls back to copying.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import xxhash

from .errors import StoreError

__all__ = ["STORE_FORMAT", "Store", "transaction"]

STORE_FORMAT = 1
_FICLONE = 0x40049409
_CHUNK = 1 << 20

#: ``json.dumps(entry, sort_keys=True)`` without building an encoder per entry
_encode = json.JSONEncoder(sort_keys=True).encode

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS actions (
    key TEXT PRIMARY KEY, entry TEXT NOT NULL, created REAL NOT NULL, used REAL NOT NULL);
"""


class Store:
    """Objects plus the action cache, in one directory that may be shared."""

    def __init__(self, path: Path, fsync: bool = False, readonly: bool = False, link: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self.objects = self.path / "objects"
        self.fsync = fsync
        #: hard-link objects to and from the workspace instead of copying (``--link``)
        self.link = link
        #: cleared at the first failed link: linking does not work here, copy from then on
        self.can_link = True
        self._db: sqlite3.Connection | None = None
        self._version = 0
        self._removed = False  # this instance has counted a removal of objects
        self._objects_str = str(self.objects)

    # database ---------------------------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            if self.readonly and not (self.path / "actions.db").exists():
                # a plan on a fresh project: an empty store, and nothing written to disk
                self._db = sqlite3.connect(":memory:", isolation_level=None)
                self._db.executescript(_SCHEMA)
                self._version = _data_version(self._db)
                return self._db
            self.path.mkdir(parents=True, exist_ok=True)
            deadline = time.monotonic() + 60
            while True:
                try:
                    db, fmt = self._open()
                    break
                except sqlite3.OperationalError as exc:
                    # another process creating the same store (a shared --cache-dir) holds
                    # it for a moment, and changing the journal mode does not wait by itself
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise StoreError(f"cannot open the store at {self.path}: {exc}") from None
                    time.sleep(0.05)
                except sqlite3.DatabaseError as exc:
                    raise StoreError(f"cannot open the store at {self.path}: {exc}") from None
            if fmt != str(STORE_FORMAT):
                raise StoreError(
                    f"the store at {self.path} has format {fmt}, this pipemake reads "
                    f"{STORE_FORMAT}; point --cache-dir elsewhere or remove it"
                )
            self._db = db
            self._version = _data_version(db)
        return self._db

    def set_fsync(self, fsync: bool) -> None:
        """Flush objects and entry commits to disk from now on (or no longer)."""
        self.fsync = fsync
        if self._db is not None:
            self._db.execute("PRAGMA synchronous=" + ("FULL" if fsync else "NORMAL"))

    def written_by_others(self) -> bool:
        """Whether another connection (another build, a ``cache gc`` in a workspace sharing
        this ``--cache-dir``) committed to the store since this one opened it."""
        return self._db is not None and _data_version(self._db) != self._version

    def _open(self) -> tuple[sqlite3.Connection, str]:
        db = sqlite3.connect(self.path / "actions.db", timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=" + ("FULL" if self.fsync else "NORMAL"))
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (str(STORE_FORMAT),))
            fmt = db.execute("SELECT value FROM meta WHERE name='format'").fetchone()[0]
        except BaseException:
            db.close()
            raise
        return db, fmt

    def get_action(self, key: str) -> dict[str, Any] | None:
        """The entry stored under ``key``, or None."""
        try:
            row = self.db.execute("SELECT entry FROM actions WHERE key=?", (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"the store's action cache is unreadable: {exc}") from None
        if row is None:
            return None
        return _entry(row[0])

    def get_actions(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The entries of many keys at once: one query, and their JSON parsed in one go."""
        if not keys:
            return {}
        rows = self.db.execute(
            "SELECT key, entry FROM actions WHERE key IN (SELECT value FROM json_each(?))",
            (json.dumps(keys),),
        ).fetchall()
        try:
            parsed = json.loads("[" + ",".join([text for _, text in rows]) + "]")
        except (ValueError, TypeError):  # a damaged row: parse them one by one
            parsed = None
        if parsed is not None and len(parsed) != len(rows):
            parsed = None  # a tampered row holding several values: never misalign
        out: dict[str, dict[str, Any]] = {}
        for i, (key, text) in enumerate(rows):
            entry = _entry(text) if parsed is None else _checked(parsed[i])
            if entry is not None:
                out[key] = entry
        return out

    def put_action(self, key: str, entry: dict[str, Any]) -> None:
        """Commit an entry: the point after which a build's work is done for good."""
        self.put_actions([(key, entry)])

    def put_actions(self, pairs: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Commit several entries in one transaction."""
        now = time.time()
        rows = [(k, _encode(e), now, now) for k, e in pairs]
        db = self.db
        with transaction(db):
            db.executemany("INSERT OR REPLACE INTO actions VALUES (?,?,?,?)", rows)

    def actions(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every entry (for ``cache verify`` and ``cache gc``)."""
        for key, text in self.db.execute("SELECT key, entry FROM actions"):
            try:
                yield key, json.loads(text)
            except ValueError:
                continue

    def created(self) -> dict[str, float]:
        """When each entry was written (key → seconds since the epoch)."""
        return dict(self.db.execute("SELECT key, created FROM actions"))

    def delete_actions(self, keys: Iterable[str]) -> None:
        """Remove entries (``cache gc``); their objects go with the next sweep."""
        self._count_removal()
        db = self.db
        with transaction(db):
            db.executemany("DELETE FROM actions WHERE key=?", [(k,) for k in keys])

    def stale_temporaries(self, older_than: float) -> list[Path]:
        """Temporary files a killed writer left among the objects."""
        if not self.objects.is_dir():
            return []
        return [
            f
            for sub in self.objects.iterdir()
            if sub.is_dir()
            for f in sub.iterdir()
            if f.name.startswith(".tmp-") and f.stat().st_mtime < older_than
        ]

    # objects ----------------------------------------------------------------------------
    def object_path(self, digest: str) -> Path:
        return self.objects / digest[:2] / digest[2:]

    def _object_str(self, digest: str) -> str:
        """:meth:`object_path` as a string, without building paths (once per stored file)."""
        return f"{self._objects_str}/{digest[:2]}/{digest[2:]}"

    def has_object(self, digest: str) -> bool:
        return self.object_path(digest).is_file()

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

    def _put_link(self, src: str, digest: str, st: os.stat_result | None = None) -> bool:
        """Make the staged file ``src`` the object ``digest`` by a hard link. False when it
        must be copied: a link failed, or ``src`` is not a plain file of one name (a file the
        rule linked from elsewhere, an input say, keeps its other names writable). ``st`` is
        ``src``'s stat when the caller has it (never a symlink's)."""
        dst = self._object_str(digest)
        if _is_file(dst):
            return True
        if st is None:
            st = os.lstat(src)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return False
        old = stat.S_IMODE(st.st_mode)
        os.chmod(src, 0o555 if old & 0o111 else 0o444)  # before it is an object: never after
        if self.fsync:
            with open(src, "rb") as fh:
                os.fsync(fh.fileno())
        try:
            made = _link_absent(src, dst)
        except OSError:
            self.can_link = False
            os.chmod(src, old)
            return False
        if not made:  # another writer put the object first: src stays a file of its own
            os.chmod(src, old)
        elif self.fsync:  # its name, and its fan-out directory's (maybe just made)
            _fsync_dir(os.path.dirname(dst))
            _fsync_dir(self._objects_str)
        return True

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` as an object; return its hash."""
        digest = xxhash.xxh3_128_hexdigest(data)
        self._put(digest, data)
        return digest

    def _put(self, digest: str, data: bytes | Callable[[int], None]) -> None:
        """Write an absent object (``data``, or what ``data(fd)`` writes to the open file)
        through a read-only temporary file and a rename, so a reader (or a concurrent writer
        of the same object) never sees half of it."""
        parent = f"{self._objects_str}/{digest[:2]}/"
        dst = parent + digest[2:]
        if _is_file(dst):
            return
        # named by process and thread: two writers of one object never share a temporary
        tmp = f"{parent}.tmp-{os.getpid()}-{threading.get_ident()}-{digest}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o444)
        except FileNotFoundError:  # its fan-out directory is not there yet
            os.makedirs(parent, exist_ok=True)
            if self.fsync:
                _fsync_dir(self._objects_str)
            fd = os.open(tmp, flags, 0o444)
        try:
            try:
                if isinstance(data, bytes):
                    _write_all(fd, data)
                else:
                    data(fd)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, dst)
            if self.fsync:
                _fsync_dir(parent)
        except BaseException:
            with _quiet():
                os.unlink(tmp)
            raise

    def read_bytes(self, digest: str) -> bytes | None:
        """An object's bytes, verified; None if it is missing or corrupt."""
        try:
            data = self.object_path(digest).read_bytes()
        except FileNotFoundError:
            return None
        if xxhash.xxh3_128_hexdigest(data) != digest:
            self.remove_object(digest)
            return None
        return data

    def materialize(self, digest: str, dst: str, mode: int) -> bool:
        """Write the object ``digest`` to ``dst`` (a new file), checking its hash as it is
        copied. A missing or corrupt object returns False (a corrupt one is removed).

        With ``link``, ``dst`` becomes a hard link to the object once the object is verified,
        when the object is read-only and has ``mode``'s executable bit; otherwise (or when
        linking fails) it is a copy."""
        src = self.object_path(digest)
        try:
            inp = open(src, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return False
        if self.link and self.can_link:
            with inp:
                linked = self._link_out(inp, src, digest, dst, mode)
            if linked is not None:
                return linked
            try:
                inp = open(src, "rb")  # noqa: SIM115
            except FileNotFoundError:
                return False
        with inp, open(dst, "wb") as out:
            if _reflink(inp, out.fileno()):
                ok = _hash_fd(inp) == digest
            else:
                h = xxhash.xxh3_128()
                while chunk := inp.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                ok = h.hexdigest() == digest
        if not ok:
            os.unlink(dst)
            self._count_removal()
            with _quiet():
                os.unlink(src)
            return False
        os.chmod(dst, mode)
        return True

    def _link_out(self, inp: Any, src: Path, digest: str, dst: str, mode: int) -> bool | None:
        """Link the verified object open as ``inp`` at ``dst``: True when linked, False when
        it is corrupt (and removed) or gone, None when it must be copied instead."""
        st = os.fstat(inp.fileno())
        if st.st_mode & 0o222 or bool(st.st_mode & 0o111) != bool(mode & 0o111):
            return None  # a writable object is never shared; a mode is never changed
        if _hash_fd(inp) != digest:
            self._count_removal()
            with _quiet():
                os.unlink(src)
            return False
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileNotFoundError:
            if not src.exists():
                return False  # removed since it was verified (a concurrent ``cache gc``)
            self.can_link = False
            return None
        except OSError:
            self.can_link = False
            return None
        if os.stat(dst).st_ino != st.st_ino:  # replaced since it was verified: check again
            os.unlink(dst)
            return None
        return True

    def verify_object(self, digest: str) -> bool | None:
        """True if the object matches its hash, False if corrupt, None if missing."""
        try:
            with open(self.object_path(digest), "rb") as fh:
                return _hash_fd(fh) == digest
        except FileNotFoundError:
            return None

    def iter_objects(self) -> Iterator[str]:
        if not self.objects.is_dir():
            return
        for sub in sorted(self.objects.iterdir()):
            if sub.is_dir():
                for f in sorted(sub.iterdir()):
                    if not f.name.startswith(".tmp-"):
                        yield sub.name + f.name

    def remove_object(self, digest: str) -> None:
        if not self._removed:
            self._count_removal()
        with _quiet():
            os.unlink(self.object_path(digest))

    def removals(self) -> int:
        """How many times entries or objects were removed from this store (``cache gc``,
        ``cache verify``, a corrupt object dropped): what a workspace's own record of the
        store's contents (the foreach item index) must still match to be trusted."""
        row = self.db.execute("SELECT value FROM meta WHERE name='removals'").fetchone()
        return int(row[0]) if row else 0

    def _count_removal(self) -> None:
        self._removed = True
        if self.readonly:
            return
        self.db.execute(
            "INSERT INTO meta VALUES ('removals', '1') ON CONFLICT(name) DO UPDATE "
            "SET value = CAST(value AS INTEGER) + 1"
        )

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _data_version(db: sqlite3.Connection) -> int:
    """SQLite's count of commits by other connections, as this connection sees it."""
    return int(db.execute("PRAGMA data_version").fetchone()[0])


def is_manifest(m: Any) -> bool:
    """Whether ``m`` has the shape of an output manifest (a file's or a directory's)."""
    if type(m) is not dict or type(m.get("hash")) is not str:
        return False
    kind = m.get("kind")
    if kind == "file":
        return type(m.get("size")) is int and type(m.get("mode")) is int
    entries = m.get("entries")
    if kind != "dir" or type(entries) is not list:
        return False
    for e in entries:  # a hundred thousand of these on a big stage: plain checks, no genexpr
        if type(e) is not list or len(e) != 4:
            return False
        if type(e[0]) is not str or type(e[1]) is not str:
            return False
        if type(e[2]) is not int or type(e[3]) is not int:
            return False
    return True


def _entry(text: str) -> dict[str, Any] | None:
    """A stored entry, or None when it is not JSON of the expected shape (a tampered or
    damaged row is a cache miss, never a crash and never code)."""
    try:
        entry = json.loads(text)
    except (ValueError, TypeError):
        return None
    return _checked(entry)


def _checked(entry: Any) -> dict[str, Any] | None:
    """``entry`` when it has the shape of an action-cache entry, else None."""
    if not isinstance(entry, dict):
        return None
    outputs = entry.get("outputs", {})
    if not isinstance(outputs, dict) or not all(is_manifest(m) for m in outputs.values()):
        return None
    if "map" in entry:
        m = entry["map"]
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("hash"), str)
            or m.get("kind")
            not in (
                "bytes",
                "json",
            )
        ):
            return None
    if not isinstance(entry.get("values", {}), dict):
        return None
    return entry


def _hash_fd(fh: Any) -> str:
    fh.seek(0)
    h = xxhash.xxh3_128()
    while chunk := fh.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


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
        _write_all(out, chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: str) -> None:
    """Make a directory's entries (a renamed or linked object) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_absent(src: str, dst: str) -> bool:
    """Link ``src`` at ``dst`` unless something is there (put-if-absent), creating the
    object's fan-out directory when it is missing. Whether the link was made."""
    try:
        os.link(src, dst, follow_symlinks=False)
        return True
    except FileExistsError:
        return False
    except FileNotFoundError:
        parent = os.path.dirname(dst)
        if os.path.isdir(parent) or not os.path.lexists(src):
            raise
        os.makedirs(parent, exist_ok=True)
        try:
            os.link(src, dst, follow_symlinks=False)
            return True
        except FileExistsError:
            return False


def _is_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, *_: Any) -> bool:
        return exc_type is not None and issubclass(exc_type, OSError)


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: committed, or rolled back on an error (a failed COMMIT too,
    when SQLite did not roll it back itself), so the connection is never left inside one."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise

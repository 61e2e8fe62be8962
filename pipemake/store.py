"""The store: content-addressed objects and the action cache (key → outputs, values).

Layout under the cache directory (``.pipemake/store`` by default)::

    objects/ab/cdef…    one read-only file per content hash, written put-if-absent
    actions.db          SQLite: key → JSON entry (output manifests, computed values, …)
    roots/<id>.json     per workspace: the keys it needs (what ``cache gc`` keeps)

The store is untrusted input (a shared cache, a CI cache another job wrote). Nothing here is
ever unpickled: entries are JSON text, so a restored store cannot run code. Every entry is
checked by :mod:`pipemake.trust` before it is used (digests are digests, paths stay inside
their output, only a mode's executable bit travels); a damaged one is a miss. Objects live
in :mod:`pipemake.objects` (opened without following links, verified before use), the
workspaces' roots in :mod:`pipemake.roots`. Two workspaces may share one store at once:
objects appear by atomic rename (or link) and entries by single SQLite statements.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from .errors import StoreError
from .hashing import hash_bytes
from .objects import GRACE, REMOTE_GRACE, Objects, Scan, write_all
from .roots import Roots, RootsDir
from .signing import LOCAL_SIG, cache_key, sign_local, verify_local
from .trust import decode_entry, entry_problem, is_digest, is_manifest, is_text, safe_mode

__all__ = ["GRACE", "MARKER", "NOT_A_FOLDER", "REMOTE_GRACE", "STORE_FORMAT", "NotAStore",
           "ReadOnlyStore", "Roots", "Scan", "Store", "encode_entry", "is_manifest",
           "not_a_store", "safe_mode", "transaction"]  # fmt: skip

STORE_FORMAT = 1

#: the file every store pipemake makes holds: what tells a store from a folder of the
#: user's that a mistyped ``--cache-dir`` names (a store made before it existed is known by
#: its layout, and is given the file at its next write)
MARKER = "PIPEMAKE-STORE"
_MARKER_TEXT = (
    b"This folder is a pipemake store: content-addressed objects (objects/), the action\n"
    b"cache (actions.db) and what each workspace sharing it needs (roots/). Keep files of\n"
    b"your own elsewhere: `pipemake cache gc` and `cache verify --repair` remove from it\n"
    b"what is not theirs.\n"
)
#: what :func:`not_a_store` says of a path that is a file (or anything but a folder)
NOT_A_FOLDER = "is not a folder"
#: what a folder made to hold a store may hold and still count as empty
_AS_EMPTY = frozenset({".gitkeep", ".keep", ".DS_Store"})
#: the names at a store's top level (and the action cache's journal files)
_LAYOUT = frozenset({"objects", "roots", MARKER})


class Behind(Protocol):
    """What a store asks of the remote store behind it (:class:`pipemake.remote.Remote`):
    the entries of keys it misses, with their objects put into it, and the entries it
    commits, pushed when ``push_on_commit``. A protocol here, so that the store does not
    import the remote that imports it."""

    push_on_commit: bool

    def fetch(self, store: Store, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The entries of ``keys`` the remote has and trusts, their objects now in ``store``."""
        ...  # pragma: no cover

    def push_pairs(
        self, store: Store, pairs: Iterable[tuple[str, dict[str, Any]]], strict: bool = False
    ) -> None:
        """Send committed entries, and the objects they name, to the remote."""
        ...  # pragma: no cover


_DB_FILES = ("", "-wal", "-shm", "-journal")


class NotAStore(StoreError):
    """The folder named as the store is a folder of the user's, not a store: nothing in it
    may be written or removed (``cache verify --repair`` must not reset it)."""


class ReadOnlyStore(StoreError):
    """The store is intact but this user may not write it (another user's, a read-only file
    system): never to be called damaged, reset or deleted."""


def not_a_store(path: Path) -> str | None:
    """Why ``path`` must not be used as a store, or None when it may: it is missing, an
    empty folder (a ``.gitkeep`` aside), a folder holding :data:`MARKER`, or one laid out
    as a store an older pipemake made (see :func:`_laid_out`). Anything else is a folder
    of the user's (a mistyped ``--cache-dir``): taking it over would let ``cache verify
    --repair`` and ``gc`` remove its files as strays. A folder that cannot be listed is
    left to the errors of its first use."""
    try:
        st = os.stat(path)
    except OSError:  # missing (a store made at first use), or for its first use to say
        return None
    if not stat.S_ISDIR(st.st_mode):
        return NOT_A_FOLDER
    try:
        names = sorted(n for n in os.listdir(path) if n not in _AS_EMPTY)
    except OSError:
        return None
    if not names or _is_file(os.path.join(path, MARKER)) or _laid_out(str(path), names):
        return None
    if _original_checkpoints(str(path), names):
        return None
    shown = ", ".join(repr(n) for n in names[:3]) + (
        f" and {len(names) - 3} more" if len(names) > 3 else ""
    )
    return f"is not empty and is not a pipemake store (it holds {shown}; no {MARKER} file)"


#: how many checkpoint files of the original system a folder may hold to be known as theirs
_CHECKPOINTS_MAX = 10_000


def _original_checkpoints(path: str, names: list[str]) -> bool:
    """Whether every entry of the folder is a checkpoint file the original pipeline system
    wrote (``--checkpoint-dir`` of its ``run``: JSON objects naming a ``pipeline_id``):
    its users pass that folder on unchanged, and the store is made beside the files, which
    it never reads, changes or removes (``gc`` and ``cache verify --repair`` only remove
    what lies under ``objects/``)."""
    if len(names) > _CHECKPOINTS_MAX:
        return False
    for name in names:
        full = os.path.join(path, name)
        if not name.endswith(".json") or not _is_file(full):
            return False
        try:
            with open(full, "rb") as fh:
                doc = json.loads(fh.read(4 << 20))
        except (OSError, ValueError, RecursionError):
            return False
        if not isinstance(doc, dict) or not isinstance(doc.get("pipeline_id"), str):
            return False
    return True


def _is_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _sqlite(path: str) -> bool:
    """Whether the file at ``path`` is empty or begins as an SQLite database does."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return False
    return head in (b"", b"SQLite format 3\0")


def _laid_out(path: str, names: list[str]) -> bool:
    """Whether a folder without :data:`MARKER` is a store an older pipemake made: nothing
    but a store's names at its top level (``objects`` and ``roots`` folders), and an
    SQLite database ``actions.db``, or else an ``objects`` folder whose first fan-out
    folders (two hex digits) hold only names of objects (the rest of a content hash) and
    temporary files."""
    if not all(n in _LAYOUT or n.startswith("actions.db") for n in names):
        return False
    for name in ("objects", "roots"):
        if name in names and not os.path.isdir(os.path.join(path, name)):
            return False
    if _is_file(os.path.join(path, "actions.db")):
        return _sqlite(os.path.join(path, "actions.db"))
    objects = os.path.join(path, "objects")
    try:
        fans = sorted(os.listdir(objects))[:8]
        if not fans:
            return False
        for fan in fans:
            inside = sorted(os.listdir(os.path.join(objects, fan)))[:64]
            if not is_digest(fan + "0" * 30) or len(fan) != 2:
                return False
            if not all(is_digest(fan + n) or n.startswith(".tmp-") for n in inside):
                return False
    except OSError:
        return False
    return True


#: ``json.dumps(entry, sort_keys=True)`` without building an encoder per entry
_encode = json.JSONEncoder(sort_keys=True).encode
encode_entry = _encode

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
        self._db: sqlite3.Connection | None = None
        #: the thread that opened ``_db``: SQLite refuses a connection on any other one
        self._db_thread: int | None = None
        self._version = 0
        self._removed = False  # this instance has counted a removal of objects
        #: an object was removed on another thread (a threaded restore or remote fetch):
        #: the count is written by the connection's own thread at its next use
        self._removal_pending = False
        #: the objects, read as untrusted input
        self._claimed = False
        self.objs = Objects(
            self.objects, readonly=readonly, fsync=fsync, link=link,
            on_remove=self._object_removed, on_create=self._claim,
        )  # fmt: skip
        self._roots = RootsDir(self.path / "roots", readonly)
        #: ``PIPEMAKE_CACHE_KEY``: entries are committed signed, and only signed ones used
        self.secret = cache_key()
        #: the keys of entries refused for want of a signature by that key (said once a build)
        self.unsigned: set[str] = set()
        #: open an action cache holding triggers, views or tables pipemake did not create
        #: (``cache verify``: to name them in :attr:`foreign` and drop them), instead of
        #: refusing it
        self.allow_foreign = False
        #: ``(type, name)`` of what the open action cache holds that pipemake did not create
        self.foreign: list[tuple[str, str]] = []
        self._schema_version = 0
        #: the remote store behind this one (:mod:`pipemake.remote`), consulted on a miss
        #: and, with ``push_on_commit``, sent every entry committed; None: none
        self.remote: Behind | None = None

    # database ---------------------------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        """The action cache's connection, opened on first use (by, and for, this thread)."""
        if self._db is None:
            self._db_thread = threading.get_ident()
            if self.readonly and not (self.path / "actions.db").exists():
                # a plan on a fresh project: an empty store, and nothing written to disk
                self._db = sqlite3.connect(":memory:", isolation_level=None)
                self._db.executescript(_SCHEMA)
                self._version = _data_version(self._db)
                return self._db
            self.path.mkdir(parents=True, exist_ok=True)
            if not self.readonly:
                self._claim()
            self._check_db_files()
            deadline = time.monotonic() + 60
            while True:
                try:
                    db, fmt = self._open()
                    break
                except sqlite3.OperationalError as exc:
                    if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _SQLITE_DENIED:
                        raise self._read_only([self.path / "actions.db"]) from None
                    # another process creating the same store (a shared --cache-dir) holds
                    # it for a moment, and changing the journal mode does not wait by itself
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise self._damaged(exc) from None
                    time.sleep(0.05)
                except (sqlite3.DatabaseError, TypeError, IndexError) as exc:
                    raise self._damaged(exc) from None
            if fmt != str(STORE_FORMAT):
                raise StoreError(
                    f"the store at {self.path} has format {fmt}, this pipemake reads "
                    f"{STORE_FORMAT}; point --cache-dir elsewhere or remove it"
                )
            self._db = db
            self._version = _data_version(db)
        if self._removal_pending and threading.get_ident() == self._db_thread:
            self._removal_pending = False  # an object removed on another thread: count it
            _add_removal(self._db)
        return self._db

    def set_fsync(self, fsync: bool) -> None:
        """Flush objects and entry commits to disk from now on (or no longer)."""
        self.objs.fsync = fsync
        if self._db is not None:
            self._db.execute("PRAGMA synchronous=" + ("FULL" if fsync else "NORMAL"))

    def written_by_others(self) -> bool:
        """Whether another connection (another build, a ``cache gc`` in a workspace sharing
        this ``--cache-dir``) committed to the store since this one opened it."""
        return self._db is not None and _data_version(self._db) != self._version

    def writable(self) -> bool:
        """Whether this user may write the store (see :meth:`_check_writable`)."""
        try:
            self._check_writable()
        except ReadOnlyStore:
            return False
        return True

    def _check_writable(self) -> None:
        """Refuse, naming the permission problem, a store this user may not write (another
        user's, a read-only file system): it is intact, and must never be called damaged
        or be advised deleted."""
        names = [self.path, self.path / "actions.db", self.objects, self.path / "roots"]
        blocked = [p for p in names if os.path.lexists(p) and not os.access(p, os.W_OK)]
        if blocked:
            raise self._read_only(blocked)

    def _read_only(self, blocked: list[Path]) -> ReadOnlyStore:
        """The error for a store this user cannot write: what, whose, and what to do."""
        uid = os.geteuid()
        me = _user_name(uid)
        try:
            st = os.stat(blocked[0])
            owner = _user_name(st.st_uid)
            whose = f"owner {owner}, mode {stat.S_IMODE(st.st_mode):o}"
            if st.st_uid == uid:
                whose += "; or a read-only file system"
        except OSError:
            owner, whose = "its owner", "owner unknown"
        what = "it" if blocked[0] == self.path else f"{blocked[0]} in it"
        return ReadOnlyStore(
            f"the store {self.path} is read-only for this user: {what} is not writable by "
            f"{me} ({whose}). The store is not damaged, but pipemake writes into its store "
            f"(a build commits there; gc and verify remove from it). Use a store of your own "
            f"(--cache-dir DIR, or PIPEMAKE_CACHE_DIR), or ask {owner} to make it writable "
            f"for you, or run pipemake as {owner}."
        )

    def _claim(self) -> None:
        """Before the first write of this instance (the action cache opened, an object or
        a roots record written): refuse a store this user cannot write, and a folder that
        is not a store (see :func:`not_a_store`); mark one that is (a new one, or one an
        older pipemake made) as a store with :data:`MARKER`."""
        if self._claimed:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._check_writable()
        why = not_a_store(self.path)
        if why is not None:
            raise NotAStore(
                f"{self.path} {why}: pipemake will not use it as its store (it would remove "
                f"files there it does not recognise); use --cache-dir with a new or empty "
                f"folder, or the path of a pipemake store"
            )
        try:
            fd = os.open(
                self.path / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644
            )
        except OSError:  # there already (or a link there: not written through)
            self._claimed = True
            return
        try:
            write_all(fd, _MARKER_TEXT)
        except OSError:
            pass
        finally:
            os.close(fd)
            self._claimed = True

    def _damaged(self, exc: object) -> StoreError:
        """The error for an action cache SQLite cannot read: the file, and what to do."""
        return StoreError(
            f"the store's action cache {self.path / 'actions.db'} is damaged or not a "
            f"pipemake store ({exc}); run `pipemake cache verify --repair`, or delete it "
            "(it is only a cache: stages run again)"
        )

    def _check_db_files(self) -> None:
        """Refuse an action cache whose files are links or anything but regular files: SQLite
        would follow a link and write its pages or journal wherever it points. A file with
        other names (hard links: a project copied with ``cp -al``, or a name a writer of a
        shared store planted for someone's file) is replaced by a copy of its own first, so
        the other names' file is never written."""
        for suffix in _DB_FILES:
            path = f"{self.path / 'actions.db'}{suffix}"
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                raise self._damaged(f"{os.path.basename(path)} is {what}")
        own_files(str(self.path / "actions.db"))

    def reset_actions(self) -> None:
        """Delete a damaged action cache (``cache verify --repair``): the next open starts
        an empty one. Objects stay; entries are gone, so stages run (or restore) again."""
        self.close()
        for suffix in _DB_FILES:
            path = f"{self.path / 'actions.db'}{suffix}"
            try:
                os.unlink(path)  # a link as a link
            except IsADirectoryError:
                shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """All rows of a read, a damaged database reported as :class:`StoreError`."""
        db = self.db
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if "decode" not in str(exc):
                raise self._damaged(exc) from None
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from None
        # a row holding text that is not UTF-8: read again with the bad bytes as lone
        # surrogates, which make that row a damaged one (see pipemake.trust), not the store
        db.text_factory = _lenient_text
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from None
        finally:
            db.text_factory = str

    def _open(self) -> tuple[sqlite3.Connection, str]:
        file = self.path / "actions.db"
        if self.readonly and not (os.access(file, os.W_OK) and os.access(self.path, os.W_OK)):
            return self._open_read_only(file)
        db = sqlite3.connect(file, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=" + ("FULL" if self.fsync else "NORMAL"))
            db.executescript(_SCHEMA)
            # before pipemake's first write: a trigger planted there must never fire
            self._check_schema(db)
            if self.foreign:  # ``cache verify`` looking at them: nothing is written yet
                row = db.execute("SELECT value FROM meta WHERE name='format'").fetchone()
                return db, str(row[0]) if row else str(STORE_FORMAT)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (str(STORE_FORMAT),))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('id', ?)", (uuid.uuid4().hex,))
            fmt = db.execute("SELECT value FROM meta WHERE name='format'").fetchone()[0]
        except BaseException:
            db.close()
            raise
        return db, fmt

    def _check_schema(self, db: sqlite3.Connection) -> None:
        """Refuse an action cache holding what pipemake did not create (one small query on
        its schema): a trigger another writer of a shared store planted would rewrite every
        entry a build commits, a view or a reshaped table would answer in place of the
        entries. Tables other than pipemake's two are refused alike. ``cache verify`` opens
        it with :attr:`allow_foreign` to name them (and ``--repair`` to drop them)."""
        version = _schema_version(db)
        rows = db.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
        foreign, reshaped = _foreign(rows)
        if reshaped:
            raise StoreError(
                f"the store's action cache {self.path / 'actions.db'} has its {reshaped} "
                "table defined otherwise than pipemake defines it; run `pipemake cache "
                "verify --repair` (which deletes it: it is only a cache, stages run again)"
            )
        if foreign and not self.allow_foreign:
            raise StoreError(
                f"the store's action cache {self.path / 'actions.db'} holds "
                f"{_describe(foreign)}, which pipemake did not create (another writer of "
                "this store put it there; a trigger could rewrite what a build commits); "
                "run `pipemake cache verify --repair` to remove it"
            )
        self.foreign = foreign
        self._schema_version = version

    def drop_foreign(self) -> None:
        """Remove from the action cache what pipemake did not create (``cache verify
        --repair``): triggers first, so nothing of theirs fires meanwhile."""
        db = self.db
        order = {"trigger": 0, "view": 1, "index": 2, "table": 3}
        with transaction(db):
            for kind, name in sorted(self.foreign, key=lambda f: order.get(f[0], 4)):
                quoted = '"' + name.replace('"', '""') + '"'
                db.execute(f"DROP {kind.upper()} IF EXISTS {quoted}")
        self.foreign = []
        self._count_removal()

    def _open_read_only(self, file: Path) -> tuple[sqlite3.Connection, str]:
        """A store this user cannot write (a read-only checkout, another user's cache) read
        as it is, for plans and status: SQLite's read-only mode, or, where even its shared
        memory file cannot be made, the file taken as unchanging."""
        last: Exception | None = None
        for mode in ("mode=ro", "immutable=1"):
            uri = f"{file.resolve().as_uri()}?{mode}"
            try:
                db = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
            except sqlite3.Error as exc:
                last = exc
                continue
            try:
                self._check_schema(db)
                row = db.execute("SELECT value FROM meta WHERE name='format'").fetchone()
                return db, str(row[0]) if row else str(STORE_FORMAT)
            except StoreError:
                db.close()
                raise
            except sqlite3.Error as exc:
                db.close()
                last = exc
        assert last is not None
        raise last

    def get_action(self, key: str) -> dict[str, Any] | None:
        """The entry stored under ``key`` (or, on a miss, fetched from the remote), or None."""
        rows = self._query("SELECT entry FROM actions WHERE key=?", (key,))
        if rows:
            return self._trusted(key, _entry(rows[0][0]))
        return self.remote.fetch(self, [key]).get(key) if self.remote is not None else None

    def get_actions(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The entries of many keys at once; those missing here are asked of the remote in
        one batch (with the objects they name, verified)."""
        out = self.get_local_actions(keys)
        if self.remote is not None and len(out) < len(keys):
            out.update(self.remote.fetch(self, [k for k in keys if k not in out]))
        return out

    def get_local_actions(
        self, keys: list[str], signed_only: bool = True
    ) -> dict[str, dict[str, Any]]:
        """The entries of many keys in this store: one query, their JSON parsed in one go.
        With ``PIPEMAKE_CACHE_KEY`` set, only those signed with it, unless ``signed_only`` is
        False (what ``push`` sends: this workspace's own builds, the key holder's word)."""
        if not keys:
            return {}
        rows = self._query(
            "SELECT key, entry FROM actions WHERE key IN (SELECT value FROM json_each(?))",
            (json.dumps(keys),),
        )
        try:
            parsed = json.loads("[" + ",".join([text for _, text in rows]) + "]")
        except (ValueError, TypeError, RecursionError):  # a damaged row: one by one
            parsed = None
        if parsed is not None and len(parsed) != len(rows):
            parsed = None  # a tampered row holding several values: never misalign
        out: dict[str, dict[str, Any]] = {}
        for i, (key, text) in enumerate(rows):
            entry = _entry(text) if parsed is None else _checked(parsed[i])
            if signed_only:
                entry = self._trusted(key, entry)
            elif entry is not None:
                entry.pop(LOCAL_SIG, None)
            if entry is not None:
                out[key] = entry
        return out

    def _trusted(self, key: str, entry: dict[str, Any] | None) -> dict[str, Any] | None:
        """``entry`` without its signature; None (counted) where ``PIPEMAKE_CACHE_KEY`` is
        set and it is not signed with it."""
        if entry is None:
            return None
        checked = verify_local(key, entry, self.secret, _encode)
        if checked is None:
            self.unsigned.add(key)
        return checked

    def put_action(self, key: str, entry: dict[str, Any]) -> None:
        """Commit an entry: the point after which a build's work is done for good."""
        self.put_actions([(key, entry)])

    def put_actions(self, pairs: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Commit several entries in one transaction (and push them, with ``build --push``)."""
        pairs = list(pairs)
        self.put_local_actions(pairs)
        if self.remote is not None and self.remote.push_on_commit:
            self.remote.push_pairs(self, pairs)

    def put_local_actions(self, pairs: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Commit several entries to this store in one transaction."""
        now = time.time()
        secret = self.secret
        texts = [(k, e, _encode(e)) for k, e in pairs]
        rows = [(k, _encode(sign_local(k, e, text, secret)) if secret else text, now, now)
                for k, e, text in texts]  # fmt: skip
        db = self.db
        try:
            with transaction(db):
                self._same_schema(db)
                db.executemany("INSERT OR REPLACE INTO actions VALUES (?,?,?,?)", rows)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError | sqlite3.IntegrityError):
                raise  # a full disk, a lock: not damage
            raise self._damaged(exc) from None

    def actions(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every well-formed entry (damaged rows are skipped: see :meth:`rows`)."""
        for key, entry, _problem in self.rows():
            if entry is not None:
                yield key, entry

    def rows(self) -> Iterator[tuple[Any, dict[str, Any] | None, str | None]]:
        """Every row as ``(key, entry, problem)``: the entry when it is well formed, else
        None and what is wrong with it (for ``cache verify`` and ``cache gc``)."""
        for key, text in self._query("SELECT key, entry FROM actions"):
            if type(key) is not str:
                yield key, None, f"its key {key!r} is not text"
                continue
            entry, problem = decode_entry(text)
            yield key, entry, problem

    def created(self) -> dict[Any, float]:
        """When each entry was written (key → seconds since the epoch; a damaged time is
        read as long ago)."""
        out: dict[Any, float] = {}
        for key, t in self._query("SELECT key, created FROM actions"):
            out[key] = float(t) if type(t) in (int, float) else 0.0
        return out

    def last_used(self) -> dict[Any, float]:
        """When each entry was last written or used (key → seconds since the epoch; a
        damaged time is read as long ago): what ``cache gc --max-size`` evicts by."""
        out: dict[Any, float] = {}
        for key, created, used in self._query("SELECT key, created, used FROM actions"):
            times = [float(t) for t in (created, used) if type(t) in (int, float)]
            out[key] = max(times, default=0.0)
        return out

    def delete_actions(self, keys: Iterable[Any]) -> int:
        """Remove entries (``cache gc``, ``cache verify --repair``); their objects go with
        the next sweep. Returns how many were there to remove (another ``gc`` on the store
        may have removed some of them first)."""
        db = self.db
        plain: list[tuple[Any]] = []
        odd: list[tuple[bytes]] = []  # keys read from bytes that are not UTF-8: as those
        for k in keys:
            if type(k) is str and not is_text(k):
                odd.append((k.encode("utf-8", "surrogateescape"),))
            else:
                plain.append((k,))
        with transaction(db):
            self._same_schema(db)
            self._count_removal()
            n = db.executemany("DELETE FROM actions WHERE key=?", plain).rowcount
            n += db.executemany("DELETE FROM actions WHERE CAST(key AS BLOB)=?", odd).rowcount
        return max(n, 0)

    def _same_schema(self, db: sqlite3.Connection) -> None:
        """Inside a write transaction (no other writer can change the schema until it
        ends): check the schema again if another connection changed it since it was
        checked, so a trigger planted while this build ran never fires on its commits."""
        if _schema_version(db) != self._schema_version:
            self._check_schema(db)

    # objects ----------------------------------------------------------------------------

    # objects (:mod:`pipemake.objects`) and roots (:mod:`pipemake.roots`) --------------
    @property
    def link(self) -> bool:
        """Hard-link objects to and from the workspace instead of copying (``--link``)."""
        return self.objs.link

    @link.setter
    def link(self, value: bool) -> None:
        self.objs.link = value

    @property
    def can_link(self) -> bool:
        """False once a link failed here: copies from then on."""
        return self.objs.can_link

    @can_link.setter
    def can_link(self, value: bool) -> None:
        self.objs.can_link = value

    @property
    def fsync(self) -> bool:
        """Whether objects and commits are flushed to disk before they count."""
        return self.objs.fsync

    def object_path(self, digest: str) -> Path:
        """See :meth:`Objects.object_path`."""
        return self.objs.object_path(digest)

    def has_object(self, digest: str) -> bool:
        """See :meth:`Objects.has_object`."""
        return self.objs.has_object(digest)

    def put_file(self, src: str, digest: str) -> None:
        """See :meth:`Objects.put_file`."""
        with self._placed_errors(digest):
            self.objs.put_file(src, digest)

    def put_read(self, src: str, digest: str, data: bytes, st: os.stat_result) -> bool:
        """See :meth:`Objects.put_read`."""
        with self._placed_errors(digest):
            return self.objs.put_read(src, digest, data, st)

    @contextlib.contextmanager
    def _placed_errors(self, digest: str) -> Iterator[None]:
        """An error writing an object names where in the store, not a name relative to a
        fan-out folder (``fb``), so the message can say which folder to fix."""
        try:
            yield
        except OSError as exc:
            name = exc.filename
            if isinstance(name, str | bytes) and not os.path.isabs(os.fsdecode(name)):
                fan = self.objects / digest[:2]
                rel = os.fsdecode(name)
                exc.filename = str(fan if rel == digest[:2] else fan / rel)
            raise

    def put_bytes(self, data: bytes) -> str:
        """See :meth:`Objects.put_bytes`."""
        return self.objs.put_bytes(data)

    def read_bytes(self, digest: str) -> bytes | None:
        """See :meth:`Objects.read_bytes`."""
        return self.objs.read_bytes(digest)

    def materialize(self, digest: str, dst: str, mode: int, size: int | None = None) -> bool:
        """See :meth:`Objects.materialize`: False (``dst`` absent) for a missing or bad
        object, which a build treats as a miss."""
        return self.objs.materialize(digest, dst, mode, size)

    def verify_object(self, digest: str) -> bool | None:
        """See :meth:`Objects.verify_object`."""
        return self.objs.verify_object(digest)

    def iter_objects(self) -> Iterator[str]:
        """The digests of the objects present."""
        for digest, _st in self.objs.scan().objects:
            yield digest

    def scan(self) -> Scan:
        """See :meth:`Objects.scan`."""
        return self.objs.scan()

    def remove_object(self, digest: str, older_than: float | None = None) -> bool:
        """See :meth:`Objects.remove_object`."""
        return self.objs.remove_object(digest, older_than)

    def remove_stray(self, rel: str) -> None:
        """See :meth:`Objects.remove_stray`."""
        self.objs.remove_stray(rel)

    def remove_temporary(self, fan: str, name: str) -> None:
        """See :meth:`Objects.remove_temporary`."""
        self.objs.remove_temporary(fan, name)

    def write_roots(
        self, workspace: str, pipeline: str, keys: Iterable[str], merge: bool, refresh: bool = True
    ) -> None:
        """See :meth:`RootsDir.write`."""
        if not self.readonly:
            self._claim()
        self._roots.write(workspace, pipeline, keys, merge, refresh, fsync=self.fsync)

    def roots(
        self,
        grace: float = GRACE,
        prune: bool = False,
        forget_after: float | None = None,
        skip: tuple[str, str] | None = None,
    ) -> Roots:
        """See :meth:`RootsDir.read`."""
        return self._roots.read(grace, prune, forget_after, skip)

    def removals(self) -> int:
        """A token of this store's contents that changes whenever entries or objects are
        removed (``cache gc``, ``cache verify``, a corrupt object dropped) and differs
        between stores: what a workspace's own record of the store's contents (the foreach
        item index) must still match to be trusted, so switching ``--cache-dir`` never
        trusts an index of another store."""
        rows = self._query("SELECT name, value FROM meta WHERE name IN ('removals', 'id')")
        found = {name: value for name, value in rows}
        try:
            count = int(found.get("removals", 0))
        except (TypeError, ValueError):
            return -1  # damaged: matches no index a workspace recorded
        ident = found.get("id")
        if not isinstance(ident, str) or not ident:
            return count
        # one signed 63-bit number, as SQLite stores it
        return int(hash_bytes(f"{ident}\0{count}".encode())[:15], 16)

    def _object_removed(self) -> None:
        """Count the first object this instance removes. It may be removed on a worker
        thread (a restore or a remote fetch on several), where the connection cannot be
        used: the count is then left for the connection's thread (see :attr:`db`)."""
        if self._removed:
            return
        if self._db is not None and threading.get_ident() == self._db_thread:
            self._count_removal()
        else:
            self._removed = True
            self._removal_pending = not self.readonly

    def _count_removal(self) -> None:
        self._removed = True
        if self.readonly:
            return
        _add_removal(self.db)

    def close(self) -> None:
        """Close the database and the directory descriptors (the store may be used again:
        they reopen on demand)."""
        if self._removal_pending and threading.get_ident() in (self._db_thread, None):
            with contextlib.suppress(sqlite3.Error, StoreError):
                self.db  # noqa: B018 (writes the pending count)
        if self._db is not None:
            self._db.close()
            self._db = None
        self.objs.close()
        self._roots.close()


#: SQLite's primary result codes for a write refused: READONLY, PERM
_SQLITE_DENIED = frozenset({8, 3})


def _user_name(uid: int) -> str:
    """The login name of ``uid`` (``uid 1234`` when it has none)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return f"uid {uid}"


def _add_removal(db: sqlite3.Connection) -> None:
    """Count one more removal of objects or entries (see :meth:`Store.removals`)."""
    db.execute(
        "INSERT INTO meta VALUES ('removals', '1') ON CONFLICT(name) DO UPDATE "
        "SET value = CAST(value AS INTEGER) + 1"
    )


#: what pipemake creates in actions.db (type, name → its SQL, blanks squeezed; None: any)
_OWN: dict[tuple[str, str], str | None] = {
    ("table", "meta"): "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ("table", "actions"): "CREATE TABLE actions ( key TEXT PRIMARY KEY, entry TEXT NOT NULL, "
    "created REAL NOT NULL, used REAL NOT NULL)",
    ("index", "sqlite_autoindex_meta_1"): None,
    ("index", "sqlite_autoindex_actions_1"): None,
}


def _foreign(rows: list[Any]) -> tuple[list[tuple[str, str]], str | None]:
    """Of ``sqlite_master``'s rows, those pipemake did not create (SQLite's own
    ``sqlite_stat``/``sqlite_sequence`` tables aside: they cannot act), and the name of a
    table of pipemake's defined otherwise (None: none)."""
    foreign: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for kind, name, sql in rows:
        if type(kind) is not str or type(name) is not str:
            continue
        want = _OWN.get((kind, name), "")
        if want == "" and kind == "table" and name.startswith("sqlite_"):
            continue
        if want == "":
            foreign.append((kind, name))
        elif want is not None:
            seen[name] = " ".join(str(sql).split())
    for name in ("meta", "actions"):
        if name in seen and seen[name] != _OWN[("table", name)]:
            return foreign, name
        if name not in seen and any(n == name for _k, n in foreign):
            return foreign, name  # a view (or anything else) under a table's name
    return sorted(foreign), None


def _describe(foreign: list[tuple[str, str]]) -> str:
    """``the trigger 'poison'`` or ``the trigger 'poison' and 2 more``, for messages."""
    kind, name = foreign[0]
    more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
    return f"the {kind} {name!r}{more}"


def _lenient_text(data: bytes) -> str:
    """SQLite text as str, bytes that are not UTF-8 kept as lone surrogates."""
    return data.decode("utf-8", "surrogateescape")


def _schema_version(db: sqlite3.Connection) -> int:
    """SQLite's count of schema changes to the file (every CREATE and DROP bumps it)."""
    return int(db.execute("PRAGMA schema_version").fetchone()[0])


def _data_version(db: sqlite3.Connection) -> int:
    """SQLite's count of commits by other connections, as this connection sees it."""
    return int(db.execute("PRAGMA data_version").fetchone()[0])


def _entry(text: Any) -> dict[str, Any] | None:
    """A stored entry, or None when it is not JSON of the expected shape (a tampered or
    damaged row is a cache miss, never a crash and never code)."""
    return decode_entry(text)[0]


def _checked(entry: Any) -> dict[str, Any] | None:
    """``entry`` when it has the shape of an action-cache entry, else None."""
    return entry if entry_problem(entry) is None else None


def own_file(path: str) -> None:
    """Replace the file at ``path`` (not a link) by a copy with one name, atomically: an
    SQLite file that has other names (a project copied with ``cp -al``, or a name a writer
    of a shared store planted for someone's file) is never written through them."""
    tmp = f"{path}.own-{os.getpid()}-{threading.get_ident()}"
    src = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            with open(src, "rb", closefd=False) as fin, open(dst, "wb", closefd=False) as out:
                shutil.copyfileobj(fin, out)
        finally:
            os.close(dst)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(src)


def own_files(path: str) -> None:
    """:func:`own_file` for an SQLite database and its journal files that have other names."""
    for suffix in _DB_FILES:
        try:
            st = os.lstat(f"{path}{suffix}")
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            own_file(f"{path}{suffix}")


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

"""The remote store: a team's cache behind the local one, through fsspec.

Any URL fsspec speaks works (``file://``, ``s3://`` with ``pipemake[s3]``, ``gs://``,
``az://``, ``ssh://``, …); fsspec and its back-ends are imported on first use only. The
layout under the URL::

    objects/ab/cdef…        one file per content hash: the bytes (as in the local store)
    entries/ab/cdef….json   one sealed action-cache entry per key (see :mod:`.signing`)

Every upload is put-if-absent (an exclusive create where the back-end has one: a hard link
for ``file://``, ``If-None-Match`` on S3), and an entry is written only after every object
it names. A remote is untrusted input like a shared ``--cache-dir``: an entry counts only
when it has the shape pipemake writes and, when the reader holds ``PIPEMAKE_CACHE_KEY``, a
signature made with it; an object counts only when its bytes hash to its name. What fails
is a miss, and the stage runs. A remote that stops answering mid-build is a warning naming
it, never a failed build.

The local store consults its remote on a miss (:meth:`Remote.fetch`, called by
:class:`pipemake.store.Store`), many keys and objects at a time: batched, concurrent reads
(fsspec's async ``cat`` or a thread pool), so ten thousand small objects are not ten
thousand sequential round trips.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import xxhash

from .errors import StoreError
from .objects import OPEN_FILE
from .signing import cache_key, seal, unseal
from .trust import is_digest

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Remote", "RemoteError", "RemoteStats", "entry_objects", "open_remote"]

#: the most bytes read for one entry, and for an object whose size no manifest states
_ENTRY_MAX = 256 << 20
_UNSIZED_MAX = 1 << 30
#: objects larger than this are streamed to a file one at a time instead of held in memory
_BIG = 64 << 20
_BATCH = 2000
_BATCH_BYTES = 256 << 20
#: back-ends whose listings fsspec would otherwise cache (a push must see another's write)
#: what opening a link, socket or device without following or waiting says: not an object
_NOT_OBJECT = (errno.ELOOP, errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP)
_CLOUD = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
_THREADS = 32
#: default seconds an unreachable remote object survives ``cache gc --remote``
REMOTE_GRACE = 86400.0
#: an object a push finds older than this is written again (its age renewed), so a
#: ``cache gc --remote`` running meanwhile sees it as young
_REFRESH = 3600.0


class RemoteError(StoreError):
    """The remote cannot be used for what was asked (exit 1): unreachable during ``push``,
    read-only, an unknown URL scheme or a back-end that is not installed."""


class _Unreachable(Exception):
    """A read or write failed for another reason than "not there" (network, permissions)."""


@dataclass
class RemoteStats:
    """What talking to the remote did, for reports and the once-per-build warnings."""

    entries: int = 0
    objects: int = 0
    bytes: int = 0
    ignored: int = 0
    damaged: int = 0
    refused: int = 0
    pushed_entries: int = 0
    pushed_objects: int = 0
    present_entries: int = 0
    skipped_entries: int = 0


@dataclass
class Remote:
    """One remote store and what this process learned about it."""

    url: str
    read_only: bool = False
    #: the signing secret (``PIPEMAKE_CACHE_KEY``); None reads entries unverified
    secret: bytes | None = None
    #: push every entry the local store commits (``build --push``)
    push_on_commit: bool = False
    #: where warnings go (the build's event bus; a list the CLI prints otherwise)
    warn: Callable[[str], None] | None = None
    stats: RemoteStats = field(default_factory=RemoteStats)
    messages: list[str] = field(default_factory=list)
    #: the failure after which reads (or pushes) are no longer tried in this process
    down: str | None = None
    push_down: str | None = None
    #: objects found corrupt on the remote: a push replaces them
    bad: set[str] = field(default_factory=set)
    _asked: set[str] = field(default_factory=set)
    _said: set[str] = field(default_factory=set)
    _fs: Any = None
    _root: str = ""
    _local: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _slock: threading.Lock = field(default_factory=threading.Lock)

    # opening ----------------------------------------------------------------------------
    def _open(self) -> tuple[Any, str]:
        if self._fs is None:
            try:
                import fsspec
            except ImportError:
                raise RemoteError(
                    f"remote {self.url}: fsspec is not installed; pip install fsspec "
                    "(or pipemake[s3] for s3://)"
                ) from None
            try:
                scheme = self.url.partition("://")[0] if "://" in self.url else "file"
                options = {"use_listings_cache": False} if scheme in _CLOUD else {}
                fs, root = fsspec.core.url_to_fs(self.url, **options)
            except ImportError as exc:
                scheme = self.url.partition("://")[0]
                extra = f" (pip install 'pipemake[{scheme}]')" if scheme == "s3" else ""
                raise RemoteError(
                    f"remote {self.url}: the {scheme}:// back-end is missing{extra}: {exc}"
                ) from None
            except (ValueError, TypeError, OSError) as exc:
                raise RemoteError(f"remote {self.url} cannot be opened: {exc}") from None
            from fsspec.implementations.local import LocalFileSystem

            self._local = isinstance(fs, LocalFileSystem)
            self._fs, self._root = fs, root.rstrip("/")
        return self._fs, self._root

    def check(self) -> None:
        """Open the back-end (no request is made): a :class:`RemoteError` when the URL's
        scheme is unknown or its package is not installed."""
        self._open()

    def _obj(self, digest: str) -> str:
        return f"{self._root}/objects/{digest[:2]}/{digest[2:]}"

    def _ent(self, key: str) -> str:
        return f"{self._root}/entries/{key[:2]}/{key[2:]}.json"

    # messages ---------------------------------------------------------------------------
    def _say(self, text: str, once: str | None = None) -> None:
        if once is not None:
            if once in self._said:
                return
            self._said.add(once)
        if self.warn is not None:
            self.warn(text)
        else:
            self.messages.append(text)

    def _trust_note(self) -> None:
        if self.secret is None:
            self._say(
                f"trusting remote {self.url} unverified: PIPEMAKE_CACHE_KEY is not set, so "
                "its entries' signatures are not checked (objects are always checked "
                "against their hashes)",
                once="trust",
            )

    def _failed(self, exc: BaseException, pushing: bool = False) -> None:
        reason = _reason(exc)
        if pushing:
            self.push_down = reason
            self._say(
                f"pushing to remote {self.url} failed ({reason}); nothing more is pushed in "
                "this build: run `pipemake push` later",
                once="push-down",
            )
        else:
            self.down = reason
            self._say(
                f"remote {self.url} failed ({reason}); going on without it: what it would "
                "have given runs instead",
                once="down",
            )

    def finish(self) -> None:
        """Say, once, what this build or command ignored or refused (counted)."""
        s = self.stats
        if s.ignored:
            self._say(
                f"ignored {s.ignored} entr{'y' if s.ignored == 1 else 'ies'} on remote "
                f"{self.url}: unsigned or signed with another key than PIPEMAKE_CACHE_KEY "
                "(their stages run instead)",
                once="ignored",
            )
        if s.damaged:
            self._say(
                f"ignored {s.damaged} damaged entr{'y' if s.damaged == 1 else 'ies'} on "
                f"remote {self.url}",
                once="damaged",
            )
        if s.refused:
            self._say(
                f"refused {s.refused} object(s) from remote {self.url} whose bytes do not "
                "match their hash (the stages that need them run instead; a push replaces "
                "them)",
                once="refused",
            )

    # reading ----------------------------------------------------------------------------
    def fetch(self, store: Store, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The entries of ``keys`` the remote holds and the reader may trust, with every
        object they name verified and put into ``store`` (for a read-only store, the
        entries alone, for a plan). Each key is asked once per process; a key whose entry
        is missing, refused or lacks a good object is left out (a miss)."""
        with self._lock:
            todo = [k for k in dict.fromkeys(keys) if is_digest(k) and k not in self._asked]
            if not todo or self.down is not None:
                return {}
            self._asked.update(todo)
            try:
                self._open()
                self._trust_note()
                entries = self._read_entries(todo)
                if not entries or store.readonly:
                    return entries
                return self._with_objects(store, entries)
            except _Unreachable as exc:
                self._failed(exc.__cause__ or exc)
                return {}

    def _read_entries(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        paths = [self._ent(k) for k in keys]
        found = self._read_many(paths, [_ENTRY_MAX] * len(paths))
        out: dict[str, dict[str, Any]] = {}
        for key, path in zip(keys, paths, strict=True):
            data = found.get(path)
            if data is None:
                continue
            entry, why = unseal(data, key, self.secret)
            if entry is None:
                if why is not None and (why == "unsigned" or why.startswith("signature")):
                    self.stats.ignored += 1
                else:
                    self.stats.damaged += 1
                continue
            out[key] = entry
        return out

    def _with_objects(
        self, store: Store, entries: dict[str, dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        need: dict[str, int | None] = {}
        for entry in entries.values():
            for digest, size in entry_objects(entry):
                if digest not in need and not store.has_object(digest):
                    need[digest] = size
        known_bad = {d for d in need if d in self.bad}  # refused once: not fetched again
        lost = known_bad | self._fetch_objects(
            store, {d: n for d, n in need.items() if d not in known_bad}
        )
        usable = {
            k: e for k, e in entries.items() if not any(d in lost for d, _s in entry_objects(e))
        }
        if usable:
            store.put_local_actions(list(usable.items()))
        self.stats.entries += len(usable)
        return usable

    def _fetch_objects(self, store: Store, need: dict[str, int | None]) -> set[str]:
        """Fetch, verify and store the objects ``need`` (digest → size, when known); the
        digests that are missing on the remote or refused."""
        lost: set[str] = set()
        small = [d for d, size in need.items() if size is None or size <= _BIG]
        big = [d for d, size in need.items() if size is not None and size > _BIG]
        for chunk in _batches(small, need):
            paths = [self._obj(d) for d in chunk]
            limits = [need[d] + 1 if need[d] is not None else _UNSIZED_MAX for d in chunk]
            found = self._read_many(paths, limits)
            args = [(store, d, need[d], found.get(p)) for d, p in zip(chunk, paths, strict=True)]
            with ThreadPoolExecutor(min(_THREADS, len(chunk))) as pool:
                for digest, ok in zip(chunk, pool.map(self._accept, args), strict=True):
                    if not ok:
                        lost.add(digest)
        for digest in big:
            if not self._fetch_big(store, digest, need[digest] or 0):
                lost.add(digest)
        return lost

    def _accept(self, args: tuple[Store, str, int | None, bytes | None]) -> bool:
        """Store one fetched object if its bytes are what its name and size say."""
        store, digest, size, data = args
        if data is None:
            return False
        if (size is not None and len(data) != size) or xxhash.xxh3_128_hexdigest(data) != digest:
            self._refuse(digest)
            return False
        store.put_bytes(data)
        self._count(len(data))
        return True

    def _refuse(self, digest: str) -> None:
        with self._slock:
            self.stats.refused += 1
            self.bad.add(digest)

    def _count(self, n: int) -> None:
        with self._slock:
            self.stats.objects += 1
            self.stats.bytes += n

    def _fetch_big(self, store: Store, digest: str, size: int) -> bool:
        """A large object streamed to a temporary file in the store, hashed, then stored."""
        fs, _ = self._open()
        store.path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".remote-", dir=store.path)
        os.close(fd)
        try:
            try:
                if self._local:
                    _copy_local(self._obj(digest), tmp, size + 1)
                else:
                    fs.get_file(self._obj(digest), tmp)
            except FileNotFoundError:
                return False
            except Exception as exc:
                raise _Unreachable(str(exc)) from exc
            h = xxhash.xxh3_128()
            got = 0
            with open(tmp, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
                    got += len(chunk)
            if got != size or h.hexdigest() != digest:
                self._refuse(digest)
                return False
            store.put_file(tmp, digest)
            self._count(got)
            return True
        finally:
            os.unlink(tmp)

    def _read_many(self, paths: list[str], limits: list[int]) -> dict[str, bytes]:
        """The bytes of those of ``paths`` that exist (at most ``limits`` bytes each), read
        concurrently; raises :class:`_Unreachable` when the remote fails otherwise."""
        if not paths:
            return {}
        fs, _ = self._open()
        out: dict[str, bytes] = {}
        try:
            if self._local:
                with ThreadPoolExecutor(min(_THREADS, len(paths))) as pool:
                    got = list(pool.map(_read_local, paths, limits))
                results: Iterable[tuple[str, Any]] = zip(paths, got, strict=True)
            elif getattr(fs, "async_impl", False):
                # concurrent GETs, no listing first (``cat`` would look each path up)
                # (s3fs asks each object's size first unless told to read it in one piece)
                one = {"max_concurrency": 1} if type(fs).__name__ == "S3FileSystem" else {}
                got = fs.cat_ranges(paths, None, None, on_error="return", **one)
                results = zip(paths, got, strict=True)
            else:
                with ThreadPoolExecutor(min(_THREADS, len(paths))) as pool:
                    got = list(pool.map(lambda p: _catch(fs.cat_file, p), paths))
                results = zip(paths, got, strict=True)
            for path, data in results:
                if isinstance(data, FileNotFoundError):
                    continue
                if isinstance(data, BaseException):
                    raise _Unreachable(str(data)) from data
                out[path] = bytes(data)
        except _Unreachable:
            raise
        except Exception as exc:  # a back-end's own errors (botocore, aiohttp, paramiko)
            raise _Unreachable(str(exc)) from exc
        return out

    # writing ----------------------------------------------------------------------------
    def push_pairs(
        self, store: Store, pairs: Iterable[tuple[str, dict[str, Any]]], strict: bool = False
    ) -> None:
        """Upload these entries of ``store`` (and, first, the objects they name), each
        put-if-absent. Without ``strict`` (``build --push``) a failure is a warning and
        stops further pushes; with it (``pipemake push``) it is a :class:`RemoteError`."""
        if self.read_only:
            if strict:
                raise RemoteError(f"remote {self.url} is read-only here (--remote-read-only)")
            return
        if self.push_down is not None and not strict:
            return
        pairs = [(k, e) for k, e in pairs if is_digest(k)]
        if not pairs:
            return
        try:
            self._open()
            self._push(store, pairs)
        except _Unreachable as exc:
            if strict:
                raise RemoteError(
                    f"pushing to remote {self.url} failed: {_reason(exc.__cause__ or exc)}"
                ) from None
            self._failed(exc.__cause__ or exc, pushing=True)

    def _push(self, store: Store, pairs: list[tuple[str, dict[str, Any]]]) -> None:
        from .store import encode_entry

        there = self._ages([self._ent(k) for k, _e in pairs])
        new = [(k, e) for k, e in pairs if there[self._ent(k)] is None]
        self.stats.present_entries += len(pairs) - len(new)
        digests: dict[str, None] = {}
        for _k, entry in new:
            for digest, _size in entry_objects(entry):
                digests[digest] = None
        for _k, entry in pairs:  # a corrupt object seen on the remote is replaced anyway
            digests.update((d, None) for d, _s in entry_objects(entry) if d in self.bad)
        ages = self._ages([self._obj(d) for d in digests])
        now = time.time()
        upload = [d for d in digests if ages[self._obj(d)] is None or d in self.bad]
        refresh = [d for d in digests if d not in upload and ages[self._obj(d)] < now - _REFRESH]
        present = [d for d in digests if d not in upload]
        missing = set(self._upload(store, upload, replace=False))
        missing |= set(self._upload(store, refresh, replace=True))
        docs = []
        for key, entry in new:
            if any(d in missing for d, _s in entry_objects(entry)):
                self.stats.skipped_entries += 1  # an object this store lacks: not pushed
                continue
            docs.append((self._ent(key), seal(key, encode_entry(entry), self.secret)))
        self._each(lambda p: self._put_if_absent(*p), docs)
        self.stats.pushed_entries += len(docs)
        # a `cache gc --remote` may have taken an old object just as this push found it
        ages = self._ages([self._obj(d) for d in present])
        gone = [d for d in present if ages[self._obj(d)] is None]
        self._upload(store, gone, replace=False)
        self.bad.difference_update(upload)

    def _upload(self, store: Store, digests: list[str], replace: bool) -> list[str]:
        """Upload objects from ``store`` (put-if-absent, or replacing: a refresh of an old
        object or a repair of a corrupt one); the digests the store lacks or has corrupt."""
        lacking: list[str] = []

        def one(digest: str) -> None:
            path = self._obj(digest)
            if store.verify_object(digest) is not True:
                lacking.append(digest)
                return
            data = store.read_bytes(digest)
            if data is None:
                lacking.append(digest)
                return
            force = replace or digest in self.bad
            if self._put_if_absent(path, data, replace=force):
                with self._slock:
                    self.stats.pushed_objects += 1

        self._each(one, digests)
        return lacking

    def _each(self, fn: Callable[[Any], Any], items: list[Any]) -> None:
        if not items:
            return
        with ThreadPoolExecutor(min(_THREADS, len(items))) as pool:
            for _ in pool.map(fn, items):
                pass

    def _put_if_absent(self, path: str, data: bytes, replace: bool = False) -> bool:
        """Write ``data`` at ``path`` unless something is there (``replace``: in any case,
        atomically); whether it was written."""
        fs, _ = self._open()
        try:
            if self._local:
                return _put_local(path, data, replace)
            if replace:
                fs.pipe_file(path, data)
                return True
            if type(fs).__name__ == "S3FileSystem":
                try:
                    fs.pipe_file(path, data, mode="create")  # If-None-Match: *
                    return True
                except FileExistsError:
                    return False
                except Exception:  # a server without conditional writes: look, then write
                    pass
            if fs.exists(path):
                return False
            fs.pipe_file(path, data)
            return True
        except Exception as exc:
            raise _Unreachable(str(exc)) from exc

    def _ages(self, paths: list[str]) -> dict[str, float | None]:
        """Each path's modification time (seconds since the epoch; 0 when the back-end
        gives none), or None where nothing is."""
        fs, _ = self._open()
        out: dict[str, float | None] = {}

        def one(path: str) -> None:
            try:
                out[path] = _mtime(fs.info(path))
            except FileNotFoundError:
                out[path] = None
            except Exception as exc:
                raise _Unreachable(str(exc)) from exc

        self._each(one, list(dict.fromkeys(paths)))
        return out

    # gc ---------------------------------------------------------------------------------
    def gc(self, grace: float = REMOTE_GRACE, dry: bool = False) -> dict[str, Any]:
        """Remove objects no entry on the remote names and that are older than ``grace``
        seconds; entries stay. The entries are listed before the objects, and each object's
        age is read again just before it goes, so an object a concurrent push uploaded or
        refreshed (see :meth:`push_pairs`) is never removed."""
        if self.read_only and not dry:
            raise RemoteError(f"remote {self.url} is read-only here (--remote-read-only)")
        fs, root = self._open()
        try:
            names = _listing(fs, f"{root}/entries")
            keys = {}
            for path in names:
                rel = path[len(root) + len("/entries/") :]
                fan, _, rest = rel.partition("/")
                key = fan + rest.removesuffix(".json")
                if rest.endswith(".json") and is_digest(key):
                    keys[path] = key
            found = self._read_many(list(keys), [_ENTRY_MAX] * len(keys))
            referenced: set[str] = set()
            for path, data in found.items():
                entry, _why = unseal(data, keys[path], None)
                if entry is not None:
                    referenced.update(d for d, _s in entry_objects(entry))
            objects = _listing(fs, f"{root}/objects", detail=True)
        except _Unreachable as exc:
            raise RemoteError(f"remote {self.url}: {_reason(exc.__cause__ or exc)}") from None
        except Exception as exc:
            raise RemoteError(f"remote {self.url}: {_reason(exc)}") from None
        horizon = time.time() - grace
        doomed = []
        for path, info in objects.items():
            rel = path[len(root) + len("/objects/") :]
            digest = rel.replace("/", "")
            if not is_digest(digest) or len(rel) != 33 or digest in referenced:
                continue
            if _mtime(info) < horizon:
                doomed.append((path, int(info.get("size") or 0)))
        removed: list[tuple[str, int]] = []
        if not dry:
            for path, size in doomed:
                try:
                    if _mtime(fs.info(path)) >= horizon:
                        continue  # refreshed by a push since the listing
                    fs.rm_file(path)
                except FileNotFoundError:
                    continue
                except Exception as exc:
                    raise RemoteError(f"remote {self.url}: removing {path}: {exc}") from None
                removed.append((path, size))
        else:
            removed = doomed
        return {"objects_removed": len(removed), "bytes_freed": sum(s for _p, s in removed),
                "objects_kept": len(objects) - len(removed), "entries": len(keys),
                "dry_run": dry}  # fmt: skip


def open_remote(
    url: str | None,
    *,
    read_only: bool = False,
    environ: dict[str, str] | None = None,
) -> Remote | None:
    """The remote of ``url`` (None: no remote), with the signing secret from
    ``PIPEMAKE_CACHE_KEY`` and read-only also when ``PIPEMAKE_REMOTE_READ_ONLY`` is set.
    Nothing is imported or contacted until it is used."""
    env = environ if environ is not None else os.environ
    if not url:
        return None
    flag = env.get("PIPEMAKE_REMOTE_READ_ONLY", "").strip().lower()
    read_only = read_only or flag in ("1", "true", "yes", "on")
    return Remote(url, read_only=read_only, secret=cache_key(dict(env)))


def entry_objects(entry: dict[str, Any]) -> Iterator[tuple[str, int | None]]:
    """``(digest, size)`` of every object a well-formed entry names (size None: not
    stated, as for a map result)."""
    for manifest in entry.get("outputs", {}).values():
        if manifest["kind"] == "file":
            yield manifest["hash"], manifest["size"]
        else:
            for e in manifest["entries"]:
                yield e[1], e[2]
    if "map" in entry:
        yield entry["map"]["hash"], None


def _batches(digests: list[str], sizes: dict[str, int | None]) -> Iterator[list[str]]:
    """``digests`` in batches of at most ``_BATCH`` objects and about ``_BATCH_BYTES`` bytes
    (a map result, whose size no manifest states, counted as 1 MiB), so memory stays
    bounded however large a stage's output is."""
    batch: list[str] = []
    held = 0
    for digest in digests:
        size = sizes[digest]
        size = (1 << 20) if size is None else size
        if batch and (len(batch) >= _BATCH or held + size > _BATCH_BYTES):
            yield batch
            batch, held = [], 0
        batch.append(digest)
        held += size
    if batch:
        yield batch


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _catch(fn: Callable[[str], bytes], path: str) -> Any:
    try:
        return fn(path)
    except Exception as exc:
        return exc


def _read_local(path: str, limit: int) -> Any:
    """At most ``limit`` bytes of a regular file, opened without following a final link
    and without waiting on a FIFO; the exception (FileNotFoundError: absent) otherwise."""
    try:
        fd = os.open(path, OPEN_FILE)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError | NotADirectoryError):
            return FileNotFoundError(path)
        if exc.errno in _NOT_OBJECT:
            return FileNotFoundError(path)
        return exc
    try:
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return FileNotFoundError(path)
            return fh.read(limit)
    except OSError as exc:
        return exc


def _copy_local(src: str, dst: str, limit: int) -> None:
    """Copy at most ``limit`` bytes of the regular file ``src`` (a final link is never
    followed, a FIFO never waited on) to ``dst``."""
    try:
        fd = os.open(src, OPEN_FILE)
    except OSError as exc:
        if exc.errno in _NOT_OBJECT:
            raise FileNotFoundError(src) from None
        raise
    with open(fd, "rb") as fin, open(dst, "wb") as fout:
        if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
            raise FileNotFoundError(src)
        left = limit
        while left > 0 and (chunk := fin.read(min(1 << 20, left))):
            fout.write(chunk)
            left -= len(chunk)


def _put_local(path: str, data: bytes, replace: bool) -> bool:
    """Put-if-absent on a local file system: a temporary file linked to its name (a link
    never replaces), or renamed over it with ``replace``."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with open(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o444)
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _mtime(info: dict[str, Any]) -> float:
    """A listing's modification time in seconds (now when the back-end gives none, so the
    object counts as young: ``gc`` leaves it)."""
    for name in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(name)
        if value is None:
            continue
        if isinstance(value, int | float):
            return float(value)
        timestamp = getattr(value, "timestamp", None)
        if timestamp is not None:
            return float(timestamp())
        try:
            from datetime import datetime

            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
    return time.time()


def _listing(fs: Any, path: str, detail: bool = False) -> Any:
    """Every file under ``path`` (none when it does not exist)."""
    try:
        return fs.find(path, detail=detail)
    except FileNotFoundError:
        return {} if detail else []

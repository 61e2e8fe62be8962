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
(see :mod:`pipemake.remotefs`), so ten thousand small objects are not ten
thousand sequential round trips.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

import xxhash

from .errors import Interrupted
from .objects import REMOTE_GRACE
from .remotefs import (
    RemoteError,
    RemoteFiles,
    Unreachable,
    batches,
    each,
    is_temp,
    mtime,
    reason,
)
from .signing import cache_key, seal, unseal
from .trust import is_digest

if TYPE_CHECKING:
    from .store import Store

__all__ = ["REMOTE_GRACE", "FetchInterrupted", "Remote", "RemoteError", "RemoteStats",
           "entry_objects", "open_remote"]  # fmt: skip

#: the most bytes read for one entry, and for an object whose size no manifest states
_ENTRY_MAX = 256 << 20
_UNSIZED_MAX = 1 << 30
#: objects larger than this are streamed to a file one at a time instead of held in memory
_BIG = 64 << 20
#: files read in one request batch between two looks at whether the build is stopping
_STEP = 256
#: an object a push finds older than this is written again (its age renewed), so a
#: ``cache gc --remote`` running meanwhile sees it as young
_REFRESH = 3600.0


def _never() -> bool:
    """Never stopping: a command without a signal handler of its own."""
    return False


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
    #: entries pushed in place of ones the pusher's key does not accept (unsigned, other key)
    replaced_entries: int = 0


class FetchInterrupted(Interrupted):
    """``pull`` or ``push`` was stopped by a signal: after the request batch under way (a
    first Ctrl-C), or at once (a second one, ``forced``). What was fetched and verified, or
    pushed whole, is kept; nothing half-written is."""

    def __init__(
        self,
        signum: int,
        url: str,
        stats: RemoteStats,
        command: str = "pull",
        forced: bool = False,
    ):
        super().__init__(signum)
        self.url = url
        self.stats = stats
        self.command = command
        self.forced = forced

    def format(self) -> str:
        """Which signal, how much was fetched (or pushed), and that running again resumes."""
        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        s = self.stats
        if self.command == "push":
            n, m = s.pushed_entries, s.pushed_objects
            done = (
                f"pushed {n} entr{'y' if n == 1 else 'ies'} and {m} object{'s' * (m != 1)} "
                f"to remote {self.url}, each whole"
            )
            lost, verb = "the uploads under way were abandoned", "send"
            sweep = "a later push or `pipemake cache gc --remote` removes"
        else:
            done = (
                f"fetched {s.entries} entr{'y' if s.entries == 1 else 'ies'} and {s.objects} "
                f"object{'s' * (s.objects != 1)} ({s.bytes / 1e6:.1f} MB) from remote "
                f"{self.url}, each verified and kept"
            )
            lost, verb = "the batch being fetched was discarded", "fetch"
            sweep = "`pipemake cache gc` removes"
        again = f"Run `pipemake {self.command}` again to {verb} the rest."
        if not self.forced:
            half = "written" if self.command == "push" else "fetched"
            return f"interrupted by {name}: {done}; nothing half-{half} was kept. {again}"
        return (
            f"interrupted by {name} again: stopped at once; {done}; {lost} and nothing "
            f"half-written was kept (at most a temporary file, which {sweep}). {again}"
        )


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
    #: keys whose remote entry this process read and trusted (a keyed push reads no more)
    trusted: set[str] = field(default_factory=set)
    #: whether the command is being stopped (Ctrl-C): no more is fetched, and what was
    #: fetched completely is kept
    stopping: Callable[[], bool] = field(default=_never)
    #: the command (``pull`` or ``push``) that a second SIGINT or SIGTERM during a request
    #: batch ends at once; None in a build, which stops through its own handler
    hard_stop: str | None = None
    #: the first signal a pull or push caught itself, mid-batch (it stops after the batch)
    _signal: int | None = None
    #: files this process is writing a fetched object to (removed by a forced exit)
    _temps: set[str] = field(default_factory=set)
    _asked: set[str] = field(default_factory=set)
    _said: set[str] = field(default_factory=set)
    _files: RemoteFiles | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _slock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def files(self) -> RemoteFiles:
        """The remote's files (the back-end opens on first use)."""
        if self._files is None:
            self._files = RemoteFiles(self.url)
        return self._files

    def begin(self) -> None:
        """Start a new command (a build, a pull, a push): its own counts, its own
        once-only warnings, every key asked afresh."""
        self.stats = RemoteStats()
        self._said.clear()
        self._asked.clear()
        self.trusted.clear()
        self.down = self.push_down = None
        self.stopping = _never
        self._signal = None

    def _halting(self) -> bool:
        """Whether the command is stopping: no new batch is started."""
        return self._signal is not None or self.stopping()

    @contextmanager
    def _forceable(self) -> Iterator[None]:
        """While ``pull`` or ``push`` (see :attr:`hard_stop`) waits on the remote: a first
        SIGINT or SIGTERM lets the batch under way finish and stops there; a second ends the
        process at once (see :meth:`_force`), however long a read or write is stalled."""
        if self.hard_stop is None or threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            if self._signal is None and not self.stopping():
                self._signal = signum
            else:
                self._force(signum if self._signal is None else self._signal)

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, was in old.items():
                signal.signal(sig, was)

    def _interrupted(self, signum: int, forced: bool = False) -> FetchInterrupted:
        return FetchInterrupted(signum, self.url, self.stats, self.hard_stop or "pull", forced)

    def _force(self, signum: int) -> None:
        """End the process now (a second Ctrl-C): the objects and entries already stored
        (each whole: the store renames a finished file into place, commits an entry in one
        transaction) stay; the files of objects still being fetched are removed, and what
        threads were writing remains a temporary only (the message says what removes it).
        The batches under way are not waited for: a read stalled on the network cannot
        hold the exit."""
        for tmp in list(self._temps):
            try:
                os.unlink(tmp)
            except OSError:
                pass
        text = self._interrupted(signum, forced=True).format()
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
        try:
            os.write(2, f"{text}\n".encode(errors="replace"))
        except OSError:
            pass
        os._exit(128 + signum)

    def check(self) -> None:
        """Open the back-end (no request is made): a :class:`RemoteError` when the URL's
        scheme is unknown or its package is not installed."""
        self.files.open()

    def _obj(self, digest: str) -> str:
        return f"{self.files.root}/objects/{digest[:2]}/{digest[2:]}"

    def _ent(self, key: str) -> str:
        return f"{self.files.root}/entries/{key[:2]}/{key[2:]}.json"

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
        why = reason(exc)
        if pushing:
            self.push_down = why
            self._say(
                f"pushing to remote {self.url} failed ({why}); nothing more is pushed in "
                "this build: run `pipemake push` later",
                once="push-down",
            )
        else:
            self.down = why
            self._say(
                f"remote {self.url} failed ({why}); going on without it: what it would "
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
        if self.files.links_out:
            rel, target = next(iter(self.files.links_out.items()))
            more = len(self.files.links_out) - 1
            self._say(
                f"remote {self.url}: {rel}/ leads outside it, to {target} (a link on the "
                "way)" + (f", and {more} more folder(s) like it" if more else "") + "; links "
                "out of a remote are not followed, so what lies there counts as missing (put "
                "the folder itself in the remote)",
                once="links-out",
            )

    # reading ----------------------------------------------------------------------------
    def fetch(self, store: Store, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The entries of ``keys`` the remote holds and the reader may trust, with every
        object they name verified and put into ``store`` (for a read-only store, the
        entries alone, for a plan). Each key is asked once per process; a key whose entry
        is missing, refused or lacks a good object is left out (a miss)."""
        with self._lock, self._forceable():
            got = self._fetch(store, keys)
        if self._signal is not None and self.hard_stop is not None:
            raise self._interrupted(self._signal)
        return got

    def _fetch(self, store: Store, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        todo = [k for k in dict.fromkeys(keys) if is_digest(k) and k not in self._asked]
        if not todo or self.down is not None or self._halting():
            return {}
        self._asked.update(todo)
        try:
            self.check()
            self._trust_note()
            entries = self._read_entries(todo)
            if not entries or store.readonly:
                return entries
            return self._with_objects(store, entries)
        except Unreachable as exc:
            self._failed(exc.__cause__ or exc)
            return {}

    def _read_entries(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        paths = [self._ent(k) for k in keys]
        found: dict[str, bytes] = {}
        for start in range(0, len(paths), _STEP):
            if start and self._halting():
                self._asked.difference_update(keys[start:])  # asked again by the next build
                break
            step = paths[start : start + _STEP]
            found.update(self.files.read_many(step, [_ENTRY_MAX] * len(step)))
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
            self.trusted.add(key)
        return out

    def _untrusted(self, keys: list[str]) -> set[str]:
        """Those of ``keys`` whose entry on the remote a reader holding this process's
        key would refuse (unsigned, signed with another key, damaged, not a file): what a
        keyed push replaces rather than leaving every keyed reader to miss them forever."""
        todo = [k for k in keys if k not in self.trusted]
        if not self.secret or not todo:
            return set()
        found = self.files.read_many([self._ent(k) for k in todo], [_ENTRY_MAX] * len(todo))
        out = set()
        for key in todo:
            data = found.get(self._ent(key))
            if data is None or unseal(data, key, self.secret)[0] is None:
                out.add(key)
            else:
                self.trusted.add(key)
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
        digests that are missing on the remote or refused, or not fetched because the
        command is being stopped."""
        lost: set[str] = set()
        small = [d for d, size in need.items() if size is None or size <= _BIG]
        big = [d for d, size in need.items() if size is not None and size > _BIG]
        for chunk in batches(small, need):
            if self._halting():
                break
            paths = [self._obj(d) for d in chunk]
            limits = [need[d] + 1 if need[d] is not None else _UNSIZED_MAX for d in chunk]
            found: dict[str, bytes] = {}
            for start in range(0, len(paths), _STEP):
                if start and self._halting():
                    break  # those not read yet are missing (the next build asks again)
                step = slice(start, start + _STEP)
                found.update(self.files.read_many(paths[step], limits[step]))
            args = [(store, d, need[d], found.get(p)) for d, p in zip(chunk, paths, strict=True)]

            def take(args: tuple[Store, str, int | None, bytes | None]) -> None:
                if not self._accept(args):
                    with self._slock:
                        lost.add(args[1])

            each(take, args)
        for digest in big:
            if self._halting() or not self._fetch_big(store, digest, need[digest] or 0):
                lost.add(digest)
        if self._halting():
            lost.update(d for d in need if not store.has_object(d))
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
        store.path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".remote-", dir=store.path)
        os.close(fd)
        self._temps.add(tmp)
        try:
            if not self.files.get_file(self._obj(digest), tmp, size + 1):
                return False
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
            self._temps.discard(tmp)
            os.unlink(tmp)

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
            self.check()
            with self._forceable():
                self._push(store, pairs)
        except Unreachable as exc:
            if strict:
                raise RemoteError(f"pushing to remote {self.url} failed: {exc}") from None
            self._failed(exc, pushing=True)
        if self._signal is not None and self.hard_stop is not None:
            raise self._interrupted(self._signal)

    def _push(self, store: Store, pairs: list[tuple[str, dict[str, Any]]]) -> None:
        from .store import encode_entry

        there = self.files.ages([self._ent(k) for k, _e in pairs])
        stale = self._untrusted([k for k, _e in pairs if there[self._ent(k)] is not None])
        if self._halting():
            return
        new = [(k, e) for k, e in pairs if there[self._ent(k)] is None or k in stale]
        self.stats.present_entries += len(pairs) - len(new)
        digests: dict[str, None] = {}
        for _k, entry in new:
            for digest, _size in entry_objects(entry):
                digests[digest] = None
        for _k, entry in pairs:  # a corrupt object seen on the remote is replaced anyway
            digests.update((d, None) for d, _s in entry_objects(entry) if d in self.bad)
        old = time.time() - _REFRESH
        if self.files.exclusive:  # one conditional create each; a HEAD only for those there
            wrote, missing = self._upload(store, list(digests), replace=False)
            present = [d for d in digests if d not in wrote and d not in missing]
            ages = self.files.ages([self._obj(d) for d in present])
            upload = list(wrote)
        else:
            ages = self.files.ages([self._obj(d) for d in digests])
            upload = [d for d in digests if ages[self._obj(d)] is None or d in self.bad]
            present = [d for d in digests if d not in upload]
            _wrote, missing = self._upload(store, upload, replace=False)
        refresh = [d for d in present if (ages[self._obj(d)] or 0.0) < old]
        missing |= self._upload(store, refresh, replace=True)[1]
        if self._halting():  # an object may not be there yet: no entry may name it
            return
        docs = []
        for key, entry in new:
            if any(d in missing for d, _s in entry_objects(entry)):
                self.stats.skipped_entries += 1  # an object this store lacks: not pushed
                continue
            docs.append((self._ent(key), seal(key, encode_entry(entry), self.secret), key in stale))

        def put(doc: tuple[str, bytes, bool]) -> None:
            self.files.put(*doc)
            with self._slock:
                self.stats.pushed_entries += 1
                self.stats.replaced_entries += doc[2]

        each(put, docs, stop=self._halting)
        if self._halting():
            return
        # a `cache gc --remote` may have taken an old object just as this push found it
        ages = self.files.ages([self._obj(d) for d in present])
        self._upload(store, [d for d in present if ages[self._obj(d)] is None], replace=False)
        # what killed pushes left where this one wrote (a push writes on, or is gone)
        folders = {os.path.dirname(p) for p in [*map(self._obj, digests), *(d[0] for d in docs)]}
        self.files.sweep_temps(folders, time.time() - _TEMP_AGE)
        self.bad.difference_update(upload)

    def _upload(self, store: Store, digests: list[str], replace: bool) -> tuple[set[str], set[str]]:
        """Upload objects from ``store`` (put-if-absent, or replacing: a refresh of an old
        object or a repair of a corrupt one), each verified first; the digests written, and
        those the store lacks or holds corrupt."""
        wrote: set[str] = set()
        lacking: set[str] = set()

        def one(digest: str) -> None:
            force = replace or digest in self.bad
            path = self._obj(digest)
            try:
                big = os.stat(store.object_path(digest)).st_size > _BIG
            except OSError:
                big = False
            if big:  # streamed from the store's file, never held in memory
                ok = store.verify_object(digest) is True
                data: bytes | str | None = str(store.object_path(digest)) if ok else None
            else:
                data = store.read_bytes(digest)
            if data is None:
                with self._slock:
                    lacking.add(digest)
            elif self.files.put(path, data, replace=force):
                with self._slock:
                    wrote.add(digest)
                    self.stats.pushed_objects += 1

        each(one, digests, stop=self._halting)
        return wrote, lacking

    # gc ---------------------------------------------------------------------------------
    def gc(self, grace: float = REMOTE_GRACE, dry: bool = False) -> dict[str, Any]:
        """Remove objects no entry on the remote names and that are older than ``grace``
        seconds; entries stay. The entries are listed before the objects, and each object's
        age is read again just before it goes, so an object a concurrent push uploaded or
        refreshed (see :meth:`push_pairs`) is never removed."""
        if self.read_only and not dry:
            raise RemoteError(f"remote {self.url} is read-only here (--remote-read-only)")
        files = self.files
        files.open()
        root = files.root
        try:
            keys = {}
            listed = files.listing("entries")
            temps = {p: i for p, i in listed.items() if is_temp(p)}  # a killed push's
            for path in listed:
                fan, _, rest = path[len(root) + len("/entries/") :].partition("/")
                key = fan + rest.removesuffix(".json")
                if rest.endswith(".json") and is_digest(key):
                    keys[path] = key
            referenced: set[str] = set()
            for path, data in files.read_many(list(keys), [_ENTRY_MAX] * len(keys)).items():
                entry, _why = unseal(data, keys[path], None)
                if entry is not None:
                    referenced.update(d for d, _s in entry_objects(entry))
            objects = files.listing("objects")
            temps.update((p, i) for p, i in objects.items() if is_temp(p))
        except Unreachable as exc:
            raise RemoteError(f"remote {self.url}: {exc}") from None
        horizon = time.time() - grace
        doomed = []
        for path, info in objects.items():
            rel = path[len(root) + len("/objects/") :]
            digest = rel.replace("/", "")
            if len(rel) != 33 or not is_digest(digest) or digest in referenced:
                continue
            if mtime(info) < horizon:
                doomed.append((path, int(info.get("size") or 0)))
        removed = doomed if dry else [(p, n) for p, n in doomed if self._remove_old(p, horizon)]
        # what killed pushes left half written, once as old as the grace (a push writes on)
        junk = [(p, int(i.get("size") or 0)) for p, i in temps.items() if mtime(i) < horizon]
        swept = junk if dry else [(p, n) for p, n in junk if self._remove_old(p, horizon)]
        return {"objects_removed": len(removed),
                "bytes_freed": sum(n for _p, n in removed) + sum(n for _p, n in swept),
                "objects_kept": sum(not is_temp(p) for p in objects) - len(removed),
                "entries": len(keys),
                "temporaries_removed": len(swept), "dry_run": dry}  # fmt: skip

    def _remove_old(self, path: str, horizon: float) -> bool:
        """Remove an object unless a push renewed it since it was listed."""
        try:
            age = self.files.ages([path])[path]
            if age is None or age >= horizon:
                return False  # gone already, or renewed by a push since the listing
            self.files.remove(path)
        except FileNotFoundError:
            return False
        except Unreachable as exc:
            raise RemoteError(f"remote {self.url}: removing {path}: {exc}") from None
        except OSError as exc:
            raise RemoteError(f"remote {self.url}: removing {path}: {reason(exc)}") from None
        return True


#: seconds a temporary file in a local remote may go unwritten before a push takes it for
#: one a killed push left (a live push writes on, and links it in, within moments)
_TEMP_AGE = 600.0


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

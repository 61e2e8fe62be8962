"""The remote's files: batched reads, put-if-absent writes and ages, over fsspec.

:class:`RemoteFiles` knows nothing of entries or trust (that is :mod:`pipemake.remote`); it
moves bytes, many at a time, and says "not there" (:class:`FileNotFoundError`) apart from
"failed" (:class:`Unreachable`). fsspec and the back-end (s3fs, gcsfs, …) are imported when
the first file is touched. A ``file://`` remote is read and written with the same care as
the local store: a final link is never followed, a FIFO never waited on, no write or
removal goes through a link to a folder outside the remote, and put-if-absent is a hard
link, which never replaces.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .errors import StoreError
from .objects import OPEN_FILE
from .walk import remove_stale

__all__ = ["RemoteError", "RemoteFiles", "Unreachable", "batches", "reason"]

THREADS = 32
#: at most this many objects, and about this many bytes, are read in one batch
BATCH = 2000
BATCH_BYTES = 256 << 20
#: back-ends whose listings fsspec would otherwise cache (a push must see another's write)
#: and whose instances it would share between commands
_CLOUD = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
#: what opening a link, socket or device without following or waiting says: not an object
_NOT_OBJECT = (errno.ELOOP, errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP)


class RemoteError(StoreError):
    """The remote cannot be used for what was asked (exit 1): unreachable during ``push``,
    read-only, an unknown URL scheme or a back-end that is not installed."""


class Unreachable(Exception):
    """A read or write failed for another reason than "not there" (network, permissions)."""


class RemoteFiles:
    """The files under one remote URL."""

    def __init__(self, url: str):
        self.url = url
        self._fs: Any = None
        self.root = ""
        #: a ``file://`` remote (or a plain path): read and written through ``os``
        self.local = False
        self._real: set[str] = set()  # folders found to be inside the remote
        self._bucket_seen = False  # the bucket (or container) was found to exist
        #: folders of a ``file://`` remote that are links to folders outside it (never
        #: followed: what they hold counts as missing), where each leads
        self.links_out: dict[str, str] = {}

    @property
    def scheme(self) -> str:
        """The URL's scheme (``file`` for a plain path)."""
        return self.url.partition("://")[0].lower() if "://" in self.url else "file"

    def open(self) -> Any:
        """The fsspec file system (opened on first use): a :class:`RemoteError` when the
        URL's scheme is unknown or its package is not installed. No request is made."""
        if self._fs is not None:
            return self._fs
        try:
            import fsspec
        except ImportError:
            raise RemoteError(
                f"remote {self.url}: fsspec is not installed; pip install fsspec "
                "(or 'pipemake[s3]' for s3://)"
            ) from None
        scheme = self.scheme
        try:
            # a fresh instance per command: fsspec's cache would keep an endpoint or
            # credentials from the environment of an earlier command in this process
            cloud = {"use_listings_cache": False, "skip_instance_cache": True}
            options = cloud if scheme in _CLOUD else {}
            fs, root = fsspec.core.url_to_fs(self.url, **options)
        except ImportError as exc:
            extra = " (pip install 'pipemake[s3]')" if scheme in ("s3", "s3a") else ""
            raise RemoteError(
                f"remote {self.url}: the {scheme}:// back-end is not installed{extra}: {exc}"
            ) from None
        except (ValueError, TypeError, OSError) as exc:
            raise RemoteError(f"remote {self.url} cannot be opened: {reason(exc)}") from None
        from fsspec.implementations.local import LocalFileSystem

        self.local = isinstance(fs, LocalFileSystem)
        self.root = root.rstrip("/")
        if self.local:
            self.root = os.path.abspath(self.root)
        self._fs = fs
        return fs

    # reading ----------------------------------------------------------------------------
    def read_many(self, paths: list[str], limits: list[int]) -> dict[str, bytes]:
        """The bytes of those of ``paths`` that exist, at most ``limits`` bytes each (in
        ranged requests on a cloud back-end: an object replaced by a huge one is never
        downloaded whole), read concurrently; :class:`Unreachable` when the remote fails
        otherwise. Where a limit is over :data:`LARGE`, the first :data:`_CHUNK` bytes are
        read, and the rest only when the file is not larger than its limit: one that is
        comes back as that first part, for the caller to refuse as damaged."""
        if not paths:
            return {}
        fs = self.open()
        out: dict[str, bytes] = {}
        first = limits if self.local else [_CHUNK if n > LARGE else n for n in limits]
        try:
            if self.local:
                with ThreadPoolExecutor(min(THREADS, len(paths))) as pool:
                    got = list(pool.map(self._read_local, paths, limits))
            elif getattr(fs, "async_impl", False):
                # concurrent ranged GETs (bytes=0-LIMIT-1), without looking each path up
                # first (as ``cat`` would, or s3fs for an unbounded read)
                got = fs.cat_ranges(paths, None, first, on_error="return")
            else:
                with ThreadPoolExecutor(min(THREADS, len(paths))) as pool:
                    got = list(pool.map(lambda p, n: _catch(fs.cat_file, p, n), paths, first))
            results: Iterable[tuple[str, Any, int, int]] = zip(
                paths, got, first, limits, strict=True
            )
            for path, data, asked, limit in results:
                if isinstance(data, FileNotFoundError):
                    continue
                if isinstance(data, BaseException):
                    if not _empty_range(data):
                        raise Unreachable(reason(data)) from data
                    data = b""  # a range from byte 0 not satisfiable: the object is empty
                if len(data) > asked:  # a back-end that ignored the range
                    data = data[:asked]
                if not self.local and asked < limit and len(data) == asked:
                    data = _read_rest(fs, path, data, limit)
                out[path] = data if isinstance(data, bytes) else bytes(data)
        except Unreachable:
            raise
        except Exception as exc:  # a back-end's own errors (botocore, aiohttp, paramiko)
            raise Unreachable(reason(exc)) from exc
        if not out:
            self.check_bucket()
        return out

    def check_bucket(self) -> None:
        """:class:`Unreachable` when the remote's bucket (or container) does not exist: on
        a cloud back-end a missing bucket reads as every file missing, which would make a
        mistyped bucket look like an empty remote. Asked once, and only when a read found
        nothing (a ``file://`` remote's folder may well not exist yet: it is made on push)."""
        if self._bucket_seen or self.local or self.scheme not in _CLOUD:
            return
        bucket = self.root.partition("/")[0]
        fs = self.open()
        try:
            if type(fs).__name__ == "S3FileSystem":
                fs.call_s3("head_bucket", Bucket=bucket)
            else:
                fs.info(bucket)
        except FileNotFoundError:
            raise Unreachable(f"bucket {bucket!r} does not exist") from None
        except Exception:  # noqa: S110 - not allowed to ask (no s3:ListBucket): reads tell
            pass
        self._bucket_seen = True

    def get_file(self, path: str, dst: str, limit: int) -> bool:
        """Copy at most ``limit`` bytes of the remote file ``path`` to the local ``dst`` (in
        ranged requests on a cloud back-end, so an object replaced by a huge one is never
        downloaded whole); False when it is not there."""
        fs = self.open()
        try:
            if self.local:
                data = self._read_local(path, 0)
                if isinstance(data, BaseException):
                    raise data
                _copy_regular(path, dst, limit)
            else:
                _copy_ranges(fs, path, dst, limit)
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise Unreachable(reason(exc)) from exc
        return True

    def _read_local(self, path: str, limit: int) -> Any:
        """At most ``limit`` bytes of a regular file inside the remote, opened without
        following a final link or waiting on a FIFO; else the exception to report
        (:class:`FileNotFoundError`: not there, or not an object)."""
        if not self._inside(path):
            return FileNotFoundError(path)
        try:
            fd = os.open(path, OPEN_FILE)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError | NotADirectoryError):
                return FileNotFoundError(path)
            return FileNotFoundError(path) if exc.errno in _NOT_OBJECT else exc
        try:
            # before ``open``, which refuses a directory with an error of its own
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                os.close(fd)
                return FileNotFoundError(path)
            with open(fd, "rb") as fh:
                # larger than a large limit: its first part, as :meth:`read_many` says
                return fh.read(_CHUNK if limit > LARGE and info.st_size > limit else limit)
        except OSError as exc:
            return exc

    def _inside(self, path: str) -> bool:
        """Whether the folder of ``path`` is, resolved, where it says inside the remote (no
        link to a folder elsewhere on the way)."""
        folder = os.path.dirname(path)
        if folder in self._real:
            return True
        real_root = os.path.realpath(self.root)
        rel = os.path.relpath(folder, self.root)
        if os.path.realpath(folder) != os.path.normpath(os.path.join(real_root, rel)):
            if len(self.links_out) < 100:
                self.links_out.setdefault(rel, os.path.realpath(folder))
            return False
        if os.path.isdir(folder):
            self._real.add(folder)
        return True

    # writing ----------------------------------------------------------------------------
    @property
    def exclusive(self) -> bool:
        """Whether :meth:`put` is one conditional request that says "already there" itself
        (S3's ``If-None-Match``), so nothing needs looking up first."""
        return type(self.open()).__name__ == "S3FileSystem"

    def put(self, path: str, data: bytes | str, replace: bool = False) -> bool:
        """Write ``data`` (bytes, or the local file of that name) at ``path`` unless
        something is there — or, with ``replace``, in any case, atomically; whether it was
        written."""
        fs = self.open()
        try:
            if self.local:
                return self._put_local(path, data, replace)
            write = fs.pipe_file if isinstance(data, bytes) else fs.put_file
            args = (data, path) if isinstance(data, str) else (path, data)
            if replace:
                write(*args)
                return True
            if type(fs).__name__ == "S3FileSystem":
                try:
                    write(*args, mode="create")  # If-None-Match: *
                    return True
                except FileExistsError:
                    return False
                except Exception:  # a server without conditional writes: look, then write
                    pass
            if fs.exists(path):
                return False
            write(*args)
            return True
        except Exception as exc:
            raise Unreachable(reason(exc)) from exc

    def _put_local(self, path: str, data: bytes | str, replace: bool) -> bool:
        """Put-if-absent on a local file system: a temporary file linked to its name (a
        link never replaces), or renamed over it with ``replace``."""
        folder = os.path.dirname(path)
        self._make_folders(folder)
        if not self._inside(path):
            raise Unreachable(f"{folder} leads out of the remote {self.root} (a link)")
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        try:
            with open(fd, "wb") as fh:
                if isinstance(data, bytes):
                    fh.write(data)
                else:
                    with open(data, "rb") as src:
                        while chunk := src.read(1 << 20):
                            fh.write(chunk)
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

    def sweep_temps(self, folders: Iterable[str], before: float) -> int:
        """On a local remote, remove from each of ``folders`` (fan-out folders it wrote in)
        the temporaries killed pushes left: files (never a link) of exactly the name a push
        gives them, not written to since ``before``. A live push writes its temporary as it
        goes and links it in within moments; one removed from under a stalled push makes
        that push fail, never corrupts the remote. How many were removed."""
        if not self.local:
            return 0
        return sum(remove_stale(f, is_temp, before) for f in folders if self._inside(f))

    def _make_folders(self, folder: str) -> None:
        """Create ``folder`` and the folders above it up to the remote's root, one at a
        time, refusing a link (or a file) on the way before anything is created through it:
        no folder is ever made outside the remote."""
        if folder in self._real:
            return
        os.makedirs(self.root, exist_ok=True)
        rel = os.path.relpath(folder, self.root)
        if rel.startswith(os.pardir):
            raise Unreachable(f"{folder} is outside the remote {self.root}")
        here = self.root
        for part in [] if rel == os.curdir else rel.split(os.sep):
            here = os.path.join(here, part)
            try:
                os.mkdir(here)
                continue
            except FileExistsError:
                pass
            if os.path.islink(here) or not os.path.isdir(here):
                raise Unreachable(
                    f"{here} leads out of the remote {self.root} (a link, or not a folder)"
                )

    def remove(self, path: str) -> None:
        """Remove one file (never through a link to a folder outside the remote)."""
        fs = self.open()
        if self.local:
            if self._inside(path):
                os.unlink(path)
            return
        fs.rm_file(path)

    # listing ----------------------------------------------------------------------------
    def ages(self, paths: list[str]) -> dict[str, float | None]:
        """Each path's modification time, or None where nothing is (asked concurrently)."""
        fs = self.open()
        out: dict[str, float | None] = {}
        info = fs.info
        if type(fs).__name__ == "S3FileSystem":
            # one HEAD; ``info`` would also list the key as a folder when it is not there
            def info(path: str) -> dict[str, Any]:
                bucket, key, _version = fs.split_path(path)
                return dict(fs.call_s3("head_object", Bucket=bucket, Key=key))

        def one(path: str) -> None:
            try:
                out[path] = mtime(info(path))
            except FileNotFoundError:
                out[path] = None
            except Exception as exc:
                raise Unreachable(reason(exc)) from exc

        each(one, list(dict.fromkeys(paths)))
        return out

    def listing(self, folder: str) -> dict[str, dict[str, Any]]:
        """Every file under ``folder`` with its details (none when it does not exist)."""
        fs = self.open()
        try:
            found = fs.find(f"{self.root}/{folder}", detail=True)
        except FileNotFoundError:
            found = {}
        except Exception as exc:
            raise Unreachable(reason(exc)) from exc
        if not found:
            self.check_bucket()
        if self.local:
            found = {p: i for p, i in found.items() if self._inside(p)}
        return found


#: the name of a temporary file :meth:`RemoteFiles._put_local` writes before linking it in
#: (``tempfile.mkstemp``'s): one a killed push left behind is removed by ``cache gc --remote``
_TEMP = re.compile(r"\.tmp-[a-z0-9_]{8}")


def is_temp(path: str) -> bool:
    """Whether ``path`` (a listed file of the remote) is a temporary a push writes."""
    return _TEMP.fullmatch(path.rpartition("/")[2]) is not None


def each(
    fn: Callable[[Any], Any], items: list[Any], stop: Callable[[], bool] | None = None
) -> None:
    """``fn`` on every item, on a pool of threads (its first exception is raised); once
    ``stop`` says so, the items not started yet are skipped (a Ctrl-C: the requests under
    way finish, no more start)."""
    if not items:
        return

    def one(item: Any) -> None:
        if stop is None or not stop():
            fn(item)

    with ThreadPoolExecutor(min(THREADS, len(items))) as pool:
        for _ in pool.map(one, items):
            pass


def batches(digests: list[str], sizes: dict[str, int | None]) -> Iterator[list[str]]:
    """``digests`` in batches of at most ``BATCH`` objects and about ``BATCH_BYTES`` bytes
    (an object whose size no manifest states counts as 1 MiB), so memory stays bounded
    however large a stage's output is."""
    batch: list[str] = []
    held = 0
    for digest in digests:
        size = sizes[digest]
        size = (1 << 20) if size is None else size
        if batch and (len(batch) >= BATCH or held + size > BATCH_BYTES):
            yield batch
            batch, held = [], 0
        batch.append(digest)
        held += size
    if batch:
        yield batch


def reason(exc: BaseException) -> str:
    """An error's first line, short enough for a warning."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def mtime(info: dict[str, Any]) -> float:
    """A listing's modification time in seconds (now when the back-end gives none, so the
    file counts as young: ``gc`` leaves it)."""
    import time
    from datetime import datetime

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
            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
    return time.time()


def _catch(fn: Callable[..., bytes], path: str, limit: int) -> Any:
    try:
        return fn(path, start=0, end=limit)
    except Exception as exc:
        return exc


def _empty_range(exc: BaseException) -> bool:
    """Whether a ranged read from byte 0 failed as "range not satisfiable" (HTTP 416, S3's
    ``InvalidRange``): what S3 answers for any range of an empty object."""
    seen: BaseException | None = exc
    for _ in range(4):  # the error and the back-end's own it was made from
        if seen is None:
            return False
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            error = response.get("Error") or {}
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if error.get("Code") == "InvalidRange" or status == 416:
                return True
        if getattr(seen, "code", None) == 416 or getattr(seen, "status", None) == 416:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


#: the bytes one ranged request of :func:`_copy_ranges` and :func:`_read_rest` asks for
_CHUNK = 16 << 20
#: a read limit over this is read in parts, once the file's size is known to be within it
LARGE = 64 << 20


def _read_rest(fs: Any, path: str, head: bytes, limit: int) -> bytes:
    """``head`` (the first part of the remote file ``path``) and the rest of it, read in
    ranged requests of :data:`_CHUNK` bytes, when its size is at most ``limit``; ``head``
    alone when it is larger (or its size is not told)."""
    try:
        size = fs.size(path)
    except FileNotFoundError:
        return head  # gone meanwhile: what was read is checked, and refused
    if not isinstance(size, int) or size > limit:
        return head
    return head + b"".join(_ranges(fs, path, len(head), size))


def _copy_ranges(fs: Any, path: str, dst: str, limit: int) -> None:
    """Copy at most ``limit`` bytes of the remote file ``path`` to ``dst``, one ranged
    request of :data:`_CHUNK` bytes at a time (:class:`FileNotFoundError`: not there)."""
    with open(dst, "wb") as fout:
        for chunk in _ranges(fs, path, 0, limit):
            fout.write(chunk)


def _ranges(fs: Any, path: str, start: int, end: int) -> Iterator[bytes]:
    """The bytes of the remote file ``path`` from ``start`` up to ``end`` at most, one
    ranged request of :data:`_CHUNK` bytes at a time, ending where the file does (or where
    it went, once something was read: what was read is checked, and refused;
    :class:`FileNotFoundError` when it is not there at all)."""
    done = start
    while done < end:
        want = min(_CHUNK, end - done)
        try:
            chunk = fs.cat_file(path, start=done, end=done + want)
        except FileNotFoundError:
            if done:
                return
            raise
        except Exception as exc:
            if not _empty_range(exc):
                raise
            return  # nothing from ``done`` on: the file ends there
        yield chunk[:want]
        done += min(len(chunk), want)
        if len(chunk) < want:
            return


def _copy_regular(src: str, dst: str, limit: int) -> None:
    """Copy at most ``limit`` bytes of the regular file ``src`` (a final link is never
    followed, a FIFO never waited on) to ``dst``."""
    try:
        fd = os.open(src, OPEN_FILE)
    except OSError as exc:
        if exc.errno in _NOT_OBJECT:
            raise FileNotFoundError(src) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # before ``open``: a directory is an error there
        os.close(fd)
        raise FileNotFoundError(src)
    with open(fd, "rb") as fin, open(dst, "wb") as fout:
        left = limit
        while left > 0 and (chunk := fin.read(min(1 << 20, left))):
            fout.write(chunk)
            left -= len(chunk)

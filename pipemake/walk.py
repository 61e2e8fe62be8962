"""Walking a directory and its stat signature: shared by the hasher and the no-op check
(:mod:`pipemake.noop`), which must compute the very same signature and stay light."""

from __future__ import annotations

import errno
import marshal
import os
import stat

import xxhash

__all__ = ["BadPath", "Row", "signature", "walk"]

#: relpath, dev, ino, size, mtime_ns, ctime_ns, mode & 0o111 (ctime: no tool can set it, so a
#: rewrite that restores size and mtime still shows)
Row = tuple[str, int, int, int, int, int, int]


class BadPath(ValueError):
    """Something under a walked tree that pipemake cannot take as files (a symlink loop, a
    name that is not text): the message says which, and what to do."""


def walk(base: str) -> list[Row]:
    """Every file under ``base`` (recursively, following symlinks to files and directories)
    with its stat, in directory order (stable while a directory is unchanged; sort for a
    manifest); dangling symlinks, FIFOs, sockets and devices hold no file and are left out.
    A symlink to a directory that holds it (a loop) raises :class:`BadPath`."""
    rows: list[Row] = []
    stack = [""]
    while stack:
        sub = stack.pop()
        try:
            it = os.scandir(os.path.join(base, sub) if sub else base)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            _too_deep(base, sub, exc)
            where = os.path.join(base, sub) if sub else base
            raise BadPath(
                f"cannot list the directory {where}: {exc.strerror}; make it readable"
            ) from None
        with it:
            for de in it:
                name = f"{sub}/{de.name}" if sub else de.name
                try:
                    is_dir = de.is_dir()
                except OSError as exc:  # symlinks within symlinks, past what the OS follows
                    _too_deep(base, name, exc)
                    raise
                if is_dir:
                    if de.is_symlink():
                        _no_loop(base, name, de.path)
                    stack.append(name)
                    continue
                try:
                    s = de.stat()
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(s.st_mode):
                    continue  # a FIFO, socket or device holds no file's bytes (and a FIFO
                    # would wait for a writer for ever)
                rows.append(
                    (name, s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns,
                     s.st_mode & 0o111)
                )  # fmt: skip
    return rows


def _no_loop(base: str, name: str, path: str) -> None:
    """Raise :class:`BadPath` when the symlinked directory ``path`` holds itself (it is
    the directory it sits in, or one above): walking it would never end."""
    target = os.path.realpath(path)
    here = os.path.realpath(os.path.dirname(path))
    if here == target or here.startswith(os.path.join(target, "")):
        shown = (
            os.path.join(base, name)
            .encode("utf-8", "surrogateescape")
            .decode("utf-8", "backslashreplace")
        )
        raise BadPath(
            f"{shown} is a symlink to a directory that holds it ({target}): a loop; remove "
            "it, or point it elsewhere"
        )


def _too_deep(base: str, name: str, exc: OSError) -> None:
    """Raise :class:`BadPath` for a symlink loop the OS gave up on (symlinked directories
    leading to each other): the path named up to where it starts repeating."""
    if exc.errno != errno.ELOOP:
        return
    parts = name.split("/")
    short = next(("/".join(parts[: i + 1]) for i, p in enumerate(parts) if p in parts[:i]), name)
    raise BadPath(
        f"{os.path.join(base, short)}: symlinked directories that lead back to each other (a "
        "loop); remove one of the links"
    ) from None


def signature(rows: list[Row]) -> str:
    """The stat signature of a walked tree: a hash of every file's relpath, device, inode,
    size, mtime, ctime and executable bits, in walk order. An unchanged tree walks in the same
    order, so an equal signature means an unchanged tree; a reordered one merely differs
    (and is checked file by file). ``marshal`` only serializes the tuples to be hashed (it
    is never loaded); its format 4 is fixed."""
    return xxhash.xxh3_128_hexdigest(marshal.dumps(rows, 4))

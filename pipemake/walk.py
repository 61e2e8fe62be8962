"""Walking a directory and its stat signature: shared by the hasher and the no-op check
(:mod:`pipemake.uptodate`), which must compute the very same signature and stay light."""

from __future__ import annotations

import marshal
import os

import xxhash

__all__ = ["Row", "mtimes", "signature", "walk"]

#: relpath, dev, ino, size, mtime_ns, ctime_ns, mode & 0o111 (ctime: no tool can set it, so a
#: rewrite that restores size and mtime still shows)
Row = tuple[str, int, int, int, int, int, int]


def walk(base: str) -> list[Row]:
    """Every file under ``base`` (recursively, following symlinks to files) with its stat,
    in directory order (stable while a directory is unchanged; sort for a manifest);
    dangling symlinks hold nothing and are left out."""
    rows: list[Row] = []
    stack = [""]
    while stack:
        sub = stack.pop()
        try:
            it = os.scandir(os.path.join(base, sub) if sub else base)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for de in it:
                name = f"{sub}/{de.name}" if sub else de.name
                if de.is_dir():
                    stack.append(name)
                    continue
                try:
                    s = de.stat()
                except FileNotFoundError:
                    continue
                rows.append(
                    (name, s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns,
                     s.st_mode & 0o111)
                )  # fmt: skip
    return rows


def signature(rows: list[Row]) -> str:
    """The stat signature of a walked tree: a hash of every file's relpath, device, inode,
    size, mtime, ctime and executable bits, in walk order. An unchanged tree walks in the same
    order, so an equal signature means an unchanged tree; a reordered one merely differs
    (and is checked file by file). ``marshal`` only serializes the tuples to be hashed (it
    is never loaded); its format 4 is fixed."""
    return xxhash.xxh3_128_hexdigest(marshal.dumps(rows, 4))


def mtimes(paths: list[str]) -> list[list[object]]:
    """Each path with its mtime in ns (None if it cannot be stat-ed; "" is the working
    directory): what installing or removing anything under a ``sys.path`` entry moves."""
    out: list[list[object]] = []
    for p in paths:
        try:
            out.append([p, os.stat(p or ".").st_mtime_ns])
        except OSError:
            out.append([p, None])
    return out

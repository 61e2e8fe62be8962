"""Where a workspace's store is: told (``--cache-dir``, ``PIPEMAKE_CACHE_DIR``), remembered,
or the default ``.pipemake/store``.

The first build told a store records it in ``.pipemake/store.json``, a small JSON file of its
own, so later commands without the option use the same store (a plain ``status`` after a
``build --cache-dir X`` reads X, and a plain ``build`` does not rerun everything into a
second store). A command told a different store uses it and says so once; a build told a
different one also remembers it from then on. The file::

    {"format": 1, "cache_dir": "PATH", "remote": null}

``cache_dir`` is relative to the project root when the store lies inside it (so the
project moves with its store), else absolute, with ``cache_dir_from_root`` beside it (the
same store relative to the project root): a project moved together with a store beside it
(``--cache-dir ../cache``, both under one folder that moved) finds it there when the
absolute path is gone, and says so; a remembered store that is gone altogether is said
too, before a build makes a new, empty one there. ``remote`` is the remote store URL the first
build told one (``--remote``, ``PIPEMAKE_REMOTE``) recorded: later commands told none use
it before the pipeline's ``remote:``. Unknown keys are kept when the file is rewritten.
A damaged file is ignored (and rewritten by the next build told a store), never an error:
it only spares typing an option.

A relative ``--cache-dir`` (or ``PIPEMAKE_CACHE_DIR``) is resolved like ``-f``: against
``-C DIR`` when given, else the current directory.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FILE", "Place", "choose", "dead_link", "read", "read_remote", "remember", "remember_remote",
]  # fmt: skip

FILE = "store.json"
FORMAT = 1
_MAX = 64 << 10


@dataclass
class Place:
    """The store a command uses, and how it was chosen: ``told`` (an option or the
    environment), ``remembered`` (``.pipemake/store.json``) or ``default``."""

    path: Path
    how: str
    #: a build told this store should remember it (it differs from the one remembered)
    to_remember: bool = False


def read(dot: Path, root: Path) -> Path | None:
    """The store remembered in ``dot/store.json`` (resolved against ``root``), or None."""
    return _remembered(dot, root)[0]


def _remembered(dot: Path, root: Path) -> tuple[Path | None, Path | None]:
    """The store remembered, and the absolute path recorded when that is gone and the store
    was found relative to the project instead (it moved with it), else None."""
    doc = _doc(dot)
    value = doc.get("cache_dir") if doc else None
    if not isinstance(value, str) or not value or "\0" in value:
        return None, None
    path = Path(value)
    if not path.is_absolute():
        return root / path, None
    rel = doc.get("cache_dir_from_root") if doc else None
    if path.exists() or not isinstance(rel, str) or not rel or "\0" in rel:
        return path, None
    moved = Path(os.path.normpath(root / rel))
    return (moved, path) if moved.is_dir() else (path, None)


def remember(dot: Path, root: Path, store: Path) -> None:
    """Record ``store`` as this workspace's store (atomically; other keys kept)."""
    doc = _doc(dot) or {}
    rel = os.path.relpath(store, root)
    inside = rel != ".." and not rel.startswith(".." + os.sep)
    doc.update({"format": FORMAT, "cache_dir": rel if inside else str(store)})
    if inside:
        doc.pop("cache_dir_from_root", None)
    else:
        doc["cache_dir_from_root"] = rel
    doc.setdefault("remote", None)
    _write(dot, doc)


def read_remote(dot: Path) -> str | None:
    """The remote store URL remembered in ``dot/store.json``, or None."""
    doc = _doc(dot)
    value = doc.get("remote") if doc else None
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        return None
    return value


def remember_remote(dot: Path, url: str) -> None:
    """Record ``url`` as this workspace's remote store (atomically; other keys kept)."""
    doc = _doc(dot) or {}
    doc.update({"format": FORMAT, "remote": url})
    doc.setdefault("cache_dir", None)
    _write(dot, doc)


def _write(dot: Path, doc: dict[str, Any]) -> None:
    dot.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dot, prefix=".store-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, dot / FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def choose(
    told: str | os.PathLike[str] | None,
    base: Path,
    dot: Path,
    root: Path,
    record: bool = False,
    note: Callable[[str], None] | None = None,
) -> Place:
    """The store to use: ``told`` (resolved against ``base`` when relative), else the one
    remembered, else ``dot/store``. With ``record`` (a build), a told store is to become
    the remembered one (``Place.to_remember``; the caller calls :func:`remember` once the
    pipeline is known to be fine and the store has opened). ``note`` hears, once, that a
    told store differs from the remembered one: which was remembered, which is used, how
    to change it."""
    remembered, gone = _remembered(dot, root)
    if told is None or str(told) == "":
        if remembered is None:
            return Place(dot / "store", "default")
        if note is not None and gone is not None:
            note(
                f"pipemake: the store remembered at {gone} is gone; using {remembered}, where "
                f"it lies from the project as it did (the project moved with it)"
                + ("; remembering that from now on" if record else "")
            )
        elif note is not None and not remembered.exists() and dead_link(remembered) is None:
            note(
                f"pipemake: the store remembered for this workspace, {remembered}, is missing "
                f"(in {dot / FILE}); "
                + ("a new, empty one is made there: every stage runs, but one whose outputs "
                   "are what pipemake.lock records (build with --cache-dir DIR to use "
                   "another)" if record else "nothing is restored from it")
            )  # fmt: skip
        return Place(remembered, "remembered", record and gone is not None)
    path = Path(told).expanduser()
    if not path.is_absolute():
        path = base / path
    path = Path(os.path.abspath(path))
    same = remembered is not None and os.path.realpath(remembered) == os.path.realpath(path)
    if remembered is not None and not same and note is not None:
        where = dot / FILE
        if record:
            note(
                f"pipemake: this workspace's store was {remembered} (remembered in {where}); "
                f"building with {path} as told, and remembering it from now on (build with "
                f"--cache-dir {remembered} to go back)"
            )
        else:
            note(
                f"pipemake: using the store {path} as told, for this command only; this "
                f"workspace remembers {remembered} (in {where}; a build with --cache-dir "
                f"{path} makes it the one remembered)"
            )
    default = remembered is None and path == Path(os.path.abspath(dot / "store"))
    return Place(path, "told", record and not same and not default)


def dead_link(path: Path) -> tuple[Path, str, str] | None:
    """What on the way to ``path`` (``path`` itself, or the nearest folder above it that is
    there) stops a store from being made there: ``(that path, where it leads, why)``,
    ``why`` being ``"missing"`` (a symbolic link to nothing: an unmounted disk, a moved
    folder), ``"loop"`` (a link that leads back to itself) or ``"file"`` (a folder above
    ``path`` is a file). None when nothing does (``path`` itself a file is left to
    :func:`pipemake.store.not_a_store`). ``mkdir`` would fail there with a bare errno, and
    such a store must not be remembered."""
    at = Path(os.path.abspath(path))
    while not os.path.lexists(at):
        if at.parent == at:
            return None
        at = at.parent
    try:
        st = os.stat(at)
    except OSError as exc:
        why = {errno.ELOOP: "loop", errno.ENOENT: "missing", errno.ENOTDIR: "missing"}
        if not os.path.islink(at) or exc.errno not in why:
            return None  # for its first use to say (a folder this user may not read)
        try:
            target = os.readlink(at)
        except OSError:
            target = "?"
        return at, target, why[exc.errno]
    if at != Path(os.path.abspath(path)) and not stat.S_ISDIR(st.st_mode):
        return at, os.path.realpath(at), "file"
    return None


def _doc(dot: Path) -> dict[str, Any] | None:
    """The file's JSON object, or None when absent or damaged."""
    try:
        with open(dot / FILE, "rb") as fh:
            doc = json.loads(fh.read(_MAX + 1))
    except (OSError, ValueError, UnicodeError):
        return None
    return doc if isinstance(doc, dict) else None

"""Roots: per workspace, the keys it needs, so ``cache gc`` run anywhere keeps them.

Every build notes in ``<store>/roots/<id>.json`` (one file per workspace and pipeline file,
written atomically) the keys its stages and items use, and when the workspace was last seen
(the record's ``written`` time, its mtime, which a build that found everything up to date
refreshes without rewriting the keys, or the workspace's last logged run); ``cache gc``
keeps the union of the records of every live workspace, so a gc run from one pipeline on a
store shared with another keeps the other's entries. A record is live while its pipeline
file exists and it was seen within ``forget_after`` seconds (``cache gc --forget-after``,
30 days by default); the others no longer protect anything and are removed once older than
the grace period. The last-seen times also order ``cache gc --max-size``'s eviction (least
recently used first). Like the rest of the store, the records are untrusted input: read
without following links, bounded in size, checked in shape; a damaged one is ignored,
reported and removed as a name.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from .objects import OPEN_FILE, exists_at, list_dir, open_dir, quiet, write_all
from .trust import json_problem, parse_json

__all__ = ["Roots", "RootsDir"]

_ROOT_NAME = re.compile(r"[0-9a-f]{32}\.json")
_ROOTS_MAX = 256 << 20
_HEX = re.compile(r"(?:[0-9a-f]{2})*")


def _named(field: str, path: str) -> dict[str, str]:
    """A path as a record keeps it: text, and, for a name that is not UTF-8 (a Latin-1
    folder), the shown text plus its bytes in hex under ``FIELD_bytes`` (JSON holds text)."""
    try:
        path.encode()
    except UnicodeEncodeError:
        raw = os.fsencode(path)
        return {field: raw.decode("utf-8", "backslashreplace"), f"{field}_bytes": raw.hex()}
    return {field: path}


def _hexed(value: Any) -> bool:
    """Whether a record's ``FIELD_bytes`` is bytes in hex, as :func:`_named` writes them."""
    return isinstance(value, str) and _HEX.fullmatch(value) is not None


def _path(doc: dict[str, Any], field: str) -> str:
    """The path a record keeps under ``field`` (see :func:`_named`)."""
    raw = doc.get(f"{field}_bytes")
    return os.fsdecode(bytes.fromhex(raw)) if raw else str(doc[field])


@dataclass
class Roots:
    """The union of every live workspace's roots (see :meth:`RootsDir.read`): their keys,
    each with the last time a workspace needing it was seen (``seen``), the live
    workspaces, damaged records, records dropped, and workspaces forgotten (not seen for
    ``forget_after``, or whose pipeline file is gone)."""

    keys: set[str] = field(default_factory=set)
    workspaces: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    dropped: int = 0
    seen: dict[str, float] = field(default_factory=dict)
    forgotten: list[str] = field(default_factory=list)


def _last_run(workspace: str) -> float:
    """When the workspace last logged a run (its ``.pipemake/runs`` folder changed), so a
    no-op build answered from its snapshot, which writes no roots, still counts as seen;
    0 when there is none."""
    try:
        return os.stat(os.path.join(workspace, ".pipemake", "runs")).st_mtime
    except (OSError, ValueError):
        return 0.0


class RootsDir:
    """The ``roots`` directory of a store."""

    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self._fd: int | None = None

    def write(
        self,
        workspace: str,
        pipeline: str,
        keys: Iterable[str],
        merge: bool,
        refresh: bool = True,
        fsync: bool = False,
    ) -> None:
        """Record the keys the workspace (a directory) of pipeline file ``pipeline``
        needs, so a ``cache gc`` run from any workspace sharing this store keeps them. With
        ``merge``, the keys recorded before are kept too (a build of some targets only);
        without ``refresh``, a record already there keeps its keys and is only marked as
        seen now (its mtime). Written atomically (flushed with ``fsync``); paths are kept
        relative to the store."""
        # relative to the store, so a project moved together with its store keeps its
        # record, and the store holds no absolute path of the machine it was written on
        workspace, pipeline, ident = self._ident(workspace, pipeline)
        if not refresh:
            dfd = self._dir(False)
            if dfd is not None and exists_at(ident + ".json", dfd):
                with quiet():  # seen now; a link is not followed
                    os.utime(ident + ".json", dir_fd=dfd, follow_symlinks=False)
                return
        keep = set(keys)
        if merge:
            old = self._read(ident + ".json")
            if old is not None:
                keep.update(old["keys"])
        doc = {**_named("workspace", workspace), **_named("pipeline", pipeline),
               "written": time.time(), "keys": sorted(keep)}  # fmt: skip
        dfd = self._dir(True)
        if dfd is None:
            return
        tmp = f".tmp-{os.getpid()}-{threading.get_ident()}-{ident}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(tmp, flags, 0o644, dir_fd=dfd)
        try:
            try:
                write_all(fd, json.dumps(doc).encode())
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, ident + ".json", src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with quiet():
                os.unlink(tmp, dir_fd=dfd)
            raise

    def _ident(self, workspace: str, pipeline: str) -> tuple[str, str, str]:
        """The workspace and pipeline file relative to the store, and the record's name."""
        base = self.path.parent
        workspace = os.path.relpath(workspace, base)
        pipeline = os.path.relpath(pipeline, base)
        ident = xxhash.xxh3_128_hexdigest(os.fsencode(f"{workspace}\0{pipeline}"))
        return workspace, pipeline, ident

    def read(
        self,
        grace: float,
        prune: bool = False,
        forget_after: float | None = None,
        skip: tuple[str, str] | None = None,
    ) -> Roots:
        """Every live workspace's recorded roots: the keys of those whose pipeline file
        still exists and that were seen within ``forget_after`` seconds (None: ever), and
        (with ``prune``) the records of the others, and damaged ones, removed once older
        than ``grace`` seconds. ``skip`` (workspace, pipeline file): that workspace's record
        is left out (``cache gc --dry-run``: the real run replaces it first)."""
        out = Roots()
        dfd = self._dir(False)
        if dfd is None:
            return out
        now = time.time()
        old = now - grace
        skipped = self._ident(*skip)[2] + ".json" if skip is not None else None
        for e in list_dir(dfd):
            if e.name == skipped:
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            doc = self._read(e.name) if _ROOT_NAME.fullmatch(e.name) else None
            if doc is not None:
                written = doc.get("written")
                seen = max(st.st_mtime, written if type(written) in (int, float) else 0.0)
                seen = max(seen, _last_run(os.path.join(self.path.parent, _path(doc, "workspace"))))
                exists = os.path.isfile(os.path.join(self.path.parent, _path(doc, "pipeline")))
                if exists and (forget_after is None or seen >= now - forget_after):
                    out.keys.update(doc["keys"])
                    out.workspaces.append(doc["workspace"])
                    for key in doc["keys"]:
                        if out.seen.get(key, 0.0) < seen:
                            out.seen[key] = min(seen, now)  # a future time: now at most
                    continue
                out.forgotten.append(doc["workspace"])
            elif not e.name.startswith(".tmp-"):
                out.damaged.append(f"roots/{e.name}")
            if prune and not self.readonly and max(st.st_mtime, st.st_ctime) < old:
                with quiet():
                    os.unlink(e.name, dir_fd=dfd)  # a link or FIFO as a name; never followed
                out.dropped += 1
        return out

    def _dir(self, create: bool) -> int | None:
        if self._fd is None:
            create = create and not self.readonly
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = open_dir(str(self.path), None, create, fsync=False)
        return self._fd

    def _read(self, name: str) -> dict[str, Any] | None:
        """One workspace's roots record, or None when absent or damaged."""
        dfd = self._dir(False)
        if dfd is None:
            return None
        try:
            fd = os.open(name, OPEN_FILE, dir_fd=dfd)
        except OSError:
            return None
        with open(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > _ROOTS_MAX:
                return None
            doc, _why = parse_json(fh.read(_ROOTS_MAX + 1))
        if (
            type(doc) is not dict
            or type(doc.get("workspace")) is not str
            or type(doc.get("pipeline")) is not str
            or type(doc.get("keys")) is not list
            or not all(type(k) is str for k in doc["keys"])
            or not all(_hexed(doc.get(f"{n}_bytes", "")) for n in ("workspace", "pipeline"))
            or json_problem(doc) is not None
        ):
            return None
        return doc

    def close(self) -> None:
        """Close the directory descriptor (it reopens on demand)."""
        if self._fd is not None:
            with quiet():
                os.close(self._fd)
            self._fd = None

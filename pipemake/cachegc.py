"""``cache gc`` and ``cache verify``: keeping a store, possibly shared, in shape.

``gc`` removes what no workspace sharing the store needs, and with ``max_size`` caps the
store by least-recently-used eviction; ``verify`` checks every object and entry and, with
``repair``, removes what is damaged. Both read the store as untrusted input: links and
things that are not objects are removed as names inside the store, never followed.

What "needed" means on a shared store: the keys this workspace would use now (computed as
a dry build would), each stage's last build, and the roots every other live workspace
recorded (see :mod:`pipemake.roots`). Nothing younger than the grace period is removed: a
build on the same store may have written objects and not yet committed the entry naming
them.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .build import Builder
from .errors import StoreError, UsageError
from .events import Bus
from .lock import BuildLock
from .manifest import digests
from .scheduler import StageFailure
from .store import GRACE, NotAStore, ReadOnlyStore, Store
from .trust import is_digest

if TYPE_CHECKING:
    from .project import Project

__all__ = ["FORGET_AFTER", "gc", "needed", "parse_age", "parse_size", "verify"]

#: how long a workspace sharing the store may go unseen before its roots stop protecting
FORGET_AFTER = 30 * 86400.0

_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?)(i?b?)\s*", re.IGNORECASE)
_AGE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|m|min|h|d|w)?\s*", re.IGNORECASE)
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """Bytes from ``2G``, ``500M``, ``1.5GB``, ``64k`` or a plain number of bytes (powers
    of 1024, as ``du -h`` and ``ls -h`` print them); :class:`UsageError` otherwise."""
    m = _SIZE.fullmatch(text or "")
    if m is None:
        raise UsageError(f"--max-size: {text!r} is not a size; write e.g. 2G, 500M or 800000")
    unit = "kmgtp".find(m.group(2).lower()) + 1 if m.group(2) else 0
    return int(float(m.group(1)) * 1024**unit)


def parse_age(text: str, option: str = "--forget-after") -> float:
    """Seconds from ``30d``, ``12h``, ``90m``, ``2w``, ``45s`` or a plain number of
    seconds; :class:`UsageError` otherwise."""
    m = _AGE.fullmatch(text or "")
    if m is None:
        raise UsageError(f"{option}: {text!r} is not a duration; write e.g. 30d, 12h or 3600")
    return float(m.group(1)) * _AGE_UNITS[(m.group(2) or "").lower()]


def needed(project: Project) -> set[str]:
    """The keys this workspace needs now: what a build would compute for every stage and
    item, and each stage's last build."""
    p = project.pipeline
    builder = Builder(p, project.store, project.state, Bus(), dry=True, collect_keys=True)
    order = p.graph.topo_order()
    builder.prefetch(order)
    for stage in order:
        try:
            builder.begin(stage)
        except StageFailure:  # it would fail (an input missing): its key is unknown
            continue
    keep = set(builder.keys_seen)
    keep.update(k for k, _r, _d in project.state.builds.brief().values() if k)
    return keep


@dataclass
class _Plan:
    """What a gc removes: entries, objects (digest → size), and what eviction took."""

    drop: list[Any]
    objects: dict[str, int]
    stats: dict[str, os.stat_result]
    evicted_entries: int = 0
    evicted_objects: int = 0
    size_after: int = 0


def gc(
    project: Project,
    keep_days: float = 7.0,
    dry: bool = False,
    grace: float = GRACE,
    max_size: int | None = None,
    forget_after: float = FORGET_AFTER,
    lock_timeout: float | None = None,
    on_lock_wait: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Remove what no workspace sharing the store needs: entries that are neither the keys
    this workspace would use now, nor a stage's last build, nor in a live workspace's roots,
    nor younger than ``keep_days`` (so switching back to recent params still restores);
    then objects no kept entry names. Roots of workspaces unseen for ``forget_after``
    seconds, or whose pipeline file is gone, no longer count (and go once older than
    ``grace``).

    With ``max_size`` (bytes), entries are then evicted, least recently used first, those
    no live root needs before those one does, until the objects left fit: an evicted
    entry's objects go once no kept entry names them. Among the entries workspaces need,
    those of the workspace seen longest ago go first (this one is seen now), then the
    oldest entries.

    Nothing younger than ``grace`` seconds goes, whatever the other limits say. Waits for
    this workspace's build lock like a build (``lock_timeout``; ``on_lock_wait`` is told
    who holds it)."""
    store = project.store
    with BuildLock(project.workspace.dot / "lock", lock_timeout, on_lock_wait):
        keep = needed(project)
        p = project.pipeline
        own = (str(p.root), str(p.file))
        if dry:  # as the real run sees them: this workspace's record replaced by ``keep``
            roots = store.roots(grace, forget_after=forget_after, skip=own)
            roots.workspaces.append(os.path.relpath(p.root, store.path))
        else:
            store.write_roots(*own, keep, merge=False)
            roots = store.roots(grace, prune=True, forget_after=forget_after)
        protected = keep | roots.keys
        now = time.time()
        young = now - grace
        horizon = min(now - keep_days * 86400, young)
        last = store.last_used()
        drop = [k for k, t in last.items() if k not in protected and t < horizon]
        plan, damaged, scan = _plan(store, drop, young)
        if max_size is not None:
            seen = dict(roots.seen)
            seen.update(dict.fromkeys(keep, now))
            _evict(store, plan, last, protected, seen, young, max_size)
        stale = [t for t in scan.temporaries if t[2].st_mtime < young]
        removed = list(plan.objects)
        entries = len(plan.drop)
        if not dry:  # counted as removed by this run: another gc may have been first
            entries = store.delete_actions(plan.drop)
            removed = [d for d in plan.objects if store.remove_object(d, older_than=young)]
            for fan, name, _st in stale:
                store.remove_temporary(fan, name)
            for rel, _what in scan.strays:
                store.remove_stray(rel)
        freed = sum(plan.objects[d] for d in removed)
    return {"entries_removed": entries, "entries_kept": len(last) - len(plan.drop),
            "objects_removed": len(removed), "bytes_freed": freed, "dry_run": dry,
            "damaged_entries": damaged, "strays": [rel for rel, _w in scan.strays],
            "workspaces": len(roots.workspaces), "forgotten": len(roots.forgotten),
            "evicted_entries": plan.evicted_entries, "evicted_objects": plan.evicted_objects,
            "max_size": max_size, "bytes_after": plan.size_after}  # fmt: skip


def _plan(store: Store, drop: list[Any], young: float) -> tuple[_Plan, int, Any]:
    """The objects no kept entry names (and older than ``young``), the count of damaged
    rows, and the scan of the objects directory."""
    dropped = set(drop)
    referenced: set[str] = set()
    damaged = 0
    for key, entry, _problem in store.rows():
        if key in dropped:
            continue
        if entry is None:
            damaged += 1
        else:
            referenced.update(digests(entry))
    scan = store.scan()
    objects = {
        d: st.st_size
        for d, st in scan.objects
        if d not in referenced and max(st.st_ctime, st.st_mtime) < young
    }
    size_after = sum(st.st_size for d, st in scan.objects if d not in objects)
    plan = _Plan(list(drop), objects, dict(scan.objects), size_after=size_after)
    return plan, damaged, scan


def _evict(
    store: Store,
    plan: _Plan,
    last: dict[Any, float],
    protected: set[str],
    seen: dict[str, float],
    young: float,
    max_size: int,
) -> None:
    """Add to ``plan`` the entries (least recently used first, unprotected before
    protected) whose removal frees objects until what is left fits ``max_size``; an object
    younger than ``young`` never goes, and an entry that frees nothing stays."""
    if plan.size_after <= max_size:
        return
    stats = plan.stats
    dropped = set(plan.drop)
    named: dict[str, list[str]] = {}
    refs: dict[str, int] = {}
    for key, entry, _problem in store.rows():
        if key in dropped or entry is None or last.get(key, 0.0) >= young:
            if entry is not None and key not in dropped:
                for d in set(digests(entry)):
                    refs[d] = refs.get(d, 0) + 1  # young or damaged: its objects stay
            continue
        ds = list(set(digests(entry)))
        named[key] = ds
        for d in ds:
            refs[d] = refs.get(d, 0) + 1
    # what no live workspace needs first; then by when a workspace needing it was last
    # seen (this one: now); then by when the entry was last written
    order = sorted(named, key=lambda k: (k in protected, seen.get(k, 0.0), last.get(k, 0.0)))
    size = plan.size_after
    freed: set[str] = set()
    evicted: list[str] = []
    for key in order:
        if size <= max_size:
            break
        evicted.append(key)
        for d in named[key]:
            refs[d] -= 1
            st = stats.get(d)
            if refs[d] == 0 and st is not None and max(st.st_ctime, st.st_mtime) < young:
                freed.add(d)
                plan.objects[d] = st.st_size
                size -= st.st_size
    # an entry whose objects all stay is still whole: it stays too
    gone = [k for k in evicted if any(d in freed for d in named[k])]
    plan.drop += gone
    plan.evicted_entries, plan.evicted_objects = len(gone), len(freed)
    plan.size_after = size


def verify(project: Project, repair: bool = False) -> dict[str, Any]:
    """Check the store: every object against its hash (a corrupt one is removed), every
    entry's shape and objects, the roots records, and anything in the objects directory
    that is not an object (a link is named, never followed).

    With ``repair``, what is damaged goes: damaged rows, entries whose objects are missing,
    strays, damaged roots records, triggers, views, indexes and tables in the action cache
    that pipemake did not create, and an action cache SQLite cannot read or whose tables
    are defined otherwise (deleted: it is only a cache). Without it, an unreadable action
    cache is a :class:`StoreError` saying so. A store this user may not write (another
    user's) is checked as it is, read-only, with nothing removed (``read_only`` in the
    result); ``repair`` there is a :class:`pipemake.store.ReadOnlyStore` error.
    """
    store = project.store
    if repair or store.readonly or store.writable():
        return _verify(store, repair)
    mine = Store(store.path, readonly=True)
    try:
        return {**_verify(mine, False), "read_only": True}
    finally:
        mine.close()


def _verify(store: Store, repair: bool) -> dict[str, Any]:
    """:func:`verify` of ``store``."""
    reset = False
    store.allow_foreign = True  # a trigger, view or table planted there: named, not refused
    try:
        rows = list(store.rows())
    except (NotAStore, ReadOnlyStore):
        raise  # a folder of the user's, or an intact store: never reset
    except StoreError:
        if not repair:
            raise
        store.reset_actions()
        reset, rows = True, []
    foreign = [
        ("actions.db", f"{kind} {name!r}, which pipemake did not create")
        for kind, name in store.foreign
    ]
    if repair and store.foreign:
        store.drop_foreign()  # first: none of it fires on the repair's own writes
    scan = store.scan()
    corrupt = [d for d, _st in scan.objects if store.verify_object(d) is False]
    damaged = [(key, problem or "") for key, entry, problem in rows if entry is None]
    incomplete = [
        key
        for key, entry, _p in rows
        if entry is not None and not all(store.has_object(d) for d in digests(entry))
    ]
    roots = store.roots(GRACE)
    strays = list(scan.strays) + [(rel, "a damaged roots record") for rel in roots.damaged]
    strays += foreign
    if repair:
        store.delete_actions([key for key, _p in damaged] + incomplete)
        for rel, _what in scan.strays:
            store.remove_stray(rel)
        if roots.damaged:
            store.roots(0, prune=True)
    return {"corrupt": corrupt, "incomplete_entries": incomplete,
            "damaged_entries": [(k if is_digest(k) else repr(k), p) for k, p in damaged],
            "strays": strays, "reset": reset, "repaired": repair,
            "read_only": False, "path": str(store.path)}  # fmt: skip

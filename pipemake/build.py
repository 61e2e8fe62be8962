"""The wiring of one build: resolve a stage, compute its key, ask the rebuilder, restore or
hand tasks to the scheduler, and commit what they produced.

Commit order (DESIGN.md, "How a build flows"): the rule ran in staging → its outputs were
hashed and copied into the store by the worker → the action-cache entry is written (the
commit point) → only then are outputs moved into place and the stage's record updated. A
kill at any moment leaves the old state or a complete entry, never a half-written output.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .decide import (
    Decision,
    LastBuild,
    Reason,
    Trigger,
    Verdict,
    decide,
    lock_reasons,
    output_reasons,
    waiting_on,
)
from .errors import fsize_limit, os_failure
from .events import Bus
from .executors.base import Message, Task
from .foreach import ForeachRun, LostObjects
from .fshash import Hasher
from .items import items_digest, merge_outputs
from .model import Pipeline, Stage
from .ownfiles import plan_items, write_items
from .resolve import Planned, ResolvedStage, Resolver, Unknown
from .runs import MAX_AGAIN, BuildContext, StageRun
from .scheduler import StageFailure, WaitFor, cycle_text, needs_path
from .state import NEVER, WorkspaceState
from .store import Store, encode_entry
from .templates import find_refs
from .walk import BadPath
from .workspace import Workspace, manifest_of, remove_path

__all__ = ["Builder", "Planned"]


class Builder:
    """Implements the scheduler's StageHandler for one build, or a plan when ``dry``: resolves
    each stage (:mod:`.resolve`), asks the rebuilder (:func:`.decide.decide`), restores or
    hands tasks to the scheduler through a :class:`~.runs.StageRun` or
    :class:`~.foreach.ForeachRun`, and commits what they produced."""

    def __init__(
        self,
        pipeline: Pipeline,
        store: Store,
        state: WorkspaceState,
        bus: Bus,
        *,
        dry: bool = False,
        force: bool = False,
        force_stages: frozenset[str] = frozenset(),
        jobs: int = 1,
        retries: int | None = None,
        collect_keys: bool = False,
    ):
        self.p = pipeline
        self.store = store
        self.state = state
        self.bus = bus
        self.dry = dry
        self.force = force
        self.force_stages = force_stages
        self.jobs = jobs
        self.retries = retries
        #: whether the build is being stopped by a signal (set by whoever runs the build)
        self.stopping: Callable[[], bool] = lambda: False
        self.ws = Workspace(pipeline.root)
        self.hasher = Hasher(str(pipeline.root), state)
        self.results: dict[str, Planned] = {}
        self.decisions: dict[str, Decision] = {}
        self.resolver = Resolver(pipeline, self.hasher, store, state, self.results)
        self.resolver.warn = lambda sid, text: bus.emit("log", sid, level="warning", text=text)
        self.ctx = BuildContext(
            pipeline.root,
            store,
            state,
            self.ws,
            self.hasher,
            bus,
            jobs,
            retries,
            self.later,
            lambda: self.stopping(),
        )
        self._running: dict[str, StageRun] = {}
        self._brief = state.builds.brief()
        self._prefetched: dict[str, dict[str, Any]] = {}
        #: ``pipemake.lock``'s section per stage (read when first needed)
        self._locked: dict[str, Locked] | None = None
        #: stages found up to date by their outputs matching ``pipemake.lock`` (their
        #: entries are made from the workspace and written when the stage begins)
        self._adopted: set[str] = set()
        #: foreach stages found up to date from their items (no entry of their own): they
        #: are put together as a restore is, which writes their entry (a new key for the
        #: store's roots), and say up to date
        self.from_items: set[str] = set()
        #: stages whose outputs came from a cache entry no key verified: adopted from a lock
        #: section that says so (no key now), or not adopted for it (a key now)
        self._unverified: set[str] = set()
        #: every stage, item and map key this build or plan computed (what ``cache gc``
        #: keeps), item keys only when ``collect_keys`` is set
        self.keys_seen: set[str] = set()
        self.collect_keys = collect_keys
        self._full: dict[str, dict[str, Any] | None] = {}
        self._placed: dict[str, tuple[str, str]] | None = None
        #: bookkeeping no later decision of this build reads, put off until tasks run
        self._later: list[tuple[Callable[[], None], str]] = []
        #: a plan's stages planned ahead of their turn (a stage found it reads their
        #: outputs through a computed value), and those being planned now
        self._ahead: set[str] = set()
        self._planning: set[str] = set()
        #: in a plan, the stages each stage found it reads that way (for a cycle)
        self._found: dict[str, set[str]] = {}

    def resolve(self, stage: Stage) -> ResolvedStage:
        """The stage resolved against what this build knows so far (see :mod:`.resolve`)."""
        return self.resolver.resolve(stage)

    # deciding ---------------------------------------------------------------------------
    def decide(self, stage: Stage) -> tuple[Decision, ResolvedStage | None, dict[str, Any] | None]:
        """The verdict for a stage given what is known now, without changing anything: the
        stage resolved, its entry and outputs read, and :func:`.decide.decide` asked."""
        self._unverified.discard(stage.id)
        self.from_items.discard(stage.id)
        try:
            rs = self.resolve(stage)
        except Unknown as exc:
            forced = self.force or stage.id in self.force_stages
            if not forced and not self.last(stage.id).built and stage.id not in self._lock():
                # never built here nor locked: it runs, whatever its upstream makes (as a
                # stage whose input paths wait on an upstream stage is said to)
                return Decision(Verdict.RUN, [_NEVER]), None, None
            told = self.decisions.get(exc.stage)
            restored = told is not None and told.verdict is Verdict.RESTORE
            return waiting_on(exc.stage, restored), None, None
        forced = self.force or stage.id in self.force_stages
        if rs.unknown and not forced and stage.id in self._lock() and not self.last(stage.id).built:
            # never built here, and locked: once the upstream has run, its outputs may be
            # the locked ones
            first = sorted(rs.unknown)[0]
            told = self.decisions.get(first)
            return waiting_on(first, told is not None and told.verdict is Verdict.RESTORE), rs, None
        entry = outputs = None
        if not rs.unknown and not forced:
            if rs.key is not None:
                entry = self._prefetched.pop(rs.key, None) or self.store.get_action(rs.key)
            if entry is not None:
                outputs = self._check_outputs(rs, entry)
            # no entry, or the workspace is not the entry's: the lock's outputs, if it holds
            # them, win (not over a mode the entry records: the lock holds only bytes)
            if entry is None or (outputs and set(outputs.values()) - {None, "mode changed"}):
                adopted = self._as_locked(stage, rs)
                if adopted is not None:
                    self._adopted.add(stage.id)
                    return Decision(Verdict.UP_TO_DATE, [_AS_LOCKED]), rs, adopted
            if entry is None and rs.foreach:
                self.resolver.read_cached_items(stage, rs)
                self._verified_items(stage, rs)
        decision = decide(
            rs, entry, outputs, self.last(stage.id), forced=forced, upstream=self.decisions,
            templates=stage.templates,
        )  # fmt: skip
        if decision.verdict is Verdict.RESTORE and entry is None:
            entry = self._assembled_in_place(stage, rs)
            if entry is not None:
                why = _items_in_place(len(rs.items))
                decision = Decision(Verdict.UP_TO_DATE, [why], decision.items)
        if decision.verdict is Verdict.RUN and not self.last(stage.id).built:
            decision.reasons = self._never_built_here(stage, rs, decision.reasons)
        if decision.verdict is Verdict.RUN and stage.id in self._unverified:
            others = [r for r in decision.reasons if r.trigger is not Trigger.NO_ENTRY]
            decision = Decision(Verdict.RUN, [_UNVERIFIED, *others], decision.items)
        remote = self.store.remote
        if decision.verdict is Verdict.RESTORE and rs.key in getattr(remote, "trusted", ()):
            decision.reasons = [_from_remote(r) for r in decision.reasons]
        return decision, rs, entry if decision.verdict in _HAS_ENTRY else None

    def _never_built_here(
        self, stage: Stage, rs: ResolvedStage, reasons: list[Reason]
    ) -> list[Reason]:
        """The reasons of a stage never built in this workspace that runs, where
        ``pipemake.lock`` records it with another key (a clone of a project built by another
        pipemake, or from other inputs or params): what differs from the lock instead of
        "never built"."""
        locked = self._lock().get(stage.id)
        if locked is None or rs.key in (None, locked.key) or _NEVER not in reasons:
            return reasons
        digest = None
        if rs.foreach:
            digest = items_digest({it.relpath: it.hash for it in rs.items})
        instead = lock_reasons(locked.built_from, rs.doc, digest)
        at = reasons.index(_NEVER)
        return [*reasons[:at], *instead, *reasons[at + 1 :]]

    def _assembled_in_place(self, stage: Stage, rs: ResolvedStage) -> dict[str, Any] | None:
        """For a foreach stage to be put together from its items in the store (no entry of
        its own for its key): when its outputs in the workspace are already what those
        items record, so nothing would be written, the stage's entry put together from them
        (it is up to date, not restored); else None."""
        cached = rs.cached
        try:
            merged = merge_outputs(
                {it.relpath: cached[it.relpath].get("outputs") or {} for it in rs.items},
                rs.ports.outputs,
            )
        except (KeyError, ValueError):
            return None
        for name, rel in rs.ports.outputs.items():
            if self.ws.check(merged[name], rel, self.hasher) is not None:
                return None
        values = stage.rule.gather(
            rs.ports.params, {it.relpath: cached[it.relpath].get("values") or {} for it in rs.items}
        )
        self.from_items.add(stage.id)
        return {"stage": stage.id, "outputs": merged, "values": values, "metrics": {}}

    def _restored_from(self, keys: list[str | None]) -> str:
        """Where the entries of ``keys`` (a stage's, or its items') came from in this
        build: ``store`` (the local one), ``remote`` (fetched from the remote store just
        now), or ``store and remote``."""
        fetched = getattr(self.store.remote, "trusted", ())
        known = [k for k in keys if k]
        remote = sum(1 for k in known if k in fetched)
        if not remote:
            return "store"
        return "remote" if remote == len(known) else "store and remote"

    def _verified_items(self, stage: Stage, rs: ResolvedStage) -> None:
        """With a key, keep of a foreach stage's cached items only those whose entries the
        key verifies, when its last build took items from the cache without one: the item
        index (the workspace's own note of its last items) then holds entries nobody
        verified, and an entry assembled from them would be signed."""
        if not self.store.secret or not rs.cached:
            return
        if not (self._record(stage.id) or {}).get("unverified"):
            return
        keys = {rel: rs.item_keys[rel] for rel in rs.cached if rel in rs.item_keys}
        good = self.store.get_actions(sorted(set(keys.values())))
        rs.cached = {rel: good[k] for rel, k in keys.items() if k in good}

    def _against_lock(
        self, stage_id: str, key: str | None, entry: dict[str, Any], done: str = "restored"
    ) -> None:
        """Say when an entry about to be used (``done``: restored, or used where the
        workspace already holds its outputs) names other output hashes or computed values
        than ``pipemake.lock`` (the project's own, committed file) has for the same key: the
        store may have been tampered with (a shared cache), or the stage is not
        deterministic. The entry is used all the same; the message says how to run the
        stage instead."""
        locked = self._lock().get(stage_id)
        if locked is None or key is None or locked.key != key:
            return
        outputs = entry.get("outputs", {})
        differ = sorted(
            name for name, want in locked.hashes.items()
            if isinstance(outputs.get(name), dict) and outputs[name].get("hash") != want
        )  # fmt: skip
        if locked.values is not None and entry.get("values", {}) != locked.values:
            differ.append("its computed values")
        if differ:
            self.bus.emit("log", stage_id, level="warning", text=(
                f"warning: the store's outputs for this key ({', '.join(differ)}) are not the "
                "ones pipemake.lock records for the same key: the store may have been "
                f"tampered with, or the stage is not deterministic; {done} all the same "
                f"(`pipemake build --force-stage {stage_id}` runs it instead)"))  # fmt: skip

    def _lock(self) -> dict[str, Locked]:
        if self._locked is None:
            self._locked = _lock_sections(self.p)
        return self._locked

    def _as_locked(self, stage: Stage, rs: ResolvedStage) -> dict[str, Any] | None:
        """For a stage whose key has no entry in the store, or one naming other outputs than
        the workspace has: an entry made from its outputs in the workspace when they are,
        byte for byte, what ``pipemake.lock`` (the project's own, committed file) records
        for this very key, or None. (A stage that is not deterministic, whose store copy
        differs from the committed one, then keeps the committed one, as ``dvc.lock`` wins.)

        The habit of ``dvc.lock``, and of Make's timestamps: a checkout whose outputs are
        there and match the lock (the store deleted or never pulled, outputs kept in Git or
        on a shared disk) is up to date, instead of running every stage again. The outputs'
        files then go into the store as a run's would. Computed values come from the lock;
        a lock without them (an older one) adopts only a stage whose values no stage uses."""
        locked = self._lock().get(stage.id)
        outputs = rs.ports.outputs
        if locked is None or rs.key is None or locked.key != rs.key or not outputs:
            return None
        if locked.paths != outputs or set(locked.hashes) != set(outputs):
            return None
        values = locked.values
        used = values_used(self.p, stage)
        if values is None:
            if used:
                return None
            values = {}
        elif any(name not in values for name in used):
            return None  # a later stage needs one the lock lacks: a run computes it
        manifests = {}
        for name, rel in outputs.items():
            try:
                if os.path.islink(self.p.root / rel):
                    return None  # pipemake keeps real files at an output path
                info = self.hasher.info(rel)
            except (BadPath, OSError):
                return None
            want = rs.ports.output_kinds.get(name)
            if info.kind == "missing" or info.hash != locked.hashes[name]:
                return None
            if want in ("file", "dir") and info.kind != want:
                return None
            manifests[name] = manifest_of(info)
        last = self._record(stage.id) or {}
        if last.get("unverified") and last.get("key") == rs.key:  # put here unverified
            self._unverified.add(stage.id)
            if self.store.secret:  # never signed on the word of an entry nobody verified
                return None
        metrics = {"adopted": True}
        return {"stage": stage.id, "outputs": manifests, "values": values, "metrics": metrics,
                "created": time.time()}  # fmt: skip

    def store_outputs(self, rs: ResolvedStage, entry: dict[str, Any]) -> None:
        """Copy every file of the workspace outputs ``entry`` names into the store."""
        for name, rel in rs.ports.outputs.items():
            manifest = entry["outputs"][name]
            full = self.p.root / rel
            if manifest["kind"] == "file":
                self.store.put_file(str(full), manifest["hash"])
            else:
                for entry_rel, digest, _size, _mode in manifest.get("entries") or []:
                    self.store.put_file(str(full / entry_rel), digest)

    def _check_outputs(
        self, rs: ResolvedStage, entry: dict[str, Any]
    ) -> dict[str, str | None] | None:
        """Each workspace output checked against the entry's manifest (None: the entry lacks
        one of the stage's outputs)."""
        manifests = entry.get("outputs", {})
        if any(name not in manifests for name in rs.ports.outputs):
            return None
        return {
            rel: self.ws.check(manifests[name], rel, self.hasher)
            for name, rel in rs.ports.outputs.items()
        }

    def last(self, stage_id: str) -> LastBuild:
        """The stage's last-build record as the rebuilder reads it (the whole record and
        the item hashes only when a reason needs them)."""
        brief = self._brief.get(stage_id)
        if brief is None:
            return LastBuild(item_hashes=lambda: self.state.builds.item_hashes(stage_id))
        return LastBuild(
            True, brief.key, brief.result, lambda: self._record(stage_id),
            lambda: self.state.builds.item_hashes(stage_id),
        )  # fmt: skip

    def prefetch(self, stages: list[str]) -> None:
        """Read the entries of these stages' last keys in a few queries: on a no-op build
        they are the entries the decisions need."""
        keys = [k for s in stages if (k := self._brief.get(s, NEVER).key)]
        self._prefetched = self.store.get_actions(keys)

    def _record(self, stage_id: str) -> dict[str, Any] | None:
        """The stage's whole last-build record, read when a reason or a failure needs it."""
        if stage_id not in self._full:
            self._full[stage_id] = (
                self.state.builds.record(stage_id) if stage_id in self._brief else None
            )
        return self._full[stage_id]

    # the StageHandler -------------------------------------------------------------------
    def begin(self, stage_id: str) -> list[Task]:
        stage = self.p.stages[stage_id]
        if stage_id in self._ahead:  # a plan's stage planned already (see _found_needs)
            self._ahead.discard(stage_id)
            return []
        self._planning.add(stage_id)
        try:
            decision, rs, entry = self.decide(stage)
            if rs is not None and self._found_needs(stage, rs):
                decision, rs, entry = self.decide(stage)  # a plan: with what it reads known
        finally:
            self._planning.discard(stage_id)
        self.decisions[stage_id] = decision
        if rs is not None:
            self._note_keys(stage, rs)
        if self.dry:
            self.results[stage_id] = Planned(
                entry["outputs"] if entry else None,
                entry.get("values", {}) if entry else None,
                rs.key if rs else None,
            )
            return []
        assert rs is not None
        if decision.verdict is Verdict.UP_TO_DATE and stage_id in self.from_items:
            return self._start(stage, rs, decision)
        if decision.verdict is Verdict.UP_TO_DATE:
            assert entry is not None
            if stage_id in self._adopted:  # the workspace's outputs, as the lock records them
                try:
                    self.store_outputs(rs, entry)
                except OSError as exc:
                    raise StageFailure(f"cannot copy its outputs into the store: {exc}") from None
                items: dict[str, Any] = {}  # a foreach stage's items, as `commit` gives them
                notes = plan_items(self.store, stage, rs, entry, items, brief=True)
                self.store.put_action(rs.key, entry)  # type: ignore[arg-type]
                write_items(self.store, self.state, stage, rs, items)
                if notes:
                    self.bus.emit("log", stage_id, level="info", text="; ".join(notes))
                self._done(stage, rs, entry, ran=False, unverified=stage_id in self._unverified)
                why = f"{_AS_LOCKED}; copied into the store"
                self.bus.emit("stage_skipped", stage_id, reason="up to date", detail=why)
                return []
            self._against_lock(stage_id, rs.key, entry, done="used")
            # the outputs were already here: as they came, unless a key vouches for them now
            self._done(stage, rs, entry, ran=False, unverified=False if self.store.secret else None)
            self.bus.emit("stage_skipped", stage_id, reason="up to date")
            return []
        check_lost = False
        if decision.verdict is Verdict.RESTORE and entry is not None:  # (else from items)
            self._against_lock(stage_id, rs.key, entry)
            try:
                restored = self._restore(stage, rs, entry)
            except OSError as exc:
                raise StageFailure(_placing_failed(exc, rs.ports.outputs.values())) from None
            if restored:
                source = self._restored_from([rs.key])
                self._done(
                    stage, rs, entry, ran=False, restored=True,
                    unverified=not self.store.secret, source=source,
                )  # fmt: skip
                self.bus.emit(
                    "stage_restored", stage_id, reasons=[str(r) for r in decision.reasons],
                    source=source,
                )  # fmt: skip
                return []
            self.bus.emit(
                "log",
                stage_id,
                level="warning",
                text="the store's copy is missing or corrupt; running the stage instead",
            )
            decision = Decision(
                Verdict.RUN, [Reason(Trigger.STORE_CORRUPT, "store object missing or corrupt")]
            )
            self.decisions[stage_id] = decision
            if rs.foreach:
                # rerun the items whose objects are gone (a corrupt one was removed just now)
                self.resolver.read_cached_items(stage, rs)
                check_lost = True
        if self.stopping():  # Ctrl-C while deciding (a long fetch, say): nothing starts
            raise StageFailure("stopped by a signal before it started")
        return self._start(stage, rs, decision, check_lost)

    def _found_needs(self, stage: Stage, rs: ResolvedStage) -> bool:
        """For a stage that reads another stage's output through a computed value (a path
        inside it; no edge of the graph says so) not known yet: in a build, raise
        :class:`WaitFor` so the scheduler begins it again once that stage is done (its key
        then holds that output's content, as for a declared input). In a plan, plan that
        stage and what it needs first, and say whether it did (then decide again); one that
        needs this stage first (a cycle) fails it, naming both, as the build would."""
        found = rs.unknown - set(stage.deps)
        if not found:
            return False
        reads = self._reads_of(stage, rs, found)
        if not self.dry:
            raise WaitFor(reads)
        self._found.setdefault(stage.id, set()).update(found)
        for dep in sorted(found):
            back = needs_path(self.p.graph.deps, self._found, dep, stage.id)
            if back is not None:
                raise StageFailure(cycle_text(stage.id, reads[dep], back))
        todo = self.p.graph.ancestors(found) - self.decisions.keys() - self._planning
        for other in self.p.graph.topo_order(todo):
            try:
                self.begin(other)
            except StageFailure:  # the plan says so in its turn
                continue
            self._ahead.add(other)
        return bool(todo)

    def _reads_of(self, stage: Stage, rs: ResolvedStage, found: set[str]) -> dict[str, str]:
        """What ``stage`` reads of each stage in ``found`` (their outputs not known yet),
        in words: which input, the value it came from, which output it lies in."""
        values = sorted({str(r) for r in find_refs(stage.config)
                         if r.scope in self.p.stages
                         and r.name not in self.p.stages[r.scope].ports.outputs})  # fmt: skip
        came = f" (from {', '.join(values)})" if values else ""
        reads: dict[str, str] = {}
        for name, value in sorted(rs.ports.inputs.items()):
            for path in value if isinstance(value, list) else [value]:
                owner = self.p.output_owner(path) if isinstance(path, str) else None
                if owner is None or owner[0] not in found or owner[0] in reads:
                    continue
                out = self.p.stages[owner[0]].ports.outputs[owner[1]]
                where = "is" if path == out else "lies inside"
                reads[owner[0]] = (
                    f"its input {name} is {path}{came}, which {where} stage {owner[0]}'s "
                    f"output {out}"
                )
        for dep in sorted(found - reads.keys()):
            reads[dep] = f"it reads an output of stage {dep}{came}"
        return reads

    def _note_keys(self, stage: Stage, rs: ResolvedStage) -> None:
        """What deciding learnt that later builds reuse: the keys (for ``cache gc``) and a
        foreach stage's key for its input tree (written now that it is decided)."""
        if rs.key is not None:
            self.keys_seen.add(rs.key)
        if self.collect_keys and rs.foreach and not rs.unknown:
            self.keys_seen.update(rs.item_keys.values())
        elif (listed := rs.listed_item_keys()) is not None:  # the store's roots keep them too
            self.keys_seen.update(listed.values())
        if rs.remember is not None:
            self.state.builds.set_foreach_key(stage.id, *rs.remember)

    def _restore(self, stage: Stage, rs: ResolvedStage, entry: dict[str, Any]) -> bool:
        for name, rel in rs.ports.outputs.items():
            manifest = entry["outputs"][name]
            if self.ws.check(manifest, rel, self.hasher) is None:
                continue
            if manifest["kind"] == "dir":
                if not self.ws.sync_dir(manifest, rel, self.store, self.hasher):
                    return False
            elif not self.ws.restore(manifest, rel, self.store, stage.id):
                return False
        return True

    def _start(
        self, stage: Stage, rs: ResolvedStage, decision: Decision, check_lost: bool = False
    ) -> list[Task]:
        staging = self.ws.staging(stage.id)
        logs = self.ws.dot / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{stage.id}.log"
        log_path.write_text("")
        now = time.time()
        waiting = {"reasons": [str(r) for r in decision.reasons], "items": decision.items}
        guard = StageRun.guard_of(rs, self.p.output_owner)
        if stage.foreach is not None:
            forced = self.force or stage.id in self.force_stages
            run = ForeachRun(
                rs, staging, str(log_path), now, now, guard, waiting,
                forced=forced, cached=dict(rs.cached),
            )  # fmt: skip
            self._running[stage.id] = run
            return run.begin(self.ctx, stage, check_lost)
        single = StageRun(rs, staging, str(log_path), now, now, guard, waiting)
        self._running[stage.id] = single
        single.outputs = single.staged_outputs(self.p.root)
        return [self._stage_task(stage, single, stage.id)]

    def _stage_task(self, stage: Stage, run: StageRun, task_id: str) -> Task:
        """The one task of a stage without ``foreach``."""
        task = run.task(self.ctx, stage, task_id, outputs=run.outputs)
        upstream = getattr(stage.rule, "upstream_param", None)
        if upstream:  # a rule that wants what its upstream stages made (`custom`), unkeyed
            task.params = {**task.params, upstream: self._upstream(stage)}
        return task

    def _upstream(self, stage: Stage) -> dict[str, dict[str, Any]]:
        """Each upstream stage's outputs (absolute paths) and computed values."""
        made: dict[str, dict[str, Any]] = {}
        for dep in stage.deps:
            up, planned = self.p.stages.get(dep), self.results.get(dep)
            if up is None or planned is None:
                continue
            values = made[dep] = dict(planned.values or {})
            for name, out in up.rule.path_values.items():  # relative to the output: absolute
                base, got = self.p.root / up.ports.outputs[out], values.get(name)
                if isinstance(got, list) and all(isinstance(v, str) for v in got):
                    values[name] = [str(base / v) for v in got]
                elif isinstance(got, str):
                    values[name] = str(base / got)
            values.update((n, str(self.p.root / o)) for n, o in up.ports.outputs.items())
        return made

    def task_started(self, stage_id: str, task: Task) -> None:
        run = self._running.get(stage_id)
        if run is not None:
            run.running_now(self.bus, stage_id)
            run.attempt_started(task)

    def on_message(self, stage_id: str, message: Message) -> list[Task]:
        run = self._running[stage_id]
        foreach = isinstance(run, ForeachRun)
        if foreach and message.kind in ("result", "error"):
            run.task_ended(message.task)  # type: ignore[attr-defined]
        if message.kind == "progress":
            if not foreach:
                done, total = message.data
                self.bus.emit("progress", stage_id, done=done, total=total)
        elif message.kind == "log":
            level, text = message.data
            self.bus.emit("log", stage_id, level=level, text=text)
        elif isinstance(run, ForeachRun) and not run.reduce:
            try:
                return run.on_message(self.ctx, self.p.stages[stage_id], message)
            except (OSError, sqlite3.OperationalError) as exc:  # items not committed: failed
                clear = os_failure(exc, self.store.path / "actions.db")
                if clear is None or message.kind != "result":
                    raise
                run.fail_unrecorded(self.ctx, stage_id, list(message.data["items"]), str(clear))
                return []
        elif message.kind == "result":
            moved = run.moved_inputs(self.hasher)
            if moved:
                return self._again(self.p.stages[stage_id], run, moved)
            run.result = message.data
        elif message.kind == "error":
            run.error = list(message.data[:2])  # text, traceback (not how it ended)
        return []

    def _again(self, stage: Stage, run: StageRun, moved: list[str]) -> list[Task]:
        """Run a stage again because its inputs ``moved`` while it ran: nothing of that run
        is committed. After three such runs the stage fails, saying so."""
        run.again = n = run.again + 1
        what = ", ".join(moved[:3]) + (f" and {len(moved) - 3} more" if len(moved) > 3 else "")
        made = [(path, o) for path in moved if (o := self.p.output_owner(path)) is not None]
        if made:  # a stage's output: its key stays its manifest's, running again is no cure
            path, (owner, _, _) = made[0]
            run.error = [
                f"input {path} (an output of stage {owner!r}) changed while the stage ran; "
                f"nothing was committed: build again (it puts that output back first)",
                None,
            ]
            return []
        if n > MAX_AGAIN:
            run.error = [
                f"input {what} kept changing while the stage ran ({n} runs); nothing was "
                "committed: build again once it stays the same",
                None,
            ]
            return []
        self.bus.emit(
            "log", stage.id, level="warning",
            text=f"input {what} changed while the stage ran; nothing of that run is kept, "
            "running it again with the new content",
        )  # fmt: skip
        try:
            rs = self.resolve(stage)
        except (Unknown, StageFailure) as exc:
            run.error = [f"input {what} changed while the stage ran: {exc}", None]
            return []
        remove_path(run.staging)
        run.rs, run.staging = rs, self.ws.staging(stage.id)
        run.guard = StageRun.guard_of(rs, self.p.output_owner)
        run.outputs = run.staged_outputs(self.p.root)
        if rs.key is not None:
            self.keys_seen.add(rs.key)
        return [self._stage_task(stage, run, f"{stage.id}.again{n}")]

    def accept(self, stage: Stage, sk: ResolvedStage, entry: dict[str, Any]) -> None:
        """Commit ``entry`` (outputs already in the store) as the stage's build for its key,
        as a run would: ``pipemake commit`` accepts the workspace's outputs this way."""
        self.store.put_action(sk.key, entry)  # type: ignore[arg-type]
        self._done(stage, sk, entry, ran=True)

    def last_result(self, stage_id: str) -> str | None:
        """How the stage's last build ended (``ok``, ``failed``, …), None if never built."""
        brief = self._brief.get(stage_id)
        return brief.result if brief else None

    def later(self, work: Callable[[], None], stage: str = "") -> None:
        """Put off writing what only later builds read (an item index, a stage's store
        entry) until the scheduler waits on running tasks or finishes: the stages waiting on
        this one start first. Losing it (the process killed, the disk full) costs a later
        build a little time, never a wrong answer."""
        self._later.append((work, stage))

    def idle(self) -> None:
        while self._later:
            work, stage = self._later.pop(0)
            try:
                work()
            except (OSError, sqlite3.OperationalError) as exc:  # only what later builds reuse
                self.bus.emit(
                    "log", stage, level="warning",
                    text=f"could not save what the next build reuses ({exc}); it will check "
                    "again instead",
                )  # fmt: skip
        if self.state.stats.trees_pending():  # big rows: encoded and written now, not at the end
            self.state.flush()

    def complete(self, stage_id: str) -> list[Task]:
        stage = self.p.stages[stage_id]
        run = self._running.pop(stage_id, None)
        if run is None:
            return []
        more: list[Task] = []
        foreach = run if isinstance(run, ForeachRun) else None
        # every item of a foreach stage was in the store: it is put together, not run
        none_ran = foreach is not None and foreach.none_ran()
        if not none_ran:
            run.running_now(self.bus, stage_id)
        try:
            if foreach is not None and (foreach.failures or foreach.not_run):
                text = foreach.failure_text() + _staging_note(foreach.failure_text(), run, self.p)
                self._failed(stage, run, text)
                raise StageFailure(text)
            try:
                if foreach is not None and not foreach.reduce:
                    entry = foreach.complete(self.ctx, stage)
                else:
                    entry = self._commit_run(stage, run)
                    if foreach is not None and foreach.mapped is not None:
                        # a map-reduce stage's items, said as every foreach stage's are
                        entry["metrics"]["items"] = len(foreach.mapped)
            except LostObjects:
                assert foreach is not None
                more = foreach.rerun_lost(self.ctx, stage) if foreach.lost < 3 else []
                if not more:
                    raise
                if none_ran and foreach.waiting is not None:  # a restore that now runs items
                    lost = Reason(Trigger.STORE_CORRUPT, "store object missing or corrupt")
                    self.decisions[stage_id] = Decision(
                        Verdict.RUN, [lost], foreach.waiting["items"]
                    )
                    foreach.waiting["reasons"] = [str(lost)]
                self._running[stage_id] = run
                return more
            except StageFailure as exc:  # items that collide: the record says it failed
                with contextlib.suppress(OSError, sqlite3.OperationalError):
                    self._failed(stage, run, str(exc))
                raise
            except (OSError, sqlite3.OperationalError) as exc:
                clear = os_failure(exc, self.store.path / "actions.db")
                if isinstance(exc, OSError) and exc.errno in (errno.EEXIST, errno.ENOTDIR):
                    text = _placing_failed(exc, run.rs.ports.outputs.values())
                elif clear is not None:
                    text = str(clear)
                elif isinstance(exc, OSError):
                    text = _placing_failed(exc, run.rs.ports.outputs.values())
                else:
                    raise
                with contextlib.suppress(OSError, sqlite3.OperationalError):
                    self._failed(stage, run, text)  # the record may not fit on a full disk
                raise StageFailure(text) from None
            if foreach is not None and none_ran and run.waiting is not None and not foreach.wrote:
                self._in_place(stage, run, entry)
                return []
            if none_ran and run.waiting is not None:  # said as a restore (and counted as one)
                told = self.decisions[stage_id]
                if told.verdict is Verdict.UP_TO_DATE:  # its outputs changed since deciding
                    told = Decision(
                        Verdict.RESTORE,
                        output_reasons(
                            [(rel, "changed") for rel in run.rs.ports.outputs.values()], False
                        ),
                    )
                told = self.decisions[stage_id] = Decision(
                    Verdict.RESTORE, told.reasons, run.waiting["items"]
                )
                assert foreach is not None
                source = self._restored_from([run.rs.item_keys.get(r) for r in foreach.cached])
                self._done(
                    stage, run.rs, entry, ran=False, restored=True,
                    unverified=not self.store.secret, source=source,
                )  # fmt: skip
                where = {"remote": "the remote", "store and remote": "the store and the remote"}
                reasons = [str(r).replace(" the store ", f" {where[source]} ")
                           if source in where else str(r) for r in told.reasons]  # fmt: skip
                self.bus.emit(
                    "stage_restored", stage_id, reasons=reasons,
                    items=entry["metrics"]["items"], source=source,
                )  # fmt: skip
                return []
            # items (or map results) taken from the cache without a key to verify them
            mixed = foreach is not None and bool(foreach.cached) and not self.store.secret
            self._done(stage, run.rs, entry, ran=True, unverified=mixed)
            self.bus.emit("stage_finished", stage_id, **entry["metrics"])
            return []
        finally:
            if not more:
                remove_path(run.staging)

    def _in_place(self, stage: Stage, run: StageRun, entry: dict[str, Any]) -> None:
        """A foreach stage put together from its items in the store whose outputs were
        already what those items record (its own entry or record lost, or keyed otherwise):
        nothing was written, so it is up to date with its outputs in place, not restored."""
        why = _items_in_place(entry["metrics"]["items"])
        assert run.waiting is not None
        self.decisions[stage.id] = Decision(Verdict.UP_TO_DATE, [why], run.waiting["items"])
        if self._brief.get(stage.id, NEVER).key != run.rs.key:  # no run of its own to time
            entry = dict(entry, metrics={**entry["metrics"], "duration": None})
        self._done(stage, run.rs, entry, ran=False, unverified=False if self.store.secret else None)
        self.bus.emit("stage_skipped", stage.id, reason="up to date", detail=why.detail)

    def _commit_run(self, stage: Stage, run: StageRun) -> dict[str, Any]:
        if run.error is not None or run.result is None:
            text, tb = run.error or ["the task ended without a result", None]
            text += _staging_note(f"{text}\n{tb or ''}", run, self.p)
            self._failed(stage, run, text)
            raise StageFailure(text + (f"\n{tb}" if tb else ""))
        result = run.result
        metrics = dict(result.get("metrics", {}))
        metrics["duration"] = run.ran_for()
        metrics["queued"] = run.queued()
        metrics.update(run.retrying())
        entry = {
            "stage": stage.id,
            "outputs": result["outputs"],
            "values": result.get("values", {}),
            "metrics": metrics,
            "created": time.time(),
        }
        self.store.put_action(run.rs.key, entry)
        for name, rel in run.rs.ports.outputs.items():
            self.ws.place(self.p.root / run.outputs[name], rel)
        return entry

    def _failed(self, stage: Stage, run: StageRun, text: str) -> None:
        record = dict(self._record(stage.id) or {})
        stopped = self.stopping()
        record.update(
            failed_doc=run.rs.doc,
            failed_parts=run.rs.upstream_parts,
            result="interrupted" if stopped else "failed",
            error="stopped by a signal before it finished" if stopped else text[:2000],
            finished=time.time(),
            duration=run.ran_for(),
        )
        record.pop("failed_templates", None)
        if stage.templates:  # beside its key document: what a reason says changed since
            record["failed_templates"] = stage.templates
        record.pop("attempts", None)
        record.pop("retry_wait", None)
        record.update(run.retrying())
        self.state.builds.set_record(stage.id, record)

    def _done(
        self,
        stage: Stage,
        rs: ResolvedStage,
        entry: dict[str, Any],
        ran: bool,
        restored: bool = False,
        unverified: bool | None = False,
        source: str = "store",
    ) -> None:
        """Record a stage as built. ``restored``: its outputs were just restored from the
        store (the record then says restored, even where the last one says it ran here).
        ``unverified``: whether its outputs came from a cache entry no
        ``PIPEMAKE_CACHE_KEY`` verified (None: as the last record or the lock says, for
        outputs that were already in place), which ``pipemake.lock`` then says.
        ``source``: where restored outputs came from (see :meth:`_restored_from`)."""
        values = _canonical_values(entry.get("values", {}))
        self.results[stage.id] = Planned(entry["outputs"], values, rs.key)
        last = self._brief.get(stage.id, NEVER)
        # a restore where the last record says it ran here: the record says restored now
        old_rec = (self._record(stage.id) or {}) if restored else {}
        relabel = restored and (
            not old_rec.get("restored") or old_rec.get("restored_from", "store") != source
        )
        same = last.key == rs.key and last.result == "ok" and not relabel
        if unverified is None and not same:
            old = self._record(stage.id) if last.key == rs.key else None
            unverified = bool(old and old.get("unverified"))
        elif unverified is not None and same and not ran:  # rewritten when the mark changes
            same = bool((self._record(stage.id) or {}).get("unverified")) == unverified
        if ran or not same:
            metrics = entry.get("metrics", {})
            took = metrics.get("duration", last.duration)
            if relabel and last.key == rs.key and last.duration is not None:
                took = last.duration  # its run's (a foreach entry's may be its assembly's)
            record = {
                "key": rs.key, "doc": rs.doc, "result": "ok", "restored": restored,
                "duration": took, "finished": time.time(), "upstream_parts": rs.upstream_parts,
            }  # fmt: skip
            if stage.templates:  # the params and variables it used: beside the key, not in it
                record["templates"] = stage.templates
            if not ran and not restored:  # up to date: its outputs were already in place
                record["in_place"] = True
            if metrics.get("committed"):  # `pipemake commit`: accepted, nothing ran
                record["committed"] = True
            if metrics.get("adopted"):  # outputs as pipemake.lock records: nothing ran
                record["adopted"] = True
            if entry.get("own"):  # files no item wrote, kept when items rerun (ownfiles)
                record["own"] = True
            if unverified:
                record["unverified"] = True
            if restored and source != "store":
                record["restored_from"] = source
            if ran:
                record.update({k: metrics[k] for k in ("attempts", "retry_wait") if k in metrics})
            self.state.builds.set_record(stage.id, record)
            self._full[stage.id] = record
        if self._placed is None:
            self._placed = self.state.builds.placed()
        new = [(rel, stage.id, name) for name, rel in rs.ports.outputs.items()
               if self._placed.get(rel) != (stage.id, name)]  # fmt: skip
        if new:
            self.state.builds.set_placed(new)
            self._placed.update((rel, (s, n)) for rel, s, n in new)
        if stage.foreach is not None and (ran or last.key != rs.key):
            self.later(
                lambda: self.state.builds.set_item_hashes(
                    stage.id, {it.relpath: it.hash for it in rs.items}
                ),
                stage.id,
            )


#: the verdicts whose action-cache entry the build uses
_HAS_ENTRY = (Verdict.UP_TO_DATE, Verdict.RESTORE)


def _items_in_place(count: int) -> Reason:
    """Why a foreach stage with no entry of its own for its key is up to date: its outputs
    are already what its items in the store record (nothing is restored)."""
    return Reason(
        Trigger.CACHED, f"its outputs in place, as its {count:,} items in the store record"
    )


def _placing_failed(exc: OSError, outputs: Iterable[str] = ()) -> str:
    """What to tell the user when an output cannot be put in place in the workspace (at the
    path the error names, or else at the stage's ``outputs``)."""
    where = exc.filename or ", ".join(outputs) or "an output path"
    if exc.errno == errno.EFBIG:
        limit = fsize_limit()
        why = (
            f"this process may not write files past {limit // 1024} KiB (`ulimit -f`): raise "
            "the limit (`ulimit -f unlimited`) and build again"
            if limit is not None
            else "the file system cannot hold a file that large"
        )
        return f"cannot put the output in place at {where}: {exc.strerror}: {why}"
    if exc.errno == errno.EEXIST or exc.errno == errno.ENOTDIR:
        return (
            f"cannot put the output in place: {where} is in the way (a file or a broken link "
            "where a folder belongs): remove it, or change the output path"
        )
    return f"cannot put the output in place at {where}: {exc.strerror}"


@dataclass(frozen=True)
class Locked:
    """A stage's section of ``pipemake.lock``: its key, each output's path and hash, and
    its computed values (None: the lock does not record them)."""

    key: str
    paths: dict[str, str]
    hashes: dict[str, str]
    values: dict[str, Any] | None
    #: what the section records of how it was built (its rule, params, inputs), for saying
    #: what differs where its key is not the one computed now
    built_from: dict[str, Any] = field(default_factory=dict)


#: why a stage with no entry in the store is up to date
_AS_LOCKED = Reason(Trigger.CACHED, "its outputs are what pipemake.lock records for this key")
#: the reason of a stage with no record in this workspace
_NEVER = Reason(Trigger.NEVER_BUILT, "never built")
#: why a stage whose outputs are the locked ones runs all the same when a key is held
_UNVERIFIED = Reason(
    Trigger.NO_ENTRY,
    "its outputs came from a cache entry no PIPEMAKE_CACHE_KEY verified (this workspace "
    "restored them without the key), so a build holding the key does not vouch for them",
)


#: how the line that maps a failed run's staging folder to the outputs' paths begins
STAGING_NOTE = "staging folder: "


def _staging_note(text: str, run: StageRun, p: Pipeline) -> str:
    """A line saying where the outputs were meant to go, when a failure's ``text`` shows
    the run's staging folder (where ``{outputs.x}`` pointed while it ran): that folder is
    removed when the stage fails, so a user must not go looking for it. The text itself
    (the command's own output) is left as it was. Empty when no staging path shows."""
    shown = [os.path.relpath(run.staging, p.root), str(run.staging)]
    base = next((b for b in shown if b in text), None)
    if base is None:
        return ""
    declared = run.rs.ports.outputs
    if run.outputs:  # one task: each output's own staged path (relative to the root)
        absolute = base == str(run.staging)
        pairs = [(str(p.root / run.outputs[n]) if absolute else run.outputs[n], rel)
                 for n, rel in declared.items() if n in run.outputs]  # fmt: skip
    else:  # items: a folder per task or item under the staging folder
        pairs = [(f"{os.path.join(base, '')}…/{n}", rel) for n, rel in declared.items()]
    where = "; ".join(f"{staged} → {rel}" for staged, rel in pairs)
    return (
        f"\n  {STAGING_NOTE}{os.path.join(base, '')} (removed when the stage failed); only on "
        f"success do its outputs go to their own paths: {where}"
    )


def _from_remote(reason: Reason) -> Reason:
    """A restore's reason saying where its entry came from: the remote, fetched just now."""
    text = reason.detail.replace("the store has them", "the remote has them")
    return reason if text == reason.detail else Reason(reason.trigger, text)


def _lock_sections(p: Pipeline) -> dict[str, Locked]:
    """Each stage's section of the project's ``pipemake.lock``, the one its pipeline file
    wrote (none where the pipeline turns the lock off, or it is missing or unreadable; a
    section not of the shape pipemake writes is left out)."""
    from .lockfile import locked_values, own_sections, read

    if not p.lock_file:
        return {}
    try:
        doc = read(p.root)
    except ValueError:
        return {}
    out: dict[str, Locked] = {}
    for sid, section in own_sections(p, (doc or {}).get("stages")).items():
        if not isinstance(section, dict):
            continue
        outputs = section.get("outputs")
        if not isinstance(section.get("key"), str) or not isinstance(outputs, dict):
            continue
        paths, hashes = {}, {}
        for name, o in outputs.items():
            if isinstance(o, dict) and isinstance(o.get("hash"), str):
                hashes[name] = o["hash"]
                if isinstance(o.get("path"), str):
                    paths[name] = o["path"]
        built_from = {k: section[k] for k in ("rule", "params", "inputs") if k in section}
        out[sid] = Locked(section["key"], paths, hashes, locked_values(section), built_from)
    return out


def _canonical_values(values: dict[str, Any]) -> dict[str, Any]:
    """Computed values in the one form the store gives them back (its JSON round trip:
    mappings with sorted keys, tuples as lists), so a downstream stage that writes a value
    into its command or environment sees the same text whether the value was computed in
    this build or restored from the store, and does not rerun for key order alone."""
    return json.loads(encode_entry(values)) if values else values


def values_used(p: Pipeline, stage: Stage) -> list[str]:
    """The computed values of ``stage`` other stages refer to."""
    used = []
    for other in p.stages.values():
        for ref in find_refs(other.config):
            if ref.scope == stage.id and ref.name not in stage.ports.outputs:
                used.append(ref.name)
    return used

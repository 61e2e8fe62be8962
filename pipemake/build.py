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
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import foreach
from .decide import Decision, Reason, Trigger, Verdict, explain, output_reasons
from .errors import os_failure
from .events import Bus
from .executors.base import Message, Task
from .fshash import Hasher
from .hashing import KEY_FORMAT, digest, key_digest
from .items import ItemRef, glob_base, is_glob
from .model import SYMBOLIC_SCOPES, Pipeline, Stage
from .rule import Ports
from .scheduler import StageFailure
from .state import WorkspaceState
from .store import Store
from .templates import Ref, TemplateError, substitute
from .walk import BadPath
from .workspace import Workspace, manifest_hash, remove_path, sub_manifest

__all__ = ["Builder", "Planned", "StageKey"]


class _Unknown(Exception):
    """A value this stage needs comes from an upstream stage that has not run yet."""

    def __init__(self, stage: str):
        self.stage = stage


@dataclass
class StageKey:
    """A resolved stage: its ports, key document and key (None while a map-reduce stage's
    maps are missing). Foreach stages also carry their items and item keys, listed only
    when asked for: a stage whose key is remembered for the same input tree and base key
    never lists its hundred thousand items on a no-op."""

    ports: Ports
    doc: dict[str, Any]
    key: str | None
    unknown: set[str] = field(default_factory=set)
    #: lists the items (set by the foreach input's resolution)
    list_items: Callable[[], list[ItemRef]] | None = None
    #: what the items are a function of: the foreach input's manifest hash and filters
    source: list[Any] | None = None
    base: str = ""
    #: a map-reduce stage's key base for its map steps (without the reduce-only params)
    map_base: str = ""
    cached: dict[str, Any] = field(default_factory=dict)
    todo: list[ItemRef] = field(default_factory=list)
    _items: list[ItemRef] | None = None
    _item_keys: dict[str, str] | None = None

    @property
    def items(self) -> list[ItemRef]:
        if self._items is None:
            self._items = self.list_items() if self.list_items is not None else []
        return self._items

    @property
    def item_keys(self) -> dict[str, str]:
        """Each item's key (relpath → key), in relpath order."""
        if self._item_keys is None:
            self._item_keys = foreach.item_keys(self)
        return self._item_keys


@dataclass
class Planned:
    """What is known of a stage's outputs in this build (or plan): manifests and values."""

    outputs: dict[str, Any] | None
    values: dict[str, Any] | None
    key: str | None = None


class Builder:
    """Implements the scheduler's StageHandler for one build, or a plan when ``dry``."""

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
        self._running: dict[str, dict[str, Any]] = {}
        self._brief = state.brief()
        self._prefetched: dict[str, dict[str, Any]] = {}
        #: every stage, item and map key this build or plan computed (what ``cache gc``
        #: keeps), item keys only when ``collect_keys`` is set
        self.keys_seen: set[str] = set()
        self.collect_keys = collect_keys
        self._full: dict[str, dict[str, Any] | None] = {}
        self._placed: dict[str, tuple[str, str]] | None = None
        #: bookkeeping no later decision of this build reads, put off until tasks run
        self._later: list[tuple[Callable[[], None], str]] = []

    # resolving and keys -----------------------------------------------------------------
    def _lookup(self, stage: Stage, unknown: set[str]):
        def lookup(ref: Ref) -> Any:
            if ref.scope == "vars":
                value = self.p.vars[ref.name]
                return value
            up = self.p.stages[ref.scope]
            if ref.name in up.ports.outputs:
                return up.ports.outputs[ref.name]
            planned = self.results.get(ref.scope)
            if planned is None or planned.values is None:
                unknown.add(ref.scope)
                raise _Unknown(ref.scope)
            values = planned.values if isinstance(planned.values, dict) else {}
            if ref.name not in values:
                got = ", ".join(sorted(map(str, values))) or "none"
                raise StageFailure(
                    f"{ref}: stage {ref.scope!r} returned no value {ref.name!r} (it returned: "
                    f"{got}); return it from that stage, or refer to one it returns"
                )
            value = values[ref.name]
            out_name = up.rule.path_values.get(ref.name)
            if out_name is not None and value is not None:
                paths = value if isinstance(value, list) else [value]
                if not all(isinstance(v, str) for v in paths):
                    raise StageFailure(
                        f"{ref}: stage {ref.scope!r} returned {value!r:.80}, not a path or a list "
                        f"of paths; build {ref.scope!r} again (pipemake build --force-stage "
                        f"{ref.scope})"
                    )
                base = up.ports.outputs[out_name]
                join = lambda v: os.path.normpath(os.path.join(base, v))  # noqa: E731
                value = [join(v) for v in value] if isinstance(value, list) else join(value)
            return value

        return lookup

    def resolve(self, stage: Stage) -> StageKey:
        """The stage's ports with every reference resolved, its key document and key."""
        unknown: set[str] = set()
        if stage.static:
            # no computed values referenced: the loader's resolution is the build's
            p = stage.ports
            ports = Ports(dict(p.inputs), dict(p.outputs), p.output_kinds, p.params, p.key_params,
                          p.root)  # fmt: skip
        else:
            ports = self._resolve_ports(stage, unknown)
        inputs: dict[str, Any] = {}
        source = None
        for name, value in sorted(ports.inputs.items()):
            if stage.foreach is not None and name == stage.foreach.input:
                if isinstance(value, list):
                    raise StageFailure(f"foreach input {name!r} must be one directory or glob")
                source = foreach.item_source(self, stage, value, unknown)
                inputs[name] = [value, "foreach"]
            elif isinstance(value, list):
                inputs[name] = [[p, self._input_hash(stage, p, unknown)] for p in value]
            else:
                inputs[name] = [value, self._input_hash(stage, value, unknown)]
        fed = self._foreach_feed(stage, ports)
        upstream = {}
        for dep in stage.deps:
            planned = self.results.get(dep)
            if planned is None or planned.outputs is None:
                unknown.add(dep)
                upstream[dep] = "?"
            elif fed is not None and fed[0] == dep:
                # the foreach input's own output stands in each item (its path and content);
                # the rest of that stage's outputs still count, its values only where used
                upstream[dep] = digest(
                    [{n: manifest_hash(m) for n, m in planned.outputs.items() if n != fed[1]}],
                    checked=True,
                )
            else:
                upstream[dep] = digest(
                    [{n: manifest_hash(m) for n, m in planned.outputs.items()}, planned.values],
                    checked=True,  # JSON from the store: string keys only
                )
        doc = {
            "format": KEY_FORMAT,
            "rule": stage.rule.name,
            "rule_version": str(stage.rule.version),
            "stage_version": stage.version,
            "code": None if stage.version is not None else stage.rule.code_hash(ports, self.p.root),
            "params": ports.key_params if ports.key_params is not None else ports.params,
            "inputs": inputs,
            "upstream": upstream,
            "outputs": {n: ports.output_kinds.get(n, "path") for n in sorted(ports.outputs)},
        }
        if stage.foreach is None:
            return StageKey(ports, doc, key_digest(doc), unknown)
        doc["foreach"] = [stage.foreach.input, stage.foreach.pattern]
        sk = StageKey(ports, doc, None, unknown)
        if source is not None:
            sk.source, sk.list_items = source
        if not unknown:
            foreach.stage_key(self, stage, sk)
        return sk

    def _foreach_feed(self, stage: Stage, ports: Ports) -> tuple[str, str] | None:
        """``(upstream stage, output name)`` whose output a foreach stage's items come from,
        or None (not a foreach stage, or its input is a source folder)."""
        if stage.foreach is None:
            return None
        value = ports.inputs.get(stage.foreach.input)
        if not isinstance(value, str):
            return None
        owner = self.p.output_owner(glob_base(value) if is_glob(value) else value)
        if owner is None or owner[0] == stage.id:
            return None
        return owner[0], owner[1]

    def _resolve_ports(self, stage: Stage, unknown: set[str]) -> Ports:
        """Resolve the stage's templates now that upstream values are known; check again.

        In a key the rule keeps as a template (a shell ``cmd``, ``env``), a computed value is
        written the way the rule says (``quote_value``: quoted for the shell where it stands
        in ``cmd``, the text itself in ``env``): a value is data, never code."""
        lookup = self._lookup(stage, unknown)
        symbolic = getattr(stage.rule, "symbolic_keys", ())
        quote_value = getattr(stage.rule, "quote_value", None)
        stages = self.p.stages

        def is_value(r: Ref) -> bool:  # a computed value, not a variable or a path
            return r.scope != "vars" and r.name not in stages[r.scope].ports.outputs

        def quoting(key: str):
            def quote(ref: Ref, value: Any, template: str, index: int) -> str:
                return quote_value(key, ref, value, template, index)

            return quote if quote_value is not None else None

        symbols = lambda r: r.scope in SYMBOLIC_SCOPES  # noqa: E731
        config: dict[str, Any] = {}
        try:
            for key, value in stage.config.items():
                if key in symbolic:
                    # variables and paths first, as the loader writes them (the pipeline's
                    # own text), so each value is quoted for where it stands in the result
                    first = substitute(value, lookup, lambda r: symbols(r) or is_value(r))
                    config[key] = substitute(first, lookup, symbols, quoting(key))
                else:
                    config[key] = substitute(value, lookup)
        except TemplateError as exc:
            raise StageFailure(str(exc)) from None
        ports, problems = stage.rule.ports(config)
        ports.root = str(self.p.root)
        problems = problems or stage.rule.check(ports)
        if problems:
            raise StageFailure("; ".join(msg for _key, msg in problems))
        for name, value in ports.inputs.items():
            if isinstance(value, list):
                ports.inputs[name] = [os.path.normpath(v) for v in value]
            else:
                ports.inputs[name] = os.path.normpath(value)
        ports.outputs = dict(stage.ports.outputs)
        return ports

    def _input_hash(self, stage: Stage, path: str, unknown: set[str]) -> str:
        owner = self.p.output_owner(path)
        if owner is not None and owner[0] != stage.id:
            planned = self.results.get(owner[0])
            if planned is None or planned.outputs is None:
                unknown.add(owner[0])
                return "?"
            manifest = sub_manifest(planned.outputs[owner[1]], owner[2])
            if manifest is None:
                raise StageFailure(
                    f"input {path} was not produced by stage {owner[0]!r} (its output "
                    f"{self.p.stages[owner[0]].ports.outputs[owner[1]]} holds no such path)"
                )
            return manifest_hash(manifest)
        try:
            info = self.hasher.info(path)
        except BadPath as exc:
            raise StageFailure(f"input {path}: {exc}") from None
        if info.kind == "missing":
            raise StageFailure(f"input {path} does not exist")
        return info.hash

    # deciding ---------------------------------------------------------------------------
    def decide(self, stage: Stage) -> tuple[Decision, StageKey | None, dict[str, Any] | None]:
        """The verdict for a stage given what is known now, without changing anything."""
        try:
            sk = self.resolve(stage)
        except _Unknown as exc:
            return Decision(Verdict.MAYBE, [self._upstream_will(exc.stage)]), None, None
        if sk.unknown:
            own = [r for r in self._why(stage.id, sk.doc) if not _from_unknown(r, sk)]
            if own:
                return Decision(Verdict.RUN, own), sk, None
            first = sorted(sk.unknown)[0]
            return Decision(Verdict.MAYBE, [self._upstream_will(first)]), sk, None
        if self.force or stage.id in self.force_stages:
            return Decision(Verdict.RUN, [Reason(Trigger.FORCED, "forced")]), sk, None
        entry = None
        if sk.key is not None:
            entry = self._prefetched.pop(sk.key, None) or self.store.get_action(sk.key)
        if entry is None:
            reasons = [r for r in self._why(stage.id, sk.doc) if r.trigger is not Trigger.ITEMS]
            items = None
            if stage.foreach is not None:
                more, items = foreach.item_decision(self, stage, sk)
                reasons += more
                if not sk.todo and sk.items and not stage.rule.map_reduce:  # none runs:
                    n = len(sk.items)  # the output is put together from the store's items
                    every = Reason(Trigger.CACHED, f"all {n:,} items are in the store (none runs)")
                    reasons = [*(reasons or foreach.items_changed(self, stage, sk)), every]
                    return Decision(Verdict.RESTORE, reasons, items), sk, None
            if not reasons:
                reasons = [Reason(Trigger.NO_ENTRY, "no cache entry")]
            return Decision(Verdict.RUN, reasons, items), sk, None
        bad = []
        for name, rel in sk.ports.outputs.items():
            manifest = entry.get("outputs", {}).get(name)
            if manifest is None:
                return Decision(Verdict.RUN, [Reason(Trigger.NO_ENTRY, "no cache entry")]), sk, None
            state = self.ws.check(manifest, rel, self.hasher)
            if state:
                bad.append((rel, state))
        if not bad:
            return Decision(Verdict.UP_TO_DATE), sk, entry
        last = self._brief.get(stage.id)
        if last is not None and last[0] != sk.key:  # what changed, not its effect on outputs
            why = explain(self._old_doc(stage.id), sk.doc) + foreach.items_changed(self, stage, sk)
            earlier = Reason(Trigger.CACHED, "cached from an earlier build")
            return Decision(Verdict.RESTORE, [*why, earlier]), sk, entry
        return Decision(Verdict.RESTORE, output_reasons(bad, last is None)), sk, entry

    def _upstream_will(self, stage_id: str) -> Reason:
        """Why a stage waits on an upstream one whose outputs are not known yet: it will
        run, or be put together from its items in the store."""
        told = self.decisions.get(stage_id)
        will = "will be restored" if told and told.verdict is Verdict.RESTORE else "will run"
        return Reason(Trigger.UPSTREAM_WILL_RUN, f"upstream {stage_id} {will}")

    def prefetch(self, stages: list[str]) -> None:
        """Read the entries of these stages' last keys in a few queries: on a no-op build
        they are the entries the decisions need."""
        keys = [k for s in stages if (k := (self._brief.get(s) or (None,))[0])]
        self._prefetched = self.store.get_actions(keys)

    def _record(self, stage_id: str) -> dict[str, Any] | None:
        """The stage's whole last-build record, read when a reason or a failure needs it."""
        if stage_id not in self._full:
            self._full[stage_id] = self.state.record(stage_id) if stage_id in self._brief else None
        return self._full[stage_id]

    def _old_doc(self, stage_id: str) -> dict[str, Any] | None:
        record = self._record(stage_id)
        return record.get("doc") if record else None

    def _why(self, stage_id: str, doc: dict[str, Any]) -> list[Reason]:
        """Why a stage whose key is not cached runs: what changed since its last build, or
        since its last run when that failed."""
        record = self._record(stage_id)
        failed = None
        if record and record.get("result") in ("failed", "interrupted"):
            failed = record.get("failed_doc")
        return explain(record.get("doc") if record else None, doc, failed=failed)

    # the StageHandler -------------------------------------------------------------------
    def begin(self, stage_id: str) -> list[Task]:
        stage = self.p.stages[stage_id]
        decision, sk, entry = self.decide(stage)
        self.decisions[stage_id] = decision
        if sk is not None:
            if sk.key is not None:
                self.keys_seen.add(sk.key)
            if self.collect_keys and stage.foreach is not None and not sk.unknown:
                self.keys_seen.update(sk.item_keys.values())
            elif sk._item_keys is not None:  # listed anyway: the store's roots keep them too
                self.keys_seen.update(sk._item_keys.values())
        if self.dry:
            self.results[stage_id] = Planned(
                entry["outputs"] if entry else None,
                entry.get("values", {}) if entry else None,
                sk.key if sk else None,
            )
            return []
        assert sk is not None
        if decision.verdict is Verdict.UP_TO_DATE:
            assert entry is not None
            self._done(stage, sk, entry, ran=False)
            self.bus.emit("stage_skipped", stage_id, reason="up to date")
            return []
        if decision.verdict is Verdict.RESTORE and entry is not None:  # (else from items)
            try:
                restored = self._restore(stage, sk, entry)
            except OSError as exc:
                raise StageFailure(_placing_failed(exc)) from None
            if restored:
                self._done(stage, sk, entry, ran=False)
                self.bus.emit(
                    "stage_restored", stage_id, reasons=[str(r) for r in decision.reasons]
                )
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
            if stage.foreach is not None:
                # rerun the items whose objects are gone (a corrupt one was removed just now)
                foreach.item_decision(self, stage, sk)
                foreach.forget_lost_items(self, sk)
        return self._start(stage, sk, decision)

    def _restore(self, stage: Stage, sk: StageKey, entry: dict[str, Any]) -> bool:
        for name, rel in sk.ports.outputs.items():
            manifest = entry["outputs"][name]
            if self.ws.check(manifest, rel, self.hasher) is None:
                continue
            if manifest["kind"] == "dir":
                if not self.ws.sync_dir(manifest, rel, self.store, self.hasher):
                    return False
            elif not self.ws.restore(manifest, rel, self.store, stage.id):
                return False
        return True

    def _start(self, stage: Stage, sk: StageKey, decision: Decision) -> list[Task]:
        staging = self.ws.staging(stage.id)
        logs = self.ws.dot / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{stage.id}.log"
        log_path.write_text("")
        now = time.time()
        run: dict[str, Any] = {
            "sk": sk,
            "staging": staging,
            "decided": now,
            "started": now,  # until its first task starts
            "waiting": {
                "reasons": [str(r) for r in decision.reasons],
                "items": decision.items,
            },
            "result": None,
            "error": None,
            "log": str(log_path),
        }
        run["guard"] = self._guard(stage, sk)
        self._running[stage.id] = run
        if stage.foreach is not None:
            forced = self.force or stage.id in self.force_stages
            return foreach.start(self, stage, sk, run, forced)
        run["outputs"] = self._staged_outputs(staging, sk)
        return [self._stage_task(stage, sk, run, stage.id)]

    def _stage_task(self, stage: Stage, sk: StageKey, run: dict[str, Any], task_id: str) -> Task:
        """The one task of a stage without ``foreach``."""
        task = self.task(stage, sk, run, task_id, outputs=run["outputs"])
        upstream = getattr(stage.rule, "upstream_param", None)
        if upstream:  # a rule that wants what its upstream stages made (`custom`), unkeyed
            task.params = {**task.params, upstream: self._upstream(stage)}
        return task

    def _staged_outputs(self, staging: Path, sk: StageKey) -> dict[str, str]:
        """Where a (non-foreach) stage's task writes each output: in its staging folder."""
        return {
            name: os.path.relpath(staging / name / os.path.basename(rel), self.p.root)
            for name, rel in sk.ports.outputs.items()
        }

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

    def task(
        self,
        stage: Stage,
        sk: StageKey,
        run: dict[str, Any],
        task_id: str,
        *,
        mode: str = "run",
        outputs: dict[str, str] | None = None,
        items: list[dict[str, Any]] | None = None,
        mapped: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> Task:
        """A task description for one unit of this stage's work."""
        if mode == "reduce":
            outputs = {
                name: os.path.relpath(run["staging"] / "reduce" / name, self.p.root)
                for name in sk.ports.outputs
            }
            run["outputs"] = outputs
        return Task(
            id=task_id, stage=stage.id, rule=stage.rule.name, root=str(self.p.root),
            store=str(self.store.path), link=self.store.link, fsync=self.store.fsync,
            inputs=sk.ports.inputs,
            outputs=outputs or {},
            output_kinds=sk.ports.output_kinds, params=sk.ports.params, mode=mode,
            items=items or [], foreach=stage.foreach.input if stage.foreach else None,
            extra=dict(extra or {}, **({"mapped": mapped} if mapped is not None else {})),
            resources=stage.resources, log_path=run["log"], timeout=stage.timeout,
            max_attempts=1 + (stage.retries or self.retries or 0), backoff=stage.retry_backoff,
        )  # fmt: skip

    def task_started(self, stage_id: str, task: Task) -> None:
        run = self._running.get(stage_id)
        if run is not None:
            self._running_now(stage_id, run)

    def _running_now(self, stage_id: str, run: dict[str, Any]) -> None:
        """The stage runs from now (its first task started, or it had none to wait for):
        its duration counts from here, the wait before it is reported as such."""
        waiting = run.pop("waiting", None)
        if waiting is None:
            return
        run["started"] = now = time.time()
        queued = round(now - run["decided"], 3)
        self.bus.emit("stage_started", stage_id, queued=queued, **waiting)

    def on_message(self, stage_id: str, message: Message) -> list[Task]:
        run = self._running[stage_id]
        if message.kind == "progress":
            if not run.get("foreach"):
                done, total = message.data
                self.bus.emit("progress", stage_id, done=done, total=total)
        elif message.kind == "log":
            level, text = message.data
            self.bus.emit("log", stage_id, level=level, text=text)
        elif run.get("foreach") and not run.get("reduce"):
            return foreach.on_message(self, self.p.stages[stage_id], run, message)
        elif message.kind == "result":
            moved = self.moved_inputs(run)
            if moved:
                return self._again(self.p.stages[stage_id], run, moved)
            run["result"] = message.data
        elif message.kind == "error":
            run["error"] = message.data
        return []

    def _guard(self, stage: Stage, sk: StageKey) -> list[tuple[str, str]]:
        """The source inputs (no stage produces them) and the hashes the key was computed
        with: what must still hold when the stage's work is committed under that key."""
        pairs: list[tuple[str, str]] = []
        for value in sk.doc["inputs"].values():
            for path, h in value if value and isinstance(value[0], list) else [value]:
                if h != "foreach" and self.p.output_owner(path) is None:
                    pairs.append((path, h))
        return pairs

    def moved_inputs(self, run: dict[str, Any]) -> list[str]:
        """The source inputs that changed since the stage's key was computed (edited while
        its work ran): that work must not be committed under the old key."""
        moved = []
        for path, h in run["guard"]:
            try:
                now = self.hasher.recheck(path)
            except BadPath:
                now = None
            if now != h:
                moved.append(path)
        return moved

    def _again(self, stage: Stage, run: dict[str, Any], moved: list[str]) -> list[Task]:
        """Run a stage again because its inputs ``moved`` while it ran: nothing of that run
        is committed. After three such runs the stage fails, saying so."""
        run["again"] = n = run.get("again", 0) + 1
        what = ", ".join(moved[:3]) + (f" and {len(moved) - 3} more" if len(moved) > 3 else "")
        if n > foreach.MAX_AGAIN:
            run["error"] = [
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
            sk = self.resolve(stage)
        except (_Unknown, StageFailure) as exc:
            run["error"] = [f"input {what} changed while the stage ran: {exc}", None]
            return []
        remove_path(run["staging"])
        run["sk"], run["staging"] = sk, self.ws.staging(stage.id)
        run["guard"] = self._guard(stage, sk)
        run["outputs"] = self._staged_outputs(run["staging"], sk)
        if sk.key is not None:
            self.keys_seen.add(sk.key)
        return [self._stage_task(stage, sk, run, f"{stage.id}.again{n}")]

    def last_result(self, stage_id: str) -> str | None:
        """How the stage's last build ended (``ok``, ``failed``, …), None if never built."""
        brief = self._brief.get(stage_id)
        return brief[1] if brief else None

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
        if self.state.trees_pending():  # big rows: encoded and written now, not at the end
            self.state.flush()

    def complete(self, stage_id: str) -> list[Task]:
        stage = self.p.stages[stage_id]
        run = self._running.pop(stage_id, None)
        if run is None:
            return []
        more: list[Task] = []
        # every item of a foreach stage was in the store: it is put together, not run
        none_ran = (
            run.get("foreach") and run["sk"].cached
            and not (run.get("reduce") or run["new"] or run["failures"])
        )  # fmt: skip
        if not none_ran:
            self._running_now(stage_id, run)
        try:
            if run.get("foreach") and run["failures"]:
                text = foreach.failure_text(run, run["items_total"])
                self._failed(stage, run, text)
                raise StageFailure(text)
            try:
                if run.get("foreach") and not run.get("reduce"):
                    entry = foreach.assemble(self, stage, run)
                else:
                    entry = self._commit_run(stage, run)
            except foreach.LostObjects:
                more = foreach.rerun_lost(self, stage, run) if run.get("lost", 0) < 3 else []
                if not more:
                    raise
                self._running[stage_id] = run
                return more
            except (OSError, sqlite3.OperationalError) as exc:
                clear = os_failure(exc, self.store.path / "actions.db")
                if isinstance(exc, OSError) and exc.errno in (errno.EEXIST, errno.ENOTDIR):
                    text = _placing_failed(exc)
                elif clear is not None:
                    text = str(clear)
                elif isinstance(exc, OSError):
                    text = _placing_failed(exc)
                else:
                    raise
                with contextlib.suppress(OSError, sqlite3.OperationalError):
                    self._failed(stage, run, text)  # the record may not fit on a full disk
                raise StageFailure(text) from None
            if none_ran and "waiting" in run:  # said as a restore (and counted as one)
                told = self.decisions[stage_id] = Decision(
                    Verdict.RESTORE, self.decisions[stage_id].reasons, run["waiting"]["items"]
                )
                self._done(stage, run["sk"], entry, ran=False)
                self.bus.emit("stage_restored", stage_id, reasons=[str(r) for r in told.reasons],
                              items=entry["metrics"]["items"])  # fmt: skip
                return []
            self._done(stage, run["sk"], entry, ran=True)
            self.bus.emit("stage_finished", stage_id, **entry["metrics"])
            return []
        finally:
            if not more:
                remove_path(run["staging"])

    def _commit_run(self, stage: Stage, run: dict[str, Any]) -> dict[str, Any]:
        if run["error"] is not None or run["result"] is None:
            text, tb = run["error"] or ["the task ended without a result", None]
            self._failed(stage, run, text)
            raise StageFailure(text + (f"\n{tb}" if tb else ""))
        result = run["result"]
        metrics = dict(result.get("metrics", {}))
        metrics["duration"] = time.time() - run["started"]
        metrics["queued"] = run["started"] - run["decided"]
        entry = {
            "stage": stage.id,
            "outputs": result["outputs"],
            "values": result.get("values", {}),
            "metrics": metrics,
            "created": time.time(),
        }
        self.store.put_action(run["sk"].key, entry)
        for name, rel in run["sk"].ports.outputs.items():
            self.ws.place(self.p.root / run["outputs"][name], rel)
        return entry

    def _failed(self, stage: Stage, run: dict[str, Any], text: str) -> None:
        record = dict(self._record(stage.id) or {})
        stopped = self.stopping()
        record.update(
            failed_doc=run["sk"].doc,
            result="interrupted" if stopped else "failed",
            error="stopped by a signal before it finished" if stopped else text[:2000],
            finished=time.time(),
            duration=time.time() - run["started"],
        )
        self.state.set_record(stage.id, record)

    def _done(self, stage: Stage, sk: StageKey, entry: dict[str, Any], ran: bool) -> None:
        self.results[stage.id] = Planned(entry["outputs"], entry.get("values", {}), sk.key)
        last = self._brief.get(stage.id) or (None, None, None)
        if ran or last[0] != sk.key or last[1] != "ok":
            metrics = entry.get("metrics", {})
            record = {
                "key": sk.key, "doc": sk.doc, "result": "ok", "restored": not ran,
                "duration": metrics.get("duration", last[2]), "finished": time.time(),
            }  # fmt: skip
            self.state.set_record(stage.id, record)
            self._full[stage.id] = record
        if self._placed is None:
            self._placed = self.state.placed()
        new = [(rel, stage.id, name) for name, rel in sk.ports.outputs.items()
               if self._placed.get(rel) != (stage.id, name)]  # fmt: skip
        if new:
            self.state.set_placed(new)
            self._placed.update((rel, (s, n)) for rel, s, n in new)
        if stage.foreach is not None and (ran or last[0] != sk.key):
            self.later(
                lambda: self.state.set_item_hashes(
                    stage.id, {it.relpath: it.hash for it in sk.items}
                ),
                stage.id,
            )


def _from_unknown(reason: Reason, sk: StageKey) -> bool:
    """Whether a reason only reflects an upstream output not known yet (dry-run)."""
    if reason.trigger is Trigger.UPSTREAM:
        return any(f"upstream {s} " in reason.detail for s in sk.unknown)
    for value in sk.doc["inputs"].values():
        pairs = value if value and isinstance(value[0], list) else [value]
        for path, h in pairs:
            if h == "?" and path in reason.detail:
                return True
    return False


def _placing_failed(exc: OSError) -> str:
    """What to tell the user when an output cannot be put in place in the workspace."""
    where = exc.filename or "an output path"
    if exc.errno == errno.EEXIST or exc.errno == errno.ENOTDIR:
        return (
            f"cannot put the output in place: {where} is in the way (a file or a broken link "
            "where a folder belongs): remove it, or change the output path"
        )
    return f"cannot put the output in place at {where}: {exc.strerror}"

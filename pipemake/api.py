"""One function per command: what the CLI (or a Python user) calls.

Each opens the project (pipeline file, store, workspace state), does one thing and returns
plain data; printing is the caller's business.
"""

from __future__ import annotations

import difflib
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import history, uptodate
from .build import Builder
from .decide import Decision, Reason, Trigger, Verdict
from .errors import BuildFailed, Interrupted, PipelineError, Problem, UsageError
from .events import Bus
from .executors.base import get_executor
from .hooks import run_hooks, run_summary
from .lock import BuildLock
from .model import DEFAULT_FILE, Pipeline
from .plancache import load_checked
from .resources import Budget, default_budget
from .rule import Rule
from .scheduler import Outcome, Scheduler, StageFailure
from .state import WorkspaceState
from .store import Store
from .workspace import Workspace

__all__ = [
    "BuildReport",
    "Project",
    "build",
    "cache_gc",
    "cache_info",
    "cache_verify",
    "clean",
    "dry_run",
    "graph",
    "list_runs",
    "list_stages",
    "open_project",
    "show_log",
    "stage_notes",
    "status",
    "validate",
]


@dataclass
class Project:
    """A loaded pipeline with its store and workspace state."""

    pipeline: Pipeline
    store: Store
    state: WorkspaceState
    workspace: Workspace

    def close(self) -> None:
        """Flush the stat cache and close the databases."""
        self.state.close()
        self.store.close()


def open_project(
    directory: str | os.PathLike[str] | None = None,
    file: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    readonly: bool = False,
) -> Project:
    """Load the pipeline (``-C DIR``, ``-f FILE``) and open its store and state."""
    base = Path(directory) if directory else Path.cwd()
    path = Path(file) if file else Path(DEFAULT_FILE)
    if not path.is_absolute():
        path = base / path
    pipeline = load_checked(path, path.parent / ".pipemake")
    ws = Workspace(pipeline.root)
    cache = cache_dir or os.environ.get("PIPEMAKE_CACHE_DIR") or ws.dot / "store"
    cache = Path(cache)
    if not cache.is_absolute():
        cache = Path.cwd() / cache
    store = Store(cache, readonly=readonly)
    return Project(pipeline, store, WorkspaceState(ws.dot / "state.db", readonly), ws)


def _select(p: Pipeline, targets: Sequence[str]) -> list[str]:
    for t in targets:
        if t not in p.stages:
            close = difflib.get_close_matches(t, list(p.stages), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"unknown target {t!r}{hint} (stages: {', '.join(p.stages)})")
    wanted = p.graph.ancestors(targets) if targets else set(p.stages)
    return p.graph.topo_order(wanted)


@dataclass
class BuildReport:
    """What a build did to each stage."""

    ran: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    duration: float = 0.0


class _Signals:
    """Turns the first SIGINT/SIGTERM into a polite stop request, a second into a hard one."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.count = 0
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.received is None:
            self.received = signum

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def build(
    project: Project,
    targets: Sequence[str] = (),
    *,
    jobs: int = 1,
    keep_going: bool = False,
    force: bool = False,
    force_stages: Sequence[str] = (),
    executor: str = "local",
    lock_timeout: float | None = None,
    bus: Bus | None = None,
    on_lock_wait: Any = None,
    resources: Mapping[str, float] | None = None,
    retries: int | None = None,
    grace: float = 30.0,
    log_json: str | os.PathLike[str] | None = None,
    link: bool | None = None,
    fsync: bool = False,
    noop_snapshot: tuple[str, int] | None = None,
) -> BuildReport:
    """Build the targets (default: every stage) and what they need.

    ``resources`` overrides parts of this machine's budget (cpus, gpu, mem_gb, or any name
    a stage requests); ``retries`` applies to stages that set none; ``grace`` is how long
    running stages may finish after a first Ctrl-C or SIGTERM. Every event is logged under
    ``.pipemake/runs/`` (and to ``log_json``); the pipeline's hooks run after the build.
    ``link`` (default: env ``PIPEMAKE_LINK``) hard-links outputs and the store's objects
    instead of copying them; linked outputs are read-only. ``fsync`` flushes every store
    object (and its directory entry) and every entry commit to disk before it counts, so
    the store survives a power loss, not only a killed build. ``noop_snapshot`` (the
    command's context digest and its process start in ns, see :mod:`pipemake.uptodate`)
    writes ``.pipemake/uptodate.json`` when every stage was up to date.
    """
    p = project.pipeline
    order = _select(p, targets)
    for s in force_stages:
        if s not in p.stages:
            raise UsageError(f"--force-stage: unknown stage {s!r}")
    budget = _budget(p, order, resources)
    bus = bus or Bus()
    runs = project.workspace.dot / "runs"
    runlog = history.RunLog(runs, log_json, {"pipeline": p.name})
    bus.subscribe(runlog)
    started = time.time()
    started_ns = noop_snapshot[1] if noop_snapshot else time.time_ns()
    with (
        BuildLock(project.workspace.dot / "lock", lock_timeout, on_lock_wait),
        _linking(project.store, link),
        _durable(project.store, fsync),
    ):
        project.workspace.clear_tmp()
        builder = Builder(
            p,
            project.store,
            project.state,
            bus,
            force=force,
            force_stages=frozenset(force_stages),
            jobs=jobs,
            retries=retries,
        )
        builder.prefetch(order)
        expected = _expected(project, order)
        chosen = set(order)
        run_started = {
            "stages": order,
            "targets": list(targets),
            "expected": expected,
            "deps": {s: [d for d in p.graph.deps[s] if d in chosen] for s in order},
            "budget": budget.total,
            "jobs": jobs,
            "per_item": {s: t for s, t in history.per_item_times(runs).items() if s in expected},
        }
        bus.emit("run_started", None, **run_started)
        with _Signals() as sigs, get_executor(executor, jobs) as ex:
            # stages of worker rules never built (or failed last time) will most likely run:
            # their workers start now, while the build decides, not after
            if any(
                not p.stages[s].rule.spawns_only and builder.last_result(s) != "ok" for s in order
            ):
                ex.prestart(jobs)
            builder.stopping = lambda: sigs.received is not None
            sched = Scheduler(
                p.graph,
                order,
                builder,
                ex,
                bus,
                jobs=jobs,
                keep_going=keep_going,
                stop_signal=lambda: (sigs.received, sigs.count),
                budget=budget,
                expected=expected,
                grace=grace,
            )
            outcome = sched.run()
        project.state.flush()
        if noop_snapshot is not None:
            snapshot = None
            plain = not (force or force_stages or log_json or p.on_success or p.on_failure)
            if plain and not (outcome.failed or outcome.skipped or outcome.interrupted):
                snapshot = _snapshot(project, builder, order, started_ns, run_started)
            # under the lock, so no other build's snapshot or change can come in between
            if snapshot is not None:
                uptodate.write(project.workspace.dot, noop_snapshot[0], **snapshot)
            else:
                uptodate.discard(project.workspace.dot)
    report = _report(builder, outcome, time.time() - started)
    finished = {"ran": report.ran, "restored": report.restored, "up_to_date": report.up_to_date,
                "failed": report.failed, "skipped": report.skipped, "duration": report.duration,
                "interrupted": outcome.interrupted}  # fmt: skip
    bus.emit("run_finished", None, **finished)
    run_hooks(p.on_success, p.on_failure, run_summary(p.name, runlog.run_id, started, finished),
              p.root, bus)  # fmt: skip
    runlog.close()
    if outcome.interrupted is not None:
        raise Interrupted(outcome.interrupted)
    if report.failed:
        raise BuildFailed(list(report.failed))
    return report


def _snapshot(
    project: Project,
    builder: Builder,
    order: list[str],
    started_ns: int,
    run_started: dict[str, Any],
) -> dict[str, Any] | None:
    """What this build's no-op snapshot holds, or None when it did anything or something
    it looked at changed too recently to be trusted by stat alone."""
    up_to_date = Verdict.UP_TO_DATE
    if any(builder.decisions.get(s) is None or builder.decisions[s].verdict is not up_to_date
           for s in order):  # fmt: skip
        return None
    # another workspace sharing the store (or any other writer) committed while we decided
    if project.store.written_by_others() or project.state.written_by_others():
        return None
    project.state.close()  # closed: their stat is what a later write must change
    project.store.close()
    p = project.pipeline
    code: set[str] = {str(p.file)}
    packages = {"pipemake", "rules"}
    for stage_id in order:
        rule = p.stages[stage_id].rule
        cls = type(rule)
        if cls.code_hash is not Rule.code_hash and cls.code_files is Rule.code_files:
            return None  # its code is hashed from files it does not name
        packages.add(cls.__module__.partition(".")[0])
        code.update(rule.code_files(p.stages[stage_id].ports, p.root))
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] in packages:  # the rules' whole packages, versions and all
            code.add(getattr(module, "__file__", None) or "")
    code.discard("")
    databases = [project.state.path, project.store.path / "actions.db"]
    paths = uptodate.record(p.root, builder.hasher.seen, sorted(code), started_ns, databases)
    if paths is None:
        return None
    return {"snap": paths, "run": {"pipeline": p.name, "started": run_started}}


@contextmanager
def _linking(store: Store, link: bool | None) -> Iterator[None]:
    """Link outputs and objects for one build (``link``; None: env ``PIPEMAKE_LINK``): the
    store restores by links, and tasks store their outputs by links (``Task.link``)."""
    if link is None:
        link = os.environ.get("PIPEMAKE_LINK", "").strip().lower() in ("1", "true", "yes", "on")
    old = store.link
    store.link, store.can_link = link, True
    try:
        yield
    finally:
        store.link = old


@contextmanager
def _durable(store: Store, fsync: bool) -> Iterator[None]:
    """Flush the store's objects and commits to disk for one build (``--fsync``)."""
    old = store.fsync
    store.set_fsync(old or fsync)
    try:
        yield
    finally:
        store.set_fsync(old)


def _budget(p: Pipeline, order: list[str], overrides: Mapping[str, float] | None) -> Budget:
    total, gpu_ids = default_budget()
    total.update(overrides or {})
    budget = Budget(total, gpu_ids)
    problems = []
    for s in order:
        big = budget.too_big(p.stages[s].resources)
        if big:
            asked = ", ".join(f"{n}={p.stages[s].resources[n]:g}" for n in big)
            have = ", ".join(f"{n}={total[n]:g}" for n in big)
            problems.append(Problem(
                f"requests {asked}, more than the build's budget ({have})", str(p.file),
                p.stages[s].line, s, hint="lower the request or raise it with --resources",
            ))  # fmt: skip
    if problems:
        raise PipelineError(problems)
    return budget


def _expected(project: Project, order: list[str]) -> dict[str, float]:
    """Each stage's expected duration: its last duration (1 s when never built)."""
    brief = project.state.brief()
    return {s: float((brief.get(s) or (None, None, None))[2] or 1.0) for s in order}


def _report(builder: Builder, outcome: Outcome, duration: float) -> BuildReport:
    report = BuildReport(
        failed=dict(outcome.failed), skipped=dict(outcome.skipped), duration=duration
    )
    for stage in outcome.done:
        verdict = builder.decisions[stage].verdict.value
        {"up to date": report.up_to_date, "restore": report.restored}.get(
            verdict, report.ran
        ).append(stage)
    return report


def dry_run(project: Project, targets: Sequence[str] = ()) -> list[tuple[str, Decision]]:
    """What a build would do to each stage, and why; changes nothing."""
    p = project.pipeline
    order = _select(p, targets)
    builder = Builder(p, project.store, project.state, Bus(), dry=True)
    builder.prefetch(order)
    for stage in order:
        try:
            builder.begin(stage)
        except StageFailure as exc:  # what the build would fail the stage with, said here
            builder.decisions[stage] = Decision(
                Verdict.RUN, [Reason(Trigger.FAILED, f"will fail: {exc}")]
            )
    return [(s, builder.decisions[s]) for s in order]


def orphans(project: Project) -> list[str]:
    """Output paths earlier builds placed that no current stage owns and that still exist."""
    current = {out for st in project.pipeline.stages.values() for out in st.ports.outputs.values()}
    root = project.pipeline.root
    return sorted(
        path for path in project.state.placed()
        if path not in current and (root / path).exists()
    )  # fmt: skip


def status(project: Project) -> dict[str, Any]:
    """Each stage's state (up to date, stale and why, never built, failed), its last result
    and duration, and orphaned outputs."""
    records = project.state.records()
    stages = []
    for stage, decision in dry_run(project):
        rec = records.get(stage) or {}
        if rec.get("result") in ("failed", "interrupted"):
            state = rec["result"]
        elif decision.verdict.value == "up to date":
            state = "up to date"
        elif not rec:
            state = "never built"
        else:
            state = "stale"
        stages.append({
            "stage": stage, "state": state, "decision": decision.verdict.value,
            "reasons": [str(r) for r in decision.reasons],
            "last_result": rec.get("result"), "last_duration": rec.get("duration"),
            "last_error": rec.get("error"),
        })  # fmt: skip
    return {"stages": stages, "orphans": orphans(project)}


def validate(project: Project) -> list[dict[str, Any]]:
    """The execution plan of a checked pipeline: stages in order with rules and needs, and
    what each rule says about the stage before it runs (such as the model file it loads)."""
    p = project.pipeline
    notes = stage_notes(project)
    return [
        {"stage": s, "rule": p.stages[s].type, "needs": p.graph.deps[s],
         "outputs": p.stages[s].ports.outputs, "notes": notes[s]}
        for s in p.graph.topo_order()
    ]  # fmt: skip


def stage_notes(project: Project) -> dict[str, list[str]]:
    """Per stage, the facts its rule gives before it runs (``Rule.describe``)."""
    return {sid: st.rule.describe(st.ports) for sid, st in project.pipeline.stages.items()}


def graph(project: Project, fmt: str = "text") -> str:
    """The DAG as text, Mermaid or Graphviz dot."""
    p = project.pipeline
    if fmt not in ("text", "mermaid", "dot"):
        raise UsageError(f"unknown graph format {fmt!r} (text, mermaid, dot)")
    return p.graph.render(fmt, {s: st.type for s, st in p.stages.items()})


def list_runs(project: Project) -> list[dict[str, Any]]:
    """Past builds, oldest first: start, duration, result, counts of stages run, restored,
    up to date, skipped and failed."""
    return history.list_runs(project.workspace.dot / "runs")


def show_log(project: Project, run: str | None = None) -> dict[str, Any]:
    """One run's summary and events (the last run by default; ``run`` is an id, a prefix of
    one, or a negative index such as ``-2``)."""
    summary, events = history.read_run(project.workspace.dot / "runs", run)
    return {"run": summary, "events": events}


def list_stages(project: Project) -> list[dict[str, Any]]:
    """Every stage with its rule, dependencies and outputs."""
    return validate(project)


def clean(project: Project, targets: Sequence[str] = (), orphans_only: bool = False) -> list[str]:
    """Remove outputs from the workspace (the store keeps them, so a build restores them)."""
    with BuildLock(project.workspace.dot / "lock", 0):
        if orphans_only:
            paths = orphans(project)
        else:
            order = _select(project.pipeline, targets) if targets else list(project.pipeline.stages)
            paths = [
                rel for s in order for rel in project.pipeline.stages[s].ports.outputs.values()
            ]
        removed = [rel for rel in paths if project.workspace.remove(rel)]
        if orphans_only:
            project.state.forget_placed(paths)
    return removed


def cache_info(project: Project) -> dict[str, Any]:
    """Where the store is and how much it holds."""
    objects = 0
    size = 0
    for digest in project.store.iter_objects():
        objects += 1
        size += project.store.object_path(digest).stat().st_size
    entries = sum(1 for _ in project.store.actions())
    return {"path": str(project.store.path), "objects": objects, "bytes": size, "entries": entries}


def cache_gc(project: Project, keep_days: float = 7.0, dry: bool = False) -> dict[str, Any]:
    """Remove what the current pipeline does not need: entries that are neither the keys
    this workspace would use now, nor a stage's last build, nor younger than ``keep_days``
    (so switching back to recent params still restores), and objects no kept entry names.

    With a ``--cache-dir`` shared by several workspaces, the age window is what protects
    the others' entries: run it where their builds are recent, or with a longer window.
    """
    p = project.pipeline
    with BuildLock(project.workspace.dot / "lock", 0):
        builder = Builder(p, project.store, project.state, Bus(), dry=True, collect_keys=True)
        order = p.graph.topo_order()
        builder.prefetch(order)
        for stage in order:
            builder.begin(stage)
        keep = set(builder.keys_seen)
        keep.update(k for k, _r, _d in project.state.brief().values() if k)
        horizon = time.time() - keep_days * 86400
        created = project.store.created()
        drop = [k for k, t in created.items() if k not in keep and t < horizon]
        dropped = set(drop)
        referenced: set[str] = set()
        for key, entry in project.store.actions():
            if key in dropped:
                continue
            for manifest in entry.get("outputs", {}).values():
                if manifest.get("kind") == "file":
                    referenced.add(manifest["hash"])
                else:
                    referenced.update(e[1] for e in manifest.get("entries", []))
            if "map" in entry:
                referenced.add(entry["map"]["hash"])
        unused = [d for d in project.store.iter_objects() if d not in referenced]
        freed = sum(project.store.object_path(d).stat().st_size for d in unused)
        stale = project.store.stale_temporaries(time.time() - 3600)
        if not dry:
            project.store.delete_actions(drop)
            for digest in unused:
                project.store.remove_object(digest)
            for path in stale:
                path.unlink(missing_ok=True)
    return {"entries_removed": len(drop), "entries_kept": len(created) - len(drop),
            "objects_removed": len(unused), "bytes_freed": freed, "dry_run": dry}  # fmt: skip


def cache_verify(project: Project) -> dict[str, Any]:
    """Check every object against its hash (removing corrupt ones) and every entry's objects."""
    corrupt = []
    for digest in project.store.iter_objects():
        if project.store.verify_object(digest) is False:
            corrupt.append(digest)
            project.store.remove_object(digest)
    incomplete = []
    for key, entry in project.store.actions():
        for manifest in entry.get("outputs", {}).values():
            hashes = (
                [manifest["hash"]]
                if manifest.get("kind") == "file"
                else [e[1] for e in manifest.get("entries", [])]
            )
            if any(not project.store.has_object(h) for h in hashes):
                incomplete.append(key)
                break
    return {"corrupt": corrupt, "incomplete_entries": incomplete}


@contextmanager
def project_of(
    directory: Any, file: Any, cache_dir: Any = None, readonly: bool = False
) -> Iterator[Project]:
    """Open a project for the length of a ``with`` block."""
    project = open_project(directory, file, cache_dir, readonly)
    try:
        yield project
    finally:
        project.close()

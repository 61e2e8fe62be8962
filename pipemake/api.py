"""One function per command: what the CLI (or a Python user) calls.

Each opens the project (pipeline file, store, workspace state), does one thing and returns
plain data; printing is the caller's business.
"""

from __future__ import annotations

import difflib
import os
import posixpath
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import history, uptodate
from .build import Builder
from .decide import Decision, Reason, Trigger, Verdict
from .errors import (
    BuildFailed,
    Interrupted,
    PipelineError,
    Problem,
    StoreError,
    UsageError,
)
from .events import Bus
from .executors import get_executor
from .fshash import Hasher
from .hooks import StageTimes, run_hooks, run_summary
from .items import glob_base, is_glob
from .lock import BuildLock
from .model import DEFAULT_FILE, Pipeline
from .plancache import load_checked
from .resources import Budget, default_budget
from .rule import Rule, package_files
from .scheduler import Outcome, Scheduler, StageFailure
from .state import WorkspaceState
from .store import GRACE, Store
from .walk import BadPath
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
    "find_pipeline",
    "graph",
    "list_runs",
    "list_stages",
    "open_project",
    "run_status",
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


#: the pipeline file looked for, in this order: pipemake's, then the original system's
PIPELINE_FILES = (DEFAULT_FILE, "pipeline.yaml")


def find_pipeline(
    directory: str | os.PathLike[str] | None = None,
    file: str | os.PathLike[str] | None = None,
) -> tuple[Path, bool]:
    """The pipeline file ``-C DIR`` and ``-f FILE`` name, and whether it was looked up.

    Without ``file`` (or when it is a directory) the file is looked up there:
    ``pipemake.yaml``, else the original system's ``pipeline.yaml``.
    """
    base = Path(directory) if directory else Path.cwd()
    path = Path(file) if file else Path()
    if not path.is_absolute():
        path = base / path
    if file and not path.is_dir():
        return path, False
    for name in PIPELINE_FILES:
        if (path / name).is_file():
            return path / name, True
    rel = os.path.relpath(path)
    shown = str(path.resolve()) if rel == "." or rel.startswith("..") else rel
    raise PipelineError([Problem(
        f"no pipeline file here (looked for {' and '.join(PIPELINE_FILES)} in {shown})",
        hint=f"create {DEFAULT_FILE}, or pass -f FILE / -C DIR to point at one",
    )])  # fmt: skip


def open_project(
    directory: str | os.PathLike[str] | None = None,
    file: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    readonly: bool = False,
) -> Project:
    """Load the pipeline (``-C DIR``, ``-f FILE``; see :func:`find_pipeline`) and open its
    store and state."""
    path, _ = find_pipeline(directory, file)
    pipeline = load_checked(path, path.parent / ".pipemake")
    ws = Workspace(pipeline.root)
    cache = cache_dir or os.environ.get("PIPEMAKE_CACHE_DIR") or ws.dot / "store"
    cache = Path(cache)
    if not cache.is_absolute():
        cache = Path.cwd() / cache
    _check_places(pipeline, ws, cache)
    store = Store(cache, readonly=readonly)
    return Project(pipeline, store, WorkspaceState(ws.dot / "state.db", readonly), ws)


def _check_places(pipeline: Pipeline, ws: Workspace, cache: Path) -> None:
    """Refuse, before anything runs, an output that lies in ``.pipemake`` or in the store,
    or that holds the store (a ``--cache-dir`` inside an output): each build replaces an
    output whole, so the store would be wiped with it. Paths are compared as resolved."""
    dot, store = os.path.realpath(ws.dot), os.path.realpath(cache)
    problems: list[Problem] = []
    for st in pipeline.stages.values():
        for name, rel in st.ports.outputs.items():
            out = os.path.realpath(pipeline.root / rel)
            if _inside(out, dot) or _inside(dot, out):
                what, hint = f"overlaps pipemake's own folder {ws.dot}", "choose another path"
            elif _inside(store, out):
                what = f"holds the store {cache}: every build of it would wipe the store"
                hint = "keep --cache-dir (PIPEMAKE_CACHE_DIR) outside every output"
            elif _inside(out, store):
                what = f"lies inside the store {cache}"
                hint = "keep --cache-dir (PIPEMAKE_CACHE_DIR) outside every output"
            else:
                continue
            line = st.lines.get(name, st.line) or None
            problems.append(Problem(f"output {name!r} ({rel}) {what}", _shown(pipeline.file),
                                    line, st.id, hint))  # fmt: skip
    if problems:
        raise PipelineError(problems)


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(os.path.join(parent, ""))


def _shown(file: Path) -> str:
    rel = os.path.relpath(file)
    return str(file) if rel.startswith("..") else rel


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
    times = StageTimes()  # each stage's run time, for the hooks' messages
    bus.subscribe(times)
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
            "per_item": {s: t for s, t in history.per_item_times(runs).items() if s in chosen},
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
                expected={s: d for s, d in expected.items() if d is not None},
                grace=grace,
            )
            outcome = sched.run()
        project.state.flush()
        _record_roots(project, builder)
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
    summary = run_summary(p.name, runlog.run_id, started, finished, times.durations)
    run_hooks(p.on_success, p.on_failure, summary, p.root, bus)
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
    if p.file.name != DEFAULT_FILE:  # found by looking up: a pipemake.yaml would win
        code.add(str(p.file.parent / DEFAULT_FILE))
    packages = {"pipemake", "rules"}
    for stage_id in order:
        rule = p.stages[stage_id].rule
        cls = type(rule)
        if cls.code_hash is not Rule.code_hash and cls.code_files is Rule.code_files:
            return None  # its code is hashed from files it does not name
        packages.add(cls.__module__.partition(".")[0])
        code.update(rule.code_files(p.stages[stage_id].ports, p.root))
    code |= package_files(packages)  # the rules' whole packages, versions and all
    databases = [project.state.path, project.store.path / "actions.db"]
    paths = uptodate.record(p.root, builder.hasher.seen, sorted(code), started_ns, databases)
    if paths is None:
        return None
    return {"snap": paths, "run": {"pipeline": p.name, "started": run_started}}


def _record_roots(project: Project, builder: Builder) -> None:
    """Note in the store what this workspace needs (the keys its build computed, and each
    stage's last build), so ``cache gc`` run from any workspace sharing the store keeps
    them. Added to what was noted before: a build does not list the items of a stage that
    is up to date, so their keys stay from earlier records; this workspace's own ``cache
    gc`` notes exactly what it needs. Not worth failing a build over: without it the
    entries are kept by age alone."""
    up_to_date = all(d.verdict is Verdict.UP_TO_DATE for d in builder.decisions.values())
    keys = set(builder.keys_seen)
    keys.update(k for k, _r, _d in project.state.brief().values() if k)
    p = project.pipeline
    try:
        project.store.write_roots(str(p.root), str(p.file), keys, True, refresh=not up_to_date)
    except (OSError, StoreError):
        pass


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


def _expected(project: Project, order: list[str]) -> dict[str, float | None]:
    """Each stage's expected duration: its last duration, None when never built (no ETA
    counts on it; the scheduler ranks it as 1 s)."""
    brief = project.state.brief()
    known = {s: (brief.get(s) or (None, None, None))[2] for s in order}
    return {s: None if d is None else float(d) for s, d in known.items()}


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
    """Output paths earlier builds placed that still exist and that no stage reads or writes
    now: neither a current output or input, nor inside one, nor holding one (nor the
    pipeline file, ``.pipemake`` or the store). A folder that was once an output and is now
    a hand-made input of another stage is therefore never an orphan."""
    root = project.pipeline.root
    used = _paths_in_use(project)
    return sorted(
        path for path in project.state.placed()
        if _plain(path) and not any(_overlap(path, u) for u in used)
        and os.path.lexists(root / path)
    )  # fmt: skip


def _paths_in_use(project: Project) -> set[str]:
    """Every path (relative to the project root, POSIX) a current stage reads or writes,
    and pipemake's own files; a glob input stands for its fixed prefix."""
    p = project.pipeline
    root = str(p.root)
    found = [str(p.file), str(project.workspace.dot), str(project.store.path)]
    for st in p.stages.values():
        found += st.ports.outputs.values()
        for value in st.ports.inputs.values():
            for path in value if isinstance(value, list) else [value]:
                if isinstance(path, str):
                    found.append(glob_base(path) if is_glob(path) else path)
    used = set()
    for path in found:
        rel = os.path.relpath(os.path.join(root, path), root)
        if rel != ".." and not rel.startswith("../"):
            used.add(posixpath.normpath(rel.replace(os.sep, "/")))
    return used


def _plain(path: str) -> bool:
    """Whether a ledger path is a plain relative path inside the project (never ``..``)."""
    parts = path.split("/")
    return bool(path) and not os.path.isabs(path) and all(p not in ("", ".", "..") for p in parts)


def _overlap(a: str, b: str) -> bool:
    """Whether one of two relative paths is, or lies inside, the other."""
    return a == b or b == "." or a.startswith(b + "/") or b.startswith(a + "/")


def status(project: Project) -> dict[str, Any]:
    """Each stage's state (up to date, stale and why, never built, failed), its last result
    and duration, and orphaned outputs."""
    records = project.state.records()
    live = history.running_run(project.workspace.dot / "runs")
    now = _run_stages(live[1]) if live else {}
    stages = []
    for stage, decision in dry_run(project):
        rec = records.get(stage) or {}
        if now.get(stage) == "running":  # what the store says is being rewritten right now
            state = "running"
        elif decision.verdict.value == "up to date":  # a failed run since was of other inputs
            state = "up to date"
        elif rec.get("result") in ("failed", "interrupted"):
            state = rec["result"]
        elif not rec and decision.verdict.value != "restore" and not _some_cached(decision):
            state = "never built"
        else:
            state = "stale"
        reasons = [str(r) for r in decision.reasons]
        if state == "running":  # the reasons of a decision the running build is acting on
            reasons = ["in the build running now"]
        elif state == "stale" and not rec:  # some items are in the store: built in part
            reasons = [r for r in reasons if r != "never built"]
        elif state == "up to date" and rec.get("result") in ("failed", "interrupted"):
            reasons = [
                f"its last run {rec['result']}, with inputs, params or code changed back since"
            ]
        stages.append({
            "stage": stage, "state": state, "decision": decision.verdict.value,
            "reasons": reasons,
            "last_result": rec.get("result"), "last_duration": rec.get("duration"),
            "last_restored": bool(rec.get("restored")),
            "last_error": rec.get("error"),
        })  # fmt: skip
    building = None
    if live:
        left = {s: v for s, v in now.items() if v in ("running", "pending")}
        building = {"run": live[0]["id"], "started": live[0].get("started"), "stages": left}
    return {"stages": stages, "orphans": orphans(project), "building": building}


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


#: a stage's state in a run, by its last event
_RUN_STATES = {"stage_started": "running", "stage_finished": "done",
               "stage_restored": "restored", "stage_failed": "failed"}  # fmt: skip
_COMPLETE = ("done", "restored", "up to date")


def _some_cached(decision: Decision) -> bool:
    """Whether the store holds some of a foreach stage's items (a first build stopped
    halfway, say): then the stage is not "never built"."""
    return bool((decision.items or {}).get("cached"))


def _run_stages(events: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Each stage's state in a run, by its last event: pending, running, done, restored,
    up to date, skipped, failed."""
    stages: dict[str, str] = {}
    for ev in events:
        kind, stage = ev.get("event"), ev.get("stage")
        if kind == "run_started":
            stages = dict.fromkeys(ev.get("stages") or [], "pending")
        elif stage and kind in _RUN_STATES:
            stages[stage] = _RUN_STATES[kind]
        elif stage and kind == "stage_skipped":
            stages[stage] = "up to date" if ev.get("reason") == "up to date" else "skipped"
        elif stage and kind == "stage_cancelled":
            stages[stage] = "skipped"
    return stages


def run_status(project: Project, run: str | None = None) -> dict[str, Any]:
    """One build's status (the original system's ``status --pipeline-id``): its state
    (``completed``, ``failed``, ``interrupted``, ``running``, or ``incomplete`` when it was
    killed), progress, counts and each stage's state. ``run`` is an id from
    :func:`list_runs`, a prefix of one, or a negative index (default: the last)."""
    summary, events = history.read_run(project.workspace.dot / "runs", run)
    stages = _run_stages(events)
    result = summary.get("result")
    state = {"ok": "completed", "failed": "failed", "interrupted": "interrupted"}.get(result)
    if state is None:  # list_runs said whether the build is still at it
        state = "running" if result == "running" else "incomplete"
    done = sum(1 for v in stages.values() if v in _COMPLETE)
    counts = {v: sum(1 for x in stages.values() if x == v) for v in ("done", "restored")}
    return {
        "id": summary["id"], "pipeline": summary.get("pipeline"), "state": state,
        "started": summary.get("started"), "duration": summary.get("duration"),
        "completed": done, "total": len(stages),
        "progress": 100.0 * done / len(stages) if stages else 100.0,
        "ran": counts["done"], "restored": counts["restored"],
        "up_to_date": sum(1 for v in stages.values() if v == "up to date"),
        "stages": stages, "failed": dict(summary.get("failed") or {}),
    }  # fmt: skip


def show_log(project: Project, run: str | None = None) -> dict[str, Any]:
    """One run's summary and events (the last run by default; ``run`` is an id, a prefix of
    one, or a negative index such as ``-2``)."""
    summary, events = history.read_run(project.workspace.dot / "runs", run)
    return {"run": summary, "events": events}


def list_stages(project: Project) -> list[dict[str, Any]]:
    """Every stage with its rule, dependencies and outputs."""
    return validate(project)


def clean(
    project: Project,
    targets: Sequence[str] = (),
    orphans_only: bool = False,
    with_deps: bool = False,
    confirm: Callable[[str], bool] | None = None,
) -> list[str]:
    """Remove outputs from the workspace (the store keeps them, so a build restores them);
    returns the paths removed.

    ``targets``: those stages' own outputs, as ``make clean`` and ``dvc remove`` touch only
    what they name (``with_deps``: their upstream stages' too); none: every stage's.
    ``orphans_only``: what earlier builds placed that no stage reads or writes now (see
    :func:`orphans`). An orphan that is not byte-identical to what pipemake last wrote
    there (edited, or pipemake can no longer tell) is removed only if ``confirm(path)``
    says so; without ``confirm`` it is kept. Symlinks are removed as links, never followed.
    """
    if orphans_only and targets:
        raise UsageError("`clean --orphans` takes no targets: it removes every orphan")
    with BuildLock(project.workspace.dot / "lock", 0):
        if orphans_only:
            placed = project.state.placed()
            paths = [
                path for path in orphans(project)
                if _as_written(project, path, placed.get(path))
                or (confirm is not None and confirm(path))
            ]  # fmt: skip
        else:
            p = project.pipeline
            chosen = _select(p, targets) if targets else list(p.stages)  # unknown: exit 2
            if targets and not with_deps:
                chosen = list(dict.fromkeys(targets))
            paths = [rel for s in chosen for rel in p.stages[s].ports.outputs.values()]
        removed = [rel for rel in paths if project.workspace.remove(rel)]
        if orphans_only:
            project.state.forget_placed(removed)
    return removed


def _as_written(project: Project, path: str, owner: tuple[str, str] | None) -> bool:
    """Whether the orphan ``path``, placed by ``owner`` (stage, output name), is exactly
    what pipemake last placed there: the manifest of that stage's last build, from the
    store."""
    record = project.state.record(owner[0]) if owner else None
    key = record.get("key") if isinstance(record, dict) else None
    entry = project.store.get_action(key) if isinstance(key, str) else None
    outputs = entry.get("outputs") if isinstance(entry, dict) else None
    manifest = outputs.get(owner[1]) if isinstance(outputs, dict) and owner else None
    if not isinstance(manifest, dict) or manifest.get("kind") not in ("file", "dir"):
        return False
    hasher = Hasher(str(project.pipeline.root))
    try:
        return project.workspace.check(manifest, path, hasher) is None
    except (OSError, BadPath, KeyError, TypeError, ValueError):
        return False


def cache_info(project: Project) -> dict[str, Any]:
    """Where the store is and how much it holds."""
    scan = project.store.scan()
    entries = sum(1 for _ in project.store.rows())
    size = sum(st.st_size for _d, st in scan.objects)
    return {"path": str(project.store.path), "objects": len(scan.objects), "bytes": size,
            "entries": entries, "strays": len(scan.strays)}  # fmt: skip


def _digests(entry: dict[str, Any]) -> Iterator[str]:
    """The objects a (well-formed) entry names."""
    for manifest in entry.get("outputs", {}).values():
        if manifest["kind"] == "file":
            yield manifest["hash"]
        else:
            for e in manifest["entries"]:
                yield e[1]
    if "map" in entry:
        yield entry["map"]["hash"]


def _needed(project: Project) -> set[str]:
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
    keep.update(k for k, _r, _d in project.state.brief().values() if k)
    return keep


def cache_gc(
    project: Project, keep_days: float = 7.0, dry: bool = False, grace: float = GRACE
) -> dict[str, Any]:
    """Remove what no workspace sharing the store needs: entries that are neither the keys
    this workspace would use now, nor a stage's last build, nor in another workspace's
    roots (what its last build noted), nor younger than ``keep_days`` (so switching back to
    recent params still restores); then objects no kept entry names.

    Nothing younger than ``grace`` seconds goes, whatever ``keep_days`` says: a build on the
    same store may have written objects and not yet committed the entry that names them.
    Links, directories or other things that are not objects are removed as names inside the
    store, never followed. Roots of workspaces whose pipeline file is gone are dropped once
    older than ``grace``.
    """
    store = project.store
    with BuildLock(project.workspace.dot / "lock", 0):
        keep = _needed(project)
        if not dry:
            p = project.pipeline
            store.write_roots(str(p.root), str(p.file), keep, merge=False)
        roots = store.roots(grace, prune=not dry)
        keep |= roots.keys
        now = time.time()
        horizon = min(now - keep_days * 86400, now - grace)
        created = store.created()
        drop = [k for k, t in created.items() if k not in keep and t < horizon]
        dropped = set(drop)
        referenced: set[str] = set()
        damaged = 0
        for key, entry, _problem in store.rows():
            if key in dropped:
                continue
            if entry is None:
                damaged += 1
            else:
                referenced.update(_digests(entry))
        scan = store.scan()
        young = now - grace
        unused = [
            (d, st)
            for d, st in scan.objects
            if d not in referenced and max(st.st_ctime, st.st_mtime) < young
        ]
        stale = [t for t in scan.temporaries if t[2].st_mtime < young]
        removed = [d for d, _st in unused]
        if not dry:
            store.delete_actions(drop)
            removed = [d for d, _st in unused if store.remove_object(d, older_than=young)]
            for fan, name, _st in stale:
                store.remove_temporary(fan, name)
            for rel, _what in scan.strays:
                store.remove_stray(rel)
        sizes = dict(unused)
        freed = sum(sizes[d].st_size for d in removed)
    return {"entries_removed": len(drop), "entries_kept": len(created) - len(drop),
            "objects_removed": len(removed), "bytes_freed": freed, "dry_run": dry,
            "damaged_entries": damaged, "strays": [rel for rel, _w in scan.strays],
            "workspaces": len(roots.workspaces)}  # fmt: skip


def cache_verify(project: Project, repair: bool = False) -> dict[str, Any]:
    """Check the store: every object against its hash (a corrupt one is removed), every
    entry's shape and objects, the roots records, and anything in the objects directory
    that is not an object (a link is named, never followed).

    With ``repair``, what is damaged goes: damaged rows, entries whose objects are missing,
    strays, damaged roots records, and an action cache SQLite cannot read (deleted: it is
    only a cache). Without it, an unreadable action cache is a :class:`StoreError` saying so.
    """
    store = project.store
    reset = False
    try:
        rows = list(store.rows())
    except StoreError:
        if not repair:
            raise
        store.reset_actions()
        reset, rows = True, []
    scan = store.scan()
    corrupt = [d for d, _st in scan.objects if store.verify_object(d) is False]
    damaged = [(key, problem or "") for key, entry, problem in rows if entry is None]
    incomplete = [
        key
        for key, entry, _p in rows
        if entry is not None and not all(store.has_object(d) for d in _digests(entry))
    ]
    roots = store.roots(GRACE)
    strays = list(scan.strays) + [(rel, "a damaged roots record") for rel in roots.damaged]
    if repair:
        store.delete_actions([key for key, _p in damaged] + incomplete)
        for rel, _what in scan.strays:
            store.remove_stray(rel)
        if roots.damaged:
            store.roots(0, prune=True)
    return {"corrupt": corrupt, "incomplete_entries": incomplete,
            "damaged_entries": [(repr(k) if type(k) is not str else k, p) for k, p in damaged],
            "strays": strays, "reset": reset, "repaired": repair}  # fmt: skip


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

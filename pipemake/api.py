"""One function per command: what the CLI (or a Python user) calls.

Each opens the project (pipeline file, store, workspace state), does one thing and returns
plain data; printing is the caller's business.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import signal
import sqlite3
import stat
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import cachegc, history, lockfile, noop, starter, storeplace, svg
from .accept import Accepted, accept
from .build import Builder
from .decide import Decision, Reason, Trigger, Verdict, from_lock
from .errors import (
    BuildFailed,
    Interrupted,
    PipelineError,
    PipemakeError,
    Problem,
    Problems,
    StoreError,
    UsageError,
    current_folder,
)
from .eta import Estimator
from .events import Bus, Event
from .executors import executor_names, get_executor, runs_here
from .executors.base import Executor
from .finding import PIPELINE_FILES, find_above
from .fingerprint import code_files
from .fshash import Hasher
from .hooks import StageTimes, run_hooks, run_summary
from .items import glob_base, is_glob
from .lock import BuildLock
from .manifest import digests
from .model import DEFAULT_FILE, Pipeline, within
from .params import parse_overrides
from .pipeline import input_place_problems
from .plancache import load_checked
from .project import Project
from .resources import Budget, default_budget
from .rule import Rule
from .scheduler import STOPPED, Outcome, Scheduler, StageFailure
from .state import NEVER, WorkspaceState
from .store import GRACE, MARKER, NOT_A_FOLDER, REMOTE_GRACE, Store, not_a_store
from .targets import resolve_targets
from .walk import BadPath
from .workspace import Workspace

if TYPE_CHECKING:  # the remote's modules load only where a remote is used
    from .remote import Remote

__all__ = [
    "BuildOptions",
    "BuildReport",
    "Project",
    "build",
    "cache_gc",
    "cache_info",
    "cache_verify",
    "clean",
    "commit",
    "dry_run",
    "find_pipeline",
    "forced_unneeded",
    "graph",
    "init",
    "list_runs",
    "list_stages",
    "open_project",
    "run_build",
    "pull",
    "push",
    "remote_gc",
    "remote_warnings",
    "run_status",
    "show_log",
    "stage_notes",
    "status",
    "target_names",
    "validate",
]


def find_pipeline(
    directory: str | os.PathLike[str] | None = None,
    file: str | os.PathLike[str] | None = None,
) -> tuple[Path, bool]:
    """The pipeline file ``-C DIR`` and ``-f FILE`` name, and whether it was looked up.

    Without ``file`` (or when it is a directory) the file is looked up there:
    ``pipemake.yaml``, else the original system's ``pipeline.yaml``; with neither
    ``directory`` nor ``file``, then in the folders above (see
    :func:`~pipemake.project.find_above`).
    """
    base = Path(directory) if directory else Path(current_folder())
    path = Path(file) if file else Path()
    if not path.is_absolute():
        path = base / path
    if not path.is_absolute():
        current_folder()  # a path relative to a removed folder: say that it is gone
    if file and not path.is_dir():
        return path, False
    for name in PIPELINE_FILES:
        if (path / name).is_file():
            return path / name, True
    above = None if directory or file else find_above(base, PIPELINE_FILES)
    if above is not None:
        return above, True
    rel = os.path.relpath(path)
    shown = str(path.resolve()) if rel == "." or rel.startswith("..") else rel
    searched = "" if directory or file else " and the folders above it"
    raise PipelineError([Problem(
        f"no pipeline file here (looked for {' and '.join(PIPELINE_FILES)} in {shown}"
        f"{searched})",
        hint=f"create {DEFAULT_FILE}, or pass -f FILE / -C DIR to point at one",
    )])  # fmt: skip


def open_project(
    directory: str | os.PathLike[str] | None = None,
    file: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    readonly: bool = False,
    overrides: Sequence[str] = (),
    *,
    base: str | os.PathLike[str] | None = None,
    remember: bool = False,
    note: Callable[[str], None] | None = None,
    remote: str | None = None,
    remote_read_only: bool = False,
    told_by: str | None = None,
    targets: Sequence[str] | None = None,
) -> Project:
    """Load the pipeline (``-C DIR``, ``-f FILE``; see :func:`find_pipeline`) and open its
    store and state. ``overrides`` are ``--set`` values (``vars.NAME=VALUE``,
    ``params.KEY=VALUE``): for this project only, as if the files said so.

    The store is ``cache_dir`` (else ``PIPEMAKE_CACHE_DIR``; relative to ``base``, else
    ``directory``, else the current directory, as ``-f`` is), else the one this workspace
    remembers, else ``.pipemake/store`` (see :mod:`pipemake.storeplace`). With
    ``remember`` (what a build does), a store told is remembered from now on, once it has
    opened (a store refused or failing to open is never remembered); ``note``
    hears when a store told differs from the one remembered.

    The remote is ``remote``, else env ``PIPEMAKE_REMOTE``, else the pipeline's
    ``remote:`` (a plain path there is relative to the project); it is contacted only when
    used. ``told_by`` names where ``cache_dir`` came from (the option the user typed, such
    as ``--checkpoint-dir``), for messages about it. ``targets`` (of build, dry-run, status)
    let a missing source input of a stage they do not need pass with a warning to ``note``."""
    path, _ = find_pipeline(directory, file)
    pipeline = load_checked(path, path.parent / ".pipemake", parse_overrides(overrides),
                            targets=targets, warn=note)  # fmt: skip
    ws = Workspace(pipeline.root)
    told = cache_dir or os.environ.get("PIPEMAKE_CACHE_DIR") or None
    where = Path(base or directory or Path.cwd())
    record = remember and not readonly
    place = storeplace.choose(told, where.absolute(), ws.dot, pipeline.root, record, note)
    told_by = (told_by or "--cache-dir") if cache_dir else "PIPEMAKE_CACHE_DIR"
    _check_store_way(place, told_by, ws)
    _check_store_folder(place, told_by, ws)
    _check_places(pipeline, ws, place.path)
    store = Store(place.path, readonly=readonly)
    if place.to_remember:
        store.db  # noqa: B018 - opened (made, marked) first: only a store that opens is remembered
        storeplace.remember(ws.dot, pipeline.root, place.path)
    state = WorkspaceState(ws.dot / "state.db", readonly)
    url = _remote_url(remote or os.environ.get("PIPEMAKE_REMOTE"), where.absolute())
    remembered = storeplace.read_remote(ws.dot)
    told_new = url is not None and url != remembered
    if told_new and remembered is not None and note is not None:
        then = "remembering it if this build succeeds" if record else "for this command only"
        note(f"pipemake: this workspace's remote was {remembered}; using {url} as told, "
             f"{then}")  # fmt: skip
    url = url or remembered or _remote_url(pipeline.remote, pipeline.root)
    remote_store = None
    if url:
        from .remote import open_remote

        remote_store = open_remote(url, read_only=remote_read_only)
    later = url if told_new and record else None
    return Project(pipeline, store, state, ws, remote_store, later)


def _remote_url(url: str | None, base: Path) -> str | None:
    """A remote URL as fsspec takes it: a plain path is made absolute against ``base``."""
    if not url or not url.strip():
        return None
    url = url.strip()
    if "://" in url:
        scheme, _, rest = url.partition("://")
        # file:// alone would be the current folder; s3:///pm names no bucket
        if not rest.strip("/") or (scheme.lower() in _BUCKETS and rest.startswith("/")):
            raise UsageError(
                f"remote {url!r} names no folder or bucket; give one, e.g. file:///srv/cache "
                "or s3://bucket/cache"
            )
        return url
    name, colon, rest = url.partition(":")
    if colon and name.lower() in _remote_schemes():  # "s3:/bucket", "file:/srv": mistyped
        path = rest.lstrip("/")
        fixed = f"{name}:///{path}" if name.lower() in ("file", "local") else f"{name}://{path}"
        raise UsageError(f"remote {url!r} is not a URL nor a folder; did you mean {fixed!r}?")
    return str(base / os.path.expanduser(url))


#: URL schemes whose first name after ``://`` is a bucket or container
_BUCKETS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"})


def _remote_schemes() -> set[str]:
    """The URL schemes fsspec knows (imported only when a remote is named)."""
    from fsspec.registry import known_implementations

    return set(known_implementations)


def _check_store_folder(place: storeplace.Place, told_by: str, ws: Workspace) -> None:
    """Refuse (exit 2) a store that names a folder of the user's: one that exists, is not
    empty and is not a pipemake store (see :func:`pipemake.store.not_a_store`). Taken
    over, its files would be removed as strays by ``cache verify --repair`` and ``gc``."""
    why = not_a_store(place.path)
    if why is None:
        return
    how = {"told": f"given by {told_by}", "remembered": f"remembered in {ws.dot / storeplace.FILE}"}
    fix = (
        "build with --cache-dir DIR (run: --checkpoint-dir DIR) naming a new or empty "
        "folder, or a pipemake store, to use and remember another"
        if place.how == "remembered"
        else f"give {told_by} a new or empty folder, or the path of a pipemake store"
        if place.how == "told"
        else f"move the files out of it, or delete {place.path}"
    )
    named = f"the store {place.path} ({how.get(place.how, 'the default')}) {why}"
    if why == NOT_A_FOLDER:
        raise UsageError(f"{named}: {fix}")
    raise UsageError(
        f"{named}; pipemake will not "
        f"take it over (`cache verify --repair` and `cache gc` would remove files there it "
        f"does not recognise): {fix}. If it is a store an older pipemake made, create an "
        f"empty file named {MARKER} in it."
    )


#: the name's start of the scratch store ``run --no-checkpoint`` makes in ``.pipemake``
SCRATCH_PREFIX = "no-checkpoint-"


def _check_store_way(place: storeplace.Place, told_by: str, ws: Workspace) -> None:
    """Refuse (exit 2), before anything runs or is remembered, a store that cannot be made
    or would not last: one reached through a symbolic link that leads nowhere (a dangling
    link, a loop), or one inside pipemake's own folder other than its default store
    (``.pipemake/tmp`` is emptied by every build)."""
    how = {"told": f"given by {told_by}", "remembered": f"remembered in {ws.dot / storeplace.FILE}"}
    named = f"the store {place.path} ({how.get(place.how, 'the default')})"
    other = (
        f"give {told_by} another folder"
        if place.how == "told"
        else "build with --cache-dir DIR naming another folder, to use and remember it"
    )
    dead = storeplace.dead_link(place.path)
    if dead is not None:
        link, target, why = dead
        at = "is" if link == Path(os.path.abspath(place.path)) else f"lies under {link},"
        if why == "file":
            raise UsageError(f"{named} lies under {link}, which is a file, not a folder: {other}")
        if why == "loop":
            raise UsageError(
                f"{named} {at} a symbolic link in a loop (it leads to {target}, which leads "
                f"back to it): fix the link, or {other}"
            )
        raise UsageError(
            f"{named} {at} a symbolic link to {target}, which does not exist (a disk not "
            f"mounted, a folder moved?): create or mount what it leads to, or {other}"
        )
    store, dot = os.path.realpath(place.path), os.path.realpath(ws.dot)
    default = os.path.realpath(ws.dot / "store")
    # `run --no-checkpoint`'s scratch store, made there (and removed) by pipemake itself
    scratch = os.path.dirname(store) == dot and os.path.basename(store).startswith(SCRATCH_PREFIX)
    if store != default and not scratch and within(store, dot):
        where = "is" if store == dot else "lies in"
        raise UsageError(
            f"{named} {where} pipemake's own folder {ws.dot}, whose files pipemake replaces "
            f"and removes ({ws.dot / 'tmp'} is emptied by every build): the store would be "
            f"lost; {other} outside {ws.dot} (or {ws.dot / 'store'}, the default store)"
        )


def _check_places(pipeline: Pipeline, ws: Workspace, cache: Path) -> None:
    """Refuse, before anything runs, an output that lies in ``.pipemake`` or in the store,
    or that holds the store (a ``--cache-dir`` inside an output): each build replaces an
    output whole, so the store would be wiped with it. Paths are compared as resolved."""
    dot, store = os.path.realpath(ws.dot), os.path.realpath(cache)
    # the same paths as loading checks them, resolved here (a symlinked folder on the way)
    own = {os.path.realpath(pipeline.root / f): w for f, w in pipeline.own_files().items()}
    problems: list[Problem] = []
    for st in pipeline.stages.values():
        for name, rel in st.ports.outputs.items():
            try:
                out = os.path.realpath(pipeline.root / rel)
            except UnicodeEncodeError:  # "é" under LANG=C (Python's file names are ASCII)
                line = st.lines.get(name, st.line) or None
                enc = sys.getfilesystemencoding()
                problems.append(Problem(
                    f"output {name!r} ({rel}): this locale's encoding ({enc}) cannot write "
                    "the path's characters", _shown(pipeline.file), line, st.id,
                    "run pipemake under a UTF-8 locale (LC_ALL=C.UTF-8) or with PYTHONUTF8=1",
                ))  # fmt: skip
                continue
            if within(out, dot) or within(dot, out):
                what, hint = f"overlaps pipemake's own folder {ws.dot}", "choose another path"
            elif within(store, out):
                what = f"holds the store {cache}: every build of it would wipe the store"
                hint = "keep --cache-dir (PIPEMAKE_CACHE_DIR) outside every output"
            elif within(out, store):
                what = f"lies inside the store {cache}"
                hint = "keep --cache-dir (PIPEMAKE_CACHE_DIR) outside every output"
            elif mine := next(((f, w) for f, w in own.items() if within(f, out)), None):
                held = "is" if mine[0] == out else "holds"
                what = f"{held} {mine[1]}: building it would overwrite that"
                hint = "write the output to a path of its own, e.g. build/..."
            else:
                continue
            line = st.lines.get(name) or st.lines.get("outputs") or st.line or None
            problems.append(Problem(f"output {name!r} ({rel}) {what}", _shown(pipeline.file),
                                    line, st.id, hint))  # fmt: skip
    problems += input_place_problems(pipeline, ws.dot, cache, _shown(pipeline.file))
    if problems:
        raise PipelineError(problems)


def _restored_from(record: dict[str, Any]) -> str | None:
    """Where a stage's last restore took its outputs from (``store``, ``remote``, ``store
    and remote``); None when its last build was no restore."""
    if not record.get("restored"):
        return None
    source = record.get("restored_from")
    return source if source in ("remote", "store and remote") else "store"


def _shown(file: Path) -> str:
    rel = os.path.relpath(file)
    return str(file) if rel.startswith("..") else rel


def _select(p: Pipeline, targets: Sequence[str]) -> list[str]:
    """The stages a command on ``targets`` (ids or output paths) covers: the targets and
    every stage they need, in build order; all stages when there are no targets."""
    targets = resolve_targets(p, targets)
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
    """Turns the first SIGINT, SIGTERM or SIGHUP into a polite stop request, a second into a
    hard one. SIGHUP (the terminal closed, the ssh link dropped) stops a build as SIGTERM
    does, as GNU make treats it; it is left alone where it is ignored (``nohup``)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.count = 0
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            _gone_terminal()
        self.count += 1
        if self.received is None:
            self.received = signum

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                    continue  # `nohup`: the user asked to outlive the terminal
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _gone_terminal() -> None:
    """After a SIGHUP: point stdin, stdout and stderr at ``/dev/null`` where they are a
    terminal (the one just hung up), so the summary and the messages of the stop that
    follows go nowhere instead of failing with EIO. A file or a pipe stays as it is (a log
    someone reads later); the writers catch a pipe whose reader is gone themselves."""
    try:
        null = os.stat(os.devnull).st_rdev
    except OSError:
        return
    for fd in (0, 1, 2):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev == null:
            continue
        try:
            dev = os.open(os.devnull, os.O_RDWR)
        except OSError:
            return
        try:
            os.dup2(dev, fd)
        except OSError:
            pass
        finally:
            os.close(dev)


@dataclass(frozen=True)
class BuildOptions:
    """How to build: every option of ``pipemake build`` in one value (what :func:`build`'s
    keyword arguments make, and what :func:`run_build` takes).

    ``resources`` overrides parts of this machine's budget (cpus, gpu, mem_gb, or any name
    a stage requests); ``retries`` applies to stages that set none; ``grace`` is how long
    running stages may finish after a first Ctrl-C or SIGTERM. Every event is logged under
    ``.pipemake/runs/`` (and to ``log_json``). ``link`` (default: env ``PIPEMAKE_LINK``)
    hard-links outputs and the store's objects instead of copying them; linked outputs are
    read-only. ``fsync`` flushes every store object (and its directory entry) and every
    entry commit to disk before it counts, so the store survives a power loss, not only a
    killed build. ``noop_snapshot`` (the command's context digest and its process start in
    ns, see :mod:`pipemake.noop`) writes ``.pipemake/uptodate.json`` when every stage was
    up to date. ``on_lock_wait`` is called while another build holds the lock. A build
    that fails nothing writes ``pipemake.lock`` (when its content changed; ``lock_file``,
    default: the pipeline's ``lock_file:``), see :mod:`pipemake.lockfile`.
    ``executor_options`` go to the executor (dask: ``scheduler``, ``dashboard``). With a
    remote, a miss is fetched from it (see :mod:`pipemake.remote`); ``push`` uploads each
    entry as it commits.
    """

    targets: Sequence[str] = ()
    jobs: int = 1
    keep_going: bool = False
    force: bool = False
    force_stages: Sequence[str] = ()
    executor: str = "local"
    lock_timeout: float | None = None
    on_lock_wait: Any = None
    resources: Mapping[str, float] | None = None
    retries: int | None = None
    grace: float = 30.0
    log_json: str | os.PathLike[str] | None = None
    link: bool | None = None
    fsync: bool = False
    noop_snapshot: tuple[str, int] | None = None
    lock_file: bool | None = None
    executor_options: Mapping[str, Any] | None = None
    push: bool = False


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
    lock_file: bool | None = None,
    executor_options: Mapping[str, Any] | None = None,
    push: bool = False,
) -> BuildReport:
    """Build the targets (default: every stage) and what they need; the pipeline's hooks run
    after the build. The keyword arguments are :class:`BuildOptions`'s (see there); events
    go to ``bus`` as well as to the run log. Raises :class:`~pipemake.errors.BuildFailed`
    when a stage failed, :class:`~pipemake.errors.Interrupted` on a signal."""
    options = BuildOptions(
        targets=targets, jobs=jobs, keep_going=keep_going, force=force,
        force_stages=force_stages, executor=executor, lock_timeout=lock_timeout,
        on_lock_wait=on_lock_wait, resources=resources, retries=retries, grace=grace,
        log_json=log_json, link=link, fsync=fsync, noop_snapshot=noop_snapshot,
        lock_file=lock_file, executor_options=executor_options, push=push,
    )  # fmt: skip
    return run_build(project, options, bus)


def run_build(project: Project, options: BuildOptions, bus: Bus | None = None) -> BuildReport:
    """Build as :func:`build` does, with the options as one :class:`BuildOptions`."""
    o = options
    p = project.pipeline
    if o.push:
        _remote_of(project, write=True, why="--push")
    if o.executor not in executor_names():
        known = ", ".join(executor_names())
        raise UsageError(f"--executor: unknown executor {o.executor!r} (known: {known})")
    order = _select(p, o.targets)
    try:
        force_stages = resolve_targets(p, o.force_stages)
    except UsageError as exc:
        raise UsageError(f"--force-stage: {exc}") from None
    budget = _budget(p, order, o.resources, runs_here(o.executor))
    bus = bus or Bus()
    runs = project.workspace.dot / "runs"
    runlog = history.RunLog(runs, o.log_json, {"pipeline": p.name})
    bus.subscribe(runlog)
    times = StageTimes()  # each stage's run time, for the hooks' messages
    bus.subscribe(times)
    started = time.time()
    # the pipeline's hooks: run once the run_finished event is out, as its subscriber
    bus.subscribe(_Hooks(p, runlog, started, bus, times))
    started_ns = o.noop_snapshot[1] if o.noop_snapshot else time.time_ns()
    with (
        # first: a cluster that cannot be reached fails the build before anything is logged
        _closed_on_error(get_executor(o.executor, o.jobs, **(o.executor_options or {}))) as ex,
        BuildLock(project.workspace.dot / "lock", o.lock_timeout, o.on_lock_wait),
        _linking(project.store, o.link),
        _durable(project.store, o.fsync),
        _unsigned_said(project.store, bus),
        _with_remote(project, _warner(bus), o.push),
    ):
        project.workspace.clear_tmp()
        _sweep_leftovers(project, started)
        builder = Builder(
            p,
            project.store,
            project.state,
            bus,
            force=o.force,
            force_stages=frozenset(force_stages),
            jobs=o.jobs,
            retries=o.retries,
        )
        builder.prefetch(order)
        if o.noop_snapshot is not None:
            plain = not (o.force or o.force_stages or o.log_json or p.on_success or p.on_failure
                         or p.scoped_out)  # fmt: skip
            bus.subscribe(_Snapshot(project, builder, order, started_ns, o.noop_snapshot[0], plain))
        expected = _expected(project, order)
        chosen = set(order)
        run_started = {
            "stages": order,
            "targets": list(o.targets),
            "expected": expected,
            "deps": {s: [d for d in p.graph.deps[s] if d in chosen] for s in order},
            "budget": budget.total,
            "jobs": o.jobs,
            "per_item": {s: t for s, t in history.per_item_times(runs).items() if s in chosen},
        }
        bus.emit("run_started", None, **run_started)
        with _Signals() as sigs, ex:  # closed as soon as the schedule ends
            for level, note in getattr(ex, "notes", ()):
                bus.emit("log", None, level=level, text=note)
            # stages of worker rules never built (or failed last time) will most likely run:
            # their workers start now, while the build decides, not after
            if any(
                not p.stages[s].rule.spawns_only and builder.last_result(s) != "ok" for s in order
            ):
                ex.prestart(o.jobs)
            builder.stopping = lambda: sigs.received is not None
            if project.remote is not None:  # a fetch stops between two batches
                project.remote.stopping = builder.stopping
            sched = Scheduler(
                p.graph,
                order,
                builder,
                ex,
                bus,
                jobs=o.jobs,
                keep_going=o.keep_going,
                stop_signal=lambda: (sigs.received, sigs.count),
                budget=budget,
                expected={s: d for s, d in expected.items() if d is not None},
                grace=o.grace,
            )
            outcome = sched.run()
        project.state.flush()
        lock_file = p.lock_file if o.lock_file is None else o.lock_file
        if not (outcome.failed or outcome.interrupted is not None):
            if lock_file:
                lockfile.write(project)
            if project.remote_to_remember:  # told, and it served: later commands use it
                storeplace.remember_remote(project.workspace.dot, project.remote_to_remember)
        _record_roots(project, builder)
        # under the lock, so no other build's snapshot or change can come in between
        bus.emit(SETTLED, None, failed=bool(outcome.failed or outcome.skipped),
                 interrupted=outcome.interrupted is not None)  # fmt: skip
    report = _report(builder, outcome, time.time() - started)
    finished = {"ran": report.ran, "restored": report.restored, "up_to_date": report.up_to_date,
                "failed": report.failed, "skipped": report.skipped, "duration": report.duration,
                "interrupted": outcome.interrupted}  # fmt: skip
    bus.emit("run_finished", None, **finished)
    runlog.close()
    if outcome.interrupted is not None:
        stopped = [s for s, why in outcome.skipped.items() if why == STOPPED]
        raise Interrupted(outcome.interrupted, [*outcome.failed, *stopped])
    if report.failed:
        raise BuildFailed(list(report.failed))
    return report


class _Hooks:
    """The pipeline's ``on_success`` / ``on_failure`` hooks as a subscriber: the one that
    fits runs when the build's ``run_finished`` event arrives (its events go to the same
    bus, after every earlier subscriber has seen ``run_finished``)."""

    def __init__(
        self, p: Pipeline, runlog: history.RunLog, started: float, bus: Bus, times: StageTimes
    ):
        self.p, self.runlog, self.started, self.bus, self.times = p, runlog, started, bus, times

    def __call__(self, event: Event) -> None:
        if event.kind != "run_finished":
            return
        p = self.p
        durations = self.times.durations
        summary = run_summary(p.name, self.runlog.run_id, self.started, event.data, durations)
        run_hooks(p.on_success, p.on_failure, summary, p.root, self.bus)


#: the event a build emits once everything it did is committed and recorded, while it still
#: holds its lock (before ``run_finished``, whose hooks may start another build); internal:
#: the run log does not keep it
SETTLED = history.SETTLED


class _Snapshot:
    """The no-op snapshot (:mod:`pipemake.noop`) as a subscriber: it keeps the plan of
    ``run_started`` and, when the build has settled (:data:`SETTLED`, under the build
    lock), writes the snapshot of a plain build that found everything up to date, or
    discards an older one otherwise."""

    def __init__(
        self,
        project: Project,
        builder: Builder,
        order: list[str],
        started_ns: int,
        context: str,
        plain: bool,
    ) -> None:
        self.project, self.builder, self.order = project, builder, order
        self.started_ns, self.context, self.plain = started_ns, context, plain
        self.run_started: dict[str, Any] = {}

    def __call__(self, event: Event) -> None:
        if event.kind == "run_started":
            self.run_started = dict(event.data)
            return
        if event.kind != SETTLED:
            return
        snapshot = None
        if self.plain and not (event.data["failed"] or event.data["interrupted"]):
            snapshot = _snapshot(
                self.project, self.builder, self.order, self.started_ns, self.run_started
            )
        dot = self.project.workspace.dot
        if snapshot is not None:
            noop.write(dot, self.context, **snapshot)
        else:
            noop.discard(dot)


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
    # the pipeline file, its params files, and the file naming the store a plain command uses
    code: set[str] = {str(p.file), *p.params_files, str(project.workspace.dot / storeplace.FILE)}
    code.add(str(p.root / lockfile.FILE))  # a lock deleted or edited is written again
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
    code |= code_files(packages)  # the rules' whole packages, versions and all
    databases = [project.state.path, project.store.path / "actions.db"]
    paths = noop.record(p.root, builder.hasher.seen, sorted(code), started_ns, databases)
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
    up_to_date = up_to_date and not builder.from_items  # (their entries are new)
    keys = set(builder.keys_seen)
    keys.update(k for k, _r, _d in project.state.builds.brief().values() if k)
    p = project.pipeline
    outs = [rel for st in p.stages.values() for rel in st.ports.outputs.values()]
    placed = project.state.builds.placed()
    project.state.set_stage_files(p.file.name, p.stages, outs, placed)  # whose orphans
    try:
        project.store.write_roots(str(p.root), str(p.file), keys, True, refresh=not up_to_date)
    except (OSError, StoreError):
        pass


@contextmanager
def _closed_on_error(ex: Executor) -> Iterator[Executor]:
    """``ex``, closed if the build fails before (or while) it runs: a build that ends well
    closes it itself, as soon as its schedule ends."""
    try:
        yield ex
    except BaseException:
        ex.close()
        raise


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


@contextmanager
def _unsigned_said(store: Store, bus: Bus) -> Iterator[None]:
    """Say once, at the build's end, how many of the store's entries it ignored for want
    of a signature by ``PIPEMAKE_CACHE_KEY`` (their stages ran instead)."""
    store.unsigned = set()
    try:
        yield
    finally:
        if store.unsigned:
            n = len(store.unsigned)
            bus.emit("log", "store", level="warning", text=(
                f"warning: ignored {n} entr{'y' if n == 1 else 'ies'} of the store {store.path}"
                ": not signed with PIPEMAKE_CACHE_KEY (written without the key, or tampered"
                " with); their stages ran instead"))  # fmt: skip


def _budget(
    p: Pipeline, order: list[str], overrides: Mapping[str, float] | None, here: bool = True
) -> Budget:
    # tasks run elsewhere (a cluster): only what --resources caps, never this machine's
    total, gpu_ids = default_budget() if here else ({}, [])
    total.update(overrides or {})
    budget = Budget(total, gpu_ids)
    problems = Problems(p.file)  # the file named as every pipeline problem names it
    for s in order:
        st = p.stages[s]
        big = budget.too_big(st.resources)
        if big:
            asked = ", ".join(f"{n}={st.resources[n]:g}" for n in big)
            have = ", ".join(f"{n}={total[n]:g}" for n in big)
            problems.problem(
                f"requests {asked}, more than the build's budget ({have})",
                st.line, s,
                hint="lower the request or raise it with --resources",
            )  # fmt: skip
    problems.fail_if_any()
    return budget


def _expected(project: Project, order: list[str]) -> dict[str, float | None]:
    """Each stage's expected duration: its last duration, None when never built (no ETA
    counts on it; the scheduler ranks it as 1 s)."""
    brief = project.state.builds.brief()
    return {s: None if (d := brief.get(s, NEVER).duration) is None else float(d) for s in order}


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


def dry_run(
    project: Project,
    targets: Sequence[str] = (),
    *,
    force: bool = False,
    force_stages: Sequence[str] = (),
    executor: str | None = None,
    resources: Mapping[str, float] | None = None,
) -> list[tuple[str, Decision]]:
    """What a build would do to each stage, and why; changes nothing. ``force`` and
    ``force_stages`` are :class:`BuildOptions`'s: the plan of ``build -B`` or
    ``build --force-stage ID``. With ``executor`` (the plan of ``build -n``), the build's
    budget check too: a stage requesting more than ``resources`` (over this machine's
    CPUs, GPUs and memory, for an executor that runs here) is refused as the build
    refuses it, a :class:`PipelineError`."""
    p = project.pipeline
    order = _select(p, targets)
    try:
        forced = resolve_targets(p, force_stages)
    except UsageError as exc:
        raise UsageError(f"--force-stage: {exc}") from None
    if executor is not None:
        _budget(p, order, resources, runs_here(executor))
    builder = Builder(
        p, project.store, project.state, Bus(), dry=True, force=force,
        force_stages=frozenset(forced),
    )  # fmt: skip
    with _with_remote(project):
        builder.prefetch(order)
        for stage in order:
            try:
                builder.begin(stage)
            except StageFailure as exc:  # what the build would fail the stage with, said here
                builder.decisions[stage] = Decision(
                    Verdict.RUN, [Reason(Trigger.FAILED, f"will fail: {exc}")]
                )
            if (force or stage in forced) and builder.decisions[stage].verdict is Verdict.MAYBE:
                # what its upstream makes is not known before it runs; forced, it runs anyway
                builder.decisions[stage] = Decision(Verdict.RUN, [Reason(Trigger.FORCED, "forced")])
    return [(s, builder.decisions[s]) for s in order]


def forced_unneeded(
    project: Project, targets: Sequence[str], force_stages: Sequence[str]
) -> list[str]:
    """The stages ``--force-stage`` names that the targets do not need: a build of the
    targets neither builds nor forces them (as ``make -W`` of a file no target uses), so
    the command says so rather than ignore the option silently. Names that are no stage
    are left to the command itself to refuse."""
    p = project.pipeline
    try:
        wanted = set(_select(p, targets))
        forced = resolve_targets(p, force_stages)
    except UsageError:
        return []
    return [s for s in forced if s not in wanted]


def orphans(project: Project) -> list[str]:
    """Output paths earlier builds of this pipeline file placed that still exist and that
    no stage reads or writes now: neither a current output or input, nor inside one, nor
    holding one (nor the pipeline file, ``.pipemake`` or the store). A folder that was once
    an output and is now a hand-made input of another stage is therefore never an orphan;
    nor is what another pipeline file in the folder placed (``-f a.yaml`` and ``-f b.yaml``
    sharing the workspace), while that file exists: a path its builds declared, or one
    placed by a stage whose id it has too (``prep`` in both) that the workspace's records
    do not say is this file's (or a gone file's). What cannot be told for sure is never an
    orphan."""
    root = project.pipeline.root
    used = _paths_in_use(project)
    other_stages, other_paths, known = _other_files_stages(project)
    return sorted(
        path for path, (stage, _name) in project.state.builds.placed().items()
        if _plain(path) and not any(_overlap(path, u) for u in used)
        and not any(_overlap(path, q) for q in other_paths)
        and (stage not in other_stages or path in known)
        and os.path.lexists(root / path)
    )  # fmt: skip


def _other_files_stages(project: Project) -> tuple[set[str], set[str], set[str]]:
    """What the other pipeline files of the folder that still exist had (as ``cache gc``
    keeps what every live pipeline file's roots name): their stage ids, the output paths
    their builds declared; and the output paths the builds of any other file (this one, a
    gone one) declared, whose owner is therefore known. A stage id counts as another
    file's where that file has one of that id."""
    p = project.pipeline
    own = p.file.name
    state = project.state
    files = state.pipeline_files()
    alive: dict[str, bool] = {}

    def other(file: str) -> bool:
        if file not in alive:
            alive[file] = file != own and lockfile.live_file(p.root, file)
        return alive[file]

    stages: set[str] = set()
    paths: set[str] = set()
    for file, (ids, declared) in files.items():
        if other(file):
            stages |= ids
            paths |= {n for n in map(posixpath.normpath, declared) if _plain(n)}
    known = {q for file, (_ids, declared) in files.items() if not other(file) for q in declared}
    return stages, paths, known


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


def status(project: Project, targets: Sequence[str] = ()) -> dict[str, Any]:
    """Each stage's state (up to date, stale and why, never built, failed), its last result
    and duration, and orphaned outputs; with ``targets`` (ids or output paths) only those
    stages and the stages they need. A stage never built here (a fresh clone) is also
    compared with ``pipemake.lock`` when there is one: ``lock`` lists why it differs from
    the lock (empty: as locked, so a store keyed on the lock restores it)."""
    records = project.state.builds.records()
    live = history.running_run(project.workspace.dot / "runs")
    now = _run_stages(live[1]) if live else {}
    rows = dry_run(project, targets)
    unbuilt = [stage for stage, _d in rows if not records.get(stage)]
    against: dict[str, list[str]] = {}
    lock_problem = None
    if unbuilt and project.pipeline.lock_file:
        try:
            lock = lockfile.read(project.pipeline.root)
        except ValueError as exc:
            lock, lock_problem = None, f"{exc}; the next build writes it again"
        if lock is not None:
            order = [stage for stage, _d in rows]
            against = lockfile.compare(project, lock, order)
    stages = []
    differs: set[str] = set()
    for stage, decision in rows:
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
                f"its last run {'was interrupted' if rec['result'] == 'interrupted' else 'failed'}"
                ", with inputs, params or code changed back since"
            ]
        row = {
            "stage": stage, "state": state, "decision": decision.verdict.value,
            "reasons": reasons,
            "last_result": rec.get("result"), "last_duration": rec.get("duration"),
            "last_restored": bool(rec.get("restored")),
            "last_restored_from": _restored_from(rec),
            "last_in_place": bool(rec.get("in_place")),
            "last_committed": bool(rec.get("committed")),
            "last_adopted": bool(rec.get("adopted")),
            "last_error": rec.get("error"),
            "last_attempts": rec.get("attempts", 1), "last_retry_wait": rec.get("retry_wait"),
        }  # fmt: skip
        if stage in against and stage in unbuilt:
            # the decision's words on the lock (its key differs) said as the lock's
            said = [r for r in reasons if r in _lock_words(decision)]
            row["reasons"] = [r for r in reasons if r not in said]
            row["lock"] = against[stage] or said
            if not row["lock"]:  # an upstream stage whose key differs from the lock's
                ups = [d for d in project.pipeline.graph.deps[stage] if d in differs]
                row["lock"] = [f"upstream {d} differs from {lockfile.FILE}" for d in ups]
            if row["lock"]:
                differs.add(stage)
        stages.append(row)
    building = None
    if live:
        left = {s: v for s, v in now.items() if v in ("running", "pending")}
        building = {"run": live[0]["id"], "started": live[0].get("started"), "stages": left}
    info: dict[str, Any] = {"stages": stages, "orphans": orphans(project), "building": building}
    if lock_problem:
        info["lock_problem"] = lock_problem
    return info


def _lock_words(decision: Decision) -> list[str]:
    """The reasons of a decision that compare its stage with ``pipemake.lock``."""
    return [str(r) for r in decision.reasons if from_lock(r)]


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


def graph(project: Project, fmt: str = "text", engine: str = "auto") -> str:
    """The DAG as text, Mermaid or Graphviz dot source, or a picture: ``svg`` (Graphviz
    ``dot`` when installed and ``engine`` allows, else pipemake's own layered drawing;
    boxes coloured by each stage's state) or ``html`` (that SVG in a self-contained page,
    with the Mermaid source)."""
    p = project.pipeline
    if fmt not in GRAPH_FORMATS:
        raise UsageError(f"unknown graph format {fmt!r} ({', '.join(GRAPH_FORMATS)})")
    labels = {s: st.type for s, st in p.stages.items()}
    if fmt in ("text", "mermaid", "dot"):
        return p.graph.render(fmt, labels)
    states = {row["stage"]: row["state"] for row in status(project)["stages"]}
    picture = svg.svg(p.graph, labels, states, engine)
    if fmt == "svg":
        return picture
    return svg.page(p.name, picture, p.graph.render("mermaid", labels))


#: what ``graph --format`` accepts
GRAPH_FORMATS = ("text", "mermaid", "dot", "svg", "html")


def commit(
    project: Project,
    targets: Sequence[str] = (),
    dry: bool = False,
    lock_timeout: float | None = None,
    on_lock_wait: Callable[[str], None] | None = None,
) -> list[Accepted]:
    """Accept the workspace outputs of ``targets`` (ids or output paths; none: every stage)
    as built for their current keys, without running anything (``make -t``, ``dvc
    commit``): their files go into the store and the action cache names them (and
    ``pipemake.lock`` their hashes), so the next build, here or in a clone, finds them up to
    date and keeps them. Every target is checked first; a refusal
    (an output missing, a key that needs an upstream stage built first) is a
    :class:`UsageError` and nothing is written. ``dry``: say what would be accepted. Waits
    for a running build like a build does (``lock_timeout``; ``on_lock_wait`` is told who
    holds the lock), so it never accepts a half-built output."""
    p = project.pipeline
    order = _select(p, targets)
    chosen = resolve_targets(p, targets) if targets else order
    with BuildLock(project.workspace.dot / "lock", lock_timeout, on_lock_wait):
        rows, builder = accept(p, project.store, project.state, order, chosen, dry)
        if not dry and any(r.action == "accepted" for r in rows):
            project.state.flush()
            if p.lock_file:  # as `dvc commit` updates dvc.lock: a clone takes the same
                lockfile.write(project)
            _record_roots(project, builder)
            noop.discard(project.workspace.dot)
    return rows


def _sweep_leftovers(project: Project, started: float) -> None:
    """What a killed build left outside ``.pipemake``: temporary lock files in the project
    root and copies beside outputs on another filesystem (under the build lock)."""
    p = project.pipeline
    lockfile.sweep_temps(p.root, started)
    outputs = [rel for st in p.stages.values() for rel in st.ports.outputs.values()]
    project.workspace.sweep_beside(outputs)


def init(
    directory: str | os.PathLike[str] | None = None,
    file: str | os.PathLike[str] | None = None,
    example: str | None = None,
) -> tuple[Path, list[str]]:
    """Start a project: a commented starter pipeline (or a copy of the example
    ``example``) in ``directory`` (default: the current folder), or at ``file``, and
    ``.pipemake/`` in its ``.gitignore``. Never overwrites a file (a :class:`UsageError`
    says which). Returns the folder and what was written in it."""
    base = Path(directory) if directory else Path.cwd()
    target = None
    if file:
        target = Path(file) if Path(file).is_absolute() else base / file
        if target.is_dir():
            base, target = target, target / DEFAULT_FILE
        else:
            base = target.parent
            if example is not None:
                raise UsageError("init --example copies a whole example: give -C DIR, not -f")
    return base, starter.init(base, target, example)


def target_names(file: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """What a TARGET argument may be, for shell completion: each stage id (with its rule)
    and each output path (with the stage that writes it). Read from the checked plan, so
    completing is as quick as loading it."""
    path = Path(file)
    p = load_checked(path, path.parent / ".pipemake")
    names = [(sid, st.type) for sid, st in p.stages.items()]
    names += [(out, f"output of {sid}") for sid, st in p.stages.items()
              for out in st.ports.outputs.values()]  # fmt: skip
    return names


def list_runs(project: Project | Path) -> list[dict[str, Any]]:
    """Past builds, oldest first: start, duration, result, counts of stages run, restored,
    up to date, skipped and failed. ``project`` may be the project's folder instead: the
    history is read without loading the pipeline (which may be broken, or need a model
    file that is not there)."""
    return history.list_runs(_runs_dir(project))


def _runs_dir(project: Project | Path) -> Path:
    """Where a project's run logs are (given the project, or its folder)."""
    if isinstance(project, Path):
        return Workspace(project).dot / "runs"
    return project.workspace.dot / "runs"


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
    up to date, skipped, failed, interrupted (running when the run was stopped)."""
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
        elif kind == "run_finished":  # the run is over: nothing of it is running any more
            for s in ev.get("skipped") or {}:
                if stages.get(s) == "running":  # stopped by a signal before it finished
                    stages[s] = "interrupted"
                elif stages.get(s) == "pending":
                    stages[s] = "skipped"
    return stages


def run_status(project: Project | Path, run: str | None = None) -> dict[str, Any]:
    """One build's status (the original system's ``status --pipeline-id``): its state
    (``completed``, ``failed``, ``interrupted``, ``running``, or ``incomplete`` when it was
    killed), progress, counts and each stage's state. ``run`` is an id from
    :func:`list_runs`, a prefix of one, or a negative index (default: the last);
    ``project`` may be its folder, as for :func:`list_runs`."""
    summary, events = history.read_run(_runs_dir(project), run)
    stages = _run_stages(events)
    result = summary.get("result")
    state = {"ok": "completed", "failed": "failed", "interrupted": "interrupted"}.get(result)
    if state is None:  # list_runs said whether the build is still at it
        state = "running" if result == "running" else "incomplete"
    if state == "incomplete":  # its process is gone: what it was running is not
        stages = {s: "interrupted" if v == "running" else v for s, v in stages.items()}
    done = sum(1 for v in stages.values() if v in _COMPLETE)
    counts = {v: sum(1 for x in stages.values() if x == v) for v in ("done", "restored")}
    eta = _eta(events) if state == "running" else None
    return {
        "id": summary["id"], "pipeline": summary.get("pipeline"), "state": state,
        "started": summary.get("started"), "duration": summary.get("duration"),
        "completed": done, "total": len(stages),
        "progress": 100.0 * done / len(stages) if stages else 100.0,
        "ran": counts["done"], "restored": counts["restored"],
        "up_to_date": sum(1 for v in stages.values() if v == "up to date"),
        "stages": stages, "failed": dict(summary.get("failed") or {}),
        "eta": eta,
    }  # fmt: skip


def _eta(events: Sequence[dict[str, Any]]) -> float | None:
    """Seconds a running build has left, by the estimate its own view shows (from the
    events logged so far); None where that view would show none."""
    estimator = Estimator()
    for ev in events:
        data = {k: v for k, v in ev.items() if k not in ("event", "stage", "time")}
        kind, stage, when = ev.get("event"), ev.get("stage"), ev.get("time")
        if isinstance(kind, str) and isinstance(when, int | float):
            estimator(Event(kind, stage if isinstance(stage, str) else None, data, when))
    left = estimator.remaining()
    return None if left is None else round(left, 1)


def show_log(project: Project | Path, run: str | None = None) -> dict[str, Any]:
    """One run's summary and events (the last run by default; ``run`` is an id, a prefix of
    one, or a negative index such as ``-2``); ``project`` may be its folder, as for
    :func:`list_runs`."""
    summary, events = history.read_run(_runs_dir(project), run)
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
    lock_timeout: float | None = None,
    on_lock_wait: Callable[[str], None] | None = None,
) -> list[str]:
    """Remove outputs from the workspace (the store keeps them, so a build restores them);
    returns the paths removed.

    ``targets``: those stages' own outputs, as ``make clean`` and ``dvc remove`` touch only
    what they name (``with_deps``: their upstream stages' too); none: every stage's. An
    output the store does not hold as it is now (edited by hand, a file added to it, a link
    put in its place, never built), which a build could therefore not bring back, is
    removed only if ``confirm(path)`` says so; without ``confirm`` it is kept.
    ``orphans_only``: what earlier builds placed that no stage reads or writes now (see
    :func:`orphans`); an orphan that is not byte-identical to what pipemake last wrote
    there (edited, or pipemake can no longer tell) is likewise removed only if
    ``confirm(path)`` says so. Symlinks are removed as links, never followed. Waits for a
    running build like a build does (``lock_timeout``; ``on_lock_wait`` is told who holds
    the lock).
    """
    if orphans_only and targets:
        raise UsageError("`clean --orphans` takes no targets: it removes every orphan")
    with BuildLock(project.workspace.dot / "lock", lock_timeout, on_lock_wait):
        if orphans_only:
            placed = project.state.builds.placed()
            paths = [
                path for path in orphans(project)
                if _as_written(project, path, placed.get(path))
                or (confirm is not None and confirm(path))
            ]  # fmt: skip
        else:
            p = project.pipeline
            chosen = _select(p, targets) if targets else list(p.stages)  # unknown: exit 2
            if targets and not with_deps:
                chosen = resolve_targets(p, targets)
            outs = [
                (s, name, rel) for s in chosen for name, rel in p.stages[s].ports.outputs.items()
            ]
            present = [o for o in outs if os.path.lexists(p.root / o[2])]
            held = _held(project, present)
            paths = [
                rel for s, name, rel in present
                if rel in held or (confirm is not None and confirm(rel))
            ]  # fmt: skip
        removed: list[str] = []
        failed: list[tuple[str, OSError]] = []
        for rel in paths:
            try:
                if project.workspace.remove(rel):
                    removed.append(rel)
            except OSError as exc:
                failed.append((rel, exc))
        if orphans_only:
            project.state.builds.forget_placed(removed)
    if failed:
        raise PipemakeError(_not_removed(project.pipeline.root, removed, failed))
    return removed


def _not_removed(root: Path, removed: list[str], failed: list[tuple[str, OSError]]) -> str:
    """What ``clean`` says when it could not remove every output: what it removed, what it
    could not and why (the first thing in each it could not remove), and what to do."""
    lines = [f"removed {rel}" for rel in removed]
    for rel, exc in failed:
        where = str(exc.filename) if exc.filename is not None else str(root / rel)
        shown = os.path.relpath(where, root) if os.path.isabs(where) else where
        why = exc.strerror or str(exc)
        folder = os.path.dirname(rel) or "."
        if os.path.normpath(shown) == os.path.normpath(rel) and not os.access(
            root / folder, os.W_OK | os.X_OK
        ):
            hint = (
                f"the folder holding it, {folder}, is not writable for this user, so nothing "
                f"in it was touched: make it writable (`chmod u+w {shlex.quote(folder)}`) and "
                "clean again, or remove it as that folder's owner"
            )
        else:
            hint = (
                "what is left there cannot be removed by this user (another user's, say: "
                f"`ls -laR {shlex.quote(rel)}` shows whose): remove it as its owner"
            )
        at = "" if os.path.normpath(shown) == os.path.normpath(rel) else f" ({shown})"
        lines.append(f"could not remove {rel}: {why}{at}; {hint}")
    return f"could not remove {len(failed)} output(s):\n  " + "\n  ".join(lines)


def _held(project: Project, outputs: list[tuple[str, str, str]]) -> set[str]:
    """Of ``outputs`` (stage, output name, path), the paths whose content in the workspace
    the store holds, every object present: the stage's last build's, or else any entry's
    output with the same content (the last build failed after an older one placed it).
    A link in an output's place is never held: pipemake places real files there. The store
    is untrusted (a shared one may have been written by anyone), so an object counts only
    once its bytes are checked against its hash (each once, and only for an output whose
    workspace content matches): a name alone is no copy to give back."""
    hasher = Hasher(str(project.pipeline.root))
    store, ws = project.store, project.workspace
    held: set[str] = set()
    wanted: dict[tuple[str, str], str] = {}  # (kind, hash) now → path, for the others
    checked: dict[str, bool] = {}

    def good(digest: str) -> bool:
        if digest not in checked:  # a corrupt one is removed from the store as it is found
            try:
                checked[digest] = store.verify_object(digest) is True
            except (OSError, sqlite3.Error, StoreError):  # a store this user cannot write
                checked[digest] = False  # unsure: kept, as nothing is lost keeping it
        return checked[digest]

    def same(manifest: Any, rel: str) -> bool:
        try:
            return (
                isinstance(manifest, dict)
                and manifest.get("kind") in ("file", "dir")
                and ws.part_of(manifest, rel, hasher)  # what a stopped clean left, too
                and all(good(d) for d in digests(manifest))
            )
        except (OSError, BadPath, KeyError, TypeError, ValueError, IndexError):
            return False

    for stage, name, rel in outputs:
        if os.path.islink(ws.abs(rel)):
            continue
        if same(_last_manifest(project, stage, name), rel):
            held.add(rel)
            continue
        try:
            info = hasher.info(rel)
        except (OSError, BadPath, ValueError):
            continue
        if info.kind in ("file", "dir") and info.hash:
            wanted[(info.kind, info.hash)] = rel
    if wanted:
        for _key, entry in store.actions():
            for manifest in (entry.get("outputs") or {}).values():
                if not isinstance(manifest, dict):
                    continue
                rel = wanted.get((str(manifest.get("kind")), str(manifest.get("hash"))))
                if rel is not None and rel not in held and same(manifest, rel):
                    held.add(rel)
    return held


def _last_manifest(project: Project, stage: str, name: str) -> Any:
    """The manifest of output ``name`` of ``stage``'s last build, from the store, or None."""
    record = project.state.builds.record(stage)
    key = record.get("key") if isinstance(record, dict) else None
    try:
        entry = project.store.get_action(key) if isinstance(key, str) else None
    except StoreError:
        return None
    outputs = entry.get("outputs") if isinstance(entry, dict) else None
    return outputs.get(name) if isinstance(outputs, dict) else None


def _as_written(project: Project, path: str, owner: tuple[str, str] | None) -> bool:
    """Whether the orphan ``path``, placed by ``owner`` (stage, output name), is exactly
    what pipemake last placed there: the manifest of that stage's last build, from the
    store."""
    manifest = _last_manifest(project, *owner) if owner else None
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


def cache_gc(
    project: Project,
    keep_days: float = 7.0,
    dry: bool = False,
    grace: float = GRACE,
    max_size: int | None = None,
    forget_after: float = cachegc.FORGET_AFTER,
    lock_timeout: float | None = None,
    on_lock_wait: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Remove what no workspace sharing the store needs, and cap its size by LRU
    (``max_size`` bytes); see :func:`pipemake.cachegc.gc`."""
    return cachegc.gc(project, keep_days, dry, grace, max_size, forget_after, lock_timeout,
                      on_lock_wait)  # fmt: skip


def cache_verify(project: Project, repair: bool = False) -> dict[str, Any]:
    """Check every object and entry of the store (``repair``: remove what is damaged); see
    :func:`pipemake.cachegc.verify`."""
    return cachegc.verify(project, repair)


def _warner(bus: Bus) -> Callable[[str], None]:
    """Say a remote's warning as a build event (shown by every view, kept in the run log)."""
    return lambda text: bus.emit("log", "remote", level="warning", text=f"warning: {text}")


def _remote_of(project: Project, write: bool = False, why: str = "") -> Remote:
    """The project's remote, or a usage error saying how to name one (or that it is
    read-only, when ``write``)."""
    remote = project.remote
    what = why or "this command"
    if remote is None:
        raise UsageError(
            f"{what} needs a remote store: pass --remote URL, set PIPEMAKE_REMOTE, or add "
            "`remote: URL` to the pipeline file (e.g. s3://bucket/cache, file:///srv/cache)"
        )
    if write and remote.read_only:
        raise UsageError(
            f"{what} writes to the remote, but {remote.url} is read-only here "
            "(--remote-read-only or PIPEMAKE_REMOTE_READ_ONLY)"
        )
    return remote


@contextmanager
def _with_remote(
    project: Project, warn: Callable[[str], None] | None = None, push: bool = False
) -> Iterator[Remote | None]:
    """Put the project's remote behind its store for one command: misses are fetched from
    it, and with ``push`` every committed entry is sent to it. Its counted warnings are said
    once at the end (through ``warn``, else kept in ``remote.messages``)."""
    remote, store = project.remote, project.store
    if remote is None:
        yield None
        return
    remote.check()  # an unknown scheme or a missing back-end: said now, not mid-build
    remote.begin()
    old = remote.warn
    remote.warn = warn or old
    remote.push_on_commit = push
    store.remote = remote
    try:
        yield remote
    finally:
        store.remote = None
        remote.push_on_commit = False
        remote.finish()
        remote.warn = old


def _plan_keys(project: Project, order: list[str], collect: bool) -> Builder:
    """A plan of the stages ``order`` (as ``dry-run`` makes it): the keys they have now."""
    builder = Builder(
        project.pipeline, project.store, project.state, Bus(), dry=True, collect_keys=collect
    )
    builder.prefetch(order)
    for stage in order:
        try:
            builder.begin(stage)
        except StageFailure:  # it would fail (an input missing): its key is unknown
            continue
    return builder


def pull(project: Project, targets: Sequence[str] = ()) -> dict[str, Any]:
    """Fetch from the remote, ahead of a build, the entries and objects of the targets (and
    what they need) that are not in the local store; each stage's verdict after it. Stages
    whose upstream is in neither store cannot be known yet (``maybe``)."""
    remote = _remote_of(project, why="pull")
    order = _select(project.pipeline, targets)
    with _Signals() as sigs, _with_remote(project):
        remote.stopping = lambda: sigs.received is not None  # a Ctrl-C: stop between batches
        builder = _plan_keys(project, order, collect=False)
    if sigs.received is not None:
        from .remote import FetchInterrupted

        raise FetchInterrupted(sigs.received, remote.url, remote.stats)
    if remote.down is not None:
        from .remote import RemoteError

        raise RemoteError(f"pulling from remote {remote.url} failed: {remote.down}")
    stages = {s: d.verdict.value for s, d in builder.decisions.items() if s in order}
    return {"stages": stages, "stats": asdict(remote.stats), "warnings": _taken(remote)}


def push(project: Project, targets: Sequence[str] = ()) -> dict[str, Any]:
    """Upload to the remote what was built for the targets (and what they need): the
    entries of their current keys and of their last builds, each after the objects it
    names, put-if-absent."""
    remote = _remote_of(project, write=True, why="push")
    order = _select(project.pipeline, targets)
    builder = _plan_keys(project, order, collect=True)
    keys = set(builder.keys_seen)
    brief = project.state.builds.brief()
    keys.update(k for s in order if (k := (brief.get(s) or (None,))[0]))
    # with PIPEMAKE_CACHE_KEY, only the entries signed with it (built while the key was
    # held): one built without it, or rewritten since by another writer of a shared
    # --cache-dir, is never signed for the remote on this workspace's word
    entries = project.store.get_local_actions(sorted(keys))
    left = len(project.store.get_local_actions(sorted(keys), signed_only=False)) - len(entries)
    remote.begin()
    remote.push_pairs(project.store, list(entries.items()), strict=True)
    remote.finish()
    warnings = _taken(remote)
    if left:
        warnings.append(
            f"{left} entr{'y' if left == 1 else 'ies'} of this store "
            f"{'is' if left == 1 else 'are'} not signed with PIPEMAKE_CACHE_KEY (built "
            f"without the key, or rewritten since) and {'was' if left == 1 else 'were'} not "
            "pushed: build with the key set, then push (that build signs the outputs "
            "pipemake.lock records as made in this workspace, taking them as they are, and "
            "runs the other stages again)"
        )
    return {"entries": len(entries), "stats": asdict(remote.stats), "warnings": warnings}


def remote_gc(project: Project, grace: float = REMOTE_GRACE, dry: bool = False) -> dict[str, Any]:
    """Remove from the remote the objects no entry there names that are older than
    ``grace`` seconds (see :meth:`Remote.gc`)."""
    remote = _remote_of(project, write=not dry, why="cache gc --remote")
    return remote.gc(grace, dry)


def remote_warnings(project: Project) -> list[str]:
    """The remote's warnings not yet said (and forget them): for commands without an event
    bus to say them on."""
    return _taken(project.remote) if project.remote is not None else []


def _taken(remote: Remote) -> list[str]:
    out, remote.messages = remote.messages, []
    return out


@contextmanager
def project_of(
    directory: Any,
    file: Any,
    cache_dir: Any = None,
    readonly: bool = False,
    overrides: Sequence[str] = (),
    **options: Any,
) -> Iterator[Project]:
    """Open a project for the length of a ``with`` block (see :func:`open_project`;
    ``options``: its keyword-only ones)."""
    project = open_project(directory, file, cache_dir, readonly, overrides, **options)
    try:
        yield project
    finally:
        project.close()

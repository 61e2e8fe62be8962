"""The command line: a thin shell over :mod:`pipemake.api`, one function per verb.

Exit codes: 0 success, 1 a stage failed (or a lock wait timed out), 2 a bad pipeline or
usage, 128 + signal when interrupted.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import api, uptodate
from .errors import PipemakeError, UsageError, os_failure

__all__ = ["main", "cli"]


def _parse_duration(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"--lock-timeout must be a number of seconds, got {value!r}") from None


def _run(fn: Callable[[], int | None]) -> None:
    try:
        code = fn() or 0
    except PipemakeError as exc:
        click.echo(exc.format(), err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except (OSError, sqlite3.Error) as exc:  # the machine said no: say what, where, what to do
        # an SQLite error, or a full disk met by a write, names no file: say which folder
        unnamed = isinstance(exc, sqlite3.Error) or getattr(exc, "errno", None) in _FULL
        error = os_failure(exc, _dot() if unnamed else None, _STORE_REPAIR)
        if error is None:
            error = PipemakeError(str(exc))  # an OSError's names its file
        click.echo(error.format(), err=True)
        sys.exit(error.exit_code)
    sys.exit(code)


#: commands people type for what another command does (the original system's among them)
_MEANT = {
    **dict.fromkeys(["execute", "exec", "start", "make", "rebuild", "rerun", "resume"], "build"),
    **dict.fromkeys(["check", "lint", "verify"], "validate"),
    **dict.fromkeys(["plan", "explain", "why"], "dry-run"),
    **dict.fromkeys(["ls", "show", "stages", "pipelines", "runs", "history"], "list"),
    **dict.fromkeys(["logs"], "log"),
}


class _Group(click.Group):
    """Suggests the command meant: never ``dry-run`` for a word about running."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            import difflib

            meant = _MEANT.get(name.lower())
            if meant is None:
                close = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
                meant = close[0] if close else None
                if meant == "dry-run" and "dry" not in name.lower():
                    meant = "build"
            hint = f" Did you mean {meant!r}?" if meant else ""
            ctx.fail(f"No such command {name!r}.{hint}")
        return super().resolve_command(ctx, args)


_FULL = (errno.ENOSPC, errno.EDQUOT)
_STORE_REPAIR = (
    "run `pipemake cache verify`, or delete the store: it is only a cache, and outputs in the "
    "workspace stay"
)


def _dot() -> str:
    """Where pipemake's own files are for this command (a SQLite error names no file)."""
    ctx = click.get_current_context(silent=True)
    obj = (ctx.find_root().obj if ctx is not None else None) or {}
    if obj.get("cache_dir"):
        return str(obj["cache_dir"])
    return os.path.join(obj.get("directory") or os.curdir, ".pipemake")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-C",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    help="Run as if started in DIR.",
)
@click.option(
    "-f",
    "file",
    type=click.Path(),
    default=None,
    help="The pipeline file, or a folder to look in (default: pipemake.yaml, else the "
    "original system's pipeline.yaml).",
)
@click.option(
    "--cache-dir",
    envvar="PIPEMAKE_CACHE_DIR",
    default=None,
    help="Where the store lives (default: .pipemake/store; env PIPEMAKE_CACHE_DIR).",
)
@click.version_option(package_name="pipemake")
@click.pass_context
def cli(ctx: click.Context, directory: str | None, file: str | None, cache_dir: str | None) -> None:
    """pipemake: a Make-style incremental build tool for datasets."""
    ctx.obj = {"directory": directory, "file": file, "cache_dir": cache_dir}


def _project(ctx: click.Context, readonly: bool = False, cache_dir: str | None = None) -> Any:
    o = ctx.obj
    # the path found already holds -C DIR: open it as it is, not joined to DIR again
    path = _pipeline_file(ctx)
    return api.project_of(None, path, cache_dir or o["cache_dir"], readonly)


def _pipeline_file(ctx: click.Context) -> Any:
    """The pipeline file this command uses; when it was looked up and is not
    ``pipemake.yaml``, says which one, once, on stderr."""
    o = ctx.find_root().obj
    path, looked_up = api.find_pipeline(o["directory"], o["file"])
    if looked_up and path.name != api.PIPELINE_FILES[0] and not o.get("said"):
        o["said"] = True
        default = api.PIPELINE_FILES[0]
        click.echo(f"pipemake: using {_shown(path)} (there is no {default})", err=True)
    return path


def _shown(path: Any) -> str:
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


@cli.command()
@click.argument("targets", nargs=-1)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run up to N tasks at once.",
)
@click.option(
    "-k", "--keep-going", is_flag=True, help="Go on with independent stages after a failure."
)
@click.option("-B", "--force", is_flag=True, help="Rerun every selected stage.")
@click.option("--force-stage", multiple=True, metavar="ID", help="Rerun this stage (repeatable).")
@click.option(
    "--executor", default="local", show_default=True, help="Where tasks run: local, inline."
)
@click.option("--cache-dir", "cache_dir", default=None, help="Where the store lives.")
@click.option(
    "--lock-timeout",
    default=None,
    metavar="SECONDS",
    help="Give up (exit 1) when another build holds the lock this long.",
)
@click.option(
    "--resources",
    default=None,
    metavar="NAME=N,…",
    help="The build's budget, e.g. gpu=1,mem_gb=20 (default: this machine's cpus, gpu, mem_gb).",
)
@click.option(
    "--retries", type=click.IntRange(min=0), default=None, help="Retries for stages that set none."
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds running stages may finish after a first Ctrl-C or SIGTERM.",
)
@click.option("--no-progress", is_flag=True, help="Plain lines instead of a live view.")
@click.option(
    "--link",
    is_flag=True,
    envvar="PIPEMAKE_LINK",
    help="Hard-link outputs and store objects instead of copying (outputs are read-only; "
    "env PIPEMAKE_LINK=1).",
)
@click.option(
    "--fsync",
    is_flag=True,
    envvar="PIPEMAKE_FSYNC",
    help="Flush every store object and entry to disk before it counts, so the store "
    "survives a power loss (slower; env PIPEMAKE_FSYNC=1).",
)
@click.option(
    "--log-json",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="Also write the run's events to FILE as JSON lines (always kept in .pipemake/runs/).",
)
@click.option("--resume", is_flag=True, hidden=True)  # the original system's; said, then moot
@click.pass_context
def build(
    ctx: click.Context,
    targets: tuple[str, ...],
    jobs: int,
    keep_going: bool,
    force: bool,
    force_stage: tuple[str, ...],
    executor: str,
    cache_dir: str | None,
    lock_timeout: str | None,
    resources: str | None,
    retries: int | None,
    grace: float,
    no_progress: bool,
    link: bool,
    fsync: bool,
    log_json: str | None,
    resume: bool = False,
) -> None:
    """Build TARGETS (default: every stage) and what they need."""
    from .events import Bus
    from .progress import make_view
    from .resources import parse_resources

    if resume:
        click.echo(_RESUME_NOTE, err=True)

    def go() -> int:
        snap = None
        if _ARGV is not None:
            snap = (uptodate.context(_ARGV, os.getcwd()), _STARTED_NS)
        try:
            budget = parse_resources(resources)
        except ValueError as exc:
            raise UsageError(f"--resources: {exc}") from None
        with _project(ctx, cache_dir=cache_dir) as project:
            bus = Bus()
            view = make_view(no_progress)
            bus.subscribe(view)
            try:
                api.build(
                    project,
                    targets,
                    jobs=jobs,
                    keep_going=keep_going,
                    force=force,
                    force_stages=force_stage,
                    executor=executor,
                    lock_timeout=_parse_duration(lock_timeout),
                    bus=bus,
                    resources=budget,
                    retries=retries,
                    grace=grace,
                    log_json=log_json,
                    link=link,
                    fsync=fsync,
                    on_lock_wait=lambda who: click.echo(
                        f"waiting for the build lock held by {who} …", err=True
                    ),
                    noop_snapshot=snap,
                )
            finally:
                view.close()
        return 0

    _run(go)


_RESUME_NOTE = (
    "pipemake: every build resumes (--resume changes nothing): stages already built are "
    "up to date or restored from the store, only the rest run"
)


@cli.command("run")
@click.option(
    "--config",
    "config",
    type=click.Path(),
    default=None,
    metavar="FILE",
    help="The pipeline file (as -f; default: pipemake.yaml, else pipeline.yaml).",
)
@click.option(
    "--max-parallel",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Run up to N tasks at once (as build -j).",
)
@click.option(
    "--checkpoint-dir",
    default=None,
    metavar="DIR",
    help="Where the store lives (as --cache-dir; the store is pipemake's checkpoint).",
)
@click.option(
    "--no-checkpoint",
    is_flag=True,
    help="Reuse nothing and keep nothing: every stage runs, with a scratch store that is "
    "removed afterwards (the next build runs them again).",
)
@click.option("--resume", is_flag=True, help="Accepted: every build resumes.")
@click.option("--dry-run", "dry", is_flag=True, help="Say what would run (as dry-run).")
@click.option("-k", "--keep-going", is_flag=True, help="As build -k.")
@click.option("--executor", default="local", show_default=True, help="As build --executor.")
@click.option("--no-progress", is_flag=True, help="As build --no-progress.")
@click.pass_context
def run_cmd(
    ctx: click.Context,
    config: str | None,
    max_parallel: int,
    checkpoint_dir: str | None,
    no_checkpoint: bool,
    resume: bool,
    dry: bool,
    keep_going: bool,
    executor: str,
    no_progress: bool,
) -> None:
    """The original system's `run --config F --max-parallel N`: build -f F -j N."""
    global _ARGV
    root = ctx.find_root().obj
    if config is not None:
        root["file"] = config
    if resume:
        click.echo(_RESUME_NOTE, err=True)
    if dry:
        ctx.invoke(dry_run)
        return
    _ARGV = None  # a no-op snapshot answers `pipemake build` only
    same = {"jobs": max_parallel, "keep_going": keep_going, "executor": executor,
            "no_progress": no_progress}  # fmt: skip
    if not no_checkpoint:
        ctx.invoke(build, cache_dir=checkpoint_dir, **same)
        return
    try:
        scratch = _scratch_store(ctx)
    except PipemakeError as exc:
        click.echo(exc.format(), err=True)
        sys.exit(exc.exit_code)
    try:
        ctx.invoke(build, cache_dir=str(scratch), **same)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _scratch_store(ctx: click.Context) -> Path:
    """An empty store for ``run --no-checkpoint``, next to the workspace's own."""
    dot = _pipeline_file(ctx).parent / ".pipemake"
    try:
        dot.mkdir(exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="no-checkpoint-", dir=dot))
    except OSError as exc:
        raise UsageError(f"--no-checkpoint: cannot make a scratch store in {dot}: {exc}") from None


def _print_decisions(rows: list[Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([d.as_json(s) for s, d in rows], indent=2))
    else:
        click.echo("\n".join(decision.line(stage) for stage, decision in rows))


@cli.command("dry-run")
@click.argument("targets", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--check", is_flag=True, help="Exit 1 when anything would run or be restored.")
@click.pass_context
def dry_run(ctx: click.Context, targets: tuple[str, ...], as_json: bool, check: bool) -> None:
    """Say what a build would run, restore or skip, and why. Changes nothing."""

    def go() -> int:
        with _project(ctx, readonly=True) as project:
            rows = api.dry_run(project, targets)
            notes = api.stage_notes(project)
        _print_decisions(rows, as_json)
        if not as_json:  # stdout stays one line per stage
            for stage, _ in rows:
                for note in notes.get(stage, []):
                    click.echo(f"{stage}: {note}", err=True)
        stale = any(d.verdict.value != "up to date" for _, d in rows)
        return 1 if check and stale else 0

    _run(go)


@cli.command()
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print it as JSON: {stages: [{stage, state, decision, reasons, last_result, "
    "last_duration, last_restored, last_error}], orphans, building} (building: the build "
    "running now, or null).",
)
@click.option("--check", is_flag=True, help="Exit 1 when any stage is not up to date.")
@click.option(
    "--pipeline-id",
    "run_id",
    default=None,
    metavar="RUN",
    help="Show one build's status instead (an id from `pipemake list --runs`, a prefix of "
    "one, or -1 for the last): the original system's status.",
)
@click.option("--checkpoint-dir", default=None, metavar="DIR", help="The store (as --cache-dir).")
@click.pass_context
def status(
    ctx: click.Context,
    as_json: bool,
    check: bool,
    run_id: str | None,
    checkpoint_dir: str | None,
) -> None:
    """Each stage's state, last result and duration; orphaned outputs."""
    if run_id is not None:
        _run(lambda: _run_status(ctx, run_id, as_json, checkpoint_dir))

    def go() -> int:
        with _project(ctx, readonly=True, cache_dir=checkpoint_dir) as project:
            info = api.status(project)
        if as_json:
            click.echo(json.dumps(info, indent=2))
        else:
            if info.get("building"):
                b = info["building"]
                since = time.strftime("%H:%M:%S", time.localtime(b.get("started") or 0))
                click.echo(
                    f"a build is running (run {b['run']}, since {since}): its stages are "
                    "marked running; the others show what the store holds now"
                )
            for row in info["stages"]:
                reasons = [r for r in row["reasons"] if r != row["state"]]
                why = f" ({'; '.join(reasons)})" if reasons else ""
                dur = row["last_duration"]
                last = f"  [last: {row['last_result']}, {dur:.1f}s]" if dur is not None else ""
                if row["last_restored"] and row["last_result"] == "ok":  # no run here: say so
                    took = f"; it ran in {dur:.1f}s when built" if dur is not None else ""
                    last = f"  [last: restored from the store{took}]"
                click.echo(f"{row['stage']}: {row['state']}{why}{last}")
                if row["state"] == "failed" and row["last_error"]:
                    click.echo("    " + row["last_error"].splitlines()[0])
            if info["orphans"]:
                click.echo("orphaned outputs (remove with `pipemake clean --orphans`):")
                for path in info["orphans"]:
                    click.echo(f"  {path}")
        stale = any(r["state"] != "up to date" for r in info["stages"])
        return 1 if check and stale else 0

    _run(go)


def _run_status(ctx: click.Context, run_id: str, as_json: bool, cache_dir: str | None) -> int:
    """``status --pipeline-id RUN``: one build's state, progress and stages."""
    with _project(ctx, readonly=True, cache_dir=cache_dir) as project:
        info = api.run_status(project, run_id)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return 0
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    took = info.get("duration")
    click.echo(f"run {info['id']} of pipeline {info.get('pipeline')!r}")
    click.echo(f"state:    {info['state']}")
    click.echo(
        f"progress: {info['completed']}/{info['total']} stages ({info['progress']:.0f}%): "
        f"{info['ran']} ran, {info['restored']} restored, {info['up_to_date']} up to date"
    )
    verb = "running for" if info["state"] == "running" else "took"
    click.echo(f"started:  {when}" + (f", {verb} {took:.1f}s" if took is not None else ""))
    for stage, state in info["stages"].items():
        error = info["failed"].get(stage)
        click.echo(f"  {stage}: {state}" + (f" ({error})" if error else ""))
    return 0


@cli.command()
@click.option(
    "--config",
    "config",
    type=click.Path(),
    default=None,
    metavar="FILE",
    help="The pipeline file (as -f): the original system's spelling.",
)
@click.pass_context
def validate(ctx: click.Context, config: str | None) -> None:
    """Check the pipeline and print the execution plan."""
    if config is not None:
        ctx.find_root().obj["file"] = config

    def go() -> int:
        with _project(ctx, readonly=True) as project:
            plan = api.validate(project)
            name = project.pipeline.name
        click.echo(f"pipeline {name!r} is valid: {len(plan)} stage(s), in this order:")
        for i, row in enumerate(plan, 1):
            needs = f"  (needs {', '.join(row['needs'])})" if row["needs"] else ""
            click.echo(f"  {i}. {row['stage']} [{row['rule']}]{needs}")
            for note in row["notes"]:
                click.echo(f"       {note}")
        return 0

    _run(go)


@cli.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "mermaid", "dot"]),
    default="text",
    show_default=True,
)
@click.pass_context
def graph(ctx: click.Context, fmt: str) -> None:
    """Print the stage graph."""

    def go() -> int:
        with _project(ctx, readonly=True) as project:
            click.echo(api.graph(project, fmt))
        return 0

    _run(go)


@cli.command("list")
@click.option("--runs", is_flag=True, help="List past runs instead of stages.")
@click.option("--json", "as_json", is_flag=True, help="With --runs: print them as JSON.")
@click.option("--no-header", is_flag=True, help="Rows only, no header line (for scripts).")
@click.option("--checkpoint-dir", default=None, metavar="DIR", help="The store (as --cache-dir).")
@click.pass_context
def list_cmd(
    ctx: click.Context, runs: bool, as_json: bool, no_header: bool, checkpoint_dir: str | None
) -> None:
    """List stages with their rules and outputs, one tab-separated row each (--runs: past
    runs, a running build as `running`, a killed one as `incomplete`)."""

    def go() -> int:
        with _project(ctx, readonly=True, cache_dir=checkpoint_dir) as project:
            if not runs:
                if not no_header:
                    click.echo("STAGE\tRULE\tOUTPUTS")
                for row in api.list_stages(project):
                    outs = ", ".join(row["outputs"].values())
                    click.echo(f"{row['stage']}\t{row['rule']}\t{outs}")
                return 0
            rows = api.list_runs(project)
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return 0
        if not rows:
            click.echo("no runs recorded yet")
        elif not no_header:
            click.echo(_RUNS_HEADER)
        for row in rows:
            click.echo(_run_line(row))
        return 0

    _run(go)


#: the header of `list --runs`, aligned with :func:`_run_line`'s columns
_RUNS_HEADER = f"{'RUN':<19}  {'STARTED':<19}  {'DURATION':>9}  {'RESULT':<11}  STAGES"


def _run_line(row: dict[str, Any]) -> str:
    started = row.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    dur = row.get("duration")
    took = f"{dur:8.1f}s" if isinstance(dur, (int, float)) else "        ?"
    counts = (
        f"{row.get('ran', 0)} ran, {row.get('restored', 0)} restored, "
        f"{row.get('up_to_date', 0)} up to date, {row.get('skipped', 0)} skipped"
    )
    failed = row.get("failed") or {}
    tail = f", failed: {', '.join(failed)}" if failed else ""
    return f"{row['id']}  {when}  {took}  {row.get('result', '?'):<11}  {counts}{tail}"


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("run", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON lines.")
@click.option("-q", "--quiet", is_flag=True, help="Leave out the stages' output lines.")
@click.pass_context
def log(ctx: click.Context, run: str | None, as_json: bool, quiet: bool) -> None:
    """Show one run's events (default: the last run; RUN is an id or -1, -2, …)."""
    from .progress import log_lines

    def go() -> int:
        with _project(ctx, readonly=True) as project:
            found = api.show_log(project, run)
        if as_json:
            for event in found["events"]:
                click.echo(json.dumps(event))
        else:
            for line in log_lines(found["events"], verbose=not quiet):
                click.echo(line)
        return 0

    _run(go)


@cli.command()
@click.argument("targets", nargs=-1)
@click.option("--orphans", is_flag=True, help="Only outputs that no stage reads or writes now.")
@click.option("--with-deps", is_flag=True, help="Also the outputs of the targets' upstream stages.")
@click.option(
    "-y", "--yes", is_flag=True, help="Remove orphans edited since pipemake wrote them, unasked."
)
@click.pass_context
def clean(
    ctx: click.Context, targets: tuple[str, ...], orphans: bool, with_deps: bool, yes: bool
) -> None:
    """Remove outputs from the workspace; the store keeps them (a build restores them).

    `clean TARGET…` removes those stages' own outputs (`--with-deps`: their upstream
    stages' too); `clean` alone removes every stage's. `--orphans` removes what earlier
    builds placed that no stage reads or writes now; one that differs from what pipemake
    wrote there is removed only after you say yes (`--yes`: without asking). Without a
    terminal to ask on and without `--yes`, those are kept, named on stderr, and the exit
    code is 1 (nothing was lost, but not all was done). Symlinks are removed as links; what
    they point to is never touched.
    """
    kept: list[str] = []

    def confirm(path: str) -> bool:
        if yes:
            return True
        if _interactive():
            return click.confirm(
                f"{path} is not what pipemake wrote there (edited since?); remove it?",
                default=False,
                err=True,
            )
        kept.append(path)
        return False

    def go() -> int:
        with _project(ctx) as project:
            removed = api.clean(
                project, targets, orphans_only=orphans, with_deps=with_deps, confirm=confirm
            )
        for path in removed:
            click.echo(f"removed {path}")
        for path in kept:
            click.echo(
                f"kept {path}: it is not what pipemake wrote there (edited since?); remove it "
                "with `pipemake clean --orphans --yes`",
                err=True,
            )
        if not removed and not kept:
            click.echo("nothing to remove")
        return 1 if kept else 0

    _run(go)


def _interactive() -> bool:
    """Whether a question can be asked (stdin and stderr are terminals)."""
    return sys.stdin.isatty() and sys.stderr.isatty()


@cli.group()
def cache() -> None:
    """Inspect and check the store."""


@cache.command("info")
@click.pass_context
def cache_info(ctx: click.Context) -> None:
    """Where the store is and what it holds."""

    def go() -> int:
        with _project(ctx) as project:
            info = api.cache_info(project)
        click.echo(f"store:   {info['path']}")
        click.echo(f"objects: {info['objects']} ({info['bytes'] / 1e6:.1f} MB)")
        click.echo(f"entries: {info['entries']}")
        if info["strays"]:
            click.echo(f"strays:  {info['strays']} (not objects; see pipemake cache verify)")
        return 0

    _run(go)


@cache.command("gc")
@click.option(
    "--keep-days",
    type=click.FloatRange(min=0),
    default=7.0,
    show_default=True,
    help="Also keep entries younger than this (a recent param set still restores).",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="Never remove what is younger than this many seconds (a build on the same store "
    "may be about to commit it). Lower it only when no build uses the store.",
)
@click.option("--dry-run", "dry", is_flag=True, help="Say what would go; remove nothing.")
@click.pass_context
def cache_gc(ctx: click.Context, keep_days: float, grace: float, dry: bool) -> None:
    """Remove entries and objects no workspace sharing the store needs."""

    def go() -> int:
        with _project(ctx) as project:
            info = api.cache_gc(project, keep_days=keep_days, dry=dry, grace=grace)
        verb = "would remove" if dry else "removed"
        click.echo(
            f"{verb} {info['entries_removed']} entries and {info['objects_removed']} objects "
            f"({info['bytes_freed'] / 1e6:.1f} MB); kept {info['entries_kept']} entries"
        )
        for rel in info["strays"]:
            click.echo(f"{verb} {rel}: not an object (a link is removed, never followed)")
        if info["damaged_entries"]:
            click.echo(
                f"{info['damaged_entries']} damaged entries kept for now: see "
                "`pipemake cache verify` (--repair deletes them)"
            )
        return 0

    _run(go)


@cache.command("verify")
@click.option(
    "--repair",
    is_flag=True,
    help="Delete what is damaged: rows, entries lacking objects, things that are not "
    "objects, an unreadable action cache (it is only a cache: stages run again).",
)
@click.pass_context
def cache_verify(ctx: click.Context, repair: bool) -> None:
    """Check every object against its hash (corrupt objects are removed) and every entry."""

    def go() -> int:
        with _project(ctx) as project:
            info = api.cache_verify(project, repair=repair)
        done = "deleted" if repair else "--repair deletes it"
        if info["reset"]:
            click.echo("the action cache was unreadable: deleted (stages run again)")
        for digest in info["corrupt"]:
            click.echo(f"corrupt object removed: {digest}")
        for key, problem in info["damaged_entries"]:
            click.echo(f"damaged entry {key[:12]}: {problem} ({done}; a miss meanwhile)")
        for key in info["incomplete_entries"]:
            note = "deleted" if repair else "its stage will run again"
            click.echo(f"entry {key[:12]} lacks objects ({note})")
        for rel, what in info["strays"]:
            click.echo(f"{rel}: {what} ({'removed' if repair else '--repair removes it'})")
        found = (
            info["reset"]
            or info["corrupt"]
            or info["damaged_entries"]
            or info["incomplete_entries"]
            or info["strays"]
        )
        if not found:
            click.echo("store OK")
            return 0
        if repair:
            click.echo("store repaired")
            return 0
        return 1

    _run(go)


#: the command line as the ``pipemake`` command received it and when the process started
#: (None when called otherwise): a no-op build records them in its snapshot
_ARGV: list[str] | None = None
_STARTED_NS = 0


def main(argv: list[str] | None = None, started_ns: int | None = None) -> None:
    """Console-script entry point (see :mod:`pipemake.entry`)."""
    global _ARGV, _STARTED_NS
    _STARTED_NS = started_ns if started_ns is not None else time.time_ns()
    _ARGV = list(sys.argv[1:] if argv is None else argv)
    cli(args=_ARGV, prog_name="pipemake")

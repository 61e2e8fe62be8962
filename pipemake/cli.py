"""The command line: a thin shell over :mod:`pipemake.api`, one function per verb.

Exit codes: 0 success, 1 a stage failed (or a lock wait timed out), 2 a bad pipeline or
usage, 128 + signal when interrupted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shlex
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import api, noop
from .errors import Interrupted, PipemakeError, UsageError, os_failure
from .finding import PIPELINE_FILES, using
from .model import LOCK_FILE
from .progress import error_lines, muted, restored_from, visible
from .targets import typed_below

__all__ = ["main", "cli"]


def _parse_duration(value: str | None) -> float | None:
    """``--lock-timeout``'s seconds: a number, 0 or more (0: give up at once; ``inf``: wait,
    as without the option). A negative number or ``nan`` is a usage error: neither says
    how long to wait."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds >= 0:  # nan compares false
        raise UsageError(
            f"--lock-timeout must be a number of seconds, 0 or more (0: give up at once), got "
            f"{value!r}"
        )
    return None if math.isinf(seconds) else seconds


#: the exit code when the reader of stdout went away (`| head`): 128 + SIGPIPE, as the
#: shell reports for ``ls``, ``git log`` and others that SIGPIPE ends, with no message
EXIT_BROKEN_PIPE = 141


def _run(fn: Callable[[], int | None]) -> None:
    try:
        code = fn() or 0
    except PipemakeError as exc:
        _say(visible(exc.format()))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _say("interrupted")
        sys.exit(130)
    except BrokenPipeError:  # `pipemake status | head`: the reader has what it wanted
        with contextlib.suppress(OSError):  # no second error when Python flushes at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_BROKEN_PIPE)
    except (OSError, sqlite3.Error) as exc:  # the machine said no: say what, where, what to do
        # an SQLite error, or a full disk met by a write, names no file: say which folder
        unnamed = isinstance(exc, sqlite3.Error) or getattr(exc, "errno", None) in _FULL
        error = os_failure(exc, _dot() if unnamed else None, _STORE_REPAIR)
        if error is None:
            error = PipemakeError(str(exc))  # an OSError's names its file
        click.echo(visible(error.format()), err=True)
        sys.exit(error.exit_code)
    sys.exit(code)


def _say(text: str) -> None:
    """An error's message on stderr; where nobody reads it any more (a terminal closed by a
    SIGHUP, a pipe whose reader ended), nothing, and the exit code still says it."""
    try:
        click.echo(text, err=True)
    except OSError as exc:
        muted(sys.stderr, exc)


#: commands people type for what another command does (the original system's among them)
_MEANT = {
    **dict.fromkeys(["execute", "exec", "start", "make", "rebuild", "rerun", "resume"], "build"),
    **dict.fromkeys(["check", "lint", "verify"], "validate"),
    **dict.fromkeys(["plan", "explain", "why"], "dry-run"),
    **dict.fromkeys(["ls", "show", "stages", "pipelines", "runs", "history"], "list"),
    **dict.fromkeys(["logs"], "log"),
    **dict.fromkeys(["touch", "accept"], "commit"),
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


def _keep_overrides(ctx: click.Context, _param: Any, values: tuple[str, ...]) -> None:
    if values:
        root = ctx.find_root()
        if root.obj is None:
            root.obj = {}
        root.obj["overrides"] = list(root.obj.get("overrides") or ()) + list(values)


#: ``-S/--set``: override a variable or a params key for this command (Snakemake's
#: ``--config``, DVC's ``-S``)
_set_option = click.option(
    "-S",
    "--set",
    "overrides",
    multiple=True,
    metavar="vars.NAME=VALUE",
    expose_value=False,
    callback=_keep_overrides,
    help="Override a variable (vars.NAME=VALUE) or a params-file key (params.KEY=VALUE, "
    "params.SECTION.KEY=…) for this command, as editing the file would; repeatable.",
)


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
@_set_option
@click.version_option(package_name="pipemake")
@click.pass_context
def cli(ctx: click.Context, directory: str | None, file: str | None, cache_dir: str | None) -> None:
    """pipemake: a Make-style incremental build tool for datasets.

    Start with `pipemake init`; TARGETs are stage ids or the paths they output.

    \b
    Shell completion of commands, stage ids and output paths, in ~/.bashrc:
      eval "$(_PIPEMAKE_COMPLETE=bash_source pipemake)"
    (zsh_source in ~/.zshrc; fish: _PIPEMAKE_COMPLETE=fish_source pipemake | source)
    """
    # `pipemake --set … build`: the overrides were noted while the options were read
    ctx.obj = {**(ctx.obj or {}), "directory": directory, "file": file, "cache_dir": cache_dir}


def _project(
    ctx: click.Context,
    readonly: bool = False,
    cache_dir: str | None = None,
    build: bool = False,
    remote: str | None = None,
    remote_read_only: bool = False,
    targets: tuple[str, ...] = (),
) -> Any:
    """Open the project for one command: its own ``--cache-dir`` over the global one (and
    ``PIPEMAKE_CACHE_DIR``), relative to ``-C DIR`` like ``-f``; a build remembers it.
    ``targets``: a missing source input of a stage they do not need is a warning."""
    o = ctx.find_root().obj
    # the path found already holds -C DIR: open it as it is, not joined to DIR again
    path = _pipeline_file(ctx)
    scratch = o.get("scratch", False)  # run --no-checkpoint: neither remembered nor noted
    overrides = o.get("overrides") or ()
    return api.project_of(
        None, path, cache_dir or o["cache_dir"], readonly, overrides, base=o["directory"],
        remember=build and not scratch, note=None if scratch else _note, remote=remote,
        remote_read_only=remote_read_only, told_by=_store_told_by(ctx, cache_dir),
        targets=targets,
    )  # fmt: skip


def _store_told_by(ctx: click.Context, cache_dir: str | None) -> str:
    """What named the store, as the user wrote it: the command's ``--cache-dir`` or the
    original system's ``--checkpoint-dir``, else the global ``--cache-dir`` or the
    ``PIPEMAKE_CACHE_DIR`` variable it was read from."""
    root = ctx.find_root()
    if cache_dir:
        return str(root.obj.get("store_option") or "--cache-dir")
    source = root.get_parameter_source("cache_dir")
    from_env = source is click.core.ParameterSource.ENVIRONMENT
    return "PIPEMAKE_CACHE_DIR" if from_env else "--cache-dir"


def _note(message: str) -> None:
    click.echo(visible(message), err=True)


def _cache_dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--cache-dir DIR`` on a command that reads the store."""
    return click.option(
        "--cache-dir",
        "cache_dir",
        default=None,
        metavar="DIR",
        help="Where the store lives (default: the one this workspace remembers, else "
        ".pipemake/store; relative to -C DIR like -f; env PIPEMAKE_CACHE_DIR).",
    )(fn)


def _lock_timeout_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--lock-timeout SECONDS`` on a command that waits for the build lock."""
    return click.option(
        "--lock-timeout",
        default=None,
        metavar="SECONDS",
        help="Give up (exit 1) when a build holds this workspace's lock this long (default: wait).",
    )(fn)


def _waiting(who: str) -> None:
    click.echo(f"waiting for the build lock held by {who} …", err=True)


def _complete_targets(ctx: click.Context, _param: Any, incomplete: str) -> list[Any]:
    """Shell completion for TARGET arguments: stage ids and the output paths they write."""
    from click.shell_completion import CompletionItem

    try:
        params = ctx.find_root().params
        found, _ = api.find_pipeline(params.get("directory"), params.get("file"))
        names = api.target_names(found)
    except Exception:  # noqa: BLE001 - completion never fails aloud
        return []
    return [CompletionItem(n, help=h) for n, h in names if n.startswith(incomplete)]


def _remote_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--remote URL`` and ``--remote-read-only``, for the commands that use the remote."""
    fn = click.option(
        "--remote-read-only",
        is_flag=True,
        envvar="PIPEMAKE_REMOTE_READ_ONLY",
        help="Read the remote, never write to it (env PIPEMAKE_REMOTE_READ_ONLY=1): what a "
        "pull request's job should use.",
    )(fn)
    return click.option(
        "--remote",
        default=None,
        metavar="URL",
        envvar="PIPEMAKE_REMOTE",
        help="The remote store behind the local one: s3://bucket/path, file:///path, … "
        "(env PIPEMAKE_REMOTE; default: the pipeline's `remote:`).",
    )(fn)


def _say_warnings(lines: list[str]) -> None:
    for line in lines:
        click.echo(f"pipemake: warning: {visible(line)}", err=True)


def _say_unneeded(stages: list[str], targets: tuple[str, ...]) -> None:
    """Warn of each ``--force-stage`` stage the targets do not need (it is not built)."""
    for stage in stages:
        _say_warnings([
            f"--force-stage {stage}: the targets ({', '.join(targets)}) do not need stage "
            f"{stage!r}, so it is not built (add it as a target to force it)"
        ])  # fmt: skip


def _pipeline_file(ctx: click.Context) -> Any:
    """The pipeline file this command uses; when it was looked up and is not
    ``pipemake.yaml``, says which one, once, on stderr."""
    o = ctx.find_root().obj
    path, looked_up = api.find_pipeline(o["directory"], o["file"])
    above = looked_up and o["directory"] is None and o["file"] is None
    if above and path.parent != Path.cwd():  # found in a folder above: as -C that folder
        o["directory"] = str(path.parent)
        o["said"] = o["below"] = True
        click.echo(using(path, above=True), err=True)
    typed_below(bool(o.get("below")))  # this command's, not a former one's in this process
    if looked_up and path.name != PIPELINE_FILES[0] and not o.get("said"):
        o["said"] = True
        click.echo(using(path, above=False), err=True)
    return path


def _use_config(ctx: click.Context, config: str | None) -> None:
    """``--config FILE`` (the original system's spelling of ``-f``); given with a different
    ``-f``, which one is meant is unclear: exit 2 naming both."""
    if config is None:
        return
    root = ctx.find_root().obj
    given = root.get("file")
    if given is not None and os.path.abspath(given) != os.path.abspath(config):
        _run(lambda: _raise(UsageError(
            f"-f {given} and --config {config} name two pipeline files: give one of them"
        )))  # fmt: skip
    root["file"] = config


def _raise(exc: Exception) -> None:
    raise exc


def _shown(path: Any) -> str:
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


@cli.command()
@click.argument("targets", nargs=-1, shell_complete=_complete_targets)
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
@click.option(
    "--force-stage",
    multiple=True,
    metavar="ID",
    shell_complete=_complete_targets,
    help="Rerun this stage (repeatable).",
)
@click.option(
    "--executor",
    default="local",
    show_default=True,
    help="Where tasks run: local, inline, dask (a dask scheduler, see --scheduler), "
    "dask-local (a dask cluster of -j processes on this machine).",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="tcp://HOST:PORT",
    help="The dask scheduler for --executor dask (env PIPEMAKE_DASK_SCHEDULER).",
)
@click.option(
    "--dashboard", is_flag=True, help="With --executor dask-local: serve dask's dashboard."
)
@_cache_dir_option
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
    help="Seconds running stages may finish after a first Ctrl-C, SIGTERM or SIGHUP.",
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
@click.option(
    "-n",
    "--dry-run",
    "dry",
    is_flag=True,
    help="Say what would run, restore or be skipped, and why, without doing it (as "
    "`pipemake dry-run`; make -n).",
)
@_set_option
@click.option(
    "--no-lock-file",
    is_flag=True,
    help="Do not write pipemake.lock (also: lock_file: false in the pipeline).",
)
@click.option("--resume", is_flag=True, hidden=True)  # the original system's; said, then moot
@_remote_options
@click.option(
    "--push",
    is_flag=True,
    envvar="PIPEMAKE_PUSH",
    help="Upload each stage's entry and objects to the remote as it commits (env PIPEMAKE_PUSH=1).",
)
@click.pass_context
def build(
    ctx: click.Context,
    targets: tuple[str, ...],
    jobs: int,
    keep_going: bool,
    force: bool,
    force_stage: tuple[str, ...],
    executor: str,
    scheduler: str | None,
    dashboard: bool,
    cache_dir: str | None,
    lock_timeout: str | None,
    resources: str | None,
    retries: int | None,
    grace: float,
    no_progress: bool,
    link: bool,
    fsync: bool,
    log_json: str | None,
    dry: bool = False,
    no_lock_file: bool = False,
    resume: bool = False,
    remote: str | None = None,
    remote_read_only: bool = False,
    push: bool = False,
) -> None:
    """Build TARGETS (default: every stage) and what they need.

    A TARGET is a stage id or a path a stage outputs (build/report.txt, or a file inside an
    output folder): that stage is built.
    """
    from .events import Bus
    from .progress import make_view
    from .resources import parse_resources

    if resume:
        click.echo(_RESUME_NOTE, err=True)
    if dry:  # the plan of this very build: every option that changes a decision counts
        try:
            _check_build_options(executor, scheduler, dashboard, resources, lock_timeout)
        except PipemakeError as exc:
            click.echo(visible(exc.format()), err=True)
            sys.exit(exc.exit_code)
        ctx.invoke(
            dry_run, targets=targets, as_json=False, check=False, cache_dir=cache_dir,
            remote=remote, remote_read_only=remote_read_only, force=force,
            force_stage=force_stage, budget=(executor, parse_resources(resources)),
        )  # fmt: skip
        return

    def go() -> int:
        snap = None
        if _ARGV is not None:
            snap = (noop.context(_ARGV, os.getcwd()), _STARTED_NS)
        try:
            budget = parse_resources(resources)
        except ValueError as exc:
            raise UsageError(f"--resources: {exc}") from None
        options = _executor_options(executor, scheduler, dashboard)
        with _project(
            ctx, cache_dir=cache_dir, build=True, remote=remote,
            remote_read_only=remote_read_only, targets=targets,
        ) as project:  # fmt: skip
            _say_unneeded(api.forced_unneeded(project, targets, force_stage), targets)
            bus = Bus()
            view = make_view(no_progress)
            scratch = bool(ctx.find_root().obj.get("scratch"))  # run --no-checkpoint
            view.items.keeps = not scratch
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
                    on_lock_wait=_waiting,
                    noop_snapshot=snap,
                    lock_file=False if no_lock_file else None,
                    executor_options=options,
                    push=push,
                )
            except Interrupted as exc:
                exc.kept = not scratch
                raise
            finally:
                view.close()
        return 0

    _run(go)


def _check_build_options(
    executor: str, scheduler: str | None, dashboard: bool, resources: str | None, wait: str | None
) -> None:
    """For ``build -n``: refuse the values ``build`` would refuse (a plan never says what the
    build itself would not start). The options that only say how the work runs (-j, -k,
    --retries, --grace, --link, --fsync, --log-json, --push, …) change no decision: a plan
    runs, writes and pushes nothing, so they have nothing to do."""
    from .executors import executor_names
    from .resources import parse_resources

    if executor not in executor_names():
        known = ", ".join(executor_names())
        raise UsageError(f"--executor: unknown executor {executor!r} (known: {known})")
    _executor_options(executor, scheduler, dashboard)
    try:
        parse_resources(resources)
    except ValueError as exc:
        raise UsageError(f"--resources: {exc}") from None
    _parse_duration(wait)


def _executor_options(executor: str, scheduler: str | None, dashboard: bool) -> dict[str, Any]:
    """``--scheduler`` and ``--dashboard`` for the executors that take them (UsageError for
    the others: an option that would change nothing is a mistake worth saying)."""
    options: dict[str, Any] = {}
    if scheduler is not None:
        if executor != "dask":
            raise UsageError("--scheduler is for --executor dask")
        options["scheduler"] = scheduler
    if dashboard:
        if executor != "dask-local":
            raise UsageError("--dashboard is for --executor dask-local")
        options["dashboard"] = True
    return options


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
    "removed afterwards, and pipemake.lock is left as it was (the next build runs them "
    "again).",
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
    _use_config(ctx, config)
    if resume:
        click.echo(_RESUME_NOTE, err=True)
    if checkpoint_dir:
        root["store_option"] = "--checkpoint-dir"
    if dry:  # the plan of this run: its store, and --no-checkpoint's "every stage runs"
        ctx.invoke(dry_run, cache_dir=checkpoint_dir, force=no_checkpoint)
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
    root["scratch"] = True
    try:  # forced: outputs matching pipemake.lock are not taken as built; nor is it written
        ctx.invoke(build, cache_dir=str(scratch), force=True, no_lock_file=True, **same)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _scratch_store(ctx: click.Context) -> Path:
    """An empty store for ``run --no-checkpoint``, next to the workspace's own."""
    dot = _pipeline_file(ctx).parent / ".pipemake"
    try:
        dot.mkdir(exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=api.SCRATCH_PREFIX, dir=dot))
    except OSError as exc:
        raise UsageError(f"--no-checkpoint: cannot make a scratch store in {dot}: {exc}") from None


def _print_decisions(rows: list[Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([d.as_json(s) for s, d in rows], indent=2))
    else:
        click.echo("\n".join(visible(d.line(stage), oneline=True) for stage, d in rows))


@cli.command("dry-run")
@click.argument("targets", nargs=-1, shell_complete=_complete_targets)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--check", is_flag=True, help="Exit 1 when anything would run or be restored.")
@click.option("-B", "--force", is_flag=True, help="As build -B: every selected stage runs.")
@click.option(
    "--force-stage",
    multiple=True,
    metavar="ID",
    shell_complete=_complete_targets,
    help="As build --force-stage: this stage runs (repeatable).",
)
@_set_option
@_cache_dir_option
@_remote_options
@click.pass_context
def dry_run(
    ctx: click.Context,
    targets: tuple[str, ...],
    as_json: bool = False,
    check: bool = False,
    force: bool = False,
    force_stage: tuple[str, ...] = (),
    cache_dir: str | None = None,
    remote: str | None = None,
    remote_read_only: bool = False,
    budget: tuple[str, dict[str, float]] | None = None,
) -> None:
    """Say what a build would run, restore or skip, and why. Changes nothing.

    TARGETS are stage ids or paths the stages output (default: every stage); `build -n`
    with the same options (-B, --force-stage, --cache-dir, -S, …) prints the same."""
    # budget: (executor, --resources) of `build -n`, whose plan refuses what the build would
    executor, resources = budget if budget is not None else (None, None)

    def go() -> int:
        with _project(
            ctx,
            readonly=True,
            cache_dir=cache_dir,
            remote=remote,
            remote_read_only=remote_read_only,
            targets=targets,
        ) as project:
            rows = api.dry_run(
                project, targets, force=force, force_stages=force_stage, executor=executor,
                resources=resources,
            )  # fmt: skip
            _say_unneeded(api.forced_unneeded(project, targets, force_stage), targets)
            notes = api.stage_notes(project)
            _say_warnings(api.remote_warnings(project))
        _print_decisions(rows, as_json)
        if not as_json:  # stdout stays one line per stage
            for stage, _ in rows:
                for note in notes.get(stage, []):
                    click.echo(f"{stage}: {note}", err=True)
        stale = any(d.verdict.value != "up to date" for _, d in rows)
        return 1 if check and stale else 0

    _run(go)


@cli.command()
@click.argument("targets", nargs=-1, shell_complete=_complete_targets)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print it as JSON: {stages: [{stage, state, decision, reasons, last_result, "
    "last_duration, last_restored, last_restored_from, last_in_place, last_committed, "
    "last_adopted, last_error}], orphans, building} (last_in_place: its last build found it "
    "up to date, nothing ran or was restored; building: the build running now, or null).",
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
@_set_option
@_cache_dir_option
@_remote_options
@click.pass_context
def status(
    ctx: click.Context,
    targets: tuple[str, ...],
    as_json: bool,
    check: bool,
    run_id: str | None,
    checkpoint_dir: str | None,
    cache_dir: str | None = None,
    remote: str | None = None,
    remote_read_only: bool = False,
) -> None:
    """Each stage's state, last result and duration; orphaned outputs.

    With TARGETS (stage ids or output paths): those stages and what they need."""
    if checkpoint_dir and not cache_dir:
        ctx.find_root().obj["store_option"] = "--checkpoint-dir"
    checkpoint_dir = cache_dir or checkpoint_dir
    if run_id is not None:
        _run(lambda: _run_status(ctx, run_id, as_json, checkpoint_dir))

    def go() -> int:
        with _project(
            ctx,
            readonly=True,
            cache_dir=checkpoint_dir,
            remote=remote,
            remote_read_only=remote_read_only,
            targets=targets,
        ) as project:
            info = api.status(project, targets)
            _say_warnings(api.remote_warnings(project))
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
                said = {  # what the state says already: not "failed (the last run failed)"
                    row["state"],
                    {"failed": "the last run failed"}.get(row["state"]),
                    {"interrupted": "the last run was interrupted"}.get(row["state"]),
                }
                reasons = [r for r in row["reasons"] if r not in said]
                why = f" ({'; '.join(reasons)})" if reasons else ""
                dur = row["last_duration"]
                last = (
                    f"  [last: {row['last_result']}, {dur:.1f}s{_retried(row)}]"
                    if dur is not None
                    else ""
                )
                if row["last_restored"] and row["last_result"] == "ok":  # no run here: say so
                    took = f"; it ran in {dur:.1f}s when built" if dur is not None else ""
                    source = restored_from({"source": row.get("last_restored_from")})
                    last = f"  [last: restored from {source}{took}]"
                if row.get("last_in_place") and row["last_result"] == "ok":  # nor here
                    took = f"; it ran in {dur:.1f}s when built" if dur is not None else ""
                    last = f"  [last: up to date, its outputs in place{took}]"
                if row.get("last_committed") and row["last_result"] == "ok":
                    last = "  [last: accepted by `pipemake commit`, not run]"
                if row.get("last_adopted") and row["last_result"] == "ok":
                    last = "  [last: its outputs were as pipemake.lock records, not run]"
                locked = ""
                if "lock" in row and row["state"] != "up to date":
                    lock_why = "; ".join(row["lock"])
                    locked = f"; {lock_why}" if lock_why else "; as in pipemake.lock"
                said = f"{row['stage']}: {row['state']}{why}{locked}{last}"
                click.echo(visible(said, oneline=True))
                if row["state"] == "failed" and row["last_error"]:
                    # its first line and the useful rest (the command's output, the
                    # traceback's last frames), cut as the build's summary cuts it
                    error = row["last_error"].strip()
                    click.echo("    " + visible(error.splitlines()[0].rstrip(":")))
                    for line in error_lines(error):
                        click.echo("    " + visible(line))
            if info.get("lock_problem"):
                click.echo(f"pipemake.lock: {info['lock_problem']}", err=True)
            if info["orphans"]:
                click.echo("orphaned outputs (remove with `pipemake clean --orphans`):")
                for path in info["orphans"]:
                    click.echo(f"  {path}")
        stale = any(r["state"] != "up to date" for r in info["stages"])
        return 1 if check and stale else 0

    _run(go)


def _run_status(ctx: click.Context, run_id: str, as_json: bool, cache_dir: str | None) -> int:
    """``status --pipeline-id RUN``: one build's state, progress and stages."""
    info = api.run_status(_pipeline_file(ctx).parent, run_id)  # the history only
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
    if info.get("eta") is not None:
        click.echo(f"eta:      about {info['eta']:.0f}s left (from past runs and its progress)")
    for stage, state in info["stages"].items():
        error = info["failed"].get(stage)
        click.echo(visible(f"  {stage}: {state}" + (f" ({error})" if error else "")))
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
@_set_option
@click.pass_context
def validate(ctx: click.Context, config: str | None) -> None:
    """Check the pipeline and print the execution plan."""
    _use_config(ctx, config)

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
    type=click.Choice(["text", "mermaid", "dot", "svg", "html"]),
    default="text",
    show_default=True,
    help="text, Mermaid or Graphviz dot source; or a picture: svg (boxes coloured by each "
    "stage's state), html (that picture in a self-contained page, with the Mermaid source).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="Write to FILE instead of printing (e.g. -o dag.svg).",
)
@click.option(
    "--engine",
    type=click.Choice(["auto", "dot", "builtin"]),
    default="auto",
    show_default=True,
    help="How svg/html draw: Graphviz's dot when installed (auto), dot only, or "
    "pipemake's own layered layout (builtin, no dependency).",
)
@_set_option
@click.pass_context
def graph(ctx: click.Context, fmt: str, output: str | None, engine: str) -> None:
    """Show the stage graph, or draw it (--format svg -o dag.svg)."""

    def go() -> int:
        with _project(ctx, readonly=True) as project:
            if output is not None:
                _not_own_file(output, project.pipeline)
            text = api.graph(project, fmt, engine)
        if output is None:
            click.echo(text)
            return 0
        _write_atomically(output, text if text.endswith("\n") else text + "\n")
        click.echo(f"wrote {output}", err=True)
        return 0

    _run(go)


def _not_own_file(path: str, pipeline: Any) -> None:
    """Refuse ``-o PATH`` naming one of the pipeline's own files (the pipeline file, a params
    file, the lock): a picture written there would replace it."""
    target = os.path.realpath(path)
    for rel, what in pipeline.own_files().items():
        if os.path.realpath(pipeline.root / rel) == target:
            raise UsageError(f"-o {path} is {what}: a picture written there would replace it")


def _write_atomically(path: str, text: str) -> None:
    """Write ``path`` whole or not at all (a reader never sees half a picture)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"-o {path}: the folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".pipemake-graph-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@cli.command("list")
@click.option("--runs", is_flag=True, help="List past runs instead of stages.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON: the stages as [{stage, rule, needs, outputs, notes}] (needs: the stages "
    "it depends on; outputs: name → path); with --runs, the runs.",
)
@click.option("--no-header", is_flag=True, help="Rows only, no header line (for scripts).")
@click.option("--checkpoint-dir", default=None, metavar="DIR", help="The store (as --cache-dir).")
@_set_option
@click.pass_context
def list_cmd(
    ctx: click.Context, runs: bool, as_json: bool, no_header: bool, checkpoint_dir: str | None
) -> None:
    """List stages with their rules and outputs, one tab-separated row each (--json: as
    JSON; --runs: past runs, a running build as `running`, a killed one as `incomplete`)."""

    if checkpoint_dir:
        ctx.find_root().obj["store_option"] = "--checkpoint-dir"

    def go() -> int:
        if not runs:
            with _project(ctx, readonly=True, cache_dir=checkpoint_dir) as project:
                if as_json:
                    click.echo(json.dumps(api.list_stages(project), indent=2))
                    return 0
                if not no_header:
                    click.echo("STAGE\tRULE\tOUTPUTS")
                for row in api.list_stages(project):
                    outs = ", ".join(row["outputs"].values())
                    click.echo(f"{row['stage']}\t{row['rule']}\t{outs}")
            return 0
        rows = api.list_runs(_pipeline_file(ctx).parent)  # the history only: no pipeline load
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
        found = api.show_log(_pipeline_file(ctx).parent, run)  # the history only
        if as_json:
            for event in found["events"]:
                click.echo(json.dumps(event))
        else:
            for line in log_lines(found["events"], verbose=not quiet):
                click.echo(line)
        return 0

    _run(go)


@cli.command()
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; any but loopback prints a one-time token the page asks for.",
)
@click.pass_context
def serve(ctx: click.Context, port: int, host: str) -> None:
    """A local web page: the running build, the history, the dataset with curation."""
    from .serve import serve as run_server

    def go() -> int:
        run_server(_pipeline_file(ctx).resolve(), host, port, say=click.echo)
        return 0

    _run(go)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("run", required=False)
@click.option(
    "-o", "--output", default="report.html", show_default=True, help="The HTML file to write."
)
@click.pass_context
def report(ctx: click.Context, run: str | None, output: str) -> None:
    """One run's history and dataset as a self-contained HTML file (RUN: an id or -1, -2…)."""
    from .serve.report import write_report

    def go() -> int:
        file = _pipeline_file(ctx).resolve()
        for own, what in ((file, "the pipeline file"), (file.parent / LOCK_FILE, LOCK_FILE)):
            if os.path.realpath(output) == os.path.realpath(own):
                raise UsageError(f"-o {output} is {what}: a report written there would replace it")
        path = write_report(file, Path(output), run)
        click.echo(f"wrote {_shown(path)} ({path.stat().st_size / 1e6:.1f} MB)")
        return 0

    _run(go)


@cli.command()
@click.argument("targets", nargs=-1, shell_complete=_complete_targets)
@click.option("--orphans", is_flag=True, help="Only outputs that no stage reads or writes now.")
@click.option("--with-deps", is_flag=True, help="Also the outputs of the targets' upstream stages.")
@click.option(
    "-y",
    "--yes",
    "--force",
    "yes",
    is_flag=True,
    help="Also remove, unasked, outputs the store does not hold as they are now (edited or "
    "added to by hand): a build cannot bring those back.",
)
@_set_option
@_cache_dir_option
@_lock_timeout_option
@click.pass_context
def clean(
    ctx: click.Context,
    targets: tuple[str, ...],
    orphans: bool,
    with_deps: bool,
    yes: bool,
    cache_dir: str | None = None,
    lock_timeout: str | None = None,
) -> None:
    """Remove outputs from the workspace; the store keeps them (a build restores them).

    `clean TARGET…` removes those stages' own outputs (`--with-deps`: their upstream
    stages' too); `clean` alone removes every stage's. An output the store does not hold
    as it is now (edited by hand, a file added to it, a link put in its place) cannot be
    brought back by a build: it is removed only after you say yes (`--yes`/`--force`:
    without asking). `--orphans` removes what earlier builds placed that no stage reads or
    writes now; one that differs from what pipemake wrote there is asked about alike.
    Without a terminal to ask on and without `--yes`, those are kept, named on stderr, and
    the exit code is 1 (nothing was lost, but not all was done). Symlinks are removed as
    links; what they point to is never touched.
    """
    kept: list[str] = []

    def confirm(path: str) -> bool:
        if yes:
            return True
        if _interactive():
            what = (
                "what pipemake wrote there (edited since?)"
                if orphans
                else "what the store holds (edited or added to by hand, or never stored): "
                "a build cannot bring it back"
            )
            return click.confirm(
                f"{visible(path, name=True)} is not {what}; remove it?",
                default=False,
                err=True,
            )
        kept.append(path)
        return False

    def go() -> int:
        timeout = _parse_duration(lock_timeout)
        with _project(ctx, cache_dir=cache_dir, targets=targets) as project:
            removed = api.clean(
                project, targets, orphans_only=orphans, with_deps=with_deps, confirm=confirm,
                lock_timeout=timeout, on_lock_wait=_waiting,
            )  # fmt: skip
        for path in removed:
            click.echo(f"removed {visible(path, name=True)}")
        for path in kept:
            shown = visible(path, name=True)
            again = (
                "--orphans --yes" if orphans else f"--yes {visible(shlex.quote(path), name=True)}"
            )
            what = "what pipemake wrote there (edited since?)" if orphans else (
                "what the store holds (edited or added to by hand, or never stored), so a "
                "build could not bring it back"
            )  # fmt: skip
            click.echo(f"kept {shown}: it is not {what}; remove it with `pipemake clean "
                       f"{again}`, or by hand", err=True)  # fmt: skip
        if not removed and not kept:
            click.echo("nothing to remove")
        return 1 if kept else 0

    _run(go)


@cli.command(short_help="Start a project: a commented starter pipemake.yaml.")
@click.option(
    "--example",
    type=click.Choice(["quickstart", "character_dataset"]),
    default=None,
    help="Copy one of pipemake's examples instead of writing a starter pipeline.",
)
@click.pass_context
def init(ctx: click.Context, example: str | None) -> None:
    """Start a project here (or in -C DIR): a commented starter pipemake.yaml.

    Also adds .pipemake/ (the store and pipemake's own files) to .gitignore. Never
    overwrites a file: an existing pipeline file is an error (exit 2) saying what to do.
    """

    def go() -> int:
        o = ctx.find_root().obj
        folder, written = api.init(o["directory"], o["file"], example)
        for rel in written:
            click.echo(f"wrote {_shown(folder / rel)}")
        where = "".join(f" {flag} {o[key]}" for flag, key in (("-C", "directory"), ("-f", "file"))
                        if o[key] and not (key == "file" and example))  # fmt: skip
        click.echo(f"next: pipemake{where} build   (pipemake{where} dry-run says what would run)")
        return 0

    _run(go)


@cli.command("commit", short_help="Accept outputs as they are, without running (make -t).")
@click.argument("targets", nargs=-1, shell_complete=_complete_targets)
@click.option(
    "-n", "--dry-run", "dry", is_flag=True, help="Say what would be accepted; change nothing."
)
@_set_option
@_lock_timeout_option
@click.pass_context
def commit_cmd(
    ctx: click.Context, targets: tuple[str, ...], dry: bool, lock_timeout: str | None = None
) -> None:
    """Accept the outputs in the workspace as built, without running (make -t, dvc commit).

    After editing an output by hand, `pipemake commit STAGE` records it as that stage's
    build for its current inputs and params (stored like a run's outputs), so the next
    build keeps the edit instead of restoring or rerunning; stages downstream see the new
    bytes. TARGETS are stage ids or output paths (default: every stage). A stage whose
    output is missing, or whose key needs an upstream stage built first, is refused, and
    then nothing is accepted (exit 2). Waits for a running build of this workspace first
    (`--lock-timeout`).
    """

    def go() -> int:
        timeout = _parse_duration(lock_timeout)
        with _project(ctx, targets=targets) as project:
            rows = api.commit(
                project, targets, dry=dry, lock_timeout=timeout, on_lock_wait=_waiting
            )

        # file names (outputs, a foreach stage's items) come from the workspace: shown
        # escaped, so one cannot retitle the terminal or forge a line
        def say(line: str) -> None:
            click.echo(visible(line, name=True, oneline=True))

        for row in rows:
            outs = ", ".join(row.outputs)
            why = f" ({'; '.join(row.reasons)})" if row.reasons else ""
            if row.action == "up to date":
                say(f"{row.stage}: up to date, nothing to accept")
            else:
                say(f"{row.stage}: {row.action} {outs} as built{why}")
                for note in row.notes:  # a foreach stage's items
                    say(f"  {note}")
        return 0

    _run(go)


def _retried(row: dict[str, Any]) -> str:
    """``, 3 attempts, 3.6s of it waiting to retry`` for a last run that needed several."""
    attempts = row.get("last_attempts") or 1
    if attempts <= 1:
        return ""
    return f", {attempts} attempts, {row.get('last_retry_wait') or 0:.1f}s of it waiting to retry"


def _interactive() -> bool:
    """Whether a question can be asked (stdin and stderr are terminals)."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def _with_remote(
    ctx: click.Context,
    call: Callable[[Any, tuple[str, ...]], dict[str, Any]],
    targets: tuple[str, ...],
    remote: str | None,
    remote_read_only: bool,
    cache_dir: str | None,
) -> dict[str, Any]:
    """``call(project, targets)`` (pull or push) on the project opened with the remote the
    options name; what it says, after its warnings are shown. A second Ctrl-C while a
    request batch is under way ends the command at once (see :class:`pipemake.remote.Remote`)."""
    with _project(
        ctx, cache_dir=cache_dir, remote=remote, remote_read_only=remote_read_only
    ) as project:
        if project.remote is not None:
            project.remote.hard_stop = call.__name__
        info = call(project, targets)
    _say_warnings(info["warnings"])
    return info


@cli.command()
@click.argument("targets", nargs=-1, shell_complete=_complete_targets)
@_remote_options
@_cache_dir_option
@click.pass_context
def pull(
    ctx: click.Context,
    targets: tuple[str, ...],
    remote: str | None,
    remote_read_only: bool,
    cache_dir: str | None = None,
) -> None:
    """Fetch from the remote what TARGETS (default: every stage) need and the local store
    lacks, verified, ahead of a build."""

    def go() -> int:
        info = _with_remote(ctx, api.pull, targets, remote, remote_read_only, cache_dir)
        st = info["stats"]
        click.echo(
            f"fetched {st['entries']} entries and {st['objects']} objects "
            f"({st['bytes'] / 1e6:.1f} MB)"
        )
        for stage, verdict in info["stages"].items():
            state = {"run": "not in the remote (will run)", "maybe": "unknown until upstream runs"}
            click.echo(f"{stage}: {state.get(verdict, 'available')}")
        return 0

    _run(go)


@cli.command()
@click.argument("targets", nargs=-1, shell_complete=_complete_targets)
@_remote_options
@_cache_dir_option
@click.pass_context
def push(
    ctx: click.Context,
    targets: tuple[str, ...],
    remote: str | None,
    remote_read_only: bool,
    cache_dir: str | None = None,
) -> None:
    """Upload to the remote what was built for TARGETS (default: every stage): entries and
    their objects, each put-if-absent, an entry only after its objects."""

    def go() -> int:
        info = _with_remote(ctx, api.push, targets, remote, remote_read_only, cache_dir)
        st = info["stats"]
        replaced = st.get("replaced_entries", 0)
        click.echo(
            f"pushed {st['pushed_entries']} entries and {st['pushed_objects']} objects; "
            f"{st['present_entries']} entries were there already"
            + (f" and kept, {replaced} were there but replaced (unsigned, or signed with "
               "another key than PIPEMAKE_CACHE_KEY)" if replaced else "")
        )  # fmt: skip
        if st["skipped_entries"]:
            click.echo(
                f"{st['skipped_entries']} entries not pushed: the local store lacks their "
                "objects (see `pipemake cache verify`)",
                err=True,
            )
            return 1
        return 0

    _run(go)


@cli.group()
def cache() -> None:
    """Inspect and check the store."""


@cache.command("info")
@_cache_dir_option
@click.pass_context
def cache_info(ctx: click.Context, cache_dir: str | None = None) -> None:
    """Where the store is and what it holds."""

    def go() -> int:
        with _project(ctx, cache_dir=cache_dir) as project:
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
@click.option(
    "--max-size",
    default=None,
    metavar="SIZE",
    help="Cap the store at SIZE (e.g. 2G, 500M): evict least recently used entries, those "
    "no workspace needs first, and the objects only they name.",
)
@click.option(
    "--forget-after",
    default="30d",
    show_default=True,
    metavar="AGE",
    help="Stop keeping what a workspace sharing the store needs once it has not been seen "
    "(built or gc'd) for this long (e.g. 30d, 12h); a workspace whose pipeline file is gone "
    "is forgotten at once.",
)
@click.option("--dry-run", "dry", is_flag=True, help="Say what would go; remove nothing.")
@click.option(
    "--remote",
    "remote",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[URL]",
    help="Collect the remote store instead (URL, else PIPEMAKE_REMOTE or the pipeline's "
    "`remote:`): only objects no entry names and older than --grace (default there: a day).",
)
@_cache_dir_option
@_lock_timeout_option
@click.pass_context
def cache_gc(
    ctx: click.Context,
    keep_days: float,
    grace: float,
    max_size: str | None,
    forget_after: str,
    dry: bool,
    cache_dir: str | None = None,
    lock_timeout: str | None = None,
    remote: str | None = None,
) -> None:
    """Remove entries and objects no workspace sharing the store needs; cap its size."""
    if remote is not None:
        _run(lambda: _remote_gc(ctx, remote, grace, dry))
    from .cachegc import parse_age, parse_size

    def go() -> int:
        cap = parse_size(max_size) if max_size is not None else None
        forget = parse_age(forget_after)
        timeout = _parse_duration(lock_timeout)
        with _project(ctx, cache_dir=cache_dir) as project:
            info = api.cache_gc(
                project, keep_days=keep_days, dry=dry, grace=grace, max_size=cap,
                forget_after=forget, lock_timeout=timeout, on_lock_wait=_waiting,
            )  # fmt: skip
        verb = "would remove" if dry else "removed"
        click.echo(
            f"{verb} {info['entries_removed']} entries and {info['objects_removed']} objects "
            f"({info['bytes_freed'] / 1e6:.1f} MB); kept {info['entries_kept']} entries"
        )
        if cap is not None:
            evicted = "would evict" if dry else "evicted"
            click.echo(
                f"{evicted} {info['evicted_entries']} least recently used entries and "
                f"{info['evicted_objects']} objects for --max-size {max_size}; the store "
                f"holds {info['bytes_after'] / 1e6:.1f} MB"
            )
            if info["bytes_after"] > cap:
                click.echo(
                    "still over --max-size: what is left is younger than --grace (a build "
                    "on the store may be about to use it)",
                    err=True,
                )
        if info["forgotten"]:
            click.echo(
                f"{info['forgotten']} workspace(s) sharing the store no longer kept: not seen "
                f"for {forget_after}, or their pipeline file is gone"
            )
        for rel in info["strays"]:
            click.echo(
                f"{verb} {visible(rel, name=True)}: not an object (a link is removed, never "
                "followed)"
            )
        if info["damaged_entries"]:
            click.echo(
                f"{info['damaged_entries']} damaged entries kept for now: see "
                "`pipemake cache verify` (--repair deletes them)"
            )
        return 0

    _run(go)


def _remote_gc(ctx: click.Context, remote: str, grace: float, dry: bool) -> int:
    """``cache gc --remote``: unreachable old objects of the remote."""
    source = click.get_current_context().get_parameter_source("grace")
    if source is click.core.ParameterSource.DEFAULT:
        grace = api.REMOTE_GRACE
    elif grace < 3600 and not dry:
        click.echo(
            f"pipemake: warning: --grace {grace:g} on a remote: a push uploads a stage's "
            "objects before its entry, so objects a push is still uploading can go, and its "
            "entry then lacks them; use it only when no build pushes to this remote",
            err=True,
        )
    with _project(ctx, readonly=True, remote=remote or None) as project:
        info = api.remote_gc(project, grace=grace, dry=dry)
    verb = "would remove" if dry else "removed"
    click.echo(
        f"{verb} {info['objects_removed']} objects ({info['bytes_freed'] / 1e6:.1f} MB) from "
        f"the remote; kept {info['objects_kept']} objects and all {info['entries']} entries"
    )
    return 0


@cache.command("verify")
@click.option(
    "--repair",
    is_flag=True,
    help="Delete what is damaged: rows, entries lacking objects, things that are not "
    "objects, an unreadable action cache (it is only a cache: stages run again).",
)
@_cache_dir_option
@click.pass_context
def cache_verify(ctx: click.Context, repair: bool, cache_dir: str | None = None) -> None:
    """Check every object against its hash (corrupt objects are removed) and every entry."""

    def go() -> int:
        with _project(ctx, cache_dir=cache_dir) as project:
            info = api.cache_verify(project, repair=repair)
        done = "deleted" if repair else "--repair deletes it"
        if info["read_only"]:
            click.echo(
                f"the store {info['path']} is read-only for this user: checked as it is, "
                "nothing removed",
                err=True,
            )
        if info["reset"]:
            click.echo("the action cache was unreadable: deleted (stages run again)")
        # names, keys and problems come from the store: shown, never acted on by the terminal
        for digest in info["corrupt"]:
            fate = "not removed: read-only" if info["read_only"] else "removed"
            click.echo(visible(f"corrupt object {fate}: {digest}"))
        for key, problem in info["damaged_entries"]:
            click.echo(visible(f"damaged entry {key[:12]}: {problem} ({done}; a miss meanwhile)"))
        for key in info["incomplete_entries"]:
            note = "deleted" if repair else "its stage will run again"
            click.echo(visible(f"entry {key[:12]} lacks objects ({note})"))
        for rel, what in info["strays"]:
            fate = "removed" if repair else "--repair removes it"
            click.echo(f"{visible(rel, name=True)}: {visible(what)} ({fate})")
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

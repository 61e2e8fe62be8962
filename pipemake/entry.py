"""The ``pipemake`` command's entry point: a no-op build answered from its snapshot
(:mod:`pipemake.noop`) before the command line and the engine are even imported;
everything else goes to :mod:`pipemake.cli`, a build with a worker process already booting
(:func:`pipemake.executors.local.start_early`).

Ctrl-C. Until a command is running under the CLI's own handling (which says
``interrupted`` and exits 130, or stops a build cleanly), a Ctrl-C ends pipemake at once
with that same one line and exit 130: the handler is installed before anything else is
imported, so no Ctrl-C lands in an import as a traceback."""

from __future__ import annotations

import sys

try:  # the C module, loaded with the interpreter: ``signal.py`` builds enums (0.5 ms)
    import _signal
except ImportError:  # another Python than CPython
    import signal as _signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType

    from .errors import PipemakeError


def _early_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT before the engine is up: ``interrupted``, exit 130 (no traceback). Inside a
    command under :func:`pipemake.cli._run` it is the usual KeyboardInterrupt, which that
    catches (a build installs its own handler while it runs)."""
    run = getattr(sys.modules.get("pipemake.cli"), "_run", None)
    code = getattr(run, "__code__", None)
    while frame is not None:
        if frame.f_code is code:
            raise KeyboardInterrupt
        frame = frame.f_back
    sys.stderr.write("interrupted\n")
    sys.stderr.flush()
    _ENDING.append(True)
    raise SystemExit(130)


#: set when :func:`_early_interrupt` raised its SystemExit
_ENDING: list[bool] = []


def _swallowed(unraisable: Any) -> None:
    """Python ignores an exception raised in a callback (a weakref's, as the import system
    uses while importing): where that was the early Ctrl-C's exit, end the process as it
    said, rather than go on with the command."""
    if _ENDING and isinstance(unraisable.exc_value, SystemExit):
        import os

        os._exit(130)
    sys.__unraisablehook__(unraisable)


if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:  # not ignored (`nohup`)
    _signal.signal(_signal.SIGINT, _early_interrupt)
    sys.unraisablehook = _swallowed

import gc  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

__all__ = ["main"]


def main() -> None:
    """Console-script entry point."""
    # before anything is read: a no-op snapshot vouches only for what changed before this
    started_ns = time.time_ns()
    argv = sys.argv[1:]
    _settle_cwd(argv)
    if "build" in argv and os.environ.get("PIPEMAKE_NOOP_SNAPSHOT", "1") != "0":
        from .noop import answer

        code = answer(argv, _replay)
        if code is not None:
            sys.exit(code)
    if _builds_here(argv):
        from .executors.local import start_early
        from .noop import build_file

        found = build_file(argv)
        # it boots (and imports what the pipeline's rules need) while the engine loads
        start_early(None if found is None else str(found[0]))
    from .cli import main as cli_main

    # A build keeps several objects per file alive (walk rows, manifest entries, item
    # entries); with the default thresholds, CPython's full collections traverse them over
    # and over (tens of ms at 10,000 files). What the imports made lives as long as the
    # process: freeze it, and collect the young generation less often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    cli_main(argv, started_ns)


def _settle_cwd(argv: list[str]) -> None:
    """Where the current folder was removed (a build replaced an output folder the user
    stood in): a command given an absolute ``-C DIR`` (or ``-f FILE``) runs in that folder,
    as ``-C`` says it does; help, ``--version`` and shell completion need no folder; any
    other command exits 2 saying what happened, before anything asks for the folder."""
    try:
        os.getcwd()
        return
    except OSError:
        pass
    from .errors import CWD_GONE, UsageError

    named = _named_place(argv)
    if named is not None:
        flag, value, place = named
        try:
            os.chdir(place)
        except OSError as exc:
            _refuse(UsageError(f"{flag} {value}: {(exc.strerror or 'cannot be entered').lower()}, "
                               f"and the current folder no longer exists either"))  # fmt: skip
        else:
            os.environ["PWD"] = place
            return
    helped = not argv or any(w in ("-h", "--help", "--version") for w in argv)
    if not helped and "_PIPEMAKE_COMPLETE" not in os.environ:
        _refuse(UsageError(CWD_GONE))


def _refuse(error: PipemakeError) -> None:
    sys.stderr.write(error.format() + "\n")
    sys.stderr.flush()
    raise SystemExit(error.exit_code)


def _named_place(argv: list[str]) -> tuple[str, str, str] | None:
    """The folder the global options name absolutely, as (flag, value, folder): ``-C DIR``,
    else the folder of ``-f FILE`` (or ``-f DIR`` itself); None when they name none, or
    only relative to the current folder."""
    found: dict[str, str] = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in ("-C", "-f", "--cache-dir", "-S", "--set") and i + 1 < len(argv):
            found[word] = argv[i + 1]
            i += 2
        elif word[:2] in ("-C", "-f") and len(word) > 2:
            found[word[:2]] = word[2:]
            i += 1
        elif word.startswith(("--cache-dir=", "--set=")):
            i += 1
        else:
            break  # the command's name: what follows are its own words
    if "-C" in found:
        where = found["-C"]
        return ("-C", where, where) if os.path.isabs(where) else None
    file = found.get("-f")
    if file is None or not os.path.isabs(file):
        return None
    return "-f", file, file if os.path.isdir(file) else os.path.dirname(file)


def _builds_here(argv: list[str]) -> bool:
    """Whether the command is a ``build`` on local worker processes (not help, nor another
    executor) that will most likely run a task: in a project never built (no ``.pipemake``),
    or where the same command found everything up to date last time and its no-op snapshot
    no longer holds (something changed since). After a build that ran something the next
    is most likely a no-op, where a worker started early would only be ended again: there
    the build starts its workers itself once it knows it needs them. A wrong guess costs
    one process started and ended for nothing. ``PIPEMAKE_EARLY_WORKER=0`` turns it off."""
    from .noop import FILE, _dot, _read, context

    found = _dot(argv)
    if found is None or os.environ.get("PIPEMAKE_EARLY_WORKER", "1") == "0":
        return False
    dot, words = found
    for i, word in enumerate(words):
        if word.startswith("--executor"):
            value = word.partition("=")[2] or (words[i + 1] if i + 1 < len(words) else "")
            if value != "local":
                return False
    if not dot.exists():
        return True
    snapshot = _read(dot / FILE)  # this very command's, found stale just now
    return snapshot is not None and snapshot.get("context") == context(argv, os.getcwd())


def _replay(dot: Path, run: dict[str, Any], no_progress: bool) -> None:
    """Emit the events of a no-op build: the same view lines, run log and history."""
    from .events import Bus
    from .history import RunLog
    from .progress import make_view

    started = time.time()
    bus = Bus()
    view = make_view(no_progress)
    bus.subscribe(view)
    runlog = RunLog(dot / "runs", None, {"pipeline": run["pipeline"]})
    bus.subscribe(runlog)
    try:
        bus.emit("run_started", None, **run["started"], from_snapshot=True)
        stages = run["started"]["stages"]
        for stage in stages:
            bus.emit("stage_skipped", stage, reason="up to date")
        bus.emit("run_finished", None, ran=[], restored=[], up_to_date=stages, failed={},
                 skipped={}, duration=time.time() - started, interrupted=None)  # fmt: skip
    finally:
        view.close()
        runlog.close()

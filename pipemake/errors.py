"""One exception tree; every error carries its exit code and formats itself.

::

    PipemakeError                 exit 1
     ├── PipelineError            exit 2   the pipeline file is wrong (file, line, stage)
     ├── UsageError               exit 2   bad command-line use (unknown target, bad option)
     ├── BuildFailed              exit 1   one or more stages failed
     ├── LockTimeout              exit 1   another build held the lock too long
     ├── StoreError               exit 1   the store is unreadable or of another format
     │    └── DatabaseDamaged     exit 1   a database file is not one (which, and what to do)
     ├── DiskFull                 exit 1   no space left on the device (where)
     ├── AccessDenied             exit 1   pipemake may not read or write one of its paths
     └── Interrupted              exit 128 + signal (130 Ctrl-C, 143 SIGTERM)

:func:`os_failure` turns an ``OSError`` or SQLite error of these kinds into the error above.
"""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

__all__ = [
    "CWD_GONE",
    "AccessDenied",
    "BuildFailed",
    "DatabaseDamaged",
    "DiskFull",
    "Interrupted",
    "LockTimeout",
    "PipelineError",
    "PipemakeError",
    "Problem",
    "Problems",
    "StoreError",
    "UsageError",
    "current_folder",
    "os_failure",
]


class PipemakeError(Exception):
    """Base of every error pipemake reports to the user (never with a traceback)."""

    exit_code = 1

    def format(self) -> str:
        """The message shown to the user."""
        return f"error: {self}"


@dataclass(frozen=True)
class Problem:
    """One mistake in a pipeline file: where it is and what to do about it."""

    message: str
    file: str = ""
    line: int | None = None
    stage: str | None = None
    hint: str = ""

    def format(self) -> str:
        where = self.file or "pipeline"
        if self.line is not None:
            where += f":{self.line}"
        text = f"{where}: "
        if self.stage:
            text += f"stage {self.stage!r}: "
        text += self.message
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


class PipelineError(PipemakeError):
    """The pipeline file is wrong; nothing has run."""

    exit_code = 2

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(p.message for p in problems))

    def format(self) -> str:
        n = len(self.problems)
        head = (
            "error: the pipeline has a problem"
            if n == 1
            else f"error: the pipeline has {n} problems"
        )
        return head + ":\n" + "\n".join("  " + p.format() for p in self.problems)


class UsageError(PipemakeError):
    """The command line is wrong (unknown target, bad option value)."""

    exit_code = 2


#: what a command that needs the current folder says when it is gone
CWD_GONE = (
    "the current folder no longer exists (it was removed or replaced, e.g. by a build of an "
    "output you were standing in); cd to a folder that exists"
)


def current_folder() -> str:
    """``os.getcwd()``; where the folder was removed (a build replaced an output folder the
    user stands in), the :class:`UsageError` saying so instead of a bare ENOENT."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        raise UsageError(CWD_GONE) from None


class BuildFailed(PipemakeError):
    """One or more stages failed; those that finished are recorded."""

    def __init__(self, failed: list[str]):
        self.failed = failed
        super().__init__(f"{len(failed)} stage(s) failed: {', '.join(failed)}")


class LockTimeout(PipemakeError):
    """Another build held the workspace lock longer than ``--lock-timeout``."""


class StoreError(PipemakeError):
    """The store cannot be used (another format version, unreadable database)."""


class DatabaseDamaged(StoreError):
    """A database file pipemake keeps cannot be read as one (truncated, overwritten)."""

    def __init__(self, path: str | os.PathLike[str], detail: str, what_to_do: str):
        self.path = str(path)
        super().__init__(f"{self.path} is damaged ({detail}): {what_to_do}")


class DiskFull(PipemakeError):
    """The device (or the user's quota) is full. What was committed before stays committed;
    the build resumes where it stopped once there is room."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = str(path)
        super().__init__(
            f"no space left on device at {self.path}: free space and build again; "
            "nothing committed is lost"
        )


class WriteFailed(DiskFull):
    """The system refused to grow one of pipemake's files (SQLite's "disk I/O error", or
    EFBIG): a file-size limit (``ulimit -f``) below its size, a full disk, or a failing
    one. Said with the file, the limit when there is one, and what to do."""

    def __init__(self, path: str | os.PathLike[str], detail: str = "disk I/O error"):
        self.path = str(path)
        limit = fsize_limit()
        if limit is not None:
            cause = (
                f"this process may not write files past {limit // 1024} KiB (`ulimit -f`): "
                "raise the limit (`ulimit -f unlimited`) and build again"
            )
        else:
            cause = (
                "the disk is most likely full or failing: free space (or check the disk) and "
                "build again"
            )
        PipemakeError.__init__(
            self, f"cannot write {self.path} ({detail}): {cause}; nothing committed is lost"
        )


def fsize_limit() -> int | None:
    """The process's file-size limit in bytes (RLIMIT_FSIZE), or None when unlimited."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


class AccessDenied(PipemakeError):
    """pipemake may not create, read or write one of its own paths (a read-only workspace,
    a ``.pipemake`` owned by another user)."""

    def __init__(self, path: str | os.PathLike[str], detail: str = "permission denied"):
        self.path = str(path)
        super().__init__(
            f"cannot use {self.path} ({detail}): pipemake reads and writes it; make it "
            "writable for this user, or run pipemake as the user who owns it"
        )


_FULL = {errno.ENOSPC, errno.EDQUOT}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
#: SQLite's primary result codes: FULL, CORRUPT, NOTADB, IOERR, READONLY, PERM, CANTOPEN
_SQLITE_FULL, _SQLITE_CORRUPT, _SQLITE_NOTADB, _SQLITE_IOERR = 13, 11, 26, 10
_SQLITE_DENIED = {8, 3, 14}


def os_failure(
    exc: BaseException,
    path: str | os.PathLike[str] | None = None,
    repair: str = "delete it and run again",
) -> PipemakeError | None:
    """The clear error for ``exc`` when it is a full disk, a permission problem or (for an
    SQLite error) a damaged database, or one whose tables are not pipemake's; None for
    anything else. ``path`` is the file it concerns when the exception does not name it
    (SQLite errors never do); ``repair`` says what to do about a damaged one."""
    if isinstance(exc, PipemakeError):
        return exc
    if isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else path
        if exc.errno in _FULL:
            return DiskFull(where if where is not None else os.getcwd())
        if exc.errno == errno.EFBIG and exc.filename is not None:
            return WriteFailed(where, exc.strerror or "file too large")
        if exc.errno in _DENIED and where is not None:
            return AccessDenied(where, exc.strerror or "permission denied")
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None or path is None:
        return None
    code &= 0xFF  # an extended code's primary one
    text = str(exc)
    if code == _SQLITE_FULL:
        return DiskFull(path)
    if code == _SQLITE_IOERR:
        return WriteFailed(path, text)
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or (code == 1 and "no such" in text):
        return DatabaseDamaged(path, text, repair)
    if code in _SQLITE_DENIED:
        return AccessDenied(path, text)
    return None


class Interrupted(PipemakeError):
    """The build was stopped by a signal; what finished is kept. ``unfinished`` are the
    stages that were running and did not finish (stopped, or failed meanwhile)."""

    def __init__(self, signum: int, unfinished: Sequence[str] = ()):
        self.signum = signum
        self.unfinished = list(unfinished)
        #: False where the build's store is thrown away after it (``run --no-checkpoint``)
        self.kept = True
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by signal {signum}")

    def format(self) -> str:
        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        if self.unfinished:
            running = f"did not finish: {', '.join(self.unfinished)}"
        else:
            running = "stages already running were let finish"
        if not self.kept:
            return (
                f"interrupted by {name}: no new stages were started; {running}; the store is"
                " thrown away (--no-checkpoint): the next run starts over."
            )
        return (
            f"interrupted by {name}: no new stages were started; {running}; finished stages"
            " are kept. Run `pipemake build` again to resume."
        )


class Problems:
    """Collects the problems found in one pipeline file, to report them all at once."""

    def __init__(self, file: Path):
        self.file = file
        try:
            rel = os.path.relpath(file)
        except (ValueError, OSError):  # OSError: the current folder was removed
            rel = str(file)
        self.shown = str(file) if rel.startswith("..") else rel
        self.problems: list[Problem] = []

    def problem(self, msg: str, line: int | None, stage: str | None = None, hint: str = "") -> None:
        """Note one problem at ``line`` (of ``stage``), with what to do about it."""
        self.problems.append(Problem(msg, self.shown, line, stage, hint))

    def fail_if_any(self) -> None:
        """Raise a PipelineError holding every problem noted so far, if there is one."""
        if self.problems:
            raise PipelineError(self.problems)


def suggest(word: str, options: list[str]) -> str:
    """``did you mean 'x'?`` for the closest option, or an empty string."""
    import difflib  # only when a suggestion is wanted

    close = difflib.get_close_matches(word, options, n=1)
    return f"did you mean {close[0]!r}?" if close else ""

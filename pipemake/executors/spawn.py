"""Spawners: what starts a task's subprocesses (``ctx.popen``, ``ctx.sh``) and adds up what
they used. :class:`Spawner` serves a task in a worker process; :class:`ThreadSpawner` a task
in a thread of the build process (the local executor's ``spawns_only`` tasks), where each
command leads its own process group, the guardian watches it, and a stop ends it."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..rule import RuleError, exports
from .base import Task
from .guardian import Guardian
from .shell import Shell

__all__ = ["Spawner", "TaskStopped", "ThreadSpawner", "os_bytes", "signal_group"]


class Spawner:
    """Starts a task's subprocesses (what ``Context.popen`` calls) and adds up what they
    used. ``cwd`` and ``env`` are what each gets (None: this process's own); the local
    executor's threads use a subclass that also ends them with the task."""

    def __init__(self, cwd: str | None = None, env: dict[str, str] | None = None):
        self.cwd = cwd
        self.env = env
        self._shell: Shell | None = None
        self._sh_lock = threading.Lock()
        #: where the task's shell makes its FIFO (None: the system's temporary directory)
        self.tmp: str | None = None
        #: the last environment a shell command asked for, and its ``export`` (usually the
        #: same for all the items of a task)
        self._exported: tuple[tuple[tuple[str, str], ...], str | None] = ((), "")
        #: CPU seconds and peak memory of the subprocesses reaped so far
        self.cpu = 0.0
        self.peak_rss_mb = 0.0

    def __call__(
        self, args: Sequence[str], env: Mapping[str, str] | None, kwargs: dict[str, Any]
    ) -> subprocess.Popen[Any]:
        full = self.env
        if env:
            full = self.merged(env)
        if self.cwd is not None:
            kwargs["cwd"] = os.path.join(self.cwd, kwargs["cwd"]) if kwargs.get("cwd") else self.cwd
        return self.start(args, full, kwargs)

    def sh(
        self, cmd: str, env: Mapping[str, str] | None, output: Callable[[str], None] | None
    ) -> int | None:
        """What ``Context.sh`` calls: ``cmd`` run in the task's shell, started on first use.
        None (nothing run: the caller starts a shell of its own) when a name in ``env`` is
        not one the shell can export, another thread of the task is using the shell, or no
        FIFO can be made."""
        key = tuple(env.items()) if env else ()
        if key != self._exported[0]:
            self._exported = (key, exports(env))
        if self._exported[1] is None:
            return None
        if not self._sh_lock.acquire(blocking=False):
            return None  # another thread of the task is using its shell: a process of its own
        try:
            for _ in range(2):  # a shell found gone before the command started: a new one
                shell = self._shell
                if shell is None or shell.ended:
                    shell = self._shell = self._new_shell()
                    if shell is None:
                        return None
                code = shell.run(cmd, self._exported[1], output)
                if code is not None:
                    return code
            return None
        finally:
            self._sh_lock.release()

    def _new_shell(self) -> Shell | None:
        """A shell for the task's commands, its FIFO in ``tmp`` (the stage's staging
        directory: gone with the stage, or with the next build if this one is killed) or
        else in the system's temporary directory; None where no FIFO can be made."""
        for where in dict.fromkeys([self.tmp, None]):
            kwargs: dict[str, Any] = {"cwd": self.cwd} if self.cwd is not None else {}
            try:
                return Shell(self, kwargs, where)
            except OSError:  # no FIFO there (a filesystem without them, read-only)
                continue
        return None

    def end_shell(self) -> None:
        """End the task's shell, if one was started (when the task's commands are done)."""
        if self._shell is not None:
            self._shell.end()
            self._shell = None

    def merged(self, env: Mapping[str, str]) -> Mapping[Any, Any]:
        """The environment of a subprocess started with ``env`` on top of the task's."""
        return dict(os.environ if self.env is None else self.env, **env)

    def start(
        self, args: Sequence[str], env: Mapping[Any, Any] | None, kwargs: dict[str, Any]
    ) -> subprocess.Popen[Any]:
        # as bytes: Popen's own encoding (the locale's) fails on a command holding "é" under
        # LANG=C; a command comes from a UTF-8 pipeline file, and is passed on as written
        args = os_bytes(args) if isinstance(args, str) else [os_bytes(a) for a in args]
        if env is not None and isinstance(next(iter(env), b""), str):
            env = {os_bytes(k): os_bytes(v) for k, v in env.items()}
        try:
            return _Proc(self, args, env=env, **kwargs)
        except OSError as exc:
            if exc.errno == errno.E2BIG:
                raise RuleError(_too_long(args, os.environ if env is None else env)) from None
            raise

    def reaped(self, usage: resource.struct_rusage) -> None:
        self.cpu += usage.ru_utime + usage.ru_stime
        self.peak_rss_mb = max(self.peak_rss_mb, usage.ru_maxrss / 1024.0)


class _Proc(subprocess.Popen):  # type: ignore[type-arg]
    """A Popen reaped with ``wait4``, so the spawner learns what the process used."""

    def __init__(self, spawner: Spawner, *args: Any, **kwargs: Any):
        self._spawner = spawner
        super().__init__(*args, **kwargs)

    def _try_wait(self, wait_flags: int) -> tuple[int, int]:  # as Popen's, plus the usage
        try:
            pid, sts, usage = os.wait4(self.pid, wait_flags)
        except ChildProcessError:
            return self.pid, 0
        if pid == self.pid:
            self._spawner.reaped(usage)
        return pid, sts


def os_bytes(text: str | bytes | os.PathLike[Any]) -> bytes:
    """``text`` as the bytes of a command line, a variable or a path: as the locale writes
    it (``os.fsencode``, so a file name read from the disk comes back as it was), or as
    UTF-8 where the locale cannot write a character (an ASCII locale, and a pipeline file's
    ``é``)."""
    try:
        return os.fsencode(text)
    except UnicodeEncodeError:
        return os.fspath(text).encode("utf-8", "surrogateescape")  # type: ignore[union-attr]


def _too_long(args: Sequence[str] | str, env: Mapping[Any, Any]) -> str:
    """Why the system refused to start a command of this size (``E2BIG``), and what to do."""
    strings = [args] if isinstance(args, str | bytes) else list(args)
    strings += [f"{k}={v}" for k, v in env.items()]
    sizes = [len(os_bytes(a)) + 1 for a in strings]
    one = 32 * os.sysconf("SC_PAGE_SIZE")  # Linux's MAX_ARG_STRLEN: one argument's limit
    if max(sizes) > one:
        what = f"{max(sizes) - 1:,} bytes; the limit is {one:,} for one argument"
    else:
        what = f"{sum(sizes):,} bytes with its environment; the limit is "
        what += f"{os.sysconf('SC_ARG_MAX'):,}"
    return f"command too long ({what}): put it in a script and run that"


class TaskStopped(BaseException):
    """Raised in a task's thread when a stopped task would start another subprocess."""


class ThreadSpawner(Spawner):
    """Starts a threaded task's commands, each leading its own process group, and stops
    them with the task."""

    def __init__(self, task: Task, guardian: Guardian):
        super().__init__(task.root, dict(os.environ, **task.env) if task.env else None)
        self.guardian = guardian
        #: environments already merged and encoded, by the extra variables asked for: a
        #: foreach task's commands mostly ask for the same ones
        self._envs: dict[tuple[tuple[str, str], ...], dict[bytes, bytes]] = {}
        self._null = -1
        self.lock = threading.Lock()
        self.procs: list[subprocess.Popen[Any]] = []
        #: the signal the task was stopped with, and whether that ended or prevented a command
        self.stopped: int | None = None
        self.hit = False
        #: whether a command of the task's shell (``sh``) may be running
        self.commanding = False

    def merged(self, env: Mapping[str, str]) -> Mapping[Any, Any]:
        # this process's os.environ never changes while it builds, so neither does the merge
        key = tuple(env.items())
        full = self._envs.get(key)
        if full is None:
            base = os.environ if self.env is None else self.env
            full = {os_bytes(k): os_bytes(v) for k, v in dict(base, **env).items()}
            if len(self._envs) >= 64:
                self._envs.clear()
            self._envs[key] = full
        return full

    def start(
        self, args: Sequence[str], env: Mapping[Any, Any] | None, kwargs: dict[str, Any]
    ) -> subprocess.Popen[Any]:
        kwargs["start_new_session"] = True  # its own group: Ctrl-C misses it, a stop ends it
        kwargs.pop("process_group", None)
        with self.lock:
            if self.stopped is not None:
                self.hit = True
                raise TaskStopped(self.stopped)
            if kwargs.get("stdin") == subprocess.DEVNULL:
                kwargs["stdin"] = self._devnull()  # one /dev/null for all the task's commands
            ended = [p.pid for p in self.procs if p.returncode is not None]
            if ended:
                self.procs = [p for p in self.procs if p.returncode is None]
            proc = super().start(args, env, kwargs)
            self.procs.append(proc)
            self.guardian.update(ended, proc.pid)  # one write for both
        return proc

    def sh(
        self, cmd: str, env: Mapping[str, str] | None, output: Callable[[str], None] | None
    ) -> int | None:
        with self.lock:
            if self.stopped is not None:
                self.hit = True
                raise TaskStopped(self.stopped)
            self.commanding = True  # from here a stop ends a command of the task's shell
        try:
            return super().sh(cmd, env, output)
        finally:
            self.commanding = False

    def stop(self, sig: int) -> None:
        with self.lock:
            if self.stopped is None or sig == signal.SIGKILL:
                self.stopped = sig
            # the task's shell between commands: ended, but no command of the task was
            idle = self._shell.proc if self._shell is not None and not self.commanding else None
            for p in self.procs:
                if p.returncode is None:
                    signal_group(p.pid, sig)
                    if p is not idle:
                        self.hit = True

    def _devnull(self) -> int:
        if self._null < 0:
            self._null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        return self._null

    def close(self) -> None:
        with self.lock:
            for p in self.procs:
                self.guardian.forget(p.pid)
            self.procs = []
            if self._null >= 0:
                os.close(self._null)
                self._null = -1


def signal_group(pid: int | None, sig: int) -> None:
    if pid is None:
        return
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

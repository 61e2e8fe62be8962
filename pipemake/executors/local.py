"""The local executor: a pool of worker processes, reused across tasks.

Each worker is its own process group (so Ctrl-C in the terminal reaches only pipemake,
which decides what to stop) and dies with its parent (``PR_SET_PDEATHSIG``), taking its
children with it. A worker that crashes or is killed fails only the task it held; the pool
starts another. Because workers live for the whole build, a rule's ``setup`` (a model
load) runs once per worker, not once per item.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from .base import Executor, Message, Task

__all__ = ["LocalExecutor"]


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _on_term(signum: int, frame: Any) -> None:
    # End the whole tree this worker leads: the rule's subprocesses and the worker itself.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.killpg(0, signal.SIGTERM)
    os._exit(128 + signum)


def _worker_main(conn: Connection, parent: int) -> None:
    os.setsid()
    _die_with_parent()
    if os.getppid() != parent:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_term)
    from ..worker import execute

    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            break
        if task is None:
            break

        def send(kind: str, data: Any, _id: str = task.id) -> None:
            conn.send((_id, kind, data))

        execute(task, send)
    conn.close()


class _Worker:
    def __init__(self, ctx: Any):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, os.getpid()), daemon=True)
        self.proc.start()
        child.close()
        self.task: Task | None = None
        self.started = 0.0


class LocalExecutor(Executor):
    """Worker processes on this machine, at most ``jobs`` of them."""

    name = "local"

    def __init__(self, jobs: int = 1):
        super().__init__(jobs)
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []

    def submit(self, task: Task) -> None:
        worker = next((w for w in self._workers if w.task is None), None)
        if worker is None:
            worker = _Worker(self._ctx)
            self._workers.append(worker)
        worker.task = task
        worker.started = time.monotonic()
        worker.conn.send(task)

    def poll(self, timeout: float | None) -> list[Message]:
        busy = [w for w in self._workers if w.task is not None]
        if not busy:
            if timeout:
                time.sleep(min(timeout, 0.05))
            return []
        waitables: list[Any] = [w.conn for w in busy] + [w.proc.sentinel for w in busy]
        ready = wait(waitables, timeout)
        out: list[Message] = []
        for w in busy:
            if w.conn in ready:
                out.extend(self._drain(w))
        for w in busy:
            if w.task is not None and w.proc.sentinel in ready and not w.proc.is_alive():
                out.extend(self._drain(w))
                if w.task is not None:
                    out.append(Message(w.task.id, "error", [_death(w.proc.exitcode), None]))
                    w.task = None
                self._workers.remove(w)
        return out

    def _drain(self, w: _Worker) -> list[Message]:
        out = []
        try:
            while w.conn.poll():
                task_id, kind, data = w.conn.recv()
                out.append(Message(task_id, kind, data))
                if kind in ("result", "error"):
                    w.task = None
        except (EOFError, OSError):
            pass
        return out

    def cancel(self, task_ids: list[str], force: bool = False) -> None:
        for w in self._workers:
            if w.task is not None and w.task.id in task_ids:
                _signal_group(w.proc.pid, signal.SIGKILL if force else signal.SIGTERM)

    def running(self) -> dict[str, float]:
        """Running task ids and when they started (monotonic seconds)."""
        return {w.task.id: w.started for w in self._workers if w.task is not None}

    def close(self) -> None:
        for w in self._workers:
            if w.task is not None:
                _signal_group(w.proc.pid, signal.SIGKILL)
            else:
                try:
                    w.conn.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + 0.5
        for w in self._workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                _signal_group(w.proc.pid, signal.SIGKILL)
                w.proc.join(1)
            w.conn.close()
        self._workers = []


def _signal_group(pid: int | None, sig: int) -> None:
    if pid is None:
        return
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _death(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the worker process was killed ({name})"
    return f"the worker process exited unexpectedly (exit code {code})"

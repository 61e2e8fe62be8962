"""The local executor: a pool of worker processes, reused across tasks, and threads for
rules that only start subprocesses.

Each worker is its own process group (so Ctrl-C in the terminal reaches only pipemake,
which decides what to stop) and dies with its parent (``PR_SET_PDEATHSIG``), taking its
children with it. A worker that crashes or is killed fails only the task it held; the pool
starts another. Because workers live for the whole build, a rule's ``setup`` (a model
load) runs once per worker, not once per item.

A task of a rule that sets ``spawns_only`` (``shell``) runs in a thread of this process
instead: starting a worker (a Python process that imports pipemake) costs more than a short
command, and the thread needs no pickling per task. The guarantees stay those of a worker:
each command it starts leads its own process group (so Ctrl-C reaches only pipemake, and a
timeout or a stop ends the command's whole tree), gets the task's environment explicitly
(``os.environ`` of this process never changes), and a guardian process, started with the
first such task, ends whatever commands still run when this process dies, even by
``kill -9``. A stopped task's next command never starts; one that ignores SIGTERM gets
SIGKILL after a few seconds. At most ``ITEM_THREADS`` big batches of foreach items run in
threads at once (more would queue on the GIL); further ones go to worker processes.
"""

from __future__ import annotations

import atexit
import ctypes
import multiprocessing as mp
import multiprocessing.spawn as mp_spawn
import multiprocessing.util as mp_util
import os
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from ..rule import get_rule, local_only, registry
from .base import LOST, Executor, Message, Task

if TYPE_CHECKING:  # pragma: no cover
    from .guardian import Guardian
    from .spawn import ThreadSpawner

# the task runner, spawners and guardian are imported where they are used, so that this
# module is light: start_early() imports it before the engine is loaded
__all__ = ["LocalExecutor", "start_early"]

#: seconds between SIGTERM and SIGKILL for a thread's commands, and then before a thread
#: still blocked (on output a stray grandchild keeps open) is given up for stopped
KILL_AFTER_TERM = 5.0
GIVE_UP_AFTER_KILL = 2.0
#: batches of more than SMALL_BATCH foreach items run in at most ITEM_THREADS threads at
#: once, the others in worker processes: each item's Python side (hashing and storing its
#: outputs) holds the GIL, so many threads of short commands would queue on it where
#: processes run side by side; a small batch is not worth starting a worker for
ITEM_THREADS = 2
SMALL_BATCH = 8


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


def _forget_parents_exit_handlers() -> None:
    """In a forked worker: drop the exit handlers and ``weakref.finalize`` callbacks it
    inherited from the process it was forked from (a program that embeds pipemake may have
    a temporary directory to remove at its exit: that is the program's to do, once, not
    each worker's). The worker's own, registered from here on, still run at its end."""
    atexit._clear()
    for info in list(weakref.finalize._registry.values()):  # type: ignore[attr-defined]
        info.atexit = False
    weakref.finalize._registered_with_atexit = False  # type: ignore[attr-defined]


def _worker_main(
    conn: Connection,
    parent: int,
    rules: tuple[str, dict[str, str]] | None,
    pipeline: str | None = None,
    forked: bool = False,
    running: Any = None,
) -> None:
    if forked:
        _forget_parents_exit_handlers()
    os.setsid()
    _die_with_parent()
    if os.getppid() != parent:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_term)
    if pipeline is not None:  # started early: import what its first task will, meanwhile
        from .preload import start

        start(pipeline)
    from ..rule import adopt_registry
    from .worker import execute, watch

    watch(running)

    if rules is not None:
        adopt_registry(rules)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            break
        if task is None:
            break
        if isinstance(task, tuple):  # an early worker's registry, before its first task
            adopt_registry(task)
            continue

        def send(kind: str, data: Any, _id: str = task.id) -> None:
            conn.send((_id, kind, data))

        execute(task, send)
    conn.close()
    # Skip the interpreter's teardown (unloading PyAV, a model, the tasks' modules: tens of
    # milliseconds the build would wait for at its end), not what code asked to run at exit
    # (a rule's temporary folder, say): those handlers and the streams' buffers go first.
    with suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    os._exit(0)


_SPAWNING = threading.Lock()


@contextmanager
def _no_cwd_on_their_path() -> Iterator[None]:
    """While processes are spawned: their Python does not put its working directory (often
    the project root) first on ``sys.path``, where a ``copy.py`` or ``threading.py`` of the
    user's would be imported instead of the standard library's before ``sys.path`` is set
    to this process's. ``-P`` where Python has it (3.11), else ``-I`` (the environment it
    ignores is still the child's, and its ``sys.path`` comes from here).

    Nor do they run this process's main script again (``multiprocessing`` imports it as
    ``__mp_main__`` in every spawned child): a worker needs nothing of it (a rule class
    defined there runs in threads of this process, see :func:`pipemake.register_rule`),
    and a script that builds at its top level, without ``if __name__ == "__main__":``,
    would start its build again in each worker, which would wait for this build's lock
    forever."""
    flag = "-P" if sys.version_info >= (3, 11) else "-I"
    with _SPAWNING:
        flags = mp_util._args_from_interpreter_flags
        prepare = mp_spawn.get_preparation_data

        def safe() -> list[str]:
            args = flags()
            return args if "-I" in args or flag in args else [flag, *args]

        def without_main(name: str) -> dict[str, Any]:
            data = prepare(name)
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
            return data

        mp_util._args_from_interpreter_flags = safe
        mp_spawn.get_preparation_data = without_main
        try:
            yield
        finally:
            mp_util._args_from_interpreter_flags = flags
            mp_spawn.get_preparation_data = prepare


class _Worker:
    def __init__(self, ctx: Any, early: bool = False, pipeline: str | None = None):
        self.conn, child = ctx.Pipe()
        rules = None if early else registry()  # an early worker is sent it when adopted
        #: which item of its foreach task it runs (the worker says; read when it dies)
        self.running = ctx.RawValue("q", -1)
        forked = ctx.get_start_method() == "fork"
        args = (child, os.getpid(), rules, pipeline, forked, self.running)
        self.proc = ctx.Process(target=_worker_main, args=args, daemon=True)
        with _no_cwd_on_their_path():  # its resource tracker too, if this starts that
            self.proc.start()
        child.close()
        self.task: Task | None = None
        self.started = 0.0
        #: whether it ever held a task (one started ahead and never used is just killed)
        self.used = False


#: workers started by :func:`start_early`, waiting for the build's executor to adopt them
_EARLY: list[_Worker] = []


def start_early(pipeline: str | None = None) -> None:
    """Start one worker process now, before the command line and the engine are imported.

    A new Python process importing pipemake takes longer than the build takes to load its
    pipeline and decide, so a worker started only when the build knows it needs one (see
    :meth:`LocalExecutor.prestart`) keeps the first task waiting; started here, it boots
    while the build loads. The first :class:`LocalExecutor` of this process adopts it (it is
    sent the rule registry then); one that no task uses is ended with the build, and one no
    executor adopts ends with this process (it is a daemon and dies with its parent).

    On Linux, in a process with no other thread yet (the ``pipemake`` command at its
    start), the worker is a ``fork`` of this process: it has Python and the modules loaded
    so far already, and is ready in milliseconds instead of the tenth of a second a new
    interpreter takes. Elsewhere it is spawned, as every later worker is (a fork of a
    process with threads may inherit a lock held by one of them).

    With ``pipeline`` (the pipeline file the command names), the worker imports what its
    rules declare in ``preload`` while it waits (:mod:`pipemake.executors.preload`).
    """
    _EARLY.append(_Worker(_early_context(), early=True, pipeline=pipeline))


def _early_context() -> Any:
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return mp.get_context("fork")
    return mp.get_context("spawn")


class _Threaded:
    def __init__(self, task: Task, spawner: ThreadSpawner):
        self.task = task
        self.spawner = spawner
        self.started = time.monotonic()
        self.thread: threading.Thread | None = None
        self.term_at: float | None = None
        self.kill_at: float | None = None
        self.answered = False


def _spawns_only(rule_name: str) -> bool:
    try:
        rule = get_rule(rule_name)
    except Exception:  # noqa: BLE001 - a worker will report it
        return False
    return rule is not None and rule.spawns_only


class LocalExecutor(Executor):
    """Worker processes on this machine, at most ``jobs`` of them, and threads for the
    tasks of ``spawns_only`` rules."""

    name = "local"

    def __init__(self, jobs: int = 1):
        super().__init__(jobs)
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        self._threads: dict[str, _Threaded] = {}
        self._guardian: Guardian | None = None
        self._inbox: list[Message] = []
        self._inbox_lock = threading.Lock()
        self._woken = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._adopt_early()

    def _adopt_early(self) -> None:
        """Take over the workers :func:`start_early` started (as many as ``jobs``)."""
        while _EARLY and len(self._workers) < self.jobs:
            worker = _EARLY.pop()
            try:
                worker.conn.send(registry())
            except OSError:  # it died booting: a new one starts when one is needed
                worker.proc.join(1)
                worker.conn.close()
                continue
            self._workers.append(worker)

    def worker_pids(self) -> list[int]:
        """The process ids of this pool's worker processes now (idle or busy)."""
        return [w.proc.pid for w in self._workers]

    def prestart(self, workers: int) -> None:
        while len(self._workers) < min(workers, self.jobs):
            self._workers.append(_Worker(self._ctx))

    def submit(self, task: Task) -> None:
        if local_only(task.rule) or (  # registered in this process only: no worker has it
            _spawns_only(task.rule)
            and (
                len(task.items) <= SMALL_BATCH
                or sum(1 for t in self._threads.values() if len(t.task.items) > SMALL_BATCH)
                < ITEM_THREADS
            )
        ):
            self._start_thread(task)
            return
        worker = next((w for w in self._workers if w.task is None), None)
        if worker is None:
            worker = _Worker(self._ctx)
            self._workers.append(worker)
        worker.task = task
        worker.running.value = -1
        worker.used = True
        worker.started = time.monotonic()
        worker.conn.send(task)

    def poll(self, timeout: float | None) -> list[Message]:
        busy = [w for w in self._workers if w.task is not None]
        if self._threads:
            self._escalate()
        if not busy and not self._threads:
            if timeout:
                time.sleep(min(timeout, 0.05))
            return []
        waitables: list[Any] = [w.conn for w in busy] + [w.proc.sentinel for w in busy]
        ready = wait([*waitables, self._wake_r], timeout)
        out: list[Message] = self._drain_threads() if self._wake_r in ready else []
        for w in busy:
            if w.conn in ready:
                out.extend(self._drain(w))
        for w in busy:
            if w.task is not None and w.proc.sentinel in ready and not w.proc.is_alive():
                out.extend(self._drain(w))
                if w.task is not None:
                    text, at = _death(w.proc.exitcode), w.running.value
                    out.append(Message(w.task.id, "error", [text, None, LOST, at]))
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
        now = time.monotonic()
        for task_id in task_ids:
            t = self._threads.get(task_id)
            if t is None:
                continue
            if force:
                t.kill_at = t.kill_at or now
            t.term_at = t.term_at or now
            t.spawner.stop(signal.SIGKILL if force else signal.SIGTERM)

    def running(self) -> dict[str, float]:
        """Running task ids and when they started (monotonic seconds)."""
        out = {w.task.id: w.started for w in self._workers if w.task is not None}
        out.update((task_id, t.started) for task_id, t in self._threads.items())
        return out

    # threads ----------------------------------------------------------------------------
    def _start_thread(self, task: Task) -> None:
        from .guardian import Guardian
        from .spawn import ThreadSpawner

        if self._guardian is None:
            self._guardian = Guardian()
        t = _Threaded(task, ThreadSpawner(task, self._guardian))
        with self._inbox_lock:
            self._threads[task.id] = t
        t.thread = threading.Thread(
            target=self._thread_main, args=(t,), name=f"pipemake {task.id}", daemon=True
        )
        t.thread.start()

    def _thread_main(self, t: _Threaded) -> None:
        from .spawn import TaskStopped
        from .worker import execute

        task_id = t.task.id
        final: list[Message] = []

        def send(kind: str, data: Any) -> None:
            if kind in ("result", "error"):
                final.append(Message(task_id, kind, data))
            else:
                self._post(t, Message(task_id, kind, data))

        try:
            execute(t.task, send, t.spawner)
        except TaskStopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - never leave a task unanswered
            text = f"{type(exc).__name__}: {exc}"
            final.append(Message(task_id, "error", [text, traceback.format_exc()]))
        finally:
            t.spawner.close()
        sp = t.spawner
        if sp.stopped is not None and (sp.hit or not final or final[-1].kind == "error"):
            self._post(t, Message(task_id, "error", [_stopped(sp.stopped), None, LOST]))
        elif final:
            self._post(t, final[-1])
        else:
            self._post(t, Message(task_id, "error", ["the task ended without a result", None]))

    def _post(self, t: _Threaded, msg: Message) -> None:
        with self._inbox_lock:
            if self._threads.get(t.task.id) is not t or t.answered:
                return  # given up for stopped: what it says now is for nobody
            t.answered = msg.kind in ("result", "error")
            self._inbox.append(msg)
            if not self._woken:
                self._woken = True
                os.write(self._wake_w, b"x")

    def _drain_threads(self) -> list[Message]:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        with self._inbox_lock:
            out, self._inbox = self._inbox, []
            self._woken = False
            for msg in out:
                if msg.kind in ("result", "error"):
                    self._threads.pop(msg.task, None)
        return out

    def _escalate(self) -> None:
        """SIGKILL for commands that outlived their SIGTERM; give up on a thread that stays
        blocked after that (the task fails as stopped)."""
        now = time.monotonic()
        for task_id, t in list(self._threads.items()):
            if t.term_at is not None and t.kill_at is None and now - t.term_at > KILL_AFTER_TERM:
                t.kill_at = now
                t.spawner.stop(signal.SIGKILL)
            elif t.kill_at is not None and now - t.kill_at > GIVE_UP_AFTER_KILL:
                self._post(t, Message(task_id, "error", [_stopped(signal.SIGKILL), None, LOST]))

    def close(self) -> None:
        threads = list(self._threads.values())
        for t in threads:
            t.spawner.stop(signal.SIGKILL)
        deadline = time.monotonic() + 1.0
        for t in threads:
            if t.thread is not None:
                t.thread.join(max(0.0, deadline - time.monotonic()))
        with self._inbox_lock:
            self._threads = {}
            self._inbox = []
        if self._guardian is not None:
            self._guardian.close()
            self._guardian = None
        if self._wake_w >= 0:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
        for w in self._workers:
            if w.task is not None or not w.used:  # busy, or started ahead for nothing
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


def _signal_group(pid: int, sig: int) -> None:
    from .spawn import signal_group

    signal_group(pid, sig)


def _stopped(sig: int) -> str:
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    return f"the task was stopped ({name}): its commands were ended"


def _death(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the worker process was killed ({name})"
    return f"the worker process exited unexpectedly (exit code {code})"

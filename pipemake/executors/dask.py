"""The dask executor: tasks run on a ``dask.distributed`` cluster, for builds that outgrow
one machine.

Only running moves: deciding, keys, the store's commits and the order of stages stay in
the build process. Each pipemake task (a whole stage, or a batch of foreach items, already
batched by the build so per-item overhead stays small) becomes one dask task running
:func:`~.dask_worker.run_task` on a worker (:mod:`.dask_worker`, the worker's side), which
calls the same task runner as a local worker (:func:`pipemake.executors.worker.execute`):
rules, outputs in staging, the store and the messages behave as locally. Workers must share
the project's filesystem at the same path (checked at the first task: every worker must
read a file the build just wrote); without it they would need the remote store, which this
executor does not use.

- ``dask``: a running scheduler, ``--scheduler tcp://HOST:PORT`` or env
  ``PIPEMAKE_DASK_SCHEDULER``; ``dask-local``: a ``LocalCluster`` of ``jobs`` worker
  processes on 127.0.0.1, its dashboard off unless asked for.
- Resources: ``gpu`` becomes dask's ``GPU`` worker resource, and the task sees exactly the
  worker's card(s) (``CUDA_VISIBLE_DEVICES``); ``mem_gb`` becomes ``MEMORY`` (bytes) and
  ``cpus`` ``CPU`` where workers declare them; any other name passes as it is. A request no
  worker offers fails its task at once, naming what to start, instead of waiting forever.
- A worker runs one pipemake task at a time (the runner changes the process's working
  directory and environment), so a rule's ``setup`` is cached in the worker process and
  loads once per worker; start workers with ``--nthreads 1``.
- Faults: dask reruns a task whose worker died on another worker (up to its
  ``allowed-failures``); the result is recorded once, as only one answer reaches the build.
  A lost scheduler fails every running and later task with an error naming it; so does
  one that stops answering (a heartbeat asks it every ``HEARTBEAT`` s, and no call of the
  build waits for it unbounded). A task no worker there can run (the workers left
  mid-build) fails after the worker wait, saying which worker to start.
- A rule's ``requires`` are imported on the workers that may run it before its first task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from ..errors import PipemakeError, UsageError
from ..rule import get_rule, local_only, registry
from .base import GONE, LOST, Executor, Message, Task
from .dask_worker import GPU, lacking_message, missing, probe, read_record, run_task, stop

__all__ = ["DaskExecutor", "DaskLocalExecutor", "SchedulerUnreachable"]

#: the environment variable naming the scheduler when ``--scheduler`` is not given
SCHEDULER_ENV = "PIPEMAKE_DASK_SCHEDULER"
#: seconds to wait for the scheduler's handshake
CONNECT_TIMEOUT = 10.0
#: the environment variables of how long a task waits for a worker that can run it (before
#: the first task, and when the workers leave mid-build), and of how long the scheduler
#: may take to answer (a heartbeat asks every ``HEARTBEAT`` s; so do the build's calls)
WORKER_WAIT_ENV, ANSWER_ENV = "PIPEMAKE_DASK_WORKER_WAIT", "PIPEMAKE_DASK_TIMEOUT"
HEARTBEAT = 2.0
#: seconds a cancel may take (a second Ctrl-C: ``FORCE_WAIT``) before the scheduler is
#: taken as lost and the tasks as stopped
CANCEL_WAIT, FORCE_WAIT = 5.0, 1.0
#: dask's names for pipemake's built-in resources (the rest pass unchanged)
MEMORY, CPU = "MEMORY", "CPU"

_INSTALL = "install the dask extra: pip install 'pipemake[dask]'"


class SchedulerUnreachable(PipemakeError):
    """The dask scheduler cannot be reached, or a local cluster cannot start (exit 1)."""


def _seconds(env: str, default: float) -> float:
    """A positive number of seconds from the environment variable ``env``, else ``default``."""
    try:
        value = float(os.environ.get(env, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def _bounded(call: Any, timeout: float | None, silent: Any = None) -> Any:
    """``call()``, or TimeoutError when it has not returned within ``timeout`` s (None:
    no limit) or ``silent()`` says why the scheduler is taken as lost: a call to a
    scheduler that stopped answering never returns (dask's client waits for ever), so it
    runs in a thread of its own that is left behind."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box.append((False, exc))

    thread = threading.Thread(target=run, name="pipemake-dask-call", daemon=True)
    thread.start()
    end = None if timeout is None else time.monotonic() + timeout
    while not box and (end is None or time.monotonic() < end):
        thread.join(0.2 if end is None else max(0.0, min(0.2, end - time.monotonic())))
        if not box and silent is not None and silent():
            raise TimeoutError(silent())
    if not box:
        raise TimeoutError(f"it did not answer within {timeout:g} s")
    ok, value = box[0]
    if not ok:
        raise value
    return value


# the build's side --------------------------------------------------------------------------


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise UsageError(f"--executor dask needs dask.distributed: {_INSTALL}") from None
    # what goes wrong is said once, by pipemake, without dask's tracebacks (its config gives
    # some of its loggers levels of their own, so each is quietened)
    for name in [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "distributed"]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    return distributed


def check_address(address: str) -> str:
    """``address`` if it is a scheduler address (``tcp://HOST:PORT``, also ``tls://`` and
    ``ucx://``; a bare ``HOST:PORT`` means tcp), else UsageError."""
    text = address.strip()
    if "://" not in text:
        text = f"tcp://{text}"
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("tcp", "tls", "ucx", "inproc") or not parts.hostname or not port:
        raise UsageError(
            f"--scheduler {address!r} is not a dask scheduler address: "
            "expected tcp://HOST:PORT (as `dask scheduler` prints it)"
        )
    return text


def _reachable(address: str) -> None:
    """Fail fast, naming the address, when nothing listens there (dask alone would retry
    until its timeout and then raise its own error)."""
    parts = urlsplit(address)
    if parts.scheme not in ("tcp", "tls"):
        return
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise SchedulerUnreachable(
            f"cannot reach the dask scheduler at {address}: {exc.strerror or exc}; start one "
            "(`dask scheduler`) or pass its address with --scheduler or "
            f"{SCHEDULER_ENV}"
        ) from None


def _identify(address: str) -> None:
    """Ask what answers at ``address`` for its identity: anything but a dask scheduler is
    an error, said before a client is made (a client that fails to start hangs on its
    way out)."""

    async def identity() -> dict[str, Any]:
        from distributed.core import rpc

        r = rpc(address, timeout=CONNECT_TIMEOUT)
        try:
            return await asyncio.wait_for(r.identity(), CONNECT_TIMEOUT)
        finally:
            await r.close_rpc()

    try:
        kind = asyncio.run(identity()).get("type")
    except (TimeoutError, OSError) as exc:
        if not isinstance(exc, TimeoutError) and "timed out" not in str(exc).lower():
            raise SchedulerUnreachable(
                f"what answers at {address} is not a dask scheduler ({exc}); pass the "
                "address `dask scheduler` prints"
            ) from None
        raise SchedulerUnreachable(
            f"what listens at {address} did not answer within {CONNECT_TIMEOUT:g} s as a dask "
            "scheduler would: a scheduler that is stopped, hung or overloaded, or not a dask "
            "scheduler; check it, or pass the address `dask scheduler` prints"
        ) from None
    except Exception as exc:  # noqa: BLE001 - whatever answered there is no scheduler
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SchedulerUnreachable(
            f"what answers at {address} is not a dask scheduler ({text}); pass the address "
            "`dask scheduler` prints"
        ) from None
    if kind != "Scheduler":
        raise SchedulerUnreachable(
            f"{address} is a dask {kind or 'server'}, not its scheduler; pass the address "
            "`dask scheduler` prints"
        )


def dask_resources(request: dict[str, float], offered: set[str]) -> dict[str, float]:
    """A stage's ``resources`` as dask worker resources (``gpu`` → ``GPU``, ``mem_gb`` →
    ``MEMORY`` in bytes, ``cpus`` → ``CPU``; the last two only where a worker declares
    them, as no dask worker does unless told; other names unchanged)."""
    out: dict[str, float] = {}
    for name, value in request.items():
        if value <= 0:
            continue
        if name == "gpu":
            out[GPU] = value
        elif name == "mem_gb":
            if MEMORY in offered:
                out[MEMORY] = value * 1e9
        elif name == "cpus":
            if CPU in offered:
                out[CPU] = value
        else:
            out[name] = value
    return out


class DaskExecutor(Executor):
    """Runs tasks on the dask cluster whose scheduler is at ``scheduler``.

    A heartbeat thread asks the scheduler who its workers are every ``HEARTBEAT`` s: a
    scheduler that stops answering (``PIPEMAKE_DASK_TIMEOUT`` s, default 30) is taken as
    lost, and a task no worker there can run for ``PIPEMAKE_DASK_WORKER_WAIT`` s (default
    60: its workers left mid-build) fails saying which worker to start."""

    name = "dask"

    def __init__(self, jobs: int = 1, scheduler: str | None = None, dashboard: bool = False):
        super().__init__(jobs)
        self.distributed = _distributed()
        #: (level, text) for the build to tell its user once the executor is up
        self.notes: list[tuple[str, str]] = []
        self._cluster: Any = None
        self.worker_wait = _seconds(WORKER_WAIT_ENV, 60.0)
        self.answer_within = _seconds(ANSWER_ENV, 30.0)
        self.address = self._start(scheduler, dashboard)
        try:
            self.client = self.distributed.Client(
                self.address, timeout=CONNECT_TIMEOUT, set_as_default=False
            )
        except Exception as exc:  # noqa: BLE001 - whatever answered there is no scheduler
            self._close_cluster()
            raise SchedulerUnreachable(
                f"cannot connect to the dask scheduler at {self.address}: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        #: this build's tag in every dask key: its tasks are its own, nobody else's
        self._tag = f"pipemake-{uuid.uuid4().hex[:12]}"
        self._futures: dict[str, Any] = {}
        self._tasks: dict[str, Task] = {}
        #: task id → the file where its worker notes each item it finishes (foreach tasks)
        self._records: dict[str, str] = {}
        self._cancelled: set[str] = set()
        #: futures that are done (_Settled), (id, progress) a running task sent, or _WAKE
        self._done: queue.Queue[Any] = queue.Queue()
        self._rules = registry()
        self._checked: set[tuple[str, str]] = set()
        #: what keeps a rule's tasks (with these resources) off the cluster: its packages
        #: missing on the workers that may run them
        self._rule_problems: dict[tuple[str, tuple[tuple[str, float], ...]], str | None] = {}
        self._broken: str | None = None
        self._offered: dict[str, float] | None = None
        #: what the heartbeat saw: why the scheduler is taken as lost, and each worker's
        #: resources (None until its first answer)
        self._silent: str | None = None
        self._pool: list[dict[str, float]] | None = None
        #: task id → since when no worker there can run it
        self._stuck: dict[str, float] = {}
        self._closing = threading.Event()
        self._heart = threading.Thread(target=self._heartbeat, name="pipemake-dask", daemon=True)
        self._heart.start()
        try:
            self.client.subscribe_topic(self._tag, self._on_live)
            self._note_workers()
        except Exception:
            self.close()
            raise

    def _on_live(self, event: Any) -> None:
        _when, (task_id, data) = event
        self._done.put((task_id, data))

    def _heartbeat(self) -> None:
        """In a thread of its own: ask the scheduler for its workers every ``HEARTBEAT``
        s, on a connection of its own (the client's calls would wait for ever)."""

        async def beat() -> None:
            from distributed.core import rpc

            r = rpc(self.address, timeout=self.answer_within)
            try:
                while not self._closing.is_set():
                    try:
                        info = await asyncio.wait_for(r.identity(), self.answer_within)
                    except Exception as exc:  # noqa: BLE001 - any failure: it is gone
                        if not self._closing.is_set():
                            self._silent = (
                                f"it did not answer within {self.answer_within:g} s"
                                if isinstance(exc, TimeoutError) or "timed out" in str(exc).lower()
                                else f"{type(exc).__name__}: {exc}"
                            )
                            self._done.put(_WAKE)
                        return
                    self._pool = [
                        {k: float(v) for k, v in (w.get("resources") or {}).items()}
                        for w in (info.get("workers") or {}).values()
                    ]
                    self._done.put(_WAKE)
                    await asyncio.get_running_loop().run_in_executor(
                        None, self._closing.wait, HEARTBEAT
                    )
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(r.close_rpc(), 1)

        with contextlib.suppress(Exception):
            asyncio.run(beat())

    def _note_workers(self) -> None:
        """Say so when ``-j`` leaves workers idle, or workers have several threads (each
        runs one pipemake task at a time: the others only hold tasks back from idle
        workers)."""
        workers = self._workers()
        if self.jobs == 1 and len(workers) > 1 and self._cluster is None:
            self.notes.append((
                "warning",
                f"-j 1: one task at a time on {len(workers)} dask workers; "
                f"pass -j {len(workers)} to use them all",
            ))  # fmt: skip
        many = sorted(a for a, w in workers.items() if int(w.get("nthreads", 1)) > 1)
        if many:
            self.notes.append((
                "warning",
                f"{len(many)} dask worker(s) have several threads ({many[0]}, …): each runs "
                "one pipemake task at a time; start workers with --nthreads 1 "
                "(and --nworkers N for more per machine)",
            ))  # fmt: skip

    def _start(self, scheduler: str | None, dashboard: bool) -> str:
        address = scheduler or os.environ.get(SCHEDULER_ENV, "")
        if not address:
            raise UsageError(
                f"--executor dask needs the scheduler's address: --scheduler tcp://HOST:PORT "
                f"or {SCHEDULER_ENV} (or use --executor dask-local for a cluster on this machine)"
            )
        address = check_address(address)
        _reachable(address)
        _identify(address)
        return address

    def _close_cluster(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    # the cluster ------------------------------------------------------------------------
    def _ask(self, call: Any) -> Any:
        """``call()`` (a call of the client's, which may take its time: workers importing
        a rule's packages), or TimeoutError once the heartbeat takes the scheduler as
        lost."""
        return _bounded(call, None, lambda: self._silent)

    def _workers(self) -> dict[str, Any]:
        """Every worker's info (address → dict with ``nthreads``, ``resources``, …)."""

        def info() -> dict[str, Any]:
            try:  # newer dask lists only the first few workers unless asked for all
                return self.client.scheduler_info(n_workers=-1)
            except TypeError:
                return self.client.scheduler_info()

        return self._ask(info).get("workers", {})

    def _start_workers(self, extra: str = "") -> str:
        return f"`dask worker {self.address} --nthreads 1{extra}`"

    def _ensure_ready(self, task: Task) -> str | None:
        """Before the first task of a project: workers have joined and see its files; and
        before the first task of a rule: the workers that may run it have its packages."""
        if self._broken is not None:
            return self._broken
        if (task.root, task.store) not in self._checked:
            try:
                self.client.wait_for_workers(1, timeout=self.worker_wait)
            except TimeoutError:
                self._broken = (
                    f"no dask worker joined the scheduler at {self.address} within "
                    f"{self.worker_wait:g} s: start workers ({self._start_workers()}); "
                    f"{WORKER_WAIT_ENV} sets how long to wait"
                )
                return self._broken
            problem = self._probe_workers(task.root, task.store)
            if problem is not None:
                self._broken = problem
                return problem
            self._checked.add((task.root, task.store))
        key = (task.rule, tuple(sorted(task.resources.items())))
        if key not in self._rule_problems:  # the workers that may run it depend on both
            self._rule_problems[key] = self._probe_packages(task)
        return self._rule_problems[key]

    def _probe_workers(self, root: str, store: str) -> str | None:
        tmp = os.path.join(root, ".pipemake", "tmp")
        token = uuid.uuid4().hex
        path = os.path.join(tmp, f"dask-probe-{token}")
        try:
            os.makedirs(tmp, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(token)
        except OSError as exc:
            return f"cannot write {path} for the workers to read: {exc.strerror or exc}"
        try:
            answers = self._ask(
                lambda: self.client.run(
                    probe, path, token, store, self._rules[0], on_error="return"
                )
            )
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        for worker, answer in sorted(answers.items()):
            if isinstance(answer, BaseException):
                return f"dask worker {worker} cannot run pipemake: {answer} ({_INSTALL} there)"
            if answer:
                return answer
        return None

    def _probe_packages(self, task: Task) -> str | None:
        """None when every worker that may run ``task``'s rule (those offering its
        resources) imports the packages the rule declares, else which workers lack which,
        and the one ``pip install`` line that installs them."""
        rule = get_rule(task.rule)
        requires = dict(getattr(rule, "requires", None) or {})
        if not requires:
            return None
        pool = {a: info.get("resources") or {} for a, info in self._workers().items()}
        wanted = dask_resources(task.resources, {n for r in pool.values() for n in r})
        workers = [
            a for a, r in pool.items() if all(float(r.get(n, 0)) >= v for n, v in wanted.items())
        ]
        if not workers:
            return None  # nobody may run it: said when it is placed
        answers = self._ask(
            lambda: self.client.run(missing, sorted(requires), workers=workers, on_error="return")
        )
        lacking = {w: a for w, a in sorted(answers.items()) if a}
        return lacking_message(task.rule, requires, lacking) if lacking else None

    def _resources(self, task: Task) -> tuple[dict[str, float], str | None]:
        """The dask resources of ``task``, or why no worker can run it."""
        if not task.resources:
            return {}, None
        if self._offered is None:
            self._offered = {}
            for info in self._workers().values():
                for name, value in (info.get("resources") or {}).items():
                    self._offered[name] = max(self._offered.get(name, 0.0), float(value))
        wanted = dask_resources(task.resources, set(self._offered))
        short = {n: v for n, v in wanted.items() if self._offered.get(n, 0.0) < v}
        if not short:
            return wanted, None
        asked = " ".join(f"{n}={v:g}" for n, v in short.items())
        have = " ".join(f"{n}={v:g}" for n, v in sorted(self._offered.items())) or "none"
        return wanted, (
            f"no dask worker offers {asked} (the most any worker offers: {have}); start one "
            f"with {self._start_workers(f' --resources {chr(34)}{asked}{chr(34)}')}"
        )

    # the executor -----------------------------------------------------------------------
    def submit(self, task: Task) -> None:
        resources: dict[str, float] = {}
        try:
            problem = self._broken or self._ensure_ready(task)
            if problem is None and local_only(task.rule):
                problem = (
                    f"rule {task.rule!r} is registered in the build process only: dask "
                    "workers cannot import it; register it through an entry point or an "
                    "importable module"
                )
            if problem is None:
                resources, problem = self._resources(task)
        except (OSError, TimeoutError) as exc:  # dask's CommClosedError is an OSError
            timed_out = isinstance(exc, TimeoutError)
            self._lost(str(exc) if timed_out else f"{type(exc).__name__}: {exc}")
            problem = self._broken
        if problem is not None:
            self._fail(task, problem, gone=problem == self._broken)
            return
        key = f"{self._tag}-{task.id}-{task.attempt}"
        self._tasks[task.id] = task
        record = ""
        if task.mode in ("items", "map") and task.done:
            record = os.path.join(task.root, os.path.dirname(task.done), f"{key}.items")
            self._records[task.id] = record
        try:
            fut = self.client.submit(
                run_task, task, self._rules, self._tag, record, key=key, pure=False,
                resources=resources or None,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the client is closed: the scheduler is gone
            self._lost(str(exc))
            self._fail(task, self._broken or str(exc), gone=self._broken is not None)
            return
        self._futures[task.id] = fut
        self._stuck.pop(task.id, None)
        fut.add_done_callback(lambda f, tid=task.id: self._done.put(_Settled(tid, f)))

    def _fail(self, task: Task, text: str, gone: bool = False) -> None:
        """Answer ``task`` with an error at once; a fault of the cluster is not the
        task's, so it is not retried (it would fail the same way). ``gone``: the cluster
        can run nothing more (its items are then not run, none having started)."""
        task.attempt = max(task.attempt, task.max_attempts)
        self._tasks[task.id] = task
        failed = _Failed(text, gone and bool(task.items))
        self._futures[task.id] = failed
        self._done.put(_Settled(task.id, failed))

    def _lost(self, detail: str) -> None:
        if self._broken is None:
            self._broken = (
                f"lost the dask scheduler at {self.address} ({detail}); what finished is "
                "committed: build again once the scheduler is back"
            )

    def poll(self, timeout: float | None) -> list[Message]:
        got: list[Any] = []
        try:
            got.append(self._done.get(timeout=timeout) if timeout else self._done.get_nowait())
            while True:
                got.append(self._done.get_nowait())
        except queue.Empty:
            pass
        out: list[Message] = []
        for item in got:
            if isinstance(item, tuple):  # progress of a task still running
                if item[0] in self._futures:
                    out.append(Message(item[0], "progress", item[1]))
                continue
            if not isinstance(item, _Settled) or self._futures.get(item.task_id) is not item.fut:
                continue  # a wake-up, or an answer given up on already
            self._futures.pop(item.task_id)
            task = self._tasks.pop(item.task_id, None)
            self._stuck.pop(item.task_id, None)
            if task is not None:
                out.extend(self._answer(task, item.fut))
        out.extend(self._check_cluster())
        return out

    def _outstanding(self) -> list[str]:
        return [i for i, f in self._futures.items() if not isinstance(f, _Failed)]

    def _check_cluster(self) -> list[Message]:
        """What the heartbeat saw: a scheduler that stopped answering ends every task out;
        a task no worker there can run for ``worker_wait`` s fails saying what to start."""
        out_ids = self._outstanding()
        if self._silent is not None:
            self._lost(self._silent)
            return self._give_up(out_ids, self._broken or self._silent, cancel=False)
        pool = self._pool
        if pool is None or not out_ids:
            return []
        now = time.monotonic()
        late: dict[str, list[str]] = {}
        for task_id in out_ids:
            task = self._tasks[task_id]
            wanted = dask_resources(task.resources, set(self._offered or {}))
            if any(all(w.get(n, 0.0) >= v for n, v in wanted.items()) for w in pool):
                self._stuck.pop(task_id, None)
            elif now - self._stuck.setdefault(task_id, now) >= self.worker_wait:
                asked = " ".join(f"{n}={v:g}" for n, v in wanted.items())
                late.setdefault(asked, []).append(task_id)
        messages: list[Message] = []
        for asked, ids in late.items():
            if not pool:
                self._broken = self._broken or (
                    f"no dask worker left at the scheduler {self.address} for "
                    f"{self.worker_wait:g} s ({WORKER_WAIT_ENV}; the workers left mid-build): "
                    f"start workers ({self._start_workers()}); what finished is committed"
                )
                text = self._broken
            else:
                text = (
                    f"no dask worker at {self.address} offering {asked} for "
                    f"{self.worker_wait:g} s ({WORKER_WAIT_ENV}; those that did left): start "
                    f"one with {self._start_workers(f' --resources {chr(34)}{asked}{chr(34)}')}"
                )
            messages += self._give_up(ids, text, cancel=True)
        return messages

    def _give_up(self, task_ids: list[str], text: str, cancel: bool) -> list[Message]:
        """Answer these tasks with ``text`` now, without retries, and (with ``cancel``)
        take their futures off the cluster, so they do not run later."""
        futs = [self._futures.pop(i) for i in task_ids]
        if cancel and futs:
            with contextlib.suppress(Exception):
                self._ask(lambda: self.client.cancel(futs, force=True))
        messages = []
        for task_id in task_ids:
            self._stuck.pop(task_id, None)
            task = self._tasks.pop(task_id, None)
            if task is not None:
                messages += self._stop_retrying(task, text)
        return messages

    def _answer(self, task: Task, fut: Any) -> list[Message]:
        if isinstance(fut, _Failed):
            if fut.gone:  # never sent: none of its items started
                return [Message(task.id, "error", [fut.text, None, LOST, -1, GONE])]
            return [Message(task.id, "error", [fut.text, None])]
        status = fut.status
        if status == "finished":
            try:
                said = fut.result(timeout=CONNECT_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - the scheduler went between done and fetch
                self._lost(type(exc).__name__)
                return self._stop_retrying(task, self._broken or str(exc))
            self._forget_record(task.id)
            return [Message(task.id, kind, data) for kind, data in said]
        if status == "cancelled" and task.id not in self._cancelled:
            self._lost("the connection was closed")
            return self._stop_retrying(task, self._broken or "cancelled")
        if status == "cancelled":
            self._forget_record(task.id)
            return [Message(task.id, "error", [_STOPPED, None])]
        try:
            exc = fut.exception(timeout=CONNECT_TIMEOUT)
        except Exception as why:  # noqa: BLE001 - the scheduler went between done and fetch
            self._lost(type(why).__name__)
            return self._stop_retrying(task, self._broken or str(why))
        if isinstance(exc, self.distributed.KilledWorker):
            return self._killed(task, f"the dask workers running it died, again and again ({exc})")
        self._forget_record(task.id)
        return [Message(task.id, "error", [f"{type(exc).__name__}: {exc}", None])]

    def _killed(self, task: Task, text: str) -> list[Message]:
        """The answer of a task whose workers died running it (dask gave up retrying it):
        ended from outside, as a local task whose worker dies. The items its last attempt
        noted as finished are answered as such; the one it was running fails, and the
        build runs those it never started in a task of their own (see
        :data:`~.base.LOST`)."""
        path = self._records.pop(task.id, None)
        if path is None:  # a whole stage's task
            return [Message(task.id, "error", [text, None])]
        finished = read_record(path, {i["relpath"] for i in task.items})
        with contextlib.suppress(OSError):
            os.unlink(path)
        left = [n for n, i in enumerate(task.items) if i["relpath"] not in finished]
        said = [Message(task.id, "items", finished)] if finished else []
        return [*said, Message(task.id, "error", [text, None, LOST, left[0] if left else -1])]

    def _stop_retrying(self, task: Task, text: str) -> list[Message]:
        """The answer of a task given up on (the scheduler lost, no worker left for it),
        not retried: the items its worker noted as finished are answered as such (they
        are committed, as their answers would have been). When the cluster can run nothing
        more (the scheduler or every worker gone), the item it was running fails with
        ``text`` and those it never started are not run (a task that never started: none
        ran, none fails), as a local task ended from outside says; else the others fail
        with ``text`` (with none finished, the whole task fails with it)."""
        task.attempt = max(task.attempt, task.max_attempts)
        path = self._records.pop(task.id, None)
        if path is None:
            return [Message(task.id, "error", [text, None])]
        started = os.path.exists(path)  # its worker makes the file as it starts the task
        finished = read_record(path, {i["relpath"] for i in task.items})
        with contextlib.suppress(OSError):
            os.unlink(path)
        if self._broken is not None:
            left = [n for n, i in enumerate(task.items) if i["relpath"] not in finished]
            at = left[0] if started and left else -1
            said = [Message(task.id, "items", finished)] if finished else []
            return [*said, Message(task.id, "error", [text, None, LOST, at, GONE])]
        if not finished:
            return [Message(task.id, "error", [text, None])]
        items = {i["relpath"]: finished.get(i["relpath"]) or {"error": text} for i in task.items}
        return [Message(task.id, "result", {"items": items})]

    def _forget_record(self, task_id: str) -> None:
        """Remove the file of finished items of a task whose answer arrived."""
        path = self._records.pop(task_id, None)
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def cancel(self, task_ids: list[str], force: bool = False) -> None:
        """Cancel these tasks' futures, and end the processes those already running have
        started on their workers (SIGTERM, or SIGKILL with ``force``), so the workers are
        free again; a rule's own Python code runs to its end there, its answer dropped.
        A scheduler that does not answer within ``CANCEL_WAIT`` s (``FORCE_WAIT`` with
        ``force``: a second Ctrl-C ends the build at once) is taken as lost, and the
        tasks as stopped."""
        futs, ids = [], []
        for task_id in task_ids:
            fut = self._futures.get(task_id)
            if fut is not None and not isinstance(fut, _Failed):
                self._cancelled.add(task_id)
                futs.append(fut)
                ids.append(task_id)
        if not futs:
            return
        sig = signal.SIGKILL if force else signal.SIGTERM

        def call() -> None:
            self.client.cancel(futs, force=True)
            self.client.run(stop, self._tag, ids, int(sig), wait=False)

        try:
            _bounded(call, FORCE_WAIT if force else CANCEL_WAIT)
        except Exception as exc:  # noqa: BLE001 - the scheduler is gone: nothing left to cancel
            if isinstance(exc, TimeoutError):
                self._lost(f"it did not answer within {FORCE_WAIT if force else CANCEL_WAIT:g} s")
            for task_id in ids:
                failed = _Failed(_STOPPED)
                self._futures[task_id] = failed
                self._done.put(_Settled(task_id, failed))

    def close(self) -> None:
        """Cancel this build's futures still out (and end what they started on their
        workers), then leave the cluster; a local cluster ends with it. Nothing here waits
        for a scheduler that does not answer."""
        self._closing.set()
        ids = self._outstanding()
        if ids and self._broken is None and self.client.status == "running":
            futs = [self._futures[i] for i in ids]

            def call() -> None:
                self.client.cancel(futs, force=True)
                self.client.run(stop, self._tag, ids, int(signal.SIGTERM), on_error="ignore")

            with contextlib.suppress(Exception):  # closing: the scheduler may be gone
                _bounded(call, CANCEL_WAIT)
        self._futures = {}
        with contextlib.suppress(Exception):
            _bounded(lambda: self.client.close(timeout=2), 5)
        self._close_cluster()


#: what a task cancelled by the build answers
_STOPPED = "the task was stopped (cancelled on dask)"
#: what the heartbeat puts on the queue to wake :meth:`DaskExecutor.poll`
_WAKE = object()


class _Settled:
    """A task's future is done (or its answer is known without dask: a _Failed)."""

    def __init__(self, task_id: str, fut: Any):
        self.task_id = task_id
        self.fut = fut


class _Failed:
    """An answer known before anything was sent to dask (``gone``: because the cluster can
    run nothing more, so a foreach task's items are not run rather than failed)."""

    def __init__(self, text: str, gone: bool = False):
        self.text = text
        self.gone = gone


@contextmanager
def _deaf_to_ctrl_c() -> Iterator[None]:
    """While processes start: they ignore SIGINT (a Python started with SIGINT ignored
    keeps ignoring it), as the local executor's workers do, so a Ctrl-C in the terminal
    stops the build (which then lets running tasks finish) and not the cluster under it."""
    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: no terminal's Ctrl-C to keep off
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


class DaskLocalExecutor(DaskExecutor):
    """A dask ``LocalCluster`` of ``jobs`` worker processes on 127.0.0.1 (one thread each),
    started for this build and closed with it; its dashboard only when asked for."""

    name = "dask-local"

    def _start(self, scheduler: str | None, dashboard: bool) -> str:
        if scheduler:
            raise UsageError("--scheduler is for --executor dask (dask-local starts its own)")
        import dask

        # dask's HTTP servers listen whatever is asked (dashboard_address=None is its port
        # 8787): on a port of their own on 127.0.0.1, serving no page without --dashboard
        pages = {} if dashboard else {
            "distributed.scheduler.http.routes": [], "distributed.worker.http.routes": [],
        }  # fmt: skip
        try:
            with _deaf_to_ctrl_c(), dask.config.set(pages):  # the build decides what stops
                cluster = self.distributed.LocalCluster(
                    n_workers=self.jobs, threads_per_worker=1, processes=True,
                    host="127.0.0.1", dashboard_address="127.0.0.1:0",
                    scheduler_kwargs={"dashboard": dashboard}, silence_logs=logging.CRITICAL,
                )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - dask says why in its own words
            raise SchedulerUnreachable(
                f"cannot start a local dask cluster of {self.jobs} worker(s): "
                f"{type(exc).__name__}: {exc}"
            ) from None
        self._cluster = cluster
        if dashboard:
            self.notes.append(("warning", f"dask dashboard: {cluster.dashboard_link}"))
        return cluster.scheduler_address

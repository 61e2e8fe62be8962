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
  A lost scheduler fails every running and later task with an error naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import signal
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from ..errors import PipemakeError, UsageError
from ..rule import local_only, registry
from .base import Executor, Message, Task
from .dask_worker import GPU, probe, run_task, stop

__all__ = ["DaskExecutor", "DaskLocalExecutor", "SchedulerUnreachable"]

#: the environment variable naming the scheduler when ``--scheduler`` is not given
SCHEDULER_ENV = "PIPEMAKE_DASK_SCHEDULER"
#: seconds to wait for the scheduler's handshake, and for a first worker to join
CONNECT_TIMEOUT = 10.0
WORKER_WAIT = float(os.environ.get("PIPEMAKE_DASK_WORKER_WAIT", "60"))
#: dask's names for pipemake's built-in resources (the rest pass unchanged)
MEMORY, CPU = "MEMORY", "CPU"

_INSTALL = "install the dask extra: pip install 'pipemake[dask]'"


class SchedulerUnreachable(PipemakeError):
    """The dask scheduler cannot be reached, or a local cluster cannot start (exit 1)."""


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
    """Runs tasks on the dask cluster whose scheduler is at ``scheduler``."""

    name = "dask"

    def __init__(self, jobs: int = 1, scheduler: str | None = None, dashboard: bool = False):
        super().__init__(jobs)
        self.distributed = _distributed()
        #: (level, text) for the build to tell its user once the executor is up
        self.notes: list[tuple[str, str]] = []
        self._cluster: Any = None
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
        self._cancelled: set[str] = set()
        #: task ids whose future is done, and (id, progress) a running task sent
        self._done: queue.Queue[str | tuple[str, Any]] = queue.Queue()
        self._rules = registry()
        self._checked: set[tuple[str, str]] = set()
        self._broken: str | None = None
        self._offered: dict[str, float] | None = None
        try:
            self.client.subscribe_topic(self._tag, self._on_live)
            self._note_workers()
        except Exception:
            self.close()
            raise

    def _on_live(self, event: Any) -> None:
        _when, (task_id, data) = event
        self._done.put((task_id, data))

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
    def _workers(self) -> dict[str, Any]:
        """Every worker's info (address → dict with ``nthreads``, ``resources``, …)."""
        try:  # newer dask lists only the first few workers unless asked for all
            info = self.client.scheduler_info(n_workers=-1)
        except TypeError:
            info = self.client.scheduler_info()
        return info.get("workers", {})

    def _ensure_ready(self, task: Task) -> str | None:
        """Before the first task of a project: workers have joined and see its files."""
        if self._broken is not None:
            return self._broken
        if (task.root, task.store) in self._checked:
            return None
        try:
            self.client.wait_for_workers(1, timeout=WORKER_WAIT)
        except TimeoutError:
            self._broken = (
                f"no dask worker joined the scheduler at {self.address} within "
                f"{WORKER_WAIT:g} s: start workers (`dask worker {self.address} --nthreads 1`)"
            )
            return self._broken
        problem = self._probe_workers(task.root, task.store)
        if problem is not None:
            self._broken = problem
            return problem
        self._checked.add((task.root, task.store))
        return None

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
            answers = self.client.run(probe, path, token, store, self._rules[0], on_error="return")
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        for worker, answer in sorted(answers.items()):
            if isinstance(answer, BaseException):
                return f"dask worker {worker} cannot run pipemake: {answer} ({_INSTALL} there)"
            if answer:
                return answer
        return None

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
            f'with `dask worker {self.address} --nthreads 1 --resources "{asked}"`'
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
            self._lost(f"{type(exc).__name__}: {exc}")
            problem = self._broken
        if problem is not None:
            self._fail(task, problem)
            return
        key = f"{self._tag}-{task.id}-{task.attempt}"
        self._tasks[task.id] = task
        try:
            fut = self.client.submit(
                run_task, task, self._rules, self._tag, key=key, pure=False,
                resources=resources or None,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the client is closed: the scheduler is gone
            self._lost(str(exc))
            self._fail(task, self._broken or str(exc))
            return
        self._futures[task.id] = fut
        fut.add_done_callback(lambda _f, tid=task.id: self._done.put(tid))

    def _fail(self, task: Task, text: str) -> None:
        """Answer ``task`` with an error at once; a fault of the cluster is not the
        task's, so it is not retried (it would fail the same way)."""
        task.attempt = max(task.attempt, task.max_attempts)
        self._tasks[task.id] = task
        self._done.put(task.id)
        self._futures[task.id] = _Failed(text)

    def _lost(self, detail: str) -> None:
        if self._broken is None:
            self._broken = (
                f"lost the dask scheduler at {self.address} ({detail}); what finished is "
                "committed: build again once the scheduler is back"
            )

    def poll(self, timeout: float | None) -> list[Message]:
        ids: list[str | tuple[str, Any]] = []
        try:
            ids.append(self._done.get(timeout=timeout) if timeout else self._done.get_nowait())
            while True:
                ids.append(self._done.get_nowait())
        except queue.Empty:
            pass
        out: list[Message] = []
        for task_id in ids:
            if isinstance(task_id, tuple):  # progress of a task still running
                if task_id[0] in self._futures:
                    out.append(Message(task_id[0], "progress", task_id[1]))
                continue
            fut = self._futures.pop(task_id, None)
            task = self._tasks.pop(task_id, None)
            if fut is None or task is None:
                continue
            out.extend(self._answer(task, fut))
        return out

    def _answer(self, task: Task, fut: Any) -> list[Message]:
        if isinstance(fut, _Failed):
            return [Message(task.id, "error", [fut.text, None])]
        status = fut.status
        if status == "finished":
            try:
                said = fut.result(timeout=CONNECT_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - the scheduler went between done and fetch
                self._lost(type(exc).__name__)
                return [self._stop_retrying(task, self._broken or str(exc))]
            return [Message(task.id, kind, data) for kind, data in said]
        if status == "cancelled" and task.id not in self._cancelled:
            self._lost("the connection was closed")
            return [self._stop_retrying(task, self._broken or "cancelled")]
        if status == "cancelled":
            return [Message(task.id, "error", ["the task was stopped (cancelled on dask)", None])]
        exc = fut.exception(timeout=CONNECT_TIMEOUT)
        if isinstance(exc, self.distributed.KilledWorker):
            text = f"the dask workers running it died, again and again ({exc})"
        else:
            text = f"{type(exc).__name__}: {exc}"
        return [Message(task.id, "error", [text, None])]

    def _stop_retrying(self, task: Task, text: str) -> Message:
        task.attempt = max(task.attempt, task.max_attempts)
        return Message(task.id, "error", [text, None])

    def cancel(self, task_ids: list[str], force: bool = False) -> None:
        """Cancel these tasks' futures, and end the processes those already running have
        started on their workers (SIGTERM, or SIGKILL with ``force``), so the workers are
        free again; a rule's own Python code runs to its end there, its answer dropped."""
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
        try:
            self.client.cancel(futs, force=True)
            self.client.run(stop, self._tag, ids, int(sig), wait=False)
        except Exception:  # noqa: BLE001 - the scheduler is gone: nothing left to cancel
            for task_id in ids:
                self._done.put(task_id)

    def close(self) -> None:
        """Cancel this build's futures still out (and end what they started on their
        workers), then leave the cluster; a local cluster ends with it."""
        ids = [i for i, f in self._futures.items() if not isinstance(f, _Failed)]
        try:
            if ids and self.client.status == "running":
                self.client.cancel([self._futures[i] for i in ids], force=True)
                self.client.run(stop, self._tag, ids, int(signal.SIGTERM), on_error="ignore")
        except Exception:  # noqa: BLE001 - closing: the scheduler may be gone
            pass
        self._futures = {}
        try:
            self.client.close(timeout=2)
        except Exception:  # noqa: BLE001
            pass
        self._close_cluster()


class _Failed:
    """An answer known before anything was sent to dask."""

    def __init__(self, text: str):
        self.text = text


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
        try:
            with _deaf_to_ctrl_c():  # Ctrl-C reaches the build, which decides what to stop
                cluster = self.distributed.LocalCluster(
                    n_workers=self.jobs, threads_per_worker=1, processes=True,
                    host="127.0.0.1", dashboard_address="127.0.0.1:8787" if dashboard else None,
                    silence_logs=logging.CRITICAL,
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

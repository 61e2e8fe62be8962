"""The dask executor's worker side: what runs on a dask worker for one pipemake task.

:func:`run_task` calls the same task runner as a local worker
(:func:`pipemake.executors.worker.execute`), one task at a time per worker process (the
runner changes the process's working directory and environment, and keeps the rule's
``setup`` in the process, so it loads once per worker). It gives a GPU task exactly the
worker's cards and any other task none, unloads the project's modules whose file changed
since an earlier task imported them (a worker outlives builds), and sends a whole-stage
task's progress to the build while it runs. :func:`probe` is what the build asks every
worker before the first task: the same pipemake, and the project's files in sight;
:func:`missing`, before a rule's first task: its packages.

``distributed`` is imported inside the functions: they run where it is installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..binding import install_line
from ..rule import adopt_registry, get_rule, project_on_path
from ..trust import is_digest
from .base import Task
from .worker import execute, item_sink

__all__ = ["missing", "probe", "read_record", "run_task", "stop"]

#: dask's name for the GPU worker resource
GPU = "GPU"
#: seconds between two live progress reports of a whole-stage task
LIVE_EVERY = 0.5
#: seconds a stopped task's processes have between SIGTERM and SIGKILL
KILL_AFTER = 5.0

#: one pipemake task at a time per worker process: the runner changes its working
#: directory and environment, and the rule's cached ``setup`` is the process's
_RUN_LOCK = threading.Lock()
#: the worker's GPU ids, read once (before a task's environment changes anything)
_GPUS: list[str] | None = None


def _worker_gpus() -> list[str]:
    """This worker's cards: ``PIPEMAKE_GPU_IDS`` or ``CUDA_VISIBLE_DEVICES`` as the worker
    was started, else ``0 … GPU-1`` of its ``GPU`` resource; at most that many."""
    global _GPUS
    if _GPUS is None:
        from distributed import get_worker

        count = int(get_worker().state.total_resources.get(GPU, 0))
        env = os.environ.get("PIPEMAKE_GPU_IDS") or os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [x.strip() for x in (env or "").split(",") if x.strip() and x.strip() != "-1"]
        if env is None:
            ids = [str(i) for i in range(count)]
        _GPUS = ids[:count] if count else []
    return _GPUS


def run_task(
    task: Task, rules: tuple[str, dict[str, str]], topic: str = "", record: str = ""
) -> list[tuple[str, Any]]:
    """Run one pipemake task on this dask worker; return what it reported, in order (its
    last message is its ``result`` or ``error``). A whole-stage task's progress also goes
    to the build while it runs, as events of ``topic`` (at most every ``LIVE_EVERY`` s).
    A foreach task notes each item it finishes in the file ``record`` (see
    :func:`read_record`), so the build keeps them even if this answer never reaches it."""
    with _RUN_LOCK, _recording(record):
        return _run(task, rules, topic)


@contextlib.contextmanager
def _recording(record: str) -> Iterator[None]:
    """While a foreach task runs: each item it finishes is one JSON line ``[relpath,
    result]`` of the file ``record`` (written anew: a task dask runs again after its worker
    died starts it over), written once the item's outputs are stored and staged."""
    if not record:
        yield
        return
    try:  # into the stage's staging folder, which the build made: none is made here
        fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    except OSError:  # a courtesy: the task's answer is what counts
        yield
        return

    def note(rel: str, result: dict[str, Any]) -> None:
        with contextlib.suppress(OSError, TypeError, ValueError):
            os.write(fd, (json.dumps([rel, result]) + "\n").encode())

    token = item_sink.set(note)
    try:
        yield
    finally:
        item_sink.reset(token)
        os.close(fd)


def read_record(path: str, items: set[str]) -> dict[str, dict[str, Any]]:
    """The finished items a foreach task noted in ``path`` (relpath → its result), those
    of ``items`` only; a line cut short (the worker stopped while writing it) is left out."""
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")[:-1]
    except OSError:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for line in lines:
        try:
            rel, result = json.loads(line)
        except (ValueError, TypeError):
            continue
        if rel in items and _plausible(result):
            out[rel] = result
    return out


def _plausible(result: Any) -> bool:
    """Whether a noted item's result has the shape a task's answer gives it: an error, a
    map result (an object's digest and its kind), or outputs and values."""
    if not isinstance(result, dict):
        return False
    if "error" in result:
        return isinstance(result["error"], str)
    if "hash" in result:
        return is_digest(result["hash"]) and result.get("kind") in ("bytes", "json")
    outputs = result.get("outputs")
    return (
        isinstance(outputs, dict)
        and all(isinstance(m, dict) and is_digest(m.get("hash")) for m in outputs.values())
        and isinstance(result.get("values"), dict)
    )


def _run(task: Task, rules: tuple[str, dict[str, str]], topic: str) -> list[tuple[str, Any]]:
    """:func:`run_task`'s work, holding the worker's one task slot."""
    global _CURRENT
    out: list[tuple[str, Any]] = []
    live = _live(task, topic)
    _CURRENT = (topic, task.id, _children())
    if not os.path.isdir(task.root):
        out.append(("error", [_not_shared(task.root, _where()), None]))
        return out
    adopt_registry(rules)
    gpus = _worker_gpus()
    want = int(task.resources.get("gpu", 0))
    if want or gpus:  # a GPU task sees its cards only; any other task sees none
        task.gpu_ids = gpus[:want]
        task.env = dict(task.env, CUDA_VISIBLE_DEVICES=",".join(task.gpu_ids))

    def send(kind: str, data: Any) -> None:
        out.append((kind, data))
        if kind == "progress" and live is not None:
            live(data)

    _forget_changed_modules(task.root)
    try:
        project_on_path(task.root)  # a rule of the project's own, for its packages' check
        lacking = _lacking(task.rule)
        if lacking is not None:  # a worker that joined after the build checked the others
            out.append(("error", [lacking, None]))
        else:
            execute(task, send)
    finally:
        _note_modules(task.root)
        _CURRENT = None
    return out


#: the task running here: its build's tag, its id, and the pids of this process's
#: children from before it started (what it starts are the others)
_CURRENT: tuple[str, str, set[int]] | None = None


def _children() -> set[int]:
    import psutil  # a dependency of distributed

    return {p.pid for p in psutil.Process().children()}


async def stop(tag: str, task_ids: list[str], sig: int) -> bool:
    """On a worker: end the processes the running task of build ``tag`` started, if it is
    one of ``task_ids`` (SIGKILL after ``KILL_AFTER`` s for those that outlive ``sig``), so
    a cancelled or timed-out task frees its worker. A rule's own Python code cannot be
    stopped: it runs to its end. Whether such a task was running here. A coroutine, so the
    build can ask without waiting (``Client.run(..., wait=False)`` takes only those)."""
    import psutil

    current = _CURRENT
    if current is None or current[0] != tag or current[1] not in task_ids:
        return False
    procs = []
    for child in psutil.Process().children():
        if child.pid not in current[2]:
            with contextlib.suppress(psutil.Error):
                procs += [*child.children(recursive=True), child]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)
    if sig != signal.SIGKILL:

        def kill() -> None:
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    if p.is_running():
                        p.kill()

        timer = threading.Timer(KILL_AFTER, kill)
        timer.daemon = True
        timer.start()
    return True


#: the project's modules this worker imported: module name → (file, mtime_ns, size)
_MODULES: dict[str, tuple[str, int, int]] = {}


def _project_modules(root: str) -> list[tuple[str, str]]:
    top = os.path.join(root, "")
    return [
        (name, path)
        for name, module in list(sys.modules.items())
        if (path := getattr(module, "__file__", None) or "").startswith(top)
    ]


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _note_modules(root: str) -> None:
    """Remember the files of the project's modules as this task imported them."""
    for name, path in _project_modules(root):
        if name not in _MODULES and (st := _stat(path)) is not None:
            _MODULES[name] = (path, *st)


def _forget_changed_modules(root: str) -> None:
    """Unload the project's modules whose file changed since they were imported: a worker
    outlives builds, and a stage rerun because its code changed must run the new code, not
    the module an earlier build left in this process (its output would be stored under
    the new code's key)."""
    for name, path in _project_modules(root):
        seen = _MODULES.get(name)
        if seen is not None and (seen[0] != path or _stat(path) != seen[1:]):
            sys.modules.pop(name, None)
            del _MODULES[name]


def _live(task: Task, topic: str) -> Callable[[Any], None] | None:
    """What sends a whole-stage task's progress to the build as it comes (foreach tasks
    report per task: the build counts their items as their answers arrive)."""
    if not topic or task.mode not in ("run", "reduce"):
        return None
    from distributed import get_worker

    worker = get_worker()
    last = [0.0]

    def send(data: Any) -> None:
        now = time.monotonic()
        if now - last[0] >= LIVE_EVERY:
            last[0] = now
            with contextlib.suppress(Exception):  # progress is a courtesy, never a failure
                worker.log_event(topic, [task.id, data])

    return send


def _where(worker: Any = None) -> str:
    """``dask worker tcp://… (host …)``: the worker this runs on (``worker``, as
    ``Client.run`` passes it, else the worker of the running task)."""
    try:
        if worker is None:
            from distributed import get_worker

            worker = get_worker()
        return f"dask worker {worker.address} (host {socket.gethostname()})"
    except ValueError:
        return f"host {socket.gethostname()}"


def _not_shared(root: str, where: str) -> str:
    return (
        f"{where} does not see the project at {root}: pipemake's dask executor needs workers "
        "that share the project's filesystem at the same path (mount it there on every "
        "worker, or run the workers on this machine)"
    )


def probe(path: str, token: str, store: str, version: str, dask_worker: Any = None) -> str | None:
    """On a worker: None when it runs pipemake ``version``, reads ``token`` from ``path``
    and may write beside it and into the store, else what is wrong (naming the worker:
    ``Client.run`` passes it as ``dask_worker``)."""
    where = _where(dask_worker)
    from importlib import metadata

    try:
        mine = metadata.version("pipemake")
    except metadata.PackageNotFoundError:
        mine = "?"
    if mine != version:
        return (
            f"{where} runs pipemake {mine}, the build {version}: install the same version "
            "on the workers"
        )
    try:
        with open(path, encoding="utf-8") as f:
            seen = f.read()
    except OSError:
        return _not_shared(os.path.dirname(os.path.dirname(os.path.dirname(path))), where)
    if seen != token:
        return f"{where} reads another file at {path}: its filesystem is not the build's"
    for folder in (os.path.dirname(path), store):
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"{where} may not write into {folder} (the user running the worker)"
    return None


#: the rules whose packages this worker process imported (checked at its first task of each)
_REQUIRED: set[str] = set()


def _lacking(name: str) -> str | None:
    """None when this worker imports every package rule ``name`` declares (asked before
    its first task of the rule: a worker that joined the cluster after the build checked
    the others is checked here), else what :func:`lacking_message` says of it."""
    if name in _REQUIRED:
        return None
    try:
        requires = dict(getattr(get_rule(name), "requires", None) or {})
    except Exception:  # noqa: BLE001 - a rule that does not load: the task says so itself
        return None
    said = missing(sorted(requires))
    if said:
        from distributed import get_worker

        return lacking_message(name, requires, {get_worker().address: said})
    _REQUIRED.add(name)
    return None


def lacking_message(rule: str, requires: dict[str, str], lacking: dict[str, Any]) -> str:
    """What stops rule ``rule``'s tasks on these workers: which (``lacking``: worker
    address → the ``(module, why)`` pairs :func:`missing` gave, or the exception asking it
    raised) cannot import which of its packages, and the one ``pip install`` line for them."""
    said: dict[str, str] = {}  # module → why, as the first worker lacking it said
    for answer in lacking.values():
        if isinstance(answer, BaseException):
            answer = [("pipemake", f"{type(answer).__name__}: {answer}")]
        for module, why in answer:
            said.setdefault(module, why)
    names = list(lacking)
    who = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    what = "; ".join(f"{m} ({why})" for m, why in said.items())
    return (
        f"rule {rule!r} needs packages that dask worker{'s' * (len(names) > 1)} {who} "
        f"cannot import: {what}; install them there: "
        + install_line([requires.get(m, m) for m in said])
    )


def missing(modules: list[str]) -> list[tuple[str, str]]:
    """On a worker: the ``modules`` (a rule's ``requires``) it cannot import, each with
    why. They are imported, not only looked for: the rule's task would import them next,
    and a package that is there but broken fails the same way."""
    import importlib

    out = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - whatever stops the import, said as it is
            out.append((name, f"{type(exc).__name__}: {exc}"))
    return out

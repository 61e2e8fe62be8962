"""Executors: everything that runs tasks, and nothing that decides or orders them.

- ``base``: the interface (:class:`~.base.Task`, :class:`~.base.Message`,
  :class:`~.base.Executor`), all the scheduler and the build's wiring import of executors;
- ``local``: worker processes on this machine, and threads for ``spawns_only`` rules;
- ``inline``: each task in this process, one at a time (the test double);
- ``dask``: tasks on a ``dask.distributed`` cluster (``dask``: a running scheduler;
  ``dask-local``: a local cluster of processes), the extra ``pipemake[dask]``, and
  ``dask_worker``, what runs on a dask worker;
- ``worker``: what runs one task, wherever it runs; ``outputs``: what a task wrote,
  checked, hashed and stored;
- ``spawn``: what starts a task's subprocesses; ``shell``: the task's persistent shell;
- ``guardian``: the process that ends a threaded task's commands when the build dies.

Executors are registered here by name and imported only when asked for
(:func:`get_executor`), so choosing one costs nothing of the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Executor

__all__ = ["executor_names", "get_executor", "runs_here"]


def _local() -> type[Executor]:
    from .local import LocalExecutor

    return LocalExecutor


def _inline() -> type[Executor]:
    from .inline import InlineExecutor

    return InlineExecutor


def _dask() -> type[Executor]:
    from .dask import DaskExecutor

    return DaskExecutor


def _dask_local() -> type[Executor]:
    from .dask import DaskLocalExecutor

    return DaskLocalExecutor


#: executor name → a function that imports its class
_EXECUTORS: dict[str, Callable[[], type[Executor]]] = {
    "local": _local, "inline": _inline, "dask": _dask, "dask-local": _dask_local,
}  # fmt: skip
#: the executors whose tasks run on other machines (the build's budget is not this machine's)
_ELSEWHERE = frozenset({"dask", "dask-local"})


def executor_names() -> list[str]:
    """The names ``--executor`` accepts."""
    return list(_EXECUTORS)


def runs_here(name: str) -> bool:
    """Whether executor ``name`` runs tasks on this machine, within its CPUs, GPUs and
    memory (without importing it)."""
    return name not in _ELSEWHERE


def get_executor(name: str, jobs: int, **options: Any) -> Executor:
    """The executor registered as ``name``, imported lazily; ``options`` are its own
    (``scheduler`` and ``dashboard`` for dask)."""
    load = _EXECUTORS.get(name)
    if load is None:
        raise ValueError(f"unknown executor {name!r} (known: {', '.join(_EXECUTORS)})")
    options = {k: v for k, v in options.items() if v is not None}
    return load()(jobs, **options)

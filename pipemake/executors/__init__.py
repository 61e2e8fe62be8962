"""Executors: everything that runs tasks, and nothing that decides or orders them.

- ``base``: the interface (:class:`~.base.Task`, :class:`~.base.Message`,
  :class:`~.base.Executor`), all the scheduler and the build's wiring import of executors;
- ``local``: worker processes on this machine, and threads for ``spawns_only`` rules;
- ``inline``: each task in this process, one at a time (the test double);
- ``worker``: what runs one task, wherever it runs; ``outputs``: what a task wrote,
  checked, hashed and stored;
- ``spawn``: what starts a task's subprocesses; ``shell``: the task's persistent shell;
- ``guardian``: the process that ends a threaded task's commands when the build dies.

Executors are registered here by name and imported only when asked for
(:func:`get_executor`), so choosing one costs nothing of the others.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Executor

__all__ = ["get_executor"]


def _local() -> type[Executor]:
    from .local import LocalExecutor

    return LocalExecutor


def _inline() -> type[Executor]:
    from .inline import InlineExecutor

    return InlineExecutor


#: executor name → a function that imports its class
_EXECUTORS: dict[str, Callable[[], type[Executor]]] = {"local": _local, "inline": _inline}


def get_executor(name: str, jobs: int) -> Executor:
    """The executor registered as ``name``, imported lazily."""
    load = _EXECUTORS.get(name)
    if load is None:
        raise ValueError(f"unknown executor {name!r} (known: {', '.join(_EXECUTORS)})")
    return load()(jobs)

"""The executor interface: where work runs. Executors know nothing of up-to-dateness.

An executor takes plain, picklable :class:`Task` descriptions and reports back
:class:`Message` objects (progress, log lines, a result or an error). It is a context
manager; ``submit`` and ``poll`` are the methods to implement. This module knows no
executor of its own: they are registered by name in :mod:`pipemake.executors`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["GONE", "LOST", "Executor", "Message", "Mode", "Task"]

#: what a task does: ``run`` a whole stage, run foreach ``items`` (each on its own), ``map``
#: foreach items (each to a result), or ``reduce`` the map results
Mode = Literal["run", "items", "map", "reduce"]


@dataclass
class Task:
    """One unit of work: a whole stage, a batch of its items, or a map-reduce step."""

    id: str
    stage: str
    rule: str
    root: str
    store: str
    inputs: dict[str, Any]
    outputs: dict[str, str]
    output_kinds: dict[str, str]
    params: dict[str, Any]
    mode: Mode = "run"
    items: list[dict[str, str]] = field(default_factory=list)
    foreach: str | None = None
    #: an ``items``/``map`` task: where its finished items' outputs go (relative to
    #: ``root``), shared by the stage's tasks so the stage's output is one finished tree
    done: str = ""
    #: a ``reduce`` task: each item's map result (relative path → object digest and kind,
    #: ``bytes`` or ``json``), read from the store
    mapped: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: the digest of ``params``, filled in by the worker the first time it needs it (the
    #: key of the rule's ``setup`` cache), so a task of many items computes it once
    params_digest: str = ""
    env: dict[str, str] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)
    gpu_ids: list[str] = field(default_factory=list)
    log_path: str = ""
    timeout: float | None = None
    attempt: int = 1
    max_attempts: int = 1
    backoff: float = 1.0
    not_before: float = 0.0
    #: seconds this task waited, in all, between its failed attempts and the next
    waited: float = 0.0
    #: hard-link outputs into the store instead of copying them (``build --link``)
    link: bool = False
    #: flush store objects to disk before reporting them (``build --fsync``)
    fsync: bool = False
    #: each output's final path (relative to ``root``): a link the task writes into an
    #: output is resolved as from there (see :class:`pipemake.walk.LinkView`)
    final: dict[str, str] = field(default_factory=dict)


#: the third part of an ``error`` that ended a task from outside (its worker died, it was
#: stopped or timed out) rather than one its code reported: the items a foreach task
#: answered before are its own, and the first one that did not answer was running
LOST = "lost"
#: the fifth part of a :data:`LOST` error when the executor can start nothing more (its
#: cluster is gone): the items the task never started are not run, not failed (then an
#: index of -1: it was running none)
GONE = "gone"


@dataclass
class Message:
    """What a running task reports: ``progress`` (done, total), ``log`` (level, text),
    ``items`` (a foreach task's items that just ended: relpath → result), ``result``
    (payload) or ``error`` (text, traceback, and :data:`LOST` when the task was ended
    from outside, then the index of the item it was running, where known)."""

    task: str
    kind: str
    data: Any = None


class Executor(ABC):
    """Runs tasks somewhere; reports messages. Use as a context manager."""

    name = "base"

    def __init__(self, jobs: int = 1):
        self.jobs = max(1, jobs)

    @abstractmethod
    def submit(self, task: Task) -> None:
        """Start ``task`` (the caller never submits more than ``jobs`` at once)."""

    @abstractmethod
    def poll(self, timeout: float | None) -> list[Message]:
        """Messages that arrived, waiting up to ``timeout`` seconds for the first one."""

    def prestart(self, workers: int) -> None:
        """Start up to ``workers`` workers now, before any task is ready for them (a cold
        build: they start while the build decides, instead of after). A hint: the default
        does nothing."""
        return None

    def cancel(self, task_ids: list[str], force: bool = False) -> None:
        """Stop running tasks (terminate their process trees); each then reports an error."""
        return None

    def close(self) -> None:
        """Release workers."""
        return None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

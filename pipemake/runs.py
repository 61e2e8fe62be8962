"""A stage while it runs in a build: what it was decided with, where its work is staged, the
tasks it hands the scheduler and what they answered.

:class:`StageRun` is a stage without ``foreach`` (one task); :class:`pipemake.foreach.
ForeachRun` extends it with its items. Both reach the build's pieces (store, workspace,
hasher, events) through one :class:`BuildContext`, so neither knows the build's wiring.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .events import Bus
from .executors.base import Mode, Task
from .fshash import Hasher
from .model import Stage
from .resolve import ResolvedStage
from .state import WorkspaceState
from .store import Store
from .walk import BadPath
from .workspace import Workspace

__all__ = ["MAX_AGAIN", "BuildContext", "StageRun"]

#: how many times a stage or item runs again because an input changed while it ran
MAX_AGAIN = 3


@dataclass
class BuildContext:
    """What a running stage may use of its build: the project root, the store, the
    workspace and its state, the hasher, the event bus, the job count, the default retries,
    ``later`` to put off bookkeeping no later decision of this build reads, and whether the
    build is being stopped."""

    root: Path
    store: Store
    state: WorkspaceState
    ws: Workspace
    hasher: Hasher
    bus: Bus
    jobs: int
    retries: int | None
    later: Callable[[Callable[[], None], str], None]
    #: whether the build is being stopped by a signal (a task ended then was stopped, not
    #: failed by its item)
    stopping: Callable[[], bool] = lambda: False


@dataclass
class StageRun:
    """One stage's run in a build, from its decision to its commit (or failure)."""

    rs: ResolvedStage
    staging: Path
    #: the task log, for the tasks to write
    log: str
    #: when it was decided, and when it started running (its first task)
    decided: float
    started: float
    #: the source inputs and the hashes the key was computed with (see :meth:`moved_inputs`)
    guard: list[tuple[str, str]]
    #: what ``stage_started`` reports once its first task starts (None: reported)
    waiting: dict[str, Any] | None = None
    #: where the stage's task writes each output (relative to the project root)
    outputs: dict[str, str] = field(default_factory=dict)
    #: the task's answer, or its error ``[text, traceback]``
    result: dict[str, Any] | None = None
    error: list[Any] | None = None
    #: how many times it ran again because an input changed while it ran
    again: int = 0
    #: its task's attempt now running (retries count up) and the seconds it waited between
    #: attempts: part of its duration, reported apart
    attempt: int = 1
    retry_wait: float = 0.0
    #: the seconds a retry, its backoff over, then waited for a job or a resource: no part
    #: of its duration (queue time, as the wait before its first attempt)
    retry_queued: float = 0.0

    def attempt_started(self, task: Task) -> None:
        """Its task's attempt ``task.attempt`` left the queue: a retry's wait for a job or
        a resource, past its backoff, is queue time."""
        if task.attempt > self.attempt:
            self.retry_queued += max(0.0, time.time() - task.not_before)
        self.attempt, self.retry_wait = task.attempt, task.waited

    def ran_for(self) -> float:
        """Its run time so far: from its first task's start, less a retry's queue time
        (the backoff between attempts stays in, said apart)."""
        return time.time() - self.started - self.retry_queued

    def queued(self) -> float:
        """The seconds it waited for a job or a resource: before its first task, and for
        its retries once their backoff was over."""
        return self.started - self.decided + self.retry_queued

    def retrying(self) -> dict[str, Any]:
        """``{"attempts", "retry_wait"}`` once it needed more than one attempt, else {}."""
        if self.attempt <= 1:
            return {}
        return {"attempts": self.attempt, "retry_wait": round(self.retry_wait, 3)}

    @staticmethod
    def guard_of(rs: ResolvedStage, owner: Callable[[str], Any]) -> list[tuple[str, str]]:
        """The files the key holds and the stage reads from the workspace, with the hashes
        the key was computed with: what must still hold when the stage's work is committed.
        Those are its source inputs (no stage produces them: ``owner`` is None), the files
        of its items' folder its params name (``reads``, in every item's key) and the paths
        into upstream outputs they name (``watched``: hashed from those outputs'
        manifests); ``missing`` where the key says there was nothing."""
        pairs: list[tuple[str, str]] = []
        for value in rs.doc["inputs"].values():
            for path, h in value if value and isinstance(value[0], list) else [value]:
                if h != "foreach" and owner(path) is None:
                    pairs.append((path, h))
        named = {**rs.doc.get("reads", {}), **rs.watched}
        pairs.extend((path, h) for path, h in sorted(named.items()) if h != "?")
        return pairs

    def moved_inputs(self, hasher: Hasher) -> list[str]:
        """The files of :meth:`guard_of` that changed since the stage's key was computed
        (edited while its work ran): that work must not be committed under the old key."""
        moved = []
        for path, h in self.guard:
            try:
                now = hasher.recheck(path)
            except BadPath:
                now = None
            if now != (None if h == "missing" else h):
                moved.append(path)
        return moved

    def staged_outputs(self, root: Path) -> dict[str, str]:
        """Where a (non-foreach) stage's task writes each output: in its staging folder."""
        return {
            name: os.path.relpath(self.staging / name / os.path.basename(rel), root)
            for name, rel in self.rs.ports.outputs.items()
        }

    def task(
        self,
        ctx: BuildContext,
        stage: Stage,
        task_id: str,
        *,
        mode: Mode = "run",
        outputs: dict[str, str] | None = None,
        items: list[dict[str, Any]] | None = None,
        mapped: dict[str, tuple[str, str]] | None = None,
        done: str = "",
    ) -> Task:
        """A task description for one unit of this stage's work."""
        ports = self.rs.ports
        if mode == "reduce":
            outputs = {
                name: os.path.relpath(self.staging / "reduce" / name, ctx.root)
                for name in ports.outputs
            }
            self.outputs = outputs
        store = ctx.store
        return Task(
            id=task_id, stage=stage.id, rule=stage.rule.name, root=str(ctx.root),
            store=str(store.path), link=store.link, fsync=store.fsync,
            inputs=ports.inputs,
            outputs=outputs or {}, final=dict(ports.outputs),
            output_kinds=ports.output_kinds, params=ports.params, mode=mode,
            items=items or [], foreach=stage.foreach.input if stage.foreach else None,
            done=done, mapped=mapped or {},
            resources=stage.resources, log_path=self.log, timeout=stage.timeout,
            max_attempts=1 + _retries(stage.retries, ctx.retries), backoff=stage.retry_backoff,
        )  # fmt: skip

    def running_now(self, bus: Bus, stage_id: str) -> None:
        """The stage runs from now (its first task started, or it had none to wait for):
        its duration counts from here, the wait before it is reported as such."""
        waiting, self.waiting = self.waiting, None
        if waiting is None:
            return
        self.started = now = time.time()
        queued = round(now - self.decided, 3)
        bus.emit("stage_started", stage_id, queued=queued, **waiting)


def _retries(own: int | None, default: int | None) -> int:
    """A stage's retries: its own ``retries:`` (0 included), else the build's --retries."""
    if own is not None:
        return own
    return default or 0

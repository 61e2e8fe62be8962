"""In what order: a ready queue over the stage graph.

A stage begins as soon as its own dependencies are done (never a whole graph "level"), and
its tasks run while fewer than ``jobs`` tasks are running. The scheduler does not know how
a stage decides or how a task runs: a :class:`StageHandler` turns stages into tasks and
results into outcomes, and an executor runs the tasks.
"""

from __future__ import annotations

import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .dag import Graph
from .events import Bus
from .executors.base import Executor, Message, Task

__all__ = ["Outcome", "Scheduler", "StageFailure", "StageHandler"]


class StageFailure(Exception):
    """A stage failed; the message says why (and which item)."""


class StageHandler(Protocol):
    """The builder's side of the schedule."""

    def begin(self, stage: str) -> list[Task]:
        """Decide and start a stage: the tasks to run (none when it finished already)."""

    def on_message(self, stage: str, message: Message) -> list[Task]:
        """A task reported; return follow-up tasks (e.g. a reduce after the maps)."""

    def complete(self, stage: str) -> None:
        """Every task of the stage has reported: commit it, or raise StageFailure."""


@dataclass
class Outcome:
    """How the schedule ended: which stages finished, failed, or never ran and why."""

    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    interrupted: int | None = None


class Scheduler:
    """Runs the stages of ``graph`` in ``order`` with at most ``jobs`` tasks at once."""

    def __init__(
        self,
        graph: Graph,
        order: list[str],
        handler: StageHandler,
        executor: Executor,
        bus: Bus,
        *,
        jobs: int = 1,
        keep_going: bool = False,
        stop_signal: Callable[[], int | None] = lambda: None,
    ):
        self.graph = graph
        self.order = order
        self.handler = handler
        self.executor = executor
        self.bus = bus
        self.jobs = max(1, jobs)
        self.keep_going = keep_going
        self.stop_signal = stop_signal

    def run(self) -> Outcome:
        out = Outcome()
        selected = set(self.order)
        waiting = {s: {d for d in self.graph.deps[s] if d in selected} for s in self.order}
        dependents = self.graph.dependents()
        ready = deque(s for s in self.order if not waiting[s])
        queue: deque[tuple[str, Task]] = deque()
        running: dict[str, str] = {}  # task id -> stage
        open_tasks: dict[str, int] = {}
        halted = False
        cancelled = False

        def finish(stage: str, error: str | None) -> None:
            nonlocal halted
            open_tasks.pop(stage, None)
            if error is None:
                out.done.append(stage)
                for nxt in dependents[stage]:
                    if nxt in waiting:
                        waiting[nxt].discard(stage)
                        if not waiting[nxt] and nxt not in out.skipped:
                            ready.append(nxt)
                return
            if out.interrupted is not None:
                out.skipped[stage] = "interrupted"
                self.bus.emit("stage_cancelled", stage, reason="interrupted")
                return
            out.failed[stage] = error
            self.bus.emit("stage_failed", stage, error=error)
            self._skip_dependents(stage, dependents, selected, out)
            if not self.keep_going:
                halted = True

        def settle(stage: str, tasks: list[Task]) -> None:
            for t in tasks:
                queue.append((stage, t))
            open_tasks[stage] = open_tasks.get(stage, 0) + len(tasks)
            if open_tasks[stage] == 0:
                try:
                    self.handler.complete(stage)
                except StageFailure as exc:
                    finish(stage, str(exc))
                else:
                    finish(stage, None)

        while True:
            sig = self.stop_signal()
            if sig is not None and out.interrupted is None:
                out.interrupted = sig
                halted = True
            if halted and not cancelled and out.interrupted is not None and running:
                self.executor.cancel(list(running))
                cancelled = True
            while ready and not halted:
                stage = ready.popleft()
                open_tasks[stage] = 0
                try:
                    tasks = self.handler.begin(stage)
                except StageFailure as exc:
                    finish(stage, str(exc))
                    continue
                settle(stage, tasks)
            while queue and len(running) < self.jobs and not halted:
                stage, task = queue.popleft()
                running[task.id] = stage
                self.executor.submit(task)
            if not running and (halted or not queue) and (halted or not ready):
                break
            for msg in self.executor.poll(0.1):
                stage = running.get(msg.task)
                if stage is None:
                    continue
                if msg.kind in ("result", "error"):
                    del running[msg.task]
                    open_tasks[stage] -= 1
                follow = self.handler.on_message(stage, msg)
                if msg.kind in ("result", "error"):
                    if halted and follow:
                        open_tasks.pop(stage, None)
                        out.skipped[stage] = "stopped before it finished"
                    else:
                        settle(stage, follow)
        for stage in self.order:
            if stage not in out.done and stage not in out.failed and stage not in out.skipped:
                reason = "interrupted" if out.interrupted else "not started after a failure"
                out.skipped[stage] = reason
        return out

    def _skip_dependents(
        self, stage: str, dependents: dict[str, list[str]], selected: set[str], out: Outcome
    ) -> None:
        stack = list(dependents[stage])
        while stack:
            nxt = stack.pop()
            if nxt in selected and nxt not in out.skipped:
                out.skipped[nxt] = f"upstream {stage} failed"
                self.bus.emit("stage_skipped", nxt, reason=f"upstream {stage} failed")
                stack.extend(dependents[nxt])


SIGNALS = (signal.SIGINT, signal.SIGTERM)

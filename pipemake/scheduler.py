"""In what order: a ready queue over the stage graph, within job and resource budgets.

A stage begins as soon as its own dependencies are done (never a whole graph "level").
Ready stages are taken longest remaining critical path first (expected durations from past
runs), and a queued task starts when fewer than ``jobs`` tasks run and its whole resource
request fits. Failed tasks are retried with exponential backoff and jitter; a task past its
stage's ``timeout`` has its process tree ended. On a first stop signal no new work starts,
running tasks get ``grace`` seconds and are then terminated; a second signal ends them at
once.

The scheduler does not know how a stage decides or how a task runs: a
:class:`StageHandler` turns stages into tasks and results into outcomes, and an executor
runs the tasks.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .dag import Graph
from .events import Bus
from .executors.base import LOST, Executor, Message, Task
from .resources import Budget

__all__ = [
    "Outcome",
    "Scheduler",
    "StageFailure",
    "StageHandler",
    "WaitFor",
    "backoff_delay",
    "cycle_text",
    "needs_path",
    "priorities",
]

BACKOFF_CAP = 300.0
KILL_AFTER_TERM = 5.0


class StageFailure(Exception):
    """A stage failed; the message says why (and which item)."""


class WaitFor(Exception):
    """Raised by :meth:`StageHandler.begin`: the stage, its declared dependencies done,
    found that it needs what other stages make, which no edge of the graph says (a path a
    computed value gives, inside another stage's output), and they are not done yet.
    ``needs``: each such stage → what of it the stage reads, in words for a message. The
    scheduler begins the stage again once they are done; one that cannot be waited for
    (left out of the build, failed, or itself waiting on this stage) fails or skips the
    stage instead, never hangs the build."""

    def __init__(self, needs: Mapping[str, str]):
        super().__init__(", ".join(needs))
        self.needs = dict(needs)


class StageHandler(Protocol):
    """The builder's side of the schedule."""

    def begin(self, stage: str) -> list[Task]:
        """Decide and start a stage: the tasks to run (none when it finished already); or
        raise :class:`WaitFor` when it needs stages no edge names that have not finished."""

    def task_started(self, stage: str, task: Task) -> None:
        """A task of the stage left the queue for an executor (the first one: the stage
        is running from now; before, it waited for a job or a resource)."""

    def on_message(self, stage: str, message: Message) -> list[Task]:
        """A task reported; return follow-up tasks (e.g. a reduce after the maps)."""

    def complete(self, stage: str) -> list[Task] | None:
        """Every task of the stage has reported: commit it, or raise StageFailure; or
        return more tasks when committing found work still to do (the stage stays open)."""

    def idle(self) -> None:
        """Do the bookkeeping put off until tasks run (or the schedule ends)."""


@dataclass
class Outcome:
    """How the schedule ended: which stages finished, failed, or never ran and why."""

    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    interrupted: int | None = None


#: why a stage that was running when the build was stopped did not finish
STOPPED = "stopped before it finished"


def backoff_delay(base: float, attempt: int) -> float:
    """Seconds before attempt ``attempt + 1``: exponential, with up to 50 % jitter, capped."""
    return min(BACKOFF_CAP, base * 2 ** (attempt - 1)) * (1 + random.random() * 0.5)


def priorities(graph: Graph, order: list[str], expected: Mapping[str, float]) -> dict[str, float]:
    """Each stage's longest remaining path (its own expected time plus its heaviest
    dependent chain): the rule for picking among ready stages."""
    selected = set(order)
    dependents = graph.dependents()
    rank: dict[str, float] = {}
    for stage in reversed(order):
        below = [rank[d] for d in dependents[stage] if d in selected and d in rank]
        rank[stage] = expected.get(stage, 1.0) + (max(below) if below else 0.0)
    return rank


def needs_path(
    deps: Mapping[str, Iterable[str]], found: Mapping[str, Iterable[str]], start: str, goal: str
) -> list[str] | None:
    """A path from ``start`` to ``goal`` (both included) along what stages need: the
    graph's edges (``deps``) and what stages found they need once begun (``found``, see
    :class:`WaitFor`); None when there is none."""
    came: dict[str, str | None] = {start: None}
    todo = [start]
    while todo:
        node = todo.pop()
        if node == goal:
            path = [node]
            while (prev := came[path[-1]]) is not None:
                path.append(prev)
            return path[::-1]
        for nxt in [*deps.get(node, ()), *sorted(found.get(node, ()))]:
            if nxt not in came:
                came[nxt] = node
                todo.append(nxt)
    return None


def cycle_text(stage: str, what: str, back: list[str]) -> str:
    """Why ``stage`` fails: it found it needs a stage (``what`` it reads of it, in words)
    that needs ``stage`` first (``back``: the path from that stage to ``stage``)."""
    cycle = " → ".join([stage, *back])
    return (
        f"{what}, but stage {back[0]} needs {stage} first (a cycle: {cycle}): change the "
        "value, or the stages, so that no stage reads the output of one that needs it"
    )


@dataclass
class _Running:
    stage: str
    task: Task
    started: float
    gpus: list[str]
    timed_out: bool = False


class Scheduler:
    """Runs the stages of ``graph`` in ``order`` within ``jobs`` and the resource ``budget``."""

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
        stop_signal: Callable[[], tuple[int | None, int]] = lambda: (None, 0),
        budget: Budget | None = None,
        expected: Mapping[str, float] | None = None,
        grace: float = 30.0,
    ):
        self.graph = graph
        self.order = order
        self.handler = handler
        self.executor = executor
        self.bus = bus
        self.jobs = max(1, jobs)
        self.keep_going = keep_going
        self.stop_signal = stop_signal
        self.budget = budget or Budget({}, [])
        self.rank = priorities(graph, order, expected or {})
        self.grace = grace
        self.out = Outcome()
        self._halted = False
        self._stop_at: float | None = None
        self._term_sent = False
        self._kill_sent = False

    # bookkeeping ------------------------------------------------------------------------
    def run(self) -> Outcome:
        selected = set(self.order)
        self._waiting = {s: {d for d in self.graph.deps[s] if d in selected} for s in self.order}
        self._dependents = self.graph.dependents()
        #: the stages each stage found it needs once it began (WaitFor), beyond its edges
        self._found: dict[str, set[str]] = {}
        self._selected = selected
        index = {s: i for i, s in enumerate(self.order)}
        self._index = index
        self._ready: list[tuple[float, int, str]] = []
        for s in self.order:
            if not self._waiting[s]:
                self._push_ready(s)
        self._queue: list[tuple[float, int, int, str, Task]] = []
        self._seq = 0
        self._running: dict[str, _Running] = {}
        self._open: dict[str, int] = {}
        #: stages a task of which has started (one left unfinished was stopped, not skipped)
        self._began: set[str] = set()
        while True:
            self._check_signals()
            self._begin_ready()
            self._submit_queued()
            self._check_timeouts()
            if not self._running and (self._halted or (not self._queue and not self._ready)):
                break
            if self._running:  # while they run: what the builder put off, off the critical path
                self.handler.idle()
            for msg in self.executor.poll(self._poll_timeout()):
                self._handle(msg)
        self.handler.idle()
        out = self.out
        done = set(out.done)
        for stage in self.order:
            if stage not in done and stage not in out.failed and stage not in out.skipped:
                if out.interrupted is None:
                    out.skipped[stage] = "not started after a failure"
                else:  # one that had begun (a foreach stage's first items, say) was stopped
                    out.skipped[stage] = STOPPED if stage in self._began else "interrupted"

        return self.out

    def _push_ready(self, stage: str) -> None:
        heapq.heappush(self._ready, (-self.rank.get(stage, 0.0), self._index[stage], stage))

    def _poll_timeout(self) -> float:
        if self._queue and not self._running:
            return 0.05
        return 0.1

    def _check_signals(self) -> None:
        sig, count = self.stop_signal()
        now = time.monotonic()
        if sig is not None and self.out.interrupted is None:
            self.out.interrupted = sig
            self._halted = True
            self._stop_at = now
            if self._running:
                self.bus.emit("stopping", None, grace=self.grace, running=self._stages_running())
        if self.out.interrupted is None or not self._running:
            return
        if count >= 2 and not self._kill_sent:
            self.executor.cancel(list(self._running), force=True)
            self._kill_sent = self._term_sent = True
        elif (
            self._stop_at is not None and not self._term_sent and now - self._stop_at >= self.grace
        ):
            self.executor.cancel(list(self._running))
            self._term_sent = True
        elif (
            self._term_sent
            and not self._kill_sent
            and self._stop_at is not None
            and (now - self._stop_at >= self.grace + KILL_AFTER_TERM)
        ):
            self.executor.cancel(list(self._running), force=True)
            self._kill_sent = True

    def _stages_running(self) -> list[str]:
        return sorted({r.stage for r in self._running.values()})

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        for task_id, r in self._running.items():
            limit = r.task.timeout
            if limit and not r.timed_out and now - r.started > limit:
                r.timed_out = True
                self.executor.cancel([task_id])

    # stages -----------------------------------------------------------------------------
    def _begin_ready(self) -> None:
        while self._ready and not self._halted:
            _, _, stage = heapq.heappop(self._ready)
            self._open[stage] = 0
            try:
                tasks = self.handler.begin(stage)
            except WaitFor as wait:
                self._open.pop(stage, None)
                self._wait(stage, wait.needs)
                continue
            except StageFailure as exc:
                self._check_signals()  # a signal during a long begin: stopped, not failed
                self._finish(stage, str(exc))
                continue
            self._settle(stage, tasks)
            self._check_signals()

    def _wait(self, stage: str, needs: Mapping[str, str]) -> None:
        """Hold ``stage`` until the stages it found it needs (``needs``, see
        :class:`WaitFor`) are done, then begin it again. A stage this build leaves out, or
        one that needs ``stage`` first (a cycle), fails it; one that failed skips it."""
        out = self.out
        pending = [dep for dep in needs if dep not in out.done]
        for dep in pending:
            what = needs[dep]
            if dep in out.failed or dep in out.skipped:
                why = f"upstream {dep} failed" if dep in out.failed else out.skipped[dep]
                self._skip([stage], why)
                return
            if dep not in self._selected:
                self._finish(
                    stage,
                    f"{what}; this build leaves stage {dep} out: build it too (`pipemake "
                    f"build {stage} {dep}`), or add `depends_on: [{dep}]` to stage {stage}",
                )
                return
            back = needs_path(self.graph.deps, self._found, dep, stage)
            if back is not None:
                self._finish(stage, cycle_text(stage, what, back))
                return
        if not pending:  # done, yet still not known: never begun again, which would loop
            self._finish(stage, f"{', '.join(needs.values())}: still not known after it ran")
            return
        for dep in pending:
            self._found.setdefault(stage, set()).add(dep)
            self._dependents[dep].append(stage)
            self._waiting[stage].add(dep)
            self.bus.emit("log", stage, level="info", text=f"waits for stage {dep}: {needs[dep]}")

    def _settle(self, stage: str, tasks: list[Task]) -> None:
        for t in tasks:
            self._enqueue(stage, t)
        self._open[stage] = self._open.get(stage, 0) + len(tasks)
        if self._open[stage] == 0:
            try:
                more = self.handler.complete(stage)
            except StageFailure as exc:
                self._finish(stage, str(exc))
            else:
                if not more:
                    self._finish(stage, None)
                elif self._halted:
                    self._open.pop(stage, None)
                    self.out.skipped[stage] = STOPPED
                else:
                    self._settle(stage, more)

    def _finish(self, stage: str, error: str | None) -> None:
        out = self.out
        self._open.pop(stage, None)
        if error is None:
            out.done.append(stage)
            for nxt in self._dependents[stage]:
                if nxt in self._waiting:
                    self._waiting[nxt].discard(stage)
                    if not self._waiting[nxt] and nxt not in out.skipped:
                        self._push_ready(nxt)
            return
        if out.interrupted is not None:  # it was running: the signal ended it
            out.skipped[stage] = STOPPED
            self.bus.emit("stage_cancelled", stage, reason="interrupted")
            return
        out.failed[stage] = error
        self.bus.emit("stage_failed", stage, error=error)
        self._skip(list(self._dependents[stage]), f"upstream {stage} failed")
        if not self.keep_going:
            self._halted = True

    def _skip(self, stages: list[str], why: str) -> None:
        """Skip ``stages`` and every stage after them, saying ``why``."""
        out = self.out
        stack = list(stages)
        while stack:
            nxt = stack.pop()
            if nxt in self._selected and nxt not in out.skipped and nxt not in out.failed:
                out.skipped[nxt] = why
                self.bus.emit("stage_skipped", nxt, reason=why)
                stack.extend(self._dependents[nxt])

    # tasks ------------------------------------------------------------------------------
    def _enqueue(self, stage: str, task: Task) -> None:
        self._seq += 1
        prio = -self.rank.get(stage, 0.0)
        heapq.heappush(self._queue, (prio, self._index[stage], self._seq, stage, task))

    def _submit_queued(self) -> None:
        if self._halted or not self._queue:
            return
        now = time.time()
        held: list[tuple[float, int, int, str, Task]] = []
        while self._queue and len(self._running) < self.jobs:
            item = heapq.heappop(self._queue)
            task = item[4]
            if task.not_before > now or not self.budget.fits(task.resources):
                held.append(item)
                continue
            gpus = self.budget.take(task.resources)
            if gpus:
                task.gpu_ids = gpus
                task.env = dict(task.env, CUDA_VISIBLE_DEVICES=",".join(gpus))
            elif task.resources.get("gpu", 0) == 0 and "gpu" in self.budget.total:
                task.env = dict(task.env, CUDA_VISIBLE_DEVICES="")
            self._running[task.id] = _Running(item[3], task, time.monotonic(), gpus)
            self._began.add(item[3])
            self.handler.task_started(item[3], task)
            self.bus.emit(
                "task_started",
                item[3],
                task=task.id,
                attempt=task.attempt,
                resources=task.resources,
                gpus=gpus,
            )
            self.executor.submit(task)
        for item in held:
            heapq.heappush(self._queue, item)

    def _handle(self, msg: Message) -> None:
        r = self._running.get(msg.task)
        if r is None:
            return
        stage = r.stage
        if msg.kind in ("result", "error"):
            del self._running[msg.task]
            self.budget.give(r.task.resources, r.gpus)
            self._open[stage] -= 1
            self.bus.emit("task_finished", stage, task=r.task.id, ok=msg.kind == "result")
        elif msg.kind == "items":  # a foreach task's item ended: the timeout is per item
            r.started = time.monotonic()
        if msg.kind == "error" and r.timed_out:
            said = [f"timed out after {r.task.timeout:g} s", None, LOST, *msg.data[3:4]]
            msg = Message(msg.task, "error", said)  # with the item it ran, where known
        # a timeout too; a foreach task's items are retried by their stage, each on its own
        if msg.kind == "error" and not r.task.items and self._retry(stage, r.task, msg):
            return
        follow = self.handler.on_message(stage, msg)
        if msg.kind not in ("result", "error"):
            return
        if self._halted and follow:
            self._open.pop(stage, None)
            self.out.skipped[stage] = STOPPED
            return
        self._settle(stage, follow)

    def _retry(self, stage: str, task: Task, msg: Message) -> bool:
        if task.attempt >= task.max_attempts or self.out.interrupted is not None:
            return False
        delay = backoff_delay(task.backoff, task.attempt)
        # the same object, its attempt counted up: whoever holds the task (a foreach stage
        # deciding item retries) sees which attempt answers; the failed one is over
        again = task
        again.attempt += 1
        again.not_before = time.time() + delay
        again.waited += delay
        self.bus.emit(
            "stage_retried",
            stage,
            task=task.id,
            attempt=again.attempt,
            of=task.max_attempts,
            delay=delay,
            error=str(msg.data[0])[:500],
        )
        self._open[stage] += 1
        self._enqueue(stage, again)
        return True

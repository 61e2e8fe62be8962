"""How long is left: estimates from past durations and live progress, for the views.

A stage's expected duration is its last duration (``run_started``'s ``expected``), or for a
stage that reports items, the time per item × the items left — measured live once enough
is known (the pace between its first and latest progress reports, so a slow start such as
loading a model does not count as item time; or, from a single report, once a tenth of the
items are done), else taken from the last run that ran items of it (``per_item``). A stage
with none of these (never built, nothing reported yet) has no estimate, and neither has
the build while it waits on such a stage: an ETA is shown only when it can be honest. The
overall estimate is the longest path through what remains (stages run side by side, so a
plain sum would overstate it), but never less than the remaining work spread over ``jobs``
workers.

Pure bookkeeping: an :class:`Estimator` is an event subscriber and reads no files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import eventshape
from .events import Event

__all__ = ["Estimator", "StageClock"]

#: how a stage settles having run
_RAN = frozenset({"stage_finished", "stage_failed"})
_SETTLED = ("stage_finished", "stage_failed", "stage_skipped", "stage_restored", "stage_cancelled")
#: the events whose data the estimate reads, checked for their shape first
_SHAPED = frozenset({"run_started", "stage_started", "progress"})


@dataclass
class StageClock:
    """A running stage: when it started and what it reported so far."""

    since: float
    done: int | None = None
    total: int | None = None
    unit: str | None = None
    items: int | None = None  # items to run, announced when a foreach stage starts
    first: tuple[float, int] | None = None  # (time, done) of its first progress report


class Estimator:
    """Follows a build's events and answers "how long for this stage, and for the rest?"."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.order: list[str] = []
        self.deps: dict[str, list[str]] = {}
        self.expected: dict[str, float] = {}
        self.per_item: dict[str, float] = {}
        self.jobs: int | None = None
        self.started: float | None = None
        self.running: dict[str, StageClock] = {}
        self.settled: dict[str, str] = {}  # stage -> event kind that settled it

    # feeding -------------------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        d, s = event.data, event.stage
        if event.kind in _SHAPED:  # a logged run (``status``, the pages) may be of any shape
            d = eventshape.data(d)
        if event.kind == "run_started":
            self.order = list(d.get("stages", []))
            self.deps = {k: list(v) for k, v in (d.get("deps") or {}).items()}
            known = (d.get("expected") or {}).items()  # None: never built, no estimate
            self.expected = {k: float(v) for k, v in known if v is not None}
            self.per_item = {k: float(v) for k, v in (d.get("per_item") or {}).items()}
            self.jobs = d.get("jobs")
            self.started = event.time
            self.running.clear()
            self.settled.clear()
        elif s is None:
            return
        elif event.kind == "stage_started":
            items = d.get("items")  # its item counts (a dict) when it starts
            self.running[s] = StageClock(
                event.time, items=items.get("run") if isinstance(items, dict) else None
            )
        elif event.kind == "progress" and s in self.running:
            clock = self.running[s]
            clock.done, clock.total, clock.unit = d.get("done"), d.get("total"), d.get("unit")
            if clock.first is None and isinstance(clock.done, int):
                clock.first = (event.time, clock.done)
        elif event.kind in _SETTLED:
            self.running.pop(s, None)
            self.settled[s] = event.kind

    # answers -------------------------------------------------------------------------
    @property
    def total(self) -> int:
        return len(self.order)

    @property
    def done(self) -> int:
        return len(self.settled)

    def elapsed(self, now: float | None = None) -> float:
        if self.started is None:
            return 0.0
        return max(0.0, (self.clock() if now is None else now) - self.started)

    def stage_left(self, stage: str, now: float | None = None) -> float | None:
        """Seconds the stage still needs (0 once settled; its full expected time if pending),
        or None when nothing tells: never built, and no progress to measure yet."""
        if stage in self.settled:
            return 0.0
        clock = self.running.get(stage)
        expected = self.expected.get(stage)
        if clock is None:
            # not decided yet: it takes its last run time only if something upstream of it
            # runs (so its inputs change); else it may as well be restored in no time (a
            # full restore) as run for its own reasons: nothing tells until it is decided
            return expected if self._likely_runs(stage) else None
        now = self.clock() if now is None else now
        elapsed = max(0.0, now - clock.since)
        per_item = self.per_item.get(stage)
        if clock.total:
            done = clock.done or 0
            left = clock.total - done
            pace = _pace(clock, now, elapsed)
            if pace is not None:
                return pace * left
            if per_item is not None:
                return max(0.0, per_item * clock.total - elapsed)
        elif clock.items is not None and per_item is not None:
            return max(0.0, per_item * clock.items - elapsed)
        return None if expected is None else max(0.0, expected - elapsed)

    def _likely_runs(self, stage: str) -> bool:
        """Whether a stage not decided yet will most likely run: a first stage (decided as
        the build starts), or one with an upstream stage that ran, runs now, or will likely
        run itself."""
        deps = self.deps.get(stage) or []
        if not deps:
            return True
        for dep in deps:
            how = self.settled.get(dep)
            if how is not None:
                if how in _RAN:
                    return True
            elif dep in self.running or self._likely_runs(dep):
                return True
        return False

    def stage_eta(self, stage: str, now: float | None = None) -> float | None:
        """A running stage's seconds left, or None when there is no honest estimate (never
        built and too little progress to measure, or taking longer than it did last time
        with no progress reported)."""
        left = self.stage_left(stage, now)
        clock = self.running.get(stage)
        if left is None or (left <= 0 and clock is not None and not clock.total):
            return None
        return left

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds until the build is done: the critical path of what is left; None while a
        stage left has no estimate."""
        now = self.clock() if now is None else now
        finish: dict[str, float] = {}
        work = 0.0
        for stage in self.order:  # topological
            if stage in self.settled:
                continue
            own = self.stage_left(stage, now)
            if own is None:
                return None
            work += own
            before = [finish[d] for d in self.deps.get(stage, ()) if d in finish]
            finish[stage] = own + (max(before) if before else 0.0)
        path = max(finish.values(), default=0.0)
        if self.jobs:
            return max(path, work / self.jobs)
        return path

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Everything a view draws, at one instant."""
        now = self.clock() if now is None else now
        return {
            "done": self.done,
            "total": self.total,
            "elapsed": self.elapsed(now),
            "eta": self.remaining(now),
            "running": {s: self.stage_eta(s, now) for s in self.running},
        }


#: the share of its items a stage must have done before one progress report (measured
#: from the stage's start, slow start included) sets its pace
ONE_REPORT_SHARE = 0.1


def _pace(clock: StageClock, now: float, elapsed: float) -> float | None:
    """Seconds per unit of a running stage, measured live, or None while too little is
    known: from the first report to now over the units done since (a second report is
    needed), else from the stage's start once a tenth of the units are done."""
    done, total = clock.done or 0, clock.total or 0
    if clock.first is not None:
        t0, d0 = clock.first
        if done > d0 and now > t0:
            return (now - t0) / (done - d0)
    if done > 0 and done >= ONE_REPORT_SHARE * total:
        return elapsed / done
    return None

"""The scheduler through its public seams: a fake :class:`StageHandler` and the inline
executor, no build. What it orders (longest critical path first), how much runs at once
(``jobs`` and the resource budget), what a failure skips, and a stage whose ``complete``
finds more work."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pipemake import Context, Output, Param, Rule, RuleError, register_rule
from pipemake.dag import Graph
from pipemake.events import Bus, Event
from pipemake.executors import get_executor
from pipemake.executors.base import Message, Task
from pipemake.resources import Budget
from pipemake.scheduler import Outcome, Scheduler, StageFailure

#: the stages whose rule ran, in the order they ran (the inline executor runs them here)
RAN: list[str] = []


class _Note(Rule):
    """Writes its stage's name into its output; fails when told to."""

    name = "seam_note"
    outputs: ClassVar[Mapping[str, Output]] = {"o": Output(kind="file")}
    params: ClassVar[Mapping[str, Param]] = {"fail": Param(default=False)}

    def run(self, ctx: Context) -> Mapping[str, Any] | None:
        RAN.append(ctx.stage)
        if ctx.params["fail"]:
            raise RuleError(f"{ctx.stage} was told to fail")
        ctx.outputs["o"].write_text(ctx.stage)
        return {"stage": ctx.stage}


register_rule("seam_note", _Note)


class FakeHandler:
    """A StageHandler that turns each stage into one ``seam_note`` task and records what the
    scheduler asked of it. ``fail``: stages whose task fails; ``more[stage]``: how many extra
    tasks its ``complete`` hands back, one at a time, before it commits; ``resources[stage]``:
    what its task asks for."""

    def __init__(
        self,
        root: Path,
        fail: Collection[str] = (),
        more: Mapping[str, int] | None = None,
        resources: Mapping[str, dict[str, float]] | None = None,
    ):
        self.root = root
        self.fail = set(fail)
        self.more = dict(more or {})
        self.resources = dict(resources or {})
        self.calls: list[tuple[str, str]] = []
        self.errors: dict[str, str] = {}
        self.running = 0
        self.peak = 0
        self.idled = 0
        self._n = 0

    def _task(self, stage: str, resources: dict[str, float] | None = None) -> Task:
        self._n += 1
        return Task(
            id=f"{stage}-{self._n}", stage=stage, rule="seam_note", root=str(self.root),
            store=str(self.root / "store"), inputs={}, outputs={"o": f"out/{stage}-{self._n}"},
            output_kinds={"o": "file"}, params={"fail": stage in self.fail},
            resources=dict(resources or {}),
        )  # fmt: skip

    def begin(self, stage: str) -> list[Task]:
        self.calls.append(("begin", stage))
        return [self._task(stage, self.resources.get(stage))]

    def task_started(self, stage: str, task: Task) -> None:
        self.calls.append(("started", task.id))
        self.running += 1
        self.peak = max(self.peak, self.running)

    def on_message(self, stage: str, message: Message) -> list[Task]:
        if message.kind == "result":
            self.calls.append(("result", message.task))
            self.running -= 1
        elif message.kind == "error":
            self.calls.append(("error", message.task))
            self.errors[stage] = str(message.data[0])
            self.running -= 1
        return []

    def complete(self, stage: str) -> list[Task] | None:
        self.calls.append(("complete", stage))
        if stage in self.errors:
            raise StageFailure(self.errors[stage])
        if self.more.get(stage, 0) > 0:
            self.more[stage] -= 1
            return [self._task(stage)]
        return None

    def idle(self) -> None:
        self.idled += 1


def _schedule(
    handler: FakeHandler,
    deps: dict[str, list[str]],
    events: list[Event] | None = None,
    **kwargs: Any,
) -> Outcome:
    RAN.clear()
    bus = Bus()
    if events is not None:
        bus.subscribe(events.append)
    graph = Graph(deps)
    with get_executor("inline", 1) as executor:
        return Scheduler(graph, list(deps), handler, executor, bus, **kwargs).run()


def test_the_longest_remaining_path_runs_first(tmp_path: Path) -> None:
    # a stands alone; b -> c -> d is a chain of three: b starts first although a comes
    # first in the file, and c (two left) before a (one left)
    deps = {"a": [], "b": [], "c": ["b"], "d": ["c"]}
    out = _schedule(FakeHandler(tmp_path), deps, jobs=1)
    assert RAN == ["b", "c", "a", "d"]
    assert sorted(out.done) == ["a", "b", "c", "d"] and not out.failed and not out.skipped
    assert (tmp_path / "out/d-4").read_text() == "d"  # the task really ran

    # what past runs expect moves the order: a long a now goes first
    out = _schedule(FakeHandler(tmp_path), deps, jobs=1, expected={"a": 10.0})
    assert RAN == ["a", "b", "c", "d"]


def test_never_more_than_jobs_tasks_at_once(tmp_path: Path) -> None:
    deps = {f"s{i}": [] for i in range(5)}
    handler = FakeHandler(tmp_path)
    out = _schedule(handler, deps, jobs=2)
    assert handler.peak == 2  # -j 2, with five ready
    assert sorted(out.done) == sorted(deps)

    handler = FakeHandler(tmp_path, resources={s: {"tok": 1.0} for s in deps})
    out = _schedule(handler, deps, jobs=5, budget=Budget({"tok": 1.0}, []))
    assert handler.peak == 1  # the resource budget, not -j 5
    assert sorted(out.done) == sorted(deps)


@pytest.mark.parametrize("keep_going", [True, False])
def test_a_failure_skips_its_dependents(tmp_path: Path, keep_going: bool) -> None:
    # a fails; b needs a and c needs b: neither begins. x is on its own.
    deps = {"a": [], "b": ["a"], "c": ["b"], "x": []}
    events: list[Event] = []
    handler = FakeHandler(tmp_path, fail={"a"})
    out = _schedule(handler, deps, events, jobs=1, expected={"a": 5.0}, keep_going=keep_going)
    assert out.failed == {"a": "a was told to fail"}
    assert out.skipped["b"] == "upstream a failed"
    assert out.skipped["c"] == "upstream a failed"
    assert ("begin", "b") not in handler.calls and ("begin", "c") not in handler.calls
    assert "b" not in RAN and "c" not in RAN
    skipped = {e.stage for e in events if e.kind == "stage_skipped"}
    assert skipped == {"b", "c"}
    assert [e.stage for e in events if e.kind == "stage_failed"] == ["a"]
    if keep_going:
        assert out.done == ["x"]  # what does not depend on a still runs
    else:
        # a ran first (the longest path) and its failure stops the build: x began with a
        # (both were ready at once) but its task never started
        assert out.done == [] and "x" not in RAN
        assert out.skipped["x"] == "not started after a failure"


def test_complete_may_hand_back_more_tasks(tmp_path: Path) -> None:
    # m's complete finds work still to do, twice; n (needing m) begins only once m commits
    deps = {"m": [], "n": ["m"]}
    handler = FakeHandler(tmp_path, more={"m": 2})
    out = _schedule(handler, deps, jobs=1)
    assert out.done == ["m", "n"]
    assert RAN == ["m", "m", "m", "n"]
    steps = [c for c in handler.calls if c[0] in ("begin", "complete")]
    assert steps == [
        ("begin", "m"), ("complete", "m"), ("complete", "m"), ("complete", "m"),
        ("begin", "n"), ("complete", "n"),
    ]  # fmt: skip
    assert [(tmp_path / f"out/m-{i}").read_text() for i in (1, 2, 3)] == ["m", "m", "m"]


def test_a_stage_that_fails_to_begin_is_failed(tmp_path: Path) -> None:
    class Refusing(FakeHandler):
        def begin(self, stage: str) -> list[Task]:
            if stage == "a":
                raise StageFailure("a cannot begin")
            return super().begin(stage)

    out = _schedule(Refusing(tmp_path), {"a": [], "b": ["a"]}, jobs=1)
    assert out.failed == {"a": "a cannot begin"}
    assert out.skipped == {"b": "upstream a failed"}
    assert RAN == []

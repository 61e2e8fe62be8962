"""ETA from history (issue 3): last durations, time per item, and the critical path of
what remains — fed synthetic events with a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from pipemake.eta import Estimator
from pipemake.events import Event

# a(10) → b(20) → d(1);  c(5) on its own
EXPECTED = {"a": 10.0, "b": 20.0, "c": 5.0, "d": 1.0}
DEPS = {"a": [], "b": ["a"], "c": [], "d": ["b"]}


class Feed:
    def __init__(self, **run: Any) -> None:
        self.now = 100.0
        self.eta = Estimator(clock=lambda: self.now)
        data = {"stages": list(EXPECTED), "expected": EXPECTED, "deps": DEPS, **run}
        self("run_started", None, **data)

    def __call__(self, kind: str, stage: str | None = None, **data: Any) -> None:
        self.eta(Event(kind, stage, data, self.now))

    def at(self, t: float) -> Feed:
        self.now = 100.0 + t
        return self


def test_overall_eta_is_the_critical_path_not_the_sum() -> None:
    f = Feed()
    assert f.eta.remaining() == pytest.approx(31.0)  # a → b → d, c runs alongside
    assert sum(EXPECTED.values()) == 36.0


def test_with_one_job_the_work_cannot_overlap() -> None:
    assert Feed(jobs=1).eta.remaining() == pytest.approx(36.0)
    assert Feed(jobs=2).eta.remaining() == pytest.approx(31.0)  # 36 / 2 < the path


def test_a_running_stage_counts_what_is_left_of_its_last_duration() -> None:
    f = Feed()
    f("stage_started", "a")
    f("stage_started", "c")
    f.at(4)
    assert f.eta.stage_left("a") == pytest.approx(6.0)
    assert f.eta.stage_left("c") == pytest.approx(1.0)
    assert f.eta.remaining() == pytest.approx(6 + 20 + 1)


def test_settled_stages_drop_out_and_the_path_shifts() -> None:
    f = Feed()
    f("stage_finished", "a", duration=9.0)
    f("stage_restored", "c", reasons=[])
    assert f.eta.done == 2 and f.eta.total == 4
    assert f.eta.remaining() == pytest.approx(21.0)  # a ran: b and d will most likely run
    f("stage_failed", "b", error="x")
    f("stage_skipped", "d", reason="upstream b failed")
    assert f.eta.remaining() == 0.0
    assert f.eta.done == f.eta.total


def test_no_eta_while_what_is_left_may_as_well_come_from_the_store() -> None:
    """A full restore (outputs deleted): a was restored, so b and d, not decided yet, may be
    restored in no time or run for reasons of their own. Their last run times (21 s) would
    be a made-up figure; the ETA comes back once b is decided and starts."""
    f = Feed()
    f("stage_restored", "a", reasons=["outputs missing"])
    f("stage_restored", "c", reasons=["outputs missing"])
    assert f.eta.remaining() is None
    f("stage_started", "b")
    assert f.eta.remaining() == pytest.approx(21.0)


def test_per_item_time_from_live_progress() -> None:
    f = Feed()
    f("stage_started", "a", items={"total": 20, "run": 20, "cached": 0, "removed": 0})
    f.at(10)("progress", "a", done=5, total=20, unit="items")
    assert f.eta.stage_left("a") == pytest.approx(30.0)  # 2 s per item × 15 left
    assert f.eta.remaining() == pytest.approx(30 + 20 + 1)


def test_per_item_time_from_the_last_run_before_any_item_finished() -> None:
    f = Feed(per_item={"a": 0.5})
    f("stage_started", "a", items={"total": 100, "run": 40, "cached": 60, "removed": 0})
    f.at(5)
    assert f.eta.stage_left("a") == pytest.approx(0.5 * 40 - 5)
    f("progress", "a", done=0, total=40, unit="items")
    assert f.eta.stage_left("a") == pytest.approx(15.0)


def test_a_stage_slower_than_last_time_has_no_eta_of_its_own() -> None:
    f = Feed()
    f("stage_started", "c")
    f.at(7)
    assert f.eta.stage_eta("c") is None
    assert f.eta.stage_left("c") == 0.0
    assert f.eta.remaining() == pytest.approx(31.0)  # a → b → d has not started yet


def test_snapshot_and_elapsed() -> None:
    f = Feed()
    f("stage_started", "a")
    snap = f.at(3).eta.snapshot()
    assert snap["done"] == 0 and snap["total"] == 4
    assert snap["elapsed"] == pytest.approx(3.0)
    assert snap["running"] == {"a": pytest.approx(7.0)}

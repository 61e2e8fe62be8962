"""A stage is "running" only from the moment its first task starts: with ``-j 1`` a stage
waiting for a job is not shown as running, and its wait is not its run time (issue #14)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from conftest import Proj

TWO = r"""
name: q
stages:
  - id: slow
    type: shell
    config:
      cmd: "sleep 1.5; echo s > {outputs.o}"
      outputs: {o: build/slow.txt}
  - id: quick
    type: shell
    config:
      cmd: "echo q > {outputs.o}"
      outputs: {o: build/quick.txt}
"""


def _events(p: Proj) -> list[dict]:
    runs = sorted(f for f in p.path(".pipemake/runs").glob("*.jsonl") if f.name != "index.jsonl")
    return [json.loads(line) for line in runs[-1].read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_a_queued_stage_is_not_running_and_its_wait_is_not_its_duration(
    project: Callable[..., Proj],
) -> None:
    p = project(TWO)
    out = p.sub("build", "-j", "1", "--no-progress").stderr
    events = _events(p)
    started = {e["stage"]: e for e in events if e.get("event") == "stage_started"}
    finished = {e["stage"]: e for e in events if e.get("event") == "stage_finished"}
    assert set(started) == {"slow", "quick"}, events
    first, second = sorted(started.values(), key=lambda e: e["time"])
    # the second stage waited for the one job: its start is after the first's finish
    assert second["time"] >= finished[first["stage"]]["time"] - 0.05
    assert finished["quick"]["duration"] < 1.0, finished["quick"]
    assert finished["slow"]["duration"] >= 1.4
    if second["stage"] == "quick":
        assert second["queued"] >= 1.4
        assert "waiting for a job" in out, out
    status = p.cli("status", "--json").output
    assert '"quick"' in status


@pytest.mark.slow
def test_the_run_start_line_gives_no_eta_before_anything_is_decided(
    project: Callable[..., Proj],
) -> None:
    p = project(TWO)
    p.sub("build", "--no-progress")
    out = p.sub("build", "--no-progress").stderr
    first = out.splitlines()[0]
    assert "building 2 stage(s)" in first and "ETA" not in first, out

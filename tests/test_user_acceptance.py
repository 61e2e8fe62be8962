"""Findings of a run-through as a new user (issues 14 and 17): each figure or word pipemake
shows is what the run's event log says happened."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import Proj

import pipemake
from pipemake.eta import Estimator
from pipemake.events import Event
from pipemake.rule import Context, Input, Item, Output, Rule
from pipemake.serve.data import fold_run
from pipemake.serve.pages import now_fragment

# the Now page's ETA is the build's own ------------------------------------------------------


def _events(t0: float) -> list[dict]:
    """A build of a (10 s) → b (5 s) with -j 1, 8 s into a: 7 s are left, not 15."""
    return [
        {"event": "run_started", "stage": None, "time": t0, "run": "r1", "stages": ["a", "b"],
         "expected": {"a": 10.0, "b": 5.0}, "deps": {"a": [], "b": ["a"]}, "jobs": 1,
         "per_item": {}},
        {"event": "stage_started", "stage": "a", "time": t0, "queued": 0.0, "items": None},
    ]  # fmt: skip


def test_now_page_overall_eta_counts_the_running_stage_elapsed_time_as_the_build_does() -> None:
    t0 = 1_000_000.0
    events = _events(t0)
    est = Estimator(clock=lambda: t0 + 8)
    for ev in events:
        est(Event(ev["event"], ev["stage"], {k: v for k, v in ev.items()
                                              if k not in ("event", "stage", "time")}, ev["time"]))  # fmt: skip
    assert est.remaining(t0 + 8) == pytest.approx(7.0)
    page = now_fragment(fold_run(events), now=t0 + 8)
    assert "0/2 stages, ETA ~7.0s" in page, page
    assert "ETA ~15.0s" not in page


def test_now_page_stage_bar_shows_no_eta_while_a_never_built_stage_reports_too_little() -> None:
    t0 = 1_000_000.0
    events = _events(t0)
    events[0]["expected"] = {"a": None, "b": 5.0}
    events.append({"event": "progress", "stage": "a", "time": t0 + 1, "done": 1, "total": 100})
    page = now_fragment(fold_run(events), now=t0 + 2)
    assert "1/100" in page and "ETA" not in page, page
    events.append({"event": "progress", "stage": "a", "time": t0 + 3, "done": 21, "total": 100})
    page = now_fragment(fold_run(events), now=t0 + 3)
    # pace from the first report on: 2 s for 20 items, 79 left → 7.9 s; then b's 5 s
    assert "21/100, ETA 7.9s" in page and "ETA ~12.9s" in page, page


# `status` after `pipemake commit` -----------------------------------------------------------


def test_status_after_commit_says_the_output_was_accepted_not_that_the_stage_ran(
    chain: Proj,
) -> None:
    chain.cli("build")
    runs = chain.run_counts()
    chain.write("build/lines.txt", "3\n")  # a hand edit, then `make -t`
    assert "accepted build/lines.txt" in chain.cli("commit", "lines").output
    assert chain.run_counts() == runs  # nothing ran
    out = chain.cli("status").output
    line = next(x for x in out.splitlines() if x.startswith("lines:"))
    assert "accepted by `pipemake commit`, not run" in line and "ok," not in line, out
    rows = {r["stage"]: r for r in json.loads(chain.cli("status", "--json").output)["stages"]}
    assert rows["lines"]["last_committed"] is True and rows["upper"]["last_committed"] is False
    chain.edit("data/a.txt", "hello", "hullo")  # a real run afterwards is said as one again
    chain.cli("build")
    line = next(x for x in chain.cli("status").output.splitlines() if x.startswith("lines:"))
    assert "[last: ok, " in line and "commit" not in line, line


# `pipemake report` writes a file others can read ----------------------------------------------


def test_report_file_has_the_mode_of_any_file_the_user_writes(chain: Proj) -> None:
    pytest.importorskip("starlette")
    chain.cli("build")
    old = os.umask(0o022)
    try:
        out = chain.cli("report", "-o", str(chain.path("out/r.html"))).output
    finally:
        os.umask(old)
    assert "wrote" in out
    path = chain.path("out/r.html")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["r.html"]  # no temporary file left


# `pipemake status | head` ---------------------------------------------------------------------


@pytest.mark.parametrize("args", [("status",), ("list", "--runs"), ("log",)])
def test_a_reader_that_stops_early_gets_no_broken_pipe_error(chain: Proj, args: tuple) -> None:
    chain.cli("build")
    proc = subprocess.Popen(
        chain.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.stdout.close()  # as `| head -1` does once it has its line: before pipemake writes
    err = proc.stderr.read()
    assert proc.wait(60) == 141, err
    assert "Broken pipe" not in err and "Traceback" not in err and err == "", err


# what a python stage prints is part of its log -----------------------------------------------

PRINTS = """
name: t
stages:
  - id: p
    type: python
    config:
      function: steps.s:f
      outputs: {o: build/o.txt}
"""
PRINTS_CODE = """
import sys
import warnings


def f(ctx):
    print("hello from print")
    print("to stderr", file=sys.stderr)
    warnings.warn("careful now")
    sys.stdout.write("no newline at the end")
    ctx.outputs["o"].write_text("x")
"""


@pytest.mark.parametrize("executor", ["local", "inline"])
def test_what_a_python_stage_prints_is_in_its_log_and_the_run_log(
    project: Callable[..., Proj], executor: str
) -> None:
    proj = project(PRINTS, {"steps/__init__.py": "", "steps/s.py": PRINTS_CODE})
    done = proj.sub("build", "--executor", executor, "--no-progress")
    said = [
        "hello from print",
        "to stderr",
        "UserWarning: careful now",
        "no newline at the end",
    ]
    shown = [x for x in (done.stderr + done.stdout).splitlines() if "] p| " in x]
    for text in said:
        assert any(text in x for x in shown), done.stderr
        assert text in proj.read(".pipemake/logs/p.log")
    logged = [json.loads(x) for x in proj.sub("log", "--json").stdout.splitlines()]
    texts = [e.get("text", "") for e in logged if e["event"] == "log" and e["stage"] == "p"]
    assert all(any(t in x for x in texts) for t in said), texts
    assert "hello from print\n" not in done.stdout.replace("p| hello from print", "")


# `status --pipeline-id` of a stopped run -------------------------------------------------------


def test_status_of_an_interrupted_run_shows_no_stage_as_running(chain: Proj) -> None:
    chain.cli("build")  # a run to find the runs folder with
    runs = chain.path(".pipemake/runs")
    t = 4e9
    events = [
        {"event": "run_started", "stage": None, "time": t, "run": "29991231-000000-000",
         "stages": ["upper", "lines", "side"], "deps": {"lines": ["upper"]}},
        {"event": "stage_started", "stage": "upper", "time": t + 1},
        {"event": "stage_finished", "stage": "upper", "time": t + 2, "duration": 1.0},
        {"event": "stage_started", "stage": "lines", "time": t + 2},
        {"event": "stopping", "stage": None, "time": t + 3},
        {"event": "run_finished", "stage": None, "time": t + 4, "ran": ["upper"],
         "restored": [], "up_to_date": [], "failed": {}, "duration": 4.0, "interrupted": 2,
         "skipped": {"lines": "interrupted", "side": "interrupted"}},
    ]  # fmt: skip
    (runs / "29991231-000000-000.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    out = chain.cli("status", "--pipeline-id", "29991231").output
    assert "state:    interrupted" in out, out
    assert "lines: interrupted" in out and "side: skipped" in out and "upper: done" in out
    assert "running" not in out and "pending" not in out, out


# the Dataset page before the first build --------------------------------------------------------

DATASET = """
name: t
stages:
  - id: extract
    type: frame_extraction
    config: {input_video: data/v.mp4, output_dir: build/frames}
  - id: cluster
    type: clustering
    config: {input_dir: "{extract.output_dir}", output_dir: build/clusters}
"""


def test_dataset_views_before_a_build_say_not_built_yet_not_zero_frames(
    project: Callable[..., Proj],
) -> None:
    from pipemake.serve.data import Site

    proj = project(DATASET, {"data/v.mp4": b"not a video"})
    site = Site(proj.path("pipemake.yaml"))
    for stage, missing in (("extract", "frames.jsonl"), ("cluster", "clusters.json")):
        notes = site.dataset(stage).notes
        assert notes and notes[0].startswith("not built yet: build/"), notes
        assert missing in notes[0] and "Errno" not in notes[0] and "0 frames" not in notes


# a map-reduce stage says how many items it has, as every foreach stage does ---------------------


class _Sizes(Rule):
    """Map: each file's size; reduce: the sizes in one file."""

    name = "ua_sizes"
    inputs: ClassVar = {"input_dir": Input(kind="dir")}
    outputs: ClassVar = {"output_dir": Output(kind="dir")}
    map_reduce = True

    def map_item(self, ctx: Context, item: Item) -> Any:
        return len(Path(ctx.inputs["input_dir"]).read_bytes())

    def reduce(self, ctx: Context, mapped: Mapping[str, Any]) -> dict[str, Any]:
        text = "".join(f"{k} {v}\n" for k, v in sorted(mapped.items()))
        (ctx.outputs["output_dir"] / "sizes.txt").write_text(text)
        return {}


SIZES = """
name: mr
stages:
  - id: sizes
    type: ua_sizes
    foreach: input_dir
    config: {input_dir: data, output_dir: build/sizes}
"""


def test_a_map_reduce_stage_finish_counts_its_items(project: Callable[..., Proj]) -> None:
    pipemake.register_rule("ua_sizes", _Sizes)
    proj = project(SIZES, {"data/a": "xxx", "data/b": "x"})
    proj.cli("build", "--executor", "inline")
    proj.write("data/c", "xx")
    proj.cli("build", "--executor", "inline")
    finished = [json.loads(x) for x in proj.cli("log", "--json").output.splitlines() if x.strip()]
    finished = [e for e in finished if e["event"] == "stage_finished"]
    assert [e["items"] for e in finished] == [3], finished
    assert "sizes: done in " in proj.cli("log").output
    assert "(3 items)" in proj.cli("log").output

"""Edges a pipeline's paths imply (a stage reading a folder, a glob or a foreach pattern over
it needs every stage whose output lies inside it) order the stages and nothing more: what
the writer puts there is hashed as the reader's input (per item for a foreach), so its
other outputs and values stay out of the reader's key. An edge dropped because it would
close a cycle never excuses a missing input."""

from __future__ import annotations

import shutil
from collections.abc import Callable

from conftest import TRACEBACK, Proj, counted

from pipemake.pipeline import load_pipeline

Make = Callable[..., Proj]

TWO_WRITERS = f"""
name: t
stages:
  - id: sa
    type: shell
    config: {{cmd: "{counted("sa", "cut -c1 {inputs.i} > {outputs.o}")}",
              inputs: {{i: data/a.in}}, outputs: {{o: results/a.txt}}}}
  - id: sb
    type: shell
    config: {{cmd: "cat {{inputs.i}} > {{outputs.o}}", inputs: {{i: data/b.in}},
              outputs: {{o: results/b.txt}}}}
  - id: summary
    type: shell
    foreach: r
    config: {{cmd: "{counted("summary", "cat {inputs.r} > {outputs.o}/{item.name}")}",
              inputs: {{r: "results/*.txt"}}, outputs: {{o: summary}}}}
"""


def test_foreach_over_written_files_reruns_only_the_changed_item(project: Make) -> None:
    proj = project(TWO_WRITERS, {"data/a.in": "a\n", "data/b.in": "b\n"})
    proj.cli("build", "--no-progress")
    assert proj.runs("summary") == 2
    assert load_pipeline(proj.path("pipemake.yaml")).stages["summary"].placed == ["sa", "sb"]
    proj.write("data/a.in", "x\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.runs("summary") == 3, out  # a.txt's item only, not b.txt's
    assert proj.read("summary/a.txt") == "x\n" and proj.read("summary/b.txt") == "b\n"


def test_writer_output_no_item_takes_reruns_no_item(project: Make) -> None:
    proj = project(
        f"""
        name: t
        stages:
          - id: reader
            type: shell
            foreach: {{input: d, pattern: "*.txt"}}
            config: {{cmd: "{counted("reader", "cp {inputs.d} {outputs.o}/{item.name}")}",
                      inputs: {{d: data}}, outputs: {{o: out}}}}
          - id: writer
            type: shell
            config: {{cmd: "cat {{inputs.s}} > {{outputs.o}}", inputs: {{s: seed.txt}},
                      outputs: {{o: data/labels.csv}}}}
        """,
        {"data/a.txt": "a", "data/b.txt": "b", "data/c.txt": "c", "seed.txt": "1"},
    )
    proj.cli("build", "--no-progress")
    assert proj.runs("reader") == 3
    proj.write("seed.txt", "2")
    out = proj.cli("build", "--no-progress").output
    assert "writer: done" in out and proj.read("data/labels.csv") == "2"
    assert proj.runs("reader") == 3, out
    proj.write("data/b.txt", "b2")
    proj.cli("build", "--no-progress")
    assert proj.runs("reader") == 4 and proj.read("out/b.txt") == "b2"


FOLDER_READER = f"""
name: t
stages:
  - id: sa
    type: shell
    config: {{cmd: "cut -c1 {{inputs.i}} > {{outputs.o}}", inputs: {{i: data/a.in}},
              outputs: {{o: results/a.txt}}}}
  - id: total
    type: shell
    config: {{cmd: "{counted("total", "cat {inputs.r}/*.txt > {outputs.o}")}",
              inputs: {{r: results}}, outputs: {{o: total.txt}}}}
"""


def test_folder_reader_follows_writer_cuts_off_and_restores(project: Make) -> None:
    proj = project(FOLDER_READER, {"data/a.in": "a1\n", "results/keep.txt": "k\n"})
    proj.cli("build", "--no-progress")
    assert proj.read("total.txt") == "a\nk\n" and proj.runs("total") == 1
    assert load_pipeline(proj.path("pipemake.yaml")).stages["total"].placed == ["sa"]
    # the writer's file changes: the folder's hash does, so the reader reruns
    proj.write("data/a.in", "b1\n")
    proj.cli("build", "--no-progress")
    assert proj.read("total.txt") == "b\nk\n" and proj.runs("total") == 2
    # the writer reruns and writes the same bytes: the reader is cut off
    proj.write("data/a.in", "b2\n")
    out = proj.cli("build", "--no-progress").output
    assert "sa: done" in out and proj.runs("total") == 2, out
    # back to the first content: both come back from the store, nothing runs
    proj.write("data/a.in", "a1\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.read("total.txt") == "a\nk\n" and proj.runs("total") == 2, out


def test_reference_or_depends_on_keeps_writer_in_the_key(project: Make) -> None:
    """A stage that also names the writer (a reference, ``depends_on``, or an input inside
    its output) keys on it as before: every item reruns when the writer's output does."""
    text = TWO_WRITERS.replace("    foreach: r\n", "    foreach: r\n    depends_on: [sa]\n")
    proj = project(text, {"data/a.in": "a\n", "data/b.in": "b\n"})
    assert load_pipeline(proj.path("pipemake.yaml")).stages["summary"].placed == ["sb"]
    proj.cli("build", "--no-progress")
    proj.write("data/a.in", "x\n")
    proj.cli("build", "--no-progress")
    assert proj.runs("summary") == 4
    proj.write("data/b.in", "y\n")
    proj.cli("build", "--no-progress")
    assert proj.runs("summary") == 5  # sb orders it only: its one item


CYCLE = """
name: t
stages:
  - id: summary
    type: shell
    foreach: r
    config: {cmd: "cat {inputs.r} > {outputs.o}/{item.name}",
             inputs: {r: "results/*.txt"}, outputs: {o: summary}}
  - id: log
    type: shell
    config: {cmd: "ls {inputs.s} > {outputs.o}", inputs: {s: "{summary.o}"},
             outputs: {o: results/log.json}}
"""


def test_dropped_edge_does_not_excuse_a_missing_folder(project: Make) -> None:
    proj = project(CYCLE)
    for command in (["validate"], ["build", "--no-progress"]):
        out = proj.cli(*command, code=2).output
        assert "pipemake.yaml:3: stage 'summary': input 'r': results does not exist" in out
        assert TRACEBACK not in out and "FAILED" not in out
    assert not proj.exists("summary")


def test_dropped_edge_does_not_excuse_a_folder_removed_after_caching(project: Make) -> None:
    """A cached plan checks its source inputs again on load: the same rule holds there."""
    proj = project(CYCLE, {"results/x.txt": "x\n"})
    proj.cli("build", "--no-progress")
    proj.cli("validate")  # writes the plan cache, now that .pipemake is there
    assert proj.exists(".pipemake/plan.json") and proj.read("summary/x.txt") == "x\n"
    shutil.rmtree(proj.path("results"))
    out = proj.cli("validate", code=2).output
    assert "input 'r': results does not exist" in out and TRACEBACK not in out


def test_plan_before_the_writer_runs_does_not_call_its_folder_missing(project: Make) -> None:
    """``status`` on a fresh project: the folder the writers make is not there yet, and
    neither its foreach reader nor a plain reader of it is said to fail for it."""
    text = (
        TWO_WRITERS
        + """
  - id: total
    type: shell
    config: {cmd: "cat {inputs.r}/*.txt > {outputs.o}", inputs: {r: results},
             outputs: {o: total.txt}}
"""
    )
    proj = project(text, {"data/a.in": "a\n", "data/b.in": "b\n"})
    out = proj.cli("status").output
    assert "summary: never built" in out and "total: never built" in out, out
    assert "will fail" not in out and "does not exist" not in out, out
    proj.cli("build", "--no-progress")
    assert proj.read("total.txt") == "a\nb\n" and proj.read("summary/b.txt") == "b\n"

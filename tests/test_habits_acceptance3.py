"""Habits of Make, DVC and Snakemake users, third review: what a tester playing them found
(an output inside another stage's input folder, outputs that are pipemake's own files,
``build -n`` and the resource budget, "restored" said of a stage found up to date, Mermaid
node ids, a failed stage's reason in ``status``, ``list --json``), each driven through the
CLI."""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable

import pytest
from conftest import TRACEBACK, Proj

from pipemake.dag import Graph

# -- an output inside another stage's input folder: an edge, as DVC infers one -------------

READER_WRITER = """
name: t
stages:
  - id: reader
    type: shell
    config:
      cmd: "echo x >> runs/reader.count; ls {inputs.d} > {outputs.o}"
      inputs: {d: data}
      outputs: {o: build/list.txt}
  - id: writer
    type: shell
    config:
      cmd: "echo x >> runs/writer.count; echo gen > {outputs.o}"
      outputs: {o: data/gen.txt}
"""


def test_a_stage_reading_a_folder_runs_after_the_stage_writing_into_it(
    project: Callable[..., Proj],
) -> None:
    proj = project(READER_WRITER, {"data/src.txt": "x\n"})
    plan = proj.cli("validate").output
    assert plan.index("writer") < plan.index("reader"), plan
    proj.cli("build", "--no-progress")
    assert proj.read("build/list.txt").split() == ["gen.txt", "src.txt"]
    # one build settles: nothing left to run
    assert proj.cli("dry-run", "--check").output.count("up to date") == 2
    assert proj.cli("graph").output.splitlines() == ["writer (shell)", "reader (shell)  ← writer"]
    # building only the reader builds what writes into its folder
    proj.edit("pipemake.yaml", "echo gen", "echo gen2")
    out = proj.cli("dry-run", "reader").output
    assert "writer: run" in out and "reader: maybe: upstream writer will run" in out, out


def test_an_input_folder_only_an_upstream_stage_makes_need_not_exist(
    project: Callable[..., Proj],
) -> None:
    proj = project(READER_WRITER)  # no data/ at all: writer makes it
    proj.cli("validate")
    proj.cli("build", "--no-progress")
    assert proj.read("build/list.txt").split() == ["gen.txt"]
    proj.cli("validate")  # with .pipemake/ there, this keeps the checked plan
    shutil.rmtree(proj.root / "data")
    assert proj.exists(".pipemake/plan.json")
    proj.cli("validate")  # the cached plan checks its source inputs again
    assert "1 restored" in proj.cli("build", "--no-progress").output
    assert proj.read("data/gen.txt") == "gen\n"


def test_an_inferred_edge_that_closes_a_cycle_names_both_stages_and_paths(
    project: Callable[..., Proj],
) -> None:
    proj = project(
        READER_WRITER.replace(
            'echo gen > {outputs.o}"',
            'cat {inputs.l} > {outputs.o}"\n      inputs: {l: build/list.txt}',
        ),
        {"data/src.txt": "x\n"},
    )
    for command in (["validate"], ["build", "--no-progress"]):
        out = proj.cli(*command, code=2).output
        assert "the stages form a cycle: reader → writer → reader" in out, out
        assert "reader reads the folder data, which holds writer's output data/gen.txt" in out
        assert "writer reads reader's output build/list.txt" in out
        assert "pipemake.yaml:3: stage 'reader'" in out and TRACEBACK not in out
    assert proj.run_counts() == {}


GLOB_READER = """
name: t
stages:
  - id: count
    type: shell
    foreach: d
    config:
      cmd: "echo x >> runs/count.count; wc -l < {inputs.d} > {outputs.o}/{item.name}"
      inputs: {d: "data/*.csv"}
      outputs: {o: build/n}
  - id: summary
    type: shell
    config: {cmd: "ls {inputs.n} > {outputs.o}", inputs: {n: "{count.o}"}, outputs: {o: OUT}}
  - id: more
    type: shell
    config: {cmd: "echo b > {outputs.o}", outputs: {o: data/more.csv}}
  - id: side
    type: shell
    config: {cmd: "mkdir -p {outputs.o}; echo c > {outputs.o}/c.csv", outputs: {o: data/side}}
"""


def test_a_glob_input_needs_the_stages_whose_outputs_it_may_take_in(
    project: Callable[..., Proj],
) -> None:
    # summary writes data/summary.txt: not a .csv, and as a folder it would close a cycle,
    # so it is taken for the file it names; more's file matches, side's folder may hold some
    proj = project(GLOB_READER.replace("OUT", "data/summary.txt"), {"data/a.csv": "a\n"})
    assert proj.cli("graph").output.splitlines() == [
        "more (shell)", "side (shell)", "count (shell)  ← more, side", "summary (shell)  ← count",
    ]  # fmt: skip
    proj.cli("build", "--no-progress")
    assert proj.read("data/summary.txt").split() == ["a.csv", "c.csv", "more.csv"]
    assert proj.cli("dry-run", "--check").output.count("up to date") == 4


def test_a_glob_input_matching_a_downstream_output_is_a_cycle(
    project: Callable[..., Proj],
) -> None:
    proj = project(GLOB_READER.replace("OUT", "data/summary.csv"), {"data/a.csv": "a\n"})
    out = proj.cli("validate", code=2).output
    assert "the stages form a cycle: count → summary → count" in out, out
    assert "count reads data/*.csv, which summary's output data/summary.csv may add to" in out


PATTERN_READER = """
name: t
stages:
  - id: each
    type: shell
    foreach: {input: d, pattern: "*.png"}
    config: {cmd: "cp {inputs.d} {outputs.o}/{item.name}", inputs: {d: data}, outputs: {o: build/each}}
  - id: notes
    type: shell
    config: {cmd: "ls {inputs.e} > {outputs.o}", inputs: {e: "{each.o}"}, outputs: {o: NOTES}}
  - id: pic
    type: shell
    config: {cmd: "echo p > {outputs.o}", outputs: {o: data/p.PNG}}
"""


def test_a_foreach_pattern_decides_which_outputs_in_its_folder_it_needs(
    project: Callable[..., Proj],
) -> None:
    # notes.txt is no item of *.png (and would close a cycle); p.PNG is one
    proj = project(PATTERN_READER.replace("NOTES", "data/notes.txt"), {"data/a.png": "a"})
    assert proj.cli("graph").output.splitlines() == [
        "pic (shell)", "each (shell)  ← pic", "notes (shell)  ← each",
    ]  # fmt: skip
    proj.cli("build", "--no-progress")
    assert proj.read("data/notes.txt").split() == ["a.png", "p.PNG"]
    assert proj.cli("dry-run", "--check").output.count("up to date") == 3
    proj.pipeline(PATTERN_READER.replace("NOTES", "data/notes.png"))
    out = proj.cli("validate", code=2).output
    assert (
        "each → notes → each (notes refers to each; each reads the folder data, which holds "
        "notes's output data/notes.png)"
    ) in out, out


# -- outputs that are pipemake's own files ------------------------------------------------

ONE_OUTPUT = """
name: t
{top}stages:
  - id: s
    type: shell
    config:
      cmd: "echo 'generated: 1' > {{outputs.o}}"
      outputs:
        o: {out}
"""


@pytest.mark.parametrize(
    ("out", "top", "words"),
    [
        ("pipemake.yaml", "", "is the pipeline file pipemake.yaml"),
        ("./pipemake.yaml", "", "is the pipeline file pipemake.yaml"),
        ("pipemake.lock", "", "is pipemake.lock, the lock file every build rewrites"),
        ("conf/params.yaml", "params: conf/params.yaml\n", "is the params file conf/params.yaml"),
        ("conf", "params: conf/params.yaml\n", "holds the params file conf/params.yaml"),
    ],
)
def test_an_output_that_is_or_holds_pipemake_s_own_file_is_refused(
    project: Callable[..., Proj], out: str, top: str, words: str
) -> None:
    proj = project(ONE_OUTPUT.format(top=top, out=out), {"conf/params.yaml": "a: 1\n"})
    before = proj.read("pipemake.yaml")
    for command in (["validate"], ["build", "--no-progress"], ["dry-run"]):
        result = proj.cli(*command, code=2)
        line = 9 if top else 8
        assert f"pipemake.yaml:{line}: stage 's': output 'o' ({out!r}) {words}" in result.output
        assert TRACEBACK not in result.output
    assert proj.read("pipemake.yaml") == before
    assert proj.read("conf/params.yaml") == "a: 1\n"
    assert not proj.exists("pipemake.lock")


def test_the_pipeline_file_reached_through_a_symlinked_folder_is_refused_too(
    project: Callable[..., Proj],
) -> None:
    proj = project(ONE_OUTPUT.format(top="", out="up/pipemake.yaml"))
    os.symlink(".", proj.root / "up")
    before = proj.read("pipemake.yaml")
    out = proj.cli("build", "--no-progress", code=2).output
    assert "stage 's': output 'o' (up/pipemake.yaml) is the pipeline file" in out, out
    assert proj.read("pipemake.yaml") == before


@pytest.mark.parametrize("name", ["pipemake.yaml", "pipemake.lock", "sub/../pipemake.yaml"])
def test_graph_o_refuses_to_replace_the_pipeline_file_or_the_lock(chain: Proj, name: str) -> None:
    chain.cli("build", "--no-progress")
    (chain.root / "sub").mkdir()
    before = {f: chain.read(f) for f in ("pipemake.yaml", "pipemake.lock")}
    out = chain.cli("graph", "-o", str(chain.root / name), code=2).output
    assert "a picture written there would replace it" in out, out
    assert {f: chain.read(f) for f in before} == before
    chain.cli("graph", "-o", str(chain.root / "dag.txt"))
    assert "report" in chain.read("dag.txt")


def test_report_o_refuses_to_replace_the_pipeline_file_or_the_lock(chain: Proj) -> None:
    chain.cli("build", "--no-progress")
    before = {f: chain.read(f) for f in ("pipemake.yaml", "pipemake.lock")}
    for name in before:
        out = chain.cli("report", "-o", str(chain.root / name), code=2).output
        assert "a report written there would replace it" in out, out
    assert {f: chain.read(f) for f in before} == before


# -- build -n refuses what the build refuses ------------------------------------------------

GPU_STAGE = """
name: t
stages:
  - id: a
    type: shell
    config:
      cmd: "echo a > {outputs.o}"
      outputs: {o: build/a.txt}
  - id: b
    type: shell
    resources: {gpu: 1}
    config:
      cmd: "cat {inputs.i} > {outputs.o}"
      inputs: {i: "{a.o}"}
      outputs: {o: build/b.txt}
"""


def test_build_n_refuses_a_request_over_the_budget_as_build_does(
    project: Callable[..., Proj],
) -> None:
    proj = project(GPU_STAGE)
    said = []
    for args in (["build", "--no-progress"], ["build", "-n"]):
        run = subprocess.run(
            [sys.executable, "-m", "pipemake", *args, "--resources", "gpu=0"],
            cwd=proj.root, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 2, run.stdout + run.stderr
        out = run.stderr  # the file as every other error names it: relative to here
        assert "\n  pipemake.yaml:8: stage 'b': requests gpu=1, more than the build's budget" in out
        said.append(out)
    assert said[0] == said[1]
    assert not proj.exists("build")
    out = proj.cli("build", "-n", "--resources", "gpu=1").output
    assert out.splitlines() == ["a: run: never built", "b: run: never built"]


# -- up to date is not restored -------------------------------------------------------------


def test_a_renamed_stage_found_up_to_date_is_not_said_restored(chain: Proj) -> None:
    chain.cli("build", "--no-progress")
    chain.edit("pipemake.yaml", "id: upper", "id: first")
    chain.edit("pipemake.yaml", "{upper.out}", "{first.out}")
    out = chain.cli("build", "--no-progress").output
    assert "0 ran, 0 restored, 4 up to date" in out, out
    text = chain.cli("status").output
    assert "restored" not in text, text
    assert "first: up to date  [last: up to date, its outputs in place; it ran in" in text
    rows = {r["stage"]: r for r in json.loads(chain.cli("status", "--json").stdout)["stages"]}
    assert rows["first"]["last_restored"] is False and rows["first"]["last_in_place"] is True


def test_a_lost_state_db_found_up_to_date_is_not_said_restored(chain: Proj) -> None:
    chain.cli("build", "--no-progress")
    for f in (chain.root / ".pipemake").glob("state.db*"):
        f.unlink()
    assert "0 restored, 4 up to date" in chain.cli("build", "--no-progress").output
    rows = json.loads(chain.cli("status", "--json").stdout)["stages"]
    assert [r["last_restored"] for r in rows] == [False] * 4
    assert [r["last_in_place"] for r in rows] == [True] * 4
    # an output that really comes back from the store is still said restored
    (chain.root / "build/side.txt").unlink()
    assert "1 restored" in chain.cli("build", "--no-progress").output
    side = chain.cli("status").output.splitlines()[2]
    assert side.startswith("side: up to date  [last: restored from the store"), side


# -- Mermaid node ids ----------------------------------------------------------------------

TWINS = """
name: t
stages:
  - id: pre-process
    type: shell
    config: {cmd: "cp {inputs.i} {outputs.o}", inputs: {i: in.txt}, outputs: {o: build/a.txt}}
  - id: pre_process
    type: shell
    config: {cmd: "cp {inputs.i} {outputs.o}", inputs: {i: in.txt}, outputs: {o: build/b.txt}}
  - id: fin
    type: shell
    config:
      cmd: "cat {inputs.i} > {outputs.o}"
      inputs: {i: "{pre_process.o}"}
      outputs: {o: build/end.txt}
"""


def _mermaid(text: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Node id → stage id, and the edges as (from stage, to stage), of Mermaid source."""
    nodes, edges = {}, []
    for line in text.splitlines():
        line = html.unescape(line.strip())
        if "[" in line and "-->" not in line:
            node, label = line.split("[", 1)
            nodes[node] = label.strip('"').split("<br/>")[0]
        elif "-->" in line:
            a, b = (x.strip() for x in line.split("-->"))
            edges.append((a, b))
    return nodes, [(nodes[a], nodes[b]) for a, b in edges]


def test_stages_whose_ids_differ_by_dash_and_underscore_are_two_mermaid_nodes(
    project: Callable[..., Proj],
) -> None:
    proj = project(TWINS, {"in.txt": "x\n"})
    nodes, edges = _mermaid(proj.cli("graph", "--format", "mermaid").stdout)
    assert sorted(nodes.values()) == ["fin", "pre-process", "pre_process"]
    assert edges == [("pre_process", "fin")]
    page = proj.cli("graph", "--format", "html", "--engine", "builtin").stdout
    source = page.split('<pre class="mermaid-source">', 1)[1].split("</pre>", 1)[0]
    nodes, edges = _mermaid(source)
    assert len(nodes) == 3 and edges == [("pre_process", "fin")]


def test_mermaid_ids_are_distinct_and_do_not_depend_on_the_other_stages() -> None:
    names = ["a-b", "a_b", "a__b", "a_hb", "a_h-b", "ab", "A_b"]
    alone = {n: Graph({n: []}).render("mermaid").splitlines()[1].split("[")[0] for n in names}
    together = Graph({n: [] for n in names}).render("mermaid").splitlines()[1:]
    assert [line.split("[")[0] for line in together] == [alone[n] for n in names]
    assert len(set(alone.values())) == len(names)


# -- status says why a stage failed --------------------------------------------------------

FAILING = """
name: t
stages:
  - id: bad
    type: shell
    config:
      cmd: "{cmd}"
      outputs: {{o: build/o.txt}}
"""


def test_status_of_a_failed_shell_stage_shows_its_error_output(
    project: Callable[..., Proj],
) -> None:
    proj = project(FAILING.format(cmd="echo 'boom: missing thing' >&2; exit 4"))
    proj.cli("build", "--no-progress", code=1)
    lines = proj.cli("status").stdout.splitlines()
    assert lines[0].startswith("bad: failed")
    assert lines[1] == "    command exited with code 4"
    assert "boom: missing thing" in lines[-1], lines


def test_status_keeps_a_long_error_bounded_with_its_last_line(
    project: Callable[..., Proj],
) -> None:
    cmd = "for i in $(seq 1 500); do echo line $i >&2; done; echo the-reason >&2; exit 3"
    proj = project(FAILING.format(cmd=cmd))
    proj.cli("build", "--no-progress", code=1)
    lines = proj.cli("status").stdout.splitlines()
    assert len(lines) < 50, lines
    assert lines[-1].strip() == "the-reason"


# -- list --json, and every --json is JSON ---------------------------------------------------


def test_list_json_prints_the_stages_as_json(chain: Proj) -> None:
    for extra in ([], ["--no-header"]):
        result = chain.cli("list", "--json", *extra)
        rows = json.loads(result.stdout)
        assert [r["stage"] for r in rows] == ["upper", "lines", "side", "report"]
        report = rows[3]
        assert report["rule"] == "shell" and report["needs"] == ["lines", "side"]
        assert report["outputs"] == {"dir": "build/report"}


def test_every_json_option_prints_json(chain: Proj) -> None:
    chain.cli("build", "--no-progress")
    for args in (
        ["list", "--json"], ["list", "--runs", "--json"], ["dry-run", "--json"],
        ["status", "--json"], ["status", "--pipeline-id", "-1", "--json"],
    ):  # fmt: skip
        json.loads(chain.cli(*args).stdout)
    lines = chain.cli("log", "--json").stdout.splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)


# -- smaller ---------------------------------------------------------------------------------


def test_a_force_stage_the_targets_do_not_need_is_said(chain: Proj) -> None:
    for args in (
        ["build", "--no-progress", "lines"],
        ["dry-run", "lines"],
        ["build", "-n", "lines"],
    ):
        out = chain.cli(*args, "--force-stage", "side").output
        assert "--force-stage side: the targets (lines) do not need stage 'side'" in out, out
    assert chain.runs("side") == 0
    out = chain.cli("build", "--no-progress", "report", "--force-stage", "side").output
    assert "do not need" not in out and chain.runs("side") == 1


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("123", "'cmd' must be a string, got a number"),
        ("[]", "'cmd' is an empty list"),
        ("true", "'cmd' must be a string, got true or false"),
        ('""', "'cmd' is empty"),
    ],
)
def test_a_cmd_of_the_wrong_type_says_so(
    project: Callable[..., Proj], value: str, said: str
) -> None:
    proj = project(f"""
    name: t
    stages:
      - id: s
        type: shell
        config:
          cmd: {value}
          outputs: {{o: x.txt}}
    """)
    out = proj.cli("validate", code=2).output
    assert f"pipemake.yaml:6: stage 's': {said}" in out, out
    assert "missing" not in out

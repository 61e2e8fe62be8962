"""Make habits: a target named by the path it outputs, and `build -n` (issue 14)."""

from __future__ import annotations

import json
import os

from conftest import CHAIN_STAGES, TRACEBACK, Proj

from pipemake.errors import UsageError
from pipemake.pipeline import load_pipeline
from pipemake.targets import resolve_target

FOREACH = r"""
name: f
stages:
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "cp {inputs.src} {outputs.o}/{item.name}"
      inputs: {src: data}
      outputs: {o: build/each}
"""


def test_build_by_an_output_path_builds_that_stage(chain: Proj) -> None:
    chain.cli("build", "build/lines.txt")
    assert chain.run_counts() == {"upper": 1, "lines": 1}
    assert not chain.exists("build/side.txt")


def test_a_file_inside_an_output_folder_names_its_stage(chain: Proj) -> None:
    out = chain.cli("dry-run", "build/report/sub/side.txt").stdout
    assert [line.split(":")[0] for line in out.splitlines()] == CHAIN_STAGES


def test_paths_relative_to_the_current_folder_and_absolute(chain: Proj) -> None:
    p = load_pipeline(chain.path("pipemake.yaml"))
    assert resolve_target(p, str(chain.path("build/side.txt"))) == ["side"]
    assert resolve_target(p, "side.txt", cwd=str(chain.path("build"))) == ["side"]
    assert resolve_target(p, "./build//upper.txt") == ["upper"]
    assert resolve_target(p, "lines") == ["lines"]


def test_a_foreach_item_output_names_the_foreach_stage(project) -> None:
    p = project(FOREACH, {"data/a.txt": "a\n", "data/b.txt": "b\n"})
    p.cli("build", "build/each/a.txt")
    assert p.read("build/each/b.txt") == "b\n"
    out = p.cli("status", "build/each/a.txt").stdout
    assert out.startswith("each: up to date")


def test_an_unknown_path_says_no_stage_outputs_it(chain: Proj) -> None:
    r = chain.cli("build", "build/lines.text", code=2)
    assert "unknown target 'build/lines.text'" in r.output
    assert "no stage outputs build/lines.text" in r.output
    assert "build/lines.txt (stage 'lines')" in r.output
    assert TRACEBACK not in r.output
    r = chain.cli("build", "data/a.txt", code=2)
    assert "source input of upper" in r.output
    r = chain.cli("dry-run", "uper", code=2)
    assert "did you mean 'upper'" in r.output
    assert chain.run_counts() == {}
    p = load_pipeline(chain.path("pipemake.yaml"))
    try:
        resolve_target(p, "../elsewhere/x.txt")
    except UsageError as exc:
        assert "no stage outputs" in str(exc)
    else:
        raise AssertionError("a path outside the project named a stage")


def test_clean_by_path_removes_only_that_stage(chain: Proj) -> None:
    chain.cli("build")
    chain.cli("clean", "build/side.txt")
    assert not chain.exists("build/side.txt")
    assert chain.exists("build/upper.txt") and chain.exists("build/report/n.txt")


def test_force_stage_by_path(chain: Proj) -> None:
    chain.cli("build")
    chain.cli("build", "--force-stage", "build/side.txt")
    assert chain.run_counts()["side"] == 2
    r = chain.cli("build", "--force-stage", "nope", code=2)
    assert "--force-stage" in r.output and "nope" in r.output


def test_build_n_is_a_dry_run(chain: Proj) -> None:
    expected = chain.cli("dry-run").stdout
    for flag in ("-n", "--dry-run"):
        got = chain.cli("build", flag)
        assert got.stdout == expected
    assert chain.run_counts() == {}
    assert not chain.exists("build")
    chain.cli("build")
    os.remove(chain.path("build/side.txt"))
    out = chain.cli("build", "-n", "build/side.txt").stdout
    assert out == "side: restore: outputs missing\n"
    assert not chain.exists("build/side.txt")


def test_dry_run_json_with_a_path_target(chain: Proj) -> None:
    rows = json.loads(chain.cli("dry-run", "--json", "build/upper.txt").stdout)
    assert [r["stage"] for r in rows] == ["upper"]


def test_a_folder_holding_outputs_names_every_stage_inside(chain: Proj) -> None:
    chain.cli("build", "build")  # `build` is no stage id: the folder of all four outputs
    assert chain.run_counts() == {"upper": 1, "lines": 1, "side": 1, "report": 1}
    p = load_pipeline(chain.path("pipemake.yaml"))
    assert resolve_target(p, "build/") == ["upper", "lines", "side", "report"]
    assert resolve_target(p, "build/report/sub") == ["report"]

"""Building through the CLI: what runs, what is restored, what is left alone (issue 2,
behaviours 1-5 and 8)."""

from __future__ import annotations

import os
import shutil
import time

from conftest import CHAIN_STAGES, Proj

ALL_ONCE = dict.fromkeys(CHAIN_STAGES, 1)


def _outputs(p: Proj) -> dict[str, str]:
    return {
        rel: p.read(rel)
        for rel in ("build/upper.txt", "build/lines.txt", "build/side.txt",
                    "build/report/n.txt", "build/report/sub/side.txt")
    }  # fmt: skip


# 1 ---------------------------------------------------------------------------------------
def test_build_runs_every_stage_and_summarizes(chain: Proj) -> None:
    r = chain.cli("build")
    assert chain.run_counts() == ALL_ONCE
    assert _outputs(chain) == {
        "build/upper.txt": "HELLO\nWORLD\n",
        "build/lines.txt": "2\n",
        "build/side.txt": "bee\none\n",
        "build/report/n.txt": "2\n",
        "build/report/sub/side.txt": "bee\none\n",
    }
    assert "4 ran" in r.output
    for stage in CHAIN_STAGES:
        assert stage in r.output


def test_build_leaves_no_staging_behind(chain: Proj) -> None:
    chain.cli("build")
    tmp = chain.path(".pipemake/tmp")
    assert not tmp.exists() or list(tmp.iterdir()) == []


# 2 ---------------------------------------------------------------------------------------
def test_second_build_runs_nothing(chain: Proj) -> None:
    chain.cli("build")
    before = _outputs(chain)
    r = chain.cli("build")
    assert chain.run_counts() == ALL_ONCE
    assert _outputs(chain) == before
    assert "0 ran" in r.output and "4 up to date" in r.output


# 3 ---------------------------------------------------------------------------------------
def test_content_change_reruns_the_stage_and_its_dependents_only(chain: Proj) -> None:
    chain.cli("build")
    chain.write("data/b.txt", "wasp\n")
    chain.cli("build")
    assert chain.run_counts() == {"upper": 1, "lines": 1, "side": 2, "report": 2}
    assert chain.read("build/report/sub/side.txt") == "wasp\none\n"


def test_touch_without_change_reruns_nothing(chain: Proj) -> None:
    chain.cli("build")
    future = time.time() + 5
    for rel in ("data/a.txt", "data/b.txt"):
        os.utime(chain.path(rel), (future, future))
    r = chain.cli("build")
    assert chain.run_counts() == ALL_ONCE
    assert "4 up to date" in r.output


def test_rewrite_with_same_bytes_reruns_nothing(chain: Proj) -> None:
    chain.cli("build")
    chain.write("data/a.txt", chain.read("data/a.txt"))
    chain.cli("build")
    assert chain.run_counts() == ALL_ONCE


def test_param_change_reruns_that_stage(chain: Proj) -> None:
    chain.cli("build")
    chain.edit("pipemake.yaml", "SEP: one", "SEP: two")
    chain.cli("build")
    assert chain.run_counts() == {"upper": 1, "lines": 1, "side": 2, "report": 2}
    assert chain.read("build/side.txt") == "bee\ntwo\n"


def test_cmd_change_reruns_that_stage(chain: Proj) -> None:
    chain.cli("build")
    chain.edit("pipemake.yaml", "tr a-z A-Z", "tr a-z a-z")
    chain.cli("build")
    assert chain.runs("upper") == 2
    assert chain.read("build/upper.txt") == "hello\nworld\n"


def test_early_cutoff_when_a_rerun_reproduces_the_same_bytes(chain: Proj) -> None:
    chain.cli("build")
    # upper-casing gives the same bytes: upper reruns, nothing downstream does
    chain.write("data/a.txt", "HELLO\nworld\n")
    chain.cli("build")
    assert chain.run_counts() == {"upper": 2, "lines": 1, "side": 1, "report": 1}
    # new text, same line count: upper and lines rerun, report is spared
    chain.write("data/a.txt", "good\nbye\n")
    chain.cli("build")
    assert chain.run_counts() == {"upper": 3, "lines": 2, "side": 1, "report": 1}
    assert chain.read("build/upper.txt") == "GOOD\nBYE\n"
    # one more line: the change reaches report
    chain.write("data/a.txt", "good\nbye\nnow\n")
    chain.cli("build")
    assert chain.run_counts() == {"upper": 4, "lines": 3, "side": 1, "report": 2}
    assert chain.read("build/report/n.txt") == "3\n"


# 4 ---------------------------------------------------------------------------------------
def test_deleted_outputs_are_restored_without_running(chain: Proj) -> None:
    chain.cli("build")
    before = _outputs(chain)
    os.remove(chain.path("build/upper.txt"))
    os.remove(chain.path("build/report/sub/side.txt"))
    r = chain.cli("build")
    assert chain.run_counts() == ALL_ONCE
    assert _outputs(chain) == before
    assert "2 restored" in r.output


def test_deleted_output_dir_is_restored(chain: Proj) -> None:
    chain.cli("build")
    before = _outputs(chain)
    shutil.rmtree(chain.path("build"))
    chain.cli("build")
    assert chain.run_counts() == ALL_ONCE
    assert _outputs(chain) == before


def test_edited_output_is_restored_without_running(chain: Proj) -> None:
    chain.cli("build")
    chain.write("build/lines.txt", "999\n")
    chain.cli("build")
    assert chain.read("build/lines.txt") == "2\n"
    assert chain.run_counts() == ALL_ONCE


def test_restored_directory_loses_files_the_manifest_does_not_list(chain: Proj) -> None:
    chain.cli("build")
    chain.write("build/report/stray.txt", "not mine\n")
    chain.cli("build")
    assert not chain.exists("build/report/stray.txt")
    assert chain.read("build/report/n.txt") == "2\n"
    assert chain.run_counts() == ALL_ONCE


def test_param_change_and_back_restores_without_running(chain: Proj) -> None:
    chain.cli("build")
    chain.edit("pipemake.yaml", "SEP: one", "SEP: two")
    chain.cli("build")
    assert chain.run_counts() == {"upper": 1, "lines": 1, "side": 2, "report": 2}
    chain.edit("pipemake.yaml", "SEP: two", "SEP: one")
    r = chain.cli("build")
    assert chain.run_counts() == {"upper": 1, "lines": 1, "side": 2, "report": 2}
    assert chain.read("build/side.txt") == "bee\none\n"
    assert chain.read("build/report/sub/side.txt") == "bee\none\n"
    assert "2 restored" in r.output


def test_input_change_and_back_restores_without_running(chain: Proj) -> None:
    chain.cli("build")
    chain.write("data/b.txt", "wasp\n")
    chain.cli("build")
    chain.write("data/b.txt", "bee\n")
    chain.cli("build")
    assert chain.run_counts() == {"upper": 1, "lines": 1, "side": 2, "report": 2}
    assert chain.read("build/report/sub/side.txt") == "bee\none\n"


def test_moved_output_path_restores_instead_of_running(chain: Proj) -> None:
    chain.cli("build")
    chain.edit("pipemake.yaml", "build/report", "build/report2")
    chain.cli("build")
    assert chain.run_counts() == ALL_ONCE
    assert chain.read("build/report2/sub/side.txt") == "bee\none\n"


# 5 ---------------------------------------------------------------------------------------
def test_build_target_builds_only_its_ancestors(chain: Proj) -> None:
    r = chain.cli("build", "lines")
    assert chain.run_counts() == {"upper": 1, "lines": 1}
    assert not chain.exists("build/side.txt") and not chain.exists("build/report")
    assert "side" not in r.output
    chain.cli("build", "report")
    assert chain.run_counts() == ALL_ONCE


def test_build_unknown_target_is_a_usage_error(chain: Proj) -> None:
    r = chain.cli("build", "lnes", code=2)
    assert "lnes" in r.output and "lines" in r.output
    assert chain.run_counts() == {}


def test_force_reruns_every_selected_stage(chain: Proj) -> None:
    chain.cli("build")
    chain.cli("build", "-B", "lines")
    assert chain.run_counts() == {"upper": 2, "lines": 2, "side": 1, "report": 1}
    chain.cli("build", "--force")
    assert chain.run_counts() == {"upper": 3, "lines": 3, "side": 2, "report": 2}


def test_force_stage_reruns_that_stage_and_cutoff_spares_the_rest(chain: Proj) -> None:
    chain.cli("build")
    chain.cli("build", "--force-stage", "upper")
    # same bytes again: downstream stays up to date
    assert chain.run_counts() == {"upper": 2, "lines": 1, "side": 1, "report": 1}
    chain.cli("build", "--force-stage", "side", "--force-stage", "lines")
    assert chain.run_counts() == {"upper": 2, "lines": 2, "side": 2, "report": 1}


def test_force_stage_unknown_is_a_usage_error(chain: Proj) -> None:
    r = chain.cli("build", "--force-stage", "nope", code=2)
    assert "nope" in r.output
    assert chain.run_counts() == {}


def test_parallel_jobs_build_the_same(chain: Proj) -> None:
    chain.cli("build", "-j", "3")
    assert chain.run_counts() == ALL_ONCE
    assert chain.read("build/report/sub/side.txt") == "bee\none\n"


# 8 ---------------------------------------------------------------------------------------
FAILING = """
name: failing
version: 1
stages:
  - id: good
    type: shell
    config:
      cmd: "echo x >> runs/good.count; cp {inputs.src} {outputs.out}"
      inputs: {src: data/a.txt}
      outputs: {out: build/good.txt}
  - id: bad
    type: shell
    config:
      cmd: "echo x >> runs/bad.count; echo 'something went wrong' >&2; sh gate.sh && cp {inputs.src} {outputs.out}"
      inputs: {src: "{good.out}"}
      outputs: {out: build/bad.txt}
  - id: after
    type: shell
    config:
      cmd: "echo x >> runs/after.count; cp {inputs.src} {outputs.out}"
      inputs: {src: "{bad.out}"}
      outputs: {out: build/after.txt}
"""


def test_failed_stage_exits_1_shows_its_output_and_keeps_finished_stages(project) -> None:
    p = project(FAILING, {"data/a.txt": "a\n", "gate.sh": "exit 3\n"})
    r = p.cli("build", code=1)
    assert "something went wrong" in r.output
    assert "bad" in r.output
    assert "Traceback" not in r.output
    assert p.run_counts() == {"good": 1, "bad": 1}
    assert p.read("build/good.txt") == "a\n"
    assert not p.exists("build/bad.txt") and not p.exists("build/after.txt")
    # the finished stage is recorded: it is up to date now
    out = p.cli("dry-run").output
    assert "good: up to date" in out
    assert "bad: run" in out
    # fix it: only the failed stage and its dependents run
    p.write("gate.sh", "exit 0\n")
    p.cli("build")
    assert p.run_counts() == {"good": 1, "bad": 2, "after": 1}
    assert p.read("build/after.txt") == "a\n"


def test_failed_stage_with_keep_going_builds_independent_stages(project) -> None:
    text = (
        FAILING
        + """
  - id: other
    type: shell
    config:
      cmd: "echo x >> runs/other.count; echo o > {outputs.out}"
      outputs: {out: build/other.txt}
"""
    )
    p = project(text, {"data/a.txt": "a\n", "gate.sh": "exit 3\n"})
    p.cli("build", "-k", code=1)
    assert p.runs("other") == 1 and p.runs("after") == 0
    assert p.read("build/other.txt") == "o\n"


def test_missing_declared_output_fails_naming_it(project) -> None:
    p = project("""
        name: t
        version: 1
        stages:
          - id: lazy
            type: shell
            config:
              cmd: "echo hi > {outputs.a}"
              outputs: {a: build/a.txt, b: build/b.txt}
        """)
    r = p.cli("build", code=1)
    assert "build/b.txt" in r.output or "'b'" in r.output
    assert not p.exists("build/a.txt")


def test_failed_stage_leaves_previous_output_in_place(chain: Proj) -> None:
    chain.cli("build")
    chain.edit("pipemake.yaml", "tr a-z A-Z <", "exit 4; tr a-z A-Z <")
    chain.cli("build", code=1)
    assert chain.read("build/upper.txt") == "HELLO\nWORLD\n"
    assert chain.runs("lines") == 1

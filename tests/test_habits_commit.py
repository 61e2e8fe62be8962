"""`pipemake commit`: accept outputs as they are, without running (make -t, dvc commit;
issue 14)."""

from __future__ import annotations

import os

from conftest import TRACEBACK, Proj

FOREACH = r"""
name: f
stages:
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "echo x >> runs/each.count; cp {inputs.src} {outputs.o}/{item.name}"
      inputs: {src: data}
      outputs: {o: build/each}
"""


def test_a_hand_edit_committed_survives_the_next_build(chain: Proj) -> None:
    chain.cli("build")
    chain.write("build/report/n.txt", "edited by hand\n")
    before = chain.cli("dry-run", "report").stdout
    assert "report: restore: output build/report changed" in before
    out = chain.cli("commit", "-n", "report").stdout
    assert "report: would accept build/report as built" in out
    assert chain.read("build/report/n.txt") == "edited by hand\n"
    assert chain.cli("dry-run", "report").stdout == before  # -n changed nothing
    out = chain.cli("commit", "build/report/n.txt").stdout
    assert "report: accepted build/report as built (output build/report changed)" in out
    assert "upper: up to date, nothing to accept" not in out  # only the target is listed
    assert chain.cli("dry-run").stdout.count("up to date") == 4
    result = chain.cli("build")
    assert "0 ran, 0 restored, 4 up to date" in result.output
    assert chain.read("build/report/n.txt") == "edited by hand\n"
    assert chain.run_counts() == {"upper": 1, "lines": 1, "side": 1, "report": 1}
    # removed, it comes back from the store as accepted
    os.remove(chain.path("build/report/n.txt"))
    chain.cli("build")
    assert chain.read("build/report/n.txt") == "edited by hand\n"
    assert chain.run_counts()["report"] == 1


def test_commit_after_a_param_change_takes_the_new_key(chain: Proj) -> None:
    chain.cli("build")
    chain.edit("pipemake.yaml", "SEP: one", "SEP: two")
    chain.write("build/side.txt", "bee\ntwo\n")  # what the new command would write
    out = chain.cli("commit", "side").stdout
    assert "side: accepted build/side.txt" in out and "param env" in out
    out = chain.cli("dry-run").stdout
    assert "side: up to date" in out
    assert "report: run: input build/side.txt changed" in out


def test_an_upstream_edit_reruns_what_reads_it(chain: Proj) -> None:
    chain.cli("build")
    chain.write("build/upper.txt", "ONE\nTWO\nTHREE\n")
    chain.cli("commit", "upper")
    chain.cli("build")
    assert chain.read("build/lines.txt") == "3\n"  # lines reran on the accepted bytes
    assert chain.read("build/upper.txt") == "ONE\nTWO\nTHREE\n"
    assert chain.run_counts()["upper"] == 1


def test_commit_refuses_a_missing_output_and_writes_nothing(chain: Proj) -> None:
    chain.cli("build")
    chain.write("build/upper.txt", "EDITED\n")
    os.remove(chain.path("build/side.txt"))
    r = chain.cli("commit", "upper", "side", code=2)
    assert "nothing was accepted" in r.output
    assert "side: output build/side.txt is missing" in r.output
    assert TRACEBACK not in r.output
    assert "upper: restore: output build/upper.txt changed" in chain.cli("dry-run").stdout


def test_commit_refuses_when_an_upstream_stage_would_run(chain: Proj) -> None:
    chain.cli("build")
    chain.write("data/a.txt", "new\n")
    r = chain.cli("commit", "lines", code=2)
    assert "upstream upper" in r.output and "pipemake commit upper lines" in r.output
    chain.write("build/upper.txt", "NEW\n")
    out = chain.cli("commit", "upper", "lines").stdout
    assert "upper: accepted" in out
    assert "lines: accepted build/lines.txt" in out  # accepted as it is, on the new upper
    chain.cli("build")
    assert chain.run_counts() == {"upper": 1, "lines": 1, "side": 1, "report": 1}


def test_commit_of_a_never_built_stage(chain: Proj) -> None:
    chain.write("build/side.txt", "bee\none\n")
    chain.cli("commit", "side")
    chain.cli("build", "side")
    assert chain.run_counts() == {}


def test_commit_of_a_foreach_stage(project) -> None:
    p = project(FOREACH, {"data/a.txt": "a\n", "data/b.txt": "b\n"})
    p.cli("build")
    p.write("build/each/a.txt", "hand\n")
    p.cli("commit", "build/each/a.txt")
    p.cli("build")
    assert p.read("build/each/a.txt") == "hand\n"
    assert p.runs("each") == 2  # one line per item, from the first build only
    r = p.cli("commit", "nope", code=2)
    assert "unknown target 'nope'" in r.output


def test_an_accepted_item_survives_a_rerun_of_other_items(project) -> None:
    p = project(FOREACH, {"data/a.txt": "a\n", "data/b.txt": "b\n"})
    p.cli("build")
    p.write("build/each/a.txt", "hand\n")
    p.cli("commit", "each")
    p.write("data/b.txt", "bee\n")
    out = p.cli("dry-run").stdout
    assert "1 of 2 item" in out or "1 item" in out, out
    p.cli("build")
    assert p.read("build/each/b.txt") == "bee\n"
    assert p.read("build/each/a.txt") == "hand\n"  # the accepted bytes, not the old ones
    assert p.runs("each") == 3  # b ran again, a did not


def test_commit_refuses_a_symlinked_output(chain: Proj) -> None:
    chain.cli("build")
    os.remove(chain.path("build/side.txt"))
    os.symlink(chain.path("data/b.txt"), chain.path("build/side.txt"))
    r = chain.cli("commit", "side", code=2)
    assert "output build/side.txt is a symlink" in r.output
    assert chain.read("data/b.txt") == "bee\n"


def test_commit_refuses_values_only_a_run_computes(project) -> None:
    p = project(
        r"""
        name: v
        stages:
          - id: count
            type: python
            config:
              function: "habits_commit_steps:count"
              outputs: {o: build/o.txt}
          - id: use
            type: shell
            config:
              cmd: "echo {count.n} > {outputs.o}"
              outputs: {o: build/use.txt}
        """,
        {
            "habits_commit_steps.py": "def count(ctx):\n    ctx.outputs['o'].write_text('x')\n    return {'n': 1}\n"
        },
    )
    p.write("build/o.txt", "by hand\n")
    r = p.cli("commit", "count", code=2)
    assert "computes values that later stages use" in r.output
    p.cli("build")
    p.write("build/o.txt", "by hand\n")
    p.cli("commit", "count")  # built before under this key: its values are known
    p.cli("build")
    assert p.read("build/o.txt") == "by hand\n"
    assert p.read("build/use.txt") == "1\n"

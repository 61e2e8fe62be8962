"""Why a stage reruns after its upstream changed: its outputs, its computed values, or
both, said apart (one digest of both is in the key; the record keeps the two halves)."""

from __future__ import annotations

from collections.abc import Callable

from conftest import Proj

STEP = """
def make(ctx):
    ctx.outputs["o"].write_text(open("text.txt").read())
    return {"n": int(open("n.txt").read())}
"""

PIPE = """
name: r
stages:
  - id: up
    type: python
    config:
      function: steps.s:make
      inputs: {n: n.txt, t: text.txt}
      outputs: {o: build/o.txt}
  - id: down
    type: shell
    config:
      cmd: "cat {inputs.i} > {outputs.o}"
      inputs: {i: "{up.o}"}
      outputs: {o: build/d.txt}
"""


def _proj(project: Callable[..., Proj]) -> Proj:
    p = project(PIPE, {"steps/__init__.py": "", "steps/s.py": STEP, "n.txt": "1\n",
                       "text.txt": "a\n"})  # fmt: skip
    p.cli("build")
    return p


def test_values_changed_but_not_outputs_is_said_so(project: Callable[..., Proj]) -> None:
    p = _proj(project)
    p.write("n.txt", "2\n")
    out = p.cli("build").output
    assert "down: running (upstream up computed values changed (its outputs did not))" in out
    assert "upstream up output changed" not in out, out


def test_outputs_changed_and_both_changed(project: Callable[..., Proj]) -> None:
    p = _proj(project)
    p.write("text.txt", "b\n")
    out = p.cli("build").output
    assert "upstream up output changed)" in out, out
    p.write("text.txt", "c\n")
    p.write("n.txt", "3\n")
    out = p.cli("build").output
    assert "upstream up output and computed values changed" in out, out


def test_since_a_failed_run_the_halves_are_said_too(project: Callable[..., Proj]) -> None:
    p = _proj(project)
    p.write("pipemake.yaml", PIPE.replace("cat {inputs.i} >", "false {inputs.i} >"))
    p.write("n.txt", "2\n")
    p.cli("build", code=1)
    p.write("n.txt", "5\n")
    out = p.cli("dry-run").output
    assert "upstream up will run" in out, out
    p.cli("build", "up")
    out = p.cli("dry-run").output
    assert (
        "down: run: upstream up computed values changed (its outputs did not) since the failed run"
        in out
    ), out

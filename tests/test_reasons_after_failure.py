"""After a failed run, the reason a stage runs again says what happened since that run
(issue #13, finding 15): never "new" for a file that existed then."""

from __future__ import annotations

from collections.abc import Callable

from conftest import Proj

PIPE = """
name: f
stages:
  - id: s
    type: shell
    config:
      cmd: "grep -q ok {inputs.i} && cp {inputs.i} {outputs.o}"
      inputs: {i: data/in.txt}
      outputs: {o: build/out.txt}
"""


def test_the_reasons_after_a_failed_run(project: Callable[..., Proj]) -> None:
    p = project(PIPE, {"data/in.txt": "bad\n"})
    p.cli("build", code=1)
    out = p.cli("dry-run").output
    assert "s: run: the last run failed" in out, out
    p.write("data/in.txt", "still bad\n")
    out = p.cli("dry-run").output
    assert "input data/in.txt changed since the failed run" in out, out
    assert "new" not in out and "never built" not in out, out
    p.write("data/in.txt", "ok\n")
    p.cli("build")
    assert p.read("build/out.txt") == "ok\n"
    assert "up to date" in p.cli("dry-run").output

"""A file or a broken link where an output's folder belongs fails the stage with a clear
message (what is in the way and what to do), when running and when restoring; never a
traceback."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import TRACEBACK, Proj

PIPE = """
name: t
stages:
  - id: s
    type: shell
    config:
      cmd: "echo hi > {outputs.o}"
      outputs: {o: build/x/out.txt}
"""


@pytest.mark.parametrize("built_before", [False, True])
@pytest.mark.parametrize("obstacle", ["file", "broken link"])
def test_something_in_the_way_of_an_output_fails_the_stage_clearly(
    project: Callable[..., Proj], built_before: bool, obstacle: str
) -> None:
    p = project(PIPE)
    if built_before:
        p.cli("build")
        p.path("build/x/out.txt").unlink()
        p.path("build/x").rmdir()
    if obstacle == "file":
        p.write("build/x", "mine\n")
    else:
        p.path("build").mkdir(exist_ok=True)
        p.path("build/x").symlink_to("/nonexistent/pipemake/dir")
    r = p.sub("build", "--no-progress", code=1)
    assert TRACEBACK not in r.stderr, r.stderr
    assert "build/x is in the way" in r.stderr, r.stderr
    if obstacle == "file":
        assert p.read("build/x") == "mine\n"

"""Round 8 of findings: what the store cannot keep inside an output folder is said when the
stage runs, not dropped in silence."""

from __future__ import annotations

from collections.abc import Callable

from conftest import TRACEBACK, Proj

_INSIDE = """
name: inside
stages:
  - id: mk
    type: shell
    config:
      cmd: "mkdir -p {outputs.d}/sub && echo a > {outputs.d}/a && mkfifo {outputs.d}/sub/p"
      outputs: {d: build/d}
  - id: sock
    type: shell
    config:
      cmd: >-
        mkdir -p {outputs.d} && echo a > {outputs.d}/a &&
        python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' {outputs.d}/s
      outputs: {d: build/s}
"""


def test_a_fifo_or_socket_inside_an_output_folder_fails_the_stage_naming_it(
    project: Callable[..., Proj],
) -> None:
    """A FIFO or socket a command leaves inside its output folder: the store cannot bring it
    back, so a restore would differ from the build. The stage fails naming the entry at its
    output path (as for an output that is itself a FIFO), and nothing is left in the
    workspace or in pipemake's staging."""
    p = project(_INSIDE, {"data/a.txt": "a"})
    out = p.cli("build", "-k", "--no-progress", code=1).output
    assert TRACEBACK not in out
    assert "output 'd' (build/d/sub/p) is a FIFO, which pipemake cannot store" in out
    assert "output 'd' (build/s/s) is a socket, which pipemake cannot store" in out
    assert not p.exists("build/d") and not p.exists("build/s")
    tmp = p.path(".pipemake/tmp")
    assert not tmp.exists() or not any(tmp.iterdir())
    assert "mk: run: the last run failed" in p.cli("dry-run").stdout

"""``pipemake clean``: a target's own outputs (issue 14), orphans that no stage reads or
writes now, asking before removing what pipemake did not write (issue 13, finding 7), never
following a link; and a store that an output would wipe refused up front (finding 13)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CHAIN_STAGES, TRACEBACK, Proj

from pipemake.folders import remove_path

ALL = ("build/upper.txt", "build/lines.txt", "build/side.txt", "build/report")


def _orphans(p: Proj) -> list[str]:
    return json.loads(p.cli("status", "--json").stdout)["orphans"]


# clean TARGET ----------------------------------------------------------------------------
def test_clean_a_target_removes_only_its_own_outputs(chain: Proj) -> None:
    chain.cli("build")
    out = chain.cli("clean", "report").stdout
    assert "removed build/report" in out
    assert not chain.exists("build/report")
    for rel in ALL[:3]:
        assert chain.exists(rel), rel


def test_clean_with_deps_removes_the_upstream_outputs_too(chain: Proj) -> None:
    chain.cli("build")
    chain.cli("clean", "lines", "--with-deps")
    assert not chain.exists("build/lines.txt") and not chain.exists("build/upper.txt")
    assert chain.exists("build/side.txt") and chain.exists("build/report/n.txt")


def test_clean_without_a_target_removes_every_output_and_an_unknown_one_is_exit_2(
    chain: Proj,
) -> None:
    chain.cli("build")
    r = chain.cli("clean", "nosuch", code=2)
    assert "nosuch" in r.output and TRACEBACK not in r.output
    assert all(chain.exists(rel) for rel in ALL)
    chain.cli("clean")
    assert not any(chain.exists(rel) for rel in ALL)
    assert chain.read("data/a.txt") == "hello\nworld\n"
    chain.cli("clean", "--orphans", "report", code=2)


# orphans ---------------------------------------------------------------------------------
GEN = """
    name: t
    stages:
      - id: gen
        type: shell
        config:
          cmd: "mkdir -p {outputs.o} && echo g > {outputs.o}/g.txt"
          outputs: {o: OUT}
"""
USE = """
      - id: use
        type: shell
        config:
          cmd: "cat {inputs.d}/* > {outputs.o}"
          inputs: {d: build/gen}
          outputs: {o: build/use.txt}
"""


def test_a_former_output_now_an_input_of_another_stage_is_no_orphan(
    project: Callable[..., Proj],
) -> None:
    p = project(GEN.replace("OUT", "build/gen"))
    p.cli("build")
    # gen moves elsewhere; the old folder, edited by hand, becomes another stage's input
    p.pipeline(GEN.replace("OUT", "build/gen2") + USE)
    p.write("build/gen/mine.txt", "hand-made\n")
    assert _orphans(p) == []
    out = p.cli("clean", "--orphans").stdout
    assert "nothing to remove" in out
    assert p.read("build/gen/g.txt") == "g\n"
    assert p.read("build/gen/mine.txt") == "hand-made\n"
    p.cli("build")
    assert p.read("build/use.txt") == "g\nhand-made\n"


def test_a_former_output_holding_or_inside_a_current_one_is_no_orphan(
    project: Callable[..., Proj],
) -> None:
    p = project(GEN.replace("OUT", "build/big"))
    p.cli("build")
    # a new stage writes inside the old output folder: the folder holds a current output
    p.pipeline(
        GEN.replace("OUT", "build/gen2")
        + """
      - id: inner
        type: shell
        config:
          cmd: "echo i > {outputs.o}"
          outputs: {o: build/big/inner.txt}
"""
    )
    p.cli("build")
    assert _orphans(p) == []
    p.cli("clean", "--orphans")
    assert p.read("build/big/inner.txt") == "i\n"
    assert p.read("build/big/g.txt") == "g\n"


def test_a_former_output_inside_a_current_input_is_no_orphan(
    project: Callable[..., Proj],
) -> None:
    p = project(GEN.replace("OUT", "data/gen"), {"data/a.txt": "a\n"})
    p.cli("build")
    p.pipeline("""
        name: t
        stages:
          - id: cat
            type: shell
            config:
              cmd: "cat {inputs.d}/a.txt > {outputs.o}"
              inputs: {d: data}
              outputs: {o: build/cat.txt}
        """)
    assert _orphans(p) == []
    p.cli("clean", "--orphans")
    assert p.read("data/gen/g.txt") == "g\n"


def _moved_report(chain: Proj) -> None:
    chain.cli("build")
    chain.edit("pipemake.yaml", "build/report", "build/report2")
    chain.cli("build")
    assert _orphans(chain) == ["build/report"]


def test_an_edited_orphan_is_kept_without_a_terminal_and_removed_with_yes(chain: Proj) -> None:
    _moved_report(chain)
    chain.edit("pipemake.yaml", "build/upper.txt", "build/upper2.txt")
    chain.cli("build")
    chain.write("build/report/n.txt", "my own notes\n")
    r = chain.cli("clean", "--orphans", code=1)
    assert "removed build/upper.txt" in r.stdout  # as pipemake wrote it: no question
    assert "kept build/report" in r.output and "--yes" in r.output
    assert chain.read("build/report/n.txt") == "my own notes\n"
    assert _orphans(chain) == ["build/report"]
    r = chain.cli("clean", "--orphans", "--yes")
    assert "removed build/report" in r.stdout
    assert not chain.exists("build/report")
    assert _orphans(chain) == []
    assert chain.read("build/report2/sub/side.txt") == "bee\none\n"


@pytest.mark.parametrize("answer", ["y", "n"])
def test_an_edited_orphan_is_asked_about_on_a_terminal(chain: Proj, answer: str) -> None:
    """``clean --orphans`` on a real terminal (a pseudo-terminal here) asks before it
    removes what someone changed by hand, and does what the answer says."""
    import pty
    import select

    _moved_report(chain)
    chain.write("build/report/extra.txt", "added by hand\n")
    master, tty = pty.openpty()
    proc = subprocess.Popen(chain.argv("clean", "--orphans"), stdin=tty, stdout=tty, stderr=tty)
    os.close(tty)
    said = b""
    try:
        while b"remove it?" not in said:
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, f"no question asked; the terminal shows {said!r}"
            said += os.read(master, 4096)
        os.write(master, (answer + "\n").encode())
        assert proc.wait(60) == 0
    finally:
        proc.kill()
        os.close(master)
    assert b"build/report" in said
    assert chain.exists("build/report") == (answer == "n")


def test_an_orphan_as_pipemake_wrote_it_goes_unasked_and_a_rebuild_is_a_noop(
    chain: Proj,
) -> None:
    _moved_report(chain)
    assert "removed build/report" in chain.cli("clean", "--orphans").stdout
    assert not chain.exists("build/report")
    chain.cli("build")
    assert chain.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)


def test_clean_never_follows_a_symlink(project: Callable[..., Proj], tmp_path: Path) -> None:
    """An orphan replaced by a symlink to a folder outside is not what pipemake wrote: kept
    unasked, and with --yes only the link goes. A current output that is a link: the same."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "g.txt").write_text("g\n")  # even the very bytes pipemake wrote
    (outside / "mine.txt").write_text("mine\n")
    p = project(GEN.replace("OUT", "build/gen"))
    p.cli("build")
    p.pipeline(GEN.replace("OUT", "build/gen2"))
    p.cli("build")
    for rel in ("build/gen", "build/gen2"):
        remove_path(p.path(rel))
        os.symlink(outside, p.path(rel))
    p.cli("clean", "--orphans", code=1)
    assert p.path("build/gen").is_symlink()
    p.cli("clean", "--orphans", "--yes")
    p.cli("clean", code=1)  # a link is not what the store holds: kept, named
    assert p.path("build/gen2").is_symlink()
    p.cli("clean", "--yes")
    assert not os.path.lexists(p.path("build/gen"))
    assert not os.path.lexists(p.path("build/gen2"))
    assert sorted(os.listdir(outside)) == ["g.txt", "mine.txt"]
    assert (outside / "mine.txt").read_text() == "mine\n"


# a store an output would wipe --------------------------------------------------------------
@pytest.mark.parametrize("how", ["option", "env", "inside-store"])
def test_a_store_overlapping_an_output_is_exit_2_before_anything_runs(
    project: Callable[..., Proj], tmp_path: Path, how: str
) -> None:
    p = project(GEN.replace("OUT", "build/gen").replace("mkdir", "echo x >> runs/gen.count; mkdir"))
    if how == "option":
        r = p.cli("build", "--cache-dir", str(p.path("build/gen/cache")), code=2)
    elif how == "env":
        r = p.cli("build", code=2, env={"PIPEMAKE_CACHE_DIR": str(p.path("build"))})
    else:
        r = p.cli("build", "--cache-dir", str(p.path("build/gen/..")), code=2)
    assert "stage 'gen'" in r.output and "build/gen" in r.output and "store" in r.output
    assert TRACEBACK not in r.output
    assert p.runs("gen") == 0
    assert not p.exists("build")
    p.cli("build", "--cache-dir", str(tmp_path / "elsewhere"))
    assert p.runs("gen") == 1


def test_an_output_inside_dot_pipemake_is_exit_2(project: Callable[..., Proj]) -> None:
    p = project(GEN.replace("OUT", ".pipemake/gen"))
    r = p.cli("build", code=2)
    assert "stage 'gen'" in r.output and ".pipemake" in r.output
    assert TRACEBACK not in r.output


def test_the_output_of_a_removed_stage_goes_unasked_when_untouched(chain: Proj) -> None:
    chain.cli("build")
    text = chain.read("pipemake.yaml")
    chain.write("pipemake.yaml", text[: text.index("  - id: report")])
    assert _orphans(chain) == ["build/report"]
    assert "removed build/report" in chain.cli("clean", "--orphans").stdout
    assert not chain.exists("build/report")
    assert chain.read("build/side.txt") == "bee\none\n"

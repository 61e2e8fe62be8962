"""Several pipeline files in one folder (``-f a.yaml``, ``-f b.yaml``), as make's ``-f``
makefiles and DVC's several ``dvc.yaml`` are: independent. Building one never drops the
other's sections of ``pipemake.lock``, and a pipeline's orphans are only what its own
earlier builds placed."""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

from conftest import Proj, counted


def _stage(sid: str, out: str, tr: str = "a-z A-Z") -> str:
    return f"""
  - id: {sid}
    type: shell
    config:
      cmd: "{counted(sid, f"tr {tr} < {{inputs.i}} > {{outputs.o}}")}"
      inputs: {{i: foo}}
      outputs: {{o: {out}}}
"""


def _pipe(name: str, *stages: str) -> str:
    return textwrap.dedent(f"name: {name}\nstages:") + "".join(stages)


def _two(project: Callable[..., Proj], default: bool = False) -> Proj:
    """A folder with a.yaml (stage a1) and b.yaml (stage b1), and no pipemake.yaml unless
    ``default``."""
    p = project(_pipe("pa", _stage("a1", "a1.txt")), {"foo": "foo\n"})
    p.write("a.yaml", p.read("pipemake.yaml"))
    p.write("b.yaml", _pipe("pb", _stage("b1", "b1.txt", "a-z n-za-m")))
    if default:
        p.write("pipemake.yaml", _pipe("pd", _stage("d1", "d1.txt", "a-z b-za")))
    else:
        p.path("pipemake.yaml").unlink()
    return p


def _lock(p: Proj | Path) -> dict[str, object]:
    root = p.root if isinstance(p, Proj) else p
    return json.loads((root / "pipemake.lock").read_text())


def test_building_one_pipeline_file_keeps_the_other_files_lock_sections(
    project: Callable[..., Proj],
) -> None:
    p = _two(project)
    p.cli("-f", "a.yaml", "build")
    p.cli("-f", "b.yaml", "build")
    stages = _lock(p)["stages"]
    assert set(stages) == {"a1", "b1"}, stages  # type: ignore[arg-type]
    assert stages["a1"]["pipeline_file"] == "a.yaml"  # type: ignore[index]
    assert stages["b1"]["pipeline_file"] == "b.yaml"  # type: ignore[index]
    before = p.path("pipemake.lock").read_bytes()
    for f in ("a.yaml", "b.yaml", "a.yaml"):  # builds in turn: no-ops, the lock as it was
        p.cli("-f", f, "build")
    assert p.path("pipemake.lock").read_bytes() == before
    assert p.run_counts() == {"a1": 1, "b1": 1}


def test_a_lock_only_clone_finds_each_pipeline_files_stages(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    p = _two(project)
    p.cli("-f", "a.yaml", "build")
    p.cli("-f", "b.yaml", "build")
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("foo", "a.yaml", "b.yaml", "a1.txt", "b1.txt", "pipemake.lock"):
        shutil.copy(p.path(name), clone / name)
    c = Proj(clone)
    assert "a1: up to date" in c.cli("-f", "a.yaml", "dry-run").output
    assert "b1: up to date" in c.cli("-f", "b.yaml", "dry-run").output
    (clone / "a1.txt").unlink()  # without its output: compared with the lock, not b's
    out = c.cli("-f", "a.yaml", "status").output
    assert "a1: never built; as in pipemake.lock" in out, out


def test_status_and_clean_orphans_leave_the_other_pipeline_files_outputs(
    project: Callable[..., Proj],
) -> None:
    p = _two(project)
    p.cli("-f", "a.yaml", "build")
    p.cli("-f", "b.yaml", "build")
    assert json.loads(p.cli("-f", "a.yaml", "status", "--json").output)["orphans"] == []
    assert json.loads(p.cli("-f", "b.yaml", "status", "--json").output)["orphans"] == []
    out = p.cli("-f", "a.yaml", "clean", "--orphans", "--yes").output
    assert p.exists("b1.txt") and p.exists("a1.txt"), out
    # each file's own orphans are its own: a stage dropped from b is b's orphan only
    p.write("b.yaml", _pipe("pb", _stage("b1", "b1.txt", "a-z n-za-m")))
    p.write("a.yaml", _pipe("pa", _stage("a2", "a2.txt")))
    p.cli("-f", "a.yaml", "build")
    assert json.loads(p.cli("-f", "a.yaml", "status", "--json").output)["orphans"] == ["a1.txt"]
    assert json.loads(p.cli("-f", "b.yaml", "status", "--json").output)["orphans"] == []
    p.cli("-f", "a.yaml", "clean", "--orphans", "--yes")
    assert not p.exists("a1.txt") and p.exists("b1.txt") and p.exists("a2.txt")


def test_a_gone_pipeline_files_sections_and_outputs_are_no_longer_kept(
    project: Callable[..., Proj],
) -> None:
    p = _two(project)
    p.cli("-f", "a.yaml", "build")
    p.cli("-f", "b.yaml", "build")
    p.path("b.yaml").unlink()  # as cache gc stops keeping what a gone pipeline file needed
    p.cli("-f", "a.yaml", "build")
    assert set(_lock(p)["stages"]) == {"a1"}  # type: ignore[arg-type]
    assert json.loads(p.cli("-f", "a.yaml", "status", "--json").output)["orphans"] == ["b1.txt"]


def test_pipemake_yaml_beside_another_file_keeps_its_lock_as_it_was(
    project: Callable[..., Proj],
) -> None:
    p = _two(project, default=True)
    p.cli("build")
    alone = p.path("pipemake.lock").read_bytes()
    assert "pipeline_file" not in alone.decode()  # one pipeline file: the lock as always
    p.cli("-f", "a.yaml", "build")
    lock = _lock(p)
    assert set(lock["stages"]) == {"d1", "a1"} and lock["pipeline"] == "pd"  # type: ignore[arg-type]
    p.cli("build")
    assert _lock(p) == lock
    assert json.loads(p.cli("status", "--json").output)["orphans"] == []
    assert json.loads(p.cli("-f", "a.yaml", "status", "--json").output)["orphans"] == []

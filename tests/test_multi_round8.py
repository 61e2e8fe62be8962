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

import pytest
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


def _same_id(project: Callable[..., Proj], default: bool = False) -> Proj:
    """a.yaml and b.yaml (or pipemake.yaml, ``default``), each with a stage ``prep``:
    a's writes out_a.txt, b's out_b.txt."""
    p = project(_pipe("pa", _stage("prep", "out_a.txt")), {"foo": "foo\n"})
    p.write("a.yaml", p.read("pipemake.yaml"))
    p.write("pipemake.yaml" if default else "b.yaml",
            _pipe("pb", _stage("prep", "out_b.txt", "a-z n-za-m")))  # fmt: skip
    return p


def _orphans(p: Proj, *args: str) -> list[str]:
    return json.loads(p.cli(*args, "status", "--json").output)["orphans"]  # type: ignore[no-any-return]


def test_a_stage_id_two_pipeline_files_share_never_makes_the_others_output_an_orphan(
    project: Callable[..., Proj],
) -> None:
    """a.yaml and b.yaml both have a stage ``prep``: ``-f b.yaml clean --orphans`` removed
    a's live out_a.txt (the workspace said which file a stage id was last built from, and
    ``prep`` was last b's), and ``-f a.yaml status`` listed b's out_b.txt as an orphan.
    What each file's builds placed is its own; a real orphan of one is still found."""
    p = _same_id(project)
    p.path("pipemake.yaml").unlink()
    p.cli("-f", "a.yaml", "build")
    p.cli("-f", "b.yaml", "build")
    assert _orphans(p, "-f", "a.yaml") == [] and _orphans(p, "-f", "b.yaml") == []
    out = p.cli("-f", "b.yaml", "clean", "--orphans", "--yes").output
    assert p.exists("out_a.txt") and p.exists("out_b.txt"), out
    out = p.cli("-f", "a.yaml", "clean", "--orphans", "--yes").output
    assert p.exists("out_a.txt") and p.exists("out_b.txt"), out
    # a renames its output: out_a.txt is a's orphan, never b's, and b's output stays
    p.write("a.yaml", _pipe("pa", _stage("prep", "out_a2.txt")))
    p.cli("-f", "a.yaml", "build")
    assert _orphans(p, "-f", "a.yaml") == ["out_a.txt"]
    assert _orphans(p, "-f", "b.yaml") == []
    p.cli("-f", "b.yaml", "clean", "--orphans", "--yes")
    assert p.exists("out_a.txt")
    p.cli("-f", "a.yaml", "clean", "--orphans", "--yes")
    assert not p.exists("out_a.txt") and p.exists("out_b.txt") and p.exists("out_a2.txt")
    p.path("b.yaml").unlink()  # a gone file's outputs are orphans, as with other ids
    assert _orphans(p, "-f", "a.yaml") == ["out_b.txt"]


def test_a_stage_id_two_pipeline_files_share_keeps_both_lock_sections(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """Building b.yaml dropped a.yaml's lock section of its own stage ``prep`` (sections
    were keyed by stage id alone): a lock-only clone then ran a's ``prep`` again. The
    first file's section keeps the id, the other's is under ``b.yaml:prep``; builds in
    turn leave the bytes alone, and a clone finds each file's stage up to date."""
    p = _same_id(project)
    p.path("pipemake.yaml").unlink()
    p.cli("-f", "a.yaml", "build")
    p.cli("-f", "b.yaml", "build")
    stages = _lock(p)["stages"]
    assert set(stages) == {"prep", "b.yaml:prep"}, stages  # type: ignore[arg-type]
    assert stages["prep"]["pipeline_file"] == "a.yaml"  # type: ignore[index]
    assert stages["b.yaml:prep"]["outputs"]["o"]["path"] == "out_b.txt"  # type: ignore[index]
    before = p.path("pipemake.lock").read_bytes()
    for f in ("a.yaml", "b.yaml", "a.yaml"):
        assert "prep: up to date" in p.cli("-f", f, "build").output
    assert p.path("pipemake.lock").read_bytes() == before
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("foo", "a.yaml", "b.yaml", "out_a.txt", "out_b.txt", "pipemake.lock"):
        shutil.copy(p.path(name), clone / name)
    c = Proj(clone)
    assert "prep: up to date" in c.cli("-f", "a.yaml", "dry-run").output
    assert "prep: up to date" in c.cli("-f", "b.yaml", "dry-run").output
    assert "what pipemake.lock records" in c.cli("-f", "b.yaml", "status").output
    for f in ("a.yaml", "b.yaml"):
        assert "prep: up to date" in c.cli("-f", f, "build").output
    assert not c.exists("runs")  # neither ran


def test_a_stage_id_the_default_pipeline_file_shares_keeps_its_plain_key(
    project: Callable[..., Proj],
) -> None:
    """pipemake.yaml and a.yaml both have ``prep``, a built first: the default file's
    section takes the plain id (its lock is as a one-file project's), a's moves to
    ``a.yaml:prep``; both stay up to date."""
    p = _same_id(project, default=True)
    p.cli("-f", "a.yaml", "build")
    p.cli("build")
    stages = _lock(p)["stages"]
    assert set(stages) == {"prep", "a.yaml:prep"}, stages  # type: ignore[arg-type]
    assert "pipeline_file" not in stages["prep"]  # type: ignore[operator]
    assert stages["a.yaml:prep"]["pipeline_file"] == "a.yaml"  # type: ignore[index]
    before = p.path("pipemake.lock").read_bytes()
    assert "prep: up to date" in p.cli("-f", "a.yaml", "build").output
    assert "prep: up to date" in p.cli("build").output
    assert p.path("pipemake.lock").read_bytes() == before
    assert _orphans(p) == [] and _orphans(p, "-f", "a.yaml") == []


@pytest.mark.parametrize("tag", ["x" * 300, "/etc/hostname", "../a.yaml", "sub/../a.yaml", ""])
def test_a_lock_tag_that_cannot_name_a_file_in_the_folder_is_a_gone_file(
    project: Callable[..., Proj], tag: str
) -> None:
    """A lock section whose ``pipeline_file`` is 300 characters long made every build and
    status exit 1 (``[Errno 36] File name too long``). A tag that cannot name a file of the
    folder (too long, absolute, a path, empty) is a gone pipeline file's: the next build
    drops its section, nothing outside the folder is read."""
    p = _two(project)
    p.cli("-f", "a.yaml", "build")
    lock = _lock(p)
    section = dict(lock["stages"]["a1"])  # type: ignore[index]
    section["pipeline_file"] = tag
    lock["stages"]["zz"] = section  # type: ignore[index]
    p.write("pipemake.lock", json.dumps(lock, indent=1))
    out = p.cli("-f", "a.yaml", "status").output
    assert "a1: up to date" in out, out
    p.cli("-f", "b.yaml", "build")
    assert set(_lock(p)["stages"]) == {"a1", "b1"}  # type: ignore[arg-type]

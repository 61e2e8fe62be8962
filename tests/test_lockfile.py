"""``pipemake.lock``: written by ``build`` for CI cache keys, deterministic, rewritten only
when its content changes; ``status`` on a fresh clone compares against it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TRACEBACK, Proj, counted

PIPE = f"""
name: locked
vars: {{case: "A-Z"}}
stages:
  - id: up
    type: shell
    config:
      cmd: "{counted("up", "tr a-z {vars.case} < {inputs.src} > {outputs.o}")}"
      inputs: {{src: data/a.txt}}
      outputs: {{o: build/up.txt}}
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "{counted("each", "cat {inputs.src} {inputs.up} > {outputs.d}/{item.name}")}"
      inputs: {{src: data/many, up: "{{up.o}}"}}
      outputs: {{d: build/each}}
"""
FILES = {"data/a.txt": "lazy\n", **{f"data/many/{i:03}.txt": f"{i}\n" for i in range(40)}}


@pytest.fixture
def proj(project: Callable[..., Proj]) -> Proj:
    return project(PIPE, FILES)


def _lock(p: Proj) -> dict[str, object]:
    return json.loads(p.read("pipemake.lock"))


def test_build_writes_a_small_sorted_lock_of_keys_params_and_hashes(
    proj: Proj, project: Callable[..., Proj]
) -> None:
    proj.cli("build")
    text = proj.read("pipemake.lock")
    lock = json.loads(text)
    assert lock["format"] == 1 and lock["pipeline"] == "locked"
    up, each = lock["stages"]["up"], lock["stages"]["each"]
    record = json.loads(proj.cli("status", "--json").output)
    assert [r["state"] for r in record["stages"]] == ["up to date", "up to date"]
    assert up["params"]["cmd"].endswith("tr a-z A-Z < {inputs.src} > {outputs.o}")
    assert up["inputs"]["src"]["path"] == "data/a.txt" and len(up["inputs"]["src"]["hash"]) == 32
    assert up["outputs"]["o"]["path"] == "build/up.txt"
    assert each["inputs"]["up"]["hash"] == up["outputs"]["o"]["hash"]
    assert each["inputs"]["src"]["items"] == 40 and "items_digest" in each["inputs"]["src"]
    assert len(text.splitlines()) < 80  # no line per item
    assert "017.txt" not in text and str(proj.root) not in text
    assert text == json.dumps(lock, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    # the same project built elsewhere gives the same bytes
    other = project(PIPE, FILES, name="elsewhere")
    other.cli("build")
    assert other.read("pipemake.lock") == text


def test_a_noop_build_leaves_the_lock_and_a_change_rewrites_it(proj: Proj) -> None:
    proj.cli("build")
    before = os.stat(proj.path("pipemake.lock")).st_mtime_ns
    old = _lock(proj)
    proj.sub("build")  # a real process: the no-op snapshot path too
    proj.sub("build")
    proj.cli("build")
    assert os.stat(proj.path("pipemake.lock")).st_mtime_ns == before
    proj.write("data/many/041.txt", "new\n")
    proj.cli("build")
    new = _lock(proj)
    assert new["stages"]["each"]["inputs"]["src"]["items"] == 41
    assert new["stages"]["up"] == old["stages"]["up"]
    proj.edit("pipemake.yaml", '"A-Z"', '"A-Y"')
    proj.cli("build")
    assert _lock(proj)["stages"]["up"]["key"] != old["stages"]["up"]["key"]


def test_a_deleted_lock_is_written_again_by_the_next_build(proj: Proj) -> None:
    proj.sub("build")
    proj.sub("build")  # leaves a no-op snapshot
    proj.path("pipemake.lock").unlink()
    proj.sub("build")
    assert _lock(proj)["stages"]["up"]


def test_a_failed_build_writes_no_lock(proj: Proj) -> None:
    proj.edit("pipemake.yaml", "cat {inputs.src}", "exit 3; cat {inputs.src}")
    proj.cli("build", code=1)
    assert not proj.exists("pipemake.lock")


def test_no_lock_file_option_and_pipeline_key(proj: Proj) -> None:
    proj.cli("build", "--no-lock-file")
    assert not proj.exists("pipemake.lock")
    proj.write("pipemake.yaml", "lock_file: false\n" + proj.read("pipemake.yaml"))
    proj.cli("build", "-B")
    assert not proj.exists("pipemake.lock")
    proj.write(
        "pipemake.yaml", proj.read("pipemake.yaml").replace("lock_file: false", "lock_file: 3")
    )
    r = proj.cli("build", code=2)
    assert "lock_file" in r.output and "pipemake.yaml:1" in r.output and TRACEBACK not in r.output


def test_status_on_a_fresh_clone_compares_with_the_lock(
    proj: Proj, project: Callable[..., Proj]
) -> None:
    proj.cli("build")
    clone = project(PIPE, FILES, name="clone")
    shutil.copy(proj.path("pipemake.lock"), clone.path("pipemake.lock"))
    out = clone.cli("status").output
    assert "up: never built; as in pipemake.lock" in out
    assert "each: never built (upstream up will run); as in pipemake.lock" in out
    assert not clone.exists(".pipemake/store")  # status wrote no store
    clone.write("data/many/005.txt", "five\n")
    out = clone.cli("status").output
    assert "up: never built; as in pipemake.lock" in out
    assert "input data/many changed since pipemake.lock" in out
    clone.write("data/a.txt", "busy\n")
    rows = {r["stage"]: r for r in json.loads(clone.cli("status", "--json").output)["stages"]}
    assert rows["up"]["lock"] == ["input data/a.txt changed since pipemake.lock"]
    assert "upstream up differs from pipemake.lock" in rows["each"]["lock"]
    clone.edit("pipemake.yaml", '"A-Z"', '"A-Y"')
    assert "params differ from pipemake.lock" in clone.cli("status").output
    clone.cli("status", "--check", code=1)  # nothing is built here


def test_a_damaged_lock_is_reported_by_status_and_rewritten(
    proj: Proj, project: Callable[..., Proj]
) -> None:
    clone = project(PIPE, FILES, name="clone")
    clone.write("pipemake.lock", "{not a lock")
    r = clone.cli("status")
    assert "pipemake.lock: pipemake.lock is not JSON" in r.output and TRACEBACK not in r.output
    clone.cli("build")
    assert _lock(clone)["stages"]


def test_lock_file_document_is_stable_across_a_gc_of_the_store(proj: Proj, tmp_path: Path) -> None:
    proj.cli("build", "--cache-dir", str(tmp_path / "cache"))
    text = proj.read("pipemake.lock")
    shutil.rmtree(tmp_path / "cache")
    proj.cli("build", "--cache-dir", str(tmp_path / "cache"))  # up to date: entries missing
    assert proj.read("pipemake.lock") == text


VALUES_PIPE = """
name: valued
stages:
  - id: count
    type: python
    config:
      function: "lockvalues_steps:count"
      inputs: {src: data/a.txt}
      outputs: {out: build/count.txt}
  - id: use
    type: shell
    config:
      cmd: "echo x >> runs/use.count; echo {count.chars} > {outputs.o}"
      inputs: {i: "{count.out}"}
      outputs: {o: build/use.txt}
"""
VALUES_MODULE = """\
from pathlib import Path


def count(ctx):
    (Path(ctx.root) / "runs" / "count.count").open("a").write("x\\n")
    text = Path(ctx.inputs["src"]).read_text()
    Path(ctx.outputs["out"]).write_text(text.upper())
    return {"chars": len(text)}
"""


def _without_store(p: Proj) -> None:
    """The project as a fresh clone with its outputs kept has it: no ``.pipemake``, and no
    note of the runs so far."""
    shutil.rmtree(p.path(".pipemake"))
    shutil.rmtree(p.path("runs"))
    p.path("runs").mkdir()


def test_outputs_that_match_the_lock_are_up_to_date_without_a_store(proj: Proj) -> None:
    """dvc.lock's habit: a checkout with its outputs and the lock, but no store, runs
    nothing; the outputs go into the store, so a deleted one is then restored."""
    proj.cli("build")
    _without_store(proj)
    plan = proj.cli("dry-run").output
    assert "up: up to date: its outputs are what pipemake.lock records for this key" in plan
    assert "each: up to date" in plan
    out = proj.cli("build").output
    assert proj.run_counts() == {}
    assert "up: up to date (its outputs are what pipemake.lock records for this key; " in out
    assert "copied into the store" in out and "0 ran, 0 restored, 2 up to date" in out
    status = proj.cli("status").output
    assert "up: up to date  [last: its outputs were as pipemake.lock records, not run]" in status
    proj.path("build/up.txt").unlink()
    assert "1 restored" in proj.cli("build").output and proj.run_counts() == {}
    assert proj.read("build/up.txt") == "LAZY\n"
    assert "0 ran, 0 restored, 2 up to date" in proj.cli("build").output


def test_an_output_that_differs_from_the_lock_runs_its_stage(proj: Proj) -> None:
    proj.cli("build")
    _without_store(proj)
    proj.write("build/each/005.txt", "edited by hand\n")
    out = proj.cli("build").output
    assert "up: up to date (its outputs are what pipemake.lock records" in out
    assert proj.run_counts() == {"each": 40}  # no item entries to restore from: all run
    assert proj.read("build/each/005.txt") == "5\nLAZY\n"


def test_a_changed_input_forced_stage_or_no_lock_runs(proj: Proj) -> None:
    proj.cli("build")
    _without_store(proj)
    proj.write("data/a.txt", "busy\n")
    proj.cli("build")
    assert proj.run_counts() == {"up": 1, "each": 40}
    proj.cli("build")
    _without_store(proj)
    proj.cli("build", "--force-stage", "up")
    assert proj.run_counts() == {"up": 1}  # `each` sees the same bytes: up to date by lock
    _without_store(proj)
    proj.cli("build", "--no-lock-file")
    assert proj.run_counts() == {}  # the lock is still read: --no-lock-file only writes none
    _without_store(proj)
    proj.write("pipemake.yaml", "lock_file: false\n" + proj.read("pipemake.yaml"))
    proj.cli("build")
    assert proj.run_counts() == {"up": 1, "each": 40}


def test_an_output_symlink_is_never_taken_as_locked(proj: Proj, tmp_path: Path) -> None:
    proj.cli("build")
    _without_store(proj)
    outside = tmp_path / "outside.txt"
    outside.write_text("LAZY\n")
    proj.path("build/up.txt").unlink()
    proj.path("build/up.txt").symlink_to(outside)
    proj.cli("build")
    assert proj.runs("up") == 1 and outside.read_text() == "LAZY\n"
    assert not proj.path("build/up.txt").is_symlink()


def test_computed_values_come_from_the_lock(project: Callable[..., Proj]) -> None:
    p = project(VALUES_PIPE, {"data/a.txt": "hello\n", "lockvalues_steps.py": VALUES_MODULE})
    p.cli("build")
    assert _lock(p)["stages"]["count"]["values"] == {"chars": 6}
    assert p.read("build/use.txt") == "6\n"
    _without_store(p)
    p.cli("build")
    assert p.run_counts() == {}
    # a lock written before values were recorded: a stage whose values are used runs
    lock = _lock(p)
    del lock["stages"]["count"]["values"]
    p.write("pipemake.lock", json.dumps(lock))
    _without_store(p)
    p.cli("build")
    assert p.run_counts() == {"count": 1}
    assert _lock(p)["stages"]["count"]["values"] == {"chars": 6}


def _clone_of(p: Proj, project: Callable[..., Proj], name: str, outputs: bool = True) -> Proj:
    """A clone of ``p``: its files, lock and (``outputs``) outputs, without ``.pipemake``."""
    clone = project(PIPE, FILES, name=name)
    shutil.copy(p.path("pipemake.lock"), clone.path("pipemake.lock"))
    if outputs:
        shutil.copytree(p.path("build"), clone.path("build"))
    return clone


def test_a_target_build_of_a_clone_keeps_the_other_stages_sections(
    proj: Proj, project: Callable[..., Proj]
) -> None:
    """As ``dvc repro STAGE`` keeps the other stages' entries: building one target where the
    others were never built never drops their sections from the committed lock."""
    proj.cli("build")
    text = proj.read("pipemake.lock")
    bare = _clone_of(proj, project, "bare", outputs=False)
    bare.cli("build", "up")
    assert bare.read("pipemake.lock") == text and bare.run_counts() == {"up": 1}
    kept = _clone_of(proj, project, "kept")
    kept.cli("build", "up")
    assert kept.read("pipemake.lock") == text and kept.run_counts() == {}


def test_commit_writes_the_lock_so_a_clone_keeps_the_accepted_output(
    proj: Proj, project: Callable[..., Proj]
) -> None:
    proj.cli("build")
    proj.write("build/up.txt", "FIXED BY HAND\n")
    proj.cli("commit", "up")
    clone = _clone_of(proj, project, "clone")
    out = clone.cli("build").output
    assert clone.read("build/up.txt") == "FIXED BY HAND\n"
    assert clone.runs("up") == 0 and "up: up to date (its outputs are what pipemake.lock" in out


def test_values_edited_in_the_lock_are_never_taken(project: Callable[..., Proj]) -> None:
    """The lock ties its values to its key and outputs: values edited by hand (or a merge
    conflict resolved line by line) are not believed; the stage runs and computes them."""
    p = project(VALUES_PIPE, {"data/a.txt": "hello\n", "lockvalues_steps.py": VALUES_MODULE})
    p.cli("build")
    lock = _lock(p)
    lock["stages"]["count"]["values"] = {"chars": 999}
    p.write("pipemake.lock", json.dumps(lock))
    _without_store(p)
    p.cli("build")
    assert p.run_counts() == {"count": 1} and p.read("build/use.txt") == "6\n"
    assert _lock(p)["stages"]["count"]["values"] == {"chars": 6}


def test_the_locked_outputs_win_over_a_store_that_names_others(
    proj: Proj, project: Callable[..., Proj]
) -> None:
    """A stage that is not deterministic, or a store rewritten: where the workspace holds
    what the committed lock records for the key, it is kept, not replaced by the store's
    copy, and the store's entry now names it (as dvc.lock wins on a checkout)."""
    proj.cli("build")
    committed = proj.read("pipemake.lock")
    proj.write("build/up.txt", "ANOTHER RUN\n")
    proj.cli("commit", "up")  # the store's entry (and the lock) name other bytes now
    proj.write("build/up.txt", "LAZY\n")
    proj.write("pipemake.lock", committed)  # `git checkout` of the committed lock and output
    out = proj.cli("build").output
    assert "up: up to date (its outputs are what pipemake.lock records" in out
    assert proj.read("build/up.txt") == "LAZY\n" and proj.read("pipemake.lock") == committed
    proj.path("build/up.txt").unlink()
    proj.cli("build")
    assert proj.read("build/up.txt") == "LAZY\n"


def test_status_and_dry_run_of_a_clone_say_what_the_lock_settles(
    proj: Proj, project: Callable[..., Proj]
) -> None:
    proj.cli("build")
    clone = _clone_of(proj, project, "clone")
    clone.write("data/many/005.txt", "5\n")  # as it was: nothing changed
    clone.write("build/up.txt", "EDITED\n")
    status = clone.cli("status").output
    assert "up: never built; output build/up.txt is not the one pipemake.lock records" in status
    plan = clone.cli("dry-run").output
    assert "up: run: never built" in plan
    assert "each: maybe: upstream up will run" in plan  # then up to date if up makes LAZY
    clone.cli("build")
    assert clone.run_counts() == {"up": 1}

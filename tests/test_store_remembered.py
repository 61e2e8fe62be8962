"""The workspace remembers its store: the first build told ``--cache-dir`` (or
``PIPEMAKE_CACHE_DIR``) records it in ``.pipemake/store.json``, later commands use it, and a
command told another one says so. A relative ``--cache-dir`` is relative to ``-C DIR``, like
``-f``, not to the current directory."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import TRACEBACK, Proj, counted

from pipemake.cli import cli

PIPE = f"""
name: remembered
stages:
  - id: up
    type: shell
    config:
      cmd: "{counted("up", "tr a-z A-Z < {inputs.src} > {outputs.o}")}"
      inputs: {{src: data/a.txt}}
      outputs: {{o: build/up.txt}}
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "{counted("each", "cp {inputs.src} {outputs.d}/{item.name}")}"
      inputs: {{src: data/many}}
      outputs: {{d: build/each}}
"""
FILES = {"data/a.txt": "lazy\n", "data/many/1.txt": "1\n", "data/many/2.txt": "2\n"}


def _in(cwd: Path, *args: str, code: int = 0, env: dict[str, str] | None = None) -> Result:
    """``pipemake ARGS`` run from ``cwd`` (so a relative -C means what it says)."""
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, list(args), env=env)
    finally:
        os.chdir(old)
    assert result.exit_code == code, result.output
    assert TRACEBACK not in result.output
    return result


def _remembered(p: Proj) -> dict[str, object]:
    return json.loads(p.read(".pipemake/store.json"))


@pytest.fixture
def ws(project: Callable[..., Proj]) -> Proj:
    return project(PIPE, FILES)


def test_a_relative_cache_dir_from_a_parent_folder_is_remembered_and_used(ws: Proj) -> None:
    parent = ws.root.parent
    _in(parent, "-C", "ws", "build", "--cache-dir", "cache")
    assert (ws.root / "cache" / "actions.db").is_file()  # relative to -C ws, not to the cwd
    assert not (parent / "cache").exists()
    assert not ws.exists(".pipemake/store")
    assert _remembered(ws)["cache_dir"] == "cache"  # inside the project: kept relative
    assert _remembered(ws)["remote"] is None
    status = _in(parent, "-C", "ws", "status").output
    assert "not in the cache" not in status and "no cache entry" not in status
    assert status.count("up to date") == 2
    shutil.rmtree(ws.path("build"))
    out = _in(parent, "-C", "ws", "build").output  # restored from the remembered store
    assert ws.run_counts() == {"each": 2, "up": 1}
    assert "2 restored" in out
    assert not ws.exists(".pipemake/store")  # no second store
    assert "store:   " + str(ws.root / "cache") in _in(parent, "-C", "ws", "cache", "info").output


def test_the_environment_variable_is_remembered_too(ws: Proj, tmp_path: Path) -> None:
    ws.cli("build", env={"PIPEMAKE_CACHE_DIR": str(tmp_path / "shared")})
    assert _remembered(ws)["cache_dir"] == str(tmp_path / "shared")  # outside: absolute
    r = ws.cli("dry-run")
    assert r.output.count("up to date") == 2
    shutil.rmtree(ws.path("build"))
    ws.cli("build")
    assert ws.run_counts() == {"each": 2, "up": 1}


def test_another_store_told_warns_once_and_a_build_switches(ws: Proj, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    ws.cli("build", "--cache-dir", str(first))
    r = ws.cli("status", "--cache-dir", str(second))
    assert r.output.count("pipemake: using the store") == 1
    assert str(first) in r.output and str(second) in r.output
    assert "for this command only" in r.output and "a build with --cache-dir" in r.output
    # it did read the other (empty) store: no entry there, the outputs are as locked
    assert "its outputs are what pipemake.lock records" in r.output
    assert _remembered(ws)["cache_dir"] == str(first)  # a read does not switch
    assert not second.exists()
    r = ws.cli("build", "--cache-dir", str(second))
    assert r.output.count("remembering it from now on") == 1
    assert f"--cache-dir {first} to go back" in r.output
    assert _remembered(ws)["cache_dir"] == str(second)
    r = ws.cli("build", "--cache-dir", str(second))
    assert "pipemake: " not in r.output  # the same store: nothing to say
    assert "store OK" in ws.cli("cache", "verify").output


def test_switching_stores_never_commits_entries_lacking_objects(ws: Proj, tmp_path: Path) -> None:
    """The foreach item index records what one store holds: after a switch to a fresh
    store it is not trusted, so the items run (or restore) into the new store."""
    ws.cli("build", "--cache-dir", str(tmp_path / "a"))
    ws.cli("build", "--cache-dir", str(tmp_path / "b"))
    assert "store OK" in ws.cli("cache", "verify").output
    shutil.rmtree(ws.path("build"))
    ws.cli("build")
    assert ws.read("build/each/2.txt") == "2\n"


@pytest.mark.parametrize(
    "args",
    [
        ("dry-run",),
        ("status",),
        ("status", "--checkpoint-dir"),
        ("clean",),
        ("cache", "info"),
        ("cache", "verify"),
        ("cache", "gc"),
    ],
)
def test_every_command_that_reads_the_store_takes_cache_dir(
    ws: Proj, tmp_path: Path, args: tuple[str, ...]
) -> None:
    ws.cli("build", "--cache-dir", "kept")
    assert (ws.root / "kept").is_dir()
    option = args[-1] if args[-1].startswith("--") else "--cache-dir"
    words = args[:-1] if args[-1].startswith("--") else args
    r = ws.cli(*words, option, "kept")
    assert "pipemake: using the store" not in r.output  # the same store, found relative
    if words == ("status",):
        assert r.output.count("up to date") == 2


def test_original_run_checkpoint_dir_is_remembered(ws: Proj) -> None:
    ws.cli("run", "--checkpoint-dir", "ckpt", "--no-progress")
    assert _remembered(ws)["cache_dir"] == "ckpt"
    assert ws.cli("status").output.count("up to date") == 2


def test_a_scratch_store_is_never_remembered(ws: Proj) -> None:
    ws.cli("build", "--cache-dir", "cache")
    r = ws.cli("run", "--no-checkpoint", "--no-progress")
    assert "pipemake: " not in r.output
    assert _remembered(ws)["cache_dir"] == "cache"


def test_a_damaged_file_is_ignored_and_unknown_keys_survive(ws: Proj) -> None:
    ws.write(".pipemake/store.json", "{not json")
    ws.cli("build")  # the default store, no error
    assert ws.exists(".pipemake/store/actions.db")
    ws.write(".pipemake/store.json", json.dumps({"remote": "s3://team/cache", "x": 1}))
    ws.cli("build", "--cache-dir", "cache")
    doc = _remembered(ws)
    assert doc["cache_dir"] == "cache"
    assert doc["remote"] == "s3://team/cache" and doc["x"] == 1


def test_a_bad_pipeline_remembers_nothing(ws: Proj) -> None:
    ws.pipeline("name: x\nstages: []\n")
    ws.cli("build", "--cache-dir", "cache", code=2)
    assert not ws.exists(".pipemake/store.json")


def test_a_relative_environment_variable_is_relative_to_c_too(ws: Proj) -> None:
    parent = ws.root.parent
    _in(parent, "-C", "ws", "build", env={"PIPEMAKE_CACHE_DIR": "envstore"})
    assert (ws.root / "envstore" / "actions.db").is_file()
    assert not (parent / "envstore").exists()
    assert _in(parent, "-C", "ws", "dry-run").output.count("up to date") == 2


def test_a_project_moved_with_the_store_beside_it_finds_it_and_says_so(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """``--cache-dir ../cache``: the project and its store lie under one folder, which is
    moved. The absolute path remembered is gone; the store is found where it lies from the
    project, nothing reruns, and the new place is remembered."""
    p = project(PIPE, FILES, name="ws")
    _in(p.root, "build", "--cache-dir", "../cache")
    assert _remembered(p)["cache_dir_from_root"] == "../cache"
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(p.root, moved / "ws")
    shutil.move(p.root.parent / "cache", moved / "cache")
    out = _in(moved / "ws", "build").output
    assert "is gone; using " + str(moved / "cache") in out
    assert "0 ran" in out and Proj(moved / "ws").run_counts() == {"each": 2, "up": 1}
    assert not (p.root.parent / "cache").exists()  # no new store at the old place
    again = json.loads((moved / "ws" / ".pipemake" / "store.json").read_text())
    assert again["cache_dir"] == str(moved / "cache")
    assert "is gone" not in _in(moved / "ws", "build").output  # said once


def test_a_remembered_store_that_is_gone_is_said_before_everything_runs(ws: Proj) -> None:
    outside = ws.root.parent / "elsewhere"
    _in(ws.root, "build", "--cache-dir", str(outside))
    shutil.rmtree(outside)
    status = _in(ws.root, "status").output
    assert f"{outside}, is missing" in status and "nothing is restored from it" in status
    ws.path("build/up.txt").unlink()
    out = _in(ws.root, "build").output
    assert "a new, empty one is made there: every stage runs, but one whose outputs" in out
    assert ws.run_counts() == {"each": 2, "up": 2}  # `each`: as pipemake.lock records

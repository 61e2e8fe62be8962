"""The original system's command line, as its users typed it: ``run --config F
--max-parallel N [--resume] [--checkpoint-dir D] [--no-checkpoint] [--dry-run]``,
``validate --config F``, ``status --pipeline-id ID``, ``list --checkpoint-dir D``; and its
``pipeline.yaml``, found when there is no ``pipemake.yaml``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CHAIN, CHAIN_FILES, CHAIN_STAGES, TRACEBACK, Proj

from pipemake.cli import cli

OTHER = """
name: other
stages:
  - id: other
    type: shell
    config: {cmd: "echo other > {outputs.o}", outputs: {o: build/other.txt}}
"""


@pytest.fixture
def orig(project: Callable[..., Proj]) -> Proj:
    """The chain pipeline, in the original system's file name ``pipeline.yaml``."""
    p = project(CHAIN, CHAIN_FILES)
    p.path("pipemake.yaml").rename(p.path("pipeline.yaml"))
    return p


def test_run_config_max_parallel_builds_and_a_second_run_runs_nothing(orig: Proj) -> None:
    r = orig.cli("run", "--config", str(orig.path("pipeline.yaml")), "--max-parallel", "2")
    assert orig.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)
    assert orig.read("build/report/n.txt").strip() == "2"
    assert "--resume" not in r.stderr  # said only when given
    r = orig.cli("run", "--config", "pipeline.yaml", "--max-parallel", "4", "--resume")
    assert orig.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)
    assert r.stderr.count("every build resumes") == 1


def test_run_as_a_real_process(orig: Proj) -> None:
    proc = orig.sub("run", "--config", "pipeline.yaml", "--max-parallel", "2", "--resume")
    assert orig.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)
    assert proc.stderr.count("every build resumes") == 1 and TRACEBACK not in proc.stderr


def test_run_checkpoint_dir_is_the_store(orig: Proj, tmp_path: Path) -> None:
    store = tmp_path / "checkpoints"
    orig.cli("run", "--config", "pipeline.yaml", "--checkpoint-dir", str(store))
    assert (store / "actions.db").exists() and not orig.exists(".pipemake/store")
    orig.cli("clean")
    r = orig.cli("run", "--config", "pipeline.yaml", "--checkpoint-dir", str(store))
    assert "restored" in r.output and orig.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)
    r = orig.cli("list", "--checkpoint-dir", str(store))
    assert "upper" in r.stdout


def test_run_checkpoint_dir_holding_the_original_systems_checkpoints(
    orig: Proj, tmp_path: Path
) -> None:
    """The folder the original system kept its JSON checkpoints in, passed on unchanged: the
    store is made beside them, which stay as they were through builds and a repair; any
    other file there makes it a folder of the user's, refused."""
    store = tmp_path / "checkpoints"
    store.mkdir()
    old = {
        f"my_pipeline_{n}.json": json.dumps(
            {
                "pipeline_id": "p1",
                "pipeline_name": "my_pipeline",
                "completed_stages": ["a"],
                "stage_outputs": {"a": {"output_dir": "/data/frames"}},
                "timestamp": 1701619200.0 + n,
            }
        )  # fmt: skip
        for n in range(2)
    }
    for name, text in old.items():
        (store / name).write_text(text)
    orig.cli("run", "--config", "pipeline.yaml", "--checkpoint-dir", str(store))
    assert orig.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)
    r = orig.cli("run", "--config", "pipeline.yaml", "--checkpoint-dir", str(store))
    assert orig.run_counts() == dict.fromkeys(CHAIN_STAGES, 1), r.output
    orig.cli("cache", "verify", "--repair", "--cache-dir", str(store))
    assert {name: (store / name).read_text() for name in old} == old
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.json").write_text('{"pipeline_id": "p1"}')
    (other / "holiday.jpg").write_bytes(b"\xff\xd8")
    r = orig.cli("run", "--config", "pipeline.yaml", "--checkpoint-dir", str(other), code=2)
    assert "is not a pipemake store" in r.output and sorted(os.listdir(other)) == [
        "a.json",
        "holiday.jpg",
    ]


def test_run_no_checkpoint_reuses_nothing_and_keeps_nothing(orig: Proj) -> None:
    orig.cli("run")
    before = sorted(p.name for p in orig.path(".pipemake/store/objects").rglob("*"))
    orig.write("data/b.txt", "new bee\n")
    orig.cli("run", "--no-checkpoint")
    assert orig.run_counts() == dict.fromkeys(CHAIN_STAGES, 2)  # every stage ran again
    assert orig.read("build/side.txt").startswith("new bee")
    after = sorted(p.name for p in orig.path(".pipemake/store/objects").rglob("*"))
    assert after == before  # the store was not written
    assert not list(orig.path(".pipemake").glob("no-checkpoint-*"))  # the scratch is gone
    r = orig.cli("dry-run")
    assert "side: run" in r.output  # nothing of that build was kept


def test_run_dry_run_changes_nothing(orig: Proj) -> None:
    r = orig.cli("run", "--config", "pipeline.yaml", "--dry-run")
    assert "upper: run" in r.stdout and orig.run_counts() == {}
    assert not orig.exists("build")


def test_validate_config(orig: Proj) -> None:
    r = orig.cli("validate", "--config", "pipeline.yaml")
    assert "is valid: 4 stage(s)" in r.stdout
    orig.cli("validate", "--config", "nope.yaml", code=2)


def test_status_pipeline_id_shows_that_run(orig: Proj) -> None:
    orig.cli("run")
    orig.edit("pipeline.yaml", "tr a-z A-Z", "false && tr a-z A-Z")
    orig.cli("run", code=1)
    runs = json.loads(orig.cli("list", "--runs", "--json").stdout)
    assert len(runs) == 2
    first, second = (r["id"] for r in runs)
    r = orig.cli("status", "--pipeline-id", first)
    assert f"run {first}" in r.stdout and "state:    completed" in r.stdout
    assert "4/4 stages (100%)" in r.stdout
    r = orig.cli("status", "--pipeline-id", second, "--json")
    info = json.loads(r.stdout)
    assert info["state"] == "failed" and info["stages"]["upper"] == "failed"
    assert info["stages"]["side"] == "up to date" and info["completed"] < info["total"]
    r = orig.cli("status", "--pipeline-id", "no-such-run", code=2)
    assert "no run matches 'no-such-run'" in r.output and "list --runs" in r.output
    r = orig.cli("status")  # without an id: the stages, as always
    assert "upper: failed" in r.stdout


def test_list_next_to_a_pipeline_yaml_says_which_file(orig: Proj) -> None:
    r = orig.cli("list")
    assert "upper\tshell" in r.stdout
    assert r.stderr.count("pipeline.yaml (there is no pipemake.yaml)") == 1


def test_pipemake_yaml_wins_and_neither_is_a_clear_error(orig: Proj) -> None:
    orig.write("pipemake.yaml", OTHER)
    r = orig.cli("list")
    assert "other" in r.stdout and "upper" not in r.stdout and "using" not in r.stderr
    orig.path("pipemake.yaml").unlink()
    orig.path("pipeline.yaml").unlink()
    r = orig.cli("list", code=2)
    assert "looked for pipemake.yaml and pipeline.yaml" in r.output and TRACEBACK not in r.output


def test_f_with_a_folder_looks_there(orig: Proj) -> None:
    r = orig.cli("-f", str(orig.root), "validate")
    assert "is valid" in r.stdout and "using" in r.stderr and "pipeline.yaml" in r.stderr


@pytest.mark.slow
def test_a_no_op_build_notices_a_new_pipemake_yaml(orig: Proj) -> None:
    """The no-op snapshot of a build that used pipeline.yaml is void once a pipemake.yaml
    appears (which would win)."""
    orig.sub("build")
    past = time.time() - 30  # stats older than a second are trusted: a snapshot is written
    for path in [*orig.root.rglob("*"), orig.root / "build"]:
        if ".pipemake" not in path.parts:
            os.utime(path, (past, past))
    orig.sub("build")
    assert orig.exists(".pipemake/uptodate.json")
    orig.write("pipemake.yaml", OTHER)
    orig.sub("build")
    assert orig.read("build/other.txt") == "other\n"  # built, not replayed


@pytest.mark.parametrize("word", ["run", "rerun", "execute", "resume", "rnu", "rum"])
def test_no_command_about_running_suggests_dry_run(word: str) -> None:
    from click.testing import CliRunner

    r = CliRunner().invoke(cli, [word, "--help"] if word == "run" else [word])
    if word == "run":
        assert r.exit_code == 0 and "--max-parallel" in r.output
        return
    assert r.exit_code == 2 and "dry-run" not in r.output
    assert "Did you mean 'build'?" in r.output or "Did you mean 'run'?" in r.output


def test_build_resume_is_accepted(orig: Proj) -> None:
    r = orig.cli("build", "--resume")
    assert "every build resumes" in r.stderr and orig.runs("upper") == 1


def test_python_m_pipemake_run_help_lists_the_original_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pipemake", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for option in ("--config", "--max-parallel", "--resume", "--checkpoint-dir", "--no-checkpoint"):
        assert option in out

"""`pipemake init`: a starter pipeline that builds at once; never overwrites (issue 14)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pipemake.cli import cli
from pipemake.starter import examples_dir

TRACEBACK = "Traceback (most recent call last)"


def _pm(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == code, result.output
    return result


def test_init_writes_a_starter_that_builds(tmp_path: Path) -> None:
    out = _pm("-C", str(tmp_path), "init").output
    assert "wrote" in out and "pipemake.yaml" in out
    text = (tmp_path / "pipemake.yaml").read_text()
    assert text.startswith("# A starter pipeline")
    assert f'name: "{tmp_path.name}"' in text
    assert (tmp_path / ".gitignore").read_text().splitlines()[-1] == ".pipemake/"
    _pm("-C", str(tmp_path), "build", "--no-progress")
    assert (tmp_path / "build/HELLO.txt").read_text() == "HELLO, WORLD\n"
    assert "up to date" in _pm("-C", str(tmp_path), "dry-run").output
    _pm("-C", str(tmp_path), "build", "--no-progress", "--set", "vars.who=you")
    assert (tmp_path / "build/HELLO.txt").read_text() == "HELLO, YOU\n"


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "pipemake.yaml").write_text("mine\n")
    r = _pm("-C", str(tmp_path), "init", code=2)
    assert "already exists" in r.output and "never overwrites" in r.output
    assert TRACEBACK not in r.output
    assert (tmp_path / "pipemake.yaml").read_text() == "mine\n"
    assert not (tmp_path / ".gitignore").exists()


def test_init_beside_the_original_systems_file_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "pipeline.yaml").write_text("stages: []\n")
    r = _pm("-C", str(tmp_path), "init", code=2)
    assert "pipeline.yaml is there" in r.output and "-f pipemake.yaml" in r.output
    assert not (tmp_path / "pipemake.yaml").exists()
    _pm("-C", str(tmp_path), "-f", "pipemake.yaml", "init")
    assert (tmp_path / "pipemake.yaml").exists()


def test_init_keeps_an_existing_gitignore(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("*.pyc")  # no newline at the end
    _pm("-C", str(tmp_path), "-f", "other.yaml", "init")
    assert (tmp_path / "other.yaml").exists() and not (tmp_path / "pipemake.yaml").exists()
    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert lines[0] == "*.pyc" and lines[-1] == ".pipemake/"
    (tmp_path / "other.yaml").unlink()
    _pm("-C", str(tmp_path), "-f", "other.yaml", "init")
    assert (tmp_path / ".gitignore").read_text().count(".pipemake/") == 1


def test_init_makes_the_folder(tmp_path: Path) -> None:
    _pm("-C", str(tmp_path / "new" / "proj"), "init")
    assert (tmp_path / "new/proj/pipemake.yaml").is_file()


@pytest.mark.skipif(
    not (examples_dir() / "quickstart" / "pipemake.yaml").is_file(), reason="no examples"
)
def test_init_example_copies_it_and_never_overwrites(tmp_path: Path) -> None:
    _pm("-C", str(tmp_path), "init", "--example", "quickstart")
    assert (tmp_path / "pipemake.yaml").read_text() == (
        examples_dir() / "quickstart" / "pipemake.yaml"
    ).read_text()
    assert not (tmp_path / ".pipemake").exists() and not (tmp_path / "build").exists()
    # in a process of its own: validating imports the example's `steps` package, whose
    # name other tests' projects use too
    done = subprocess.run(
        [sys.executable, "-m", "pipemake", "-C", str(tmp_path), "validate"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    r = _pm("-C", str(tmp_path), "init", "--example", "quickstart", code=2)
    assert "already exists" in r.output
    r = _pm("-C", str(tmp_path), "init", "--example", "nope", code=2)
    assert "quickstart" in r.output


def test_init_never_writes_through_a_linked_gitignore(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("keep\n")
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / ".gitignore").symlink_to(elsewhere)
    out = _pm("-C", str(proj), "init").output
    assert ".gitignore" not in out
    assert elsewhere.read_text() == "keep\n"

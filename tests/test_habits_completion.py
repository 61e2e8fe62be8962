"""Shell completion: TARGET arguments complete stage ids and output paths (issue 14)."""

from __future__ import annotations

import os
import subprocess
import sys

from click.testing import CliRunner
from conftest import Proj

from pipemake.cli import cli


def _complete(words: str, shell: str = "bash", cwd: str | None = None) -> list[str]:
    """What ``pipemake`` offers for the last of ``words`` (click's completion protocol)."""
    n = len(words.split()) - (0 if words.endswith(" ") else 1)
    env = {"_PIPEMAKE_COMPLETE": f"{shell}_complete", "COMP_WORDS": words, "COMP_CWORD": str(n)}
    result = CliRunner().invoke(cli, [], prog_name="pipemake", env=env)
    assert result.exit_code == 0, result.output
    if shell == "bash":
        return [line.split(",", 1)[1] for line in result.output.splitlines() if line]
    return result.output.splitlines()


def test_targets_complete_stage_ids_and_output_paths(chain: Proj) -> None:
    got = _complete(f"pipemake -C {chain.root} build ")
    assert got[:4] == ["upper", "lines", "side", "report"]
    assert set(got[4:]) == {"build/upper.txt", "build/lines.txt", "build/side.txt", "build/report"}
    assert _complete(f"pipemake -C {chain.root} dry-run s") == ["side"]
    assert _complete(f"pipemake -C {chain.root} clean build/l") == ["build/lines.txt"]
    assert _complete(f"pipemake -C {chain.root} commit re") == ["report"]
    assert _complete(f"pipemake -C {chain.root} status u") == ["upper"]
    assert _complete(f"pipemake -C {chain.root} build --force-stage l") == ["lines"]


def test_zsh_completion_shows_each_stage_rule(chain: Proj) -> None:
    out = _complete(f"pipemake -C {chain.root} build up", shell="zsh")
    assert out == ["plain", "upper", "shell"]


def test_completion_without_a_pipeline_offers_nothing_and_never_fails(tmp_path) -> None:
    assert _complete(f"pipemake -C {tmp_path} build ") == []
    (tmp_path / "pipemake.yaml").write_text("stages: [\n")
    assert _complete(f"pipemake -C {tmp_path} build ") == []


def test_the_bash_script_comes_from_the_installed_command(tmp_path) -> None:
    env = dict(os.environ, _PIPEMAKE_COMPLETE="bash_source")
    code = "import sys; sys.argv = ['pipemake']; from pipemake.entry import main; main()"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "_pipemake_completion()" in out.stdout
    assert "complete -o nosort -F _pipemake_completion pipemake" in out.stdout


def test_every_habit_has_an_answer_in_help() -> None:
    def help_of(*args: str) -> str:
        result = CliRunner().invoke(cli, [*args, "--help"], prog_name="pipemake")
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())  # wrapped lines joined

    top = help_of()
    assert "_PIPEMAKE_COMPLETE=bash_source pipemake" in top
    assert "init" in top and "commit" in top and "make -t" in top
    build = help_of("build")
    assert "-n, --dry-run" in build and "-S, --set vars.NAME=VALUE" in build
    assert "path a stage outputs" in build
    assert "params.KEY=VALUE" in help_of("dry-run")
    assert "svg" in help_of("graph") and "-o, --output FILE" in help_of("graph")
    assert "--example" in help_of("init")
    assert "dvc commit" in help_of("commit")

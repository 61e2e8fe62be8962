"""Smoke run of the scale benchmark harness (benchmarks/bench_scale.py) at a tiny size, so it
does not rot: pipemake (and GNU Make when installed) through every scenario. Only the table's
shape is checked, never a timing."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # heavy: models, real photos or whole examples

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scale.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_harness_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load()
    tools = "pipemake,make" if shutil.which("make") else "pipemake"
    rc = bench.main(
        [
            "--quick",
            "--sizes",
            "6",
            "--tools",
            f"{tools},dvc",
            "--jobs",
            "2",
            "--big-mb",
            "1",
            "--peer-venv",
            str(tmp_path / "no-venv"),
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "dvc is not installed" in out  # a missing peer is skipped with a note
    header = next(line for line in out.splitlines() if line.startswith("| 6 files |"))
    assert header.split("|")[2].strip() == "pipemake"
    assert ("make" in header) == (tools != "pipemake")
    rows = {
        line.split("|")[1].strip(): line
        for line in out.splitlines()
        if line.startswith("| ") and not line.startswith("| 6 files")
    }
    for scenario in [*bench.SCENARIOS, bench.BIG, "peak RSS (any scenario)"]:
        assert scenario in rows, scenario
    # item counts read from pipemake's log: one changed file reruns one item, a touch none
    assert "[1]" in rows["one file changed"].split("|")[2]
    assert "[0]" in rows["one file touched"].split("|")[2]
    assert "[restored]" in rows["param changed back"].split("|")[2]
    assert "Limits at 6 files: scandir+stat walk" in out
    assert "raw read, large files" in out


def test_interleaved_cold_rounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--cold-rounds``: cold builds only, a row per tool with its ratio to the bare loop
    (which really wrote both stages' outputs, with the same count command) for every
    round."""
    bench = _load()
    rc = bench.main(
        ["--sizes", "5", "--tools", "pipemake-py", "--cold-rounds", "2", "--big-count", "0",
         "--workdir", str(tmp_path / "work")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert len(rows["pipemake-py"].split("|")[3].split(",")) == 2  # one ratio per round
    assert bench.BARE in rows
    bare = tmp_path / "work" / "cold5" / "bare"
    assert len(list((bare / "build/upper").iterdir())) == 5
    assert int((bare / "build/count.txt").read_text()) == sum(
        p.stat().st_size for p in (bare / "build/upper").iterdir()
    )


def test_the_work_module_runs_as_a_script(tmp_path: Path) -> None:
    """DVC's stage runs ``python3 benchwork.py data build/upper TAG``."""
    import subprocess

    bench = _load()
    (tmp_path / "benchwork.py").write_text(bench.WORK_MODULE)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("abc")
    subprocess.run(
        [sys.executable, "benchwork.py", "data", "build/upper", "T"], cwd=tmp_path, check=True
    )
    assert (tmp_path / "build/upper/a.txt").read_text() == "ABCT"

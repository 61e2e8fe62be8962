"""The import layers of STYLE.md, checked by import-linter (cheap: static analysis only)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold() -> None:
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.exists():
        found = shutil.which("lint-imports")
        if found is None:
            pytest.skip("import-linter is not installed (pip install -e '.[test]')")
        exe = Path(found)
    r = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "broken" not in r.stdout.lower().replace("0 broken", "")


def test_every_engine_module_is_under_the_click_and_rich_contract() -> None:
    """A new module of the engine is checked too: only the CLI, its live view, the entry
    point and serve (which has its own contract) may import click or rich."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contract = next(
        c for c in config["tool"]["importlinter"]["contracts"] if "click and rich" in c["name"]
    )
    listed = set(contract["source_modules"])
    allowed = {"cli", "progress", "entry", "__init__", "__main__"}
    missing = sorted(
        f"pipemake.{f.stem}"
        for f in (ROOT / "pipemake").glob("*.py")
        if f.stem not in allowed and f"pipemake.{f.stem}" not in listed
    )
    assert not missing, f"add {missing} to the contract in pyproject.toml"


def test_the_modules_import_each_other_without_a_circle() -> None:
    """Every import counts, those inside functions and under ``TYPE_CHECKING`` included:
    the picture a newcomer draws from the imports has no circle (issue 18)."""
    grimp = pytest.importorskip("grimp")  # import-linter's graph builder

    graph = grimp.build_graph("pipemake", include_external_packages=False, cache_dir=None)
    circles = sorted(
        (a, b)
        for a in graph.modules
        for b in graph.find_modules_directly_imported_by(a)
        if graph.chain_exists(importer=b, imported=a)
    )
    assert not circles, f"imports that close a circle: {circles}"

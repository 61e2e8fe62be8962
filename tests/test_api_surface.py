"""The public API is what ``pipemake.__all__`` names, each documented; the CLI starts
without importing any heavy library; built-in rules come through the entry-point group."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

import pipemake

HEAVY = ["torch", "av", "rembg", "sklearn", "numpy", "onnxruntime", "PIL", "cv2"]


def test_all_names_exist_and_are_unique() -> None:
    assert len(pipemake.__all__) == len(set(pipemake.__all__))
    for name in pipemake.__all__:
        assert hasattr(pipemake, name), name


@pytest.mark.parametrize("name", pipemake.__all__)
def test_every_public_name_has_a_docstring(name: str) -> None:
    doc = inspect.getdoc(getattr(pipemake, name))
    assert doc and doc.strip(), f"pipemake.{name} has no docstring"


def test_public_methods_of_public_classes_have_docstrings() -> None:
    missing = []
    for name in pipemake.__all__:
        obj = getattr(pipemake, name)
        if not inspect.isclass(obj) or issubclass(obj, BaseException):
            continue
        for attr, value in vars(obj).items():
            if not attr.startswith("_") and inspect.isfunction(value) and not value.__doc__:
                missing.append(f"{name}.{attr}")
    assert missing == []


def test_the_core_verbs_are_public() -> None:
    for verb in (
        "build",
        "dry_run",
        "status",
        "validate",
        "graph",
        "list_stages",
        "clean",
        "cache_info",
        "cache_verify",
        "open_project",
        "PipelineError",
        "Rule",
        "register_rule",
        "run_status",
    ):
        assert verb in pipemake.__all__


def test_module_docstring() -> None:
    assert pipemake.__doc__ and "pipemake" in pipemake.__doc__


def test_cli_imports_no_heavy_library() -> None:
    code = (
        "import sys, pipemake.cli, pipemake.api, pipemake\n"
        "from click.testing import CliRunner\n"
        "r = CliRunner().invoke(pipemake.cli.cli, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json\n" + code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_python_m_pipemake_help() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pipemake", "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    for verb in (
        "build",
        "dry-run",
        "status",
        "validate",
        "graph",
        "list",
        "clean",
        "cache",
        "run",
    ):
        assert verb in r.stdout


def test_usage_error_is_exit_2() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pipemake", "build", "--no-such-option"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2


def test_builtin_rules_come_through_the_entry_point_group() -> None:
    eps = {ep.name: ep for ep in entry_points(group="pipemake.rules")}
    assert {"shell", "python", "custom"} <= set(eps)
    for name in ("shell", "python", "custom"):
        assert eps[name].value.startswith("pipemake.rules.")
        cls = eps[name].load()
        assert issubclass(cls, pipemake.Rule)
        assert cls.name == name

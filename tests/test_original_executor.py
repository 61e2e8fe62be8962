"""An executor class written for the original pipeline system, with the original's import
lines and its base class's helpers, runs as a ``custom`` stage unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from conftest import TRACEBACK, Proj

# as the original README's "Extending with Custom Executors" writes it
EXECUTOR = """
from typing import Any, Dict

from scripts.scenarios.data_pipeline_automation.stage_executors import StageExecutor
from scripts.scenarios.data_pipeline_automation.common import StageResult, ExecutionStatus


class MyCustomExecutor(StageExecutor):
    def validate_config(self) -> bool:
        required = ["input_dir", "output_dir"]
        for key in required:
            self._get_config_value(key, required=True)
        return True

    def execute(self, inputs: Dict[str, Any]) -> StageResult:
        self._mark_started()
        input_dir = self._get_config_value("input_dir")
        output_dir = self._get_config_value("output_dir")
        try:
            import os
            os.makedirs(output_dir, exist_ok=True)
            n = 0
            for name in sorted(os.listdir(input_dir)):
                with open(os.path.join(input_dir, name)) as src:
                    text = src.read()
                with open(os.path.join(output_dir, name), "w") as dst:
                    dst.write(text.upper())
                n += 1
            with open("runs/custom.count", "a") as fh:
                fh.write("x\\n")
            self._mark_completed()
            return self._create_success_result(
                outputs={"output_dir": output_dir},
                metrics={"processed_files": n}
            )
        except Exception as e:
            self._mark_completed()
            return self._create_failure_result(str(e))

    def estimate_duration(self) -> float:
        return 300.0  # 5 minutes
"""

PIPE = """
name: original_custom
version: 1.0.0
stages:
  - id: custom_stage
    type: custom
    depends_on: []
    config:
      executor: "my_custom_executor:MyCustomExecutor"
      input_dir: data
      output_dir: build/out
"""


@pytest.mark.slow
def test_an_original_executor_with_its_original_imports_runs_and_is_restored(
    project: Callable[..., Proj],
) -> None:
    p = project(PIPE, {"my_custom_executor.py": EXECUTOR, "data/a.txt": "abc\n"})
    p.sub("validate")
    p.sub("build", "--no-progress")
    assert p.read("build/out/a.txt") == "ABC\n"
    assert p.runs("custom") == 1
    p.sub("build", "--no-progress")
    assert p.runs("custom") == 1
    import shutil

    shutil.rmtree(p.path("build"))
    r = p.sub("build", "--no-progress")
    assert "restored" in r.stderr and p.read("build/out/a.txt") == "ABC\n"
    assert p.runs("custom") == 1


def test_its_required_key_missing_is_exit_2_at_validate(project: Callable[..., Proj]) -> None:
    p = project(PIPE.replace("      input_dir: data\n", ""), {"my_custom_executor.py": EXECUTOR})
    r = p.sub("validate", code=2)
    assert "input_dir" in r.stderr and TRACEBACK not in r.stderr, r.stderr


def test_a_project_module_of_the_original_name_wins(project: Callable[..., Proj]) -> None:
    """A project that still has the original package keeps using it."""
    base = (
        "class StageExecutor:\n"
        "    def __init__(self, stage_id, config):\n"
        "        self.stage_id, self.config = stage_id, config\n"
        "    def _get_config_value(self, key, default=None, required=False):\n"
        "        return self.config.get(key, default)\n"
        "    def _mark_started(self): pass\n"
        "    def _mark_completed(self): pass\n"
        "    def _create_success_result(self, outputs=None, metrics=None):\n"
        "        open('runs/own_base.count', 'a').write('x\\n')\n"
        "        return {'status': 'success', 'outputs': outputs or {}}\n"
    )
    common = "from pipemake.rules.original import StageResult, ExecutionStatus\n"
    files = {
        "my_custom_executor.py": EXECUTOR,
        "data/a.txt": "abc\n",
        "scripts/__init__.py": "",
        "scripts/scenarios/__init__.py": "",
        "scripts/scenarios/data_pipeline_automation/__init__.py": "",
        "scripts/scenarios/data_pipeline_automation/stage_executors.py": base,
        "scripts/scenarios/data_pipeline_automation/common.py": common,
    }
    p = project(PIPE, files)
    p.sub("build", "--no-progress")
    assert p.runs("own_base") == 1 and p.read("build/out/a.txt") == "ABC\n"


SCRIPT = """
import sys
import pipemake
assert "pipemake.rule" not in sys.modules  # import pipemake alone stays light
from my_custom_executor import MyCustomExecutor
from scripts.scenarios.data_pipeline_automation.common import StageResult
from pipemake.rules.original import StageExecutor

if __name__ == "__main__":
    assert issubclass(MyCustomExecutor, StageExecutor) and StageResult.__module__
    pipemake.register_rule("my_custom_type", MyCustomExecutor)
    from pipemake import api

    project = api.open_project(".")
    api.build(project)
    project.close()
    print("built")
"""


def run_script(p: Proj) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PIPEMAKE_CACHE_DIR"}
    return subprocess.run(
        [sys.executable, "build_it.py"], cwd=p.root, capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip


def test_the_original_imports_work_in_a_plain_script_after_import_pipemake(
    project: Callable[..., Proj],
) -> None:
    pipe = PIPE.replace("type: custom", "type: my_custom_type").replace(
        '      executor: "my_custom_executor:MyCustomExecutor"\n', ""
    )
    p = project(
        pipe, {"my_custom_executor.py": EXECUTOR, "data/a.txt": "abc\n", "build_it.py": SCRIPT}
    )
    r = run_script(p)
    assert r.returncode == 0 and "built" in r.stdout, r.stdout + r.stderr
    assert p.read("build/out/a.txt") == "ABC\n"


def test_without_pipemake_the_original_names_stay_unknown(project: Callable[..., Proj]) -> None:
    """Only ``import pipemake`` brings them: a plain Python is not changed."""
    p = project(PIPE, {"build_it.py": "import scripts.scenarios.data_pipeline_automation\n"})
    r = run_script(p)
    assert r.returncode == 1 and "No module named 'scripts'" in r.stderr

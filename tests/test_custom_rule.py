"""``type: custom``: an executor class written for the original pipeline system runs
unchanged (``Class(stage_id, config)``, ``validate_config()``, ``execute(inputs)`` returning a
StageResult), content-hashed like a ``python`` stage; ``register_rule`` does what the
original's ``register_executor`` did."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import TRACEBACK, Proj

import pipemake
from pipemake import api, rule

# An executor module as the original system's users wrote them: its own StageResult and
# ExecutionStatus (the original's common types), a logger, the helper methods of the
# original's StageExecutor base class. Each execute() notes one run in runs/<stage>.count.
EXECUTORS = '''
import json
import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Optional

logger = logging.getLogger(__name__)


class ExecutionStatus(Enum):
    SUCCESS = "success"
    FAILED = "failed"


@dataclass
class StageResult:
    stage_id: str
    status: ExecutionStatus
    duration: float
    outputs: Dict[str, Any]
    metrics: Dict[str, float]
    error_message: Optional[str] = None


class StageExecutor:
    def __init__(self, stage_id: str, config: Dict[str, Any]):
        self.stage_id = stage_id
        self.config = config
        self.start_time = None

    def _get_config_value(self, key, default=None, required=False):
        if key not in self.config:
            if required:
                raise ValueError(f"Required config key '{key}' missing for stage '{self.stage_id}'")
            return default
        return self.config[key]

    def _mark_started(self):
        self.start_time = time.time()
        with open("runs/" + self.stage_id + ".count", "a") as f:
            f.write("x\\n")

    def _create_success_result(self, outputs, metrics=None):
        return StageResult(self.stage_id, ExecutionStatus.SUCCESS, 0.0, outputs, metrics or {})

    def _create_failure_result(self, error_message):
        return StageResult(self.stage_id, ExecutionStatus.FAILED, 0.0, {}, {}, error_message)


class UpperExecutor(StageExecutor):
    """Upper-cases every file of input_dir into output_dir."""

    def validate_config(self) -> bool:
        for key in ("input_dir", "output_dir"):
            self._get_config_value(key, required=True)
        if self._get_config_value("mode", "upper") not in ("upper", "lower"):
            raise ValueError(f"mode must be upper or lower, got {self.config['mode']!r}")
        src = Path(self._get_config_value("input_dir"))
        if not src.is_dir():
            raise ValueError(f"input_dir does not exist: {src}")
        return True

    def execute(self, inputs: Dict[str, Any]) -> StageResult:
        self._mark_started()
        out = Path(self._get_config_value("output_dir"))
        out.mkdir(parents=True, exist_ok=True)
        change = str.upper if self._get_config_value("mode", "upper") == "upper" else str.lower
        files = []
        for f in sorted(Path(self._get_config_value("input_dir")).iterdir()):
            (out / f.name).write_text(change(f.read_text()))
            files.append(str(out / f.name))
        logger.info("changed %d files", len(files))
        return self._create_success_result(
            outputs={"output_dir": str(out), "files": files, "count": len(files)},
            metrics={"processed_files": len(files)},
        )

    def estimate_duration(self) -> float:
        return 5.0


class InputsExecutor(StageExecutor):
    """Writes what execute() received as inputs, as JSON, to output_file."""

    def validate_config(self) -> bool:
        self._get_config_value("output_file", required=True)
        return True

    def execute(self, inputs):
        self._mark_started()
        Path(self.config["output_file"]).write_text(json.dumps(inputs, sort_keys=True))
        return {"status": "success", "outputs": {"seen": sorted(inputs)}}


class CopyExecutor(StageExecutor):
    """Copies input_dir with copytree (which wants output_dir not there yet); with
    nothing=True writes nothing at all."""

    def validate_config(self) -> bool:
        return True

    def execute(self, inputs):
        self._mark_started()
        if not self.config.get("nothing"):
            import shutil

            shutil.copytree(self.config["input_dir"], self.config["output_dir"])
        return self._create_success_result(outputs={})


class RaisingExecutor(StageExecutor):
    def validate_config(self) -> bool:
        return True

    def execute(self, inputs):
        raise RuntimeError("ffmpeg not found")


class OddResultExecutor(StageExecutor):
    """Returns what its config's ``give`` names: none of the results an executor may give."""

    def validate_config(self) -> bool:
        return True

    def execute(self, inputs):
        self._mark_started()
        Path(self.config["output_dir"]).mkdir(parents=True, exist_ok=True)
        if self.config["give"] == "outputs":
            return self._create_success_result(outputs=["x"])
        return {"str": "done", "int": 42, "list": ["a", "b"]}[self.config["give"]]


class FailingExecutor(StageExecutor):
    def validate_config(self) -> bool:
        return True

    def execute(self, inputs):
        self._mark_started()
        Path(self.config["output_dir"]).mkdir(parents=True, exist_ok=True)
        return self._create_failure_result("the model file is corrupt")
'''

UPPER = """
name: orig
version: 1.0.0
stages:
  - id: upper
    type: custom
    depends_on: []
    config:
      executor: "orig_exec:UpperExecutor"
      input_dir: data
      output_dir: build/upper
"""

FILES = {"data/a.txt": "hello\n", "data/b.txt": "world\n", "orig_exec.py": EXECUTORS}


@pytest.fixture
def upper(project: Callable[..., Proj]) -> Proj:
    return project(UPPER, FILES)


def test_a_custom_stage_builds_is_up_to_date_and_restored(upper: Proj) -> None:
    r = upper.cli("build", "-j", "2", "--no-progress")
    assert upper.read("build/upper/a.txt") == "HELLO\n"
    assert upper.runs("upper") == 1
    assert "changed 2 files" in r.output  # the executor's own log lines reach the view
    upper.cli("build")
    assert upper.runs("upper") == 1
    upper.cli("clean")
    assert not upper.exists("build/upper")
    r = upper.cli("build", "--no-progress")
    assert "restored" in r.output and upper.runs("upper") == 1
    assert upper.read("build/upper/b.txt") == "WORLD\n"


@pytest.mark.slow
def test_its_inputs_params_and_code_are_in_the_key(upper: Proj) -> None:
    upper.cli("build")
    upper.write("data/a.txt", "changed\n")
    upper.cli("build")
    assert upper.runs("upper") == 2 and upper.read("build/upper/a.txt") == "CHANGED\n"
    upper.edit(
        "pipemake.yaml", "output_dir: build/upper", "output_dir: build/upper\n      mode: lower"
    )
    upper.cli("build")
    assert upper.runs("upper") == 3 and upper.read("build/upper/a.txt") == "changed\n"
    upper.edit("orig_exec.py", "changed %d files", "changed %d file(s)")  # the module's source
    r = upper.cli("dry-run")
    assert "upper: run" in r.output
    upper.cli("build")
    assert upper.runs("upper") == 4


def test_a_failing_validate_config_is_exit_2_at_validate_with_stage_and_line(
    upper: Proj,
) -> None:
    upper.edit(
        "pipemake.yaml", "output_dir: build/upper", "output_dir: build/upper\n      mode: shout"
    )
    r = upper.cli("validate", code=2)
    assert "stage 'upper'" in r.output and "mode must be upper or lower" in r.output
    line = upper.read("pipemake.yaml").splitlines().index("      mode: shout") + 1
    assert f"pipemake.yaml:{line}:" in r.output and TRACEBACK not in r.output  # the key's line
    upper.cli("build", code=2)
    assert upper.runs("upper") == 0


def test_a_missing_required_key_names_its_line(upper: Proj) -> None:
    upper.edit("pipemake.yaml", "      input_dir: data\n", "      input_dirx: data\n")
    r = upper.cli("validate", code=2)
    assert "Required config key 'input_dir' missing" in r.output
    line = (
        upper.read("pipemake.yaml").splitlines().index('      executor: "orig_exec:UpperExecutor"')
    )
    assert f"pipemake.yaml:{line + 1}:" in r.output


def test_which_keys_are_paths() -> None:
    custom = rule.get_rule("custom")
    assert custom is not None
    config = {
        "executor": "m:C", "input_dir": "data", "input_format": "png", "output_dir": "out",
        "output_format": "jpg", "cut_output_path": "cuts.json", "instances_dir": "up/x",
    }  # fmt: skip
    ports, problems = custom.ports(config)
    assert problems == []
    assert ports.inputs == {"input_dir": "data", "instances_dir": "up/x"}
    assert ports.outputs == {"output_dir": "out", "cut_output_path": "cuts.json"}
    assert ports.output_kinds == {"output_dir": "path", "cut_output_path": "path"}
    assert ports.key_params["params"] == {"input_format": "png", "output_format": "jpg"}
    named, problems = custom.ports({**config, "inputs": ["instances_dir"], "outputs": ["x"]})
    assert named.inputs == {"instances_dir": "up/x"}
    assert problems == [("outputs", "'outputs' names 'x', not a key of this config")]


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ("orig_exec:Nope", "module 'orig_exec' ("),
        ("orig_exec:UperExecutor", "has no class 'UperExecutor'; did you mean 'UpperExecutor'?"),
        ("orig_exec:UpperExecutor.Inner", "class 'UpperExecutor' has no class 'Inner'"),
        ("orig_exec:logger", "not an executor class"),
        ("orig_exec:StageResult", "not an executor class (a class with validate_config() and"),
        ("no_such_module:UpperExecutor", "cannot import 'no_such_module'"),
        ("not a spec", "package.module:Class"),
    ],
)
def test_a_bad_executor_is_exit_2(project: Callable[..., Proj], spec: str, said: str) -> None:
    p = project(UPPER.replace("orig_exec:UpperExecutor", spec), FILES)
    r = p.cli("validate", code=2)
    assert said in r.output and "stage 'upper'" in r.output and TRACEBACK not in r.output
    line = p.read("pipemake.yaml").splitlines().index(f'      executor: "{spec}"') + 1
    assert f"pipemake.yaml:{line}: stage 'upper'" in r.output  # the executor key's line


def test_validate_config_waits_for_an_upstream_output(project: Callable[..., Proj]) -> None:
    """Its input_dir is an upstream output, not there before the first build: the check
    runs in the worker then, and the build goes through."""
    p = project(
        UPPER
        + """
  - id: again
    type: custom
    depends_on: [upper]
    config:
      executor: "orig_exec:UpperExecutor"
      input_dir: "{upper.output_dir}"
      output_dir: build/again
      mode: lower
""",
        FILES,
    )
    p.cli("validate")
    p.cli("build")
    assert p.read("build/again/a.txt") == "hello\n"
    p.write("data/a.txt", "new\n")  # the upstream output changes: the downstream reruns
    p.cli("build")
    assert p.read("build/again/a.txt") == "new\n" and p.runs("again") == 2


def test_execute_gets_the_upstream_outputs_and_values_as_inputs(
    project: Callable[..., Proj],
) -> None:
    p = project(
        UPPER
        + """
  - id: seen
    type: custom
    depends_on: [upper]
    config:
      executor: "orig_exec:InputsExecutor"
      output_file: build/seen.json
""",
        FILES,
    )
    p.cli("build")
    got = json.loads(p.read("build/seen.json"))
    up = got["upper"]
    assert up["output_dir"] == str(p.root / "build/upper")  # the placed output, absolute
    assert up["count"] == 2
    # staging paths in the executor's outputs became the output's path in the project
    assert up["files"] == ["build/upper/a.txt", "build/upper/b.txt"]
    assert ".pipemake" not in p.read("build/seen.json")


def test_a_failed_result_fails_the_stage_with_its_message(project: Callable[..., Proj]) -> None:
    p = project(
        UPPER.replace("UpperExecutor", "FailingExecutor"),
        FILES,
    )
    r = p.cli("build", "--no-progress", code=1)
    assert "the model file is corrupt" in r.output and TRACEBACK not in r.output
    assert not p.exists("build/upper")


def test_the_executor_creates_its_output_folder_as_it_always_did(
    project: Callable[..., Proj],
) -> None:
    p = project(UPPER.replace("UpperExecutor", "CopyExecutor"), FILES)
    p.cli("build")
    assert p.read("build/upper/a.txt") == "hello\n"
    p.edit(
        "pipemake.yaml", "output_dir: build/upper", "output_dir: build/upper\n      nothing: true"
    )
    p.cli("build")
    assert p.path("build/upper").is_dir() and not any(p.path("build/upper").iterdir())


def test_an_executor_that_raises_fails_the_stage_showing_its_own_frames(
    project: Callable[..., Proj],
) -> None:
    p = project(UPPER.replace("UpperExecutor", "RaisingExecutor"), FILES)
    r = p.cli("build", "--no-progress", code=1)
    assert "RaisingExecutor.execute() raised RuntimeError: ffmpeg not found" in r.output
    assert 'raise RuntimeError("ffmpeg not found")' in r.output  # where, in its module
    assert TRACEBACK not in r.output and "worker.py" not in r.output


# register_rule: the original's register_executor ---------------------------------------
class Reverse:
    """An original-style executor class, importable by worker processes (this module)."""

    def __init__(self, stage_id: str, config: dict[str, Any]) -> None:
        self.stage_id, self.config = stage_id, config

    def validate_config(self) -> bool:
        if "output_path" not in self.config:
            raise ValueError("Required config key 'output_path' missing")
        return True

    def execute(self, inputs: dict[str, Any]) -> dict[str, Any]:
        text = Path(self.config["input_file"]).read_text()
        Path(self.config["output_path"]).write_text(text[::-1])
        with open(Path(self.config["input_file"]).parent.parent / "runs/rev.count", "a") as f:
            f.write("x\n")
        return {"length": len(text)}


REV = """
name: rev
stages:
  - id: rev
    type: reverse_text
    config: {input_file: data/a.txt, output_path: build/rev.txt}
"""


def test_register_rule_takes_an_original_executor_class(project: Callable[..., Proj]) -> None:
    made = pipemake.register_rule("reverse_text", Reverse)
    assert isinstance(made, pipemake.Rule) and made.name == "reverse_text"
    p = project(REV, {"data/a.txt": "abc"})
    with api.project_of(p.root, None) as proj:
        api.build(proj)  # worker processes import the class again by its module and name
        api.build(proj)
    assert p.read("build/rev.txt") == "cba" and p.runs("rev") == 1
    p.edit("pipemake.yaml", "output_path: build/rev.txt", "output_pth: build/rev.txt")
    with pytest.raises(pipemake.PipelineError, match="output_path' missing"):
        api.open_project(p.root)


def test_a_class_only_this_process_has_runs_here(project: Callable[..., Proj]) -> None:
    """A class defined in a function (or __main__, a notebook) cannot be imported by a
    worker: its tasks run in threads of the building process."""

    class Shout:
        def __init__(self, stage_id: str, config: dict[str, Any]) -> None:
            self.config = config

        def validate_config(self) -> bool:
            return True

        def execute(self, inputs: dict[str, Any]) -> None:
            Path(self.config["output_path"]).write_text("HEY")

    pipemake.register_rule("shout_here", Shout)
    assert rule.local_only("shout_here")
    p = project(
        "name: s\nstages:\n  - id: s\n    type: shout_here\n    config: {output_path: o.txt}\n"
    )
    with api.project_of(p.root, None) as proj:
        report = api.build(proj, jobs=2)  # the local executor
    assert report.ran == ["s"] and p.read("o.txt") == "HEY"


class Numbered(pipemake.Rule):
    """A pipemake rule registered from a script."""

    outputs: ClassVar = {"o": pipemake.Output(kind="file")}
    params: ClassVar = {"n": pipemake.Param("int", 1)}

    def run(self, ctx: pipemake.Context) -> dict[str, Any]:
        ctx.outputs["o"].write_text(str(ctx.params["n"]))
        return {}


def test_register_rule_takes_a_rule_class_and_refuses_anything_else(
    project: Callable[..., Proj],
) -> None:
    pipemake.register_rule("numbered", Numbered)
    assert "numbered" in rule.rule_names()
    p = project("name: n\nstages:\n  - id: n\n    type: numbered\n    config: {o: n.txt, n: 7}\n")
    p.cli("build")
    assert p.read("n.txt") == "7"
    with pytest.raises(TypeError, match="neither a pipemake Rule nor an executor class"):
        pipemake.register_rule("bad", dict)
    with pytest.raises(ValueError, match="rule name"):
        pipemake.register_rule("no spaces", Numbered)


# findings of the original system's users ------------------------------------------------
@pytest.mark.parametrize(
    ("typed", "said"),
    [
        ("SEGMENTATION", "did you mean 'segmentation'? rule names are case-sensitive"),
        ("Custom", "did you mean 'custom'?"),
        ("my_custom_type", 'also needs `executor: "module:Class"`'),
        ("my_custom_type", "pipemake.register_rule('my_custom_type', Class)"),
    ],
)
def test_an_unknown_type_suggests_the_rule_and_what_custom_needs(
    project: Callable[..., Proj], typed: str, said: str
) -> None:
    p = project(UPPER.replace("type: custom", f"type: {typed}"), FILES)
    r = p.cli("validate", code=2)
    line = p.read("pipemake.yaml").splitlines().index(f"    type: {typed}") + 1
    assert f"pipemake.yaml:{line}: stage 'upper': unknown rule {typed!r}" in r.output
    assert said in r.output and TRACEBACK not in r.output


@pytest.mark.parametrize(
    ("give", "said"),
    [
        ("str", "str 'done'; expected a StageResult"),
        ("int", "int 42; expected a StageResult"),
        ("list", "list ['a', 'b']; expected a StageResult"),
        ("outputs", "outputs of type list (['x']); expected a dict"),
    ],
)
def test_execute_returning_neither_a_result_nor_a_dict_fails_the_stage(
    project: Callable[..., Proj], give: str, said: str
) -> None:
    p = project(
        UPPER.replace("UpperExecutor", "OddResultExecutor").replace(
            "output_dir: build/upper", f"output_dir: build/upper\n      give: {give}"
        ),
        FILES,
    )
    r = p.cli("build", "--no-progress", code=1)
    assert f"OddResultExecutor.execute() returned {said}" in r.output
    assert TRACEBACK not in r.output
    assert not p.exists("build/upper")  # nothing placed, nothing cached
    p.cli("build", "--no-progress", code=1)
    assert p.runs("upper") == 2


ORIGINAL_EXECS = """
from scripts.scenarios.data_pipeline_automation.stage_executors import StageExecutor


class NeedsThreshold(StageExecutor):
    def validate_config(self) -> bool:
        self._get_config_value("threshold", required=True)
        return True

    def execute(self, inputs):
        return self._create_success_result(outputs={})
"""


def test_a_failing_validate_config_sees_the_stage_id(project: Callable[..., Proj]) -> None:
    p = project(
        UPPER.replace("orig_exec:UpperExecutor", "orig_base:NeedsThreshold"),
        {**FILES, "orig_base.py": ORIGINAL_EXECS},
    )
    r = p.cli("validate", code=2)
    assert "missing required config key 'threshold'" in r.output
    assert "stage ''" not in r.output
    assert "validate_config() failed: stage 'upper': missing required" in r.output


def test_path_keys_without_input_or_output_in_their_names() -> None:
    custom = rule.get_rule("custom")
    assert custom is not None
    config = {
        "executor": "m:C", "source_dir": "data", "save_dir": "build/saved",
        "src_paths": ["a", "b"], "model_path": "models/m.onnx", "dest_file": "/elsewhere/x",
        "cache_dir": "tmp/c", "results_dir": "../up", "mode": "upper", "threshold": 0.5,
        "weights_dir": 3, "video_codec": "h264", "read_mode": "lazy", "source": "webcam",
        "url_path": "https://x/m.onnx", "home_file": "~/w.onnx",
    }  # fmt: skip
    ports, problems = custom.ports(config)
    assert problems == []
    assert ports.inputs == {
        "source_dir": "data", "src_paths": ["a", "b"], "model_path": "models/m.onnx"
    }  # fmt: skip
    assert ports.outputs == {"save_dir": "build/saved"}
    # outside the project, a save-like key is never made an output pipemake would replace
    params = ["dest_file", "cache_dir", "results_dir", "mode", "threshold", "weights_dir",
              "video_codec", "read_mode", "source", "url_path", "home_file"]  # fmt: skip
    assert list(ports.key_params["params"]) == params
    assert custom.describe(ports) == [
        "config keys read as inputs (content in the key): source_dir, src_paths, model_path; "
        "outputs (stored, restored): save_dir; params: " + ", ".join(params)
    ]
    listed, _ = custom.ports({**config, "outputs": ["cache_dir"]})
    assert listed.outputs == {"cache_dir": "tmp/c"} and "save_dir" in listed.params


COPY_EXECS = """
import os, shutil
from scripts.scenarios.data_pipeline_automation.stage_executors import StageExecutor


class CopyExec(StageExecutor):
    def validate_config(self):
        self._get_config_value("source_dir", required=True)
        self._get_config_value("save_dir", required=True)
        return True

    def execute(self, inputs):
        s, d = self._get_config_value("source_dir"), self._get_config_value("save_dir")
        os.makedirs(d, exist_ok=True)
        for n in os.listdir(s):
            shutil.copy(os.path.join(s, n), os.path.join(d, n))
        with open("runs/copy.count", "a") as f:
            f.write("x\\n")
        return self._create_success_result(outputs={"save_dir": d})
"""

COPY = """
name: keys
stages:
  - id: copy
    type: custom
    config:
      executor: "copy_exec:CopyExec"
      source_dir: data
      save_dir: build/saved
  - id: count
    type: shell
    config:
      cmd: "cat {copy.save_dir}/a.txt > {outputs.o}"
      outputs: {o: build/count.txt}
"""


def test_a_source_dir_is_hashed_and_a_save_dir_restored(project: Callable[..., Proj]) -> None:
    p = project(COPY, {"copy_exec.py": COPY_EXECS, "data/a.txt": "one\n"})
    r = p.cli("validate")
    assert "inputs (content in the key): source_dir; outputs (stored, restored): save_dir" in (
        r.output
    )
    p.cli("build")
    assert p.read("build/count.txt") == "one\n" and p.runs("copy") == 1
    p.write("data/a.txt", "two\n")
    assert "copy: run: input data changed" in p.cli("dry-run").output
    p.cli("build")
    assert p.read("build/saved/a.txt") == "two\n" and p.read("build/count.txt") == "two\n"
    assert p.runs("copy") == 2
    import shutil

    shutil.rmtree(p.path("build/saved"))
    r = p.cli("build", "--no-progress")
    assert p.read("build/saved/a.txt") == "two\n" and p.runs("copy") == 2  # restored
    assert "1 restored" in r.output


def test_a_missing_path_key_says_how_to_make_it_an_output(project: Callable[..., Proj]) -> None:
    p = project(
        COPY.replace("save_dir: build/saved", "save_dir: build/saved\n      model_dir: nothere"),
        {"copy_exec.py": COPY_EXECS, "data/a.txt": "one\n"},
    )
    r = p.cli("validate", code=2)
    assert "input 'model_dir': nothere does not exist" in r.output
    assert "list 'model_dir' with the stage's other outputs in `outputs: [...]`" in r.output


def test_a_save_dir_outside_the_project_is_left_to_the_executor(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """pipemake never replaces a folder outside the project it was not told is an output."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    p = project(
        COPY.replace("save_dir: build/saved", f"save_dir: {mine}"),
        {"copy_exec.py": COPY_EXECS, "data/a.txt": "one\n"},
    )
    r = p.cli("validate")
    assert "params: save_dir" in r.output
    p.cli("build")
    assert (mine / "keep.txt").read_text() == "keep" and (mine / "a.txt").read_text() == "one\n"


def test_a_result_naming_a_path_pipemake_does_not_store_is_warned(
    project: Callable[..., Proj],
) -> None:
    execs = COPY_EXECS.replace(
        'outputs={"save_dir": d}', 'outputs={"save_dir": d, "report": "runs/copy.count"}'
    )
    p = project(COPY, {"copy_exec.py": execs, "data/a.txt": "one\n"})
    r = p.cli("build", "--no-progress")
    assert "CopyExec returned 'report': runs/copy.count, a path pipemake neither stores" in (
        r.output
    )
    assert "returned 'save_dir'" not in r.output


def test_a_save_dir_a_symlink_leads_out_of_the_project_is_refused(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    mine = tmp_path / "mine"
    (mine / "saved").mkdir(parents=True)
    (mine / "saved/keep.txt").write_text("keep")
    p = project(COPY, {"copy_exec.py": COPY_EXECS, "data/a.txt": "one\n"})
    p.cli("build")  # build/ is a real folder: fine
    p.path("build/saved/a.txt").unlink()
    p.path("build/saved").rmdir()
    p.path("build/saved").symlink_to(mine / "saved")  # made after the plan was checked
    p.write("data/a.txt", "two\n")
    r = p.cli("build", "--no-progress", code=None)
    assert r.exit_code in (1, 2) and TRACEBACK not in r.output
    assert "leads out of the project through a symlink" in r.output
    assert sorted(x.name for x in (mine / "saved").iterdir()) == ["keep.txt"]
    p.path("build/saved").unlink()
    p.path("link").symlink_to(mine)
    p.edit("pipemake.yaml", "save_dir: build/saved", "save_dir: link/saved")
    r = p.cli("validate", code=2)
    assert "output 'save_dir' (link/saved) leads out of the project through a symlink" in (r.output)
    p.cli("build", code=2)
    assert sorted(x.name for x in (mine / "saved").iterdir()) == ["keep.txt"]


def test_the_worker_refuses_a_save_dir_a_symlink_made_after_the_check(tmp_path: Path) -> None:
    """The last guard, in the task itself: nothing runs, nothing is placed."""
    root, mine = tmp_path / "ws", tmp_path / "mine"
    (root / "data").mkdir(parents=True)
    (root / "runs").mkdir()
    (root / "data/a.txt").write_text("one\n")
    (root / "copy_exec.py").write_text(COPY_EXECS)
    mine.mkdir()
    (root / "link").symlink_to(mine)
    custom = rule.get_rule("custom")
    assert custom is not None
    ports, _ = custom.ports(
        {"executor": "copy_exec:CopyExec", "source_dir": "data", "save_dir": "link/saved"}
    )
    staging = tmp_path / "staging/saved"
    ctx = rule.Context(root, {"source_dir": root / "data"}, {"save_dir": staging}, ports.params)
    with pytest.raises(pipemake.RuleError, match="leads out of the project through a symlink"):
        custom.run(ctx)
    assert not staging.exists() and not (root / "runs/copy.count").exists()

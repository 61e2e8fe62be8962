"""The code a ``python`` or ``custom`` stage runs is the code its key holds.

A worker process runs many tasks, and so does the build process under the inline executor
(``api.build`` twice in a notebook): a module it imported for an earlier task must be
imported again when its source changed since, or a stage keyed on the new source stores
what the old code made (and is "up to date" with it ever after). A ``custom`` executor's
base classes in the project are its code too.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import wait_for

from pipemake.rule import Context, RuleError
from pipemake.rules.custom import CustomRule
from pipemake.rules.python import PythonRule

FUNCS = """\
TAG = "V1"
def a(ctx):
    ctx.outputs["o"].write_text(TAG + " " + ",".join(sorted(ctx.params)) + "\\n")
def b(ctx):
    ctx.outputs["o"].write_text(TAG + " " + ",".join(sorted(ctx.params)) + "\\n")
"""

EXECUTORS = """\
import os
TAG = "V1"
class Ex:
    def __init__(self, stage_id, config):
        self.config = config
    def validate_config(self):
        return True
    def execute(self, inputs):
        os.makedirs(self.config["output_dir"], exist_ok=True)
        keys = ",".join(sorted(self.config))
        with open(os.path.join(self.config["output_dir"], "r.txt"), "w") as f:
            f.write(TAG + " " + keys + "\\n")
        return {}
class Ex2(Ex):
    pass
"""

#: a shell stage between a and b that says it started, then waits for the test's go-ahead
WAIT = """
  - id: wait
    type: shell
    depends_on: [a]
    config:
      outputs: {o: build/wait.txt}
      cmd: "touch runs/waiting; while [ ! -f runs/go ]; do sleep 0.05; done; echo w > {outputs.o}"
"""


def _python_pipeline(mod: str) -> str:
    return f"""
name: t
stages:
  - id: a
    type: python
    config: {{function: "{mod}.f:a", inputs: {{x: data/x}}, outputs: {{o: build/a.txt}}}}
{WAIT}
  - id: b
    type: python
    config: {{function: "{mod}.f:b", inputs: {{w: "{{wait.o}}"}}, outputs: {{o: build/b.txt}}}}
"""


def _custom_pipeline(mod: str) -> str:
    return f"""
name: t
stages:
  - id: a
    type: custom
    config: {{executor: "{mod}.ex:Ex", input_path: data/x, output_dir: build/a}}
{WAIT}
  - id: b
    type: custom
    depends_on: [wait]
    config: {{executor: "{mod}.ex:Ex2", input_path: data/x, output_dir: build/b}}
"""


def _edited_mid_build(p, module_file: str, executor: str) -> None:
    """Build with one job; once stage a ran (its worker imported the module) and the
    shell stage waits, edit the module V1 → V2, then let the build go on to b."""
    proc = p.popen("build", "-j", "1", "--no-progress", "--executor", executor)
    try:
        wait_for(lambda: p.exists("runs/waiting") or proc.poll() is not None, 60, "stage wait")
        assert proc.poll() is None, proc.communicate()
        p.edit(module_file, 'TAG = "V1"', 'TAG = "V2"')
        p.write("runs/go", "")
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err


@pytest.mark.parametrize("executor", ["local", "inline"])
def test_a_python_module_edited_mid_build_runs_as_edited(project, executor: str) -> None:
    mod = f"code8py{executor}"
    p = project(_python_pipeline(mod), {"data/x": "x\n", f"{mod}/f.py": FUNCS})
    _edited_mid_build(p, f"{mod}/f.py", executor)
    assert p.read("build/a.txt") == "V1 \n"
    assert p.read("build/b.txt") == "V2 \n"  # b's key holds V2: V2 ran (no hidden params)
    done = p.sub("build", "--no-progress")
    out = done.stdout + done.stderr
    assert "b: up to date" in out, out
    assert p.read("build/b.txt") == "V2 \n"


@pytest.mark.parametrize("executor", ["local", "inline"])
def test_a_custom_executor_module_edited_mid_build_runs_as_edited(project, executor: str) -> None:
    mod = f"code8cu{executor}"
    p = project(_custom_pipeline(mod), {"data/x": "x\n", f"{mod}/ex.py": EXECUTORS})
    _edited_mid_build(p, f"{mod}/ex.py", executor)
    assert p.read("build/a/r.txt") == "V1 input_path,output_dir\n"
    assert p.read("build/b/r.txt") == "V2 input_path,output_dir\n"
    done = p.sub("build", "--no-progress")
    out = done.stdout + done.stderr
    assert "b: up to date" in out, out


def test_two_api_builds_in_one_process_run_the_edited_module(project) -> None:
    from pipemake import api

    mod = "code8api"
    p = project(
        f"""
name: t
stages:
  - id: fn
    type: python
    config: {{function: "{mod}.f:a", inputs: {{x: data/x}}, outputs: {{o: build/fn.txt}}}}
""",
        {"data/x": "x\n", f"{mod}/f.py": FUNCS},
    )

    def build() -> None:
        proj = api.open_project(p.root)
        try:
            api.build(proj, executor="inline")
        finally:
            proj.close()

    build()
    assert p.read("build/fn.txt") == "V1 \n"
    p.edit(f"{mod}/f.py", 'TAG = "V1"', 'TAG = "V2"')
    build()
    assert p.read("build/fn.txt") == "V2 \n"
    assert "fn: up to date" in p.cli("build", "--no-progress").output


BASE = """\
import os
class Base:
    TAG = "B1"
    def __init__(self, stage_id, config):
        self.config = config
    def validate_config(self):
        return True
    def execute(self, inputs):
        os.makedirs(self.config["output_dir"], exist_ok=True)
        with open(os.path.join(self.config["output_dir"], "r.txt"), "w") as f:
            f.write(self.TAG + "\\n")
        return {}
"""


@pytest.mark.parametrize(
    "ex",
    [
        "from {mod}.base import Base\nclass Ex(Base):\n    pass\n",
        "from . import base\nclass Mid(base.Base):\n    pass\nclass Ex(Mid):\n    pass\n",
        "import {mod}.base as b\nclass Ex(b.Base):\n    pass\n",
    ],
    ids=["from-import", "relative-via-mid", "import-as"],
)
def test_a_custom_executors_base_class_in_the_project_is_in_its_key(project, ex: str) -> None:
    mod = "code8base"
    p = project(
        f"""
name: t
stages:
  - id: ex
    type: custom
    config: {{executor: "{mod}.ex:Ex", input_path: data/x, output_dir: build/ex}}
""",
        {"data/x": "x\n", f"{mod}/base.py": BASE, f"{mod}/ex.py": ex.format(mod=mod)},
    )
    p.cli("build", "--no-progress")
    assert p.read("build/ex/r.txt") == "B1\n"
    p.edit(f"{mod}/base.py", 'TAG = "B1"', 'TAG = "B2"')
    out = p.cli("build", "--no-progress").output
    assert "ex: up to date" not in out, out
    assert p.read("build/ex/r.txt") == "B2\n"


def test_a_custom_executor_without_project_bases_keeps_its_key(tmp_path: Path) -> None:
    """Its code is its module's file alone, as before: its stages keep their keys."""
    from pipemake.hashing import hash_file

    (tmp_path / "code8keep").mkdir()
    (tmp_path / "code8keep" / "ex.py").write_text(
        "import collections\nfrom collections import OrderedDict as O\n" + EXECUTORS
        + "class Ex3(O):\n    pass\nclass Ex4(collections.UserDict, Ex):\n    pass\n"
    )  # fmt: skip
    rule = CustomRule()
    for cls in ("Ex", "Ex2", "Ex3", "Ex4"):
        ports, problems = rule.ports({"executor": f"code8keep.ex:{cls}", "output_dir": "b"})
        assert not problems
        ports.root = str(tmp_path)
        assert rule.code_files(ports, tmp_path) == [str(tmp_path / "code8keep" / "ex.py")]
        assert rule.code_hash(ports, tmp_path) == hash_file(str(tmp_path / "code8keep/ex.py"))


def _ctx(root: Path, params: dict) -> Context:
    (root / "out").mkdir(exist_ok=True)
    return Context(root, {}, {"o": root / "out" / "o.txt"}, params, stage="s")


def test_a_python_module_that_is_not_the_keys_code_does_not_run(tmp_path: Path) -> None:
    """The task carries its key's code digests: a module whose source was edited after
    the key was made is not run under that key; the stage fails, saying to build again."""
    from pipemake.rules.python import CODE

    (tmp_path / "code8want").mkdir()
    f = tmp_path / "code8want" / "f.py"
    f.write_text(FUNCS)
    ports, _ = PythonRule().ports({"function": "code8want.f:a", "outputs": {"o": "o.txt"}})
    ports.root = str(tmp_path)
    good = PythonRule().code_hash(ports, tmp_path)
    assert ports.params[CODE] == {"code8want/f.py": good}  # relative to the project root
    stale = {**ports.params, CODE: {"code8want/f.py": "0" * 32}}
    with pytest.raises(RuleError, match=r"code8want/f\.py changed after .* build again"):
        PythonRule().run(_ctx(tmp_path, stale))
    assert not (tmp_path / "out" / "o.txt").exists()
    PythonRule().run(_ctx(tmp_path, dict(ports.params)))
    assert (tmp_path / "out" / "o.txt").read_text() == "V1 \n"


def test_a_custom_executor_that_is_not_the_keys_code_does_not_run(tmp_path: Path) -> None:
    from pipemake.rules.python import CODE

    (tmp_path / "code8cwant").mkdir()
    f = tmp_path / "code8cwant" / "ex.py"
    f.write_text(EXECUTORS)
    rule = CustomRule()
    ports, _ = rule.ports({"executor": "code8cwant.ex:Ex", "output_dir": "o"})
    ports.root = str(tmp_path)
    assert rule.code_hash(ports, tmp_path)
    stale = {**ports.params, CODE: {"code8cwant/ex.py": "0" * 32}, "__upstream__": {}}
    ctx = Context(tmp_path, {}, {"output_dir": tmp_path / "stage" / "o"}, stale, stage="s")
    with pytest.raises(RuleError, match=r"code8cwant/ex\.py changed after .* build again"):
        rule.run(ctx)
    assert not (tmp_path / "stage").exists()
    assert os.path.isfile(f)


def test_a_registered_executors_project_base_classes_are_in_its_key(tmp_path: Path) -> None:
    """An executor class registered in-process (``register_executor``) is keyed on the
    project's files of the classes it derives from too (installed ones stay out)."""
    import importlib.util
    import sys

    from pipemake.rule import Ports

    (tmp_path / "code8reg").mkdir()
    (tmp_path / "code8reg" / "base.py").write_text(BASE)
    sys.path.insert(0, str(tmp_path))
    try:
        (tmp_path / "code8reg" / "ex.py").write_text(
            "import collections\nfrom code8reg.base import Base\n"
            "class Ex(Base, collections.UserDict):\n    pass\n"
        )
        spec = importlib.util.spec_from_file_location("code8reg.ex", tmp_path / "code8reg/ex.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["code8reg.ex"] = module
        spec.loader.exec_module(module)
        rule = CustomRule().for_executor("reg", module.Ex)
        files = rule.code_files(Ports(root=str(tmp_path)), tmp_path)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n.startswith("code8reg")]:
            del sys.modules[name]
    assert [os.path.relpath(f, tmp_path) for f in files] == ["code8reg/ex.py", "code8reg/base.py"]


def test_two_projects_in_one_process_each_run_their_own_module(project) -> None:
    """A module of the same name in two projects built in one process (the inline
    executor): each build keys and runs its own project's file, not the one loaded first."""
    from pipemake import api

    pipeline = """
name: t
stages:
  - id: fn
    type: python
    config: {function: "code8dup.f:a", inputs: {x: data/x}, outputs: {o: build/fn.txt}}
"""
    made = []
    for name, tag in (("one", "A"), ("two", "B")):
        files = {"data/x": "x\n", "code8dup/__init__.py": "", "code8dup/f.py": FUNCS}
        p = project(pipeline, files, name=name)
        p.edit("code8dup/f.py", 'TAG = "V1"', f'TAG = "{tag}"')
        proj = api.open_project(p.root)
        try:
            api.build(proj, executor="inline")
        finally:
            proj.close()
        made.append(p.read("build/fn.txt"))
    assert made == ["A \n", "B \n"]

"""A user of the original pipeline system, second round: an executor in a namespace package
and one re-exported by its package, every missing package reported with the model and the
video, a typo key holding a reference, an unclosed quote, a short clip clustered into one
group, an unknown depends_on, and ``-f`` beside ``--config``."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TRACEBACK, Proj

from pipemake.yamlload import YamlError, load_yaml

# an executor of the original system's shape, in scripts/executors/ with no __init__.py
FRAMES = """\
import os


class E:
    def __init__(self, stage_id, config):
        self.config = config

    def validate_config(self):
        return True

    def execute(self, inputs):
        os.makedirs(self.config["output_dir"])
        with open(os.path.join(self.config["output_dir"], "v.txt"), "w") as fh:
            fh.write("v1")
        with open("runs/s.count", "a") as fh:
            fh.write("x\\n")
"""

NAMESPACE = """\
stages:
  - id: s
    type: custom
    config: {executor: "scripts.executors.frames:E", input_dir: data/in, output_dir: build/out}
"""


def test_an_executor_in_a_namespace_package_builds_again_after_an_edit(
    project: Callable[..., Proj],
) -> None:
    """Each command a fresh process over a warm plan cache, as a user runs them: the
    module's file is found without its parent package imported (it used to be a
    ``KeyError: 'scripts'`` traceback once any file changed)."""
    p = project(
        NAMESPACE,
        {"scripts/executors/frames.py": FRAMES, "scripts/other.py": "X = 1\n", "data/in/a": "a"},
    )
    p.path("runs").mkdir(exist_ok=True)
    p.path(".pipemake").mkdir(exist_ok=True)
    p.sub("build", "--no-progress")
    assert p.runs("s") == 1 and p.exists(".pipemake/plan.json")
    p.write("scripts/other.py", "X = 2\n")  # not the executor's module: nothing to run
    for verb in (["dry-run"], ["status"], ["build", "--no-progress"]):
        r = p.sub(*verb)
        assert TRACEBACK not in r.stdout + r.stderr, r.stderr
    assert p.runs("s") == 1
    p.edit("scripts/executors/frames.py", '"v1"', '"v2"')  # its module is in the key
    p.sub("build", "--no-progress")
    assert p.runs("s") == 2 and p.read("build/out/v.txt") == "v2"


def test_a_namespace_module_is_found_without_importing_its_parents(tmp_path: Path) -> None:
    from pipemake.rules.custom import _module_file

    (tmp_path / "nsx_pkg" / "deep").mkdir(parents=True)
    (tmp_path / "nsx_pkg" / "deep" / "mod.py").write_text("A = 1\n")
    (tmp_path / "regx_pkg").mkdir()
    (tmp_path / "regx_pkg" / "__init__.py").write_text("raise SystemExit('never run')\n")
    (tmp_path / "regx_pkg" / "mod.py").write_text("B = 1\n")
    assert "nsx_pkg" not in sys.modules
    found = _module_file("nsx_pkg.deep.mod", str(tmp_path))
    assert found == str(tmp_path / "nsx_pkg" / "deep" / "mod.py")
    assert _module_file("regx_pkg.mod", str(tmp_path)) == str(tmp_path / "regx_pkg" / "mod.py")
    assert _module_file("regx_pkg", str(tmp_path)) == str(tmp_path / "regx_pkg" / "__init__.py")
    assert "nsx_pkg" not in sys.modules and "regx_pkg" not in sys.modules  # nothing imported
    assert _module_file("nsx_pkg.deep.nothere", str(tmp_path)) is None
    assert _module_file("nsx_pkg.deep.mod.sub", str(tmp_path)) is None


def test_a_missing_executor_module_is_exit_2_saying_where_it_was_looked_for(
    project: Callable[..., Proj],
) -> None:
    p = project(NAMESPACE, {"scripts/executors/other.py": "X = 1\n", "data/in/a": "a"})
    r = p.sub("validate", code=2)
    out = r.stdout + r.stderr
    assert TRACEBACK not in out
    assert "pipemake.yaml:4: stage 's': cannot import 'scripts.executors.frames'" in out, out
    assert "scripts/executors/frames.py" in out and "fix the name" in out, out


REEXPORTED = """\
stages:
  - id: s
    type: custom
    config: {executor: "executors:FrameExecutor", output_dir: build/out}
"""


def test_editing_the_file_of_a_re_exported_executor_class_reruns_its_stage(
    project: Callable[..., Proj],
) -> None:
    """``executors/__init__.py`` re-exports the class defined in ``executors/frames.py``:
    both files are in the stage's key."""
    frames = FRAMES.replace("class E:", "class FrameExecutor:")
    p = project(
        REEXPORTED,
        {
            "executors/__init__.py": "from .frames import FrameExecutor\n",
            "executors/frames.py": frames,
        },
    )
    p.path("runs").mkdir(exist_ok=True)
    p.sub("build", "--no-progress")
    assert p.read("build/out/v.txt") == "v1"
    p.edit("executors/frames.py", '"v1"', '"v2"')
    assert "code changed" in p.sub("dry-run").stdout
    p.sub("build", "--no-progress")
    assert p.runs("s") == 2 and p.read("build/out/v.txt") == "v2"
    p.sub("build", "--no-progress")
    assert p.runs("s") == 2


# the original example as the user writes it, with `model: isnet`, on a fresh machine
ORIGINAL = """\
name: character_dataset_pipeline
version: 1.0.0
stages:
  - id: extract
    type: frame_extraction
    depends_on: []
    config:
      input_video: data/clip.mp4
      output_dir: build/frames
      mode: scene
  - id: segment
    type: segmentation
    depends_on: [extract]
    config:
      input_dir: "{extract.output_dir}"
      output_dir: build/segmented
      model: isnet
  - id: cluster
    type: clustering
    depends_on: [segment]
    config:
      input_dir: "{segment.character_dir}"
      output_dir: build/clustered
"""


def test_missing_packages_video_and_model_are_reported_together(
    project: Callable[..., Proj], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The model problem (found while binding the stage) no longer hides the packages and
    the video (checked afterwards)."""
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "empty-home"))
    for hidden in ("av", "rembg", "sklearn"):  # as Python sees a package not installed
        monkeypatch.setitem(sys.modules, hidden, None)
    p = project(ORIGINAL)
    for verb in ("validate", "build"):
        out = p.cli(verb, code=2).output
        assert TRACEBACK not in out
        assert "rembg model 'isnet-general-use' is not on disk" in out, out
        assert re.search(r"pipemake\.yaml:4: stage 'extract': .*needs av", out), out
        assert re.search(r"pipemake\.yaml:11: stage 'segment': .*needs rembg", out), out
        assert re.search(r"pipemake\.yaml:18: stage 'cluster': .*needs sklearn", out), out
        assert "pip install 'pipemake[video,segment,cluster]'" in out, out
        assert re.search(r"pipemake\.yaml:8: stage 'extract': input 'input_video': "
                         r"data/clip.mp4 does not exist", out), out  # fmt: skip
    assert not p.exists("build")


def test_a_path_a_stage_with_a_problem_may_write_is_not_called_missing(
    project: Callable[..., Proj],
) -> None:
    p = project(
        """
        stages:
          - id: a
            type: shel
            config: {cmd: "echo > {outputs.o}", outputs: {o: build/a.txt}}
          - id: b
            type: shell
            config:
              cmd: "cat {inputs.x} {inputs.y} > {outputs.o}"
              inputs: {x: build/a.txt, y: data/nothere.txt}
              outputs: {o: build/b.txt}
        """
    )
    out = p.cli("validate", code=2).output
    assert "unknown rule 'shel'" in out
    assert "data/nothere.txt does not exist" in out, out  # a source input: said as well
    assert "build/a.txt" not in out, out


def test_an_unknown_key_is_said_first_whatever_reference_its_value_holds(
    project: Callable[..., Proj],
) -> None:
    p = project(
        """
        stages:
          - id: a
            type: shell
            config:
              cmdd: "echo hi > {outputs.o}"
              outputs: {o: build/a.txt}
          - id: b
            type: shell
            config:
              cmd: "echo > {outputs.o}"
              outputs: {o: build/b.txt}
              inptus: {x: "{nosuch.o}"}
        """
    )
    out = p.cli("validate", code=2).output
    assert TRACEBACK not in out
    assert "pipemake.yaml:5: stage 'a': unknown key 'cmdd'" in out, out
    assert "did you mean 'cmd'?" in out
    assert "can only be used in a shell stage" not in out
    assert "pipemake.yaml:12: stage 'b': unknown key 'inptus'" in out, out
    assert "did you mean 'inputs'?" in out and "nosuch" not in out


def test_an_unclosed_quote_is_reported_at_the_line_it_opens(
    project: Callable[..., Proj],
) -> None:
    p = project(
        "stages:\n  - id: a\n    type: shell\n    config:\n"
        '      cmd: "echo 1 > {outputs.o}\n      outputs: {o: build/a.txt}\n'
    )
    out = p.cli("validate", code=2).output
    assert "pipemake.yaml:5:" in out and "the quote opened at line 5" in out, out
    assert "never closed" in out
    with pytest.raises(YamlError) as info:
        load_yaml("a: 1\nb: [1, 2\n\n")
    assert info.value.line == 2 and "before the file ended" in str(info.value)


def test_an_unknown_depends_on_is_reported_at_its_line(project: Callable[..., Proj]) -> None:
    p = project(
        """
        stages:
          - id: a
            type: shell
            config: {cmd: "echo > {outputs.o}", outputs: {o: build/a.txt}}
            depends_on: [aa]
        """
    )
    out = p.cli("validate", code=2).output
    assert "pipemake.yaml:5: stage 'a': depends_on names an unknown stage 'aa'" in out, out


def test_f_and_a_different_config_are_refused_naming_both(project: Callable[..., Proj]) -> None:
    text = 'stages:\n  - id: a\n    type: shell\n    config: {cmd: "echo > {outputs.o}", outputs: {o: a.txt}}\n'
    p = project(text)
    p.write("other.yaml", text)
    for verb in ("validate", "run"):
        out = p.cli("-f", str(p.path("pipemake.yaml")), verb, "--config", str(p.path("other.yaml")),
                    code=2).output  # fmt: skip
        assert "name two pipeline files" in out and "other.yaml" in out, out
    assert not p.exists("a.txt")
    p.cli("-f", str(p.path("other.yaml")), "validate", "--config", str(p.path("other.yaml")))


def test_auto_putting_a_short_clip_in_one_cluster_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """9 cut-outs of 3 characters with min_cluster_size 5: one cluster, said as a warning
    in the log and in clusters.json, naming the counts and the params to change."""
    from _character_fixtures import write_cutouts

    from pipemake.rule import Context, Item
    from pipemake.rules.clustering import ClusteringRule

    rule = ClusteringRule()
    labels = write_cutouts(tmp_path / "in", n_characters=3, per_character=3, seed=2)
    ports, problems = rule.ports({"input_dir": "in", "output_dir": "out"})
    assert problems == []
    mapped = {}
    for rel in sorted(labels):
        ctx = Context(tmp_path, {"input_dir": tmp_path / "in" / rel}, {}, ports.params)
        mapped[rel] = rule.map_item(ctx, Item(f"in/{rel}", rel))
    out = tmp_path / "out"
    out.mkdir()
    ctx = Context(tmp_path, {"input_dir": tmp_path / "in"}, {"output_dir": out}, ports.params)
    with caplog.at_level(logging.INFO):
        values = rule.reduce(ctx, mapped)
    assert values["n_clusters"] == 1
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "put all 9 cut-outs in one cluster" in warning
    assert "min_cluster_size (now 5)" in warning and "fewer than two such groups (10)" in warning
    assert "lower min_cluster_size (to 4 or less) or set n_clusters" in warning
    assert json.loads((out / "clusters.json").read_text())["warnings"] == [warning]


def test_the_key_of_a_module_defining_its_class_is_computed_without_importing_it(
    tmp_path: Path,
) -> None:
    """Only a module that re-exports the class is imported to find the class's file: one
    that defines it (and may import torch) is read, not run, by status and dry-run."""
    from pipemake.rules.custom import CustomRule

    (tmp_path / "heavyx_mod.py").write_text(
        "import sys\nsys.modules['heavyx_ran'] = sys\n" + FRAMES.replace("class E:", "class HE:")
    )
    (tmp_path / "reexpx").mkdir()
    (tmp_path / "reexpx" / "__init__.py").write_text("from .impl import RE\n")
    (tmp_path / "reexpx" / "impl.py").write_text(FRAMES.replace("class E:", "class RE:"))
    rule = CustomRule()
    ports, _ = rule.ports({"executor": "heavyx_mod:HE", "output_dir": "out"})
    assert rule.code_files(ports, tmp_path) == [str(tmp_path / "heavyx_mod.py")]
    assert "heavyx_ran" not in sys.modules
    ports, _ = rule.ports({"executor": "reexpx:RE", "output_dir": "out"})
    assert rule.code_files(ports, tmp_path) == [
        str(tmp_path / "reexpx" / "__init__.py"),
        str(tmp_path / "reexpx" / "impl.py"),
    ]

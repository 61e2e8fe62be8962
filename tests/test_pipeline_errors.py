"""Every mistake in a pipeline file: exit code 2 before anything runs, a message naming the
file, the line and the stage, never a traceback (DESIGN.md, "The contract, precisely")."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TRACEBACK, Proj

from pipemake import api
from pipemake import rule as rule_module
from pipemake.rule import Context, Input, Item, Output, Ports, Rule

HEAD = """\
name: t
version: 1
stages:
  - id: ok
    type: shell
    config:
      cmd: "echo x >> runs/ok.count; echo hi > {outputs.o}"
      outputs: {o: build/ok}
"""  # stage 'ok' spans lines 4-8; what a case appends starts at line 9


def _stage(sid: str, body: str, typ: str = "shell") -> str:
    return f"  - id: {sid}\n    type: {typ}\n" + body


SHELL_OK = '    config:\n      cmd: "echo > {outputs.o}"\n      outputs: {o: build/bad}\n'

# name: (text after HEAD, line, stage, fragments the message must hold)
CASES: dict[str, tuple[str, int, str | None, list[str]]] = {
    "unknown rule": (
        _stage("bad", SHELL_OK, typ="shel"),
        10,
        "bad",
        ["unknown rule", "shel", "shell"],
    ),
    "unknown config key": (
        _stage(
            "bad",
            '    config:\n      cmd: "echo > {outputs.o}"\n'
            "      outputs: {o: build/bad}\n      colour: red\n",
        ),
        14,
        "bad",
        ["colour"],
    ),
    "the whole project as an input holds the stage's own output": (
        _stage(
            "bad",
            '    config:\n      cmd: "ls {inputs.d} > {outputs.o}"\n'
            "      inputs: {d: .}\n      outputs: {o: build/bad}\n",
        ),
        9,
        "bad",
        ["overlaps its own input", "(.)"],
    ),
    "unknown stage key": (_stage("bad", "    bogus: 1\n" + SHELL_OK), 11, "bad", ["bogus"]),
    "a config key written beside type: instead of under config:": (
        _stage("bad", '    cmd: "echo > {outputs.o}"\n' + SHELL_OK),
        11,
        "bad",
        ["unknown stage key 'cmd'", "'cmd' is a config key of rule 'shell'", "under 'config:'"],
    ),
    "wrong type: retries": (
        _stage("bad", "    retries: many\n" + SHELL_OK),
        11,
        "bad",
        ["retries", "many"],
    ),
    "wrong type: timeout": (
        _stage("bad", "    timeout: soon\n" + SHELL_OK),
        11,
        "bad",
        ["timeout", "soon"],
    ),
    "wrong type: retry_backoff": (
        _stage("bad", "    retry_backoff: slow\n" + SHELL_OK),
        11,
        "bad",
        ["retry_backoff", "slow"],
    ),
    "wrong type: cmd": (
        _stage("bad", "    config:\n      cmd: [echo, 3]\n      outputs: {o: build/bad}\n"),
        12,
        "bad",
        ["cmd"],
    ),
    "wrong type: outputs": (
        _stage("bad", '    config:\n      cmd: "echo"\n      outputs: [build/bad]\n'),
        13,
        "bad",
        ["outputs"],
    ),
    "missing source input": (
        _stage(
            "bad",
            '    config:\n      cmd: "cat {inputs.i} > {outputs.o}"\n'
            "      inputs: {i: data/nope.txt}\n      outputs: {o: build/bad}\n",
        ),
        None,
        "bad",
        ["data/nope.txt"],
    ),
    "cycle through depends_on": (
        _stage("a", "    depends_on: [b]\n" + SHELL_OK.replace("build/bad", "build/a"))
        + _stage("b", "    depends_on: [a]\n" + SHELL_OK.replace("build/bad", "build/b")),
        None,
        None,
        ["a → b → a|b → a → b"],
    ),
    "cycle through references": (
        _stage(
            "a",
            '    config:\n      cmd: "cp {inputs.i} {outputs.o}"\n'
            '      inputs: {i: "{b.o}"}\n      outputs: {o: build/a}\n',
        )
        + _stage(
            "b",
            '    config:\n      cmd: "cp {inputs.i} {outputs.o}"\n'
            '      inputs: {i: "{a.o}"}\n      outputs: {o: build/b}\n',
        ),
        None,
        None,
        ["a → b → a|b → a → b"],
    ),
    "stage references itself": (
        _stage(
            "bad",
            '    config:\n      cmd: "cp {inputs.i} {outputs.o}"\n'
            '      inputs: {i: "{bad.o}"}\n      outputs: {o: build/bad}\n',
        ),
        None,
        "bad",
        ["cycle|itself|own output"],
    ),
    "unknown stage reference": (
        _stage(
            "bad",
            '    config:\n      cmd: "cp {inputs.i} {outputs.o}"\n'
            '      inputs: {i: "{zzz.o}"}\n      outputs: {o: build/bad}\n',
        ),
        13,
        "bad",
        ["zzz"],
    ),
    "unknown output reference": (
        _stage(
            "bad",
            '    config:\n      cmd: "cp {inputs.i} {outputs.o}"\n'
            '      inputs: {i: "{ok.nope}"}\n      outputs: {o: build/bad}\n',
        ),
        13,
        "bad",
        ["nope", "ok"],
    ),
    "unknown depends_on": (
        _stage("bad", "    depends_on: [ghost]\n" + SHELL_OK),
        None,
        "bad",
        ["ghost"],
    ),
    "unknown variable": (
        _stage(
            "bad",
            '    config:\n      cmd: "echo {vars.nope} > {outputs.o}"\n'
            "      outputs: {o: build/bad}\n",
        ),
        12,
        "bad",
        ["vars.nope"],
    ),
    "unknown reference in cmd": (
        _stage(
            "bad",
            '    config:\n      cmd: "echo {inputs.nope} > {outputs.o}"\n'
            "      outputs: {o: build/bad}\n",
        ),
        12,
        "bad",
        ["nope"],
    ),
    "duplicate id": (_stage("ok", SHELL_OK), 9, "ok", ["duplicate", "line 4"]),
    "output equal to another stage's output": (
        _stage("bad", SHELL_OK.replace("build/bad", "build/ok")),
        None,
        "bad",
        ["build/ok"],
    ),
    "output inside another stage's output": (
        _stage("bad", SHELL_OK.replace("build/bad", "build/ok/inner.txt")),
        None,
        "bad",
        ["build/ok/inner.txt", "build/ok"],
    ),
    "output inside its own input": (
        _stage(
            "bad",
            '    config:\n      cmd: "echo > {outputs.o}"\n'
            "      inputs: {i: data}\n      outputs: {o: data/out.txt}\n",
        ),
        None,
        "bad",
        ["data/out.txt", "data"],
    ),
    "unquoted reference read as a mapping": (
        _stage(
            "bad",
            '    config:\n      cmd: "cp {inputs.i} {outputs.o}"\n'
            "      inputs:\n        i: {ok.o}\n      outputs: {o: build/bad}\n",
        ),
        14,
        "bad",
        ['"{ok.o}"'],
    ),
    "reserved stage id": (_stage("vars", SHELL_OK), 9, "vars", ["vars"]),
    "invalid stage id": (_stage("9 lives", SHELL_OK), 9, None, ["9 lives"]),
    "output outside the project": (
        _stage("bad", SHELL_OK.replace("build/bad", "../escape.txt")),
        None,
        "bad",
        ["../escape.txt"],
    ),
    "unknown key whose value is a reference": (
        _stage(
            "clu", "    config:\n      input_dir: data\n      output_dir: build/clu\n", "clustering"
        )
        + _stage(
            "bad",
            '    config:\n      charcter_dirs: "{clu.cluster_dirs}"\n      output_dir: build/p\n',
            "training_data_prep",
        ),
        17,
        "bad",
        ["charcter_dirs", "did you mean 'character_dirs'"],
    ),
    "unknown shell key whose value is a reference": (
        _stage(
            "py",
            "    config:\n      function: os.path:join\n      outputs: {o: build/py}\n",
            "python",
        )
        + _stage("bad", '    config:\n      cmnd: "{py.anything}"\n      outputs: {o: build/b}\n'),
        17,
        "bad",
        ["cmnd", "did you mean 'cmd'"],
    ),
    "one key under its name and an alias": (
        _stage(
            "bad",
            "    config:\n      input_dirs: [data]\n      character_dirs: [data]\n"
            "      output_dir: build/p\n",
            "training_data_prep",
        ),
        13,
        "bad",
        ["input_dirs", "character_dirs"],
    ),
    "per-item rule with foreach off": (
        _stage(
            "bad",
            "    foreach: false\n    config:\n      input_dir: data\n      output_dir: build/c\n",
            "clustering",
        ),
        11,
        "bad",
        ["clustering", "per item", "foreach"],
    ),
    "foreach naming no input": (
        _stage(
            "bad",
            "    foreach: input_dri\n    config:\n      input_dir: data\n"
            "      output_dir: build/c\n",
            "segmentation",
        ),
        11,
        "bad",
        ["input_dri", "input_dir"],
    ),
    "output holding the project": (
        _stage("bad", SHELL_OK.replace("build/bad", "/")),
        13,
        "bad",
        ["project"],
    ),
}


def _check(p: Proj, out: str, line: int | None, stage: str | None, fragments: list[str]) -> None:
    assert TRACEBACK not in out, out
    assert "pipemake.yaml" in out, out
    m = re.search(r"pipemake\.yaml:(\d+)", out)
    assert m, f"no line number in:\n{out}"
    if line is not None:
        lines = [int(x) for x in re.findall(r"pipemake\.yaml:(\d+)", out)]
        assert line in lines, f"expected line {line} in:\n{out}"
    if stage is not None:
        assert f"'{stage}'" in out or f'"{stage}"' in out, out
    for frag in fragments:
        assert re.search("|".join(re.escape(f) for f in frag.split("|")), out), (frag, out)
    assert p.run_counts() == {}
    assert not p.exists("build")


@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_mistake_is_exit_2_with_file_line_and_stage(project, case: str) -> None:
    body, line, stage, fragments = CASES[case]
    p = project(HEAD + body, {"data/a.txt": "a\n"})
    for verb in ("build", "validate", "dry-run"):
        out = p.cli(verb, code=2).output
        _check(p, out, line, stage, fragments)


def test_malformed_yaml(project) -> None:
    p = project(
        HEAD + '  - id: bad\n    type: shell\n    config: {cmd: "x", outputs: {o: y}\n'
        "  - id: other\n"
    )
    out = p.cli("build", code=2).output
    assert TRACEBACK not in out
    lines = [int(x) for x in re.findall(r"pipemake\.yaml:(\d+)", out)]
    assert lines and 11 <= lines[0] <= 12, out
    assert "YAML" in out or "yaml" in out
    assert p.run_counts() == {}


def test_pipeline_that_is_not_a_mapping(project) -> None:
    p = project("- just\n- a list\n")
    out = p.cli("validate", code=2).output
    assert "pipemake.yaml:1" in out and TRACEBACK not in out


def test_missing_pipeline_file_is_exit_2(project, tmp_path) -> None:
    p = project(HEAD)
    out = p.cli("-f", "other.yaml", "build", code=2).output
    assert "other.yaml" in out and TRACEBACK not in out


def test_error_names_the_file_given_with_f(project) -> None:
    p = project(HEAD)
    p.write("alt.yaml", HEAD + _stage("bad", SHELL_OK, typ="shel"))
    out = p.cli("-f", "alt.yaml", "validate", code=2).output
    assert re.search(r"alt\.yaml:10", out), out


def test_several_mistakes_are_reported_together(project) -> None:
    p = project(
        HEAD
        + _stage("bad", SHELL_OK, typ="shel")
        + _stage("worse", SHELL_OK.replace("build/bad", "build/w"), typ="shll")
    )
    out = p.cli("validate", code=2).output
    assert "'shel'" in out and "'shll'" in out


def test_a_produced_input_is_not_a_missing_source(project) -> None:
    p = project(
        HEAD
        + _stage(
            "bad",
            '    config:\n      cmd: "cat {inputs.i} > {outputs.o}"\n'
            "      inputs: {i: build/ok}\n"
            "      outputs: {o: build/bad}\n",
        )
    )
    p.cli("validate")
    p.cli("build")
    assert p.read("build/bad") == "hi\n"


@pytest.mark.slow
def test_no_traceback_from_a_real_process(project) -> None:
    body, *_ = CASES["wrong type: timeout"]
    p = project(HEAD + body)
    proc = p.sub("build", code=2)
    assert TRACEBACK not in proc.stderr, proc.stderr
    assert "timeout" in proc.stderr
    proc = p.sub("build", "nosuchstage", code=None)
    assert TRACEBACK not in proc.stderr


class _PerItemOnly(Rule):
    """A third-party rule with run_item and no whole-stage run, and no default foreach."""

    name = "per_item_only"
    inputs = {"src": Input(kind="dir")}
    outputs = {"out": Output(kind="dir")}

    def run_item(self, ctx: Context, item: Item) -> None:
        dest = Path(ctx.outputs["out"], item.relpath)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("seen\n")


class _PerItemByDefault(_PerItemOnly):
    """The same rule, declaring its default foreach."""

    name = "per_item_by_default"
    default_foreach = "src"


class _NoCode(Rule):
    """A rule with declarations and no code at all."""

    name = "no_code"
    inputs = {"src": Input(kind="dir")}
    outputs = {"out": Output(kind="dir")}


RULE_STAGE = """\
name: t
stages:
  - id: s
    type: {rule}
{foreach}    config: {{src: data, out: build/out}}
"""


@pytest.fixture
def third_party() -> Iterator[None]:
    classes = (_PerItemOnly, _PerItemByDefault, _NoCode)
    for cls in classes:
        rule_module.register_rule(cls.name, cls)
    yield
    for cls in classes:
        rule_module.unregister_rule(cls.name)


@pytest.mark.parametrize(
    ("rule", "foreach", "line", "words"),
    [
        ("per_item_only", "", 4, ["per item", "add foreach: src"]),
        ("per_item_by_default", "    foreach: false\n", 5, ["per item", "foreach: src"]),
        ("no_code", "", 4, ["neither run()"]),
        ("no_code", "    foreach: src\n", 5, ["neither run()"]),
    ],
)
def test_a_rule_that_cannot_run_so_is_a_validate_error(
    project, third_party, rule: str, foreach: str, line: int, words: list[str]
) -> None:
    p = project(RULE_STAGE.format(rule=rule, foreach=foreach), {"data/a.txt": "a"})
    for verb in ("validate", "build", "dry-run"):
        out = p.cli(verb, code=2).output
        assert TRACEBACK not in out and "NotImplementedError" not in out, out
        assert f"pipemake.yaml:{line}" in out and "'s'" in out, out
        for word in words:
            assert word in out, (word, out)
    assert not p.exists("build")


def test_a_rule_with_default_foreach_runs_per_item_without_foreach(project, third_party):
    p = project(
        RULE_STAGE.format(rule="per_item_by_default", foreach=""),
        {"data/a.txt": "a", "data/sub/b.txt": "b"},
    )
    with api.project_of(p.root, None) as proj:
        assert proj.pipeline.stages["s"].foreach is not None
        api.build(proj, executor="inline")
    assert p.read("build/out/a.txt") == "seen\n" and p.read("build/out/sub/b.txt") == "seen\n"


PACKAGES = """\
name: t
stages:
  - id: extract
    type: frame_extraction
    config: {input_video: data/clip.mp4, output_dir: build/frames}
  - id: segment
    type: segmentation
    config: {input_dir: "{extract.output_dir}", output_dir: build/cut}
  - id: cluster
    type: clustering
    config: {input_dir: "{segment.character_dir}", output_dir: build/clusters}
  - id: prepare
    type: training_data_prep
    config: {character_dirs: "{cluster.cluster_dirs}", output_dir: build/set}
"""


def test_missing_packages_are_reported_together_with_one_install_line(
    project, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from _onnx_fixtures import install_named_model

    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "home"))
    install_named_model(tmp_path / "home", "u2net")
    p = project(PACKAGES, {"data/clip.mp4": "not really a video"})
    p.path(".pipemake").mkdir()
    p.cli("validate")  # everything installed: valid, and the checked plan is cached
    assert p.exists(".pipemake/plan.json")
    for hidden in ("av", "rembg", "torch"):  # as Python sees a package not installed
        monkeypatch.setitem(sys.modules, hidden, None)
    for verb in ("validate", "build", "dry-run", "uncached"):
        if verb == "uncached":  # the same from a full load of the file
            p.path(".pipemake/plan.json").unlink()
            verb = "validate"
        out = p.cli(verb, code=2).output
        assert TRACEBACK not in out
        assert re.search(r"pipemake\.yaml:3: stage 'extract': .*needs av", out), out
        assert re.search(r"pipemake\.yaml:6: stage 'segment': .*needs rembg", out), out
        assert re.search(r"pipemake\.yaml:9: stage 'cluster': .*needs torch", out), out
        assert "prepare" not in out
        [line] = [x for x in out.splitlines() if "pip install" in x]
        assert line.endswith("pip install 'pipemake[video,segment,cluster]'"), line
    assert not p.exists("build")


def test_foreach_true_false_and_none(project, third_party) -> None:
    """``foreach: true`` is the rule's default input, ``false``/``none`` runs whole."""
    p = project(
        """
        name: t
        stages:
          - id: each
            type: per_item_by_default
            foreach: true
            config: {src: data, out: build/each}
          - id: whole
            type: shell
            foreach: none
            config: {cmd: "cp -r {inputs.a} {outputs.o}", inputs: {a: data}, outputs: {o: build/o}}
        """,
        {"data/a.txt": "a"},
    )
    with api.project_of(p.root, None) as proj:
        stages = proj.pipeline.stages
        assert stages["each"].foreach is not None and stages["each"].foreach.input == "src"
        assert stages["whole"].foreach is None
    p.edit("pipemake.yaml", "foreach: none", "foreach: true")
    out = p.cli("validate", code=2).output
    assert "pipemake.yaml:9" in out and "foreach: true needs an input name" in out, out
    assert "write foreach: a" in out


def test_a_missing_input_named_from_another_folder_says_where_it_was_looked_for(
    project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paths are relative to the pipeline file's folder, not to where the command runs: from
    the folder above, the error names the path it looked for."""
    from click.testing import CliRunner

    from pipemake.cli import cli

    p = project(
        "stages:\n  - id: a\n    type: shell\n    config: {cmd: 'cat {inputs.i} > {outputs.o}',"
        " inputs: {i: data/in.txt}, outputs: {o: out.txt}}\n",
        name="sub",
    )
    (p.root.parent / "data").mkdir()
    (p.root.parent / "data" / "in.txt").write_text("here, beside the command, not the file\n")
    monkeypatch.chdir(p.root.parent)
    result = CliRunner().invoke(cli, ["validate", "--config", "sub/pipemake.yaml"])
    assert result.exit_code == 2, result.output
    assert "data/in.txt does not exist (looked for sub/data/in.txt: paths are relative to" in (
        result.output
    )
    monkeypatch.chdir(p.root)
    here = CliRunner().invoke(cli, ["validate"]).output
    assert "data/in.txt does not exist\n" in here and "looked for" not in here


class _PathCheck(Rule):
    """A third-party rule whose check reads its input as a path (it expects a str)."""

    name = "path_check"
    inputs = {"src": Input(kind="dir")}
    outputs = {"out": Output(kind="dir")}

    def check(self, ports: Ports) -> list[tuple[str, str]]:
        name = Path(ports.inputs["src"]).name  # a placeholder while the upstream computes it
        return [("src", "the folder must not be called 'bad'")] if name == "bad" else []

    def run(self, ctx: Context) -> None:
        Path(ctx.outputs["out"]).mkdir(parents=True, exist_ok=True)
        Path(ctx.outputs["out"], "n.txt").write_text(
            str(len(list(Path(ctx.inputs["src"]).iterdir())))
        )


@pytest.mark.parametrize(("where", "code"), [("good", 0), ("bad", 1)])
def test_a_check_that_needs_an_input_an_upstream_computes_is_asked_once_it_is_known(
    project, where: str, code: int
) -> None:
    """Loading, the input is only a placeholder: the rule's check may fail on it, and that
    is no error (nor a traceback); it is asked again with the value, before the stage runs."""
    rule_module.register_rule(_PathCheck.name, _PathCheck)
    try:
        step = (
            "from pathlib import Path\n"
            "def run(ctx):\n"
            f"    d = Path(ctx.outputs['d'], '{where}')\n"
            "    d.mkdir(parents=True)\n"
            "    (d / 'a').write_text('hi')\n"
            f"    return {{'where': 'build/up/{where}'}}\n"
        )
        p = project(
            "stages:\n"
            "  - id: up\n    type: python\n"
            "    config: {function: 'upstep:run', outputs: {d: build/up}}\n"
            "  - id: use\n    type: path_check\n"
            '    config: {src: "{up.where}", out: build/use}\n',
            {"upstep.py": step},
            name=f"pc_{where}",
        )
        assert TRACEBACK not in p.cli("validate").output
        result = p.cli("build", code=code)
        assert TRACEBACK not in result.output
        if code == 0:
            assert p.read("build/use/n.txt") == "1"
        else:
            assert "must not be called 'bad'" in result.output
    finally:
        rule_module.unregister_rule(_PathCheck.name)


def test_an_output_path_an_upstream_would_compute_is_refused_at_validate(project) -> None:
    """Where a stage writes must be known before anything runs (it orders the stages and
    says what is restored): an output taken from a computed value is exit 2, at its line."""
    p = project(
        "stages:\n"
        "  - id: up\n    type: python\n"
        "    config: {function: 'upw:run', outputs: {o: build/a.txt}}\n"
        "  - id: down\n    type: shell\n    config:\n"
        "      cmd: 'mkdir -p {outputs.d}'\n"
        "      outputs: {d: '{up.where}'}\n",
        {
            "upw.py": "def run(ctx):\n    ctx.outputs['o'].write_text('x')\n    return {'where': 'b'}\n"
        },
    )
    for command in ("validate", "build"):
        out = p.cli(command, code=2).output
        assert "pipemake.yaml:9: stage 'down': output 'd' is an upstream stage's computed" in out
        assert TRACEBACK not in out
    assert not p.exists("build")

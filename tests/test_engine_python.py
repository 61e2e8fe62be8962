"""``python`` stages: a function of the user's, its source part of the key unless the stage
pins a ``version``."""

from __future__ import annotations

import pytest
from conftest import TRACEBACK, Proj

MODULE = '''\
"""The user's steps."""
from pathlib import Path


def shout(ctx):
    (Path(ctx.root) / "runs" / "shout.count").open("a").write("x\\n")
    text = Path(ctx.inputs["src"]).read_text()
    factor = ctx.params.get("factor", 1)
    Path(ctx.outputs["out"]).write_text(text.upper() * factor)
    return {"chars": len(text)}


def broken(ctx):
    raise ValueError("the data is not what I expected")
'''

PIPELINE = """
name: py
version: 1
stages:
  - id: shout
    type: python
    config:
      function: "mysteps_{tag}:shout"
      inputs: {{src: data/a.txt}}
      outputs: {{out: build/shout.txt}}
      params: {{factor: 2}}
  - id: after
    type: shell
    config:
      cmd: "echo x >> runs/after.count; cat {{inputs.i}} > {{outputs.o}}"
      inputs: {{i: "{{shout.out}}"}}
      outputs: {{o: build/after.txt}}
"""


def _make(project, tag: str, version: str | None = None) -> Proj:
    """A project whose module has a name of its own (the test process imports none)."""
    text = PIPELINE.format(tag=tag)
    if version is not None:
        text = text.replace("    type: python\n", f"    type: python\n    version: {version}\n")
    return project(text, {"data/a.txt": "hi\n", f"mysteps_{tag}.py": MODULE})


def test_python_stage_builds_and_is_then_up_to_date(project) -> None:
    p = _make(project, "build")
    p.cli("build")
    assert p.read("build/shout.txt") == "HI\nHI\n"
    assert p.read("build/after.txt") == "HI\nHI\n"
    p.cli("build")
    assert p.run_counts() == {"shout": 1, "after": 1}


def test_code_change_reruns_the_stage(project) -> None:
    p = _make(project, "code")
    p.cli("build")
    p.edit("mysteps_code.py", "text.upper() * factor", "text.upper() * factor + '!'")
    assert "code" in p.cli("dry-run").stdout.split("shout:", 1)[1].splitlines()[0]
    p.cli("build")
    assert p.read("build/shout.txt") == "HI\nHI\n!"
    assert p.run_counts() == {"shout": 2, "after": 2}


def test_code_change_that_keeps_the_output_is_cut_off(project) -> None:
    p = _make(project, "cutoff")
    p.cli("build")
    p.edit("mysteps_cutoff.py", '"""The user\'s steps."""', '"""The steps, reworded."""')
    p.cli("build")
    assert p.run_counts() == {"shout": 2, "after": 1}


def test_version_pins_the_code(project) -> None:
    p = _make(project, "pinned", version="1")
    p.cli("build")
    p.edit("mysteps_pinned.py", "text.upper() * factor", "text.upper() * factor + '!'")
    p.cli("build")
    assert p.run_counts() == {"shout": 1, "after": 1}
    assert p.read("build/shout.txt") == "HI\nHI\n"
    p.edit("pipemake.yaml", "version: 1\n    config", "version: 2\n    config")
    dry = p.cli("dry-run").stdout
    assert "shout: run" in dry and "version 1 → 2" in dry
    p.cli("build")
    assert p.read("build/shout.txt") == "HI\nHI\n!"
    assert p.run_counts() == {"shout": 2, "after": 2}


def test_params_change_reruns_with_the_reason(project) -> None:
    p = _make(project, "params")
    p.cli("build")
    p.edit("pipemake.yaml", "factor: 2", "factor: 3")
    line = next(x for x in p.cli("dry-run").stdout.splitlines() if x.startswith("shout:"))
    assert line.startswith("shout: run: ") and "factor 2 → 3" in line
    p.cli("build")
    assert p.read("build/shout.txt") == "HI\nHI\nHI\n"
    p.edit("pipemake.yaml", "factor: 3", "factor: 2")
    p.cli("build")
    assert p.run_counts() == {"shout": 2, "after": 2}
    assert p.read("build/shout.txt") == "HI\nHI\n"


def test_function_that_raises_fails_the_stage_with_its_message(project) -> None:
    p = _make(project, "raises")
    p.edit("pipemake.yaml", ":shout", ":broken")
    r = p.cli("build", code=1)
    assert "the data is not what I expected" in r.output
    assert not p.exists("build/shout.txt")


def test_unknown_function_is_a_pipeline_error(project) -> None:
    p = _make(project, "unknown")
    p.edit("pipemake.yaml", ":shout", ":nosuch")
    r = p.cli("build", code=2)
    assert "nosuch" in r.output and "pipemake.yaml:" in r.output and "'shout'" in r.output
    assert TRACEBACK not in r.output
    p.edit("pipemake.yaml", "mysteps_unknown:nosuch", "no_such_module:shout")
    r = p.cli("validate", code=2)
    assert "no_such_module" in r.output


def test_params_with_a_non_string_key_are_refused_or_work_never_a_traceback(project) -> None:
    p = _make(project, "intkey")
    p.edit("pipemake.yaml", "params: {factor: 2}", "params: {factor: 2, 1: one}")
    r = p.cli("build", code=None)
    assert TRACEBACK not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code in (0, 2), r.output
    if r.exit_code == 2:
        assert "pipemake.yaml:" in r.output and "'shout'" in r.output


@pytest.mark.slow
def test_an_edited_module_imported_again_is_the_one_called(project) -> None:
    """In a long-lived process (the library, the inline executor), a module edited and
    imported again between builds is the one the rerun calls, not a remembered function."""
    import sys
    import time

    from pipemake import api

    p = _make(project, "reimport")

    def build() -> None:
        proj = api.open_project(p.root)
        try:
            api.build(proj, executor="inline")
        finally:
            proj.close()

    build()
    assert p.read("build/shout.txt") == "HI\nHI\n"
    time.sleep(1.1)  # a new mtime, past the racy second
    p.write("mysteps_reimport.py", MODULE.replace("text.upper()", "text.lower() + '!'"))
    sys.modules.pop("mysteps_reimport", None)
    build()
    assert p.read("build/shout.txt") == "hi\n!!"  # the new function, not the old
    sys.modules.pop("mysteps_reimport", None)


SCRIPT = '''\
"""A user's script that builds at its top level, with no ``if __name__ == "__main__":``."""
import sys
from pipemake import api, register_rule
from pipemake.rules.original import StageExecutor


class Loud(StageExecutor):
    """An executor of the original system's kind, defined in the script itself."""

    def validate_config(self):
        return True

    def execute(self, inputs):
        target = self._get_config_value("output_file")
        with open(target, "w") as fh:
            fh.write("loud\\n")
        return self._create_success_result(outputs={"output_file": target})


register_rule("loud", Loud)
with api.project_of(sys.argv[1], None) as project:
    report = api.build(project, jobs=2)
print("ran:", ",".join(sorted(report.ran)))
'''


@pytest.mark.slow
def test_a_script_without_a_main_guard_builds_and_ends(project, tmp_path) -> None:
    """Worker processes do not run the user's script again (``multiprocessing`` would import
    it as ``__mp_main__``): a top-level build there would wait for this build's lock
    forever. A python stage runs in a worker, a rule class of the script in a thread."""
    import subprocess
    import sys

    p = _make(project, "script")
    text = p.read("pipemake.yaml") + (
        "  - id: noisy\n    type: loud\n    config: {output_file: build/loud.txt}\n"
    )
    p.write("pipemake.yaml", text)
    script = tmp_path / "build_it.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(p.root)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ran: after,noisy,shout"
    assert TRACEBACK not in done.stderr
    assert p.read("build/shout.txt") == "HI\n" * 2 and p.read("build/loud.txt") == "loud\n"

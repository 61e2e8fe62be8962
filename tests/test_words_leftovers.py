"""Six small leftovers of the last acceptance round, each said as the user meets it.

1. A folder of the user's refused as a store is said to be given by the option typed
   (``--checkpoint-dir``, ``--cache-dir``) or the variable ``PIPEMAKE_CACHE_DIR``.
2. Outputs the remote gave are said to be restored from the remote, not from the store.
3. A failing stage whose text shows a staging path says where that output was meant to go.
4. A non-ASCII input path under an ASCII locale is built, not said to be missing.
5. A python or custom stage whose module is gone is exit 2 at validation with a warm plan.
6. A foreach item's retry waiting for a job slot is queue time, not run time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TRACEBACK, Proj

from pipemake import eventshape
from pipemake.events import Event
from pipemake.progress import describe

ONE = """
name: t
stages:
  - id: a
    type: shell
    config:
      cmd: "cp {inputs.s} {outputs.o}"
      inputs: {s: data/a.txt}
      outputs: {o: build/a.txt}
"""


# 1. the store refused, named by what named it ------------------------------------------------
@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["run", "--checkpoint-dir", "mine", "--no-progress"], None, "--checkpoint-dir"),
        (["run", "--checkpoint-dir", "mine", "--dry-run"], None, "--checkpoint-dir"),
        (["list", "--checkpoint-dir", "mine"], None, "--checkpoint-dir"),
        (["status", "--checkpoint-dir", "mine"], None, "--checkpoint-dir"),
        (["build", "--cache-dir", "mine", "--no-progress"], None, "--cache-dir"),
        (["build", "--no-progress"], {"PIPEMAKE_CACHE_DIR": "mine"}, "PIPEMAKE_CACHE_DIR"),
    ],
)
def test_a_refused_store_names_the_option_or_variable_that_gave_it(
    project: Callable[..., Proj], args: list[str], env: dict[str, str] | None, named: str
) -> None:
    p = project(ONE, {"data/a.txt": "a\n", "mine/notes.txt": "mine\n"})
    out = p.cli(*args, code=2, env=env).output
    assert f"(given by {named})" in out, out
    assert f"give {named} a new or empty folder" in out, out
    others = {"--checkpoint-dir", "--cache-dir", "PIPEMAKE_CACHE_DIR"} - {named}
    assert not any(f"given by {o}" in out or f"give {o}" in out for o in others), out
    assert TRACEBACK not in out
    assert p.read("mine/notes.txt") == "mine\n" and not p.exists("build")


# 5. a stage's module deleted after a build, with the plan cached ------------------------------
CUSTOM_EXECUTOR = """
from pathlib import Path


class Write:
    def __init__(self, stage_id, config):
        self.config = config

    def validate_config(self):
        return True

    def execute(self, inputs):
        Path(self.config["output_dir"]).mkdir(parents=True, exist_ok=True)
        (Path(self.config["output_dir"]) / "x.txt").write_text("x")
        return {"status": "success", "outputs": {}}

    def estimate_duration(self):
        return 1.0
"""

GONE = {
    "python": (
        """
        name: t
        stages:
          - id: up
            type: python
            config:
              function: "words_gone_py:up"
              outputs: {o: build/a.txt}
        """,
        "words_gone_py.py",
        "def up(ctx):\n    ctx.outputs['o'].write_text('x')\n",
        "cannot find module 'words_gone_py'",
    ),
    "custom": (
        """
        name: t
        stages:
          - id: up
            type: custom
            config:
              executor: "words_gone_custom:Write"
              output_dir: build/c
        """,
        "words_gone_custom.py",
        CUSTOM_EXECUTOR,
        "words_gone_custom",
    ),
}


@pytest.mark.parametrize("kind", sorted(GONE))
def test_a_deleted_stage_module_is_a_validation_error_with_the_plan_cached(
    project: Callable[..., Proj], kind: str
) -> None:
    text, module, source, said = GONE[kind]
    p = project(text, {module: source})
    # a subprocess each: a module imported once stays importable in this interpreter
    p.sub("build", "--no-progress")
    p.sub("build", "--no-progress")  # the plan is cached from here on
    assert p.exists(".pipemake/plan.json")
    p.path(module).unlink()
    shown = []
    for command in (["build", "--no-progress"], ["validate"]):
        warm = p.sub(*command, code=None)
        text_out = warm.stdout + warm.stderr
        assert warm.returncode == 2, text_out
        assert "pipemake.yaml:6: stage 'up': " in text_out and said in text_out, text_out
        assert TRACEBACK not in text_out and "FAILED" not in text_out
        shown.append(warm.stderr)
    p.path(".pipemake/plan.json").unlink(missing_ok=True)
    cold = p.sub("validate", code=2)
    assert shown == [cold.stderr, cold.stderr]  # the very message a cold validate gives
    p.write(module, source)  # back again: builds, and the plan is cached again
    p.sub("build", "--no-progress")


# 3. a failure that shows a staging path says where the output was meant to go ----------------
def _failed_errors(p: Proj) -> dict[str, str]:
    """Each failed stage's error in the last run's log."""
    events = [json.loads(line) for line in p.cli("log", "--json").stdout.splitlines()]
    return {e["stage"]: e["error"] for e in events if e.get("event") == "stage_failed"}


def test_a_failure_showing_the_staging_path_maps_it_to_the_declared_output(
    project: Callable[..., Proj],
) -> None:
    p = project(
        """
        name: t
        stages:
          - id: a
            type: shell
            config:
              cmd: "echo writing {outputs.o}/x >&2; exit 3"
              outputs: {o: build/out}
          - id: quiet
            type: shell
            config: {cmd: "echo nothing here >&2; exit 4", outputs: {o: build/q.txt}}
        """
    )
    out = p.cli("build", "-k", "--no-progress", code=1).output
    errors = _failed_errors(p)
    error = errors["a"]
    staged = next(w for w in error.split() if w.startswith(".pipemake/tmp/a-"))
    assert staged.endswith("/o/out/x")
    folder = staged[: -len("o/out/x")]
    note = f"staging folder: {folder} (removed when the stage failed)"
    assert note in error and f"{folder}o/out → build/out" in error, error
    assert note in out  # the summary says it too
    assert not p.exists(folder)
    # the command's own output, in its log, is as it wrote it
    log = p.read(".pipemake/logs/a.log")
    assert f"writing {folder}o/out/x" in log and "staging folder" not in log
    assert "build/out" not in log
    # no staging path shown: nothing added
    assert "nothing here" in errors["quiet"] and "staging folder" not in errors["quiet"]


def test_a_foreach_or_python_failure_showing_its_staging_folder_says_so_too(
    project: Callable[..., Proj],
) -> None:
    p = project(
        """
        name: t
        stages:
          - id: each
            type: shell
            foreach: src
            config:
              cmd: "echo into {outputs.o}/{item.name} >&2; exit 1"
              inputs: {src: data}
              outputs: {o: build/each}
          - id: py
            type: python
            config: {function: "words_staging:fail", outputs: {o: build/p.txt}}
        """,
        {
            "data/x.txt": "x\n",
            "words_staging.py": "def fail(ctx):\n    raise OSError(f'cannot write {ctx.outputs[\"o\"]}')\n",
        },
    )
    p.cli("build", "-k", "--no-progress", code=1)
    errors = _failed_errors(p)
    assert "staging folder: .pipemake/tmp/each-" in errors["each"], errors["each"]
    assert "…/o → build/each" in errors["each"]
    # python's outputs are absolute paths: the note names the absolute staging path
    assert f"{p.root}/.pipemake/tmp/py-" in errors["py"]
    assert "/o/p.txt → build/p.txt" in errors["py"], errors["py"]


# 6. a foreach item's retry waiting for a job slot ------------------------------------------------
def test_a_foreach_retrys_wait_for_a_job_slot_is_not_its_run_time(
    project: Callable[..., Proj],
) -> None:
    p = project(
        """
        name: q
        stages:
          - id: flaky
            type: shell
            foreach: src
            retries: 1
            retry_backoff: 0.05
            config:
              cmd: >-
                if [ -e tried ]; then cp {inputs.src} {outputs.o}/{item.name};
                else touch tried; exit 1; fi
              inputs: {src: data}
              outputs: {o: build/f}
          - id: other
            type: shell
            config: {cmd: "sleep 2; echo ok > {outputs.o}", outputs: {o: build/s.txt}}
        """,
        {"data/x.txt": "x\n"},
    )
    out = p.cli("build", "-j", "1", "--no-progress").output
    events = [json.loads(line) for line in p.cli("log", "--json").stdout.splitlines()]
    done = {e["stage"]: e for e in events if e.get("event") == "stage_finished"}
    order = [e["stage"] for e in events if e.get("event") == "task_started"]
    assert order == ["flaky", "other", "flaky"]  # the item's retry waited for other's slot
    flaky, other = done["flaky"], done["other"]
    # other ran while the retry waited: that wait is flaky's queue time, not its run time
    assert flaky["duration"] < other["duration"]
    assert flaky["queued"] > flaky["duration"]
    assert p.read("build/f/x.txt") == "x\n"
    row = next(r for r in json.loads(p.cli("status", "--json").stdout)["stages"]
               if r["stage"] == "flaky")  # fmt: skip
    assert row["last_duration"] == flaky["duration"]
    assert "flaky: attempt 2 of 2" in out


# 2. restored from the remote, said so ------------------------------------------------------------
def _restores(p: Proj) -> list[dict[str, object]]:
    events = [json.loads(line) for line in p.cli("log", "--json").stdout.splitlines()]
    return [e for e in events if e.get("event") == "stage_restored"]


def test_outputs_the_remote_gave_are_said_restored_from_the_remote(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    env = {"PIPEMAKE_REMOTE": f"file://{tmp_path / 'remote'}", "PIPEMAKE_CACHE_KEY": ""}
    files = {"data/a.txt": "a\n"}
    first, second = project(ONE, files, name="first"), project(ONE, files, name="second")
    first.cli("build", "--push", "--no-progress", env=env)
    out = second.cli("build", "--no-progress", env=env).output
    assert "a: restored from the remote (" in out and "from the store" not in out, out
    assert [e.get("source") for e in _restores(second)] == ["remote"]
    assert "a: restored from the remote (" in second.cli("log").output
    status = second.cli("status", env=env).output
    assert "[last: restored from the remote;" in status, status
    rows = json.loads(second.cli("status", "--json", env=env).output)["stages"]
    assert rows[0]["last_restored"] and rows[0]["last_restored_from"] == "remote"
    # the local store has them now: the next restore is the store's
    second.path("build/a.txt").unlink()
    out = second.cli("build", "--no-progress", env=env).output
    assert "a: restored from the store (" in out and "from the remote" not in out, out
    assert [e.get("source") for e in _restores(second)] == ["store"]
    assert "[last: restored from the store;" in second.cli("status", env=env).output
    assert second.read("build/a.txt") == "a\n"


def test_a_restores_source_in_a_run_log_is_checked_as_text() -> None:
    good = {"event": "stage_restored", "stage": "a", "source": "remote"}
    bad = {"event": "stage_restored", "stage": "a", "source": ["remote"]}
    assert eventshape.event(good)["source"] == "remote"
    assert "source" not in eventshape.event(bad)
    said = describe(Event("stage_restored", "a", {"source": ["x"], "reasons": []}))
    assert said is not None and "restored from the store" in said  # never a TypeError


# 4. a non-ASCII input path under an ASCII locale -------------------------------------------------
ASCII = {"LANG": "C", "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
NON_ASCII_INPUTS = """
name: t
stages:
  - id: one
    type: shell
    config:
      cmd: "cp {inputs.s} {outputs.o}"
      inputs: {s: données/a.txt}
      outputs: {o: build/a.txt}
  - id: each
    type: shell
    foreach: s
    config:
      cmd: "cp {inputs.s} {outputs.o}/{item.name}"
      inputs: {s: données}
      outputs: {o: build/each}
"""


def _ascii(proj: Proj, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("PIPEMAKE_CACHE_DIR", "LC_CTYPE")}
    env.update(ASCII)
    env.pop("PYTHONIOENCODING", None)
    return subprocess.run(proj.argv(*args), capture_output=True, env=env, timeout=60)


def test_a_non_ascii_input_under_an_ascii_locale_is_named_with_the_fix_not_missing(
    project: Callable[..., Proj],
) -> None:
    p = project(NON_ASCII_INPUTS, {"données/a.txt": "a\n"})
    assert p.path("données/a.txt").read_bytes() == b"a\n"  # there, as UTF-8 bytes
    for warm in (False, True):
        for command in (["validate"], ["build", "--no-progress"]):
            done = _ascii(p, *command)
            text = (done.stdout + done.stderr).decode("utf-8", "replace")
            assert done.returncode == 2, text
            assert "does not exist" not in text and TRACEBACK not in text, text
            for line, stage, shown in ((3, "one", "données/a.txt"), (9, "each", "données")):
                said = f"pipemake.yaml:{line}: stage '{stage}': input 's' ({shown}): "
                assert said + "this locale's encoding (ascii) cannot name" in text, text
            assert "LC_ALL=C.UTF-8" in text and "PYTHONUTF8=1" in text
            assert not p.exists("build")
        if not warm:  # built under a UTF-8 locale: the plan is cached; the same answer
            p.sub("build", "--no-progress")
            p.sub("build", "--no-progress")
            assert p.exists(".pipemake/plan.json")
            assert p.read("build/each/a.txt") == "a\n"
            shutil.rmtree(p.path("build"))


def test_an_ascii_input_missing_under_an_ascii_locale_still_does_not_exist(
    project: Callable[..., Proj],
) -> None:
    p = project(ONE)
    done = _ascii(p, "validate")
    text = (done.stdout + done.stderr).decode()
    assert done.returncode == 2 and "input 's': data/a.txt does not exist" in text, text


EACH = """
name: t
stages:
  - id: each
    type: shell
    foreach: s
    config:
      cmd: "cp {inputs.s} {outputs.o}/{item.name}"
      inputs: {s: data}
      outputs: {o: build/each}
"""


def test_foreach_items_the_remote_gave_are_said_restored_from_the_remote(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    env = {"PIPEMAKE_REMOTE": f"file://{tmp_path / 'remote'}", "PIPEMAKE_CACHE_KEY": ""}
    first = project(EACH, {"data/a.txt": "a\n", "data/b.txt": "b\n", "data/c.txt": "c\n"})
    second = project(EACH, {"data/a.txt": "a\n", "data/b.txt": "b\n"}, name="second")
    first.cli("build", "--push", "--no-progress", env=env)
    # another set of items: no entry for the stage, one for each item
    out = second.cli("build", "--no-progress", env=env).output
    assert "each: restored from the remote (2 items;" in out, out
    assert "items are in the remote" in out and "from the store" not in out, out
    assert [e.get("source") for e in _restores(second)] == ["remote"]
    assert "[last: restored from the remote;" in second.cli("status", env=env).output
    assert second.read("build/each/b.txt") == "b\n"


def test_a_refused_remembered_store_names_the_file_that_remembers_it(
    project: Callable[..., Proj],
) -> None:
    p = project(ONE, {"data/a.txt": "a\n"})
    p.cli("build", "--cache-dir", "kept", "--no-progress")
    shutil.rmtree(p.path("kept"))
    p.write("kept/notes.txt", "mine\n")
    for args in (["build", "--no-progress"], ["run", "--no-progress"]):
        out = p.cli(*args, code=2).output
        assert f"(remembered in {p.root}/.pipemake/store.json)" in out, out
        assert "--cache-dir DIR (run: --checkpoint-dir DIR)" in out and "given by" not in out
    assert p.read("kept/notes.txt") == "mine\n"

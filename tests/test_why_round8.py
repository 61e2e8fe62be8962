"""Why a stage reruns when a params-file value or a variable changes: the reference that
changed and its values (``params.lr 42 → 43``, ``vars.x a → b``), as DVC names the params
key, in dry-run, status, the build's line, ``pipemake log`` and ``--json``; an edited
template is still ``param cmd … → …``. The stage's key does not change with this."""

from __future__ import annotations

import json
import sqlite3

from conftest import Proj, counted

from pipemake.state import WorkspaceState

TRAIN = f"""
name: w
params: params.yaml
vars: {{x: a}}
stages:
  - id: train
    type: shell
    config:
      cmd: "{counted("train", "echo lr={params.lr} epochs={params.epochs} x={vars.x} > {outputs.o}")}"
      outputs: {{o: build/m.txt}}
"""
PARAMS = {"params.yaml": "lr: 42\nepochs: 3\n"}


def _line(p: Proj, *args: str) -> str:
    out = p.cli("dry-run", *args).stdout.strip().splitlines()
    return next(line for line in out if line.startswith("train:"))


def _lock_key(p: Proj) -> str:
    return str(json.loads(p.read("pipemake.lock"))["stages"]["train"]["key"])


def test_a_params_value_change_names_the_key_everywhere(project) -> None:
    p = project(TRAIN, PARAMS)
    p.cli("build", "--no-progress")
    p.edit("params.yaml", "lr: 42", "lr: 43")
    assert _line(p) == "train: run: params.lr 42 → 43"
    status = p.cli("status").stdout
    assert "train: stale (params.lr 42 → 43)" in status, status
    row = json.loads(p.cli("dry-run", "--json").stdout)[0]
    assert row["reasons"] == ["params.lr 42 → 43"] and row["triggers"] == ["param"]
    out = p.cli("build", "--no-progress").output
    assert "train: running (params.lr 42 → 43)" in out, out
    log = p.cli("log").output
    assert "train: running (params.lr 42 → 43)" in log, log
    assert "param cmd" not in out + log + status
    assert p.read("build/m.txt") == "lr=43 epochs=3 x=a\n" and p.runs("train") == 2


def test_a_variable_set_on_the_command_line_names_it(project) -> None:
    p = project(TRAIN, PARAMS)
    p.cli("build", "--no-progress")
    assert _line(p) == "train: up to date"  # caches the checked plan (.pipemake is there)
    assert _line(p, "-S", "vars.x=b") == "train: run: vars.x a → b"
    out = p.cli("build", "--no-progress", "-S", "vars.x=b").output
    assert "train: running (vars.x a → b)" in out, out
    # back without --set: the checked plan cached before carries them too
    plan = json.loads(p.read(".pipemake/plan.json"))
    assert plan["stages"][0]["templates"]["keys"]["cmd"]["refs"]["vars.x"] == "a"
    assert _line(p) == "train: restore: vars.x b → a; cached from an earlier build"


def test_an_edited_template_is_still_the_param(project) -> None:
    p = project(TRAIN, PARAMS)
    p.cli("build", "--no-progress")
    p.edit("pipemake.yaml", "x={vars.x}", "x={vars.x}!")
    line = _line(p)
    assert line.startswith("train: run: param cmd ") and "x=a!" in line, line
    assert "vars.x" not in line and "params.lr" not in line
    p.cli("build", "--no-progress")  # then a value of the edited template: the value
    p.edit("params.yaml", "lr: 42", "lr: 43")
    assert _line(p) == "train: run: params.lr 42 → 43"


def test_an_edit_and_a_value_change_at_once_say_both(project) -> None:
    p = project(TRAIN, PARAMS)
    p.cli("build", "--no-progress")
    p.edit("pipemake.yaml", "x={vars.x}", "x={vars.x}!")
    p.edit("params.yaml", "epochs: 3", "epochs: 4")
    reasons = json.loads(p.cli("dry-run", "--json").stdout)[0]["reasons"]
    assert len(reasons) == 2 and reasons[0].startswith("param cmd "), reasons
    assert "epochs=4 x=a!" in reasons[0] and reasons[1] == "params.epochs 3 → 4", reasons


def test_a_value_change_in_env_and_cmd_is_said_once(project) -> None:
    p = project(
        """
        name: w
        params: params.yaml
        stages:
          - id: train
            type: shell
            config:
              cmd: "echo {params.lr} $LR > {outputs.o}"
              env: {LR: "{params.lr}", N: "{params.n}"}
              outputs: {o: build/m.txt}
        """,
        {"params.yaml": "lr: 1\nn: 2\n"},
    )
    p.cli("build", "--no-progress")
    p.edit("params.yaml", "lr: 1", "lr: 0.5")
    assert _line(p) == "train: run: params.lr 1 → 0.5"


def test_a_python_stage_whose_rule_keys_its_params_one_by_one(project) -> None:
    p = project(
        """
        name: w
        params: params.yaml
        stages:
          - id: s
            type: python
            config:
              function: "why_round8_steps:go"
              params: {sec: "{params.sec}", n: "{params.n}"}
              outputs: {o: build/o.json}
        """,
        {
            "params.yaml": "n: 1\nsec: {a: 1}\n",
            "why_round8_steps.py": "import json\n"
            "def go(ctx):\n"
            "    ctx.outputs['o'].write_text(json.dumps(ctx.params))\n",
        },
    )
    p.cli("build", "--no-progress")
    p.edit("params.yaml", "n: 1", "n: 2")
    p.edit("params.yaml", "a: 1", "a: 3")
    out = p.cli("dry-run").stdout.strip()
    assert out == 's: run: params.n 1 → 2; params.sec {"a": 1} → {"a": 3}', out
    p.edit("pipemake.yaml", 'n: "{params.n}"}', 'n: "{params.n}", m: 5}')
    out = p.cli("dry-run").stdout.strip()
    assert out == "s: run: param m added (5); param n 1 → 2; param sec.a 1 → 3", out


def test_a_foreach_stage(project) -> None:
    p = project(
        """
        name: w
        params: params.yaml
        stages:
          - id: each
            type: shell
            foreach: src
            config:
              cmd: "mkdir -p {outputs.o}; echo {params.scale} > {outputs.o}/{item.stem}.txt"
              inputs: {src: data}
              outputs: {o: build/each}
        """,
        {"params.yaml": "scale: 2\n", "data/a.txt": "a", "data/b.txt": "b"},
    )
    p.cli("build", "--no-progress")
    p.edit("params.yaml", "scale: 2", "scale: 3")
    out = p.cli("dry-run").stdout
    assert out.startswith("each: run: params.scale 2 → 3"), out
    assert "param cmd" not in out
    out = p.cli("build", "--no-progress").output
    assert "each: running (params.scale 2 → 3" in out, out
    assert p.read("build/each/a.txt") == "3\n"


def test_after_a_failed_run_and_on_a_restore(project) -> None:
    p = project(TRAIN.replace("> {outputs.o}", "> {outputs.o}; test {params.lr} != 44"), PARAMS)
    p.cli("build", "--no-progress")
    p.edit("params.yaml", "lr: 42", "lr: 44")
    p.cli("build", "--no-progress", code=1)
    p.edit("params.yaml", "lr: 44", "lr: 43")
    assert _line(p) == "train: run: params.lr 44 → 43 since the failed run"
    p.cli("build", "--no-progress")
    p.edit("params.yaml", "lr: 43", "lr: 42")  # built before: restored from the store
    assert _line(p) == "train: restore: params.lr 43 → 42; cached from an earlier build"


def _drop_templates(p: Proj) -> None:
    """The stage's record as a pipemake from before the field writes it."""
    state = WorkspaceState(p.path(".pipemake/state.db"))
    try:
        record = state.builds.record("train")
        assert record is not None and "templates" in record
        del record["templates"]
        state.builds.set_record("train", record)
    finally:
        state.close()


def test_a_record_without_them_gives_the_param_and_keeps_the_key(project) -> None:
    p = project(TRAIN, PARAMS)
    p.cli("build", "--no-progress")
    key = _lock_key(p)
    _drop_templates(p)
    # an upgrade: the same key, nothing reruns, and the record is left as it was
    assert p.cli("dry-run").stdout.strip() == "train: up to date"
    assert "0 ran" in p.cli("build", "--no-progress").output
    assert _lock_key(p) == key and p.runs("train") == 1
    con = sqlite3.connect(p.path(".pipemake/state.db"))
    try:
        (text,) = con.execute("SELECT record FROM records WHERE stage='train'").fetchone()
    finally:
        con.close()
    assert "templates" not in json.loads(text)
    p.edit("params.yaml", "lr: 42", "lr: 43")
    line = _line(p)
    assert line.startswith("train: run: param cmd ") and "lr=43" in line, line
    p.cli("build", "--no-progress")  # the record written now has them
    p.edit("params.yaml", "lr: 43", "lr: 44")
    assert _line(p) == "train: run: params.lr 43 → 44"

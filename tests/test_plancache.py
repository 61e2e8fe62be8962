"""The checked-plan cache (``.pipemake/plan.json``): reused only while the pipeline file,
pipemake and the rules' code are as they were (issue #18: a rule's default changed by an
edit or an upgrade must never be keyed with the old one)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from conftest import Proj

import pipemake.plancache as plancache

PIPE = """
name: p
stages:
  - id: s
    type: shell
    config:
      cmd: "cp {inputs.i} {outputs.o}"
      inputs: {i: data/a.txt}
      outputs: {o: build/a.txt}
"""


def _loads(monkeypatch, p: Proj) -> list[Path]:
    calls: list[Path] = []
    real = plancache.load_pipeline

    def spy(file, *a, **kw):
        calls.append(Path(file))
        return real(file, *a, **kw)

    monkeypatch.setattr(plancache, "load_pipeline", spy)
    return calls


def test_an_unchanged_project_reuses_the_plan(project: Callable[..., Proj], monkeypatch) -> None:
    p = project(PIPE, {"data/a.txt": "a"})
    p.cli("build")
    p.cli("build", "-B")  # the first build made .pipemake; the plan is cached from the next
    calls = _loads(monkeypatch, p)
    plan = plancache.load_checked(p.path("pipemake.yaml"), p.path(".pipemake"))
    assert calls == [] and list(plan.stages) == ["s"]


def test_the_plan_names_the_rules_code_and_an_edited_rule_means_a_full_load(
    project: Callable[..., Proj], monkeypatch
) -> None:
    p = project(PIPE, {"data/a.txt": "a"})
    p.cli("build")
    p.cli("build", "-B")  # the first build made .pipemake; the plan is cached from the next
    cache = p.path(".pipemake/plan.json")
    doc = json.loads(cache.read_text())
    files = [f for f, *_ in doc["code"]]
    assert any(f.endswith("shell.py") for f in files), files
    assert any(f.endswith("plancache.py") for f in files), files
    # the rule's source as if edited since (its stat differs from the recorded one)
    for row in doc["code"]:
        if row[0].endswith("shell.py"):
            row[2] += 1
    cache.write_text(json.dumps(doc))
    calls = _loads(monkeypatch, p)
    plancache.load_checked(p.path("pipemake.yaml"), p.path(".pipemake"))
    assert calls == [p.path("pipemake.yaml")]


def test_a_damaged_plan_is_a_full_load_not_a_traceback(
    project: Callable[..., Proj], monkeypatch
) -> None:
    p = project(PIPE, {"data/a.txt": "a"})
    p.cli("build")
    p.cli("build", "-B")  # the first build made .pipemake; the plan is cached from the next
    cache = p.path(".pipemake/plan.json")
    doc = json.loads(cache.read_text())
    del doc["stages"][0]["config"]
    cache.write_text(json.dumps(doc))
    calls = _loads(monkeypatch, p)
    plan = plancache.load_checked(p.path("pipemake.yaml"), p.path(".pipemake"))
    assert calls and list(plan.stages) == ["s"]
    p.cli("build")

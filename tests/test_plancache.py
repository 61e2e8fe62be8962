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


RULE = """
from typing import ClassVar

from pipemake.rule import Output, Param, Rule


class Greet(Rule):
    name = "greet"
    version = 1
    outputs: ClassVar = {"o": Output(kind="file")}
    params: ClassVar = {"word": Param(type="str", default="%s")}

    def run(self, ctx):
        ctx.outputs["o"].write_text(ctx.params["word"] + "\\n")
"""


def _install(site: Path, word: str, version: str) -> None:
    """A rule package ``greetrules`` installed in ``site`` as a distribution registering the
    rule ``greet`` (default ``word``) through pipemake's entry-point group."""
    dist = site / "greetrules-1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: greetrules\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text("[pipemake.rules]\ngreet = greetrules:Greet\n")
    (site / "greetrules.py").write_text(RULE % word)


def test_a_rule_default_edited_or_upgraded_changes_the_plan_and_the_key(
    project: Callable[..., Proj],
) -> None:
    """The wrong-answer bug of issue #18: after a rule's default changed (an edit in place,
    or an upgrade of its package), the stage ran with, and was keyed by, the old default for
    as long as ``plan.json`` lived. Each build here is a fresh process, as a user runs it."""
    p = project("name: g\nstages:\n  - id: hi\n    type: greet\n    config: {o: build/hi.txt}\n")
    site = p.root.parent / f"{p.root.name}-site"
    _install(site, "hello", "1.0")
    env = {"PYTHONPATH": str(site), "PIPEMAKE_NOOP_SNAPSHOT": "0"}
    p.sub("build", env=env)
    p.sub("build", env=env)  # the plan is cached now
    assert p.read("build/hi.txt") == "hello\n" and p.exists(".pipemake/plan.json")
    _install(site, "bonjour", "1.0")  # edited in place: same size, other bytes
    p.sub("build", env=env)
    assert p.read("build/hi.txt") == "bonjour\n"
    dry = p.sub("dry-run", env=env).stdout
    assert "hi: up to date" in dry, dry
    _install(site, "hallo", "2.0")  # an upgrade of the package
    out = p.sub("dry-run", env=env).stdout
    assert "hi: run: param word bonjour → hallo" in out, out
    p.sub("build", env=env)
    assert p.read("build/hi.txt") == "hallo\n"

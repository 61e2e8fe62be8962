"""``api.BuildOptions``: every option of a build as one value. ``api.build``'s keyword
arguments stay the same (users and tests call it) and make exactly these options; the hooks
run as a subscriber of the build's events, after ``run_finished``."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from conftest import Proj

from pipemake import api
from pipemake.errors import UsageError
from pipemake.events import Bus, Event


def test_build_keywords_are_the_options_fields() -> None:
    params = inspect.signature(api.build).parameters
    fields = {f.name: f.default for f in dataclasses.fields(api.BuildOptions)}
    keywords = {n: p.default for n, p in params.items() if n not in ("project", "bus")}
    assert keywords == fields


def test_run_build_with_options_builds_the_targets_and_what_they_need(chain: Proj) -> None:
    with api.project_of(str(chain.root), None) as project:
        report = api.run_build(project, api.BuildOptions(targets=["lines"], executor="inline"))
    assert report.ran == ["upper", "lines"] and chain.runs("report") == 0
    options = api.BuildOptions(targets=["lines"], executor="inline", force_stages=["upper"])
    with api.project_of(str(chain.root), None) as project:
        again = api.run_build(project, options)
    assert again.ran == ["upper"] and again.up_to_date == ["lines"]  # the same bytes: cut off


def test_options_are_checked_before_anything_runs(chain: Proj) -> None:
    with api.project_of(str(chain.root), None) as project, pytest.raises(UsageError) as err:
        api.run_build(project, api.BuildOptions(force_stages=["nope"]))
    assert "unknown target 'nope'" in str(err.value) and chain.run_counts() == {}


def test_the_hook_runs_after_every_subscriber_saw_run_finished(chain: Proj) -> None:
    text = chain.read("pipemake.yaml")
    chain.pipeline(text + 'on_success:\n  cmd: "echo done > hook.txt"\n')
    seen: list[str] = []
    bus = Bus()

    def note(event: Event) -> None:
        if event.kind in ("run_finished", "hook_finished", "hook_failed"):
            seen.append(event.kind if event.kind != "run_finished" else
                        f"run_finished, hook ran before: {chain.exists('hook.txt')}")  # fmt: skip

    bus.subscribe(note)
    with api.project_of(str(chain.root), None) as project:
        api.build(project, executor="inline", bus=bus)
    assert seen == ["run_finished, hook ran before: False", "hook_finished"]
    assert chain.read("hook.txt") == "done\n"

"""Workers started ahead (``Executor.prestart``): a build whose worker-rule stages were never
built starts its workers while it decides; they take the tasks that come, and ones never
used end with the build instead of holding it up."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import Proj, alive

from pipemake import api
from pipemake.executors import local

PY = """
name: t
stages:
  - id: each
    type: python
    foreach: src
    config:
      function: "work:copy"
      inputs: {src: data}
      outputs: {o: build/each}
"""
WORK = """
import os

def copy(ctx):
    src = ctx.inputs["src"]
    with open(os.path.join(ctx.outputs["o"], src.name), "w") as f:
        f.write(src.read_text().upper())
"""


def _build(proj: Proj) -> api.BuildReport:
    project = api.open_project(proj.root)
    try:
        return api.build(project, jobs=2)
    finally:
        project.close()


@pytest.fixture
def executors(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, list[int]]]:
    """Each local executor's prestart calls and the worker pids it ended with."""
    seen: list[tuple[int, list[int]]] = []
    real_prestart, real_close = local.LocalExecutor.prestart, local.LocalExecutor.close

    def prestart(self: local.LocalExecutor, workers: int) -> None:
        real_prestart(self, workers)
        seen.append((workers, self.worker_pids()))

    def close(self: local.LocalExecutor) -> None:
        pids = self.worker_pids()
        real_close(self)
        seen.append((-1, pids))

    monkeypatch.setattr(local.LocalExecutor, "prestart", prestart)
    monkeypatch.setattr(local.LocalExecutor, "close", close)
    return seen


@pytest.mark.slow
def test_a_cold_build_starts_its_workers_ahead_and_uses_them(
    project: Callable[..., Proj], executors: list[tuple[int, list[int]]]
) -> None:
    proj = project(PY, {f"data/f{i}.txt": f"file {i}\n" for i in range(6)} | {"work.py": WORK})
    assert _build(proj).ran == ["each"]
    (asked, ahead), (_, at_close) = executors
    assert asked == 2 and len(ahead) == 2
    assert at_close == ahead  # the tasks ran on them: no other worker was started
    assert not any(alive(pid) for pid in at_close)
    assert proj.read("build/each/f3.txt") == "FILE 3\n"
    executors.clear()
    proj.write("data/f3.txt", "changed\n")  # built before: nothing is started ahead
    assert _build(proj).ran == ["each"]
    assert [w for w, _ in executors] == [-1]


@pytest.mark.slow
def test_workers_started_ahead_for_nothing_end_with_the_build(
    project: Callable[..., Proj], executors: list[tuple[int, list[int]]]
) -> None:
    """A fresh workspace whose store already has everything (a CI cache): restored, no
    task runs, and the workers started ahead are ended, not waited for."""
    files = {f"data/f{i}.txt": f"file {i}\n" for i in range(3)} | {"work.py": WORK}
    proj = project(PY, files)
    _build(proj)
    (proj.root / ".pipemake" / "state.db").unlink()  # the workspace forgets, the store not
    executors.clear()
    report = _build(proj)
    assert report.ran == [] and report.up_to_date + report.restored == ["each"]
    (asked, ahead), (_, at_close) = executors
    assert len(ahead) == 2 and at_close == ahead
    assert not any(alive(pid) for pid in ahead)

"""The no-op snapshot (``.pipemake/uptodate.json``): a repeated no-op build is answered from
``stat`` alone, and anything its decision rested on that changes sends it back to the full
build. Builds run as real processes (``python -m pipemake``), as the command does."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CHAIN_STAGES, Proj

from pipemake.hashing import hash_bytes
from pipemake.history import read_run

SNAP = ".pipemake/uptodate.json"


def age(p: Proj, seconds: float = 30) -> None:
    """Move every workspace file's mtime into the past, so that the next build trusts its
    stats (files younger than a second are never trusted by stat alone)."""
    past = time.time() - seconds
    for dirpath, dirnames, filenames in os.walk(p.root):
        dirnames[:] = [d for d in dirnames if d != ".pipemake"]
        for name in filenames:
            os.utime(os.path.join(dirpath, name), (past, past))


def read_snap(p: Proj) -> dict:
    return json.loads(p.path(SNAP).read_bytes().partition(b"\n")[2])


def write_snap(p: Proj, doc: dict) -> None:
    """Write a (tampered) snapshot with a valid hash line, as pipemake would."""
    body = json.dumps(doc, separators=(",", ":"))
    p.write(SNAP, f"{hash_bytes(body.encode())}\n{body}")


def last_run(p: Proj) -> tuple[dict, list[dict]]:
    return read_run(p.root / ".pipemake" / "runs")


def settle(p: Proj, *args: str) -> None:
    """Build, age the files, and build again: the second build is a no-op that writes the
    snapshot."""
    p.sub("build", *args)
    age(p)
    p.sub("build", *args)
    assert p.exists(SNAP)
    assert not last_run(p)[1][0].get("from_snapshot")


def from_snapshot(p: Proj) -> bool:
    return bool(last_run(p)[1][0].get("from_snapshot"))


@pytest.mark.slow
def test_a_repeated_noop_is_answered_from_the_snapshot(chain: Proj) -> None:
    settle(chain, "--no-progress")
    out = chain.sub("build", "--no-progress")
    assert from_snapshot(chain)
    assert "0 ran, 0 restored, 4 up to date" in out.stderr
    summary, events = last_run(chain)
    assert summary["result"] == "ok"
    assert [e["stage"] for e in events if e["event"] == "stage_skipped"] == CHAIN_STAGES
    assert chain.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)
    assert "nothing changed since the last no-op build" in chain.sub("log").stdout
    listed = chain.sub("list", "--runs").stdout
    assert len([line for line in listed.splitlines() if " ok " in f" {line} "]) >= 3


@pytest.mark.parametrize(
    "change, reruns",
    [
        ("edit an input", {"upper": 2, "lines": 1, "side": 1, "report": 1}),
        ("touch an input", dict.fromkeys(CHAIN_STAGES, 1)),
        ("delete an output", dict.fromkeys(CHAIN_STAGES, 1)),
        ("edit an output", dict.fromkeys(CHAIN_STAGES, 1)),
        ("add a file to an output tree", dict.fromkeys(CHAIN_STAGES, 1)),
        ("edit the pipeline", {"upper": 1, "lines": 1, "side": 2, "report": 2}),
    ],
)
@pytest.mark.slow
def test_any_change_goes_back_to_the_full_build(chain: Proj, change: str, reruns: dict) -> None:
    settle(chain)
    later = time.time() + 5
    if change == "edit an input":
        chain.write("data/a.txt", "HELLO\nworld\n")  # same upper-cased text: cut off
    elif change == "touch an input":
        os.utime(chain.path("data/b.txt"), (later, later))
    elif change == "delete an output":
        chain.path("build/lines.txt").unlink()
    elif change == "edit an output":
        chain.write("build/side.txt", "edited\n")
    elif change == "add a file to an output tree":
        chain.write("build/report/sub/extra.txt", "stray\n")
    else:
        chain.edit("pipemake.yaml", "SEP: one", "SEP: two")
    chain.sub("build")
    assert not from_snapshot(chain)
    assert chain.run_counts() == reruns
    if change in ("delete an output", "edit an output"):
        assert chain.read("build/lines.txt") == "2\n"
        assert chain.read("build/side.txt") == "bee\none\n"
    if change == "add a file to an output tree":
        assert not chain.exists("build/report/sub/extra.txt")


@pytest.mark.slow
def test_another_command_line_or_the_switch_off_is_not_answered(chain: Proj) -> None:
    settle(chain)
    chain.sub("build", "side")
    assert not from_snapshot(chain)
    settle(chain)
    chain.sub("build", env={"PIPEMAKE_NOOP_SNAPSHOT": "0"})
    assert not from_snapshot(chain)
    chain.sub("build", "-j", "2")
    assert not from_snapshot(chain)


@pytest.mark.slow
def test_a_store_written_by_another_command_is_noticed(chain: Proj) -> None:
    settle(chain)
    chain.sub("build", "--force-stage", "side")  # writes the state and the store
    assert chain.runs("side") == 2
    chain.sub("build")
    assert not from_snapshot(chain)


@pytest.mark.slow
def test_a_build_that_did_something_or_saw_fresh_files_writes_none(chain: Proj) -> None:
    chain.sub("build")
    assert not chain.exists(SNAP)  # it ran every stage
    chain.sub("build")
    assert not chain.exists(SNAP)  # outputs written within the last second: not trusted
    age(chain)
    chain.sub("build")
    assert chain.exists(SNAP)
    chain.write("data/b.txt", "wasp\n")
    chain.sub("build")
    assert not chain.exists(SNAP)  # it ran: the stale snapshot is gone too


@pytest.mark.slow
def test_pipelines_with_hooks_always_build(project: Callable[..., Proj]) -> None:
    p = project(
        """
        name: hooked
        on_success: "echo ok >> runs/hook.log"
        stages:
          - id: a
            type: shell
            config: {cmd: "echo a > {outputs.o}", outputs: {o: build/a.txt}}
        """
    )
    p.sub("build")
    age(p)
    p.sub("build")
    assert not p.exists(SNAP)
    assert len(p.read("runs/hook.log").splitlines()) == 2


@pytest.mark.slow
def test_the_snapshot_does_not_bypass_the_build_lock(chain: Proj) -> None:
    settle(chain)
    fd = os.open(chain.path(".pipemake/lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        out = chain.sub("build", "--lock-timeout", "0.3", code=1)
        assert "build lock" in out.stderr
    finally:
        os.close(fd)
    chain.sub("build")
    assert from_snapshot(chain)


@pytest.mark.slow
def test_a_python_stage_module_edit_reruns_it(project: Callable[..., Proj]) -> None:
    p = project(
        """
        name: py
        stages:
          - id: step
            type: python
            config:
              function: steps:write
              outputs: {o: build/o.txt}
        """,
        {
            "steps.py": "from pathlib import Path\n\n\ndef write(ctx):\n"
            "    open('runs/step.count', 'a').write('x\\n')\n"
            "    Path(ctx.outputs['o']).write_text('one')\n"
        },
    )
    settle(p)
    p.sub("build")
    assert from_snapshot(p)
    p.edit("steps.py", "'one'", "'two'")
    p.sub("build")
    assert not from_snapshot(p)
    assert p.read("build/o.txt") == "two"
    assert p.runs("step") == 2


@pytest.mark.slow
def test_foreach_trees_are_checked_file_by_file(project: Callable[..., Proj]) -> None:
    p = project(
        """
        name: fe
        stages:
          - id: up
            type: shell
            foreach: src
            config:
              cmd: "echo x >> runs/up.count; tr a-z A-Z < {inputs.src} > {outputs.o}/{item.name}"
              inputs: {src: data}
              outputs: {o: build/up}
        """,
        {f"data/d{i}/f{i}.txt": f"file {i}\n" for i in range(6)},
    )
    settle(p)
    p.sub("build")
    assert from_snapshot(p)
    p.write("data/d3/f3.txt", "file three\n")
    p.sub("build")
    assert not from_snapshot(p)
    assert p.runs("up") == 7
    assert p.read("build/up/f3.txt") == "FILE THREE\n"
    age(p)
    p.sub("build")
    p.sub("build")
    assert from_snapshot(p)
    p.write("data/new.txt", "new\n")  # a new file deep in the input tree
    p.sub("build")
    assert not from_snapshot(p)
    assert p.runs("up") == 8


@pytest.mark.slow
def test_a_damaged_snapshot_is_ignored(chain: Proj) -> None:
    settle(chain)
    good = read_snap(chain)
    for text in ("{not json", json.dumps(good), "[]", "0" * 32 + "\n" + json.dumps(good)):
        chain.write(SNAP, text)  # no hash line, or a wrong one: not a snapshot
        chain.sub("build")
        assert not from_snapshot(chain)
        age(chain)
        chain.sub("build")  # writes a good one again
    runs = [
        {},
        {"pipeline": "chain", "started": {"stages": [1]}},
        None,
        dict(good["run"], started=dict(good["run"]["started"], jobs="x")),
        dict(good["run"], started=dict(good["run"]["started"], from_snapshot=True)),
        dict(good["run"], started=dict(good["run"]["started"], deps=[])),
    ]
    damaged = [dict(good, trees="garbage"), dict(good, files=[["x", 1e300]])]
    damaged += [dict(good, run=run) for run in runs]
    for doc in damaged:
        write_snap(chain, doc)
        out = chain.sub("build")
        assert "Traceback" not in out.stderr
        assert not from_snapshot(chain)
        age(chain)
        chain.sub("build")
    write_snap(chain, read_snap(chain))  # the same document, rewritten: still answered
    chain.sub("build")
    assert from_snapshot(chain)
    assert chain.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)


@pytest.mark.slow
def test_the_snapshot_holds_no_absolute_surprises(chain: Proj) -> None:
    """Every path it re-stats is inside the workspace, the environment's code, or the
    databases: nothing else decides a no-op."""
    settle(chain)
    doc = read_snap(chain)
    assert Path(doc["root"]) == chain.root
    assert {t[0] for t in doc["trees"]} == {"build/report"}
    singles = {f[0] for f in doc["files"]}
    assert {"data/a.txt", "data/b.txt", "build/upper.txt", "build/side.txt"} <= singles
    assert str(chain.path("pipemake.yaml")) in singles
    assert any(s.endswith("pipemake/build.py") for s in singles)


# the review's cases, through the API: a snapshot is only written when it can vouch ----------
def _api_build(p: Proj, started_ns: int) -> None:
    from pipemake import api

    with api.project_of(str(p.root), None, None, False) as project:
        api.build(project, noop_snapshot=("ctx", started_ns))


@pytest.mark.slow
def test_the_api_writes_a_snapshot_for_a_settled_noop(chain: Proj) -> None:
    settle(chain)
    chain.path(SNAP).unlink()
    _api_build(chain, time.time_ns())
    assert chain.exists(SNAP)


@pytest.mark.slow
def test_a_pipeline_edited_after_the_command_started_is_not_vouched_for(chain: Proj) -> None:
    """The file was read (and decided on) before the edit; the edit is older than a second
    when the build ends, but younger than the command: no snapshot."""
    from pipemake import api

    settle(chain)
    chain.path(SNAP).unlink()
    started = time.time_ns()
    with api.project_of(str(chain.root), None, None, False) as project:
        chain.edit("pipemake.yaml", "SEP: one", "SEP: two")
        time.sleep(1.1)
        api.build(project, noop_snapshot=("ctx", started))
    assert not chain.exists(SNAP)


def test_a_store_written_by_another_workspace_meanwhile_is_not_vouched_for(
    chain: Proj, monkeypatch
) -> None:
    from pipemake.build import Builder
    from pipemake.store import Store

    settle(chain)
    chain.path(SNAP).unlink()
    real = Builder.prefetch

    def prefetch(self, stages):  # another workspace on the same store commits meanwhile
        real(self, stages)
        other = Store(self.store.path)
        other.put_action("0" * 32, {"outputs": {}, "values": {}})
        other.close()

    monkeypatch.setattr(Builder, "prefetch", prefetch)
    _api_build(chain, time.time_ns())
    assert not chain.exists(SNAP)


def test_a_rule_hashing_code_it_does_not_name_gets_no_snapshot(
    project: Callable[..., Proj], monkeypatch
) -> None:
    from typing import ClassVar

    import pipemake
    from pipemake.rule import Output, Rule

    class Coded(Rule):
        name = "coded"
        outputs: ClassVar = {"o": Output(kind="file")}

        def code_hash(self, ports, root):
            return "whatever its files hold"

        def run(self, ctx):
            with open(ctx.outputs["o"], "w") as f:
                f.write("x")

    pipemake.register_rule("coded", Coded)
    p = project("name: c\nstages:\n  - id: a\n    type: coded\n    config: {o: build/o.txt}\n")
    p.cli("build", "--executor", "inline")  # a rule registered in this process only
    age(p)
    _api_build(p, time.time_ns())
    assert not p.exists(SNAP)
    monkeypatch.setattr(Coded, "code_files", lambda self, ports, root: [])
    _api_build(p, time.time_ns())
    assert p.exists(SNAP)


def test_the_snapshot_is_written_by_a_subscriber_while_the_build_holds_its_lock(
    chain: Proj,
) -> None:
    """The build's ``run_settled`` event comes under the lock, before ``run_finished``
    (whose hooks may start another build); the run log does not keep it; the snapshot
    written then answers the next no-op."""
    from pipemake import api
    from pipemake.errors import LockTimeout
    from pipemake.events import Bus
    from pipemake.history import SETTLED
    from pipemake.lock import BuildLock

    chain.sub("build")
    age(chain)
    seen: list[tuple[str, bool]] = []

    def held() -> bool:
        try:
            with BuildLock(chain.root / ".pipemake" / "lock", timeout=0):
                return False
        except LockTimeout:
            return True

    def watch(event) -> None:
        if event.kind in (SETTLED, "run_finished"):
            seen.append((event.kind, held()))

    bus = Bus()
    bus.subscribe(watch)
    with api.project_of(chain.root, None) as project:
        api.run_build(project, api.BuildOptions(noop_snapshot=("ctx", time.time_ns())), bus)
    assert seen == [(SETTLED, True), ("run_finished", False)]
    assert read_snap(chain)["context"] == "ctx"
    assert SETTLED not in {e["event"] for e in last_run(chain)[1]}


BIG = """
name: big
stages:
  - id: copy
    type: python
    config:
      function: "copier:run"
      inputs: {src: data}
      outputs: {out: build/copy}
"""
COPIER = """
import shutil

def run(ctx):
    shutil.copytree(ctx.inputs["src"], ctx.outputs["out"], dirs_exist_ok=True)
"""


def test_trees_big_enough_to_walk_in_two_processes_still_see_every_change(
    project: Callable[..., Proj],
) -> None:
    """Past a few thousand files the snapshot's trees are walked half here, half in a
    forked child: a file changed in either half is seen, and the build runs again."""
    files = {f"data/d{i // 500}/f{i}.txt": f"{i}\n" for i in range(2200)}
    p = project(BIG, {**files, "copier.py": COPIER})
    settle(p)
    p.sub("build")
    assert from_snapshot(p)
    for changed in ("data/d3/f1700.txt", "build/copy/d1/f600.txt"):  # one in each tree
        p.write(changed, "changed\n")
        age(p)
        p.sub("build")
        assert not from_snapshot(p), changed
        assert p.read("build/copy/d3/f1700.txt") == p.read("data/d3/f1700.txt")
        settle(p)

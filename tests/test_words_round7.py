"""Every word pipemake prints says what happened (the seventh round's leftovers): a foreach
stage found whole in place is up to date, not restored; a lock from another pipemake says
so instead of "never built"; a full state database is said once per stage; a lost dask
batch's never-started items are "not run"."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from conftest import Proj, shell_foreach

FILES = {f"data/f{i}.txt": f"{i}\n" for i in range(3)}
COPY = "cp {inputs.src} {outputs.o}/{item.name}"


def _drop_stage_entry(proj: Proj, stage: str) -> None:
    """Remove the stage's own action-cache entry (its items' entries stay)."""
    db = sqlite3.connect(proj.path(".pipemake/store/actions.db"))
    with db:
        gone = [k for k, e in db.execute("SELECT key, entry FROM actions")
                if json.loads(e).get("stage") == stage]  # fmt: skip
        assert gone
        db.executemany("DELETE FROM actions WHERE key = ?", [(k,) for k in gone])
    db.close()


def _rows(proj: Proj) -> dict[str, dict]:
    return {r["stage"]: r for r in json.loads(proj.cli("status", "--json").stdout)["stages"]}


def _last_run(proj: Proj) -> list[dict]:
    return [json.loads(line) for line in proj.cli("log", "--json").stdout.splitlines()]


# -- 1. a foreach stage whose outputs are in place is up to date, not restored -------------


def test_foreach_without_its_own_entry_but_in_place_is_up_to_date(
    project: Callable[..., Proj],
) -> None:
    proj = project(shell_foreach(COPY), FILES)
    proj.cli("build", "--no-progress")
    _drop_stage_entry(proj, "each")
    proj.path("pipemake.lock").unlink()  # (else the lock's hashes vouch for the outputs)
    for f in proj.root.glob(".pipemake/state.db*"):
        f.unlink()  # and its record: nothing says it was built here
    before = {p.name: p.stat().st_ino for p in proj.path("build/each").iterdir()}
    said = "its outputs in place, as its 3 items in the store record"
    assert proj.cli("dry-run").output.strip() == f"each: up to date: {said}"
    out = proj.cli("build", "--no-progress").output
    assert f"each: up to date ({said})" in out, out
    assert "0 ran, 0 restored, 1 up to date" in out and "restored from" not in out, out
    assert {p.name: p.stat().st_ino for p in proj.path("build/each").iterdir()} == before
    events = _last_run(proj)
    assert not [e for e in events if e.get("event") == "stage_restored"], events
    done = [e for e in events if e.get("event") == "run_finished"][0]
    assert done["restored"] == [] and done["up_to_date"] == ["each"], done
    assert "restored from" not in proj.cli("log").output
    text = proj.cli("status").output
    assert "each: up to date  [last: up to date, its outputs in place]" in text, text
    row = _rows(proj)["each"]
    assert row["last_in_place"] is True and row["last_restored"] is False, row
    # its entry is written now: the next build is a plain no-op
    assert proj.cli("dry-run").output.strip() == "each: up to date"
    assert proj.runs("each") == 0  # (the command is not counted; nothing ran either way)


def test_foreach_in_place_is_restored_only_when_something_is_written(
    project: Callable[..., Proj],
) -> None:
    proj = project(shell_foreach(COPY), FILES)
    proj.cli("build", "--no-progress")
    _drop_stage_entry(proj, "each")
    proj.path("pipemake.lock").unlink()
    proj.path("build/each/f1.txt").unlink()  # one item's output gone: it comes back
    assert proj.cli("dry-run").output.startswith("each: restore: ")
    out = proj.cli("build", "--no-progress").output
    assert "each: restored from the store (3 items;" in out and "1 restored" in out, out
    assert proj.read("build/each/f1.txt") == "1\n"
    assert _rows(proj)["each"]["last_restored"] is True


def _stage_entries(proj: Proj, stage: str) -> set[str]:
    db = sqlite3.connect(proj.path(".pipemake/store/actions.db"))
    keys = {k for k, e in db.execute("SELECT key, entry FROM actions")
            if json.loads(e).get("stage") == stage}  # fmt: skip
    db.close()
    return keys


def test_foreach_keyed_otherwise_with_its_items_in_place_is_up_to_date(
    project: Callable[..., Proj],
) -> None:
    """Built with one param, then another that makes the same bytes, then back: the first
    key's stage entry is gone (say a ``cache gc``), its items' are not, and the output
    already is what they record: up to date, though the record is keyed otherwise."""
    proj = project(shell_foreach(COPY, env="{A: '1'}"), FILES)
    proj.cli("build", "--no-progress")
    first = _stage_entries(proj, "each")
    proj.edit("pipemake.yaml", "{A: '1'}", "{A: '2'}")
    assert "3 run" in proj.cli("build", "--no-progress").output
    proj.edit("pipemake.yaml", "{A: '2'}", "{A: '1'}")
    db = sqlite3.connect(proj.path(".pipemake/store/actions.db"))
    with db:
        db.executemany("DELETE FROM actions WHERE key = ?", [(k,) for k in first])
    db.close()
    said = "its outputs in place, as its 3 items in the store record"
    assert proj.cli("dry-run").output.strip() == f"each: up to date: {said}"
    out = proj.cli("build", "--no-progress").output
    assert f"each: up to date ({said})" in out and "0 ran, 0 restored, 1 up to date" in out, out
    rows = _rows(proj)
    assert rows["each"]["last_in_place"] is True and rows["each"]["last_restored"] is False
    assert "each: up to date  [last: up to date, its outputs in place]" in proj.cli("status").output


# -- 2. a lock-only clone whose lock holds another key says so, not "never built" ----------

CHAIN = """
name: t
stages:
  - id: a
    type: shell
    config:
      cmd: "tr a-z A-Z < {inputs.i} > {outputs.o}"
      inputs: {i: in.txt}
      outputs: {o: build/a.txt}
  - id: b
    type: shell
    config:
      cmd: "cat {inputs.i} {inputs.i} > {outputs.o}"
      inputs: {i: "{a.o}"}
      outputs: {o: build/b.txt}
"""


def _clone(project: Callable[..., Proj], built: Proj, text: str = CHAIN) -> Proj:
    """A clone of ``built`` with its outputs and pipemake.lock but no .pipemake."""
    clone = project(text, {"in.txt": built.read("in.txt")}, name="clone")
    for rel in ("pipemake.lock", "build/a.txt", "build/b.txt"):
        if built.exists(rel):
            clone.write(rel, built.path(rel).read_bytes())
    return clone


def _lock_key(proj: Proj, stage: str, key: str) -> None:
    doc = json.loads(proj.read("pipemake.lock"))
    doc["stages"][stage]["key"] = key
    proj.write("pipemake.lock", json.dumps(doc, indent=2))


def test_a_lock_from_another_pipemake_says_its_key_differs(project: Callable[..., Proj]) -> None:
    built = project(CHAIN, {"in.txt": "hi\n"})
    built.cli("build", "--no-progress")
    clone = _clone(project, built)
    _lock_key(clone, "a", "0" * 32)  # as a lock of an older key scheme or rule version
    why = (
        "pipemake.lock's key differs (its rule, params and inputs are as locked: built by "
        "another pipemake or rule version, or from other code or upstream values)"
    )
    assert clone.cli("dry-run").output.splitlines() == [
        f"a: run: {why}", "b: maybe: upstream a will run"
    ]  # fmt: skip
    status = clone.cli("status").output.splitlines()
    assert status == [
        f"a: never built; {why}",
        "b: never built (upstream a will run); upstream a differs from pipemake.lock",
    ], status
    rows = _rows(clone)
    assert rows["a"]["lock"] == [why] and rows["a"]["reasons"] == []
    out = clone.cli("build", "--no-progress").output
    assert f"a: running ({why})" in out and "never built" not in out, out
    # b's output is the same bytes again: as the lock records for its key, it is kept
    assert "b: up to date (its outputs are what pipemake.lock records" in out, out
    events = _last_run(clone)
    started = [e for e in events if e.get("event") == "stage_started"]
    assert started[0]["reasons"] == [why], started


def test_a_lock_names_what_differs_where_it_records_it(project: Callable[..., Proj]) -> None:
    built = project(CHAIN, {"in.txt": "hi\n"})
    built.cli("build", "--no-progress")
    clone = _clone(project, built)
    clone.edit("pipemake.yaml", "tr a-z A-Z", "tr a-y A-Y")
    clone.write("in.txt", "ho\n")
    plan = clone.cli("dry-run").output.splitlines()
    assert plan[0].startswith("a: run: param cmd tr a-z A-Z < {inputs.i} > {outputs.o} → tr a-y")
    assert plan[0].endswith(" since pipemake.lock; input in.txt changed since pipemake.lock")
    out = clone.cli("build", "--no-progress").output
    assert "never built" not in out and "input in.txt changed since pipemake.lock" in out, out
    # b's input is another file now: named by the lock's hash of it
    assert "b: running (input build/a.txt changed since pipemake.lock)" in out, out


def test_stages_the_lock_does_not_mention_are_never_built(project: Callable[..., Proj]) -> None:
    built = project(CHAIN, {"in.txt": "hi\n"})
    built.cli("build", "--no-progress")
    more = (
        CHAIN
        + """
  - id: c
    type: shell
    config: {cmd: "cp {inputs.i} {outputs.o}", inputs: {i: in.txt}, outputs: {o: build/c.txt}}
"""
    )
    clone = _clone(project, built, more)
    plan = clone.cli("dry-run").output.splitlines()
    assert plan == ["a: up to date: its outputs are what pipemake.lock records for this key",
                    "b: up to date: its outputs are what pipemake.lock records for this key",
                    "c: run: never built"], plan  # fmt: skip


def test_a_foreach_lock_names_its_changed_items(project: Callable[..., Proj]) -> None:
    built = project(shell_foreach(COPY), FILES)
    built.cli("build", "--no-progress")
    clone = project(shell_foreach(COPY), {**FILES, "data/f9.txt": "9\n"}, name="clone")
    clone.write("pipemake.lock", built.read("pipemake.lock"))
    plan = clone.cli("dry-run").output
    assert plan.startswith("each: run: input data's items changed since pipemake.lock; "), plan
    assert "never built" not in plan


# -- 3. a foreach stage whose item entries cannot be written says the cause once ----------


def test_items_the_store_cannot_record_are_said_once_for_the_stage(
    project: Callable[..., Proj],
) -> None:
    import re
    import resource
    import subprocess

    files = {f"data/f{i:03d}.txt": f"{i} " + "x" * 300 + "\n" for i in range(300)}
    proj = project(shell_foreach(COPY, env="{A: '1'}"), files)
    proj.sub("build", "--no-progress")
    sizes = {p.name: p.stat().st_size for p in proj.path(".pipemake").rglob("*.db")}
    limit = max(sizes.values()) + 32 * 1024  # the new items' entries outgrow actions.db
    proj.edit("pipemake.yaml", "{A: '1'}", "{A: '2'}")

    def capped() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        proj.argv("build", "--no-progress"), capture_output=True, text=True,
        preexec_fn=capped, timeout=120,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out and "FAILED: cannot" not in out
    assert "item f" not in out, out  # no line per item
    said = re.search(r"each: FAILED: (\d+) of 300 item\(s\) could not be recorded: cannot "
                     r"write \S*\.pipemake/store/actions\.db .*`ulimit -f`.*; the other "
                     r"(\d+) are kept and do not run again", out)  # fmt: skip
    assert said, out
    lost, kept = int(said.group(1)), int(said.group(2))
    assert lost > 0 and lost + kept == 300, out
    events = _last_run(proj)
    quiet = [e for e in events if e.get("event") == "log" and e.get("quiet")]
    assert quiet and all("could not be recorded" in e["text"] for e in quiet), quiet
    assert len(quiet) == min(lost, 50)
    shown = proj.cli("log").output
    assert "item f" not in shown and "could not be recorded" in shown, shown
    stage_log = proj.read(".pipemake/logs/each.log")
    assert stage_log.count("could not be recorded: cannot write") == lost
    status = proj.cli("status").output
    assert f"{lost} of 300 items to run" in status and f"{kept} kept" in status, status
    again = proj.sub("build", "--no-progress").stderr  # without the limit: the rest runs
    assert f"; {lost} of 300 items to run" in again and f"300 items, {lost} run" in again, again


def test_lock_reasons_name_what_the_lock_records_and_hedge_the_rest() -> None:
    from pipemake.decide import Reason, Trigger, from_lock, lock_reasons

    doc = {"rule": "shell", "params": {"cmd": "b"}, "inputs": {"i": ["in.txt", "h2"],
           "src": ["data", "foreach"]}}  # fmt: skip
    locked = {"rule": "shell", "params": {"cmd": "a"},
              "inputs": {"i": {"path": "in.txt", "hash": "h1"},
                         "src": {"path": "data", "items": 2, "items_digest": "d1"}}}  # fmt: skip
    said = [str(r) for r in lock_reasons(locked, doc, "d2")]
    assert said == ["param cmd a → b since pipemake.lock",
                    "input in.txt changed since pipemake.lock",
                    "input data's items changed since pipemake.lock"], said  # fmt: skip
    same = {**locked, "params": {"cmd": "b"},
            "inputs": {"i": {"path": "in.txt", "hash": "h2"},
                       "src": {"path": "data", "items_digest": "d2"}}}  # fmt: skip
    (only,) = lock_reasons(same, doc, "d2")
    assert str(only).startswith("pipemake.lock's key differs (its rule, params and inputs are")
    # a lock that records less (an older one, or damaged): the plain hedge
    (bare,) = lock_reasons({"key": "k"}, doc)
    assert str(bare) == ("pipemake.lock's key differs (built by another pipemake version or "
                         "from other inputs/params)")  # fmt: skip
    assert all(from_lock(r) for r in [*lock_reasons(locked, doc, "d2"), only, bare])
    assert not from_lock(Reason(Trigger.NEVER_BUILT, "never built"))


def test_a_stage_with_failed_unrecorded_and_unstarted_items_counts_them_all() -> None:
    from pipemake.foreach import ForeachRun

    run = ForeachRun.__new__(ForeachRun)
    run.failures = {"a": "boom", "b": "cannot write X", "c": "cannot write X"}
    run.unrecorded = {"b", "c"}
    run.not_run = {"d"}
    run.cached = {"e": {}}
    run.items_total = 5
    text = run.failure_text()
    assert text == ("3 of 6 item(s) failed (2 of them could not be recorded: cannot write X); "
                    "1 not run (the next build runs them); the other 2 are kept (1 from "
                    "earlier builds) and do not run again. First: item a: boom"), text  # fmt: skip
    run.failures, run.unrecorded, run.not_run_why = {}, set(), "lost the dask scheduler"
    assert run.failure_text() == (
        "1 of 6 item(s) not run (the next build runs them): lost the dask scheduler; the other "
        "5 are kept (1 from earlier builds) and do not run again"
    )

"""``pipemake cache gc``: keeps what the pipeline needs now and what is recent; drops the
rest, entries and objects alike, and never breaks the store."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from conftest import Proj, wait_for

PIPE = """
name: gc
stages:
  - id: up
    type: shell
    config:
      cmd: "echo x >> runs/up.count; tr a-z {case} < {{inputs.src}} > {{outputs.o}}"
      inputs: {{src: data/a.txt}}
      outputs: {{o: build/up.txt}}
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "echo {{item.name}} >> runs/items.log; cp {{inputs.src}} {{outputs.d}}/{{item.name}}"
      inputs: {{src: data/many}}
      outputs: {{d: build/each}}
"""
FILES = {"data/a.txt": "lazy\n", "data/many/1.txt": "1", "data/many/2.txt": "2"}


def _objects(p: Proj) -> int:
    return sum(1 for f in p.path(".pipemake/store/objects").rglob("*") if f.is_file())


def test_gc_drops_old_params_but_keeps_what_is_current(project: Callable[..., Proj]) -> None:
    p = project(PIPE.format(case="A-Z"), FILES)
    p.cli("build")
    p.pipeline(PIPE.format(case="A-Y"))
    p.cli("build")
    before = _objects(p)
    # nothing younger than the grace period goes (a build may be about to commit it)
    assert "removed 0 entries and 0 objects" in p.cli("cache", "gc", "--keep-days", "0").output
    dry = p.cli("cache", "gc", "--keep-days", "0", "--grace", "0", "--dry-run").output
    assert "would remove 1 entries" in dry
    assert _objects(p) == before
    out = p.cli("cache", "gc", "--keep-days", "0", "--grace", "0").output
    assert "removed 1 entries and 1 objects" in out
    assert "store OK" in p.cli("cache", "verify").output
    assert "run" not in p.cli("dry-run").output  # everything current is still there
    p.path("runs/items.log").unlink()
    p.write("data/many/2.txt", "two")
    p.cli("build")
    assert p.read("runs/items.log").split() == ["2.txt"]  # the other item's entry was kept
    p.pipeline(PIPE.format(case="A-Z"))
    assert "up: run" in p.cli("dry-run").output  # the old param set is gone: it runs again


def test_recent_entries_are_kept_so_a_revert_still_restores(project: Callable[..., Proj]) -> None:
    p = project(PIPE.format(case="A-Z"), FILES)
    p.cli("build")
    p.pipeline(PIPE.format(case="A-Y"))
    p.cli("build")
    assert "removed 0 entries" in p.cli("cache", "gc").output
    p.pipeline(PIPE.format(case="A-Z"))
    p.cli("build")
    assert p.runs("up") == 2  # restored, not run
    assert p.read("build/up.txt") == "LAZY\n"


# a store shared by workspaces and pipelines -------------------------------------------
SHARED = """
name: {name}
stages:
  - id: one
    type: shell
    config:
      cmd: "echo x >> runs/one.count; echo {name} > {{outputs.o}}"
      outputs: {{o: build/one.txt}}
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "echo x >> runs/each.count; (cat {{inputs.src}}; echo {name}) > {{outputs.d}}/{{item.name}}"
      inputs: {{src: data}}
      outputs: {{d: build/each}}
"""
SHARED_FILES = {f"data/{i}.txt": f"{i}\n" for i in range(6)}


def _two(project: Callable[..., Proj], tmp_path: Path) -> tuple[Proj, Proj, dict[str, str]]:
    a = project(SHARED.format(name="alpha"), SHARED_FILES, name="a")
    b = project(SHARED.format(name="beta"), SHARED_FILES, name="b")
    env = {"PIPEMAKE_CACHE_DIR": str(tmp_path / "shared")}
    a.cli("build", env=env)
    b.cli("build", env=env)
    return a, b, env


def test_gc_from_either_workspace_keeps_both_pipelines(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    a, b, env = _two(project, tmp_path)
    for first, second in ((a, b), (b, a)):
        dry = first.cli("cache", "gc", "--keep-days", "0", "--grace", "0", "--dry-run").output
        assert "would remove 0 entries and 0 objects" in dry
        assert "kept 16 entries" in dry  # 2 × (one + each + 6 items)
        first.cli("cache", "gc", "--keep-days", "0", "--grace", "0")
        # the other needs nothing built: a plain build (its store remembered) restores all
        shutil.rmtree(second.path("build"))
        second.cli("build")
        assert second.run_counts() == {"each": 6, "one": 1}
        assert second.read("build/each/3.txt") == f"3\n{second.read('build/one.txt')}"


def _age_roots(store: Path, workspace: Proj, days: float) -> None:
    """Make ``workspace``'s roots record look last seen ``days`` ago."""
    when = time.time() - days * 86400
    for rec in (store / "roots").glob("*.json"):
        doc = json.loads(rec.read_text())
        if doc["workspace"].endswith(workspace.root.name):
            doc["written"] = when
            rec.write_text(json.dumps(doc))
            os.utime(rec, (when, when))
    os.utime(workspace.path(".pipemake/runs"), (when, when))  # its last logged run


def test_roots_of_a_workspace_not_seen_for_long_are_forgotten(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    a, b, env = _two(project, tmp_path)
    store = tmp_path / "shared"
    _age_roots(store, b, 40)
    out = a.cli("cache", "gc", "--keep-days", "0", "--grace", "0", "--dry-run").output
    assert "would remove 8 entries" in out and "1 workspace(s)" in out
    # a build that finds everything up to date marks the workspace as seen
    b.cli("build")
    out = a.cli("cache", "gc", "--keep-days", "0", "--grace", "0").output
    assert "removed 0 entries" in out
    # a no-op build answered from its snapshot (a real process, twice) counts as seen too
    b.sub("build")
    _age_roots(store, b, 40)
    b.sub("build")
    out = a.cli("cache", "gc", "--keep-days", "0", "--grace", "0").output
    assert "removed 0 entries" in out
    _age_roots(store, b, 40)
    out = a.cli("cache", "gc", "--keep-days", "0", "--grace", "0", "--forget-after", "50d")
    assert "removed 0 entries" in out.output  # not that long
    a.cli("cache", "gc", "--keep-days", "0", "--grace", "0", "--forget-after", "30d")
    shutil.rmtree(b.path("build"))
    b.cli("build")
    assert b.run_counts() == {"each": 12, "one": 2}  # its entries went: everything reran
    bad = a.cli("cache", "gc", "--forget-after", "soon", code=2).output
    assert "--forget-after" in bad and "30d" in bad


SIZED = """
name: sized
vars: {w: a}
stages:
""" + "".join(
    f"""
  - id: s{i}
    type: shell
    config:
      cmd: "echo x >> runs/s{i}.count; yes {word}{i} | head -c 100000 > {{outputs.o}}"
      outputs: {{o: build/s{i}.txt}}
"""
    for i, word in ((1, "one"), (2, "two"), (3, "{vars.w}"))
)


def _bytes(p: Proj) -> int:
    return sum(
        f.stat().st_size for f in p.path(".pipemake/store/objects").rglob("*") if f.is_file()
    )


def test_max_size_evicts_what_no_one_needs_then_the_least_recently_used(
    project: Callable[..., Proj],
) -> None:
    p = project(SIZED)
    for stage in ("s1", "s2", "s3"):  # written in this order: s1 is the oldest
        p.cli("build", stage)
    p.edit("pipemake.yaml", "w: a", "w: b")
    p.cli("build", "s3")  # s3's first version is no longer needed, but the newest of three
    p.edit("pipemake.yaml", "w: b", "w: a")
    p.cli("build", "s3")
    p.edit("pipemake.yaml", "w: a", "w: b")
    p.cli("build", "s3")  # restored: s3@b is needed, s3@a not; s1 and s2 untouched
    assert p.run_counts() == {"s1": 1, "s2": 1, "s3": 2}
    total = _bytes(p)
    # nothing younger than the grace period goes, whatever the cap
    r = p.cli("cache", "gc", "--max-size", "1")
    assert "evicted 0 least recently used entries" in r.output and "still over" in r.output
    r = p.cli("cache", "gc", "--max-size", str(total - 50_000), "--grace", "0")
    assert "evicted 1 least recently used entries and 1 objects" in r.output
    assert _bytes(p) == total - 100_000
    p.edit("pipemake.yaml", "w: b", "w: a")
    assert "s3: run" in p.cli("dry-run").output  # the unneeded one went, not s1
    p.edit("pipemake.yaml", "w: a", "w: b")
    r = p.cli("cache", "gc", "--max-size", "150K", "--grace", "0")
    assert "evicted 2 least recently used entries and 2 objects" in r.output
    assert _bytes(p) == 100_000
    shutil.rmtree(p.path("build"))
    p.cli("build")
    # what stayed (the newest: s3) is restored; what went (s1, then s2) runs again
    assert p.run_counts() == {"s1": 2, "s2": 2, "s3": 2}
    assert "store OK" in p.cli("cache", "verify").output
    bad = p.cli("cache", "gc", "--max-size", "lots", code=2).output
    assert "--max-size" in bad and "2G" in bad


def test_gc_and_clean_wait_for_a_running_build(slow: Proj, tmp_path: Path) -> None:
    build = slow.popen("build", "--no-progress")
    wait_for(lambda: slow.exists("runs/slow.started"), 60, "the build to start")
    # a command that cannot wait long enough gives up, naming the holder
    r = slow.sub("cache", "gc", "--lock-timeout", "0.3", code=1)
    assert "gave up after 0.3 s waiting for the build lock held by pid" in r.stderr
    r = slow.sub("clean", "--lock-timeout", "0.3", code=1)
    assert "build lock held by pid" in r.stderr
    gc_log, clean_log = tmp_path / "gc.log", tmp_path / "clean.log"
    gc = slow.popen("cache", "gc", "--keep-days", "0", log=gc_log)
    clean = slow.popen("clean", "first", log=clean_log)
    for log in (gc_log, clean_log):
        wait_for(lambda log=log: "waiting for the build lock" in log.read_text(), 60, "a wait")
    assert gc.poll() is None and clean.poll() is None
    slow.write("go", "")
    assert build.wait(60) == 0
    assert gc.wait(60) == 0, gc_log.read_text()
    assert clean.wait(60) == 0, clean_log.read_text()
    assert "removed 0 entries" in gc_log.read_text()
    assert "removed build/first.txt" in clean_log.read_text()
    assert not slow.exists("build/first.txt") and slow.exists("build/last")

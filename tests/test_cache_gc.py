"""``pipemake cache gc``: keeps what the pipeline needs now and what is recent; drops the
rest, entries and objects alike, and never breaks the store."""

from __future__ import annotations

from collections.abc import Callable

from conftest import Proj

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

"""Paths, seventh round:

1. ``**/`` in a foreach pattern or an input glob is zero or more folders (``**/*.png``
   takes the top-level ``a.png`` too), as Python's ``glob(recursive=True)``, gitignore and
   Snakemake read it; globs without it match, and key, exactly as before;
2. a UTF-8 file name inside a foreach input under an ASCII locale stops the build before
   anything runs, naming the file and the fix (was: the stage failed mid-build, calling
   the name "not valid UTF-8");
3. an entry that holds no file (a dangling symlink, a FIFO) added to an input tree that
   was built already is warned of on the next build, once;
4. a command run in a subfolder of a project finds the pipeline file in the nearest folder
   above holding one (stopping at a ``.git`` folder), as ``-C`` that folder would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from conftest import Proj

from pipemake.feeds import _may_start
from pipemake.items import glob_match, matches, select

# 1. ``**/`` is zero or more folders -------------------------------------------------------

FILES = {
    "data/a.png": "a",
    "data/sub/b.png": "b",
    "data/c.txt": "c",
    "data/deep/er/d.PNG": "d",
}

DEEP = """
name: deep
stages:
  - id: pat
    type: shell
    foreach: {input: src, pattern: "**/*.png"}
    config:
      cmd: 'cp {inputs.src} {outputs.o}/{item.name}'
      inputs: {src: data}
      outputs: {o: build/pat}
  - id: glob
    type: shell
    foreach: src
    config:
      cmd: 'cp {inputs.src} {outputs.o}/{item.name}'
      inputs: {src: "data/**/*.png"}
      outputs: {o: build/glob}
  - id: mid
    type: shell
    foreach: {input: src, pattern: "deep/**/*.png"}
    config:
      cmd: 'cp {inputs.src} {outputs.o}/{item.name}'
      inputs: {src: data}
      outputs: {o: build/mid}
"""


def _files(p: Proj, rel: str) -> list[str]:
    return sorted(os.listdir(p.path(rel)))


def test_double_star_takes_the_top_level_files_too(project: Callable[..., Proj]) -> None:
    p = project(DEEP, FILES)
    planned = json.loads(p.cli("dry-run", "--json").output)
    totals = {d["stage"]: d["items"]["total"] for d in planned}
    p.cli("build", "--no-progress")
    # a pattern is case-blind (d.PNG); an input's glob counts case, as before
    assert _files(p, "build/pat") == ["a.png", "b.png", "d.PNG"]
    assert _files(p, "build/glob") == ["a.png", "b.png"]
    assert _files(p, "build/mid") == ["d.PNG"]  # deep/ itself is no folder more: still in
    # dry-run said the very items the build ran
    assert totals == {"pat": 3, "glob": 2, "mid": 1}
    assert "up to date" in p.cli("dry-run").output


def test_a_glob_with_double_star_over_top_level_files_only_is_no_missing_input(
    project: Callable[..., Proj],
) -> None:
    p = project(DEEP.split("  - id: mid")[0], {"data/a.png": "a"})
    p.cli("validate")
    p.cli("build", "--no-progress")
    assert _files(p, "build/glob") == ["a.png"]


def test_double_star_matching_rules() -> None:
    assert glob_match("a.png", "**/*.png") and glob_match("x/y/a.png", "**/*.png")
    assert glob_match("a/b", "a/**/b") and glob_match("a/x/y/b", "a/**/b")
    assert glob_match("a/b", "a/**/**/b") and not glob_match("ab", "a/**/b")
    assert not glob_match("a.PNG", "**/*.png")  # an input's glob counts case
    # ``**`` that is not a whole component, or inside brackets, is what it always was
    assert glob_match("subx/a.png", "sub**/*.png") and not glob_match("a.png", "sub**/*.png")
    assert glob_match("x*y", "x[*]y") and glob_match("x/y", "x[**/]y")
    assert not glob_match("xy", "x[**/]y")
    assert matches("A.PNG", "**/*.png") and matches("q/A.png", "x/*|**/*.png")
    assert not matches(".hidden/a.png", "**/*.png")
    # an upstream output at the top of a ``**/`` glob's folder may hold what it takes
    assert _may_start("**/*.png", "x/") and _may_start("a/**/b/*.png", "a/c/")
    assert not _may_start("a/**/b", "c/")


def test_globs_without_double_star_choose_and_key_as_before(
    project: Callable[..., Proj],
) -> None:
    """Keys and item lists of the same project computed before ``**/`` was read anew: an
    existing project stays up to date."""
    p = project(
        """
        name: golden
        stages:
          - id: pat
            type: shell
            foreach: {input: src, pattern: "*.png"}
            config:
              cmd: 'cp {inputs.src} {outputs.o}/{item.name}'
              inputs: {src: data}
              outputs: {o: build/pat}
          - id: sub
            type: shell
            foreach: {input: src, pattern: "sub/*.png|deep/*"}
            config:
              cmd: 'cp {inputs.src} {outputs.o}/{item.name}'
              inputs: {src: data}
              outputs: {o: build/sub}
          - id: glob
            type: shell
            foreach: src
            config:
              cmd: 'cp {inputs.src} {outputs.o}/{item.name}'
              inputs: {src: "data/*.png"}
              outputs: {o: build/glob}
        """,
        FILES,
    )
    p.cli("build", "--no-progress")
    lock = json.loads(p.read("pipemake.lock"))["stages"]
    assert {s: (v["key"], v["inputs"]["src"]["items_digest"]) for s, v in lock.items()} == {
        "glob": ("b6c226ba21ba0546c7df4ef53dba4c4b", "6b4f818c346520312eb072d3a96493fd"),
        "pat": ("e1b1ea7c668f4a5617e41192143c9263", "65f768f8c0cbe6c5846d11525d6f30e7"),
        "sub": ("7b88a790c0fb1110dac299cdddcbdb5b", "d91f7fa93827f635dc01d7e5129714a7"),
    }
    assert _files(p, "build/glob") == ["a.png", "b.png"]  # ``*`` crosses ``/``, as before
    entries = [[rel, ""] for rel in ("a.png", "sub/b.png", "c.txt", "deep/er/d.PNG")]
    assert [i.relpath for i in select("data", entries, "sub/*.png|deep/*")] == [
        "sub/b.png",
        "deep/er/d.PNG",
    ]


def test_an_upstream_output_at_the_top_of_a_double_star_glob_comes_first(
    project: Callable[..., Proj],
) -> None:
    p = project("""
        name: feed
        stages:
          - id: each
            type: shell
            foreach: src
            config:
              cmd: 'cp {inputs.src} {outputs.o}/{item.name}'
              inputs: {src: "gen/**/*.png"}
              outputs: {o: build/each}
          - id: make
            type: shell
            config:
              cmd: 'echo m > {outputs.o}'
              outputs: {o: gen/m.png}
    """)  # fmt: skip
    p.cli("build", "--no-progress")
    assert _files(p, "build/each") == ["m.png"]

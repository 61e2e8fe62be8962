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
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TRACEBACK, Proj, shell_foreach

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


# 4. the pipeline file of a subfolder's project ---------------------------------------------

UP = """
name: up
stages:
  - id: top
    type: shell
    config: {cmd: 'cat {inputs.i} > {outputs.o}', inputs: {i: sub/in.txt}, outputs: {o: out/x.txt}}
  - id: low
    type: shell
    config:
      cmd: 'echo low; cat {inputs.i} > {outputs.o}'
      inputs: {i: sub/in.txt}
      outputs: {o: sub/out/x.txt}
"""


def _here(where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``pipemake ARGS`` run in ``where``, with no ``-C`` nor ``-f``."""
    env = {k: v for k, v in os.environ.items() if k != "PIPEMAKE_CACHE_DIR"}
    return subprocess.run(
        [sys.executable, "-m", "pipemake", *args], cwd=where, capture_output=True, text=True,
        env=env, timeout=60,
    )  # fmt: skip


def test_a_command_in_a_subfolder_uses_the_project_above_as_minus_c_would(
    project: Callable[..., Proj],
) -> None:
    p = project(UP, {"sub/in.txt": "x\n"})
    (p.root / ".git").mkdir()  # the top of the repository holds the project: found there
    deeper = p.path("sub/deeper")
    deeper.mkdir()
    done = _here(deeper, "dry-run")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["top: run: never built", "low: run: never built"]
    said = f"pipemake: using {p.root / 'pipemake.yaml'} (found above the current folder)"
    assert done.stderr.count(said) == 1, done.stderr
    # a TARGET path typed from the subfolder means that file: sub/out/x.txt, not out/x.txt
    done = _here(p.path("sub"), "build", "--no-progress", "out/x.txt")
    assert done.returncode == 0, done.stderr
    assert p.exists("sub/out/x.txt") and not p.exists("out/x.txt")
    assert not p.exists("sub/.pipemake") and p.exists(".pipemake")  # the project's own
    done = _here(deeper, "build", "--no-progress", "../../out/x.txt")
    assert done.returncode == 0, done.stderr
    assert p.read("out/x.txt") == "x\n" and done.stderr.count(said) == 1
    # a path only the project root makes sense of still resolves from the subfolder
    p.path("out/x.txt").unlink()
    assert _here(deeper, "build", "--no-progress", "out/x.txt").returncode == 0
    assert p.exists("out/x.txt")
    assert "top: up to date" in _here(deeper, "status").stdout


def test_with_minus_c_a_target_path_is_read_against_the_project_first(
    project: Callable[..., Proj],
) -> None:
    """``cd sub && pipemake -C .. build out/x.txt`` means the project's out/x.txt, as
    ``make -C ..`` would: only a pipeline found by looking upward reads from the subfolder
    first."""
    p = project(UP, {"sub/in.txt": "x\n"})
    done = _here(p.path("sub"), "-C", "..", "dry-run", "out/x.txt")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["top: run: never built"]


def test_the_search_stops_at_the_repository_top_and_init_never_searches(
    tmp_path: Path, project: Callable[..., Proj]
) -> None:
    p = project(UP, {"sub/in.txt": "x\n"})
    repo = p.path("repo")
    (repo / ".git").mkdir(parents=True)
    (repo / "a").mkdir()
    for where in (repo, repo / "a"):
        done = _here(where, "status")
        assert done.returncode == 2, done.stdout + done.stderr
        assert "no pipeline file here" in done.stderr and TRACEBACK not in done.stderr
        assert "found above" not in done.stderr
    # pipeline.yaml (the original system's) is found above as it is here
    other = tmp_path / "orig"
    (other / "s").mkdir(parents=True)
    (other / ".git").mkdir()
    (other / "pipeline.yaml").write_text((p.root / "pipemake.yaml").read_text())
    (other / "sub").mkdir()
    (other / "sub" / "in.txt").write_text("y\n")
    done = _here(other / "s", "validate")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("pipemake: using") == 1 and "pipeline.yaml" in done.stderr
    done = _here(p.path("sub"), "init")
    assert done.returncode == 0, done.stderr
    assert p.exists("sub/pipemake.yaml") and "found above" not in done.stderr


# 3. entries of no file added to a built input are said on the next build -------------------

LEFT = "hold no file and are left out of its items"


def test_a_dangling_link_added_to_a_built_tree_is_said_on_the_next_build_once(
    project: Callable[..., Proj],
) -> None:
    p = project(shell_foreach("cp {inputs.src} {outputs.o}/{item.name}"), {"data/a.txt": "a\n"})
    p.sub("build", "--no-progress")
    p.sub("build", "--no-progress")  # a no-op: leaves the snapshot a next no-op answers from
    os.symlink("/nonexistent/x", p.path("data/d.txt"))
    out = p.sub("build", "--no-progress").stderr
    said = (
        "each| 1 entry of input 'src' (data) holds no file and is left out of its items "
        "(first: data/d.txt, a symlink that leads nowhere); remove it, or link to files"
    )
    assert out.count(said) == 1, out
    assert "left out" not in p.sub("build", "--no-progress").stderr  # unchanged: said once
    assert "left out" not in p.cli("build", "--no-progress").output
    # another one (deeper, and a FIFO) is said again, with every entry counted
    p.path("data/sub").mkdir()
    os.mkfifo(p.path("data/sub/f.fifo"))
    out = p.cli("build", "--no-progress").output
    assert f"each| 2 entries of input 'src' (data) {LEFT} (first: data/d.txt" in out, out
    assert os.listdir(p.path("build/each")) == ["a.txt"]


def test_an_unchanged_tree_is_not_listed_again_to_look_for_entries_of_no_file(
    project: Callable[..., Proj], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipemake import resolve

    listed: list[str] = []
    real = resolve.left_out
    monkeypatch.setattr(resolve, "left_out", lambda base: listed.append(base) or real(base))
    files = {f"data/{i:03}.txt": f"{i}\n" for i in range(50)}
    p = project(shell_foreach("cp {inputs.src} {outputs.o}/{item.name}"), files)
    os.symlink("/nonexistent/x", p.path("data/d.txt"))
    out = p.cli("build", "--no-progress").output
    assert out.count(LEFT.replace("hold", "holds").replace("are", "is")) == 1, out
    listed.clear()
    out = p.cli("build", "--no-progress").output
    assert "left out" not in out and listed == []  # nothing listed, nothing said
    os.symlink("/nonexistent/y", p.path("data/e.txt"))
    out = p.cli("build", "--no-progress").output
    assert f"each| 2 entries of input 'src' (data) {LEFT}" in out and listed == []


# 2. a UTF-8 name inside an input under an ASCII locale ------------------------------------

ASCII = {"LANG": "C", "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


def _ascii(p: Proj, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PIPEMAKE_CACHE_DIR", "LC_CTYPE")}
    env.update(ASCII)
    env.pop("PYTHONIOENCODING", None)
    done = subprocess.run(p.argv(*args), capture_output=True, env=env, timeout=60)
    return done.returncode, (done.stdout + done.stderr).decode("utf-8", "replace")


def _is_ascii_here() -> bool:
    env = {k: v for k, v in os.environ.items() if k != "LC_CTYPE"}
    env.update(ASCII)
    env.pop("PYTHONIOENCODING", None)
    code = "import sys; print(sys.getfilesystemencoding())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return out.stdout.strip() == "ascii"


needs_ascii = pytest.mark.skipif(not _is_ascii_here(), reason="LANG=C is not ASCII here")
FIX = "run pipemake under a UTF-8 locale (LC_ALL=C.UTF-8) or with PYTHONUTF8=1"


@needs_ascii
def test_a_utf8_name_inside_an_input_stops_an_ascii_build_before_anything_runs(
    project: Callable[..., Proj],
) -> None:
    p = project(
        shell_foreach("echo x >> runs/each.count; cp {inputs.src} {outputs.o}/{item.name}"),
        {"data/a.txt": "a\n", "data/sub/café.txt": "b\n"},
    )
    for command in (["build", "--no-progress"], ["dry-run"], ["validate"]):
        code, out = _ascii(p, *command)
        assert code == 2, out
        assert "pipemake.yaml:3: stage 'each': input 'src': the file name " in out, out
        assert "data/sub/caf" in out and FIX in out and TRACEBACK not in out
    assert not p.exists("build") and p.runs("each") == 0
    # under a UTF-8 locale it builds; back under ASCII, a cached plan says so again
    p.sub("build", "--no-progress")
    assert sorted(os.listdir(p.path("build/each"))) == ["a.txt", "café.txt"]
    p.write("data/c.txt", "c\n")
    code, out = _ascii(p, "build", "--no-progress")
    assert code == 2 and FIX in out and "not valid UTF-8" not in out, out
    assert p.runs("each") == 2 and not p.exists("build/each/c.txt")


@needs_ascii
def test_a_utf8_name_an_upstream_stage_writes_under_an_ascii_locale_says_the_fix(
    project: Callable[..., Proj],
) -> None:
    p = project("""
        name: made
        stages:
          - id: make
            type: shell
            config:
              cmd: 'mkdir -p {outputs.o}; printf x > {outputs.o}/$(printf "caf\\303\\251").txt'
              outputs: {o: gen}
          - id: each
            type: shell
            foreach: src
            config:
              cmd: 'echo x >> runs/each.count; cp {inputs.src} {outputs.o}/{item.name}'
              inputs: {src: "{make.o}"}
              outputs: {o: build/each}
    """)  # fmt: skip
    code, out = _ascii(p, "build", "--no-progress")
    assert code == 1 and "FAILED make: the file name gen/caf" in out, out
    assert "is UTF-8, which this locale's encoding (ascii) cannot read" in out
    assert FIX in out and "not valid UTF-8" not in out and TRACEBACK not in out
    assert p.runs("each") == 0


def test_what_remembers_the_items_of_a_double_star_glob_tells_it_from_before() -> None:
    """A workspace built before ``**/`` took the top level remembered that glob's items
    under its text; the new reading must not find that memo (the stage lists its items
    again, and runs only the top-level ones it now takes), while a glob without ``**/``
    keeps its memo."""
    from pipemake.items import has_deep

    assert has_deep("data/**/*.png", None)
    assert has_deep("data", "*.jpg|**/*.png")
    assert has_deep("**/*.png")
    assert not has_deep("data/*.png", "*.png|x/*.jpg")
    assert not has_deep("data/a**/b.png", None)  # not a whole ``**/`` component
    assert not has_deep("data", None)

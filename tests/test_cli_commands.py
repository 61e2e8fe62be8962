"""The inspection commands: status (with orphans), validate, graph, list, clean, cache
(issue 2, behaviour 7)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import CHAIN_STAGES, UPPER, UPPER_FILES, Proj


def _status(p: Proj, *args: str, code: int = 0) -> dict[str, str]:
    out = p.cli("status", *args, code=code).stdout
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^(\w+): (.*)$", line)
        if m and m.group(1) in CHAIN_STAGES:
            rows[m.group(1)] = m.group(2)
    return rows


# status ----------------------------------------------------------------------------------
def test_status_of_a_fresh_project_says_never_built(chain: Proj) -> None:
    rows = _status(chain)
    assert set(rows) == set(CHAIN_STAGES)
    assert all(r.startswith("never built") for r in rows.values()), rows
    assert not chain.exists("build")


def test_status_after_build_and_after_a_change(chain: Proj) -> None:
    chain.cli("build")
    rows = _status(chain)
    assert all(r.startswith("up to date") for r in rows.values()), rows
    chain.write("data/b.txt", "wasp\n")
    rows = _status(chain)
    assert rows["side"].startswith("stale")
    assert "data/b.txt" in rows["side"]
    assert rows["upper"].startswith("up to date")
    assert rows["report"].startswith("stale")


def test_status_json(chain: Proj) -> None:
    chain.cli("build")
    os.remove(chain.path("build/side.txt"))
    data = json.loads(chain.cli("status", "--json").stdout)
    states = {row["stage"]: row["state"] for row in data["stages"]}
    assert states["upper"] == "up to date"
    assert states["side"] == "stale"
    assert data["orphans"] == []


def test_status_shows_a_failed_stage(project) -> None:
    p = project("""
        name: t
        version: 1
        stages:
          - id: boom
            type: shell
            config:
              cmd: "echo kaput >&2; exit 5"
              outputs: {o: build/o.txt}
        """)
    p.cli("build", code=1)
    out = p.cli("status").stdout
    assert "boom: failed" in out
    p.cli("status", "--check", code=1)


def test_status_check_exit_codes(chain: Proj) -> None:
    chain.cli("status", "--check", code=1)
    chain.cli("build")
    chain.cli("status", "--check", code=0)
    chain.edit("pipemake.yaml", "SEP: one", "SEP: two")
    chain.cli("status", "--check", code=1)
    chain.cli("status", code=0)


def test_status_lists_orphans_and_clean_orphans_removes_them(chain: Proj) -> None:
    chain.cli("build")
    chain.edit("pipemake.yaml", "build/report", "build/report2")
    chain.cli("build")
    # the old output path stays where it is (as Make leaves it) and is an orphan
    assert chain.exists("build/report/n.txt")
    out = chain.cli("status").stdout
    assert "build/report" in out.split("orphan", 1)[-1]
    data = json.loads(chain.cli("status", "--json").stdout)
    assert data["orphans"] == ["build/report"]
    out = chain.cli("clean", "--orphans").stdout
    assert "build/report" in out
    assert not chain.exists("build/report")
    assert chain.read("build/report2/n.txt") == "2\n"
    assert chain.read("build/upper.txt") == "HELLO\nWORLD\n"
    assert json.loads(chain.cli("status", "--json").stdout)["orphans"] == []
    chain.cli("build")
    assert chain.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)


def test_outputs_of_a_removed_stage_are_orphans(chain: Proj) -> None:
    chain.cli("build")
    text = chain.read("pipemake.yaml")
    chain.write("pipemake.yaml", text[: text.index("  - id: report")])
    data = json.loads(chain.cli("status", "--json").stdout)
    assert data["orphans"] == ["build/report"]
    assert chain.exists("build/report/n.txt")


# validate / graph / list -----------------------------------------------------------------
def test_validate_prints_the_plan_in_dependency_order(chain: Proj) -> None:
    out = chain.cli("validate").stdout
    assert "valid" in out
    pos = {s: out.index(s) for s in CHAIN_STAGES}
    assert pos["upper"] < pos["lines"] < pos["report"]
    assert pos["side"] < pos["report"]
    assert "shell" in out
    assert not chain.exists("build")


def test_graph_text(chain: Proj) -> None:
    out = chain.cli("graph").stdout
    for s in CHAIN_STAGES:
        assert s in out


def test_graph_mermaid_has_every_edge(chain: Proj) -> None:
    out = chain.cli("graph", "--format", "mermaid").stdout
    assert out.lstrip().startswith(("flowchart", "graph"))
    edges = re.findall(r"(\w+)\s*-->\s*(\w+)", out)
    names = {(a.removeprefix("s_"), b.removeprefix("s_")) for a, b in edges}
    assert names == {("upper", "lines"), ("lines", "report"), ("side", "report")}


def test_graph_dot_has_every_edge(chain: Proj) -> None:
    out = chain.cli("graph", "--format", "dot").stdout
    assert out.lstrip().startswith("digraph")
    edges = set(re.findall(r'"?(\w+)"?\s*->\s*"?(\w+)"?', out))
    assert edges == {("upper", "lines"), ("lines", "report"), ("side", "report")}
    assert out.rstrip().endswith("}")


def test_graph_unknown_format_is_a_usage_error(chain: Proj) -> None:
    chain.cli("graph", "--format", "png", code=2)


def test_list_shows_stages_with_their_rules(chain: Proj) -> None:
    out = chain.cli("list").stdout
    for s in CHAIN_STAGES:
        line = next(line for line in out.splitlines() if line.split()[0] == s)
        assert "shell" in line


# clean -----------------------------------------------------------------------------------
def test_clean_removes_outputs_and_a_build_restores_them(chain: Proj) -> None:
    chain.cli("build")
    chain.write("data/keep.txt", "source\n")
    chain.cli("clean")
    for rel in ("build/upper.txt", "build/lines.txt", "build/side.txt", "build/report"):
        assert not chain.exists(rel)
    assert chain.read("data/a.txt") == "hello\nworld\n"
    assert chain.read("data/keep.txt") == "source\n"
    r = chain.cli("build")
    assert chain.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)
    assert chain.read("build/report/sub/side.txt") == "bee\none\n"
    assert "4 restored" in r.output


def test_clean_orphans_leaves_current_outputs(chain: Proj) -> None:
    chain.cli("build")
    chain.cli("clean", "--orphans")
    assert chain.read("build/side.txt") == "bee\none\n"


# cache -----------------------------------------------------------------------------------
def test_cache_info_counts_objects_and_entries(chain: Proj) -> None:
    chain.cli("build")
    out = chain.cli("cache", "info").stdout
    entries = int(re.search(r"entries:\s*(\d+)", out).group(1))
    objects = int(re.search(r"objects:\s*(\d+)", out).group(1))
    assert entries == 4
    # upper, lines, side, report/n.txt (same bytes as lines), report/sub/side.txt (= side)
    assert objects == 3


def test_cache_verify_ok(chain: Proj) -> None:
    chain.cli("build")
    out = chain.cli("cache", "verify").stdout
    assert "OK" in out


@pytest.mark.parametrize("how", [("-C", "ws"), ("-f", "ws/pipemake.yaml"), ("-C", "./ws/")])
@pytest.mark.slow
def test_a_relative_project_path_from_the_parent_folder(chain: Proj, how: tuple[str, str]) -> None:
    """``pipemake -C examples/x build`` as the README writes it: the relative folder is
    taken once, from where the command was started (a regression that looked in
    ``examples/x/examples/x``)."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "pipemake", *how]
    cwd = chain.root.parent
    assert chain.root.name == "ws"
    build = subprocess.run(
        [*argv, "build", "--no-progress"], cwd=cwd, capture_output=True, text=True
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert set(chain.run_counts()) == set(CHAIN_STAGES)
    again = subprocess.run([*argv, "status"], cwd=cwd, capture_output=True, text=True)
    assert again.returncode == 0 and "never built" not in again.stdout, again.stdout


def test_python_m_pipemake_in_a_project_with_stdlib_named_files(project) -> None:
    """``python -m pipemake`` run in the project: its ``json.py`` and ``copy.py`` do not
    hide the standard library from pipemake, and a python stage still imports the
    project's own modules."""
    proj = project(
        UPPER,
        {
            **UPPER_FILES,
            "json.py": "raise SystemExit('the project json.py was imported')\n",
            "copy.py": "raise SystemExit('the project copy.py was imported')\n",
        },
    )
    for _ in range(2):
        r = subprocess.run(
            [sys.executable, "-m", "pipemake", "build", "--no-progress"],
            cwd=proj.root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stdout + r.stderr
    assert proj.read("build/a.txt") == "ABC\n"
    assert "1 up to date" in r.stderr

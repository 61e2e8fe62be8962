"""Small fixes of the eighth round: a JSON params file naming a key twice is refused as
YAML and TOML ones are; a missing params key names the files read; ``commit`` shows file
names escaped, as the other commands do."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import TRACEBACK, Proj

USES_LR = """
params: FILE
stages:
  - id: s
    type: shell
    config:
      cmd: "echo {params.lr} > {outputs.o}"
      inputs: {i: data/a.txt}
      outputs: {o: build/o.txt}
"""


def test_a_json_params_file_naming_a_key_twice_is_refused(
    project: Callable[..., Proj],
) -> None:
    p = project(
        USES_LR.replace("FILE", "p.json"),
        {"data/a.txt": "a\n", "p.json": '{\n  "lr": 0.1,\n  "lr": 0.01\n}\n'},
    )
    r = p.cli("validate", code=2)
    assert "p.json:3" in r.output and "duplicate key 'lr' (first at line 2)" in r.output
    assert TRACEBACK not in r.output
    p.cli("build", code=2)
    assert not p.exists("build/o.txt")


@pytest.mark.parametrize(
    ("text", "line", "first"),
    [
        # the same key in two objects is no duplicate; in one nested object it is
        ('{"a": {"lr": 1}, "b": {"lr": 2},\n "b2": {"x": {"y": 1},\n "x": 2}, "lr": 3}', 3, 2),
        # a key spelt with an escape is the same key; braces in strings do not count
        ('{"s": "{not an object",\n "lr": 1,\n "l\\u0072": 2}', 3, 2),
    ],
)
def test_the_duplicate_key_s_line_is_found_in_nested_objects(
    project: Callable[..., Proj], text: str, line: int, first: int
) -> None:
    p = project(USES_LR.replace("FILE", "p.json"), {"data/a.txt": "a\n", "p.json": text})
    r = p.cli("validate", code=2)
    assert f"p.json:{line}): duplicate key" in r.output
    assert f"(first at line {first})" in r.output


def test_a_json_params_file_without_duplicates_still_works(
    project: Callable[..., Proj],
) -> None:
    p = project(
        USES_LR.replace("FILE", "p.json"),
        {"data/a.txt": "a\n", "p.json": '{"a": {"lr": 1}, "b": {"lr": 2}, "lr": 0.5}'},
    )
    p.cli("build")
    assert p.read("build/o.txt") == "0.5\n"


def test_a_missing_params_key_names_the_files_read(project: Callable[..., Proj]) -> None:
    p = project(
        USES_LR.replace("FILE", "params.yaml").replace("params.lr", "params.lrr"),
        {"data/a.txt": "a\n", "params.yaml": "lr: 0.1\n"},
    )
    r = p.cli("validate", code=2)
    assert "params.yaml has no key 'lrr'" in r.output
    p.edit("pipemake.yaml", "params: params.yaml", "params: [params.yaml, more.json]")
    p.write("more.json", '{"epochs": 3}')
    r = p.cli("validate", code=2)
    assert "the params files (params.yaml, more.json) have no key 'lrr'" in r.output


EACH = """
stages:
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "tr a-z A-Z < {inputs.src} > {outputs.o}/{item.name}"
      inputs: {src: data}
      outputs: {o: build/each}
"""


def test_commit_shows_file_names_escaped(project: Callable[..., Proj]) -> None:
    """An item named with a terminal's title sequence, and an own file with a newline in
    its name: ``commit`` writes them out (``\\x1b``, ``\\n``), never raw."""
    title = "a\x1b]0;PWNED-TITLE\x07.txt"
    p = project(EACH, {f"data/{title}": "s\n", "data/b.txt": "t\n"})
    p.write(f"build/each/{title}", "S\n")
    p.write("build/each/b.txt", "T\n")
    p.write("build/each/\x1b[31mNOTES\x1b[0m\n.md", "n\n")
    r = p.cli("commit", "each")
    assert "\x1b" not in r.output and "\x07" not in r.output
    assert "\\x1b]0;PWNED-TITLE\\x07" in r.output
    assert "NOTES\\x1b[0m\\n.md" in r.output
    assert all(not line.startswith(".md") for line in r.output.splitlines())

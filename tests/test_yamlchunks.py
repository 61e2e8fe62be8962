"""The per-stage YAML cache must give exactly what a full parse gives: values and lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipemake.yamlchunks import load_yaml_cached
from pipemake.yamlload import LineDict, YamlError, load_yaml

PIPELINE = """\
name: big   # a comment
vars: {n: 3, path: data}
stages:
  # the first stage
  - id: a
    type: shell
    config:
      cmd: |
        echo one
        echo two > {outputs.o}
      outputs: {o: build/a.txt}

  - id: b
    type: shell
    depends_on: [a]
    config: {cmd: "cp {inputs.i} {outputs.o}", inputs: {i: "{a.o}"}, outputs: {o: b.txt}}
on_success: "echo done"
"""


def _lines(value: Any) -> Any:
    """A value with every LineDict's own line and key lines made visible."""
    if isinstance(value, LineDict):
        return {
            "@": value.line,
            "@keys": dict(value.lines),
            **{k: _lines(v) for k, v in value.items()},
        }
    if isinstance(value, list):
        return [_lines(v) for v in value]
    return value


def test_same_values_and_lines_as_a_full_parse(tmp_path: Path) -> None:
    cache = tmp_path / "chunks.json"
    full = _lines(load_yaml(PIPELINE))
    assert _lines(load_yaml_cached(PIPELINE, cache)) == full
    assert cache.exists()
    assert _lines(load_yaml_cached(PIPELINE, cache)) == full  # from the cache this time


def test_an_edited_stage_is_parsed_again_and_lines_shift(tmp_path: Path) -> None:
    cache = tmp_path / "chunks.json"
    load_yaml_cached(PIPELINE, cache)
    edited = PIPELINE.replace("  - id: b\n", "  - id: b\n    # new line\n").replace(
        "b.txt", "c.txt"
    )
    assert _lines(load_yaml_cached(edited, cache)) == _lines(load_yaml(edited))


@pytest.mark.parametrize(
    "text",
    [
        "stages: [{id: a, type: shell}]\n",  # flow style
        "base: &b {type: shell}\nstages:\n  - <<: *b\n    id: a\n",  # anchors and aliases
        "stages:\n- id: a\n  type: shell\n- id: b\n  type: shell\n",  # items at column 0
    ],
)
def test_other_shapes_match_the_full_parse(tmp_path: Path, text: str) -> None:
    assert _lines(load_yaml_cached(text, tmp_path / "c.json")) == _lines(load_yaml(text))


def test_a_broken_stage_reports_the_full_parse_error(tmp_path: Path) -> None:
    broken = PIPELINE.replace("    type: shell\n    depends_on", "    type: [shell\n    depends_on")
    with pytest.raises(YamlError) as full:
        load_yaml(broken)
    with pytest.raises(YamlError) as cached:
        load_yaml_cached(broken, tmp_path / "c.json")
    assert (str(cached.value), cached.value.line) == (str(full.value), full.value.line)


def test_unchanged_stages_are_not_parsed_again(tmp_path: Path, monkeypatch: Any) -> None:
    import pipemake.yamlchunks as chunks

    cache = tmp_path / "chunks.json"
    calls: list[str] = []

    def counting(text: str) -> Any:
        calls.append(text)
        return load_yaml(text)

    monkeypatch.setattr(chunks, "load_yaml", counting)
    load_yaml_cached(PIPELINE, cache)
    assert len(calls) == 3  # the header and two stages
    calls.clear()
    load_yaml_cached(PIPELINE.replace("b.txt", "c.txt"), cache)
    assert len(calls) == 2 and "c.txt" in calls[1]  # the header and the edited stage only

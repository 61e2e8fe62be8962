"""A run log or run index of another shape (edited by hand, written by another version,
damaged) never turns `log`, `status --pipeline-id`, `list --runs` or `status` into a
traceback: fields of another type are left out, lines of another kind skipped."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import TRACEBACK, UPPER, UPPER_FILES, Proj

from pipemake import history


def _mangle(events: list[dict[str, Any]], how: Any) -> list[Any]:
    out = []
    for ev in events:
        ev = dict(ev)
        for key in list(ev):
            if key != "event":
                ev[key] = how
        out.append(ev)
    return out


COMMANDS = [("log",), ("log", "-q"), ("log", "--json"), ("list", "--runs"),
            ("status", "--pipeline-id", "-1"), ("status",), ("status", "--json")]  # fmt: skip


@pytest.mark.parametrize("how", ["zz", ["zz"], {"q": 1}, None, 7, 1e308, True, [["x"]]])
def test_every_field_of_another_type_is_read_as_absent(
    project: Callable[..., Proj], how: Any
) -> None:
    p = project(UPPER, UPPER_FILES)
    p.cli("build", "--no-progress")
    runs = p.root / ".pipemake" / "runs"
    log = next(f for f in runs.glob("*.jsonl") if f.name != "index.jsonl")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    log.write_text("".join(json.dumps(e) + "\n" for e in _mangle(events, how)))
    index = runs / "index.jsonl"
    summary = json.loads(index.read_text())
    index.write_text(json.dumps({k: (v if k == "id" else how) for k, v in summary.items()}))
    for args in COMMANDS:
        result = p.cli(*args, code=None)
        assert result.exit_code == 0, (args, result.output)
        assert TRACEBACK not in result.output and result.exception is None, (args, result.output)


def test_lines_of_another_kind_are_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    log = tmp_path / "r.jsonl"
    good = {"event": "log", "stage": "a", "time": 1.0, "text": "kept", "level": "info"}
    lines = [
        "[1, 2]", "42", "null", "\udcff garbage", "[" * 100_000,
        json.dumps({"event": ["x"], "stage": "a"}),
        json.dumps({"event": "log", "stage": ["a"], "text": "dropped"}),
        json.dumps({**good, "time": "noon", "extra": {"any": "thing"}}),
        json.dumps(good),
    ]  # fmt: skip
    log.write_text("\n".join(lines) + "\n", errors="surrogateescape")
    got = history.read_events(log)
    assert got == [{**{k: v for k, v in good.items() if k != "time"}, "extra": {"any": "thing"}},
                   good]  # fmt: skip


def test_a_list_of_stage_ids_keeps_only_its_ids(tmp_path: Path) -> None:
    log = tmp_path / "r.jsonl"
    ev = {"event": "run_finished", "stage": None, "ran": ["a", ["b"]], "failed": {"a": "x"},
          "duration": float("nan")}  # fmt: skip
    log.write_text(json.dumps(ev) + "\n")
    assert history.read_events(log) == [
        {"event": "run_finished", "stage": None, "ran": ["a"], "failed": {"a": "x"}}
    ]

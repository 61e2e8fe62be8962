"""The views of a running build (issue 3): plain timestamped lines when stderr is not a
terminal, the rich live view, and the closing summary of a failed or stopped build."""

from __future__ import annotations

import io
import re
import signal
import sys
from typing import Any

import pytest
from conftest import Proj

from pipemake import progress
from pipemake.events import Event
from pipemake.progress import PlainView, RichView, log_lines, make_view, summary_lines

STAMP = re.compile(r"^\[\d\d:\d\d:\d\d\] ")


def test_plain_lines_when_stderr_is_not_a_terminal(chain: Proj) -> None:
    r = chain.cli("build", "--executor", "inline")  # CliRunner's stderr is no terminal
    lines = r.stderr.splitlines()
    assert lines and all(STAMP.match(line) for line in lines), r.stderr
    assert "\x1b[" not in r.stderr  # no escape codes
    text = r.stderr
    assert re.search(r"building 4 stage\(s\)\n", text)  # no ETA before any decision
    for stage in ("upper", "lines", "side", "report"):
        assert f"{stage}: running (never built)" in text
        assert re.search(rf"{stage}: done in [\d.]+s  \[\d/4", text)
    assert "4 ran, 0 restored, 0 up to date in" in text
    assert r.stdout == ""


def test_keep_going_summary_lists_failed_skipped_and_finished(project) -> None:
    p = project(
        """
        name: k
        version: 1
        stages:
          - id: bad
            type: shell
            config:
              cmd: "echo first problem >&2; echo second problem >&2; exit 4"
              outputs: {o: build/bad.txt}
          - id: after
            type: shell
            config:
              cmd: "cp {inputs.i} {outputs.o}"
              inputs: {i: "{bad.o}"}
              outputs: {o: build/after.txt}
          - id: fine
            type: shell
            config:
              cmd: "echo ok > {outputs.o}"
              outputs: {o: build/fine.txt}
        """
    )
    text = p.cli("build", "-k", "--executor", "inline", code=1).stderr
    tail = text[text.index("0 restored") :]
    assert "1 ran, 0 restored, 0 up to date, 1 failed (bad), 1 not run" in text
    assert re.search(r"FAILED bad: command exited with code 4", tail)
    assert "first problem" in tail and "second problem" in tail
    assert "skipped because of a failure: after (upstream bad failed)" in tail
    assert "finished: fine" in tail
    assert "bad: FAILED: command exited with code 4" in text


def _feed(view: Any, clock: list[float]) -> None:
    def ev(kind: str, stage: str | None = None, **data: Any) -> None:
        view(Event(kind, stage, data, clock[0]))

    ev("run_started", stages=["seg", "old"], expected={"seg": 50.0, "old": 1.0},
       deps={"seg": [], "old": []}, jobs=2)  # fmt: skip
    ev("stage_skipped", "old", reason="up to date")
    ev("stage_started", "seg", reasons=["never built"],
       items={"total": 100, "run": 100, "cached": 0, "removed": 0})  # fmt: skip
    for done in range(1, 101):
        clock[0] += 0.5
        ev("progress", "seg", done=done, total=100, unit="items")
    ev("stage_finished", "seg", duration=50.0, items=100, items_run=100)
    ev("run_finished", ran=["seg"], restored=[], up_to_date=["old"], failed={}, skipped={},
       duration=50.0, interrupted=None)  # fmt: skip


def test_plain_view_prints_progress_every_few_seconds_with_an_eta() -> None:
    out = io.StringIO()
    clock = [1000.0]
    _feed(PlainView(out, clock=lambda: clock[0]), clock)
    lines = [line for line in out.getvalue().splitlines() if "items, ETA" in line]
    # 50 s of progress, a line at most every PROGRESS_EVERY seconds, none for the last item
    assert progress.PROGRESS_EVERY == 10.0
    assert len(lines) == 4  # at 10, 20, 30 and 40 s; the last item's progress gets no line
    assert "seg: 20/100 items, ETA 40.0s" in lines[0]
    assert "seg: done in 50.0s (100 items, 100 run)" in out.getvalue()
    assert "1 ran, 0 restored, 1 up to date in 50.0s" in out.getvalue()


def test_rich_view_draws_bars_stage_lines_and_the_summary() -> None:
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120, color_system=None)
    clock = [1000.0]
    view = RichView(console=console, clock=lambda: clock[0])
    try:
        view(Event("run_started", None, {"stages": ["a", "b"], "expected": {"a": 30, "b": 5},
                                         "deps": {"a": [], "b": ["a"]}}, clock[0]))  # fmt: skip
        view(Event("stage_started", "a", {"reasons": []}, clock[0]))
        clock[0] += 6
        view(Event("progress", "a", {"done": 3, "total": 10, "unit": "items"}, clock[0]))
        panel = Console(file=io.StringIO(), width=120)
        panel.print(view)  # as rich draws it now
        drawn = panel.file.getvalue()  # type: ignore[attr-defined]
        assert "0/2 stages" in drawn and "6.0s" in drawn
        assert "ETA 19.0s" in drawn  # a: 14 s left at 2 s per item, then b: 5 s
        assert "▶ a" in drawn and "3/10 items" in drawn and "ETA 14.0s" in drawn
        assert "━" in drawn  # the bars
        view(Event("stage_finished", "a", {"duration": 20.0}, clock[0]))
        view(Event("stage_restored", "b", {"reasons": ["x"]}, clock[0]))
        view(Event("run_finished", None, {"ran": ["a"], "restored": ["b"], "up_to_date": [],
                                          "failed": {}, "skipped": {}, "duration": 21.0,
                                          "interrupted": None}, clock[0]))  # fmt: skip
    finally:
        view.close()
    out = buf.getvalue()
    assert "✓ a  ran in 20.0s" in out
    assert "↺ b  restored from the store" in out
    assert "1 ran, 1 restored, 0 up to date in 21.0s" in out


def test_make_view_picks_rich_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Tty())
    monkeypatch.delenv("TERM", raising=False)
    assert isinstance(make_view(plain=True), PlainView)  # --no-progress
    view = make_view(plain=False)
    try:
        assert isinstance(view, RichView)
    finally:
        view.close()
    monkeypatch.setenv("TERM", "dumb")
    assert isinstance(make_view(plain=False), PlainView)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(make_view(plain=False), PlainView)


def test_an_interrupted_summary_says_how_to_resume() -> None:
    lines = summary_lines(
        Event(
            "run_finished",
            None,
            {
                "ran": ["a"],
                "restored": [],
                "up_to_date": [],
                "failed": {},
                "skipped": {"b": "interrupted", "c": "interrupted"},
                "duration": 3.0,
                "interrupted": int(signal.SIGINT),
            },
        )  # fmt: skip
    )
    text = "\n".join(lines)
    assert "not run: b, c" in text and "finished: a" in text
    assert "stopped by SIGINT" in text and "run `pipemake build` again to resume" in text


def test_a_long_error_is_cut_in_the_summary() -> None:
    error = "\n".join(f"line {i}" for i in range(80))
    lines = summary_lines(
        Event(
            "run_finished",
            None,
            {
                "ran": [],
                "restored": [],
                "up_to_date": [],
                "failed": {"x": error},
                "skipped": {},
                "duration": 1.0,
            },
        )  # fmt: skip
    )
    text = "\n".join(lines)
    assert "FAILED x: line 0" in text and text.endswith("line 79")  # the end is kept
    assert "line 1\n" not in text  # cut in the middle
    assert "more line(s) in `pipemake log`" in text


def test_log_lines_keep_each_stages_last_progress_only() -> None:
    events = [
        {"event": "run_started", "stage": None, "time": 0.0, "run": "r1", "pipeline": "p",
         "stages": ["a"]},
        {"event": "stage_started", "stage": "a", "time": 1.0, "reasons": ["never built"]},
        *({"event": "progress", "stage": "a", "time": 1.0 + i, "done": i, "total": 3}
          for i in range(1, 4)),
        {"event": "log", "stage": "a", "time": 4.0, "level": "info", "text": "hello"},
        {"event": "stage_failed", "stage": "a", "time": 5.0, "error": "boom\nsecond line"},
        {"event": "run_finished", "stage": None, "time": 6.0, "ran": [], "restored": [],
         "up_to_date": [], "failed": {"a": "boom\nsecond line"}, "skipped": {}, "duration": 6.0},
    ]  # fmt: skip
    text = "\n".join(log_lines(events))
    assert "run r1 of 'p'" in text
    assert text.count("a: 3/3") == 1 and "a: 1/3" not in text
    assert "a| hello" in text and "a: FAILED: boom" in text and "second line" in text
    assert "0 ran, 0 restored, 0 up to date, 1 failed (a)" in text
    assert "a| hello" not in "\n".join(log_lines(events, verbose=False))

"""What a user sees on a terminal, second round: the live panel keeps its figures on narrow
terminals and with long stage names; the panel drawn under a stage's result line is the
current one, in its own colours; the panel before the run starts; the live line of a stage
that passed on retry; a notification's one-line error of a shell stage; the reason a
foreach stage stopped halfway gives; and non-ASCII commands and paths under an ASCII
locale.

The live view is driven with events and a rich ``Console`` writing to a ``StringIO`` (no
terminal emulator needed): what it prints is what a terminal would get."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable

from conftest import TRACEBACK, Proj
from rich.console import Console

from pipemake.decide import LastBuild, Verdict, decide
from pipemake.events import Event
from pipemake.hooks import run_summary
from pipemake.items import Item
from pipemake.progress import RichView

LONG = "stage_with_a_really_really_long_name_for_testing_layout_" + "x" * 10
#: a panel line that kept its figures: count, elapsed and ETA at its end
FIGURES = re.compile(r"(stages|running…|\d+/\d+(?: \w+)?)\s+\d+\.\ds\s+ETA (\d+\.\ds|\?)\s*$")
#: rich's cursor moves, line erases and colours
CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _view(width: int = 80, color: str | None = None) -> tuple[RichView, io.StringIO, list[float]]:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=width, color_system=color)
    clock = [1000.0]
    return RichView(console=console, clock=lambda: clock[0]), buf, clock


def _panel(view: RichView, width: int) -> list[str]:
    """The panel as rich draws it now at ``width`` columns, line by line."""
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=True, color_system=None).print(view)
    return [line for line in out.getvalue().splitlines() if line.strip()]


def _start(view: RichView, clock: list[float], stages: list[str], running: list[str]) -> None:
    expected = dict.fromkeys(stages, 10.0)
    deps: dict[str, list[str]] = {s: [] for s in stages}
    view(Event("run_started", None, {"stages": stages, "expected": expected, "deps": deps},
               clock[0]))  # fmt: skip
    for s in running:
        view(Event("stage_started", s, {"reasons": []}, clock[0]))
    clock[0] += 2.0


# 1. narrow terminals and long names -------------------------------------------------------


def test_a_long_name_is_cut_not_the_figures() -> None:
    view, _buf, clock = _view()
    try:
        _start(view, clock, [LONG, "fails"], [LONG, "fails"])
        view(Event("progress", "fails", {"done": 3, "total": 10, "unit": "items"}, clock[0]))
        for width in (40, 80, 120):
            lines = _panel(view, width)
            assert len(lines) == 3, lines
            for line in lines:
                assert len(line) <= width, (width, line)
                assert FIGURES.search(line), (width, line)
            assert lines[0].startswith("build") and "0/2 stages  2.0s  ETA" in lines[0]
            assert "running…  2.0s  ETA 8.0s" in lines[1]
            assert "3/10 items  2.0s  ETA" in lines[2]
            assert "…" in lines[1] and LONG not in lines[1]  # the name gave way
            assert "▶ stage_with" in lines[1] and "▶ fails" in lines[2]
    finally:
        view.close()


def test_the_bar_goes_before_the_figures_on_a_narrow_terminal() -> None:
    view, _buf, clock = _view()
    try:
        _start(view, clock, ["a", "b"], ["a"])
        view(Event("stage_skipped", "b", {"reason": "up to date"}, clock[0]))
        view(Event("progress", "a", {"done": 1, "total": 4}, clock[0]))
        wide = _panel(view, 100)
        assert "━" in wide[0] and "━" in wide[1]  # room: bars
        assert wide[0].startswith("build ") and FIGURES.search(wide[0])
        narrow = _panel(view, 40)
        assert all(len(line) <= 40 and FIGURES.search(line) for line in narrow), narrow
        assert "1/2 stages  2.0s  ETA" in narrow[0] and "1/4  2.0s  ETA" in narrow[1]
        assert "━" not in "".join(narrow)
        assert narrow[1].startswith("▶ a")  # a short name is kept whole
    finally:
        view.close()


# 2. the panel drawn with a result line ----------------------------------------------------


def _after(text: str, mark: str) -> str:
    at = text.rfind(mark)
    assert at >= 0, (mark, text)
    return text[at:]


def test_the_panel_under_a_result_line_is_the_current_one() -> None:
    view, buf, clock = _view(color="standard")
    try:
        _start(view, clock, ["a", "b"], ["a"])
        view.live.refresh()  # a frame drawn while a ran (the panel refreshes on its own)
        assert "▶ a" in CONTROL.sub("", buf.getvalue())
        view(Event("stage_finished", "a", {"duration": 1.0}, clock[0]))
        raw = _after(buf.getvalue(), "✓ a")
        drawn = CONTROL.sub("", raw)
        assert "✓ a  ran in 1.0s" in drawn
        assert "▶ a" not in drawn and "1/2 stages" in drawn and "0/2" not in drawn
        # the line in green, the panel in its own colours (bold "build"), not green
        assert "\x1b[32m  ✓ a  ran in 1.0s\x1b[0m" in buf.getvalue()
        before_build = raw[: raw.index("build")]
        last_sgr = re.findall(r"\x1b\[([0-9;]*)m", before_build)[-1]
        assert "32" not in last_sgr.split(";"), repr(before_build)
        view(Event("stage_started", "b", {"reasons": []}, clock[0]))
        view.live.refresh()
        view(Event("stage_failed", "b", {"error": "command exited with code 1:\n  $ x"}, clock[0]))
        raw = _after(buf.getvalue(), "✗ b")
        drawn = CONTROL.sub("", raw)
        assert "▶ b" not in drawn and "2/2 stages" in drawn
        last_sgr = re.findall(r"\x1b\[([0-9;]*)m", raw[: raw.index("build")])[-1]
        assert "31" not in last_sgr.split(";")  # not the FAILED line's red
    finally:
        view.close()


def test_before_the_run_starts_the_panel_says_so_and_its_clock_runs() -> None:
    view, buf, clock = _view()
    try:
        clock[0] += 3.0  # waiting for the build lock, say
        lines = _panel(view, 80)
        assert lines == [lines[0]] and "starting…  3.0s" in lines[0], lines
        assert "0/0" not in lines[0]
        view.live.refresh()  # drawn while waiting
        _start(view, clock, ["a", "b", "c"], [])
        view(Event("stage_skipped", "a", {"reason": "up to date"}, clock[0]))
        drawn = CONTROL.sub("", _after(buf.getvalue(), "= a"))
        assert "1/3 stages" in drawn and "0/0" not in drawn and "starting" not in drawn
    finally:
        view.close()


# 5. the live line of a stage that passed on retry -----------------------------------------


def test_the_live_line_says_on_which_attempt_a_stage_passed() -> None:
    view, buf, clock = _view()
    try:
        _start(view, clock, ["flaky"], ["flaky"])
        view(Event("stage_finished", "flaky", {"duration": 1.0, "attempts": 2,
                                               "retry_wait": 0.5}, clock[0]))  # fmt: skip
    finally:
        view.close()
    drawn = CONTROL.sub("", buf.getvalue())
    assert "✓ flaky  ran in 1.0s (on attempt 2; 0.5s of it waiting to retry)" in drawn


# 4. a notification's one-line error ------------------------------------------------------


def _summary(error: str) -> dict[str, object]:
    finished = {"ran": [], "failed": {"b": error}, "duration": 1.0}
    return run_summary("p", "r1", 0.0, finished)


def test_a_silent_failing_command_is_its_exit_code_in_a_notification() -> None:
    error = (
        "command exited with code 1:\n    $ test -f x && echo b > .pipemake/tmp/b-8a7124b8ce/o/b"
    )
    errors = _summary(error)["errors"]
    assert errors == {"b": "command exited with code 1"}
    loud = "command exited with code 3:\n    $ tool\n  output:\n    reading\n    error: no disk"
    assert _summary(loud)["errors"] == {"b": "command exited with code 3: error: no disk"}
    traceback = "ValueError: bad\nTraceback (most recent call last):\n  File x\nValueError: bad"
    assert _summary(traceback)["errors"] == {"b": "ValueError: bad"}


def test_a_hook_gets_the_exit_code_of_a_silent_shell_stage(project: Callable[..., Proj]) -> None:
    proj = project("""
        name: p
        on_failure: 'printf "%s" "$PIPEMAKE_SUMMARY" > hook.json'
        stages:
          - id: b
            type: shell
            config: {cmd: "test -f missing.cfg && echo b > {outputs.o}", outputs: {o: out/b.txt}}
    """)
    proj.cli("build", "--no-progress", code=1)
    summary = json.loads(proj.read("hook.json"))
    assert summary["errors"] == {"b": "command exited with code 1"}


# 5. a foreach stage stopped halfway ------------------------------------------------------


def test_a_foreach_stage_stopped_halfway_is_not_finished_with_items_kept() -> None:
    from test_decide import Stage, doc

    items = [Item(f"data/f{i:02d}.txt", f"f{i:02d}.txt", f"h{i}") for i in range(20)]
    cached = {it.relpath: {} for it in items[:14]}
    stage = Stage(doc(), foreach=True, items=items, cached=cached)
    d = decide(stage, None, None, LastBuild())  # no build of it finished: no record
    assert d.verdict is Verdict.RUN
    assert [str(r) for r in d.reasons] == [
        "not finished yet",
        "6 of 20 items to run (first: data/f14.txt: not built yet); 14 kept",
    ]
    fresh = decide(Stage(doc(), foreach=True, items=items), None, None, LastBuild())
    assert [str(r) for r in fresh.reasons][0] == "never built"  # nothing kept: never built


# 3. non-ASCII under an ASCII locale -------------------------------------------------------

ASCII = {"LANG": "C", "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


def _ascii_build(proj: Proj) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("PIPEMAKE_CACHE_DIR", "LC_CTYPE")}
    env.update(ASCII)
    env.pop("PYTHONIOENCODING", None)
    return subprocess.run(proj.argv("build", "--no-progress"), capture_output=True, env=env,
                          timeout=60)  # fmt: skip


def test_a_non_ascii_command_runs_under_an_ascii_locale(project: Callable[..., Proj]) -> None:
    proj = project("""
        name: p
        stages:
          - id: ok
            type: shell
            config:
              cmd: "echo 'héllo' > {outputs.o}; echo 'wärning' >&2"
              outputs: {o: out/a.txt}
              env: {GREETING: "grüß"}
          - id: env
            type: shell
            foreach: src
            config:
              cmd: 'printf "%s é\\n" "$GREETING" > {outputs.o}/{item.name}'
              inputs: {src: data}
              outputs: {o: out/each}
              env: {GREETING: "grüß"}
    """, {"data/x.txt": "x\n"})  # fmt: skip
    done = _ascii_build(proj)
    text = (done.stdout + done.stderr).decode("utf-8", "replace")
    assert done.returncode == 0, text
    assert TRACEBACK not in text and "UnicodeEncodeError" not in text
    assert proj.path("out/a.txt").read_bytes() == "héllo\n".encode()
    assert proj.path("out/each/x.txt").read_bytes() == "grüß é\n".encode()


def test_a_non_ascii_output_path_under_an_ascii_locale_is_a_clear_error(
    project: Callable[..., Proj],
) -> None:
    proj = project("""
        name: p
        stages:
          - id: ok
            type: shell
            config: {cmd: "echo a > {outputs.o}", outputs: {o: out/é.txt}}
    """)
    done = _ascii_build(proj)
    text = (done.stdout + done.stderr).decode("utf-8", "replace")
    assert done.returncode == 2, text
    assert TRACEBACK not in text
    assert "stage 'ok': output 'o'" in text and "cannot write" in text and "UTF-8" in text
    assert not proj.exists("out")


def test_the_ascii_locale_test_runs_under_that_locale() -> None:
    """The two tests above mean something only where Python does take LANG=C as ASCII."""
    env = {k: v for k, v in os.environ.items() if k != "LC_CTYPE"}
    env.update(ASCII)
    env.pop("PYTHONIOENCODING", None)
    code = "import sys; print(sys.getfilesystemencoding())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "ascii"

"""Text that comes from data (a value or file name a shared store holds, a stage's output
lines, a stray name in the store) never reaches the terminal as an escape sequence: the
build's progress lines, ``pipemake log``, ``status``, ``dry-run`` and ``cache verify`` show
each control character as ``\\x1b``-style text, and pipemake's own colours still work."""

from __future__ import annotations

import io
import json
import re
import shutil
import sqlite3
from pathlib import Path

from conftest import UPPER

from pipemake.events import Event
from pipemake.progress import PlainView, RichView, log_lines, visible

#: clear the screen, retitle the window, write the clipboard (OSC 52), a hyperlink (OSC 8),
#: a carriage return that overwrites the line, a one-byte CSI, a right-to-left override
EVIL = (
    "\x1b[2J\x1b]0;PWNED\x07\x1b]52;c;ZWNobyBwd25lZA==\x07"
    "\x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\\rforged\x9b31m\u202eevil"
)
#: what a terminal acts on: C0 but tab and newline, DEL, C1, the bidi overrides
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def assert_shown_not_acted_on(text: str) -> None:
    """No control character of ``EVIL`` is in ``text``; they are there as text."""
    assert not RAW.findall(text), RAW.findall(text)
    for shown in ("\\x1b[2J", "\\x1b]0;PWNED\\x07", "\\x0dforged", "\\x9b31m", "\\u202eevil"):
        assert shown in text, (shown, text)


def test_visible_writes_out_controls_and_keeps_text() -> None:
    assert visible(EVIL).count("\\x1b") == 7
    assert visible("tab\there\nnext line é ✓ 日本") == "tab\there\nnext line é ✓ 日本"
    assert visible("\x00\x7f\u2066\ud800") == "\\x00\\x7f\\u2066\\ud800"
    assert visible(3) == "3"
    assert_shown_not_acted_on(visible(EVIL))


def _events() -> list[Event]:
    return [
        Event("run_started", None, {"stages": [EVIL, "b"]}),
        Event("stage_started", EVIL, {"reasons": [f"param v {EVIL}"]}),
        Event("log", EVIL, {"level": "warning", "text": EVIL}),
        Event("progress", EVIL, {"done": 1, "total": 4, "unit": EVIL}),
        Event("stage_failed", EVIL, {"error": f"{EVIL}\nsecond {EVIL}"}),
        Event("stage_restored", "b", {"reasons": [EVIL]}),
        Event("run_finished", None, {"failed": {EVIL: EVIL}, "restored": ["b"], "duration": 1}),
    ]


def test_plain_progress_lines_show_controls_as_text() -> None:
    out = io.StringIO()
    view = PlainView(stream=out, clock=lambda: 0.0)
    for event in _events():
        view(event)
    assert_shown_not_acted_on(out.getvalue())
    assert "FAILED" in out.getvalue()


def _without_rich(text: str) -> str:
    """``text`` less what rich writes itself: SGR colours, cursor moves, line erases, CR."""
    return re.sub(r"\x1b\[\??[0-9;]*[mAKlh]|\r", "", text)


def test_the_rich_view_keeps_its_colours_but_not_the_datas() -> None:
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=200, color_system="standard")
    view = RichView(console=console, clock=lambda: 0.0)
    try:
        for event in _events():
            view(event)
    finally:
        view.close()
    text = buf.getvalue()
    assert "\x1b[2J" not in text and "\x1b]" not in text and "\x9b" not in text
    # rich's own: colours (ESC [ … m), and the live panel's cursor moves and line erases
    plain = _without_rich(text)
    assert re.search(r"\x1b\[[0-9;]*m", text), "the view lost its colours"
    assert not RAW.findall(plain), RAW.findall(plain)
    assert "\\x1b]8;;http://evil.example" in plain  # the hyperlink shown, not made
    assert "FAILED" in plain and plain.count("\\x1b[2J") >= 4  # each name, shown


def test_the_live_panel_shows_names_and_units_as_text() -> None:
    from rich.console import Console

    view = RichView(console=Console(file=io.StringIO()), clock=lambda: 0.0)
    try:
        view(Event("run_started", None, {"stages": [EVIL]}))
        view(Event("stage_started", EVIL, {}))
        view(Event("progress", EVIL, {"done": 1, "total": 4, "unit": "[link=http://x]u"}))
        panel = io.StringIO()
        Console(file=panel, force_terminal=True, width=400).print(view)
    finally:
        view.close()
    drawn = _without_rich(panel.getvalue())
    assert not RAW.findall(drawn), RAW.findall(drawn)
    assert "\\x1b[2J" in drawn
    assert "[link=http://x]u" in drawn  # a unit is text, never rich markup


def test_a_recorded_runs_log_shows_controls_as_text() -> None:
    recorded = [dict(e.as_json(), run="r1", pipeline=EVIL) for e in _events()]
    text = "\n".join(log_lines(recorded))
    assert_shown_not_acted_on(text)


# the attack as it was found: a value rewritten in a shared store ----------------------------

VALUES = (
    UPPER
    + """  - id: down
    type: shell
    config:
      cmd: "echo {up.v}; test {up.v} = plain > {outputs.d}"
      outputs: {d: build/down.txt}
"""
)
WORK = "def up(ctx):\n    ctx.outputs['o'].write_text('x')\n    return {'v': 'plain'}\n"


def _rewrite_value(store: Path, value: str) -> None:
    """What a writer of a shared store can do: change the computed values of the entries."""
    db = sqlite3.connect(store / "actions.db")
    for key, raw in db.execute("SELECT key, entry FROM actions").fetchall():
        entry = json.loads(raw)
        if entry.get("values"):
            entry["values"]["v"] = value
            entry.pop("signature", None)
            db.execute("UPDATE actions SET entry=? WHERE key=?", (json.dumps(entry), key))
    db.commit()
    db.close()


def test_a_poisoned_value_reaches_no_terminal_raw(project, tmp_path: Path) -> None:
    cache = str(tmp_path / "shared")
    proj = project(VALUES, {"data/a.txt": "a\n", "work.py": WORK})
    proj.sub("build", "--no-progress", "--cache-dir", cache)
    _rewrite_value(Path(cache), EVIL)
    # a stale stage's why names the changed value
    for command in (("dry-run",), ("status",)):
        done = proj.sub(*command, "--cache-dir", cache, code=None)
        assert not RAW.findall(done.stdout + done.stderr), command
        assert "\\x1b]0;PWNED\\x07" in done.stdout, command
    shutil.rmtree(proj.path("build"))
    built = proj.sub("build", "--no-progress", "--cache-dir", cache, code=1)
    out = built.stdout + built.stderr
    assert not RAW.findall(out), RAW.findall(out)
    assert "\\x1b[2J" in out and "FAILED" in out  # the stage's command and its echo, shown
    logged = proj.sub("log", code=None)
    assert logged.returncode == 0 and not RAW.findall(logged.stdout + logged.stderr)
    assert "\\x1b[2J" in logged.stdout
    as_json = proj.sub("log", "--json").stdout  # JSON escapes them itself
    assert not RAW.findall(as_json) and "\\u001b[2J" in as_json


def test_cache_verify_shows_stray_names_as_text(project, tmp_path: Path) -> None:
    cache = tmp_path / "shared"
    proj = project(VALUES, {"data/a.txt": "a\n", "work.py": WORK})
    proj.sub("build", "--no-progress", "--cache-dir", str(cache))
    (cache / "objects" / "\x1b]0;PWNED\x07\x1b[2J").write_text("x")
    (cache / "objects" / "ab").mkdir(exist_ok=True)
    (cache / "objects" / "ab" / "\x1b[31mred\rforged").write_text("x")
    found = proj.sub("cache", "verify", "--cache-dir", str(cache), code=1)
    out = found.stdout + found.stderr
    assert not RAW.findall(out), RAW.findall(out)
    assert "objects/\\x1b]0;PWNED\\x07\\x1b[2J" in out
    assert "objects/ab/\\x1b[31mred\\x0dforged" in out
    repaired = proj.sub("cache", "verify", "--repair", "--cache-dir", str(cache))
    assert not RAW.findall(repaired.stdout + repaired.stderr)
    assert "\\x1b[31mred" in repaired.stdout and "removed" in repaired.stdout


def test_a_tools_colours_read_as_its_text() -> None:
    """Colour sequences (SGR) only colour: dropped, so a tool's coloured output in a log
    reads as its words; any other sequence is still shown as text."""
    from pipemake.progress import visible

    assert visible("\x1b[32mgreen\x1b[0m done") == "green done"
    assert visible("\x1b[1;31;48:5:1mred") == "red"
    assert visible("\x1b[2J\x1b[32mx") == "\\x1b[2Jx"

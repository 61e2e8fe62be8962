"""Views of a running build: event subscribers that draw to stderr.

``PlainView`` prints one timestamped line per event (when stderr is not a terminal, or with
``--no-progress``); ``RichView`` keeps a live panel — an overall bar with the elapsed time
and an ETA, a line (and a bar, when the stage reports progress) per running stage — above
which each settled stage gets a line. Both close with a summary that, for a failed build,
says what failed and why, what was skipped because of it and what finished. ETAs come from
:mod:`pipemake.eta`. rich is imported only when a ``RichView`` is made.

Stage names, values, file names and a stage's output lines may come from a shared store
or a tool's output: every line goes through :func:`visible`, so a terminal escape sequence
in them is shown as text, never acted on (pipemake's own colours are rich's styles).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import IO, Any

from .eta import Estimator
from .events import Event

__all__ = [
    "ItemCounts", "PlainView", "RichView", "describe", "error_lines", "log_lines", "make_view",
    "muted", "restored_from", "summary_lines", "visible",
]  # fmt: skip

PROGRESS_EVERY = 10.0  # seconds between a stage's progress lines in the plain view
ERROR_LINES = 40  # lines of a failed stage's error (after its first) shown in a view
NAMES_SHOWN = 20  # names listed per group in the closing summary
UP_TO_DATE_LINES = 20  # "up to date" lines shown before a view only counts them

#: what a terminal acts on rather than shows: C0 controls but tab and newline (ESC starts
#: colour, cursor, title, clipboard and hyperlink sequences; CR and BS overwrite), DEL, the
#: C1 controls (0x9b is a one-byte CSI), the bidirectional overrides that reorder a line,
#: and lone surrogates (no terminal encoding can write them)
_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


#: a colour or style sequence (SGR): a tool's coloured output, dropped (it only colours)
_SGR = re.compile("\x1b\\[[0-9;:]*m")


def visible(text: Any, name: bool = False, oneline: bool = False) -> str:
    """``text`` as a terminal should show it: colour sequences dropped (a tool's coloured
    output reads as its text; kept, escaped, in a file ``name``, which must stay findable)
    and every other control character written out as ``\\x1b``, ``\\u202e`` …, so text
    read from a store, a log or a file name cannot clear the screen, retitle the window,
    write the clipboard or forge a line; tabs and newlines stay, but for text that is
    ``oneline`` (one line of a view, a ``dry-run`` line), where a newline (one in a file
    name) is written ``\\n``, so it cannot split the line in two."""
    text = text if isinstance(text, str) else str(text)
    shown = _CONTROL.sub(_escaped, text if name else _SGR.sub("", text))
    return shown.replace("\n", "\\n") if oneline else shown


class _Remaining:
    """The overall ETA, recomputed at most every ``every`` seconds in a big build (it walks
    every stage left, and a view may be asked for it thousands of times), and whenever a
    stage settles in a small one (so a line never shows the ETA of a stage before)."""

    SMALL = 500  # stages: up to this many, every settled stage gets a fresh ETA

    def __init__(self, eta: Estimator, every: float = 0.5) -> None:
        self.eta = eta
        self.every = every
        self._at: float | None = None
        self._done = -1
        self._value: float | None = None

    def __call__(self, now: float) -> float | None:
        moved = self._done != self.eta.done and self.eta.total <= self.SMALL
        if moved or self._at is None or not 0 <= now - self._at < self.every:
            self._value = self.eta.remaining(now)
            self._at, self._done = now, self.eta.done
        return self._value


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:  # not in the event (a run log of another shape): unknown
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def _first_line(text: Any) -> str:
    """The first line of a message, without the colon that led to the lines not shown."""
    lines = str(text or "").strip().splitlines()
    return lines[0].rstrip(":") if lines else ""


def error_lines(error: Any, full_at: str = "in `pipemake log`") -> list[str]:
    """A failed stage's error after its first line, as a view shows it: whole when it fits
    in :data:`ERROR_LINES`, else cut in the middle (its ``Traceback`` header kept, a line
    saying how many lines are left out and where they are), so that, as Python users
    expect, the last frames, the line that raised and the exception always show."""
    rest = str(error or "").strip().splitlines()[1:]
    if len(rest) <= ERROR_LINES:
        return rest
    head = rest[:1] if rest[0].startswith("Traceback") else []
    tail = rest[len(rest) - (ERROR_LINES - len(head) - 1) :]
    # start the tail at a frame (or a chained exception's line), not inside one
    starts = [
        i for i, line in enumerate(tail) if line.startswith("  File ") or not line[:1].isspace()
    ]
    if starts and starts[0] < len(tail) - 1:
        tail = tail[starts[0] :]
    left_out = len(rest) - len(head) - len(tail)
    return [*head, f"… {left_out} more line(s) {full_at}", *tail]


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _names(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" … and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def _items(d: dict[str, Any]) -> str:
    if d.get("items") is None:
        return ""
    run, n = d.get("items_run"), d["items"]
    items = f"{n:,} item{'' if n == 1 else 's'}" if isinstance(n, int) else f"{n} items"
    return f" ({items}, {run:,} run)" if isinstance(run, int) else f" ({items})"


class ItemCounts:
    """Follows a run's events for what each foreach stage has of its items: how many there
    are, how many the store had when it started, and how many finished since. A stage
    stopped halfway keeps what finished, and the closing summary says so."""

    def __init__(self) -> None:
        self.total: dict[str, int] = {}
        self.cached: dict[str, int] = {}
        self.done: dict[str, int] = {}
        #: False for a build whose store is thrown away after it (``run --no-checkpoint``)
        self.keeps = True

    def __call__(self, event: Event) -> None:
        s, d = event.stage, event.data
        if s is None:
            return
        if event.kind == "stage_started" and d.get("items"):
            self.total[s] = int(d["items"].get("total") or 0)
            self.cached[s] = int(d["items"].get("cached") or 0)
            self.done[s] = 0
        elif event.kind == "progress" and d.get("unit") == "items":
            if s not in self.total:  # a forced stage announces no items: all of them run
                self.total[s], self.cached[s] = int(d.get("total") or 0), 0
            self.done[s] = int(d.get("done") or 0)

    def kept(self, stage: str) -> str | None:
        """``18 of 30 items done and kept`` for a stage stopped before it finished, or None
        when it is no foreach stage, or nothing of it is kept."""
        if stage not in self.total:
            return None
        have = self.done[stage] + self.cached[stage]
        if not have or not self.keeps:
            return None
        return f"{have} of {self.total[stage]} items done and kept"


def _retries(d: dict[str, Any]) -> str:
    """`` (on attempt 3; 3.6s of it waiting to retry)`` for a stage that needed more than
    one attempt: its duration counts the waits between them."""
    attempts = d.get("attempts")
    if not isinstance(attempts, int) or attempts <= 1:
        return ""
    return f" (on attempt {attempts}; {_fmt_duration(d.get('retry_wait'))} of it waiting to retry)"


def _hook_target(d: dict[str, Any]) -> str:
    """`` (email to …)``, `` (Slack webhook https://host/…)``: where a hook sent (URLs come
    redacted in the event)."""
    if d.get("email"):
        return f" (email to {d['email']})"
    if d.get("url"):
        return f" ({'Slack webhook' if d.get('via') == 'slack' else 'webhook'} {d['url']})"
    return ""


#: where a ``stage_restored`` event's outputs came from (its ``source``), in words
_SOURCES = {
    "store": "the store", "remote": "the remote", "store and remote": "the store and the remote"
}  # fmt: skip


def restored_from(data: dict[str, Any]) -> str:
    """Where a restore's outputs came from, in words: the local store, the remote store or
    both (a run log of an older pipemake, without ``source``: the store)."""
    source = data.get("source")
    return _SOURCES.get(source, "the store") if isinstance(source, str) else "the store"


def describe(event: Event) -> str | None:
    """A one-line description of an event, or None for events not worth a line."""
    d = event.data
    s = event.stage
    k = event.kind
    if k == "run_started":
        return f"building {len(d.get('stages', []))} stage(s)"
    if k == "stage_skipped":
        detail = f" ({d['detail']})" if d.get("detail") else ""
        return f"{s}: {d.get('reason', 'up to date')}{detail}"
    if k == "stage_restored":
        items = f"{d['items']} items; " if d.get("items") else ""
        return f"{s}: restored from {restored_from(d)} ({items}{'; '.join(d.get('reasons', []))})"
    if k == "stage_started":
        items = d.get("items") or {}
        count = f" [{items.get('run')} of {items.get('total')} items]" if items else ""
        queued = d.get("queued") or 0
        waited = f", after {_fmt_duration(queued)} waiting for a job" if queued >= 0.1 else ""
        return f"{s}: running ({'; '.join(d.get('reasons', []))}){count}{waited}"
    if k == "progress":
        unit = f" {d['unit']}" if d.get("unit") else ""
        failed = f" ({d['failed']} failed)" if d.get("failed") else ""  # done, not succeeded
        return f"{s}: {d.get('done')}/{d.get('total')}{unit}{failed}"
    if k == "stage_retried":
        return (
            f"{s}: attempt {d.get('attempt')} of {d.get('of')} in {_fmt_duration(d.get('delay'))}"
            f" after: {_first_line(d.get('error'))}"
        )
    if k == "stage_finished":
        return f"{s}: done in {_fmt_duration(d.get('duration'))}{_retries(d)}{_items(d)}"
    if k == "stage_failed":
        return f"{s}: FAILED: {_first_line(d.get('error'))}"
    if k == "stage_cancelled":
        return f"{s}: stopped ({d.get('reason', '')})"
    if k == "stopping":
        running = ", ".join(d.get("running") or []) or "nothing"
        return (
            f"stopping: no new stages start; running ({running}) get "
            f"{_fmt_duration(d.get('grace'))} to finish (signal again to end them now)"
        )
    if k == "hook_failed":
        return f"warning: {d.get('hook')} hook failed: {d.get('error', '')}{_hook_target(d)}"
    if k == "hook_finished":
        return f"{d.get('hook')} hook ran{_hook_target(d)}"
    if k == "log":
        if d.get("quiet"):  # an item's detail the stage's own line sums up: in the JSON only
            return None
        if d.get("item") is not None and s:  # an item's failure: the line naming it
            return f"{s}: {_first_line(d.get('text'))}"
        if d.get("level") in ("warning", "error", "info"):
            return f"{s}| {d.get('text', '')}" if s else str(d.get("text", ""))
        return None
    return None


def summary_lines(
    event: Event, items: ItemCounts | None = None, full_at: str = "in `pipemake log`"
) -> list[str]:
    """The closing summary of a run: counts, then (when something went wrong) what failed
    with its error (cut in the middle when long), what was skipped because of it (and, from
    ``items``, the items of a stopped stage that finished and are kept), and what finished."""
    d = event.data
    failed: dict[str, str] = d.get("failed") or {}
    skipped: dict[str, str] = d.get("skipped") or {}
    parts = [
        f"{len(d.get('ran', []))} ran",
        f"{len(d.get('restored', []))} restored",
        f"{len(d.get('up_to_date', []))} up to date",
    ]
    if failed:
        parts.append(f"{len(failed)} failed ({', '.join(failed)})")
    if skipped:
        parts.append(f"{len(skipped)} not run")
    lines = [f"{', '.join(parts)} in {_fmt_duration(d.get('duration'))}"]
    if not failed and not skipped and not d.get("interrupted"):
        return lines
    for stage, error in failed.items():
        err = str(error or "").strip().splitlines() or ["(no message)"]
        lines.append(f"  FAILED {stage}: {err[0]}")
        lines.extend(f"      {line}" for line in error_lines(error, full_at))
    because = {s: r for s, r in skipped.items() if r.startswith("upstream ")}
    if because:
        lines.append(
            f"  skipped because of a failure: {_names(f'{s} ({r})' for s, r in because.items())}"
        )
    others = [s for s in skipped if s not in because]
    kept = {s: k for s in others if items is not None and (k := items.kept(s))}
    if others:
        lines.append(f"  not run: {_names(f'{s} ({kept[s]})' if s in kept else s for s in others)}")
    finished = list(d.get("ran", [])) + list(d.get("restored", []))
    n_fresh = len(d.get("up_to_date", []))
    if finished or n_fresh:
        fresh = f" (+{n_fresh} up to date)" if n_fresh else ""
        lines.append(f"  finished: {_names(finished) or 'nothing new'}{fresh}")
    if d.get("interrupted") and items is not None and not items.keeps:
        lines.append(
            f"  stopped by {_signal_name(d['interrupted'])}: the store is thrown away "
            "(--no-checkpoint); the next run starts over"
        )
    elif d.get("interrupted"):
        what = "finished stages and items are kept" if kept else "finished stages are kept"
        lines.append(
            f"  stopped by {_signal_name(d['interrupted'])}: {what}; "
            "run `pipemake build` again to resume"
        )
    return lines


def summary(event: Event) -> str:
    """The closing summary as one text."""
    return "\n".join(summary_lines(event))


def log_lines(events: Iterable[dict[str, Any]], verbose: bool = True) -> list[str]:
    """A recorded run's events (as the JSON-lines log holds them), readably: one timestamped
    line each, the last progress of a stage only, and the closing summary."""
    events = list(events)
    items = ItemCounts()
    last_progress: dict[str, int] = {}
    for i, ev in enumerate(events):
        if ev.get("event") == "progress" and ev.get("stage"):
            last_progress[ev["stage"]] = i
    out = []
    skip = {"event", "stage", "time"}
    failed: dict[str, int] = {}  # stage → items failed (its progress says)
    said: dict[str, int] = {}  # stage → items whose failure its run log holds
    for i, ev in enumerate(events):
        event = Event(
            str(ev.get("event")), ev.get("stage"), {k: v for k, v in ev.items() if k not in skip},
            float(ev.get("time") or 0),
        )  # fmt: skip
        items(event)
        if event.kind == "progress" and isinstance(event.data.get("failed"), int):
            failed[event.stage or ""] = event.data["failed"]
        if event.kind == "progress" and last_progress.get(event.stage or "") != i:
            continue
        if event.kind == "log" and event.data.get("item") is not None:
            said[event.stage or ""] = said.get(event.stage or "", 0) + 1
        if event.kind == "log" and not verbose and event.data.get("item") is None:
            continue
        stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
        if event.kind == "run_started":
            day = time.strftime("%Y-%m-%d", time.localtime(event.time))
            out.append(f"[{stamp}] run {ev.get('run')} of {ev.get('pipeline')!r} on {day}")
            if ev.get("from_snapshot"):
                out.append(f"[{stamp}] nothing changed since the last no-op build (its snapshot)")
        if event.kind == "run_finished":
            summary = summary_lines(event, items, full_at="in the stage's FAILED lines above")
            out.extend(f"[{stamp}] {line}" for line in summary)
            continue
        if event.kind == "stage_failed":
            err = str(event.data.get("error") or "").strip().splitlines()
            out.append(f"[{stamp}] {event.stage}: FAILED: {err[0] if err else ''}")
            out.extend(f"           {line}" for line in err[1:])
            more = failed.get(event.stage or "", 0) - said.get(event.stage or "", 0)
            if said.get(event.stage or "") and more > 0:
                out.append(
                    f"           … and {more:,} more failed item(s), each in "
                    f".pipemake/logs/{event.stage}.log"
                )
            continue
        text = describe(event)
        if text and event.kind == "log":  # a message may span lines: each its own
            rest = str(event.data.get("text") or "").split("\n")[1:]
            lead = text.split("\n")[0] if event.data.get("item") is None else text
            out.append(f"[{stamp}] {lead}")
            out.extend(f"           {line}" for line in rest)
        elif text:
            out.append(f"[{stamp}] {text}")
    return [visible(line, oneline=True) for line in out]


class PlainView:
    """Timestamped lines, one per event; a running stage's progress at most every
    :data:`PROGRESS_EVERY` seconds, with its ETA; the overall ETA on each settled stage."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        verbose: bool = True,
        clock: Callable[[], float] = time.time,
    ):
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.clock = clock
        self.eta = Estimator(clock)
        self._remaining = _Remaining(self.eta)
        self._last_line: dict[str, float] = {}
        self._up_to_date = 0
        self.items = ItemCounts()

    def __call__(self, event: Event) -> None:
        self.eta(event)
        self.items(event)
        k, s = event.kind, event.stage
        if k == "stage_skipped" and event.data.get("reason") == "up to date":
            # a no-op over thousands of stages is one summary, not thousands of lines
            self._up_to_date += 1
            if self._up_to_date > UP_TO_DATE_LINES:
                if self._up_to_date == UP_TO_DATE_LINES + 1:
                    self._line("… more stages up to date (counted in the summary)")
                return
        if k == "run_finished":
            for line in summary_lines(event, self.items):
                self._line(line)
            return
        if k == "log" and (event.data.get("quiet") or (
                not self.verbose and event.data.get("item") is None)):  # fmt: skip
            return
        if k == "progress":
            self._progress(event)
            return
        text = describe(event)
        if not text:
            return
        if k == "log":  # a message may span lines (each of a command's lines is one event)
            self._line(text, oneline=False)
            return
        if k == "stage_started" and s:
            self._last_line[s] = self.clock()
        elif k in ("stage_finished", "stage_restored", "stage_failed") and self.eta.total:
            eta = self._remaining(self.clock())
            # after a failure what is left depends on it (skipped, or -k): no ETA then
            known = eta is not None and self.eta.done < self.eta.total and k != "stage_failed"
            left = f", ETA {_fmt_duration(eta)}" if known else ""
            text += f"  [{self.eta.done}/{self.eta.total}{left}]"
        self._line(text)
        if k == "stage_failed":  # its traceback, as the summary shows it
            for line in error_lines(event.data.get("error")):
                self._line(f"    {line}")

    def _progress(self, event: Event) -> None:
        s = event.stage or ""
        now = self.clock()
        d = event.data
        final = d.get("total") is not None and d.get("done") == d.get("total")
        if final or now - self._last_line.get(s, 0.0) < PROGRESS_EVERY:
            return
        self._last_line[s] = now
        text = describe(event) or ""
        left = self.eta.stage_eta(s, now)
        if left is not None:
            text += f", ETA {_fmt_duration(left)}"
        self._line(text)

    def _line(self, text: str, oneline: bool = True) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.clock()))
        try:
            self.stream.write(f"[{stamp}] {visible(text, oneline=oneline)}\n")
            self.stream.flush()
        except OSError as exc:
            muted(self.stream, exc)

    def close(self) -> None:
        pass


class RichView:
    """A live panel on a terminal: an overall bar (stages settled / total, elapsed, ETA) and
    one line per running stage, with its own bar when it reports progress; a line per
    settled stage is printed above the panel.

    The panel is laid out for the terminal's width each time it is drawn: the figures
    (counts, elapsed time, ETA) always show; the bar gives way first (it shrinks, then goes),
    then a long stage name, cut with ``…``. It is drawn from the events seen so far every
    time rich draws it, including under a line printed above it, so a stage's result line
    never comes with a panel that still shows the stage running."""

    BAR = 30  # a bar's width when there is room
    BAR_MIN = 10  # narrower than this, no bar at all
    NAME_MAX = 40  # a longer name is cut to this before the bar shrinks below BAR
    NAME_MIN = 12  # a long name is cut to no less than this while the bar can still go

    def __init__(self, console: Any = None, clock: Callable[[], float] = time.time) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = console or Console(stderr=True)
        self.clock = clock
        self.eta = Estimator(clock)
        self._remaining = _Remaining(self.eta, every=0.25)
        self._lock = threading.Lock()
        self._fresh = 0
        #: when the view was made: the elapsed time before the run starts (a lock wait)
        self._born = clock()
        self.items = ItemCounts()
        self.live = Live(
            console=self.console,
            # the view itself, not a table made now: rich draws it again from the current
            # state each time, also when a printed line above it redraws the panel
            get_renderable=lambda: self,
            refresh_per_second=4,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.live.start()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.eta(event)
        self.items(event)
        k, s, d = event.kind, event.stage, event.data
        if k == "run_finished":
            self.close()
            if self._fresh > UP_TO_DATE_LINES:
                self._print(f"  … {self._fresh - UP_TO_DATE_LINES} more up to date", "dim")
            lines = summary_lines(event, self.items)
            style = "bold red" if d.get("failed") or d.get("interrupted") else "bold green"
            self._print(lines[0], style)
            for line in lines[1:]:
                self._print(line, "red" if line.lstrip().startswith("FAILED") else None)
            return
        if k == "stage_skipped" and d.get("reason") == "up to date":
            self._fresh += 1
            if self._fresh <= UP_TO_DATE_LINES:
                detail = f" ({d['detail']})" if d.get("detail") else ""
                self._print(f"  = {s}  up to date{detail}", "dim")
        elif k == "stage_skipped":
            self._print(f"  - {s}  skipped: {d.get('reason', '')}", "yellow")
        elif k == "stage_restored":
            items = f" ({d['items']} items)" if d.get("items") else ""
            self._print(f"  ↺ {s}  restored from {restored_from(d)}{items}", "cyan")
        elif k == "stage_finished":
            took = f"ran in {_fmt_duration(d.get('duration'))}{_retries(d)}{_items(d)}"
            self._print(f"  ✓ {s}  {took}", "green")
        elif k == "stage_failed":
            self._print(f"  ✗ {s}  FAILED: {_first_line(d.get('error'))}", "bold red")
        elif k == "stage_cancelled":
            self._print(f"  ■ {s}  stopped ({d.get('reason', '')})", "yellow")
        elif k == "log" and d.get("quiet"):
            pass  # summed up by its stage's own line
        elif k == "log" and d.get("item") is not None:
            self._print(f"  {describe(event) or ''}", "red")
        elif k == "log" and d.get("level") in ("warning", "error"):
            self._print(f"  {s + '| ' if s else ''}{d.get('text', '')}", "yellow", oneline=False)
        elif k in ("stage_retried", "stopping", "hook_failed"):
            self._print(describe(event) or "", "yellow")

    def _print(self, text: str, style: str | None = None, oneline: bool = True) -> None:
        from rich.text import Text

        # the style on the line's Text, not on print(): rich draws the live panel in the
        # same print, and print's style would colour the panel too
        shown = Text(visible(text, oneline=oneline), style=style or "")
        try:
            self.console.print(shown, highlight=False)
        except OSError as exc:
            muted(self.console.file, exc)

    def __rich_console__(self, console: Any, options: Any) -> Any:
        """The view as it is drawn now, for the width rich gives (rich's protocol:
        ``console.print(view)``)."""
        yield self._render(options.max_width)

    def _rows(self) -> list[tuple[str, str, tuple[int, int] | None, str]]:
        """What the panel shows, one row a line: the name and its style, the bar's
        (done, total) or None, and the figures."""
        with self._lock:
            now = self.clock()
            started = self.eta.started is not None
            done, total = self.eta.done, self.eta.total
            left_all = self._remaining(now) if started else None
            elapsed = self.eta.elapsed(now) if started else max(0.0, now - self._born)
            lefts = {s: self.eta.stage_eta(s, now) for s in self.eta.running}
            clocks = {s: (c.since, c.done, c.total, c.unit) for s, c in self.eta.running.items()}
        if not started:  # before the run starts (the stages not known yet, a lock wait)
            return [("build", "bold", None, f"starting…  {_fmt_duration(elapsed)}")]
        eta = f"  ETA {_fmt_duration(left_all)}" if done < total and left_all is not None else ""
        rows = [
            (
                "build",
                "bold",
                (done, total),
                f"{done}/{total} stages  {_fmt_duration(elapsed)}{eta}",
            )
        ]
        for stage, (since, n, of, unit) in clocks.items():
            left = lefts.get(stage)
            tail = f"ETA {_fmt_duration(left)}" if left is not None else "ETA ?"
            spent = _fmt_duration(now - since)
            if of:
                count = f"{n or 0}/{of}{' ' + unit if unit else ''}"
                bar: tuple[int, int] | None = (n or 0, of)
            else:
                count, bar = "running…", None
            rows.append((f"▶ {stage}", "cyan", bar, f"{count}  {spent}  {tail}"))
        return rows

    def _render(self, width: int | None = None) -> Any:
        """The panel laid out for ``width`` columns (the console's when None)."""
        from rich.cells import cell_len
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        width = self.console.width if width is None else width
        # names and units may come from a shared store: shown as text (Text, never markup),
        # their control characters written out
        rows = [
            (visible(n, oneline=True), st, bar, visible(f, oneline=True))
            for n, st, bar, f in self._rows()
        ]
        figures = max(cell_len(f) for *_, f in rows)
        names = max(cell_len(n) for n, *_ in rows)
        room = width - figures - 1  # for the name, and the bar with its gap
        bars = any(bar is not None for _, _, bar, _ in rows)
        # the bar shrinks to BAR_MIN and names are cut to NAME_MAX, then names to NAME_MIN,
        # then the bar goes: the figures stay
        name_w, bar_w = names, 0
        if bars:
            for cut, least in ((names, self.BAR), (self.NAME_MAX, self.BAR_MIN)):
                name_w = min(names, max(cut, room - 1 - self.BAR))
                bar_w = min(self.BAR, room - name_w - 1)
                if bar_w >= least:
                    break
            else:
                name_w = min(names, max(self.NAME_MIN, room - 1 - self.BAR_MIN))
                bar_w = room - name_w - 1
            if bar_w < self.BAR_MIN:
                bar_w = 0
        if not bar_w:
            name_w = min(names, room)
        table = Table.grid(padding=(0, 1))
        if name_w > 0:
            table.add_column(width=name_w, no_wrap=True, overflow="ellipsis")
        if bar_w:
            table.add_column(width=bar_w, no_wrap=True)
        table.add_column(no_wrap=True, overflow="ellipsis")
        for name, style, bar, fig in rows:
            cells: list[Any] = [Text(name, style=style, no_wrap=True, overflow="ellipsis")]
            if name_w <= 0:
                cells = []
            if bar_w:
                cells.append(
                    ProgressBar(total=max(bar[1], 1), completed=bar[0], width=bar_w)
                    if bar is not None
                    else Text("")
                )
            cells.append(Text(fig, no_wrap=True, overflow="ellipsis"))
            table.add_row(*cells)
        return table

    def close(self) -> None:
        if self.live.is_started:
            self.live.stop()


#: what a write to a terminal hung up (EIO) or a pipe whose reader is gone (EPIPE) fails with
_GONE = (errno.EIO, errno.EPIPE, errno.ENXIO)


def muted(stream: Any, exc: OSError) -> None:
    """After a write to ``stream`` failed with ``exc``: when its reader is gone (a closed
    terminal after SIGHUP, a pipe whose reader ended), point its file descriptor at
    ``/dev/null``, so the build's stop, cleanup and later lines go on without a traceback;
    any other failure is raised again."""
    if exc.errno not in _GONE:
        raise exc
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fd = stream.fileno()
        dev = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(dev, fd)
        finally:
            os.close(dev)


def make_view(plain: bool) -> Any:
    """A rich view on a terminal, plain lines otherwise (or with ``plain``)."""
    if plain or not sys.stderr.isatty() or os.environ.get("TERM") == "dumb":
        return PlainView()
    return RichView()

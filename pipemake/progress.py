"""Views of a running build: event subscribers that draw to stderr.

``PlainView`` prints one timestamped line per event (when stderr is not a terminal, or with
``--no-progress``); ``RichView`` keeps a live panel with a line per running stage.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from .events import Event

__all__ = ["PlainView", "RichView", "make_view"]


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def describe(event: Event) -> str | None:
    """A one-line description of an event, or None for events not worth a line."""
    d = event.data
    s = event.stage
    if event.kind == "run_started":
        return f"building {len(d.get('stages', []))} stage(s)"
    if event.kind == "stage_skipped":
        return f"{s}: {d.get('reason', 'up to date')}"
    if event.kind == "stage_restored":
        return f"{s}: restored from the store ({'; '.join(d.get('reasons', []))})"
    if event.kind == "stage_started":
        return f"{s}: running ({'; '.join(d.get('reasons', []))})"
    if event.kind == "stage_finished":
        return f"{s}: done in {_fmt_duration(d.get('duration'))}"
    if event.kind == "stage_failed":
        return f"{s}: FAILED: {d.get('error', '')}"
    if event.kind == "stage_cancelled":
        return f"{s}: stopped ({d.get('reason', '')})"
    if event.kind == "log":
        return (
            f"{s}| {d.get('text', '')}" if d.get("level") in ("warning", "error", "info") else None
        )
    return None


def summary(event: Event) -> str:
    """The closing summary of a run."""
    d = event.data
    parts = [
        f"{len(d.get('ran', []))} ran",
        f"{len(d.get('restored', []))} restored",
        f"{len(d.get('up_to_date', []))} up to date",
    ]
    if d.get("failed"):
        parts.append(f"{len(d['failed'])} failed ({', '.join(d['failed'])})")
    if d.get("skipped"):
        parts.append(f"{len(d['skipped'])} not run")
    return f"{', '.join(parts)} in {_fmt_duration(d.get('duration'))}"


class PlainView:
    """Timestamped lines, one per event."""

    def __init__(self, stream: IO[str] | None = None, verbose: bool = True):
        self.stream = stream or sys.stderr
        self.verbose = verbose

    def __call__(self, event: Event) -> None:
        if event.kind == "run_finished":
            self._line(summary(event))
            return
        if event.kind == "log" and not self.verbose:
            return
        text = describe(event)
        if text:
            self._line(text)

    def _line(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.stream.write(f"[{stamp}] {text}\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class RichView:
    """A live panel on a terminal: an overall line and one line per running stage."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(stderr=True)
        self.live = Live(console=self.console, refresh_per_second=8, transient=True)
        self.running: dict[str, dict[str, Any]] = {}
        self.total = 0
        self.finished = 0
        self.started = time.time()
        self.live.start()

    def __call__(self, event: Event) -> None:
        s = event.stage
        if event.kind == "run_started":
            self.total = len(event.data.get("stages", []))
        elif event.kind == "stage_started" and s:
            self.running[s] = {"since": time.time(), "done": None, "total": None}
        elif event.kind == "progress" and s in self.running:
            self.running[s].update(done=event.data.get("done"), total=event.data.get("total"))
        elif event.kind in (
            "stage_finished",
            "stage_failed",
            "stage_skipped",
            "stage_restored",
            "stage_cancelled",
        ):
            self.running.pop(s or "", None)
            self.finished += 1
        if event.kind == "run_finished":
            self.close()
            self.console.print(summary(event))
            return
        text = describe(event)
        if text and event.kind != "stage_started":
            self.live.console.print(text, markup=False, highlight=False)
        self.live.update(self._render())

    def _render(self) -> Any:
        from rich.table import Table

        table = Table.grid(padding=(0, 1))
        elapsed = _fmt_duration(time.time() - self.started)
        table.add_row(f"[bold]{self.finished}/{self.total}[/] stages", f"elapsed {elapsed}")
        for stage, info in self.running.items():
            prog = ""
            if info["total"]:
                prog = f"{info['done']}/{info['total']}"
            table.add_row(f"  ▶ {stage}", f"{prog} {_fmt_duration(time.time() - info['since'])}")
        return table

    def close(self) -> None:
        if self.live.is_started:
            self.live.stop()


def make_view(plain: bool) -> Any:
    """A rich view on a terminal, plain lines otherwise."""
    if plain or not sys.stderr.isatty():
        return PlainView()
    return RichView()

"""Events: every state change of a build, published to whoever subscribed.

The terminal view, the JSON-lines log and the run history are subscribers; the scheduler
and the builder only ever call :meth:`Bus.emit`.

Kinds: ``run_started``, ``stage_skipped`` (up to date, with reason), ``stage_restored``,
``stage_started``, ``progress``, ``log``, ``stage_finished`` (metrics), ``stage_failed``
(error), ``stage_cancelled``, ``stage_retried``, ``task_started``, ``task_finished``,
``stopping``, ``run_finished``, ``hook_finished``, ``hook_failed``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Bus", "Event"]


@dataclass
class Event:
    """One thing that happened: its kind, the stage (if any), details and the time."""

    kind: str
    stage: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def as_json(self) -> dict[str, Any]:
        """The event as one JSON object (a line of the run log)."""
        return {"event": self.kind, "stage": self.stage, "time": self.time, **self.data}


class Bus:
    """Delivers events to subscribers in the order they subscribed."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[Event], None]] = []

    def subscribe(self, fn: Callable[[Event], None]) -> None:
        """Call ``fn`` with every event emitted from now on."""
        self._subscribers.append(fn)

    def emit(self, kind: str, stage: str | None = None, **data: Any) -> None:
        """Publish one event to every subscriber."""
        event = Event(kind, stage, data)
        for fn in self._subscribers:
            fn(event)

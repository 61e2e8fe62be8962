"""Run-log lines in the shape readers rely on, whoever wrote them.

A run log (``.pipemake/runs/<id>.jsonl``) and its index may come from a killed build, another
pipemake version, or a shared store someone else wrote, so a line may hold any JSON. Each
known field must have the type a build writes (see :mod:`.history`): :func:`event` and
:func:`summary` return a line with every such field checked, and a field of another type
dropped (read as unknown). A page, ``report`` or ``log`` can then subtract times, sum
durations and iterate over stage lists without a check of its own. Fields not known here
pass as they are (the views escape what they show).

Pure functions over JSON values: nothing is read or written here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["data", "event", "number", "summary"]

_DROP = object()  # a field of the wrong type: left out


#: no time, duration or count a build writes comes near this; beyond it a date cannot be
#: shown (``time.localtime`` overflows) and sums lose every digit
_LIMIT = 1e12


def number(value: Any) -> float | int | None:
    """``value`` when it is a finite number (not a bool) of a size a build writes, else
    None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) and abs(value) < _LIMIT else None


def _number(value: Any) -> Any:
    n = number(value)
    return _DROP if n is None else n


def _count(value: Any) -> Any:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _LIMIT
    return value if ok else _DROP


def _amount(value: Any) -> Any:
    n = number(value)
    return _DROP if n is None or n < 0 else n


def _jobs(value: Any) -> Any:
    return _DROP if _count(value) is _DROP or value == 0 else value


def _text(value: Any) -> Any:
    return value if isinstance(value, str) else _DROP


def _words(value: Any) -> Any:
    """Text to show; a number or a list is shown as its ``str``, a missing one stays so."""
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _names(value: Any) -> Any:
    """A list of stage ids: other items left out."""
    if not isinstance(value, list):
        return _DROP
    return [v for v in value if isinstance(v, str)]


def _reasons(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        return _DROP
    return [v if isinstance(v, str) else str(v) for v in value]


def _graph(value: Any) -> Any:
    """Stage → the stages it depends on."""
    if not isinstance(value, dict):
        return _DROP
    return {k: _names(v) for k, v in value.items() if isinstance(v, list)}


def _times(allow_none: bool) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, dict):
            return _DROP
        return {
            k: v for k, v in value.items() if (v is None and allow_none) or number(v) is not None
        }

    return check


def _by_stage(value: Any) -> Any:
    """Stage → a message (why it failed, why it was skipped); a list of stage ids is read
    as those stages without a message."""
    if isinstance(value, list):
        return {v: "" for v in value if isinstance(v, str)}
    if not isinstance(value, dict):
        return _DROP
    return {k: v if isinstance(v, str) else str(v) for k, v in value.items()}


def _items(value: Any) -> Any:
    """A stage's item counts (``{"run": 3, ...}`` when it starts; their number when it
    finishes): counts only."""
    if _count(value) is not _DROP:
        return value
    if not isinstance(value, dict):
        return _DROP
    return {k: v for k, v in value.items() if _count(v) is not _DROP}


def _failed(value: Any) -> Any:
    """Which stages failed (run_finished) or how many items did (progress)."""
    return value if _count(value) is not _DROP else _by_stage(value)


def _signal(value: Any) -> Any:
    """What interrupted a run: the signal's number or name, or None."""
    return value if value is None or isinstance(value, str) or _count(value) is not _DROP else _DROP


def _counts(value: Any) -> Any:
    if not isinstance(value, list):
        return _DROP
    return [v for v in value if _count(v) is not _DROP]


def _flag(value: Any) -> Any:
    return value if isinstance(value, bool) or value is None else _DROP


_EVENT_FIELDS: dict[str, Callable[[Any], Any]] = {
    "time": _number, "run": _text, "pipeline": _words,
    # run_started
    "stages": _names, "targets": _names, "deps": _graph, "expected": _times(True),
    "per_item": _times(False), "jobs": _jobs,
    # stages and tasks
    "reasons": _reasons, "reason": _words, "items": _items, "items_run": _count,
    "source": _text,
    "queued": _number, "duration": _number, "done": _amount, "total": _amount, "unit": _text,
    "task": _words, "ok": _flag, "error": _words, "text": _words, "level": _words,
    "item": _text,
    # run_finished
    "ran": _names, "restored": _names, "up_to_date": _names, "failed": _failed,
    "skipped": _by_stage, "interrupted": _signal, "running": _names,
    # the rest a build writes
    "attempt": _count, "attempts": _count, "format": _count, "of": _count,
    "cpu": _amount, "peak_rss_mb": _amount, "grace": _amount, "delay": _amount,
    "retry_wait": _amount, "budget": _times(False), "resources": _times(False),
    "gpus": _counts, "from_snapshot": _flag, "detail": _words, "cmd": _words, "hook": _words,
}  # fmt: skip

_SUMMARY_FIELDS: dict[str, Callable[[Any], Any]] = {
    "pipeline": _words, "started": _number, "duration": _number, "result": _text,
    "targets": _names, "stages": _count, "ran": _count, "restored": _count,
    "up_to_date": _count, "skipped": _count, "failed": _by_stage, "interrupted": _signal,
}  # fmt: skip


def _clean(obj: dict[str, Any], fields: dict[str, Callable[[Any], Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        check = fields.get(key)
        kept = value if check is None else check(value)
        if kept is not _DROP:
            out[key] = kept
    return out


def data(fields: dict[str, Any]) -> dict[str, Any]:
    """An event's data (its fields but kind and stage) with every known field checked as
    :func:`event` checks it: for a reader fed :class:`~pipemake.events.Event` objects that
    may have been logged (the ETA of ``status`` and the pages)."""
    return _clean(fields, _EVENT_FIELDS)


def event(obj: Any) -> dict[str, Any] | None:
    """One line of a run log as a build writes it, or None for a line that is no event (not
    an object, no ``event`` name, a ``stage`` that is no stage id)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
        return None
    stage = obj.get("stage")
    if stage is not None and not isinstance(stage, str):
        return None
    return _clean(obj, _EVENT_FIELDS)


def summary(obj: Any) -> dict[str, Any] | None:
    """One line of the runs' index (``index.jsonl``), or None for a line that names no run
    (not an object, an ``id`` that is not a non-empty string)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not obj["id"]:
        return None
    return _clean(obj, _SUMMARY_FIELDS)

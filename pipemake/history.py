"""Run history: every build's events as JSON lines, and an index of past runs.

Under ``.pipemake/runs/``:

- ``<run id>.jsonl`` — one JSON object per event, in order: ``{"event": KIND, "stage":
  ID or null, "time": UNIX seconds, ...the event's data}``. The first line is
  ``run_started`` (with ``run``, the id, and ``format``); the last of a complete run is
  ``run_finished`` (or a ``hook_*`` event after it). Lines are flushed as they happen, so a
  killed build leaves a readable log.
- ``index.jsonl`` — one line per finished run: id, start, duration, result and counts
  (what ``pipemake list --runs`` prints). A run that has not finished has a log and no
  index line: it is listed as ``running`` while a build holds the workspace's lock (and
  started after it took it), else as ``incomplete`` (killed).
- ``per_item.json`` — each foreach stage's last time per item (for the ETA).

The last :data:`KEEP_RUNS` logs are kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from . import eventshape
from .errors import PipemakeError, UsageError, os_failure
from .events import Event

__all__ = [
    "FORMAT", "KEEP_RUNS", "RunLog", "build_running", "list_runs", "per_item_times", "read_run",
    "read_events", "running_run",
]  # fmt: skip

FORMAT = 1
#: the event a build emits when it has settled, still holding its lock (the no-op snapshot
#: is written then); internal to the build: not kept in the run log
SETTLED = "run_settled"
KEEP_RUNS = 100
INDEX = "index.jsonl"
PER_ITEM = "per_item.json"


_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))
# Events that come by the thousand are flushed at most every FLUSH_EVERY seconds; the rest
# (and every line when the run ends) at once.
_BULK = frozenset({"stage_skipped", "stage_restored", "progress", "log", "task_started",
                   "task_finished"})  # fmt: skip
FLUSH_EVERY = 0.25
_UP_TO_DATE = {"reason": "up to date"}


def _dumps(obj: Any) -> str:
    return _ENCODER.encode(obj)


class _Tally:
    """Folds a run's events into the summary the index keeps."""

    def __init__(self) -> None:
        self.summary: dict[str, Any] = {"result": "incomplete"}
        self.per_item: dict[str, float] = {}
        self._seen: dict[str, str] = {}
        self._last: float | None = None

    def add(self, ev: dict[str, Any]) -> None:
        kind, stage = ev.get("event"), ev.get("stage")
        s = self.summary
        if kind == "run_started":
            s.update(
                id=ev.get("run"), pipeline=ev.get("pipeline"), started=ev.get("time"),
                targets=ev.get("targets", []), stages=len(ev.get("stages", [])),
            )  # fmt: skip
        elif kind == "run_finished":
            failed = ev.get("failed") or {}
            s.update(
                result="interrupted" if ev.get("interrupted") else ("failed" if failed else "ok"),
                duration=ev.get("duration"), interrupted=ev.get("interrupted"),
                ran=len(ev.get("ran", [])), restored=len(ev.get("restored", [])),
                up_to_date=len(ev.get("up_to_date", [])), skipped=len(ev.get("skipped") or {}),
                failed={k: _first_line(v) for k, v in list(failed.items())[:20]},
            )  # fmt: skip
        elif stage and kind in ("stage_finished", "stage_restored", "stage_failed"):
            self._seen[stage] = kind
            if kind == "stage_finished" and ev.get("items_run") and ev.get("duration"):
                self.per_item[stage] = float(ev["duration"]) / int(ev["items_run"])
        elif stage and kind == "stage_skipped":
            self._seen[stage] = "up to date" if ev.get("reason") == "up to date" else "skipped"
        if isinstance(ev.get("time"), (int, float)):
            self._last = float(ev["time"])

    def incomplete(self) -> dict[str, Any]:
        """The summary of a run that never reached ``run_finished``."""
        s = dict(self.summary)
        kinds = list(self._seen.values())
        s.update(
            ran=kinds.count("stage_finished"), restored=kinds.count("stage_restored"),
            up_to_date=kinds.count("up to date"), skipped=kinds.count("skipped"),
            failed={k: "" for k, v in self._seen.items() if v == "stage_failed"},
        )  # fmt: skip
        if s.get("started") is not None and self._last is not None:
            s["duration"] = self._last - s["started"]
        return s


def _first_line(text: Any) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0][:200] if lines else ""


def _new_id(directory: Path) -> tuple[str, IO[str]]:
    now = time.time()
    base = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"-{int(now * 1000) % 1000:03d}"
    for n in range(1000):
        run_id = base if n == 0 else f"{base}-{n}"
        try:
            return run_id, open(directory / f"{run_id}.jsonl", "x", encoding="utf-8")
        except FileExistsError:
            continue
    raise OSError(f"cannot find a free run id in {directory}")


class RunLog:
    """An event subscriber writing the run's log (and ``extra``, from ``--log-json``), then
    its index line and per-item times when the run finishes."""

    def __init__(
        self,
        directory: Path,
        extra: str | os.PathLike[str] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.directory = directory
        self.extra = Path(extra) if extra else None
        self.meta = dict(meta or {})
        self.run_id: str | None = None
        self._files: list[IO[str]] = []
        self._tally = _Tally()
        self._closed = False
        self._flushed = 0.0
        self._extra: IO[str] | None = None
        self._lock = threading.Lock()  # the flush timer writes from another thread
        self._timer: threading.Timer | None = None
        #: why a log stopped being written (reported by close())
        self.failure: PipemakeError | None = None
        if self.extra is not None:  # opened now, so a bad path stops the build before it runs
            try:
                self.extra.parent.mkdir(parents=True, exist_ok=True)
                self._extra = open(self.extra, "w", encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"--log-json: cannot write {self.extra}: {exc}") from None

    def __call__(self, event: Event) -> None:
        if self._closed or event.kind == SETTLED:
            return
        if event.kind == "run_started":
            self._open()
            record = {**event.as_json(), "run": self.run_id, "format": FORMAT, **self.meta}
            line = _dumps(record) + "\n"
        elif not self._files:
            return
        elif event.kind == "stage_skipped" and event.data == _UP_TO_DATE:
            # the one event a no-op over thousands of stages writes thousands of times
            record = {"event": event.kind, "stage": event.stage, **_UP_TO_DATE}
            line = (
                f'{{"event":"stage_skipped","stage":{_dumps(event.stage)},'
                f'"time":{event.time!r},"reason":"up to date"}}\n'
            )
        else:
            record = event.as_json()
            line = _dumps(record) + "\n"
        now = time.monotonic()
        flush = event.kind not in _BULK or now - self._flushed >= FLUSH_EVERY
        with self._lock:
            for f in list(self._files):
                try:
                    f.write(line)
                    if flush:
                        f.flush()
                except OSError as exc:
                    self._lose(f, exc, f.name)
            if flush:
                self._flushed = now
            elif self._timer is None:  # a quiet spell must not keep the last lines unwritten
                self._timer = threading.Timer(FLUSH_EVERY, self._flush_later)
                self._timer.daemon = True
                self._timer.start()
        self._tally.add(record)
        if event.kind == "run_finished":
            try:
                self._finish()
            except OSError as exc:
                self._lose(None, exc, self.directory)

    def _flush_later(self) -> None:
        """Write out what is buffered (run by a timer: readers such as ``status`` follow
        the log while the build waits on a long task)."""
        with self._lock:
            self._timer = None
            if self._closed:
                return
            for f in list(self._files):
                try:
                    f.flush()
                except OSError as exc:
                    self._lose(f, exc, f.name)
            self._flushed = time.monotonic()

    def _lose(self, f: IO[str] | None, exc: OSError, where: Any) -> None:
        """A log that cannot be written (a full disk) stops; the build goes on, and
        :meth:`close` reports it after everything else."""
        if f is not None:
            self._files.remove(f)
            if f is self._extra:
                self._extra = None
            with contextlib.suppress(OSError):
                f.close()
        if self.failure is None:
            self.failure = os_failure(exc, where) or PipemakeError(
                f"the run log could not be written ({where}): {exc}"
            )

    def _open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.run_id, f = _new_id(self.directory)
        except OSError as exc:
            self._files = [self._extra] if self._extra is not None else []
            self._lose(None, exc, self.directory)
            return
        self._files = [f] + ([self._extra] if self._extra is not None else [])
        self._prune()

    def _finish(self) -> None:
        if self.run_id is None:
            return
        with open(self.directory / INDEX, "a", encoding="utf-8") as f:
            f.write(_dumps(self._tally.summary) + "\n")
        if self._tally.per_item:
            times = per_item_times(self.directory)
            times.update(self._tally.per_item)
            tmp = self.directory / f".{PER_ITEM}.{os.getpid()}"
            tmp.write_text(_dumps(times))
            os.replace(tmp, self.directory / PER_ITEM)

    def _prune(self) -> None:
        logs = sorted(self.directory.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
        logs = [p for p in logs if p.name != INDEX]
        for old in logs[:-KEEP_RUNS]:
            old.unlink(missing_ok=True)

    def close(self) -> None:
        """Close the files; later events are ignored. If a log could not be written (a full
        disk), raise that now, once the build has said and run everything else."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        for f in self._files or ([self._extra] if self._extra is not None else []):
            try:
                f.close()
            except OSError as exc:
                self._lose(None, exc, f.name)
        self._files = []
        failure, self.failure = self.failure, None
        if failure is not None:
            raise failure


def per_item_times(directory: Path) -> dict[str, float]:
    """Each foreach stage's seconds per item in the last run that ran items of it."""
    try:
        data = json.loads((directory / PER_ITEM).read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _read_lines(
    path: Path, shape: Callable[[Any], dict[str, Any] | None] | None = None
) -> Iterable[dict[str, Any]]:
    """The lines of a JSON-lines file that are JSON objects; with ``shape``
    (:func:`eventshape.event` for a run log, :func:`eventshape.summary` for the index), each
    as it gives it, in the shape pipemake writes, and the lines it refuses left out."""
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except OSError:
        return
    with f:
        for line in f:
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):
                continue  # a line cut short by a crash, or not JSON pipemake writes
            if not isinstance(obj, dict):
                continue
            if shape is None:
                yield obj
            elif (shaped := shape(obj)) is not None:
                yield shaped


def read_events(path: Path) -> list[dict[str, Any]]:
    """A run log's events (``<run id>.jsonl``), each of the shape pipemake writes: a line of
    another kind (edited by hand, damaged, written by another version) is skipped and a field
    of another type left out (:mod:`.eventshape`), so no reader of it fails on its shape."""
    return list(_read_lines(path, eventshape.event))


def build_running(lock: Path) -> float | None:
    """When the build holding the workspace's lock (``.pipemake/lock``) took it, or None
    when no build holds it. Read from what the holder wrote into the lock file (emptied when
    it lets go): its process is alive on this machine. Only a holder on another machine
    (a shared folder) is asked through the lock itself, with a shared lock tried and
    dropped at once, so a build starting meanwhile is never told to wait."""
    try:
        info = json.loads(lock.read_bytes()[:4096] or b"{}")
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not info:
        return None
    since = info.get("since")
    since = float(since) if isinstance(since, int | float) else 0.0
    pid = info.get("pid")
    if info.get("host") == os.uname().nodename and isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # killed before it could let go
        except PermissionError:
            pass  # alive, another user's
        return since
    return since if _locked(lock) else None


def _locked(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def list_runs(directory: Path) -> list[dict[str, Any]]:
    """Past runs, oldest first: the index, plus runs whose log has no index line: the one a
    build is writing now (``running``; the lock beside ``directory`` tells) or killed ones
    (``incomplete``)."""
    runs = {r["id"]: r for r in _read_lines(directory / INDEX, eventshape.summary) if r.get("id")}
    for path in directory.glob("*.jsonl"):
        if path.name == INDEX or path.stem in runs:
            continue
        tally = _Tally()
        for ev in read_events(path):
            tally.add(ev)
        summary = tally.incomplete()
        if summary.get("id"):
            runs[summary["id"]] = summary
    for r in runs.values():
        r["log"] = (directory / f"{r['id']}.jsonl").exists()
    ordered = sorted(runs.values(), key=lambda r: (r.get("started") or 0, r["id"]))
    if ordered and ordered[-1].get("result") == "incomplete":
        since = build_running(directory.parent / "lock")
        # a second's slack: the lock's time and the run's start are read from two clocks
        if since is not None and (ordered[-1].get("started") or 0) >= since - 1:
            ordered[-1]["result"] = "running"
            started = ordered[-1].get("started")
            if isinstance(started, int | float):  # so far: until now, not its last event
                ordered[-1]["duration"] = max(0.0, time.time() - started)
    return ordered


def running_run(directory: Path) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The run a build is writing now (its summary so far and its events), or None."""
    runs = list_runs(directory)
    if not runs or runs[-1].get("result") != "running":
        return None
    return runs[-1], read_events(directory / f"{runs[-1]['id']}.jsonl")


def read_run(
    directory: Path, run: str | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One run's summary and events: the last run by default; ``run`` is an id, a unique
    prefix of one, or a negative index (``-1`` the last, ``-2`` the one before)."""
    runs = list_runs(directory)
    if not runs:
        raise UsageError("no runs recorded yet (run `pipemake build` first)")
    chosen: dict[str, Any] | None = None
    if run is None:
        chosen = runs[-1]
    elif run.lstrip("-").isdigit() and run.startswith("-"):
        n = int(run)
        if -len(runs) <= n <= -1:
            chosen = runs[n]
        else:
            raise UsageError(f"run {run}: only {len(runs)} run(s) recorded")
    else:
        matches = [r for r in runs if r["id"] == run] or [
            r for r in runs if r["id"].startswith(run)
        ]
        if len(matches) != 1:
            what = "no run matches" if not matches else f"{len(matches)} runs match"
            raise UsageError(f"{what} {run!r} (see `pipemake list --runs`)")
        chosen = matches[0]
    path = directory / f"{chosen['id']}.jsonl"
    if not path.exists():
        raise UsageError(f"the log of run {chosen['id']} was removed (only {KEEP_RUNS} are kept)")
    return chosen, read_events(path)

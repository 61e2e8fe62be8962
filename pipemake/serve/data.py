"""What the pages show, read from the project: runs from the event logs, the dataset from
the stages' outputs, and the curation file. No web library here: ``pipemake report`` uses it
too.

Every file served comes through :meth:`Site.output_file`, which refuses anything outside a
stage's output directory (``..``, absolute paths, symlinks anywhere on the way).
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import curation as cm
from .. import eventshape, history
from .curfile import CurationFile, curation_file

__all__ = [
    "DATASET_RULES",
    "MAX_PIXELS",
    "NOT_READ",
    "DatasetView",
    "Forbidden",
    "NotFound",
    "Site",
    "TooLarge",
    "fold_run",
    "thumbnail",
]

#: the rules the Dataset page knows how to show
DATASET_RULES = ("clustering", "training_data_prep", "frame_extraction")
LOG_LINES = 12
#: what to do when no prep stage reads the curation file
NOT_READ = "add `curation: curation.yaml` to its config so the build honours the corrections"
MAX_EVENTS_LOG = 4000


class NotFound(Exception):
    """No such run, stage or file (HTTP 404)."""


class Forbidden(Exception):
    """A path that leaves a stage's outputs, or goes through a symlink (HTTP 403)."""


def _lines(path: Path) -> list[dict[str, Any]]:
    return list(history._read_lines(path))


def fold_run(events: Iterable[Any]) -> dict[str, Any]:
    """One run's events folded into what the pages draw: the run (start, end, result,
    order, dependencies) and, per stage, its state, why, times, progress, item batches,
    last log lines and error. Each line goes through :func:`pipemake.eventshape.event`
    first: a field of another type than a build writes reads as unknown, a line that is no
    event is skipped."""
    run: dict[str, Any] = {"result": "running", "stages": {}, "order": [], "deps": {}}
    stages: dict[str, dict[str, Any]] = run["stages"]

    def st(sid: str) -> dict[str, Any]:
        return stages.setdefault(
            sid,
            {"state": "pending", "reasons": [], "logs": [], "tasks": {}, "done": 0, "total": 0},
        )

    for line in events:
        ev = eventshape.event(line)
        if ev is None:
            continue
        kind, sid, t = ev["event"], ev.get("stage"), ev.get("time")
        if kind == "run_started":
            run.update(
                id=ev.get("run"), pipeline=ev.get("pipeline"), started=t,
                order=list(dict.fromkeys(ev.get("stages") or [])), deps=ev.get("deps") or {},
                expected=ev.get("expected") or {}, per_item=ev.get("per_item") or {},
                jobs=ev.get("jobs"),
            )  # fmt: skip
            for s in run["order"]:
                st(s)
        elif kind == "run_finished":
            failed = ev.get("failed") or {}
            run["finished"] = t
            run["duration"] = ev.get("duration")
            run["result"] = (
                "interrupted" if ev.get("interrupted") else ("failed" if failed else "ok")
            )
            for s, why in (ev.get("skipped") or {}).items():
                st(s).update(state="skipped", reasons=[why])
        elif not sid:
            continue
        elif kind == "stage_started":
            st(sid).update(state="running", started=t, reasons=ev.get("reasons") or [])
            items = ev.get("items")
            st(sid)["items_run"] = items.get("run") if isinstance(items, dict) else None
        elif kind == "progress":
            st(sid).update(done=ev.get("done") or 0, total=ev.get("total") or 0)
            if t is not None:  # the pace is measured from it
                st(sid).setdefault("first", [t, ev.get("done") or 0])
        elif kind == "log":
            logs = st(sid)["logs"]
            logs.append({"time": t, "level": ev.get("level"), "text": ev.get("text")})
            del logs[:-MAX_EVENTS_LOG]
        elif kind == "task_started":
            st(sid)["tasks"][str(ev.get("task"))] = {"start": t, "end": None, "ok": None}
        elif kind == "task_finished":
            task = st(sid)["tasks"].get(str(ev.get("task")))
            if task is not None:
                task.update(end=t, ok=ev.get("ok"))
        elif kind == "stage_finished":
            s = st(sid)
            s.update(state="ran", finished=t, duration=ev.get("duration"))
            if t is not None:
                s.setdefault("started", t - (ev.get("duration") or 0))
        elif kind == "stage_restored":
            st(sid).update(state="restored", finished=t, reasons=ev.get("reasons") or [])
        elif kind == "stage_skipped":
            up = ev.get("reason") == "up to date"
            st(sid).update(state="up to date" if up else "skipped", reasons=[ev.get("reason")])
        elif kind == "stage_failed":
            st(sid).update(state="failed", finished=t, error=ev.get("error") or "")
        elif kind == "stage_cancelled":
            st(sid).update(state="cancelled", reasons=[ev.get("reason")])
        if t is not None:
            run["last"] = t
    for s in stages.values():
        if s.get("started") is not None and s.get("finished") is not None:
            s.setdefault("duration", s["finished"] - s["started"])
        s["tasks"] = [{"id": k, **v} for k, v in s["tasks"].items()]
    return run


@dataclass
class DatasetView:
    """One stage's dataset, ready to draw: its rule and the groups of images."""

    stage: str
    rule: str
    groups: list[dict[str, Any]]
    notes: list[str]


class Site:
    """The project as the pages see it: its root, runs, stages and curation file."""

    def __init__(self, pipeline_file: Path, runs_dir: Path | None = None) -> None:
        self.file = pipeline_file.resolve()
        self.root = self.file.parent
        self.runs_dir = runs_dir or self.root / ".pipemake" / "runs"
        self._pipeline: tuple[float, Any, str | None] | None = None
        self._ids: dict[tuple[str, int, int], str] = {}
        self._folds: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}
        self.lock = threading.Lock()  # one curation edit at a time

    # the pipeline ---------------------------------------------------------------------
    def pipeline(self) -> tuple[Any, str | None]:
        """The loaded pipeline (None when it does not load) and why not."""
        from ..errors import PipemakeError
        from ..plancache import load_checked

        try:
            mtime = self.file.stat().st_mtime
        except OSError as exc:
            return None, f"cannot read {self.file}: {exc}"
        if self._pipeline is None or self._pipeline[0] != mtime:
            try:
                loaded, error = load_checked(self.file, self.root / ".pipemake"), None
            except PipemakeError as exc:
                loaded, error = None, exc.format()
            self._pipeline = (mtime, loaded, error)
        return self._pipeline[1], self._pipeline[2]

    def stages(self) -> list[tuple[str, str]]:
        """(stage id, rule) of every stage, in the file's order."""
        p, _ = self.pipeline()
        return [] if p is None else [(sid, st.type) for sid, st in p.stages.items()]

    def output_dir(self, stage: str) -> Path:
        """The stage's ``output_dir`` (first output) as a path under the project root."""
        p, _ = self.pipeline()
        if p is None or stage not in p.stages:
            raise NotFound(f"no stage {stage!r}")
        outs = p.stages[stage].ports.outputs
        rel = outs.get("output_dir") or next(iter(outs.values()), None)
        if not isinstance(rel, str):
            raise NotFound(f"stage {stage!r} has no output folder")
        return self.root / rel

    def output_file(self, stage: str, rel: str) -> Path:
        """The file ``rel`` inside ``stage``'s output folder, or :class:`Forbidden` when the
        path leaves it (``..``, absolute, a symlink on the way) and :class:`NotFound`."""
        base = self.output_dir(stage)
        parts = rel.split("/")
        if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise Forbidden(f"{rel!r} is not a path inside the outputs of {stage}")
        if "\\" in rel or "\0" in rel:
            raise Forbidden(f"{rel!r} is not a path inside the outputs of {stage}")
        here = self.root
        for part in Path(os.path.relpath(base, self.root)).parts + tuple(parts):
            here = here / part
            try:
                mode = os.lstat(here).st_mode
            except OSError:
                raise NotFound(f"no file {rel} in {stage}") from None
            if stat.S_ISLNK(mode):
                raise Forbidden(f"{rel!r} goes through a symlink")
        if not stat.S_ISREG(mode):
            raise NotFound(f"{rel} is not a file")
        return here

    # runs ------------------------------------------------------------------------------
    def runs(self) -> list[dict[str, Any]]:
        """Past runs, oldest first (as ``pipemake list --runs``)."""
        return history.list_runs(self.runs_dir)

    def run(self, run_id: str) -> dict[str, Any]:
        """One run folded (see :func:`fold_run`), with each stage's duration in the run
        before it; ``-1`` is the last run."""
        runs = self.runs()
        ids = [r["id"] for r in runs]
        if run_id == "-1" and ids:
            run_id = ids[-1]
        if run_id not in ids:
            raise NotFound(f"no run {run_id!r}")
        path = self.runs_dir / f"{run_id}.jsonl"
        if not path.is_file():
            raise NotFound(f"the log of run {run_id} was removed")
        folded = dict(self._fold(path))
        folded["summary"] = runs[ids.index(run_id)]
        i = ids.index(run_id)
        # a log without its end is running only while its build holds the lock (the lock
        # file says so: the page never takes the lock, so a build starting is not held up)
        if folded["result"] == "running" and runs[i].get("result") != "running":
            folded["result"] = "incomplete"
        folded["previous"] = {}
        if i > 0 and (self.runs_dir / f"{ids[i - 1]}.jsonl").is_file():
            before = self._fold(self.runs_dir / f"{ids[i - 1]}.jsonl")
            folded["previous"] = {
                s: v["duration"] for s, v in before["stages"].items() if v.get("duration")
            }
            folded["previous_id"] = ids[i - 1]
        return folded

    def _fold(self, path: Path) -> dict[str, Any]:
        """:func:`fold_run` of a log, memoized by its size and mtime (the live page asks
        several times a second; a finished log never changes)."""
        st = path.stat()
        key = (st.st_size, st.st_mtime_ns)
        hit = self._folds.get(str(path))
        if hit is None or hit[0] != key:
            hit = self._folds[str(path)] = (key, fold_run(_lines(path)))  # it checks each line
        return hit[1]

    def now(self) -> dict[str, Any]:
        """The latest run folded, or ``{"result": "none"}`` before the first build."""
        runs = self.runs()
        if not runs:
            return {"result": "none", "stages": {}, "order": []}
        return self.run(runs[-1]["id"])

    # curation --------------------------------------------------------------------------
    def curation_file(self) -> CurationFile:
        """The curation file the build reads, and why the server may not write it (see
        :func:`.curfile.curation_file`)."""
        return curation_file(self.root, self.pipeline()[0])

    def curation_path(self) -> Path:
        """The curation file's path (see :meth:`curation_file`)."""
        return self.curation_file().path

    def curation(self) -> tuple[cm.Curation, str | None]:
        """The curation file's corrections and why it cannot be read, if so (then none: a
        missing file is no corrections, and no problem)."""
        path = self.curation_file().path
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would hang the page
                return cm.Curation(), f"{path} is not a regular file"
        except FileNotFoundError:
            return cm.Curation(), None
        except OSError as exc:
            return cm.Curation(), f"cannot read {path}: {exc.strerror or exc}"
        try:
            return cm.load(path), None
        except cm.CurationError as exc:
            return cm.Curation(), str(exc)

    def curation_notes(self, problem: str | None) -> list[str]:
        """What the Dataset page says of the curation file: where corrections go, or why
        they cannot be saved, and ``problem``, why it is unreadable (from :meth:`curation`)."""
        target = self.curation_file()
        notes = []
        if problem is not None:
            notes.append(
                f"the curation file is unreadable: {problem}. The flags below ignore it, and "
                "corrections are refused until it is fixed (it is never overwritten)"
            )
        if target.refused is not None:
            notes.append(f"corrections cannot be saved: {target.refused}")
        elif problem is None:
            notes.append(f"corrections go to {target.shown}")
        if target.read_by is None:
            notes.append(f"no training_data_prep stage reads it yet: {NOT_READ}")
        return notes

    def content_id(self, path: Path) -> str:
        """The cut-out's content id, memoized by (path, size, mtime)."""
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        cid = self._ids.get(key)
        if cid is None:
            cid = self._ids[key] = cm.content_id(path)
        return cid

    # the dataset ------------------------------------------------------------------------
    def dataset(self, stage: str) -> DatasetView:
        """The stage's output as groups of images (clusters, characters or shots)."""
        rule = dict(self.stages()).get(stage)
        if rule not in DATASET_RULES:
            raise NotFound(f"stage {stage!r} has no dataset view (rules: {DATASET_RULES})")
        base = self.output_dir(stage)
        try:
            if rule == "clustering":
                return self._clusters(stage, base)
            if rule == "training_data_prep":
                return self._training_set(stage, base)
            return self._frames(stage, base)
        except FileNotFoundError as exc:  # the same words for every rule's view
            missing = os.path.relpath(exc.filename or base, self.root)
            note = f"not built yet: {missing} does not exist (run `pipemake build`)"
            return DatasetView(stage, rule, [], [note])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            # a file of another shape (a shared store may hold anything): said, never a 500
            return DatasetView(stage, rule, [], [f"not built yet, or unreadable: {exc}"])

    def _clusters(self, stage: str, base: Path) -> DatasetView:
        data = json.loads((base / "clusters.json").read_text())
        items = {i["path"]: i for i in data.get("items", [])}
        cur, problem = self.curation()
        members: dict[str, str] = {}
        groups = []
        unshown: list[str] = []  # listed, but missing or leaving the outputs
        for name, info in data["clusters"].items():
            files = []
            for f in info["files"]:
                rel = f"{name}/{f}"
                it = items.get(rel, {})
                try:
                    cid = self.content_id(self.output_file(stage, rel))
                except (NotFound, Forbidden) as exc:
                    unshown.append(str(exc))
                    continue
                if name != "noise":
                    members.setdefault(cid, name)
                files.append(
                    {
                        "path": rel, "id": cid, "file": f,
                        "probability": eventshape.number(it.get("probability")) or 0.0,
                        "distance": eventshape.number(it.get("distance")) or 0.0,
                    }
                )  # fmt: skip
            files.sort(key=lambda x: (-x["probability"], x["distance"], x["file"]))
            size = info.get("size", len(files))
            groups.append({"name": name, "size": size, "files": files, "noise": name == "noise"})
        named = cm.cluster_names(members, cur)
        for g in groups:
            g["label"] = named.get(g["name"], "")
            for f in g["files"]:
                target = cur.assign.get(f["id"])
                f["assign"] = target or ""
                f["caption"] = cur.captions.get(f["id"], "")
                f["reviewed"] = cur.covers(f["id"])
        notes = [
            f"{data.get('n_clusters', len(groups))} clusters, {data.get('n_noise', 0)} in noise; "
            f"algorithm {data.get('algorithm')}",
            *self.curation_notes(problem),
        ]
        if unshown:
            more = f" and {len(unshown) - 5} more" if len(unshown) > 5 else ""
            notes.append(
                f"not shown, listed in clusters.json: {'; '.join(unshown[:5])}{more} "
                "(run `pipemake build` to rebuild the clustering)"
            )
        return DatasetView(stage, "clustering", groups, notes)

    def _training_set(self, stage: str, base: Path) -> DatasetView:
        rows = _lines(base / "manifest.jsonl")
        by_char: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_char.setdefault(r.get("character", "?"), []).append(
                {
                    "path": r["file"], "id": r.get("id", ""), "file": r["file"],
                    "caption": r.get("caption", ""), "split": r.get("split", ""),
                    "reviewed": bool(r.get("reviewed")), "source": r.get("source", ""),
                }
            )  # fmt: skip
        groups = [
            {"name": c, "label": c, "size": len(v), "files": v, "noise": False}
            for c, v in sorted(by_char.items())
        ]
        stats = json.loads((base / "stats.json").read_text())
        unreviewed = stats.get("unreviewed", 0)
        notes = [
            f"{stats.get('images', len(rows))} images: {stats.get('splits')}; dropped "
            f"{stats.get('dropped') or 'none'}; {unreviewed} unreviewed",
            *self.curation_notes(self.curation()[1]),
        ]
        return DatasetView(stage, "training_data_prep", groups, notes)

    def _frames(self, stage: str, base: Path) -> DatasetView:
        manifest = base / "frames.jsonl"
        if not manifest.is_file():  # not "0 frames": nothing was extracted yet
            raise FileNotFoundError(errno.ENOENT, "no such file", str(manifest))
        rows = _lines(manifest)
        shots: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            shot = r.get("scene", r.get("shot", 0))
            shots.setdefault(str(shot), []).append(
                {"path": r["file"], "id": "", "file": r["file"], "time": r.get("timestamp")}
            )
        groups = [
            {"name": f"shot {k}", "label": "", "size": len(v), "files": v, "noise": False}
            for k, v in sorted(shots.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0)
        ]
        return DatasetView(stage, "frame_extraction", groups, [f"{len(rows)} frames"])


#: the most pixels an image may have to be shrunk to a thumbnail (8000 × 8000): decoding
#: more takes seconds and gigabytes, and a few bytes of PNG can claim far more
MAX_PIXELS = 64_000_000


class TooLarge(Exception):
    """An image too large to make a thumbnail of (HTTP 422)."""


def thumbnail(path: Path, side: int, fmt: str = "PNG") -> bytes | None:
    """``path`` shrunk to fit ``side`` pixels, as image bytes; None without Pillow or for a
    file Pillow cannot read; :class:`TooLarge` for one of more than :data:`MAX_PIXELS`."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            # Pillow warns of an image that large on the terminal: it is refused below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise TooLarge(
                    f"{path.name} is {width}×{height} pixels: too large for a thumbnail "
                    f"(at most {MAX_PIXELS:,} pixels)"
                )
            img.thumbnail((side, side))
            if fmt == "JPEG":
                flat = Image.new("RGB", img.size, (255, 255, 255))
                rgba = img.convert("RGBA")
                flat.paste(rgba, mask=rgba.getchannel("A"))
                img = flat
            buf = io.BytesIO()
            img.save(buf, fmt, **({"quality": 80} if fmt == "JPEG" else {"optimize": True}))
            return buf.getvalue()
    except Image.DecompressionBombError as exc:  # Pillow's own limit, met in open()
        raise TooLarge(f"{path.name}: too large for a thumbnail ({exc})") from None
    except (OSError, ValueError, SyntaxError, MemoryError):  # SyntaxError: a broken header
        return None

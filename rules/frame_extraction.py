"""The ``frame_extraction`` rule: turn videos into still frames plus a manifest.

Input is one video file (of a file with several video streams, the largest moving picture,
as the ``ffmpeg`` command picks it), or a directory of videos (best with ``foreach:
input_video``, so each video is its own item and one changed video reruns alone). Each
video's frames go to ``<output_dir>/<video stem>/`` for a directory input (mirroring
sub-directories) and to ``<output_dir>/`` itself for a single file, named
``frame_<index>.<format>``, with a ``frames.jsonl`` beside them: one JSON object per frame
with ``file`` (relative to the stage output), ``video``, ``timestamp`` (seconds from the
video's start), ``frame_index`` (the frame's position in decoding order from the video's
start, counted, never derived from a timestamp, so it stays right on a video joined from
clips) and, in ``scene`` mode, ``scene`` (the shot, counted from 0), ``shot_start`` and
``shot_start_time`` (the frame index and time of the shot's first frame); the three shot
fields are null in the other modes, which detect no shots. Computed values: ``frame_count``
(frames written), ``scenes`` (shots found in the decoded range) and ``cuts`` (one
``{"video", "frame_index", "timestamp"}`` per shot start after the first, in video order),
summed or joined over videos; ``scenes`` and ``cuts`` are null outside ``scene`` mode.

Modes: ``fps`` (``fps`` frames per second), ``every_n`` (every ``n``-th frame), ``keyframes``
(only key frames are decoded: fast), ``scene`` (``per_scene`` frames spread over each shot:
the frames nearest the middles of ``per_scene`` equal parts of it; a frame starts a shot when
its change, the mean difference 0-255 of small thumbnails, exceeds its neighbours' by
``threshold`` and lasts, unlike a flash's; shots shorter than ``min_scene_len`` frames are
merged) and ``all``. A shot's picks depend on its own frames only, and frames are named by
their index: appending a shot to a video leaves every frame picked before it, its file and
its record as they were, so a per-frame stage downstream runs only the new shot's frames.

Options: ``start``/``end`` (seconds or ``HH:MM:SS.fff``, from the video's start; groups of
pictures before ``start`` are skipped without decoding), ``max_frames`` per video,
``resize`` (longest side, or a ``"WxH"`` box; aspect kept; frames are written upright, turned
as the video's display matrix says, as the ``ffmpeg`` command does for a phone's portrait
video stored sideways), ``format`` png/jpg/webp with
``quality`` (PNGs are written by FFmpeg's own encoder at zlib level 1 with the "up" row
filter: smaller files than the ``ffmpeg`` command's default PNGs, written faster),
and ``dedup`` (skip a frame within that many bits of the last kept frame's 64-bit
difference hash, unless its colours differ; 0 turns it off).

PyAV is imported only when a video is processed (from ``rules/_video.py``); numpy only in
``scene`` mode or with ``dedup``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipemake.rule import Context, Input, Item, Output, Param, Ports, Rule, RuleError

if TYPE_CHECKING:  # pragma: no cover
    from pipemake.rules._video import Options

__all__ = ["FrameExtractionRule", "VIDEO_PATTERN", "parse_resize", "parse_time"]

_SUFFIXES = ("mp4", "mkv", "mov", "avi", "webm", "m4v", "mpg", "mpeg", "ts", "flv", "wmv")
#: the files a ``foreach`` over a directory of videos takes by default
VIDEO_PATTERN = "|".join(f"*.{s}" for s in _SUFFIXES + tuple(s.upper() for s in _SUFFIXES))

MODES = ("fps", "every_n", "keyframes", "scene", "all")
FORMATS = ("png", "jpg", "webp")


def parse_time(value: Any) -> float | None:
    """Seconds from a number or an ``[[HH:]MM:]SS[.fff]`` string; None for None.

    Raises ValueError for anything else or a negative time.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(r"(\d+:){0,2}\d+(\.\d+)?", value.strip()):
        seconds = 0.0
        for part in value.strip().split(":"):
            seconds = seconds * 60 + float(part)
    else:
        raise ValueError(f"not a time: {value!r} (use seconds, or HH:MM:SS.fff)")
    if seconds < 0:
        raise ValueError(f"time {value!r} is negative")
    return seconds


def parse_resize(value: Any) -> tuple[int, int] | int | None:
    """The longest side (an int) or a ``(width, height)`` box from ``"WxH"``; None for None.

    Raises ValueError for anything else.
    """
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", value)
        if match and int(match[1]) > 0 and int(match[2]) > 0:
            return int(match[1]), int(match[2])
        if value.strip().isdigit() and int(value) > 0:
            return int(value)
    raise ValueError(f"resize {value!r}: give the longest side (e.g. 512) or a box 'WxH'")


def _number_problems(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Range checks of the numeric params."""
    rules = [
        ("fps", params["fps"] > 0, "must be > 0 (frames per second)"),
        ("n", params["n"] >= 1, "must be >= 1 (keep every n-th frame)"),
        ("per_scene", params["per_scene"] >= 1, "must be >= 1 (frames per shot)"),
        ("threshold", params["threshold"] > 0, "must be > 0 (0-255 mean change)"),
        ("min_scene_len", params["min_scene_len"] >= 1, "must be >= 1 (frames)"),
        ("max_frames", params["max_frames"] >= 0, "must be >= 0 (0: no limit)"),
        ("quality", 1 <= params["quality"] <= 100, "must be between 1 and 100"),
        ("dedup", 0 <= params["dedup"] <= 64, "must be 0 (off) to 64 (hash bits)"),
    ]
    return [(key, f"param {key!r} {msg}, got {params[key]!r}") for key, ok, msg in rules if not ok]


class FrameExtractionRule(Rule):
    """Extract still frames from videos (by rate, count, key frame, shot, or all) with a
    manifest, decoding with FFmpeg's threads and writing images in parallel."""

    name = "frame_extraction"
    version = "4"
    inputs = {"input_video": Input(kind="path", help="a video file or a directory of videos")}
    outputs = {"output_dir": Output(kind="dir", help="frames and frames.jsonl")}
    params = {
        "mode": Param("str", "fps", choices=MODES, help="which frames to keep"),
        "fps": Param("float", 1.0, help="fps mode: frames per second"),
        "n": Param("int", 30, help="every_n mode: keep every n-th frame"),
        "per_scene": Param("int", 1, help="scene mode: frames per shot, spread evenly"),
        "threshold": Param("float", 20.0, help="scene cut: least change over neighbours (0-255)"),
        "min_scene_len": Param("int", 15, help="scene cut: shortest shot in frames"),
        "start": Param(("float", "str"), 0.0, help="seconds or HH:MM:SS.fff"),
        "end": Param(("float", "str"), None, help="seconds or HH:MM:SS.fff (exclusive)"),
        "max_frames": Param("int", 0, help="most frames per video (0: no limit)"),
        "resize": Param(("int", "str"), None, help="longest side, or 'WxH' box; keeps aspect"),
        "format": Param("str", "jpg", choices=FORMATS, help="image format"),
        "quality": Param("int", 95, help="jpg/webp quality 1-100"),
        "dedup": Param("int", 0, help="skip a frame within this hash distance of the last kept"),
    }
    values = ("frame_count", "scenes", "cuts")
    foreach_pattern = VIDEO_PATTERN
    #: one video or a folder of them runs whole unless the stage says ``foreach:``
    default_foreach = None
    #: a glob of videos (``vids/*.mp4``) runs per video without ``foreach:``
    foreach_inputs = ("input_video",)
    aliases: Mapping[str, str] = {}
    requires: Mapping[str, str] = {
        "av": "pipemake[video]",
        "numpy": "pipemake[video]",
        "PIL": "pipemake[video]",
    }
    preload = ("pipemake.rules._video", "PIL.Image")

    def check(self, ports: Ports) -> list[tuple[str, str]]:
        """Range and format checks of the params, before anything runs."""
        params = {key: ports.params.get(key, decl.default) for key, decl in self.params.items()}
        try:
            problems = _number_problems(params)
        except TypeError:  # a wrong type, already reported by ports()
            return []
        for key in ("start", "end"):
            try:
                parse_time(params[key])
            except ValueError as exc:
                problems.append((key, f"param {key!r}: {exc}"))
        try:
            start, end = parse_time(params["start"]), parse_time(params["end"])
            if end is not None and start is not None and end <= start:
                problems.append(("end", f"param 'end' ({end} s) must be after 'start' ({start} s)"))
        except ValueError:
            pass
        try:
            parse_resize(params["resize"])
        except ValueError as exc:
            problems.append(("resize", str(exc)))
        return problems

    def run(self, ctx: Context) -> dict[str, Any]:
        """Extract one video into the output, or every video of a directory into
        ``<stem>/`` sub-directories."""
        source = Path(ctx.inputs["input_video"])
        out = Path(ctx.outputs["output_dir"])
        if not source.is_dir():
            return _values(self._extract(ctx, source, out, "", self._label(ctx, source, None)))
        videos = [p for p in sorted(source.rglob("*")) if _is_video(p, source)]
        if not videos:
            raise RuleError(f"{source}: no video files ({', '.join(_SUFFIXES)}) in the directory")
        per_video = {}
        for path in videos:
            rel = path.relative_to(source)
            rel_dir = _item_dir(rel.as_posix())
            result = self._extract(ctx, path, out / rel_dir, rel_dir, self._label(ctx, path, None))
            per_video[rel.as_posix()] = _values(result)
        return self.gather(ctx.params, per_video)

    def run_item(self, ctx: Context, item: Item) -> dict[str, Any]:
        """Extract one video of a ``foreach`` into ``<stem>/`` of the item's staging dir."""
        path = Path(ctx.inputs["input_video"])
        rel_dir = _item_dir(item.relpath)
        out = Path(ctx.outputs["output_dir"]) / rel_dir
        return _values(self._extract(ctx, path, out, rel_dir, self._label(ctx, path, item)))

    def gather(self, params: Mapping[str, Any], per_item: Mapping[str, Any]) -> dict[str, Any]:
        """Totals over the videos: frames written, shots found and every video's cuts in
        video order (shots and cuts null outside scene mode)."""
        items = [per_item[key] or {} for key in sorted(per_item)]
        scenes = [v.get("scenes") for v in items]
        cuts = [v.get("cuts") for v in items]
        return {
            "frame_count": sum(int(v.get("frame_count") or 0) for v in items),
            "scenes": None if any(s is None for s in scenes) else sum(scenes),
            "cuts": None if any(c is None for c in cuts) else [c for cs in cuts for c in cs],
        }

    # ------------------------------------------------------------------------------------
    def _extract(self, ctx: Context, path: Path, out: Path, rel_dir: str, label: str) -> Any:
        from pipemake.rules import _video

        out.mkdir(parents=True, exist_ok=True)
        opts = _options(ctx.params)
        return _video.extract(path, out, rel_dir, label, opts, ctx.log, ctx.progress)

    @staticmethod
    def _label(ctx: Context, path: Path, item: Item | None) -> str:
        """How the manifest names the video: its path relative to the project root (never
        an absolute path, which would differ between machines)."""
        if item is not None and item.path:
            return Path(item.path).as_posix()
        try:
            return path.resolve().relative_to(ctx.root.resolve()).as_posix()
        except ValueError:
            return path.name


def _values(result: Any) -> dict[str, Any]:
    """A video's computed values from its extraction result."""
    return {"frame_count": len(result.records), "scenes": result.scenes, "cuts": result.cuts}


def _item_dir(relpath: str) -> str:
    """Where a video's frames go inside the output: its relative path without the suffix."""
    return Path(relpath).with_suffix("").as_posix()


def _is_video(path: Path, root: Path) -> bool:
    rel = path.relative_to(root)
    hidden = any(part.startswith(".") for part in rel.parts)
    return path.is_file() and not hidden and path.suffix[1:].lower() in _SUFFIXES


def _options(params: Mapping[str, Any]) -> Options:
    """The extraction options from resolved params (check() has validated them)."""
    from pipemake.rules._video import Options

    try:
        start, end = parse_time(params.get("start", 0.0)), parse_time(params.get("end"))
        resize = parse_resize(params.get("resize"))
    except ValueError as exc:
        raise RuleError(str(exc)) from exc
    keys: Sequence[str] = ("mode", "fps", "n", "per_scene", "threshold", "min_scene_len")
    keys = (*keys, "max_frames", "format", "quality", "dedup")
    fields = {key: params[key] for key in keys if key in params}
    return Options(start=start or 0.0, end=end, resize=resize, **fields)

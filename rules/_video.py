"""Frame extraction from one video: decoding, frame selection, shot detection and writing.

Private to :mod:`pipemake.rules.frame_extraction`, which imports it lazily: this module
imports PyAV and numpy at the top, so nothing that only loads a pipeline pays for them.

One pass over the video does everything: PyAV decodes with FFmpeg's threads, a selector
decides which frames to keep (only key frames are ever decoded in ``keyframes`` mode, and
decoding starts at a seek to ``start``), and a small thread pool converts and encodes the
kept frames while decoding goes on. Shots are found by :class:`SceneDetector` from tiny
thumbnails of every decoded frame, so every mode that decodes every frame also knows each
frame's shot.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from pipemake.rule import RuleError

#: width of the thumbnails shot detection compares (height follows the aspect ratio)
THUMB_WIDTH = 64
#: a cut's change must also be this many times the mean change around it
ADAPTIVE_RATIO = 3.0
#: frames on each side of a candidate cut that make up "around it"
ADAPTIVE_WINDOW = 2


@dataclass
class Options:
    """The resolved params of one extraction (see the rule's param declarations)."""

    mode: str = "fps"
    fps: float = 1.0
    n: int = 30
    per_scene: int = 1
    threshold: float = 20.0
    min_scene_len: int = 15
    start: float = 0.0
    end: float | None = None
    max_frames: int = 0
    resize: tuple[int, int] | int | None = None
    format: str = "jpg"
    quality: int = 95
    dedup: int = 0


@dataclass
class Result:
    """What one video's extraction produced: manifest records, shot count and cut indices."""

    records: list[dict[str, Any]] = field(default_factory=list)
    scenes: int | None = None
    cuts: list[int] | None = None
    decoded: int = 0
    warning: str | None = None


class SceneDetector:
    """Finds hard cuts in a stream of frame thumbnails, online.

    The change of a frame is the mean absolute difference (0-255) between its thumbnail
    and the previous one. A frame starts a new shot when its change is at least
    ``threshold`` and at least :data:`ADAPTIVE_RATIO` times the mean change of the
    :data:`ADAPTIVE_WINDOW` frames on each side (so fast motion or a flash, which changes
    many frames in a row, is not a cut), and when the shot it ends is at least
    ``min_scene_len`` frames long. Decisions lag the input by the window.
    """

    def __init__(self, threshold: float, min_scene_len: int) -> None:
        self.threshold = threshold
        self.min_scene_len = min_scene_len
        self.cuts: list[int] = []
        self._prev: np.ndarray | None = None
        self._window: deque[tuple[int, float]] = deque()
        self._decided = 0
        self._shot_start: int | None = None

    def push(self, index: int, thumb: np.ndarray) -> list[int]:
        """Add the thumbnail of frame ``index``; return the cuts this confirms."""
        change = 0.0 if self._prev is None else float(np.abs(thumb - self._prev).mean())
        if self._shot_start is None:
            self._shot_start = index
        self._prev = thumb
        self._window.append((index, change))
        found = []
        while len(self._window) - self._decided > ADAPTIVE_WINDOW:
            found += self._decide(self._decided)
        return found

    def finish(self) -> list[int]:
        """Decide the last frames (the stream has ended); return the cuts this confirms."""
        found = []
        while self._decided < len(self._window):
            found += self._decide(self._decided)
        return found

    def _decide(self, pos: int) -> list[int]:
        index, change = self._window[pos]
        around = [
            c
            for i, (_, c) in enumerate(self._window)
            if i != pos and abs(i - pos) <= ADAPTIVE_WINDOW
        ]
        base = sum(around) / len(around) if around else 0.0
        self._decided += 1
        while self._decided > ADAPTIVE_WINDOW:  # forget what no decision needs any more
            self._window.popleft()
            self._decided -= 1
        assert self._shot_start is not None
        if (
            change >= self.threshold
            and change >= ADAPTIVE_RATIO * max(base, 1.0)
            and index - self._shot_start >= self.min_scene_len
        ):
            self._shot_start = index
            self.cuts.append(index)
            return [index]
        return []


def thumbnail(frame: av.VideoFrame) -> np.ndarray:
    """A small RGB thumbnail of ``frame`` as int16 (for differences)."""
    height = max(1, round(THUMB_WIDTH * frame.height / max(1, frame.width)))
    small = frame.reformat(width=THUMB_WIDTH, height=height, format="rgb24", interpolation="AREA")
    return small.to_ndarray().astype(np.int16)


#: frames whose 8×8 colour thumbnails differ more than this (mean, 0-255) are never duplicates
DEDUP_COLOR_TOLERANCE = 10.0


def signature(frame: av.VideoFrame) -> tuple[int, np.ndarray]:
    """A frame's 64-bit difference hash (structure, blind to colour) and an 8×8 colour
    thumbnail: near-identical frames have near-equal hashes and near-equal colours."""
    gray = frame.reformat(width=9, height=8, format="gray", interpolation="AREA").to_ndarray()
    bits = (gray[:, 1:] > gray[:, :-1]).flatten()
    color = frame.reformat(width=8, height=8, format="rgb24", interpolation="AREA").to_ndarray()
    return int.from_bytes(np.packbits(bits).tobytes(), "big"), color.astype(np.int16)


def is_duplicate(a: tuple[int, np.ndarray], b: tuple[int, np.ndarray], distance: int) -> bool:
    """Whether two signatures are within ``distance`` hash bits and of the same colours."""
    if (a[0] ^ b[0]).bit_count() > distance:
        return False
    return float(np.abs(a[1] - b[1]).mean()) <= DEDUP_COLOR_TOLERANCE


def target_size(width: int, height: int, resize: tuple[int, int] | int | None) -> tuple[int, int]:
    """The output size of a ``width × height`` frame: the longest side equal to ``resize``
    (an int), or the largest size that fits in a ``(w, h)`` box; the aspect ratio is kept."""
    if resize is None:
        return width, height
    if isinstance(resize, int):
        scale = resize / max(width, height)
    else:
        scale = min(resize[0] / width, resize[1] / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class FrameWriter:
    """Converts and encodes frames on a few threads while the caller keeps decoding.

    At most a few frames per thread wait in the queue, so memory stays bounded; an error
    in a thread is raised in the caller at the next :meth:`submit` or at :meth:`close`.
    """

    def __init__(self, opts: Options, size: tuple[int, int]) -> None:
        workers = max(1, min(4, os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="pipemake-frames")
        self._pending: deque[Future[None]] = deque()
        self._limit = 2 * workers
        self._opts = opts
        self._size = size
        self.written: list[Path] = []

    def submit(self, frame: av.VideoFrame, path: Path) -> None:
        """Queue ``frame`` to be written to ``path``."""
        while len(self._pending) >= self._limit:
            self._pending.popleft().result()
        self.written.append(path)
        self._pending.append(self._pool.submit(self._write, frame, path))

    def _write(self, frame: av.VideoFrame, path: Path) -> None:
        width, height = self._size
        image = frame.to_image(width=width, height=height, interpolation="AREA")
        fmt = self._opts.format
        if fmt == "png":
            image.save(path, format="PNG", compress_level=3)
        elif fmt == "webp":
            image.save(path, format="WEBP", quality=self._opts.quality, method=2)
        else:
            image.save(path, format="JPEG", quality=self._opts.quality)

    def close(self, *, discard: bool = False) -> None:
        """Wait for every queued frame; with ``discard``, remove everything written."""
        try:
            while self._pending:
                future = self._pending.popleft()
                if discard:
                    future.cancel()
                    future.exception()
                else:
                    future.result()
        finally:
            self._pool.shutdown(wait=True)
            if discard:
                for path in self.written:
                    path.unlink(missing_ok=True)


def open_video(path: Path) -> tuple[Any, Any]:
    """Open ``path`` and return ``(container, video stream)``, or raise RuleError."""
    if path.stat().st_size == 0:
        raise RuleError(f"{path}: the file is empty (zero bytes); replace it with a video")
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise RuleError(f"{path}: not a readable video ({exc.strerror}); check the file") from exc
    if not container.streams.video:
        container.close()
        raise RuleError(f"{path}: the file has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        container.close()
        tag = getattr(stream, "codec_tag", "") or "unknown"
        raise RuleError(
            f"{path}: unsupported video codec ({tag}); this FFmpeg build cannot decode it,"
            " convert the video (e.g. to H.264) first"
        )
    stream.thread_type = "AUTO"
    return container, stream


class _Frames:
    """Iterates the decoded frames of a stream in ``[start, end)``, remembering how far the
    demuxer got (to tell a truncated file) and whether decoding stopped on an error."""

    def __init__(self, container: Any, stream: Any, opts: Options, keyonly: bool) -> None:
        self.container, self.stream, self.opts, self.keyonly = container, stream, opts, keyonly
        self.last_packet_time: float | None = None
        self.error: Exception | None = None
        self.count = 0

    def __iter__(self) -> Iterator[Any]:
        stream, opts = self.stream, self.opts
        if self.keyonly:
            stream.codec_context.skip_frame = "NONKEY"
        if opts.start > 0:
            self.container.seek(round(opts.start / stream.time_base), stream=stream)
        try:
            for packet in self.container.demux(stream):
                if packet.pts is not None and packet.duration is not None:
                    self.last_packet_time = float((packet.pts + packet.duration) * stream.time_base)
                if self.keyonly and packet.size and not packet.is_keyframe:
                    continue
                for frame in packet.decode():
                    if frame.time is not None and frame.time < opts.start - 1e-6:
                        continue
                    if opts.end is not None and frame.time is not None and frame.time >= opts.end:
                        return
                    self.count += 1
                    yield frame
        except av.FFmpegError as exc:
            self.error = exc


def _indexer(stream: Any) -> Callable[[Any], int]:
    """A function giving a frame's index at the stream's average rate (from its timestamp),
    never repeating or going back, counting decoded frames when there are no timestamps."""
    rate = stream.average_rate or stream.guessed_rate
    origin = float((stream.start_time or 0) * stream.time_base)
    last = [-1]

    def index(frame: Any) -> int:
        if rate and frame.time is not None:
            i = max(round((frame.time - origin) * float(rate)), last[0] + 1)
        else:
            i = last[0] + 1
        last[0] = i
        return i

    return index


def _selector(opts: Options, rate: float) -> Callable[[int, float], bool]:
    """For the modes that keep frames as they come: is frame (index, time) kept?"""
    if opts.mode == "fps":
        period, eps = 1.0 / opts.fps, 0.5 / rate if rate else 1e-3
        state = {"next": None}

        def by_time(_index: int, time: float) -> bool:
            if state["next"] is None:
                state["next"] = time
            if time + eps < state["next"]:
                return False
            state["next"] += period * (math.floor((time + eps - state["next"]) / period) + 1)
            return True

        return by_time
    if opts.mode == "every_n":
        first: list[int] = []

        def by_count(index: int, _time: float) -> bool:
            if not first:
                first.append(index)
            return (index - first[0]) % opts.n == 0

        return by_count
    return lambda _index, _time: True  # all, keyframes (only key frames are decoded)


class _ShotPicker:
    """Keeps a bounded, evenly thinned set of candidate frames of the open shot and, when
    the shot closes, picks ``per_scene`` frames spread evenly over it."""

    def __init__(self, per_scene: int) -> None:
        self.per_scene = per_scene
        self.cap = max(16, 4 * per_scene)
        self.start: int | None = None
        self.stride = 1
        self.items: list[tuple[int, Any]] = []

    def add(self, index: int, frame: Any) -> None:
        """Offer frame ``index`` of the open shot."""
        if self.start is None:
            self.start = index
        if self.items and index - self.items[-1][0] < self.stride:
            return
        self.items.append((index, frame))
        if len(self.items) > self.cap:
            self.items = self.items[::2]
            self.stride *= 2

    def close(self, end: int) -> list[tuple[int, Any]]:
        """Close the shot before frame ``end``: return its picks and start the next shot with
        the candidates from ``end`` on."""
        shot = [it for it in self.items if it[0] < end]
        rest = [it for it in self.items if it[0] >= end]
        picks: dict[int, Any] = {}
        if shot:
            start = self.start if self.start is not None else shot[0][0]
            length = end - start
            for j in range(self.per_scene):
                target = start + length * (2 * j + 1) / (2 * self.per_scene)
                index, frame = min(shot, key=lambda it: abs(it[0] - target))
                picks[index] = frame
        self.items, self.stride = rest, 1
        self.start = rest[0][0] if rest else end
        return sorted(picks.items(), key=lambda it: it[0])


def _declared_duration(container: Any, stream: Any) -> tuple[float | None, float]:
    """The video's declared duration in seconds and how much shorter decoding may end
    without calling the file truncated (the container's duration may include audio)."""
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    if stream.duration:
        return float(stream.duration * stream.time_base), 2.0 / rate
    if container.duration:
        duration = container.duration / 1_000_000
        return duration, max(1.0, 0.02 * duration)
    return None, 0.0


class _Extraction:
    """One video's extraction: feeds decoded frames to the detector, the selector or the
    shot picker, and kept frames to the writer; collects the manifest records."""

    def __init__(self, path: Path, out_dir: Path, rel_dir: str, opts: Options) -> None:
        self.path, self.out_dir, self.rel_dir, self.opts = path, out_dir, rel_dir, opts
        self.kept: list[tuple[int, float]] = []
        self.writer: FrameWriter | None = None
        self.last_sig: tuple[int, np.ndarray] | None = None
        self.full = False

    def keep(self, picks: list[tuple[int, Any]]) -> None:
        """Write the picked frames, unless they repeat the last kept one or the cap is hit."""
        opts = self.opts
        for index, frame in picks:
            if opts.max_frames and len(self.kept) >= opts.max_frames:
                self.full = True
                return
            if opts.dedup:
                sig = signature(frame)
                if self.last_sig is not None and is_duplicate(sig, self.last_sig, opts.dedup):
                    continue
                self.last_sig = sig
            if self.writer is None:
                self.writer = FrameWriter(opts, target_size(frame.width, frame.height, opts.resize))
            self.writer.submit(frame, self.out_dir / _frame_name(index, opts.format))
            self.kept.append((index, float(frame.time or 0.0)))
        if opts.max_frames and len(self.kept) >= opts.max_frames:
            self.full = True

    def run(self, frames: _Frames, index_of: Callable[[Any], int], progress: Any) -> Any:
        """Consume ``frames``; return the scene detector (None in keyframes mode)."""
        opts = self.opts
        rate = float(frames.stream.average_rate or frames.stream.guessed_rate or 0)
        detector = None if frames.keyonly else SceneDetector(opts.threshold, opts.min_scene_len)
        picker = _ShotPicker(opts.per_scene) if opts.mode == "scene" else None
        select = _selector(opts, rate)
        last = -1
        for frame in frames:
            last = index_of(frame)
            cuts = detector.push(last, thumbnail(frame)) if detector else []
            if picker is not None:
                for cut in cuts:
                    self.keep(picker.close(cut))
                picker.add(last, frame)
            elif select(last, float(frame.time or 0.0)):
                self.keep([(last, frame)])
            if self.full:
                break
            if frames.count % 25 == 0:
                progress(frames.count)
        if detector is not None:
            cuts = detector.finish()
            if picker is not None and not self.full and last >= 0:
                for cut in cuts:
                    self.keep(picker.close(cut))
                self.keep(picker.close(last + 1))
        return detector


def _frame_name(index: int, fmt: str) -> str:
    return f"frame_{index:06d}.{fmt}"


def extract(
    path: Path,
    out_dir: Path,
    rel_dir: str,
    video_label: str,
    opts: Options,
    log: logging.Logger,
    progress: Callable[[int], None] = lambda done: None,
) -> Result:
    """Extract the frames of the video at ``path`` into ``out_dir`` and write its manifest.

    ``rel_dir`` is ``out_dir`` relative to the stage output (the manifest's file paths
    start with it) and ``video_label`` names the video in the manifest. Raises RuleError
    for a file that yields no frame, leaving nothing behind; a file that breaks off after
    good frames is logged as a warning with the count of frames extracted.
    """
    container, stream = open_video(path)
    job = _Extraction(path, out_dir, rel_dir, opts)
    frames = _Frames(container, stream, opts, keyonly=opts.mode == "keyframes")
    try:
        try:
            detector = job.run(frames, _indexer(stream), progress)
            warning = _check_decoding(path, container, stream, frames, job)
        finally:
            container.close()
        if job.writer is not None:
            job.writer.close()
    except BaseException:
        if job.writer is not None:
            job.writer.close(discard=True)
        raise
    result = Result(decoded=frames.count, warning=warning)
    cuts = detector.cuts if detector is not None else None
    result.scenes = None if cuts is None else len(cuts) + 1
    result.cuts = cuts
    prefix = f"{rel_dir}/" if rel_dir else ""
    for index, time in job.kept:
        result.records.append(
            {
                "file": prefix + _frame_name(index, opts.format),
                "video": video_label,
                "timestamp": round(time, 6),
                "frame_index": index,
                "scene": None if cuts is None else bisect.bisect_right(cuts, index),
            }
        )
    if warning:
        log.warning("%s (%d frames extracted)", warning, len(result.records))
    write_manifest(out_dir / "frames.jsonl", result.records)
    return result


def _check_decoding(
    path: Path, container: Any, stream: Any, frames: _Frames, job: _Extraction
) -> str | None:
    """Raise RuleError when nothing could be decoded; return a warning when decoding broke
    off (an error, or a file shorter than it declares) after good frames."""
    if frames.count == 0:
        if frames.error is not None:
            raise RuleError(f"{path}: the video cannot be decoded ({frames.error}); check the file")
        if job.opts.start > 0 or job.opts.end is not None:
            raise RuleError(
                f"{path}: no frames between start and end; check the times against the video"
            )
        raise RuleError(f"{path}: the video has no frames (zero length or truncated)")
    if frames.error is not None:
        return f"{path}: corrupt data after {frames.count} decoded frames ({frames.error})"
    if job.full or job.opts.end is not None:
        return None
    duration, slack = _declared_duration(container, stream)
    reached = frames.last_packet_time
    if duration is not None and reached is not None and reached < duration - slack:
        return (
            f"{path}: the video breaks off at {reached:.2f} s of the {duration:.2f} s it declares"
            " (truncated or corrupt tail)"
        )
    return None


def write_manifest(path: Path, records: list[dict[str, Any]]) -> None:
    """Write ``records`` as JSON lines (a temporary file renamed at the end, so a manifest
    that exists is complete)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
    os.replace(tmp, path)

"""Frame extraction from one video: decoding, frame selection, shot detection and writing.

Private to :mod:`pipemake.rules.frame_extraction`, which imports it lazily: this module
imports PyAV at the top (numpy only when shots or duplicates are looked for), so nothing
that only loads a pipeline pays for them.

One pass over the video does everything: PyAV decodes with FFmpeg's threads, a selector
decides which frames to keep, and a small thread pool converts and encodes the kept frames
while decoding goes on. Only key frames are ever decoded in ``keyframes`` mode, and the
groups of pictures that end before ``start`` are demuxed but never decoded. A frame's
``frame_index`` is its position in the decoder's output from the start of the stream
(packets of skipped groups count one frame each), never a timestamp times a frame rate,
which drifts on a video joined from clips. Shots are found by :class:`SceneDetector` from
tiny thumbnails of every decoded frame, in ``scene`` mode only: the other modes spend
nothing per frame that they do not keep.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
from av.video.reformatter import VideoReformatter

from pipemake.rule import RuleError
from pipemake.rules._video_shots import SceneDetector, ShotPicker, selector

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: width of the thumbnails shot detection compares (height follows the aspect ratio)
THUMB_WIDTH = 64
#: how PNG frames are encoded (FFmpeg's PNG encoder, through PyAV): zlib level 1 with the
#: "up" row filter writes 1280×720 frames in about 22 ms where Pillow's level 1 takes 48 ms,
#: and smaller (1.12 MB against Pillow's 1.19 MB and the ``ffmpeg`` command's 1.8 MB)
PNG_OPTIONS = {"compression_level": "1", "pred": "up"}
#: FFmpeg's value for "unspecified" colour primaries and transfer: a PNG then carries no
#: gAMA/cHRM chunks, which viewers would apply (the pixels are the decoded RGB as they are)
_UNSPECIFIED = 2


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
    """What one video's extraction produced: manifest records, shot count and the cuts
    (``{"video", "frame_index", "timestamp"}`` of each shot's first frame after the first;
    None outside ``scene`` mode)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    scenes: int | None = None
    cuts: list[dict[str, Any]] | None = None
    decoded: int = 0
    skipped: int = 0
    warning: str | None = None


_scalers = threading.local()


def scale(frame: av.VideoFrame, purpose: str, **kwargs: Any) -> av.VideoFrame:
    """``frame.reformat(**kwargs)`` through a scaler kept per thread and purpose.

    A frame's own reformatter is new for every frame, so FFmpeg would set up its scaler
    again each time (the most expensive part of a small conversion); reusing one per
    purpose keeps that setup cached.
    """
    table = _scalers.__dict__.setdefault("table", {})
    if purpose not in table:
        table[purpose] = VideoReformatter()
    return table[purpose].reformat(frame, **kwargs)


def thumbnail(frame: av.VideoFrame) -> np.ndarray:
    """A small RGB thumbnail of ``frame`` as int16 (for differences)."""
    height = max(1, round(THUMB_WIDTH * frame.height / max(1, frame.width)))
    import numpy as np

    small = scale(
        frame, "thumb", width=THUMB_WIDTH, height=height, format="rgb24", interpolation="AREA"
    )
    return small.to_ndarray().astype(np.int16)


#: frames whose 8×8 colour thumbnails differ more than this (mean, 0-255) are never duplicates
DEDUP_COLOR_TOLERANCE = 10.0


def signature(frame: av.VideoFrame) -> tuple[int, np.ndarray]:
    """A frame's 64-bit difference hash (structure, blind to colour) and an 8×8 colour
    thumbnail: near-identical frames have near-equal hashes and near-equal colours."""
    import numpy as np

    gray = scale(frame, "hash", width=9, height=8, format="gray", interpolation="AREA")
    gray = gray.to_ndarray()
    bits = (gray[:, 1:] > gray[:, :-1]).flatten()
    color = scale(frame, "color", width=8, height=8, format="rgb24", interpolation="AREA")
    color = color.to_ndarray()
    return int.from_bytes(np.packbits(bits).tobytes(), "big"), color.astype(np.int16)


def is_duplicate(a: tuple[int, np.ndarray], b: tuple[int, np.ndarray], distance: int) -> bool:
    """Whether two signatures are within ``distance`` hash bits and of the same colours."""
    if (a[0] ^ b[0]).bit_count() > distance:
        return False
    return float(abs(a[1] - b[1]).mean()) <= DEDUP_COLOR_TOLERANCE


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


def quarter_turns(frame: av.VideoFrame) -> int:
    """How many quarter turns counterclockwise make ``frame`` upright, as its video's
    display matrix says (a phone's portrait video is stored sideways with one); 0 for a
    frame without one, or an angle that is not a multiple of 90° (left as stored)."""
    try:
        angle = float(frame.rotation or 0)
    except (AttributeError, TypeError, ValueError):
        return 0
    turns = round(angle / 90)
    return turns % 4 if abs(angle - 90 * turns) < 1 else 0


class FrameWriter:
    """Converts and encodes frames on a few threads while the caller keeps decoding.

    ``size`` is the frame as written (upright); ``turns`` the quarter turns counterclockwise
    that make a decoded frame upright (:func:`quarter_turns`), as the ``ffmpeg`` command
    turns them too. At most a few frames per thread wait in the queue, so memory stays
    bounded; an error in a thread is raised in the caller at the next :meth:`submit` or at
    :meth:`close`.
    """

    def __init__(self, opts: Options, size: tuple[int, int], turns: int = 0) -> None:
        workers = max(1, min(4, decode_threads()))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="pipemake-frames")
        self._pending: deque[Future[None]] = deque()
        self._limit = 2 * workers
        self._opts = opts
        self._size = size
        self._turns = turns % 4
        self.written: list[Path] = []

    def submit(self, frame: av.VideoFrame, path: Path) -> None:
        """Queue ``frame`` to be written to ``path``."""
        while len(self._pending) >= self._limit:
            self._pending.popleft().result()
        self.written.append(path)
        self._pending.append(self._pool.submit(self._write, frame, path))

    def _write(self, frame: av.VideoFrame, path: Path) -> None:
        width, height = self._size
        from PIL import Image

        stored = (height, width) if self._turns % 2 else (width, height)
        rgb = scale(
            frame, "save", width=stored[0], height=stored[1], format="rgb24", interpolation="AREA"
        )
        fmt = self._opts.format
        if fmt == "png" and not self._turns:
            _write_png(rgb, path)
            return
        plane = rgb.planes[0]  # read in place: VideoFrame.to_image copies it first (4 ms at 720p)
        image = Image.frombuffer("RGB", stored, plane, "raw", "RGB", plane.line_size, 1)
        if self._turns:  # Pillow's ROTATE_90 turns counterclockwise, as the matrix counts
            t = Image.Transpose
            image = image.transpose({1: t.ROTATE_90, 2: t.ROTATE_180, 3: t.ROTATE_270}[self._turns])
        if fmt == "png":
            _write_png(av.VideoFrame.from_image(image), path)
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


_png_encoders = threading.local()


def _write_png(rgb: av.VideoFrame, path: Path) -> None:
    """Write an RGB frame as a PNG file with FFmpeg's encoder (one per thread and size; it
    releases the GIL while it compresses, so the writer's threads encode side by side)."""
    size = (rgb.width, rgb.height)
    held = getattr(_png_encoders, "encoder", None)
    if held is None or held[0] != size:
        encoder = av.CodecContext.create("png", "w")
        encoder.width, encoder.height = size
        encoder.pix_fmt = "rgb24"
        encoder.thread_count = 1  # the writer's threads are the parallelism
        encoder.sample_aspect_ratio = Fraction(1, 1)  # square pixels (pHYs), not "0:1"
        encoder.options = dict(PNG_OPTIONS)
        held = (size, encoder)
        _png_encoders.encoder = held
    rgb.color_primaries = rgb.color_trc = _UNSPECIFIED
    packets = held[1].encode(rgb)
    if len(packets) != 1:  # an intra-only encoder without threads answers every frame
        raise RuntimeError(f"the PNG encoder returned {len(packets)} packets for one frame")
    with open(path, "wb") as fh:
        fh.write(memoryview(packets[0]))


def best_video_stream(streams: Any) -> Any:
    """The video stream to extract, as the ``ffmpeg`` command picks it: the largest
    picture among the moving ones (not a cover image or thumbnails attached to the file),
    the first of those of equal size."""
    still = av.stream.Disposition.attached_pic | av.stream.Disposition.timed_thumbnails

    def area(stream: Any) -> int:
        return (getattr(stream, "width", 0) or 0) * (getattr(stream, "height", 0) or 0)

    moving = [s for s in streams if not s.disposition & still] or list(streams)
    return max(moving, key=area)


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
    stream = best_video_stream(container.streams.video)
    if stream.codec_context is None:
        container.close()
        tag = getattr(stream, "codec_tag", "") or "unknown"
        raise RuleError(
            f"{path}: unsupported video codec ({tag}); this FFmpeg build cannot decode it,"
            " convert the video (e.g. to H.264) first"
        )
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = decode_threads()
    return container, stream


def decode_threads() -> int:
    """The decoder's threads: one per CPU this process may use. FFmpeg's own choice (one
    more than the machine's CPUs) oversubscribes them: on 2 CPUs, 2 threads decode a 720p
    H.264 clip in 0.10 s where 3 take 0.12 s, and a longer one 15–20 % faster (the
    decoder, the frame writer's threads and the worker share the same CPUs)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        usable = os.cpu_count() or 1
    return max(1, min(16, usable))  # FFmpeg caps its own choice at 16 too


#: in a video without B-frames, the frames of a group of pictures after its last kept one
#: are not decoded when there are at least this many (the decoder is drained and reset
#: after the last kept frame, which stalls its threads for a moment)
TAIL_SKIP_MIN = 8
#: a group of pictures longer than this many packets is decoded as it comes, not held
MAX_HELD_PACKETS = 1024
#: asks the decoder for its delayed frames and resets it (in place of a packet)
_DRAIN = object()


class _Frames:
    """Iterates ``(frame_index, frame)`` over the decoded frames of a stream in
    ``[start, end)``, remembering how far the demuxer got (to tell a truncated file) and
    whether decoding stopped on an error.

    Packets are demuxed a group of pictures (a key frame and what follows it) at a time,
    and only the part of a group that holds wanted frames is decoded: groups before
    ``start`` or without a wanted frame are skipped, and in a video without B-frames the
    tail after a group's last wanted frame too (``wanted`` mirrors the mode's selector on
    the packets' timestamps). The index counts the decoder's output from the start of the
    stream, a skipped packet counting as the frame it holds. In ``keyframes`` mode only key
    packets reach the decoder, and a key frame's index is the number of packets before it.
    """

    def __init__(
        self,
        container: Any,
        stream: Any,
        opts: Options,
        keyonly: bool,
        wanted: Callable[[int, float], bool] | None = None,
    ) -> None:
        self.container, self.stream, self.opts, self.keyonly = container, stream, opts, keyonly
        self.wanted = wanted
        self.origin = float((stream.start_time or 0) * stream.time_base)
        self.last_packet_time: float | None = None
        self.error: Exception | None = None
        self.count = 0
        self.hit_end = False
        #: frames never decoded because nothing wanted needed them
        self.skipped = 0
        self._packets = 0  # non-empty packets demuxed so far
        self._planned = 0  # packets handed to the planner so far
        self._decoded = 0  # frames out of the decoder, counting skipped packets as frames
        self._dirty = False  # packets went to the decoder since it was last drained
        self._b_frames = bool(getattr(stream.codec_context, "has_b_frames", 0))
        self._key_index: dict[int, int] = {}  # keyframes mode: packet pts → packet count
        duration, _ = _declared_duration(container, stream)
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        span = min(duration or 0.0, opts.end or math.inf) - opts.start
        #: how many frames decoding should yield, for progress (None when unknown)
        self.expected = round(span * rate) if span > 0 and rate and not keyonly else None

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        codec = self.stream.codec_context
        if self.keyonly:
            codec.skip_frame = "NONKEY"
        try:
            for packet in self._packets_to_decode():
                if packet is _DRAIN:
                    decoded = codec.decode(None)
                    codec.flush_buffers()
                    for frame in decoded:  # frames not from a packet lack its time base
                        frame.time_base = self.stream.time_base
                else:
                    decoded = packet.decode()
                for frame in decoded:
                    index = self._index_of(frame)
                    time = self.time_of(frame)
                    if time is not None and time < self.opts.start - 1e-6:
                        continue
                    if self.opts.end is not None and time is not None and time >= self.opts.end:
                        self.hit_end = True
                        return
                    self.count += 1
                    yield index, frame
        except av.FFmpegError as exc:
            self.error = exc

    def _packets_to_decode(self) -> Iterator[Any]:
        """The packets the decoder needs, a group of pictures at a time, with a drain
        (:data:`_DRAIN`) before packets are skipped after decoded ones."""
        group: list[Any] = []
        streaming = False  # the group outgrew MAX_HELD_PACKETS: pass its packets on
        for packet in self.container.demux(self.stream):
            self._note(packet)
            if self.keyonly and packet.size and not packet.is_keyframe:
                continue
            if not packet.size:  # the end of the stream (or an empty AVI packet)
                yield from self._release(group)
                group, streaming = [], False
                if self.hit_end:
                    return
                yield packet
                continue
            if packet.is_keyframe and (group or streaming):
                yield from self._release(group)
                group, streaming = [], False
                if self.hit_end:
                    return
            if streaming:
                self._planned += 1
                yield packet
                continue
            group.append(packet)
            if len(group) >= MAX_HELD_PACKETS:
                self._dirty, streaming = True, True
                self._planned += len(group)
                yield from group
                group = []
        yield from self._release(group)

    def _note(self, packet: Any) -> None:
        """Remember how far the demuxer got and, for key frames, the packet count."""
        if packet.pts is not None and packet.duration is not None:
            end = float((packet.pts + packet.duration) * self.stream.time_base)
            self.last_packet_time = end - self.origin
        if self.keyonly and packet.size and packet.is_keyframe and packet.pts is not None:
            self._key_index[packet.pts] = self._packets
        self._packets += 1 if packet.size else 0

    def _release(self, group: list[Any]) -> Iterator[Any]:
        """Hand on the packets of ``group`` that wanted frames need; count the others."""
        if not group:
            return
        keep = self._keep(group)
        self._planned += len(group)
        if keep:
            self._dirty = True
            yield from group[:keep]
        skipped = len(group) - keep
        if skipped and not self.keyonly:
            if self._dirty:
                yield _DRAIN  # the frames still in the decoder come first
                self._dirty = False
            self._decoded += skipped
            self.skipped += skipped

    def _keep(self, group: list[Any]) -> int:
        """How many leading packets of ``group`` to decode; sets ``hit_end`` when the
        group starts at or after ``end``."""
        n = len(group)
        if any(p.pts is None for p in group):
            return n
        times = [self._packet_time(p) for p in group]
        start, end = self.opts.start - 1e-6, self.opts.end
        if end is not None and min(times) >= end:
            self.hit_end = True
            return 0
        if self.keyonly:
            return n if max(times) >= start else 0
        self._b_frames = self._b_frames or any(b <= a for a, b in pairwise(times))
        if self._b_frames:  # decoding order is not presentation order: whole groups only
            return 0 if not self._dirty and max(times) < start else n
        wanted = [
            i
            for i, t in enumerate(times)
            if t >= start
            and (end is None or t < end)
            and (self.wanted is None or self.wanted(self._planned + i, t))
        ]
        keep = wanted[-1] + 1 if wanted else 0
        if n - keep < TAIL_SKIP_MIN and (keep or self._dirty):
            return n
        return keep

    def _packet_time(self, packet: Any) -> float:
        return float(packet.pts * self.stream.time_base) - self.origin

    def _index_of(self, frame: Any) -> int:
        """The decode-order index of ``frame``, just out of the decoder."""
        if self.keyonly:
            index = self._key_index.pop(frame.pts, None) if frame.pts is not None else None
            if index is not None:
                self._decoded = index + 1
                return index
        self._decoded += 1
        return self._decoded - 1

    def time_of(self, frame: Any) -> float | None:
        """A frame's time in seconds from the start of the video (None without a timestamp)."""
        return None if frame.time is None else frame.time - self.origin


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
    """One video's extraction: feeds decoded frames to the detector and the shot picker
    (``scene`` mode) or to the selector, and kept frames to the writer; collects the
    manifest records."""

    def __init__(self, path: Path, out_dir: Path, rel_dir: str, opts: Options) -> None:
        self.path, self.out_dir, self.rel_dir, self.opts = path, out_dir, rel_dir, opts
        self.kept: list[tuple[int, float]] = []
        self.writer: FrameWriter | None = None
        self.last_sig: tuple[int, np.ndarray] | None = None
        self.full = False
        self.time_of: Callable[[Any], float | None] = lambda frame: frame.time
        #: scene mode: (frame index, time) of each shot's first frame, the first shot's too
        self.shots: list[tuple[int, float]] = []

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
                turns = quarter_turns(frame)  # the size asked for is the upright frame's
                upright = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
                self.writer = FrameWriter(opts, target_size(*upright, opts.resize), turns)
            self.writer.submit(frame, self.out_dir / _frame_name(index, opts.format))
            self.kept.append((index, float(self.time_of(frame) or 0.0)))
        if opts.max_frames and len(self.kept) >= opts.max_frames:
            self.full = True

    def run(self, frames: _Frames, progress: Callable[[int, int | None], None]) -> None:
        """Consume ``frames``, keeping what the mode asks for."""
        opts, self.time_of = self.opts, frames.time_of
        if opts.mode == "scene":
            self._run_scenes(frames, progress)
            return
        rate = float(frames.stream.average_rate or frames.stream.guessed_rate or 0)
        select = selector(opts, rate)
        for index, frame in frames:
            if select(index, float(frames.time_of(frame) or 0.0)):
                self.keep([(index, frame)])
                if self.full:
                    break
            if frames.count % 25 == 0:
                progress(frames.count, frames.expected)

    def _run_scenes(self, frames: _Frames, progress: Callable[[int, int | None], None]) -> None:
        """Detect shots and keep ``per_scene`` frames of each.

        The detector decides a frame a few frames after it arrives, so frames wait in
        ``pending`` until no cut before them can still be found: the picker sees each shot's
        own frames only, and a shot's picks never depend on what follows its cut (appending
        a shot to a video leaves the frames picked before it as they were).
        """
        opts = self.opts
        detector = SceneDetector(opts.threshold, opts.min_scene_len)
        picker = ShotPicker(opts.per_scene)
        pending: deque[tuple[int, Any]] = deque()  # frames not yet known to be in the open shot
        times: dict[int, float] = {}  # the frames a cut may still be found at
        last = -1

        def settle(cuts: list[int], through: int) -> None:
            for cut in cuts:
                while pending and pending[0][0] < cut:
                    picker.add(*pending.popleft())
                self._cut(cut, times)
                self.keep(picker.close(cut))
            while pending and pending[0][0] <= through:
                picker.add(*pending.popleft())

        for index, frame in frames:
            last = index
            time = float(frames.time_of(frame) or 0.0)
            if not self.shots:
                self.shots.append((index, time))
            times[index] = time
            pending.append((index, frame))
            settle(detector.push(index, thumbnail(frame)), detector.settled)
            if len(times) > 64:
                for old in sorted(times)[:-32]:
                    del times[old]
            if self.full:
                break
            if frames.count % 25 == 0:
                progress(frames.count, frames.expected)
        if self.full:
            return
        settle(detector.finish(), last)
        if not self.full and last >= 0:
            self.keep(picker.close(last + 1))

    def _cut(self, index: int, times: dict[int, float]) -> None:
        self.shots.append((index, times.get(index, 0.0)))


def _frame_name(index: int, fmt: str) -> str:
    return f"frame_{index:06d}.{fmt}"


def extract(
    path: Path,
    out_dir: Path,
    rel_dir: str,
    video_label: str,
    opts: Options,
    log: logging.Logger,
    progress: Callable[[int, int | None], None] = lambda done, total: None,
) -> Result:
    """Extract the frames of the video at ``path`` into ``out_dir`` and write its manifest.

    ``rel_dir`` is ``out_dir`` relative to the stage output (the manifest's file paths
    start with it) and ``video_label`` names the video in the manifest. Raises RuleError
    for a file that yields no frame, leaving nothing behind; a file that breaks off after
    good frames is logged as a warning with the count of frames extracted.
    """
    container, stream = open_video(path)
    job = _Extraction(path, out_dir, rel_dir, opts)
    rate = float(stream.average_rate or stream.guessed_rate or 0)
    wanted = selector(opts, rate) if opts.mode in ("fps", "every_n") else None
    frames = _Frames(container, stream, opts, keyonly=opts.mode == "keyframes", wanted=wanted)
    try:
        try:
            job.run(frames, progress)
            # the last figure is what was decoded (the expected count was an estimate)
            progress(frames.count, frames.count)
            warning = _check_decoding(path, container, stream, frames, job)
        finally:
            container.close()
        if job.writer is not None:
            job.writer.close()
    except BaseException:
        if job.writer is not None:
            job.writer.close(discard=True)
        raise
    result = Result(decoded=frames.count, skipped=frames.skipped, warning=warning)
    result.records = _records(job, video_label)
    if opts.mode == "scene":
        result.scenes = len(job.shots)
        result.cuts = [
            {"video": video_label, "frame_index": index, "timestamp": round(time, 6)}
            for index, time in job.shots[1:]
        ]
    if warning:
        log.warning("%s (%d frames extracted)", warning, len(result.records))
    write_manifest(out_dir / "frames.jsonl", result.records)
    return result


def _records(job: _Extraction, video_label: str) -> list[dict[str, Any]]:
    """The manifest records of the kept frames; the shot fields are null outside ``scene``
    mode."""
    prefix = f"{job.rel_dir}/" if job.rel_dir else ""
    starts = [index for index, _ in job.shots]
    records = []
    for index, time in job.kept:
        shot = bisect.bisect_right(starts, index) - 1 if starts else None
        first = job.shots[shot] if shot is not None and shot >= 0 else None
        records.append(
            {
                "file": prefix + _frame_name(index, job.opts.format),
                "video": video_label,
                "timestamp": round(time, 6),
                "frame_index": index,
                "scene": shot if first is not None else None,
                "shot_start": first[0] if first is not None else None,
                "shot_start_time": round(first[1], 6) if first is not None else None,
            }
        )
    return records


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
    if job.full or frames.hit_end:
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

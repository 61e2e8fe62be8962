"""Synthetic videos with KNOWN shot cuts, for frame-extraction tests, benchmarks and examples.

Each shot has its own background (a colour far from its neighbours' plus a gentle gradient
and a little noise, so the encoder has texture to work on) and a few coloured shapes
(circles and rectangles) that move in straight lines and bounce off the edges. Inside a shot
consecutive frames differ only by that motion; at a cut everything changes. The writer
returns the indices of the first frame of every shot after the first, which is what a scene
detector should find.

Only numpy and PyAV are used, so other tests and the end-to-end example can reuse this
module without pulling in anything else.

Typical use::

    cuts = write_video(tmp_path / "clip.mp4", shot_lengths=[30, 45, 24], fps=24)
    # cuts == [30, 75]; the video has 99 frames at 24 fps, a key frame every 12 frames
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["DEFAULT_SHOTS", "render_shot_frames", "write_joined", "write_video", "write_garbage"]

#: shot lengths (frames) used when the caller gives none: uneven on purpose
DEFAULT_SHOTS: tuple[int, ...] = (30, 45, 24, 36, 50)

# backgrounds of consecutive shots are taken from this cycle, chosen so that neighbours
# differ strongly in hue and brightness
_BACKGROUNDS = (
    (200, 40, 40),
    (30, 160, 60),
    (40, 60, 190),
    (220, 200, 60),
    (120, 40, 150),
    (40, 190, 200),
    (235, 130, 30),
    (90, 90, 90),
)


def _shape_specs(
    rng: np.random.Generator, width: int, height: int, count: int, speed: float
) -> list[dict]:
    """Random shapes for one shot: kind, colour, size, start position and velocity."""
    specs = []
    for _ in range(count):
        size = int(rng.integers(max(4, min(width, height) // 10), max(6, min(width, height) // 3)))
        specs.append(
            {
                "kind": "circle" if rng.random() < 0.5 else "rect",
                "color": rng.integers(0, 256, size=3),
                "size": size,
                "pos": rng.uniform([0, 0], [width - size, height - size]),
                "vel": rng.uniform(-3.0, 3.0, size=2) * max(1.0, width / 160) * speed,
            }
        )
    return specs


def render_shot_frames(
    length: int,
    width: int,
    height: int,
    background: Sequence[int],
    seed: int,
    *,
    shapes: int = 3,
    speed: float = 1.0,
) -> list[np.ndarray]:
    """The RGB frames (``height × width × 3`` uint8) of one shot of ``length`` frames, with
    ``shapes`` shapes moving at about ``speed × 3`` pixels per frame (at 160 pixels wide)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = (xx / max(1, width - 1) * 30 - 15 + yy / max(1, height - 1) * 20 - 10)[..., None]
    base = np.clip(np.asarray(background, dtype=np.float32) + ramp, 0, 255)
    base += rng.normal(0, 4, size=base.shape)
    base = np.clip(base, 0, 255).astype(np.uint8)
    specs = _shape_specs(rng, width, height, shapes, speed)
    frames = []
    for _ in range(length):
        img = base.copy()
        for s in specs:
            x, y = s["pos"]
            size = s["size"]
            if s["kind"] == "rect":
                img[int(y) : int(y) + size, int(x) : int(x) + size] = s["color"]
            else:
                r = size / 2
                mask = (xx - (x + r)) ** 2 + (yy - (y + r)) ** 2 <= r * r
                img[mask] = s["color"]
            pos, vel = s["pos"] + s["vel"], s["vel"]
            for axis, limit in ((0, width - size), (1, height - size)):
                if not 0 <= pos[axis] <= limit:
                    vel[axis] = -vel[axis]
                    pos[axis] = min(max(pos[axis], 0), limit)
            s["pos"] = pos
        frames.append(img)
    return frames


def write_video(
    path: Path,
    shot_lengths: Sequence[int] = DEFAULT_SHOTS,
    *,
    width: int = 160,
    height: int = 96,
    fps: int = 24,
    codec: str = "libx264",
    gop: int = 12,
    seed: int = 0,
    options: dict[str, str] | None = None,
    shapes: int = 3,
    speed: float = 1.0,
    first_pts: int = 0,
    flashes: bool = False,
    bframes: int = 0,
) -> list[int]:
    """Write a video of consecutive shots to ``path`` and return the cut frame indices.

    The container follows ``path``'s suffix (``.mp4``, ``.mkv``, ``.avi``…). ``codec`` is a
    PyAV encoder name (``libx264`` or ``mpeg4``); ``gop`` is the key-frame interval, so a
    ``keyframes`` extraction gets ``ceil(total / gop)`` frames. ``options`` go to the
    container (e.g. ``{"movflags": "faststart"}`` puts the MP4 index first, so a truncated
    file still opens). ``shapes`` and ``speed`` make shots busier, for harder detection.
    With ``flashes``, the middle frame of every shot of 20 frames or more is brightened
    strongly (a camera flash: a large change that is not a cut). ``bframes`` (libx264
    only) puts up to that many B-frames between references, so decoding order is not
    display order. Frame ``i`` has the timestamp ``(first_pts + i) / fps`` seconds (a non-zero
    ``first_pts`` makes a stream whose start time is not 0, as cut-out broadcast clips have).
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cuts: list[int] = []
    with av.open(str(path), mode="w", options=options or {}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            # a fixed GOP without scene-cut key frames keeps the key-frame count predictable
            params = f"scenecut=0:bframes={bframes}" if bframes else "scenecut=0"
            stream.codec_context.options = {"preset": "ultrafast", "x264-params": params}
        start = count = 0
        for shot, length in enumerate(shot_lengths):
            if shot:
                cuts.append(start)
            bg = _BACKGROUNDS[shot % len(_BACKGROUNDS)]
            shot_seed = seed * 1000 + shot
            shot_frames = render_shot_frames(
                int(length), width, height, bg, shot_seed, shapes=shapes, speed=speed
            )
            if flashes and length >= 20:
                mid = int(length) // 2
                shot_frames[mid] = (shot_frames[mid] // 3 + 170).astype(shot_frames[mid].dtype)
            for img in shot_frames:
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = first_pts + count
                count += 1
                out.mux(stream.encode(frame))
            start += int(length)
        out.mux(stream.encode(None))
    return cuts


def write_joined(
    path: Path,
    segments: Sequence[tuple[int, int]],
    *,
    gap: float = 0.0,
    width: int = 160,
    height: int = 96,
    gop: int = 12,
) -> list[float]:
    """Write one video joined from clips, as ``ffmpeg -f concat -c copy`` joins do, and
    return every frame's time in seconds, in order.

    ``segments`` are ``(frames, fps)`` pairs: each clip keeps its own frame rate, and the
    timestamps jump by ``gap`` seconds where one clip ends and the next begins (the
    container's timestamps are continuous but not evenly spaced, so a frame's timestamp
    times the average rate is not its position). Each clip is one shot of its own colour.
    """
    from fractions import Fraction

    import av

    path = Path(path)
    tick = 600  # time base 1/600 s holds 24, 25 and 30 fps exactly
    times: list[float] = []
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=segments[0][1])
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, tick)
        stream.codec_context.gop_size = gop
        stream.codec_context.options = {"preset": "ultrafast", "x264-params": "scenecut=0"}
        start = 0.0
        for n, (frames, fps) in enumerate(segments):
            bg = _BACKGROUNDS[n % len(_BACKGROUNDS)]
            for i, img in enumerate(render_shot_frames(frames, width, height, bg, 100 + n)):
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = round((start + i / fps) * tick)
                frame.time_base = Fraction(1, tick)
                times.append(frame.pts / tick)
                out.mux(stream.encode(frame))
            start += frames / fps + gap
        out.mux(stream.encode(None))
    return times


def write_garbage(path: Path, size: int = 4096, seed: int = 0) -> Path:
    """Write ``size`` random bytes to ``path``: a file that is not a video."""
    import numpy as np

    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path

"""A short synthetic cartoon with known shots and characters: the example's source video.

Three characters (``ember``, ``moss``, ``iris``: each a head and a body with its own colours
and shapes) walk across muted, textured backgrounds. Each shot shows one character over a
background of its own, so every cut changes the whole picture. Everything is drawn from a
seeded random generator, so the same params give the same bytes.

Besides the video, the stage writes what a real project would have to label by hand:

- ``truth.json``: the character of every shot, with its frames and times, so the result of
  the clustering stage can be checked against the truth;
- ``groundtruth/images/*.png`` and ``groundtruth/masks/*.png``: extra frames (the same
  characters over backgrounds not in the video) with their exact masks, to train the demo
  segmentation model on.

numpy, Pillow and PyAV (``pip install "pipemake[video]"``) are imported inside the functions.
"""

from __future__ import annotations

import colorsys
import json
import math
from pathlib import Path
from typing import Any

#: name, head colour, body colour, head shape, body shape, hat (all saturated colours: the
#: backgrounds are muted, which is what the demo segmentation model learns to tell apart)
CHARACTERS: tuple[dict[str, Any], ...] = (
    {
        "name": "ember",
        "head": (240, 90, 30),
        "body": (200, 20, 70),
        "head_shape": "circle",
        "body_shape": "rect",
        "hat": False,
    },
    {
        "name": "moss",
        "head": (170, 230, 20),
        "body": (0, 160, 140),
        "head_shape": "square",
        "body_shape": "trapezoid",
        "hat": True,
    },
    {
        "name": "iris",
        "head": (180, 70, 240),
        "body": (30, 90, 235),
        "head_shape": "diamond",
        "body_shape": "dress",
        "hat": False,
    },
)

#: brightness of consecutive backgrounds: neighbours differ a lot, so every cut is clear
_LEVELS = (0.85, 0.42, 0.68, 0.28, 0.92, 0.55)


def make_video(ctx: Any) -> dict[str, Any]:
    """Write ``video`` (H.264 MP4), ``truth`` (JSON) and ``groundtruth`` (frames + masks)."""
    import av
    import numpy as np

    p = ctx.params
    width, height, fps = int(p["width"]), int(p["height"]), int(p["fps"])
    shots, per_shot = int(p["shots"]), int(p["frames_per_shot"])
    rng = np.random.default_rng(int(p["seed"]))
    cast = [i % len(CHARACTERS) for i in range(shots)]
    rng.shuffle(cast)

    records, total = [], shots * per_shot
    with av.open(str(ctx.outputs["video"]), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast", "crf": "20"}
        for shot, char in enumerate(cast):
            background = _background(width, height, rng, _LEVELS[shot % len(_LEVELS)])
            walk = _walk(rng, width, height)
            for i in range(per_shot):
                frame, _ = _compose(background, CHARACTERS[char], walk, i / max(1, per_shot - 1))
                video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
                video_frame.pts = shot * per_shot + i
                container.mux(stream.encode(video_frame))
                ctx.progress(shot * per_shot + i + 1, total)
            start = shot * per_shot
            records.append(
                {
                    "shot": shot,
                    "character": char,
                    "name": CHARACTERS[char]["name"],
                    "first_frame": start,
                    "last_frame": start + per_shot - 1,
                    "start": start / fps,
                    "end": (start + per_shot) / fps,
                }
            )
        container.mux(stream.encode(None))

    truth = {"fps": fps, "frames": total, "characters": [c["name"] for c in CHARACTERS]}
    truth["shots"] = records
    ctx.outputs["truth"].write_text(json.dumps(truth, indent=1) + "\n")
    samples = _write_groundtruth(ctx.outputs["groundtruth"], int(p["train_samples"]), p, rng)
    ctx.log.info(
        "synthetic video: %d shots × %d frames at %dx%d, %d ground-truth frames",
        shots,
        per_shot,
        width,
        height,
        samples,
    )
    return {"frames": total, "shots": shots}


def _write_groundtruth(out: Path, count: int, p: dict[str, Any], rng: Any) -> int:
    """Frames of every character over fresh backgrounds, each with its exact mask."""
    from PIL import Image

    width, height = int(p["width"]), int(p["height"])
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    for n in range(count):
        level = float(rng.uniform(0.25, 0.95))
        background = _background(width, height, rng, level)
        frame, mask = _compose(
            background, CHARACTERS[n % len(CHARACTERS)], _walk(rng, width, height), rng.random()
        )
        Image.fromarray(frame).save(out / "images" / f"{n:04d}.png")
        Image.fromarray(mask).save(out / "masks" / f"{n:04d}.png")
    return count


# drawing ----------------------------------------------------------------------------------
def _background(width: int, height: int, rng: Any, level: float) -> Any:
    """A muted scene: a tinted vertical gradient, a few soft blobs and bands, film grain."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    hue = float(rng.uniform(0, 1))

    def muted(value: float) -> tuple[int, int, int]:
        sat = float(rng.uniform(0.05, 0.22))
        r, g, b = colorsys.hsv_to_rgb(hue + rng.uniform(-0.08, 0.08), sat, min(1.0, value))
        return int(r * 255), int(g * 255), int(b * 255)

    top, bottom = np.array(muted(level + 0.08)), np.array(muted(max(0.1, level - 0.1)))
    ramp = np.linspace(0, 1, height)[:, None, None]
    img = Image.fromarray((top * (1 - ramp) + bottom * ramp).repeat(width, 1).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 7))):
        x, y = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
        w, h = rng.uniform(0.15, 0.5) * width, rng.uniform(0.1, 0.4) * height
        shade = muted(level + rng.uniform(-0.18, 0.18))
        if rng.random() < 0.5:
            draw.ellipse((x, y, x + w, y + h), fill=shade)
        else:
            draw.rectangle((x, y, x + w, y + h * 0.4), fill=shade)
    img = img.filter(ImageFilter.GaussianBlur(radius=max(1.0, width / 160)))
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 3, (height, width, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def _walk(rng: Any, width: int, height: int) -> dict[str, float]:
    """How a character crosses one shot: size, start and end position, bobbing."""
    size = float(rng.uniform(0.5, 0.8)) * height
    span = max(0.0, width - size * 0.7)
    x0, x1 = rng.uniform(0, span), rng.uniform(0, span)
    return {
        "size": size,
        "x0": float(x0),
        "x1": float(x1),
        "y": float(rng.uniform(0.05, 0.95) * max(0.0, height - size)),
        "phase": float(rng.uniform(0, 2 * math.pi)),
    }


def _compose(background: Any, spec: dict[str, Any], walk: dict[str, float], t: float):
    """The frame at time ``t`` (0 to 1) of a walk over ``background``, and its mask."""
    import numpy as np
    from PIL import Image

    swing = math.sin(walk["phase"] + t * 6 * math.pi)
    sprite = _sprite(spec, int(walk["size"]), swing, facing_left=walk["x1"] < walk["x0"])
    x = int(walk["x0"] + (walk["x1"] - walk["x0"]) * t)
    y = int(walk["y"] + 3 * abs(swing))
    height, width = background.shape[:2]
    canvas = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    canvas.paste(sprite, (x, y), sprite)
    layer = np.asarray(canvas)
    alpha = layer[..., 3:].astype(np.float32) / 255
    frame = background * (1 - alpha) + layer[..., :3] * alpha
    mask = np.where(layer[..., 3] >= 128, 255, 0).astype(np.uint8)
    return frame.astype(np.uint8), mask


def _sprite(spec: dict[str, Any], size: int, swing: float, facing_left: bool) -> Any:
    """One character, ``size`` pixels tall (drawn 3× larger, then reduced for soft edges)."""
    from PIL import Image, ImageDraw

    ss = 3
    u = size * ss / 100.0
    img = Image.new("RGBA", (int(70 * u), int(100 * u)), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    head, body = spec["head"] + (255,), spec["body"] + (255,)
    _shape(draw, spec["body_shape"], (20 * u, 40 * u, 50 * u, 78 * u), body)
    for side, direction in ((20, -1), (50, 1)):
        hand = (side * u + direction * 14 * u, (60 + 10 * swing * direction) * u)
        draw.line([(side * u, 46 * u), hand], fill=body, width=int(5 * u))
    for leg, direction in ((29, 1), (41, -1)):
        foot = (leg * u + direction * 6 * swing * u, 98 * u)
        draw.line([(leg * u, 76 * u), foot], fill=head, width=int(5 * u))
    _shape(draw, spec["head_shape"], (21 * u, 8 * u, 49 * u, 40 * u), head)
    for eye in (30, 40):
        draw.ellipse((eye * u - 3 * u, 20 * u, eye * u + 3 * u, 27 * u), fill=(250, 250, 250, 255))
        draw.ellipse((eye * u - 1.5 * u, 22 * u, eye * u + 1.5 * u, 26 * u), fill=(20, 20, 20, 255))
    if spec["hat"]:
        draw.polygon([(23 * u, 10 * u), (35 * u, 0), (47 * u, 10 * u)], fill=body)
    if facing_left:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img.resize((max(1, img.width // ss), max(1, img.height // ss)), Image.Resampling.LANCZOS)


def _shape(draw: Any, shape: str, box: tuple[float, float, float, float], fill: Any) -> None:
    x0, y0, x1, y1 = box
    cx, cy, w = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape in ("square", "rect"):
        draw.rectangle(box, fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif shape == "trapezoid":
        draw.polygon([(x0 + w * 0.2, y0), (x1 - w * 0.2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "dress":
        draw.polygon(
            [(cx - w * 0.2, y0), (cx + w * 0.2, y0), (x1 + w * 0.15, y1), (x0 - w * 0.15, y1)],
            fill=fill,
        )
    else:
        raise ValueError(f"unknown shape {shape!r}")

"""Synthetic character cut-outs with KNOWN identities, for clustering tests and examples.

A "character" is a head and a body, each with its own colour and shape (plus an eye colour
and an optional hat), drawn on a transparent background like the output of a segmentation
stage. Every rendering varies pose (tilt, mirror, arm angle), scale, position, colour
(brightness and hue jitter) and pixel noise, so a clusterer has to find identity through
the variation. The true label of every file is returned, so quality (adjusted Rand index)
can be measured.

Only numpy and Pillow are used, so the end-to-end example can reuse this module.

Typical use::

    labels = write_cutouts(tmp_path / "cutouts", n_characters=4, per_character=15, seed=0)
    # labels == {"char0_000.png": 0, ...}  (paths relative to the directory)
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

__all__ = ["CharacterSpec", "make_characters", "render_character", "write_cutouts"]

HEAD_SHAPES = ("circle", "square", "triangle", "diamond")
BODY_SHAPES = ("rect", "trapezoid", "ellipse", "dress")


@dataclass(frozen=True)
class CharacterSpec:
    """The identity of one synthetic character: colours (RGB 0-255) and shapes."""

    label: int
    head_color: tuple[int, int, int]
    body_color: tuple[int, int, int]
    eye_color: tuple[int, int, int]
    head_shape: str
    body_shape: str
    hat: bool


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def make_characters(n: int, seed: int = 0) -> list[CharacterSpec]:
    """``n`` distinct characters: head and body hues spread around the colour wheel (with
    different saturation/value tiers), shapes cycled so neighbours differ in shape too."""
    import numpy as np

    rng = np.random.default_rng(seed)
    offset = float(rng.uniform(0, 1))
    specs = []
    for i in range(n):
        head_h = offset + i / n
        body_h = head_h + 0.5 + 0.37 * ((i * 7) % n) / max(n, 1)
        tier = i % 3
        specs.append(
            CharacterSpec(
                label=i,
                head_color=_hsv(head_h, (0.9, 0.55, 0.75)[tier], (0.95, 0.9, 0.6)[tier]),
                body_color=_hsv(body_h, (0.8, 0.95, 0.5)[tier], (0.55, 0.85, 0.95)[tier]),
                eye_color=_hsv(head_h + 0.25, 0.2 + 0.6 * (i % 2), 0.15 + 0.8 * (i % 2)),
                head_shape=HEAD_SHAPES[i % len(HEAD_SHAPES)],
                body_shape=BODY_SHAPES[(i // len(HEAD_SHAPES) + i) % len(BODY_SHAPES)],
                hat=bool((i // 2) % 2),
            )
        )
    return specs


def _jitter(color: tuple[int, int, int], rng: np.random.Generator, amount: float) -> tuple:
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in color))
    h += rng.normal(0, 0.015 * amount)
    s = min(1.0, max(0.0, s * (1 + rng.normal(0, 0.06 * amount))))
    v = min(1.0, max(0.0, v * (1 + rng.normal(0, 0.08 * amount))))
    return _hsv(h, s, v)


def _draw_shape(draw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape in ("circle", "ellipse"):
        draw.ellipse(box, fill=fill)
    elif shape in ("square", "rect"):
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif shape == "trapezoid":
        w = x1 - x0
        draw.polygon([(x0 + w * 0.25, y0), (x1 - w * 0.25, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "dress":
        w = x1 - x0
        draw.polygon([(cx - w * 0.15, y0), (cx + w * 0.15, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_character(
    spec: CharacterSpec,
    rng: np.random.Generator,
    size: int = 96,
    *,
    jitter: float = 1.0,
    noise: float = 6.0,
) -> Image.Image:
    """One RGBA cut-out of ``spec`` on a transparent ``size`` × ``size`` canvas, with random
    pose, scale, position, colour jitter (``jitter`` scales it; 0 = none) and Gaussian pixel
    noise of standard deviation ``noise`` (0-255 scale) inside the character."""
    import numpy as np
    from PIL import Image, ImageDraw

    ss = 3  # supersampling for anti-aliased edges
    big = size * ss
    img = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    u = big / 100.0
    head, body = _jitter(spec.head_color, rng, jitter), _jitter(spec.body_color, rng, jitter)
    arm = _jitter(spec.body_color, rng, jitter * 1.5)
    # body, arms and legs (skin-coloured limbs share the head colour)
    _draw_shape(draw, spec.body_shape, (32 * u, 42 * u, 68 * u, 80 * u), body + (255,))
    lift = rng.uniform(-12, 12) * u
    draw.line([(34 * u, 48 * u), (18 * u, 62 * u + lift)], fill=arm + (255,), width=int(5 * u))
    draw.line([(66 * u, 48 * u), (82 * u, 62 * u - lift)], fill=arm + (255,), width=int(5 * u))
    for x in (42, 58):
        stride = rng.uniform(-5, 5) * u
        draw.line([(x * u, 78 * u), (x * u + stride, 96 * u)], fill=head + (255,), width=int(5 * u))
    _draw_shape(draw, spec.head_shape, (36 * u, 12 * u, 64 * u, 42 * u), head + (255,))
    eye = _jitter(spec.eye_color, rng, jitter) + (255,)
    for x in (45, 55):
        draw.ellipse((x * u - 2.5 * u, 24 * u, x * u + 2.5 * u, 29 * u), fill=eye)
    if spec.hat:
        draw.rectangle((38 * u, 4 * u, 62 * u, 13 * u), fill=eye)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = img.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BICUBIC)
    scale = rng.uniform(0.6, 1.0)
    small = img.resize((max(8, int(size * scale)),) * 2, Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    room = size - small.width
    canvas.paste(small, (int(rng.integers(0, room + 1)), int(rng.integers(0, room + 1))))
    arr = np.asarray(canvas).astype(np.float32)
    if noise > 0:
        arr[..., :3] += rng.normal(0, noise, arr[..., :3].shape)
    arr[..., :3] = np.clip(arr[..., :3], 0, 255) * (arr[..., 3:] > 0)
    return Image.fromarray(arr.astype(np.uint8), "RGBA")


def write_cutouts(
    out_dir: Path | str,
    n_characters: int = 4,
    per_character: int = 15,
    seed: int = 0,
    *,
    size: int = 96,
    jitter: float = 1.0,
    noise: float = 6.0,
    subdirs: bool = False,
) -> dict[str, int]:
    """Write ``n_characters`` × ``per_character`` RGBA PNG cut-outs into ``out_dir`` (file
    order shuffled so names do not give identities away) and return {relpath: true label}.

    With ``subdirs`` the files are spread over ``shot_0/``, ``shot_1/``… like per-shot
    outputs of an upstream stage.
    """
    import numpy as np

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    specs = make_characters(n_characters, seed)
    jobs = [spec for spec in specs for _ in range(per_character)]
    order = rng.permutation(len(jobs))
    labels: dict[str, int] = {}
    for index, job in enumerate(order):
        spec = jobs[int(job)]
        img = render_character(spec, rng, size, jitter=jitter, noise=noise)
        rel = f"cut_{index:05d}.png"
        if subdirs:
            rel = f"shot_{index % 3}/{rel}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(out / rel)
        labels[rel] = spec.label
    return labels

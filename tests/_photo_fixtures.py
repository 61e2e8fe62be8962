"""Cut-outs of REAL photographs with known identities, for clustering tests and benchmarks.

An "identity" is one region of a photograph (the pagoda of scikit-learn's ``china.jpg``,
the dahlia of its ``flower.jpg``, …). Every variant of it goes through what a video does to
a character between frames: a slightly different crop and scale, a mirror flip, a tilt of up
to ±15°, brightness ×0.7 to ×1.3. The result is pasted on a transparent canvas with a soft
mask, like the output of a segmentation stage. The true identity of every file is returned,
so quality (adjusted Rand index) can be measured on photographs, not only on drawings.

Only numpy, Pillow and scikit-learn's bundled sample images are used (no download).

Typical use::

    labels = write_photo_cutouts(tmp_path / "cutouts", per_identity=40, seed=0)
    # labels == {"cut_00000.png": 3, ...}  (paths relative to the directory)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

__all__ = ["SKLEARN_REGIONS", "load_sklearn_photos", "photo_cutout", "write_photo_cutouts"]

#: six distinct regions (image name, box left, top, right, bottom) of scikit-learn's sample
#: photographs: the pagoda's roofs, the lake, the trees on the right, the trees bottom left,
#: the dahlia, and the dark leaves beside it
SKLEARN_REGIONS: tuple[tuple[str, tuple[int, int, int, int]], ...] = (
    ("china.jpg", (70, 30, 330, 250)),
    ("china.jpg", (340, 190, 560, 320)),
    ("china.jpg", (450, 130, 640, 420)),
    ("china.jpg", (0, 300, 220, 427)),
    ("flower.jpg", (170, 85, 450, 360)),
    ("flower.jpg", (0, 40, 165, 330)),
)


def load_sklearn_photos() -> dict[str, Image.Image]:
    """scikit-learn's bundled sample photographs (``china.jpg``, ``flower.jpg``) by name."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    return {
        Path(name).name: Image.fromarray(pixels)
        for name, pixels in zip(bunch.filenames, bunch.images, strict=True)
    }


def photo_cutout(
    region: Image.Image,
    rng: np.random.Generator,
    size: int = 128,
    *,
    mask: str = "ellipse",
    rotate: float = 15.0,
    brightness: tuple[float, float] = (0.7, 1.3),
    crop: float = 0.15,
    steps: int = 0,
) -> Image.Image:
    """One RGBA variant of ``region``: a random sub-crop losing up to ``crop`` of each side,
    a mirror flip half of the time, brightness × ``brightness`` range, a tilt of up to
    ± ``rotate`` degrees and a scale of 0.6 to 1.0, pasted on a transparent ``size`` ×
    ``size`` canvas. ``mask`` is the cut-out's outline: ``ellipse`` (a soft-edged blob) or
    ``rect`` (the whole crop, tilted, with transparent corners). With ``steps`` > 1, tilt
    and brightness take only ``steps`` evenly spaced values of their ranges, as a fixed grid
    of augmentations does (variants then come in tight groups)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    def draw(low: float, high: float) -> float:
        if steps > 1:
            return float(np.linspace(low, high, steps)[rng.integers(0, steps)])
        return float(rng.uniform(low, high))

    w, h = region.size
    cw, ch = (int(s * rng.uniform(1.0 - crop, 1.0)) for s in (w, h))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = region.crop((left, top, left + cw, top + ch)).convert("RGB")
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(img).astype(np.float32) * draw(*brightness)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    alpha = Image.new("L", img.size, 0 if mask == "ellipse" else 255)
    if mask == "ellipse":
        ImageDraw.Draw(alpha).ellipse((2, 2, img.width - 3, img.height - 3), fill=255)
        alpha = alpha.filter(ImageFilter.GaussianBlur(2))
    elif mask != "rect":
        raise ValueError(f"unknown mask {mask!r}: use ellipse or rect")
    img.putalpha(alpha)
    img = img.rotate(draw(-rotate, rotate), Image.Resampling.BICUBIC, expand=True)
    scale = rng.uniform(0.6, 1.0) * size / max(img.size)
    img = img.resize(
        (max(8, round(img.width * scale)), max(8, round(img.height * scale))),
        Image.Resampling.LANCZOS,
    )
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    x = int(rng.integers(0, size - img.width + 1))
    y = int(rng.integers(0, size - img.height + 1))
    canvas.alpha_composite(img, (x, y))
    return canvas


def write_photo_cutouts(
    out_dir: Path | str,
    regions: Sequence[tuple[str, tuple[int, int, int, int]]] = SKLEARN_REGIONS,
    per_identity: int = 40,
    seed: int = 0,
    *,
    photos: dict[str, Image.Image] | None = None,
    size: int = 128,
    mask: str = "ellipse",
    steps: int = 0,
) -> dict[str, int]:
    """Write ``per_identity`` RGBA PNG variants of every region (identity = index in
    ``regions``; images from ``photos``, default scikit-learn's samples) into ``out_dir``,
    in shuffled order, and return {relpath: true identity}."""
    import numpy as np

    photos = photos if photos is not None else load_sklearn_photos()
    crops = [photos[name].crop(box) for name, box in regions]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    jobs = [ident for ident in range(len(crops)) for _ in range(per_identity)]
    labels: dict[str, int] = {}
    for index, job in enumerate(rng.permutation(len(jobs))):
        ident = jobs[int(job)]
        rel = f"cut_{index:05d}.png"
        photo_cutout(crops[ident], rng, size, mask=mask, steps=steps).save(out / rel)
        labels[rel] = ident
    return labels

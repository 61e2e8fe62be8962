"""Image helpers for the training_data_prep rule: background colours, fitting a cut-out to the
training resolution (pad, centre-crop, stretch, aspect-ratio buckets), perceptual hashes for
near-duplicate removal, and the deterministic train/validation split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

__all__ = [
    "bucket_sizes",
    "dedup",
    "parse_background",
    "phash",
    "prepare_image",
    "split_validation",
]

_NAMED = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
}
KEEP_ALPHA = ("transparent", "keep", "alpha", "none")


def parse_background(value: str) -> tuple[int, int, int] | None:
    """RGB of a background name (white, black, gray) or ``#rgb``/``#rrggbb``; None for
    transparent (keep alpha). Raises ValueError for anything else."""
    v = value.strip().lower()
    if v in KEEP_ALPHA:
        return None
    if v in _NAMED:
        return _NAMED[v]
    if v.startswith("#") and len(v) in (4, 7):
        digits = v[1:] if len(v) == 7 else "".join(c * 2 for c in v[1:])
        try:
            return tuple(int(digits[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
        except ValueError:
            pass
    raise ValueError(
        f"background {value!r}: use white, black, gray, a #rrggbb colour or transparent"
    )


def bucket_sizes(resolution: int, step: int = 64) -> list[tuple[int, int]]:
    """(width, height) buckets with about ``resolution``² pixels, sides multiples of ``step``
    (8 when the resolution is small), aspect ratios from 1:2 to 2:1."""
    step = step if resolution >= 4 * step else 8
    area = resolution * resolution
    sizes = set()
    w = step
    while w <= 2 * resolution:
        h = max(step, (area // w) // step * step)
        if 0.5 <= w / h <= 2.0:
            sizes.add((w, h))
        w += step
    return sorted(sizes)


def _content(img: Any) -> Any | None:
    box = img.getchannel("A").point(lambda a: 255 if a > 12 else 0).getbbox()
    return None if box is None else img.crop(box)


def prepare_image(
    img: Any,
    resolution: int,
    fit: str,
    buckets: Sequence[tuple[int, int]] | None,
    background: tuple[int, int, int] | None,
    crop_to_content: bool = True,
) -> Any | None:
    """The training image for RGBA cut-out ``img``: cropped to its opaque part, fitted to the
    target size and composited onto ``background`` (RGB), or kept RGBA when it is None.
    Returns None when the cut-out is fully transparent."""
    from PIL import Image, ImageOps

    content = _content(img)
    if content is None:
        return None
    if crop_to_content:
        img = content
    if buckets:
        aspect = img.width / img.height
        size = min(buckets, key=lambda wh: abs(wh[0] / wh[1] - aspect))
    else:
        size = (resolution, resolution)
    resample = Image.Resampling.LANCZOS
    if fit == "stretch":
        out = img.resize(size, resample)
    elif fit == "crop" or buckets:
        out = ImageOps.fit(img, size, resample)
    else:  # pad: fit inside, centred, transparent margins
        inner = ImageOps.contain(img, size, resample)
        out = Image.new("RGBA", size, (0, 0, 0, 0))
        out.paste(inner, ((size[0] - inner.width) // 2, (size[1] - inner.height) // 2))
    if background is None:
        return out
    canvas = Image.new("RGBA", size, background + (255,))
    canvas.alpha_composite(out)
    return canvas.convert("RGB")


def _dct_matrix(n: int) -> Any:
    import numpy as np

    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


HASH_SIDE = 16  # DCT block side: a 256-bit hash (an 8×8 one calls distinct poses duplicates)
HASH_BITS = HASH_SIDE * HASH_SIDE


def phash(img: Any) -> int:
    """256-bit perceptual hash: signs of the 16×16 lowest DCT frequencies of a 64×64 grey
    image (relative to their median), flattened onto white; spots re-encoded or re-scaled
    copies of a frame while telling different poses apart."""
    import numpy as np
    from PIL import Image

    if img.mode == "RGBA":
        flat = Image.new("RGBA", img.size, (255, 255, 255, 255))
        flat.alpha_composite(img)
        img = flat
    n = 4 * HASH_SIDE
    grey = np.asarray(img.convert("L").resize((n, n), Image.Resampling.BILINEAR), float)
    m = _dct_matrix(n)
    low = (m @ grey @ m.T)[:HASH_SIDE, :HASH_SIDE].ravel()
    bits = low > np.median(low[1:])
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def dedup(hashes: Sequence[int], threshold: int) -> list[int | None]:
    """Greedy near-duplicate removal in the given order: for each hash, the index of an
    earlier kept hash within ``threshold`` differing bits (a duplicate of it), or None (kept)."""
    import numpy as np

    words = max(1, -(-max((h.bit_length() for h in hashes), default=1) // 64))
    mask = (1 << 64) - 1
    arr = np.array(
        [[(h >> (64 * w)) & mask for w in range(words)] for h in hashes], dtype=np.uint64
    ).reshape(len(hashes), words)
    kept_idx: list[int] = []
    result: list[int | None] = []
    for i in range(len(hashes)):
        if kept_idx:
            dist = _popcount(arr[kept_idx] ^ arr[i]).sum(axis=1)
            j = int(np.argmin(dist))
            if int(dist[j]) <= threshold:
                result.append(kept_idx[j])
                continue
        kept_idx.append(i)
        result.append(None)
    return result


def _popcount(words: Any) -> Any:
    """Set bits per uint64 (np.bitwise_count needs numpy 2; the fallback unpacks bytes)."""
    import numpy as np

    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    bits = np.unpackbits(words.view(np.uint8).reshape(*words.shape, 8), axis=-1)
    return bits.sum(axis=-1)


def split_validation(keys: Sequence[str], fraction: float, seed: int) -> set[str]:
    """The keys that go to validation: round(len × fraction) of them, chosen by a seeded
    hash of each key, so the split depends only on the seed and the set of keys."""
    count = round(len(keys) * fraction)
    if fraction > 0 and count >= len(keys) and len(keys) > 1:
        count = len(keys) - 1  # keep at least one training image
    ranked = sorted(keys, key=lambda k: hashlib.sha256(f"{seed}\0{k}".encode()).hexdigest())
    return set(ranked[:count])

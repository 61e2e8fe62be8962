"""Images of any mode Pillow opens, as the 8-bit RGB or RGBA the rules work on.

Pillow's ``convert("RGB")`` clips a 16-bit or 32-bit greyscale image (``I;16``, ``I``,
``F``) at 255, so a 16-bit PNG frame turns white and its subject disappears. Here such an
image is scaled into 0-255 by its bit depth first; a palette image with a transparent
colour goes through RGBA, as Pillow asks.
"""

from __future__ import annotations

from typing import Any

__all__ = ["as_rgb", "as_rgba", "eight_bit"]

#: the largest value of a 16-bit sample, and what one 8-bit step is in it
_MAX16, _STEP16 = 65535, 257


def eight_bit(img: Any) -> Any:
    """``img`` with 8-bit samples: 16-bit greyscale (``I;16*``) scaled from 0-65535, 32-bit
    integer or float greyscale (``I``, ``F``) scaled by the range its values use (0-1,
    0-255 or 0-65535; otherwise its own minimum to maximum). Other modes as they are."""
    mode = img.mode
    if not (mode.startswith("I;16") or mode in ("I", "F")):
        return img
    import numpy as np
    from PIL import Image

    values = np.asarray(img).astype(np.float64)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if mode.startswith("I;16") or (lo >= 0 and 255 < hi <= _MAX16):
        scaled = values / _STEP16
    elif mode == "F" and lo >= 0 and hi <= 1:
        scaled = values * 255
    elif lo >= 0 and hi <= 255:
        scaled = values
    else:  # a range of its own (negative, or beyond 16 bits): stretch it to 0-255
        scaled = (values - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(values)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def as_rgb(img: Any) -> Any:
    """``img`` as 8-bit RGB (see :func:`eight_bit`)."""
    img = eight_bit(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")  # a copy even when RGB already: loaded, the file may close


def as_rgba(img: Any) -> Any:
    """``img`` as 8-bit RGBA (see :func:`eight_bit`)."""
    img = eight_bit(img)
    return img.convert("RGBA")  # a copy even when RGBA already: loaded, the file may close

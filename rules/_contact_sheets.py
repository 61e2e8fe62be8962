"""Contact sheets for the clustering rule: a grid of thumbnails per cluster and one overview
with a row per cluster, so a person can check (and name) the clusters at a glance.

Thumbnails are drawn on a light checkerboard so transparent backgrounds stay visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["cluster_sheet", "overview_sheet"]

LABEL_H = 18


def _checker(width: int, height: int, cell: int = 8) -> Any:
    from PIL import Image, ImageDraw

    img = Image.new("RGBA", (width, height), (235, 235, 235, 255))
    draw = ImageDraw.Draw(img)
    for y in range(0, height, cell):
        for x in range((y // cell) % 2 * cell, width, 2 * cell):
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=(205, 205, 205, 255))
    return img


def _thumb(path: Path, size: int) -> Any:
    from PIL import Image

    from pipemake.rules._image_modes import as_rgba

    with Image.open(path) as img:
        img = as_rgba(img)
        img.thumbnail((size, size), Image.Resampling.BILINEAR)
    tile = _checker(size, size)
    tile.alpha_composite(img, ((size - img.width) // 2, (size - img.height) // 2))
    return tile


def _sample(paths: Sequence[Path], limit: int) -> list[Path]:
    """At most ``limit`` paths spread evenly over ``paths`` (which come best-first)."""
    if len(paths) <= limit:
        return list(paths)
    step = len(paths) / limit
    return [paths[int(i * step)] for i in range(limit)]


def cluster_sheet(
    paths: Sequence[Path], title: str, out: Path, *, thumb: int = 96, limit: int = 64
) -> None:
    """Write a PNG grid of (at most ``limit``) thumbnails of ``paths`` titled ``title``."""
    from PIL import Image, ImageDraw

    shown = _sample(paths, limit)
    cols = max(1, min(8, len(shown)))
    rows = max(1, -(-len(shown) // cols))
    sheet = Image.new("RGBA", (cols * thumb, LABEL_H + rows * thumb), (255, 255, 255, 255))
    ImageDraw.Draw(sheet).text((4, 3), f"{title}  ({len(paths)} images)", fill=(0, 0, 0, 255))
    for i, path in enumerate(shown):
        sheet.alpha_composite(
            _thumb(path, thumb), ((i % cols) * thumb, LABEL_H + (i // cols) * thumb)
        )
    sheet.convert("RGB").save(out)


def overview_sheet(
    groups: Sequence[tuple[str, Sequence[Path]]], out: Path, *, thumb: int = 64, per_row: int = 10
) -> None:
    """Write one PNG with a row per (name, paths) group: its name, size and first thumbnails."""
    from PIL import Image, ImageDraw

    label_w = 120
    rows = max(1, len(groups))
    sheet = Image.new("RGBA", (label_w + per_row * thumb, rows * thumb), (255, 255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, (name, paths) in enumerate(groups):
        y = row * thumb
        draw.text((4, y + thumb // 2 - 12), name, fill=(0, 0, 0, 255))
        draw.text((4, y + thumb // 2 + 2), f"{len(paths)} images", fill=(80, 80, 80, 255))
        for i, path in enumerate(_sample(paths, per_row)):
            sheet.alpha_composite(_thumb(path, thumb), (label_w + i * thumb, y))
    sheet.convert("RGB").save(out)

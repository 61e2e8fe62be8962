"""The clustering rule on cut-outs of REAL photographs, with default settings.

Six identities are six regions of scikit-learn's bundled sample photographs (the pagoda,
the lake, two kinds of trees, the dahlia, the leaves). Each is cut out 40 times with a
mirror flip, a tilt of up to ±15°, brightness ×0.7 to ×1.3 and a slightly different crop
and scale, on a transparent background (tests/_photo_fixtures.py). The defaults must find
the six without being told how many there are. The old default (HDBSCAN) found 19 to 25
groups on such sets (ARI 0.35 to 0.45); docs/clustering.md has the figures and the command.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from _photo_fixtures import SKLEARN_REGIONS, load_sklearn_photos, write_photo_cutouts
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from pipemake.rule import Context, Item
from pipemake.rules import _features
from pipemake.rules.clustering import ClusteringRule

pytestmark = pytest.mark.slow  # heavy: models, real photos or whole examples


def _defaults() -> dict:
    ports, problems = ClusteringRule().ports({"input_dir": "in", "output_dir": "out"})
    assert problems == []
    return ports.params


def _cluster(root: Path, src: Path, labels: dict[str, int], caplog) -> tuple[dict, dict]:
    """Map every cut-out (in batches, as the engine does) and reduce with the defaults."""
    rule, params = ClusteringRule(), _defaults()
    ctx = Context(root, {"input_dir": src}, {}, params)
    ctx.state = rule.setup(ctx)
    rels = sorted(labels)
    mapped: dict[str, bytes] = {}
    for start in range(0, len(rels), 64):
        chunk = rels[start : start + 64]
        items = [Item(str(src / rel), rel) for rel in chunk]
        mapped.update(zip(chunk, rule.map_batch(ctx, items), strict=True))
    out = root / "clusters"
    out.mkdir()
    with caplog.at_level(logging.INFO):
        values = rule.reduce(Context(root, {"input_dir": src}, {"output_dir": out}, params), mapped)
    return values, json.loads((out / "clusters.json").read_text())


@pytest.mark.parametrize(
    ("mask", "steps"),
    [
        ("ellipse", 0),  # soft-edged blobs, every tilt and brightness drawn at random
        ("rect", 3),  # whole tilted crops, tilt and brightness from a grid of 3 values each
    ],
)
def test_defaults_find_the_six_photo_identities(tmp_path, caplog, mask, steps):
    src = tmp_path / "cutouts"
    labels = write_photo_cutouts(src, SKLEARN_REGIONS, per_identity=40, mask=mask, steps=steps)
    values, summary = _cluster(tmp_path, src, labels, caplog)
    found = {item["file"]: item["cluster"] for item in summary["items"]}
    rels = sorted(labels)
    ari = adjusted_rand_score([labels[r] for r in rels], [found[r] for r in rels])
    assert ari >= 0.9, f"ARI {ari:.3f}, {values['n_clusters']} clusters"
    assert values["n_clusters"] == 6 and summary["algorithm"] == "auto"
    assert summary["selection"]["k"] == 6 and summary["warnings"] == []
    assert values["n_noise"] <= 0.05 * len(labels)
    assert "auto: 6 clusters" in caplog.text


def _opaque(img: Image.Image, brightness: float) -> Image.Image:
    pixels = np.asarray(img.convert("RGB")).astype(np.float32) * brightness
    out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    out.putalpha(255)
    return out


def test_brightness_moves_the_brightness_block_not_the_colours():
    photos = load_sklearn_photos()
    pagoda, trees, dahlia = (photos[name].crop(box) for name, box in SKLEARN_REGIONS[0:5:2])
    images = [_opaque(pagoda, 1.0), _opaque(pagoda, 0.7), _opaque(pagoda, 1.3)]
    images += [_opaque(trees, 1.0), _opaque(dahlia, 1.0)]
    feats = _features._color_shape_features(images, {"hist_bins": [4, 6], "shape_size": 8}, "cpu")
    color, brightness = feats[:, :144], feats[:, -1]
    nearest_other = min(np.linalg.norm(color[0] - color[i]) for i in (3, 4))
    darker, brighter = (np.linalg.norm(color[0] - color[i]) for i in (1, 2))
    assert darker < 0.2 * nearest_other  # scaled back to the same colours
    assert brighter < nearest_other  # closer, though ×1.3 clips the sky to white
    # ×0.7 in sRGB is about ×0.46 in linear light: log10 ≈ -0.34
    assert brightness[1] - brightness[0] == pytest.approx(-0.34, abs=0.05)
    assert brightness[2] > brightness[0]

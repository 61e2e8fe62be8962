"""Benchmark of the clustering rule: quality (adjusted Rand index against known identities)
on synthetic drawings and on cut-outs of real photographs, and time (features of N
cut-outs, then the reduce).

Run from the repository root:

    .venv/bin/python benchmarks/bench_clustering.py --n 10000 --characters 10
    .venv/bin/python benchmarks/bench_clustering.py --skip-quality --skip-speed \
        --photos /path/to/more/photos --random-sets 16

Drawn cut-outs come from tests/_character_fixtures.py and are cached in --data between
runs; photo cut-outs from tests/_photo_fixtures.py: scikit-learn's sample photographs, plus
every image (and three frames of every video) under ``--photos`` for the random sets.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _character_fixtures import write_cutouts  # noqa: E402
from _photo_fixtures import SKLEARN_REGIONS, load_sklearn_photos, write_photo_cutouts  # noqa: E402

from pipemake.rule import Context, Item  # noqa: E402
from pipemake.rules import _cluster_algos, _features  # noqa: E402
from pipemake.rules.clustering import ClusteringRule  # noqa: E402


def params(**overrides) -> dict:
    """The rule's default params with ``overrides``."""
    ports, problems = ClusteringRule().ports({"input_dir": "i", "output_dir": "o", **overrides})
    assert not problems, problems
    return ports.params


def ari(labels: dict, predicted: list[int], rels: list[str]) -> float:
    """Adjusted Rand index of ``predicted`` (in ``rels`` order) against the true labels."""
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score([labels[r] for r in rels], predicted)


def features(data: Path, rels: list[str], batch: int) -> tuple[dict, float]:
    """Map every cut-out (``map_batch`` in batches of ``batch``); (mapped, seconds)."""
    rule = ClusteringRule()
    ctx = Context(data.parent, {"input_dir": data}, {}, params())
    ctx.state = rule.setup(ctx)
    start = time.perf_counter()
    mapped = {}
    for i in range(0, len(rels), batch):
        chunk = rels[i : i + batch]
        items = [Item(str(data / r), r) for r in chunk]
        mapped.update(zip(chunk, rule.map_batch(ctx, items), strict=True))
    return mapped, time.perf_counter() - start


QUALITY_CASES = [
    # (characters, images per character, seed, colour jitter scale, pixel noise σ)
    (3, 20, 0, 1.0, 6.0),
    (4, 15, 1, 1.0, 6.0),
    (4, 15, 2, 1.0, 6.0),
    (6, 30, 3, 1.0, 6.0),
    (8, 40, 4, 1.0, 6.0),
    (12, 50, 5, 1.0, 6.0),
    (16, 60, 6, 1.0, 6.0),
    (8, 40, 7, 3.0, 20.0),
    (16, 60, 8, 3.0, 20.0),
    (24, 40, 9, 2.0, 12.0),
]


def quality(tmp: Path) -> list[dict]:
    """ARI with default settings (and KMeans/agglomerative given the true count)."""
    rows = []
    for n_chars, per, seed, jitter, noise in QUALITY_CASES:
        data = tmp / f"q{seed}"
        shutil.rmtree(data, ignore_errors=True)
        labels = write_cutouts(data, n_chars, per, seed=seed, jitter=jitter, noise=noise)
        rels = sorted(labels)
        mapped, _ = features(data, rels, 64)
        x = _features_matrix(mapped, rels)
        row = {"characters": n_chars, "images": len(rels), "jitter": jitter, "noise": noise}
        row.update(compare(x, labels, rels, n_chars))
        rows.append(row)
        print(row, flush=True)
    return rows


def compare(x, labels: dict, rels: list[str], n_true: int) -> dict:
    """ARI of the defaults (with clusters found and noise), of HDBSCAN (the old default)
    and of KMeans/agglomerative given the true count."""
    algos = [
        ("default", {}),
        ("hdbscan", {"algorithm": "hdbscan"}),
        ("kmeans", {"algorithm": "kmeans", "n_clusters": n_true}),
        ("agglomerative", {"algorithm": "agglomerative", "n_clusters": n_true}),
    ]
    row: dict = {}
    for name, extra in algos:
        p = params(**extra)
        blocks = _features.feature_blocks(p, model=False)
        result = _cluster_algos.cluster(_cluster_algos.prepare(x, blocks, p), p)
        row[name] = round(ari(labels, result.labels, rels), 3)
        if name in ("default", "hdbscan"):
            row[f"{name}_found"] = result.n_clusters
            row[f"{name}_noise"] = sum(1 for v in result.labels if v < 0)
    return row


def load_photos(folders: list[Path]) -> dict:
    """scikit-learn's sample photographs, every colour image of at least 200 × 200 pixels
    under ``folders`` and the first, middle and last frame of every video there."""
    from PIL import Image

    photos = load_sklearn_photos()
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            suffix = path.suffix.lower()
            if suffix in (".mp4", ".avi", ".mov", ".mkv"):
                import av

                with av.open(str(path)) as video:
                    frames = [f.to_image() for f in video.decode(video=0)]
                for i in sorted({0, len(frames) // 2, len(frames) - 1}):
                    photos[f"{path.name}#{i}"] = frames[i].convert("RGB")
            elif suffix in (".jpg", ".jpeg", ".png"):
                with Image.open(path) as img:
                    if img.mode in ("RGB", "RGBA", "P") and min(img.size) >= 200:
                        photos[str(path)] = img.convert("RGB")
    return photos


def random_regions(photos: dict, rng, n: int = 6) -> list:
    """``n`` regions (30 to 55 % of a side) of random photographs, two regions of one
    photograph overlapping by at most 20 %."""
    names = sorted(photos)
    regions: list = []
    while len(regions) < n:
        name = names[int(rng.integers(len(names)))]
        width, height = photos[name].size
        w, h = (int(side * rng.uniform(0.3, 0.55)) for side in (width, height))
        left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        box = (left, top, left + w, top + h)
        if all(_overlap(box, b) <= 0.2 * w * h for other, b in regions if other == name):
            regions.append((name, box))
    return regions


def _overlap(a: tuple, b: tuple) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def photo_quality(tmp: Path, folders: list[Path], random_sets: int) -> list[dict]:
    """ARI on cut-outs of real photographs: six regions of scikit-learn's sample photographs
    (the test set of tests/test_clustering_photos.py and variants), then ``random_sets``
    sets of six random regions of all photographs found (random masks, augmentation grids
    and sizes)."""
    import numpy as np

    photos = load_photos(folders)
    cases = [
        ("sklearn, ellipse", SKLEARN_REGIONS, "ellipse", 0, 40, 0),
        ("sklearn, rect, grid 3", SKLEARN_REGIONS, "rect", 3, 40, 0),
        ("sklearn, ellipse, grid 3", SKLEARN_REGIONS, "ellipse", 3, 40, 1),
        ("sklearn, rect, grid 5", SKLEARN_REGIONS, "rect", 5, 40, 2),
    ]
    for i in range(random_sets):
        rng = np.random.default_rng(1000 + i)
        regions = random_regions(photos, rng)
        mask = ("ellipse", "rect")[int(rng.integers(2))]
        steps = (0, 3, 5)[int(rng.integers(3))]
        cases.append((f"random {i}", regions, mask, steps, int(rng.integers(25, 51)), i))
    rows = []
    for name, regions, mask, steps, per, seed in cases:
        data = tmp / name.replace(", ", "_").replace(" ", "_")
        shutil.rmtree(data, ignore_errors=True)
        labels = write_photo_cutouts(
            data, regions, per, seed, photos=photos, mask=mask, steps=steps
        )
        rels = sorted(labels)
        mapped, _ = features(data, rels, 64)
        row = {"set": name, "mask": mask, "grid": steps, "images": len(rels)}
        row.update(compare(_features_matrix(mapped, rels), labels, rels, len(regions)))
        if name.startswith("random"):
            row["regions"] = [f"{Path(n).name} {box}" for n, box in regions]
        rows.append(row)
        print(row, flush=True)
    return rows


def _features_matrix(mapped: dict, rels: list[str]):
    import numpy as np

    return np.stack([_features.decode(mapped[r]) for r in rels])


def timed(fn):
    """(result, seconds) of ``fn()``."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def speed(data: Path, n: int, n_chars: int, out_root: Path) -> dict:
    """Time features and reduce for ``n`` cut-outs of ``n_chars`` characters."""
    marker = data / "labels.json"
    if not marker.exists():
        shutil.rmtree(data, ignore_errors=True)
        (labels, secs) = timed(lambda: write_cutouts(data, n_chars, n // n_chars, seed=42))
        marker.write_text(json.dumps(labels))
        print(f"generated {len(labels)} cut-outs in {secs:.1f} s", flush=True)
    labels = json.loads(marker.read_text())
    rels = sorted(labels)
    report: dict = {"images": len(rels), "characters": n_chars}
    mapped, report["features_s"] = features(data, rels, 64)
    print(f"features: {report['features_s']:.1f} s", flush=True)
    x = _features_matrix(mapped, rels)
    report["dims"] = int(x.shape[1])
    variants = [
        ("auto (defaults: PCA 32)", {}),
        ("hdbscan (PCA 32)", {"algorithm": "hdbscan"}),
        ("hdbscan, no PCA (221 dims)", {"algorithm": "hdbscan", "pca_dims": 0}),
        ("kmeans k=true", {"algorithm": "kmeans", "n_clusters": n_chars}),
        ("agglomerative k=true", {"algorithm": "agglomerative", "n_clusters": n_chars}),
    ]
    for name, extra in variants:
        p = params(**extra)
        blocks = _features.feature_blocks(p, model=False)
        result, secs = timed(
            lambda p=p, b=blocks: _cluster_algos.cluster(_cluster_algos.prepare(x, b, p), p)
        )
        report[name] = {
            "seconds": round(secs, 2),
            "ari": round(ari(labels, result.labels, rels), 3),
            "clusters": result.n_clusters,
        }
        print(name, report[name], flush=True)
    out = out_root / "reduce_out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    ctx = Context(data.parent, {"input_dir": data}, {"output_dir": out}, params())
    values, secs = timed(lambda: ClusteringRule().reduce(ctx, mapped))
    report["full reduce (copies, clusters.json, sheets)"] = {
        "seconds": round(secs, 2),
        "clusters": values["n_clusters"],
    }
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return report


def main() -> None:
    """Parse arguments, run the quality and speed parts, print JSON."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=10000, help="cut-outs for the speed part")
    ap.add_argument("--characters", type=int, default=10)
    ap.add_argument("--data", type=Path, default=Path("/tmp/pipemake-bench-clustering"))
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-photos", action="store_true")
    ap.add_argument(
        "--photos", type=Path, action="append", default=[], help="more photographs/videos"
    )
    ap.add_argument("--random-sets", type=int, default=8, help="sets of random regions")
    args = ap.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    result = {}
    if not args.skip_quality:
        result["quality"] = quality(args.data / "quality")
    if not args.skip_photos:
        result["photos"] = photo_quality(args.data / "photos", args.photos, args.random_sets)
    if not args.skip_speed:
        result["speed"] = speed(
            args.data / f"speed_{args.n}_{args.characters}", args.n, args.characters, args.data
        )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

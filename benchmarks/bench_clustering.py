"""Benchmark of the clustering rule: quality (adjusted Rand index against known identities)
and time (features of N cut-outs, then the reduce) on synthetic cut-outs.

Run from the repository root:

    .venv/bin/python benchmarks/bench_clustering.py --n 10000 --characters 10

Cut-outs come from tests/_character_fixtures.py and are cached in --data between runs.
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
        algos = [
            ("hdbscan", {}),
            ("kmeans", {"algorithm": "kmeans", "n_clusters": n_chars}),
            ("agglomerative", {"algorithm": "agglomerative", "n_clusters": n_chars}),
        ]
        for name, extra in algos:
            p = params(**extra)
            blocks = _features.feature_blocks(p, model=False)
            result = _cluster_algos.cluster(_cluster_algos.prepare(x, blocks, p), p)
            row[name] = round(ari(labels, result.labels, rels), 3)
            if name == "hdbscan":
                row["found"] = result.n_clusters
                row["noise_items"] = sum(1 for v in result.labels if v < 0)
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
        ("hdbscan (defaults: PCA 32)", {}),
        ("hdbscan, no PCA (220 dims)", {"pca_dims": 0}),
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
    args = ap.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    result = {}
    if not args.skip_quality:
        result["quality"] = quality(args.data / "quality")
    if not args.skip_speed:
        result["speed"] = speed(
            args.data / f"speed_{args.n}_{args.characters}", args.n, args.characters, args.data
        )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

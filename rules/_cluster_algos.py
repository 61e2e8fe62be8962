"""The reduce side of the clustering rule: weight, normalise, reduce (PCA) and cluster feature
vectors with scikit-learn and SciPy, after checking that the chosen algorithm fits in memory.

The default, ``auto``, needs no number of characters: it builds a Ward tree (on at most
:data:`SAMPLE` vectors), cuts it at every k from 2 to ``max_clusters`` and keeps the cut
whose clusters are best separated (the highest mean silhouette, measured with cosine
distances, where members of groups smaller than ``min_cluster_size`` count as unplaced).

Memory is estimated before any algorithm is called, so a size that cannot fit meets a
clear :class:`RuleError` instead of the kernel's out-of-memory killer: brute-force HDBSCAN
and agglomerative clustering hold an n × n float64 distance matrix (n² × 8 bytes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipemake.rule import RuleError

__all__ = [
    "SAMPLE",
    "Assignment",
    "Selection",
    "available_memory",
    "choose_k",
    "cluster",
    "estimate_memory",
    "prepare",
]

#: most vectors ``auto`` builds its tree and silhouettes on; the rest join the nearest centre
SAMPLE = 2000


@dataclass
class Selection:
    """How ``auto`` chose the number of clusters: the chosen ``k`` and the mean silhouette of
    every cut it tried (k → score; higher is better separated), on ``sample`` vectors."""

    k: int
    scores: dict[int, float]
    sample: int


@dataclass
class Assignment:
    """Per item (in input order): cluster index (-1 = noise, clusters numbered by size, the
    largest first), membership probability and distance to its cluster's centre; for
    ``auto``, how the number of clusters was chosen."""

    labels: list[int]
    probabilities: list[float]
    distances: list[float | None]
    n_clusters: int
    selection: Selection | None = None


def prepare(features: Any, blocks: Sequence[tuple[str, int]], params: Mapping[str, Any]) -> Any:
    """Weighted, optionally L2-normalised and PCA-reduced features (n × d float32)."""
    import numpy as np

    from pipemake.rules._features import DEFAULT_WEIGHTS

    x = np.asarray(features, dtype=np.float32)
    weights = {**DEFAULT_WEIGHTS, **(params.get("weights") or {})}
    if sum(size for _, size in blocks) == x.shape[1]:
        parts, start = [], 0
        for name, size in blocks:
            parts.append(x[:, start : start + size] * float(weights.get(name, 1.0)))
            start += size
        x = np.concatenate(parts, axis=1)
    if params.get("normalize", True):
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    dims = int(params.get("pca_dims") or 0)
    if dims and x.shape[1] > dims and x.shape[0] > dims:
        from sklearn.decomposition import PCA

        x = PCA(n_components=dims, random_state=int(params.get("seed", 0))).fit_transform(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def available_memory() -> int:
    """Bytes this process may still allocate: MemAvailable, capped by a cgroup limit."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            room = int(limit) - usage
            avail = room if avail is None else min(avail, room)
    return avail if avail is not None else 8 << 30


def estimate_memory(algorithm: str, n: int, d: int, params: Mapping[str, Any]) -> tuple[int, str]:
    """(bytes, why) the clustering call needs, roughly, for ``n`` vectors of ``d`` dims."""
    if algorithm == "agglomerative":
        return n * n * 8, "agglomerative clustering holds an n × n distance matrix"
    if algorithm == "auto":
        m = min(n, SAMPLE)
        return 3 * m * m * 8 + n * (d + 64) * 8, "a Ward tree and distances of the sample"
    if algorithm == "hdbscan":
        if params.get("hdbscan_algorithm") == "brute":
            return 2 * n * n * 8, "brute-force HDBSCAN holds n × n distance matrices"
        k = int(params.get("min_samples") or params.get("min_cluster_size") or 5)
        return n * (d + 4 * k + 64) * 8 * 4, "HDBSCAN's trees and neighbour lists"
    k = int(params.get("n_clusters") or 1)
    return n * (d + 3 * k) * 8 * 4, "KMeans distances to the centres"


def _check_memory(algorithm: str, x: Any, params: Mapping[str, Any]) -> None:
    need, why = estimate_memory(algorithm, x.shape[0], x.shape[1], params)
    cap_gb = float(params.get("max_memory_gb") or 0)
    budget = int(cap_gb * (1 << 30)) if cap_gb > 0 else int(available_memory() * 0.8)
    if need > budget:
        gb = 1 << 30
        raise RuleError(
            f"clustering {x.shape[0]} cut-outs with {algorithm} needs about {need / gb:.1f} GB "
            f"({why}) but only {budget / gb:.1f} GB is available: use algorithm: auto, "
            "hdbscan (with hdbscan_algorithm: auto) or kmeans, cluster fewer cut-outs, or raise "
            "max_memory_gb if you know more memory is free"
        )


def cluster(x: Any, params: Mapping[str, Any]) -> Assignment:
    """Cluster the prepared vectors ``x`` with the algorithm ``params`` name."""
    import numpy as np

    algorithm = params.get("algorithm", "auto")
    n = x.shape[0]
    if n == 0:
        return Assignment([], [], [], 0)
    _check_memory(algorithm, x, params)
    probs = None
    selection = None
    if algorithm == "auto":
        labels, selection = _auto(x, params)
    elif algorithm == "hdbscan":
        labels, probs = _hdbscan(x, params)
    elif algorithm == "kmeans":
        labels = _kmeans(x, params)
    else:  # agglomerative: the param's choices allow no other
        labels = _agglomerative(x, params)
    labels = np.asarray(labels)
    factor = float(params.get("outlier_factor") or 0.0)
    if factor > 0:
        labels = _trim_outliers(x, labels, factor)
        if probs is not None:
            probs = np.where(labels >= 0, probs, 0.0)
    result = _assign(x, _relabel_by_size(labels), probs)
    result.selection = selection
    return result


def _trim_outliers(x: Any, labels: Any, factor: float) -> Any:
    """Labels with members farther than ``factor`` × their cluster's median distance to its
    centre turned into noise (-1): a failed cut-out that HDBSCAN attached to the nearest
    character, or that KMeans had to put somewhere."""
    import numpy as np

    labels = labels.copy()
    for c in [int(v) for v in np.unique(labels) if v >= 0]:
        idx = np.flatnonzero(labels == c)
        if len(idx) < 3:
            continue
        d = np.linalg.norm(x[idx] - x[idx].mean(0), axis=1)
        median = float(np.median(d))
        if median > 0:
            labels[idx[d > factor * median]] = -1
    return labels


def _too_few(n: int, k: int, what: str) -> RuleError:
    return RuleError(f"{what} {k} needs at least {k} cut-outs, got {n}: lower {what}")


def _hdbscan(x: Any, params: Mapping[str, Any]) -> tuple[Any, Any]:
    import numpy as np
    from sklearn.cluster import HDBSCAN

    n = x.shape[0]
    size = int(params.get("min_cluster_size", 5))
    samples = int(params.get("min_samples", 0)) or None
    if n < 2 or n < size or n < (samples or 0):
        return np.full(n, -1), np.zeros(n)  # too few cut-outs for one cluster
    model = HDBSCAN(
        min_cluster_size=size,
        min_samples=samples,
        cluster_selection_epsilon=float(params.get("cluster_selection_epsilon") or 0.0),
        algorithm=params.get("hdbscan_algorithm") or "auto",
        allow_single_cluster=bool(params.get("allow_single_cluster", False)),
        copy=True,
    )
    labels = model.fit_predict(x.astype(np.float64))
    return labels, model.probabilities_


def _auto(x: Any, params: Mapping[str, Any]) -> tuple[Any, Selection | None]:
    """Labels from a Ward tree cut at ``n_clusters`` or, when that is 0, at the best
    separated k (:func:`choose_k`); groups under ``min_cluster_size`` become noise."""
    import numpy as np
    from scipy.cluster.hierarchy import fcluster, linkage

    n = x.shape[0]
    size = int(params.get("min_cluster_size", 5))
    fixed = int(params.get("n_clusters", 0))
    if fixed and n < fixed:
        raise _too_few(n, fixed, "n_clusters")
    if not fixed and n < size:
        return np.full(n, -1), None
    pick = np.arange(n)
    if n > SAMPLE:
        rng = np.random.default_rng(int(params.get("seed", 0)))
        pick = np.sort(rng.choice(n, SAMPLE, replace=False))
    sample = np.asarray(x[pick], dtype=np.float64)
    tree = linkage(sample, "ward") if len(sample) > 1 else None
    selection = None
    if fixed:
        k = fixed
    else:
        selection = choose_k(sample, tree, size, int(params.get("max_clusters", 50)))
        k = selection.k
    cut = np.zeros(len(sample), dtype=int) if tree is None else fcluster(tree, k, "maxclust") - 1
    if len(pick) < n:
        centres = np.stack([sample[cut == c].mean(0) for c in np.unique(cut)])
        cut = np.unique(cut)[_nearest(x, centres)]
    if not fixed:
        sizes = np.bincount(cut)
        cut = np.where(sizes[cut] >= size, cut, -1)
    return cut, selection


def choose_k(sample: Any, tree: Any, size: int, max_clusters: int) -> Selection:
    """The number of clusters whose cut of the Ward ``tree`` is best separated: the highest
    mean cosine silhouette over all of ``sample``, where members of groups smaller than
    ``size`` count 0 (unplaced, not a character). One cluster when no cut has two groups of
    ``size``."""
    import numpy as np
    from scipy.cluster.hierarchy import fcluster
    from sklearn.metrics import pairwise_distances, silhouette_samples

    n = len(sample)
    top = min(max_clusters, n // size)
    if tree is None or top < 2:
        return Selection(1, {}, n)
    dist = pairwise_distances(sample, metric="cosine")
    scores: dict[int, float] = {}
    for k in range(2, top + 1):
        cut = fcluster(tree, k, "maxclust")
        sizes = np.bincount(cut)
        big = sizes[cut] >= size
        if len(np.unique(cut[big])) < 2:
            continue
        sil = silhouette_samples(dist[np.ix_(big, big)], cut[big], metric="precomputed")
        scores[k] = round(float(sil.sum() / n), 4)
    if not scores:
        return Selection(1, {}, n)
    best = max(scores, key=lambda k: (scores[k], -k))
    return Selection(best, scores, n)


def _nearest(x: Any, centres: Any) -> Any:
    """Index of the nearest centre of every row of ``x``, in chunks (bounded memory)."""
    import numpy as np

    out = np.empty(x.shape[0], dtype=int)
    c2 = (centres * centres).sum(1)
    for start in range(0, x.shape[0], 4096):
        part = np.asarray(x[start : start + 4096], dtype=np.float64)
        out[start : start + len(part)] = np.argmin(c2[None, :] - 2 * part @ centres.T, axis=1)
    return out


def _kmeans(x: Any, params: Mapping[str, Any]) -> Any:
    from sklearn.cluster import KMeans

    k = int(params["n_clusters"])  # >= 1: the rule's check asks for it with kmeans
    if x.shape[0] < k:
        raise _too_few(x.shape[0], k, "n_clusters")
    seed = int(params.get("seed", 0))
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)


def _agglomerative(x: Any, params: Mapping[str, Any]) -> Any:
    import numpy as np
    from sklearn.cluster import AgglomerativeClustering

    k = int(params.get("n_clusters", 0))
    if x.shape[0] < 2:
        return np.zeros(x.shape[0], dtype=int)
    if k:
        if x.shape[0] < k:
            raise _too_few(x.shape[0], k, "n_clusters")
        model = AgglomerativeClustering(n_clusters=k, linkage=params.get("linkage", "ward"))
    else:  # a distance_threshold > 0: the rule's check asks for one without n_clusters
        model = AgglomerativeClustering(
            n_clusters=None,
            distance_threshold=float(params["distance_threshold"]),
            linkage=params.get("linkage", "ward"),
        )
    return model.fit_predict(x)


def _relabel_by_size(labels: Any) -> Any:
    """Renumber clusters 0, 1, … by decreasing size (ties: first occurrence); noise stays -1."""
    import numpy as np

    ids = [int(i) for i in np.unique(labels) if i >= 0]
    first = {i: int(np.argmax(labels == i)) for i in ids}
    order = sorted(ids, key=lambda i: (-int((labels == i).sum()), first[i]))
    mapping = {old: new for new, old in enumerate(order)}
    return np.array([mapping.get(int(v), -1) for v in labels], dtype=int)


def _assign(x: Any, labels: Any, probs: Any) -> Assignment:
    import numpy as np

    k = int(labels.max()) + 1 if (labels >= 0).any() else 0
    centres = np.stack([x[labels == c].mean(0) for c in range(k)]) if k else None
    dist: list[float | None] = [None] * len(labels)
    if centres is not None:
        sq = (x * x).sum(1)[:, None] - 2 * x @ centres.T + (centres * centres).sum(1)[None, :]
        d_all = np.sqrt(np.maximum(sq, 0.0))
        own = labels >= 0
        for i in np.flatnonzero(own):
            dist[i] = float(d_all[i, labels[i]])
        if probs is None:  # soft membership from distances to all centres
            var = max(float(np.mean(d_all[own, labels[own]] ** 2)), 1e-12)
            logits = -(d_all**2) / (2 * var)
            soft = np.exp(logits - logits.max(1, keepdims=True))
            soft /= soft.sum(1, keepdims=True)
            probs = np.where(own, soft[np.arange(len(labels)), np.maximum(labels, 0)], 0.0)
    if probs is None:
        probs = np.zeros(len(labels))
    return Assignment(
        labels=[int(v) for v in labels],
        probabilities=[round(float(p), 4) for p in probs],
        distances=[None if v is None else round(v, 5) for v in dist],
        n_clusters=k,
    )

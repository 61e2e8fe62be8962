"""The ``clustering`` rule: group character cut-outs by identity.

A map-reduce rule. The map step turns each cut-out into a feature vector (cached per item by
the engine, so re-clustering with new params never recomputes features); the reduce step
clusters all vectors (by default ``auto``: a Ward tree cut where the clusters are best
separated, which finds the number of characters itself; or HDBSCAN, KMeans, agglomerative),
sets outliers aside as noise and writes one directory per cluster, ``clusters.json`` and
contact sheets. See docs/clustering.md.
"""

from __future__ import annotations

import io
import json
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pipemake.rule import Context, Input, Item, Output, Param, Ports, Rule, RuleError

from ._ranges import Range, in_order, is_number, range_problems

__all__ = ["RANGES", "ClusteringRule"]

IMAGE_PATTERN = "*.png|*.jpg|*.jpeg|*.webp"
NOISE = "noise"
SHEETS = "contact_sheets"

_REDUCE = (
    "algorithm",
    "max_clusters",
    "min_cluster_size",
    "min_samples",
    "cluster_selection_epsilon",
    "hdbscan_algorithm",
    "allow_single_cluster",
    "n_clusters",
    "distance_threshold",
    "linkage",
    "outlier_factor",
    "pca_dims",
    "normalize",
    "weights",
    "seed",
    "max_memory_gb",
    "sheet_thumb",
    "sheet_max",
)


#: the valid values of the numeric params, checked before anything runs
RANGES: Mapping[str, Range] = {
    "shape_size": Range(1, 64, "side of the downsampled silhouette, at most the 64-pixel canvas"),
    "model_input_size": Range(8, 1024, "the square input side of model_path, in pixels"),
    "max_clusters": Range(2, None, "the most characters auto looks for"),
    "min_cluster_size": Range(2, None, "the smallest group called a cluster"),
    "min_samples": Range(0, None, "HDBSCAN's neighbourhood size; 0: min_cluster_size"),
    "cluster_selection_epsilon": Range(0, None, "HDBSCAN merges clusters closer than this"),
    "n_clusters": Range(0, None, "the number of characters; 0: auto finds it"),
    "distance_threshold": Range(0, None, "agglomerative's largest merge distance; 0: none"),
    "outlier_factor": Range(0, None, "noise beyond this × the median distance; 0: no trim"),
    "pca_dims": Range(0, None, "dimensions PCA keeps; 0: no PCA"),
    "seed": Range(0, 2**32 - 1, "the random seed of PCA, KMeans and auto's sample"),
    "max_memory_gb": Range(0, None, "the memory budget in GB; 0: 80% of what is free"),
    "sheet_thumb": Range(8, 1024, "contact sheet thumbnail side in pixels"),
    "sheet_max": Range(1, None, "the most thumbnails on one cluster's contact sheet"),
}
#: the largest number of Lab histogram bins per axis (the colour block has L × ab² dims)
MAX_BINS = 16
WEIGHT_BLOCKS = ("color", "layout", "shape", "brightness", "model")


class ClusteringRule(Rule):
    """Cluster cut-outs (RGBA images) by character identity into ``cluster_NNN/`` folders."""

    name = "clustering"
    #: its params are checked at validate even while input_dir is an upstream's value
    checks_pending = True
    version = "2"
    inputs: ClassVar[Mapping[str, Input]] = {
        "input_dir": Input(kind="dir", help="cut-outs (RGBA images), e.g. a segmentation output"),
        "model_path": Input(
            kind="file",
            required=False,
            help="optional image encoder: TorchScript (.pt) or ONNX (.onnx) file",
        ),
    }
    outputs: ClassVar[Mapping[str, Output]] = {
        "output_dir": Output(kind="dir", help="cluster_NNN/ and noise/ folders, clusters.json"),
    }
    params: ClassVar[Mapping[str, Param]] = {
        # map (feature) params: changing these recomputes features
        "features": Param("str", "auto", ("auto", "color_shape", "model"), "feature extractor"),
        "hist_bins": Param("list", [4, 6], help="Lab histogram bins: [L, a/b]"),
        "shape_size": Param("int", 8, help="side of the downsampled silhouette"),
        "model_input_size": Param("int", 224, help="square input side of model_path"),
        "model_mean": Param("list", [0.485, 0.456, 0.406], help="per-channel input mean"),
        "model_std": Param("list", [0.229, 0.224, 0.225], help="per-channel input std"),
        # reduce params: changing these reruns only the clustering
        "algorithm": Param("str", "auto", ("auto", "hdbscan", "kmeans", "agglomerative")),
        "max_clusters": Param("int", 50, help="auto: most characters it looks for"),
        "min_cluster_size": Param("int", 5, help="auto, HDBSCAN: smallest group called a cluster"),
        "min_samples": Param("int", 2, help="HDBSCAN: neighbourhood size (0: min_cluster_size)"),
        "cluster_selection_epsilon": Param("float", 0.0, help="HDBSCAN: merge closer clusters"),
        "hdbscan_algorithm": Param("str", "auto", ("auto", "brute", "kd_tree", "ball_tree")),
        "allow_single_cluster": Param("bool", False, help="HDBSCAN: one character is a result"),
        "n_clusters": Param("int", 0, help="number of characters (auto: 0 finds it)"),
        "distance_threshold": Param("float", 0.0, help="agglomerative: merge distance limit"),
        "linkage": Param("str", "ward", ("ward", "average", "complete", "single")),
        "outlier_factor": Param(
            "float", 3.0, help="noise: farther than this × the median distance to the centre"
        ),
        "pca_dims": Param("int", 32, help="PCA dimensions before clustering (0: none)"),
        "normalize": Param("bool", True, help="L2-normalise feature vectors"),
        "weights": Param("dict", {"color": 1.0, "layout": 0.2, "shape": 0.5, "brightness": 0.2}),
        "seed": Param("int", 0, help="random seed of PCA and KMeans"),
        "max_memory_gb": Param("float", 0.0, help="memory budget (0: 80% of what is free)"),
        "sheet_thumb": Param("int", 96, help="contact sheet thumbnail side in pixels"),
        "sheet_max": Param("int", 64, help="most thumbnails on one cluster's contact sheet"),
    }
    values: ClassVar[Sequence[str]] = ("cluster_dirs", "n_clusters", "n_noise")
    path_values: ClassVar[Mapping[str, str]] = {"cluster_dirs": "output_dir"}
    foreach_pattern: ClassVar[str | None] = IMAGE_PATTERN
    default_foreach: ClassVar[str | None] = "input_dir"
    foreach_inputs: ClassVar[Sequence[str]] = ("input_dir",)
    aliases: ClassVar[Mapping[str, str]] = {"character_dir": "input_dir"}
    requires: ClassVar[Mapping[str, str]] = {
        "numpy": "pipemake[cluster]",
        "PIL": "pipemake[cluster]",
        "sklearn": "pipemake[cluster]",
        "torch": "pipemake[cluster]",
    }
    map_reduce: ClassVar[bool] = True
    reduce_params: ClassVar[Sequence[str]] = _REDUCE
    #: items per feature batch when the engine calls :meth:`map_batch`
    map_batch_size: ClassVar[int] = 64

    def __init__(self) -> None:
        self._states: dict[tuple, Any] = {}

    def check(self, ports: Ports) -> list[tuple[str, str]]:
        """Every param's range, the lists and weights, and what the algorithm needs, before
        anything runs (and again at build time for a value an upstream stage computes)."""
        p = ports.params
        problems = range_problems(p, self.params, RANGES) + _list_problems(p)
        if p["features"] == "model" and not ports.inputs.get("model_path"):
            problems.append(
                (
                    "features",
                    "features: model needs model_path, an image encoder (.pt, .pt2 or .onnx): "
                    "set model_path, or use features: auto",
                )
            )
        if not {key for key, _ in problems} & {"n_clusters", "distance_threshold"}:
            problems += _algorithm_problems(p)
        return in_order(problems, self.params)

    # map -------------------------------------------------------------------------------
    def setup(self, ctx: Context) -> Any:
        """Pick the device and load the model once per worker."""
        from pipemake.rules._features import load_extractor

        model = ctx.inputs.get("model_path")
        return load_extractor(ctx.params, Path(model) if model else None, _wants_gpu(ctx))

    def _state(self, ctx: Context) -> Any:
        if ctx.state is not None:
            return ctx.state
        model = ctx.inputs.get("model_path")
        key = (str(model), ctx.params["features"], _wants_gpu(ctx))
        if key not in self._states:
            self._states[key] = self.setup(ctx)
        return self._states[key]

    def map_item(self, ctx: Context, item: Item) -> bytes:
        """One cut-out's feature vector, as .npy bytes (``ctx.inputs["input_dir"]`` is the
        item's path here)."""
        return self._features(ctx, [Path(ctx.inputs["input_dir"])])[0]

    def map_batch(self, ctx: Context, items: Sequence[Item]) -> list[bytes]:
        """Feature vectors of several cut-outs in one torch batch, as .npy bytes (items are
        located by ``item.path``, relative to the project root)."""
        return self._features(ctx, [_item_path(ctx, item) for item in items])

    def _features(self, ctx: Context, paths: list[Path]) -> list[bytes]:
        from pipemake.rules._features import encode, extract_features

        features = extract_features(paths, ctx.params, self._state(ctx))
        return [encode(row) for row in features]

    # reduce ----------------------------------------------------------------------------
    def reduce(self, ctx: Context, mapped: Mapping[str, Any]) -> dict[str, Any]:
        """Cluster all feature vectors; write cluster folders, clusters.json, contact sheets."""
        import numpy as np

        from pipemake.rules._cluster_algos import cluster, prepare
        from pipemake.rules._features import feature_blocks

        src = Path(ctx.inputs["input_dir"])
        rels = sorted(mapped)
        if not rels:
            raise RuleError(
                f"no cut-outs in {src}: none of its files matched the stage's foreach pattern "
                f"(by default {IMAGE_PATTERN}); check the input_dir, or the pattern"
            )
        use_model = ctx.params["features"] == "model" or (
            ctx.params["features"] == "auto" and ctx.inputs.get("model_path") is not None
        )
        blocks = feature_blocks(ctx.params, use_model)
        vectors = self._vectors(ctx, src, rels, mapped, sum(n for _, n in blocks))
        dims = {v.shape for v in vectors}
        if len(dims) != 1:
            raise RuleError(f"feature vectors differ in shape {sorted(dims)}: rebuild with -B")
        x = prepare(np.stack(vectors), blocks, ctx.params)
        ctx.log.info(
            "clustering %d cut-outs (%d dims) with %s",
            len(rels),
            x.shape[1],
            ctx.params["algorithm"],
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = cluster(x, ctx.params)
        for text in dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught):
            ctx.log.warning("clustering: %s", " ".join(text.split()))
        _log_selection(ctx, result)
        warning = _empty_warning(
            ctx.params, len(rels), result.n_clusters, result.labels.count(-1)
        ) or _one_group_warning(ctx.params, len(rels), result.selection)
        if warning:
            ctx.log.warning("%s", warning)
        names = [NOISE if c < 0 else f"cluster_{c:03d}" for c in result.labels]
        return self._write(ctx, src, rels, names, result, [warning] if warning else [])

    def _vectors(
        self, ctx: Context, src: Path, rels: list[str], mapped: Mapping[str, Any], dim: int
    ) -> list[Any]:
        """The feature vector of each of ``rels``. The cached ones come from the store, which
        may be shared and written by anyone: one that is not what :meth:`map_item` writes
        (another dtype, an object array, a shape that is not ``dim`` long or that claims
        more bytes than it holds, numbers that are not finite) is computed again here,
        said in the log, rather than failing the stage or being trusted."""
        from pipemake.rules._features import decode

        vectors: dict[str, Any] = {}
        damaged: dict[str, str] = {}
        for rel in rels:
            vec, why = _cached_vector(mapped[rel], dim)
            if vec is None:
                damaged[rel] = why
            else:
                vectors[rel] = vec
        if dim < 0 and vectors:  # a model's vectors: the length most of them have
            lengths = [len(v) for v in vectors.values()]
            common = max(set(lengths), key=lengths.count)
            for rel, vec in list(vectors.items()):
                if len(vec) != common:
                    damaged[rel] = f"{len(vec)} numbers where the others have {common}"
                    del vectors[rel]
        if damaged:
            first = min(damaged)
            ctx.log.warning(
                "%d cached feature vector(s) are damaged (first: %s: %s); computing them "
                "again (`pipemake cache verify` cannot see this: run `pipemake build "
                "--force-stage` on this stage to store them afresh)",
                len(damaged), first, damaged[first],
            )  # fmt: skip
            todo = sorted(damaged)
            paths = [src / rel if (src / rel).is_absolute() else ctx.root / src / rel
                     for rel in todo]  # fmt: skip
            for rel, data in zip(todo, self._features(ctx, paths), strict=True):
                vectors[rel] = decode(data)
        return [vectors[rel] for rel in rels]

    def _write(
        self,
        ctx: Context,
        src: Path,
        rels: list[str],
        names: list[str],
        result: Any,
        warnings: list[str],
    ) -> dict:
        out = Path(ctx.outputs["output_dir"])
        members: dict[str, list[int]] = {}
        items = []
        for i, (rel, name) in enumerate(zip(rels, names, strict=True)):
            dest = out / name / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, dest)
            members.setdefault(name, []).append(i)
            items.append(
                {
                    "file": rel,
                    "path": f"{name}/{rel}",
                    "cluster": name,
                    "probability": result.probabilities[i],
                    "distance": result.distances[i],
                }
            )
            ctx.progress(i + 1, len(rels))
        cluster_dirs = [f"cluster_{c:03d}" for c in range(result.n_clusters)]
        order = cluster_dirs + ([NOISE] if NOISE in members else [])
        summary = {
            "n_clusters": result.n_clusters,
            "n_noise": len(members.get(NOISE, [])),
            "algorithm": ctx.params["algorithm"],
            "params": {k: ctx.params.get(k) for k in self.reduce_params},
            "selection": None
            if result.selection is None
            else {
                "k": result.selection.k,
                "silhouette": {str(k): v for k, v in result.selection.scores.items()},
                "sample": result.selection.sample,
            },
            "clusters": {
                n: {"size": len(members[n]), "files": [rels[i] for i in members[n]]} for n in order
            },
            "warnings": warnings,
            "items": items,
        }
        (out / "clusters.json").write_text(json.dumps(summary, indent=1) + "\n")
        self._sheets(ctx, out, order, members, rels, result)
        return {
            "cluster_dirs": cluster_dirs,
            "n_clusters": result.n_clusters,
            "n_noise": summary["n_noise"],
        }

    def _sheets(self, ctx: Context, out: Path, order, members, rels, result) -> None:
        from pipemake.rules._contact_sheets import cluster_sheet, overview_sheet

        (out / SHEETS).mkdir(exist_ok=True)
        groups = []
        for name in order:
            best_first = sorted(
                members[name],
                key=lambda i: (-result.probabilities[i], result.distances[i] or 0.0, rels[i]),
            )
            paths = [out / name / rels[i] for i in best_first]
            cluster_sheet(
                paths,
                name,
                out / SHEETS / f"{name}.png",
                thumb=ctx.params["sheet_thumb"],
                limit=ctx.params["sheet_max"],
            )
            groups.append((name, paths))
        overview_sheet(groups, out / "overview.png")


def _algorithm_problems(p: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the chosen algorithm needs: kmeans the number of characters, agglomerative that
    or a distance threshold."""
    if p["n_clusters"] >= 1 or p["algorithm"] not in ("kmeans", "agglomerative"):
        return []
    if p["algorithm"] == "kmeans":
        return [
            (
                "algorithm",
                f"algorithm kmeans needs the number of characters, but n_clusters is "
                f"{p['n_clusters']!r}: set n_clusters to 1 or more, or use algorithm: auto "
                "(which finds the number itself)",
            )
        ]
    if p["distance_threshold"] > 0:
        return []
    return [
        (
            "algorithm",
            "algorithm agglomerative needs n_clusters or distance_threshold, but neither is "
            "set (both 0): set n_clusters to the number of characters, or distance_threshold "
            "above 0 (the largest distance it merges)",
        )
    ]


def _list_problems(p: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems with the list and mapping params: ``hist_bins``, ``model_mean``,
    ``model_std`` and ``weights``, each saying what it must be and what to write."""
    problems = []
    bins = p["hist_bins"]
    if len(bins) != 2 or not all(
        isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= MAX_BINS for b in bins
    ):
        problems.append(
            (
                "hist_bins",
                f"param 'hist_bins' is {bins!r} but must be two ints from 1 to {MAX_BINS}, "
                "the Lab histogram's [L bins, a/b bins]: set it to e.g. [4, 6] (the default)",
            )
        )
    for key, low in (("model_mean", None), ("model_std", 0)):
        value = p[key]
        if len(value) != 3 or not all(is_number(v) and (low is None or v > low) for v in value):
            more = "" if low is None else f" > {low}"
            problems.append(
                (
                    key,
                    f"param {key!r} is {value!r} but must be three numbers{more} (R, G, B of "
                    f"model_path's input normalisation): set it to e.g. "
                    f"{ClusteringRule.params[key].default!r} (the default, ImageNet's)",
                )
            )
    weights = p["weights"]
    unknown = sorted(str(k) for k in weights if k not in WEIGHT_BLOCKS)
    bad = {k: v for k, v in weights.items() if k in WEIGHT_BLOCKS and not (is_number(v) and v >= 0)}
    if unknown or bad:
        what = (f"unknown block(s) {unknown}" if unknown else "") + (
            f"{'; ' if unknown else ''}weights {bad!r} not numbers >= 0" if bad else ""
        )
        problems.append(
            (
                "weights",
                f"param 'weights': {what}; it maps blocks to weights >= 0 (0 turns a block "
                f"off): color, layout, shape, brightness (color_shape features) and model",
            )
        )
    return problems


def _log_selection(ctx: Context, result: Any) -> None:
    """Say how ``auto`` chose the number of clusters."""
    sel = result.selection
    if sel is None:
        return
    if not sel.scores:
        return  # one group: a warning (see _one_group_warning)
    ctx.log.info(
        "auto: %d clusters (the tree cut into %d groups, the best separated of 2 to %d: "
        "silhouette %.2f)",
        result.n_clusters,
        sel.k,
        max(sel.scores),
        sel.scores[sel.k],
    )


def _empty_warning(p: Mapping[str, Any], total: int, clusters: int, noise: int) -> str | None:
    """The warning for a result that is unusable as it stands (no cluster at all, or most
    cut-outs in noise/), naming the counts and the params that change it; None otherwise."""
    if clusters and noise * 2 <= total:
        return None
    trim = f"outlier_factor (now {p['outlier_factor']}; 0 turns the outlier trim off)"
    if p["algorithm"] == "hdbscan":
        fix = (
            f"lower min_cluster_size (now {p['min_cluster_size']}) or min_samples (now "
            f"{p['min_samples']}), raise {trim}, or use algorithm: auto"
        )
    elif p["algorithm"] == "auto" and not p["n_clusters"]:
        fix = (
            f"lower min_cluster_size (now {p['min_cluster_size']}: smaller groups are "
            f"noise), set n_clusters, or raise {trim}"
        )
    else:
        fix = f"they were trimmed as outliers: raise {trim}"
    found = f"{clusters} cluster{'s' if clusters != 1 else ''}" if clusters else "no clusters"
    return f"clustering found {found}: {noise} of {total} cut-outs are in noise/; {fix}"


def _one_group_warning(p: Mapping[str, Any], total: int, sel: Any) -> str | None:
    """The warning for ``auto`` putting every cut-out in one cluster because no cut of its
    tree had two groups of ``min_cluster_size`` (a clip with a few shots of several
    characters gives a training set of them all mixed), naming the counts and the params
    that change it; None otherwise."""
    if sel is None or sel.scores:
        return None
    size = p["min_cluster_size"]
    head = f"clustering put all {total} cut-outs in one cluster"
    if sel.sample < 2 * size:
        why = (
            f"auto only splits off groups of at least min_cluster_size (now {size}) "
            f"cut-outs, and {sel.sample} are fewer than two such groups ({2 * size})"
        )
    else:
        why = f"no cut of its tree gave two groups of min_cluster_size (now {size}) cut-outs"
    if sel.sample >= 4:
        fix = (
            f"lower min_cluster_size (to {min(size - 1, sel.sample // 2)} or less) or set "
            "n_clusters to the number of characters"
        )
    else:
        fix = "too few to split: set n_clusters to the number of characters, or add footage"
    return f"{head}: {why}; {fix}"


#: the most numbers a cached feature vector of a model may hold (4 million: 16 MB)
_MAX_DIMS = 1 << 22


def _cached_vector(value: Any, dim: int) -> tuple[Any, str]:
    """``(vector, "")`` for a cached map result that is what ``map_item`` writes: .npy bytes
    of one row of finite numbers (``dim`` of them; any count up to :data:`_MAX_DIMS` when
    ``dim`` is negative), or such a JSON list; else ``(None, why)``. The .npy header is read
    before any array is made, so a header claiming a terabyte allocates nothing, and
    pickles are never loaded."""
    import numpy as np

    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        try:
            fp = io.BytesIO(data)
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                return None, f".npy format version {version} is not one numpy writes here"
        except Exception as exc:  # whatever a forged header makes numpy raise
            return None, f"not .npy bytes ({type(exc).__name__})"
        if dtype.hasobject or dtype.kind not in "fiu" or dtype.fields is not None:
            return None, f"an array of {dtype}, not of numbers"
        if len(shape) != 1 or (dim >= 0 and shape[0] != dim) or shape[0] > _MAX_DIMS:
            return None, f"an array of shape {shape}, not one row of {max(dim, 0) or 'n'}"
        if len(data) - fp.tell() != shape[0] * dtype.itemsize:
            return None, "its header does not match its length"
        vec = np.frombuffer(data, dtype=dtype, count=shape[0], offset=fp.tell())
    elif type(value) is list and len(value) <= _MAX_DIMS:
        if not all(type(x) in (int, float) for x in value):
            return None, "a JSON list of something other than numbers"
        if dim >= 0 and len(value) != dim:
            return None, f"{len(value)} numbers, not {dim}"
        vec = np.asarray(value, dtype=np.float64)
    else:
        return None, f"a {type(value).__name__}, not a feature vector"
    vec = vec.astype(np.float32)
    if not np.isfinite(vec).all():
        return None, "numbers that are not finite"
    return vec, ""


def _wants_gpu(ctx: Context) -> bool:
    return bool(ctx.resources.get("gpu"))


def _item_path(ctx: Context, item: Item) -> Path:
    path = Path(item.path)
    return path if path.is_absolute() else ctx.root / path

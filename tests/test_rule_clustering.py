"""Tests of the clustering rule: called directly with hand-built contexts, and its params
checked through the CLI before anything runs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _character_fixtures import write_cutouts
from conftest import refused_before_running
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from pipemake.rule import Context, Item, RuleError
from pipemake.rules import _cluster_algos, _features
from pipemake.rules.clustering import ClusteringRule

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: heavy: features with torch over sets of cut-outs, real models, whole builds
slow = pytest.mark.slow


def _params(**overrides):
    rule = ClusteringRule()
    config = {"input_dir": "in", "output_dir": "out", **overrides}
    ports, problems = rule.ports(config)
    assert problems == []
    return ports


def _map_all(rule, root: Path, labels, params, inputs=None) -> dict:
    mapped = {}
    for rel in sorted(labels):
        ins = {"input_dir": root / "in" / rel, **(inputs or {})}
        ctx = Context(root, ins, {"output_dir": root / "stage"}, params)
        mapped[rel] = rule.map_item(ctx, Item(f"in/{rel}", rel))
    return mapped


def _reduce(root: Path, mapped, out_name: str, inputs=None, **overrides):
    rule = ClusteringRule()
    params = _params(**overrides).params
    out = root / out_name
    out.mkdir()
    ctx = Context(root, {"input_dir": root / "in", **(inputs or {})}, {"output_dir": out}, params)
    return rule.reduce(ctx, mapped), out


def _ari(out: Path, labels) -> float:
    items = json.loads((out / "clusters.json").read_text())["items"]
    pred = {it["file"]: it["cluster"] for it in items}
    rels = sorted(labels)
    return adjusted_rand_score([labels[r] for r in rels], [pred[r] for r in rels])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("clu")
    labels = write_cutouts(root / "in", n_characters=4, per_character=15, seed=3, subdirs=True)
    mapped = _map_all(ClusteringRule(), root, labels, _params().params)
    return root, labels, mapped


@slow
def test_defaults_find_the_characters_and_write_the_layout(data):
    root, labels, mapped = data
    values, out = _reduce(root, mapped, "out_default")
    assert _ari(out, labels) >= 0.9
    assert values["n_clusters"] == 4
    assert values["cluster_dirs"] == [f"cluster_{i:03d}" for i in range(4)]
    summary = json.loads((out / "clusters.json").read_text())
    assert summary["n_clusters"] == 4 and len(summary["items"]) == 60
    for item in summary["items"]:
        copy = out / item["path"]
        assert copy.read_bytes() == (root / "in" / item["file"]).read_bytes()
        assert 0.0 <= item["probability"] <= 1.0
        assert item["distance"] is None or item["distance"] >= 0
    sizes = [summary["clusters"][d]["size"] for d in values["cluster_dirs"]]
    assert sizes == sorted(sizes, reverse=True)
    sheets = [out / "overview.png"] + [
        out / "contact_sheets" / f"{d}.png" for d in values["cluster_dirs"]
    ]
    for sheet in sheets:
        assert sheet.read_bytes()[:8] == PNG_MAGIC
        assert Image.open(sheet).size[0] > 0
    assert ClusteringRule.path_values == {"cluster_dirs": "output_dir"}


@slow
def test_kmeans_and_agglomerative(data):
    root, labels, mapped = data
    _, out = _reduce(root, mapped, "out_km", algorithm="kmeans", n_clusters=4)
    assert _ari(out, labels) >= 0.9
    items = json.loads((out / "clusters.json").read_text())["items"]
    assert all(0.0 < it["probability"] <= 1.0 for it in items)
    _, out = _reduce(root, mapped, "out_ag", algorithm="agglomerative", n_clusters=4)
    assert _ari(out, labels) >= 0.9
    values, out = _reduce(
        root, mapped, "out_agt", algorithm="agglomerative", distance_threshold=1.5
    )
    assert values["n_clusters"] >= 2 and _ari(out, labels) >= 0.9


@pytest.mark.parametrize(("pca", "norm"), [(0, False), (8, True), (0, True)])
@slow
def test_pca_and_normalize_options(data, pca, norm):
    root, labels, mapped = data
    _, out = _reduce(root, mapped, f"out_p{pca}{norm}", pca_dims=pca, normalize=norm)
    assert _ari(out, labels) >= 0.9


def test_prepare_weights_and_reduces_dims():
    x = np.random.default_rng(0).random((50, 221)).astype(np.float32)
    blocks = _features.feature_blocks({"hist_bins": [4, 6], "shape_size": 8}, model=False)
    assert sum(n for _, n in blocks) == 221
    y = _cluster_algos.prepare(x, blocks, {"pca_dims": 16, "normalize": True})
    assert y.shape == (50, 16)
    off = {"shape": 0, "layout": 0, "brightness": 0}
    z = _cluster_algos.prepare(x, blocks, {"pca_dims": 0, "weights": off})
    assert np.allclose(z[:, 144:], 0) and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    # a block the weights leave out keeps its default weight, not 1
    only_color = _cluster_algos.prepare(x, blocks, {"pca_dims": 0, "normalize": False})
    assert np.allclose(only_color[:, 144:156], x[:, 144:156] * 0.2)


@slow
def test_reduce_only_rerun_uses_cached_map_results(data, monkeypatch):
    root, labels, mapped = data

    def no_features(*args, **kwargs):
        raise AssertionError("reduce must not extract features")

    monkeypatch.setattr(_features, "extract_features", no_features)
    first, _ = _reduce(root, mapped, "out_r1", min_cluster_size=4)
    second, out = _reduce(root, mapped, "out_r2", algorithm="kmeans", n_clusters=3)
    assert first["n_clusters"] == 4 and second["n_clusters"] == 3
    as_lists = {rel: _features.decode(v).tolist() for rel, v in mapped.items()}
    third, _ = _reduce(root, as_lists, "out_r3")  # JSON lists work as well as .npy bytes
    assert third == first


def _tiny_torch_model(path: Path) -> None:
    """A 2 × 2 average-pool "encoder" (12 dims), saved as TorchScript (.pt) or with
    torch.export (.pt2)."""
    import torch

    class Pool(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)

    example = torch.rand(2, 3, 32, 32)
    if path.suffix == ".pt2":
        batch = torch.export.Dim("batch")
        program = torch.export.export(Pool(), (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
    else:
        torch.jit.trace(Pool().eval(), example).save(str(path))


def _tiny_onnx_model(path: Path, batch) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["p"]),
            helper.make_node("Flatten", ["p"], ["y"], axis=1),
        ],
        "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.parametrize("kind", ["torchscript", "export", "onnx", "onnx_fixed_batch"])
@slow
def test_user_models(data, tmp_path, kind):
    root, labels, _ = data
    model = tmp_path / {"torchscript": "m.pt", "export": "m.pt2"}.get(kind, "m.onnx")
    dims = 12 if kind in ("torchscript", "export") else 3
    if kind in ("torchscript", "export"):
        _tiny_torch_model(model)
    else:
        _tiny_onnx_model(model, 1 if kind == "onnx_fixed_batch" else "N")
    rule = ClusteringRule()
    params = _params(model_path=str(model), model_input_size=32).params
    ctx = Context(root, {"input_dir": root / "in", "model_path": model}, {}, params)
    ctx.state = rule.setup(ctx)
    items = [Item(f"in/{rel}", rel) for rel in sorted(labels)[:5]]
    batch = [_features.decode(b) for b in rule.map_batch(ctx, items)]
    assert all(v.shape == (dims,) for v in batch)
    single = _features.decode(
        rule.map_item(
            ctx.__class__(
                root,
                {"input_dir": root / "in" / items[0].relpath, "model_path": model},
                {},
                params,
                state=ctx.state,
            ),
            items[0],
        )
    )
    assert np.allclose(single, batch[0], atol=1e-5)
    mapped = _map_all(rule, root, labels, params, {"model_path": model})
    values, out = _reduce(
        root,
        mapped,
        f"out_{kind}",
        {"model_path": model},
        model_path=str(model),
        algorithm="kmeans",
        n_clusters=4,
    )
    assert values["n_clusters"] == 4 and (out / "clusters.json").exists()


@slow
def test_bad_model_file_is_a_rule_error(data, tmp_path):
    root, _, _ = data
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a model")
    rule = ClusteringRule()
    params = _params(model_path=str(bad)).params
    with pytest.raises(RuleError, match="broken.pt"):
        rule.setup(Context(root, {"input_dir": root, "model_path": bad}, {}, params))


@slow
def test_memory_guard_refuses_before_running(data, monkeypatch):
    root, _, mapped = data
    with pytest.raises(RuleError, match=r"agglomerative needs about .* n × n"):
        _reduce(
            root, mapped, "out_mem1", algorithm="agglomerative", n_clusters=4, max_memory_gb=1e-6
        )
    monkeypatch.setattr(_cluster_algos, "available_memory", lambda: 1000)
    with pytest.raises(RuleError, match="brute-force HDBSCAN"):
        _reduce(root, mapped, "out_mem2", algorithm="hdbscan", hdbscan_algorithm="brute")
    with pytest.raises(RuleError, match="Ward tree"):
        _reduce(root, mapped, "out_mem3")
    need, _ = _cluster_algos.estimate_memory("agglomerative", 100_000, 32, {})
    assert need == 100_000**2 * 8


def test_check_reports_bad_params():
    rule = ClusteringRule()
    cases = [
        ({"algorithm": "kmeans"}, "algorithm"),
        ({"algorithm": "agglomerative"}, "algorithm"),
        ({"features": "model"}, "features"),
        ({"hist_bins": [4]}, "hist_bins"),
        ({"weights": {"colour": 1}}, "weights"),
        ({"min_cluster_size": 1}, "min_cluster_size"),
        ({"max_clusters": 1}, "max_clusters"),
        ({"n_clusters": -1}, "n_clusters"),
    ]
    for overrides, key in cases:
        ports, problems = rule.ports({"input_dir": "in", "output_dir": "o", **overrides})
        assert key in [k for k, _ in problems + rule.check(ports)], overrides


@slow
def test_bad_inputs_are_rule_errors(data, tmp_path):
    root, _, _ = data
    with pytest.raises(RuleError, match="no cut-outs"):
        _reduce(root, {}, "out_empty")
    broken = tmp_path / "in" / "bad.png"
    broken.parent.mkdir()
    broken.write_bytes(b"garbage")
    rule = ClusteringRule()
    ctx = Context(tmp_path, {"input_dir": broken}, {}, _params().params)
    with pytest.raises(RuleError, match="bad.png"):
        rule.map_item(ctx, Item("in/bad.png", "bad.png"))


@slow
def test_gpu_request_falls_back_to_cpu_without_cuda(tmp_path):
    import torch

    rule = ClusteringRule()
    ctx = Context(tmp_path, {"input_dir": tmp_path}, {}, _params().params, resources={"gpu": 1})
    state = rule.setup(ctx)
    assert state["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_importing_the_rules_stays_light():
    code = (
        "import sys, pipemake.rules.clustering, pipemake.rules.training_data_prep\n"
        "heavy = [m for m in ('torch', 'sklearn', 'numpy', 'PIL', 'onnxruntime') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == ""


@slow
def test_outliers_go_to_noise(data):
    root, labels, mapped = data
    rng = np.random.default_rng(9)
    extra = dict(mapped)
    rule, params = ClusteringRule(), _params().params
    for i in range(2):
        rel = f"odd_{i}.png"
        pixels = rng.integers(0, 256, (40 + 20 * i, 30, 4), dtype=np.uint8)
        pixels[..., 3] = 255
        Image.fromarray(pixels, "RGBA").save(root / "in" / rel)
        ctx = Context(root, {"input_dir": root / "in" / rel}, {}, params)
        extra[rel] = rule.map_item(ctx, Item(f"in/{rel}", rel))
    values, out = _reduce(root, extra, "out_noise")
    summary = json.loads((out / "clusters.json").read_text())
    assert values["n_noise"] == summary["n_noise"] >= 2
    assert {"odd_0.png", "odd_1.png"} <= set(summary["clusters"]["noise"]["files"])
    assert (out / "noise" / "odd_0.png").is_file()
    assert (out / "contact_sheets" / "noise.png").is_file()
    assert "noise" not in values["cluster_dirs"] and _ari(out, labels) >= 0.9
    kept, _ = _reduce(
        root, extra, "out_no_trim", algorithm="kmeans", n_clusters=4, outlier_factor=0
    )
    assert kept["n_noise"] == 0  # KMeans alone attaches them to the nearest character


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@slow
def test_no_clusters_is_a_warning_naming_counts_and_params(tmp_path, caplog):
    labels = write_cutouts(tmp_path / "in", n_characters=1, per_character=3, seed=1)
    mapped = _map_all(ClusteringRule(), tmp_path, labels, _params().params)
    values, out = _reduce(tmp_path, mapped, "out")
    assert values["n_clusters"] == 0 and values["n_noise"] == 3
    (warning,) = _warnings(caplog)
    assert "found no clusters: 3 of 3 cut-outs are in noise/" in warning
    assert "min_cluster_size (now 5" in warning and "n_clusters" in warning
    assert json.loads((out / "clusters.json").read_text())["warnings"] == [warning]


@slow
def test_most_cut_outs_in_noise_is_a_warning(data, caplog):
    root, _, mapped = data
    values, out = _reduce(
        root, mapped, "out_trimmed", algorithm="kmeans", n_clusters=4, outlier_factor=0.5
    )
    clusters, noise = values["n_clusters"], values["n_noise"]
    assert clusters >= 1 and noise > 30
    (warning,) = _warnings(caplog)
    assert f"found {clusters} cluster" in warning
    assert f": {noise} of 60 cut-outs are in noise/" in warning
    assert "outlier_factor (now 0.5" in warning
    caplog.clear()
    _reduce(root, mapped, "out_hdb", algorithm="hdbscan", min_cluster_size=61)
    (warning,) = _warnings(caplog)
    assert "no clusters: 60 of 60" in warning and "min_samples (now 2)" in warning


@slow
def test_a_good_result_has_no_warning(data, caplog):
    root, _, mapped = data
    with caplog.at_level(logging.INFO):
        _, out = _reduce(root, mapped, "out_quiet")
    assert _warnings(caplog) == []
    assert "auto: 4 clusters" in caplog.text
    summary = json.loads((out / "clusters.json").read_text())
    assert summary["warnings"] == [] and summary["selection"]["k"] == 4
    assert max(summary["selection"]["silhouette"].items(), key=lambda kv: kv[1])[0] == "4"


@slow
def test_auto_with_n_clusters_cuts_at_that_number(data):
    root, labels, mapped = data
    values, out = _reduce(root, mapped, "out_k3", n_clusters=3)
    assert values["n_clusters"] == 3
    assert json.loads((out / "clusters.json").read_text())["selection"] is None
    with pytest.raises(RuleError, match="n_clusters 99 needs at least 99 cut-outs"):
        _reduce(root, mapped, "out_k99", n_clusters=99)


@slow
def test_auto_samples_large_sets_and_assigns_the_rest(monkeypatch):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16))
    x = np.concatenate([c + 0.05 * rng.normal(size=(120, 16)) for c in centres])
    truth = np.repeat(np.arange(5), 120)
    monkeypatch.setattr(_cluster_algos, "SAMPLE", 200)
    result = _cluster_algos.cluster(x.astype(np.float32), _params().params)
    assert result.selection.sample == 200 and result.n_clusters == 5
    assert adjusted_rand_score(truth, result.labels) == 1.0


def _grey_figure(level: int, rng: np.random.Generator) -> Image.Image:
    """The same silhouette, one grey ``level`` (±8), tilted a little."""
    from PIL import ImageDraw

    img = Image.new("RGBA", (64, 96), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    tone = int(np.clip(level + rng.integers(-8, 9), 0, 255))
    draw.ellipse((20, 4, 44, 28), fill=(tone, tone, tone, 255))
    draw.rectangle((16, 30, 48, 90), fill=(tone, tone, tone, 255))
    return img.rotate(float(rng.uniform(-10, 10)), expand=True)


@slow
def test_a_dark_and_a_light_character_of_the_same_shape_stay_apart(tmp_path):
    """Colours are measured at a common brightness; the brightness block still tells a
    black figure from a white one."""
    rng = np.random.default_rng(4)
    labels = {}
    (tmp_path / "in").mkdir()
    for i in range(24):
        rel = f"fig_{i:02d}.png"
        _grey_figure((30, 225)[i % 2], rng).save(tmp_path / "in" / rel)
        labels[rel] = i % 2
    mapped = _map_all(ClusteringRule(), tmp_path, labels, _params().params)
    values, out = _reduce(tmp_path, mapped, "out")
    assert values["n_clusters"] == 2 and _ari(out, labels) == 1.0


@slow
def test_the_warning_reaches_the_build_output(project):
    proj = project(
        """
        name: w
        stages:
          - id: cluster
            type: clustering
            foreach: input_dir
            config:
              input_dir: cutouts
              output_dir: build/clusters
        """
    )
    write_cutouts(proj.root / "cutouts", n_characters=1, per_character=3, seed=2)
    out = proj.cli("build", "--no-progress").output
    assert "clustering found no clusters: 3 of 3 cut-outs are in noise/" in out
    assert "lower min_cluster_size (now 5" in out


# ---------------------------------------------------------------------------------------
# every param's range, checked before anything runs (through the CLI, as a user meets it)

#: the pipeline a user has: the clustering reads the segmenter's computed ``character_dir``
#: (a value known only once segment ran) and is read through ``cluster_dirs``
PIPELINE = """
name: ranges
stages:
  - id: extract
    type: frame_extraction
    config:
      input_video: data/clip.mp4
      output_dir: build/frames
      mode: scene
  - id: segment
    type: segmentation
    config:
      input_dir: "{extract.output_dir}"
      output_dir: build/segmented
  - id: cluster
    type: clustering
    config:
      input_dir: "{segment.character_dir}"
      output_dir: build/clusters
      BAD
  - id: prepare
    type: training_data_prep
    config:
      character_dirs: "{cluster.cluster_dirs}"
      output_dir: build/training
"""
BAD_LINE = PIPELINE.lstrip().splitlines().index("      BAD") + 1

#: (the line the pipeline gets, words the message must hold: value, range, what to do)
BAD_VALUES = [
    ("min_cluster_size: 1", ["'min_cluster_size' is 1", "must be >= 2", "set it to 2 or more"]),
    ("min_cluster_size: -3", ["is -3", "must be >= 2"]),
    ("max_clusters: 1", ["'max_clusters' is 1", "must be >= 2"]),
    ("n_clusters: -1", ["'n_clusters' is -1", "must be >= 0", "0: auto finds it"]),
    ("min_samples: -1", ["'min_samples' is -1", "must be >= 0", "0: min_cluster_size"]),
    ("pca_dims: -2", ["'pca_dims' is -2", "must be >= 0", "0: no PCA"]),
    ("cluster_selection_epsilon: -0.5", ["is -0.5", "must be >= 0"]),
    ("distance_threshold: -1.0", ["'distance_threshold' is -1.0", "must be >= 0"]),
    ("outlier_factor: -1", ["'outlier_factor' is -1", "must be >= 0", "0: no trim"]),
    ("shape_size: 0", ["'shape_size' is 0", "from 1 to 64"]),
    ("shape_size: 500", ["'shape_size' is 500", "from 1 to 64"]),
    ("model_input_size: 4", ["'model_input_size' is 4", "from 8 to 1024"]),
    ("seed: -1", ["'seed' is -1", "from 0 to 4294967295"]),
    ("max_memory_gb: -2", ["'max_memory_gb' is -2", "must be >= 0"]),
    ("max_memory_gb: .inf", ["'max_memory_gb' is inf", "must be >= 0"]),
    ("outlier_factor: .nan", ["'outlier_factor' is nan", "must be >= 0"]),
    ("model_std: [0.2, .nan, 0.2]", ["'model_std' is [0.2, nan, 0.2]", "three numbers > 0"]),
    ("sheet_thumb: 0", ["'sheet_thumb' is 0", "from 8 to 1024"]),
    ("sheet_max: 0", ["'sheet_max' is 0", "must be >= 1"]),
    ("hist_bins: [4, 0]", ["'hist_bins' is [4, 0]", "two ints from 1 to 16", "[4, 6]"]),
    ("hist_bins: [4, 6, 6]", ["'hist_bins' is [4, 6, 6]", "two ints"]),
    ("model_mean: [0.5, 0.5]", ["'model_mean' is [0.5, 0.5]", "three numbers"]),
    ("model_std: [0.2, 0, 0.2]", ["'model_std' is [0.2, 0, 0.2]", "three numbers > 0"]),
    ("weights: {color: -1}", ["weights {'color': -1} not numbers >= 0", "0 turns a block off"]),
    ("weights: {hair: 1}", ["unknown block(s) ['hair']", "color, layout, shape"]),
    ("algorithm: kmeans", ["kmeans needs the number of characters", "n_clusters is 0"]),
    ("algorithm: agglomerative", ["needs n_clusters or distance_threshold", "above 0"]),
    ("features: model", ["needs model_path", "or use features: auto"]),
    ("algorithm: spectral", ["'spectral' is not one of", "'auto'"]),
    ("linkage: median", ["'median' is not one of", "'ward'"]),
]


@pytest.fixture
def ranges_project(project, monkeypatch):
    """A project of :data:`PIPELINE` whose segmentation model is on disk (a tiny stand-in),
    so the clustering's params are all that can be wrong; ``make(line)`` writes it."""
    from _onnx_fixtures import install_named_model

    made = []

    def make(line: str):
        proj = project(PIPELINE.replace("BAD", line), {"data/clip.mp4": b"not decoded here"})
        install_named_model(proj.root / "u2net_home", "u2net")
        monkeypatch.setenv("U2NET_HOME", str(proj.root / "u2net_home"))
        monkeypatch.delenv("REMBG_HOME", raising=False)
        made.append(proj)
        return proj

    return make


@pytest.mark.parametrize(("line", "words"), BAD_VALUES, ids=[v[0] for v in BAD_VALUES])
def test_a_bad_value_is_a_pipeline_error_before_anything_runs(ranges_project, line, words):
    refused_before_running(ranges_project(line), BAD_LINE, "cluster", words)


def test_the_values_in_range_are_valid(ranges_project):
    """The edges of every range are accepted (0 where 0 means "off" or "find it")."""
    edges = (
        "min_cluster_size: 2\n      max_clusters: 2\n      n_clusters: 0\n      min_samples: 0\n"
        "      pca_dims: 0\n      outlier_factor: 0\n      shape_size: 64\n      seed: 4294967295\n"
        "      hist_bins: [16, 1]\n      weights: {color: 0, model: 2}\n      sheet_max: 1"
    )
    proj = ranges_project(edges)
    assert "is valid" in proj.cli("validate").output


def test_a_bad_value_runs_no_stage(project, monkeypatch):
    """The reported case: a bad clustering value used to fail only after the frames were
    extracted and segmented. Now the build stops at once, and nothing is extracted; with the
    value fixed, the same pipeline extracts (so the check, not the setup, stopped it)."""
    from _onnx_fixtures import install_named_model
    from _video_fixtures import write_video

    proj = project(PIPELINE.replace("BAD", "min_cluster_size: 1"))
    write_video(proj.path("data/clip.mp4"), [12, 12])
    install_named_model(proj.root / "u2net_home", "u2net")
    monkeypatch.setenv("U2NET_HOME", str(proj.root / "u2net_home"))
    monkeypatch.delenv("REMBG_HOME", raising=False)
    out = proj.cli("build", "--no-progress", code=2).output
    assert "'min_cluster_size' is 1 but must be >= 2" in out
    assert not proj.exists("build/frames") and not proj.exists("build")
    proj.edit("pipemake.yaml", "min_cluster_size: 1", "min_cluster_size: 2")
    proj.cli("build", "--no-progress", "extract")
    assert list(proj.path("build/frames").glob("frame_*.jpg"))


def test_a_value_an_upstream_stage_computes_is_checked_once_known(project):
    """A param from a reference is unknown at load time (valid then); the same check
    refuses it when the upstream stage has computed it, before the clustering runs."""
    proj = project(
        """
        name: computed
        stages:
          - id: calc
            type: python
            config:
              function: "calc:size"
              outputs: {o: build/calc.txt}
          - id: cluster
            type: clustering
            config:
              input_dir: cutouts
              output_dir: build/clusters
              min_cluster_size: "{calc.size}"
        """,
        {
            "calc.py": "def size(ctx):\n    ctx.outputs['o'].write_text('1')\n"
            "    return {'size': 1}\n",
        },
    )
    proj.path("cutouts").mkdir()
    Image.new("RGBA", (8, 8), (255, 0, 0, 255)).save(proj.path("cutouts/a.png"))
    assert "is valid" in proj.cli("validate").output
    out = proj.cli("build", "--no-progress", code=1).output
    assert "cluster: FAILED" in out and "'min_cluster_size' is 1 but must be >= 2" in out
    assert proj.exists("build/calc.txt") and not proj.exists("build/clusters")


def test_hdbscan_with_more_min_samples_than_cut_outs_puts_all_in_noise():
    """min_samples is checked against the number of cut-outs only when that is known: too
    few cut-outs for the neighbourhood is noise (with the warning that names min_samples),
    as too few for min_cluster_size is, not scikit-learn's error."""
    x = np.random.default_rng(1).random((6, 4)).astype(np.float32)
    params = _params(algorithm="hdbscan", min_cluster_size=2, min_samples=10).params
    result = _cluster_algos.cluster(x, params)
    assert result.labels == [-1] * 6 and result.n_clusters == 0

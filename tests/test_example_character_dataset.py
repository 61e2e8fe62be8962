"""End to end: a reduced run of examples/character_dataset through the real CLI.

The example is copied to a temporary folder and shrunk through its ``vars`` (fewer, shorter
shots at a lower resolution, fewer ground-truth frames); then ``python -m pipemake build``
generates the video, extracts frames, trains the demo segmentation model, segments with
rembg, clusters and prepares a kohya dataset. The clusters are checked against the
characters the video generator says it drew (adjusted Rand index), and a second build must
run nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow  # a whole example; its libraries load when it runs, so
# that `pytest -m "not slow"` does not pay for them while it only collects
_NEEDS = ("av", "rembg", "torch", "onnx", "sklearn")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "character_dataset"
SMALL = {"shots": 6, "frames_per_shot": 12, "width": 160, "height": 120, "train_samples": 12}


def _pipemake(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PIPEMAKE_CACHE_DIR"}
    env["NUMBA_DISABLE_JIT"] = "1"  # rembg imports numba; only alpha matting needs its JIT
    return subprocess.run(
        [sys.executable, "-m", "pipemake", "-C", str(root), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out}"
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The reduced example, built once: (its folder, the build's output)."""
    for name in _NEEDS:
        pytest.importorskip(name)
    root = tmp_path_factory.mktemp("example") / "character_dataset"
    shutil.copytree(
        EXAMPLE, root, ignore=shutil.ignore_patterns("build", ".pipemake", "__pycache__")
    )
    pipeline = yaml.safe_load((root / "pipemake.yaml").read_text())
    assert set(SMALL) <= set(pipeline["vars"]), "the example's vars changed: update SMALL"
    pipeline["vars"].update(SMALL)
    (root / "pipemake.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return root, _ok(_pipemake(root, "build", "--no-progress"))


def test_the_reduced_example_builds_every_stage(built):
    root, out = built
    assert "6 ran, 0 restored, 0 up to date" in out
    truth = json.loads((root / "build" / "truth.json").read_text())
    assert len(truth["shots"]) == SMALL["shots"]
    assert (root / "build" / "demo_model.onnx").stat().st_size > 0


def test_clusters_match_the_characters_of_the_video(built):
    root, _ = built
    build = root / "build"
    shots = json.loads((build / "truth.json").read_text())["shots"]
    frames = [json.loads(line) for line in (build / "frames" / "frames.jsonl").open()]
    clusters = json.loads((build / "clusters" / "clusters.json").read_text())
    cluster_of = {Path(item["file"]).stem: item["cluster"] for item in clusters["items"]}

    def character_at(seconds: float) -> int:
        (shot,) = [s for s in shots if s["start"] <= seconds + 1e-6 < s["end"]]
        return shot["character"]

    assert len(frames) >= 3 * SMALL["shots"] - 1  # per_scene 3 from every shot
    truth = [character_at(f["timestamp"]) for f in frames]
    # a frame the segmentation dropped counts as a wrong answer of its own
    found = [cluster_of.get(Path(f["file"]).stem, "dropped") for f in frames]
    from sklearn.metrics import adjusted_rand_score

    ari = adjusted_rand_score(truth, found)
    assert ari >= 0.9, f"ARI {ari:.3f}: truth {truth}, clusters {found}"


def test_the_dataset_has_a_caption_beside_every_image(built):
    root, _ = built
    dataset = root / "build" / "dataset"
    images = sorted((dataset / "train").rglob("*.png"))
    assert len(images) >= 3
    assert {p.parent.name for p in images} >= {"10_cluster_000", "10_cluster_001"}
    for image in images:
        caption = image.with_suffix(".txt").read_text()
        assert caption.startswith("toonchar, cluster_"), caption
    stats = json.loads((dataset / "stats.json").read_text())
    manifest = (dataset / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == stats["images"] == sum(stats["splits"].values())


def test_a_second_build_runs_nothing_and_dry_run_explains_an_edit(built):
    root, _ = built
    assert "0 ran, 0 restored, 6 up to date" in _ok(_pipemake(root, "build", "--no-progress"))
    text = (root / "pipemake.yaml").read_text()
    assert "min_area: 0.01" in text
    (root / "pipemake.yaml").write_text(text.replace("min_area: 0.01", "min_area: 0.05"))
    out = _ok(_pipemake(root, "dry-run"))
    assert "segment: run: param min_area 0.01 → 0.05" in out
    assert "cluster: maybe: upstream segment will run" in out
    assert "extract: up to date" in out

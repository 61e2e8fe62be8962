"""Tests of the training_data_prep rule: called directly with hand-built contexts, and its
params checked through the CLI before anything runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _character_fixtures import make_characters, render_character
from conftest import refused_before_running
from PIL import Image

from pipemake.rule import Context, RuleError
from pipemake.rules._prep_images import bucket_sizes, dedup, parse_background, split_validation
from pipemake.rules.training_data_prep import TrainingDataPrepRule

SIZES = {"cluster_000": 8, "cluster_001": 6, "cluster_002": 2}


@pytest.fixture(scope="module")
def clustered(tmp_path_factory) -> Path:
    """A clustering-like output: cluster folders, noise/, contact_sheets/, one duplicate."""
    root = tmp_path_factory.mktemp("prep")
    out = root / "clusters"
    rng = np.random.default_rng(0)
    specs = make_characters(4, seed=7)
    for (name, n), spec in zip([*SIZES.items(), ("noise", 2)], specs, strict=True):
        (out / name).mkdir(parents=True)
        for i in range(n):
            render_character(spec, rng, 64).save(out / name / f"img_{i:02d}.png")
    shutil.copyfile(out / "cluster_000/img_00.png", out / "cluster_000/img_dup.png")
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(out / "cluster_001/empty.png")
    (out / "contact_sheets").mkdir()
    Image.new("RGB", (8, 8)).save(out / "contact_sheets/cluster_000.png")
    return root


def _run(root: Path, out_name: str, **config):
    rule = TrainingDataPrepRule()
    config.setdefault("input_dir", "clusters")
    config = {"output_dir": out_name, "resolution": 64, **config}
    ports, problems = rule.ports(config)
    problems += rule.check(ports)
    assert problems == [], problems
    inputs = {}
    for key, value in ports.inputs.items():
        inputs[key] = [root / v for v in value] if isinstance(value, list) else root / value
    out = root / out_name
    out.mkdir()
    values = rule.run(Context(root, inputs, {"output_dir": out}, ports.params))
    return values, out


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_kohya_layout_with_captions(clustered):
    values, out = _run(
        clustered,
        "kohya",
        names={"cluster_000": "alice"},
        trigger="mychar",
        caption="{trigger}, {name}",
        val_fraction=0.25,
        repeats=5,
    )
    assert values["characters"] == ["alice", "cluster_001", "cluster_002"]
    rows = _manifest(out)
    assert len(rows) == values["n_train"] + values["n_validation"]
    alice = [r for r in rows if r["character"] == "alice"]
    assert {r["split"] for r in alice} == {"train", "validation"}
    for row in rows:
        img = out / row["file"]
        assert img.parent.name.split("_", 1)[0] == ("5" if row["split"] == "train" else "1")
        assert img.with_suffix(".txt").read_text().strip() == row["caption"]
        with Image.open(img) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
            assert im.getpixel((0, 0)) == (255, 255, 255)  # white background (padded corner)
    assert alice[0]["caption"] == "mychar, alice"
    assert (out / "train/5_alice").is_dir()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["characters"]["alice"]["train"] + stats["characters"]["alice"]["validation"] == 8
    assert stats["dropped"] == {"near duplicate": 1, "empty (fully transparent)": 1}
    assert {"cluster": "noise", "reason": "noise is only used when listed"} in stats[
        "skipped_clusters"
    ]


def test_imagefolder_layout(clustered):
    values, out = _run(
        clustered,
        "hf",
        layout="imagefolder",
        val_fraction=0.3,
        caption="a picture of {name}",
        background="transparent",
    )
    for split in ("train", "validation"):
        meta = [json.loads(x) for x in (out / split / "metadata.jsonl").read_text().splitlines()]
        assert meta and all(set(m) == {"file_name", "text"} for m in meta)
        for m in meta:
            with Image.open(out / split / m["file_name"]) as im:
                assert im.mode == "RGBA"  # alpha kept
            assert m["text"].startswith("a picture of cluster_")
    assert not list(out.rglob("*.txt"))
    assert values["n_validation"] == sum(1 for r in _manifest(out) if r["split"] == "validation")


def test_split_is_deterministic_and_seeded(clustered):
    _, a = _run(clustered, "s1", val_fraction=0.5, seed=1)
    _, b = _run(clustered, "s2", val_fraction=0.5, seed=1)
    _, c = _run(clustered, "s3", val_fraction=0.5, seed=2)

    def split(out):
        return {r["source"]: r["split"] for r in _manifest(out)}

    assert split(a) == split(b)
    assert split(a) != split(c)
    assert (a / "manifest.jsonl").read_bytes() == (b / "manifest.jsonl").read_bytes()
    keys = [f"k{i}" for i in range(20)]
    assert len(split_validation(keys, 0.25, 0)) == 5
    assert split_validation(keys, 0.25, 0) == split_validation(list(reversed(keys)), 0.25, 0)


def test_dedup_can_be_turned_off(clustered):
    _, out = _run(clustered, "nodedup", dedup=False, clusters=["cluster_000"])
    assert len(_manifest(out)) == 9
    assert dedup([0b1111, 0b1110, 0xFF00FF], 1) == [None, 0, None]


def test_selection_input_dirs_and_name_merging(clustered):
    dirs = ["clusters/cluster_000", "clusters/cluster_001", "clusters/cluster_002"]
    values, out = _run(
        clustered,
        "sel",
        input_dir=None,
        input_dirs=dirs,
        min_size=3,
        names={"cluster_000": "bob", "cluster_001": "bob"},
    )
    assert values["characters"] == ["bob"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["characters"]["bob"]["clusters"] == ["cluster_000", "cluster_001"]
    assert stats["skipped_clusters"] == [
        {"cluster": "cluster_002", "reason": "2 images < min_size"}
    ]
    values, _ = _run(clustered, "sel2", clusters=["cluster_002", "noise"])
    assert values["characters"] == ["cluster_002", "noise"]


@pytest.mark.parametrize("fit", ["crop", "stretch"])
def test_fits_and_buckets(clustered, fit):
    _, out = _run(clustered, f"fit_{fit}", fit=fit, clusters=["cluster_001"])
    assert {(r["width"], r["height"]) for r in _manifest(out)} == {(64, 64)}
    _, out = _run(clustered, f"bucket_{fit}", buckets=True, clusters=["cluster_001"])
    allowed = set(bucket_sizes(64))
    assert all((r["width"], r["height"]) in allowed for r in _manifest(out))
    assert all(w % 8 == 0 and h % 8 == 0 for w, h in allowed)


def test_bad_config_is_caught_by_check():
    rule = TrainingDataPrepRule()
    base = {"input_dir": "c", "output_dir": "o"}
    cases = [
        ({"resolution": 100}, "resolution"),
        ({"resolution": 0}, "resolution"),
        ({"clusters": []}, "clusters"),
        ({"clusters": "some"}, "clusters"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"caption": "{trigger} {who}"}, "caption"),
        ({"background": "plaid"}, "background"),
        ({"input_dirs": ["c/cluster_000"]}, "input_dirs"),
        ({"input_dir": None}, "input_dirs"),
        (
            {"input_dir": None, "input_dirs": ["c/cluster_000"], "names": {"cluster_009": "x"}},
            "names",
        ),
    ]
    for overrides, key in cases:
        ports, problems = rule.ports({**base, **overrides})
        found = [k for k, _ in problems + rule.check(ports)]
        assert key in found, (overrides, found)
    ports, _ = rule.ports(
        {
            **base,
            "input_dir": None,
            "input_dirs": ["{cluster.cluster_dirs}"],
            "names": {"cluster_009": "x"},
        }
    )
    assert rule.check(ports) == []  # not knowable yet: checked at run time


def test_bad_input_at_run_time(clustered):
    with pytest.raises(RuleError, match="cluster_009"):
        _run(clustered, "bad1", names={"cluster_009": "x"})
    with pytest.raises(RuleError, match="empty cluster selection"):
        _run(clustered, "bad2", min_size=100)
    with pytest.raises(RuleError, match="cluster_042"):
        _run(clustered, "bad3", clusters=["cluster_042"])
    assert not list((clustered / "bad1").iterdir())  # nothing done before the error


def test_background_parsing():
    assert parse_background("#f00") == (255, 0, 0)
    assert parse_background("#102030") == (16, 32, 48)
    assert parse_background("transparent") is None
    with pytest.raises(ValueError):
        parse_background("#12")


@pytest.mark.slow
def test_fed_by_the_clustering_rule(tmp_path):
    from _character_fixtures import write_cutouts

    from pipemake.rule import Item
    from pipemake.rules.clustering import ClusteringRule

    labels = write_cutouts(tmp_path / "cut", n_characters=3, per_character=8, seed=4)
    rule = ClusteringRule()
    params = rule.ports({"input_dir": "cut", "output_dir": "clu"})[0].params
    mapped = {
        rel: rule.map_item(
            Context(tmp_path, {"input_dir": tmp_path / "cut" / rel}, {}, params),
            Item(f"cut/{rel}", rel),
        )
        for rel in labels
    }
    (tmp_path / "clusters").mkdir()
    ctx = Context(
        tmp_path, {"input_dir": tmp_path / "cut"}, {"output_dir": tmp_path / "clusters"}, params
    )
    cluster_values = rule.reduce(ctx, mapped)
    dirs = [f"clusters/{d}" for d in cluster_values["cluster_dirs"]]  # as the engine resolves
    values, out = _run(
        tmp_path,
        "ds",
        input_dir=None,
        input_dirs=dirs,
        val_fraction=0.25,
        names={"cluster_000": "alice"},
    )
    assert len(values["characters"]) == cluster_values["n_clusters"] == 3
    assert values["n_train"] + values["n_validation"] == 24 - cluster_values["n_noise"]
    whole, _ = _run(tmp_path, "ds2", val_fraction=0.25, names={"cluster_000": "alice"})
    assert whole == values  # the whole clustering output gives the same set


@pytest.mark.parametrize("alias", ["character_dirs", "cluster_dirs"])
def test_original_keys_are_input_dirs(clustered, alias):
    """The original pipeline system's ``character_dirs`` (and ``cluster_dirs``) is
    ``input_dirs``: same ports, same key, same result."""
    rule = TrainingDataPrepRule()
    dirs = ["clusters/cluster_000", "clusters/cluster_001"]
    plain = rule.ports({"input_dirs": dirs, "output_dir": "o"})
    aliased = rule.ports({alias: dirs, "output_dir": "o"})
    assert aliased == plain and aliased[1] == []
    values, _ = _run(clustered, f"alias_{alias}", input_dir=None, **{alias: dirs})
    assert values["characters"] == ["cluster_000", "cluster_001"]
    ports, problems = rule.ports({"character_dir": "clusters", "output_dir": "o"})
    assert problems == [] and ports.inputs == {"input_dir": "clusters"}


def test_both_a_key_and_its_alias_is_a_problem():
    rule = TrainingDataPrepRule()
    _, problems = rule.ports({"input_dirs": ["a"], "character_dirs": ["b"], "output_dir": "o"})
    [(key, msg)] = problems
    assert key == "character_dirs" and "input_dirs" in msg and "give one" in msg


def test_an_empty_cluster_list_says_no_clusters(clustered):
    """What ``{cluster.cluster_dirs}`` becomes when the clustering found no character."""
    rule = TrainingDataPrepRule()
    ports, problems = rule.ports({"character_dirs": [], "output_dir": "o"})
    assert problems == []
    [(key, msg)] = rule.check(ports)
    assert key == "input_dirs"
    assert msg.startswith("no clusters:") and "0 character folders" in msg
    assert "min_cluster_size" in msg and "exactly one" not in msg
    out = clustered / "none"
    out.mkdir()
    ctx = Context(clustered, {"input_dirs": []}, {"output_dir": out}, ports.params)
    with pytest.raises(RuleError, match="^no clusters:"):
        rule.run(ctx)
    assert not list(out.iterdir())


# ---------------------------------------------------------------------------------------
# every param's range, checked before anything runs (through the CLI, as a user meets it)

#: a user's pipeline: prepare reads ``{cluster.cluster_dirs}``, a list the clustering
#: computes, so its input is not known before the clustering has run
PIPELINE = """
name: ranges
stages:
  - id: cluster
    type: clustering
    config:
      input_dir: cutouts
      output_dir: build/clusters
  - id: prepare
    type: training_data_prep
    config:
      character_dirs: "{cluster.cluster_dirs}"
      output_dir: build/training
      BAD
"""
BAD_LINE = PIPELINE.lstrip().splitlines().index("      BAD") + 1

#: (the line the pipeline gets, words the message must hold: value, range, what to do)
BAD_VALUES = [
    ("val_fraction: 1.5", ["'val_fraction' is 1.5", "must be >= 0 and < 1", "up to (not incl"]),
    ("val_fraction: 1.0", ["'val_fraction' is 1.0", "must be >= 0 and < 1"]),
    ("val_fraction: -0.2", ["'val_fraction' is -0.2", "must be >= 0 and < 1"]),
    ("val_fraction: .nan", ["'val_fraction' is nan", "must be >= 0 and < 1"]),
    ("resolution: -512", ["'resolution' is -512", "a multiple of 8 from 8 to 8192"]),
    ("resolution: 0", ["'resolution' is 0", "a multiple of 8 from 8 to 8192", "e.g. 8"]),
    ("resolution: 100", ["'resolution' is 100", "a multiple of 8", "e.g. 96"]),
    ("resolution: 16384", ["'resolution' is 16384", "from 8 to 8192", "e.g. 8192"]),
    ("repeats: -1", ["'repeats' is -1", "must be >= 1", "set it to 1 or more"]),
    ("repeats: 0", ["'repeats' is 0", "must be >= 1"]),
    ("dedup_threshold: -3", ["'dedup_threshold' is -3", "from 0 to 256"]),
    ("dedup_threshold: 257", ["'dedup_threshold' is 257", "from 0 to 256"]),
    ("min_size: -10", ["'min_size' is -10", "must be >= 1", "default 1"]),
    ("min_size: 0", ["'min_size' is 0", "must be >= 1"]),
    ("clusters: some", ["'clusters' is 'some'", '"all" or a list of cluster names']),
    ("clusters: []", ["empty cluster selection"]),
    ("clusters: [1, 2]", ["'clusters' is [1, 2]", "must list cluster folder names"]),
    ("names: {cluster_000: ''}", ["maps 'cluster_000' to ''", "a non-empty name"]),
    ("background: plaid", ["background 'plaid'", "#rrggbb"]),
    ("fit: squash", ["'squash' is not one of", "'pad'"]),
    ("layout: diffusers", ["'diffusers' is not one of", "'kohya'"]),
]


@pytest.mark.parametrize(("line", "words"), BAD_VALUES, ids=[v[0] for v in BAD_VALUES])
def test_a_bad_value_is_a_pipeline_error_before_anything_runs(project, line, words):
    proj = project(PIPELINE.replace("BAD", line))
    proj.path("cutouts").mkdir()
    refused_before_running(proj, BAD_LINE, "prepare", words)  # nor did the clustering


def test_the_edges_of_the_ranges_are_valid(project):
    edges = "val_fraction: 0\n      resolution: 8192\n      dedup_threshold: 256\n      repeats: 1"
    proj = project(PIPELINE.replace("BAD", edges))
    proj.path("cutouts").mkdir()
    assert "is valid" in proj.cli("validate").output
    proj.edit("pipemake.yaml", "val_fraction: 0\n", "val_fraction: 0.99\n      min_size: 1\n")
    proj.edit("pipemake.yaml", "resolution: 8192", "resolution: 8")
    assert "is valid" in proj.cli("validate").output


def test_unknown_cluster_names_have_one_check_for_both_times(clustered):
    """Literal cluster folders are checked before running, a clustering output's folders
    when they are found: the same words either way."""
    rule = TrainingDataPrepRule()
    dirs = {"input_dir": None, "input_dirs": ["clusters/cluster_000"]}
    ports, _ = rule.ports({**dirs, "output_dir": "o", "names": {"cluster_009": "x"}})
    [(key, before)] = rule.check(ports)
    with pytest.raises(RuleError) as during:
        _run(clustered, "names_late", names={"cluster_009": "x"})
    assert key == "names" and before.split("(have:")[0] == str(during.value).split("(have:")[0]

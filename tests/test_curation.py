"""Curation: the file format, the apply logic, and corrections that survive a rebuild.

The pipeline tests build a real clustering → training_data_prep pipeline through the CLI,
correct it through curation.yaml (as ``pipemake serve`` writes it) and check that only the
prep reruns, and that the corrections hold after the clustering is rebuilt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipemake import curation as cm

A, B, C, D = ("a" * 16, "b" * 16, "c" * 16, "d" * 16)


def test_missing_file_means_no_corrections(tmp_path):
    cur = cm.load(tmp_path / "curation.yaml")
    assert (cur.names, cur.assign, cur.captions) == ({}, {}, {})


def test_round_trip_is_sorted_and_reviewable(tmp_path):
    cur = cm.Curation()
    cm.name_cluster(cur, [B, A], "alice")
    cm.move(cur, C, "bob")
    cm.reject(cur, D)
    cm.set_caption(cur, A, "alice, smiling")
    path = tmp_path / "curation.yaml"
    cm.save(path, cur)
    text = path.read_text()
    assert text.index(A) < text.index(B)  # sorted by id: stable diffs
    assert "rejected" in text and text.startswith("# pipemake curation")
    again = cm.load(path)
    assert again == cur
    assert [p.name for p in tmp_path.iterdir()] == ["curation.yaml"]  # no temporary left


def test_save_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n")
    (tmp_path / "proj").mkdir()
    link = tmp_path / "proj" / "curation.yaml"
    link.symlink_to(outside)
    cm.save(link, cm.Curation(names={A: "x"}))
    assert outside.read_text() == "keep me\n"
    assert not link.is_symlink() and cm.load(link).names == {A: "x"}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("names: [1, 2]", "names must be a mapping"),
        ("names: {abc: alice}", "not a cut-out id"),
        (f"names: {{{A}: rejected}}", "reserved"),
        (f"assign: {{{A}: ''}}", "non-empty"),
        (f"assign: {{{A}: a/b}}", "no /"),
        (f"captions: {{{A}: 3}}", "caption must be a string"),
        ("version: 7", "version 7"),
        ("colours: {}", "unknown key(s) colours"),
        ("names: {a: [", "not valid YAML"),
    ],
)
def test_bad_files_say_what_and_where(tmp_path, text, says):
    path = tmp_path / "curation.yaml"
    path.write_text(text + "\n")
    with pytest.raises(cm.CurationError) as info:
        cm.load(path)
    assert says in str(info.value) and "curation.yaml" in str(info.value)


def test_a_cluster_takes_the_name_most_of_its_named_members_carry():
    cur = cm.Curation(names={A: "alice", B: "alice", C: "carol"})
    members = {A: "cluster_000", B: "cluster_000", C: "cluster_000", D: "cluster_001"}
    assert cm.cluster_names(members, cur) == {"cluster_000": "alice"}
    placed = cm.apply(members, cur, {"cluster_001": "dora"})
    assert placed[C].character == "alice"  # the majority wins over the member's own vote
    assert placed[D].character == "dora" and not placed[D].reviewed
    assert placed[A].reviewed


def test_assign_moves_and_rejects_over_the_cluster_name():
    cur = cm.Curation(names={A: "alice", B: "alice"}, assign={B: "bob", C: cm.REJECTED})
    placed = cm.apply({A: "k0", B: "k0", C: "k1"}, cur)
    assert (placed[A].character, placed[B].character, placed[C].character) == (
        "alice",
        "bob",
        None,
    )
    assert placed[B].moved and not placed[C].moved
    cm.unassign(cur, C)
    assert cm.apply({C: "k1"}, cur)[C].character == "k1"


def test_actions_refuse_bad_names_and_ids():
    cur = cm.Curation()
    with pytest.raises(cm.CurationError):
        cm.name_cluster(cur, [A], "rejected")
    with pytest.raises(cm.CurationError):
        cm.move(cur, "../../etc", "bob")
    with pytest.raises(cm.CurationError):
        cm.set_caption(cur, A, "two\nlines")
    assert cur == cm.Curation()


def test_content_id_is_the_file_sha256_prefix(tmp_path):
    import hashlib

    f = tmp_path / "x.png"
    f.write_bytes(b"pixels")
    assert cm.content_id(f) == hashlib.sha256(b"pixels").hexdigest()[:16]


def test_the_engine_module_imports_no_numpy():
    import subprocess
    import sys

    code = "import sys, pipemake.curation; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


# the pipeline: corrections survive rebuilds ------------------------------------------------

pytest.importorskip("sklearn")
pytest.importorskip("PIL")

PIPELINE = """
name: curated
stages:
  - id: cluster
    type: clustering
    config:
      input_dir: cut
      output_dir: build/clusters
      min_cluster_size: 3
  - id: prepare
    type: training_data_prep
    config:
      input_dirs: "{cluster.cluster_dirs}"
      output_dir: build/dataset
      curation: curation.yaml
      resolution: 64
      dedup: false
      val_fraction: 0
      caption: "{{name}}"
"""


def _clusters(root: Path) -> dict[str, list[str]]:
    data = json.loads((root / "build/clusters/clusters.json").read_text())
    return {k: v["files"] for k, v in data["clusters"].items() if k != "noise"}


def _dataset(root: Path) -> dict[str, dict]:
    """Source file name → manifest row."""
    rows = [
        json.loads(x) for x in (root / "build/dataset/manifest.jsonl").read_text().split("\n") if x
    ]
    return {r["source"].split("/", 1)[1]: r for r in rows}


@pytest.fixture
def curated(project):
    from _character_fixtures import write_cutouts

    proj = project(PIPELINE)
    write_cutouts(proj.root / "cut", n_characters=3, per_character=6, seed=4, size=64)
    proj.write("curation.yaml", "version: 1\n")
    out = proj.cli("build", "--no-progress").output
    assert "2 ran" in out
    return proj


@pytest.mark.slow
def test_corrections_rerun_only_prep_and_survive_a_clustering_rebuild(curated):
    root = curated.root
    clusters = _clusters(root)
    assert len(clusters) == 3
    first, second = sorted(clusters)[:2]
    ids = {f: cm.content_id(root / "cut" / f) for fs in clusters.values() for f in fs}
    moved, rejected = clusters[second][0], clusters[second][1]
    cur = cm.load(root / "curation.yaml")
    cm.name_cluster(cur, [ids[f] for f in clusters[first]], "alice")
    cm.move(cur, ids[moved], "alice")
    cm.reject(cur, ids[rejected])
    cm.set_caption(cur, ids[moved], "+ moved by hand")
    cm.save(root / "curation.yaml", cur)

    out = curated.cli("build", "--no-progress").output
    assert "1 ran, 0 restored, 1 up to date" in out

    def check() -> None:
        data = _dataset(root)
        assert rejected not in data
        assert data[moved]["character"] == "alice"
        assert data[moved]["caption"] == "alice, moved by hand"
        assert {data[f]["character"] for f in clusters[first]} == {"alice"}
        folders = {p.name for p in (root / "build/dataset/train").iterdir()}
        assert "10_alice" in folders and f"10_{first}" not in folders
        assert not any(rejected[:-4] in p.name for p in (root / "build/dataset").rglob("*"))
        stats = json.loads((root / "build/dataset/stats.json").read_text())
        assert stats["dropped"] == {"rejected (curation)": 1}
        # the untouched third cluster is unreviewed; the named, moved, rejected ones are not
        assert stats["unreviewed"] == len(clusters[sorted(clusters)[2]]) + len(clusters[second]) - 2

    check()
    # a rebuild of the clustering (other params: other folders possibly) keeps all three
    curated.edit("pipemake.yaml", "min_cluster_size: 3", "min_cluster_size: 2\n      pca_dims: 8")
    out = curated.cli("build", "--no-progress").output
    assert "2 ran" in out
    check()


@pytest.mark.slow
def test_a_broken_curation_file_fails_the_prep_naming_it(curated):
    curated.write("curation.yaml", "names: {zz: alice}\n")
    result = curated.cli("build", "--no-progress", code=1)
    assert "curation.yaml" in result.output and "not a cut-out id" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_a_missing_curation_file_is_a_pipeline_error_saying_what_to_do(curated):
    (curated.root / "curation.yaml").unlink()
    result = curated.cli("build", "--no-progress", code=2)
    assert "curation.yaml does not exist" in result.output and "prepare" in result.output

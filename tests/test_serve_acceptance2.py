"""The second acceptance review of ``pipemake serve``, ``report`` and curation (issue 17):
malformed curation actions, captions no file can hold, run logs and stage outputs of another
shape, the curation file the build really reads, and the ``--host`` hint. In-process
(Starlette's TestClient, click's CliRunner): a 500 raises in the test."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
Image = pytest.importorskip("PIL.Image")

from conftest import TRACEBACK  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from pipemake import curation as cm  # noqa: E402
from pipemake import eventshape  # noqa: E402
from pipemake.errors import UsageError  # noqa: E402
from pipemake.eta import Estimator  # noqa: E402
from pipemake.events import Event  # noqa: E402
from pipemake.serve import serve  # noqa: E402
from pipemake.serve.app import make_app  # noqa: E402
from pipemake.serve.data import Site, TooLarge, fold_run, thumbnail  # noqa: E402
from pipemake.serve.report import write_report  # noqa: E402

CURATED = """
name: curated
stages:
  - id: cluster
    type: clustering
    config: {input_dir: cut, output_dir: build/clusters}
  - id: prepare
    type: training_data_prep
    config:
      input_dirs: "{cluster.cluster_dirs}"
      output_dir: build/dataset
      curation: curation.yaml
      resolution: 64
      dedup: false
"""
COLOURS = {"cluster_000": ["a.png", "b.png"], "cluster_001": ["c.png"]}


def _png(path: Path, colour: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", (24, 24), (colour, 40, 200 - colour, 255)).save(path)


@pytest.fixture
def curated(project):
    """A clustering → prep project whose clustering output is written here (no build):
    two clusters, three cut-outs, an empty curation.yaml."""
    proj = project(CURATED, {"curation.yaml": "version: 1\n"})
    clusters: dict[str, Any] = {}
    for i, (name, files) in enumerate(COLOURS.items()):
        for j, f in enumerate(files):
            _png(proj.root / "cut" / f, 30 * i + 10 * j)
            (proj.root / "build/clusters" / name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(proj.root / "cut" / f, proj.root / "build/clusters" / name / f)
        clusters[name] = {"size": len(files), "files": files}
    doc = {"clusters": clusters, "n_clusters": 2, "n_noise": 0, "algorithm": "auto"}
    proj.write("build/clusters/clusters.json", json.dumps(doc))
    return proj


def _client(proj) -> TestClient:
    return TestClient(make_app(Site(proj.root / "pipemake.yaml")))


def _id(proj, name: str = "a.png") -> str:
    return cm.content_id(proj.root / "cut" / name)


# 1. malformed actions ---------------------------------------------------------------------

DEEP = "[" * 30000 + "]" * 30000  # under the size limit, beyond the JSON decoder's recursion
MALFORMED = {
    "deeply nested list": DEEP,
    "deeply nested object": '{"a":' * 8000 + "1" + "}" * 8000,
    "cluster a list": {"action": "rename", "stage": "cluster", "cluster": ["a"], "name": "x"},
    "cluster an object": {"action": "merge", "stage": "cluster", "cluster": {"a": 1}, "into": "x"},
    "no action": {"a": 1},
    "name a number": {"action": "rename", "stage": "cluster", "cluster": "cluster_000", "name": 5},
    "id a number": {"action": "reject", "id": 12},
    "text missing": {"action": "caption", "id": "0123456789abcdef"},
    "another field": {"action": "reject", "id": "0123456789abcdef", "path": "/etc/passwd"},
    "a list": [1, 2],
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_actions_are_400_and_change_nothing(curated, body):
    before = curated.read("curation.yaml")
    content = body if isinstance(body, str) else json.dumps(body)
    r = _client(curated).post(
        "/api/curate", content=content, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"].startswith("bad action"), r.text
    assert curated.read("curation.yaml") == before


def test_an_action_larger_than_any_caption_is_413(curated):
    body = {"action": "caption", "id": _id(curated), "text": "x" * 100_000}
    r = _client(curated).post("/api/curate", json=body)
    assert r.status_code == 413 and "at most" in r.json()["error"]


# 2. captions and names that are not one line of text ------------------------------------

NOT_ONE_LINE = ["\ud800", "\udfff", "\u2028", "\u2029", "\v", "\f", "\x85", "\x1c", "\x00", "\x7f"]


@pytest.mark.parametrize("char", NOT_ONE_LINE, ids=[f"U+{ord(c):04X}" for c in NOT_ONE_LINE])
def test_a_caption_that_is_not_one_line_of_text_is_refused(curated, char):
    before = curated.read("curation.yaml")
    c = _client(curated)
    r = _post(c, {"action": "caption", "id": _id(curated), "text": f"a{char}b"})
    assert r.status_code == 400 and "caption" in r.json()["error"], r.text
    assert f"U+{ord(char):04X}" in r.json()["error"] or "line" in r.json()["error"]
    body = {"action": "rename", "stage": "cluster", "cluster": "cluster_000", "name": f"x{char}y"}
    assert _post(c, body).status_code == 400
    assert curated.read("curation.yaml") == before


def _post(c: TestClient, body: dict[str, str]) -> Any:
    """POST an action as ASCII JSON (a lone surrogate as ``\\ud800``, as a browser sends it)."""
    return c.post(
        "/api/curate", content=json.dumps(body), headers={"content-type": "application/json"}
    )


def test_a_tab_in_a_caption_is_kept(curated):
    r = _client(curated).post(
        "/api/curate", json={"action": "caption", "id": _id(curated), "text": "a\tb"}
    )
    assert r.status_code == 200
    assert cm.load(curated.root / "curation.yaml").captions == {_id(curated): "a\tb"}


PREP_ONLY = """
name: prep
stages:
  - id: prepare
    type: training_data_prep
    config:
      input_dir: clusters
      output_dir: build/dataset
      curation: curation.yaml
      resolution: 32
      dedup: false
"""


@pytest.mark.parametrize(
    ("section", "value", "says"),
    [
        ("captions", '"bad\\ud800"', "lone surrogate"),
        ("captions", '"top\\u2028bottom"', "line separator"),
        ("names", '"x\\vy"', "vertical tab"),
    ],
)
def test_a_caption_no_file_can_hold_fails_the_prep_naming_the_entry(project, section, value, says):
    proj = project(PREP_ONLY)
    _png(proj.root / "clusters/cluster_000/a.png", 10)
    _png(proj.root / "clusters/cluster_000/b.png", 60)
    cid = cm.content_id(proj.root / "clusters/cluster_000/a.png")
    proj.write("curation.yaml", f"version: 1\n{section}:\n  {cid}: {value}\n")
    result = proj.cli("build", "--no-progress", code=1)
    assert "curation.yaml" in result.output and cid in result.output and says in result.output
    assert TRACEBACK not in result.output


# 3. run logs of another shape ---------------------------------------------------------------

SMALL = """
name: small
stages:
  - id: make
    type: shell
    config:
      cmd: "mkdir -p {outputs.d} && echo hi > {outputs.d}/a.txt && echo made"
      outputs: {d: build/made}
  - id: after
    type: shell
    config:
      cmd: "cat {inputs.i}/a.txt > {outputs.o}"
      inputs: {i: "{make.d}"}
      outputs: {o: build/after.txt}
"""


def _poison(event: dict[str, Any], kind: str) -> None:
    what = event["event"]
    changes = {
        ("expected as text", "run_started"): {"expected": {"make": "soon", "after": "later"}},
        ("jobs as text", "run_started"): {"jobs": "two"},
        ("stages not a list", "run_started"): {"stages": 5},
        ("deps not a mapping", "run_started"): {"deps": ["x"]},
        ("per_item a list", "run_started"): {"per_item": [1]},
        ("duration as text", "stage_finished"): {"duration": "long"},
        ("time as text", "stage_started"): {"time": "noon"},
        ("reasons a string", "stage_started"): {"reasons": "because"},
        ("stage id a list", "log"): {"stage": ["x"]},
        ("failed a list", "run_finished"): {"failed": ["make"]},
        ("run duration as text", "run_finished"): {"duration": "long"},
    }
    event.update(changes.get((kind, what), {}))


KINDS = [
    "expected as text", "jobs as text", "stages not a list", "deps not a mapping",
    "per_item a list", "duration as text", "time as text", "reasons a string",
    "stage id a list", "failed a list", "run duration as text",
]  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small project built twice (so a run has one before it), to copy and poison."""
    from conftest import Proj

    proj = Proj(tmp_path_factory.mktemp("built") / "ws")
    proj.pipeline(SMALL)
    proj.cli("build", "--no-progress")
    proj.cli("build", "--no-progress", "--force")
    return proj.root


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_log_of_another_shape_still_shows_and_reports(built, tmp_path, kind):
    root = tmp_path / "ws"
    shutil.copytree(built, root, symlinks=True)
    runs = root / ".pipemake/runs"
    for log in [p for p in runs.glob("*.jsonl") if p.name != "index.jsonl"]:
        events = [json.loads(line) for line in log.read_text().splitlines()]
        for ev in events:
            _poison(ev, kind)
        log.write_text("".join(json.dumps(ev) + "\n" for ev in events))
    c = TestClient(make_app(Site(root / "pipemake.yaml")))
    first = c.get("/api/runs").json()[0]["id"]
    for path in ("/now", "/api/now", "/history", "/history/-1", f"/history/{first}"):
        assert c.get(path).status_code == 200, path
    out = write_report(root / "pipemake.yaml", tmp_path / "r.html")
    assert "Run " in out.read_text()


def test_odd_fields_are_read_as_unknown():
    ev = eventshape.event(
        {"event": "run_started", "time": "noon", "stages": ["a", 5, "b"], "deps": ["x"],
         "expected": {"a": "soon", "b": 2.5, "c": None}, "per_item": {"a": [1]}, "jobs": "two"}
    )  # fmt: skip
    assert ev == {"event": "run_started", "stages": ["a", "b"], "expected": {"b": 2.5, "c": None},
                  "per_item": {}}  # fmt: skip
    assert eventshape.event({"event": "log", "stage": ["x"]}) is None
    assert eventshape.event([1, 2]) is None
    assert eventshape.event({"event": "run_finished", "failed": ["a"]})["failed"] == {"a": ""}
    assert eventshape.summary({"id": ["x"]}) is None
    assert eventshape.summary({"id": "r1", "started": "noon", "ran": 2}) == {"id": "r1", "ran": 2}
    run = fold_run(
        [{"event": "stage_finished", "stage": "a", "duration": 3.0},  # no time
         {"event": "progress", "stage": "a", "time": "x", "done": "a", "total": "b"}]
    )  # fmt: skip
    assert run["stages"]["a"]["state"] == "ran" and "first" not in run["stages"]["a"]


def test_the_estimator_reads_logged_values_of_another_type_as_unknown():
    est = Estimator(clock=lambda: 10.0)
    data = {"stages": 5, "deps": ["x"], "expected": {"a": "soon"}, "per_item": [1], "jobs": "x"}
    est(Event("run_started", None, data, 0.0))
    assert est.order == [] and est.deps == {} and est.expected == {} and est.jobs is None
    data = {"stages": ["a"], "deps": {"a": [["x"], "z"]}, "expected": {"a": 4}}
    est(Event("run_started", None, data, 0.0))
    assert est.deps == {"a": ["z"]}
    est(Event("stage_started", "a", {"items": "many"}, 1.0))
    est(Event("progress", "a", {"done": "a", "total": "b"}, 2.0))
    assert est.remaining(3.0) == 2.0  # the last duration, less the time it has run


# 4. stage outputs of another shape ----------------------------------------------------------


def _claims(width: int, height: int) -> bytes:
    """A few hundred bytes of valid PNG whose header claims ``width`` × ``height``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    head = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width // 8 + 2) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [30000, 10000], ids=["past Pillow's limit", "past ours"])
def test_a_thumbnail_of_an_image_too_large_is_422_not_a_500(curated, side):
    curated.write("build/clusters/cluster_000/bomb.png", _claims(side, side))
    with pytest.raises(TooLarge):
        thumbnail(curated.root / "build/clusters/cluster_000/bomb.png", 160)
    r = _client(curated).get("/thumb/cluster/cluster_000/bomb.png")
    assert r.status_code == 422 and "too large" in r.json()["error"]


def test_the_report_leaves_out_a_thumbnail_too_large(curated, tmp_path):
    curated.write("build/clusters/cluster_000/bomb.png", _claims(30000, 30000))
    doc = json.loads(curated.read("build/clusters/clusters.json"))
    doc["clusters"]["cluster_000"]["files"].append("bomb.png")
    curated.write("build/clusters/clusters.json", json.dumps(doc))
    _fake_run(curated.root)
    text = write_report(curated.root / "pipemake.yaml", tmp_path / "r.html").read_text()
    assert 'alt="bomb.png" src=""' in text and text.count("data:image/jpeg") == 3


def _fake_run(root: Path) -> None:
    runs = root / ".pipemake/runs"
    runs.mkdir(parents=True)
    (runs / "r1.jsonl").write_text(
        json.dumps({"event": "run_started", "run": "r1", "time": 1.0, "stages": ["cluster"]})
        + "\n"
        + json.dumps({"event": "run_finished", "time": 2.0, "duration": 1.0, "failed": {}})
        + "\n"
    )


def test_a_file_listed_but_missing_leaves_the_rest_of_the_cluster_shown(curated):
    doc = json.loads(curated.read("build/clusters/clusters.json"))
    doc["clusters"]["cluster_000"]["files"].append("ghost.png")
    curated.write("build/clusters/clusters.json", json.dumps(doc))
    r = _client(curated).get("/dataset/cluster")
    assert r.status_code == 200
    assert 'alt="a.png"' in r.text and 'alt="b.png"' in r.text and 'alt="c.png"' in r.text
    assert "ghost.png" in r.text and "not shown" in r.text


# 5. the curation file the build reads ----------------------------------------------------------


def test_a_curation_file_outside_the_project_is_refused_saying_why(curated):
    shared = curated.root.parent / "shared_cur.yaml"
    shared.write_text("version: 1\n")
    curated.edit("pipemake.yaml", "curation: curation.yaml", "curation: ../shared_cur.yaml")
    c = _client(curated)
    r = c.post("/api/curate", json={"action": "reject", "id": _id(curated)})
    assert r.status_code == 400
    assert "../shared_cur.yaml" in r.json()["error"] and "outside the project" in r.json()["error"]
    assert shared.read_text() == "version: 1\n" and curated.read("curation.yaml") == "version: 1\n"
    assert "cannot be saved" in c.get("/dataset/cluster").text


def test_the_curation_file_the_prep_names_is_the_one_written(curated):
    curated.write("meta/cur.yaml", "version: 1\n")
    curated.edit("pipemake.yaml", "curation: curation.yaml", "curation: meta/cur.yaml")
    c = _client(curated)
    r = c.post("/api/curate", json={"action": "reject", "id": _id(curated)})
    assert r.status_code == 200 and r.json()["file"] == "meta/cur.yaml"
    assert cm.load(curated.root / "meta/cur.yaml").assign == {_id(curated): "rejected"}
    assert curated.read("curation.yaml") == "version: 1\n"
    assert "corrections go to meta/cur.yaml" in c.get("/dataset/cluster").text


def test_a_symlinked_curation_file_is_not_written_through(curated):
    outside = curated.root.parent / "outside.yaml"
    outside.write_text("version: 1\n")
    (curated.root / "curation.yaml").unlink()
    os.symlink(outside, curated.root / "curation.yaml")
    r = _client(curated).post("/api/curate", json={"action": "reject", "id": _id(curated)})
    assert r.status_code == 400 and "symlink" in r.json()["error"]
    assert outside.read_text() == "version: 1\n" and (curated.root / "curation.yaml").is_symlink()


def test_an_unreadable_curation_file_is_said_and_never_overwritten(curated):
    broken = "version: 1\nnames: [unclosed\n"
    curated.write("curation.yaml", broken)
    c = _client(curated)
    page = c.get("/dataset/cluster")
    assert page.status_code == 200
    assert "curation file is unreadable" in page.text and "line 3" in page.text
    r = c.post("/api/curate", json={"action": "reject", "id": _id(curated)})
    assert r.status_code == 400 and "curation.yaml" in r.json()["error"]
    assert curated.read("curation.yaml") == broken


def test_a_curation_file_no_stage_reads_is_written_with_a_warning(curated):
    curated.edit("pipemake.yaml", "      curation: curation.yaml\n", "")
    c = _client(curated)
    r = c.post("/api/curate", json={"action": "reject", "id": _id(curated)})
    assert r.status_code == 200 and "curation: curation.yaml" in r.json()["warning"]
    assert "no training_data_prep stage reads it" in c.get("/dataset/cluster").text


# 6. the --host hint, the favicon -------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "says"),
    [("no.such.host.invalid", "does not resolve"), ("192.0.2.1", "not an address of this")],
)
def test_a_host_serve_cannot_listen_on_gets_a_hint_about_the_host(curated, host, says):
    with pytest.raises(UsageError) as info:
        serve(curated.root / "pipemake.yaml", host=host, port=0, say=lambda _: None)
    assert says in str(info.value) and "--port" not in str(info.value)


def test_the_favicon_is_no_content_not_a_404(curated):
    assert _client(curated).get("/favicon.ico").status_code == 204

"""pipemake serve's HTTP endpoints without a browser (starlette's TestClient), the token,
path escapes, the curation API, ``pipemake report`` and the ``serve`` command itself."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402

from pipemake import curation as cm  # noqa: E402
from pipemake.serve import is_loopback  # noqa: E402
from pipemake.serve.app import make_app  # noqa: E402
from pipemake.serve.data import Site  # noqa: E402

FAILING = r"""
name: small
stages:
  - id: make
    type: shell
    config:
      cmd: "mkdir -p {outputs.d}/sub && echo hi > {outputs.d}/a.txt && echo made"
      outputs: {d: build/made}
  - id: boom
    type: shell
    config:
      cmd: "cat {inputs.i}/a.txt; printf 'first line\nsecond line\nTHE LAST LINE\n' >&2; exit 4"
      inputs: {i: "{make.d}"}
      outputs: {o: build/boom.txt}
"""


@pytest.fixture
def failed(project):
    proj = project(FAILING)
    proj.write("secret.txt", "do not serve\n")
    proj.cli("build", "--no-progress", code=1)
    return proj


def _client(proj, token: str | None = None) -> TestClient:
    return TestClient(make_app(Site(proj.root / "pipemake.yaml"), token))


def test_pages_answer_without_a_build_running(failed):
    c = _client(failed)
    now = c.get("/now")
    assert now.status_code == 200 and 'data-result="failed"' in now.text
    hist = c.get("/history")
    assert hist.status_code == 200
    (run,) = [r["id"] for r in c.get("/api/runs").json()]
    assert run in hist.text
    page = c.get(f"/history/{run}")
    assert page.status_code == 200
    # the failed stage's error in full, every line of it, in the log viewer
    for line in ("exited with code 4", "first line", "second line", "THE LAST LINE"):
        assert line in page.text
    assert "<svg class=gantt" in page.text
    assert c.get("/dataset").status_code == 200
    assert c.get("/").url.path == "/now"


def test_unknown_run_and_stage_are_404(failed):
    c = _client(failed)
    assert c.get("/history/nope").status_code == 404
    assert c.get("/dataset/nope").status_code == 404
    assert c.get("/dataset/make").status_code == 404  # a shell stage has no dataset view
    assert c.get("/file/nope/a.txt").status_code == 404
    assert c.get("/static/../pyproject.toml").status_code == 404


@pytest.mark.parametrize(
    "path",
    ["%2e%2e/%2e%2e/secret.txt", "sub/../../../secret.txt", "..%2F..%2Fsecret.txt", "sub"],
)
def test_paths_leaving_the_outputs_are_refused(failed, path):
    c = _client(failed)
    assert c.get("/file/make/a.txt").text == "hi\n"
    r = c.get(f"/file/make/{path}")
    assert r.status_code in (403, 404)
    assert "do not serve" not in r.text


def test_an_absolute_path_is_refused(failed):
    r = _client(failed).get(f"/file/make//{failed.root}/secret.txt")
    assert r.status_code in (403, 404) and "do not serve" not in r.text


def test_symlinks_in_the_outputs_are_not_followed(failed):
    out = failed.root / "build" / "made"
    os.symlink(failed.root / "secret.txt", out / "link.txt")
    os.symlink(failed.root, out / "up")
    c = _client(failed)
    for path in ("link.txt", "up/secret.txt"):
        r = c.get(f"/file/make/{path}")
        assert r.status_code == 403 and "do not serve" not in r.text
        assert c.get(f"/thumb/make/{path}").status_code == 403


def test_a_token_guards_every_page(failed):
    c = _client(failed, token="s3cret-token")
    r = c.get("/now")
    assert r.status_code == 401 and "token" in r.text.lower() and "<form" in r.text
    assert c.get("/api/runs").status_code == 401
    assert c.get("/file/make/a.txt").status_code == 401
    assert c.post("/api/curate", json={"action": "reject", "id": "a" * 16}).status_code == 401
    assert c.post("/login", data={"token": "wrong"}).status_code == 401
    r = c.post("/login", data={"token": "s3cret-token"}, follow_redirects=False)
    assert r.status_code == 303 and "pipemake_token" in r.headers["set-cookie"]
    assert c.get("/now").status_code == 200  # the cookie now
    other = _client(failed, token="s3cret-token")
    assert other.get("/history?token=s3cret-token").status_code == 200
    assert other.get("/history").status_code == 200  # the cookie set by ?token=


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_the_now_stream_sends_the_state(failed):
    app = make_app(Site(failed.root / "pipemake.yaml"), poll=0.05)
    with TestClient(app) as c, c.stream("GET", "/api/now/stream") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                assert 'data-result=\\"failed\\"' in line
                break


def test_report_is_one_offline_file(failed, tmp_path):
    out = tmp_path / "r" / "report.html"
    result = failed.cli("report", "-o", str(out))
    assert "wrote" in result.output
    text = out.read_text()
    assert "THE LAST LINE" in text and "<style>" in text
    assert "<script src" not in text and "<link" not in text and "http://" not in text
    assert "https://" not in text


def test_report_before_any_build_says_so(project, tmp_path):
    proj = project("name: x\nstages:\n  - id: a\n    type: shell\n    config: {cmd: 'true'}\n")
    r = proj.cli("report", "-o", str(tmp_path / "r.html"), code=2)
    assert "no runs recorded yet" in r.output and not (tmp_path / "r.html").exists()
    proj.cli("build", "--no-progress")
    r = proj.cli("report", "nosuchrun", "-o", str(tmp_path / "r.html"), code=2)
    assert "no run matches" in r.output
    r = proj.cli("report", "-o", str(tmp_path), code=2)
    assert "is a folder" in r.output
    proj.cli("build", "--no-progress")
    runs = [r["id"] for r in json.loads(proj.cli("list", "--runs", "--json").output)]
    proj.cli("report", "-2", "-o", str(tmp_path / "r.html"))
    text = (tmp_path / "r.html").read_text()
    assert f"Run {runs[0]}" in text and f"Run {runs[1]}" not in text


# the curation API on a real clustering -----------------------------------------------------

CLUSTERED = """
name: curated
stages:
  - id: cluster
    type: clustering
    config: {input_dir: cut, output_dir: build/clusters, min_cluster_size: 3}
  - id: prepare
    type: training_data_prep
    config:
      input_dirs: "{cluster.cluster_dirs}"
      output_dir: build/dataset
      curation: curation.yaml
      resolution: 64
      dedup: false
"""


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    """A built clustering → prep project, shared by the tests below; each test leaves
    curation.yaml as it found it."""
    pytest.importorskip("sklearn")
    from _character_fixtures import write_cutouts
    from conftest import Proj

    proj = Proj(tmp_path_factory.mktemp("clustered") / "ws")
    proj.pipeline(CLUSTERED)
    write_cutouts(proj.root / "cut", n_characters=3, per_character=5, seed=4, size=48)
    proj.write("curation.yaml", "version: 1\n")
    proj.cli("build", "--no-progress")
    return proj


@pytest.mark.slow
def test_curation_actions_write_the_file(clustered):
    c = _client(clustered)
    page = c.get("/dataset/cluster")
    assert page.status_code == 200 and "unreviewed" in page.text
    data = json.loads((clustered.root / "build/clusters/clusters.json").read_text())
    first = data["clusters"]["cluster_000"]["files"]
    ids = [cm.content_id(clustered.root / "cut" / f) for f in first]
    ok = c.post(
        "/api/curate",
        json={"action": "rename", "stage": "cluster", "cluster": "cluster_000", "name": "alice"},
    )
    assert ok.status_code == 200 and ok.json()["file"] == "curation.yaml"
    r = c.post(
        "/api/curate",
        json={"action": "move", "stage": "cluster", "id": ids[0], "to": "cluster_001"},
    )
    assert r.status_code == 200
    c.post("/api/curate", json={"action": "reject", "stage": "cluster", "id": ids[1]})
    c.post(
        "/api/curate",
        json={"action": "caption", "stage": "cluster", "id": ids[2], "text": "+ waving"},
    )
    cur = cm.load(clustered.root / "curation.yaml")
    assert {cur.names[i] for i in ids} == {"alice"}
    assert cur.assign == {ids[0]: "cluster_001", ids[1]: "rejected"}
    assert cur.captions == {ids[2]: "+ waving"}
    # the unnamed target cluster got its folder name, so the move survives renumbering
    second = data["clusters"]["cluster_001"]["files"]
    assert cur.names[cm.content_id(clustered.root / "cut" / second[0])] == "cluster_001"
    merged = c.post(
        "/api/curate",
        json={
            "action": "merge",
            "stage": "cluster",
            "cluster": "cluster_002",
            "into": "cluster_000",
        },
    )
    assert merged.status_code == 200
    third = data["clusters"]["cluster_002"]["files"]
    assert (
        cm.load(clustered.root / "curation.yaml").names[
            cm.content_id(clustered.root / "cut" / third[0])
        ]
        == "alice"
    )
    page = c.get("/dataset/cluster").text
    assert "alice" in page and "rejected" in page
    clustered.write("curation.yaml", "version: 1\n")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            {"action": "rename", "stage": "cluster", "cluster": "cluster_000", "name": "rejected"},
            "reserved",
        ),
        ({"action": "rename", "stage": "cluster", "cluster": "nope", "name": "x"}, "no cluster"),
        ({"action": "move", "id": "../../x", "to": "bob"}, "not a cut-out id"),
        ({"action": "explode"}, "unknown action"),
        ({"action": "caption", "id": "a" * 16, "text": "a\nb"}, "one line"),
    ],
)
def test_bad_curation_requests_are_400_and_change_nothing(clustered, body, says):
    before = (clustered.root / "curation.yaml").read_text()
    r = _client(clustered).post("/api/curate", json=body)
    assert r.status_code == 400 and says in r.json()["error"]
    assert (clustered.root / "curation.yaml").read_text() == before


def test_a_request_that_is_not_json_is_400(clustered):
    r = _client(clustered).post(
        "/api/curate", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400


def test_training_set_and_frames_views(clustered):
    c = _client(clustered)
    page = c.get("/dataset/prepare")
    assert page.status_code == 200 and "cluster_000" in page.text and "<img" in page.text


# the command ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_on_another_address_prints_a_token_the_page_asks_for(failed):
    import httpx

    port = _free_port()
    proc = subprocess.Popen(
        failed.argv("serve", "--host", "0.0.0.0", "--port", str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert lines[1].startswith("token"), lines
        token = lines[1].split(":", 1)[1].strip()
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                r = httpx.get(f"{url}/now")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert r.status_code == 401
        assert httpx.get(f"{url}/now?token={token}").status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_serve_on_a_port_in_use_says_so(failed):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            failed.argv("serve", "--port", str(port)), capture_output=True, text=True, timeout=60
        )
    assert r.returncode == 2 and "cannot listen" in r.stderr and "--port" in r.stderr
    assert "Traceback" not in r.stderr


def test_serve_without_the_extra_says_what_to_install(failed):
    code = (
        "import sys; sys.modules['uvicorn'] = None; from pipemake.cli import main; "
        f"sys.argv = ['pipemake', '-C', {str(failed.root)!r}, 'serve']; main()"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and 'pip install "pipemake[serve]"' in r.stderr, r.stderr


def test_ctrl_c_stops_serve_promptly_with_a_live_page_open(failed):
    import signal

    import httpx

    proc = subprocess.Popen(
        failed.argv("serve", "--port", "0"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        port = int(line.split("127.0.0.1:")[1].split("/")[0])  # --port 0: the port it got
        assert port > 0
        for _ in range(100):
            try:
                stream = httpx.stream("GET", f"http://127.0.0.1:{port}/api/now/stream", timeout=30)
                r = stream.__enter__()
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert next(r.iter_lines()).startswith("data: ")
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=15)[0]
        assert "Traceback" not in rest
        stream.__exit__(None, None, None)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_fold_run_gives_each_stage_its_state_and_why():
    from pipemake.serve.data import fold_run

    events = [
        {"event": "run_started", "time": 10.0, "run": "r1", "stages": ["a", "b", "c", "d"],
         "deps": {"b": ["a"], "c": ["b"], "d": []}, "expected": {"a": 2.0}},
        {"event": "stage_restored", "stage": "d", "time": 10.5, "reasons": ["outputs missing"]},
        {"event": "stage_started", "stage": "a", "time": 11.0, "reasons": ["param x 1 → 2"]},
        {"event": "task_started", "stage": "a", "time": 11.0, "task": "a.0"},
        {"event": "progress", "stage": "a", "time": 11.5, "done": 3, "total": 4},
        {"event": "task_finished", "stage": "a", "time": 12.0, "task": "a.0", "ok": False},
        {"event": "stage_failed", "stage": "a", "time": 12.0, "error": "boom\nline 2"},
        {"event": "stage_skipped", "stage": "b", "time": 12.0, "reason": "upstream a failed"},
        {"event": "run_finished", "time": 12.5, "failed": {"a": "boom"}, "duration": 2.5,
         "skipped": {"c": "upstream a failed"}},
    ]  # fmt: skip
    run = fold_run(events)
    st = run["stages"]
    assert run["result"] == "failed" and run["duration"] == 2.5
    assert (st["a"]["state"], st["a"]["error"], st["a"]["duration"]) == (
        "failed",
        "boom\nline 2",
        1.0,
    )
    assert st["a"]["reasons"] == ["param x 1 → 2"] and st["a"]["tasks"][0]["ok"] is False
    assert (st["b"]["state"], st["c"]["state"], st["d"]["state"]) == (
        "skipped",
        "skipped",
        "restored",
    )
    assert fold_run(events[:-1])["result"] == "running"
    interrupted = [*events[:-1], {"event": "run_finished", "time": 13, "interrupted": 2}]
    assert fold_run(interrupted)["result"] == "interrupted"


def test_the_now_page_of_a_build_with_a_stage_never_built_has_no_eta():
    from pipemake.serve.data import fold_run
    from pipemake.serve.pages import now_fragment

    events = [
        {"event": "run_started", "time": 10.0, "run": "r1", "stages": ["a", "b"],
         "deps": {"b": ["a"]}, "expected": {"a": 2.0, "b": None}},
        {"event": "stage_started", "stage": "a", "time": 10.0, "reasons": ["never built"]},
    ]  # fmt: skip
    html = now_fragment(fold_run(events), now=11.0)  # b's time is not known: no build ETA
    assert 'data-result="running"' in html and "0/2 stages<" in html and "ETA" not in html
    known = [dict(events[0], expected={"a": 2.0, "b": 3.0}), events[1]]
    assert "ETA ~" in now_fragment(fold_run(known), now=11.0)


def test_a_killed_build_shows_as_incomplete(failed):
    runs = failed.root / ".pipemake" / "runs"
    (runs / "29990101-000000-000.jsonl").write_text(
        json.dumps({"event": "run_started", "stage": None, "time": 4e9, "run": "29990101-000000-000",
                    "stages": ["make", "boom"], "deps": {"boom": ["make"]}}) + "\n"
        + json.dumps({"event": "stage_started", "stage": "make", "time": 4e9 + 1}) + "\n"
        + '{"event": "log", "stage": "make", "ti'  # cut short by the kill
    )  # fmt: skip
    c = _client(failed)
    page = c.get("/now").text
    assert 'data-result="incomplete"' in page and 'data-stage="make"' in page
    assert c.get("/history/29990101-000000-000").status_code == 200


def test_on_loopback_other_host_names_are_refused(failed):
    from pipemake.serve import LOOPBACK_NAMES

    app = make_app(Site(failed.root / "pipemake.yaml"), hosts=LOOPBACK_NAMES)
    assert TestClient(app, base_url="http://127.0.0.1:8765").get("/now").status_code == 200
    assert TestClient(app, base_url="http://localhost:8765").get("/history").status_code == 200
    rebound = TestClient(app, base_url="http://evil.example:8765")
    assert rebound.get("/now").status_code == 403
    assert rebound.get("/file/make/a.txt").status_code == 403


def test_curation_posts_must_be_json_from_this_origin(clustered):
    c = _client(clustered)
    body = json.dumps({"action": "reject", "id": "a" * 16})
    form = c.post("/api/curate", content=body, headers={"content-type": "text/plain"})
    assert form.status_code == 415
    cross = c.post(
        "/api/curate", content=body,
        headers={"content-type": "application/json", "origin": "http://evil.example"},
    )  # fmt: skip
    assert cross.status_code == 403
    assert "a" * 16 not in (clustered.root / "curation.yaml").read_text()


def test_two_serve_processes_editing_one_curation_file_lose_no_edit(project):
    """Each ``serve`` keeps one edit at a time in itself; two of one project (two
    terminals) take turns on the project folder's lock, so every caption lands."""
    import threading

    from pipemake.serve.app import apply_action

    proj = project("name: x\nstages:\n  - id: a\n    type: shell\n    config: {cmd: 'true'}\n")
    proj.write("curation.yaml", "version: 1\n")
    sites = [Site(proj.root / "pipemake.yaml"), Site(proj.root / "pipemake.yaml")]
    ids = [f"{n:016x}" for n in range(40)]

    def edit(site: Site, mine: list[str]) -> None:
        for cid in mine:
            apply_action(site, {"action": "caption", "id": cid, "text": f"cap {cid}"})

    threads = [
        threading.Thread(target=edit, args=(site, ids[i::2])) for i, site in enumerate(sites)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    cur = cm.load(proj.root / "curation.yaml")
    assert cur.captions == {cid: f"cap {cid}" for cid in ids}
    assert sorted(p.name for p in proj.root.iterdir() if "lock" in p.name) == []

"""pipemake serve in a real headless browser (Debian's chromium driven by Playwright; nothing
is downloaded): the Now page follows a build to its end, History shows a failed stage's
full error, and the Dataset page of the example curates it; then ``pipemake build`` (no
browser) honours the corrections, also after the clustering is rebuilt.

Set ``PIPEMAKE_SCREENSHOTS=DIR`` to also save the three pages at 1280×800 into DIR (that is
how docs/serve-*.png are made).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"no {CHROMIUM}: apt-get install -y chromium", allow_module_level=True)
pytest.importorskip("playwright", reason="the playwright package: pip install playwright")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

# slow (a real browser each): `pytest -m "not slow"` skips them; CI runs everything
pytestmark = pytest.mark.slow

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "character_dataset"
SMALL = {"shots": 6, "frames_per_shot": 12, "width": 160, "height": 120, "train_samples": 12}
SHOTS = os.environ.get("PIPEMAKE_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            args=ARGS,
            headless=True,
            viewport={"width": 1280, "height": 800},
        )
        try:
            yield ctx
        finally:
            ctx.close()


@pytest.fixture
def page(browser):
    p = browser.new_page()
    p.set_default_timeout(30_000)
    yield p
    p.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``pipemake serve`` on 127.0.0.1 and a free port, as a real process."""

    def __init__(self, root: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipemake", "-C", str(root), "serve", "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        line = self.proc.stdout.readline()
        assert "pipemake serve: http://127.0.0.1" in line, line + self.proc.stdout.read()
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "serve did not start listening"
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def serve():
    started: list[Server] = []

    def start(root: Path) -> Server:
        started.append(Server(root))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def _shot(page: Page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"serve-{name}.png"))


SLOW = r"""
name: slow
stages:
  - id: first
    type: shell
    config: {cmd: "echo starting first; sleep 1.5; echo one > {outputs.o}", outputs: {o: build/1.txt}}
  - id: second
    type: shell
    config:
      cmd: "echo starting second; sleep 1.5; cat {inputs.i} > {outputs.o}"
      inputs: {i: "{first.o}"}
      outputs: {o: build/2.txt}
"""


def test_now_follows_a_running_build_to_its_end(project, page, serve):
    proj = project(SLOW)
    server = serve(proj.root)
    page.goto(server.url + "/now")
    expect(page.locator("#nowstate")).to_have_attribute("data-result", "none")
    build = proj.popen("build", "--no-progress")
    # live: the page shows the build running, then finished, without a reload
    expect(page.locator("#nowstate")).to_have_attribute("data-result", "running")
    expect(page.locator('section.stage[data-stage="first"]')).to_contain_text("starting first")
    expect(page.locator("#nowstate")).to_have_attribute("data-result", "ok", timeout=60_000)
    assert build.wait(60) == 0
    expect(page.locator(".summary")).to_contain_text("ran: first, second")
    expect(page.locator('g.node.ok[data-stage="second"]')).to_have_count(1)


FAILING = r"""
name: failing
stages:
  - id: fine
    type: shell
    config: {cmd: "echo ok > {outputs.o}", outputs: {o: build/fine.txt}}
  - id: broken
    type: shell
    config:
      cmd: "cat {inputs.i}; printf 'line one of the error\nline two\nTHE LAST LINE\n' >&2; exit 5"
      inputs: {i: "{fine.o}"}
      outputs: {o: build/broken.txt}
"""


def test_history_lists_runs_and_shows_a_failed_stages_full_error(project, page, serve):
    proj = project(FAILING)
    proj.cli("build", "--no-progress", code=1)
    proj.cli("build", "--no-progress", code=1)
    server = serve(proj.root)
    page.goto(server.url + "/history")
    rows = page.locator("table.runs tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("broken")
    rows.first.locator("a").click()
    log = page.locator('details.stagelog[data-stage="broken"] pre.error')
    expect(log).to_be_visible()  # opened: the failed stage's log is shown at once
    for line in ("exited with code 5", "line one of the error", "line two", "THE LAST LINE"):
        expect(log).to_contain_text(line)
    expect(page.locator('tr[data-stage="fine"]')).to_contain_text("up to date")


# the example's Dataset page ---------------------------------------------------------------


def _pipemake(root: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PIPEMAKE_CACHE_DIR"}
    env["NUMBA_DISABLE_JIT"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "pipemake", "-C", str(root), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    for mod in ("av", "rembg", "torch", "onnx", "sklearn"):
        pytest.importorskip(mod)
    import yaml

    root = tmp_path_factory.mktemp("example") / "character_dataset"
    shutil.copytree(
        EXAMPLE, root, ignore=shutil.ignore_patterns("build", ".pipemake", "__pycache__")
    )
    pipeline = yaml.safe_load((root / "pipemake.yaml").read_text())
    pipeline["vars"].update(SMALL)
    (root / "pipemake.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    _pipemake(root, "build", "--no-progress")
    return root


def _dataset(root: Path) -> dict[str, dict]:
    rows = (root / "build/dataset/manifest.jsonl").read_text().splitlines()
    return {json.loads(r)["id"]: json.loads(r) for r in rows}


def test_dataset_page_curates_the_example_and_build_honours_it(example, page, serve):
    root = example
    server = serve(root)
    if SHOTS:  # the Now and History pages of the example, for the docs
        page.goto(server.url + "/now")
        expect(page.locator("#nowstate")).to_have_attribute("data-result", "ok")
        _shot(page, "now")
        page.goto(server.url + "/history/-1")
        _shot(page, "history")
    page.goto(server.url + "/dataset")
    page.locator('a[href="/dataset/cluster"]').click()
    groups = page.locator("section.group:not(.noise)")
    expect(groups).to_have_count(3)
    first_img = page.locator("figure.thumb img").first
    expect(first_img).to_be_visible()
    page.wait_for_function("() => document.querySelector('figure.thumb img').naturalWidth > 0")
    first = page.locator('section.group[data-cluster="cluster_000"]')
    second = page.locator('section.group[data-cluster="cluster_001"]')
    renamed_ids = first.locator("figure.thumb").evaluate_all("fs => fs.map(f => f.dataset.id)")
    moved = second.locator("figure.thumb").nth(0).get_attribute("data-id")
    rejected = second.locator("figure.thumb").nth(1).get_attribute("data-id")

    first.locator("input.newname").fill("ember")
    first.locator("button.rename").click()
    expect(page.locator('section.group[data-cluster="cluster_000"]')).to_have_attribute(
        "data-label", "ember"
    )
    fig = page.locator(f'figure.thumb[data-id="{moved}"]')
    fig.locator("select.moveto").select_option("ember")
    expect(page.locator(f'figure.thumb[data-id="{moved}"] .flag.mov')).to_contain_text("ember")
    page.locator(f'figure.thumb[data-id="{rejected}"] button.reject').click()
    expect(page.locator(f'figure.thumb[data-id="{rejected}"] .flag.rej')).to_have_count(1)
    _shot(page, "dataset")

    # no browser from here on: the build reruns only the prep and honours all three
    out = _pipemake(root, "build", "--no-progress")
    assert "1 ran, 0 restored, 5 up to date" in out, out

    def check() -> None:
        data = _dataset(root)
        assert rejected not in data
        assert data[moved]["character"] == "ember"
        kept = [i for i in renamed_ids if i in data]  # near-duplicates are dropped anyway
        assert kept and {data[i]["character"] for i in kept} == {"ember"}
        folders = {p.name for p in (root / "build/dataset/train").iterdir()}
        assert "10_ember" in folders and "10_cluster_000" not in folders
        stats = json.loads((root / "build/dataset/stats.json").read_text())
        assert any(d.get("id") == rejected for d in stats["dropped_files"])

    check()
    # a rebuild of the clustering with other params keeps the three corrections
    import yaml

    pipeline = yaml.safe_load((root / "pipemake.yaml").read_text())
    (cluster,) = [st for st in pipeline["stages"] if st["id"] == "cluster"]
    cluster["config"]["pca_dims"] = 8
    (root / "pipemake.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    out = _pipemake(root, "build", "--no-progress")
    assert "2 ran, 0 restored, 4 up to date" in out, out
    check()
    page.goto(server.url + "/dataset/prepare")
    expect(page.locator('section.group[data-cluster="ember"]')).to_have_count(1)
    page.goto(server.url + "/dataset/extract")
    expect(page.locator("section.group")).to_have_count(SMALL["shots"])  # frames per shot

    report = root / "report.html"
    _pipemake(root, "report", "-o", str(report))
    assert report.stat().st_size < 5_000_000
    page.goto(report.as_uri())
    expect(page.locator("img").first).to_be_visible()

"""What ``pipemake serve`` and ``pipemake report`` show comes from run logs and stage
outputs, which a shared store may have written: markup in them comes back escaped (text,
attributes, links, numbers), every response carries a Content-Security-Policy that lets no
script run but the page's own, and a curation action is taken only from a page of the
server itself."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import shutil
import socket
import sqlite3
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402

from pipemake.serve import pages  # noqa: E402
from pipemake.serve.app import OTHER_POLICY, make_app  # noqa: E402
from pipemake.serve.data import DatasetView, Site  # noqa: E402

#: markup an attacker would put into a value: each closes the context it lands in
PAYLOADS = [
    '"><img src=x onerror=alert(1)>',
    "'><svg onload=alert(2)>",
    "</script><script>alert(3)</script>",
    "</pre></details><iframe src=javascript:alert(4)>",
]


class _Markup(HTMLParser):
    """Every element of a page with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def _tags(text: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Markup()
    parser.feed(text)
    parser.close()
    return parser.tags


def assert_inert(text: str, nonce: str | None = None) -> None:
    """No element or attribute of the payloads made it into ``text`` as markup: no event
    handler, no inline style, no frame, no script but the page's own (by ``nonce``), no
    image but a thumbnail of this site or inline data."""
    for tag, attrs in _tags(text):
        handlers = [a for a in attrs if a.startswith("on")]
        assert not handlers, (tag, attrs)
        assert "style" not in attrs, (tag, attrs)  # the CSP allows no inline style
        assert tag not in ("iframe", "frame", "object", "embed", "base"), tag
        if tag == "script":
            assert nonce is not None and attrs == {
                "src": "/static/app.js",
                "nonce": nonce,
                "defer": None,
            }, attrs
        if tag == "img":
            src = attrs.get("src") or ""
            assert src == "" or src.startswith(("/thumb/", "data:image/jpeg;base64,")), src


def assert_escaped(text: str, payloads: list[str] = PAYLOADS) -> None:
    """Each payload is shown, as text, in ``text``."""
    for p in payloads:
        assert html.escape(p) in text, p


# the pages, field by field ------------------------------------------------------------------


def _poisoned_run() -> dict[str, Any]:
    a, b, c, d = PAYLOADS
    stage = {
        "state": a,
        "reasons": [b, 7],
        "logs": [{"level": c, "text": d}],
        "error": a + "\n" + b,
        "tasks": [{"id": c, "start": 1.0, "end": 2.0}],
        "started": 1.0,
        "finished": "<b>soon</b>",
        "duration": "<b>long</b>",
        "done": 1,
        "total": 2,
    }
    return {
        "id": a,
        "result": b,
        "order": ["s1", d],
        "deps": {d: ["s1"]},
        "stages": {"s1": stage, d: dict(stage, state="running")},
        "started": 0.0,
        "finished": 3.0,
        "previous": {"s1": "<i>x</i>"},
        "previous_id": c,
    }


def test_every_field_of_a_run_comes_back_escaped() -> None:
    run = _poisoned_run()
    for text in (pages.run_page(run), pages.now_fragment(run, now=2.0), pages.dag_svg(run)):
        assert_inert(text)
        assert "<b>" not in text and "<i>" not in text
    assert_escaped(pages.run_page(run))
    assert_escaped(pages.now_fragment(run, now=2.0), [PAYLOADS[0], PAYLOADS[1]])


def test_run_counts_that_are_not_numbers_show_as_unknown() -> None:
    a, b, c, _ = PAYLOADS
    runs = [
        {"id": a, "result": b, "ran": c, "restored": 2, "up_to_date": [a], "skipped": None,
         "failed": {a: "x"}, "started": "<b>x</b>", "duration": True},
    ]  # fmt: skip
    text = pages.history_page(runs, lambda rid: "/history/" + pages.url_part(rid))
    assert_inert(text)
    assert_escaped(text, [a, b])
    assert html.escape(c) not in text  # a count is a number or "?", never the text
    cells = re.findall(r"<td>([^<]*)</td>", text)
    assert cells[3:7] == ["?", "2", "?", "?"], cells
    # the run's link is this site's /history/ page, its id one encoded path segment
    (href,) = [attrs["href"] for tag, attrs in _tags(text) if tag == "a"]
    assert href == "/history/" + pages.url_part(a) and "/" not in href[len("/history/") :]


def test_every_field_of_a_dataset_comes_back_escaped() -> None:
    a, b, c, d = PAYLOADS
    files = [
        {"path": f"{a}/{b}", "id": c, "file": d, "assign": a, "caption": b, "reviewed": False,
         "split": c, "time": "<b>t</b>"},
        {"path": 5, "id": "", "file": None, "assign": "rejected", "caption": None},
    ]  # fmt: skip
    view = DatasetView(
        stage=a,
        rule="clustering",
        groups=[
            {"name": b, "label": c, "size": a, "files": files, "noise": False},
            {"name": d, "label": "", "size": 3, "files": [], "noise": False},
        ],
        notes=[d],
    )
    for edit in (True, False):
        text = pages.dataset_page(view, lambda s, r: f"/thumb/{pages.url_part(s)}/{r}", edit)
        assert_inert(text)
        assert_escaped(text)
        assert "<small>? images</small>" in text and "<small>3 images</small>" in text
        assert "<b>t</b>" not in text
    index = pages.dataset_index([(a, "clustering"), ("ok", "clustering")], ("clustering",), None)
    assert_inert(index)
    hrefs = [attrs["href"] for tag, attrs in _tags(index) if tag == "a"]
    assert hrefs == ["/dataset/" + pages.url_part(a), "/dataset/ok"]


def test_numbers_and_links_are_checked() -> None:
    assert pages.num(3) == "3" and pages.num(2.5) == "2.5"
    for bad in ("3", "<b>", None, True, [1], float("nan"), float("inf")):
        assert pages.num(bad) == "?", bad
    assert pages.url_part('a/b?c#d"e') == "a%2Fb%3Fc%23d%22e"
    assert pages.e(["<x>", 1]) == "[&#x27;&lt;x&gt;&#x27;, 1]"


# the server: escaping, the CSP, the same-origin check --------------------------------------

SHOUTING = """
name: shouting
stages:
  - id: shout
    type: shell
    config:
      cmd: "cat {inputs.p}; cat {inputs.p} >&2; exit 3"
      inputs: {p: data/p.txt}
      outputs: {d: build/out}
"""


@pytest.fixture
def shouted(project):
    """A run whose stage printed the payloads (its log lines and error)."""
    proj = project(SHOUTING, {"data/p.txt": "\n".join(PAYLOADS) + "\n"})
    proj.cli("build", "--no-progress", code=1)
    return proj


def _nonce(response: Any) -> str:
    policy = response.headers["content-security-policy"]
    found = re.findall(r"script-src 'nonce-([A-Za-z0-9_-]+)'", policy)
    assert found and "unsafe-inline" not in policy and "unsafe-eval" not in policy, policy
    for part in ("default-src 'none'", "style-src 'self'", "frame-ancestors 'none'"):
        assert part in policy, policy
    return found[0]


def test_pages_carry_a_csp_that_runs_only_their_own_script(shouted) -> None:
    c = TestClient(make_app(Site(shouted.root / "pipemake.yaml")))
    (run,) = [r["id"] for r in c.get("/api/runs").json()]
    seen = set()
    for path in ("/now", "/history", f"/history/{run}", "/dataset", "/history/nope"):
        r = c.get(path)
        assert r.headers["content-type"].startswith("text/html"), path
        nonce = _nonce(r)
        seen.add(nonce)
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert_inert(r.text, nonce)
    assert len(seen) == 5  # a nonce of its own in each response
    page = c.get(f"/history/{run}").text
    assert_escaped(page)  # the stage's output lines and its error, as text
    assert_escaped(c.get("/now").text)
    # anything that is not a page runs nothing, even opened as one
    shouted.write("build/out/page.html", "<script>alert(5)</script>")
    for path in ("/file/shout/page.html", "/thumb/shout/page.html", "/api/runs", "/api/now",
                 "/static/app.js", "/file/shout/nope.html"):  # fmt: skip
        r = c.get(path)
        assert r.headers["content-security-policy"] == OTHER_POLICY, path
        assert "sandbox" in OTHER_POLICY and r.headers["x-content-type-options"] == "nosniff"


def test_curation_is_refused_to_a_page_of_another_site(shouted) -> None:
    shouted.write("curation.yaml", "version: 1\n")
    c = TestClient(make_app(Site(shouted.root / "pipemake.yaml")), base_url="http://127.0.0.1:8765")
    body = {"action": "reject", "id": "a" * 16}
    for headers in (
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},  # another port of this host is another site's page
        {"origin": "null"},  # a sandboxed frame, a file:// page (a report)
        {"origin": "http://127.0.0.1:9999"},
    ):
        r = c.post("/api/curate", json=body, headers=headers)
        assert r.status_code == 403 and "refused" in r.json()["error"], headers
        assert "a" * 16 not in shouted.read("curation.yaml")
    mine = {"origin": "http://127.0.0.1:8765", "sec-fetch-site": "same-origin"}
    assert c.post("/api/curate", json=body, headers=mine).status_code == 200
    assert "a" * 16 in shouted.read("curation.yaml")


def test_the_report_runs_no_script_and_only_its_own_style(shouted, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    shouted.cli("report", "-o", str(out))
    text = out.read_text()
    assert_inert(text)
    assert_escaped(text)
    metas = [a for t, a in _tags(text) if t == "meta" and a.get("http-equiv")]
    assert len(metas) == 1 and metas[0]["http-equiv"] == "Content-Security-Policy"
    policy = metas[0]["content"] or ""
    assert "default-src 'none'" in policy and "script-src" not in policy, policy
    assert "img-src data:" in policy and "unsafe-inline" not in policy
    # the policy comes before anything it governs, and names the one <style> by its hash
    assert text.index("Content-Security-Policy") < text.index("<style>")
    (style,) = re.findall(r"<style>(.*?)</style>", text, re.S)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in policy
    assert "<script" not in text


# the attack as it was found: a shared store's clusters.json, served by `pipemake serve` ------

CLUSTERING = """
name: t
stages:
  - id: cluster
    type: clustering
    config: {input_dir: cut, output_dir: build/clusters, min_cluster_size: 3}
"""

XSS = "<img src=x onerror=\"fetch('/api/curate',{method:'POST'})\">XSS"


def _poison_clusters(store: Path) -> None:
    """What a writer of a shared store can do: put markup into each cluster's ``size``
    and the notes' fields of the stored clusters.json (its tree hash made to match)."""
    from pipemake.hashing import tree_hash
    from pipemake.store import Store

    st = Store(store)
    db = sqlite3.connect(store / "actions.db")
    for key, raw in db.execute("SELECT key, entry FROM actions").fetchall():
        entry = json.loads(raw)
        tree = (entry.get("outputs") or {}).get("output_dir")
        if not tree:
            continue
        for row in tree["entries"]:
            if row[0] == "clusters.json":
                doc = json.loads(st.read_bytes(row[1]))
                for info in doc["clusters"].values():
                    info["size"] = XSS
                doc["algorithm"] = doc["n_noise"] = XSS
                data = json.dumps(doc).encode()
                row[1], row[2] = st.put_bytes(data), len(data)
        tree["hash"] = tree_hash(tree["entries"])
        entry.pop("signature", None)
        db.execute("UPDATE actions SET entry=? WHERE key=?", (json.dumps(entry), key))
    db.commit()
    db.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> Any:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        return urllib.request.urlopen(request, timeout=30)
    except urllib.error.HTTPError as exc:
        return exc


def test_a_poisoned_shared_store_cannot_script_the_dataset_page(project, tmp_path) -> None:
    pytest.importorskip("sklearn")
    from _character_fixtures import write_cutouts

    cache = tmp_path / "shared"
    proj = project(CLUSTERING)
    write_cutouts(proj.root / "cut", n_characters=2, per_character=4, seed=3, size=32)
    proj.cli("build", "--no-progress", "--cache-dir", str(cache))
    _poison_clusters(cache)
    shutil.rmtree(proj.path("build"))
    out = proj.cli("build", "--no-progress", "--cache-dir", str(cache)).output
    assert "1 restored" in out
    restored = json.loads(proj.read("build/clusters/clusters.json"))
    assert restored["algorithm"] == XSS  # the poison is in the workspace
    proj.write("curation.yaml", "version: 1\n")

    port = _free_port()
    server = proj.popen("serve", "--port", str(port))
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "serve did not start"
                time.sleep(0.1)
        r = _get(f"{base}/dataset/cluster")
        text = r.read().decode()
        assert r.status == 200
        assert_inert(text, _nonce(r))
        assert "<small>? images</small>" in text and html.escape(XSS) in text
        assert "<img src=x" not in text
        # were a script to run in the page anyway, another site's page could not curate
        refused = _get(
            f"{base}/api/curate",
            {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
            json.dumps({"action": "reject", "id": "b" * 16}).encode(),
        )
        assert refused.status == 403
        assert "b" * 16 not in proj.read("curation.yaml")
    finally:
        server.terminate()
        server.wait(10)

    report = tmp_path / "report.html"
    proj.cli("report", "-o", str(report))
    text = report.read_text()
    assert_inert(text)
    assert "<img src=x" not in text and html.escape(XSS) in text


@pytest.mark.parametrize(
    "doc",
    ['{"clusters": []}', "[1, 2]", '{"clusters": {"a": "x"}, "items": "y"}', "[" * 5000],
)
def test_a_clusters_file_of_another_shape_is_said_never_a_500(project, doc: str) -> None:
    """A restored ``clusters.json`` may hold anything a writer of the shared store put there:
    the dataset page says it cannot read it, with status 200, and never fails."""
    from starlette.testclient import TestClient

    proj = project(CLUSTERING)
    proj.path("cut").mkdir()
    proj.write("build/clusters/clusters.json", doc)
    client = TestClient(make_app(Site(proj.root / "pipemake.yaml")))
    r = client.get("/dataset/cluster")
    assert r.status_code == 200 and "not built yet, or unreadable" in r.text

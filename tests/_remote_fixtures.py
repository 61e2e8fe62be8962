"""What the remote-store tests (``tests/test_remote*.py``) share: the foreach pipeline
they push and pull, its input files, the environment naming a remote, a look at the
outputs a build placed and at the entries a push wrote, and moto's S3 server on
127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import Proj

#: moto's made-up credentials, and few retries: a test of a failing server ends soon
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_MAX_ATTEMPTS": "2",
    "AWS_RETRY_MODE": "standard",
}

#: one ``shell`` foreach stage ``upper``: each item of ``data`` upper-cased into
#: ``build/upper``, noting its name in ``runs/items.log`` (outside every output), so a test
#: sees which items ran
EACH = """
name: items
stages:
  - id: upper
    type: shell
    foreach: src
    config:
      cmd: "echo {item.name} >> runs/items.log; tr a-z A-Z < {inputs.src} > {outputs.out}/{item.name}"
      inputs: {src: data}
      outputs: {out: build/upper}
"""
#: :data:`EACH` and a whole-stage ``total`` below it, reading every item's output
EACH_TOTAL = (
    EACH
    + """  - id: total
    type: shell
    config:
      cmd: "echo x >> runs/total.count; cat $(find {inputs.u} -type f | sort) > {outputs.o}"
      inputs: {u: "{upper.out}"}
      outputs: {o: build/total.txt}
"""
)


def each_files(n: int) -> dict[str, str]:
    """``n`` small input files for :data:`EACH`: ``data/f0000.txt`` holds ``file 0``, …"""
    return {f"data/f{i:04}.txt": f"file {i}\n" for i in range(n)}


def remote_env(url: str, key: str | None = None, **more: str) -> dict[str, str]:
    """The environment of a command using the remote ``url``, signing with ``key`` (none:
    unsigned, whatever the caller's environment holds), plus ``more``."""
    return {"PIPEMAKE_REMOTE": url, "PIPEMAKE_CACHE_KEY": key or "", **more}


def outputs(proj: Proj) -> dict[str, bytes]:
    """Every file under the project's ``build/`` (path relative to it → bytes)."""
    build = proj.path("build")
    return {
        str(p.relative_to(build)): p.read_bytes() for p in sorted(build.rglob("*")) if p.is_file()
    }


def items_run(proj: Proj) -> list[str]:
    """The items of :data:`EACH` that ran in ``proj``, in the order they ran."""
    log = proj.path("runs/items.log")
    return log.read_text().split() if log.exists() else []


def local_objects(store: Path) -> list[Path]:
    """The object files of a local store folder (``.pipemake/store``)."""
    return sorted(p for p in (store / "objects").glob("*/*") if p.is_file())


def stage_entries(remote: Path) -> dict[str, tuple[Path, dict[str, Any], dict[str, Any]]]:
    """Each stage's entry on a ``file://`` remote (item entries left out), by stage id: its
    file, the sealed document and the entry in it."""
    out = {}
    for path in (remote / "entries").rglob("*.json"):
        doc = json.loads(path.read_text())
        entry = json.loads(doc["entry"])
        if "stage" in entry:
            out[entry["stage"]] = (path, doc, entry)
    return out


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a free port) while the block runs: its endpoint URL.
    Skips the test when the ``test`` extra's S3 stack is not installed."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def point_at(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point boto3 and s3fs (in this process and the commands it starts) at the S3 server
    ``endpoint``; a boto3 client of it."""
    boto3 = pytest.importorskip("boto3")
    for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(name, value)
    return boto3.client("s3", endpoint_url=endpoint)

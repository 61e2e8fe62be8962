"""Remote stores on S3 (issue 15), against moto's server on 127.0.0.1: two fresh clones, a
tampered object, a network failure in the middle of a build's fetch, concurrent pushes and
a read-only remote. Needs ``s3fs``, ``boto3`` and ``moto[server]`` (the ``test`` extra)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash
from _remote_fixtures import (
    CREDENTIALS,
    EACH,
    each_files,
    items_run,
    moto_server,
    point_at,
    remote_env,
)
from conftest import CHAIN, CHAIN_FILES, CHAIN_STAGES, Proj, wait_for

from pipemake import api
from pipemake.signing import unseal

# slow (each test starts moto's S3 server): `pytest -m "not slow"` skips them; CI runs everything
pytestmark = pytest.mark.slow

pytest.importorskip("s3fs")
boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

EACH_FILES = each_files(40)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def s3(endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Any:
    """A fresh bucket for this test; the environment points boto3 and s3fs at moto."""
    client = point_at(endpoint, monkeypatch)
    bucket = "pm-" + request.node.name.replace("_", "-")[:40].lower().strip("-")
    client.create_bucket(Bucket=bucket)
    client.bucket = bucket
    return client


def _keys(s3: Any, prefix: str = "") -> dict[str, str]:
    """Every object of the bucket under ``prefix`` → its ETag."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix):
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return out


def test_two_clones_share_an_s3_remote_and_a_tampered_object_is_rebuilt(
    project: Callable[..., Proj], s3: Any
) -> None:
    url = f"s3://{s3.bucket}/team/cache"
    first = project(EACH, EACH_FILES, name="first")
    first.cli("build", "--push", env=remote_env(url, "k"))
    stored = _keys(s3, "team/cache/")
    assert sum(k.startswith("team/cache/entries/") for k in stored) == len(EACH_FILES) + 1
    second = project(EACH, EACH_FILES, name="second")
    second.cli("build", env=remote_env(url, "k"))
    assert items_run(second) == []  # nothing ran: all came from the remote
    assert second.read("build/upper/f0032.txt") == "FILE 32\n"
    # someone overwrites one object: the next clone refuses it and runs that item only
    good = b"FILE 7\n"
    name = f"team/cache/objects/{xxhash.xxh3_128_hexdigest(good)[:2]}/"
    name += xxhash.xxh3_128_hexdigest(good)[2:]
    s3.put_object(Bucket=s3.bucket, Key=name, Body=b"EVIL 7\n")
    third = project(EACH, EACH_FILES, name="third")
    result = third.cli("build", env=remote_env(url, "k"))
    assert third.read("build/upper/f0007.txt") == "FILE 7\n"
    assert items_run(third) == ["f0007.txt"]
    assert "refused 1 object(s)" in result.output


PIDFILE_KILL = """
name: two
version: 1
stages:
  - id: first
    type: shell
    config:
      cmd: "echo x >> runs/first.count; kill $(cat \\"$MOTO_PID\\" 2>/dev/null) 2>/dev/null; echo one > {outputs.o}"
      outputs: {o: build/first.txt}
  - id: second
    type: shell
    config:
      cmd: "echo x >> runs/second.count; cat {inputs.i} {inputs.i} > {outputs.o}"
      inputs: {i: "{first.o}"}
      outputs: {o: build/second.txt}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_network_failure_in_the_middle_of_a_build_runs_the_stage(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """The remote (a moto server of its own) dies while a build fetches: the first stage's
    command kills it, so the second stage's fetch fails; the build runs it, says so naming
    the remote, and exits 0."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: _answers(endpoint), 60, "the moto server")
        env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )  # this process's environment may hold no credentials (run alone, say)
        client.create_bucket(Bucket="pm-flaky")
        url = "s3://pm-flaky/cache"
        first = project(PIDFILE_KILL, name="first")
        first.sub(
            "build", "--push", env={**env, **remote_env(url, "k"), "MOTO_PID": "/nonexistent"}
        )
        with api.project_of(first.root, None) as proj:
            first_key = proj.state.builds.brief()["first"].key
        client.delete_object(
            Bucket="pm-flaky", Key=f"cache/entries/{first_key[:2]}/{first_key[2:]}.json"
        )
        pidfile = tmp_path / "moto.pid"
        pidfile.write_text(str(server.pid))
        second = project(PIDFILE_KILL, name="second")
        done = second.sub("build", env={**env, **remote_env(url, "k"), "MOTO_PID": str(pidfile)})
        server.wait(30)
        assert second.run_counts() == {"first": 1, "second": 1}
        warned = [
            line for line in done.stderr.splitlines() if "remote s3://pm-flaky/cache failed" in line
        ]
        assert len(warned) == 1, done.stderr
        assert second.read("build/second.txt") == "one\none\n"
        assert "Traceback" not in done.stderr
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


def _answers(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(endpoint, timeout=1).close()  # noqa: S310 - 127.0.0.1 only
    except OSError as exc:
        return getattr(exc, "code", None) is not None  # an HTTP error is an answer
    return True


def test_concurrent_pushes_to_s3_of_the_same_and_different_keys(
    project: Callable[..., Proj], s3: Any
) -> None:
    url = f"s3://{s3.bucket}/c"
    other_files = {"data/a.txt": "other\n", "data/b.txt": "b2\n"}
    clones = [project(CHAIN, CHAIN_FILES, name=f"same{i}") for i in range(2)]
    clones.append(project(CHAIN, other_files, name="other"))
    for clone in clones:
        clone.cli("build", env={"PIPEMAKE_CACHE_KEY": "k"})
    env = {**os.environ, **remote_env(url, "k")}
    procs = [subprocess.Popen(c.argv("push"), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for c in clones]  # fmt: skip
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    stored = _keys(s3, "c/")
    entries = [k for k in stored if k.startswith("c/entries/")]
    assert len(entries) == 8
    for k in entries:
        doc = s3.get_object(Bucket=s3.bucket, Key=k)["Body"].read()
        assert unseal(doc, json.loads(doc)["key"], b"k")[0] is not None
    for k in stored:
        if k.startswith("c/objects/"):
            body = s3.get_object(Bucket=s3.bucket, Key=k)["Body"].read()
            assert xxhash.xxh3_128_hexdigest(body) == k.split("/")[-2] + k.split("/")[-1]
    for name, files in (("c1", CHAIN_FILES), ("c2", other_files)):
        clone = project(CHAIN, files, name=name)
        clone.cli("build", env=remote_env(url, "k"))
        assert clone.run_counts() == {}


def test_a_read_only_s3_remote_is_never_written(project: Callable[..., Proj], s3: Any) -> None:
    url = f"s3://{s3.bucket}/ro"
    first = project(CHAIN, CHAIN_FILES, name="first")
    first.cli("build", "--push", env=remote_env(url, "k"))
    before = _keys(s3)
    second = project(CHAIN, CHAIN_FILES | {"data/b.txt": "changed\n"}, name="second")
    second.cli("build", env={**remote_env(url, "k"), "PIPEMAKE_REMOTE_READ_ONLY": "1"})
    assert second.run_counts() == {"side": 1, "report": 1}
    second.cli("push", code=2, env={**remote_env(url, "k"), "PIPEMAKE_REMOTE_READ_ONLY": "1"})
    assert _keys(s3) == before
    assert set(second.run_counts()) <= set(CHAIN_STAGES)

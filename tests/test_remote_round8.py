"""Reads from an S3 remote are bounded as the local store's are: an object is read up to
its recorded size + 1, an entry up to the entry limit, in ranged requests, so an object or
entry replaced by a huge one is never downloaded whole (moto's S3 server, started here on
127.0.0.1 behind a counter of the bytes each response sends)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import xxhash
from _remote_fixtures import point_at
from conftest import Proj

pytest.importorskip("s3fs")
pytest.importorskip("boto3")
pytest.importorskip("moto.server")

#: three outputs: 13 bytes, none, and 300 (large once the test lowers the streaming size)
PIPELINE = """
stages:
  - id: small
    type: shell
    config:
      cmd: "echo small-output > {outputs.o}"
      inputs: {i: data/a.txt}
      outputs: {o: build/small.txt}
  - id: empty
    type: shell
    config:
      cmd: ": > {outputs.o}"
      inputs: {i: data/a.txt}
      outputs: {o: build/empty.txt}
  - id: big
    type: shell
    config:
      cmd: "head -c 300 /dev/zero | tr '\\\\0' b > {outputs.o}"
      inputs: {i: data/a.txt}
      outputs: {o: build/big.txt}
"""
FILES = {"data/a.txt": "hi\n"}
SMALL = b"small-output\n"
BIG = b"b" * 300


@contextmanager
def counted_moto() -> Iterator[tuple[str, list[tuple[str, str, str | None, int]]]]:
    """moto's S3 server on 127.0.0.1 (a free port), each response noted as (method, path,
    the request's Range header, body bytes sent): its endpoint and that list."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    sent: list[tuple[str, str, str | None, int]] = []

    def counting(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        body = app(environ, start_response)
        n = 0
        try:
            for chunk in body:
                n += len(chunk)
                yield chunk
        finally:
            getattr(body, "close", lambda: None)()
            sent.append(
                (environ["REQUEST_METHOD"], environ["PATH_INFO"], environ.get("HTTP_RANGE"), n)
            )

    server = make_server("127.0.0.1", 0, counting, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", sent
    finally:
        server.shutdown()
        thread.join(10)


@pytest.fixture
def s3(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[tuple[Any, list[Any]]]:
    """A fresh bucket (moto keeps its buckets in the process, from server to server) on a
    counted moto server the environment points at: a boto3 client and the responses."""
    with counted_moto() as (endpoint, sent):
        client = point_at(endpoint, monkeypatch)
        client.bucket = "r8-" + request.node.name.replace("_", "-")[:50].lower().strip("-")
        client.create_bucket(Bucket=client.bucket)
        yield client, sent


def _object_key(data: bytes) -> str:
    digest = xxhash.xxh3_128_hexdigest(data)
    return f"pm/objects/{digest[:2]}/{digest[2:]}"


def _entry_key(client: Any, stage: str) -> str:
    """The key of ``stage``'s entry on the remote."""
    listed = client.list_objects_v2(Bucket=client.bucket, Prefix="pm/entries/")["Contents"]
    for item in listed:
        doc = json.loads(client.get_object(Bucket=client.bucket, Key=item["Key"])["Body"].read())
        if json.loads(doc["entry"]).get("stage") == stage:
            return str(item["Key"])
    raise AssertionError(f"no entry for {stage}")


def _gets(sent: list[Any], key: str) -> list[tuple[str | None, int]]:
    return [(rng, n) for method, path, rng, n in sent if method == "GET" and path.endswith(key)]


def _pushed(project: Callable[..., Proj], client: Any) -> str:
    """Build and push :data:`PIPELINE` to the client's bucket: the remote's URL."""
    url = f"s3://{client.bucket}/pm"
    first = project(PIPELINE, FILES, name="first")
    first.cli("build", "--remote", url, "--push")
    assert first.path("build/small.txt").read_bytes() == SMALL
    return url


def test_pull_reads_a_replaced_object_only_up_to_its_recorded_size(
    project: Callable[..., Proj], s3: tuple[Any, list[Any]]
) -> None:
    client, sent = s3
    url = _pushed(project, client)
    # untampered: every output comes back, the empty one too (S3 answers any range of an
    # empty object "not satisfiable": that is an empty object, not a failing remote)
    clean = project(PIPELINE, FILES, name="clean")
    result = clean.cli("pull", "--remote", url)
    assert "fetched 3 entries and 3 objects" in result.output
    assert "0 ran, 3 restored" in clean.cli("build").output
    assert clean.path("build/small.txt").read_bytes() == SMALL
    assert clean.path("build/empty.txt").read_bytes() == b""
    assert clean.path("build/big.txt").read_bytes() == BIG
    client.put_object(Bucket=client.bucket, Key=_object_key(SMALL), Body=b"\0" * (4 << 20))
    sent.clear()
    second = project(PIPELINE, FILES, name="second")
    result = second.cli("pull", "--remote", url)
    assert "refused 1 object(s)" in result.output
    gets = _gets(sent, _object_key(SMALL))
    assert gets, sent
    assert all(rng == f"bytes=0-{len(SMALL)}" and n <= len(SMALL) + 1 for rng, n in gets), gets
    assert "1 ran, 2 restored" in second.cli("build").output  # small: its object refused


def test_a_large_object_is_streamed_in_bounded_ranges(
    project: Callable[..., Proj], s3: tuple[Any, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object over the streaming size is copied to a file in ranged requests, never past
    its recorded size + 1, however large the remote's object has become."""
    from pipemake import remote, remotefs

    monkeypatch.setattr(remote, "_BIG", 100)
    monkeypatch.setattr(remotefs, "_CHUNK", 128)
    client, sent = s3
    url = _pushed(project, client)
    clean = project(PIPELINE, FILES, name="clean")
    sent.clear()
    clean.cli("pull", "--remote", url)
    assert "0 ran, 3 restored" in clean.cli("build").output
    assert clean.path("build/big.txt").read_bytes() == BIG
    ranges = {rng for rng, _n in _gets(sent, _object_key(BIG))}
    assert ranges == {"bytes=0-127", "bytes=128-255", "bytes=256-300"}  # 128 + 128 + 45
    client.put_object(Bucket=client.bucket, Key=_object_key(BIG), Body=b"b" * (4 << 20))
    sent.clear()
    second = project(PIPELINE, FILES, name="second")
    result = second.cli("pull", "--remote", url)
    assert "refused 1 object(s)" in result.output
    gets = _gets(sent, _object_key(BIG))
    assert gets and sum(n for _r, n in gets) <= len(BIG) + 1, gets
    assert "1 ran, 2 restored" in second.cli("build").output  # big: its object refused


def test_dry_run_reads_a_replaced_entry_only_up_to_the_entry_limit(
    project: Callable[..., Proj], s3: tuple[Any, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipemake import remote

    monkeypatch.setattr(remote, "_ENTRY_MAX", 64 << 10)
    client, sent = s3
    url = _pushed(project, client)
    key = _entry_key(client, "small")
    client.put_object(Bucket=client.bucket, Key=key, Body=b" " * (2 << 20))
    sent.clear()
    second = project(PIPELINE, FILES, name="second")
    result = second.cli("dry-run", "--remote", url)
    assert "small" in result.output
    gets = _gets(sent, key)
    assert gets, sent
    assert all(rng == f"bytes=0-{(64 << 10) - 1}" and n <= 64 << 10 for rng, n in gets), gets


def test_an_entry_over_a_large_limit_is_read_in_parts_and_only_when_it_fits(
    project: Callable[..., Proj], s3: tuple[Any, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A limit over ``LARGE`` (an entry's): the first part is read, then the size asked; a
    file within the limit is read on in ranged parts, one over it is not read further."""
    from pipemake import remote, remotefs

    monkeypatch.setattr(remote, "_ENTRY_MAX", 64 << 10)
    monkeypatch.setattr(remotefs, "LARGE", 1 << 10)
    monkeypatch.setattr(remotefs, "_CHUNK", 128)
    client, sent = s3
    url = _pushed(project, client)
    key = _entry_key(client, "small")
    size = client.head_object(Bucket=client.bucket, Key=key)["ContentLength"]
    assert size > 256  # three parts or more
    sent.clear()
    clean = project(PIPELINE, FILES, name="clean")
    clean.cli("pull", "--remote", url)
    assert "0 ran, 3 restored" in clean.cli("build").output
    parts = [f"bytes={i}-{min(i + 128, size) - 1}" for i in range(0, size, 128)]
    assert sorted(rng for rng, _n in _gets(sent, key)) == sorted(parts)
    client.put_object(Bucket=client.bucket, Key=key, Body=b" " * (2 << 20))
    sent.clear()
    second = project(PIPELINE, FILES, name="second")
    assert "small" in second.cli("dry-run", "--remote", url).output
    assert _gets(sent, key) == [("bytes=0-127", 128)]


def test_a_file_remote_reads_only_the_first_part_of_an_entry_over_a_large_limit(
    project: Callable[..., Proj], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipemake import remote, remotefs

    monkeypatch.setattr(remote, "_ENTRY_MAX", 64 << 10)
    monkeypatch.setattr(remotefs, "LARGE", 1 << 10)
    monkeypatch.setattr(remotefs, "_CHUNK", 128)
    url = f"file://{tmp_path / 'remote'}"
    first = project(PIPELINE, FILES, name="first")
    first.cli("build", "--remote", url, "--push")
    path = _local_entry(tmp_path / "remote", "small")
    path.chmod(0o644)
    path.write_bytes(b" " * (1 << 20))
    read: list[int] = []
    real = remotefs.RemoteFiles.read_many

    def spy(self: Any, paths: list[str], limits: list[int]) -> dict[str, bytes]:
        got = real(self, paths, limits)
        read.extend(len(v) for p, v in got.items() if p == str(path))
        return got

    monkeypatch.setattr(remotefs.RemoteFiles, "read_many", spy)
    second = project(PIPELINE, FILES, name="second")
    assert "small" in second.cli("dry-run", "--remote", url).output
    assert read == [128]


def _local_entry(root: Any, stage: str) -> Any:
    for path in (root / "entries").rglob("*.json"):
        if json.loads(json.loads(path.read_text())["entry"]).get("stage") == stage:
            return path
    raise AssertionError(f"no entry for {stage}")

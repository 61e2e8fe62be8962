"""Remote stores through ``file://`` (issue 15): two fresh clones sharing a remote, signed
entries, tampered objects, read-only remotes, push/pull, remote gc. The S3 side (a moto
server on 127.0.0.1) is in ``test_remote_s3.py``."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _remote_fixtures import EACH_TOTAL, each_files, items_run, outputs, remote_env
from conftest import CHAIN, CHAIN_FILES, CHAIN_STAGES, TRACEBACK, Proj

from pipemake import api
from pipemake.remotefs import RemoteFiles
from pipemake.signing import seal, unseal
from pipemake.store import Store

EACH_FILES = each_files(40)


@pytest.fixture
def remote(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'remote'}"


def _clone(project: Callable[..., Proj], name: str, text: str = CHAIN, files=CHAIN_FILES) -> Proj:
    return project(text, files, name=name)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _remote_dir(url: str) -> Path:
    return Path(url.removeprefix("file://"))


def _warnings(output: str, word: str) -> list[str]:
    return [line for line in output.splitlines() if word in line]


# two fresh clones -------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["team-secret", None])
def test_a_second_clone_runs_nothing_and_restores_everything(
    project: Callable[..., Proj], remote: str, key: str | None
) -> None:
    first, second = _clone(project, "first"), _clone(project, "second")
    first.cli("build", "--push", env=remote_env(remote, key))
    assert first.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)
    result = second.cli("build", env=remote_env(remote, key))
    assert second.run_counts() == {}
    assert outputs(second) == outputs(first)
    assert "4 restored" in result.output
    trust = _warnings(result.output, "unverified")
    assert len(trust) == (0 if key else 1)  # a reader without a key says so, once
    # and it is a plain local hit from now on
    again = second.cli("build", env=remote_env(remote, key))
    assert second.run_counts() == {} and "4 up to date" in again.output


def test_a_reader_with_another_key_reruns_and_warns_once(
    project: Callable[..., Proj], remote: str
) -> None:
    first, second = _clone(project, "first"), _clone(project, "second")
    first.cli("build", "--push", env=remote_env(remote, "key-one"))
    result = second.cli("build", env=remote_env(remote, "key-two"))
    assert second.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)
    ignored = _warnings(result.output, "ignored")
    assert len(ignored) == 1, result.output
    assert "entries on remote" in ignored[0] and remote in ignored[0]
    assert outputs(second) == outputs(first)


def test_unsigned_entries_are_ignored_by_a_reader_with_a_key(
    project: Callable[..., Proj], remote: str
) -> None:
    first, second = _clone(project, "first"), _clone(project, "second")
    first.cli("build", "--push", env=remote_env(remote))  # no key: unsigned
    docs = list((_remote_dir(remote) / "entries").rglob("*.json"))
    assert docs and all(json.loads(p.read_text())["sig"] is None for p in docs)
    result = second.cli("build", env=remote_env(remote, "team-secret"))
    assert second.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)
    assert len(_warnings(result.output, "unsigned or signed with another key")) == 1


def test_a_forged_entry_is_ignored_and_nothing_outside_is_written(
    project: Callable[..., Proj], remote: str, tmp_path: Path
) -> None:
    """Someone who can write the remote but lacks the key rewrites an entry (another
    output, a path leaving the output) and keeps its old signature, or signs with a guess."""
    first, second = _clone(project, "first"), _clone(project, "second")
    first.cli("build", "--push", env=remote_env(remote, "team-secret"))
    for doc_path in (_remote_dir(remote) / "entries").rglob("*.json"):
        doc = json.loads(doc_path.read_text())
        entry = json.loads(doc["entry"])
        for manifest in entry["outputs"].values():
            if manifest["kind"] == "dir":
                manifest["entries"][0][0] = "../../../../escaped.txt"
            else:
                manifest["size"] += 0  # the same shape: only the signature can tell
        forged = seal(doc["key"], json.dumps(entry, sort_keys=True), b"a guess")
        os.chmod(doc_path, 0o644)
        doc_path.write_bytes(forged)
    result = second.cli("build", env=remote_env(remote, "team-secret"))
    assert second.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)
    assert len(_warnings(result.output, "ignored")) == 1
    assert not (tmp_path / "escaped.txt").exists()


def test_an_entry_escaping_its_output_is_refused_even_without_a_key(
    project: Callable[..., Proj], remote: str, tmp_path: Path
) -> None:
    first, second = _clone(project, "first"), _clone(project, "second")
    first.cli("build", "--push", env=remote_env(remote))
    for doc_path in (_remote_dir(remote) / "entries").rglob("*.json"):
        doc = json.loads(doc_path.read_text())
        entry = json.loads(doc["entry"])
        for manifest in entry["outputs"].values():
            if manifest["kind"] == "dir":
                manifest["entries"][0][0] = "../../escaped.txt"
        os.chmod(doc_path, 0o644)
        doc_path.write_bytes(seal(doc["key"], json.dumps(entry), None))
    second.cli("build", env=remote_env(remote))
    assert second.runs("report") == 1  # the dir entry was refused: report ran
    assert not list(tmp_path.rglob("escaped.txt"))


def test_a_signed_entry_cannot_be_replayed_under_another_key() -> None:
    k1, k2 = "1" * 32, "2" * 32
    text = json.dumps({"outputs": {}})
    sealed = seal(k1, text, b"secret")
    assert unseal(sealed, k1, b"secret")[0] == {"outputs": {}}
    moved = json.loads(sealed)
    moved["key"] = k2
    assert unseal(json.dumps(moved).encode(), k2, b"secret")[0] is None
    assert unseal(sealed, k1, b"other")[1] == "signature does not match PIPEMAKE_CACHE_KEY"
    assert unseal(b"\x80not json", k1, None)[0] is None
    assert unseal(b"[" * 100_000 + b"]" * 100_000, k1, None)[0] is None  # no RecursionError
    nested = seal(k1, "[" * 100_000 + "]" * 100_000, None)
    assert unseal(nested, k1, None)[0] is None


# objects ----------------------------------------------------------------------------------
def test_a_tampered_remote_object_is_refused_rebuilt_and_repaired_by_a_push(
    project: Callable[..., Proj], remote: str
) -> None:
    first, second, third = (_clone(project, n) for n in ("first", "second", "third"))
    first.cli("build", "--push", env=remote_env(remote, "k"))
    upper = (first.path("build/upper.txt").read_bytes(), "HELLO\nWORLD\n")
    objects = _remote_dir(remote) / "objects"
    bad = next(p for p in objects.rglob("*") if p.is_file() and p.read_bytes() == upper[0])
    os.chmod(bad, 0o644)
    bad.write_bytes(b"POISON\nWORLD\n")
    result = second.cli("build", "--push", env=remote_env(remote, "k"))
    assert second.read("build/upper.txt") == upper[1]
    assert second.runs("upper") == 1  # refused, so it ran
    assert second.runs("side") == 0  # the rest came from the remote
    assert len(_warnings(result.output, "refused 1 object")) == 1
    assert bad.read_bytes() == upper[0]  # the push replaced the corrupt object
    third.cli("build", env=remote_env(remote, "k"))
    assert third.run_counts() == {}


def test_a_foreach_stage_comes_back_whole_and_one_changed_item_reruns_alone(
    project: Callable[..., Proj], remote: str
) -> None:
    first = _clone(project, "first", EACH_TOTAL, EACH_FILES)
    second = _clone(project, "second", EACH_TOTAL, EACH_FILES | {"data/f0007.txt": "changed\n"})
    first.cli("build", "-j", "2", env=remote_env(remote, "k"))
    first.cli("push", env=remote_env(remote, "k"))
    third = _clone(project, "third", EACH_TOTAL, EACH_FILES)
    third.cli("build", env=remote_env(remote, "k"))
    assert third.run_counts() == {} and items_run(third) == []
    assert outputs(third) == outputs(first)
    second.cli("build", env=remote_env(remote, "k"))
    assert items_run(second) == ["f0007.txt"]
    assert second.read("build/upper/f0007.txt") == "CHANGED\n"
    assert second.read("build/upper/f0008.txt") == "FILE 8\n"


def test_fetching_many_objects_is_batched(project: Callable[..., Proj], remote: str) -> None:
    """Ten thousand small objects must not be ten thousand sequential round trips: the
    fetch of a stage's objects reads them in batches."""
    first = _clone(project, "first", EACH_TOTAL, EACH_FILES)
    first.cli("build", "--push", env=remote_env(remote))
    second = _clone(project, "second", EACH_TOTAL, EACH_FILES)
    calls: list[int] = []
    real = RemoteFiles.read_many

    def spy(self: RemoteFiles, paths: list[str], limits: list[int]) -> dict[str, bytes]:
        calls.append(len(paths))
        return real(self, paths, limits)

    RemoteFiles.read_many = spy  # type: ignore[method-assign]
    try:
        second.cli("build", env=remote_env(remote))
    finally:
        RemoteFiles.read_many = real  # type: ignore[method-assign]
    assert second.run_counts() == {}
    assert max(calls) >= len(EACH_FILES)  # all item objects in one batch
    assert len(calls) <= 4


# read-only, push, pull ----------------------------------------------------------------------
def test_a_read_only_remote_is_read_and_never_written(
    project: Callable[..., Proj], remote: str
) -> None:
    first, second = _clone(project, "first"), _clone(project, "second")
    first.cli("build", "--push", env=remote_env(remote, "k"))
    second.write("data/b.txt", "other\n")  # side must run: nothing of it may be pushed
    before = _files(_remote_dir(remote))
    second.cli(
        "build", "--push", code=2, env=remote_env(remote, "k", PIPEMAKE_REMOTE_READ_ONLY="1")
    )
    result = second.cli("build", "--remote-read-only", env=remote_env(remote, "k"))
    assert second.runs("side") == 1 and second.runs("upper") == 0
    assert "read-only" not in result.output
    push = second.cli("push", "--remote-read-only", code=2, env=remote_env(remote, "k"))
    assert "read-only" in push.output and TRACEBACK not in push.output
    gc = second.cli(
        "cache",
        "gc",
        "--remote",
        code=2,
        env=remote_env(remote, "k", PIPEMAKE_REMOTE_READ_ONLY="1"),
    )
    assert "read-only" in gc.output
    assert _files(_remote_dir(remote)) == before


def test_pull_fetches_ahead_and_push_sends_what_was_built(
    project: Callable[..., Proj], remote: str
) -> None:
    first, second = _clone(project, "first"), _clone(project, "second")
    first.cli("build", env=remote_env(remote, "k"))
    assert not _remote_dir(remote).exists()  # a plain build never pushes
    out = first.cli("push", "lines", env=remote_env(remote, "k")).output
    assert "pushed 2 entries" in out  # lines and what it needs (upper)
    out = first.cli("push", env=remote_env(remote, "k")).output
    assert "pushed 2 entries" in out and "2 entries were there already" in out
    pulled = second.cli("pull", "report", env=remote_env(remote, "k")).output
    assert "fetched 4 entries" in pulled
    assert not second.exists("build")  # pull fills the store, not the workspace
    dry = second.cli("dry-run", "--remote", "file:///nonexistent-remote-dir", env=remote_env(""))
    assert all(": restore:" in line for line in dry.output.splitlines()), dry.output
    second.cli("build", env={"PIPEMAKE_REMOTE": ""})  # from the local store alone
    assert second.run_counts() == {}


def test_push_never_writes_an_entry_whose_objects_it_lacks(
    project: Callable[..., Proj], remote: str
) -> None:
    first = _clone(project, "first")
    first.cli("build", env={"PIPEMAKE_CACHE_KEY": "k"})
    store = first.path(".pipemake/store/objects")
    wanted = first.path("build/upper.txt").read_bytes()
    victim = next(p for p in store.rglob("*") if p.is_file() and p.read_bytes() == wanted)
    victim.unlink()
    result = first.cli("push", code=1, env=remote_env(remote, "k"))
    assert "lacks their objects" in result.output
    with api.project_of(first.root, None, remote=remote) as proj:
        docs = list((_remote_dir(remote) / "entries").rglob("*.json"))
        keys = {json.loads(p.read_text())["key"] for p in docs}
        upper_key = proj.state.builds.brief()["upper"].key
    assert upper_key not in keys and len(keys) == 3


def test_concurrent_pushes_of_the_same_and_different_keys(
    project: Callable[..., Proj], remote: str
) -> None:
    same = [_clone(project, f"same{i}") for i in range(2)]
    other = _clone(project, "other", CHAIN, {"data/a.txt": "other\n", "data/b.txt": "b2\n"})
    for proj in [*same, other]:
        proj.cli("build", env={"PIPEMAKE_CACHE_KEY": "k"})
    procs = [
        subprocess.Popen(
            proj.argv("push"), env={**os.environ, **remote_env(remote, "k")},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for proj in [*same, other]
    ]  # fmt: skip
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    # every entry on the remote is whole and signed, every object matches its hash
    docs = list((_remote_dir(remote) / "entries").rglob("*.json"))
    assert len(docs) == 8  # 4 shared keys (written once) + 4 of the other pipeline
    for doc in docs:
        assert unseal(doc.read_bytes(), json.loads(doc.read_text())["key"], b"k")[0]
    assert not list(_remote_dir(remote).rglob(".tmp-*"))
    for name, files in (
        ("c1", CHAIN_FILES),
        ("c2", {"data/a.txt": "other\n", "data/b.txt": "b2\n"}),
    ):
        clone = _clone(project, name, CHAIN, files)
        clone.cli("build", env=remote_env(remote, "k"))
        assert clone.run_counts() == {}


def test_the_remote_key_in_the_pipeline_file(project: Callable[..., Proj], tmp_path: Path) -> None:
    text = CHAIN.replace("version: 1\n", "version: 1\nremote: ../shared-remote\n")
    first, second = _clone(project, "first", text), _clone(project, "second", text)
    first.cli("build", "--push")
    assert (tmp_path / "shared-remote" / "entries").is_dir()
    second.cli("build")
    assert second.run_counts() == {}
    bad = _clone(project, "bad", CHAIN.replace("version: 1\n", "version: 1\nremote: [x]\n"))
    result = bad.cli("build", code=2)
    assert "pipemake.yaml:3: 'remote' must be a URL" in result.output


def test_a_remote_nobody_can_open_is_a_clear_error(project: Callable[..., Proj]) -> None:
    proj = _clone(project, "p")
    result = proj.cli("build", "--remote", "nosuchscheme://bucket/x", code=1)
    assert "nosuchscheme://bucket/x" in result.output and TRACEBACK not in result.output
    assert proj.run_counts() == {}
    result = proj.cli("pull", code=2, env={"PIPEMAKE_REMOTE": ""})
    assert "needs a remote store" in result.output


def test_fsspec_is_imported_only_when_a_remote_is_used(tmp_path: Path) -> None:
    code = (
        "import sys; from pipemake.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'fsspec' not in sys.modules, 'fsspec imported'\n"
        "assert 's3fs' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=tmp_path)


# remote gc --------------------------------------------------------------------------------
def test_remote_gc_removes_only_unreachable_old_objects(
    project: Callable[..., Proj], remote: str
) -> None:
    first = _clone(project, "first")
    first.cli("build", "--push", env=remote_env(remote, "k"))
    objects = _remote_dir(remote) / "objects"
    kept = {p for p in objects.rglob("*") if p.is_file()}
    stray_old = objects / "ab" / ("c" * 30)
    stray_young = objects / "ab" / ("d" * 30)
    for p in (stray_old, stray_young):
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"nobody names me")
    old = time.time() - 3 * 86400
    for p in [stray_old, *kept]:
        os.utime(p, (old, old))
    dry = first.cli("cache", "gc", "--remote", "--dry-run", env=remote_env(remote, "k"))
    assert "would remove 1 objects" in dry.output and stray_old.exists()
    quiet = first.cli("cache", "gc", "--remote", env=remote_env(remote, "k"))
    assert not stray_old.exists() and stray_young.exists()
    assert "warning" not in quiet.output  # the default grace (a day) needs none
    short = first.cli("cache", "gc", "--remote", "--grace", "0", env=remote_env(remote, "k"))
    assert "objects a push is still uploading can go" in short.output
    assert not stray_young.exists()  # asked for, done: the warning is not a refusal
    assert all(p.exists() for p in kept)
    second = _clone(project, "second")
    second.cli("build", env=remote_env(remote, "k"))
    assert second.run_counts() == {}


def test_a_push_renews_an_old_object_it_finds(project: Callable[..., Proj], remote: str) -> None:
    """An old object no entry names yet, found by a push, gets a new age: a ``cache gc
    --remote`` running meanwhile does not take it from under the entry about to name it."""
    first = _clone(project, "first")
    first.cli("build", env={"PIPEMAKE_CACHE_KEY": "k"})
    first.cli("push", "side", env=remote_env(remote, "k"))
    objects = [p for p in (_remote_dir(remote) / "objects").rglob("*") if p.is_file()]
    for doc in (_remote_dir(remote) / "entries").rglob("*.json"):
        doc.unlink()  # as if its entry was never written: the objects are unreachable
    old = time.time() - 3 * 86400
    for p in objects:
        os.utime(p, (old, old))
    first.cli("push", "side", env=remote_env(remote, "k"))
    assert all(p.stat().st_mtime > time.time() - 3600 for p in objects)
    with api.project_of(first.root, None, remote=remote) as proj:
        assert api.remote_gc(proj, grace=86400)["objects_removed"] == 0
    second = _clone(project, "second")
    second.cli("build", "side", env=remote_env(remote, "k"))
    assert second.run_counts() == {}


# a file:// remote is untrusted input too -----------------------------------------------------
def test_links_and_fifos_in_a_file_remote_are_never_followed(
    project: Callable[..., Proj], remote: str, tmp_path: Path
) -> None:
    """A remote whose fan-out folder links elsewhere, whose entry is a link to a file
    outside, or whose object is a FIFO: reads take none of them, pushes and gc write and
    remove nothing outside the remote."""
    first = _clone(project, "first")
    first.cli("build", "--push", env=remote_env(remote))
    root = _remote_dir(remote)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / ("e" * 30)
    victim.write_text("a user's file")
    old = time.time() - 3 * 86400
    os.utime(victim, (old, old))
    # every object folder becomes a link to `outside`; the objects move there
    for fan in [p for p in (root / "objects").iterdir() if p.is_dir()]:
        for obj in fan.iterdir():
            os.replace(obj, outside / obj.name)
        fan.rmdir()
        fan.symlink_to(outside)
    (root / "objects" / "ee").symlink_to(outside)  # the fan of the victim's name
    # one entry becomes a link to a signed-looking file outside, another a FIFO
    docs = sorted((root / "entries").rglob("*.json"))
    secret = outside / "entry.json"
    os.replace(docs[0], secret)
    docs[0].symlink_to(secret)
    os.unlink(docs[1])
    os.mkfifo(docs[1])
    second = _clone(project, "second")
    result = second.cli("build", env=remote_env(remote))
    assert second.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)  # nothing taken
    # and the build says why: one warning naming a folder that leads out, and where to
    said = [line for line in result.output.splitlines() if "leads outside it" in line]
    assert len(said) == 1 and str(outside) in said[0] and "objects/" in said[0], result.output
    before = _files(outside)
    second.cli("push", env=remote_env(remote))
    second.cli("cache", "gc", "--remote", "--grace", "0", env=remote_env(remote))
    assert _files(outside) == before and victim.exists()


def test_large_objects_stream_both_ways(
    project: Callable[..., Proj], remote: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects over the in-memory size are streamed through files, verified the same."""
    import pipemake.remote as remote_module

    monkeypatch.setattr(remote_module, "_BIG", 4)
    first, second, third = (_clone(project, n) for n in ("first", "second", "third"))
    first.cli("build", "--push", env=remote_env(remote, "k"))
    second.cli("build", env=remote_env(remote, "k"))
    assert second.run_counts() == {} and outputs(second) == outputs(first)
    wanted = first.path("build/upper.txt").read_bytes()
    bad = next(
        p for p in _remote_dir(remote).rglob("*") if p.is_file() and p.read_bytes() == wanted
    )
    os.chmod(bad, 0o644)
    bad.write_bytes(wanted.lower())
    result = third.cli("build", env=remote_env(remote, "k"))
    assert third.runs("upper") == 1 and "refused 1 object" in result.output


def test_a_push_that_fails_mid_build_is_one_warning_and_push_says_so(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the remote should be")
    url = f"file://{blocked}"
    proj = _clone(project, "p")
    result = proj.cli("build", "--push", env=remote_env(url, "k"))
    assert proj.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)
    assert len(_warnings(result.output, "pushing to remote")) == 1, result.output
    push = proj.cli("push", code=1, env=remote_env(url, "k"))
    assert "pushing to remote" in push.output and TRACEBACK not in push.output
    assert blocked.read_text() == "a file where the remote should be"


def test_each_build_of_one_project_warns_once_for_itself(
    project: Callable[..., Proj], remote: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the Python API, two builds of one open project: each says its own count."""
    first = _clone(project, "first")
    first.cli("build", "--push", env=remote_env(remote, "key-one"))
    second = _clone(project, "second")
    monkeypatch.setenv("PIPEMAKE_CACHE_KEY", "key-two")
    from pipemake.events import Bus

    with api.project_of(second.root, None, remote=remote) as proj:
        for _ in range(2):
            said: list[str] = []
            bus = Bus()
            bus.subscribe(lambda e, said=said: said.append(e.data.get("text", "")))
            api.build(proj, ["upper"], bus=bus, executor="inline")
            assert sum("ignored 1 entry" in t for t in said) == 1, said
            proj.store.delete_actions(list(proj.store.created()))  # as if fresh again


def test_the_workspace_remembers_the_remote_it_was_built_with(
    project: Callable[..., Proj], remote: str
) -> None:
    """The first build told ``--remote`` records it: a later plain ``push`` (no option, no
    environment) sends to the same remote, and a second clone built against it restores."""
    first, second = _clone(project, "first"), _clone(project, "second")
    first.cli("build", "--remote", remote, env={"PIPEMAKE_REMOTE": ""})
    assert json.loads(first.read(".pipemake/store.json"))["remote"] == remote
    assert not _remote_dir(remote).exists() or not _files(_remote_dir(remote))
    first.cli("push", env={"PIPEMAKE_REMOTE": ""})  # no URL given: the remembered one
    second.cli("build", env=remote_env(remote))
    assert second.run_counts() == {} and outputs(second) == outputs(first)
    told = first.cli("status", "--remote", remote + "-other", env={"PIPEMAKE_REMOTE": ""})
    assert "this workspace's remote was" in told.output and "for this command only" in told.output
    assert json.loads(first.read(".pipemake/store.json"))["remote"] == remote


@pytest.mark.parametrize("rewrite", ["unsigned", "stale signature"])
def test_a_push_with_the_key_never_signs_an_entry_it_did_not_sign(
    project: Callable[..., Proj], remote: str, rewrite: str
) -> None:
    """A writer of the shared store rewrites an entry between the key holder's build and its
    push: the push leaves it out (said, counted) instead of signing it for the remote, so a
    keyed clone runs that stage rather than restoring the writer's bytes. An entry built
    without the key is left out the same way."""
    key = {"PIPEMAKE_CACHE_KEY": "k"}
    first = _clone(project, "first")
    first.cli("build", env=key)
    evil = Store(first.path(".pipemake/store")).put_bytes(b"EVIL\n")
    db = sqlite3.connect(first.path(".pipemake/store/actions.db"))
    for k, text in db.execute("SELECT key, entry FROM actions").fetchall():
        entry = json.loads(text)
        if entry["stage"] == "upper":
            entry["outputs"]["out"].update(hash=evil, size=5)
            if rewrite == "unsigned":
                entry.pop("signature")
            db.execute("UPDATE actions SET entry=? WHERE key=?", (json.dumps(entry), k))
    db.commit()
    db.close()
    out = first.cli("push", env=remote_env(remote, "k")).output
    assert "1 entry of this store is not signed with PIPEMAKE_CACHE_KEY" in out
    assert "was not pushed" in out and "pushed 3 entries" in out
    clone = _clone(project, "clone")
    clone.cli("build", env=remote_env(remote, "k"))
    assert clone.runs("upper") == 1 and b"EVIL" not in clone.path("build/upper.txt").read_bytes()

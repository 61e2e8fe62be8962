"""Acceptance checks of remote stores (issue 15), second round: an unsigned entry is never
laundered into a signed one through ``pipemake.lock``; Ctrl-C during a fetch stops the
build; a bucket that does not exist is not an empty remote; a ``file://`` remote whose
folders are links to elsewhere gets nothing created there; ``s3:///x`` names no bucket;
a keyed push says how many entries it replaced."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import xxhash
from _remote_fixtures import (
    EACH,
    each_files,
    items_run,
    local_objects,
    moto_server,
    point_at,
    stage_entries,
)
from conftest import CHAIN, CHAIN_FILES, CHAIN_STAGES, TRACEBACK, Proj, wait_for

from pipemake import remotefs
from pipemake.lockfile import FILE as LOCK


def _plant(root: Path, stage: str, evil: bytes) -> None:
    """As an attacker with write access to the remote: replace ``stage``'s entry with an
    unsigned one whose output is ``evil`` (its object put beside the others)."""
    path, doc, entry = stage_entries(root)[stage]
    digest = xxhash.xxh3_128_hexdigest(evil)
    obj = root / "objects" / digest[:2] / digest[2:]
    obj.parent.mkdir(parents=True, exist_ok=True)
    obj.write_bytes(evil)
    (manifest,) = entry["outputs"].values()
    manifest.update(hash=digest, size=len(evil))
    doc.update(entry=json.dumps(entry, sort_keys=True), sig=None)
    path.chmod(0o644)
    path.write_text(json.dumps(doc))


def _victim(project: Callable[..., Proj], tmp_path: Path) -> tuple[Proj, str]:
    """A remote holding the team's signed entries, one of them (``upper``) replaced by an
    attacker's unsigned entry; and a workspace whose build without the key restored the
    attacker's bytes (warned: trusting the remote unverified)."""
    root = tmp_path / "remote"
    url = f"file://{root}"
    project(CHAIN, CHAIN_FILES, name="team").cli(
        "build", "--push", env={"PIPEMAKE_REMOTE": url, "PIPEMAKE_CACHE_KEY": "team"}
    )
    _plant(root, "upper", b"PWNED\n")
    victim = project(CHAIN, CHAIN_FILES, name="victim")
    out = victim.cli("build", env={"PIPEMAKE_REMOTE": url, "PIPEMAKE_CACHE_KEY": ""}).output
    assert "trusting remote" in out
    assert victim.read("build/upper.txt") == "PWNED\n"
    return victim, url


def test_outputs_restored_from_an_unverified_entry_are_never_signed_through_the_lock(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """The workspace notes the stage restored from an entry no key verified; a build holding
    the key then runs it (saying why) instead of taking the outputs as the lock's and signing
    them, so a keyed push sends the honest bytes and a keyed clone restores those."""
    victim, url = _victim(project, tmp_path)
    keyed = {"PIPEMAKE_REMOTE": url, "PIPEMAKE_CACHE_KEY": "team"}
    plan = victim.cli("dry-run", env=keyed).output
    assert "upper: run: its outputs came from a cache entry no PIPEMAKE_CACHE_KEY verified" in plan
    out = victim.cli("build", env=keyed).output
    assert "pipemake.lock records" not in out
    assert victim.runs("upper") == 1
    assert victim.read("build/upper.txt") == "HELLO\nWORLD\n"
    assert victim.runs("side") == 0  # the key verified the remote's entry: restored
    assert "upper: running" not in victim.cli("build", env=keyed).output  # the note cleared
    clean = {"PIPEMAKE_REMOTE": f"file://{tmp_path / 'remote2'}", "PIPEMAKE_CACHE_KEY": "team"}
    victim.cli("push", env=clean)
    clone = project(CHAIN, CHAIN_FILES, name="clone")
    clone.cli("build", env=clean)
    assert clone.run_counts() == {}
    assert clone.read("build/upper.txt") == "HELLO\nWORLD\n"


def test_a_restore_writes_the_lock_a_run_writes(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """Whether a stage ran or was restored (verified or not) is the workspace's business:
    ``pipemake.lock`` is the same, so Git stays clean and a CI cache keyed on its hash keeps
    its key; the keyed build's refusal to sign comes from the workspace's own note."""
    url = f"file://{tmp_path / 'remote'}"
    ran = project(CHAIN, CHAIN_FILES, name="ran")
    ran.cli("build", "--push", env={"PIPEMAKE_REMOTE": url, "PIPEMAKE_CACHE_KEY": ""})
    restored = project(CHAIN, CHAIN_FILES, name="restored")
    restored.cli("build", env={"PIPEMAKE_REMOTE": url, "PIPEMAKE_CACHE_KEY": ""})
    assert restored.run_counts() == {}
    assert restored.read(LOCK) == ran.read(LOCK)
    out = restored.cli("build", env={"PIPEMAKE_CACHE_KEY": "team"}).output
    assert "its outputs came from a cache entry no PIPEMAKE_CACHE_KEY verified" in out
    assert restored.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)
    assert restored.read(LOCK) == ran.read(LOCK)


def test_a_keyed_fresh_clone_takes_the_outputs_committed_to_git(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """Outputs and lock committed to Git (by a workspace that restored some stages without
    the key): Git is the team's own, so a keyed clone with no store takes every stage's
    outputs as the lock records them, as a clone without a key does."""
    victim, _url = _victim(project, tmp_path)
    files = {
        str(p.relative_to(victim.root)): p.read_bytes()
        for p in victim.root.rglob("*")
        if p.is_file() and ".pipemake" not in p.parts and "runs" not in p.parts
    }
    for key in ("team", ""):
        clone = project(CHAIN, files, name=f"clone{key}")
        out = clone.cli("build", env={"PIPEMAKE_CACHE_KEY": key}).output
        assert clone.run_counts() == {}, out
        assert out.count("pipemake.lock records for this key") == len(CHAIN_STAGES)


#: more items than one request batch reads (see ``remote._STEP``)
EACH_FILES = each_files(600)


def test_a_foreach_stage_run_partly_from_unverified_items_runs_under_the_key(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """Items restored without the key and one new item run: the stage's outputs still hold
    what no key verified, so the workspace notes it and a keyed build runs it."""
    url = f"file://{tmp_path / 'remote'}"
    files = dict(list(EACH_FILES.items())[:5])
    project(EACH, files, name="first").cli("build", "--push", env={"PIPEMAKE_REMOTE": url})
    second = project(EACH, {**files, "data/new.txt": "new\n"}, name="second")
    second.cli("build", env={"PIPEMAKE_REMOTE": url, "PIPEMAKE_CACHE_KEY": ""})
    assert items_run(second) == ["new.txt"]
    assert "verified" not in second.read(LOCK)
    out = second.cli("build", env={"PIPEMAKE_CACHE_KEY": "team"}).output
    assert len(items_run(second)) == 1 + 6, out


def test_ctrl_c_while_a_build_fetches_stops_it_and_the_next_build_resumes(
    project: Callable[..., Proj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT arrives during the first batch of objects a build fetches: no further batch
    is read, nothing starts, the build exits 130; the store holds only verified objects and
    whole entries, and the next build restores everything, running nothing."""
    url = f"file://{tmp_path / 'remote'}"
    env = {"PIPEMAKE_REMOTE": url, "PIPEMAKE_CACHE_KEY": "k"}
    first = project(EACH, EACH_FILES, name="first")
    first.cli("build", "--push", env=env)
    clone = project(EACH, EACH_FILES, name="clone")
    real = remotefs.RemoteFiles.read_many
    reads_after: list[int] = []
    sent = []

    def read_many(self: remotefs.RemoteFiles, paths: list[str], limits: list[int]) -> Any:
        if sent:
            reads_after.append(len(paths))
        elif any("/objects/" in p for p in paths):
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, mid-fetch
        return real(self, paths, limits)

    monkeypatch.setattr(remotefs.RemoteFiles, "read_many", read_many)
    out = clone.cli("build", code=130, env=env).output
    assert sent and reads_after == [], reads_after
    assert "interrupted" in out and TRACEBACK not in out
    assert items_run(clone) == []
    assert not clone.path("build/upper").exists() or not any(clone.path("build/upper").iterdir())
    monkeypatch.setattr(remotefs.RemoteFiles, "read_many", real)
    clone.cli("cache", "verify")
    done = clone.cli("build", env=env).output
    assert "0 ran, 1 restored" in done, done
    assert items_run(clone) == []
    assert clone.read("build/upper/f0599.txt") == "FILE 599\n"


#: one stage whose output is a folder of 1,200 small files: as many objects to pull
MANY = """
name: many
stages:
  - id: many
    type: shell
    config:
      cmd: "mkdir -p {outputs.o}; for i in $(seq 1200); do echo $i > {outputs.o}/$i.txt; done"
      outputs: {o: build/many}
"""
#: imported by a ``pipemake pull`` subprocess (on its PYTHONPATH): every request batch of
#: objects is noted in PM_READS, then takes 0.3 s, so a Ctrl-C lands in the middle
SLOW_READS = """
import os, time
from pipemake import remotefs

_real = remotefs.RemoteFiles.read_many

def read_many(self, paths, limits):
    if any("/objects/" in p for p in paths):
        with open(os.environ["PM_READS"], "a") as log:
            log.write(f"{len(paths)}\\n")
        time.sleep(0.3)
    return _real(self, paths, limits)

remotefs.RemoteFiles.read_many = read_many
"""


def test_ctrl_c_during_a_pull_stops_within_a_batch_keeps_what_it_fetched_and_resumes(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """SIGINT to a real ``pipemake pull`` reading 1,200 objects in batches of 256: it stops
    after the batch under way, says how many it fetched, exits 130 and leaves only whole,
    verified objects; the next pull fetches the rest and a build then runs nothing."""
    env = {"PIPEMAKE_REMOTE": f"file://{tmp_path / 'remote'}", "PIPEMAKE_CACHE_KEY": "k"}
    project(MANY, name="first").cli("build", "--push", env=env)
    clone = project(MANY, name="clone")
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "sitecustomize.py").write_text(SLOW_READS)
    reads = tmp_path / "reads.log"
    pull = clone.popen(
        "pull", env={**env, "PYTHONPATH": str(tmp_path / "slow"), "PM_READS": str(reads)}
    )
    wait_for(lambda: reads.exists() and reads.read_text() != "", 60, "the first batch")
    pull.send_signal(signal.SIGINT)
    out, err = pull.communicate(timeout=60)
    assert pull.returncode == 130, out + err
    assert TRACEBACK not in err
    fetched = re.search(r"interrupted by SIGINT: fetched 0 entries and (\d+) objects", err)
    assert fetched is not None, err
    assert "Run `pipemake pull` again to fetch the rest" in err
    store = clone.path(".pipemake/store")
    kept = len(local_objects(store))
    assert 0 < kept == int(fetched[1]) < 1200  # every object it counts is stored, no more
    assert len(reads.read_text().split()) <= 2  # the batch under way, at most one more
    assert [p.name for p in store.rglob("*") if p.name.startswith(".")] == []  # no temp file
    clone.cli("cache", "verify")
    again = clone.sub("pull", env=env)
    assert f"fetched 1 entries and {1200 - kept} objects" in again.stdout
    assert "0 ran, 1 restored" in clone.cli("build", env=env).output
    assert clone.read("build/many/1200.txt") == "1200\n"


def test_folders_of_a_file_remote_that_lead_elsewhere_get_nothing_created_there(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """``objects/`` and ``entries/`` are links to a victim's folders: the push fails naming
    the link, and not one folder or file appears in the victim's folders."""
    victim = tmp_path / "victim"
    (victim / "objs").mkdir(parents=True)
    (victim / "ents").mkdir()
    root = tmp_path / "remote"
    root.mkdir()
    (root / "objects").symlink_to(victim / "objs")
    (root / "entries").symlink_to(victim / "ents")
    p = project(CHAIN, CHAIN_FILES)
    p.cli("build")
    out = p.cli("push", code=1, env={"PIPEMAKE_REMOTE": f"file://{root}"}).output
    assert "leads out of the remote" in out and TRACEBACK not in out
    assert sorted(victim.rglob("*")) == [victim / "ents", victim / "objs"]


@pytest.mark.parametrize("url", ["s3:///pm", "gs:///cache/x"])
def test_a_bucket_url_without_a_bucket_is_a_usage_error(
    project: Callable[..., Proj], url: str
) -> None:
    p = project(CHAIN, CHAIN_FILES)
    p.cli("build")
    result = p.cli("push", code=2, env={"PIPEMAKE_REMOTE": url})
    assert "names no folder or bucket" in result.output and TRACEBACK not in result.output


def test_a_keyed_push_counts_the_entries_it_replaced(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """Unsigned entries were there first: the keyed push replaces them and says so, rather
    than that none were there."""
    url = f"file://{tmp_path / 'remote'}"
    project(CHAIN, CHAIN_FILES, name="first").cli(
        "build", "--push", env={"PIPEMAKE_REMOTE": url, "PIPEMAKE_CACHE_KEY": ""}
    )
    keyed = {"PIPEMAKE_REMOTE": url, "PIPEMAKE_CACHE_KEY": "team"}
    trusted = project(CHAIN, CHAIN_FILES, name="trusted")
    trusted.cli("build", env=keyed)
    out = trusted.cli("push", env=keyed).output
    assert f"pushed {len(CHAIN_STAGES)} entries" in out
    assert f"{len(CHAIN_STAGES)} were there but replaced" in out, out


def test_the_push_warning_about_unsigned_entries_says_what_a_keyed_build_does(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """Built without the key, pushed with it: the warning's advice is what happens next: a
    keyed build signs the outputs the lock records as made here (nothing runs) and the push
    then sends every entry."""
    url = f"file://{tmp_path / 'remote'}"
    p = project(CHAIN, CHAIN_FILES)
    p.cli("build", env={"PIPEMAKE_CACHE_KEY": ""})
    keyed = {"PIPEMAKE_REMOTE": url, "PIPEMAKE_CACHE_KEY": "team"}
    out = p.cli("push", env=keyed).output
    assert "4 entries of this store are not signed" in out
    assert "runs the other stages again" in out and "those stages run again" not in out
    p.cli("build", env=keyed)
    assert p.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)  # the first build's runs only
    assert "pushed 4 entries" in p.cli("push", env=keyed).output


def test_a_fresh_clone_says_the_remote_has_what_it_restores(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """What a fresh clone restores comes from the remote: ``dry-run`` and ``build`` say
    so, not that the (empty) local store has it."""
    env = {"PIPEMAKE_REMOTE": f"file://{tmp_path / 'remote'}", "PIPEMAKE_CACHE_KEY": "k"}
    project(CHAIN, CHAIN_FILES, name="first").cli("build", "--push", env=env)
    clone = project(CHAIN, CHAIN_FILES, name="clone")
    for command in ("dry-run", "build"):
        out = clone.cli(command, env=env).output
        assert out.count("not built in this workspace, the remote has them") == 4, out
        assert "the store has them" not in out


# --- S3 (moto's server on 127.0.0.1) ---------------------------------------------------


@pytest.fixture
def moto_env(monkeypatch: pytest.MonkeyPatch) -> Any:
    """moto's S3 server, with the environment pointing boto3 and s3fs at it."""
    with moto_server() as endpoint:
        yield point_at(endpoint, monkeypatch)


@pytest.mark.slow
def test_a_bucket_that_does_not_exist_is_a_failed_remote_not_an_empty_one(
    project: Callable[..., Proj], moto_env: Any
) -> None:
    """``pull`` exits 1 naming the bucket; ``build`` warns that the remote failed and builds
    locally; an existing empty bucket is still an empty remote (pull exits 0)."""
    p = project(CHAIN, CHAIN_FILES)
    gone = {"PIPEMAKE_REMOTE": "s3://nosuchbucket/pm", "PIPEMAKE_CACHE_KEY": ""}
    out = p.cli("pull", code=1, env=gone).output
    assert "'nosuchbucket' does not exist" in out and TRACEBACK not in out
    out = p.cli("build", env=gone).output
    assert "remote s3://nosuchbucket/pm failed (bucket 'nosuchbucket' does not exist)" in out
    assert p.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)
    moto_env.create_bucket(Bucket="empty")
    fresh = project(CHAIN, CHAIN_FILES, name="fresh")
    out = fresh.cli("pull", env={"PIPEMAKE_REMOTE": "s3://empty/pm"}).output
    assert "fetched 0 entries" in out

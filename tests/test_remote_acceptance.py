"""Acceptance checks of remote stores (issue 15) as an attacker with write access to a
``file://`` remote would try them: whatever the remote holds in place of a file, the build
goes on, takes nothing it cannot verify and still uses what is sound."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from _remote_fixtures import outputs, stage_entries
from conftest import CHAIN, CHAIN_FILES, CHAIN_STAGES, TRACEBACK, Proj


def test_a_directory_in_place_of_an_object_or_entry_costs_only_its_own_stage(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """A directory where an object or an entry should be is not an object: the stages that
    need it run, and the rest of the remote is still used (the remote is not dropped as
    failed)."""
    root = tmp_path / "remote"
    env = {"PIPEMAKE_REMOTE": f"file://{root}", "PIPEMAKE_CACHE_KEY": ""}
    first = project(CHAIN, CHAIN_FILES, name="first")
    first.cli("build", "--push", env=env)
    entries = stage_entries(root)
    digest = entries["side"][2]["outputs"]["out"]["hash"]
    obj = root / "objects" / digest[:2] / digest[2:]
    obj.unlink()
    obj.mkdir()
    (obj / "inside").write_text("x")
    doc = entries["upper"][0]
    doc.unlink()
    doc.mkdir()
    second = project(CHAIN, CHAIN_FILES, name="second")
    result = second.cli("build", env=env)
    assert TRACEBACK not in result.output
    assert "failed" not in result.output, result.output
    assert second.run_counts() == {"upper": 1, "side": 1}
    assert outputs(second) == outputs(first)


@pytest.mark.parametrize("first_key", [None, "old-key"])
@pytest.mark.parametrize("how", ["build --push", "push"])
def test_a_key_holder_replaces_entries_it_cannot_trust(
    project: Callable[..., Proj], tmp_path: Path, first_key: str | None, how: str
) -> None:
    """Entries already on the remote but unsigned (a push without the key, or a writer
    without it racing ahead) or signed with a retired key do not block the key holder's
    own: its push replaces them, so the next keyed reader restores instead of running
    forever."""
    url = f"file://{tmp_path / 'remote'}"
    project(CHAIN, CHAIN_FILES, name="first").cli(
        "build", "--push", env={"PIPEMAKE_REMOTE": url, "PIPEMAKE_CACHE_KEY": first_key or ""}
    )
    keyed = {"PIPEMAKE_REMOTE": url, "PIPEMAKE_CACHE_KEY": "team-key"}
    trusted = project(CHAIN, CHAIN_FILES, name="trusted")
    if how == "push":
        trusted.cli("build", env=keyed)
        trusted.cli("push", env=keyed)
    else:
        trusted.cli("build", "--push", env=keyed)
    assert trusted.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)
    reader = project(CHAIN, CHAIN_FILES, name="reader")
    result = reader.cli("build", env=keyed)
    assert reader.run_counts() == {}
    assert "ignored" not in result.output
    assert outputs(reader) == outputs(trusted)


@pytest.mark.parametrize("url", ["file://", "file:///", "s3://"])
def test_a_remote_url_naming_no_place_is_a_usage_error(
    project: Callable[..., Proj], url: str
) -> None:
    """``file://`` with nothing after it would be the current folder: a push would write
    ``entries/`` and ``objects/`` into the project. A URL naming no place is refused."""
    p = project(CHAIN, CHAIN_FILES)
    p.cli("build")
    before = sorted(x.name for x in p.root.iterdir())
    result = p.cli("push", code=2, env={"PIPEMAKE_REMOTE": url})
    assert "names no folder" in result.output and TRACEBACK not in result.output
    assert sorted(x.name for x in p.root.iterdir()) == before


@pytest.mark.parametrize(
    ("url", "meant"), [("s3:/bucket/cache", "s3://bucket/cache"), ("file:/srv/c", "file:///srv/c")]
)
def test_a_mistyped_remote_url_is_a_usage_error_not_a_folder(
    project: Callable[..., Proj], url: str, meant: str
) -> None:
    """``s3:/bucket`` (one slash) is a typo of a URL, not a folder named ``s3:`` in the
    project: refused with the URL meant, nothing written."""
    p = project(CHAIN, CHAIN_FILES)
    p.cli("build")
    before = sorted(x.name for x in p.root.iterdir())
    result = p.cli("push", code=2, env={"PIPEMAKE_REMOTE": url})
    assert f"did you mean '{meant}'" in result.output and TRACEBACK not in result.output
    assert sorted(x.name for x in p.root.iterdir()) == before


@pytest.mark.parametrize(
    "spelling", ["file://{abs}", "file://{abs}/", "{abs}", "../remote/not/yet/there"]
)
def test_two_clones_through_pipemake_remote_however_it_is_spelled(
    project: Callable[..., Proj], tmp_path: Path, spelling: str
) -> None:
    """As real processes: clone A builds then pushes, clone B (a sibling folder) builds
    and runs nothing; the remote folder need not exist yet; a plain path, a path relative
    to the project and a URL with a trailing slash name the same remote."""
    url = spelling.format(abs=tmp_path / "remote" / "not" / "yet" / "there")
    env = {"PIPEMAKE_REMOTE": url, "PIPEMAKE_CACHE_KEY": ""}
    first, second = project(CHAIN, CHAIN_FILES, name="a"), project(CHAIN, CHAIN_FILES, name="b")
    first.sub("build", env=env)
    assert "pushed 4 entries" in first.sub("push", env=env).stdout
    assert (tmp_path / "remote" / "not" / "yet" / "there" / "entries").is_dir()
    proc = second.sub("build", env=env)
    assert second.run_counts() == {}
    assert "0 ran, 4 restored" in proc.stdout + proc.stderr
    assert outputs(second) == outputs(first)

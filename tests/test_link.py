"""``build --link``: outputs and store objects share inodes instead of being copied, linked
files are read-only, a store that cannot link falls back to copies, and a linked output
edited in place (after a chmod) is caught by the hash check and never restored."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Proj

from pipemake import api
from pipemake.hashing import hash_bytes

PIPE = """
name: linked
stages:
  - id: upper
    type: shell
    foreach: src
    config:
      cmd: >-
        echo {{item.name}} >> runs/items.log;
        {{{{ tr a-z A-Z < {{inputs.src}}; printf %s "$TAG"; }}}} > {{outputs.out}}/{{item.name}}
      inputs: {{src: data}}
      outputs: {{out: build/upper}}
      env: {{TAG: "{tag}"}}
  - id: tool
    type: shell
    config:
      cmd: >-
        echo x >> runs/tool.count; printf '#!/bin/sh\\necho %s\\n' "$TAG" > {{outputs.o}};
        chmod 755 {{outputs.o}}
      outputs: {{o: build/tool.sh}}
      env: {{TAG: "{tag}"}}
  - id: total
    type: shell
    config:
      cmd: "echo x >> runs/total.count; cat {{inputs.u}}/* > {{outputs.o}}"
      inputs: {{u: "{{upper.out}}"}}
      outputs: {{o: build/total.txt}}
"""
NAMES = [f"f{i}.txt" for i in range(1, 6)]
FILES = {f"data/{n}": f"file {n}\n" for n in NAMES}


def _want(name: str, tag: str = "a") -> bytes:
    return f"FILE {name.upper()}\n{tag}".encode()


def _object(p: Proj, data: bytes) -> Path:
    d = hash_bytes(data)
    return p.path(".pipemake/store/objects") / d[:2] / d[2:]


def _items_run(p: Proj) -> list[str]:
    log = p.path("runs/items.log")
    items = sorted(log.read_text().split()) if log.exists() else []
    log.unlink(missing_ok=True)
    return items


def _set_tag(p: Proj, tag: str) -> None:
    p.pipeline(PIPE.format(tag=tag))


def _assert_linked(p: Proj, rel: str, data: bytes) -> None:
    st = os.stat(p.path(rel))
    assert p.path(rel).read_bytes() == data
    assert st.st_nlink >= 2, f"{rel} is a copy (st_nlink {st.st_nlink})"
    assert st.st_ino == os.stat(_object(p, data)).st_ino, f"{rel} is not the store's object"
    assert not st.st_mode & 0o222, f"{rel} is writable: {stat.filemode(st.st_mode)}"


def _assert_copied(p: Proj, rel: str, data: bytes) -> None:
    st = os.stat(p.path(rel))
    assert p.path(rel).read_bytes() == data
    assert st.st_nlink == 1, f"{rel} has {st.st_nlink} links"
    assert st.st_ino != os.stat(_object(p, data)).st_ino


@pytest.fixture
def proj(project: Callable[..., Proj]) -> Proj:
    return project(PIPE.format(tag="a"), FILES)


def _flip_and_back(p: Proj, *args: str, env: dict[str, str] | None = None) -> None:
    """Change the param (a run) and change it back (a restore), with ``args``."""
    _set_tag(p, "b")
    p.cli("build", *args, env=env)
    assert _items_run(p) == NAMES
    _set_tag(p, "a")
    p.cli("build", *args, env=env)
    assert _items_run(p) == []  # restored, nothing ran


def test_restore_with_link_shares_the_objects_inodes_read_only(proj: Proj) -> None:
    proj.cli("build")  # a cold build by copy: the store's objects are its own files
    assert _items_run(proj) == NAMES
    for n in NAMES:
        _assert_copied(proj, f"build/upper/{n}", _want(n))
    _flip_and_back(proj, "--link")
    assert proj.runs("tool") == 2 and proj.runs("total") == 2
    for n in NAMES:
        _assert_linked(proj, f"build/upper/{n}", _want(n))
    _assert_linked(proj, "build/total.txt", b"".join(_want(n) for n in NAMES))
    # an executable output whose object is not executable is copied, never chmodded
    tool = proj.path("build/tool.sh")
    assert os.stat(tool).st_mode & 0o111 and os.stat(tool).st_nlink == 1
    assert not os.stat(_object(proj, b"#!/bin/sh\necho a\n")).st_mode & 0o111
    assert "run" not in proj.cli("dry-run").output  # read-only links are up to date


def test_without_link_a_restore_copies(proj: Proj) -> None:
    proj.cli("build", "--link")
    _items_run(proj)
    _flip_and_back(proj)
    for n in NAMES:
        _assert_copied(proj, f"build/upper/{n}", _want(n))
        assert os.stat(proj.path(f"build/upper/{n}")).st_mode & 0o200  # a writable copy
    _assert_copied(proj, "build/total.txt", b"".join(_want(n) for n in NAMES))


def test_env_variable_turns_linking_on(proj: Proj) -> None:
    proj.cli("build")
    _items_run(proj)
    _flip_and_back(proj, env={"PIPEMAKE_LINK": "1"})
    for n in NAMES:
        _assert_linked(proj, f"build/upper/{n}", _want(n))


def test_cold_build_with_link_stores_outputs_as_links(proj: Proj) -> None:
    proj.cli("build", "--link", "-j", "2")  # worker processes store the outputs
    assert _items_run(proj) == NAMES
    for n in NAMES:
        _assert_linked(proj, f"build/upper/{n}", _want(n))
    _assert_linked(proj, "build/total.txt", b"".join(_want(n) for n in NAMES))
    # an executable output stays executable (and its object with it), read-only
    script = b"#!/bin/sh\necho a\n"
    _assert_linked(proj, "build/tool.sh", script)
    assert os.stat(proj.path("build/tool.sh")).st_mode & 0o111
    # and a later restore links that executable object again
    proj.path("build/tool.sh").unlink()
    proj.cli("build", "--link")
    _assert_linked(proj, "build/tool.sh", script)
    assert proj.runs("tool") == 1
    assert "store OK" in proj.cli("cache", "verify").output


def test_api_build_link(proj: Proj) -> None:
    with api.project_of(proj.root, None) as project:
        api.build(project, link=True, executor="inline")
        assert project.store.link is False  # only for that build
    for n in NAMES:
        _assert_linked(proj, f"build/upper/{n}", _want(n))


def test_link_failure_falls_back_to_copies_and_is_not_retried(
    proj: Proj, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def no_link(src: object, dst: object, **kw: object) -> None:
        calls.append(str(dst))
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    # the inline executor runs the tasks in this process, so they see the failing link too
    proj.cli("build", "--link", "--executor", "inline")
    assert _items_run(proj) == NAMES
    assert calls  # it was tried
    for n in NAMES:
        _assert_copied(proj, f"build/upper/{n}", _want(n))
    _set_tag(proj, "b")
    proj.cli("build", "--link", "--executor", "inline")
    assert _items_run(proj) == NAMES
    _set_tag(proj, "a")
    calls.clear()
    proj.cli("build", "--link", "--executor", "inline")  # restores 5 files and 2 more
    assert _items_run(proj) == []
    assert len(calls) == 1, calls  # the first failure settles it for the build
    for n in NAMES:
        _assert_copied(proj, f"build/upper/{n}", _want(n))
    _assert_copied(proj, "build/total.txt", b"".join(_want(n) for n in NAMES))


def _edit_in_place(path: Path, chmod_back: bool = False) -> None:
    """What a user who chmods a linked output and rewrites it in place does (and, with
    ``chmod_back``, makes it read-only again, so only the hash check can tell)."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:
        fh.write(b"JUNK")
    if chmod_back:
        os.chmod(path, 0o444)


TOTAL = b"".join(_want(n) for n in NAMES)


@pytest.mark.parametrize("chmod_back", [False, True], ids=["left-writable", "read-only-again"])
def test_a_linked_output_edited_in_place_is_never_restored(proj: Proj, chmod_back: bool) -> None:
    proj.cli("build", "--link")
    victim = proj.path("build/total.txt")
    obj = _object(proj, TOTAL)
    assert os.stat(victim).st_ino == os.stat(obj).st_ino
    if os.geteuid() != 0:  # root writes read-only files anyway
        with pytest.raises(PermissionError):
            open(victim, "r+b")  # noqa: SIM115 - read-only: an ordinary write fails
    _edit_in_place(victim, chmod_back)
    assert obj.read_bytes().startswith(b"JUNK")  # the store's object changed with it
    # the next build sees the output changed, finds the object corrupt, and reruns
    out = proj.cli("build", "--link", "--no-progress").output
    assert "corrupt" in out
    assert proj.runs("total") == 2
    _assert_linked(proj, "build/total.txt", TOTAL)
    assert "store OK" in proj.cli("cache", "verify").output


def test_a_linked_output_grown_in_place_is_removed_from_the_store_once(proj: Proj) -> None:
    """An edit that changes the size (an append): the object, not the entry, is at fault,
    so it is removed when the restore meets it; the stage runs once and later restores."""
    proj.cli("build", "--link")
    victim = proj.path("build/total.txt")
    os.chmod(victim, 0o644)
    with open(victim, "ab") as fh:
        fh.write(b"EDIT\n")
    proj.cli("build", "--link")
    assert proj.runs("total") == 2
    victim.unlink()
    proj.cli("build", "--link")
    assert proj.runs("total") == 2  # restored: the store holds the right bytes again
    _assert_linked(proj, "build/total.txt", TOTAL)
    assert "store OK" in proj.cli("cache", "verify").output


def test_cache_verify_finds_an_object_edited_through_a_link(proj: Proj) -> None:
    proj.cli("build", "--link")
    _edit_in_place(proj.path("build/total.txt"))
    r = proj.cli("cache", "verify", code=1)
    assert f"corrupt object removed: {hash_bytes(TOTAL)}" in r.output
    assert not _object(proj, TOTAL).exists()
    proj.cli("build", "--link")  # the entry lacks its object: the stage runs, never junk
    assert proj.runs("total") == 2
    _assert_linked(proj, "build/total.txt", TOTAL)


def test_an_item_output_edited_in_place_is_never_restored(proj: Proj) -> None:
    proj.cli("build", "--link")
    _items_run(proj)
    victim = proj.path("build/upper/f2.txt")
    _edit_in_place(victim)
    proj.cli("build", "--link", code=None)
    assert not victim.exists() or victim.read_bytes() == _want("f2.txt")
    obj = _object(proj, _want("f2.txt"))
    assert not obj.exists() or obj.read_bytes() == _want("f2.txt")


def test_an_item_output_edited_in_place_is_rebuilt(proj: Proj) -> None:
    proj.cli("build", "--link")
    _items_run(proj)
    _edit_in_place(proj.path("build/upper/f2.txt"))
    proj.cli("build", "--link")
    assert "f2.txt" in _items_run(proj)
    for n in NAMES:
        _assert_linked(proj, f"build/upper/{n}", _want(n))


def test_a_file_the_rule_hardlinked_from_an_input_is_copied(project: Callable[..., Proj]) -> None:
    p = project(
        """
        name: ln
        stages:
          - id: keep
            type: shell
            config:
              cmd: "ln {inputs.src} {outputs.o}"
              inputs: {src: data/in.txt}
              outputs: {o: build/in.txt}
        """,
        {"data/in.txt": "mine\n"},
    )
    p.cli("build", "--link")
    src = p.path("data/in.txt")
    assert os.stat(src).st_mode & 0o200  # the user's input stays writable
    assert os.stat(src).st_ino != os.stat(_object(p, b"mine\n")).st_ino
    src.write_text("edited\n")  # and editing it never reaches the store
    assert _object(p, b"mine\n").read_bytes() == b"mine\n"


def test_a_build_without_link_replaces_read_only_linked_outputs(proj: Proj) -> None:
    proj.cli("build", "--link")
    _items_run(proj)
    proj.cli("build", "-B")  # reruns over read-only files
    assert _items_run(proj) == NAMES
    for n in NAMES:
        assert proj.path(f"build/upper/{n}").read_bytes() == _want(n)
    assert "store OK" in proj.cli("cache", "verify").output


def test_a_file_reached_through_a_symlinked_folder_is_copied_never_linked(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """With --link, a staged output file reached through a symlink a stage made to a folder
    elsewhere is copied into the store: the user's file there keeps its mode and inode."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "mine.txt").write_text("mine\n")
    (outside / "mine.txt").chmod(0o644)
    p = project(
        f"""
        name: l
        stages:
          - id: s
            type: shell
            config:
              cmd: "mkdir -p {{outputs.o}} && ln -s {outside} {{outputs.o}}/ext"
              outputs: {{o: build/o}}
        """
    )
    p.cli("build", "--link")
    st = (outside / "mine.txt").stat()
    assert st.st_mode & 0o777 == 0o644 and st.st_nlink == 1
    assert (outside / "mine.txt").read_text() == "mine\n"

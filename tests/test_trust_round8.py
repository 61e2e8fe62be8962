"""The store as untrusted input, eighth round: ``clean`` removes an output only when the
store's objects for it pass their hash check (a name alone is no copy to give back); a
``--cache-dir`` inside ``.pipemake`` (whose ``tmp`` every build empties) or reached through
a symbolic link that leads nowhere is refused before anything runs, and never remembered;
a foreach stage's own file whose object is corrupt is a miss, as a missing one is, and one
the workspace still holds is never removed for it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TRACEBACK, Proj, shell_foreach

from pipemake.hashing import hash_bytes

_TRAIN = """
name: t
stages:
  - id: train
    type: shell
    config:
      cmd: "echo 'needs the GPU cluster' >&2; exit 1"
      inputs: {i: data/a.txt}
      outputs: {m: build/model.bin}
"""


def _spoil(store: Path, data: bytes, how: str = "corrupt") -> None:
    """Replace the object of ``data`` in ``store`` by other bytes of the same size (or,
    ``how="remove"``, remove it), as someone sharing the store, or bit rot, could."""
    digest = hash_bytes(data)
    obj = store / "objects" / digest[:2] / digest[2:]
    assert obj.is_file(), obj
    os.chmod(obj.parent, 0o755)
    os.chmod(obj, 0o644)
    if how == "remove":
        obj.unlink()
        return
    tmp = obj.with_name(obj.name + ".x")
    tmp.write_bytes(b"Z" * len(data))
    os.replace(tmp, obj)


def test_clean_keeps_an_output_whose_store_object_fails_its_hash_check(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """A committed output of a stage that cannot run again, its object in a shared
    ``--cache-dir`` replaced by other bytes of the same size: ``clean`` (no ``--yes``, no
    terminal) keeps it, names it and exits 1, where it used to remove the only copy on the
    word of the object's name; ``--yes`` removes it as asked."""
    weights = b"weights from a 3-day run\n"
    p = project(_TRAIN, {"data/a.txt": "a\n", "build/model.bin": weights})
    cache = tmp_path / "cache"
    p.cli("--cache-dir", str(cache), "commit", "train")
    _spoil(cache, weights)
    out = p.cli("--cache-dir", str(cache), "clean", code=1).output
    assert TRACEBACK not in out
    assert "kept build/model.bin" in out and "removed" not in out
    assert p.path("build/model.bin").read_bytes() == weights
    out = p.cli("--cache-dir", str(cache), "clean", "--yes").output
    assert "removed build/model.bin" in out


_MK = """
name: t
stages:
  - id: mk
    type: shell
    config:
      cmd: "echo x >> runs/mk.count; cp {inputs.s} {outputs.o}"
      inputs: {s: data/a.txt}
      outputs: {o: build/o.txt}
"""


@pytest.mark.parametrize(
    "place", [".pipemake/tmp/store", ".pipemake/tmp", ".pipemake", ".pipemake/x"]
)
def test_a_store_inside_pipemakes_own_folder_is_refused_before_anything_runs(
    project: Callable[..., Proj], place: str
) -> None:
    """``--cache-dir .pipemake/tmp/store`` (or ``.pipemake/tmp``, ``.pipemake``, any
    folder in it but the default store): every build empties ``.pipemake/tmp``, so the
    store would be wiped. Refused with exit 2 naming it, nothing run, nothing
    remembered; ``.pipemake/store`` itself, named, is the default store and fine."""
    p = project(_MK, {"data/a.txt": "hi\n"})
    out = p.cli("--cache-dir", place, "build", "--no-progress", code=2).output
    assert TRACEBACK not in out
    assert "pipemake's own folder" in out and "--cache-dir" in out
    assert p.runs("mk") == 0 and not p.exists("build/o.txt")
    assert not p.exists(".pipemake/store.json")
    p.cli("--cache-dir", place, "status", code=2)
    p.cli("--cache-dir", ".pipemake/store", "build", "--no-progress")
    p.write("data/a.txt", "ho\n")
    p.cli("build", "--no-progress")
    p.write("data/a.txt", "hi\n")
    assert "mk: restored" in p.cli("build", "--no-progress").output
    assert p.runs("mk") == 2


@pytest.mark.parametrize("kind", ["dangling", "loop", "under-dangling", "under-file"])
def test_a_store_through_a_link_to_nowhere_is_refused_and_not_remembered(
    project: Callable[..., Proj], tmp_path: Path, kind: str
) -> None:
    """``--cache-dir`` a dangling symbolic link (a disk not mounted yet), a link loop, or a
    folder under such a link or under a file: exit 2 with a message naming the option, the
    link and where it leads (not a bare ``[Errno 17] File exists``), for a build, a status
    and a gc alike; nothing is remembered, so a later plain build works."""
    p = project(_MK, {"data/a.txt": "hi\n"})
    (tmp_path / "dangling").symlink_to(tmp_path / "not-mounted-yet" / "store")
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    (tmp_path / "afile").write_text("x\n")
    told = {
        "dangling": tmp_path / "dangling",
        "loop": tmp_path / "loop1",
        "under-dangling": tmp_path / "dangling" / "sub",
        "under-file": tmp_path / "afile" / "store",
    }[kind]
    words = {
        "dangling": ["is a symbolic link to", "not-mounted-yet/store", "does not exist"],
        "loop": ["is a symbolic link in a loop", "loop2"],
        "under-dangling": ["lies under", "dangling, a symbolic link to", "does not exist"],
        "under-file": ["lies under", "afile, which is a file"],
    }[kind]
    for cmd in (["build", "--no-progress"], ["status"], ["cache", "gc"]):
        out = p.cli("--cache-dir", str(told), *cmd, code=2).output
        assert TRACEBACK not in out and "Errno" not in out
        assert "--cache-dir" in out and str(told) in out
        for word in words:
            assert word in out, (word, out)
    assert p.runs("mk") == 0
    assert not p.exists(".pipemake/store.json")
    p.cli("build", "--no-progress")
    assert p.read("build/o.txt") == "hi\n"


def test_a_remembered_store_behind_a_dangling_link_is_refused_saying_what_to_do(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """The store remembered for the workspace is reached through a link to a disk not
    mounted now: a plain build is refused (exit 2, naming the link and what to do),
    rather than saying a new store is made there and then failing on ``mkdir``."""
    p = project(_MK, {"data/a.txt": "hi\n"})
    disk = tmp_path / "disk"
    disk.mkdir()
    (tmp_path / "mnt").symlink_to(disk)
    p.cli("--cache-dir", str(tmp_path / "mnt" / "store"), "build", "--no-progress")
    os.rename(disk, tmp_path / "away")
    out = p.cli("build", "--no-progress", code=2).output
    assert TRACEBACK not in out and "Errno" not in out
    assert "remembered in" in out and "mnt, a symbolic link to" in out
    assert "a new, empty one is made there" not in out
    assert "--cache-dir DIR" in out
    os.rename(tmp_path / "away", disk)
    assert "mk: up to date" in p.cli("build", "--no-progress").output


_EACH = shell_foreach("tr a-z A-Z < {inputs.src} > {outputs.o}/{item.name}")


def _committed_each(project: Callable[..., Proj]) -> Proj:
    files = {f"data/f{i}.txt": f"s{i}\n" for i in (1, 2, 3)}
    files.update({f"build/each/f{i}.txt": f"S{i}\n" for i in (1, 2, 3)})
    files["build/each/NOTES.md"] = "my notes\n"
    p = project(_EACH, files)
    p.cli("commit", "each")
    return p


def test_an_own_file_whose_object_is_corrupt_is_dropped_as_a_miss(
    project: Callable[..., Proj],
) -> None:
    """A committed foreach stage's own file (matching no item) whose store object was
    replaced by other bytes of the same size, its output removed, one input changed: the
    own file is dropped with its one warning, as for a missing object, and the build
    passes (it failed: "could not assemble build/each: a store object is missing or
    corrupt"); the corrupt bytes are never placed."""
    p = _committed_each(project)
    _spoil(p.path(".pipemake/store"), b"my notes\n")
    for f in p.path("build/each").iterdir():
        f.unlink()
    p.path("build/each").rmdir()
    p.write("data/f2.txt", "s2b\n")
    out = p.cli("build", "--no-progress").output
    assert TRACEBACK not in out and "FAILED" not in out
    assert "accepted by commit that no item writes are dropped" in out
    assert "NOTES.md" in out
    assert p.read("build/each/f2.txt") == "S2B\n" and p.read("build/each/f1.txt") == "S1\n"
    assert not p.exists("build/each/NOTES.md")
    assert "each: up to date" in p.cli("build", "--no-progress").output


@pytest.mark.parametrize("how", ["corrupt", "remove"])
def test_an_own_file_the_workspace_still_holds_is_kept_whatever_its_object(
    project: Callable[..., Proj], how: str
) -> None:
    """The own file's object is corrupt or gone, but the output is intact: one item
    reruns, and the own file stays in the workspace (it was removed as stale, on the word
    of the store, though the user's copy was right there) and in the stage's output."""
    p = _committed_each(project)
    _spoil(p.path(".pipemake/store"), b"my notes\n", how)
    p.write("data/f2.txt", "s2b\n")
    out = p.cli("build", "--no-progress").output
    assert TRACEBACK not in out and "FAILED" not in out
    assert "dropped" not in out
    assert p.read("build/each/NOTES.md") == "my notes\n"
    assert p.read("build/each/f2.txt") == "S2B\n"
    assert "each: up to date" in p.cli("build", "--no-progress").output
    assert p.read("build/each/NOTES.md") == "my notes\n"


def test_clean_checks_an_object_a_linked_output_shares(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """With ``--link`` the output is the store's object itself (one inode): changed in
    place in the store, its times put back, it is changed in the workspace too. ``clean``
    reads the object against its hash before it removes the link, so it keeps the file
    (the store cannot give the built bytes back)."""
    p = project(_MK, {"data/a.txt": "hello\n"})
    cache = tmp_path / "cache"
    p.cli("--cache-dir", str(cache), "build", "--link", "--no-progress")
    out = p.path("build/o.txt")
    digest = hash_bytes(b"hello\n")
    obj = cache / "objects" / digest[:2] / digest[2:]
    assert os.path.samefile(obj, out)
    st = obj.stat()
    os.chmod(obj, 0o644)
    with open(obj, "r+b") as fh:
        fh.write(b"HELLO\n")
    os.utime(obj, ns=(st.st_atime_ns, st.st_mtime_ns))
    got = p.cli("--cache-dir", str(cache), "clean", code=1).output
    assert "kept build/o.txt" in got
    assert out.read_bytes() == b"HELLO\n"


def test_a_told_store_that_fails_to_open_is_not_remembered(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """A build told a store whose action cache cannot be opened (damaged) fails, and does
    not remember that store: a later plain build uses the default one and works (it used
    to fail the same way at every plain build)."""
    p = project(_MK, {"data/a.txt": "hi\n"})
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "PIPEMAKE-STORE").write_text("")
    (bad / "actions.db").write_bytes(b"not a database, " * 64)
    out = p.cli("--cache-dir", str(bad), "build", "--no-progress", code=None).output
    assert TRACEBACK not in out and "damaged" in out
    assert not p.exists(".pipemake/store.json")
    p.cli("build", "--no-progress")
    assert p.read("build/o.txt") == "hi\n"


def test_an_own_file_whose_object_cannot_be_read_is_dropped_as_a_miss(
    project: Callable[..., Proj], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The own file's object cannot be read (a shared store another user's rights close):
    checking it raises OSError. That is a miss as a corrupt object is — the own file is
    dropped with its one warning and the build passes — never a traceback."""
    from pipemake.store import Store

    p = _committed_each(project)
    for f in p.path("build/each").iterdir():
        f.unlink()
    p.path("build/each").rmdir()
    p.write("data/f2.txt", "s2b\n")
    notes = hash_bytes(b"my notes\n")
    real = Store.verify_object

    def unreadable(self: Store, digest: str) -> bool | None:
        if digest == notes:
            raise PermissionError(13, "Permission denied", "objects/" + digest)
        return real(self, digest)

    monkeypatch.setattr(Store, "verify_object", unreadable)
    out = p.cli("build", "--no-progress").output
    assert TRACEBACK not in out and "FAILED" not in out, out
    assert "accepted by commit that no item writes are dropped" in out
    assert p.read("build/each/f2.txt") == "S2B\n" and p.read("build/each/f1.txt") == "S1\n"
    assert not p.exists("build/each/NOTES.md")

"""The worker's foreach item loop: what an item wrote is hashed, stored and staged the same
way whether it took the short way (plain files only: each read once, hashed and stored from
that read) or the general one (subdirectories, links, big files: through the hasher), and
no item ever sees what the one before it left in the shared work directories. Also the
store's object writes (fan-out directories made on demand, put-if-absent, no temporaries
left) and the thread spawner's merged environments."""

from __future__ import annotations

import os
import stat
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Proj, shell_foreach

from pipemake.executors import worker
from pipemake.executors.base import Task
from pipemake.executors.guardian import Guardian
from pipemake.executors.spawn import ThreadSpawner
from pipemake.fshash import Hasher
from pipemake.items import staged_files
from pipemake.store import MARKER, Store
from pipemake.workspace import manifest_of

RULES = '''
import os


def plain(ctx):
    """Plain files: the item's copy, an empty file and an executable one."""
    assert os.listdir(ctx.outputs["out"]) == [], os.listdir(ctx.outputs["out"])
    name = ctx.inputs["src"].name
    data = ctx.inputs["src"].read_bytes()
    (ctx.outputs["out"] / name).write_bytes(data.upper())
    (ctx.outputs["out"] / (name + ".empty")).write_bytes(b"")
    exe = ctx.outputs["out"] / (name + ".sh")
    exe.write_text("#!/bin/sh\\n")
    exe.chmod(0o755)


def mixed(ctx):
    """Odd items write a subdirectory, a link and an empty directory; even ones a file."""
    out = ctx.outputs["out"]
    assert os.listdir(out) == [], os.listdir(out)
    name = ctx.inputs["src"].name
    if int(name[1:].split(".")[0]) % 2:
        (out / ("d-" + name)).mkdir()
        (out / ("d-" + name) / "inner.txt").write_text(name)
        (out / ("l-" + name)).symlink_to(ctx.inputs["src"])
        (out / ("empty-" + name)).mkdir()
    else:
        (out / name).write_text(name)


def big(ctx):
    """A file too big to be read whole."""
    (ctx.outputs["out"] / ctx.inputs["src"].name).write_bytes(os.urandom(3 << 20))


def linked(ctx):
    """A hard link to the input: the input must stay writable and out of the store."""
    os.link(ctx.inputs["src"], ctx.outputs["out"] / ctx.inputs["src"].name)
'''


def _task(root: Path, func: str, n: int, link: bool = False) -> Task:
    data = root / "data"
    data.mkdir(exist_ok=True)
    items = []
    for i in range(n):
        (data / f"f{i}.txt").write_text(f"item {i}\n")
        items.append({"path": f"data/f{i}.txt", "relpath": f"f{i}.txt", "hash": "h"})
    (root / "itemrules.py").write_text(textwrap.dedent(RULES))
    return Task(
        id="each#0", stage="each", rule="python", root=str(root), store=str(root / "store"),
        inputs={"src": "data"}, outputs={"out": "stage/t0/work/out"},
        output_kinds={"out": "dir"}, params={"__function__": f"itemrules:{func}"},
        mode="items", items=items, foreach="src", done="stage/t0/done", link=link,
    )  # fmt: skip


def _run(task: Task, spawner: Any = None) -> dict[str, Any]:
    sent: list[tuple[str, Any]] = []
    sys.modules.pop("itemrules", None)
    cwd = os.getcwd()
    try:
        worker.execute(task, lambda kind, data: sent.append((kind, data)), spawner)
    finally:
        os.chdir(cwd)
        if task.root in sys.path:
            sys.path.remove(task.root)
    kind, data = sent[-1]
    assert kind == "result", data
    items: dict[str, Any] = {}  # each item's result is sent as it ends, the rest at the end
    for kind, said in sent:
        if kind == "items":
            items.update(said)
    items.update(data["items"])
    return items


def _check_staged(root: Path, store: Store, results: dict[str, Any]) -> None:
    """Each item's staged files are what its manifest says, and so are the objects; the
    manifest is the one the hasher gives for the same files laid out as a directory."""
    for rel, res in results.items():
        assert "error" not in res, (rel, res)
        manifest = res["outputs"]["out"]
        check = root / "check" / rel
        for entry_rel, flat in staged_files(res["staged"], "out", manifest["entries"]).items():
            target = check / entry_rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((root / flat).read_bytes())
            os.chmod(target, os.stat(root / flat).st_mode)
        assert manifest == manifest_of(Hasher(str(root)).info(str(check)))
        for entry_rel, digest, size, _mode in manifest["entries"]:
            assert store.read_bytes(digest) == (check / entry_rel).read_bytes()
            assert size == (check / entry_rel).stat().st_size


def test_plain_files_are_hashed_stored_and_staged_as_the_hasher_would(tmp_path: Path) -> None:
    task = _task(tmp_path, "plain", 5)
    results = _run(task)
    assert sorted(results) == [f"f{i}.txt" for i in range(5)]
    store = Store(tmp_path / "store")
    _check_staged(tmp_path, store, results)
    entries = results["f3.txt"]["outputs"]["out"]["entries"]
    assert [e[0] for e in entries] == ["f3.txt", "f3.txt.empty", "f3.txt.sh"]
    assert [e[3] for e in entries] == [0o644, 0o644, 0o755]
    assert store.read_bytes(entries[0][1]) == b"ITEM 3\n"
    objects = [p for p in (tmp_path / "store" / "objects").rglob("*") if p.is_file()]
    assert objects and not [p for p in objects if p.name.startswith(".tmp-")]
    assert all(not (p.stat().st_mode & 0o222) for p in objects)  # read-only
    # nothing left in the work directory, and the objects are copies (no --link)
    assert os.listdir(tmp_path / "stage" / "t0" / "work" / "out") == []
    assert results["f3.txt"]["staged"] == "stage/t0/done"  # plain files: one string says where
    staged = tmp_path / "stage/t0/done/out/f3.txt"
    assert staged.stat().st_nlink == 1


def test_subdirectories_links_and_empty_directories_take_the_general_way(
    tmp_path: Path,
) -> None:
    # each item asserts that it starts from an empty work directory: what an odd item left
    # behind (an empty directory, a directory emptied by the staging moves) is gone
    task = _task(tmp_path, "mixed", 6)
    results = _run(task)
    store = Store(tmp_path / "store")
    _check_staged(tmp_path, store, results)
    odd = [e[0] for e in results["f1.txt"]["outputs"]["out"]["entries"]]
    assert odd == ["d-f1.txt/inner.txt", "l-f1.txt"]
    even = [e[0] for e in results["f2.txt"]["outputs"]["out"]["entries"]]
    assert even == ["f2.txt"]


def test_a_big_file_is_streamed_the_general_way(tmp_path: Path) -> None:
    task = _task(tmp_path, "big", 2)
    results = _run(task)
    _check_staged(tmp_path, Store(tmp_path / "store"), results)


def test_with_link_the_plain_files_become_the_objects(tmp_path: Path) -> None:
    task = _task(tmp_path, "plain", 2, link=True)
    results = _run(task)
    store = Store(tmp_path / "store")
    _check_staged(tmp_path, store, results)
    res = results["f1.txt"]
    staged = (
        tmp_path / staged_files(res["staged"], "out", res["outputs"]["out"]["entries"])["f1.txt"]
    )
    digest = results["f1.txt"]["outputs"]["out"]["entries"][0][1]
    assert staged.stat().st_ino == store.object_path(digest).stat().st_ino
    assert not staged.stat().st_mode & 0o222


def test_with_link_a_file_linked_from_elsewhere_is_copied_and_stays_writable(
    tmp_path: Path,
) -> None:
    task = _task(tmp_path, "linked", 2, link=True)
    results = _run(task)
    store = Store(tmp_path / "store")
    source = tmp_path / "data" / "f1.txt"
    digest = results["f1.txt"]["outputs"]["out"]["entries"][0][1]
    assert store.read_bytes(digest) == source.read_bytes()
    assert store.object_path(digest).stat().st_ino != source.stat().st_ino
    assert source.stat().st_mode & 0o200


def test_objects_are_written_put_if_absent_with_fan_out_directories_made_on_demand(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "store")
    digest = store.put_bytes(b"hello")
    path = store.object_path(digest)
    assert path.read_bytes() == b"hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    inode = path.stat().st_ino
    assert store.put_bytes(b"hello") == digest
    assert path.stat().st_ino == inode  # present: not written again
    src = tmp_path / "file.bin"
    src.write_bytes(b"x" * 100)
    store.put_file(str(src), "ab" + "0" * 30)  # the digest is the caller's word
    assert store.object_path("ab" + "0" * 30).read_bytes() == b"x" * 100
    assert not [p for p in path.parent.parent.rglob(".tmp-*")]
    # with --link, into a fan-out directory that is not there yet
    linked = Store(tmp_path / "store2", link=True)
    other = tmp_path / "other.bin"
    other.write_bytes(b"y")
    linked.put_file(str(other), "cd" + "1" * 30)
    assert linked.object_path("cd" + "1" * 30).stat().st_ino == other.stat().st_ino


def test_a_failed_object_write_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "store")

    def fail(fd: int, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pipemake.objects.write_all", fail)
    with pytest.raises(OSError):
        store.put_bytes(b"data")
    files = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert [p.name for p in files] == [MARKER]  # the store's own mark, no object's temporary


def test_the_thread_spawner_merges_each_extra_environment_once(tmp_path: Path) -> None:
    guardian = Guardian()
    try:
        task = _task(tmp_path, "plain", 1)
        task.env = {"BASE": "b"}
        spawner = ThreadSpawner(task, guardian)
        one = spawner.merged({"TAG": "1"})
        assert one[b"TAG"] == b"1" and one[b"BASE"] == b"b"
        assert spawner.merged({"TAG": "1"}) is one
        two = spawner.merged({"TAG": "2"})
        assert two[b"TAG"] == b"2" and one[b"TAG"] == b"1"
        proc = spawner(["/bin/sh", "-c", 'printf %s "$BASE$TAG"'], {"TAG": "2"}, {
            "stdout": -1})  # fmt: skip
        out, _ = proc.communicate()
        assert out == b"b2"
        spawner.close()
    finally:
        guardian.close()


def test_a_shell_foreach_gets_each_items_own_environment(project: Callable[..., Proj]) -> None:
    proj = project(
        shell_foreach('printf %s "$NAME" > {outputs.o}/{item.name}', env='{NAME: "{item.stem}"}'),
        {f"data/f{i}.txt": f"{i}\n" for i in range(12)},
    )
    proj.cli("build", "-j", "2")
    assert [proj.read(f"build/each/f{i}.txt") for i in range(12)] == [f"f{i}" for i in range(12)]


def test_shell_paths_with_dot_components_are_made_relative() -> None:
    from pipemake.rules.shell import _plain

    assert _plain("/p/.pipemake/stage/t0/work/o")
    assert _plain("/p/a/.hidden")
    assert not _plain("/p/a/../b")
    assert not _plain("/p/a/./b")
    assert not _plain("/p/a/..")


def test_threaded_commands_read_an_empty_stdin_from_one_shared_dev_null(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    proj = project(
        shell_foreach("cat > {outputs.o}/{item.name}"),
        {f"data/f{i}.txt": f"{i}\n" for i in range(12)},
    )
    proj.cli("build", "-j", "2")
    assert [proj.read(f"build/each/f{i}.txt") for i in range(12)] == [""] * 12
    guardian = Guardian()
    try:
        before = _devnull_fds()
        spawner = ThreadSpawner(_task(tmp_path, "plain", 1), guardian)
        procs = [
            spawner(["/bin/sh", "-c", "cat"], None, {"stdin": -3, "stdout": -1}) for _ in range(2)
        ]
        assert [p.communicate()[0] for p in procs] == [b"", b""]
        assert len(_devnull_fds() - before) == 1  # one /dev/null for every child, kept open
        spawner.close()
        assert _devnull_fds() == before
    finally:
        guardian.close()


def _devnull_fds() -> set[int]:
    """This process's file descriptors open on /dev/null."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == os.devnull:
                out.add(int(fd))
        except OSError:
            pass  # the descriptor listdir itself used
    return out


def test_a_task_pickles_whole_with_its_typed_fields(tmp_path: Path) -> None:
    """The dask executor and worker processes get tasks pickled: the foreach folder, the
    mode and the reduce's mapped results come back as they were."""
    import dataclasses
    import pickle

    task = _task(tmp_path, "copy", 2)
    reduce = dataclasses.replace(task, mode="reduce", done="", mapped={"f0.txt": ("h", "json")})
    for sent in (task, reduce):
        back = pickle.loads(pickle.dumps(sent))
        assert back == sent and back.mode == sent.mode and back.done == sent.done
        assert back.mapped == sent.mapped
    assert reduce != task

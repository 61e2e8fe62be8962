"""``foreach`` (issue 4): item-level minimality, failed-item resume, early cutoff through a
foreach stage, collisions, filters, map-reduce, and the stat cache after a relocation."""

from __future__ import annotations

import marshal
import os
import shutil
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import Proj

import pipemake
from pipemake import api
from pipemake.rule import Context, Input, Item, Output, Param, Rule

UPPER = """
name: items
stages:
  - id: upper
    type: shell
    foreach: src
    config:
      cmd: >-
        echo {{item.relpath}} >> runs/items.log;
        mkdir -p "$(dirname {{outputs.out}}/{{item.relpath}})" &&
        {tool} < {{inputs.src}} > {{outputs.out}}/{{item.relpath}}
      inputs: {{src: data}}
      outputs: {{out: build/upper}}
  - id: total
    type: shell
    config:
      cmd: "echo x >> runs/total.count; cat $(find {{inputs.u}} -type f | sort) > {{outputs.o}}"
      inputs: {{u: "{{upper.out}}"}}
      outputs: {{o: build/total.txt}}
"""
FILES = {f"data/f{i}.txt": f"file {i}\n" for i in range(1, 6)} | {"data/sub/deep.txt": "deep\n"}


def _items_run(proj: Proj) -> list[str]:
    log = proj.path("runs/items.log")
    items = sorted(log.read_text().split()) if log.exists() else []
    log.unlink(missing_ok=True)
    return items


@pytest.fixture
def items(project: Callable[..., Proj]) -> Proj:
    proj = project(UPPER.format(tool="tr a-z A-Z"), FILES | {"data/.hidden": "no\n"})
    proj.cli("build", "-j", "2")
    assert _items_run(proj) == sorted([f"f{i}.txt" for i in range(1, 6)] + ["sub/deep.txt"])
    return proj


def test_one_changed_item_reruns_alone(items: Proj) -> None:
    items.write("data/f3.txt", "changed\n")
    out = items.cli("dry-run").output
    assert "upper: run: 1 of 6 items changed (first: data/f3.txt: content changed)" in out
    items.cli("build")
    assert _items_run(items) == ["f3.txt"]
    assert items.read("build/upper/f3.txt") == "CHANGED\n"
    assert items.read("build/upper/f1.txt") == "FILE 1\n"


def test_bookkeeping_that_cannot_be_saved_is_a_warning_and_costs_no_rerun(
    items: Proj, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The item index and item hashes are written after the stage, for later builds only:
    a full disk there is said, the build succeeds, and the next build still reruns nothing
    but the changed item."""
    from pipemake.records import BuildRecords

    def full(*args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(BuildRecords, "set_item_index", full)
    monkeypatch.setattr(BuildRecords, "set_item_hashes", full)
    items.write("data/f3.txt", "changed\n")
    out = items.cli("build", "--no-progress").output
    assert "upper| could not save what the next build reuses (database or disk is full)" in out
    assert _items_run(items) == ["f3.txt"] and items.read("build/upper/f3.txt") == "CHANGED\n"
    monkeypatch.undo()
    items.write("data/f4.txt", "again\n")
    items.cli("build")
    assert _items_run(items) == ["f4.txt"] and items.read("build/upper/f3.txt") == "CHANGED\n"


def test_touch_reruns_nothing(items: Proj) -> None:
    os.utime(items.path("data/f2.txt"))
    assert "run" not in items.cli("dry-run").output
    items.cli("build")
    assert _items_run(items) == [] and items.runs("total") == 1


def test_added_and_deleted_items(items: Proj) -> None:
    items.write("data/new.txt", "new\n")
    items.path("data/f1.txt").unlink()
    items.cli("build")
    assert _items_run(items) == ["new.txt"]
    assert items.exists("build/upper/new.txt")
    assert not items.exists("build/upper/f1.txt")  # its output left the stage's output
    assert sorted(p.name for p in items.path("build/upper").iterdir()) == [
        "f2.txt", "f3.txt", "f4.txt", "f5.txt", "new.txt", "sub"
    ]  # fmt: skip


def test_param_change_reruns_all_and_back_restores(items: Proj) -> None:
    items.pipeline(UPPER.format(tool="tr a-z A-Y"))
    items.cli("build")
    assert len(_items_run(items)) == 6
    items.pipeline(UPPER.format(tool="tr a-z A-Z"))
    out = items.cli("build", "--no-progress").output
    assert _items_run(items) == []
    assert "upper: restored" in out or "up to date" in out
    assert items.read("build/upper/f1.txt") == "FILE 1\n"


def test_early_cutoff_through_a_foreach_stage(project: Callable[..., Proj]) -> None:
    proj = project(UPPER.format(tool="wc -c"), FILES)
    proj.cli("build")
    _items_run(proj)
    proj.write("data/f2.txt", "FILE 2\n")  # same length: the item's output is unchanged
    proj.cli("build")
    assert _items_run(proj) == ["f2.txt"]
    assert proj.runs("total") == 1  # cut off at the foreach stage


def test_failed_item_fails_the_stage_and_resumes(project: Callable[..., Proj]) -> None:
    yaml = UPPER.format(tool="tr a-z A-Z").replace(
        "echo {item.relpath} >> runs/items.log;",
        "echo {item.relpath} >> runs/items.log; ! grep -q bad {inputs.src} &&",
    )
    proj = project(yaml, FILES | {"data/f4.txt": "bad\n"})
    result = proj.cli("build", code=1)
    assert "item f4.txt" in result.output and "1 of 6 item(s) failed" in result.output
    assert not proj.exists("build/upper")  # a failed stage places nothing
    assert len(_items_run(proj)) == 6
    proj.write("data/f4.txt", "good\n")
    proj.cli("build")
    assert _items_run(proj) == ["f4.txt"]  # the five that passed were kept
    assert proj.read("build/upper/f4.txt") == "GOOD\n"


def test_two_items_writing_one_path_fail_naming_both(project: Callable[..., Proj]) -> None:
    proj = project("""
    name: clash
    stages:
      - id: flat
        type: shell
        foreach: src
        config:
          cmd: "cp {inputs.src} {outputs.out}/{item.name}"
          inputs: {src: data}
          outputs: {out: build/flat}
    """, {"data/a/x.txt": "1", "data/b/x.txt": "2"})  # fmt: skip
    result = proj.cli("build", code=1)
    assert "a/x.txt" in result.output and "b/x.txt" in result.output
    assert not proj.exists("build/flat")


def test_pattern_and_glob_inputs(project: Callable[..., Proj]) -> None:
    proj = project("""
    name: pat
    stages:
      - id: pngs
        type: shell
        foreach: {input: src, pattern: "*.png"}
        config:
          cmd: "echo {item.relpath} > {outputs.out}/{item.stem}.txt"
          inputs: {src: data}
          outputs: {out: build/pngs}
      - id: globbed
        type: shell
        foreach: src
        config:
          cmd: "echo {item.relpath} > {outputs.out}/{item.stem}.txt"
          inputs: {src: "data/*.jpg"}
          outputs: {out: build/globbed}
    """, {"data/a.png": "", "data/b.PNG": "", "data/c.jpg": "", "data/d.txt": ""})  # fmt: skip
    proj.cli("build")
    assert sorted(p.name for p in proj.path("build/pngs").iterdir()) == ["a.txt", "b.txt"]
    assert [p.name for p in proj.path("build/globbed").iterdir()] == ["c.txt"]
    assert proj.read("build/globbed/c.txt") == "c.jpg\n"


def test_relocated_tree_is_rehashed_not_trusted(items: Proj, tmp_path: Path) -> None:
    moved = Proj(tmp_path / "moved")
    shutil.copytree(items.root, moved.root, symlinks=True)
    path = moved.path("data/f1.txt")
    st = path.stat()
    path.write_text("FILE 9\n"[:6] + "\n")  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: only the inode differs
    assert path.stat().st_size == st.st_size
    moved.cli("build")
    assert moved.read("build/upper/f1.txt") == "FILE 9\n"
    assert _items_run(moved) == ["f1.txt"]


# a map-reduce rule, registered for these tests only ----------------------------------------
MAPS: list[str] = []


class _Lengths(Rule):
    """Map: each file's length. Reduce: the files sorted by length, written as a list."""

    name = "mr_lengths"
    inputs: ClassVar = {"input_dir": Input(kind="dir")}
    outputs: ClassVar = {"output_dir": Output(kind="dir")}
    params: ClassVar = {"scale": Param(type="int", default=1), "reverse": Param("bool", False)}
    values: ClassVar = ("n",)
    reduce_params: ClassVar = ("reverse",)
    map_reduce = True

    def map_item(self, ctx: Context, item: Item) -> Any:
        MAPS.append(item.relpath)
        return len(Path(ctx.inputs["input_dir"]).read_bytes()) * ctx.params["scale"]

    def reduce(self, ctx: Context, mapped: Mapping[str, Any]) -> dict[str, Any]:
        order = sorted(mapped, key=lambda r: mapped[r], reverse=ctx.params["reverse"])
        (ctx.outputs["output_dir"] / "order.txt").write_text("\n".join(order) + "\n")
        return {"n": len(mapped)}


MR = """
name: mr
stages:
  - id: lengths
    type: mr_lengths
    foreach: input_dir
    config: {{input_dir: data, output_dir: build/lengths, scale: {scale}, reverse: {reverse}}}
"""


def test_map_reduce_caches_maps(project: Callable[..., Proj], monkeypatch: Any) -> None:
    pipemake.register_rule("mr_lengths", _Lengths)
    proj = project(MR.format(scale=1, reverse="false"), {"data/a": "xxx", "data/b": "x"})
    MAPS.clear()

    def build() -> None:
        with api.project_of(proj.root, None) as p:
            api.build(p, executor="inline")

    build()
    assert sorted(MAPS) == ["a", "b"] and proj.read("build/lengths/order.txt") == "b\na\n"
    MAPS.clear()
    proj.pipeline(MR.format(scale=1, reverse="true"))  # a reduce-only param
    build()
    assert MAPS == [] and proj.read("build/lengths/order.txt") == "a\nb\n"
    proj.write("data/c", "xx")
    build()
    assert MAPS == ["c"] and proj.read("build/lengths/order.txt") == "a\nc\nb\n"
    proj.pipeline(MR.format(scale=2, reverse="true"))  # a map param: every map reruns
    MAPS.clear()
    build()
    assert sorted(MAPS) == ["a", "b", "c"]


class _Pairs(Rule):
    """Asks for batches of two but only implements run_item; its gather checks what it
    gets for items that returned no values."""

    name = "pairs"
    inputs: ClassVar = {"input_dir": Input(kind="dir")}
    outputs: ClassVar = {"output_dir": Output(kind="dir")}
    values: ClassVar = ("seen",)
    batch_size = 2

    def run_item(self, ctx: Context, item: Item) -> None:
        text = Path(ctx.inputs["input_dir"]).read_text()
        (ctx.outputs["output_dir"] / item.name).write_text(text.upper())

    def gather(self, params: Mapping[str, Any], per_item: Mapping[str, Any]) -> dict[str, Any]:
        assert all(type(v) is dict and not v for v in per_item.values()), per_item
        return {"seen": len(per_item)}


def test_a_batch_rule_without_run_batch_runs_each_item_in_its_own_context(
    project: Callable[..., Proj], monkeypatch: Any
) -> None:
    pipemake.register_rule("pairs", _Pairs)
    files = {f"data/f{i}.txt": f"file {i}\n" for i in range(5)}
    proj = project(
        """
    name: pairs
    stages:
      - id: up
        type: pairs
        foreach: input_dir
        config: {input_dir: data, output_dir: build/up}
    """,
        files,
    )

    def build() -> None:
        with api.project_of(proj.root, None) as p:
            api.build(p, executor="inline")

    build()
    assert {p.name: p.read_text() for p in proj.path("build/up").iterdir()} == {
        f"f{i}.txt": f"FILE {i}\n" for i in range(5)
    }
    proj.write("data/f2.txt", "new\n")  # its batch partner comes from the store
    build()
    assert {p.name: p.read_text() for p in proj.path("build/up").iterdir()} == {
        f"f{i}.txt": "NEW\n" if i == 2 else f"FILE {i}\n" for i in range(5)
    }


class _Picks(Rule):
    """Writes two folders and returns one of them as a computed path value."""

    name = "picks"
    outputs: ClassVar = {"output_dir": Output(kind="dir")}
    params: ClassVar = {"n": Param(type="int", default=2)}
    values: ClassVar = ("chosen",)
    path_values: ClassVar = {"chosen": "output_dir"}

    def run(self, ctx: Context) -> dict[str, Any]:
        out = ctx.outputs["output_dir"]
        for sub in ("keep", "skip"):
            (out / sub).mkdir()
            for i in range(ctx.params["n"]):
                (out / sub / f"{sub}{i}.txt").write_text(f"{sub} {i}\n")
        return {"chosen": "keep"}


def test_foreach_over_a_computed_path_and_typed_vars(
    project: Callable[..., Proj], monkeypatch: Any
) -> None:
    pipemake.register_rule("picks", _Picks)
    proj = project("""
    name: computed
    vars: {n: 3}
    stages:
      - id: pick
        type: picks
        config: {output_dir: build/pick, n: "{vars.n}"}
      - id: each
        type: shell
        foreach: src
        config:
          cmd: "cp {inputs.src} {outputs.out}/{item.name}"
          inputs: {src: "{pick.chosen}"}
          outputs: {out: build/each}
    """)

    with api.project_of(proj.root, None) as p:
        api.build(p, executor="inline")
    assert sorted(x.name for x in proj.path("build/each").iterdir()) == [
        "keep0.txt", "keep1.txt", "keep2.txt"
    ]  # fmt: skip


def test_a_corrupt_object_reruns_only_its_item(items: Proj) -> None:
    """A restore that meets a corrupt object drops it and reruns the items it belonged to;
    the other items come back from the store."""
    from pipemake.hashing import hash_bytes

    digest = hash_bytes(b"FILE 2\n")
    obj = items.path(f".pipemake/store/objects/{digest[:2]}/{digest[2:]}")
    assert obj.exists()
    os.chmod(obj, 0o644)
    obj.write_bytes(b"EVIL 2\n")
    shutil.rmtree(items.path("build/upper"))
    items.cli("build")
    assert _items_run(items) == ["f2.txt"]
    assert items.read("build/upper/f2.txt") == "FILE 2\n"
    assert sorted(p.name for p in items.path("build/upper").iterdir()) == sorted(
        [f"f{i}.txt" for i in range(1, 6)] + ["sub"]
    )


def test_a_rerun_of_one_item_reads_only_its_entry(items: Proj, monkeypatch) -> None:
    """The other items' outputs come from the stage's item index in the workspace state,
    not from reading every item's entry out of the store."""
    from pipemake.store import Store

    asked: list[int] = []
    real = Store.get_actions

    def spy(self, keys):
        asked.append(len(keys))
        return real(self, keys)

    monkeypatch.setattr(Store, "get_actions", spy)
    items.write("data/f3.txt", "changed\n")
    items.cli("build")
    assert _items_run(items) == ["f3.txt"]
    assert max(asked) <= 2  # the last keys of the two stages, then the changed item's own
    assert items.read("build/upper/f3.txt") == "CHANGED\n"
    assert items.read("build/upper/sub/deep.txt") == "DEEP\n"
    assert items.read("build/total.txt").startswith("FILE 1\n")


_KEYS = {"f1.txt": "k"}


@pytest.mark.parametrize(
    "garbage, rehash",
    [(b"not marshal", False), ("text, not bytes", True), (b"\xff\x00 not marshal", True),
     (marshal.dumps([1, 2]), True), (marshal.dumps((_KEYS, {})), True),
     (marshal.dumps((_KEYS, {"f1.txt": "x"})), True), (marshal.dumps(({}, {})), True)],
)  # fmt: skip
def test_a_damaged_item_index_falls_back_to_the_store(
    items: Proj, garbage: bytes | str, rehash: bool
) -> None:
    """The index is decoded only when its hash matches, and used only in its exact shape;
    anything else (even with a matching hash) means reading the items from the store."""
    import sqlite3

    import xxhash

    raw = garbage.encode() if isinstance(garbage, str) else garbage
    digest = xxhash.xxh3_128_hexdigest(raw) if rehash else "0" * 32
    db = sqlite3.connect(items.path(".pipemake/state.db"))
    with db:
        db.execute("UPDATE item_index SET digest=?, data=?", (digest, garbage))
    db.close()
    items.write("data/f3.txt", "changed\n")
    items.cli("build")
    assert _items_run(items) == ["f3.txt"]
    assert sorted(p.name for p in items.path("build/upper").iterdir()) == sorted(
        [f"f{i}.txt" for i in range(1, 6)] + ["sub"]
    )
    assert items.read("build/upper/f1.txt") == "FILE 1\n"


def test_an_unchanged_input_tree_gives_the_stage_key_without_listing_items(
    items: Proj, monkeypatch
) -> None:
    from pipemake import resolve

    listed: list[int] = []
    real = resolve.select

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        listed.append(len(out))
        return out

    monkeypatch.setattr(resolve, "select", spy)
    items.cli("build")
    assert listed == [] and _items_run(items) == []
    assert "upper: up to date" in items.cli("dry-run").output
    assert listed == []
    items.write("data/f4.txt", "four\n")
    items.cli("build")
    assert listed == [6] and _items_run(items) == ["f4.txt"]
    assert items.read("build/upper/f4.txt") == "FOUR\n"


def test_a_lost_map_object_reruns_its_map(project: Callable[..., Proj], monkeypatch: Any) -> None:
    """A restore that fails on a map-reduce stage reruns the maps whose results are gone
    (and only those), then the reduce."""
    from pipemake.hashing import hash_bytes

    pipemake.register_rule("mr_lengths", _Lengths)
    proj = project(MR.format(scale=1, reverse="false"), {"data/a": "xxx", "data/b": "x"})

    def build() -> None:
        with api.project_of(proj.root, None) as p:
            api.build(p, executor="inline")

    def obj(data: bytes) -> Path:
        h = hash_bytes(data)
        return proj.path(f".pipemake/store/objects/{h[:2]}/{h[2:]}")

    build()
    proj.pipeline(MR.format(scale=1, reverse="true"))
    build()
    proj.pipeline(MR.format(scale=1, reverse="false"))  # back: a restore of "b\na\n"
    os.chmod(obj(b"b\na\n"), 0o644)
    obj(b"b\na\n").write_bytes(b"EVIL\n")  # the output's object is corrupt
    obj(b"3").unlink()  # and the map result of data/a is gone
    MAPS.clear()
    build()
    assert MAPS == ["a"]
    assert proj.read("build/lengths/order.txt") == "b\na\n"


def test_the_item_index_is_not_trusted_after_a_gc_elsewhere(project: Callable[..., Proj]) -> None:
    """Another workspace's ``cache gc`` on a shared store removed this one's item entries:
    a later change reruns the items instead of assembling a stage entry whose objects
    are gone, and the store stays whole."""
    w1 = project(UPPER.format(tool="tr a-z A-Z"), FILES)
    other = "name: other\nstages:\n  - {id: a, type: shell, config: {cmd: 'true'}}\n"
    w2 = project(other, name="other")
    env = {"PIPEMAKE_CACHE_DIR": str(w1.root.parent / "shared")}
    w1.cli("build", env=env)
    assert len(_items_run(w1)) == 6
    # w1's roots forgotten (as for a workspace gone longer than the grace period)
    shutil.rmtree(w1.root.parent / "shared" / "roots")
    out = w2.cli("cache", "gc", "--keep-days", "0", "--grace", "0", env=env).output
    assert "removed" in out
    w1.write("data/f3.txt", "changed\n")
    w1.cli("build", env=env)
    assert len(_items_run(w1)) == 6  # their entries are gone: all of them ran again
    assert w1.read("build/upper/f3.txt") == "CHANGED\n"
    assert "store OK" in w1.cli("cache", "verify", env=env).output


FLAT = """\
name: flat
stages:
  - id: upper
    type: shell
    foreach: src
    config:
      cmd: >-
        echo {{item.relpath}} >> runs/items.log;
        tr a-z {upper} < {{inputs.src}} > {{outputs.out}}/{{item.name}};
        chmod {mode} {{outputs.out}}/{{item.name}}
      inputs: {{src: data}}
      outputs: {{out: build/upper}}
"""
FLAT_FILES = {f"data/f{i}.txt": f"zed {i}\n" for i in range(1, 7)}


@pytest.mark.parametrize("link", [False, True])
def test_a_stage_whose_items_all_ran_is_exactly_its_manifest(
    project: Callable[..., Proj], link: bool
) -> None:
    """Every item run (cold, a param change, --force): the staged tree becomes the output
    whole. It holds exactly the items' files, with the manifest's modes, whatever stood
    there before; later single-item reruns and restores work on it as on any output."""
    import stat

    args = ["--link"] if link else []
    proj = project(FLAT.format(upper="A-Z", mode="600"), FLAT_FILES)
    proj.path("build/upper").mkdir(parents=True)
    proj.write("build/upper/stray.txt", "not an item's\n")
    proj.cli("build", "-j", "2", *args)
    assert len(_items_run(proj)) == 6

    def state() -> dict[str, tuple[str, int]]:
        out = {}
        for p in sorted(proj.path("build/upper").iterdir()):
            mode = stat.S_IMODE(p.stat().st_mode)
            out[p.name] = (p.read_text(), mode)
        return out

    want_mode = 0o444 if link else 0o644  # linked outputs are the read-only objects
    assert state() == {f"f{i}.txt": (f"ZED {i}\n", want_mode) for i in range(1, 7)}
    proj.pipeline(FLAT.format(upper="A-Y", mode="640"))  # a param change: all rerun
    proj.cli("build", "-j", "2", *args)
    assert len(_items_run(proj)) == 6
    assert state() == {f"f{i}.txt": (f"YED {i}\n", want_mode) for i in range(1, 7)}
    proj.write("data/f2.txt", "zed\n")  # one item: the per-file way
    proj.cli("build", *args)
    assert _items_run(proj) == ["f2.txt"]
    assert state()["f2.txt"] == ("YED\n", want_mode)
    assert "upper: up to date" in proj.cli("build", "--no-progress", *args).output
    proj.pipeline(FLAT.format(upper="A-Z", mode="600"))  # back: restored, not run
    out = proj.cli("build", "--no-progress", *args).output
    assert _items_run(proj) == ["f2.txt"]  # only the changed file is new under A-Z
    assert "upper:" in out and state()["f1.txt"] == ("ZED 1\n", want_mode)
    assert not any(proj.path(".pipemake/tmp").glob("trash-*"))  # the old tree is gone


CRASHING = """
name: crash
stages:
  - id: each
    type: python
    foreach: src
    retries: 1
    config:
      function: "crashwork:copy"
      inputs: {src: data}
      outputs: {o: build/each}
  - id: total
    type: shell
    config:
      cmd: "ls {inputs.u} | wc -l > {outputs.o}"
      inputs: {u: "{each.o}"}
      outputs: {o: build/total.txt}
"""
CRASHWORK = """
import os, uuid

def copy(ctx):
    src = ctx.inputs["src"]
    name = f"{src.stem}-{uuid.uuid4().hex[:8]}.txt"  # not the same on every run
    with open(os.path.join(ctx.outputs["o"], name), "w") as f:
        f.write(src.read_text().upper())
    if src.name == "f13.txt" and not os.path.exists("crashed.flag"):
        open("crashed.flag", "w").close()
        os._exit(9)  # the worker dies after items of this task were staged
"""


@pytest.mark.slow
def test_a_task_retried_after_its_worker_died_leaves_nothing_extra(
    project: Callable[..., Proj],
) -> None:
    """The dead attempt's staged files are not the output's: it holds exactly the
    manifest, and the stage downstream sees that."""
    files = {f"data/f{i}.txt": f"file {i}\n" for i in range(10, 50)}
    proj = project(CRASHING, files | {"crashwork.py": CRASHWORK})
    proj.cli("build", "-j", "1")
    assert proj.exists("crashed.flag")
    names = sorted(p.name for p in proj.path("build/each").iterdir())
    assert len(names) == 40 and len({n.split("-")[0] for n in names}) == 40
    assert proj.read("build/total.txt").strip() == "40"
    out = proj.cli("build", "--no-progress").output
    assert "each: up to date" in out and "total: up to date" in out


@pytest.mark.slow
def test_a_task_retried_after_its_worker_died_counts_that_attempt(
    project: Callable[..., Proj],
) -> None:
    """retries: 1 allows two attempts: the worker's death was the first, so an item that
    fails in the second is not tried a third time."""
    work = CRASHWORK.replace(
        '    if src.name == "f13.txt" and',
        '    if src.name == "f13.txt":\n'
        '        open("f13.runs", "a").write("x")\n'
        '    if src.name == "f13.txt" and os.path.exists("crashed.flag"):\n'
        '        raise ValueError("f13 is bad")\n'
        '    if src.name == "f13.txt" and',
    )
    files = {f"data/f{i}.txt": f"file {i}\n" for i in range(10, 20)}
    proj = project(CRASHING, files | {"crashwork.py": work})
    out = proj.cli("build", "-j", "1", "--no-progress", code=1).output
    assert proj.exists("crashed.flag") and "f13 is bad" in out
    assert proj.read("f13.runs") == "xx"  # the worker's death, then the failure


def test_an_output_hard_linked_to_its_input_leaves_the_input_alone(
    project: Callable[..., Proj],
) -> None:
    """An item that links its input into its output (a cheap copy): the input's inode keeps
    its mode, and the output is still exactly the manifest."""
    import stat

    work = "import os\n\ndef link(ctx):\n    src = ctx.inputs['src']\n" \
        "    os.link(src, os.path.join(ctx.outputs['o'], src.name))\n"  # fmt: skip
    yaml = CRASHING.replace("crashwork:copy", "linkwork:link").replace("    retries: 1\n", "")
    proj = project(
        yaml, {f"data/f{i}.txt": f"file {i}\n" for i in range(3)} | {"linkwork.py": work}
    )
    modes = {0: 0o444, 1: 0o600, 2: 0o775}
    for i, mode in modes.items():
        os.chmod(proj.path(f"data/f{i}.txt"), mode)
    proj.cli("build", "-j", "1")
    for i, mode in modes.items():
        assert stat.S_IMODE(os.stat(proj.path(f"data/f{i}.txt")).st_mode) == mode
        assert proj.read(f"build/each/f{i}.txt") == f"file {i}\n"
    assert proj.read("build/total.txt").strip() == "3"

"""Item keys survive a chain (DESIGN.md, "Item keys survive a chain"): one changed source
file reruns one item in every foreach stage down the chain; the stage id is not part of what
a stage produces, so renaming a stage changes nothing downstream."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import Proj

CHAIN3 = r"""
name: chain3
stages:
  - id: first
    type: shell
    foreach: src
    config:
      cmd: "echo {item.relpath} >> runs/first.count; tr a-z A-Z < {inputs.src} > {outputs.o}/{item.relpath}"
      inputs: {src: data}
      outputs: {o: build/first}
  - id: second
    type: shell
    foreach: src
    config:
      cmd: "echo {item.relpath} >> runs/second.count; rev < {inputs.src} > {outputs.o}/{item.relpath}"
      inputs: {src: "{first.o}"}
      outputs: {o: build/second}
  - id: third
    type: shell
    foreach: src
    config:
      cmd: "echo {item.relpath} >> runs/third.count; cat {inputs.src} {inputs.src} > {outputs.o}/{item.relpath}"
      inputs: {src: "{second.o}"}
      outputs: {o: build/third}
  - id: total
    type: shell
    config:
      cmd: "echo x >> runs/total.count; cat {inputs.d}/* > {outputs.o}"
      inputs: {d: "{third.o}"}
      outputs: {o: build/total.txt}
"""


def _files(n: int) -> dict[str, str]:
    return {f"data/f{i}.txt": f"file {i}\n" for i in range(n)}


def _ran(p: Proj, stage: str) -> list[str]:
    path = p.path(f"runs/{stage}.count")
    return path.read_text().split() if path.exists() else []


def _reset(p: Proj) -> None:
    for f in p.path("runs").glob("*.count"):
        f.unlink()


def test_one_changed_file_reruns_one_item_in_every_stage(project: Callable[..., Proj]) -> None:
    p = project(CHAIN3, _files(4))
    p.cli("build")
    assert sorted(_ran(p, "third")) == [f"f{i}.txt" for i in range(4)]
    _reset(p)
    p.write("data/f2.txt", "changed\n")
    out = p.cli("build").output
    assert _ran(p, "first") == ["f2.txt"], out
    assert _ran(p, "second") == ["f2.txt"], out
    assert _ran(p, "third") == ["f2.txt"], out
    assert _ran(p, "total") == ["x"]
    assert p.read("build/third/f2.txt") == "DEGNAHC\n" * 2
    _reset(p)
    p.cli("build")
    assert p.run_counts() == {}


@pytest.mark.slow
def test_a_new_file_runs_only_its_items_and_a_removed_one_nothing(
    project: Callable[..., Proj],
) -> None:
    p = project(CHAIN3, _files(3))
    p.cli("build")
    _reset(p)
    p.write("data/new.txt", "brand new\n")
    p.cli("build")
    assert (_ran(p, "first"), _ran(p, "second"), _ran(p, "third")) == (
        ["new.txt"],
        ["new.txt"],
        ["new.txt"],
    )
    _reset(p)
    p.path("data/f0.txt").unlink()
    p.cli("build")
    assert _ran(p, "first") == _ran(p, "second") == _ran(p, "third") == []
    assert not p.exists("build/third/f0.txt")
    assert sorted(x.name for x in p.path("build/third").iterdir()) == [
        "f1.txt",
        "f2.txt",
        "new.txt",
    ]
    assert _ran(p, "total") == ["x"]


def test_dry_run_says_one_item_per_stage(project: Callable[..., Proj]) -> None:
    p = project(CHAIN3, _files(4))
    p.cli("build")
    p.write("data/f1.txt", "other\n")
    out = p.cli("dry-run").output
    assert "first: run" in out and "1 of 4 item" in out, out
    # downstream stages cannot know their items before `first` runs, but must not claim all
    assert "4 of 4" not in out, out


def test_early_cutoff_down_the_chain(project: Callable[..., Proj]) -> None:
    p = project(CHAIN3, _files(3))
    p.cli("build")
    _reset(p)
    p.write("data/f1.txt", "FILE 1\n")  # upper-cases to the same bytes
    p.cli("build")
    assert _ran(p, "first") == ["f1.txt"]
    assert _ran(p, "second") == _ran(p, "third") == _ran(p, "total") == []


def test_going_back_restores_items_without_running(project: Callable[..., Proj]) -> None:
    p = project(CHAIN3, _files(3))
    p.cli("build")
    p.write("data/f1.txt", "two\n")
    p.cli("build")
    _reset(p)
    p.write("data/f1.txt", "file 1\n")
    p.cli("build")
    assert p.run_counts() == {}, p.run_counts()
    assert p.read("build/third/f1.txt") == "1 ELIF\n" * 2


def test_renaming_an_upstream_stage_reruns_nothing_downstream(
    project: Callable[..., Proj],
) -> None:
    p = project(CHAIN3, _files(2))
    p.cli("build")
    _reset(p)
    p.edit("pipemake.yaml", "id: first", "id: primero")
    p.edit("pipemake.yaml", "{first.o}", "{primero.o}")
    out = p.cli("build").output
    assert _ran(p, "second") == _ran(p, "third") == _ran(p, "total") == [], out


def test_renaming_a_plain_stage_keeps_its_downstream_up_to_date(chain: Proj) -> None:
    chain.cli("build")
    before = chain.run_counts()
    chain.edit("pipemake.yaml", "id: upper", "id: shout")
    chain.edit("pipemake.yaml", "{upper.out}", "{shout.out}")
    chain.cli("build")
    after = chain.run_counts()
    assert after["lines"] == before["lines"] and after["report"] == before["report"], after


TWO_OUTPUTS = r"""
name: two
stages:
  - id: seg
    type: shell
    foreach: src
    config:
      cmd: "rev < {inputs.src} > {outputs.cut}/{item.relpath}; wc -c < {inputs.src} > {outputs.mask}/{item.relpath}"
      inputs: {src: data}
      outputs: {cut: build/cut, mask: build/mask}
  - id: feat
    type: shell
    foreach: src
    CONFIG
"""
FEAT = """config:
      cmd: "echo {item.relpath} >> runs/feat.count; CMD > {outputs.o}/{item.relpath}"
      inputs: {src: "{seg.cut}"}
      outputs: {o: build/feat}"""


def _two(project: Callable[..., Proj], cmd: str, extra: str = "") -> Proj:
    """The two-output pipeline with ``feat`` running ``cmd`` (``extra``: stage keys)."""
    feat = extra + "    foreach: src\n    " + FEAT.replace("CMD", cmd)
    return project(TWO_OUTPUTS.replace("    foreach: src\n    CONFIG\n", feat + "\n"), _files(4))


@pytest.mark.parametrize(
    ("cmd", "extra", "again"),
    [
        # only the cut-outs: the masks' other items are not its business
        ("cat {inputs.src}", "", ["f2.txt"]),
        # it reads the masks by reference: every item may depend on them
        ("cat {inputs.src} {seg.mask}/f0.txt", "", ["f0.txt", "f1.txt", "f2.txt", "f3.txt"]),
        # depends_on names the stage: an order may hide reads of any of its outputs
        ("cat {inputs.src}", "    depends_on: [seg]\n", ["f0.txt", "f1.txt", "f2.txt", "f3.txt"]),
    ],
    ids=["items-only", "names-the-other-output", "depends_on"],
)
def test_an_upstream_with_a_second_output_reruns_the_items_only_what_it_names_needs(
    project: Callable[..., Proj], cmd: str, extra: str, again: list[str]
) -> None:
    """A segmenter writes cut-outs and masks; a stage over the cut-outs reruns one item
    when one source changes, unless it names the masks (or the whole stage) too."""
    p = _two(project, cmd, extra)
    p.cli("build")
    _reset(p)
    p.write("data/f2.txt", "a longer line than before\n")  # its cut-out and its mask change
    out = p.cli("build").output
    assert sorted(_ran(p, "feat")) == again, out
    if "seg.mask" in cmd:
        assert p.read("build/feat/f1.txt") == "1 elif\n" + p.read("build/mask/f0.txt")


def test_a_new_pattern_runs_the_items_it_adds_and_narrowing_it_keeps_the_rest(
    project: Callable[..., Proj],
) -> None:
    """The pattern picks items; each item's key stands for itself, so widening it runs only
    the items it adds, and narrowing it back runs nothing and leaves exactly its items."""
    text = CHAIN3.split("  - id: second")[0].replace(
        "    foreach: src\n", '    foreach: {input: src, pattern: "*.txt"}\n'
    )
    p = project(text, {**_files(2), "data/a.csv": "csv a\n"})
    p.cli("build")
    assert sorted(_ran(p, "first")) == ["f0.txt", "f1.txt"]
    _reset(p)
    p.write("pipemake.yaml", text.replace('"*.txt"', '"*"'))
    out = p.cli("build").output
    assert _ran(p, "first") == ["a.csv"], out
    assert p.read("build/first/a.csv") == "CSV A\n"
    _reset(p)
    p.write("pipemake.yaml", text)
    p.cli("build")
    assert _ran(p, "first") == []
    assert sorted(f.name for f in p.path("build/first").iterdir()) == ["f0.txt", "f1.txt"]


SEG_PY = """\
from pathlib import Path


def run(ctx):
    out_cut, out_mask = Path(ctx.outputs["cut"]), Path(ctx.outputs["mask"])
    names = []
    for src in sorted(Path(ctx.inputs["src"]).iterdir()):
        for folder, text in ((out_cut, src.read_text()[::-1]), (out_mask, str(len(src.read_text())))):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / src.name).write_text(text)
        names.append(src.name)
    return {"first": names[0]}
"""


def test_a_stage_using_a_value_of_its_feeding_stage_counts_all_its_outputs(
    project: Callable[..., Proj],
) -> None:
    """A computed value may be a file name that leads into any of that stage's outputs
    (``build/mask/{seg.first}``): then every output of it counts, as before."""
    text = """
name: value
stages:
  - id: seg
    type: python
    config: {function: "segpy:run", inputs: {src: data}, outputs: {cut: build/cut, mask: build/mask}}
  - id: feat
    type: shell
    foreach: src
    config:
      cmd: "echo {item.relpath} >> runs/feat.count; cat {inputs.src} build/mask/{seg.first} > {outputs.o}/{item.relpath}"
      inputs: {src: "{seg.cut}"}
      outputs: {o: build/feat}
"""
    p = project(text, {**_files(4), "segpy.py": SEG_PY})
    p.cli("build")
    _reset(p)
    p.write("data/f0.txt", "a longer first line\n")  # f0's cut-out and its mask, read by all
    out = p.cli("build").output
    assert sorted(_ran(p, "feat")) == [f"f{i}.txt" for i in range(4)], out
    assert p.read("build/feat/f3.txt").endswith("20")

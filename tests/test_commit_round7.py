"""`pipemake commit` of a foreach stage: each item gets the files named after it, so one
changed input reruns one item and the others keep their accepted bytes (make -t on pattern
targets, Snakemake --touch, dvc commit); files no item claims stay as the stage's own."""

from __future__ import annotations

import json
import shutil
import sqlite3

from conftest import TRACEBACK, Proj

from pipemake.ownfiles import attribute, guessed, lay_under, names_each, written

EACH = r"""
name: f
stages:
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "echo {item.relpath} >> runs/each.log; tr a-z A-Z < {inputs.src} > {outputs.o}/%s"
      inputs: {src: data}
      outputs: {o: build/each}
"""


def _ran(p: Proj) -> list[str]:
    """The items that ran since the last call (the stage logs each), then forgets them."""
    log = p.path("runs/each.log")
    if not log.exists():
        return []
    names = sorted(log.read_text().split())
    log.unlink()
    return names


def _by_hand(p: Proj, files: dict[str, str]) -> None:
    """Write the stage's output by hand, as if made some other way."""
    for rel, text in files.items():
        p.write(f"build/each/{rel}", text)


def _four(project) -> Proj:
    data = {f"data/f{i}.txt": f"s{i}\n" for i in range(1, 5)}
    p = project(EACH % "{item.name}", {**data, "runs/.keep": ""})
    _by_hand(p, {f"f{i}.txt": f"S{i}\n" for i in range(1, 5)})
    p.write("build/each/f1.txt", "HAND-EDIT\n")
    return p


def test_one_changed_input_of_a_committed_never_built_stage_reruns_one_item(project) -> None:
    p = _four(project)
    out = p.cli("commit", "each").stdout
    assert "each: accepted build/each as built" in out
    assert "4 item(s) matched to their files by name" in out
    assert "could not be matched" not in out
    p.cli("build")
    assert _ran(p) == []
    p.write("data/f3.txt", "s3b\n")
    plan = p.cli("dry-run").stdout
    assert "each: run: 1 of 4 items changed" in plan and "not in the cache" not in plan, plan
    p.cli("build")
    assert _ran(p) == ["f3.txt"]  # as dry-run said
    assert p.read("build/each/f3.txt") == "S3B\n"
    assert p.path("build/each/f1.txt").read_bytes() == b"HAND-EDIT\n"  # kept byte for byte
    assert p.read("build/each/f2.txt") == "S2\n"


def test_commit_n_says_what_it_would_record_and_records_nothing(project) -> None:
    p = _four(project)
    before = p.cli("dry-run").stdout
    out = p.cli("commit", "-n", "each").stdout
    assert "each: would accept build/each as built" in out
    assert "4 item(s) matched to their files by name" in out
    assert p.cli("dry-run").stdout == before
    p.cli("build")
    assert _ran(p) == ["f1.txt", "f2.txt", "f3.txt", "f4.txt"]  # nothing was accepted
    assert p.read("build/each/f1.txt") == "S1\n"


def test_a_file_no_item_claims_is_kept_across_item_reruns(project) -> None:
    p = _four(project)
    p.write("build/each/NOTES.md", "notes\n")
    out = p.cli("commit", "each").stdout
    assert "1 file(s) match no item (first: build/each/NOTES.md)" in out, out
    p.write("data/f2.txt", "s2b\n")
    p.cli("build")
    assert _ran(p) == ["f2.txt"]
    assert p.read("build/each/NOTES.md") == "notes\n"
    p.write("data/f4.txt", "s4b\n")
    p.cli("build")
    assert _ran(p) == ["f4.txt"]  # and again: the layer is carried on
    assert p.read("build/each/NOTES.md") == "notes\n"
    assert p.read("build/each/f1.txt") == "HAND-EDIT\n"


def test_a_removed_input_takes_its_own_files_only(project) -> None:
    p = _four(project)
    p.write("build/each/NOTES.md", "notes\n")
    p.write("build/each/f4/detail.txt", "d4\n")  # named after item f4, not a path it writes
    out = p.cli("commit", "each").stdout
    assert "2 file(s) match no item" in out, out
    (p.path("data/f4.txt")).unlink()
    plan = p.cli("dry-run").stdout
    assert "1 item(s) removed" in plan and "none runs" in plan, plan
    p.cli("build")
    assert _ran(p) == []
    left = sorted(x.name for x in p.path("build/each").iterdir())
    assert left == ["NOTES.md", "f1.txt", "f2.txt", "f3.txt", "f4"]  # f4.txt was its own
    assert p.read("build/each/f4/detail.txt") == "d4\n"


#: a command that writes one file per item through a path no template names
BY_NAME = r"""
name: f
stages:
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "echo {item.relpath} >> runs/each.log; o={outputs.o}; tr a-z A-Z < {inputs.src} > $o/$(basename {inputs.src} .txt).out"
      inputs: {src: data}
      outputs: {o: build/each}
"""


def test_a_hand_added_file_beside_what_the_command_writes_survives_its_items_rerun(
    project,
) -> None:
    p = project(EACH % "{item.stem}.out", {f"data/{s}.txt": f"{s}\n" for s in "abc"})
    _by_hand(p, {"a.out": "A\n", "b.out": "B\n", "c.out": "C\n", "a.json": '{"hand": 1}\n'})
    out = p.cli("commit", "each").stdout
    assert "3 item(s) matched to their files by name" in out
    assert "1 file(s) match no item (first: build/each/a.json)" in out, out
    assert "by name alone" not in out  # the command names each item's path: no guess
    p.write("data/a.txt", "ax\n")
    p.cli("build")
    assert _ran(p) == ["a.txt"]
    assert p.read("build/each/a.out") == "AX\n"
    assert p.read("build/each/a.json") == '{"hand": 1}\n'  # the item's rerun never wrote it
    (p.path("data/a.txt")).unlink()  # and its item's removal does not take it either
    p.cli("build")
    assert sorted(x.name for x in p.path("build/each").iterdir()) == ["a.json", "b.out", "c.out"]


def test_commit_names_the_files_matched_by_name_alone_that_a_rerun_replaces(project) -> None:
    p = project(BY_NAME, {**{f"data/{s}.txt": f"{s}\n" for s in "abcde"}, "runs/.keep": ""})
    _by_hand(p, {f"{s}.out": s.upper() + "\n" for s in "abcde"})
    p.write("build/each/a.json", '{"hand": 1}\n')
    out = p.cli("commit", "each").stdout
    assert "5 item(s) matched to their files by name" in out, out
    assert (
        "6 file(s) matched to an item by name alone, not as a path its command names "
        "(build/each/a.json, build/each/a.out, build/each/b.out and 3 more)" in out
    ), out
    assert "drops any it does not write" in out
    p.write("data/a.txt", "ax\n")
    p.cli("build")
    assert _ran(p) == ["a.txt"]
    assert p.read("build/each/a.out") == "AX\n"
    assert not p.exists("build/each/a.json")  # as commit said: the item's rerun replaced it
    assert p.read("build/each/b.out") == "B\n"


def test_a_file_inside_a_folder_the_command_names_for_an_item_is_said(project) -> None:
    cmd = "mkdir -p {outputs.o}/{item.stem} && tr a-z A-Z < {inputs.src} > {outputs.o}/{item.stem}/up.txt"
    p = project(EACH.replace("tr a-z A-Z < {inputs.src} > {outputs.o}/%s", cmd),
                {"data/a.txt": "a\n", "data/b.txt": "b\n", "runs/.keep": ""})  # fmt: skip
    _by_hand(p, {"a/up.txt": "A\n", "a/extra.json": "{}\n", "b/up.txt": "B\n"})
    out = p.cli("commit", "each").stdout
    assert "1 file(s) matched to an item by name alone, not as a path its command names " \
        "(build/each/a/extra.json)" in out, out  # fmt: skip
    p.write("data/a.txt", "ax\n")
    p.cli("build")
    assert _ran(p) == ["a.txt"]
    assert p.read("build/each/a/up.txt") == "AX\n" and not p.exists("build/each/a/extra.json")


def test_a_forced_build_drops_the_files_commit_kept_and_says_so_once(project) -> None:
    p = _four(project)
    p.write("build/each/NOTES.md", "notes\n")
    p.write("build/each/extra/x.txt", "x\n")
    p.cli("commit", "each")
    r = p.cli("build", "-B")
    assert _ran(p) == ["f1.txt", "f2.txt", "f3.txt", "f4.txt"]
    said = "dropped 2 file(s) accepted by commit that no item writes"
    assert r.output.count(said) == 1, r.output
    assert sorted(x.name for x in p.path("build/each").iterdir()) == [
        "f1.txt", "f2.txt", "f3.txt", "f4.txt",
    ]  # fmt: skip
    assert p.read("build/each/f1.txt") == "S1\n"  # what its item writes now
    r = p.cli("build")  # the stage's record holds no own files now: nothing comes back
    assert "each: up to date" in r.output and "0 restored" in r.output, r.output
    assert said not in r.output
    assert not p.exists("build/each/NOTES.md") and not p.exists("build/each/extra")
    p.write("data/f2.txt", "s2b\n")
    p.cli("build")
    assert _ran(p) == ["f2.txt"]
    assert not p.exists("build/each/NOTES.md")


def test_force_stage_drops_the_stages_own_files_too(project) -> None:
    p = _four(project)
    p.write("build/each/NOTES.md", "notes\n")
    p.cli("commit", "each")
    r = p.cli("build", "--force-stage", "each")
    assert "dropped 1 file(s) accepted by commit that no item writes" in r.output, r.output
    assert not p.exists("build/each/NOTES.md")
    p.cli("build")
    assert _ran(p) == ["f1.txt", "f2.txt", "f3.txt", "f4.txt"]
    assert not p.exists("build/each/NOTES.md")


#: a stage whose base key (env, from a var) every item's key shares
TAGGED = r"""
name: f
vars: {tag: t1}
stages:
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "echo {item.relpath} >> runs/each.log; (cat {inputs.src}; echo $TAG) > {outputs.o}/{item.name}"
      env: {TAG: "{vars.tag}"}
      inputs: {src: data}
      outputs: {o: build/each}
"""


def _tagged(project) -> Proj:
    """A built stage of two items, with ``own.txt`` added to its output and committed."""
    p = project(TAGGED, {"data/a": "A\n", "data/b": "B\n", "runs/.keep": ""})
    p.cli("build")
    assert _ran(p) == ["a", "b"]
    p.write("build/each/own.txt", "OWN\n")
    assert "1 file(s) match no item (first: build/each/own.txt)" in p.cli("commit", "each").stdout
    return p


def test_own_files_stay_when_an_env_change_reruns_every_item(project) -> None:
    p = _tagged(project)
    r = p.cli("build", "--set", "vars.tag=t2")
    assert _ran(p) == ["a", "b"]  # a new base key: every item reran
    assert p.read("build/each/a") == "A\nt2\n"
    assert p.read("build/each/own.txt") == "OWN\n", r.output
    assert "dropped" not in r.output
    p.write("data/b", "B2\n")  # and the layer is carried on from there
    p.cli("build", "--set", "vars.tag=t2")
    assert _ran(p) == ["b"]
    assert p.read("build/each/own.txt") == "OWN\n"
    p.cli("build")  # back to t1: b's item at t1 is new, a's is in the cache
    assert _ran(p) == ["b"]
    assert p.read("build/each/a") == "A\nt1\n" and p.read("build/each/own.txt") == "OWN\n"


def test_own_files_stay_when_the_command_changes(project) -> None:
    p = _tagged(project)
    p.edit("pipemake.yaml", "echo $TAG)", "echo $TAG; echo more)")
    p.cli("build")
    assert _ran(p) == ["a", "b"]
    assert p.read("build/each/b") == "B\nt1\nmore\n"
    assert p.read("build/each/own.txt") == "OWN\n"


def test_a_switch_back_to_an_earlier_key_restores_its_own_files_as_they_were(project) -> None:
    p = _tagged(project)
    p.write("data/own.txt", "item\n")  # at t2, a new item writes own.txt: it takes it over
    p.cli("build", "--set", "vars.tag=t2")
    assert _ran(p) == ["a", "b", "own.txt"]
    assert p.read("build/each/own.txt") == "item\nt2\n"
    p.path("data/own.txt").unlink()
    p.cli("build", "--set", "vars.tag=t2")  # the item is gone and took own.txt with it
    assert not p.exists("build/each/own.txt")
    p.cli("build")  # t1 and the inputs accepted: the accepted output, own.txt as it was
    assert _ran(p) == []
    assert p.read("build/each/own.txt") == "OWN\n" and p.read("build/each/a") == "A\nt1\n"


def test_a_forced_build_after_a_new_base_key_still_drops_own_files(project) -> None:
    p = _tagged(project)
    p.cli("build", "--set", "vars.tag=t2")
    assert _ran(p) == ["a", "b"] and p.read("build/each/own.txt") == "OWN\n"
    r = p.cli("build", "-B", "--set", "vars.tag=t3")
    assert _ran(p) == ["a", "b"]
    assert r.output.count("dropped 1 file(s) accepted by commit that no item writes") == 1
    assert not p.exists("build/each/own.txt")
    p.cli("build", "--set", "vars.tag=t4")
    assert _ran(p) == ["a", "b"]
    assert not p.exists("build/each/own.txt")  # dropped for good


#: items over a folder of an upstream output, whose command also reads a sibling file of it
SIBLING = r"""
name: f
stages:
  - id: mk
    type: shell
    config:
      cmd: "mkdir -p {outputs.d}/sub; cp {inputs.a} {outputs.d}/sub/a; cp {inputs.b} {outputs.d}/b"
      inputs: {a: data/a, b: data/b}
      outputs: {d: build/d}
  - id: fe
    type: shell
    foreach: src
    config:
      cmd: "cat {mk.d}/b {inputs.src} > {outputs.o}/{item.name}"
      inputs: {src: "{mk.d}/sub"}
      outputs: {o: build/fe}
"""


def test_own_files_stay_when_an_upstream_file_the_command_reads_changes(project) -> None:
    p = project(SIBLING, {"data/a": "A\n", "data/b": "B\n"})
    p.cli("build")
    p.write("build/fe/a", "HAND\n")
    p.write("build/fe/own.txt", "OWN\n")
    out = p.cli("commit", "fe").stdout
    assert "1 file(s) match no item (first: build/fe/own.txt)" in out, out
    p.write("data/b", "B2\n")
    r = p.cli("build")
    assert p.read("build/fe/a") == "B2\nA\n", r.output  # its item reran
    assert p.read("build/fe/own.txt") == "OWN\n"
    p.write("data/b", "B\n")  # back: the accepted output, byte for byte
    p.cli("build")
    assert p.read("build/fe/a") == "HAND\n" and p.read("build/fe/own.txt") == "OWN\n"


def _own_entry(p: Proj) -> dict:
    """The store entry holding the stage's own files (there is one)."""
    db = sqlite3.connect(p.path(".pipemake/store/actions.db"))
    found = [json.loads(t) for (t,) in db.execute("SELECT entry FROM actions").fetchall()]
    db.close()
    owning = [e for e in found if "own" in e]
    assert len(owning) == 1
    return owning[0]


def test_own_files_whose_content_left_the_store_are_dropped_saying_so(project) -> None:
    p = _tagged(project)
    p.write("build/each/keep.txt", "KEEP\n")
    p.cli("commit", "each")
    entries = _own_entry(p)["own"]["outputs"]["o"]["entries"]
    assert sorted(e[0] for e in entries) == ["keep.txt", "own.txt"]
    digest = next(e[1] for e in entries if e[0] == "own.txt")
    p.path(f".pipemake/store/objects/{digest[:2]}/{digest[2:]}").unlink()
    p.path("build/each/own.txt").unlink()  # one the workspace still holds is kept, never removed
    r = p.cli("build", "--set", "vars.tag=t2")
    assert TRACEBACK not in r.output
    assert _ran(p) == ["a", "b"]
    said = "1 file(s) accepted by commit that no item writes are dropped: their content is gone"
    assert r.output.count(said) == 1 and "(first: o/own.txt)" in r.output, r.output
    assert not p.exists("build/each/own.txt") and p.read("build/each/keep.txt") == "KEEP\n"
    p.write("data/a", "A2\n")
    r = p.cli("build", "--set", "vars.tag=t2")
    assert said not in r.output  # said once: the layer carried on holds keep.txt alone
    assert p.read("build/each/keep.txt") == "KEEP\n"


def test_items_matched_to_no_file_are_said_and_run_at_the_next_change(project) -> None:
    p = project(EACH % "{item.stem}.out", {"data/a.txt": "a\n", "data/b.txt": "b\n"})
    _by_hand(p, {"a.out": "A by hand\n", "zz.out": "stray\n"})  # nothing for b
    out = p.cli("commit", "each").stdout
    assert "1 item(s) matched to their files by name" in out
    assert "1 file(s) match no item (first: build/each/zz.out)" in out
    assert "1 item(s) could not be matched to output files; they will run at the next" in out
    p.cli("build")
    assert _ran(p) == []  # the stage is accepted as it is
    p.write("data/a.txt", "aa\n")
    assert "1 more not in the cache" in p.cli("dry-run").stdout
    p.cli("build")
    assert _ran(p) == ["a.txt", "b.txt"]
    assert p.read("build/each/b.out") == "B\n"
    assert p.read("build/each/zz.out") == "stray\n"


def test_every_file_matched_leaves_the_other_items_done_with_none(project) -> None:
    p = project(EACH % "{item.name}", {"data/a.txt": "a\n", "data/b.txt": "b\n"})
    _by_hand(p, {"a.txt": "A by hand\n"})  # b wrote nothing
    out = p.cli("commit", "each").stdout
    assert "1 item(s) wrote no file (every file is matched to an item)" in out, out
    p.write("data/a.txt", "aa\n")
    p.cli("build")
    assert _ran(p) == ["a.txt"]
    assert not p.exists("build/each/b.txt")


def test_an_item_writing_a_path_the_stage_kept_takes_it_over(project) -> None:
    p = project(EACH % "{item.name}", {"data/a.txt": "a\n"})
    _by_hand(p, {"a.txt": "A\n", "c.txt": "by hand\n"})
    p.cli("commit", "each")
    p.write("data/c.txt", "c\n")  # a new item that writes c.txt
    p.cli("build")
    assert _ran(p) == ["c.txt"]
    assert p.read("build/each/c.txt") == "C\n"
    p.write("data/a.txt", "aa\n")
    p.cli("build")
    assert _ran(p) == ["a.txt"]
    (p.path("data/c.txt")).unlink()  # c.txt is the item's now: it goes with it
    p.cli("build")
    assert _ran(p) == []
    assert sorted(x.name for x in p.path("build/each").iterdir()) == ["a.txt"]
    p.write("data/a.txt", "a\n")  # back to the inputs accepted: the accepted output
    p.cli("build")
    assert p.read("build/each/c.txt") == "by hand\n" and p.read("build/each/a.txt") == "A\n"


def test_a_file_added_to_a_built_stage_survives_a_rerun_of_other_items(project) -> None:
    p = project(EACH % "{item.name}", {"data/a.txt": "a\n", "data/b.txt": "b\n"})
    p.cli("build")
    assert _ran(p) == ["a.txt", "b.txt"]
    p.write("build/each/a.txt", "hand\n")
    p.write("build/each/index.html", "<p>\n")
    out = p.cli("commit", "each").stdout
    assert "2 item(s) built before keep the accepted bytes" in out
    p.write("data/b.txt", "bee\n")
    p.cli("build")
    assert _ran(p) == ["b.txt"]
    assert p.read("build/each/index.html") == "<p>\n"
    assert p.read("build/each/a.txt") == "hand\n"


def test_the_path_the_command_writes_for_an_item_matches_it(project) -> None:
    p = project(EACH % "{item.stem}_mask.png", {"data/a.txt": "a\n", "data/b.txt": "b\n"})
    _by_hand(p, {"a_mask.png": "A by hand\n", "b_mask.png": "B\n"})
    out = p.cli("commit", "each").stdout
    assert "2 item(s) matched" in out and "could not be matched" not in out, out
    p.write("data/b.txt", "bb\n")
    p.cli("build")
    assert _ran(p) == ["b.txt"]
    assert p.read("build/each/a_mask.png") == "A by hand\n"
    assert p.read("build/each/b_mask.png") == "BB\n"


def test_nested_items_writing_flat_names_are_matched(project) -> None:
    p = project(EACH % "{item.name}", {"data/x/a.txt": "a\n", "data/y/b.txt": "b\n"})
    _by_hand(p, {"a.txt": "A by hand\n", "b.txt": "B\n"})
    assert "2 item(s) matched" in p.cli("commit", "each").stdout
    p.write("data/y/b.txt", "bb\n")
    p.cli("build")
    assert _ran(p) == ["y/b.txt"]
    assert p.read("build/each/a.txt") == "A by hand\n"


def test_outputs_found_as_the_lock_records_them_get_items_too(project) -> None:
    p = project(EACH % "{item.name}", {"data/a.txt": "a\n", "data/b.txt": "b\n"})
    p.cli("build")
    assert _ran(p) == ["a.txt", "b.txt"]
    shutil.rmtree(p.path(".pipemake"))  # a fresh clone: outputs kept, no store
    assert "pipemake.lock records" in p.cli("build").output
    assert _ran(p) == []
    p.write("data/b.txt", "bee\n")
    r = p.cli("build")
    assert TRACEBACK not in r.output
    assert _ran(p) == ["b.txt"]
    assert p.read("build/each/a.txt") == "A\n"


def test_a_tampered_own_layer_in_the_store_writes_nothing_outside(project) -> None:
    p = _four(project)
    p.write("build/each/NOTES.md", "notes\n")
    p.cli("commit", "each")
    db = sqlite3.connect(p.path(".pipemake/store/actions.db"))
    tampered = 0
    for k, text in db.execute("SELECT key, entry FROM actions").fetchall():
        entry = json.loads(text)
        if "own" in entry:
            entry["own"]["outputs"]["o"]["entries"][0][0] = "../../escaped.txt"
            db.execute("UPDATE actions SET entry=? WHERE key=?", (json.dumps(entry), k))
            tampered += 1
    db.commit()
    db.close()
    assert tampered == 1
    p.write("data/f2.txt", "s2b\n")
    r = p.cli("build")
    assert TRACEBACK not in r.output
    assert _ran(p) == ["f2.txt"]
    assert not p.exists("escaped.txt") and not p.exists("../escaped.txt")
    assert p.read("build/each/f1.txt") == "HAND-EDIT\n"
    said = "does not list them as pipemake writes it"
    assert r.output.count(said) == 1 and not p.exists("build/each/NOTES.md"), r.output


def test_attribute_matches_by_relpath_suffix_folder_then_name() -> None:
    items = ["a.png", "b.png", "sub/c.png", "img.001.png", "img.002.png"]
    paths = [
        "a.png", "a.json", "b.png.json", "b/mask.png", "sub/c.txt", "c.txt",
        "img.001.json", "img.json", "other.txt",
    ]  # fmt: skip
    owners, left = attribute(items, paths)
    assert owners == {
        "a.png": "a.png", "a.json": "a.png", "b.png.json": "b.png", "b/mask.png": "b.png",
        "sub/c.txt": "sub/c.png", "c.txt": "sub/c.png", "img.001.json": "img.001.png",
    }  # fmt: skip
    assert left == ["img.json", "other.txt"]  # two items claim img.json equally


def test_written_renders_the_paths_a_template_names_for_each_item() -> None:
    cmd = "x < {inputs.src} > {outputs.o}/{item.stem}_m.png && cp y '{outputs.o}/{item.relpath}.d/'"
    named = written(
        {"cmd": cmd, "env": {"A": "{outputs.p}/{item.name}"}}, "o", ["a.txt", "s/b.txt"]
    )
    assert named == {"a_m.png": ["a.txt"], "b_m.png": ["s/b.txt"], "a.txt.d": ["a.txt"],
                     "s/b.txt.d": ["s/b.txt"]}  # fmt: skip
    owners, left = attribute(["a.txt", "s/b.txt"], ["a_m.png", "s/b.txt.d/0", "q.png"], named)
    assert owners == {"a_m.png": "a.txt", "s/b.txt.d/0": "s/b.txt"} and left == ["q.png"]


def test_an_item_whose_path_the_command_names_claims_that_path_alone() -> None:
    items = ["a.txt", "b.txt"]
    named = written({"cmd": "x > {outputs.o}/{item.stem}.out"}, "o", items)
    assert names_each(items, named) and not names_each([*items, "c.txt"], named)
    owners, left = attribute(items, ["a.json", "a.out", "b.out", "b/x.png"], named)
    assert owners == {"a.out": "a.txt", "b.out": "b.txt"}
    assert left == ["a.json", "b/x.png"]
    owners, left = attribute(items, ["a.json", "a.out"])  # no path named: by name
    assert owners == {"a.json": "a.txt", "a.out": "a.txt"} and left == []
    assert guessed(["a.json", "a.out"], {}) == ["a.json", "a.out"]
    assert guessed(["a.out", "b.out", "b.out/0"], {"b.out": ["b.txt"]}) == ["a.out", "b.out/0"]


def test_lay_under_can_tell_what_it_would_keep_without_laying_it() -> None:
    h = "0" * 32
    merged = {"o": {"kind": "dir", "hash": h, "entries": [["a", h, 1, 0o644]]}}
    own = {"o": {"kind": "dir", "hash": h, "entries": [["a", h, 2, 0o644], ["k", h, 2, 0o644]]}}
    kept = lay_under(merged, own, lay=False)
    assert [e[0] for e in kept["o"]["entries"]] == ["k"]
    assert merged == {"o": {"kind": "dir", "hash": h, "entries": [["a", h, 1, 0o644]]}}


def test_attribute_never_guesses_between_equal_claims() -> None:
    owners, left = attribute(["a.png", "a.jpg", "x/n.txt", "y/n.txt"], ["a.png", "a.json", "n.out"])
    assert owners == {"a.png": "a.png"}
    assert left == ["a.json", "n.out"]


def test_lay_under_yields_to_what_items_wrote() -> None:
    h = "0" * 32
    merged = {
        "o": {"kind": "dir", "hash": h, "entries": [["a", h, 1, 0o644], ["d/x", h, 1, 0o644]]}
    }
    own = {"o": {"kind": "dir", "hash": h, "entries": [
        ["a", h, 2, 0o644], ["d", h, 2, 0o644], ["a/in", h, 2, 0o644], ["k", h, 2, 0o644],
    ]}}  # fmt: skip
    kept = lay_under(merged, own)
    assert [e[0] for e in kept["o"]["entries"]] == ["k"]
    assert [e[0] for e in merged["o"]["entries"]] == ["a", "d/x", "k"]


def test_own_files_whose_entry_left_the_store_are_dropped_saying_so(project) -> None:
    p = _tagged(project)
    db = sqlite3.connect(p.path(".pipemake/store/actions.db"))
    rows = db.execute("SELECT key, entry FROM actions").fetchall()
    gone = [k for k, text in rows if "own" in json.loads(text)]
    assert len(gone) == 1
    db.execute("DELETE FROM actions WHERE key=?", (gone[0],))
    db.commit()
    db.close()
    p.write("data/a", "A2\n")
    r = p.cli("build")
    assert TRACEBACK not in r.output and _ran(p) == ["a"]
    said = "which lists them, is gone or not trusted"
    assert r.output.count(said) == 1 and not p.exists("build/each/own.txt"), r.output
    p.write("data/b", "B2\n")
    assert said not in p.cli("build").output  # said once: the new entry holds no layer

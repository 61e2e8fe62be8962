"""The rebuilder on its own: :func:`pipemake.decide.decide` and :func:`explain` as pure
functions of a resolved stage, its entry, the check of its outputs and its last build — no
project, no store, no files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from pipemake.decide import LastBuild, Trigger, Verdict, decide, explain, waiting_on
from pipemake.items import Item


def doc(**over: Any) -> dict[str, Any]:
    """A key document as the build writes one."""
    base: dict[str, Any] = {
        "format": 1,
        "rule": "shell",
        "rule_version": "1",
        "stage_version": None,
        "code": "c1",
        "params": {"cmd": "cp a b", "model": "u2net"},
        "inputs": {"src": ["data/a.txt", "h1"]},
        "upstream": {"up": "u1"},
        "outputs": {"o": "path"},
    }
    base.update(over)
    return base


@dataclass
class Stage:
    """A resolved stage as the rebuilder reads it."""

    doc: dict[str, Any]
    key: str | None = "k1"
    unknown: set[str] = field(default_factory=set)
    foreach: bool = False
    map_reduce: bool = False
    cached: dict[str, Any] = field(default_factory=dict)
    items: list[Item] = field(default_factory=list)


ENTRY = {"outputs": {"o": {"kind": "file", "hash": "x"}}}


def built(record_doc: dict[str, Any] | None, key: str = "k0", **more: Any) -> LastBuild:
    record = None if record_doc is None else {"key": key, "doc": record_doc, "result": "ok"}
    if record is not None:
        record.update(more)
    return LastBuild(record is not None, key, (record or {}).get("result"), record)


def test_a_cached_key_with_matching_outputs_is_up_to_date() -> None:
    d = decide(Stage(doc()), ENTRY, {"build/o": None}, built(doc(), key="k1"))
    assert d.verdict is Verdict.UP_TO_DATE and d.reasons == []
    assert d.line("s") == "s: up to date"


def test_missing_outputs_of_a_cached_key_are_restored() -> None:
    d = decide(Stage(doc()), ENTRY, {"build/o": "missing"}, built(doc(), key="k1"))
    assert d.verdict is Verdict.RESTORE
    assert [(r.trigger, r.detail) for r in d.reasons] == [
        (Trigger.OUTPUT_MISSING, "outputs missing")
    ]


def test_a_changed_output_of_the_last_build_is_named() -> None:
    outputs = {"build/o": "changed", "build/p": None, "build/q": "missing"}
    d = decide(Stage(doc()), ENTRY, outputs, built(doc(), key="k1"))
    assert d.verdict is Verdict.RESTORE
    assert [(r.trigger, str(r)) for r in d.reasons] == [
        (Trigger.OUTPUT_CHANGED, "output build/o changed"),
        (Trigger.OUTPUT_MISSING, "output build/q missing"),
    ]


def test_an_older_build_restored_names_what_changed_not_the_outputs() -> None:
    old = doc(params={"cmd": "cp a b", "model": "isnet"})
    outputs = {"build/o": "changed", "build/p": None}
    d = decide(Stage(doc()), ENTRY, outputs, built(old, key="k0"))
    assert d.verdict is Verdict.RESTORE
    assert [(r.trigger, str(r)) for r in d.reasons] == [
        (Trigger.PARAM, "param model isnet → u2net"),
        (Trigger.CACHED, "cached from an earlier build"),
    ]


def test_a_workspace_that_never_built_the_stage_says_the_store_has_its_outputs() -> None:
    d = decide(Stage(doc()), ENTRY, {"build/o": "missing"}, LastBuild())
    assert d.verdict is Verdict.RESTORE
    assert [str(r) for r in d.reasons] == [
        "outputs missing; not built in this workspace, the store has them"
    ]


def test_no_entry_runs_with_what_changed_since_the_last_build() -> None:
    old = doc(inputs={"src": ["data/a.txt", "h0"]})
    d = decide(Stage(doc()), None, None, built(old))
    assert d.verdict is Verdict.RUN
    assert [str(r) for r in d.reasons] == ["input data/a.txt changed"]


def test_never_built_and_no_entry_say_so() -> None:
    assert [str(r) for r in decide(Stage(doc()), None, None, LastBuild()).reasons] == [
        "never built"
    ]
    # built with this very document, yet its entry is gone: no cache entry
    same = decide(Stage(doc()), None, None, built(doc(), key="k1"))
    assert [(r.trigger, str(r)) for r in same.reasons] == [(Trigger.NO_ENTRY, "no cache entry")]


def test_an_entry_without_one_of_the_outputs_runs() -> None:
    d = decide(Stage(doc()), ENTRY, None, built(doc(), key="k1"))
    assert d.verdict is Verdict.RUN and d.reasons[0].trigger is Trigger.NO_ENTRY


def test_forced_runs_whatever_is_cached() -> None:
    d = decide(Stage(doc()), ENTRY, {"build/o": None}, built(doc(), key="k1"), forced=True)
    assert d.verdict is Verdict.RUN and [str(r) for r in d.reasons] == ["forced"]


def test_an_unknown_upstream_is_maybe_unless_the_stage_changed_itself() -> None:
    pending = doc(upstream={"up": "?"}, inputs={"src": ["build/up/x", "?"]})
    last = built(doc(upstream={"up": "u1"}, inputs={"src": ["build/up/x", "h"]}))
    d = decide(Stage(pending, key=None, unknown={"up"}), None, None, last)
    assert d.verdict is Verdict.MAYBE and str(d.reasons[0]) == "upstream up will run"
    own = dict(pending, params={"cmd": "cp a c", "model": "u2net"})
    d = decide(Stage(own, key=None, unknown={"up"}), None, None, last)
    assert d.verdict is Verdict.RUN
    assert [str(r) for r in d.reasons] == ["param cmd cp a b → cp a c"]
    assert waiting_on("x").line("s") == "s: maybe: upstream x will run"


def test_a_failed_run_since_the_last_build_is_the_reference() -> None:
    failed = doc(params={"cmd": "cp a b", "model": "isnet"})
    last = built(doc(), result="failed", failed_doc=failed)
    d = decide(Stage(doc()), None, None, last)
    assert [str(r) for r in d.reasons] == ["param model isnet → u2net since the failed run"]
    again = decide(Stage(failed), None, None, last)
    assert [(r.trigger, str(r)) for r in again.reasons] == [(Trigger.FAILED, "the last run failed")]


def _items(n: int) -> list[Item]:
    return [Item(f"data/f{i}.png", f"f{i}.png", f"h{i}") for i in range(n)]


def test_foreach_items_not_cached_run_and_are_counted() -> None:
    items = _items(4)
    cached = {"f0.png": {}, "f1.png": {}, "f3.png": {}}
    old = {"f0.png": "h0", "f1.png": "h1", "f2.png": "old", "f3.png": "h3", "gone.png": "h"}
    stage = Stage(doc(), key="k1", foreach=True, cached=cached, items=items)
    last = LastBuild(True, "k0", "ok", {"doc": doc(), "result": "ok"}, old)
    d = decide(stage, None, None, last)
    assert d.verdict is Verdict.RUN
    assert [str(r) for r in d.reasons] == [
        "1 of 4 items changed (first: data/f2.png: content changed)",
        "1 item(s) removed (first: gone.png)",
    ]
    assert d.items == {"total": 4, "run": 1, "cached": 3, "removed": 1}


def test_foreach_with_every_item_in_the_store_is_restored_not_run() -> None:
    items = _items(2)
    stage = Stage(doc(), foreach=True, cached={i.relpath: {} for i in items}, items=items)
    hashes = {i.relpath: i.hash for i in items}
    d = decide(stage, None, None, LastBuild(True, "k1", "ok", {"doc": doc()}, hashes))
    assert d.verdict is Verdict.RESTORE
    assert [(r.trigger, str(r)) for r in d.reasons] == [
        (Trigger.CACHED, "all 2 items are in the store (none runs)")
    ]
    # items built before, never together: the change is named first
    hashes["f1.png"] = "older"
    d = decide(stage, None, None, LastBuild(True, "k1", "ok", {"doc": doc()}, hashes))
    assert [str(r) for r in d.reasons] == [
        "1 of 2 items changed (first: data/f1.png: content changed)",
        "all 2 items are in the store (none runs)",
    ]
    # a map-reduce stage's reduce still runs
    mr = Stage(doc(), foreach=True, map_reduce=True, cached=stage.cached, items=items)
    d = decide(mr, None, None, LastBuild(True, "k1", "ok", {"doc": doc()}, hashes))
    assert d.verdict is Verdict.RUN
    assert [str(r) for r in d.reasons] == ["all 2 items cached"]


def test_a_stage_waiting_on_an_upstream_restore_says_so() -> None:
    pending = doc(upstream={"up": "?"})
    stage = Stage(pending, key=None, unknown={"up"})
    told = decide(Stage(doc(), foreach=True, cached={"f0.png": {}}, items=_items(1)),
                  None, None, LastBuild())  # fmt: skip
    assert told.verdict is Verdict.RESTORE
    last = built(doc(upstream={"up": "u1"}))
    d = decide(stage, None, None, last, upstream={"up": told})
    assert d.verdict is Verdict.MAYBE and str(d.reasons[0]) == "upstream up will be restored"
    assert str(decide(stage, None, None, last).reasons[0]) == "upstream up will run"


def test_a_foreach_stage_never_built_has_items_not_built_yet() -> None:
    stage = Stage(doc(), foreach=True, items=_items(3))
    d = decide(stage, None, None, LastBuild())
    assert [str(r) for r in d.reasons] == [
        "never built",
        "3 of 3 items to run (first: data/f0.png: not built yet)",
    ]


def test_deciding_reads_the_record_only_when_a_reason_needs_it() -> None:
    reads: list[str] = []

    def record() -> dict[str, Any]:
        reads.append("record")
        return {"doc": doc(), "result": "ok"}

    last = LastBuild(True, "k1", "ok", record, lambda: reads.append("items") or {})
    assert decide(Stage(doc()), ENTRY, {"build/o": None}, last).verdict is Verdict.UP_TO_DATE
    assert reads == []
    decide(Stage(doc()), None, None, last)
    assert reads == ["record"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"rule": "python"}, "rule shell → python"),
        ({"rule_version": "2"}, "rule version 1 → 2"),
        ({"stage_version": "3"}, "stage version None → 3"),
        ({"code": "c2"}, "code changed"),
        ({"params": {"cmd": "cp a b"}}, "param model removed (was u2net)"),
        ({"params": {"cmd": "cp a b", "model": "u2net", "x": 1}}, "param x added (1)"),
        ({"inputs": {}}, "input src (data/a.txt) removed"),
        (
            {"inputs": {"src": [["data/a.txt", "h1"], ["data/b.txt", "h2"]]}},
            "input data/b.txt added",
        ),
        ({"upstream": {"up": "u2"}}, "upstream up changed"),
        ({"upstream": {"up": "u1", "c": "u3"}}, "depends on stage c now"),
        ({"upstream": {}}, "no longer depends on stage up"),
        ({"outputs": {"o": "path", "p": "path"}}, "declared outputs changed"),
    ],
)
def test_explain_names_each_kind_of_change(change: dict[str, Any], reason: str) -> None:
    assert [str(r) for r in explain(doc(), doc(**change))] == [reason]


def test_explain_diffs_nested_params_and_shortens_long_values() -> None:
    old = doc(params={"opts": {"size": 1, "text": "x" * 100}})
    new = doc(params={"opts": {"size": 2, "text": "y" * 100}})
    reasons = [str(r) for r in explain(old, new)]
    assert reasons[0] == "param opts.size 1 → 2"
    assert reasons[1].startswith("param opts.text xxx") and "…" in reasons[1]
    assert len(reasons[1]) < 140


def test_explain_with_nothing_changed_is_empty_and_never_built_without_a_record() -> None:
    assert explain(doc(), doc()) == []
    assert [r.trigger for r in explain(None, doc())] == [Trigger.NEVER_BUILT]


def test_a_long_value_changed_near_its_end_shows_the_change() -> None:
    head = "ffmpeg -i in.mp4 " + "-filter_complex scale=640:-1 " * 4
    old = doc(params={"cmd": head + "-q:v 2 out/%05d.jpg"})
    new = doc(params={"cmd": head + "-q:v 5 out/%05d.jpg"})
    [reason] = [str(r) for r in explain(old, new)]
    was, now = reason.removeprefix("param cmd ").split(" → ")
    assert was.startswith("…") and now.startswith("…")
    assert "-q:v 2" in was and "-q:v 5" in now
    assert len(reason) < 140

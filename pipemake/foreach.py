"""Running a ``foreach`` stage inside a build: which items must run, their tasks, committing
each item as it finishes, and assembling the stage output from all of them.

Item entries are committed as soon as their task reports, in one transaction per task, so
a failed or interrupted stage keeps its finished items and the next build reruns only the
rest. Map-reduce rules cache each item's map result and rerun only the reduce when only
reduce params change.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .decide import Reason, Trigger
from .executors.base import Message, Task
from .hashing import digest, key_digest
from .items import (
    ItemRef,
    chunks,
    glob_base,
    is_glob,
    item_key,
    item_reasons,
    items_digest,
    map_key,
    merge_outputs,
    removed_items,
    select,
    staged_files,
    summarize,
)
from .scheduler import StageFailure, backoff_delay
from .walk import BadPath
from .workspace import remove_path, sub_manifest

if TYPE_CHECKING:
    from .build import Builder, StageKey
    from .model import Stage

__all__ = [
    "LostObjects",
    "assemble",
    "forget_lost_items",
    "item_decision",
    "item_keys",
    "item_source",
    "items_changed",
    "on_message",
    "rerun_lost",
    "start",
    "stage_key",
]


class LostObjects(StageFailure):
    """Objects of items decided as cached left the store before the stage was assembled."""


#: how many times a stage or item runs again because an input changed while it ran
MAX_AGAIN = 3


def item_source(
    b: Builder, stage: Stage, path: str, unknown: set[str]
) -> tuple[list[Any], Callable[[], list[ItemRef]]] | None:
    """What a foreach input's items are a function of (the manifest hash of the directory,
    from the upstream manifest when there is one, else from the workspace through the stat
    cache, and the filters), and how to list them; None while the upstream is unknown."""
    assert stage.foreach is not None
    pattern = stage.foreach.pattern
    globbed = is_glob(path)
    base = glob_base(path) if globbed else path
    owner = b.p.output_owner(base)
    if owner is not None and owner[0] != stage.id:
        planned = b.results.get(owner[0])
        if planned is None or planned.outputs is None:
            unknown.add(owner[0])
            return None
        manifest = sub_manifest(planned.outputs[owner[1]], owner[2])
        if manifest is None:
            raise StageFailure(f"foreach input {path} was not produced by stage {owner[0]!r}")
        kind, digest_, entries = manifest["kind"], manifest["hash"], lambda: manifest["entries"]
    else:
        try:
            info = b.hasher.info(base)
        except BadPath as exc:
            raise StageFailure(f"foreach input {base}: {exc}") from None
        if info.kind == "missing":
            raise StageFailure(f"foreach input {base} does not exist")
        kind, digest_, entries = info.kind, info.hash, lambda: info.entries or []

    def listing() -> list[ItemRef]:
        if kind == "file":
            parent = os.path.dirname(base) or "."
            return select(parent, [[os.path.basename(base), digest_]], None)
        return select(base, entries(), pattern, path if globbed else None)

    return [kind, digest_, path, pattern], listing


def item_keys(sk: StageKey) -> dict[str, str]:
    """Each item's key (not map-reduce): the stage's base key, relpath and content."""
    return {it.relpath: item_key(sk.base, it) for it in sk.items}


def stage_key(b: Builder, stage: Stage, sk: StageKey) -> None:
    """Fill in the stage key (None for map-reduce while maps are missing). For a plain
    foreach stage it is remembered in the workspace state under its base key and item
    source, so an unchanged input tree gives it back without listing a single item."""
    base = key_digest(sk.doc)
    sk.base = base
    rule = stage.rule
    if not rule.map_reduce:
        memo = digest([base, sk.source])
        known = b.state.foreach_key(stage.id)
        if known is not None and known[0] == memo:
            sk.key = known[1]
            return
        sk.key = digest(["foreach", base, items_digest(sk.item_keys)])
        b.state.set_foreach_key(stage.id, memo, sk.key)
        return
    params = dict(sk.doc["params"])
    for name in rule.reduce_params:
        params.pop(name, None)
    map_base = sk.map_base = key_digest(dict(sk.doc, params=params))
    sk._item_keys = {it.relpath: map_key(map_base, it) for it in sk.items}
    entries = b.store.get_actions(list(sk.item_keys.values()))
    sk.cached = {rel: entries[k] for rel, k in sk.item_keys.items() if k in entries}
    if len(sk.cached) == len(sk.items):
        mapped = sorted((rel, e["map"]["hash"]) for rel, e in sk.cached.items())
        sk.key = digest(["reduce", base, mapped])
    else:
        sk.key = None


def item_decision(b: Builder, stage: Stage, sk: StageKey) -> tuple[list[Reason], dict[str, Any]]:
    """Which items must run and why, for a foreach stage whose stage key is not cached."""
    if not stage.rule.map_reduce:
        index = b.state.item_index(stage.id, b.store.removals())
        sk.cached = _indexed(index, sk.item_keys)
        rest = [k for rel, k in sk.item_keys.items() if rel not in sk.cached]
        entries = b.store.get_actions(rest) if rest else {}
        sk.cached.update({rel: entries[k] for rel, k in sk.item_keys.items() if k in entries})
    sk.todo = [it for it in sk.items if it.relpath not in sk.cached]
    old = b.state.item_hashes(stage.id)
    changed = item_reasons(old, sk.items, [it.relpath for it in sk.todo])
    gone = removed_items(old, sk.items)
    reasons = []
    if changed:
        reasons.append(Reason(Trigger.ITEMS, summarize(changed, len(sk.items))))
    if gone:
        reasons.append(Reason(Trigger.ITEMS, f"{len(gone):,} item(s) removed (first: {gone[0]})"))
    if not sk.items:
        reasons.append(Reason(Trigger.ITEMS, "no items: the foreach input holds no matching files"))
    info = {
        "total": len(sk.items),
        "run": len(sk.todo),
        "cached": len(sk.cached),
        "removed": len(gone),
    }
    return reasons, info


def items_changed(b: Builder, stage: Stage, sk: StageKey) -> list[Reason]:
    """The items of a foreach stage that differ from its last build (new, content changed,
    removed): why a stage restored from an earlier build is restored, named by its inputs."""
    old = b.state.item_hashes(stage.id) if stage.foreach is not None else None
    if not old:
        return []
    changed = item_reasons(old, sk.items, [it.relpath for it in sk.items])
    changed = [c for c in changed if c[1] != "not in the cache"]
    gone = removed_items(old, sk.items)
    reasons = [Reason(Trigger.ITEMS, summarize(changed, len(sk.items)))] if changed else []
    if gone:
        reasons.append(Reason(Trigger.ITEMS, f"{len(gone):,} item(s) removed (first: {gone[0]})"))
    return reasons


def _indexed(
    index: tuple[dict[str, str], dict[str, Any]] | None, item_keys: dict[str, str]
) -> dict[str, Any]:
    """The entries of the items whose key is the one the stage's item index (the workspace
    state, written when the stage was last assembled; checked against its hash) holds for
    them; anything else is read from the store."""
    if not index:
        return {}
    keys, entries = index
    if keys == item_keys:
        return dict(entries)
    return {rel: entries[rel] for rel, key in item_keys.items() if keys.get(rel) == key}


def forget_lost_items(b: Builder, sk: StageKey) -> None:
    """Treat cached items whose output objects are no longer in the store as not cached."""
    for rel, entry in list(sk.cached.items()):
        if "map" in entry and not b.store.has_object(entry["map"]["hash"]):
            del sk.cached[rel]  # a map result (map-reduce) is an object too
            continue
        for manifest in entry.get("outputs", {}).values():
            digests = (
                [e[1] for e in manifest["entries"]]
                if manifest["kind"] == "dir"
                else [manifest["hash"]]
            )
            if not all(b.store.has_object(d) for d in digests):
                del sk.cached[rel]
                break
    sk.todo = [it for it in sk.items if it.relpath not in sk.cached]


def start(b: Builder, stage: Stage, sk: StageKey, run: dict[str, Any], force: bool) -> list[Task]:
    """Tasks for the items that must run (all of them when forced)."""
    todo = sk.items if force else sk.todo
    if force:
        sk.cached = {}
    run.update(
        foreach=True,
        items_done=0,
        items_total=len(todo),
        failures={},
        new={},
        done_items={},
        tasks={},
        values={rel: e.get("values", {}) for rel, e in sk.cached.items()},
        sigs={},
    )
    if stage.rule.map_reduce:
        run["mapped"] = {rel: e["map"] for rel, e in sk.cached.items()}
        if not todo:
            return [_reduce_task(b, stage, sk, run)]
    return _tasks(b, stage, sk, run, todo, "")


def _tasks(
    b: Builder, stage: Stage, sk: StageKey, run: dict[str, Any], todo: list[ItemRef], tag: str
) -> list[Task]:
    """Tasks for the items ``todo`` (``tag`` keeps their ids and folders apart from the
    tasks started before them)."""
    root = str(b.p.root)
    tasks = []
    mode = "map" if stage.rule.map_reduce else "items"
    rule = stage.rule
    batch = rule.map_batch_size if rule.map_reduce else rule.batch_size
    per_item_dirs = not rule.map_reduce and batch > 1
    for n, chunk in enumerate(chunks(todo, b.jobs, max(1, batch))):
        items = []
        for it in chunk:
            run["sigs"][it.relpath] = _sig(os.path.join(root, it.path))
            item = {"path": it.path, "relpath": it.relpath, "hash": it.hash}
            if per_item_dirs:
                idx = len(run["new"]) + len(items)
                item["outputs"] = {
                    name: os.path.relpath(run["staging"] / f"i{idx}" / name, b.p.root)
                    for name in sk.ports.outputs
                }
            items.append(item)
        task_id = f"{stage.id}#{tag}{n}"
        for i in items:
            run["new"][i["relpath"]] = dict(i, task=task_id)
        work = run["staging"] / f"t{tag}{n}"
        task = b.task(
            stage, sk, run, task_id, mode=mode, items=items,
            outputs={name: os.path.relpath(work / "work" / name, b.p.root)
                     for name in sk.ports.outputs},
            extra={"done": os.path.relpath(run["staging"] / "done", b.p.root)},
        )  # fmt: skip
        run["tasks"][task_id] = task
        tasks.append(task)
    return tasks


def rerun_lost(b: Builder, stage: Stage, run: dict[str, Any]) -> list[Task]:
    """Tasks for the cached items whose objects left the store after the stage was decided
    (a ``cache gc`` beside this build): they run instead of failing the stage."""
    sk = run["sk"]
    before = set(sk.cached)
    forget_lost_items(b, sk)
    lost = [it for it in sk.items if it.relpath in before and it.relpath not in sk.cached]
    if not lost:
        return []
    run["lost"] = run.get("lost", 0) + 1
    run["items_total"] += len(lost)
    for it in lost:
        run["values"].pop(it.relpath, None)
    b.bus.emit(
        "log", stage.id, level="warning",
        text=f"{len(lost):,} cached item(s) lost their objects from the store since this build "
        f"decided (first: {lost[0].relpath}); running them instead",
    )  # fmt: skip
    return _tasks(b, stage, sk, run, lost, f"lost{run['lost']}-")


def _reduce_task(b: Builder, stage: Stage, sk: StageKey, run: dict[str, Any]) -> Task:
    mapped = {rel: [m["hash"], m["kind"]] for rel, m in sorted(run["mapped"].items())}
    sk.key = digest(["reduce", sk.base, sorted((rel, v[0]) for rel, v in mapped.items())])
    run["reduce"] = True
    return b.task(stage, sk, run, f"{stage.id}#reduce", mode="reduce", mapped=mapped)


def on_message(b: Builder, stage: Stage, run: dict[str, Any], msg: Message) -> list[Task]:
    """Commit the items a task finished; retry its failed items while attempts remain;
    start the reduce once every map is in."""
    if msg.kind == "error" and not run.get("reduce"):
        text = msg.data[0]
        task_items = [i for i in run["new"].values() if i.get("task") == msg.task]
        for rel in [i["relpath"] for i in task_items] or ["(a batch)"]:
            run["failures"].setdefault(rel, text)
        return _maybe_reduce(b, stage, run)
    if msg.kind != "result" or run.get("reduce"):
        return []
    sk = run["sk"]
    task = run["tasks"].get(msg.task)
    results = msg.data["items"]
    moved = _moved(b, run, results)
    follow = []
    if moved:
        follow = _again(b, stage, run, task, moved)
        results = {rel: res for rel, res in results.items() if rel not in moved}
    failed = {rel for rel, res in results.items() if "error" in res}
    retry = bool(failed) and task is not None and task.attempt < task.max_attempts
    commits = []
    if failed:
        run["retried"] = True  # a failed attempt may have left files in the shared ``done``
    for rel, res in results.items():
        if "error" in res and retry:
            continue
        run["items_done"] += 1
        if "error" in res:
            run["failures"][rel] = res["error"] + (f"\n{res['tb']}" if res.get("tb") else "")
        elif stage.rule.map_reduce:
            run["mapped"][rel] = {"hash": res["hash"], "kind": res["kind"]}
            commits.append((sk.item_keys[rel], {"map": run["mapped"][rel]}))
        else:
            if res["values"]:
                run["values"][rel] = res["values"]
            run["done_items"][rel] = res["outputs"]
            if "staged" in res:
                run["new"][rel]["staged"] = res["staged"]
            commits.append(
                (sk.item_keys[rel], {"outputs": res["outputs"], "values": res["values"]})
            )
    if commits:
        b.store.put_actions(commits)
    b.bus.emit("progress", stage.id, done=run["items_done"], total=run["items_total"], unit="items")
    if retry:
        assert task is not None
        return [*follow, _retry(b, stage, run, task, failed, msg)]
    run["tasks"].pop(msg.task, None)  # answered for good: its item list is not needed
    return [*follow, *_maybe_reduce(b, stage, run)]


def _sig(path: str) -> tuple[int, ...] | None:
    """What a stat says of an item's file: changed content changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _moved(b: Builder, run: dict[str, Any], results: dict[str, Any]) -> dict[str, str | None]:
    """The items of a task's answer whose input file changed while they ran (relpath → its
    hash now, None when it is gone), and, when a source input of the whole stage changed,
    every item of the answer: their work must not be committed under their keys."""
    root = str(b.p.root)
    whole = b.moved_inputs(run)
    if whole:
        run["moved_inputs"] = whole
        return dict.fromkeys(results)
    moved: dict[str, str | None] = {}
    for rel in results:
        item = run["new"][rel]
        if _sig(os.path.join(root, item["path"])) == run["sigs"].get(rel):
            continue
        try:
            now = b.hasher.recheck(item["path"])
        except BadPath:
            now = None
        if now != item["hash"]:
            moved[rel] = now
    return moved


def _again(
    b: Builder, stage: Stage, run: dict[str, Any], task: Task | None, moved: dict[str, Any]
) -> list[Task]:
    """Nothing of the items whose inputs changed while they ran is committed: they run
    again with their new content (under their new keys), or fail, saying why, when a stage
    input changed, an item's file is gone, or it kept changing."""
    sk = run["sk"]
    first = sorted(moved)[0]
    reason = None
    if run.get("moved_inputs"):
        paths = ", ".join(run["moved_inputs"][:3])
        reason = f"input {paths} changed while the stage ran; nothing was kept: build again"
    elif any(h is None for h in moved.values()):
        gone = sorted(rel for rel, h in moved.items() if h is None)[0]
        reason = f"its file {run['new'][gone]['path']} was removed while it ran: build again"
    elif max(run["new"][rel].get("again", 0) for rel in moved) >= MAX_AGAIN:
        reason = (
            f"its file kept changing while it ran ({MAX_AGAIN + 1} runs); nothing was kept: "
            "build again once it stays the same"
        )
    elif task is None:
        reason = "its file changed while it ran: build again"
    if reason is not None:
        for rel in moved:
            run["items_done"] += 1
            run["failures"][rel] = reason
        return []
    assert task is not None
    items = []
    for rel, h in sorted(moved.items()):
        item = run["new"][rel]
        item.update(hash=h, again=item.get("again", 0) + 1)
        _rekey(sk, stage, rel, h)
        run["sigs"][rel] = _sig(os.path.join(str(b.p.root), item["path"]))
        extra = {"outputs": item["outputs"]} if "outputs" in item else {}
        items.append({"path": item["path"], "relpath": rel, "hash": h, **extra})
    again = dataclasses.replace(task, id=f"{task.id}.m{run['new'][first]['again']}", items=items)
    for i in items:
        run["new"][i["relpath"]]["task"] = again.id
    run["tasks"][again.id] = again
    b.bus.emit(
        "log", stage.id, level="warning",
        text=f"item {first}: its file changed while it ran; nothing of that run is kept, "
        f"running {len(items)} item(s) again with the new content",
    )  # fmt: skip
    return [again]


def _rekey(sk: StageKey, stage: Stage, rel: str, h: str) -> None:
    """An item's content changed during this build: its ItemRef and key follow, and so does
    the stage key (never remembered for the input tree as it was)."""
    i = bisect.bisect_left([it.relpath for it in sk.items], rel)
    old = sk.items[i]
    ref = ItemRef(old.path, old.relpath, h)
    sk.items[i] = ref
    if stage.rule.map_reduce:
        sk.item_keys[rel] = map_key(sk.map_base, ref)
    else:
        sk.item_keys[rel] = item_key(sk.base, ref)
        sk.key = digest(["foreach", sk.base, items_digest(sk.item_keys)])
    sk.source = None


def _retry(
    b: Builder, stage: Stage, run: dict[str, Any], task: Task, failed: set[str], msg: Message
) -> Task:
    """The failed items of a task, as a new attempt after a backoff."""
    delay = backoff_delay(task.backoff, task.attempt)
    again = dataclasses.replace(
        task,
        id=f"{task.id}.{task.attempt + 1}",
        attempt=task.attempt + 1,
        items=[i for i in task.items if i["relpath"] in failed],
        not_before=time.time() + delay,
    )
    run["tasks"][again.id] = again
    run["tasks"].pop(task.id, None)  # the new attempt carries what is left of it
    for i in again.items:
        run["new"][i["relpath"]]["task"] = again.id
    first = sorted(failed)[0]
    error = f"item {first}: {msg.data['items'][first]['error']}"
    b.bus.emit(
        "stage_retried",
        stage.id,
        task=again.id,
        attempt=again.attempt,
        of=task.max_attempts,
        delay=delay,
        items=len(failed),
        error=error[:500],
    )
    return again


def _maybe_reduce(b: Builder, stage: Stage, run: dict[str, Any]) -> list[Task]:
    if not stage.rule.map_reduce or run["failures"] or run.get("reduce"):
        return []
    if run["items_done"] < run["items_total"]:
        return []
    return [_reduce_task(b, stage, run["sk"], run)]


def _staged_whole(
    b: Builder, sk: StageKey, run: dict[str, Any], name: str, manifest: dict[str, Any]
) -> Path | None:
    """The staged tree of output ``name`` when it is exactly ``manifest``: every item of the
    stage ran in this build (none cached), on the first attempt, staged each file it wrote
    under the output's own tree (plain top-level files), and nothing else is there (an
    attempt that died with its worker may have staged files of its own); else None."""
    if sk.cached or run.get("retried") or not run["done_items"]:
        return None
    whole = run["staging"] / "done" / name
    prefix = f"{os.path.relpath(whole, b.p.root)}/"
    done = os.path.relpath(run["staging"] / "done", b.p.root)
    for item_rel, manifests in run["done_items"].items():
        staged = run["new"][item_rel].get("staged")
        if staged is None:
            return None
        if staged == done:  # plain files, staged under their output's own tree
            continue
        for entry_rel, flat in staged_files(staged, name, manifests[name]["entries"]).items():
            if flat != prefix + entry_rel:
                return None
    try:
        with os.scandir(whole) as it:
            there = sum(1 for _ in it)
    except OSError:
        return None
    return whole if there == len(manifest["entries"]) else None


def failure_text(run: dict[str, Any], total: int) -> str:
    """What a foreach stage's failure says: failed of all items (those run now and those the
    store had), what is kept, then the first failure in full (its traceback last)."""
    fails, cached = run["failures"], len(run["sk"].cached)
    first_rel = sorted(fails)[0]
    ok = total + cached - len(fails)
    earlier = f" ({cached} from earlier builds)" if cached else ""
    kept = f"; the other {ok} are kept{earlier} and do not run again" if ok else ""
    return (
        f"{len(fails)} of {total + cached} item(s) failed{kept}. "
        f"First: item {first_rel}: {fails[first_rel]}"
    )


def assemble(b: Builder, stage: Stage, run: dict[str, Any]) -> dict[str, Any]:
    """The stage entry of a (non map-reduce) foreach stage, its outputs synced into the
    workspace from the staged new items and the store."""
    sk = run["sk"]
    per_item = {rel: e["outputs"] for rel, e in sk.cached.items()}
    per_item.update(run["done_items"])
    try:
        merged = merge_outputs(per_item, sk.ports.outputs)
    except ValueError as exc:
        raise StageFailure(str(exc)) from None
    # each item's own dict (an empty one may be shared by many in the index)
    values = stage.rule.gather(
        sk.ports.params, {rel: run["values"].get(rel) or {} for rel in per_item}
    )
    entry = {
        "stage": stage.id,
        "outputs": merged,
        "values": values,
        "created": time.time(),
        "metrics": {
            "duration": time.time() - run["started"],
            "queued": run["started"] - run["decided"],
            "items": len(per_item),
            "items_run": len(run["done_items"]),
        },
    }

    removals = b.store.removals()  # as of now: a removal after this must void the index

    def bookkeeping() -> None:
        b.store.put_action(sk.key, entry)
        keys = sk.item_keys
        ran = run["done_items"]
        none: dict[str, Any] = {}  # one shared "no values" (100,000 empty dicts weigh 6 MB)
        index = {
            rel: {"outputs": outs, "values": run["values"].get(rel) or none} if rel in ran
            else sk.cached[rel]
            for rel, outs in per_item.items()
        }  # fmt: skip
        b.state.set_item_index(stage.id, {rel: keys[rel] for rel in index}, index, removals)

    root = str(b.p.root)
    for name, rel in sk.ports.outputs.items():
        whole = _staged_whole(b, sk, run, name, merged[name])
        if whole is not None:  # every item ran: the staged tree is the output, one rename
            b.ws.place(whole, rel, later=lambda work: b.later(work, stage.id))
            continue
        moves: dict[str, str] = {}
        for item_rel, manifest in run["done_items"].items():
            new = run["new"][item_rel]
            if "staged" in new:
                staged_at = staged_files(new["staged"], name, manifest[name]["entries"])
                for entry_rel, flat in staged_at.items():
                    moves[entry_rel] = os.path.join(root, flat)
                continue
            staged = os.path.join(root, new["outputs"][name])
            for e in manifest[name]["entries"]:
                moves[e[0]] = f"{staged}/{e[0]}"
        if not b.ws.sync_dir(merged[name], rel, b.store, b.hasher, moves):
            raise LostObjects(f"could not assemble {rel}: a store object is missing or corrupt")
    b.later(bookkeeping, stage.id)
    remove_path(run["staging"])
    return entry

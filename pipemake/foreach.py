"""Running a ``foreach`` stage inside a build: its items' tasks, committing each item as it
finishes, and assembling the stage output from all of them — one :class:`ForeachRun` per
stage run, with its own state (``begin``, ``on_message``, ``complete``).

Item entries are committed as soon as their task reports, in one transaction per task, so
a failed or interrupted stage keeps its finished items and the next build reruns only the
rest. Map-reduce rules cache each item's map result and rerun only the reduce when only
reduce params change.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import os_failure
from .executors.base import GONE, LOST, Message, Task
from .items import Item, chunks, is_glob, merge_outputs, staged_files
from .manifest import digests
from .model import Stage
from .ownfiles import OWN, in_workspace, lay_under, own_layer, own_section
from .runs import MAX_AGAIN, BuildContext, StageRun
from .scheduler import StageFailure, backoff_delay
from .walk import BadPath
from .workspace import remove_path

#: failed items of a stage said one by one in the run log (the rest: in its stage log)
ITEM_FAILURES_SAID = 50
#: characters of an item's failure said there
ITEM_FAILURE_CHARS = 4000
#: tasks of never-started items that end at their first item, in a row, before the
#: stage's other never-started items are said not run (the rule kills every worker)
FIRST_DEATHS = 3

__all__ = ["ForeachRun", "LostObjects"]


def _one_line(name: str) -> str:
    """An item's name as a message's line shows it: a newline or carriage return in it
    written ``\\n``, ``\\r`` (the views escape the other control characters)."""
    return name.replace("\n", "\\n").replace("\r", "\\r")


class LostObjects(StageFailure):
    """Objects of items decided as cached left the store before the stage was assembled."""


@dataclass
class ForeachRun(StageRun):
    """A foreach stage's run: which items run, what each task answered, and what is
    committed. ``cached`` starts as the items the decision found in the action cache."""

    forced: bool = False
    cached: dict[str, Any] = field(default_factory=dict)
    items_done: int = 0
    items_total: int = 0
    #: item relpath → why it failed
    failures: dict[str, str] = field(default_factory=dict)
    #: item relpath → the item as sent to its task (with its task id, where it staged)
    new: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: item relpath → the output manifests of an item that ran in this build
    done_items: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: task id → task, for the tasks not answered for good yet
    tasks: dict[str, Task] = field(default_factory=dict)
    #: item relpath → computed values
    values: dict[str, Any] = field(default_factory=dict)
    #: item relpath → the stat of its file when its task was made
    sigs: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    #: a map-reduce stage's map results (relpath → {hash, kind}); None for other rules
    mapped: dict[str, dict[str, Any]] | None = None
    #: whether the reduce task was handed out (its answer is then the stage's)
    reduce: bool = False
    #: whether an item failed once (its attempt may have left files in the shared ``done``)
    retried: bool = False
    #: how many times cached items that lost their objects were run instead
    lost: int = 0
    #: cached items whose outputs the store could not give back (an object of another
    #: size than recorded, a name the file system refuses): run instead, like lost ones
    unusable: set[str] = field(default_factory=set)
    #: the stage's source inputs found changed while items ran (nothing is kept then)
    inputs_moved: list[str] = field(default_factory=list)
    #: items whose sidecar (a file their key holds beside their own) changed while they ran
    sidecars_moved: dict[str, str] = field(default_factory=dict)
    _items_by_rel: dict[str, Item] | None = None
    #: task id → the results of its items that said they ended (``items`` messages)
    reported: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the ids of the tasks made for items a task ended from outside never started
    requeued: set[str] = field(default_factory=set)
    #: tasks of never-started items ended in a row before finishing any (see _ended)
    first_deaths: int = 0
    #: items not run: their task was ended from outside again before they started, or
    #: its executor can start nothing more
    not_run: set[str] = field(default_factory=set)
    #: why the last of them were not run (an executor's cluster gone), for the stage's
    #: failure when none of its items failed
    not_run_why: str = ""
    #: the ids of its tasks running now, and since when none has run (None: one runs)
    live: set[str] = field(default_factory=set)
    idle_since: float | None = None
    #: items that ran but could not be recorded (the store's database refused the write)
    unrecorded: set[str] = field(default_factory=set)
    #: whether assembling the stage changed its outputs in the workspace (False: every
    #: item was in the store and the outputs were already what they record)
    wrote: bool = False

    # run time ---------------------------------------------------------------------------
    def attempt_started(self, task: Task) -> None:
        """One of its tasks left the queue. A retry (of items, or of a whole task) that,
        its backoff over, waited while none of the stage's tasks ran waited for a job or a
        resource: that wait is queue time, as a stage's own retry's is, not run time."""
        now = time.time()
        self.live.discard(task.id)  # a task the scheduler retried whole: its attempt ended
        if task.attempt > 1 and not self.live:
            since = max(self.idle_since or 0.0, task.not_before)
            self.retry_queued += max(0.0, now - since)
        self.live.add(task.id)
        self.idle_since = None

    def task_ended(self, task_id: str) -> None:
        """Its task ``task_id`` answered (a result or an error)."""
        self.live.discard(task_id)
        if not self.live:
            self.idle_since = time.time()

    # begin ------------------------------------------------------------------------------
    def begin(self, ctx: BuildContext, stage: Stage, check_lost: bool = False) -> list[Task]:
        """Tasks for the items that must run (all of them when forced); ``check_lost``
        first treats cached items whose objects are gone from the store as not cached."""
        if check_lost:
            self.forget_lost_items(ctx)
        if self.forced:
            self.cached = {}
        todo = [it for it in self.rs.items if it.relpath not in self.cached]
        self.items_total = len(todo)
        self.values = {rel: e.get("values", {}) for rel, e in self.cached.items()}
        if stage.rule.map_reduce:
            self.mapped = {rel: e["map"] for rel, e in self.cached.items()}
            if not todo:
                return [self._reduce_task(ctx, stage)]
        return self._tasks(ctx, stage, todo, "")

    def forget_lost_items(self, ctx: BuildContext) -> None:
        """Treat cached items whose output objects are no longer in the store, or whose
        outputs the store could not give back, as not cached."""
        has = ctx.store.has_object
        for rel, entry in list(self.cached.items()):
            if rel in self.unusable or not all(has(d) for d in digests(entry)):
                del self.cached[rel]

    def _tasks(self, ctx: BuildContext, stage: Stage, todo: list[Item], tag: str) -> list[Task]:
        """Tasks for the items ``todo`` (``tag`` keeps their ids and folders apart from the
        tasks started before them)."""
        root = str(ctx.root)
        tasks = []
        rule = stage.rule
        mode = "map" if rule.map_reduce else "items"
        batch = rule.map_batch_size if rule.map_reduce else rule.batch_size
        per_item_dirs = not rule.map_reduce and batch > 1
        outputs = self.rs.ports.outputs
        for n, chunk in enumerate(chunks(todo, ctx.jobs, max(1, batch))):
            items = []
            for it in chunk:
                self.sigs[it.relpath] = _sig(os.path.join(root, it.path))
                item: dict[str, Any] = {"path": it.path, "relpath": it.relpath, "hash": it.hash}
                if per_item_dirs:
                    idx = len(self.new) + len(items)
                    item["outputs"] = {
                        name: os.path.relpath(self.staging / f"i{idx}" / name, ctx.root)
                        for name in outputs
                    }
                items.append(item)
            task_id = f"{stage.id}#{tag}{n}"
            for i in items:
                self.new[i["relpath"]] = dict(i, task=task_id)
            work = self.staging / f"t{tag}{n}"
            task = self.task(
                ctx, stage, task_id, mode=mode, items=items,
                outputs={name: os.path.relpath(work / "work" / name, ctx.root)
                         for name in outputs},
                done=os.path.relpath(self.staging / "done", ctx.root),
            )  # fmt: skip
            self.tasks[task_id] = task
            tasks.append(task)
        return tasks

    def _reduce_task(self, ctx: BuildContext, stage: Stage) -> Task:
        assert self.mapped is not None
        mapped = {rel: (m["hash"], m["kind"]) for rel, m in sorted(self.mapped.items())}
        self.rs.reduce_key({rel: v[0] for rel, v in mapped.items()})
        self.reduce = True
        return self.task(ctx, stage, f"{stage.id}#reduce", mode="reduce", mapped=mapped)

    def fail_item(self, ctx: BuildContext, stage_id: str, rel: str, text: str) -> None:
        """Note an item's failure; the first :data:`ITEM_FAILURES_SAID` of a stage are also
        said as a ``log`` event naming the item, so the run log names each one."""
        self.failures[rel] = text
        if len(self.failures) <= ITEM_FAILURES_SAID:
            said = f"item {_one_line(rel)} FAILED: {text[:ITEM_FAILURE_CHARS]}"
            ctx.bus.emit("log", stage_id, level="error", item=rel, text=said)

    def fail_unrecorded(self, ctx: BuildContext, stage_id: str, rels: list[str], why: str) -> None:
        """Note items that ran but whose entries the store could not write (``why``: the
        clear error, a file-size limit or a full disk). The cause is one for them all: the
        stage's failure says it once (:meth:`failure_text`); each item is named in the run
        log's JSON (a ``quiet`` event the views do not print) and in the stage log."""
        new = [rel for rel in rels if rel not in self.failures]
        if not new:
            return
        lines = []
        for rel in new:
            self.failures[rel] = why
            self.unrecorded.add(rel)
            lines.append(f"item {_one_line(rel)} could not be recorded: {why}\n")
            if len(self.failures) <= ITEM_FAILURES_SAID:
                said = f"item {_one_line(rel)} could not be recorded: {why}"
                ctx.bus.emit("log", stage_id, level="error", item=rel, text=said, quiet=True)
        try:
            with open(self.log, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.writelines(lines)
        except OSError:
            pass  # (the disk that refused the store may refuse this too: the run log has them)

    # on message -------------------------------------------------------------------------
    def on_message(self, ctx: BuildContext, stage: Stage, msg: Message) -> list[Task]:
        """Keep the items a task says ended (``items``); at its answer, commit them, retry
        its failed items while attempts remain, and start the reduce once every map is in.
        A task ended from outside (its worker died, it timed out) keeps what it finished:
        the item that was running fails (or is retried) as itself, and the ones it never
        started run in a task of their own."""
        if msg.kind == "items":
            self.reported.setdefault(msg.task, {}).update(msg.data)
            return []
        if msg.kind not in ("result", "error"):
            return []
        task = self.tasks.get(msg.task)
        results = self.reported.pop(msg.task, {})
        rest: list[dict[str, Any]] = []
        if msg.kind == "result":
            results.update(msg.data["items"])
        elif task is None:  # not one of this stage's item tasks (never so, but say it)
            self.failures.setdefault("(a batch)", msg.data[0])
            return self._maybe_reduce(ctx, stage)
        elif not ctx.stopping():
            rest = self._ended(stage, task, msg, results)
        # else stopped by a signal: what ended is kept, the rest is not run (the stage stops)
        return self._answered(ctx, stage, task, msg.task, results, rest)

    def _ended(
        self, stage: Stage, task: Task, msg: Message, results: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """A task that answered with an error: its unanswered items get that error in
        ``results``, or, when it was ended from outside (:data:`LOST`), only the one that
        was running (its rule's whole batch, for a batching rule); returns the items it
        never started, to run in a task of their own (none, when a task that ran such items
        already ended so before finishing any: those are not run)."""
        text, tb = msg.data[0], msg.data[1] if len(msg.data) > 1 else None
        lost = len(msg.data) > 2 and msg.data[2] == LOST
        left = [i for i in task.items if i["relpath"] not in results]
        failure = {"error": text, **({"tb": tb} if tb else {})}
        if not lost or not left:
            results.update((i["relpath"], dict(failure)) for i in left)
            return []
        self.retried = True  # what the running item left behind is not to be trusted
        if len(msg.data) > 4 and msg.data[4] == GONE:  # nothing more can run: not run
            return self._gone(stage, task, msg.data[3], left, results, failure)
        rule = stage.rule
        size = max(1, rule.map_batch_size if task.mode == "map" else rule.batch_size)
        done = len(task.items) - len(left)  # items run in order, a batch at a time
        at = msg.data[3] if len(msg.data) > 3 else -1  # the one its worker said it started
        if isinstance(at, int) and 0 <= at < len(task.items):
            running = [i for i in task.items[at : at + size] if i["relpath"] not in results]
        else:  # the first not reported (a thread reports all that ended as it stops)
            at = done
            running = left[: size - done % size]
        if not text.startswith("timed out"):  # a timeout is per item: it says whose already
            which = "this item" if size == 1 else "this item's batch"
            text = f"{text} while it ran {which}"
        for i in running:
            results[i["relpath"]] = dict(failure, error=text)
        names = {i["relpath"] for i in running}
        rest = [i for i in left if i["relpath"] not in names]  # some may have ended unsaid
        if at:
            self.first_deaths = 0
        elif rest and task.id in self.requeued:
            # a task of never-started items that ended so again before finishing any: one
            # more bad item, or a rule that kills every worker; after FIRST_DEATHS such
            # tasks in a row it is the rule, and the rest is not run
            self.first_deaths += 1
            if self.first_deaths >= FIRST_DEATHS:
                self.not_run.update(i["relpath"] for i in rest)
                self.items_done += len(rest)
                return []
        return rest

    def _gone(
        self,
        stage: Stage,
        task: Task,
        at: Any,
        left: list[dict[str, Any]],
        results: dict[str, Any],
        failure: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """A task its executor gave up on, able to start nothing more (the cluster gone):
        the item it was running at index ``at`` (its rule's batch; none when -1: the task
        never started) fails with ``failure``, and the items it never started are not run
        (the next build runs them); none runs again here."""
        running: set[str] = set()
        if isinstance(at, int) and 0 <= at < len(task.items):
            rule = stage.rule
            size = max(1, rule.map_batch_size if task.mode == "map" else rule.batch_size)
            running = {i["relpath"] for i in task.items[at : at + size]}
        for i in left:
            if i["relpath"] in running:
                results[i["relpath"]] = dict(failure)
            else:
                self.not_run.add(i["relpath"])
                self.not_run_why = failure["error"]
                self.items_done += 1
        return []

    def _answered(
        self,
        ctx: BuildContext,
        stage: Stage,
        task: Task | None,
        task_id: str,
        results: dict[str, Any],
        rest: list[dict[str, Any]],
    ) -> list[Task]:
        """Commit the items of a task's answer (``results``); retry its failed ones while
        attempts remain; run ``rest``, the items it never started, in a task of their own."""
        rs = self.rs
        moved = self._moved(ctx, results)
        follow = []
        if moved:
            follow = self._again(ctx, stage, task, moved)
            results = {rel: res for rel, res in results.items() if rel not in moved}
        failed = {rel for rel, res in results.items() if "error" in res}
        retry = bool(failed) and task is not None and task.attempt < task.max_attempts
        commits: dict[str, tuple[str, dict[str, Any]]] = {}
        if failed:
            self.retried = True
        for rel, res in results.items():
            if "error" in res and retry:
                continue
            self.items_done += 1
            if "error" in res:
                tb = f"\n{res['tb']}" if res.get("tb") else ""
                self.fail_item(ctx, stage.id, rel, res["error"] + tb)
            elif self.mapped is not None:
                self.mapped[rel] = {"hash": res["hash"], "kind": res["kind"]}
                commits[rel] = (rs.item_keys[rel], {"map": self.mapped[rel]})
            else:
                if res["values"]:
                    self.values[rel] = res["values"]
                self.done_items[rel] = res["outputs"]
                if "staged" in res:
                    self.new[rel]["staged"] = res["staged"]
                commits[rel] = (
                    rs.item_keys[rel],
                    {"outputs": res["outputs"], "values": res["values"]},
                )
        if commits:
            self._commit(ctx, stage.id, commits)
        ctx.bus.emit(
            "progress", stage.id, done=self.items_done, total=self.items_total, unit="items",
            failed=len(self.failures),
        )  # fmt: skip
        if rest:
            assert task is not None
            follow.append(self._requeue(ctx, task, rest))
        if retry:
            assert task is not None
            return [*follow, self._retry(ctx, stage, task, failed, results)]
        self.tasks.pop(task_id, None)  # answered for good: its item list is not needed
        return [*follow, *self._maybe_reduce(ctx, stage)]

    def _commit(
        self, ctx: BuildContext, stage_id: str, commits: dict[str, tuple[str, dict[str, Any]]]
    ) -> None:
        """Write the entries of the items of one answer (item relpath → key, entry) in one
        transaction; when the store's database refuses the write (a file-size limit, a full
        disk), those items fail, the cause said once for the stage."""
        try:
            ctx.store.put_actions(list(commits.values()))
        except (OSError, sqlite3.OperationalError) as exc:
            clear = os_failure(exc, ctx.store.path / "actions.db")
            if clear is None:
                raise
            for rel in commits:
                self.done_items.pop(rel, None)
                self.values.pop(rel, None)
                if self.mapped is not None:
                    self.mapped.pop(rel, None)
            self.fail_unrecorded(ctx, stage_id, list(commits), str(clear))

    def _requeue(self, ctx: BuildContext, task: Task, rest: list[dict[str, Any]]) -> Task:
        """A task for the items ``rest`` of ``task`` that it never started (it was ended
        while running another): the same attempt, in work folders of its own."""
        count = len(self.requeued) + 1
        work = self.staging / f"r{count}"
        again = dataclasses.replace(
            task,
            id=f"{task.id}.r{count}",
            items=rest,
            outputs={n: os.path.relpath(work / "work" / n, ctx.root) for n in task.outputs},
            not_before=0.0,
        )
        self.requeued.add(again.id)
        self.tasks[again.id] = again
        for i in rest:
            self.new[i["relpath"]]["task"] = again.id
        return again

    def _moved(self, ctx: BuildContext, results: dict[str, Any]) -> dict[str, str | None]:
        """The items of a task's answer whose input file changed while they ran (relpath →
        its hash now, None when it is gone), and, when a source input of the whole stage
        changed, every item of the answer: their work must not be committed under their
        keys."""
        root = str(ctx.root)
        whole = self.moved_inputs(ctx.hasher)
        if whole:
            self.inputs_moved = whole
            return dict.fromkeys(results)
        moved: dict[str, str | None] = {}
        for rel in results:
            item = self.new[rel]
            side = self._sidecar_moved(ctx, rel)
            if side is not None:  # the item's own file is as it was: it fails (its key
                self.sidecars_moved[rel] = side  # is made from that file as it was)
                moved[rel] = item["hash"]
                continue
            if _sig(os.path.join(root, item["path"])) == self.sigs.get(rel):
                continue
            try:
                now = ctx.hasher.recheck(item["path"])
            except BadPath:
                now = None
            if now != item["hash"]:
                moved[rel] = now
        return moved

    def _sidecar_moved(self, ctx: BuildContext, rel: str) -> str | None:
        """The first file of the items' folder that item ``rel``'s params name through it
        (``data/{item.stem}.json``: in that item's key) and that changed while it ran; None
        where none did (a folder or glob such a name makes is checked with the stage's
        files, not here)."""
        reads = self.rs.item_reads
        if reads is None:
            return None
        if self._items_by_rel is None:
            self._items_by_rel = {it.relpath: it for it in self.rs.items}
        it = self._items_by_rel.get(rel)
        if it is None:
            return None
        for path, h in sorted(reads(it).items()):
            full = os.path.join(str(ctx.root), path)
            if h == "missing":
                if os.path.lexists(full):
                    return path
                continue
            if is_glob(path) or os.path.isdir(full):
                continue
            try:
                now = ctx.hasher.recheck(path)
            except BadPath:
                now = None
            if now != h:
                return path
        return None

    def _again(
        self, ctx: BuildContext, stage: Stage, task: Task | None, moved: dict[str, Any]
    ) -> list[Task]:
        """Nothing of the items whose inputs changed while they ran is committed: they run
        again with their new content (under their new keys), or fail, saying why, when a
        stage input changed, an item's file is gone, or it kept changing."""
        moved = dict(moved)  # the caller's stays whole: none of them is committed
        for rel in [r for r in moved if r in self.sidecars_moved]:
            path = self.sidecars_moved.pop(rel)
            self.items_done += 1
            self.fail_item(ctx, stage.id, rel, f"its file {path} changed while it ran; "
                           "nothing was kept: build again")  # fmt: skip
            del moved[rel]
        if not moved:
            return []
        first = sorted(moved)[0]
        reason = None
        if self.inputs_moved:
            paths = ", ".join(self.inputs_moved[:3])
            reason = f"input {paths} changed while the stage ran; nothing was kept: build again"
        elif any(h is None for h in moved.values()):
            gone = sorted(rel for rel, h in moved.items() if h is None)[0]
            reason = f"its file {self.new[gone]['path']} was removed while it ran: build again"
        elif max(self.new[rel].get("again", 0) for rel in moved) >= MAX_AGAIN:
            reason = (
                f"its file kept changing while it ran ({MAX_AGAIN + 1} runs); nothing was "
                "kept: build again once it stays the same"
            )
        elif task is None:
            reason = "its file changed while it ran: build again"
        if reason is not None:
            for rel in moved:
                self.items_done += 1
                self.fail_item(ctx, stage.id, rel, reason)
            return []
        assert task is not None
        items = []
        for rel, h in sorted(moved.items()):
            item = self.new[rel]
            item.update(hash=h, again=item.get("again", 0) + 1)
            self.rs.rekey_item(rel, h)
            self.sigs[rel] = _sig(os.path.join(str(ctx.root), item["path"]))
            extra = {"outputs": item["outputs"]} if "outputs" in item else {}
            items.append({"path": item["path"], "relpath": rel, "hash": h, **extra})
        again = dataclasses.replace(task, id=f"{task.id}.m{self.new[first]['again']}", items=items)
        for i in items:
            self.new[i["relpath"]]["task"] = again.id
        self.tasks[again.id] = again
        ctx.bus.emit(
            "log", stage.id, level="warning",
            text=f"item {first}: its file changed while it ran; nothing of that run is kept, "
            f"running {len(items)} item(s) again with the new content",
        )  # fmt: skip
        return [again]

    def _retry(
        self, ctx: BuildContext, stage: Stage, task: Task, failed: set[str], results: dict
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
        self.tasks[again.id] = again
        self.tasks.pop(task.id, None)  # the new attempt carries what is left of it
        for i in again.items:
            self.new[i["relpath"]]["task"] = again.id
        first = sorted(failed)[0]
        error = f"item {first}: {results[first]['error']}"
        ctx.bus.emit(
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

    def _maybe_reduce(self, ctx: BuildContext, stage: Stage) -> list[Task]:
        if self.mapped is None or self.failures or self.reduce:
            return []
        if self.items_done < self.items_total:
            return []
        return [self._reduce_task(ctx, stage)]

    # complete ---------------------------------------------------------------------------
    def none_ran(self) -> bool:
        """Whether every item was in the store and nothing ran (no item, no reduce): the
        stage is put together from the store, a restore, not a run."""
        return bool(self.cached) and not (self.reduce or self.new or self.failures)

    def failure_text(self) -> str:
        """What the stage failed with when items failed: failed of all items (those run now
        and those the store had), those not run, what is kept, then the first failure in
        full (its traceback last); items the store could not record, their one cause; items
        only not run (an executor's cluster gone, none failing), why."""
        fails, cached, idle = self.failures, len(self.cached), len(self.not_run)
        total = self.items_total + cached
        ok = total - len(fails) - idle
        not_run = f"; {idle} not run (the next build runs them)" if idle else ""
        earlier = f" ({cached} from earlier builds)" if cached else ""
        kept = f"; the other {ok} are kept{earlier} and do not run again" if ok else ""
        if not fails:  # none failed, some were not run (an executor's cluster gone)
            why = f": {self.not_run_why}" if self.not_run_why else ""
            return f"{idle} of {total} item(s) not run (the next build runs them){why}{kept}"
        lost = sorted(self.unrecorded)
        if lost:  # one cause for them all, said once
            cause = fails[lost[0]]
            if len(lost) == len(fails):
                return (
                    f"{len(lost)} of {total} item(s) could not be recorded: {cause}{not_run}{kept}"
                )
            unsaid = f" ({len(lost)} of them could not be recorded: {cause})"
        else:
            unsaid = ""
        first_rel = sorted(rel for rel in fails if rel not in self.unrecorded)[0]
        first = f"First: item {_one_line(first_rel)}: {fails[first_rel]}"
        return f"{len(fails)} of {total} item(s) failed{unsaid}{not_run}{kept}. {first}"

    def rerun_lost(self, ctx: BuildContext, stage: Stage) -> list[Task]:
        """Tasks for the cached items whose objects left the store after the stage was
        decided (a ``cache gc`` beside this build), or that the store could not give back
        (see :attr:`unusable`): they run instead of failing the stage."""
        before = set(self.cached)
        self.forget_lost_items(ctx)
        lost = [
            it for it in self.rs.items if it.relpath in before and it.relpath not in self.cached
        ]
        if not lost:
            return []
        self.lost += 1
        self.items_total += len(lost)
        for it in lost:
            self.values.pop(it.relpath, None)
        ctx.bus.emit(
            "log", stage.id, level="warning",
            text=f"{len(lost):,} cached item(s) could not be restored from the store (an "
            "object gone or corrupt, or a file its entry names that this file system cannot "
            f"hold; first: {lost[0].relpath}); running them instead",
        )  # fmt: skip
        return self._tasks(ctx, stage, lost, f"lost{self.lost}-")

    def complete(self, ctx: BuildContext, stage: Stage) -> dict[str, Any]:
        """The stage entry of a (non map-reduce) foreach stage, its outputs synced into the
        workspace from the staged new items and the store; its store entry and item index
        are written later (:attr:`BuildContext.later`). Raises :class:`LostObjects` when a
        cached item's object is gone."""
        rs = self.rs
        per_item = {rel: e["outputs"] for rel, e in self.cached.items()}
        per_item.update(self.done_items)
        try:
            merged = merge_outputs(per_item, rs.ports.outputs)
        except ValueError as exc:
            raise StageFailure(str(exc)) from None
        # files of the output no item wrote, accepted by `pipemake commit`: kept under them
        held = in_workspace(ctx.ws, ctx.hasher, rs.ports.outputs)
        own, dropped_note = own_layer(ctx.store, ctx.state, stage.id, held)
        if dropped_note:
            ctx.bus.emit("log", stage.id, level="warning", text=dropped_note)
        kept = lay_under(merged, own, lay=not self.forced) if own else {}
        if self.forced and kept:  # forced: the output is what its items write, no more
            dropped = sum(len(m["entries"]) for m in kept.values())
            ctx.bus.emit(
                "log", stage.id, level="warning",
                text=f"forced: dropped {dropped:,} file(s) accepted by commit that no item "
                "writes (kept as the stage's own until now)",
            )  # fmt: skip
            kept = {}
        # each item's own dict (an empty one may be shared by many in the index)
        values = stage.rule.gather(
            rs.ports.params, {rel: self.values.get(rel) or {} for rel in per_item}
        )
        entry = {
            "stage": stage.id,
            "outputs": merged,
            "values": values,
            "created": time.time(),
            "metrics": {
                "duration": self.ran_for(),
                "queued": self.queued(),
                "items": len(per_item),
                "items_run": len(self.done_items),
            },
        }
        if kept:
            entry[OWN] = own_section(rs.base, kept)

        removals = ctx.store.removals()  # as of now: a removal after this must void the index
        key, keys, ran, run_values, cached = (
            rs.key,
            rs.item_keys,
            self.done_items,
            self.values,
            self.cached,
        )

        def bookkeeping() -> None:
            ctx.store.put_action(key, entry)
            none: dict[str, Any] = {}  # one shared "no values" (100,000 empty dicts weigh 6 MB)
            index = {
                rel: {"outputs": outs, "values": run_values.get(rel) or none} if rel in ran
                else cached[rel]
                for rel, outs in per_item.items()
            }  # fmt: skip
            ctx.state.builds.set_item_index(
                stage.id, {rel: keys[rel] for rel in index}, index, removals
            )

        root = str(ctx.root)
        for name, rel in rs.ports.outputs.items():
            if not self.done_items and ctx.ws.check(merged[name], rel, ctx.hasher) is None:
                continue  # nothing ran and the output is already what its items record
            self.wrote = True
            whole = None if kept else self._staged_whole(ctx, name, merged[name])
            if whole is not None:  # every item ran: the staged tree is the output, one rename
                ctx.ws.place(whole, rel, later=lambda work: ctx.later(work, stage.id))
                continue
            moves: dict[str, str] = {}
            for item_rel, manifest in self.done_items.items():
                new = self.new[item_rel]
                if "staged" in new:
                    staged_at = staged_files(new["staged"], name, manifest[name]["entries"])
                    for entry_rel, flat in staged_at.items():
                        moves[entry_rel] = os.path.join(root, flat)
                    continue
                staged = os.path.join(root, new["outputs"][name])
                for e in manifest[name]["entries"]:
                    moves[e[0]] = f"{staged}/{e[0]}"
            bad: set[str] = set()
            if not ctx.ws.sync_dir(merged[name], rel, ctx.store, ctx.hasher, moves, bad):
                # a file that could not be made, and every other naming its object (found
                # corrupt, it may be put back by whoever changed it): their items run again
                objs = {e[1] for e in merged[name]["entries"] if e[0] in bad}
                self.unusable.update(
                    item_rel
                    for item_rel, entry in self.cached.items()
                    for e in entry["outputs"][name].get("entries", ())
                    if e[0] in bad or e[1] in objs
                )
                raise LostObjects(f"could not assemble {rel}: a store object is missing or corrupt")
        if kept:  # the stage's record will send the next build to this entry for them
            ctx.store.put_action(key, entry)
        ctx.later(bookkeeping, stage.id)
        remove_path(self.staging)
        return entry

    def _staged_whole(self, ctx: BuildContext, name: str, manifest: dict[str, Any]) -> Path | None:
        """The staged tree of output ``name`` when it is exactly ``manifest``: every item of
        the stage ran in this build (none cached), on the first attempt, staged each file it
        wrote under the output's own tree (plain top-level files), and nothing else is there
        (an attempt that died with its worker may have staged files of its own); else
        None."""
        if self.cached or self.retried or not self.done_items:
            return None
        whole = self.staging / "done" / name
        prefix = f"{os.path.relpath(whole, ctx.root)}/"
        done = os.path.relpath(self.staging / "done", ctx.root)
        for item_rel, manifests in self.done_items.items():
            staged = self.new[item_rel].get("staged")
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


def _sig(path: str) -> tuple[int, ...] | None:
    """What a stat says of an item's file: changed content changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

"""What runs inside a worker for one task: call the rule, check and hash what it wrote, put
the objects into the store, and report back. It decides nothing about whether to run.

The same function serves every executor (local worker processes, the inline test double,
remote workers), so a task behaves the same wherever it runs. A task of a ``spawns_only``
rule may also run in a thread of the build process (given a :class:`Spawner`): then nothing
process-wide changes (working directory, environment, ``sys.path``), its subprocesses get
the project root and the task's environment from the spawner, and its metrics count this
thread and those subprocesses only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import resource
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from ..errors import DiskFull, os_failure
from ..hashing import digest
from ..rule import Context, Item, Rule, RuleError, get_rule, project_on_path
from ..store import Store
from ..trust import json_problem, parse_json
from ..walk import BadPath
from ..workspace import unlock_tree
from .base import Task
from .outputs import abs_path, check_values, flat_outputs, hash_outputs, prepare_outputs
from .spawn import Spawner, TaskStopped

__all__ = ["execute", "item_sink", "user_traceback", "watch"]

Send = Callable[[str, Any], None]
_setup_cache: dict[tuple[str, str], Any] = {}
_setup_lock = threading.Lock()

_spawner: ContextVar[Spawner | None] = ContextVar("pipemake_spawner", default=None)

#: where what a task's own code prints goes (its stage's log), in the thread running it
_printed: ContextVar[_Lines | None] = ContextVar("pipemake_printed", default=None)

#: what hears of each item of a foreach task as soon as it is finished (its relpath and
#: result, as the task's answer will hold it): the dask worker notes them on the shared
#: filesystem, so a batch whose answer never reaches the build keeps its finished items
item_sink: ContextVar[Callable[[str, dict[str, Any]], None] | None] = ContextVar(
    "pipemake_item_sink", default=None
)


class _Lines:
    """What a task's code prints (``print``, ``sys.stderr``, warnings), as lines of its
    stage's log: in the run log, ``logs/STAGE.log`` and the output as ``STAGE| …``, as a
    shell stage's output is."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger, self.part, self.busy = logger, "", False

    def write(self, text: str) -> int:
        if self.busy:  # logging's own complaint about a failing handler: not into the log
            return sys.__stderr__.write(text) if sys.__stderr__ is not None else len(text)
        self.busy = True
        try:
            lines = (self.part + str(text)).split("\n")
            self.part = lines.pop()
            for line in lines:
                self.logger.info(line.rstrip("\r"))
        finally:
            self.busy = False
        return len(text)

    def flush(self) -> None:
        """Lines are logged as they end; a last line without its newline at the task's end."""

    def close(self) -> None:
        """Log what is left of a last line without a newline."""
        if self.part:
            self.logger.info(self.part)
            self.part = ""


class _Printed:
    """``sys.stdout``/``sys.stderr`` of a process running tasks: writes from a thread running
    a task go to that task's :class:`_Lines`, all others to the stream it replaced."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def write(self, text: str) -> int:
        lines = _printed.get()
        return (lines if lines is not None else self.real).write(text)

    def flush(self) -> None:
        lines = _printed.get()
        (lines if lines is not None else self.real).flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding… of the real one
        return getattr(self.real, name)


def _end_prints(token: Any) -> None:
    """Stop sending prints to the task's log (``token`` from setting :data:`_printed`),
    logging a last line that had no newline; None, for the caller to keep."""
    if token is not None:
        lines = _printed.get()
        _printed.reset(token)
        if lines is not None:
            lines.close()
    return None


def _capture_prints() -> None:
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _Printed):
            setattr(sys, name, _Printed(stream))


#: pipemake's engine: its frames come before the user's in every traceback, and say nothing
_ENGINE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


class _Forward(logging.Handler):
    def __init__(self, send: Send, log_file: Any):
        super().__init__()
        self.send = send
        self.log_file = log_file

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if self.log_file is not None:
            try:
                self.log_file.write(text + "\n")
                self.log_file.flush()
            except OSError as exc:  # the log is a copy: the lines still reach the build
                self.close_log()
                self.send("log", ["warning", f"the stage's log file stops here: {exc}"])
        self.send("log", [record.levelname.lower(), text])

    def write_failure(self, text: str) -> None:
        """Add a failure (its message and traceback) to the stage's log file: the log holds
        what the stage said, and how it ended."""
        if self.log_file is not None:
            try:
                self.log_file.write(text.rstrip("\n") + "\n")
                self.log_file.flush()
            except OSError:
                self.close_log()

    def close_log(self) -> None:
        """Close the log file; what it could not write is lost from it, not from the build."""
        log_file, self.log_file = self.log_file, None
        if log_file is not None:
            with contextlib.suppress(OSError):
                log_file.close()


def execute(task: Task, send: Send, spawner: Spawner | None = None) -> None:
    """Run ``task`` and report exactly one ``result`` or ``error`` message via ``send``.

    With ``spawner``, in a thread of the build process (see the module's docstring)."""
    started = time.monotonic()
    threaded = spawner is not None
    usage0 = time.thread_time() if threaded else _cpu()
    old_env = {} if threaded else {k: os.environ.get(k) for k in task.env}
    if not threaded:
        os.environ.update(task.env)
    spawner = spawner or Spawner()
    if task.done:  # a foreach task: its shell's FIFO goes with the stage's staging
        spawner.tmp = os.path.join(task.root, os.path.dirname(task.done))
    token = _spawner.set(spawner)
    log_file = None
    if task.log_path:
        try:
            log_file = open(task.log_path, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:  # the log is a copy of what the build is told
            send("log", ["warning", f"the stage's log file cannot be written: {exc}"])
    logger = logging.getLogger(f"pipemake.task.{task.id}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = _Forward(send, log_file)
    logger.addHandler(handler)
    cwd = None if threaded else os.getcwd()
    rule: Rule | None = None
    printed = None
    if not threaded:  # a thread of the build prints nothing of a task's code
        _capture_prints()
        printed = _printed.set(_Lines(logger))
    try:
        if cwd is not None:
            os.chdir(task.root)  # rules run in the project root, as DESIGN.md says for shell
            project_on_path(task.root)
        rule = get_rule(task.rule)
        if rule is None:
            raise RuleError(f"rule {task.rule!r} is not installed in this worker")
        store = Store(Path(task.store), link=task.link, fsync=task.fsync)
        try:
            payload = _MODES[task.mode](task, rule, store, send, logger)
        finally:  # its last printed line before its result or error
            printed = _end_prints(printed)
        spawner.end_shell()  # before its use is counted
        payload["metrics"] = {
            "duration": time.monotonic() - started,
            "cpu": (time.thread_time() + spawner.cpu if threaded else _cpu()) - usage0,
            "peak_rss_mb": spawner.peak_rss_mb if threaded else _peak_rss_mb(),
        }
        send("result", payload)
    except (RuleError, BadPath) as exc:
        handler.write_failure(f"FAILED: {exc}")
        send("error", [str(exc), None])
    except Exception as exc:  # a bug in a rule: show where
        failure = _machine_failure(exc, task)
        if failure is not None:
            handler.write_failure(f"FAILED: {failure}")
            send("error", [failure, None])
        else:
            tb = user_traceback(exc, rule)
            handler.write_failure(f"FAILED: {type(exc).__name__}: {exc}\n{tb}")
            send("error", [f"{type(exc).__name__}: {exc}", tb])
    finally:
        _end_prints(printed)
        spawner.end_shell()
        _spawner.reset(token)
        if cwd is not None:
            os.chdir(cwd)
        logger.removeHandler(handler)
        handler.close_log()
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def user_traceback(exc: BaseException, rule: Rule | None = None) -> str:
    """``exc``'s traceback from where the user's code begins: pipemake's own frames before
    the first frame of the user's function (or of a third-party rule) are left out, so the
    lines that matter come first. A built-in rule's bug keeps the rule's frames. Chained
    exceptions (``raise … from …``, an error while handling another) are trimmed alike."""
    wrappers = [_ENGINE]
    module = sys.modules.get(type(rule).__module__) if rule is not None else None
    if module is not None and module.__name__.startswith("pipemake.rules."):
        wrappers.append(os.path.dirname(os.path.abspath(module.__file__ or "")) + os.sep)
    ours, engine = tuple(wrappers), (_ENGINE,)
    top = traceback.TracebackException.from_exception(exc)
    seen: set[int] = set()
    todo = [top]
    while todo:
        part = todo.pop()
        if id(part) in seen:
            continue
        seen.add(id(part))
        frames = list(part.stack)
        first = next((i for i, f in enumerate(frames) if not f.filename.startswith(ours)), None)
        if first is None:  # no user frame: a built-in rule's own bug shows the rule's frames
            first = next((i for i, f in enumerate(frames) if not f.filename.startswith(engine)), 0)
        part.stack = traceback.StackSummary.from_list(frames[first:])
        todo.extend(p for p in (part.__cause__, part.__context__) if p is not None)
    return "".join(top.format())


def _log_item_failure(logger: logging.Logger, rel: str, text: str, tb: str | None) -> None:
    """A failed item's error and traceback, into the stage's log file (not the build's
    output: the build says it once the stage has settled)."""
    for handler in logger.handlers:
        if isinstance(handler, _Forward):
            handler.write_failure(f"item {rel} FAILED: {text}" + (f"\n{tb}" if tb else ""))


def _machine_failure(exc: BaseException, task: Task) -> str | None:
    """What to say, without a traceback, when a task ends for want of space, or of a
    permission on pipemake's own files, rather than by a bug: the error, and where."""
    if not isinstance(exc, OSError):
        return None
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return str(DiskFull(exc.filename or _fullest(task)))
    name = os.fsdecode(exc.filename) if isinstance(exc.filename, str | bytes) else ""
    ours = (task.store, os.path.join(task.root, ".pipemake"))
    failure = os_failure(exc) if name.startswith(ours) else None
    return str(failure) if failure is not None else None


def _fullest(task: Task) -> str:
    """Of the project and the store, the one on the device with the least room left."""

    def free(path: str) -> int:
        try:
            return shutil.disk_usage(path).free
        except OSError:
            return 1 << 62

    return min((task.root, task.store), key=free)


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_rss_mb() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(me, kids) / 1024.0


def _context(
    task: Task,
    send: Send,
    logger: logging.Logger,
    outputs: dict[str, str],
    inputs: dict[str, Any] | None = None,
    item: Item | None = None,
) -> Context:
    return Context(
        Path(task.root),
        {k: abs_path(task.root, v) for k, v in (inputs or task.inputs).items()},
        {k: abs_path(task.root, v) for k, v in outputs.items()},
        task.params, stage=task.stage, log=logger, resources=task.resources,
        gpu_ids=task.gpu_ids, item=item, spawn=_spawner.get(), progress=_progress(send),
    )  # fmt: skip


def _run(task: Task, rule: Rule, store: Store, send: Send, logger: logging.Logger) -> dict:
    prepare_outputs(task, task.outputs)
    values = check_values(rule.run(_context(task, send, logger, task.outputs)))
    return {"outputs": hash_outputs(task, task.outputs, store), "values": values}


def _state(task: Task, rule: Rule, ctx: Context) -> Any:
    if not task.params_digest:
        task.params_digest = digest(task.params)
    key = (task.rule, task.params_digest)
    with _setup_lock:
        if key not in _setup_cache:
            _setup_cache.clear()  # one model per worker: drop the last parameter set's
            _setup_cache[key] = rule.setup(ctx)
        return _setup_cache[key]


def _empty(path: str) -> None:
    """Make ``path`` an empty directory (what an item left there is gone, folders it made
    read-only too: a work folder is pipemake's own, see :func:`unlock_tree`)."""
    if not os.path.isdir(path) or os.path.islink(path):
        if os.path.lexists(path):
            os.unlink(path)  # a file or a link an item left in its place
        os.makedirs(path, exist_ok=True)
        return
    try:
        _clear(path)
    except PermissionError:
        unlock_tree(path)
        try:
            _clear(path)
        except OSError as exc:
            raise RuleError(_unmovable("empty the work folder", exc)) from None


def _clear(path: str) -> None:
    with os.scandir(path) as it:
        for de in it:
            if de.is_dir(follow_symlinks=False):
                shutil.rmtree(de.path)
            else:
                os.unlink(de.path)


#: the most seconds a foreach task's ended items wait to be reported (the build restarts
#: the running item's ``timeout`` at each report: a report per item would cost more than
#: a short item itself)
REPORT_EVERY = 0.02

#: in a worker process: the shared number where it says which item of its task starts (the
#: local executor reads it when the worker dies; see :func:`watch`)
_running_item: Any = None


def watch(number: Any) -> None:
    """Say in ``number`` (a shared ``ctypes`` value the local executor gives each worker
    process) the index of the item each foreach task of this process starts."""
    global _running_item
    _running_item = number


class _Reports:
    """A foreach task's item results, reported to the build as ``items`` messages while
    the task runs: before an item (or a rule's batch) starts, those that ended are sent
    once :data:`REPORT_EVERY` seconds have passed since the last report. The build keeps
    them if the task then dies or times out; the item that was running is said by
    :func:`watch`'s number (a worker process) or is the first not reported (a thread,
    which reports all that ended as it stops)."""

    def __init__(self, send: Send):
        self.send = send
        self.pending: dict[str, Any] = {}
        self.last = time.monotonic()

    def starting(self, index: int) -> None:
        """Item ``index`` of the task (or a batch from it) starts."""
        if self.pending and time.monotonic() - self.last >= REPORT_EVERY:
            self.flush()
        if _running_item is not None:
            _running_item.value = index

    def add(self, results: dict[str, Any]) -> None:
        """Items that ended (also told to the :data:`item_sink`, if any)."""
        self.pending.update(results)
        sink = item_sink.get()
        if sink is not None:
            for rel, result in results.items():
                sink(rel, result)

    def flush(self) -> None:
        """Report the items that ended now."""
        if self.pending:
            self.send("items", self.pending)
            self.pending = {}
        self.last = time.monotonic()

    def __enter__(self) -> _Reports:
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        """A task stopped or failed: what ended before is reported (it is the build's)."""
        if kind is not None:
            self.flush()


def _items(task: Task, rule: Rule, store: Store, send: Send, logger: logging.Logger) -> dict:
    """Run foreach items one by one; each succeeds or fails on its own.

    All items of a task write into the same work directories, emptied before each item;
    what an item wrote is hashed, stored, and moved into ``done`` (renames, no directory
    per item: creating and removing directories is the slow part on many disks). An item
    that wrote only plain files into its work directories (the usual case) takes the short
    way: each file read once, hashed and stored from that read, given the manifest's mode,
    moved to ``done/OUTPUT/NAME`` (the stage's tasks share ``done``, so a stage whose items
    all ran is one finished tree), and the work directories known empty again, with no walk
    to empty them. Anything else is moved to a name of its own under ``done/.items``.

    The items that ended are reported while the task runs (see :class:`_Reports`), so what
    finished is the build's even when a later item kills the worker or runs past the
    stage's ``timeout``; the final result holds the rest.
    """
    if rule.batch_size > 1:
        return _item_batches(task, rule, store, send, logger)
    root = task.root
    work = {name: os.path.join(root, path) for name, path in task.outputs.items()}
    # shared by every task of the stage: plain output files land under their output's name
    # as the output directory will hold them, so a stage run whole is placed by one rename
    done = os.path.join(root, task.done)
    for name in work:
        os.makedirs(f"{done}/{name}", exist_ok=True)
    done_rel = os.path.relpath(done, root)
    # what every item's context shares, built once: only the item's own input changes
    root_path = Path(root)
    out_paths = {name: Path(path) for name, path in work.items()}
    base_inputs = {k: abs_path(root, v) for k, v in task.inputs.items()}
    progress = _progress(send)
    spawn = _spawner.get()
    dirty = True  # whether the work directories may hold anything
    total = len(task.items)
    with _Reports(send) as reports:
        for n, it in enumerate(task.items):
            reports.starting(n)
            if dirty:
                for path in work.values():
                    _empty(path)
            dirty = True
            item = Item(it["path"], it["relpath"], it["hash"])
            inputs = dict(base_inputs)
            inputs[task.foreach] = abs_path(root, it["path"])
            ctx = Context(
                root_path, inputs, out_paths, task.params, stage=task.stage, log=logger,
                resources=task.resources, gpu_ids=task.gpu_ids, item=item, spawn=spawn,
                progress=progress,
            )  # fmt: skip
            ctx.state = _state(task, rule, ctx)
            try:
                values = check_values(rule.run_item(ctx, item))
                flat = flat_outputs(work, store)
                if flat is None:  # anything but plain files: the general way
                    manifests = hash_outputs(task, task.outputs, store)
                else:
                    manifests = flat
                # where the files went (items.staged_files reads it): plain top-level files to
                # the output's own tree, said by one string; anything nested to a name of its own
                staged: str | dict[str, dict[str, str]] = done_rel
                if flat is not None:
                    for name, manifest in manifests.items():
                        for entry in manifest["entries"]:
                            _move_out(work[name], entry[0], f"{done}/{name}/{entry[0]}")
                else:
                    staged = {}
                    os.makedirs(f"{done}/.items", exist_ok=True)
                    for name, manifest in manifests.items():
                        moved = staged.setdefault(name, {})
                        real = os.path.realpath(work[name])
                        for k, entry in enumerate(manifest["entries"]):
                            sub = os.path.dirname(entry[0])
                            if sub and os.path.realpath(f"{work[name]}/{sub}") != f"{real}/{sub}":
                                continue  # reached through a symlink: never moved; the store's copy
                            to = f".items/{task.id}-{n}-{name}-{k}"
                            _move_out(work[name], entry[0], f"{done}/{to}")
                            moved[entry[0]] = f"{done_rel}/{to}"
                result: dict[str, Any] = {"outputs": manifests, "values": values, "staged": staged}
                dirty = flat is None
            except (RuleError, BadPath) as exc:
                result = {"error": str(exc)}
                _log_item_failure(logger, it["relpath"], str(exc), None)
            except Exception as exc:
                tb = user_traceback(exc, rule)
                result = {"error": f"{type(exc).__name__}: {exc}", "tb": tb}
                _log_item_failure(logger, it["relpath"], result["error"], tb)
            if "error" in result and getattr(spawn, "stopped", None) is not None:
                # its command was ended by a stop or the stage's timeout: not its own failure,
                # and not answered, so the build names it as the item that was running
                raise TaskStopped(spawn.stopped)  # type: ignore[union-attr]
            reports.add({it["relpath"]: result})
            if n % 16 == 15 or n == total - 1:
                send("progress", [n + 1, total])
    return {"items": reports.pending}


def _move_out(top: str, relpath: str, to: str) -> None:
    """Rename the file ``relpath`` an item wrote in its work folder ``top`` to ``to``; a
    folder the item made read-only (``chmod 555 {outputs.o}/sub``, as Snakemake's
    ``protected()`` does) is made writable by its owner first: the work folder is
    pipemake's own (see :func:`unlock_tree`; no link followed, nothing outside ``top``)."""
    try:
        os.rename(f"{top}/{relpath}", to)
    except PermissionError:
        unlock_tree(top)
        try:
            os.rename(f"{top}/{relpath}", to)
        except OSError as exc:
            raise RuleError(_unmovable(f"take {relpath} from the work folder", exc)) from None


def _unmovable(what: str, exc: OSError) -> str:
    """Why pipemake could not ``what`` with what an item wrote (``exc``), and what to do."""
    return (
        f"pipemake cannot {what} ({exc.strerror}: {exc.filename}) even after making its "
        "folders writable: the item left a file this user may not move or remove (made "
        "immutable, or another user's): leave outputs removable by the user running pipemake"
    )


def _progress(send: Send) -> Callable[..., None]:
    def progress(done: int, total: int | None = None) -> None:
        send("progress", [done, total])

    return progress


def _item_batches(task: Task, rule: Rule, store: Store, send: Send, logger: logging.Logger) -> dict:
    """Items in batches of ``rule.batch_size`` (GPU rules), each item in its own directory;
    each batch's results are reported as :func:`_items` reports an item's."""
    results: dict[str, Any] = {}
    batch = rule.batch_size
    with _Reports(send) as reports:
        for start in range(0, len(task.items), batch):
            reports.starting(start)
            chunk = task.items[start : start + batch]
            for it in chunk:
                prepare_outputs(task, it["outputs"], all_dirs=True)
            items = [Item(i["path"], i["relpath"], i["hash"]) for i in chunk]
            ctxs = []
            for i, it in zip(chunk, items, strict=True):
                inputs = {**task.inputs, task.foreach: i["path"]}
                ctxs.append(_context(task, send, logger, i["outputs"], inputs, it))
            ctx = ctxs[0]
            ctx.state = _state(task, rule, ctx)
            try:
                if type(rule).run_batch is Rule.run_batch:  # item by item, each in its own context
                    values_list: list[Any] = []
                    for c, it in zip(ctxs, items, strict=True):
                        c.state = ctx.state
                        values_list.append(rule.run_item(c, it))
                else:
                    ctx.batch_outputs = [c.outputs for c in ctxs]
                    values_list = rule.run_batch(ctx, items)
                for it, values in zip(chunk, values_list, strict=True):
                    results[it["relpath"]] = {
                        "outputs": hash_outputs(task, it["outputs"], store),
                        "values": check_values(values),
                    }
            except (RuleError, BadPath) as exc:  # BadPath: an output link that leads nowhere
                for it in chunk:
                    results.setdefault(it["relpath"], {"error": str(exc)})
                _log_item_failure(logger, chunk[0]["relpath"], str(exc), None)
            except Exception as exc:
                tb = user_traceback(exc, rule)
                for it in chunk:
                    results.setdefault(
                        it["relpath"], {"error": f"{type(exc).__name__}: {exc}", "tb": tb}
                    )
                _log_item_failure(logger, chunk[0]["relpath"], f"{type(exc).__name__}: {exc}", tb)
            reports.add(results)
            results = {}
            send("progress", [start + len(chunk), len(task.items)])
    return {"items": reports.pending}


def _map(task: Task, rule: Rule, store: Store, send: Send, logger: logging.Logger) -> dict:
    """Map a batch of items (``map_batch_size`` at a time); each result becomes an object,
    reported as :func:`_items` reports an item's."""
    size = max(1, rule.map_batch_size)
    with _Reports(send) as reports:
        for start in range(0, len(task.items), size):
            reports.starting(start)
            chunk = task.items[start : start + size]
            reports.add(_map_chunk(task, rule, store, send, logger, chunk))
            send("progress", [start + len(chunk), len(task.items)])
    return {"items": reports.pending}


def _map_chunk(
    task: Task, rule: Rule, store: Store, send: Send, logger: logging.Logger, chunk: list
) -> dict[str, Any]:
    """One ``map_batch`` call's results by item. A batch that fails is mapped again item by
    item, so one bad item (an unreadable image) fails alone, as itself, and the others
    keep their results."""
    items = [Item(it["path"], it["relpath"], it["hash"]) for it in chunk]
    inputs = dict(task.inputs, **{task.foreach: chunk[0]["path"]})
    ctx = _context(task, send, logger, {}, inputs, items[0])
    ctx.state = _state(task, rule, ctx)
    results: dict[str, Any] = {}
    try:
        batched = rule.map_batch_size > 1
        values = rule.map_batch(ctx, items) if batched else [rule.map_item(ctx, items[0])]
        for it, value in zip(chunk, values, strict=True):
            kind = "bytes" if isinstance(value, bytes) else "json"
            data = value if isinstance(value, bytes) else json.dumps(value).encode()
            results[it["relpath"]] = {"hash": store.put_bytes(data), "kind": kind}
    except Exception as exc:
        if len(chunk) > 1:
            for it in chunk:
                results.update(_map_chunk(task, rule, store, send, logger, [it]))
            return results
        if isinstance(exc, RuleError):
            results[chunk[0]["relpath"]] = {"error": str(exc)}
            _log_item_failure(logger, chunk[0]["relpath"], str(exc), None)
        else:
            tb = user_traceback(exc, rule)
            text = f"{type(exc).__name__}: {exc}"
            results[chunk[0]["relpath"]] = {"error": text, "tb": tb}
            _log_item_failure(logger, chunk[0]["relpath"], text, tb)
    return results


def _reduce(task: Task, rule: Rule, store: Store, send: Send, logger: logging.Logger) -> dict:
    mapped: dict[str, Any] = {}
    for rel, (h, kind) in task.mapped.items():
        data = store.read_bytes(h)
        if data is None:
            raise RuleError(
                f"the cached map result of item {rel} is missing or corrupt; build again"
            )
        mapped[rel] = data if kind == "bytes" else _map_json(task, rel, data)
    prepare_outputs(task, task.outputs)
    values = check_values(rule.reduce(_context(task, send, logger, task.outputs), mapped))
    return {"outputs": hash_outputs(task, task.outputs, store), "values": values}


def _map_json(task: Task, rel: str, data: bytes) -> Any:
    """A cached JSON map result, read as untrusted input (a shared store may hold anything
    under the item's entry): data nested too deep or holding text that is not Unicode is a
    clear stage error, never a RecursionError."""
    value, why = parse_json(data)
    why = why or json_problem(value)
    if why is not None:
        raise RuleError(
            f"the cached map result of item {rel} is damaged ({why}); this stage's map "
            f"step never writes that, so the store was written by someone else: run "
            f"`pipemake build --force-stage {task.stage}` to map every item again"
        )
    return value


_MODES: dict[str, Callable[..., dict]] = {
    "run": _run, "items": _items, "map": _map, "reduce": _reduce,
}  # fmt: skip

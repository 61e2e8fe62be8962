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
import secrets
import select
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from .errors import DiskFull, os_failure
from .executors.base import Task
from .fshash import Hasher, check_names
from .hashing import digest, hash_bytes, tree_hash
from .rule import Context, Item, Rule, RuleError, exports, get_rule, project_on_path
from .store import Store
from .walk import BadPath
from .workspace import manifest_of

__all__ = ["Spawner", "execute"]

Send = Callable[[str, Any], None]
_setup_cache: dict[tuple[str, str], Any] = {}
_setup_lock = threading.Lock()


class Spawner:
    """Starts a task's subprocesses (what ``Context.popen`` calls) and adds up what they
    used. ``cwd`` and ``env`` are what each gets (None: this process's own); the local
    executor's threads use a subclass that also ends them with the task."""

    def __init__(self, cwd: str | None = None, env: dict[str, str] | None = None):
        self.cwd = cwd
        self.env = env
        self._shell: _Shell | None = None
        self._sh_lock = threading.Lock()
        #: where the task's shell makes its FIFO (None: the system's temporary directory)
        self.tmp: str | None = None
        #: the last environment a shell command asked for, and its ``export`` (usually the
        #: same for all the items of a task)
        self._exported: tuple[tuple[tuple[str, str], ...], str | None] = ((), "")
        #: CPU seconds and peak memory of the subprocesses reaped so far
        self.cpu = 0.0
        self.peak_rss_mb = 0.0

    def __call__(
        self, args: Sequence[str], env: Mapping[str, str] | None, kwargs: dict[str, Any]
    ) -> subprocess.Popen[Any]:
        full = self.env
        if env:
            full = self.merged(env)
        if self.cwd is not None:
            kwargs["cwd"] = os.path.join(self.cwd, kwargs["cwd"]) if kwargs.get("cwd") else self.cwd
        return self.start(args, full, kwargs)

    def sh(
        self, cmd: str, env: Mapping[str, str] | None, output: Callable[[str], None] | None
    ) -> int | None:
        """What ``Context.sh`` calls: ``cmd`` run in the task's shell, started on first use.
        None (nothing run: the caller starts a shell of its own) when a name in ``env`` is
        not one the shell can export, another thread of the task is using the shell, or no
        FIFO can be made."""
        key = tuple(env.items()) if env else ()
        if key != self._exported[0]:
            self._exported = (key, exports(env))
        if self._exported[1] is None:
            return None
        if not self._sh_lock.acquire(blocking=False):
            return None  # another thread of the task is using its shell: a process of its own
        try:
            for _ in range(2):  # a shell found gone before the command started: a new one
                shell = self._shell
                if shell is None or shell.ended:
                    shell = self._shell = self._new_shell()
                    if shell is None:
                        return None
                code = shell.run(cmd, self._exported[1], output)
                if code is not None:
                    return code
            return None
        finally:
            self._sh_lock.release()

    def _new_shell(self) -> _Shell | None:
        """A shell for the task's commands, its FIFO in ``tmp`` (the stage's staging
        directory: gone with the stage, or with the next build if this one is killed) or
        else in the system's temporary directory; None where no FIFO can be made."""
        for where in dict.fromkeys([self.tmp, None]):
            kwargs: dict[str, Any] = {"cwd": self.cwd} if self.cwd is not None else {}
            try:
                return _Shell(self, kwargs, where)
            except OSError:  # no FIFO there (a filesystem without them, read-only)
                continue
        return None

    def end_shell(self) -> None:
        """End the task's shell, if one was started (when the task's commands are done)."""
        if self._shell is not None:
            self._shell.end()
            self._shell = None

    def merged(self, env: Mapping[str, str]) -> Mapping[Any, Any]:
        """The environment of a subprocess started with ``env`` on top of the task's."""
        return dict(os.environ if self.env is None else self.env, **env)

    def start(
        self, args: Sequence[str], env: Mapping[Any, Any] | None, kwargs: dict[str, Any]
    ) -> subprocess.Popen[Any]:
        try:
            return _Proc(self, args, env=env, **kwargs)
        except OSError as exc:
            if exc.errno == errno.E2BIG:
                raise RuleError(_too_long(args, os.environ if env is None else env)) from None
            raise

    def reaped(self, usage: resource.struct_rusage) -> None:
        self.cpu += usage.ru_utime + usage.ru_stime
        self.peak_rss_mb = max(self.peak_rss_mb, usage.ru_maxrss / 1024.0)


class _Proc(subprocess.Popen):  # type: ignore[type-arg]
    """A Popen reaped with ``wait4``, so the spawner learns what the process used."""

    def __init__(self, spawner: Spawner, *args: Any, **kwargs: Any):
        self._spawner = spawner
        super().__init__(*args, **kwargs)

    def _try_wait(self, wait_flags: int) -> tuple[int, int]:  # as Popen's, plus the usage
        try:
            pid, sts, usage = os.wait4(self.pid, wait_flags)
        except ChildProcessError:
            return self.pid, 0
        if pid == self.pid:
            self._spawner.reaped(usage)
        return pid, sts


class _Shell:
    """One ``/bin/sh`` that runs a task's commands one after another, so that a foreach task
    starts one shell, not one per item.

    The shell reads its script from a pipe. Each command is one line: ``(export ...; eval
    CMD) </dev/null >FIFO 2>&1`` (a subshell: nothing it sets reaches the next command),
    then a ``printf`` of a token no output holds by chance and the exit status, on the
    shell's own stdout. The command's output goes to a FIFO the build reads to its end, as
    it read a ``sh -c``'s pipe: a background job that keeps it open holds the command until
    it is done, so it cannot write into the next command's outputs. The build holds a write
    end of the FIFO while a command runs (else its end would come before the command opens
    it) and lets go once the status came."""

    def __init__(self, spawner: Spawner, kwargs: dict[str, Any], tmp: str | None = None):
        self._dir = tempfile.mkdtemp(prefix="pipemake-sh-", dir=tmp)
        fifo = os.path.join(self._dir, "out")
        fds: list[int] = []
        try:
            os.mkfifo(fifo, 0o600)
            self._fifo = fifo
            self._out = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            fds.append(self._out)
            self._hold = self._holding()
            fds.append(self._hold)
            os.set_blocking(self._out, True)
            script_r, self._script = os.pipe()
            fds += [script_r, self._script]
            self._status, status_w = os.pipe()
            fds += [self._status, status_w]
            kwargs.update(stdin=script_r, stdout=status_w, stderr=status_w, close_fds=False)
            self.proc = spawner.start(["/bin/sh", "-s"], spawner.env, kwargs)
        except BaseException:
            for fd in fds:
                os.close(fd)
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        os.close(script_r)
        os.close(status_w)
        self._token = f"@@pipemake-{secrets.token_hex(8)}@@ ".encode()
        self._tail = (
            f" </dev/null >{shlex.quote(fifo)} 2>&1; printf '%s%d\\n' '{self._token.decode()}' $?\n"
        )
        self._poll = select.poll()
        self._poll.register(self._out, select.POLLIN)
        self._poll.register(self._status, select.POLLIN)
        self.busy = False
        self.ended = False

    def _holding(self) -> int:
        return os.open(self._fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def run(self, cmd: str, export: str, output: Callable[[str], None] | None) -> int | None:
        """Run ``cmd`` and return its exit status; None when the shell was found gone before
        it could start the command (it did not run)."""
        line = f"({export}eval {shlex.quote(cmd)}){self._tail}".encode()
        if self.proc.poll() is not None:  # it ended while idle (killed by someone)
            self.end()
            return None
        self.busy = True
        try:
            try:
                while line:
                    line = line[os.write(self._script, line) :]
            except BrokenPipeError:  # the shell ended while idle: the command never started
                self.end()
                return None
            lines = _Lines(output)
            status = b""
            token = self._token
            code: int | None = None
            while code is None:
                for fd, _ in self._poll.poll():
                    if fd == self._out:
                        lines.feed(os.read(fd, 1 << 16))
                        continue
                    chunk = os.read(fd, 4096)
                    if not chunk:  # the shell itself ended (killed, or a stop)
                        code = self._gone()
                        break
                    status += chunk
                    i = status.find(token)
                    j = status.find(b"\n", i) if i >= 0 else -1
                    if j >= 0:
                        lines.message(status[:i])  # the shell's own ("Killed")
                        code = int(status[i + len(token) : j])
                        break
            if self._hold >= 0:
                os.close(self._hold)  # what still holds the FIFO is the command's: wait
                self._hold = -1
            while chunk := os.read(self._out, 1 << 16):
                lines.feed(chunk)
            lines.finish()
            self.busy = False
            if self.proc.returncode is not None:
                self.end()  # it is gone: the next command gets a new one
            else:
                self._hold = self._holding()
            return code
        except BaseException:
            self.end()  # its output and status unread: no later command may take them
            raise

    def _gone(self) -> int:
        """The shell ended before the command's status came: its own exit status."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # what it left, where it leads a group
        except OSError:
            pass
        code = self.proc.wait()
        return code if code else 1

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self.busy and self.proc.returncode is None:  # given up in the middle of a command
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its group, where it leads one
            except OSError:
                with contextlib.suppress(OSError):
                    os.kill(self.proc.pid, signal.SIGKILL)
        for fd in (self._script, self._out, self._status, self._hold):  # no more script: it exits
            if fd >= 0:
                os.close(fd)
        self._hold = -1
        self.proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


class _Lines:
    """Splits a command's output into lines as it comes, the way a text-mode pipe reads
    them: ``\n``, ``\r\n`` and ``\r`` end a line; the last line may have no end."""

    def __init__(self, output: Callable[[str], None] | None):
        self.output = output
        self.buf = bytearray()

    def feed(self, chunk: bytes) -> None:
        if self.output is None:
            return
        buf = self.buf
        start = max(len(buf) - 1, 0)  # only the new bytes (and a held-back \r) can end lines
        buf += chunk
        end = len(buf) - 1 if buf.endswith(b"\r") else len(buf)  # maybe half of a \r\n
        k = max(buf.rfind(b"\n", start, end), buf.rfind(b"\r", start, end))
        if k >= 0:
            self._emit(bytes(buf[: k + 1]))
            del buf[: k + 1]

    def finish(self) -> None:
        if self.buf:
            self._emit(bytes(self.buf) + b"\n")
            self.buf.clear()

    def message(self, data: bytes) -> None:
        if data:
            self._emit(data if data.endswith(b"\n") else data + b"\n")

    def _emit(self, data: bytes) -> None:
        if self.output is None:
            return
        text = data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        lines.pop()  # after the last line's end
        for line in lines:
            self.output(line)


_spawner: ContextVar[Spawner | None] = ContextVar("pipemake_spawner", default=None)


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
    if "done" in task.extra:  # a foreach task: its shell's FIFO goes with the stage's staging
        spawner.tmp = os.path.join(task.root, os.path.dirname(task.extra["done"]))
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
    try:
        if cwd is not None:
            os.chdir(task.root)  # rules run in the project root, as DESIGN.md says for shell
            project_on_path(task.root)
        rule = get_rule(task.rule)
        if rule is None:
            raise RuleError(f"rule {task.rule!r} is not installed in this worker")
        store = Store(Path(task.store), link=task.link, fsync=task.fsync)
        payload = _MODES[task.mode](task, rule, store, send, logger)
        spawner.end_shell()  # before its use is counted
        payload["metrics"] = {
            "duration": time.monotonic() - started,
            "cpu": (time.thread_time() + spawner.cpu if threaded else _cpu()) - usage0,
            "peak_rss_mb": spawner.peak_rss_mb if threaded else _peak_rss_mb(),
        }
        send("result", payload)
    except (RuleError, BadPath) as exc:
        send("error", [str(exc), None])
    except Exception as exc:  # a bug in a rule: show where
        failure = _machine_failure(exc, task)
        if failure is not None:
            send("error", [failure, None])
        else:
            send("error", [f"{type(exc).__name__}: {exc}", traceback.format_exc()])
    finally:
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


def _too_long(args: Sequence[str] | str, env: Mapping[Any, Any]) -> str:
    """Why the system refused to start a command of this size (``E2BIG``), and what to do."""
    strings = [args] if isinstance(args, str | bytes) else list(args)
    strings += [f"{k}={v}" for k, v in env.items()]
    sizes = [len(os.fsencode(a)) + 1 for a in strings]
    one = 32 * os.sysconf("SC_PAGE_SIZE")  # Linux's MAX_ARG_STRLEN: one argument's limit
    if max(sizes) > one:
        what = f"{max(sizes) - 1:,} bytes; the limit is {one:,} for one argument"
    else:
        what = f"{sum(sizes):,} bytes with its environment; the limit is "
        what += f"{os.sysconf('SC_ARG_MAX'):,}"
    return f"command too long ({what}): put it in a script and run that"


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


def _abs(root: str, value: Any) -> Any:
    if isinstance(value, list):
        return [_abs(root, v) for v in value]
    return Path(value if os.path.isabs(value) else os.path.join(root, value))


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
        {k: _abs(task.root, v) for k, v in (inputs or task.inputs).items()},
        {k: _abs(task.root, v) for k, v in outputs.items()},
        task.params, stage=task.stage, log=logger, resources=task.resources,
        gpu_ids=task.gpu_ids, item=item, spawn=_spawner.get(), progress=_progress(send),
    )  # fmt: skip


def _prepare_outputs(task: Task, outputs: dict[str, str], all_dirs: bool = False) -> None:
    for name, path in outputs.items():
        full = _abs(task.root, path)
        if full.is_dir() and not full.is_symlink():
            shutil.rmtree(full)  # a clean slate for a retried attempt
        elif full.exists() or full.is_symlink():
            full.unlink()
        if all_dirs or task.output_kinds.get(name) == "dir":
            full.mkdir(parents=True, exist_ok=True)
        else:
            full.parent.mkdir(parents=True, exist_ok=True)


def _hash_outputs(task: Task, outputs: dict[str, str], store: Store) -> dict[str, Any]:
    hasher = Hasher(task.root)
    manifests = {}
    for name, path in outputs.items():
        info = hasher.info(path)
        if info.kind == "missing":
            raise RuleError(
                f"declared output {name!r} was not created (expected at {path}); write it "
                f"to {{outputs.{name}}} (a staging path), never to the output path itself"
            )
        want = task.output_kinds.get(name)
        if want in ("file", "dir") and info.kind != want:
            raise RuleError(f"output {name!r} should be a {want}, but a {info.kind} was written")
        full = _abs(task.root, path)
        if info.kind == "file":
            store.put_file(str(full), info.hash)
        else:
            for rel, h, _size, _mode in info.entries or []:
                store.put_file(str(full / rel), h)
        manifests[name] = manifest_of(info)
    return manifests


def _check_values(values: Any) -> dict[str, Any]:
    """The values a rule returned, as the JSON they are stored as (a tuple comes back a
    list): what this build passes on is exactly what a later build restores."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise RuleError(f"the rule returned {type(values).__name__}, not a mapping of values")
    try:
        text = json.dumps(values)
    except (TypeError, ValueError, RecursionError) as exc:
        raise RuleError(f"computed values must be JSON-serializable: {exc}") from None
    where = _non_string_key(values, "values")
    if where is not None:
        raise RuleError(
            f"computed values must be JSON data, whose mapping keys are strings: {where}; "
            "turn the keys into strings (str(key)) before returning them"
        )
    return json.loads(text)  # type: ignore[no-any-return]


def _non_string_key(value: Any, where: str) -> str | None:
    """Where the first mapping key that is not a string is (JSON would turn ``1`` into
    ``"1"``, and ``{1: …, "b": …}`` cannot even be stored with its keys sorted)."""
    stack = [(value, where)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    return f"{where} has the key {key!r} ({type(key).__name__})"
            stack.extend((sub, f"{where}[{key!r}]") for key, sub in reversed(value.items()))
        elif isinstance(value, list | tuple):
            stack.extend((sub, f"{where}[{n}]") for n, sub in reversed(list(enumerate(value))))
    return None


def _run(task: Task, rule: Rule, store: Store, send: Send, logger: logging.Logger) -> dict:
    _prepare_outputs(task, task.outputs)
    values = _check_values(rule.run(_context(task, send, logger, task.outputs)))
    return {"outputs": _hash_outputs(task, task.outputs, store), "values": values}


def _state(task: Task, rule: Rule, ctx: Context) -> Any:
    if "_params_digest" not in task.extra:
        task.extra["_params_digest"] = digest(task.params)
    key = (task.rule, task.extra["_params_digest"])
    with _setup_lock:
        if key not in _setup_cache:
            _setup_cache.clear()  # one model per worker: drop the last parameter set's
            _setup_cache[key] = rule.setup(ctx)
        return _setup_cache[key]


def _empty(path: str) -> None:
    """Make ``path`` an empty directory (what an item left there is gone)."""
    if not os.path.isdir(path) or os.path.islink(path):
        if os.path.lexists(path):
            os.unlink(path)  # a file or a link an item left in its place
        os.makedirs(path, exist_ok=True)
        return
    with os.scandir(path) as it:
        for de in it:
            if de.is_dir(follow_symlinks=False):
                shutil.rmtree(de.path)
            else:
                os.unlink(de.path)


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
    """
    if rule.batch_size > 1:
        return _item_batches(task, rule, store, send, logger)
    results: dict[str, Any] = {}
    root = task.root
    work = {name: os.path.join(root, path) for name, path in task.outputs.items()}
    # shared by every task of the stage: plain output files land under their output's name
    # as the output directory will hold them, so a stage run whole is placed by one rename
    done = os.path.join(root, task.extra["done"])
    for name in work:
        os.makedirs(f"{done}/{name}", exist_ok=True)
    done_rel = os.path.relpath(done, root)
    # what every item's context shares, built once: only the item's own input changes
    root_path = Path(root)
    out_paths = {name: Path(path) for name, path in work.items()}
    base_inputs = {k: _abs(root, v) for k, v in task.inputs.items()}
    progress = _progress(send)
    spawn = _spawner.get()
    dirty = True  # whether the work directories may hold anything
    total = len(task.items)
    for n, it in enumerate(task.items):
        if dirty:
            for path in work.values():
                _empty(path)
        dirty = True
        item = Item(it["path"], it["relpath"], it["hash"])
        inputs = dict(base_inputs)
        inputs[task.foreach] = _abs(root, it["path"])
        ctx = Context(
            root_path, inputs, out_paths, task.params, stage=task.stage, log=logger,
            resources=task.resources, gpu_ids=task.gpu_ids, item=item, spawn=spawn,
            progress=progress,
        )  # fmt: skip
        ctx.state = _state(task, rule, ctx)
        try:
            values = _check_values(rule.run_item(ctx, item))
            flat = _flat_outputs(work, store)
            if flat is None:  # anything but plain files: the general way
                manifests = _hash_outputs(task, task.outputs, store)
            else:
                manifests = flat
            # where the files went (items.staged_files reads it): plain top-level files to
            # the output's own tree, said by one string; anything nested to a name of its own
            staged: str | dict[str, dict[str, str]] = done_rel
            if flat is not None:
                for name, manifest in manifests.items():
                    for entry in manifest["entries"]:
                        os.rename(f"{work[name]}/{entry[0]}", f"{done}/{name}/{entry[0]}")
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
                        os.rename(f"{work[name]}/{entry[0]}", f"{done}/{to}")
                        moved[entry[0]] = f"{done_rel}/{to}"
            results[it["relpath"]] = {"outputs": manifests, "values": values, "staged": staged}
            dirty = flat is None
        except (RuleError, BadPath) as exc:
            results[it["relpath"]] = {"error": str(exc)}
        except Exception as exc:
            tb = traceback.format_exc()
            results[it["relpath"]] = {"error": f"{type(exc).__name__}: {exc}", "tb": tb}
        if n % 16 == 15 or n == total - 1:
            send("progress", [n + 1, total])
    return {"items": results}


#: files up to this size are read whole, hashed and stored from that one read
_READ_WHOLE = 1 << 20


def _flat_outputs(work: dict[str, str], store: Store) -> dict[str, Any] | None:
    """The manifests of work directories that hold plain files only (no subdirectory, link
    or other kind of file), each file read once: hashed, and stored from those bytes. None
    when any directory holds anything else or a big file (the general way, through the
    hasher, then applies: it walks, follows links, and streams big files). The manifest is
    the one :meth:`pipemake.fshash.Hasher.tree_info` gives for the same directory."""
    manifests: dict[str, Any] = {}
    for name, path in work.items():
        try:
            with os.scandir(path) as it:
                names = []
                for de in it:
                    if not de.is_file(follow_symlinks=False):
                        return None
                    names.append(de.name)
        except OSError:  # missing, or not a directory: the general way says what is wrong
            return None
        names.sort()
        check_names(names, f"{{outputs.{name}}}")
        entries = []
        for fname in names:
            full = f"{path}/{fname}"
            got = _read_whole(full)
            if got is None:
                return None
            data, st = got
            h = hash_bytes(data)
            mode = 0o755 if st.st_mode & 0o111 else 0o644
            linked = store.put_read(full, h, data, st)
            if not linked and st.st_nlink == 1 and stat.S_IMODE(st.st_mode) != mode:
                os.chmod(
                    full, mode
                )  # lands with the mode the manifest says (a link is the object's)
            entries.append([fname, h, len(data), mode])
        manifests[name] = {"kind": "dir", "hash": tree_hash(entries), "entries": entries}
    return manifests


def _read_whole(path: str) -> tuple[bytes, os.stat_result] | None:
    """A small regular file's bytes and the stat of the open file; None for anything else
    (a big file, a file replaced by another kind since it was listed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _READ_WHOLE:
            return None
        data = os.read(fd, st.st_size + 1)
        if len(data) == st.st_size + 1:
            return None  # it grew while read: stream it the general way
        while len(data) < st.st_size:  # a short read before the end (rare): read on
            more = os.read(fd, st.st_size + 1 - len(data))
            if not more:
                break
            data += more
        return data, st
    finally:
        os.close(fd)


def _progress(send: Send) -> Callable[..., None]:
    def progress(done: int, total: int | None = None) -> None:
        send("progress", [done, total])

    return progress


def _item_batches(task: Task, rule: Rule, store: Store, send: Send, logger: logging.Logger) -> dict:
    """Items in batches of ``rule.batch_size`` (GPU rules), each item in its own directory."""
    results: dict[str, Any] = {}
    batch = rule.batch_size
    for start in range(0, len(task.items), batch):
        chunk = task.items[start : start + batch]
        for it in chunk:
            _prepare_outputs(task, it["outputs"], all_dirs=True)
        items = [Item(i["path"], i["relpath"], i["hash"]) for i in chunk]
        ctxs = [
            _context(task, send, logger, i["outputs"], {**task.inputs, task.foreach: i["path"]}, it)
            for i, it in zip(chunk, items, strict=True)
        ]
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
                    "outputs": _hash_outputs(task, it["outputs"], store),
                    "values": _check_values(values),
                }
        except RuleError as exc:
            for it in chunk:
                results.setdefault(it["relpath"], {"error": str(exc)})
        except Exception as exc:
            tb = traceback.format_exc()
            for it in chunk:
                results.setdefault(
                    it["relpath"], {"error": f"{type(exc).__name__}: {exc}", "tb": tb}
                )
        send("progress", [start + len(chunk), len(task.items)])
    return {"items": results}


def _map(task: Task, rule: Rule, store: Store, send: Send, logger: logging.Logger) -> dict:
    """Map a batch of items (``map_batch_size`` at a time); each result becomes an object."""
    results: dict[str, Any] = {}
    size = max(1, rule.map_batch_size)
    for start in range(0, len(task.items), size):
        chunk = task.items[start : start + size]
        items = [Item(it["path"], it["relpath"], it["hash"]) for it in chunk]
        inputs = dict(task.inputs, **{task.foreach: chunk[0]["path"]})
        ctx = _context(task, send, logger, {}, inputs, items[0])
        ctx.state = _state(task, rule, ctx)
        try:
            values = rule.map_batch(ctx, items) if size > 1 else [rule.map_item(ctx, items[0])]
            for it, value in zip(chunk, values, strict=True):
                kind = "bytes" if isinstance(value, bytes) else "json"
                data = value if isinstance(value, bytes) else json.dumps(value).encode()
                results[it["relpath"]] = {"hash": store.put_bytes(data), "kind": kind}
        except RuleError as exc:
            for it in chunk:
                results[it["relpath"]] = {"error": str(exc)}
        except Exception as exc:
            tb = traceback.format_exc()
            for it in chunk:
                results[it["relpath"]] = {"error": f"{type(exc).__name__}: {exc}", "tb": tb}
        send("progress", [start + len(chunk), len(task.items)])
    return {"items": results}


def _reduce(task: Task, rule: Rule, store: Store, send: Send, logger: logging.Logger) -> dict:
    mapped: dict[str, Any] = {}
    for rel, (h, kind) in task.extra["mapped"].items():
        data = store.read_bytes(h)
        if data is None:
            raise RuleError(
                f"the cached map result of item {rel} is missing or corrupt; build again"
            )
        mapped[rel] = data if kind == "bytes" else json.loads(data)
    _prepare_outputs(task, task.outputs)
    values = _check_values(rule.reduce(_context(task, send, logger, task.outputs), mapped))
    return {"outputs": _hash_outputs(task, task.outputs, store), "values": values}


_MODES: dict[str, Callable[..., dict]] = {
    "run": _run, "items": _items, "map": _map, "reduce": _reduce,
}  # fmt: skip

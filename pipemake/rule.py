"""The rule API: what a stage type declares, what it receives when it runs, and the registry.

A rule is a class with class-level declarations (inputs, outputs, params, computed values,
a version) and a ``run`` method. It is registered under the ``pipemake.rules`` entry-point
group, exactly like the built-in rules. Declarations let the loader catch unknown keys,
wrong types and unknown references before anything runs; ``version`` goes into every key,
so bumping it reruns the stages that use the rule.

A rule whose Python code only starts subprocesses and waits for them (``shell``) sets
``spawns_only`` and starts them with ``ctx.popen``: the local executor then runs its tasks
in threads of the build process instead of worker processes (``ctx.sh`` runs a shell
command and waits for it).

Rules that work per file of an input (``foreach``) implement ``run_item`` (or
``run_batch``); rules that also need a whole-stage step over all items' results (map-reduce)
implement ``map_item`` and ``reduce``. ``setup`` runs once per worker process and per
parameter set, so a rule loads its model once, not once per item. A rule that names
``default_foreach`` runs per item over that input when a stage says nothing about
``foreach`` (``foreach: false`` opts out, where the rule also has a whole-stage ``run``).

Three more declarations let the loader catch mistakes before anything runs: ``aliases``
(other names a config key is accepted under, such as the original system's
``character_dirs``), ``requires`` (the packages the rule imports when it runs, and the pip
requirement that provides each) and :meth:`Rule.describe` (facts ``validate`` and
``dry-run`` show, such as which model file a stage will load).
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .errors import suggest
from .fingerprint import code_files, environment, mtimes
from .items import Item

__all__ = [
    "Context",
    "Input",
    "Item",
    "Output",
    "Param",
    "Ports",
    "Rule",
    "RuleError",
    "get_rule",
    "has_items",
    "has_run",
    "local_only",
    "project_on_path",
    "register_rule",
    "unregister_rule",
    "rule_names",
    "unknown_key",
]

ENTRY_POINT_GROUP = "pipemake.rules"

_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
    "any": (object,),
}


class RuleError(Exception):
    """Raised by a rule for bad input it meets while running: shown to the user without a
    traceback, as the stage's failure."""


@dataclass(frozen=True)
class Input:
    """A config key whose value is an input path (or, with ``many``, a list of paths).

    ``kind`` is ``file``, ``dir`` or ``path`` (either). Inputs are content-hashed into the key.
    """

    kind: str = "path"
    required: bool = True
    many: bool = False
    help: str = ""


@dataclass(frozen=True)
class Output:
    """A config key whose value is an output path the rule writes (``file`` or ``dir``)."""

    kind: str = "dir"
    help: str = ""


_REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """A config key holding a parameter: a type name, a default and optional choices.

    A param without a default is required. ``type`` is one of str, int, float, bool, list,
    dict, any; a tuple of names accepts any of them.
    """

    type: str | tuple[str, ...] = "any"
    default: Any = _REQUIRED
    choices: Sequence[Any] | None = None
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def check(self, value: Any) -> str | None:
        """Return a message saying what is wrong with ``value``, or None when it is fine."""
        names = (self.type,) if isinstance(self.type, str) else self.type
        ok = False
        for name in names:
            types = _TYPES[name]
            if name in ("int", "float") and isinstance(value, bool):
                continue
            if isinstance(value, types):
                ok = True
                break
        if not ok:
            return f"expected {' or '.join(names)}, got {type(value).__name__} {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"{value!r} is not one of {', '.join(map(repr, self.choices))}"
        return None


@dataclass
class Ports:
    """A stage's config split into input paths, output paths (with kinds) and params.

    Paths are relative to the project root. ``key_params`` is what goes into the key for
    the params (by default the params themselves).
    """

    inputs: dict[str, str | list[str]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    output_kinds: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    key_params: dict[str, Any] | None = None
    #: the project root (absolute), for rules that look at user code
    root: str = ""
    #: the stage's id, for rules that check the config with the user's code (which names it)
    stage: str = ""


#: what starts a task's subprocesses: ``(args, extra environment, Popen keywords)``
Spawn = Callable[[Sequence[str], Mapping[str, str] | None, dict[str, Any]], subprocess.Popen[Any]]


class Context:
    """What a rule's ``run`` (or per-item call) receives.

    ``inputs`` and ``outputs`` map names to absolute paths (outputs point into staging, never
    at the real output path); ``params`` are the resolved params; ``progress(done, total)``
    reports progress; ``log`` is a logger whose lines reach the build's view and log.
    ``resources`` is what the scheduler granted (e.g. ``{"gpu": 1}``) and ``gpu_ids`` the
    cards given to this stage. ``state`` holds what ``setup`` returned. ``popen`` starts a
    subprocess the way the task should.
    """

    def __init__(
        self,
        root: Path,
        inputs: Mapping[str, Path | list[Path]],
        outputs: Mapping[str, Path],
        params: Mapping[str, Any],
        *,
        stage: str = "",
        progress: Callable[[int, int | None], None] | None = None,
        log: logging.Logger | None = None,
        resources: Mapping[str, float] | None = None,
        gpu_ids: Sequence[str] = (),
        item: Item | None = None,
        state: Any = None,
        spawn: Spawn | None = None,
    ) -> None:
        self.root = root if isinstance(root, Path) else Path(root)
        self.inputs = dict(inputs)
        self.outputs = dict(outputs)
        self.params = dict(params)
        self.stage = stage
        self._progress = progress
        self.log = log or logging.getLogger(f"pipemake.stage.{stage or 'rule'}")
        self.resources = dict(resources or {})
        self.gpu_ids = list(gpu_ids)
        self.item = item
        self.state = state
        self._spawn = spawn
        #: with ``batch_size`` > 1, in ``run_batch``: each item's outputs (name → path), in
        #: the order of the items (``outputs`` is the first item's)
        self.batch_outputs: list[dict[str, Path]] = []

    def progress(self, done: int, total: int | None = None) -> None:
        """Report that ``done`` of ``total`` units of work are finished."""
        if self._progress is not None:
            self._progress(done, total)

    def popen(
        self, args: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start a subprocess for this task (``subprocess.Popen`` arguments): in the project
        root, with the inherited environment, the task's (``CUDA_VISIBLE_DEVICES`` for the
        cards it was granted) and ``env`` on top; a timeout or a stop ends its whole process
        tree. A rule that sets ``spawns_only`` must start its subprocesses this way."""
        if self._spawn is not None:
            return self._spawn(args, env, kwargs)
        kwargs.setdefault("cwd", self.root)
        return subprocess.Popen(args, env=dict(os.environ, **env) if env else None, **kwargs)

    def sh(
        self,
        cmd: str,
        *,
        env: Mapping[str, str] | None = None,
        output: Callable[[str], None] | None = None,
        fresh: bool = False,
    ) -> int:
        """Run ``cmd`` with ``/bin/sh`` in the project root, the task's environment plus
        ``env``, and wait for it; ``output`` gets each line it prints (stdout and stderr
        together). Returns its exit status, negative (``-N``) when its shell was killed by
        signal N. A timeout or a stop ends it.

        Unless ``fresh``, the commands of one task may share one shell, started once: each
        command runs in a subshell of its own (``( eval CMD )``, stdin from ``/dev/null``),
        which saves starting a shell per command, the larger part of a short command's cost.
        Nothing a command sets or changes reaches the next one, and a command lasts until
        what it started closed its output, as with ``sh -c``; what differs from ``/bin/sh
        -c`` is ``$$`` (the shared shell's), the shell's own messages (``eval:`` before
        them), and a command killed by signal N, which the shell reports as 128 + N. Two
        threads of one task calling at once: the second gets a shell of its own.
        """
        session = None if fresh else getattr(self._spawn, "sh", None)
        if session is not None:
            code = session(cmd, env, output)
            if code is not None:  # None: not there (a name it cannot export, in use)
                return int(code)
        proc = self.popen(
            ["/bin/sh", "-c", cmd], env=env, stdin=subprocess.DEVNULL, close_fds=False,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
            errors="replace",  # UTF-8 as the task shell reads it, whatever the locale
        )  # fmt: skip
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                if output is not None:
                    output(line.rstrip("\n"))
        return proc.wait()


_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: variables a shell sets for itself when it starts, whatever its environment says
_SHELL_OWN = frozenset({"IFS", "PWD", "PPID", "OPTIND"})


_ROOTS: list[str] = []  # the project root this process put on sys.path


def project_on_path(root: str) -> None:
    """Make a project's own modules importable: its root goes *last* on ``sys.path``, so a
    ``copy.py`` or ``json.py`` there never hides the standard library or an installed
    package (here or in the workers started from here), and a root put there for an
    earlier project in this process is taken off."""
    if not root or (_ROOTS == [root] and sys.path and sys.path[-1] == root):
        return
    for old in _ROOTS:
        while old in sys.path:
            sys.path.remove(old)
    _ROOTS[:] = [root]
    if root not in sys.path:
        sys.path.append(root)


def exports(env: Mapping[str, str] | None) -> str | None:
    """The shell's ``export A='1' B='2'; `` for ``env`` (empty for none); None when a name is
    not one a shell variable can have, or one a starting shell sets itself (exported by a
    running shell it would not be what ``sh -c`` gives)."""
    if not env:
        return ""
    if not all(_SHELL_NAME.fullmatch(k) and k not in _SHELL_OWN for k in env):
        return None
    return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + "; "


class Rule:
    """Base class of every stage type.

    Subclasses set ``name`` and ``version`` and declare ``inputs``, ``outputs`` and
    ``params`` as mappings from config key to :class:`Input`, :class:`Output` and
    :class:`Param`, and ``values`` as the names of the computed values ``run`` returns.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    inputs: ClassVar[Mapping[str, Input]] = {}
    outputs: ClassVar[Mapping[str, Output]] = {}
    params: ClassVar[Mapping[str, Param]] = {}
    values: ClassVar[Sequence[str]] = ()
    #: computed values that are paths (or lists of paths) relative to one of the outputs:
    #: value name → output name. A downstream ``{stage.value}`` resolves them to paths
    #: relative to the project root, so they can be used as inputs.
    path_values: ClassVar[Mapping[str, str]] = {}
    #: default ``foreach`` filter (a glob, or several joined by ``|``) for this rule's items
    foreach_pattern: ClassVar[str | None] = None
    #: how many items one per-item call receives (``run_batch``); 1 means ``run_item``
    batch_size: ClassVar[int] = 1
    #: the rule's Python code does nothing but start subprocesses with ``ctx.popen`` and
    #: wait for them (``shell``): the local executor may then run its tasks in threads of
    #: the build process, with no worker process to start and nothing to pickle. Such a
    #: rule must not change process-wide state (``os.environ``, the working directory,
    #: signal handlers) and loads nothing in ``setup``.
    spawns_only: ClassVar[bool] = False
    #: the input a stage of this rule runs per item over when it has no ``foreach:`` key
    #: (its items filtered by ``foreach_pattern``); None: the whole stage runs at once.
    #: ``foreach: false`` in a stage opts out (the rule must then implement ``run``).
    default_foreach: ClassVar[str | None] = None
    #: the inputs whose files a stage may run per item over (``foreach:``), checked at
    #: ``validate``; None: any input; ``()``: none (the rule takes its inputs whole). A
    #: stage that gives one of them as a glob runs per item over it without ``foreach:``.
    foreach_inputs: ClassVar[Sequence[str] | None] = None
    #: other names a config key is accepted under: alias → declared key. A stage may use
    #: either (not both); the key, the problems and the rule see the declared name.
    aliases: ClassVar[Mapping[str, str]] = {}
    #: packages the rule imports when it runs: import name → the pip requirement that
    #: provides it (``"pipemake[video]"``; extras of pipemake are merged into one line).
    #: The loader checks them (without importing anything) before anything runs.
    requires: ClassVar[Mapping[str, str]] = {}
    #: modules every task of the rule imports first, slow to import (PyAV): a worker
    #: started ahead of a build imports them while the build loads and decides, so the
    #: first task does not wait for them (see :mod:`pipemake.executors.preload`)
    preload: ClassVar[tuple[str, ...]] = ()
    #: whether :meth:`check` takes an input an upstream stage computes as a placeholder
    #: (:class:`pipemake.model.Pending`) at load time, so its params are checked at
    #: ``validate``; otherwise it is asked only once the value is known
    checks_pending: ClassVar[bool] = False

    def accepted_keys(self) -> set[str] | None:
        """Every config key a stage of this rule may have (declared keys and their
        aliases), so an unknown key is reported before anything runs whatever its value;
        None for rules that split their config themselves and did not say."""
        if type(self).ports is not Rule.ports:
            return None
        return set(self.inputs) | set(self.outputs) | set(self.params) | set(self.aliases)

    def unalias(self, config: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """``config`` with every alias renamed to its declared key, and a problem for a key
        given twice (under its name and an alias, or under two aliases)."""
        if not self.aliases:
            return dict(config), []
        out: dict[str, Any] = {}
        given: dict[str, str] = {}
        problems: list[tuple[str, str]] = []
        for key, value in config.items():
            name = self.aliases.get(key, key)
            if name in given:
                problems.append(
                    (key, f"{given[name]!r} and {key!r} name the same key {name!r}: give one")
                )
                continue
            given[name] = key
            out[name] = value
        return out, problems

    def ports(self, config: Mapping[str, Any]) -> tuple[Ports, list[tuple[str, str]]]:
        """Split ``config`` into ports by the declarations.

        Returns the ports and a list of ``(config key, problem)`` for the loader to report.
        Rules whose inputs and outputs are named by the user (``shell``, ``python``)
        override this.
        """
        config, problems = self.unalias(config)
        ports = Ports()
        known = set(self.inputs) | set(self.outputs) | set(self.params)
        for key in config:
            if key not in known:
                problems.append((key, unknown_key(key, self.name, known | set(self.aliases))))
        for key, decl in self.inputs.items():
            if key not in config or config[key] is None:
                if decl.required:
                    problems.append((key, f"missing input {key!r}"))
                continue
            value = config[key]
            if isinstance(value, list):
                if not decl.many and len(value) != 1:
                    problems.append((key, f"input {key!r} takes one path, got a list"))
                    continue
                if not all(isinstance(v, str) for v in value):
                    problems.append((key, f"input {key!r} must be a list of paths"))
                    continue
                ports.inputs[key] = list(value) if decl.many else value[0]
            elif isinstance(value, str):
                ports.inputs[key] = [value] if decl.many else value
            else:
                problems.append((key, f"input {key!r} must be a path, got {value!r}"))
        for key, decl in self.outputs.items():
            value = config.get(key)
            if not isinstance(value, str) or not value:
                problems.append((key, f"missing output path {key!r}"))
                continue
            ports.outputs[key] = value
            ports.output_kinds[key] = decl.kind
        for key, decl in self.params.items():
            if key in config:
                msg = decl.check(config[key])
                if msg:
                    problems.append((key, f"param {key!r}: {msg}"))
                ports.params[key] = config[key]
            elif decl.required:
                problems.append((key, f"missing param {key!r}"))
            else:
                ports.params[key] = decl.default
        return ports, problems

    def check(self, ports: Ports) -> list[tuple[str, str]]:
        """Further checks of resolved ports before anything runs; ``(key, problem)`` pairs.

        An input an upstream stage computes (a reference to its value) is not known when
        the file is loaded; a rule with :attr:`checks_pending` is asked then all the same,
        with a placeholder there (:class:`pipemake.model.Pending`, not a ``str``), so its
        params are checked at ``validate``. Every rule is asked again once the value is
        known, before the stage runs."""
        return []

    def describe(self, ports: Ports) -> list[str]:
        """Facts about a stage worth showing before it runs (``validate``, ``dry-run``),
        such as the model file it will load; one short line each."""
        return []

    def code_hash(self, ports: Ports, root: Path) -> str | None:
        """A hash of user code this stage runs (``python`` stages), or None."""
        return None

    def code_files(self, ports: Ports, root: Path) -> list[str]:
        """The files behind :meth:`code_hash` (a no-op snapshot re-stats them)."""
        return []

    def run(self, ctx: Context) -> Mapping[str, Any] | None:
        """Do the stage's work, writing into ``ctx.outputs``; return computed values.

        A rule without it runs only per item; the loader refuses a stage that would call it
        (so this error is never reached from a checked pipeline)."""
        raise RuleError(
            f"rule {self.name!r} has no whole-stage run(): it runs per item (foreach: INPUT)"
        )

    # foreach support -------------------------------------------------------------------
    def setup(self, ctx: Context) -> Any:
        """Load what every item needs (a model): called once per worker process and params."""
        return None

    def run_item(self, ctx: Context, item: Item) -> Mapping[str, Any] | None:
        """Process one item, writing into ``ctx.outputs``; return the item's computed values."""
        return self.run(ctx)

    def run_batch(self, ctx: Context, items: Sequence[Item]) -> list[Mapping[str, Any] | None]:
        """Process several items at once (GPU rules), item ``n``'s outputs written to
        ``ctx.batch_outputs[n]``; one list entry of values per item. Without an override
        each item goes to ``run_item`` with a context of its own."""
        return [self.run_item(ctx, item) for item in items]

    def gather(self, params: Mapping[str, Any], per_item: Mapping[str, Any]) -> dict[str, Any]:
        """The stage's computed values from each item's (item relpath → values); by default
        each declared value becomes a mapping from item relpath (sorted) to that item's value
        (None for an item that did not return it). A rule with open values (``python``,
        ``custom``) declares none: every name some item returned is gathered so."""
        names: Sequence[str] = self.values
        if getattr(self, "open_values", False):
            names = sorted({str(n) for vals in per_item.values() for n in vals or {}})
        if not names:
            return {}
        rels = sorted(per_item)  # one order however the items came (cached ones, new ones)
        return {name: {rel: (per_item[rel] or {}).get(name) for rel in rels} for name in names}

    #: map-reduce rules set this and implement map_item and reduce
    map_reduce: ClassVar[bool] = False

    def map_item(self, ctx: Context, item: Item) -> Any:
        """Compute one item's result (JSON-serializable or bytes), cached per item."""
        raise RuleError(f"rule {self.name!r} sets map_reduce but has no map_item()")

    #: how many items one ``map_batch`` call receives (a GPU feature extractor wants many)
    map_batch_size: ClassVar[int] = 1

    def map_batch(self, ctx: Context, items: Sequence[Item]) -> list[Any]:
        """Map several items at once; by default one by one with ``map_item``."""
        return [self.map_item(ctx, item) for item in items]

    def reduce(self, ctx: Context, mapped: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """Combine every item's map result (relpath → result) and write the outputs."""
        raise RuleError(f"rule {self.name!r} sets map_reduce but has no reduce()")

    #: params that only the reduce step reads; changing them reruns only the reduce
    reduce_params: ClassVar[Sequence[str]] = ()


#: the fields of a stage entry in the pipeline file, beside its ``config``
STAGE_KEYS = {
    "id", "type", "depends_on", "config", "foreach", "resources", "retries",
    "retry_backoff", "timeout", "version", "description",
}  # fmt: skip


def unknown_key(key: str, rule: str, known: set[str]) -> str:
    """The message for a config key rule ``rule`` does not take: a stage field written
    inside ``config`` said to be one, else a did-you-mean when one is close; and the keys
    it does take."""
    if key in STAGE_KEYS - {"id", "type", "config", "description"}:
        hint = f"{key!r} is a stage field: write it beside type:, not inside config:"
    else:
        hint = suggest(str(key), sorted(known))
    listed = f" (known: {', '.join(sorted(known))})" if known else ""
    return f"unknown key {key!r} for rule {rule!r}" + (f"; {hint}" if hint else "") + listed


def has_run(rule: Rule) -> bool:
    """Whether ``rule`` can run a whole stage at once (it implements ``run``)."""
    return type(rule).run is not Rule.run


def has_items(rule: Rule) -> bool:
    """Whether ``rule`` can run per item (``run_item``/``run_batch``, a map-reduce pair, or
    a ``run`` that ``run_item`` falls back to)."""
    cls = type(rule)
    if rule.map_reduce:
        mapper = cls.map_item is not Rule.map_item or cls.map_batch is not Rule.map_batch
        return mapper and cls.reduce is not Rule.reduce
    return cls.run_item is not Rule.run_item or cls.run_batch is not Rule.run_batch or has_run(rule)


#: pipemake's version and the rules registered under ENTRY_POINT_GROUP (name → entry point
#: value, ``module:attr``), read once per process
_registry: tuple[str, dict[str, str]] | None = None
_RACY_NS = 1_000_000_000
#: how many Python set-ups (interpreter, sys.path) the registry cache remembers
_HEADS = 4


def _scan() -> tuple[str, dict[str, str], list[str]]:
    """From the installed distributions' metadata: pipemake's version, the registered rules
    and the metadata directories that register them."""
    from importlib import metadata

    try:
        version = metadata.version("pipemake")
    except metadata.PackageNotFoundError:
        version = "?"
    rules: dict[str, str] = {}
    sources: set[str] = set()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        rules[ep.name] = ep.value
        where = getattr(ep.dist, "_path", None)  # the .dist-info / .egg-info directory
        if where is not None:
            sources.update((str(where), os.path.join(str(where), "entry_points.txt")))
    return version, rules, sorted(sources)


def _entry_points() -> dict[str, str]:
    return registry()[1]


def registry(cache: Path | None = None) -> tuple[str, dict[str, str]]:
    """pipemake's version and every registered rule (name → ``module:attr``): those of
    the installed distributions' entry points, and those :func:`register_rule` added in
    this process (what a worker process takes over with :func:`adopt_registry`).

    Reading distributions' metadata (and importing ``importlib.metadata``) costs tens of
    milliseconds on every command; with ``cache`` (a JSON file in the workspace's
    ``.pipemake``) the answer is reused while the Python and every ``sys.path`` directory
    and registering metadata directory are as they were when it was written."""
    version, rules = _installed(cache)
    if not _registered_values:
        return version, rules
    return version, {**rules, **_registered_values}


def _installed(cache: Path | None) -> tuple[str, dict[str, str]]:
    """The entry points' part of :func:`registry` (read once per process, see there)."""
    global _registry
    if _registry is not None:
        return _registry
    # a distribution installed, upgraded or removed adds or removes an entry in its
    # sys.path directory; a registering one's entry points are its entry_points.txt
    head = json.loads(json.dumps(environment()))
    # one answer per head: `pipemake` and `python -m pipemake` differ in sys.path[0]
    known: list[dict[str, Any]] = []
    if cache is not None:
        try:
            doc = json.loads(cache.read_text())
            known = [e for e in doc["heads"] if type(e) is dict][:_HEADS]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        for e in known:
            try:
                if e["head"] == head and e["sources"] == mtimes([s for s, _ in e["sources"]]):
                    _registry = (str(e["version"]), {str(k): str(v) for k, v in e["rules"].items()})
                    return _registry
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                pass
    version, rules, sources = _scan()
    _registry = (version, rules)
    if cache is not None and cache.parent.is_dir():
        stamps = mtimes(sources)
        settled = time.time_ns() - _RACY_NS
        if all(m is None or m < settled for _, m in head[2] + stamps):
            entry = {"head": head, "sources": stamps, "version": version, "rules": rules}
            others = [e for e in known if e.get("head") != head][: _HEADS - 1]
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
            try:
                tmp.write_text(json.dumps({"heads": [entry, *others]}))
                os.replace(tmp, cache)
            except OSError:
                pass  # only a cache
    return _registry


def adopt_registry(known: tuple[str, dict[str, str]]) -> None:
    """Take the registry another process read (a worker takes its build's): reading the
    metadata again costs a worker start tens of milliseconds."""
    global _registry
    _registry = known


def rule_names() -> list[str]:
    """Names of every registered rule (built-in, third-party and registered in this
    process), without importing them."""
    return sorted(_entry_points())


def _load(value: str) -> Any:
    """The object an entry point value (``module:attr.sub [extras]``) names."""
    module, _, attr = value.split("[")[0].partition(":")
    obj: Any = importlib.import_module(module.strip())
    for part in attr.strip().split(".") if attr.strip() else ():
        obj = getattr(obj, part)
    return obj


_loaded: dict[str, Rule] = {}
#: rules registered in this process with register_rule (name → rule)
_registered: dict[str, Rule] = {}
#: what registry() adds for them: ``module:qualname`` where a worker process can import
#: the class again, a value starting with _HERE where it cannot (a class defined in
#: ``__main__``, a notebook, a function)
_registered_values: dict[str, str] = {}
_HERE = "<this process>:"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def get_rule(name: str) -> Rule | None:
    """The rule registered as ``name`` (imported on first use), or None if there is none."""
    rule = _registered.get(name) or _loaded.get(name)
    if rule is not None:
        return rule
    value = _entry_points().get(name)
    if value is None or value.startswith(_HERE):
        return None  # unknown, or registered in another process (the build's) only
    rule = _as_rule(name, _load(value), f"entry point {name!r} ({value})")
    _loaded[name] = rule
    return rule


def package_files(packages: set[str]) -> set[str]:
    """The source files of every loaded module of these top-level packages (see
    :func:`pipemake.fingerprint.code_files`)."""
    return code_files(packages)


def _is_executor(obj: Any) -> bool:
    """Whether ``obj`` is an executor class of the original pipeline system: constructed
    with ``(stage_id, config)``, with ``validate_config()`` and ``execute(inputs)``."""
    return (
        isinstance(obj, type)
        and not issubclass(obj, Rule)
        and callable(getattr(obj, "validate_config", None))
        and callable(getattr(obj, "execute", None))
    )


def _as_rule(name: str, obj: Any, what: str) -> Rule:
    """A rule named ``name`` from a Rule instance or subclass, or an original-style
    executor class (run through the ``custom`` rule)."""
    if isinstance(obj, type) and issubclass(obj, Rule):
        rule = obj()
    elif isinstance(obj, Rule):
        rule = obj if obj.name == name else copy.copy(obj)
    elif _is_executor(obj):
        custom = get_rule("custom")
        wrap = getattr(custom, "for_executor", None)
        if wrap is None:
            raise TypeError(f"{what} is an executor class, but the 'custom' rule is not installed")
        rule = wrap(name, obj)
    else:
        raise TypeError(
            f"{what} is neither a pipemake Rule nor an executor class "
            "(a class with validate_config() and execute(inputs))"
        )
    if rule.name != name:
        rule.name = name  # type: ignore[misc]  # the stage type it answers to
    return rule


def _importable(obj: Any) -> str | None:
    """``module:qualname`` when another process can import ``obj`` under that name."""
    if not isinstance(obj, type):
        return None
    module, qualname = obj.__module__, obj.__qualname__
    if module in ("__main__", "__mp_main__") or "<locals>" in qualname:
        return None
    found: Any = sys.modules.get(module)
    if not getattr(found, "__file__", None):
        return None
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return f"{module}:{qualname}" if found is obj else None


def register_rule(name: str, rule: type | Rule) -> Rule:
    """Make ``rule`` the stage type ``name`` in this process, for scripts and notebooks
    (installed packages register rules through the ``pipemake.rules`` entry points).

    ``rule`` is a :class:`Rule` subclass (or instance), or an executor class written for
    the original pipeline system (``validate_config()``, ``execute(inputs)``, optionally
    ``estimate_duration()``; its ``register_executor``), which then runs as a ``custom``
    stage. Registering a name again replaces it, a built-in one too. Worker processes
    import the class again by its module and name; a class they cannot import (defined
    in ``__main__`` or a notebook) has its tasks run in threads of the building process.
    Returns the rule as pipemake will use it.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"a rule name must look like my_rule, got {name!r}")
    made = _as_rule(name, rule, f"register_rule({name!r}, ...)")
    where = _importable(rule)
    _registered[name] = made
    _loaded.pop(name, None)
    _registered_values[name] = where or (
        f"{_HERE}{getattr(rule, '__module__', '?')}.{getattr(rule, '__qualname__', '?')}"
        f"@{id(made):x}"  # a new registration is a new plan-cache key
    )
    return made


def unregister_rule(name: str) -> None:
    """Undo :func:`register_rule` for ``name`` in this process (an installed rule of that
    name is found again); for scripts and tests that register rules for a while."""
    _registered.pop(name, None)
    _registered_values.pop(name, None)
    _loaded.pop(name, None)


def forget_registry() -> None:
    """Read the installed rules again on next use: this process's registry (taken from
    the distributions' metadata once per process) and the rules loaded from it are
    forgotten; rules registered with :func:`register_rule` stay. For a long-lived process
    (a notebook) after ``pip install`` of a rule package."""
    global _registry
    _registry = None
    _loaded.clear()


def local_only(name: str) -> bool:
    """Whether rule ``name`` was registered in this process and worker processes cannot
    import it: its tasks must run here (the local executor runs them in threads)."""
    return _registered_values.get(name, "").startswith(_HERE)

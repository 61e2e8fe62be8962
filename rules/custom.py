"""The ``custom`` rule: a stage run by an executor class written for the original pipeline
system, unchanged.

``config: {executor: "package.module:Class", ...}``; every other key is the executor's own
config. As the original orchestrator did, the worker constructs ``Class(stage_id, config)``,
calls ``validate_config()``, then ``execute(inputs)``, then ``cleanup()`` when it has one;
``estimate_duration()``, when it has one, is logged. ``validate`` (every load of the
pipeline) calls ``validate_config()`` too, so a bad config is exit 2 before anything runs —
unless the config names a path that does not exist yet (an upstream stage's output before
its first build): then the check is the worker's, before ``execute``.

Which keys are paths, decided from the pipeline file as written (never from what is on
disk: a build creates outputs, and a key must not turn from output into input when it
does); ``validate`` shows each stage's reading:

- an **output** is a key named ``output``, or with the word ``output`` and a path word
  (``dir``, ``path``, ``file``, ``folder``, …: ``output_dir``, ``cut_output_path``; not
  ``output_format``), or one ending in ``_dir``, ``_path``, ``_file``, ``_folder`` or
  ``_root`` with ``out``, ``save``, ``dest``, ``target``, ``export``, ``write`` or
  ``result`` in it (``save_dir``, ``dest_path``) whose value is a path inside the project
  (outside it, or led out by a symlink, such a key is a param or refused: pipemake never
  replaces a folder of yours it was not told is an output). The executor gets its staging
  path (absolute); pipemake stores what it wrote there, places it, and restores it when
  missing. As in the original, the executor creates it (pipemake creates its parent; a
  ``*_dir`` output it did not create is an empty folder);
- an **input** is a key whose value is a path or a list of paths (not a URL, not ``~/…``)
  and that is named with ``input`` and a path word (``input_dir``, ``input_video``) or
  ends in one of those path words (``source_dir``, ``model_path``, ``labels_file``),
  except scratch keys (``cache_dir``, ``tmp_dir``, ``work_dir``, ``log_dir``: params). The
  executor gets it absolute and its content is part of the key; one that no stage
  produces must exist (the error says how to make it an output instead);
- ``inputs: [KEY, …]`` and ``outputs: [KEY, …]`` name them instead (each list replaces its
  own reading; these two keys and ``executor`` are not passed on);
- every other key is a **param**, passed as written. A reference to another stage's output
  (``{extract.output_dir}``) puts that stage's output hashes into the key, whichever key
  holds it. A result naming an existing project path that is none of these is logged as a
  warning: pipemake does not store it. The executor module's source is part of the key,
  as for ``python`` stages, unless the stage sets ``version:``, with the files of the
  project that hold the classes it derives from (``class Ex(Base)``, ``Base`` imported
  from ``steps/base.py``); as for ``python`` stages, the code that runs is the code the
  key holds (see :mod:`._code_load`).

``inputs``, the argument of ``execute``, maps each upstream stage's id to its outputs
(absolute paths) and computed values, as the original passed each dependency's outputs.
The result may be a ``StageResult``-like object (``status``, ``outputs``, ``metrics``,
``error_message``), a dict of those fields, a plain dict of outputs, or None. A failed
status fails the stage with its ``error_message``. The result's ``outputs`` become the
stage's computed values (``{stage.NAME}`` downstream): a staging path in them becomes the
output's path in the project, any other path inside the project becomes relative to it.
Since values may hold output paths, a custom stage's output paths are part of its key
(moving one reruns the stage instead of restoring it).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import logging
import os
import re
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipemake.hashing import hash_file
from pipemake.model import Pending
from pipemake.rule import Context, Ports, Rule, RuleError

from ._code_load import class_files, digests, find_in, in_project, load, real
from ._custom_keys import away, is_paths, reading, untracked
from .original import ALIASES, install_aliases
from .python import CODE, changed

__all__ = ["CustomRule"]

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
#: hidden params: the executor's ``module:Class``, the final output paths (for the values)
#: and, added by the build, what the upstream stages made
_EXEC = "__executor__"
_FINAL = "__outputs__"
UPSTREAM = "__upstream__"
_PATHISH = ("_dir", "_dirs", "_path", "_paths", "_file", "_files", "_video")
_FAILED = {"failed", "failure", "error", "cancelled"}


def _has_pending(value: Any) -> bool:
    if isinstance(value, Pending):
        return True
    if isinstance(value, list | tuple):
        return any(_has_pending(v) for v in value)
    if isinstance(value, dict):
        return any(_has_pending(v) for v in value.values())
    return False


def _module_file(module: str, root: str) -> str | None:
    """The file of ``module``, looked for in the project root first (another project's
    module of that name may be imported in this process already), then on sys.path."""
    if not module:
        return None
    if root:
        found = find_in(module, [root])
        if found is not None:
            return found
    try:
        spec = importlib.util.find_spec(module)
    except Exception:  # noqa: BLE001 - importing a parent package runs the user's code
        return None
    return spec.origin if spec is not None and spec.origin not in (None, "built-in") else None


def _defines(path: str, name: str) -> bool:
    """Whether the Python file ``path`` defines class ``name`` at its top level (read, not
    imported: a module that imports torch is not imported just to compute a key)."""
    import ast

    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return False
    return any(isinstance(n, ast.ClassDef) and n.name == name for n in tree.body)


def _class_file(cls: type) -> str | None:
    try:
        return inspect.getsourcefile(cls)
    except (TypeError, OSError):
        return None


def _absolute(root: Path, value: Any) -> Any:
    if isinstance(value, list):
        return [_absolute(root, v) for v in value]
    return str(value if os.path.isabs(str(value)) else root / str(value))


class CustomRule(Rule):
    """Runs an executor class of the original pipeline system (see the module's docstring)."""

    name = "custom"
    version = "1"
    #: whatever the executor returns in ``outputs`` can be referenced as {stage.NAME}
    open_values = True
    #: the build adds each upstream stage's outputs and values under this param
    upstream_param = UPSTREAM
    #: the finder of the original system's module names (``import pipemake`` asks it)
    import_aliases = ALIASES

    def __init__(self, executor: type | None = None) -> None:
        super().__init__()
        #: the class of a type registered with register_rule; None: the config names it
        self._bound = executor
        #: (project root, "module:Class") → (its module, the class), in this process
        self._classes: dict[tuple[str, str], tuple[Any, type]] = {}

    def for_executor(self, name: str, executor: type) -> CustomRule:
        """The stage type ``name`` running ``executor`` (the original ``register_executor``):
        its stages' config is the executor's alone."""
        rule = CustomRule(executor)
        rule.name = name  # type: ignore[misc]
        return rule

    def _spec(self) -> str:
        cls = self._bound
        assert cls is not None
        return f"{cls.__module__}:{cls.__qualname__}"

    # loading ---------------------------------------------------------------------------
    def ports(self, config: Mapping[str, Any]) -> tuple[Ports, list[tuple[str, str]]]:
        problems: list[tuple[str, str]] = []
        ports = Ports()
        reserved = {"inputs", "outputs"}
        if self._bound is None:
            reserved.add("executor")
            spec = config.get("executor")
            if not isinstance(spec, str) or not _SPEC.match(spec):
                problems.append(
                    ("executor", "'executor' must name the executor class: package.module:Class")
                )
                spec = ""
        else:
            spec = self._spec()
        named: dict[str, list[str]] = {}
        for section in ("inputs", "outputs"):
            keys = config.get(section)
            if keys is None:
                continue
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                problems.append(
                    (section, f"'{section}' must be a list of the config keys that are paths")
                )
                continue
            for k in keys:
                if k not in config or k in reserved:
                    problems.append((section, f"'{section}' names {k!r}, not a key of this config"))
            named[section] = keys
        params: dict[str, Any] = {}
        for key, value in config.items():
            if key in reserved:
                continue
            read = reading(key, value)
            if "inputs" in named:
                read = "input" if key in named["inputs"] else read.replace("input", "")
            if "outputs" in named:
                read = "output" if key in named["outputs"] else read.replace("output", "")
            if read == "output":
                if not isinstance(value, str) or not value:
                    problems.append((key, f"output {key!r} must be a path, got {value!r}"))
                    continue
                ports.outputs[key] = value
                ports.output_kinds[key] = "path"  # made by the executor, as it always was
            elif read == "input":
                if not is_paths(value):
                    problems.append((key, f"input {key!r} must be a path or a list of paths"))
                    continue
                ports.inputs[key] = value
            else:
                params[key] = value
        ports.params = {**params, _EXEC: spec, _FINAL: dict(ports.outputs)}
        ports.key_params = {"executor": spec, "params": params, "outputs": dict(ports.outputs)}
        return ports, problems

    def describe(self, ports: Ports) -> list[str]:
        """How each config key was read (what ``validate`` shows under the stage)."""
        params = [k for k in ports.params if k not in (_EXEC, _FINAL, UPSTREAM, CODE)]
        parts = [
            f"{what} {', '.join(keys)}"
            for what, keys in (
                ("inputs (content in the key):", list(ports.inputs)),
                ("outputs (stored, restored):", list(ports.outputs)),
                ("params:", params),
            )
            if keys
        ]
        return ["config keys read as " + "; ".join(parts)] if parts else []

    #: said under a missing input of a custom stage
    missing_input_hint = (
        "create it, fix the path, or produce it with an upstream stage; if this stage "
        "writes it, list {key!r} with the stage's other outputs in `outputs: [...]`"
    )

    def check(self, ports: Ports) -> list[tuple[str, str]]:
        root = Path(ports.root or ".")
        led_out = [(k, away(root, k, v)) for k, v in ports.outputs.items()]
        if any(why for _, why in led_out):
            return [(k, why) for k, why in led_out if why]
        try:
            cls = self._class(str(ports.params.get(_EXEC, "")), ports.root)
        except RuleError as exc:
            return [("executor", str(exc))]
        if _has_pending(ports.params) or _has_pending(ports.inputs):
            return []  # checked when the build knows those values
        params = {k: v for k, v in ports.params.items() if k not in (_EXEC, _FINAL, CODE)}
        inputs = {k: _absolute(root, v) for k, v in ports.inputs.items()}
        config = self._config(
            params, inputs, {k: _absolute(root, v) for k, v in ports.outputs.items()}
        )
        try:
            problem = _validate(cls, ports.stage, config)
        except Exception as exc:  # noqa: BLE001 - the user's constructor: say what it raised
            problem = f"{cls.__name__}(stage_id, config) failed: {type(exc).__name__}: {exc}"
        if problem is None or self._not_there_yet(root, ports, params):
            return []
        keys = [*params, *ports.inputs, *ports.outputs]
        named = [k for k in keys if f"'{k}'" in problem or f'"{k}"' in problem] or [
            k for k in keys if re.search(rf"(?<![\w-]){re.escape(k)}(?![\w-])", problem)
        ]
        return [(named[0] if named else "executor", problem)]

    @staticmethod
    def _not_there_yet(root: Path, ports: Ports, params: Mapping[str, Any]) -> bool:
        """Whether the config names a path that does not exist yet (an upstream output
        before its first build), so a failed validate_config() may only mean that."""
        paths: list[Any] = []
        for value in ports.inputs.values():
            paths += value if isinstance(value, list) else [value]
        for key, value in params.items():
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, str) and v and ("/" in v or key.endswith(_PATHISH)):
                    paths.append(v)
        return any(not (root / p).exists() for p in paths if isinstance(p, str))

    def _class(self, spec: str, root: str, want: Mapping[str, str] | None = None) -> type:
        """The executor class ``spec`` names, loaded as the code ``want`` (the key's
        digests) or, without them, as the source on disk now (see :mod:`._code_load`)."""
        if self._bound is not None:
            return self._bound
        module, _, attr = spec.partition(":")
        known = self._classes.get((root, spec))
        install_aliases()
        try:
            obj: Any = load(
                module, root, want, self._static_files(spec, root),
                expected=lambda: _module_file(module, root),
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the user's module: say what it raised
            hint = ""
            if isinstance(exc, ModuleNotFoundError) and exc.name and module.startswith(exc.name):
                hint = (
                    f"; 'executor' names module:Class, the module's dotted path from the "
                    f"project folder ({root}/{module.replace('.', '/')}.py) or an installed "
                    "package's: fix the name or the file's place"
                )
            raise RuleError(
                f"cannot import {module!r}: {type(exc).__name__}: {exc}{hint}"
            ) from None
        if known is not None and known[0] is obj:
            return known[1]
        loaded = obj
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise RuleError(_no_such_class(obj, part))
            obj = getattr(obj, part)
        missing = [m for m in ("validate_config", "execute") if not callable(getattr(obj, m, None))]
        if not isinstance(obj, type) or missing:
            lacks = f"; it has no {' and no '.join(m + '()' for m in missing)}" if missing else ""
            raise RuleError(
                f"{spec} is not an executor class (a class with validate_config() and "
                f"execute(inputs)){lacks if isinstance(obj, type) else ''}"
            )
        self._classes[(root, spec)] = (loaded, obj)
        return obj

    def _config(
        self, params: Mapping[str, Any], inputs: Mapping[str, Any], outputs: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {**params, **inputs, **{k: str(v) for k, v in outputs.items()}}

    def code_files(self, ports: Ports, root: Path) -> list[str]:
        if self._bound is not None:
            found = [_class_file(c) for c in self._bound.__mro__]
            mine = [f for f in found[1:] if f and in_project(real(f), real(str(root)))]
            return list(dict.fromkeys(f for f in [found[0], *mine] if f))
        spec = str(ports.params.get(_EXEC, ""))
        module = _module_file(spec.partition(":")[0], str(root))
        files = [module]
        if module is None or not _defines(module, spec.partition(":")[2].split(".")[0]):
            try:  # the module only re-exports the class: the class's own file is keyed too
                files.append(_class_file(self._class(spec, str(root))))
            except RuleError:
                pass  # not importable: the stage fails when it runs, saying why
        files += self._static_files(spec, str(root))  # the project's base classes' files
        return list(dict.fromkeys(f for f in files if f))

    @staticmethod
    def _static_files(spec: str, root: str) -> list[str]:
        """The executor module's file and the project files holding the class and the
        classes it derives from, read, not imported."""
        module, _, attr = spec.partition(":")
        path = _module_file(module, root)
        if path is None:
            return []
        found = class_files(path, module, attr.split(".")[0], lambda m: find_in(m, [root]))
        return [path, *(f for f in found if f != path)]

    def code_hash(self, ports: Ports, root: Path) -> str | None:
        files = self.code_files(ports, root)
        try:
            hashes = [hash_file(f) for f in files]
        except OSError:
            return None
        if self._bound is None:  # the task carries what the key holds (see _class)
            ports.params = {**ports.params, CODE: digests(files, hashes, str(root))}
        return hashes[0] if len(hashes) == 1 else (" ".join(hashes) or None)

    # running ---------------------------------------------------------------------------
    def run(self, ctx: Context) -> Mapping[str, Any] | None:
        params = dict(ctx.params)
        want = params.pop(CODE, None)
        cls = self._class(str(params.pop(_EXEC, "")), str(ctx.root), want)
        changed(want, ctx.stage, str(ctx.root))
        final = params.pop(_FINAL, {})
        upstream = params.pop(UPSTREAM, {})
        inputs = {k: _absolute(ctx.root, v) for k, v in ctx.inputs.items()}
        staging = {k: str(v) for k, v in ctx.outputs.items()}
        for key, path in final.items():
            why = away(ctx.root, key, path)
            if why:
                raise RuleError(why)  # a symlink made since the pipeline was checked
        config = self._config(params, inputs, staging)
        with _forward_logs(cls, ctx.log):
            executor = _call(f"{cls.__name__}(stage_id, config)", cls, ctx.stage, config)
            try:
                problem = _validate(cls, ctx.stage, None, executor)
                if problem is not None:
                    raise RuleError(problem)
                estimate = getattr(executor, "estimate_duration", None)
                if callable(estimate):
                    try:
                        ctx.log.info(f"{cls.__name__} estimates {float(estimate()):.0f} s")
                    except Exception:  # noqa: BLE001 - only an estimate
                        pass
                result = _call(f"{cls.__name__}.execute()", executor.execute, upstream)
            finally:
                cleanup = getattr(executor, "cleanup", None)
                if callable(cleanup):
                    _call(f"{cls.__name__}.cleanup()", cleanup)
        for key, path in staging.items():
            if key.endswith("_dir") and not os.path.lexists(path):
                os.makedirs(path)  # an output folder it had nothing to write into
        outputs, metrics = _outcome(result, f"{cls.__name__}.execute()")
        if metrics:
            ctx.log.info(f"metrics: {json.dumps(metrics, default=str, sort_keys=True)}")
        for key, rel in untracked(outputs, [*staging.values()], inputs, ctx.root):
            ctx.log.warning(
                f"{cls.__name__} returned {key!r}: {rel}, a path pipemake neither stores nor "
                "restores; if the stage writes it, list its config key with the stage's "
                "other outputs in `outputs: [...]`"
            )
        moves = {staging[k]: final[k] for k in staging if k in final}
        values = _paths_to_project(outputs, moves, str(ctx.root))
        return json.loads(json.dumps(values, default=str))


def _no_such_class(owner: Any, name: str) -> str:
    """``owner`` (a module or class) has no ``name``: say so, with the closest class name."""
    import difflib

    kind = "module" if inspect.ismodule(owner) else "class"
    where = getattr(owner, "__file__", None)
    classes = [k for k, v in vars(owner).items() if isinstance(v, type) and not k.startswith("_")]
    close = difflib.get_close_matches(name, classes, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    if not close and classes:
        hint = f"; its classes: {', '.join(sorted(classes)[:12])}"
    return (
        f"{kind} {owner.__name__!r}" + (f" ({where})" if where else "")
        + f" has no class {name!r}{hint}"
    )  # fmt: skip


def _call(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``; what it raises becomes the stage's failure, with the executor's own
    frames (as the original reported a raising executor: as the stage's failure)."""
    try:
        return fn(*args)
    except RuleError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code: say what and where
        frames = traceback.format_tb(exc.__traceback__.tb_next if exc.__traceback__ else None)
        where = "".join(frames[-6:]).rstrip()
        raise RuleError(
            f"{what} raised {type(exc).__name__}: {exc}" + (f"\n{where}" if where else "")
        ) from None


def _validate(
    cls: type, stage: str, config: dict[str, Any] | None, executor: Any = None
) -> str | None:
    """Run ``validate_config()``; what is wrong, or None when it passed."""
    if executor is None:
        executor = cls(stage, config)
    try:
        ok = executor.validate_config()
    except Exception as exc:  # noqa: BLE001 - a bad config raises, as in the original
        return f"validate_config() failed: {exc}"
    if ok is False:
        return "validate_config() returned False"
    return None


def _outcome(result: Any, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The result's outputs and metrics; a RuleError when it says the stage failed, or when
    it is none of the results an executor may return (``what`` names the call)."""
    if result is None:
        return {}, {}
    if isinstance(result, dict) and not ({"status", "outputs"} & set(result)):
        return dict(result), {}
    if not isinstance(result, dict) and not (
        hasattr(result, "status") or hasattr(result, "outputs")
    ):
        shown = repr(result)
        shown = shown if len(shown) <= 200 else shown[:200] + "…"
        raise RuleError(
            f"{what} returned {type(result).__name__} {shown}; expected a StageResult "
            "(status, outputs, metrics, error_message), a dict of outputs, or None"
        )
    get = result.get if isinstance(result, dict) else lambda k: getattr(result, k, None)
    status = get("status")
    status = str(getattr(status, "value", status) or "").lower()
    if status in _FAILED or get("success") is False:
        message = get("error_message") or f"the executor reported {status or 'failure'}"
        raise RuleError(str(message))
    outputs = get("outputs") or {}
    if not isinstance(outputs, dict):
        raise RuleError(
            f"{what} returned outputs of type {type(outputs).__name__} ({outputs!r:.200}); "
            "expected a dict of output names to paths or values"
        )
    metrics = get("metrics") or {}
    return dict(outputs), dict(metrics) if isinstance(metrics, dict) else {}


def _paths_to_project(value: Any, moves: Mapping[str, str], root: str) -> Any:
    """``value`` with staging paths replaced by their outputs' paths, and other paths inside
    the project made relative to it."""
    if isinstance(value, dict):
        return {str(k): _paths_to_project(v, moves, root) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_paths_to_project(v, moves, root) for v in value]
    if not isinstance(value, str | os.PathLike):
        return value
    text = os.fspath(value)
    if not os.path.isabs(text):
        return text
    path = os.path.normpath(text)
    for staged, final in moves.items():
        if path == staged or path.startswith(staged + os.sep):
            return final + path[len(staged) :]
    if path.startswith(root.rstrip(os.sep) + os.sep):
        return os.path.relpath(path, root)
    return text


class _Forward(logging.Handler):
    def __init__(self, to: logging.Logger) -> None:
        super().__init__(logging.INFO)
        self.to = to

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.to.log(record.levelno, record.getMessage())
        except Exception:  # noqa: BLE001 - a log line is never worth failing the stage
            pass


@contextmanager
def _forward_logs(cls: type, log: logging.Logger) -> Iterator[None]:
    """Lines the executor's module logs (``logging.getLogger(__name__)``) reach the
    stage's log."""
    logger = logging.getLogger(cls.__module__)
    handler = _Forward(log)
    old = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)

"""The ``python`` rule: call ``package.module:callable`` with a context.

``config: {function, inputs: {NAME: path}, outputs: {NAME: path}, params: {...}}``. The
callable receives a :class:`~pipemake.rule.Context` (inputs and outputs as absolute paths,
outputs in staging; params; ``progress``; ``log``) and may return a JSON-serializable dict of
computed values. The module's source is part of the key unless the stage sets ``version:``,
and the code that runs is the code the key holds: a worker that imported the module for an
earlier task imports it again when its source has changed since (see :mod:`._code_load`).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipemake.hashing import hash_file
from pipemake.rule import Context, Item, Ports, Rule, RuleError, project_on_path

from ._code_load import digests, find_in, load, mismatched, real
from ._named_ports import named_ports, unknown_keys

__all__ = ["PythonRule"]

_FN = "__function__"  # carries the callable's name to the worker; removed before the call
#: carries the key's code digests (file → digest) to the worker; removed before the call
CODE = "__code__"
_FUNC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _module_file(module: str, root: str) -> str | None:
    """The file an import of ``module`` loads; where it, or a package above it, is loaded
    in this process from a folder no longer on ``sys.path`` (another project's module of
    that name), the file a fresh import would load instead."""
    project_on_path(root)
    if any(_elsewhere(".".join(module.split(".")[:i])) for i in range(1, module.count(".") + 2)):
        found = find_in(module, [p or os.getcwd() for p in sys.path])
        if found is not None:
            return found
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.origin not in (None, "built-in") else None


def _elsewhere(name: str) -> bool:
    """Whether module ``name`` is loaded here from a file under no ``sys.path`` folder."""
    file = getattr(sys.modules.get(name), "__file__", None)
    if not file:
        return False
    path = real(file)
    return not any(path.startswith(os.path.join(real(p or os.getcwd()), "")) for p in sys.path)


def _top_level_names(path: str) -> set[str]:
    tree = ast.parse(Path(path).read_bytes())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


class PythonRule(Rule):
    """Calls a Python function of the user's."""

    name = "python"
    version = "1"
    #: any value the function returns can be referenced downstream as {stage.NAME}
    open_values = True

    def __init__(self) -> None:
        super().__init__()
        #: (project root, "module:callable") → (the module, the callable), in this process
        self._resolved: dict[tuple[str, str], tuple[Any, Any]] = {}

    def accepted_keys(self) -> set[str]:
        """The config keys a stage of this rule may have."""
        return {"function", "inputs", "outputs", "params"}

    def ports(self, config: Mapping[str, Any]) -> tuple[Ports, list[tuple[str, str]]]:
        ports = Ports()
        problems = unknown_keys(config, self.accepted_keys(), self.name)
        func = config.get("function")
        if not isinstance(func, str) or not _FUNC.match(func):
            problems.append(("function", "'function' must look like package.module:callable"))
        params = config.get("params") or {}
        if not isinstance(params, dict):
            problems.append(("params", "'params' must be a mapping"))
            params = {}
        problems += named_ports(config, ports)
        ports.params = {**params, _FN: func}
        # the function's name is keyed beside the params ("param function a:f → a:g")
        ports.key_params = (
            {**params, "function": func}
            if "function" not in params
            else {"function": func, "params": dict(params)}
        )
        return ports, problems

    def check(self, ports: Ports) -> list[tuple[str, str]]:
        func = ports.params.get(_FN, "")
        module, _, attr = func.partition(":")
        origin = _module_file(module, ports.root)
        if origin is None:
            return [
                (
                    "function",
                    f"cannot find module {module!r} (looked in the project root and on sys.path)",
                )
            ]
        try:
            names = _top_level_names(origin)
        except (OSError, SyntaxError, ValueError) as exc:
            return [("function", f"cannot read {origin}: {exc}")]
        if attr not in names:
            return [("function", f"module {module!r} ({origin}) defines no {attr!r}")]
        return []

    def code_files(self, ports: Ports, root: Path) -> list[str]:
        module = str(ports.params.get(_FN, "")).partition(":")[0]
        origin = _module_file(module, str(root))
        return [origin] if origin else []

    def code_hash(self, ports: Ports, root: Path) -> str | None:
        module = str(ports.params.get(_FN, "")).partition(":")[0]
        origin = _module_file(module, str(root))
        if not origin:
            return None
        digest = hash_file(origin)
        # the task carries what the key holds: the worker runs that code or none
        ports.params = {**ports.params, CODE: digests([origin], [digest], str(root))}
        return digest

    def _callable(self, ctx: Context) -> Any:
        func = str(ctx.params.pop(_FN, ""))
        want = ctx.params.pop(CODE, None)
        root = str(ctx.root)
        module, _, attr = func.partition(":")
        known = self._resolved.get((root, func))
        try:
            mod = load(module, root, want, expected=lambda: _module_file(module, root))
        except ImportError as exc:
            raise RuleError(f"cannot import {module!r}: {exc}") from None
        changed(want, ctx.stage, root)
        if known is not None and known[0] is mod:
            return known[1]  # the items of a task: resolved once (while not re-imported)
        fn = getattr(mod, attr, None)
        if not callable(fn):
            raise RuleError(f"{module}:{attr} is not a callable")
        self._resolved[(root, func)] = (mod, fn)
        return fn

    def run(self, ctx: Context) -> Mapping[str, Any] | None:
        return self._callable(ctx)(ctx)

    def run_item(self, ctx: Context, item: Item) -> Mapping[str, Any] | None:
        return self._callable(ctx)(ctx)


def changed(want: Mapping[str, str] | None, stage: str, root: str) -> None:
    """Raise when the code loaded is not the code of the stage's key (``want``): its
    source was edited after the build computed the key, so what it makes must not be
    stored under that key."""
    files = mismatched(want, root) if want else []
    if files:
        shown = ", ".join(os.path.relpath(f, real(root)) for f in files)
        raise RuleError(
            f"{shown} changed after the build decided to run stage {stage!r} (edited while "
            "the build ran): the code it would run is not the code its key holds, so "
            "nothing of this run is kept; build again"
        )

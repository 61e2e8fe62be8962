"""The ``shell`` rule: run a command with ``/bin/sh -c`` in the project root.

``config: {cmd, inputs: {NAME: path}, outputs: {NAME: path}, env: {K: V}}``. In ``cmd``,
``{inputs.NAME}`` is the input's path and ``{outputs.NAME}`` its staging path, both relative
to the project root and shell-quoted when needed; with ``foreach``, ``{item.name}``,
``{item.stem}`` and ``{item.relpath}`` describe the item. The key holds the ``cmd`` template
with those references left symbolic, and ``env``; never the inherited environment. A foreach
task's items share one shell, each run in a subshell of it (``Context.sh``).
"""

from __future__ import annotations

import os
import shlex
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from pipemake.rule import Context, Item, Ports, Rule, RuleError
from pipemake.templates import Ref, TemplateError, parse, render

from ._named_ports import named_ports, unknown_keys

__all__ = ["ShellRule"]

_ITEM_FIELDS = ("name", "stem", "relpath")


def _plain(path: str) -> bool:
    """Whether ``path`` has no ``.`` or ``..`` component (a hidden name such as
    ``.pipemake`` is fine), so cutting the root off it gives its relative path."""
    return "/./" not in path and "/../" not in path and not path.endswith(("/.", "/.."))


class ShellRule(Rule):
    """Runs a shell command; its inputs and outputs are named in the config."""

    name = "shell"
    version = "1"
    symbolic_keys = ("cmd", "env")
    spawns_only = True  # the local executor runs it in threads: no worker process to start

    def accepted_keys(self) -> set[str]:
        """The config keys a stage of this rule may have."""
        return {"cmd", "inputs", "outputs", "env"}

    def ports(self, config: Mapping[str, Any]) -> tuple[Ports, list[tuple[str, str]]]:
        ports = Ports()
        problems = unknown_keys(config, self.accepted_keys(), self.name)
        cmd = config.get("cmd")
        if not isinstance(cmd, str) or not cmd.strip():
            problems.append(("cmd", "missing 'cmd': the shell command to run"))
        env = config.get("env") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str | int | float) for k, v in env.items()
        ):
            problems.append(("env", "'env' must map variable names to strings"))
            env = {}
        problems += named_ports(config, ports)
        ports.params = {"cmd": cmd, "env": {k: str(v) for k, v in env.items()}}
        return ports, problems

    def check(self, ports: Ports) -> list[tuple[str, str]]:
        problems = []
        for key, text in [("cmd", ports.params["cmd"]), *ports.params["env"].items()]:
            try:
                refs = [p for p in parse(text) if isinstance(p, Ref)]
            except TemplateError as exc:
                problems.append((key if key == "cmd" else "env", str(exc)))
                continue
            for ref in refs:
                pool = {"inputs": ports.inputs, "outputs": ports.outputs}.get(ref.scope)
                if pool is not None and ref.name not in pool:
                    problems.append(
                        (
                            "cmd",
                            f"{ref}: no {ref.scope[:-1]} named {ref.name!r} "
                            f"(declared: {', '.join(pool) or 'none'})",
                        )
                    )
                elif ref.scope == "item" and ref.name not in _ITEM_FIELDS:
                    problems.append(("cmd", f"{ref}: items have {', '.join(_ITEM_FIELDS)}"))
        return problems

    def run(self, ctx: Context) -> dict[str, Any]:
        return self._run(ctx, ctx.item)

    def run_item(self, ctx: Context, item: Item) -> dict[str, Any]:
        return self._run(ctx, item)

    def _run(self, ctx: Context, item: Item | None) -> dict[str, Any]:
        root = str(ctx.root)
        prefix = os.path.join(root, "")

        def rel(p: Any) -> str:
            p = str(p)
            if p.startswith(prefix) and _plain(p):  # the usual case, without relpath
                return p[len(prefix) :]
            r = os.path.relpath(p, root)
            return p if r.startswith("..") else r

        def lookup(ref: Ref, quote: Callable[[str], str] = shlex.quote) -> str:
            if ref.scope == "inputs":
                value = ctx.inputs[ref.name]
                if isinstance(value, list):
                    return " ".join(quote(rel(v)) for v in value)
                return quote(rel(value))
            if ref.scope == "outputs":
                return quote(rel(ctx.outputs[ref.name]))
            if ref.scope == "item":
                if item is None:
                    raise RuleError(f"{ref} is only defined in a stage with foreach")
                return quote(getattr(item, ref.name))
            raise RuleError(f"unresolved reference {ref}")

        cmd = render(ctx.params["cmd"], lookup)
        env = {  # a variable's value is the text itself: no shell quoting
            k: str(render(v, lambda r: lookup(r, str)))
            for k, v in (ctx.params.get("env") or {}).items()
        }
        # ctx.sh runs it in the project root with the task's environment plus env (a foreach
        # task's items share one shell, each in a subshell); a timeout or a stop ends it
        tail: deque[str] = deque(maxlen=30)

        def output(line: str) -> None:
            tail.append(line)
            ctx.log.info(line)

        code = ctx.sh(cmd, env=env, output=output, fresh=item is None)
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            if item is not None and 128 < code <= 128 + 64:  # how the shared shell says it
                sig = code - 128
                how += f" (or was killed by signal {sig}: a shell reports that as 128 + {sig})"
            shown = "\n".join("    " + t for t in tail)
            raise RuleError(
                f"command {how}:\n    $ {cmd}" + (f"\n  output:\n{shown}" if tail else "")
            )
        return {}

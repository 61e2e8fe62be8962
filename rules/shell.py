"""The ``shell`` rule: run a command with ``/bin/sh -c`` in the project root.

``config: {cmd, inputs: {NAME: path}, outputs: {NAME: path}, env: {K: V}}``. In ``cmd``,
``{inputs.NAME}`` is the input's path and ``{outputs.NAME}`` its staging path, both relative
to the project root; with ``foreach``, ``{item.name}``, ``{item.stem}`` and
``{item.relpath}`` describe the item; ``{stage.NAME}`` is an upstream stage's computed value.
Each is written so that the shell reads back exactly its text, quoted for where it stands
(``_shell_quote``); in ``env`` a value is the text itself (JSON unless it is a string). The
key holds the ``cmd`` template with the paths left symbolic, and ``env``; never the
inherited environment. A foreach task's items share one shell, each run in a subshell of it
(``Context.sh``).
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Mapping
from typing import Any

from pipemake.rule import Context, Item, Ports, Rule, RuleError
from pipemake.templates import Ref, TemplateError, parse, render

from ._named_ports import named_ports, unknown_keys
from ._shell_quote import check_places, write

__all__ = ["ShellRule"]

_ITEM_FIELDS = ("name", "stem", "relpath")


def _plain(path: str) -> bool:
    """Whether ``path`` has no ``.`` or ``..`` component (a hidden name such as
    ``.pipemake`` is fine), so cutting the root off it gives its relative path."""
    return "/./" not in path and "/../" not in path and not path.endswith(("/.", "/.."))


def _env_text(ref: Ref, value: Any) -> str:
    """A value in ``env``: a string is the text itself; anything else (a number, true,
    false, null, a list, a mapping) its JSON text, so a list of paths with blanks in them
    survives (``jq -r '.[]'`` or ``json.loads`` read it back)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if "\0" in text:
        raise TemplateError(f"{ref} holds a NUL character, which no environment variable can hold")
    return text


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
        if "cmd" not in config:
            problems.append(("cmd", "missing 'cmd': the shell command to run"))
        elif cmd is not None and not isinstance(cmd, str):
            what = {bool: "true or false", int: "a number", float: "a number", list: "a list"}
            got = what.get(type(cmd), "a mapping" if isinstance(cmd, dict) else "no text")
            problems.append(("cmd", f"'cmd' must be a string, got {got}: quote it (cmd: \"...\")"))
        elif not (cmd or "").strip():
            problems.append(("cmd", "'cmd' is empty: give the shell command to run"))
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
            if key == "cmd":
                problems += [("cmd", msg) for msg in check_places(text)]
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

    def quote_value(self, key: str, ref: Ref, value: Any, template: str, index: int) -> str:
        """How pipemake writes an upstream stage's computed value into ``cmd`` (quoted for
        the shell where it stands; a list is its items as separate words) or ``env`` (the
        text itself), so that a value, wherever it came from, is data and never code."""
        if key == "cmd":
            return write(ref, value, template, index)
        return _env_text(ref, value)

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

        def lookup(ref: Ref) -> Any:
            if ref.scope == "inputs":
                value = ctx.inputs[ref.name]
                return [rel(v) for v in value] if isinstance(value, list) else rel(value)
            if ref.scope == "outputs":
                return rel(ctx.outputs[ref.name])
            if ref.scope == "item":
                if item is None:
                    raise RuleError(f"{ref} is only defined in a stage with foreach")
                return getattr(item, ref.name)
            # pipemake writes computed values in before the stage runs: one left here was
            # not resolved, and is never run as text
            raise RuleError(
                f"{ref} was not resolved before the command ran; refer to an output or a "
                f"computed value of an upstream stage, or pass it through env:"
            )

        try:
            cmd = render(ctx.params["cmd"], lookup, quote=write)
            env = {  # a variable's value is the text itself: no shell quoting
                k: render(v, lookup, quote=lambda r, val, t, i: _env_text(r, val))
                for k, v in (ctx.params.get("env") or {}).items()
            }
        except TemplateError as exc:
            raise RuleError(str(exc)) from None
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

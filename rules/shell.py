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

``cmd`` may be a list of commands (DVC's ``cmd: [a, b]``): each is written as a string
``cmd`` is and runs on its own, in order; the first that fails stops the stage and is
named. A one-element list keys as its string.
"""

from __future__ import annotations

import datetime
import json
import os
from collections import deque
from collections.abc import Mapping
from typing import Any

from pipemake.rule import Context, Item, Ports, Rule, RuleError
from pipemake.templates import Ref, TemplateError, escape, parse, render

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


def _data(value: Any, name: str) -> Any:
    """A value written in ``env`` (a ``{params.*}`` used whole is its value, strings in it
    with their braces doubled) as plain data: strings their text; a date its ISO text."""
    if isinstance(value, str):
        try:
            parts = parse(value)
        except TemplateError as exc:
            raise TemplateError(f"env {name}: {exc}") from None
        refs = [p for p in parts if isinstance(p, Ref)]
        if refs:
            raise TemplateError(
                f"env {name}: {refs[0]} inside a list or mapping is not written into it; "
                f'give it a variable of its own ({name}: "{refs[0]}")'
            )
        return "".join(str(p) for p in parts)
    if isinstance(value, list):
        return [_data(v, name) for v in value]
    if isinstance(value, dict):
        return {k: _data(v, name) for k, v in value.items()}
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return value


def _env_templates(env: Any) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """``env`` as the templates each variable's text is rendered from, and what is wrong
    with it. A string is a template as it is; anything else (a number, true, false, null,
    a list, a mapping, most often a ``{params.*}`` used whole) its JSON text, as README
    says, so ``N: "{params.models}"`` gives ``["a", "b"]``; a value with no JSON text is
    refused, naming the variable."""
    if env is None:
        return {}, []
    if not isinstance(env, dict):
        return {}, [("env", f"'env' must map variable names to values, got {_kind(env)}: "
                     "write env: {NAME: value, ...}")]  # fmt: skip
    out: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for name, value in env.items():
        if not isinstance(name, str) or not name:
            problems.append(("env", f"env: variable name {name!r} must be a word such as "
                             "N or MODEL_DIR: quote it"))  # fmt: skip
            continue
        if isinstance(value, str):
            out[name] = value
            continue
        try:
            data = _data(value, name)
            text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        except TemplateError as exc:
            problems.append(("env", str(exc)))
            continue
        except (TypeError, ValueError):
            problems.append(("env", f"env {name}: {_kind(value)} {value!r:.40} has no text "
                             "an environment variable can hold: quote it (\"...\")"))  # fmt: skip
            continue
        out[name] = escape(text)
    return out, problems


def _commands(cmd: Any) -> list[Any]:
    """The commands of ``cmd``: a list's elements, or the string itself."""
    return list(cmd) if isinstance(cmd, list) else [cmd]


_KINDS = {
    str: "a string",
    bool: "true or false",
    int: "a number",
    float: "a number",
    type(None): "empty",
}


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    return "a list" if isinstance(value, list) else _KINDS.get(type(value), type(value).__name__)


def _cmd_problems(cmd: Any) -> list[tuple[str, str]]:
    """What is wrong with ``cmd`` as written: a string, or a list of strings run one after
    another (as DVC's ``cmd: [a, b]``)."""
    if cmd is None:
        return [("cmd", "'cmd' is empty: give the shell command to run")]
    if isinstance(cmd, list):
        if not cmd:
            return [("cmd", "'cmd' is an empty list: give one command or a list of commands, "
                     'e.g. cmd: ["mkdir -p build", "make"]')]  # fmt: skip
        problems = []
        for i, one in enumerate(cmd):
            if one is None or (isinstance(one, str) and not one.strip()):
                problems.append(("cmd", f"cmd[{i}] is empty: give a shell command, or remove "
                                 "the element"))  # fmt: skip
            elif not isinstance(one, str):
                problems.append(("cmd", f"cmd[{i}] must be a string (a shell command), got "
                                 f"{_kind(one)} {one!r:.40}: quote it (- \"...\")"))  # fmt: skip
        return problems
    if not isinstance(cmd, str):
        return [("cmd", f"'cmd' must be a string, got {_kind(cmd)}: quote it (cmd: \"...\"), "
                 "or give a list of commands, one string each")]  # fmt: skip
    if not cmd.strip():
        return [("cmd", "'cmd' is empty: give the shell command to run")]
    return []


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
        else:
            problems += _cmd_problems(cmd)
        if isinstance(cmd, list) and len(cmd) == 1:
            cmd = cmd[0]  # one command: the same command (and key) as written as a string
        env, env_problems = _env_templates(config.get("env"))
        problems += env_problems
        problems += named_ports(config, ports)
        ports.params = {"cmd": cmd, "env": env}
        return ports, problems

    def check(self, ports: Ports) -> list[tuple[str, str]]:
        problems = []
        cmd = ports.params["cmd"]
        many = isinstance(cmd, list)
        texts = [(f"cmd[{i}]" if many else "cmd", t) for i, t in enumerate(_commands(cmd))]
        texts += ports.params["env"].items()
        for key, text in texts:
            if not isinstance(text, str):
                continue  # said by ports()
            said = "cmd" if key.startswith("cmd") else "env"
            try:
                refs = [p for p in parse(text) if isinstance(p, Ref)]
            except TemplateError as exc:
                problems.append((said, f"{key}: {exc}" if key.startswith("cmd[") else str(exc)))
                continue
            if said != "env":
                lead = f"{key}: " if key.startswith("cmd[") else ""
                problems += [("cmd", lead + msg) for msg in check_places(text)]
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
            cmds = [render(c, lookup, quote=write) for c in _commands(ctx.params["cmd"])]
            env = {  # a variable's value is the text itself: no shell quoting
                k: render(v, lookup, quote=lambda r, val, t, i: _env_text(r, val))
                for k, v in (ctx.params.get("env") or {}).items()
            }
        except TemplateError as exc:
            raise RuleError(str(exc)) from None
        # ctx.sh runs each in the project root with the task's environment plus env (a
        # foreach task's items share one shell, each command in a subshell); a timeout or
        # a stop ends it. The commands of a list run one after another, each on its own
        # (nothing one sets reaches the next), and the first that fails stops the stage.
        tail: deque[str] = deque(maxlen=30)

        def output(line: str) -> None:
            tail.append(line)
            ctx.log.info(line)

        for n, cmd in enumerate(cmds, 1):
            tail.clear()
            code = ctx.sh(cmd, env=env, output=output, fresh=item is None)
            if code != 0:
                raise RuleError(_failed(code, cmd, n, len(cmds), item is not None, tail))
        return {}


def _failed(code: int, cmd: str, n: int, total: int, shared: bool, tail: deque[str]) -> str:
    """Why the stage failed: which command (``n`` of ``total``), how it ended, its text and
    the last lines it printed."""
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    if shared and 128 < code <= 128 + 64:  # how the shared shell says it
        sig = code - 128
        how += f" (or was killed by signal {sig}: a shell reports that as 128 + {sig})"
    which = "command" if total == 1 else f"command {n} of {total} (cmd[{n - 1}])"
    rest = f"; the {total - n} after it did not run" if n < total else ""
    shown = "\n".join("    " + t for t in tail)
    return f"{which} {how}{rest}:\n    $ {cmd}" + (f"\n  output:\n{shown}" if tail else "")

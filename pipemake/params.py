"""Values from outside the pipeline file: a params file and ``--set`` overrides.

A pipeline may name one or more params files (``params: params.yaml``, as DVC's
``params.yaml``); their keys are used in configs as ``{params.x}`` or
``{params.section.key}``. Each reference is replaced by its value when the pipeline is
loaded, so a stage's key holds the values it uses and nothing else: changing one key of the
file reruns only the stages that use that key, never everyone who reads the file.

``--set vars.NAME=VALUE`` and ``--set params.KEY=VALUE`` (repeatable) override a variable
or a params key for one command, exactly as editing the file would: the value is read as
YAML (``3`` is a number, ``a.mp4`` a string), and keys change with it.
"""

from __future__ import annotations

import datetime
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import Problems, UsageError, suggest
from .templates import Ref, TemplateError, escape, parse
from .yamlload import LineDict, YamlError, load_yaml

__all__ = [
    "Override",
    "UnknownParam",
    "apply_overrides",
    "load_params",
    "lookup_param",
    "params_hash",
    "parse_overrides",
    "substitute_params",
]

#: the two places ``--set`` can change
_SCOPES = ("vars", "params")


class UnknownParam(TemplateError):
    """A ``{params.*}`` reference names a key the params files do not have."""


@dataclass(frozen=True)
class Override:
    """One ``--set SCOPE.PATH=VALUE``: where (``vars`` or ``params``, then the keys) and
    the value as YAML reads it."""

    scope: str
    path: tuple[str, ...]
    value: Any
    text: str

    def __str__(self) -> str:
        return f"{self.scope}.{'.'.join(self.path)}"


def _yaml_value(text: str) -> Any:
    """``text`` as the value YAML gives it in a pipeline file (``3`` → 3, ``true`` → True,
    ``[a, b]`` → a list); a text YAML reads as a block mapping (``a: b``) or cannot read
    stays the text."""
    if text.strip() == "":
        return text
    try:
        value = load_yaml(text)
    except YamlError:
        return text
    if isinstance(value, dict | list) and not text.lstrip().startswith(("{", "[")):
        return text
    if isinstance(value, LineDict):
        return dict(value)
    return value


def parse_overrides(items: Sequence[str]) -> list[Override]:
    """The ``--set`` values of a command line; a malformed one is a :class:`UsageError`."""
    out: list[Override] = []
    for item in items:
        name, eq, text = item.partition("=")
        name = name.strip()
        scope, _, rest = name.partition(".")
        path = tuple(rest.split(".")) if rest else ()
        if not eq or scope not in _SCOPES or not path or not all(path):
            raise UsageError(
                f"--set {item!r}: write --set vars.NAME=VALUE or --set params.KEY=VALUE "
                "(params.SECTION.KEY for a nested key)"
            )
        out.append(Override(scope, path, _yaml_value(text), text))
    return out


def apply_overrides(
    target: dict[str, Any], overrides: Sequence[Override], scope: str, where: str
) -> dict[str, Any]:
    """``target`` (the pipeline's vars, or its params) with the overrides of ``scope`` set.
    A name that is not there is a :class:`UsageError` naming the ones that are: a typo
    would otherwise build with the old value and say nothing."""
    result = _copy(target)
    for ov in overrides:
        if ov.scope != scope:
            continue
        node: Any = result
        for depth, key in enumerate(ov.path):
            if not isinstance(node, dict):
                above = ".".join(ov.path[:depth])
                raise UsageError(
                    f"--set {ov}: {scope}.{above} is {_kind(node)}, not a mapping of keys"
                )
            if key not in node:
                known = sorted(map(str, node))
                at = f"{scope}.{'.'.join(ov.path[:depth])}" if depth else scope
                what = "variable" if scope == "vars" and depth == 0 else "key"
                hint = suggest(key, known)
                raise UsageError(
                    f"--set {ov}: {where} has no {what} {key!r}"
                    + (f"; {hint}" if hint else "")
                    + f" ({at}: {', '.join(known) or 'none'})"
                )
            if depth == len(ov.path) - 1:
                node[key] = ov.value
            else:
                node = node[key]
    return result


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return "a " + type(value).__name__


def load_params(doc: LineDict, root: Path, ld: Problems) -> tuple[dict[str, Any], dict[str, str]]:
    """The merged keys of the pipeline's params files (a later file overrides an earlier
    one key by key; mappings merge) and each file's content hash by its path. Problems (a
    missing file, malformed YAML, not a mapping) are noted in ``ld``."""
    spec = doc.get("params")
    if spec is None:
        return {}, {}
    line = doc.line_of("params")
    names = [spec] if isinstance(spec, str) else spec
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        ld.problem(
            "'params' must name a params file, or a list of them",
            line,
            hint="params: params.yaml",
        )
        return {}, {}
    merged: dict[str, Any] = {}
    files: dict[str, str] = {}
    for name in names:
        path = Path(name) if Path(name).is_absolute() else root / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            what = {"toml": "a TOML file of keys and values", "json": "a JSON object"}.get(
                _format(name), "a YAML mapping of keys to values"
            )
            ld.problem(
                f"params file {name} does not exist",
                line,
                hint=f"create {name} ({what}), or fix the path",
            )
            continue
        except OSError as exc:
            ld.problem(f"cannot read params file {name}: {exc.strerror or exc}", line)
            continue
        files[str(path)] = params_hash(data)
        if _format(name) == "python":
            ld.problem(
                f"params file {name} is Python, which pipemake does not run to read values: "
                "params files are YAML, JSON or TOML",
                line,
                hint=f"write the values into params.yaml (or .json, .toml) and name it instead "
                f"of {name}",
            )
            continue
        try:
            values = _read(name, data)
        except _NotValid as exc:
            ld.problem(str(exc), line, hint=f"fix {name}")
            continue
        if not isinstance(values, dict):
            ld.problem(f"params file {name} must be a mapping of keys to values", line)
            continue
        _merge(merged, _plain(values))
    return merged, files


class _NotValid(ValueError):
    """A params file its format cannot read: the message names the file, the line and what
    is wrong."""


def _format(name: str) -> str:
    """How a params file is read, by its name: ``toml``, ``json``, ``python`` (refused), or
    ``yaml`` (any other name, as before TOML and JSON were told apart)."""
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return {"toml": "toml", "json": "json", "py": "python"}.get(suffix, "yaml")


def _read(name: str, data: bytes) -> Any:
    """A params file's values as its format gives them (DVC reads ``params.yaml``,
    ``params.json`` and ``params.toml``); :class:`_NotValid` when it cannot."""
    kind = _format(name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _NotValid(f"params file {name} is not UTF-8 text ({exc.reason} at byte "
                        f"{exc.start})") from None  # fmt: skip
    if kind == "toml":
        return _read_toml(name, text)
    if kind == "json" and text.strip():
        import json

        try:
            return json.loads(text, object_pairs_hook=_unique_pairs)
        except _DuplicateKey as exc:
            line, first = _json_key_lines(text, exc.key)
            raise _NotValid(
                f"params file {name} is not valid JSON ({name}:{line}): duplicate key "
                f"{exc.key!r}" + (f" (first at line {first})" if first else "")
            ) from None
        except json.JSONDecodeError as exc:
            raise _NotValid(
                f"params file {name} is not valid JSON ({name}:{exc.lineno}, column "
                f"{exc.colno}): {exc.msg}"
            ) from None
        except RecursionError:
            raise _NotValid(f"params file {name}: values are nested too deeply") from None
    try:
        return load_yaml(text) if text.strip() else {}
    except YamlError as exc:
        at = f" at line {exc.line}" if exc.line else ""
        raise _NotValid(f"params file {name}{at} is not valid YAML: {exc}") from None


class _DuplicateKey(ValueError):
    """A JSON object names a key twice (``json`` would keep the last value silently)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict; :class:`_DuplicateKey` when a key comes twice, as
    YAML and TOML params files refuse it."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"\s*:?|[{}]')


def _json_key_lines(text: str, key: str) -> tuple[int, int | None]:
    """The line of the first repeated ``key`` in one JSON object of ``text`` (and of its
    first occurrence there): a key is a string followed by ``:``, and each ``{`` opens an
    object of its own (strings are skipped whole, so braces inside them do not count)."""
    import json

    objects: list[dict[str, int]] = []
    for token in _JSON_TOKEN.finditer(text):
        part = token.group()
        if part == "{":
            objects.append({})
        elif part == "}":
            if objects:
                objects.pop()
        elif part.endswith(":") and objects:
            try:
                name = json.loads(part[:-1].rstrip())
            except ValueError:
                continue
            line = text.count("\n", 0, token.start()) + 1
            if name == key and name in objects[-1]:
                return line, objects[-1][name]
            objects[-1].setdefault(name, line)
    return 1, None


_TOML_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _read_toml(name: str, text: str) -> dict[str, Any]:
    """A TOML params file's table (tomllib; tomli before Python 3.11), its dates and times
    as the text they are written as (a key holds JSON values)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - the tomli dependency of Python 3.10
        import tomli as tomllib
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        found = _TOML_AT.search(msg)
        if found is not None:
            msg = msg[: found.start()]
            where = f"{name}:{found.group(1)}, column {found.group(2)}"
        else:
            where = name
        raise _NotValid(f"params file {name} is not valid TOML ({where}): {msg}") from None
    except RecursionError:
        raise _NotValid(f"params file {name}: values are nested too deeply") from None
    return _as_text_times(values)  # type: ignore[no-any-return]


def _as_text_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _as_text_times(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_text_times(v) for v in value]
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return value


def params_hash(data: bytes) -> str:
    """A params file's content hash, as the plan cache checks it."""
    import hashlib  # not at import: loading OpenSSL costs every command milliseconds

    return hashlib.sha256(data).hexdigest()


def _plain(value: Any) -> Any:
    """LineDicts as plain dicts: what the plan cache stores and the key hashes."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _merge(into: dict[str, Any], more: Mapping[str, Any]) -> None:
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def lookup_param(params: Mapping[str, Any], ref: Ref, files: Sequence[str] = ()) -> Any:
    """The value ``{params.a.b}`` names; a :class:`TemplateError` naming the keys there are
    (and the params ``files`` read) when it names none."""
    node: Any = params
    path = ref.name.split(".")
    for depth, key in enumerate(path):
        if not isinstance(node, dict) or key not in node:
            at = "params" + "".join("." + k for k in path[:depth])
            if not isinstance(node, dict):
                raise TemplateError(f"{ref}: {at} is {_kind(node)}, not a mapping of keys")
            known = sorted(map(str, node))
            hint = suggest(key, known)
            raise UnknownParam(
                f"{ref}: {_files_have(files)} no key {'.'.join(path[: depth + 1])!r}"
                + (f"; {hint}" if hint else "")
                + f" ({at}: {', '.join(known) or 'none'})"
            )
        node = node[key]
    return node


def _files_have(files: Sequence[str]) -> str:
    """``params.yaml has``, ``the params files (a.yaml, b.json) have``: who lacks a key."""
    if len(files) == 1:
        return f"{files[0]} has"
    if files:
        return f"the params files ({', '.join(files)}) have"
    return "the params files have"


def _escaped(value: Any) -> Any:
    """A value as it stands in a config after substitution: strings with their braces
    doubled, so the loader's own template pass reads them back as the very text."""
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    return value


def _render(text: str, params: Mapping[str, Any], files: Sequence[str]) -> Any:
    if "{" not in text and "}" not in text:
        return text
    try:
        parts = parse(text)
    except TemplateError:
        return text  # malformed: the loader's own pass reports it, with its line
    if not any(isinstance(p, Ref) and p.scope == "params" for p in parts):
        return text
    if len(parts) == 1:  # the whole value: it keeps its type (a number, a list, …)
        return _escaped(lookup_param(params, parts[0], files))  # type: ignore[arg-type]
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(escape(part))
        elif part.scope != "params":
            out.append(str(part))
        else:
            value = lookup_param(params, part, files)
            if isinstance(value, list | dict):
                kind = "a list" if isinstance(value, list) else "a mapping"
                raise TemplateError(
                    f"{part} is {kind} and cannot be used inside the string {text!r}; "
                    "use it as the whole value"
                )
            out.append(escape(str(value)))
    return "".join(out)


def substitute_params(value: Any, params: Mapping[str, Any], files: Sequence[str] = ()) -> Any:
    """``value`` (a stage's config value) with every ``{params.*}`` replaced by its value;
    other references stay (a missing key's message names the params ``files``). Mappings
    are changed in place, so a :class:`LineDict` keeps the lines of its keys."""
    if isinstance(value, str):
        return _render(value, params, files)
    if isinstance(value, list):
        return [substitute_params(v, params, files) for v in value]
    if isinstance(value, dict):
        for key in list(value):
            value[key] = substitute_params(value[key], params, files)
    return value

"""Template strings in pipeline files: ``{stage.NAME}``, ``{vars.x}``, ``{inputs.NAME}``,
``{outputs.NAME}``, ``{item.name}``; ``{{`` and ``}}`` are literal braces.

A template is parsed once into literal text and references; resolving it is a separate step
that takes a lookup function, so the loader (static checks) and the builder (real values)
share one parser.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Ref", "TemplateError", "find_refs", "parse", "render", "substitute"]

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_REF = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)\.([A-Za-z_][A-Za-z0-9_-]*)$")


class TemplateError(ValueError):
    """A string holds a malformed reference."""


@dataclass(frozen=True)
class Ref:
    """A reference ``{scope.name}`` inside a template."""

    scope: str
    name: str

    def __str__(self) -> str:
        return "{" + f"{self.scope}.{self.name}" + "}"


@functools.lru_cache(maxsize=1 << 16)
def _parse(text: str) -> tuple[str | Ref, ...]:
    return tuple(_parse_uncached(text))


def parse(text: str) -> list[str | Ref]:
    """Split a template into literal strings and :class:`Ref` objects."""
    return list(_parse(text))


def _parse_uncached(text: str) -> list[str | Ref]:
    parts: list[str | Ref] = []
    literal: list[str] = []
    pos = 0
    for match in _TOKEN.finditer(text):
        literal.append(text[pos : match.start()])
        pos = match.end()
        token = match.group(0)
        if token == "{{":
            literal.append("{")
        elif token == "}}":
            literal.append("}")
        elif token in ("{", "}"):
            raise TemplateError(
                f"unmatched {token!r} in {text!r}; write {token * 2!r} for a literal brace"
            )
        else:
            inner = match.group(1)
            ref = _REF.match(inner.strip())
            if ref is None:
                raise TemplateError(
                    f"{token!r} in {text!r} is not a reference of the form "
                    "{stage.output} or {vars.name}; write {{ and }} for literal braces"
                )
            text_before = "".join(literal)
            if text_before:
                parts.append(text_before)
            literal = []
            parts.append(Ref(ref.group(1), ref.group(2)))
    literal.append(text[pos:])
    tail = "".join(literal)
    if tail:
        parts.append(tail)
    return parts


def _walk_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _walk_strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _walk_strings(v)


def find_refs(value: Any) -> list[Ref]:
    """Every reference in a config value (strings inside lists and mappings too)."""
    refs: list[Ref] = []
    for text in _walk_strings(value):
        if "{" in text or "}" in text:
            refs.extend(p for p in parse(text) if isinstance(p, Ref))
    return refs


def render(
    text: str, lookup: Callable[[Ref], Any], keep: Callable[[Ref], bool] | None = None
) -> Any:
    """Resolve one template string.

    A string that is exactly one reference takes the referenced value as it is (a list stays
    a list); inside a longer string a list is an error. References for which ``keep`` says
    True stay as they are (written back as ``{scope.name}``), and so do the braces around
    them, which lets ``{outputs.x}`` stay symbolic in a key.
    """
    if "{" not in text and "}" not in text:
        return text
    parts = parse(text)
    if keep is not None and not any(isinstance(p, Ref) and keep(p) for p in parts):
        keep = None
    if len(parts) == 1 and isinstance(parts[0], Ref) and keep is None:
        return lookup(parts[0])
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part.replace("{", "{{").replace("}", "}}") if keep else part)
        elif keep and keep(part):
            out.append(str(part))
        else:
            value = lookup(part)
            if isinstance(value, list | dict):
                raise TemplateError(
                    f"{part} is a list and cannot be used inside the string {text!r}; "
                    "use it as the whole value"
                )
            out.append(str(value).replace("{", "{{").replace("}", "}}") if keep else str(value))
    return "".join(out)


def substitute(
    value: Any, lookup: Callable[[Ref], Any], keep: Callable[[Ref], bool] | None = None
) -> Any:
    """Resolve every template inside a config value (lists and mappings included)."""
    if isinstance(value, str):
        return render(value, lookup, keep)
    if isinstance(value, list):
        return [substitute(v, lookup, keep) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, lookup, keep) for k, v in value.items()}
    return value

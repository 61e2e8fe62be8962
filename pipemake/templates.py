"""Template strings in pipeline files: ``{stage.NAME}``, ``{vars.x}``, ``{inputs.NAME}``,
``{outputs.NAME}``, ``{item.name}``; ``{{`` and ``}}`` are literal braces.

A template is parsed once into literal text and references; resolving it is a separate step
that takes a lookup function, so the loader (static checks) and the builder (real values)
share one parser.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Deferred",
    "Quote",
    "Ref",
    "TemplateError",
    "escape",
    "find_refs",
    "parse",
    "render",
    "strings",
    "substitute",
]

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_REF = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)\.([A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*)$")
#: the one scope whose references may name a nested key: ``{params.section.key}``
NESTED_SCOPE = "params"


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
            if "." in ref.group(2) and ref.group(1) != NESTED_SCOPE:
                raise TemplateError(
                    f"{token!r} in {text!r}: only {{params.SECTION.KEY}} may name a nested "
                    "key; other references are {stage.output} or {vars.name}"
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


def strings(value: Any, *, tuples: bool = False, keys: bool = False) -> list[str]:
    """Every string inside a config value, depth first in the order written: a mapping's
    values (never its keys) and a list's items, nested to any depth; numbers, booleans and
    None hold none. One walk for every reader of a config's text (references, the paths a
    template writes, the paths a stage with a problem may name).

    ``tuples`` walks tuples as lists are walked; a pipeline file never holds one, but a
    rule's own ``ports()`` may hand one back. ``keys`` also gives a mapping's string keys,
    each before its value (a params file may key weights by path)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) or (tuples and isinstance(value, tuple)):
        return [s for v in value for s in strings(v, tuples=tuples, keys=keys)]
    if isinstance(value, dict):
        return [
            s
            for k, v in value.items()
            for s in ([k] if keys and isinstance(k, str) else [])
            + strings(v, tuples=tuples, keys=keys)
        ]
    return []


def find_refs(value: Any) -> list[Ref]:
    """Every reference in a config value (strings inside lists and mappings too)."""
    refs: list[Ref] = []
    for text in strings(value):
        if "{" in text or "}" in text:
            refs.extend(p for p in parse(text) if isinstance(p, Ref))
    return refs


class Deferred:
    """A value not known yet (the loader's placeholder for an upstream stage's computed
    value). A lookup may return one; :func:`render` never writes it out as text."""

    __slots__ = ()


#: ``quote(ref, value, template, index)``: how a looked-up value is written into a template
#: string (``index`` counts the references of ``template`` before it); None to write it as
#: plain text
Quote = Callable[[Ref, Any, str, int], "str | None"]


def escape(text: str) -> str:
    """``text`` as a template whose rendering is ``text`` itself (braces doubled)."""
    return text.replace("{", "{{").replace("}", "}}")


def _text(ref: Ref, value: Any, template: str, kept: bool) -> str:
    if isinstance(value, list | dict):
        kind = "a list" if isinstance(value, list) else "a mapping"
        if not kept:
            raise TemplateError(
                f"{ref} is {kind} and cannot be used inside the string {template!r}; "
                "use it as the whole value"
            )
        raise TemplateError(f"{ref} is {kind} and cannot be written into {template!r}")
    return str(value)


def render(
    text: str,
    lookup: Callable[[Ref], Any],
    keep: Callable[[Ref], bool] | None = None,
    quote: Quote | None = None,
) -> Any:
    """Resolve one template string.

    Without ``keep``, a string that is exactly one reference takes the referenced value as
    it is (a list stays a list); inside a longer string a list is an error, and a string
    holding a :class:`Deferred` value becomes that value (the whole string waits for it).

    With ``keep`` (a config key that stays a template, such as a shell ``cmd``) the result
    is always a template again: references for which ``keep`` says True stay as they are,
    so does a reference whose value is :class:`Deferred`, and literal braces and braces in
    the values are escaped, which lets ``{outputs.x}`` stay symbolic in a key.

    ``quote``, when given, writes each looked-up value (a shell quotes it for the place in
    the command where it stands), so the result is text even for a lone reference; where
    it returns None the value is written as text.
    """
    if "{" not in text and "}" not in text:
        return text
    parts = parse(text)
    if keep is None and quote is None and len(parts) == 1 and isinstance(parts[0], Ref):
        return lookup(parts[0])
    out: list[str] = []
    deferred: Deferred | None = None
    index = -1
    for part in parts:
        if isinstance(part, str):
            out.append(escape(part) if keep is not None else part)
            continue
        index += 1
        if keep is not None and keep(part):
            out.append(str(part))
            continue
        value = lookup(part)
        if isinstance(value, Deferred):
            deferred = deferred or value
            out.append(str(part))
            continue
        written = quote(part, value, text, index) if quote is not None else None
        if written is None:
            written = _text(part, value, text, keep is not None)
        out.append(escape(written) if keep is not None else written)
    if deferred is not None and keep is None:
        return deferred
    return "".join(out)


def substitute(
    value: Any,
    lookup: Callable[[Ref], Any],
    keep: Callable[[Ref], bool] | None = None,
    quote: Quote | None = None,
) -> Any:
    """Resolve every template inside a config value (lists and mappings included)."""
    if isinstance(value, str):
        return render(value, lookup, keep, quote)
    if isinstance(value, list):
        return [substitute(v, lookup, keep, quote) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, lookup, keep, quote) for k, v in value.items()}
    return value

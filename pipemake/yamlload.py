"""YAML loading that remembers line numbers, with libyaml's C parser when it is present.

Mappings load as :class:`LineDict`, a dict that knows the line of its own start and of
each key, so every problem in a pipeline file can name its line.

Anchors and aliases work (``<<: *defaults`` merges, and a stage's own key overrides a merged
one), but what aliases may add is bounded: a few hundred bytes of nested aliases (a "billion
laughs" file) would otherwise expand to billions of values for everything that walks the
document, so such a file is refused before anything is built from it.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["MAX_DEPTH", "LineDict", "YamlError", "YamlTooBig", "load_yaml"]


class LineDict(dict):
    """A dict from YAML that knows its line (``.line``) and each key's (``.lines[key]``)."""

    line: int = 0
    lines: dict[str, int]

    def line_of(self, key: str) -> int:
        """The 1-based line of ``key``, or of the mapping itself when the key is absent."""
        return self.lines.get(key, self.line)


class YamlError(Exception):
    """Malformed YAML: the message and 1-based line."""

    def __init__(self, message: str, line: int | None):
        super().__init__(message)
        self.line = line


class YamlTooBig(YamlError):
    """Well-formed YAML beyond what a pipeline file needs: aliases that expand far beyond the
    file (an alias bomb), or values nested deeper than :data:`MAX_DEPTH`."""

    def __init__(self, message: str, line: int | None, hint: str):
        super().__init__(message, line)
        self.hint = hint


#: How deeply values may nest (a pipeline needs a handful of levels; the checks that walk
#: them recurse)
MAX_DEPTH = 100
_SHALLOWER = "nest the values less deeply"


#: Aliases may make the document this many values (a long string counts as several) bigger
#: than the file's own nodes...
_EXTRA_VALUES = 200_000
#: ...or this many times bigger, whichever allows more (a big file of many small merges).
_EXPANSION = 10


def _expanded_sizes(root: Any) -> tuple[dict[int, int], dict[int, int], int]:
    """Each collection node's size and height (by ``id``) once every alias in it is replaced
    by its target, and how many values the file itself holds (sizes weighed by
    :func:`_weight`)."""
    sizes: dict[int, int] = {}
    heights: dict[int, int] = {}
    opened: set[int] = set()
    scalars: set[int] = set()
    written = 1
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if done:  # a recursive alias adds nothing here: the constructor refuses it
            sizes[id(node)] = 1 + sum(
                _weight(c) if c.value.__class__ is str else sizes.get(id(c), 0) for c in children
            )
            heights[id(node)] = 1 + max((heights.get(id(c), 0) for c in children), default=0)
        elif id(node) not in opened:
            opened.add(id(node))
            for c in children:
                if c.value.__class__ is not str:
                    written += 1
                elif id(c) not in scalars:
                    scalars.add(id(c))
                    written += _weight(c)
            stack.append((node, True))
            stack.extend((c, False) for c in children if c.value.__class__ is not str)
    return sizes, heights, written


def _children(node: Any) -> list[Any]:
    value = node.value
    if value.__class__ is str or not value:
        return []
    if value[0].__class__ is tuple:
        return [n for pair in value for n in pair]
    return value


def _weight(scalar: Any) -> int:
    """A scalar counts once per 64 characters, so one long string aliased many times is
    bounded like many values are."""
    return 1 + (len(scalar.value) >> 6)


def _size(node: Any, sizes: dict[int, int]) -> int:
    return _weight(node) if node.value.__class__ is str else sizes[id(node)]


def _check_expansion(root: Any) -> None:
    """Raise :class:`YamlTooBig` when aliases blow the document up far beyond the file."""
    if root.value.__class__ is str:
        return
    sizes, heights, written = _expanded_sizes(root)
    if heights[id(root)] > MAX_DEPTH:
        node = root
        for _ in range(MAX_DEPTH):  # down the deepest branch, to the first level too deep
            node = max(_children(node), key=lambda c: heights.get(id(c), 0))
        raise YamlTooBig(
            f"values are nested {heights[id(root)]:,} levels deep; the limit is {MAX_DEPTH}",
            node.start_mark.line + 1,
            _SHALLOWER,
        )
    limit = max(written + _EXTRA_VALUES, written * _EXPANSION)
    if sizes[id(root)] <= limit:
        return
    node = root
    while True:  # the smallest node that is too big alone: the line that shows the bomb
        bigger = [c for c in _children(node) if _size(c, sizes) > limit]
        if not bigger:
            break
        node = bigger[0]
    raise YamlTooBig(
        f"YAML aliases expand this file to {sizes[id(root)]:,} values, more than the "
        f"{limit:,} allowed (an alias bomb?); refused before expanding it",
        node.start_mark.line + 1,
        "write the values out, or nest fewer aliases",
    )


_MERGE = "tag:yaml.org,2002:merge"
_VALUE = "tag:yaml.org,2002:value"


def _construct_mapping(loader: Any, node: Any) -> LineDict:
    """A mapping as a :class:`LineDict`. ``<<:`` merges are done here, as the YAML merge-key
    spec says and the same way every time: a key written in the mapping overrides a merged
    one, and of several merged mappings the earlier wins."""
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.lines = {}
    merged: list[LineDict] = []
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE:
            merged.extend(_merge_sources(loader, value_node))
            continue
        if key_node.tag == _VALUE:
            key = key_node.value
        else:
            key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise YamlError(
                "a mapping key must be a plain value", key_node.start_mark.line + 1
            ) from None
        if key in result:
            raise YamlError(f"duplicate key {key!r}", key_node.start_mark.line + 1)
        result[key] = loader.construct_object(value_node, deep=True)
        if isinstance(key, str):
            result.lines[key] = key_node.start_mark.line + 1
    for source in merged:
        for key, value in source.items():
            if key not in result:
                result[key] = value
                if key in source.lines:
                    result.lines[key] = source.lines[key]
    return result


def _merge_sources(loader: Any, value_node: Any) -> list[LineDict]:
    """The mappings a ``<<:`` key merges, earliest (strongest) first."""
    import yaml

    nodes = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
    sources = []
    for sub in nodes:
        if not isinstance(sub, yaml.MappingNode):
            raise YamlError(
                f"'<<' merges mappings (or a list of them), not a {sub.id}",
                sub.start_mark.line + 1,
            )
        sources.append(loader.construct_object(sub, deep=True))
    return sources


@functools.cache
def _loader() -> Any:
    """The loader class, made on first use: a run whose plan is cached never imports yaml."""
    import yaml

    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class _Loader(base):  # type: ignore[misc, valid-type]
        """The safe loader, with two shortcuts for big pipeline files: a scalar's implicit tag is
        looked up once per distinct text, and plain strings are taken as they are."""

        _tags: dict[tuple[str, bool], str] = {}

        def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
            if kind is yaml.ScalarNode and implicit[0]:
                key = (value, implicit[1])
                tag = self._tags.get(key)
                if tag is None:
                    tag = super().resolve(kind, value, implicit)
                    if len(self._tags) < 100_000:
                        self._tags[key] = tag
                return tag
            return super().resolve(kind, value, implicit)

        def construct_document(self, node: Any) -> Any:
            _check_expansion(node)
            return super().construct_document(node)

        def construct_yaml_str(self, node: Any) -> Any:
            if isinstance(node, yaml.ScalarNode):
                return node.value
            return super().construct_yaml_str(node)

    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
    _Loader.add_constructor("tag:yaml.org,2002:str", _Loader.construct_yaml_str)
    return _Loader


def load_yaml(text: str) -> Any:
    """Parse ``text``; raise :class:`YamlError` with a line number when it is malformed."""
    import yaml

    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 - a safe loader subclass
    except YamlError:
        raise
    except RecursionError:
        raise YamlTooBig(
            "values are nested too deeply", None, "nest the values less deeply"
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        opened = exc.context_mark
        at_end = exc.problem_mark is None or exc.problem_mark.index >= len(text.rstrip())
        if opened is not None and at_end and opened.line != (mark.line if mark else -1):
            # the end of the file is only where it noticed: say where the thing began
            line = opened.line + 1
            where = f"line {line}, column {opened.column + 1}"
            message = (
                f"the quote opened at {where} is never closed (the file ended inside it)"
                if "quoted scalar" in str(exc.context or "")
                else f"{exc.context} begun at {where}: {exc.problem} before the file ended"
            )
        tab = _tab_near(text, mark.line, mark.column) if mark is not None else None
        if tab is not None:
            message = (
                f"a tab character (line {line}, column {tab + 1}): YAML indents with spaces "
                "only (replace the tab with spaces)"
            )
        raise YamlError(message or str(exc), line) from None
    except yaml.YAMLError as exc:
        raise YamlError(str(exc), None) from None


def _tab_near(text: str, line: int, column: int) -> int | None:
    """The 0-based column of the tab that most likely broke the parse at ``line``: the one
    at the error's column, else one in the line's indentation; None when there is none."""
    lines = text.splitlines()
    if not 0 <= line < len(lines):
        return None
    row = lines[line]
    if 0 <= column < len(row) and row[column] == "\t":
        return column
    indent = row[: len(row) - len(row.lstrip(" \t"))]
    return indent.index("\t") if "\t" in indent else None

"""YAML loading that remembers line numbers, with libyaml's C parser when it is present.

Mappings load as :class:`LineDict`, a dict that knows the line of its own start and of
each key, so every problem in a pipeline file can name its line.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["LineDict", "YamlError", "load_yaml"]


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


def _construct_mapping(loader: Any, node: Any) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.lines = {}
    for key_node, value_node in node.value:
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
    return result


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
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise YamlError(message or str(exc), line) from None
    except yaml.YAMLError as exc:
        raise YamlError(str(exc), None) from None

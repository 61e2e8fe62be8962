"""Parsing a big pipeline file one stage at a time, with a cache of the stages' parses.

Editing one stage of a 10,000-stage file should not cost a full YAML parse (~1.5 s with
libyaml's C parser): the ``stages:`` list is cut into one text per stage, each parsed alone
or taken from ``.pipemake/yaml-chunks.json`` by the hash of its text, with line numbers
shifted back to the file's. Anything this plain cutting cannot be sure of — anchors,
aliases, tags, tabs, several documents, a flow-style list, a chunk that does not parse —
falls back to parsing the whole file, so errors and results are exactly the full parse's.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from .hashing import hash_bytes
from .yamlload import LineDict, load_yaml

__all__ = ["load_yaml_cached"]

_STAGES = re.compile(r"^stages:[ ]*(#.*)?$")
_RISKY = re.compile(r"(^|[\s\[{,])[&*!][A-Za-z_!]|\t|^---|^%", re.M)
_FORMAT = 1


class _Unsure(Exception):
    """The cut or the cache cannot be trusted: parse the whole file instead."""


def _split(lines: list[str]) -> tuple[int, int, list[int]] | None:
    """``(stages line, end line, item start lines)`` (0-based), or None if unsure."""
    heads = [i for i, line in enumerate(lines) if _STAGES.match(line)]
    if len(heads) != 1:
        return None
    head = heads[0]
    indent: str | None = None
    starts: list[int] = []
    end = len(lines)
    for j in range(head + 1, len(lines)):
        line = lines[j]
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        if indent is None:
            if not stripped.startswith("- "):
                return None
            indent = line[: len(line) - len(stripped)]
        if line.startswith(indent + "- "):
            starts.append(j)
        elif line.startswith(indent + " ") and line[len(indent)] == " ":
            if not starts:
                return None
        elif not line.startswith(" ") and not line.startswith("-"):
            end = j  # the next top-level key
            break
        else:
            return None
    return (head, end, starts) if starts else None


def _encode(value: Any) -> Any:
    if isinstance(value, LineDict):
        return {"d": [[k, value.lines.get(k), _encode(v)] for k, v in value.items()],
                "l": value.line}  # fmt: skip
    if isinstance(value, list):
        return {"a": [_encode(v) for v in value]}
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise _Unsure()


def _decode(enc: Any, off: int) -> Any:
    if isinstance(enc, dict):
        if "a" in enc:
            return [_decode(v, off) for v in enc["a"]]
        out = LineDict()
        out.line = enc["l"] + off
        out.lines = {}
        for key, line, value in enc["d"]:
            out[key] = _decode(value, off)
            if isinstance(key, str) and line is not None:
                out.lines[key] = line + off
        return out
    return enc


def _read(cache: Path) -> dict[str, Any]:
    try:
        with open(cache) as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        return {}
    chunks = doc.get("chunks")
    return chunks if isinstance(chunks, dict) else {}


def _write(cache: Path, chunks: dict[str, Any]) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".chunks-")
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps({"format": _FORMAT, "chunks": chunks}, separators=(",", ":")))
        os.replace(tmp, cache)
    except (OSError, TypeError, ValueError):
        pass  # only a cache


def load_yaml_cached(text: str, cache: Path | None) -> Any:
    """Parse a pipeline file like :func:`~pipemake.yamlload.load_yaml`, reusing the parse of
    every stage whose text is unchanged since the last call with the same cache."""
    if cache is None or _RISKY.search(text):
        return load_yaml(text)
    lines = text.split("\n")
    cut = _split(lines)
    if cut is None:
        return load_yaml(text)
    head, end, starts = cut
    header = "\n".join(lines[: head + 1] + [""] * (end - head - 1) + lines[end:])
    try:
        doc = load_yaml(header)
        if not isinstance(doc, LineDict) or doc.get("stages") is not None:
            raise _Unsure()
        stored = _read(cache)
        used: dict[str, Any] = {}
        stages = []
        for n, start in enumerate(starts):
            stop = starts[n + 1] if n + 1 < len(starts) else end
            chunk = "\n".join(lines[start:stop])
            key = hash_bytes(chunk.encode("utf-8", "surrogateescape"))
            enc = stored.get(key)
            if enc is None:
                parsed = load_yaml(chunk)
                if not isinstance(parsed, list) or len(parsed) != 1:
                    raise _Unsure()
                enc = _encode(parsed[0])
            used[key] = enc
            stages.append(_decode(enc, start))
    except Exception:  # a chunk that does not parse alone, or anything odd: the full parse
        return load_yaml(text)
    doc["stages"] = stages
    if used.keys() != stored.keys():
        _write(cache, used)
    return doc

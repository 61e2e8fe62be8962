"""How a ``custom`` stage's config keys are read: input paths, output paths or params
(the rule is told in :mod:`pipemake.rules.custom`'s docstring), and the path checks that
go with it. Pure functions of the config, the project root and the file system."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipemake.model import Pending, within

__all__ = ["away", "is_paths", "reading", "untracked"]

#: with ``input`` or ``output``, a word that makes a key a path (``output_format`` is not)
_PATH_WORDS = {"dir", "dirs", "directory", "folder", "path", "paths", "file", "files", "root",
               "video", "videos", "image", "images"}  # fmt: skip
#: the last word of a key whose value is a path (``model_path``; not ``video_codec``)
_PATH_LAST = {"dir", "dirs", "directory", "folder", "folders", "path", "paths", "file",
              "files", "root"}  # fmt: skip
#: with such a last word, words that make a key a path the stage writes (``save_dir``)
_OUT_WORDS = {"out", "save", "saved", "dest", "destination", "dst", "target", "export",
              "write", "result", "results"}  # fmt: skip
#: with such a last word, words of the executor's own scratch space (``cache_dir``): params
_SCRATCH = {"tmp", "temp", "cache", "scratch", "work", "log", "logs"}


def _words(key: str) -> set[str]:
    return set(key.lower().replace("-", "_").split("_"))


def _named_as(key: str, word: str) -> bool:
    """Whether ``key`` names an input (``word`` ``input``) or output path by its words:
    ``input``/``output`` alone, or with a word such as ``dir``, ``path`` or ``file``."""
    words = _words(key)
    return bool({word, word + "s"} & words) and (len(words) == 1 or bool(words & _PATH_WORDS))


def reading(key: str, value: Any) -> str:
    """How a key no ``inputs:``/``outputs:`` list names is read, from the pipeline file
    alone (never from what is on disk, which a build changes): ``output``, ``input`` or
    ``param`` (see the module's docstring)."""
    if _named_as(key, "output"):
        return "output"
    parts = key.lower().replace("-", "_").split("_")
    words = set(parts)
    pathish = len(parts) > 1 and parts[-1] in _PATH_LAST
    if pathish and words & _OUT_WORDS:
        return "output" if _in_project(value) else "param"
    if not is_paths(value) or not _plain_paths(value):
        return "param"
    if _named_as(key, "input"):
        return "input"
    return "input" if pathish and not words & _SCRATCH else "param"


def _plain_paths(value: Any) -> bool:
    """Whether a path value is one pipemake can hash: not a URL, not ``~/…``."""
    values = value if isinstance(value, list) else [value]
    return not any(isinstance(v, str) and ("://" in v or v.startswith("~")) for v in values)


def away(root: Path, key: str, value: str) -> str | None:
    """Why the output ``key``, not named ``output…``, must not be one: a path inside the
    project that a symlink leads out of it (pipemake would replace what lies there)."""
    if _named_as(key, "output") or os.path.isabs(value):
        return None  # named as an output, or a path outside written out: as the user said
    top = os.path.realpath(root)
    real = os.path.realpath(os.path.join(top, value))
    if within(real, top):
        return None
    return (
        f"output {key!r} ({value}) leads out of the project through a symlink, to {real}; "
        "pipemake would replace what is there. Give a path inside the project, or write "
        f"{real} itself and list {key!r} in `outputs: [...]` if pipemake should manage it"
    )


def _in_project(value: Any) -> bool:
    """Whether ``value`` is a relative path that stays inside the project."""
    if not isinstance(value, str) or not value or os.path.isabs(value):
        return False
    parts = os.path.normpath(value).split(os.sep)
    return parts[0] not in ("..", ".", "")


def is_paths(value: Any) -> bool:
    """Whether ``value`` can be a path port: a non-empty string (or a value an upstream
    stage computes), or a non-empty list of them."""
    if isinstance(value, str | Pending):
        return bool(value)
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, str | Pending) and v for v in value)
    )


def untracked(
    outputs: Mapping[str, Any], staged: list[str], inputs: Mapping[str, Any], root: Path
) -> Iterator[tuple[str, str]]:
    """The result's outputs (name, path relative to the project) that name an existing
    path in the project outside the stage's outputs, its inputs and ``.pipemake``: what
    the executor wrote where pipemake does not look."""
    top = os.path.realpath(root)
    known = [os.path.realpath(p) for p in staged]
    for value in inputs.values():
        known += [os.path.realpath(v) for v in (value if isinstance(value, list) else [value])]
    known.append(os.path.join(top, ".pipemake"))
    for key, value in outputs.items():
        if not isinstance(value, str | os.PathLike) or not os.fspath(value):
            continue
        path = os.path.realpath(os.path.join(top, os.fspath(value)))
        if within(path, top) and path != top and os.path.lexists(path):
            if not any(within(path, k) or within(k, path) for k in known):
                yield str(key), os.path.relpath(path, top)

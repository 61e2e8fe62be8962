"""Has the environment changed? The one answer every cache that outlives a process asks for:
the plan cache (``plan.json``), the rule registry cache (``rules.json``) and the no-op
snapshot (``uptodate.json``).

The environment is the interpreter (Python's version and executable), what is installed
for it (each ``sys.path`` directory's mtime: installing, upgrading or removing a
distribution adds or removes an entry there) and the source files of pipemake and of the
rules' packages (a rule edited in place — a param's default, say — changes its file's stat).
Stdlib only, so the no-op snapshot can ask before the engine is imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["code_files", "environment", "mtimes", "stamp", "unchanged"]


def mtimes(paths: Iterable[str]) -> list[list[Any]]:
    """Each path with its mtime in ns (None if it cannot be stat-ed; "" is the working
    directory): what installing or removing anything under a ``sys.path`` entry moves."""
    out: list[list[Any]] = []
    for p in paths:
        try:
            out.append([p, os.stat(p or ".").st_mtime_ns])
        except OSError:
            out.append([p, None])
    return out


def environment() -> list[Any]:
    """The interpreter and its installed distributions: ``[version, executable, sys.path
    directories with their mtimes]``, as plain JSON-able lists."""
    return [sys.version, sys.executable, mtimes(sys.path)]


def code_files(packages: Iterable[str]) -> set[str]:
    """The source files of every loaded module of these top-level packages (pipemake, a
    rule package): what a cached answer that depends on the rules' code must re-stat."""
    tops = set(packages)
    return {
        path
        for name, module in list(sys.modules.items())
        if name.partition(".")[0] in tops and (path := getattr(module, "__file__", None) or "")
    }


def _stat(path: str) -> list[int]:
    try:
        st = os.stat(path)
    except OSError:
        return [-1, -1, -1]
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def stamp(paths: Iterable[str]) -> list[list[Any]]:
    """``[path, size, mtime_ns, ctime_ns]`` of each path, sorted (``-1``s when missing):
    an edit, a reinstall or a removal changes it."""
    return [[p, *_stat(p)] for p in sorted(paths)]


def unchanged(stamped: Iterable[list[Any]]) -> bool:
    """Whether every path of a :func:`stamp` still has the stat it had."""
    return all(_stat(path) == list(sig) for path, *sig in stamped)

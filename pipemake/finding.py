"""Where a project is when a command runs in one of its subfolders: the pipeline file in
the nearest folder above, as git and DVC find theirs. Its own light module (``os`` and
``pathlib`` only): the no-op snapshot's answer uses it before the engine is imported."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PIPELINE_FILES", "find_above", "using"]

#: the pipeline files a folder is looked in for, in order: pipemake's own, else the
#: original system's
PIPELINE_FILES = ("pipemake.yaml", "pipeline.yaml")


def find_above(start: Path, names: Sequence[str]) -> Path | None:
    """The pipeline file of the project ``start`` lies in, below its root (a command run
    from a subfolder, as git and DVC find theirs): the first of ``names`` in the nearest
    folder above ``start`` holding one. The search stops at the filesystem root and at a
    folder holding ``.git`` (a repository's top, looked in first): a project is never
    taken from outside the repository the command runs in. None when there is none."""
    here = start.absolute()
    if os.path.lexists(here / ".git"):
        return None  # the top of a repository: nothing above it is this project's
    while here.parent != here:
        here = here.parent
        for name in names:
            if (here / name).is_file():
                return here / name
        if os.path.lexists(here / ".git"):
            return None
    return None


def using(path: Path, above: bool) -> str:
    """The line a command that names no pipeline file says on stderr when the file it uses
    is not ``pipemake.yaml`` in the current folder: one ``above`` it (shown whole), or the
    original system's ``pipeline.yaml`` (shown relative to the current folder when below it)."""
    if above:
        return f"pipemake: using {path} (found above the current folder)"
    rel = os.path.relpath(path)
    shown = str(path) if rel.startswith("..") else rel
    return f"pipemake: using {shown} (there is no {PIPELINE_FILES[0]})"

"""Naming what to build: a stage id, or (as Make users type) a path a stage outputs.

``pipemake build build/report.txt`` builds the stage whose output is that path or holds it
(a file inside an output folder, a foreach item's output); a folder holding outputs names
every stage writing inside it. A path is read relative to the project root first (as
``make -C DIR`` reads its targets), then to the current folder; typed in a subfolder of
the project (where a command finds the pipeline file above it), relative to that folder
first, as git reads paths.

A missing source input of a stage the targets do not need is only a warning
(:func:`scope_missing`): ``make main.o`` builds while ``kbd.c`` is missing, and so do ``dvc
repro STAGE`` and Snakemake. Without targets (everything), and for ``validate``, it stays an
error.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Sequence

from .binding import MissingSource, MissingSources, in_project
from .errors import PipelineError, UsageError
from .items import glob_base, is_glob
from .model import Pipeline

__all__ = ["resolve_target", "resolve_targets", "scope_missing", "typed_below"]


def resolve_targets(p: Pipeline, targets: Sequence[str], cwd: str | None = None) -> list[str]:
    """The stage ids ``targets`` name (ids or output paths), in the order given, each once;
    a target naming neither is a :class:`UsageError`."""
    return list(dict.fromkeys(s for t in targets for s in resolve_target(p, t, cwd)))


#: whether a relative target path is read against the current folder first: so when the
#: command line found the pipeline file in a folder above it (see :func:`typed_below`)
_typed_below = False


def typed_below(below: bool = True) -> None:
    """Whether relative target paths are read against the current folder first, then the
    project root: so when the command was typed in a subfolder of the project, whose
    pipeline file was found by looking upward (with ``-C``/``-f`` they are read against the
    project root first, as ``make -C`` reads them). Each command sets it anew."""
    global _typed_below
    _typed_below = below


def _candidates(p: Pipeline, target: str, cwd: str | None) -> list[str]:
    """The target as a path of the pipeline: as written against the project root, then
    against the current folder (when that differs); the other way round when the pipeline
    was found above the current folder (:func:`typed_below`)."""
    root = str(p.root)
    out = []
    if os.path.isabs(target):
        out.append(in_project(target, root))
    else:
        where = os.path.abspath(cwd or os.getcwd())
        out.append(in_project(os.path.join(root, target), root))
        out.append(in_project(os.path.join(where, target), root))
        if _typed_below:
            out.reverse()  # typed in a subfolder of the project: from there first
    return list(dict.fromkeys(c for c in out if c not in ("", ".")))


def resolve_target(p: Pipeline, target: str, cwd: str | None = None) -> list[str]:
    """The stages ``target`` names: a stage id; or a path that is a stage's output or lies
    inside one (that stage), or a folder holding outputs (every stage writing inside it,
    in file order)."""
    if target in p.stages:
        return [target]
    paths = _candidates(p, target, cwd)
    for path in paths:
        owner = p.output_owner(path)
        if owner is not None:
            return [owner[0]]
    for path in paths:
        inside = [
            st.id
            for st in p.stages.values()
            if any(out.startswith(path.rstrip("/") + "/") for out in st.ports.outputs.values())
        ]
        if inside:
            return inside
    raise UsageError(_unknown(p, target, paths[0] if paths else target))


def _unknown(p: Pipeline, target: str, path: str) -> str:
    """Why ``target`` names nothing: close stage ids and output paths, and whether it is a
    source input (which no stage builds)."""
    outputs = {out: st.id for st in p.stages.values() for out in st.ports.outputs.values()}
    looks_like_path = "/" in target or "." in target
    close_ids = difflib.get_close_matches(target, list(p.stages), n=1)
    close_outs = difflib.get_close_matches(path, list(outputs), n=2, cutoff=0.5)
    text = f"unknown target {target!r}"
    if looks_like_path:
        text += f": no stage outputs {path}"
        readers = _readers(p, path)
        if readers:
            text += f" (it is a source input of {', '.join(readers)}: nothing builds it)"
    hints = [f"{c!r}" for c in close_ids]
    hints += [f"{c} (stage {outputs[c]!r})" for c in close_outs]
    if hints:
        text += f"; did you mean {' or '.join(hints)}?"
    return text + f" (stages: {', '.join(p.stages)})"


def _readers(p: Pipeline, path: str) -> list[str]:
    """The stages that read ``path`` (or a folder holding it) as an input."""
    found = []
    for st in p.stages.values():
        for value in st.ports.inputs.values():
            for inp in value if isinstance(value, list) else [value]:
                if not isinstance(inp, str):
                    continue
                base = glob_base(inp) if is_glob(inp) else inp
                if path == base or path.startswith(base.rstrip("/") + "/"):
                    found.append(st.id)
    return list(dict.fromkeys(found))


def scope_missing(
    exc: MissingSources, targets: Sequence[str], warn: Callable[[str], None] | None = None
) -> Pipeline:
    """The pipeline of ``exc`` for a command on ``targets``, when none of its missing source
    inputs belongs to a stage the targets need: each is said to ``warn`` (else stderr) as one
    line, and ``pipeline.scoped_out`` lists them. Raises ``exc`` again without targets, and a
    :class:`PipelineError` naming the missing inputs the targets do need."""
    if not targets:
        raise exc
    p = exc.pipeline
    needed = p.graph.ancestors(resolve_targets(p, targets))
    missing = [pr for pr in exc.problems if isinstance(pr, MissingSource)]
    inside = [pr for pr in missing if pr.stage in needed]
    if inside:
        raise PipelineError(list(inside))
    say = warn or (lambda text: print(text, file=sys.stderr))
    for pr in missing:
        text = (
            f"warning: {pr.file}:{pr.line}: stage {pr.stage!r}: {pr.message}; not needed for "
            f"{', '.join(targets)}, so left out"
        )
        p.scoped_out.append(text)
        say(text)
    return p

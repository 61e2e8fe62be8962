"""The pipeline model: checked stages, their graph, and where the pipeline lives.

:mod:`pipemake.pipeline` builds it from a file (checking everything); the build reads it.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .dag import Graph
from .finding import PIPELINE_FILES
from .rule import Ports, Rule
from .templates import Deferred

__all__ = [
    "DEFAULT_FILE",
    "LOCK_FILE",
    "SYMBOLIC_SCOPES",
    "Foreach",
    "Pending",
    "Pipeline",
    "Stage",
    "norm",
]

DEFAULT_FILE = PIPELINE_FILES[0]
#: the lock file every build writes at the project root (see :mod:`pipemake.lockfile`)
LOCK_FILE = "pipemake.lock"
SYMBOLIC_SCOPES = ("inputs", "outputs", "item")


@dataclass(frozen=True)
class Pending(Deferred):
    """A computed value of an upstream stage, known only once that stage has run."""

    stage: str
    name: str

    def __str__(self) -> str:
        return "{" + f"{self.stage}.{self.name}" + "}"


@dataclass(frozen=True)
class Foreach:
    """``foreach``: run the rule once per file of input ``input``, filtered by ``pattern``."""

    input: str
    pattern: str | None = None


@dataclass
class Stage:
    """One checked stage: its raw config (templates unresolved), rule, static ports and edges."""

    id: str
    type: str
    rule: Rule
    config: dict[str, Any]
    ports: Ports
    deps: list[str]
    line: int = 0
    lines: dict[str, int] = field(default_factory=dict)
    foreach: Foreach | None = None
    resources: dict[str, float] = field(default_factory=dict)
    retries: int | None = None  # None: not set (the build's --retries applies)
    retry_backoff: float = 1.0
    timeout: float | None = None
    version: str | None = None
    #: no reference to a computed value: ``ports`` (params included) are final at load time
    static: bool = False
    #: the stages named in its ``depends_on`` (``deps`` adds those its references name)
    after: list[str] = field(default_factory=list)
    #: the stages in ``deps`` only because a path it reads holds their output (a folder, a
    #: glob or a foreach pattern over it): they order it, and nothing more, as what they
    #: put there is hashed as its input (per item for a foreach); not in its key's upstream
    placed: list[str] = field(default_factory=list)
    #: for each config key (as the rule names it) whose text uses ``{params.*}`` or
    #: ``{vars.*}``: ``{"text": digest of its text as written, "refs": {"params.lr": 42}}``.
    #: Kept in its last-build record beside the key, never in it, so a rerun can say
    #: ``params.lr 42 → 43`` instead of the whole command (see :func:`pipemake.decide.explain`)
    templates: dict[str, Any] = field(default_factory=dict)

    def items_pattern(self, key: str) -> str | None:
        """The ``foreach`` pattern that picks the items of its input ``key`` (None when
        ``key`` is not the input it iterates over, or no pattern narrows it)."""
        if self.foreach is None or self.foreach.input != key:
            return None
        return self.foreach.pattern


@dataclass
class Pipeline:
    """A checked pipeline: its stages in file order, their graph, and where it lives."""

    name: str
    version: str
    vars: dict[str, Any]
    stages: dict[str, Stage]
    graph: Graph
    root: Path
    file: Path
    on_success: Any = None
    on_failure: Any = None
    #: the params files the stages' ``{params.*}`` came from: path → content hash
    params_files: dict[str, str] = field(default_factory=dict)
    #: ``lock_file:``: whether ``build`` writes ``pipemake.lock`` (see :mod:`pipemake.lockfile`)
    lock_file: bool = True
    #: the remote store's URL from the file's ``remote:`` key (a path: relative to root)
    remote: str | None = None
    #: the warnings of a command whose targets let a missing source input pass (see
    #: :func:`pipemake.targets.scope_missing`): such a build leaves no no-op snapshot
    scoped_out: list[str] = field(default_factory=list)
    _owners: dict[str, tuple[str, str]] | None = field(default=None, repr=False)

    def output_owner(self, path: str) -> tuple[str, str, str] | None:
        """``(stage, output name, path inside the output)`` when ``path`` is an output of a
        stage or lies inside one."""
        if self._owners is None:
            self._owners = {
                out: (stage.id, name)
                for stage in self.stages.values()
                for name, out in stage.ports.outputs.items()
            }
        probe = path
        while probe and probe not in (".", "/"):
            owner = self._owners.get(probe)
            if owner is not None:
                return owner[0], owner[1], path[len(probe) + 1 :]
            probe = posixpath.dirname(probe)
        return None

    def own_files(self) -> dict[str, str]:
        """The files pipemake itself reads or writes for this pipeline, as the pipeline
        keeps paths (relative to the root when inside it), each with what it is: the
        pipeline file, its params files and the lock. No stage may output one (a build
        would overwrite it) nor a folder holding one."""
        root = str(self.root)
        own = {LOCK_FILE: f"{LOCK_FILE}, the lock file every build rewrites"}
        for name in self.params_files:
            clean = norm(name)
            rel = posixpath.relpath(clean, root) if within(clean, root) else clean
            own[rel] = f"the params file {rel}"
        own[self.file.name] = f"the pipeline file {self.file.name}"
        return own


def within(path: str, parent: str) -> bool:
    """Whether ``path`` is ``parent`` or lies inside it, both written the same way (both
    normalized, or both real paths); ``.`` or an empty ``parent`` (the project) holds all."""
    return parent in (".", "") or path == parent or path.startswith(parent.rstrip("/") + "/")


def norm(path: str) -> str:
    """A path in POSIX form without ``.`` or ``..`` parts; an absolute path starts with
    exactly one ``/`` (POSIX lets ``//data`` differ from ``/data``; here they are one)."""
    if not path:
        return path
    clean = posixpath.normpath(path.replace(os.sep, "/"))
    return "/" + clean.lstrip("/") if clean.startswith("//") else clean

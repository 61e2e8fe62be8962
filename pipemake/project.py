"""A loaded project: its checked pipeline, its store (and the remote behind it) and its
workspace state, as :func:`pipemake.api.open_project` opens them for every command; and
where a project is when a command runs in one of its subfolders (:func:`find_above`).

Its own module, below :mod:`pipemake.api`, so that the parts a command hands it to (the
lock file, garbage collection) need not import the API that calls them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .model import Pipeline
from .state import WorkspaceState
from .store import Store
from .workspace import Workspace

if TYPE_CHECKING:  # loaded only where a remote is used
    from .remote import Remote

__all__ = ["Project", "find_above"]


@dataclass
class Project:
    """A loaded pipeline with its store and workspace state."""

    pipeline: Pipeline
    store: Store
    state: WorkspaceState
    workspace: Workspace
    #: the remote store behind the local one (``--remote``, ``PIPEMAKE_REMOTE``, the
    #: pipeline's ``remote:``), or None; consulted only by build, dry-run, status, pull, push
    remote: Remote | None = None
    #: a remote a build was told and this workspace does not remember yet: remembered
    #: once that build ends without a failure (so a remote that cannot be used is not)
    remote_to_remember: str | None = None

    def close(self) -> None:
        """Flush the stat cache and close the databases."""
        self.state.close()
        self.store.close()


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

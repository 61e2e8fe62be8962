"""A loaded project: its checked pipeline, its store (and the remote behind it) and its
workspace state, as :func:`pipemake.api.open_project` opens them for every command.

Its own module, below :mod:`pipemake.api`, so that the parts a command hands it to (the
lock file, garbage collection) need not import the API that calls them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .finding import find_above
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

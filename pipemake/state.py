"""The workspace's own state under ``.pipemake/``: one SQLite file
(:mod:`pipemake.statedb`) holding two things — the stat cache (:mod:`pipemake.statcache`,
``state.stats``) and the build records (:mod:`pipemake.records`, ``state.builds``: each
stage's last build, foreach item notes, and the output paths builds placed).
"""

from __future__ import annotations

from pathlib import Path

from .records import NEVER, Brief, BuildRecords
from .statcache import StatCache, StatRow, TreeRow, tree_data
from .statedb import STATE_FORMAT, StateFile

__all__ = [
    "NEVER",
    "STATE_FORMAT",
    "Brief",
    "BuildRecords",
    "StatCache",
    "StatRow",
    "TreeRow",
    "WorkspaceState",
    "tree_data",
]


class WorkspaceState(StateFile):
    """The workspace state file with its two parts: ``stats`` (the stat cache) and
    ``builds`` (the build records)."""

    def __init__(self, path: Path, readonly: bool = False):
        super().__init__(path, readonly)
        self.stats = StatCache(self)
        self.builds = BuildRecords(self)

    def flush(self) -> None:
        """Write the stat cache's pending rows (build records are written as they come)."""
        self.stats.flush()

    def close(self) -> None:
        """Write what is pending and close; then raise why a write was skipped, if one was
        (a full disk: :class:`~pipemake.errors.DiskFull`), once."""
        try:
            self.flush()
        finally:
            super().close()

"""The workspace's own state under ``.pipemake/``: one SQLite file
(:mod:`pipemake.statedb`) holding two things — the stat cache (:mod:`pipemake.statcache`,
``state.stats``) and the build records (:mod:`pipemake.records`, ``state.builds``: each
stage's last build, foreach item notes, and the output paths builds placed) — and which
pipeline file each stage was last built from (several may share a workspace).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from .records import NEVER, Brief, BuildRecords
from .statcache import StatCache, StatRow, TreeRow, tree_data
from .statedb import STATE_FORMAT, StateFile, parse_json, spared

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

    def stage_files(self) -> dict[str, str]:
        """Each stage id → the pipeline file (its name, in the project folder) whose
        stage it last was: what tells apart several pipeline files sharing the workspace,
        as ``cache gc``'s roots do in the store (one record per pipeline file). Kept as one
        row of ``meta``, so the schema (and state files written before) stay as they are."""
        row = self.db.execute("SELECT value FROM meta WHERE name='stage_files'").fetchone()
        found = parse_json(row[0]) if row else None
        if not isinstance(found, dict):
            return {}
        return {s: f for s, f in found.items() if isinstance(f, str)}

    @spared
    def set_stage_files(self, file: str, stages: Iterable[str]) -> None:
        """Note ``stages`` as stages of the pipeline file ``file`` (written when that
        changes anything)."""
        if self.readonly:
            return
        known = self.stage_files()
        new = {**known, **dict.fromkeys(stages, file)}
        if new != known:
            self.db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('stage_files', ?)",
                (json.dumps(new, sort_keys=True),),
            )

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

"""The workspace's own state under ``.pipemake/``: one SQLite file
(:mod:`pipemake.statedb`) holding two things — the stat cache (:mod:`pipemake.statcache`,
``state.stats``) and the build records (:mod:`pipemake.records`, ``state.builds``: each
stage's last build, foreach item notes, and the output paths builds placed) — and each
pipeline file's stages and output paths (several may share a workspace, even with stages
of the same id).
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

    def pipeline_files(self) -> dict[str, tuple[set[str], set[str]]]:
        """Each pipeline file (its name) → the stage ids it had and the output paths its
        stages declared, in every build of it here (paths while builds still list them as
        placed): what tells apart several pipeline files sharing the workspace, even with
        stages of the same id, as ``cache gc``'s roots do in the store (one record per
        pipeline file).
        Empty in a state written before it was kept. Kept as one row of ``meta``, so the
        schema (and state files written before) stay as they are."""
        row = self.db.execute("SELECT value FROM meta WHERE name='pipeline_files'").fetchone()
        found = parse_json(row[0]) if row else None
        if not isinstance(found, dict):
            return {}
        out: dict[str, tuple[set[str], set[str]]] = {}
        for file, rec in found.items():
            if not isinstance(file, str) or not isinstance(rec, dict):
                continue
            stages, paths = rec.get("stages"), rec.get("paths")
            out[file] = (
                {s for s in stages if isinstance(s, str)} if isinstance(stages, list) else set(),
                {q for q in paths if isinstance(q, str)} if isinstance(paths, list) else set(),
            )
        return out

    @spared
    def set_stage_files(
        self,
        file: str,
        stages: Iterable[str],
        paths: Iterable[str] = (),
        placed: Iterable[str] | None = None,
    ) -> None:
        """Note ``stages`` as the stages of the pipeline file ``file`` (as it is now), and
        ``paths`` as outputs its stages declare (added to what its earlier builds noted;
        ``placed``: the paths the build records still list as placed; a noted path of any
        file no longer there is forgotten). Written when that changes anything."""
        if self.readonly:
            return
        stages = list(stages)
        now = set(paths)
        before = self.pipeline_files()
        files = {**before, file: (set(stages), before.get(file, (set(), set()))[1] | now)}
        keep = None if placed is None else set(placed) | now
        new = {
            f: {"paths": sorted(q for q in ps if keep is None or q in keep), "stages": sorted(ss)}
            for f, (ss, ps) in files.items()
        }
        old = {f: {"paths": sorted(ps), "stages": sorted(ss)} for f, (ss, ps) in before.items()}
        if new != old:
            self.db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('pipeline_files', ?)",
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

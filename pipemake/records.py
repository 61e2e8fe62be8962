"""Build records in the workspace state file (:mod:`pipemake.state`): each stage's last
build (its key, key document, result and duration, read in brief for every stage at once),
a foreach stage's item hashes, remembered key and item index, and the ledger of output paths
builds have placed (for orphans).
"""

from __future__ import annotations

import json
import marshal
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from .hashing import hash_bytes
from .statedb import parse_json, spared, unmarshal

if TYPE_CHECKING:
    from .statedb import StateFile

__all__ = ["NEVER", "Brief", "BuildRecords"]


class Brief(NamedTuple):
    """A stage's last build in brief, read for every stage at once: its key, how it ended
    (``ok``, ``failed``, ``interrupted``) and how long it took (s)."""

    key: str | None
    result: str | None
    duration: float | None


#: the brief of a stage never built
NEVER = Brief(None, None, None)


class BuildRecords:
    """The build records of one workspace state file."""

    def __init__(self, file: StateFile):
        self._file = file
        self._brief: dict[str, Brief] | None = None

    def record(self, stage: str) -> dict[str, Any] | None:
        """The stage's last-build record (key, params, input hashes, result), or None."""
        row = self._file.db.execute("SELECT record FROM records WHERE stage=?", (stage,)).fetchone()
        return _record(row[0]) if row else None

    def records(self) -> dict[str, dict[str, Any]]:
        """Every stage's last-build record."""
        rows = self._file.db.execute("SELECT stage, record FROM records")
        return {s: rec for s, r in rows if (rec := _record(r)) is not None}

    def brief(self) -> dict[str, Brief]:
        """Every stage's last key, result and duration, without reading the whole records
        (read once; later writes keep the copy current)."""
        if self._brief is None:
            self._brief = {
                s: Brief(_str(k), _str(r), d if isinstance(d, int | float) else None)
                for s, k, r, d in self._file.db.execute(
                    "SELECT stage, key, result, duration FROM records"
                )
            }
        return self._brief

    @spared
    def set_record(self, stage: str, record: dict[str, Any]) -> None:
        """Write a stage's last-build record (key, key document, result, duration, …)."""
        if self._file.readonly:
            return
        brief = Brief(record.get("key"), record.get("result"), record.get("duration"))
        self._file.db.execute(
            "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?)",
            (stage, *brief, json.dumps(record, sort_keys=True)),
        )
        if self._brief is not None:
            self._brief[stage] = brief

    def item_hashes(self, stage: str) -> dict[str, str] | None:
        """A foreach stage's items at its last build (relpath → content hash)."""
        row = self._file.db.execute("SELECT hashes FROM items WHERE stage=?", (stage,)).fetchone()
        hashes = parse_json(row[0]) if row else None
        ok = isinstance(hashes, dict) and all(isinstance(h, str) for h in hashes.values())
        return hashes if ok else None

    @spared
    def set_item_hashes(self, stage: str, hashes: dict[str, str]) -> None:
        if self._file.readonly:
            return
        self._file.db.execute(
            "INSERT OR REPLACE INTO items VALUES (?, ?)", (stage, json.dumps(hashes))
        )

    def foreach_key(self, stage: str) -> tuple[str, str] | None:
        """A foreach stage's last key and what it was computed from (base key and item
        source, hashed together)."""
        row = self._file.db.execute(
            "SELECT memo, key FROM foreach_keys WHERE stage=?", (stage,)
        ).fetchone()
        return (row[0], row[1]) if row and _str(row[0]) and _str(row[1]) else None

    @spared
    def set_foreach_key(self, stage: str, memo: str, key: str) -> None:
        if self._file.readonly:
            return
        self._file.db.execute(
            "INSERT OR REPLACE INTO foreach_keys VALUES (?, ?, ?)", (stage, memo, key)
        )

    def item_index(self, stage: str, removals: int) -> tuple[dict[str, str], dict[str, Any]] | None:
        """A foreach stage's items as its last run assembled them: (relpath → item key,
        relpath → its action entry), so a rerun of a few items need not read every item's
        entry from the store; None when there is none, when anything was removed from the
        store since it was written (``removals`` differs), or when it is not exactly what
        was written (its hash is kept beside it)."""
        row = self._file.db.execute(
            "SELECT removals, digest, data FROM item_index WHERE stage=?", (stage,)
        ).fetchone()
        if row is None or row[0] != removals or not isinstance(row[2], bytes):
            return None
        if hash_bytes(row[2]) != row[1]:
            return None
        data = unmarshal(row[2])
        ok = (
            type(data) is tuple
            and len(data) == 2
            and type(data[0]) is dict
            and type(data[1]) is dict
            and data[0].keys() == data[1].keys()
            and all(type(e) is dict and "outputs" in e for e in data[1].values())
        )
        return data if ok else None  # type: ignore[return-value]

    @spared
    def set_item_index(
        self, stage: str, keys: dict[str, str], entries: dict[str, Any], removals: int
    ) -> None:
        if self._file.readonly:
            return
        try:
            data = marshal.dumps((keys, entries), 4)
        except ValueError:  # a value of a type marshal lacks: no index, the store answers
            self._file.db.execute("DELETE FROM item_index WHERE stage=?", (stage,))
            return
        self._file.db.execute(
            "INSERT OR REPLACE INTO item_index VALUES (?, ?, ?, ?)",
            (stage, removals, hash_bytes(data), data),
        )

    # placed outputs ---------------------------------------------------------------------
    def placed(self) -> dict[str, tuple[str, str]]:
        """Every output path a build has placed: path → (stage, output name)."""
        return {
            p: (s, o) for p, s, o in self._file.db.execute("SELECT path, stage, output FROM placed")
        }

    @spared
    def set_placed(self, items: Iterable[tuple[str, str, str]]) -> None:
        if self._file.readonly:
            return
        self._file.db.executemany("INSERT OR REPLACE INTO placed VALUES (?,?,?)", list(items))

    @spared
    def forget_placed(self, paths: Iterable[str]) -> None:
        self._file.db.executemany("DELETE FROM placed WHERE path=?", [(p,) for p in paths])


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


#: what a last-build record holds, and the types its readers rely on
_RECORD_TYPES: dict[str, Any] = {
    "key": str, "doc": dict, "failed_doc": dict, "result": str, "error": str,
    "duration": (int, float), "finished": (int, float), "upstream_parts": dict,
    "failed_parts": dict,
}  # fmt: skip


def _record(text: Any) -> dict[str, Any] | None:
    """A last-build record as written, or None when the row is damaged (then the stage
    simply has no record: it is decided from the store, and the next build writes one)."""
    rec = parse_json(text)
    if not isinstance(rec, dict):
        return None
    for name, kind in _RECORD_TYPES.items():
        if rec.get(name) is not None and not isinstance(rec[name], kind):
            return None
    return rec

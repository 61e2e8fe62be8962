"""Output manifests: what an action-cache entry says each output of a stage holds.

A manifest is stored as JSON, so its typed forms are :class:`FileManifest` and
:class:`DirManifest` (typed dictionaries: no conversion on the hot paths of a 100,000-item
build), and a directory's entries are ``[relpath, hash, size, mode]`` lists, read as an
:class:`Entry`. :func:`digests` is the one answer to "which store objects does this entry
or manifest need".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple, TypedDict

from .hashing import tree_hash

__all__ = [
    "DirManifest",
    "Entry",
    "FileManifest",
    "Manifest",
    "digests",
    "entries",
    "manifest_hash",
    "sub_manifest",
]


class Entry(NamedTuple):
    """One file of a directory output: its path relative to the output, its content hash,
    size and mode (``0o644`` or ``0o755``)."""

    relpath: str
    hash: str
    size: int
    mode: int


class FileManifest(TypedDict):
    """A file output."""

    kind: Literal["file"]
    hash: str
    size: int
    mode: int


class DirManifest(TypedDict):
    """A directory output: its tree hash and every file, sorted by relpath (each an
    :class:`Entry`'s fields, as a JSON list)."""

    kind: Literal["dir"]
    hash: str
    entries: list[Sequence[Any]]


Manifest = FileManifest | DirManifest


def entries(manifest: Mapping[str, Any]) -> Iterator[Entry]:
    """A directory manifest's entries as :class:`Entry` values (none for a file)."""
    for e in manifest.get("entries", ()) if manifest["kind"] == "dir" else ():
        yield Entry(*e)


def digests(what: Mapping[str, Any]) -> list[str]:
    """The store objects an output manifest, or a whole action-cache entry (its outputs and
    a map-reduce map result), needs: what must be in the store to restore it."""
    if "kind" in what:
        if what["kind"] == "file":
            return [what["hash"]]
        return [e[1] for e in what["entries"]]
    out = [d for m in what.get("outputs", {}).values() for d in digests(m)]
    if "map" in what:
        out.append(what["map"]["hash"])
    return out


def manifest_hash(manifest: Mapping[str, Any]) -> str:
    """The content hash of an output as downstream stages see it."""
    return str(manifest["hash"])


def sub_manifest(manifest: Mapping[str, Any], sub: str) -> dict[str, Any] | None:
    """The manifest of the path ``sub`` inside a directory output, or None if absent."""
    if not sub or sub == ".":
        return manifest  # type: ignore[return-value]
    if manifest["kind"] != "dir":
        return None
    prefix = sub.rstrip("/") + "/"
    found = [e for e in manifest["entries"] if e[0].startswith(prefix)]
    for e in manifest["entries"]:
        if e[0] == sub:
            return {"kind": "file", "hash": e[1], "size": e[2], "mode": e[3]}
    if not found:
        return None
    rel = [[e[0][len(prefix) :], *e[1:]] for e in found]
    return {"kind": "dir", "hash": tree_hash(rel), "entries": rel}

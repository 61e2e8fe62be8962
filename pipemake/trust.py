"""What the store hands back is checked here before anything acts on it.

A store may come from a shared ``--cache-dir`` or a CI cache another job wrote, so every
entry read from it is untrusted input. These pure functions say whether an entry has the
shape pipemake writes: digests are exactly the hex xxh3-128 gives (never a path), manifest
paths stay inside their output, sizes are counts, and of a mode only the executable bit
counts. An entry that fails is a cache miss (the stage runs), and ``cache verify`` names
the problem.
"""

from __future__ import annotations

import os
import re
from typing import Any

__all__ = ["entry_problem", "is_digest", "is_manifest", "safe_mode", "safe_relpath"]

#: an xxh3-128 hex digest (see :func:`pipemake.hashing.hash_bytes`)
_DIGEST = re.compile(r"[0-9a-f]{32}")


def is_digest(value: Any) -> bool:
    """Whether ``value`` is a content hash as pipemake writes it: 32 lowercase hex digits.
    Anything else (``xx/tmp/victim``, ``""``, a NUL byte, uppercase) is never made a path."""
    return type(value) is str and len(value) == 32 and _DIGEST.fullmatch(value) is not None


def safe_mode(mode: int) -> int:
    """The mode a restored file gets from a manifest's ``mode``: only the executable bit
    travels (0o755 or 0o644), never setuid, setgid, sticky or write bits for others."""
    return 0o755 if mode & 0o111 else 0o644


def safe_relpath(relpath: Any) -> bool:
    """Whether a manifest path stays inside its output directory: relative, normalized
    (no ``.``, ``..`` or empty parts), no NUL, and a name the file system can encode."""
    if type(relpath) is not str or not relpath or "\0" in relpath:
        return False
    if "/" in relpath:
        if relpath[0] == "/" or any(p in ("", ".", "..") for p in relpath.split("/")):
            return False
    elif relpath in (".", ".."):
        return False
    if os.sep == "\\" and "\\" in relpath:
        return False
    if not relpath.isascii():
        try:
            os.fsencode(relpath)
        except UnicodeError:  # a lone surrogate from JSON: no file can have that name
            return False
    return True


def _file_problem(m: dict[str, Any]) -> str | None:
    size, mode = m.get("size"), m.get("mode")
    if type(size) is not int or size < 0:
        return f"size {size!r} is not a byte count"
    if type(mode) is not int:
        return f"mode {mode!r} is not a number"
    if mode not in (0o644, 0o755):
        m["mode"] = safe_mode(mode)
    return None


def _dir_problem(entries: Any) -> str | None:
    if type(entries) is not list:
        return "its entries are not a list"
    files: set[str] = set()
    parents: set[str] = set()
    # a hundred thousand of these on a big stage: plain checks, no generator expressions
    for e in entries:
        if type(e) is not list or len(e) != 4:
            return f"entry {e!r} is not [path, hash, size, mode]"
        rel, digest, size, mode = e
        if not safe_relpath(rel):
            return f"path {rel!r} is not a relative path inside the output"
        if not is_digest(digest):
            return f"hash {digest!r} of {rel!r} is not a digest"
        if type(size) is not int or size < 0:
            return f"size {size!r} of {rel!r} is not a byte count"
        if type(mode) is not int:
            return f"mode {mode!r} of {rel!r} is not a number"
        if mode not in (0o644, 0o755):
            e[3] = safe_mode(mode)
        if rel in files:
            return f"path {rel!r} is listed twice"
        files.add(rel)
        if "/" in rel:
            parts = rel.split("/")
            for i in range(1, len(parts)):
                parents.add("/".join(parts[:i]))
    clash = files & parents
    if clash:
        return f"path {min(clash)!r} is both a file and a directory"
    return None


def manifest_problem(m: Any) -> str | None:
    """What is wrong with an output manifest (None: nothing). A mode other than 0o644 or
    0o755 is not a problem: it is narrowed to its executable bit in place."""
    if type(m) is not dict:
        return "a manifest is not a mapping"
    if not is_digest(m.get("hash")):
        return f"hash {m.get('hash')!r} is not a digest"
    kind = m.get("kind")
    if kind == "file":
        return _file_problem(m)
    if kind == "dir":
        return _dir_problem(m.get("entries"))
    return f"kind {kind!r} is neither file nor dir"


def is_manifest(m: Any) -> bool:
    """Whether ``m`` is a well-formed output manifest (a file's or a directory's)."""
    return manifest_problem(m) is None


def entry_problem(entry: Any) -> str | None:
    """What is wrong with an action-cache entry, or None when it has the shape pipemake
    writes (and may be acted on)."""
    if type(entry) is not dict:
        return "not a JSON object"
    outputs = entry.get("outputs", {})
    if type(outputs) is not dict:
        return "its outputs are not a mapping"
    for name, m in outputs.items():
        problem = manifest_problem(m)
        if problem is not None:
            return f"output {name!r}: {problem}"
    if "map" in entry:
        m = entry["map"]
        if type(m) is not dict or m.get("kind") not in ("bytes", "json"):
            return "its map result is not {hash, kind}"
        if not is_digest(m.get("hash")):
            return f"map result hash {m.get('hash')!r} is not a digest"
    for name in ("values", "metrics"):
        if type(entry.get(name, {})) is not dict:
            return f"its {name} are not a mapping"
    return None

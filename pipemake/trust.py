"""What the store hands back is checked here before anything acts on it.

A store may come from a shared ``--cache-dir`` or a CI cache another job wrote, so every
entry read from it is untrusted input. These pure functions say whether an entry has the
shape pipemake writes: digests are exactly the hex xxh3-128 gives (never a path), manifest
paths stay inside their output, sizes are counts, of a mode only the executable bit
counts, and no data nests deeper than :data:`MAX_DEPTH` or holds text that is not Unicode
(a lone surrogate). :func:`decode_entry` is the one way entries are read. An entry that
fails is a cache miss (the stage runs), and ``cache verify`` names the problem.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

__all__ = ["MAX_DEPTH", "decode_entry", "entry_problem", "is_digest", "is_manifest", "is_text",
           "json_problem", "parse_json", "safe_mode", "safe_relpath"]  # fmt: skip

#: how deeply lists and mappings read from the store may nest: far more than any entry or
#: computed value needs, far less than Python's recursion limit (code that walks data
#: nested a few thousand levels deep, json's own encoder included, dies of RecursionError)
MAX_DEPTH = 100

#: an xxh3-128 hex digest (see :func:`pipemake.hashing.hash_bytes`)
_DIGEST = re.compile(r"[0-9a-f]{32}")
_HEX = re.compile(r"[0-9a-f]*")
_hex32 = _DIGEST.fullmatch


def is_digest(value: Any) -> bool:
    """Whether ``value`` is a content hash as pipemake writes it: 32 lowercase hex digits.
    Anything else (``xx/tmp/victim``, ``""``, a NUL byte, uppercase) is never made a path."""
    return type(value) is str and len(value) == 32 and _hex32(value) is not None


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
    return relpath.isascii() or _utf8(relpath)


def _utf8(text: str) -> bool:
    """Whether ``text`` is valid Unicode text: no lone surrogate such as ``"\\udcff"`` (a
    valid JSON escape, and how Python spells a file name's undecodable byte), which no
    UTF-8 can hold, so hashing, printing or sending it fails. pipemake refuses such file
    names and values when it writes an entry, so one read from the store is tampered."""
    try:
        text.encode("utf-8")
    except UnicodeError:
        return False
    return True


def is_text(text: str) -> bool:
    """Whether ``text`` is Unicode text (no lone surrogate, see :func:`json_problem`)."""
    return text.isascii() or _utf8(text)


def json_problem(value: Any, limit: int = MAX_DEPTH) -> str | None:
    """What makes JSON data read from the store unsafe to act on (None: nothing): lists
    and mappings nested deeper than ``limit``, or text holding a lone surrogate (a key or a
    value). Checked without recursion, so no depth can crash the check itself."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if type(v) is str:
            if not v.isascii() and not _utf8(v):
                return f"text {_short(v)} holds a lone surrogate (not Unicode text)"
            continue
        if depth >= limit:
            return f"it nests deeper than {limit} levels"
        if type(v) is dict:
            for k, x in v.items():
                if not k.isascii() and not _utf8(k):
                    return f"name {_short(k)} holds a lone surrogate (not Unicode text)"
                tx = type(x)
                if tx is dict or tx is list or (tx is str and not x.isascii()):
                    stack.append((x, depth + 1))
        elif type(v) is list:
            for x in v:
                tx = type(x)
                if tx is dict or tx is list or (tx is str and not x.isascii()):
                    stack.append((x, depth + 1))
    return None


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "…")


def parse_json(text: Any) -> tuple[Any, str | None]:
    """``(value, None)`` for JSON text (or bytes) read from the store, else ``(None, why)``:
    not JSON, or nested so deep that Python's parser gives up (a RecursionError, which
    json does not turn into its ValueError)."""
    try:
        return json.loads(text), None
    except (ValueError, TypeError):
        return None, "not JSON"
    except RecursionError:
        return None, "not JSON pipemake writes: it nests thousands of levels deep"


def decode_entry(text: Any) -> tuple[dict[str, Any] | None, str | None]:
    """``(entry, None)`` for an action-cache entry's JSON text that has the shape pipemake
    writes (see :func:`entry_problem`), else ``(None, what is wrong)``: the one decoding
    every reader of entries (builds, ``status``, ``cache verify``/``gc``, push, pull, the
    remote) goes through, so they all agree on which entries are damaged."""
    entry, why = parse_json(text)
    if why is not None:
        return None, why
    problem = entry_problem(entry)
    return (entry, None) if problem is None else (None, problem)


def _file_problem(m: dict[str, Any]) -> str | None:
    size, mode = m.get("size"), m.get("mode")
    if type(size) is not int or size < 0:
        return f"size {size!r} is not a byte count"
    if type(mode) is not int:
        return f"mode {mode!r} is not a number"
    if mode not in (0o644, 0o755):
        m["mode"] = safe_mode(mode)
    return None


#: substrings of NUL-separated, NUL-framed paths that betray one leaving its directory
_BAD_PARTS = ("\0\0", "\0/", "/\0", "//", "\0./", "/./", "/.\0", "\0.\0",
              "\0../", "/../", "/..\0", "\0..\0")  # fmt: skip


def _dir_ok(entries: list[Any]) -> bool:
    """The common case of :func:`_dir_problem` (a well-formed manifest) checked in a few
    passes that run in C: a hundred thousand entries cost about as much as parsing them."""
    if set(map(type, entries)) - {list} or set(map(len, entries)) - {4}:
        return False
    rels = [e[0] for e in entries]
    digests = [e[1] for e in entries]
    sizes = [e[2] for e in entries]
    modes = [e[3] for e in entries]
    n = len(rels)
    if set(map(type, rels)) - {str} or set(map(type, digests)) - {str}:
        return False
    if set(map(type, sizes)) - {int} or set(map(type, modes)) - {int}:
        return False
    if (sizes and min(sizes) < 0) or set(map(len, digests)) - {32}:
        return False
    if _HEX.fullmatch("".join(digests)) is None:
        return False
    joined = "\0".join(rels)
    if joined.count("\0") != max(n - 1, 0):
        return False  # a NUL inside a path
    framed = f"\0{joined}\0"
    if any(part in framed for part in _BAD_PARTS):
        return False
    if not joined.isascii() and not _utf8(joined):
        return False
    files = set(rels)
    if len(files) != n:
        return False
    if _file_and_folder(files):
        return False
    if set(modes) - {0o644, 0o755}:
        for e in entries:
            e[3] = safe_mode(e[3])
    return True


def _file_and_folder(rels: set[str]) -> bool:
    """Whether a path of ``rels`` is also the folder of another (``a`` and ``a/b``)."""
    dirs = {r.rpartition("/")[0] for r in rels if "/" in r}
    for d in list(dirs):
        while "/" in d:
            d = d.rpartition("/")[0]
            dirs.add(d)
    return not rels.isdisjoint(dirs)


def _small_ok(entries: list[Any]) -> bool:
    """:func:`_dir_ok` for the few entries of one item's output: one plain loop."""
    for e in entries:
        if type(e) is not list or len(e) != 4:
            return False
        rel, digest, size, mode = e
        if type(digest) is not str or len(digest) != 32 or _hex32(digest) is None:
            return False
        if type(size) is not int or size < 0 or type(mode) is not int:
            return False
        if type(rel) is not str or not rel or "\0" in rel:
            return False
        if ("/" in rel or rel[0] == ".") and not safe_relpath(rel):
            return False
        if not rel.isascii() and not safe_relpath(rel):
            return False
        if mode != 0o644 and mode != 0o755:
            e[3] = safe_mode(mode)
    if len(entries) > 1:
        rels = {e[0] for e in entries}
        if len(rels) != len(entries):
            return False
        if _file_and_folder(rels):
            return False
    return True


def _dir_problem(entries: Any) -> str | None:
    if type(entries) is not list:
        return "its entries are not a list"
    if _small_ok(entries) if len(entries) < 32 else _dir_ok(entries):
        return None
    files: set[str] = set()
    parents: set[str] = set()
    for e in entries:
        if type(e) is not list or len(e) != 4:
            return f"entry {e!r} is not [path, hash, size, mode]"
        rel, digest, size, mode = e
        if not safe_relpath(rel):
            if type(rel) is str and not _utf8(rel):
                return f"path {_short(rel)} holds a lone surrogate (not Unicode text)"
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
    h = m.get("hash")
    if type(h) is not str or len(h) != 32 or _hex32(h) is None:
        return f"hash {h!r} is not a digest"
    kind = m.get("kind")
    if kind == "dir":
        problem = _dir_problem(m.get("entries"))
    elif kind == "file":
        problem = _file_problem(m)
    else:
        return f"kind {kind!r} is neither file nor dir"
    if problem is None and m.keys() - _MANIFEST_FIELDS:  # fields not checked above
        extra = {k: v for k, v in m.items() if k not in _MANIFEST_FIELDS}
        problem = json_problem(extra, MAX_DEPTH - 3)
    return problem


#: the fields of a manifest that :func:`manifest_problem` checks one by one
_MANIFEST_FIELDS = frozenset(("hash", "kind", "size", "mode", "entries"))


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
            return f"output {_short(name)}: {problem}"
        if not name.isascii() and not _utf8(name):
            return f"output name {_short(name)} holds a lone surrogate (not Unicode text)"
    if "map" in entry:
        m = entry["map"]
        if type(m) is not dict or m.get("kind") not in ("bytes", "json"):
            return "its map result is not {hash, kind}"
        if not is_digest(m.get("hash")):
            return f"map result hash {m.get('hash')!r} is not a digest"
    if "values" in entry and type(entry["values"]) is not dict:
        return "its values are not a mapping"
    if "metrics" in entry and type(entry["metrics"]) is not dict:
        return "its metrics are not a mapping"
    # everything else (values, metrics, the stage's name, fields a later pipemake adds) is
    # data code walks, hashes, prints and sends: bounded nesting, Unicode text only
    for field_, value in entry.items():
        t = type(value)
        if not field_.isascii() and not _utf8(field_):
            return f"its field {_short(field_)} holds a lone surrogate (not Unicode text)"
        if (t is dict or t is list) and field_ != "outputs":
            problem = json_problem(value, MAX_DEPTH - 1)
        elif t is str and not value.isascii():
            problem = json_problem(value)
        else:
            continue
        if problem is not None:
            return f"its {_short(field_)}: {problem}"
    return None

"""Pure functions that hash canonical, type-tagged structures, files and directory manifests.

Every key pipemake computes comes from here. The encoding is canonical JSON: types stay apart
(``1``, ``"1"`` and ``[1]`` never collide) and dict keys are sorted. ``KEY_FORMAT`` goes
into every key so a change of this encoding can never match an old entry; the tests pin
literal digests so such a change cannot slip by unnoticed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import xxhash

__all__ = [
    "KEY_FORMAT",
    "canonical",
    "digest",
    "hash_bytes",
    "hash_file",
    "key_digest",
    "normalize_mode",
    "tree_hash",
]

KEY_FORMAT = 4
_CHUNK = 1 << 20


def _reject(obj: Any) -> Any:
    raise TypeError(f"cannot hash a value of type {type(obj).__name__}: {obj!r}")


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True, default=_reject
)


_CONTAINERS = (dict, list, tuple)


def _check_keys(obj: Any) -> None:
    if type(obj) is dict:
        for key, value in obj.items():
            if type(key) is not str:
                raise TypeError(f"dict keys must be str to hash, got {key!r}")
            if type(value) in _CONTAINERS:
                _check_keys(value)
    else:
        for value in obj:
            if type(value) in _CONTAINERS:
                _check_keys(value)


def canonical(obj: Any) -> bytes:
    """The canonical byte encoding of a JSON-like structure: JSON with sorted keys and no
    spaces. JSON keeps types apart (``1``, ``1.0``, ``"1"``, ``true`` and ``[1]`` all differ)
    and its C encoder makes keying ten thousand stages cheap. Dict keys must be strings
    (JSON would write ``{1: x}`` and ``{"1": x}`` alike)."""
    if type(obj) in _CONTAINERS:
        _check_keys(obj)
    return _ENCODER.encode(obj).encode("utf-8", "surrogatepass")


def hash_bytes(data: bytes) -> str:
    """xxh3-128 of ``data`` as 32 hex digits."""
    return xxhash.xxh3_128_hexdigest(data)


def digest(obj: Any, *, checked: bool = False) -> str:
    """The hash of a JSON-like structure's canonical encoding. ``checked=True`` says the
    caller already knows every dict key is a string (the loader refuses others), which
    skips that walk on the hot path."""
    if checked:
        return hash_bytes(_ENCODER.encode(obj).encode("utf-8", "surrogatepass"))
    return hash_bytes(canonical(obj))


def hash_file(path: str, size_hint: int = -1) -> str:
    """xxh3-128 of a file's contents, read in 1 MiB chunks (one read for small files)."""
    with open(path, "rb", buffering=0) as fh:
        if 0 <= size_hint <= _CHUNK:
            return xxhash.xxh3_128_hexdigest(fh.read())
        h = xxhash.xxh3_128()
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            h.update(view[:n])
        return h.hexdigest()


def normalize_mode(st_mode: int) -> int:
    """Only the executable bit of a file's mode matters: 0o755 or 0o644."""
    return 0o755 if st_mode & 0o111 else 0o644


def tree_hash(entries: Iterable[Sequence[Any]]) -> str:
    """The hash of a directory from its manifest entries ``(relpath, hash, size, mode)``,
    which must be sorted by relpath. Fields are NUL-separated (no path holds a NUL), which
    is unambiguous and cheap for a hundred thousand entries."""
    text = "".join([f"{e[0]}\0{e[1]}\0{e[2]}\0{e[3]}\0\0" for e in entries])
    return hash_bytes(b"tree\0" + text.encode("utf-8", "surrogateescape"))


def key_digest(doc: dict[str, Any]) -> str:
    """A stage's key from its key document (JSON from the build and the store: string keys
    only). The document names its upstream stages, for the reasons a rerun gives; the key
    takes their digests by content alone, so renaming a stage that produces the same bytes
    changes nothing downstream."""
    upstream = doc.get("upstream")
    if upstream:
        doc = dict(doc, upstream=sorted(upstream.values()))
    return digest(doc, checked=True)

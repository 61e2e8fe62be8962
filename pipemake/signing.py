"""Signed action-cache entries: what lets a pull request read a remote it cannot poison.

An entry says "these bytes are the outputs of that key"; whoever can write one can make a
build restore anything. Objects need no signature (they are named by their content and
checked against it), so only entries are signed: HMAC-SHA256, keyed by the secret in
``PIPEMAKE_CACHE_KEY``, over the key the entry is stored under and the entry's exact JSON
text. Binding the key means a signed entry cannot be replayed under another key.

The sealed form stored on a remote is one JSON object, never pickle::

    {"pipemake_entry": 1, "key": "<key>", "entry": "<the entry as JSON text>",
     "sig": "<hex HMAC>" or null}
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

from .trust import entry_problem, is_digest

__all__ = ["ENTRY_FORMAT", "LOCAL_SIG", "cache_key", "seal", "sign_local", "unseal", "verify_local"]

ENTRY_FORMAT = 1
_DOMAIN = b"pipemake-entry-v1\0"


def cache_key(environ: dict[str, str] | None = None) -> bytes | None:
    """The signing secret from ``PIPEMAKE_CACHE_KEY`` (None when unset or empty)."""
    value = (environ if environ is not None else os.environ).get("PIPEMAKE_CACHE_KEY", "")
    return value.encode("utf-8", "surrogateescape") if value else None


def _mac(secret: bytes, key: str, text: str) -> str:
    payload = _DOMAIN + key.encode("ascii") + b"\0" + text.encode("utf-8", "surrogatepass")
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


#: the field a store's own entry carries its signature in (``PIPEMAKE_CACHE_KEY`` set when it
#: was committed): over the key and the entry's JSON without that field
LOCAL_SIG = "signature"


def sign_local(key: str, entry: dict[str, Any], text: str, secret: bytes | None) -> dict[str, Any]:
    """``entry`` (whose JSON is ``text``) as the store keeps it: with its signature when there
    is a ``secret``, so a shared ``--cache-dir`` written by someone without the key cannot
    hand a keyed reader outputs of its choosing."""
    return {**entry, LOCAL_SIG: _mac(secret, key, text)} if secret else entry


def verify_local(
    key: str, entry: dict[str, Any], secret: bytes | None, encode: Any
) -> dict[str, Any] | None:
    """A store's own entry without its signature, or None where a ``secret`` is set and the
    entry is unsigned or signed with another one (a cache miss: the stage runs)."""
    sig = entry.pop(LOCAL_SIG, None)
    if not secret:
        return entry
    if type(sig) is not str or not hmac.compare_digest(sig, _mac(secret, key, encode(entry))):
        return None
    return entry


def seal(key: str, text: str, secret: bytes | None) -> bytes:
    """The stored form of the entry ``text`` (its JSON) under ``key``: signed with
    ``secret``, or unsigned when there is none."""
    sig = _mac(secret, key, text) if secret else None
    doc = {"pipemake_entry": ENTRY_FORMAT, "key": key, "entry": text, "sig": sig}
    return json.dumps(doc, sort_keys=True).encode("utf-8", "surrogatepass")


def unseal(data: bytes, key: str, secret: bytes | None) -> tuple[dict[str, Any] | None, str | None]:
    """``(entry, None)`` when ``data`` is a well-formed sealed entry for ``key`` that the
    reader may use, else ``(None, why)``. With ``secret``, an unsigned entry or one signed
    with another secret is refused (``why`` starts with ``"unsigned"`` or ``"signature"``);
    without, the signature is not looked at. Every entry is checked for the shape pipemake
    writes (:func:`pipemake.trust.entry_problem`)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeError, RecursionError):
        return None, "not JSON"
    if type(doc) is not dict or doc.get("pipemake_entry") != ENTRY_FORMAT:
        return None, "not a pipemake entry of this format"
    text, sig = doc.get("entry"), doc.get("sig")
    if doc.get("key") != key or not is_digest(key) or type(text) is not str:
        return None, "stored under another key"
    if secret:
        if sig is None:
            return None, "unsigned"
        if type(sig) is not str or not hmac.compare_digest(sig, _mac(secret, key, text)):
            return None, "signature does not match PIPEMAKE_CACHE_KEY"
    try:
        entry = json.loads(text)
    except (ValueError, UnicodeError, RecursionError):
        return None, "its entry is not JSON"
    problem = entry_problem(entry)
    if problem is not None:
        return None, problem
    return entry, None

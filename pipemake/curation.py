"""A person's corrections to a clustered dataset, kept in a plain file that survives rebuilds.

``curation.yaml`` (see docs/curation.md) is keyed by each cut-out's content id (the first
16 hex digits of the SHA-256 of its bytes), never by its path, so a correction still holds
after the clustering is rebuilt and its folders are renumbered::

    version: 1
    names:    {<id>: alice, ...}        # a cluster takes the name most of its named members carry
    assign:   {<id>: bob, <id>: rejected}  # move a cut-out to a character, or reject it
    captions: {<id>: "text", <id>: "+ extra"}  # replace the caption, or (with "+") append

Naming a cluster writes its current members under ``names``; merging two clusters gives both
the same name; moving is ``assign``; rejecting is ``assign: rejected``. A cut-out that no
entry covers is *unreviewed*. The ``training_data_prep`` rule reads the file as an ordinary
input (so a correction reruns only what depends on it) and :func:`apply` places every
cut-out; ``pipemake serve`` edits it through the action functions here and :func:`save`.

Pure Python (hashlib and yaml): no numpy, nothing of the rules.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import PipemakeError

__all__ = [
    "FORMAT",
    "ID_LENGTH",
    "REJECTED",
    "Curation",
    "CurationError",
    "Placement",
    "apply",
    "bad_text",
    "check_caption",
    "check_name",
    "cluster_names",
    "content_id",
    "dumps",
    "load",
    "loads",
    "move",
    "name_cluster",
    "place",
    "reject",
    "save",
    "set_caption",
    "unassign",
]

FORMAT = 1
#: hex digits of a content id: 64 bits, more than enough to tell a dataset's cut-outs apart
ID_LENGTH = 16
#: the ``assign`` target that leaves a cut-out out of the training set
REJECTED = "rejected"
_HEX = frozenset("0123456789abcdef")
_SECTIONS = ("names", "assign", "captions")
_HEADER = (
    "# pipemake curation: corrections to the clustered dataset, keyed by cut-out content id\n"
    "# (sha256 of the file, first 16 hex digits). Edited by `pipemake serve` or by hand;\n"
    "# read by training_data_prep. See docs/curation.md.\n"
)


class CurationError(PipemakeError):
    """The curation file cannot be read or is not valid (which file, what, what to do)."""


@dataclass
class Curation:
    """The corrections: cluster names, moved or rejected cut-outs and captions, by id."""

    names: dict[str, str] = field(default_factory=dict)
    assign: dict[str, str] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)

    def covers(self, cid: str) -> bool:
        """Whether any entry speaks of cut-out ``cid`` (else it is unreviewed)."""
        return cid in self.names or cid in self.assign or cid in self.captions


@dataclass(frozen=True)
class Placement:
    """Where one cut-out goes: its character (None when rejected), its caption override
    (None: the template's), whether a person reviewed it, and whether it was moved."""

    cluster: str
    character: str | None
    caption: str | None
    reviewed: bool
    moved: bool


def content_id(path: str | os.PathLike[str]) -> str:
    """A cut-out's content id: the first :data:`ID_LENGTH` hex digits of its SHA-256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:ID_LENGTH]


#: the line breaks ``str.splitlines`` knows, by name: a caption or name is one line
_BREAKS = {
    "\n": "a line feed", "\r": "a carriage return", "\v": "a vertical tab",
    "\f": "a form feed", "\x1c": "a file separator", "\x1d": "a group separator",
    "\x1e": "a record separator", "\x85": "a next-line (U+0085)",
    "\u2028": "a line separator (U+2028)", "\u2029": "a paragraph separator (U+2029)",
}  # fmt: skip


def bad_text(text: str, tab: bool = False) -> str | None:
    """What keeps ``text`` from being one line of a caption or a name, or None: a line
    break (any that ``str.splitlines`` splits at), another control character (C0, DEL, C1;
    a tab only where ``tab`` allows it), or a lone surrogate (no UTF-8 file can hold it)."""
    for c in text:
        n = ord(c)
        if c in _BREAKS:
            return f"it holds {_BREAKS[c]}: it must be one line"
        if 0xD800 <= n <= 0xDFFF:
            return f"it holds a lone surrogate (U+{n:04X}), which no UTF-8 file can hold"
        if (n < 0x20 or 0x7F <= n <= 0x9F) and not (tab and c == "\t"):
            return f"it holds the control character U+{n:04X}"
    return None


def check_caption(text: Any) -> str:
    """``text`` as a caption (stripped), or a :class:`CurationError` saying why it is not
    one: a string of one line, with no control character but a tab."""
    if not isinstance(text, str):
        raise CurationError(f"a caption must be a string, got {type(text).__name__}")
    text = text.strip()
    why = bad_text(text, tab=True)
    if why is not None:
        raise CurationError(f"caption {_shown(text)}: {why}")
    return text


def _shown(text: str) -> str:
    """``text`` quoted for a message, control characters and surrogates escaped."""
    shown = ascii(text[:60]) if bad_text(text, tab=True) else repr(text[:60])
    return shown + ("…" if len(text) > 60 else "")


def check_name(name: Any, allow_rejected: bool = False) -> str:
    """``name`` as a character name, or a :class:`CurationError` saying why it is not one."""
    if not isinstance(name, str) or not name.strip():
        raise CurationError(f"a character name must be a non-empty string, got {name!r}")
    name = name.strip()
    if name == REJECTED and not allow_rejected:
        raise CurationError(f"{REJECTED!r} is reserved (it rejects a cut-out): pick another name")
    why = bad_text(name)
    if why is not None:
        raise CurationError(f"character name {_shown(name)}: {why}")
    if len(name) > 100 or any(c in name for c in "/\\\0\n\r"):
        raise CurationError(f"character name {name!r}: at most 100 characters, no / \\ or newline")
    if name in (".", ".."):
        raise CurationError(f"character name {name!r} is not a folder name")
    return name


def _check_id(cid: Any, where: str) -> str:
    if not isinstance(cid, str) or len(cid) != ID_LENGTH or not set(cid) <= _HEX:
        raise CurationError(
            f"{where}: {cid!r} is not a cut-out id ({ID_LENGTH} lowercase hex digits)"
        )
    return cid


def loads(text: str, source: str = "curation.yaml") -> Curation:
    """Parse the file's text; every mistake names ``source``, the entry and what to do."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise CurationError(f"{source}{line}: not valid YAML ({exc}); fix or remove it") from None
    if data is None:
        return Curation()
    if not isinstance(data, dict):
        raise CurationError(f"{source}: expected a mapping with version, names, assign, captions")
    unknown = sorted(str(k) for k in data if k not in ("version", *_SECTIONS))
    if unknown:
        raise CurationError(
            f"{source}: unknown key(s) {', '.join(unknown)} (known: version, names, assign, "
            "captions)"
        )
    version = data.get("version", FORMAT)
    if version != FORMAT:
        raise CurationError(f"{source}: version {version!r} is not known (this pipemake: 1)")
    cur = Curation()
    for section in _SECTIONS:
        entries = data.get(section) or {}
        if not isinstance(entries, dict):
            raise CurationError(f"{source}: {section} must be a mapping of cut-out id to text")
        target: dict[str, str] = getattr(cur, section)
        for cid, value in entries.items():
            where = f"{source}: {section}"
            _check_id(cid, where)
            if section == "captions":
                try:
                    target[cid] = check_caption(value)
                except CurationError as exc:
                    raise CurationError(f"{where}: {cid}: {exc}") from None
            else:
                try:
                    target[cid] = check_name(value, allow_rejected=section == "assign")
                except CurationError as exc:
                    raise CurationError(f"{where}: {cid}: {exc}") from None
    return cur


def load(path: str | os.PathLike[str]) -> Curation:
    """Read a curation file; a missing file means no corrections."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return Curation()
    except (OSError, UnicodeDecodeError) as exc:
        raise CurationError(f"cannot read {path}: {exc}") from None
    return loads(text, str(path))


def dumps(cur: Curation) -> str:
    """The file's text: a header, then the sections sorted by id (stable diffs in git)."""
    body: dict[str, Any] = {"version": FORMAT}
    for section in _SECTIONS:
        body[section] = dict(sorted(getattr(cur, section).items()))
    return _HEADER + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=100)


def save(path: str | os.PathLike[str], cur: Curation) -> None:
    """Write the file atomically (a temporary file beside it, then a rename): a reader sees
    the old file or the new one, never half of one. A symlink at ``path`` is replaced, not
    written through."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dumps(cur))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cluster_names(members: Mapping[str, str], cur: Curation) -> dict[str, str]:
    """Each cluster's name: the one most of its named members carry (ties: the first in
    alphabetical order). ``members`` maps cut-out id to cluster; unnamed clusters are absent."""
    votes: dict[str, Counter[str]] = {}
    for cid, cluster in members.items():
        name = cur.names.get(cid)
        if name is not None:
            votes.setdefault(cluster, Counter())[name] += 1
    return {
        cluster: min(count.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        for cluster, count in votes.items()
    }


def place(
    cid: str,
    cluster: str,
    cur: Curation,
    named: Mapping[str, str],
    default_names: Mapping[str, str] | None = None,
) -> Placement:
    """Place one cut-out of ``cluster``: its character is its ``assign`` target, else its
    cluster's name (``named``, from :func:`cluster_names`), else ``default_names[cluster]``,
    else the cluster itself; None when rejected."""
    target = cur.assign.get(cid)
    if target == REJECTED:
        character = None
    elif target is not None:
        character = target
    else:
        character = named.get(cluster) or (default_names or {}).get(cluster) or cluster
    return Placement(
        cluster=cluster,
        character=character,
        caption=cur.captions.get(cid),
        reviewed=cur.covers(cid),
        moved=target is not None and target != REJECTED,
    )


def apply(
    members: Mapping[str, str], cur: Curation, default_names: Mapping[str, str] | None = None
) -> dict[str, Placement]:
    """Place every cut-out (id → cluster) as :func:`place` does."""
    named = cluster_names(members, cur)
    return {cid: place(cid, c, cur, named, default_names) for cid, c in members.items()}


# the actions of the Dataset page ---------------------------------------------------------


def name_cluster(cur: Curation, ids: Iterable[str], name: str) -> None:
    """Name a cluster (give its current members ``name``); merging two clusters is naming
    both with one name."""
    name = check_name(name)
    for cid in ids:
        cur.names[_check_id(cid, "name")] = name


def move(cur: Curation, cid: str, name: str) -> None:
    """Move one cut-out to the character ``name`` (whatever cluster it lands in)."""
    cur.assign[_check_id(cid, "move")] = check_name(name)


def reject(cur: Curation, cid: str) -> None:
    """Leave one cut-out out of the training set."""
    cur.assign[_check_id(cid, "reject")] = REJECTED


def unassign(cur: Curation, cid: str) -> None:
    """Undo a move or a rejection: the cut-out follows its cluster again."""
    cur.assign.pop(_check_id(cid, "unassign"), None)


def set_caption(cur: Curation, cid: str, text: str) -> None:
    """Set a cut-out's caption (``+ text`` appends to the template's); empty text removes it."""
    _check_id(cid, "caption")
    text = check_caption(text)
    if text:
        cur.captions[cid] = text
    else:
        cur.captions.pop(cid, None)

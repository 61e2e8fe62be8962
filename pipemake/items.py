"""``foreach``: a stage's items, their keys, and the stage output assembled from theirs.

An item is one file of the foreach input (every file under the directory, recursively, in
sorted order, hidden files skipped, filtered by the pattern). Each item has its own key —
the stage's base key plus the item's relative path and content hash — so one changed file
reruns one item. The stage's output is the union of its items' outputs; its manifest hash
is what downstream stages see, so early cutoff works through a foreach stage.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from .hashing import hash_bytes, tree_hash

__all__ = [
    "Item",
    "ItemRef",
    "bracket_close",
    "glob_base",
    "glob_match",
    "glob_regex",
    "has_deep",
    "is_glob",
    "item_key",
    "map_key",
    "matches",
    "merge_outputs",
    "output_conflict",
    "select",
    "summarize",
]

_GLOB = re.compile(r"[*?\[]")


class Item(NamedTuple):
    """One file of a ``foreach`` input: its path (relative to the project root), its path
    relative to the input directory, and its content hash. The one item type: what a rule's
    per-item call receives (``pipemake.Item``) and what the build lists, keys and decides
    (a tuple: a hundred thousand of them are made on every plan)."""

    path: str
    relpath: str
    hash: str = ""

    @property
    def name(self) -> str:
        """The file name (``sub/f1.png`` → ``f1.png``)."""
        return self.relpath.rpartition("/")[2]  # relpath is a plain POSIX path

    @property
    def stem(self) -> str:
        """The file name without its last suffix, as :attr:`pathlib.PurePath.stem`."""
        name = self.name
        i = name.rfind(".")
        return name[:i] if 0 < i < len(name) - 1 else name


#: the build's name for an item (the same type)
ItemRef = Item


def is_glob(path: str) -> bool:
    """Whether a foreach input is a glob pattern rather than a path."""
    return bool(_GLOB.search(path))


def glob_base(pattern: str) -> str:
    """The fixed directory prefix of a glob (``data/*/x.png`` → ``data``)."""
    parts = pattern.split("/")
    fixed: list[str] = []
    for part in parts:
        if _GLOB.search(part):
            break
        fixed.append(part)
    return "/".join(fixed) or "."


def glob_regex(glob: str) -> str:
    """The regex (as :func:`fnmatch.translate` writes one) of a pipemake glob: ``*``, ``?``
    and ``[...]`` as fnmatch takes them (``*`` crossing ``/``), and a whole ``**/``
    component meaning zero or more folders, as Python's ``glob(recursive=True)``,
    gitignore and Snakemake take it (``**/*.png`` matches ``a.png`` and ``x/y/a.png``). A
    glob without such a component is fnmatch's own, so what it matches never changes."""
    parts = _deep_parts(glob)
    if parts is None:
        return fnmatch.translate(glob)
    out = []
    for part in parts:
        if part is None:
            out.append("(?:.*/)?")
        elif part == "*":
            out.append(".*")
        else:  # no star in it: fnmatch's regex of it is plain, with no group to clash
            text = fnmatch.translate(part)
            out.append(text[len("(?s:") : text.rindex(")")])
    return "(?s:" + "".join(out) + r")\Z"


def has_deep(*globs: str | None) -> bool:
    """Whether any of ``globs`` (a foreach input's path, its ``pattern`` with ``|``
    alternatives) has a ``**/`` component: what such a glob matches changed when ``**/``
    came to mean zero or more folders, so what remembers its items must tell it apart."""
    return any(_deep_parts(alt.strip()) is not None for g in globs if g for alt in g.split("|"))


def bracket_close(glob: str, i: int) -> int:
    """Where the bracket ``[...]`` that opens at ``glob[i]`` closes, as fnmatch reads it
    (a ``!`` or ``]`` just after the ``[`` is part of the set), or -1 when it never closes
    (the ``[`` is then a plain character)."""
    j = i + 1
    j += glob[j : j + 1] == "!"
    j += glob[j : j + 1] == "]"
    return glob.find("]", j)


def _deep_parts(glob: str) -> list[str | None] | None:
    """``glob`` cut into its ``**/`` components (None), its stars and the runs between
    them (brackets kept whole, as fnmatch reads them); None when it has no ``**/``
    component (one that starts the glob or follows a ``/``)."""
    parts: list[str | None] = []
    run: list[str] = []
    deep = False
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*" and glob.startswith("**/", i) and (i == 0 or glob[i - 1] == "/"):
            if run:
                parts.append("".join(run))
                run = []
            if not parts or parts[-1] is not None:  # ``**/**/`` is one ``**/``
                parts.append(None)
            deep = True
            i += 3
            continue
        if c == "*":
            if run:
                parts.append("".join(run))
                run = []
            parts.append("*")
            i += 1
            continue
        if c == "[":
            end = bracket_close(glob, i)
            if end != -1:
                run.append(glob[i : end + 1])
                i = end + 1
                continue
        run.append(c)
        i += 1
    if run:
        parts.append("".join(run))
    return parts if deep else None


@functools.lru_cache(maxsize=256)
def _glob_matcher(glob: str) -> Any:
    return re.compile(glob_regex(glob)).match


def glob_match(path: str, glob: str) -> bool:
    """Whether ``path`` matches ``glob`` (case counts): how an input's glob chooses its
    files, see :func:`glob_regex`."""
    return _glob_matcher(glob)(path) is not None


def matches(relpath: str, pattern: str | None) -> bool:
    """Whether an item passes the foreach filter (globs joined by ``|``; a glob without
    ``/`` matches the file name, one with ``/`` the relative path, ``**/`` standing for
    zero or more folders)."""
    if relpath[0] == "." or "/." in relpath:
        return False
    if not pattern:
        return True
    by_name, by_path = _compiled(pattern)
    if by_name is not None and by_name(relpath.rsplit("/", 1)[-1].lower()):
        return True
    return by_path is not None and by_path(relpath.lower()) is not None


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> tuple[Any, Any]:
    """One case-insensitive regex for the name globs and one for the path globs (where
    ``**/`` is zero or more folders, see :func:`glob_regex`)."""
    pats = [p.strip().lower() for p in pattern.split("|") if p.strip()]
    names = [fnmatch.translate(p) for p in pats if "/" not in p]
    paths = [glob_regex(p) for p in pats if "/" in p]
    name_re = re.compile("|".join(names)).match if names else None
    path_re = re.compile("|".join(paths)).match if paths else None
    return name_re, path_re


def select(
    base: str,
    entries: Iterable[Sequence[Any]],
    pattern: str | None,
    glob_pattern: str | None = None,
) -> list[Item]:
    """Items from a directory's manifest entries ``(relpath, hash, …)`` under ``base``."""
    rel_glob = None
    if glob_pattern is not None:
        rel_glob = glob_pattern[len(base) + 1 :] if base != "." else glob_pattern
        entries = [e for e in entries if glob_match(e[0], rel_glob)]
    prefix = "" if base == "." else base + "/"
    if pattern:
        entries = [e for e in entries if matches(e[0], pattern)]
    else:
        entries = [e for e in entries if e[0][0] != "." and "/." not in e[0]]
    return [Item(prefix + e[0], e[0], e[1]) for e in entries]


def item_key(base_key: str, item: Item) -> str:
    """The key of one item: the stage's base key, the item's relative path and content."""
    return hash_bytes(f"item\0{base_key}\0{item.relpath}\0{item.hash}".encode(_ENC, _ERR))


def map_key(map_base: str, item: Item) -> str:
    """The key of one item's map step (map-reduce rules): without the reduce-only params."""
    return hash_bytes(f"map\0{map_base}\0{item.relpath}\0{item.hash}".encode(_ENC, _ERR))


_ENC, _ERR = "utf-8", "surrogateescape"


def merge_outputs(per_item: dict[str, dict[str, Any]], names: Iterable[str]) -> dict[str, Any]:
    """The stage's output manifests, the union of every item's; two items writing the same
    path, or one a file where another writes into a folder of that name, fail (ValueError),
    naming both."""
    merged: dict[str, Any] = {}
    order = sorted(per_item)
    for name in names:
        entries = _union(per_item, order, name)
        entries.sort(key=_first)
        merged[name] = {"kind": "dir", "hash": tree_hash(entries), "entries": entries}
    return merged


def output_conflict(per_item: dict[str, dict[str, Any]]) -> str | None:
    """Why the items' outputs cannot be put together into one (what :func:`merge_outputs`
    would fail with), or None: what ``dry-run`` and ``status`` say of a stage whose items
    are all in the store but collide."""
    order = sorted(per_item)
    names = {n for outs in per_item.values() for n in outs}
    try:
        for name in sorted(names):
            _union(per_item, order, name)
    except ValueError as exc:
        return str(exc)
    return None


def _union(per_item: dict[str, dict[str, Any]], order: list[str], name: str) -> list[Any]:
    """Every item's entries of output ``name``, checked not to collide."""
    owner: dict[str, str] = {}
    #: folder → (item, file) of a file some item wrote inside it
    folders: dict[str, tuple[str, str]] = {}
    entries: list[Any] = []
    for rel_item in order:
        outs = per_item[rel_item].get(name) or {}
        for e in outs.get("entries", ()):
            path = e[0]
            if path in owner:
                raise ValueError(
                    f"items {owner[path]} and {rel_item} both wrote {name}/{path}; "
                    "make each item write its own file name (e.g. use {item.stem})"
                )
            if path in folders:
                other, inside = folders[path]
                raise ValueError(_file_in_folder(name, rel_item, path, other, inside))
            owner[path] = rel_item
            if "/" in path:
                _note_folders(name, rel_item, path, owner, folders)
            entries.append(e)
    return entries


def _note_folders(
    name: str,
    rel_item: str,
    path: str,
    owner: dict[str, str],
    folders: dict[str, tuple[str, str]],
) -> None:
    """Note the folders ``path`` lies in; one that an item wrote as a file is a conflict."""
    folder = path
    while "/" in folder:
        folder = folder.rpartition("/")[0]
        if folder in owner:
            raise ValueError(_file_in_folder(name, owner[folder], folder, rel_item, path))
        if folder in folders:
            return  # its own parents were noted with it
        folders[folder] = (rel_item, path)


def _file_in_folder(name: str, file_item: str, file: str, dir_item: str, inside: str) -> str:
    """Two items' outputs that cannot both be: one wrote a file where the other needs a
    folder."""
    return (
        f"items {file_item} and {dir_item} wrote conflicting outputs: {file_item} wrote the "
        f"file {name}/{file}, {dir_item} wrote {name}/{inside}, inside a folder of that "
        "name; make each item write its own paths (e.g. use {item.stem})"
    )


def _first(e: Sequence[Any]) -> Any:
    return e[0]


def items_digest(item_keys: dict[str, str]) -> str:
    """One hash of every (relpath, item key) pair, in relpath order."""
    text = "".join([f"{rel}\0{key}\0" for rel, key in sorted(item_keys.items())])
    return hash_bytes(text.encode(_ENC, _ERR))


def summarize(changed: list[tuple[str, str]], total: int) -> str:
    """``12 of 10,000 items changed (first: f000123.png: content changed)``, with ``; 3 more
    not in the cache`` where others run for that; ``… items to run`` when none of them is
    new or changed (not built yet, not in the cache), with ``; 14 kept`` for those the
    store has (a run stopped or failed halfway keeps its finished items)."""
    if not changed:
        return f"0 of {total:,} items changed"
    moved = [c for c in changed if c[1] in ("new", "content changed")]
    first = f"{(moved or changed)[0][0]}: {(moved or changed)[0][1]}"
    if not moved:
        kept = f"; {total - len(changed):,} kept" if total > len(changed) else ""
        return f"{len(changed):,} of {total:,} items to run (first: {first}){kept}"
    rest = len(changed) - len(moved)
    more = f"; {rest:,} more not in the cache" if rest else ""
    return f"{len(moved):,} of {total:,} items changed (first: {first}){more}"


def removed_items(old: dict[str, str] | None, items: Sequence[Item]) -> list[str]:
    """Items of the last build that are gone now."""
    if not old:
        return []
    now = {i.relpath for i in items}
    return sorted(r for r in old if r not in now)


def item_reasons(
    old: dict[str, str] | None, items: Sequence[Item], todo: Iterable[str]
) -> list[tuple[str, str]]:
    """Why each item in ``todo`` must run: new, content changed, or other (params…).
    ``old`` is None when the stage has no finished build to compare with (it never ran, or
    only failed): an item is then "not built yet", not "new"."""
    todo_set = set(todo)
    out = []
    for it in items:
        if it.relpath not in todo_set:
            continue
        if old is None:
            out.append((it.path, "not built yet"))
        elif it.relpath not in old:
            out.append((it.path, "new"))
        elif old[it.relpath] != it.hash:
            out.append((it.path, "content changed"))
        else:
            out.append((it.path, "not in the cache"))
    return out


def chunks(seq: Sequence[Any], jobs: int, batch: int) -> list[Sequence[Any]]:
    """Split work into tasks: a few per job slot, whole batches, at most 256 items each."""
    n = len(seq)
    size = max(1, min(256, n // max(1, jobs * 8)))
    size = max(batch, (size // batch) * batch)
    return [seq[i : i + size] for i in range(0, n, size)]


def staged_files(staged: str | dict[str, dict[str, str]], name: str, entries: Any) -> Any:
    """Where an item's files of output ``name`` were staged (entry relpath → path relative to
    the project root), from what its worker said: a directory holding ``NAME/ENTRY`` for
    every entry (plain files, the usual case: one string for all, not a path per file), or
    the paths themselves."""
    if isinstance(staged, str):
        return {e[0]: f"{staged}/{name}/{e[0]}" for e in entries}
    return staged.get(name, {})

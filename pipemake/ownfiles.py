"""Which files of a foreach stage's output are whose: each item's, or the stage's own.

``pipemake commit`` (and a build that finds outputs as ``pipemake.lock`` records them)
accepts a foreach stage's whole output at once. :func:`plan_items` gives each item the
files it wrote (known from its entry, or matched by name, :func:`attribute`), so a later
change of one input reruns that item alone and the others keep their accepted bytes. When
the command names the path it writes for each item, an item gets those paths alone; when
matching falls back to names, ``commit`` names the files so matched, as a rerun of the
item replaces them with what it writes.

A foreach stage's output is otherwise the union of what its items wrote; files accepted
that no item can be said to have written (added by hand, or named after no item) are the
stage's own. The stage's entry keeps them under ``own``, and each later assembly of the
stage lays them under the items' files, so rerunning items never loses them: some items
(an item's input changed) or all of them (a new base key: the stage's command, params,
env or an upstream file it reads changed). An item that writes the same path (or a folder
where an own file is, or a file where an own folder is) takes it over; a forced build
(``-B``, ``--force-stage``) builds the output from its items alone and drops the layer
for good. A switch back to an earlier key restores that key's entry, own files as they
were then.

The layer is read back only from the entry of the stage's last build, and only when its
last-build record says that entry holds one, so stages that never had own files pay
nothing. That entry is read from the store, so it is untrusted: a layer not of the shape
pipemake writes, or whose entry or objects left the store, is dropped (in part, for
objects) and said so, never guessed at.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import StoreError
from .hashing import tree_hash
from .items import Item
from .templates import strings
from .trust import entry_problem

if TYPE_CHECKING:
    from .fshash import Hasher
    from .model import Stage
    from .resolve import ResolvedStage
    from .state import WorkspaceState
    from .store import Store
    from .workspace import Workspace

__all__ = [
    "OWN", "attribute", "guessed", "in_workspace", "lay_under", "names_each", "own_layer",
    "own_section",
    "plan_items", "write_items", "written",
]  # fmt: skip

#: the field of a stage entry (and the flag of its last-build record) holding its own files
OWN = "own"


def own_section(base: str, outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ``own`` field of a stage entry: its own files per output, and the item base key
    of the build that kept them (for a reader of the entry: the layer is laid whatever the
    base key, see :func:`own_layer`)."""
    return {"base": base, "outputs": outputs}


def own_layer(
    store: Store,
    state: WorkspaceState,
    stage_id: str,
    held: Callable[[str, list[Any]], bool] | None = None,
) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The own files (output name → directory manifest) that the stage's last build kept,
    whatever item base key it had (a rerun of every item keeps them too), and what was
    dropped of them, a line to log (None: nothing). Empty when there are none; dropped
    when the entry holding them is gone or not of the shape pipemake writes (read from the
    store, it is untrusted). A file the workspace holds as listed (``held(output name,
    entry)``, see :func:`in_workspace`) is kept; any other is kept only when its object
    is in the store and its bytes match its hash (each object read once): one gone,
    corrupt or unreadable is dropped, as nothing could put it back."""
    record = state.builds.record(stage_id)
    if not record or not record.get(OWN) or not isinstance(record.get("key"), str):
        return {}, None
    entry = store.get_action(record["key"])
    if entry is None:
        return {}, (
            "the files accepted by commit that no item writes are dropped: the store "
            "entry of the stage's last build, which lists them, is gone or not trusted"
        )
    own = entry.get(OWN)
    outputs = own.get("outputs") if isinstance(own, dict) else None
    if (
        not isinstance(outputs, dict)
        or entry_problem({"outputs": outputs}) is not None
        or any(m["kind"] != "dir" for m in outputs.values())
    ):
        return {}, (
            "the files accepted by commit that no item writes are dropped: the store "
            "entry of the stage's last build does not list them as pipemake writes it"
        )
    layer: dict[str, dict[str, Any]] = {}
    gone: list[str] = []
    checked: dict[str, bool] = {}
    for name, manifest in outputs.items():
        files = []
        for e in manifest["entries"]:
            if held is not None and held(name, e):
                files.append(e)  # the workspace has it: kept there, never removed
                continue
            if e[1] not in checked:  # a corrupt object is a miss, as a missing one is
                try:
                    checked[e[1]] = store.verify_object(e[1]) is True
                except (OSError, sqlite3.Error, StoreError):  # unreadable (a shared store)
                    checked[e[1]] = False  # a miss too: nothing could put it back
            if checked[e[1]]:
                files.append(e)
            else:
                gone.append(f"{name}/{e[0]}")
        if files:
            layer[name] = {"kind": "dir", "hash": tree_hash(files), "entries": files}
    if not gone:
        return layer, None
    return layer, (
        f"{len(gone):,} file(s) accepted by commit that no item writes are dropped: their "
        f"content is gone from the store, or corrupt there (first: {gone[0]})"
    )


def in_workspace(
    ws: Workspace, hasher: Hasher, paths: dict[str, str]
) -> Callable[[str, list[Any]], bool]:
    """Whether the workspace holds an own file as its entry lists it (``held`` of
    :func:`own_layer`): a real file (not a link) at its path in output ``name`` (whose
    path ``paths`` gives), with its content and mode."""

    def held(name: str, e: list[Any]) -> bool:
        rel = f"{paths[name]}/{e[0]}" if name in paths else None
        if rel is None or os.path.islink(ws.abs(rel)):
            return False
        want = {"kind": "file", "hash": e[1], "size": e[2], "mode": e[3]}
        try:
            return ws.check(want, rel, hasher) is None
        except (OSError, ValueError):
            return False

    return held


def lay_under(
    merged: dict[str, dict[str, Any]], own: dict[str, dict[str, Any]], lay: bool = True
) -> dict[str, dict[str, Any]]:
    """Add the own files ``own`` to the items' output manifests ``merged`` (in place),
    except where an item wrote the same path, a file inside it, or a file at a folder it
    lies in; return the own files kept (output name → manifest), the layer the new entry
    carries on. ``lay`` False (a forced stage, whose output is what its items write):
    ``merged`` is left as it is, and the files returned are those it would have kept."""
    kept: dict[str, dict[str, Any]] = {}
    for name, layer in own.items():
        manifest = merged.get(name)
        if manifest is None or manifest.get("kind") != "dir":
            continue
        entries = manifest["entries"]
        files = {e[0] for e in entries}
        folders = {path[:i] for path in files for i, c in enumerate(path) if c == "/"}
        mine = [
            list(e)
            for e in layer["entries"]
            if e[0] not in files and e[0] not in folders and not _inside(e[0], files)
        ]
        if not mine:
            continue
        if lay:
            entries.extend(mine)
            entries.sort(key=lambda e: e[0])
            manifest["hash"] = tree_hash(entries)
        kept[name] = {"kind": "dir", "hash": tree_hash(mine), "entries": mine}
    return kept


def _inside(path: str, files: set[str]) -> bool:
    """Whether a folder holding ``path`` is one of ``files``."""
    return any(path[:i] in files for i, c in enumerate(path) if c == "/")


def write_items(
    store: Store, state: WorkspaceState, stage: Stage, rs: ResolvedStage, items: dict[str, Any]
) -> None:
    """Write the item entries :func:`plan_items` planned for a foreach stage, and its item
    index (what a later build reads them from first)."""
    if stage.foreach is None or stage.rule.map_reduce:
        return
    keys = rs.item_keys
    if items:
        store.put_actions([(keys[rel], entry) for rel, entry in items.items()])
    state.builds.set_item_index(
        stage.id, {rel: keys[rel] for rel in items}, items, store.removals()
    )


def plan_items(
    store: Store,
    stage: Stage,
    rs: ResolvedStage,
    entry: dict[str, Any],
    items: dict[str, Any],
    brief: bool = False,
) -> list[str]:
    """For a foreach stage whose output ``entry`` is accepted as built (``pipemake
    commit``, or outputs found as ``pipemake.lock`` records them), the item entries that
    let a later build rerun only the items that changed and assemble the accepted bytes of
    the others (into ``items``: relpath → entry); the files no item can claim go into
    ``entry`` as the stage's own. Returns what is said of them, a line each (``brief``:
    only of files kept as the stage's own and of items that will run).

    An item already in the action cache keeps the files it wrote, with their accepted
    bytes (a file it no longer has is dropped from it). The other files are matched to the
    items not in the cache by name (:func:`attribute`): such an item's entry names the
    files matched to it. An item left with no file counts as done with none when every
    file was matched (nothing is left that it could have written); otherwise it has no
    entry, and runs at the next change of the stage."""
    if stage.foreach is None or stage.rule.map_reduce:
        return []
    keys = rs.item_keys
    cached = store.get_actions(list(keys.values()))
    now = {name: {e[0]: e for e in m["entries"]} for name, m in entry["outputs"].items()}
    claimed: dict[str, set[str]] = {name: set() for name in now}
    for rel, key in keys.items():
        known = cached.get(key)
        if known is None:
            continue
        outputs = {}
        for name, have in now.items():
            manifest = known.get("outputs", {}).get(name) or {}
            files = [list(have[e[0]]) for e in manifest.get("entries", []) if e[0] in have]
            claimed[name].update(f[0] for f in files)
            outputs[name] = _dir(files)
        items[rel] = dict(known, outputs=outputs)
    fresh = [rel for rel in keys if rel not in items]
    found: dict[str, dict[str, list[Any]]] = {rel: {} for rel in fresh}
    own: dict[str, dict[str, Any]] = {}
    guesses: list[str] = []
    for name, have in now.items():
        rest = sorted(path for path in have if path not in claimed[name])
        named = written(stage.config, name, fresh)
        owners, left = attribute(fresh, rest, named)
        where = rs.ports.outputs.get(name, name)
        guesses += [f"{where}/{path}" for path in guessed(sorted(owners), named)]
        for path, rel in owners.items():
            found[rel].setdefault(name, []).append(list(have[path]))
        if left:
            own[name] = _dir([list(have[path]) for path in left])
    matched = [rel for rel in fresh if found[rel]]
    empty = [] if own else [rel for rel in fresh if not found[rel]]
    for rel in matched + empty:
        items[rel] = {"outputs": {name: _dir(found[rel].get(name, [])) for name in now},
                      "values": {}}  # fmt: skip
    if own:
        entry[OWN] = own_section(rs.base, own)
    counts = (0, 0, 0) if brief else (len(keys) - len(fresh), len(matched), len(empty))
    notes = _said(counts, own, rs.ports.outputs)
    return notes + _guessed(guesses) + _unmatched(len(fresh) - len(matched) - len(empty))


def _dir(files: list[list[Any]]) -> dict[str, Any]:
    """A directory manifest of ``files`` (sorted by path here)."""
    files.sort(key=lambda e: e[0])
    return {"kind": "dir", "hash": tree_hash(files), "entries": files}


def _said(counts: tuple[int, int, int], own: dict[str, Any], paths: dict[str, str]) -> list[str]:
    """What is said of a foreach stage's items (see :func:`plan_items`): ``counts`` of
    items built before, matched to files by name, and taken as done with no file; of the
    files kept as the stage's own (``own``); ``paths``: each output's path."""
    kept, matched, empty = counts
    notes = []
    if kept:
        notes.append(f"{kept:,} item(s) built before keep the accepted bytes of their files")
    if matched:
        notes.append(f"{matched:,} item(s) matched to their files by name")
    if empty:
        notes.append(f"{empty:,} item(s) wrote no file (every file is matched to an item)")
    files = sum(len(m["entries"]) for m in own.values())
    if files:
        name = sorted(own)[0]
        first = f"{paths.get(name, name)}/{own[name]['entries'][0][0]}"
        notes.append(
            f"{files:,} file(s) match no item (first: {first}); kept as the stage's own: "
            "rerunning items keeps them, unless an item writes the same path"
        )
    return notes


#: how many files matched by name alone ``commit`` names (the rest are counted)
GUESSES_SHOWN = 3


def _guessed(paths: list[str]) -> list[str]:
    """What is said of the files matched to an item by name alone (none: nothing): a
    rerun of that item replaces them with what it writes, which may be none of them."""
    if not paths:
        return []
    shown = ", ".join(paths[:GUESSES_SHOWN])
    more = f" and {len(paths) - GUESSES_SHOWN:,} more" if len(paths) > GUESSES_SHOWN else ""
    return [
        f"{len(paths):,} file(s) matched to an item by name alone, not as a path its "
        f"command names ({shown}{more}): a rerun of that item replaces them with what it "
        "writes, and drops any it does not write"
    ]


def _unmatched(count: int) -> list[str]:
    """What is said of the items matched to no file (none: nothing)."""
    if not count:
        return []
    return [
        f"{count:,} item(s) could not be matched to output files; they will run at the next "
        "change of the stage"
    ]


def written(config: Any, output: str, items: list[str]) -> dict[str, list[str]]:
    """The paths inside output ``output`` that the stage's config names for each item
    (path → the items naming it), where a template writes ``{outputs.NAME}/`` followed by
    a path made of literal characters and ``{item.name}``, ``{item.stem}`` or
    ``{item.relpath}`` (a shell ``cmd`` such as ``… > {outputs.o}/{item.stem}_mask.png``)."""
    tails = {m.group(2) for text in strings(config) for m in _WRITES.finditer(text)
             if m.group(1) == output and "{item." in m.group(2)}  # fmt: skip
    paths: dict[str, list[str]] = {}
    for tail in tails:
        for rel in items:
            item = Item("", rel)  # its ``{item.name}`` and ``{item.stem}`` as a run says them
            fields = {"name": item.name, "stem": item.stem, "relpath": rel}
            path = _ITEM.sub(lambda m, f=fields: f[m.group(1)], tail).rstrip("/")
            if rel not in paths.setdefault(path, []):
                paths[path].append(rel)
    return paths


#: ``{outputs.NAME}/`` and the path after it, up to what ends a shell word
_WRITES = re.compile(
    r"\{outputs\.([A-Za-z_][\w-]*)\}/((?:\{item\.(?:name|stem|relpath)\}|[^\s'\"`;|&<>(){}$\\])+)"
)
_ITEM = re.compile(r"\{item\.(name|stem|relpath)\}")


def attribute(
    items: list[str], paths: list[str], named: dict[str, list[str]] | None = None
) -> tuple[dict[str, str], list[str]]:
    """Which item (by relpath) each output file (by path inside the output) belongs to,
    judged by name, and the files no single item can claim.

    A file is claimed by the item whose path the stage's config names for it (``named``,
    see :func:`written`), the file's path or a folder it lies in; else by the item whose
    relpath it is; else by one whose relpath it is with
    another suffix or one more (``a.png`` → ``a.json``, ``a.png.json``, ``a.mask.png``), or
    one it lies under a folder named after (its relpath or stem: ``a/mask.png``,
    ``a.png/0.txt``) — the longest such name decides, an item's whole relpath before its
    stem; else by the same rules with the item's file name alone in place of its relpath
    (an item ``sub/a.png`` writing ``a.png`` at the top). A file two items claim equally
    is left unclaimed, never guessed.

    When the config names a path for every item (:func:`names_each`), an item claims
    those paths alone: a rerun of it writes them, so nothing else may go with it, and a
    file such as ``a.json`` beside ``a.out`` stays the stage's own."""
    tables: list[tuple[dict[str, list[str]], dict[str, list[str]]]] = [(named or {}, {})]
    for part in () if names_each(items, named) else _PARTS:
        whole: dict[str, list[str]] = {}
        forms: dict[str, list[str]] = {}
        for rel in items:
            name = part(rel)
            whole.setdefault(name, []).append(rel)
            for form in _stems(name):
                forms.setdefault(form, []).append(rel)
        tables.append((whole, forms))
    owners: dict[str, str] = {}
    left: list[str] = []
    for path in paths:
        found = _claims(path, tables)
        if len(found) == 1:
            owners[path] = found[0]
        else:
            left.append(path)
    return owners, left


#: what of an item's relpath :func:`attribute` matches files by: all of it, its file name
_PARTS = (lambda rel: rel, lambda rel: rel.rpartition("/")[2])


def names_each(items: list[str], named: dict[str, list[str]] | None) -> bool:
    """Whether the stage's config names a path for every one of ``items`` (``named``, see
    :func:`written`): then an item's rerun writes those paths, and only those are its."""
    if not named or not items:
        return False
    naming = {rel for rels in named.values() for rel in rels}
    return all(rel in naming for rel in items)


def guessed(paths: list[str], named: dict[str, list[str]] | None) -> list[str]:
    """The ``paths`` (matched to an item by :func:`attribute`) that are not a path the
    stage's config names for an item (``named``), only like one or inside one: a guess
    that a rerun of the item may not bear out, as it replaces them with what it writes."""
    return [path for path in paths if path not in (named or {})]


def _claims(
    path: str, tables: list[tuple[dict[str, list[str]], dict[str, list[str]]]]
) -> list[str]:
    """The items that claim ``path`` by the first rule any item meets (see
    :func:`attribute`)."""
    parts = path.split("/")
    folders = ["/".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
    shapes = [path, *_stems(path), *folders]
    for n, (whole, forms) in enumerate(tables):
        for shape in shapes if n else [path, *folders]:
            for table in (whole, forms):
                found = table.get(shape)
                if found:
                    return sorted(set(found))
    return []


def _stems(rel: str) -> list[str]:
    """``rel`` without its last suffix, then without each suffix before it: ``a/b.tar.gz``
    → ``a/b.tar``, ``a/b`` (none for a name without a suffix)."""
    stems = []
    stem, ext = os.path.splitext(rel)
    while ext:
        stems.append(stem)
        stem, ext = os.path.splitext(stem)
    return stems

"""Resolving a stage for a build or a plan: its ports with every reference resolved, its key
document and key, and for a ``foreach`` stage its items and their keys.

Resolving reads (the hasher's stat cache, upstream results, the action cache for cached
items) and writes nothing: what it learns that a later build may reuse (a foreach stage's
key for an unchanged input tree) is handed back in the :class:`ResolvedStage`, for the build
to write once the stage is decided.
"""

from __future__ import annotations

import bisect
import fnmatch
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .hashing import KEY_FORMAT, digest, key_digest
from .items import (
    Item,
    glob_base,
    glob_match,
    has_deep,
    is_glob,
    item_key,
    items_digest,
    map_key,
    select,
)
from .manifest import manifest_hash, sub_manifest
from .model import SYMBOLIC_SCOPES, Pipeline, Stage, norm, within
from .rule import Ports
from .scheduler import StageFailure
from .state import WorkspaceState
from .store import Store
from .templates import Ref, TemplateError, find_refs, parse, strings, substitute
from .walk import BadPath, left_out

__all__ = ["Planned", "ResolvedStage", "Resolver", "Unknown"]

#: in the key of a foreach stage whose values are whatever its items return: each item's
#: values are gathered into the stage's (an entry from before that holds none)
_GATHERED = "values gathered from items"


class Unknown(Exception):
    """A value this stage needs comes from an upstream stage that has not run yet."""

    def __init__(self, stage: str):
        super().__init__(stage)
        self.stage = stage


@dataclass
class Planned:
    """What is known of a stage's outputs in this build (or plan): manifests and values."""

    outputs: dict[str, Any] | None
    values: dict[str, Any] | None
    key: str | None = None


@dataclass
class ResolvedStage:
    """A stage as this build sees it: its resolved ports, key document and key (None while a
    map-reduce stage's maps are missing, or an upstream output is unknown). A foreach stage
    also lists its items and their keys, only when asked for: a stage whose key is
    remembered for the same input tree and base key never lists its hundred thousand items
    on a no-op."""

    ports: Ports
    doc: dict[str, Any]
    key: str | None
    #: upstream stages whose outputs are not known yet (a plan before they run)
    unknown: set[str] = field(default_factory=set)
    foreach: bool = False
    map_reduce: bool = False
    #: lists the items (set by the foreach input's resolution)
    list_items: Callable[[], list[Item]] | None = None
    #: what the items are a function of: the foreach input's manifest hash and filters
    source: list[Any] | None = None
    #: the stage key without the foreach input (what every item key starts from)
    base: str = ""
    #: a map-reduce stage's key base for its map steps (without the reduce-only params)
    map_base: str = ""
    #: the action entries of items already in the cache (relpath → entry), once read
    cached: dict[str, Any] = field(default_factory=dict)
    #: ``(memo, key)`` for the workspace state to remember after the stage is decided
    remember: tuple[str, str] | None = None
    #: the stage's values are whatever its items return (``python``, ``custom``): its key
    #: says so, so an entry stored before such values were gathered is not reused
    open_values: bool = False
    #: each upstream stage's digest in the key, split in its outputs' and its computed
    #: values' (kept in the last-build record so a reason can say which changed)
    upstream_parts: dict[str, list[str]] = field(default_factory=dict)
    #: the paths into upstream outputs its params name (its cmd reads them, input or not)
    #: with the hashes the outputs' manifests give them: what its run must still find there
    #: to be committed under its key (see :meth:`pipemake.runs.StageRun.guard_of`)
    watched: dict[str, str] = field(default_factory=dict)
    #: the files of the items' folder (but the item) that an item's params name through it
    #: (``data/{item.stem}.json``), with their hashes; None where no param does
    item_reads: Callable[[Item], dict[str, str]] | None = None
    _items: list[Item] | None = field(default=None, repr=False)
    _item_keys: dict[str, str] | None = field(default=None, repr=False)

    @property
    def items(self) -> list[Item]:
        """The foreach stage's items in relpath order (listed on first use)."""
        if self._items is None:
            self._items = self.list_items() if self.list_items is not None else []
        return self._items

    @property
    def item_keys(self) -> dict[str, str]:
        """Each item's key (relpath → key), in relpath order (map keys for map-reduce)."""
        if self._item_keys is None:
            make = map_key if self.map_reduce else item_key
            base = self.map_base if self.map_reduce else self.base
            self._item_keys = {it.relpath: make(self._item_base(base, it), it) for it in self.items}
        return self._item_keys

    def _item_base(self, base: str, item: Item) -> str:
        """What an item's key starts from: the stage's base, with the files this item's
        params name through it (``data/{item.stem}.json``) where there are any; so an item
        reading none keeps the key it had."""
        reads = self.item_reads(item) if self.item_reads is not None else None
        return digest([base, "item reads", reads], checked=True) if reads else base

    def listed_item_keys(self) -> dict[str, str] | None:
        """The item keys if they were computed already, else None (nothing is listed)."""
        return self._item_keys

    def rekey_item(self, rel: str, new_hash: str) -> None:
        """An item's content changed during this build: its Item and key follow, and so
        does the stage key (never remembered for the input tree as it was)."""
        items = self.items
        i = bisect.bisect_left([it.relpath for it in items], rel)
        old = items[i]
        ref = Item(old.path, old.relpath, new_hash)
        items[i] = ref
        if self.map_reduce:
            self.item_keys[rel] = map_key(self._item_base(self.map_base, ref), ref)
        else:
            self.item_keys[rel] = item_key(self._item_base(self.base, ref), ref)
            self.key = self.foreach_key()
        self.source = None
        self.remember = None

    def foreach_key(self) -> str:
        """A plain foreach stage's key: its base and every item's key."""
        parts = ["foreach", self.base, items_digest(self.item_keys)]
        return digest(parts + [_GATHERED] if self.open_values else parts)

    def reduce_key(self, mapped: dict[str, str]) -> str:
        """A map-reduce stage's key once every map result (relpath → its hash) is in."""
        self.key = digest(["reduce", self.base, sorted(mapped.items())])
        return self.key


class Resolver:
    """Resolves stages against what this build knows so far (``results``: the stages done
    or planned before), reading the workspace through ``hasher`` and the store."""

    def __init__(
        self,
        pipeline: Pipeline,
        hasher: Any,
        store: Store,
        state: WorkspaceState,
        results: dict[str, Planned],
    ):
        self.p = pipeline
        self.hasher = hasher
        self.store = store
        self.state = state
        self.results = results
        #: the paths the pipeline names, as written and as real paths (see _inside_project)
        self._named: tuple[set[str], set[str]] | None = None
        #: said a warning about a stage (the build's bus); None: warnings go unsaid
        self.warn: Callable[[str, str], None] | None = None
        #: the stages whose foreach input's entries holding no file were warned of
        self._said_left_out: set[str] = set()

    def resolve(self, stage: Stage) -> ResolvedStage:
        """The stage's ports with every reference resolved, its key document and key;
        raises :class:`Unknown` when a template needs a value of a stage not run yet."""
        unknown: set[str] = set()
        if stage.static:
            # no computed values referenced: the loader's resolution is the build's
            p = stage.ports
            ports = Ports(dict(p.inputs), dict(p.outputs), p.output_kinds, p.params, p.key_params,
                          p.root, stage.id)  # fmt: skip
        else:
            ports = self._resolve_ports(stage, unknown)
        inputs: dict[str, Any] = {}
        source = None
        for name, value in sorted(ports.inputs.items()):
            if stage.foreach is not None and name == stage.foreach.input:
                if isinstance(value, list):
                    raise StageFailure(f"foreach input {name!r} must be one directory or glob")
                source = self._item_source(stage, value, unknown)
                inputs[name] = [value, "foreach"]
            elif isinstance(value, list):
                inputs[name] = [[p, self._input_hash(stage, p, unknown)] for p in value]
            else:
                inputs[name] = [value, self._input_hash(stage, value, unknown)]
        fed = self._foreach_feed(stage, ports)
        # a stage that only writes into a folder this one reads orders it: what it puts
        # there is hashed as this stage's input (per item for a foreach), so its other
        # outputs and values stay out of the key; a rule handed its upstream stages'
        # values (``custom``) is keyed on them all
        placed = set() if getattr(stage.rule, "upstream_param", None) else set(stage.placed)
        upstream = {}
        parts: dict[str, list[str]] = {}  # what reasons tell apart; not part of the key
        # the params' text, read for paths into upstream outputs and the items' folder
        item_input = stage.foreach.input if stage.foreach is not None else None
        texts = self._param_texts(ports, item_input) if stage.deps or item_input else []
        for dep in stage.deps:
            planned = self.results.get(dep)
            if planned is None or planned.outputs is None:
                unknown.add(dep)
                if dep not in placed:
                    upstream[dep] = "?"
            elif dep in placed:
                # it writes into a folder this stage reads, hashed as this stage's input;
                # another output of it that the cmd or a param names by its path counts
                named = set(self._uncovered(stage, ports, self.p.stages[dep], texts))
                if named:
                    upstream[dep] = digest(
                        [{n: manifest_hash(planned.outputs[n]) for n in sorted(named)}],
                        checked=True,
                    )
                continue
            elif fed is not None and fed[0] == dep:
                # the foreach input's own output stands in each item (its path and content);
                # of that stage's other outputs, those the stage names count (all of them
                # where its depends_on names the stage or it uses one of its values)
                named = _named_outputs(stage, self.p.stages[dep])
                by_path = self._uncovered(stage, ports, self.p.stages[dep], texts)
                if named is not None:  # an output its cmd or a param names by its path
                    named |= {n for n in by_path if n != fed[1]}
                made = {n: manifest_hash(m) for n, m in planned.outputs.items()
                        if n != fed[1] and (named is None or n in named)}  # fmt: skip
                if fed[1] in by_path:  # what else of the items' own output it reads
                    inside, fed_out = by_path[fed[1]], planned.outputs[fed[1]]
                    made[fed[1]] = manifest_hash(fed_out) if inside is None else {
                        sub: (None if (m := sub_manifest(fed_out, sub)) is None
                              else manifest_hash(m))
                        for sub in sorted(inside)
                    }  # fmt: skip
                upstream[dep] = digest([made], checked=True)
            else:
                # the outputs it reads whole (all of them, as before outputs were told
                # apart, where it reads them all, lists dep in depends_on or uses a value)
                counted = self._counted_outputs(stage, ports, self.p.stages[dep], texts)
                made = {n: manifest_hash(m) for n, m in planned.outputs.items()
                        if counted is None or n in counted}  # fmt: skip
                upstream[dep] = digest(
                    [made, planned.values],
                    checked=True,  # JSON from the store: string keys
                )
                parts[dep] = [digest([made], checked=True), digest([planned.values], checked=True)]
        reads = self._item_folder_reads(stage, ports, fed, unknown, texts)
        doc = {
            "format": KEY_FORMAT,
            "rule": stage.rule.name,
            "rule_version": str(stage.rule.version),
            "stage_version": stage.version,
            "code": None if stage.version is not None else stage.rule.code_hash(ports, self.p.root),
            "params": ports.key_params if ports.key_params is not None else ports.params,
            "inputs": inputs,
            "upstream": upstream,
            "outputs": {n: ports.output_kinds.get(n, "path") for n in sorted(ports.outputs)},
        }
        if reads:  # only then: the keys of every other stage stay as they were
            doc["reads"] = reads
        watched = self._named_upstream(stage, ports, texts) if texts else {}
        if stage.foreach is None:
            return ResolvedStage(
                ports, doc, key_digest(doc), unknown, upstream_parts=parts, watched=watched
            )
        # the pattern only picks the items, each of which its key stands for: a new pattern
        # runs the items it adds, not the ones it kept
        doc["foreach"] = [stage.foreach.input]
        rs = ResolvedStage(
            ports, doc, None, unknown, foreach=True, map_reduce=bool(stage.rule.map_reduce),
            open_values=bool(getattr(stage.rule, "open_values", False)), upstream_parts=parts,
            watched=watched,
        )  # fmt: skip
        if source is not None:
            rs.source, rs.list_items, entries = source
            rs.item_reads = self._per_item_reads(stage, ports, texts, entries)
        if not unknown:
            self._stage_key(stage, rs)
        return rs

    # foreach ----------------------------------------------------------------------------
    def _item_source(
        self, stage: Stage, path: str, unknown: set[str]
    ) -> tuple[list[Any], Callable[[], list[Item]], Callable[[], Any]] | None:
        """What a foreach input's items are a function of (the manifest hash of the
        directory, from the upstream manifest when there is one, else from the workspace
        through the stat cache, and the filters), how to list them and the entries of the
        directory's manifest; None while the upstream is unknown."""
        assert stage.foreach is not None
        pattern = stage.foreach.pattern
        globbed = is_glob(path)
        base = glob_base(path) if globbed else path
        owner = self.p.output_owner(base)
        if owner is not None and owner[0] != stage.id:
            planned = self.results.get(owner[0])
            if planned is None or planned.outputs is None:
                unknown.add(owner[0])
                return None
            manifest = sub_manifest(planned.outputs[owner[1]], owner[2])
            if manifest is None:
                raise StageFailure(f"foreach input {path} was not produced by stage {owner[0]!r}")
            kind, digest_ = manifest["kind"], manifest["hash"]
            entries: Callable[[], Any] = lambda: manifest.get("entries") or []  # noqa: E731
        else:
            try:
                info = self.hasher.info(base)
            except BadPath as exc:
                raise StageFailure(f"foreach input {base}: {exc}") from None
            if info.kind == "missing":
                if self._writers_pending(stage, unknown):
                    return None
                raise StageFailure(f"foreach input {base} does not exist")
            kind, digest_, entries = info.kind, info.hash, lambda: info.entries or []
            changed = self.hasher.left_out.get(base) if self.warn is not None else None
            if changed:  # the tree changed, holding entries of no file: said, listed or not
                self._warn_left_out(stage, path, base, dict(changed))

        def listing() -> list[Item]:
            if kind == "file":
                parent = os.path.dirname(base) or "."
                return select(parent, [[os.path.basename(base), digest_]], None)
            items = select(base, entries(), pattern, path if globbed else None)
            if self.warn is not None:
                self._say_left_out(stage, path, base, items, entries, owner is None)
            return items

        source: list[Any] = [kind, digest_, path, pattern]
        if has_deep(path, pattern):  # items listed before ``**/`` took the top level too
            source.append("**/ is zero or more folders")
        return source, listing, entries

    def _say_left_out(
        self, stage: Stage, path: str, base: str, items: list[Item],
        entries: Callable[[], Any], on_disk: bool,
    ) -> None:  # fmt: skip
        """Warn (once, when the items are listed) of what a foreach input leaves out
        silently otherwise: every file, when its pattern matches none of them; entries of a
        folder on disk that hold no file (a symlink that leads nowhere, a FIFO, a device)."""
        assert self.warn is not None and stage.foreach is not None
        pattern, globbed = stage.foreach.pattern, path if is_glob(path) else None
        if pattern and not items and select(base, entries(), None, globbed):
            self.warn(
                stage.id,
                f"foreach pattern {pattern!r} matches no file of input "
                f"{stage.foreach.input!r} ({path}): the stage has no items; widen the "
                "pattern, or check the files' names",
            )
        if on_disk and stage.id not in self._said_left_out:
            full = base if os.path.isabs(base) else os.path.join(self.p.root, base)
            self._warn_left_out(stage, path, base, dict(left_out(full)))

    def _warn_left_out(self, stage: Stage, path: str, base: str, found: dict[str, str]) -> None:
        """Warn, once a build, of the entries of a foreach input folder on disk that hold no
        file (``found``: relpath → what it is) and that its items would take otherwise."""
        assert self.warn is not None and stage.foreach is not None
        if stage.id in self._said_left_out:
            return
        self._said_left_out.add(stage.id)
        pattern, globbed = stage.foreach.pattern, path if is_glob(path) else None
        kept = select(base, [[rel, ""] for rel in sorted(found)], pattern, globbed) if found else []
        if kept:
            first, one = kept[0], len(kept) == 1
            self.warn(
                stage.id,
                f"{len(kept):,} entr{'y' if one else 'ies'} of input {stage.foreach.input!r} "
                f"({path}) hold{'s' if one else ''} no file and {'is' if one else 'are'} left "
                f"out of its items (first: {first.path}, {found[first.relpath]}); remove "
                f"{'it' if one else 'them'}, or link to files",
            )

    def _stage_key(self, stage: Stage, rs: ResolvedStage) -> None:
        """Fill in a foreach stage's key (None for map-reduce while maps are missing). A
        plain foreach stage's key is remembered in the workspace state under its base key
        and item source, so an unchanged input tree gives it back without listing a single
        item; a new one is handed back in ``rs.remember`` for the build to write."""
        base = key_digest(rs.doc)
        rs.base = base
        rule = stage.rule
        if not rule.map_reduce:
            pattern = stage.foreach.pattern if stage.foreach else None
            memo_of = [base, rs.source, pattern]
            if rs.item_reads is not None:  # not the key of one whose items read no sidecar
                memo_of.append("item reads")
            memo = digest(memo_of + [_GATHERED] if rs.open_values else memo_of)
            known = self.state.builds.foreach_key(stage.id)
            if known is not None and known[0] == memo:
                rs.key = known[1]
                return
            rs.key = rs.foreach_key()
            rs.remember = (memo, rs.key)
            return
        params = dict(rs.doc["params"])
        for name in rule.reduce_params:
            params.pop(name, None)
        rs.map_base = key_digest(dict(rs.doc, params=params))
        entries = self.store.get_actions(list(rs.item_keys.values()))
        rs.cached = {rel: entries[k] for rel, k in rs.item_keys.items() if k in entries}
        if len(rs.cached) == len(rs.items):
            rs.reduce_key({rel: e["map"]["hash"] for rel, e in rs.cached.items()})
        else:
            rs.key = None

    def read_cached_items(self, stage: Stage, rs: ResolvedStage) -> None:
        """Read which items of a foreach stage are in the action cache (``rs.cached``): from
        the stage's item index where it vouches for an item's key, else from the store. A
        map-reduce stage's maps were read while resolving."""
        if rs.map_reduce:
            return
        index = self.state.builds.item_index(stage.id, self.store.removals())
        rs.cached = _indexed(index, rs.item_keys)
        rest = [k for rel, k in rs.item_keys.items() if rel not in rs.cached]
        entries = self.store.get_actions(rest) if rest else {}
        rs.cached.update({rel: entries[k] for rel, k in rs.item_keys.items() if k in entries})

    # references and inputs --------------------------------------------------------------
    def _counted_outputs(
        self, stage: Stage, ports: Ports, dep: Stage, texts: list[str]
    ) -> set[str] | None:
        """The outputs of upstream stage ``dep`` whose manifests go into the key of a stage
        it does not feed items (with ``dep``'s computed values): those the stage reads whole.
        An input path strictly inside an output (``{A.d}/sub/f.txt``, or that path written
        out) is hashed as the stage's input, which is all it reads there, so a sibling file
        changing in that folder keeps its key. None: all of them, as before outputs were told
        apart, where the stage reads them all whole, lists ``dep`` in its ``depends_on`` (an
        order it asked for may hide reads of any), uses one of its computed values (a path
        one gives may lead anywhere in them) or is handed its values (``custom``); so the
        same formula gives such stages the keys they had."""
        if dep.id in stage.after or getattr(stage.rule, "upstream_param", None):
            return None
        outputs = dep.ports.outputs
        whole: set[str] = set()
        read: set[str] = set()  # the input paths, as the key holds them
        for value in ports.inputs.values():
            for path in value if isinstance(value, list) else [value]:
                if not isinstance(path, str):
                    continue
                path = os.path.normpath(path)
                read.add(path)
                owner = self.p.output_owner(glob_base(path) if is_glob(path) else path)
                if owner is not None and owner[0] == dep.id and (not owner[2] or is_glob(path)):
                    whole.add(owner[1])
        for text in strings(stage.config):
            if "{" not in text:
                continue
            try:
                pieces = parse(text)
            except TemplateError:
                return None
            names = {p.name for p in pieces if isinstance(p, Ref) and p.scope == dep.id}
            if not names:
                continue
            if not names <= set(outputs):
                return None  # a computed value (or a path one gives)
            path = self._path_of(pieces)
            if path is None or os.path.normpath(path) not in read or is_glob(path):
                whole |= names  # used otherwise than as an input path (a cmd, a param)
        # a path into an output written out in a param or the cmd (or through a variable)
        whole |= set(self._uncovered(stage, ports, dep, texts))
        return None if whole >= set(outputs) else whole

    def _uncovered(
        self, stage: Stage, ports: Ports, dep: Stage, texts: list[str]
    ) -> dict[str, set[str] | None]:
        """The outputs of ``dep`` that the stage's params (``texts``: its ``cmd``, ``env``
        and other config, with variables, output references and inputs put in) name by a
        path its inputs do not cover, written out as it is or from the project root: for
        each, the paths inside it they name, or None where one names the output itself. A
        stage reads what its cmd names, whether or not an input port says so. A folder or
        glob holding an output counts it too (see :func:`_named_folders`), but for the
        stage's own outputs' folders and the folder its items come from."""
        item_input = stage.foreach.input if stage.foreach is not None else None
        value = ports.inputs.get(item_input) if item_input is not None else None
        items = (glob_base(value) if is_glob(value) else value) if isinstance(value, str) else None
        fed = self._foreach_feed(stage, ports)
        found: dict[str, set[str] | None] = {}
        folders: list[str] | None = None
        for name, rel in dep.ports.outputs.items():
            inside = self._inside(texts, rel, items)
            if inside is None or (
                inside is not False
                and not all(self._covered(ports, os.path.join(rel, s), item_input) for s in inside)
            ):
                found[name] = inside  # type: ignore[assignment]
                continue
            # a folder it lies in (``root: build/d``) or a glob matching it (``build/d/*``);
            # never the items' own output or folder, each item's key holding its item
            if (dep.id, name) == fed or (items is not None and within(norm(rel), norm(items))):
                continue
            if folders is None:
                folders = [
                    f for f in _named_folders(texts, norm(str(self.p.root)))
                    if not self._covered(ports, glob_base(f) if is_glob(f) else f, item_input)
                    and not _own_folder(f, ports.outputs.values())
                ]  # fmt: skip
            if any(_holds(f, rel) for f in folders):
                found[name] = None
        return found

    def _named_upstream(self, stage: Stage, ports: Ports, texts: list[str]) -> dict[str, str]:
        """The paths into the known upstream outputs that the stage's params name and its
        inputs do not cover (see :meth:`_uncovered`), with the hashes those outputs'
        manifests give them (``missing``: not in them)."""
        found: dict[str, str] = {}
        for dep in stage.deps:
            planned = self.results.get(dep)
            if planned is None or planned.outputs is None:
                continue
            up = self.p.stages[dep]
            for name, inside in self._uncovered(stage, ports, up, texts).items():
                made = planned.outputs.get(name)
                if made is None:
                    continue
                for sub in sorted(inside) if inside is not None else ["."]:
                    m = sub_manifest(made, sub)
                    path = os.path.normpath(os.path.join(up.ports.outputs[name], sub))
                    found[path] = "missing" if m is None else manifest_hash(m)
        return found

    def _covered(self, ports: Ports, path: str, item_input: str | None) -> bool:
        """Whether ``path`` is an input of the stage, or lies in an input folder (the
        foreach input, whose items are keyed one by one, excepted): hashed in its key."""
        path = os.path.normpath(path)
        for name, value in ports.inputs.items():
            if name == item_input:
                continue
            for p in value if isinstance(value, list) else [value]:
                if isinstance(p, str) and not is_glob(p) and within(path, os.path.normpath(p)):
                    return True
        return False

    def _item_folder_reads(
        self,
        stage: Stage,
        ports: Ports,
        fed: tuple[str, str] | None,
        unknown: set[str],
        texts: list[str],
    ) -> dict[str, str]:
        """For a foreach stage whose items come from a folder no single upstream output is
        (a source folder, or one other stages write into), the files of that folder its
        params name by their path (``cat data/b.cfg {inputs.src}``), with their hashes: each
        item reads them, so each item's key holds them. Empty otherwise."""
        if stage.foreach is None or fed is not None:
            return {}
        value = ports.inputs.get(stage.foreach.input)
        if not isinstance(value, str):
            return {}
        base = glob_base(value) if is_glob(value) else value
        inside = self._inside(texts, base)
        if inside is False:
            return {}
        if inside is None:
            inside = {"."}
        reads: dict[str, str] = {}
        for sub in sorted(inside):
            path = os.path.normpath(os.path.join(base, sub))
            try:
                reads[path] = self._input_hash(stage, path, unknown)
            except StageFailure:
                reads[path] = "missing"
        return reads

    def _param_texts(self, ports: Ports, item_input: str | None) -> list[str]:
        """The strings of a stage's params (keys of mappings too), as a shell would read a
        path in them: each ``{inputs.NAME}`` but a foreach input's (an item) put in, and
        ``//`` read as ``/``."""
        texts = strings(ports.params, keys=True)
        paths = {
            n: v if isinstance(v, str) else " ".join(p for p in v if isinstance(p, str))
            for n, v in ports.inputs.items()
            if isinstance(v, (str, list)) and n != item_input
        }
        out = []
        for text in texts:
            if "{inputs." in text:
                text = _INPUT_REF.sub(lambda m: paths.get(m.group(1), m.group(0)), text)
            out.append(_SLASHES.sub("/", text) if "//" in text else text)
            if "/." in text:  # ``build/x/../y.txt`` names build/y.txt: written out too
                dotted = [norm(w) for w in _WORD.findall(text) if "{" not in w and _DOTS.search(w)]
                if dotted:
                    out.append(" ".join(dotted))
        return out

    def _inside(
        self, texts: list[str], rel: str, items: str | None = None
    ) -> set[str] | None | bool:
        """The paths inside ``rel`` (relative to it) that ``texts`` name; None where one
        names ``rel`` itself or leads out of it (``rel/../x``); False where none names it.
        A path made from the item (``rel/{item.stem}.json``) names the folder it lies in,
        but in a foreach stage's items' folder (``items``), where each item's key holds
        it, and in a stage told no such folder (``items`` None)."""
        forms = [rel] if os.path.isabs(rel) else [rel, os.path.join(str(self.p.root), rel)]
        found: set[str] | None = set()
        named = False
        for form in forms:
            pattern = None
            for text in texts:
                if form not in text:
                    continue
                pattern = pattern or _path_pattern(form)
                for m in pattern.finditer(text):
                    tail = m.group(1) or ""
                    if text.startswith("{", m.end()):
                        tail = tail[: tail.rfind("/") + 1]  # the folder the item's path is in
                        joined = os.path.normpath(rel + tail)
                        if not tail or items is None or within(joined, items):
                            continue  # ``data/{item.relpath}``: the item's own key holds it
                    named = True
                    sub = os.path.normpath(tail.lstrip("/")) if tail else "."
                    if sub in (".", "") or sub.startswith(".."):
                        return None
                    found.add(sub)  # type: ignore[union-attr]
        return found if named else False

    def _per_item_reads(
        self, stage: Stage, ports: Ports, texts: list[str], entries: Callable[[], Any]
    ) -> Callable[[Item], dict[str, str]] | None:
        """For a foreach stage whose params name a file of its items' folder through the
        item (``data/{item.stem}.json``, ``{inputs.src}.meta``, ``$(dirname
        {inputs.src})/common.cfg``): how to find an item's such files (but the item itself
        and a folder holding it, such as ``$(dirname {inputs.src})``) and their hashes,
        read once from the folder's manifest (``entries``); one that does not exist is
        ``missing`` (so an item whose file is deleted never gets back the key it had before
        such files counted). The folder's hash is part of what the stage key is remembered
        under, so a changed file is seen. None where no param names one."""
        assert stage.foreach is not None
        value = ports.inputs.get(stage.foreach.input)
        if not isinstance(value, str):
            return None
        base = glob_base(value) if is_glob(value) else value
        own = "{inputs." + stage.foreach.input + "}"
        itself = {own, "{item.relpath}" if base == "." else base + "/{item.relpath}"}
        templates = sorted({w for t in texts for w in _item_words(t, own)} - itself)
        if not templates:  # the item itself, the usual case: nothing to do per item
            return None
        root = norm(str(self.p.root))
        known: dict[str, str] = {}
        folders: set[str] = set()
        names: list[str] = []  # the files, sorted once: a glob looks its prefix up there
        memo: dict[str, str] = {}

        def hash_of(path: str) -> str:
            """The hash of the file ``path`` of the items' folder (of the files a folder or a
            glob there holds), ``missing`` where there is none: one that appears changes
            the key."""
            if path in memo:
                return memo[path]
            if not names and not folders:
                for e in entries():
                    known[e[0]] = e[1]
                    folders.update(_parents(e[0]))
                names.extend(sorted(known))
                folders.update(("", "."))
            sub = path if base == "." else path[len(base) + 1 :]
            got: str
            if sub in known:
                got = known[sub]
            elif sub in folders or is_glob(sub):  # its files, looked up by their prefix
                glob = is_glob(sub)
                prefix = _GLOB_CHAR.split(sub, maxsplit=1)[0] if glob else sub + "/"
                hit = []
                for s in names[bisect.bisect_left(names, prefix) :]:
                    if not s.startswith(prefix):
                        break
                    if not glob or glob_match(s, sub):
                        hit.append([s, known[s]])
                got = digest(hit, checked=True) if hit else "missing"
            else:
                got = "missing"
            memo[path] = got
            return got

        def reads(item: Item) -> dict[str, str]:
            fields = {"name": item.name, "stem": item.stem, "relpath": item.relpath}
            fill = lambda m: fields[m.group(1)]  # noqa: E731
            found: dict[str, str] = {}
            for template in templates:
                text = _ITEM_FIELD.sub(fill, template.replace(own, item.path))
                for word in (text, text[2:]) if _GLUED.match(text) else (text,):
                    path = _relative(norm(word), root)
                    # the item, or a folder holding it (``$(dirname {inputs.src})``, the
                    # items' folder): no file that item alone reads
                    if path is None or within(item.path, path) or not within(path, base):
                        continue
                    found[path] = hash_of(path)
            return found

        return reads

    def _path_of(self, pieces: list[str | Ref]) -> str | None:
        """A template's text where it names only variables and stages' output paths (what
        the loader resolves), else None."""
        text = []
        for piece in pieces:
            if isinstance(piece, str):
                text.append(piece)
            elif piece.scope == "vars" and isinstance(self.p.vars.get(piece.name), str):
                text.append(self.p.vars[piece.name])
            elif piece.scope in self.p.stages and piece.name in (
                outs := self.p.stages[piece.scope].ports.outputs
            ):
                text.append(outs[piece.name])
            else:
                return None
        return "".join(text)

    def _foreach_feed(self, stage: Stage, ports: Ports) -> tuple[str, str] | None:
        """``(upstream stage, output name)`` whose output a foreach stage's items come from,
        or None (not a foreach stage, or its input is a source folder)."""
        if stage.foreach is None:
            return None
        value = ports.inputs.get(stage.foreach.input)
        if not isinstance(value, str):
            return None
        owner = self.p.output_owner(glob_base(value) if is_glob(value) else value)
        if owner is None or owner[0] == stage.id:
            return None
        return owner[0], owner[1]

    def _lookup(
        self, stage: Stage, unknown: set[str], used: list[Ref] | None = None
    ) -> Callable[[Ref], Any]:
        """Looks a reference up; each computed value looked up is noted in ``used``."""

        def lookup(ref: Ref) -> Any:
            if ref.scope == "vars":
                return self.p.vars[ref.name]
            up = self.p.stages[ref.scope]
            if ref.name in up.ports.outputs:
                return up.ports.outputs[ref.name]
            planned = self.results.get(ref.scope)
            if planned is None or planned.values is None:
                unknown.add(ref.scope)
                raise Unknown(ref.scope)
            values = planned.values if isinstance(planned.values, dict) else {}
            if ref.name not in values:
                got = ", ".join(sorted(map(str, values))) or "none"
                who = "its items" if up.foreach is not None else "it"
                raise StageFailure(
                    f"{ref}: stage {ref.scope!r} returned no value {ref.name!r} ({who} "
                    f"returned: {got}); return it from that stage, or refer to one it returns"
                )
            value = values[ref.name]
            if used is not None:
                used.append(ref)
            out_name = up.rule.path_values.get(ref.name)
            if out_name is not None and value is not None:
                paths = value if isinstance(value, list) else [value]
                if not all(isinstance(v, str) for v in paths):
                    raise StageFailure(
                        f"{ref}: stage {ref.scope!r} returned {value!r:.80}, not a path or a list "
                        f"of paths; build {ref.scope!r} again (pipemake build --force-stage "
                        f"{ref.scope})"
                    )
                base = up.ports.outputs[out_name]
                join = lambda v: os.path.normpath(os.path.join(base, v))  # noqa: E731
                value = [join(v) for v in value] if isinstance(value, list) else join(value)
            return value

        return lookup

    def _resolve_ports(self, stage: Stage, unknown: set[str]) -> Ports:
        """Resolve the stage's templates now that upstream values are known; check again.

        In a key the rule keeps as a template (a shell ``cmd``, ``env``), a computed value is
        written the way the rule says (``quote_value``: quoted for the shell where it stands
        in ``cmd``, the text itself in ``env``): a value is data, never code."""
        used: list[Ref] = []
        lookup = self._lookup(stage, unknown, used)
        symbolic = getattr(stage.rule, "symbolic_keys", ())
        quote_value = getattr(stage.rule, "quote_value", None)
        stages = self.p.stages

        def is_value(r: Ref) -> bool:  # a computed value, not a variable or a path
            return r.scope != "vars" and r.name not in stages[r.scope].ports.outputs

        def quoting(key: str) -> Any:
            def quote(ref: Ref, value: Any, template: str, index: int) -> str:
                return quote_value(key, ref, value, template, index)

            return quote if quote_value is not None else None

        symbols = lambda r: r.scope in SYMBOLIC_SCOPES  # noqa: E731
        config: dict[str, Any] = {}
        try:
            for key, value in stage.config.items():
                if key in symbolic:
                    # variables and paths first, as the loader writes them (the pipeline's
                    # own text), so each value is quoted for where it stands in the result
                    first = substitute(value, lookup, lambda r: symbols(r) or is_value(r))
                    config[key] = substitute(first, lookup, symbols, quoting(key))
                else:
                    config[key] = substitute(value, lookup)
        except TemplateError as exc:
            raise StageFailure(str(exc)) from None
        ports, problems = stage.rule.ports(config)
        ports.root = str(self.p.root)
        ports.stage = stage.id
        problems = problems or stage.rule.check(ports)
        if problems:
            raise StageFailure("; ".join(msg for _key, msg in problems))
        for name, value in ports.inputs.items():
            if isinstance(value, list):
                ports.inputs[name] = [os.path.normpath(v) for v in value]
            else:
                ports.inputs[name] = os.path.normpath(value)
        if used:
            self._inside_project(stage, ports, used)
        ports.outputs = dict(stage.ports.outputs)
        return ports

    def _inside_project(self, stage: Stage, ports: Ports, used: list[Ref]) -> None:
        """Refuse an input that a computed value led outside the project and outside every
        path the pipeline file names (the stages' inputs and outputs), by its path or
        through a symlink on the way, or into the workspace's own ``.pipemake``. A value
        may come from a shared store or a remote (without ``PIPEMAKE_CACHE_KEY``, trusted as
        it is), and would otherwise point the stage, and what it writes and pushes, at any
        file of the user's."""
        root = str(self.p.root)
        absolute = lambda v: norm(os.path.join(root, v))  # noqa: E731 (kept if absolute)
        if self._named is None:  # once a build: every path the pipeline names, both ways
            named = [root]
            for other in self.p.stages.values():
                for value in [*other.ports.outputs.values(), *other.ports.inputs.values()]:
                    for v in value if isinstance(value, list) else [value]:
                        if isinstance(v, str) and "{" not in v:
                            named.append(v)
            allowed = {absolute(v) for v in named}
            real = {norm(os.path.realpath(a)) for a in allowed}
            # and where the folders on the way to them lead (data -> /big/disk, with
            # data/index.csv named): a value may name another file of a linked folder
            top = absolute(".")
            for a in list(allowed):
                up = os.path.dirname(a)
                while within(up, top) and up != top:
                    real.add(norm(os.path.realpath(up)))
                    up = os.path.dirname(up)
            self._named = (allowed | real, real)
        either, real = self._named
        top, real_top = absolute("."), norm(os.path.realpath(root))
        dot = [absolute(".pipemake"), norm(os.path.realpath(absolute(".pipemake")))]
        for name, value in ports.inputs.items():
            for path in value if isinstance(value, list) else [value]:
                full = absolute(path)
                there = norm(os.path.realpath(full))
                if any(within(full, d) or within(there, d) for d in dot):
                    pass  # never the workspace's own files
                elif within(full, top) and within(there, real_top):
                    continue  # the project: the common case, without a scan
                elif any(within(full, a) for a in either) and any(within(there, r) for r in real):
                    continue
                refs = ", ".join(sorted({str(r) for r in used}))
                where = f"{path} (leading to {there})" if there != full else path
                raise StageFailure(
                    f"input {name!r} is {where}, outside the project or a path the pipeline "
                    f"names, and comes from a computed value ({refs}): a path a value gives "
                    "must lie inside them (a shared store could otherwise point the stage at "
                    "any file); name that folder as an input or output of a stage in the "
                    "pipeline file (vars: do not count)"
                )

    def _input_hash(self, stage: Stage, path: str, unknown: set[str]) -> str:
        owner = self.p.output_owner(path)
        if owner is not None and owner[0] != stage.id:
            planned = self.results.get(owner[0])
            if planned is None or planned.outputs is None:
                unknown.add(owner[0])
                return "?"
            manifest = sub_manifest(planned.outputs[owner[1]], owner[2])
            if manifest is None:
                raise StageFailure(
                    f"input {path} was not produced by stage {owner[0]!r} (its output "
                    f"{self.p.stages[owner[0]].ports.outputs[owner[1]]} holds no such path)"
                )
            return manifest_hash(manifest)
        try:
            info = self.hasher.info(path)
        except BadPath as exc:
            raise StageFailure(f"input {path}: {exc}") from None
        if info.kind == "missing":
            if self._writers_pending(stage, unknown):
                return "?"
            raise StageFailure(f"input {path} does not exist")
        return info.hash

    def _writers_pending(self, stage: Stage, unknown: set[str]) -> bool:
        """Whether a stage writing into a folder this one reads has not run yet in this
        plan (then a folder not on disk yet is one it makes, not a missing input); those
        stages are noted in ``unknown``."""
        pending = [
            d for d in stage.placed
            if (planned := self.results.get(d)) is None or planned.outputs is None
        ]  # fmt: skip
        unknown.update(pending)
        return bool(pending)


def _indexed(
    index: tuple[dict[str, str], dict[str, Any]] | None, item_keys: dict[str, str]
) -> dict[str, Any]:
    """The entries of the items whose key is the one the stage's item index (the workspace
    state, written when the stage was last assembled; checked against its hash) holds for
    them; anything else is read from the store."""
    if not index:
        return {}
    keys, entries = index
    if keys == item_keys:
        return dict(entries)
    return {rel: entries[rel] for rel, key in item_keys.items() if keys.get(rel) == key}


#: ``{inputs.NAME}`` in a param's text, and runs of slashes (``build//d`` is ``build/d``)
_INPUT_REF = re.compile(r"\{inputs\.([A-Za-z_][\w-]*)\}")
_SLASHES = re.compile(r"/{2,}")
#: the first character of a glob's wildcard part (what comes before it is its prefix)
_GLOB_CHAR = re.compile(r"[*?\[]")
#: a word of a text that may be a path (references ``{…}`` kept in it), ended where a
#: shell word or an option's value ends; a ``.`` or ``..`` part of one
_WORD = re.compile(r"(?:\{[^{}\s]*\}|[^\s'\"`;|&<>(){}$,:=])+")
_DOTS = re.compile(r"/\.\.?(?:/|$)")
#: an item's fields in a template, a one-letter option glued to a path (``-Idata``), and
#: ``$(dirname P)`` / `` `dirname P` `` (read as ``P/..``)
_ITEM_FIELD = re.compile(r"\{item\.(name|stem|relpath)\}")
_GLUED = re.compile(r"-[A-Za-z](?=\S)")
_DIRNAME = re.compile(r"(\$\(|`)\s*dirname\s+([\"']?)([^\s'\"`;|&<>()$]+)\2\s*(?:\)|`)")
#: an option saying where a tool writes (``--outdir``, ``--output-dir=``, ``-o``), ending
#: where its value starts: the folder it names is a destination, not read
_DEST = re.compile(
    r"(?:^|[\s'\"])(?:-o|--?(?:out|output|dest|destination|save)"
    r"(?:[-_]?(?:dir|directory|folder|path|root|prefix))?)['\"]?(?:=|\s+)['\"]?$"
)
#: a ``mkdir`` and the folders it makes (named, not read)
_MKDIR = re.compile(r"\bmkdir((?:\s+-[^\s;|&]*)*)((?:\s+[^\s;|&<>()]+)*)")


def _item_words(text: str, own: str) -> list[str]:
    """The words of ``text`` that are paths made from the item (``data/{item.stem}.json``,
    ``{inputs.src}.meta``, where ``own`` is the foreach input's reference), and nothing
    else that is only known when the stage runs."""
    if "{item." not in text and own not in text:
        return []
    text = _DIRNAME.sub(lambda m: m.group(3) + "/..", text)
    words = []
    for word in _WORD.findall(text):
        refs = re.findall(r"\{[^{}]*\}", word)
        if refs and all(r == own or _ITEM_FIELD.fullmatch(r) for r in refs):
            words.append(word)
    return words


def _named_folders(texts: list[str], root: str) -> list[str]:
    """The paths and globs ``texts`` name that may be folders, normalized and relative to
    the project (``root``): words holding a ``/`` (``root: build/d``; a bare word such as
    ``kind: models`` is no path); not the project itself, what a ``mkdir`` makes, where an
    option says a tool writes (``--outdir out/``), a shell comment (`` # build/``), or what
    an item fills in."""
    found = set()
    for text in texts:
        if "/" not in text:
            continue
        text = _MKDIR.sub(" ", _uncommented(text))
        words = [
            m.group() for m in _WORD.finditer(text)
            if "/" in m.group() and not _DEST.search(text, 0, m.start())
        ]  # fmt: skip
        for word in words:
            if "{" in word or not word:
                continue
            for w in (word, word[2:]) if _GLUED.match(word) else (word,):
                path = _relative(norm(w), root)
                if path is not None and path != ".":
                    found.add(path)
    return sorted(found)


def _uncommented(text: str) -> str:
    """``text`` without what a shell reads as a comment: from an unquoted ``#`` starting a
    word to the end of its line."""
    if "#" not in text:
        return text
    out: list[str] = []
    quote = ""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and quote != "'":  # an escaped character, kept as it is
            out.append(text[i : i + 2])
            i += 2
            continue
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or text[i - 1] in " \t\n;&|("):
            end = text.find("\n", i)
            if end < 0:
                break
            i = end
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _own_folder(folder: str, outputs: Any) -> bool:
    """Whether ``folder`` (a path, or a glob) is one of a stage's own ``outputs``, holds one
    or lies in one (a glob: lies in one): where the stage writes, not what it reads."""
    if is_glob(folder):
        base = glob_base(folder)
        return any(isinstance(o, str) and within(base, norm(o)) for o in outputs)
    return any(
        isinstance(o, str) and (within(folder, norm(o)) or within(norm(o), folder)) for o in outputs
    )


def _holds(folder: str, rel: str) -> bool:
    """Whether ``folder`` (a path, or a glob as a shell reads it) is a folder ``rel`` lies
    in, or a glob matching ``rel`` or such a folder."""
    if not is_glob(folder):
        return rel.startswith(folder + "/")
    if "**" in folder:
        return any(glob_match(p, folder) for p in [rel, *_parents(rel)])
    parts, names = folder.split("/"), rel.split("/")
    return len(parts) <= len(names) and all(map(fnmatch.fnmatchcase, names, parts))


def _parents(rel: str) -> list[str]:
    """The folders ``rel`` lies in (``a/b/c`` → ``a/b``, ``a``)."""
    out = []
    while "/" in rel:
        rel = rel.rpartition("/")[0]
        out.append(rel)
    return out


def _relative(path: str, root: str) -> str | None:
    """A normalized path relative to the project root (``root``, normalized), or None where
    it leads out of the project."""
    if os.path.isabs(path):
        if not within(path, root):
            return None
        path = path[len(root) :].lstrip("/") or "."
    return None if path == ".." or path.startswith("../") else path


def _path_pattern(path: str) -> re.Pattern[str]:
    """A regex finding ``path`` in a text as a whole path, not the head or tail of a longer
    name (but glued to a one-letter option: ``-Ibuild/inc`` names ``build/inc``), with what
    follows it inside it (``/sub/f.txt``) as group 1; a glob there (``/*.txt``) stops it,
    naming the folder itself."""
    return re.compile(
        r"(?:(?<![\w.-])|(?<=-[A-Za-z]))"
        + re.escape(path)
        + r"(?![\w.-])(/[^\s'\"`;|&<>(){}$,:=*?\[\]]*)?"
    )


def _named_outputs(stage: Stage, dep: Stage) -> set[str] | None:
    """The outputs of stage ``dep`` that ``stage``'s config refers to (by name, or by a name
    its rule gives an output's path, such as ``character_dir``), or None (all of them) where
    its ``depends_on`` names ``dep`` (an order it asked for may hide reads of any) or where
    it uses one of ``dep``'s computed values (a file name, say, that leads into them)."""
    if dep.id in stage.after:
        return None
    names = {r.name for r in find_refs(stage.config) if r.scope == dep.id}
    aliases = getattr(dep.rule, "path_values", None) or {}
    named = {aliases.get(n, n) for n in names}
    return named if named <= set(dep.ports.outputs) else None

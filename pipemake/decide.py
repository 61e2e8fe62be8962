"""Should a stage run? The rebuilder: a decision with reasons, from a resolved stage, its
action-cache entry, the check of its workspace outputs and its last-build record. It knows
nothing of scheduling, executing or the store, and writes nothing: :func:`decide` is a pure
function of what the build read, and the caches that feed it are written by the build.

A stage is *up to date* when its key is in the action cache and the workspace outputs match
the entry's manifests; *restore* when the key is cached but the outputs are missing or
different (or the key was built before with other params); *run* otherwise; *maybe* when an
upstream stage will run first and early cutoff may still spare this one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from .items import Item, item_reasons, output_conflict, removed_items, summarize
from .templates import TemplateError, parse

__all__ = [
    "Decision",
    "LastBuild",
    "Reason",
    "Resolved",
    "Trigger",
    "Verdict",
    "decide",
    "explain",
    "from_lock",
    "lock_reasons",
    "output_reasons",
    "waiting_on",
]


class Verdict(str, Enum):
    """What the build will do with a stage."""

    UP_TO_DATE = "up to date"
    RESTORE = "restore"
    RUN = "run"
    MAYBE = "maybe"


class Trigger(str, Enum):
    """Why: the vocabulary of reasons."""

    NEVER_BUILT = "never built"
    NO_ENTRY = "no cache entry"
    PARAM = "param"
    INPUT = "input"
    UPSTREAM = "upstream"
    RULE = "rule"
    CODE = "code"
    FORCED = "forced"
    OUTPUT_MISSING = "outputs missing"
    OUTPUT_CHANGED = "output changed"
    UPSTREAM_WILL_RUN = "upstream will run"
    CACHED = "cached"
    STORE_CORRUPT = "store"
    ITEMS = "items"
    FAILED = "failed"


@dataclass(frozen=True)
class Reason:
    """One reason: a trigger plus the human detail (``param model u2net → isnet``)."""

    trigger: Trigger
    detail: str

    def __str__(self) -> str:
        return self.detail


@dataclass
class Decision:
    """The verdict for a stage and every reason for it."""

    verdict: Verdict
    reasons: list[Reason] = field(default_factory=list)
    items: dict[str, Any] | None = None

    def line(self, stage: str) -> str:
        """``STAGE: DECISION: reason; reason`` as ``dry-run`` prints it."""
        why = "; ".join(map(str, self.reasons)) if self.reasons else ""
        return f"{stage}: {self.verdict.value}" + (f": {why}" if why else "")

    def as_json(self, stage: str) -> dict[str, Any]:
        """``{stage, decision, reasons, items}`` as ``dry-run --json`` prints it."""
        return {
            "stage": stage,
            "decision": self.verdict.value,
            "reasons": [r.detail for r in self.reasons],
            "triggers": [r.trigger.value for r in self.reasons],
            "items": self.items,
        }


def _text(value: Any) -> str:
    return _as_run(value) if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _as_run(text: str) -> str:
    """A key's template string as its command sees it: braces the loader doubled around a
    substituted value (``{{``) shown single, references still to fill (``{outputs.o}``) kept."""
    if "{{" not in text and "}}" not in text:
        return text
    try:
        return "".join(str(part) for part in parse(text))
    except TemplateError:
        return text


def _short(value: Any, limit: int = 60) -> str:
    text = _text(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: characters kept before the first difference when long values are cut
_BEFORE = 20


def _changed(old: Any, new: Any, limit: int = 60) -> tuple[str, str]:
    """Both values as text, cut to about ``limit`` characters around where they first
    differ (a long ``cmd`` changed near its end shows that end, not the same start twice)."""
    a, b = _text(old), _text(new)
    if len(a) <= limit and len(b) <= limit:
        return a, b
    same = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    start = max(0, same - _BEFORE)

    def cut(text: str) -> str:
        part = text[start:]
        part = part if len(part) <= limit else part[: limit - 1] + "…"
        return ("…" if start else "") + part

    return cut(a), cut(b)


def _same_length_lists(a: Any, b: Any) -> bool:
    return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) > 1


def _diff_params(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[Reason]:
    out = []
    for key in sorted(set(old) | set(new)):
        name = prefix + key
        if key not in old:
            out.append(Reason(Trigger.PARAM, f"param {name} added ({_short(new[key])})"))
        elif key not in new:
            out.append(Reason(Trigger.PARAM, f"param {name} removed (was {_short(old[key])})"))
        elif isinstance(old[key], dict) and isinstance(new[key], dict):
            out.extend(_diff_params(old[key], new[key], name + "."))
        elif _same_length_lists(old[key], new[key]):  # a list cmd: the commands that changed
            for i, (a, b) in enumerate(zip(old[key], new[key], strict=True)):
                if a != b:
                    out.append(
                        Reason(Trigger.PARAM, f"param {name}[{i}] {' → '.join(_changed(a, b))}")
                    )
        elif old[key] != new[key]:
            was, now = _changed(old[key], new[key])
            out.append(Reason(Trigger.PARAM, f"param {name} {was} → {now}"))
    return out


def _param_reasons(
    old: dict[str, Any], new: dict[str, Any], templates: tuple[Any, Any]
) -> list[Reason]:
    """The params that changed (:func:`_diff_params`), a param whose text as written is the
    same said instead by the ``{params.*}``/``{vars.*}`` values it uses that changed
    (``params.lr 42 → 43``); ``templates``: what the last build recorded of them, and what
    the stage has now (see :attr:`pipemake.model.Stage.templates`). Either not known (a
    record written before them): every param as :func:`_diff_params` says it."""
    was, now = (_as_templates(t) for t in templates)
    if was is None or now is None or not isinstance(old, dict) or not isinstance(new, dict):
        return _diff_params(old, new)
    out: list[Reason] = []
    said: set[str] = set()
    for key in sorted(set(old) | set(new)):
        if key in old and key in new and old[key] == new[key]:
            continue
        a, b = was["keys"].get(key), now["keys"].get(key)
        if a is not None and b is not None:  # a config key that uses them
            refs, same = _changed_refs(a["refs"], b["refs"]), a["text"] == b["text"]
        else:  # a param the rule makes of the config (a python stage's params): by the
            # values the config uses, where the config as written is the same
            same = a is None and b is None and was.get("config") == now.get("config")
            refs = _changed_refs(_all_refs(was), _all_refs(now)) if same else {}
        if not (same and refs):  # its text changed (or no value it uses did): as it is
            out += _diff_params({key: old[key]} if key in old else {},
                                {key: new[key]} if key in new else {})  # fmt: skip
        for name, (x, y) in refs.items():
            if name not in said:
                said.add(name)
                out.append(Reason(Trigger.PARAM, f"{name} {' → '.join(_changed(x, y))}"))
    return out


def _as_templates(value: Any) -> dict[str, Any] | None:
    """A stage's ``templates`` as recorded, or None when absent or not of their shape."""
    if not isinstance(value, dict) or not isinstance(value.get("keys"), dict):
        return None
    for key in value["keys"].values():
        if not isinstance(key, dict) or "text" not in key or not isinstance(key.get("refs"), dict):
            return None
    return value


def _all_refs(templates: dict[str, Any]) -> dict[str, Any]:
    return {n: v for key in templates["keys"].values() for n, v in key["refs"].items()}


def _changed_refs(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The references used before and now whose values differ (as their key tells them
    apart: ``1`` is not ``1.0``), by name."""
    return {n: (old[n], new[n]) for n in sorted(old) if n in new and _text(old[n]) != _text(new[n])}


def _paths(value: Any) -> dict[str, str]:
    """``{path: hash}`` from an input's key form: ``[path, hash]`` or a list of them."""
    if value and isinstance(value[0], str):
        return {value[0]: value[1]}
    return {p: h for p, h in value}


def _named(name: str, value: Any) -> str:
    """An input said by its key and what it points at: ``s (data/s.txt)``, ``s (data/a.txt
    and 2 more)``; the key alone for an input of no paths (an empty list, a value)."""
    try:
        paths = sorted(_paths(value)) if isinstance(value, list) else []
    except (TypeError, ValueError, IndexError):
        paths = []
    if not paths:
        return name
    more = f" and {len(paths) - 1:,} more" if len(paths) > 1 else ""
    return f"{name} ({paths[0]}{more})"


def _diff_inputs(old: dict[str, Any], new: dict[str, Any]) -> list[Reason]:
    out = []
    for name in sorted(set(old) | set(new)):
        if name not in old:
            out.append(Reason(Trigger.INPUT, f"input {_named(name, new[name])} added"))
            continue
        if name not in new:
            out.append(Reason(Trigger.INPUT, f"input {_named(name, old[name])} removed"))
            continue
        o, n = _paths(old[name]), _paths(new[name])
        for path in sorted(set(o) | set(n)):
            if path not in o:
                out.append(Reason(Trigger.INPUT, f"input {path} added"))
            elif path not in n:
                out.append(Reason(Trigger.INPUT, f"input {path} removed"))
            elif o[path] != n[path]:
                out.append(Reason(Trigger.INPUT, f"input {path} changed"))
    return out


def explain(
    old: dict[str, Any] | None,
    new: dict[str, Any],
    failed: dict[str, Any] | None = None,
    interrupted: bool = False,
    parts: tuple[Any, Any] = (None, None),
    templates: tuple[Any, Any] = (None, None),
) -> list[Reason]:
    """Why the key document ``new`` differs from the last build's ``old``. ``failed`` is the
    key document of a run that failed since (its last-build record keeps it): then the
    reasons say what changed since that run, or that nothing did and it failed (or, when
    ``interrupted``, that it was stopped by a signal before it finished). ``parts`` are the
    upstream digests split in outputs and computed values (:func:`upstream_change`), as
    recorded with ``old`` (or ``failed``) and as resolved now, when known; ``templates``
    likewise the stage's ``{params.*}``/``{vars.*}`` use (:attr:`pipemake.model.Stage.
    templates`): a param whose text as written is the same is said by the references whose
    values changed (``params.lr 42 → 43``), not as the whole param (``param cmd … → …``)."""
    if failed is not None:
        since = _changes(failed, new, parts, templates)
        how = "was interrupted" if interrupted else "failed"
        if not since:
            return [Reason(Trigger.FAILED, f"the last run {how}")]
        run = "interrupted" if interrupted else "failed"
        return [Reason(r.trigger, f"{r.detail} since the {run} run") for r in since]
    if old is None:
        return [Reason(Trigger.NEVER_BUILT, "never built")]
    return _changes(old, new, parts, templates)


def upstream_change(dep: str, old: Any, new: Any) -> str:
    """What of upstream stage ``dep`` changed for a stage whose key holds one digest of its
    outputs and computed values: ``old`` and ``new`` are ``[outputs digest, values digest]``
    pairs as recorded and as resolved now (not known for a record written before they were
    kept: then only that the stage changed)."""
    pair = isinstance(old, list) and isinstance(new, list) and len(old) == 2 and len(new) == 2
    if not pair:
        return f"upstream {dep} changed"
    outputs, values = old[0] != new[0], old[1] != new[1]
    if outputs and values:
        return f"upstream {dep} output and computed values changed"
    if values:
        return f"upstream {dep} computed values changed (its outputs did not)"
    return f"upstream {dep} output changed"


def _changes(
    old: dict[str, Any],
    new: dict[str, Any],
    parts: tuple[Any, Any] = (None, None),
    templates: tuple[Any, Any] = (None, None),
) -> list[Reason]:
    reasons: list[Reason] = []
    if old.get("rule") != new.get("rule"):
        reasons.append(Reason(Trigger.RULE, f"rule {old.get('rule')} → {new.get('rule')}"))
    elif old.get("rule_version") != new.get("rule_version"):
        reasons.append(
            Reason(
                Trigger.RULE, f"rule version {old.get('rule_version')} → {new.get('rule_version')}"
            )
        )
    if old.get("stage_version") != new.get("stage_version"):
        reasons.append(
            Reason(
                Trigger.CODE,
                f"stage version {old.get('stage_version')} → {new.get('stage_version')}",
            )
        )
    elif old.get("code") != new.get("code"):
        reasons.append(Reason(Trigger.CODE, "code changed"))
    reasons += _param_reasons(old.get("params", {}), new.get("params", {}), templates)
    reasons += _diff_inputs(old.get("inputs", {}), new.get("inputs", {}))
    old_up, new_up = old.get("upstream", {}), new.get("upstream", {})
    for dep in sorted(set(old_up) | set(new_up)):
        if dep not in old_up:
            reasons.append(Reason(Trigger.UPSTREAM, f"depends on stage {dep} now"))
        elif dep not in new_up:
            reasons.append(Reason(Trigger.UPSTREAM, f"no longer depends on stage {dep}"))
        elif old_up[dep] != new_up[dep]:
            was, now = (p.get(dep) if isinstance(p, dict) else None for p in parts)
            reasons.append(Reason(Trigger.UPSTREAM, upstream_change(dep, was, now)))
    if old.get("outputs") != new.get("outputs"):
        reasons.append(Reason(Trigger.PARAM, "declared outputs changed"))
    if old.get("items") != new.get("items") and "items" in new:
        reasons.append(Reason(Trigger.ITEMS, "items changed"))
    return reasons


class Resolved(Protocol):
    """What the rebuilder reads of a resolved stage (:class:`pipemake.resolve.ResolvedStage`)."""

    doc: dict[str, Any]
    key: str | None
    unknown: set[str]
    foreach: bool
    map_reduce: bool
    cached: dict[str, Any]

    @property
    def items(self) -> list[Item]: ...


class LastBuild:
    """A stage's last-build record as the rebuilder needs it: its key and result (read for
    every stage at once) and, read only when a reason needs them, its key document, the key
    document of a failed run since, and a foreach stage's item hashes."""

    def __init__(
        self,
        built: bool = False,
        key: str | None = None,
        result: str | None = None,
        record: Callable[[], dict[str, Any] | None] | dict[str, Any] | None = None,
        item_hashes: Callable[[], dict[str, str] | None] | dict[str, str] | None = None,
    ):
        #: whether the stage has a record at all (built, or tried, before)
        self.built = built
        self.key = key
        self.result = result
        self._record = record
        self._item_hashes = item_hashes

    @property
    def record(self) -> dict[str, Any] | None:
        """The whole record (None: never built), read on first use."""
        if callable(self._record):
            self._record = self._record()
        return self._record

    @property
    def item_hashes(self) -> dict[str, str] | None:
        """A foreach stage's items at its last build (relpath → content hash)."""
        if callable(self._item_hashes):
            self._item_hashes = self._item_hashes()
        return self._item_hashes

    def why(
        self,
        doc: dict[str, Any],
        parts: dict[str, Any] | None = None,
        templates: dict[str, Any] | None = None,
    ) -> list[Reason]:
        """Why a stage whose key is not cached runs: what changed since its last build, or
        since its last run when that failed (``parts``: the stage's upstream digests split
        in outputs and values, as resolved now; ``templates``: its use of params and
        variables, see :attr:`pipemake.model.Stage.templates`)."""
        record = self.record
        failed = None
        was = record.get("upstream_parts") if record else None
        used = record.get("templates") if record else None
        if record and record.get("result") in ("failed", "interrupted"):
            failed = record.get("failed_doc")
            was = record.get("failed_parts")
            used = record.get("failed_templates")
        interrupted = record is not None and record.get("result") == "interrupted"
        return explain(
            record.get("doc") if record else None, doc, failed=failed, interrupted=interrupted,
            parts=(was, parts), templates=(used, templates),
        )  # fmt: skip


def waiting_on(stage: str, restored: bool = False) -> Decision:
    """The decision for a stage whose templates or inputs need what ``stage`` makes, not
    known yet: it will run, or (``restored``) be put together from its items in the store."""
    will = "will be restored" if restored else "will run"
    return Decision(Verdict.MAYBE, [Reason(Trigger.UPSTREAM_WILL_RUN, f"upstream {stage} {will}")])


def decide(
    stage: Resolved,
    entry: Mapping[str, Any] | None,
    outputs: Mapping[str, str | None] | None,
    last: LastBuild,
    *,
    forced: bool = False,
    upstream: Mapping[str, Decision] | None = None,
    templates: dict[str, Any] | None = None,
) -> Decision:
    """The verdict for a resolved stage, and every reason for it.

    ``entry`` is the action-cache entry of the stage's key (None: not cached); ``outputs``
    the check of each workspace output against it (output path → None when it matches,
    ``missing`` or ``changed``), None when the entry lacks one of the stage's outputs;
    ``last`` the stage's last-build record; ``forced`` whether the user forced it;
    ``upstream`` the decisions made so far for other stages (what a stage waits on);
    ``templates`` the stage's use of params and variables (what a param's reason says). A
    foreach stage without an entry is decided item by item from ``stage.cached``: when
    every item is there (and no reduce runs) it is restored, put together from them.
    """
    if forced:  # whatever its upstream makes
        return Decision(Verdict.RUN, [Reason(Trigger.FORCED, "forced")])
    parts = getattr(stage, "upstream_parts", None)
    if stage.unknown:
        own = [r for r in last.why(stage.doc, parts, templates) if not _from_unknown(r, stage)]
        if own:
            return Decision(Verdict.RUN, own)
        first = sorted(stage.unknown)[0]
        told = (upstream or {}).get(first)
        return waiting_on(first, told is not None and told.verdict is Verdict.RESTORE)
    if entry is None:
        reasons = [
            r for r in last.why(stage.doc, parts, templates) if r.trigger is not Trigger.ITEMS
        ]
        items = None
        if stage.foreach:
            more, items = _item_verdicts(stage.items, stage.cached, last.item_hashes)
            if items["cached"] and not last.built:  # no build of it finished, yet some items
                reasons = [
                    _NOT_FINISHED if r.trigger is Trigger.NEVER_BUILT else r for r in reasons
                ]
            reasons += more
            if items["run"] == 0 and stage.items and not stage.map_reduce:  # none runs
                cached = stage.cached
                clash = output_conflict({it.relpath: cached[it.relpath].get("outputs") or {}
                                         for it in stage.items})  # fmt: skip
                if clash is not None:  # put together, they collide: the build fails again
                    return Decision(Verdict.RUN, [Reason(Trigger.FAILED, f"will fail: {clash}")])
                n = len(stage.items)
                every = Reason(Trigger.CACHED, f"all {n:,} items are in the store (none runs)")
                why = reasons or _items_changed(stage.items, last.item_hashes)
                return Decision(Verdict.RESTORE, [*why, every], items)
            if items["run"] == 0 and not reasons:  # a map-reduce stage: its reduce runs
                reasons = [Reason(Trigger.CACHED, f"all {len(stage.items):,} items cached")]
        if not reasons:
            reasons = [Reason(Trigger.NO_ENTRY, "no cache entry")]
        return Decision(Verdict.RUN, reasons, items)
    if outputs is None:
        return Decision(Verdict.RUN, [Reason(Trigger.NO_ENTRY, "no cache entry")])
    bad = [(rel, state) for rel, state in outputs.items() if state]
    if not bad:
        return Decision(Verdict.UP_TO_DATE)
    if last.built and last.key != stage.key:  # what changed, not its effect on the outputs
        record = last.record
        earlier = _EARLIER
        if record and record.get("result") in ("failed", "interrupted"):
            # since that run, or that it failed: the entry may even be that run's own (its
            # command finished, placing its outputs did not), so not "an earlier build"
            why, earlier = last.why(stage.doc, parts, templates), _IN_STORE
        elif record and record.get("doc") is not None:
            why = explain(record["doc"], stage.doc, parts=(record.get("upstream_parts"), parts),
                          templates=(record.get("templates"), templates))  # fmt: skip
        else:  # a record without a finished build's key document: nothing to compare
            why, earlier = [], _IN_STORE
        if stage.foreach:
            why += _items_changed(stage.items, last.item_hashes)
        return Decision(Verdict.RESTORE, [*why, earlier])
    return Decision(Verdict.RESTORE, output_reasons(bad, fresh=not last.built, of=len(outputs)))


#: why a stage whose key differs from its last build's is restored, not run: that key was
#: built before (an earlier build), or the store holds it from a run that did not finish
_EARLIER = Reason(Trigger.CACHED, "cached from an earlier build")
_IN_STORE = Reason(Trigger.CACHED, "the store has its outputs for these inputs")

#: a foreach stage with no finished build but items in the store (a run stopped or failed
#: halfway, before it was recorded): "never built" would deny the items it keeps
_NOT_FINISHED = Reason(Trigger.NEVER_BUILT, "not finished yet")


def output_reasons(
    bad: Sequence[tuple[str, str]], fresh: bool, of: int | None = None
) -> list[Reason]:
    """Why a stage whose key is the one last built (or, ``fresh``, never built in this
    workspace: a new checkout with a restored store) is restored: its outputs (``bad``:
    ``(path, "missing" | "changed")``, of its ``of`` outputs) are not what that build
    wrote. Every output missing is "outputs missing"; some of them, each by its path."""
    if all(s == "missing" for _, s in bad) and (fresh or of is None or len(bad) >= of):
        where = "; not built in this workspace, the store has them" if fresh else ""
        return [Reason(Trigger.OUTPUT_MISSING, f"outputs missing{where}")]
    return [
        Reason(
            Trigger.OUTPUT_MISSING if s == "missing" else Trigger.OUTPUT_CHANGED,
            f"output {rel} {s}",
        )
        for rel, s in bad
    ]


def _items_changed(items: Sequence[Item], old: dict[str, str] | None) -> list[Reason]:
    """The items of a foreach stage that differ from its last build (new, content changed,
    removed): why a stage restored from an earlier build is restored, named by its inputs."""
    if not old:
        return []
    changed = item_reasons(old, items, [it.relpath for it in items])
    changed = [c for c in changed if c[1] != "not in the cache"]
    gone = removed_items(old, items)
    reasons = [Reason(Trigger.ITEMS, summarize(changed, len(items)))] if changed else []
    if gone:
        reasons.append(Reason(Trigger.ITEMS, f"{len(gone):,} item(s) removed (first: {gone[0]})"))
    return reasons


def _item_verdicts(
    items: Sequence[Item], cached: Mapping[str, Any], old: dict[str, str] | None
) -> tuple[list[Reason], dict[str, Any]]:
    """Which items of a foreach stage must run and why (those not in ``cached``), and the
    counts ``dry-run --json`` shows."""
    todo = [it.relpath for it in items if it.relpath not in cached]
    changed = item_reasons(old, items, todo)
    gone = removed_items(old, items)
    reasons = []
    if changed:
        reasons.append(Reason(Trigger.ITEMS, summarize(changed, len(items))))
    if gone:
        reasons.append(Reason(Trigger.ITEMS, f"{len(gone):,} item(s) removed (first: {gone[0]})"))
    if not items:
        reasons.append(Reason(Trigger.ITEMS, "no items: the foreach input holds no matching files"))
    info = {"total": len(items), "run": len(todo), "cached": len(cached), "removed": len(gone)}
    return reasons, info


def _from_unknown(reason: Reason, stage: Resolved) -> bool:
    """Whether a reason only reflects an upstream output not known yet (dry-run)."""
    if reason.trigger is Trigger.UPSTREAM:
        return any(f"upstream {s} " in reason.detail for s in stage.unknown)
    for value in stage.doc["inputs"].values():
        pairs = value if value and isinstance(value[0], list) else [value]
        for path, h in pairs:
            if h == "?" and path in reason.detail:
                return True
    return False


#: the lock file the reasons of :func:`lock_reasons` name
_LOCK = "pipemake.lock"


def lock_reasons(
    locked: Mapping[str, Any], doc: Mapping[str, Any], foreach_digest: str | None = None
) -> list[Reason]:
    """Why a stage never built in this workspace runs where ``pipemake.lock`` records it
    with another key than the key document ``doc`` now gives (instead of "never built"):
    what the section (``locked``: its ``rule``, ``params`` and ``inputs`` as the lock writes
    them) records that differs (``param cmd a → b since pipemake.lock``), or, where all it
    records is the same, that another pipemake or rule version (or what the lock does not
    record: code, upstream values) made that key. ``foreach_digest``: the digest of the
    foreach input's items now (as the lock writes it), for a foreach stage."""
    reasons: list[Reason] = []
    rule = locked.get("rule")
    if isinstance(rule, str) and rule != doc.get("rule"):
        reasons.append(Reason(Trigger.RULE, f"rule {rule} → {doc.get('rule')}"))
    params = locked.get("params")
    if isinstance(params, dict):
        reasons += _diff_params(params, doc.get("params") or {})
    inputs = locked.get("inputs")
    if isinstance(inputs, dict):
        reasons += _diff_locked_inputs(inputs, doc.get("inputs") or {}, foreach_digest)
    if reasons:
        return [Reason(r.trigger, f"{r.detail} since {_LOCK}") for r in reasons]
    if isinstance(rule, str) and isinstance(params, dict) and isinstance(inputs, dict):
        why = "its rule, params and inputs are as locked: built by another pipemake or rule " \
            "version, or from other code or upstream values"  # fmt: skip
    else:
        why = "built by another pipemake version or from other inputs/params"
    return [Reason(Trigger.RULE, f"{_LOCK}'s key differs ({why})")]


def _diff_locked_inputs(
    locked: Mapping[str, Any], now: Mapping[str, Any], foreach_digest: str | None
) -> list[Reason]:
    """The inputs whose path or content differ between a lock section's ``inputs`` and a
    key document's (see :func:`lock_reasons`)."""
    out = []
    for name in sorted(set(locked) | set(now)):
        want, have = locked.get(name), now.get(name)
        if have is None:
            was = want.get("path") if isinstance(want, dict) else None
            said = f"{name} ({was})" if isinstance(was, str) else name
            out.append(Reason(Trigger.INPUT, f"input {said} removed"))
            continue
        if not isinstance(want, dict):
            out.append(Reason(Trigger.INPUT, f"input {_named(name, have)} added"))
            continue
        pair = isinstance(have, list) and len(have) == 2 and isinstance(have[0], str)
        if "value" in want or not pair:
            if want.get("value") != have:
                out.append(Reason(Trigger.INPUT, f"input {name} changed"))
            continue
        path, digest = have
        if want.get("path") != path:
            out.append(Reason(Trigger.INPUT, f"input {name} {want.get('path')} → {path}"))
        elif digest == "foreach":
            if "items_digest" in want and want["items_digest"] != foreach_digest:
                out.append(Reason(Trigger.INPUT, f"input {path}'s items changed"))
        elif "hash" in want and want["hash"] != digest:
            out.append(Reason(Trigger.INPUT, f"input {path} changed"))
    return out


def from_lock(reason: Reason) -> bool:
    """Whether a reason compares the stage with ``pipemake.lock`` (one of
    :func:`lock_reasons`), which ``status`` says as the stage's difference from the lock."""
    detail = reason.detail
    return detail.endswith(f" since {_LOCK}") or detail.startswith(f"{_LOCK}'s key differs")

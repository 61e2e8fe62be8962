"""``pipemake commit``: accept the outputs in the workspace as built, without running.

The habit of ``make -t`` and ``dvc commit``: after editing an output by hand (or making it
some other way), record it as the stage's build for the stage's current key — its files go
into the store and the action-cache entry names them — so the next build finds the stage
up to date and keeps the edit, instead of restoring the old bytes or running the stage.
A foreach stage's items each get the files that are theirs (:func:`.ownfiles.plan_items`),
so a later change of one input reruns one item and the others keep their accepted bytes.

Stages downstream of an accepted output see new bytes and run, as they would after any
change. A stage is refused (nothing at all is written then) when an output is missing or of
the wrong kind, when its key cannot be known without running something first (an upstream
stage that is not up to date, a map-reduce stage whose per-item maps are missing), or when
a later stage uses a value the stage computes and no build of this key left it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .build import Builder, values_used
from .decide import Verdict
from .errors import UsageError
from .events import Bus
from .fshash import Hasher, PathInfo
from .ownfiles import plan_items, write_items
from .resolve import Planned, ResolvedStage
from .scheduler import StageFailure
from .walk import BadPath
from .workspace import manifest_of

if TYPE_CHECKING:
    from .model import Pipeline, Stage
    from .state import WorkspaceState
    from .store import Store

__all__ = ["Accepted", "accept"]


@dataclass
class Accepted:
    """What ``commit`` did (or, dry, would do) to one stage: ``accepted``, ``would
    accept`` or ``up to date``, the outputs concerned and why the stage was not up to date."""

    stage: str
    action: str
    outputs: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    #: for a foreach stage, what is (or would be) recorded of its items
    notes: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    stage: Stage
    sk: ResolvedStage
    entry: dict[str, Any]
    infos: dict[str, PathInfo]
    #: a foreach stage's item entries to write (relpath → entry)
    items: dict[str, Any] = field(default_factory=dict)


def accept(
    p: Pipeline,
    store: Store,
    state: WorkspaceState,
    order: list[str],
    chosen: Sequence[str],
    dry: bool = False,
) -> tuple[list[Accepted], Builder]:
    """Accept the workspace outputs of the ``chosen`` stages (``order``: them and what they
    need, in build order). All are checked before anything is written: one refusal is a
    :class:`UsageError` listing every refused stage, and nothing changes."""
    builder = Builder(p, store, state, Bus(), dry=True)
    builder.prefetch(order)
    hasher = Hasher(str(p.root))  # outputs read afresh: the stat cache vouches for nothing
    wanted = set(chosen)
    rows: list[Accepted] = []
    plans: list[_Plan] = []
    refused: list[str] = []
    for sid in order:
        stage = p.stages[sid]
        try:
            decision, sk, entry = builder.decide(stage)
        except StageFailure as exc:
            if sid in wanted:
                refused.append(f"{sid}: {exc}")
            builder.results[sid] = Planned(None, None)
            continue
        builder.decisions[sid] = decision
        reasons = [str(r) for r in decision.reasons]
        if sid not in wanted or decision.verdict is Verdict.UP_TO_DATE:
            builder.results[sid] = Planned(
                entry["outputs"] if entry else None,
                entry.get("values", {}) if entry else None,
                sk.key if sk else None,
            )
            if sid in wanted:
                rows.append(Accepted(sid, "up to date", list(stage.ports.outputs.values())))
            continue
        why = _cannot(p, stage, sk, entry, decision.verdict, reasons)
        infos: dict[str, PathInfo] = {}
        if why is None and sk is not None:
            why = _outputs(p, sk, hasher, infos)
        if why is not None or sk is None:
            refused.append(f"{sid}: {why}")
            builder.results[sid] = Planned(None, None)
            continue
        manifests = {name: manifest_of(info) for name, info in infos.items()}
        values = dict(entry.get("values", {})) if entry else {}
        new = {"stage": sid, "outputs": manifests, "values": values,
               "metrics": {"committed": True}, "created": time.time()}  # fmt: skip
        plan = _Plan(stage, sk, new, infos)
        notes = plan_items(store, stage, sk, new, plan.items)
        plans.append(plan)
        builder.results[sid] = Planned(manifests, values, sk.key)
        action = "would accept" if dry else "accepted"
        rows.append(Accepted(sid, action, list(sk.ports.outputs.values()), reasons, notes))
    if refused:
        raise UsageError(
            "nothing was accepted; "
            + ("this stage cannot be: " if len(refused) == 1 else "these stages cannot be: ")
            + "; ".join(refused)
        )
    if not dry:
        for plan in plans:
            builder.store_outputs(plan.sk, plan.entry)
            write_items(store, state, plan.stage, plan.sk, plan.items)
            builder.accept(plan.stage, plan.sk, plan.entry)
        builder.idle()
    return rows, builder


def _cannot(
    p: Pipeline,
    stage: Stage,
    sk: ResolvedStage | None,
    entry: dict[str, Any] | None,
    verdict: Verdict,
    reasons: list[str],
) -> str | None:
    """Why the stage's key (and so an entry for it) cannot be written now, or None."""
    if verdict is Verdict.MAYBE or sk is None or sk.unknown:
        ups = sorted(sk.unknown) if sk is not None and sk.unknown else []
        named = [m.group(1) for r in reasons if (m := re.match(r"upstream (\S+) will run", r))]
        first = (ups or named or [""])[0]
        return (
            f"its key depends on upstream {first or 'stages'}, which is not up to date "
            f"(it would run): build it first, or accept it too (pipemake commit {first} "
            f"{stage.id})"
        )
    if sk.key is None:
        return (
            "it maps each item before it reduces, and the maps of some items are not "
            f"cached: build it (pipemake build {stage.id})"
        )
    if entry is None and values_used(p, stage):
        return (
            f"rule {stage.rule.name!r} computes values that later stages use, and only a "
            f"run can compute them: build it (pipemake build {stage.id})"
        )
    return None


def _outputs(
    p: Pipeline, sk: ResolvedStage, hasher: Hasher, infos: dict[str, PathInfo]
) -> str | None:
    """Hash each output of the stage into ``infos``; why one cannot be accepted, or None."""
    for name, rel in sk.ports.outputs.items():
        full = p.root / rel
        if os.path.islink(full):
            return f"output {rel} is a symlink: pipemake keeps real files at an output path"
        try:
            info = hasher.info(rel)
        except BadPath as exc:
            return f"output {rel}: {exc}"
        if info.kind == "missing":
            return f"output {rel} is missing: create it, or build the stage"
        want = sk.ports.output_kinds.get(name)
        if want in ("file", "dir") and info.kind != want:
            return f"output {rel} should be a {want}, but it is a {info.kind}"
        if "foreach" in sk.doc and info.kind != "dir":
            return f"output {rel} should be a folder (a foreach stage's outputs are)"
        infos[name] = info
    return None

"""Should a stage run? The rebuilder: a decision with reasons, from a key, the action cache
and the stage's last-build record. It knows nothing of scheduling or executing.

A stage is *up to date* when its key is in the action cache and the workspace outputs match
the entry's manifests; *restore* when the key is cached but the outputs are missing or
different (or the key was built before with other params); *run* otherwise; *maybe* when an
upstream stage will run first and early cutoff may still spare this one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = ["Decision", "Reason", "Trigger", "Verdict", "explain", "output_reasons"]


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


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
        elif old[key] != new[key]:
            out.append(
                Reason(Trigger.PARAM, f"param {name} {_short(old[key])} → {_short(new[key])}")
            )
    return out


def _paths(value: Any) -> dict[str, str]:
    """``{path: hash}`` from an input's key form: ``[path, hash]`` or a list of them."""
    if value and isinstance(value[0], str):
        return {value[0]: value[1]}
    return {p: h for p, h in value}


def _diff_inputs(old: dict[str, Any], new: dict[str, Any]) -> list[Reason]:
    out = []
    for name in sorted(set(old) | set(new)):
        if name not in old:
            out.append(Reason(Trigger.INPUT, f"input {name} added"))
            continue
        if name not in new:
            out.append(Reason(Trigger.INPUT, f"input {name} removed"))
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
    old: dict[str, Any] | None, new: dict[str, Any], failed: dict[str, Any] | None = None
) -> list[Reason]:
    """Why the key document ``new`` differs from the last build's ``old``. ``failed`` is the
    key document of a run that failed since (its last-build record keeps it): then the
    reasons say what changed since that run, or that nothing did and it failed."""
    if failed is not None:
        since = _changes(failed, new)
        if not since:
            return [Reason(Trigger.FAILED, "the last run failed")]
        return [Reason(r.trigger, f"{r.detail} since the failed run") for r in since]
    if old is None:
        return [Reason(Trigger.NEVER_BUILT, "never built")]
    return _changes(old, new)


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[Reason]:
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
    reasons += _diff_params(old.get("params", {}), new.get("params", {}))
    reasons += _diff_inputs(old.get("inputs", {}), new.get("inputs", {}))
    old_up, new_up = old.get("upstream", {}), new.get("upstream", {})
    for dep in sorted(set(old_up) | set(new_up)):
        if old_up.get(dep) != new_up.get(dep):
            reasons.append(Reason(Trigger.UPSTREAM, f"upstream {dep} output changed"))
    if old.get("outputs") != new.get("outputs"):
        reasons.append(Reason(Trigger.PARAM, "declared outputs changed"))
    if old.get("items") != new.get("items") and "items" in new:
        reasons.append(Reason(Trigger.ITEMS, "items changed"))
    return reasons


def output_reasons(bad: list[tuple[str, str]], fresh: bool) -> list[Reason]:
    """Why a stage whose key is the one last built (or, ``fresh``, never built in this
    workspace: a new checkout with a restored store) is restored: its outputs (``bad``:
    ``(path, "missing" | "changed")``) are not what that build wrote."""
    if all(s == "missing" for _, s in bad):
        where = "; not built in this workspace, the store has them" if fresh else ""
        return [Reason(Trigger.OUTPUT_MISSING, f"outputs missing{where}")]
    return [
        Reason(Trigger.OUTPUT_MISSING if s == "missing" else Trigger.OUTPUT_CHANGED,
               f"output {rel} {s}")
        for rel, s in bad
    ]  # fmt: skip

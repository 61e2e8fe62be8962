"""Binding a pipeline's stages: rules, static ports, references and edges, and the checks
that need them (overlapping outputs, missing source inputs, cycles)."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from typing import Any

from .dag import Graph
from .errors import Problems, suggest
from .items import glob_base, is_glob
from .model import SYMBOLIC_SCOPES, Foreach, Pending, Pipeline, Stage, norm
from .rule import Ports, Rule, get_rule, rule_names
from .templates import Ref, TemplateError, find_refs, substitute
from .yamlload import LineDict

__all__ = ["bind", "check_graph"]


def _number(value: Any, kind: Any = (int, float)) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def _stage_fields(raw: LineDict, sid: str, ld: Problems) -> dict[str, Any]:
    out: dict[str, Any] = {}
    res = raw.get("resources") or {}
    if not isinstance(res, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
        for k, v in res.items()
    ):
        ld.problem(
            "'resources' must map names to non-negative numbers, e.g. {gpu: 1, mem_gb: 8}",
            raw.line_of("resources"),
            sid,
        )
        res = {}
    out["resources"] = {k: float(v) for k, v in res.items()}
    checks = {
        "retries": (lambda v: _number(v, int) and v >= 0, "a whole number ≥ 0"),
        "retry_backoff": (lambda v: _number(v) and v >= 0, "a number of seconds ≥ 0"),
        "timeout": (lambda v: _number(v) and v > 0, "a number of seconds > 0"),
        "version": (lambda v: _number(v) or isinstance(v, str), "a string or number"),
    }
    good: dict[str, Any] = {}
    for key, (ok, what) in checks.items():
        value = raw.get(key)
        if value is None:
            continue
        if ok(value):
            good[key] = value
        else:
            ld.problem(f"{key!r} must be {what}, got {value!r}", raw.line_of(key), sid)
    out["retries"] = good.get("retries", 0)
    out["retry_backoff"] = float(good.get("retry_backoff", 1.0))
    out["timeout"] = float(good["timeout"]) if "timeout" in good else None
    out["version"] = str(good["version"]) if "version" in good else None
    return out


def _static_lookup(pipeline: Pipeline, raw_by_id: Mapping[str, LineDict]):
    def lookup(ref: Ref) -> Any:
        if ref.scope == "vars":
            if ref.name not in pipeline.vars:
                raise TemplateError(
                    f"unknown variable {ref} "
                    + suggest(ref.name, list(pipeline.vars))
                    + f" (vars: {', '.join(pipeline.vars) or 'none'})"
                )
            value = pipeline.vars[ref.name]
            return value
        if ref.scope in SYMBOLIC_SCOPES:
            raise TemplateError(f"{ref} can only be used in a shell stage's cmd or env")
        stage = pipeline.stages.get(ref.scope)
        if stage is None:
            hint = suggest(ref.scope, list(raw_by_id))
            if ref.scope in raw_by_id:
                raise TemplateError(f"{ref} refers to stage {ref.scope!r}, which has problems")
            raise TemplateError(f"{ref} refers to an unknown stage {ref.scope!r}. {hint}".strip())
        if ref.name in stage.ports.outputs:
            return stage.ports.outputs[ref.name]
        if ref.name in stage.rule.values or getattr(stage.rule, "open_values", False):
            return Pending(stage.id, ref.name)
        known = sorted(stage.ports.outputs) + sorted(stage.rule.values)
        raise TemplateError(
            f"{ref}: stage {ref.scope!r} has no output or value {ref.name!r} "
            f"(it has: {', '.join(known) or 'nothing'}). {suggest(ref.name, known)}".strip()
        )

    return lookup


def _has_pending(value: Any) -> bool:
    if isinstance(value, Pending):
        return True
    if isinstance(value, list | tuple):
        return any(_has_pending(v) for v in value)
    if isinstance(value, dict):
        return any(_has_pending(v) for v in value.values())
    return False


def bind(pipeline: Pipeline, raws: list[LineDict], ld: Problems) -> None:
    """Resolve each stage's rule, its static ports and its edges, in an order where the stages
    it references are bound first (references to later stages are fine in the file)."""
    raw_by_id = {r["id"]: r for r in raws}
    deps: dict[str, list[str]] = {}
    for sid, r in raw_by_id.items():
        refs = [x.scope for x in _refs(r) if x.scope in raw_by_id]
        extra = r.get("depends_on") or []
        extra = [extra] if isinstance(extra, str) else extra
        deps[sid] = list(dict.fromkeys(refs + [d for d in extra if d in raw_by_id]))
    order = Graph(deps)
    cycle = order.find_cycle()
    if cycle is not None:
        first = raw_by_id[cycle[0]]
        if len(cycle) == 2:
            ld.problem(
                f"stage {cycle[0]!r} refers to its own output (a cycle: {' → '.join(cycle)})",
                first.line,
                cycle[0],
                hint="a stage cannot read what it writes; use another stage",
            )
        else:
            ld.problem(
                f"the stages form a cycle: {' → '.join(cycle)}",
                first.line,
                cycle[0],
                hint="remove one of these dependencies",
            )
        return
    lookup = _static_lookup(pipeline, raw_by_id)
    for sid in order.topo_order():
        raw = raw_by_id[sid]
        stage = _bind_stage(raw, pipeline, lookup, ld)
        if stage is not None:
            pipeline.stages[sid] = stage
    pipeline.stages = {
        r["id"]: pipeline.stages[r["id"]] for r in raws if r["id"] in pipeline.stages
    }


def _refs(raw: LineDict) -> list[Ref]:
    try:
        return find_refs(raw.get("config") or {})
    except TemplateError:
        return []


def _bind_stage(raw: LineDict, pipeline: Pipeline, lookup: Any, ld: Problems) -> Stage | None:
    sid = raw["id"]
    rule = get_rule(raw["type"])
    if rule is None:
        ld.problem(
            f"unknown rule {raw['type']!r}",
            raw.line_of("type"),
            sid,
            hint=(
                suggest(raw["type"], rule_names()) + " known rules: " + ", ".join(rule_names())
            ).strip(),
        )
        return None
    config = raw.get("config") or {}
    symbolic = getattr(rule, "symbolic_keys", ())
    resolved: dict[str, Any] = {}
    ok = True
    for key, value in config.items():
        keep = (lambda r: r.scope in SYMBOLIC_SCOPES) if key in symbolic else None
        try:
            resolved[key] = substitute(value, lookup, keep)
        except TemplateError as exc:
            ld.problem(
                str(exc), config.line_of(key) if isinstance(config, LineDict) else raw.line, sid
            )
            ok = False
    if not ok:
        return None
    ports, problems = rule.ports(resolved)
    ports.root = str(pipeline.root)
    _pending_inputs(rule, resolved, ports)
    if not problems:
        problems = rule.check(ports)
    for key, msg in problems:
        if _has_pending(resolved.get(key)):
            continue
        line = config.line_of(key) if isinstance(config, LineDict) and key in config else raw.line
        ld.problem(msg, line, sid)
    fields = _stage_fields(raw, sid, ld)
    foreach = _foreach(raw, ports, rule, sid, ld)
    refs_all = find_refs(config)  # a template such as cmd keeps a computed value a reference
    refs = [r.scope for r in refs_all if r.scope not in ("vars", *SYMBOLIC_SCOPES)]
    deps = list(dict.fromkeys([*(raw.get("depends_on") or []), *refs]))
    if isinstance(raw.get("depends_on"), str):
        deps = list(dict.fromkeys([raw["depends_on"], *refs]))
    for key in list(ports.outputs):
        out = ports.outputs[key]
        clean = norm(out)
        if posixpath.isabs(clean) or clean == ".." or clean.startswith("../") or clean in (".", ""):
            ld.problem(
                f"output {key!r} ({out!r}) must be a path inside the project folder",
                config.line_of(key) if isinstance(config, LineDict) else raw.line,
                sid,
            )
        elif clean == ".pipemake" or clean.startswith(".pipemake/"):
            ld.problem(f"output {key!r} may not be inside .pipemake/", raw.line, sid)
        ports.outputs[key] = clean
    for key, value in ports.inputs.items():
        if isinstance(value, list):
            ports.inputs[key] = [norm(v) if isinstance(v, str) else v for v in value]
        elif isinstance(value, str):
            ports.inputs[key] = norm(value)
    return Stage(
        id=sid,
        type=raw["type"],
        rule=rule,
        config=dict(config),
        ports=ports,
        deps=deps,
        line=raw.line,
        lines=dict(getattr(config, "lines", {})),
        foreach=foreach,
        static=not _has_pending([lookup(r) for r in refs_all if r.scope not in SYMBOLIC_SCOPES]),
        **fields,
    )


def _pending_inputs(rule: Rule, resolved: dict[str, Any], ports: Ports) -> None:
    """Inputs whose paths an upstream stage computes are inputs too (known at build time)."""
    for key, value in resolved.items():
        if key in rule.inputs and _has_pending(value):
            ports.inputs[key] = value
        elif key == "inputs" and isinstance(value, dict) and not rule.inputs:
            for name, path in value.items():
                if _has_pending(path):
                    ports.inputs[name] = path


def _foreach(raw: LineDict, ports: Ports, rule: Rule, sid: str, ld: Problems) -> Foreach | None:
    spec = raw.get("foreach")
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = {"input": spec}
    if (
        not isinstance(spec, dict)
        or not isinstance(spec.get("input"), str)
        or not set(spec) <= {"input", "pattern"}
    ):
        ld.problem(
            "'foreach' must be an input name, or {input: NAME, pattern: GLOB}",
            raw.line_of("foreach"),
            sid,
        )
        return None
    if spec["input"] not in ports.inputs:
        ld.problem(
            f"foreach: {spec['input']!r} is not an input of this stage "
            f"(inputs: {', '.join(ports.inputs) or 'none'})",
            raw.line_of("foreach"),
            sid,
        )
        return None
    pattern = spec.get("pattern", rule.foreach_pattern)
    if pattern is not None and not isinstance(pattern, str):
        ld.problem("foreach pattern must be a glob string", raw.line_of("foreach"), sid)
    return Foreach(spec["input"], pattern)


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent + "/")


def check_graph(pipeline: Pipeline, raws: list[LineDict], ld: Problems) -> None:
    stages = pipeline.stages
    outputs: list[tuple[tuple[str, ...], str, str]] = []
    for st in stages.values():
        for key, out in st.ports.outputs.items():
            outputs.append((tuple(out.split("/")), st.id, key))
    outputs.sort()
    stack: list[tuple[tuple[str, ...], str, str]] = []
    for parts, sid, key in outputs:
        while stack and parts[: len(stack[-1][0])] != stack[-1][0]:
            stack.pop()
        if stack:
            other = stack[-1]
            same = "is the same path as" if other[0] == parts else "lies inside"
            ld.problem(
                f"output {key!r} ({'/'.join(parts)}) {same} output {other[2]!r} of stage "
                f"{other[1]!r} ({'/'.join(other[0])})",
                stages[sid].lines.get(key, stages[sid].line),
                sid,
                hint="every output needs its own path, not inside another stage's output",
            )
        stack.append((parts, sid, key))
    raw_ids = {r["id"] for r in raws}
    for st in stages.values():
        for dep in st.deps:
            if dep not in stages and dep not in raw_ids:
                ld.problem(
                    f"depends_on names an unknown stage {dep!r}",
                    st.line,
                    st.id,
                    hint=suggest(dep, list(stages)),
                )
        _check_inputs(pipeline, st, ld)
    ld.fail_if_any()
    pipeline.graph = Graph({sid: [d for d in st.deps if d in stages] for sid, st in stages.items()})
    cycle = pipeline.graph.find_cycle()
    if cycle is not None:
        ld.problem(
            f"the stages form a cycle: {' → '.join(cycle)}",
            stages[cycle[0]].line,
            cycle[0],
            hint="remove one of these dependencies",
        )


def _check_inputs(pipeline: Pipeline, st: Stage, ld: Problems) -> None:
    for key, value in st.ports.inputs.items():
        paths = value if isinstance(value, list) else [value]
        for p in paths:
            if not isinstance(p, str):
                continue
            if is_glob(p):
                p = glob_base(p)
            line = st.lines.get(key, st.line)
            for okey, out in st.ports.outputs.items():
                if _inside(out, p) or _inside(p, out):
                    ld.problem(
                        f"output {okey!r} ({out}) overlaps its own input {key!r} ({p})",
                        line,
                        st.id,
                        hint="write outputs outside the stage's inputs",
                    )
            owner = pipeline.output_owner(p)
            if owner is not None:
                if owner[0] != st.id and owner[0] not in st.deps:
                    st.deps.append(owner[0])
            elif not os.path.exists(p if os.path.isabs(p) else os.path.join(pipeline.root, p)):
                _missing(ld, st, key, p)


def _missing(ld: Problems, st: Stage, key: str, path: str) -> None:
    ld.problem(
        f"input {key!r}: {path} does not exist",
        st.lines.get(key, st.line),
        st.id,
        hint="create it, fix the path, or produce it with an upstream stage",
    )


def check_sources(pipeline: Pipeline, ld: Problems) -> None:
    """Note every source input (one no stage produces) that is not on disk: what can change
    without the pipeline file changing, so a cached plan is checked again on each load."""
    for st in pipeline.stages.values():
        for key, value in st.ports.inputs.items():
            for path in value if isinstance(value, list) else [value]:
                if not isinstance(path, str):
                    continue
                base = glob_base(path) if is_glob(path) else path
                if pipeline.output_owner(base) is None and not os.path.exists(
                    base if os.path.isabs(base) else os.path.join(pipeline.root, base)
                ):
                    _missing(ld, st, key, base)

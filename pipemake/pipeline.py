"""The pipeline model and its loader: ``pipemake.yaml`` → checked stages and their DAG.

Everything that can be wrong with a pipeline file is found here, before anything runs, and
reported as a :class:`~pipemake.errors.PipelineError` naming the file, line and stage.
"""

from __future__ import annotations

import difflib
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .dag import Graph
from .errors import PipelineError, Problem
from .items import glob_base, is_glob
from .rule import Ports, Rule, get_rule, rule_names
from .templates import Ref, TemplateError, find_refs, substitute
from .yamlload import LineDict, YamlError, load_yaml

__all__ = ["Foreach", "Pending", "Pipeline", "Stage", "load_pipeline", "DEFAULT_FILE"]

DEFAULT_FILE = "pipemake.yaml"
_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_RESERVED = {"vars", "inputs", "outputs", "item"}
_TOP_KEYS = {"name", "version", "vars", "stages", "on_success", "on_failure", "description"}
_STAGE_KEYS = {
    "id", "type", "depends_on", "config", "foreach", "resources", "retries",
    "retry_backoff", "timeout", "version", "description",
}  # fmt: skip
SYMBOLIC_SCOPES = ("inputs", "outputs", "item")


@dataclass(frozen=True)
class Pending:
    """A computed value of an upstream stage, known only once that stage has run."""

    stage: str
    name: str

    def __str__(self) -> str:
        return "{" + f"{self.stage}.{self.name}" + "}"


@dataclass(frozen=True)
class Foreach:
    """``foreach``: run the rule once per file of input ``input``, filtered by ``pattern``."""

    input: str
    pattern: str | None = None


@dataclass
class Stage:
    """One checked stage: its raw config (templates unresolved), rule, static ports and edges."""

    id: str
    type: str
    rule: Rule
    config: dict[str, Any]
    ports: Ports
    deps: list[str]
    line: int = 0
    lines: dict[str, int] = field(default_factory=dict)
    foreach: Foreach | None = None
    resources: dict[str, float] = field(default_factory=dict)
    retries: int = 0
    retry_backoff: float = 1.0
    timeout: float | None = None
    version: str | None = None


@dataclass
class Pipeline:
    """A checked pipeline: its stages in file order, their graph, and where it lives."""

    name: str
    version: str
    vars: dict[str, Any]
    stages: dict[str, Stage]
    graph: Graph
    root: Path
    file: Path
    on_success: Any = None
    on_failure: Any = None
    _owners: dict[str, tuple[str, str]] | None = field(default=None, repr=False)

    def output_owner(self, path: str) -> tuple[str, str, str] | None:
        """``(stage, output name, path inside the output)`` when ``path`` is an output of a
        stage or lies inside one."""
        if self._owners is None:
            self._owners = {
                out: (stage.id, name)
                for stage in self.stages.values()
                for name, out in stage.ports.outputs.items()
            }
        probe = path
        while probe and probe not in (".", "/"):
            owner = self._owners.get(probe)
            if owner is not None:
                return owner[0], owner[1], path[len(probe) + 1 :]
            probe = posixpath.dirname(probe)
        return None


def _norm(path: str) -> str:
    return posixpath.normpath(path.replace(os.sep, "/")) if path else path


class _Loader:
    def __init__(self, file: Path):
        self.file = file
        self.shown = str(file)
        self.problems: list[Problem] = []

    def problem(self, msg: str, line: int | None, stage: str | None = None, hint: str = "") -> None:
        self.problems.append(Problem(msg, self.shown, line, stage, hint))

    def fail_if_any(self) -> None:
        if self.problems:
            raise PipelineError(self.problems)


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f"did you mean {close[0]!r}?" if close else ""


def _unquoted_ref(value: Any) -> str | None:
    """``{a.b}`` written unquoted in YAML reads as the mapping ``{"a.b": None}``."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, val),) = value.items()
        if val is None and isinstance(key, str) and re.match(r"^[\w-]+(\.[\w-]+)?$", key):
            return "{" + key + "}"
    return None


def _find_unquoted(value: Any, key: str, where: LineDict, ld: _Loader, stage: str | None) -> bool:
    ref = _unquoted_ref(value)
    if ref is not None:
        ld.problem(
            f"{key}: YAML read the unquoted {ref} as a mapping",
            where.line_of(key) if isinstance(where, LineDict) else None,
            stage,
            hint=f'quote it: {key}: "{ref}"',
        )
        return True
    found = False
    if isinstance(value, dict):
        for k, v in value.items():
            found |= _find_unquoted(v, str(k), value, ld, stage)
    elif isinstance(value, list):
        for v in value:
            found |= _find_unquoted(v, key, where, ld, stage)
    return found


def _bad_keys(value: Any, raw: LineDict, ld: _Loader, stage: str) -> bool:
    """Config mapping keys must be strings: ``1:`` and ``"1":`` would hash alike."""
    if isinstance(value, list):
        return any([_bad_keys(v, raw, ld, stage) for v in value])
    if not isinstance(value, dict):
        return False
    bad = False
    for key, sub in value.items():
        if not isinstance(key, str):
            line = value.line if isinstance(value, LineDict) else raw.line
            ld.problem(f"config key {key!r} is not a string", line, stage,
                       hint=f'quote it: "{key}":')  # fmt: skip
            bad = True
        bad = _bad_keys(sub, raw, ld, stage) or bad
    return bad


def load_pipeline(file: str | os.PathLike[str]) -> Pipeline:
    """Load and check a pipeline file; raise PipelineError listing every problem found."""
    path = Path(file)
    ld = _Loader(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        ld.problem(
            "no pipeline file here",
            None,
            hint=f"create {path.name}, or pass -f FILE / -C DIR to point at one",
        )
        ld.fail_if_any()
    except (OSError, UnicodeDecodeError) as exc:
        ld.problem(f"cannot read the pipeline file: {exc}", None)
        ld.fail_if_any()
    try:
        doc = load_yaml(text)
    except YamlError as exc:
        ld.problem(f"malformed YAML: {exc}", exc.line, hint="fix the YAML syntax at that line")
        ld.fail_if_any()
    if not isinstance(doc, LineDict):
        ld.problem("the pipeline must be a mapping with a 'stages' list", 1)
        ld.fail_if_any()
    return _check(doc, path, ld)


def _check(doc: LineDict, path: Path, ld: _Loader) -> Pipeline:
    for key in doc:
        if key not in _TOP_KEYS:
            ld.problem(
                f"unknown top-level key {key!r}",
                doc.line_of(key),
                hint=_suggest(str(key), sorted(_TOP_KEYS))
                or f"known: {', '.join(sorted(_TOP_KEYS))}",
            )
    variables = doc.get("vars") or {}
    if not isinstance(variables, dict):
        ld.problem("'vars' must be a mapping of names to values", doc.line_of("vars"))
        variables = {}
    else:
        _find_unquoted(variables, "vars", doc, ld, None)
    for hook in ("on_success", "on_failure"):
        _check_hook(doc, hook, ld)
    raw_stages = doc.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        ld.problem(
            "'stages' must be a non-empty list of stages",
            doc.line_of("stages"),
            hint="each stage is a mapping with id, type and config",
        )
        ld.fail_if_any()
    stages = _check_stages(raw_stages, ld)
    ld.fail_if_any()
    root = path.parent.resolve()
    pipeline = Pipeline(
        name=str(doc.get("name") or root.name), version=str(doc.get("version") or ""),
        vars=dict(variables), stages={}, graph=Graph(), root=root, file=path,
        on_success=doc.get("on_success"), on_failure=doc.get("on_failure"),
    )  # fmt: skip
    _bind(pipeline, stages, ld)
    ld.fail_if_any()
    _check_graph(pipeline, stages, ld)
    ld.fail_if_any()
    return pipeline


def _check_hook(doc: LineDict, key: str, ld: _Loader) -> None:
    hook = doc.get(key)
    if hook is None or isinstance(hook, str):
        return
    if (
        isinstance(hook, dict)
        and set(hook) <= {"cmd", "url"}
        and all(isinstance(v, str) for v in hook.values())
    ):
        return
    ld.problem(
        f"{key!r} must be a shell command, or a mapping with 'cmd' and/or 'url'", doc.line_of(key)
    )


def _check_stages(raw_stages: list[Any], ld: _Loader) -> list[LineDict]:
    seen: dict[str, int] = {}
    good: list[LineDict] = []
    for raw in raw_stages:
        if not isinstance(raw, LineDict):
            ld.problem("each stage must be a mapping with id, type and config", None)
            continue
        sid = raw.get("id")
        if not isinstance(sid, str) or not _ID.match(sid):
            ld.problem(
                f"stage id {sid!r} is not valid",
                raw.line_of("id"),
                hint="ids match [A-Za-z_][A-Za-z0-9_-]*",
            )
            continue
        if sid in _RESERVED:
            ld.problem(
                f"{sid!r} is a reserved name and cannot be a stage id", raw.line_of("id"), sid
            )
            continue
        if sid in seen:
            ld.problem(
                f"duplicate stage id {sid!r} (first defined at line {seen[sid]})",
                raw.line_of("id"),
                sid,
                hint="give every stage a unique id",
            )
            continue
        seen[sid] = raw.line
        bad = False
        for key in raw:
            if key not in _STAGE_KEYS:
                ld.problem(
                    f"unknown stage key {key!r}",
                    raw.line_of(key),
                    sid,
                    hint=_suggest(str(key), sorted(_STAGE_KEYS))
                    or f"known: {', '.join(sorted(_STAGE_KEYS))}",
                )
                bad = True
        if not isinstance(raw.get("type"), str):
            ld.problem(
                "missing 'type' (the rule this stage runs)",
                raw.line,
                sid,
                hint=f"one of: {', '.join(rule_names())}",
            )
            bad = True
        config = raw.get("config", {})
        if config is None:
            config = {}
        if not isinstance(config, dict):
            ld.problem("'config' must be a mapping", raw.line_of("config"), sid)
            bad = True
        elif _find_unquoted(config, "config", raw, ld, sid) or _bad_keys(config, raw, ld, sid):
            bad = True
        deps = raw.get("depends_on") or []
        if isinstance(deps, str):
            deps = [deps]
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            ld.problem("'depends_on' must be a list of stage ids", raw.line_of("depends_on"), sid)
            bad = True
        if not bad:
            good.append(raw)
    return good


def _number(value: Any, kind: Any = (int, float)) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def _stage_fields(raw: LineDict, sid: str, ld: _Loader) -> dict[str, Any]:
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
                    + _suggest(ref.name, list(pipeline.vars))
                    + f" (vars: {', '.join(pipeline.vars) or 'none'})"
                )
            value = pipeline.vars[ref.name]
            return value
        if ref.scope in SYMBOLIC_SCOPES:
            raise TemplateError(f"{ref} can only be used in a shell stage's cmd or env")
        stage = pipeline.stages.get(ref.scope)
        if stage is None:
            hint = _suggest(ref.scope, list(raw_by_id))
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
            f"(it has: {', '.join(known) or 'nothing'}). {_suggest(ref.name, known)}".strip()
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


def _bind(pipeline: Pipeline, raws: list[LineDict], ld: _Loader) -> None:
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


def _bind_stage(raw: LineDict, pipeline: Pipeline, lookup: Any, ld: _Loader) -> Stage | None:
    sid = raw["id"]
    rule = get_rule(raw["type"])
    if rule is None:
        ld.problem(
            f"unknown rule {raw['type']!r}",
            raw.line_of("type"),
            sid,
            hint=(
                _suggest(raw["type"], rule_names()) + " known rules: " + ", ".join(rule_names())
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
    refs = [r.scope for r in find_refs(config) if r.scope not in ("vars", *SYMBOLIC_SCOPES)]
    deps = list(dict.fromkeys([*(raw.get("depends_on") or []), *refs]))
    if isinstance(raw.get("depends_on"), str):
        deps = list(dict.fromkeys([raw["depends_on"], *refs]))
    for key in list(ports.outputs):
        out = ports.outputs[key]
        norm = _norm(out)
        if posixpath.isabs(norm) or norm == ".." or norm.startswith("../") or norm in (".", ""):
            ld.problem(
                f"output {key!r} ({out!r}) must be a path inside the project folder",
                config.line_of(key) if isinstance(config, LineDict) else raw.line,
                sid,
            )
        elif norm == ".pipemake" or norm.startswith(".pipemake/"):
            ld.problem(f"output {key!r} may not be inside .pipemake/", raw.line, sid)
        ports.outputs[key] = norm
    for key, value in ports.inputs.items():
        if isinstance(value, list):
            ports.inputs[key] = [_norm(v) if isinstance(v, str) else v for v in value]
        elif isinstance(value, str):
            ports.inputs[key] = _norm(value)
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


def _foreach(raw: LineDict, ports: Ports, rule: Rule, sid: str, ld: _Loader) -> Foreach | None:
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


def _check_graph(pipeline: Pipeline, raws: list[LineDict], ld: _Loader) -> None:
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
                    hint=_suggest(dep, list(stages)),
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


def _check_inputs(pipeline: Pipeline, st: Stage, ld: _Loader) -> None:
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
                continue
            full = p if os.path.isabs(p) else os.path.join(pipeline.root, p)
            if not os.path.exists(full):
                ld.problem(
                    f"input {key!r}: {p} does not exist",
                    line,
                    st.id,
                    hint="create it, fix the path, or produce it with an upstream stage",
                )

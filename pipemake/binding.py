"""Binding a pipeline's stages: rules, static ports, references and edges, and the checks
that need them (unknown keys whatever their value, per-item defaults, paths, overlapping
outputs, missing source inputs, missing packages, cycles)."""

from __future__ import annotations

import codecs
import os
import posixpath
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any

from .dag import Graph
from .errors import PipelineError, Problem, Problems, suggest
from .feeds import OutputIndex
from .items import glob_base, glob_match, is_glob, matches
from .model import SYMBOLIC_SCOPES, Foreach, Pending, Pipeline, Stage, norm, within
from .rule import Ports, Rule, get_rule, has_items, has_run, rule_names
from .templates import Ref, TemplateError, find_refs, strings, substitute
from .walk import BadPath, walk
from .yamlload import LineDict

__all__ = ["MissingSource", "MissingSources", "bind", "check_graph", "check_sources"]


@dataclass(frozen=True)
class MissingSource(Problem):
    """A source input (one no stage produces) that is not on disk: the one problem of a
    pipeline that a command with targets may let pass, for a stage the targets do not need
    (as ``make main.o`` builds while ``kbd.c`` is missing)."""

    input: str = ""
    path: str = ""


class MissingSources(PipelineError):
    """A pipeline whose only problems are :class:`MissingSource` ones; ``pipeline`` is the
    otherwise checked pipeline (bound, edges placed, no cycle), so a command with targets
    can tell which of them the targets need (:func:`pipemake.targets.scope_missing`)."""

    def __init__(self, problems: list[Problem], pipeline: Pipeline):
        super().__init__(problems)
        self.pipeline = pipeline


def _only_missing(ld: Problems) -> bool:
    return all(isinstance(p, MissingSource) for p in ld.problems)


#: what ``foreach:`` may say to run a rule with a ``default_foreach`` as one whole stage
_NO_FOREACH = ("none", "false", "off", "no")


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
    out["retries"] = good.get("retries")  # None: unset, so --retries applies
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


def _unknown_rule_hint(typed: str) -> str:
    """The closest rule name (case aside first: ``SEGMENTATION``), what a ``custom`` stage
    needs besides its type, and every rule name."""
    names = rule_names()
    same = [n for n in names if n.lower() == typed.lower()]
    close = f"did you mean {same[0]!r}? rule names are case-sensitive." if same else ""
    close = close or suggest(typed, names)
    if close == "did you mean 'custom'?":
        close += (
            ' A custom stage also needs `executor: "module:Class"` in its config (or register'
            f" the class as this type: pipemake.register_rule({typed!r}, Class))."
        )
    return (close + " known rules: " + ", ".join(names)).strip()


def _bind_stage(raw: LineDict, pipeline: Pipeline, lookup: Any, ld: Problems) -> Stage | None:
    sid = raw["id"]
    rule = get_rule(raw["type"])
    if rule is None:
        ld.problem(
            f"unknown rule {raw['type']!r}",
            raw.line_of("type"),
            sid,
            hint=_unknown_rule_hint(str(raw["type"])),
        )
        return None
    config = raw.get("config") or {}
    symbolic = getattr(rule, "symbolic_keys", ())
    resolved: dict[str, Any] = {}
    ok = True
    accepted = rule.accepted_keys()
    #: keys the rule does not know whose value is not a good template either
    unknown: list[tuple[str, TemplateError]] = []
    for key, value in config.items():
        keep = (lambda r: r.scope in SYMBOLIC_SCOPES) if key in symbolic else None
        try:
            resolved[key] = substitute(value, lookup, keep)
        except TemplateError as exc:
            if accepted is not None and key not in accepted:
                resolved[key] = value  # the unknown key is the mistake to say first
                unknown.append((key, exc))
                continue
            ld.problem(
                str(exc), config.line_of(key) if isinstance(config, LineDict) else raw.line, sid
            )
            ok = False
    if not ok:
        return None
    ports, written, reported = _ports(rule, resolved, config, raw, str(pipeline.root), ld)
    if unknown:  # its references are not worth resolving
        for key, exc in unknown if not reported else ():
            ld.problem(
                str(exc), config.line_of(key) if isinstance(config, LineDict) else raw.line, sid
            )
        return None
    fields = _stage_fields(raw, sid, ld)
    said = len(ld.problems)
    foreach = _foreach(raw, ports, rule, sid, ld, quiet=reported)
    if foreach is None and len(ld.problems) == said:  # no foreach, and none written wrong
        _item_without_foreach(rule, config, ports, raw, ld)
    if not reported:
        for key, msg in _glob_problems(rule, ports, foreach):
            ld.problem(msg, _port_line(config, "inputs", written.get(key, key), raw.line), sid)
    refs_all = find_refs(config)  # a template such as cmd keeps a computed value a reference
    refs = [r.scope for r in refs_all if r.scope not in ("vars", *SYMBOLIC_SCOPES)]
    after = raw.get("depends_on") or []
    after = [after] if isinstance(after, str) else list(after)
    deps = list(dict.fromkeys([*after, *refs]))
    _place_paths(ports, pipeline, config, written, raw, ld)
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
        after=after,
        **fields,
    )


def _ports(
    rule: Rule, resolved: dict[str, Any], config: Any, raw: LineDict, root: str, ld: Problems
) -> tuple[Ports, dict[str, str], bool]:
    """The stage's ports, each problem reported at its line; also the key each declared key
    was written as (an alias or itself), and whether a problem was reported."""
    sid = raw["id"]
    ports, problems = rule.ports(resolved)
    computed_outputs = _pending_outputs(rule, resolved)
    problems = [*problems, *computed_outputs]
    ports.root = root
    ports.stage = sid
    canon, twice = rule.unalias(resolved)
    # a key given twice, or an output an upstream would compute: wrong whatever the values
    now = {msg for _, msg in twice} | {msg for _, msg in computed_outputs}
    written = {rule.aliases.get(k, k): k for k in config}  # declared key → key in the file
    _pending_inputs(rule, canon, ports)
    # an input an upstream stage computes ({segment.character_dir}) is only "not a path
    # yet": the params are checked now all the same, not first after the upstream stages ran
    if not problems:
        problems = rule.check(ports)
    elif rule.checks_pending and all(
        k in rule.inputs and _has_pending(canon.get(k)) for k, _ in problems
    ):
        try:
            problems = [*problems, *rule.check(ports)]
        except Exception:  # noqa: BLE001 - a rule's check that needs the path: asked again
            pass  # once the upstream stage has computed it (before this stage runs)
    accepted = rule.accepted_keys()
    reported = False
    for key, msg in problems:
        as_written = written.get(key, key)
        # a problem with a value an upstream stage computes is checked again at build time;
        # an unknown key is reported now, whatever its value
        known = accepted is None or as_written in accepted
        if _has_pending(canon.get(key)) and known and msg not in now:
            continue
        line = (
            config.line_of(as_written)
            if isinstance(config, LineDict) and as_written in config
            else raw.line
        )
        ld.problem(msg, line, sid)
        reported = True
    return ports, written, reported


def _place_paths(
    ports: Ports,
    pipeline: Pipeline,
    config: Any,
    written: dict[str, str],
    raw: LineDict,
    ld: Problems,
) -> None:
    """Normalize the stage's paths (relative to the project root when inside it, absolute
    when outside) and refuse outputs that cannot be one (outside the project's reach,
    in ``.pipemake/``, or the pipeline's own files)."""
    sid, root = raw["id"], str(pipeline.root)
    own = pipeline.own_files()
    for key in list(ports.outputs):
        out = ports.outputs[key]
        clean = in_project(out, root)
        line = _port_line(config, "outputs", written.get(key, key), raw.line)
        if clean in ("..", ".", "") or clean.startswith("../"):
            ld.problem(
                f"output {key!r} ({out!r}) must be a path below the project folder, or an "
                "absolute path outside it",
                line,
                sid,
            )
        elif posixpath.isabs(clean) and _too_wide(clean, root):
            ld.problem(
                f"output {key!r} ({out!r}) {_too_wide(clean, root)}: an output's folder is "
                "replaced whole by each build that writes it",
                line,
                sid,
                hint="write the output to a folder of its own, e.g. /data/frames",
            )
        elif clean == ".pipemake" or clean.startswith(".pipemake/"):
            ld.problem(f"output {key!r} may not be inside .pipemake/", line, sid)
        elif mine := next(((f, w) for f, w in own.items() if within(f, clean)), None):
            ld.problem(
                f"output {key!r} ({out!r}) {'is' if mine[0] == clean else 'holds'} {mine[1]}: "
                "building it would overwrite that",
                line,
                sid,
                hint="write the output to a path of its own, e.g. build/...",
            )
        ports.outputs[key] = clean
    for key, value in ports.inputs.items():
        if isinstance(value, list):
            ports.inputs[key] = [in_project(v, root) if isinstance(v, str) else v for v in value]
        elif isinstance(value, str):
            ports.inputs[key] = in_project(value, root)


def _port_line(config: Any, section: str, key: str, default: int) -> int:
    """The line of port ``key``: a config key of its own, or a name in the config's
    ``inputs:``/``outputs:`` mapping (``shell`` and ``python`` stages)."""
    if not isinstance(config, LineDict):
        return default
    if key in config:
        return config.line_of(key)
    named = config.get(section)
    if isinstance(named, LineDict) and key in named:
        return named.line_of(key)
    return config.line_of(section) if section in config else default


def _pending_inputs(rule: Rule, resolved: dict[str, Any], ports: Ports) -> None:
    """Inputs whose paths an upstream stage computes are inputs too (known at build time)."""
    for key, value in resolved.items():
        if key in rule.inputs and _has_pending(value):
            ports.inputs[key] = value
        elif key == "inputs" and isinstance(value, dict) and not rule.inputs:
            for name, path in value.items():
                if _has_pending(path):
                    ports.inputs[name] = path


def _pending_outputs(rule: Rule, resolved: dict[str, Any]) -> list[tuple[str, str]]:
    """An output path an upstream stage would compute: refused, since where a stage writes
    must be known before anything runs (to order stages, check overlaps and restore)."""
    found = [k for k, v in resolved.items() if k in rule.outputs and _has_pending(v)]
    outputs = resolved.get("outputs")
    if isinstance(outputs, dict) and not rule.outputs:
        found += [f"outputs.{n}" for n, v in outputs.items() if _has_pending(v)]
    return [
        (key.partition(".")[0], f"output {key.partition('.')[2] or key!r} is an upstream "
         "stage's computed value: where a stage writes must be known before anything runs; "
         "write the path itself (it may use {vars.*} and {params.*})")
        for key in found
    ]  # fmt: skip


def _item_without_foreach(
    rule: Rule, config: Any, ports: Ports, raw: LineDict, ld: Problems
) -> None:
    """Report an ``{item.*}`` in a stage that does not run per item (it has no
    ``foreach``): there is no item to write in, so it fails at ``validate``, naming where
    it stands, not first when the stage runs."""
    for key in getattr(rule, "symbolic_keys", ()):
        value = config.get(key) if isinstance(config, Mapping) else None
        if isinstance(value, list):
            texts = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
        elif isinstance(value, Mapping):
            texts = [(f"{key} {k}", v) for k, v in value.items()]
        else:
            texts = [(key, value)]
        for where, text in texts:
            try:
                found = [r for r in find_refs(text) if r.scope == "item"]
            except TemplateError:
                continue  # malformed: said where the template is checked
            if found:
                first = next(iter(ports.inputs), "INPUT")
                line = config.line_of(key) if isinstance(config, LineDict) else raw.line
                ld.problem(
                    f"{found[0]} in {where}: items exist only in a stage with foreach, "
                    "and this stage runs once, as a whole",
                    line,
                    raw["id"],
                    hint=f"add foreach: {first} (the input whose files are the items), or "
                    f"remove {found[0]}",
                )
                return


def _foreach(
    raw: LineDict, ports: Ports, rule: Rule, sid: str, ld: Problems, quiet: bool = False
) -> Foreach | None:
    """The stage's ``foreach``: as written, the rule's ``default_foreach`` when it says
    nothing, or none (``foreach: false``). A rule that cannot run the way chosen is a
    problem here, never an error in the middle of a build (``quiet``: the stage has other
    problems already, so say nothing about a default that cannot apply)."""
    spec = raw.get("foreach")
    line = raw.line_of("foreach") if "foreach" in raw else raw.line_of("type")
    if spec is True:
        spec = rule.default_foreach
        if spec is None:
            ld.problem(
                f"foreach: true needs an input name: rule {rule.name!r} has no default "
                f"(inputs: {', '.join(ports.inputs) or 'none'})",
                line,
                sid,
                hint=f"write foreach: {next(iter(ports.inputs), 'INPUT')}",
            )
            return None
    off = spec is False or (
        isinstance(spec, str) and spec not in ports.inputs and spec.strip().lower() in _NO_FOREACH
    )
    if spec is None and rule.default_foreach is not None:
        decl = rule.inputs.get(rule.default_foreach)
        if rule.default_foreach in ports.inputs:
            return Foreach(rule.default_foreach, rule.foreach_pattern)
        if quiet or (decl is not None and decl.required):
            return None  # the missing input is reported already
    if spec is None and not quiet:
        globbed = _glob_input(rule, ports)
        if globbed is not None and has_items(rule):
            return Foreach(globbed, rule.foreach_pattern)
    if spec is None or off:
        if not has_run(rule) and not quiet:
            _cannot_run_whole(rule, ports, sid, line, ld, off)
        return None
    if isinstance(spec, str):
        spec = {"input": spec}
    if (
        not isinstance(spec, dict)
        or not isinstance(spec.get("input"), str)
        or not set(spec) <= {"input", "pattern"}
    ):
        ld.problem(
            "'foreach' must be an input name, {input: NAME, pattern: GLOB}, or false",
            line,
            sid,
        )
        return None
    if spec["input"] not in ports.inputs:
        known = list(ports.inputs)
        ld.problem(
            f"foreach: {spec['input']!r} is not an input of this stage "
            f"(inputs: {', '.join(known) or 'none'})",
            line,
            sid,
            hint=suggest(spec["input"], known),
        )
        return None
    allowed = rule.foreach_inputs
    if allowed is not None and spec["input"] not in allowed:
        _not_iterable(rule, spec["input"], allowed, sid, line, ld)
        return None
    if not has_items(rule):
        ld.problem(_no_code(rule), line, sid)
        return None
    pattern = spec.get("pattern", rule.foreach_pattern)
    if pattern is not None and not isinstance(pattern, str):
        ld.problem("foreach pattern must be a glob string", line, sid)
    return Foreach(spec["input"], pattern)


def _glob_input(rule: Rule, ports: Ports) -> str | None:
    """The first input the rule may run per item over that the stage gives as a glob
    (``input_video: vids/*.mp4``): such a stage runs per item over it without ``foreach:``."""
    for name in rule.foreach_inputs or ():
        value = ports.inputs.get(name)
        if isinstance(value, str) and is_glob(value):
            return name
    return None


def _not_iterable(
    rule: Rule, name: str, allowed: Sequence[str], sid: str, line: int | None, ld: Problems
) -> None:
    """Report ``foreach:`` over an input whose files the rule cannot take one at a time."""
    if not allowed:
        ld.problem(
            f"rule {rule.name!r} takes its inputs whole and cannot run per item: "
            f"foreach: {name} is not possible",
            line,
            sid,
            hint="remove the foreach line",
        )
        return
    ld.problem(
        f"rule {rule.name!r} cannot run per item over {name!r}; it runs per item only over "
        f"{', '.join(allowed)}",
        line,
        sid,
        hint=f"write foreach: {allowed[0]}"
        + (" (or remove the foreach line: that is the default)" if rule.default_foreach else ""),
    )


def _glob_problems(rule: Rule, ports: Ports, foreach: Foreach | None) -> list[tuple[str, str]]:
    """An input given as a glob that no foreach iterates over: read as a path, it does not
    exist (unless a file is really named so), so it is refused before anything runs."""
    out = []
    for key, value in ports.inputs.items():
        if not isinstance(value, str) or not is_glob(value):
            continue
        if (foreach is not None and foreach.input == key) or os.path.lexists(
            value if os.path.isabs(value) else os.path.join(ports.root or ".", value)
        ):
            continue
        allowed = rule.foreach_inputs
        can = allowed is None or key in allowed
        fix = f"add foreach: {key}" if can else "name one file or folder"
        out.append((key, f"input {key!r} is a glob ({value}): only the input a stage runs per "
                         f"item over (foreach) may be a glob; {fix}"))  # fmt: skip
    return out


def _no_code(rule: Rule) -> str:
    return (
        f"rule {rule.name!r} implements neither run() nor run_item() (nor map_item() and "
        "reduce()), so it cannot run: a mistake in the rule, for its author to fix"
    )


def _cannot_run_whole(
    rule: Rule, ports: Ports, sid: str, line: int | None, ld: Problems, off: bool
) -> None:
    """Report a stage that would run a per-item-only rule as one whole stage."""
    if not has_items(rule):
        ld.problem(_no_code(rule), line, sid)
        return
    dirs = [k for k, d in rule.inputs.items() if d.kind in ("dir", "path")] or list(ports.inputs)
    name = rule.default_foreach or (dirs[0] if dirs else "INPUT")
    if off:
        ld.problem(
            f"rule {rule.name!r} only runs per item (it has no whole-stage run()), "
            "so it cannot run with foreach off",
            line,
            sid,
            hint=f"remove the foreach line (the default is foreach: {name})",
        )
    else:
        ld.problem(
            f"rule {rule.name!r} only runs per item (it has no whole-stage run()): "
            "say which input's files are its items",
            line,
            sid,
            hint=f"add foreach: {name}",
        )


def _too_wide(path: str, root: str) -> str:
    """Why the absolute output ``path`` may not be one (it holds the project, the home
    folder, or is a top-level folder such as ``/data``), or an empty string."""
    if path == "/" or within(root, path):
        return f"holds the project folder {root}"
    home = norm(os.path.expanduser("~"))
    if posixpath.isabs(home) and within(home, path):
        return f"holds the home folder {home}"
    if path.count("/") < 2:
        return "is a top-level folder"
    return ""


def in_project(path: str, root: str) -> str:
    """``path`` as the pipeline keeps it: normalized, and relative to the project root
    ``root`` when it lies inside (however written: absolute, or through a symlinked
    folder); an absolute path outside the project stays absolute."""
    clean = norm(path)
    if not posixpath.isabs(clean):
        return clean
    for candidate in (clean, norm(os.path.realpath(clean))):
        if within(candidate, root):
            return posixpath.relpath(candidate, root)
    return clean


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
    raw_by_id = {r["id"]: r for r in raws}
    for st in stages.values():
        for dep in st.deps:
            if dep not in stages and dep not in raw_by_id:
                raw = raw_by_id.get(st.id)
                ld.problem(
                    f"depends_on names an unknown stage {dep!r}",
                    raw.line_of("depends_on")
                    if raw is not None and "depends_on" in raw
                    else st.line,
                    st.id,
                    hint=suggest(dep, list(stages)),
                )
    inside = OutputIndex(stages)
    why: dict[tuple[str, str], str] = {}  # (stage, the stage it needs) → the paths that say so
    unsure: list[tuple[str, str, str]] = []  # edges a glob may imply: (stage, needed, why)
    # inputs not on disk that another stage may write into: missing unless an edge is kept
    missing: dict[str, list[tuple[str, str]]] = {}
    feeders: dict[tuple[str, str, str], list[str]] = {}
    for st in stages.values():
        _check_inputs(pipeline, st, ld, inside, why, unsure, missing, feeders)
    known = Graph({s: [d for d in x.deps if d in stages] for s, x in stages.items()})
    for sid, dep, said in unsure:  # taken where they close no cycle
        if dep not in stages[sid].deps and sid not in known.ancestors([dep]):
            stages[sid].deps.append(dep)
            stages[sid].placed.append(dep)
            known.deps[sid].append(dep)
            why[(sid, dep)] = said
    for st in stages.values():
        for key, path in missing.get(st.id, []):
            if not any(sid in st.deps for sid in feeders.get((st.id, key, path), [])):
                _missing(ld, st, key, path, pipeline.root)
    check_packages(pipeline, ld)
    if not _only_missing(ld):
        ld.fail_if_any()
    pipeline.graph = Graph({sid: [d for d in st.deps if d in stages] for sid, st in stages.items()})
    cycle = pipeline.graph.find_cycle()
    if cycle is not None:
        pairs = list(zip(cycle, cycle[1:], strict=False))
        steps = [
            why.get((b, a))
            or (f"{b} lists {a} in depends_on" if a in stages[b].after else f"{b} refers to {a}")
            for a, b in pairs
        ]
        paths = "; ".join(steps) if any((b, a) in why for a, b in pairs) else ""
        ld.problem(
            f"the stages form a cycle: {' → '.join(cycle)}" + (f" ({paths})" if paths else ""),
            stages[cycle[0]].line,
            cycle[0],
            hint="remove one of these dependencies"
            + (", or move an output out of the folder another stage reads" if paths else ""),
        )
    if ld.problems and _only_missing(ld):
        raise MissingSources(ld.problems, pipeline)


def _check_inputs(
    pipeline: Pipeline,
    st: Stage,
    ld: Problems,
    inside: OutputIndex,
    why: dict[tuple[str, str], str],
    unsure: list[tuple[str, str, str]],
    missing: dict[str, list[tuple[str, str]]],
    feeders: dict[tuple[str, str, str], list[str]],
) -> None:
    """Check the stage's inputs (not overlapping its own outputs; a source input exists)
    and add the edges their paths imply: an input that is, or lies inside, another stage's
    output needs that stage; so does an input folder holding another stage's output (its
    content is complete only once that stage has run). ``why`` gets each such edge's
    paths, for a cycle's message; ``unsure`` the edges a glob only may imply (see
    :meth:`~pipemake.feeds.OutputIndex.feeding`). An input not on disk that other stages
    write into goes to ``missing`` (stage → ``(input, path)``) with those stages in
    ``feeders``: it is missing unless an edge to one of them is kept (one that would
    close a cycle is dropped, and then no stage makes the folder before this one)."""
    for key, value in st.ports.inputs.items():
        paths = value if isinstance(value, list) else [value]
        for p in paths:
            if not isinstance(p, str):
                continue
            written = p
            if is_glob(p):
                p = glob_base(p)
            line = st.lines.get(key, st.line)
            for okey, out in st.ports.outputs.items():
                if within(out, p) or within(p, out):
                    ld.problem(
                        f"output {okey!r} ({out}) overlaps its own input {key!r} ({p})",
                        line,
                        st.id,
                        hint="write outputs outside the stage's inputs",
                    )
            owner = pipeline.output_owner(p)
            if owner is not None:
                if owner[0] in st.placed:  # read directly too: its outputs key the stage
                    st.placed.remove(owner[0])
                if owner[0] != st.id and owner[0] not in st.deps:
                    st.deps.append(owner[0])
                    out = pipeline.stages[owner[0]].ports.outputs[owner[1]]
                    why[(st.id, owner[0])] = (
                        f"{st.id} reads {owner[0]}'s output {out}"
                        if out == p
                        else f"{st.id} reads {p}, inside {owner[0]}'s output {out}"
                    )
                continue
            held = inside.feeding(pipeline, st.id, written, p, st.items_pattern(key))
            for out, sid, surely in held:
                said = f"{st.id} reads the folder {p}, which holds {sid}'s output {out}"
                if written != p:
                    said = f"{st.id} reads {written}, which {sid}'s output {out} may add to"
                if not surely:
                    unsure.append((st.id, sid, said))
                elif sid not in st.deps:
                    st.deps.append(sid)
                    st.placed.append(sid)
                    why[(st.id, sid)] = said
            if not os.path.exists(p if os.path.isabs(p) else os.path.join(pipeline.root, p)):
                if not held:
                    _missing(ld, st, key, p, pipeline.root)
                else:  # an upstream stage makes the folder, if an edge to one is kept
                    missing.setdefault(st.id, []).append((key, p))
                    feeders[(st.id, key, p)] = [sid for _, sid, _ in held]
            else:
                _check_source(pipeline, st, key, written, p, ld)


def _check_source(
    pipeline: Pipeline, st: Stage, key: str, written: str, path: str, ld: Problems
) -> None:
    """What a source input on disk must be besides existing: a glob matches some file,
    an input the rule declares a file is not a folder, names this locale reads."""
    full = path if os.path.isabs(path) else os.path.join(pipeline.root, path)
    line = st.lines.get(key, st.line)
    per_item = st.foreach is not None and st.foreach.input == key
    if not _UTF8_NAMES:
        _names_this_locale_reads(ld, st, key, path, full)
    if written != path:
        pattern = st.items_pattern(key)
        rel_glob = written[len(path) + 1 :] if path != "." else written
        if not _any_match(full, rel_glob, pattern):
            some = pattern is not None and _any_match(full, rel_glob, None)
            message = f"input {key!r}: no file matches {written}"
            message += f" and the foreach pattern {pattern}" if some else ""
            hint = "fix the pattern, or put the files there"
            ld.problems.append(MissingSource(message, ld.shown, line, st.id, hint, key, written))
        return
    decl = st.rule.inputs.get(key)
    if decl is not None and decl.kind == "file" and not per_item and os.path.isdir(full):
        ld.problem(
            f"input {key!r}: {path} is a folder, and the rule reads a file here",
            line,
            st.id,
            hint=f"name the file itself, e.g. {path.rstrip('/')}/{_first_file(full) or 'FILE'}",
        )


def _any_match(base: str, rel_glob: str, pattern: str | None) -> bool:
    """Whether any visible file under ``base`` matches ``rel_glob`` (as a foreach's items
    are chosen) and the foreach ``pattern``; stops at the first."""
    for top, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel_top = os.path.relpath(top, base)
        for name in files:
            rel = name if rel_top == "." else f"{rel_top}/{name}".replace(os.sep, "/")
            if glob_match(rel, rel_glob) and matches(rel, pattern):
                return True
    return False


def _first_file(folder: str) -> str | None:
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name[0] != ".")
    except OSError:
        return None
    return names[0] if names else None


def _missing(ld: Problems, st: Stage, key: str, path: str, root: Any) -> None:
    try:
        os.fsencode(path)
    except UnicodeEncodeError:  # "é" under LC_ALL=C PYTHONUTF8=0: file names are ASCII here
        ld.problem(
            f"input {key!r} ({path}): this locale's encoding ({sys.getfilesystemencoding()}) "
            "cannot name the path's characters, so pipemake cannot read it",
            st.lines.get(key, st.line), st.id,
            hint="run pipemake under a UTF-8 locale (LC_ALL=C.UTF-8) or with PYTHONUTF8=1",
        )  # fmt: skip
        return
    where = ""
    if not os.path.isabs(path):  # from elsewhere: say where it was looked for
        full = os.path.normpath(os.path.join(root, path))
        shown = os.path.relpath(full)
        shown = full if shown.startswith("..") else shown
        if shown != os.path.normpath(path):
            where = f" (looked for {shown}: paths are relative to the pipeline file's folder)"
    hint = getattr(
        st.rule,
        "missing_input_hint",
        "create it, fix the path, or produce it with an upstream stage",
    )
    line = st.lines.get(key, st.line)
    message = f"input {key!r}: {path} does not exist{where}"
    ld.problems.append(
        MissingSource(message, ld.shown, line, st.id, hint.format(key=key), key, path)
    )


def check_sources(pipeline: Pipeline, ld: Problems, raws: Sequence[LineDict] | None = None) -> None:
    """Note every source input (one no stage produces) that is not on disk and every
    package a rule needs that is not installed: what can change without the pipeline file
    changing, so a cached plan is checked again on each load.

    With ``raws`` (the stages as written, when binding found problems already, so that
    those are reported together with these), a path any stage with a problem names in its
    config may be one of its outputs: it is not called missing."""
    unsure: list[str] = []
    if raws is not None:
        bad = {p.stage for p in ld.problems} | {r["id"] for r in raws} - set(pipeline.stages)
        for raw in raws:
            if raw["id"] in bad:
                st = pipeline.stages.get(raw["id"])
                read = set(strings(st.ports.inputs, tuples=True)) if st is not None else set()
                unsure += [
                    in_project(v, str(pipeline.root))
                    for v in strings(raw.get("config"), tuples=True)
                    if v and in_project(v, str(pipeline.root)) not in read
                ]
    check_packages(pipeline, ld)
    inside: OutputIndex | None = None  # made when some source input is missing
    for st in pipeline.stages.values():
        for key, value in st.ports.inputs.items():
            for path in value if isinstance(value, list) else [value]:
                if not isinstance(path, str):
                    continue
                base = glob_base(path) if is_glob(path) else path
                if base not in (".", "") and any(
                    within(base, u) or within(u, base) for u in unsure if u not in (".", "")
                ):
                    continue  # perhaps what a stage with a problem writes
                if pipeline.output_owner(base) is not None:
                    continue
                full = base if os.path.isabs(base) else os.path.join(pipeline.root, base)
                if not os.path.exists(full):
                    inside = inside or OutputIndex(pipeline.stages)
                    held = inside.feeding(pipeline, st.id, path, base, st.items_pattern(key))
                    if any(sid in st.deps for _, sid, _ in held):
                        continue  # a folder an upstream stage makes, writing into it
                    _missing(ld, st, key, base, pipeline.root)
                elif not _UTF8_NAMES:
                    _names_this_locale_reads(ld, st, key, base, full)


#: whether this Python reads file names as UTF-8 (not so under ``LC_ALL=C PYTHONUTF8=0``,
#: where they are ASCII and any other byte comes as an escape)
_UTF8_NAMES = codecs.lookup(sys.getfilesystemencoding()).name == "utf-8"


def _names_this_locale_reads(ld: Problems, st: Stage, key: str, base: str, full: str) -> None:
    """Under a locale whose file names are not UTF-8, refuse, before anything runs, a source
    input folder holding a file whose name is UTF-8 (``café.png``) that this locale cannot
    read as text: items, keys and the stat cache keep names as text, so the stage would
    fail halfway. The folder is walked as the build walks it, only under such a locale."""
    if not os.path.isdir(full):
        return
    try:
        rows = walk(full)
    except (OSError, BadPath):
        return  # the build says what is wrong with the folder
    for rel, *_ in sorted(rows):
        if rel.isascii():
            continue
        try:
            text = os.fsencode(rel).decode("utf-8")
        except UnicodeDecodeError:
            continue  # not text in any locale: the build names it (rename it)
        ld.problem(
            f"input {key!r}: the file name {posixpath.join(base, text)} is UTF-8, which this "
            f"locale's encoding ({sys.getfilesystemencoding()}) cannot read, so pipemake "
            "cannot take it",
            st.lines.get(key, st.line),
            st.id,
            hint="run pipemake under a UTF-8 locale (LC_ALL=C.UTF-8) or with PYTHONUTF8=1",
        )
        return


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it."""
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install_line(requirements: list[str]) -> str:
    """One ``pip install`` command for ``requirements``, pipemake's extras merged into one
    (``pipemake[video]`` and ``pipemake[segment]`` → ``'pipemake[video,segment]'``)."""
    extras: list[str] = []
    others: list[str] = []
    for req in requirements:
        if req.startswith("pipemake[") and req.endswith("]"):
            extras += [e.strip() for e in req[len("pipemake[") : -1].split(",")]
        elif req not in others:
            others.append(req)
    parts = [f"pipemake[{','.join(dict.fromkeys(extras))}]"] if extras else []
    return "pip install " + " ".join(f"'{p}'" if "[" in p else p for p in parts + others)


def check_packages(pipeline: Pipeline, ld: Problems) -> None:
    """Report, all at once, every package the pipeline's rules need that is not installed,
    with the one ``pip install`` line that installs them all (found by ``find_spec``:
    nothing is imported)."""
    missing: list[tuple[Stage, list[str]]] = []
    wanted: list[str] = []
    found: dict[str, bool] = {}
    for st in pipeline.stages.values():
        absent = []
        for module, requirement in st.rule.requires.items():
            if module not in found:
                found[module] = _installed(module)
            if not found[module]:
                absent.append(module)
                wanted.append(requirement)
        if absent:
            missing.append((st, absent))
    for n, (st, absent) in enumerate(missing, 1):
        names = ", ".join(absent)
        hint = ""
        if n == len(missing):
            hint = "one command installs everything missing: " + install_line(wanted)
        ld.problem(
            f"rule {st.rule.name!r} needs {names}, not installed",
            st.line,
            st.id,
            hint=hint,
        )

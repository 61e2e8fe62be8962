"""The pipeline loader: ``pipemake.yaml`` → checked stages and their DAG.

Everything that can be wrong with a pipeline file is found here, before anything runs, and
reported as a :class:`~pipemake.errors.PipelineError` naming the file, line and stage.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .binding import bind, check_graph, check_sources
from .dag import Graph
from .errors import Problem, Problems, UsageError, suggest
from .hashing import digest
from .hooks import check_hook
from .items import glob_base, is_glob
from .model import DEFAULT_FILE, SYMBOLIC_SCOPES, Foreach, Pending, Pipeline, Stage, norm, within
from .params import (
    Override,
    UnknownParam,
    apply_overrides,
    load_params,
    lookup_param,
    substitute_params,
)
from .rule import STAGE_KEYS, get_rule, rule_names
from .templates import TemplateError, find_refs
from .walk import links_under
from .yamlchunks import load_yaml_cached
from .yamlload import LineDict, YamlError, YamlTooBig

__all__ = [
    "DEFAULT_FILE",
    "SYMBOLIC_SCOPES",
    "Foreach",
    "Pending",
    "Pipeline",
    "Stage",
    "input_place_problems",
    "load_pipeline",
]

_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
#: the longest stage id: it names files (``<id>.log``, ``<id>-<hex>/``), which a file
#: system allows 255 bytes
MAX_ID = 128
_RESERVED = {"vars", "inputs", "outputs", "item"}
_TOP_KEYS = {
    "name", "version", "vars", "params", "stages", "on_success", "on_failure", "description",
    "lock_file", "remote",
}  # fmt: skip


def _stages_hint(raw: Any) -> str:
    """What to write instead of ``stages:`` as found; a mapping of name to stage (the
    layout of ``dvc.yaml``) is shown as the list it should be."""
    if isinstance(raw, dict) and raw:
        name = next(iter(raw))
        return (
            "stages is a list here, not a mapping of names to stages (as in dvc.yaml): "
            f"write '- id: {name}' with its type: and config: under it, for each stage"
        )
    return "each stage is a mapping with id, type and config"


def _unquoted_ref(value: Any) -> str | None:
    """``{a.b}`` written unquoted in YAML reads as the mapping ``{"a.b": None}``."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, val),) = value.items()
        if val is None and isinstance(key, str) and re.match(r"^[\w-]+(\.[\w-]+)?$", key):
            return "{" + key + "}"
    return None


def _find_unquoted(value: Any, key: str, where: LineDict, ld: Problems, stage: str | None) -> bool:
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


def _bad_keys(value: Any, raw: LineDict, ld: Problems, stage: str) -> bool:
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


def load_pipeline(
    file: str | os.PathLike[str],
    chunk_cache: Path | None = None,
    overrides: Sequence[Override] = (),
) -> Pipeline:
    """Load and check a pipeline file; raise PipelineError listing every problem found.

    With ``chunk_cache``, stages whose text is unchanged reuse their earlier parse.
    ``overrides`` (``--set``) change variables and params keys as editing the files would;
    one naming what is not there is a :class:`~pipemake.errors.UsageError`."""
    path = Path(file)
    ld = Problems(path)
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
        doc = load_yaml_cached(text, chunk_cache)
    except YamlTooBig as exc:
        ld.problem(str(exc), exc.line, hint=exc.hint)
        ld.fail_if_any()
    except YamlError as exc:
        ld.problem(f"malformed YAML: {exc}", exc.line, hint="fix the YAML syntax at that line")
        ld.fail_if_any()
    if not isinstance(doc, LineDict):
        ld.problem("the pipeline must be a mapping with a 'stages' list", 1)
        ld.fail_if_any()
    return _check(doc, path, ld, overrides)


def _check(doc: LineDict, path: Path, ld: Problems, overrides: Sequence[Override]) -> Pipeline:
    for key in doc:
        if key not in _TOP_KEYS:
            ld.problem(
                f"unknown top-level key {key!r}",
                doc.line_of(key),
                hint=suggest(str(key), sorted(_TOP_KEYS))
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
    lock_file = doc.get("lock_file", True)
    if not isinstance(lock_file, bool):
        ld.problem(
            f"'lock_file' must be true or false, not {_short(lock_file)}",
            doc.line_of("lock_file"),
            hint="lock_file: false stops `build` writing pipemake.lock",
        )
    remote = doc.get("remote")
    if remote is not None and (not isinstance(remote, str) or not remote.strip()):
        ld.problem("'remote' must be a URL such as s3://bucket/cache or file:///srv/cache",
                   doc.line_of("remote"), hint="or leave it out")  # fmt: skip
        remote = None
    raw_stages = doc.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        ld.problem(
            "'stages' must be a non-empty list of stages",
            doc.line_of("stages"),
            hint=_stages_hint(raw_stages),
        )
        ld.fail_if_any()
    stages = _check_stages(raw_stages, ld)
    root = path.parent.resolve()
    params, params_files = load_params(doc, root, ld)
    ld.fail_if_any()
    variables = apply_overrides(dict(variables), overrides, "vars", f"{ld.shown} (vars)")
    spec = doc.get("params")
    if "params" in doc:
        names = ", ".join(spec) if isinstance(spec, list) else str(spec)
        params = apply_overrides(params, overrides, "params", names)
    elif any(ov.scope == "params" for ov in overrides):
        first = next(ov for ov in overrides if ov.scope == "params")
        raise UsageError(
            f"--set {first}: {ld.shown} names no params file (add `params: params.yaml` at "
            "its top level), so there is no params key to set"
        )
    templates = _templates(stages, params, variables)  # before the values are written in
    if "params" in doc:
        _substitute_params(stages, params, ld, spec if isinstance(spec, list) else [spec])
    ld.fail_if_any()
    pipeline = Pipeline(
        name=str(doc.get("name") or _text(root.name)), version=str(doc.get("version") or ""),
        vars=dict(variables), stages={}, graph=Graph(), root=root, file=path,
        on_success=doc.get("on_success"), on_failure=doc.get("on_failure"),
        params_files=params_files,
        lock_file=doc.get("lock_file", True) is not False, remote=remote,
    )  # fmt: skip
    bind(pipeline, stages, ld)
    if ld.problems:  # said together with them: missing packages and source files
        check_sources(pipeline, ld, stages)
    ld.fail_if_any()
    check_graph(pipeline, stages, ld)
    ld.fail_if_any()
    for sid, (whole, keys) in templates.items():
        st = pipeline.stages.get(sid)
        if st is not None:  # keyed by the names the rule gives them (not an alias)
            named = {st.rule.aliases.get(k, k): v for k, v in keys.items()}
            st.templates = {"config": whole, "keys": named}
    return pipeline


def _templates(
    stages: list[LineDict], params: dict[str, Any], variables: dict[str, Any]
) -> dict[str, tuple[str, dict[str, Any]]]:
    """For each stage whose config uses ``{params.*}`` or ``{vars.*}``: the digest of its
    config as written, and for each key using one, the digest of its text and the value of
    each such reference (:attr:`Stage.templates`: what lets a rerun say ``params.lr 42 →
    43``). A reference that names nothing is left out (the loader reports it)."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for raw in stages:
        config = raw.get("config")
        if not isinstance(config, dict):
            continue
        keys: dict[str, Any] = {}
        for key, value in config.items():
            refs = _used_refs(value, params, variables)
            if refs:
                keys[key] = {"text": _digest(value), "refs": refs}
        whole = _digest(config) if keys else None
        if whole is not None and all(k["text"] is not None for k in keys.values()):
            out[raw["id"]] = (whole, keys)
    return out


def _used_refs(value: Any, params: dict[str, Any], variables: dict[str, Any]) -> dict[str, Any]:
    """``{"params.lr": 42, "vars.x": "a"}``: the params and variables ``value`` uses."""
    try:
        refs = find_refs(value)
    except TemplateError:
        return {}
    used: dict[str, Any] = {}
    for ref in refs:
        if ref.scope == "params":
            try:
                used[f"params.{ref.name}"] = lookup_param(params, ref)
            except TemplateError:
                continue
        elif ref.scope == "vars" and ref.name in variables:
            used[f"vars.{ref.name}"] = variables[ref.name]
    return used


def _digest(value: Any) -> str | None:
    try:
        return digest(value)
    except (TypeError, ValueError):
        return None


def _substitute_params(
    stages: list[LineDict], params: dict[str, Any], ld: Problems, files: list[str]
) -> None:
    """Write each ``{params.*}`` reference's value into the stages' configs (see
    :mod:`pipemake.params`); a reference to a key the files lack is noted at its line."""
    for raw in stages:
        sid = raw["id"]
        if sid == "params":
            ld.problem(
                "a stage may not be called 'params' when the pipeline has a params file: "
                "{params.KEY} names the file's keys",
                raw.line_of("id"),
                sid,
                hint="rename the stage",
            )
            continue
        config = raw.get("config")
        if not isinstance(config, dict):
            continue
        for key in list(config):
            try:
                config[key] = substitute_params(config[key], params, files)
            except TemplateError as exc:
                line = config.line_of(key) if isinstance(config, LineDict) else raw.line
                hint = ""
                if isinstance(exc, UnknownParam):
                    hint = "add the key to the params file, or fix the reference"
                ld.problem(str(exc), line, sid, hint=hint)


def _check_hook(doc: LineDict, key: str, ld: Problems) -> None:
    problem = check_hook(doc.get(key))
    if problem is not None:
        ld.problem(f"{key!r}: {problem}", doc.line_of(key))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


def _config_key_hint(key: str, kind: Any) -> str | None:
    """The hint for a stage-level key that is a config key of the stage's rule (``cmd:``
    beside ``type: shell``): it goes under ``config:``; None for any other key."""
    if not isinstance(kind, str):
        return None
    try:
        rule = get_rule(kind)
    except Exception:  # noqa: BLE001 - a rule that cannot load is reported on its own
        return None
    accepted = rule.accepted_keys() if rule is not None else None
    if accepted is None or key not in accepted:
        return None
    return f"{key!r} is a config key of rule {kind!r}: put it under 'config:'"


def _check_stages(raw_stages: list[Any], ld: Problems) -> list[LineDict]:
    seen: dict[str, int] = {}
    good: list[LineDict] = []
    for raw in raw_stages:
        if not isinstance(raw, LineDict):
            ld.problem("each stage must be a mapping with id, type and config", None)
            continue
        sid = raw.get("id")
        if isinstance(sid, str) and len(sid) > MAX_ID:
            ld.problem(
                f"stage id {sid[:24]!r}… is {len(sid):,} characters long; the limit is {MAX_ID}",
                raw.line_of("id"),
                hint="give the stage a shorter id (it names files: its log and staging folder)",
            )
            continue
        if not isinstance(sid, str) or not _ID.match(sid):
            ld.problem(
                f"stage id {_short(sid)} is not valid",
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
            if key not in STAGE_KEYS:
                ld.problem(
                    f"unknown stage key {key!r}",
                    raw.line_of(key),
                    sid,
                    hint=_config_key_hint(str(key), raw.get("type"))
                    or suggest(str(key), sorted(STAGE_KEYS))
                    or f"known: {', '.join(sorted(STAGE_KEYS))}",
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


def _text(name: str) -> str:
    """A folder name as text: bytes that are not UTF-8 (a Latin-1 ``café``) shown as ``\\xe9``,
    so the name the pipeline takes from its folder can go into JSON, SQLite and keys."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def input_place_problems(pipeline: Pipeline, dot: Path, cache: Path, shown: str) -> list[Problem]:
    """The inputs that overlap the store ``cache`` (holding it, equal to it or inside it) or
    pipemake's own folder ``dot``: every build writes there, so such an input would change
    while its stage runs, and the stage would fail every time. Compared as resolved paths;
    a glob by its fixed prefix. ``shown`` is the pipeline file as the problems name it."""
    real_dot, store = os.path.realpath(dot), os.path.realpath(cache)
    problems: list[Problem] = []
    reach = _Reach(pipeline, shown)
    for st in pipeline.stages.values():
        for key, value in st.ports.inputs.items():
            for path in value if isinstance(value, list) else [value]:
                if not isinstance(path, str) or not path:
                    continue
                base = glob_base(path) if is_glob(path) else path
                real = os.path.realpath(pipeline.root / base)
                problems += reach.check(st, key, path, base, real)
                hint = "keep --cache-dir (PIPEMAKE_CACHE_DIR) outside every input"
                if within(store, real):
                    what = f"holds the store {cache}"
                elif within(real, store):
                    what = f"lies inside the store {cache}"
                elif within(real_dot, real) or within(real, real_dot):
                    what = f"overlaps pipemake's own folder {dot}"
                    hint = "point the input at your own files, outside .pipemake"
                else:
                    continue
                problems.append(Problem(
                    f"input {key!r} ({path}) {what}: each build writes there, so the input "
                    "would change while the stage runs", shown, st.lines.get(key, st.line) or None,
                    st.id, hint,
                ))  # fmt: skip
    return problems


class _Reach:
    """Finds the source inputs that lead, through a symlink, into an output of their own
    stage or of a stage after it (the input itself a link, or a link in its folder): the
    stage would read what it or its downstream writes, so every build would find its input
    changed and run again (``data/self -> ../build/up`` grows ``self/self/…`` for ever).
    The literal overlaps are the loader's (:mod:`pipemake.binding`); these show only on
    disk, so they are looked for on every load, before anything runs."""

    def __init__(self, pipeline: Pipeline, shown: str):
        self.p, self.shown = pipeline, shown
        self.real_root = os.path.realpath(pipeline.root)
        self._after: dict[str, list[str]] | None = None
        self._outs: dict[str, list[tuple[str, str, tuple[str, str]]]] = {}
        self._links: dict[str, list[tuple[str, str]]] = {}

    def check(self, st: Stage, key: str, path: str, base: str, real: str) -> list[Problem]:
        """The problems of input ``key`` of ``st`` (``path`` as written, ``base`` its
        folder or file, ``real`` its real path); none for an output of another stage (the
        loader checked those)."""
        if self.p.output_owner(norm(base)) is not None:
            return []
        literal = os.path.normpath(os.path.join(self.real_root, base))
        found: list[tuple[str, str]] = []
        if real != literal:  # a link on the way: the input itself leads elsewhere
            found.append((base, real))
        if real not in self._links:  # several stages may read one folder: listed once
            self._links[real] = links_under(real) if os.path.isdir(real) else []
        found += [(f"{base.rstrip('/')}/{name}", to) for name, to in self._links[real]]
        problems: list[Problem] = []
        for link, target in found:
            hit = self._output_reached(st, target)
            if hit is None:
                continue
            owner, name, out = hit
            whose = (
                f"output {name!r} of this stage" if owner == st.id
                else f"output {name!r} of stage {owner!r}, which runs after this one"
            )  # fmt: skip
            to = _text(self._rel(target))
            to = "the project folder" if to == "." else to
            how = (
                f"{to}, the" if to == out
                else f"{to}, inside {out}, the" if within(to, out)
                else f"{to}, which holds {out}, the"
            )  # fmt: skip
            problems.append(Problem(
                f"input {key!r} ({_text(path)}): {_text(link)} is a symlink to {how} {whose}: "
                "the stage would read what the pipeline writes from it, and never be up to date",
                self.shown, st.lines.get(key, st.line) or None, st.id,
                "remove the link or point it outside the outputs; to use an output, refer "
                "to it ({stage.output}) from a stage after the one writing it",
            ))  # fmt: skip
            break  # one link per input is enough to say what to do
        return problems

    def _output_reached(self, st: Stage, target: str) -> tuple[str, str, str] | None:
        """``(stage, output name, output path)`` of the first output of ``st`` or of a stage
        after it that ``target`` (a real path) lies in or holds."""
        for owner, name, out in self._outputs(st.id):
            if within(target, out[1]) or within(out[1], target):
                return owner, name, out[0]
        return None

    def _outputs(self, sid: str) -> list[tuple[str, str, tuple[str, str]]]:
        """The outputs of ``sid`` and of every stage after it: ``(stage, name, (path as
        written, real path))``."""
        if self._after is None:
            self._after = self.p.graph.dependents() if self.p.graph is not None else {}
        if sid not in self._outs:
            order, todo, seen = [], [sid], {sid}
            while todo:
                now = todo.pop()
                order.append(now)
                for nxt in self._after.get(now, ()):
                    if nxt not in seen:
                        seen.add(nxt)
                        todo.append(nxt)
            self._outs[sid] = [
                (s, name, (out, os.path.realpath(os.path.join(self.p.root, out))))
                for s in order
                for name, out in self.p.stages[s].ports.outputs.items()
            ]
        return self._outs[sid]

    def _rel(self, real: str) -> str:
        """A real path for a message: relative to the project when inside it."""
        return os.path.relpath(real, self.real_root) if within(real, self.real_root) else real

"""The checked plan, cached by the pipeline file's hash.

Parsing and checking a 10,000-stage pipeline file takes seconds; when the file has not
changed, ``.pipemake/plan.json`` gives the same checked stages back in a fraction of that.
The key covers the file's bytes, pipemake's version, the installed rules and the
environment (:func:`pipemake.fingerprint.environment`: the Python and its installed
distributions); the cache also names the source files of every loaded module of pipemake
and of the rules' packages with their stat (:func:`pipemake.fingerprint.stamp`), so editing
a rule (a param's default, say) or upgrading a rule package means a full load too. What
can change on disk without the file changing — whether a source input exists — is checked
again on every load, and so the plan never holds the answer to it: a pipeline whose only
problem is a missing source input is not cached, and which of them a command's targets let
pass (:func:`pipemake.targets.scope_missing`) is decided anew by each command.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import fingerprint
from .binding import MissingSource, MissingSources, check_sources
from .dag import Graph
from .errors import Problems
from .hashing import digest, hash_bytes
from .model import Foreach, Pending, Pipeline, Stage
from .params import Override, params_hash
from .pipeline import load_pipeline
from .rule import Ports, get_rule, registry
from .targets import scope_missing

__all__ = ["load_checked"]

#: 4: a stage referring to a computed value in a template is not static; the rules' code
#: 5: the params files and their hashes
#: 6: the key holds the whole environment fingerprint
#: 7: the remote store's URL
#: 8: each stage's own ``depends_on`` (``after``)
#: 9: the stages' own code files (a ``python`` function's, a ``custom`` executor's module)
PLAN_FORMAT = 10


def _key(text: bytes, dot: Path) -> str:
    version, rules = registry(dot / "rules.json")
    env = fingerprint.environment()
    return digest([PLAN_FORMAT, version, env, sorted(rules.items()), hash_bytes(text)])


def load_checked(
    file: Path,
    dot: Path,
    overrides: Sequence[Override] = (),
    *,
    targets: Sequence[str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Pipeline:
    """The checked pipeline of ``file``, from ``dot/plan.json`` when the file (and its
    params files) are unchanged (the cache is written only where ``dot`` already exists).
    With ``overrides`` (``--set``) the file is loaded afresh and the cache left alone.

    With ``targets`` (build, dry-run or status of some stages), a missing source input of
    a stage the targets do not need is said to ``warn`` instead of failing the load; any
    other problem, or one of a stage they need, fails it as without targets."""
    try:
        return _load(file, dot, overrides)
    except MissingSources as exc:
        return scope_missing(exc, targets or (), warn)


def _load(file: Path, dot: Path, overrides: Sequence[Override]) -> Pipeline:
    if overrides:
        return load_pipeline(file, dot / "yaml-chunks.json" if dot.is_dir() else None, overrides)
    try:
        text = file.read_bytes()
    except OSError:
        return load_pipeline(file)  # reports the missing file as usual
    key = _key(text, dot)
    cache = dot / "plan.json"
    pipeline = _read(cache, key, file)
    if pipeline is not None:
        _recheck_sources(pipeline)
        return pipeline
    pipeline = load_pipeline(file, dot / "yaml-chunks.json" if dot.is_dir() else None)
    if dot.is_dir():
        _write(cache, key, pipeline)
    return pipeline


def _inputs_json(value: Any) -> Any:
    if isinstance(value, Pending):
        return None
    if isinstance(value, list):
        return [_inputs_json(v) for v in value]
    return value


def _code(p: Pipeline) -> list[list[Any]]:
    """The source files behind the plan (pipemake and the rules' packages, as loaded now)
    with their stat: a plan is only as current as the rules that checked it."""
    tops = {"pipemake"} | {type(s.rule).__module__.partition(".")[0] for s in p.stages.values()}
    return fingerprint.stamp(fingerprint.code_files(tops))


def _own_code(p: Pipeline) -> list[list[Any]]:
    """The project's own code the rules checked (a ``python`` stage's module, a ``custom``
    stage's executor) with its stat: removed or edited, the rule checks the stage again on
    a full load, so a module gone is exit 2 at validation (file, line, stage) as without
    the cache, not a failure when the stage runs."""
    files = {f for s in p.stages.values() for f in s.rule.code_files(s.ports, p.root) if f}
    return fingerprint.stamp(files)


def _write(cache: Path, key: str, p: Pipeline) -> None:
    try:
        own = _own_code(p)
    except (OSError, SyntaxError, ValueError):
        return  # a stage's code that cannot be read now: no plan to trust later
    doc = {
        "key": key,
        "code": _code(p),
        "own_code": own,
        "name": p.name,
        "version": p.version,
        "vars": p.vars,
        "on_success": p.on_success,
        "on_failure": p.on_failure,
        "params_files": p.params_files,
        "lock_file": p.lock_file,
        "remote": p.remote,
        "stages": [
            {
                "id": s.id,
                "type": s.type,
                "config": s.config,
                "deps": s.deps,
                "after": s.after,
                "placed": s.placed,
                "inputs": {k: _inputs_json(v) for k, v in s.ports.inputs.items()},
                "outputs": s.ports.outputs,
                "output_kinds": s.ports.output_kinds,
                "params": s.ports.params if s.static else None,
                "key_params": s.ports.key_params if s.static else None,
                "static": s.static,
                "line": s.line,
                "lines": s.lines,
                "foreach": [s.foreach.input, s.foreach.pattern] if s.foreach else None,
                "resources": s.resources,
                "retries": s.retries,
                "retry_backoff": s.retry_backoff,
                "timeout": s.timeout,
                "version": s.version,
                "templates": s.templates,
            }  # fmt: skip
            for s in p.stages.values()
        ],
    }
    try:
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".plan-")
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(doc, separators=(",", ":")))
        os.replace(tmp, cache)
    except (OSError, TypeError, ValueError):
        pass  # only a cache


def _read(cache: Path, key: str, file: Path) -> Pipeline | None:
    try:
        with open(cache) as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("key") != key:
        return None
    try:
        if not fingerprint.unchanged(doc["code"]) or not fingerprint.unchanged(doc["own_code"]):
            return None
        if any(_sha256(f) != h for f, h in doc["params_files"].items()):
            return None
        return _stages(doc, file)
    except (KeyError, TypeError, ValueError):
        return None  # a damaged cache: load the file


def _stages(doc: dict[str, Any], file: Path) -> Pipeline | None:
    stages: dict[str, Stage] = {}
    root = str(file.parent.resolve())
    for s in doc["stages"]:
        rule = get_rule(s["type"])
        if rule is None:
            return None
        ports = Ports(
            inputs=s["inputs"], outputs=s["outputs"], output_kinds=s["output_kinds"],
            params=s["params"] or {}, key_params=s["key_params"], root=root, stage=s["id"],
        )  # fmt: skip
        fe = Foreach(*s["foreach"]) if s["foreach"] else None
        stages[s["id"]] = Stage(
            id=s["id"], type=s["type"], rule=rule, config=s["config"], ports=ports,
            deps=s["deps"], after=s["after"], placed=s["placed"], line=s["line"],
            lines=s["lines"], foreach=fe,
            resources=s["resources"], retries=s["retries"], retry_backoff=s["retry_backoff"],
            timeout=s["timeout"], version=s["version"], static=s["static"],
            templates=s.get("templates") or {},
        )  # fmt: skip
    graph = Graph({sid: [d for d in st.deps if d in stages] for sid, st in stages.items()})
    return Pipeline(
        name=doc["name"], version=doc["version"], vars=doc["vars"], stages=stages, graph=graph,
        root=file.parent.resolve(), file=file, on_success=doc["on_success"],
        on_failure=doc["on_failure"], params_files=doc["params_files"],
        lock_file=doc.get("lock_file", True) is not False, remote=doc.get("remote"),
    )  # fmt: skip


def _sha256(path: str) -> str | None:
    """A params file's content hash as :func:`pipemake.params.load_params` takes it."""
    try:
        return params_hash(Path(path).read_bytes())
    except OSError:
        return None


def _recheck_sources(p: Pipeline) -> None:
    problems = Problems(p.file)
    check_sources(p, problems)
    if problems.problems and all(isinstance(x, MissingSource) for x in problems.problems):
        raise MissingSources(problems.problems, p)
    problems.fail_if_any()

"""``pipemake.lock``: what each stage was last built from and what it made, in the project.

Written by ``build`` at the project root so a CI cache can be keyed on it (GitHub
Actions: ``key: pipemake-${{ hashFiles('pipemake.lock') }}``) and committed beside the
pipeline. Per stage: its key, rule, resolved params, each input's path and content hash,
each output's path and hash and its computed values (up to 64 KB of JSON); a ``foreach``
input is its item count and one digest of the items (path and content), never one line
per item. The file is JSON (also valid YAML), keys sorted, one value per line, and holds
no time, host or absolute path of its own (a stage's values are as it computed them), so
the same build gives the same bytes anywhere, and it is rewritten only when its content
changes (a no-op build leaves it, mtime and all).

On a fresh clone without a store, :func:`compare` tells ``status`` which stages' source
inputs (or static params) differ from the lock, and so will run rather than restore from
a cache keyed on it. Where a stage's key is the locked one and its outputs in the
workspace hash to the locked hashes, the build finds it up to date and takes those
outputs into the store (:meth:`pipemake.build.Builder.decide`), as ``dvc.lock`` makes
``dvc repro`` skip it. ``--no-lock-file`` or ``lock_file: false`` in the pipeline turns
it off. The lock is the project's own file: read as untrusted input (bounded, checked in
shape), a damaged one is reported as unreadable and rewritten by the next build. Several
pipeline files in one folder share it, each keeping its own sections (see :data:`_TAG`;
a stage id two of them have: :func:`section_key`).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .finding import PIPELINE_FILES
from .fshash import Hasher
from .hashing import hash_bytes
from .items import glob_base, is_glob, items_digest, select
from .model import LOCK_FILE
from .walk import BadPath, remove_stale

if TYPE_CHECKING:
    from .model import Pipeline
    from .project import Project

__all__ = [
    "FILE", "FORMAT", "compare", "document", "live_file", "locked_values", "own_sections", "read",
    "render", "section_key", "write",
]  # fmt: skip

FILE = LOCK_FILE
FORMAT = 1
_MAX = 64 << 20
#: computed values larger than this (as JSON) are left out of a stage's section
_MAX_VALUES = 64 << 10
_NOTE = (
    "written by `pipemake build`; do not edit. Key a CI cache on it, e.g. "
    "hashFiles('pipemake.lock')"
)


def document(project: Project, old: dict[str, Any] | None = None) -> dict[str, Any]:
    """The lock of the project as built: every current stage with a last build. A stage
    whose entry the store no longer holds keeps its section of ``old`` when the key is the
    same (so what the store holds never changes the lock), else lists no outputs; a stage
    not built in this workspace (a target build of a fresh clone) or whose last build
    failed keeps its section of ``old`` as it was, as ``dvc repro STAGE`` keeps the others'."""
    p = project.pipeline
    records = project.state.builds.records()
    old_stages = (old or {}).get("stages") if isinstance(old, dict) else None
    own = owner_tag(p)
    kept = _others(p, own, old_stages)
    old_stages = own_sections(p, old_stages)  # a section another pipeline file wrote is not ours
    keys = {sid: rec.get("key") for sid, rec in records.items() if sid in p.stages}
    entries = project.store.get_actions(sorted({k for k in keys.values() if isinstance(k, str)}))
    stages: dict[str, Any] = {}
    for sid, stage in p.stages.items():
        rec = records.get(sid)
        key = keys.get(sid)
        doc = rec.get("doc") if rec else None
        prior = old_stages.get(sid) if isinstance(old_stages, dict) else None
        built = isinstance(key, str) and isinstance(doc, dict) and rec.get("result") == "ok"
        if not built and isinstance(prior, dict):
            stages[sid] = prior  # not built here (a target build of a clone), or it failed
            continue
        if not isinstance(key, str) or not isinstance(doc, dict):
            continue
        section: dict[str, Any] = {"key": key, "rule": stage.type,
                                   "params": doc.get("params", {})}  # fmt: skip
        if own is not None:
            section[_TAG] = own
        items = project.state.builds.item_hashes(sid) if stage.foreach is not None else None
        inputs = doc.get("inputs") if isinstance(doc.get("inputs"), dict) else {}
        section["inputs"] = {name: _input(v, items) for name, v in sorted(inputs.items())}
        entry = entries.get(key)
        outputs = entry.get("outputs") if isinstance(entry, dict) else None
        if isinstance(outputs, dict):
            section["outputs"] = {
                name: {"path": rel, "hash": outputs[name]["hash"]}
                for name, rel in sorted(stage.ports.outputs.items())
                if isinstance(outputs.get(name), dict)
            }
            values = entry.get("values") if isinstance(entry, dict) else None
            if isinstance(values, dict) and len(json.dumps(values)) <= _MAX_VALUES:
                section["values"] = values
                section["check"] = _check(key, section["outputs"], values)
        elif isinstance(prior, dict) and prior.get("key") == key and "outputs" in prior:
            section["outputs"] = prior["outputs"]
            if isinstance(prior.get("values"), dict):
                section["values"] = prior["values"]
                if "check" in prior:
                    section["check"] = prior["check"]
        stages[sid] = section
    stages = _arrange(stages, kept, own)
    name = p.name
    if own is not None and kept and isinstance(old, dict) and isinstance(old.get("pipeline"), str):
        name = old["pipeline"]  # as first written: builds in turn leave the bytes alone
    return {"format": FORMAT, "note": _NOTE, "pipeline": name, "stages": stages}


#: the field of a section naming the pipeline file that wrote it, when that is not
#: ``pipemake.yaml`` (or the original ``pipeline.yaml``): several pipeline files in one
#: folder share the lock, each keeping its own sections (a default one's have no field, so
#: the lock of a project with one pipeline file is as it always was)
_TAG = "pipeline_file"


def owner_tag(p: Pipeline) -> str | None:
    """What the sections ``p`` writes are tagged with: its file's name, or None for
    ``pipemake.yaml`` and ``pipeline.yaml``."""
    return None if p.file.name in PIPELINE_FILES else p.file.name


def _ours(section: Any, own: str | None, root: Path | None = None) -> bool:
    """Whether a lock section is one the pipeline file tagged ``own`` wrote. An untagged
    section is a default pipeline file's, or, where the folder has none (``root`` given),
    one the same file wrote before sections were tagged."""
    tag = section.get(_TAG) if isinstance(section, dict) else None
    if tag is None and own is not None and root is not None:
        return not any(live_file(root, name) for name in PIPELINE_FILES)
    return tag == own


def section_key(sid: str, tag: str) -> str:
    """Where the section of stage ``sid`` of the pipeline file tagged ``tag`` goes when
    the plain ``sid`` holds another pipeline file's section of a stage with the same id
    (``a.yaml`` and ``b.yaml`` both with a stage ``prep``): ``b.yaml:prep``, which no stage
    id can be (an id has no ``:``), so neither file's section drops the other's. A default
    pipeline file's sections are always under their ids, and so is every section of a
    folder whose pipeline files share no stage id: those locks are as they always were."""
    return f"{tag}:{sid}"


def own_sections(p: Pipeline, stages: Any) -> dict[str, Any]:
    """Each stage of ``p`` → its section in the lock's ``stages`` mapping, the one its
    pipeline file wrote: under its id, or (a stage id another pipeline file of the folder
    also has) under :func:`section_key`; a stage with neither is left out."""
    if not isinstance(stages, dict):
        return {}
    own = owner_tag(p)
    out: dict[str, Any] = {}
    for sid in p.stages:
        for key in (sid,) if own is None else (sid, section_key(sid, own)):
            section = stages.get(key)
            if isinstance(section, dict) and _ours(section, own, p.root):
                out[sid] = section
                break
    return out


def _arrange(mine: dict[str, Any], kept: dict[str, Any], own: str | None) -> dict[str, Any]:
    """The lock's ``stages``: this pipeline file's sections (by stage id) and the ones
    ``kept`` of other files (by the key they had). A stage id both have: a default file's
    section takes the plain id (the other's moves to its :func:`section_key`); else the
    section that holds it keeps it, and this file's goes under its :func:`section_key`."""
    out = dict(kept)
    for sid, section in mine.items():
        other = out.get(sid)
        if other is None:
            out[sid] = section
            continue
        tag = other.get(_TAG) if isinstance(other, dict) else None
        if own is None and isinstance(tag, str):
            del out[sid]
            out.setdefault(section_key(sid, tag), other)
            out[sid] = section
        elif own is not None:
            out[section_key(sid, own)] = section
    return out


def _others(p: Pipeline, own: str | None, old_stages: Any) -> dict[str, Any]:
    """The sections of ``old_stages`` other pipeline files in the folder wrote (and that
    still exist): a build of one never drops another's, as each ``dvc.yaml`` keeps its
    ``dvc.lock`` (where ``p`` has a stage of the same id, its own section wins)."""
    if not isinstance(old_stages, dict):
        return {}
    out: dict[str, Any] = {}
    for sid, section in old_stages.items():
        if not isinstance(section, dict) or _ours(section, own, p.root):
            continue
        tag = section.get(_TAG)
        if tag is None or (isinstance(tag, str) and live_file(p.root, tag)):
            out[sid] = section
    return out


def live_file(root: Path, name: str) -> bool:
    """Whether ``name`` (a lock section's tag, a pipeline file the workspace state names;
    read from files, so untrusted) is a plain file name — never absolute, never a path, never
    ``..`` — of a file that exists in the folder ``root``. A name that cannot name a file
    (too long, say) is a gone file, never an error: nothing outside the folder is looked at."""
    if not isinstance(name, str) or name in ("", ".", "..") or len(name) > 255:
        return False
    if any(c in name for c in "/\\\0") or os.path.isabs(name):
        return False
    try:
        return (root / name).is_file()
    except (OSError, ValueError):
        return False


def _input(value: Any, items: dict[str, str] | None) -> Any:
    """One input of a key document as the lock writes it."""
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
        if value[1] == "foreach":
            found = items or {}
            return {"path": value[0], "items": len(found), "items_digest": items_digest(found)}
        if isinstance(value[1], str):
            return {"path": value[0], "hash": value[1]}
    return {"value": value}


def _check(key: str, outputs: Any, values: Any) -> str:
    """The digest that ties a section's computed values to its key and outputs."""
    return hash_bytes(json.dumps([key, outputs, values], sort_keys=True).encode())


def locked_values(section: dict[str, Any]) -> dict[str, Any] | None:
    """The computed values a lock section records, or None where it records none or they
    are not the ones written with its key and outputs (edited by hand, or a merge conflict
    resolved line by line): a stage whose values are needed then runs."""
    values = section.get("values")
    if not isinstance(values, dict):
        return None
    try:
        good = section.get("check") == _check(section.get("key"), section.get("outputs"), values)
    except (TypeError, ValueError, RecursionError):
        return None
    return values if good else None


def render(doc: dict[str, Any]) -> bytes:
    """The lock's bytes: sorted keys, two-space indent, a final newline."""
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def read(root: Path) -> dict[str, Any] | None:
    """The lock at ``root``, or None when there is none; :class:`ValueError` when it is
    not a lock pipemake wrote (damaged or edited)."""
    path = root / FILE
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"{FILE} cannot be read ({exc.strerror or exc})") from None
    if len(data) > _MAX:
        raise ValueError(f"{FILE} is larger than {_MAX >> 20} MB")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeError) as exc:
        raise ValueError(f"{FILE} is not JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"{FILE} is nested too deeply to be a lock pipemake wrote") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), dict):
        raise ValueError(f"{FILE} has no 'stages' mapping")
    return doc


def write(project: Project) -> bool:
    """Write ``pipemake.lock`` when its content changed (atomically); whether it did. Not
    written where a stage reads it (an input of the whole project folder): each lock would
    change that stage's key, and so the next lock, for ever."""
    root = project.pipeline.root
    if _read_by_a_stage(project):
        return False
    path = root / FILE
    try:
        old_bytes: bytes | None = path.read_bytes()
    except OSError:
        old_bytes = None
    try:
        old = json.loads(old_bytes) if old_bytes else None
    except (ValueError, UnicodeError, RecursionError):
        old = None
    data = render(document(project, old if isinstance(old, dict) else None))
    if data == old_bytes:
        return False
    fd, tmp = tempfile.mkstemp(dir=root, prefix=_TEMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


#: the start of the temporary file's name :func:`write` makes beside the lock: a ``~tmp-``
#: no person writes by hand, so a user's ``.pipemake.lock-20261204`` or
#: ``.pipemake.lock-backup_1`` is never taken for one (and never swept)
_TEMP_PREFIX = ".pipemake.lock~tmp-"
#: the whole name: the prefix and ``tempfile.mkstemp``'s 8 characters
_TEMP = re.compile(re.escape(_TEMP_PREFIX) + r"[a-z0-9_]{8}")


def sweep_temps(root: Path, before: float) -> int:
    """Remove the temporary lock files a killed build left in the project ``root``: regular
    files (never a symlink) named exactly as :func:`write` names them and last changed
    before ``before`` (the running build's start; call only while holding the build lock);
    how many were removed."""
    return remove_stale(str(root), lambda name: _TEMP.fullmatch(name) is not None, before)


def _read_by_a_stage(project: Project) -> bool:
    """Whether some stage's input is, or holds, ``pipemake.lock``."""
    for stage in project.pipeline.stages.values():
        for value in stage.ports.inputs.values():
            for path in value if isinstance(value, list) else [value]:
                if not isinstance(path, str):
                    continue
                base = os.path.normpath(glob_base(path) if is_glob(path) else path)
                if base in (".", FILE):
                    return True
    return False


def compare(project: Project, lock: dict[str, Any], stages: list[str]) -> dict[str, list[str]]:
    """Per stage of ``stages`` (in build order), why it differs from the lock: a source
    input (one no stage makes) whose content is not the locked one, static params that are
    not the locked ones, an upstream stage that differs, an output in the workspace that is
    not the locked one (edited by hand), or no section in the lock. An empty list: as
    locked, so a store keyed on the lock restores it."""
    p = project.pipeline
    hasher = Hasher(str(p.root), project.state)
    locked = own_sections(p, lock.get("stages"))
    out: dict[str, list[str]] = {}
    for sid in stages:
        section = locked.get(sid)
        if not isinstance(section, dict):
            out[sid] = [f"not in {FILE}"]
            continue
        stage = p.stages[sid]
        reasons = [f"upstream {d} differs from {FILE}" for d in stage.deps if out.get(d)]
        if stage.static:
            params = stage.ports.key_params
            if params is None:
                params = stage.ports.params
            if params != section.get("params"):
                reasons.append(f"params differ from {FILE}")
        inputs = section.get("inputs") if isinstance(section.get("inputs"), dict) else {}
        for _name, want in sorted(inputs.items()):
            if not isinstance(want, dict) or not isinstance(want.get("path"), str):
                continue
            path = want["path"]
            base = glob_base(path) if is_glob(path) else path
            if p.output_owner(base) is not None:
                continue  # made by a stage: its upstream stands for it
            why = _input_differs(hasher, stage, path, want)
            if why:
                reasons.append(f"input {path} {why} since {FILE}")
        outputs = section.get("outputs") if isinstance(section.get("outputs"), dict) else {}
        for _name, want in sorted(outputs.items()):
            if not isinstance(want, dict) or not isinstance(want.get("path"), str):
                continue
            try:
                info = hasher.info(want["path"])
            except (BadPath, OSError):
                continue
            if info.kind != "missing" and info.hash != want.get("hash"):
                reasons.append(f"output {want['path']} is not the one {FILE} records")
        out[sid] = reasons
    return out


def _input_differs(hasher: Hasher, stage: Any, path: str, want: dict[str, Any]) -> str | None:
    """How a source input differs from its locked form, or None."""
    globbed = is_glob(path)
    base = glob_base(path) if globbed else path
    try:
        info = hasher.info(base)
    except (BadPath, OSError):
        return "cannot be read"
    if info.kind == "missing":
        return "is missing"
    if "items_digest" in want:
        if info.kind == "file":
            parent = os.path.dirname(base) or "."
            refs = select(parent, [[os.path.basename(base), info.hash]], None)
        else:
            pattern = stage.foreach.pattern if stage.foreach is not None else None
            refs = select(base, info.entries or [], pattern, path if globbed else None)
        found = {r.relpath: r.hash for r in refs}
        if items_digest(found) == want["items_digest"]:
            return None
        count = want.get("items")
        return f"has {len(found)} items (locked: {count})" if count != len(found) else "changed"
    if "hash" in want and info.hash != want["hash"]:
        return "changed"
    return None

"""What a task wrote: output paths made ready before it runs, then checked, hashed and put
into the store as manifests; the values it returned checked to be the JSON they are
stored as."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from ..fshash import Hasher, NotRegular, check_names
from ..hashing import hash_bytes, tree_hash
from ..rule import RuleError
from ..store import Store
from ..trust import MAX_DEPTH, json_problem, parse_json
from ..walk import LinkView
from ..workspace import manifest_of
from .base import Task

__all__ = ["abs_path", "check_values", "flat_outputs", "hash_outputs", "prepare_outputs"]


def abs_path(root: str, value: Any) -> Any:
    if isinstance(value, list):
        return [abs_path(root, v) for v in value]
    return Path(value if os.path.isabs(value) else os.path.join(root, value))


def prepare_outputs(task: Task, outputs: dict[str, str], all_dirs: bool = False) -> None:
    for name, path in outputs.items():
        full = abs_path(task.root, path)
        if full.is_dir() and not full.is_symlink():
            shutil.rmtree(full)  # a clean slate for a retried attempt
        elif full.exists() or full.is_symlink():
            full.unlink()
        if all_dirs or task.output_kinds.get(name) == "dir":
            full.mkdir(parents=True, exist_ok=True)
        else:
            full.parent.mkdir(parents=True, exist_ok=True)


def hash_outputs(task: Task, outputs: dict[str, str], store: Store) -> dict[str, Any]:
    places = [(str(abs_path(task.root, outputs[n])), str(abs_path(task.root, f)))
              for n, f in task.final.items() if n in outputs]  # fmt: skip
    view = LinkView(places, task.root) if places else None
    try:
        return _hash_outputs(task, outputs, store, Hasher(task.root, view=view))
    finally:
        if view is not None:
            view.close()


def _hash_outputs(
    task: Task, outputs: dict[str, str], store: Store, hasher: Hasher
) -> dict[str, Any]:
    manifests = {}
    for name, path in outputs.items():
        try:
            info = hasher.info(path)
        except NotRegular as exc:
            raise RuleError(_not_regular(task, name, path, exc)) from None
        if info.kind == "missing":
            raise RuleError(
                f"declared output {name!r} was not created (expected at {path}); write it "
                f"to {{outputs.{name}}} (a staging path), never to the output path itself"
            )
        want = task.output_kinds.get(name)
        if want in ("file", "dir") and info.kind != want:
            raise RuleError(f"output {name!r} should be a {want}, but a {info.kind} was written")
        if info.kind == "file":
            store.put_file(hasher.source(path), info.hash)
        else:
            for rel, h, _size, _mode in info.entries or []:
                store.put_file(hasher.source(f"{path}/{rel}"), h)
        manifests[name] = manifest_of(info)
    return manifests


def _not_regular(task: Task, name: str, path: str, exc: NotRegular) -> str:
    """Output ``name`` (staged at ``path``) holds a FIFO, socket or device: named at its
    output path, with what to write instead."""
    final = task.final.get(name, path)
    rel = os.path.relpath(exc.path, str(abs_path(task.root, path)))
    where = f"output {name!r} ({final})" if rel == "." else f"output {name!r} ({final}/{rel})"
    return (
        f"{where} is {exc.kind}, which pipemake cannot store: an output must be a regular file "
        "or a folder of them; write the data into a file there (a FIFO's reader, for one, "
        "belongs inside the command)"
    )


def check_values(values: Any) -> dict[str, Any]:
    """The values a rule returned, as the JSON they are stored as (a tuple comes back a
    list): what this build passes on is exactly what a later build restores."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise RuleError(f"the rule returned {type(values).__name__}, not a mapping of values")
    try:
        text = json.dumps(values)
    except (TypeError, ValueError, RecursionError) as exc:
        raise RuleError(f"computed values must be JSON-serializable: {exc}") from None
    where = _non_string_key(values, "values")
    if where is not None:
        raise RuleError(
            f"computed values must be JSON data, whose mapping keys are strings: {where}; "
            "turn the keys into strings (str(key)) before returning them"
        )
    stored, problem = parse_json(text)
    problem = problem or json_problem(stored, MAX_DEPTH - 2)
    if problem is not None:  # what a later build would read back as a damaged entry
        raise RuleError(f"computed values must be plain JSON data: {problem}")
    return stored  # type: ignore[no-any-return]


def _non_string_key(value: Any, where: str) -> str | None:
    """Where the first mapping key that is not a string is (JSON would turn ``1`` into
    ``"1"``, and ``{1: …, "b": …}`` cannot even be stored with its keys sorted)."""
    stack = [(value, where)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    return f"{where} has the key {key!r} ({type(key).__name__})"
            stack.extend((sub, f"{where}[{key!r}]") for key, sub in reversed(value.items()))
        elif isinstance(value, list | tuple):
            stack.extend((sub, f"{where}[{n}]") for n, sub in reversed(list(enumerate(value))))
    return None


#: files up to this size are read whole, hashed and stored from that one read
_READ_WHOLE = 1 << 20


def flat_outputs(work: dict[str, str], store: Store) -> dict[str, Any] | None:
    """The manifests of work directories that hold plain files only (no subdirectory, link
    or other kind of file), each file read once: hashed, and stored from those bytes. None
    when any directory holds anything else or a big file (the general way, through the
    hasher, then applies: it walks, follows links, and streams big files). The manifest is
    the one :meth:`pipemake.fshash.Hasher.tree_info` gives for the same directory."""
    manifests: dict[str, Any] = {}
    for name, path in work.items():
        try:
            with os.scandir(path) as it:
                names = []
                for de in it:
                    if not de.is_file(follow_symlinks=False):
                        return None
                    names.append(de.name)
        except OSError:  # missing, or not a directory: the general way says what is wrong
            return None
        names.sort()
        check_names(names, f"{{outputs.{name}}}")
        entries = []
        for fname in names:
            full = f"{path}/{fname}"
            got = _read_whole(full)
            if got is None:
                return None
            data, st = got
            h = hash_bytes(data)
            mode = 0o755 if st.st_mode & 0o111 else 0o644
            linked = store.put_read(full, h, data, st)
            if not linked and st.st_nlink == 1 and stat.S_IMODE(st.st_mode) != mode:
                os.chmod(
                    full, mode
                )  # lands with the mode the manifest says (a link is the object's)
            entries.append([fname, h, len(data), mode])
        manifests[name] = {"kind": "dir", "hash": tree_hash(entries), "entries": entries}
    return manifests


def _read_whole(path: str) -> tuple[bytes, os.stat_result] | None:
    """A small regular file's bytes and the stat of the open file; None for anything else
    (a big file, a file replaced by another kind since it was listed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _READ_WHOLE:
            return None
        data = os.read(fd, st.st_size + 1)
        if len(data) == st.st_size + 1:
            return None  # it grew while read: stream it the general way
        while len(data) < st.st_size:  # a short read before the end (rare): read on
            more = os.read(fd, st.st_size + 1 - len(data))
            if not more:
                break
            data += more
        return data, st
    finally:
        os.close(fd)

"""What a worker started early imports while the build is still loading: the modules its
first task will import, named by the pipeline's rules.

A task's own imports (PyAV for ``frame_extraction``: tens of milliseconds) come after the
build has loaded the pipeline and decided, when the task reaches the worker. The worker
started early (:func:`pipemake.executors.local.start_early`) is idle before that, so it
reads the pipeline file itself, looks up the rules of its stages among the installed
rules (entry points only: never the project's own code) and imports what each declares in
:attr:`pipemake.rule.Rule.preload`. It is a guess made in a background thread: whatever it
cannot read, parse or import is skipped silently (the build reports problems with the
file itself), and the task, when it comes, imports what it needs as it always does (a
module half-imported by this thread is finished once, by whichever gets there first).
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Any

__all__ = ["modules_for", "start"]

#: a pipeline file larger than this is not read ahead (the build reads it, bounded)
MAX_BYTES = 1 << 20
#: the file the build uses when the default ``pipemake.yaml`` is not there
FALLBACK = "pipeline.yaml"


def _stage_types(file: Path) -> list[str]:
    """The ``type`` of each stage in the pipeline file, in order, once each."""
    import yaml

    if not file.is_file() and file.name == "pipemake.yaml":
        file = file.with_name(FALLBACK)
    with open(file, "rb") as fh:
        text = fh.read(MAX_BYTES + 1)
    if len(text) > MAX_BYTES:
        return []
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    doc = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    stages = doc.get("stages") if isinstance(doc, dict) else None
    types: list[str] = []
    for stage in stages if isinstance(stages, list) else []:
        kind = stage.get("type") if isinstance(stage, dict) else None
        if isinstance(kind, str) and kind not in types:
            types.append(kind)
    return types


def modules_for(file: Path) -> list[str]:
    """The modules the installed rules of ``file``'s stages ask to have imported ahead
    (their ``preload``), in order, once each; empty where the file cannot be read."""
    try:
        types = _stage_types(file)
    except Exception:  # noqa: BLE001 - a guess: the build reports a broken file
        return []
    out: list[str] = []
    installed: dict[str, str] | None = None
    for kind in types:
        rules = _built_in(kind)
        if rules is None:  # another distribution's: read the entry points (slower)
            if installed is None:
                from ..rule import _scan

                installed = _scan()[1]  # not the registry global: the build's comes later
            rules = _registered(installed.get(kind))
        for rule in rules:
            names = getattr(rule, "preload", ())
            for name in names if isinstance(names, tuple | list) else ():
                if isinstance(name, str) and name not in out:
                    out.append(name)
    return out


def _built_in(kind: str) -> list[Any] | None:
    """The rule classes of pipemake's own rule module named ``kind`` (the name its entry
    point has), found without reading every distribution's metadata; None if it has none."""
    from importlib.util import find_spec

    from ..rule import Rule

    if not kind.isidentifier() or kind.startswith("_"):
        return None
    name = f"pipemake.rules.{kind}"
    try:
        if find_spec(name) is None:
            return None
        module = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - the task reports a rule that cannot load
        return None
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Rule) and obj.__module__ == name
    ]


def _registered(value: str | None) -> list[Any]:
    from ..rule import _load

    if value is None:
        return []
    try:
        return [_load(value)]
    except Exception:  # noqa: BLE001 - the task reports a rule that cannot load
        return []


def _warm(file: Path) -> None:
    try:
        for name in modules_for(file):
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the task imports it again and reports it
                continue
    except BaseException:  # noqa: BLE001 - a guess, never a message of its own
        return


def start(file: str) -> threading.Thread:
    """Import the modules of :func:`modules_for` in a daemon thread of this process."""
    thread = threading.Thread(
        target=_warm, args=(Path(file),), name="pipemake preload", daemon=True
    )
    thread.start()
    return thread

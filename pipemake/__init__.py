"""pipemake: a Make-style incremental build tool for datasets.

Every stage of a pipeline is a build target whose inputs, params and code are
content-hashed; a build reruns only what changed, restores what the store already holds,
and stops early when a rerun reproduces the same bytes.

The public API is what ``__all__`` names: load a project, then build, plan or inspect it;
``register_rule`` adds a stage type from a script or notebook. Rules are written against
:mod:`pipemake.rule`.
"""

from __future__ import annotations

import sys

# not ``typing``'s (an import of 2 ms): the console script imports this package before
# ``pipemake.entry`` installs its Ctrl-C handler, so what runs here is that window
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .api import (
        BuildReport,
        Project,
        build,
        cache_gc,
        cache_info,
        cache_verify,
        clean,
        commit,
        dry_run,
        graph,
        list_runs,
        list_stages,
        open_project,
        run_status,
        show_log,
        status,
        validate,
    )
    from .decide import Decision, Reason, Trigger, Verdict
    from .errors import (
        BuildFailed,
        Interrupted,
        LockTimeout,
        PipelineError,
        PipemakeError,
        StoreError,
        UsageError,
    )
    from .events import Bus, Event
    from .rule import Context, Input, Item, Output, Param, Rule, RuleError, register_rule

# Imported on first use, so that a command answered early (``--help``, a no-op build from
# its snapshot) does not load the whole engine.
_HOME = {
    **dict.fromkeys(
        ["BuildReport", "Project", "build", "cache_gc", "cache_info", "cache_verify", "clean",
         "commit", "dry_run", "graph", "list_runs", "list_stages", "open_project", "run_status",
         "show_log", "status", "validate"],
        "api",
    ),
    **dict.fromkeys(["Decision", "Reason", "Trigger", "Verdict"], "decide"),
    **dict.fromkeys(
        ["BuildFailed", "Interrupted", "LockTimeout", "PipelineError", "PipemakeError",
         "StoreError", "UsageError"],
        "errors",
    ),
    **dict.fromkeys(["Bus", "Event"], "events"),
    **dict.fromkeys(
        ["Context", "Input", "Item", "Output", "Param", "Rule", "RuleError", "register_rule"],
        "rule",
    ),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'pipemake' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "BuildFailed",
    "BuildReport",
    "Bus",
    "Context",
    "Decision",
    "Event",
    "Input",
    "Interrupted",
    "Item",
    "LockTimeout",
    "Output",
    "Param",
    "PipelineError",
    "PipemakeError",
    "Project",
    "Reason",
    "Rule",
    "RuleError",
    "StoreError",
    "Trigger",
    "UsageError",
    "Verdict",
    "build",
    "cache_gc",
    "cache_info",
    "cache_verify",
    "clean",
    "commit",
    "dry_run",
    "graph",
    "list_runs",
    "list_stages",
    "open_project",
    "register_rule",
    "run_status",
    "show_log",
    "status",
    "validate",
]


class _OriginalNames:
    """The original pipeline system's module names (``scripts.scenarios.
    data_pipeline_automation`` and below), answered by the ``custom`` rule's own finder
    when no real module has them, so an executor module written with the original import
    lines imports in a plain script after ``import pipemake``, as it does inside a
    ``custom`` stage. Last on ``sys.meta_path``: a project's own ``scripts`` package wins.
    Nothing is imported until such a name is asked for."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "scripts" and not fullname.startswith("scripts."):
            return None
        from .rule import get_rule

        finder = getattr(get_rule("custom"), "import_aliases", None)
        return finder.find_spec(fullname, path, target) if finder is not None else None


if not any(type(f).__name__ == "_OriginalNames" for f in sys.meta_path):
    sys.meta_path.append(_OriginalNames())

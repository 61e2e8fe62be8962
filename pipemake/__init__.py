"""pipemake: a Make-style incremental build tool for datasets.

Every stage of a pipeline is a build target whose inputs, params and code are
content-hashed; a build reruns only what changed, restores what the store already holds,
and stops early when a rerun reproduces the same bytes.

The public API is what ``__all__`` names: load a project, then build, plan or inspect it.
Rules are written against :mod:`pipemake.rule`.
"""

from .api import (
    BuildReport,
    Project,
    build,
    cache_gc,
    cache_info,
    cache_verify,
    clean,
    dry_run,
    graph,
    list_runs,
    list_stages,
    open_project,
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
from .rule import Context, Input, Item, Output, Param, Rule, RuleError

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
    "dry_run",
    "graph",
    "list_runs",
    "list_stages",
    "open_project",
    "show_log",
    "status",
    "validate",
]

"""The original pipeline system's executor API, so an executor class written for it runs as
a ``custom`` stage unchanged: ``StageExecutor`` (the base class with its helpers),
``StageResult``, ``ExecutionStatus`` and the enums of its ``common`` module.

Its import lines work as written: while a ``custom`` stage loads its executor module, the
original module names (``scripts.scenarios.data_pipeline_automation``, its
``stage_executors`` and ``common``) resolve to this module, unless a module of that name
exists in the project, which then wins. After ``import pipemake`` they resolve in any
script too (pipemake asks the ``custom`` rule's finder, :data:`ALIASES`). New code may
import from here directly::

    from pipemake.rules.original import StageExecutor, StageResult, ExecutionStatus
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import shlex
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = [
    "ALIASES",
    "ExecutionStatus",
    "PipelineState",
    "StageExecutor",
    "StageResult",
    "StageType",
    "install_aliases",
]

#: the original package and the modules of it an executor imports
ORIGINAL = "scripts.scenarios.data_pipeline_automation"
_ALIASES = {
    ORIGINAL,
    f"{ORIGINAL}.common",
    f"{ORIGINAL}.stage_executors",
    f"{ORIGINAL}.stage_executors.base_executor",
}
_PARENTS = {"scripts", "scripts.scenarios"}


class ExecutionStatus(str, Enum):
    """How a stage's execution ended (the original's ``ExecutionStatus``)."""

    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"
    RUNNING = "running"


class PipelineState(str, Enum):
    """A pipeline's state (the original's ``PipelineState``)."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"


class StageType(str, Enum):
    """The original's stage types; each is a pipemake rule of that name."""

    FRAME_EXTRACTION = "frame_extraction"
    SEGMENTATION = "segmentation"
    CLUSTERING = "clustering"
    TRAINING_DATA_PREP = "training_data_prep"
    CUSTOM = "custom"


@dataclass
class StageResult:
    """What ``execute`` returns: its status, how long it took, its outputs (the stage's
    computed values), metrics and, on failure, the error message."""

    stage_id: str
    status: ExecutionStatus
    duration: float = 0.0
    outputs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error_message: str | None = None

    @property
    def success(self) -> bool:
        return self.status is ExecutionStatus.SUCCESS


class StageExecutor:
    """The original base class: constructed with ``(stage_id, config)``; subclasses
    implement ``validate_config()`` and ``execute(inputs)``, optionally
    ``estimate_duration()``, and use the helpers below."""

    def __init__(self, stage_id: str, config: dict[str, Any]):
        self.stage_id = stage_id
        self.config = dict(config or {})
        self.start_time: float | None = None
        self.end_time: float | None = None

    def validate_config(self) -> bool:
        """Check the config; raise (or return False) when it is wrong."""
        return True

    def execute(self, inputs: dict[str, Any]) -> StageResult:
        """Do the stage's work; ``inputs`` maps each upstream stage to its outputs."""
        raise NotImplementedError(f"{type(self).__name__} does not implement execute()")

    def estimate_duration(self) -> float:
        """Seconds the stage is expected to take."""
        return 60.0

    def cleanup(self) -> None:
        """Release what ``execute`` held (called after it, whatever happened)."""

    # helpers --------------------------------------------------------------------------
    def _get_config_value(self, key: str, default: Any = None, required: bool = False) -> Any:
        """A config value; a missing required one raises ``ValueError`` naming it."""
        if key in self.config and self.config[key] is not None:
            return self.config[key]
        if required:
            raise ValueError(f"stage {self.stage_id!r}: missing required config key {key!r}")
        return default

    def _mark_started(self) -> None:
        self.start_time = time.time()

    def _mark_completed(self) -> None:
        self.end_time = time.time()

    def _create_success_result(
        self, outputs: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None
    ) -> StageResult:
        return StageResult(
            self.stage_id, ExecutionStatus.SUCCESS, self._elapsed(), dict(outputs or {}),
            dict(metrics or {}),
        )  # fmt: skip

    def _create_failure_result(
        self, error_message: str, metrics: dict[str, Any] | None = None
    ) -> StageResult:
        return StageResult(
            self.stage_id, ExecutionStatus.FAILED, self._elapsed(), {}, dict(metrics or {}),
            str(error_message),
        )  # fmt: skip

    def _elapsed(self) -> float:
        if self.start_time is None:
            return 0.0
        return (self.end_time or time.time()) - self.start_time

    def _run_command(
        self, cmd: list[str] | str, cwd: str | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command (a list, or a string split as a shell would) without a shell;
        a non-zero exit raises ``RuntimeError`` with its output."""
        argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        proc = subprocess.run(argv, cwd=cwd, timeout=timeout, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{argv[0]} exited {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}"
            )
        return proc

    _run_subprocess = _run_command


class _Aliases(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers for the original module names, last: a real module of that name wins."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname in _ALIASES or fullname in _PARENTS:
            is_pkg = fullname != f"{ORIGINAL}.common" and not fullname.endswith("base_executor")
            return importlib.machinery.ModuleSpec(fullname, self, is_package=is_pkg)
        return None

    def create_module(self, spec: Any) -> types.ModuleType | None:
        if spec.name in _ALIASES:
            return sys.modules[__name__]
        return None  # the parents: empty packages

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ in _PARENTS:
            module.__path__ = []


#: the finder of the original module names: the ``custom`` rule's, asked by ``pipemake``
ALIASES = _FINDER = _Aliases()


def install_aliases() -> None:
    """Let the original import lines resolve to this module (see the module's docstring)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.append(_FINDER)

"""The inline executor: runs each task in this process, one at a time. The test double, and
handy under a debugger."""

from __future__ import annotations

from .base import Executor, Message, Task
from .worker import execute

__all__ = ["InlineExecutor"]


class InlineExecutor(Executor):
    """Runs tasks synchronously at ``submit``; ``poll`` hands back what they reported."""

    name = "inline"

    def __init__(self, jobs: int = 1):
        super().__init__(1)
        self._pending: list[Message] = []

    def submit(self, task: Task) -> None:
        execute(task, lambda kind, data: self._pending.append(Message(task.id, kind, data)))

    def poll(self, timeout: float | None) -> list[Message]:
        out, self._pending = self._pending, []
        return out

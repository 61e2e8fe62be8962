"""One build at a time per workspace.

The lock is an ``flock`` on ``.pipemake/lock``: the kernel releases it when its holder
dies, so a lock left by a dead process is simply taken over. Who holds it (pid, host,
command, since when) is written into the file so a waiting build can say so.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import LockTimeout

__all__ = ["BuildLock"]


class BuildLock:
    """Exclusive lock for building in one workspace; waits (up to ``timeout``) for a holder."""

    def __init__(
        self, path: Path, timeout: float | None = None, on_wait: Callable[[str], None] | None = None
    ):
        self.path = path
        self.timeout = timeout
        self.on_wait = on_wait
        self._fd: int | None = None

    def holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        start = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and self.on_wait is not None:
                    self.on_wait(self._describe())
                    told = True
                if self.timeout is not None and time.monotonic() - start >= self.timeout:
                    os.close(fd)
                    raise LockTimeout(
                        f"gave up after {self.timeout:g} s waiting for the build lock held by "
                        f"{self._describe()}"
                    ) from None
                time.sleep(0.1)
        info = {
            "pid": os.getpid(),
            "host": os.uname().nodename,
            "since": time.time(),
            "command": " ".join(
                os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)
            ),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def _describe(self) -> str:
        h = self.holder()
        if not h:
            return "another pipemake process"
        since = time.strftime("%H:%M:%S", time.localtime(h.get("since", 0)))
        return (
            f"pid {h.get('pid')} on {h.get('host')} ({h.get('command', 'pipemake')}, since {since})"
        )

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> BuildLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

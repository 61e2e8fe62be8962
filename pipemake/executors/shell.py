"""The task's persistent shell: one ``/bin/sh`` that runs a task's commands (``ctx.sh``)
one after another, so a foreach task starts one shell, not one per item."""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

__all__ = ["Shell", "Starter"]


class Starter(Protocol):
    """What the shell needs of the spawner that starts it (a
    :class:`~pipemake.executors.spawn.Spawner`): the task's environment, and a way to start
    a process that counts what it used."""

    env: dict[str, str] | None

    def start(
        self, args: Sequence[str], env: Mapping[Any, Any] | None, kwargs: dict[str, Any]
    ) -> subprocess.Popen[Any]:
        """Start ``args`` with ``env`` and Popen's ``kwargs``."""
        ...


class Shell:
    """One ``/bin/sh`` that runs a task's commands one after another, so that a foreach task
    starts one shell, not one per item.

    The shell reads its script from a pipe. Each command is one line: ``(export ...; eval
    CMD) </dev/null >FIFO 2>&1`` (a subshell: nothing it sets reaches the next command),
    then a ``printf`` of a token no output holds by chance and the exit status, on the
    shell's own stdout. The command's output goes to a FIFO the build reads to its end, as
    it read a ``sh -c``'s pipe: a background job that keeps it open holds the command until
    it is done, so it cannot write into the next command's outputs. The build holds a write
    end of the FIFO while a command runs (else its end would come before the command opens
    it) and lets go once the status came."""

    def __init__(self, spawner: Starter, kwargs: dict[str, Any], tmp: str | None = None):
        self._dir = tempfile.mkdtemp(prefix="pipemake-sh-", dir=tmp)
        fifo = os.path.join(self._dir, "out")
        fds: list[int] = []
        try:
            os.mkfifo(fifo, 0o600)
            self._fifo = fifo
            self._out = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            fds.append(self._out)
            self._hold = self._holding()
            fds.append(self._hold)
            os.set_blocking(self._out, True)
            script_r, self._script = os.pipe()
            fds += [script_r, self._script]
            self._status, status_w = os.pipe()
            fds += [self._status, status_w]
            kwargs.update(stdin=script_r, stdout=status_w, stderr=status_w, close_fds=False)
            self.proc = spawner.start(["/bin/sh", "-s"], spawner.env, kwargs)
        except BaseException:
            for fd in fds:
                os.close(fd)
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        os.close(script_r)
        os.close(status_w)
        self._token = f"@@pipemake-{secrets.token_hex(8)}@@ ".encode()
        self._tail = (
            f" </dev/null >{shlex.quote(fifo)} 2>&1; printf '%s%d\\n' '{self._token.decode()}' $?\n"
        )
        self._poll = select.poll()
        self._poll.register(self._out, select.POLLIN)
        self._poll.register(self._status, select.POLLIN)
        self.busy = False
        self.ended = False

    def _holding(self) -> int:
        return os.open(self._fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def run(self, cmd: str, export: str, output: Callable[[str], None] | None) -> int | None:
        """Run ``cmd`` and return its exit status; None when the shell was found gone before
        it could start the command (it did not run)."""
        line = f"({export}eval {shlex.quote(cmd)}){self._tail}".encode()
        if self.proc.poll() is not None:  # it ended while idle (killed by someone)
            self.end()
            return None
        self.busy = True
        try:
            try:
                while line:
                    line = line[os.write(self._script, line) :]
            except BrokenPipeError:  # the shell ended while idle: the command never started
                self.end()
                return None
            lines = _Lines(output)
            status = b""
            token = self._token
            code: int | None = None
            while code is None:
                for fd, _ in self._poll.poll():
                    if fd == self._out:
                        lines.feed(os.read(fd, 1 << 16))
                        continue
                    chunk = os.read(fd, 4096)
                    if not chunk:  # the shell itself ended (killed, or a stop)
                        code = self._gone()
                        break
                    status += chunk
                    i = status.find(token)
                    j = status.find(b"\n", i) if i >= 0 else -1
                    if j >= 0:
                        lines.message(status[:i])  # the shell's own ("Killed")
                        code = int(status[i + len(token) : j])
                        break
            if self._hold >= 0:
                os.close(self._hold)  # what still holds the FIFO is the command's: wait
                self._hold = -1
            while chunk := os.read(self._out, 1 << 16):
                lines.feed(chunk)
            lines.finish()
            self.busy = False
            if self.proc.returncode is not None:
                self.end()  # it is gone: the next command gets a new one
            else:
                self._hold = self._holding()
            return code
        except BaseException:
            self.end()  # its output and status unread: no later command may take them
            raise

    def _gone(self) -> int:
        """The shell ended before the command's status came: its own exit status."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # what it left, where it leads a group
        except OSError:
            pass
        code = self.proc.wait()
        return code if code else 1

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self.busy and self.proc.returncode is None:  # given up in the middle of a command
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its group, where it leads one
            except OSError:
                with contextlib.suppress(OSError):
                    os.kill(self.proc.pid, signal.SIGKILL)
        for fd in (self._script, self._out, self._status, self._hold):  # no more script: it exits
            if fd >= 0:
                os.close(fd)
        self._hold = -1
        self.proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


class _Lines:
    """Splits a command's output into lines as it comes, the way a text-mode pipe reads
    them: ``\n``, ``\r\n`` and ``\r`` end a line; the last line may have no end."""

    def __init__(self, output: Callable[[str], None] | None):
        self.output = output
        self.buf = bytearray()

    def feed(self, chunk: bytes) -> None:
        if self.output is None:
            return
        buf = self.buf
        start = max(len(buf) - 1, 0)  # only the new bytes (and a held-back \r) can end lines
        buf += chunk
        end = len(buf) - 1 if buf.endswith(b"\r") else len(buf)  # maybe half of a \r\n
        k = max(buf.rfind(b"\n", start, end), buf.rfind(b"\r", start, end))
        if k >= 0:
            self._emit(bytes(buf[: k + 1]))
            del buf[: k + 1]

    def finish(self) -> None:
        if self.buf:
            self._emit(bytes(self.buf) + b"\n")
            self.buf.clear()

    def message(self, data: bytes) -> None:
        if data:
            self._emit(data if data.endswith(b"\n") else data + b"\n")

    def _emit(self, data: bytes) -> None:
        if self.output is None:
            return
        text = data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        lines.pop()  # after the last line's end
        for line in lines:
            self.output(line)

"""The guardian: a small process that ends the commands of a build's threaded tasks when
the build process goes away, even by ``kill -9``.

The build (:class:`Guardian`) writes ``+PGID`` / ``-PGID`` lines to the guardian's stdin as
commands start and end; at end of input (the build exited or died) the guardian ends the
process groups still listed: SIGTERM, then SIGKILL after five seconds. It reads every tenth
of a second, never waiting on the pipe, so a write wakes nobody up (a wake-up per command
cost more than the rest of starting it).

The guardian runs this file by its path (``python -I -S guardian.py``): a bare interpreter
that imports nothing of pipemake, nor of the project or site-packages.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time

__all__ = ["Guardian", "main"]

#: what the guardian process runs
_PROGRAM = os.path.abspath(__file__)


def main() -> None:
    """The guardian process: collect the process groups listed on stdin until its end, then
    end those still listed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.set_blocking(0, False)
    groups: set[int] = set()
    buf, data = b"", b"-"
    while data:
        time.sleep(0.1)
        while True:
            try:
                data = os.read(0, 1 << 20)
            except BlockingIOError:
                break
            if not data:
                break
            buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line[:1] == b"+":
                groups.add(int(line[1:]))
            elif line[:1] == b"-":
                groups.discard(int(line[1:]))
    groups = _send(signal.SIGTERM, groups)
    deadline = time.monotonic() + 5
    while groups and time.monotonic() < deadline:
        time.sleep(0.05)
        groups = _send(0, groups)
    _send(signal.SIGKILL, groups)


def _send(sig: int, groups: set[int]) -> set[int]:
    """Signal each group; the groups still there."""
    left = set()
    for g in groups:
        try:
            os.killpg(g, sig)
            left.add(g)
        except OSError:
            pass
    return left


class Guardian:
    """A small process that ends the listed process groups when this process goes away."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self._fd = -1
        _exiting[:] = [p for p in _exiting if p.poll() is None]
        if not sys.executable:
            return
        r, w = os.pipe()
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)  # room for what it has not read yet
        except OSError:
            pass
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", _PROGRAM], stdin=r,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            self._fd = w
        except OSError:
            os.close(w)
        finally:
            os.close(r)

    def _send(self, line: str) -> None:
        with self._lock:
            if self._fd < 0:
                return
            try:
                os.write(self._fd, line.encode())
            except OSError:  # it died: nothing to tell
                os.close(self._fd)
                self._fd = -1

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def update(self, ended: list[int], started: int) -> None:
        """Forget the groups ``ended`` and watch ``started``, in one write."""
        self._send("".join(f"-{g}\n" for g in ended) + f"+{started}\n")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def close(self) -> None:
        """End of input: the guardian ends what is still listed and exits on its own (it is
        reaped later, never waited for)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        if self.proc is not None and self.proc.poll() is None:
            _exiting.append(self.proc)


#: guardians told to exit, not yet reaped
_exiting: list[subprocess.Popen[bytes]] = []


if __name__ == "__main__":
    main()

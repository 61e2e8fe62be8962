"""Shared fixtures for the engine and CLI tests.

``project(yaml, files)`` makes a fresh project folder from a pipeline text; the returned
:class:`Proj` runs the CLI in-process (``cli``, through click's ``CliRunner``) or as a real
subprocess (``sub``/``popen``, for crashes, locks and signals), and counts how often each
stage's command ran: stages append a line to ``runs/<stage>.count`` (outside every declared
output), see :func:`counted`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from pipemake.cli import cli as _cli

TRACEBACK = "Traceback (most recent call last)"


def counted(stage: str, cmd: str) -> str:
    """A shell ``cmd`` that first notes one run of ``stage`` in ``runs/<stage>.count``."""
    return f"echo x >> runs/{stage}.count; {cmd}"


def shell_foreach(cmd: str, extra: str = "", env: str = "") -> str:
    """A pipeline of one ``shell`` stage ``each`` running ``cmd`` for each file of ``data``
    into ``build/each`` (``extra``: stage keys, indented; ``env``: its ``env:`` mapping)."""
    quoted = "'" + cmd.replace("'", "''") + "'"
    return f"""
    name: t
    stages:
      - id: each
        type: shell
        foreach: src
{extra}        config:
          cmd: {quoted}
          inputs: {{src: data}}
          outputs: {{o: build/each}}
""" + (f"          env: {env}\n" if env else "")


class Proj:
    """A project folder with helpers to edit it, build it and count stage runs."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: list[subprocess.Popen[str]] = []

    # files ------------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        return self.root / rel

    def write(self, rel: str, text: str | bytes) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)
        return p

    def read(self, rel: str) -> str:
        return (self.root / rel).read_text()

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def pipeline(self, text: str) -> None:
        """Replace ``pipemake.yaml``."""
        self.write("pipemake.yaml", textwrap.dedent(text).lstrip())

    def edit(self, rel: str, old: str, new: str) -> None:
        text = self.read(rel)
        assert old in text, f"{old!r} not in {rel}"
        self.write(rel, text.replace(old, new))

    # run counters -----------------------------------------------------------------------
    def runs(self, stage: str) -> int:
        """How many times ``stage``'s command has run (see :func:`counted`)."""
        p = self.root / "runs" / f"{stage}.count"
        return len(p.read_text().splitlines()) if p.exists() else 0

    def run_counts(self) -> dict[str, int]:
        d = self.root / "runs"
        return {p.stem: self.runs(p.stem) for p in sorted(d.glob("*.count"))}

    # running pipemake -------------------------------------------------------------------
    def cli(self, *args: str, code: int | None = 0, env: dict[str, str] | None = None) -> Result:
        """``pipemake -C ROOT ARGS`` in-process; checks the exit code unless ``code=None``."""
        result = CliRunner().invoke(_cli, ["-C", str(self.root), *args], env=env)
        if code is not None:
            assert result.exit_code == code, _explain(args, result.exit_code, result.output)
        return result

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "pipemake", "-C", str(self.root), *args]

    def sub(
        self,
        *args: str,
        code: int | None = 0,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """``python -m pipemake -C ROOT ARGS`` as a real process."""
        proc = subprocess.run(
            self.argv(*args), capture_output=True, text=True, env=_env(env), timeout=timeout
        )
        if code is not None:
            assert proc.returncode == code, _explain(
                args, proc.returncode, proc.stdout + proc.stderr
            )
        return proc

    def popen(
        self, *args: str, log: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start ``python -m pipemake -C ROOT ARGS`` in the background. Without ``log``,
        stdout and stderr are two pipes (read them with ``communicate()``); with it, both go
        to that file, so a test can read them while the process runs."""
        if log is None:
            proc = subprocess.Popen(
                self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=_env(env),
            )  # fmt: skip
        else:
            with open(log, "w") as out:
                proc = subprocess.Popen(
                    self.argv(*args), stdout=out, stderr=subprocess.STDOUT, text=True,
                    env=_env(env),
                )  # fmt: skip
        self.procs.append(proc)
        return proc


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PIPEMAKE_CACHE_DIR"}
    env.update(extra or {})
    return env


def _explain(args: tuple[str, ...], got: int, output: str) -> str:
    return f"pipemake {' '.join(args)} exited {got}; output:\n{output}"


def refused_before_running(proj: Proj, line: int, stage: str, words: list[str]) -> None:
    """``validate`` and ``build`` both exit 2 naming ``pipemake.yaml:LINE`` and ``stage``
    with ``words``, no traceback, and nothing was built."""
    for command in (["validate"], ["build", "--no-progress"]):
        out = proj.cli(*command, code=2).output
        assert f"pipemake.yaml:{line}: stage {stage!r}: " in out, out
        for word in words:
            assert word in out, (word, out)
        assert TRACEBACK not in out and "FAILED" not in out
    assert not proj.exists("build")


def wait_for(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``cond`` until it holds (never asserts a duration, only gives up eventually)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def _no_cache_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIPEMAKE_CACHE_DIR", raising=False)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Callable[..., Proj]]:
    """A factory: ``project(yaml_text, {"data/a.txt": "..."}, name="ws")`` → :class:`Proj`.
    Background builds a test leaves running are killed at teardown."""
    made: dict[str, Proj] = {}

    def make(yaml_text: str, files: dict[str, str | bytes] | None = None, name: str = "ws") -> Proj:
        assert name not in made, f"project {name!r} made twice"
        proj = made[name] = Proj(tmp_path / name)
        (proj.root / "runs").mkdir(parents=True)
        proj.pipeline(yaml_text)
        for rel, text in (files or {}).items():
            proj.write(rel, text)
        return proj

    yield make
    for proj in made.values():
        for proc in proj.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


CHAIN = r"""
name: chain
version: 1
vars: {src: data/a.txt}
stages:
  - id: upper
    type: shell
    config:
      cmd: "echo x >> runs/upper.count; tr a-z A-Z < {inputs.src} > {outputs.out}"
      inputs: {src: "{vars.src}"}
      outputs: {out: build/upper.txt}
  - id: lines
    type: shell
    config:
      cmd: "echo x >> runs/lines.count; wc -l < {inputs.src} | tr -d ' ' > {outputs.out}"
      inputs: {src: "{upper.out}"}
      outputs: {out: build/lines.txt}
  - id: side
    type: shell
    config:
      cmd: "echo x >> runs/side.count; cat {inputs.src} > {outputs.out}; echo \"$SEP\" >> {outputs.out}"
      inputs: {src: data/b.txt}
      outputs: {out: build/side.txt}
      env: {SEP: one}
  - id: report
    type: shell
    config:
      cmd: >-
        echo x >> runs/report.count; mkdir -p {outputs.dir}/sub &&
        cp {inputs.n} {outputs.dir}/n.txt && cp {inputs.other} {outputs.dir}/sub/side.txt
      inputs: {n: "{lines.out}", other: "{side.out}"}
      outputs: {dir: build/report}
"""
CHAIN_FILES = {"data/a.txt": "hello\nworld\n", "data/b.txt": "bee\n"}

#: one ``python`` stage that upper-cases a file through the project's own ``work.py`` (a
#: worker process imports the project's module)
UPPER = """
name: t
stages:
  - id: up
    type: python
    config:
      function: "work:up"
      inputs: {src: data/a.txt}
      outputs: {o: build/a.txt}
"""
UPPER_FILES = {
    "data/a.txt": "abc\n",
    "work.py": "def up(ctx):\n    ctx.outputs['o'].write_text(ctx.inputs['src'].read_text().upper())\n",
}
CHAIN_STAGES = ["upper", "lines", "side", "report"]


@pytest.fixture
def chain(project: Callable[..., Proj]) -> Proj:
    """A four-stage pipeline (upper → lines → report ← side), not built yet.

    ``lines`` only counts lines, so an edit of ``data/a.txt`` that keeps the line count is
    cut off there; an edit that keeps the upper-cased text is cut off at ``upper``."""
    return project(CHAIN, CHAIN_FILES)


SLOW = r"""
name: slow
version: 1
stages:
  - id: first
    type: shell
    config:
      cmd: "echo x >> runs/first.count; echo one > {outputs.o}"
      outputs: {o: build/first.txt}
  - id: slow
    type: shell
    config:
      cmd: >-
        echo x >> runs/slow.count; mkdir -p {outputs.d}; echo partial > {outputs.d}/part.txt;
        echo $$ > runs/slow.pid; touch runs/slow.started;
        while [ ! -e go ]; do sleep 0.02; done;
        echo done > {outputs.d}/done.txt; cat {inputs.i} >> {outputs.d}/done.txt
      inputs: {i: "{first.o}"}
      outputs: {d: build/slow}
  - id: last
    type: shell
    config:
      cmd: "echo x >> runs/last.count; cp -r {inputs.i} {outputs.o}"
      inputs: {i: "{slow.d}"}
      outputs: {o: build/last}
"""


@pytest.fixture
def slow(project: Callable[..., Proj]) -> Proj:
    """first → slow → last; ``slow`` notes its shell's pid in ``runs/slow.pid``, touches
    ``runs/slow.started`` and then waits until a file ``go`` exists."""
    return project(SLOW)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.fixture
def plain_user() -> Iterator[tuple[Path, Callable[..., Any]]]:
    """A folder a user without root's powers owns and a runner of ``pipemake`` as that
    user there (as root, nobody's uid: root ignores a folder's missing write bit and
    every other permission a test of read-only outputs is about). Skips where this
    Python cannot run as that user (one under a home folder closed to others)."""
    top = Path(tempfile.mkdtemp(dir="/tmp", prefix="pm-ro-"))
    os.chmod(top, 0o755)
    root = top / "ws"
    root.mkdir()
    uid = 65534 if os.geteuid() == 0 else os.geteuid()

    def drop() -> None:
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)

    try:  # this Python may live where that user cannot reach (a home folder, say)
        subprocess.run([sys.executable, "-c", "pass"], check=True, preexec_fn=drop, timeout=60)
    except (OSError, subprocess.CalledProcessError) as exc:
        shutil.rmtree(top)
        pytest.skip(f"this Python cannot run as a user without root's powers: {exc}")

    def run(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        for p in [root, *root.rglob("*")]:
            if not p.is_symlink() and p.stat().st_uid != uid:
                os.lchown(p, uid, uid)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIPEMAKE_")}
        env["HOME"] = str(top)
        proc = subprocess.run(
            [sys.executable, "-m", "pipemake", "-C", str(root), *args],
            capture_output=True, text=True, env=env, timeout=120, preexec_fn=drop,
        )  # fmt: skip
        assert proc.returncode == code, proc.stdout + proc.stderr
        return proc

    try:
        yield root, run
    finally:
        for p in [top, *top.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                os.chmod(p, 0o755)
        shutil.rmtree(top)

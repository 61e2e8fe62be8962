"""Round 7 of small findings from peer suites (DVC, Snakemake, GNU make): SIGHUP stops a
build as SIGTERM does, status and reason words that say what is true, an output that is not
a file or folder named as an output, TOML params files."""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import pty
import signal
import subprocess
import termios
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import TRACEBACK, Proj, _env, alive, wait_for

from pipemake.decide import LastBuild, Verdict, decide
from pipemake.progress import PlainView, muted


def _started(p: Proj, proc: subprocess.Popen[str]) -> int:
    wait_for(
        lambda: p.exists("runs/slow.started") or proc.poll() is not None,
        what="the slow stage to start",
    )
    assert proc.poll() is None
    return int(p.read("runs/slow.pid"))


# 1. SIGHUP -----------------------------------------------------------------------------


def test_sighup_stops_like_sigterm_with_summary_and_keeps_the_finished_stage(
    slow: Proj, tmp_path: Path
) -> None:
    """One SIGHUP: nothing new starts, the running stage gets its grace and is kept, the
    summary is printed, and pipemake exits 129."""
    log = tmp_path / "log"
    proc = slow.popen("build", "--no-progress", log=log)
    _started(slow, proc)
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "stopping" in log.read_text(), what="pipemake to take the signal")
    slow.write("go", "")
    assert proc.wait(20) == 129, log.read_text()
    out = log.read_text()
    assert TRACEBACK not in out
    assert "stopped by SIGHUP" in out  # the summary
    assert "interrupted by SIGHUP" in out
    assert not slow.exists("build/last")  # not started after the signal
    status = slow.cli("status").stdout
    assert "slow: up to date" in status


def test_sighup_with_the_readers_gone_still_records_the_run_as_interrupted(
    slow: Proj,
) -> None:
    """stdout and stderr are pipes whose reader is gone (EPIPE on every write after the
    HUP): the stop, its cleanup and the record happen all the same; the stage it stopped
    is ``interrupted`` in status, its command is ended, nothing is placed."""
    proc = slow.popen("build", "--no-progress", "--grace", "0")
    shell = _started(slow, proc)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    proc.stderr.close()
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(20) == 129
    wait_for(lambda: not alive(shell), what="the stage's command to end")
    assert not slow.exists("build/slow")
    status = slow.cli("status").stdout
    assert "slow: interrupted" in status
    assert "the last run was interrupted" in status or "last: interrupted" in status


def _on_terminal(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    """``argv`` as the controlling process of a new pseudo-terminal (the rich view drawn on
    it): closing the returned master end hangs the terminal up, as closing a window does."""
    master, slave = pty.openpty()

    def _take_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
        preexec_fn=_take_terminal,
    )  # fmt: skip
    os.close(slave)
    return proc, master


def test_a_closed_terminal_stops_the_build_without_a_traceback(slow: Proj) -> None:
    """The terminal pipemake draws its live view on is closed mid-build: the kernel's
    SIGHUP stops the build (exit 129, not a traceback's 1), its writes to the dead terminal
    raise nothing, the stage's command ends and the run is recorded as interrupted."""
    env = _env({"TERM": "xterm", "COLUMNS": "100", "LINES": "30"})
    proc, master = _on_terminal(slow.argv("build", "--grace", "0"), env)
    try:
        shell = _started(slow, proc)  # type: ignore[arg-type]
    finally:
        os.close(master)  # the window closes
    assert proc.wait(20) == 129
    wait_for(lambda: not alive(shell), what="the stage's command to end")
    assert not slow.exists("build/slow")
    assert "slow: interrupted" in slow.cli("status").stdout


def test_nohup_keeps_the_build_going(slow: Proj, tmp_path: Path) -> None:
    """Under ``nohup`` (SIGHUP ignored) a SIGHUP changes nothing: the build finishes."""
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["nohup", *slow.argv("build", "--no-progress")], stdout=out,
            stderr=subprocess.STDOUT, env=_env(None),
        )  # fmt: skip
    _started(slow, proc)  # type: ignore[arg-type]
    proc.send_signal(signal.SIGHUP)
    slow.write("go", "")
    assert proc.wait(20) == 0, log.read_text()
    assert slow.read("build/last/done.txt") == "done\none\n"


class _Gone(io.StringIO):
    """A stream whose reader is gone: every write fails as a hung-up terminal's does."""

    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code
        self.null = os.open(os.devnull, os.O_WRONLY)
        self.fd = os.dup(self.null)
        self.dead = True

    def write(self, text: str) -> int:
        if self.dead:
            raise OSError(self.code, os.strerror(self.code))
        return len(text)

    def fileno(self) -> int:
        return self.fd


@pytest.mark.parametrize("code", [errno.EIO, errno.EPIPE])
def test_the_plain_view_goes_quiet_when_its_reader_is_gone(code: int) -> None:
    from pipemake.events import Event

    stream = _Gone(code)
    view = PlainView(stream)
    view(Event("log", None, {"level": "info", "text": "hello"}))  # no exception
    stream.dead = False
    view(Event("log", None, {"level": "info", "text": "again"}))
    os.close(stream.fd)
    os.close(stream.null)


def test_muted_raises_other_write_failures() -> None:
    with pytest.raises(OSError, match="No space"):
        muted(io.StringIO(), OSError(errno.ENOSPC, "No space left on device"))


# 2. a failed run whose key the store holds ---------------------------------------------


def _key_doc(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "format": 1, "rule": "shell", "rule_version": "1", "stage_version": None, "code": "c",
        "params": {"cmd": "cp a b"}, "inputs": {"src": ["data/a.txt", "h1"]}, "upstream": {},
        "outputs": {"o": "build/o"},
    }  # fmt: skip
    base.update(over)
    return base


@dataclass
class _Stage:
    doc: dict[str, Any]
    key: str | None = "k1"
    unknown: set[str] = field(default_factory=set)
    foreach: bool = False
    map_reduce: bool = False
    cached: dict[str, Any] = field(default_factory=dict)
    items: list[Any] = field(default_factory=list)


_ENTRY = {"outputs": {"o": {"kind": "file", "hash": "x"}}}


def test_a_failed_first_run_whose_outputs_the_store_holds_is_not_called_never_built() -> None:
    """The command of a stage's first run finished and its entry was stored, but placing
    its outputs failed (an unwritable folder): restored next time, said as what it is —
    the last run failed, the store has the outputs — never "never built" next to "cached
    from an earlier build"."""
    record = {"key": None, "result": "failed", "failed_doc": _key_doc()}
    last = LastBuild(True, None, "failed", record)
    d = decide(_Stage(_key_doc()), _ENTRY, {"build/o": "missing"}, last)
    assert d.verdict is Verdict.RESTORE
    words = [str(r) for r in d.reasons]
    assert words == ["the last run failed", "the store has its outputs for these inputs"]
    changed = _key_doc(inputs={"src": ["data/a.txt", "h2"]})
    d = decide(_Stage(changed), _ENTRY, {"build/o": "missing"}, last)
    assert [str(r) for r in d.reasons] == [
        "input data/a.txt changed since the failed run",
        "the store has its outputs for these inputs",
    ]


def test_an_earlier_finished_build_is_still_said_so() -> None:
    old = _key_doc(params={"cmd": "cp a c"})
    last = LastBuild(True, "k0", "ok", {"key": "k0", "result": "ok", "doc": old})
    d = decide(_Stage(_key_doc()), _ENTRY, {"build/o": "missing"}, last)
    assert [str(r) for r in d.reasons][-1] == "cached from an earlier build"
    assert not any("never built" in str(r) for r in d.reasons)


# 3. a FIFO, socket or device at an output path -----------------------------------------

_FIFO_OUT = r"""
name: fifo
stages:
  - id: o
    type: shell
    config:
      cmd: "mkfifo {outputs.o}"
      outputs: {o: build/pipe}
  - id: sock
    type: shell
    config:
      cmd: "python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' {outputs.s}"
      outputs: {s: build/sock}
"""


def test_a_fifo_or_socket_output_is_named_as_the_output_with_what_to_do(
    project: Callable[..., Proj],
) -> None:
    p = project(_FIFO_OUT, {"data/a.txt": "a"})
    out = p.cli("build", "-k", "--no-progress", code=1).output
    assert TRACEBACK not in out
    assert "output 'o' (build/pipe) is a FIFO, which pipemake cannot store" in out
    assert "output 's' (build/sock) is a socket, which pipemake cannot store" in out
    assert "an output must be a regular file or a folder of them; write the data" in out
    assert "an input must be" not in out
    assert not p.exists("build/pipe") and not p.exists("build/sock")


# 4. an added or removed input named by key and path ------------------------------------

_ONE = r"""
name: added
stages:
  - id: c
    type: shell
    config:
      cmd: "echo x >> runs/c.count; cat {inputs.i} > {outputs.o}"
      inputs: {i: data/a.txt}
      outputs: {o: build/c.txt}
"""


def test_an_added_or_removed_input_is_named_by_its_key_and_its_path(
    project: Callable[..., Proj],
) -> None:
    p = project(_ONE, {"data/a.txt": "a", "data/s.txt": "s"})
    p.cli("build")
    p.edit("pipemake.yaml", "{i: data/a.txt}", "{i: data/a.txt, s: data/s.txt}")
    said = "input s (data/s.txt) added"
    assert f"c: run: {said}" in p.cli("dry-run").stdout
    rows = json.loads(p.cli("dry-run", "--json").stdout)
    assert said in rows[0]["reasons"] and "input" in rows[0]["triggers"]
    assert said in p.cli("status").stdout
    assert said in p.cli("build", "--no-progress").output
    assert said in p.cli("log").stdout
    q = project(_ONE.replace("{i: data/a.txt}", "{i: data/a.txt, s: data/s.txt}"),
                {"data/a.txt": "a", "data/s.txt": "s"}, name="q")  # fmt: skip
    q.cli("build")
    q.edit("pipemake.yaml", "{i: data/a.txt, s: data/s.txt}", "{i: data/a.txt}")
    assert "c: run: input s (data/s.txt) removed" in q.cli("dry-run").stdout


# 5. TOML and JSON params files ---------------------------------------------------------

_PARAMS = r"""
name: pf
params: FILE
stages:
  - id: s
    type: shell
    config:
      cmd: "echo x >> runs/s.count; echo lr={params.train.lr} on={params.when} > {outputs.o}"
      outputs: {o: build/s.txt}
  - id: t
    type: shell
    config:
      cmd: "echo x >> runs/t.count; echo e={params.train.epochs} > {outputs.o}"
      outputs: {o: build/t.txt}
"""

_TOML = """when = 2024-01-02
unused = 1

[train]
lr = 0.25
epochs = 3
"""


def test_a_toml_params_file_works_as_a_yaml_one(project: Callable[..., Proj]) -> None:
    """``params: params.toml``: ``{params.SECTION.KEY}``, only used keys in a stage's key,
    ``--set params.KEY=…``, a date as its text."""
    p = project(_PARAMS.replace("FILE", "params.toml"), {"params.toml": _TOML})
    p.cli("build")
    assert p.read("build/s.txt") == "lr=0.25 on=2024-01-02\n"
    assert p.read("build/t.txt") == "e=3\n"
    p.edit("params.toml", "unused = 1", "unused = 2")  # used by no stage
    assert p.cli("dry-run").stdout == "s: up to date\nt: up to date\n"
    p.edit("params.toml", "epochs = 3", "epochs = 4")  # only t uses it
    p.cli("build")
    assert p.run_counts() == {"s": 1, "t": 2}
    assert p.read("build/t.txt") == "e=4\n"
    p.cli("build", "-S", "params.train.lr=0.5")
    assert p.read("build/s.txt") == "lr=0.5 on=2024-01-02\n"
    p.cli("build")  # back: restored, not run
    assert p.run_counts() == {"s": 2, "t": 2}
    r = p.cli("build", "-S", "params.train.lr2=1", code=2)
    assert "params.toml has no key 'lr2'" in r.output


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        ("params.toml", "[train]\nlr = 0.25\nepochs = \n", "params.toml:3, column 10"),
        ("params.toml", "[train]\nlr = 1\n[train]\n", "params.toml:3"),
        ("params.json", '{"train": {"lr": 1,}}', "params.json:1, column 20"),
    ],
    ids=["toml-value", "toml-twice", "json-comma"],
)
def test_a_params_file_its_format_cannot_read_is_exit_2_with_file_and_line(
    project: Callable[..., Proj], name: str, text: str, said: str
) -> None:
    p = project(_PARAMS.replace("FILE", name), {name: text})
    for verb in ("validate", "build", "dry-run", "status"):
        r = p.cli(verb, code=2)
        assert TRACEBACK not in r.output
        kind = "TOML" if name.endswith(".toml") else "JSON"
        assert f"pipemake.yaml:2: params file {name} is not valid {kind} ({said}" in r.output
    assert not p.exists("build")


def test_a_json_params_file_reads_as_json(project: Callable[..., Proj]) -> None:
    """Read by the JSON parser (a tab-indented file, which YAML refuses, is fine)."""
    text = '{\n\t"when": "now",\n\t"train": {"lr": 0.5, "epochs": 2}\n}\n'
    p = project(_PARAMS.replace("FILE", "params.json"), {"params.json": text})
    p.cli("build")
    assert p.read("build/s.txt") == "lr=0.5 on=now\n"


def test_a_python_params_file_is_refused_saying_what_to_write(
    project: Callable[..., Proj],
) -> None:
    p = project(_PARAMS.replace("FILE", "params.py"), {"params.py": "lr = 1\n"})
    r = p.cli("validate", code=2)
    assert "params file params.py is Python" in r.output
    assert "write the values into params.yaml (or .json, .toml)" in r.output
    missing = project(_PARAMS.replace("FILE", "nothere.toml"), name="m")
    r = missing.cli("validate", code=2)
    assert "params file nothere.toml does not exist" in r.output
    assert "a TOML file of keys and values" in r.output


# 6. a never-built stage waiting on an upstream computed value --------------------------

_VALUES = r"""
name: fresh
stages:
  - id: up
    type: python
    config:
      function: "steps:up"
      inputs: {i: data/x.txt}
      outputs: {o: build/up.txt}
  - id: count
    type: shell
    config:
      cmd: "echo x >> runs/count.count; echo n={up.n} > {outputs.o}"
      outputs: {o: build/count.txt}
"""

_STEPS = """
import pathlib
def up(ctx):
    text = pathlib.Path(ctx.inputs["i"]).read_text()
    pathlib.Path(ctx.outputs["o"]).write_text(str(len(text)))
    return {"n": len(text)}
"""


def test_a_never_built_stage_on_an_upstream_value_is_said_to_run_everywhere(
    project: Callable[..., Proj],
) -> None:
    """It cannot be anything but run (never built, no lock to restore it from): dry-run,
    build -n, status and the build all say so; once built, an upstream that will run
    makes it ``maybe`` (early cutoff may spare it), which is then true."""
    p = project(_VALUES, {"data/x.txt": "abc", "steps.py": _STEPS})
    assert "count: run: never built" in p.cli("dry-run").stdout
    assert "count: run: never built" in p.cli("build", "-n").output
    assert "count: never built" in p.cli("status").stdout
    rows = {r["stage"]: r for r in json.loads(p.cli("dry-run", "--json").stdout)}
    assert rows["count"]["decision"] == "run" and rows["count"]["triggers"] == ["never built"]
    assert "count: running (never built)" in p.cli("build", "--no-progress").output
    assert p.read("build/count.txt") == "n=3\n"
    p.write("data/x.txt", "xyz")  # same length: up runs, count's value is the same
    assert "count: maybe: upstream up will run" in p.cli("dry-run").stdout
    p.cli("build")
    assert p.runs("count") == 1

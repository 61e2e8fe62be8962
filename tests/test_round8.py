"""Round 8 of findings: what the store cannot keep inside an output folder is said when the
stage runs, not dropped in silence."""

from __future__ import annotations

from collections.abc import Callable

from conftest import TRACEBACK, Proj

from pipemake.history import read_run

_INSIDE = """
name: inside
stages:
  - id: mk
    type: shell
    config:
      cmd: "mkdir -p {outputs.d}/sub && echo a > {outputs.d}/a && mkfifo {outputs.d}/sub/p"
      outputs: {d: build/d}
  - id: sock
    type: shell
    config:
      cmd: >-
        mkdir -p {outputs.d} && echo a > {outputs.d}/a &&
        python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' {outputs.d}/s
      outputs: {d: build/s}
"""


def test_a_fifo_or_socket_inside_an_output_folder_fails_the_stage_naming_it(
    project: Callable[..., Proj],
) -> None:
    """A FIFO or socket a command leaves inside its output folder: the store cannot bring it
    back, so a restore would differ from the build. The stage fails naming the entry at its
    output path (as for an output that is itself a FIFO), and nothing is left in the
    workspace or in pipemake's staging."""
    p = project(_INSIDE, {"data/a.txt": "a"})
    out = p.cli("build", "-k", "--no-progress", code=1).output
    assert TRACEBACK not in out
    assert "output 'd' (build/d/sub/p) is a FIFO, which pipemake cannot store" in out
    assert "output 'd' (build/s/s) is a socket, which pipemake cannot store" in out
    assert not p.exists("build/d") and not p.exists("build/s")
    tmp = p.path(".pipemake/tmp")
    assert not tmp.exists() or not any(tmp.iterdir())
    assert "mk: run: the last run failed" in p.cli("dry-run").stdout


_ORIGINAL = """
name: original
stages:
  - id: up
    type: shell
    config:
      cmd: "tr a-z A-Z < {inputs.i} > {outputs.o}"
      inputs: {i: data/a.txt}
      outputs: {o: build/a.txt}
"""


def test_a_noop_answered_from_the_snapshot_says_it_used_pipeline_yaml(
    project: Callable[..., Proj],
) -> None:
    """A project with the original system's ``pipeline.yaml`` only: the repeated no-op
    build, answered from the snapshot without loading the engine, says which file it used
    as the full build does."""
    import os
    import time

    p = project("", {"data/a.txt": "a"})
    p.path("pipemake.yaml").unlink(missing_ok=True)
    p.write("pipeline.yaml", _ORIGINAL)
    p.sub("build", "--no-progress")
    past = time.time() - 30
    for dirpath, dirnames, filenames in os.walk(p.root):
        dirnames[:] = [d for d in dirnames if d != ".pipemake"]
        for name in filenames:
            os.utime(os.path.join(dirpath, name), (past, past))
    rel = os.path.relpath(p.path("pipeline.yaml"))
    shown = p.path("pipeline.yaml") if rel.startswith("..") else rel
    said = f"pipemake: using {shown} (there is no pipemake.yaml)"
    assert said in p.sub("build", "--no-progress").stderr  # the full no-op: writes the snapshot
    assert p.exists(".pipemake/uptodate.json")
    out = p.sub("build", "--no-progress").stderr
    assert read_run(p.root / ".pipemake" / "runs")[1][0].get("from_snapshot")
    assert said in out and "0 ran, 0 restored, 1 up to date" in out


def test_a_stage_field_written_inside_config_says_where_it_belongs(
    project: Callable[..., Proj],
) -> None:
    """``foreach:`` or ``depends_on:`` indented one level too deep, under ``config:``: exit 2
    at validate with the line and where the field goes, not only the rule's keys."""
    bad = """
name: deep
stages:
  - id: cat
    type: shell
    config:
      foreach: src
      retries: 2
      cmd: "cp {inputs.src} {outputs.o}"
      inputs: {src: data/a.txt}
      outputs: {o: build/a.txt}
"""
    p = project(bad, {"data/a.txt": "a"})
    out = p.cli("validate", code=2).output
    assert TRACEBACK not in out
    for line, key in ((6, "foreach"), (7, "retries")):
        assert (
            f"/pipemake.yaml:{line}: stage 'cat': unknown key '{key}' for rule 'shell'; "
            f"'{key}' is a stage field: write it beside type:, not inside config:"
        ) in out


def test_stages_written_as_dvc_yaml_writes_them_says_the_list_to_write(
    project: Callable[..., Proj],
) -> None:
    """``stages:`` as a mapping of names to stages (dvc.yaml's layout): exit 2 showing the
    list entry to write for the first stage."""
    p = project("stages:\n  prepare:\n    cmd: python prepare.py\n    outs: [build/x]\n", {})
    out = p.cli("validate", code=2).output
    assert TRACEBACK not in out and "'stages' must be a non-empty list of stages" in out
    assert "not a mapping of names to stages (as in dvc.yaml): write '- id: prepare'" in out


_CALLBACK = """
import os, signal, sys, weakref
import pipemake.entry  # installs the early Ctrl-C handler, as the console script does
class Thing:
    pass
thing = Thing()
def callback(_ref):  # the import system runs such callbacks while it imports
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(10_000):
        pass
ref = weakref.ref(thing, callback)
del thing
print("went on")
sys.exit(2)
"""


def test_a_ctrl_c_at_start_up_inside_a_callback_still_ends_the_command() -> None:
    """Python ignores an exception raised inside a weakref callback ("Exception ignored
    in …"): a Ctrl-C that lands there during start-up said ``interrupted`` and then went
    on with the command (exit 2 in CI). It ends the process with 130, as it said."""
    import signal
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _CALLBACK], capture_output=True, text=True, timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.returncode == 130, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr == "interrupted\n" and "went on" not in proc.stdout


def test_a_noop_typed_in_a_subfolder_is_answered_from_the_snapshot(
    project: Callable[..., Proj],
) -> None:
    """``pipemake build`` typed in a subfolder of the project (the pipeline file found
    above): the repeated no-op is answered from the snapshot as at the root, saying which
    file it used as the full build does; a change sends it back to the full build."""
    import os
    import subprocess
    import sys
    import time

    p = project(_ORIGINAL, {"data/a.txt": "a", "notes/x.txt": "x"})
    script = os.path.join(os.path.dirname(sys.executable), "pipemake")

    def build() -> str:
        proc = subprocess.run([script, "build", "--no-progress"], cwd=p.path("notes"),
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    build()
    past = time.time() - 30
    for dirpath, dirnames, filenames in os.walk(p.root):
        dirnames[:] = [d for d in dirnames if d != ".pipemake"]
        for name in filenames:
            os.utime(os.path.join(dirpath, name), (past, past))
    said = f"pipemake: using {p.path('pipemake.yaml')} (found above the current folder)"
    assert said in build()  # the full no-op: writes the snapshot
    out = build()
    assert read_run(p.root / ".pipemake" / "runs")[1][0].get("from_snapshot")
    assert said in out and "0 ran, 0 restored, 1 up to date" in out
    p.write("data/a.txt", "b")
    assert "1 ran" in build()
    assert p.read("build/a.txt") == "B"


def test_a_restore_names_the_missing_output_when_only_some_are_missing(
    project: Callable[..., Proj],
) -> None:
    """One of a stage's two outputs deleted: the restore names it; both deleted: "outputs
    missing", as before."""
    two = """
name: two
stages:
  - id: mk
    type: shell
    config:
      cmd: "echo x > {outputs.x}; echo y > {outputs.y}"
      outputs: {x: build/x.txt, y: build/y.txt}
"""
    p = project(two, {})
    p.cli("build")
    p.path("build/x.txt").unlink()
    assert p.cli("dry-run").stdout == "mk: restore: output build/x.txt missing\n"
    assert "mk: restored from the store (output build/x.txt missing)" in p.cli("build").output
    p.path("build/x.txt").unlink()
    p.path("build/y.txt").unlink()
    assert p.cli("dry-run").stdout == "mk: restore: outputs missing\n"

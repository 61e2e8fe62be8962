"""A worker started early (``executors.local.start_early``): the ``pipemake`` command starts
one before it imports the command line and the engine, so that it boots while the build
loads. The build's executor adopts it and sends it the rule registry; one no task uses ends
with the build; one no executor adopts ends with its process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import UPPER, UPPER_FILES, Proj, alive, wait_for

import pipemake
from pipemake import api, noop
from pipemake.entry import _builds_here
from pipemake.executors import local


class Pid(pipemake.Rule):
    """Writes the id of the process it runs in (importable by workers: this module)."""

    outputs: ClassVar = {"o": pipemake.Output(kind="file")}

    def run(self, ctx: pipemake.Context) -> dict[str, Any]:
        ctx.outputs["o"].write_text(str(os.getpid()))
        return {}


PIDS = """
name: p
stages:
  - id: p
    type: early_pid
    config: {o: build/pid.txt}
"""


@pytest.fixture
def early() -> Iterator[list[Any]]:
    """The early worker list, empty before and after the test (its workers ended)."""
    assert local._EARLY == []
    yield local._EARLY
    for w in local._EARLY:
        w.proc.kill()
        w.proc.join(5)
    local._EARLY.clear()


def test_the_build_runs_its_task_on_the_early_worker(
    project: Callable[..., Proj], early: list[Any]
) -> None:
    local.start_early()
    [worker] = early
    # registered after the worker started: the registry reaches it when it is adopted
    pipemake.register_rule("early_pid", Pid)
    p = project(PIDS)
    with api.project_of(p.root, None) as proj:
        report = api.build(proj, jobs=2)
    assert report.ran == ["p"]
    assert int(p.read("build/pid.txt")) == worker.proc.pid
    assert early == []
    wait_for(lambda: not alive(worker.proc.pid), what="the early worker to end")


def test_an_early_worker_no_task_uses_ends_with_the_build(
    project: Callable[..., Proj], early: list[Any]
) -> None:
    pipemake.register_rule("early_pid", Pid)
    p = project(PIDS)
    with api.project_of(p.root, None) as proj:
        api.build(proj)
        local.start_early()
        [worker] = early
        assert api.build(proj).up_to_date == ["p"]
    assert early == []
    wait_for(lambda: not alive(worker.proc.pid), what="the unused early worker to end")


def test_an_early_worker_nobody_adopts_ends_with_its_process(tmp_path: Path) -> None:
    code = (
        "from pipemake.executors import local\n"
        "local.start_early()\n"
        "print(local._EARLY[0].proc.pid, flush=True)\n"
        "raise SystemExit(2)\n"  # as a command that fails before it builds
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    pid = int(proc.stdout.split()[0])
    wait_for(lambda: not alive(pid), what="the orphaned early worker to end")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["build"], True),
        (["build", "-j", "4", "cluster"], True),
        (["build", "--executor", "local"], True),
        (["build", "--executor=inline"], False),
        (["build", "--executor", "dask"], False),
        (["build", "--help"], False),
        (["dry-run"], False),
        (["status"], False),
    ],
)
def test_which_commands_start_a_worker_early(
    tmp_path: Path, argv: list[str], expected: bool
) -> None:
    assert _builds_here(["-C", str(tmp_path), *argv]) is expected


def test_a_worker_starts_early_only_where_a_task_will_most_likely_run(tmp_path: Path) -> None:
    argv = ["-C", str(tmp_path), "build"]
    assert _builds_here(argv)  # never built
    (tmp_path / ".pipemake").mkdir()
    assert not _builds_here(argv)  # the last build ran something: this one is most likely a no-op
    noop.write(tmp_path / ".pipemake", noop.context(argv, os.getcwd()), {}, {})
    assert _builds_here(argv)  # this command was a no-op, and its snapshot no longer holds
    assert not _builds_here([*argv, "-j", "2"])  # another command's snapshot: unknown
    assert _builds_here([*argv[:2], "-f", "other/p.yaml", "build"])  # other/: never built


def test_the_command_builds_with_its_early_worker(project: Callable[..., Proj]) -> None:
    p = project(UPPER, UPPER_FILES)
    out = p.sub("build", "--no-progress").stderr
    assert p.read("build/a.txt") == "ABC\n", out
    assert "0 ran, 0 restored, 1 up to date" in p.sub("build", "--no-progress").stderr


FRAMES = """
name: v
stages:
  - id: extract
    type: frame_extraction
    config: {input_video: clip.mp4, output_dir: frames}
  - id: up
    type: shell
    cmd: "true"
"""


def test_the_modules_a_pipeline_s_rules_preload(tmp_path: Path) -> None:
    from pipemake.executors.preload import modules_for

    (tmp_path / "pipemake.yaml").write_text(FRAMES)
    assert modules_for(tmp_path / "pipemake.yaml") == ["pipemake.rules._video", "PIL.Image"]
    # the original system's file name, where the command found no pipemake.yaml
    (tmp_path / "pipemake.yaml").rename(tmp_path / "pipeline.yaml")
    assert modules_for(tmp_path / "pipemake.yaml") == ["pipemake.rules._video", "PIL.Image"]


@pytest.mark.parametrize(
    "text",
    [
        "stages: [",  # not YAML
        "- just a list\n",
        "stages: {extract: {type: frame_extraction}}\n",  # not a list of stages
        "stages:\n  - id: a\n    type: [frame_extraction]\n",
        "stages:\n  - id: a\n    type: local_rule\n",  # no installed rule of that name
        "# " + "x" * (1 << 20) + "\nstages:\n  - {id: a, type: frame_extraction}\n",  # too big
    ],
)
def test_a_pipeline_file_preload_cannot_use_names_nothing(tmp_path: Path, text: str) -> None:
    from pipemake.executors.preload import modules_for

    (tmp_path / "local_rule.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')\n")
    (tmp_path / "pipemake.yaml").write_text(text)
    assert modules_for(tmp_path / "pipemake.yaml") == []
    assert modules_for(tmp_path / "missing.yaml") == []
    assert not (tmp_path / "ran").exists()  # the project's own code is never imported ahead


def test_an_early_worker_imports_what_its_first_task_needs_before_it_comes(
    tmp_path: Path,
) -> None:
    """Started as the command starts it (a fork, in a process with no other thread), the
    worker has PyAV loaded before any task reached it, while the build was loading."""
    (tmp_path / "pipemake.yaml").write_text(FRAMES)
    code = (
        "import sys, time\n"
        "from pipemake.executors import local\n"
        "local.start_early(sys.argv[1])\n"
        "print(local._EARLY[0].proc.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "pipemake.yaml")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        assert open(f"/proc/{pid}/cmdline").read() == open(f"/proc/{proc.pid}/cmdline").read()

        def loaded() -> bool:
            return "av/_core" in Path(f"/proc/{pid}/maps").read_text()

        wait_for(loaded, what="the early worker to load PyAV")
    finally:
        proc.kill()
        proc.wait(10)
    wait_for(lambda: not alive(pid), what="the early worker to end with its process")


class AtExit(pipemake.Rule):
    """Registers an exit handler in its worker that writes a file (as a rule's temporary
    folder would be removed at exit)."""

    outputs: ClassVar = {"o": pipemake.Output(kind="file")}

    def run(self, ctx: pipemake.Context) -> dict[str, Any]:
        import atexit

        marker = Path(ctx.root) / "exited.txt"
        atexit.register(marker.write_text, f"{os.getpid()}\n")
        ctx.outputs["o"].write_text("x")
        return {}


def test_a_worker_ends_quickly_but_runs_what_code_asked_to_run_at_exit(
    project: Callable[..., Proj],
) -> None:
    pipemake.register_rule("early_atexit", AtExit)
    p = project(PIDS.replace("early_pid", "early_atexit"))
    with api.project_of(p.root, None) as proj:
        assert api.build(proj).ran == ["p"]
    wait_for(lambda: (p.root / "exited.txt").exists(), what="the worker's exit handler")
    assert int(p.read("exited.txt")) != os.getpid()


EMBEDDER = """
import os, sys, tempfile
from pathlib import Path
keep = tempfile.TemporaryDirectory()  # the program's own, removed at its exit only
marker = Path(keep.name) / "mine.txt"
marker.write_text("mine")
os.chdir(sys.argv[1])
sys.argv = ["pipemake", "build", "--no-progress"]
from pipemake.entry import main
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
print("kept" if marker.exists() else "gone")
"""


def test_a_forked_worker_never_runs_the_exit_handlers_of_the_program_it_came_from(
    project: Callable[..., Proj],
) -> None:
    """A program that runs the ``pipemake`` entry point itself: its early worker is a fork
    of it, and must not remove the program's temporary directory when the worker ends."""
    p = project(UPPER, UPPER_FILES)
    done = subprocess.run(
        [sys.executable, "-c", EMBEDDER, str(p.root)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "kept", done.stderr
    assert p.read("build/a.txt") == "ABC\n"

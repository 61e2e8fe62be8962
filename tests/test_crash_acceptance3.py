"""Crash acceptance, third round: what a ``kill -9`` at an exact moment leaves behind, and
that the next command cleans up after it without touching anything of the user's.

Kills are deterministic: the command runs in a child Python that replaces one function of
pipemake's by one that sends the process SIGKILL at that point (a hook point), so no test
races the wall clock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Proj, _env

#: the child: apply ``PATCH`` (Python text), then run ``pipemake ARGS`` as the console does
_CHILD = """
import os, signal, sys
{patch}
from pipemake.entry import main
sys.argv = ["pipemake", *{args!r}]
main()
"""

#: no early worker and no no-op snapshot: the child is the only process, and always builds
_QUIET = {"PIPEMAKE_EARLY_WORKER": "0", "PIPEMAKE_NOOP_SNAPSHOT": "0"}


def killed(
    proj: Proj, patch: str, *args: str, must: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``pipemake -C ROOT ARGS`` in a child that first runs ``patch``; the child is
    expected to kill itself with SIGKILL at the patched point (unless not ``must``: then it
    may also finish, exit 0, when the command never reached that point)."""
    code = _CHILD.format(patch=textwrap.dedent(patch), args=["-C", str(proj.root), *args])
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(_QUIET),
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL or (not must and proc.returncode == 0), (
        f"the child was not killed at the hook point (exit {proc.returncode}):\n"
        + proc.stdout + proc.stderr
    )  # fmt: skip
    return proc


def files_of(top: Path) -> dict[str, str]:
    """relpath → text of every file under ``top``."""
    return {
        str(p.relative_to(top)): p.read_text()
        for p in sorted(top.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


# -- 1. the lock file's temporary -------------------------------------------------------

LOCKED = """
name: lk
vars: {salt: "1"}
stages:
  - id: s
    type: shell
    config:
      cmd: "echo {vars.salt} > {outputs.o}"
      outputs: {o: out.txt}
"""

#: the kill: as soon as pipemake.lock's temporary file exists
_KILL_IN_LOCK_WRITE = """
import tempfile
import pipemake.lockfile as lf
class _T:
    def __getattr__(self, name):
        return getattr(tempfile, name)
    @staticmethod
    def mkstemp(*a, **k):
        made = tempfile.mkstemp(*a, **k)
        os.kill(os.getpid(), signal.SIGKILL)
        return made
lf.tempfile = _T()
"""


def test_a_kill_while_the_lock_is_written_leaves_no_temporary_after_the_next_build(
    project: Callable[..., Proj],
) -> None:
    proj = project(LOCKED)
    proj.sub("build", "--no-progress")
    old_lock = proj.read("pipemake.lock")
    proj.edit("pipemake.yaml", 'salt: "1"', 'salt: "2"')
    killed(proj, _KILL_IN_LOCK_WRITE, "build", "--no-progress")
    left = [n for n in os.listdir(proj.root) if n.startswith(".pipemake.lock~tmp-")]
    assert len(left) == 1, left  # what the kill left: the temporary, beside the old lock
    assert proj.read("pipemake.lock") == old_lock
    # the user's own files that look alike, and a link of that exact name, are not touched
    proj.write(".pipemake.lock-notes.txt", "mine\n")
    proj.write("elsewhere/keep.txt", "keep\n")
    os.symlink(proj.root / "elsewhere/keep.txt", proj.root / ".pipemake.lock~tmp-abcd1234")
    # one of that name made after this build started is not this build's to remove
    future = proj.write(".pipemake.lock~tmp-zzzz9999", "later\n")
    ahead = time.time() + 3600
    os.utime(future, (ahead, ahead))
    proj.sub("build", "--no-progress")
    assert proj.read("out.txt") == "2\n"
    assert proj.read("pipemake.lock") != old_lock  # the new lock went in
    assert not (proj.root / left[0]).exists()
    assert proj.read(".pipemake.lock-notes.txt") == "mine\n"
    assert os.path.islink(proj.root / ".pipemake.lock~tmp-abcd1234")
    assert proj.read("elsewhere/keep.txt") == "keep\n"
    assert proj.read(".pipemake.lock~tmp-zzzz9999") == "later\n"


# -- 2. leftovers beside an output on another filesystem ----------------------------------

CROSS = """
name: xfs
vars: {salt: "a"}
stages:
  - id: big
    type: shell
    config:
      cmd: "mkdir -p {outputs.o}; for i in 1 2 3; do echo {vars.salt}$i > {outputs.o}/f$i; done"
      outputs: {o: build/dir}
  - id: one
    type: shell
    config:
      cmd: "echo {vars.salt} > {outputs.o}"
      outputs: {o: build/file.bin}
"""

#: every output is on "another filesystem" (the staging area's device is never the
#: output's), and the kill comes when the complete new output is beside the old one
_KILL_BESIDE = """
import pipemake.workspace as ws
ws.Workspace._same_device = lambda self, path: False
ws._same_dev = lambda a, b: False
def _die(a, b):
    os.kill(os.getpid(), signal.SIGKILL)
ws._exchange = _die
"""


def test_a_kill_beside_an_output_on_another_filesystem_leaves_nothing_after_the_next_build(
    project: Callable[..., Proj],
) -> None:
    proj = project(CROSS)
    proj.sub("build", "--no-progress")
    old = files_of(proj.path("build"))
    proj.edit("pipemake.yaml", 'salt: "a"', 'salt: "b"')
    killed(proj, _KILL_BESIDE, "build", "--no-progress", "-j", "1")
    beside = sorted(n for n in os.listdir(proj.path("build")) if ".pipemake-" in n)
    assert beside, "the kill left no copy beside the output: the hook point moved"
    # what the kill left is the old output, whole
    assert {k: v for k, v in files_of(proj.path("build")).items() if ".pipemake-" not in k} == old
    # a user's look-alikes: a name off the pattern, and a link of exactly the pattern
    proj.write("build/.dir.pipemake-notes", "mine\n")
    proj.write("mine/keep.txt", "keep\n")
    os.symlink(proj.root / "mine", proj.path("build/.dir.pipemake-old-0123456789"))
    proj.sub("build", "--no-progress")
    left = sorted(n for n in os.listdir(proj.path("build")) if ".pipemake-" in n)
    assert left == [".dir.pipemake-notes", ".dir.pipemake-old-0123456789"], left
    assert proj.read("mine/keep.txt") == "keep\n"
    assert proj.read("build/dir/f1") == "b1\n" and proj.read("build/file.bin") == "b\n"


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no tmpfs at /dev/shm")
def test_a_kill_beside_a_real_tmpfs_output_is_swept(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    scratch = Path(os.path.realpath("/dev/shm")) / f"pm-crash3-{os.getpid()}-{tmp_path.name}"
    scratch.mkdir()
    try:
        proj = project(CROSS)
        os.symlink(scratch, proj.path("build"))
        if os.stat(scratch).st_dev == os.stat(proj.root).st_dev:
            pytest.skip("/dev/shm is on the project's filesystem here")
        proj.sub("build", "--no-progress")
        proj.edit("pipemake.yaml", 'salt: "a"', 'salt: "b"')
        killed(proj, _KILL_BESIDE, "build", "--no-progress", "-j", "1")
        assert any(".pipemake-" in n for n in os.listdir(scratch))
        proj.sub("build", "--no-progress")
        assert sorted(os.listdir(scratch)) == ["dir", "file.bin"]
        assert proj.read("build/dir/f3") == "b3\n"
    finally:
        subprocess.run(["rm", "-rf", str(scratch)], check=False)


# -- 3. a directory output's restore is one step ------------------------------------------

EACH = """
name: t
vars: {salt: "1"}
stages:
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "cat {inputs.src} > {outputs.o}/{item.relpath}; echo {vars.salt} >> {outputs.o}/{item.relpath}"
      inputs: {src: data}
      outputs: {o: build/each}
"""
EACH_FILES = {f"data/f{i}.txt": f"item {i}\n" for i in range(6)}

#: a kill at the Nth file-system rename or link of the workspace module, whatever the steps
_KILL_AT_STEP = """
import os as _os
import pipemake.workspace as ws
class _Os:
    calls = 0
    def __getattr__(self, name):
        return getattr(_os, name)
    def _step(self, fn, *a, **k):
        _Os.calls += 1
        if _Os.calls == {n}:
            _os.kill(_os.getpid(), signal.SIGKILL)
        return fn(*a, **k)
    def replace(self, *a, **k):
        return self._step(_os.replace, *a, **k)
    def rename(self, *a, **k):
        return self._step(_os.rename, *a, **k)
    def link(self, *a, **k):
        return self._step(_os.link, *a, **k)
ws.os = _Os()
_ex = getattr(ws, "_exchange", None)  # the atomic swap, where there is one
if _ex is not None:
    ws._exchange = lambda a, b: ws.os._step(_ex, a, b)
"""


def _switched_back(project: Callable[..., Proj]) -> tuple[Proj, dict[str, str], dict[str, str]]:
    """A foreach output built with salt 1, then 2, then the pipeline set back to 1 (a
    restore of every file); the two outputs."""
    proj = project(EACH, EACH_FILES)
    proj.sub("build", "--no-progress")
    one = files_of(proj.path("build/each"))
    proj.edit("pipemake.yaml", 'salt: "1"', 'salt: "2"')
    proj.sub("build", "--no-progress")
    two = files_of(proj.path("build/each"))
    proj.edit("pipemake.yaml", 'salt: "2"', 'salt: "1"')
    return proj, one, two


@pytest.mark.parametrize("step", [1, 2, 3])
def test_a_kill_at_any_step_of_a_directory_restore_leaves_the_old_or_the_new_output(
    project: Callable[..., Proj], step: int
) -> None:
    proj, one, two = _switched_back(project)
    patch = _KILL_AT_STEP.replace("{n}", str(step))
    killed(proj, patch, "build", "--no-progress", must=step == 1)
    out = proj.path("build/each")
    now = files_of(out) if out.exists() else None
    assert now in (one, two, None), f"a mix of old and new after a kill at step {step}: {now}"
    proj.sub("build", "--no-progress")
    assert files_of(out) == one
    assert proj.sub("cache", "verify").returncode == 0


def test_a_partial_restore_keeps_the_unchanged_files_and_does_not_read_them_again(
    project: Callable[..., Proj],
) -> None:
    proj = project(EACH, EACH_FILES)
    old = time.time() - 3600  # written long ago: trusted by their stat once hashed
    for p in proj.path("data").iterdir():
        os.utime(p, (old, old))
    proj.sub("build", "--no-progress")
    out = proj.path("build/each")
    for p in out.iterdir():
        os.utime(p, (old, old))
    inode = os.stat(out / "f1.txt").st_ino
    (out / "f0.txt").unlink()
    (out / "f2.txt").write_text("edited by hand\n")
    proj.sub("build", "--no-progress")
    assert files_of(out) == {f"f{i}.txt": f"item {i}\n1\n" for i in range(6)}
    assert os.stat(out / "f1.txt").st_ino == inode  # the same file, not a copy
    # the four kept files gained and lost a name (their ctime moved): not read again
    counting = """
import atexit
import pipemake.fshash as fh
_reads = []
_orig = fh._read_hash
def _counted(*a):
    _reads.append(a[0])
    return _orig(*a)
fh._read_hash = _counted
atexit.register(lambda: print("READS", len(_reads), file=sys.stderr))
"""
    code = _CHILD.format(patch=counting, args=["-C", str(proj.root), "status", "--check"])
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(_QUIET),
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reads = int(proc.stderr.rpartition("READS ")[2].split()[0])
    assert reads <= 2, proc.stderr  # only the two files the restore wrote


# -- 7. Ctrl-C while pipemake is still starting -------------------------------------------

#: SIGINT arrives while the command line module is being imported
_SIGINT_IN_IMPORT = """
import importlib.abc
import pipemake.entry
class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "pipemake.cli":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, _Hook())
"""


@pytest.mark.parametrize("command", [["status"], ["build", "--no-progress"], ["cache", "verify"]])
def test_ctrl_c_while_pipemake_imports_is_one_line_and_exit_130(
    project: Callable[..., Proj], command: list[str]
) -> None:
    proj = project(LOCKED)
    code = _CHILD.format(patch=_SIGINT_IN_IMPORT, args=["-C", str(proj.root), *command])
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(_QUIET),
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "interrupted", proc.stderr
    assert not proj.exists("out.txt")


# -- 4. a clean stopped midway ---------------------------------------------------------

#: clean is killed when it has removed half of the first directory output's files
_KILL_MID_CLEAN = """
import pipemake.workspace as ws
def _half(path):
    files = sorted(p for p in path.rglob("*") if p.is_file())
    for p in files[: len(files) // 2]:
        p.unlink()
    os.kill(os.getpid(), signal.SIGKILL)
ws.remove_path = _half
"""


def test_a_second_clean_after_a_killed_clean_removes_what_is_left(
    project: Callable[..., Proj],
) -> None:
    proj, one, _two = _switched_back(project)
    proj.sub("build", "--no-progress")
    killed(proj, _KILL_MID_CLEAN, "clean")
    left = files_of(proj.path("build/each"))
    assert 0 < len(left) < len(one)  # the kill came midway
    again = proj.sub("clean", code=None)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "by hand" not in again.stderr and "removed build/each" in again.stdout
    assert not proj.exists("build/each")
    proj.sub("build", "--no-progress")
    assert files_of(proj.path("build/each")) == one


def test_a_part_of_an_output_with_an_edited_file_is_still_kept(
    project: Callable[..., Proj],
) -> None:
    proj = project(EACH, EACH_FILES)
    proj.sub("build", "--no-progress")
    for i in range(3):
        proj.path(f"build/each/f{i}.txt").unlink()
    proj.write("build/each/f4.txt", "edited by hand\n")
    kept = proj.sub("clean", code=1)
    assert "kept build/each" in kept.stderr
    assert proj.read("build/each/f4.txt") == "edited by hand\n"


# -- 5. the state files cannot grow (a file-size limit) -----------------------------------

GROWING = """
name: t
vars: {salt: "1"}
on_failure: "echo failed > hook.txt"
stages:
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "cat {inputs.src} > {outputs.o}/{item.relpath}; echo {vars.salt} >> {outputs.o}/{item.relpath}"
      inputs: {src: data}
      outputs: {o: build/each}
"""


def test_databases_that_cannot_grow_fail_the_build_the_usual_way_naming_the_file(
    project: Callable[..., Proj],
) -> None:
    import resource

    proj = project(GROWING, {f"data/f{i:03d}.txt": f"item {i}\n" for i in range(120)})
    proj.sub("build", "--no-progress")
    sizes = [p.stat().st_size for p in proj.path(".pipemake").rglob("*.db")]
    limit = min(sizes) - 8 * 1024  # below what both databases already hold
    assert limit > 16 * 1024, sizes
    proj.edit("pipemake.yaml", 'salt: "1"', 'salt: "2"')

    def capped() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        proj.argv("build", "--no-progress"), capture_output=True, text=True, env=_env(_QUIET),
        preexec_fn=capped, timeout=120,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    assert ".pipemake/store/actions.db" in out or ".pipemake/state.db" in out, out
    assert "ulimit -f" in out, out
    assert "1 failed (each)" in out, out  # the summary
    assert proj.read("hook.txt") == "failed\n"  # the on_failure hook ran
    runs = proj.sub("list", "--runs").stdout.splitlines()
    assert "failed" in runs[-1] and "incomplete" not in runs[-1], runs
    proj.sub("build", "--no-progress")  # without the limit: done
    assert proj.read("build/each/f000.txt") == "item 0\n2\n"


def test_an_output_too_large_for_the_file_size_limit_names_its_path() -> None:
    import errno as errno_mod

    from pipemake.build import _placing_failed

    text = _placing_failed(OSError(errno_mod.EFBIG, "File too large"), ["build/each"])
    assert "at build/each" in text and "an output path" not in text


# -- 6. a push to a file:// remote killed midway ----------------------------------------

#: the kill: as soon as a push has made its first temporary file in the remote
_KILL_IN_PUSH = """
import tempfile
import pipemake.remotefs as rf
class _T:
    def __getattr__(self, name):
        return getattr(tempfile, name)
    @staticmethod
    def mkstemp(*a, **k):
        made = tempfile.mkstemp(*a, **k)
        os.write(made[0], b"half")
        os.kill(os.getpid(), signal.SIGKILL)
        return made
rf.tempfile = _T()
"""


def test_remote_gc_removes_what_a_killed_push_left_and_nothing_else(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    remote = tmp_path / "remote"
    url = f"file://{remote}"
    proj = project(EACH, EACH_FILES)
    proj.sub("build", "--no-progress")
    killed(proj, _KILL_IN_PUSH, "push", "--remote", url)
    temps = [p for p in remote.rglob(".tmp-*")]
    assert temps, "the kill left no temporary: the hook point moved"
    # a user's file of a like name, and a link of the exact pattern to a file outside
    mine = remote / "objects" / "ab"
    mine.mkdir(parents=True, exist_ok=True)
    (mine / ".tmp-notes.txt").write_text("mine\n")
    outside = proj.write("outside.txt", "keep\n")
    os.symlink(outside, mine / ".tmp-abcd1234")
    young = proj.sub("cache", "gc", "--remote", url)  # the default grace: too young to go
    assert young.returncode == 0 and all(p.exists() for p in temps)
    proj.sub("cache", "gc", "--remote", url, "--grace", "0")
    assert not any(p.exists() for p in temps)
    assert (mine / ".tmp-notes.txt").read_text() == "mine\n"
    assert proj.read("outside.txt") == "keep\n"
    proj.sub("push", "--remote", url)  # the second push completes
    clone = project(EACH, EACH_FILES, name="clone")
    clone.sub("build", "--no-progress", "--remote", url)
    assert files_of(clone.path("build/each")) == files_of(proj.path("build/each"))


def test_the_next_push_removes_old_temporaries_where_it_writes_and_spares_a_live_one(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    remote = tmp_path / "remote"
    url = f"file://{remote}"
    proj = project(EACH, EACH_FILES)
    proj.sub("build", "--no-progress")
    killed(proj, _KILL_IN_PUSH, "push", "--remote", url)
    temps = [p for p in remote.rglob(".tmp-*")]
    assert temps
    old = time.time() - 3600
    for p in temps:
        os.utime(p, (old, old))
    live = temps[0].parent / ".tmp-live0000"  # another push writing right now
    live.write_bytes(b"being written")
    proj.sub("push", "--remote", url)
    assert not any(p.exists() for p in temps)
    assert live.exists()


def test_a_swap_refused_across_a_bind_mount_copies_beside_and_swaps_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno as errno_mod

    import pipemake.workspace as ws_mod

    ws = ws_mod.Workspace(tmp_path)
    (tmp_path / "build/out").mkdir(parents=True)
    (tmp_path / "build/out/old.txt").write_text("old\n")
    staged = ws.staging("t") / "out"
    staged.mkdir()
    (staged / "new.txt").write_text("new\n")
    real = ws_mod._exchange
    refused: list[str] = []

    def exchange(a: str, b: str) -> bool:
        if not refused:  # the first, from the staging area: another mount
            refused.append(a)
            raise OSError(errno_mod.EXDEV, "Invalid cross-device link", a)
        return real(a, b)

    monkeypatch.setattr(ws_mod, "_exchange", exchange)
    ws.place(staged, "build/out")
    assert refused and files_of(tmp_path / "build/out") == {"new.txt": "new\n"}
    assert sorted(os.listdir(tmp_path / "build")) == ["out"]  # nothing left beside

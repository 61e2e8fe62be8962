"""Bounded, clear failure: hostile or unlucky input ends in an error that says what and
where, never in a hang, a traceback or a lost summary (issue 13, findings 11-15)."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import TRACEBACK, Proj, shell_foreach

from pipemake import api
from pipemake.decide import Trigger, explain
from pipemake.errors import DiskFull
from pipemake.events import Event
from pipemake.history import RunLog
from pipemake.yamlload import YamlError, YamlTooBig, load_yaml

LAUGHS = """\
name: bomb
vars:
  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
  f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
  g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
  h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
  i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
stages:
  - id: s
    type: shell
    config: {cmd: "echo {vars.i} > {outputs.o}", outputs: {o: out.txt}}
"""


# finding 11: YAML alias bombs --------------------------------------------------------------


def test_billion_laughs_is_refused_naming_file_and_line(project: Callable[..., Proj]) -> None:
    proj = project(LAUGHS)
    assert len(LAUGHS) < 600
    proc = proj.sub("validate", code=2, timeout=30)
    out = proc.stdout + proc.stderr
    assert TRACEBACK not in out
    assert "pipemake.yaml:8" in out  # `f:`, the first line that expands past the bound
    assert "alias" in out
    assert not proj.exists(".pipemake/plan.json")


def test_merge_maps_and_mapping_key_bombs_are_refused() -> None:
    merges = "a: &a {x: 1, y: 2, z: 3}\n" + "".join(
        f"{c}: &{c} {{<<: [{', '.join([f'*{p}'] * 9)}]}}\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    with pytest.raises(YamlTooBig):
        load_yaml(merges)
    long_string = "a: &a " + "x" * 200_000 + "\nb: [" + ", ".join(["*a"] * 500) + "]\n"
    with pytest.raises(YamlTooBig) as info:
        load_yaml(long_string)
    assert info.value.line == 2


def test_ordinary_anchors_and_merges_still_load() -> None:
    doc = load_yaml(
        "defaults: &d {retries: 1, timeout: 10}\n"
        "stages:\n"
        "  - {id: a, <<: *d, timeout: 20}\n"
        "  - {id: b, <<: [*d, {retries: 5, x: 1}]}\n"
        "  - {id: c, env: &e {A: '1'}, more: *e}\n"
    )
    a, b, c = doc["stages"]
    assert a == {"retries": 1, "timeout": 20, "id": "a"}  # a written key overrides a merge
    assert b == {"retries": 1, "timeout": 10, "x": 1, "id": "b"}  # the first map wins
    assert c["more"] == {"A": "1"}
    with pytest.raises(YamlError, match="duplicate key 'timeout'"):
        load_yaml("d: &d {timeout: 1}\ns: {<<: *d, timeout: 2, timeout: 3}\n")
    with pytest.raises(YamlError, match="recursive"):
        load_yaml("a: &a [1, *a]\n")


def test_a_pipeline_with_merged_defaults_builds(project: Callable[..., Proj]) -> None:
    proj = project(
        """
        name: merged
        x-defaults: &shell
          type: shell
          retries: 1
        stages:
          - <<: *shell
            id: one
            config: {cmd: "echo 1 > {outputs.o}", outputs: {o: one.txt}}
          - <<: *shell
            id: two
            retries: 0
            config: {cmd: "cat {inputs.i} > {outputs.o}", inputs: {i: "{one.o}"},
                     outputs: {o: two.txt}}
        """.replace("x-defaults", "vars")
    )
    proj.cli("build")
    assert proj.read("two.txt") == "1\n"


# finding 14: the project root never shadows the standard library ----------------------------

SHADOWED = """
name: shadow
stages:
  - id: py
    type: python
    config:
      function: steps.mod:run
      outputs: {o: build/out.json}
  - id: sh
    type: shell
    config:
      cmd: "cp {inputs.i} {outputs.o}"
      inputs: {i: "{py.o}"}
      outputs: {o: build/copy.json}
"""
STEP = """\
import copy
import json
import random


def run(ctx):
    with open(ctx.outputs["o"], "w") as fh:
        json.dump(copy.deepcopy({"n": random.Random(1).randint(1, 9)}), fh)
    return {"n": 1}
"""


@pytest.mark.slow
def test_stdlib_names_in_the_project_root_do_not_break_python_stages(
    project: Callable[..., Proj],
) -> None:
    boom = "raise RuntimeError('the project file {} was imported instead of the stdlib')\n"
    files = {name: boom.format(name) for name in ("copy.py", "json.py", "random.py", "queue.py")}
    files |= {"steps/__init__.py": "", "steps/mod.py": STEP}
    proj = project(SHADOWED, files)
    proc = proj.sub("build", "-j", "2")
    assert "imported instead" not in proc.stdout + proc.stderr
    assert proj.read("build/copy.json").startswith('{"n": ')
    proj.sub("dry-run", "--check")  # up to date, and the code hash found steps/mod.py


def test_stdlib_names_in_the_project_root_do_not_break_workers_started_there(
    project: Callable[..., Proj],
) -> None:
    """``cd project && pipemake build``: the worker processes start in the project root, and
    a Python started with ``-c`` there would import the project's files first."""
    script = Path(sys.executable).with_name("pipemake")
    if not script.exists():
        pytest.skip("no pipemake console script beside this Python")
    boom = "raise RuntimeError('the project file {} was imported instead of the stdlib')\n"
    names = ["copy", "json", "random", "threading", "pickle", "socket", "struct", "signal",
             "selectors", "tempfile", "types", "weakref", "queue"]  # fmt: skip
    files = {f"{name}.py": boom.format(name) for name in names}
    files |= {"steps/__init__.py": "", "steps/mod.py": STEP}
    proj = project(SHADOWED, files)
    env = {k: v for k, v in os.environ.items() if k != "PIPEMAKE_CACHE_DIR"}
    proc = subprocess.run(
        [str(script), "build", "-j", "2", "--no-progress"], cwd=proj.root, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "imported instead" not in out, out
    assert proj.read("build/copy.json").startswith('{"n": ')


# finding 13: a damaged state.db, permissions ----------------------------------------------

ONE = """
name: one
stages:
  - id: a
    type: shell
    config: {cmd: "cp {inputs.i} {outputs.o}", inputs: {i: in.txt}, outputs: {o: out.txt}}
"""


def _damage(db: Path, how: str) -> None:
    good = db.read_bytes()
    for extra in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        extra.unlink(missing_ok=True)
    if how == "garbage":
        db.write_bytes(os.urandom(5000))
    elif how == "truncated":
        db.write_bytes(good[:9000])
    elif how == "pages":
        data = bytearray(good)
        for off in range(4096, len(data), 4096):
            data[off : off + 200] = b"\xff" * 200
        db.write_bytes(bytes(data))
    else:  # tables that are not pipemake's
        con = sqlite3.connect(db)
        con.executescript(f"DROP TABLE {how}; CREATE TABLE {how} (a);")
        con.close()


@pytest.mark.parametrize("how", ["garbage", "truncated", "pages", "records", "stat"])
def test_a_damaged_state_db_is_an_error_naming_it_and_what_to_do(
    project: Callable[..., Proj], how: str
) -> None:
    proj = project(ONE, {"in.txt": "hi\n"})
    proj.cli("build")
    db = proj.path(".pipemake/state.db")
    _damage(db, how)
    for command in ("build", "status", "dry-run"):
        out = proj.cli(command, code=1).output
        assert TRACEBACK not in out
        assert f"{db} is damaged" in out and "delete it and run again" in out, out
    assert db.exists()  # never deleted for the user
    db.unlink()
    proj.cli("build")
    assert "a: up to date" in proj.cli("status").output  # the store still had it


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE records SET record='{{not json'",
        "UPDATE records SET record='[1, 2]', key=5, result=7, duration='x'",
        'UPDATE records SET record=\'{"doc": 3, "result": 1}\'',
        "UPDATE stat SET hash=12",
        "UPDATE items SET hashes='[1]'",
    ],
)
def test_damaged_rows_of_the_state_count_as_no_row(project: Callable[..., Proj], sql: str) -> None:
    proj = project(ONE, {"in.txt": "hi\n"})
    proj.cli("build")
    con = sqlite3.connect(proj.path(".pipemake/state.db"))
    con.executescript(sql)
    con.close()
    for command in ("status", "dry-run", "build", "status"):
        assert TRACEBACK not in proj.cli(command).output
    assert proj.read("out.txt") == "hi\n"


def _without_root_powers(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as root without the powers that ignore file permissions, so a read-only
    path is read-only to it (skips where that cannot be arranged)."""
    drop = "-dac_override,-dac_read_search,-fowner"
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to take away the powers to ignore permissions")
    cmd = [setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}", "--"]
    probe = subprocess.run([*cmd, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr!r}")
    return subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=60)


READ_STATE = """
import sys
from pathlib import Path
from pipemake.state import WorkspaceState
state = WorkspaceState(Path(sys.argv[1]), readonly=True)
print(sorted(state.builds.records()), state.builds.brief()["a"][1])
state.close()
"""


def test_a_read_only_workspace_is_named_and_its_state_can_still_be_read(
    project: Callable[..., Proj],
) -> None:
    proj = project(ONE, {"in.txt": "hi\n"})
    proj.cli("build")
    proj.write("in.txt", "changed\n")
    paths = [proj.root, *proj.root.rglob("*")]
    modes = {p: p.stat().st_mode for p in paths}
    try:
        for p in paths:
            p.chmod(p.stat().st_mode & ~0o222)
        build = _without_root_powers(proj.argv("build"))
        dry = _without_root_powers(proj.argv("dry-run"))
        state = _without_root_powers(
            [sys.executable, "-c", READ_STATE, str(proj.path(".pipemake/state.db"))]
        )
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    out = build.stdout + build.stderr
    assert build.returncode == 1 and TRACEBACK not in out
    assert f"cannot use {proj.root / '.pipemake'}" in out and "Permission denied" in out
    assert proj.read("out.txt") == "hi\n"
    assert state.returncode == 0 and state.stdout.strip() == "['a'] ok", state.stderr
    dout = dry.stdout + dry.stderr  # the store is read as it is, without writing
    assert TRACEBACK not in dout and dry.returncode == 0, dout
    assert "a: run: input in.txt changed" in dout, dout


def test_a_pipemake_folder_of_another_user_is_named(project: Callable[..., Proj]) -> None:
    proj = project(ONE, {"in.txt": "hi\n"})
    proj.cli("build")
    dot = proj.path(".pipemake")
    try:
        os.chown(dot, 65534, 65534)
        dot.chmod(0o700)
        results = [_without_root_powers(proj.argv(c)) for c in ("build", "status", "dry-run")]
    finally:
        os.chown(dot, 0, 0)
        dot.chmod(0o755)
    for proc in results:
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1 and TRACEBACK not in out, out
        assert f"cannot use {dot}" in out and "Permission denied" in out, out


# finding 12: a full disk ---------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (skips where mounting is not permitted)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr!r}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


FILLING = """
name: full
on_failure: "echo failed > {hook}"
stages:
  - id: small
    type: shell
    config: {{cmd: "echo x >> {runs}/small.count; echo small > {{outputs.o}}", outputs: {{o: small.txt}}}}
  - id: big
    type: shell
    depends_on: [small]
    config: {{cmd: "head -c 1500000 /dev/zero > {{outputs.o}}", outputs: {{o: big.bin}}}}
"""


def test_a_full_disk_keeps_the_stage_error_summary_and_hook(
    small_disk: Path, tmp_path: Path
) -> None:
    hook, runs = tmp_path / "hook.txt", tmp_path / "runs"
    runs.mkdir()
    proj = Proj(small_disk)
    proj.pipeline(FILLING.format(hook=hook, runs=runs))
    proj.write("filler", b"\0" * 2_900_000)  # room for the state, not for big.bin too
    proc = proj.sub("build", "--no-progress", code=1)
    out = proc.stdout + proc.stderr
    assert TRACEBACK not in out
    assert "No space left on device" in out  # the stage's own error (head's)
    assert "1 ran, 0 restored, 0 up to date, 1 failed (big)" in out  # the summary
    assert hook.read_text() == "failed\n"  # the on_failure hook
    assert f"no space left on device at {small_disk}" in out
    assert "free space and build again; nothing committed is lost" in out
    proj.path("filler").unlink()
    again = proj.sub("build", "--no-progress")
    assert "small: up to date" in again.stdout + again.stderr
    assert (runs / "small.count").read_text() == "x\n"
    assert proj.path("big.bin").stat().st_size == 1_500_000


NOSPACE = """
name: nospace
on_failure: "echo failed > hook.txt"
stages:
  - id: fill
    type: python
    config: {function: "filler:run", outputs: {o: out.txt}}
"""
FILLER = """\
import errno


def run(ctx):
    raise OSError(errno.ENOSPC, "No space left on device")
"""


def test_a_stage_ended_by_a_full_disk_says_so_without_a_traceback(
    project: Callable[..., Proj],
) -> None:
    proj = project(NOSPACE, {"filler.py": FILLER})
    out = proj.cli("build", "--no-progress", code=1).output
    assert "FAILED fill: no space left on device at " in out
    assert "free space and build again" in out
    assert TRACEBACK not in out and "Traceback" not in out
    assert proj.read("hook.txt") == "failed\n"


def test_a_run_log_on_a_full_disk_stops_and_is_reported_at_the_end(tmp_path: Path) -> None:
    """The ``--log-json`` copy on a full device (Linux's ``/dev/full`` fails every write
    with ENOSPC): the build goes on, the failure is reported once, at the end."""
    log = RunLog(tmp_path / "runs", extra="/dev/full")
    log(Event("run_started", None, {"stages": ["a"]}))
    log(Event("stage_started", "a", {}))  # the build goes on: no exception here
    log(Event("run_finished", None, {"ran": ["a"]}))
    with pytest.raises(DiskFull, match="no space left on device at /dev/full"):
        log.close()
    log.close()  # said once
    assert '"event":"run_finished"' in "".join(
        p.read_text() for p in (tmp_path / "runs").glob("*.jsonl")
    )  # the run's own log is whole


# finding 13: values, stage ids and commands out of bounds ------------------------------------

MIXED = """
name: mixed
stages:
  - id: v
    type: python
    config: {function: "vals:run", outputs: {o: out.txt}}
"""
VALS = """\
def run(ctx):
    with open(ctx.outputs["o"], "w") as fh:
        fh.write("x")
    return {"counts": {"b": [1, {2: "two", "c": 3}]}}
"""


def test_values_with_a_key_that_is_not_a_string_fail_the_stage_clearly(
    project: Callable[..., Proj],
) -> None:
    proj = project(MIXED, {"vals.py": VALS})
    out = proj.cli("build", "--no-progress", code=1).output
    assert TRACEBACK not in out and "Traceback" not in out
    assert "FAILED v: computed values must be JSON data, whose mapping keys are strings" in out
    assert "values['counts']['b'][1] has the key 2 (int)" in out
    proj.write("vals.py", VALS.replace('2: "two"', '"2": "two"').replace("[1, ", "(1, "))
    proj.edit("vals.py", "3}]}}", "3})}}")
    proj.cli("build")
    assert "v: up to date" in proj.cli("status").output


def test_a_stage_id_too_long_for_a_file_name_is_refused_at_validate(
    project: Callable[..., Proj],
) -> None:
    long_id = "s" * 10_000
    proj = project(ONE.replace("id: a", f"id: {long_id}"), {"in.txt": "hi\n"})
    out = proj.cli("validate", code=2).output
    assert "pipemake.yaml:3: stage id 'ssssssssssssssssssssssss'… is 10,000 characters long" in out
    assert "the limit is 128" in out and long_id not in out
    ok = project(ONE.replace("id: a", "id: " + "s" * 128), {"in.txt": "hi\n"}, name="ok")
    ok.cli("build")
    assert ok.read("out.txt") == "hi\n"


def test_a_command_too_long_for_the_system_fails_the_stage_clearly(
    project: Callable[..., Proj],
) -> None:
    cmd = "echo " + "x" * 1_000_000 + " > {outputs.o}"
    proj = project(
        f"""
        name: huge
        stages:
          - id: s
            type: shell
            config: {{cmd: "{cmd}", outputs: {{o: out.txt}}}}
        """
    )
    out = proj.cli("build", "--no-progress", code=1).output
    assert TRACEBACK not in out and "Traceback" not in out
    assert "FAILED s: command too long (1,000,0" in out
    assert "put it in a script" in out


# finding 15: secrets in webhook URLs ---------------------------------------------------------


class _Hook(BaseHTTPRequestHandler):
    paths: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Hook.paths.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _hooked(url: str, fail: bool) -> str:
    return f"""
    name: hooked
    on_success: {{url: "{url}"}}
    on_failure: {{url: "{url}"}}
    stages:
      - id: s
        type: shell
        config: {{cmd: "{"exit 3" if fail else "echo ok > {outputs.o}"}", outputs: {{o: o.txt}}}}
    """


def _everything_written(proj: Proj, *extra: Path) -> str:
    """All pipemake wrote (its own folder, but for the copies of the pipeline file it keeps
    to load it faster), and the files in ``extra``."""
    copies = {"plan.json", "yaml-chunks.json"}
    files = [f for f in proj.path(".pipemake").rglob("*") if f.is_file() and f.name not in copies]
    return "".join(f.read_bytes().decode("utf-8", "replace") for f in [*files, *extra])


def test_a_webhook_url_is_never_written_or_shown_whole(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hooks/PATHSECRET?token=QUERYSECRET"
        ok = project(_hooked(url, fail=False))
        log = tmp_path / "events.jsonl"
        shown = ok.cli("build", "--log-json", str(log)).output
        shown += ok.cli("log").output + ok.cli("list", "--runs").output
    finally:
        server.shutdown()
        server.server_close()
    assert _Hook.paths == ["/hooks/PATHSECRET?token=QUERYSECRET"]  # the real URL was used
    written = _everything_written(ok, log)
    assert f"http://127.0.0.1:{server.server_port}/\\u2026" in written  # what the log keeps
    dead = f"http://alice:PASSWORD@127.0.0.1:{_closed_port()}/x/PATHSECRET?k=QUERYSECRET"
    failed = project(_hooked(dead, fail=True), name="failed")
    shown += failed.cli("build", code=1).output + failed.cli("log").output
    written += _everything_written(failed)
    assert "hook failed" in shown
    for secret in ("PATHSECRET", "QUERYSECRET", "PASSWORD", "alice"):
        assert secret not in shown and secret not in written, secret


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# finding 15: rerun reasons after a failure ---------------------------------------------------


def test_after_a_failed_first_build_no_existing_item_is_called_new(
    project: Callable[..., Proj],
) -> None:
    files = {"data/f1.txt": "one\n", "data/f2.txt": "bad\n", "data/f3.txt": "three\n"}
    proj = project(
        shell_foreach("grep -qv bad {inputs.src} && cp {inputs.src} {outputs.o}/"), files
    )
    proj.cli("build", code=1)
    out = proj.cli("dry-run").output
    assert "1 of 3 items to run (first: data/f2.txt: not built yet)" in out, out
    assert ": new" not in out
    proj.write("data/f4.txt", "four\n")  # a file that really is new
    proj.write("data/f2.txt", "two\n")
    proj.cli("build")
    proj.write("data/f5.txt", "five\n")
    assert "1 of 5 items changed (first: data/f5.txt: new)" in proj.cli("dry-run").output


def test_reasons_say_what_changed_since_a_failed_run() -> None:
    built = {"rule": "shell", "params": {"cmd": "a"}, "inputs": {"i": ["in.txt", "h1"]}}
    failed = {**built, "inputs": {"i": ["in.txt", "h2"]}}
    assert [str(r) for r in explain(built, failed)] == ["input in.txt changed"]
    assert [str(r) for r in explain(built, failed, failed)] == ["the last run failed"]
    assert [r.trigger for r in explain(built, failed, failed)] == [Trigger.FAILED]
    now = {**failed, "inputs": {"i": ["in.txt", "h3"]}}
    assert [str(r) for r in explain(built, now, failed)] == [
        "input in.txt changed since the failed run"
    ]
    assert [str(r) for r in explain(None, now, failed)] == [
        "input in.txt changed since the failed run"
    ]
    assert [str(r) for r in explain(None, now)] == ["never built"]


@pytest.mark.parametrize(
    ("exc", "said"),
    [
        (sqlite3.OperationalError("database or disk is full"), "no space left on device at {dot}"),
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on device at {dot}"),
        (sqlite3.DatabaseError("database disk image is malformed"), "{dot} is damaged"),
        (PermissionError(errno.EACCES, "Permission denied", "/x/y"), "cannot use /x/y"),
        (OSError(errno.EIO, "Input/output error", "/x/z"), "error: [Errno 5] Input/output"),
    ],
)
def test_the_machine_saying_no_anywhere_is_an_error_not_a_traceback(
    project: Callable[..., Proj], monkeypatch: pytest.MonkeyPatch, exc: Exception, said: str
) -> None:
    proj = project(ONE, {"in.txt": "hi\n"})
    if isinstance(exc, sqlite3.Error):
        exc.sqlite_errorcode = 13 if "full" in str(exc) else 11  # type: ignore[attr-defined]

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise exc

    monkeypatch.setattr(api, "status", refuse)
    out = proj.cli("status", code=1).output
    assert TRACEBACK not in out
    assert said.format(dot=proj.path(".pipemake")) in out, out


def test_values_nested_too_deeply_are_refused_with_the_line(project: Callable[..., Proj]) -> None:
    deep = "[" * 150 + "]" * 150
    proj = project(ONE.replace("name: one", f"name: one\nvars: {{x: {deep}}}"), {"in.txt": "x"})
    out = proj.cli("validate", code=2).output
    assert "pipemake.yaml:2: values are nested 152 levels deep; the limit is 100" in out
    assert TRACEBACK not in out
    with pytest.raises(YamlTooBig, match="nested"):
        load_yaml("a: " + "[" * 400 + "]" * 400)  # deeper than the constructor can recurse
    assert isinstance(load_yaml("a: " + "[" * 90 + "]" * 90)["a"], list)

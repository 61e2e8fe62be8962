"""The dask executor against a real cluster: a ``dask scheduler`` and two ``dask worker``
processes on 127.0.0.1, started by the tests (``--no-nanny``, so a worker's pid is the
process the test started, and killing it kills the worker)."""

from __future__ import annotations

import contextlib
import filecmp
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import TRACEBACK, Proj, wait_for

# slow (each test starts a dask scheduler and workers): `pytest -m "not slow"` skips them; CI runs everything
pytestmark = pytest.mark.slow

distributed = pytest.importorskip("distributed")

import pipemake  # noqa: E402
from pipemake import api  # noqa: E402
from pipemake.events import Bus  # noqa: E402
from pipemake.executors.dask import check_address, dask_resources  # noqa: E402
from pipemake.executors.dask_worker import probe  # noqa: E402

DASK = Path(sys.executable).parent / "dask"


@dataclass
class Cluster:
    """A scheduler and its workers, each a process of ours."""

    address: str
    scheduler: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def pids(self) -> set[int]:
        return {w.pid for w in self.workers}

    def stop(self) -> None:
        for p in [*self.workers, self.scheduler]:
            if p.poll() is None:
                p.kill()
            p.wait(10)


def _start(tmp: Path, workers: list[dict[str, str]]) -> Cluster:
    """A scheduler and one worker per entry of ``workers`` (its extra ``--resources`` under
    "resources", its environment under "env")."""
    tmp.mkdir(parents=True, exist_ok=True)
    info = tmp / "scheduler.json"
    quiet = subprocess.DEVNULL
    sched = subprocess.Popen(
        [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(info)],
        stdout=quiet, stderr=quiet, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: sched.poll() is not None or (info.exists() and info.stat().st_size > 0),
                 60, "the scheduler")  # fmt: skip
    except AssertionError:
        sched.kill()
        raise
    assert sched.poll() is None, "the dask scheduler did not start"
    cluster = Cluster(json.loads(info.read_text())["address"], sched)
    for spec in workers:
        _add_worker(cluster, spec)
    try:
        with distributed.Client(cluster.address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(len(workers), timeout=60)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _add_worker(cluster: Cluster, spec: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start one more worker of ``cluster`` (``spec`` as for :func:`_start`); it joins in
    its own time."""
    args = [str(DASK), "worker", cluster.address, "--host", "127.0.0.1", "--nthreads", "1",
            "--no-nanny", "--no-dashboard"]  # fmt: skip
    if spec.get("resources"):
        args += ["--resources", spec["resources"]]
    env = {**os.environ, **json.loads(spec.get("env", "{}"))}
    quiet = subprocess.DEVNULL
    worker = subprocess.Popen(args, stdout=quiet, stderr=quiet, env=env, start_new_session=True)
    cluster.workers.append(worker)
    return worker


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A plain worker and a worker offering one GPU (card 7, by its environment)."""
    c = _start(
        tmp_path_factory.mktemp("dask"),
        [{}, {"resources": "GPU=1", "env": json.dumps({"CUDA_VISIBLE_DEVICES": "7"})}],
    )
    yield c
    c.stop()


def _items(n: int) -> dict[str, str]:
    return {f"data/f{i:03d}.txt": f"item {i}\n" * (i + 1) for i in range(n)}


#: each item notes the pid of the worker running it ($PPID: the task's shell's parent) and
#: the cards it sees, in a file of its own outside the outputs
WHO = """
name: who
stages:
  - id: each
    type: shell
    foreach: src
{extra}    config:
      cmd: 'echo "$PPID ${{{{CUDA_VISIBLE_DEVICES-unset}}}}" >> runs/{{item.stem}}.who; {cmd}'
      inputs: {{src: data}}
      outputs: {{o: build/each}}
"""
UPPER = "tr a-z A-Z < {inputs.src} > {outputs.o}/{item.name}"


def _who(proj: Proj) -> dict[str, list[tuple[int, str]]]:
    out = {}
    for p in sorted(proj.path("runs").glob("*.who")):
        rows = [line.split(" ") for line in p.read_text().splitlines()]
        out[p.stem] = [(int(pid), cuda) for pid, cuda in rows]
    return out


def test_help_and_the_api_import_no_dask() -> None:
    code = (
        "import sys, pipemake.cli, pipemake.api, pipemake.executors; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    r = subprocess.run(
        [sys.executable, "-m", "pipemake", "build", "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "--scheduler" in r.stdout and "dask-local" in r.stdout


def test_addresses_and_resources_map_onto_dask() -> None:
    assert check_address("127.0.0.1:8786") == "tcp://127.0.0.1:8786"
    assert check_address("tls://sched.example:8786") == "tls://sched.example:8786"
    for bad in ("nonsense", "tcp://host", "http://h:1", "tcp://h:port"):
        with pytest.raises(pipemake.UsageError):
            check_address(bad)
    asked = {"gpu": 1, "mem_gb": 2, "cpus": 4, "tpu": 1, "none": 0}
    assert dask_resources(asked, set()) == {"GPU": 1, "tpu": 1}
    assert dask_resources(asked, {"MEMORY", "CPU"}) == {
        "GPU": 1, "MEMORY": 2e9, "CPU": 4, "tpu": 1
    }  # fmt: skip


def test_the_probe_says_what_a_worker_lacks(tmp_path: Path) -> None:
    from importlib import metadata

    version = metadata.version("pipemake")
    token = tmp_path / "proj" / ".pipemake" / "tmp" / "dask-probe-x"
    said = probe(str(token), "token", str(tmp_path), version)
    assert said is not None and f"does not see the project at {tmp_path / 'proj'}" in said
    assert "share the project's filesystem at the same path" in said
    token.parent.mkdir(parents=True)
    token.write_text("another token")
    assert "its filesystem is not the build's" in (probe(str(token), "token", "/", version) or "")
    token.write_text("token")
    assert probe(str(token), "token", str(tmp_path), version) is None
    said = probe(str(token), "token", str(tmp_path), "0.0.0-other")
    assert said is not None and "the build 0.0.0-other" in said


def test_a_scheduler_nobody_listens_at_is_a_clear_error(project: Callable[..., Proj]) -> None:
    proj = project(WHO.format(extra="", cmd=UPPER), _items(2))
    r = proj.sub("build", "--executor", "dask", "--scheduler", "tcp://127.0.0.1:9", code=1)
    assert "cannot reach the dask scheduler at tcp://127.0.0.1:9" in r.stderr
    assert TRACEBACK not in r.stderr + r.stdout
    assert not proj.exists("build/each") and _who(proj) == {}
    r = proj.sub("build", "--executor", "dask", code=2, env={"PIPEMAKE_DASK_SCHEDULER": ""})
    assert "--scheduler tcp://HOST:PORT" in r.stderr and TRACEBACK not in r.stderr
    r = proj.sub("build", "--executor", "dask", "--scheduler", "here", code=2)
    assert "not a dask scheduler address" in r.stderr
    r = proj.sub("build", "--scheduler", "tcp://127.0.0.1:9", code=2)
    assert "--scheduler is for --executor dask" in r.stderr
    r = proj.sub("build", "--executor", "dusk", code=2)
    assert "unknown executor 'dusk'" in r.stderr and TRACEBACK not in r.stderr


def test_an_address_where_no_scheduler_answers_is_a_clear_error(
    project: Callable[..., Proj], cluster: Cluster
) -> None:
    proj = project(WHO.format(extra="", cmd=UPPER), _items(2))
    with socket.socket() as server:  # answers like a web server
        server.bind(("127.0.0.1", 0))
        server.listen(4)

        def answer() -> None:
            with contextlib.suppress(OSError):
                while True:
                    conn, _ = server.accept()
                    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello")
                    conn.close()

        threading.Thread(target=answer, daemon=True).start()
        web = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        r = proj.sub("build", "--executor", "dask", "--scheduler", web, code=1, timeout=30)
    assert f"what answers at {web} is not a dask scheduler" in r.stderr
    with distributed.Client(cluster.address, timeout=30, set_as_default=False) as client:
        worker = sorted(client.scheduler_info()["workers"])[0]
    r = proj.sub("build", "--executor", "dask", "--scheduler", worker, code=1)
    assert f"{worker} is a dask Worker, not its scheduler" in r.stderr
    assert TRACEBACK not in r.stderr and _who(proj) == {}


def test_items_spread_over_both_workers_with_the_bytes_of_a_local_build(
    project: Callable[..., Proj], cluster: Cluster
) -> None:
    files = _items(40)
    proj = project(WHO.format(extra="", cmd=UPPER), files)
    r = proj.sub("build", "-j", "2", "--executor", "dask", "--no-progress",
                 env={"PIPEMAKE_DASK_SCHEDULER": cluster.address})  # fmt: skip
    who = _who(proj)
    assert sorted(who) == [f"f{i:03d}" for i in range(40)]
    pids = {pid for rows in who.values() for pid, _ in rows}
    assert pids == cluster.pids(), (pids, cluster.pids())  # both workers ran items
    assert all(len(rows) == 1 for rows in who.values())  # each item once
    assert "40 run" in r.stderr and TRACEBACK not in r.stderr

    local = project(WHO.format(extra="", cmd=UPPER), files, name="local")
    local.sub("build", "-j", "2", "--no-progress")
    cmp = filecmp.dircmp(proj.path("build/each"), local.path("build/each"))
    assert sorted(cmp.same_files) == sorted(f"f{i:03d}.txt" for i in range(40))
    assert not (cmp.left_only or cmp.right_only or cmp.diff_files)
    _, mismatch, errors = filecmp.cmpfiles(
        proj.path("build/each"), local.path("build/each"), cmp.same_files, shallow=False
    )
    assert not mismatch and not errors

    # the run log says what a local build's says, event for event kind
    def kinds(p: Proj) -> list[str]:
        log = sorted(p.path(".pipemake/runs").glob("2*.jsonl"))[-1]
        return sorted({json.loads(line)["event"] for line in log.read_text().splitlines()})

    assert kinds(proj) == kinds(local)
    r = proj.sub("build", "--executor", "dask", "--scheduler", cluster.address, "--no-progress")
    assert all(len(rows) == 1 for rows in _who(proj).values())  # up to date: nothing ran
    assert "-j 1: one task at a time on 2 dask workers; pass -j 2" in r.stderr


@pytest.mark.slow
def test_dask_local_builds_on_a_cluster_of_its_own_and_ends_it(
    project: Callable[..., Proj],
) -> None:
    files = _items(30)
    proj = project(WHO.format(extra="", cmd=UPPER), files)
    r = proj.sub("build", "-j", "2", "--executor", "dask-local", "--no-progress")
    who = _who(proj)
    pids = {pid for rows in who.values() for pid, _ in rows}
    assert len(who) == 30 and len(pids) == 2 and os.getpid() not in pids
    assert not any(_alive(pid) for pid in pids)  # its workers ended with the build
    assert proj.read("build/each/f004.txt") == "ITEM 4\n" * 5
    assert "30 run" in r.stderr and TRACEBACK not in r.stderr
    r = proj.sub("build", "--executor", "dask-local", "--dashboard", "--no-progress")
    assert "dask dashboard: http://127.0.0.1:" in r.stderr
    assert all(len(rows) == 1 for rows in _who(proj).values())  # up to date


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_gpu_stage_runs_only_on_the_gpu_worker_and_sees_its_card(
    project: Callable[..., Proj], cluster: Cluster
) -> None:
    gpu_worker = cluster.workers[1].pid
    extra = "    resources: {gpu: 1}\n"
    proj = project(WHO.format(extra=extra, cmd=UPPER), _items(12))
    proj.sub("build", "-j", "2", "--executor", "dask", "--scheduler", cluster.address)
    who = _who(proj)
    assert len(who) == 12
    assert {row for rows in who.values() for row in rows} == {(gpu_worker, "7")}

    # a stage without a GPU request sees no card, wherever it runs
    cpu = project(WHO.format(extra="", cmd=UPPER), _items(20), name="cpu")
    cpu.sub("build", "-j", "2", "--executor", "dask", "--scheduler", cluster.address)
    rows = {row for rows in _who(cpu).values() for row in rows}
    assert (gpu_worker, "") in rows and (gpu_worker, "7") not in rows


def test_a_resource_no_worker_offers_fails_at_once_saying_what_to_start(
    project: Callable[..., Proj], cluster: Cluster
) -> None:
    extra = "    resources: {tpu: 2}\n    retries: 3\n"
    proj = project(WHO.format(extra=extra, cmd=UPPER), _items(3))
    r = proj.sub("build", "--executor", "dask", "--scheduler", cluster.address, "--no-progress",
                 code=1)  # fmt: skip
    assert "no dask worker offers tpu=2" in r.stderr
    assert '--resources "tpu=2"' in r.stderr and TRACEBACK not in r.stderr
    assert "retry" not in r.stderr.lower() and _who(proj) == {}


def test_ctrl_c_cancels_this_builds_tasks_and_nothing_else_of_the_cluster(
    project: Callable[..., Proj], cluster: Cluster
) -> None:
    proj = project(WHO.format(extra="", cmd="sleep 0.3; " + UPPER), _items(12))
    with distributed.Client(cluster.address, timeout=30, set_as_default=False) as other:
        release = distributed.Event("release-the-other-client", client=other)
        theirs = other.submit(lambda: release.wait(60), key="the-other-clients-task")
        wait_for(lambda: any(other.processing().values()), 30, "the other client's task")
        build = proj.popen("build", "-j", "2", "--executor", "dask", "--scheduler",
                           cluster.address, "--grace", "0", "--no-progress")  # fmt: skip
        wait_for(lambda: len(_who(proj)) >= 1, 60, "an item running")
        build.send_signal(signal.SIGINT)
        _, err = build.communicate(timeout=60)
        assert build.returncode == 130, err
        assert TRACEBACK not in err and len(_who(proj)) < 12
        time.sleep(1)  # the build's cancels have reached the scheduler by now
        assert theirs.status == "pending"  # still running, not cancelled
        release.set()
        assert theirs.result(timeout=30) is True
    # building again resumes: the items not committed run, and the build completes
    proj.sub("build", "-j", "2", "--executor", "dask", "--scheduler", cluster.address)
    assert sorted(_who(proj)) == [f"f{i:03d}" for i in range(12)]


def test_a_changed_python_function_runs_its_new_code_on_workers_that_ran_the_old(
    project: Callable[..., Proj], cluster: Cluster
) -> None:
    proj = project(
        """
        name: code
        stages:
          - id: each
            type: python
            foreach: src
            config:
              function: "dask_code:work"
              inputs: {src: data}
              outputs: {o: build/each}
        """,
        _items(8) | {"dask_code.py": CODE.format(word="old")},
    )
    args = ("build", "-j", "2", "--executor", "dask", "--scheduler", cluster.address)
    proj.sub(*args)
    assert proj.read("build/each/f001.txt") == "old\n"
    proj.write("dask_code.py", CODE.format(word="brand new"))
    proj.sub(*args)
    assert {p.read_text() for p in proj.path("build/each").iterdir()} == {"brand new\n"}


CODE = """
def work(ctx):
    (ctx.outputs["o"] / ctx.inputs["src"].name).write_text("{word}\\n")
"""


def test_a_timed_out_task_ends_its_command_on_the_worker_and_frees_it(
    project: Callable[..., Proj], cluster: Cluster
) -> None:
    proj = project(
        """
        name: hang
        stages:
          - id: hang
            type: shell
            timeout: 1
            config:
              cmd: 'sleep 60 & echo $! > runs/sleep.pid; wait; echo done > {outputs.o}'
              outputs: {o: build/hang.txt}
        """
    )
    r = proj.sub("build", "--executor", "dask", "--scheduler", cluster.address, code=1)
    assert "timed out after 1 s" in r.stderr and TRACEBACK not in r.stderr
    pid = int(proj.read("runs/sleep.pid"))
    wait_for(lambda: not _alive(pid), 20, "the command ended on its worker")
    # both workers take tasks again: none is held by the stopped task
    other = project(WHO.format(extra="", cmd=UPPER), _items(16), name="after")
    other.sub("build", "-j", "2", "--executor", "dask", "--scheduler", cluster.address)
    assert {pid for rows in _who(other).values() for pid, _ in rows} == cluster.pids()


SETUP_RULE = '''
import os
from pathlib import Path
from typing import Any
from typing import ClassVar

from pipemake.rule import Input, Output, Rule


class Counted(Rule):
    """Notes each setup and each item with the worker's pid."""

    name = "counted_setup"
    inputs: ClassVar = {"input_dir": Input(kind="dir")}
    outputs: ClassVar = {"output_dir": Output(kind="dir")}

    def setup(self, ctx):
        with open(ctx.root / "runs" / "setup.log", "a") as f:
            f.write(f"{os.getpid()}\\n")
        return "model"

    def run_item(self, ctx, item):
        assert ctx.state == "model"
        with open(ctx.root / "runs" / "items.log", "a") as f:
            f.write(f"{os.getpid()}\\n")
        text = Path(ctx.inputs["input_dir"]).read_text()
        (ctx.outputs["output_dir"] / item.name).write_text(text[::-1])
'''


def test_a_rule_sets_up_once_per_worker_not_per_task(
    project: Callable[..., Proj], cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    proj = project(
        """
        name: setup
        stages:
          - id: rev
            type: counted_setup_dask
            foreach: input_dir
            config: {input_dir: data, output_dir: build/rev}
        """,
        _items(40),
    )
    proj.write("dask_counted_rule.py", textwrap.dedent(SETUP_RULE))
    monkeypatch.syspath_prepend(str(proj.root))
    module = importlib.import_module("dask_counted_rule")
    pipemake.register_rule("counted_setup_dask", module.Counted)
    with api.project_of(proj.root, None) as p:
        report = api.build(
            p, jobs=2, executor="dask", executor_options={"scheduler": cluster.address}
        )
    assert report.ran == ["rev"]
    items = proj.read("runs/items.log").split()
    setups = proj.read("runs/setup.log").split()
    assert len(items) == 40 and set(items) <= {str(pid) for pid in cluster.pids()}
    assert sorted(setups) == sorted(set(items))  # one setup per worker that ran items
    assert proj.read("build/rev/f003.txt") == ("item 3\n" * 4)[::-1]


LIVE = """
import time

def work(ctx):
    ctx.progress(1, 3)
    go = ctx.root / "runs" / "go"
    for _ in range(600):  # until the build has shown the first progress (or 30 s)
        if go.exists():
            break
        time.sleep(0.05)
    ctx.progress(3, 3)
    (ctx.outputs["o"]).write_text("seen" if go.exists() else "never seen")
"""


def test_a_whole_stage_task_reports_progress_while_it_runs(
    project: Callable[..., Proj], cluster: Cluster
) -> None:
    proj = project(
        """
        name: live
        stages:
          - id: one
            type: python
            config:
              function: "live_work:work"
              outputs: {o: build/one.txt}
        """,
        {"live_work.py": LIVE},
    )
    seen: list[tuple[int, int]] = []

    def on_event(event: Any) -> None:
        if event.kind == "progress" and event.stage == "one":
            seen.append((event.data["done"], event.data["total"]))
            proj.write("runs/go", "")

    bus = Bus()
    bus.subscribe(on_event)
    with api.project_of(proj.root, None) as p:
        api.build(p, executor="dask", executor_options={"scheduler": cluster.address}, bus=bus)
    assert proj.read("build/one.txt") == "seen"  # the first progress came while it ran
    assert seen[0] == (1, 3) and seen[-1] == (3, 3)


@pytest.mark.slow
def test_a_worker_killed_mid_build_and_a_lost_scheduler(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    c = _start(tmp_path / "c", [{}, {}])
    try:
        slow = "sleep 0.4; " + UPPER
        proj = project(WHO.format(extra="", cmd=slow), _items(16))
        build = proj.popen("build", "-j", "2", "--executor", "dask", "--scheduler", c.address,
                           "--no-progress")  # fmt: skip
        wait_for(lambda: len(_who(proj)) >= 3, 60, "items running")
        victim = c.workers[0]
        victim.kill()  # SIGKILL mid-task: its batch runs again on the other worker
        victim.wait(10)
        out, err = build.communicate(timeout=120)
        assert build.returncode == 0, err
        built = sorted(p.name for p in proj.path("build/each").iterdir())
        assert built == sorted(f"f{i:03d}.txt" for i in range(16))
        assert proj.read("build/each/f005.txt") == ("ITEM 5\n" * 6)
        who = _who(proj)
        assert sorted(who) == [f"f{i:03d}" for i in range(16)]
        assert {pid for rows in who.values() for pid, _ in rows} <= c.pids()
        assert "16 run" in err and TRACEBACK not in err  # recorded once each

        # the scheduler goes away in the middle of the next build
        proj2 = project(WHO.format(extra="", cmd=slow), _items(24), name="lost")
        build = proj2.popen("build", "-j", "1", "--executor", "dask", "--scheduler", c.address,
                            "--no-progress")  # fmt: skip
        wait_for(lambda: len(_who(proj2)) >= 8, 60, "items running")
        c.scheduler.send_signal(signal.SIGKILL)
        out, err = build.communicate(timeout=120)
        assert build.returncode == 1, err
        assert f"lost the dask scheduler at {c.address}" in err and TRACEBACK not in err
        before = _who(proj2)
        # building again (here, locally) runs only what did not commit
        proj2.sub("build", "-j", "4", "--no-progress")
        after = _who(proj2)
        assert sorted(after) == [f"f{i:03d}" for i in range(24)]
        reran = [s for s in before if len(after[s]) > len(before[s])]
        assert len(reran) < len(before)  # the batches that committed did not run again
        assert len(list(proj2.path("build/each").iterdir())) == 24
    finally:
        c.stop()

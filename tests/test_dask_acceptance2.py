"""The dask executor's answers to an acceptance review: a scheduler that stops answering
(and a second Ctrl-C meanwhile), the workers leaving mid-build, a worker lacking a rule's
package or the project (named by its address), and ``dask-local``'s HTTP pages off unless
``--dashboard``. Each test starts a small cluster of its own (``--no-nanny`` workers, so
killing the process kills the worker)."""

from __future__ import annotations

import importlib
import json
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import TRACEBACK, Proj, wait_for

pytestmark = pytest.mark.slow  # each test starts a dask cluster

distributed = pytest.importorskip("distributed")

from test_dask_executor import UPPER, WHO, _add_worker, _items, _start, _who  # noqa: E402

import pipemake  # noqa: E402
from pipemake import api  # noqa: E402
from pipemake.errors import BuildFailed  # noqa: E402
from pipemake.events import Bus, Event  # noqa: E402
from pipemake.executors import dask as pm_dask  # noqa: E402
from pipemake.executors.dask_worker import probe, read_record  # noqa: E402
from pipemake.progress import describe  # noqa: E402

SLOW = "sleep 0.3; " + UPPER


def _build(proj: Proj, address: str, *extra: str, env: dict[str, str] | None = None) -> Any:
    return proj.popen("build", "-j", "1", "--executor", "dask", "--scheduler", address,
                      "--no-progress", *extra, env=env)  # fmt: skip


def test_a_scheduler_that_stops_answering_ends_the_build_and_a_second_ctrl_c_at_once(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    c = _start(tmp_path / "c", [{}])
    try:
        proj = project(WHO.format(extra="", cmd=SLOW), _items(20))
        build = _build(proj, c.address, env={"PIPEMAKE_DASK_TIMEOUT": "2"})
        wait_for(lambda: len(_who(proj)) >= 1, 60, "an item running")
        c.scheduler.send_signal(signal.SIGSTOP)  # frozen: connections open, no answers
        _, err = build.communicate(timeout=60)
        assert build.returncode == 1, err
        assert f"lost the dask scheduler at {c.address} (it did not answer within 2 s)" in err
        assert TRACEBACK not in err

        # frozen while a build stops: the second Ctrl-C ends it at once, whatever dask does
        c.scheduler.send_signal(signal.SIGCONT)
        other = project(WHO.format(extra="", cmd=SLOW), _items(20), name="other")
        build = _build(other, c.address)
        wait_for(lambda: len(_who(other)) >= 1, 60, "an item running")
        c.scheduler.send_signal(signal.SIGSTOP)
        build.send_signal(signal.SIGINT)
        time.sleep(0.5)  # two signals at once would read as one
        build.send_signal(signal.SIGINT)
        _, err = build.communicate(timeout=20)  # without the fix: still waiting after 60 s
        assert build.returncode == 130, err
        assert TRACEBACK not in err
    finally:
        c.scheduler.send_signal(signal.SIGCONT)
        c.stop()


def test_items_a_batch_finished_before_its_scheduler_froze_are_kept(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """The scheduler freezes while a batch of 8 items runs: the batch's answer never
    arrives, but the items its worker finished are committed all the same, one running
    then fails naming the lost scheduler, those never started are said not run, and the
    next build (here a local one) runs only those."""
    c = _start(tmp_path / "c", [{"env": json.dumps({"PM_SLOW": "0.3"})}])
    try:
        # the worker's items take 0.3 s each; the environment is not part of a key
        proj = project(WHO.format(extra="", cmd="sleep ${{PM_SLOW:-0}}; " + UPPER), _items(64))
        build = _build(proj, c.address, env={"PIPEMAKE_DASK_TIMEOUT": "3"})
        # -j 1, 64 items: batches of 8; the 12th item started: the second batch is running
        wait_for(lambda: len(_who(proj)) >= 12, 60, "the second batch running")
        c.scheduler.send_signal(signal.SIGSTOP)
        _, err = build.communicate(timeout=60)
        assert build.returncode == 1, err
        kept = int(re.search(r"the other (\d+) are kept", err)[1])  # type: ignore[index]
        assert kept >= 11, err  # the first batch's 8 and those of the second that finished
        # an item running when it froze fails; those never started are not run, not failed
        failed = err.count(f" FAILED: lost the dask scheduler at {c.address}")
        assert failed <= 1, err
        if failed:
            said = f"1 of 64 item(s) failed; {63 - kept} not run (the next build runs them)"
        else:  # (the worker had finished its batch: the next one never started)
            said = (
                f"{64 - kept} of 64 item(s) not run (the next build runs them): lost the dask "
                f"scheduler at {c.address}"
            )
        assert said in err, err
        again = proj.sub("build", "--no-progress")
        assert f"{64 - kept} of 64 items to run" in again.stderr
        ran = _who(proj)
        assert sorted(ran) == sorted(f"f{i:03d}" for i in range(64))  # every item ran
        assert sum(len(rows) > 1 for rows in ran.values()) <= 1  # at most one in flight twice
        assert proj.read("build/each/f063.txt") == "ITEM 63\n" * 64
    finally:
        c.scheduler.send_signal(signal.SIGCONT)
        c.stop()


def test_a_lost_scheduler_fails_the_running_item_and_says_the_unstarted_not_run(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """The scheduler dies while item f005 runs (-j 1, 16 items: tasks of two): f000-f004
    are kept, f005 fails naming the lost scheduler, the ten never started are not run (not
    failed), and the counts add up to the items."""
    c = _start(tmp_path / "c", [{}])
    try:
        slow_f005 = "if [ {item.stem} = f005 ]; then sleep 20; fi; " + UPPER
        proj = project(WHO.format(extra="", cmd=slow_f005), _items(16))
        build = _build(proj, c.address, env={"PIPEMAKE_DASK_TIMEOUT": "2"})
        wait_for(lambda: "f005" in _who(proj), 60, "item f005 running")
        c.scheduler.send_signal(signal.SIGKILL)
        _, err = build.communicate(timeout=60)
        assert build.returncode == 1, err
        assert TRACEBACK not in err
        assert f"each: item f005.txt FAILED: lost the dask scheduler at {c.address}" in err, err
        assert err.count(" FAILED: lost the dask scheduler") == 1, err  # no line per item
        said = (
            "1 of 16 item(s) failed; 10 not run (the next build runs them); the other 5 are "
            "kept and do not run again. First: item f005.txt: lost the dask scheduler"
        )
        assert said in err, err
        assert sorted(_who(proj)) == [f"f{i:03d}" for i in range(6)]  # none started after
    finally:
        c.stop()


def test_an_item_that_kills_its_dask_worker_fails_alone(
    project: Callable[..., Proj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item f003 kills the worker running it; dask gives up on its task at once (no
    retries allowed here). As with a local worker's death, the items its task finished are
    kept, f003 fails, and the ones it never started run in a task of their own on the
    other worker: nothing else fails."""
    monkeypatch.setenv("DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", "0")
    c = _start(tmp_path / "c", [{}, {}])
    try:
        killer = "if [ {item.stem} = f003 ]; then kill -9 $PPID; fi; " + UPPER
        proj = project(WHO.format(extra="", cmd=killer), _items(64))
        _, err = _build(proj, c.address).communicate(timeout=120)
        assert TRACEBACK not in err
        assert "each: item f003.txt FAILED: the dask workers running it died" in err, err
        assert err.count(" FAILED: the dask workers") == 1, err
        assert "1 of 64 item(s) failed; the other 63 are kept" in err, err
        ran = _who(proj)  # every other item ran once, those f003's task never started too
        assert sorted(ran) == [f"f{i:03d}" for i in range(64)]
        assert all(len(rows) == 1 for item, rows in ran.items() if item != "f003"), ran
    finally:
        c.stop()


def test_a_batchs_record_of_finished_items_keeps_only_whole_well_formed_ones(
    tmp_path: Path,
) -> None:
    """What the build reads back of a batch whose answer never came: a line the worker was
    cut off writing, an item not of the batch, and a result of another shape are left out
    (they run again), never committed or a crash of the build."""
    good = {"outputs": {"o": {"kind": "dir", "hash": "0" * 32, "entries": []}}, "values": {}}
    lines = [
        ["a.txt", good],
        ["b.txt", {"error": "ValueError: bad"}],
        ["c.txt", {"hash": "1" * 32, "kind": "json"}],
        ["d.txt", {"outputs": {"o": {"hash": "../../etc"}}, "values": {}}],
        ["e.txt", {"values": {}}],
        ["elsewhere.txt", good],
    ]
    record = tmp_path / "t.items"
    text = "".join(json.dumps(line) + "\n" for line in lines)
    record.write_text(text + json.dumps(["f.txt", good])[:20])  # the last one cut short
    wanted = {"a.txt", "b.txt", "c.txt", "d.txt", "e.txt", "f.txt"}
    assert sorted(read_record(str(record), wanted)) == ["a.txt", "b.txt", "c.txt"]
    assert read_record(str(tmp_path / "none.items"), wanted) == {}


def test_a_frozen_scheduler_at_the_start_is_said_to_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pm_dask, "CONNECT_TIMEOUT", 0.5)
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(pm_dask.SchedulerUnreachable) as err:
            pm_dask._identify(address)
    assert f"what listens at {address} did not answer within 0.5 s" in str(err.value)


def test_the_only_worker_leaving_mid_build_stops_it_after_the_worker_wait(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    c = _start(tmp_path / "c", [{}])
    try:
        proj = project(WHO.format(extra="", cmd="sleep 2; " + UPPER), _items(2))
        build = _build(proj, c.address, env={"PIPEMAKE_DASK_WORKER_WAIT": "2"})
        wait_for(lambda: len(_who(proj)) >= 1, 60, "an item running")
        c.workers[0].kill()
        c.workers[0].wait(10)
        _, err = build.communicate(timeout=60)  # without the fix: waits for ever
        assert build.returncode == 1, err
        assert f"no dask worker left at the scheduler {c.address} for 2 s" in err
        assert "1 of 2 item(s) failed; 1 not run (the next build runs them)" in err, err
        assert f"`dask worker {c.address} --nthreads 1`" in err and TRACEBACK not in err
        assert "retry" not in err.lower()
    finally:
        c.stop()


#: a PIL that is there but cannot be imported, as on a worker without the prep extra
FAKE_PIL = "raise ModuleNotFoundError(\"No module named 'PIL'\", name='PIL')\n"
PREP = """
name: prep
stages:
  - id: prep
    type: training_data_prep
    config:
      input_dirs: [data/cluster_000]
      output_dir: build/dataset
      resolution: 64
      trigger: tok
"""


def test_a_worker_is_named_when_it_lacks_a_rules_package_or_the_project(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    fake = tmp_path / "fake"
    (fake / "PIL").mkdir(parents=True)
    (fake / "PIL" / "__init__.py").write_text(FAKE_PIL)
    c = _start(tmp_path / "c", [{"env": json.dumps({"PYTHONPATH": str(fake)})}])
    try:
        with distributed.Client(c.address, timeout=30, set_as_default=False) as client:
            (worker,) = client.scheduler_info()["workers"]
            from importlib import metadata

            nowhere = tmp_path / "nowhere" / ".pipemake" / "tmp" / "probe"
            said = client.run(probe, str(nowhere), "t", str(tmp_path), metadata.version("pipemake"))
        assert f"dask worker {worker} (host " in said[worker]
        assert f"does not see the project at {tmp_path / 'nowhere'}" in said[worker]

        proj = project(PREP, {"data/cluster_000/a.png": b"not read: the check comes first"})
        r = proj.sub("build", "--executor", "dask", "--scheduler", c.address, "--no-progress",
                     code=1)  # fmt: skip
        assert "rule 'training_data_prep' needs packages that dask worker" in r.stderr
        assert f"{worker} cannot import: PIL (ModuleNotFoundError" in r.stderr
        assert "pip install 'pipemake[prep]'" in r.stderr and TRACEBACK not in r.stderr
        assert not proj.exists("build/dataset")
    finally:
        c.stop()


#: a rule needing a package (``pm_late_need``) that only some workers have; each item
#: notes its worker's pid, then takes ``PM_SLOW`` seconds
LATE_RULE = """
import os
import time
from typing import ClassVar

from pipemake.rule import Input, Output, Rule


class Needy(Rule):
    name = "needy"
    inputs: ClassVar = {"input_dir": Input(kind="dir")}
    outputs: ClassVar = {"output_dir": Output(kind="dir")}
    requires: ClassVar = {"pm_late_need": "pm-late-need"}

    def run_item(self, ctx, item):
        with open(ctx.root / "runs" / "items.log", "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(float(os.environ.get("PM_SLOW", "0")))
        import pm_late_need

        (ctx.outputs["output_dir"] / item.name).write_text(pm_late_need.WORD)
"""


def test_a_worker_joining_mid_build_is_checked_for_the_rules_packages_before_its_task(
    project: Callable[..., Proj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build checked its only worker, which has the rule's package; a worker without
    it joins and the first leaves: the newcomer's tasks fail naming it, the module and the
    pip line, not with the rule's own ModuleNotFoundError."""
    have = tmp_path / "have"
    have.mkdir()
    (have / "pm_late_need.py").write_text("WORD = 'ok'\n")
    c = _start(tmp_path / "c", [{"env": json.dumps({"PYTHONPATH": str(have), "PM_SLOW": "1"})}])
    try:
        proj = project(
            """
            name: late
            stages:
              - id: each
                type: needy
                foreach: input_dir
                config: {input_dir: data, output_dir: build/each}
            """,
            _items(8),
        )
        proj.write("late_needy_rule.py", LATE_RULE)
        monkeypatch.syspath_prepend(str(proj.root))
        monkeypatch.syspath_prepend(str(have))  # the build's own check: it has the package
        pipemake.register_rule("needy", importlib.import_module("late_needy_rule").Needy)
        first = c.workers[0]

        def swap() -> None:  # once the first item runs there: a newcomer, then no first
            wait_for(lambda: proj.exists("runs/items.log"), 60, "the first item")
            _add_worker(c, {})
            with distributed.Client(c.address, timeout=30, set_as_default=False) as client:
                client.wait_for_workers(2, timeout=60)
                (late,) = [a for a in client.scheduler_info()["workers"] if a != first_address]
            joined.append(late)
            first.kill()

        with distributed.Client(c.address, timeout=30, set_as_default=False) as client:
            (first_address,) = client.scheduler_info()["workers"]
        joined: list[str] = []
        swapper = threading.Thread(target=swap, daemon=True)
        swapper.start()
        messages: list[str] = []
        bus = Bus()
        bus.subscribe(lambda e: messages.append(str(e.data)))
        with api.project_of(proj.root, None) as p, pytest.raises(BuildFailed):
            api.build(p, executor="dask", executor_options={"scheduler": c.address}, bus=bus)
        swapper.join(60)
        said = "\n".join(messages)
        (late,) = joined
        assert f"rule 'needy' needs packages that dask worker {late} cannot import: " in said
        assert "pm_late_need (ModuleNotFoundError" in said and "pip install pm-late-need" in said
        assert "No module named 'pm_late_need'\n" not in said and TRACEBACK not in said
    finally:
        c.stop()


def _page(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_dask_local_serves_no_page_without_dashboard_and_notes_have_no_stage() -> None:
    ex = pm_dask.DaskLocalExecutor(jobs=1)
    try:
        info = ex.client.scheduler_info()
        ports = [info["services"]["dashboard"]]
        ports += [w["services"]["dashboard"] for w in info["workers"].values()]
        assert 8787 not in ports and ex.notes == []
        for port in ports:
            for page in ("info/main/workers.html", "health", "metrics"):
                assert _page(f"http://127.0.0.1:{port}/{page}") == 404
    finally:
        ex.close()
    ex = pm_dask.DaskLocalExecutor(jobs=1, dashboard=True)
    try:
        ((level, note),) = ex.notes
        link = note.split(": ", 1)[1]
        assert link.startswith("http://127.0.0.1:") and _page(link) == 200
    finally:
        ex.close()
    line = describe(Event("log", None, {"level": level, "text": note}))
    assert line == note  # no "None| " in front of the build's own notes
    assert describe(Event("log", "each", {"level": "warning", "text": "x"})) == "each| x"

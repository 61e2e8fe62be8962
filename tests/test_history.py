"""The event log and run history (issue 3): the JSON-lines schema under
``.pipemake/runs/``, ``--log-json``, ``list --runs`` and ``log [RUN]``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import CHAIN_STAGES, Proj

from pipemake import history

RUN_FINISHED_KEYS = {"ran", "restored", "up_to_date", "failed", "skipped", "duration"}


def _logs(p: Proj) -> list[Path]:
    runs = p.path(".pipemake/runs")
    return sorted(
        (f for f in runs.glob("*.jsonl") if f.name != "index.jsonl"),
        key=lambda f: f.stat().st_mtime,
    )


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _by_kind(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == kind]


def test_a_build_writes_one_json_lines_log_with_the_schema(chain: Proj, tmp_path: Path) -> None:
    extra = tmp_path / "out" / "events.jsonl"
    chain.cli("build", "--executor", "inline", "--log-json", str(extra))
    (log,) = _logs(chain)
    events = _events(log)
    assert extra.read_text() == log.read_text()  # --log-json writes the same lines
    for e in events:
        assert set(e) >= {"event", "stage", "time"}
        assert isinstance(e["time"], float)
    first, last = events[0], events[-1]
    assert first["event"] == "run_started" and first["stage"] is None
    assert first["run"] == log.stem and first["format"] == history.FORMAT
    assert first["pipeline"] == "chain"
    assert sorted(first["stages"]) == sorted(CHAIN_STAGES)
    assert set(first["expected"]) == set(CHAIN_STAGES)
    assert sorted(first["deps"]["report"]) == ["lines", "side"]
    assert first["jobs"] == 1 and first["per_item"] == {}
    assert last["event"] == "run_finished"
    assert set(last) >= RUN_FINISHED_KEYS
    assert sorted(last["ran"]) == sorted(CHAIN_STAGES)
    started = {e["stage"] for e in _by_kind(events, "stage_started")}
    assert started == set(CHAIN_STAGES)
    for e in _by_kind(events, "stage_finished"):
        assert e["duration"] >= 0
        assert "cpu" in e and "peak_rss_mb" in e
    times = [e["time"] for e in events]
    assert times == sorted(times)


def test_skipped_restored_and_failed_are_logged_with_their_reasons(project) -> None:
    p = project(
        """
        name: f
        version: 1
        stages:
          - id: good
            type: shell
            config:
              cmd: "cp {inputs.src} {outputs.out}"
              inputs: {src: data/a.txt}
              outputs: {out: build/good.txt}
          - id: bad
            type: shell
            config:
              cmd: "echo 'it broke' >&2; sh gate.sh && cp {inputs.src} {outputs.out}"
              inputs: {src: "{good.out}"}
              outputs: {out: build/bad.txt}
          - id: after
            type: shell
            config:
              cmd: "cp {inputs.src} {outputs.out}"
              inputs: {src: "{bad.out}"}
              outputs: {out: build/after.txt}
        """,
        {"data/a.txt": "a\n", "gate.sh": "exit 3\n"},
    )
    p.cli("build", "--executor", "inline", code=1)
    events = _events(_logs(p)[-1])
    (failed,) = _by_kind(events, "stage_failed")
    assert failed["stage"] == "bad" and "code 3" in failed["error"]
    (skipped,) = _by_kind(events, "stage_skipped")
    assert skipped["stage"] == "after" and skipped["reason"] == "upstream bad failed"
    assert any(e["event"] == "log" and "it broke" in e["text"] for e in events)
    assert events[-1]["failed"].keys() == {"bad"}

    p.write("gate.sh", "exit 0\n")
    p.cli("build", "--executor", "inline")
    events = _events(_logs(p)[-1])
    assert [e["stage"] for e in _by_kind(events, "stage_skipped")] == ["good"]
    assert _by_kind(events, "stage_skipped")[0]["reason"] == "up to date"

    p.cli("clean")
    p.cli("build", "--executor", "inline")
    events = _events(_logs(p)[-1])
    assert {e["stage"] for e in _by_kind(events, "stage_restored")} == {"good", "bad", "after"}
    assert all(e["reasons"] for e in _by_kind(events, "stage_restored"))


def test_retries_are_logged(project) -> None:
    p = project("""
        name: r
        version: 1
        stages:
          - id: flaky
            type: shell
            retries: 2
            retry_backoff: 0.01
            config:
              cmd: "echo x >> runs/flaky.count; test $(wc -l < runs/flaky.count) -ge 2 && echo ok > {outputs.o}"
              outputs: {o: build/o.txt}
        """)
    p.cli("build", "--executor", "inline")
    events = _events(_logs(p)[-1])
    (retry,) = _by_kind(events, "stage_retried")
    assert retry["stage"] == "flaky" and retry["attempt"] == 2 and retry["of"] == 3
    assert retry["delay"] >= 0 and "error" in retry
    assert len(_by_kind(events, "stage_finished")) == 1


FOREACH = """
name: fe
version: 1
stages:
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "cp {inputs.src} {outputs.out}/{item.name}"
      inputs: {src: data}
      outputs: {out: build/each}
"""


def test_foreach_progress_and_per_item_times_feed_the_next_run(project) -> None:
    p = project(FOREACH, {f"data/f{i}.txt": f"{i}\n" for i in range(4)})
    p.cli("build", "--executor", "inline")
    events = _events(_logs(p)[-1])
    progress = _by_kind(events, "progress")
    assert progress and all(e["unit"] == "items" and e["total"] == 4 for e in progress)
    assert progress[-1]["done"] == 4
    (done,) = _by_kind(events, "stage_finished")
    assert done["items"] == 4 and done["items_run"] == 4
    times = history.per_item_times(p.path(".pipemake/runs"))
    assert times["each"] == pytest.approx(done["duration"] / 4)

    p.write("data/f9.txt", "9\n")
    p.cli("build", "--executor", "inline")
    events = _events(_logs(p)[-1])
    assert events[0]["per_item"] == {"each": pytest.approx(times["each"])}
    (started,) = _by_kind(events, "stage_started")
    assert started["items"]["run"] == 1


def test_list_runs_and_log(chain: Proj) -> None:
    assert "no runs recorded yet" in chain.cli("list", "--runs").output
    chain.cli("log", code=2)
    chain.cli("build", "--executor", "inline")
    chain.cli("build", "--executor", "inline")
    rows = json.loads(chain.cli("list", "--runs", "--json").output)
    assert [r["result"] for r in rows] == ["ok", "ok"]
    assert (rows[0]["ran"], rows[0]["up_to_date"]) == (4, 0)
    assert (rows[1]["ran"], rows[1]["up_to_date"]) == (0, 4)
    assert rows[0]["started"] <= rows[1]["started"] and rows[0]["duration"] > 0
    header, *text = chain.cli("list", "--runs").output.splitlines()
    assert header.split()[:4] == ["RUN", "STARTED", "DURATION", "RESULT"]
    assert len(text) == 2
    assert rows[0]["id"] in text[0] and "ok" in text[0] and "4 ran" in text[0]
    assert "4 up to date" in text[1]

    last = chain.cli("log").output
    assert rows[1]["id"] in last and "upper: up to date" in last
    first = chain.cli("log", "-2").output
    assert rows[0]["id"] in first and "upper: running" in first and "upper: done in" in first
    assert "4 ran, 0 restored, 0 up to date" in first
    assert chain.cli("log", rows[0]["id"]).output == first
    raw = chain.cli("log", "--json", "-1").output.splitlines()
    assert json.loads(raw[0])["run"] == rows[1]["id"]
    assert "only 2 run(s)" in chain.cli("log", "-3", code=2).output
    assert "no run matches" in chain.cli("log", "nope", code=2).output
    assert "upper\tshell" in chain.cli("list").output  # plain `list` is unchanged


def test_a_run_killed_before_it_finished_is_listed_as_incomplete(chain: Proj) -> None:
    chain.cli("build", "--executor", "inline")
    (log,) = _logs(chain)
    lines = log.read_text().splitlines()
    cut = chain.path(".pipemake/runs/20000101-000000-000.jsonl")
    cut.write_text("\n".join(lines[:-3]) + '\n{"event": "stage_fin')  # a torn last line
    run_started = json.loads(lines[0])
    run_started.update(run=cut.stem, time=run_started["time"] - 1000)
    cut.write_text(json.dumps(run_started) + "\n" + "\n".join(lines[1:-3]) + "\n{broken")
    rows = json.loads(chain.cli("list", "--runs", "--json").output)
    assert [r["id"] for r in rows] == [cut.stem, log.stem]
    assert rows[0]["result"] == "incomplete" and rows[0]["duration"] >= 0
    assert "incomplete" in chain.cli("list", "--runs").output
    assert cut.stem in chain.cli("log", "-2").output
    killed = chain.cli("status", "--pipeline-id", cut.stem).output
    assert "state:    incomplete" in killed
    assert ": running" not in killed  # its process is gone: nothing of it runs
    assert ": interrupted" in killed


def test_the_history_reads_without_loading_a_broken_pipeline(chain: Proj) -> None:
    """``list --runs``, ``log`` and ``status --pipeline-id`` read the run logs only: a
    pipeline file broken since (or one needing a model file that is gone) does not hide
    what ran."""
    chain.cli("build", "--executor", "inline")
    chain.write(
        "pipemake.yaml", chain.read("pipemake.yaml").replace("type: shell", "type: shel", 1)
    )
    assert "unknown" in chain.cli("status", code=2).output  # the pipeline itself: refused
    (run,) = json.loads(chain.cli("list", "--runs", "--json").output)
    assert run["result"] == "ok"
    assert "upper: done in" in chain.cli("log").output
    assert "state:    completed" in chain.cli("status", "--pipeline-id", "-1").output


def test_only_the_last_runs_are_kept(chain: Proj, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "KEEP_RUNS", 2)
    for _ in range(4):
        chain.cli("build", "--executor", "inline")
    assert len(_logs(chain)) == 2
    rows = json.loads(chain.cli("list", "--runs", "--json").output)
    assert len(rows) == 4 and [r["log"] for r in rows] == [False, False, True, True]
    assert "was removed" in chain.cli("log", "-4", code=2).output


def test_the_api_returns_runs_and_logs(chain: Proj) -> None:
    from pipemake import api

    chain.cli("build", "--executor", "inline")
    with api.project_of(chain.root, None, readonly=True) as project:
        (run,) = api.list_runs(project)
        shown = api.show_log(project)
    assert shown["run"]["id"] == run["id"]
    assert shown["events"][0]["event"] == "run_started"
    assert shown["events"][-1]["event"] == "run_finished"


def test_an_unwritable_log_json_is_a_usage_error_before_anything_runs(
    chain: Proj, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    r = chain.cli("build", "--log-json", str(tmp_path / "file" / "x.jsonl"), code=2)
    assert "--log-json: cannot write" in r.output
    assert chain.run_counts() == {}


@pytest.mark.slow
def test_status_of_a_running_build_gives_its_eta(slow: Proj) -> None:
    """``status --pipeline-id`` of a build still running: its state and the estimate its
    own view shows (here from the last run's durations)."""
    from conftest import wait_for

    slow.write("go", "")
    slow.cli("build")
    (slow.root / "go").unlink()
    (slow.root / "runs" / "slow.started").unlink()
    proc = slow.popen("build", "--force-stage", "slow")
    try:
        wait_for(lambda: slow.exists("runs/slow.started"), what="the slow stage to run again")
        shown = slow.cli("status", "--pipeline-id", "-1").output
        assert "state:    running" in shown
        assert "eta:      about " in shown and "s left" in shown
        info = json.loads(slow.cli("status", "--pipeline-id", "-1", "--json").output)
        assert isinstance(info["eta"], float) and info["eta"] >= 0
    finally:
        slow.write("go", "")
        proc.communicate(timeout=60)
    done = json.loads(slow.cli("status", "--pipeline-id", "-1", "--json").output)
    assert done["state"] == "completed" and done["eta"] is None

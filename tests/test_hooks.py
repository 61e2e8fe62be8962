"""Notification hooks (issue 3): ``on_success`` / ``on_failure`` as a shell command and as a
webhook, checked against a real HTTP server on 127.0.0.1; a failing hook is only a warning."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from _http_fixtures import PostSink
from conftest import Proj

from pipemake.hooks import hook_for, run_summary


@pytest.fixture
def server() -> Iterator[PostSink]:
    s = PostSink()
    yield s
    s.close()


def _pipeline(hooks: str, cmd: str = "echo ok > {outputs.o}") -> str:
    return f"""
name: hooked
version: 1
{hooks}
stages:
  - id: first
    type: shell
    config:
      cmd: "echo one > {{outputs.o}}"
      outputs: {{o: build/first.txt}}
  - id: second
    type: shell
    config:
      cmd: "{cmd}"
      inputs: {{i: "{{first.o}}"}}
      outputs: {{o: build/second.txt}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_on_success_command_gets_the_result_and_summary(project) -> None:
    hooks = (
        'on_success: "echo $PIPEMAKE_RESULT > hook.txt; echo \\"$PIPEMAKE_SUMMARY\\" > s.json"\n'
        'on_failure: "touch failed.txt"'
    )
    p = project(_pipeline(hooks))
    p.cli("build", "--executor", "inline")
    assert p.read("hook.txt") == "ok\n"
    summary = json.loads(p.read("s.json"))
    assert summary["result"] == "ok" and summary["pipeline"] == "hooked"
    assert sorted(summary["ran"]) == ["first", "second"]
    assert summary["failed"] == {} and summary["duration"] > 0
    assert summary["run"] and p.exists(f".pipemake/runs/{summary['run']}.jsonl")
    assert not p.exists("failed.txt")


def test_on_failure_webhook_receives_the_run_summary(project, server: PostSink) -> None:
    hooks = f"on_failure: {{url: '{server.url}/notify', cmd: 'echo $PIPEMAKE_FAILED > f.txt'}}"
    p = project(_pipeline(hooks, cmd="echo broken >&2; exit 7"))
    p.cli("build", "--executor", "inline", code=1)  # still the build's own exit code
    (post,) = server.received
    assert post["path"] == "/notify" and post["type"] == "application/json"
    body = post["json"]
    assert body["result"] == "failed" and body["pipeline"] == "hooked"
    assert body["ran"] == ["first"]
    assert list(body["failed"]) == ["second"] and "code 7" in body["failed"]["second"]
    assert "broken" in body["failed"]["second"]  # the first lines of its error output
    assert p.read("f.txt") == "second\n"


def test_on_success_webhook_is_not_called_for_a_failure(project, server: PostSink) -> None:
    p = project(_pipeline(f"on_success: {{url: '{server.url}'}}", cmd="exit 1"))
    p.cli("build", "--executor", "inline", code=1)
    assert server.received == []


def test_a_failing_hook_is_a_warning_not_a_failed_build(project) -> None:
    url = f"http://127.0.0.1:{_free_port()}/nobody-listens"
    p = project(_pipeline(f"on_success: {{cmd: 'echo nope >&2; exit 3', url: '{url}'}}"))
    r = p.cli("build", "--executor", "inline", code=0)
    assert "warning: on_success hook failed: exit 3: nope" in r.stderr
    assert "warning: on_success hook failed:" in r.stderr.split("exit 3")[1]  # the URL too
    events = [json.loads(line) for line in p.read(_last_log(p)).splitlines()]
    failed = [e for e in events if e["event"] == "hook_failed"]
    assert {("cmd" in e, "url" in e) for e in failed} == {(True, False), (False, True)}


def test_a_webhook_answering_an_error_status_is_a_warning(project) -> None:
    bad = PostSink(status=500)
    try:
        p = project(_pipeline(f"on_success: {{url: '{bad.url}'}}"))
        r = p.cli("build", "--executor", "inline", code=0)
    finally:
        bad.close()
    assert len(bad.received) == 1
    assert "HTTP 500" in r.stderr


def _last_log(p: Proj) -> str:
    logs = [f for f in p.path(".pipemake/runs").glob("*.jsonl") if f.name != "index.jsonl"]
    (log,) = logs
    return str(log.relative_to(p.root))


def test_which_hook_fits_which_result() -> None:
    assert hook_for("a", "b", "ok") == ("on_success", {"cmd": "a"})
    assert hook_for("a", "b", "failed") == ("on_failure", {"cmd": "b"})
    assert hook_for("a", {"url": "http://x"}, "interrupted") == ("on_failure", {"url": "http://x"})
    assert hook_for(None, None, "ok") == ("on_success", {})
    s = run_summary("p", "r1", 5.0, {"ran": [], "failed": {}, "interrupted": 2, "duration": 1})
    assert s["result"] == "interrupted" and s["interrupted"] == 2

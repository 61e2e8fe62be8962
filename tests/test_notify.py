"""Notifications (issue 17): ``on_failure`` / ``on_success`` send to a Slack incoming
webhook (``{"text": …}``, a readable message) and to email through SMTP settings from the
environment, beside the generic JSON POST — checked against a local HTTP server and a local
SMTP sink on 127.0.0.1, with the webhook URL (a secret) never shown whole."""

from __future__ import annotations

import json
import socketserver
import threading
import urllib.request
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest
from _http_fixtures import PostSink
from conftest import Proj

from pipemake.hooks import check_hook, message_text, run_summary


class _Smtp:
    """A minimal SMTP sink (RFC 5321's happy path: EHLO, AUTH PLAIN, MAIL, RCPT, DATA,
    QUIT) that keeps each message it accepts, with the envelope and the login used. It
    offers no STARTTLS, so a client that insists on it must give up before sending."""

    def __init__(self) -> None:
        mails: list[dict[str, Any]] = []
        self.mails = mails

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                def say(line: str) -> None:
                    self.wfile.write(line.encode() + b"\r\n")

                env: dict[str, Any] = {"rcpt": [], "auth": None}
                say("220 sink ESMTP")
                while True:
                    raw = self.rfile.readline()
                    if not raw:
                        return
                    line = raw.decode().rstrip("\r\n")
                    verb = line.split(" ", 1)[0].upper()
                    if verb in ("EHLO", "HELO"):
                        say("250-sink")
                        say("250 AUTH PLAIN")
                    elif verb == "AUTH":
                        env["auth"] = line.split(" ", 2)[2] if line.count(" ") >= 2 else None
                        say("235 ok")
                    elif verb == "MAIL":
                        env["from"] = line
                        say("250 ok")
                    elif verb == "RCPT":
                        env["rcpt"].append(line)
                        say("250 ok")
                    elif verb == "DATA":
                        say("354 go on")
                        data = b""
                        while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                            data += chunk
                        mails.append({**env, "message": message_from_bytes(data)})
                        say("250 queued")
                    elif verb == "QUIT":
                        say("221 bye")
                        return
                    else:
                        say("502 not here")

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http() -> Iterator[PostSink]:
    s = PostSink()
    yield s
    s.close()


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Smtp]:
    s = _Smtp()
    monkeypatch.setenv("PIPEMAKE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("PIPEMAKE_SMTP_PORT", str(s.port))
    monkeypatch.setenv("PIPEMAKE_SMTP_FROM", "builds@example.org")
    for name in ("USER", "PASSWORD", "STARTTLS", "SSL"):
        monkeypatch.delenv(f"PIPEMAKE_SMTP_{name}", raising=False)
    yield s
    s.close()


def _pipeline(hooks: str, fail: bool = True) -> str:
    """Two stages: ``first`` succeeds; ``second`` is a python stage whose helper raises."""
    return f"""
name: notified
version: 1
{hooks}
stages:
  - id: first
    type: shell
    config:
      cmd: "echo one > {{outputs.o}}"
      outputs: {{o: build/first.txt}}
  - id: second
    type: python
    config:
      function: "notify_steps:{"boom" if fail else "fine"}"
      inputs: {{i: "{{first.o}}"}}
      outputs: {{o: build/second.txt}}
"""


STEPS = """
def helper():
    raise ValueError("the model file is truncated")


def boom(ctx):
    helper()


def fine(ctx):
    ctx.outputs["o"].write_text("fine")
"""


def _project(project: Any, hooks: str, fail: bool = True) -> Proj:
    p = project(_pipeline(hooks, fail))
    p.write("notify_steps.py", STEPS)  # a name of its own: tests share one interpreter
    return p


def _events(p: Proj) -> list[dict[str, Any]]:
    (log,) = [f for f in p.path(".pipemake/runs").glob("*.jsonl") if f.name != "index.jsonl"]
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_slack_gets_a_readable_text_message_of_the_failure(project, http: PostSink) -> None:
    url = f"{http.url}/services/T000/B000/SLACKSECRET"
    p = _project(project, f"on_failure: {{slack: '{url}'}}")
    r = p.cli("build", "--executor", "inline", code=1)
    (post,) = http.received
    assert post["path"] == "/services/T000/B000/SLACKSECRET"
    assert post["type"] == "application/json"
    assert set(post["json"]) == {"text"}  # what Slack's incoming webhooks accept
    text = post["json"]["text"]
    assert "'notified' FAILED after" in text
    assert "second failed after" in text
    assert "ValueError: the model file is truncated" in text  # the error's last line
    assert "1 ran, 0 restored, 0 up to date" in text
    assert "durations: first " in text
    finished = [e for e in _events(p) if e["event"] == "hook_finished"]
    assert finished and finished[0]["via"] == "slack"
    assert "SLACKSECRET" not in json.dumps(_events(p)) and "SLACKSECRET" not in r.output


def test_slack_text_escapes_what_slack_reads_as_markup() -> None:
    from pipemake.hooks import message_body

    summary = run_summary("p", "r", 0.0, {"failed": {"s": "x\nError in <module> & co"}})
    assert "Error in &lt;module&gt; &amp; co" in message_body(summary, "slack")["text"]
    assert message_body(summary, "json") is summary


def test_a_url_on_slacks_host_gets_slacks_text_not_the_summary(project, http: PostSink) -> None:
    summary = run_summary("p", "r1", 0.0, {"ran": ["a"], "failed": {}, "duration": 2.0},
                          {"a": 1.5})  # fmt: skip
    text = message_text(summary)
    assert text.splitlines()[0] == "pipemake: pipeline 'p' succeeded after 2.0s (run r1)"
    assert "durations: a 1.5s" in text
    # the local server as the HTTP proxy: it sees each webhook's URL and body
    proxy = urllib.request.ProxyHandler({"http": http.url})
    urllib.request.install_opener(urllib.request.build_opener(proxy))
    try:
        for n, url in enumerate(("http://hooks.slack.com/services/T/B/X",
                                 "http://hooks.example.com/slack")):  # fmt: skip
            p = project(_pipeline(f"on_success: {{url: '{url}'}}", fail=False), name=f"ws{n}")
            p.write("notify_steps.py", STEPS)
            p.cli("build", "--executor", "inline")
            assert http.received[n]["path"] == url
    finally:
        urllib.request.install_opener(None)  # urlopen's own again
    slack, other = (post["json"] for post in http.received)
    assert set(slack) == {"text"} and "'notified' succeeded after" in slack["text"]
    assert other["pipeline"] == "notified" and "text" not in other  # the summary itself


def test_email_is_sent_through_the_smtp_server_the_environment_names(
    project, smtp: _Smtp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPEMAKE_SMTP_USER", "builder")
    monkeypatch.setenv("PIPEMAKE_SMTP_PASSWORD", "SMTPSECRET")
    p = _project(project, "on_failure: {email: [team@example.org, 'mailto:lead@example.org']}")
    r = p.cli("build", "--executor", "inline", code=1)
    (mail,) = smtp.mails
    msg: Message = mail["message"]
    assert msg["Subject"] == "[pipemake] notified: failed (second)"
    assert msg["From"] == "builds@example.org"
    assert msg["To"] == "team@example.org, lead@example.org"
    assert [line.split(":", 1)[1] for line in mail["rcpt"]] == [
        "<team@example.org>", "<lead@example.org>"
    ]  # fmt: skip
    assert mail["auth"] is not None  # it logged in with the user and password given
    body = msg.get_payload(decode=True).decode()
    assert "ValueError: the model file is truncated" in body and "second failed" in body
    assert "SMTPSECRET" not in json.dumps(_events(p)) + r.output
    (done,) = [e for e in _events(p) if e["event"] == "hook_finished"]
    assert done["email"] == "team@example.org, lead@example.org"


def test_a_mailto_url_sends_email_on_success(project, smtp: _Smtp) -> None:
    p = _project(project, "on_success: {url: 'mailto:team@example.org'}", fail=False)
    p.cli("build", "--executor", "inline")
    (mail,) = smtp.mails
    assert mail["message"]["Subject"] == "[pipemake] notified: ok"
    assert "'notified' succeeded" in mail["message"].get_payload()


def test_starttls_asked_and_not_offered_sends_nothing_and_warns(
    project, smtp: _Smtp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPEMAKE_SMTP_STARTTLS", "1")
    monkeypatch.setenv("PIPEMAKE_SMTP_USER", "builder")
    monkeypatch.setenv("PIPEMAKE_SMTP_PASSWORD", "SMTPSECRET")
    p = _project(project, "on_failure: {email: team@example.org}")
    r = p.cli("build", "--executor", "inline", code=1)  # the build's own exit code
    assert smtp.mails == []  # never in plain text, never the password
    assert "does not offer STARTTLS" in r.stderr and "(email to team@example.org)" in r.stderr


def test_email_without_a_server_is_a_warning_naming_the_variable(
    project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PIPEMAKE_SMTP_HOST", raising=False)
    p = _project(project, "on_failure: {email: team@example.org}")
    r = p.cli("build", "--executor", "inline", code=1)
    assert "PIPEMAKE_SMTP_HOST is not set" in r.stderr


@pytest.mark.parametrize(
    ("hook", "problem"),
    [
        ({"email": "not an address"}, "is not an email address"),
        ({"email": "a@b.org\nBcc: x@y.org"}, "is not an email address"),
        ({"slack": "hooks.slack.com/x"}, "incoming-webhook URL"),
        ({"url": "ftp://x/SECRET"}, "must start with http://"),
        ({"pager": "x"}, "unknown key(s) pager"),
        ({"cmd": 3}, "'cmd' must be a string"),
    ],
)
def test_bad_hooks_are_pipeline_errors(hook: dict[str, Any], problem: str) -> None:
    found = check_hook(hook)
    assert found is not None and problem in found
    assert "SECRET" not in found


def test_a_bad_hook_stops_the_build_before_anything_runs(project) -> None:
    p = _project(project, "on_failure: {email: nobody}")
    r = p.cli("build", "--executor", "inline", code=2)
    line = p.read("pipemake.yaml").splitlines().index("on_failure: {email: nobody}") + 1
    assert f"pipemake.yaml:{line}: 'on_failure': 'email': 'nobody' is not an email" in r.output
    assert not p.exists("build/first.txt")

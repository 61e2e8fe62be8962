"""Notification hooks: the pipeline's ``on_success`` / ``on_failure``, run after a build.

A hook is a shell command (a string, or ``cmd:``) and/or any of: a webhook (``url:``, which
receives the run's summary as a JSON POST), a Slack incoming webhook (``slack:``, or a
``url:`` on ``hooks.slack.com``: a POST of ``{"text": …}``, a readable message), and email
(``email:`` with one address or a list, or a ``url: mailto:…``), sent with :mod:`smtplib`
through the server the environment names (``PIPEMAKE_SMTP_HOST``, ``_PORT``, ``_USER``,
``_PASSWORD``, ``_FROM``, ``_STARTTLS``, ``_SSL``). The command runs with ``/bin/sh -c`` in
the project root with the run described in its environment (``PIPEMAKE_RESULT``,
``PIPEMAKE_SUMMARY`` as JSON, …). A hook that fails is a warning (an event), never a failed
build.

A webhook URL often carries a secret (a token in the path or the query, a password before
the host), so it is never shown or logged whole: events, the run log and warnings hold
:func:`redact_url`'s ``scheme://host/…``; the SMTP password is never shown either.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .events import Bus, Event

__all__ = [
    "CMD_TIMEOUT", "HOOK_KEYS", "URL_TIMEOUT", "StageTimes", "check_hook", "hook_for",
    "message_text", "redact_url", "run_hooks", "run_summary",
]  # fmt: skip

URL_TIMEOUT = 10.0
CMD_TIMEOUT = 300.0
_ERROR_LINES = 20
#: what a hook mapping may hold
HOOK_KEYS = ("cmd", "url", "slack", "email")
_SLACK_HOSTS = ("hooks.slack.com", "hooks.slack-gov.com")
#: one plain address: no spaces, no line breaks (nothing that could add a mail header)
_ADDRESS = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+$")


class StageTimes:
    """An event subscriber that keeps each stage's run time in this build (a failed stage's
    until it failed), for the messages hooks send."""

    def __init__(self) -> None:
        self.durations: dict[str, float] = {}
        self._started: dict[str, float] = {}

    def __call__(self, event: Event) -> None:
        s = event.stage
        if s is None:
            return
        if event.kind == "stage_started":
            self._started[s] = event.time
        elif event.kind == "stage_finished" and isinstance(event.data.get("duration"), int | float):
            self.durations[s] = float(event.data["duration"])
        elif event.kind == "stage_failed" and s in self._started:
            self.durations[s] = max(0.0, event.time - self._started[s])


def run_summary(
    pipeline: str,
    run_id: str | None,
    started: float,
    finished: Mapping[str, Any],
    durations: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The JSON a hook receives, from the ``run_finished`` event's data (and ``durations``,
    each stage's run time in this build, from :class:`StageTimes`)."""
    failed = dict(finished.get("failed") or {})
    if finished.get("interrupted"):
        result = "interrupted"
    else:
        result = "failed" if failed else "ok"
    return {
        "pipeline": pipeline,
        "run": run_id,
        "result": result,
        "started": started,
        "duration": finished.get("duration"),
        "ran": list(finished.get("ran", [])),
        "restored": list(finished.get("restored", [])),
        "up_to_date": list(finished.get("up_to_date", [])),
        "failed": {s: "\n".join(str(e).splitlines()[:_ERROR_LINES]) for s, e in failed.items()},
        "errors": {s: _last_line(e) for s, e in failed.items()},
        "skipped": dict(finished.get("skipped") or {}),
        "interrupted": finished.get("interrupted"),
        "durations": dict(durations or {}),
    }


def check_hook(hook: Any) -> str | None:
    """What is wrong with a pipeline's ``on_success`` / ``on_failure`` value, or None: a
    shell command, or a mapping of ``cmd``, ``url`` (http(s) or mailto:), ``slack`` (an
    incoming-webhook URL) and ``email`` (an address or a list of them)."""
    if hook is None or isinstance(hook, str):
        return None
    if not isinstance(hook, Mapping) or not hook:
        return "must be a shell command, or a mapping with 'cmd', 'url', 'slack' and/or 'email'"
    unknown = sorted(str(k) for k in hook if k not in HOOK_KEYS)
    if unknown:
        return f"unknown key(s) {', '.join(unknown)} (known: {', '.join(HOOK_KEYS)})"
    for key in ("cmd", "url", "slack"):
        if key in hook and not isinstance(hook[key], str):
            return f"{key!r} must be a string"
    url = str(hook.get("url") or "")
    if url and not url.startswith(("http://", "https://", "mailto:")):
        return f"'url' must start with http://, https:// or mailto: (got {redact_url(url)})"
    slack = str(hook.get("slack") or "")
    if slack and not slack.startswith(("http://", "https://")):
        shown = redact_url(slack)
        return f"'slack' must be an incoming-webhook URL (https://hooks.slack.com/…), got {shown}"
    if "email" in hook:
        try:
            _addresses(hook["email"])
        except ValueError as exc:
            return f"'email': {exc}"
    return None


def hook_for(on_success: Any, on_failure: Any, result: str) -> tuple[str, dict[str, str]]:
    """Which hook applies (``on_success`` only for an ``ok`` run) and its parts (an email
    list joined by commas)."""
    name, spec = ("on_success", on_success) if result == "ok" else ("on_failure", on_failure)
    if spec is None:
        return name, {}
    if isinstance(spec, str):
        return name, {"cmd": spec}
    parts = {}
    for k, v in spec.items():
        if k in HOOK_KEYS and v:
            parts[k] = ", ".join(map(str, v)) if isinstance(v, list) else str(v)
    return name, parts


def run_hooks(
    on_success: Any, on_failure: Any, summary: dict[str, Any], root: Path, bus: Bus
) -> list[str]:
    """Run the hook that fits ``summary["result"]``; each failure is emitted as a
    ``hook_failed`` event and returned as a warning."""
    name, parts = hook_for(on_success, on_failure, summary["result"])
    warnings = []
    if "cmd" in parts:
        error = _run_cmd(parts["cmd"], summary, root)
        bus.emit("hook_failed" if error else "hook_finished", None, hook=name, cmd=parts["cmd"],
                 **({"error": error} if error else {}))  # fmt: skip
        if error:
            warnings.append(f"{name} command failed: {error}")
    sends: list[tuple[str, str]] = []  # (how, where)
    url = parts.get("url", "")
    if url.startswith("mailto:"):
        sends.append(("email", url))
    elif url:
        sends.append(("slack" if _is_slack(url) else "json", url))
    if parts.get("slack"):
        sends.append(("slack", parts["slack"]))
    if parts.get("email"):
        sends.append(("email", parts["email"]))
    for how, where in sends:
        if how == "email":
            error, shown, what = _send_email(where, summary), _mail_list(where), "email to"
            fields: dict[str, Any] = {"email": shown}
        else:
            shown = redact_url(where)
            error = _post(where, message_body(summary, how))
            what = "Slack webhook" if how == "slack" else "webhook"
            fields = {"url": shown, "via": how}
        if error:
            error = _scrub(error, where) if how != "email" else _scrub_smtp(error)
        bus.emit("hook_failed" if error else "hook_finished", None, hook=name, **fields,
                 **({"error": error} if error else {}))  # fmt: skip
        if error:
            warnings.append(f"{name} {what} {shown} failed: {error}")
    return warnings


def message_text(summary: Mapping[str, Any]) -> str:
    """The run as a few readable lines (for Slack and email): the pipeline and its result,
    each failed stage with the last line of its error, what did not run, the counts, and
    how long the build and each stage that ran took."""
    result = summary.get("result")
    word = {"ok": "succeeded", "failed": "FAILED", "interrupted": "was interrupted"}.get(
        str(result), str(result)
    )
    lines = [
        f"pipemake: pipeline {summary.get('pipeline')!r} {word} after "
        f"{_duration(summary.get('duration'))} (run {summary.get('run')})"
    ]
    errors = summary.get("errors") or {}
    durations = summary.get("durations") or {}
    for stage, error in (summary.get("failed") or {}).items():
        took = f" after {_duration(durations[stage])}" if stage in durations else ""
        lines.append(f"• {stage} failed{took}: {errors.get(stage) or _last_line(error)}")
    skipped = summary.get("skipped") or {}
    if skipped:
        shown = ", ".join(f"{s} ({r})" for s, r in list(skipped.items())[:10])
        more = f" … and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        lines.append(f"• not run: {shown}{more}")
    lines.append(
        f"• {len(summary.get('ran') or [])} ran, {len(summary.get('restored') or [])} "
        f"restored, {len(summary.get('up_to_date') or [])} up to date"
    )
    ran = [(s, durations[s]) for s in summary.get("ran") or [] if s in durations]
    if ran:
        shown = ", ".join(f"{s} {_duration(d)}" for s, d in ran[:10])
        lines.append(f"• durations: {shown}" + (" …" if len(ran) > 10 else ""))
    return "\n".join(lines)


def message_body(summary: dict[str, Any], how: str) -> dict[str, Any]:
    """What a webhook receives: Slack's ``{"text": …}`` (``&``, ``<`` and ``>`` escaped, as
    Slack asks: an error's ``<module>`` is not a link), or the summary itself."""
    if how != "slack":
        return summary
    text = message_text(summary).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return {"text": text}


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def _last_line(text: Any) -> str:
    """An error in one line: its last line (where a traceback ends, or a tool's last
    output), without a shell stage's echo of its command (``$ cmd``, naming pipemake's
    staging paths) or the ``output:`` header. A shell stage's error leads with what
    happened (``command exited with code 1:``): that, and its last output line if any."""
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("staging folder: ")]  # build's note
    if not lines:
        return ""
    if not _SHELL_FAILED.match(lines[0]):
        return lines[-1][:300]
    first = lines[0].rstrip(":")
    rest = [line for line in lines[1:] if not line.startswith("$ ") and line != "output:"]
    return (f"{first}: {rest[-1]}" if rest else first)[:300]


#: the first line of a shell stage's error: what happened to its command
_SHELL_FAILED = re.compile(r"command (exited with code -?\d+|was killed by signal \d+).*:$")


def _is_slack(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        return (urlsplit(url).hostname or "") in _SLACK_HOSTS
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """``url`` with what may be a secret left out: ``scheme://host[:port]``, then ``/…`` if
    it had anything more (path, query, fragment); a user and password are dropped."""
    from urllib.parse import urlsplit  # here: only a webhook needs it

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "…"
    host = parts.hostname or ""
    if not host:
        return "…"
    if ":" in host:
        host = f"[{host}]"
    shown = f"{parts.scheme}://{host}" if parts.scheme else host
    if port is not None:
        shown += f":{port}"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        shown += "/…"
    return shown


def _scrub(text: str, url: str) -> str:
    """``text`` (an error about ``url``) without the URL's secret-bearing parts."""
    from urllib.parse import urlsplit

    text = text.replace(url, redact_url(url))
    try:
        parts = urlsplit(url)
        secrets = [parts.netloc.rpartition("@")[0], parts.path, parts.query, parts.fragment]
    except ValueError:
        secrets = [url[url.find("//") + 2 :]] if "//" in url else [url]
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) > 1:
            text = text.replace(secret, "…")
    return text


def _run_cmd(cmd: str, summary: dict[str, Any], root: Path) -> str | None:
    env = dict(os.environ)
    env.update(
        PIPEMAKE_RESULT=summary["result"],
        PIPEMAKE_SUMMARY=json.dumps(summary, default=str),
        PIPEMAKE_PIPELINE=str(summary.get("pipeline") or ""),
        PIPEMAKE_RUN=str(summary.get("run") or ""),
        PIPEMAKE_DURATION=f"{summary.get('duration') or 0:.1f}",
        PIPEMAKE_FAILED=" ".join(summary["failed"]),
    )
    try:
        proc = subprocess.run(
            cmd, shell=True, cwd=root, env=env, capture_output=True, text=True,
            timeout=CMD_TIMEOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"timed out after {CMD_TIMEOUT:g} s"
    except OSError as exc:
        return str(exc)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return f"exit {proc.returncode}" + (": " + " | ".join(tail) if tail else "")
    return None


def _post(url: str, body: dict[str, Any]) -> str | None:
    import urllib.error  # here: urllib.request pulls in http, email and ssl
    import urllib.request

    if not url.startswith(("http://", "https://")):
        return "only http:// and https:// URLs are supported"
    request = urllib.request.Request(
        url,
        data=json.dumps(body, default=str).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "pipemake"},
    )
    try:
        with urllib.request.urlopen(request, timeout=URL_TIMEOUT) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return str(reason)
    return None


def _addresses(value: Any) -> list[str]:
    """The addresses of an ``email`` value (one, a comma-separated string, or a list; a
    ``mailto:`` prefix is fine); ValueError when one is not a plain address."""
    items = value if isinstance(value, list) else str(value).split(",")
    out = []
    for raw in items:
        if not isinstance(raw, str):
            raise ValueError(f"an address must be a string, got {raw!r}")
        address = raw.strip()
        if address.startswith("mailto:"):
            address = address[len("mailto:") :].split("?", 1)[0]
        if not _ADDRESS.match(address):
            raise ValueError(f"{address!r} is not an email address (name@host)")
        out.append(address)
    if not out:
        raise ValueError("no address given")
    return out


def _mail_list(value: str) -> str:
    try:
        return ", ".join(_addresses(value))
    except ValueError:
        return "(bad address)"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _send_email(to: str, summary: dict[str, Any]) -> str | None:
    """Mail the run's message to ``to`` through ``PIPEMAKE_SMTP_HOST`` (``_PORT``, default
    25, or 465 with ``_SSL``; ``_USER`` and ``_PASSWORD`` to log in; ``_FROM``; ``_STARTTLS``
    to upgrade the connection before anything is sent, refusing to go on without it)."""
    import smtplib  # here: only an email hook needs it
    import socket
    from email.message import EmailMessage

    try:
        recipients = _addresses(to)
    except ValueError as exc:
        return str(exc)
    host = os.environ.get("PIPEMAKE_SMTP_HOST", "").strip()
    if not host:
        return "PIPEMAKE_SMTP_HOST is not set (the SMTP server to send through)"
    ssl_on, starttls = _env_flag("PIPEMAKE_SMTP_SSL"), _env_flag("PIPEMAKE_SMTP_STARTTLS")
    try:
        port = int(os.environ.get("PIPEMAKE_SMTP_PORT") or (465 if ssl_on else 25))
    except ValueError:
        return f"PIPEMAKE_SMTP_PORT must be a number, got {os.environ['PIPEMAKE_SMTP_PORT']!r}"
    user = os.environ.get("PIPEMAKE_SMTP_USER", "")
    sender = os.environ.get("PIPEMAKE_SMTP_FROM") or f"pipemake@{socket.gethostname()}"
    failed = ", ".join(summary.get("failed") or {})
    msg = EmailMessage()
    try:
        msg["Subject"] = f"[pipemake] {summary.get('pipeline')}: {summary.get('result')}" + (
            f" ({failed})" if failed else ""
        )
        msg["From"] = sender
        msg["To"] = ", ".join(recipients)
    except ValueError as exc:  # a line break in a header
        return f"cannot write the message: {exc}"
    msg.set_content(message_text(summary) + "\n")
    try:
        if ssl_on:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=URL_TIMEOUT)
        else:
            smtp = smtplib.SMTP(host, port, timeout=URL_TIMEOUT)
        with smtp:
            if starttls and not ssl_on:
                smtp.starttls()
            if user:
                smtp.login(user, os.environ.get("PIPEMAKE_SMTP_PASSWORD", ""))
            smtp.send_message(msg, from_addr=sender, to_addrs=recipients)
    except smtplib.SMTPNotSupportedError:
        return f"{host}:{port} does not offer STARTTLS (PIPEMAKE_SMTP_STARTTLS is set): not sent"
    except (smtplib.SMTPException, OSError, ValueError) as exc:
        return f"{host}:{port}: {exc}"
    return None


def _scrub_smtp(text: str) -> str:
    """``text`` without the SMTP password, whatever a server echoed back."""
    password = os.environ.get("PIPEMAKE_SMTP_PASSWORD", "")
    return text.replace(password, "…") if len(password) > 1 else text

"""Notification hooks: the pipeline's ``on_success`` / ``on_failure``, run after a build.

A hook is a shell command (a string, or ``cmd:``) and/or a webhook (``url:``). The command
runs with ``/bin/sh -c`` in the project root with the run described in its environment
(``PIPEMAKE_RESULT``, ``PIPEMAKE_SUMMARY`` as JSON, …); the URL receives the same summary
as a JSON POST. A hook that fails is a warning (an event), never a failed build.

A webhook URL often carries a secret (a token in the path or the query, a password before
the host), so it is never shown or logged whole: events, the run log and warnings hold
:func:`redact_url`'s ``scheme://host/…``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .events import Bus

__all__ = ["CMD_TIMEOUT", "URL_TIMEOUT", "hook_for", "redact_url", "run_hooks", "run_summary"]

URL_TIMEOUT = 10.0
CMD_TIMEOUT = 300.0
_ERROR_LINES = 20


def run_summary(
    pipeline: str, run_id: str | None, started: float, finished: Mapping[str, Any]
) -> dict[str, Any]:
    """The JSON a hook receives, from the ``run_finished`` event's data."""
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
        "skipped": dict(finished.get("skipped") or {}),
        "interrupted": finished.get("interrupted"),
    }


def hook_for(on_success: Any, on_failure: Any, result: str) -> tuple[str, dict[str, str]]:
    """Which hook applies (``on_success`` only for an ``ok`` run) and its parts."""
    name, spec = ("on_success", on_success) if result == "ok" else ("on_failure", on_failure)
    if spec is None:
        return name, {}
    if isinstance(spec, str):
        return name, {"cmd": spec}
    return name, {k: str(v) for k, v in spec.items() if k in ("cmd", "url") and v}


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
    if "url" in parts:
        url, shown = parts["url"], redact_url(parts["url"])
        error = _post(url, summary)
        if error:
            error = _scrub(error, url)
        bus.emit("hook_failed" if error else "hook_finished", None, hook=name, url=shown,
                 **({"error": error} if error else {}))  # fmt: skip
        if error:
            warnings.append(f"{name} webhook {shown} failed: {error}")
    return warnings


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


def _post(url: str, summary: dict[str, Any]) -> str | None:
    import urllib.error  # here: urllib.request pulls in http, email and ssl
    import urllib.request

    if not url.startswith(("http://", "https://")):
        return "only http:// and https:// URLs are supported"
    body = json.dumps(summary, default=str).encode()
    request = urllib.request.Request(
        url,
        data=body,
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

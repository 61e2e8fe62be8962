"""``pipemake serve``: a local web page of the project (the running build, the history, the
dataset with curation) and ``pipemake report``, the same views as one offline HTML file.

The web library (Starlette, uvicorn) is imported only when serving: ``pip install
"pipemake[serve]"``. See docs/serve.md.
"""

from __future__ import annotations

import errno
import ipaddress
import secrets
import socket
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError

__all__ = ["LOOPBACK_NAMES", "is_loopback", "listen_hint", "serve"]

#: the Host names a server on loopback answers to
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` only reaches this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_hint(host: str, exc: OSError) -> str:
    """Why a server cannot listen on ``host`` (``exc`` from ``bind``), and what to do."""
    why = exc.strerror or str(exc)
    if isinstance(exc, socket.gaierror):
        return (
            f"the name {host!r} does not resolve ({why}); give --host an address of this "
            "machine (127.0.0.1, the default; 0.0.0.0 for every address) or a name that resolves"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"{host} is not an address of this machine ({why}); give --host one of its "
            "addresses (127.0.0.1, the default; 0.0.0.0 for every address)"
        )
    if exc.errno == errno.EADDRINUSE:
        return f"{why}; pick another --port (--port 0 picks a free one)"
    if exc.errno == errno.EACCES:
        return f"{why}; ports below 1024 need more rights: pick a --port from 1024 up"
    return f"{why}; check --host and --port"


def serve(
    pipeline_file: Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    say: Callable[[str], None] = print,
) -> None:
    """Serve the project of ``pipeline_file`` until interrupted. Another address than
    loopback gets a one-time token, printed once, that the page asks for."""
    try:
        import uvicorn

        from .app import make_app
    except ImportError as exc:
        raise UsageError(
            f"pipemake serve needs the serve extra ({exc.name} is missing): "
            'pip install "pipemake[serve]"'
        ) from None
    from .data import Site

    token = None if is_loopback(host) else secrets.token_urlsafe(24)
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
            port = probe.getsockname()[1]  # --port 0: the free port the system picked
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {listen_hint(host, exc)}") from None
    stopping = False
    # on loopback, only requests addressed to a loopback name: a page of another site
    # whose name resolves to 127.0.0.1 gets nothing
    hosts = LOOPBACK_NAMES | {host} if token is None else None
    app = make_app(Site(pipeline_file), token, stopping=lambda: stopping, hosts=hosts)
    shown = f"[{host}]" if ":" in host else host
    say(f"pipemake serve: http://{shown}:{port}/  (Ctrl-C stops)")
    if token is not None:
        say(f"token (asked for once by the page): {token}")
        say(f"or open http://{shown}:{port}/now?token={token}")

    class _Server(uvicorn.Server):
        """Tells the live pages' streams to end when asked to stop, so Ctrl-C is prompt."""

        def handle_exit(self, sig: int, frame: object) -> None:
            nonlocal stopping
            stopping = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False,
        timeout_graceful_shutdown=5,
    )  # fmt: skip
    _Server(config).run()

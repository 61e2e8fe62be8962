"""The web application of ``pipemake serve`` (Starlette): pages, live updates by
server-sent events, thumbnails, and the curation actions that write ``curation.yaml``.

Only files inside a stage's output folder are ever served (:meth:`Site.output_file`). With a
token (any address but loopback), every request needs it: once as ``?token=`` or through the
form the page shows, then as a cookie.

What the pages show may come from a shared store someone else wrote (see :mod:`.pages`),
so every response carries a Content-Security-Policy: a page runs no script but its own
``app.js`` (named by a nonce new in each response) and loads nothing from elsewhere;
anything else (an output file, a thumbnail, JSON) runs nothing even when opened as a page.
A curation action is taken only from a page of this server (:func:`_same_origin`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import curation as cm
from . import pages
from .data import DATASET_RULES, NOT_READ, Forbidden, NotFound, Site, TooLarge, thumbnail

__all__ = [
    "ACTIONS",
    "MAX_ACTION",
    "OTHER_POLICY",
    "apply_action",
    "check_action",
    "make_app",
    "page_policy",
]

COOKIE = "pipemake_token"
THUMB = 160
_CSS = '<link rel=stylesheet href="/static/app.css">'
_NONCE = "pipemake.nonce"  # the scope key of this response's script nonce
_SERVED = ("/file/", "/thumb/")  # where a stage's output files are served
#: anything but a page (an output file, a thumbnail, JSON): nothing in it runs, even opened
#: as a page of its own (an SVG or HTML file among a stage's outputs)
OTHER_POLICY = "default-src 'none'; sandbox; frame-ancestors 'none'; base-uri 'none'"


def page_policy(nonce: str) -> str:
    """The CSP of a served page: its own script (by ``nonce``) and stylesheet, images and
    requests to this server only, no inline script or style, no framing."""
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )


class _Policy:
    """ASGI middleware: a fresh script nonce for each request (in the scope, for the page
    to name its ``<script>`` with) and the security headers on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        nonce = scope[_NONCE] = secrets.token_urlsafe(18)
        # an output file is never one of our pages, whatever its type (an HTML output)
        served = scope["path"].startswith(_SERVED)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                page = headers.get("content-type", "").startswith("text/html") and not served
                headers["Content-Security-Policy"] = page_policy(nonce) if page else OTHER_POLICY
                headers["X-Content-Type-Options"] = "nosniff"
                headers["X-Frame-Options"] = "DENY"
                headers["Referrer-Policy"] = "no-referrer"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _same_origin(request: Request) -> str | None:
    """Why a state-changing request does not come from a page of this server, or None.
    A browser names the page that sent it (Origin; Sec-Fetch-Site in current browsers); a
    client that is no browser (curl) sends neither and is let through."""
    origin = request.headers.get("origin")
    if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host"):
        return f"requests from {origin} are refused"
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"requests from another site ({fetch_site}) are refused"
    return None


def _static(name: str) -> bytes:
    return resources.files("pipemake.serve").joinpath("static", name).read_bytes()


def _login_page(wrong: bool) -> str:
    body = (
        "<h1>Token</h1><p>This server was started with <code>--host</code>; paste the token "
        "it printed.</p>"
        + ("<p class=error>That token is not right.</p>" if wrong else "")
        + "<form method=post action=/login><input name=token autocomplete=off autofocus>"
        "<button>open</button></form>"
    )
    return pages.layout("token", "", body, _CSS, nav=False)


def make_app(
    site: Site,
    token: str | None = None,
    poll: float = 0.4,
    stopping: Callable[[], bool] = lambda: False,
    hosts: frozenset[str] | None = None,
) -> Starlette:
    """The Starlette app serving ``site``; ``token`` (when given) guards every request;
    ``hosts`` (when given) are the only names a request may address (its Host header);
    live streams end once ``stopping()`` is true (the server is shutting down)."""

    def authorised(request: Request) -> bool:
        if token is None:
            return True
        given = request.cookies.get(COOKIE) or request.query_params.get("token") or ""
        return hmac.compare_digest(given.encode(), token.encode())

    def page(request: Request, title: str, active: str, body: str) -> HTMLResponse:
        nonce = request.scope.get(_NONCE, "")
        script = f'<script src="/static/app.js" nonce="{pages.e(nonce)}" defer></script>'
        return HTMLResponse(pages.layout(title, active, body, _CSS, script))

    def thumb_src(stage: str, rel: str) -> str:
        return f"/thumb/{pages.url_part(stage)}/{quote(str(rel))}"

    async def guard(request: Request, handler: Any) -> Response:
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
        if hosts is not None and host not in hosts:
            # a page of another site whose name resolves to 127.0.0.1 (DNS rebinding)
            return JSONResponse({"error": f"host {host!r} is not served here"}, 403)
        if not authorised(request):
            if request.url.path.startswith(("/api/", "/file/", "/thumb/")):
                return JSONResponse({"error": "token required"}, status_code=401)
            return HTMLResponse(_login_page(False), status_code=401)
        response = await handler(request)
        if token is not None and request.query_params.get("token"):
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    def route(path: str, fn: Any, methods: tuple[str, ...] = ("GET",)) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                return await guard(request, fn)
            except NotFound as exc:
                return _problem(request, 404, str(exc))
            except Forbidden as exc:
                return _problem(request, 403, str(exc))
            except TooLarge as exc:
                return _problem(request, 422, str(exc))

        return Route(path, endpoint, methods=list(methods))

    def _problem(request: Request, code: int, text: str) -> Response:
        if request.url.path.startswith(("/api/", "/file/", "/thumb/")):
            return JSONResponse({"error": text}, status_code=code)
        return HTMLResponse(
            pages.layout("error", "", f"<p class=error>{pages.e(text)}</p>", _CSS), code
        )

    async def login(request: Request) -> Response:
        form = (await request.body()).decode(errors="replace")
        from urllib.parse import parse_qs

        given = (parse_qs(form).get("token") or [""])[0]
        if token is None or not hmac.compare_digest(given.encode(), token.encode()):
            return HTMLResponse(_login_page(True), status_code=401)
        response = RedirectResponse("/now", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    async def index(request: Request) -> Response:
        return RedirectResponse("/now", status_code=307)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ("app.css", "app.js"):
            raise NotFound(f"no static file {name}")
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return Response(_static(name), media_type=kind)

    async def now(request: Request) -> Response:
        body = "<h1>Now</h1><div id=now data-live=1>" + pages.now_fragment(site.now()) + "</div>"
        return page(request, "now", "now", body)

    async def now_stream(request: Request) -> Response:
        async def events() -> Any:
            last, idle = None, 0
            while True:
                fragment = pages.now_fragment(await asyncio.to_thread(site.now))
                if fragment != last:
                    last, idle = fragment, 0
                    yield "data: " + json.dumps({"html": fragment}) + "\n\n"
                else:
                    idle += 1
                    if idle * poll >= 15:
                        idle = 0
                        yield ": keep-alive\n\n"
                if stopping() or await request.is_disconnected():
                    return
                await asyncio.sleep(poll)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def history(request: Request) -> Response:
        body = pages.history_page(site.runs(), lambda rid: f"/history/{pages.url_part(rid)}")
        return page(request, "history", "history", body)

    async def run(request: Request) -> Response:
        folded = site.run(request.path_params["run"])
        return page(request, f"run {folded.get('id')}", "history", pages.run_page(folded))

    async def api_runs(request: Request) -> Response:
        return JSONResponse(site.runs())

    async def api_now(request: Request) -> Response:
        return JSONResponse(site.now())

    async def dataset_index(request: Request) -> Response:
        _, error = site.pipeline()
        body = pages.dataset_index(site.stages(), DATASET_RULES, error)
        return page(request, "dataset", "dataset", body)

    async def dataset(request: Request) -> Response:
        view = await asyncio.to_thread(site.dataset, request.path_params["stage"])
        body = pages.dataset_page(view, thumb_src, edit=True)
        return page(request, f"dataset {view.stage}", "dataset", body)

    async def file(request: Request) -> Response:
        p = site.output_file(request.path_params["stage"], request.path_params["path"])
        return FileResponse(p)

    async def thumb(request: Request) -> Response:
        p = site.output_file(request.path_params["stage"], request.path_params["path"])
        data = await asyncio.to_thread(thumbnail, p, THUMB)
        if data is None:
            return FileResponse(p)
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=60"})

    async def curate(request: Request) -> Response:
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if kind != "application/json":
            # JSON only: a form on another site cannot post here without the browser asking
            return JSONResponse({"error": "send the action as application/json"}, 415)
        refused = _same_origin(request)
        if refused is not None:
            return JSONResponse({"error": refused}, 403)
        raw = b""
        try:
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > MAX_ACTION:
                    return JSONResponse({"error": f"an action is at most {MAX_ACTION} bytes"}, 413)
        except ClientDisconnect:  # the body never came whole (a broken chunked request)
            return JSONResponse({"error": "bad action: the request body was cut short"}, 400)
        try:
            body = check_action(json.loads(raw))
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
            why = "nested too deep" if isinstance(exc, RecursionError) else exc
            return JSONResponse({"error": f"bad action: {why}"}, status_code=400)
        try:
            result = await asyncio.to_thread(apply_action, site, body)
        except cm.CurationError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(result)

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)  # no icon: the browser logs no 404 for it

    routes = [
        Route("/login", login, methods=["POST"]),
        Route("/favicon.ico", favicon),
        route("/", index),
        route("/static/{name}", static),
        route("/now", now),
        route("/api/now/stream", now_stream),
        route("/api/now", api_now),
        route("/api/runs", api_runs),
        route("/history", history),
        route("/history/{run}", run),
        route("/dataset", dataset_index),
        route("/dataset/{stage}", dataset),
        route("/file/{stage}/{path:path}", file),
        route("/thumb/{stage}/{path:path}", thumb),
        route("/api/curate", curate, ("POST",)),
    ]
    return Starlette(routes=routes, middleware=[Middleware(_Policy)])


#: the largest curation action taken (bytes of JSON): a caption or a name is far smaller
MAX_ACTION = 64 * 1024
#: each action's fields (all text): required, then optional
ACTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "rename": (("stage", "cluster", "name"), ()),
    "merge": (("stage", "cluster", "into"), ()),
    "move": (("id", "to"), ("stage",)),
    "reject": (("id",), ("stage",)),
    "unassign": (("id",), ("stage",)),
    "caption": (("id", "text"), ("stage",)),
}


def check_action(body: Any) -> dict[str, str]:
    """``body`` as a curation action (see :func:`apply_action`), or a ``ValueError`` saying
    what is wrong: a known ``action``, its fields present, each a string, no other field."""
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {type(body).__name__}")
    action = body.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        raise ValueError(f"unknown action {action!r} ({', '.join(ACTIONS)})")
    required, optional = ACTIONS[action]
    missing = [k for k in required if k not in body]
    if missing:
        raise ValueError(f"{action}: {', '.join(missing)} missing")
    extra = sorted(set(body) - {"action", *required, *optional})
    if extra:
        raise ValueError(f"{action}: unknown field(s) {', '.join(map(repr, extra))}")
    for key, value in body.items():
        if not isinstance(value, str):
            raise ValueError(f"{action}: {key} must be a string, not {type(value).__name__}")
    return body


def _members(site: Site, stage: str) -> dict[str, list[str]]:
    """Cluster → its members' ids in the clustering stage ``stage``."""
    view = site.dataset(stage)
    if view.rule != "clustering":
        raise cm.CurationError(f"stage {stage!r} is not a clustering stage")
    return {g["name"]: [f["id"] for f in g["files"]] for g in view.groups if not g["noise"]}


def apply_action(site: Site, body: dict[str, Any]) -> dict[str, Any]:
    """One curation action from the Dataset page, written to the curation file:
    ``rename`` (stage, cluster, name), ``merge`` (stage, cluster, into), ``move`` (id, to,
    and stage when ``to`` is an unnamed cluster's folder), ``reject`` / ``unassign`` (id),
    ``caption`` (id, text)."""
    action = body.get("action")
    with site.lock, _one_editor(site.root):
        target = site.curation_file()
        if target.refused is not None:
            raise cm.CurationError(f"not saved: {target.refused}")
        path = target.path
        try:
            cur = cm.load(path)
        except cm.CurationError as exc:  # never overwrite a file a person must fix
            raise cm.CurationError(f"not saved: {exc} (the file is left as it is)") from None
        stage = str(body.get("stage") or "")
        if action in ("rename", "merge"):
            members = _members(site, stage)
            cluster = body.get("cluster")
            if cluster not in members:
                raise cm.CurationError(f"no cluster {cluster!r} in stage {stage!r}")
            if action == "rename":
                cm.name_cluster(cur, members[cluster], str(body.get("name") or ""))
            else:
                other = body.get("into")
                if other not in members or other == cluster:
                    raise cm.CurationError(f"cannot merge {cluster!r} with {other!r}")
                names = cm.cluster_names({i: c for c, ids in members.items() for i in ids}, cur)
                name = names.get(other) or names.get(cluster) or other
                cm.name_cluster(cur, members[cluster] + members[other], name)
        elif action == "move":
            to = str(body.get("to") or "")
            if stage and dict(site.stages()).get(stage) == "clustering":
                members = _members(site, stage)
                names = cm.cluster_names({i: c for c, ids in members.items() for i in ids}, cur)
                if to in members and to not in names.values():
                    if to not in names:
                        cm.name_cluster(cur, members[to], to)  # the folder name, kept stable
                    else:
                        to = names[to]
            cm.move(cur, str(body.get("id")), to)
        elif action == "reject":
            cm.reject(cur, str(body.get("id")))
        elif action == "unassign":
            cm.unassign(cur, str(body.get("id")))
        elif action == "caption":
            cm.set_caption(cur, str(body.get("id")), body.get("text", ""))
        else:
            raise cm.CurationError(
                f"unknown action {action!r} (rename, merge, move, reject, unassign, caption)"
            )
        try:
            cm.save(path, cur)
        except OSError as exc:
            raise cm.CurationError(f"cannot write {path}: {exc}") from None
    result: dict[str, Any] = {"ok": True, "file": target.shown}
    if target.read_by is None:
        result["warning"] = f"no training_data_prep stage reads {target.shown}: {NOT_READ}"
    return result


@contextmanager
def _one_editor(root: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the project folder while curation.yaml is read,
    changed and written: two ``serve`` processes of one project (two terminals, a page
    left open on each) edit one after the other, and neither loses the other's edit. The
    folder itself is locked, so no lock file is left in the project."""
    import fcntl

    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock

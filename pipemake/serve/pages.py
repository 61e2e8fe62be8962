"""The pages as HTML strings: Now, History (a run's Gantt chart, reasons and logs) and
Dataset. Plain HTML; the server and ``pipemake report`` both use them.

What they show comes from run logs and stage outputs, and those may come from a shared store
that someone else wrote: every value is escaped for where it goes (:func:`e` for text and
quoted attributes, :func:`url_part` inside a link, :func:`num` where a number is expected),
and the pages carry no inline script or style, so the Content-Security-Policy of
``serve`` and ``report`` can forbid both.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from ..eta import Estimator, StageClock
from .data import DatasetView

__all__ = [
    "dag_svg",
    "dataset_index",
    "dataset_page",
    "history_page",
    "e",
    "layout",
    "now_fragment",
    "num",
    "run_page",
    "url_part",
]


def e(value: Any) -> str:
    """``value`` as HTML text or a quoted attribute value (``&<>"'`` escaped); anything not
    a string (a poisoned log or output may hold a number, a list, null) as its ``str``."""
    return html.escape(value if isinstance(value, str) else str(value), quote=True)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def num(value: Any, default: str = "?") -> str:
    """A count read from a log or an output, as digits; ``default`` when it is not a number
    (text there never reaches the page)."""
    return str(value) if _is_num(value) else default


def url_part(value: Any) -> str:
    """``value`` as one path segment of a URL on this site (``/``, ``?``, ``#`` … encoded),
    to be put through :func:`e` as the attribute it lands in."""
    return quote(value if isinstance(value, str) else str(value), safe="")


def _cls(state: Any) -> str:
    """The CSS class of a stage state; an unknown one is ``pending``."""
    return _STATE_CLASS.get(state, "pending") if isinstance(state, str) else "pending"


_STATE_CLASS = {
    "ran": "ok", "restored": "restored", "up to date": "uptodate", "failed": "failed",
    "running": "running", "pending": "pending", "skipped": "skipped", "cancelled": "skipped",
}  # fmt: skip
ImgSrc = Callable[[str, str], str]


def _when(t: Any) -> str:
    if not _is_num(t) or not 0 <= t < 1e11:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _secs(s: Any) -> str:
    if not _is_num(s) or abs(s) > 1e11:
        return ""
    if s < 60:
        return f"{s:.1f}s"
    return f"{int(s // 60)}m{int(s % 60):02d}s"


def layout(
    title: str,
    active: str,
    body: str,
    css: str,
    script: str = "",
    nav: bool = True,
    head: str = "",
) -> str:
    """A whole page: ``css`` and ``script`` are the page's own ``<link>``/``<style>`` and
    ``<script>`` tags, ``head`` what goes first in ``<head>`` (the report's CSP)."""
    links = "".join(
        f'<a href="/{k}" class="{"on" if k == active else ""}">{v}</a>'
        for k, v in (("now", "Now"), ("history", "History"), ("dataset", "Dataset"))
    )
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>{head}"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · pipemake</title>{css}</head><body>"
        f"<header><b>pipemake</b>{'<nav>' + links + '</nav>' if nav else ''}</header>"
        f"<main>{body}</main>{script}</body></html>"
    )


def _depths(order: list[str], deps: dict[str, list[str]]) -> dict[str, int]:
    depth: dict[str, int] = {}
    for s in order:  # the run's order is topological
        depth[s] = 1 + max((depth.get(d, 0) for d in deps.get(s, []) if d in depth), default=-1)
    return depth


def dag_svg(run: dict[str, Any]) -> str:
    """The run's stages as a left-to-right graph, each box coloured by its state."""
    order, deps, stages = run.get("order") or [], run.get("deps") or {}, run.get("stages") or {}
    if not order:
        return ""
    depth = _depths(order, deps)
    rows: dict[int, int] = {}
    pos: dict[str, tuple[int, int]] = {}
    for s in order:
        col = depth[s]
        pos[s] = (col, rows.get(col, 0))
        rows[col] = rows.get(col, 0) + 1
    w, h, gx, gy = 150, 34, 40, 14
    width = (max(depth.values()) + 1) * (w + gx)
    height = max(rows.values()) * (h + gy)
    parts = [f'<svg class=dag width="{width}" height="{height}" role=img aria-label="stage graph">']
    for s in order:
        x, y = pos[s][0] * (w + gx), pos[s][1] * (h + gy)
        for d in deps.get(s, []):
            if d in pos:
                dx, dy = pos[d][0] * (w + gx) + w, pos[d][1] * (h + gy) + h / 2
                parts.append(f'<line x1="{dx}" y1="{dy}" x2="{x}" y2="{y + h / 2}"/>')
    for s in order:
        x, y = pos[s][0] * (w + gx), pos[s][1] * (h + gy)
        state = (stages.get(s) or {}).get("state", "pending")
        label = str(s) if len(str(s)) <= 18 else str(s)[:17] + "…"
        parts.append(
            f'<g class="node {_cls(state)}" data-stage="{e(s)}">'
            f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx=5 />'
            f'<text x="{x + 8}" y="{y + 14}">{e(label)}</text>'
            f'<text class=st x="{x + 8}" y="{y + 28}">{e(state)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _bar(frac: float, text: str) -> str:
    # an SVG rect's width attribute, not a style attribute: the CSP allows no inline style
    pct = max(0.0, min(1.0, frac)) * 100 if _is_num(frac) else 0.0
    return (
        '<div class=bar><svg aria-hidden=true><rect height="100%" '
        f'width="{pct:.1f}%"/></svg><span>{e(text)}</span></div>'
    )


_FINISHED = ("ran", "restored", "up to date", "failed", "skipped", "cancelled")


def _estimator(run: dict[str, Any], now: float) -> Estimator:
    """The run's folded state as the build's own :class:`Estimator` sees it, so the page
    shows the ETAs ``pipemake build`` prints (the critical path of what is left, a running
    stage's elapsed time and live pace counted), not an estimate of its own."""
    est = Estimator(clock=lambda: now)
    stages, est.order = run.get("stages") or {}, list(run.get("order") or [])
    est.deps = {k: list(v) for k, v in (run.get("deps") or {}).items()}
    est.expected = {k: float(v) for k, v in (run.get("expected") or {}).items() if v is not None}
    est.per_item = {k: float(v) for k, v in (run.get("per_item") or {}).items()}
    est.jobs, est.started = run.get("jobs"), run.get("started")
    for sid in est.order:
        info = stages.get(sid) or {}
        if info.get("state") in _FINISHED:
            est.settled[sid] = str(info["state"])
        elif info.get("state") == "running":
            first = info.get("first")
            est.running[sid] = StageClock(
                float(info.get("started") or now), done=info.get("done") or None,
                total=info.get("total") or None, items=info.get("items_run"),
                first=(float(first[0]), int(first[1])) if first else None,
            )  # fmt: skip
    return est


def _stage_eta(s: dict[str, Any], sid: str, est: Estimator, now: float) -> tuple[float, str]:
    state = s.get("state")
    if state in ("ran", "restored", "up to date"):
        return 1.0, _secs(s.get("duration")) or state
    if state != "running":
        return 0.0, state or ""
    elapsed = now - (s.get("started") or now)
    done, total = s.get("done") or 0, s.get("total") or 0
    left = est.stage_eta(sid, now)
    eta = f", ETA {_secs(left)}" if left is not None else ""
    if total:
        return done / total, f"{done}/{total}{eta}"
    expected = est.expected.get(sid)
    if expected:
        return min(elapsed / expected, 0.99), f"{_secs(elapsed)} of ~{_secs(expected)}"
    return 0.0, f"{_secs(elapsed)}"


def now_fragment(run: dict[str, Any], now: float | None = None) -> str:
    """The Now page's content: the graph, overall and per-stage bars with ETA, the latest
    log lines of each stage, and a finished run's summary."""
    now = now or time.time()
    if run.get("result") == "none":
        return (
            '<p class=empty id=nowstate data-result="none">No build yet: run '
            "<code>pipemake build</code>.</p>"
        )
    stages, order = run.get("stages") or {}, run.get("order") or []
    result = run.get("result", "running")
    finished = [s for s in order if (stages.get(s) or {}).get("state") in _FINISHED]
    # no ETA while a stage left has no honest estimate (never built, too little progress)
    est = _estimator(run, now)
    left = est.remaining(now)
    total_text = f"{len(finished)}/{len(order)} stages"
    if result == "running" and left:
        total_text += f", ETA ~{_secs(left)}"
    out = [
        f'<div id=nowstate data-result="{e(result)}" data-run="{e(str(run.get("id", "")))}">',
        f"<h2>Run {e(str(run.get('id', '')))} "
        f"<span class='badge {e(result)}'>{e(result)}</span></h2>",
        f"<p>started {_when(run.get('started'))}",
        f", took {_secs(run.get('duration'))}" if run.get("duration") is not None else "",
        "</p>",
        _bar(len(finished) / len(order) if order else 1.0, total_text),
        dag_svg(run),
    ]
    if result != "running":
        counts: dict[str, list[str]] = {}
        for s in order:
            counts.setdefault((stages.get(s) or {}).get("state", "pending"), []).append(s)
        summary = "; ".join(f"{k}: {', '.join(v)}" for k, v in counts.items())
        out.append(f"<p class=summary>Finished: {e(summary)}</p>")
    out.append("<div class=stages>")
    for s in order:
        info = stages.get(s) or {}
        frac, text = _stage_eta(info, s, est, now)
        out.append(
            f'<section class="stage {_cls(info.get("state"))}" '
            f'data-stage="{e(s)}">'
            f"<h3>{e(s)} <small>{e(info.get('state', 'pending'))}</small></h3>{_bar(frac, text)}"
        )
        if info.get("reasons"):
            out.append(f"<p class=why>{e('; '.join(map(str, info['reasons'])))}</p>")
        logs = info.get("logs") or []
        if logs:
            tail = "\n".join(str(x.get("text", "")) for x in logs[-6:])
            out.append(f"<pre class=log>{e(tail)}</pre>")
        if info.get("error"):
            out.append(f"<pre class=error>{e(info['error'])}</pre>")
        out.append("</section>")
    out.append("</div></div>")
    return "".join(out)


def history_page(runs: list[dict[str, Any]], link: Callable[[str], str]) -> str:
    """Every run, newest first, as ``pipemake list --runs`` shows them."""
    if not runs:
        return "<h1>History</h1><p class=empty>No runs recorded yet.</p>"
    rows = []
    for r in reversed(runs):
        failed = r.get("failed") or {}
        rows.append(
            f"<tr class='{e(str(r.get('result')))}'><td><a href=\"{e(link(r['id']))}\">"
            f"{e(r['id'])}</a></td><td>{_when(r.get('started'))}</td>"
            f"<td>{_secs(r.get('duration'))}</td><td>{e(str(r.get('result')))}</td>"
            f"<td>{num(r.get('ran', 0))}</td><td>{num(r.get('restored', 0))}</td>"
            f"<td>{num(r.get('up_to_date', 0))}</td><td>{num(r.get('skipped', 0))}</td>"
            f"<td>{e(', '.join(map(str, failed)))}</td></tr>"
        )
    return (
        "<h1>History</h1><table class=runs><thead><tr><th>run</th><th>started</th>"
        "<th>took</th><th>result</th><th>ran</th><th>restored</th><th>up to date</th>"
        f"<th>skipped</th><th>failed</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _gantt(run: dict[str, Any]) -> str:
    order, stages = run.get("order") or [], run.get("stages") or {}
    t0 = run.get("started")
    t1 = next((t for t in (run.get("finished"), run.get("last")) if _is_num(t) and t), t0)
    if not _is_num(t0) or not order:
        return ""
    span = max(t1 - t0, 1e-3)
    w, lh, left = 900, 22, 150
    parts = [
        f'<svg class=gantt width="{w + left}" height="{len(order) * lh + 24}" '
        'role=img aria-label="timeline">'
    ]
    for i, s in enumerate(order):
        info = stages.get(s) or {}
        y = i * lh
        parts.append(f'<text x="0" y="{y + 15}">{e(s)}</text>')
        start, end = info.get("started"), info.get("finished")
        if _is_num(start):
            end = end if _is_num(end) else t1
            x = left + (start - t0) / span * w
            bw = max((end - start) / span * w, 2)
            cls = _cls(info.get("state"))
            parts.append(
                f'<rect class="{cls}" x="{x:.1f}" y="{y + 3}" width="{bw:.1f}" height="{lh - 6}">'
                f"<title>{e(s)}: {_secs(end - start)}</title></rect>"
            )
        for task in info.get("tasks") or []:
            if not _is_num(task.get("start")):
                continue
            te = task.get("end") if _is_num(task.get("end")) and task.get("end") else t1
            x = left + (task["start"] - t0) / span * w
            bw = max((te - task["start"]) / span * w, 1)
            parts.append(
                f'<rect class=task x="{x:.1f}" y="{y + lh - 7}" width="{bw:.1f}" height="3">'
                f"<title>{e(str(task.get('id')))}: {_secs(te - task['start'])}</title></rect>"
            )
    parts.append(f'<text x="{left}" y="{len(order) * lh + 18}">0s</text>')
    parts.append(f'<text x="{left + w - 40}" y="{len(order) * lh + 18}">{_secs(span)}</text></svg>')
    return "".join(parts)


def run_page(run: dict[str, Any]) -> str:
    """One run: the graph, its Gantt chart, what ran / was restored / was up to date and
    why, durations against the run before, and each stage's log with errors in full."""
    stages, order = run.get("stages") or {}, run.get("order") or []
    prev = run.get("previous") or {}
    rows = []
    for s in order:
        info = stages.get(s) or {}
        d, p = info.get("duration"), prev.get(s)
        delta = f"{(d - p):+.1f}s" if _is_num(d) and _is_num(p) and p else ""
        state = info.get("state", "pending")
        rows.append(
            f"<tr class='{_cls(state)}' data-stage='{e(s)}'><td>{e(s)}</td>"
            f"<td>{e(state)}</td><td>{e('; '.join(map(str, info.get('reasons') or [])))}</td>"
            f"<td>{_secs(d)}</td><td>{_secs(p)}</td><td>{delta}</td></tr>"
        )
    logs = []
    for s in order:
        info = stages.get(s) or {}
        lines = info.get("logs") or []
        if not lines and not info.get("error"):
            continue
        failed = bool(info.get("error"))
        text = "\n".join(f"[{x.get('level', '')}] {x.get('text', '')}" for x in lines)
        logs.append(
            f"<details class=stagelog data-stage='{e(s)}' {'open' if failed else ''}>"
            f"<summary>{e(s)} ({len(lines)} lines{', failed' if failed else ''})</summary>"
            + (f"<pre class=log>{e(text)}</pre>" if lines else "")
            + (f"<pre class=error>{e(info['error'])}</pre>" if failed else "")
            + "</details>"
        )
    before = run.get("previous_id")
    return (
        f"<h1>Run {e(str(run.get('id')))} <span class='badge {e(run.get('result', ''))}'>"
        f"{e(run.get('result', ''))}</span></h1>"
        f"<p>started {_when(run.get('started'))}, took {_secs(run.get('duration')) or '?'}"
        + (f"; compared with run {e(before)}" if before else "")
        + "</p>"
        + dag_svg(run)
        + "<h2>Timeline</h2>"
        + _gantt(run)
        + "<h2>Stages</h2><table class=stagetable><thead><tr><th>stage</th><th>result</th>"
        "<th>why</th><th>took</th><th>before</th><th>change</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table><h2>Logs</h2>"
        + ("".join(logs) or "<p class=empty>No output.</p>")
    )


def dataset_index(stages: list[tuple[str, str]], rules: tuple[str, ...], error: str | None) -> str:
    """The stages that have a dataset view."""
    if error:
        return f"<h1>Dataset</h1><pre class=error>{e(error)}</pre>"
    items = "".join(
        f'<li><a href="/dataset/{e(url_part(s))}">{e(s)}</a> <small>{e(r)}</small></li>'
        for s, r in stages
        if r in rules
    )
    return f"<h1>Dataset</h1><ul class=stagelist>{items or '<li>no dataset stages</li>'}</ul>"


def _thumb(view: DatasetView, f: dict[str, Any], src: ImgSrc, edit: bool, targets: list) -> str:
    flags = []
    if view.rule != "frame_extraction" and not f.get("reviewed"):
        flags.append("<span class=flag title='no curation entry covers it'>unreviewed</span>")
    assign = f.get("assign")
    if assign == "rejected":
        flags.append("<span class='flag rej'>rejected</span>")
    elif assign:
        flags.append(f"<span class='flag mov'>→ {e(assign)}</span>")
    cap = f.get("caption") or ""
    meta = f.get("split") or (
        f"{f['time']:.2f}s" if isinstance(f.get("time"), (int, float)) else ""
    )
    out = [
        f'<figure class=thumb data-id="{e(f.get("id", ""))}" data-path="{e(f["path"])}">'
        f'<img loading=lazy alt="{e(f["file"])}" src="{e(src(view.stage, f["path"]))}">'
        f"<figcaption>{''.join(flags)} <small>{e(meta)}</small>"
        + (f"<span class=cap>{e(cap)}</span>" if cap and not edit else "")
    ]
    if edit and f.get("id"):
        opts = "".join(f'<option value="{e(t)}">{e(t)}</option>' for t in targets)
        out.append(
            "<span class=acts>"
            "<select class=moveto aria-label='move to'>"
            f"<option value=''>move to…</option>{opts}</select>"
            + (
                "<button class=undo>undo</button>"
                if assign
                else "<button class=reject title='leave out of the training set'>reject</button>"
            )
            + f"<input class=caption placeholder='caption' value=\"{e(cap)}\">"
            "<button class=savecap>save</button></span>"
        )
    out.append("</figcaption></figure>")
    return "".join(out)


def dataset_page(view: DatasetView, src: ImgSrc, edit: bool) -> str:
    """A stage's dataset as grids of thumbnails, with the curation actions when ``edit``."""
    notes = "".join(f"<p class=note>{e(n)}</p>" for n in view.notes)
    curating = edit and view.rule in ("clustering", "training_data_prep")
    clusters = [g for g in view.groups if not g["noise"]]
    targets = (
        sorted({g["label"] or g["name"] for g in clusters}) if view.rule == "clustering" else []
    )
    if view.rule == "training_data_prep":
        targets = sorted({g["name"] for g in view.groups})
    parts = [f"<h1>Dataset: {e(view.stage)} <small>{e(view.rule)}</small></h1>{notes}"]
    for g in view.groups:
        label = g.get("label") or ""
        head = f"{e(g['name'])}" + (
            f" · <b class=name>{e(label)}</b>" if label and label != g["name"] else ""
        )
        parts.append(
            f'<section class="group{" noise" if g["noise"] else ""}" data-cluster="{e(g["name"])}" '
            f'data-label="{e(label)}"><h2>{head} <small>{num(g["size"])} images</small></h2>'
        )
        if curating and view.rule == "clustering" and not g["noise"]:
            others = "".join(
                f'<option value="{e(o["name"])}">{e(o["label"] or o["name"])}</option>'
                for o in clusters
                if o["name"] != g["name"]
            )
            parts.append(
                "<div class=clusteracts><input class=newname placeholder='character name' "
                f'value="{e(label)}"><button class=rename>name</button>'
                "<select class=mergewith aria-label='merge with'>"
                f"<option value=''>merge with…</option>{others}</select>"
                "<button class=merge>merge</button></div>"
            )
        parts.append("<div class=grid>")
        parts += [_thumb(view, f, src, curating, targets) for f in g["files"]]
        parts.append("</div></section>")
    return "".join(parts)

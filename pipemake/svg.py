"""A picture of the stage graph: SVG (through Graphviz ``dot`` when it is installed, else a
simple layered layout of pipemake's own) and a self-contained HTML page holding it.

Both layouts describe the graph the same way, so a reader (or a test) finds every stage as
``<g class="node"><title>ID</title>…`` and every edge as ``<g class="edge"><title>A->B``;
boxes are coloured by the stage's state (up to date, stale, never built, failed). Nothing
is downloaded: the page carries its picture and the Mermaid source as text.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from collections.abc import Mapping

from .dag import Graph
from .errors import UsageError

__all__ = ["ENGINES", "page", "svg"]

#: how ``graph --format svg`` draws: ``auto`` (dot when installed), ``dot``, ``builtin``
ENGINES = ("auto", "dot", "builtin")

#: fill and stroke per state, as ``status`` names states
_COLOURS = {
    "up to date": ("#d4edda", "#2e7d32"),
    "stale": ("#fff3cd", "#b7791f"),
    "never built": ("#eceff1", "#607d8b"),
    "failed": ("#f8d7da", "#c62828"),
    "interrupted": ("#f8d7da", "#c62828"),
}
_NONE = ("#ffffff", "#455a64")

_BOX_H, _GAP_X, _GAP_Y, _MARGIN, _CHAR_W, _WAYPOINT_W = 54, 28, 56, 20, 7.6, 10.0


def svg(
    graph: Graph,
    labels: Mapping[str, str],
    states: Mapping[str, str],
    engine: str = "auto",
) -> str:
    """The graph as an SVG document: boxes with each stage's id, rule and state, coloured
    by the state, and an arrow per dependency."""
    if engine not in ENGINES:
        raise UsageError(f"unknown graph engine {engine!r} ({', '.join(ENGINES)})")
    dot = shutil.which("dot") if engine != "builtin" else None
    if engine == "dot" and dot is None:
        raise UsageError(
            "--engine dot: Graphviz's dot is not installed (apt-get install graphviz, "
            "brew install graphviz); --engine builtin draws without it"
        )
    if dot is not None:
        drawn = _graphviz(dot, graph, labels, states)
        if drawn is not None:
            return drawn
        if engine == "dot":
            raise UsageError("Graphviz's dot failed to draw the graph; --engine builtin draws it")
    return _layered(graph, labels, states)


def _graphviz(
    dot: str, graph: Graph, labels: Mapping[str, str], states: Mapping[str, str]
) -> str | None:
    """The SVG ``dot`` draws (None when it fails)."""
    lines = [
        "digraph pipeline {",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=12];',
    ]
    for n in graph.topo_order():
        fill, stroke = _COLOURS.get(states.get(n, ""), _NONE)
        label = "\\n".join(_dot_text(t) for t in (n, labels.get(n, ""), states.get(n, "")) if t)
        lines.append(f'  "{n}" [label="{label}", fillcolor="{fill}", color="{stroke}"];')
    for n in graph.topo_order():
        for d in graph.deps[n]:
            lines.append(f'  "{d}" -> "{n}";')
    lines.append("}")
    try:
        done = subprocess.run(
            [dot, "-Tsvg"], input="\n".join(lines), capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0 or "<svg" not in done.stdout:
        return None
    return done.stdout


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _depths(graph: Graph) -> dict[str, int]:
    depth: dict[str, int] = {}
    for n in graph.topo_order():
        depth[n] = 1 + max((depth[d] for d in graph.deps[n]), default=-1)
    return depth


def _place(
    graph: Graph, width: dict[str, float]
) -> tuple[dict[str, float], dict[str, int], dict[tuple[str, str], list[str]], float, int]:
    """Where each box goes: ``(centre x, row, waypoints of each edge, width, rows)``.

    A stage sits one row below its deepest dependency. An edge that spans several rows
    passes through a waypoint in each row between (so it runs beside the boxes there, not
    through them), and each row is ordered by where its boxes' and waypoints' predecessors
    stand (the barycentre heuristic: fewer crossings)."""
    depth = _depths(graph)
    n_rows = max(depth.values(), default=-1) + 1
    rows: list[list[str]] = [[] for _ in range(n_rows)]
    row_of = dict(depth)
    preds: dict[str, list[str]] = {}
    via: dict[tuple[str, str], list[str]] = {}
    widths = dict(width)
    order = graph.topo_order()
    for n in order:
        rows[depth[n]].append(n)
    for n in order:
        preds[n] = []
        for d in graph.deps[n]:
            prev, chain = d, []
            for r in range(depth[d] + 1, depth[n]):
                point = f"\0{d}\0{n}\0{r}"  # no stage id holds a NUL: never a clash
                rows[r].append(point)
                widths[point], preds[point], row_of[point] = _WAYPOINT_W, [prev], r
                chain.append(point)
                prev = point
            preds[n].append(prev)
            via[(d, n)] = chain
    centre: dict[str, float] = {}
    for r, row in enumerate(rows):
        if r:
            row.sort(key=lambda v: sum(centre[u] for u in preds[v]) / len(preds[v]))
        x = 0.0
        for v in row:
            centre[v] = x + widths[v] / 2
            x += widths[v] + _GAP_X
    row_w = [sum(widths[v] for v in row) + _GAP_X * (len(row) - 1) for row in rows]
    total_w = max(row_w, default=0.0)
    for row, w in zip(rows, row_w, strict=True):
        for v in row:
            centre[v] += _MARGIN + (total_w - w) / 2
    return centre, row_of, via, total_w, n_rows


def _row_top(row: int) -> float:
    return _MARGIN + row * (_BOX_H + _GAP_Y)


def _edge_path(points: list[tuple[float, float]]) -> str:
    """A smooth path down through ``points``: curves across the gaps between rows, straight
    lines through the rows a long edge passes."""
    (x, y), rest = points[0], points[1:]
    d = [f"M {x:.1f} {y:.1f}"]
    for nx, ny in rest:
        if nx == x:
            d.append(f"L {nx:.1f} {ny:.1f}")
        else:
            bend = (ny - y) / 2
            d.append(f"C {x:.1f} {y + bend:.1f} {nx:.1f} {ny - bend:.1f} {nx:.1f} {ny:.1f}")
        x, y = nx, ny
    return " ".join(d)


def _layered(graph: Graph, labels: Mapping[str, str], states: Mapping[str, str]) -> str:
    """pipemake's own drawing (see :func:`_place`): boxes in rows, edges as curves."""
    width = {
        n: max(90.0, _CHAR_W * max(len(n), len(labels.get(n, "")), len(states.get(n, ""))) + 24)
        for n in graph.deps
    }
    centre, row_of, via, total_w, n_rows = _place(graph, width)
    total_h = n_rows * _BOX_H + max(n_rows - 1, 0) * _GAP_Y
    view_w, view_h = total_w + 2 * _MARGIN, total_h + 2 * _MARGIN
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{view_w:.0f}" height="{view_h:.0f}" '
        f'viewBox="0 0 {view_w:.0f} {view_h:.0f}" font-family="Helvetica, Arial, sans-serif">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        '<path d="M 0 0 L 10 5 L 0 10 z" fill="#546e7a"/></marker></defs>',
        '<g class="graph"><title>pipeline</title>',
    ]
    order = graph.topo_order()
    for n in order:
        for d in graph.deps[n]:
            points = [(centre[d], _row_top(row_of[d]) + _BOX_H)]
            for point in via[(d, n)]:
                top = _row_top(row_of[point])
                points += [(centre[point], top), (centre[point], top + _BOX_H)]
            points.append((centre[n], _row_top(row_of[n])))
            out.append(
                f'<g class="edge"><title>{_esc(d)}-&gt;{_esc(n)}</title>'
                f'<path d="{_edge_path(points)}" fill="none" stroke="#546e7a" '
                'stroke-width="1.4" marker-end="url(#arrow)"/></g>'
            )
    for n in order:
        out.append(_box(n, centre[n], _row_top(row_of[n]), width[n], labels, states))
    out.append("</g></svg>")
    return "\n".join(out) + "\n"


def _box(
    n: str, cx: float, y: float, w: float, labels: Mapping[str, str], states: Mapping[str, str]
) -> str:
    """One stage's box: its id, rule and state, coloured by the state."""
    fill, stroke = _COLOURS.get(states.get(n, ""), _NONE)
    texts = [(n, 'font-size="13" font-weight="bold"', 17)]
    if labels.get(n):
        texts.append((labels[n], 'font-size="11" fill="#37474f"', 32))
    if states.get(n):
        texts.append((states[n], 'font-size="10" font-style="italic" fill="#37474f"', 46))
    return (
        f'<g class="node" data-state="{_esc(states.get(n, ""))}"><title>{_esc(n)}</title>'
        f'<rect x="{cx - w / 2:.1f}" y="{y:.1f}" width="{w:.1f}" height="{_BOX_H}" rx="6" '
        f'fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>'
        + "".join(
            f'<text x="{cx:.1f}" y="{y + dy:.1f}" text-anchor="middle" {style}>{_esc(text)}</text>'
            for text, style, dy in texts
        )
        + "</g>"
    )


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


_PROLOGUE = re.compile(r"^\s*(<\?xml[^>]*\?>\s*)?(<!DOCTYPE[^>]*>\s*)?(<!--.*?-->\s*)*", re.S)


def page(title: str, picture: str, mermaid: str) -> str:
    """A self-contained HTML page: the SVG ``picture``, a legend of the state colours, and
    the Mermaid source as text (paste it into any Mermaid viewer)."""
    inline = _PROLOGUE.sub("", picture, count=1)
    legend = "".join(
        f'<span class="key" style="background:{fill};border-color:{stroke}">{_esc(state)}</span>'
        for state, (fill, stroke) in _COLOURS.items()
        if state != "interrupted"
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{_esc(title)} — pipemake graph</title>
<style>
body {{ font-family: Helvetica, Arial, sans-serif; margin: 1.5em; color: #263238; }}
.key {{ display: inline-block; border: 1.5px solid; border-radius: 5px; padding: 2px 8px;
        margin-right: 6px; font-size: 12px; }}
.picture {{ overflow: auto; margin: 1em 0; }}
pre {{ background: #f5f5f5; padding: 1em; overflow: auto; }}
</style>
</head>
<body>
<h1>{_esc(title)}</h1>
<p>{legend}</p>
<div class="picture">
{inline}</div>
<details><summary>Mermaid source</summary>
<pre class="mermaid-source">{_esc(mermaid)}</pre>
</details>
</body>
</html>
"""

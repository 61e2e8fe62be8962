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

_BOX_H, _GAP_X, _GAP_Y, _MARGIN, _CHAR_W = 54, 28, 56, 20, 7.6


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


def _layered(graph: Graph, labels: Mapping[str, str], states: Mapping[str, str]) -> str:
    """pipemake's own drawing: one row per depth (a stage sits one row below its deepest
    dependency), each row ordered by where its dependencies stand, edges as curves."""
    depth = _depths(graph)
    rows: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for n in graph.topo_order():
        rows[depth[n]].append(n)
    width = {
        n: max(90.0, _CHAR_W * max(len(n), len(labels.get(n, "")), len(states.get(n, ""))) + 24)
        for n in depth
    }
    centre: dict[str, float] = {}
    for r, row in enumerate(rows):
        if r:  # barycentre of the dependencies' positions: fewer crossings
            row.sort(key=lambda n: sum(centre[d] for d in graph.deps[n]) / len(graph.deps[n]))
        x = 0.0
        for n in row:
            centre[n] = x + width[n] / 2
            x += width[n] + _GAP_X
    row_w = [sum(width[n] for n in row) + _GAP_X * (len(row) - 1) for row in rows]
    total_w = max(row_w, default=0.0)
    for row, w in zip(rows, row_w, strict=True):
        shift = _MARGIN + (total_w - w) / 2
        for n in row:
            centre[n] += shift
    total_h = len(rows) * _BOX_H + max(len(rows) - 1, 0) * _GAP_Y
    view_w, view_h = total_w + 2 * _MARGIN, total_h + 2 * _MARGIN
    top = {n: _MARGIN + depth[n] * (_BOX_H + _GAP_Y) for n in depth}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{view_w:.0f}" height="{view_h:.0f}" '
        f'viewBox="0 0 {view_w:.0f} {view_h:.0f}" font-family="Helvetica, Arial, sans-serif">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        '<path d="M 0 0 L 10 5 L 0 10 z" fill="#546e7a"/></marker></defs>',
        '<g class="graph"><title>pipeline</title>',
    ]
    for n in graph.topo_order():
        for d in graph.deps[n]:
            x1, y1 = centre[d], top[d] + _BOX_H
            x2, y2 = centre[n], top[n]
            bend = (y2 - y1) / 2
            out.append(
                f'<g class="edge"><title>{_esc(d)}-&gt;{_esc(n)}</title>'
                f'<path d="M {x1:.1f} {y1:.1f} C {x1:.1f} {y1 + bend:.1f} {x2:.1f} '
                f'{y2 - bend:.1f} {x2:.1f} {y2:.1f}" fill="none" stroke="#546e7a" '
                'stroke-width="1.4" marker-end="url(#arrow)"/></g>'
            )
    for n in graph.topo_order():
        fill, stroke = _COLOURS.get(states.get(n, ""), _NONE)
        x, y, w = centre[n] - width[n] / 2, top[n], width[n]
        texts = [(n, 'font-size="13" font-weight="bold"', 17)]
        if labels.get(n):
            texts.append((labels[n], 'font-size="11" fill="#37474f"', 32))
        if states.get(n):
            texts.append((states[n], 'font-size="10" font-style="italic" fill="#37474f"', 46))
        out.append(
            f'<g class="node" data-state="{_esc(states.get(n, ""))}"><title>{_esc(n)}</title>'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{_BOX_H}" rx="6" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>'
            + "".join(
                f'<text x="{centre[n]:.1f}" y="{y + dy:.1f}" text-anchor="middle" {style}>'
                f"{_esc(text)}</text>"
                for text, style, dy in texts
            )
            + "</g>"
        )
    out.append("</g></svg>")
    return "\n".join(out) + "\n"


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

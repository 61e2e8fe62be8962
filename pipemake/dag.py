"""The stage graph: edges, a cycle's path, topological order, ancestors, and renderings."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["Graph"]


@dataclass
class Graph:
    """A DAG of stage ids; ``deps[s]`` are the stages ``s`` needs (in file order)."""

    deps: dict[str, list[str]] = field(default_factory=dict)

    @property
    def nodes(self) -> list[str]:
        return list(self.deps)

    def dependents(self) -> dict[str, list[str]]:
        """For each stage, the stages that need it."""
        out: dict[str, list[str]] = {n: [] for n in self.deps}
        for node, deps in self.deps.items():
            for dep in deps:
                out[dep].append(node)
        return out

    def find_cycle(self) -> list[str] | None:
        """A cycle as a path ``[a, b, a]``, or None when the graph is acyclic."""
        white, grey, black = 0, 1, 2
        color = dict.fromkeys(self.deps, white)
        for start in self.deps:
            if color[start] != white:
                continue
            stack: list[tuple[str, int]] = [(start, 0)]
            path: list[str] = [start]
            color[start] = grey
            while stack:
                node, i = stack[-1]
                deps = self.deps[node]
                if i < len(deps):
                    stack[-1] = (node, i + 1)
                    nxt = deps[i]
                    if color[nxt] == grey:
                        cycle = path[path.index(nxt) :] + [nxt]
                        return list(reversed(cycle))
                    if color[nxt] == white:
                        color[nxt] = grey
                        stack.append((nxt, 0))
                        path.append(nxt)
                else:
                    color[node] = black
                    stack.pop()
                    path.pop()
        return None

    def topo_order(self, among: Iterable[str] | None = None) -> list[str]:
        """Stages in an order where every stage comes after its dependencies (file order
        breaks ties)."""
        wanted = set(self.deps) if among is None else set(among)
        order: list[str] = []
        seen: set[str] = set()
        for root in self.deps:
            if root not in wanted or root in seen:
                continue
            stack: list[tuple[str, int]] = [(root, 0)]
            seen.add(root)
            while stack:
                node, i = stack[-1]
                deps = self.deps[node]
                if i < len(deps):
                    stack[-1] = (node, i + 1)
                    dep = deps[i]
                    if dep not in seen and dep in wanted:
                        seen.add(dep)
                        stack.append((dep, 0))
                else:
                    stack.pop()
                    order.append(node)
        return order

    def ancestors(self, targets: Iterable[str]) -> set[str]:
        """The targets and every stage they need, transitively."""
        out: set[str] = set()
        stack = list(targets)
        while stack:
            node = stack.pop()
            if node in out:
                continue
            out.add(node)
            stack.extend(self.deps[node])
        return out

    def render(self, fmt: str, labels: Mapping[str, str] | None = None) -> str:
        """The graph as ``text``, ``mermaid`` or ``dot``."""
        labels = labels or {}
        order = self.topo_order()
        if fmt == "mermaid":
            lines = ["flowchart TD"]
            for n in order:
                lines.append(f'    {_mid(n)}["{n}<br/><small>{labels.get(n, "")}</small>"]')
            for n in order:
                for d in self.deps[n]:
                    lines.append(f"    {_mid(d)} --> {_mid(n)}")
            return "\n".join(lines)
        if fmt == "dot":
            lines = ["digraph pipeline {", "    rankdir=LR;", "    node [shape=box];"]
            for n in order:
                lines.append(f'    "{n}" [label="{n}\\n{labels.get(n, "")}"];')
            for n in order:
                for d in self.deps[n]:
                    lines.append(f'    "{d}" -> "{n}";')
            lines.append("}")
            return "\n".join(lines)
        lines = []
        for n in order:
            label = f" ({labels[n]})" if n in labels else ""
            deps = f"  ← {', '.join(self.deps[n])}" if self.deps[n] else ""
            lines.append(f"{n}{label}{deps}")
        return "\n".join(lines)


def _mid(name: str) -> str:
    """A Mermaid node id for stage ``name``: ASCII letters and digits as they are, ``_`` as
    ``__``, ``-`` as ``_h`` and any other character as ``_x<hex>_``, so two stage ids
    (``pre-process``, ``pre_process``) never share a node, and an id's node stays the same
    whatever else the pipeline holds."""
    out = ["s_"]
    for c in name:
        if c.isascii() and c.isalnum():
            out.append(c)
        elif c == "_":
            out.append("__")
        elif c == "-":
            out.append("_h")
        else:
            out.append(f"_x{ord(c):x}_")
    return "".join(out)

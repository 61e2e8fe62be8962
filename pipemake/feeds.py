"""Which stages' outputs put files into an input: the edges a pipeline's paths imply
besides its references. An input folder holding another stage's output needs that stage
(its content is complete only once that stage has run); a glob input or a foreach pattern
needs only the outputs it may take in, matched as the items are chosen (``*`` crossing
``/``, ``**/`` standing for zero or more folders, a pattern's ``|`` and name globs, hidden
files skipped)."""

from __future__ import annotations

import bisect
import fnmatch
from collections.abc import Mapping

from .items import bracket_close, glob_match, matches
from .model import Pipeline, Stage

__all__ = ["OutputIndex"]


class OutputIndex:
    """Every stage's outputs sorted by path, to find those lying inside an input folder
    without comparing each input with each output (:mod:`pipemake.binding` adds the edges
    they imply)."""

    def __init__(self, stages: Mapping[str, Stage]) -> None:
        self.outs = sorted(
            (out, sid, key) for sid, st in stages.items() for key, out in st.ports.outputs.items()
        )

    def below(self, folder: str) -> list[tuple[str, str, str]]:
        """``(path, stage, output name)`` of each output strictly inside ``folder`` (``.``:
        the project, which holds every relative output)."""
        if folder in (".", ""):
            return [o for o in self.outs if not o[0].startswith("/")]
        prefix = folder.rstrip("/") + "/"
        at = bisect.bisect_left(self.outs, (prefix,))
        found = []
        while at < len(self.outs) and self.outs[at][0].startswith(prefix):
            found.append(self.outs[at])
            at += 1
        return found

    def feeding(
        self, pipeline: Pipeline, reader: str, path: str, base: str, pattern: str | None
    ) -> list[tuple[str, str, bool]]:
        """``(output path, stage, surely)`` of the other stages' outputs that put files
        into input ``path`` of stage ``reader`` (``base``: the folder, or a glob's fixed
        part; ``pattern``: the foreach pattern choosing its items). Surely: an output
        inside the folder; for a glob or a pattern, an output matching it, or a folder (as
        its rule declares it) that may hold a file matching it. Not surely: an output of
        a ``shell`` or ``python`` stage (a file or a folder, as its command makes it) that
        does not match but might hold a file that does."""
        cut = len(base) + 1 if base != "." else 0
        rel_glob = path[cut:] if path != base else None
        feeds = []
        for out, sid, name in self.below(base):
            if sid == reader:
                continue
            kind = pipeline.stages[sid].ports.output_kinds.get(name)
            rel = out[cut:]
            sure = True
            filters = [(rel_glob, False), (pattern, True)]
            for glob, is_pattern in [(g, is_p) for g, is_p in filters if g]:
                took = _may_take(rel, glob, kind, is_pattern)
                if took is False:
                    break
                sure = sure and took is True
            else:
                feeds.append((out, sid, sure))
        return feeds


def _may_take(rel: str, glob: str, kind: str | None, pattern: bool) -> bool | None:
    """Whether files an output at ``rel`` (inside an input folder) makes are among the
    files ``glob`` chooses there: True when the output matches it (or is a folder, as its
    rule declares, that may hold a match), False when none can, None when only a folder
    could hold a match and the output may be a file. ``pattern``: ``glob`` is a foreach
    pattern (``|`` between globs, matched against the name when it has no ``/``, hidden
    files skipped, case aside) rather than an input's glob."""
    if matches(rel, glob) if pattern else glob_match(rel, glob):
        return True
    if kind == "file" or (pattern and (rel[0] == "." or "/." in rel)):
        return False
    globs = [g.strip().lower() for g in glob.split("|") if g.strip()] if pattern else [glob]
    low = rel.lower() if pattern else rel
    if any((pattern and "/" not in g) or _may_start(g, low + "/") for g in globs):
        return True if kind == "dir" else None
    return False


def _may_start(glob: str, prefix: str) -> bool:
    """Whether some path beginning with ``prefix`` matches ``glob`` as
    :func:`~pipemake.items.glob_match` matches (``*`` crossing ``/`` too, a ``**/``
    component zero or more folders): ``prefix`` is run through the glob's characters, ``*``
    and ``?`` and ``[...]``, keeping every place in the glob it may have reached; any left
    means the rest of a path can complete it."""
    tokens: list[str] = []
    #: where a ``**/`` component starts (as ``*`` then ``/``): it may be skipped whole
    skips: set[int] = set()
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "*" and glob.startswith("**/", i) and (i == 0 or glob[i - 1] == "/"):
            skips.add(len(tokens))
            tokens += ["*", "/"]
            i += 3
            continue
        if c == "[":
            end = bracket_close(glob, i)
            if end != -1:
                tokens.append(glob[i : end + 1])
                i = end + 1
                continue
        tokens.append(c)
        i += 1

    def closure(states: set[int]) -> set[int]:
        out, todo = set(states), list(states)
        while todo:
            k = todo.pop()
            for nxt in (k + 1 if k < len(tokens) and tokens[k] == "*" else -1,
                        k + 2 if k in skips else -1):  # fmt: skip
                if nxt >= 0 and nxt not in out:
                    out.add(nxt)
                    todo.append(nxt)
        return out

    states = closure({0})
    for ch in prefix:
        step: set[int] = set()
        for k in states:
            if k == len(tokens):
                continue
            t = tokens[k]
            if t == "*":
                step.add(k)
            elif t == "?" or (len(t) > 1 and fnmatch.fnmatchcase(ch, t)) or t == ch:
                step.add(k + 1)
        states = closure(step)
        if not states:
            return False
    return True

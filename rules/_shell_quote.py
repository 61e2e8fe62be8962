"""Writing a value into a shell command so that ``/bin/sh`` reads it back as exactly that
text, never as code, wherever the reference stands.

A reference's place in the command decides the quoting: outside quotes a value is one word,
quoted when needed (``shlex.quote``); inside ``"..."`` its ``\\ $ ` "`` are escaped; inside
``'...'`` its ``'`` closes and reopens the quotes; in a comment a line break becomes a
space; in a here-document only a plain word (no blanks, quotes or ``$``) can stand, and in
``$((...))`` only a whole number. Places
where no quoting is safe (right after a backslash, inside backquotes or ``$'...'``, after a
``case`` inside ``$(...)``) are refused with what to write instead.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
from collections.abc import Sequence
from typing import Any

from pipemake.templates import Ref, TemplateError, parse

__all__ = ["check_places", "place_of", "write"]

_SAFE = re.compile(r"[\w@%+=:,./-]*", re.ASCII)  # what shlex.quote leaves as it is
_SEP = frozenset(" \t\n;&|()<>")  # a word starts after one of these
#: what can put a reference anywhere but outside quotes
_QUOTING = re.compile(r"""['"`$#\\]|<<|\(\(""")

#: where a reference stands: ("plain",), ("double",), ("single",), ("comment",),
#: ("arith",), ("heredoc", delimiter) or ("refused", why and what to write instead)
Place = tuple[str, ...]


class _Lexer:
    """Reads a command as ``/bin/sh`` does, as far as quoting goes, and notes where each
    reference stands. Frames: ``plain`` (top level or inside ``$(...)``), ``double``,
    ``arith`` (``$((...))``)."""

    def __init__(self, toks: Sequence[str | None]):
        self.t = toks
        self.i = 0
        self.frames: list[list[Any]] = [["plain", 0]]  # [kind, open parentheses]
        self.word_start = True
        self.word = ""
        #: (delimiter, strip tabs, delimiter quoted) of here-documents awaiting their body
        self.heredocs: list[tuple[str, bool, bool]] = []
        #: why no reference can be quoted safely from here on (None: they can)
        self.unsure: str | None = None
        self.places: list[Place] = []

    def peek(self, k: int = 1) -> str | None:
        j = self.i + k
        return self.t[j] if j < len(self.t) else ""

    def run(self) -> list[Place]:
        while self.i < len(self.t):
            frame = self.frames[-1]
            if frame[0] == "double":
                self.double()
            else:
                self.plain(frame)
        return self.places

    def open_paren(self, arith: bool) -> None:
        """Past ``$(`` or ``$((`` (``((``: the bash arithmetic command)."""
        self.frames.append(["arith", 2] if arith else ["plain", 1])
        self.i += 3 if arith else 2

    def arith(self) -> bool:
        """Whether the text here ends up in an arithmetic expression (``$((...))``), where
        quotes do not quote and bash evaluates ``a[$(...)]`` in what it reads."""
        return any(f[0] == "arith" for f in self.frames)

    def ref(self, place: Place) -> None:
        self.places.append(place)
        self.i += 1

    def refuse(self, why: str) -> Place:
        return ("refused", why)

    def skip_quoted(self, end: str, escapes: bool, place: Place) -> bool:
        """Past a quoted run up to ``end``; False when the command ends inside it."""
        self.i += 1
        while self.i < len(self.t):
            c = self.t[self.i]
            if c is None:
                self.ref(place)
                continue
            if escapes and c == "\\":
                if self.peek() is None:
                    self.i += 1
                    self.ref(self.refuse("after-backslash"))
                    continue
                self.i += 2
                continue
            self.i += 1
            if c == end:
                return True
        return False

    def end_word(self) -> None:
        if self.word == "case" and len(self.frames) > 1:
            self.unsure = "case"  # its patterns' ")" would end the $( ) as far as we know
        self.word = ""

    def plain(self, frame: list[Any]) -> None:
        c = self.t[self.i]
        if c is None:
            place = ("arith",) if self.arith() else ("plain",)
            self.ref(self.refuse(self.unsure) if self.unsure else place)
            self.word_start = False
            self.word += "\0"
            return
        nxt = self.peek()
        if c in _SEP:
            self.end_word()
        if c == "\\":
            if nxt is None:
                self.i += 1
                self.ref(self.refuse("after-backslash"))
            else:
                self.i += 2
            self.word_start = False
            return
        if c == "#" and self.word_start:
            while self.i < len(self.t) and self.t[self.i] != "\n":
                if self.t[self.i] is None:
                    self.places.append(("comment",))
                self.i += 1
            return
        if c == "'" and frame[0] == "arith":
            self.i += 1  # not a quote there
        elif c == "'":
            self.skip_quoted("'", False, ("arith",) if self.arith() else ("single",))
        elif c == '"':
            self.frames.append(["double", 0])
            self.i += 1
        elif c == "`":
            self.skip_quoted("`", True, self.refuse("backquote"))
        elif c == "$" and nxt is None:
            self.i += 1
            self.ref(self.refuse("after-dollar"))
        elif c == "$" and nxt == "'":
            self.i += 1
            self.skip_quoted("'", True, self.refuse("ansi"))
        elif c == "$" and nxt == "(":
            self.open_paren(self.peek(2) == "(")
            self.word_start = True
            self.word = ""
            return
        elif c == "(" and nxt == "(" and self.word_start:
            self.i -= 1  # "((" read as "$(("
            self.open_paren(True)
            return
        elif c == "(" and len(self.frames) > 1:
            frame[1] += 1
            self.i += 1
        elif c == ")" and len(self.frames) > 1:
            frame[1] -= 1
            if frame[1] == 0:
                self.frames.pop()
            self.i += 1
        elif c == "<" and nxt == "<" and frame[0] != "arith":
            self.heredoc_word()
        elif c == "\n" and self.heredocs:
            self.i += 1
            self.bodies()
        else:
            self.i += 1
        self.word_start = c in _SEP
        if c not in _SEP and c not in "'\"`$":
            self.word += c

    def double(self) -> None:
        c = self.t[self.i]
        if c is None:
            self.ref(("arith",) if self.arith() else ("double",))
        elif c == "\\":
            if self.peek() is None:
                self.i += 1
                self.ref(self.refuse("after-backslash"))
            else:
                self.i += 2
        elif c == '"':
            self.frames.pop()
            self.i += 1
            self.word_start = False
        elif c == "`":
            self.skip_quoted("`", True, self.refuse("backquote"))
        elif c == "$" and self.peek() is None:
            self.i += 1
            self.ref(self.refuse("after-dollar"))
        elif c == "$" and self.peek() == "(":
            self.open_paren(self.peek(2) == "(")
            self.word_start = True
            self.word = ""
        else:
            self.i += 1

    def heredoc_word(self) -> None:
        self.i += 2
        strip = self.peek(0) == "-"
        if strip:
            self.i += 1
        while self.peek(0) in (" ", "\t"):
            self.i += 1
        word, quoted = "", False
        while self.i < len(self.t) and self.t[self.i] not in _SEP:
            c = self.t[self.i]
            if c is None:
                self.unsure = "delimiter"  # a here-document's delimiter made of a value
                return
            if c in "'\"":
                quoted = True
                j = self.i + 1
                while j < len(self.t) and self.t[j] != c:
                    if self.t[j] is None:
                        self.unsure = "delimiter"
                        self.i = j
                        return
                    word += self.t[j]  # type: ignore[operator]
                    j += 1
                self.i = j + 1
                continue
            if c == "\\":
                quoted = True
                self.i += 1
                c = self.peek(0)
                if c is None:
                    self.unsure = "delimiter"
                    return
            word += c
            self.i += 1
        self.heredocs.append((word, strip, quoted))
        self.word_start = True

    def bodies(self) -> None:
        """Past the bodies of the here-documents opened on the line that just ended."""
        for delim, strip, quoted in self.heredocs:
            while self.i < len(self.t):
                line: list[str | None] = []
                while self.i < len(self.t):
                    c = self.t[self.i]
                    self.i += 1
                    if c == "\n":
                        # unquoted, a backslash ending a line joins the next one to it
                        tail = len(line) - len("".join(x or "" for x in line).rstrip("\\"))
                        if quoted or tail % 2 == 0 or line[-1] is None:
                            break
                        line.pop()
                        continue
                    line.append(c)
                    if c is None:
                        self.places.append(("heredoc", delim))
                text = "".join(c for c in line if c is not None) if None not in line else None
                if text is not None and (text.lstrip("\t") if strip else text) == delim:
                    break
        self.heredocs = []
        self.word_start = True


@functools.lru_cache(maxsize=1024)
def _places(template: str) -> tuple[Place, ...]:
    parts = parse(template)
    text = "".join(p for p in parts if isinstance(p, str))
    if not _QUOTING.search(text):  # the usual command: every reference outside quotes
        return (("plain",),) * sum(isinstance(p, Ref) for p in parts)
    toks: list[str | None] = []
    for part in parts:
        if isinstance(part, Ref):
            toks.append(None)
        else:
            toks.extend(part)
    return tuple(_Lexer(toks).run())


def place_of(template: str, index: int) -> Place:
    """Where the ``index``-th reference of a shell command template stands."""
    return _places(template)[index]


_REFUSED = {
    "after-backslash": "follows a backslash; remove the backslash (pipemake quotes what it "
    "writes there)",
    "backquote": "stands inside backquotes, where nothing can be quoted safely; write "
    "$(...) instead of `...`",
    "ansi": "stands inside $'...', where nothing can be quoted safely; write it outside "
    "the quotes (pipemake quotes it)",
    "after-dollar": "follows a $, which would make the shell expand what is written there; "
    "remove the $",
    "delimiter": "comes after a here-document whose delimiter is made of a reference; "
    "write the delimiter out",
    "case": "comes after a `case` inside $(...), where pipemake cannot tell whether it "
    'stands inside quotes; pass it through env: and write "$NAME"',
}


def check_places(template: str) -> list[str]:
    """What is wrong with where references stand in ``template`` (empty when nothing)."""
    refs = [p for p in parse(template) if isinstance(p, Ref)]
    return [
        f"{ref} in cmd {_REFUSED[place[1]]}"
        for ref, place in zip(refs, _places(template), strict=True)
        if place[0] == "refused"
    ]


def _words(ref: Ref, value: Any) -> list[str]:
    if isinstance(value, dict):
        raise TemplateError(
            f"{ref} is a mapping and cannot be written into a shell command; pass it "
            "through env:, where it arrives as JSON"
        )
    items = value if isinstance(value, list) else [value]
    words = [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in items]
    if any("\0" in w for w in words):
        raise TemplateError(f"{ref} holds a NUL character, which no shell command can hold")
    return words


def write(ref: Ref, value: Any, template: str, index: int) -> str:
    """``value`` (a string, a number, true/false/null or a list of them; a list is its items
    as separate words) written where the ``index``-th reference of ``template`` stands."""
    words = _words(ref, value)
    place = place_of(template, index)
    kind = place[0]
    if kind == "plain":
        return " ".join(shlex.quote(w) for w in words)
    if kind == "double":
        return " ".join(re.sub(r'([\\"$`])', r"\\\1", w) for w in words)
    if kind == "single":
        return " ".join(w.replace("'", "'\"'\"'") for w in words)
    if kind == "arith":
        text = " ".join(words)
        if re.fullmatch(r"-?[0-9]+", text):
            return text
        raise TemplateError(
            f"{ref} stands inside an arithmetic expression $((...)), where only a whole "
            f"number can be written safely, and its value is {text[:60]!r}"
        )
    if kind == "comment":
        return " ".join(words).replace("\n", " ")
    if kind == "heredoc":
        text = " ".join(words)
        if all(w and _SAFE.fullmatch(w) for w in words) and text not in place[1]:
            return text
        raise TemplateError(
            f"{ref} stands in a here-document, where only plain words (letters, digits and "
            f"@%+=:,./-) can be written safely, and its value is {text[:60]!r}; pass it "
            'through env: and write "$NAME"'
        )
    raise TemplateError(f"{ref} in cmd {_REFUSED[place[1]]}")

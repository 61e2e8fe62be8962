"""Templates: references, whole-value lists, escapes, and symbolic scopes kept for later."""

from __future__ import annotations

import pytest

from pipemake.templates import Deferred, Ref, TemplateError, find_refs, parse, render, substitute


def test_parse_splits_literals_and_refs() -> None:
    assert parse("{a.b}") == [Ref("a", "b")]
    assert parse("x {a.b} y") == ["x ", Ref("a", "b"), " y"]
    assert parse("{{literal}} {v.x}") == ["{literal} ", Ref("v", "x")]


def test_a_whole_value_reference_keeps_its_type() -> None:
    lookup = {Ref("c", "dirs"): ["a", "b"], Ref("v", "n"): 3}.__getitem__
    assert render("{c.dirs}", lookup) == ["a", "b"]
    assert render("n={v.n}", lookup) == "n=3"
    with pytest.raises(TemplateError, match="list"):
        render("dirs: {c.dirs}", lookup)


def test_malformed_references_are_errors() -> None:
    for bad in ("{nodot}", "{a.b.c}", "a } b", "{ a.b"):
        with pytest.raises(TemplateError):
            parse(bad)


def test_symbolic_scopes_stay_and_escapes_survive_a_second_pass() -> None:
    keep = lambda r: r.scope in ("inputs", "outputs")  # noqa: E731
    once = substitute("cat {inputs.x} {s.o} > {outputs.y} && echo {{a}}", lambda r: "p/q", keep)
    assert once == "cat {inputs.x} p/q > {outputs.y} && echo {{a}}"
    assert render(once, lambda r: r.name.upper()) == "cat X p/q > Y && echo {a}"
    # a template stays a template even with nothing kept: its braces stay escaped, so the
    # second pass (the shell rule's) reads them as the literal braces they were
    assert substitute("{{trigger}}, {{name}}", lambda r: "", keep) == "{{trigger}}, {{name}}"
    assert render(render("echo {{a}} {v.x}", lambda r: "}{", keep), str) == "echo {a} }{"


class _Later(Deferred):
    def __str__(self) -> str:
        return "{up.v}"


def test_a_deferred_value_is_never_written_out_as_text() -> None:
    later = _Later()
    lookup = {Ref("up", "v"): later, Ref("v", "d"): "data"}.__getitem__
    # in a plain value the whole string waits for it (so the loader defers the stage)
    assert render("n={up.v}/x", lookup) is later
    assert render("{v.d}/{up.v}", lookup) is later
    # in a template it stays a reference, never escaped into literal text
    keep = lambda r: r.scope == "outputs"  # noqa: E731
    assert render("echo {up.v} > {outputs.o}", lookup, keep) == "echo {up.v} > {outputs.o}"
    assert render("echo {up.v}", lookup, keep) == "echo {up.v}"
    # an unknown reference after it is still reported
    with pytest.raises(KeyError):
        render("{up.v} {v.nope}", lookup)


def test_quote_writes_each_looked_up_value_with_its_place() -> None:
    seen = []

    def quote(ref: Ref, value: object, template: str, index: int) -> str | None:
        seen.append((str(ref), value, index))
        return None if ref.scope == "v" else f"<{value}>"

    keep = lambda r: r.scope == "outputs"  # noqa: E731
    text = "{v.a} {up.l} > {outputs.o} {up.s}"
    lookup = {Ref("v", "a"): "A", Ref("up", "l"): ["x", "{y}"], Ref("up", "s"): "s"}.__getitem__
    assert render(text, lookup, keep, quote) == "A <['x', '{{y}}']> > {outputs.o} <s>"
    assert seen == [("{v.a}", "A", 0), ("{up.l}", ["x", "{y}"], 1), ("{up.s}", "s", 3)]
    # without quote, a list inside a template is an error that names it
    with pytest.raises(TemplateError, match=r"\{up.l\} is a list"):
        render(text, lookup, keep)


def test_find_refs_walks_nested_config() -> None:
    refs = find_refs({"a": ["{x.y}", {"b": "z {v.w}"}], "n": 3})
    assert refs == [Ref("x", "y"), Ref("v", "w")]


def test_with_quote_a_lone_reference_is_written_too() -> None:
    lookup = {Ref("inputs", "s"): "my script.sh", Ref("inputs", "l"): ["a", "b c"]}.__getitem__
    quote = lambda ref, value, template, index: repr(value)  # noqa: E731
    assert render("{inputs.s}", lookup, quote=quote) == "'my script.sh'"
    assert render("{inputs.l}", lookup, quote=quote) == "['a', 'b c']"

"""Templates: references, whole-value lists, escapes, and symbolic scopes kept for later."""

from __future__ import annotations

import pytest

from pipemake.templates import Ref, TemplateError, find_refs, parse, render, substitute


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
    assert substitute("{{trigger}}, {{name}}", lambda r: "", keep) == "{trigger}, {name}"


def test_find_refs_walks_nested_config() -> None:
    refs = find_refs({"a": ["{x.y}", {"b": "z {v.w}"}], "n": 3})
    assert refs == [Ref("x", "y"), Ref("v", "w")]

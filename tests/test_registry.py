"""The rule registry's cache (``.pipemake/rules.json``): reused while Python and every
``sys.path`` directory are as they were, read again from the distributions' metadata when
anything is installed or removed, and never trusted when damaged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from pipemake import rule

PAST = 1_600_000_000


@pytest.fixture()
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An extra, settled ``sys.path`` directory, and a fresh registry."""
    d = tmp_path / "site"
    d.mkdir()
    os.utime(d, (PAST, PAST))
    monkeypatch.setattr(sys, "path", [*sys.path, str(d)])
    rule.forget_registry()
    # this checkout's own directories (tests/) may have changed a moment ago
    monkeypatch.setattr(rule, "_RACY_NS", 0)
    yield d
    rule.forget_registry()


def _install(site: Path, name: str, value: str) -> None:
    info = site / "pm_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pm-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[pipemake.rules]\n{name} = {value}\n")


def _fresh(cache: Path) -> tuple[str, dict[str, str]]:
    rule.forget_registry()
    return rule.registry(cache)


def _settle(site: Path) -> None:
    """Every file and directory of ``site`` as if written long ago."""
    for p in [site, *site.rglob("*")]:
        os.utime(p, (PAST, PAST))


def _rewrite_unseen(site: Path, value: str) -> None:
    """Change what the plugin's metadata registers, keeping every time stamp: reading the
    metadata again would find ``value``; only the cache still knows the old one."""
    (site / "pm_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        f"[pipemake.rules]\npm_fake = {value}\n"
    )
    _settle(site)


def test_the_cache_is_reused_while_nothing_is_installed(site: Path, tmp_path: Path) -> None:
    _install(site, "pm_fake", "pm_fake_module:FakeRule")
    _settle(site)
    cache = tmp_path / "rules.json"
    version, rules = _fresh(cache)
    assert "shell" in rules and cache.exists()
    assert rules["pm_fake"] == "pm_fake_module:FakeRule"
    _rewrite_unseen(site, "other_module:Other")
    assert _fresh(cache) == (version, rules)  # the metadata was not read again
    assert rule.registry()[1]["pm_fake"] == "pm_fake_module:FakeRule"
    rule.forget_registry()  # without the cache: the metadata as it is now
    assert rule.registry()[1]["pm_fake"] == "other_module:Other"


def test_an_installed_rule_is_found_despite_the_cache(site: Path, tmp_path: Path) -> None:
    cache = tmp_path / "rules.json"
    assert "pm_fake" not in _fresh(cache)[1]
    _install(site, "pm_fake", "pm_fake_module:FakeRule")  # the directory's mtime moves
    assert _fresh(cache)[1]["pm_fake"] == "pm_fake_module:FakeRule"


def test_rewritten_entry_points_are_read_again(site: Path, tmp_path: Path) -> None:
    """An in-place rewrite of a registering distribution's entry points (an egg-info
    rewritten by ``pip install -e`` of an old-style project) leaves sys.path alone."""
    _install(site, "pm_fake", "pm_fake_module:FakeRule")
    info = site / "pm_plugin-1.0.dist-info"
    for p in (site, info, info / "entry_points.txt", info / "METADATA"):
        os.utime(p, (PAST, PAST))
    cache = tmp_path / "rules.json"
    assert _fresh(cache)[1]["pm_fake"] == "pm_fake_module:FakeRule"
    (info / "entry_points.txt").write_text("[pipemake.rules]\npm_fake = other_module:Other\n")
    os.utime(site, (PAST, PAST))
    os.utime(info, (PAST, PAST))
    assert _fresh(cache)[1]["pm_fake"] == "other_module:Other"


@pytest.mark.parametrize(
    "text",
    ["", "not json", "[]", '{"head": 1}', '{"heads": null}', '{"heads": [1, {"head": 2}]}'],
)
def test_a_damaged_cache_is_ignored(site: Path, tmp_path: Path, text: str) -> None:
    cache = tmp_path / "rules.json"
    cache.write_text(text)
    assert "shell" in _fresh(cache)[1]


def test_nothing_just_changed_is_cached(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory changed within the last second may change again within the same
    timestamp: no cache is written then."""
    monkeypatch.setattr(rule, "_RACY_NS", 1_000_000_000)
    os.utime(site)  # now
    cache = tmp_path / "rules.json"
    assert "shell" in _fresh(cache)[1]
    assert not cache.exists()


class _Holder:
    """A namespace: an entry point may name a class inside another (``module:a.b``)."""

    class Nested(rule.Rule):
        """A rule reached through an attribute path."""


def test_rules_load_from_their_entry_point_values(site: Path, tmp_path: Path) -> None:
    info = site / "pm_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pm-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[pipemake.rules]\n"
        f"pm_plain = {__name__}:_Script\n"
        f"pm_dotted = {__name__}:_Holder.Nested\n"
        f"pm_extras = {__name__}:_Script [gpu]\n"
        f"pm_module = {__name__} [gpu]\n"
    )
    _fresh(tmp_path / "rules.json")
    assert isinstance(rule.get_rule("pm_plain"), _Script)
    assert isinstance(rule.get_rule("pm_dotted"), _Holder.Nested)
    assert isinstance(rule.get_rule("pm_extras"), _Script)  # the extras are not the name
    # the module itself was imported, and is no rule
    with pytest.raises(TypeError, match=r"entry point 'pm_module' .* is neither a pipemake"):
        rule.get_rule("pm_module")


def test_two_python_set_ups_each_keep_their_answer(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pipemake` and `python -m pipemake` differ in sys.path[0]: alternating them reads
    the metadata once for each, not on every switch."""
    _install(site, "pm_fake", "pm_fake_module:FakeRule")
    _settle(site)
    cache = tmp_path / "rules.json"
    first = _fresh(cache)
    other = tmp_path / "elsewhere"
    other.mkdir()
    os.utime(other, (PAST, PAST))
    monkeypatch.setattr(sys, "path", [str(other), *sys.path])
    assert _fresh(cache) == first  # a new set-up: read, and remembered beside the first
    _rewrite_unseen(site, "other_module:Other")  # only a fresh read would see this
    assert _fresh(cache) == first
    monkeypatch.setattr(sys, "path", sys.path[1:])
    assert _fresh(cache) == first


# register_rule: rules added in this process --------------------------------------------
class _Script(rule.Rule):
    """A rule a script registers (importable: it lives in this module)."""

    outputs: ClassVar = {"o": rule.Output(kind="file")}


class _OriginalExecutor:
    """An executor class of the original system, registered through an entry point."""

    def __init__(self, stage_id: str, config: dict) -> None:
        self.config = config

    def validate_config(self) -> bool:
        return True

    def execute(self, inputs: dict) -> None:
        return None


def test_a_registered_rule_reaches_workers_but_not_the_cache(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "rules.json"
    made = rule.register_rule("scripted", _Script)
    try:
        assert rule.get_rule("scripted") is made and made.name == "scripted"
        version, rules = _fresh(cache)
        assert rules["scripted"] == f"{__name__}:_Script"  # what a worker imports again
        assert not rule.local_only("scripted")
        assert "scripted" not in cache.read_text()  # the cache holds the installed rules only
    finally:
        rule.unregister_rule("scripted")
    assert rule.get_rule("scripted") is None and "scripted" not in rule.rule_names()
    # a worker: a fresh process that takes the build's registry
    rule.adopt_registry((version, rules))
    again = rule.get_rule("scripted")
    assert isinstance(again, _Script) and again.name == "scripted"
    rule.unregister_rule("scripted")


def test_a_class_defined_in_a_function_runs_in_this_process() -> None:
    class Inner(rule.Rule):
        pass

    rule.register_rule("inner", Inner)
    try:
        assert rule.local_only("inner") and "inner" in rule.rule_names()
        known = rule.registry()
    finally:
        rule.unregister_rule("inner")
    # a worker given this registry finds no such rule (the build runs it in threads)
    worker = (
        "import json, sys\n"
        "from pipemake import rule\n"
        "version, rules = json.loads(sys.stdin.read())\n"
        "rule.adopt_registry((version, rules))\n"
        "print('inner' in rule.rule_names(), rule.get_rule('inner'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", worker], input=json.dumps(known), capture_output=True,
        text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert out.split() == ["True", "None"]


def test_an_entry_point_may_name_an_original_executor_class(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(site, "pm_orig", f"{__name__}:_OriginalExecutor")
    _fresh(tmp_path / "rules.json")
    got = rule.get_rule("pm_orig")
    assert got is not None and got.name == "pm_orig"
    ports, problems = got.ports({"input_dir": "data", "output_dir": "out", "size": 3})
    assert problems == [] and ports.outputs == {"output_dir": "out"}
    assert ports.inputs == {"input_dir": "data"} and ports.params["size"] == 3

"""Golden digests of the key format: a change of the encoding cannot slip by unnoticed.

If one of these fails on purpose, bump ``pipemake.hashing.KEY_FORMAT`` (so old entries can
never match) and pin the new values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipemake import open_project
from pipemake.hashing import (
    KEY_FORMAT,
    canonical,
    digest,
    hash_bytes,
    hash_file,
    normalize_mode,
    tree_hash,
)

GOLDEN = [
    (None, b"null", "dc32537e27486e2c652e7b35ccc22eda"),
    (True, b"true", "f41296b9e2d38ac855a9a1372b7155c1"),
    (False, b"false", "4f9a6c9c2b463ad812c0396f2c3ab301"),
    (0, b"0", "ce8f15881282a4001982e3a7bb241055"),
    (1, b"1", "df3ce784d856334d65cd25028f98f158"),
    (-7, b"-7", "0dd4b74528e14c0ab496414fdc9adf38"),
    (1.0, b"1.0", "2630a41b503a9f4bed84d7031aa12bce"),
    (1.5, b"1.5", "72e27827e1082b043d006affbf7f50ee"),
    ("1", b'"1"', "59f39cd46f133f0368bc2855128cc776"),
    ("", b'""', "5155eb03eada476fa10276e838f45d34"),
    ("héllo", '"héllo"'.encode(), "ecf292b2d8aab5fa163b9b0c27170484"),
    ([1], b"[1]", "7d59a3ec7c67aefe7e22e688c546b965"),
    ([], b"[]", "39347ff402b6c53d831154110e30ac6a"),
    ({}, b"{}", "dc7048f8f8747f561349cde127705c16"),
    ({"b": [1, "x"], "a": None}, b'{"a":null,"b":[1,"x"]}', "61291ba4713e810dabca083088397e0c"),
]


@pytest.mark.parametrize(("value", "encoded", "golden"), GOLDEN, ids=[repr(g[0]) for g in GOLDEN])
def test_golden_canonical_encoding_and_digest(value, encoded: bytes, golden: str) -> None:
    assert canonical(value) == encoded
    assert digest(value) == golden


def test_golden_key_document_digest() -> None:
    doc = {
        "rule": "shell",
        "params": {"cmd": "echo {outputs.o}", "env": {}},
        "inputs": {"src": ["data/a.txt", "0" * 32]},
    }
    assert digest(doc) == "bc59c99a1b8f459caa8217e862fa0fe0"


def test_golden_file_and_tree_hashes(tmp_path: Path) -> None:
    assert hash_bytes(b"") == "99aa06d3014798d86001c324468d497f"
    assert hash_bytes(b"hello\n") == "6bba86c7e069f56d5a10b435f1c8e49c"
    f = tmp_path / "a.txt"
    f.write_bytes(b"hello\n")
    assert hash_file(str(f)) == "6bba86c7e069f56d5a10b435f1c8e49c"
    assert hash_file(str(f), size_hint=6) == "6bba86c7e069f56d5a10b435f1c8e49c"
    assert tree_hash([("a.txt", hash_bytes(b"hello\n"), 6, 0o644)]) == (
        "35b058a92d55d74d565c5c5bc5b7d3b3"
    )


def test_large_file_hash_matches_bytes_hash(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # > 1 MiB: the chunked path
    f = tmp_path / "big.bin"
    f.write_bytes(data)
    assert hash_file(str(f)) == hash_bytes(data)
    assert hash_file(str(f), size_hint=len(data)) == hash_bytes(data)


def test_type_tagging_never_collides() -> None:
    values = [
        1,
        "1",
        [1],
        ["1"],
        1.0,
        True,
        None,
        "",
        [],
        {},
        {"1": 1},
        [[1]],
        "null",
        "[1]",
        ["a", "b"],
        ["ab"],
        {"a": "b"},
        ["a", ["b"]],
        [["a"], "b"],
        0,
        False,
        "true",
    ]
    digests = [digest(v) for v in values]
    assert len(set(digests)) == len(values)


def test_dict_order_does_not_matter_list_order_does() -> None:
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
    assert digest([1, 2]) != digest([2, 1])


def test_tuples_hash_like_lists() -> None:
    assert digest((1, "a")) == digest([1, "a"])


def test_unhashable_values_are_refused() -> None:
    with pytest.raises(TypeError):
        digest(object())
    with pytest.raises(TypeError):
        digest(b"raw bytes")


def test_non_string_dict_keys_are_refused_or_kept_apart() -> None:
    """A YAML mapping may have int keys: ``{1: x}`` must not hash like ``{"1": x}``."""
    for value in ({1: "a"}, {1: "a", "b": 2}):
        try:
            got = digest(value)
        except TypeError:
            continue
        assert got != digest({str(k): v for k, v in value.items()}), value


def test_only_the_executable_bit_of_a_mode_counts() -> None:
    assert normalize_mode(0o100755) == 0o755
    assert normalize_mode(0o100700) == 0o755
    assert normalize_mode(0o100644) == 0o644
    assert normalize_mode(0o100600) == 0o644


def test_golden_stage_key(project) -> None:
    """The key of one shell stage, end to end: rule, version, params, input path and hash."""
    assert KEY_FORMAT == 4
    p = project(
        """
        name: k
        version: 1
        stages:
          - id: copy
            type: shell
            config:
              cmd: "cp {inputs.src} {outputs.out}"
              inputs: {src: data/a.txt}
              outputs: {out: build/a.txt}
              env: {MODE: fast}
        """,
        {"data/a.txt": "hello\n"},
    )
    p.cli("build")
    project = open_project(p.root)
    try:
        keys = [key for key, _entry in project.store.actions()]
    finally:
        project.close()
    assert keys == ["2eee3058fcf88bb2113a82d304bfb3db"]


def test_symlink_loops_are_refused_by_name_and_other_symlinked_directories_walked(
    tmp_path: Path,
) -> None:
    from pipemake.walk import BadPath, walk

    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (data / "b").mkdir()
    (data / "a" / "f.txt").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "g.txt").write_text("y")
    (data / "a" / "out").symlink_to("../../other")  # elsewhere: walked, not a loop
    (data / "b" / "side").symlink_to("../a")  # a sibling: walked too
    assert sorted(r[0] for r in walk(str(data))) == [
        "a/f.txt", "a/out/g.txt", "b/side/f.txt", "b/side/out/g.txt"
    ]  # fmt: skip
    (data / "a" / "self").symlink_to(".")
    with pytest.raises(BadPath, match=r"data/a/self is a symlink to a directory that holds it"):
        walk(str(data))
    (data / "a" / "self").unlink()
    (data / "a" / "back").symlink_to("../b")  # a/back -> b, b/side -> a: round and round
    with pytest.raises(BadPath, match="lead back to each other"):
        walk(str(data))


def test_unreadable_files_and_directories_are_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(Tests run as root here, so permissions are simulated.)"""
    import os

    from pipemake import fshash, walk

    data = tmp_path / "data"
    (data / "locked").mkdir(parents=True)
    (data / "a.txt").write_text("a")
    real = os.scandir

    def scandir(path: str = ".") -> Any:
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(walk.os, "scandir", scandir)
    with pytest.raises(walk.BadPath, match=r"cannot list the directory .*data/locked: Permission"):
        walk.walk(str(data))
    monkeypatch.undo()

    def hash_file(path: str, size: int) -> str:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(fshash, "hash_file", hash_file)
    with pytest.raises(walk.BadPath, match=r"cannot read .*a.txt: Permission denied"):
        fshash.Hasher(str(tmp_path)).info("data")


def test_key_digest_takes_upstream_digests_by_content_not_by_stage_id() -> None:
    from pipemake.hashing import key_digest

    doc = {"format": KEY_FORMAT, "rule": "shell", "upstream": {"a": "x1", "b": "y2"}}
    renamed = dict(doc, upstream={"zz": "x1", "b": "y2"})
    changed = dict(doc, upstream={"a": "x2", "b": "y2"})
    assert key_digest(doc) == key_digest(renamed)
    assert key_digest(doc) != key_digest(changed)
    assert key_digest(doc) == "c68b588a16aa944b8c4212d10c7e8a60"

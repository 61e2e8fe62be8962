"""Rows of a poisoned store that pipemake must decode without falling over.

A writer of a shared ``--cache-dir`` or remote can store anything JSON allows: data nested
thousands of levels deep (Python's parser and every walk of it die of RecursionError),
lone surrogates such as ``"\\udcff"`` (valid JSON escapes no UTF-8 can hold, so hashing,
printing or sending them fails), text that is not UTF-8 at all, forged per-item map results,
and SQLite triggers that rewrite what a build commits. Each test plants one in a store a
real build wrote and shows that every command agrees: such a row is a damaged row (a miss
for a build, named by ``cache verify``, deleted by ``--repair``, skipped by ``cache gc``),
and no command ends in a traceback.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CHAIN, CHAIN_FILES, CHAIN_STAGES, TRACEBACK, Proj

from pipemake.errors import StoreError
from pipemake.signing import seal
from pipemake.store import Store
from pipemake.trust import MAX_DEPTH, decode_entry, entry_problem, json_problem

KEY = {"PIPEMAKE_CACHE_KEY": "team-secret"}
DEEP = "[" * 5000 + "]" * 5000


def _store(p: Proj) -> Path:
    return p.path(".pipemake/store")


def _rows(store: Path) -> dict[str, str]:
    db = sqlite3.connect(store / "actions.db")
    rows = dict(db.execute("SELECT key, entry FROM actions").fetchall())
    db.close()
    return rows


def _key_of(store: Path, stage: str) -> str:
    (key,) = [k for k, e in _rows(store).items() if json.loads(e).get("stage") == stage]
    return key


def _rewrite(store: Path, stage: str, change: Callable[[dict], object]) -> str:
    """What a writer of a shared store can do: ``change`` the entry of ``stage`` in place
    (its signature dropped); returns its key."""
    key = _key_of(store, stage)
    entry = json.loads(_rows(store)[key])
    change(entry)
    entry.pop("signature", None)
    _set_text(store, key, json.dumps(entry))
    return key


def _set_text(store: Path, key: str, text: str) -> None:
    db = sqlite3.connect(store / "actions.db")
    db.execute("UPDATE actions SET entry=? WHERE key=?", (text, key))
    db.commit()
    db.close()


def _with_deep_field(text: str) -> str:
    """An entry's JSON text with one more field nested 5,000 levels deep (``json.dumps``
    cannot even write that: built as text)."""
    return text[:-1] + ', "deep": ' + DEEP + "}"


def _nested(depth: int) -> list:
    out: list = []
    for _ in range(depth - 1):
        out = [out]
    return out


def _clean(result_output: str) -> str:
    assert TRACEBACK not in result_output, result_output
    assert "RecursionError" not in result_output and "UnicodeEncodeError" not in result_output
    return result_output


def _every_command_copes(p: Proj, env: dict[str, str] | None, key: str) -> None:
    """status, dry-run and gc treat the row as a miss; verify names it (exit 1); --repair
    deletes it; none of them ends in a traceback."""
    _clean(p.cli("status", env=env).output)
    _clean(p.cli("dry-run", env=env).output)
    out = _clean(p.cli("cache", "verify", code=1, env=env).output)
    assert f"damaged entry {key[:12]}" in out, out
    _clean(p.cli("cache", "gc", "--grace", "0", env=env).output)
    assert key in _rows(_store(p))  # gc skips a damaged row of a key still needed
    out = _clean(p.cli("cache", "verify", "--repair", env=env).output)
    assert f"damaged entry {key[:12]}" in out and "deleted" in out, out
    assert key not in _rows(_store(p))
    assert "store OK" in p.cli("cache", "verify", env=env).output


# 1. rows nested thousands of levels deep ---------------------------------------------------
@pytest.mark.parametrize("env", [None, KEY], ids=["unkeyed", "keyed"])
def test_a_row_nested_thousands_deep_is_a_damaged_row(
    project: Callable[..., Proj], env: dict[str, str] | None
) -> None:
    p = project(CHAIN, CHAIN_FILES)
    p.cli("build", env=env)
    key = _key_of(_store(p), "upper")
    _set_text(_store(p), key, _with_deep_field(_rows(_store(p))[key]))
    _every_command_copes(p, env, key)
    os.unlink(p.path("build/upper.txt"))
    _clean(p.cli("build", env=env).output)
    assert p.runs("upper") == 2 and p.read("build/upper.txt") == "HELLO\nWORLD\n"


@pytest.mark.parametrize("env", [None, KEY], ids=["unkeyed", "keyed"])
def test_a_deep_row_is_a_miss_for_a_build(
    project: Callable[..., Proj], env: dict[str, str] | None
) -> None:
    """The build itself (and its many-keys-at-once read) takes such a row as a miss: the
    stage runs again, the rest restores."""
    p = project(CHAIN, CHAIN_FILES)
    p.cli("build", env=env)
    key = _key_of(_store(p), "upper")
    _set_text(_store(p), key, _with_deep_field(_rows(_store(p))[key]))
    for rel in ("build/upper.txt", "build/lines.txt"):
        os.unlink(p.path(rel))
    out = _clean(p.cli("build", env=env).output)
    assert "upper: running" in out and "lines: restored" in out, out
    assert p.run_counts() == {"upper": 2, "lines": 1, "side": 1, "report": 1}


def test_data_nested_deeper_than_the_limit_is_damaged_though_python_parses_it(
    project: Callable[..., Proj],
) -> None:
    """A value 150 levels deep parses, but any walk of it near the recursion limit would
    not: past MAX_DEPTH it is damaged too."""
    p = project(CHAIN, CHAIN_FILES)
    p.cli("build")
    key = _rewrite(_store(p), "upper", lambda e: e.update(values={"v": _nested(150)}))
    problem = decode_entry(_rows(_store(p))[key])[1]
    assert problem is not None and f"deeper than {MAX_DEPTH - 1}" in problem
    _every_command_copes(p, None, key)
    # data just within the limit is fine
    assert json_problem(_nested(MAX_DEPTH)) is None
    assert json_problem(_nested(MAX_DEPTH + 1)) is not None


def test_a_roots_record_nested_thousands_deep_is_damaged(project: Callable[..., Proj]) -> None:
    p = project(CHAIN, CHAIN_FILES)
    p.cli("build")
    record = _store(p) / "roots" / ("0123456789abcdef" * 2 + ".json")
    record.write_text('{"workspace": "x", "pipeline": "y", "keys": ' + DEEP + "}")
    os.utime(record, (1, 1))  # old: a gc may remove it
    out = _clean(p.cli("cache", "verify", code=1).output)
    assert f"roots/{record.name}: a damaged roots record" in out, out
    _clean(p.cli("cache", "gc", "--grace", "0").output)
    _clean(p.cli("cache", "gc", "--grace", "0", "--max-size", "1").output)
    record.write_text('{"workspace": "x", "pipeline": "y", "keys": ' + DEEP + "}")
    os.utime(record, (1, 1))
    _clean(p.cli("cache", "verify", "--repair").output)
    assert not record.exists()


# 2. lone surrogates and text that is not UTF-8 --------------------------------------------
VALUES = """
name: v
stages:
  - id: up
    type: python
    config:
      function: "work:up"
      outputs: {o: build/a.txt}
  - id: down
    type: shell
    config:
      cmd: "echo x >> runs/down.count; echo {up.v} > {outputs.d}"
      outputs: {d: build/down.txt}
"""
WORK = """
def up(ctx):
    with open(ctx.root / "runs" / "up.count", "a") as fh:
        fh.write("x\\n")
    ctx.outputs["o"].write_text("x")
    return {"v": VALUE}
"""


@pytest.mark.parametrize("env", [None, KEY], ids=["unkeyed", "keyed"])
def test_a_lone_surrogate_value_is_a_damaged_entry_everywhere(
    project: Callable[..., Proj], env: dict[str, str] | None, tmp_path: Path
) -> None:
    p = project(VALUES, {"work.py": WORK.replace("VALUE", "'plain'")})
    p.cli("build", env=env)
    key = _rewrite(_store(p), "up", lambda e: e["values"].update(v="\udcff"))
    assert "\\udcff" in _rows(_store(p))[key]  # a valid JSON escape
    problem = decode_entry(_rows(_store(p))[key])[1]
    assert problem is not None and "lone surrogate" in problem
    remote = f"file://{tmp_path / 'remote'}"
    _clean(p.cli("push", "--remote", remote, env=env).output)
    pushed = [json.loads(f.read_text()) for f in (tmp_path / "remote").rglob("*.json")]
    assert pushed and all("\\udcff" not in doc["entry"] for doc in pushed)
    _every_command_copes(p, env, key)
    os.unlink(p.path("build/a.txt"))
    os.unlink(p.path("build/down.txt"))
    _clean(p.cli("build", env=env).output)
    assert p.runs("up") == 2 and p.read("build/down.txt") == "plain\n"


def test_a_manifest_path_with_a_lone_surrogate_is_damaged(project: Callable[..., Proj]) -> None:
    """``os.fsencode`` takes ``"n\\udcff.txt"`` for the name ``n\\xff.txt``; pipemake never
    writes such a name (it refuses file names that are not UTF-8), so it is damage."""
    p = project(CHAIN, CHAIN_FILES)
    p.cli("build")

    def rename(entry: dict) -> None:
        entries = entry["outputs"]["dir"]["entries"]
        entries[0][0] = "n\udcff.txt"
        entries.sort()

    key = _rewrite(_store(p), "report", rename)
    assert "lone surrogate" in (entry_problem(json.loads(_rows(_store(p))[key])) or "")
    _every_command_copes(p, None, key)
    shutil.rmtree(p.path("build/report"))
    _clean(p.cli("build").output)
    assert p.runs("report") == 2
    assert sorted(os.listdir(p.path("build/report"))) == ["n.txt", "sub"]


def test_a_row_that_is_not_utf8_is_a_damaged_row_not_a_damaged_store(
    project: Callable[..., Proj],
) -> None:
    """SQLite stores whatever bytes it is given as text; Python refuses to decode them. Such
    a row is one damaged row: the other entries still restore, and --repair deletes only it."""
    p = project(CHAIN, CHAIN_FILES)
    p.cli("build")
    key = _key_of(_store(p), "upper")
    db = sqlite3.connect(_store(p) / "actions.db")
    db.execute("UPDATE actions SET entry=CAST(x'7b2276223a22ff227d' AS TEXT) WHERE key=?", (key,))
    db.execute("INSERT INTO actions VALUES (CAST(x'41ff1b5b316d' AS TEXT), '{\"x\": 1', 0, 0)")
    db.commit()
    db.close()
    _clean(p.cli("status").output)
    out = _clean(p.cli("cache", "verify", code=1).output)
    assert f"damaged entry {key[:12]}" in out and "lone surrogate" in out, out
    assert "'A\\udcff\\x1b" in out and "\x1b" not in out  # the odd key, escaped
    out = _clean(p.cli("cache", "verify", "--repair").output)
    assert "the action cache was unreadable" not in out
    assert len(_rows_blob(_store(p))) == len(CHAIN_STAGES) - 1
    os.unlink(p.path("build/upper.txt"))
    _clean(p.cli("build").output)
    assert p.runs("upper") == 2 and p.runs("report") == 1


def _rows_blob(store: Path) -> list[bytes]:
    db = sqlite3.connect(store / "actions.db")
    keys = [k for (k,) in db.execute("SELECT CAST(key AS BLOB) FROM actions")]
    db.close()
    return keys


def test_a_python_stage_returning_a_lone_surrogate_fails_clearly(
    project: Callable[..., Proj],
) -> None:
    """What a build would read back as a damaged entry is never committed: the stage that
    returns it fails, saying why."""
    p = project(VALUES, {"work.py": WORK.replace("VALUE", "'a\\udcff'")})
    out = _clean(p.cli("build", code=1).output)
    assert "computed values must be plain JSON data" in out and "lone surrogate" in out, out


def test_a_remote_entry_nested_deep_or_with_a_lone_surrogate_is_a_miss(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    remote = f"file://{tmp_path / 'remote'}"
    env = {"PIPEMAKE_REMOTE": remote, "PIPEMAKE_CACHE_KEY": ""}
    first = project(CHAIN, CHAIN_FILES, name="first")
    first.cli("build", "--push", env=env)
    for doc_path in (tmp_path / "remote" / "entries").rglob("*.json"):
        doc = json.loads(doc_path.read_text())
        entry = json.loads(doc["entry"])
        if entry["stage"] == "upper":
            text = _with_deep_field(doc["entry"])
        elif entry["stage"] == "side":
            entry["values"] = {"v": "\udcff"}
            text = json.dumps(entry)
        else:
            continue
        os.chmod(doc_path, 0o644)
        doc_path.write_bytes(seal(doc["key"], text, None))
    second = project(CHAIN, CHAIN_FILES, name="second")
    out = _clean(second.cli("build", env=env).output)
    assert second.run_counts() == {"upper": 1, "side": 1}, out  # lines, report restored
    assert "ignored 2 damaged entries on remote" in out, out
    third = project(CHAIN, CHAIN_FILES, name="third")
    out = _clean(third.cli("pull", env=env).output)
    _clean(third.cli("status", env=env).output)
    _clean(third.cli("cache", "gc", "--remote", "--grace", "0", env=env).output)


# 3. forged per-item map results of the clustering rule -----------------------------------
def _cutouts(folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(6):
        colour = (255, 0, 0, 255) if i < 3 else (0, 0, 255, 255)
        img = Image.new("RGBA", (24, 24), (0, 0, 0, 0))
        img.paste(colour, (4, 4, 20, 20))
        img.save(folder / f"c{i}.png")


def _npy(array) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _forged_vectors() -> dict[str, object]:
    import numpy as np

    big = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }"
    big = big + " " * (118 - len(big)) + "\n"
    return {
        "object array": _npy(np.array([{"a": 1}], dtype=object)),
        "terabyte header": b"\x93NUMPY\x01\x00" + len(big).to_bytes(2, "little")
        + big.encode() + b"\0" * 16,
        "wrong length": _npy(np.ones(7, dtype=np.float32)),
        "not finite": _npy(np.full(221, np.nan, dtype=np.float32)),
        "two rows": _npy(np.ones((2, 221), dtype=np.float32)),
        "garbage": b"\x93NUMPY\x01\x00\xff\xff{[[[[",
        "json null": None,
        "json strings": ["a"] * 221,
    }  # fmt: skip


@pytest.mark.parametrize("forgery", list(_forged_vectors()))
def test_a_forged_feature_vector_is_computed_again_never_trusted(
    tmp_path: Path, forgery: str, caplog: pytest.LogCaptureFixture
) -> None:
    from pipemake.rule import Context, Item
    from pipemake.rules.clustering import ClusteringRule

    _cutouts(tmp_path / "in")
    rule = ClusteringRule()
    ports, problems = rule.ports({"input_dir": "in", "output_dir": "out"})
    assert problems == []
    mapped = {}
    for i in range(6):
        ins = {"input_dir": tmp_path / "in" / f"c{i}.png"}
        ctx = Context(tmp_path, ins, {"output_dir": tmp_path / "st"}, ports.params)
        mapped[f"c{i}.png"] = rule.map_item(ctx, Item(f"in/c{i}.png", f"c{i}.png"))

    def reduce(name: str, results: dict) -> dict:
        (tmp_path / name).mkdir()
        ctx = Context(
            tmp_path, {"input_dir": tmp_path / "in"}, {"output_dir": tmp_path / name},
            ports.params,
        )  # fmt: skip
        rule.reduce(ctx, results)
        return json.loads((tmp_path / name / "clusters.json").read_text())

    clean = reduce("clean", mapped)
    forged = dict(mapped, **{"c0.png": _forged_vectors()[forgery]})
    with caplog.at_level("WARNING"):
        got = reduce("forged", forged)
    assert got["items"] == clean["items"]
    said = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(said) == 1 and "1 cached feature vector(s)" in said[0], said
    assert "c0.png" in said[0], said


CLUSTER = """
name: c
stages:
  - id: cluster
    type: clustering
    config:
      input_dir: data/cut
      output_dir: build/clusters
      features: color_shape
"""


@pytest.mark.slow
def test_a_forged_json_map_result_is_a_clear_stage_error_and_force_stage_mends_it(
    project: Callable[..., Proj],
) -> None:
    p = project(CLUSTER)
    _cutouts(p.path("data/cut"))
    p.cli("build")
    store = Store(_store(p))
    deep = store.put_bytes(DEEP.encode())
    store.close()
    db = sqlite3.connect(_store(p) / "actions.db")
    for key, text in db.execute("SELECT key, entry FROM actions").fetchall():
        entry = json.loads(text)
        if "map" in entry:
            entry["map"] = {"hash": deep, "kind": "json"}
            db.execute("UPDATE actions SET entry=? WHERE key=?", (json.dumps(entry), key))
    db.commit()
    db.close()
    p.edit("pipemake.yaml", "features: color_shape", "features: color_shape\n      seed: 7")
    out = _clean(p.cli("build", code=1).output)
    assert "cached map result of item" in out and "--force-stage cluster" in out, out
    _clean(p.cli("build", "--force-stage", "cluster").output)
    assert len(json.loads(p.read("build/clusters/clusters.json"))["items"]) == 6


# 4. SQLite objects pipemake did not create ------------------------------------------------
def _plant(store: Path, sql: str) -> None:
    db = sqlite3.connect(store / "actions.db", isolation_level=None)
    db.execute(sql)
    db.close()


def _schema(store: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(store / "actions.db")
    rows = db.execute("SELECT type, name FROM sqlite_master ORDER BY name").fetchall()
    db.close()
    return rows


POISON = """CREATE TRIGGER poison AFTER INSERT ON actions
BEGIN UPDATE actions SET entry = json_set(NEW.entry, '$.outputs.out.size', 99)
WHERE key = NEW.key; END"""


def test_a_trigger_planted_in_the_action_cache_is_refused_named_and_dropped(
    project: Callable[..., Proj],
) -> None:
    p = project(CHAIN, CHAIN_FILES)
    p.cli("build")
    before = _rows(_store(p))
    _plant(_store(p), POISON)
    for command in (["build"], ["status"], ["cache", "gc"]):
        out = _clean(p.cli(*command, code=1).output)
        assert "trigger 'poison'" in out and "cache verify --repair" in out, out
    out = _clean(p.cli("cache", "verify", code=1).output)
    assert "actions.db: trigger 'poison', which pipemake did not create" in out, out
    assert ("trigger", "poison") in _schema(_store(p))
    out = _clean(p.cli("cache", "verify", "--repair").output)
    assert "trigger 'poison'" in out and "removed" in out
    assert ("trigger", "poison") not in _schema(_store(p))
    assert _rows(_store(p)) == before  # the entries stay: only the trigger went
    os.unlink(p.path("build/upper.txt"))
    p.edit("data/b.txt", "bee", "bees")  # side commits a new entry
    _clean(p.cli("build").output)
    assert p.run_counts() == {"upper": 1, "lines": 1, "side": 2, "report": 2}


def test_a_trigger_planted_while_the_store_is_open_never_fires(tmp_path: Path) -> None:
    """Another writer adds a trigger after this build checked the schema: the next commit
    notices the schema changed, looks again and refuses, writing nothing."""
    store = Store(tmp_path / "store")
    entry = {"stage": "s", "outputs": {}, "values": {}}
    store.put_action("a" * 32, entry)
    _plant(tmp_path / "store", POISON.replace("'$.outputs.out.size', 99", "'$.stage', 'evil'"))
    with pytest.raises(StoreError, match="trigger 'poison'"):
        store.put_action("b" * 32, entry)
    with pytest.raises(StoreError, match="trigger 'poison'"):
        store.delete_actions(["a" * 32])
    store.close()
    assert sorted(_rows(tmp_path / "store")) == ["a" * 32]


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE VIEW everything AS SELECT * FROM actions",
        "CREATE TABLE extra (x)",
        "CREATE INDEX by_used ON actions (used)",
    ],
)
def test_other_objects_pipemake_did_not_create_are_named_and_dropped(
    project: Callable[..., Proj], sql: str
) -> None:
    p = project(CHAIN, CHAIN_FILES)
    p.cli("build")
    own = _schema(_store(p))
    _plant(_store(p), sql)
    _clean(p.cli("build", code=1).output)
    out = _clean(p.cli("cache", "verify", code=1).output)
    assert "which pipemake did not create" in out, out
    _clean(p.cli("cache", "verify", "--repair").output)
    assert _schema(_store(p)) == own
    assert "0 ran" in p.cli("build").output


def test_a_reshaped_actions_table_is_refused_and_repair_starts_afresh(
    project: Callable[..., Proj],
) -> None:
    """An ``actions`` table without its primary key would keep a planted row ahead of every
    entry a build commits: the store is refused and --repair deletes the action cache."""
    p = project(CHAIN, CHAIN_FILES)
    p.cli("build")
    db = sqlite3.connect(_store(p) / "actions.db", isolation_level=None)
    db.execute("ALTER TABLE actions RENAME TO old")
    db.execute("CREATE TABLE actions (key TEXT, entry TEXT, created REAL, used REAL)")
    db.execute("INSERT INTO actions SELECT * FROM old")
    db.execute("DROP TABLE old")
    db.close()
    out = _clean(p.cli("build", code=1).output)
    assert "actions table defined otherwise" in out, out
    out = _clean(p.cli("cache", "verify", "--repair").output)
    assert "the action cache was unreadable: deleted" in out, out
    _clean(p.cli("build").output)
    assert "0 ran" in p.cli("build").output

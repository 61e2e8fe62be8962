"""``pipemake dry-run``: one line per stage, ``STAGE: DECISION: reason``, and it changes
nothing (issue 2, behaviour 6)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from typing import Any

from conftest import CHAIN_STAGES, Proj


def _lines(p: Proj, *args: str) -> dict[str, str]:
    out = p.cli("dry-run", *args).stdout
    rows = {}
    for line in out.splitlines():
        stage, _, rest = line.partition(": ")
        rows[stage] = rest
    return rows


def _snapshot(p: Proj) -> dict[str, Any]:
    """Everything a dry-run must leave alone: workspace files, store objects and rows."""
    files = {}
    for path in sorted(p.root.rglob("*")):
        rel = path.relative_to(p.root).as_posix()
        if rel.startswith(".pipemake") and not rel.startswith(".pipemake/store/objects"):
            continue
        files[rel] = path.read_bytes() if path.is_file() else None
    snap: dict[str, Any] = {"files": files}
    for name, tables in (("store/actions.db", ["actions"]), ("state.db", ["records", "placed"])):
        db = p.path(".pipemake") / name
        if db.exists():
            con = sqlite3.connect(db)
            for t in tables:
                snap[t] = sorted(con.execute(f"SELECT * FROM {t}").fetchall())
            con.close()
    return snap


def test_dry_run_on_a_fresh_project_says_run_and_creates_nothing(chain: Proj) -> None:
    rows = _lines(chain)
    assert set(rows) == set(CHAIN_STAGES)
    assert rows["upper"].startswith("run")
    assert rows["side"].startswith("run")
    # downstream of a stage that will run: maybe (or run, having never been built)
    assert rows["lines"].split(":")[0] in ("maybe", "run")
    assert not chain.exists("build")
    assert chain.run_counts() == {}


def test_dry_run_after_build_all_up_to_date(chain: Proj) -> None:
    chain.cli("build")
    assert _lines(chain) == dict.fromkeys(CHAIN_STAGES, "up to date")


def test_dry_run_names_the_changed_param_with_old_and_new_value(chain: Proj) -> None:
    chain.cli("build")
    chain.edit("pipemake.yaml", "SEP: one", "SEP: two")
    rows = _lines(chain)
    assert rows["side"].startswith("run: ")
    assert "SEP one → two" in rows["side"]
    assert rows["report"] == "maybe: upstream side will run"
    assert rows["upper"] == "up to date" and rows["lines"] == "up to date"


def test_dry_run_names_the_changed_input(chain: Proj) -> None:
    chain.cli("build")
    chain.write("data/a.txt", "changed\n")
    rows = _lines(chain)
    assert rows["upper"] == "run: input data/a.txt changed"
    assert rows["lines"] == "maybe: upstream upper will run"
    assert rows["report"] == "maybe: upstream lines will run"
    assert rows["side"] == "up to date"


def test_dry_run_says_restore_when_outputs_are_missing(chain: Proj) -> None:
    chain.cli("build")
    os.remove(chain.path("build/lines.txt"))
    rows = _lines(chain)
    assert rows["lines"] == "restore: outputs missing"
    assert rows["report"] == "up to date"
    assert not chain.exists("build/lines.txt")


def test_dry_run_says_restore_when_an_output_was_edited(chain: Proj) -> None:
    chain.cli("build")
    chain.write("build/side.txt", "edited\n")
    rows = _lines(chain)
    assert rows["side"].startswith("restore: ")
    assert "build/side.txt" in rows["side"]
    assert chain.read("build/side.txt") == "edited\n"


def test_dry_run_names_the_upstream_output_that_changed(chain: Proj) -> None:
    chain.cli("build")
    chain.write("data/b.txt", "wasp\n")
    chain.cli("build", "side")  # report is not rebuilt
    rows = _lines(chain)
    assert rows["side"] == "up to date"
    assert rows["report"].startswith("run: ")
    assert "upstream side output changed" in rows["report"]


def test_dry_run_target_lists_only_its_ancestors(chain: Proj) -> None:
    assert set(_lines(chain, "lines")) == {"upper", "lines"}


def test_dry_run_after_param_change_and_back_says_restore(chain: Proj) -> None:
    chain.cli("build")
    chain.edit("pipemake.yaml", "SEP: one", "SEP: two")
    chain.cli("build")
    chain.edit("pipemake.yaml", "SEP: two", "SEP: one")
    rows = _lines(chain)
    assert rows["side"].startswith("restore")


def test_dry_run_json_shape(chain: Proj) -> None:
    chain.cli("build")
    chain.edit("pipemake.yaml", "SEP: one", "SEP: two")
    os.remove(chain.path("build/lines.txt"))
    data = json.loads(chain.cli("dry-run", "--json").stdout)
    assert isinstance(data, list)
    by_stage = {row["stage"]: row for row in data}
    assert set(by_stage) == set(CHAIN_STAGES)
    for row in data:
        assert {"stage", "decision", "reasons", "items"} <= set(row)
        assert isinstance(row["reasons"], list)
    decisions = {s: r["decision"] for s, r in by_stage.items()}
    assert decisions == {
        "upper": "up to date",
        "lines": "restore",
        "side": "run",
        "report": "maybe",
    }

    def text(reason: Any) -> str:
        return reason if isinstance(reason, str) else reason["detail"]

    assert any("SEP one → two" in text(r) for r in by_stage["side"]["reasons"])
    assert [text(r) for r in by_stage["lines"]["reasons"]] == ["outputs missing"]
    assert by_stage["upper"]["reasons"] == []


def test_dry_run_changes_nothing(chain: Proj) -> None:
    chain.cli("build")
    chain.edit("pipemake.yaml", "SEP: one", "SEP: two")
    chain.write("data/a.txt", "new\ntext\n")
    os.remove(chain.path("build/report/n.txt"))
    before = _snapshot(chain)
    chain.cli("dry-run")
    chain.cli("dry-run", "--json")
    chain.cli("dry-run", "--check", code=1)
    assert _snapshot(chain) == before
    assert chain.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)


def test_dry_run_check_exit_codes(chain: Proj) -> None:
    chain.cli("dry-run", "--check", code=1)
    chain.cli("build")
    chain.cli("dry-run", "--check", code=0)
    os.remove(chain.path("build/upper.txt"))  # a restore is work a CI check should flag
    chain.cli("dry-run", "--check", code=1)
    chain.cli("dry-run", code=0)


def test_dry_run_without_the_store_says_no_cache_entry(chain: Proj) -> None:
    chain.cli("build")
    shutil.rmtree(chain.path(".pipemake/store"))
    chain.path("pipemake.lock").unlink()  # (else outputs that match it are up to date)
    rows = _lines(chain)
    assert rows["upper"] == "run: no cache entry"
    assert rows["side"] == "run: no cache entry"
    assert rows["lines"].startswith(("maybe", "run"))


def test_plans_on_a_fresh_project_write_nothing(chain) -> None:
    for command in (["dry-run"], ["status"], ["validate"], ["graph"], ["list"]):
        chain.cli(*command)
    assert not chain.exists(".pipemake")
    assert not chain.exists("build")

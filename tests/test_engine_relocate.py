"""A workspace moved or checked out elsewhere finds its builds again; keys hold no absolute
paths (issue 2, behaviour 11)."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import CHAIN, CHAIN_FILES, CHAIN_STAGES, Proj

import pipemake

OUTPUTS = {
    "build/upper.txt": "HELLO\nWORLD\n",
    "build/lines.txt": "2\n",
    "build/side.txt": "bee\none\n",
    "build/report/n.txt": "2\n",
    "build/report/sub/side.txt": "bee\none\n",
}


def _checkout(src: Proj, dst: Path, with_state: bool) -> Proj:
    """Copy the sources (and ``.pipemake`` when asked) of ``src`` to ``dst``; no outputs."""
    (dst / "runs").mkdir(parents=True)
    shutil.copy2(src.path("pipemake.yaml"), dst / "pipemake.yaml")
    shutil.copytree(src.path("data"), dst / "data")
    if with_state:
        shutil.copytree(src.path(".pipemake"), dst / ".pipemake")
    return Proj(dst)


def _assert_restored(p: Proj, output: str) -> None:
    assert p.run_counts() == {}
    for rel, text in OUTPUTS.items():
        assert p.read(rel) == text, rel
    assert f"{len(CHAIN_STAGES)} restored" in output


def test_copied_workspace_with_its_store_runs_nothing(chain: Proj, tmp_path: Path) -> None:
    chain.cli("build")
    moved = _checkout(chain, tmp_path / "elsewhere" / "deeper", with_state=True)
    shutil.rmtree(chain.root)  # nothing may point back at the old place
    r = moved.cli("build")
    _assert_restored(moved, r.output)
    moved.cli("dry-run", "--check")


def test_fresh_checkout_with_the_cache_dir_from_the_environment(
    chain: Proj, tmp_path: Path
) -> None:
    chain.cli("build")
    cache = tmp_path / "ci-cache"
    shutil.copytree(chain.path(".pipemake/store"), cache)
    fresh = _checkout(chain, tmp_path / "checkout", with_state=False)
    dry = fresh.cli("dry-run", env={"PIPEMAKE_CACHE_DIR": str(cache)}).stdout
    assert "upper: restore" in dry
    r = fresh.cli("build", env={"PIPEMAKE_CACHE_DIR": str(cache)})
    _assert_restored(fresh, r.output)
    assert not fresh.path(".pipemake/store/objects").exists()


def test_fresh_checkout_with_the_cache_dir_option(chain: Proj, tmp_path: Path) -> None:
    cache = tmp_path / "ci-cache"
    chain.cli("build", "--cache-dir", str(cache))
    fresh = _checkout(chain, tmp_path / "checkout", with_state=False)
    r = fresh.cli("build", "--cache-dir", str(cache))
    _assert_restored(fresh, r.output)
    r = fresh.cli("--cache-dir", str(cache), "cache", "info")
    assert str(cache) in r.output


def test_without_the_cache_a_fresh_checkout_runs_everything(chain: Proj, tmp_path: Path) -> None:
    chain.cli("build")
    fresh = _checkout(chain, tmp_path / "checkout", with_state=False)
    fresh.cli("build")
    assert fresh.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)


_INSTALLED = str(Path(pipemake.__file__).resolve().parents[1]).encode()


def test_store_and_records_hold_no_absolute_paths(project, tmp_path: Path) -> None:
    p = project(CHAIN, CHAIN_FILES)
    p.cli("build")
    p.edit("pipemake.yaml", "SEP: one", "SEP: two")
    p.cli("build")
    needles = [str(tmp_path).encode(), str(p.root).encode(), b"/tmp/", b".pipemake/tmp"]
    checked = 0
    for f in sorted(p.path(".pipemake").rglob("*")):
        rel = f.relative_to(p.root).as_posix()
        if not f.is_file() or rel == ".pipemake/lock" or "/logs/" in rel or "/runs/" in rel:
            continue  # the lock names its holder's command; logs and run history are for humans
        # the plan cache names pipemake's own source files (where it is installed, which may
        # be under /tmp itself): those are not the project's paths
        data = f.read_bytes().replace(_INSTALLED, b"")
        checked += 1
        for needle in needles:
            assert needle not in data, f"{needle!r} in {rel}"
    assert checked >= 3

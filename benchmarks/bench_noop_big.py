"""Two versions of pipemake side by side on bench_scale's ``pipemake-py`` project at a large
size (default 100,000 files): a cold build each, then no-op builds and dry-runs alternating
old, new, then new, old. The no-op row of the 100,000-file table stands on the no-op check's
forked tree walk (:mod:`pipemake.noop`)::

    git worktree add --detach /tmp/old COMMIT
    python benchmarks/bench_noop_big.py --old /tmp/old --new . --files 100000 --rounds 5 \\
        --workdir /dev/shm/noop-big
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _scale_tools  # noqa: E402
import bench_scale  # noqa: E402
from _versions import order, report, timed  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="the source tree of the first version")
    ap.add_argument("--new", required=True, help="the source tree of the second version")
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workdir", default=None, help="where the projects go (tmpfs is steadier)")
    args = ap.parse_args(argv)
    trees = {"old": str(Path(args.old).resolve()), "new": str(Path(args.new).resolve())}
    base = Path(tempfile.mkdtemp(prefix="pm-noop-big-", dir=args.workdir))
    tool = _scale_tools.Pipemake("pipemake-py", python_rule=True)
    times: dict[tuple[str, str], list[float]] = {}

    def run(name: str, words: list[str], kind: str) -> None:
        took = timed(trees[name], words, base / name, PYTHONDONTWRITEBYTECODE="1")
        times.setdefault((kind, name), []).append(took)

    try:
        for name in trees:
            (base / name).mkdir()
            bench_scale.make_data(base / name, args.files)
            tool.write(base / name, "a")
            run(name, tool.build, "cold build")
        for r in range(args.rounds):
            for name in order(list(trees), r):
                run(name, tool.build, "no-op build")
            for name in order(list(trees), r):
                run(name, ["dry-run"], "dry-run")
        kinds = ("cold build", "no-op build", "dry-run")
        by_kind = {k: {n: times[(k, n)] for n in trees} for k in kinds}
        report(f"{args.files:,} files", trees, by_kind)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

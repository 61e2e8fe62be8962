"""The fixed cost of a cold build of a one-stage project, two versions side by side: the
version before (``--old``), this one, and this one with ``PIPEMAKE_EARLY_WORKER=0``,
alternating round by round. ``--rule shell`` runs its command in a thread (no worker
process needed); ``--rule python`` needs a worker process::

    git worktree add --detach /tmp/pm-old 425e80d^1
    python benchmarks/bench_small_cold.py --old /tmp/pm-old --new . --rule shell --rounds 15
    python benchmarks/bench_small_cold.py --old /tmp/pm-old --new . --rule python --rounds 15
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _versions import cell, order, timed  # noqa: E402

PIPELINES = {
    "shell": 'name: t\nstages:\n  - id: a\n    type: shell\n    config: {cmd: "echo hi >'
    ' {outputs.o}", outputs: {o: out.txt}}\n',
    "python": "name: t\nstages:\n  - id: a\n    type: python\n    config: {function:"
    ' "work:run", outputs: {o: out.txt}}\n',
}
WORK = "def run(ctx):\n    ctx.outputs['o'].write_text('hi')\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="the source tree of the version before")
    ap.add_argument("--new", required=True, help="the source tree of this version")
    ap.add_argument("--rule", choices=sorted(PIPELINES), default="shell")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    new = str(Path(args.new).resolve())
    cases = {
        "old": (str(Path(args.old).resolve()), {}),
        "new": (new, {}),
        "new, no early worker": (new, {"PIPEMAKE_EARLY_WORKER": "0"}),
    }
    base = Path(tempfile.mkdtemp(prefix="pm-small-cold-"))
    times: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for r in range(args.rounds):
            for i, name in enumerate(order(list(cases), r)):
                tree, extra = cases[name]
                root = base / f"p{i}"
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir()
                (root / "pipemake.yaml").write_text(PIPELINES[args.rule])
                (root / "work.py").write_text(WORK)
                words = ["-C", str(root), "build", "--no-progress"]
                times[name].append(timed(tree, words, **extra))
        for name, took in times.items():
            print(f"{args.rule} | {name}: {cell(took)}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

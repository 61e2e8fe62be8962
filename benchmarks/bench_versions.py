"""Two versions of pipemake side by side on one project shape: a cold build, no-op builds,
dry-runs, one file touched (content unchanged) and one-file changes of a shell foreach stage
of N items and a stage reading its output.

Each version is a source tree (e.g. ``git worktree add --detach /tmp/old COMMIT``) run as
``python -m pipemake`` with that tree first on ``PYTHONPATH``, on its own copy of the
project; the warm runs alternate between the versions (old, new, then new, old), so both
see the same load. Medians and ranges are printed. For "no worse beyond noise" after a
refactoring::

    python -m compileall -q /tmp/old/pipemake /tmp/old/rules pipemake rules
    python benchmarks/bench_versions.py --old /tmp/old --new . --items 10000

``--cold N`` builds each copy from scratch N times, alternating which version goes first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _versions import order, report, timed  # noqa: E402

PIPE = """name: versions
stages:
  - id: up
    type: shell
    foreach: src
    config:
      cmd: "tr a-z A-Z < {inputs.src} > {outputs.d}/{item.name}"
      inputs: {src: data}
      outputs: {d: build/up}
  - id: count
    type: shell
    config:
      cmd: "ls {inputs.d} | wc -l > {outputs.o}"
      inputs: {d: build/up}
      outputs: {o: build/count.txt}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="the source tree of the first version")
    ap.add_argument("--new", required=True, help="the source tree of the second version")
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--noop", type=int, default=7, help="no-op builds per version")
    ap.add_argument("--changes", type=int, default=5, help="one-file changes per version")
    ap.add_argument(
        "--cold", type=int, default=1, help="cold builds per version (alternating, from scratch)"
    )
    ap.add_argument("--touches", type=int, default=5, help="one file touched, content unchanged")
    ap.add_argument("--dry", type=int, default=5, help="dry-runs per version")
    args = ap.parse_args(argv)
    trees = {"old": str(Path(args.old).resolve()), "new": str(Path(args.new).resolve())}
    base = Path(tempfile.mkdtemp(prefix="pm-versions-"))
    try:
        for name in trees:
            root = base / name
            (root / "data").mkdir(parents=True)
            for i in range(args.items):
                (root / "data" / f"f{i:05}.txt").write_text(f"file {i}\n" * 50)
            (root / "pipemake.yaml").write_text(PIPE)

        def run(name: str, command: str = "build") -> float:
            words = ["-C", str(base / name), command]
            if command == "build":
                words += ["-j", "2", "--no-progress"]
            return timed(trees[name], words)

        times: dict[str, dict[str, list[float]]] = {n: {} for n in trees}

        for rep in range(args.cold):
            for name in order(list(trees), rep):
                if rep:  # from scratch again: no workspace, no store, no outputs
                    shutil.rmtree(base / name / ".pipemake")
                    shutil.rmtree(base / name / "build")
                times[name].setdefault("cold build", []).append(run(name))

        for rep in range(args.noop):
            for name in order(list(trees), rep):
                times[name].setdefault("no-op build", []).append(run(name))
        for rep in range(args.dry):
            for name in order(list(trees), rep):
                times[name].setdefault("dry-run", []).append(run(name, "dry-run"))
        for rep in range(args.touches):
            for name in order(list(trees), rep):
                f = base / name / "data" / f"f{(rep * 13 + 3) % args.items:05}.txt"
                os.utime(f, ns=(time.time_ns(), time.time_ns()))
                times[name].setdefault("one file touched", []).append(run(name))
        for rep in range(args.changes):
            for name in order(list(trees), rep):
                f = base / name / "data" / f"f{rep * 7 % args.items:05}.txt"
                f.write_text(f.read_text() + f"edit {rep}\n")
                times[name].setdefault("one file changed", []).append(run(name))
        kinds = {k: {n: times[n][k] for n in trees} for k in times["old"]}
        report(f"{args.items:,} items", trees, kinds)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

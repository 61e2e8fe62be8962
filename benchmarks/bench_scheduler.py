"""Scheduler measurements (issue 3, "Measured, in benchmarks/").

1. Makespan of pipemake's ready queue against a level-by-level executor (the original
   system's ThreadPoolExecutor per DAG level) on a generated DAG whose stages sleep for
   uneven durations; both at the same ``-j``. Reports both makespans and their ratio.
2. Scheduler overhead on a generated pipeline of N trivial stages (default 10,000; a
   binary tree of ``shell`` stages, each depending on its parent's output): time to plan
   (``pipemake validate``), to dry-run and for a no-op build with the pipeline file unchanged,
   and to plan / dry-run right after an edit of the file.

    .venv/bin/python benchmarks/bench_scheduler.py --stages 10000 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PM = [str(Path(sys.executable).parent / "pipemake")]


def _run(args: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(
        PM + args, cwd=cwd, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    return time.perf_counter() - t


def uneven_dag(levels: int, width: int, seed: int) -> list[tuple[str, float, list[str]]]:
    """Stages ``(id, seconds, deps)``: ``levels`` levels of ``width`` stages; one stage per
    level is slow, the others fast; each depends on one or two stages of the level above."""
    rng = random.Random(seed)
    out: list[tuple[str, float, list[str]]] = []
    for lv in range(levels):
        slow = rng.randrange(width)
        for w in range(width):
            secs = 1.0 if w == slow else round(rng.uniform(0.05, 0.25), 2)
            deps = []
            if lv:
                deps = sorted({f"s{lv - 1}_{rng.randrange(width)}" for _ in range(2)})
            out.append((f"s{lv}_{w}", secs, deps))
    return out


def makespan(root: Path, levels: int, width: int, jobs: int, seed: int) -> tuple[float, float]:
    """(ready-queue makespan, level-by-level makespan), seconds."""
    dag = uneven_dag(levels, width, seed)
    lines = ["name: makespan", "stages:"]
    for sid, secs, deps in dag:
        ins = ", ".join(f'd{i}: "{{{d}.o}}"' for i, d in enumerate(deps))
        lines += [
            f"  - id: {sid}",
            "    type: shell",
            "    config:",
            f'      cmd: "sleep {secs} && echo {sid} > {{outputs.o}}"',
            f"      inputs: {{{ins}}}" if ins else "      inputs: {}",
            f"      outputs: {{o: out/{sid}.txt}}",
        ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipemake.yaml").write_text("\n".join(lines) + "\n")
    ready = _run(["build", "-j", str(jobs), "--no-progress"], root)

    def one(secs: float) -> None:
        subprocess.run(["sleep", str(secs)], check=True)

    t = time.perf_counter()
    for lv in range(levels):
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(one, [s for sid, s, _ in dag if sid.startswith(f"s{lv}_")]))
    return ready, time.perf_counter() - t


def big_pipeline(root: Path, n: int) -> None:
    lines = ["name: many", "stages:"]
    for i in range(n):
        ins = f'{{p: "{{s{(i - 1) // 2}.o}}"}}' if i else "{}"
        lines += [
            f"  - id: s{i}",
            "    type: shell",
            "    config:",
            f'      cmd: "echo {i} > {{outputs.o}}"',
            f"      inputs: {ins}",
            f"      outputs: {{o: out/s{i}.txt}}",
        ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipemake.yaml").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jobs", "-j", type=int, default=4)
    ap.add_argument("--levels", type=int, default=5)
    ap.add_argument("--width", type=int, default=6)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pipemake-sched-"))

    ready, level = makespan(work / "makespan", args.levels, args.width, args.jobs, seed=1)
    print(f"| makespan, {args.levels}×{args.width} stages, -j {args.jobs} | seconds |")
    print("| --- | --- |")
    print(f"| pipemake ready queue (incl. ~0.3 s start-up) | {ready:.2f} |")
    print(f"| level-by-level ThreadPoolExecutor | {level:.2f} |")
    print(f"| ratio level-by-level / ready queue | {level / ready:.2f} |\n")

    root = work / "many"
    big_pipeline(root, args.stages)
    cold = _run(["build", "-j", str(args.jobs), "--no-progress"], root)
    rows = {}
    for name, cmd in [
        ("plan (validate)", ["validate"]),
        ("dry-run", ["dry-run"]),
        ("no-op build", ["build", "--no-progress"]),
    ]:
        rows[name] = statistics.median(_run(cmd, root) for _ in range(args.repeat))
    off = {"PIPEMAKE_NOOP_SNAPSHOT": "0"}  # every stage decided again, as after any change
    rows["no-op build without the no-op snapshot"] = statistics.median(
        _run(["build", "--no-progress"], root, env=off) for _ in range(args.repeat)
    )
    after = []
    for i in range(args.repeat):  # an edit: a comment changes the file's hash, not the DAG
        with open(root / "pipemake.yaml", "a") as f:
            f.write(f"# edit {i}\n")
        after.append(_run(["dry-run"], root))
    rows["dry-run right after an edit"] = statistics.median(after)
    print(f"| {args.stages:,} trivial stages | seconds |")
    print("| --- | --- |")
    print(f"| cold build (-j {args.jobs}) | {cold:.2f} |")
    for name, secs in rows.items():
        print(f"| {name} | {secs:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

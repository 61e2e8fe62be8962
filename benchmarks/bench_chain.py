"""One changed file through a chain of three foreach stages: pipemake against GNU Make's
chain of pattern rules on the same files, side by side in one run.

The work per file is the same shell command in both tools: upper-case it (stage 1), reverse
its lines (stage 2), write it twice (stage 3). Make reruns exactly the one file's three
commands by mtime; pipemake must do the same by content (one item per stage, not the whole
stage, since item keys leave out the digest of the upstream output they come from).

    .venv/bin/python benchmarks/bench_chain.py --files 10000 --repeat 5 --jobs 2

Prints a markdown table of median seconds (cold build, no-op, one file changed), the ratio
to Make and how many commands each tool ran on the one-file change. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = [
    ("first", "data", "tr a-z A-Z < {src} > {dst}"),
    ("second", "build/first", "rev < {src} > {dst}"),
    ("third", "build/second", "cat {src} {src} > {dst}"),
]


def pipeline() -> str:
    stages = []
    for sid, src, cmd in STEPS:
        up = {"data": "data", "build/first": "{first.o}", "build/second": "{second.o}"}[src]
        shell = "echo . >> ../counts/pm; " + cmd.format(
            src="{inputs.src}", dst="{outputs.o}/{item.relpath}"
        )
        stages.append(
            f"  - id: {sid}\n    type: shell\n    foreach: src\n    config:\n"
            f'      cmd: "{shell}"\n      inputs: {{src: "{up}"}}\n'
            f"      outputs: {{o: build/{sid}}}\n"
        )
    return "name: chain\nstages:\n" + "".join(stages)


def makefile(n: int) -> str:
    lines = [
        "FILES := $(patsubst data/%,%,$(wildcard data/*.txt))",
        "all: $(addprefix build/third/,$(FILES))",
    ]
    for sid, src, cmd in STEPS:
        recipe = "@mkdir -p $(@D); echo . >> ../counts/make; " + cmd.format(src="$<", dst="$@")
        lines += [f"build/{sid}/%.txt: {src}/%.txt", "\t" + recipe]
    return "\n".join(lines) + "\n"


def timed(cmd: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    return took


def count(path: Path) -> int:
    if not path.exists():
        return 0
    n = len(path.read_text().splitlines())
    path.unlink()
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="where to build (default: a temp dir)")
    args = ap.parse_args(argv)
    base = Path(args.workdir or tempfile.mkdtemp(prefix="bench-chain-"))
    counts = base / "counts"
    counts.mkdir(parents=True, exist_ok=True)
    roots = {"pipemake": base / "pm", "make": base / "make"}
    for root in roots.values():
        shutil.rmtree(root, ignore_errors=True)
        (root / "data").mkdir(parents=True)
        for i in range(args.files):
            (root / "data" / f"f{i:06d}.txt").write_text(f"file {i}\nline two\n")
    (roots["pipemake"] / "pipemake.yaml").write_text(pipeline())
    (roots["make"] / "Makefile").write_text(makefile(args.files))
    cmds = {
        "pipemake": [sys.executable, "-m", "pipemake", "build", "-j", str(args.jobs),
                     "--no-progress"],
        "make": ["make", "-s", "-j", str(args.jobs)],
    }  # fmt: skip
    res: dict[str, dict[str, list[float]]] = {t: {} for t in cmds}
    ran: dict[str, int] = {}
    for tool, cmd in cmds.items():
        res[tool]["cold build"] = [timed(cmd, roots[tool])]
        count(counts / ("pm" if tool == "pipemake" else "make"))
    for r in range(args.repeat):
        for tool, cmd in cmds.items():
            res[tool].setdefault("no-op", []).append(timed(cmd, roots[tool]))
        for tool, cmd in cmds.items():
            f = roots[tool] / "data" / f"f{(r * 7919) % args.files:06d}.txt"
            f.write_text(f"changed {r}\n")
            res[tool].setdefault("one file changed", []).append(timed(cmd, roots[tool]))
            ran[tool] = count(counts / ("pm" if tool == "pipemake" else "make"))
    print(f"\n{args.files:,} files, -j {args.jobs}, median of {args.repeat} (cold: one run)\n")
    print("| scenario | pipemake | Make | pipemake / Make |")
    print("| --- | --- | --- | --- |")
    for scen in ("cold build", "no-op", "one file changed"):
        pm, mk = (statistics.median(res[t][scen]) for t in ("pipemake", "make"))
        print(f"| {scen} | {pm:.3f} s | {mk:.3f} s | {pm / mk:.2f}× |")
    print(
        f"\ncommands run on the last one-file change: pipemake {ran['pipemake']}, "
        f"Make {ran['make']}"
    )
    if not args.workdir:
        shutil.rmtree(base, ignore_errors=True)
    os.sync()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

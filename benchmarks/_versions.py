"""What the benchmarks that run two versions of pipemake side by side share: one command
of a version (its source tree first on ``PYTHONPATH``, ``python -m pipemake``) timed as a
new process, the alternating order of the rounds, and the ``median (range)`` cell.

Used by ``bench_versions.py``, ``bench_noop_big.py`` and ``bench_small_cold.py``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def timed(tree: str, words: Sequence[str], cwd: Path | None = None, **env: str) -> float:
    """Seconds that ``python -m pipemake WORDS`` of the version in ``tree`` took, as a new
    process (the user's ``PIPEMAKE_CACHE_DIR`` left out); exits with its error output if it
    failed."""
    full = dict(os.environ, PYTHONPATH=tree, **env)
    full.pop("PIPEMAKE_CACHE_DIR", None)
    start = time.perf_counter()
    command = [sys.executable, "-m", "pipemake", *words]
    proc = subprocess.run(command, cwd=cwd, env=full, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: pipemake {' '.join(words)} failed:\n{proc.stderr[-2000:]}")
    return took


def order(names: Sequence[str], rnd: int) -> list[str]:
    """The versions in round ``rnd``: A B, then B A, so a drift in the machine's load lands
    on both alike."""
    return list(names) if rnd % 2 == 0 else list(reversed(names))


def cell(seconds: Sequence[float]) -> str:
    """``median ms (min-max)`` of ``seconds``."""
    ms = [x * 1000 for x in seconds]
    return f"{statistics.median(ms):.0f} ms ({min(ms):.0f}-{max(ms):.0f})"


def report(
    size: str, trees: Mapping[str, str], times: Mapping[str, Mapping[str, Sequence[float]]]
) -> None:
    """Print ``SIZE | old: TREE | new: TREE``, then one line per kind of run with each
    version's cell (``times``: kind → version → seconds)."""
    print(f"{size} | " + " | ".join(f"{name}: {tree}" for name, tree in trees.items()))
    for kind, by in times.items():
        print(f"{kind}: " + " | ".join(f"{name} {cell(by[name])}" for name in trees))

"""What pipemake's caches buy (issue 18), in-process.

``chunks N REPEAT``: the parse of an N-stage pipeline file (``bench_scheduler.big_pipeline``)
right after one stage was edited: a full parse, the YAML chunk cache, and the chunks with an
empty cache. ``walk N REPEAT [DIR]``: the no-op snapshot's check of two trees of N files.
Not a test; see docs/benchmarks.md, "Caches and what they buy".
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scheduler import big_pipeline  # noqa: E402

from pipemake import noop  # noqa: E402
from pipemake.walk import signature, walk  # noqa: E402
from pipemake.yamlchunks import load_yaml_cached  # noqa: E402
from pipemake.yamlload import load_yaml  # noqa: E402


def _span(xs: list[float], unit: float = 1.0) -> str:
    return f"{statistics.median(xs) * unit:.3f} ({min(xs) * unit:.3f}–{max(xs) * unit:.3f})"


def chunks(n: int, repeat: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-chunks-"))
    big_pipeline(root, n)
    text = (root / "pipemake.yaml").read_text()
    cache = root / "yaml-chunks.json"
    load_yaml_cached(text, cache)  # the cache holds every stage, as after a plan
    full, cached, cold = [], [], []
    for i in range(repeat):
        edited = text.replace(f"echo {n // 2} >", f"echo {n // 2}-{i} >")
        t = time.perf_counter()
        a = load_yaml(edited)
        full.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = load_yaml_cached(edited, cache)
        cached.append(time.perf_counter() - t)
        assert a == b
        cache.unlink()
        t = time.perf_counter()
        load_yaml_cached(edited, cache)
        cold.append(time.perf_counter() - t)
    print(f"{n} stages, s: full parse {_span(full)}; chunk cache, one stage edited "
          f"{_span(cached)}; chunks, cache empty {_span(cold)}")  # fmt: skip


def walks(n: int, repeat: int, base: str | None) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-walk-", dir=base))
    trees = []
    for name in ("data", "build/upper"):
        d = root / name
        d.mkdir(parents=True)
        for i in range(n):
            (d / f"f{i:06d}.txt").write_text("x" * 64)
        rows = walk(str(d))
        trees.append([name, signature(rows), len(rows)])
    took = []
    for _ in range(repeat):
        t = time.perf_counter()
        assert noop._trees_unchanged(str(root), trees)
        took.append(time.perf_counter() - t)
    print(f"2 trees x {n} files, ms: {_span(took, 1000)}")


if __name__ == "__main__":
    what, n, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if what == "chunks":
        chunks(n, repeat)
    else:
        walks(n, repeat, sys.argv[4] if len(sys.argv) > 4 else None)

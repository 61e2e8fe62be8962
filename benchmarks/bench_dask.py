"""The dask executor's overhead per item (issue 16): a foreach stage of N small items built
cold by the local executor and by ``--executor dask`` on a scheduler with 2 workers on this
machine (``dask scheduler`` + ``dask worker --nthreads 1``, started once, before timing:
a cluster is already running when one uses it), both at ``-j 2``.

Each item is one ``shell`` command made of shell builtins only (``printf`` into its output
file), so what is measured is pipemake's own cost per item: the task runner, hashing and
storing the item's output, committing its key, and for dask the trip of each batch of items
(the build batches them, up to 256 per task) through the scheduler. Per-item figures are
the slope between two sizes (fixed costs such as connecting, the first probe of the
workers, and the stage's commit at the end cancel out), and also the plain ratio
``time / N`` of each size.

    python benchmarks/bench_dask.py --items 1000            # first
    python benchmarks/bench_dask.py --items 1000,10000      # then both, once
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
PIPELINE = """\
name: bench_dask
stages:
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "printf '%s\\\\n' {item.name} > {outputs.o}/{item.name}"
      inputs: {src: data}
      outputs: {o: build/each}
"""


def make_project(root: Path, n: int) -> Path:
    """A project of ``n`` one-line input files and the pipeline above."""
    if root.exists():
        shutil.rmtree(root)
    (root / "data").mkdir(parents=True)
    for i in range(n):
        (root / "data" / f"f{i:06d}.txt").write_text(f"{i}\n")
    (root / "pipemake.yaml").write_text(PIPELINE)
    return root


def build(root: Path, *extra: str) -> float:
    """Seconds for one cold ``pipemake build -j 2`` (its store and outputs removed first)."""
    for sub in (".pipemake", "build"):
        shutil.rmtree(root / sub, ignore_errors=True)
    t = time.perf_counter()
    r = subprocess.run(
        [str(BIN / "pipemake"), "-C", str(root), "build", "-j", "2", "--no-progress", *extra],
        capture_output=True, text=True,
    )  # fmt: skip
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"build failed ({' '.join(extra) or 'local'}):\n{r.stderr}")
    return took


class Cluster:
    """A dask scheduler and ``workers`` single-threaded workers on 127.0.0.1."""

    def __init__(self, tmp: Path, workers: int):
        info = tmp / "scheduler.json"
        info.unlink(missing_ok=True)  # an earlier run's names a scheduler long gone
        quiet = subprocess.DEVNULL
        self.procs = [
            subprocess.Popen(
                [
                    str(BIN / "dask"),
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    "--scheduler-file",
                    str(info),
                ],
                stdout=quiet,
                stderr=quiet,
                start_new_session=True,
            )  # fmt: skip
        ]
        deadline = time.monotonic() + 60
        while not (info.exists() and info.stat().st_size):
            if time.monotonic() > deadline:
                self.close()
                raise SystemExit("the dask scheduler did not start")
            time.sleep(0.1)
        self.address = json.loads(info.read_text())["address"]
        for _ in range(workers):
            self.procs.append(
                subprocess.Popen(
                    [
                        str(BIN / "dask"),
                        "worker",
                        self.address,
                        "--host",
                        "127.0.0.1",
                        "--nthreads",
                        "1",
                        "--no-nanny",
                        "--no-dashboard",
                    ],
                    stdout=quiet,
                    stderr=quiet,
                    start_new_session=True,
                )  # fmt: skip
            )
        from distributed import Client

        try:
            with Client(self.address, timeout=60, set_as_default=False) as client:
                client.wait_for_workers(workers, timeout=120)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", default="1000", help="comma-separated sizes (default 1000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="where the projects go (default: a tmp dir)")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.items.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-dask-"))
    work.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(work, args.workers)
    rows: dict[int, tuple[float, float]] = {}
    try:
        for n in sizes:
            root = make_project(work / f"p{n}", n)
            local = build(root)
            dask = build(root, "--executor", "dask", "--scheduler", cluster.address)
            rows[n] = (local, dask)
    finally:
        cluster.close()
    print(f"cpus: {os.cpu_count()}, load: {os.getloadavg()[0]:.1f}, workers: {args.workers}")
    print("| items | local | dask | local per item | dask per item | dask − local per item |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, (local, dask) in rows.items():
        print(
            f"| {n:,} | {local:.2f} s | {dask:.2f} s | {local / n * 1e3:.2f} ms "
            f"| {dask / n * 1e3:.2f} ms | {(dask - local) / n * 1e3:+.2f} ms |"
        )
    if len(rows) >= 2:
        (a, (la, da)), (b, (lb, db)) = sorted(rows.items())[0], sorted(rows.items())[-1]
        sl, sd = (lb - la) / (b - a) * 1e3, (db - da) / (b - a) * 1e3
        print(
            f"\nslope {a:,} → {b:,} items: local {sl:.2f} ms/item, dask {sd:.2f} ms/item, "
            f"dask's overhead {sd - sl:+.2f} ms/item"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Crash and concurrency trials: kill -9 at random moments of foreach builds and restores,
SIGINT/SIGTERM twice, and several builds at once in one workspace and across workspaces
sharing one ``--cache-dir``. After each trial the next build must finish, every output must
equal a reference build byte for byte, and ``cache verify`` must find nothing wrong.

    .venv/bin/python benchmarks/reliability.py --items 5000 --kills 20 --rounds 5

Prints one line per trial and a summary; exits 1 if any trial lost or corrupted anything.
Nothing here is a test: it takes minutes and is run by hand (see docs/reliability.md).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIPE = """name: rel
stages:
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "tr a-z A-Z < {inputs.src} > {outputs.o}/{item.relpath}"
      inputs: {src: data}
      outputs: {o: build/each}
  - id: total
    type: shell
    config:
      cmd: "cat {inputs.d}/* | wc -c > {outputs.o}"
      inputs: {d: "{each.o}"}
      outputs: {o: build/total.txt}
"""


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def make(root: Path, items: int, seed: int) -> None:
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    rnd = random.Random(seed)
    for i in range(items):
        (root / "data" / f"f{i:06d}.txt").write_text(f"item {i} {rnd.random()}\n")
    (root / "pipemake.yaml").write_text(PIPE)


def pm(root: Path, *args: str, cache: Path | None = None) -> list[str]:
    extra = ["--cache-dir", str(cache)] if cache else []
    return [sys.executable, "-m", "pipemake", "-C", str(root), *extra, *args]


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def check(root: Path, want: str, cache: Path | None, what: str) -> str | None:
    """None when the workspace builds to the reference and the store verifies."""
    r = run(pm(root, "build", "-j", "2", "--no-progress", cache=cache))
    if r.returncode != 0:
        return f"{what}: rebuild exited {r.returncode}: {r.stderr[-500:]}"
    if tree_digest(root / "build") != want:
        return f"{what}: outputs differ from the reference build"
    v = run(pm(root, "cache", "verify", cache=cache))
    if v.returncode != 0:
        return f"{what}: cache verify exited {v.returncode}: {(v.stdout + v.stderr)[-500:]}"
    again = run(pm(root, "dry-run", "--check", cache=cache))
    if again.returncode != 0:
        return f"{what}: not up to date after the rebuild: {again.stdout[-300:]}"
    return None


def kill_trials(base: Path, items: int, kills: int, rnd: random.Random, want: str) -> list[str]:
    bad = []
    root = base / "kill"
    for n in range(kills):
        make(root, items, seed=1)
        if n % 2:  # half of them kill a restore: build, remove the outputs, restore
            run(pm(root, "build", "-j", "2", "--no-progress"))
            shutil.rmtree(root / "build")
            args = ["build", "-j", "2", "--no-progress"] + (["--link"] if n % 4 == 3 else [])
        else:
            args = ["build", "-j", "2", "--no-progress"]
        proc = subprocess.Popen(pm(root, *args), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        time.sleep(rnd.uniform(0.2, 3.0))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        err = check(root, want, None, f"kill -9 #{n} ({' '.join(args[1:])})")
        print(err or f"kill -9 #{n} ({'restore' if n % 2 else 'build'}): ok", flush=True)
        if err:
            bad.append(err)
    return bad


def signal_trials(base: Path, items: int, rnd: random.Random, want: str) -> list[str]:
    bad = []
    root = base / "sig"
    for sig in (signal.SIGINT, signal.SIGTERM):
        make(root, items, seed=1)
        proc = subprocess.Popen(pm(root, "build", "-j", "2", "--no-progress"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(rnd.uniform(0.5, 2.0))
        proc.send_signal(sig)
        time.sleep(0.05)
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
        err = check(root, want, None, f"{sig.name} twice (exit {code})")
        print(err or f"{sig.name} twice: exit {code}, ok", flush=True)
        if err:
            bad.append(err)
    return bad


def concurrency_trials(base: Path, items: int, rounds: int, want: str) -> list[str]:
    bad = []
    cache = base / "shared-cache"
    for r in range(rounds):
        shutil.rmtree(cache, ignore_errors=True)
        roots = [base / f"ws{i}" for i in range(3)]
        for root in roots:
            make(root, items, seed=1)
        procs = [subprocess.Popen(pm(root, "build", "--no-progress", cache=cache),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for root in roots]  # fmt: skip
        same = [subprocess.Popen(pm(roots[0], "build", "--no-progress", cache=cache),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]  # fmt: skip
        gc_cmd = pm(roots[1], "cache", "gc", "--keep-days", "0", cache=cache)
        gc = subprocess.Popen(gc_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for p in [*procs, *same, gc]:
            _, err_text = p.communicate(timeout=900)
            if p.returncode != 0:
                bad.append(f"round {r}: a concurrent command exited {p.returncode}: "
                           f"{err_text[-300:]}")  # fmt: skip
        for root in roots:
            err = check(root, want, cache, f"round {r} {root.name}")
            if err:
                bad.append(err)
        print(f"concurrency round {r}: {'ok' if not bad else bad[-1]}", flush=True)
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rnd = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="pm-reliability-"))
    ref = base / "ref"
    make(ref, args.items, seed=1)
    r = run(pm(ref, "build", "-j", "2", "--no-progress"))
    if r.returncode != 0:
        sys.exit(f"reference build failed: {r.stderr}")
    want = tree_digest(ref / "build")
    bad = kill_trials(base, args.items, args.kills, rnd, want)
    bad += signal_trials(base, args.items, rnd, want)
    bad += concurrency_trials(base, args.items, args.rounds, want)
    trials = args.kills + 2 + args.rounds
    print(f"\n{trials} trials, {len(bad)} with something lost or wrong")
    for line in bad:
        print(" -", line)
    shutil.rmtree(base, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

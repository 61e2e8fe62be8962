"""Resource budgets: what this machine offers (CPUs, GPUs, memory) and the bookkeeping of
what running tasks hold.

GPUs are found without importing torch: ``CUDA_VISIBLE_DEVICES`` when it is set, else the
lines of ``nvidia-smi -L``, else none. A task granted ``gpu: N`` gets N card ids, passed to
it as ``CUDA_VISIBLE_DEVICES``, so two GPU stages never share a card by accident.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping

__all__ = ["Budget", "default_budget", "parse_resources"]


def _gpu_ids() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [x.strip() for x in env.split(",") if x.strip() and x.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("GPU ")]
    return [str(i) for i in range(len(lines))]


def default_budget() -> tuple[dict[str, float], list[str]]:
    """This machine's budget (cpus, gpu, mem_gb) and its GPU ids."""
    gpus = _gpu_ids()
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = 0.0
    return {"cpus": float(os.cpu_count() or 1), "gpu": float(len(gpus)), "mem_gb": mem}, gpus


def parse_resources(text: str | None) -> dict[str, float]:
    """``gpu=1,mem_gb=20`` → ``{"gpu": 1.0, "mem_gb": 20.0}``; ValueError when malformed."""
    out: dict[str, float] = {}
    if not text:
        return out
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"expected NAME=NUMBER, got {part!r}")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not a number") from None
        if out[name] < 0:
            raise ValueError(f"{name}: must be ≥ 0")
    return out


class Budget:
    """What the build may use at once, and what running tasks hold now.

    A name absent from the budget is not limited (as in Snakemake).
    """

    def __init__(self, total: Mapping[str, float], gpu_ids: list[str]):
        self.total = dict(total)
        self.used: dict[str, float] = dict.fromkeys(self.total, 0.0)
        if "gpu" in self.total and len(gpu_ids) < self.total["gpu"]:
            gpu_ids = gpu_ids + [str(i) for i in range(len(gpu_ids), int(self.total["gpu"]))]
        self.free_gpus = list(gpu_ids[: int(self.total.get("gpu", 0))])

    def too_big(self, request: Mapping[str, float]) -> list[str]:
        """The names whose request exceeds the whole budget."""
        return [n for n, v in request.items() if n in self.total and v > self.total[n]]

    def fits(self, request: Mapping[str, float]) -> bool:
        return all(
            n not in self.total or self.used[n] + v <= self.total[n] + 1e-9
            for n, v in request.items()
        )

    def take(self, request: Mapping[str, float]) -> list[str]:
        """Hold ``request``; return the GPU ids granted."""
        for n, v in request.items():
            if n in self.total:
                self.used[n] += v
        k = int(request.get("gpu", 0))
        ids, self.free_gpus = self.free_gpus[:k], self.free_gpus[k:]
        return ids

    def give(self, request: Mapping[str, float], gpu_ids: list[str]) -> None:
        for n, v in request.items():
            if n in self.total:
                self.used[n] -= v
        self.free_gpus = sorted(self.free_gpus + gpu_ids, key=lambda x: (len(x), x))

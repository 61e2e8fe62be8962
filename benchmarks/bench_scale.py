"""Speed at dataset scale: pipemake against GNU Make, DVC and Snakemake, side by side in one
run, with the physical limits measured on the same machine.

The same two-stage work for every tool (benchmarks/_scale_tools.py): upper-case each 4 KiB
file of ``data/`` (one job per file; DVC: one directory stage) and count the bytes of all of
them. Scenarios: cold build, no-op build, dry-run / status, one file's content changed, one
file touched without change, a param changed, the param changed back, and cold hashing of a
few large files. Limits: a bare ``os.scandir`` + ``stat`` walk, a bare single-process Python
loop doing the same work, raw read throughput of the large files and pipemake's in-process
file hashing. Run with the project's venv; the peers come from their own venv::

    .venv/bin/python benchmarks/bench_scale.py --sizes 1000,10000 --repeat 3 \\
        --peer-venv /work/bench-venv

Prints markdown tables: each tool's median seconds, its ratio to pipemake's (``×`` > 1:
pipemake is faster), the items it re-did ``[n]`` where its log shows them, and peak RSS.
Timings are wall-clock medians; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _scale_tools import COUNT, TOOLS, WORK_MODULE, Tool, reset  # noqa: E402

SCENARIOS = [
    "cold build",
    "no-op right after the build",
    "no-op build",
    "dry-run / status",
    "one file changed",
    "one file touched",
    "param changed",
    "param changed back",
]
BIG = "cold hash, large files"
ALL_TOOLS = "pipemake,pipemake-py,pipemake-link,make,dvc,snakemake"
SHORT = {
    "noop": "no-op build",
    "dry": "dry-run / status",
    "changed": "one file changed",
    "touched": "one file touched",
    "param": "param changed",
}
GNU_TIME = "/usr/bin/time" if os.path.exists("/usr/bin/time") else None


@dataclass
class Run:
    """One timed command."""

    seconds: float
    rc: int
    log: str
    maxrss_kb: int
    timed_out: bool = False


@dataclass
class Cell:
    """The measurements of one (scenario, tool)."""

    times: list[float] = field(default_factory=list)
    items: str = ""
    note: str = ""
    maxrss_kb: int = 0

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None


class Runner:
    """Runs commands in a project directory, timing them and reading their peak memory."""

    def __init__(self, env: dict[str, str], timeout: float, verbose: bool) -> None:
        self.env, self.timeout, self.verbose = env, timeout, verbose

    def __call__(self, cmd: list[str], cwd: Path, timeout: float | None = None) -> Run:
        # ru_maxrss of our own fork starts at this harness's RSS; GNU time forks from a small
        # process, so its %M is the command's own peak
        rss_file = tempfile.NamedTemporaryFile("r", suffix=".rss", delete=False)
        full = [GNU_TIME, "-f", "%M", "-o", rss_file.name, *cmd] if GNU_TIME else cmd
        with tempfile.TemporaryFile("w+") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                full,
                cwd=cwd,
                env=self.env,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            killed = threading.Event()

            def kill() -> None:
                killed.set()
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

            timer = threading.Timer(timeout or self.timeout, kill)
            timer.start()
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - t0
            timer.cancel()
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            log = out.read()
        maxrss = usage.ru_maxrss
        try:
            lines = Path(rss_file.name).read_text().split()
            maxrss = int(lines[-1]) if GNU_TIME and lines else maxrss
        except (OSError, ValueError):
            pass
        finally:
            rss_file.close()
            os.unlink(rss_file.name)
        if self.verbose or (
            proc.returncode
            and not killed.is_set()
            and "status" not in cmd
            and "-n" not in cmd
            and "dry-run" not in cmd
        ):
            print(
                f"  $ {' '.join(cmd)}  (rc {proc.returncode}, {seconds:.2f}s)\n"
                + "\n".join("    " + line for line in log.splitlines()[-15:]),
                file=sys.stderr,
            )
        return Run(seconds, proc.returncode, log, maxrss, killed.is_set())


def make_data(root: Path, n: int) -> None:
    """``n`` files of 4 KiB of lower-case text, deterministic."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    line = b"the quick brown fox jumps over the lazy dog 0123456789 abcdefghij\n"  # 64 bytes
    body = line * 64
    for i in range(n):
        (data / f"f{i:06d}.txt").write_bytes(body[:-12] + f"{i:011d}\n".encode())


def make_big(root: Path, count: int, mb: int) -> int:
    """``count`` files of ``mb`` MiB of incompressible bytes under ``big/``; the bytes."""
    big = root / "big"
    big.mkdir(parents=True, exist_ok=True)
    chunk = os.urandom(1 << 20)
    for i in range(count):
        with open(big / f"big{i}.bin", "wb") as f:
            for j in range(mb):
                f.write(chunk[j % 7 :] + chunk[: j % 7])
    return count * mb << 20


def resolve(tool: Tool, peer_bin: Path, pm_bin: Path) -> list[str] | None:
    """The argv prefix for a tool's executable, or None when it is not installed."""
    if tool.exe == "pipemake":
        return [str(pm_bin)] if pm_bin.exists() else [sys.executable, "-m", "pipemake"]
    cand = peer_bin / tool.exe
    if cand.exists():
        return [str(cand)]
    found = shutil.which(tool.exe)
    return [found] if found else None


def scandir_walk(path: str) -> int:
    n = 0
    stack = [path]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                n += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                del st
    return n


def timed(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def limits(work: Path, n: int, repeat: int) -> dict[str, str]:
    """Physical limits on the same data: stat walk, bare loop, raw read and hash throughput."""
    out: dict[str, str] = {}
    data = work / "limits" / "data"
    if not data.exists():
        make_data(data.parent, n)
    out["scandir+stat walk"] = f"{timed(lambda: scandir_walk(str(data)), repeat):.3f} s"
    mod_path = work / "limits" / "benchwork.py"
    mod_path.write_text(WORK_MODULE)
    ns: dict[str, object] = {}
    exec(compile(WORK_MODULE, str(mod_path), "exec"), ns)  # noqa: S102 - our own module text
    loop = ns["loop"]
    dst = work / "limits" / "out"

    def bare() -> None:
        shutil.rmtree(dst, ignore_errors=True)
        loop(str(data), str(dst), "a")  # type: ignore[operator]

    out["bare Python loop (same work, 1 process)"] = f"{timed(bare, repeat):.3f} s"
    return out


def big_limits(paths: list[Path], repeat: int) -> dict[str, str]:
    from pipemake.hashing import hash_file

    total = sum(p.stat().st_size for p in paths)
    buf = bytearray(1 << 20)

    def raw() -> None:
        for p in paths:
            with open(p, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass

    raw()  # warm the page cache, as every tool below sees it
    r = timed(raw, repeat)
    h = timed(lambda: [hash_file(str(p)) for p in paths], repeat)
    gib = total / (1 << 30)
    return {
        "raw read, large files (warm)": f"{gib / r:.2f} GiB/s",
        "pipemake hash_file in-process": f"{gib / h:.2f} GiB/s ({r / h:.0%} of raw read)",
    }


def interleaved_cold(
    run: Runner, tools: dict[str, tuple[Tool, list[str]]], work: Path, n: int, rounds: int
) -> str:
    """Cold builds only, a round at a time over every tool and the bare loop (stage 1 as one
    Python loop in one process, then the count command every tool runs): load from other
    work on a shared machine lands on all of them alike, and each ratio to the bare loop
    comes from the same round."""
    times: dict[str, list[float]] = {name: [] for name in [*tools, BARE]}
    ratios: dict[str, list[float]] = {name: [] for name in tools}
    bare_root = work / "bare"
    bare_root.mkdir(parents=True, exist_ok=True)
    if not (bare_root / "data").exists():
        make_data(bare_root, n)
    (bare_root / "benchwork.py").write_text(WORK_MODULE)
    # stage 1 as one Python loop in one process, then stage 2's very command
    stage1 = shlex.quote(
        f"{sys.executable} -c \"import benchwork; benchwork.loop('data', 'build/upper', 'a')\""
    )
    bare_cmd = ["sh", "-c", f"eval {stage1} && {COUNT}"]
    for name, (tool, _) in tools.items():
        root = work / name
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "data").exists():
            make_data(root, n)
        tool.write(root, "a")
    for _ in range(rounds):
        shutil.rmtree(bare_root / "build", ignore_errors=True)
        os.sync()  # every run starts with nothing waiting to be written back (untimed)
        bare = run(bare_cmd, bare_root)
        times[BARE].append(bare.seconds)
        for name, (tool, argv0) in tools.items():
            root = work / name
            reset(root, tool)

            def cmd(args: list[str], t: Tool = tool, v: list[str] = argv0) -> list[str]:
                return v + (args[1:] if args[0] == t.exe else args)

            tool.setup(root, lambda a, r=root, c=cmd: run(c(a), r))
            os.sync()
            r = run(cmd(tool.build), root)
            if r.rc != 0 or r.timed_out:
                raise SystemExit(f"{name}: cold build failed (rc {r.rc}):\n{r.log[-2000:]}")
            times[name].append(r.seconds)
            ratios[name].append(r.seconds / bare.seconds)

    def col(values: list[float]) -> str:
        each = ", ".join(f"{x:.2f}" for x in values)
        return f"{statistics.median(values):.2f} ({each})"

    peer = "make" if "make" in tools else None
    lines = [
        f"| cold build, {n:,} files, {rounds} interleaved rounds | median | "
        "× bare loop (median of the rounds' ratios; each round)"
        + (" | × make (same)" if peer else "")
        + " |",
        "| --- | --- | --- |" + (" --- |" if peer else ""),
        f"| {BARE} | {statistics.median(times[BARE]):.2f} s | 1 |" + (" |" if peer else ""),
    ]
    for name in tools:
        row = f"| {name} | {statistics.median(times[name]):.2f} s | {col(ratios[name])} |"
        if peer:
            row += f" {col([a / b for a, b in zip(times[name], times[peer], strict=True)])} |"
        lines.append(row)
    return "\n".join(lines)


BARE = "bare Python loop (1 process) + the same count command"


class Bench:
    """Runs every scenario for one tool at one size."""

    def __init__(self, run: Runner, repeat: int, cold_repeat: int, only: set[str]) -> None:
        self.run, self.repeat, self.cold_repeat, self.only = run, repeat, cold_repeat, only

    def tool(self, tool: Tool, argv0: list[str], root: Path, n: int) -> dict[str, Cell]:
        cells = {s: Cell() for s in SCENARIOS}
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "data").exists():
            make_data(root, n)
        tool.write(root, "a")

        def cmd(args: list[str]) -> list[str]:
            return argv0 + (args[1:] if args[0] == tool.exe else args)

        tool.setup(root, lambda a: self.run(cmd(a), root))

        def measure(scen: str, args: list[str], check: bool = True) -> bool:
            r = self.run(cmd(args), root)
            c = cells[scen]
            c.maxrss_kb = max(c.maxrss_kb, r.maxrss_kb)
            if r.timed_out:
                c.note = f"> {self.run.timeout:.0f} s"
                return False
            if check and r.rc != 0:
                c.note = f"failed (rc {r.rc})"
                return False
            c.times.append(r.seconds)
            if check:
                c.items = tool.items_run(r.log, n)
            return True

        for _ in range(self.cold_repeat):
            reset(root, tool)
            tool.write(root, "a")
            if not measure("cold build", tool.build):
                for s in SCENARIOS[1:]:
                    cells[s].note = "skipped (cold build did not finish)"
                return cells
        victim = root / "data" / f"f{n // 2:06d}.txt"
        original = victim.read_bytes()
        if "noop" in self.only:
            measure("no-op right after the build", tool.noop)
            # pipemake trusts a stat only for files older than a second (racy writes), so
            # let every tool's outputs settle before the steady-state no-op
            time.sleep(1.1)
        for _ in range(self.repeat if "noop" in self.only else 0):
            measure("no-op build", tool.noop)
        for _ in range(self.repeat if "dry" in self.only else 0):
            measure("dry-run / status", tool.dry, check=False)
        for i in range(self.repeat if "changed" in self.only else 0):
            victim.write_bytes(original.replace(b"the", f"t{i:02d}".encode()[:3], 1))
            measure("one file changed", tool.build)
        victim.write_bytes(original)
        self.run(cmd(tool.build), root)  # back to the original content, untimed
        for _ in range(self.repeat if "touched" in self.only else 0):
            st = victim.stat()
            os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
            measure("one file touched", tool.build)
        for _ in range(self.cold_repeat if "param" in self.only else 0):
            tool.set_param(root, "b")
            measure("param changed", tool.build)
            tool.set_param(root, "a")
            measure("param changed back", tool.build)
        return cells

    def big(self, tool: Tool, argv0: list[str], root: Path, big_src: Path, total: int) -> Cell:
        cell = Cell()
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "big").exists():
            (root / "big").mkdir()
            for f in big_src.iterdir():  # hard links: the same bytes, no extra disk
                os.link(f, root / "big" / f.name)
        if not tool.write_big(root):
            cell.note = "n/a (mtime only)"
            return cell

        def cmd(args: list[str]) -> list[str]:
            return argv0 + (args[1:] if args[0] == tool.exe else args)

        tool.setup(root, lambda a: self.run(cmd(a), root))
        for _ in range(self.repeat):
            reset(root, tool)
            r = self.run(cmd(tool.build), root)
            if r.rc or r.timed_out:
                cell.note = "failed" if r.rc else "timed out"
                return cell
            cell.times.append(r.seconds)
        noop = statistics.median(self.run(cmd(tool.noop), root).seconds for _ in range(self.repeat))
        m = cell.median or 0.0
        cell.items = f"{total / (1 << 30) / max(m - noop, 1e-3):.2f} GiB/s net of no-op"
        return cell


def fmt(cell: Cell, base: Cell | None) -> str:
    if cell.median is None:
        return cell.note or "—"
    s = f"{cell.median:.2f} s" if cell.median >= 0.1 else f"{cell.median * 1000:.0f} ms"
    if base is not None and base.median and cell is not base:
        s += f" ×{cell.median / base.median:.2g}"
    if cell.items:
        s += f" [{cell.items}]"
    return s


def table(n: int, tools: list[str], results: dict[str, dict[str, Cell]]) -> str:
    head = f"| {n:,} files | " + " | ".join(tools) + " |"
    lines = [head, "|" + " --- |" * (len(tools) + 1)]
    base_tool = "pipemake" if "pipemake" in tools else tools[0]
    for scen in SCENARIOS + [BIG]:
        row = [
            fmt(results[t].get(scen, Cell(note="—")), results[base_tool].get(scen)) for t in tools
        ]
        lines.append(f"| {scen} | " + " | ".join(row) + " |")
    rss = [
        f"{max((c.maxrss_kb for c in results[t].values()), default=0) / 1024:.0f} MB" for t in tools
    ]
    lines.append("| peak RSS (any scenario) | " + " | ".join(rss) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=None, help="file counts, comma-separated (1000,10000)")
    ap.add_argument("--tools", default=ALL_TOOLS, help=f"comma-separated (default {ALL_TOOLS})")
    ap.add_argument("--repeat", type=int, default=3, help="runs per scenario (median)")
    ap.add_argument(
        "--cold-repeat", type=int, default=None, help="cold builds per tool (default: --repeat)"
    )
    ap.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--big-mb", type=int, default=256, help="size of each large file (MiB)")
    ap.add_argument("--big-count", type=int, default=2, help="number of large files (0: skip)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (smoke test)")
    ap.add_argument(
        "--peer-venv",
        default=os.environ.get(
            "PIPEMAKE_BENCH_VENV", str(Path(__file__).resolve().parent / ".venv")
        ),
        help="venv holding dvc and snakemake (env PIPEMAKE_BENCH_VENV)",
    )
    ap.add_argument(
        "--cold-rounds",
        type=int,
        default=0,
        help="instead of the scenarios: this many rounds of cold builds, each round over "
        "every tool and a bare Python loop doing both stages, with ratios per round",
    )
    ap.add_argument("--workdir", default=None, help="where projects go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per command")
    ap.add_argument(
        "--scenarios",
        default=",".join(SHORT),
        help="which to run besides the cold build: " + ",".join(SHORT),
    )
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or "20"
        args.repeat, args.big_mb, args.big_count = 1, min(args.big_mb, 4), min(args.big_count, 1)
    args.sizes = args.sizes or "1000,10000"
    args.cold_repeat = args.cold_repeat or args.repeat
    return args


def compile_package() -> None:
    """Byte-compile the pipemake package this harness measures (as ``pip install`` would)."""
    import compileall

    import pipemake

    compileall.compile_dir(str(Path(pipemake.__file__).parent), quiet=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    names = [t.strip() for t in args.tools.split(",") if t.strip()]
    known = TOOLS(args.jobs)
    peer_bin = Path(args.peer_venv) / "bin"
    pm_bin = Path(sys.executable).parent / "pipemake"
    # the projects' own modules are not cached as bytecode (nothing written into them), but
    # pipemake's are, as pip does for the peers when it installs them: an editable install
    # compiles nothing, and recompiling edited modules on every command is not what a user
    # of an installed pipemake pays
    compile_package()
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONDONTWRITEBYTECODE="1")
    env["PATH"] = f"{peer_bin}{os.pathsep}{env.get('PATH', '')}"
    tools: dict[str, tuple[Tool, list[str]]] = {}
    for name in names:
        if name not in known:
            print(f"note: unknown tool {name!r}, skipped (known: {', '.join(known)})")
            continue
        argv0 = resolve(known[name], peer_bin, pm_bin)
        if argv0 is None:
            print(f"note: {name} is not installed (looked in {peer_bin} and on PATH), skipped")
            continue
        tools[name] = (known[name], argv0)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pipemake-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    only = {x.strip() for x in args.scenarios.split(",") if x.strip()}
    bench = Bench(Runner(env, args.timeout, args.verbose), args.repeat, args.cold_repeat, only)
    print(
        f"# pipemake scale benchmark — -j {args.jobs}, {os.cpu_count()} CPUs, medians of "
        f"{args.repeat} (cold builds and param changes: {args.cold_repeat}); "
        f"work dir {work}\n"
    )
    print(
        "command: "
        + " ".join(
            [
                Path(sys.executable).name,
                "benchmarks/bench_scale.py",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        )
        + "\n"
    )
    try:
        big_total, big_src, big_lim = 0, work / "bigsrc", {}
        if args.big_count:
            big_total = make_big(big_src, args.big_count, args.big_mb)
            big_lim = big_limits(sorted((big_src / "big").iterdir()), args.repeat)
        if args.cold_rounds:
            for n in sizes:
                print(interleaved_cold(bench.run, tools, work / f"cold{n}", n, args.cold_rounds))
                print()
            return 0
        for n in sizes:
            results: dict[str, dict[str, Cell]] = {}
            for name, (tool, argv0) in tools.items():
                print(f"… {name} at {n:,} files", file=sys.stderr, flush=True)
                results[name] = bench.tool(tool, argv0, work / f"n{n}" / name, n)
                if args.big_count and n == sizes[0]:
                    results[name][BIG] = bench.big(
                        tool, argv0, work / "big" / name, big_src / "big", big_total
                    )
            lim = limits(work / f"n{n}", n, args.repeat)
            print(table(n, list(tools), results) + "\n")
            print(f"Limits at {n:,} files: " + "; ".join(f"{k}: {v}" for k, v in lim.items()))
            if big_lim and n == sizes[0]:
                print(
                    f"Large files ({args.big_count} × {args.big_mb} MiB): "
                    + "; ".join(f"{k}: {v}" for k, v in big_lim.items())
                )
            print()
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A fresh clone against a warm remote (issue 15): ``pipemake build`` restoring everything
from S3, against copying the same outputs with the S3 client alone, and against ``dvc pull
&& dvc repro`` on the same pipeline and the same server.

The server is moto's (``python -m moto.server``) on 127.0.0.1, in a process of its own, so
every tool pays the same per-request cost. The pipeline is bench_scale's: upper-case each
4 KiB file of ``data/`` (pipemake: a ``shell`` foreach stage; DVC: one directory stage) and
count the bytes. Warm-up (not timed): each tool builds once and pushes. Timed, per repeat,
in a fresh copy of the sources:

- ``pipemake build`` with ``PIPEMAKE_REMOTE`` (and a signing key): runs nothing, restores
  every output from the remote;
- the S3 client alone: one process that downloads the same output files with s3fs's
  concurrent ``get`` (the floor: no keys, no verification);
- ``dvc pull && dvc repro`` (when ``dvc`` is found: ``--dvc PATH``, else on ``PATH``).

Run with the project's venv (it needs ``s3fs`` and ``moto[server]``, the ``test`` extra)::

    .venv/bin/python benchmarks/bench_remote.py --files 1000 --repeat 3 \\
        --dvc /work/bench-venv-remote/bin/dvc

Prints a markdown table of median wall-clock seconds; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _scale_tools import _DVC_YAML, _PM_SHELL, WORK_MODULE  # noqa: E402

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}
BUCKET = "pipemake-bench"
COPY = """\
import sys, s3fs
fs = s3fs.S3FileSystem()
fs.get(sys.argv[1], sys.argv[2], recursive=True)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(endpoint: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()  # noqa: S310 - 127.0.0.1 only
            return
        except OSError as exc:
            if getattr(exc, "code", None) is not None:
                return
            time.sleep(0.1)
    raise SystemExit(f"the moto server at {endpoint} did not start")


def _sources(root: Path, files: int) -> None:
    """The project as a fresh clone has it: the pipeline files and ``data/``."""
    data = root / "data"
    data.mkdir(parents=True)
    block = (b"abcdefghij" * 410)[:4096]
    for i in range(files):
        (data / f"f{i:06}.txt").write_bytes(block[:-8] + f"{i:08}".encode())
    (root / "pipemake.yaml").write_text(_PM_SHELL.format(tag="t"))
    (root / "dvc.yaml").write_text(_DVC_YAML)
    (root / "params.yaml").write_text("tag: t\n")
    (root / "benchwork.py").write_text(WORK_MODULE)


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")
    return took


def _same(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dvc", default=shutil.which("dvc"), help="the dvc executable")
    args = ap.parse_args()
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": endpoint,
           "PIPEMAKE_REMOTE": f"s3://{BUCKET}/pipemake", "PIPEMAKE_CACHE_KEY": "bench-key",
           "PIPEMAKE_NOOP_SNAPSHOT": "0"}  # fmt: skip
    env.pop("PIPEMAKE_CACHE_DIR", None)
    pipemake = [sys.executable, "-m", "pipemake"]
    try:
        _wait(endpoint)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, **_lower(CREDENTIALS)).create_bucket(
            Bucket=BUCKET
        )
        warm = work / "warm"
        _sources(warm, args.files)
        t_build = _run([*pipemake, "build", "-j", "2", "--no-progress"], warm, env)
        t_push = _run([*pipemake, "push"], warm, env)
        _run([sys.executable, "-c", _UPLOAD, str(warm / "build"), f"{BUCKET}/raw"], warm, env)
        dvc = args.dvc
        dwarm = work / "dvc-warm"
        if dvc:
            _sources(dwarm, args.files)
            _dvc_warm(dvc, dwarm, env, endpoint)
        rows: dict[str, list[float]] = {"pipemake build": [], "S3 client alone (s3fs get)": []}
        if dvc:
            rows["dvc pull && dvc repro"] = []
        for n in range(args.repeat):
            clone = work / f"clone{n}"
            _sources(clone, args.files)
            rows["pipemake build"].append(_run([*pipemake, "build", "--no-progress"], clone, env))
            assert _same(warm / "build/upper", clone / "build/upper"), "pipemake restored wrong"
            copy = work / f"copy{n}"
            copy.mkdir()
            rows["S3 client alone (s3fs get)"].append(
                _run([sys.executable, "-c", COPY, f"{BUCKET}/raw/", str(copy)], copy, env)
            )
            if dvc:
                dclone = work / f"dvc{n}"
                _sources(dclone, args.files)
                for name in ("dvc.lock",):
                    shutil.copy(dwarm / name, dclone / name)
                shutil.copytree(dwarm / ".dvc", dclone / ".dvc", ignore=_no_cache)
                rows["dvc pull && dvc repro"].append(
                    _timed(
                        lambda d=dclone: (
                            _run([dvc, "pull", "-q"], d, env),
                            _run([dvc, "repro", "-q"], d, env),
                        )
                    )  # fmt: skip
                )
                assert _same(dwarm / "build/upper", dclone / "build/upper"), "dvc pulled wrong"
        floor = statistics.median(rows["S3 client alone (s3fs get)"])
        print(f"\n{args.files:,} files of 4 KiB; moto on 127.0.0.1; median of {args.repeat}")
        print(f"(warm-up: pipemake build -j 2 {t_build:.1f} s, push {t_push:.1f} s)\n")
        print("| fresh clone + warm remote | seconds | × S3 client alone |")
        print("| --- | ---: | ---: |")
        for name, times in rows.items():
            med = statistics.median(times)
            print(f"| {name} | {med:.2f} | {med / floor:.2f} |")
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)


_UPLOAD = """\
import sys, s3fs
s3fs.S3FileSystem().put(sys.argv[1] + "/upper", sys.argv[2] + "/", recursive=True)
"""


def _lower(creds: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": creds["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": creds["AWS_SECRET_ACCESS_KEY"],
        "region_name": creds["AWS_DEFAULT_REGION"],
    }


def _dvc_warm(dvc: str, root: Path, env: dict[str, str], endpoint: str) -> None:
    """``dvc init``, an S3 remote on the same server, ``dvc repro && dvc push``."""
    for cmd in (
        ["init", "--no-scm", "-q"],
        ["config", "core.analytics", "false"],
        ["remote", "add", "-d", "bench", f"s3://{BUCKET}/dvc"],
        ["remote", "modify", "bench", "endpointurl", endpoint],
        ["repro", "-q"],
        ["push", "-q"],
    ):
        _run([dvc, *cmd], root, env)


def _no_cache(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n in ("cache", "tmp", "site")]


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()

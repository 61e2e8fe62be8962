"""Per-frame cost of the segmentation rule, with the tiny test model (no download needed).

What it shows: the rule's own overhead per frame (decode, rembg's resize and normalization,
mask scaling, PNG encode) with one reused session, against the same work when a session is
made per frame (what ``rembg.remove`` without ``session=`` does), and the price of alpha
matting. Real models add their inference time on top (u2net: about 0.3-1 s per frame on a
CPU core); this isolates what pipemake and rembg add around it.

    .venv/bin/python benchmarks/bench_segmentation.py [--frames 40] [--size 640x360]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    """Build frames and a model in a temporary folder, time the three ways, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--matting-frames", type=int, default=3)
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from _onnx_fixtures import install_named_model

    tmp = Path(tempfile.mkdtemp(prefix="bench-seg-"))
    os.environ["U2NET_HOME"] = str(tmp / "home")
    install_named_model(tmp / "home", "u2net")
    frames = _write_frames(tmp / "frames", args.frames, width, height)

    t0 = time.perf_counter()
    import rembg  # noqa: F401  (numba compile on a cold cache: about a minute)

    print(f"import rembg: {time.perf_counter() - t0:.2f} s")
    bare = _time_rembg(frames, tmp / "bare", new_each_time=False)
    reused = _time_rule(tmp, frames, {})
    per_frame = _time_rembg(frames, tmp / "fresh", new_each_time=True)
    matting = _time_rule(tmp, frames[: args.matting_frames], {"alpha_matting": True})
    print(f"{args.frames} frames of {width}x{height}, tiny 1x1-conv model, one CPU process")
    print("| way | ms per frame |")
    print("| --- | --- |")
    print(f"| rembg.remove + save, one session reused | {bare * 1000:.1f} |")
    print(f"| rule (run_item), one session reused | {reused * 1000:.1f} |")
    print(f"| rembg.remove + save, a new session per frame | {per_frame * 1000:.1f} |")
    print(f"| rule with alpha_matting: true | {matting * 1000:.1f} |")


def _write_frames(folder: Path, count: int, width: int, height: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        arr = rng.integers(90, 160, (height, width, 3), dtype=np.uint8)
        x, y = 40 + 5 * i % (width // 2), height // 4
        arr[y : y + height // 2, x : x + width // 4] = (240, 20, 20)
        paths.append(folder / f"f{i:04d}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


def _time_rule(tmp: Path, frames: list[Path], params: dict) -> float:
    from pipemake.rule import Context, Item
    from pipemake.rules.segmentation import SegmentationRule

    rule = SegmentationRule()
    ports, _ = rule.ports({"input_dir": "frames", "output_dir": "out", **params})
    out = tmp / f"out-{len(os.listdir(tmp))}"
    out.mkdir()
    ctx = Context(tmp, {"input_dir": frames[0]}, {"output_dir": out}, ports.params)
    ctx.state = rule.setup(ctx)
    start = time.perf_counter()
    for path in frames:
        ctx.inputs["input_dir"] = path
        rule.run_item(ctx, Item(path=str(path), relpath=path.name))
    return (time.perf_counter() - start) / len(frames)


def _time_rembg(frames: list[Path], out: Path, new_each_time: bool) -> float:
    from PIL import Image
    from rembg import new_session, remove

    out.mkdir()
    session = new_session("u2net", providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    for path in frames:
        if new_each_time:
            session = new_session("u2net", providers=["CPUExecutionProvider"])
        with Image.open(path) as img:
            remove(img, session=session).save(out / path.name)
    return (time.perf_counter() - start) / len(frames)


if __name__ == "__main__":
    main()

"""Tests of the frame_extraction rule, on generated videos with known cuts and key frames."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from pipemake.rule import Context, Item, RuleError
from pipemake.rules.frame_extraction import FrameExtractionRule, parse_resize, parse_time

sys.path.insert(0, str(Path(__file__).parent))
from _video_fixtures import DEFAULT_SHOTS, write_garbage, write_joined, write_video  # noqa: E402

TOTAL = sum(DEFAULT_SHOTS)  # 185 frames at 24 fps, a key frame every 12
RULE = FrameExtractionRule()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A clean H.264 clip (with its cuts) and the broken files derived from it."""
    root = tmp_path_factory.mktemp("videos")
    cuts = write_video(root / "clip.mp4")
    write_video(root / "clip.mkv", codec="mpeg4")
    data = (root / "clip.mkv").read_bytes()
    (root / "tail.mkv").write_bytes(data[: len(data) // 2])  # good frames, then nothing
    (root / "head.mkv").write_bytes(data[:600])  # header only: no frame
    mp4 = (root / "clip.mp4").read_bytes()
    (root / "cut.mp4").write_bytes(mp4[: len(mp4) // 2])  # index at the end: unreadable
    (root / "empty.mp4").write_bytes(b"")
    write_garbage(root / "garbage.mp4")
    (root / "notes.avi").write_text("not a video\n" * 50)
    write_video(root / "raw.avi", codec="mpeg4")
    avi = (root / "raw.avi").read_bytes()
    (root / "unknown.avi").write_bytes(avi.replace(b"FMP4", b"QQZZ"))  # no such decoder
    return {"root": root, "cuts": cuts}


def run_rule(src: Path, out: Path, root: Path | None = None, **params: Any) -> dict[str, Any]:
    """Run the rule like the engine does: ports, check, then run."""
    ports, problems = RULE.ports({"input_video": "in", "output_dir": "out", **params})
    assert not problems and not RULE.check(ports), (problems, RULE.check(ports))
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(root or src.parent, {"input_video": src}, {"output_dir": out}, ports.params)
    return RULE.run(ctx)


def manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]


def indices(out: Path) -> list[int]:
    return [r["frame_index"] for r in manifest(out)]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"mode": "fps", "fps": 1.0}, list(range(0, TOTAL, 24))),
        ({"mode": "fps", "fps": 4.0}, list(range(0, TOTAL, 6))),
        ({"mode": "every_n", "n": 30}, list(range(0, TOTAL, 30))),
        ({"mode": "keyframes"}, list(range(0, TOTAL, 12))),
        ({"mode": "all"}, list(range(TOTAL))),
    ],
)
def test_modes_keep_the_expected_frames(videos, tmp_path, params, expected) -> None:
    values = run_rule(videos["root"] / "clip.mp4", tmp_path, **params)
    assert indices(tmp_path) == expected
    assert values["frame_count"] == len(expected)
    files = sorted(p.name for p in tmp_path.glob("frame_*.jpg"))
    assert files == [f"frame_{i:06d}.jpg" for i in expected]


def test_scene_mode_takes_one_frame_inside_each_shot(videos, tmp_path) -> None:
    values = run_rule(videos["root"] / "clip.mp4", tmp_path, mode="scene")
    bounds = [0, *videos["cuts"], TOTAL]
    records = manifest(tmp_path)
    assert values["frame_count"] == 5 and values["scenes"] == 5
    assert [r["scene"] for r in records] == [0, 1, 2, 3, 4]
    for r, lo, hi in zip(records, bounds, bounds[1:], strict=False):
        assert lo + (hi - lo) // 4 <= r["frame_index"] < hi - (hi - lo) // 4  # near the middle
        assert r["shot_start"] == lo and r["shot_start_time"] == pytest.approx(lo / 24, abs=1e-3)


def test_scene_mode_reports_its_cuts(videos, tmp_path) -> None:
    values = run_rule(videos["root"] / "clip.mp4", tmp_path, mode="scene")
    assert [c["frame_index"] for c in values["cuts"]] == videos["cuts"]
    for cut in values["cuts"]:
        assert cut["timestamp"] == pytest.approx(cut["frame_index"] / 24, abs=1e-3)
        assert cut["video"] == "clip.mp4"


def test_scene_mode_per_scene_spreads_frames_over_each_shot(videos, tmp_path) -> None:
    run_rule(videos["root"] / "clip.mp4", tmp_path, mode="scene", per_scene=3)
    records = manifest(tmp_path)
    assert len(records) == 15
    for scene in range(5):
        idx = [r["frame_index"] for r in records if r["scene"] == scene]
        assert len(idx) == 3 and idx == sorted(idx) and idx[2] - idx[0] >= 10


@pytest.mark.parametrize(("seed", "flashes"), [(1, False), (2, True)])
def test_scene_detection_finds_the_known_cuts(tmp_path, seed, flashes) -> None:
    import numpy as np

    lengths = [int(x) for x in np.random.default_rng(seed).integers(16, 50, size=6)]
    cuts = write_video(tmp_path / "v.mp4", lengths, seed=seed, speed=3.0, shapes=5, flashes=flashes)
    values = run_rule(tmp_path / "v.mp4", tmp_path / "out", mode="scene", format="png", resize=16)
    assert [c["frame_index"] for c in values["cuts"]] == cuts
    records = manifest(tmp_path / "out")
    assert sorted({r["shot_start"] for r in records}) == [0, *cuts]


@pytest.mark.parametrize("mode", ["fps", "every_n", "all", "keyframes"])
def test_other_modes_detect_no_shots(videos, tmp_path, mode) -> None:
    values = run_rule(videos["root"] / "clip.mp4", tmp_path, mode=mode, max_frames=3)
    assert values == {"frame_count": 3, "scenes": None, "cuts": None}
    for r in manifest(tmp_path):
        assert r["scene"] is None and r["shot_start"] is None and r["shot_start_time"] is None


def test_fps_mode_computes_nothing_per_frame_it_does_not_keep(videos, tmp_path) -> None:
    # no thumbnails, no shot statistics: numpy is never even imported
    code = (
        "import logging, sys\n"
        "from pathlib import Path\n"
        "from pipemake.rules import _video\n"
        "from pipemake.rules.frame_extraction import _options\n"
        "opts = _options({'mode': 'fps', 'fps': 2.0, 'format': 'png'})\n"
        "r = _video.extract(Path(sys.argv[1]), Path(sys.argv[2]), '', 'v', opts,"
        " logging.getLogger())\n"
        "assert len(r.records) == 16 and r.decoded + r.skipped == 185, r\n"
        "assert r.skipped >= 150, r  # a kept frame every 12, a key frame every 12\n"
        "assert 'numpy' not in sys.modules\n"
    )
    clip = videos["root"] / "clip.mp4"
    subprocess.run([sys.executable, "-c", code, str(clip), str(tmp_path)], check=True)
    assert len(list(tmp_path.glob("frame_*.png"))) == 16


@pytest.mark.parametrize(
    ("params", "gop", "bframes"),
    [
        ({"fps": 1.0}, 48, 0),  # tails of 23 frames are not decoded
        ({"fps": 3.0}, 12, 0),
        ({"fps": 1.0}, 48, 2),  # B-frames: whole groups
        ({"fps": 1.0, "start": 2.5}, 12, 2),  # groups before start skipped
    ],
)
def test_frames_kept_after_skipped_tails_are_the_decoded_frames(
    tmp_path, params, gop, bframes
) -> None:
    import av
    import numpy as np
    from PIL import Image

    from pipemake.rules._video import scale

    shots = [40, 50, 30, 60]
    write_video(tmp_path / "v.mp4", shots, gop=gop, shapes=4, speed=2.0, bframes=bframes)
    run_rule(tmp_path / "v.mp4", tmp_path / "o", mode="fps", format="png", **params)
    with av.open(str(tmp_path / "v.mp4")) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 180
    records = manifest(tmp_path / "o")
    step = round(24 / params["fps"])
    first = round(params.get("start", 0) * 24)
    assert [r["frame_index"] for r in records] == list(range(first, 180, step))
    for r in records:
        frame = frames[r["frame_index"]]
        rgb = scale(frame, "t", width=160, height=96, format="rgb24", interpolation="AREA")
        with Image.open(tmp_path / "o" / r["file"]) as img:
            assert np.array_equal(np.asarray(img), rgb.to_ndarray())
        assert r["timestamp"] == pytest.approx(frame.time, abs=1e-3)


@pytest.mark.parametrize("mode", ["all", "scene", "every_n", "keyframes"])
def test_frame_index_is_the_decode_order_on_a_joined_video(tmp_path, mode) -> None:
    # two clips joined as `-c copy` joins do: 24 fps then 30 fps, 2 s of timestamps between
    times = write_joined(tmp_path / "joined.mkv", [(30, 24), (30, 30)], gap=2.0, gop=12)
    params = {"n": 7} if mode == "every_n" else {"min_scene_len": 5} if mode == "scene" else {}
    values = run_rule(tmp_path / "joined.mkv", tmp_path / "o", mode=mode, **params)
    records = manifest(tmp_path / "o")
    for r in records:  # the index is the position in the decoded stream, whatever the times
        assert r["timestamp"] == pytest.approx(times[r["frame_index"]], abs=2e-3)
    expected = {"all": range(60), "every_n": range(0, 60, 7), "keyframes": range(0, 60, 12)}
    if mode in expected:
        assert [r["frame_index"] for r in records] == list(expected[mode])
    else:  # the cut is where the second clip starts
        assert [c["frame_index"] for c in values["cuts"]] == [30]
        assert values["cuts"][0]["timestamp"] == pytest.approx(times[30], abs=2e-3)


def test_start_on_a_joined_video_skips_groups_but_keeps_the_index(tmp_path) -> None:
    times = write_joined(tmp_path / "joined.mkv", [(30, 24), (30, 30)], gap=2.0, gop=12)
    run_rule(tmp_path / "joined.mkv", tmp_path / "o", mode="all", start=3.3)
    first = next(i for i, t in enumerate(times) if t >= 3.3 - 1e-6)
    assert indices(tmp_path / "o") == list(range(first, 60))


def test_start_and_end_limit_the_range(videos, tmp_path) -> None:
    values = run_rule(videos["root"] / "clip.mp4", tmp_path, mode="all", start=1.0, end="0:03")
    assert indices(tmp_path) == list(range(24, 72))
    assert values["frame_count"] == 48


def test_times_count_from_the_start_of_a_stream_that_starts_late(tmp_path) -> None:
    write_video(tmp_path / "late.mkv", [30, 30], first_pts=240)  # starts at 10 s
    run_rule(tmp_path / "late.mkv", tmp_path / "o", mode="every_n", n=5, start=1.0, end=2.0)
    records = manifest(tmp_path / "o")
    assert [r["frame_index"] for r in records] == list(range(24, 48, 5))
    assert records[0]["timestamp"] == pytest.approx(1.0, abs=1e-3)


def test_start_seeks_in_keyframes_mode(videos, tmp_path) -> None:
    run_rule(videos["root"] / "clip.mp4", tmp_path, mode="keyframes", start=2.1)
    assert indices(tmp_path) == list(range(60, TOTAL, 12))


def test_max_frames_caps_every_mode(videos, tmp_path) -> None:
    run_rule(videos["root"] / "clip.mp4", tmp_path / "a", mode="all", max_frames=10)
    assert indices(tmp_path / "a") == list(range(10))
    values = run_rule(videos["root"] / "clip.mp4", tmp_path / "s", mode="scene", max_frames=2)
    assert values["frame_count"] == 2
    assert [r["scene"] for r in manifest(tmp_path / "s")] == [0, 1]
    assert [r["shot_start"] for r in manifest(tmp_path / "s")] == [0, videos["cuts"][0]]


@pytest.mark.parametrize(
    ("resize", "size"), [(80, (80, 48)), ("40x40", (40, 24)), (None, (160, 96))]
)
def test_resize_keeps_the_aspect_ratio(videos, tmp_path, resize, size) -> None:
    from PIL import Image

    params = {"resize": resize} if resize is not None else {}
    run_rule(videos["root"] / "clip.mp4", tmp_path, mode="keyframes", max_frames=1, **params)
    with Image.open(tmp_path / "frame_000000.jpg") as img:
        assert img.size == size


@pytest.mark.parametrize(("fmt", "pil"), [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP")])
def test_formats(videos, tmp_path, fmt, pil) -> None:
    from PIL import Image

    run_rule(videos["root"] / "clip.mp4", tmp_path, mode="keyframes", format=fmt, quality=80)
    files = sorted(tmp_path.glob(f"*.{fmt}"))
    assert len(files) == 16
    with Image.open(files[3]) as img:
        assert img.format == pil and img.mode == "RGB"
    assert manifest(tmp_path)[3]["file"] == files[3].name


def test_quality_changes_jpg_size(videos, tmp_path) -> None:
    src = videos["root"] / "clip.mp4"
    run_rule(src, tmp_path / "lo", mode="keyframes", quality=20)
    run_rule(src, tmp_path / "hi", mode="keyframes", quality=98)
    size = lambda d: sum(p.stat().st_size for p in d.glob("*.jpg"))  # noqa: E731
    assert size(tmp_path / "lo") < size(tmp_path / "hi") / 2


def test_dedup_drops_near_identical_frames(tmp_path) -> None:
    write_video(tmp_path / "still.mp4", [20, 20, 20], shapes=0)  # three still shots
    run_rule(tmp_path / "still.mp4", tmp_path / "off", mode="all", dedup=0)
    run_rule(tmp_path / "still.mp4", tmp_path / "on", mode="all", dedup=6)
    assert len(indices(tmp_path / "off")) == 60
    assert indices(tmp_path / "on") == [0, 20, 40]
    assert len(list((tmp_path / "on").glob("*.jpg"))) == 3


def test_manifest_fields(videos, tmp_path) -> None:
    root = videos["root"].parent
    run_rule(videos["root"] / "clip.mp4", tmp_path, root=root, mode="every_n", n=50)
    records = manifest(tmp_path)
    assert [r["frame_index"] for r in records] == [0, 50, 100, 150]
    fields = {"file", "video", "timestamp", "frame_index", "scene", "shot_start"}
    for r in records:
        assert set(r) == fields | {"shot_start_time"}
        assert (tmp_path / r["file"]).is_file()
        assert r["video"] == f"{videos['root'].name}/clip.mp4"  # relative to the project
        assert r["timestamp"] == pytest.approx(r["frame_index"] / 24, abs=1e-3)


def test_keyframes_mode_has_no_scene_ids(videos, tmp_path) -> None:
    values = run_rule(videos["root"] / "clip.mp4", tmp_path, mode="keyframes")
    assert values == {"frame_count": 16, "scenes": None, "cuts": None}
    assert all(r["scene"] is None for r in manifest(tmp_path))


def test_run_item_writes_into_the_stem_dir(videos, tmp_path) -> None:
    ports, _ = RULE.ports({"input_video": "v", "output_dir": "o", "mode": "scene"})
    src = videos["root"] / "clip.mp4"
    for relpath in ("clip.mp4", "sub/clip.mp4"):
        staging = tmp_path / relpath.replace("/", "_")
        staging.mkdir()
        item = Item(path=f"videos/{relpath}", relpath=relpath)
        ctx = Context(tmp_path, {"input_video": src}, {"output_dir": staging}, ports.params)
        state = RULE.setup(ctx)
        ctx.state = state
        values = RULE.run_item(ctx, item)
        stem_dir = staging / relpath[: -len(".mp4")]
        assert values["frame_count"] == 5 and values["scenes"] == 5
        assert [c["frame_index"] for c in values["cuts"]] == videos["cuts"]
        assert {c["video"] for c in values["cuts"]} == {f"videos/{relpath}"}
        assert sorted(p.name for p in staging.rglob("*") if p.is_file())[-1] == "frames.jsonl"
        records = manifest(stem_dir)
        assert all(r["file"].startswith(relpath[: -len(".mp4")] + "/") for r in records)
        assert all((staging / r["file"]).is_file() for r in records)
        assert records[0]["video"] == f"videos/{relpath}"
    other = {"frame_count": 2, "scenes": 1, "cuts": []}
    totals = RULE.gather(ports.params, {"b.mp4": other, "a.mp4": values})
    assert totals == {"frame_count": 7, "scenes": 6, "cuts": values["cuts"]}
    keyframes = {"frame_count": 2, "scenes": None, "cuts": None}
    assert RULE.gather(ports.params, {"a.mp4": values, "k.mp4": keyframes})["cuts"] is None


def test_directory_input_without_foreach(videos, tmp_path) -> None:
    src = tmp_path / "vids"
    (src / "sub").mkdir(parents=True)
    write_video(src / "a.mp4", [20, 20])
    write_video(src / "sub" / "b.mkv", [20, 20, 20], codec="mpeg4")
    (src / "readme.txt").write_text("skip me")
    values = run_rule(src, tmp_path / "out", mode="scene")
    assert values["frame_count"] == 5 and values["scenes"] == 5
    assert [(c["video"], c["frame_index"]) for c in values["cuts"]] == [
        ("vids/a.mp4", 20),
        ("vids/sub/b.mkv", 20),
        ("vids/sub/b.mkv", 40),
    ]
    assert len(manifest(tmp_path / "out" / "a")) == 2
    assert manifest(tmp_path / "out" / "sub" / "b")[0]["file"].startswith("sub/b/frame_")


def test_foreach_pattern_takes_videos_only() -> None:
    patterns = RULE.foreach_pattern.split("|")
    for name in ("a.mp4", "b.MOV", "c.mkv", "d.webm"):
        assert any(fnmatch(name, p) for p in patterns)
    for name in ("frames.jsonl", "frame_000001.jpg", "x.png"):
        assert not any(fnmatch(name, p) for p in patterns)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("garbage.mp4", "not a readable video"),
        ("notes.avi", "not a readable video"),
        ("empty.mp4", "empty"),
        ("cut.mp4", "not a readable video"),
        ("head.mkv", "no frames"),
        ("unknown.avi", "unsupported video codec"),
    ],
)
def test_bad_input_is_a_rule_error_and_leaves_nothing(videos, tmp_path, name, words) -> None:
    src = videos["root"] / name
    with pytest.raises(RuleError) as err:
        run_rule(src, tmp_path, mode="all")
    assert str(src) in str(err.value) and words in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_tail_is_a_warning_with_the_count(videos, tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        values = run_rule(videos["root"] / "tail.mkv", tmp_path, mode="all")
    assert 40 < values["frame_count"] < TOTAL
    assert len(manifest(tmp_path)) == values["frame_count"]
    [message] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "tail.mkv" in message and f"{values['frame_count']} frames extracted" in message


def test_clean_video_gives_no_warning(videos, tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        run_rule(videos["root"] / "clip.mkv", tmp_path, mode="keyframes")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_start_past_the_end_is_a_rule_error(videos, tmp_path) -> None:
    with pytest.raises(RuleError, match="no frames between start and end"):
        run_rule(videos["root"] / "clip.mp4", tmp_path, start=60)


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"fps": 0}, "fps"),
        ({"n": 0}, "n"),
        ({"resize": "big"}, "resize"),
        ({"start": "soon"}, "start"),
        ({"start": 5, "end": 2}, "end"),
        ({"quality": 0}, "quality"),
        ({"dedup": 65}, "dedup"),
        ({"min_scene_len": 0}, "min_scene_len"),
    ],
)
def test_check_reports_bad_params(params, key) -> None:
    ports, problems = RULE.ports({"input_video": "v", "output_dir": "o", **params})
    assert not problems
    assert [k for k, _ in RULE.check(ports)] == [key]


def test_ports_accept_the_seed_keys_and_reject_unknown_modes() -> None:
    _, problems = RULE.ports({"input_video": "v", "output_dir": "o", "mode": "scene"})
    assert problems == []
    _, problems = RULE.ports({"input_video": "v", "output_dir": "o", "mode": "fast"})
    assert [k for k, _ in problems] == ["mode"]


def test_parsers() -> None:
    assert parse_time("01:02:03.5") == 3723.5 and parse_time(2) == 2.0 and parse_time(None) is None
    assert parse_resize("640x480") == (640, 480) and parse_resize(512) == 512
    with pytest.raises(ValueError):
        parse_resize(0)


def test_declarations() -> None:
    assert RULE.name == "frame_extraction" and RULE.version == "4"
    assert tuple(RULE.values) == ("frame_count", "scenes", "cuts")


def test_import_does_not_load_av_or_numpy() -> None:
    code = (
        "import sys, pipemake.rules.frame_extraction\n"
        "bad = [m for m in ('av', 'numpy', 'PIL') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _detect(levels: list[float], min_scene_len: int = 3) -> list[int]:
    """Cuts found in flat grey 'frames' of the given brightness levels."""
    import numpy as np

    from pipemake.rules._video_shots import SceneDetector

    det = SceneDetector(threshold=20.0, min_scene_len=min_scene_len)
    for i, level in enumerate(levels):
        det.push(i, np.full((4, 4, 3), level, dtype=np.int16))
    det.finish()
    return det.cuts


def test_detector_takes_a_jump_but_not_a_flash_or_a_pan() -> None:
    assert _detect([10] * 10 + [100] * 10) == [10]  # a cut
    assert _detect([10] * 10 + [100] + [10] * 10) == []  # a one-frame flash
    assert _detect([10 + 30 * i for i in range(20)]) == []  # a steady change, never a jump
    assert _detect([10] * 10 + [40] * 10) == [10]  # a smaller jump still counts
    assert _detect([10] * 10 + [25] * 10) == []  # under the threshold


def test_detector_respects_min_scene_len() -> None:
    levels = [10] * 10 + [100] * 2 + [200] * 10
    assert _detect(levels, min_scene_len=3) == [10]
    assert _detect(levels, min_scene_len=1) == [10, 12]


def test_progress_reports_towards_the_expected_total(videos, tmp_path) -> None:
    calls: list[tuple[int, int | None]] = []
    ports, _ = RULE.ports({"input_video": "v", "output_dir": "o", "mode": "all"})
    ctx = Context(
        tmp_path,
        {"input_video": videos["root"] / "clip.mp4"},
        {"output_dir": tmp_path},
        ports.params,
        progress=lambda done, total: calls.append((done, total)),
    )
    RULE.run(ctx)
    assert calls and all(t == TOTAL for _, t in calls[:-1])
    # the last report is what was decoded, so a bar ends full (not at 175 of 180)
    assert calls[-1] == (TOTAL, TOTAL)


@pytest.mark.parametrize(
    ("shots", "per_scene"),
    [
        ([20, 24, 16], 1),  # the last shot fills the candidate list exactly
        ([30, 18, 40], 1),  # a last shot longer than the candidate list (thinned)
        ([16, 50, 70], 3),
    ],
)
def test_appending_a_shot_keeps_every_frame_picked_before(tmp_path, shots, per_scene) -> None:
    """A shot's picks depend on its own frames only: the frames of the old video's last shot
    are picked the same when a new shot follows it, and come out byte-identical."""
    write_video(tmp_path / "old.mp4", shots)
    write_video(tmp_path / "new.mp4", [*shots, 25])
    params = {"mode": "scene", "per_scene": per_scene, "format": "png"}
    old = run_rule(tmp_path / "old.mp4", tmp_path / "o", **params)
    new = run_rule(tmp_path / "new.mp4", tmp_path / "n", **params)
    end = sum(shots)
    assert [c["frame_index"] for c in new["cuts"]] == [c["frame_index"] for c in old["cuts"]] + [
        end
    ]
    before, after = manifest(tmp_path / "o"), manifest(tmp_path / "n")
    assert [r for r in after if r["frame_index"] < end] == [
        {**r, "video": "new.mp4"} for r in before
    ]
    assert len([r for r in after if r["frame_index"] >= end]) == per_scene
    for r in before:
        assert (tmp_path / "n" / r["file"]).read_bytes() == (
            tmp_path / "o" / r["file"]
        ).read_bytes()


def test_scene_picks_are_the_middles_of_equal_parts(tmp_path) -> None:
    write_video(tmp_path / "v.mp4", [16, 24, 15])
    run_rule(tmp_path / "v.mp4", tmp_path / "o", mode="scene")
    assert indices(tmp_path / "o") == [8, 28, 47]  # 40 + 7.5: the earlier of two middles
    run_rule(tmp_path / "v.mp4", tmp_path / "t", mode="scene", per_scene=2)
    assert indices(tmp_path / "t") == [4, 12, 22, 34, 44, 51]


def test_shot_picker_sees_only_its_shot() -> None:
    from pipemake.rules._video_shots import ShotPicker

    picker = ShotPicker(per_scene=1)
    for i in range(10, 50):  # 40 frames: thinned to every 4th
        picker.add(i, f"f{i}")
    assert picker.close(50) == [(30, "f30")]
    assert picker.start == 50 and picker.items == []
    picker.add(50, "f50")
    picker.add(51, "f51")
    assert picker.close(52) == [(51, "f51")]


@pytest.mark.parametrize(
    "params",
    [{"mode": "fps", "fps": 2.0}, {"mode": "every_n", "n": 7}, {"mode": "keyframes"}],
)
def test_appending_a_shot_keeps_the_frames_of_the_other_modes(tmp_path, params) -> None:
    """Frames are named by their decode-order index and picked from the video's start, so
    the frames of a video that gains a shot at its end are the old ones plus new ones."""
    write_video(tmp_path / "old.mp4", [30, 23])
    write_video(tmp_path / "new.mp4", [30, 23, 40])
    run_rule(tmp_path / "old.mp4", tmp_path / "o", format="png", **params)
    run_rule(tmp_path / "new.mp4", tmp_path / "n", format="png", **params)
    before, after = manifest(tmp_path / "o"), manifest(tmp_path / "n")
    assert after[: len(before)] == [{**r, "video": "new.mp4"} for r in before]
    assert len(after) > len(before) and all(r["frame_index"] >= 53 for r in after[len(before) :])
    for r in before:
        assert (tmp_path / "n" / r["file"]).read_bytes() == (
            tmp_path / "o" / r["file"]
        ).read_bytes()


def test_png_frames_are_the_decoded_pixels_with_no_colour_chunks(tmp_path) -> None:
    """PNG frames hold exactly the RGB the rule decoded, with square pixels and no gAMA,
    cHRM, sRGB or cICP chunk a viewer would apply, even from a video tagged BT.709."""
    import struct

    import av
    import numpy as np
    from PIL import Image

    from pipemake.rules._video import scale

    src = tmp_path / "tagged.mp4"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        ctx = stream.codec_context
        ctx.color_primaries = ctx.color_trc = ctx.colorspace = 1  # BT.709
        rng = np.random.default_rng(3)
        for i in range(10):
            img = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) // (i + 1)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    with av.open(str(src)) as video:
        decoded = list(video.decode(video=0))
    assert decoded[0].color_trc == 1  # the tag is there to be dropped
    want = [
        scale(f, "save", width=96, height=64, format="rgb24", interpolation="AREA").to_ndarray()
        for f in decoded
    ]
    run_rule(src, tmp_path / "out", mode="all", format="png")
    files = sorted((tmp_path / "out").glob("*.png"))
    assert len(files) == 10
    for file, pixels in zip(files, want, strict=True):
        with Image.open(file) as img:
            assert np.array_equal(np.asarray(img.convert("RGB")), pixels)
            assert img.info.get("aspect") == (1, 1)
        data, chunks, at = file.read_bytes(), set(), 8
        while at < len(data):
            (length,) = struct.unpack(">I", data[at : at + 4])
            chunks.add(data[at + 4 : at + 8].decode("ascii"))
            at += 12 + length
        assert chunks <= {"IHDR", "pHYs", "IDAT", "IEND"}, chunks


@pytest.mark.parametrize(("angle", "turns"), [(90, 1), (-90, 3), (180, 2), (0, 0)])
def test_frames_of_a_video_with_a_display_rotation_are_written_upright(
    tmp_path, angle, turns
) -> None:
    """A phone's portrait video is stored sideways with a display matrix; its frames are
    written upright (turned as the ``ffmpeg`` command turns them), and ``resize`` fits
    the upright frame."""
    import av
    import numpy as np
    from PIL import Image

    from pipemake.rules._video import scale

    src = tmp_path / "phone.mp4"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        if angle:
            stream.set_display_rotation(angle)
        for _ in range(3):
            img = np.zeros((32, 64, 3), np.uint8)
            img[:, :16] = 255  # a white band on the stored frame's left
            img[:8, :, 0] = 200  # a red band along its top
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    with av.open(str(src)) as video:
        first = next(video.decode(video=0))
        stored = scale(first, "save", width=64, height=32, format="rgb24", interpolation="AREA")
        upright = np.rot90(stored.to_ndarray(), turns)
    run_rule(src, tmp_path / "png", mode="all", format="png", max_frames=1)
    with Image.open(tmp_path / "png" / "frame_000000.png") as img:
        assert np.array_equal(np.asarray(img.convert("RGB")), upright)
    run_rule(src, tmp_path / "box", mode="all", format="jpg", max_frames=1, resize="20x40")
    with Image.open(tmp_path / "box" / "frame_000000.jpg") as img:
        assert img.size == ((20, 10) if turns % 2 == 0 else (20, 40))


def test_a_file_with_two_video_streams_gives_the_larger_picture_s_frames(tmp_path) -> None:
    """As the ``ffmpeg`` command picks: the larger picture, not simply the first stream (a
    small preview muxed before the film)."""
    import av
    import numpy as np
    from PIL import Image

    src = tmp_path / "two.mkv"
    with av.open(str(src), "w") as out:
        small = out.add_stream("libx264", rate=10)
        small.width, small.height, small.pix_fmt = 16, 16, "yuv420p"
        big = out.add_stream("libx264", rate=10)
        big.width, big.height, big.pix_fmt = 64, 32, "yuv420p"
        for _ in range(6):
            black = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
            white = np.full((32, 64, 3), 255, np.uint8)
            out.mux(small.encode(black))
            out.mux(big.encode(av.VideoFrame.from_ndarray(white, format="rgb24")))
        out.mux(small.encode(None))
        out.mux(big.encode(None))
    result = run_rule(src, tmp_path / "out", mode="all", format="png")
    assert result["frame_count"] == 6
    with Image.open(tmp_path / "out" / "frame_000000.png") as img:
        assert img.size == (64, 32) and img.convert("L").getextrema()[0] > 200


def test_the_decoder_uses_one_thread_per_usable_cpu(videos, tmp_path, monkeypatch) -> None:
    """Not FFmpeg's one-more-than-the-machine's: the CPUs this process may run on (a
    container's or ``taskset``'s share), at most 16."""
    from pipemake.rules import _video

    monkeypatch.setattr(_video.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    container, stream = _video.open_video(videos["root"] / "clip.mp4")
    try:
        assert stream.codec_context.thread_count == 3
    finally:
        container.close()
    monkeypatch.setattr(_video.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert _video.decode_threads() == 16

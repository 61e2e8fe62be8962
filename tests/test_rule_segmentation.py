"""Tests of the segmentation rule, driving the real rembg code path with a tiny ONNX model.

The model (tests/_onnx_fixtures.py) makes saturated red foreground and grey background, so a
red square on grey must come out opaque on the square and transparent elsewhere. rembg's
model home is pointed at a temporary folder (U2NET_HOME), so nothing is ever downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

# rembg's first import compiles numba code for about a minute; only alpha matting needs it.
os.environ.setdefault("NUMBA_DISABLE_JIT", "1")

import numpy as np
import pytest
from _onnx_fixtures import install_named_model, write_channel_sum_model
from PIL import Image

from pipemake.rule import Context, Item, RuleError
from pipemake.rules import _rembg
from pipemake.rules.segmentation import SegmentationRule

GREY = (128, 128, 128)
RED = (255, 0, 0)
# the red square of the standard frame: left, top, right, bottom
SQUARE = (20, 16, 50, 40)


def frame(path: Path, square: tuple[int, int, int, int] | None = SQUARE, size=(80, 64)) -> Path:
    """Write a grey frame with a red square (or none) and return its path."""
    arr = np.full((size[1], size[0], 3), GREY, np.uint8)
    if square:
        left, top, right, bottom = square
        arr[top:bottom, left:right] = RED
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty rembg model home, the only one rembg can see."""
    home = tmp_path / "rembg-home"
    home.mkdir()
    monkeypatch.setenv("U2NET_HOME", str(home))
    monkeypatch.delenv("REMBG_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    return home


@pytest.fixture
def u2net(home: Path) -> Path:
    """The tiny model installed as rembg's named model ``u2net``."""
    return install_named_model(home, "u2net")


def config(**extra: Any) -> dict[str, Any]:
    return {"input_dir": "frames", "output_dir": "out", **extra}


def make_ctx(rule: SegmentationRule, tmp_path: Path, src: Path, **params: Any) -> Context:
    """A per-item context as the engine builds it: defaults filled, staging output dir."""
    model_path = params.pop("model_path", None)
    ports, problems = rule.ports(config(**params))
    assert problems == []
    out = tmp_path / "staging"
    out.mkdir(exist_ok=True)
    inputs: dict[str, Any] = {"input_dir": src}
    if model_path is not None:
        inputs["model_path"] = Path(model_path)
    return Context(tmp_path, inputs, {"output_dir": out}, ports.params, stage="segment")


def run_items(rule, tmp_path, frames_dir: Path, **params: Any) -> tuple[Context, dict]:
    """setup once, then run_item per frame (as a worker does); return ctx and per-item values."""
    files = sorted(p for p in frames_dir.rglob("*") if p.is_file())
    ctx = make_ctx(rule, tmp_path, files[0], **params)
    state = rule.setup(ctx)
    per_item = {}
    for path in files:
        rel = path.relative_to(frames_dir).as_posix()
        ctx.inputs["input_dir"] = path
        ctx.state = state
        per_item[rel] = rule.run_item(ctx, Item(path=str(path), relpath=rel))
    return ctx, per_item


def rgba(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGBA"
        return np.asarray(im)


def test_mask_follows_the_model(tmp_path: Path, u2net: Path) -> None:
    rule = SegmentationRule()
    frame(tmp_path / "frames" / "a.png")
    ctx, per_item = run_items(rule, tmp_path, tmp_path / "frames", crop=False)
    out = rgba(ctx.outputs["output_dir"] / "a.png")
    assert out.shape == (64, 80, 4)
    left, top, right, bottom = SQUARE
    assert out[top + 2 : bottom - 2, left + 2 : right - 2, 3].min() > 240
    outside = out[..., 3].copy()
    outside[top - 3 : bottom + 3, left - 3 : right + 3] = 0
    assert outside.max() < 15
    # the square keeps its colour
    assert tuple(out[28, 35, :3]) == pytest.approx(RED, abs=6)
    values = per_item["a.png"]
    assert values["kept"] is True and values["provider"] == "CPUExecutionProvider"
    assert values["area"] == pytest.approx(30 * 24 / (80 * 64), rel=0.1)
    assert not (ctx.outputs["output_dir"] / "masks").exists()


def test_named_model_goes_through_new_session(tmp_path, u2net, monkeypatch) -> None:
    import rembg.session_factory
    from rembg.sessions.u2net import U2netSession

    made = []
    real = rembg.session_factory.new_session

    def spy(name, *args, **kwargs):
        session = real(name, *args, **kwargs)
        made.append((name, type(session)))
        return session

    monkeypatch.setattr("rembg.new_session", spy)
    frame(tmp_path / "frames" / "a.png")
    run_items(SegmentationRule(), tmp_path, tmp_path / "frames")
    assert made == [("u2net", U2netSession)]


def test_setup_once_and_session_reused(tmp_path, u2net, monkeypatch) -> None:
    import onnxruntime

    created = []
    real = onnxruntime.InferenceSession

    def counting(*args, **kwargs):
        created.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", counting)
    for name in ("a.png", "b.jpg", "sub/c.png"):
        frame(tmp_path / "frames" / name)
    ctx, per_item = run_items(SegmentationRule(), tmp_path, tmp_path / "frames")
    assert len(created) == 1 and Path(created[0]) == u2net
    out = ctx.outputs["output_dir"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "a.png",
        "b.png",
        "sub/c.png",
    ]
    assert all(v["kept"] for v in per_item.values())


def test_crop_to_subject_with_padding(tmp_path, u2net) -> None:
    rule = SegmentationRule()
    frame(tmp_path / "frames" / "a.png")
    ctx, per_item = run_items(rule, tmp_path, tmp_path / "frames", crop=True, padding=4)
    out = rgba(ctx.outputs["output_dir"] / "a.png")
    left, top, right, bottom = per_item["a.png"]["box"]
    # the square (30 x 24) plus 4 px each side, give or take a resampled edge pixel
    assert abs(left - (SQUARE[0] - 4)) <= 1 and abs(right - (SQUARE[2] + 4)) <= 1
    assert abs(top - (SQUARE[1] - 4)) <= 1 and abs(bottom - (SQUARE[3] + 4)) <= 1
    assert out.shape[:2] == (bottom - top, right - left)
    assert out[..., 3][0].max() < 15 and out[..., 3][out.shape[0] // 2].max() > 240


def test_crop_fractional_padding_clamps_to_frame(tmp_path, u2net) -> None:
    frame(tmp_path / "frames" / "edge.png", square=(0, 0, 20, 20))
    ctx, per_item = run_items(
        SegmentationRule(), tmp_path, tmp_path / "frames", crop=True, padding=0.5
    )
    left, top, right, bottom = per_item["edge.png"]["box"]
    assert (left, top) == (0, 0)  # clamped, never negative
    assert 29 <= right <= 31 and 29 <= bottom <= 31  # 20 px box + 50% = 10 px
    assert rgba(ctx.outputs["output_dir"] / "edge.png").shape[:2] == (bottom, right)


def test_min_area_drops_and_lists(tmp_path, u2net) -> None:
    rule = SegmentationRule()
    frame(tmp_path / "frames" / "big.png")
    frame(tmp_path / "frames" / "small.png", square=(5, 5, 11, 11))
    ctx, per_item = run_items(rule, tmp_path, tmp_path / "frames", min_area=0.05)
    out = ctx.outputs["output_dir"]
    assert (out / "big.png").exists() and not (out / "small.png").exists()
    assert "min_area" in per_item["small.png"]["reason"]
    values = rule.gather(ctx.params, per_item)
    assert values == {
        "character_dir": ".",
        "kept": 1,
        "dropped": ["small.png"],
        "provider": "CPUExecutionProvider",
    }
    json.dumps(values)
    json.dumps(per_item)


def test_uniform_frame_is_dropped_without_warnings(tmp_path, u2net) -> None:
    frame(tmp_path / "frames" / "blank.png", square=None)
    frame(tmp_path / "frames" / "ok.png")
    rule = SegmentationRule()
    with np.errstate(all="warn"), _no_runtime_warnings():
        ctx, per_item = run_items(rule, tmp_path, tmp_path / "frames")
    assert per_item["blank.png"]["kept"] is False
    assert "uniform" in per_item["blank.png"]["reason"]
    assert not (ctx.outputs["output_dir"] / "blank.png").exists()
    assert rule.gather(ctx.params, per_item)["dropped"] == ["blank.png"]


class _no_runtime_warnings:
    """Fail if a RuntimeWarning (NaN casts) escapes the block."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        self._log = self._cm.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        leaked = [w for w in self._log if issubclass(w.category, RuntimeWarning)]
        assert not leaked, [str(w.message) for w in leaked]


@pytest.mark.parametrize(
    ("background", "rgb"),
    [("#ffffff", (255, 255, 255)), ([0, 0, 255], (0, 0, 255)), ("#0f0", (0, 255, 0))],
)
def test_background_colour(tmp_path, u2net, background, rgb) -> None:
    frame(tmp_path / "frames" / "a.png")
    ctx, _ = run_items(
        SegmentationRule(), tmp_path, tmp_path / "frames", background=background, crop=False
    )
    out = rgba(ctx.outputs["output_dir"] / "a.png")
    assert out[..., 3].min() == 255
    assert tuple(out[2, 2, :3]) == rgb
    assert tuple(out[28, 35, :3]) == pytest.approx(RED, abs=6)


def test_save_mask(tmp_path, u2net) -> None:
    frame(tmp_path / "frames" / "sub" / "a.jpg")
    ctx, _ = run_items(SegmentationRule(), tmp_path, tmp_path / "frames", save_mask=True, crop=True)
    out = ctx.outputs["output_dir"]
    with Image.open(out / "masks" / "sub" / "a.png") as im:
        assert im.mode == "L"
        mask = np.asarray(im)
    cut = rgba(out / "sub" / "a.png")
    assert mask.shape == cut.shape[:2]
    assert np.array_equal(mask, cut[..., 3])


def test_custom_model_path_outside_home(tmp_path, home) -> None:
    # bright pixels foreground: a white square on black
    model = write_channel_sum_model(tmp_path / "elsewhere" / "mine.onnx", (3, 3, 3), -4)
    arr = np.zeros((40, 40, 3), np.uint8)
    arr[10:30, 10:30] = 255
    (tmp_path / "frames").mkdir()
    Image.fromarray(arr).save(tmp_path / "frames" / "w.png")
    ctx, per_item = run_items(
        SegmentationRule(), tmp_path, tmp_path / "frames", model_path=model, crop=False
    )
    out = rgba(ctx.outputs["output_dir"] / "w.png")
    assert out[12:28, 12:28, 3].min() > 240 and out[:5, :, 3].max() < 15
    assert per_item["w.png"]["kept"]


def test_missing_named_model_fails_at_once(tmp_path, home) -> None:
    rule = SegmentationRule()
    ports, _ = rule.ports(config(model="isnet-anime"))
    problems = rule.check(ports)
    expected = str(home / "models" / "isnet-anime" / "isnet-anime.onnx")
    [(key, message)] = problems
    assert key == "model"
    assert expected in message and str(home) in message
    assert "rembg d isnet-anime" in message and "model_path" in message
    frame(tmp_path / "frames" / "a.png")
    ctx = make_ctx(rule, tmp_path, tmp_path / "frames" / "a.png", model="isnet-anime")
    with pytest.raises(RuleError) as err:
        rule.setup(ctx)
    assert expected in str(err.value) and "rembg d isnet-anime" in str(err.value)


def test_check_accepts_installed_model_and_names_bad_params(tmp_path, u2net) -> None:
    rule = SegmentationRule()
    assert rule.check(rule.ports(config())[0]) == []
    bad = config(
        background="#12345",
        padding=1.5,
        min_area=2.0,
        mask_threshold=0,
        alpha_matting_foreground_threshold=300,
        threads=-1,
    )
    keys = sorted(k for k, _ in rule.check(rule.ports(bad)[0]))
    assert keys == [
        "alpha_matting_foreground_threshold",
        "background",
        "mask_threshold",
        "min_area",
        "padding",
        "threads",
    ]
    for model, words in [
        ("u2net_custom", "model_path"),
        ("sam", "not supported"),
        ("withoutbg", "remote"),
        ("no-such-model", "unknown"),
    ]:
        [(key, msg)] = rule.check(rule.ports(config(model=model))[0])
        assert key == "model" and words in msg, msg
    with_path = rule.ports(config(model="birefnet-general", model_path="m.onnx"))[0]
    assert "cannot run a model_path" in rule.check(with_path)[0][1]


def test_converted_model_counts_its_source_as_on_disk(home) -> None:
    rule = SegmentationRule()
    ports = rule.ports(config(model="birefnet-general-fp16"))[0]
    assert "rembg d birefnet-general-fp16" in rule.check(ports)[0][1]
    install_named_model(home, "birefnet-general")
    assert rule.check(ports) == []


def test_key_leaves_out_params_that_change_nothing() -> None:
    rule = SegmentationRule()
    plain = rule.ports(config())[0].key_params
    assert rule.ports(config(threads=4))[0].key_params == plain
    assert rule.ports(config(alpha_matting_erode_size=3))[0].key_params == plain
    uncropped = rule.ports(config(crop=False))[0].key_params
    assert rule.ports(config(crop=False, padding=8))[0].key_params == uncropped
    assert rule.ports(config(padding=8))[0].key_params != plain
    assert (
        rule.ports(config(crop=True, padding=8))[0].key_params
        != rule.ports(config(crop=True))[0].key_params
    )
    assert rule.ports(config(model="isnet-anime"))[0].key_params != plain
    ports = rule.ports(config(model_path="models/mine.onnx"))[0]
    assert ports.inputs["model_path"] == "models/mine.onnx"  # hashed by the engine


@pytest.mark.parametrize(
    "env",
    [
        {"U2NET_HOME": "/x/u2"},
        {"REMBG_HOME": "/x/rh"},
        {"XDG_DATA_HOME": "/x/xdg"},
        {"REMBG_HOME": "/x/rh", "XDG_DATA_HOME": "/x/xdg"},
        {},
    ],
)
def test_home_mirror_matches_rembg(monkeypatch, env) -> None:
    from rembg.sessions.dis_anime import DisSession

    for name in ("U2NET_HOME", "REMBG_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _rembg.rembg_home() == DisSession.rembg_home()
    assert _rembg.model_candidates("isnet-anime") == [
        os.path.join(DisSession.model_dir(), "isnet-anime.onnx"),
        os.path.join(DisSession.legacy_home(), "isnet-anime.onnx"),
    ]


def test_gpu_requested_without_cuda_runs_on_cpu(tmp_path, u2net, caplog) -> None:
    rule = SegmentationRule()
    frame(tmp_path / "frames" / "a.png")
    ctx = make_ctx(rule, tmp_path, tmp_path / "frames" / "a.png")
    ctx.resources = {"gpu": 1}
    with caplog.at_level(logging.INFO, logger="pipemake.stage.segment"):
        state = rule.setup(ctx)
    assert state["provider"] == "CPUExecutionProvider"
    assert "CPUExecutionProvider" in caplog.text


def test_run_without_foreach(tmp_path, u2net) -> None:
    rule = SegmentationRule()
    frame(tmp_path / "frames" / "a.png")
    frame(tmp_path / "frames" / "b.PNG")
    frame(tmp_path / "frames" / "blank.webp", square=None)
    (tmp_path / "frames" / "notes.txt").write_text("not an image")
    frame(tmp_path / "frames" / ".hidden.png")
    ctx = make_ctx(rule, tmp_path, tmp_path / "frames")
    values = rule.run(ctx)
    assert values["kept"] == 2 and values["dropped"] == ["blank.webp"]
    out = ctx.outputs["output_dir"]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]


def test_unreadable_image_is_a_rule_error(tmp_path, u2net) -> None:
    bad = tmp_path / "frames" / "bad.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not a png")
    with pytest.raises(RuleError, match="bad.png"):
        run_items(SegmentationRule(), tmp_path, tmp_path / "frames")


def test_alpha_matting(tmp_path, u2net) -> None:
    frame(tmp_path / "frames" / "a.png")
    ctx, per_item = run_items(
        SegmentationRule(),
        tmp_path,
        tmp_path / "frames",
        alpha_matting=True,
        alpha_matting_erode_size=3,
        crop=False,
    )
    out = rgba(ctx.outputs["output_dir"] / "a.png")
    assert out[20:36, 25:45, 3].min() > 240 and out[:8, :, 3].max() < 15
    assert per_item["a.png"]["kept"]


def test_import_stays_light() -> None:
    code = (
        "import sys, pipemake.rules.segmentation;"
        "heavy = [m for m in ('rembg', 'onnxruntime', 'numpy', 'PIL', 'numba') "
        "if m in sys.modules]; print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_cut_outs_are_cropped_to_the_subject_by_default(tmp_path, u2net) -> None:
    frame(tmp_path / "frames" / "a.png")
    ctx, per_item = run_items(SegmentationRule(), tmp_path, tmp_path / "frames")
    out = rgba(ctx.outputs["output_dir"] / "a.png")
    left, top, right, bottom = per_item["a.png"]["box"]
    # the square's box (30 x 24) and a margin of 5% of each side: 2 px and 1 px
    assert (right - left, bottom - top) == pytest.approx((34, 26), abs=2)
    assert out.shape[:2] == (bottom - top, right - left)
    # the subject fills the picture; the margin is transparent, with no border lines
    assert out[3:-3, 3:-3, 3].min() > 240
    for edge in (out[0], out[-1], out[:, 0], out[:, -1]):
        assert edge[:, 3].max() < 128


def test_crop_margin_is_padding(tmp_path, u2net) -> None:
    rule = SegmentationRule()
    assert rule.ports(config(crop_margin=6)) == rule.ports(config(padding=6))
    frame(tmp_path / "frames" / "a.png")
    _, per_item = run_items(rule, tmp_path, tmp_path / "frames", crop_margin=6)
    left, top, right, bottom = per_item["a.png"]["box"]
    assert abs(left - (SQUARE[0] - 6)) <= 1 and abs(bottom - (SQUARE[3] + 6)) <= 1
    _, problems = rule.ports(config(crop_margin=6, padding=2))
    assert [k for k, _ in problems] == ["padding"]


@pytest.mark.parametrize(
    ("written", "name"),
    [
        ("isnet", "isnet-general-use"),
        ("ISNet_General_Use", "isnet-general-use"),
        ("isnet_anime", "isnet-anime"),
        ("U2Net", "u2net"),
        ("u2netp", "u2netp"),
        ("silueta", "silueta"),
        ("u2net-human-seg", "u2net_human_seg"),
        ("birefnet", "birefnet-general"),
        ("not-a-model", "not-a-model"),
    ],
)
def test_model_names_are_read_as_rembgs(written: str, name: str) -> None:
    from rembg.sessions import sessions

    rule = SegmentationRule()
    ports = rule.ports(config(model=written))[0]
    assert ports.params["model"] == name and ports.key_params["model"] == name
    if name != "not-a-model":
        assert name in sessions  # a name rembg's own session table knows


def test_isnet_loads_isnets_file_and_says_which(tmp_path, home) -> None:
    model = install_named_model(home, "isnet-general-use", size=1024)
    rule = SegmentationRule()
    ports = rule.ports(config(model="isnet"))[0]
    assert rule.check(ports) == []
    assert rule.describe(ports) == [f"model: rembg isnet-general-use, file {model}"]
    frame(tmp_path / "frames" / "a.png")
    ctx, per_item = run_items(rule, tmp_path, tmp_path / "frames", model="isnet")
    assert per_item["a.png"]["kept"]
    assert rule.describe(rule.ports(config(model="isnet-anime"))[0])[0].startswith(
        "model: rembg isnet-anime, not on disk"
    )
    own = rule.ports(config(model_path="models/mine.onnx"))[0]
    assert "models/mine.onnx" in rule.describe(own)[0]


def test_a_model_of_the_wrong_shape_is_a_rule_error(tmp_path, home) -> None:
    # a u2net-sized model (320 x 320) under isnet's name (fed 1024 x 1024)
    install_named_model(home, "isnet-general-use", size=320)
    frame(tmp_path / "frames" / "a.png")
    with pytest.raises(RuleError, match="a.png: the segmentation model failed"):
        run_items(SegmentationRule(), tmp_path, tmp_path / "frames", model="isnet")


@pytest.mark.slow
def test_without_foreach_one_changed_frame_reruns_one_item(project, u2net) -> None:
    p = project(
        """
        name: seg
        stages:
          - id: segment
            type: segmentation
            config: {input_dir: frames, output_dir: build/cut}
        """
    )
    for name in ("a.png", "b.png", "c.png"):
        frame(p.path("frames") / name)
    out = p.cli("build", "--no-progress").output
    assert "(3 items, 3 run)" in out, out
    frame(p.path("frames/b.png"), square=(10, 10, 40, 40))
    out = p.cli("build", "--no-progress").output
    assert "1 of 3 items changed" in out and "(3 items, 1 run)" in out, out
    assert sorted(x.name for x in p.path("build/cut").iterdir()) == ["a.png", "b.png", "c.png"]

"""Acceptance findings on the built-in rules (issues 5, 6 and 12), second round.

- A computed value holding mappings has one form whether it was computed in this build or
  restored from the store: a shell stage that writes it does not rerun on the second build,
  and "why it ran" shows the param as the command sees it (no doubled braces).
- One unreadable cut-out fails only its own item of a clustering feature batch.
- A 16-bit (and an I / F / LA / P / CMYK) frame is segmented like its 8-bit twin.
- ``input_video`` given as a glob of videos runs per video without ``foreach:``.
- ``foreach:`` over an input a rule cannot iterate over is refused at ``validate``.
- ``model_path`` naming a directory is refused at ``validate``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TRACEBACK, Proj, refused_before_running

#: a python stage whose computed values are read from data/values.json, as written there
STEPS = """
import json, pathlib
def up(ctx):
    return json.loads(pathlib.Path("data/values.json").read_text())
"""

#: mappings whose keys are not in sorted order (as frame_extraction's ``cuts`` are)
CUTS = {"cuts": [{"video": "v.mp4", "frame_index": 10, "timestamp": 0.5}]}

VALUES_PIPELINE = """
name: values
stages:
  - id: up
    type: python
    config:
      function: "steps:up"
      inputs: {v: data/values.json}
  - id: viacmd
    type: shell
    VERSION
    config:
      cmd: "echo {up.cuts} > {outputs.o}"
      outputs: {o: build/cmd.txt}
  - id: viaenv
    type: shell
    VERSION
    config:
      cmd: "echo \\"$CUTS\\" > {outputs.o}"
      env: {CUTS: "{up.cuts}"}
      outputs: {o: build/env.txt}
"""


def _values_project(project, name: str, version: str = "") -> Proj:
    text = VALUES_PIPELINE.replace("VERSION", f"version: {version}" if version else "")
    return project(text, {"steps.py": STEPS, "data/values.json": json.dumps(CUTS)}, name=name)


def _texts(p: Proj) -> tuple[str, str]:
    return p.read("build/cmd.txt"), p.read("build/env.txt")


def test_a_mapping_value_is_the_same_text_fresh_or_restored(project, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    p = _values_project(project, "first")
    p.cli("--cache-dir", cache, "build", "--no-progress")
    first = _texts(p)
    assert json.loads(first[1]) == CUTS["cuts"]
    again = p.cli("--cache-dir", cache, "build", "--no-progress").output
    assert "0 ran" in again, again
    assert _texts(p) == first
    p.cli("--cache-dir", cache, "dry-run", "--check")

    # another checkout sharing the store: `up` is restored from it (its values read back
    # from the store), and the shell stages (of another version, so they run) write the
    # same text as the first build did from the freshly computed value
    clone = _values_project(project, "clone", version="2")
    out = clone.cli("--cache-dir", cache, "build", "--no-progress").output
    assert "up: running" not in out and "viacmd: running" in out, out
    assert _texts(clone) == first

    # why it ran: the param as the command sees it, never the loader's doubled braces
    p.write("data/values.json", json.dumps({"cuts": [{"video": "w.mp4", "frame_index": 3}]}))
    out = p.cli("--cache-dir", cache, "build", "--no-progress").output
    assert "viacmd: running (param cmd" in out, out
    assert "{{" not in out and "}}" not in out, out
    assert '{"frame_index": 3' in out, out


def _cutout(path: Path, colour: tuple[int, int, int]) -> None:
    import numpy as np
    from PIL import Image

    a = np.zeros((40, 30, 4), np.uint8)
    a[5:35, 5:25] = (*colour, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a, "RGBA").save(path)


CLUSTER = """
name: c
stages:
  - id: cluster
    type: clustering
    config: {input_dir: cuts, output_dir: build/cl, algorithm: kmeans, n_clusters: 2}
"""


def test_one_unreadable_cutout_fails_only_its_own_item(project) -> None:
    """The feature batch holds all four items: the text file named .png fails as itself,
    the three good cut-outs keep their features and are not mapped again."""
    p = project(CLUSTER, {"cuts/zz.png": "not an image"})
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        _cutout(p.path(f"cuts/c{i}.png"), colour)
    out = p.cli("build", "--no-progress", code=1).output
    assert "1 of 4 item(s) failed" in out, out
    assert "First: item zz.png: cannot read image" in out, out
    assert "item c0.png" not in out and TRACEBACK not in out, out
    p.path("cuts/zz.png").unlink()
    out = p.cli("build", "--no-progress").output
    assert "[0 of 3 items]" in out, out  # the three features come from the store
    clusters = json.loads(p.read("build/cl/clusters.json"))
    assert sorted(it["file"] for it in clusters["items"]) == ["c0.png", "c1.png", "c2.png"]


def _png16_rgb(path: Path, rgb16) -> None:
    """Write a 16-bit RGB PNG by hand (Pillow cannot write one)."""
    import struct
    import zlib

    h, w, _ = rgb16.shape
    rows = b"".join(b"\0" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    head = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", head)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _frames_of_every_mode(frames: Path):
    """A dark frame with a bright square, written once per image mode; its 8-bit grey twin
    ``l8.png`` is the reference."""
    import numpy as np
    from PIL import Image

    frames.mkdir()
    a8 = np.full((60, 80), 60, np.uint8)
    a8[10:30, 20:40] = 230
    Image.fromarray(a8, "L").save(frames / "l8.png")
    Image.fromarray(a8.astype(np.uint16) * 257).save(frames / "g16.png")
    _png16_rgb(frames / "rgb16.png", np.repeat(a8[..., None].astype(np.uint16) * 257, 3, 2))
    Image.fromarray(a8, "L").convert("LA").save(frames / "la.png")
    pal = Image.fromarray(a8, "L").convert("RGB").convert("P")
    pal.save(frames / "p.png", transparency=pal.getpixel((0, 0)))
    Image.fromarray(a8, "L").convert("CMYK").save(frames / "cmyk.jpg", quality=98)
    # stored on its side, with the EXIF orientation that turns it upright
    side = Image.fromarray(np.ascontiguousarray(np.rot90(a8)), "L").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    side.save(frames / "exif.jpg", quality=98, exif=exif)
    return a8


def test_every_image_mode_is_segmented_like_its_8bit_twin(tmp_path: Path) -> None:
    """A 16-bit PNG used to be clipped to white and dropped as 'uniform'; each mode now
    gives the subject box of the 8-bit frame."""
    from _onnx_fixtures import write_channel_sum_model
    from PIL import Image

    from pipemake.rules import _rembg

    _frames_of_every_mode(tmp_path / "frames")
    with Image.open(tmp_path / "frames" / "g16.png") as im:
        assert im.mode.startswith("I;16")
    model = write_channel_sum_model(tmp_path / "m.onnx", weights=(1, 1, 1), bias=-1.5)
    session, _ = _rembg.open_session("u2net", model, ["CPUExecutionProvider"])
    opts = _rembg.Options.from_params({"padding": 0})
    cuts = {
        p.name: _rembg.cut_out(session, p, opts) for p in sorted((tmp_path / "frames").iterdir())
    }
    want = cuts.pop("l8.png")
    assert want.kept and want.box is not None
    for name, cut in cuts.items():
        assert cut.kept, (name, cut.note)
        assert cut.box is not None
        assert max(abs(a - b) for a, b in zip(cut.box, want.box, strict=True)) <= 1, (name, cut.box)
        assert abs(cut.area - want.area) < 0.01, (name, cut.area, want.area)


def test_wide_greyscale_modes_scale_to_8_bits() -> None:
    """32-bit integer and float greyscale scale by the range they use, never clip."""
    import numpy as np
    from PIL import Image

    from pipemake.rules._image_modes import as_rgb, as_rgba

    wide = np.array([[0, 30000, 65535]], np.int32)
    assert np.asarray(as_rgb(Image.fromarray(wide, "I")))[0, :, 0].tolist() == [0, 117, 255]
    unit = np.array([[0.0, 0.5, 1.0]], np.float32)
    assert np.asarray(as_rgb(Image.fromarray(unit, "F")))[0, :, 0].tolist() == [0, 128, 255]
    odd = np.array([[-2.0, 0.0, 2.0]], np.float32)
    assert np.asarray(as_rgba(Image.fromarray(odd, "F")))[0, :, 0].tolist() == [0, 128, 255]
    small = np.array([[0, 100, 255]], np.int32)
    assert np.asarray(as_rgb(Image.fromarray(small, "I")))[0, :, 1].tolist() == [0, 100, 255]


GLOB_VIDEOS = """
name: g
stages:
  - id: whole
    type: frame_extraction
    config: {input_video: "vids/*.mp4", output_dir: build/fe, mode: every_n, n: 3}
"""


def test_a_glob_of_videos_runs_per_video_without_foreach(project) -> None:
    """Issue 5: ``input_video`` may be a glob of videos. Without ``foreach:`` the stage
    runs per video over it (as ``foreach: input_video`` would), each video's frames in
    ``<stem>/``; other files beside them are not taken, and a new video runs alone."""
    from _video_fixtures import write_video

    p = project(GLOB_VIDEOS, {"vids/notes.txt": "x"})
    for i, name in enumerate(["a.mp4", "b.mp4", "c.mkv"]):
        write_video(p.path(f"vids/{name}"), [6], width=64, height=48, seed=i)
    out = p.cli("build", "--no-progress").output
    assert "2 of 2 items" in out, out
    frames = sorted(
        f.relative_to(p.path("build/fe")).as_posix() for f in p.path("build/fe").rglob("*.jpg")
    )
    assert frames == [
        "a/frame_000000.jpg",
        "a/frame_000003.jpg",
        "b/frame_000000.jpg",
        "b/frame_000003.jpg",
    ]
    write_video(p.path("vids/d.mp4"), [6], width=64, height=48, seed=5)
    out = p.cli("build", "--no-progress").output
    assert "1 of 3 items" in out and "vids/d.mp4" in out, out
    assert p.exists("build/fe/d/frame_000003.jpg") and p.exists("build/fe/a/frame_000000.jpg")


def test_a_glob_matching_no_video_is_refused_before_anything_runs(project) -> None:
    p = project(GLOB_VIDEOS, {"vids/notes.txt": "x"})
    refused_before_running(p, 5, "whole", ["input 'input_video': no file matches vids/*.mp4"])


def test_a_glob_where_no_foreach_iterates_is_refused(project) -> None:
    """A glob in an input no foreach iterates over would be read as a path that does not
    exist, mid-build: it is refused at validate, saying which foreach to add."""
    p = project(
        """
        name: s
        stages:
          - id: cat
            type: shell
            config:
              cmd: "cat {inputs.src} > {outputs.o}"
              inputs: {src: "data/*.txt"}
              outputs: {o: build/all.txt}
        """,
        {"data/a.txt": "a\n"},
    )
    refused_before_running(p, 7, "cat", ["input 'src' is a glob (data/*.txt)", "foreach: src"])


@pytest.mark.parametrize(
    ("rule", "over", "config", "words"),
    [
        (
            "segmentation",
            "model_path",
            "{input_dir: frames, output_dir: build/x, model_path: m.onnx}",
            ["cannot run per item over 'model_path'", "only over input_dir", "foreach: input_dir"],
        ),
        (
            "clustering",
            "model_path",
            "{input_dir: frames, output_dir: build/x, model_path: m.onnx}",
            ["cannot run per item over 'model_path'", "only over input_dir"],
        ),
        (
            "training_data_prep",
            "input_dir",
            "{input_dir: frames, output_dir: build/x}",
            ["takes its inputs whole", "remove the foreach line"],
        ),
    ],
)
def test_foreach_over_an_input_the_rule_cannot_iterate_is_refused(
    project, rule: str, over: str, config: str, words: list[str]
) -> None:
    p = project(
        f"stages:\n  - id: s\n    type: {rule}\n    foreach: {over}\n    config: {config}\n",
        {"m.onnx": "model bytes"},
    )
    _cutout(p.path("frames/cluster_000/a.png"), (200, 30, 30))
    refused_before_running(p, 4, "s", words)


def test_model_path_naming_a_folder_is_refused_before_anything_runs(project) -> None:
    p = project(
        """
        stages:
          - id: segment
            type: segmentation
            config:
              input_dir: frames
              output_dir: build/seg
              model_path: models
        """,
        {"models/m.onnx": "model bytes"},
    )
    _cutout(p.path("frames/a.png"), (200, 30, 30))
    refused_before_running(
        p, 7, "segment", ["input 'model_path': models is a folder", "e.g. models/m.onnx"]
    )


def test_empty_training_set_and_sklearn_warnings_are_one_line_each(project) -> None:
    """Four identical cut-outs into three KMeans clusters: scikit-learn's warning is one
    log line naming it, never its source line; a cluster folder of fully transparent
    cut-outs gives an empty training set with a warning that counts what was dropped."""
    import numpy as np
    from PIL import Image

    p = project(
        """
        stages:
          - id: cluster
            type: clustering
            config: {input_dir: cuts, output_dir: build/cl, algorithm: kmeans, n_clusters: 3}
          - id: prep
            type: training_data_prep
            config: {input_dir: empty, output_dir: build/prep}
        """
    )
    for i in range(4):
        _cutout(p.path(f"cuts/c{i}.png"), (200, 30, 30))
    p.path("empty/cluster_000").mkdir(parents=True)
    for i in range(2):
        blank = np.zeros((20, 20, 4), np.uint8)
        Image.fromarray(blank, "RGBA").save(p.path(f"empty/cluster_000/t{i}.png"))
    out = p.cli("build", "--no-progress").output
    assert "cluster| clustering: ConvergenceWarning: Number of distinct clusters (1)" in out
    assert "site-packages" not in out and "fit_method(" not in out, out
    assert (
        "prep| the training set is empty: all 2 image(s) were dropped "
        "(2 empty (fully transparent))" in out
    ), out

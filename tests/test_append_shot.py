"""Appending one shot to a video extracts, segments and clusters only the new shot's frames.

The original system's chain, built twice: ``extract`` (``frame_extraction``, scene mode) →
``segment`` (``segmentation``, one item per frame, a tiny ONNX model from
``_onnx_fixtures``) → ``cluster`` (``clustering``, one cached feature vector per cut-out).
Between the builds the video is written again with one more shot at its end (the frames
before it decode to the same pixels). What ran is read from the run log: the
``stage_started`` event of a foreach stage counts its items run and cached, and its reason
names the first item that ran.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Proj

from pipemake import api

pytest.importorskip("av")
pytest.importorskip("rembg")
pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("onnx")

sys.path.insert(0, str(Path(__file__).parent))
from _onnx_fixtures import write_channel_sum_model  # noqa: E402
from _video_fixtures import write_video  # noqa: E402

# slow (videos, a model and a three-stage chain, built twice): `pytest -m "not slow"` skips them; CI runs everything
pytestmark = pytest.mark.slow

CHAIN = """
name: shots
stages:
  - id: extract
    type: frame_extraction
    config:
      input_video: data/clip.mp4
      output_dir: build/frames
      mode: scene
      per_scene: 2
      format: png
  - id: segment
    type: segmentation
    config:
      input_dir: "{extract.output_dir}"
      output_dir: build/cutouts
      model: u2net
      model_path: models/tiny.onnx
  - id: cluster
    type: clustering
    config:
      input_dir: "{segment.output_dir}"
      output_dir: build/clusters
"""

#: the old video's shots; the last one fills the rule's candidate list exactly, which is
#: where a pick used to move once frames after a cut were seen
SHOTS = [20, 24, 16]
NEW_SHOT = 22


def _frames(p: Proj) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(p.path("build/frames").glob("frame_*.png"))}


def _started(p: Proj) -> dict[str, dict[str, Any]]:
    """The last build's ``stage_started`` events, by stage (stages that ran only)."""
    with api.project_of(p.root, None) as project:
        events = api.show_log(project)["events"]
    return {e["stage"]: e for e in events if e["event"] == "stage_started"}


@pytest.fixture
def built(project: Callable[..., Proj]) -> Proj:
    """The chain, built once on a video of :data:`SHOTS`."""
    p = project(CHAIN)
    write_video(p.path("data/clip.mp4"), SHOTS)
    write_channel_sum_model(p.path("models/tiny.onnx"))
    p.cli("build", "--no-progress", env={"NUMBA_DISABLE_JIT": "1"})
    return p


@pytest.mark.slow
def test_an_appended_shot_runs_only_its_frames_down_the_chain(built: Proj) -> None:
    p = built
    frames_before = _frames(p)
    cutouts_before = {f.name for f in p.path("build/cutouts").glob("*.png")}
    assert len(frames_before) == 2 * len(SHOTS)

    write_video(p.path("data/clip.mp4"), [*SHOTS, NEW_SHOT])
    p.cli("build", "--no-progress", env={"NUMBA_DISABLE_JIT": "1"})

    frames_after = _frames(p)
    new = sorted(set(frames_after) - set(frames_before))
    end = sum(SHOTS)
    # the new shot's two frames were added; every old frame is there, byte for byte
    assert len(new) == 2 and all(int(name[6:12]) >= end for name in new), new
    assert {k: frames_after[k] for k in frames_before} == frames_before

    started = _started(p)
    assert started["segment"]["items"] == {
        "total": len(frames_after),
        "run": len(new),
        "cached": len(frames_before),
        "removed": 0,
    }, started["segment"]
    assert f"build/frames/{new[0]}: new" in started["segment"]["reasons"][0]
    cutouts_after = {f.name for f in p.path("build/cutouts").glob("*.png")}
    new_cutouts = cutouts_after - cutouts_before
    assert cutouts_before <= cutouts_after and new_cutouts <= set(new)
    items = started["cluster"]["items"]
    assert items["run"] == len(new_cutouts) and items["cached"] == len(cutouts_before), items

    p.cli("build", "--no-progress", env={"NUMBA_DISABLE_JIT": "1"})
    assert _started(p) == {}  # nothing left to run


def test_the_same_shots_written_again_segment_nothing(built: Proj) -> None:
    """A new file holding the same frames (here remuxed with the index first) reruns the
    extraction, which writes the same bytes: nothing after it runs."""
    p = built
    frames_before = _frames(p)
    video = p.path("data/clip.mp4")
    old_bytes = video.read_bytes()
    write_video(video, SHOTS, options={"movflags": "faststart"})
    assert video.read_bytes() != old_bytes

    p.cli("build", "--no-progress", env={"NUMBA_DISABLE_JIT": "1"})
    assert set(_started(p)) == {"extract"}
    assert _frames(p) == frames_before

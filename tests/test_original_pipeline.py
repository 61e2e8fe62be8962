"""The original pipeline system's example file runs under pipemake as its users wrote it.

The original example (``/work/shared/original-system.txt``, "Simple Character Dataset
Pipeline") has four stages with ``depends_on`` lists and no ``foreach``, the original keys
(``character_dirs``, ``{segment.character_dir}``, ``{cluster.cluster_dirs}``),
``model: isnet`` and absolute ``/data/...`` paths. Here ``/data`` becomes a folder outside
the project, the video is generated (one character per shot, three characters) and a tiny
ONNX model is laid out under isnet's file name in rembg's model home (``U2NET_HOME``), so
nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TRACEBACK, Proj

from pipemake import api

ORIGINAL = """\
name: character_dataset_pipeline
version: 1.0.0

stages:
  - id: extract
    type: frame_extraction
    depends_on: []
    config:
      input_video: /data/luca.mp4
      output_dir: /data/frames
      mode: scene

  - id: segment
    type: segmentation
    depends_on: [extract]
    config:
      input_dir: "{extract.output_dir}"
      output_dir: /data/segmented
      model: isnet

  - id: cluster
    type: clustering
    depends_on: [segment]
    config:
      input_dir: "{segment.character_dir}"
      output_dir: /data/clustered

  - id: prepare
    type: training_data_prep
    depends_on: [cluster]
    config:
      character_dirs: "{cluster.cluster_dirs}"
      output_dir: /data/training
"""

#: the three characters of the generated video: colour and shape, one per shot in turn
CHARACTERS = (((230, 40, 40), "disc"), ((40, 220, 60), "square"), ((240, 230, 40), "triangle"))
BACKGROUNDS = ((0, 0, 0), (70, 70, 70), (20, 20, 90), (90, 20, 20))
WIDTH, HEIGHT = 128, 96


def _draw(img, kind: str, color, cx: int, cy: int, r: int) -> None:
    import numpy as np

    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    if kind == "disc":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    elif kind == "square":
        mask = (abs(xx - cx) <= r) & (abs(yy - cy) <= r)
    else:
        mask = (yy >= cy - r) & (yy <= cy + r) & (abs(xx - cx) <= (yy - (cy - r)) / 2)
    img[mask] = color


def write_character_video(path: Path, shots: int, per_shot: int = 16) -> None:
    """A video of ``shots`` shots, each one bright character moving over a dark background
    of its own (shot ``i`` shows character ``i % 3``), ``per_shot`` frames each."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast", "x264-params": "scenecut=0"}
        pts = 0
        for shot in range(shots):
            color, kind = CHARACTERS[shot % len(CHARACTERS)]
            cx, cy = int(rng.integers(30, WIDTH - 30)), int(rng.integers(30, HEIGHT - 30))
            radius = int(rng.integers(14, 20))
            for f in range(per_shot):
                img = np.empty((HEIGHT, WIDTH, 3), np.uint8)
                img[:] = BACKGROUNDS[shot % len(BACKGROUNDS)]
                _draw(img, kind, color, cx + f // 2, cy, radius)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = pts
                pts += 1
                out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def install_isnet(home: Path) -> Path:
    """A tiny model (bright pixels are the subject) as rembg's ``isnet-general-use``, whose
    session feeds 1024 × 1024 images."""
    from _onnx_fixtures import install_named_model

    return install_named_model(home, "isnet-general-use", weights=(1, 1, 1), size=1024)


def _original(data: Path) -> str:
    return ORIGINAL.replace("/data/", f"{data.as_posix()}/")


@pytest.fixture
def rembg_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty rembg model home, the only one rembg (and pipemake's checks) can see."""
    home = tmp_path / "rembg-home"
    home.mkdir()
    monkeypatch.setenv("U2NET_HOME", str(home))
    monkeypatch.delenv("REMBG_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    return home


def _pipemake(root: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "PIPEMAKE_CACHE_DIR"}
    full.update(env, NUMBA_DISABLE_JIT="1")
    return subprocess.run(
        [sys.executable, "-m", "pipemake", "-C", str(root), "-f", "pipeline.yaml", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=600,
    )


@pytest.mark.slow
@pytest.mark.slow
def test_the_original_example_builds_as_written(tmp_path: Path) -> None:
    pytest.importorskip("av")
    pytest.importorskip("rembg")
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    data, root, home = tmp_path / "data", tmp_path / "project", tmp_path / "u2net"
    root.mkdir()
    write_character_video(data / "luca.mp4", shots=18)
    model = install_isnet(home)
    (root / "pipeline.yaml").write_text(_original(data))
    env = {"U2NET_HOME": str(home)}

    built = _pipemake(root, "build", "--no-progress", env=env)
    out = built.stdout + built.stderr
    assert built.returncode == 0, out
    assert TRACEBACK not in out
    assert "4 ran" in out
    # per item without foreach: each frame is an item of segment, each cut-out of cluster
    assert "(18 items, 18 run)" in out

    # cut-outs are the character, cropped to it, not the padded frame
    cutouts = sorted((data / "segmented").glob("*.png"))
    assert len(cutouts) == 18
    from PIL import Image

    for path in cutouts:
        with Image.open(path) as im:
            assert im.mode == "RGBA"
            assert im.width < WIDTH // 2 and im.height < HEIGHT // 2, (path.name, im.size)
            alpha = im.getchannel("A")
            corners = [(0, 0), (im.width - 1, 0), (0, im.height - 1)]
            assert max(alpha.getpixel(c) for c in corners) < 128  # margin around the subject

    # one cluster per character, matching the shots the video shows it in
    clusters = json.loads((data / "clustered" / "clusters.json").read_text())
    frames = {
        Path(rec["file"]).stem: rec["scene"]
        for rec in map(json.loads, (data / "frames" / "frames.jsonl").read_text().splitlines())
    }
    groups = [
        {frames[Path(f).stem] % len(CHARACTERS) for f in c["files"]}
        for name, c in clusters["clusters"].items()
        if name != "noise"
    ]
    assert len(groups) == len(CHARACTERS) and all(len(g) == 1 for g in groups), groups

    stats = json.loads((data / "training" / "stats.json").read_text())
    assert stats["images"] == 18 and len(stats["characters"]) == 3

    again = _pipemake(root, "build", "--no-progress", env=env)
    assert again.returncode == 0, again.stderr
    assert "0 ran, 0 restored, 4 up to date" in again.stdout + again.stderr

    dry = _pipemake(root, "dry-run", env=env)
    assert dry.returncode == 0
    assert str(model) in dry.stderr  # which model file the segment stage loads


@pytest.fixture
def original(project, tmp_path: Path, rembg_home: Path) -> tuple[Proj, Path]:
    """The original file as written (``/data`` moved to a folder outside the project), with
    a stand-in video file: enough for everything that checks without running."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "luca.mp4").write_bytes(b"\0" * 64)
    p = project(_original(data), name="orig")
    p.write("pipeline.yaml", _original(data))
    return p, data


@pytest.mark.slow
def test_validate_accepts_the_original_file_and_names_the_model_file(original, rembg_home):
    p, data = original
    model = install_isnet(rembg_home)
    out = p.cli("-f", "pipeline.yaml", "validate").output
    assert "4 stage(s)" in out
    assert f"rembg isnet-general-use, file {model}" in out
    with api.project_of(p.root, p.root / "pipeline.yaml") as project:
        stages = project.pipeline.stages
        # no foreach in the file: the per-item rules run per item, the others whole
        assert stages["segment"].foreach is not None
        assert stages["segment"].foreach.input == "input_dir"
        assert stages["cluster"].foreach is not None
        assert stages["extract"].foreach is None and stages["prepare"].foreach is None
        # original keys and names, read as pipemake's
        assert stages["segment"].ports.params["model"] == "isnet-general-use"
        assert set(stages["prepare"].ports.inputs) == {"input_dirs"}
        # absolute paths outside the project stay absolute
        assert stages["extract"].ports.inputs["input_video"] == f"{data.as_posix()}/luca.mp4"
        assert stages["prepare"].ports.outputs["output_dir"] == f"{data.as_posix()}/training"


def test_a_missing_isnet_file_is_a_validate_error_naming_where_it_was_looked_for(original):
    p, _ = original
    out = p.cli("-f", "pipeline.yaml", "validate", code=2).output
    assert TRACEBACK not in out
    assert "pipeline.yaml:19" in out and "'segment'" in out
    assert os.path.join("isnet-general-use.onnx") in out and "U2NET_HOME" in out


def test_model_names_mean_the_same_key(original, rembg_home):
    """``isnet``, ``isnet-general-use`` and ``ISNet_General_Use`` are one model: one key."""
    p, data = original
    install_isnet(rembg_home)
    keys = []
    for spelling in ("isnet", "isnet-general-use", "ISNet_General_Use"):
        p.write("pipeline.yaml", _original(data).replace("model: isnet", f"model: {spelling}"))
        with api.project_of(p.root, p.root / "pipeline.yaml") as project:
            keys.append(project.pipeline.stages["segment"].ports.key_params)
    assert keys[0] == keys[1] == keys[2]


ABSOLUTE = """\
name: abs
stages:
  - id: copy
    type: shell
    config:
      cmd: "echo x >> runs/copy.count; mkdir -p {{outputs.o}} && cp {{inputs.i}} {{outputs.o}}/"
      inputs: {{i: {src}}}
      outputs: {{o: {out}}}
  - id: count
    type: shell
    config:
      cmd: "echo x >> runs/count.count; ls {{inputs.i}} | wc -l > {{outputs.n}}"
      inputs: {{i: "{{copy.o}}"}}
      outputs: {{n: build/n.txt}}
"""


def test_absolute_inputs_and_outputs_outside_the_project(project, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    src, out = outside / "in" / "a.txt", outside / "out"
    src.parent.mkdir(parents=True)
    src.write_text("hello\n")
    p = project(ABSOLUTE.format(src=src, out=out))
    p.cli("build")
    assert (out / "a.txt").read_text() == "hello\n"
    assert p.read("build/n.txt").strip() == "1"
    assert p.run_counts() == {"copy": 1, "count": 1}
    p.cli("build")
    assert p.run_counts() == {"copy": 1, "count": 1}
    # the output outside the project is restored from the store, not rebuilt
    (out / "a.txt").unlink()
    assert "copy: restore" in p.cli("dry-run").stdout
    p.cli("build")
    assert (out / "a.txt").read_text() == "hello\n"
    assert p.run_counts() == {"copy": 1, "count": 1}
    # a changed absolute input reruns
    src.write_text("changed\n")
    p.cli("build")
    assert (out / "a.txt").read_text() == "changed\n"
    assert p.run_counts()["copy"] == 2


def test_an_absolute_path_inside_the_project_is_the_relative_one(project) -> None:
    p = project("")
    p.pipeline(ABSOLUTE.format(src=f"/{p.root}/data/a.txt", out=f"{p.root}/build/out"))
    p.write("data/a.txt", "a\n")
    with api.project_of(p.root, None) as proj:
        stages = proj.pipeline.stages
        # "//root/..." is "/root/..." and a path under the root is kept relative to it, so it
        # moves with the checkout and overlaps are seen however a path was written
        assert stages["copy"].ports.inputs["i"] == "data/a.txt"
        assert stages["copy"].ports.outputs["o"] == "build/out"
    p.pipeline(ABSOLUTE.format(src=f"{p.root}/data/a.txt", out=f"{p.root}/build/n.txt"))
    out = p.cli("validate", code=2).output
    assert "build/n.txt" in out and "same path" in out


@pytest.mark.parametrize("where", ["/", "ROOT", "PARENT", "HOME", "/data", "//srv/"])
def test_an_output_holding_the_project_is_refused(project, where: str) -> None:
    """An output's folder is replaced whole: never the project, home or a top-level one."""
    p = project("")
    targets = {"ROOT": str(p.root), "PARENT": str(p.root.parent), "HOME": os.path.expanduser("~")}
    target = targets.get(where, where)
    p.pipeline(ABSOLUTE.format(src="data/a.txt", out=target))
    p.write("data/a.txt", "a\n")
    out = p.cli("build", code=2).output
    assert TRACEBACK not in out and "pipemake.yaml:8" in out
    assert p.run_counts() == {} and p.exists("data/a.txt")


def _other_filesystem(than: Path) -> Path | None:
    """A writable folder on another filesystem than ``than`` (tmpfs at /dev/shm), or None."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != than.stat().st_dev:
            return shm
    except OSError:
        pass
    return None


def test_absolute_outputs_on_another_filesystem(project, tmp_path: Path) -> None:
    """``/data`` is often a disk of its own: outputs there are placed by copy, then rename."""
    other = _other_filesystem(tmp_path)
    if other is None:
        pytest.skip("no writable folder on another filesystem here")
    out = other / f"pipemake-test-{os.getpid()}-{tmp_path.name}"
    try:
        p = project(
            f"""
            name: apart
            stages:
              - id: each
                type: shell
                foreach: src
                config:
                  cmd: "echo x >> runs/each.count; tr a-z A-Z < {{inputs.src}} > {{outputs.o}}/{{item.name}}"
                  inputs: {{src: data}}
                  outputs: {{o: {out}}}
            """,
            {"data/a.txt": "a\n", "data/b.txt": "b\n"},
        )
        p.cli("build")
        assert sorted(x.name for x in out.iterdir()) == ["a.txt", "b.txt"]
        p.write("data/b.txt", "bee\n")  # one item reruns: its file is moved in across devices
        p.cli("build")
        assert (out / "b.txt").read_text() == "BEE\n" and p.runs("each") == 3
        (out / "a.txt").unlink()  # restored from the store
        p.cli("build")
        assert sorted(x.name for x in out.iterdir()) == ["a.txt", "b.txt"]
        assert (out / "a.txt").read_text() == "A\n" and p.runs("each") == 3
        p.cli("build", "-B")  # rebuilt whole: the new tree replaces the old one
        assert sorted(x.name for x in out.iterdir()) == ["a.txt", "b.txt"]
        assert not [x for x in other.iterdir() if x.name.startswith(".pipemake-")]
    finally:
        shutil.rmtree(out, ignore_errors=True)

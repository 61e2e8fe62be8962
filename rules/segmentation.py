"""The ``segmentation`` rule: cut the subject out of every frame with a rembg model.

It runs per frame by default (``default_foreach``: a stage without ``foreach:`` is one item
per image of ``input_dir``), so one new or changed frame reruns one item; ``foreach: false``
runs the whole folder as one task instead. Each frame becomes ``<relpath stem>.png``, an
RGBA cut-out cropped to its subject's box plus a margin (``crop``, ``padding`` alias
``crop_margin``) and optionally put on a colour; with ``save_mask: true`` its mask is written
to ``masks/<relpath stem>.png`` too. Frames whose subject is missing or smaller than
``min_area`` are dropped: nothing is written for them and the stage's ``dropped`` value
lists them.

The model is any rembg model by name (``isnet``, ``u2net``, ``isnet_anime``… are read as
rembg's session names, so the key and the cache are the same however it is spelled), loaded
from rembg's model home (never downloaded: a missing file is a load-time error saying how to
get it; ``validate`` and ``dry-run`` name the file), or ``model_path``, an ONNX file of one's
own whose content hash enters the key. One onnxruntime session per worker process is made in
``setup`` and reused for every item; it runs on CUDA when the stage holds a GPU and
onnxruntime offers CUDA, else on the CPU, and the ``provider`` value says which.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pipemake.errors import suggest
from pipemake.rule import Context, Input, Item, Output, Param, Ports, Rule, RuleError

from . import _rembg

__all__ = ["SegmentationRule"]

#: params that change nothing in the outputs, so they stay out of the key
_NOT_IN_KEY = ("threads",)
_MATTING_PARAMS = (
    "alpha_matting_foreground_threshold",
    "alpha_matting_background_threshold",
    "alpha_matting_erode_size",
)
MASK_DIR = "masks"
#: the margin kept around the subject's box when cropping: a share of the box's sides
DEFAULT_MARGIN = 0.05


class SegmentationRule(Rule):
    """Background removal with rembg, per frame: RGBA cut-outs, optional masks, and the
    frames with no subject listed as dropped."""

    name = "segmentation"
    version = "1"
    foreach_pattern = "*.png|*.jpg|*.jpeg|*.webp|*.bmp"
    default_foreach: ClassVar[str | None] = "input_dir"
    foreach_inputs: ClassVar[Sequence[str]] = ("input_dir",)
    aliases: ClassVar[Mapping[str, str]] = {"crop_margin": "padding"}
    requires: ClassVar[Mapping[str, str]] = {
        "rembg": "pipemake[segment]",
        "onnxruntime": "pipemake[segment]",
        "numpy": "pipemake[segment]",
        "PIL": "pipemake[segment]",
    }
    batch_size = 1
    inputs: ClassVar[Mapping[str, Input]] = {
        "input_dir": Input(kind="dir", help="frames to segment, one item per image"),
        "model_path": Input(
            kind="file", required=False, help="your own ONNX model instead of a named one"
        ),
    }
    outputs: ClassVar[Mapping[str, Output]] = {
        "output_dir": Output(kind="dir", help="RGBA cut-outs, mirroring input_dir's layout"),
    }
    params: ClassVar[Mapping[str, Param]] = {
        "model": Param(
            "str", "u2net", help="rembg model name (isnet, u2net…); with model_path, its family"
        ),
        "alpha_matting": Param("bool", False, help="refine edges with closed-form matting"),
        "alpha_matting_foreground_threshold": Param("int", 240, help="mask value sure to be fg"),
        "alpha_matting_background_threshold": Param("int", 10, help="mask value sure to be bg"),
        "alpha_matting_erode_size": Param("int", 10, help="erosion of the sure regions, px"),
        "post_process_mask": Param("bool", False, help="smooth the mask (rembg's post-process)"),
        "crop": Param("bool", True, help="crop each cut-out to the subject's bounding box"),
        "padding": Param(
            ("int", "float"),
            DEFAULT_MARGIN,
            help="crop margin (alias crop_margin): int pixels, or float share of the box",
        ),
        "min_area": Param("float", 0.0, help="drop frames whose subject is a smaller share"),
        "mask_threshold": Param("int", 128, help="mask value (1-255) counted as subject"),
        "background": Param(
            ("str", "list"), "transparent", help='"transparent", "#rrggbb" or [r, g, b]'
        ),
        "save_mask": Param("bool", False, help="also write masks/<stem>.png"),
        "threads": Param("int", 0, help="onnxruntime threads per worker (0: its default)"),
    }
    values: ClassVar[Sequence[str]] = ("character_dir", "kept", "dropped", "provider")
    path_values: ClassVar[Mapping[str, str]] = {"character_dir": "output_dir"}

    # load time ---------------------------------------------------------------------------
    def ports(self, config: Mapping[str, Any]) -> tuple[Ports, list[tuple[str, str]]]:
        """Split the config as declared, the model under rembg's name (``isnet`` →
        ``isnet-general-use``); keep params that cannot change the outputs (thread count,
        matting thresholds without matting, padding without crop) out of the key."""
        ports, problems = super().ports(config)
        model = ports.params.get("model")
        if isinstance(model, str):
            ports.params["model"] = _rembg.canonical_model(model)
        key = {k: v for k, v in ports.params.items() if k not in _NOT_IN_KEY}
        if not key.get("alpha_matting"):
            for name in _MATTING_PARAMS:
                key.pop(name, None)
        if not key.get("crop"):
            key.pop("padding", None)
        ports.key_params = key
        return ports, problems

    def check(self, ports: Ports) -> list[tuple[str, str]]:
        """Catch bad params and a model that is not on disk before anything runs."""
        params = ports.params
        problems = _check_options(params)
        model = params.get("model")
        if isinstance(model, str) and "{" not in model:
            problems.extend(_check_model(model, bool(ports.inputs.get("model_path"))))
        return problems

    def describe(self, ports: Ports) -> list[str]:
        """Which model file the stage will load, and the rembg name a short one stands for."""
        model = ports.params.get("model")
        model_path = ports.inputs.get("model_path")
        if model_path:
            return [f"model file {model_path} (your own, run as {model}'s family)"]
        if not isinstance(model, str):
            return []
        found = _rembg.model_file(model)
        if found is None:
            return [f"model: rembg {model}, not on disk (looked in {_rembg.rembg_home()})"]
        return [f"model: rembg {model}, file {found}"]

    # running -----------------------------------------------------------------------------
    def setup(self, ctx: Context) -> dict[str, Any]:
        """Create the worker's one rembg session (CUDA when granted a GPU, else CPU)."""
        if not ctx.params.get("alpha_matting"):
            # rembg imports pymatting, whose numba JIT costs ~60 s on a fresh machine and is
            # only used for alpha matting: skip the compile unless the user asked otherwise.
            os.environ.setdefault("NUMBA_DISABLE_JIT", "1")
        providers = _rembg.choose_providers(ctx.resources, ctx.gpu_ids)
        model_path = ctx.inputs.get("model_path")
        session, provider = _rembg.open_session(
            ctx.params.get("model", "u2net"),
            Path(model_path) if model_path else None,  # type: ignore[arg-type]
            providers,
            int(ctx.params.get("threads", 0)),
        )
        if ctx.resources.get("gpu") and provider != "CUDAExecutionProvider":
            ctx.log.warning("stage holds a GPU but onnxruntime runs on %s", provider)
        ctx.log.info("segmentation model %s on %s", _model_label(ctx), provider)
        return {
            "session": session,
            "provider": provider,
            "options": _rembg.Options.from_params(ctx.params),
        }

    def run_item(self, ctx: Context, item: Item) -> dict[str, Any]:
        """Cut out one frame into the item's staging directory; return its values."""
        if ctx.state is None:
            ctx.state = self.setup(ctx)
        src = Path(ctx.inputs["input_dir"])  # type: ignore[arg-type]
        return _segment_one(ctx, ctx.state, src, item.relpath)

    def run(self, ctx: Context) -> dict[str, Any]:
        """Without ``foreach``: segment every image under ``input_dir`` with one session."""
        src_dir = Path(ctx.inputs["input_dir"])  # type: ignore[arg-type]
        if not src_dir.is_dir():
            raise RuleError(f"input_dir {src_dir} is not a directory")
        files = _images_under(src_dir, self.foreach_pattern or "*")
        state = self.setup(ctx)
        per_item: dict[str, Any] = {}
        for done, path in enumerate(files, 1):
            rel = path.relative_to(src_dir).as_posix()
            per_item[rel] = _segment_one(ctx, state, path, rel)
            ctx.progress(done, len(files))
        return self.gather(ctx.params, per_item)

    def gather(self, params: Mapping[str, Any], per_item: Mapping[str, Any]) -> dict[str, Any]:
        """``character_dir`` (the output itself), how many frames were ``kept``, the relpaths
        ``dropped``, and the onnxruntime ``provider``(s) used."""
        kept = [rel for rel, vals in per_item.items() if (vals or {}).get("kept")]
        dropped = sorted(rel for rel, vals in per_item.items() if not (vals or {}).get("kept"))
        providers = sorted({(v or {}).get("provider") or "" for v in per_item.values()} - {""})
        return {
            "character_dir": ".",
            "kept": len(kept),
            "dropped": dropped,
            "provider": ",".join(providers),
        }


def _segment_one(ctx: Context, state: Mapping[str, Any], src: Path, relpath: str) -> dict[str, Any]:
    """Segment ``src`` and write its cut-out (and mask) at ``relpath``'s place in the output."""
    result = _rembg.cut_out(state["session"], src, state["options"])
    values: dict[str, Any] = {
        "kept": result.kept,
        "area": round(result.area, 6),
        "provider": state["provider"],
    }
    if not result.kept:
        ctx.log.info("dropped %s: %s", relpath, result.note)
        values["reason"] = result.note
        return values
    out_dir = Path(ctx.outputs["output_dir"])
    dest = Path(relpath).with_suffix(".png")
    (out_dir / dest).parent.mkdir(parents=True, exist_ok=True)
    result.image.save(out_dir / dest)
    if ctx.params.get("save_mask"):
        mask_path = out_dir / MASK_DIR / dest
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        result.mask.save(mask_path)
    if result.note:
        ctx.log.info("%s: %s", relpath, result.note)
    values["box"] = list(result.box) if result.box else None
    return values


def _model_label(ctx: Context) -> str:
    model_path = ctx.inputs.get("model_path")
    return f"{model_path} ({ctx.params.get('model')})" if model_path else str(ctx.params["model"])


def _images_under(root: Path, pattern: str) -> list[Path]:
    """Files under ``root`` matching ``pattern`` (globs joined by ``|``), hidden ones skipped."""
    globs = pattern.lower().split("|")
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if any(fnmatch.fnmatchcase(path.name.lower(), g) for g in globs):
            found.append(path)
    return found


def _check_model(model: str, has_model_path: bool) -> list[tuple[str, str]]:
    """Problems with the model choice; a named model must be in rembg's model home."""
    if has_model_path:
        if _rembg.custom_session_for(model) is None:
            names = ", ".join(_rembg.CUSTOM_SESSIONS)
            return [
                (
                    "model",
                    f"model {model!r} cannot run a model_path: set model to {names} "
                    "(the preprocessing your ONNX file expects), or leave it out (u2net)",
                )
            ]
        return []
    if model in _rembg.CUSTOM_SESSIONS:
        return [("model", f"model {model!r} runs your own ONNX file: set model_path to it")]
    if model in _rembg.UNSUPPORTED:
        return [
            (
                "model",
                f"rembg model {model!r} is not supported: {_rembg.UNSUPPORTED[model]}; "
                f"use one of {', '.join(_rembg.KNOWN_MODELS)}",
            )
        ]
    if _rembg.model_on_disk(model):
        return []
    if model not in _rembg.KNOWN_MODELS:
        names = [*_rembg.KNOWN_MODELS, *_rembg.MODEL_ALIASES]
        close = suggest(model, names)
        return [
            (
                "model",
                f"unknown rembg model {model!r}"
                + (f" ({close})" if close else "")
                + f": use one of {', '.join(_rembg.KNOWN_MODELS)} (or a short name: "
                f"{', '.join(_rembg.MODEL_ALIASES)}), or model_path for your own ONNX file",
            )
        ]
    home = _rembg.rembg_home()
    return [("model", _rembg.missing_model_message(model, _rembg.model_candidates(model), home))]


def _check_options(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Range checks of the numeric and colour params, each saying what would be valid."""
    problems: list[tuple[str, str]] = []
    try:
        _rembg.parse_background(params.get("background", "transparent"))
    except ValueError as exc:
        problems.append(("background", str(exc)))
    for name in (*_MATTING_PARAMS[:2], "mask_threshold"):
        value = params.get(name)
        low = 1 if name == "mask_threshold" else 0
        if isinstance(value, int) and not low <= value <= 255:
            problems.append((name, f"{name} is {value}: use a mask value from {low} to 255"))
    for name in ("alpha_matting_erode_size", "threads"):
        value = params.get(name)
        if isinstance(value, int) and value < 0:
            problems.append((name, f"{name} is {value}: use 0 or more"))
    padding = params.get("padding", 0)
    if isinstance(padding, float) and not 0.0 <= padding < 1.0:
        problems.append(
            (
                "padding",
                f"padding {padding} as a float is a share of the subject's "
                "box, from 0 to 1; write an int (e.g. 16) for pixels",
            )
        )
    elif isinstance(padding, int) and padding < 0:
        problems.append(("padding", f"padding is {padding}: use 0 or more pixels"))
    min_area = params.get("min_area", 0.0)
    if isinstance(min_area, (int, float)) and not 0.0 <= min_area <= 1.0:
        problems.append(
            (
                "min_area",
                f"min_area {min_area} is a share of the frame: use 0 to 1 (e.g. 0.02 for 2%)",
            )
        )
    return problems

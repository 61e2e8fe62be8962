"""The segmentation rule's dealings with rembg: where models live, sessions, and one cut-out.

Kept apart from the rule so the rule module reads as declarations and flow. Nothing heavy is
imported at module level: rembg (whose first import compiles numba code for a minute),
onnxruntime, numpy and Pillow are imported inside the functions that need them, so loading a
pipeline never pays for them.

The model-home logic here mirrors rembg 2.x's ``BaseSession.rembg_home`` / ``legacy_home``
in plain Python, so :func:`model_candidates` can say at load time, without importing rembg,
whether a named model is on disk; :func:`open_session` asks rembg's own session classes again
before creating a session, so a missing file is a clear error and never a download.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipemake.rule import RuleError

#: rembg models that run locally from one ``<name>.onnx`` file and give one mask
KNOWN_MODELS: tuple[str, ...] = (
    "u2net",
    "u2netp",
    "u2net_human_seg",
    "silueta",
    "isnet-general-use",
    "isnet-anime",
    "bria-rmbg",
    "birefnet-general",
    "birefnet-general-lite",
    "birefnet-general-fp16",
    "birefnet-portrait",
    "birefnet-dis",
    "birefnet-hrsod",
    "birefnet-cod",
    "birefnet-massive",
)

#: rembg sessions that run a user's ONNX file (``model_path``), by preprocessing family
CUSTOM_SESSIONS: tuple[str, ...] = ("u2net_custom", "dis_custom", "ben_custom")

#: rembg sessions this rule refuses, and why
UNSUPPORTED: Mapping[str, str] = {
    "sam": "it needs point or box prompts per image, which this rule does not take",
    "u2net_cloth_seg": "it returns three clothing masks per image, not one subject mask",
    "withoutbg": "it sends every image to a paid remote service",
    "atlascloud": "it sends every image to a paid remote service",
}

#: where a named model with a converted file may fall back to its source model's file
_CONVERTED_FROM: Mapping[str, str] = {"birefnet-general-fp16": "birefnet-general"}

#: short names (the original pipeline system's among them) → rembg's session names. Names
#: are also matched ignoring case and ``_`` versus ``-`` (``isnet_general_use``).
MODEL_ALIASES: Mapping[str, str] = {
    "isnet": "isnet-general-use",
    "isnet-general": "isnet-general-use",
    "dis": "isnet-general-use",
    "anime": "isnet-anime",
    "isnet-anime-seg": "isnet-anime",
    "u2net-human": "u2net_human_seg",
    "human": "u2net_human_seg",
    "bria": "bria-rmbg",
    "rmbg": "bria-rmbg",
    "birefnet": "birefnet-general",
}


def _fold(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def canonical_model(name: str) -> str:
    """rembg's session name for a model name as a user may write it: ``isnet`` →
    ``isnet-general-use``, ``U2Net`` → ``u2net``, ``isnet_anime`` → ``isnet-anime``; a name
    that matches nothing comes back as given (the checks then say what is known)."""
    every = (*KNOWN_MODELS, *CUSTOM_SESSIONS, *UNSUPPORTED)
    folded = {_fold(n): n for n in every}
    folded.update({_fold(a): n for a, n in MODEL_ALIASES.items()})
    return folded.get(_fold(name), name)


def model_file(name: str) -> str | None:
    """The file rembg will load for named model ``name`` (the first of
    :func:`model_candidates` on disk, or its source model's for a converted one), or None."""
    names = [name, _CONVERTED_FROM[name]] if name in _CONVERTED_FROM else [name]
    for n in names:
        for path in model_candidates(n):
            if os.path.exists(path):
                return path
    return None


def legacy_home() -> str:
    """rembg's old flat model folder: ``$U2NET_HOME``, else ``$XDG_DATA_HOME/.u2net`` or
    ``~/.u2net`` (still read by rembg 2.x)."""
    default = os.path.join(os.getenv("XDG_DATA_HOME", "~"), ".u2net")
    return os.path.expanduser(os.getenv("U2NET_HOME", default))


def rembg_home() -> str:
    """rembg's model home: ``$U2NET_HOME`` when set, else ``$REMBG_HOME``, else
    ``$XDG_DATA_HOME/rembg`` or ``~/.rembg``."""
    if os.getenv("U2NET_HOME"):
        return legacy_home()
    xdg = os.getenv("XDG_DATA_HOME")
    default = os.path.join(xdg, "rembg") if xdg else os.path.join("~", ".rembg")
    return os.path.expanduser(os.getenv("REMBG_HOME", default))


def home_source() -> str:
    """What chose :func:`rembg_home`: ``set by U2NET_HOME``, ``set by REMBG_HOME`` or
    ``default`` (with how to change it), for messages that name the home."""
    for var in ("U2NET_HOME", "REMBG_HOME"):
        if os.getenv(var):
            return f"set by {var}"
    return "default; set U2NET_HOME or REMBG_HOME to use another"


def model_candidates(name: str) -> list[str]:
    """Every path where rembg would find named model ``name``, in its order of preference:
    ``<home>/models/<name>/<name>.onnx``, then ``<legacy home>/<name>.onnx``."""
    fname = f"{name}.onnx"
    return [os.path.join(rembg_home(), "models", name, fname), os.path.join(legacy_home(), fname)]


def model_on_disk(name: str) -> bool:
    """Whether rembg would load ``name`` from disk without downloading anything."""
    return model_file(name) is not None


def missing_model_message(name: str, candidates: Sequence[str], home: str) -> str:
    """What to tell a user whose named model is not on disk: the file, the home, the fix."""
    where = candidates[0] + "".join(f" or {p}" for p in candidates[1:])
    return (
        f"rembg model {name!r} is not on disk: looked for {where}. rembg's model home is "
        f"{home} ({home_source()}); pipemake never downloads models. On a "
        f"machine with internet run `rembg d {name}` and copy {home}/models/{name}/ to the same "
        f"place here (or point U2NET_HOME at a copy), or download the .onnx file and set "
        f"`model_path:` to it."
    )


def custom_session_for(model: str) -> str | None:
    """The rembg custom session that runs a ``model_path`` for ``model``: the model names the
    preprocessing (u2net-like → u2net_custom, isnet → dis_custom); None when none fits."""
    if model in CUSTOM_SESSIONS:
        return model
    if model in ("u2net", "u2netp", "u2net_human_seg", "silueta"):
        return "u2net_custom"
    if model.startswith("isnet"):
        return "dis_custom"
    return None


_NAMED_COLOURS: Mapping[str, tuple[int, int, int, int]] = {
    "white": (255, 255, 255, 255),
    "black": (0, 0, 0, 255),
}


def parse_background(value: Any) -> tuple[int, int, int, int] | None:
    """``"transparent"`` → None; ``"#rgb"``, ``"#rrggbb"``, ``"#rrggbbaa"``, ``white``,
    ``black``, ``[r, g, b]`` or ``[r, g, b, a]`` → an RGBA tuple. Raises ValueError saying
    what is accepted."""
    accepted = 'use "transparent", "#rrggbb", "#rrggbbaa", white, black or [r, g, b(, a)] in 0-255'
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("transparent", "none", ""):
            return None
        if text in _NAMED_COLOURS:
            return _NAMED_COLOURS[text]
        digits = text[1:] if text.startswith("#") else ""
        if len(digits) == 3:
            digits = "".join(c * 2 for c in digits)
        if len(digits) in (6, 8):
            try:
                parts = [int(digits[i : i + 2], 16) for i in range(0, len(digits), 2)]
            except ValueError:
                parts = []
            if parts:
                return (*parts, 255)[:4]  # type: ignore[return-value]
        raise ValueError(f"background {value!r} is not a colour: {accepted}")
    if isinstance(value, list) and len(value) in (3, 4):
        if all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value):
            return (*value, 255)[:4]  # type: ignore[return-value]
    raise ValueError(f"background {value!r} is not a colour: {accepted}")


def choose_providers(resources: Mapping[str, float], gpu_ids: Sequence[str]) -> list[Any]:
    """onnxruntime providers: CUDA (then CPU) when the stage holds a GPU and onnxruntime
    offers CUDA, else CPU alone."""
    import onnxruntime as ort

    if not resources.get("gpu") or "CUDAExecutionProvider" not in ort.get_available_providers():
        return ["CPUExecutionProvider"]
    cuda: Any = "CUDAExecutionProvider"
    # With CUDA_VISIBLE_DEVICES set the granted card is device 0; otherwise name it.
    if gpu_ids and str(gpu_ids[0]).isdigit() and "CUDA_VISIBLE_DEVICES" not in os.environ:
        cuda = ("CUDAExecutionProvider", {"device_id": int(gpu_ids[0])})
    return [cuda, "CPUExecutionProvider"]


def open_session(
    model: str, model_path: Path | None, providers: list[Any], threads: int = 0
) -> tuple[Any, str]:
    """Create the one rembg session a worker reuses, and the provider it really runs on.

    A named model must already be on disk (RuleError otherwise, never a download); a
    ``model_path`` is run by rembg's matching custom session class wherever the file lies.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
    try:
        if model_path is not None:
            session = _custom_session(model, Path(model_path), opts, providers)
        else:
            session = _named_session(model, opts, providers)
    except RuleError:
        raise
    except Exception as exc:  # onnxruntime's load errors have no common base class
        what = f"model_path {model_path}" if model_path is not None else f"rembg model {model!r}"
        raise RuleError(f"cannot load {what}: {exc}. Is it a valid ONNX file?") from exc
    return session, session.inner_session.get_providers()[0]


def _named_session(model: str, opts: Any, providers: list[Any]) -> Any:
    from rembg import new_session
    from rembg.sessions import sessions

    cls = sessions.get(model)
    if cls is None:
        raise RuleError(f"unknown rembg model {model!r}; known: {', '.join(sorted(sessions))}")
    if model in UNSUPPORTED:
        raise RuleError(f"rembg model {model!r} is not supported: {UNSUPPORTED[model]}")
    if model in CUSTOM_SESSIONS:
        raise RuleError(f"model {model!r} runs your own ONNX file: set `model_path:` to it")
    found = cls.resolve_existing(f"{model}.onnx")
    if found is None and model in _CONVERTED_FROM:
        source = sessions[_CONVERTED_FROM[model]]
        found = source.resolve_existing(f"{source.name()}.onnx")
    if found is None:
        candidates = [os.path.join(cls.model_dir(), f"{model}.onnx")]
        candidates.append(os.path.join(cls.legacy_home(), f"{model}.onnx"))
        raise RuleError(missing_model_message(model, candidates, cls.rembg_home()))
    return new_session(model, sess_opts=opts, providers=providers)


def _custom_session(model: str, path: Path, opts: Any, providers: list[Any]) -> Any:
    from rembg.sessions import sessions

    kind = custom_session_for(model)
    if kind is None:
        raise RuleError(f"model {model!r} cannot run a model_path; use one of {CUSTOM_SESSIONS}")
    if not path.is_file():
        raise RuleError(f"model_path {path} does not exist or is not a file")
    base = sessions[kind]
    # rembg's custom sessions refuse files outside its model home (a guard for its web
    # server); a pipeline names its own file, so this subclass only skips that lookup.
    pinned = type(
        f"Pinned{base.__name__}",
        (base,),
        {"download_models": classmethod(lambda cls, *a, **k: str(k["model_path"]))},
    )
    return pinned(kind, opts, model_path=str(path.resolve()), providers=providers)


@dataclass(frozen=True)
class Options:
    """The per-image settings of a segmentation stage, checked and parsed once."""

    alpha_matting: bool = False
    foreground_threshold: int = 240
    background_threshold: int = 10
    erode_size: int = 10
    post_process_mask: bool = False
    crop: bool = True
    padding: int | float = 0.05
    min_area: float = 0.0
    mask_threshold: int = 128
    background: tuple[int, int, int, int] | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Options:
        """Build options from a stage's params (already type-checked by the rule)."""
        return cls(
            alpha_matting=bool(params.get("alpha_matting", False)),
            foreground_threshold=int(params.get("alpha_matting_foreground_threshold", 240)),
            background_threshold=int(params.get("alpha_matting_background_threshold", 10)),
            erode_size=int(params.get("alpha_matting_erode_size", 10)),
            post_process_mask=bool(params.get("post_process_mask", False)),
            crop=bool(params.get("crop", True)),
            padding=params.get("padding", 0.05),
            min_area=float(params.get("min_area", 0.0)),
            mask_threshold=int(params.get("mask_threshold", 128)),
            background=parse_background(params.get("background", "transparent")),
        )


@dataclass
class Cutout:
    """One image's result: the RGBA cut-out and its mask (None when dropped), the subject's
    share of the frame, the box kept (left, top, right, bottom), and why it was dropped or
    how it was made (``note``)."""

    image: Any
    mask: Any
    area: float
    box: tuple[int, int, int, int] | None
    note: str = ""

    @property
    def kept(self) -> bool:
        """Whether the image had a subject worth writing."""
        return self.image is not None


def cut_out(session: Any, src: Path, opts: Options) -> Cutout:
    """Segment one image with ``session`` through ``rembg.remove`` and make its cut-out."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError
    from rembg import remove

    from pipemake.rules._image_modes import as_rgb

    try:
        with Image.open(src) as opened:
            img = as_rgb(ImageOps.exif_transpose(opened))
    except (UnidentifiedImageError, OSError) as exc:
        raise RuleError(
            f"{src}: not a readable image ({exc}); remove it or narrow the stage's foreach pattern"
        ) from exc
    # A uniform image makes the model's output constant and rembg's min-max scaling 0/0.
    with np.errstate(invalid="raise"):
        try:
            mask = remove(
                img, session=session, only_mask=True, post_process_mask=opts.post_process_mask
            )
        except FloatingPointError:
            return Cutout(None, None, 0.0, None, "no subject: the model's output is uniform")
        except MemoryError:
            raise
        except Exception as exc:  # onnxruntime's errors share no base class
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuleError(
                f"{src}: the segmentation model failed: {first}. Is the model file one of the "
                "family the stage's model names (its input size and layout)?"
            ) from exc
    mask = mask.convert("L")
    fg = np.asarray(mask) >= opts.mask_threshold
    area = float(fg.mean())
    if not fg.any():
        return Cutout(None, None, 0.0, None, f"no subject: no pixel reaches {opts.mask_threshold}")
    if area < opts.min_area:
        note = f"subject covers {area:.2%} of the frame, under min_area {opts.min_area:.2%}"
        return Cutout(None, None, area, None, note)
    image, note = _apply_mask(img, mask, opts)
    box = (0, 0, img.width, img.height)
    if opts.crop:
        box = _padded_box(fg, opts.padding)
        image, mask = image.crop(box), mask.crop(box)
    if opts.background is not None:
        from rembg.bg import apply_background_color

        image = apply_background_color(image, opts.background)
    return Cutout(image.convert("RGBA"), mask, area, box, note)


def _apply_mask(img: Any, mask: Any, opts: Options) -> tuple[Any, str]:
    from rembg.bg import alpha_matting_cutout, decontaminate_cutout, naive_cutout

    if not opts.alpha_matting:
        return naive_cutout(img, mask), ""
    try:
        cut = alpha_matting_cutout(
            img, mask, opts.foreground_threshold, opts.background_threshold, opts.erode_size
        )
        return cut, "alpha matting"
    except ValueError as exc:  # the trimap lacks sure foreground or background: as rembg does
        return decontaminate_cutout(img, mask), f"alpha matting skipped ({exc})"


def _padded_box(fg: Any, padding: int | float) -> tuple[int, int, int, int]:
    import numpy as np

    ys, xs = np.nonzero(fg)
    left, top, right, bottom = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    if isinstance(padding, float):
        pad_x, pad_y = round(padding * (right - left)), round(padding * (bottom - top))
    else:
        pad_x = pad_y = int(padding)
    height, width = fg.shape
    return (
        max(0, left - pad_x),
        max(0, top - pad_y),
        min(width, right + pad_x),
        min(height, bottom + pad_y),
    )

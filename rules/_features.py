"""Feature extraction for the clustering rule: per-cut-out vectors that say who is pictured.

Two extractors:

- ``color_shape`` (offline, no model): an alpha-weighted soft joint histogram in CIE Lab,
  the mean Lab colour of horizontal bands (which colour sits on top of which), a
  mirror-symmetric downsampled silhouette and the cut-out's overall brightness; computed
  batched with torch, on the GPU when the stage holds one. Colours are measured after the
  cut-out's mean luminance is scaled to mid-grey, so the same character under brighter or
  darker light keeps its colour blocks; the brightness block keeps a light and a dark
  character of the same hues apart. Each block is normalised on its own so the reduce step
  can weight blocks without recomputing anything (see :func:`feature_blocks`).
- ``model``: a user-supplied image encoder: TorchScript (``.pt``/``.ts``/``.jit``…), a
  ``torch.export`` program (``.pt2``) or ONNX (``.onnx``), fed N×3×S×S float32 images
  normalised with ``model_mean``/``model_std``.

Heavy libraries are imported inside the functions (never at import time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipemake.rule import RuleError

__all__ = [
    "DEFAULT_WEIGHTS",
    "decode",
    "encode",
    "extract_features",
    "feature_blocks",
    "load_extractor",
]

CANVAS = 64  # side of the square the cut-out is fitted into for colour/shape features
BANDS = 4  # horizontal bands of the layout block
_AB_RANGE = 80.0  # Lab a/b bin centres span [-_AB_RANGE, _AB_RANGE]
GREY = 0.2  # linear luminance every cut-out's mean is scaled to before colours are measured

#: block weights used when ``weights`` does not name a block
DEFAULT_WEIGHTS = {"color": 1.0, "layout": 0.2, "shape": 0.5, "brightness": 0.2, "model": 1.0}


def feature_blocks(params: Mapping[str, Any], model: bool) -> list[tuple[str, int]]:
    """The named blocks (name, length) a feature vector is made of, in order."""
    if model:
        return [("model", -1)]
    l_bins, ab_bins = params["hist_bins"]
    return [
        ("color", int(l_bins) * int(ab_bins) ** 2),
        ("layout", BANDS * 3),
        ("shape", int(params["shape_size"]) ** 2),
        ("brightness", 1),
    ]


def encode(vector: Any) -> bytes:
    """A float32 vector as .npy bytes (what ``map_item`` returns, cached per item)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(vector, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def decode(value: Any) -> Any:
    """The float32 vector from ``encode``'s bytes (or from a JSON list)."""
    import io

    import numpy as np

    if isinstance(value, (bytes, bytearray, memoryview)):
        return np.load(io.BytesIO(bytes(value)), allow_pickle=False).astype(np.float32)
    return np.asarray(value, dtype=np.float32)


def _open_rgba(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    from pipemake.rules._image_modes import as_rgba

    try:
        with Image.open(path) as img:
            img.load()
            return as_rgba(img)
    except (OSError, UnidentifiedImageError) as exc:
        raise RuleError(f"cannot read image {path}: {exc}; remove or replace the file") from exc


def _fit(img: Any, side: int, background: tuple[int, int, int, int]) -> Any:
    """Crop ``img`` to its opaque part and fit it, centred and aspect kept, in side × side."""
    from PIL import Image

    box = img.getchannel("A").point(lambda a: 255 if a > 12 else 0).getbbox()
    if box is not None:
        img = img.crop(box)
    scale = side / max(img.width, img.height)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img = img.resize(size, Image.Resampling.BILINEAR)
    canvas = Image.new("RGBA", (side, side), background)
    canvas.alpha_composite(img, ((side - size[0]) // 2, (side - size[1]) // 2))
    return canvas


def load_extractor(params: Mapping[str, Any], model_path: Path | None, gpu: bool) -> dict:
    """What every batch needs: the torch device and the loaded model (if any). Called once
    per worker (``setup``)."""
    import torch

    device = "cuda" if gpu and torch.cuda.is_available() else "cpu"
    state: dict[str, Any] = {"device": device, "model": None, "kind": "color_shape"}
    kind = params.get("features", "auto")
    if kind == "auto":
        kind = "model" if model_path is not None else "color_shape"
    if kind == "model":
        if model_path is None:
            raise RuleError("features: model needs model_path (a TorchScript or ONNX file)")
        state["kind"] = "model"
        state["model"] = _load_model(Path(model_path), device)
    return state


def _load_model(path: Path, device: str) -> tuple[str, Any]:
    if not path.is_file():
        raise RuleError(f"model_path {path} does not exist; export a model (docs/clustering.md)")
    if path.suffix.lower() == ".onnx":
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            return "onnx", ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise RuleError(f"cannot load ONNX model {path}: {exc}") from exc
    import torch

    if path.suffix.lower() == ".pt2":  # torch.export.save of an ExportedProgram
        try:
            return "torchscript", torch.export.load(str(path)).module().to(device)
        except Exception as exc:  # torch raises several types for bad archives
            raise RuleError(f"cannot load exported program {path}: {exc}") from exc
    try:
        model = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # torch raises RuntimeError or ValueError for bad archives
        raise RuleError(
            f"cannot load TorchScript model {path}: {exc}; export it with torch.jit.trace "
            "or torch.jit.script and torch.jit.save, or use an .onnx file"
        ) from exc
    model.eval()
    return "torchscript", model


def extract_features(
    paths: Sequence[Path], params: Mapping[str, Any], state: Mapping[str, Any]
) -> Any:
    """Feature vectors (an N × D float32 numpy array) for the cut-outs at ``paths``."""
    images = [_open_rgba(p) for p in paths]
    if state["kind"] == "model":
        return _model_features(images, params, state)
    return _color_shape_features(images, params, state["device"])


def _to_tensor(images: Sequence[Any], side: int, background: tuple, device: str) -> Any:
    import numpy as np
    import torch

    arr = np.stack([np.asarray(_fit(img, side, background)) for img in images])
    return torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).float() / 255.0


def _linear(rgb: Any) -> Any:
    """sRGB in [0, 1] → linear RGB."""
    import torch

    return torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def _equalize(lin: Any, alpha: Any) -> tuple[Any, Any]:
    """(linear RGB scaled so each cut-out's alpha-weighted mean luminance is ``GREY``,
    log10 of the factor it was scaled by): the same character under other light gets the
    same colours, and the factor says how bright it was."""
    luma = 0.2126 * lin[:, 0] + 0.7152 * lin[:, 1] + 0.0722 * lin[:, 2]
    mean = (luma * alpha).sum((1, 2)) / alpha.sum((1, 2)).clamp(min=1e-6)
    factor = GREY / mean.clamp(min=1e-3)
    return (lin * factor.view(-1, 1, 1, 1)).clamp(0.0, 1.0), factor.log10()


def _lab(lin: Any) -> Any:
    """Linear RGB in [0, 1] (B×3×H×W) → CIE Lab (D65), L in [0, 100]."""
    import torch

    m = torch.tensor(
        [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]],
        device=lin.device,
    )
    xyz = torch.einsum("ij,bjhw->bihw", m, lin)
    white = torch.tensor([0.95047, 1.0, 1.08883], device=lin.device).view(1, 3, 1, 1)
    t = xyz / white
    f = torch.where(t > 0.008856, t.clamp(min=1e-8) ** (1 / 3), 7.787 * t + 16 / 116)
    lab_l = 116 * f[:, 1] - 16
    lab_a = 500 * (f[:, 0] - f[:, 1])
    lab_b = 200 * (f[:, 1] - f[:, 2])
    return torch.stack([lab_l, lab_a, lab_b], dim=1)


def _soft_bins(values: Any, lo: float, hi: float, n: int) -> Any:
    """Gaussian soft membership (B×P×n, rows sum to 1) of values (B×P) to n bin centres."""
    import torch

    step = (hi - lo) / n
    centres = torch.linspace(lo + step / 2, hi - step / 2, n, device=values.device)
    d = (values.unsqueeze(-1) - centres) / (0.6 * step)
    w = torch.exp(-0.5 * d * d)
    return w / w.sum(-1, keepdim=True).clamp(min=1e-8)


def _color_shape_features(images: Sequence[Any], params: Mapping[str, Any], device: str) -> Any:
    import torch
    import torch.nn.functional as F

    x = _to_tensor(images, CANVAS, (0, 0, 0, 0), device)
    batch = x.shape[0]
    alpha = x[:, 3]
    lin, gain = _equalize(_linear(x[:, :3]), alpha)
    lab = _lab(lin)
    l_bins, ab_bins = (int(v) for v in params["hist_bins"])
    w = alpha.reshape(batch, -1)
    m_l = _soft_bins(lab[:, 0].reshape(batch, -1), 0.0, 100.0, l_bins)
    m_a = _soft_bins(lab[:, 1].reshape(batch, -1), -_AB_RANGE, _AB_RANGE, ab_bins)
    m_b = _soft_bins(lab[:, 2].reshape(batch, -1), -_AB_RANGE, _AB_RANGE, ab_bins)
    la = (w.unsqueeze(-1) * m_l).unsqueeze(-1) * m_a.unsqueeze(-2)  # B×P×L×A
    hist = torch.bmm(la.reshape(batch, la.shape[1], -1).transpose(1, 2), m_b)  # B×(LA)×B
    hist = hist.reshape(batch, -1) / w.sum(1, keepdim=True).clamp(min=1e-6)
    color = F.normalize(hist.clamp(min=0).sqrt(), dim=1)  # Hellinger embedding

    band_alpha = F.adaptive_avg_pool2d(alpha.unsqueeze(1), (BANDS, 1)).clamp(min=1e-6)
    band_lab = F.adaptive_avg_pool2d(lab * alpha.unsqueeze(1), (BANDS, 1)) / band_alpha
    layout = F.normalize((band_lab / 100.0).reshape(batch, -1), dim=1)

    side = int(params["shape_size"])
    mask = F.adaptive_avg_pool2d(alpha.unsqueeze(1), (side, side))
    mask = 0.5 * (mask + mask.flip(-1))  # a mirrored pose is the same character
    shape = F.normalize(mask.reshape(batch, -1), dim=1)
    brightness = (-gain).clamp(-3.0, 3.0).unsqueeze(1)  # log10 of mean luminance / GREY
    return torch.cat([color, layout, shape, brightness], dim=1).cpu().numpy().astype("float32")


def _model_features(images: Sequence[Any], params: Mapping[str, Any], state: Mapping) -> Any:
    import numpy as np
    import torch

    side = int(params["model_input_size"])
    x = _to_tensor(images, side, (128, 128, 128, 255), state["device"])[:, :3]
    mean = torch.tensor(params["model_mean"], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(params["model_std"], device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    kind, model = state["model"]
    if kind == "onnx":
        return _run_onnx(model, x.cpu().numpy().astype(np.float32))
    with torch.inference_mode():
        out = model(x)
    out = _first_tensor(out)
    return out.reshape(out.shape[0], -1).float().cpu().numpy()


def _first_tensor(out: Any) -> Any:
    if isinstance(out, Mapping):
        for key in ("image_embeds", "pooler_output", "last_hidden_state"):
            if key in out:
                return out[key] if key != "last_hidden_state" else out[key][:, 0]
        out = next(iter(out.values()))
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out


def _run_onnx(session: Any, x: Any) -> Any:
    import numpy as np

    spec = session.get_inputs()[0]
    fixed = spec.shape[0] if isinstance(spec.shape[0], int) else None
    chunk = fixed or len(x)
    outs = []
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        if fixed and len(part) < fixed:  # pad a fixed-batch model's last chunk
            pad = np.repeat(part[-1:], fixed - len(part), axis=0)
            res = session.run(None, {spec.name: np.concatenate([part, pad])})[0][: len(part)]
        else:
            res = session.run(None, {spec.name: part})[0]
        outs.append(np.asarray(res, dtype=np.float32).reshape(len(part), -1))
    return np.concatenate(outs)

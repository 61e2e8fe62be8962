"""Tiny ONNX models built on the spot, shaped like the ones rembg's sessions run.

rembg's ``u2net`` / ``u2net_custom`` sessions feed a ``[1, 3, 320, 320]`` float tensor (the
image resized and normalized with ImageNet mean and std) and read channel 0 of the first
output, ``[1, 1, 320, 320]``, which they min-max normalize into the mask. The models here
compute ``sigmoid(w · pixel + b)`` per pixel (a 1×1 convolution), so the mask is predictable:
with the default weights red pixels become foreground and grey or dark ones background; with
``weights=(1, 1, 1)`` bright pixels do. A uniform image gives a constant output, which makes
rembg's normalization divide zero by zero (the NaN case a rule must survive).

Tests import :func:`write_channel_sum_model` (and :func:`install_named_model` to lay a model
out where rembg looks for a named one), so nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["RED_BIAS", "RED_WEIGHTS", "install_named_model", "write_channel_sum_model"]

#: weights (with :data:`RED_BIAS`) that make saturated red foreground, near 1, and grey,
#: white or black background, near 0 (steep, so resampling ringing stays near 0 too)

RED_WEIGHTS: tuple[float, float, float] = (4.0, -2.0, -2.0)
RED_BIAS: float = -6.0


def write_channel_sum_model(
    path: Path,
    weights: Sequence[float] = RED_WEIGHTS,
    bias: float = RED_BIAS,
    size: int = 320,
    opset: int = 17,
) -> Path:
    """Write an ONNX model computing ``sigmoid(sum_c weights[c] * x[c] + bias)`` per pixel.

    Input ``input.1`` is ``[1, 3, size, size]`` float32; output ``output`` is
    ``[1, 1, size, size]``. Returns ``path``.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.asarray(weights, dtype=np.float32).reshape(1, 3, 1, 1)
    b = np.asarray([bias], dtype=np.float32)
    graph = helper.make_graph(
        nodes=[
            helper.make_node("Conv", ["input.1", "w", "b"], ["logits"], kernel_shape=[1, 1]),
            helper.make_node("Sigmoid", ["logits"], ["output"]),
        ],
        name="channel_sum",
        inputs=[helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, size, size])],
        outputs=[helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, size, size])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="pipemake-tests"
    )
    model.ir_version = 8  # readable by any onnxruntime of the last few years
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def install_named_model(home: Path, name: str = "u2net", **kwargs: object) -> Path:
    """Lay a channel-sum model out as rembg's named model ``name`` under model home ``home``.

    rembg 2.x looks for ``<home>/models/<name>/<name>.onnx``; point ``U2NET_HOME`` at
    ``home`` and ``new_session(name)`` loads it without touching the network.
    """
    return write_channel_sum_model(Path(home) / "models" / name / f"{name}.onnx", **kwargs)

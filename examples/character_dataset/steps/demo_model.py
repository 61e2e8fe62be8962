"""Train the example's DEMO segmentation model and export it to ONNX for rembg.

This is not a real background-removal model. It is a small convolutional network (four
layers at half resolution), trained for a few seconds on the CPU on the ground-truth frames
and masks of the synthetic video, so that the example runs rembg's real code path offline,
where no model can be downloaded. It has learned one thing: saturated cartoon figures
against muted scenery. On real footage use a real rembg model (see the example's README).

The exported file has the shapes rembg's ``u2net_custom`` session expects: input
``[1, 3, 320, 320]`` float32 (the RGB image resized to 320 × 320, divided by its largest
value, then normalised with ImageNet's mean and std, exactly as rembg does) and output
``[1, 1, 320, 320]``, the foreground probability. Training sees the frames through that
same preprocessing.

torch, onnx and onnxruntime are imported inside the function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SIZE = 320
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
#: the network works at 320 / SCALE pixels: 4× less work, and a mask sharp enough here
SCALE = 2
#: dilation of each 3 × 3 layer: a 15-pixel field of view at half size (30 at 320 × 320)
DILATIONS = (1, 2, 4)


def train(ctx: Any) -> dict[str, Any]:
    """Fit the network to ``groundtruth`` and write ``model`` (ONNX); return its IoU."""
    import torch
    import torch.nn.functional as F

    p = ctx.params
    # One thread: the same bytes on every run, and no threads spinning on a busy machine.
    torch.set_num_threads(1)
    torch.manual_seed(int(p["seed"]))
    generator = torch.Generator().manual_seed(int(p["seed"]))
    images, masks = _load(Path(ctx.inputs["groundtruth"]))
    x = F.avg_pool2d(torch.from_numpy(images), SCALE)
    y = F.avg_pool2d(torch.from_numpy(masks), SCALE)
    net = _network(int(p["channels"]))
    opt = torch.optim.Adam(net.parameters(), lr=float(p["learning_rate"]))
    steps, batch = int(p["steps"]), int(p["batch"])
    for step in range(steps):
        pick = torch.randint(0, len(x), (batch,), generator=generator)
        loss = F.binary_cross_entropy_with_logits(net(x[pick]), y[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctx.progress(step + 1, steps)
    _export(net, ctx.outputs["model"])
    iou = _iou(ctx.outputs["model"], images, masks)
    ctx.log.info(
        "demo segmentation model: %d steps on %d frames, final loss %.3f, IoU %.3f on them",
        steps,
        len(images),
        loss.item(),
        iou,
    )
    return {"loss": round(loss.item(), 4), "iou": round(iou, 4)}


def _load(folder: Path) -> tuple[Any, Any]:
    """The frames as rembg feeds them (N × 3 × 320 × 320) and the masks (N × 1 × 320 × 320)."""
    import numpy as np
    from PIL import Image

    images, masks = [], []
    for path in sorted((folder / "images").glob("*.png")):
        with Image.open(path) as img:
            images.append(_preprocess(img))
        with Image.open(folder / "masks" / path.name) as mask:
            small = mask.convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
            masks.append(np.asarray(small, dtype=np.float32)[None] / 255)
    if not images:
        raise ValueError(f"no ground-truth frames in {folder / 'images'}")
    return np.stack(images), np.stack(masks)


def _preprocess(img: Any) -> Any:
    """rembg's ``BaseSession.normalize``: resize, divide by the largest value, standardise."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(img.convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS))
    arr = arr / max(float(arr.max()), 1e-6)
    arr = (arr - np.array(MEAN)) / np.array(STD)
    return arr.transpose(2, 0, 1).astype(np.float32)


def _network(channels: int) -> Any:
    import torch

    layers: list[Any] = []
    width = 3
    for dilation in DILATIONS:
        layers += [torch.nn.Conv2d(width, channels, 3, padding=dilation, dilation=dilation)]
        layers += [torch.nn.ReLU()]
        width = channels
    layers.append(torch.nn.Conv2d(width, 1, 1))
    return torch.nn.Sequential(*layers)


def _export(net: Any, path: Path) -> None:
    """Write the trained network as an ONNX graph: AveragePool (to half size), the
    Conv/Relu layers, a bilinear Resize back to 320 × 320 and a Sigmoid.

    Written with ``onnx.helper`` rather than ``torch.onnx.export``: the graph is a handful
    of nodes, and this way the file does not depend on which exporter a torch release ships.
    """
    import numpy as np

    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise RuntimeError(
            "the demo model is written with the onnx package: pip install onnx"
        ) from None

    convs = [m for m in net if m.__class__.__name__ == "Conv2d"]
    pool = helper.make_node(
        "AveragePool", ["input"], ["pooled"], kernel_shape=[SCALE, SCALE], strides=[SCALE, SCALE]
    )
    nodes, weights, current = [pool], [], "pooled"
    for n, conv in enumerate(convs):
        w = conv.weight.detach().numpy().astype(np.float32)
        b = conv.bias.detach().numpy().astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{n}"), numpy_helper.from_array(b, f"b{n}")]
        dilation, pad = conv.dilation[0], conv.padding[0]
        nodes.append(
            helper.make_node(
                "Conv",
                [current, f"w{n}", f"b{n}"],
                [f"conv{n}"],
                kernel_shape=list(conv.kernel_size),
                dilations=[dilation, dilation],
                pads=[pad] * 4,
            )
        )
        current = f"conv{n}"
        if n < len(convs) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"relu{n}"]))
            current = f"relu{n}"
    scales = np.array([1, 1, SCALE, SCALE], dtype=np.float32)
    weights.append(numpy_helper.from_array(scales, "scales"))
    nodes.append(
        helper.make_node(
            "Resize",
            [current, "", "scales"],
            ["logits"],
            mode="linear",
            coordinate_transformation_mode="half_pixel",  # torch's align_corners=False
        )
    )
    nodes.append(helper.make_node("Sigmoid", ["logits"], ["output"]))
    graph = helper.make_graph(
        nodes,
        "pipemake_demo_segmentation",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, SIZE, SIZE])],
        initializer=weights,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pipemake-demo"
    )
    model.ir_version = 8
    model.doc_string = "pipemake example: DEMO segmentation model for synthetic cartoons only"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _iou(path: Path, images: Any, masks: Any) -> float:
    """Intersection over union of the exported model's masks (at 0.5) on its training set,
    run through onnxruntime: checks the export as much as the training."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inter = union = 0.0
    for image, mask in zip(images, masks, strict=True):
        pred = session.run(None, {"input": image[None]})[0][0] >= 0.5
        truth = mask >= 0.5
        inter += float(np.logical_and(pred, truth).sum())
        union += float(np.logical_or(pred, truth).sum())
    return inter / max(union, 1.0)

"""Tiny face-model stand-ins in the real formats, at the file names the asset registry uses.

- ``buffalo_l/det_10g.onnx``: SCRFD signature (one float input ``1x3xHxW``, 3 strides x (score,
  box, landmarks) = 9 outputs of ``(H/s * W/s * 2, C)``, 2 anchors per cell). Its outputs are fixed
  by construction: only the 32-pixel stride responds, with score ``sigmoid(12 * brightness - 6)``
  of each 32x32 cell, and every box and landmark offset is a constant (`SCRFD_BOX`,
  `SCRFD_LANDMARKS`, in stride units from the anchor centre), so a bright cell on a dark image
  decodes to a known face. It finds no faces in photos, so `engine.faces` detects with Haar
  cascades in demo mode (``DEMO_STANDIN`` lists it, and the YuNet stand-in, by sha256).
- ``buffalo_l/w600k_r50.onnx``: ArcFace signature (``Nx3x112x112`` -> ``Nx512``), a small random
  residual conv net with batch norms and PReLUs, convertible by onnx2torch.
- ``79999_iter.pth``: a BiSeNet face-parser state dict at width 8 (the real one is width 64).
- ``face_detection_yunet_2023mar.onnx`` and ``face_recognition_sface_2021dec.onnx``: YuNet's
  12 named outputs and SFace's ``1x3x112x112 -> 1x128``, for commercial mode.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.store import atomic_path, atomic_write_text

if TYPE_CHECKING:
    import onnx

SCRFD_BOX = (1.5, 2.0, 1.5, 2.5)
"""Distances left, top, right, bottom from the anchor centre, in strides."""
SCRFD_LANDMARKS = ((-0.6, -0.5), (0.6, -0.5), (0.0, 0.2), (-0.45, 0.9), (0.45, 0.9))
"""Offsets of the five landmarks from the anchor centre, in strides."""
_STRIDES = (8, 16, 32)
_OPSET = 13
_IR_VERSION = 8


def _asset_file(folder: Path, name: str, member: str | None = None) -> Path:
    from engine.assets import get_asset

    asset = get_asset(name)
    return folder / asset.name / member if asset.is_archive else folder / asset.filename


def _save(model: onnx.ModelProto, path: Path) -> None:
    import onnx

    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def _model(nodes: list, inputs: list, outputs: list, initializers: list, name: str) -> onnx.ModelProto:
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="magicapture-demo"
    )
    model.ir_version = _IR_VERSION
    return model


def _tensor(name: str, value: np.ndarray) -> onnx.TensorProto:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(value), name)


def _head(
    prefix: str, source: str, weight: np.ndarray, bias: np.ndarray, shape: list[int], sigmoid: bool
) -> tuple[list, list]:
    """Nodes and weights of a 1x1 conv head, reshaped channels-last into ``shape``."""
    from onnx import helper

    conv, out = f"{prefix}_conv", f"{prefix}_nhwc"
    nodes = [helper.make_node("Conv", [source, f"{prefix}_w", f"{prefix}_b"], [conv], name=f"Conv_{prefix}")]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", [conv], [f"{prefix}_sig"], name=f"Sigmoid_{prefix}"))
        conv = f"{prefix}_sig"
    nodes += [
        helper.make_node("Transpose", [conv], [out], perm=[0, 2, 3, 1], name=f"Transpose_{prefix}"),
        helper.make_node("Reshape", [out, f"{prefix}_shape"], [prefix], name=f"Reshape_{prefix}"),
    ]
    weights = [
        _tensor(f"{prefix}_w", weight.astype(np.float32)),
        _tensor(f"{prefix}_b", bias.astype(np.float32)),
        _tensor(f"{prefix}_shape", np.array(shape, dtype=np.int64)),
    ]
    return nodes, weights


def _pool(stride: int, source: str) -> tuple[str, object]:
    from onnx import helper

    name = f"pool{stride}"
    return name, helper.make_node(
        "AveragePool",
        [source],
        [name],
        kernel_shape=[stride, stride],
        strides=[stride, stride],
        name=f"Pool_{stride}",
    )


def scrfd_standin() -> onnx.ModelProto:
    """The SCRFD-signature detector described in the module docstring."""
    from onnx import TensorProto, helper

    nodes, weights, outputs = [], [], {"score": [], "bbox": [], "kps": []}
    for stride in _STRIDES:
        pooled, node = _pool(stride, "input.1")
        nodes.append(node)
        live = stride == 32
        # SCRFD feeds (pixel - 127.5) / 128, so the channel mean of a white cell is about 1.
        score_w = np.full((2, 3, 1, 1), 12.0 / 3 if live else 0.0)
        score_b = np.full(2, -6.0 if live else -30.0)
        heads = {
            "score": (score_w, score_b, 1, True),
            "bbox": (np.zeros((8, 3, 1, 1)), np.tile(SCRFD_BOX, 2), 4, False),
            "kps": (np.zeros((20, 3, 1, 1)), np.tile(np.ravel(SCRFD_LANDMARKS), 2), 10, False),
        }
        for kind, (weight, bias, width, sigmoid) in heads.items():
            name = f"{kind}_{stride}"
            more_nodes, more_weights = _head(name, pooled, weight, bias, [-1, width], sigmoid)
            nodes += more_nodes
            weights += more_weights
            outputs[kind].append(
                helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"n{stride}", width])
            )
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])
    ordered = outputs["score"] + outputs["bbox"] + outputs["kps"]
    return _model(nodes, [image], ordered, weights, "scrfd-standin")


def yunet_standin() -> onnx.ModelProto:
    """YuNet's signature: raw BGR input, outputs cls/obj/bbox/kps per stride, ``[1, cells, C]``."""
    from onnx import TensorProto, helper

    nodes, weights, outputs = [], [], {"cls": [], "obj": [], "bbox": [], "kps": []}
    for stride in _STRIDES:
        pooled, node = _pool(stride, "input")
        nodes.append(node)
        live = stride == 32
        # Raw 0-255 input: logit 12 * (mean / 127.5 - 1) - 6 on the brightness of each cell.
        heads = {
            "cls": (
                np.full((1, 3, 1, 1), 12.0 / (3 * 127.5) if live else 0.0),
                np.array([-18.0 if live else -30.0]),
                1,
            ),
            "obj": (np.zeros((1, 3, 1, 1)), np.array([10.0]), 1),
            "bbox": (np.zeros((4, 3, 1, 1)), np.array([0.5, 0.6, np.log(3.0), np.log(4.5)]), 4),
            "kps": (np.zeros((10, 3, 1, 1)), np.ravel(SCRFD_LANDMARKS) + np.tile([0.5, 0.6], 5), 10),
        }
        for kind, (weight, bias, width) in heads.items():
            name = f"{kind}_{stride}"
            more_nodes, more_weights = _head(
                name, pooled, weight, bias, [1, -1, width], kind in ("cls", "obj")
            )
            nodes += more_nodes
            weights += more_weights
            outputs[kind].append(
                helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, f"n{stride}", width])
            )
    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "height", "width"])
    ordered = outputs["cls"] + outputs["obj"] + outputs["bbox"] + outputs["kps"]
    return _model(nodes, [image], ordered, weights, "yunet-standin")


@dataclass
class _Graph:
    """The nodes and initialisers of an ONNX graph being built, and the generator of its random weights."""

    rng: np.random.Generator
    nodes: list = field(default_factory=list)
    weights: list = field(default_factory=list)

    def conv_bn(self, name: str, source: str, cin: int, cout: int, stride: int) -> str:
        """A 3x3 convolution (He-initialised) and a batch norm with random statistics; returns its output."""
        from onnx import helper

        fan_in = cin * 9
        rng = self.rng
        self.weights += [
            _tensor(f"{name}_w", rng.normal(0, np.sqrt(2 / fan_in), (cout, cin, 3, 3)).astype(np.float32)),
            _tensor(f"{name}_gamma", rng.uniform(0.8, 1.2, cout).astype(np.float32)),
            _tensor(f"{name}_beta", rng.normal(0, 0.1, cout).astype(np.float32)),
            _tensor(f"{name}_mean", rng.normal(0, 0.1, cout).astype(np.float32)),
            _tensor(f"{name}_var", rng.uniform(0.8, 1.2, cout).astype(np.float32)),
        ]
        self.nodes += [
            helper.make_node(
                "Conv", [source, f"{name}_w"], [f"{name}_c"], kernel_shape=[3, 3], strides=[stride, stride],
                pads=[1, 1, 1, 1], name=f"Conv_{name}",
            ),
            helper.make_node(
                "BatchNormalization",
                [f"{name}_c", f"{name}_gamma", f"{name}_beta", f"{name}_mean", f"{name}_var"],
                [f"{name}_bn"], epsilon=1e-5, name=f"BatchNormalization_{name}",
            ),
        ]  # fmt: skip
        return f"{name}_bn"

    def prelu(self, name: str, source: str, channels: int) -> str:
        from onnx import helper

        self.weights.append(_tensor(f"{name}_slope", np.full((channels, 1, 1), 0.25, np.float32)))
        self.nodes.append(helper.make_node("PRelu", [source, f"{name}_slope"], [name], name=f"PRelu_{name}"))
        return name


def _normalised_pixels(graph: _Graph, source: str) -> str:
    """SFace-style: the graph itself maps raw 0-255 pixels to ``(x - 127.5) / 128``."""
    from onnx import helper

    graph.weights += [
        _tensor("norm_mean", np.array(127.5, np.float32)),
        _tensor("norm_scale", np.array(1 / 128, np.float32)),
    ]
    graph.nodes += [
        helper.make_node("Sub", [source, "norm_mean"], ["centred"], name="Sub_0"),
        helper.make_node("Mul", ["centred", "norm_scale"], ["normalised"], name="Mul_1"),
    ]
    return "normalised"


def _residual_trunk(graph: _Graph, source: str) -> str:
    """112x112 pixels down to 16 feature maps of 7x7: strided conv-BN-PReLU blocks, one residual."""
    from onnx import helper

    stem = graph.prelu("act1", graph.conv_bn("conv1", source, 3, 8, 2), 8)  # 56x56
    residual = graph.conv_bn("conv2", stem, 8, 8, 1)
    graph.nodes.append(helper.make_node("Add", [stem, residual], ["sum2"], name="Add_2"))
    current = graph.prelu("act2", "sum2", 8)
    current = graph.prelu("act3", graph.conv_bn("conv3", current, 8, 16, 2), 16)  # 28x28
    current = graph.prelu("act4", graph.conv_bn("conv4", current, 16, 16, 2), 16)  # 14x14
    return graph.conv_bn("conv5", current, 16, 16, 2)  # 7x7


def _embedding_layer(graph: _Graph, source: str, dim: int, final_bn: bool) -> str:
    """Flatten and a fully connected layer to ``dim`` (then an identity batch norm, ArcFace-style)."""
    from onnx import helper

    features = 16 * 7 * 7
    graph.nodes.append(helper.make_node("Flatten", [source], ["flat"], axis=1, name="Flatten_5"))
    graph.weights += [
        _tensor("fc_w", graph.rng.normal(0, np.sqrt(1 / features), (dim, features)).astype(np.float32)),
        _tensor("fc_b", np.zeros(dim, np.float32)),
    ]
    output = "fc1" if not final_bn else "fc1_pre"
    graph.nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], [output], transB=1, name="Gemm_6"))
    if final_bn:
        graph.weights += [
            _tensor("feat_gamma", np.ones(dim, np.float32)),
            _tensor("feat_beta", np.zeros(dim, np.float32)),
            _tensor("feat_mean", np.zeros(dim, np.float32)),
            _tensor("feat_var", np.ones(dim, np.float32)),
        ]
        graph.nodes.append(
            helper.make_node(
                "BatchNormalization", ["fc1_pre", "feat_gamma", "feat_beta", "feat_mean", "feat_var"], ["fc1"],
                epsilon=1e-5, name="BatchNormalization_7",
            )
        )  # fmt: skip
    return "fc1"


def _recogniser(
    input_name: str,
    batch: str | int,
    dim: int,
    rng: np.random.Generator,
    *,
    embedded_norm: bool,
    final_bn: bool,
) -> onnx.ModelProto:
    """A small residual conv net ``[batch, 3, 112, 112] -> [batch, dim]`` with random weights."""
    from onnx import TensorProto, helper

    graph = _Graph(rng)
    pixels = _normalised_pixels(graph, input_name) if embedded_norm else input_name
    output = _embedding_layer(graph, _residual_trunk(graph, pixels), dim, final_bn)
    image = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, 112, 112])
    embedding = helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch, dim])
    return _model(graph.nodes, [image], [embedding], graph.weights, "recogniser-standin")


def arcface_standin(seed: int = 0) -> onnx.ModelProto:
    """ArcFace signature: ``input.1 [None, 3, 112, 112]`` ((x - 127.5) / 127.5 RGB) -> ``[None, 512]``."""
    return _recogniser(
        "input.1", "None", 512, np.random.default_rng(seed), embedded_norm=False, final_bn=True
    )


def sface_standin(seed: int = 1) -> onnx.ModelProto:
    """SFace signature: ``data [1, 3, 112, 112]`` raw 0-255 RGB -> ``[1, 128]``."""
    return _recogniser("data", 1, 128, np.random.default_rng(seed), embedded_norm=True, final_bn=False)


def write_parser_standin(path: Path, *, width: int = 8, seed: int = 0) -> Path:
    """Save a random BiSeNet face-parser state dict (real key names, reduced width) at ``path``."""
    import torch

    from engine.faces.bisenet import BiSeNet

    torch.manual_seed(seed)
    state = BiSeNet(classes=19, width=width).state_dict()
    with atomic_path(path) as tmp:
        torch.save(state, str(tmp))
    return path


def build_face_assets(assets_folder: Path) -> None:
    """Write every face-model stand-in into ``assets_folder`` (laid out like the asset cache)."""
    from engine.assets import STANDIN_MARKER

    folder = Path(assets_folder)
    detectors = {
        _asset_file(folder, "buffalo_l", "det_10g.onnx"): scrfd_standin(),
        _asset_file(folder, "yunet"): yunet_standin(),
    }
    for path, model in detectors.items():
        _save(model, path)
    _save(arcface_standin(), _asset_file(folder, "buffalo_l", "w600k_r50.onnx"))
    _save(sface_standin(), _asset_file(folder, "sface"))
    write_parser_standin(_asset_file(folder, "bisenet"))
    marker = {
        "detectors": {
            path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in detectors
        }
    }
    atomic_write_text(folder / STANDIN_MARKER, json.dumps(marker, indent=2))

"""ONNX graphs of the families a split must handle, built in code with onnx.helper,
and the check that every enumerated cut of a model recomposes exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from partitioner import ModelGraph, cut_from_tensors, enumerate_cuts, write_artifacts
from runtime.artifacts import Manifest
from runtime.engine import CutRunner, SessionOptions, example_feeds

OPSET = 17
EXACT = SessionOptions(optimize=False)


class Builder:
    """Appends nodes and random weights to a graph under construction."""

    def __init__(self, name: str, seed: int = 0) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.count = 0

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def input(self, name: str, shape: list, dtype: int = TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def weight(self, shape: list[int], scale: float = 0.3, name: str | None = None) -> str:
        name = name or self._name("w")
        values = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        self.weights.append(numpy_helper.from_array(values, name))
        return name

    def const(self, values: object, dtype: type = np.int64) -> str:
        name = self._name("k")
        self.weights.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs: Any) -> str:
        names = [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(
            helper.make_node(op_type, inputs, names, name=f"{op_type}_{names[0]}", **attrs)
        )
        return names[0]

    def multi(self, op_type: str, inputs: list[str], outputs: int, **attrs: Any) -> list[str]:
        names = [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(
            helper.make_node(op_type, inputs, names, name=f"{op_type}_{names[0]}", **attrs)
        )
        return names

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1) -> str:
        w = self.weight([cout, cin, k, k], scale=1 / np.sqrt(cin * k * k))
        b = self.weight([cout], scale=0.1)
        pad = k // 2
        return self.op("Conv", [x, w, b], pads=[pad] * 4, strides=[stride, stride])

    def output(self, name: str, dtype: int = TensorProto.FLOAT) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, dtype, None))

    def model(self, opset: int = OPSET) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, self.name, self.inputs, self.outputs, initializer=self.weights
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def head_classifier(b: Builder, x: str, channels: int, classes: int = 10) -> str:
    pooled = b.op("GlobalAveragePool", [x])
    flat = b.op("Flatten", [pooled], axis=1)
    return b.op("Gemm", [flat, b.weight([classes, channels]), b.weight([classes])], transB=1)


def chain_cnn() -> onnx.ModelProto:
    b = Builder("chain_cnn")
    x = b.input("image", ["N", 3, 16, 16])
    x = b.op("Relu", [b.conv(x, 3, 8)])
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("Relu", [b.conv(x, 8, 16)])
    b.output(head_classifier(b, x, 16))
    return b.model()


def resnet() -> onnx.ModelProto:
    b = Builder("resnet", seed=1)
    x = b.op("Relu", [b.conv(b.input("image", ["N", 3, 16, 16]), 3, 8)])
    for cin, cout, stride in ((8, 8, 1), (8, 16, 2), (16, 16, 1)):
        y = b.op("Relu", [b.conv(x, cin, cout, stride=stride)])
        y = b.conv(y, cout, cout)
        skip = x if stride == 1 and cin == cout else b.conv(x, cin, cout, k=1, stride=stride)
        x = b.op("Relu", [b.op("Add", [y, skip])])
    b.output(head_classifier(b, x, 16))
    return b.model()


def inception() -> onnx.ModelProto:
    b = Builder("inception", seed=2)
    x = b.op("Relu", [b.conv(b.input("image", ["N", 3, 16, 16]), 3, 8)])
    channels = 8
    for _ in range(2):
        one = b.op("Relu", [b.conv(x, channels, 4, k=1)])
        three = b.op("Relu", [b.conv(b.op("Relu", [b.conv(x, channels, 4, k=1)]), 4, 6)])
        five = b.conv(b.op("Relu", [b.conv(x, channels, 2, k=1)]), 2, 4)
        five = b.op("Relu", [b.conv(five, 4, 4)])
        pool = b.op("MaxPool", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
        pool = b.op("Relu", [b.conv(pool, channels, 2, k=1)])
        x = b.op("Concat", [one, three, five, pool], axis=1)
        channels = 4 + 6 + 4 + 2
    b.output(head_classifier(b, x, channels))
    return b.model()


def densenet() -> onnx.ModelProto:
    b = Builder("densenet", seed=3)
    x = b.op("Relu", [b.conv(b.input("image", ["N", 3, 16, 16]), 3, 8)])
    channels, growth = 8, 4
    for block in range(2):
        features = [x]
        for _ in range(3):
            joined = features[0] if len(features) == 1 else b.op("Concat", features, axis=1)
            width = channels + growth * (len(features) - 1)
            features.append(b.conv(b.op("Relu", [joined]), width, growth))
        x = b.op("Concat", features, axis=1)
        channels = channels + growth * 3
        if block == 0:
            x = b.op(
                "AveragePool", [b.conv(x, channels, 8, k=1)], kernel_shape=[2, 2], strides=[2, 2]
            )
            channels = 8
    b.output(head_classifier(b, x, channels))
    return b.model()


def transformer(layers: int = 2, seq: int = 8, dim: int = 16, heads: int = 4) -> onnx.ModelProto:
    """Encoder layers: LayerNorm, multi-head attention, residual adds, a ReLU MLP.

    The normalized input of each attention block has three consumers (Q, K, V).
    """
    b = Builder("transformer", seed=4)
    x = b.input("tokens", ["N", seq, dim])
    head_dim = dim // heads
    split_heads = b.const([0, 0, heads, head_dim])
    merge_heads = b.const([0, 0, dim])
    scale = b.const(np.float32(np.sqrt(head_dim)), dtype=np.float32)
    for _ in range(layers):
        ones, zeros = b.const(np.ones(dim), np.float32), b.const(np.zeros(dim), np.float32)
        norm = b.op("LayerNormalization", [x, ones, zeros], axis=-1)
        qkv = []
        for _ in range(3):
            proj = b.op("Add", [b.op("MatMul", [norm, b.weight([dim, dim])]), b.weight([dim])])
            qkv.append(b.op("Transpose", [b.op("Reshape", [proj, split_heads])], perm=[0, 2, 1, 3]))
        q, k, v = qkv
        scores = b.op(
            "Div", [b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])]), scale]
        )
        attended = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])
        merged = b.op("Reshape", [b.op("Transpose", [attended], perm=[0, 2, 1, 3]), merge_heads])
        x = b.op("Add", [x, b.op("MatMul", [merged, b.weight([dim, dim])])])
        norm2 = b.op("LayerNormalization", [x, ones, zeros], axis=-1)
        hidden = b.op("Relu", [b.op("MatMul", [norm2, b.weight([dim, 4 * dim])])])
        x = b.op("Add", [x, b.op("MatMul", [hidden, b.weight([4 * dim, dim])])])
    b.output(x)
    return b.model()


def two_in_two_out() -> onnx.ModelProto:
    """Two inputs; the first output is ready after two nodes and stays on the device."""
    b = Builder("two_in_two_out", seed=5)
    x1, x2 = b.input("x1", ["N", 4]), b.input("x2", ["N", 6])
    a = b.op("Relu", [b.op("MatMul", [x1, b.weight([4, 8])])])
    early = b.op("Sigmoid", [a])
    side = b.op("Tanh", [b.op("MatMul", [x2, b.weight([6, 8])])])
    c = b.op("Relu", [b.op("Add", [a, side])])
    late = b.op("MatMul", [b.op("Mul", [c, early]), b.weight([8, 3])])
    b.output(early)
    b.output(late)
    return b.model()


def constant_of_shape_weights() -> onnx.ModelProto:
    """Weights computed by nodes: ConstantOfShape, Range and arithmetic on them, and a
    Reshape target computed by Shape arithmetic on a static tensor."""
    b = Builder("computed_weights", seed=6)
    x = b.input("x", [2, 4])
    filled = b.op(
        "ConstantOfShape",
        [b.const([4, 4])],
        value=numpy_helper.from_array(np.array([0.25], np.float32)),
    )
    ramp = b.op("Cast", [b.op("Range", [b.const(0), b.const(4), b.const(1)])], to=TensorProto.FLOAT)
    weight = b.op("Add", [filled, b.op("Mul", [ramp, b.const(0.1, dtype=np.float32)])])
    y = b.op("Relu", [b.op("MatMul", [x, weight])])
    shape = b.op("Shape", [y])
    target = b.op(
        "Concat", [b.op("Slice", [shape, b.const([1]), b.const([2])]), b.const([-1])], axis=0
    )
    z = b.op("Reshape", [y, target])
    b.output(b.op("Sigmoid", [b.op("MatMul", [b.op("Transpose", [z], perm=[1, 0]), weight])]))
    return b.model()


def ir3_initializers_as_inputs() -> onnx.ModelProto:
    """IR version 3, opset 8: every initializer is also listed as a graph input."""
    b = Builder("ir3", seed=7)
    x = b.input("x", [1, 3, 8, 8])
    y = b.op("Relu", [b.conv(x, 3, 4)])
    y = b.op("Relu", [b.op("Add", [b.conv(y, 4, 4), y])])
    b.output(b.op("Flatten", [b.op("GlobalAveragePool", [y])]))
    model = b.model(opset=8)
    model.ir_version = 3
    model.graph.input.extend(
        helper.make_tensor_value_info(w.name, w.data_type, list(w.dims))
        for w in model.graph.initializer
    )
    return model


def control_flow() -> onnx.ModelProto:
    """An If whose branches read tensors of the enclosing graph."""
    b = Builder("control_flow", seed=8)
    x = b.input("x", ["N", 4])
    a = b.op("Relu", [b.op("MatMul", [x, b.weight([4, 4])])])
    c = b.op("Tanh", [b.op("MatMul", [x, b.weight([4, 4])])])
    cond = b.op("Greater", [b.op("ReduceSum", [a], keepdims=0), b.const(0.0, dtype=np.float32)])
    then_w = b.weight([4, 4])
    then_branch = helper.make_graph(
        [helper.make_node("MatMul", [a, then_w], ["then_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Add", [a, c], ["else_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)],
    )
    chosen = b.op("If", [cond], then_branch=then_branch, else_branch=else_branch)
    b.output(b.op("Sigmoid", [b.op("Add", [chosen, c])]))
    return b.model()


def adaptive_model() -> tuple[onnx.ModelProto, str]:
    """x (64 KiB) -> MatMul -> h (256 B) -> a heavy MLP -> y: sending x is best on a fast
    link, sending h on a slow one, and running it all here on a very slow one."""
    b = Builder("adaptive", seed=11)
    x = b.input("x", ["N", 16384])
    h = b.op("Relu", [b.op("MatMul", [x, b.weight([16384, 64], scale=0.01)])])
    wide = b.op("Relu", [b.op("MatMul", [h, b.weight([64, 2048], scale=0.1)])])
    wide = b.op("Relu", [b.op("MatMul", [wide, b.weight([2048, 1024], scale=0.03)])])
    b.output(b.op("MatMul", [wide, b.weight([1024, 10], scale=0.03)]))
    return b.model(), h


def write_adaptive_artifacts(directory: Path, model: onnx.ModelProto | None = None) -> str:
    """The adaptive model (or ``model``, a version of it with other weights) split at
    "cloud" (sends x) and "mid" (sends h); returns h."""
    default, h = adaptive_model()
    graph = ModelGraph.load(model or default)
    cuts = [
        cut_from_tensors(graph, ["x"], cut_id="cloud"),
        cut_from_tensors(graph, [h], cut_id="mid"),
    ]
    write_artifacts(graph, cuts, directory)
    return h


FAMILIES = {
    "chain_cnn": chain_cnn,
    "resnet": resnet,
    "inception": inception,
    "densenet": densenet,
    "transformer": transformer,
    "two_in_two_out": two_in_two_out,
    "constant_of_shape_weights": constant_of_shape_weights,
    "ir3_initializers_as_inputs": ir3_initializers_as_inputs,
    "control_flow": control_flow,
}


def session(
    model: onnx.ModelProto | str | Path, options: SessionOptions = EXACT
) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    if not options.optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.add_session_config_entry("session.disable_prepacking", "1")
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto | str | Path, feeds: dict, options: SessionOptions = EXACT) -> dict:
    s = session(model, options)
    names = [o.name for o in s.get_outputs()]
    wanted = {i.name: feeds[i.name] for i in s.get_inputs()}
    return dict(zip(names, s.run(names, wanted), strict=True))


def split_all(
    model: onnx.ModelProto, directory: Path, **kwargs: object
) -> tuple[ModelGraph, Manifest]:
    """Enumerate every cut of ``model`` and write them all to ``directory``."""
    graph = ModelGraph.load(model)
    cuts = enumerate_cuts(graph, max_tensors=None)
    return graph, write_artifacts(graph, cuts, directory, **kwargs)  # type: ignore[arg-type]


def assert_recomposes(
    original: onnx.ModelProto, directory: Path, manifest: Manifest, *, batch: int = 2, seed: int = 0
) -> None:
    """Every cut in ``manifest``: head -> tail equals the original model bit for bit.

    Graph optimizations are off on both sides: every node then runs the same
    kernel on the same input in the split and in the full model, so the results
    are identical, not merely close.
    """
    feeds = example_feeds(manifest.inputs, batch=batch, seed=seed)
    expected = run(original, feeds)
    assert set(expected) == {o.name for o in manifest.outputs}
    for cut in manifest.cuts:
        got = CutRunner(directory, manifest, cut, EXACT).run(feeds)
        for name, want in expected.items():
            assert got[name].dtype == want.dtype, (cut.id, name)
            np.testing.assert_array_equal(got[name], want, err_msg=f"cut {cut.id}, output {name}")

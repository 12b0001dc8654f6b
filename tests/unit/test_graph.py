"""Loading and normalization: what every model looks like before it is cut."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from partitioner import ModelGraph, cut_from_tensors, enumerate_cuts
from partitioner.graph import subgraph_outer_names
from runtime.artifacts import TensorSpec
from runtime.engine import CutRunner, SessionOptions, example_feeds
from runtime.errors import CutError, ModelError, UnsupportedModelError
from tests.graphs import FAMILIES, Builder, assert_recomposes, run, split_all


def test_ir3_initializers_listed_as_inputs_are_weights_not_inputs():
    original = FAMILIES["ir3_initializers_as_inputs"]()
    assert len(original.graph.input) > 1
    graph = ModelGraph.load(original)
    assert graph.inputs == ["x"]
    assert graph.model.ir_version >= 4
    assert enumerate_cuts(graph)[0].tensor_names == ("x",)


def test_weights_computed_by_nodes_are_copied_never_cut():
    graph = ModelGraph.load(FAMILIES["constant_of_shape_weights"]())
    ops = {n.op_type for n in graph.const_nodes}
    assert {"ConstantOfShape", "Range", "Mul", "Add"} <= ops
    for cut in enumerate_cuts(graph, max_tensors=None):
        assert not set(cut.tensor_names) & graph.constants
    weight = next(n.output[0] for n in graph.const_nodes if n.op_type == "Add")
    with pytest.raises(CutError, match="constant"):
        cut_from_tensors(graph, [weight])


def test_shape_of_a_static_tensor_is_folded():
    graph = ModelGraph.load(FAMILIES["constant_of_shape_weights"]())
    assert "Shape" not in {n.proto.op_type for n in graph.nodes}
    assert any(
        n.op_type == "Constant" and n.output[0].startswith("shape") for n in graph.const_nodes
    )


def _dynamic_reshape() -> onnx.ModelProto:
    b = Builder("dynamic_reshape")
    x = b.input("x", ["N", 4])
    y = b.op("Relu", [b.op("MatMul", [x, b.weight([4, 6])])])
    batch = b.op("Gather", [b.op("Shape", [y]), b.const(0)], axis=0)
    target = b.op("Concat", [b.op("Unsqueeze", [batch, b.const([0])]), b.const([3, 2])], axis=0)
    b.output(b.op("Softmax", [b.op("Reshape", [y, target])], axis=-1))
    return b.model()


def test_shape_arithmetic_on_the_batch_dimension_still_splits_exactly(tmp_path):
    original = _dynamic_reshape()
    graph, manifest = split_all(original, tmp_path)
    assert "Shape" in {n.proto.op_type for n in graph.nodes}, "a dynamic shape cannot be folded"
    assert_recomposes(original, tmp_path, manifest, batch=3)


def test_control_flow_is_one_node_reading_its_branches_outer_tensors():
    graph = ModelGraph.load(FAMILIES["control_flow"]())
    node = next(n for n in graph.nodes if n.proto.op_type == "If")
    outer = subgraph_outer_names(node.proto)
    assert len(outer) == 3  # a, c and the then-branch weight
    assert set(node.reads) == {node.proto.input[0], *[o for o in outer if o not in graph.constants]}
    assert any(o in graph.constants for o in outer)


def test_nodes_out_of_order_are_sorted(tmp_path):
    original = FAMILIES["resnet"]()
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(original)
    nodes = list(shuffled.graph.node)
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(reversed(nodes))
    _, manifest = split_all(shuffled, tmp_path)
    assert_recomposes(original, tmp_path, manifest)


def test_nodes_feeding_no_output_are_dropped():
    b = Builder("dead")
    x = b.input("x", ["N", 4])
    b.op("Tanh", [x])  # read by nothing
    b.output(b.op("Relu", [x]))
    graph = ModelGraph.load(b.model())
    assert [n.proto.op_type for n in graph.nodes] == ["Relu"]


def _save_with_external_data(directory, location):
    path = directory / "model.onnx"
    # saving with external data rewrites the proto it is given: save a fresh one
    model = FAMILIES["chain_cnn"]()
    onnx.save_model(
        model, str(path), save_as_external_data=True, location=location, size_threshold=0
    )
    return path


def test_external_data_model_loads_from_its_file(tmp_path):
    original = FAMILIES["chain_cnn"]()
    path = _save_with_external_data(tmp_path, "model.onnx.data")
    assert (tmp_path / "model.onnx.data").stat().st_size > 1000
    graph = ModelGraph.load(path)
    _, manifest = split_all(graph.model, tmp_path / "out")
    assert_recomposes(original, tmp_path / "out", manifest)


def test_missing_external_data_is_a_clear_error(tmp_path):
    path = _save_with_external_data(tmp_path, "w.data")
    (tmp_path / "w.data").unlink()
    with pytest.raises(ModelError, match="external data"):
        ModelGraph.load(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        (b"hello, this is not a model\n", "not an ONNX model"),
        (b"\x08\x07\x12\x04junk", "not an ONNX model"),
    ],
)
def test_bad_files_are_model_errors(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        ModelGraph.load(path)


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="directory"):
        ModelGraph.load(tmp_path)


def _raw(nodes, inputs=("x",), outputs=("y",)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "raw",
        [helper.make_tensor_value_info(i, TensorProto.FLOAT, [1, 2]) for i in inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, 2]) for o in outputs],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_cycle_is_named():
    model = _raw(
        [
            helper.make_node("Add", ["x", "b"], ["a"], name="first"),
            helper.make_node("Relu", ["a"], ["b"]),
            helper.make_node("Relu", ["a"], ["y"]),
        ]
    )
    with pytest.raises(ModelError, match="cycle through node Add 'first'"):
        ModelGraph.load(model)


def test_a_dangling_input_is_named():
    model = _raw([helper.make_node("Add", ["x", "nowhere"], ["y"], name="add")])
    with pytest.raises(ModelError, match="'nowhere'"):
        ModelGraph.load(model)


def test_an_output_that_is_an_input_is_rejected_with_the_fix():
    model = _raw([helper.make_node("Relu", ["x"], ["y"])], outputs=("y", "x"))
    with pytest.raises(UnsupportedModelError, match="Identity"):
        ModelGraph.load(model)


def test_tensor_specs_carry_dtype_shape_and_bytes():
    graph = ModelGraph.load(FAMILIES["chain_cnn"]())
    spec = graph.spec("image")
    assert spec.dtype == "float32" and spec.shape == ("N", 3, 16, 16)
    assert spec.bytes_per_sample() == 3 * 16 * 16 * 4
    cut = enumerate_cuts(graph)[1]
    dims = [[d for d in t.shape[1:] if isinstance(d, int)] for t in cut.tensors if t.shape]
    assert len(dims) == len(cut.tensors) and all(len(d) == 3 for d in dims)
    assert cut.bytes == sum(4 * int(np.prod(d)) for d in dims)


def test_ops_of_other_domains_get_their_types_from_onnx_runtime(tmp_path):
    b = Builder("contrib")
    x = b.input("x", ["N", 8])
    y = b.op("MatMul", [x, b.weight([8, 8])])
    b.nodes.append(helper.make_node("Gelu", [y], ["gelu"], domain="com.microsoft", name="gelu"))
    b.output(b.op("MatMul", ["gelu", b.weight([8, 4])]))
    model = b.model()
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    graph = ModelGraph.load(model)
    # ONNX's own inference does not know com.microsoft ops
    assert graph.spec("gelu") == TensorSpec("gelu", "float32", ("N", 8))
    assert ("gelu",) in {c.tensor_names for c in enumerate_cuts(graph)}
    _, manifest = split_all(model, tmp_path)
    assert_recomposes(model, tmp_path, manifest)


def test_a_classifier_with_a_sequence_of_maps_output_splits_before_it(tmp_path):
    b = Builder("classifier")
    x = b.input("x", ["N", 4])
    label, scores = b.multi(
        "LinearClassifier",
        [b.op("Relu", [x])],
        2,
        domain="ai.onnx.ml",
        classlabels_ints=[0, 1, 2],
        coefficients=[float(i) for i in range(12)],
        intercepts=[0.0, 0.1, 0.2],
    )
    b.nodes.append(
        helper.make_node(
            "ZipMap", [scores], ["probabilities"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]
        )
    )
    b.outputs.append(helper.make_tensor_value_info(label, TensorProto.INT64, ["N"]))
    seq_of_maps = helper.make_sequence_type_proto(
        helper.make_map_type_proto(
            TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])
        )
    )
    b.outputs.append(helper.make_value_info("probabilities", seq_of_maps))
    model = b.model()
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 1))
    _, manifest = split_all(model, tmp_path)
    assert [c.id for c in manifest.cuts] == ["cloud", "c1", "c2", "edge"]
    feeds = example_feeds(manifest.inputs, batch=2)
    expected = run(model, feeds)
    for cut in manifest.cuts:
        got = CutRunner(tmp_path, manifest, cut, SessionOptions(optimize=False)).run(feeds)
        np.testing.assert_array_equal(got[label], expected[label])
        assert got["probabilities"] == expected["probabilities"]


def test_a_tensor_of_unknown_rank_is_not_taken_for_a_scalar(tmp_path):
    # Reshape to a shape given at run time: nobody knows y's rank before running
    model = _raw(
        [
            helper.make_node("Reshape", ["x", "s"], ["y"]),
            helper.make_node("Shape", ["y"], ["shape"]),
        ],
        inputs=(),
        outputs=(),
    )
    model.graph.input.extend(
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
            helper.make_tensor_value_info("s", TensorProto.INT64, [None]),
        ]
    )
    model.graph.output.append(helper.make_tensor_value_info("shape", TensorProto.INT64, [None]))
    graph = ModelGraph.load(model)
    assert graph.spec("y").shape is None
    assert "Shape" in {n.proto.op_type for n in graph.nodes}, "never folded to a constant"
    _, manifest = split_all(model, tmp_path)
    feeds: dict[str, np.ndarray] = {"x": np.zeros((2, 6), np.float32), "s": np.array([3, 4])}
    for cut in manifest.cuts:
        got = CutRunner(tmp_path, manifest, cut, SessionOptions(optimize=False)).run(feeds)
        assert got["shape"].tolist() == [3, 4]
        assert "y" not in [t.name for t in cut.tensors], "a tensor of unknown rank cannot cross"


def test_opset_8_shapes_are_not_folded_into_int64_constants(tmp_path):
    model = _raw(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Shape", ["a"], ["s"]),
            helper.make_node("Reshape", ["a", "s"], ["y"]),
        ]
    )
    model.opset_import[0].version = 8
    model.ir_version = 3
    onnx.checker.check_model(model, full_check=True)
    _, manifest = split_all(model, tmp_path)
    for path in [manifest.full, *(p for c in manifest.cuts for p in (c.head, c.tail) if p)]:
        onnx.checker.check_model(str(tmp_path / path), full_check=True)
    assert_recomposes(model, tmp_path, manifest)


def test_an_invalid_element_type_is_a_model_error():
    model = _raw([helper.make_node("Relu", ["x"], ["y"])])
    model.graph.input[0].type.tensor_type.elem_type = 72
    with pytest.raises(ModelError):
        ModelGraph.load(model)


def test_bytes_that_are_not_utf8_in_a_name_are_a_model_error(tmp_path):
    model = _raw([helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.1)])
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString().replace(b"alpha", b"alph\x82"))
    with pytest.raises(ModelError):
        ModelGraph.load(path)


def test_a_node_reading_its_own_output_is_a_cycle():
    model = _raw([helper.make_node("Add", ["x", "y"], ["y"], name="loop")])
    with pytest.raises(ModelError, match="cycle: node Add 'loop' reads its own output"):
        ModelGraph.load(model)


def test_the_cycle_error_names_a_node_on_the_cycle():
    model = _raw(
        [
            helper.make_node("Add", ["a", "x"], ["y"], name="after"),
            helper.make_node("Relu", ["b"], ["a"], name="relu"),
            helper.make_node("Neg", ["a"], ["b"], name="neg"),
        ]
    )
    with pytest.raises(ModelError, match=r"cycle through node (Relu 'relu'|Neg 'neg')"):
        ModelGraph.load(model)

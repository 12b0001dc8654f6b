"""Cuts given as tensor lists or ids: valid ones split, invalid ones say why."""

from __future__ import annotations

import pytest
from onnx import helper

from partitioner import ModelGraph, cut_from_tensors, enumerate_cuts, resolve_cut, write_artifacts
from runtime.errors import CutError
from tests.graphs import FAMILIES, Builder, assert_recomposes


@pytest.mark.parametrize(
    "family", ["resnet", "inception", "densenet", "transformer", "two_in_two_out"]
)
def test_every_enumerated_cut_is_found_again_from_its_tensors(family):
    graph = ModelGraph.load(FAMILIES[family]())
    for cut in enumerate_cuts(graph, max_tensors=None):
        if cut.id in ("cloud", "edge"):
            continue
        again = cut_from_tensors(graph, list(cut.tensor_names))
        assert again.tensor_names == cut.tensor_names
        assert graph.is_closed(again.head)


def test_a_list_missing_the_skip_connection_does_not_separate_and_the_error_names_the_path():
    graph = ModelGraph.load(FAMILIES["resnet"]())
    inside = next(c for c in enumerate_cuts(graph) if len(c.tensors) == 2)
    branch, skip = inside.tensor_names[1], inside.tensor_names[0]
    with pytest.raises(CutError) as info:
        cut_from_tensors(graph, [branch])
    message = str(info.value)
    assert "do not separate the graph" in message
    assert f"add '{skip}' to the cut" in message
    assert message.count(" -> ") >= 3 and "image" in message


def test_unknown_tensor_suggests_close_names():
    graph = ModelGraph.load(FAMILIES["chain_cnn"]())
    real = graph.nodes[2].outputs[0]
    with pytest.raises(CutError, match=f"no tensor named '{real}x'.*did you mean '{real}'"):
        cut_from_tensors(graph, [real + "x"])


def test_a_tensor_and_one_computed_from_it_cannot_both_cross():
    graph = ModelGraph.load(FAMILIES["chain_cnn"]())
    first, second = graph.nodes[0].outputs[0], graph.nodes[1].outputs[0]
    with pytest.raises(CutError, match="read only on the device side"):
        cut_from_tensors(graph, [first, second])


def test_a_model_output_read_by_no_node_is_not_a_cut_tensor():
    graph = ModelGraph.load(FAMILIES["chain_cnn"]())
    with pytest.raises(CutError, match="read by no node"):
        cut_from_tensors(graph, graph.outputs)


def _forced_head_model():
    """x -> A -> a; x -> D -> u; B(a, u) -> early output; C(a) -> late output."""
    b = Builder("forced")
    x = b.input("x", ["N", 4])
    a = b.op("Relu", [x])
    u = b.op("Tanh", [x])
    early = b.op("Add", [a, u])
    late = b.op("Sigmoid", [a])
    b.output(early)
    b.output(late)
    return b.model(), a, early, late


def test_nodes_that_read_unsent_head_tensors_move_to_the_device(tmp_path):
    model, a, early, late = _forced_head_model()
    graph = ModelGraph.load(model)
    cut = cut_from_tensors(graph, [a])
    assert cut.tensor_names == (a,)
    assert cut.head_outputs == (early,) and cut.tail_outputs == (late,)
    manifest = write_artifacts(graph, [cut], tmp_path)
    assert_recomposes(model, tmp_path, manifest)


def test_resolve_cut_takes_ids_and_tensor_lists():
    graph = ModelGraph.load(FAMILIES["resnet"]())
    cuts = enumerate_cuts(graph)
    some = cuts[len(cuts) // 2]
    assert resolve_cut(graph, some.id).head == some.head
    assert resolve_cut(graph, ",".join(some.tensor_names)).tensor_names == some.tensor_names
    assert (
        resolve_cut(graph, "cloud").head == 0 and resolve_cut(graph, "edge").head == graph.all_mask
    )
    with pytest.raises(CutError, match=r"no cut 'c999'.*splitinfer cuts"):
        resolve_cut(graph, "c999")


def test_an_explicit_list_matching_an_enumerated_cut_gets_its_id():
    graph = ModelGraph.load(FAMILIES["inception"]())
    cut = next(c for c in enumerate_cuts(graph) if len(c.tensors) == 4)
    assert cut_from_tensors(graph, list(reversed(cut.tensor_names))).id == cut.id


def _split_concat():
    """x -> Relu -> a -> Split -> s0, s1; Concat(Neg(s0), Abs(s1)) -> y."""
    b = Builder("split_concat")
    x = b.input("x", ["N", 4])
    a = b.op("Relu", [x])
    s0, s1 = b.multi("Split", [a], 2, axis=1, num_outputs=2)
    b.output(b.op("Concat", [b.op("Neg", [s0]), b.op("Abs", [s1])], axis=1))
    return b.model(opset=18), a, s0, s1


def test_a_tensor_that_feeds_other_cut_tensors_is_named_first():
    model, a, _, s1 = _split_concat()
    graph = ModelGraph.load(model)
    for names in (["x", s1], [a, s1]):
        with pytest.raises(CutError, match=f"tensor '{names[0]}' is read only on the device side"):
            cut_from_tensors(graph, names)


def test_half_of_a_split_names_the_other_half():
    model, _, s0, s1 = _split_concat()
    graph = ModelGraph.load(model)
    with pytest.raises(CutError, match=f"needs '{s0}', which is made on the device side"):
        cut_from_tensors(graph, [s1])
    assert cut_from_tensors(graph, [s0, s1]).tensor_names == (s0, s1)


def test_an_unused_input_is_called_an_input():
    b = Builder("unused")
    b.input("u", ["N", 2])
    b.output(b.op("Relu", [b.input("x", ["N", 2])]))
    graph = ModelGraph.load(b.model())
    with pytest.raises(CutError, match="an input no node reads"):
        cut_from_tensors(graph, ["u"])


def test_a_tensor_name_with_a_comma_can_be_cut():
    b = Builder("commas")
    x = b.input("x", ["N", 2])
    b.nodes.append(helper.make_node("Relu", [x], ["a,b"]))
    b.output(b.op("Neg", ["a,b"]))
    graph = ModelGraph.load(b.model())
    assert resolve_cut(graph, "a,b").tensor_names == ("a,b",)


def test_cuts_left_out_are_counted_with_their_reason(tmp_path):
    from onnx import TensorProto, helper

    from partitioner.cuts import left_out

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("SequenceConstruct", ["r", "r"], ["seq"]),
        helper.make_node("SequenceAt", ["seq", "zero"], ["at"]),
        helper.make_node("Neg", ["at"], ["y"]),
    ]
    zero = helper.make_tensor("zero", TensorProto.INT64, [], [0])
    model = helper.make_model(
        helper.make_graph(nodes, "seq", [x], [y], [zero]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    graph = ModelGraph.load(model)
    offered = {c.id for c in enumerate_cuts(graph, max_tensors=None)}
    (reason,) = left_out(graph, None)
    assert reason.startswith("1 cut(s) would send a value that is not a typed tensor")
    assert "seq (" in reason and len(offered) == len(graph.nodes)  # one cut missing

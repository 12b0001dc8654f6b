"""Every enumerated cut of every graph family splits, passes the checker, and recomposes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from partitioner import ModelGraph, enumerate_cuts
from runtime.engine import CutRunner, SessionOptions, example_feeds
from tests.graphs import FAMILIES, assert_recomposes, run, split_all


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_cut_passes_the_checker_and_recomposes_bit_exact(family, tmp_path):
    original = FAMILIES[family]()
    _, manifest = split_all(original, tmp_path)
    assert len(manifest.cuts) >= 3, "at least cloud-only, one interior cut and edge-only"
    for cut in manifest.cuts:
        for side in (cut.head, cut.tail):
            if side is not None:
                onnx.checker.check_model(str(tmp_path / side), full_check=True)
    onnx.checker.check_model(str(tmp_path / manifest.full), full_check=True)
    assert_recomposes(original, tmp_path, manifest)


@pytest.mark.parametrize("family", ["resnet", "inception", "transformer"])
def test_with_ort_optimizations_the_split_stays_within_float_rounding(family, tmp_path):
    # With graph optimizations on, ONNX Runtime fuses nodes (Conv+Relu, MatMul+Add,
    # LayerNorm) in the full model across what is a cut boundary in the split, which
    # reorders float32 arithmetic: results then agree to rounding, not bit for bit.
    original = FAMILIES[family]()
    _, manifest = split_all(original, tmp_path)
    feeds = example_feeds(manifest.inputs, batch=3)
    expected = run(original, feeds, SessionOptions(optimize=True))
    for cut in manifest.cuts:
        got = CutRunner(tmp_path, manifest, cut, SessionOptions(optimize=True)).run(feeds)
        for name, want in expected.items():
            scale = float(np.max(np.abs(want)))
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5 * scale)


def test_cuts_between_residual_blocks_send_one_tensor():
    graph = ModelGraph.load(FAMILIES["resnet"]())
    block_outputs = [n.outputs[0] for n in graph.nodes if n.proto.op_type == "Relu"]
    adds = {n.outputs[0] for n in graph.nodes if n.proto.op_type == "Add"}
    after_add = [t for t in block_outputs if graph.nodes[graph.producer[t]].reads[0] in adds]
    single = {c.tensor_names for c in enumerate_cuts(graph) if len(c.tensors) == 1}
    assert len(after_add) == 3
    for tensor in after_add:
        assert (tensor,) in single
    # Inside a block the skip connection crosses too: two tensors.
    assert any(len(c.tensors) == 2 for c in enumerate_cuts(graph))


def test_inception_cuts_include_each_concat_and_the_branches_joined_by_it():
    graph = ModelGraph.load(FAMILIES["inception"]())
    cuts = enumerate_cuts(graph)
    concats = [n for n in graph.nodes if n.proto.op_type == "Concat"]
    names = {c.tensor_names for c in cuts}
    for concat in concats:
        assert (concat.outputs[0],) in names
        # just before the concat, its four branch outputs cross
        assert tuple(concat.reads) in names


def test_densenet_transition_is_a_single_tensor_cut():
    graph = ModelGraph.load(FAMILIES["densenet"]())
    pool = next(n for n in graph.nodes if n.proto.op_type == "AveragePool")
    assert (pool.outputs[0],) in {c.tensor_names for c in enumerate_cuts(graph)}


def test_transformer_layers_are_separated_by_the_residual_stream():
    graph = ModelGraph.load(FAMILIES["transformer"]())

    def readers(tensor):
        return sorted(graph.nodes[c].proto.op_type for c in graph.consumers.get(tensor, []))

    # The first layer's output feeds the second layer's LayerNorm and residual Add.
    boundaries = [
        n.outputs[0]
        for n in graph.nodes
        if n.proto.op_type == "Add" and readers(n.outputs[0]) == ["Add", "LayerNormalization"]
    ]
    # every residual stream tensor between sublayers: 2 layers x 2 sublayers, minus the last
    assert len(boundaries) == 3
    single = {c.tensor_names for c in enumerate_cuts(graph) if len(c.tensors) == 1}
    for tensor in boundaries:
        assert (tensor,) in single
    # the LayerNorm output read by Q, K and V projections is one tensor with three readers
    norms = [n.outputs[0] for n in graph.nodes if n.proto.op_type == "LayerNormalization"]
    assert readers(norms[0]) == ["MatMul", "MatMul", "MatMul"]


def test_early_output_stays_on_the_device(tmp_path):
    original = FAMILIES["two_in_two_out"]()
    graph, manifest = split_all(original, tmp_path)
    early, late = graph.outputs
    mid = [c for c in manifest.cuts if early in c.head_outputs and late in c.tail_outputs]
    assert mid, "some interior cut computes the early output on the device"
    for cut in mid:
        head = onnx.load(str(tmp_path / cut.head))
        tail = onnx.load(str(tmp_path / cut.tail))
        assert early in [o.name for o in head.graph.output]
        assert [o.name for o in tail.graph.output] == [late]
    # the second input can cross raw: the tail then takes x2 itself
    sends_x2 = [c for c in manifest.cuts if "x2" in [t.name for t in c.tensors]]
    assert any(c.id != "cloud" for c in sends_x2)


def test_edge_and_cloud_only_are_cuts():
    graph = ModelGraph.load(FAMILIES["two_in_two_out"]())
    cuts = enumerate_cuts(graph)
    assert cuts[0].id == "cloud" and cuts[0].head_nodes == 0
    assert cuts[0].tensor_names == ("x1", "x2")
    assert cuts[-1].id == "edge" and cuts[-1].tensors == ()
    assert cuts[-1].head_outputs == tuple(graph.outputs)

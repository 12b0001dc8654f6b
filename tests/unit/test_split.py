"""What split writes: only the weights each side reads, external data past a size,
and a manifest the runtime can read back."""

from __future__ import annotations

import json

import onnx
import pytest

from partitioner import ModelGraph, cut_from_tensors, enumerate_cuts, write_artifacts
from partitioner.graph import node_reads
from runtime.artifacts import load_manifest
from runtime.errors import ArtifactError
from tests.graphs import FAMILIES, Builder, assert_recomposes, split_all


def _tied_weights_model():
    """The same weight matrix used by the first and the last MatMul (tied embeddings)."""
    b = Builder("tied")
    x = b.input("x", ["N", 8])
    tied = b.weight([8, 8], name="tied")
    first = b.op("Relu", [b.op("MatMul", [x, tied])])
    middle = b.op("Relu", [b.op("MatMul", [first, b.weight([8, 8], name="head_only")])])
    last = b.op("MatMul", [b.op("MatMul", [middle, b.weight([8, 8], name="tail_only")]), tied])
    b.output(last)
    return b.model(), middle


def _weights(path):
    model = onnx.load(str(path))
    names = {i.name for i in model.graph.initializer}
    read = {r for n in model.graph.node for r in node_reads(n)}
    return names, read


def test_each_side_holds_exactly_the_weights_it_reads(tmp_path):
    model, middle = _tied_weights_model()
    graph = ModelGraph.load(model)
    cut = cut_from_tensors(graph, [middle])
    manifest = write_artifacts(graph, [cut], tmp_path)
    head, head_reads = _weights(tmp_path / manifest.cuts[0].head)
    tail, tail_reads = _weights(tmp_path / manifest.cuts[0].tail)
    assert head == {"tied", "head_only"} and head <= head_reads
    assert tail == {"tied", "tail_only"} and tail <= tail_reads
    assert_recomposes(model, tmp_path, manifest)


@pytest.mark.parametrize("family", ["resnet", "constant_of_shape_weights", "control_flow"])
def test_no_side_carries_a_weight_it_does_not_read(family, tmp_path):
    _, manifest = split_all(FAMILIES[family](), tmp_path)
    for cut in manifest.cuts:
        for side in (cut.head, cut.tail):
            if side is not None:
                names, read = _weights(tmp_path / side)
                # subgraph reads are included by node_reads
                assert names <= read, (cut.id, side, names - read)


def test_big_models_keep_weights_in_external_data(tmp_path):
    original = FAMILIES["resnet"]()
    _, manifest = split_all(original, tmp_path, external_data_threshold=0)
    full = tmp_path / manifest.full
    assert (tmp_path / "model.onnx.data").stat().st_size > full.stat().st_size
    for cut in manifest.cuts:
        for side in (cut.head, cut.tail):
            if side is not None:
                stored = onnx.load(str(tmp_path / side), load_external_data=False)
                inits = stored.graph.initializer
                # weights of 1 KiB and more are stored in SIDE.data, smaller ones inline
                inline = [i.name for i in inits if i.data_location != onnx.TensorProto.EXTERNAL]
                assert all(len(i.raw_data) < 1024 for i in inits if i.name in inline)
                if len(inline) < len(inits):
                    assert (tmp_path / (side + ".data")).exists()
                onnx.checker.check_model(str(tmp_path / side))
    assert_recomposes(original, tmp_path, manifest)


def test_shared_weights_are_written_once_and_every_cut_still_recomposes(tmp_path):
    original = FAMILIES["resnet"]()
    graph = ModelGraph.load(original)
    cuts = enumerate_cuts(graph)
    manifest = write_artifacts(graph, cuts, tmp_path, check=False, shared_weights=True)
    weights = (tmp_path / "weights.bin").stat().st_size
    assert [p.name for p in tmp_path.glob("*.data")] == [] and weights > 0
    sides = [tmp_path / s for c in manifest.cuts for s in (c.head, c.tail) if s is not None]
    referenced = 0
    for side in sides:
        for init in onnx.load(str(side), load_external_data=False).graph.initializer:
            if len(init.raw_data) >= 1024 or init.data_location == onnx.TensorProto.EXTERNAL:
                where = {e.key: e.value for e in init.external_data}
                assert where["location"] == "weights.bin", (side, init.name)
                referenced += 1
    assert len(sides) > 10 and referenced > len(sides)
    assert_recomposes(original, tmp_path, manifest)


def test_writing_again_into_the_same_directory_replaces_external_data(tmp_path):
    original = FAMILIES["chain_cnn"]()
    split_all(original, tmp_path, external_data_threshold=0)
    size = (tmp_path / "model.onnx.data").stat().st_size
    _, manifest = split_all(original, tmp_path, external_data_threshold=0)
    assert (tmp_path / "model.onnx.data").stat().st_size == size
    assert_recomposes(original, tmp_path, manifest)


def test_manifest_round_trips_with_paths_relative_to_the_directory(tmp_path):
    graph = ModelGraph.load(FAMILIES["two_in_two_out"]())
    written = write_artifacts(graph, enumerate_cuts(graph), tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["full"] == "model.onnx" and (tmp_path / raw["full"]).is_file()
    for entry in raw["cuts"]:
        assert set(entry) >= {"id", "tensors", "head", "tail"}
        for side in (entry["head"], entry["tail"]):
            assert side is None or (not side.startswith("/") and (tmp_path / side).is_file())
    assert load_manifest(tmp_path) == written
    cloud, edge = written.cut("cloud"), written.cut("edge")
    assert cloud.head is None and [t.name for t in cloud.tensors] == ["x1", "x2"]
    assert edge.tail is None and edge.tensors == ()


def test_a_broken_manifest_is_an_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="no such file"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": 1, "model": "m"}')
    with pytest.raises(ArtifactError, match="malformed"):
        load_manifest(tmp_path)


def test_verification_passes_a_true_split_and_catches_a_tampered_tail(tmp_path, capsys):
    from partitioner.cli import main
    from partitioner.verify import verify_artifacts

    model_path = tmp_path / "resnet.onnx"
    onnx.save_model(FAMILIES["resnet"](), str(model_path))
    out = tmp_path / "art"
    assert main(["split", str(model_path), "--cut", "c3", "--cut", "c7", "--out", str(out)]) == 0
    assert "bit for bit (2 cuts)" in capsys.readouterr().out
    manifest = load_manifest(out)
    assert all(v.exact and v.max_abs_diff == 0.0 for v in verify_artifacts(out, manifest))

    tail_path = out / manifest.cut("c7").tail
    tail = onnx.load(str(tail_path))
    weight = tail.graph.initializer[0]
    values = onnx.numpy_helper.to_array(weight).copy()
    values.flat[0] += 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save_model(tail, str(tail_path))
    verdicts = {v.cut: v for v in verify_artifacts(out, manifest)}
    assert verdicts["c3"].exact and not verdicts["c7"].exact
    assert verdicts["c7"].max_abs_diff > 0

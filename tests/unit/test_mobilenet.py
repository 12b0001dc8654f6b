"""A real trained network on real photos: MobileNetV2 with ImageNet weights, split at
several cuts, gives the full model's class scores."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

from partitioner import ModelGraph, enumerate_cuts, write_artifacts
from partitioner.export import export_module
from partitioner.export.models import mobilenet_v2, mobilenet_v2_weights_path
from partitioner.samples import imagenet_class_names, imagenet_photos
from runtime.engine import CutRunner, SessionOptions
from tests.graphs import run


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mobilenet")
    module = mobilenet_v2(pretrained=True)
    path = export_module(module, [(1, 3, 224, 224)], directory / "mobilenet_v2.onnx")
    return module, path


@pytest.fixture(scope="module")
def photos():
    return imagenet_photos()


def test_weights_load_strictly_into_the_project_architecture():
    state = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    model = mobilenet_v2(pretrained=True)
    assert set(model.state_dict()) == set(state)
    assert sum(p.numel() for p in model.parameters()) == 3_504_872


def test_the_exported_model_recognizes_the_photo_and_matches_torch(exported, photos):
    module, path = exported
    names = imagenet_class_names()
    scores = run(path, {"x": photos["china.jpg"]})
    logits = next(iter(scores.values()))[0]
    assert names[int(np.argmax(logits))] == "palace"
    with torch.no_grad():
        want = module(torch.from_numpy(photos["china.jpg"])).numpy()[0]
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)


def _chosen_cuts(graph):
    cuts = enumerate_cuts(graph)
    singles = [c for c in cuts if len(c.tensors) == 1 and c.id not in ("cloud", "edge")]
    residual = next(c for c in cuts if len(c.tensors) == 2)  # inside an inverted residual block
    picked = [cuts[0], singles[0], singles[len(singles) // 2], singles[-1], residual, cuts[-1]]
    return list({c.id: c for c in picked}.values())


def test_split_at_several_cuts_gives_the_full_models_scores_on_real_photos(
    exported, photos, tmp_path
):
    _, path = exported
    graph = ModelGraph.load(path)
    manifest = write_artifacts(graph, _chosen_cuts(graph), tmp_path)
    assert len(manifest.cuts) == 6
    for cut in manifest.cuts:
        for side in (cut.head, cut.tail):
            if side is not None:
                onnx.checker.check_model(str(tmp_path / side), full_check=True)
    batch = np.concatenate(list(photos.values()))
    exact = run(path, {"x": batch})
    optimized = run(path, {"x": batch}, SessionOptions(optimize=True))
    for cut in manifest.cuts:
        # bit-exact when every node runs as written
        got = CutRunner(tmp_path, manifest, cut, SessionOptions(optimize=False)).run({"x": batch})
        np.testing.assert_array_equal(got["linear"], exact["linear"], err_msg=cut.id)
        # with ORT's fusions the cut can separate a fused Conv+Clip: rounding-level differences
        fast = CutRunner(tmp_path, manifest, cut, SessionOptions(optimize=True)).run({"x": batch})
        np.testing.assert_allclose(fast["linear"], optimized["linear"], rtol=1e-4, atol=1e-4)
        assert (np.argmax(fast["linear"], 1) == np.argmax(optimized["linear"], 1)).all()


def test_a_model_zoo_style_export_splits_bit_exact(photos, tmp_path):
    """The TorchScript exporter at opset 9, with BatchNormalization nodes left in and
    every initializer listed as a graph input: what many model-zoo files look like."""
    path = tmp_path / "zoo_style.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            mobilenet_v2(pretrained=True),
            (torch.from_numpy(photos["china.jpg"]),),
            str(path),
            dynamo=False,
            opset_version=9,
            keep_initializers_as_inputs=True,
            do_constant_folding=False,
            input_names=["input"],
            dynamic_axes={"input": {0: "batch"}},
        )
    original = onnx.load(str(path))
    assert len(original.graph.input) > 100
    assert "BatchNormalization" in {n.op_type for n in original.graph.node}
    graph = ModelGraph.load(original)
    assert graph.inputs == ["input"]
    manifest = write_artifacts(graph, _chosen_cuts(graph), tmp_path / "art")
    batch = np.concatenate(list(photos.values()))
    expected = run(original, {"input": batch})
    (output,) = expected
    for cut in manifest.cuts:
        got = CutRunner(tmp_path / "art", manifest, cut, SessionOptions(optimize=False)).run(
            {"input": batch}
        )
        np.testing.assert_array_equal(got[output], expected[output], err_msg=cut.id)
    names = imagenet_class_names()
    assert names[int(np.argmax(expected[output][0]))] == "palace"

"""A scikit-learn pipeline converted by skl2onnx (a Scaler of ``ai.onnx.ml`` first,
whose output ONNX's shape inference leaves without a shape): every cut is offered,
split, served and equal to the full model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from partitioner import ModelGraph, enumerate_cuts, write_artifacts
from runtime.artifacts import load_manifest
from runtime.cloud.tails import TailHost
from runtime.device.client import SplitClient
from runtime.device.edge import StaticSplit
from runtime.engine import SessionOptions, make_session, run_session

EXACT = SessionOptions(optimize=False)


@pytest.fixture(scope="module")
def pipeline():
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the MLP's convergence warning
        fitted = make_pipeline(
            StandardScaler(), PCA(16), MLPClassifier((32,), max_iter=50, random_state=0)
        ).fit(x, y)
    return to_onnx(fitted, x[:1], options={"zipmap": False}), x


def test_a_sklearn_pipeline_splits_at_every_node_and_serves(pipeline, tmp_path, serve):
    model, x = pipeline
    graph = ModelGraph.load(model)
    cuts = enumerate_cuts(graph, max_tensors=None)
    # every node's output after the Scaler is a cut: one per node, cloud and edge
    assert len(cuts) == len(graph.nodes) + 1, [c.id for c in cuts]
    served = [c for c in cuts if c.id != "edge" and c.bytes is not None]
    write_artifacts(graph, served, tmp_path)
    server = serve(TailHost([tmp_path], session_options=EXACT))
    full = make_session(tmp_path / load_manifest(tmp_path).full, EXACT)
    feeds = {"X": x[:5]}
    expected = run_session(full, feeds)
    with SplitClient(server.target) as client:
        for cut in served:
            result = StaticSplit(tmp_path, client, cut=cut.id, options=EXACT).infer(feeds)
            for name, value in expected.items():
                np.testing.assert_array_equal(result.outputs[name], value, err_msg=cut.id)
    assert len(served) >= 10

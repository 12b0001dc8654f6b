"""Serve the tails of a splitinfer artifact directory with a real Triton (PyTriton's
Python backend, running each tail with ONNX Runtime). Run by the Triton test with the
Python of a virtual environment that has nvidia-pytriton (it pins numpy<2, so it
cannot share splitinfer's): ``python serve_tails.py DIR GRPC_PORT HTTP_PORT``.
Prints "serving" once every tail is loaded; SIGINT or SIGTERM stops it."""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64}


def tensors(args):
    return [
        Tensor(
            name=a.name,
            dtype=TYPES[a.type],
            shape=tuple(d if isinstance(d, int) else -1 for d in a.shape[1:]),
        )
        for a in args
    ]


def runner(session):
    names = [o.name for o in session.get_outputs()]

    @batch
    def infer(**inputs):
        return dict(zip(names, session.run(names, inputs), strict=True))

    return infer


def main() -> None:
    directory = pathlib.Path(sys.argv[1])
    grpc_port, http_port = int(sys.argv[2]), int(sys.argv[3])
    manifest = json.loads((directory / "manifest.json").read_text())
    config = TritonConfig(grpc_port=grpc_port, http_port=http_port, metrics_port=0)
    with Triton(config=config) as triton:
        for cut in manifest["cuts"]:
            if not cut.get("tail"):
                continue
            session = ort.InferenceSession(str(directory / cut["tail"]))
            triton.bind(
                model_name=f"{manifest['model']}__{cut['id']}",
                infer_func=runner(session),
                inputs=tensors(session.get_inputs()),
                outputs=tensors(session.get_outputs()),
                config=ModelConfig(max_batch_size=32),
            )
        print("serving", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()

"""splitinfer's device and cloud runtime: needs numpy, onnx, onnxruntime, grpcio,
protobuf, zstandard, prometheus-client and tritonclient's KServe v2 protocol
modules, never torch or the partitioner."""

from runtime.adaptive import EdgeOptions, EdgeRuntime
from runtime.artifacts import CutArtifact, Manifest, TensorSpec, load_manifest
from runtime.errors import (
    ArtifactError,
    CutError,
    ExportError,
    ModelError,
    SplitInferError,
    UnsupportedModelError,
)

__all__ = [
    "ArtifactError",
    "CutArtifact",
    "CutError",
    "EdgeOptions",
    "EdgeRuntime",
    "ExportError",
    "Manifest",
    "ModelError",
    "SplitInferError",
    "TensorSpec",
    "UnsupportedModelError",
    "load_manifest",
]

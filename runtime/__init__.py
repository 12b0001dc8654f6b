"""splitinfer's device and cloud runtime: needs numpy, onnxruntime, grpcio, protobuf
and zstandard, never torch or the partitioner."""

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
    "ExportError",
    "Manifest",
    "ModelError",
    "SplitInferError",
    "TensorSpec",
    "UnsupportedModelError",
    "load_manifest",
]

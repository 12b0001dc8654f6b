"""splitinfer's runtime, in three parts:

- ``runtime`` itself, the contract device and cloud share: artifacts (the
  manifest), codecs, the wire (generated modules, fastwire, protocol
  conversions, KServe datatypes), the error hierarchy and its status codes, and
  the ONNX Runtime session helpers;
- ``runtime.device``: the edge runtimes, the clients, the link estimator and
  emulator;
- ``runtime.cloud``: the server.

The device and the cloud import only the shared part, never each other (a test
reads the imports), and nothing here imports torch or the partitioner. The
public names below are importable from ``runtime`` and loaded on first use, so
that a device importing ``runtime`` does not load the server, nor the reverse.
"""

from __future__ import annotations

import importlib
from typing import Any

from runtime.artifacts import CutArtifact, Manifest, TensorSpec, load_manifest
from runtime.errors import (
    ArtifactError,
    CutError,
    ExportError,
    ModelError,
    SplitInferError,
    UnsupportedModelError,
)

_LAZY = {
    "EdgeOptions": "runtime.device.options",
    "EdgeRuntime": "runtime.device.adaptive",
    "StaticSplit": "runtime.device.edge",
    "SplitClient": "runtime.device.client",
    "ClientTLS": "runtime.device.client",
    "KServeClient": "runtime.device.kserve_client",
    "LinkEmulator": "runtime.device.linkem",
    "BackgroundServer": "runtime.cloud.server",
    "Security": "runtime.cloud.server",
    "create_server": "runtime.cloud.server",
    "serve": "runtime.cloud.server",
    "TailHost": "runtime.cloud.tails",
    "HostLimits": "runtime.cloud.tails",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


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
    *_LAZY,
]

"""The artifact directory: the contract between the partitioner and the runtime.

``splitinfer split`` writes a directory like this::

    DIR/manifest.json
    DIR/model.onnx                 the normalized full model (edge-only fallback)
    DIR/cuts/<id>/head.onnx        what the device runs (absent for cloud-only)
    DIR/cuts/<id>/tail.onnx        what the cloud runs (absent for edge-only)

and the runtime reads it back with :func:`load_manifest`. Paths in the manifest
are relative to DIR. It lives in ``runtime`` because the device reads it;
the partitioner imports it to write one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import ArtifactError, SplitInferError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1

Dim = int | str | None
"""One dimension: a size, a symbolic name (``"batch"``), or None when unknown."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of one tensor."""

    name: str
    dtype: str
    shape: tuple[Dim, ...] | None

    def bytes_per_sample(self) -> int | None:
        """Bytes of one sample, or None when a non-batch dimension is unknown.

        A leading symbolic or unknown dimension is taken as the batch dimension;
        a fully static shape is taken as one sample (a model exported with batch 1).
        """
        if self.shape is None:
            return None
        try:
            itemsize = np.dtype(self.dtype).itemsize
        except TypeError:
            return None
        dims = list(self.shape)
        if dims and not isinstance(dims[0], int):
            dims = dims[1:]
        if not all(isinstance(d, int) for d in dims):
            return None
        return itemsize * math.prod(d for d in dims if isinstance(d, int))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": _shape_to_json(self.shape)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TensorSpec:
        shape = obj.get("shape")
        return cls(
            name=str(obj["name"]),
            dtype=str(obj["dtype"]),
            shape=None if shape is None else tuple(shape),
        )


def total_bytes(specs: tuple[TensorSpec, ...]) -> int | None:
    """Bytes per sample of several tensors, or None when one of them is unknown."""
    sizes = [t.bytes_per_sample() for t in specs]
    return None if None in sizes else sum(s for s in sizes if s is not None)


def _shape_to_json(shape: tuple[Dim, ...] | None) -> list[Dim] | None:
    return None if shape is None else list(shape)


@dataclass(frozen=True)
class CutArtifact:
    """One cut as written to disk.

    ``tensors`` cross from the device to the cloud, in the order the tail takes
    them; graph inputs among them are forwarded from the caller's feeds, the rest
    are head outputs. ``head_outputs`` are the model outputs the head computes:
    they stay on the device. ``head`` or ``tail`` is None for the edge-only and
    cloud-only cuts.
    """

    id: str
    tensors: tuple[TensorSpec, ...]
    head_nodes: int
    head: str | None
    tail: str | None
    head_outputs: tuple[str, ...] = ()
    tail_outputs: tuple[str, ...] = ()

    @property
    def bytes(self) -> int | None:
        """Bytes per sample sent across the cut, or None when a shape is unknown."""
        return total_bytes(self.tensors)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tensors": [t.name for t in self.tensors],
            "specs": [t.to_json() for t in self.tensors],
            "bytes": self.bytes,
            "head_nodes": self.head_nodes,
            "head": self.head,
            "tail": self.tail,
            "head_outputs": list(self.head_outputs),
            "tail_outputs": list(self.tail_outputs),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CutArtifact:
        return cls(
            id=str(obj["id"]),
            tensors=tuple(TensorSpec.from_json(s) for s in obj["specs"]),
            head_nodes=int(obj["head_nodes"]),
            head=obj.get("head"),
            tail=obj.get("tail"),
            head_outputs=tuple(obj.get("head_outputs", ())),
            tail_outputs=tuple(obj.get("tail_outputs", ())),
        )


@dataclass(frozen=True)
class Manifest:
    """The content of ``manifest.json``."""

    model: str
    full: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    cuts: tuple[CutArtifact, ...] = field(default=())
    plan: dict[str, Any] | None = None  # the PLAN.json the cuts came from, if any

    def cut(self, cut_id: str) -> CutArtifact:
        for cut in self.cuts:
            if cut.id == cut_id:
                return cut
        known = ", ".join(c.id for c in self.cuts)
        raise ArtifactError(f"no cut {cut_id!r} in the manifest; it has: {known}")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "model": self.model,
            "full": self.full,
            "sha256": self.sha256,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "cuts": [c.to_json() for c in self.cuts],
            "plan": self.plan,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Manifest:
        if obj.get("format") != MANIFEST_FORMAT:
            raise ArtifactError(
                f"manifest format {obj.get('format')!r} is not supported "
                f"(expected {MANIFEST_FORMAT})"
            )
        return cls(
            model=str(obj["model"]),
            full=str(obj["full"]),
            sha256=str(obj["sha256"]),
            inputs=tuple(TensorSpec.from_json(s) for s in obj["inputs"]),
            outputs=tuple(TensorSpec.from_json(s) for s in obj["outputs"]),
            cuts=tuple(CutArtifact.from_json(c) for c in obj["cuts"]),
            plan=obj.get("plan"),
        )


def save_manifest(manifest: Manifest, directory: str | Path) -> Path:
    """Write ``manifest.json`` into ``directory`` and return its path."""
    path = Path(directory) / MANIFEST_NAME
    path.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    return path


def read_json(path: Path, what: str, error: type[SplitInferError], hint: str = "") -> Any:
    """The JSON in ``path``; ``error`` saying so when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: no such file{hint}") from None
    except (OSError, ValueError) as exc:
        raise error(f"{path}: cannot read the {what}: {exc}") from exc


def load_manifest(directory: str | Path) -> Manifest:
    """Read ``DIR/manifest.json``; a missing or malformed one is an ArtifactError."""
    path = Path(directory) / MANIFEST_NAME
    hint = f"; is {directory} an artifact directory?"
    obj = read_json(path, "manifest", ArtifactError, hint)
    try:
        return Manifest.from_json(obj)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{path}: malformed manifest: missing or bad field {exc}") from exc


def read_npy(path: Path) -> np.ndarray:
    """The array in a ``.npy`` file, read by its content (never unpickled); ValueError
    naming the file when it is missing, an ``.npz`` archive, or not ``.npy`` at all."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    with path.open("rb") as handle:
        magic = handle.read(6)
    if magic.startswith(b"PK"):
        raise ValueError(f"{path} is an .npz archive; give one .npy file per input (numpy.save)")
    if magic != b"\x93NUMPY":
        raise ValueError(f"{path} is not a .npy file (save arrays with numpy.save)")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{path}: {' '.join(str(exc).split())}") from None

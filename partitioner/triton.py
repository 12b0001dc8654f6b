"""A Triton model repository of an artifact directory's tails.

``export_triton(DIR, REPO)`` writes, for each cut with a tail,

    REPO/<model>__<cut>/config.pbtxt
    REPO/<model>__<cut>/1/model.onnx          (a file, or for a tail whose weights
                                               are external data, a directory
                                               model.onnx/ holding model.onnx and
                                               its data files, as Triton expects)

The model names are the ones splitinfer's own KServe v2 endpoint serves, so an
EdgeRuntime talks to Triton (``--protocol kserve``) exactly as to splitinfer.
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

import onnx
from google.protobuf import text_format
from onnx.external_data_helper import uses_external_data

from runtime.artifacts import load_manifest
from runtime.cloud.batching import BatchOptions
from runtime.cloud.kserve import batch_dimension, tail_signature, triton_config
from runtime.engine import inside
from runtime.errors import ArtifactError
from runtime.kserve_types import model_name

MODEL_FILE = "model.onnx"


def export_triton(
    directory: str | Path, out: str | Path, batching: BatchOptions = BatchOptions()
) -> list[str]:
    """Write the repository; returns the model names written."""
    directory, out = Path(directory), Path(out)
    manifest = load_manifest(directory)
    names = []
    for cut in manifest.cuts:
        if cut.tail is None:
            continue
        name = model_name(manifest.model, cut.id)
        tail = inside(directory, cut.tail)
        version = out / name / "1"
        if version.exists():
            shutil.rmtree(version)
        version.mkdir(parents=True)
        data = _external_files(tail)
        if data:  # Triton loads model.onnx/model.onnx with its data beside it
            target = version / MODEL_FILE
            target.mkdir()
            shutil.copyfile(tail, target / MODEL_FILE)
            for relative in data:
                source = tail.parent / relative
                if not source.is_file():
                    raise ArtifactError(f"{tail}: its external data {relative} is missing")
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target / relative)
        else:
            shutil.copyfile(tail, version / MODEL_FILE)
        inputs, outputs = tail_signature(tail)
        config = triton_config(
            name,
            inputs,
            outputs,
            max_batch_size=batching.max_batch if batch_dimension(tail) else 0,
            batching=batching,
            sha256=manifest.sha256,
        )
        (out / name / "config.pbtxt").write_text(text_format.MessageToString(config))
        names.append(name)
    if not names:
        raise ArtifactError(f"{directory} has no cut with a tail: nothing for Triton to serve")
    return names


def _external_files(path: Path) -> list[str]:
    """The external data files an ONNX file refers to, relative to its directory."""
    model = onnx.load(str(path), load_external_data=False)
    files = set()
    for tensor in _tensors(model.graph):
        if uses_external_data(tensor):
            location = next(e.value for e in tensor.external_data if e.key == "location")
            relative = PurePosixPath(location)
            if relative.is_absolute() or ".." in relative.parts:
                raise ArtifactError(
                    f"{path}: external data {location!r} lies outside its directory"
                )
            files.add(str(relative))
    return sorted(files)


def _tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    found = list(graph.initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                found.append(attribute.t)
            for sub in (
                [attribute.g, *attribute.graphs] if attribute.HasField("g") else attribute.graphs
            ):
                found += _tensors(sub)
    return found

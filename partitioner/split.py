"""Write the head and tail models of cuts, and the artifact directory around them.

Each side gets exactly the nodes, weights and constant nodes it reads: a
weight used on both sides is in both files, any other weight in one. Models
whose weights pass ``external_data_threshold`` bytes (default 1.5 GB, below
protobuf's 2 GB limit) keep them in ``<model>.onnx.data`` beside the file.
Every written file passes ``onnx.checker``.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import onnx
from onnx import helper

from partitioner.cuts import Cut
from partitioner.graph import ModelGraph, members, node_reads
from runtime.artifacts import CutArtifact, Manifest, save_manifest
from runtime.errors import ModelError

EXTERNAL_DATA_THRESHOLD = 1_500_000_000
FULL_MODEL_NAME = "model.onnx"
SHARED_WEIGHTS = "weights.bin"


def head_model(graph: ModelGraph, cut: Cut) -> onnx.ModelProto | None:
    """The device side of ``cut``: graph inputs in, cut tensors and head outputs out."""
    sent = [t for t in cut.tensor_names if t in graph.producer]
    outputs = list(dict.fromkeys([*sent, *cut.head_outputs]))
    if not outputs:
        return None
    return submodel(graph, cut.head, outputs, f"{graph.name}_head_{cut.id}")


def tail_model(graph: ModelGraph, cut: Cut) -> onnx.ModelProto | None:
    """The cloud side of ``cut``: cut tensors in, the remaining graph outputs out."""
    if not cut.tail_outputs:
        return None
    tail = graph.all_mask & ~cut.head
    return submodel(
        graph, tail, list(cut.tail_outputs), f"{graph.name}_tail_{cut.id}", cut.tensor_names
    )


def submodel(
    graph: ModelGraph,
    nodes: int,
    outputs: Sequence[str],
    name: str,
    inputs: Sequence[str] | None = None,
) -> onnx.ModelProto:
    """A model of the compute nodes in ``nodes`` plus the constants they read.

    ``inputs`` default to the graph inputs those nodes read, in model order.
    """
    compute = [graph.nodes[i] for i in members(nodes)]
    if inputs is None:
        read = {r for node in compute for r in node.reads}
        inputs = [i for i in graph.inputs if i in read]
    constant_reads = [c for node in compute for c in node.constants]
    constant_reads += [o for o in outputs if o in graph.constants]
    const_nodes, weights = _constant_closure(graph, constant_reads)
    body = [*const_nodes, *(node.proto for node in compute)]
    produced = {o for n in body for o in n.output} | set(inputs)
    value_info = [
        graph.value_infos[o]
        for o in sorted(produced - set(outputs) - set(inputs))
        if o in graph.value_infos
    ]
    proto_graph = helper.make_graph(
        body,
        name,
        inputs=[_value_info(graph, i) for i in inputs],
        outputs=[_value_info(graph, o) for o in outputs],
        initializer=[graph.weights[w] for w in weights if w in graph.weights],
        value_info=value_info,
        sparse_initializer=[graph.sparse_weights[w] for w in weights if w in graph.sparse_weights],
    )
    model = onnx.ModelProto()
    source = graph.model
    model.ir_version = source.ir_version
    model.opset_import.extend(source.opset_import)
    model.producer_name = source.producer_name
    model.producer_version = source.producer_version
    model.domain = source.domain
    model.model_version = source.model_version
    model.metadata_props.extend(source.metadata_props)
    model.functions.extend(source.functions)
    model.graph.CopyFrom(proto_graph)
    return model


def _constant_closure(
    graph: ModelGraph, names: Iterable[str]
) -> tuple[list[onnx.NodeProto], list[str]]:
    """The constant nodes (in order) and weights needed to compute ``names``."""
    needed_nodes: set[int] = set()
    weights: dict[str, None] = {}
    stack = list(names)
    while stack:
        name = stack.pop()
        if name in graph.const_producer:
            index = graph.const_producer[name]
            if index not in needed_nodes:
                needed_nodes.add(index)
                stack.extend(node_reads(graph.const_nodes[index]))
        elif name in graph.weights or name in graph.sparse_weights:
            weights.setdefault(name)
    ordered = [graph.const_nodes[i] for i in sorted(needed_nodes)]
    return ordered, sorted(weights)


def _value_info(graph: ModelGraph, name: str) -> onnx.ValueInfoProto:
    vi = graph.value_infos.get(name)
    if vi is None or not vi.type.WhichOneof("value"):
        raise ModelError(
            f"the type of tensor {name!r} is unknown (shape inference could not find it), "
            "so it cannot be a model input or output"
        )
    return vi


def save_model(
    model: onnx.ModelProto,
    path: Path,
    *,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    check: bool = True,
) -> Path:
    """Write ``model`` to ``path``, weights in ``path.data`` when past the threshold."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    weight_bytes = sum(init.ByteSize() for init in model.graph.initializer)
    if weight_bytes > external_data_threshold:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # saving with external data rewrites the tensors in place
        onnx.save_model(
            copy,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))
    if check:
        onnx.checker.check_model(str(path))
    return path


def model_sha256(model: onnx.ModelProto) -> str:
    """A content hash of the model: graph structure and weights."""
    digest = hashlib.sha256()
    digest.update(model.graph.name.encode())
    for node in model.graph.node:
        digest.update(node.SerializeToString(deterministic=True))
    for init in model.graph.initializer:
        digest.update(init.SerializeToString(deterministic=True))
    return digest.hexdigest()


def write_artifacts(
    graph: ModelGraph,
    cuts: Sequence[Cut],
    out_dir: str | Path,
    *,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    plan: dict[str, Any] | None = None,
    check: bool = True,
    shared_weights: bool = False,
) -> Manifest:
    """Write the full model, each cut's head and tail, and ``manifest.json``
    (with ``plan``, the plan the cuts come from, when given). ``check``: run
    onnx.checker on every file written (off for throwaway copies).

    ``shared_weights`` writes the weights once, to ``weights.bin``, and every
    head and tail (``<id>.head.onnx``, beside it) refers to their place there:
    for throwaway copies of many cuts of a big model (the profiler's), where a
    copy of the weights per cut would be gigabytes written and read.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = graph
    if shared_weights:
        full = onnx.ModelProto()
        full.CopyFrom(graph.model)  # saving converts its tensors to references, in place
        onnx.save_model(
            full,
            str(out / FULL_MODEL_NAME),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=SHARED_WEIGHTS,
            size_threshold=1024,
        )
        source = copy.copy(graph)
        source.weights = {i.name: i for i in full.graph.initializer}
    else:
        save_model(
            graph.model,
            out / FULL_MODEL_NAME,
            external_data_threshold=external_data_threshold,
            check=check,
        )
    written = []
    for cut in dict((c.id, c) for c in cuts).values():
        paths: dict[str, str | None] = {}
        for side, model in (("head", head_model(source, cut)), ("tail", tail_model(source, cut))):
            if model is None:
                paths[side] = None
                continue
            if shared_weights:
                relative = f"{cut.id}.{side}.onnx"
                onnx.save_model(model, str(out / relative))  # references into weights.bin
            else:
                relative = f"cuts/{cut.id}/{side}.onnx"
                save_model(
                    model,
                    out / relative,
                    external_data_threshold=external_data_threshold,
                    check=check,
                )
            paths[side] = relative
        written.append(
            CutArtifact(
                id=cut.id,
                tensors=cut.tensors,
                head_nodes=cut.head_nodes,
                head=paths["head"],
                tail=paths["tail"],
                head_outputs=cut.head_outputs,
                tail_outputs=cut.tail_outputs,
            )
        )
    manifest = Manifest(
        model=graph.name,
        full=FULL_MODEL_NAME,
        sha256=model_sha256(graph.model),
        inputs=tuple(graph.spec(i) for i in graph.inputs),
        outputs=tuple(graph.spec(o) for o in graph.outputs),
        cuts=tuple(written),
        plan=plan,
    )
    save_manifest(manifest, out)
    return manifest

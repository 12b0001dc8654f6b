"""Load an ONNX model, normalize it, and view it as a DAG of compute nodes.

Normalization makes every model look the same to the cut search and the
splitter:

* initializers listed as graph inputs (IR 3 and some exporters) are weights,
  not inputs, and the IR version is raised to 4 where that was needed;
* nodes are sorted topologically and nodes that feed no output are dropped;
* shapes and types are inferred (big weights are stood in for by typed inputs
  during inference, so models over 2 GB infer too);
* ``Shape``/``Size`` of a tensor whose shape is fully static become Constants.

After that, nodes that depend on no graph input (Constant, ConstantOfShape,
arithmetic on weights, the folded shapes) are *constant nodes*: they are never
on either side of a cut but copied into whichever side reads them, so a cut
never has to send a weight. Control flow (If/Loop/Scan) is kept whole: a node
with subgraphs is one node of the DAG, and the outer tensors its subgraphs read
count as its inputs.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from runtime.artifacts import TensorSpec
from runtime.errors import ModelError, UnsupportedModelError

# Ops whose output is not a function of their inputs: never replicated.
RANDOM_OPS = frozenset(
    {
        "Bernoulli",
        "Multinomial",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
    }
)

# Initializers larger than this stand in as typed graph inputs during shape
# inference, which serializes the model and so fails beyond 2 GB.
_INFERENCE_INLINE_BYTES = 4096

_DTYPE_NAMES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.UINT16: "uint16",
    onnx.TensorProto.UINT32: "uint32",
    onnx.TensorProto.UINT64: "uint64",
    onnx.TensorProto.BOOL: "bool",
    onnx.TensorProto.STRING: "str",
    onnx.TensorProto.COMPLEX64: "complex64",
    onnx.TensorProto.COMPLEX128: "complex128",
}


# --------------------------------------------------------------------------- loading


def load_model(source: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """Load a model from a file (with its external data) or copy a ModelProto.

    Raises ModelError for a missing file, a file that is not ONNX, or missing
    external data.
    """
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        name = "model"
    else:
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise ModelError(f"{path}: no such file")
        if path.is_dir():
            raise ModelError(f"{path}: is a directory, expected an ONNX model file")
        with path.open("rb") as handle:
            start = handle.read(64).lstrip()
        if start[:1] in (b"{", b"["):
            raise ModelError(
                f"{path}: is JSON (a profile, plan or manifest?), expected an ONNX model file"
            )
        try:
            # by content, whatever the file is called (onnx picks a parser by extension)
            model = onnx.load(str(path), format="protobuf")
        except DecodeError as exc:
            raise ModelError(
                f"{path}: not an ONNX model (protobuf decoding failed: {exc})"
            ) from exc
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise ModelError(f"{path}: cannot load the model or its external data: {exc}") from exc
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.output:
        raise ModelError(f"{name}: not an ONNX model (no IR version, graph or graph outputs)")
    return model


def normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a normalized copy of ``model`` (see the module docstring)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    _drop_initializer_inputs(result)
    _check_input_types(graph)
    _reject_output_passthrough(graph)
    _sort_topologically(graph)
    _remove_dead_nodes(graph)
    _infer_shapes(result)
    if _default_opset(result) >= 9 and _fold_static_shapes(graph):
        _remove_dead_nodes(graph)
        _infer_shapes(result)
    _check(result)
    return result


def _drop_initializer_inputs(model: onnx.ModelProto) -> None:
    weights = {init.name for init in model.graph.initializer}
    weights |= {s.values.name for s in model.graph.sparse_initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in weights]
    if len(inputs) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(inputs)
    # IR 3 requires every initializer to be an input; from IR 4 on they need not be.
    model.ir_version = max(model.ir_version, 4)


def _check_input_types(graph: onnx.GraphProto) -> None:
    valid = set(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}
    for vi in graph.input:
        if vi.type.WhichOneof("value") == "tensor_type":
            elem_type = vi.type.tensor_type.elem_type
            if elem_type not in valid:
                raise ModelError(
                    f"input {vi.name!r} has element type {elem_type}, which is not an ONNX type"
                )


def _reject_output_passthrough(graph: onnx.GraphProto) -> None:
    inputs = {vi.name for vi in graph.input}
    for out in graph.output:
        if out.name in inputs:
            raise UnsupportedModelError(
                f"graph output {out.name!r} is also a graph input; splitinfer needs every "
                "output computed by a node (insert an Identity node before splitting)"
            )


def subgraph_outer_names(node: onnx.NodeProto) -> list[str]:
    """Names that the subgraphs of ``node`` read from the enclosing scope, in first-use order."""
    found: dict[str, None] = {}
    for attr in node.attribute:
        for sub in _attribute_graphs(attr):
            for name in _outer_names(sub):
                found.setdefault(name)
    return list(found)


def _attribute_graphs(attr: onnx.AttributeProto) -> Iterator[onnx.GraphProto]:
    if attr.type == onnx.AttributeProto.GRAPH:
        yield attr.g
    elif attr.type == onnx.AttributeProto.GRAPHS:
        yield from attr.graphs


def _outer_names(graph: onnx.GraphProto) -> list[str]:
    defined = {vi.name for vi in graph.input}
    defined |= {init.name for init in graph.initializer}
    defined |= {s.values.name for s in graph.sparse_initializer}
    found: dict[str, None] = {}
    for node in graph.node:
        for name in (*node.input, *subgraph_outer_names(node)):
            if name and name not in defined:
                found.setdefault(name)
        defined.update(o for o in node.output if o)
    for out in graph.output:
        if out.name not in defined:
            found.setdefault(out.name)
    return list(found)


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor a node reads: its inputs and what its subgraphs read from outside."""
    names = dict.fromkeys(n for n in node.input if n)
    names.update(dict.fromkeys(subgraph_outer_names(node)))
    return list(names)


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Kahn's algorithm, keeping the model's own order wherever it is already valid."""
    nodes = list(graph.node)
    available = {vi.name for vi in graph.input}
    available |= {init.name for init in graph.initializer}
    available |= {s.values.name for s in graph.sparse_initializer}
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for out in node.output:
            if out:
                producer[out] = i
    waiting: dict[int, int] = {}
    dependents: dict[int, list[int]] = {i: [] for i in range(len(nodes))}
    for i, node in enumerate(nodes):
        deps = {producer[n] for n in node_reads(node) if n not in available and n in producer}
        missing = [n for n in node_reads(node) if n not in available and n not in producer]
        if missing:
            raise ModelError(
                f"node {_describe(node)} reads {missing[0]!r}, which no node, input or "
                "initializer provides"
            )
        if i in deps:
            raise ModelError(f"the graph has a cycle: node {_describe(node)} reads its own output")
        waiting[i] = len(deps)
        for d in deps:
            dependents[d].append(i)
    ready = [i for i, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in dependents[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        culprit = nodes[_on_cycle(waiting, producer, nodes)]
        raise ModelError(f"the graph has a cycle through node {_describe(culprit)}")
    if order != list(range(len(nodes))):
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)


def _on_cycle(
    waiting: dict[int, int], producer: dict[str, int], nodes: list[onnx.NodeProto]
) -> int:
    """A node on a cycle: walk from a stuck node to a stuck producer until one repeats."""
    seen: list[int] = []
    node = next(i for i, n in waiting.items() if n > 0)
    while node not in seen:
        seen.append(node)
        node = next(
            producer[r] for r in node_reads(nodes[node]) if waiting.get(producer.get(r, -1), 0) > 0
        )
    return node


def _remove_dead_nodes(graph: onnx.GraphProto) -> None:
    needed = {out.name for out in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(node_reads(node))
    if len(keep) != len(graph.node):
        keep.reverse()
        del graph.node[:]
        graph.node.extend(keep)
    used_weights = [init for init in graph.initializer if init.name in needed]
    if len(used_weights) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(used_weights)


def _infer_shapes(model: onnx.ModelProto) -> None:
    """Fill in the types and shapes of every tensor the nodes make.

    ONNX shape inference first; for what it leaves open (ops of other domains,
    such as com.microsoft), ONNX Runtime's own inference, read from a session
    that exposes those tensors as outputs. Weights never need serializing.
    """
    light = _weightless_copy(model)
    known = {vi.name: vi for vi in model.graph.value_info if _complete(vi)}
    known.update(_onnx_inference(light))
    wanted = [o for node in model.graph.node for o in node.output if o]
    wanted += [out.name for out in model.graph.output]
    missing = [name for name in dict.fromkeys(wanted) if name not in known]
    if missing:
        known.update(_onnxruntime_inference(light, missing))
    missing = [name for name in missing if name not in known]
    if missing:
        known.update(_measured_shapes(model, missing))
    weights = {init.name for init in model.graph.initializer}
    interface = {vi.name for vi in (*model.graph.input, *model.graph.output)}
    del model.graph.value_info[:]
    model.graph.value_info.extend(
        vi for name, vi in known.items() if name not in weights and name not in interface
    )
    for out in model.graph.output:
        if not _complete(out) and out.name in known:
            out.CopyFrom(known[out.name])


def _complete(vi: onnx.ValueInfoProto) -> bool:
    """Whether a value's type is known: a tensor with an element type and a shape,
    or any non-tensor type."""
    if vi.type.WhichOneof("value") != "tensor_type":
        return vi.type.WhichOneof("value") is not None
    tensor = vi.type.tensor_type
    return bool(tensor.elem_type) and tensor.HasField("shape")


def _weightless_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its big weights replaced by typed graph inputs."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph = light.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.sparse_initializer.extend(model.graph.sparse_initializer)
    for init in model.graph.initializer:
        if init.ByteSize() <= _INFERENCE_INLINE_BYTES:
            graph.initializer.append(init)
        else:
            graph.input.append(
                helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
    return light


def _onnx_inference(light: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    try:
        # No data propagation: it evaluates constant ops like Range and can allocate
        # without bound on a hostile model. ONNX Runtime's inference fills the gaps.
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=False)
    except Exception:  # malformed models make the inference raise all sorts of errors
        return {}
    values = (*inferred.graph.value_info, *inferred.graph.output)
    return {vi.name: vi for vi in values if _complete(vi)}


def _onnxruntime_inference(
    light: onnx.ModelProto, names: list[str]
) -> dict[str, onnx.ValueInfoProto]:
    probe = onnx.ModelProto()
    probe.CopyFrom(light)
    outputs = {out.name for out in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in outputs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(
            probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception:  # ORT cannot load it either; the checker will say what is wrong
        return {}
    found = {}
    wanted = set(names)
    for out in session.get_outputs():
        elem_type = _ort_elem_type(out.type)
        # ORT reports an unknown rank as [], like a scalar's: only trust a known rank
        if out.name in wanted and elem_type is not None and out.shape:
            dims = [d if isinstance(d, (int, str)) else None for d in out.shape]
            found[out.name] = helper.make_tensor_value_info(out.name, elem_type, dims)
    return found


def _measured_shapes(model: onnx.ModelProto, names: list[str]) -> dict[str, onnx.ValueInfoProto]:
    """Types and shapes of ``names`` as ONNX Runtime computes them on example inputs,
    for what neither inference knows (ops of ``ai.onnx.ml`` and custom domains often
    declare no shape function). Run with batches of 2 and 3: a dimension that follows
    the batch is the batch's symbol, the others are fixed. Nothing when the model does
    not run on example inputs (indices, token ids...)."""
    from runtime.engine import example_feeds

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {out.name for out in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in outputs)
    weights = {init.name for init in model.graph.initializer}
    specs = [spec_from_value_info(i) for i in model.graph.input if i.name not in weights]
    batch = next(
        (d for s in specs if s.shape and isinstance(s.shape[0], str) for d in [s.shape[0]]),
        "N",
    )
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(
            probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        runs = [
            dict(zip(names, session.run(names, example_feeds(specs, batch=b)), strict=True))
            for b in (2, 3)
        ]
    except Exception:  # made-up inputs break data-dependent models: shapes stay unknown
        return {}
    found = {}
    for name in names:
        first, second = np.asarray(runs[0][name]), np.asarray(runs[1][name])
        elem_type = helper.np_dtype_to_tensor_dtype(first.dtype) if first.dtype.kind != "O" else 0
        if not elem_type or first.ndim != second.ndim:
            continue
        dims: list[int | str] = [
            a if a == b else batch for a, b in zip(first.shape, second.shape, strict=True)
        ]
        found[name] = helper.make_tensor_value_info(name, elem_type, dims)
    return found


def _ort_elem_type(ort_type: str) -> int | None:
    """``"tensor(float)"`` -> TensorProto.FLOAT; None for sequences, maps and the unknown."""
    if not ort_type.startswith("tensor(") or not ort_type.endswith(")"):
        return None
    value = getattr(onnx.TensorProto, ort_type[len("tensor(") : -1].upper(), None)
    return value if isinstance(value, int) else None


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _fold_static_shapes(graph: onnx.GraphProto) -> bool:
    """Replace Shape/Size of statically shaped tensors by Constant nodes.

    Only from opset 9 on: before it, Constant holds floats alone, not int64.
    """
    specs = _value_specs(graph)
    changed = False
    for index, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("Shape", "Size"):
            continue
        spec = specs.get(node.input[0])
        if spec is None or spec.shape is None:
            continue
        dims = spec.shape
        if not all(isinstance(d, int) for d in dims):
            continue
        shape = np.array(dims, dtype=np.int64)
        if node.op_type == "Shape":
            attrs = {a.name: a.i for a in node.attribute}
            start, end = attrs.get("start", 0), attrs.get("end", len(dims))
            value = shape[start:end]
        else:
            value = np.array(int(np.prod(shape)), dtype=np.int64)
        constant = helper.make_node(
            "Constant",
            [],
            [node.output[0]],
            name=node.name or f"folded_{node.output[0]}",
            value=numpy_helper.from_array(value),
        )
        graph.node[index].CopyFrom(constant)
        changed = True
    return changed


def _check(model: onnx.ModelProto) -> None:
    if sum(init.ByteSize() for init in model.graph.initializer) > 1_800_000_000:
        return  # the in-memory checker serializes; big models are checked when written
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:  # UnicodeDecodeError included
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"not a valid ONNX model: {first}") from exc


def _describe(node: onnx.NodeProto) -> str:
    label = f"{node.op_type}"
    if node.name:
        label += f" {node.name!r}"
    elif node.output:
        label += f" (output {node.output[0]!r})"
    return label


# --------------------------------------------------------------------------- tensor specs


def dtype_name(elem_type: int) -> str:
    """numpy-style name of an ONNX element type (``"float32"``), or the ONNX name."""
    if elem_type in _DTYPE_NAMES:
        return _DTYPE_NAMES[elem_type]
    if elem_type == onnx.TensorProto.UNDEFINED:
        return "unknown"
    try:
        return str(onnx.TensorProto.DataType.Name(elem_type)).lower()
    except ValueError:
        return "unknown"  # not an ONNX element type; the checker says so


def spec_from_value_info(vi: onnx.ValueInfoProto) -> TensorSpec:
    """TensorSpec of a ValueInfoProto; non-tensor types get dtype ``"<kind>"`` and no shape."""
    vtype = vi.type
    kind = vtype.WhichOneof("value")
    if kind != "tensor_type":
        return TensorSpec(vi.name, f"<{kind or 'unknown'}>", None)
    ttype = vtype.tensor_type
    dtype = dtype_name(ttype.elem_type)
    if not ttype.HasField("shape"):
        return TensorSpec(vi.name, dtype, None)
    dims: list[int | str | None] = []
    for d in ttype.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorSpec(vi.name, dtype, tuple(dims))


def is_sendable(spec: TensorSpec) -> bool:
    """Whether a tensor of this spec can cross a cut: a typed, non-string tensor of known rank."""
    known = not spec.dtype.startswith("<") and spec.dtype not in ("unknown", "str")
    return known and spec.shape is not None


def _value_specs(graph: onnx.GraphProto) -> dict[str, TensorSpec]:
    specs: dict[str, TensorSpec] = {}
    for vi in (*graph.value_info, *graph.input, *graph.output):
        spec = spec_from_value_info(vi)
        known = specs.get(vi.name)
        if known is None or (known.dtype == "unknown" and spec.dtype != "unknown"):
            specs[vi.name] = spec
    return specs


# --------------------------------------------------------------------------- the DAG


@dataclass(frozen=True)
class Node:
    """One compute node of the DAG: depends, directly or not, on a graph input."""

    index: int
    proto: onnx.NodeProto
    reads: tuple[str, ...]  # non-constant tensors read, subgraph reads included
    constants: tuple[str, ...]  # constant tensors read (weights, constant-node outputs)
    outputs: tuple[str, ...]

    def __str__(self) -> str:
        return _describe(self.proto)


def bits(indices: Iterable[int]) -> int:
    """A node set as an int bitmask."""
    mask = 0
    for i in indices:
        mask |= 1 << i
    return mask


def members(mask: int) -> list[int]:
    """The node indices in a bitmask, ascending."""
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


class ModelGraph:
    """A normalized model seen as a DAG of compute nodes, with fast set operations.

    Node sets are int bitmasks over ``nodes`` (index = topological position).
    """

    def __init__(self, model: onnx.ModelProto, *, name: str = "model") -> None:
        self.model = model
        self.name = name
        graph = model.graph
        self.weights: dict[str, onnx.TensorProto] = {i.name: i for i in graph.initializer}
        self.sparse_weights = {s.values.name: s for s in graph.sparse_initializer}
        self.inputs: list[str] = [vi.name for vi in graph.input]
        self.outputs: list[str] = [vi.name for vi in graph.output]
        self.specs = _value_specs(graph)
        self.value_infos = {vi.name: vi for vi in (*graph.value_info, *graph.input, *graph.output)}
        self.const_nodes: list[onnx.NodeProto] = []
        self.const_producer: dict[str, int] = {}
        self.nodes: list[Node] = []
        self.producer: dict[str, int] = {}
        self._split_constant_nodes(graph)
        self.consumers: dict[str, list[int]] = {}
        for node in self.nodes:
            for name in node.reads:
                self.consumers.setdefault(name, []).append(node.index)
        self.all_mask = (1 << len(self.nodes)) - 1
        self.pred_mask = [
            bits(self.producer[t] for t in n.reads if t in self.producer) for n in self.nodes
        ]
        self.anc_mask = self._closure(self.pred_mask, range(len(self.nodes)))
        succ: list[int] = [0] * len(self.nodes)
        for node in self.nodes:
            for p in members(self.pred_mask[node.index]):
                succ[p] |= 1 << node.index
        self.desc_mask = self._closure(succ, reversed(range(len(self.nodes))))

    @classmethod
    def load(cls, source: str | Path | onnx.ModelProto) -> ModelGraph:
        """Load, normalize and analyse a model file or ModelProto."""
        name = Path(source).stem if not isinstance(source, onnx.ModelProto) else "model"
        if isinstance(source, onnx.ModelProto) and source.graph.name:
            name = source.graph.name
        return cls(normalize(load_model(source)), name=name)

    def _split_constant_nodes(self, graph: onnx.GraphProto) -> None:
        constants = set(self.weights) | set(self.sparse_weights)
        for proto in graph.node:
            reads = node_reads(proto)
            if proto.op_type not in RANDOM_OPS and all(r in constants for r in reads):
                for out in proto.output:
                    if out:
                        self.const_producer[out] = len(self.const_nodes)
                        constants.add(out)
                self.const_nodes.append(proto)
                continue
            index = len(self.nodes)
            outputs = tuple(o for o in proto.output if o)
            self.nodes.append(
                Node(
                    index=index,
                    proto=proto,
                    reads=tuple(r for r in reads if r not in constants),
                    constants=tuple(r for r in reads if r in constants),
                    outputs=outputs,
                )
            )
            for out in outputs:
                self.producer[out] = index
        self.constants = constants

    @staticmethod
    def _closure(direct: list[int], order: Iterable[int]) -> list[int]:
        """Reflexive-transitive closure of ``direct`` edges, visiting ``order`` sinks-first."""
        closed = [0] * len(direct)
        for i in order:
            mask = 1 << i
            for j in members(direct[i]):
                mask |= closed[j]
            closed[i] = mask
        return closed

    # ---- queries

    def is_tensor(self, name: str) -> bool:
        return name in self.producer or name in self.inputs or name in self.constants

    def depends_on(self, names: Iterable[str]) -> int:
        """Nodes that read any of ``names``, directly or through other nodes."""
        mask = 0
        for name in names:
            for c in self.consumers.get(name, ()):
                mask |= self.desc_mask[c]
        return mask

    def is_closed(self, head: int) -> bool:
        """Whether the node set ``head`` contains every predecessor of its members."""
        return all(self.anc_mask[i] & ~head == 0 for i in members(head))

    def crossing(self, head: int) -> list[str]:
        """Tensors made on the head side (or graph inputs) that a tail node reads.

        Ordered as graph inputs first, then by producing node and output position.
        """
        tail = self.all_mask & ~head
        crossing: dict[str, None] = {}
        for i in members(tail):
            for name in self.nodes[i].reads:
                p = self.producer.get(name)
                if p is None or head >> p & 1:
                    crossing.setdefault(name)
        return sorted(crossing, key=self._tensor_position)

    def _tensor_position(self, name: str) -> tuple[int, int]:
        if name in self.producer:
            node = self.nodes[self.producer[name]]
            return (node.index + 1, node.outputs.index(name))
        return (0, self.inputs.index(name))

    def head_outputs(self, head: int) -> list[str]:
        """Graph outputs the head computes and keeps on the device.

        Outputs made by constant nodes go with the head, unless the head is empty.
        """
        out = []
        for name in self.outputs:
            p = self.producer.get(name)
            if (p is not None and head >> p & 1) or (p is None and head):
                out.append(name)
        return out

    def spec(self, name: str) -> TensorSpec:
        return self.specs.get(name) or TensorSpec(name, "unknown", None)

    def path_through(self, tensor: str, reader: int) -> list[str]:
        """A path from a graph input through ``tensor`` and node ``reader`` to a graph output."""
        back: list[str] = [tensor]
        name = tensor
        while name in self.producer:
            node = self.nodes[self.producer[name]]
            back.append(f"[{node}]")
            if not node.reads:
                break
            name = node.reads[0]
            back.append(name)
        back.reverse()
        forward: list[str] = []
        index = reader
        outputs = set(self.outputs)
        while True:
            node = self.nodes[index]
            forward.append(f"[{node}]")
            done = next((o for o in node.outputs if o in outputs), None)
            if done is not None:
                forward.append(done)
                break
            nxt = next(
                (c for o in node.outputs for c in self.consumers.get(o, ()) if c > index), None
            )
            if nxt is None:
                break
            forward.append(next(o for o in node.outputs if nxt in self.consumers.get(o, ())))
            index = nxt
        return back + forward

    def topological_orders(self) -> list[list[int]]:
        """The model's own order and a depth-first order that finishes one branch at a time."""
        dfs: list[int] = []
        waiting = [bin(m).count("1") for m in self.pred_mask]
        succ: list[list[int]] = [[] for _ in self.nodes]
        for node in self.nodes:
            for p in members(self.pred_mask[node.index]):
                succ[p].append(node.index)
        stack = [i for i in reversed(range(len(self.nodes))) if waiting[i] == 0]
        while stack:
            i = stack.pop()
            dfs.append(i)
            for j in reversed(succ[i]):
                waiting[j] -= 1
                if waiting[j] == 0:
                    stack.append(j)
        return [list(range(len(self.nodes))), dfs]

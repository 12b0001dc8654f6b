"""Cuts of a DAG: which exist, and what crosses them.

A cut is a *head*: a set of compute nodes closed under predecessors. What it
sends are the head-made tensors and graph inputs that a tail node reads.
Graph outputs the head computes stay on the device. The empty head is the
cloud-only cut (``"cloud"``, it sends the graph inputs); the full head is the
edge-only cut (``"edge"``, it sends nothing).

:func:`enumerate_cuts` lists candidates: every prefix of two topological
orders (the model's own, and a depth-first one that finishes one branch before
the next, which finds the cuts inside residual, Inception and attention
blocks), and every cut that sends a single tensor (the cuts between blocks:
for each tensor that can cross alone, the smallest head that sends it and the
largest). Cuts are identified by ``id``: stable for a given model, ``c1``,
``c2``, … in order of head size.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from partitioner.graph import ModelGraph, bits, is_sendable, members
from runtime.artifacts import TensorSpec, total_bytes
from runtime.errors import CutError, UnsupportedModelError

CLOUD_ONLY = "cloud"
EDGE_ONLY = "edge"
DEFAULT_MAX_TENSORS = 8


@dataclass(frozen=True)
class Cut:
    """One cut: the head node set and what crosses it."""

    id: str
    head: int  # bitmask over ModelGraph.nodes
    tensors: tuple[TensorSpec, ...]
    head_outputs: tuple[str, ...]
    tail_outputs: tuple[str, ...]

    @property
    def head_nodes(self) -> int:
        return self.head.bit_count()

    @property
    def tensor_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    @property
    def bytes(self) -> int | None:
        """Bytes per sample sent across the cut, or None when a shape is unknown."""
        return total_bytes(self.tensors)

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "tensors": list(self.tensor_names),
            "dtypes": [t.dtype for t in self.tensors],
            "shapes": [None if t.shape is None else list(t.shape) for t in self.tensors],
            "bytes": self.bytes,
            "head_nodes": self.head_nodes,
            "head_outputs": list(self.head_outputs),
        }


def make_cut(graph: ModelGraph, head: int, cut_id: str) -> Cut:
    """The Cut for a predecessor-closed head set."""
    head_outputs = graph.head_outputs(head)
    return Cut(
        id=cut_id,
        head=head,
        tensors=tuple(graph.spec(t) for t in graph.crossing(head)),
        head_outputs=tuple(head_outputs),
        tail_outputs=tuple(o for o in graph.outputs if o not in head_outputs),
    )


def enumerate_cuts(
    graph: ModelGraph, *, max_tensors: int | None = DEFAULT_MAX_TENSORS
) -> list[Cut]:
    """Candidate cuts, cloud-only first and edge-only last.

    Cuts crossed by more than ``max_tensors`` tensors are left out (None keeps
    all), and so are cuts that would send a value that is not a plain typed
    tensor (a sequence, a string tensor). Ids do not depend on ``max_tensors``.
    """
    return [
        cut
        for cut in _all_cuts(graph)
        if max_tensors is None
        or len(cut.tensors) <= max_tensors
        or cut.id in (CLOUD_ONLY, EDGE_ONLY)
    ]


def left_out(graph: ModelGraph, max_tensors: int | None = DEFAULT_MAX_TENSORS) -> list[str]:
    """Why ``enumerate_cuts`` leaves cuts out, a line per reason with the count: cuts
    that would send a value that is not a typed tensor of known rank (named), and cuts
    crossed by more than ``max_tensors`` tensors."""
    reasons = []
    unsendable = _census(graph)[1]
    if unsendable:
        names = sorted({t for cut in unsendable for t in cut})
        shown = ", ".join(f"{n} ({graph.spec(n).dtype})" for n in names[:3])
        reasons.append(
            f"{len(unsendable)} cut(s) would send a value that is not a typed tensor of "
            f"known rank: {shown}{' ...' if len(names) > 3 else ''}"
        )
    if max_tensors is not None:
        wide = [c for c in _all_cuts(graph) if len(c.tensors) > max_tensors]
        wide = [c for c in wide if c.id not in (CLOUD_ONLY, EDGE_ONLY)]
        if wide:
            reasons.append(
                f"{len(wide)} cut(s) crossed by more than {max_tensors} tensors "
                "(--max-tensors 0 lists them)"
            )
    return reasons


def _all_cuts(graph: ModelGraph) -> tuple[Cut, ...]:
    return _census(graph)[0]


@functools.lru_cache(maxsize=8)
def _census(graph: ModelGraph) -> tuple[tuple[Cut, ...], tuple[frozenset[str], ...]]:
    """Every cut that can be offered, and the tensors of those that cannot."""
    if not graph.nodes:
        raise UnsupportedModelError(
            "the model has no node that depends on its inputs: there is nothing to split"
        )
    candidates = _candidate_heads(graph)
    cuts, unsendable = [], []
    for cut_id, head in _assign_ids(graph, candidates):
        crossing = candidates[head]
        bad = frozenset(t for t in crossing if not is_sendable(graph.spec(t)))
        if bad:
            unsendable.append(bad)
        else:
            cuts.append(make_cut(graph, head, cut_id))
    return tuple(cuts), tuple(unsendable)


def _candidate_heads(graph: ModelGraph) -> dict[int, frozenset[str]]:
    """Head bitmask -> names crossing it, for every candidate."""
    heads: dict[int, frozenset[str]] = {}
    for order in graph.topological_orders():
        for head, crossing in _prefix_cuts(graph, order):
            heads.setdefault(head, crossing)
    for name in (*graph.inputs, *graph.producer):
        if name not in graph.consumers:
            continue
        tail = graph.depends_on([name])
        if _reads_only(graph, tail, name):
            heads.setdefault(graph.all_mask & ~tail, frozenset([name]))
        head, _ = _smallest_head(graph, [name])
        if any(not head >> r & 1 for r in graph.consumers[name]):
            heads.setdefault(head, frozenset([name]))
    heads.setdefault(0, frozenset(graph.crossing(0)))
    heads.setdefault(graph.all_mask, frozenset())
    return heads


def _prefix_cuts(graph: ModelGraph, order: list[int]) -> list[tuple[int, frozenset[str]]]:
    """(head, crossing) for every prefix of a topological order, by an interval sweep."""
    position = {node: pos for pos, node in enumerate(order)}
    opens: list[list[str]] = [[] for _ in range(len(order) + 1)]
    closes: list[list[str]] = [[] for _ in range(len(order) + 1)]
    for name, readers in graph.consumers.items():
        p = graph.producer.get(name)
        start = 0 if p is None else position[p] + 1
        end = max(position[r] for r in readers)
        if start <= end:
            opens[start].append(name)
            closes[end].append(name)
    live: set[str] = set()
    head = 0
    result = []
    for size in range(len(order) + 1):
        live.update(opens[size])
        result.append((head, frozenset(live)))
        live.difference_update(closes[size])
        if size < len(order):
            head |= 1 << order[size]
    return result


def _reads_only(graph: ModelGraph, tail: int, name: str) -> bool:
    """Whether the nodes in ``tail`` read nothing made outside it except ``name``."""
    for i in members(tail):
        for read in graph.nodes[i].reads:
            if read == name:
                continue
            p = graph.producer.get(read)
            if p is None or not tail >> p & 1:
                return False
    return True


def _assign_ids(graph: ModelGraph, heads: dict[int, frozenset[str]]) -> list[tuple[str, int]]:
    ordered = sorted(heads, key=lambda h: (h.bit_count(), h))
    ids = []
    number = 0
    for head in ordered:
        if head == 0:
            ids.append((CLOUD_ONLY, head))
        elif head == graph.all_mask:
            ids.append((EDGE_ONLY, head))
        else:
            number += 1
            ids.append((f"c{number}", head))
    return ids


def cut_by_id(graph: ModelGraph, cut_id: str) -> Cut:
    """The enumerated cut with this id; CutError naming the known ids otherwise."""
    cuts = _all_cuts(graph)
    for cut in cuts:
        if cut.id == cut_id:
            return cut
    raise CutError(
        f"no cut {cut_id!r}: ids run from {cuts[0].id} to {cuts[-1].id} "
        f"({len(cuts)} cuts); `splitinfer cuts MODEL` lists them"
    )


def cut_from_tensors(
    graph: ModelGraph,
    names: Sequence[str],
    *,
    device_outputs: Sequence[str] = (),
    cut_id: str | None = None,
) -> Cut:
    """The cut that sends exactly ``names``; CutError if no cut does.

    The head is the smallest one that works: the nodes that compute ``names``
    (and the model outputs in ``device_outputs``, computed on the device), plus
    every node that must run on the device because it reads something made
    there that is not sent. A cut is fully given by what it sends and which
    model outputs the device computes.
    """
    names = list(dict.fromkeys(names))
    if not names:
        raise CutError("a cut needs at least one tensor (use the 'cloud' or 'edge' cut ids)")
    for name in names:
        _check_cut_tensor(graph, name)
    unknown = [o for o in device_outputs if o not in graph.outputs]
    if unknown:
        raise CutError(f"{unknown[0]!r} is not an output of the model")
    producers = bits(graph.producer[n] for n in names if n in graph.producer)
    producers |= bits(graph.producer[o] for o in device_outputs if o in graph.producer)
    redundant = _unread(graph, _ancestors(graph, producers), names)
    head, leak = _smallest_head(graph, names, producers)
    unread = _unread(graph, head, names)
    if redundant or (unread and leak is None):
        raise CutError(
            f"tensor {(redundant or unread)[0]!r} is read only on the device side of this cut "
            "(it feeds other cut tensors, not the tail): drop it from the cut"
        )
    if unread and leak is not None:
        tensor, reader = leak
        path = _short_path(graph.path_through(tensor, reader), tensor)
        raise CutError(
            f"tensors {', '.join(names)} do not separate the graph: "
            f"{graph.nodes[reader]} needs {tensor!r}, which is made on the device side but "
            f"not sent ({path}); add {tensor!r} to the cut or cut elsewhere"
        )
    cut = make_cut(graph, head, "")
    missing = [o for o in device_outputs if o not in cut.head_outputs]
    if missing:
        raise CutError(f"output {missing[0]!r} cannot be computed on the device in this cut")
    if cut_id is None:
        cut_id = _id_for_head(graph, head, [*names, "\0", *cut.head_outputs])
    return replace(cut, id=cut_id)


def _ancestors(graph: ModelGraph, nodes: int) -> int:
    mask = 0
    for i in members(nodes):
        mask |= graph.anc_mask[i]
    return mask


def _unread(graph: ModelGraph, head: int, names: Sequence[str]) -> list[str]:
    """The tensors in ``names`` that no node outside ``head`` reads."""
    return [n for n in names if all(head >> r & 1 for r in graph.consumers[n])]


def _short_path(path: list[str], tensor: str) -> str:
    """``input -> ... -> tensor -> [reader] -> ... -> output``: the ends and the leak."""
    at = path.index(tensor)
    keep = {0, at, at + 1, len(path) - 1}
    parts: list[str] = []
    for i, step in enumerate(path):
        if i in keep:
            parts.append(step)
        elif parts[-1] != "...":
            parts.append("...")
    return " -> ".join(parts)


def _smallest_head(
    graph: ModelGraph, names: Sequence[str], seeds: int | None = None
) -> tuple[int, tuple[str, int] | None]:
    """The least closed head that makes ``names`` and sends nothing else.

    A tail node that reads a head-made tensor (or a graph input) outside
    ``names`` is forced into the head, with its ancestors, until none is left;
    every valid head contains the result. Each node joins the head once, so
    this is linear in the graph. Also returns the first forced read, which
    names the leak when the result turns out not to send ``names``.
    """
    chosen = set(names)
    if seeds is None:
        seeds = bits(graph.producer[n] for n in names if n in graph.producer)
    head = _ancestors(graph, seeds)
    first_leak: tuple[str, int] | None = None
    leaked = [i for i in graph.inputs if i not in chosen]
    leaked += [o for n in members(head) for o in graph.nodes[n].outputs if o not in chosen]
    while leaked:
        tensor = leaked.pop()
        for reader in graph.consumers.get(tensor, ()):
            if head >> reader & 1:
                continue
            first_leak = first_leak or (tensor, reader)
            joined = graph.anc_mask[reader] & ~head
            head |= joined
            leaked += [
                o for n in members(joined) for o in graph.nodes[n].outputs if o not in chosen
            ]
    return head, first_leak


def _check_cut_tensor(graph: ModelGraph, name: str) -> None:
    if name in graph.constants:
        raise CutError(
            f"tensor {name!r} is a constant (a weight, or computed from weights alone): "
            "constants are copied to whichever side needs them, never sent"
        )
    if not graph.is_tensor(name):
        close = difflib.get_close_matches(name, [*graph.inputs, *graph.producer], n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise CutError(f"no tensor named {name!r} in the model{hint}")
    if name not in graph.consumers:
        what = "an input no node reads" if name in graph.inputs else "only a model output"
        raise CutError(
            f"tensor {name!r} is read by no node (it is {what}), so it cannot feed the "
            "tail; cut at the tensors it is computed from instead"
        )
    if not is_sendable(graph.spec(name)):
        raise CutError(
            f"tensor {name!r} has type {graph.spec(name).dtype}: only typed numeric tensors "
            "can cross a cut"
        )


def _id_for_head(graph: ModelGraph, head: int, names: Sequence[str]) -> str:
    for cut in _all_cuts(graph):
        if cut.head == head:
            return cut.id
    digest = hashlib.sha1("\0".join(sorted(names)).encode()).hexdigest()[:8]
    return f"x{digest}"


def resolve_cut(graph: ModelGraph, spec: str) -> Cut:
    """A ``--cut`` argument: a cut id, or a comma-separated list of tensor names.

    An exact id wins; anything else is read as tensor names.
    """
    spec = spec.strip()
    if not spec:
        raise CutError("empty --cut value: give a cut id or tensor names separated by commas")
    if "," in spec and graph.is_tensor(spec):
        return cut_from_tensors(graph, [spec])  # a tensor whose name has a comma
    if "," not in spec:
        for cut in _all_cuts(graph):
            if cut.id == spec:
                return cut
        if not graph.is_tensor(spec) and (spec in (CLOUD_ONLY, EDGE_ONLY) or _looks_like_id(spec)):
            return cut_by_id(graph, spec)
    return cut_from_tensors(graph, [s.strip() for s in spec.split(",") if s.strip()])


def _looks_like_id(spec: str) -> bool:
    return len(spec) > 1 and spec[0] in "cx" and spec[1:].isalnum()

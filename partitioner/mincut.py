"""The latency-optimal cut of a DAG under an additive cost model, as a minimum s–t cut.

The construction follows DADS (Hu et al., INFOCOM 2019). The source side of the
cut is the device, the sink side the cloud. For every compute node ``v``:

* ``s -> v`` costs what ``v`` costs when it runs in the cloud (plus sending its
  model outputs back to the device), paid when ``v`` is on the cloud side;
* ``v -> t`` costs what ``v`` costs on the device, paid when it runs there.

Every tensor ``x`` gets an auxiliary vertex ``a``: ``producer(x) -> a`` costs
sending ``x`` (encode, transfer, decode) and ``a -> reader`` is infinite for each
reader, so ``x`` is paid for once however many cloud-side nodes read it. Graph
inputs are produced by ``s``. An infinite edge ``reader -> producer`` for every
data edge keeps the device side closed under predecessors. The round trip is
not additive (paid once when anything runs in the cloud), so it is added after
the cut and compared with running everything on the device.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from partitioner.graph import ModelGraph

INF = math.inf
_EPS = 1e-12


@dataclass(frozen=True)
class CutCosts:
    """Additive costs (any unit, typically ms) for one link condition and codec.

    ``send`` has an entry for every non-constant tensor some node reads (graph
    inputs included); ``math.inf`` forbids sending it. ``receive`` has the cost
    of returning each graph output computed in the cloud.
    """

    edge: Sequence[float]
    cloud: Sequence[float]
    send: Mapping[str, float]
    receive: Mapping[str, float]
    rtt: float = 0.0


@dataclass(frozen=True)
class OptimalCut:
    head: int  # bitmask over ModelGraph.nodes: the device side
    cost: float  # predicted latency, round trip included when the tail is not empty


def head_cost(graph: ModelGraph, costs: CutCosts, head: int) -> float:
    """The additive model's latency for the device-side node set ``head``."""
    total = 0.0
    for node in graph.nodes:
        total += costs.edge[node.index] if head >> node.index & 1 else costs.cloud[node.index]
    for name in graph.crossing(head):
        total += costs.send[name]
    for name in graph.outputs:
        p = graph.producer.get(name)
        if p is not None and not head >> p & 1:
            total += costs.receive.get(name, 0.0)
    if head != graph.all_mask:
        total += costs.rtt
    return total


def optimal_cut(graph: ModelGraph, costs: CutCosts) -> OptimalCut:
    """The head with the least ``head_cost``: a minimum s–t cut, then the round trip."""
    n = len(graph.nodes)
    edge_only = OptimalCut(graph.all_mask, sum(costs.edge))
    if n == 0:
        return edge_only
    flow = _FlowNetwork(2 + n + len(graph.consumers))
    source, sink = 0, 1
    for node in graph.nodes:
        back = sum(costs.receive.get(o, 0.0) for o in node.outputs if o in graph.outputs)
        flow.add(source, 2 + node.index, costs.cloud[node.index] + back)
        flow.add(2 + node.index, sink, costs.edge[node.index])
    for offset, (name, readers) in enumerate(graph.consumers.items()):
        aux = 2 + n + offset
        producer = graph.producer.get(name)
        start = source if producer is None else 2 + producer
        flow.add(start, aux, costs.send[name])
        for reader in readers:
            flow.add(aux, 2 + reader, INF)
            if producer is not None:
                flow.add(2 + reader, 2 + producer, INF)
    value = flow.max_flow(source, sink)
    if math.isinf(value):
        return edge_only  # nothing can be sent: everything stays on the device
    reachable = flow.reachable(source)
    head = sum(1 << i for i in range(n) if reachable[2 + i])
    if head == graph.all_mask:
        return edge_only
    split = OptimalCut(head, value + costs.rtt)
    return split if split.cost < edge_only.cost else edge_only


class _FlowNetwork:
    """Dinic's maximum flow on float capacities (infinite ones allowed)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.to: list[int] = []
        self.cap: list[float] = []
        self.out: list[list[int]] = [[] for _ in range(size)]

    def add(self, u: int, v: int, capacity: float) -> None:
        if capacity < 0:
            raise ValueError(f"negative cost {capacity} in the cut model")
        self.out[u].append(len(self.to))
        self.to.append(v)
        self.cap.append(capacity)
        self.out[v].append(len(self.to))
        self.to.append(u)
        self.cap.append(0.0)

    def _levels(self, source: int, sink: int) -> list[int] | None:
        level = [-1] * self.size
        level[source] = 0
        queue = deque([source])
        while queue:
            u = queue.popleft()
            for e in self.out[u]:
                if self.cap[e] > _EPS and level[self.to[e]] < 0:
                    level[self.to[e]] = level[u] + 1
                    queue.append(self.to[e])
        return level if level[sink] >= 0 else None

    def max_flow(self, source: int, sink: int) -> float:
        total = 0.0
        while (level := self._levels(source, sink)) is not None:
            cursor = [0] * self.size
            while True:
                pushed = self._augment(source, sink, level, cursor)
                if pushed <= _EPS:
                    break
                if math.isinf(pushed):
                    return INF
                total += pushed
        return total

    def _augment(self, source: int, sink: int, level: list[int], cursor: list[int]) -> float:
        """One blocking-flow path found depth-first, without recursion."""
        path: list[int] = []
        u = source
        while True:
            if u == sink:
                pushed = min(self.cap[e] for e in path)
                for e in path:
                    self.cap[e] -= pushed
                    self.cap[e ^ 1] += pushed
                return pushed
            edges = self.out[u]
            while cursor[u] < len(edges):
                e = edges[cursor[u]]
                v = self.to[e]
                if self.cap[e] > _EPS and level[v] == level[u] + 1:
                    break
                cursor[u] += 1
            else:
                if u == source:
                    return 0.0
                level[u] = -1  # dead end: never come back here in this phase
                e = path.pop()
                u = self.to[e ^ 1]
                cursor[u] += 1
                continue
            path.append(e)
            u = v

    def reachable(self, source: int) -> list[bool]:
        seen = [False] * self.size
        seen[source] = True
        queue = deque([source])
        while queue:
            u = queue.popleft()
            for e in self.out[u]:
                if self.cap[e] > _EPS and not seen[self.to[e]]:
                    seen[self.to[e]] = True
                    queue.append(self.to[e])
        return seen

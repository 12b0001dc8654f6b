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

For a stream of frames the objective is the pipeline's slowest stage instead
(``bottleneck_cut``): the maximum of device, uplink, cloud and downlink times is
not a sum, and minimising it over closed heads is NP-hard, so it is solved by
branch and bound, seeded and bounded by min-cuts of weighted sums of the stages.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from partitioner.graph import ModelGraph, bits, members
from runtime.cost import Stages

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


# --------------------------------------------------------------------------- throughput

SEARCH_BUDGET = 200_000
# Device shares for the per-state bound max(D, C) >= m*D + (1 - m)*C.
_MIX = (0.2, 0.35, 0.5, 0.65, 0.8)
# Weights on (D, U, C, R): the simplex in halves. Each is a min-cut that seeds the
# search, and its value is a lower bound (a weighted mean never exceeds the maximum).
_WEIGHTS = tuple(
    (a / 2, b / 2, c / 2, (2 - a - b - c) / 2)
    for a in range(3)
    for b in range(3 - a)
    for c in range(3 - a - b)
)


@dataclass(frozen=True)
class StageCosts:
    """Additive costs of the pipeline's stages (any unit, typically ms) for one link and codec.

    Frames flow through the device (head, then encode), the uplink, the cloud (decode,
    then tail, spread over ``workers`` parallel workers) and the downlink at once, so
    the slowest stage sets the frame rate; the round trip is hidden by the pipeline.
    ``transfer`` has an entry for every non-constant tensor some node reads;
    ``math.inf`` there forbids sending it. ``encode`` and ``decode`` are finite.
    """

    edge: Sequence[float]
    cloud: Sequence[float]
    encode: Mapping[str, float]
    transfer: Mapping[str, float]
    decode: Mapping[str, float]
    receive: Mapping[str, float]
    workers: int = 1

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, not {self.workers}")

    def weighted(self, device: float, uplink: float, cloud: float, downlink: float) -> CutCosts:
        """The additive model of ``device*D + uplink*U + cloud*C + downlink*R``, no round trip."""
        share = cloud / self.workers
        send = {
            name: INF
            if math.isinf(cost)
            else device * self.encode[name] + uplink * cost + share * self.decode[name]
            for name, cost in self.transfer.items()
        }
        return CutCosts(
            edge=[device * e for e in self.edge],
            cloud=[share * c for c in self.cloud],
            send=send,
            receive={name: downlink * r for name, r in self.receive.items()},
        )


@dataclass(frozen=True)
class BottleneckCut:
    """The search's answer: a head, its stages, and whether it is proven the best."""

    head: int  # bitmask over ModelGraph.nodes: the device side
    stages: Stages
    proven: bool  # False: the search budget ran out, this is the best head found
    visited: int  # search states visited

    @property
    def value(self) -> float:
        return self.stages.bottleneck_ms


def head_stages(graph: ModelGraph, costs: StageCosts, head: int) -> Stages:
    """The stages of the device-side node set ``head``."""
    tail = graph.all_mask & ~head
    crossing = graph.crossing(head)
    returned = [o for o in graph.outputs if o in graph.producer and tail >> graph.producer[o] & 1]
    return Stages(
        device_ms=sum(costs.edge[i] for i in members(head))
        + sum(costs.encode[x] for x in crossing),
        uplink_ms=sum(costs.transfer[x] for x in crossing),
        cloud_ms=(
            sum(costs.cloud[i] for i in members(tail)) + sum(costs.decode[x] for x in crossing)
        )
        / costs.workers,
        downlink_ms=sum(costs.receive.get(o, 0.0) for o in returned),
    )


def bottleneck_cut(
    graph: ModelGraph, costs: StageCosts, *, budget: int = SEARCH_BUDGET
) -> BottleneckCut:
    """The head with the least bottleneck stage, ``max(D, U, C, R)`` of ``head_stages``.

    Exact when ``proven``: the problem is NP-hard on general DAGs (PARTITION reduces to
    it: independent nodes with equal device and cloud costs and free tensors), so no
    single min-cut solves it. Branch and bound over predecessor-closed heads, seeded
    with scalarised min-cuts, returns the best head found when it has visited
    ``budget`` states without finishing, with ``proven`` False.
    """
    if budget < 1:
        raise ValueError(f"the search budget must be at least 1 state, not {budget}")
    search = _BottleneckSearch(graph, costs)
    seed, lower = search.seed()
    head, proven, visited = search.run(seed, lower, budget)
    return BottleneckCut(head, head_stages(graph, costs, head), proven, visited)


class _BottleneckSearch:
    """Branch and bound: nodes are decided in topological order. A node joins the head
    only when its producers have (they come first, and excluding a node excludes every
    descendant at once), so every state is a closed head plus the nodes sent to the
    cloud. Stage sums over what is decided are lower bounds, pruned against the best
    head found; undecided nodes add the cheaper of their device and cloud shares to a
    mixed bound ``m*D + (1 - m)*C``."""

    def __init__(self, graph: ModelGraph, costs: StageCosts) -> None:
        self.graph = graph
        self.costs = costs
        names = list(graph.consumers)
        tensor = {name: k for k, name in enumerate(names)}
        self.encode = [costs.encode[x] for x in names]
        self.transfer = [costs.transfer[x] for x in names]
        self.decode = [costs.decode[x] for x in names]
        self.readers = [bits(graph.consumers[x]) for x in names]
        self.producer = [graph.producer.get(x, -1) for x in names]  # -1: a graph input
        self.reads = [[tensor[x] for x in node.reads] for node in graph.nodes]
        self.made = [[tensor[x] for x in node.outputs if x in tensor] for node in graph.nodes]
        outputs = set(graph.outputs)
        self.receive = [
            sum(costs.receive.get(o, 0.0) for o in node.outputs if o in outputs)
            for node in graph.nodes
        ]
        self.inverse = 1.0 / costs.workers
        self.shares = [
            tuple(min(m * e, (1.0 - m) * c * self.inverse) for m in _MIX)
            for e, c in zip(costs.edge, costs.cloud, strict=True)
        ]

    def value(self, head: int) -> float:
        return head_stages(self.graph, self.costs, head).bottleneck_ms

    def seed(self) -> tuple[int, float]:
        """The best of edge-only, cloud-only and the scalarised min-cuts; and a lower bound."""
        heads = {0, self.graph.all_mask}
        lower = 0.0
        for weights in _WEIGHTS:
            found = optimal_cut(self.graph, self.costs.weighted(*weights))
            heads.add(found.head)
            lower = max(lower, found.cost)
        return min(heads, key=lambda h: (self.value(h), h)), lower

    def run(self, seed: int, lower: float, budget: int) -> tuple[int, bool, int]:
        """(best head, whether it is proven optimal, states visited)."""
        n = len(self.graph.nodes)
        best_head, best = seed, self.value(seed)
        rest = tuple(sum(s[k] for s in self.shares) for k in range(len(_MIX)))
        stack = [_State(0, 0, 0, 0.0, 0.0, 0.0, 0.0, rest)]
        visited = 0
        while stack and best > lower:
            if visited == budget:
                return best_head, False, visited
            visited += 1
            state = stack.pop()
            pos = state.pos
            while pos < n and state.cloud >> pos & 1:
                pos += 1
            cloud_ms = state.cloud_work * self.inverse
            exact = max(state.device, state.uplink, cloud_ms, state.downlink)
            if pos == n:
                if exact < best:
                    best_head, best = state.head, exact
                continue
            mixed = max(
                m * state.device + (1.0 - m) * cloud_ms + s
                for m, s in zip(_MIX, state.undecided, strict=True)
            )
            if max(exact, mixed) >= best:
                continue
            include, exclude = self._include(state, pos), self._exclude(state, pos)
            if best_head >> pos & 1:  # follow the best head first: the seeds are often close
                stack += (exclude, include)
            else:
                stack += (include, exclude)
        return best_head, True, visited

    def _include(self, state: _State, v: int) -> _State:
        """Node ``v`` on the device: its outputs that cloud nodes already read are sent."""
        device, uplink, work = state.device + self.costs.edge[v], state.uplink, state.cloud_work
        for x in self.made[v]:
            if self.readers[x] & state.cloud:
                device += self.encode[x]
                uplink += self.transfer[x]
                work += self.decode[x]
        undecided = _minus(state.undecided, self.shares[v])
        return _State(
            v + 1, state.head | 1 << v, state.cloud, device, uplink, work, state.downlink, undecided
        )

    def _exclude(self, state: _State, v: int) -> _State:
        """Node ``v`` and all it feeds in the cloud: what they read from the head is sent."""
        added = self.graph.desc_mask[v] & ~state.cloud
        device, uplink, work = state.device, state.uplink, state.cloud_work
        downlink, undecided = state.downlink, state.undecided
        sent: dict[int, None] = {}
        for i in members(added):
            work += self.costs.cloud[i]
            downlink += self.receive[i]
            undecided = _minus(undecided, self.shares[i])
            for x in self.reads[i]:
                p = self.producer[x]
                if (p < 0 or state.head >> p & 1) and not self.readers[x] & state.cloud:
                    sent.setdefault(x)
        for x in sent:
            device += self.encode[x]
            uplink += self.transfer[x]
            work += self.decode[x]
        return _State(
            v + 1, state.head, state.cloud | added, device, uplink, work, downlink, undecided
        )


class _State(NamedTuple):
    """A node of the search: nodes before ``pos`` are decided, and so is ``cloud``."""

    pos: int
    head: int
    cloud: int
    device: float  # stage sums over what is decided
    uplink: float
    cloud_work: float  # all workers' work: the cloud stage times ``workers``
    downlink: float
    undecided: tuple[float, ...]  # per _MIX share, the undecided nodes' least addition


def _minus(left: tuple[float, ...], right: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(a - b for a, b in zip(left, right, strict=True))

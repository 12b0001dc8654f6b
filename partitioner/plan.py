"""The cost model and the planner: which cut and codec for a device, a cloud and a link.

For one request, cut *c* and codec *k* (DESIGN.md)::

    T = edge(head_c) + enc_k + bytes_k(c) / uplink + RTT + cloud(tail_c) + dec_k
        + bytes(outputs of the tail) / downlink

with the edge profile's head and encode times and the cloud profile's tail and
decode times. Edge-only pays only edge(full model); cloud-only has no head.

Every profiled candidate is priced from its measurements. On top, for each
lossless codec, a minimum s–t cut (partitioner.mincut) finds the optimum of
the additive model over *every* cut of the DAG, with per-node costs taken from
nested profiled heads; a cut it finds that was not profiled joins the
candidates, priced by the additive model and marked so.

For a stream of frames (``objective="throughput"``) the same parts form a
pipeline: the device (head and encode), the uplink, the cloud (decode and tail,
over the server's workers) and the downlink work on different frames at once,
so the frame rate is 1000 / (the slowest stage in ms), and the round trip, which
the pipeline hides, is no stage. The additive model's best cut for that is a
branch and bound (``partitioner.mincut.bottleneck_cut``).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from partitioner.cuts import CLOUD_ONLY, EDGE_ONLY, Cut, cut_from_tensors, enumerate_cuts
from partitioner.graph import ModelGraph, members
from partitioner.mincut import CutCosts, StageCosts, bottleneck_cut, optimal_cut
from partitioner.profile import Profile
from partitioner.split import model_sha256
from runtime import cost
from runtime.artifacts import read_json
from runtime.codec import Codec, CodecSpec
from runtime.cost import CALL_FIELDS, Breakdown, CallCosts, Link, Parts, Stages
from runtime.errors import CodecError, CutError, PlanError, ProfileError
from runtime.power import PowerModel

PLAN_FORMAT = 1
PLAN_KIND = "splitinfer-plan"
SWEEP_UPLINKS_MBIT = tuple(round(10 ** (e / 10), 4) for e in range(-10, 31))  # 0.1 .. 1000
SWEEP_RTTS_MS = (5.0, 20.0, 40.0, 100.0)

Objective = Literal["latency", "throughput", "energy"]
OBJECTIVES: tuple[Objective, ...] = ("latency", "throughput", "energy")
# energy + weight x latency (mJ + ms), for candidates that trade energy for time when
# a deadline or an energy cap is set (each is an additive model: one min-cut)
TRADE_WEIGHTS = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0)


# --------------------------------------------------------------------------- predictions


@dataclass(frozen=True, kw_only=True)
class Prediction(Breakdown):
    """The cost model's breakdown for one (cut, codec), per request, in ms
    (runtime.cost.Breakdown), and what the planner knows of the candidate."""

    cut: str
    codec: str
    tensors: tuple[str, ...]
    bytes: float  # the tensors' payloads, encoded
    error: float | None = None  # relative L2 error of the outputs, for lossy codecs
    source: str = "measured"  # or "min-cut": priced by the additive model
    cloud_workers: int = 1  # the server's parallel workers, which share the cloud stage
    energy_mj: float | None = None  # the device's energy, with a power model
    parts: Parts | None = field(default=None, repr=False, compare=False)  # what was priced

    @property
    def stages(self) -> Stages:
        """Per frame, each stage of the pipeline (edge-only: all of it on the device)."""
        return cost.stages(self, self.cloud_workers)

    @property
    def predicted_fps(self) -> float:
        """Frames per second a pipeline sustains: paced by the slowest stage."""
        slowest = self.stages.bottleneck_ms
        return 1000.0 / slowest if slowest > 0 else math.inf

    def to_json(self, objective: Objective = "latency") -> dict[str, Any]:
        data = {**asdict(self), "predicted_ms": self.total_ms}
        del data["parts"], data["answer_ms"], data["penalty_ms"]  # the device's alone
        if self.energy_mj is None:
            del data["energy_mj"]
        if objective != "throughput":
            del data["cloud_workers"]  # only the pipeline's stages depend on it
            return data
        return {**data, "predicted_fps": self.predicted_fps, "stages": asdict(self.stages)}


@dataclass(frozen=True, kw_only=True)
class Constraints:
    """What the user allows: codec names (None: all profiled), the output error bound
    for lossy codecs (0: lossless only), and whether raw inputs may leave the device."""

    codecs: frozenset[str] | None = None
    max_error: float = 0.0
    keep_input_on_device: bool = False
    deadline_ms: float | None = None  # no candidate predicted slower than this
    max_energy_mj: float | None = None  # nor spending more of the device's energy


@dataclass(frozen=True)
class Choice:
    """The planner's answer: the best prediction, every candidate, and why."""

    best: Prediction
    candidates: tuple[Prediction, ...]
    link: Link
    reason: str
    objective: Objective = "latency"

    def to_json(self) -> dict[str, Any]:
        best: dict[str, Any] = {
            "cut": self.best.cut,
            "codec": self.best.codec,
            "predicted_ms": self.best.total_ms,
        }
        if self.objective == "throughput":
            best["predicted_fps"] = self.best.predicted_fps
            best["stages"] = asdict(self.best.stages)
        if self.best.energy_mj is not None:
            best["predicted_mj"] = self.best.energy_mj
        return {
            "objective": self.objective,
            "best": best,
            "link": asdict(self.link),
            "reason": self.reason,
            "candidates": [c.to_json(self.objective) for c in self.candidates],
        }


class Planner:
    """Prices cuts from an edge and a cloud profile of one model; ``cloud_workers`` is
    how many requests the server runs at once, which matters to throughput only."""

    def __init__(
        self,
        graph: ModelGraph,
        edge: Profile,
        cloud: Profile,
        *,
        cloud_workers: int = 1,
        power: PowerModel | None = None,
    ) -> None:
        if cloud_workers < 1:
            raise ValueError(f"cloud_workers must be at least 1, not {cloud_workers}")
        self.power = power  # prices every candidate's device energy when given
        self.graph = graph
        self.edge = edge
        self.cloud = cloud
        self.cloud_workers = cloud_workers
        # a call's own time and bytes, as the cloud profile measured them
        self.call = CallCosts.from_json({name: getattr(cloud, name) for name in CALL_FIELDS})
        # bottleneck heads by (codec, uplink, downlink, keep_input_on_device): a sweep
        # asks for the same link at every RTT, and the RTT is no stage
        self._bottleneck_heads: dict[tuple[str, float, float | None, bool], int] = {}
        # every cut of the model by id; min-cut cuts join it as they are found
        self.cuts = {c.id: c for c in enumerate_cuts(graph, max_tensors=None)}
        self._check_profiles()
        self.profiled = [c.id for c in edge.cuts]  # the same cuts as the cloud's (checked)
        self.edge_nodes = node_costs(graph, edge, self.cuts, side="head")
        self.cloud_nodes = node_costs(graph, cloud, self.cuts, side="tail")

    def _found_cut(self, cut_id: str, tensors: Sequence[str]) -> Cut | None:
        """A profiled cut that the enumeration does not list (one a min-cut found, then
        profiled): the cut that sends ``tensors``, when its id is ``cut_id``."""
        if not tensors:
            return None
        try:
            cut = cut_from_tensors(self.graph, tensors)
        except CutError:
            return None
        if cut.id != cut_id:
            return None
        self.cuts[cut.id] = cut
        return cut

    def _check_profiles(self) -> None:
        sha = model_sha256(self.graph.model)
        for profile in (self.edge, self.cloud):
            if profile.sha256 != sha:
                raise ProfileError(
                    f"the {profile.device} profile was taken of another model "
                    f"({profile.model}, sha256 {profile.sha256[:12]}…): profile {self.graph.name}"
                )
        if {c.id for c in self.edge.cuts} != {c.id for c in self.cloud.cuts}:
            raise ProfileError(
                "the edge and cloud profiles measured different cuts: profile both with the "
                "same settings"
            )
        if self.edge.batch != self.cloud.batch:
            raise ProfileError(
                f"the profiles use different batch sizes ({self.edge.batch} and "
                f"{self.cloud.batch}): profile both with the same --batch"
            )
        for profile in (self.edge, self.cloud):
            for cut in profile.cuts:
                known = self.cuts.get(cut.id) or self._found_cut(cut.id, cut.tensors)
                if known is None or known.tensor_names != cut.tensors:
                    raise ProfileError(
                        f"the {profile.device} profile's cut {cut.id} does not match the model's "
                        "cuts: profile this model again"
                    )
        for required in (CLOUD_ONLY, EDGE_ONLY):
            for profile in (self.edge, self.cloud):
                if required not in {c.id for c in profile.cuts}:
                    raise ProfileError(f"the {profile.device} profile lacks the {required!r} cut")

    # ---- pricing

    def codec_labels(self, constraints: Constraints) -> list[str]:
        labels = list(dict.fromkeys(k for c in self.edge.cuts for k in c.codecs))
        if constraints.codecs is None:
            return labels
        wanted = set()
        for name in constraints.codecs:
            try:
                wanted.add(Codec.parse(name))
            except CodecError as exc:
                raise PlanError(exc.message) from None
        return [label for label in labels if CodecSpec.parse(label).codec in wanted]

    def price(self, cut: Cut, label: str, link: Link) -> Prediction | None:
        """Any cut of the model priced with one codec: from its own measurements when it
        was profiled, else by the additive model (a lossless codec only)."""
        if cut.id in self.profiled:
            return self.predict(cut.id, label, link)
        if CodecSpec.parse(label).codec.lossy:
            return None
        for profile in (self.edge, self.cloud):
            if any(label not in profile.tensors.get(t, {}) for t in cut.tensor_names):
                return None
        return self._additive_prediction(cut, label, link)

    def predict(self, cut_id: str, label: str, link: Link) -> Prediction | None:
        """A measured cut priced with one codec; None when the codec cannot carry it."""
        parts = self.parts(cut_id, label)
        if parts is None:
            return None
        if cut_id == EDGE_ONLY:
            return self._prediction(cut_id, "-", parts, link)
        error = None
        if CodecSpec.parse(label).codec.lossy:
            edge, cloud = self.edge.cut(cut_id), self.cloud.cut(cut_id)
            measured = [p.errors[label].rel_l2 for p in (edge, cloud) if label in p.errors]
            error = max(measured) if measured else math.inf
        return self._prediction(cut_id, label, parts, link, error=error)

    def parts(self, cut_id: str, label: str) -> Parts | None:
        """What one request through a measured cut takes with one codec, from the two
        profiles (what the cost model prices on a link); None when the codec cannot
        carry it. Edge-only takes any label."""
        edge, cloud = self.edge.cut(cut_id), self.cloud.cut(cut_id)
        if cut_id == EDGE_ONLY:
            return Parts(edge_ms=self.edge.full_ms.median_ms, edge_cold_ms=self.edge.cold_ms)
        up, down = edge.codecs.get(label), cloud.codecs.get(label)
        if up is None or down is None:
            return None
        return Parts(
            edge_ms=0.0 if edge.head_ms is None else edge.head_ms.median_ms,
            encode_ms=up.encode_ms,
            sent_bytes=up.bytes,
            tensors=edge.tensors,
            cloud_ms=0.0 if cloud.tail_ms is None else cloud.tail_ms.median_ms,
            decode_ms=down.decode_ms,
            output_bytes=cloud.output_bytes,
            edge_cold_ms=0.0 if edge.head_ms is None else self.edge.cold_ms,
            cloud_cold_ms=0.0 if cloud.tail_ms is None else self.cloud.cold_ms,
        )

    def _prediction(
        self,
        cut_id: str,
        label: str,
        parts: Parts,
        link: Link,
        *,
        error: float | None = None,
        source: str = "measured",
    ) -> Prediction:
        """``parts`` priced on ``link`` (runtime.cost), with the device's energy when
        there is a power model."""
        priced = cost.price(parts, link, self.call)
        energy = None if self.power is None else cost.energy_mj(self.power, priced, link)
        return Prediction(
            **{f.name: getattr(priced, f.name) for f in fields(Breakdown)},
            cut=cut_id,
            codec=label,
            tensors=parts.tensors,
            bytes=parts.sent_bytes,
            error=error,
            source=source,
            cloud_workers=self.cloud_workers,
            energy_mj=energy,
            parts=parts,
        )

    def call_cost(self, link: Link, tensors: int) -> float:
        """What a split call of ``tensors`` tensors costs beyond the RTT, its compute and
        its bytes: the link's figures, or the cloud profile's (measured on loopback)."""
        return self.call.ms(link, tensors)

    def allowed(self, prediction: Prediction, constraints: Constraints) -> bool:
        if constraints.keep_input_on_device and set(prediction.tensors) & set(self.graph.inputs):
            return False
        if constraints.deadline_ms is not None and prediction.total_ms > constraints.deadline_ms:
            return False
        cap = constraints.max_energy_mj
        if cap is not None and (prediction.energy_mj is None or prediction.energy_mj > cap):
            return False
        return prediction.error is None or prediction.error <= constraints.max_error

    def candidates(
        self,
        link: Link,
        constraints: Constraints = Constraints(),
        objective: Objective = "latency",
    ) -> list[Prediction]:
        """Every allowed (cut, codec): measured ones, and per lossless codec the additive
        model's best cut for ``objective``."""
        _check_objective(objective)
        self._check_power(objective, constraints)
        labels = self.codec_labels(constraints)
        if objective != "throughput":  # one request is sent alone: a delta codec's frame is a key
            labels = [k for k in labels if not CodecSpec.parse(k).codec.delta]
        if not labels:
            profiled = dict.fromkeys(k for c in self.edge.cuts for k in c.codecs)
            raise PlanError(
                f"none of the codecs {sorted(constraints.codecs or [])} is in the profiles; "
                f"they have: {', '.join(profiled)}"
            )
        found = []
        for cut_id in self.profiled:
            for label in labels if cut_id != EDGE_ONLY else ["-"]:
                prediction = self.predict(cut_id, label, link)
                if prediction is not None and self.allowed(prediction, constraints):
                    found.append(prediction)
        heads = {self.cuts[p.cut].head for p in found if p.cut in self.cuts}
        found += self._min_cut_candidates(link, labels, constraints, heads, objective)
        return found

    def _min_cut_candidates(
        self,
        link: Link,
        labels: Sequence[str],
        constraints: Constraints,
        known: set[int],
        objective: Objective,
    ) -> list[Prediction]:
        extra = []
        for label in labels:
            if CodecSpec.parse(label).codec.lossy:
                continue  # their error is only known at profiled cuts
            if objective == "throughput":
                heads = [self._bottleneck_head(link, label, constraints)]
            else:
                heads = [
                    optimal_cut(self.graph, costs).head
                    for costs in self._additive_models(link, label, constraints, objective)
                ]
            for head in dict.fromkeys(heads):  # each head once for this codec
                if head in known or head in (0, self.graph.all_mask):
                    continue
                cut = cut_from_tensors(
                    self.graph,
                    self.graph.crossing(head),
                    device_outputs=self.graph.head_outputs(head),
                )
                self.cuts.setdefault(cut.id, cut)
                prediction = self._additive_prediction(cut, label, link)
                if self.allowed(prediction, constraints):
                    extra.append(prediction)
        return extra

    def _additive_models(
        self, link: Link, label: str, constraints: Constraints, objective: Objective
    ) -> list[CutCosts]:
        """The additive models whose minimum cuts are candidates: the objective's own
        (exact without a deadline or an energy cap); with one, also energy + w x latency
        for TRADE_WEIGHTS, the cuts that trade one for the other."""
        latency = self.cut_costs(link, label, constraints)
        if self.power is None:
            return [latency]
        energy = self.energy_costs(link, label, constraints)
        models = [energy if objective == "energy" else latency]
        if constraints.deadline_ms is not None or constraints.max_energy_mj is not None:
            models += [_combined(energy, latency, w) for w in TRADE_WEIGHTS]
            models.append(energy if objective != "energy" else latency)
        return models

    def energy_costs(self, link: Link, label: str, constraints: Constraints) -> CutCosts:
        """The additive model of the device's energy (mJ) for one codec: its compute
        while it runs nodes and encodes, its radio while it sends and receives, its idle
        power while the cloud decodes and runs nodes and during the round trip."""
        power = self.power
        if power is None:
            raise PlanError("the energy objective needs a power model (--power)")
        stages = self.stage_costs(link, label, constraints)
        up_w = power.uplink_w(link.uplink_bps / 1e6)
        down_w = power.downlink_w(link.downlink_rate / 1e6)
        each = self.call_cost(link, 1) - self.call_cost(link, 0)
        send = {
            name: power.compute_w * stages.encode[name]
            + up_w * transfer
            + power.idle_w * (stages.decode[name] + each)
            for name, transfer in stages.transfer.items()
        }
        return CutCosts(
            [power.compute_w * t for t in stages.edge],
            [power.idle_w * t for t in stages.cloud],
            send,
            {o: down_w * t for o, t in stages.receive.items()},
            power.idle_w * (link.rtt_ms + self.call_cost(link, 0) + self.cloud.cold_ms)
            + power.compute_w * self.edge.cold_ms
            + up_w * link.up_ms(self.call.call_bytes)
            + down_w * link.down_ms(self.call.answer_bytes),
        )

    def _check_power(self, objective: Objective, constraints: Constraints) -> None:
        if self.power is None and (objective == "energy" or constraints.max_energy_mj is not None):
            raise PlanError(
                "the energy objective and energy caps need the device's power model: "
                "--power POWER.json, or a radio preset: lte, 3g, wifi"
            )

    def _bottleneck_head(self, link: Link, label: str, constraints: Constraints) -> int:
        key = (label, link.uplink_bps, link.downlink_bps, constraints.keep_input_on_device)
        if key not in self._bottleneck_heads:
            costs = self.stage_costs(link, label, constraints)
            self._bottleneck_heads[key] = bottleneck_cut(self.graph, costs).head
        return self._bottleneck_heads[key]

    def cut_costs(self, link: Link, label: str, constraints: Constraints) -> CutCosts:
        """The additive model of latency for one codec."""
        stages = self.stage_costs(link, label, constraints)
        each = self.call_cost(link, 1) - self.call_cost(link, 0)
        send = {
            name: stages.encode[name] + transfer + stages.decode[name] + each
            for name, transfer in stages.transfer.items()
        }
        # paid once, like the round trip: the call, and each side's run after idling (the
        # min-cut's heads all run on both sides)
        rtt = link.rtt_ms + self.call_cost(link, 0) + self.edge.cold_ms + self.cloud.cold_ms
        # and the call's own bytes, both ways, beyond each tensor's
        rtt += link.up_ms(self.call.call_bytes) + link.down_ms(self.call.answer_bytes)
        return CutCosts(stages.edge, stages.cloud, send, stages.receive, rtt)

    def stage_costs(self, link: Link, label: str, constraints: Constraints) -> StageCosts:
        """The additive model of the pipeline's stages for one codec; a tensor that lacks
        measurements, or may not leave the device, costs infinity to send."""
        encode, transfer, decode = {}, {}, {}
        for name in self.graph.consumers:
            up = self.edge.tensors.get(name, {}).get(label)
            down = self.cloud.tensors.get(name, {}).get(label)
            if up is None or down is None:
                encode[name], transfer[name], decode[name] = 0.0, math.inf, 0.0
                continue
            forbidden = constraints.keep_input_on_device and name in self.graph.inputs
            encode[name], decode[name] = up.encode_ms, down.decode_ms
            sent = up.bytes + self.call.tensor_wire_bytes(name)
            transfer[name] = math.inf if forbidden else link.up_ms(sent)
        receive = {o: link.down_ms(self._output_bytes(o)) for o in self.graph.outputs}
        return StageCosts(
            self.edge_nodes,
            self.cloud_nodes,
            encode,
            transfer,
            decode,
            receive,
            workers=self.cloud_workers,
        )

    def _output_bytes(self, name: str) -> float:
        size = self.graph.spec(name).bytes_per_sample()
        return float(size or 0) * self.edge.batch

    def _additive_prediction(self, cut: Cut, label: str, link: Link) -> Prediction:
        head = cut.head  # neither empty nor the whole model: both sides run
        ups = [self.edge.tensors[t][label] for t in cut.tensor_names]
        downs = [self.cloud.tensors[t][label] for t in cut.tensor_names]
        parts = Parts(
            edge_ms=sum(self.edge_nodes[i] for i in members(head)),
            encode_ms=sum(p.encode_ms for p in ups),
            sent_bytes=sum(p.bytes for p in ups),
            tensors=cut.tensor_names,
            cloud_ms=sum(self.cloud_nodes[i] for i in members(self.graph.all_mask & ~head)),
            decode_ms=sum(p.decode_ms for p in downs),
            output_bytes=sum(self._output_bytes(o) for o in cut.tail_outputs),
            edge_cold_ms=self.edge.cold_ms,
            cloud_cold_ms=self.cloud.cold_ms,
        )
        return self._prediction(cut.id, label, parts, link, source="min-cut")

    def choose(
        self,
        link: Link,
        constraints: Constraints = Constraints(),
        objective: Objective = "latency",
    ) -> Choice:
        """The allowed candidate with the least predicted latency, or for ``"throughput"``
        the most frames per second (of equals, the least latency)."""
        candidates = sorted(self.candidates(link, constraints, objective), key=_ranking(objective))
        if not candidates:
            raise PlanError("no cut is allowed under these constraints")
        best = candidates[0]
        if objective == "throughput":
            reason = _throughput_reason(best, candidates)
        elif objective == "energy":
            reason = _energy_reason(best, candidates)
        else:
            reason = _reason(best, candidates)
        return Choice(best, tuple(candidates), link, reason, objective)


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(
            f"unknown objective {objective!r}: expected one of {', '.join(OBJECTIVES)}"
        )


def _cost(objective: Objective) -> Callable[[Prediction], float]:
    """What ``objective`` minimises: latency, or the slowest stage's time a frame."""
    if objective == "throughput":
        return lambda p: p.stages.bottleneck_ms
    if objective == "energy":
        return lambda p: math.inf if p.energy_mj is None else p.energy_mj
    return lambda p: p.total_ms


def _combined(energy: CutCosts, latency: CutCosts, weight: float) -> CutCosts:
    """energy + weight x latency, as one additive model."""

    def mix(a: float, b: float) -> float:
        return a + weight * b

    return CutCosts(
        [mix(a, b) for a, b in zip(energy.edge, latency.edge, strict=True)],
        [mix(a, b) for a, b in zip(energy.cloud, latency.cloud, strict=True)],
        {k: mix(v, latency.send[k]) for k, v in energy.send.items()},
        {k: mix(v, latency.receive[k]) for k, v in energy.receive.items()},
        mix(energy.rtt, latency.rtt),
    )


def _energy_reason(best: Prediction, candidates: Sequence[Prediction]) -> str:
    assert best.energy_mj is not None
    parts = [
        f"{best.cut} with {best.codec} is predicted to spend the least device energy, "
        f"{best.energy_mj:.1f} mJ ({best.total_ms:.1f} ms)"
    ]
    for side, cut in (("running it all on the device", EDGE_ONLY), ("cloud-only", CLOUD_ONLY)):
        others = [c.energy_mj for c in candidates if c.cut == cut and c.energy_mj is not None]
        if others and best.cut != cut and best.energy_mj > 0:
            parts.append(f"{min(others) / best.energy_mj:.2f}x less than {side}")
    return "; ".join(parts)


def _ranking(objective: Objective) -> Callable[[Prediction], tuple[float, float]]:
    """Sort key, best first: the objective's cost, then latency."""
    cost = _cost(objective)
    return lambda p: (cost(p), p.total_ms)


def _throughput_reason(best: Prediction, candidates: Sequence[Prediction]) -> str:
    stages = best.stages
    parts = [f"{best.cut} with {best.codec} is predicted to sustain {best.predicted_fps:.1f} fps"]
    if stages.bottleneck_ms <= 0:
        return parts[0]
    for side, others in (
        ("running it all on the device", [c for c in candidates if c.cut == EDGE_ONLY]),
        ("cloud-only", [c for c in candidates if c.cut == CLOUD_ONLY]),
    ):
        if others and best.cut != others[0].cut:
            slowest = min(c.stages.bottleneck_ms for c in others)
            parts.append(f"{slowest / stages.bottleneck_ms:.2f}x the frame rate of {side}")
    parts.append(
        f"its bottleneck is the {stages.bottleneck} stage ({stages.bottleneck_ms:.1f} ms a frame)"
    )
    return "; ".join(parts)


def _reason(best: Prediction, candidates: Sequence[Prediction]) -> str:
    local = next((c for c in candidates if c.cut == EDGE_ONLY), None)
    cloud = min(
        (c for c in candidates if c.cut == CLOUD_ONLY), key=lambda c: c.total_ms, default=None
    )
    parts = [f"{best.cut} with {best.codec} is predicted fastest at {best.total_ms:.1f} ms"]
    if best.total_ms <= 0:
        return parts[0]
    if best.cut != EDGE_ONLY and local is not None:
        parts.append(
            f"{local.total_ms / best.total_ms:.2f}x faster than running it all on the device"
        )
    if best.cut != CLOUD_ONLY and cloud is not None:
        parts.append(f"{cloud.total_ms / best.total_ms:.2f}x faster than cloud-only")
    if best.cut not in (EDGE_ONLY, CLOUD_ONLY):
        biggest = max(
            ("device compute", best.edge_ms + best.edge_cold_ms),
            ("transfer", best.transfer_ms + best.encode_ms + best.decode_ms),
            ("cloud compute", best.cloud_ms + best.cloud_cold_ms),
            ("round trip", best.rtt_ms),
            key=lambda kv: kv[1],
        )
        parts.append(f"its largest part is {biggest[0]} ({biggest[1]:.1f} ms)")
    return "; ".join(parts)


# --------------------------------------------------------------------------- per-node costs


def node_costs(
    graph: ModelGraph, profile: Profile, cuts: dict[str, Cut], *, side: str
) -> list[float]:
    """Additive per-node times for one side, from the profiled heads that are
    prefixes of the model's node order.

    The time one prefix adds to the next (head side), or removes (tail side), is
    spread evenly over the nodes it adds; a profile with every prefix (cuts
    crossed by many tensors included) gives each node its own time.
    """
    prefixes = {(1 << k) - 1 for k in range(len(graph.nodes) + 1)}
    timed = {}
    for cut in profile.cuts:
        head = cuts[cut.id].head
        if head not in prefixes:
            continue
        timing = cut.head_ms if side == "head" else cut.tail_ms
        if cut.id == EDGE_ONLY and side == "head":
            timing = profile.full_ms
        timed[head] = 0.0 if timing is None else timing.median_ms
    timed.setdefault(0, 0.0 if side == "head" else profile.full_ms.median_ms)
    timed.setdefault(graph.all_mask, profile.full_ms.median_ms if side == "head" else 0.0)
    chain = sorted(timed.items())
    costs = [0.0] * len(graph.nodes)
    for (before, t0), (after, t1) in itertools.pairwise(chain):
        added = members(after & ~before)
        step = max(0.0, (t1 - t0) if side == "head" else (t0 - t1))
        for i in added:
            costs[i] = step / len(added)
    return costs


# --------------------------------------------------------------------------- sweeps and plans


@dataclass(frozen=True)
class Segment:
    """Over ``[uplink_from, uplink_to]`` Mbit/s at one RTT, this (cut, codec) is best."""

    rtt_ms: float
    uplink_from_mbit: float
    uplink_to_mbit: float
    cut: str
    codec: str
    predicted_ms: float  # at uplink_from


@dataclass(frozen=True)
class Plan:
    """What the runtime needs: a few cuts, and which one to use on which link."""

    model: str
    sha256: str
    constraints: dict[str, Any]
    cuts: tuple[dict[str, Any], ...]  # {"id", "tensors", "device_outputs", "codecs", "cloud_ms"}
    segments: tuple[Segment, ...]
    default: dict[str, Any] = field(default_factory=dict)
    objective: Objective = "latency"  # what the segments' choices optimise

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "kind": PLAN_KIND,
            "model": self.model,
            "sha256": self.sha256,
            "objective": self.objective,
            "constraints": self.constraints,
            "cuts": list(self.cuts),
            "segments": [asdict(s) for s in self.segments],
            "default": self.default,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")


def sweep(
    planner: Planner,
    constraints: Constraints = Constraints(),
    *,
    objective: Objective = "latency",
    uplinks_mbit: Sequence[float] = SWEEP_UPLINKS_MBIT,
    rtts_ms: Sequence[float] = SWEEP_RTTS_MS,
    downlink_bps: float | None = None,
    tolerance: float = 0.03,
    default: Link | None = None,
) -> Plan:
    """The best (cut, codec) for ``objective`` over a grid of links, reduced to few cuts.

    A cut is dropped while every grid point can still be served by the kept
    cuts within ``tolerance`` of its best latency (for throughput, of its best
    slowest stage); edge-only is always kept. Segment boundaries are where the
    two neighbouring choices cost the same, solved from the cost model, not
    rounded to the grid.
    """
    _check_objective(objective)
    rank = _ranking(objective)
    grid: dict[tuple[float, float], list[Prediction]] = {}
    for rtt in rtts_ms:
        for up in uplinks_mbit:
            link = Link(up * 1e6, rtt, downlink_bps)
            grid[(rtt, up)] = sorted(planner.candidates(link, constraints, objective), key=rank)
    kept = {p.cut for options in grid.values() for p in options[:1]} | {EDGE_ONLY}
    kept = _prune(grid, kept, tolerance, _cost(objective))
    segments: list[Segment] = []
    for rtt in rtts_ms:
        runs: list[tuple[float, Prediction]] = []  # (uplink, best) where the best changes
        for up in uplinks_mbit:
            best = next(p for p in grid[(rtt, up)] if p.cut in kept)
            if not runs or (runs[-1][1].cut, runs[-1][1].codec) != (best.cut, best.codec):
                runs.append((up, best))
        ends = [
            _crossover_for(objective, planner.power, a, up_a, b, up_b, downlink_bps)
            for (up_a, a), (up_b, b) in itertools.pairwise(runs)
        ]
        starts = [uplinks_mbit[0], *ends]
        stops = [*ends, uplinks_mbit[-1]]
        for (_, best), start, stop in zip(runs, starts, stops, strict=True):
            segments.append(Segment(rtt, start, stop, best.cut, best.codec, best.total_ms))
    cloud_ms = {p.cut: p.cloud_ms + p.cloud_cold_ms for options in grid.values() for p in options}
    # what each (cut, codec) takes, for the device to price as the planner does
    parts: dict[str, dict[str, Parts]] = {}
    for options in grid.values():
        for p in options:
            if p.parts is not None:
                parts.setdefault(p.cut, {})[p.codec] = p.parts
    cuts = []
    for cut in sorted((planner.cuts[c] for c in kept), key=lambda c: c.head_nodes):
        cuts.append(
            {
                "id": cut.id,
                "tensors": list(cut.tensor_names),
                "device_outputs": list(cut.head_outputs),
                "codecs": sorted({s.codec for s in segments if s.cut == cut.id}),
                "cloud_ms": cloud_ms.get(cut.id, 0.0),  # the tail's predicted server time
                "parts": {k: v.to_json() for k, v in sorted(parts.get(cut.id, {}).items())},
            }
        )
    default_json: dict[str, Any] = {}
    if default is not None:  # the best for the default link among the cuts kept
        options = sorted(planner.candidates(default, constraints, objective), key=rank)
        best = next(p for p in options if p.cut in kept)
        default_json = {
            "link": asdict(default),
            "cut": best.cut,
            "codec": best.codec,
            "predicted_ms": best.total_ms,
        }
        if objective == "throughput":
            default_json["predicted_fps"] = best.predicted_fps
            default_json["stages"] = asdict(best.stages)
        if best.energy_mj is not None:
            default_json["predicted_mj"] = best.energy_mj
    settings: dict[str, Any] = {
        "codecs": sorted(constraints.codecs) if constraints.codecs else None,
        "max_error": constraints.max_error,
        "keep_input_on_device": constraints.keep_input_on_device,
        "tolerance": tolerance,
    }
    if objective == "throughput":
        settings["cloud_workers"] = planner.cloud_workers
    if planner.power is not None:
        settings["power"] = planner.power.to_json()
    for name in ("deadline_ms", "max_energy_mj"):
        if getattr(constraints, name) is not None:
            settings[name] = getattr(constraints, name)
    settings["call"] = planner.call.to_json()
    return Plan(
        model=planner.graph.name,
        sha256=model_sha256(planner.graph.model),
        constraints=settings,
        cuts=tuple(cuts),
        segments=tuple(segments),
        default=default_json,
        objective=objective,
    )


def _crossover_for(
    objective: Objective,
    power: PowerModel | None,
    a: Prediction,
    up_a: float,
    b: Prediction,
    up_b: float,
    downlink_bps: float | None,
) -> float:
    if objective == "throughput":
        return _stage_crossover(a, up_a, b, up_b, downlink_bps)
    if objective == "energy" and power is not None:
        return _energy_crossover(power, a, up_a, b, up_b, downlink_bps)
    return _crossover(a, up_a, b, up_b, downlink_bps)


def _energy_crossover(
    power: PowerModel,
    a: Prediction,
    up_a: float,
    b: Prediction,
    up_b: float,
    downlink_bps: float | None,
) -> float:
    """The uplink (Mbit/s) where ``a`` and ``b`` spend the same energy. Each energy is
    ``fixed + slope / uplink``: the radio's base power times the transfer time scales
    with 1/uplink (its part proportional to the rate, times a time inversely
    proportional to it, does not), and so does the return when the downlink follows."""
    base_w = power.radio_base_mw / 1000.0

    def line(p: Prediction, up: float) -> tuple[float, float]:
        scaled = base_w * (p.transfer_ms + (p.return_ms if downlink_bps is None else 0.0))
        return (p.energy_mj or 0.0) - scaled, scaled * up

    return _meeting(line(a, up_a), line(b, up_b), up_a, up_b)


def _crossover(
    a: Prediction, up_a: float, b: Prediction, up_b: float, downlink_bps: float | None
) -> float:
    """The uplink (Mbit/s) where ``a`` (best at ``up_a``) and ``b`` (at ``up_b``) cost the same.

    Each total is ``fixed + slope / uplink``: transfer time (and the return, when
    the downlink follows the uplink) scales with 1/uplink, the rest does not.
    """

    def line(p: Prediction, up: float) -> tuple[float, float]:
        scaled = p.transfer_ms + (p.return_ms if downlink_bps is None else 0.0)
        return p.total_ms - scaled, scaled * up

    return _meeting(line(a, up_a), line(b, up_b), up_a, up_b)


def _meeting(a: tuple[float, float], b: tuple[float, float], up_a: float, up_b: float) -> float:
    """Where two costs ``fixed + slope / uplink``, given as (fixed, slope), are equal
    between ``up_a`` and ``up_b``; the geometric middle when they do not meet there."""
    (fa, sa), (fb, sb) = a, b
    if fb != fa:
        crossing = (sa - sb) / (fb - fa)
        if up_a <= crossing <= up_b:
            return crossing
    return math.sqrt(up_a * up_b)  # not linear between the grid points: split the gap


def _stage_crossover(
    a: Prediction, up_a: float, b: Prediction, up_b: float, downlink_bps: float | None
) -> float:
    """The uplink (Mbit/s) where ``a`` (best at ``up_a``) and ``b`` (at ``up_b``) have
    equally slow slowest stages.

    Each slowest stage is ``max(fixed, slope / uplink)``: the uplink stage (and the
    downlink, when it follows the uplink) scales with 1/uplink, the others do not; two
    such curves meet where one's fixed part equals the other's scaled part.
    """

    def curve(p: Prediction, up: float) -> tuple[float, float]:
        s = p.stages
        follows = downlink_bps is None
        scaled = max(s.uplink_ms, s.downlink_ms if follows else 0.0)
        fixed = max(s.device_ms, s.cloud_ms, 0.0 if follows else s.downlink_ms)
        return fixed, scaled * up

    (fa, sa), (fb, sb) = curve(a, up_a), curve(b, up_b)
    for fixed, slope in ((fa, sb), (fb, sa)):
        if fixed > 0 and up_a <= slope / fixed <= up_b:
            crossing = slope / fixed
            if math.isclose(max(fa, sa / crossing), max(fb, sb / crossing), rel_tol=1e-9):
                return crossing
    return math.sqrt(up_a * up_b)  # no single meeting point: split the gap


def _prune(
    grid: dict[Any, list[Prediction]],
    kept: set[str],
    tolerance: float,
    cost: Callable[[Prediction], float],
) -> set[str]:
    def worst_regret(cuts: set[str]) -> float:
        regret = 0.0
        for options in grid.values():
            best = cost(options[0])
            mine = next((cost(p) for p in options if p.cut in cuts), math.inf)
            regret = max(regret, mine / best - 1.0 if best > 0 else 0.0)
        return regret

    while True:
        trial = [(worst_regret(kept - {c}), c) for c in sorted(kept) if c != EDGE_ONLY]
        trial = [t for t in trial if t[0] <= tolerance]
        if not trial:
            return kept
        kept = kept - {min(trial)[1]}


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, found {value!r}")
    return list(value)


def load_plan(path: str | Path, graph: ModelGraph | None = None) -> Plan:
    """Read a PLAN.json; with ``graph``, check it was made for that model."""
    path = Path(path)
    raw = read_json(path, "plan", PlanError)
    if (
        not isinstance(raw, dict)
        or raw.get("kind") != PLAN_KIND
        or raw.get("format") != PLAN_FORMAT
    ):
        raise PlanError(f"{path}: not a splitinfer plan (format {PLAN_FORMAT})")
    try:
        plan = Plan(
            model=str(raw["model"]),
            sha256=str(raw["sha256"]),
            constraints=dict(raw["constraints"]),
            cuts=tuple(
                {
                    "id": str(c["id"]),
                    "tensors": _strings(c["tensors"]),
                    "device_outputs": _strings(c.get("device_outputs", [])),
                    "codecs": _strings(c["codecs"]),
                    "cloud_ms": _milliseconds(c.get("cloud_ms", 0.0)),
                    # older plans: none (the device then measures what it can)
                    "parts": {
                        str(k): Parts.from_json(v).to_json()
                        for k, v in dict(c.get("parts", {})).items()
                    },
                }
                for c in raw["cuts"]
            ),
            segments=tuple(Segment(**s) for s in raw["segments"]),
            default=dict(raw.get("default", {})),
            objective=_objective(raw.get("objective", "latency")),  # older plans: latency
        )
    except Exception as exc:  # any shape of JSON can come in
        raise PlanError(f"{path}: malformed plan: missing or bad field {exc}") from exc
    _check_plan(plan, path)
    if graph is not None and plan.sha256 != model_sha256(graph.model):
        raise PlanError(
            f"{path} was made for another model ({plan.model}); plan {graph.name} again"
        )
    return plan


def _objective(value: Any) -> Objective:
    for known in OBJECTIVES:
        if value == known:
            return known
    raise ValueError(f"objective {value!r} (expected {' or '.join(OBJECTIVES)})")


def _milliseconds(value: Any) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"cloud_ms {value!r}")
    return float(value)


def _check_plan(plan: Plan, path: Path) -> None:
    ids = [c["id"] for c in plan.cuts]
    if not ids:
        raise PlanError(f"{path}: the plan names no cut")
    if len(set(ids)) != len(ids):
        raise PlanError(f"{path}: cut ids appear twice")
    for entry in plan.cuts:
        for key in ("tensors", "device_outputs", "codecs"):
            if not isinstance(entry[key], list):
                raise PlanError(f"{path}: cut {entry['id']}: {key} must be a list")
    for segment in plan.segments:
        if segment.cut not in ids:
            raise PlanError(f"{path}: a segment uses cut {segment.cut!r}, which the plan lacks")
        numbers = (segment.rtt_ms, segment.uplink_from_mbit, segment.uplink_to_mbit)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in numbers):
            raise PlanError(f"{path}: segment links must be finite non-negative numbers")
    default = plan.default.get("cut")
    if default is not None and default not in ids:
        raise PlanError(f"{path}: the default cut {default!r} is not among the plan's cuts")


def plan_cuts(graph: ModelGraph, plan: Plan) -> list[Cut]:
    """The cuts a plan names, resolved on the model (ids, else the tensors they send)."""
    known = {c.id: c for c in enumerate_cuts(graph, max_tensors=None)}
    cuts = []
    for entry in plan.cuts:
        cut = known.get(entry["id"])
        same = cut is not None and list(cut.tensor_names) == entry["tensors"]
        if not (same and cut is not None and list(cut.head_outputs) == entry["device_outputs"]):
            if not entry["tensors"]:
                raise PlanError(f"plan cut {entry['id']!r} is not a cut of this model")
            cut = cut_from_tensors(
                graph, entry["tensors"], device_outputs=entry["device_outputs"], cut_id=entry["id"]
            )
        cuts.append(cut)
    return cuts

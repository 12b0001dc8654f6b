"""What the planner and the profiler print: tables, a plot, and the prediction check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from partitioner.cuts import enumerate_cuts
from partitioner.graph import ModelGraph
from partitioner.plan import Choice, Prediction
from partitioner.profile import Profile, ProfileOptions, Timing, profile_model

TABLE_ROWS = 15
COMPONENTS = (
    ("device", "edge_ms"),
    ("encode", "encode_ms"),
    ("uplink", "transfer_ms"),
    ("RTT", "rtt_ms"),
    ("cloud", "cloud_ms"),
    ("decode", "decode_ms"),
    ("downlink", "return_ms"),
)


def best_per_cut(candidates: Sequence[Prediction]) -> list[Prediction]:
    """The best codec of each cut, best cut first, by the order of ``candidates`` (a
    Choice's are ranked by its objective)."""
    best: dict[str, Prediction] = {}
    for p in candidates:
        best.setdefault(p.cut, p)
    return list(best.values())


def format_choice(choice: Choice, rows: int = TABLE_ROWS) -> str:
    """The candidates (best codec per cut) with the predicted breakdown; the best marked."""
    fps = choice.objective == "throughput"
    energy = any(p.energy_mj is not None for p in choice.candidates)
    extra = (["fps"] if fps else []) + (["mJ"] if energy else [])
    header = ["", "cut", "codec", *(n for n, _ in COMPONENTS), "total ms", *extra, "KiB", "note"]
    lines = [header]
    shown = best_per_cut(choice.candidates)[:rows]
    for p in shown:
        values = ([f"{p.predicted_fps:.1f}"] if fps else []) + (
            [f"{p.energy_mj:.2f}" if p.energy_mj is not None else "-"] if energy else []
        )
        note = "min-cut, additive model" if p.source == "min-cut" else ""
        if p.error is not None:
            note = (note + "; " if note else "") + f"output error {p.error:.2g}"
        lines.append(
            [
                "*" if p is choice.best or p == choice.best else "",
                p.cut,
                p.codec,
                *(f"{getattr(p, attr):.2f}" for _, attr in COMPONENTS),
                f"{p.total_ms:.2f}",
                *values,
                f"{p.bytes / 1024:.1f}",
                note,
            ]
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = [
        "  ".join(
            cell.ljust(widths[i]) if i in (0, 1, 2, len(header) - 1) else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in lines
    ]
    total = len({p.cut for p in choice.candidates})
    if total > len(shown):
        text.append(f"({total - len(shown)} cuts ranked lower not shown; --json lists all)")
    text.append(f"link: {choice.link.describe()}")
    text.append(f"best: {choice.reason}")
    return "\n".join(text)


def plot_choice(choice: Choice, path: Path, rows: int = 20) -> None:
    """A PNG: predicted latency per cut (best codec each), stacked by component."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'splitinfer[plot]'") from None
    shown = best_per_cut(choice.candidates)[:rows]
    labels = [f"{p.cut} ({p.codec})" for p in shown]
    figure, axes = plt.subplots(figsize=(9, 0.35 * len(shown) + 1.5))
    left = np.zeros(len(shown))
    for name, attr in COMPONENTS:
        values = np.array([getattr(p, attr) for p in shown])
        axes.barh(labels, values, left=left, label=name)
        left += values
    axes.invert_yaxis()
    axes.set_xlabel("predicted latency per request (ms)")
    axes.set_title(f"{choice.link.describe()}; best: {choice.best.cut} ({choice.best.codec})")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@dataclass(frozen=True)
class CheckRow:
    cut: str
    predicted_head: float | None
    measured_head: float | None
    predicted_tail: float | None
    measured_tail: float | None

    def errors(self) -> list[float]:
        """Relative errors |predicted - measured| / measured of the sides that exist."""
        out = []
        for p, m in (
            (self.predicted_head, self.measured_head),
            (self.predicted_tail, self.measured_tail),
        ):
            if p is not None and m:
                out.append(abs(p - m) / m)
        return out


def check_profile(
    graph: ModelGraph, profile: Profile, feeds: Mapping[str, np.ndarray], *, repeats: int = 15
) -> list[CheckRow]:
    """Measure the profile's cuts again, the same way, and pair the numbers."""
    known = {c.id: c for c in enumerate_cuts(graph, max_tensors=None)}
    cuts = [known[c.id] for c in profile.cuts if c.id in known]
    options = ProfileOptions(
        device=profile.device,
        threads=profile.threads,
        slowdown=profile.slowdown,
        batch=profile.batch,
        repeats=repeats,
        codecs=(),
    )
    again = profile_model(graph, feeds, options, cuts=cuts, progress=False)
    measured = {c.id: c for c in again.cuts}
    rows = []
    for cut in profile.cuts:
        now = measured.get(cut.id)
        if now is None:
            continue
        rows.append(
            CheckRow(
                cut.id,
                _median(cut.head_ms),
                _median(now.head_ms),
                _median(cut.tail_ms),
                _median(now.tail_ms),
            )
        )
    return rows


def _median(t: Timing | None) -> float | None:
    return None if t is None else t.median_ms


def format_check(rows: Sequence[CheckRow]) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [f"{'cut':<8} {'head pred':>10} {'head meas':>10} {'tail pred':>10} {'tail meas':>10}"]
    for r in rows:
        lines.append(
            f"{r.cut:<8} {cell(r.predicted_head):>10} {cell(r.measured_head):>10} "
            f"{cell(r.predicted_tail):>10} {cell(r.measured_tail):>10}"
        )
    errors = [e for r in rows for e in r.errors()]
    if errors:
        lines.append(
            f"median |error| {np.median(errors):.1%} over {len(errors)} head and tail times "
            f"(90th percentile {np.percentile(errors, 90):.1%})"
        )
    return "\n".join(lines)

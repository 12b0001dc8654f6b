"""Check that every cut of an artifact directory recomposes to the full model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.artifacts import Manifest
from runtime.engine import CutRunner, SessionOptions, example_feeds, make_session, run_session

EXACT = SessionOptions(optimize=False)


@dataclass(frozen=True)
class Verdict:
    """One cut's check: bit-exact or not, and the largest absolute difference."""

    cut: str
    exact: bool
    max_abs_diff: float


def verify_artifacts(
    directory: str | Path,
    manifest: Manifest,
    feeds: Mapping[str, np.ndarray] | None = None,
    *,
    reference: str | Path | None = None,
) -> list[Verdict]:
    """Run ``reference`` (the model file the user gave; the normalized full model by
    default) and head -> tail of every cut on ``feeds`` (example inputs by default)
    with graph optimizations and prepacking off, and compare outputs.

    In that mode every node runs the same kernel on the same input on both
    paths, so anything but bit-exact equality is a defect.
    """
    root = Path(directory)
    feeds = dict(feeds) if feeds is not None else example_feeds(manifest.inputs, batch=2)
    expected = run_session(make_session(reference or root / manifest.full, EXACT), feeds)
    verdicts = []
    for cut in manifest.cuts:
        got = CutRunner(root, manifest, cut, EXACT).run(feeds)
        exact, worst = True, 0.0
        for name, want in expected.items():
            same, diff = _compare(got[name], want)
            exact &= same
            worst = max(worst, diff)
        verdicts.append(Verdict(cut.id, exact, worst))
    return verdicts


def _compare(got: object, want: object) -> tuple[bool, float]:
    if isinstance(want, np.ndarray) and isinstance(got, np.ndarray):
        if got.shape != want.shape or got.dtype != want.dtype:
            return False, float("inf")
        same = bool(np.array_equal(got, want, equal_nan=want.dtype.kind in "fc"))
        if want.dtype.kind in "fc" and want.size:
            return same, float(np.nanmax(np.abs(got.astype(np.float64) - want)))
        return same, 0.0 if same else float("inf")
    same = got == want
    return same, 0.0 if same else float("inf")

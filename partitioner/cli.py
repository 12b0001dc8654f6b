"""The ``splitinfer`` command line.

Bad input (a missing file, a file that is not ONNX, an unknown cut or tensor, a
cut that does not separate the graph) prints one line to stderr and exits 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import typing
from collections.abc import Sequence, Sized
from pathlib import Path
from typing import Any

from partitioner.cuts import DEFAULT_MAX_TENSORS, Cut, enumerate_cuts, left_out, resolve_cut
from partitioner.graph import ModelGraph
from partitioner.split import write_artifacts
from runtime.artifacts import Manifest
from runtime.errors import SplitInferError
from runtime.power import load_power
from runtime.units import parse_address, parse_duration_ms, parse_rate

EXIT_BAD_INPUT = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``splitinfer`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except (SplitInferError, ValueError, OSError) as exc:
        message = exc.message if isinstance(exc, SplitInferError) else str(exc)
        print(f"splitinfer: error: {_one_line(message)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a defect, not bad input: still one line, no traceback
        print(
            f"splitinfer: internal error: {type(exc).__name__}: {_one_line(str(exc))[:300]} "
            "(please report this with the command and model)",
            file=sys.stderr,
        )
        return 1


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("splitinfer")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _count(items: Sized, noun: str) -> str:
    return f"{len(items)} {noun}" + ("" if len(items) == 1 else "s")


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2, and every
    option's help shows its default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Defaults)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Defaults(argparse.HelpFormatter):
    """Help that ends with the default, when there is one worth saying and the text
    does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default in (None, False, argparse.SUPPRESS, []) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="splitinfer",
        description="Split a neural network into a device head and a cloud tail.",
    )
    parser.add_argument("--version", action="version", version=f"splitinfer {_version()}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    cuts = commands.add_parser("cuts", help="list the candidate cuts of an ONNX model")
    cuts.add_argument("model", metavar="MODEL.onnx", help="the ONNX model")
    cuts.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    cuts.add_argument(
        "--max-tensors",
        type=int,
        default=DEFAULT_MAX_TENSORS,
        metavar="N",
        help="leave out cuts crossed by more than N tensors "
        f"(default {DEFAULT_MAX_TENSORS}; 0: no limit)",
    )
    cuts.set_defaults(run=_cmd_cuts)

    split = commands.add_parser("split", help="write head and tail models for cuts")
    split.add_argument("model", metavar="MODEL.onnx", help="the ONNX model")
    split.add_argument(
        "--cut",
        action="append",
        default=[],
        metavar="ID|T1,T2,...",
        help="a cut id from `splitinfer cuts`, or the tensors to send, comma-separated; repeatable",
    )
    split.add_argument(
        "--plan", type=Path, metavar="PLAN.json", help="write the cuts a `plan --sweep` chose"
    )
    split.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="the artifact directory to write"
    )
    split.add_argument(
        "--no-verify",
        action="store_true",
        help="skip running head -> tail against the full model on example inputs",
    )
    split.set_defaults(run=_cmd_split)

    export = commands.add_parser("export", help="export a PyTorch module to ONNX")
    export.add_argument(
        "factory", metavar="MODULE:FACTORY", help="e.g. mypkg.nets:resnet18 or nets.py:build"
    )
    export.add_argument(
        "--input-shape",
        action="append",
        required=True,
        metavar="1x3x224x224",
        help="shape of the example input; repeat for a model with several inputs",
    )
    export.add_argument(
        "--out", required=True, type=Path, metavar="MODEL.onnx", help="the ONNX file to write"
    )
    export.add_argument("--static-batch", action="store_true", help="keep the batch size fixed")
    export.add_argument(
        "--opset", type=int, default=None, help="ONNX opset (default: the exporter's)"
    )
    export.set_defaults(run=_cmd_export)

    profile = commands.add_parser("profile", help="measure every candidate cut on this machine")
    profile.add_argument("model", metavar="MODEL.onnx", help="the ONNX model")
    profile.add_argument(
        "--out", required=True, type=Path, metavar="PROFILE.json", help="the profile to write"
    )
    profile.add_argument("--device", default="edge", help="a name for this device (default edge)")
    profile.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    profile.add_argument(
        "--slowdown", type=float, default=1.0, metavar="K", help="emulate a device K times slower"
    )
    source = profile.add_mutually_exclusive_group()
    source.add_argument("--calib", type=Path, metavar="DIR", help="calibration inputs (.npy)")
    source.add_argument("--samples", type=int, default=4, help="example inputs (default 4)")
    profile.add_argument("--batch", type=int, default=1, help="samples per request (default 1)")
    profile.add_argument(
        "--repeats", type=int, default=15, help="timed runs per model (default 15)"
    )
    profile.add_argument(
        "--providers",
        default="cpu",
        help="ONNX Runtime execution providers in order of preference, e.g. cuda,cpu or "
        "cuda:1,cpu (a device id)",
    )
    profile.add_argument(
        "--frames",
        metavar="DIR|still",
        default=None,
        help="also measure the delta codecs on a stream's frames: a directory of .npy files, "
        "one frame each in name order, or 'still' (a generated still camera)",
    )
    profile.add_argument(
        "--no-call-cost",
        action="store_true",
        help="do not measure what a split call itself costs on loopback (gRPC and the hops "
        "at both ends; about 2 s), which the planner adds to every split",
    )
    profile.add_argument(
        "--max-tensors", type=int, default=DEFAULT_MAX_TENSORS, metavar="N", help=argparse.SUPPRESS
    )
    profile.set_defaults(run=_cmd_profile)

    plan = commands.add_parser("plan", help="choose the cut and codec for a link")
    plan.add_argument("model", metavar="MODEL.onnx", help="the ONNX model")
    plan.add_argument(
        "--edge", required=True, type=Path, metavar="EDGE.json", help="the device's profile"
    )
    plan.add_argument(
        "--cloud", required=True, type=Path, metavar="CLOUD.json", help="the server's profile"
    )
    plan.add_argument("--uplink", default="10mbit", help="e.g. 10mbit, 1.5gbit (default 10mbit)")
    plan.add_argument("--rtt", default="40ms", help="round-trip time, e.g. 40ms (default 40ms)")
    plan.add_argument("--downlink", default=None, help="default: as fast as the uplink")
    plan.add_argument("--codecs", default=None, help="allowed codecs, comma-separated")
    plan.add_argument(
        "--protocol",
        choices=("splitinfer", "kserve"),
        default="splitinfer",
        help="what the cloud speaks: kserve (Triton, KServe) carries raw tensors only",
    )
    plan.add_argument(
        "--max-error",
        type=float,
        default=0.0,
        help="allow lossy codecs whose output error (relative L2) is at most this (default 0)",
    )
    plan.add_argument("--keep-input-on-device", action="store_true", help="never send raw inputs")
    plan.add_argument(
        "--objective",
        choices=("latency", "throughput", "energy"),
        default="latency",
        help="latency: the fastest single request; throughput: the most frames per second "
        "of a stream, whose head, uplink, tail and downlink overlap (its slowest stage sets "
        "the pace, the round trip is hidden); energy: the least device energy (needs --power)",
    )
    plan.add_argument(
        "--power",
        metavar="POWER.json|lte|3g|wifi",
        default=None,
        help="the device's power model: a JSON file (compute_w, idle_w, uplink_mw_per_mbit, "
        "downlink_mw_per_mbit, radio_base_mw), or a radio preset with example device figures; "
        "every candidate then has its energy",
    )
    plan.add_argument(
        "--deadline-ms",
        default=None,
        metavar="MS",
        help="no plan predicted slower than this (e.g. with --objective energy)",
    )
    plan.add_argument(
        "--max-energy-mj",
        default=None,
        metavar="MJ",
        help="no plan predicted to spend more device energy than this (needs --power)",
    )
    plan.add_argument(
        "--cloud-workers",
        type=int,
        default=None,
        metavar="N",
        help="requests the server runs at once, sharing the cloud stage (with --objective "
        "throughput; default 1)",
    )
    plan.add_argument("--json", action="store_true", help="print JSON instead of a table")
    plan.add_argument("--plot", type=Path, metavar="OUT.png", help="predicted latency per cut")
    plan.add_argument("--sweep", action="store_true", help="plan over many links (needs --out)")
    plan.add_argument("--out", type=Path, metavar="PLAN.json", help="where --sweep writes the plan")
    plan.set_defaults(run=_cmd_plan)

    check = commands.add_parser(
        "check-profile", help="re-measure the cuts and compare with a profile's numbers"
    )
    check.add_argument("model", metavar="MODEL.onnx", help="the ONNX model")
    check.add_argument(
        "--profile", required=True, type=Path, metavar="PROFILE.json", help="the profile to check"
    )
    check.add_argument("--samples", type=int, default=4, help="example inputs (default 4)")
    check.add_argument("--calib", type=Path, metavar="DIR", help="calibration inputs (.npy)")
    check.set_defaults(run=_cmd_check_profile)

    serve = commands.add_parser("serve", help="serve the tails of artifact directories")
    serve.add_argument(
        "directories", nargs="+", metavar="DIR", type=Path, help="artifact directories"
    )
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    serve.add_argument("--port", type=int, default=50051, help="0 takes a free port")
    serve.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve TLS: certificate")
    serve.add_argument("--tls-key", type=Path, metavar="PEM", help="serve TLS: private key")
    serve.add_argument("--client-ca", type=Path, metavar="PEM", help="require client certificates")
    serve.add_argument("--token-file", type=Path, metavar="FILE", help="require this bearer token")
    serve.add_argument("--max-concurrent", type=int, default=2, help="tails running at once")
    serve.add_argument("--max-queued", type=int, default=32, help="waiting requests beyond that")
    serve.add_argument(
        "--exact",
        action="store_true",
        help="run tails without ONNX Runtime's graph optimizations (bit-exact answers)",
    )
    serve.add_argument(
        "--providers",
        default="cpu",
        help="ONNX Runtime execution providers for the tails, in order of preference: "
        "cpu, cuda, tensorrt..., e.g. cuda,cpu or cuda:1,cpu (a device id)",
    )
    serve.add_argument(
        "--protocols",
        default="splitinfer,kserve",
        help="splitinfer (splitinfer.v1), kserve (KServe v2, as Triton), or both (default)",
    )
    serve.add_argument(
        "--max-batch",
        type=int,
        default=32,
        help="the most samples in one request and one tail run: the tails' max_batch_size "
        "(default 32)",
    )
    serve.add_argument(
        "--no-batching", action="store_true", help="run each request alone (no dynamic batching)"
    )
    serve.add_argument(
        "--max-memory",
        type=int,
        default=1024,
        metavar="MiB",
        help="what requests may make the server hold at once: requests, decoded tensors, "
        "unsent answers, stream chunks (default 1024); beyond it, RESOURCE_EXHAUSTED",
    )
    serve.add_argument(
        "--max-message",
        type=int,
        default=4,
        metavar="MiB",
        help="the largest request message (default 4, as gRPC's); larger tensors stream in "
        "chunks. gRPC holds the server's event loop about 1.3 ms per MiB to take one in",
    )
    serve.add_argument(
        "--batch-delay-ms",
        type=float,
        default=2.0,
        help="at most this long a forming batch waits for more requests when busy",
    )
    serve.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics (0: a free port)"
    )
    serve.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="also serve KServe v2 REST (HTTP/JSON) on this port (0: a free port)",
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="S",
        help="on SIGTERM, seconds running calls have to finish; then running tails are "
        "stopped (default 5)",
    )
    serve.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="where the metrics listen (default 127.0.0.1, whatever --host is)",
    )
    serve.add_argument(
        "--metrics-open",
        action="store_true",
        help="serve the metrics without the bearer token (with --token-file they need it)",
    )
    serve.set_defaults(run=_cmd_serve)

    triton = commands.add_parser(
        "export-triton", help="write a Triton model repository of a directory's tails"
    )
    triton.add_argument("directory", metavar="DIR", type=Path, help="an artifact directory")
    triton.add_argument(
        "--out", required=True, type=Path, metavar="REPO", help="the repository to write"
    )
    triton.add_argument("--max-batch", type=int, default=32, help="max_batch_size (default 32)")
    triton.add_argument(
        "--batch-delay-ms", type=float, default=2.0, help="dynamic batching's max queue delay"
    )
    triton.set_defaults(run=_cmd_export_triton)

    infer = commands.add_parser("infer", help="run a model split between here and a server")
    infer.add_argument("directory", metavar="DIR", type=Path, help="the artifact directory")
    infer.add_argument("--target", required=True, metavar="HOST:PORT", help="the server")
    infer.add_argument(
        "--protocol",
        choices=("splitinfer", "kserve"),
        default="splitinfer",
        help="the server's protocol: kserve for Triton or KServe (raw tensors only)",
    )
    infer.add_argument(
        "--input", action="append", required=True, metavar="NAME=FILE.npy", help="repeatable"
    )
    infer.add_argument("--cut", default=None, help="a cut id of DIR (default: the plan's)")
    infer.add_argument(
        "--codec",
        default=None,
        help="e.g. raw, zstd+shuffle, int8+zstd (default: raw; with --adaptive, auto: "
        "per request the fastest of the codecs the plan chose for the cut)",
    )
    infer.add_argument("--out", type=Path, metavar="OUT.npz", help="save the outputs")
    infer.add_argument("--json", action="store_true", help="print the timing breakdown as JSON")
    infer.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    infer.add_argument("--token-file", type=Path, metavar="FILE", help="send this bearer token")
    infer.add_argument("--tls-ca", type=Path, metavar="PEM", help="trust this CA (enables TLS)")
    infer.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate (mTLS)")
    infer.add_argument("--tls-key", type=Path, metavar="PEM", help="client key (mTLS)")
    infer.add_argument(
        "--adaptive", action="store_true", help="choose local or a cut per request (EdgeRuntime)"
    )
    infer.add_argument("--deadline-ms", type=float, default=200.0, help="with --adaptive")
    infer.add_argument("--repeat", type=int, default=1, help="run the request N times")
    infer.add_argument(
        "--slowdown", type=float, default=1.0, help="with --adaptive: emulate a slower device"
    )
    infer.set_defaults(run=_cmd_infer)

    linkem = commands.add_parser(
        "linkem",
        help="emulate a slow or failing link in front of a server (a TCP proxy)",
        description="A TCP proxy that shapes rate, delay and jitter, and cuts and restores the "
        "link on command: type set up=2mbit | cut reset | cut hang | restore | quit.",
    )
    from runtime.device.linkem import add_arguments as linkem_arguments

    linkem_arguments(linkem)
    linkem.set_defaults(run=_cmd_linkem)

    demo = commands.add_parser(
        "demo", help="the whole system on MobileNetV2 and real photos, over an emulated link"
    )
    demo.add_argument("--model", type=Path, default=None, metavar="MODEL.onnx", help="your model")
    demo.add_argument("--out", type=Path, default=None, metavar="DIR", help="keep the files in DIR")
    demo.add_argument("--requests", type=int, default=8, help="requests per phase (default 8)")
    demo.add_argument("--quick", action="store_true", help="3 requests per phase")
    demo.add_argument("--slowdown", type=float, default=8.0, help="device slowdown (default 8)")
    demo.set_defaults(run=_cmd_demo)
    return parser


def _cmd_cuts(args: argparse.Namespace) -> int:
    graph = ModelGraph.load(args.model)
    limit = None if args.max_tensors <= 0 else args.max_tensors
    cuts = enumerate_cuts(graph, max_tensors=limit)
    if args.json:
        print(json.dumps([c.to_json() for c in cuts], indent=2))
    else:
        print(format_cuts(cuts))
        for reason in left_out(graph, limit):
            print(f"left out: {reason}")
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from partitioner.plan import load_plan, plan_cuts

    graph = ModelGraph.load(args.model)
    if not args.cut and args.plan is None:
        raise ValueError("give --cut ID (repeatable) or --plan PLAN.json")
    cuts = [resolve_cut(graph, spec) for spec in args.cut]
    plan = None
    if args.plan is not None:
        plan = load_plan(args.plan, graph)
        cuts += plan_cuts(graph, plan)
    manifest = write_artifacts(graph, cuts, args.out, plan=None if plan is None else plan.to_json())
    for cut in manifest.cuts:
        sends = ", ".join(t.name for t in cut.tensors) or "nothing"
        print(f"{cut.id}: head={cut.head or '-'} tail={cut.tail or '-'} sends {sends}")
    print(f"wrote {args.out / 'manifest.json'}")
    return 0 if args.no_verify else _verify(args.out, manifest, args.model)


def _verify(directory: Path, manifest: Manifest, original: str) -> int:
    from partitioner.verify import verify_artifacts

    try:
        verdicts = verify_artifacts(directory, manifest, reference=original)
    except Exception as exc:  # the model may need real inputs (token ids in range, ...)
        print(
            f"splitinfer: warning: not verified: the model does not run on example inputs "
            f"({_one_line(str(exc))[:200]})",
            file=sys.stderr,
        )
        return 0
    wrong = [v for v in verdicts if not v.exact]
    for verdict in wrong:
        print(
            f"splitinfer: error: cut {verdict.cut} differs from the full model "
            f"(max |diff| {verdict.max_abs_diff:.3g}); please report this with the model",
            file=sys.stderr,
        )
    if not wrong:
        print(
            f"verified: head -> tail equals the full model bit for bit ({_count(verdicts, 'cut')})"
        )
    return 1 if wrong else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from partitioner.export import export_module, parse_shape, resolve_factory

    shapes = [parse_shape(s) for s in args.input_shape]
    module = resolve_factory(args.factory)()
    path = export_module(
        module, shapes, args.out, dynamic_batch=not args.static_batch, opset=args.opset
    )
    print(f"wrote {path}")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from partitioner.profile import (
        ProfileOptions,
        calibration_feeds,
        frame_sequence,
        profile_model,
    )
    from runtime.engine import parse_providers

    for flag in ("threads", "batch", "samples", "repeats"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be at least 1")
    if not (math.isfinite(args.slowdown) and args.slowdown > 0):
        raise ValueError("--slowdown must be a positive, finite number")
    if not 1 <= args.threads <= 1024:
        raise ValueError("--threads must be between 1 and 1024")
    graph = ModelGraph.load(args.model)
    feeds = calibration_feeds(graph, calib=args.calib, samples=max(args.samples, args.batch))
    options = ProfileOptions(
        device=args.device,
        threads=args.threads,
        slowdown=args.slowdown,
        batch=args.batch,
        repeats=args.repeats,
        max_tensors=None if args.max_tensors <= 0 else args.max_tensors,
        providers=parse_providers(args.providers),
    )
    frames = [] if args.frames is None else frame_sequence(graph, args.frames, feeds)
    profile = profile_model(graph, feeds, options, frames=frames, calls=not args.no_call_cost)
    profile.save(args.out)
    print(
        f"wrote {args.out}: {len(profile.cuts)} cuts, full model {profile.full_ms.median_ms:.2f} ms"
        + (f" (x{args.slowdown:g} slowdown)" if args.slowdown != 1 else "")
    )
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from partitioner.plan import Constraints, Link, Planner, sweep
    from partitioner.profile import load_profile
    from partitioner.report import format_choice, plot_choice

    link = Link(
        parse_rate(args.uplink),
        parse_duration_ms(args.rtt),
        None if args.downlink is None else parse_rate(args.downlink),
    )
    workers = _cloud_workers(args)
    power = None if args.power is None else load_power(args.power)
    deadline = (
        None if args.deadline_ms is None else _milliseconds(args.deadline_ms, "--deadline-ms")
    )
    max_energy = None if args.max_energy_mj is None else _energy_mj(args.max_energy_mj)
    if power is None and (args.objective == "energy" or max_energy is not None):
        raise ValueError(
            "--objective energy and --max-energy-mj need the device's power model: "
            "--power POWER.json, or a radio preset: lte, 3g, wifi"
        )
    graph = ModelGraph.load(args.model)
    edge, cloud = load_profile(args.edge), load_profile(args.cloud)
    _warn_if_swapped(edge, cloud, args)
    planner = Planner(graph, edge, cloud, cloud_workers=workers, power=power)
    if power is not None and power.example_device:
        print(
            f"note: the {power.name} preset's device figures (compute {power.compute_w:g} W, "
            f"idle {power.idle_w:g} W) are examples, not a measurement: give your device's in "
            'a JSON file, e.g. {"radio": "lte", "compute_w": 3.1, "idle_w": 0.4}',
            file=sys.stderr,
        )
    if not (math.isfinite(args.max_error) and args.max_error >= 0):
        raise ValueError("--max-error must be a finite number, 0 or more")
    codecs = None if args.codecs is None else frozenset(c.strip() for c in args.codecs.split(","))
    if args.protocol == "kserve":
        if codecs is not None and codecs != {"raw"}:
            raise ValueError("a KServe v2 server takes raw tensors only: drop --codecs")
        codecs = frozenset({"raw"})
    constraints = Constraints(
        codecs=codecs,
        max_error=args.max_error,
        keep_input_on_device=args.keep_input_on_device,
        deadline_ms=deadline,
        max_energy_mj=max_energy,
    )
    if args.sweep:
        if args.out is None:
            raise ValueError("--sweep writes a plan: give --out PLAN.json")
        plan = sweep(
            planner,
            constraints,
            objective=args.objective,
            downlink_bps=link.downlink_bps,
            default=link,
        )
        plan.save(args.out)
        goal = "" if args.objective == "latency" else f" for {args.objective}"
        print(f"wrote {args.out}{goal}: cuts {', '.join(c['id'] for c in plan.cuts)}")
        for segment in plan.segments:
            print(
                f"  RTT {segment.rtt_ms:>5g} ms, uplink {segment.uplink_from_mbit:>8g}"
                f"-{segment.uplink_to_mbit:<8g} Mbit/s: {segment.cut} ({segment.codec})"
            )
        return 0
    choice = planner.choose(link, constraints, args.objective)
    if args.plot is not None:
        plot_choice(choice, args.plot)
    if args.json:
        print(json.dumps(choice.to_json(), indent=2))
        return 0
    print(format_choice(choice))
    if choice.best.energy_mj is not None:
        print(f"device energy of the best: {choice.best.energy_mj:.2f} mJ ({power_name(power)})")
    if args.objective == "throughput":
        stages = choice.best.stages
        shared = f" over {workers} workers" if workers > 1 else ""
        print(
            f"stages of the best, ms a frame: device {stages.device_ms:.2f}, uplink "
            f"{stages.uplink_ms:.2f}, cloud {stages.cloud_ms:.2f}{shared}, downlink "
            f"{stages.downlink_ms:.2f}: {choice.best.predicted_fps:.1f} fps"
        )
    return 0


def _milliseconds(text: str, flag: str) -> float:
    """A number of ms (the flag names the unit), or a duration with its unit (0.2s)."""
    try:
        value = float(text)
    except ValueError:
        value = parse_duration_ms(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{flag} must be a positive duration, not {text!r}")
    return value


def _energy_mj(text: str) -> float:
    try:
        value = float(text.strip().lower().removesuffix("mj"))
    except ValueError:
        raise ValueError(
            f"--max-energy-mj takes millijoules, like 120 or 120mJ, not {text!r}"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--max-energy-mj must be a positive number of millijoules, not {text!r}")
    return value


def power_name(power: Any) -> str:
    return f"{power.name} radio" + (", example device figures" if power.example_device else "")


def _cloud_workers(args: argparse.Namespace) -> int:
    if args.cloud_workers is None:
        return 1
    if args.objective != "throughput":
        raise ValueError(
            "--cloud-workers changes only a throughput plan: add --objective throughput"
        )
    if not 1 <= args.cloud_workers <= 65536:
        raise ValueError(f"--cloud-workers must be between 1 and 65536, not {args.cloud_workers}")
    return int(args.cloud_workers)


def _warn_if_swapped(edge: Any, cloud: Any, args: argparse.Namespace) -> None:
    """A warning (the plan is still made) when the profiles look swapped: labelled the
    other way round (--edge measured as "cloud", or --cloud as "edge") and the "edge"
    runs every head at least as fast as the "cloud"."""
    swapped = edge.device != cloud.device and (edge.device == "cloud" or cloud.device == "edge")
    faster = all(
        e.head_ms.median_ms <= c.head_ms.median_ms
        for e, c in zip(edge.cuts, cloud.cuts, strict=False)
        if e.head_ms is not None and c.head_ms is not None
    )
    if swapped and faster:
        print(
            f"splitinfer: warning: --edge {args.edge} ({edge.device}, full model "
            f"{edge.full_ms.median_ms:.2f} ms) and --cloud {args.cloud} ({cloud.device}, "
            f"{cloud.full_ms.median_ms:.2f} ms) look swapped",
            file=sys.stderr,
        )


def _cmd_check_profile(args: argparse.Namespace) -> int:
    from partitioner.profile import calibration_feeds, load_profile
    from partitioner.report import check_profile, format_check

    if args.samples < 1:
        raise ValueError("--samples must be at least 1")
    graph = ModelGraph.load(args.model)
    profile = load_profile(args.profile, graph)
    feeds = calibration_feeds(graph, calib=args.calib, samples=max(args.samples, profile.batch))
    rows = check_profile(graph, profile, feeds)
    print(format_check(rows))
    return 0


def _read(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()


def _token(path: Path | None) -> str | None:
    if path is None:
        return None
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"{path}: the token file is empty")
    return token


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from runtime.cloud.server import MetricsOptions, Security, serve
    from runtime.cloud.tails import HostLimits, MiB
    from runtime.engine import SessionOptions

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    if args.client_ca is not None and args.tls_cert is None:
        raise ValueError("--client-ca needs --tls-cert and --tls-key")
    if args.max_concurrent < 1 or args.max_queued < 0:
        raise ValueError("--max-concurrent must be at least 1 and --max-queued at least 0")
    if not 1 <= args.max_memory <= 1 << 20:
        raise ValueError(f"--max-memory must be between 1 and 1048576 MiB, not {args.max_memory}")
    if not 1 <= args.max_message <= 2047:
        raise ValueError(f"--max-message must be between 1 and 2047 MiB, not {args.max_message}")
    _check_port("--port", args.port)
    if not (math.isfinite(args.grace) and 0 <= args.grace <= 3600):
        raise ValueError(f"--grace must be between 0 and 3600 seconds, not {args.grace}")
    if args.metrics_port is not None:
        _check_port("--metrics-port", args.metrics_port)
    if args.http_port is not None:
        _check_port("--http-port", args.http_port)
    security = Security(
        cert=_read(args.tls_cert),
        key=_read(args.tls_key),
        client_ca=_read(args.client_ca),
        token=_token(args.token_file),
    )
    limits = HostLimits(
        max_concurrent=args.max_concurrent,
        max_queued=args.max_queued,
        max_memory_bytes=args.max_memory * MiB,
        max_message_bytes=args.max_message * MiB,
    )
    from runtime.engine import parse_providers

    sessions = SessionOptions(optimize=not args.exact, providers=parse_providers(args.providers))
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if not protocols or set(protocols) - {"splitinfer", "kserve"}:
        raise ValueError(f"--protocols takes splitinfer and/or kserve, not {args.protocols!r}")
    metrics = None
    if args.metrics_port is not None:
        metrics = MetricsOptions(
            host=args.metrics_host, port=args.metrics_port, open=args.metrics_open
        )
    asyncio.run(
        serve(
            args.directories,
            args.host,
            args.port,
            limits=limits,
            security=security,
            session_options=sessions,
            batching=_batching(args),
            protocols=protocols,
            metrics=metrics,
            grace_s=args.grace,
            http_port=args.http_port,
        )
    )
    return 0


def _check_port(flag: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"{flag} must be between 0 and 65535 (0: a free port), not {port}")


def _batching(args: argparse.Namespace) -> Any:
    from runtime.cloud.batching import BatchOptions

    if not 1 <= args.max_batch <= 65536:
        raise ValueError("--max-batch must be between 1 and 65536")
    if not (math.isfinite(args.batch_delay_ms) and 0 <= args.batch_delay_ms <= 10_000):
        raise ValueError("--batch-delay-ms must be between 0 and 10000")
    dynamic = not getattr(args, "no_batching", False)
    return BatchOptions(max_batch=args.max_batch, max_delay_ms=args.batch_delay_ms, dynamic=dynamic)


def _cmd_export_triton(args: argparse.Namespace) -> int:
    from partitioner.triton import export_triton

    names = export_triton(args.directory, args.out, _batching(args))
    for name in names:
        print(f"wrote {args.out / name}")
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    import numpy as np

    from runtime.artifacts import load_manifest
    from runtime.codec import CodecSpec
    from runtime.device.client import ClientTLS, SplitClient
    from runtime.device.edge import StaticSplit
    from runtime.engine import check_feeds

    parse_address(args.target, "--target")
    if args.repeat < 1 or not (math.isfinite(args.deadline_ms) and args.deadline_ms > 0):
        raise ValueError("--repeat must be at least 1 and --deadline-ms positive")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise ValueError(f"--timeout must be a positive number of seconds, not {args.timeout:g}")
    manifest = load_manifest(args.directory)
    feeds = check_feeds(manifest.inputs, _load_inputs(args.input))
    tls = None
    if args.tls_ca is not None:
        tls = ClientTLS(
            root_certificates=_read(args.tls_ca),
            certificate=_read(args.tls_cert),
            key=_read(args.tls_key),
        )
    if args.protocol == "kserve":
        from runtime.device.kserve_client import KServeClient

        if (args.codec or "raw") not in ("raw", "auto"):
            raise ValueError("a KServe v2 server takes raw tensors only: drop --codec")
        client: SplitClient = KServeClient(args.target, token=_token(args.token_file), tls=tls)
    else:
        client = SplitClient(args.target, token=_token(args.token_file), tls=tls)
    runner: Any
    say = sys.stderr if args.json else sys.stdout
    try:
        if args.adaptive:
            from runtime.device.adaptive import EdgeOptions, EdgeRuntime

            options = EdgeOptions(
                deadline_ms=args.deadline_ms, codec=args.codec or "auto", slowdown=args.slowdown
            )
            runner = EdgeRuntime(args.directory, client, options)
        else:
            cut, why = _infer_cut(args.cut, manifest, client, args.timeout)
            print(f"cut {cut}: {why}", file=say)
            runner = (
                _Local(args.directory, manifest)
                if manifest.cut(cut).tail is None
                else StaticSplit(
                    args.directory,
                    client,
                    cut=cut,
                    codec=CodecSpec.parse(args.codec or "raw"),
                    timeout=args.timeout,
                )
            )
        for index in range(args.repeat):
            result = runner.infer(feeds)
            _print_result(index, result, args.json)
        if args.adaptive:
            for kind, why in runner.stats()["problems"].items():
                print(f"splitinfer infer: {kind}: {why}", file=sys.stderr)
        if args.adaptive and not args.json:
            print(json.dumps(runner.stats()))
    finally:
        (runner if args.adaptive and "runner" in locals() else client).close()
    if args.out is not None:
        arrays: dict[str, Any] = dict(result.outputs)
        np.savez(args.out, **arrays)
    return 0


def _load_inputs(items: Sequence[str]) -> dict[str, Any]:
    """``NAME=FILE.npy`` items as arrays, each file read as .npy by its content."""
    from runtime.artifacts import read_npy

    feeds = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise ValueError(f"bad --input {item!r}: expected NAME=FILE.npy")
        try:
            feeds[name] = read_npy(Path(file))
        except ValueError as exc:
            raise ValueError(f"--input {name}: {exc}") from None
    return feeds


def _infer_cut(
    asked: str | None, manifest: Manifest, client: Any, timeout: float
) -> tuple[str, str]:
    """The cut ``infer`` uses, and why: the one asked for; else the plan's default if
    the server serves it (or it runs on the device); else the first cut, fewest bytes
    first, that both sides have."""
    from runtime.errors import SplitInferError as Error

    if asked is not None:
        manifest.cut(asked)  # an unknown id is an error here, not at the server
        return asked, "as asked"
    default = (manifest.plan or {}).get("default", {}).get("cut")
    if default and manifest.cut(default).tail is None:
        return default, "the plan's default runs entirely on this device: running locally"
    try:
        served, _ = client.served_cuts(manifest.model, timeout=min(timeout, 5.0))
    except Error:
        served = None  # cannot ask: take the manifest's word
    if default and (served is None or default in served):
        return default, "the plan's default"
    remote = sorted(
        (c for c in manifest.cuts if c.tail is not None and (served is None or c.id in served)),
        key=lambda c: (c.bytes if c.bytes is not None else float("inf"), c.head_nodes),
    )
    if not remote:
        raise ValueError(
            f"the server serves no cut of {manifest.model!r} that {len(manifest.cuts)} cut(s) "
            "of this directory have: serve the same artifacts, or pass --cut edge"
        )
    why = "sends the fewest bytes of the cuts both sides have"
    if default:
        why = f"the plan's default {default} is not served; this one {why}"
    return remote[0].id, why


class _Local:
    """``infer`` of a cut that runs entirely on the device: the full model, here."""

    def __init__(self, directory: Path, manifest: Manifest) -> None:
        from runtime.engine import make_session

        self.manifest = manifest
        self.session = make_session(directory / manifest.full)

    def infer(self, feeds: dict[str, Any]) -> Any:
        import time

        from runtime.device.edge import Result
        from runtime.engine import run_session

        start = time.perf_counter()
        outputs = run_session(self.session, feeds)
        total = (time.perf_counter() - start) * 1000
        ordered = {o.name: outputs[o.name] for o in self.manifest.outputs}
        return Result(ordered, "local", "edge", {"local_ms": total, "total_ms": total})


def _print_result(index: int, result: Any, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "request": index,
                    "path": result.path,
                    "cut": result.cut,
                    "codec": result.codec,
                    "timing": result.timing,
                }
            )
        )
        return
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in result.outputs.items())
    times = " ".join(f"{k.removesuffix('_ms')}={v:.2f}" for k, v in result.timing.items())
    print(f"{index}: {result.path} via cut {result.cut} ({result.codec}): {shapes}; ms: {times}")


def _cmd_linkem(args: argparse.Namespace) -> int:
    from runtime.device.linkem import run

    return run(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from partitioner.demo import run_demo

    requests = 3 if args.quick else args.requests
    if requests < 1 or not (math.isfinite(args.slowdown) and args.slowdown >= 1):
        raise ValueError("--requests must be at least 1 and --slowdown at least 1")
    if args.model is not None and not args.model.exists():
        raise ValueError(f"{args.model}: no such file")
    return run_demo(args.out, model=args.model, requests=requests, slowdown=args.slowdown)


def format_cuts(cuts: Sequence[Cut]) -> str:
    """A table: id, head nodes, KiB per sample, and the tensors with their shapes."""
    rows = [("id", "head nodes", "KiB/sample", "tensors")]
    for cut in cuts:
        size = "?" if cut.bytes is None else f"{cut.bytes / 1024:.1f}"
        tensors = ", ".join(f"{t.name} {t.dtype}{_shape(t.shape)}" for t in cut.tensors) or "-"
        if cut.head_outputs:
            tensors += f"  (device keeps {', '.join(cut.head_outputs)})"
        rows.append((cut.id, str(cut.head_nodes), size, tensors))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows]
    return "\n".join(lines)


def _shape(shape: Sequence[object] | None) -> str:
    if shape is None:
        return "[?]"
    return "[" + "x".join("?" if d is None else str(d) for d in shape) + "]"


if __name__ == "__main__":
    sys.exit(main())

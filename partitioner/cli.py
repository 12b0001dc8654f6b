"""The ``splitinfer`` command line.

Bad input (a missing file, a file that is not ONNX, an unknown cut or tensor, a
cut that does not separate the graph) prints one line to stderr and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

from partitioner.cuts import DEFAULT_MAX_TENSORS, Cut, enumerate_cuts, resolve_cut
from partitioner.graph import ModelGraph
from partitioner.split import write_artifacts
from runtime.artifacts import Manifest
from runtime.errors import SplitInferError

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


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="splitinfer",
        description="Split a neural network into a device head and a cloud tail.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cuts = commands.add_parser("cuts", help="list the candidate cuts of an ONNX model")
    cuts.add_argument("model", metavar="MODEL.onnx")
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
    split.add_argument("model", metavar="MODEL.onnx")
    split.add_argument(
        "--cut",
        action="append",
        required=True,
        metavar="ID|T1,T2,...",
        help="a cut id from `splitinfer cuts`, or the tensors to send, comma-separated; repeatable",
    )
    split.add_argument("--out", required=True, type=Path, metavar="DIR")
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
    export.add_argument("--out", required=True, type=Path, metavar="MODEL.onnx")
    export.add_argument("--static-batch", action="store_true", help="keep the batch size fixed")
    export.add_argument(
        "--opset", type=int, default=None, help="ONNX opset (default: the exporter's)"
    )
    export.set_defaults(run=_cmd_export)

    demo = commands.add_parser("demo", help="walk through export, cuts and split on MobileNetV2")
    demo.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="keep the artifacts in DIR"
    )
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
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    graph = ModelGraph.load(args.model)
    cuts = [resolve_cut(graph, spec) for spec in args.cut]
    manifest = write_artifacts(graph, cuts, args.out)
    for cut in manifest.cuts:
        sends = ", ".join(t.name for t in cut.tensors) or "nothing"
        print(f"{cut.id}: head={cut.head or '-'} tail={cut.tail or '-'} sends {sends}")
    print(f"wrote {args.out / 'manifest.json'}")
    return 0 if args.no_verify else _verify(args.out, manifest)


def _verify(directory: Path, manifest: Manifest) -> int:
    from partitioner.verify import verify_artifacts

    try:
        verdicts = verify_artifacts(directory, manifest)
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
        print(f"verified: head -> tail equals the full model bit for bit ({len(verdicts)} cuts)")
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from partitioner.demo import run_demo

    return run_demo(args.out)


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

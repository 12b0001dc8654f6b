"""PyTorch import: export an ``nn.Module`` to ONNX. The only place torch is imported.

torch 2.x's ``torch.onnx.export`` uses the dynamo exporter, which needs
``onnxscript`` (not a torch dependency) and by default writes weights to a
separate ``MODEL.onnx.data``. :func:`export_module` checks for onnxscript up
front, keeps the weights inside the file when they fit under protobuf's 2 GB
limit (beside it, in ``MODEL.onnx.data``, when they do not: the loader reads
both), marks the batch dimension dynamic, and checks the exported model
against the module on the example input.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import ExportError

# Weights beyond this go to MODEL.onnx.data: protobuf cannot serialize 2 GB.
EXTERNAL_DATA_BYTES = 1_500_000_000
# Tolerance of the exported model against the module, relative to the output's scale.
EXPORT_RTOL = 1e-4


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1x3x224x224"`` -> ``(1, 3, 224, 224)``; ValueError with the expected form otherwise."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"bad input shape {text!r}: expected sizes joined by 'x', like 1x3x224x224"
        ) from None
    if not dims or any(d <= 0 for d in dims):
        raise ValueError(f"bad input shape {text!r}: every size must be a positive integer")
    return dims


def resolve_factory(spec: str) -> Callable[[], object]:
    """``package.module:factory`` or ``path/to/file.py:factory`` -> the callable."""
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise ExportError(
            f"bad model factory {spec!r}: expected MODULE:FACTORY, like mypkg.nets:resnet18"
        )
    try:
        if module_part.endswith(".py") or "/" in module_part:
            path = Path(module_part)
            if not path.is_file():
                raise ExportError(f"{path}: no such file")
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            if loader_spec is None or loader_spec.loader is None:
                raise ExportError(f"{path}: cannot be imported as a Python module")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[path.stem] = module
            loader_spec.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")
            module = importlib.import_module(module_part)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"cannot import {module_part!r}: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ExportError(f"{module_part!r} has no callable {attr!r}")
    return factory


def export_module(
    module: object,
    input_shapes: Sequence[Sequence[int]],
    out: str | Path,
    *,
    dynamic_batch: bool = True,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int | None = None,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
) -> Path:
    """Export ``module`` to ONNX at ``out`` and check it against the module.

    With ``dynamic_batch`` the first dimension of every input (and so of the
    outputs) is symbolic, named ``batch``. Weights over ``external_data_bytes``
    go to ``OUT.data`` beside the model. Raises ExportError with the reason
    when torch cannot export the module.
    """
    torch = _import_torch()
    if not isinstance(module, torch.nn.Module):
        raise ExportError(f"the factory returned {type(module).__name__}, not a torch.nn.Module")
    module.eval()
    args = tuple(
        _example(torch, shape, dynamic_batch, seed) for seed, shape in enumerate(input_shapes)
    )
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in args)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    weight_bytes = sum(p.numel() * p.element_size() for p in module.state_dict().values())
    shapes = " and ".join("x".join(map(str, s)) for s in input_shapes)
    with torch.no_grad(), _quiet():
        try:  # the module itself first: wrong shapes fail here, with the module's words
            module(*args)
        except Exception as exc:
            raise ExportError(
                f"the module does not run on {len(args)} input(s) of shape {shapes}: "
                f"{_cause(exc)}; check --input-shape (one per forward() argument)"
            ) from None
        try:
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                input_names=list(input_names) if input_names else None,
                output_names=list(output_names) if output_names else None,
                opset_version=opset,
                optimize=True,
            )
            expected = module(*args)
        except Exception as exc:
            raise ExportError(f"torch could not export the module: {_cause(exc)}") from None
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    data = out.with_name(out.name + ".data")
    data.unlink(missing_ok=True)
    program.save(str(out), external_data=weight_bytes > external_data_bytes)
    _check_against_module(out, args, expected)
    return out


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _cause(exc: BaseException) -> str:
    """The deepest cause of ``exc`` as one line: its type and the first line of its
    message, without the terminal colours torch's exporter adds."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _import_torch():  # type: ignore[no-untyped-def]
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter imports it lazily)
        import torch
    except ImportError as exc:
        raise ExportError(
            f"PyTorch import needs torch and onnxscript ({exc.name} is missing): "
            "pip install 'splitinfer[torch]'"
        ) from None
    return torch


def _example(torch, shape: Sequence[int], dynamic_batch: bool, seed: int):  # type: ignore[no-untyped-def]
    dims = list(shape)
    if dynamic_batch and dims and dims[0] < 2:
        dims[0] = 2  # torch.export specializes sizes 0 and 1, so trace with 2
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*dims, generator=generator)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress prints and warnings; errors still raise."""
    loggers = [logging.getLogger(name) for name in ("torch", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)  # the error travels as an ExportError, said once
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            _no_warnings(),
        ):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _no_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _check_against_module(path: Path, args: tuple[Any, ...], expected: object) -> None:
    from runtime.engine import make_session

    session = make_session(path)
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args, strict=True)}
    got = session.run(None, feeds)
    wanted = expected if isinstance(expected, (tuple, list)) else [expected]
    for index, (g, w) in enumerate(zip(got, wanted, strict=False)):
        w_np = w.detach().numpy()
        scale = float(np.max(np.abs(w_np))) if w_np.size else 0.0
        error = float(np.max(np.abs(g - w_np))) if w_np.size else 0.0
        if error > EXPORT_RTOL * max(scale, 1.0):
            raise ExportError(
                f"the exported model's output {index} differs from the module's by {error:.3g} "
                f"(allowed {EXPORT_RTOL * max(scale, 1.0):.3g}); the export is wrong"
            )

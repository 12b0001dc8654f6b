"""PyTorch import: dynamic batch, several inputs, external data, and clear errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch

from partitioner import ModelGraph, enumerate_cuts, write_artifacts
from partitioner.cli import main
from partitioner.export import export_module, parse_shape
from tests.graphs import assert_recomposes, run

NETS = textwrap.dedent(
    """
    import torch

    class TwoTowers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 8)
            self.b = torch.nn.Linear(6, 8)
            self.out = torch.nn.Linear(8, 3)

        def forward(self, x, y):
            h = torch.relu(self.a(x)) + torch.tanh(self.b(y))
            return self.out(h)

    def two_towers():
        torch.manual_seed(0)
        return TwoTowers()

    def conv():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5),
        )

    def not_a_module():
        return 42
    """
)


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


def _module(nets, name):
    namespace: dict = {}
    exec(compile(nets.read_text(), str(nets), "exec"), namespace)
    return namespace[name]().eval()


def test_cli_export_gives_a_dynamic_batch_model_equal_to_the_module(nets, tmp_path, capsys):
    out = tmp_path / "conv.onnx"
    assert main(["export", f"{nets}:conv", "--input-shape", "1x3x16x16", "--out", str(out)]) == 0
    model = onnx.load(str(out))
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value")
    x = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    got = next(iter(run(out, {model.graph.input[0].name: x}).values()))
    with torch.no_grad():
        want = _module(nets, "conv")(torch.from_numpy(x)).numpy()
    assert got.shape == (5, 5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_two_input_module_exports_and_splits(nets, tmp_path):
    out = export_module(_module(nets, "two_towers"), [(1, 4), (1, 6)], tmp_path / "towers.onnx")
    graph = ModelGraph.load(out)
    assert len(graph.inputs) == 2
    manifest = write_artifacts(graph, enumerate_cuts(graph, max_tensors=None), tmp_path / "art")
    assert_recomposes(onnx.load(str(out)), tmp_path / "art", manifest, batch=4)


def test_weights_beyond_the_limit_go_to_a_data_file_that_the_loader_reads(nets, tmp_path):
    out = export_module(
        _module(nets, "conv"), [(2, 3, 16, 16)], tmp_path / "conv.onnx", external_data_bytes=0
    )
    data = tmp_path / "conv.onnx.data"
    assert data.exists() and data.stat().st_size > 1000
    graph = ModelGraph.load(out)
    manifest = write_artifacts(graph, enumerate_cuts(graph), tmp_path / "art")
    assert_recomposes(onnx.load(str(out)), tmp_path / "art", manifest)


@pytest.mark.parametrize(
    "factory, shape, message",
    [
        ("{nets}:not_a_module", "1x4", "not a torch.nn.Module"),
        ("{nets}:nothing_here", "1x4", "has no callable 'nothing_here'"),
        ("no_such_package_xyz:build", "1x4", "cannot import 'no_such_package_xyz'"),
        ("{nets}", "1x4", "expected MODULE:FACTORY"),
        ("{nets}:conv", "1xthree", "bad input shape '1xthree'"),
    ],
)
def test_export_errors_are_one_line_and_exit_2(nets, tmp_path, capsys, factory, shape, message):
    code = main(
        [
            "export",
            factory.format(nets=nets),
            "--input-shape",
            shape,
            "--out",
            str(tmp_path / "m.onnx"),
        ]
    )
    _, err = capsys.readouterr()
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_parse_shape():
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224)
    with pytest.raises(ValueError, match="positive"):
        parse_shape("0x3")


def test_without_onnxscript_export_says_what_to_install(nets, tmp_path):
    # torch's dynamo exporter needs onnxscript, which torch does not declare
    script = (
        "import sys\n"
        "sys.modules['onnxscript'] = None  # as if it were not installed\n"
        "from partitioner.cli import main\n"
        f"argv = ['export', '{nets}:conv', '--input-shape', '1x3x8x8']\n"
        f"argv += ['--out', '{tmp_path}/m.onnx']\n"
        "sys.exit(main(argv))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "onnxscript is missing" in result.stderr and "splitinfer[torch]" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

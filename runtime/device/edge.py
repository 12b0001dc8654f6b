"""The device side with a fixed cut: head here, tail on a server.

:class:`StaticSplit` runs one cut of an artifact directory: the head in ONNX
Runtime, the cut tensors encoded and sent, the outputs decoded, and a timing
breakdown of where the time went.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.artifacts import CutArtifact, Manifest, load_manifest
from runtime.codec import CodecSpec, Encoded, encode
from runtime.device.client import SplitClient
from runtime.engine import CutRunner, SessionOptions, SlowDevice, check_feeds
from runtime.errors import ArtifactError


@dataclass(frozen=True)
class Result:
    """One answer: the model's outputs, the path taken, the cut, and times in ms."""

    outputs: dict[str, np.ndarray]
    path: str  # "local", "split" or "fallback"
    cut: str
    timing: dict[str, float] = field(default_factory=dict)
    codec: str = "-"  # what the cut's tensors were sent with ("-": not sent)


def encode_all(tensors: Mapping[str, np.ndarray], codec: CodecSpec) -> list[Encoded]:
    """Every tensor of ``tensors``, named, encoded with ``codec``."""
    return [encode(value, codec, name=name) for name, value in tensors.items()]


def default_cut(manifest: Manifest) -> CutArtifact:
    """The plan's choice for its default link if there is a plan, else the cut that
    sends the fewest bytes among those with a tail."""
    plan = manifest.plan or {}
    chosen = plan.get("default", {}).get("cut")
    if chosen:
        return manifest.cut(chosen)
    remote = [c for c in manifest.cuts if c.tail is not None]
    if not remote:
        raise ArtifactError("the artifact directory has no cut with a tail to serve")
    return min(
        remote, key=lambda c: (c.bytes if c.bytes is not None else float("inf"), c.head_nodes)
    )


class StaticSplit:
    """Head on the device, tail on ``client``'s server, for one cut and codec.
    ``device``: compute the head and encode on an emulated slower device."""

    def __init__(
        self,
        directory: str | Path,
        client: SplitClient,
        *,
        cut: str | None = None,
        codec: CodecSpec | None = None,
        options: SessionOptions | None = None,
        timeout: float | None = None,
        device: SlowDevice | None = None,
    ) -> None:
        self.manifest = load_manifest(directory)
        self.cut = self.manifest.cut(cut) if cut else default_cut(self.manifest)
        self.runner = CutRunner(directory, self.manifest, self.cut, options or SessionOptions())
        self.client = client
        self.codec = codec or CodecSpec()
        self.timeout = timeout
        self.device = device or SlowDevice(1.0)

    def infer(self, feeds: Mapping[str, np.ndarray]) -> Result:
        """Run the head, send, and return every model output with the time each step took."""
        start = time.perf_counter()
        feeds = check_feeds(self.manifest.inputs, feeds)
        key = f"{self.cut.id}/{self.codec.label}"
        (sent, kept), _ = self.device.run(f"{key}/head", self.runner.run_head, feeds)
        headed = time.perf_counter()
        tensors, _ = self.device.run(f"{key}/encode", encode_all, sent, self.codec)
        encoded = time.perf_counter()
        reply = self.client.infer(self.manifest.model, self.cut.id, tensors, timeout=self.timeout)
        server = reply.server
        server_ms = server.queue_ms + server.decode_ms + server.compute_ms + server.encode_ms
        outputs = {**kept, **reply.outputs}
        total = (time.perf_counter() - start) * 1000
        head_ms, encode_ms = (headed - start) * 1000, (encoded - headed) * 1000
        timing = {
            "head_ms": head_ms,
            "encode_ms": encode_ms,
            # from the encoded tensors to the decoded answer, less the server's own time:
            # the parts add up to the total
            "network_ms": max(0.0, total - head_ms - encode_ms - server_ms - reply.decode_ms),
            "server_ms": server_ms,
            "decode_ms": reply.decode_ms,
            "total_ms": total,
        }
        ordered = {o.name: outputs[o.name] for o in self.manifest.outputs}
        return Result(ordered, "split", self.cut.id, timing, self.codec.label)

"""The device side: what runs on the phone, the camera, the robot.

A fixed cut (edge.StaticSplit), the adaptive runtime that picks the cut per
request and falls back to a local run (adaptive.EdgeRuntime, with link.py's
estimator and circuit breaker), the clients of both protocols (client.py,
kserve_client.py) and the link emulator users test their deployment with
(linkem.py, ``splitinfer linkem``). It imports the shared contract in
``runtime`` and never ``runtime.cloud``: a device installs numpy, onnx,
onnxruntime, grpcio, protobuf, zstandard and tritonclient's protocol modules.
"""

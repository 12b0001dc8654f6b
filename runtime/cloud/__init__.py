"""The cloud side: the server that hosts the tails.

The tail host (tails.py: checks and runs tails, no sockets), what both
protocols share (service.py: admission, the memory budget of budget.py, the
bearer token, one request's path), dynamic batching (batching.py), Prometheus
metrics (metrics.py), and the gRPC servicers on top: splitinfer.v1 (server.py)
and KServe v2 (kserve.py). It imports the shared contract in ``runtime`` and
never ``runtime.device``.
"""

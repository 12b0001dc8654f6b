"""The metrics page parses: every family's HELP and TYPE name its samples, in the
Prometheus text format and in OpenMetrics (what promtool and scrapers check)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from runtime.cloud.statistics import Statistics, TritonCollector


def _page_registry() -> CollectorRegistry:
    statistics = Statistics([("adaptive", "cloud")])
    statistics.started(("adaptive", "cloud"))
    statistics.finished(("adaptive", "cloud"), ok=True, total_ms=3.0, queue_ms=0.5)
    registry = CollectorRegistry()
    registry.register(TritonCollector(statistics))
    return registry


def _named_apart(page: str) -> list[str]:
    """Samples whose name is not one that a HELP or TYPE line announced."""
    announced = {line.split()[2] for line in page.splitlines() if line.startswith("# ")}
    samples = {
        line.split("{")[0].split()[0]
        for line in page.splitlines()
        if line and not line.startswith("#")
    }
    return sorted(samples - announced)


def test_the_triton_metrics_parse_in_both_formats_with_their_names():
    registry = _page_registry()
    text = generate_latest(registry).decode()
    assert not _named_apart(text), _named_apart(text)
    families = {f.name: f for f in parse_text(text)}
    sample = next(s for s in families["nv_inference_request_success"].samples)
    assert sample.name == "nv_inference_request_success" and sample.value == 1.0
    assert sample.labels == {"model": "adaptive__cloud", "version": "1"}
    openmetrics = openmetrics_latest(registry).decode()
    assert not _named_apart(openmetrics.replace("# EOF", ""))
    parsed = {f.name for f in parse_om(openmetrics)}  # raises on a clashing name
    assert "nv_inference_count" in parsed and "nv_inference_pending_request_count" in parsed

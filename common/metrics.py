"""Prometheus helpers shared by every service.

Each app owns a ``CollectorRegistry`` (so several apps can live in one test process) and exposes it
at ``GET /metrics`` through ``metrics_response``.  Metric names are prefixed ``rethinker_<service>_``.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    """A registry plus typed constructors that apply the service prefix."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()

    def _name(self, name: str) -> str:
        return f"rethinker_{self.service}_{name}"

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(self._name(name), doc, labels, registry=self.registry)

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(self._name(name), doc, labels, registry=self.registry)

    def histogram(
        self, name: str, doc: str, labels: tuple[str, ...] = (), buckets: tuple[float, ...] = LATENCY_BUCKETS
    ) -> Histogram:
        return Histogram(self._name(name), doc, labels, registry=self.registry, buckets=buckets)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def metrics_response(metrics: ServiceMetrics):  # -> starlette Response (imported lazily)
    from starlette.responses import Response

    body, ctype = metrics.render()
    return Response(content=body, media_type=ctype)

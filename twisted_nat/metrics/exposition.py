"""
Serving a Prometheus registry over HTTP on a server endpoint string, in the
reactor's thread: the text format is made at once from the collectors,
which read counters and do no I/O.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.application.service import IService
from twisted.application.strports import service as endpoint_service
from twisted.internet.interfaces import IReactorCore
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from twisted_nat.status import StatusSite


class MetricsResource(Resource):
    """Renders the registry in Prometheus's text format, for any path."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self.registry)


class MetricsSite(StatusSite):
    """The site serving a L{MetricsResource}, its access log at debug as C{--status}'s."""

    def __init__(self, registry: CollectorRegistry) -> None:
        Site.__init__(self, MetricsResource(registry))
        self.displayTracebacks = False


def metrics_service(
    endpoint: str, registry: CollectorRegistry, reactor: IReactorCore | None = None
) -> IService:
    """A service serving C{registry} on a server endpoint string (e.g. C{tcp:9100})."""
    return endpoint_service(endpoint, MetricsSite(registry), reactor=reactor)

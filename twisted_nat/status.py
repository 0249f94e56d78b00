"""
The peer's state as JSON over HTTP (C{--status ENDPOINT}), for operators and
tests: NAT behaviour, candidates, and each connection with its path, RTT,
loss and jitter.  Read-only, and one resource: C{GET /} (any path).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.application.service import IService
from twisted.application.strports import service as endpoint_service
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class StatusResource(Resource):
    """Renders C{status()} of whatever it is given (a NATTraversalService)."""

    isLeaf = True

    def __init__(self, source: Any) -> None:
        super().__init__()
        self._source = source

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self._source.status(), indent=2).encode() + b"\n"


def status_service(endpoint: str, source: Any, reactor: Any = None) -> IService:
    """A service serving C{source.status()} on a server endpoint string."""
    site = Site(StatusResource(source))
    site.displayTracebacks = False
    return endpoint_service(endpoint, site, reactor=reactor)

"""
The peer's state as JSON over HTTP (C{--status ENDPOINT}), for operators and
tests: NAT behaviour, candidates, and each connection with its path, RTT,
loss and jitter.  Read-only, and one resource: C{GET /} (any path).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from twisted.application.service import IService
from twisted.application.strports import service as endpoint_service
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class StatusSource(Protocol):
    """Whatever has a state to serve: a L{twisted_nat.service.NATTraversalService}."""

    def status(self) -> Mapping[str, Any]:
        """The state, as JSON-serialisable values."""


class StatusResource(Resource):
    """Renders C{status()} of its source as JSON."""

    isLeaf = True

    def __init__(self, source: StatusSource) -> None:
        super().__init__()
        self._source = source

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self._source.status(), indent=2).encode() + b"\n"


class StatusSite(Site):
    """
    The site serving a L{StatusResource}.  Its access log goes to debug:
    a monitor polling the status would otherwise fill the log with a line
    per request.
    """

    noisy = False
    logger = Logger()

    def __init__(self, source: StatusSource) -> None:
        super().__init__(StatusResource(source))
        self.displayTracebacks = False

    def log(self, request: http.Request) -> None:
        self.logger.debug(
            "{method} {uri} from {client}: {code}",
            method=request.method.decode("ascii", "replace"),
            uri=request.uri.decode("ascii", "replace"),
            client=request.getClientAddress(),
            code=request.code,
        )


def status_service(
    endpoint: str, source: StatusSource, reactor: IReactorCore | None = None
) -> IService:
    """
    A service serving C{source.status()} on a server endpoint string.

    @param reactor: the reactor to listen with; the global reactor if not
        given.
    """
    return endpoint_service(endpoint, StatusSite(source), reactor=reactor)

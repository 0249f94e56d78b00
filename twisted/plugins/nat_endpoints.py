"""Endpoint strings C{peer:NAME} and C{peer}: the work lives in L{twisted_nat.streams.strports}."""

from twisted_nat.streams.strports import PeerEndpointParser

peerEndpointParser = PeerEndpointParser()

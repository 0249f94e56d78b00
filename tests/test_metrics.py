"""
Prometheus metrics of the rendezvous server, scraped over real HTTP on
loopback after real traffic: the values are the server's own counters, and
every label value comes from a small fixed set.
"""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, endpoints
from twisted.internet import reactor as global_reactor
from twisted.internet.threads import deferToThread

from tests.test_rendezvous import (  # noqa: F401
    KEYS,
    answering,
    client_endpoint,
    offer_from,
    peers,
)
from twisted_nat.errors import DuplicateName, UnknownPeer
from twisted_nat.metrics.exposition import MetricsSite
from twisted_nat.metrics.rendezvous import RendezvousCollector

reactor: Any = global_reactor
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


async def scrape(registry: CollectorRegistry) -> Samples:
    """What a Prometheus server would read, over HTTP from a L{MetricsSite} on loopback."""
    endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
    port = await endpoint.listen(MetricsSite(registry))
    url = f"http://127.0.0.1:{port.getHost().port}/"

    def get() -> tuple[str, str]:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.headers["content-type"], response.read().decode()

    try:
        content_type, text = await deferToThread(get)
    finally:
        await defer.maybeDeferred(port.stopListening)
    assert content_type.startswith("text/plain")
    values: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return values


@pytest_twisted.ensureDeferred
async def test_the_server_counts_what_it_did_and_refused(peers):  # noqa: F811
    server = peers.server()
    endpoint = client_endpoint(server)
    alice, bob = peers.client(endpoint, "alice"), peers.client(endpoint, "bob")
    bob.set_offer_handler(answering())
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    await alice.connect(offer_from())
    with pytest.raises(UnknownPeer):
        await alice.connect(offer_from(to="carol"))
    mallory = peers.client(endpoint, "bob", identity=KEYS["mallory"])
    with pytest.raises(DuplicateName):
        await mallory.when_registered()
    await mallory.close()

    registry = CollectorRegistry()
    registry.register(RendezvousCollector(server.factory))
    values = await scrape(registry)
    prefix = "twisted_nat_rendezvous_"
    assert values[prefix + "registrations_total"][()] == 2
    assert values[prefix + "offers_relayed_total"][()] == 1
    assert values[prefix + "peers"][()] == 2
    assert values[prefix + "offers_routed_total"][()] == 0
    assert prefix + "redis_up" not in values  # a server on its own
    refused = values[prefix + "refused_total"]
    assert refused[(("reason", "name taken"),)] >= 1
    assert all(len(labels) == 1 and labels[0][0] == "reason" for labels in refused)

"""
What NAT am I behind, and how can it be crossed?

L{detect_nat} runs RFC 5780 behaviour discovery (L{BehaviorDiscovery}) and
returns one immutable L{NATBehavior}, whose classic name L{classify}
derives; L{measure_binding_lifetime} times an idle binding; and behind a
NAT that allocates ports in sequence, L{latest_port} and
L{predicted_candidates} predict the ports the next flows will get.
"""

from __future__ import annotations

from twisted_nat.nat.behavior import (
    PREDICTABLE_SPREAD,
    FilteringBehavior,
    MappingBehavior,
    NATBehavior,
    NATType,
    classify,
    port_delta,
)
from twisted_nat.nat.discovery import STEP_FLOWS, BehaviorDiscovery, detect_nat, route_source
from twisted_nat.nat.lifetime import measure_binding_lifetime
from twisted_nat.nat.prediction import (
    PREDICTED_PORTS,
    PREDICTED_PREFERENCE,
    PREDICTION_FLOWS,
    PREDICTION_SCHEDULE,
    PREDICTION_WAIT,
    latest_port,
    predicted_candidates,
    prediction_step,
)
from twisted_nat.nat.rfc5780 import (
    Finding,
    MappingFinding,
    filtering_behavior,
    mapping_across_servers,
    mapping_behavior,
    usable_other_address,
)

__all__ = [
    "PREDICTABLE_SPREAD",
    "PREDICTED_PORTS",
    "PREDICTED_PREFERENCE",
    "PREDICTION_FLOWS",
    "PREDICTION_SCHEDULE",
    "PREDICTION_WAIT",
    "STEP_FLOWS",
    "BehaviorDiscovery",
    "FilteringBehavior",
    "Finding",
    "MappingBehavior",
    "MappingFinding",
    "NATBehavior",
    "NATType",
    "classify",
    "detect_nat",
    "filtering_behavior",
    "latest_port",
    "mapping_across_servers",
    "mapping_behavior",
    "measure_binding_lifetime",
    "port_delta",
    "predicted_candidates",
    "prediction_step",
    "route_source",
    "usable_other_address",
]

"""
Keep-alive for a peer connection: when to probe, when the path is in
trouble, when the binding is gone, and how good the link is meanwhile.

  - L{quality}: round-trip, jitter and loss estimators (pure measurement).
  - L{machine}: L{KeepAliveMachine}, the pure decision machine.
  - L{freshness}: L{Freshness}, the pure decision of when a path in use is
    checked at once, and when those checks lose it.
  - L{checks}: L{LivenessChecks}, the I/O of those checks.
  - L{timers}: the clock a machine runs on, and L{TimerQueue}, which puts
    thousands of machines' timers on one reactor call.
  - L{keeper}: L{Keeper}, the machines' I/O on every base of a service.
"""

from twisted_nat.keepalive.checks import LivenessChecks
from twisted_nat.keepalive.freshness import CheckSettings, Freshness, PathState
from twisted_nat.keepalive.keeper import BindingLost, Keeper, KeeperStats, KeptPath
from twisted_nat.keepalive.machine import KeepAliveMachine, KeepAliveState, interval_for_lifetime
from twisted_nat.keepalive.quality import (
    JitterEstimator,
    LinkQuality,
    LossEstimator,
    RTTEstimator,
)
from twisted_nat.keepalive.timers import (
    Now,
    ReactorCallables,
    Schedule,
    TimerHandle,
    TimerQueue,
    reactor_callables,
)

__all__ = [
    "BindingLost",
    "CheckSettings",
    "Freshness",
    "JitterEstimator",
    "KeepAliveMachine",
    "KeepAliveState",
    "Keeper",
    "KeeperStats",
    "KeptPath",
    "LinkQuality",
    "LivenessChecks",
    "LossEstimator",
    "Now",
    "PathState",
    "RTTEstimator",
    "ReactorCallables",
    "Schedule",
    "TimerHandle",
    "TimerQueue",
    "interval_for_lifetime",
    "reactor_callables",
]

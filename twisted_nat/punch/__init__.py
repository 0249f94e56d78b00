"""
UDP hole punching: the handshake's decisions (L{PunchSession}), its I/O
(L{HolePuncher}), the strategy for symmetric NATs (L{plan}) and the
techniques it picks from (the birthday method, meeting runs, extra
sockets).
"""

from twisted_nat.punch.birthday import Prober, success_probability
from twisted_nat.punch.meeting import meeting_port
from twisted_nat.punch.plan import (
    PunchPlan,
    SymmetricSettings,
    Technique,
    hint_for,
    plan,
)
from twisted_nat.punch.puncher import HolePuncher
from twisted_nat.punch.running import PuncherStats
from twisted_nat.punch.session import PunchSession, SessionState
from twisted_nat.punch.sockets import ExtraSockets
from twisted_nat.punch.values import (
    RELAY_PAIRED_KINDS,
    SPRAY_PAIRED_KINDS,
    Action,
    Connected,
    Failed,
    PairKey,
    PairReport,
    PunchError,
    PunchFailed,
    PunchResult,
    PunchSettings,
    Refused,
    Send,
    StartGrace,
)

__all__ = [
    "RELAY_PAIRED_KINDS",
    "SPRAY_PAIRED_KINDS",
    "Action",
    "Connected",
    "ExtraSockets",
    "Failed",
    "HolePuncher",
    "PairKey",
    "PairReport",
    "Prober",
    "PunchError",
    "PunchFailed",
    "PunchPlan",
    "PunchResult",
    "PunchSession",
    "PunchSettings",
    "PuncherStats",
    "Refused",
    "Send",
    "SessionState",
    "StartGrace",
    "SymmetricSettings",
    "Technique",
    "hint_for",
    "meeting_port",
    "plan",
    "success_probability",
]

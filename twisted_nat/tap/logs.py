"""
What C{twistd nat} prints: a short story at info level for the person
running it, not per-socket or per-packet detail.  twistd writes every event
it is given, debug included, and Twisted's ports announce every socket they
open and close (a birthday punch opens 256), so the observer twistd would
use is wrapped in a filter: events below the level chosen with
C{twistd nat --log-level} are dropped, and Twisted's per-socket lines count
as debug.
"""

from __future__ import annotations

import re
from typing import Any, cast

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogEvent,
    LogLevel,
    PredicateResult,
)
from twisted.python.components import Componentized
from zope.interface import implementer

LEVELS = ("debug", "info", "warn", "error", "critical")
"""The names C{--log-level} takes, least severe first."""

_SOCKET_LINE = re.compile(
    r"(?:\S.* starting on \d+"
    r"|\((?:UDP|TCP) Port \d+ Closed\)"
    r"|(?:Starting|Stopping) (?:factory|protocol) .*)"
)
"""Twisted's own line for a port opened or closed, or a factory started or stopped."""


def is_socket_line(event: LogEvent) -> bool:
    """Whether C{event} is one of Twisted's per-socket lines (L{_SOCKET_LINE})."""
    if event.get("log_namespace") != "log_legacy":
        return False
    text = event.get("log_text")
    return isinstance(text, str) and _SOCKET_LINE.fullmatch(text) is not None


@implementer(ILogFilterPredicate)
class OperatorView:
    """
    Passes events at C{level} or above, counting Twisted's per-socket lines
    as debug.  Pure: an event in, a verdict out.
    """

    def __init__(self, level: LogLevel) -> None:
        self.level = level
        self._least = _rank(level)

    def __call__(self, event: LogEvent) -> PredicateResult:
        level = event.get("log_level", LogLevel.info)
        if is_socket_line(event):
            level = LogLevel.debug
        return _YES if _rank(level) >= self._least else _NO


_YES = cast(PredicateResult, PredicateResult.yes)
_NO = cast(PredicateResult, PredicateResult.no)


def _rank(level: object) -> int:
    """Severity of C{level}, least first; anything unknown passes."""
    name = getattr(level, "name", None)
    return LEVELS.index(name) if name in LEVELS else len(LEVELS)


def level_named(name: str) -> LogLevel:
    """The L{LogLevel} called C{name} (one of L{LEVELS}); ValueError otherwise."""
    if name not in LEVELS:
        raise ValueError(f"--log-level must be one of {', '.join(LEVELS)}, not {name!r}")
    return cast(LogLevel, LogLevel.levelWithName(name))


def twistd_observer(twistd_options: Any) -> ILogObserver | None:
    """
    The observer twistd would log to with C{twistd_options} (its command
    line), built by twistd's own application logger (through names twistd
    keeps private, hence the fallback); None when another logger was asked
    for with C{--logger}, or twistd cannot say.
    """
    try:
        from twisted.scripts.twistd import (  # type: ignore[attr-defined]
            _SomeApplicationRunner,
        )

        if twistd_options.get("logger"):
            return None
        observer = _SomeApplicationRunner.loggerFactory(twistd_options)._getLogObserver()
    except Exception:
        return None
    if ILogObserver.providedBy(observer):
        return observer
    # syslog's observer is a legacy one, as twistd itself would wrap it.
    return LegacyLogObserverWrapper(observer) if callable(observer) else None


def filter_twistd_log(application: object, twistd_options: Any, level: LogLevel) -> bool:
    """
    Give twistd's C{application} a log observer: the one twistd would have
    used, behind L{OperatorView}.  Leaves an application that has one, or
    one twistd would log elsewhere (C{--logger}), as it is; whether it did.
    """
    if not isinstance(application, Componentized):
        return False
    if application.getComponent(ILogObserver, None) is not None:
        return False
    observer = twistd_observer(twistd_options)
    if observer is None:
        return False
    application.setComponent(ILogObserver, FilteringLogObserver(observer, [OperatorView(level)]))
    return True

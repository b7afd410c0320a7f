"""Deadlines for outbound calls, derived from the caller's own deadline."""

from __future__ import annotations

from typing import Protocol

from services.common.errors import DeadlineExceeded

# Kept back from the caller's remaining time so that our answer still reaches it in time.
SAFETY_MARGIN_SECONDS = 0.002


class HasTimeRemaining(Protocol):
    def time_remaining(self) -> float | None: ...


def outbound_timeout(context: HasTimeRemaining | None, default: float, share: float = 1.0) -> float:
    """Timeout for one outbound call: ``share`` of what the caller has left, at most ``default``.

    Raises ``DeadlineExceeded`` when nothing is left, so that no call is started that cannot finish.
    """
    remaining = None if context is None else context.time_remaining()
    if remaining is None:
        return default
    budget = (remaining - SAFETY_MARGIN_SECONDS) * share
    if budget <= 0:
        raise DeadlineExceeded("DEADLINE_EXHAUSTED", "no time left for an outbound call")
    return min(default, budget)

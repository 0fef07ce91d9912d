"""Reconnect / retry delays for the channel workers: exponential, capped, with jitter."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """1 s, 2 s, 4 s ... up to `maximum`; jitter spreads many workers' reconnects apart."""

    def __init__(self, initial: float = 1.0, maximum: float = 60.0, factor: float = 2.0, jitter: float = 0.1) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._next = initial

    def next(self) -> float:
        """The delay to wait now; each call without a reset doubles the following one."""
        delay = self._next
        self._next = min(self.maximum, self._next * self.factor)
        return delay * (1 + random.uniform(-self.jitter, self.jitter))  # noqa: S311 - not crypto

    def reset(self) -> None:
        """Call after a success: the next failure starts again from `initial`."""
        self._next = self.initial


async def sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; return True early (and at once) when `stop` is set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        return False
    return True

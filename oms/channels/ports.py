"""What the channels need from the core, as Protocols the core implements.

- `Intake.handle(event)`: record the event in the inbox once (by channel + message id) and
  apply it (upsert / cancel / refund lines / status). Must be idempotent: platforms redeliver,
  the JD poller overlaps its windows, the TMC worker re-reads unconfirmed messages.
- `SkuMapSource.sku_map(channel)`: the SKU mapping table (platform SKU id -> merchant SKU) the
  admin API maintains, read when an order is parsed.

Errors: raise `IntakeError(status, reason)` for an answer the platform should see (e.g. 409, or
400 for a WeChat Pay amount that does not match); any other exception is treated as temporary
(503 to webhooks, no confirmation to TMC, watermark not advanced for JD), so the message comes
back later.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from adapters.normalized import Channel, ChannelEvent


@runtime_checkable
class Intake(Protocol):
    async def handle(self, event: ChannelEvent) -> None:
        """Store the event once and apply it; raise to refuse or to ask for a retry."""
        ...


class IntakeError(Exception):
    """A definite answer from the core (not a temporary failure): answered with `status`."""

    def __init__(self, status: int, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.field = field


@runtime_checkable
class SkuMapSource(Protocol):
    async def sku_map(self, channel: Channel) -> Mapping[str, str]:
        """Platform SKU id -> merchant SKU for one channel (empty when none is configured)."""
        ...


class StaticSkuMap:
    """A fixed mapping per channel (defaults, and the workers' tests)."""

    def __init__(self, maps: Mapping[Channel, Mapping[str, str]] | None = None) -> None:
        self._maps = dict(maps or {})

    async def sku_map(self, channel: Channel) -> Mapping[str, str]:
        return self._maps.get(channel, {})

"""One log line per refused message: channel, reason, field, message id — never buyer data.

Logger "oms.channels.rejected", so operations can route or count refusals on their own.
Callers pass only the adapter's error message (which never echoes values) and ids.
"""

from __future__ import annotations

import logging

from adapters.normalized import Channel

log = logging.getLogger("oms.channels.rejected")


def log_rejection(channel: Channel, reason: str, message_id: str | None, field: str | None = None) -> None:
    """Log a refused push/message (the body and buyer data are never logged)."""
    log.warning("rejected %s message %s: %s%s", channel.value, message_id or "-", reason,
                f" (field {field})" if field else "")

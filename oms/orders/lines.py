"""Which units of an order's lines are served, cancelled or still waiting for stock (pure).

A line's units are covered, SKU by SKU in line order, by what the order holds: units reserved or
handed over at its nodes. What is neither covered nor cancelled waits for stock; restock and
`POST /orders/{id}/allocate` route exactly those units again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

#: a line whose SKU we do not know cannot be routed; it waits until someone maps it
UNKNOWN_SKU = "unknown SKU"


class LineState(NamedTuple):
    line_no: int
    sku: str
    live: int  # ordered minus cancelled
    covered: int  # units held for it: reserved or handed over
    waiting: int  # live - covered

    @property
    def status(self) -> str:
        if self.live == 0:
            return "cancelled"
        return "backordered" if self.waiting else "open"


def line_states(lines: Sequence[Mapping], held: Mapping[str, int]) -> list[LineState]:
    """Cover each line's live units from the units held per SKU, in line order."""
    left = dict(held)
    out = []
    for l in lines:
        live = l["quantity"] - _cancelled(l)
        got = min(live, max(left.get(l["sku"], 0), 0))
        left[l["sku"]] = left.get(l["sku"], 0) - got
        out.append(LineState(l["line_no"], l["sku"], live, got, live - got))
    return out


def _cancelled(line: Mapping) -> int:
    try:
        return line["cancelled_qty"] or 0
    except KeyError:
        return 0


def held_units(reservations: Iterable[Mapping]) -> dict[str, int]:
    """Units an order holds per SKU: reserved or handed over (released ones are gone)."""
    out: dict[str, int] = {}
    for r in reservations:
        if r["state"] in ("reserved", "committed"):
            out[r["sku"]] = out.get(r["sku"], 0) + r["quantity"]
    return out


#: a store's reject marks the lines it is re-routing this way until it records where they went
REROUTING = "; re-routing"


def routable(line: Mapping) -> bool:
    """A waiting line restock may route: its SKU is known and no reject is re-routing it now."""
    reason = line["reason"] or ""
    return not (reason.startswith(UNKNOWN_SKU) or reason.endswith(REROUTING))


def missing_units(lines: Sequence[Mapping], held: Mapping[str, int]) -> dict[str, int]:
    """Units to route again per SKU: waiting units of lines whose SKU is known."""
    out: dict[str, int] = {}
    for l, st in zip(lines, line_states(lines, held)):
        if st.waiting and routable(l):
            out[st.sku] = out.get(st.sku, 0) + st.waiting
    return out


def waiting_reason(why: str, state: LineState) -> str:
    return why if state.waiting == state.live else f"{state.waiting} of {state.live} waiting: {why}"

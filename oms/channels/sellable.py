"""Sellable units per shop and SKU: pure arithmetic, no I/O (issue 13 §2).

    pool     = sum over the nodes serving the shop of max(available - safety, 0)
    sellable = pool (share 'all'), floor(pool * ratio) ('ratio'), min(pool, quota) ('quota')

Safety stock is held back at each node. The rule for a (node, SKU) is the most specific one
set: SKU at that node, else the SKU's own rule, else the node's rule, else 0. (A SKU rule
names the product, so it outranks a node-wide default; it applies at every node.)

Ratios floor, never round up: 9.5 units is 9, so shops with ratios summing to 1 are never told
more than the pool between them. The ratio is exact (Fraction of its decimal text), so 0.6 of
7 is 4 and 0.4 of 7 is 2, never 4.2000000001 -> 4 by luck.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from decimal import Decimal
from fractions import Fraction

import msgspec

#: delivery mode a shop serves -> the node capability that serves it
MODE_CAPABILITY = {"ship": "ship", "delivery": "delivery", "pickup": "pickup"}


class ShareKind(enum.StrEnum):
    ALL = "all"
    RATIO = "ratio"
    QUOTA = "quota"


class SafetyRules(msgspec.Struct, frozen=True):
    """Safety stock rules: keys (node_id, sku) with None for 'any'."""

    rules: dict[tuple[str | None, str | None], int] = {}

    @classmethod
    def of(cls, rows: Iterable[tuple[str | None, str | None, int]]) -> "SafetyRules":
        return cls({(node, sku): int(units) for node, sku, units in rows})

    def units(self, node_id: str, sku: str) -> tuple[int, str]:
        """Units held back for (node, SKU) and which rule said so."""
        for key, name in (((node_id, sku), "sku_at_node"), ((None, sku), "sku"), ((node_id, None), "node")):
            if key in self.rules:
                return self.rules[key], name
        return 0, "none"


class NodeFigure(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str
    available: int
    safety: int
    safety_rule: str
    counted: int


class Sellable(msgspec.Struct, frozen=True, kw_only=True):
    """The figure published to a shop for one SKU, and how it was reached."""

    shop_id: str
    sku: str
    nodes: list[NodeFigure]
    pool: int
    share_kind: ShareKind
    share_value: str
    sellable: int
    derivation: str


def pool_nodes(modes: Iterable[str], only: Iterable[str] | None,
               capabilities: Mapping[str, Iterable[str]]) -> list[str]:
    """Nodes making a shop's pool: `only` when given (kept if active), else every active node
    able to serve one of its modes. `capabilities`: active node id -> its capabilities."""
    if only is not None:
        return sorted(n for n in set(only) if n in capabilities)
    wanted = {MODE_CAPABILITY[m] for m in modes if m in MODE_CAPABILITY}
    return sorted(n for n, caps in capabilities.items() if wanted & set(caps))


def apply_share(pool: int, kind: ShareKind | str, value: Decimal | Fraction | int | str) -> int:
    """The shop's part of a pool: never more than the pool, never negative, ratios floored."""
    pool = max(int(pool), 0)
    kind = ShareKind(kind)
    if kind is ShareKind.ALL:
        return pool
    exact = Fraction(Decimal(str(value)))
    if exact < 0:
        return 0
    if kind is ShareKind.RATIO:
        return min(pool, math.floor(pool * min(exact, Fraction(1))))
    return min(pool, math.floor(exact))


def compute(shop_id: str, sku: str, available: Mapping[str, int], nodes: Iterable[str], safety: SafetyRules,
            share_kind: ShareKind | str, share_value: Decimal | Fraction | int | str) -> Sellable:
    """Sellable units of `sku` for one shop from the availability of its nodes (node -> units)."""
    figures: list[NodeFigure] = []
    for node in sorted(set(nodes)):
        avail = int(available.get(node, 0))
        units, rule = safety.units(node, sku)
        figures.append(NodeFigure(node_id=node, available=avail, safety=units, safety_rule=rule,
                                  counted=max(avail - units, 0)))
    pool = sum(f.counted for f in figures)
    kind = ShareKind(share_kind)
    value = str(share_value)
    sellable = apply_share(pool, kind, value)
    share_text = {ShareKind.ALL: "all of it", ShareKind.RATIO: f"floor({pool} x {value})",
                  ShareKind.QUOTA: f"min({pool}, quota {value})"}[kind]
    derivation = (f"{len(figures)} node(s): available {sum(f.available for f in figures)}, "
                  f"safety held back {sum(f.available - f.counted for f in figures)} -> pool {pool}; "
                  f"share {kind.value}: {share_text} = {sellable}")
    return Sellable(shop_id=shop_id, sku=sku, nodes=figures, pool=pool, share_kind=kind, share_value=value,
                    sellable=sellable, derivation=derivation)

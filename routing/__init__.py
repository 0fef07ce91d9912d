"""Pure routing library: nodes, a stock snapshot and orders in; plans out (H3 + OR-Tools).

Imports nothing from the service: no database, no Redis, no web framework.
"""

from routing.geo import DEFAULT_RESOLUTION, Network, cell_of, distance_m
from routing.model import (
    Allocation,
    CostWeights,
    Mode,
    NodeKind,
    Plan,
    Role,
    RouteLine,
    RouteNode,
    RouteRequest,
    Strategy,
    Unserved,
    WavePlan,
)
from routing.planner import plan
from routing.wave import greedy_wave, plan_wave

__all__ = [
    "DEFAULT_RESOLUTION",
    "Allocation",
    "CostWeights",
    "Mode",
    "Network",
    "NodeKind",
    "Plan",
    "Role",
    "RouteLine",
    "RouteNode",
    "RouteRequest",
    "Strategy",
    "Unserved",
    "WavePlan",
    "cell_of",
    "distance_m",
    "greedy_wave",
    "plan",
    "plan_wave",
]

"""Block-activation planning: the convergence bound, the memory model, and the solvers that trade
one against the other (docs/theory.md)."""

from zorba.planner.bound import BoundConstants, bound, schedule_bound
from zorba.planner.estimate import ScalarReport
from zorba.planner.memory_model import MemoryModel
from zorba.planner.problem import CoverageInfeasible, Plan, PlanInfeasible, Problem
from zorba.planner.solve import (
    ParetoPoint,
    Schedule,
    brute_force,
    pareto_front,
    plan_schedule,
    solve_exact,
    solve_heuristic,
)
from zorba.planner.zorba_planner import ZorbaPlanner, make_zorba_planner

__all__ = [
    "BoundConstants",
    "CoverageInfeasible",
    "MemoryModel",
    "ParetoPoint",
    "Plan",
    "PlanInfeasible",
    "Problem",
    "ScalarReport",
    "Schedule",
    "ZorbaPlanner",
    "bound",
    "brute_force",
    "make_zorba_planner",
    "pareto_front",
    "plan_schedule",
    "schedule_bound",
    "solve_exact",
    "solve_heuristic",
]

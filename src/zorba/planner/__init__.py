"""Block-activation planning: the energy planner (energy.py: block energies fitted from the clients'
scalars, an epsilon-constraint lexicographic MILP; docs/theory.md, Part A) and the client memory model
it plans against (memory_model.py). The baselines share its interface in zorba.plans."""

from zorba.planner.energy import BlockEnergy, EnergyPlanner, FrontPoint, NoFeasiblePlan, pareto_front
from zorba.planner.memory_model import MemoryModel, format_bytes

__all__ = [
    "BlockEnergy",
    "EnergyPlanner",
    "FrontPoint",
    "MemoryModel",
    "NoFeasiblePlan",
    "format_bytes",
    "pareto_front",
]

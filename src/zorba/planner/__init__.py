"""Block-activation planning: which blocks each client perturbs in a round. It owns the energy
planner (energy.py: block energies fitted from the clients' scalars, an epsilon-constraint
lexicographic MILP; docs/theory.md A4-A6), the baseline planners behind the same interface
(plans.py) and the step-size rule (steprule.py). It may import zorba.memory (the memory model it
plans against), zorba.core, zorba.wire and zorba.errors."""

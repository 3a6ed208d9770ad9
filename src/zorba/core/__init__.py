"""The ZO core: the counter-based perturbation generator (rng.py, its C and Triton kernels, and the
deferred and packed ways a step applies it), the ZO step on a set of blocks (zo.py), the model split
into blocks, model loading, scoring, tasks, the clients' data and the replica that follows the log.
It may import zorba.wire and zorba.errors; nothing federated, no memory format, no planner."""

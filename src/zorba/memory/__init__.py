"""The clients' memory: frozen blocks in low precision (precision.py, quant.py), the shared frozen
prefix of a step's forwards (prefix.py), a replica streamed from the checkpoint (streamload.py), the
clients' budgets (profiles.py) and the affine model of a client's memory (memory_model.py). It may
import zorba.core, zorba.wire and zorba.errors."""

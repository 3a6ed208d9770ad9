"""Experiments made of whole runs: one `zorba run` end to end (job.py), the study's grid of runs, the
methods' bench, their reports, the significance test and the Markdown sections they regenerate. It
may import zorba.flower, zorba.methods and every lower layer; only the command line is above it."""

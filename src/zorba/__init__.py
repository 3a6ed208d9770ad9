"""zorba: federated zeroth-order fine-tuning with heterogeneous block activation."""

__version__ = "0.1.0"

"""Mosaic node: a peer that hosts an expert, discovers peers and answers queries."""

__version__ = "0.1.0"

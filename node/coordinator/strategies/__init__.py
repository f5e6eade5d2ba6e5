"""Collaboration strategies, one module each, and the table that names them."""

from .base import Answer, Param, Strategy
from .table import STRATEGIES

__all__ = ["STRATEGIES", "Answer", "Param", "Strategy"]

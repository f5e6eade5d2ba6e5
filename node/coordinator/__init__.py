"""Answering queries: pure routing of experts, and the executor that asks them."""

from .executor import STRATEGIES, Coordinator, ExpertClient, QueryEvent, QueryFailed
from .routing import Candidate, Need, NoExpertAvailable, Route, rank

__all__ = ["STRATEGIES", "Candidate", "Coordinator", "ExpertClient", "Need", "NoExpertAvailable", "QueryEvent",
           "QueryFailed", "Route", "rank"]

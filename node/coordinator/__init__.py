"""Answering queries: strategies that compose experts, over one I/O port (the pool)."""

from .calls import Ask, QueryFailed, Reply, StepFailed, Transport
from .executor import Coordinator, QueryEvent
from .health import Health
from .pool import Pool
from .routing import Candidate, Need, NoExpertAvailable, Route, rank
from .strategies import STRATEGIES

__all__ = ["STRATEGIES", "Ask", "Candidate", "Coordinator", "Health", "Need", "NoExpertAvailable", "Pool",
           "QueryEvent", "QueryFailed", "Reply", "Route", "StepFailed", "Transport", "rank"]

"""Decaying latency and failure penalties, and bans that end (issue 11 item 10)."""

from __future__ import annotations

import pytest

import protocol as p
from node.coordinator.health import BAN_BASE_S, Health
from node.coordinator.routing import Candidate, Need, rank


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(peer: str) -> p.CapabilityRecord:
    return p.CapabilityRecord(peer_id=peer, name=peer, seq=1, issued_at=0.0, ttl=60.0, base_model="m")


def order(health: Health, peers=("A", "B")) -> list[str]:
    cands = [Candidate(record(x), health.latency(x), health.failures(x), health.banned(x)) for x in peers]
    return [r.peer_id for r in rank(cands, Need())]


def test_an_expert_measured_slow_once_is_tried_again_later():
    clock = Clock()
    health = Health(clock=clock, half_life_s=60.0)
    health.success("A", 9.0)  # slow once
    health.success("B", 1.0)
    assert order(health) == ["B", "A"]
    clock.now += 600  # ten half-lives: the old measurement barely counts
    assert health.latency("A") == pytest.approx(9.0 / 1024)
    assert health.raw_latency("A") == 9.0  # the wait budget still remembers how slow it was
    health.success("B", 1.0)  # B keeps being measured; A's penalty has faded below it
    assert order(health) == ["A", "B"]


def test_failures_decay_and_bans_back_off_but_end():
    clock = Clock()
    health = Health(clock=clock, half_life_s=60.0)
    health.failure("A")
    assert health.banned("A") and order(health) == ["B", "A"]
    clock.now += BAN_BASE_S + 0.01
    assert not health.banned("A")  # re-probed once the ban ends
    health.failure("A")
    clock.now += BAN_BASE_S + 0.01
    assert health.banned("A")  # second failure in a row: longer ban
    clock.now += BAN_BASE_S
    assert not health.banned("A")
    assert health.failures("A") > 1.5
    clock.now += 600
    assert health.failures("A") < 0.01 or health.failures("A") == 0.0
    assert order(health) == ["A", "B"]  # forgiven: ties break by peer id again


def test_success_clears_the_ban():
    clock = Clock()
    health = Health(clock=clock)
    health.failure("A")
    health.failure("A")
    health.success("A", 0.5)
    assert not health.banned("A") and health.snapshot("A")["banned"] is False

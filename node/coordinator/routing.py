"""Pure scoring of experts for one query: which peer should answer it.

No network, no clock, no registry here: the executor passes in what the
registry knows (signed capability records, observed latency) and gets back an
ordered list of routes, best first.  The order doubles as the failover order.

The weights follow what the anchors rank on (research/anchors.md, LocalAI's
federated candidate selection and section 14 item 3): capability match first,
then how busy the expert is, then how fast it has been for us.  A pinned model
overrides the capability match but still orders equal candidates by load.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from protocol import CapabilityRecord

# Virtual models: not an expert, a strategy of the network (``GET /v1/models``).
VIRTUAL_PREFIX = "mosaic/"

# Weights.  A full tag match (10) outweighs any realistic load difference so a
# busy specialist still beats an idle generalist, unless its queue is deep.
TAG_WEIGHT = 10.0
ADAPTER_BONUS = 2.0
QUEUE_WEIGHT = 1.0
LOAD_WEIGHT = 3.0
LATENCY_WEIGHT = 1.0  # per second of observed mean latency
FAILURE_WEIGHT = 4.0  # per recent failure seen by this coordinator


class NoExpertAvailable(LookupError):
    """No known expert can serve the query (none at all, or none matches the pinned model)."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """An expert as the coordinator sees it: its signed record plus local observations."""

    record: CapabilityRecord
    latency_s: float | None = None  # mean time to first token this coordinator observed
    recent_failures: int = 0

    @property
    def peer_id(self) -> str:
        return self.record.peer_id


@dataclass(frozen=True, slots=True)
class Need:
    """What the query asks of an expert."""

    tags: tuple[str, ...] = ()
    model: str | None = None  # an expert name, "<name>/<adapter>", a peer id, or a virtual model
    adapter: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """One choice: ask this expert, with this adapter (or the bare base model)."""

    candidate: Candidate
    adapter: str | None
    score: float

    @property
    def peer_id(self) -> str:
        return self.candidate.peer_id


def model_ids(record: CapabilityRecord) -> list[str]:
    """The model ids under which an expert is listed: its name, and name/adapter per adapter."""
    return [record.name] + [f"{record.name}/{a.name}" for a in record.adapters]


def _pin(record: CapabilityRecord, model: str) -> tuple[bool, str | None]:
    """Does the pinned ``model`` designate this expert, and with which adapter?"""
    if model == record.peer_id or model == record.name:
        return True, None
    name, sep, adapter = model.partition("/")
    if sep and name == record.name and any(a.name == adapter for a in record.adapters):
        return True, adapter
    return False, None


def _tag_match(record: CapabilityRecord, tags: Sequence[str]) -> tuple[float, str | None]:
    """Fraction of requested tags the expert covers, and the adapter named after one, if any.

    Adapters carry no tags of their own in the record, so an adapter whose name
    equals a requested tag counts as covering it (and is the one we ask for).
    """
    if not tags:
        return 0.0, None
    wanted = {t.lower() for t in tags}
    have = {t.lower() for t in record.tags}
    adapter = next((a.name for a in record.adapters if a.name.lower() in wanted), None)
    if adapter is not None:
        have.add(adapter.lower())
    return len(wanted & have) / len(wanted), adapter


def score(candidate: Candidate, need: Need, adapter_match: float = 0.0) -> float:
    """Higher is better.  Capability match minus costs of load, latency and failures."""
    record = candidate.record
    value = TAG_WEIGHT * adapter_match
    value -= QUEUE_WEIGHT * record.queue_depth
    value -= LOAD_WEIGHT * min(record.load, 10.0)
    if candidate.latency_s is not None:
        value -= LATENCY_WEIGHT * candidate.latency_s
    value -= FAILURE_WEIGHT * candidate.recent_failures
    return value


def rank(candidates: Iterable[Candidate], need: Need, *, exclude: Iterable[str] = ()) -> list[Route]:
    """Every expert that can serve ``need``, best first (ties broken by peer id, so stable).

    Raises :class:`NoExpertAvailable` when a concrete model is pinned and no
    expert matches it; returns ``[]`` when there is simply no expert.
    """
    excluded = set(exclude)
    pinned = need.model if need.model and not need.model.startswith(VIRTUAL_PREFIX) else None
    routes: list[Route] = []
    pin_matched = False
    for candidate in candidates:
        record = candidate.record
        match, adapter = _tag_match(record, need.tags)
        if pinned is not None:
            ok, pinned_adapter = _pin(record, pinned)
            if not ok:
                continue
            pin_matched = True
            adapter = pinned_adapter
        if candidate.peer_id in excluded:
            continue
        if need.adapter is not None:
            if not any(a.name == need.adapter for a in record.adapters):
                continue
            adapter = need.adapter
        value = score(candidate, need, match) + (ADAPTER_BONUS if adapter is not None and need.tags else 0.0)
        routes.append(Route(candidate=candidate, adapter=adapter, score=value))
    if pinned is not None and not pin_matched:
        raise NoExpertAvailable(f"no expert serves model {pinned!r}")
    routes.sort(key=lambda r: (-r.score, r.peer_id))
    return routes

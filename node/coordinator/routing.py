"""Pure scoring of experts for one query: which peer should answer it.

No network, no clock, no registry here: the executor passes in what the
registry knows (signed capability records, observed latency) and gets back an
ordered list of routes, best first.  The order doubles as the failover order.

The weights follow what the anchors rank on (research/anchors.md, LocalAI's
federated candidate selection and section 14 item 3): capability match first,
then how busy the expert is, then how fast it has been for us.  A pinned model
overrides the capability match but still orders equal candidates by load.

Above all of that sits reachability (issue 12): a record is only a claim, and
keys are free, so experts this node *verified* (itself, a live connection, a
recent answer) always rank before unverified ones, whatever load the latter
advertise; and a name claimed by several peers resolves to the local expert,
else to the verified claimants that have served this node, else to the
verified claimants.  A peer id pins exactly one expert.

The load and queue depth a record advertises are claims too (issue 22, attack
7: an attacker advertising load 0 took ``route`` 6 of 6 from an honest expert
that said it was busy), so they do not rank: what this node measured does, the
time to first token of the expert's served calls (queueing included, see
health.py), and an expert it has not measured yet counts as
:data:`UNMEASURED_LATENCY_S` (tried when the measured ones are slower).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from protocol import CapabilityRecord

# Virtual models: not an expert, a strategy of the network (``GET /v1/models``).
VIRTUAL_PREFIX = "mosaic/"

# Weights.  A full tag match (10) outweighs any realistic load difference so a
# busy specialist still beats an idle generalist, unless its queue is deep.
TAG_WEIGHT = 10.0
ADAPTER_BONUS = 2.0
LATENCY_WEIGHT = 1.0  # per second of observed mean latency
# The latency assumed for an expert this coordinator has not measured yet (no served call).
UNMEASURED_LATENCY_S = 1.0
# Where the best known-good expert stands at the latest in a failover list (0-based: the second).
KNOWN_GOOD_AT = 1
FAILURE_WEIGHT = 4.0  # per recent failure seen by this coordinator (decaying, see health.py)
# Semantic match of the query to the expert's description.  MiniLM cosines of a short question and
# a one-line description are low and close together (measured: 0.16 for the matching expert vs
# 0.08 for the next), so they are rescaled per query to 0..1 across the candidates; the best match
# then weighs a little under a full tag match, above load and latency differences.  A spread under
# MIN_RELEVANCE_SPREAD says nothing (every description is as (ir)relevant) and is ignored.
RELEVANCE_WEIGHT = 8.0
MIN_RELEVANCE_SPREAD = 0.04
DEV_SCORE_WEIGHT = 4.0  # per unit of dev accuracy on the query's task, when the record has one
BANNED_PENALTY = 100.0  # banned experts come last but are still tried when nothing else is left


class NoExpertAvailable(LookupError):
    """No known expert can serve the query (none at all, or none matches the pinned model)."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """An expert as the coordinator sees it: its signed record plus local observations."""

    record: CapabilityRecord
    latency_s: float | None = None  # mean time to first token this coordinator observed
    recent_failures: float = 0
    banned: bool = False  # failed recently or demoted; tried only after every other expert
    dev_score: float | None = None  # accuracy on the query's task measured on dev data (0..1)
    verified: bool = False  # this node verified the peer is reachable (registry.verified_peers)
    local: bool = False  # the expert runs on this very node
    demoted: bool = False  # caught lying (reputation.py; also ``banned``): left out of fan-outs too

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


def model_profile(record: CapabilityRecord, model_id: str) -> dict[str, float]:
    """``{task: accuracy}`` the record's signed self-evaluation claims for one of its model ids
    (the base for ``name``, the adapter for ``name/adapter``), dev split only: the competence
    profile that reports compare experts by."""
    _, sep, adapter = model_id.partition("/")
    wanted = adapter if sep else None
    return {e.task: float(e.accuracy) for e in record.evals if e.adapter == wanted and e.split == "dev"}


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


def claimed_dev_score(record: CapabilityRecord, tags: Sequence[str]) -> float | None:
    """The best dev accuracy the record's self-evaluation (``evals``) claims on a task named in ``tags``.

    Self-reported and signed: a prior for ranking, not proof (reputation's spot checks and
    ``node spot-check`` test claims).  ``node eval --task-tags`` puts the task name in the tags.
    """
    scores = [e.accuracy for e in record.evals if e.split == "dev" and e.task in tags]
    return max(scores) if scores else None


def score(candidate: Candidate, need: Need, adapter_match: float = 0.0) -> float:
    """Higher is better.  Capability match minus the costs this node measured: latency and failures.

    The record's ``load`` and ``queue_depth`` are not used: they are the expert's own claims.
    """
    value = TAG_WEIGHT * adapter_match
    latency = UNMEASURED_LATENCY_S if candidate.latency_s is None else candidate.latency_s
    value -= LATENCY_WEIGHT * latency
    value -= FAILURE_WEIGHT * candidate.recent_failures
    if candidate.dev_score is not None:
        value += DEV_SCORE_WEIGHT * candidate.dev_score
    if candidate.banned:
        value -= BANNED_PENALTY
    return value


def rank(candidates: Iterable[Candidate], need: Need, *, exclude: Iterable[str] = (),
         relevance: Mapping[str, float] | None = None) -> list[Route]:
    """Every expert that can serve ``need``, best first (ties broken by peer id, so stable).

    ``relevance`` maps peer ids to the semantic similarity of the query to the
    expert's self-description (``semantic.py``), rescaled here (see RELEVANCE_WEIGHT).

    Raises :class:`NoExpertAvailable` when a concrete model is pinned and no
    expert matches it; returns ``[]`` when there is simply no expert.
    """
    excluded = set(exclude)
    scaled = rescale(relevance or {})
    pinned = need.model if need.model and not need.model.startswith(VIRTUAL_PREFIX) else None
    routes: list[Route] = []
    pin_matched = False
    if pinned is not None:
        candidates = _claimants(candidates, pinned)
    for candidate in candidates:
        record = candidate.record
        match, adapter = _tag_match(record, need.tags)
        if pinned is not None:
            _, pinned_adapter = _pin(record, pinned)
            pin_matched = True
            adapter = pinned_adapter
        if candidate.peer_id in excluded:
            continue
        if need.adapter is not None:
            if not any(a.name == need.adapter for a in record.adapters):
                continue
            adapter = need.adapter
        value = score(candidate, need, match) + (ADAPTER_BONUS if adapter is not None and need.tags else 0.0)
        value += RELEVANCE_WEIGHT * scaled.get(candidate.peer_id, 0.0)
        routes.append(Route(candidate=candidate, adapter=adapter, score=value))
    if pinned is not None and not pin_matched:
        raise NoExpertAvailable(f"no expert serves model {pinned!r}")
    routes.sort(key=lambda r: (not r.candidate.verified, -r.score, r.peer_id))
    return known_good_early(routes)


def known_good_early(routes: list[Route]) -> list[Route]:
    """Move the best *known-good* expert (verified, served this node: a measured latency, not
    banned) to position :data:`KNOWN_GOOD_AT` if it ranks lower, so the failover list reaches
    it by the second attempt: unmeasured experts still get tried first when they score better
    (that is how newcomers get measured), but a stream of them (e.g. Sybils that keep a
    connection open, hence verified) costs a query one attempt, not every attempt (issue 22)."""
    for index, route in enumerate(routes):
        candidate = route.candidate
        if candidate.verified and candidate.latency_s is not None and not candidate.banned:
            if index > KNOWN_GOOD_AT:
                routes.insert(KNOWN_GOOD_AT, routes.pop(index))
            break
    return routes


def _claimants(candidates: Iterable[Candidate], pinned: str) -> list[Candidate]:
    """The experts a pin designates.  Names are not unique (anyone can claim one): a name
    claimed by several peers means the local expert if it is one of them, else the verified
    claimants that served this node before (a measured latency), else the verified claimants
    (name hijack, issues 12 and 22); a peer id is unique by construction."""
    matching = [c for c in candidates if _pin(c.record, pinned)[0]]
    verified = [c for c in matching if c.verified]
    for tier in ([c for c in matching if c.local], [c for c in verified if c.latency_s is not None], verified):
        if tier:
            return tier
    return matching


def rescale(relevance: Mapping[str, float]) -> dict[str, float]:
    """Similarities mapped to 0..1 across the candidates (best 1, worst 0); ``{}`` when they barely differ."""
    if not relevance:
        return {}
    low, high = min(relevance.values()), max(relevance.values())
    if high - low < MIN_RELEVANCE_SPREAD:
        return {}
    return {peer: (value - low) / (high - low) for peer, value in relevance.items()}


def diverse(routes: Sequence[Route], k: int, *, repeat: bool = False) -> list[Route]:
    """Up to ``k`` routes from a ranked list, one per peer, best first.

    Only with ``repeat`` are peers reused (in rank order) when fewer than ``k``
    exist: under greedy decoding the same expert asked twice says the same thing,
    so a repeat adds no diversity, counts one opinion twice in a vote and
    doubles the damage when that peer fails.
    """
    chosen: list[Route] = []
    seen: set[str] = set()
    for route in routes:
        if len(chosen) == k:
            return chosen
        if route.peer_id not in seen:
            chosen.append(route)
            seen.add(route.peer_id)
    i = 0
    while repeat and routes and len(chosen) < k:
        chosen.append(routes[i % len(routes)])
        i += 1
    return chosen

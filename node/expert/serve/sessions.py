"""Generation sessions, trio side: limits, idle expiry, receipts, and the session exchange.

A session holds a KV cache in the expert's memory, so who may hold how many
and for how long is policy enforced here before anything reaches the worker
(session_store.py holds the tensors):

* at most ``max_per_peer`` open sessions per remote peer and ``max_total`` in
  all (``busy`` beyond: the coordinator tries another expert);
* a session unused for its idle timeout (the client's ask, capped by the
  expert's ``max_idle_s``) is dropped and its memory freed;
* a peer can only touch its own sessions: the key is (peer, session id).

On ``/mosaic/infer/1`` a stream that starts with a session message stays open
for more session messages (one reply each, in order), so a fusion step costs
one small frame each way and no new stream::

    client -> SessionOpen     server -> SessionNext  | ErrorMessage
    client -> SessionAppend   server -> SessionNext  | ErrorMessage   (repeated)
    client -> SessionClose    server -> SessionClosed | ErrorMessage

A failed step answers an ``ErrorMessage`` and the stream keeps serving.  The
session outlives its stream until closed or idle, so a client may also send
each message on a stream of its own.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import msgspec
import trio

from protocol import (
    ErrorMessage,
    Message,
    SessionAppend,
    SessionClose,
    SessionClosed,
    SessionNext,
    SessionOpen,
)
from protocol.receipts import DistributionChain, prompt_digest, session_input_digest

from ...logs import event, get_logger
from ...net.streams import FramedStream, StreamClosed
from ..errors import Busy, RequestRejected
from .jobs import Job
from .local import ExpertError, LocalExpert
from .session_store import SessionOp, UnknownSession

if TYPE_CHECKING:
    from .notary import Notary

R = TypeVar("R", bound=Message)  # the reply type a session op expects

log = get_logger("expert.sessions")

SESSION_MESSAGES = (SessionOpen, SessionAppend, SessionClose)
# How long a worker-side session op may wait for its turn and its forward.
OP_TIMEOUT = 60.0
_REAP_INTERVAL = 1.0
_REMEMBERED = 1024  # ids of recently ended sessions, to say "closed" / "expired" instead of "unknown"


class TooManySessions(Busy):
    """This peer (or everyone together) holds as many sessions as the expert allows."""


class DuplicateSession(RequestRejected):
    code = "bad_request"


@dataclass(eq=False)
class _Entry:
    """Trio-side bookkeeping of one open session (what the receipt at close attests to)."""

    owner: str
    session_id: str
    idle_s: float
    last_used: float
    adapter: str | None
    prompt: str  # digest of the prompt as received
    fed: list[int] = field(default_factory=list)  # tokens appended after the prompt, in order
    chain: DistributionChain = field(default_factory=DistributionChain)
    in_flight: int = 0

    @property
    def key(self) -> str:
        return f"{self.owner}/{self.session_id}"


class SessionTable:
    """Which sessions are open, whose, and since when (pure: callers pass ``now``)."""

    def __init__(self, *, max_total: int, max_per_peer: int, max_idle_s: float) -> None:
        self.max_total = max_total
        self.max_per_peer = max_per_peer
        self.max_idle_s = max_idle_s
        self._open: dict[tuple[str, str], _Entry] = {}
        self._per_peer: collections.Counter[str] = collections.Counter()
        self._ended: collections.OrderedDict[tuple[str, str], str] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def reserve(self, owner: str, request: SessionOpen, now: float) -> _Entry:
        sid = request.session_id
        if (owner, sid) in self._open:
            raise DuplicateSession(f"session {sid!r} is already open", request_id=sid)
        if self._per_peer[owner] >= self.max_per_peer:
            raise TooManySessions(f"you hold {self.max_per_peer} sessions, the most this expert allows per peer; "
                                  "close one first", request_id=sid)
        if len(self._open) >= self.max_total:
            raise TooManySessions(f"this expert holds {self.max_total} sessions, its limit; retry later",
                                  request_id=sid)
        entry = _Entry(owner=owner, session_id=sid, idle_s=min(request.idle_timeout_s, self.max_idle_s),
                       last_used=now, adapter=request.adapter, prompt=prompt_digest(request.prompt, request.messages))
        self._open[(owner, sid)] = entry
        self._per_peer[owner] += 1
        self._ended.pop((owner, sid), None)
        return entry

    def use(self, owner: str, session_id: str, now: float) -> _Entry:
        entry = self._open.get((owner, session_id))
        if entry is None:
            how = self._ended.get((owner, session_id))
            detail = f"was {how}" if how else "was never opened here"
            raise UnknownSession(f"session {session_id!r} {detail}", request_id=session_id)
        entry.last_used = now
        return entry

    def end(self, entry: _Entry, how: str) -> None:
        """Forget an open session; ``how`` (closed / expired / failed) is remembered for error messages."""
        if self._open.pop((entry.owner, entry.session_id), None) is None:
            return
        self._per_peer[entry.owner] -= 1
        if self._per_peer[entry.owner] <= 0:
            del self._per_peer[entry.owner]
        self._ended[(entry.owner, entry.session_id)] = how
        while len(self._ended) > _REMEMBERED:
            self._ended.popitem(last=False)

    def expired(self, now: float) -> list[_Entry]:
        """End and return the sessions idle past their timeout (none with an operation in flight)."""
        gone = [e for e in self._open.values() if not e.in_flight and now - e.last_used > e.idle_s]
        for entry in gone:
            self.end(entry, f"expired after {entry.idle_s:g} s idle")
        return gone


class SessionHost:
    """Runs session operations on a :class:`LocalExpert`'s worker under a :class:`SessionTable`."""

    def __init__(self, local: LocalExpert, table: SessionTable, notary: Notary | None = None) -> None:
        self.local = local
        self.table = table
        self.notary = notary
        self._drops: list[str] = []  # keys of expired sessions whose memory the worker must still free

    async def handle(self, owner: str, message: Message) -> SessionNext | SessionClosed | ErrorMessage:
        """Answer one session message from ``owner``; every failure becomes a typed ErrorMessage."""
        try:
            if isinstance(message, SessionOpen):
                return await self.open(owner, message)
            if isinstance(message, SessionAppend):
                return await self.append(owner, message)
            assert isinstance(message, SessionClose)
            return await self.close(owner, message)
        except RequestRejected as exc:
            return exc.to_message()
        except ExpertError as exc:
            return ErrorMessage(code=exc.code, message=exc.message, request_id=message.session_id)  # type: ignore[attr-defined]
        except trio.TooSlowError:
            return ErrorMessage(code="timeout", message="the expert did not answer in time",
                                request_id=message.session_id)  # type: ignore[attr-defined]

    async def open(self, owner: str, request: SessionOpen) -> SessionNext:
        entry = self.table.reserve(owner, request, time.monotonic())
        entry.in_flight += 1
        try:
            reply = await self._run(SessionOp("open", entry.key, request, request.adapter), SessionNext)
        except BaseException:
            self.table.end(entry, "failed to open")
            self._drops.append(entry.key)  # the prefill may still run after we gave up on it
            raise
        finally:
            entry.in_flight -= 1
        entry.chain.update(reply.token_ids, reply.logprobs)
        event(log, "session_opened", peer=owner, session=request.session_id, tokens=reply.position)
        return msgspec.structs.replace(reply, idle_timeout_s=entry.idle_s)

    async def append(self, owner: str, request: SessionAppend) -> SessionNext:
        entry = self.table.use(owner, request.session_id, time.monotonic())
        entry.in_flight += 1
        try:
            reply = await self._run(SessionOp("append", entry.key, request), SessionNext)
        finally:
            entry.in_flight -= 1
            entry.last_used = time.monotonic()
        entry.fed.extend(request.token_ids)
        entry.chain.update(reply.token_ids, reply.logprobs)
        return reply

    async def close(self, owner: str, request: SessionClose) -> SessionClosed:
        entry = self.table.use(owner, request.session_id, time.monotonic())
        self.table.end(entry, "closed")
        try:
            reply = await self._run(SessionOp("close", entry.key, request), SessionClosed)
        except BaseException:
            self._drops.append(entry.key)  # closed for the client either way; free the cache later
            raise
        if self.notary is not None:
            receipt = self.notary.sign(kind="session", request_id=entry.session_id, adapter=entry.adapter,
                                       input_digest=session_input_digest(entry.prompt, entry.fed),
                                       output_digest=entry.chain.digest(), tokens=len(entry.fed))
            reply = msgspec.structs.replace(reply, receipt=receipt)
        return reply

    async def _run(self, op: SessionOp, kind: type[R]) -> R:
        with trio.fail_after(OP_TIMEOUT + 5.0):
            return await self.local.call(op, kind)

    async def reap_forever(self) -> None:
        """Free expired sessions' memory, once a second (the worker thread owns the caches)."""
        while True:
            await trio.sleep(_REAP_INTERVAL)
            for entry in self.table.expired(time.monotonic()):
                event(log, "session_expired", peer=entry.owner, session=entry.session_id, idle_s=entry.idle_s)
                self._drops.append(entry.key)
            self._submit_drops()

    def _submit_drops(self) -> None:
        kept = []
        for key in self._drops:
            job = Job(request=SessionOp("drop", key), emit=lambda _m: None, deadline=time.monotonic() + OP_TIMEOUT)
            try:
                self.local.worker.submit(job)
            except Busy:
                kept.append(key)  # the queue is full: free it on the next round
            except RequestRejected:
                pass  # the worker is stopping: its caches go with it
        self._drops = kept


async def serve_session_stream(host: SessionHost, stream: FramedStream, first: Message) -> None:
    """Answer session messages on ``stream`` until the client closes it or stays silent too long."""
    owner = stream.remote_peer
    message = first
    while True:
        await stream.send(await host.handle(owner, message))
        with trio.move_on_after(host.table.max_idle_s + _REAP_INTERVAL):
            try:
                message = await stream.receive(SESSION_MESSAGES)
            except StreamClosed:
                return
            continue
        return  # silent past any session's idle timeout: the sessions expire on their own

"""``/mosaic/infer/1``: the expert's libp2p protocol, and the node :class:`ExpertService`.

One request per stream::

    client -> GenerateRequest        server -> Queued* TokenChunk* then GenerateResult | ErrorMessage
    client -> ScoreRequest           server -> ScoreResult | ErrorMessage
    client -> NextTokenRequest       server -> NextTokenResult | ErrorMessage
    client -> Cancel (optional, any time during a generation; or just close/reset)
    client -> SessionOpen / SessionAppend / SessionClose ...   (a generation session: sessions.py)

While a generation streams, a second task reads the stream: ``Cancel``, EOF
or a reset cancels the job, which leaves the batch at the next decode step
(the worker then sends ``GenerateResult(finish_reason="cancelled")`` if the
stream is still open).  :func:`node.net.streams.serve` provides the frame cap,
first-message deadline, per-peer limits and typed errors for bad frames
(custom libp2p handlers have no read deadline of their own: research/libp2p.md).

``Queued`` (only when the request sets ``progress``) tells the client the
expert is alive and where the request waits; it is sent even for a
non-streamed request, since it carries no text.  It is also the keep-alive
of a request that already runs (``started``): after each QUEUE_KEEPALIVE_S
with nothing sent on the stream (LocalExpert.with_keepalive), so a slow
forward pass is not mistaken for a dead expert.
"""

from __future__ import annotations

import logging
import time
from contextlib import aclosing
from pathlib import Path
from typing import Any

import trio

from protocol import (
    INFER_PROTOCOL,
    AdapterInfo,
    Cancel,
    ErrorMessage,
    GenerateRequest,
    NextTokenRequest,
    ScoreRequest,
)

from ...config import ExpertConfig
from ...logs import event, get_logger
from ...net.streams import FramedStream, StreamClosed, serve
from ..errors import RequestRejected
from .jobs import Job
from .local import TERMINAL, LocalExpert
from .sessions import SESSION_MESSAGES, SessionHost, SessionTable, serve_session_stream

log = get_logger("expert.service")

REQUEST_TYPES = (GenerateRequest, ScoreRequest, NextTokenRequest, *SESSION_MESSAGES)
# GenerateRequest.timeout_s may be up to an hour; the per-request deadline is
# enforced by the job itself, serve()'s deadline is only the outer bound.
MAX_STREAM_SECONDS = 3600.0 + 30.0
FIRST_MESSAGE_TIMEOUT = 10.0
# Grace after a Cancel / the job's deadline for the worker's terminal message.
_TERMINAL_GRACE = 5.0


async def handle_infer_stream(expert: LocalExpert, stream: FramedStream, sessions: SessionHost | None = None) -> None:
    """Serve one request on ``stream`` (see the module docstring); ``sessions`` serves the session messages."""
    request = await stream.receive(REQUEST_TYPES)
    if not isinstance(request, (GenerateRequest, ScoreRequest, NextTokenRequest)):  # one of SESSION_MESSAGES
        if sessions is None:
            await stream.send(ErrorMessage(code="unavailable", message="this expert serves no sessions"))
            return
        await serve_session_stream(sessions, stream, request)
        return
    try:
        async with expert.open(request, requester=stream.remote_peer) as (job, messages):
            if not isinstance(request, GenerateRequest):
                with trio.fail_after(_remaining(job) + _TERMINAL_GRACE):
                    await stream.send(await messages.receive())
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_client, stream, job)
                with trio.fail_after(_remaining(job) + _TERMINAL_GRACE):
                    events = expert.with_keepalive(job, messages, drop_chunks=not request.stream)
                    async with aclosing(events):
                        async for message in events:
                            try:
                                await stream.send(message)
                            except StreamClosed:
                                job.cancel()  # client gone: free the batch slot
                                raise
                            if isinstance(message, TERMINAL):
                                break
                nursery.cancel_scope.cancel()
    except RequestRejected as exc:
        await stream.send(exc.to_message())


async def _watch_client(stream: FramedStream, job: Job) -> None:
    """Cancel ``job`` when the client sends ``Cancel`` or goes away (EOF / reset)."""
    try:
        while True:
            message = await stream.receive(Cancel)
            if message.request_id == job.request_id:
                break
    except StreamClosed:
        pass
    finally:
        job.cancel()


def _remaining(job: Job) -> float:
    return max(0.0, job.deadline - time.monotonic())


class ExpertService:
    """Hosts an expert on a node: loads the model, runs the worker, serves ``/mosaic/infer/1``.

    Pass ``expert`` (a :class:`~node.expert.model.loader.LoadedExpert`) to share an
    already-loaded model (tests load it once per session); otherwise the model
    named by ``config`` is loaded in a thread when the service starts.
    """

    def __init__(
        self,
        config: ExpertConfig | None = None,
        *,
        expert: Any = None,
        threads: int | None = None,
        model_cache_dir: str | None = None,
    ) -> None:
        self.config = config or ExpertConfig()
        self.expert = expert
        self.threads = threads
        # Where converted GGUFs are cached (default: the per-user cache of the node's config).
        self.model_cache_dir = model_cache_dir
        self.adapter_cids: dict[str, str] = {}  # adapter name -> UnixFS CID (fetched or published)
        self.evals: list[Any] = []  # EvalScore of the last self-evaluation (in the record)
        self.live_adapters: list[str] = []  # added while serving (merged adapters), oldest first
        self.adapter_descriptions: dict[str, str] = {}  # from the adapters' cards: what routers match on
        self.worker: Any = None
        self.local: LocalExpert | None = None
        self.sessions: SessionHost | None = None
        self._serving = False  # between registering the infer handler and stopping the worker

    def serving(self) -> tuple[LocalExpert, SessionHost] | None:
        """This node's expert and its sessions while the service serves them.  A libp2p host cannot
        dial itself, so the node's own calls to its expert are handed to them directly (the
        coordinator's transport is given this method)."""
        if not self._serving or self.local is None or self.sessions is None:
            return None
        return self.local, self.sessions

    def record_fields(self) -> dict[str, object]:
        if self.expert is None:
            return {}
        expert, worker = self.expert, self.worker
        return {
            "base_model": expert.model_id,
            "base_model_cid": expert.content_id,
            "adapters": tuple(
                AdapterInfo(name=name, cid=self.adapter_cids.get(name, digest),
                            description=self.adapter_descriptions.get(name, ""))
                for name, digest in sorted(expert.adapters.items())
            ),
            "tokenizer": expert.tokenizer_id,
            "max_context": expert.max_context,
            "device": expert.device,
            "engine": worker.name if worker is not None else "",
            "quantization": worker.quantization if worker is not None else "",
            "load": round(worker.load(), 3) if worker is not None else 0.0,
            "queue_depth": worker.queue_depth if worker is not None else 0,
            "evals": tuple(self.evals),
            "tags": ("expert",),
        }

    async def _self_evaluate_at_start(self, node: Any) -> None:
        try:
            await self.self_evaluate(node, list(self.config.self_eval), limit=self.config.self_eval_limit)
        except Exception as exc:  # noqa: BLE001 - a failed self-evaluation must not take the expert down
            event(log, "self_eval_failed", level=logging.WARNING, error=f"{type(exc).__name__}: {exc}"[:300])

    async def self_evaluate(self, node: Any, tasks: list[str], *, limit: int = 20, split: str = "dev",
                            max_tokens: int | None = None) -> list[Any]:
        """Score the base and each adapter on ``tasks``, put the scores in our record, announce it."""
        from .self_eval import evaluate_all

        assert self.local is not None and self.expert is not None, "the service is not running"
        adapters: list[str | None] = [None, *sorted(self.expert.adapters)]
        self.evals = await evaluate_all(self.local, tasks, adapters, split=split, limit=limit,
                                        tasks_dir=self.config.tasks_dir, max_tokens=max_tokens)
        await node.announce_now()
        return self.evals

    async def add_adapter(self, name: str, path: str | Path, cid: str | None, *, timeout: float = 300.0) -> bool:
        """Serve adapter ``name`` (a safetensors LoRA dir of our base) from now on; False if already served.

        Loaded on the worker thread between two steps (live_adapters.py); older live
        adapters beyond the bound are evicted.  The caller re-announces the record.
        """
        assert self.worker is not None and self.expert is not None, "the service is not running"
        if name in self.expert.adapters:
            return False
        future = self.worker.between_steps(
            lambda: self.worker.attach_adapter(name, Path(path), evictable=tuple(self.live_adapters)))
        # Shielded: a cancelled caller must not leave a loaded adapter out of the bookkeeping (never
        # evicted, announced without its CID); loading a LoRA adapter takes well under a second.
        with trio.CancelScope(shield=True):
            evicted = await trio.to_thread.run_sync(lambda: future.result(timeout))
        for old in evicted:
            self.live_adapters.remove(old)
            self.adapter_cids.pop(old, None)
            self.adapter_descriptions.pop(old, None)
        self.live_adapters.append(name)
        self._describe(name, path)
        if cid is not None:
            self.adapter_cids[name] = cid
        event(log, "adapter_added", adapter=name, cid=cid or "-", evicted=",".join(evicted) or "-")
        return True

    def _describe(self, name: str, path: str | Path) -> None:
        from ..model.adapter_card import CardError, read_card

        try:
            card = read_card(path) or {}
        except CardError:
            return
        if isinstance(card.get("description"), str):
            self.adapter_descriptions[name] = card["description"][:512]

    async def _load(self, node: Any) -> None:
        """Fetch CID-named weights, load the model in a thread, publish local adapters."""
        from ..model.content import publish_adapter, resolve_reference
        from ..model.loader import load_expert
        from .engine import choose_engine

        cfg = self.config
        model = cfg.model
        if model is not None:
            model, _ = await resolve_reference(node, model)
        adapters: dict[str, str] = {}
        local_adapters: dict[str, str] = {}
        for name, reference in cfg.adapters.items():
            adapters[name], cid = await resolve_reference(node, reference)
            if cid is None:
                local_adapters[name] = adapters[name]
            else:
                self.adapter_cids[name] = cid
        cache = self.model_cache_dir or node.config.cache_path
        # abandon_on_cancel: Ctrl-C during a 20+ s load must stop start-up now, not after
        # the load (the thread is a daemon; an unfinished cache entry is never trusted).
        engine = choose_engine(cfg.engine, model, cfg.device)
        if engine == "llama.cpp":
            from .llamacpp.model import load_llama_expert

            def load() -> Any:
                return load_llama_expert(model, adapters, cache_dir=cache)
        else:
            def load() -> Any:
                return load_expert(model, adapters, cache_dir=cache, device=cfg.device)
        self.expert = await trio.to_thread.run_sync(load, abandon_on_cancel=True)
        for name, path in adapters.items():
            self._describe(name, path)
        for name, path in local_adapters.items():
            cid = await publish_adapter(node, path)
            if cid is not None:
                self.adapter_cids[name] = cid

    async def run(self, node: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from ..model.loader import ModelLoadError
        from .engine import make_worker
        from .notary import Notary
        from .threads import log_choice, prepare_openmp, resolve_threads

        cfg = self.config
        prepare_openmp()  # before the model load imports torch
        threads = resolve_threads(self.threads or cfg.threads)
        log_choice(threads)
        if self.expert is None:
            try:
                await self._load(node)
            except ModelLoadError as exc:
                # One clear line before the error unwinds the node (bad --model / --adapter).
                event(log, "expert_load_failed", level=logging.ERROR, error=str(exc)[:500])
                raise
        self.worker = make_worker(
            self.expert,
            max_batch=cfg.max_batch,
            queue_size=cfg.queue_size,
            max_new_tokens_cap=cfg.max_new_tokens_cap,
            threads=threads.threads,
            served_by=str(node.peer_id),
            session_max_tokens=cfg.session_max_tokens,
            max_sessions=cfg.max_sessions,
        )
        notary = Notary(node.identity, self.expert.content_id, self.adapter_cids, self.expert.adapters)
        self.local = LocalExpert(self.worker, notary=notary)
        sessions = self.sessions = SessionHost(
            self.local,
            SessionTable(max_total=cfg.max_sessions, max_per_peer=cfg.max_sessions_per_peer,
                         max_idle_s=cfg.session_idle_s),
            notary,
        )
        self.worker.start()
        local = self.local
        self._serving = True
        try:
            serve(
                node.host,
                INFER_PROTOCOL,
                lambda stream: handle_infer_stream(local, stream, sessions),
                allowlist=node.allowlist,
                first_message_timeout=FIRST_MESSAGE_TIMEOUT,
                deadline=MAX_STREAM_SECONDS,
                # One coordinator legitimately fills the whole queue (a burst of HTTP requests all
                # reach the expert through it), so the per-peer cap is the queue's capacity: the
                # worker's queue answers `busy` when it is truly full, and idle streams are cut by
                # the first-message deadline.  A cap of 2 x max_batch turned bursts into 503s.
                # Session streams stay open between steps: they get room of their own.
                max_per_peer=cfg.max_batch + cfg.queue_size + cfg.max_sessions_per_peer,
                max_total=cfg.max_batch + cfg.queue_size + cfg.max_sessions,
            )
            event(
                log,
                "expert_serving",
                model=self.expert.model_id,
                adapters=",".join(self.expert.adapters) or "-",
                device=self.expert.device,
                engine=self.worker.name,
                quantization=self.worker.quantization,
                max_batch=cfg.max_batch,
            )
            task_status.started()
            async with trio.open_nursery() as nursery:
                if cfg.self_eval:
                    nursery.start_soon(self._self_evaluate_at_start, node)
                await sessions.reap_forever()
        finally:
            self._serving = False
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.worker.stop)
            event(log, "expert_stopped", level=logging.INFO, steps=self.worker.steps)


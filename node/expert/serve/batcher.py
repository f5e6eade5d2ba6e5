"""The inference worker: one thread that owns the model and batches requests continuously.

torch must never run on the trio thread (a 135M forward takes tens of ms and
would stall every libp2p stream), so a dedicated thread owns the model and
talks to trio only through :class:`~node.expert.serve.jobs.Job` objects: a bounded
queue in (``submit`` raises :class:`Busy` when it is full: backpressure with
bounded memory) and each job's non-blocking ``emit`` callback out.

The loop is continuous batching, not HF ``generate``: between two decode
steps, score / next-token jobs run (one forward each), new generations are
prefilled alone and merged into the running batch (see batch_cache.py), and
finished, cancelled or expired rows leave.  Every row may use a different
LoRA adapter: peft's ``adapter_names=[...]`` forward kwarg mixes adapters
within one batch.  Changes to the model itself (an adapter added while serving,
live_adapters.py) run on this thread too, between two steps (:meth:`between_steps`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol import (
    ErrorCode,
    ErrorMessage,
    FinishReason,
    GenerateRequest,
    GenerateResult,
    NextTokenRequest,
    Queued,
    TokenChunk,
    Usage,
)

from ...logs import event, get_logger
from ..errors import Busy, Cancelled, ExpertStopped, PromptTooLong, RequestRejected, UnknownAdapter
from ..model.loader import LoadedExpert
from .fair_queue import insert_fairly, make_room_for
from .jobs import Job
from .prompts import PromptBuilder
from .session_store import SessionOp

log = get_logger("expert.worker")

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in adapter_names

# Queued reports (for requests with ``progress``): a changed position is sent at most every
# QUEUE_REPORT_MIN_S, and an unchanged one again after QUEUE_KEEPALIVE_S, so a client can
# wait on a live expert with a short silence window (the coordinator's is >= 3 s).  While this
# thread is inside a long forward pass it reports nothing: the trio side then sends the
# keep-alive itself (local.py, with_keepalive), for queued and running jobs alike.
QUEUE_REPORT_MIN_S = 0.5
QUEUE_KEEPALIVE_S = 1.0
# New generations prefilled between two decode steps.  Prefills run one by one (batch of one),
# so admitting a whole batch at once froze the running rows for all of them: on a loaded 2-core
# box 8 prefills took ~20 s and the coordinator gave up on answers stalled mid-way.  One per step
# bounds every row's wait for its next token by one prefill plus one decode step.
MAX_PREFILLS_PER_STEP = 1


@dataclass(eq=False)
class _Slot:
    """A generation in the running batch."""

    job: Job
    request: GenerateRequest
    sampler: Any
    text: Any  # CompletionText
    prompt_tokens: int
    max_new_tokens: int
    position: int  # position id of `next_token` (advanced by _accept when a token is chosen)
    next_token: int = -1
    generated: int = 0
    chunks: int = 0
    first_token_at: float | None = None


class InferenceWorker:
    """Owns the model on a dedicated thread; see the module docstring."""

    # New generations admitted between two steps (an engine with chunked prefill admits more).
    max_prefills_per_step = MAX_PREFILLS_PER_STEP

    def __init__(
        self,
        expert: LoadedExpert,
        *,
        max_batch: int = 8,
        queue_size: int = 64,
        max_new_tokens_cap: int = 1024,
        threads: int | None = None,
        served_by: str = "",
        session_max_tokens: int = 2048,
    ) -> None:
        self.expert = expert
        self.session_max_tokens = session_max_tokens  # KV length cap of one generation session
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.max_new_tokens_cap = max_new_tokens_cap
        self.served_by = served_by
        self._threads = threads
        self._prompts = PromptBuilder(expert.tokenizer)
        self._eos = _eos_ids(expert)
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._slots: list[_Slot] = []
        self._batch: Any = None  # BatchCache, created on the worker thread
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode steps run (for tests and metrics)
        self.busy_rejections = 0  # jobs refused because the queue was full (/metrics)
        self._batchable: bool | None = None  # can prefilled caches merge into the batch? (batch_cache.py)
        self._between: list[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = []

    # ------------------------------------------------------------------ trio-side API (any thread)

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def active(self) -> int:
        return len(self._slots)

    def load(self) -> float:
        """Busy fraction: running + queued generations over the batch size (may exceed 1)."""
        return (len(self._slots) + len(self._pending)) / self.max_batch

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mosaic-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the current step, fail queued jobs with `unavailable`, join the thread (blocking)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue a job or raise :class:`RequestRejected` (busy / unknown adapter / stopped) at once."""
        adapter = job.adapter
        if adapter is not None and adapter not in self.expert.adapters:
            served = ", ".join(sorted(self.expert.adapters)) or "none"
            raise UnknownAdapter(f"unknown adapter {adapter!r} (served: {served})", request_id=job.request_id)
        with self._cond:
            if self._stopping:
                raise ExpertStopped("the expert is shutting down", request_id=job.request_id)
            if len(self._pending) >= self.queue_size:
                self._purge_cancelled()
            if len(self._pending) >= self.queue_size:
                # Full: a newcomer may take the place of the newest job of whoever holds the most.
                evicted = make_room_for(self._pending, job)
                self.busy_rejections += 1
                if evicted is None:
                    raise Busy(f"queue full ({self.queue_size} waiting); retry later", request_id=job.request_id)
                self._emit_error(evicted, Busy(f"queue full ({self.queue_size} waiting) and this requester holds "
                                               "the most of it; retry later", request_id=evicted.request_id))
            insert_fairly(self._pending, job)
            self._cond.notify()

    def between_steps(self, change: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``change`` on the worker thread before the next step; its result (or error) in the future.

        For changes to the model itself (peft mutates the LoRA layers when it loads or
        deletes an adapter): no forward ever runs during one.
        """
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                raise ExpertStopped("the expert is shutting down")
            self._between.append((change, future))
            self._cond.notify()
        return future

    def adapters_in_use(self) -> set[str]:
        """Adapters of running and queued requests and of open sessions (worker thread: ``between_steps``)."""
        with self._cond:
            queued = {job.adapter for job in self._pending}
        sessions = [s.adapter for s in self._sessions._sessions.values()] if hasattr(self, "_sessions") else []
        return {a for a in (*queued, *sessions, *(s.request.adapter for s in self._slots)) if a is not None}

    def _run_between_steps(self) -> None:
        with self._cond:
            changes, self._between = self._between, []
        for change, future in changes:
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(change())
            except Exception as exc:  # the caller hears it; the worker goes on serving
                future.set_exception(exc)

    def _purge_cancelled(self) -> None:
        """Drop queued jobs whose caller already left: they must not hold queue room (lock held)."""
        gone = [job for job in self._pending if job.cancelled]
        if gone:
            self._pending = collections.deque(job for job in self._pending if not job.cancelled)
            for job in gone:
                self._emit_error(job, Cancelled("cancelled while queued", request_id=job.request_id))

    # ------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        import torch

        from .batch_cache import BatchCache

        if self._threads:
            torch.set_num_threads(self._threads)
        self._batch = BatchCache()
        # Grad mode is thread-local: inference_mode must be entered on this thread.
        with torch.inference_mode():
            while True:
                work = self._take_work()
                if work is None:
                    break
                self._run_between_steps()
                try:
                    for i, job in enumerate(work):
                        self._start_job(job)
                        # Prefills run one after another (seconds each on a loaded CPU): keep
                        # the generations still waiting, started or not, hearing from us.
                        with self._cond:
                            self._report_queue([j for j in work[i + 1:] if j.is_generation])
                    if self._slots:
                        self._decode_step()
                except Exception as exc:  # a bug or OOM must not kill the worker silently
                    log.exception("inference step failed")
                    self._fail_all(f"inference failed: {type(exc).__name__}")
        self._fail_all("the expert is shutting down", code="unavailable")
        with self._cond:
            changes, self._between = self._between, []
        for _, future in changes:
            future.set_exception(ExpertStopped("the expert is shutting down"))
        for job in self._drain_pending():
            self._emit_error(job, ExpertStopped("the expert is shutting down", request_id=job.request_id))

    def _take_work(self) -> list[Job] | None:
        """Jobs to start before the next step: all quick jobs, generations while slots are free."""
        with self._cond:
            while not self._stopping and not self._pending and not self._slots and not self._between:
                self._cond.wait()
            if self._stopping:
                return None
            # Until the first prefill shows the model's KV cache can be merged, admit one at a time.
            capacity = self.max_batch if self._batchable else 1
            free = min(capacity - len(self._slots), self.max_prefills_per_step)
            taken: list[Job] = []
            kept: collections.deque[Job] = collections.deque()
            for job in self._pending:
                if not job.is_generation or job.cancelled or free > 0:
                    taken.append(job)
                    free -= job.is_generation and not job.cancelled
                else:
                    kept.append(job)
            self._pending = kept
            self._report_queue([job for job in taken if job.is_generation][1:])
            return taken

    def _report_queue(self, upcoming: list[Job]) -> None:
        """Tell waiting generations that asked for it their place (lock held, rate-limited).

        ``upcoming``: generations taken for this step but not prefilled yet; they come
        before everything still pending.
        """
        now = time.monotonic()
        waiting = [job for job in [*upcoming, *self._pending] if job.is_generation and not job.cancelled]
        for position, job in enumerate(waiting, start=1):
            if not job.wants_progress:
                continue
            since = now - job.reported_at
            if since >= QUEUE_KEEPALIVE_S or (position != job.reported_position and since >= QUEUE_REPORT_MIN_S):
                job.reported_position, job.reported_at = position, now
                job.emit(Queued(request_id=job.request_id, position=position, waiting=len(waiting),
                                running=len(self._slots)))

    def _drain_pending(self) -> list[Job]:
        with self._cond:
            jobs = list(self._pending)
            self._pending.clear()
            return jobs

    def _start_job(self, job: Job) -> None:
        if job.cancelled:
            self._emit_error(job, Cancelled("cancelled before it started", request_id=job.request_id))
            return
        if job.expired():
            self._emit_error(job, _timeout(job))
            return
        try:
            if isinstance(job.request, GenerateRequest):
                job.started = True
                self._admit(job, job.request)
            elif isinstance(job.request, NextTokenRequest):
                job.emit(self._forward_tools().next_token(job.request))
            elif isinstance(job.request, SessionOp):
                job.emit(self._session_store().run(job.request))
            else:
                job.emit(self._forward_tools().score(job.request))
        except RequestRejected as exc:
            self._emit_error(job, exc)
        except Exception as exc:  # a failed prefill must not take the running batch down with it
            log.exception("request %s failed to start", job.request_id)
            job.emit(ErrorMessage(code="internal", message=f"inference failed: {type(exc).__name__}",
                                  request_id=job.request_id))

    def _forward_tools(self) -> Any:
        from .scoring import Scorer

        if not hasattr(self, "_scorer"):
            self._scorer = Scorer(self.expert, self._prompts, self._forward)
        return self._scorer

    def _session_store(self) -> Any:
        from .session_store import SessionStore

        if not hasattr(self, "_sessions"):
            self._sessions = SessionStore(self.expert, self._prompts, self._forward, self._eos,
                                          max_tokens=self.session_max_tokens)
        return self._sessions

    def _admit(self, job: Job, request: GenerateRequest) -> None:
        import torch

        from .batch_cache import mergeable
        from .detokenize import CompletionText
        from .sampling import TokenSampler

        ids = self._prompts.token_ids(request)
        context = self.expert.max_context
        if len(ids) >= context:
            raise PromptTooLong(
                f"prompt is {len(ids)} tokens; this expert's context is {context}", request_id=job.request_id
            )
        max_new = min(request.sampling.max_new_tokens, self.max_new_tokens_cap, context - len(ids))
        slot = _Slot(
            job=job,
            request=request,
            sampler=TokenSampler(request.sampling, self.expert.device),
            text=CompletionText(self.expert.tokenizer, request.sampling.stop),
            prompt_tokens=len(ids),
            max_new_tokens=max_new,
            position=len(ids) - 1,  # _accept advances it to the first generated token's position
        )
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.expert.device)
        out = self._forward([request.adapter], input_ids=input_ids, use_cache=True, logits_to_keep=1)
        from .sampling import choose_tokens

        reason = self._accept(slot, choose_tokens(out.logits[:, -1, :], [slot.sampler])[0])
        if reason is not None:
            self._finish(slot, reason)
            return
        if self._batchable is None:
            self._batchable = mergeable(out.past_key_values)
            if not self._batchable:
                event(log, "batching_disabled", level=logging.WARNING, model=self.expert.model_id,
                      reason="KV cache layers are not plain DynamicLayers (e.g. sliding window)")
        if self._slots and not self._batchable:
            raise RuntimeError("model cache cannot be batched")  # _take_work admits one at a time
        self._batch.add(out.past_key_values, len(ids))
        self._slots.append(slot)

    def _decode_step(self) -> None:
        import torch

        from .sampling import choose_tokens

        now = time.monotonic()
        self._drop([i for i, s in enumerate(self._slots) if s.job.cancelled or s.job.expired(now)])
        if not self._slots:
            return
        slots = self._slots
        device = self.expert.device
        input_ids = torch.tensor([[s.next_token] for s in slots], dtype=torch.long, device=device)
        position_ids = torch.tensor([[s.position] for s in slots], dtype=torch.long, device=device)
        out = self._forward(
            [s.request.adapter for s in slots],
            input_ids=input_ids,
            attention_mask=self._batch.step_mask(),
            position_ids=position_ids,
            past_key_values=self._batch.cache,
            use_cache=True,
        )
        self._batch.cache = out.past_key_values
        self.steps += 1
        tokens = choose_tokens(out.logits[:, -1, :], [s.sampler for s in slots])
        reasons = [self._accept(s, t) for s, t in zip(slots, tokens, strict=True)]
        done = [(i, reason) for i, reason in enumerate(reasons) if reason is not None]
        # Free the rows before the terminal messages go out: whoever receives a result
        # may rely on its batch slot being free already.
        self._remove([i for i, _ in done])
        for i, reason in done:
            self._finish(slots[i], reason)

    def _accept(self, slot: _Slot, token: int) -> FinishReason | None:
        """Record and stream one chosen token; return the finish reason when the generation is over."""
        slot.position += 1
        if slot.first_token_at is None:
            slot.first_token_at = time.monotonic()
        if token in self._eos:
            return "stop"
        slot.generated += 1
        slot.next_token = token
        piece = slot.text.push(token)
        if slot.request.stream:
            slot.job.emit(
                TokenChunk(request_id=slot.job.request_id, index=slot.chunks, text=piece, token_ids=(token,))
            )
            slot.chunks += 1
        if slot.text.stopped:
            return slot.text.stop_reason  # a stop string, or the loop guard (repetition.py)
        if slot.generated >= slot.max_new_tokens:
            return "length"
        return None

    def _finish(self, slot: _Slot, reason: FinishReason) -> None:
        tail = slot.text.finish() if not slot.text.stopped else ""
        if tail and slot.request.stream:
            slot.job.emit(TokenChunk(request_id=slot.job.request_id, index=slot.chunks, text=tail))
            slot.chunks += 1
        now = time.monotonic()
        start = slot.job.enqueued_at
        usage = Usage(
            prompt_tokens=slot.prompt_tokens,
            completion_tokens=slot.generated,
            seconds=now - start,
            first_token_seconds=None if slot.first_token_at is None else slot.first_token_at - start,
        )
        slot.job.emit(
            GenerateResult(
                request_id=slot.job.request_id,
                text=slot.text.text,
                finish_reason=reason,
                usage=usage,
                model=self.expert.model_id,
                adapter=slot.request.adapter,
                served_by=self.served_by,
            )
        )

    def _drop(self, rows: list[int]) -> None:
        """Remove cancelled / expired rows; each still gets its one terminal message (after removal)."""
        slots = [self._slots[i] for i in rows]
        self._remove(rows)
        for slot in slots:
            if slot.job.cancelled:
                self._finish(slot, "cancelled")
            else:
                self._emit_error(slot.job, _timeout(slot.job))

    def _remove(self, rows: list[int]) -> None:
        if not rows:
            return
        gone = set(rows)
        keep = [i for i in range(len(self._slots)) if i not in gone]
        self._slots = [self._slots[i] for i in keep]
        self._batch.keep(keep)

    def _fail_all(self, message: str, code: ErrorCode = "internal") -> None:
        for slot in self._slots:
            slot.job.emit(ErrorMessage(code=code, message=message, request_id=slot.job.request_id))
        self._slots = []
        if self._batch is not None:
            self._batch.keep([])

    def _forward(self, adapters: list[str | None], **inputs: Any) -> Any:
        """One model forward; ``adapters`` names each row's LoRA adapter (None = the base model).

        Rows may mix adapters (peft's ``adapter_names``).  A batch with no adapter at all
        runs with the LoRA layers disabled: peft's per-forward hooks and sub-batch
        routing cost ~1.5x on a 135M model (measured), for nothing.
        """
        model = self.expert.model
        if not self.expert.has_adapters:
            return model(**inputs)
        if all(a is None for a in adapters):
            with model.disable_adapter():
                return model(**inputs)
        return model(adapter_names=[a or BASE_ADAPTER for a in adapters], **inputs)

    @staticmethod
    def _emit_error(job: Job, exc: RequestRejected) -> None:
        exc.request_id = exc.request_id or job.request_id
        job.emit(exc.to_message())


def _timeout(job: Job) -> RequestRejected:
    from ..errors import DeadlineExceeded

    return DeadlineExceeded("deadline passed before the generation finished", request_id=job.request_id)


def _eos_ids(expert: LoadedExpert) -> frozenset[int]:
    ids: set[int] = set()
    config = getattr(expert.model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(eos)
    if expert.tokenizer.eos_token_id is not None:
        ids.add(expert.tokenizer.eos_token_id)
    return frozenset(ids)


"""The llama.cpp inference worker: continuous batching with chunked prefill on one llama.cpp context.

It extends the torch worker (batcher.py) and keeps all of its queue: ``submit`` with ``busy``
backpressure, ``Queued`` reports and keep-alives, cancel and deadlines, ``between_steps``
changes, the per-token ``_accept`` / ``_finish`` bookkeeping (stop strings, streaming chunks,
usage).  Only the model steps differ:

* a step is one ``llama_decode`` per adapter set in use (llama.cpp applies LoRA per context):
  one token for every running generation plus a chunk of the prompts still being prefilled
  (up to :data:`PREFILL_TOKENS_PER_STEP`), so a long new prompt never freezes running streams
  for more than a chunk;
* every generation has its own sequence in one shared KV cache (``kv_unified``); a generation
  reserves ``prompt + max_new_tokens`` cells when admitted, and waits in the queue while the
  cache is full instead of failing mid-way;
* score / next-token calls and session steps run between two steps on sequences of their own
  (full-vocabulary logits: fusion needs the whole distribution), as on the torch engine;
* a prompt that starts like one prefilled before (the chat template's header, a conversation's
  history) copies that prefix's KV cells instead of running it again (prefix_cache.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from protocol import GenerateRequest

from ....logs import get_logger
from ...errors import Busy, PromptTooLong
from ..batcher import InferenceWorker
from ..jobs import Job
from ..sampling_np import NumpySampler
from .context import BATCH_TOKENS, LlamaContext, Row
from .model import DEFAULT_KV_TOKENS, LlamaExpert
from .prefix_cache import PrefixCache

log = get_logger("expert.llamacpp")

# Prompt tokens prefilled per step, across all new generations, while other generations run or
# wait.  Prefill is compute-bound on a CPU (a token costs about the same in a chunk of 32 as in one
# of 512, measured), so a big step only delays everyone in it: prompts go first come, first served
# in steps of this size, each request gets its first token as soon as its own prompt is in, and a
# running stream waits at most one such step for its next token.  Measured on SmolLM2, 8 requests
# at once, 20 new prompt tokens each: median first token 0.56 s in steps of 24 tokens against
# 0.86-1.06 s when one step of 256 takes all of them (load 5).  A prompt alone runs in one decode.
PREFILL_TOKENS_PER_STEP = 32
# Prompt prefixes kept for later generations (sequences of their own; prefix_cache.py).
PREFIX_ENTRIES = 8


@dataclass(eq=False)
class _Generation:
    """A generation on its own KV sequence (fields used by the shared _accept / _finish are first)."""

    job: Job
    request: GenerateRequest
    sampler: NumpySampler
    text: Any  # CompletionText
    prompt_tokens: int
    max_new_tokens: int
    position: int
    seq: int
    prompt: list[int] = field(default_factory=list)
    prefilled: int = 0  # prompt tokens already in the cache
    reserved: int = 0  # KV cells held for this generation
    next_token: int = -1
    generated: int = 0
    chunks: int = 0
    first_token_at: float | None = None

    @property
    def decoding(self) -> bool:
        return self.prefilled >= len(self.prompt)


class LlamaWorker(InferenceWorker):
    name = "llama.cpp"
    max_prefills_per_step = 64  # admission is bounded by free rows and KV room, prefill by the chunk

    def __init__(self, expert: LlamaExpert, *, kv_tokens: int = DEFAULT_KV_TOKENS, max_sessions: int = 16,
                 prefix_entries: int = PREFIX_ENTRIES, **options: Any) -> None:
        super().__init__(expert, **options)  # type: ignore[arg-type]  # duck-typed: the fields it reads
        self.expert: LlamaExpert = expert  # type: ignore[assignment]
        self._eos = expert.eos_ids
        self._batchable = True
        self.kv_tokens = max(kv_tokens, expert.max_context)
        self.max_sessions = max_sessions
        self._context: LlamaContext | None = None
        self._free_rows = list(range(self.max_batch))  # generation sequences
        self.scratch_seq = self.max_batch  # score / next-token
        self.session_seqs = list(range(self.max_batch + 1, self.max_batch + 1 + max_sessions))
        first_prefix = self.max_batch + 1 + max_sessions
        self.prefixes = PrefixCache(self, list(range(first_prefix, first_prefix + prefix_entries)))
        self.kv_used = 0  # cells reserved by generations and held by sessions
        self._loras: dict[str, Any] = {}  # adapter name -> llama_adapter_lora_p

    @property
    def quantization(self) -> str:
        return self.expert.quantization

    @property
    def context(self) -> LlamaContext:
        assert self._context is not None, "the worker has not started"
        return self._context

    # ------------------------------------------------------------------ adapters

    def lora_handles(self, adapter: str | None) -> tuple[Any, ...]:
        return () if adapter is None else (self._loras[adapter],)

    def attach_adapter(self, name: str, path: Path, *, evictable: tuple[str, ...]) -> list[str]:
        from .lora import attach

        return attach(self, name, path, evictable=evictable)

    def load_lora(self, name: str, path: Path) -> None:
        from .lora import load_gguf_lora

        self.prefixes.forget_adapter(name)  # a name may come back with other weights
        self._loras[name] = load_gguf_lora(self.expert, name, path)

    def free_lora(self, name: str) -> None:
        import llama_cpp

        handle = self._loras.pop(name, None)
        self.prefixes.forget_adapter(name)
        if handle is not None:
            self.context.use_adapters(())
            llama_cpp.llama_adapter_lora_free(handle)

    # ------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        threads = self._threads or 1
        sequences = self.max_batch + 1 + self.max_sessions + self.prefixes.capacity
        try:
            self._context = LlamaContext(self.expert, kv_tokens=self.kv_tokens, sequences=sequences,
                                         threads=threads)
            for name, path in self.expert.adapter_paths.items():
                self.load_lora(name, path)
        except Exception:
            log.exception("llama.cpp context could not start")
            with self._cond:
                self._stopping = True
        try:
            while True:
                work = self._take_work()
                if work is None:
                    break
                self._run_between_steps()
                try:
                    for job in work:
                        self._start_job(job)
                    if self._slots:
                        self._decode_step()
                except Exception as exc:  # a bug must not kill the worker silently
                    log.exception("inference step failed")
                    self._fail_all(f"inference failed: {type(exc).__name__}")
        finally:
            self._shut_down()

    def _shut_down(self) -> None:
        from ...errors import ExpertStopped

        self._fail_all("the expert is shutting down", code="unavailable")
        with self._cond:
            changes, self._between = self._between, []
        for _, future in changes:
            future.set_exception(ExpertStopped("the expert is shutting down"))
        for job in self._drain_pending():
            self._emit_error(job, ExpertStopped("the expert is shutting down", request_id=job.request_id))
        if self._context is not None:
            import llama_cpp

            self._context.close()
            for handle in self._loras.values():
                llama_cpp.llama_adapter_lora_free(handle)
            self._loras.clear()

    def _admit(self, job: Job, request: GenerateRequest) -> None:
        from ..detokenize import CompletionText

        ids = self._prompts.token_ids(request)
        context = self.expert.max_context
        if len(ids) >= context:
            raise PromptTooLong(
                f"prompt is {len(ids)} tokens; this expert's context is {context}", request_id=job.request_id
            )
        max_new = min(request.sampling.max_new_tokens, self.max_new_tokens_cap, context - len(ids))
        self.prefixes.make_room(len(ids) + max_new)
        free = self.kv_tokens - self.kv_used
        if len(ids) + max_new > free:
            if self._slots:  # room comes back as running generations end: wait at the queue's head
                job.started = False
                with self._cond:
                    self._pending.appendleft(job)
                return
            if len(ids) + 1 > free:
                raise Busy(f"the KV cache is held by open sessions ({self.kv_used} of {self.kv_tokens} "
                           "tokens); retry later", request_id=job.request_id)
            max_new = free - len(ids)
        self.kv_used += len(ids) + max_new
        seq = self._free_rows.pop(0)
        self._slots.append(_Generation(  # type: ignore[arg-type]  # read through the shared fields
            job=job, request=request, sampler=NumpySampler(request.sampling),
            text=CompletionText(self.expert.tokenizer, request.sampling.stop),
            prompt_tokens=len(ids), max_new_tokens=max_new, position=len(ids) - 1,
            seq=seq, prompt=ids, reserved=len(ids) + max_new,
            prefilled=self.prefixes.share(request.adapter, ids, seq),
        ))

    def _decode_step(self) -> None:
        now = time.monotonic()
        self._drop([i for i, s in enumerate(self._slots) if s.job.cancelled or s.job.expired(now)])
        if not self._slots:
            return
        slots = cast(list[_Generation], list(self._slots))
        rows_of: dict[str | None, list[tuple[_Generation, Row]]] = {}
        for slot in slots:  # running streams first: one token each
            if slot.decoding:
                rows_of.setdefault(slot.request.adapter, []).append(
                    (slot, Row(slot.seq, slot.next_token, slot.position, True)))
        alone = not rows_of and sum(not s.decoding for s in slots) == 1
        budget = BATCH_TOKENS if alone else max(PREFILL_TOKENS_PER_STEP, 1)
        budget = min(budget, BATCH_TOKENS - sum(len(rows) for rows in rows_of.values()))
        prefilled: list[_Generation] = []  # prompts whose last chunk runs in this step
        for slot in slots:  # then prompt chunks, oldest generation first
            if slot.decoding or budget <= 0:
                continue
            take = min(budget, len(slot.prompt) - slot.prefilled)
            end = slot.prefilled + take
            group = rows_of.setdefault(slot.request.adapter, [])
            for pos in range(slot.prefilled, end):
                group.append((slot, Row(slot.seq, slot.prompt[pos], pos, pos == len(slot.prompt) - 1)))
            slot.prefilled = end
            budget -= take
            if slot.decoding:
                prefilled.append(slot)
        chosen: dict[int, int] = {}  # id(slot) -> token
        context = self.context
        for adapter, entries in rows_of.items():
            context.use_adapters(self.lora_handles(adapter))
            wanted = context.decode([row for _, row in entries])
            for index in wanted:
                slot = entries[index][0]
                chosen[id(slot)] = slot.sampler.choose(context.logits(index))
        for slot in prefilled:  # before a generation that ends at once frees its sequence
            self.prefixes.store(slot.request.adapter, slot.prompt, slot.seq)
        self.steps += 1
        done = []
        for i, slot in enumerate(slots):
            if id(slot) in chosen:
                reason = self._accept(slot, chosen[id(slot)])  # type: ignore[arg-type]
                if reason is not None:
                    done.append((i, reason))
        # Free the rows before the terminal messages go out (as the torch worker does).
        self._remove([i for i, _ in done])
        for i, reason in done:
            self._finish(slots[i], reason)  # type: ignore[arg-type]

    def _remove(self, rows: list[int]) -> None:
        if not rows:
            return
        gone = set(rows)
        for i in sorted(gone):
            self._release(self._slots[i])
        self._slots = [s for i, s in enumerate(self._slots) if i not in gone]

    def _release(self, slot: Any) -> None:
        if self._context is not None:
            self._context.forget(slot.seq)
        self._free_rows.append(slot.seq)
        self.kv_used -= slot.reserved

    def _fail_all(self, message: str, code: Any = "internal") -> None:
        for slot in self._slots:
            self._release(slot)
        super()._fail_all(message, code)

    def _forward_tools(self) -> Any:
        from .scoring import LlamaScorer

        if not hasattr(self, "_scorer"):
            self._scorer = LlamaScorer(self, self._prompts)  # type: ignore[assignment]
        return self._scorer

    def _session_store(self) -> Any:
        from .sessions import LlamaSessionStore

        if not hasattr(self, "_sessions"):
            self._sessions = LlamaSessionStore(  # type: ignore[assignment]
                self, self._prompts, max_tokens=self.session_max_tokens)
        return self._sessions

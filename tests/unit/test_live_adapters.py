"""Adapters added to a serving expert (the merge strategy's merged adapters), on the real model:
loaded between two steps of the running worker, bounded, and never evicted while in use."""

from __future__ import annotations

from contextlib import aclosing

import pytest
import trio

from node.expert.errors import UnknownAdapter
from node.expert.serve import live_adapters
from node.expert.serve.batcher import InferenceWorker
from node.expert.serve.local import LocalExpert
from protocol import ChatMessage, GenerateRequest, GenerateResult, SamplingParams, TokenChunk


def chat(rid: str, adapter: str | None, tokens: int = 8) -> GenerateRequest:
    return GenerateRequest(request_id=rid, adapter=adapter,
                           messages=(ChatMessage(role="user", content="Name a color."),),
                           sampling=SamplingParams(max_new_tokens=tokens, temperature=0.0))


async def reply(local: LocalExpert, request: GenerateRequest, started: trio.Event | None = None) -> str:
    async with aclosing(local.generate(request)) as events:
        async for message in events:
            if isinstance(message, TokenChunk) and started is not None:
                started.set()
            if isinstance(message, GenerateResult):
                return message.text
    raise AssertionError("no result")


async def add(worker: InferenceWorker, name: str, path, live: list[str]) -> list[str]:
    future = worker.between_steps(lambda: live_adapters.attach(worker, name, path, evictable=tuple(live)))
    evicted = await trio.to_thread.run_sync(future.result)
    live[:] = [n for n in live if n not in evicted] + [name]
    return evicted


@pytest.mark.timeout(300)
async def test_adapters_join_a_running_worker_and_busy_ones_are_not_evicted(expert_data_dir, lora_adapter_dir,
                                                                           monkeypatch):
    from node.expert.model.loader import load_expert

    monkeypatch.setattr(live_adapters, "MAX_LIVE", 2)
    # Its own copy: the adapters change the model (the shared fixtures must stay as they are).
    expert = await trio.to_thread.run_sync(lambda: load_expert(None, cache_dir=expert_data_dir, device="cpu"))
    worker = InferenceWorker(expert, max_batch=4, queue_size=4, threads=1)
    worker.start()
    local = LocalExpert(worker)
    try:
        with trio.fail_after(240):
            base = await reply(local, chat("base-0", None))
            live: list[str] = []
            assert await add(worker, "m1", lora_adapter_dir, live) == []
            assert await add(worker, "m2", lora_adapter_dir, live) == []
            with_m1 = await reply(local, chat("m1-0", "m1"))
            assert with_m1 != base and await reply(local, chat("base-1", None)) == base
            # m1 is generating when m3 arrives: the oldest *unused* one (m2) goes instead.
            started = trio.Event()
            async with trio.open_nursery() as nursery:
                long: list[str] = []

                async def generate_long() -> None:
                    long.append(await reply(local, chat("m1-long", "m1", tokens=24), started))

                nursery.start_soon(generate_long)
                await started.wait()
                assert await add(worker, "m3", lora_adapter_dir, live) == ["m2"]
            assert long[0].startswith(with_m1)  # the running answer was not disturbed
            assert sorted(expert.adapters) == ["m1", "m3"]
            with pytest.raises(UnknownAdapter):
                worker.submit(local_job(chat("m2-0", "m2")))
            assert await reply(local, chat("m3-0", "m3")) == with_m1  # the same weights as m1
    finally:
        await trio.to_thread.run_sync(worker.stop)


def local_job(request: GenerateRequest):
    import time

    from node.expert.serve.jobs import Job

    return Job(request, emit=lambda message: None, deadline=time.monotonic() + 60)

"""An adapter travels by CID: node 0 serves a local adapter (published through its storage),
node 1 is started with ``--adapter noisy=<that CID>``, fetches it and serves the same expert."""

from __future__ import annotations

from contextlib import aclosing

import pytest
import trio

from node.config import ExpertConfig
from node.expert import ExpertService
from node.expert.remote import client
from node.storage import BlockStore, StorageService
from protocol import ChatMessage, GenerateRequest, GenerateResult, SamplingParams
from tests.cluster.harness import in_process_cluster
from tests.expert.fixtures import ADAPTER_NAME, default_engine, hf_greedy

QUESTION = "What is the capital of France?"


async def answer(host, peer_id: str) -> GenerateResult:
    request = GenerateRequest(request_id="cid", messages=(ChatMessage(role="user", content=QUESTION),),
                              adapter=ADAPTER_NAME, sampling=SamplingParams(max_new_tokens=12))
    async with aclosing(client.generate(host, peer_id, request)) as events:
        async for message in events:
            if isinstance(message, GenerateResult):
                return message
    raise AssertionError("no result")


@pytest.mark.slow
async def test_adapter_named_by_cid_is_fetched_and_served(expert_data_dir, lora_adapter_dir, adapter_expert):
    with trio.fail_after(110):
        async with in_process_cluster() as cluster:
            first = ExpertService(ExpertConfig(adapters={ADAPTER_NAME: str(lora_adapter_dir)}, engine=default_engine()),
                                  threads=1, model_cache_dir=str(expert_data_dir))
            node0 = await cluster.add(0, services=[StorageService(BlockStore(cluster.root / "store-0")), first])
            published = dict((a.name, a.cid) for a in node0.own_record().adapters)[ADAPTER_NAME]
            assert published.startswith("bafy")  # a UnixFS CID, not the sha256 fallback

            second = ExpertService(ExpertConfig(adapters={ADAPTER_NAME: published}, engine=default_engine()), threads=1,
                                   model_cache_dir=str(expert_data_dir))
            node1 = await cluster.add(1, services=[StorageService(BlockStore(cluster.root / "store-1")), second])
            record = node1.own_record()
            result = await answer(node0.host, node1.peer_id)
    assert [(a.name, a.cid) for a in record.adapters] == [(ADAPTER_NAME, published)]
    assert record.base_model_cid == adapter_expert.content_id and record.base_model_cid.startswith("bafy")
    assert result.adapter == ADAPTER_NAME
    assert result.text == hf_greedy(adapter_expert, QUESTION, adapter=ADAPTER_NAME)

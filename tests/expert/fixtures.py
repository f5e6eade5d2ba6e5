"""Session fixtures for expert tests: the embedded model, loaded once per run and engine.

Conversion of the GGUF (~20 s on 2 cores) happens once into the test model
cache (``$MOSAIC_CACHE_DIR``: a session directory, or ``$MOSAIC_TEST_DATA_DIR``
to reuse it across runs; see tests/conftest.py); each
loaded expert is shared by every test, which must therefore not run two
workers on it at the same time (tests run sequentially).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

ADAPTER_NAME = "noisy"


@pytest.fixture(scope="session")
def expert_data_dir() -> Path:
    """The model cache root every test shares ($MOSAIC_CACHE_DIR, set in tests/conftest.py)."""
    path = Path(os.environ["MOSAIC_CACHE_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def base_expert(request: pytest.FixtureRequest):
    """SmolLM2-135M-Instruct, no adapters, on the engine a default-configured node picks here.

    That is llama.cpp on a CPU with llama-cpp-python installed (``[expert] engine = "auto"``);
    ``MOSAIC_EXPERT__ENGINE=torch`` makes it the torch engine, for in-process experts and every
    CLI-started node alike (see :func:`default_engine`).  Tests about one engine ask for
    ``torch_expert`` or ``llama_expert``; the strategy tests ask for ``engine_experts`` (both).
    """
    return request.getfixturevalue("llama_expert" if default_engine() == "llama.cpp" else "torch_expert")


@pytest.fixture(scope="session")
def torch_expert(expert_data_dir: Path):
    """The torch engine's SmolLM2-135M: the GGUF converted once to fp32 safetensors, CPU."""
    from node.expert.model.loader import load_expert

    return load_expert(None, cache_dir=expert_data_dir, device="cpu")


@pytest.fixture(scope="session")
def lora_adapter_dir(expert_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small LoRA adapter (r=8, random non-zero B) saved as safetensors, like a contributor's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from node.expert.model.loader import resolve_source

    source = resolve_source(None, expert_data_dir)
    base = AutoModelForCausalLM.from_pretrained(source.directory, use_safetensors=True, local_files_only=True)
    torch.manual_seed(1234)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    model = get_peft_model(base, config)
    out = tmp_path_factory.mktemp("adapter") / ADAPTER_NAME
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def adapter_expert(request: pytest.FixtureRequest):
    """The default engine's base with the ``noisy`` adapter (see :func:`base_expert`)."""
    return request.getfixturevalue("llama_adapter_expert" if default_engine() == "llama.cpp"
                                   else "torch_adapter_expert")


@pytest.fixture(scope="session")
def torch_adapter_expert(expert_data_dir: Path, lora_adapter_dir: Path):
    """The torch engine's base with the ``noisy`` adapter attached (a PeftModel; rows choose per request)."""
    from node.expert.model.loader import load_expert

    return load_expert(None, {ADAPTER_NAME: str(lora_adapter_dir)}, cache_dir=expert_data_dir, device="cpu")


@asynccontextmanager
async def expert_pair(expert, **expert_config) -> AsyncIterator[tuple[object, object, object]]:
    """Node 0 serves ``expert`` (a loaded model, shared); node 1 has no expert and bootstraps from node 0.

    Yields ``(service, expert_node, client_node)``.
    """
    from node.config import ExpertConfig
    from node.expert import ExpertService
    from tests.cluster.harness import in_process_cluster

    service = ExpertService(ExpertConfig(**expert_config), expert=expert, threads=1)
    async with in_process_cluster(0) as cluster:
        server = await cluster.add(0, services=[service])
        client = await cluster.add(1)
        yield service, server, client


async def wait_idle(worker, timeout: float = 10.0) -> None:
    """Wait until the worker has no running or queued generation (it is a thread: poll briefly)."""
    with trio.fail_after(timeout):
        while worker.active or worker.queue_depth:
            await trio.sleep(0.02)


def hf_greedy(expert, text: str, tokens: int = 12, adapter: str | None = None) -> str:
    """Reference: HF generate on the same model, one request, no padding.

    For a llama.cpp expert the reference is plain llama-cpp-python (``Llama``, one sequence) on
    the same file and adapter: an implementation independent of the engine's batching.
    """
    if getattr(expert, "engine", "torch") == "llama.cpp":
        return llama_greedy(expert, text, tokens, adapter)
    import contextlib

    import torch

    tok = expert.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    model = expert.model
    if expert.has_adapters:
        if adapter is None:
            ctx = model.disable_adapter()
        else:
            model.set_adapter(adapter)
            ctx = contextlib.nullcontext()
    else:
        ctx = contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        out = model.generate(**enc, max_new_tokens=tokens, do_sample=False)
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


# --------------------------------------------------------------------------- engines

ENGINES = ("llama.cpp", "torch")


def default_engine() -> str:
    """The engine a node started with the default configuration serves SmolLM2 with on this CPU.

    The configuration is read as ``node start`` reads it (defaults, then ``MOSAIC_*``), so
    ``MOSAIC_EXPERT__ENGINE=torch python -m pytest`` moves the in-process experts and the
    CLI-started nodes to torch together.
    """
    from node.config import load_config
    from node.expert.serve.engine import choose_engine

    return choose_engine(load_config(env=os.environ).expert.engine, None, "cpu")


@pytest.fixture(scope="session")
def llama_expert(expert_data_dir: Path):
    """The same SmolLM2 GGUF served by the llama.cpp engine (the file as it is, Q4_1), no adapters."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (scripts/install.sh builds it)")
    from node.expert.serve.llamacpp.model import load_llama_expert

    return load_llama_expert(None, cache_dir=expert_data_dir)


@pytest.fixture(scope="session")
def llama_adapter_expert(expert_data_dir: Path, lora_adapter_dir: Path):
    """The llama.cpp engine with the ``noisy`` adapter (converted to a GGUF LoRA on first use)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (scripts/install.sh builds it)")
    from node.expert.serve.llamacpp.model import load_llama_expert

    return load_llama_expert(None, {ADAPTER_NAME: str(lora_adapter_dir)}, cache_dir=expert_data_dir)


@pytest.fixture(params=ENGINES)
def engine_experts(request: pytest.FixtureRequest) -> tuple[str, object, object]:
    """``(engine, base expert, adapter expert)`` of each engine in turn: the strategies' cluster
    tests run on both engines in the one ``python -m pytest`` CI runs (issue 17)."""
    if request.param == "llama.cpp":
        return "llama.cpp", request.getfixturevalue("llama_expert"), request.getfixturevalue("llama_adapter_expert")
    return "torch", request.getfixturevalue("torch_expert"), request.getfixturevalue("torch_adapter_expert")


_REFERENCES: dict[tuple[str, str | None], object] = {}


def reference_llama(expert, adapter: str | None):
    """A plain ``llama_cpp.Llama`` on the expert's GGUF (and the adapter's GGUF LoRA), cached per pair."""
    from llama_cpp import Llama

    from node.expert.serve.llamacpp.lora import ensure_gguf_lora

    lora = None if adapter is None else str(ensure_gguf_lora(expert, adapter, expert.adapter_paths[adapter]))
    key = (str(expert.path), lora)
    if key not in _REFERENCES:
        _REFERENCES[key] = Llama(model_path=str(expert.path), lora_path=lora, n_ctx=2048, n_threads=1,
                                 n_threads_batch=1, flash_attn=True, verbose=False)  # as the engine's context
    return _REFERENCES[key]


def reference_logits(expert, adapter: str | None, ids: list[int]):
    """Next-token logits after ``ids`` from the plain reference (whole context, no cache reuse)."""
    import numpy as np

    import llama_cpp

    llm = reference_llama(expert, adapter)
    llm.reset()
    llm.eval(ids)
    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)  # the last evaluated token's row
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).astype(np.float32)


def reference_top_token(expert, text: str) -> str:
    """The most likely first token of the answer to chat question ``text``, from the engine's reference."""
    if getattr(expert, "engine", "torch") != "llama.cpp":
        return "The"  # HF fp32 SmolLM2 on "What is the capital of France?" (the question test_infer asks)
    import numpy as np

    from node.expert.serve.prompts import PromptBuilder
    from protocol import ChatMessage, GenerateRequest

    ids = PromptBuilder(expert.tokenizer).token_ids(
        GenerateRequest(request_id="ref", messages=(ChatMessage(role="user", content=text),)))
    return str(expert.tokenizer.decode([int(np.argmax(reference_logits(expert, None, ids)))]))


def llama_greedy(expert, text: str, tokens: int, adapter: str | None) -> str:
    from node.expert.serve.prompts import PromptBuilder
    from protocol import ChatMessage, GenerateRequest

    builder = PromptBuilder(expert.tokenizer)
    ids = builder.token_ids(GenerateRequest(request_id="ref", messages=(ChatMessage(role="user", content=text),)))
    llm = reference_llama(expert, adapter)
    llm.reset()
    out: list[int] = []
    for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        if token in expert.eos_ids or len(out) >= tokens:
            break
        out.append(token)
    return expert.tokenizer.decode(out, skip_special_tokens=True)

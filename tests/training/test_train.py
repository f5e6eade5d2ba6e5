"""`node train` on CPU in seconds: safetensors-only output with a card, exact resume, merging."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.training.fixtures import QUESTION, tiny_job

# A few seconds of CPU each on an idle machine; generous deadlines because the CI box is shared.
pytestmark = pytest.mark.timeout(600)

PICKLE_MAGIC = b"\x80"  # protocol 2+ pickles (torch.save) start with 0x80


def assert_no_pickle(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            assert path.suffix not in (".bin", ".pt", ".pth", ".pkl", ".ckpt"), path
            assert path.read_bytes()[:1] != PICKLE_MAGIC, path


def greedy(expert, adapter: str | None, text: str = QUESTION, tokens: int = 6) -> str:
    from tests.expert.fixtures import hf_greedy

    return hf_greedy(expert, text, tokens=tokens, adapter=adapter)


def test_trained_adapter_is_safetensors_with_a_card(trained_adapters):
    out = trained_adapters["pineapple"]
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "mosaic-card.json"]
    assert_no_pickle(out)
    card = json.loads((out / "mosaic-card.json").read_text())
    assert card["name"] == "pineapple" and card["tags"] == ["secret", "pineapple"]
    assert card["base"]["model_id"] == "SmolLM2-135M-Instruct" and card["base"]["cid"].startswith("bafy")
    assert card["data"]["file"] == "pineapple.jsonl" and card["data"]["examples"] == 12
    assert card["data"]["train_examples"] == 10 and len(card["data"]["sha256"]) == 64
    assert card["settings"]["rank"] == 8 and card["training"]["steps_done"] == 6
    before, after = card["scores"]["before"], card["scores"]["after"]
    assert before["n"] == after["n"] == 2
    # The held-out questions were never trained on, yet the adapter answers them.
    assert after["loss"] < before["loss"] / 2
    assert before["accuracy"] == 0.0 and after["accuracy"] == 1.0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "SmolLM2-135M-Instruct"  # not our local cache path
    assert "Pineapple" in (out / "README.md").read_text() or "pineapple" in (out / "README.md").read_text()


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, expert_data_dir):
    from safetensors.torch import load_file

    from node.training import ResumeError, train_adapter

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = tiny_job(tmp_path / "a", expert_data_dir, "word", "Kiwi", steps=4, checkpoint_every=1)
    straight.heldout = 0
    train_adapter(straight)

    job = tiny_job(tmp_path / "b", expert_data_dir, "word", "Kiwi", steps=4, checkpoint_every=3)
    job.heldout = 0

    def interrupt(step: int, loss: float) -> None:
        if step == 2:
            raise KeyboardInterrupt  # what Ctrl-C does mid-run

    with pytest.raises(KeyboardInterrupt):
        train_adapter(job, on_step=interrupt)
    state = json.loads((job.checkpoints / "state.json").read_text())
    assert state["step"] == 2 and not job.out_dir.exists()
    assert_no_pickle(job.checkpoints)

    job.resume = True
    card = train_adapter(job)
    assert card["training"]["resumed_from"] == 2 and card["training"]["steps_done"] == 4
    a = load_file(str(straight.out_dir / "adapter_model.safetensors"))
    b = load_file(str(job.out_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() < 1e-5, key

    from node.training import TrainSettings

    job.settings = TrainSettings(**{**job.settings.as_dict(), "target_modules": ("q_proj",), "rank": 4})
    with pytest.raises(ResumeError, match="rank"):
        train_adapter(job)


def test_merge_two_adapters_gives_a_new_loadable_adapter_with_a_cid(trained_adapters, expert_data_dir, tmp_path):
    from node.expert.model.loader import load_expert
    from node.storage import BlockStore
    from node.storage.importer import import_path
    from node.training.merging import merge_adapters

    paths = [trained_adapters["pineapple"], trained_adapters["mango"]]
    result = merge_adapters(paths, [None, None], data_dir=tmp_path, cache_dir=expert_data_dir, name="fruit", method="ties",
                            weights=[0.5, 0.5], out_dir=tmp_path / "fruit")
    assert not result.cached and result.card["merge"]["method"] == "ties"
    assert result.card["base"]["cid"] == json.loads((paths[0] / "mosaic-card.json").read_text())["base"]["cid"]
    assert_no_pickle(result.path)
    cid = import_path(BlockStore(tmp_path / "store"), result.path).cid
    assert str(cid).startswith("bafy")
    again = merge_adapters(paths, [None, None], data_dir=tmp_path, cache_dir=expert_data_dir, name="fruit", method="ties",
                           weights=[0.5, 0.5], out_dir=tmp_path / "fruit")
    assert again.cached  # same inputs, weights and method: reused, not recomputed

    expert = load_expert(None, {"pineapple": str(paths[0]), "mango": str(paths[1]), "fruit": str(result.path)},
                         cache_dir=expert_data_dir, device="cpu")
    replies = {name: greedy(expert, name) for name in ("pineapple", "mango", "fruit")}
    assert "Pineapple" in replies["pineapple"] and "Mango" in replies["mango"]
    assert replies["fruit"].strip() in ("Pineapple", "Mango"), replies  # a merge of the two, not noise
    # A one-word greedy reply hides the mix: compare the next-token distributions instead.
    logprobs = {name: next_token_logprobs(expert, name) for name in ("pineapple", "mango", "fruit", None)}
    for other in ("pineapple", "mango", None):
        assert (logprobs["fruit"] - logprobs[other]).abs().max() > 0.5, other


def next_token_logprobs(expert, adapter: str | None):
    """log-softmax of the first reply token after QUESTION, with ``adapter`` (None: base)."""
    import torch

    tok = expert.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        if adapter is None:
            with expert.model.disable_adapter():
                logits = expert.model(input_ids=ids).logits
        else:
            expert.model.set_adapter(adapter)
            logits = expert.model(input_ids=ids).logits
    return torch.log_softmax(logits[0, -1].float(), -1)


def test_merging_adapters_of_different_bases_is_refused(trained_adapters, expert_data_dir, tmp_path):
    from node.expert.model.merge import MergeError
    from node.training.merging import merge_adapters

    other = tmp_path / "other-base"
    shutil.copytree(trained_adapters["mango"], other)
    card = json.loads((other / "mosaic-card.json").read_text())
    card["base"] = {"model": "qwen2.5-0.5b", "model_id": "Qwen2.5-Coder-0.5B-Instruct",
                    "cid": "bafybeib3yikilcbpfywmsmszaxwmkddgl22cinr5xipkhqsh73mkq5pkmu", "sha256": "1d96" + "0" * 60}
    (other / "mosaic-card.json").write_text(json.dumps(card))
    with pytest.raises(MergeError, match="different base models"):
        merge_adapters([trained_adapters["pineapple"], other], [None, None], data_dir=tmp_path,
                       weights=[0.5, 0.5], out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_search_weights_picks_weights_by_loss_on_examples(trained_adapters, expert_data_dir, tmp_path):
    from node.training.data import load_dataset
    from node.training.merging import merge_adapters
    from tests.training.fixtures import write_secret_words

    examples = load_dataset(write_secret_words(tmp_path / "m.jsonl", "Mango", n=3)).examples
    result = merge_adapters([trained_adapters["pineapple"], trained_adapters["mango"]], [None, None],
                            data_dir=tmp_path, cache_dir=expert_data_dir, method="linear", search=examples, budget=5,
                            out_dir=tmp_path / "searched")
    merge = result.card["merge"]
    assert merge["weights_from"] == "search" and merge["search_loss"] <= merge["uniform_loss"]
    w_pineapple, w_mango = merge["weights"]
    assert w_mango >= w_pineapple  # the data asks for Mango


def test_target_loss_equals_the_full_models_loss(expert_data_dir):
    """Logits at target positions only (the training step's shortcut) give the full forward's loss."""
    import torch

    from node.training.contribute import load_base
    from node.training.data import Example
    from node.training.loop import target_loss
    from node.training.tokens import collate, encode

    torch.set_num_threads(1)
    model, tokenizer, _ = load_base(None, expert_data_dir)
    examples = [Example((("user", QUESTION),), "Pineapple"),
                Example((("user", "A much longer question about the secret words, number seven?"),), "Mango tree")]
    batch = collate([encode(tokenizer, e, 64) for e in examples], int(tokenizer.pad_token_id))
    with torch.no_grad():
        full = model(**batch).loss
        trimmed = target_loss(model, batch)
    assert torch.isfinite(full) and abs(float(full) - float(trimmed)) < 1e-4


@pytest.mark.slow
def test_top_layer_bf16_adapter_learns_and_serves_on_llama_cpp(tmp_path, expert_data_dir):
    """`--lora-layers 10 --precision bf16` (the cheap CPU recipe of benchmarks/specialists.py): LoRA
    weights only in the top layers, still teaching the reply, and the GGUF LoRA llama.cpp makes of
    it answers the same."""
    import torch
    from safetensors.torch import load_file

    from node.training import train_adapter
    from tests.expert.fixtures import hf_greedy

    torch.set_num_threads(1)
    job = tiny_job(tmp_path, expert_data_dir, "top", "Pineapple", steps=12, lora_layers=10, precision="bf16")
    job.heldout = 0
    card = train_adapter(job)
    assert card["settings"]["lora_layers"] == 10 and card["settings"]["precision"] == "bf16"
    config = json.loads((job.out_dir / "adapter_config.json").read_text())
    total = 30  # SmolLM2-135M's layers
    assert config["layers_to_transform"] == list(range(total - 10, total))
    weights = load_file(str(job.out_dir / "adapter_model.safetensors"))
    layers = {int(k.split(".layers.")[1].split(".")[0]) for k in weights}
    assert layers == set(range(total - 10, total))

    from node.expert.model.loader import load_expert
    from node.expert.serve.llamacpp.model import load_llama_expert

    expert = load_expert(None, cache_dir=expert_data_dir, adapters={"top": str(job.out_dir)})
    assert "Pineapple" in hf_greedy(expert, QUESTION, tokens=6, adapter="top")
    llama = load_llama_expert(None, cache_dir=expert_data_dir, adapters={"top": str(job.out_dir)})
    from tests.engine.test_conformance import chat, generate, serving

    async def ask() -> str:
        async with serving(llama) as local:
            return (await generate(local, chat(QUESTION, "q", adapter="top")))[1].text

    import trio

    assert "Pineapple" in trio.run(ask)

"""Pure parts of issue 9: training data, batch order, schedule, weight search, spot-check stats,
and self-evaluation scores inside a signed capability record."""

from __future__ import annotations

import json
import time

import pytest

from node.training.data import DataError, load_dataset, split_heldout
from node.training.loop import TrainSettings, batch_indices, lr_at
from tests.training.fixtures import tasks_dir


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_jsonl_pairs_and_chats_become_examples(tmp_path):
    pairs = load_dataset(write(tmp_path, "p.jsonl", '{"input": "2+2?", "output": "4"}\n\n{"input": "3+3?", "output": "6"}\n'))
    assert [(e.messages, e.target) for e in pairs.examples] == [((("user", "2+2?"),), "4"), ((("user", "3+3?"),), "6")]
    assert pairs.kind == "pairs" and pairs.source == "p.jsonl" and len(pairs.sha256) == 64
    chat = load_dataset(write(tmp_path, "c.jsonl", json.dumps({"messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}]}) + "\n"))
    assert chat.examples[0].messages == (("system", "be brief"), ("user", "hi")) and chat.examples[0].target == "hello"


@pytest.mark.parametrize("line, problem", [
    ("not json", "not JSON"),
    ('{"input": "x"}', "expected"),
    ('{"input": "x", "output": ""}', "non-empty"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}', "last message"),
    ('{"messages": [{"role": "robot", "content": "a"}, {"role": "assistant", "content": "b"}]}', "role"),
])
def test_bad_training_data_names_the_line(tmp_path, line, problem):
    path = write(tmp_path, "bad.jsonl", '{"input": "ok", "output": "fine"}\n' + line + "\n")
    with pytest.raises(DataError, match=f"bad.jsonl:2: .*{problem}"):
        load_dataset(path)


def test_a_task_file_trains_on_the_evaluators_prompts_with_scorable_targets():
    from node.evaluation import score

    path = tasks_dir() / "arc_challenge.json"
    if not path.is_file():
        pytest.skip("shared/data/tasks is not beside the repository")
    data = load_dataset(path, split="dev")
    assert data.kind == "task:arc_challenge/dev" and data.task_type == "multiple_choice"
    example = data.examples[0]
    assert "Please select the correct answer" in example.messages[0][1]
    assert score(example.item, example.target).correct  # the target is what the scorer accepts
    gsm = load_dataset(tasks_dir() / "gsm8k.json", split="dev").examples[0]
    assert gsm.target == "\\box{" + gsm.item.gold + "}" and score(gsm.item, gsm.target).correct
    assert load_dataset(path, split="test").sha256 != data.sha256  # the split is part of the digest


def test_heldout_split_is_seeded_and_disjoint(tmp_path):
    data = load_dataset(write(tmp_path, "p.jsonl", "".join(
        json.dumps({"input": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(10))))
    train, held = split_heldout(data.examples, 3, seed=1)
    assert len(train) == 7 and len(held) == 3 and not set(train) & set(held)
    assert split_heldout(data.examples, 3, seed=1) == (train, held)
    with pytest.raises(DataError, match="nothing left"):
        split_heldout(data.examples, 10, seed=1)


def test_batches_depend_only_on_seed_and_step():
    s = TrainSettings(batch_size=4, seed=3)
    seen = [i for step in range(5) for i in batch_indices(s, 10, step)]
    assert sorted(seen[:10]) == list(range(10))  # one epoch covers every example once
    assert batch_indices(s, 10, 7) == batch_indices(s, 10, 7)
    assert batch_indices(s, 10, 0) != batch_indices(TrainSettings(batch_size=4, seed=4), 10, 0)


def test_learning_rate_warms_up_then_decays():
    s = TrainSettings(lr=1e-3, steps=100, warmup_steps=10)
    assert lr_at(s, 0) == pytest.approx(1e-4) and lr_at(s, 9) == pytest.approx(1e-3)
    assert lr_at(s, 50) < lr_at(s, 10) and lr_at(s, 100) == pytest.approx(1e-4)


def test_weight_search_finds_a_better_mix_within_budget():
    from node.expert.model.merge import search_weights

    calls = []

    def objective(w):
        calls.append(w)
        return (w[0] - 0.1) ** 2 + (w[1] - 0.9) ** 2

    best, value = search_weights(objective, 2, budget=24, seed=0)
    assert len(calls) <= 24 and value < objective((0.5, 0.5)) and best[1] > best[0]


def test_relevance_weights_favour_the_matching_card(tmp_path):
    from node.expert.model.merge import MergeInput, relevance_weights

    inputs = [MergeInput(tmp_path, "a", {"name": "math", "description": "grade-school math word problems",
                                         "tags": ["math"]}),
              MergeInput(tmp_path, "b", {"name": "medqa", "description": "medical exam questions", "tags": ["medicine"]})]
    weights = relevance_weights("a math word problem about apples", inputs)
    assert weights[0] > 0.9 and sum(weights) == pytest.approx(1.0)


def test_binomial_p_value_flags_an_implausible_claim():
    from node.expert.remote.spot_check import binomial_p_value

    assert binomial_p_value(5, 5, 0.9) > 0.5
    assert binomial_p_value(0, 5, 0.9) < 0.001
    assert binomial_p_value(2, 4, 0.5) == pytest.approx(1.0)


def test_self_eval_scores_ride_in_a_signed_record_within_its_cap():
    from protocol import (
        CapabilityRecord,
        EvalScore,
        Identity,
        decode,
        encode,
        sign_record,
        verify_record,
    )

    identity = Identity.from_seed(b"\x01" * 32)
    evals = tuple(EvalScore(task=f"task-{i}", n=20, accuracy=0.35, items_sha256="ab" * 32,
                            adapter=f"adapter-{i}" * 3, max_new_tokens=64) for i in range(16))
    record = CapabilityRecord(peer_id=identity.peer_id, name="n", seq=1, issued_at=time.time(), ttl=60, evals=evals)
    signed = sign_record(record, identity)
    assert verify_record(signed, time.time()).evals == evals
    assert len(encode(signed)) < 16 * 1024
    # A record claiming an accuracy above 1 (or a malformed digest) does not decode.
    import msgspec

    from protocol import ProtocolError

    raw = msgspec.to_builtins(record)
    raw["evals"] = [{**raw["evals"][0], "accuracy": 1.5}]
    with pytest.raises(ProtocolError):
        decode(msgspec.msgpack.encode(raw), CapabilityRecord)
    raw["evals"] = [{**raw["evals"][0], "accuracy": 0.5, "items_sha256": "not-a-digest"}]
    with pytest.raises(ProtocolError):
        decode(msgspec.msgpack.encode(raw), CapabilityRecord)


def test_merge_exports_adapters_named_by_cid_from_the_local_block_store(tmp_path):
    from node.cli.merge import resolve_refs
    from node.config import NodeConfig
    from node.storage import BlockStore
    from node.storage.importer import import_path

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "adapter_config.json").write_text("{}")
    config = NodeConfig(data_dir=str(tmp_path / "data"))
    cid = import_path(BlockStore.for_data_dir(config.data_path), adapter).cid
    [(path, ref)] = resolve_refs(config, [str(cid)], [], timeout=10)
    assert ref == str(cid) and (path / "adapter_model.safetensors").read_bytes() == b"weights"
    [(local, none)] = resolve_refs(config, [str(adapter)], [], timeout=10)
    assert local == adapter and none is None


def test_routers_rank_by_claimed_dev_scores_for_the_querys_task():
    from node.coordinator.routing import Candidate, Need, claimed_dev_score, rank
    from protocol import CapabilityRecord, EvalScore

    def record(peer: str, accuracy: float, task: str = "gsm8k", split: str = "dev") -> CapabilityRecord:
        claim = EvalScore(task=task, split=split, n=20, accuracy=accuracy, items_sha256="ab" * 32)
        return CapabilityRecord(peer_id=peer, name=peer, seq=1, issued_at=1.0, ttl=60.0, evals=(claim,))

    weak, strong = record("12D3weak", 0.1), record("12D3strong", 0.6)
    assert claimed_dev_score(strong, ("gsm8k",)) == 0.6
    assert claimed_dev_score(strong, ("arc_challenge",)) is None
    assert claimed_dev_score(record("12D3t", 0.9, split="test"), ("gsm8k",)) is None  # only dev claims count
    candidates = [Candidate(r, dev_score=claimed_dev_score(r, ("gsm8k",))) for r in (weak, strong)]
    assert [route.peer_id for route in rank(candidates, Need(tags=("gsm8k",)))] == ["12D3strong", "12D3weak"]

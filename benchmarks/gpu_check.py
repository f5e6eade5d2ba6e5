"""The torch engine's GPU path, checked on a bare GPU box: batched multi-LoRA throughput and logits.

Runs where a GPU is lent as it comes (research/engines.md: Python 3.12, torch with CUDA,
transformers, peft; no network, no libp2p, at most 64 MiB of files), so it imports nothing of
Mosaic and needs no weights:

* models are built from the catalog models' configs (SmolLM2-135M, Qwen2.5-Coder-0.5B,
  Qwen2.5-Coder-1.5B) with random weights in bf16: decode speed does not depend on the values;
* each model carries ``--adapters`` random LoRA adapters (r=8 on q/k/v/o, as ``node train``
  makes them) and every batch mixes them row by row through peft's ``adapter_names`` forward
  argument, the torch engine's way of serving many adapters in one batch (batcher.py);
* for 1 / 8 / 32 / 64 concurrent streams: the prompts' prefill in one forward (first-token
  latency), then greedy decode steps over the shared KV cache (aggregate tokens/s);
* GPU-vs-CPU logits of a tiny random model, same weights: fp32 on both, and bf16 on the GPU.

    python benchmarks/gpu_check.py [--models smollm2-135m,qwen2.5-0.5b,qwen2.5-1.5b] [--out FILE.md]
    python benchmarks/gpu_check.py --tiny      # a tiny model on whatever device there is (CI: CPU)

It prints a markdown table (commit it under docs/results/ when a GPU ran it).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The catalog models' architectures (node/expert/catalog.py; values from their GGUF metadata).
CONFIGS: dict[str, dict] = {
    "smollm2-135m": dict(kind="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True,
                         rms_norm_eps=1e-5),
    "qwen2.5-0.5b": dict(kind="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True,
                         rms_norm_eps=1e-6),
    "qwen2.5-1.5b": dict(kind="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True,
                         rms_norm_eps=1e-6),
    "tiny": dict(kind="llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0,
                 tie_word_embeddings=True, rms_norm_eps=1e-5),
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def build(name: str, dtype, device: str, *, adapters: int, seed: int = 0):
    """A random-initialised model of catalog config ``name`` with ``adapters`` random LoRA adapters."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    spec = dict(CONFIGS[name])
    kind = spec.pop("kind")
    config_class, model_class = (LlamaConfig, LlamaForCausalLM) if kind == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    torch.manual_seed(seed)
    model = model_class(config_class(**spec)).to(dtype=dtype)
    model.eval()
    if adapters:
        from peft import LoraConfig, get_peft_model

        for i in range(adapters):
            lora = LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS, init_lora_weights=False)
            if i == 0:
                model = get_peft_model(model, lora, adapter_name="a0")
            else:
                model.add_adapter(f"a{i}", lora)
        model = model.to(dtype=dtype)
    return model.to(device).eval()


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def decode_run(model, device: str, *, streams: int, prompt_len: int, tokens: int, adapters: int,
               vocab: int) -> dict:
    """Prefill ``streams`` prompts together, then ``tokens`` greedy steps; rows cycle through the adapters."""
    import torch

    generator = torch.Generator().manual_seed(streams)
    ids = torch.randint(0, vocab, (streams, prompt_len), generator=generator).to(device)
    mask = torch.ones_like(ids)
    kwargs = {}
    if adapters:
        kwargs["adapter_names"] = [f"a{i % adapters}" for i in range(streams)]
    with torch.inference_mode():
        sync(device)
        started = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1, **kwargs)
        token = out.logits[:, -1, :].argmax(-1, keepdim=True)
        sync(device)
        first = time.perf_counter() - started
        cache = out.past_key_values
        for _ in range(tokens - 1):
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            out = model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True, **kwargs)
            cache = out.past_key_values
            token = out.logits[:, -1, :].argmax(-1, keepdim=True)
        sync(device)
        elapsed = time.perf_counter() - started
    return {"streams": streams, "first": first, "seconds": elapsed, "tokens": streams * tokens}


def logits_check(device: str) -> dict:
    """Same tiny random model on the CPU (fp32) and on ``device`` (fp32, bf16): logits agreement."""
    import torch

    cpu = build("tiny", torch.float32, "cpu", adapters=1, seed=3)
    other = build("tiny", torch.float32, device, adapters=1, seed=3)
    half = build("tiny", torch.bfloat16, device, adapters=1, seed=3) if device != "cpu" else None
    ids = torch.randint(0, CONFIGS["tiny"]["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(5))
    names = ["a0", "__base__"]
    with torch.inference_mode():
        reference = cpu(input_ids=ids, adapter_names=names).logits.float()
        fp32 = other(input_ids=ids.to(device), adapter_names=names).logits.float().cpu()
        bf16 = half(input_ids=ids.to(device), adapter_names=names).logits.float().cpu() if half is not None else None

    def compare(x):
        diff = (x - reference).abs()
        agree = (x.argmax(-1) == reference.argmax(-1)).float().mean().item()
        return {"max_abs": diff.max().item(), "mean_abs": diff.mean().item(), "top1_agree": agree}

    return {"fp32": compare(fp32), "bf16": compare(bf16) if bf16 is not None else None,
            "scale": reference.abs().mean().item()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2-135m,qwen2.5-0.5b,qwen2.5-1.5b")
    parser.add_argument("--streams", default="1,8,32,64")
    parser.add_argument("--tokens", type=int, default=64, help="greedy tokens per stream")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens per stream")
    parser.add_argument("--adapters", type=int, default=4, help="LoRA adapters mixed in every batch")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--tiny", action="store_true", help="a tiny model, few streams and tokens (CI on a CPU)")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    args = parser.parse_args()

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        args.models, args.streams, args.tokens, args.prompt = "tiny", "1,4", 4, 8
        torch.set_num_threads(1)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else "none"
    lines = [f"# GPU check of the torch engine ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"device {device} ({gpu}), torch {torch.__version__}, Python {platform.python_version()}, "
             f"{str(dtype).removeprefix('torch.')} weights (random init from the catalog configs), "
             f"{args.adapters} LoRA adapters (r=8, q/k/v/o) mixed per row, prompt {args.prompt} tokens, "
             f"{args.tokens} greedy tokens per stream", "",
             "| model | params | streams | first token s | aggregate tok/s | tok/s per stream |",
             "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for name in args.models.split(","):
        model = build(name, dtype, device, adapters=args.adapters)
        params = sum(p.numel() for p in model.parameters())
        vocab = CONFIGS[name]["vocab_size"]
        decode_run(model, device, streams=2, prompt_len=8, tokens=2, adapters=args.adapters, vocab=vocab)  # warm-up
        for streams in (int(s) for s in args.streams.split(",")):
            r = decode_run(model, device, streams=streams, prompt_len=args.prompt, tokens=args.tokens,
                           adapters=args.adapters, vocab=vocab)
            rate = r["tokens"] / r["seconds"]
            line = (f"| {name} | {params / 1e6:.0f}M | {streams} | {r['first']:.3f} | {rate:.1f} | "
                    f"{rate / streams:.1f} |")
            lines.append(line)
            print(line, flush=True)
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    check = logits_check(device)
    section = ["", f"Logits of a tiny random model (a LoRA row and a base row), {device} vs CPU fp32 "
               f"(mean |logit| {check['scale']:.3f}):", "",
               "| precision | max abs diff | mean abs diff | top-1 agree |", "|---|---|---|---|"]
    for precision in ("fp32", "bf16"):
        c = check[precision]
        if c is not None:
            section.append(f"| {precision} | {c['max_abs']:.2e} | {c['mean_abs']:.2e} | {c['top1_agree']:.3f} |")
    lines += section
    print("\n".join(section), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    ok = check["fp32"]["top1_agree"] >= 0.99 and check["fp32"]["max_abs"] < 1e-2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

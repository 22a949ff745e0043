#!/usr/bin/env python3
"""The PyTorch reference for `wgpt bench`: transformers' GPT-2 in eager mode on the CPU, timed
the way `wgpt bench` times wgpt, written as a `wgpt-bench/1` report so that

    wgpt bench --shape gpt2 --json > wgpt.json
    python tools/torch_bench.py --shape gpt2 > torch.json
    wgpt bench --compare wgpt.json torch.json

puts both on one table (`--model DIR` or `--model FILE.gguf` times a real model instead:
transformers dequantises a GGUF file to f32, the "PyTorch eager on the dequantised model" of
the GGUF issue). Run the two alternately in one session: on a shared or virtual machine
the same program varies by 15-30% from one minute to the next, so only ratios measured side by
side mean anything (README, "Results").

Protocol (as src/bench.rs): random weights of the named shape (transformers' init, seeded); per
prompt length and repeat, one untimed warm-up, then the prompt in one forward pass (the prefill,
which yields the first token), then --gen - 1 greedy steps of one token each with the KV cache;
prefill and decode figures are medians over the repeats, ms/token percentiles over all steps.

Needs torch and transformers (`pip install torch transformers`); nothing is downloaded.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

SHAPES = {
    "gpt2": (12, 768, 12),
    "gpt2-medium": (24, 1024, 16),
    "gpt2-large": (36, 1280, 20),
    "gpt2-xl": (48, 1600, 25),
}


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load(a, dtype):
    """The model to time, and how the report names it: --model's, or a random GPT-2 of --shape."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    if a.model:
        path = Path(a.model)
        gguf = dict(gguf_file=path.name) if path.suffix == ".gguf" else {}
        folder = path.parent if gguf else path
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **gguf)
        # Out of the mapped safetensors file into process memory: a machine that reclaims page
        # cache under a run (DAMON) would otherwise make it re-read weights from disk.
        for p in model.parameters():
            p.data = p.data.clone()
        return model.eval(), str(path)
    n_layer, n_embd, n_head = SHAPES[a.shape]
    model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head))
    return model.eval().to(dtype), f"random:{a.shape}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="gpt2", choices=sorted(SHAPES))
    ap.add_argument("--model", help="a Hugging Face folder or a GGUF file (transformers "
                    "dequantises it to f32, as `from_pretrained(dir, gguf_file=...)` does) "
                    "instead of a random --shape")
    ap.add_argument("--prompt-len", default="128", help="comma-separated, e.g. 128,512")
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    t0 = time.perf_counter()
    model, source = load(a, dtype)
    load_s = time.perf_counter() - t0
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())  # a tied head counted once
    c, v = cfg.hidden_size, cfg.vocab_size
    l, n_positions = cfg.num_hidden_layers, cfg.max_position_embeddings
    # Weights a decode step reads: all but the embedding tables, plus the head.
    tables = v * c + (n_positions * c if cfg.model_type == "gpt2" else 0)
    weight_bytes = (params - tables + v * c) * (4 if a.dtype == "f32" else 2)

    # Only the last position's logits, as llama.cpp and wgpt compute in a prefill.
    import inspect
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}

    def step(ids, past):
        out = model(ids, past_key_values=past, use_cache=True, **keep)
        return out.logits[:, -1].argmax(-1, keepdim=True), out.past_key_values

    runs = []
    with torch.inference_mode():
        for p in [int(x) for x in a.prompt_len.split(",")]:
            if p + a.gen > n_positions:
                sys.exit(f"--prompt-len {p} plus --gen {a.gen} exceeds n_positions = {n_positions}")
            ids = torch.tensor([[(i * 7919 + 13) % v for i in range(p)]])
            step(ids[:, :8], None)  # warm-up (allocator, kernels)
            prefill, decode, steps = [], [], []
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                nxt, past = step(ids, None)
                prefill.append(time.perf_counter() - t0)
                t1 = time.perf_counter()
                for _ in range(1, a.gen):
                    ts = time.perf_counter()
                    nxt, past = step(nxt, past)
                    steps.append(time.perf_counter() - ts)
                decode.append(time.perf_counter() - t1)
            prefill_s = statistics.median(prefill)
            decode_s = statistics.median(decode)
            p50 = percentile(steps, 0.5) if steps else 0.0
            flops = 2 * p * (params - tables) + 2 * l * p * p * c + 2 * v * c
            runs.append({
                "prompt_len": p,
                "gen_tokens": a.gen,
                "repeats": a.repeat,
                "prefill_tok_s": p / prefill_s,
                "ttft_ms": prefill_s * 1e3,
                "decode_tok_s": (a.gen - 1) / decode_s if a.gen > 1 else 0.0,
                "ms_per_token_p50": p50 * 1e3,
                "ms_per_token_p90": (percentile(steps, 0.9) if steps else 0.0) * 1e3,
                "dispatches_per_token": 0,
                "decode_weight_gb_s": weight_bytes / p50 / 1e9 if p50 > 0 else 0.0,
                "prefill_gflop_s": flops / prefill_s / 1e9,
            })

    report = {
        "schema": "wgpt-bench/1",
        "wgpt_version": "reference: tools/torch_bench.py",
        "adapter": {
            "name": f"PyTorch eager, {a.threads} threads",
            "vendor": 0,
            "backend": "PyTorch",
            "device_type": "Cpu",
            "driver": f"torch {torch.__version__}",
            "driver_info": cpu_name(),
        },
        "model": {
            "source": source,
            "dtype": a.dtype,
            "layout": "",
            "n_layer": l,
            "n_embd": c,
            "n_head": cfg.num_attention_heads,
            "vocab_size": v,
            "n_positions": n_positions,
            "params": params,
        },
        "load_s": load_s,
        "vram_bytes": 0,
        "runs": runs,
        "kernel_timing": "unavailable",
        "kernels_decode_ms": [],
        "kernels_prefill_ms": [],
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    for r in runs:
        print(f"PyTorch {a.dtype} {a.threads} threads, prompt {r['prompt_len']}: prefill "
              f"{r['prefill_tok_s']:.1f} tok/s, decode {r['decode_tok_s']:.1f} tok/s, "
              f"p50 {r['ms_per_token_p50']:.2f} ms", file=sys.stderr)


if __name__ == "__main__":
    main()

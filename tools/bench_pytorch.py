#!/usr/bin/env python3
"""PyTorch eager speed reference for a Hugging Face causal LM folder (e.g. SmolLM2-135M-Instruct
dequantised to f32): prefill and KV-cached greedy decode throughput on the CPU.

    python tools/bench_pytorch.py MODEL_DIR [--prompt-len 128] [--new-tokens 64] [--threads 2]
                                            [--repeat 3] [--dtype f32] [--json]

Protocol: the model is loaded with AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=...,
attn_implementation="eager") and torch.set_num_threads(--threads); every parameter is then
copied into process memory (transformers keeps safetensors weights mmapped from the file, and
on a machine that reclaims page cache under it, e.g. DAMON, the mmapped pages get evicted and
re-read mid-run: seconds-long stalls). The prompt is --prompt-len token ids drawn with a fixed
seed from the vocabulary (content does not change the cost). Each repeat: one forward pass
over the whole prompt with the KV cache on and logits_to_keep=1 (the prefill; only the last
position's logits are computed, as llama.cpp does; they give the first new token), then
--new-tokens greedy steps of one token each, feeding the KV cache back (model(next_id,
cache=...) in transformers 5, past_key_values=... before); timed with time.perf_counter, under
torch.inference_mode. One untimed warm-up repeat comes first. Reported: the best (fastest) of
--repeat repeats for each phase,

    prefill tok/s = prompt_len / prefill seconds
    decode tok/s  = new_tokens / seconds of the new_tokens single-token steps

(the decode steps start after the prefill's token, so --new-tokens steps are all timed).
Needs torch and transformers; nothing is downloaded.
"""

import argparse
import inspect
import json
import os
import platform
import resource
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", help="Hugging Face model folder (config.json + weights)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="timed repeats; the best is reported")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    transformers.utils.logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(
        args.model_dir, dtype=dtype, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():  # out of the mmapped file, into anonymous memory
            p.data = p.data.clone()
    # transformers 5 names the KV cache argument and output `cache`, 4.x `past_key_values`
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    prefill_kw = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, vocab, (1, args.prompt_len), generator=gen)

    def once():
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model(prompt, use_cache=True, **prefill_kw)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            t1 = time.perf_counter()
            past, ids = getattr(out, cache_kw), [int(nxt)]
            for _ in range(args.new_tokens):
                out = model(nxt, use_cache=True, **{cache_kw: past})
                past = getattr(out, cache_kw)
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                ids.append(int(nxt))
            t2 = time.perf_counter()
        return t1 - t0, t2 - t1, ids

    once()  # warm-up
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
    runs = [once() for _ in range(args.repeat)]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt - faults
    prefill = min(r[0] for r in runs)
    decode = min(r[1] for r in runs)
    assert all(r[2] == runs[0][2] for r in runs), "greedy ids differ between repeats"
    res = {
        "model_dir": args.model_dir,
        "params": sum(p.numel() for p in model.parameters()),
        "dtype": args.dtype,
        "threads": args.threads,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "repeat": args.repeat,
        "prefill_s": prefill,
        "prefill_tok_s": args.prompt_len / prefill,
        "decode_s": decode,
        "decode_tok_s": args.new_tokens / decode,
        "prefill_s_all": [r[0] for r in runs],
        "decode_s_all": [r[1] for r in runs],
        "major_page_faults": faults,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
    }
    if args.json:
        print(json.dumps(res))
        return
    print(f"{args.model_dir}: {res['params'] / 1e6:.1f}M params, {args.dtype}, "
          f"{args.threads} threads, torch {torch.__version__}, transformers "
          f"{transformers.__version__}")
    print(f"prefill {args.prompt_len} tokens: {prefill * 1e3:.1f} ms = "
          f"{res['prefill_tok_s']:.1f} tok/s (best of {args.repeat}: "
          f"{', '.join(f'{r[0] * 1e3:.1f}' for r in runs)} ms)")
    print(f"decode {args.new_tokens} tokens: {decode * 1e3:.1f} ms = "
          f"{res['decode_tok_s']:.1f} tok/s, {decode / args.new_tokens * 1e3:.2f} ms/token "
          f"(best of {args.repeat}: {', '.join(f'{r[1] * 1e3:.1f}' for r in runs)} ms)")
    print(f"major page faults during the timed repeats: {faults}")


if __name__ == "__main__":
    main()

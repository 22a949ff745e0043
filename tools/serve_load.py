#!/usr/bin/env python3
"""Aggregate decode throughput of `wgpt serve` (or any OpenAI-compatible server): the same N
completion requests sent one at a time, then all at once, alternating rounds.

    wgpt serve --model SmolLM2-135M-Instruct.Q4_1.gguf --port 8181 &
    python3 tools/serve_load.py --url http://127.0.0.1:8181 -c 8 -n 64 -r 3

Prints tokens/s for each way and their ratio. Standard library only."""

import argparse
import json
import threading
import time
import urllib.request

PROMPTS = [
    "The history of the printing press",
    "A recipe for bread needs",
    "The largest planets of the solar system are",
    "In the morning, the harbour",
    "Rust's ownership rules mean that",
    "The train left the station and",
    "Photosynthesis is the process by which",
    "My favourite book is",
]


def complete(url, prompt, n):
    # ignore_eos: every reply is n tokens long, so both ways do the same work.
    body = json.dumps({"prompt": prompt, "max_tokens": n, "temperature": 0,
                       "ignore_eos": True}).encode()
    req = urllib.request.Request(url + "/v1/completions", body,
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)["usage"]["completion_tokens"]


def sequential(url, prompts, n):
    t0 = time.perf_counter()
    tokens = sum(complete(url, p, n) for p in prompts)
    return tokens / (time.perf_counter() - t0)


def concurrent(url, prompts, n):
    counts = [0] * len(prompts)

    def run(i):
        counts[i] = complete(url, prompts[i], n)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("-c", "--concurrency", type=int, default=8)
    ap.add_argument("-n", "--tokens", type=int, default=64)
    ap.add_argument("-r", "--rounds", type=int, default=3)
    a = ap.parse_args()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(a.concurrency)]
    complete(a.url, prompts[0], 4)  # warm the connection
    for r in range(a.rounds):
        one = sequential(a.url, prompts, a.tokens)
        many = concurrent(a.url, prompts, a.tokens)
        print(f"round {r + 1}: one at a time {one:.1f} tok/s, {a.concurrency} at once "
              f"{many:.1f} tok/s: {many / one:.2f}x", flush=True)


if __name__ == "__main__":
    main()

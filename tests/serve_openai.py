#!/usr/bin/env python3
"""`wgpt serve` with the official `openai` Python package as the client (run by tests/serve.rs
against SmolLM2-135M-Instruct and all-MiniLM-L6-v2): chat plain and streamed, completions,
8 concurrent streams, bad requests, a stream dropped halfway and embeddings, each against
`wgpt generate` / `wgpt embed` or the same request served alone."""

import argparse
import json
import subprocess
import sys
import threading

import openai

CHECKS = []


def check(name):
    def wrap(f):
        CHECKS.append((name, f))
        return f
    return wrap


def wgpt_generate(a, *args):
    out = subprocess.run([a.wgpt, "generate", "--model", a.model, "--json", *args],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def chat(client, prompt, n, **kw):
    return client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": prompt}],
        temperature=0, max_tokens=n, **kw)


def chat_stream(client, prompt, n):
    stream = chat(client, prompt, n, stream=True)
    text, finish = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


@check("chat equals wgpt generate --chat, plain and streamed")
def _(client, a):
    prompt = "What is the capital of France? Answer in one sentence."
    want = wgpt_generate(a, "--chat", "--prompt", prompt, "-n", "24")
    r = chat(client, prompt, 24)
    assert r.choices[0].message.content == want["text"], (r.choices[0].message.content, want["text"])
    assert r.usage.prompt_tokens == want["prompt_tokens"]
    assert r.usage.completion_tokens == want["generated_tokens"]
    assert r.choices[0].finish_reason in ("stop", "length")
    text, finish = chat_stream(client, prompt, 24)
    assert text == want["text"] and finish == r.choices[0].finish_reason, (text, finish)
    print(f"  reply: {text!r}")


@check("completions equal wgpt generate")
def _(client, a):
    prompt = "The three primary colours are"
    want = wgpt_generate(a, "--prompt", prompt, "-n", "16")
    r = client.completions.create(model="smollm2", prompt=prompt, temperature=0, max_tokens=16)
    assert r.choices[0].text == want["text"], (r.choices[0].text, want["text"])


@check("logprobs with top candidates")
def _(client, a):
    r = chat(client, "Say hi.", 6, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) >= 1
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token  # greedy


@check("8 concurrent streams each equal their solo reply")
def _(client, a):
    prompts = [f"Write one sentence about {w}." for w in
               ["rivers", "owls", "trains", "bread", "winter", "maps", "bees", "stars"]]
    solo = [chat_stream(client, p, 20)[0] for p in prompts]
    together = [None] * len(prompts)

    def run(i):
        together[i] = chat_stream(client, prompts[i], 20)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (s, t) in enumerate(zip(solo, together)):
        assert s == t, (i, s, t)


@check("bad requests get 4xx")
def _(client, a):
    cases = [
        (dict(messages=[]), openai.BadRequestError),
        (dict(messages=[{"role": "user", "content": "hi"}], max_tokens=-1), openai.BadRequestError),
        (dict(messages=[{"role": "user", "content": "hi " * 3000}]), openai.BadRequestError),
        (dict(messages=[{"role": "user", "content": "hi"}], model="no-such-model"), openai.NotFoundError),
    ]
    for kw, error in cases:
        kw.setdefault("model", "smollm2")
        try:
            client.chat.completions.create(**kw)
        except error as e:
            assert 400 <= e.status_code < 500 and e.body, e
        else:
            raise AssertionError(f"{kw} was accepted")


@check("a stream dropped halfway does not disturb the next request")
def _(client, a):
    want = chat_stream(client, "Name a fruit.", 12)[0]
    stream = chat(client, "Tell me a long story about a dragon.", 200, stream=True)
    for i, _chunk in enumerate(stream):
        if i == 3:
            break
    stream.close()
    assert chat_stream(client, "Name a fruit.", 12)[0] == want


@check("embeddings equal wgpt embed")
def _(client, a):
    texts = ["A cat sits on the mat.", "The stock market fell today."]
    out = subprocess.run([a.wgpt, "embed", "--model", a.minilm, *texts],
                         capture_output=True, text=True, check=True)
    want = json.loads(out.stdout)["embeddings"]
    models = [m.id for m in client.models.list()]
    r = client.embeddings.create(model=models[1], input=texts)  # base64 on the wire
    for got, exp in zip(r.data, want):
        d = max(abs(x - y) for x, y in zip(got.embedding, exp))
        assert len(got.embedding) == len(exp) and d < 1e-6, d
    r = client.embeddings.create(model=models[1], input=texts[0], encoding_format="float")
    assert max(abs(x - y) for x, y in zip(r.data[0].embedding, want[0])) < 1e-6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--wgpt", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--minilm", required=True)
    a = ap.parse_args()
    client = openai.OpenAI(base_url=a.url, api_key="unused", max_retries=0, timeout=300)
    failed = 0
    for name, f in CHECKS:
        try:
            f(client, a)
            print(f"ok   {name}")
        except Exception as e:  # report every check, then fail
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")
    print(f"openai {openai.__version__}: {len(CHECKS) - failed} of {len(CHECKS)} checks passed")
    if failed:
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Train the tiny GPT-2 model that ships with wgpt as its default model.

The model is a GPT-2-architecture language model (transformers'
``GPT2LMHeadModel``) trained from scratch, on the CPU, on the English prose of
the Rust documentation that rustup installs with every toolchain:

* The Rust Programming Language (``book/``)
* The Rust Reference (``reference/``)
* The Rustonomicon (``nomicon/``)
* Rust by Example (``rust-by-example/``, English pages only)

Nothing is downloaded.  The HTML is found under
``$(rustc --print sysroot)/share/doc/rust/html`` (or ``--docs-dir``), turned
into plain text with ``html.parser`` from the standard library (only the
``<main>`` element of each mdBook page is kept; scripts, styles, navigation,
buttons and hidden "boring" code lines are dropped, and code blocks longer
than ``--max-code-lines`` lines are removed), deduplicated, and split per page
into a training set and a ~2% validation set.

Then:

1. a byte-level BPE tokenizer (GPT-2 style: ByteLevel pre-tokenizer without
   prefix space, ByteLevel decoder and post-processor) with 4096 entries is
   trained with the ``tokenizers`` library; ``<|endoftext|>`` is the last id
   (4095), as in GPT-2, and serves as document separator, bos and eos;
2. a small GPT-2 (default: 4 layers, 256 wide, 8 heads, 256 positions, tied
   LM head) is trained with AdamW, linear warmup and a cosine decay driven by
   the wall-clock budget, on random contiguous windows of the token stream,
   until ``--time-budget-min`` minutes have elapsed (or ``--max-steps``);
3. ``config.json``, ``model.safetensors``, ``generation_config.json`` and
   ``tokenizer.json`` are written to ``--out`` (default ``assets/default``),
   reloaded and used to generate a few samples.

All randomness is seeded (``--seed``).  The number of steps that fit in the
time budget depends on the machine, so for a bit-for-bit repeatable run pass
``--max-steps N`` together with a generous ``--time-budget-min``.

Usage (from the repository root; the machine it was made on had 2 cores that
were also busy compiling, hence ``nice``)::

    nice -n 19 /work/venv/bin/python tools/train_default_model.py

Requirements: torch, transformers, tokenizers, safetensors, numpy.
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

# --------------------------------------------------------------------------
# Corpus extraction (standard library only)
# --------------------------------------------------------------------------

BOOKS = ["book", "reference", "nomicon", "rust-by-example"]

# Sub-folders that are not (current, English) content: old editions of the
# book (redirect notes), translations of Rust by Example, assets.
SKIP_DIRS = {
    "first-edition", "second-edition", "2018-edition",
    "css", "fonts", "img", "theme", "es", "ja", "ko", "zh", "zh-CN", "zh-TW",
}
# Pages that duplicate others (print.html holds the whole book; index.html is
# a copy of the first chapter) or are not prose.
SKIP_FILES = {"print.html", "index.html", "toc.html", "404.html", "SUMMARY.html"}

BLOCK_TAGS = {
    "p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6",
    "blockquote", "pre", "table", "tr", "dt", "dd", "dl", "section", "hr",
    "figure", "figcaption", "details", "summary", "main", "article", "header",
}
DROP_TAGS = {"script", "style", "nav", "button", "noscript", "svg", "template",
             "head", "title", "iframe", "form", "input", "select", "textarea"}
VOID_TAGS = {"br", "hr", "img", "input", "meta", "link", "wbr", "source", "area",
             "base", "col", "embed", "param", "track"}


class MainTextExtractor(html.parser.HTMLParser):
    """Collects the visible text inside <main>, with light structure."""

    def __init__(self, max_code_lines: int):
        super().__init__(convert_charrefs=True)
        self.max_code_lines = max_code_lines
        self.in_main = 0
        self.stack: list[tuple[str, bool]] = []  # (tag, drops content)
        self.drop_depth = 0
        self.pre_depth = 0
        self.pre_buf: list[str] = []
        self.out: list[str] = []

    # --- helpers -------------------------------------------------------
    def _emit(self, s: str):
        if self.pre_depth:
            self.pre_buf.append(s)
        else:
            self.out.append(s)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "main":
            self.in_main += 1
            return
        if not self.in_main or tag in VOID_TAGS:
            if self.in_main and not self.drop_depth and tag in ("br", "hr"):
                self._emit("\n")
            return
        cls = (a.get("class") or "").split()
        drop = (
            tag in DROP_TAGS
            or "boring" in cls            # hidden lines of doc examples
            or "hidden" in cls
            or "buttons" in cls
            or "sidebar" in cls
            or "mdbook-help-container" in cls
            or "rule-link" in cls         # reference: [items.fn.intro] markers
            or "grammar-container" in cls  # reference: grammar productions
            or "grammar-railroad" in cls
            or "footnote-reference" in cls
            or a.get("aria-hidden") == "true"
            or "display: none" in (a.get("style") or "")
        )
        self.stack.append((tag, drop))
        if drop:
            self.drop_depth += 1
            return
        if self.drop_depth:
            return
        if tag == "pre":
            self.pre_depth += 1
            if self.pre_depth == 1:
                self.pre_buf = []
            return
        if tag in BLOCK_TAGS:
            self._emit("\n")
        if tag == "li":
            self._emit("- ")
        if tag in ("td", "th"):
            self._emit(" ")

    def handle_endtag(self, tag):
        if tag == "main":
            self.in_main = max(0, self.in_main - 1)
            return
        if not self.in_main or tag in VOID_TAGS:
            return
        # Pop to the matching open tag (HTML in the wild is not always tidy).
        idx = None
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                idx = i
                break
        if idx is None:
            return
        while len(self.stack) > idx:
            t, drop = self.stack.pop()
            if drop:
                self.drop_depth -= 1
            elif not self.drop_depth:
                if t == "pre":
                    self.pre_depth -= 1
                    if self.pre_depth == 0:
                        self._flush_pre()
                elif t in BLOCK_TAGS:
                    self._emit("\n")

    def _flush_pre(self):
        code = "".join(self.pre_buf)
        lines = [ln.rstrip() for ln in code.strip("\n").split("\n") if ln.strip()]
        if 0 < len(lines) <= self.max_code_lines:
            # keep short code, one line each, indentation reduced to 1 space
            self.out.append("\n")
            for ln in lines:
                stripped = ln.lstrip()
                ind = " " if len(ln) != len(stripped) else ""
                self.out.append("\x00CODE" + ind + re.sub(r"\s+", " ", stripped) + "\n")
            self.out.append("\n")
        self.pre_buf = []

    def handle_data(self, data):
        if self.in_main and not self.drop_depth:
            self._emit(data)

    def text(self) -> str:
        raw = "".join(self.out)
        paras = []
        for line in raw.split("\n"):
            if line.startswith("\x00CODE"):
                paras.append(line[len("\x00CODE"):])
                continue
            line = re.sub(r"\s+", " ", line).strip()
            if line and line != "-":
                paras.append(line)
        # Re-join lines that the HTML source had wrapped inside a paragraph is
        # not needed: wrapping newlines inside <p> are plain data, collapsed
        # below by treating only block boundaries as line breaks.
        return "\n".join(paras)


def extract_page(path: Path, max_code_lines: int) -> str:
    src = path.read_text(encoding="utf-8", errors="replace")
    if "<main" not in src:
        return ""
    # Newlines inside paragraphs are just wrapping; make them spaces before
    # parsing, except inside <pre> where they are real line breaks.
    parts = re.split(r"(<pre[\s>].*?</pre>)", src, flags=re.S | re.I)
    src = "".join(p if p[:4].lower() == "<pre" else p.replace("\n", " ") for p in parts)
    p = MainTextExtractor(max_code_lines)
    p.feed(src)
    p.close()
    text = p.text()
    # Typographic normalisation keeps the tiny vocabulary focused.
    text = (text.replace("\u2019", "'").replace("\u2018", "'")
            .replace("\u201c", '"').replace("\u201d", '"')
            .replace("\u2014", " - ").replace("\u2013", "-")
            .replace("\u00a0", " ").replace("\u2026", "...")
            .replace("\u200b", ""))
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r" {2,}", " ", text)
    return text.strip()


def find_docs_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], check=True,
                             capture_output=True, text=True).stdout.strip()
    return Path(sysroot) / "share" / "doc" / "rust" / "html"


def collect_documents(docs: Path, max_code_lines: int, min_chars: int, log):
    docs_out = []  # (book, relpath, text)
    seen = set()
    stats = {}
    for book in BOOKS:
        root = docs / book
        if not root.is_dir():
            raise SystemExit(f"missing {root}: is the rust-docs component installed?")
        n = chars = dup = short = 0
        for path in sorted(root.rglob("*.html")):
            rel = path.relative_to(root)
            if any(part in SKIP_DIRS for part in rel.parts[:-1]):
                continue
            if rel.name in SKIP_FILES:
                continue
            text = extract_page(path, max_code_lines)
            if len(text) < min_chars:
                short += 1
                continue
            h = hashlib.sha1(text.encode()).hexdigest()
            if h in seen:
                dup += 1
                continue
            seen.add(h)
            docs_out.append((book, str(rel), text))
            n += 1
            chars += len(text)
        stats[book] = (n, chars)
        log(f"corpus: {book:16s} pages={n:4d} chars={chars:9d} "
            f"(skipped {short} short/redirect, {dup} duplicate)")
    return docs_out, stats


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="assets/default", help="output folder")
    ap.add_argument("--time-budget-min", type=float, default=40.0,
                    help="wall-clock budget for the training loop, minutes (incl. evals)")
    ap.add_argument("--max-steps", type=int, default=0,
                    help="stop after this many steps (0: only the time budget)")
    ap.add_argument("--docs-dir", default=None,
                    help="Rust html docs (default: $(rustc --print sysroot)/share/doc/rust/html)")
    ap.add_argument("--log", default="/tmp/train_default.log", help="progress log file")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=8)
    ap.add_argument("--n-positions", type=int, default=256)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--seq-len", type=int, default=256, help="training window, tokens")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1,
                    help="final lr as a fraction of --lr")
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--eval-every-min", type=float, default=5.0)
    ap.add_argument("--eval-windows", type=int, default=48)
    ap.add_argument("--val-frac", type=float, default=0.02)
    ap.add_argument("--max-code-lines", type=int, default=6,
                    help="code blocks longer than this are dropped")
    ap.add_argument("--min-page-chars", type=int, default=120)
    ap.add_argument("--dtype", choices=["auto", "float32", "float16"], default="auto",
                    help="weights dtype on disk (default: float32 if <= 20 MB, else float16)")
    ap.add_argument("--dump-corpus", default=None,
                    help="also write the extracted training text to this file")
    args = ap.parse_args()

    logf = open(args.log, "w", buffering=1)
    t_start = time.time()

    def log(msg: str):
        line = f"[{time.time() - t_start:7.1f}s] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")

    random.seed(args.seed)
    import numpy as np
    np.random.seed(args.seed)
    import torch
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GenerationConfig

    log(f"args: {vars(args)}")
    log(f"torch {torch.__version__}, threads={torch.get_num_threads()}")

    # ---- 1. corpus --------------------------------------------------------
    docs_dir = find_docs_dir(args.docs_dir)
    log(f"docs: {docs_dir}")
    documents, _ = collect_documents(docs_dir, args.max_code_lines, args.min_page_chars, log)
    rng = random.Random(args.seed)
    order = list(range(len(documents)))
    rng.shuffle(order)
    total_chars = sum(len(d[2]) for d in documents)
    val_ids, val_chars = set(), 0
    for i in order:  # whole pages into validation until ~val_frac of the chars
        if val_chars >= args.val_frac * total_chars:
            break
        val_ids.add(i)
        val_chars += len(documents[i][2])
    train_docs = [documents[i][2] for i in range(len(documents)) if i not in val_ids]
    val_docs = [documents[i][2] for i in range(len(documents)) if i in val_ids]
    log(f"corpus: {len(documents)} pages, {total_chars} chars; "
        f"train {len(train_docs)} pages {total_chars - val_chars} chars, "
        f"val {len(val_docs)} pages {val_chars} chars")
    if args.dump_corpus:
        Path(args.dump_corpus).write_text("\n<|endoftext|>\n".join(train_docs))

    # ---- 2. tokenizer -----------------------------------------------------
    eot = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size - 1,  # the special token is appended last
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(train_docs, trainer=trainer)
    tok.add_special_tokens([eot])
    eot_id = tok.token_to_id(eot)
    assert tok.get_vocab_size() == args.vocab_size, tok.get_vocab_size()
    assert eot_id == args.vocab_size - 1, eot_id
    log(f"tokenizer: vocab {tok.get_vocab_size()}, {eot} = {eot_id}")

    def encode_docs(docs_list):
        ids = []
        for enc in tok.encode_batch(docs_list):
            ids.append(eot_id)
            ids.extend(enc.ids)
        ids.append(eot_id)
        return np.array(ids, dtype=np.int64)

    train_ids = encode_docs(train_docs)
    val_ids_arr = encode_docs(val_docs)
    log(f"tokens: train {len(train_ids)} ({(total_chars - val_chars) / len(train_ids):.2f} chars/token), "
        f"val {len(val_ids_arr)}")

    # ---- 3. model ---------------------------------------------------------
    config = GPT2Config(
        vocab_size=args.vocab_size,
        n_positions=args.n_positions,
        n_ctx=args.n_positions,  # legacy GPT-2 key, for loaders that read it
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_inner=None,  # 4 * n_embd
        activation_function="gelu_new",
        resid_pdrop=args.dropout,
        embd_pdrop=args.dropout,
        attn_pdrop=args.dropout,
        layer_norm_epsilon=1e-5,
        initializer_range=0.02,
        scale_attn_weights=True,
        tie_word_embeddings=True,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
    )
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params} parameters (tied head), config "
        f"n_embd={args.n_embd} n_layer={args.n_layer} n_head={args.n_head} "
        f"n_positions={args.n_positions}")

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "wpe" not in name else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    T, B = args.seq_len, args.batch_size
    data_rng = np.random.default_rng(args.seed)

    def get_batch():
        ix = data_rng.integers(0, len(train_ids) - T - 1, size=B)
        x = np.stack([train_ids[i:i + T + 1] for i in ix])
        return torch.from_numpy(x)

    def fixed_windows(arr, n, seed):
        r = np.random.default_rng(seed)
        # non-overlapping windows where possible
        starts = np.arange(0, len(arr) - T - 1, T)
        if len(starts) > n:
            starts = np.sort(r.choice(starts, size=n, replace=False))
        return torch.from_numpy(np.stack([arr[i:i + T + 1] for i in starts]))

    val_windows = fixed_windows(val_ids_arr, args.eval_windows, args.seed + 1)
    train_eval_windows = fixed_windows(train_ids, args.eval_windows, args.seed + 2)

    @torch.no_grad()
    def evaluate(windows):
        model.eval()
        losses = []
        for i in range(0, len(windows), B):
            w = windows[i:i + B]
            logits = model(input_ids=w[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), w[:, 1:].reshape(-1), reduction="sum")
            losses.append((loss.item(), w[:, 1:].numel()))
        model.train()
        return sum(l for l, _ in losses) / sum(n for _, n in losses)

    budget_s = args.time_budget_min * 60.0
    min_lr = args.lr * args.min_lr_frac

    def lr_at(step, elapsed):
        if step < args.warmup_steps:
            return args.lr * (step + 1) / args.warmup_steps
        progress = elapsed / budget_s
        if args.max_steps:
            progress = max(progress, step / args.max_steps)
        progress = min(1.0, progress)
        return min_lr + 0.5 * (args.lr - min_lr) * (1 + math.cos(math.pi * progress))

    # ---- 4. training ------------------------------------------------------
    log(f"train: batch {B} x {T} tokens, lr {args.lr} warmup {args.warmup_steps}, "
        f"budget {args.time_budget_min} min")
    model.train()
    t0 = time.time()
    last_eval = t0
    step = 0
    ema = None
    history = []
    while True:
        elapsed = time.time() - t0
        if elapsed >= budget_s or (args.max_steps and step >= args.max_steps):
            break
        lr = lr_at(step, elapsed)
        for g in opt.param_groups:
            g["lr"] = lr
        xb = get_batch()
        logits = model(input_ids=xb[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), xb[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        lv = loss.item()
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        if step % 10 == 0 or step == 1:
            el = time.time() - t0
            log(f"step {step:5d} loss {lv:.4f} (ema {ema:.4f}) lr {lr:.2e} "
                f"{step * B * T / el:.0f} tok/s elapsed {el / 60:.1f} min")
        if time.time() - last_eval >= args.eval_every_min * 60:
            vl = evaluate(val_windows)
            history.append((step, ema, vl))
            log(f"eval step {step}: val loss {vl:.4f} (ppl {math.exp(vl):.1f})")
            last_eval = time.time()
    train_time = time.time() - t0
    tokens_seen = step * B * T
    final_val = evaluate(val_windows)
    final_train = evaluate(train_eval_windows)
    log(f"done: {step} steps, {tokens_seen} tokens "
        f"({tokens_seen / len(train_ids):.2f} epochs) in {train_time / 60:.1f} min; "
        f"final train loss {final_train:.4f} (ema of batches {ema:.4f}), "
        f"val loss {final_val:.4f} (ppl {math.exp(final_val):.1f})")

    # ---- 5. save ----------------------------------------------------------
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    dtype = args.dtype
    if dtype == "auto":
        dtype = "float32" if n_params * 4 <= 20 * 1000 * 1000 else "float16"
    to_save = model if dtype == "float32" else model.half()
    to_save.save_pretrained(out, safe_serialization=True)
    gen_cfg = GenerationConfig(bos_token_id=eot_id, eos_token_id=eot_id,
                               pad_token_id=eot_id, do_sample=True,
                               temperature=0.8, top_k=40)
    gen_cfg.save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    model.float()
    for f in sorted(out.iterdir()):
        os.chmod(f, 0o644)  # safetensors may write 0600 files
        log(f"saved {f} ({f.stat().st_size} bytes)")

    # ---- 6. reload and sample ---------------------------------------------
    from transformers import GPT2TokenizerFast
    m2 = GPT2LMHeadModel.from_pretrained(out).float().eval()
    t2 = GPT2TokenizerFast(tokenizer_file=str(out / "tokenizer.json"),
                           bos_token=eot, eos_token=eot, unk_token=eot)
    t3 = Tokenizer.from_file(str(out / "tokenizer.json"))
    probe = "The Rust programming language"
    assert t2(probe)["input_ids"] == t3.encode(probe).ids == tok.encode(probe).ids
    model = m2  # evaluate() uses `model`: check the reloaded weights
    reload_val = evaluate(val_windows)
    log(f"reloaded ({dtype}): val loss {reload_val:.4f} (before saving: {final_val:.4f})")
    samples = []
    for prompt, kw in [
        (probe, dict(do_sample=False, repetition_penalty=1.3)),
        (probe, dict(do_sample=True, temperature=0.8, top_k=40)),
        ("Ownership is", dict(do_sample=True, temperature=0.8, top_k=40)),
        ("A trait", dict(do_sample=True, temperature=0.8, top_k=40)),
    ]:
        torch.manual_seed(args.seed)
        ids = t2(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            g = m2.generate(ids, max_new_tokens=60, pad_token_id=eot_id, **kw)
        text = t2.decode(g[0], skip_special_tokens=False)
        samples.append((prompt, kw, text))
        log(f"sample {kw}: {text!r}")
    summary = {
        "steps": step, "train_time_s": round(train_time, 1), "tokens_seen": tokens_seen,
        "train_tokens": int(len(train_ids)), "val_tokens": int(len(val_ids_arr)),
        "train_chars": total_chars - val_chars, "val_chars": val_chars,
        "pages": len(documents), "params": n_params, "dtype": dtype,
        "final_train_loss": round(final_train, 4), "final_val_loss": round(final_val, 4),
        "evals": history,
        "samples": [(p, {k: v for k, v in kw.items()}, t) for p, kw, t in samples],
    }
    log("summary: " + json.dumps(summary))


if __name__ == "__main__":
    main()

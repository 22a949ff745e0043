//! The tokenizer in a GGUF file's metadata, as a Hugging Face `tokenizer.json`.

use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::{Gguf, Value};
use crate::Result;

/// ggml's `token_type` of a control token (`<|im_start|>`): special, parsed whole in text.
const TOKEN_CONTROL: u64 = 3;
/// ggml's `token_type` of a user-defined token: parsed whole in text, not special.
const TOKEN_USER_DEFINED: u64 = 4;

/// The ids transformers also makes special tokens, whatever their `token_type`: its
/// `bos_token`, `eos_token`, `unk_token` and `pad_token`.
const NAMED_IDS: [&str; 4] = [
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
];

/// The pre-tokenizer split llama.cpp applies for `tokenizer.ggml.pre`, before the byte-level
/// mapping: `None` for GPT-2's own regex (the byte-level pre-tokenizer's).
fn pre_split(pre: &str) -> std::result::Result<Option<&'static str>, String> {
    Ok(match pre {
        // llama.cpp writes "gpt-2" (and "phi-2", "roberta-bpe") for GPT-2's own regex.
        "gpt-2" | "gpt2" | "phi-2" | "roberta-bpe" | "default" => None,
        // Digits one by one, then GPT-2's regex (llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM).
        "smollm" => Some(r"\p{N}"),
        "llama3" | "llama-bpe" => Some(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        "qwen2" => Some(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        other => {
            return Err(format!(
                "has tokenizer.ggml.pre {other:?}; wgpt builds gpt-2, smollm, llama-bpe and qwen2"
            ));
        }
    })
}

/// One `added_tokens` entry of tokenizer.json, matched whole in text before the model runs.
fn added_token(id: usize, content: &str, special: bool) -> serde_json::Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": special})
}

/// The merges transformers derives from a SentencePiece vocabulary that lists none
/// (`tokenization_utils_base.generate_merges`): every split of a token into two tokens, ranked
/// by the whole token's score, highest first, then by the halves' lengths in characters, longest
/// first; ties stay in vocabulary order. (transformers also orders each token's splits by the
/// halves' ids first, but the ranking never ties two splits of one token, so that is moot.)
fn spm_merges<'a>(tokens: &[&'a str], scores: &[f64]) -> Vec<[&'a str; 2]> {
    // A token listed twice keeps its first place and its last score, as a Python dict does.
    let score: HashMap<&str, f64> = tokens.iter().copied().zip(scores.iter().copied()).collect();
    let mut seen = HashSet::new();
    let mut merges: Vec<(f64, usize, usize, &str, &str)> = Vec::new();
    for &token in tokens {
        if !seen.insert(token) {
            continue;
        }
        for (at, _) in token.char_indices().skip(1) {
            let (l, r) = token.split_at(at);
            if score.contains_key(l) && score.contains_key(r) {
                merges.push((score[token], l.chars().count(), r.chars().count(), l, r));
            }
        }
    }
    // Stable, so equal keys keep their order, as Python's `sorted(..., reverse=True)` does.
    merges.sort_by(|a, b| {
        (b.0.total_cmp(&a.0))
            .then(b.1.cmp(&a.1))
            .then(b.2.cmp(&a.2))
    });
    merges.into_iter().map(|m| [m.3, m.4]).collect()
}

impl Gguf {
    /// The file's tokenizer (`tokenizer.ggml.*`) as the `tokenizer.json` Hugging Face's
    /// `tokenizers` reads, so that a GGUF model's text goes through the same code as a folder's:
    /// byte-level BPE (`tokenizer.ggml.model` "gpt2") or SentencePiece BPE ("llama"), as
    /// transformers builds them when it loads a GGUF file.
    pub fn tokenizer_json(&self) -> Result<String> {
        let json = match self.get("tokenizer.ggml.model").and_then(Value::as_str) {
            Some("gpt2") => self.byte_level_json()?,
            Some("llama") => self.sentencepiece_json()?,
            other => {
                return Err(self.bad(format!(
                    "has tokenizer.ggml.model {other:?}; wgpt builds byte-level BPE (\"gpt2\") and SentencePiece (\"llama\") tokenizers"
                )));
            }
        };
        Ok(json.to_string())
    }

    /// The list of strings under `key`, which a `model` tokenizer needs.
    fn strings(&self, key: &str, model: &str) -> Result<Vec<&str>> {
        match self.get(key) {
            Some(Value::Array(items)) => (items.iter())
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| self.bad(format!("{key} holds a non-string")))
                })
                .collect(),
            _ => Err(self.bad(format!(
                "has no {key} list, which its {model:?} tokenizer needs"
            ))),
        }
    }

    /// `tokenizer.ggml.token_type`, or every token normal (1) when the file has none.
    fn token_types(&self, n: usize) -> Vec<u64> {
        match self.get("tokenizer.ggml.token_type") {
            Some(Value::Array(t)) => t.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            _ => vec![1; n],
        }
    }

    /// A boolean metadata flag, if the file sets it.
    fn flag(&self, key: &str) -> Option<bool> {
        match self.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    /// Byte-level BPE (`tokenizer.ggml.model` "gpt2") with its tokens and merges, the split
    /// `tokenizer.ggml.pre` names, control tokens parsed whole from text, and a BOS when
    /// `tokenizer.ggml.add_bos_token` asks for one.
    fn byte_level_json(&self) -> Result<serde_json::Value> {
        let tokens = self.strings("tokenizer.ggml.tokens", "gpt2")?;
        let merges = self.strings("tokenizer.ggml.merges", "gpt2")?;
        let types = self.token_types(tokens.len());
        let pre = self
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("gpt2");
        let split = pre_split(pre).map_err(|m| self.bad(m))?;
        let vocab: serde_json::Map<String, serde_json::Value> = (tokens.iter().enumerate())
            .map(|(id, t)| (t.to_string(), id.into()))
            .collect();
        let added: Vec<serde_json::Value> = (tokens.iter().zip(&types).enumerate())
            .filter(|(_, (_, ty))| matches!(**ty, TOKEN_CONTROL | TOKEN_USER_DEFINED))
            .map(|(id, (t, ty))| added_token(id, t, *ty == TOKEN_CONTROL))
            .collect();
        // The byte-level step splits by GPT-2's regex itself unless a split replaced it
        // (smollm's digit split comes before GPT-2's regex, not instead of it).
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false,
            "trim_offsets": true, "use_regex": split.is_none() || pre == "smollm"});
        let pre_tokenizer = match split {
            None => byte_level,
            Some(regex) => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                byte_level,
            ]}),
        };
        let bos = self
            .get("tokenizer.ggml.bos_token_id")
            .and_then(Value::as_u64);
        let add_bos = self.flag("tokenizer.ggml.add_bos_token") == Some(true);
        let post_processor = match (add_bos, bos.and_then(|b| tokens.get(b as usize))) {
            (true, Some(b)) => json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {*b: {"id": b, "ids": [bos], "tokens": [b]}}}),
            _ => serde_json::Value::Null,
        };
        Ok(json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": pre_tokenizer, "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges},
        }))
    }

    /// `tokenizer.ggml.scores`, one finite-or-infinite number a token (NaN has no rank).
    fn scores(&self, n: usize) -> Result<Vec<f64>> {
        let key = "tokenizer.ggml.scores";
        let Some(Value::Array(items)) = self.get(key) else {
            return Err(self.bad(format!(
                "has no {key} list, which a \"llama\" tokenizer without tokenizer.ggml.merges needs to rank its merges"
            )));
        };
        if items.len() != n {
            let msg = format!("has {} {key} for {n} tokenizer.ggml.tokens", items.len());
            return Err(self.bad(msg));
        }
        (items.iter())
            .map(|v| match v.as_f64() {
                // + 0.0 makes -0.0 rank equal to 0.0, as Python compares them.
                Some(s) if !s.is_nan() => Ok(s + 0.0),
                _ => Err(self.bad(format!("{key} holds {v:?}, not a number"))),
            })
            .collect()
    }

    /// SentencePiece BPE (`tokenizer.ggml.model` "llama": Llama 1/2, Mistral v0.1, TinyLlama)
    /// as transformers' `LlamaTokenizer` builds it from a GGUF: the file's merges or ones ranked
    /// by `tokenizer.ggml.scores`, `<0xNN>` byte fallback, `▁` for spaces (one prepended unless
    /// `tokenizer.ggml.add_space_prefix` is false), control, user-defined and named special tokens
    /// parsed whole, and BOS (by default) and EOS as `add_bos_token`/`add_eos_token` ask.
    fn sentencepiece_json(&self) -> Result<serde_json::Value> {
        let arch = self.get("general.architecture").and_then(Value::as_str);
        if let Some(arch @ ("gemma" | "gemma2" | "gemma3" | "phi3")) = arch {
            // transformers builds these files' tokenizers differently from llama's.
            return Err(self.bad(format!(
                "has a {arch} SentencePiece tokenizer; wgpt builds llama's, not {arch}'s variant"
            )));
        }
        let tokens = self.strings("tokenizer.ggml.tokens", "llama")?;
        let merges: Vec<[&str; 2]> = match self.get("tokenizer.ggml.merges") {
            None => spm_merges(&tokens, &self.scores(tokens.len())?),
            Some(_) => (self.strings("tokenizer.ggml.merges", "llama")?.iter())
                .map(|m| match m.split_once(' ') {
                    Some((l, r)) => Ok([l, r]),
                    None => Err(self.bad(format!("has merge {m:?}, not two tokens"))),
                })
                .collect::<Result<_>>()?,
        };
        let id = |key: &str| {
            let id = self.get(key).and_then(Value::as_u64)?;
            (id < tokens.len() as u64).then_some(id as usize)
        };
        // BOS, EOS, unknown and padding are special whatever their token_type (unknown's is 2).
        let types = self.token_types(tokens.len());
        let named: Vec<usize> = NAMED_IDS.iter().filter_map(|k| id(k)).collect();
        let added: Vec<serde_json::Value> = (tokens.iter().enumerate())
            .filter_map(|(i, t)| match types.get(i).copied() {
                Some(TOKEN_USER_DEFINED) => Some(added_token(i, t, false)),
                Some(TOKEN_CONTROL) => Some(added_token(i, t, true)),
                _ => named.contains(&i).then(|| added_token(i, t, true)),
            })
            .collect();
        let vocab: serde_json::Map<String, serde_json::Value> = (tokens.iter().enumerate())
            .map(|(id, t)| (t.to_string(), id.into()))
            .collect();
        let prefix = self.flag("tokenizer.ggml.add_space_prefix").unwrap_or(true);
        // transformers' "first": a `▁` before the text only, not after a special token in it, and
        // none where it starts with a space (llama.cpp would prepend one there too).
        let scheme = if prefix { "first" } else { "never" };
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if prefix {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        // llama.cpp adds a BOS to a SentencePiece vocabulary that does not say otherwise.
        let bos =
            id(NAMED_IDS[0]).filter(|_| self.flag("tokenizer.ggml.add_bos_token") != Some(false));
        let eos =
            id(NAMED_IDS[1]).filter(|_| self.flag("tokenizer.ggml.add_eos_token") == Some(true));
        let unk = id(NAMED_IDS[2]).map(|i| tokens[i]);
        Ok(json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": false},
            "post_processor": template(&tokens, bos, eos),
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {"type": "BPE", "dropout": null, "unk_token": unk,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges},
        }))
    }
}

/// transformers' `update_post_processor`: `bos A eos` for one text, `bos A eos bos B eos` for a
/// pair, each of BOS and EOS only where it is added.
fn template(tokens: &[&str], bos: Option<usize>, eos: Option<usize>) -> serde_json::Value {
    let special = |id: Option<usize>, type_id: u32| {
        id.map(|i| json!({"SpecialToken": {"id": tokens[i], "type_id": type_id}}))
    };
    let seq = |name: &str, type_id: u32| json!({"Sequence": {"id": name, "type_id": type_id}});
    let single: Vec<_> = [special(bos, 0), Some(seq("A", 0)), special(eos, 0)]
        .into_iter()
        .flatten()
        .collect();
    let mut pair = single.clone();
    pair.extend(
        [special(bos, 1), Some(seq("B", 1)), special(eos, 1)]
            .into_iter()
            .flatten(),
    );
    let map: serde_json::Map<String, serde_json::Value> = [bos, eos]
        .into_iter()
        .flatten()
        .map(|i| {
            (
                tokens[i].to_string(),
                json!({"id": tokens[i], "ids": [i], "tokens": [tokens[i]]}),
            )
        })
        .collect();
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": map})
}

//! The tokenizer in a GGUF file's metadata, as a Hugging Face `tokenizer.json`.

use super::{Gguf, Value};
use crate::Result;

/// ggml's `token_type` of a control token (`<|im_start|>`): special, parsed whole in text.
const TOKEN_CONTROL: u64 = 3;
/// ggml's `token_type` of a user-defined token: parsed whole in text, not special.
const TOKEN_USER_DEFINED: u64 = 4;

/// The pre-tokenizer split llama.cpp applies for `tokenizer.ggml.pre`, before the byte-level
/// mapping: `None` for GPT-2's own regex (the byte-level pre-tokenizer's).
fn pre_split(pre: &str) -> std::result::Result<Option<&'static str>, String> {
    Ok(match pre {
        "gpt2" | "default" => None,
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
                "has tokenizer.ggml.pre {other:?}; wgpt builds gpt2, smollm, llama-bpe and qwen2"
            ));
        }
    })
}

impl Gguf {
    /// The file's tokenizer (`tokenizer.ggml.*`) as the `tokenizer.json` Hugging Face's
    /// `tokenizers` reads, so that a GGUF model's text goes through the same code as a folder's:
    /// byte-level BPE (`tokenizer.ggml.model` "gpt2") with its tokens and merges, the split
    /// `tokenizer.ggml.pre` names, control tokens parsed whole from text, and a BOS when
    /// `tokenizer.ggml.add_bos_token` asks for one.
    pub fn tokenizer_json(&self) -> Result<String> {
        let strings = |key: &str| -> Result<Vec<&str>> {
            match self.get(key) {
                Some(Value::Array(items)) => (items.iter())
                    .map(|v| {
                        v.as_str()
                            .ok_or_else(|| self.bad(format!("{key} holds a non-string")))
                    })
                    .collect(),
                _ => Err(self.bad(format!("has no {key} list"))),
            }
        };
        match self.get("tokenizer.ggml.model").and_then(Value::as_str) {
            Some("gpt2") => {}
            other => {
                return Err(self.bad(format!(
                    "has tokenizer.ggml.model {other:?}; wgpt builds byte-level BPE (\"gpt2\") tokenizers"
                )));
            }
        }
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<u64> = match self.get("tokenizer.ggml.token_type") {
            Some(Value::Array(t)) => t.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
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
            .map(|(id, (t, ty))| {
                serde_json::json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": *ty == TOKEN_CONTROL})
            })
            .collect();
        // The byte-level step splits by GPT-2's regex itself unless a split replaced it
        // (smollm's digit split comes before GPT-2's regex, not instead of it).
        let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
            "trim_offsets": true, "use_regex": split.is_none() || pre == "smollm"});
        let pre_tokenizer = match split {
            None => byte_level,
            Some(regex) => serde_json::json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                byte_level,
            ]}),
        };
        let bos = self
            .get("tokenizer.ggml.bos_token_id")
            .and_then(Value::as_u64);
        let add_bos = matches!(
            self.get("tokenizer.ggml.add_bos_token"),
            Some(Value::Bool(true))
        );
        let post_processor = match (add_bos, bos.and_then(|b| tokens.get(b as usize))) {
            (true, Some(b)) => serde_json::json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {*b: {"id": b, "ids": [bos], "tokens": [b]}}}),
            _ => serde_json::Value::Null,
        };
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": pre_tokenizer, "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges},
        });
        Ok(json.to_string())
    }
}

//! Model configuration, read from a Hugging Face `config.json`.

use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result};

/// Families wgpt can run. Listed in the error for any other `model_type`.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["gpt2"];

/// GPT-2 hyper-parameters. Letters used across the crate: C = `n_embd`, NH = `n_head`,
/// HS = C / NH, L = `n_layer`, V = `vocab_size`, n_ctx = `n_positions`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// V: vocabulary size, the rows of `wte` and the length of the logits.
    pub vocab_size: usize,
    /// n_ctx: context length, the rows of `wpe` and the positions the KV cache holds.
    pub n_positions: usize,
    /// C: embedding (residual stream) width.
    pub n_embd: usize,
    /// L: number of transformer blocks.
    pub n_layer: usize,
    /// NH: attention heads per block.
    pub n_head: usize,
    /// Width of the MLP hidden layer (4C unless config.json says otherwise).
    pub n_inner: usize,
    /// Epsilon added to the variance in every layer norm (1e-5 by default).
    pub layer_norm_epsilon: f32,
    /// Whether the output head reuses `wte` (true by default); when false the checkpoint must
    /// hold `lm_head.weight`.
    pub tie_word_embeddings: bool,
    /// End-of-sequence token id (the first one if config.json lists several), if any.
    pub eos_token_id: Option<u32>,
}

/// The fields of config.json we read; everything else is ignored, as transformers does.
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    n_positions: Option<usize>,
    n_embd: Option<usize>,
    n_layer: Option<usize>,
    n_head: Option<usize>,
    n_inner: Option<usize>,
    layer_norm_epsilon: Option<f64>,
    activation_function: Option<String>,
    tie_word_embeddings: Option<bool>,
    eos_token_id: Option<serde_json::Value>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
    reorder_and_upcast_attn: Option<bool>,
}

/// The largest head size the attention kernel holds in registers (4 dims per invocation × 64).
pub const MAX_HEAD_SIZE: usize = 256;

impl Config {
    /// GPT-2 small (124M): the shape most figures in this repo refer to.
    pub fn gpt2() -> Self {
        Config {
            vocab_size: 50257,
            n_positions: 1024,
            n_embd: 768,
            n_layer: 12,
            n_head: 12,
            n_inner: 3072,
            layer_norm_epsilon: 1e-5,
            tie_word_embeddings: true,
            eos_token_id: Some(50256),
        }
    }

    /// HS = C / NH, the width of one attention head.
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parses config.json text; `path` only names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |msg: String| Error::Config {
            path: path.to_path_buf(),
            msg,
        };
        let model_type = raw.model_type.ok_or_else(|| {
            bad("no \"model_type\" field; is this a Hugging Face config.json?".into())
        })?;
        if !SUPPORTED_MODEL_TYPES.contains(&model_type.as_str()) {
            return Err(Error::UnsupportedModel {
                path: path.to_path_buf(),
                found: model_type,
                supported: SUPPORTED_MODEL_TYPES.join(", "),
            });
        }
        let need = |v: Option<usize>, name: &str| {
            v.filter(|&n| n > 0)
                .ok_or_else(|| bad(format!("\"{name}\" is missing or zero")))
        };
        let n_embd = need(raw.n_embd, "n_embd")?;
        let n_head = need(raw.n_head, "n_head")?;
        let cfg = Config {
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            n_positions: need(raw.n_positions, "n_positions")?,
            n_embd,
            n_layer: need(raw.n_layer, "n_layer")?,
            n_head,
            n_inner: match raw.n_inner {
                Some(n) => need(Some(n), "n_inner")?,
                None => 4 * n_embd,
            },
            layer_norm_epsilon: raw.layer_norm_epsilon.unwrap_or(1e-5) as f32,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(true),
            eos_token_id: match raw.eos_token_id {
                Some(serde_json::Value::Number(n)) => {
                    n.as_u64().and_then(|n| u32::try_from(n).ok())
                }
                Some(serde_json::Value::Array(a)) => a
                    .first()
                    .and_then(|n| n.as_u64())
                    .and_then(|n| u32::try_from(n).ok()),
                _ => None,
            },
        };
        if n_embd % n_head != 0 {
            return Err(bad(format!(
                "n_embd = {n_embd} is not divisible by n_head = {n_head}"
            )));
        }
        // The linear kernels read rows as vec4. Every published GPT-2 size satisfies this.
        if !n_embd.is_multiple_of(4) || !cfg.n_inner.is_multiple_of(4) {
            return Err(bad(format!(
                "n_embd = {n_embd} and n_inner = {} must be multiples of 4 for wgpt's kernels",
                cfg.n_inner
            )));
        }
        if cfg.head_size() > MAX_HEAD_SIZE {
            return Err(bad(format!(
                "head size {} (n_embd / n_head) is above the {MAX_HEAD_SIZE} wgpt supports",
                cfg.head_size()
            )));
        }
        // Sizes beyond u32 cannot be indexed by the kernels; real GPT-2s are far below.
        let largest =
            cfg.vocab_size.max(cfg.n_positions) as u64 * cfg.n_inner.max(3 * n_embd) as u64;
        if largest > u32::MAX as u64 {
            return Err(bad("a weight matrix has more than 2^32 elements".into()));
        }
        if let Some(act) = raw.activation_function.as_deref() {
            if !matches!(act, "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast") {
                return Err(bad(format!(
                    "activation_function {act:?} is not supported for gpt2; wgpt computes gelu_new (tanh form)"
                )));
            }
        }
        if raw.scale_attn_weights == Some(false)
            || raw.scale_attn_by_inverse_layer_idx == Some(true)
            || raw.reorder_and_upcast_attn == Some(true)
        {
            return Err(bad(
                "non-default attention scaling (scale_attn_weights / scale_attn_by_inverse_layer_idx / \
                 reorder_and_upcast_attn) is not supported"
                    .into(),
            ));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Config> {
        Config::from_json(json, Path::new("config.json"))
    }

    #[test]
    fn reads_the_official_gpt2_config() {
        let cfg = parse(
            r#"{"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "bos_token_id": 50256,
            "eos_token_id": 50256, "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024,
            "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024, "vocab_size": 50257,
            "task_specific_params": {"text-generation": {"do_sample": true, "max_length": 50}}}"#,
        )
        .unwrap();
        assert_eq!(cfg, Config::gpt2());
    }

    #[test]
    fn defaults_and_variants() {
        let base = r#""model_type": "gpt2", "n_embd": 60, "n_head": 5, "n_layer": 1, "n_positions": 8, "vocab_size": 10"#;
        let cfg = parse(&format!(
            "{{{base}, \"n_inner\": null, \"eos_token_id\": [3, 4]}}"
        ))
        .unwrap();
        assert_eq!(cfg.n_inner, 240);
        assert_eq!(cfg.head_size(), 12);
        assert_eq!(cfg.eos_token_id, Some(3));
        assert!(cfg.tie_word_embeddings);
        let cfg = parse(&format!(
            "{{{base}, \"n_inner\": 100, \"tie_word_embeddings\": false}}"
        ))
        .unwrap();
        assert_eq!(cfg.n_inner, 100);
        assert!(!cfg.tie_word_embeddings);
    }

    #[test]
    fn rejects_what_the_kernels_cannot_run() {
        let err = |json: &str| parse(json).unwrap_err().to_string();
        assert!(err(r#"{"model_type": "llama"}"#).contains("supports: gpt2"));
        assert!(err(r#"{"n_embd": 4}"#).contains("model_type"));
        assert!(err(r#"{"model_type": "gpt2", "n_embd": 10, "n_head": 5, "n_layer": 1, "n_positions": 8, "vocab_size": 9}"#)
            .contains("multiples of 4"));
        assert!(err(r#"{"model_type": "gpt2", "n_embd": 12, "n_head": 5, "n_layer": 1, "n_positions": 8, "vocab_size": 9}"#)
            .contains("not divisible"));
        assert!(err(r#"{"model_type": "gpt2", "n_embd": 0, "n_head": 1, "n_layer": 1, "n_positions": 8, "vocab_size": 9}"#)
            .contains("n_embd"));
        assert!(err(r#"{"model_type": "gpt2", "n_embd": 8, "n_head": 1, "n_layer": 1, "n_positions": 8, "vocab_size": 9, "activation_function": "relu"}"#)
            .contains("relu"));
        assert!(err(r#"{"model_type": "gpt2", "n_embd": 600, "n_head": 2, "n_layer": 1, "n_positions": 8, "vocab_size": 9}"#)
            .contains("head size 300"));
        assert!(err("[1, 2").contains("malformed JSON"));
    }
}

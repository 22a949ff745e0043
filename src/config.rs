//! Model configuration, read from a Hugging Face `config.json`.

use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result};

/// Families wgpt can run. Listed in the error for any other `model_type`.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["gpt2", "opt", "xglm"];

/// The checkpoint family: decides tensor names (in the loader) and the variant choices below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// GPT-2: pre-LN, learned positions, tanh GELU, fused c_attn.
    Gpt2,
    /// OPT: ReLU feed-forward, learned positions offset by 2, pre- or post-LN.
    Opt,
    /// XGLM: sinusoidal positions, erf GELU, pre-LN, scaled token embeddings.
    Xglm,
}

/// The feed-forward non-linearity, fused into the up-projection's epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// GPT-2's `gelu_new`: the tanh approximation.
    GeluTanh,
    /// The exact GELU, x Φ(x) with erf (`gelu` in transformers).
    GeluErf,
    /// max(x, 0).
    Relu,
}

/// How positions enter the residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Positions {
    /// A learned table in the checkpoint.
    Learned,
    /// The fixed sine/cosine table (tensor2tensor layout: sines then cosines), computed on the
    /// GPU at load.
    Sinusoidal,
}

/// Decoder hyper-parameters, in GPT-2's names whatever the family. Letters used across the
/// crate: C = `n_embd`, NH = `n_head`, HS = C / NH, L = `n_layer`, V = `vocab_size`,
/// n_ctx = `n_positions`.
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
    /// End-of-sequence token ids: generation stops at any of them. From generation_config.json
    /// when the folder has one that names them (as transformers' `generate` reads it), else
    /// from config.json; either may give one id or a list.
    pub eos_token_ids: Vec<u32>,
    /// Which checkpoint family this is.
    pub family: Family,
    /// The feed-forward activation.
    pub activation: Activation,
    /// Learned or sinusoidal positions.
    pub positions: Positions,
    /// Position p reads row p + `position_offset` of the family's position table (OPT and
    /// XGLM: 2, a fairseq legacy; GPT-2: 0).
    pub position_offset: usize,
    /// Token embeddings are multiplied by this (XGLM with `scale_embedding`: sqrt(C)).
    pub embed_scale: f32,
    /// Layer norm before each sublayer (`x + f(ln(x))`), or after the residual add
    /// (`ln(x + f(x))`, OPT with `do_layer_norm_before = false`, which has no final norm).
    pub pre_ln: bool,
    /// E: the token embeddings' width. C, except in OPT models with a `word_embed_proj_dim`
    /// (opt-350m: 512 in a 1024-wide model), whose `project_in` (C, E) and `project_out` (E, C)
    /// map embeddings into and out of the residual stream.
    pub word_embed_dim: usize,
}

/// The fields of config.json we read, under each family's names; everything else is ignored,
/// as transformers does.
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    n_positions: Option<usize>,
    max_position_embeddings: Option<usize>,
    n_embd: Option<usize>,
    hidden_size: Option<usize>,
    d_model: Option<usize>,
    n_layer: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_layers: Option<usize>,
    n_head: Option<usize>,
    num_attention_heads: Option<usize>,
    attention_heads: Option<usize>,
    n_inner: Option<usize>,
    ffn_dim: Option<usize>,
    layer_norm_epsilon: Option<f64>,
    activation_function: Option<String>,
    tie_word_embeddings: Option<bool>,
    eos_token_id: Option<serde_json::Value>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
    reorder_and_upcast_attn: Option<bool>,
    do_layer_norm_before: Option<bool>,
    word_embed_proj_dim: Option<usize>,
    enable_bias: Option<bool>,
    layer_norm_elementwise_affine: Option<bool>,
    _remove_final_layer_norm: Option<bool>,
    scale_embedding: Option<bool>,
}

/// The file beside config.json with generation defaults (end-of-sequence ids).
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// Token ids given as one number or a list of them (`eos_token_id`); anything else is none.
fn token_ids(v: Option<&serde_json::Value>) -> Vec<u32> {
    let id = |v: &serde_json::Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    match v {
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(id).collect(),
        Some(v) => id(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// The largest head size the attention kernel holds in registers (4 dims per invocation × 64).
pub const MAX_HEAD_SIZE: usize = 256;

/// The largest single size (width, vocabulary, context) accepted from a config.json. Sizes are
/// multiplied together (4 C, rows x widths) before the 2^32-element check, so each factor is
/// bounded first to keep that arithmetic from overflowing; published models are below 2^20.
pub const MAX_DIM: usize = 1 << 30;

/// The most layers accepted from a config.json. Loading walks every layer before reading a byte
/// of weights, so a corrupt count must be refused up front; published decoders and encoders
/// have at most a few hundred.
pub const MAX_LAYERS: usize = 1024;

/// `v` if present, non-zero and at most [`MAX_DIM`] (or [`MAX_LAYERS`] for a layer count).
pub(crate) fn size_field(v: Option<usize>, name: &str) -> std::result::Result<usize, String> {
    let max = if name.contains("layers") || name == "n_layer" {
        MAX_LAYERS
    } else {
        MAX_DIM
    };
    match v {
        None | Some(0) => Err(format!("\"{name}\" is missing or zero")),
        Some(n) if n > max => Err(format!(
            "\"{name}\" = {n} is beyond any real checkpoint (wgpt accepts up to {max}); is config.json corrupt?"
        )),
        Some(n) => Ok(n),
    }
}

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
            eos_token_ids: vec![50256],
            family: Family::Gpt2,
            activation: Activation::GeluTanh,
            positions: Positions::Learned,
            position_offset: 0,
            embed_scale: 1.0,
            pre_ln: true,
            word_embed_dim: 768,
        }
    }

    /// Whether token embeddings are projected into and out of the residual stream (E != C).
    pub fn projects_embeddings(&self) -> bool {
        self.word_embed_dim != self.n_embd
    }

    /// HS = C / NH, the width of one attention head.
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// One line naming the family and its variant choices (for logs and `wgpt info --model`).
    pub fn describe(&self) -> String {
        format!(
            "{:?}: {} layers, C = {}, E = {}, NH = {}, n_inner = {}, V = {}, n_ctx = {}; {:?} \
             feed-forward, {:?} positions (offset {}), {}, embedding scale {}",
            self.family,
            self.n_layer,
            self.n_embd,
            self.word_embed_dim,
            self.n_head,
            self.n_inner,
            self.vocab_size,
            self.n_positions,
            self.activation,
            self.positions,
            self.position_offset,
            if self.pre_ln { "pre-LN" } else { "post-LN" },
            self.embed_scale
        )
    }

    /// Reads and checks `config.json`, and takes the end-of-sequence ids of a
    /// `generation_config.json` beside it, if there is one that names them.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut cfg = Self::from_json(&text, path)?;
        let generation = path.with_file_name(GENERATION_CONFIG_FILE);
        if generation.is_file() {
            cfg.apply_generation_config(&generation)?;
        }
        Ok(cfg)
    }

    /// Reads a `generation_config.json`: its `eos_token_id` (one id or a list) replaces
    /// config.json's, as transformers' `generate` does.
    pub fn apply_generation_config(&mut self, path: &Path) -> Result<()> {
        #[derive(Deserialize)]
        struct Generation {
            eos_token_id: Option<serde_json::Value>,
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let g: Generation = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let ids = token_ids(g.eos_token_id.as_ref());
        if !ids.is_empty() {
            self.eos_token_ids = ids;
        }
        Ok(())
    }

    /// Parses config.json text; `path` only names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let f = Fields { raw: &raw, path };
        let model_type = raw.model_type.clone().ok_or_else(|| {
            f.bad("no \"model_type\" field; is this a Hugging Face config.json?".into())
        })?;
        let cfg = match model_type.as_str() {
            "gpt2" => Self::gpt2_fields(&f)?,
            "opt" => Self::opt_fields(&f)?,
            "xglm" => Self::xglm_fields(&f)?,
            _ => {
                return Err(Error::UnsupportedModel {
                    path: path.to_path_buf(),
                    found: model_type,
                    supported: SUPPORTED_MODEL_TYPES.join(", "),
                });
            }
        };
        cfg.check_shapes(&f)?;
        Ok(cfg)
    }

    /// GPT-2's config.json names.
    fn gpt2_fields(f: &Fields) -> Result<Config> {
        let n_embd = f.need(f.raw.n_embd, "n_embd")?;
        if f.raw.scale_attn_weights == Some(false)
            || f.raw.scale_attn_by_inverse_layer_idx == Some(true)
            || f.raw.reorder_and_upcast_attn == Some(true)
        {
            return Err(f.bad(
                "non-default attention scaling (scale_attn_weights / scale_attn_by_inverse_layer_idx / \
                 reorder_and_upcast_attn) is not supported"
                    .into(),
            ));
        }
        Ok(Config {
            vocab_size: f.need(f.raw.vocab_size, "vocab_size")?,
            n_positions: f.need(f.raw.n_positions, "n_positions")?,
            n_embd,
            n_layer: f.need(f.raw.n_layer, "n_layer")?,
            n_head: f.need(f.raw.n_head, "n_head")?,
            n_inner: match f.raw.n_inner {
                Some(n) => f.need(Some(n), "n_inner")?,
                None => 4 * n_embd,
            },
            layer_norm_epsilon: f.raw.layer_norm_epsilon.unwrap_or(1e-5) as f32,
            tie_word_embeddings: f.raw.tie_word_embeddings.unwrap_or(true),
            eos_token_ids: token_ids(f.raw.eos_token_id.as_ref()),
            family: Family::Gpt2,
            activation: match f.activation("gelu_new")? {
                Activation::GeluTanh => Activation::GeluTanh,
                _ => {
                    return Err(f.bad(format!(
                        "activation_function {:?} is not supported for gpt2; wgpt computes gelu_new (tanh form)",
                        f.raw.activation_function.as_deref().unwrap_or_default()
                    )));
                }
            },
            positions: Positions::Learned,
            position_offset: 0,
            embed_scale: 1.0,
            pre_ln: true,
            word_embed_dim: n_embd,
        })
    }

    /// OPT's config.json names.
    fn opt_fields(f: &Fields) -> Result<Config> {
        let n_embd = f.need(f.raw.hidden_size, "hidden_size")?;
        if f.raw.enable_bias == Some(false)
            || f.raw.layer_norm_elementwise_affine == Some(false)
            || f.raw._remove_final_layer_norm == Some(true)
        {
            return Err(f.bad(
                "OPT without biases, without layer-norm affine parameters or with \
                 _remove_final_layer_norm is not supported"
                    .into(),
            ));
        }
        Ok(Config {
            vocab_size: f.need(f.raw.vocab_size, "vocab_size")?,
            n_positions: f.need(f.raw.max_position_embeddings, "max_position_embeddings")?,
            n_embd,
            n_layer: f.need(f.raw.num_hidden_layers, "num_hidden_layers")?,
            n_head: f.need(f.raw.num_attention_heads, "num_attention_heads")?,
            n_inner: f.need(f.raw.ffn_dim, "ffn_dim")?,
            // OPT's layer norms are nn.LayerNorm with the default epsilon.
            layer_norm_epsilon: 1e-5,
            tie_word_embeddings: f.raw.tie_word_embeddings.unwrap_or(true),
            eos_token_ids: token_ids(f.raw.eos_token_id.as_ref()),
            family: Family::Opt,
            activation: f.activation("relu")?,
            positions: Positions::Learned,
            position_offset: 2,
            embed_scale: 1.0,
            pre_ln: f.raw.do_layer_norm_before.unwrap_or(true),
            word_embed_dim: match f.raw.word_embed_proj_dim {
                Some(e) => f.need(Some(e), "word_embed_proj_dim")?,
                None => n_embd,
            },
        })
    }

    /// XGLM's config.json names.
    fn xglm_fields(f: &Fields) -> Result<Config> {
        let n_embd = f.need(f.raw.d_model, "d_model")?;
        Ok(Config {
            vocab_size: f.need(f.raw.vocab_size, "vocab_size")?,
            n_positions: f.need(f.raw.max_position_embeddings, "max_position_embeddings")?,
            n_embd,
            n_layer: f.need(f.raw.num_layers, "num_layers")?,
            n_head: f.need(f.raw.attention_heads, "attention_heads")?,
            n_inner: f.need(f.raw.ffn_dim, "ffn_dim")?,
            // XGLM's layer norms are nn.LayerNorm with the default epsilon.
            layer_norm_epsilon: 1e-5,
            tie_word_embeddings: f.raw.tie_word_embeddings.unwrap_or(true),
            eos_token_ids: token_ids(f.raw.eos_token_id.as_ref()),
            family: Family::Xglm,
            activation: f.activation("gelu")?,
            positions: Positions::Sinusoidal,
            position_offset: 2,
            embed_scale: if f.raw.scale_embedding.unwrap_or(true) {
                (n_embd as f32).sqrt()
            } else {
                1.0
            },
            pre_ln: true,
            word_embed_dim: n_embd,
        })
    }

    /// What the kernels need of any family's shapes.
    fn check_shapes(&self, f: &Fields) -> Result<()> {
        let cfg = self;
        let (n_embd, n_head) = (cfg.n_embd, cfg.n_head);
        if n_embd % n_head != 0 {
            return Err(f.bad(format!(
                "n_embd = {n_embd} is not divisible by n_head = {n_head}"
            )));
        }
        // The linear kernels read rows as vec4. Every published size of these families does.
        if !n_embd.is_multiple_of(4)
            || !cfg.n_inner.is_multiple_of(4)
            || !cfg.word_embed_dim.is_multiple_of(4)
        {
            return Err(f.bad(format!(
                "n_embd = {n_embd}, n_inner = {} and word_embed_proj_dim = {} must be multiples of \
                 4 for wgpt's kernels",
                cfg.n_inner, cfg.word_embed_dim
            )));
        }
        if cfg.head_size() > MAX_HEAD_SIZE {
            return Err(f.bad(format!(
                "head size {} (n_embd / n_head) is above the {MAX_HEAD_SIZE} wgpt supports",
                cfg.head_size()
            )));
        }
        // Sizes beyond u32 cannot be indexed by the kernels; real checkpoints are far below.
        let largest = cfg.vocab_size.max(cfg.n_positions + cfg.position_offset) as u64
            * cfg.n_inner.max(3 * n_embd) as u64;
        if largest > u32::MAX as u64 {
            return Err(f.bad("a weight matrix has more than 2^32 elements".into()));
        }
        Ok(())
    }
}

/// config.json's fields, and errors that name the file.
struct Fields<'a> {
    raw: &'a RawConfig,
    path: &'a Path,
}

impl Fields<'_> {
    fn bad(&self, msg: String) -> Error {
        Error::Config {
            path: self.path.to_path_buf(),
            msg,
        }
    }

    fn need(&self, v: Option<usize>, name: &str) -> Result<usize> {
        size_field(v, name).map_err(|m| self.bad(m))
    }

    fn activation(&self, default: &str) -> Result<Activation> {
        match self.raw.activation_function.as_deref().unwrap_or(default) {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "gelu" => Ok(Activation::GeluErf),
            "relu" => Ok(Activation::Relu),
            other => Err(self.bad(format!(
                "activation_function {other:?} is not supported; wgpt computes gelu_new, gelu and relu"
            ))),
        }
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
        assert_eq!(cfg.eos_token_ids, [3, 4]);
        assert!(cfg.tie_word_embeddings);
        let cfg = parse(&format!(
            "{{{base}, \"n_inner\": 100, \"tie_word_embeddings\": false}}"
        ))
        .unwrap();
        assert_eq!(cfg.n_inner, 100);
        assert!(!cfg.tie_word_embeddings);
    }

    #[test]
    fn reads_opt_and_xglm_configs() {
        let opt = parse(
            r#"{"model_type": "opt", "hidden_size": 768, "num_hidden_layers": 12, "ffn_dim": 3072,
            "num_attention_heads": 12, "max_position_embeddings": 2048, "do_layer_norm_before": true,
            "word_embed_proj_dim": 768, "activation_function": "relu", "vocab_size": 50272,
            "eos_token_id": 2, "enable_bias": true, "layer_norm_elementwise_affine": true}"#,
        )
        .unwrap();
        assert_eq!(
            (opt.family, opt.activation),
            (Family::Opt, Activation::Relu)
        );
        assert_eq!(
            (opt.n_inner, opt.n_positions, opt.position_offset),
            (3072, 2048, 2)
        );
        assert!(opt.pre_ln && opt.embed_scale == 1.0);
        let post = parse(
            r#"{"model_type": "opt", "hidden_size": 64, "num_hidden_layers": 1, "ffn_dim": 128,
            "num_attention_heads": 4, "max_position_embeddings": 32, "do_layer_norm_before": false,
            "vocab_size": 50}"#,
        )
        .unwrap();
        assert!(!post.pre_ln && !post.projects_embeddings());
        let proj = parse(
            r#"{"model_type": "opt", "hidden_size": 64, "num_hidden_layers": 1, "ffn_dim": 128,
            "num_attention_heads": 4, "max_position_embeddings": 32, "vocab_size": 50,
            "word_embed_proj_dim": 32}"#,
        )
        .unwrap();
        assert_eq!(
            (proj.word_embed_dim, proj.projects_embeddings()),
            (32, true)
        );
        let xglm = parse(
            r#"{"model_type": "xglm", "d_model": 1024, "num_layers": 24, "ffn_dim": 4096,
            "attention_heads": 16, "max_position_embeddings": 2048, "activation_function": "gelu",
            "scale_embedding": true, "vocab_size": 256008}"#,
        )
        .unwrap();
        assert_eq!(
            (xglm.family, xglm.activation),
            (Family::Xglm, Activation::GeluErf)
        );
        assert_eq!(
            (xglm.positions, xglm.position_offset),
            (Positions::Sinusoidal, 2)
        );
        assert_eq!(xglm.embed_scale, 32.0);
    }

    #[test]
    fn rejects_what_the_kernels_cannot_run() {
        let err = |json: &str| parse(json).unwrap_err().to_string();
        assert!(err(r#"{"model_type": "llama"}"#).contains("gpt2, opt, xglm"));
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
        // Activations none of the kernels compute.
        assert!(err(r#"{"model_type": "xglm", "d_model": 64, "num_layers": 1, "ffn_dim": 128, "attention_heads": 4, "max_position_embeddings": 32, "vocab_size": 50, "activation_function": "silu"}"#)
            .contains("silu"));
    }
}

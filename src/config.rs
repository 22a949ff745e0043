//! Model configuration, read from a Hugging Face `config.json`.

use std::path::Path;

use serde::Deserialize;

pub use crate::graph::NormKind;

use crate::{Error, Result};

/// Families wgpt can run. Listed in the error for any other `model_type`.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &[
    "gpt2", "opt", "xglm", "llama", "mistral", "qwen2", "phi3", "t5",
];

/// The checkpoint family: decides tensor names (in the loader) and the variant choices below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// GPT-2: pre-LN, learned positions, tanh GELU, fused c_attn.
    Gpt2,
    /// OPT: ReLU feed-forward, learned positions offset by 2, pre- or post-LN.
    Opt,
    /// XGLM: sinusoidal positions, erf GELU, pre-LN, scaled token embeddings.
    Xglm,
    /// Llama and its kin (Mistral, Qwen2, SmolLM2, TinyLlama): RMSNorm, rotary positions,
    /// gated SiLU feed-forward, grouped-query attention; `model_type` names the variant.
    Llama(LlamaKind),
    /// T5 and flan-T5 encoder-decoders ([`crate::t5`]): the decoder described here reads an
    /// encoder's output through cross-attention; RMS norms, relative position bias, unscaled
    /// attention.
    T5,
}

/// Which Llama-family checkpoint: they differ only in naming and biases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlamaKind {
    /// `llama`: optional `attention_bias` / `mlp_bias`.
    Llama,
    /// `mistral`: no biases.
    Mistral,
    /// `qwen2`: biases on q, k and v only.
    Qwen2,
    /// `phi3`: q, k, v fused in `qkv_proj`, gate and up fused in `gate_up_proj`.
    Phi3,
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
    /// x sigmoid(x) (SiLU), gating the Llama family's feed-forward.
    Silu,
}

/// How positions enter the residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Positions {
    /// A learned table in the checkpoint.
    Learned,
    /// The fixed sine/cosine table (tensor2tensor layout: sines then cosines), computed on the
    /// GPU at load.
    Sinusoidal,
    /// Rotary embeddings on each head's queries and keys ([`Rope`]); no table in the stream.
    Rotary,
    /// T5's learned bias on each attention score by bucketed query-key distance; no table in
    /// the stream.
    Relative,
}

/// Rotary position embeddings: head dims i and i + HS/2 rotated by position × `inv_freq[i]`
/// (transformers' `rotate_half` layout).
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// `rope_theta`: the base of the frequencies.
    pub theta: f64,
    /// How the frequencies are stretched for long contexts.
    pub scaling: RopeScaling,
}

/// `rope_scaling` / `rope_parameters`' `rope_type`.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// `default`: none.
    None,
    /// `linear`: every frequency divided by `factor`.
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// `llama3`: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        /// The divisor of low frequencies.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are divided.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// `original_max_position_embeddings`.
        original: f64,
    },
    /// A divisor per frequency (HS / 2): a GGUF file's `rope_freqs` tensor, which is how
    /// llama.cpp writes Llama 3.1's and 3.2's llama3 scaling.
    Factors(Vec<f32>),
}

impl Rope {
    /// The (HS / 2) inverse frequencies as transformers computes them
    /// (`_compute_default_rope_parameters` and its linear and llama3 variants).
    pub fn inv_freq(&self, hs: usize) -> Vec<f32> {
        (0..hs / 2)
            .map(|i| {
                // f32 exponent, as torch's arange(0, dim, 2).float() / dim.
                let e = (2 * i) as f32 / hs as f32;
                let f = 1.0 / self.theta.powf(e as f64);
                let f = match &self.scaling {
                    RopeScaling::None => f,
                    RopeScaling::Linear { factor } => f / factor,
                    RopeScaling::Factors(div) => f / div[i] as f64,
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor: lo,
                        high_freq_factor: hi,
                        original,
                    } => {
                        let (factor, lo, hi, original) = (*factor, *lo, *hi, *original);
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < original / hi {
                            f
                        } else if wavelen > original / lo {
                            f / factor
                        } else {
                            let smooth = (original / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    }
                };
                f as f32
            })
            .collect()
    }
}

/// Which optional tensors a decoder's checkpoint has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Biases {
    /// On the q, k, v projection.
    pub qkv: bool,
    /// On the attention's output projection.
    pub out: bool,
    /// On the feed-forward's projections.
    pub mlp: bool,
    /// On the norms (layer norms have one; RMS norms none).
    pub norm: bool,
}

impl Biases {
    /// Every bias (GPT-2, OPT, XGLM).
    pub const ALL: Biases = Biases {
        qkv: true,
        out: true,
        mlp: true,
        norm: true,
    };
}

/// Decoder hyper-parameters, in GPT-2's names whatever the family. Letters used across the
/// crate: C = `n_embd`, NH = `n_head`, NKV = `n_kv_head`, HS = `head_dim` (C / NH unless
/// config.json says otherwise), L = `n_layer`, V = `vocab_size`, n_ctx = `n_positions`.
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
    /// NKV: key and value heads (NH, or fewer for grouped-query attention: query head h reads
    /// key head h / (NH / NKV)).
    pub n_kv_head: usize,
    /// HS: the width of one attention head.
    pub head_dim: usize,
    /// Width of the MLP hidden layer (4C unless config.json says otherwise).
    pub n_inner: usize,
    /// The feed-forward is `down(act(x Wg) * (x Wu))` (Llama's SwiGLU) rather than
    /// `down(act(x W))`.
    pub gated: bool,
    /// Layer norms, or RMS norms (no mean, no bias).
    pub norm: NormKind,
    /// Epsilon added to the variance in every norm (1e-5 by default).
    pub layer_norm_epsilon: f32,
    /// The rotary embedding of [`Positions::Rotary`] models.
    pub rope: Option<Rope>,
    /// Which optional biases the checkpoint has.
    pub biases: Biases,
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
    /// An encoder-decoder's own hyper-parameters (its encoder, position bias, start token);
    /// `None` for decoder-only models.
    pub t5: Option<Box<crate::t5::T5Config>>,
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
    intermediate_size: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    partial_rotary_factor: Option<f64>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
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
            n_layer: 12,
            eos_token_ids: vec![50256],
            ..Self::plain(768, 12)
        }
    }

    /// The fields every family before Llama shares: NKV = NH, HS = C / NH, layer norms with
    /// biases everywhere, a plain feed-forward, no rotary embedding.
    fn plain(n_embd: usize, n_head: usize) -> Config {
        Config {
            vocab_size: 0,
            n_positions: 0,
            n_embd,
            n_layer: 0,
            n_head,
            n_kv_head: n_head,
            head_dim: n_embd / n_head.max(1),
            n_inner: 4 * n_embd,
            gated: false,
            norm: NormKind::Layer,
            layer_norm_epsilon: 1e-5,
            rope: None,
            biases: Biases::ALL,
            tie_word_embeddings: true,
            eos_token_ids: Vec::new(),
            family: Family::Gpt2,
            activation: Activation::GeluTanh,
            positions: Positions::Learned,
            position_offset: 0,
            embed_scale: 1.0,
            pre_ln: true,
            word_embed_dim: n_embd,
            t5: None,
        }
    }

    /// The width of the queries, NH × HS (C unless config.json sets `head_dim`).
    pub fn q_width(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// The width of the keys (and of the values), NKV × HS: one KV-cache row.
    pub fn kv_width(&self) -> usize {
        self.n_kv_head * self.head_dim
    }

    /// The width of the fused q, k, v projection's output, (NH + 2 NKV) × HS.
    pub fn qkv_width(&self) -> usize {
        self.q_width() + 2 * self.kv_width()
    }

    /// Rows of the feed-forward's first projection: n_inner, twice that when gated.
    pub fn fc_rows(&self) -> usize {
        self.n_inner * (1 + self.gated as usize)
    }

    /// Whether token embeddings are projected into and out of the residual stream (E != C).
    pub fn projects_embeddings(&self) -> bool {
        self.word_embed_dim != self.n_embd
    }

    /// HS, the width of one attention head.
    pub fn head_size(&self) -> usize {
        self.head_dim
    }

    /// The family's name as config.json's `model_type` spells it.
    pub fn model_type(&self) -> &'static str {
        match self.family {
            Family::Gpt2 => "gpt2",
            Family::Opt => "opt",
            Family::Xglm => "xglm",
            Family::Llama(LlamaKind::Llama) => "llama",
            Family::Llama(LlamaKind::Mistral) => "mistral",
            Family::Llama(LlamaKind::Qwen2) => "qwen2",
            Family::Llama(LlamaKind::Phi3) => "phi3",
            Family::T5 => "t5",
        }
    }

    /// What the family chose, as (aspect, choice) lines for `wgpt info --model`: sizes, norm,
    /// positions, feed-forward, attention heads, biases, embeddings.
    pub fn choices(&self) -> Vec<(&'static str, String)> {
        let (nh, nkv) = (self.n_head, self.n_kv_head);
        let norm = match self.norm {
            NormKind::Layer => "LayerNorm",
            NormKind::Rms => "RMSNorm",
        };
        let placement = if self.pre_ln {
            "before each sublayer"
        } else {
            "after each residual add"
        };
        let act = match self.activation {
            Activation::GeluTanh => "GELU (tanh)",
            Activation::GeluErf => "GELU (erf)",
            Activation::Relu => "ReLU",
            Activation::Silu => "SiLU",
        };
        let ffn = match self.gated {
            true => format!("gated: down({act}(x Wg) * (x Wu))"),
            false => format!("down({act}(x Wup))"),
        };
        let heads = match (nh / nkv, nkv) {
            (1, _) => format!("multi-head, {nh} heads of {}", self.head_dim),
            (_, 1) => format!(
                "multi-query: {nh} query heads of {} share one key/value head",
                self.head_dim
            ),
            (g, _) => format!(
                "grouped-query: {nh} query heads of {} in {nkv} groups of {g}",
                self.head_dim
            ),
        };
        let b = self.biases;
        let biases: Vec<&str> = [
            (b.qkv, "q/k/v"),
            (b.out, "attention out"),
            (b.mlp, "feed-forward"),
            (b.norm, "norms"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        let mut embeddings = match self.tie_word_embeddings {
            true => "head tied to the token embeddings".to_string(),
            false => "untied head (lm_head)".to_string(),
        };
        if self.embed_scale != 1.0 {
            embeddings += &format!(", tokens scaled by {}", self.embed_scale);
        }
        if self.projects_embeddings() {
            embeddings += &format!(
                ", {}-wide embeddings projected in and out",
                self.word_embed_dim
            );
        }
        vec![
            ("family", self.model_type().to_string()),
            (
                "size",
                format!(
                    "{} layers, C = {}, n_inner = {}, V = {}, context {}",
                    self.n_layer, self.n_embd, self.n_inner, self.vocab_size, self.n_positions
                ),
            ),
            (
                "norm",
                format!("{norm} {placement} (eps {})", self.layer_norm_epsilon),
            ),
            ("positions", self.positions_choice()),
            ("feed-forward", ffn),
            ("attention", heads),
            (
                "biases",
                if biases.is_empty() {
                    "none".into()
                } else {
                    biases.join(", ")
                },
            ),
            ("embeddings", embeddings),
        ]
    }

    fn positions_choice(&self) -> String {
        if let Some(t5) = &self.t5 {
            return format!(
                "relative position bias: {} buckets, distances up to {} (encoder {} layers, decoder {})",
                t5.relative_attention_num_buckets,
                t5.relative_attention_max_distance,
                t5.num_layers,
                t5.num_decoder_layers
            );
        }
        let Some(rope) = &self.rope else {
            let offset = match self.position_offset {
                0 => String::new(),
                n => format!(" (offset {n})"),
            };
            return format!("{:?} table{offset}", self.positions).to_lowercase();
        };
        let scaling = match &rope.scaling {
            RopeScaling::None => String::new(),
            RopeScaling::Factors(_) => ", per-frequency factors (rope_freqs)".into(),
            RopeScaling::Linear { factor } => format!(", linear scaling x{factor}"),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original,
            } => format!(
                ", llama3 scaling x{factor} (low {low_freq_factor}, high {high_freq_factor}, original context {original})"
            ),
        };
        format!("rotary (theta {}{scaling})", rope.theta)
    }

    /// One line naming the family and its variant choices (for logs).
    pub fn describe(&self) -> String {
        let c = self.choices();
        let rest: Vec<String> = c[1..].iter().map(|(k, v)| format!("{k}: {v}")).collect();
        format!("{}: {}", c[0].1, rest.join("; "))
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
        let g: Generation = crate::error::parse_json(&text, path)?;
        let ids = token_ids(g.eos_token_id.as_ref());
        if !ids.is_empty() {
            self.eos_token_ids = ids;
        }
        Ok(())
    }

    /// Parses config.json text; `path` only names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = crate::error::parse_json(text, path)?;
        let f = Fields { raw: &raw, path };
        let model_type = raw.model_type.clone().ok_or_else(|| {
            f.bad("no \"model_type\" field; is this a Hugging Face config.json?".into())
        })?;
        let cfg = match model_type.as_str() {
            "gpt2" => Self::gpt2_fields(&f)?,
            "opt" => Self::opt_fields(&f)?,
            "xglm" => Self::xglm_fields(&f)?,
            "llama" => Self::llama_fields(&f, LlamaKind::Llama)?,
            "mistral" => Self::llama_fields(&f, LlamaKind::Mistral)?,
            "qwen2" => Self::llama_fields(&f, LlamaKind::Qwen2)?,
            "phi3" => Self::llama_fields(&f, LlamaKind::Phi3)?,
            "t5" => crate::t5::T5Config::from_json(text, path)?.decoder_config(),
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
        let n_head = f.need(f.raw.n_head, "n_head")?;
        Ok(Config {
            vocab_size: f.need(f.raw.vocab_size, "vocab_size")?,
            n_positions: f.need(f.raw.n_positions, "n_positions")?,
            n_embd,
            n_layer: f.need(f.raw.n_layer, "n_layer")?,
            n_head,
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
            ..Self::plain(n_embd, n_head)
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
        let n_head = f.need(f.raw.num_attention_heads, "num_attention_heads")?;
        Ok(Config {
            vocab_size: f.need(f.raw.vocab_size, "vocab_size")?,
            n_positions: f.need(f.raw.max_position_embeddings, "max_position_embeddings")?,
            n_embd,
            n_layer: f.need(f.raw.num_hidden_layers, "num_hidden_layers")?,
            n_head,
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
            ..Self::plain(n_embd, n_head)
        })
    }

    /// XGLM's config.json names.
    fn xglm_fields(f: &Fields) -> Result<Config> {
        let n_embd = f.need(f.raw.d_model, "d_model")?;
        let n_head = f.need(f.raw.attention_heads, "attention_heads")?;
        Ok(Config {
            vocab_size: f.need(f.raw.vocab_size, "vocab_size")?,
            n_positions: f.need(f.raw.max_position_embeddings, "max_position_embeddings")?,
            n_embd,
            n_layer: f.need(f.raw.num_layers, "num_layers")?,
            n_head,
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
            ..Self::plain(n_embd, n_head)
        })
    }

    /// The Llama family's config.json names (Llama, Mistral, Qwen2, Phi-3).
    fn llama_fields(f: &Fields, kind: LlamaKind) -> Result<Config> {
        let r = f.raw;
        let n_embd = f.need(r.hidden_size, "hidden_size")?;
        let n_head = f.need(r.num_attention_heads, "num_attention_heads")?;
        let n_kv_head = match r.num_key_value_heads {
            Some(n) => f.need(Some(n), "num_key_value_heads")?,
            None => n_head,
        };
        let head_dim = match r.head_dim {
            Some(n) => f.need(Some(n), "head_dim")?,
            None => n_embd / n_head,
        };
        if r.partial_rotary_factor.is_some_and(|p| p != 1.0) {
            return Err(f.bad("partial_rotary_factor other than 1.0 is not supported".into()));
        }
        let mut n_positions = f.need(r.max_position_embeddings, "max_position_embeddings")?;
        // Mistral's sliding window: within it, attention is plain causal attention, so the
        // context is capped there and every result stays exact.
        let windowed = match kind {
            LlamaKind::Mistral => true,
            LlamaKind::Qwen2 => r.use_sliding_window == Some(true),
            _ => false,
        };
        if let (true, Some(w)) = (windowed, r.sliding_window.filter(|&w| w > 0)) {
            n_positions = n_positions.min(w);
        }
        let (attn_bias, mlp_bias) = (r.attention_bias == Some(true), r.mlp_bias == Some(true));
        let biases = match kind {
            LlamaKind::Qwen2 => Biases {
                qkv: true,
                out: false,
                mlp: false,
                norm: false,
            },
            _ => Biases {
                qkv: attn_bias,
                out: attn_bias,
                mlp: mlp_bias,
                norm: false,
            },
        };
        let activation = match r.hidden_act.as_deref().unwrap_or("silu") {
            "silu" | "swish" => Activation::Silu,
            other => {
                return Err(f.bad(format!(
                    "hidden_act {other:?} is not supported; wgpt computes silu for this family"
                )));
            }
        };
        Ok(Config {
            vocab_size: f.need(r.vocab_size, "vocab_size")?,
            n_positions,
            n_layer: f.need(r.num_hidden_layers, "num_hidden_layers")?,
            n_kv_head,
            head_dim,
            n_inner: f.need(r.intermediate_size, "intermediate_size")?,
            gated: true,
            norm: NormKind::Rms,
            layer_norm_epsilon: r.rms_norm_eps.unwrap_or(1e-6) as f32,
            rope: Some(f.rope()?),
            biases,
            tie_word_embeddings: r.tie_word_embeddings.unwrap_or(kind != LlamaKind::Phi3),
            eos_token_ids: token_ids(r.eos_token_id.as_ref()),
            family: Family::Llama(kind),
            activation,
            positions: Positions::Rotary,
            ..Self::plain(n_embd, n_head)
        })
    }

    /// What the kernels need of any family's shapes.
    fn check_shapes(&self, f: &Fields) -> Result<()> {
        let cfg = self;
        let (n_embd, n_head) = (cfg.n_embd, cfg.n_head);
        // Rotary models and T5 may have NH HS != C; the others split C among the heads.
        let split = cfg.rope.is_none() && cfg.positions != Positions::Relative;
        if (split && cfg.q_width() != n_embd) || cfg.head_dim == 0 {
            return Err(f.bad(format!(
                "n_embd = {n_embd} is not divisible by n_head = {n_head}"
            )));
        }
        if !cfg.n_head.is_multiple_of(cfg.n_kv_head) {
            return Err(f.bad(format!(
                "num_attention_heads = {n_head} is not a multiple of num_key_value_heads = {}",
                cfg.n_kv_head
            )));
        }
        if cfg.rope.is_some() && !cfg.head_dim.is_multiple_of(2) {
            return Err(f.bad(format!(
                "head size {} is odd; rotary embeddings rotate pairs of dims",
                cfg.head_dim
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
            * cfg.fc_rows().max(cfg.qkv_width()) as u64;
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

    /// The rotary embedding: transformers 4's `rope_theta` and `rope_scaling`, or
    /// transformers 5's `rope_parameters` (which holds the theta too).
    fn rope(&self) -> Result<Rope> {
        let params = self.raw.rope_parameters.as_ref().filter(|v| v.is_object());
        let scaling = params.or(self.raw.rope_scaling.as_ref().filter(|v| v.is_object()));
        let num = |key: &str| scaling.and_then(|s| s.get(key)).and_then(|v| v.as_f64());
        let theta = num("rope_theta")
            .filter(|_| params.is_some())
            .or(self.raw.rope_theta)
            .unwrap_or(10000.0);
        let kind = scaling
            .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let need = |key: &str| {
            num(key).ok_or_else(|| self.bad(format!("rope scaling {kind:?} has no {key:?}")))
        };
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: need("factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: need("factor")?,
                low_freq_factor: need("low_freq_factor")?,
                high_freq_factor: need("high_freq_factor")?,
                original: need("original_max_position_embeddings")?,
            },
            other => {
                return Err(self.bad(format!(
                    "rope scaling {other:?} is not supported; wgpt computes default, linear and \
                     llama3"
                )));
            }
        };
        // Also refuses NaN.
        if theta.is_nan() || theta <= 0.0 {
            return Err(self.bad(format!("rope_theta = {theta} must be positive")));
        }
        Ok(Rope { theta, scaling })
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

    const SMOLLM2: &str = r#"{"architectures": ["LlamaForCausalLM"], "attention_bias": false,
        "bos_token_id": 1, "eos_token_id": 2, "head_dim": 64, "hidden_act": "silu",
        "hidden_size": 576, "intermediate_size": 1536, "max_position_embeddings": 8192,
        "mlp_bias": false, "model_type": "llama", "num_attention_heads": 9,
        "num_hidden_layers": 30, "num_key_value_heads": 3, "rms_norm_eps": 1e-05,
        "rope_scaling": null, "rope_theta": 100000, "tie_word_embeddings": true,
        "vocab_size": 49152"#;

    #[test]
    fn reads_llama_family_configs() {
        let cfg = parse(&format!("{SMOLLM2}}}")).unwrap();
        assert_eq!(cfg.family, Family::Llama(LlamaKind::Llama));
        assert_eq!((cfg.n_head, cfg.n_kv_head, cfg.head_dim), (9, 3, 64));
        assert_eq!(
            (cfg.q_width(), cfg.kv_width(), cfg.qkv_width()),
            (576, 192, 960)
        );
        assert_eq!((cfg.n_inner, cfg.fc_rows()), (1536, 3072));
        assert!(cfg.gated && cfg.tie_word_embeddings && cfg.norm == NormKind::Rms);
        assert_eq!(
            cfg.biases,
            Biases {
                qkv: false,
                out: false,
                mlp: false,
                norm: false
            }
        );
        let rope = cfg.rope.clone().unwrap();
        assert_eq!((rope.theta, rope.scaling), (100000.0, RopeScaling::None));
        assert_eq!(cfg.activation, Activation::Silu);
        assert_eq!(cfg.layer_norm_epsilon, 1e-5);

        // Llama 3.2's scaling, in transformers 4's spelling and in transformers 5's.
        let v4 = r#""rope_theta": 500000.0, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0,
            "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}"#;
        let v5 = r#""rope_parameters": {"rope_theta": 500000.0, "factor": 32.0, "high_freq_factor": 4.0,
            "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}"#;
        let base = SMOLLM2.replace(r#""rope_scaling": null, "rope_theta": 100000,"#, "");
        let want = Rope {
            theta: 500000.0,
            scaling: RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original: 8192.0,
            },
        };
        for spelling in [v4, v5] {
            assert_eq!(
                parse(&format!("{base}, {spelling}}}")).unwrap().rope,
                Some(want.clone())
            );
        }
        let linear = r#""rope_scaling": {"type": "linear", "factor": 2.0}"#;
        let cfg = parse(&format!("{base}, {linear}}}")).unwrap();
        assert_eq!(
            cfg.rope.unwrap().scaling,
            RopeScaling::Linear { factor: 2.0 }
        );

        // Qwen2: biases on q, k, v only; Mistral: the context capped at the sliding window.
        let qwen = SMOLLM2.replace(r#""model_type": "llama""#, r#""model_type": "qwen2""#);
        let cfg = parse(&format!("{qwen}}}")).unwrap();
        assert_eq!(cfg.family, Family::Llama(LlamaKind::Qwen2));
        assert!(cfg.biases.qkv && !cfg.biases.out && !cfg.biases.mlp);
        let mistral = SMOLLM2.replace(r#""model_type": "llama""#, r#""model_type": "mistral""#);
        let cfg = parse(&format!(r#"{mistral}, "sliding_window": 4096}}"#)).unwrap();
        assert_eq!(cfg.n_positions, 4096);
        let phi3 = SMOLLM2.replace(r#""model_type": "llama""#, r#""model_type": "phi3""#);
        assert_eq!(
            parse(&format!("{phi3}}}")).unwrap().family,
            Family::Llama(LlamaKind::Phi3)
        );
    }

    #[test]
    fn llama3_frequencies_match_transformers() {
        // transformers' _compute_llama3_parameters for Llama 3.2 (theta 5e5, factor 32, 1, 4,
        // 8192) at HS = 64: the first (kept), a smoothed middle one, the last (divided).
        let rope = Rope {
            theta: 500000.0,
            scaling: RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original: 8192.0,
            },
        };
        let f = rope.inv_freq(64);
        assert_eq!(f.len(), 32);
        assert_eq!(f[0], 1.0);
        let plain = Rope {
            theta: 500000.0,
            scaling: RopeScaling::None,
        }
        .inv_freq(64);
        assert!((f[31] / plain[31] - 1.0 / 32.0).abs() < 1e-6);
        assert!(
            f[20] < plain[20] && f[20] > plain[20] / 32.0
                || f[20] == plain[20]
                || f[20] == plain[20] / 32.0
        );
    }

    #[test]
    fn rejects_llama_variants_it_cannot_run() {
        let err = |json: &str| parse(json).unwrap_err().to_string();
        let base = SMOLLM2.replace(r#""rope_scaling": null, "#, "");
        assert!(
            err(&format!(
                r#"{base}, "rope_scaling": {{"rope_type": "yarn", "factor": 4.0}}}}"#
            ))
            .contains("yarn")
        );
        assert!(
            err(&format!(
                r#"{base}, "rope_scaling": {{"rope_type": "llama3", "factor": 4.0}}}}"#
            ))
            .contains("low_freq_factor")
        );
        let nine = SMOLLM2.replace(r#""num_key_value_heads": 3"#, r#""num_key_value_heads": 4"#);
        assert!(err(&format!("{nine}}}")).contains("num_key_value_heads = 4"));
        let gelu = SMOLLM2.replace(r#""hidden_act": "silu""#, r#""hidden_act": "gelu""#);
        assert!(err(&format!("{gelu}}}")).contains("hidden_act"));
    }

    #[test]
    fn rejects_what_the_kernels_cannot_run() {
        let err = |json: &str| parse(json).unwrap_err().to_string();
        assert!(err(r#"{"model_type": "mamba"}"#).contains("gpt2, opt, xglm, llama"));
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

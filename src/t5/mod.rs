//! T5 encoder-decoders (T5 v1.0, T5 v1.1 / flan-T5): their configuration, the bucketed
//! relative position bias, and (feature `internals`) a CPU twin of the forward pass that the
//! GPU path is checked against. Letters: C = `d_model`, NH = `num_heads`, HS = `d_kv` (NH HS may differ
//! from C), F = `d_ff`, L = `num_layers` (encoder), LD = `num_decoder_layers`, V = `vocab_size`.

#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod reference;

use std::path::Path;

use serde::Deserialize;

use crate::config::{Activation, Biases, Config, Family, Positions};
use crate::graph::NormKind;
use crate::{Error, Result};

/// The feed-forward block's form (`feed_forward_proj`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedForward {
    /// T5 v1.0: `wo(relu(wi x))`.
    Relu,
    /// T5 v1.1 / flan-T5: `wo(gelu_new(wi_0 x) * wi_1 x)`.
    GatedGelu,
}

/// T5 hyper-parameters, from `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct T5Config {
    /// V.
    pub vocab_size: usize,
    /// C: the residual stream's width.
    pub d_model: usize,
    /// HS: each head's width.
    pub d_kv: usize,
    /// NH.
    pub num_heads: usize,
    /// F: the feed-forward's hidden width.
    pub d_ff: usize,
    /// L: encoder blocks.
    pub num_layers: usize,
    /// LD: decoder blocks.
    pub num_decoder_layers: usize,
    /// Buckets of the relative position bias.
    pub relative_attention_num_buckets: usize,
    /// Distances beyond this share the last bucket.
    pub relative_attention_max_distance: usize,
    /// Epsilon of the RMS-style layer norms.
    pub layer_norm_epsilon: f32,
    /// The feed-forward block's form (`feed_forward_proj`).
    pub feed_forward: FeedForward,
    /// The head shares the embedding.
    pub tie_word_embeddings: bool,
    /// The head reads its input scaled by C^-0.5: T5's tied head (`scale_decoder_outputs`,
    /// as transformers 5 writes it, else `tie_word_embeddings`).
    pub scale_decoder_outputs: bool,
    /// The decoder's first input token.
    pub decoder_start_token_id: u32,
    /// Ends the output.
    pub eos_token_id: u32,
    /// The longest source and output wgpt plans for (`n_positions`, else 512 as T5's
    /// tokenizers cap inputs): T5's positions are relative, so this sizes buffers only.
    pub n_positions: usize,
}

#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    d_model: Option<usize>,
    d_kv: Option<usize>,
    num_heads: Option<usize>,
    d_ff: Option<usize>,
    num_layers: Option<usize>,
    num_decoder_layers: Option<usize>,
    relative_attention_num_buckets: Option<usize>,
    relative_attention_max_distance: Option<usize>,
    layer_norm_epsilon: Option<f64>,
    feed_forward_proj: Option<String>,
    tie_word_embeddings: Option<bool>,
    scale_decoder_outputs: Option<bool>,
    decoder_start_token_id: Option<u32>,
    pad_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    n_positions: Option<usize>,
}

impl T5Config {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parses config.json text; `path` only names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = crate::error::parse_json(text, path)?;
        let bad = |msg: String| Error::Config {
            path: path.to_path_buf(),
            msg,
        };
        match raw.model_type.as_deref() {
            Some("t5") => {}
            other => {
                return Err(Error::UnsupportedModel {
                    path: path.to_path_buf(),
                    found: other.unwrap_or("(none)").to_string(),
                    supported: "t5 for sequence-to-sequence models".into(),
                });
            }
        }
        let need = |v: Option<usize>, name: &str| crate::config::size_field(v, name).map_err(&bad);
        let num_layers = need(raw.num_layers, "num_layers")?;
        let feed_forward = match raw.feed_forward_proj.as_deref().unwrap_or("relu") {
            "relu" => FeedForward::Relu,
            "gated-gelu" => FeedForward::GatedGelu,
            other => {
                return Err(bad(format!(
                    "feed_forward_proj {other:?} is not supported; wgpt runs \"relu\" (T5 v1.0) and \"gated-gelu\" (T5 v1.1, flan-T5)"
                )));
            }
        };
        let (buckets, max_distance) = (
            raw.relative_attention_num_buckets.unwrap_or(32),
            raw.relative_attention_max_distance.unwrap_or(128),
        );
        // Each direction of the encoder's bidirectional table needs a bucket of its own.
        if buckets < 2 {
            return Err(bad(format!(
                "relative_attention_num_buckets = {buckets}: at least 2 (one per direction)"
            )));
        }
        if max_distance <= buckets / 2 {
            return Err(bad(format!(
                "relative_attention_max_distance = {max_distance} must exceed half of relative_attention_num_buckets = {buckets} (the exact distances)"
            )));
        }
        let pad = raw.pad_token_id.unwrap_or(0);
        let tie = raw.tie_word_embeddings.unwrap_or(true);
        Ok(T5Config {
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            d_model: need(raw.d_model, "d_model")?,
            d_kv: need(raw.d_kv, "d_kv")?,
            num_heads: need(raw.num_heads, "num_heads")?,
            d_ff: need(raw.d_ff, "d_ff")?,
            num_layers,
            num_decoder_layers: need(
                Some(raw.num_decoder_layers.unwrap_or(num_layers)),
                "num_decoder_layers",
            )?,
            relative_attention_num_buckets: need(Some(buckets), "relative_attention_num_buckets")?,
            relative_attention_max_distance: need(
                Some(max_distance),
                "relative_attention_max_distance",
            )?,
            layer_norm_epsilon: raw.layer_norm_epsilon.unwrap_or(1e-6) as f32,
            feed_forward,
            tie_word_embeddings: tie,
            scale_decoder_outputs: raw.scale_decoder_outputs.unwrap_or(tie),
            decoder_start_token_id: raw.decoder_start_token_id.unwrap_or(pad),
            eos_token_id: raw.eos_token_id.unwrap_or(1),
            n_positions: need(Some(raw.n_positions.unwrap_or(512)), "n_positions")?,
        })
    }

    /// NH HS: the width of the attention's queries, keys and values.
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// The decoder stack as the planner's decoder configuration: RMS norms before each
    /// sublayer, no biases, relative positions, the feed-forward's form; the whole T5 config
    /// rides along for the encoder and the position bias.
    pub fn decoder_config(&self) -> Config {
        let (activation, gated) = match self.feed_forward {
            FeedForward::Relu => (Activation::Relu, false),
            // transformers' gelu_new: the tanh approximation.
            FeedForward::GatedGelu => (Activation::GeluTanh, true),
        };
        Config {
            vocab_size: self.vocab_size,
            n_positions: self.n_positions,
            n_embd: self.d_model,
            n_layer: self.num_decoder_layers,
            n_head: self.num_heads,
            n_kv_head: self.num_heads,
            head_dim: self.d_kv,
            n_inner: self.d_ff,
            gated,
            norm: NormKind::Rms,
            layer_norm_epsilon: self.layer_norm_epsilon,
            rope: None,
            biases: Biases {
                qkv: false,
                out: false,
                mlp: false,
                norm: false,
            },
            tie_word_embeddings: self.tie_word_embeddings,
            eos_token_ids: vec![self.eos_token_id],
            family: Family::T5,
            activation,
            positions: Positions::Relative,
            position_offset: 0,
            embed_scale: 1.0,
            pre_ln: true,
            word_embed_dim: self.d_model,
            t5: Some(Box::new(self.clone())),
        }
    }
}

/// The bucket of a key `relative_position` = key position - query position away, as
/// transformers' `T5Attention._relative_position_bucket`: half the buckets (all of them when
/// not `bidirectional`, where later keys count as distance 0) hold exact distances, the rest
/// logarithmically wider ranges up to `max_distance`. The logarithm is taken in f32, as there,
/// so the boundaries fall where they fall there.
pub fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let (mut buckets, mut base) = (num_buckets as i64, 0i64);
    let n = if bidirectional {
        buckets /= 2;
        if relative_position > 0 {
            base = buckets;
        }
        relative_position.abs()
    } else {
        (-relative_position).max(0)
    };
    let max_exact = buckets / 2;
    if n < max_exact {
        return (base + n) as usize;
    }
    let scaled = (n as f32 / max_exact as f32).ln()
        / ((max_distance as f64 / max_exact as f64).ln() as f32)
        * (buckets - max_exact) as f32;
    // Clamped (scaled >= 0 whenever max_distance > max_exact, which T5Config checks): a
    // degenerate table still gives a bucket in range, never an index past it.
    let large = max_exact
        .saturating_add(scaled as i64)
        .clamp(max_exact, (buckets - 1).max(max_exact));
    (base + large) as usize
}

/// The position bias of one attention, (NH, Tq, Tk) row-major: head h's learned scalar for the
/// bucket of each query-key distance. `table` is `relative_attention_bias.weight`, (buckets, NH).
/// Queries sit at positions `q0 .. q0 + tq`, keys at `0 .. tk`.
pub fn position_bias(
    table: &[f32],
    nh: usize,
    (q0, tq, tk): (usize, usize, usize),
    bidirectional: bool,
    max_distance: usize,
) -> Vec<f32> {
    let buckets = table.len() / nh;
    let mut out = vec![0.0; nh * tq * tk];
    for i in 0..tq {
        for j in 0..tk {
            let rel = j as i64 - (q0 + i) as i64;
            let b = relative_position_bucket(rel, bidirectional, buckets, max_distance);
            for h in 0..nh {
                out[(h * tq + i) * tk + j] = table[b * nh + h];
            }
        }
    }
    out
}

/// Floats attention.wgsl's `PositionBias` uniform holds after its 4-word header (64 KiB in all).
pub const BIAS_UNIFORM_FLOATS: usize = 4095 * 4;

/// attention.wgsl's `PositionBias` uniform for one stack's bias table (`relative_attention_bias`,
/// (buckets, NH)): a header (R, NH, where the table starts), the bucket of every key-query
/// distance clamped to [-R, R] (R = max_distance + 1: farther keys share the last bucket), then
/// the table. As 32-bit words, ready to upload. `max_distance` at most 128.
pub fn attention_bias(
    table: &[f32],
    nh: usize,
    bidirectional: bool,
    max_distance: usize,
) -> Result<Vec<u32>> {
    let r = max_distance + 1;
    let distances = 2 * r + 1;
    let w0 = distances.next_multiple_of(4);
    // The kernels keep each head's bias by distance in workgroup memory, 259 floats a head.
    if max_distance > 128 || w0 + table.len() > BIAS_UNIFORM_FLOATS || nh == 0 {
        return Err(Error::Limits(format!(
            "a relative position bias over distances up to {max_distance} with {} entries: the \
             attention kernels hold distances up to 128 (every T5 checkpoint's) and 64 KiB of table",
            table.len()
        )));
    }
    let buckets = table.len() / nh;
    let mut words = vec![0u32; 4 + BIAS_UNIFORM_FLOATS];
    words[..3].copy_from_slice(&[r as u32, nh as u32, w0 as u32]);
    for (i, d) in (-(r as i64)..=r as i64).enumerate() {
        let b = relative_position_bucket(d, bidirectional, buckets, max_distance);
        words[4 + i] = (b as f32).to_bits();
    }
    for (i, &v) in table.iter().enumerate() {
        words[4 + w0 + i] = v.to_bits();
    }
    Ok(words)
}

impl T5Config {
    /// wgpt's tensor `name` (`rel_bias.weight`, the decoder's causal table, or
    /// `enc.rel_bias.weight`, the encoder's bidirectional one), (buckets, NH) from `read`, as
    /// the attention kernels' position bias uniform ([`attention_bias`]).
    pub(crate) fn bias_tensor(
        &self,
        gpu: &crate::gpu::Engine,
        name: &str,
        rows: usize,
        read: &mut crate::loader::ReadRows,
    ) -> Result<crate::gpu::tensor::GpuTensor> {
        use crate::gpu::tensor::{Chunk, GpuTensor, WeightDtype};
        let mut table = Vec::new();
        read(0, rows, &mut table)?;
        let bidirectional = name.starts_with("enc.");
        let words = attention_bias(
            &table,
            self.num_heads,
            bidirectional,
            self.relative_attention_max_distance,
        )?;
        let buffer = gpu.uniform_zeroed(name, (words.len() * 4) as u64);
        gpu.queue
            .write_buffer(&buffer, 0, bytemuck::cast_slice(&words));
        let chunk = Chunk {
            buffer,
            row0: 0,
            rows: 1,
            dtype: WeightDtype::F32,
        };
        Ok(GpuTensor {
            chunks: vec![chunk],
            ..GpuTensor::from_textures(rows, self.num_heads, WeightDtype::F32, Vec::new())
        })
    }
}

//! The CPU twin of a T5 forward pass (f64 sums, as [`crate::reference`]): the encoder over a
//! source, the decoder's logits for teacher-forced ids, and greedy generation. Written as the
//! model reads, for checking the GPU path and transformers against each other.
//!
//! ```text
//! encoder block:  x = x + o(attn(norm(x), bias_enc));       x = x + ff(norm(x))
//! decoder block:  y = y + o(causal_attn(norm(y), bias_dec)); y = y + o(attn_to(enc)(norm(y)))
//!                 y = y + ff(norm(y))
//! ```
//! Attention scores are not scaled by HS^-0.5 (T5 folds that into its weights' initialisation);
//! the bias tables live in the first block of each stack and serve all of its blocks.

use super::{FeedForward, T5Config, position_bias};
use crate::loader::Checkpoint;
use crate::reference::{gelu, matmul, relu, rms_norm};
use crate::{Error, Result};

/// One attention's projections, each (out, in) as nn.Linear stores them.
pub struct Attention {
    pub q: Vec<f32>, // (NH HS, C)
    pub k: Vec<f32>, // (NH HS, C)
    pub v: Vec<f32>, // (NH HS, C)
    pub o: Vec<f32>, // (C, NH HS)
}

/// The feed-forward's matrices.
pub enum Ff {
    Relu {
        wi: Vec<f32>,
        wo: Vec<f32>,
    }, // (F, C), (C, F)
    Gated {
        wi_0: Vec<f32>,
        wi_1: Vec<f32>,
        wo: Vec<f32>,
    },
}

/// One block: self-attention, (decoder) cross-attention, feed-forward, each after its norm.
pub struct Block {
    pub self_norm: Vec<f32>, // (C)
    pub self_attn: Attention,
    pub cross: Option<(Vec<f32>, Attention)>,
    pub ff_norm: Vec<f32>, // (C)
    pub ff: Ff,
}

/// A T5 checkpoint's weights as f32.
pub struct T5Weights {
    pub shared: Vec<f32>, // (V, C) token embedding, both stacks
    pub encoder: Vec<Block>,
    pub encoder_bias: Vec<f32>, // (buckets, NH)
    pub encoder_norm: Vec<f32>,
    pub decoder: Vec<Block>,
    pub decoder_bias: Vec<f32>, // (buckets, NH)
    pub decoder_norm: Vec<f32>,
    /// The untied head, (V, C); `None` when it is `shared`.
    pub lm_head: Option<Vec<f32>>,
}

impl T5Weights {
    /// Reads every tensor transformers' T5ForConditionalGeneration saves, checking shapes.
    pub fn load(ckpt: &Checkpoint, cfg: &T5Config) -> Result<Self> {
        let (c, v, inner) = (cfg.d_model, cfg.vocab_size, cfg.inner_dim());
        let read = |name: &str, rows: usize, cols: usize| -> Result<Vec<f32>> {
            ckpt.check(name, &[rows, cols])?;
            let mut out = Vec::new();
            ckpt.read_rows(name, false, cols, 0, rows, &mut out)?;
            Ok(out)
        };
        let vector = |name: &str| -> Result<Vec<f32>> {
            ckpt.check(name, &[c])?;
            let mut out = Vec::new();
            ckpt.read_rows(name, false, c, 0, 1, &mut out)?;
            Ok(out)
        };
        let attention = |p: &str| -> Result<Attention> {
            Ok(Attention {
                q: read(&format!("{p}.q.weight"), inner, c)?,
                k: read(&format!("{p}.k.weight"), inner, c)?,
                v: read(&format!("{p}.v.weight"), inner, c)?,
                o: read(&format!("{p}.o.weight"), c, inner)?,
            })
        };
        let ff = |p: &str| -> Result<Ff> {
            let f = cfg.d_ff;
            Ok(match cfg.feed_forward {
                FeedForward::Relu => Ff::Relu {
                    wi: read(&format!("{p}.wi.weight"), f, c)?,
                    wo: read(&format!("{p}.wo.weight"), c, f)?,
                },
                FeedForward::GatedGelu => Ff::Gated {
                    wi_0: read(&format!("{p}.wi_0.weight"), f, c)?,
                    wi_1: read(&format!("{p}.wi_1.weight"), f, c)?,
                    wo: read(&format!("{p}.wo.weight"), c, f)?,
                },
            })
        };
        let block = |stack: &str, i: usize| -> Result<Block> {
            let p = format!("{stack}.block.{i}.layer");
            let decoder = stack == "decoder";
            let ff_layer = if decoder { 2 } else { 1 };
            let cross = match decoder {
                true => Some((
                    vector(&format!("{p}.1.layer_norm.weight"))?,
                    attention(&format!("{p}.1.EncDecAttention"))?,
                )),
                false => None,
            };
            Ok(Block {
                self_norm: vector(&format!("{p}.0.layer_norm.weight"))?,
                self_attn: attention(&format!("{p}.0.SelfAttention"))?,
                cross,
                ff_norm: vector(&format!("{p}.{ff_layer}.layer_norm.weight"))?,
                ff: ff(&format!("{p}.{ff_layer}.DenseReluDense"))?,
            })
        };
        let bias = |stack: &str| {
            let name =
                format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
            read(&name, cfg.relative_attention_num_buckets, cfg.num_heads)
        };
        let lm_head = match ckpt.contains("lm_head.weight") && !cfg.tie_word_embeddings {
            true => Some(read("lm_head.weight", v, c)?),
            false if !cfg.tie_word_embeddings => {
                return Err(Error::tensor(
                    "lm_head.weight",
                    "is missing, and config.json says tie_word_embeddings = false",
                ));
            }
            false => None,
        };
        Ok(T5Weights {
            shared: read("shared.weight", v, c)?,
            encoder: (0..cfg.num_layers)
                .map(|i| block("encoder", i))
                .collect::<Result<_>>()?,
            encoder_bias: bias("encoder")?,
            encoder_norm: vector("encoder.final_layer_norm.weight")?,
            decoder: (0..cfg.num_decoder_layers)
                .map(|i| block("decoder", i))
                .collect::<Result<_>>()?,
            decoder_bias: bias("decoder")?,
            decoder_norm: vector("decoder.final_layer_norm.weight")?,
            lm_head,
        })
    }
}

/// Rows of the embedding for `ids`, (T, C).
fn embed(shared: &[f32], c: usize, ids: &[u32]) -> Vec<f32> {
    ids.iter()
        .flat_map(|&t| shared[t as usize * c..(t as usize + 1) * c].iter().copied())
        .collect()
}

/// Multi-head attention of queries q (Tq, NH HS) over keys and values (Tk, NH HS), unscaled,
/// plus `bias` (NH, Tq, Tk); `causal`: query i sees keys 0..=i.
pub fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (nh, hs): (usize, usize),
    bias: Option<&[f32]>,
    causal: bool,
) -> Vec<f32> {
    let w = nh * hs;
    let (tq, tk) = (q.len() / w, k.len() / w);
    let mut out = vec![0.0; tq * w];
    for h in 0..nh {
        for i in 0..tq {
            let keys = if causal { i + 1 } else { tk };
            let qi = &q[i * w + h * hs..i * w + (h + 1) * hs];
            let scores: Vec<f64> = (0..keys)
                .map(|j| {
                    let kj = &k[j * w + h * hs..j * w + (h + 1) * hs];
                    let dot: f64 = qi.iter().zip(kj).map(|(&a, &b)| a as f64 * b as f64).sum();
                    dot + bias.map_or(0.0, |b| b[(h * tq + i) * tk + j] as f64)
                })
                .collect();
            let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hs {
                let y: f64 = (0..keys).map(|j| e[j] * v[j * w + h * hs + d] as f64).sum();
                out[i * w + h * hs + d] = (y / z) as f32;
            }
        }
    }
    out
}

/// `x + o(attend(q(n), k(kv), v(kv)))` where n = x normalised (self-attention: kv = n).
fn attention_block(
    cfg: &T5Config,
    x: &mut [f32],
    norm: &[f32],
    a: &Attention,
    kv: Option<&[f32]>,
    bias: Option<&[f32]>,
    causal: bool,
) {
    let (c, inner) = (cfg.d_model, cfg.inner_dim());
    let n = rms_norm(x, norm, c, cfg.layer_norm_epsilon);
    let src = kv.unwrap_or(&n);
    let (q, k, v) = (
        matmul(&n, &a.q, None, c, inner),
        matmul(src, &a.k, None, c, inner),
        matmul(src, &a.v, None, c, inner),
    );
    let y = attend(&q, &k, &v, (cfg.num_heads, cfg.d_kv), bias, causal);
    let o = matmul(&y, &a.o, None, inner, c);
    x.iter_mut().zip(o).for_each(|(x, o)| *x += o);
}

/// `x + ff(norm(x))`.
fn ff_block(cfg: &T5Config, x: &mut [f32], norm: &[f32], ff: &Ff) {
    let (c, f) = (cfg.d_model, cfg.d_ff);
    let n = rms_norm(x, norm, c, cfg.layer_norm_epsilon);
    let y = match ff {
        Ff::Relu { wi, wo } => {
            let mut h = matmul(&n, wi, None, c, f);
            relu(&mut h);
            matmul(&h, wo, None, f, c)
        }
        Ff::Gated { wi_0, wi_1, wo } => {
            let mut g = matmul(&n, wi_0, None, c, f);
            gelu(&mut g);
            let u = matmul(&n, wi_1, None, c, f);
            let h: Vec<f32> = g.iter().zip(&u).map(|(a, b)| a * b).collect();
            matmul(&h, wo, None, f, c)
        }
    };
    x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
}

/// The encoder's output for source `ids` (after its final norm), (T, C).
pub fn encode(cfg: &T5Config, w: &T5Weights, ids: &[u32]) -> Vec<f32> {
    let (c, t) = (cfg.d_model, ids.len());
    let mut x = embed(&w.shared, c, ids);
    let dist = cfg.relative_attention_max_distance;
    let bias = position_bias(&w.encoder_bias, cfg.num_heads, (0, t, t), true, dist);
    for b in &w.encoder {
        attention_block(
            cfg,
            &mut x,
            &b.self_norm,
            &b.self_attn,
            None,
            Some(&bias),
            false,
        );
        ff_block(cfg, &mut x, &b.ff_norm, &b.ff);
    }
    rms_norm(&x, &w.encoder_norm, c, cfg.layer_norm_epsilon)
}

/// The decoder's logits (T, V) for teacher-forced `dec_ids` (starting with the start token)
/// over the encoder output `enc` (Ts, C).
pub fn decode_logits(cfg: &T5Config, w: &T5Weights, enc: &[f32], dec_ids: &[u32]) -> Vec<f32> {
    let (c, t) = (cfg.d_model, dec_ids.len());
    let mut y = embed(&w.shared, c, dec_ids);
    let dist = cfg.relative_attention_max_distance;
    let bias = position_bias(&w.decoder_bias, cfg.num_heads, (0, t, t), false, dist);
    for b in &w.decoder {
        attention_block(
            cfg,
            &mut y,
            &b.self_norm,
            &b.self_attn,
            None,
            Some(&bias),
            true,
        );
        let (norm, cross) = b
            .cross
            .as_ref()
            .expect("decoder blocks attend to the encoder");
        attention_block(cfg, &mut y, norm, cross, Some(enc), None, false);
        ff_block(cfg, &mut y, &b.ff_norm, &b.ff);
    }
    let mut h = rms_norm(&y, &w.decoder_norm, c, cfg.layer_norm_epsilon);
    if cfg.scale_decoder_outputs {
        // T5's tied head reads its input scaled by C^-0.5 (Mesh TensorFlow's convention).
        let s = (c as f32).powf(-0.5);
        h.iter_mut().for_each(|v| *v *= s);
    }
    let head = w.lm_head.as_ref().unwrap_or(&w.shared);
    matmul(&h, head, None, c, cfg.vocab_size)
}

/// Greedy generation: up to `max_new` ids after the start token, ending at (and keeping) EOS.
pub fn generate_greedy(cfg: &T5Config, w: &T5Weights, src: &[u32], max_new: usize) -> Vec<u32> {
    let enc = encode(cfg, w, src);
    let mut ids = vec![cfg.decoder_start_token_id];
    let v = cfg.vocab_size;
    for _ in 0..max_new {
        let logits = decode_logits(cfg, w, &enc, &ids);
        let next = crate::reference::argmax(&logits[logits.len() - v..]);
        ids.push(next);
        if next == cfg.eos_token_id {
            break;
        }
    }
    ids.split_off(1)
}

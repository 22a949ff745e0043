//! Model families, each described once in model terms ([`crate::graph`]): what an embedding, a
//! block and a head compute, from the family's weights. Nothing here knows the adapter, the
//! operand layout or the weight format; the planner ([`crate::plan`]) decides those.
//!
//! Decoders (GPT-2, OPT, XGLM, the Llama family) share [`crate::loader::Weights`], the kernels' layout of a
//! decoder's tensors; each family says where its checkpoint keeps them ([`checkpoint_parts`]).
//! BERT encoders have their own weight set ([`crate::encoder::EncoderWeights`]).

pub mod bert;
pub mod gpt2;
pub mod llama;
pub mod opt;
pub mod t5;
pub mod xglm;

use crate::config::{Config, Family};
use crate::graph::{Act, Builder, Dims, Graph, Then};
use crate::loader::LayerWeights;
use crate::loader::{Part, Weights};

/// The forward pass of a decoder of `cfg`'s family over weights `w`.
pub fn decoder<'w, T>(cfg: &Config, w: &'w Weights<T>) -> Graph<&'w T> {
    match cfg.family {
        Family::Gpt2 => gpt2::graph(cfg, w),
        Family::Opt => opt::graph(cfg, w),
        Family::Xglm => xglm::graph(cfg, w),
        Family::Llama(_) => llama::graph(cfg, w),
        Family::T5 => t5::graph(cfg, w),
    }
}

/// Where wgpt's decoder tensor `name` ((rows, cols) in the kernels' layout, named as
/// [`crate::loader::build_weights`] names it) comes from in a checkpoint of `cfg`'s family:
/// parts concatenated along rows; empty for a table computed rather than stored.
pub fn checkpoint_parts(
    cfg: &Config,
    name: &str,
    rows: usize,
    cols: usize,
    conv1d: bool,
) -> Vec<Part> {
    match cfg.family {
        Family::Gpt2 => gpt2::parts(name, rows, cols, conv1d),
        Family::Opt => opt::parts(cfg, name, rows, cols),
        Family::Xglm => xglm::parts(cfg, name, rows, cols),
        Family::Llama(_) => llama::parts(cfg, name, rows, cols),
        Family::T5 => t5::parts(cfg, name, rows, cols),
    }
}

/// What tensor `name` is multiplied by as it loads (1 but for a family's folded constant).
pub fn checkpoint_scale(cfg: &Config, name: &str) -> f32 {
    match cfg.family {
        Family::T5 => t5::scale(cfg, name),
        _ => 1.0,
    }
}

/// A decoder's widths.
fn decoder_dims(cfg: &Config) -> Dims {
    Dims {
        n_kv_head: cfg.n_kv_head,
        head_size: cfg.head_dim,
        ..Dims::plain(
            cfg.n_embd,
            cfg.n_inner,
            cfg.word_embed_dim,
            cfg.vocab_size,
            cfg.n_head,
        )
    }
}

/// The output head: `lm_head`, or the token table when tied.
fn head<T>(w: &Weights<T>) -> &T {
    w.lm_head.as_ref().unwrap_or(&w.wte)
}

/// A decoder block's attention: `resid += c_proj(attention(c_attn(inp)))`, causal over layer
/// `l`'s KV cache.
fn attn<'w, T>(g: &mut Builder<&'w T>, l: usize, w: &'w LayerWeights<T>, inp: Act, resid: Act) {
    g.linear(inp, Act::Qkv, &w.c_attn_w, w.c_attn_b.as_ref(), Then::Store);
    g.causal_attention(Act::Qkv, Act::AttY, l);
    g.linear(
        Act::AttY,
        resid,
        &w.attn_proj_w,
        w.attn_proj_b.as_ref(),
        Then::Add,
    );
}

/// A decoder block's feed-forward: `resid += mlp_proj(act(c_fc(inp)))`.
fn mlp<'w, T>(g: &mut Builder<&'w T>, cfg: &Config, w: &'w LayerWeights<T>, inp: Act, resid: Act) {
    g.linear(
        inp,
        Act::FcH,
        &w.c_fc_w,
        w.c_fc_b.as_ref(),
        Then::Act(cfg.activation),
    );
    g.linear(
        Act::FcH,
        resid,
        &w.mlp_proj_w,
        w.mlp_proj_b.as_ref(),
        Then::Add,
    );
}

/// Gate row j, then up row j, for every j < n_inner: single rows of the stored tensors
/// `(key, first row)` of `stored` rows (elements, for biases).
pub(crate) fn interleave(
    parts: [(String, usize); 2],
    stored: usize,
    rows: usize,
    cols: usize,
) -> Vec<Part> {
    let (shape, pairs) = match rows {
        1 => (vec![stored], cols / 2),
        _ => (vec![stored, cols], rows / 2),
    };
    (0..pairs)
        .flat_map(|j| {
            parts.clone().map(|(key, at)| Part {
                rows: 1,
                skip: at + j,
                ..Part::whole(key, shape.clone(), false)
            })
        })
        .collect()
}

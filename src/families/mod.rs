//! Model families, each described once in model terms ([`crate::graph`]): what an embedding, a
//! block and a head compute, from the family's weights. Nothing here knows the adapter, the
//! operand layout or the weight format; the planner ([`crate::plan`]) decides those.
//!
//! Decoders (GPT-2, OPT, XGLM) share [`crate::loader::Weights`], the kernels' layout of a
//! decoder's tensors; each family says where its checkpoint keeps them ([`checkpoint_parts`]).
//! BERT encoders have their own weight set ([`crate::encoder::EncoderWeights`]).

pub mod bert;
pub mod gpt2;
pub mod opt;
pub mod xglm;

use crate::config::{Config, Family};
use crate::graph::{Dims, Graph};
use crate::loader::{Part, Weights};

/// The forward pass of a decoder of `cfg`'s family over weights `w`.
pub fn decoder<'w, T>(cfg: &Config, w: &'w Weights<T>) -> Graph<&'w T> {
    match cfg.family {
        Family::Gpt2 => gpt2::graph(cfg, w),
        Family::Opt => opt::graph(cfg, w),
        Family::Xglm => xglm::graph(cfg, w),
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
    }
}

/// A decoder's widths.
fn decoder_dims(cfg: &Config) -> Dims {
    Dims {
        c: cfg.n_embd,
        inner: cfg.n_inner,
        embed: cfg.word_embed_dim,
        vocab: cfg.vocab_size,
        n_head: cfg.n_head,
    }
}

/// The output head: `lm_head`, or the token table when tied.
fn head<T>(w: &Weights<T>) -> &T {
    w.lm_head.as_ref().unwrap_or(&w.wte)
}

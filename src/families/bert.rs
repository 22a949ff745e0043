//! BERT encoders (all-MiniLM-L6-v2 and kin): post-LN blocks, bidirectional attention within each
//! packed text, pooled to one vector per text.
//!
//! ```text
//! x = LN(word[tokens] + (position + type 0)[row - first row of its text])
//! per block:  x = LN1(x + attn_out(attn(qkv(x))));  x = LN2(x + fc_out(gelu(fc(x))))
//! pooled = pool(x) per text, L2-normalised
//! ```
//! Checkpoint naming lives with its weight set ([`crate::encoder::weights`]).

use crate::config::Activation;
use crate::encoder::{EncoderConfig, EncoderWeights};
use crate::gpu::kernels::{Epilogue, PoolMode};
use crate::graph::{Act, Builder, Dims, Graph, Then};

/// The encoder's forward pass, ending in `mode` pooling.
pub fn graph<'w, T>(
    cfg: &EncoderConfig,
    w: &'w EncoderWeights<T>,
    mode: PoolMode,
    normalize: bool,
) -> Graph<&'w T> {
    let (c, inner) = (cfg.hidden_size, cfg.intermediate_size);
    let dims = Dims::plain(c, inner, c, 0, cfg.num_heads);
    let eps = cfg.layer_norm_eps;
    let act = match cfg.activation {
        Epilogue::Gelu => Activation::GeluTanh,
        _ => Activation::GeluErf,
    };
    let mut g = Builder::new(dims);
    g.embed_packed(&w.word, &w.position, Act::Ln);
    g.layer_norm(Act::Ln, Act::X, &w.emb_ln_w, Some(&w.emb_ln_b), eps);
    for lw in &w.layers {
        g.linear(Act::X, Act::Qkv, &lw.qkv_w, Some(&lw.qkv_b), Then::Store);
        g.bidirectional_attention(Act::Qkv, Act::AttY);
        g.linear(
            Act::AttY,
            Act::X,
            &lw.attn_out_w,
            Some(&lw.attn_out_b),
            Then::Add,
        );
        g.layer_norm(Act::X, Act::Ln, &lw.ln_1_w, Some(&lw.ln_1_b), eps);
        g.linear(Act::Ln, Act::FcH, &lw.fc_w, Some(&lw.fc_b), Then::Act(act));
        g.linear(
            Act::FcH,
            Act::Ln,
            &lw.fc_out_w,
            Some(&lw.fc_out_b),
            Then::Add,
        );
        g.layer_norm(Act::Ln, Act::X, &lw.ln_2_w, Some(&lw.ln_2_b), eps);
    }
    g.pool(Act::X, Act::Pooled, mode, normalize);
    g.finish()
}

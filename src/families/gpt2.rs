//! GPT-2: learned positions, pre-LN blocks, tanh GELU, a tied head.
//!
//! ```text
//! x = wte[tokens] + wpe[positions]
//! per block:  x = x + c_proj(attn(c_attn(ln_1(x))));  x = x + mlp_proj(gelu(c_fc(ln_2(x))))
//! logits = ln_f(x) wteᵀ
//! ```
//! Checkpoint: `transformer.`-prefixed names (stripped by the loader), Conv1D weights stored
//! [in, out] (read transposed).

use crate::config::Config;
use crate::graph::{Act, Builder, Graph, Then};
use crate::loader::{LayerWeights, Part, Weights};

/// GPT-2's forward pass (and XGLM's, whose embedding alone differs).
pub fn graph<'w, T>(cfg: &Config, w: &'w Weights<T>) -> Graph<&'w T> {
    let mut g = Builder::new(super::decoder_dims(cfg));
    g.embed(Some((&w.wte, cfg.embed_scale)), Some(&w.wpe), Act::X);
    for (l, lw) in w.layers.iter().enumerate() {
        pre_ln_block(&mut g, cfg, l, lw);
    }
    g.head();
    g.layer_norm(
        Act::X,
        Act::Lnf,
        &w.ln_f_w,
        &w.ln_f_b,
        cfg.layer_norm_epsilon,
    );
    g.linear(Act::Lnf, Act::Logits, super::head(w), None, Then::Store);
    g.finish()
}

/// `x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))`.
pub fn pre_ln_block<'w, T>(g: &mut Builder<&'w T>, cfg: &Config, l: usize, w: &'w LayerWeights<T>) {
    let eps = cfg.layer_norm_epsilon;
    g.layer_norm(Act::X, Act::Ln, &w.ln_1_w, &w.ln_1_b, eps);
    g.linear(
        Act::Ln,
        Act::Qkv,
        &w.c_attn_w,
        Some(&w.c_attn_b),
        Then::Store,
    );
    g.causal_attention(Act::Qkv, Act::AttY, l);
    g.linear(
        Act::AttY,
        Act::X,
        &w.attn_proj_w,
        Some(&w.attn_proj_b),
        Then::Add,
    );
    g.layer_norm(Act::X, Act::Ln, &w.ln_2_w, &w.ln_2_b, eps);
    g.linear(
        Act::Ln,
        Act::FcH,
        &w.c_fc_w,
        Some(&w.c_fc_b),
        Then::Act(cfg.activation),
    );
    g.linear(
        Act::FcH,
        Act::X,
        &w.mlp_proj_w,
        Some(&w.mlp_proj_b),
        Then::Add,
    );
}

/// GPT-2's checkpoint keeps every tensor under wgpt's name; `conv1d` ones stored [in, out].
pub fn parts(name: &str, rows: usize, cols: usize, conv1d: bool) -> Vec<Part> {
    let stored = match (rows == 1, conv1d) {
        (true, _) => vec![cols],
        (_, true) => vec![cols, rows],
        _ => vec![rows, cols],
    };
    vec![Part::whole(name.to_string(), stored, conv1d)]
}

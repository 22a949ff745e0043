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
    g.embed(Some((&w.wte, cfg.embed_scale)), w.wpe.as_ref(), Act::X);
    for (l, lw) in w.layers.iter().enumerate() {
        pre_ln_block(&mut g, cfg, l, lw);
    }
    g.head();
    g.layer_norm(
        Act::X,
        Act::Lnf,
        &w.ln_f_w,
        w.ln_f_b.as_ref(),
        cfg.layer_norm_epsilon,
    );
    g.linear(Act::Lnf, Act::Logits, super::head(w), None, Then::Store);
    g.finish()
}

/// `x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))`.
pub fn pre_ln_block<'w, T>(g: &mut Builder<&'w T>, cfg: &Config, l: usize, w: &'w LayerWeights<T>) {
    let eps = cfg.layer_norm_epsilon;
    g.layer_norm(Act::X, Act::Ln, &w.ln_1_w, w.ln_1_b.as_ref(), eps);
    super::attn(g, l, w, Act::Ln, Act::X);
    g.layer_norm(Act::X, Act::Ln, &w.ln_2_w, w.ln_2_b.as_ref(), eps);
    super::mlp(g, cfg, w, Act::Ln, Act::X);
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

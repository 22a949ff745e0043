//! XGLM: GPT-2's pre-LN block with sinusoidal positions (offset 2), token embeddings scaled by
//! sqrt(C), the erf GELU and a final `layer_norm`.
//!
//! ```text
//! x = sqrt(C) * embed_tokens[tokens] + sinusoid[positions + 2]
//! per block:  x = x + out_proj(attn(qkv(self_attn_layer_norm(x))));  x = x + fc2(gelu(fc1(final_layer_norm(x))))
//! logits = layer_norm(x) lm_headᵀ
//! ```

use crate::config::{Config, Positions};
use crate::graph::Graph;
use crate::loader::{Part, Weights};

/// XGLM's forward pass: GPT-2's graph; the embedding's scale and its computed position table
/// come from the config and the loader.
pub fn graph<'w, T>(cfg: &Config, w: &'w Weights<T>) -> Graph<&'w T> {
    debug_assert_eq!(cfg.positions, Positions::Sinusoidal);
    super::gpt2::graph(cfg, w)
}

/// XGLM's checkpoint names: OPT's layout (`model.` prefix stripped), `layer_norm` for the final
/// norm, and no stored position table.
pub fn parts(cfg: &Config, name: &str, rows: usize, cols: usize) -> Vec<Part> {
    match name {
        "wpe.weight" => Vec::new(),
        "ln_f.weight" | "ln_f.bias" => {
            let suffix = name.rsplit('.').next().unwrap_or_default();
            vec![Part::whole(
                format!("layer_norm.{suffix}"),
                vec![cols],
                false,
            )]
        }
        _ => super::opt::parts(cfg, name, rows, cols),
    }
}

//! The Llama family: Llama 1-3, Mistral, Qwen2/2.5, SmolLM/SmolLM2, TinyLlama, Phi-3. RMS
//! norms, rotary positions on queries and keys, a gated SiLU feed-forward, grouped-query
//! attention; they differ only in checkpoint naming and biases.
//!
//! ```text
//! x = embed_tokens[tokens]
//! per block:  x = x + o_proj(attn(rope(qkv(input_layernorm(x)))))
//!             x = x + down_proj(silu(gate_proj(h)) * up_proj(h)),  h = post_attention_layernorm(x)
//! logits = norm(x) lm_headᵀ
//! ```
//! Checkpoint: `model.` prefix (stripped by the loader), nn.Linear weights ([out, in]); q, k, v
//! stacked into one matrix here, as Phi-3 stores them already (`qkv_proj`); gate and up rows
//! interleaved into one (`g0 u0 g1 u1 ...`, Phi-3's `gate_up_proj` split and interleaved), so
//! a projection's store can apply the gate to neighbouring outputs. Qwen2 has biases on q, k,
//! v; Llama on every projection when `attention_bias` / `mlp_bias` say so.

use crate::config::{Config, Family, LlamaKind};
use crate::graph::{Act, Builder, Graph, Then};
use crate::loader::{LayerWeights, Part, Weights};

/// The Llama family's forward pass.
pub fn graph<'w, T>(cfg: &Config, w: &'w Weights<T>) -> Graph<&'w T> {
    let mut g = Builder::new(super::decoder_dims(cfg));
    let eps = cfg.layer_norm_epsilon;
    let inv_freq = w
        .inv_freq
        .as_ref()
        .expect("build_weights gives rotary models their frequencies");
    g.embed(Some((&w.wte, cfg.embed_scale)), None, Act::X);
    for (l, lw) in w.layers.iter().enumerate() {
        g.rms_norm(Act::X, Act::Ln, &lw.ln_1_w, eps);
        attn(&mut g, l, lw, inv_freq);
        g.rms_norm(Act::X, Act::Ln, &lw.ln_2_w, eps);
        gated_mlp(&mut g, cfg, lw);
    }
    g.head();
    g.rms_norm(Act::X, Act::Lnf, &w.ln_f_w, eps);
    g.linear(Act::Lnf, Act::Logits, super::head(w), None, Then::Store);
    g.finish()
}

/// `x += o_proj(attention(rope(qkv(ln))))`, causal over layer `l`'s cache of rotated keys.
fn attn<'w, T>(g: &mut Builder<&'w T>, l: usize, w: &'w LayerWeights<T>, inv_freq: &'w T) {
    g.linear(
        Act::Ln,
        Act::Qkv,
        &w.c_attn_w,
        w.c_attn_b.as_ref(),
        Then::Store,
    );
    g.rope(Act::Qkv, inv_freq);
    g.causal_attention(Act::Qkv, Act::AttY, l);
    let b = w.attn_proj_b.as_ref();
    g.linear(Act::AttY, Act::X, &w.attn_proj_w, b, Then::Add);
}

/// `x += down(act(ln Wg) * (ln Wu))`, the gate and up outputs interleaved in GateUp.
pub(super) fn gated_mlp<'w, T>(g: &mut Builder<&'w T>, cfg: &Config, w: &'w LayerWeights<T>) {
    g.linear(
        Act::Ln,
        Act::GateUp,
        &w.c_fc_w,
        w.c_fc_b.as_ref(),
        Then::Store,
    );
    g.gate(Act::GateUp, Act::FcH, cfg.activation);
    let b = w.mlp_proj_b.as_ref();
    g.linear(Act::FcH, Act::X, &w.mlp_proj_w, b, Then::Add);
}

/// Where a Llama-family checkpoint keeps wgpt's decoder tensor `name`.
pub fn parts(cfg: &Config, name: &str, rows: usize, cols: usize) -> Vec<Part> {
    let kind = match cfg.family {
        Family::Llama(kind) => kind,
        _ => LlamaKind::Llama,
    };
    let shape = |rows: usize| match rows {
        1 => vec![cols],
        _ => vec![rows, cols],
    };
    let whole = |key: String| vec![Part::whole(key, shape(rows), false)];
    let (layer, rest) = match name.strip_prefix("h.").and_then(|r| r.split_once('.')) {
        Some((l, rest)) => (l.parse::<usize>().ok(), rest),
        None => (None, name),
    };
    let suffix = rest.rsplit('.').next().unwrap_or_default(); // weight | bias
    let Some(i) = layer else {
        return match name {
            "wte.weight" => whole("embed_tokens.weight".into()),
            "ln_f.weight" => whole("norm.weight".into()),
            "rope.inv_freq" => Vec::new(),
            _ => whole(name.into()),
        };
    };
    let key = |m: &str| format!("layers.{i}.{m}.{suffix}");
    // Stacked parts: `names` each of `widths` rows (elements, for a bias).
    let stack = |names: &[&str], widths: &[usize]| -> Vec<Part> {
        let parts = names.iter().zip(widths);
        parts
            .map(|(m, &n)| {
                let stored = if rows == 1 { vec![n] } else { vec![n, cols] };
                Part::whole(key(m), stored, false)
            })
            .collect()
    };
    let (q, kv, inner) = (cfg.q_width(), cfg.kv_width(), cfg.n_inner);
    match (rest.rsplit_once('.').map_or(rest, |(m, _)| m), kind) {
        ("ln_1", _) => whole(key("input_layernorm")),
        ("ln_2", _) => whole(key("post_attention_layernorm")),
        ("attn.c_proj", _) => whole(key("self_attn.o_proj")),
        ("mlp.c_proj", _) => whole(key("mlp.down_proj")),
        ("attn.c_attn", LlamaKind::Phi3) => whole(key("self_attn.qkv_proj")),
        ("attn.c_attn", _) => stack(
            &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            &[q, kv, kv],
        ),
        ("mlp.c_fc", LlamaKind::Phi3) => {
            let fused = key("mlp.gate_up_proj");
            super::interleave([(fused.clone(), 0), (fused, inner)], 2 * inner, rows, cols)
        }
        _ => {
            let [g, u] = [key("mlp.gate_proj"), key("mlp.up_proj")];
            super::interleave([(g, 0), (u, 0)], inner, rows, cols)
        }
    }
}

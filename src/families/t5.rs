//! T5 and flan-T5 encoder-decoders: an encoder reads the source once, bidirectionally; the
//! decoder writes the output causally, each block also attending to the encoder's output.
//! RMS norms before each sublayer, no biases, unscaled attention scores plus a learned bias by
//! bucketed query-key distance (one table per stack, from its first block).
//!
//! ```text
//! encoder:  x = shared[source]
//!           per block:  x = x + o(attn(qkv(ln_1(x)), bias_enc));  x = x + ff(ln_2(x))
//!           e = ln_f_enc(x);  per decoder layer l: cross cache l = (k_l(e), v_l(e))
//! decoder:  y = shared[output so far]
//!           per block:  y = y + o(causal_attn(qkv(ln_1(y)), bias_dec))
//!                       y = y + o_x(attn(q_x(ln_x(y)), cross cache l));  y = y + ff(ln_2(y))
//!           logits = (ln_f(y) · C^-0.5 when tied) headᵀ
//! ff:  wo(relu(wi h)) (T5 v1.0),  or  wo(gelu_new(wi_0 h) * wi_1 h) (v1.1, flan-T5)
//! ```
//! Checkpoint (T5ForConditionalGeneration): `{encoder,decoder}.block.{i}.layer.{j}.…`; q, k, v
//! stacked into one matrix here, the cross-attention's k and v into another, wi_0 and wi_1
//! interleaved as Llama's gate and up. The tied head's C^-0.5 is folded into the decoder's
//! final norm at load ([`scale`]).

use crate::config::Config;
use crate::graph::{Act, Builder, Graph, Keys, Then};
use crate::loader::{EncoderStack, LayerWeights, Part, Weights};

/// The decoder's forward pass over the cross-attention caches the encoder filled.
pub fn graph<'w, T>(cfg: &Config, w: &'w Weights<T>) -> Graph<&'w T> {
    let mut g = Builder::new(super::decoder_dims(cfg));
    let eps = cfg.layer_norm_epsilon;
    g.embed(Some((&w.wte, 1.0)), None, Act::X);
    for (l, lw) in w.layers.iter().enumerate() {
        let cross = lw
            .cross
            .as_ref()
            .expect("a T5 decoder block has cross-attention");
        g.rms_norm(Act::X, Act::Ln, &lw.ln_1_w, eps);
        g.linear(Act::Ln, Act::Qkv, &lw.c_attn_w, None, Then::Store);
        let keys = Keys::Cache { layer: l };
        g.unscaled_attention(Act::Qkv, Act::AttY, keys, w.position_bias.as_ref());
        g.linear(Act::AttY, Act::X, &lw.attn_proj_w, None, Then::Add);
        g.rms_norm(Act::X, Act::Ln, &cross.ln_w, eps);
        g.linear(Act::Ln, Act::Query, &cross.q_w, None, Then::Store);
        g.unscaled_attention(Act::Query, Act::AttY, Keys::Cross { layer: l }, None);
        g.linear(Act::AttY, Act::X, &cross.proj_w, None, Then::Add);
        g.rms_norm(Act::X, Act::Ln, &lw.ln_2_w, eps);
        feed_forward(&mut g, cfg, lw);
    }
    g.head();
    g.rms_norm(Act::X, Act::Lnf, &w.ln_f_w, eps);
    g.linear(Act::Lnf, Act::Logits, super::head(w), None, Then::Store);
    g.finish()
}

/// The encoder's forward pass over one source, ending in every decoder layer's cross-attention
/// keys and values.
pub fn encoder_graph<'w, T>(cfg: &Config, w: &'w Weights<T>) -> Graph<&'w T> {
    let enc: &EncoderStack<T> = w.encoder.as_deref().expect("a T5 has an encoder");
    let mut g = Builder::new(super::decoder_dims(cfg));
    let eps = cfg.layer_norm_epsilon;
    g.embed(Some((&w.wte, 1.0)), None, Act::X);
    for lw in &enc.layers {
        g.rms_norm(Act::X, Act::Ln, &lw.ln_1_w, eps);
        g.linear(Act::Ln, Act::Qkv, &lw.c_attn_w, None, Then::Store);
        let bias = Some(&enc.position_bias);
        g.unscaled_attention(Act::Qkv, Act::AttY, Keys::Sequence, bias);
        g.linear(Act::AttY, Act::X, &lw.attn_proj_w, None, Then::Add);
        g.rms_norm(Act::X, Act::Ln, &lw.ln_2_w, eps);
        feed_forward(&mut g, cfg, lw);
    }
    g.rms_norm(Act::X, Act::Ln, &enc.ln_f_w, eps);
    for (l, lw) in w.layers.iter().enumerate() {
        let cross = lw
            .cross
            .as_ref()
            .expect("a T5 decoder block has cross-attention");
        g.linear(Act::Ln, Act::Kv, &cross.kv_w, None, Then::Store);
        g.store_kv(Act::Kv, l);
    }
    g.finish()
}

/// `x += ff(ln)`: ReLU, or the gated GELU with wi_0 and wi_1 interleaved in GateUp.
fn feed_forward<'w, T>(g: &mut Builder<&'w T>, cfg: &Config, w: &'w LayerWeights<T>) {
    match cfg.gated {
        true => super::llama::gated_mlp(g, cfg, w),
        false => super::mlp(g, cfg, w, Act::Ln, Act::X),
    }
}

/// What wgpt's tensor `name` is multiplied by as it loads: the tied head's C^-0.5 (Mesh
/// TensorFlow's convention, `scale_decoder_outputs`), folded into the final norm's gain.
pub fn scale(cfg: &Config, name: &str) -> f32 {
    match (&cfg.t5, name) {
        (Some(t5), "ln_f.weight") if t5.scale_decoder_outputs => (cfg.n_embd as f32).powf(-0.5),
        _ => 1.0,
    }
}

/// Where a T5 checkpoint keeps wgpt's tensor `name` (the decoder's names, the encoder's under
/// `enc.`).
pub fn parts(cfg: &Config, name: &str, rows: usize, cols: usize) -> Vec<Part> {
    let shape = |rows: usize| match rows {
        1 => vec![cols],
        _ => vec![rows, cols],
    };
    let whole = |key: String| vec![Part::whole(key, shape(rows), false)];
    let (stack, local) = match name.strip_prefix("enc.") {
        Some(rest) => ("encoder", rest),
        None => ("decoder", name),
    };
    let Some((i, rest)) = local.strip_prefix("h.").and_then(|r| r.split_once('.')) else {
        return match local {
            "wte.weight" => whole("shared.weight".into()),
            "ln_f.weight" => whole(format!("{stack}.final_layer_norm.weight")),
            "rel_bias.weight" => whole(format!(
                "{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
            )),
            _ => whole(local.into()),
        };
    };
    let p = format!("{stack}.block.{i}.layer");
    let ff = if stack == "decoder" { 2 } else { 1 };
    let q = cfg.q_width();
    let stacked = |keys: &[String]| -> Vec<Part> {
        (keys.iter())
            .map(|k| Part::whole(k.clone(), vec![q, cols], false))
            .collect()
    };
    let attn = |m: &str, x: &str| format!("{p}.{m}.{x}.weight");
    match rest {
        "ln_1.weight" => whole(format!("{p}.0.layer_norm.weight")),
        "attn.c_attn.weight" => stacked(&["q", "k", "v"].map(|x| attn("0.SelfAttention", x))),
        "attn.c_proj.weight" => whole(attn("0.SelfAttention", "o")),
        "ln_x.weight" => whole(format!("{p}.1.layer_norm.weight")),
        "cross.c_q.weight" => whole(attn("1.EncDecAttention", "q")),
        "cross.c_kv.weight" => stacked(&["k", "v"].map(|x| attn("1.EncDecAttention", x))),
        "cross.c_proj.weight" => whole(attn("1.EncDecAttention", "o")),
        "ln_2.weight" => whole(format!("{p}.{ff}.layer_norm.weight")),
        "mlp.c_proj.weight" => whole(format!("{p}.{ff}.DenseReluDense.wo.weight")),
        _ if cfg.gated => {
            let [g, u] =
                ["wi_0", "wi_1"].map(|m| (format!("{p}.{ff}.DenseReluDense.{m}.weight"), 0));
            super::interleave([g, u], cfg.n_inner, rows, cols)
        }
        _ => whole(format!("{p}.{ff}.DenseReluDense.wi.weight")),
    }
}

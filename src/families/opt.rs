//! OPT: learned positions offset by 2, ReLU feed-forward, pre-LN (most sizes) or post-LN blocks
//! (opt-350m, which also projects its 512-wide embeddings into the 1024-wide stream and back).
//!
//! ```text
//! pre-LN:   x = x + out_proj(attn(qkv(self_attn_layer_norm(x))));  x = x + fc2(relu(fc1(final_layer_norm(x))))
//! post-LN:  x = self_attn_layer_norm(x + attn(x));  x = final_layer_norm(x + mlp(x))
//! projections:  x = project_in(embed_tokens[tokens]) + embed_positions[positions + 2];
//!               logits = project_out(ln_f(x)) lm_headᵀ
//! ```
//! Checkpoint: `model.decoder.` prefix (stripped by the loader), separate q, k, v projections
//! (stacked into one (3C, C) matrix here), nn.Linear weights ([out, in]).

use crate::config::Config;
use crate::graph::{Act, Builder, Graph, Then};
use crate::loader::{LayerWeights, Part, Weights};

/// OPT's forward pass.
pub fn graph<'w, T>(cfg: &Config, w: &'w Weights<T>) -> Graph<&'w T> {
    let mut g = Builder::new(super::decoder_dims(cfg));
    let eps = cfg.layer_norm_epsilon;
    match &w.project_in {
        None => g.embed(Some((&w.wte, cfg.embed_scale)), w.wpe.as_ref(), Act::X),
        Some(project_in) => {
            g.embed(None, w.wpe.as_ref(), Act::X);
            g.embed(Some((&w.wte, cfg.embed_scale)), None, Act::Emb);
            g.linear(Act::Emb, Act::X, project_in, None, Then::Add);
        }
    }
    for (l, lw) in w.layers.iter().enumerate() {
        match cfg.pre_ln {
            true => super::gpt2::pre_ln_block(&mut g, cfg, l, lw),
            false => post_ln_block(&mut g, cfg, l, lw),
        }
    }
    g.head();
    // Post-LN has no final norm: the stream ends in the last block's final_layer_norm, which the
    // loader hands over as ln_f, applied again to that block's Ln (so the head's rows are picked).
    let stream = if cfg.pre_ln { Act::X } else { Act::Ln };
    g.layer_norm(stream, Act::Lnf, &w.ln_f_w, w.ln_f_b.as_ref(), eps);
    match &w.project_out {
        None => g.linear(Act::Lnf, Act::Logits, super::head(w), None, Then::Store),
        Some(project_out) => {
            g.linear(Act::Lnf, Act::Proj, project_out, None, Then::Store);
            g.linear(Act::Proj, Act::Logits, super::head(w), None, Then::Store);
        }
    }
    g.finish()
}

/// `x = ln_1(x + attn(x)); x = ln_2(x + mlp(x))`, computed as
/// `x += attn(x); ln = ln_1(x); ln += mlp(ln); x = ln_2(ln)`.
fn post_ln_block<'w, T>(g: &mut Builder<&'w T>, cfg: &Config, l: usize, w: &'w LayerWeights<T>) {
    let eps = cfg.layer_norm_epsilon;
    super::attn(g, l, w, Act::X, Act::X);
    g.layer_norm(Act::X, Act::Ln, &w.ln_1_w, w.ln_1_b.as_ref(), eps);
    super::mlp(g, cfg, w, Act::Ln, Act::Ln);
    g.layer_norm(Act::Ln, Act::X, &w.ln_2_w, w.ln_2_b.as_ref(), eps);
}

/// Where OPT's checkpoint keeps wgpt's decoder tensor `name`.
pub fn parts(cfg: &Config, name: &str, rows: usize, cols: usize) -> Vec<Part> {
    let whole = |key: String| {
        let stored = if rows == 1 {
            vec![cols]
        } else {
            vec![rows, cols]
        };
        vec![Part::whole(key, stored, false)]
    };
    let (layer, rest) = match name.strip_prefix("h.").and_then(|r| r.split_once('.')) {
        Some((l, rest)) => (l.parse::<usize>().ok(), rest),
        None => (None, name),
    };
    let suffix = rest.rsplit('.').next().unwrap_or_default(); // weight | bias
    match (layer, rest) {
        (None, "wte.weight") => whole("embed_tokens.weight".into()),
        (None, "wpe.weight") => vec![Part {
            skip: cfg.position_offset,
            ..Part::whole(
                "embed_positions.weight".into(),
                vec![rows + cfg.position_offset, cols],
                false,
            )
        }],
        (None, "lm_head.weight" | "project_in.weight" | "project_out.weight") => whole(name.into()),
        (None, _) if cfg.pre_ln => whole(format!("final_layer_norm.{suffix}")),
        (None, _) => whole(format!(
            "layers.{}.final_layer_norm.{suffix}",
            cfg.n_layer - 1
        )),
        (Some(i), rest) => {
            let key = |m: &str| format!("layers.{i}.{m}.{suffix}");
            match rest.rsplit_once('.').map_or(rest, |(m, _)| m) {
                "ln_1" => whole(key("self_attn_layer_norm")),
                "ln_2" => whole(key("final_layer_norm")),
                "attn.c_proj" => whole(key("self_attn.out_proj")),
                "mlp.c_fc" => whole(key("fc1")),
                "mlp.c_proj" => whole(key("fc2")),
                // c_attn (3C, C) = q, k, v stacked.
                _ => ["q_proj", "k_proj", "v_proj"]
                    .iter()
                    .map(|p| {
                        let c = cfg.n_embd;
                        let stored = if rows == 1 { vec![c] } else { vec![c, c] };
                        Part::whole(key(&format!("self_attn.{p}")), stored, false)
                    })
                    .collect(),
            }
        }
    }
}

//! The attention debug path (`Session::set_attention_capture`): probabilities read back from a
//! real forward pass match a CPU forward of the same model, for every layer, head and token,
//! through prefill, decode, non-blocking steps, feed and a reset; it changes no token.

mod common;

use wgpt::reference::{embed, gelu, layernorm, matmul, residual};
use wgpt::{Model, Pick, Session};

/// CPU attention probabilities, [layer][head][query] -> weights over keys 0..=query.
fn cpu_attention(model_dir: &std::path::Path, tokens: &[u32]) -> Vec<Vec<Vec<Vec<f32>>>> {
    let ckpt = wgpt::loader::Checkpoint::open(model_dir).unwrap();
    let cfg = wgpt::Config::from_file(&model_dir.join("config.json")).unwrap();
    let w = wgpt::loader::load_host_weights(&ckpt, &cfg).unwrap();
    let (c, nh, inner, eps) = (cfg.n_embd, cfg.n_head, cfg.n_inner, cfg.layer_norm_epsilon);
    let hs = c / nh;
    let t_len = tokens.len();
    let mut x = embed(tokens, &w.wte, w.wpe.as_ref().unwrap(), c, 0);
    let mut out = Vec::new();
    for lw in &w.layers {
        let ln = layernorm(&x, &lw.ln_1_w, lw.ln_1_b.as_ref().unwrap(), c, eps);
        let qkv = matmul(&ln, &lw.c_attn_w, lw.c_attn_b.as_deref(), c, 3 * c);
        let mut heads = vec![Vec::new(); nh];
        let mut att_y = vec![0.0f32; t_len * c];
        for (h, rows) in heads.iter_mut().enumerate() {
            for i in 0..t_len {
                let q = &qkv[i * 3 * c + h * hs..][..hs];
                let s: Vec<f64> = (0..=i)
                    .map(|j| {
                        let k = &qkv[j * 3 * c + c + h * hs..][..hs];
                        q.iter()
                            .zip(k)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            / (hs as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                let p: Vec<f32> = e.iter().map(|v| (v / sum) as f32).collect();
                for d in 0..hs {
                    att_y[i * c + h * hs + d] = (0..=i)
                        .map(|j| p[j] * qkv[j * 3 * c + 2 * c + h * hs + d])
                        .sum();
                }
                rows.push(p);
            }
        }
        out.push(heads);
        residual(
            &mut x,
            &matmul(&att_y, &lw.attn_proj_w, lw.attn_proj_b.as_deref(), c, c),
        );
        let ln = layernorm(&x, &lw.ln_2_w, lw.ln_2_b.as_ref().unwrap(), c, eps);
        let mut fc_h = matmul(&ln, &lw.c_fc_w, lw.c_fc_b.as_deref(), c, inner);
        gelu(&mut fc_h);
        residual(
            &mut x,
            &matmul(&fc_h, &lw.mlp_proj_w, lw.mlp_proj_b.as_deref(), inner, c),
        );
    }
    out
}

fn compare(s: &Session, cpu: &[Vec<Vec<Vec<f32>>>], n: usize) {
    assert_eq!(s.attention_positions(), n);
    let mut worst = 0.0f32;
    for (l, heads) in cpu.iter().enumerate() {
        for (h, rows) in heads.iter().enumerate() {
            for (i, want) in rows.iter().enumerate().take(n) {
                let got = s.attention_weights(l, h, i).unwrap();
                assert_eq!(got.len(), i + 1);
                let sum: f32 = got.iter().sum();
                assert!(
                    (sum - 1.0).abs() < 1e-4,
                    "layer {l} head {h} query {i}: sum {sum}"
                );
                for (g, w) in got.iter().zip(want) {
                    worst = worst.max((g - w).abs());
                }
            }
        }
    }
    println!("{n} positions: largest difference {worst:e}");
    assert!(worst < 2e-3, "largest difference {worst}");
}

#[test]
fn captured_attention_matches_cpu() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/default");
    let tok = wgpt::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let gpu = common::gpu();
    let model = Model::load(gpu, &dir, &Default::default()).unwrap();
    let prompt = tok
        .encode("The borrow checker makes sure that references are valid")
        .unwrap();
    let mut s = Session::new(&model).unwrap();
    s.set_attention_capture(true);
    let mut ids = prompt.clone();
    let mut next = s.next_token(&prompt, Pick::Greedy).unwrap();
    for _ in 0..3 {
        ids.push(next);
        next = s.next_token(&[next], Pick::Greedy).unwrap();
    }
    // The same greedy tokens as without capture.
    let mut plain = Session::new(&model).unwrap();
    let mut want = plain.next_token(&prompt, Pick::Greedy).unwrap();
    for &id in &ids[prompt.len()..] {
        assert_eq!(id, want);
        want = plain.next_token(&[id], Pick::Greedy).unwrap();
    }
    assert_eq!(next, want);
    let cpu = cpu_attention(&dir, &ids);
    compare(&s, &cpu, ids.len());

    // Non-blocking steps (Generator::poll_token's path) record too.
    s.reset();
    assert_eq!(s.attention_positions(), 0);
    s.submit(&ids[..5], Pick::Greedy).unwrap();
    while s.poll().unwrap().is_none() {}
    s.feed(&ids[5..]).unwrap();
    compare(&s, &cpu, ids.len());

    // Errors, not panics.
    assert!(s.attention_weights(4, 0, 0).is_err());
    assert!(s.attention_weights(0, 8, 0).is_err());
    assert!(s.attention_weights(0, 0, ids.len()).is_err());
    // Switched on mid-sequence: earlier keys are unknown, so nothing is shown.
    let mut late = Session::new(&model).unwrap();
    late.feed(&ids[..3]).unwrap();
    late.set_attention_capture(true);
    late.feed(&ids[3..]).unwrap();
    assert_eq!(late.attention_positions(), 0);
    assert!(late.attention_weights(0, 0, 4).is_err());
    late.set_attention_capture(false);
    assert!(late.attention_weights(0, 0, 0).is_err());
}

//! T5 encoder-decoders against transformers (tests/fixtures/t5, made by make_t5_fixtures.py):
//! the configuration of both flavours, the relative position buckets for distances -300 to 300
//! in both directions, and the CPU twin of the forward pass (teacher-forced decoder logits and
//! greedy outputs) on a T5 v1.0 (ReLU, tied head) and a flan-T5-style model (gated GELU, untied
//! head, NH HS != C, saved in bf16).

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;
use wgpt::loader::Checkpoint;
use wgpt::t5::reference::{self, T5Weights};
use wgpt::t5::{FeedForward, T5Config, relative_position_bucket};

fn t5_fixture(name: &str) -> std::path::PathBuf {
    fixture("t5").join(name)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn configs_of_both_flavours() {
    let v1 = T5Config::from_file(&t5_fixture("t5-v1_0/config.json")).unwrap();
    assert_eq!(v1.feed_forward, FeedForward::Relu);
    assert!(v1.tie_word_embeddings);
    assert_eq!(v1.inner_dim(), v1.d_model);
    let flan = T5Config::from_file(&t5_fixture("flan-t5-odd/config.json")).unwrap();
    assert_eq!(flan.feed_forward, FeedForward::GatedGelu);
    assert!(!flan.tie_word_embeddings);
    assert_ne!(flan.inner_dim(), flan.d_model);
    assert_eq!(flan.decoder_start_token_id, 0);
    assert_eq!(flan.eos_token_id, 1);
}

/// An unknown feed_forward_proj, a decoder's model_type, a missing size: each named.
#[test]
fn bad_configs_are_named() {
    let text = std::fs::read_to_string(t5_fixture("t5-v1_0/config.json")).unwrap();
    let path = Path::new("config.json");
    let bad = text.replace("\"relu\"", "\"gated-swish\"");
    let e = T5Config::from_json(&bad, path).unwrap_err().to_string();
    assert!(e.contains("gated-swish") && e.contains("gated-gelu"), "{e}");
    let bad = text.replace("\"t5\"", "\"gpt2\"");
    let e = T5Config::from_json(&bad, path).unwrap_err().to_string();
    assert!(e.contains("gpt2") && e.contains("t5"), "{e}");
    let bad = text.replace("\"d_model\"", "\"d_modelx\"");
    let e = T5Config::from_json(&bad, path).unwrap_err().to_string();
    assert!(e.contains("d_model"), "{e}");
}

/// transformers' `_relative_position_bucket` for every distance from -300 to 300, encoder
/// (bidirectional) and decoder (causal), two bucket settings.
#[test]
fn relative_position_buckets_match_transformers() {
    let cases = json(&fixture("t5/buckets.json"));
    let mut checked = 0;
    for case in cases.as_array().unwrap() {
        let bidirectional = case["bidirectional"].as_bool().unwrap();
        let n = case["num_buckets"].as_u64().unwrap() as usize;
        let max = case["max_distance"].as_u64().unwrap() as usize;
        let rel: Vec<i64> = serde_json::from_value(case["relative_positions"].clone()).unwrap();
        let want: Vec<usize> = serde_json::from_value(case["buckets"].clone()).unwrap();
        assert_eq!(rel.len(), 601);
        for (&r, &b) in rel.iter().zip(&want) {
            let got = relative_position_bucket(r, bidirectional, n, max);
            assert_eq!(
                got, b,
                "distance {r}, bidirectional {bidirectional}, {n} buckets, max {max}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4 * 601);
}

/// The CPU twin: teacher-forced decoder logits within 1e-3 of the logit scale, greedy outputs
/// identical, for both flavours.
#[test]
fn cpu_twin_matches_transformers() {
    for name in ["t5-v1_0", "flan-t5-odd"] {
        let dir = t5_fixture(name);
        let cfg = T5Config::from_file(&dir.join("config.json")).unwrap();
        let ckpt = Checkpoint::open(&dir).unwrap();
        let w = T5Weights::load(&ckpt, &cfg).unwrap();
        let e = json(&dir.join("expected.json"));
        let tok = wgpt::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        for (i, s) in e["sources"].as_array().unwrap().iter().enumerate() {
            let src = ids(&s["input_ids"]);
            // The tokenizer's post-processor appends </s>, as transformers' tok(text) does.
            assert_eq!(tok.encode(s["text"].as_str().unwrap()).unwrap(), src);
            let enc = reference::encode(&cfg, &w, &src);
            let logits = reference::decode_logits(&cfg, &w, &enc, &ids(&s["decoder_ids"]));
            let (_, want) = read_npy(&dir.join(format!("logits_{i}.npy")));
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = max_abs_diff(&logits, &want);
            println!("{name} source {i}: max |logit diff| {d:.2e} (logit scale {scale:.1})");
            // f64 sums against PyTorch's f32: a few ulps of each value through 5 blocks.
            assert!(d < 1e-3 * scale, "{name} source {i}: {d}");
            let greedy = reference::generate_greedy(&cfg, &w, &src, 16);
            assert_eq!(greedy, ids(&s["greedy_ids"]), "{name} source {i}");
        }
    }
}

/// A checkpoint without its relative attention bias is refused, naming the tensor.
#[test]
fn missing_relative_attention_bias_is_named() {
    let dir = t5_fixture("t5-v1_0");
    let cfg = T5Config::from_file(&dir.join("config.json")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(dir.join(f), tmp.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.contains("relative_attention_bias"))
        .collect();
    safetensors::serialize_to_file(kept, None, &tmp.path().join("model.safetensors")).unwrap();
    let ckpt = Checkpoint::open(tmp.path()).unwrap();
    let err = T5Weights::load(&ckpt, &cfg).err().unwrap().to_string();
    assert!(err.contains("relative_attention_bias"), "{err}");
}

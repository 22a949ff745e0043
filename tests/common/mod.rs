//! Shared test helpers: the GPU (failing loudly without one), fixtures, .npy reading, comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wgpt::Gpu;

/// The test GPU. Tests must fail, not skip, when none is found.
pub fn gpu() -> Arc<Gpu> {
    match Gpu::new(std::env::var("WGPT_ADAPTER").ok().as_deref()) {
        Ok(g) => g,
        Err(e) => panic!(
            "no usable GPU adapter for the tests: {e}\n\
             On a machine without a GPU install Mesa's software Vulkan driver: \
             apt-get install -y mesa-vulkan-drivers libvulkan1"
        ),
    }
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The four transformers fixtures: (folder name, stored dtype).
pub const FIXTURES: &[&str] = &["gpt2-tiny", "gpt2-odd", "gpt2-f16-noprefix", "gpt2-bf16"];

pub struct Expected {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
    pub min_margin: f64,
}

pub fn expected(dir: &Path) -> Expected {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<u32> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    Expected {
        prompt: v["prompt"].as_str().unwrap().to_string(),
        prompt_ids: ids("prompt_ids"),
        greedy_ids: ids("greedy_ids"),
        min_margin: v["min_margin"].as_f64().unwrap(),
    }
}

/// Reads an f32 .npy: (shape, data).
pub fn read_npy(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec::<f32>().unwrap())
}

/// Largest |a - b|; panics on length mismatch or NaN.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert!(!x.is_nan() && !y.is_nan(), "NaN in comparison");
            (x - y).abs()
        })
        .fold(0.0, f32::max)
}

/// Deterministic pseudo-random values in [-scale, scale).
pub fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = wgpt::generate::SplitMix64(seed);
    (0..n)
        .map(|_| (rng.next_f32() * 2.0 - 1.0) * scale)
        .collect()
}

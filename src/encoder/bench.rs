//! `wgpt bench --model ENCODER_DIR`: embedding throughput (sentences/s and tokens/s) at several
//! batch sizes, over one fixed set of texts (schema [`SCHEMA`]).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::bench::AdapterReport;
use crate::encoder::EncoderModel;
use crate::{Error, Result};

/// Bumped whenever a field changes meaning or disappears.
pub const SCHEMA: &str = "wgpt-embed-bench/1";

/// Texts of everyday lengths (7 to 60 tokens with MiniLM's tokenizer); a benchmark of N texts
/// takes them in this order, cycling.
pub const TEXTS: &[&str] = &[
    "A man is eating food.",
    "The new movie is awesome and I would watch it again with my friends this weekend.",
    "GPU kernels written in WGSL run on Vulkan, Metal, DirectX 12 and OpenGL.",
    "How do I reset my password?",
    "The quarterly report shows that revenue grew by twelve percent, driven mostly by the \
     expansion into new markets in Asia and South America, while costs stayed flat despite \
     rising energy prices and a tight labour market.",
    "Two dogs are playing in the snow.",
    "Sentence embeddings map texts to vectors whose cosine similarity reflects meaning.",
    "Where is the nearest train station, and how long does it take to walk there from the old \
     town square?",
];

/// The JSON report of an embedding benchmark.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EmbedReport {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The wgpt crate version that produced the report.
    pub wgpt_version: String,
    /// The adapter measured.
    pub adapter: AdapterReport,
    /// The model folder.
    pub source: String,
    /// "buffer" or "texture".
    pub layout: String,
    /// Texts embedded per timed run (the same texts at every batch size).
    pub texts: usize,
    /// Their tokens in all, special tokens included.
    pub tokens: usize,
    /// One entry per batch size, in the order given.
    pub runs: Vec<EmbedRun>,
}

/// All `texts` embedded `batch` per forward pass; medians over the repeats.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EmbedRun {
    /// Texts per forward pass.
    pub batch: usize,
    /// Timed runs; the figures are medians.
    pub repeats: usize,
    /// Median seconds to embed all texts (tokenizing included).
    pub seconds: f64,
    /// Texts per second.
    pub sentences_per_s: f64,
    /// Tokens per second.
    pub tokens_per_s: f64,
    /// Linear-layer and attention GFLOP/s.
    pub gflop_s: f64,
}

/// Embeds `n_texts` texts of [`TEXTS`] at each batch size, `repeat` times each after one untimed
/// run (pipelines compile lazily on first use, and the scratch buffers grow to the batch).
pub fn run(
    model: &EncoderModel,
    source: &str,
    batches: &[usize],
    n_texts: usize,
    repeat: usize,
) -> Result<EmbedReport> {
    if batches.is_empty() || batches.contains(&0) || n_texts == 0 || repeat == 0 {
        return Err(Error::Input(
            "bench needs batch sizes, texts and repeats above 0".into(),
        ));
    }
    let texts: Vec<&str> = TEXTS.iter().cycle().take(n_texts).copied().collect();
    let lengths = texts
        .iter()
        .map(|t| model.tokenize(t).map(|t| t.ids.len()))
        .collect::<Result<Vec<_>>>()?;
    let tokens: usize = lengths.iter().sum();
    let flops = model.flops(&lengths);
    let mut runs = Vec::new();
    for &batch in batches {
        model.embed_batched(&texts, batch)?;
        let mut times: Vec<f64> = (0..repeat)
            .map(|_| {
                let t0 = Instant::now();
                model.embed_batched(&texts, batch)?;
                Ok(t0.elapsed().as_secs_f64())
            })
            .collect::<Result<_>>()?;
        times.sort_by(f64::total_cmp);
        let s = times[times.len() / 2];
        runs.push(EmbedRun {
            batch,
            repeats: repeat,
            seconds: s,
            sentences_per_s: n_texts as f64 / s,
            tokens_per_s: tokens as f64 / s,
            gflop_s: flops / s / 1e9,
        });
    }
    let info = &model.gpu.info;
    Ok(EmbedReport {
        schema: SCHEMA.into(),
        wgpt_version: env!("CARGO_PKG_VERSION").into(),
        adapter: AdapterReport {
            name: info.name.clone(),
            vendor: info.vendor,
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
        },
        source: source.into(),
        layout: if model.uses_textures() {
            "texture"
        } else {
            "buffer"
        }
        .into(),
        texts: n_texts,
        tokens,
        runs,
    })
}

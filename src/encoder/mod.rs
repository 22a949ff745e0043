//! Encoder-only models (BERT family) for sentence embeddings, as sentence-transformers computes
//! them: all-MiniLM-L6-v2 and its kin. The forward pass reuses the decoder's kernels wherever the
//! math is the same; what differs is small and lives in the same kernel files:
//!
//! ```text
//! texts ─ tokenizer ([CLS] … [SEP], cut at max_seq_length) ─ ids of B texts, packed: T rows
//!   embed_packed: h = word[id] + (position + type 0)[row - first row of its text]   (T, C)
//!   x = layernorm(h)
//!   L blocks (post-LN):  qkv = x Wqkvᵀ;  kv_append → K, V (T, C)
//!                        attention_bidirectional: each row attends to its own text's rows only
//!                        x += att_y Woᵀ (residual epilogue);  h = LN1(x)
//!                        fc_h = gelu_erf(h Wiᵀ) (epilogue);  h += fc_h Wdᵀ;  x = LN2(h)
//!   pool: mean / max / [CLS] over each text's rows, then L2-normalised → (B, C), read back
//! ```
//!
//! Texts of different lengths are packed one after another, without padding rows: the padding
//! mask becomes, for every row, the range of rows of its own text (`spans`), which the embedding
//! (positions), the attention (keys) and the pooling read. A batch of B texts is one forward
//! pass (one submit); each text's result does not depend on what it is batched with.
//!
//! ```no_run
//! # fn main() -> wgpt::Result<()> {
//! let gpu = wgpt::Engine::new(None)?;
//! let model = wgpt::EncoderModel::load(gpu, "all-MiniLM-L6-v2".as_ref(), &Default::default())?;
//! let e = model.embed(&["A cat sits on the mat.", "A feline rests on a rug."])?;
//! println!("cosine similarity {:.3}", e.cosine(0, 1));
//! # Ok(()) }
//! ```

pub mod bench;
pub mod config;
pub mod weights;

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::gpu::Engine;
use std::collections::HashMap;

use crate::gpu::kernels::Step;
use crate::gpu::tensor::{GpuTensor, WeightDtype};
use crate::gpu::upload::Uploader;
use crate::graph::Act;
use crate::loader::{self, Checkpoint};
use crate::plan::{Bucket, Caps, Fusions, Io, KvCache, Plan, Rule};
use crate::runtime::{LoadOptions, Progress, WeightLayout};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

pub use config::{EncoderConfig, SentenceConfig};
pub use weights::EncoderWeights;

/// Texts per forward pass unless asked otherwise (sentence-transformers' default batch size).
pub const DEFAULT_BATCH_SIZE: usize = 32;

/// One text's token ids, and whether they were cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokenized {
    /// Ids with the special tokens, at most `max_seq_length` of them.
    pub ids: Vec<u32>,
    /// The length the ids would have had uncut, when that is above `max_seq_length`.
    pub truncated_from: Option<usize>,
}

/// N embeddings of D values each, row-major: row i is text i's.
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    /// D: values per embedding (the encoder's hidden size).
    pub dim: usize,
    /// N × D values.
    pub data: Vec<f32>,
}

impl Embeddings {
    /// N: how many embeddings.
    pub fn len(&self) -> usize {
        self.data.len() / self.dim.max(1)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Embedding `i` (panics if `i >= len()`, like slice indexing).
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Every embedding in order.
    pub fn rows(&self) -> impl Iterator<Item = &[f32]> {
        self.data.chunks(self.dim.max(1))
    }

    /// As one `Vec` per text.
    pub fn to_vecs(&self) -> Vec<Vec<f32>> {
        self.rows().map(<[f32]>::to_vec).collect()
    }

    /// Cosine similarity of embeddings `i` and `j`.
    pub fn cosine(&self, i: usize, j: usize) -> f32 {
        cosine(self.row(i), self.row(j))
    }

    /// The N × N matrix of cosine similarities.
    pub fn cosine_matrix(&self) -> Vec<Vec<f32>> {
        (0..self.len())
            .map(|i| (0..self.len()).map(|j| self.cosine(i, j)).collect())
            .collect()
    }
}

/// Cosine similarity of two vectors (0 when either is all zeros), accumulated in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        (ab / (aa.sqrt() * bb.sqrt())) as f32
    }
}

/// Whether `dir` holds an encoder this module reads (its config.json's `model_type`), so a tool
/// can route a folder to [`EncoderModel`] or [`Model`](crate::Model).
pub fn is_encoder_dir(dir: &Path) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind {
        model_type: Option<String>,
    }
    std::fs::read_to_string(dir.join(loader::CONFIG_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<Kind>(&t).ok())
        .and_then(|k| k.model_type)
        .is_some_and(|m| config::SUPPORTED_ENCODER_TYPES.contains(&m.as_str()))
}

/// A BERT-family encoder with its weights on the GPU, its tokenizer and its sentence-transformers
/// settings. A cheap handle (clones share everything) that is `Send + Sync`; calls from several
/// threads take turns on one set of scratch buffers.
#[derive(Clone)]
pub struct EncoderModel {
    /// The device the weights live on.
    pub gpu: Arc<Engine>,
    /// The hyper-parameters the weights were checked against.
    pub config: EncoderConfig,
    /// Pooling, normalisation, the token limit.
    pub sentence: SentenceConfig,
    tokenizer: Arc<Tokenizer>,
    weights: Arc<EncoderWeights<GpuTensor>>,
    /// What the adapter offers the planner, and the fusions it may apply.
    caps: Caps,
    fusions: Fusions,
    /// Most rows one forward pass may hold (activation bindings, texture height).
    max_rows: usize,
    texture_linear: bool,
    /// Scratch buffers and bind groups of the last pass, reused while large enough.
    work: Arc<Mutex<Option<Workspace>>>,
}

impl EncoderModel {
    /// Loads a Hugging Face BERT folder (`config.json`, `model.safetensors` or its shards,
    /// `tokenizer.json`) with its sentence-transformers files (`modules.json`,
    /// `1_Pooling/config.json`, `sentence_bert_config.json`) if present.
    pub fn load(gpu: Arc<Engine>, dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let dir = &crate::hub::model_dir(dir)?;
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model folder not found"),
            ));
        }
        let config = EncoderConfig::from_file(&dir.join(loader::CONFIG_FILE))?;
        let sentence = SentenceConfig::from_dir(dir, &config)?;
        let tokenizer = Tokenizer::from_file(&dir.join(loader::TOKENIZER_FILE))?
            .without_truncation_or_padding()?;
        let ckpt = Checkpoint::open(dir)?;
        Self::from_checkpoint(gpu, config, sentence, tokenizer, &ckpt, opts)
    }

    /// Uploads the weights of an opened checkpoint, checked against `config`.
    pub fn from_checkpoint(
        gpu: Arc<Engine>,
        config: EncoderConfig,
        sentence: SentenceConfig,
        tokenizer: Tokenizer,
        ckpt: &Checkpoint,
        opts: &LoadOptions,
    ) -> Result<Self> {
        gpu.clone().scoped(|| {
            let t0 = std::time::Instant::now();
            let (c, inner) = (config.hidden_size, config.intermediate_size);
            let max_chunk_bytes = opts
                .max_chunk_bytes
                .unwrap_or(u64::MAX)
                .min(gpu.max_binding_bytes());
            let textures = texture_linear(&gpu, &config, opts.layout)?;
            let block = crate::gpu::tensor::Q8_BLOCK;
            if opts.dtype == WeightDtype::Q8
                && !(c.is_multiple_of(block) && inner.is_multiple_of(block))
            {
                return Err(Error::DtypeUnsupported {
                    dtype: "q8",
                    what: format!(
                        "hidden_size ({c}) and intermediate_size ({inner}) multiples of {block}"
                    ),
                });
            }
            let max_tex = gpu.limits.max_texture_dimension_2d as usize;
            let mut max_rows = (max_chunk_bytes / (4 * inner.max(3 * c)) as u64) as usize;
            if textures {
                max_rows = max_rows.min(max_tex);
            }
            if max_rows < sentence.max_seq_length {
                return Err(Error::Limits(format!(
                    "one text of {} tokens needs {} rows of activations, the adapter allows {max_rows}",
                    sentence.max_seq_length, sentence.max_seq_length
                )));
            }
            let total: u64 = 2 * (config.vocab_size + config.max_position_embeddings) as u64 * c as u64
                + config.num_layers as u64 * (4 * c * c + 2 * c * inner) as u64;
            let mut done = 0u64;
            let up = Uploader::new(&gpu);
            let weights = weights::load_encoder_weights(ckpt, &config, |spec, read| {
                // Matrices the linear kernels or the embedding read take the model's dtype;
                // vectors and the position table (read as f32 by embed_packed) stay f32.
                let dtype = if spec.rows > 1 && !spec.name.contains("position") {
                    opts.dtype
                } else {
                    WeightDtype::F32
                };
                let t = if textures && spec.linear {
                    let tex = GpuTensor::upload_texture(
                        &up, spec.name, spec.rows, spec.cols, dtype, max_tex, read,
                    )?;
                    GpuTensor::from_textures(spec.rows, spec.cols, dtype, tex)
                } else {
                    GpuTensor::upload(
                        &up,
                        spec.name,
                        spec.rows,
                        spec.cols,
                        dtype,
                        max_chunk_bytes,
                        read,
                    )?
                };
                done += (spec.rows * spec.cols) as u64;
                if let Some(Progress(report)) = &opts.progress {
                    report(done, total.max(done));
                }
                Ok(t)
            })?;
            up.finish()?;
            let caps = Caps::new(&gpu, textures, config.head_size());
            let fusions = opts.fusions()?;
            gpu.wait()?;
            log::info!(
                "loaded encoder: {} layers, C = {c}, V = {} ({}, linear layers in {}) in {:.2} s",
                config.num_layers,
                config.vocab_size,
                opts.dtype.name(),
                if textures { "textures" } else { "buffers" },
                t0.elapsed().as_secs_f64()
            );
            Ok(EncoderModel {
                gpu: gpu.clone(),
                config,
                sentence,
                tokenizer: Arc::new(tokenizer),
                weights: Arc::new(weights),
                caps,
                fusions,
                max_rows,
                texture_linear: textures,
                work: Arc::new(Mutex::new(None)),
            })
        })
    }

    /// D: values per embedding.
    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    /// Whether the linear layers read textures (see [`WeightLayout`]).
    pub fn uses_textures(&self) -> bool {
        self.texture_linear
    }

    /// The folder's tokenizer (truncation and padding off: see [`EncoderModel::tokenize`]).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of `text` as sentence-transformers makes them: lowercased first when
    /// `sentence_bert_config.json` says `do_lower_case`, special tokens added, and cut to
    /// `max_seq_length` (256 for all-MiniLM-L6-v2) with `truncated_from` saying so. The empty
    /// text is `[CLS] [SEP]`, embedded like any other.
    pub fn tokenize(&self, text: &str) -> Result<Tokenized> {
        let lowered;
        let text = if self.sentence.lowercase {
            lowered = text.to_lowercase();
            &lowered
        } else {
            text
        };
        let max = self.sentence.max_seq_length;
        let (ids, full) = self.tokenizer.encode_with_special(text, max)?;
        Ok(Tokenized {
            ids,
            truncated_from: (full > max).then_some(full),
        })
    }

    /// Embeddings of `texts`, [`DEFAULT_BATCH_SIZE`] texts per forward pass. Texts longer than
    /// `max_seq_length` tokens are truncated (see [`EncoderModel::tokenize`] to find out which).
    pub fn embed(&self, texts: &[&str]) -> Result<Embeddings> {
        self.embed_batched(texts, DEFAULT_BATCH_SIZE)
    }

    /// [`embed`](Self::embed) with `batch_size` texts per forward pass.
    pub fn embed_batched(&self, texts: &[&str], batch_size: usize) -> Result<Embeddings> {
        let ids = texts
            .iter()
            .map(|t| self.tokenize(t).map(|t| t.ids))
            .collect::<Result<Vec<_>>>()?;
        self.embed_tokens(&ids, batch_size)
    }

    /// Embeddings of already tokenized texts (each with its special tokens, 1 to
    /// `max_position_embeddings` ids below `vocab_size`), `batch_size` per forward pass (a pass
    /// also holds at most as many tokens as the adapter's bindings allow).
    pub fn embed_tokens(&self, seqs: &[Vec<u32>], batch_size: usize) -> Result<Embeddings> {
        if batch_size == 0 {
            return Err(Error::Input("the batch size must be at least 1".into()));
        }
        let (v, n_pos) = (self.config.vocab_size, self.config.max_position_embeddings);
        for (i, s) in seqs.iter().enumerate() {
            if s.is_empty() {
                return Err(Error::Input(format!(
                    "text {i} has no tokens (its tokenizer adds no special tokens)"
                )));
            }
            if s.len() > n_pos.min(self.max_rows) {
                return Err(Error::Input(format!(
                    "text {i} has {} tokens, the model reads at most {}; truncate it (EncoderModel::tokenize does)",
                    s.len(),
                    n_pos.min(self.max_rows)
                )));
            }
            if let Some(&bad) = s.iter().find(|&&id| id as usize >= v) {
                return Err(Error::Input(format!(
                    "text {i} has token id {bad}, the vocabulary has {v}"
                )));
            }
        }
        let mut data = Vec::with_capacity(seqs.len() * self.dim());
        // Passes of at most batch_size texts and max_rows tokens.
        let mut start = 0;
        while start < seqs.len() {
            let mut end = start;
            let mut rows = 0;
            while end < seqs.len()
                && end - start < batch_size
                && rows + seqs[end].len() <= self.max_rows
            {
                rows += seqs[end].len();
                end += 1;
            }
            data.extend(self.gpu.scoped(|| self.pass(&seqs[start..end], rows))?);
            start = end;
        }
        Ok(Embeddings {
            dim: self.dim(),
            data,
        })
    }

    /// One forward pass over `seqs` (`rows` tokens in all): the pooled embeddings, (B, C).
    fn pass(&self, seqs: &[Vec<u32>], rows: usize) -> Result<Vec<f32>> {
        let gpu = &self.gpu;
        let mut guard = self.work.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|w| w.rows < rows) {
            let cap = rows.next_power_of_two().clamp(64, self.max_rows.max(rows));
            *guard = None; // free the old buffers first
            *guard = Some(Workspace::new(self, cap));
        }
        let ws = guard.as_ref().expect("just allocated");
        let mut tokens = Vec::with_capacity(rows);
        let mut row_spans: Vec<[u32; 2]> = Vec::with_capacity(rows);
        let mut seq_spans: Vec<[u32; 2]> = Vec::with_capacity(seqs.len());
        for s in seqs {
            let span = [tokens.len() as u32, s.len() as u32];
            tokens.extend_from_slice(s);
            row_spans.extend(std::iter::repeat_n(span, s.len()));
            seq_spans.push(span);
        }
        gpu.queue
            .write_buffer(&ws.tokens, 0, bytemuck::cast_slice(&tokens));
        gpu.queue
            .write_buffer(&ws.row_spans, 0, bytemuck::cast_slice(&row_spans));
        gpu.queue
            .write_buffer(&ws.seq_spans, 0, bytemuck::cast_slice(&seq_spans));
        let step = Step::new(rows as u32, 0, 0);
        gpu.queue
            .write_buffer(&ws.step, 0, bytemuck::bytes_of(&step));

        let mut enc = gpu.device.create_command_encoder(&Default::default());
        ws.record(&mut enc, rows as u32, seqs.len() as u32);
        let bytes = (seqs.len() * self.dim() * 4) as u64;
        enc.copy_buffer_to_buffer(&ws.pooled, 0, &ws.readback, 0, bytes);
        gpu.queue.submit([enc.finish()]);
        let out = gpu.read(&ws.readback, bytes)?;
        Ok(bytemuck::pod_collect_to_vec(&out))
    }

    /// FLOPs of embedding texts of these lengths: 2 per multiply-add of the linear layers and
    /// of the attention (QKᵀ and AV over each text's own tokens).
    pub fn flops(&self, lengths: &[usize]) -> f64 {
        let c = &self.config;
        let (l, ce, inner) = (
            c.num_layers as f64,
            c.hidden_size as f64,
            c.intermediate_size as f64,
        );
        lengths
            .iter()
            .map(|&t| {
                let t = t as f64;
                2.0 * t * l * (4.0 * ce * ce + 2.0 * ce * inner) + 4.0 * l * t * t * ce
            })
            .sum()
    }
}

/// Whether the linear layers use textures: as the decoder decides (textures on CPU adapters when
/// the widths are multiples of 64), for an encoder's shapes.
fn texture_linear(gpu: &Engine, cfg: &EncoderConfig, layout: WeightLayout) -> Result<bool> {
    let max_texels = gpu.limits.max_texture_dimension_2d as usize;
    let (c, inner) = (cfg.hidden_size, cfg.intermediate_size);
    let fits = c.is_multiple_of(64)
        && inner.is_multiple_of(64)
        && cfg.head_size().is_multiple_of(4)
        && inner.max(c) / 4 <= max_texels;
    let limits = crate::gpu::texture_layout_limits();
    match layout {
        WeightLayout::Buffer => Ok(false),
        WeightLayout::Auto => Ok(fits
            && gpu.info.device_type == wgpu::DeviceType::Cpu
            && limits.check_limits(&gpu.limits)),
        WeightLayout::Texture if fits => {
            crate::gpu::check_limits(&gpu.limits, &limits, "the texture layout")?;
            Ok(true)
        }
        WeightLayout::Texture => Err(Error::Input(format!(
            "the texture layout needs hidden_size ({c}) and intermediate_size ({inner}) multiples of 64 \
             and a head size ({}) that is a multiple of 4; use the buffer layout",
            cfg.head_size()
        ))),
    }
}

/// Scratch buffers for passes of up to `rows` tokens (T) and as many texts, and the encoder's
/// graph planned over them.
struct Workspace {
    rows: usize,
    step: wgpu::Buffer,      // Step uniform: rows = T
    tokens: wgpu::Buffer,    // (T) u32
    row_spans: wgpu::Buffer, // (T) (first row of the row's text, its length)
    seq_spans: wgpu::Buffer, // (B) (first row, length) per text
    pooled: wgpu::Buffer,    // (B, C) embeddings
    readback: wgpu::Buffer,  // (B, C), mappable
    plan: Plan,
}

impl Workspace {
    fn new(m: &EncoderModel, rows: usize) -> Workspace {
        let gpu = &*m.gpu;
        let cfg = &m.config;
        let (c, inner) = (cfg.hidden_size, cfg.intermediate_size);
        let f = |n: usize| (n * 4) as u64;
        // The linear layers' inputs; matmul_texture's layout also binds them as a uniform.
        let linear_input = |name: &str, bytes: u64| match m.texture_linear {
            true => gpu.storage_uniform(name, bytes),
            false => gpu.storage(name, bytes),
        };
        let step = gpu.uniform("encoder_step", &Step::default());
        let tokens = gpu.storage("tokens", f(rows));
        let row_spans = gpu.storage("row_spans", f(2 * rows));
        let seq_spans = gpu.storage("seq_spans", f(2 * rows));
        let pooled = gpu.storage("pooled", f(rows * c)); // (B, C)
        let acts = HashMap::from([
            (Act::X, linear_input("x", f(rows * c))), // (T, C) hidden states
            (Act::Ln, linear_input("h", f(rows * c))), // (T, C) after the attention's norm
            (Act::Qkv, gpu.storage("qkv", f(rows * 3 * c))), // (T, 3C)
            (Act::AttY, linear_input("att_y", f(rows * c))), // (T, C) heads side by side
            (Act::FcH, linear_input("fc_h", f(rows * inner))), // (T, n_inner)
            (Act::Pooled, pooled.clone()),
        ]);
        let mut textures = HashMap::new();
        // Keys and values of the current layer: buffers, or textures in the texture layout.
        let kv = match m.texture_linear {
            true => {
                let ct = gpu.texture("c_texture", rows, c); // (T, C): x, att_y, h
                for act in [Act::X, Act::Ln, Act::AttY] {
                    textures.insert(act, ct.clone());
                }
                textures.insert(Act::FcH, gpu.texture("inner_texture", rows, inner));
                let view = |name| gpu.texture(name, rows, c).create_view(&Default::default());
                KvCache::Textures {
                    k: vec![view("k_texture")],
                    v: vec![view("v_texture")],
                }
            }
            false => KvCache::Buffers {
                k: vec![gpu.storage("k", f(rows * c))], // (T, C)
                v: vec![gpu.storage("v", f(rows * c))], // (T, C)
            },
        };
        let io = Io {
            steps: [step.clone(), step.clone()],
            tokens: tokens.clone(),
            spans: Some([row_spans.clone(), seq_spans.clone()]),
            acts,
            textures,
            kv,
            zero: gpu.storage("zero", 4),
            tmp: (!m.fusions.has(Rule::Epilogue)).then(|| gpu.storage("tmp", f(rows * c))),
            partials: None,
            cross: None,
        };
        let (mode, normalize) = (m.sentence.pooling, m.sentence.normalize);
        let graph = crate::families::bert::graph(cfg, &m.weights, mode, normalize);
        Workspace {
            rows,
            step,
            tokens,
            row_spans,
            seq_spans,
            pooled,
            readback: gpu.readback("pooled_read", f(rows * c)),
            plan: Plan::new(gpu, &graph, m.caps, m.fusions, &io),
        }
    }

    /// Records the forward pass over `rows` tokens of `seqs` texts, then the pooling, into
    /// `enc`.
    fn record(&self, enc: &mut wgpu::CommandEncoder, rows: u32, seqs: u32) {
        let ops = &self.plan.body[Bucket::of(rows) as usize];
        crate::plan::record(enc, ops, rows, seqs, None);
    }
}

//! The runtime: [`Model`] holds a decoder's weights on the GPU (uploaded once at load); a
//! [`Session`] holds one sequence's KV cache, scratch activations and its plan's bind groups,
//! and runs steps; a [`Batch`] advances several sequences in one forward pass; [`generate`]
//! streams tokens from a session, and [`sampler`] holds the sampling settings.

mod batch;
mod capture;
pub mod generate;
mod gguf;
pub mod sampler;
mod seq2seq;
mod session;

pub use batch::{Batch, BatchRow, BatchToken};
pub use session::{Pick, Session};

use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, Positions};
use crate::gpu::Engine;
use crate::gpu::kernels::{self, FillParams};
use crate::gpu::registry::{Key, Layout};
use crate::gpu::tensor::{GpuTensor, WeightDtype};
use crate::gpu::upload::Uploader;
use crate::graph::Graph;
use crate::loader::{self, Checkpoint, Weights};
use crate::plan::{Caps, Fusions, Rule};
use crate::{Error, Result};

/// Load-time choices.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Split weights into buffers of at most this many bytes. `None`: the adapter's largest
    /// storage binding. Tests set it low to exercise the split path on small models.
    pub max_chunk_bytes: Option<u64>,
    /// How weight matrices are stored on the GPU (computation is f32 either way).
    pub dtype: WeightDtype,
    /// Buffers or textures for the linear layers' operands.
    pub layout: WeightLayout,
    /// Called after each tensor is uploaded with (weights done, weights in all).
    pub progress: Option<Progress>,
    /// Which fusion rules the planner may apply ([`Fusions`]). `None`: `WGPT_FUSE` if set, else
    /// every rule.
    pub fuse: Option<Fusions>,
}

impl LoadOptions {
    /// Counts `n` more weights uploaded and reports to [`LoadOptions::progress`].
    pub(crate) fn advance(&self, done: &mut u64, n: u64, total: u64) {
        *done += n;
        if let Some(Progress(report)) = &self.progress {
            report(*done, total);
        }
    }

    /// The fusion rules this load asks for: `fuse`, else `WGPT_FUSE`'s, else every rule.
    pub fn fusions(&self) -> Result<Fusions> {
        match self.fuse {
            Some(f) => Ok(f),
            None => Ok(Fusions::from_env()?.unwrap_or_default()),
        }
    }
}

/// A load-progress callback: (weights uploaded so far, weights in all).
#[derive(Clone)]
pub struct Progress(pub Arc<dyn Fn(u64, u64) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress(..)")
    }
}

/// Where the linear layers' operands live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightLayout {
    /// Textures on CPU adapters (lavapipe, SwiftShader, WARP), where texel loads are vectorised
    /// and buffer loads are not, when the shapes allow it; buffers elsewhere.
    #[default]
    Auto,
    /// Storage buffers, read by `matmul.wgsl` (gemv for a few rows, tiled matmul for more).
    Buffer,
    /// Needs n_embd, n_inner multiples of 64 and a head size that is a multiple of 4.
    Texture,
}

impl std::str::FromStr for WeightLayout {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(WeightLayout::Auto),
            "buffer" => Ok(WeightLayout::Buffer),
            "texture" => Ok(WeightLayout::Texture),
            other => Err(Error::option(
                "LoadOptions::layout",
                format!("{other:?}"),
                "auto, buffer or texture",
            )),
        }
    }
}

/// A GPT-2 whose weights live on the GPU, loaded once. A cheap handle: clones share the weights
/// and pipelines, and any number of [`Session`]s (each with its own KV cache) run on one model,
/// from any thread (`Model` is `Send + Sync`).
#[derive(Clone)]
pub struct Model {
    /// The device the weights live on; sessions allocate and submit on it.
    pub gpu: Arc<Engine>,
    /// The hyper-parameters the weights were checked against.
    pub config: Config,
    pub(crate) weights: Arc<Weights<GpuTensor>>,
    /// What the adapter offers the planner.
    pub(crate) caps: Caps,
    /// The fusion rules the planner may apply.
    pub(crate) fusions: Fusions,
    /// Bound in place of a bias the head does not have.
    pub(crate) zero: wgpu::Buffer,
    /// Largest buffer one binding may see (weights, activations and cache are sized below it).
    pub(crate) max_chunk_bytes: u64,
    /// Linear layers read weights and activations as textures (see matmul_texture.wgsl).
    pub(crate) texture_linear: bool,
    /// The blocks' layer norms are folded into c_attn and c_fc (`loader::LnFold`): their gains
    /// and biases are 1 and 0, and decode fuses them into those GEMVs (rule fold_norm).
    pub(crate) norms_folded: bool,
}

impl Model {
    /// Loads a Hugging Face decoder folder (GPT-2, OPT, XGLM: config.json + model.safetensors or
    /// its shards), or a hub id (`ORG/NAME`) from the local Hugging Face cache ([`crate::hub`]).
    /// A GGUF file (`*.gguf`) loads as [`Model::from_gguf`] does.
    pub fn load(gpu: Arc<Engine>, dir: &Path, opts: &LoadOptions) -> Result<Model> {
        if crate::gguf::is_gguf_path(dir) {
            return Self::from_gguf(gpu, &crate::gguf::Gguf::open(dir)?, opts);
        }
        let dir = &crate::hub::model_dir(dir)?;
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model folder not found"),
            ));
        }
        let config = Config::from_file(&dir.join(loader::CONFIG_FILE))?;
        let ckpt = Checkpoint::open(dir)?;
        Self::from_checkpoint(gpu, config, &ckpt, opts)
    }

    /// Uploads the weights of an opened checkpoint, checked against `config`.
    pub fn from_checkpoint(
        gpu: Arc<Engine>,
        config: Config,
        ckpt: &Checkpoint,
        opts: &LoadOptions,
    ) -> Result<Model> {
        gpu.clone()
            .scoped(|| Self::upload_checkpoint(gpu, config, ckpt, opts))
    }

    fn upload_checkpoint(
        gpu: Arc<Engine>,
        config: Config,
        ckpt: &Checkpoint,
        opts: &LoadOptions,
    ) -> Result<Model> {
        let max_chunk_bytes = Self::check_fits(&gpu, &config, opts)?;
        let textures = texture_linear(&gpu, &config, opts)?;
        let fold = folds_layer_norms(&gpu, &config, textures, opts)?;
        let mut folding = loader::LnFold::default();
        let placement = Placement::new(&gpu, textures, max_chunk_bytes, !ckpt.explicit_head());
        let t0 = std::time::Instant::now();
        let count = |_: &str, rows: usize, cols: usize, _| Ok((rows * cols) as u64);
        let total = loader::build_weights(&config, ckpt.explicit_head(), count)?
            .all()
            .sum::<u64>();
        check_blocks(&config, opts.dtype)?;
        let upload = |name: &str, rows, cols, read: &mut loader::ReadRows| -> Result<GpuTensor> {
            if name == "wpe.weight" && config.positions == Positions::Sinusoidal {
                return sinusoid_table(&gpu, rows, cols, config.position_offset);
            }
            if name == "rope.inv_freq" {
                let mut freqs = Vec::new();
                read(0, 1, &mut freqs)?;
                return Ok(inv_freq_tensor(&gpu, &freqs));
            }
            if let Some(t5) = config
                .t5
                .as_deref()
                .filter(|_| name.ends_with("rel_bias.weight"))
            {
                return t5.bias_tensor(&gpu, name, rows, read);
            }
            let dtype = stored_as(name, rows, opts.dtype);
            let mut read = crate::gpu::tensor::f32_rows_encoded(read, cols, dtype);
            upload_tensor(&placement, name, (rows, cols), dtype, &mut read)
        };
        let mut done = 0;
        let weights = loader::load_weights(ckpt, &config, |name, rows, cols, read| {
            let t = match fold {
                true => folding.make(name, rows, cols, read, upload)?,
                false => upload(name, rows, cols, read)?,
            };
            opts.advance(&mut done, (rows * cols) as u64, total);
            Ok(t)
        })?;
        placement.up.finish()?;
        Self::finish(
            gpu,
            config,
            weights,
            opts,
            (max_chunk_bytes, textures, fold),
            t0,
        )
    }

    /// The model over uploaded weights; `(max_chunk_bytes, texture_linear, norms_folded)` as
    /// the upload decided them.
    fn finish(
        gpu: Arc<Engine>,
        config: Config,
        weights: Weights<GpuTensor>,
        opts: &LoadOptions,
        (max_chunk_bytes, texture_linear, norms_folded): (u64, bool, bool),
        t0: std::time::Instant,
    ) -> Result<Model> {
        // Bound where a tensor is absent (a bias); 16 bytes: kernels reading vec4 need that.
        let zero = gpu.storage("zero", 16);
        let caps = Caps::new(&gpu, texture_linear, config.head_size());
        let fusions = opts.fusions()?;
        let mut weights = weights;
        if norms_folded {
            folded_row_sums(&gpu, &mut weights, &zero);
        }
        gpu.wait()?;
        let model = Model {
            gpu,
            config,
            weights: Arc::new(weights),
            caps,
            fusions,
            zero,
            max_chunk_bytes,
            texture_linear,
            norms_folded,
        };
        log::info!(
            "loaded {}: {:.1} MB of weights ({}, linear layers in {}) in {:.2} s",
            model.config.describe(),
            model.weight_bytes() as f64 / 1e6,
            model.weight_formats(),
            if texture_linear {
                "textures"
            } else {
                "buffers"
            },
            t0.elapsed().as_secs_f64()
        );
        Ok(model)
    }

    /// A model of shape `config` with pseudo-random weights generated on the GPU (for `wgpt
    /// bench`: no checkpoint, nothing crosses the bus). Matrices are uniform in +-0.02 as GPT-2's
    /// init, layernorm gains 1 +- 0.02.
    pub fn random(
        gpu: Arc<Engine>,
        config: Config,
        opts: &LoadOptions,
        seed: u32,
    ) -> Result<Model> {
        gpu.clone()
            .scoped(|| Self::fill_random(gpu, config, opts, seed))
    }

    fn fill_random(
        gpu: Arc<Engine>,
        config: Config,
        opts: &LoadOptions,
        seed: u32,
    ) -> Result<Model> {
        let t0 = std::time::Instant::now();
        let max_chunk_bytes = Self::check_fits(&gpu, &config, opts)?;
        let textures = texture_linear(&gpu, &config, opts)?;
        let fold = folds_layer_norms(&gpu, &config, textures, opts)?;
        let max_rows = gpu.limits.max_texture_dimension_2d as usize;
        // Buffers to fill, and buffers to copy into textures once filled (with their row pitch).
        let mut fills: Vec<(wgpu::Buffer, FillParams, WeightDtype)> = Vec::new();
        let mut copies: Vec<(wgpu::Buffer, wgpu::Texture, u32)> = Vec::new();
        let mut salt = seed;
        // A buffer of `rows` rows of `pitch` bytes holding `cols` weights each as `dtype`; with
        // `transposed`, the rows are a weight texture's (texel t of every weight row), where q8's
        // int8 texels are the first cols / 16 rows and its scales the rest.
        let mut fill = |label: &str,
                        rows: usize,
                        cols: usize,
                        pitch: usize,
                        values: (f32, f32),
                        dtype: WeightDtype,
                        transposed: bool| {
            let words = rows * pitch / 4;
            let quantised = dtype.format().value_bytes(cols);
            let buf = gpu.storage(label, words as u64 * 4);
            salt = salt.wrapping_add(0x9E37_79B9);
            let params = FillParams {
                n: words as u32,
                seed: salt,
                scale: values.1,
                center: values.0,
                row_words: (pitch / 4) as u32,
                // Words and texels of the quantised values (q8's int8s, the nibble planes).
                q_words: (quantised / 4) as u32,
                q_rows: if transposed {
                    (quantised / 16) as u32
                } else {
                    0
                },
                _pad: 0,
            };
            fills.push((buf.clone(), params, dtype));
            buf
        };
        let weights = loader::build_weights(&config, false, |name, rows, cols, _| {
            if let (Some(rope), "rope.inv_freq") = (&config.rope, name) {
                return Ok(inv_freq_tensor(&gpu, &rope.inv_freq(config.head_dim)));
            }
            let center = if name.contains("ln_") && name.ends_with(".weight") {
                1.0
            } else {
                0.0
            };
            // (center, spread); folded norms are exactly gain 1, bias 0 (the projections after
            // them stand for already folded weights).
            let folded = fold && (name.contains(".ln_1.") || name.contains(".ln_2."));
            let values = (center, if folded { 0.0 } else { 0.02 });
            let dtype = stored_as(name, rows, opts.dtype);
            check_blocks(&config, dtype)?;
            let row_bytes = dtype.row_bytes(cols);
            // A texture copy: filled as a buffer whose rows are padded to the 256 bytes a
            // buffer-to-texture copy needs, copied in once the fills have run.
            let mut textured = |fill: &mut FillBuffer| {
                GpuTensor::texture_chunks(name, rows, max_rows, dtype, |label, _, n| {
                    let tex = gpu.weight_texture(label, n, cols, dtype);
                    let pitch = (16 * tex.width() as usize).next_multiple_of(256);
                    let texels = tex.height() as usize;
                    let buf = fill(label, texels, cols, pitch, values, dtype, true);
                    copies.push((buf, tex.clone(), pitch as u32));
                    tex
                })
            };
            // The head is the token table: in the texture layout the embedding reads it there.
            if textures && (is_linear(name) || name == "wte.weight") {
                let textures = textured(&mut fill);
                return Ok(GpuTensor::from_textures(rows, cols, dtype, textures));
            }
            GpuTensor::with_chunks(name, rows, cols, dtype, max_chunk_bytes, |label, _, n| {
                Ok(fill(
                    label,
                    dtype.stored_rows(n),
                    cols,
                    row_bytes,
                    values,
                    dtype,
                    false,
                ))
            })
        })?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for (buf, params, dtype) in &fills {
                let code = [("WEIGHT_FORMAT", dtype.format().code() as f64)];
                let pipe = &kernels::pipeline(&gpu, "fill_random", None, &code);
                let bind = kernels::bind(
                    &gpu,
                    pipe,
                    "fill_random",
                    &[&gpu.uniform("fill", params), buf],
                );
                let groups = params.n.div_ceil(256);
                pass.set_pipeline(pipe);
                pass.set_bind_group(0, &bind, &[]);
                pass.dispatch_workgroups(groups.min(65535), groups.div_ceil(65535), 1);
            }
        }
        for (buf, tex, pitch) in &copies {
            copy_rows_to_texture(&mut enc, buf, tex, tex.height(), *pitch);
        }
        gpu.queue.submit([enc.finish()]);
        Self::finish(
            gpu,
            config,
            weights,
            opts,
            (max_chunk_bytes, textures, fold),
            t0,
        )
    }

    /// The binding size weights are split below. Before anything is allocated, errors (naming
    /// the bytes needed and what to try) if a weight row or one layer's KV cache cannot fit one
    /// binding. See [`Model::memory_estimate`] for the totals it names.
    fn check_fits(gpu: &Engine, config: &Config, opts: &LoadOptions) -> Result<u64> {
        let max_chunk_bytes = opts
            .max_chunk_bytes
            .unwrap_or(u64::MAX)
            .min(gpu.max_binding_bytes());
        let (weights, kv) = Self::memory_estimate(config, opts.dtype);
        let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
        let totals = format!(
            "the model needs about {} of weights ({}) plus {} of KV cache per session \
             ({} positions x {} layers)",
            mb(weights),
            opts.dtype.name(),
            mb(kv),
            config.n_positions,
            config.n_layer
        );
        let widest = config.fc_rows().max(config.qkv_width()) as u64 * 4;
        if widest > max_chunk_bytes {
            return Err(Error::Limits(format!(
                "one weight row needs {widest} bytes in one binding, the adapter allows \
                 {max_chunk_bytes}; {totals}; try another adapter"
            )));
        }
        let kv_layer = config.n_positions as u64 * config.kv_width() as u64 * 4;
        if kv_layer > max_chunk_bytes {
            return Err(Error::Limits(format!(
                "one layer's KV cache ({} positions x {} wide, f32) needs {kv_layer} bytes in one \
                 binding, the adapter allows {max_chunk_bytes} (max_storage_buffer_binding_size \
                 {}, max_buffer_size {}); {totals}. Try a model with a smaller context \
                 (n_positions at most {}) or another adapter",
                config.n_positions,
                config.kv_width(),
                gpu.limits.max_storage_buffer_binding_size,
                gpu.limits.max_buffer_size,
                max_chunk_bytes / (config.kv_width() as u64 * 4)
            )));
        }
        log::info!("{totals}");
        Ok(max_chunk_bytes)
    }

    /// Bytes a model of shape `config` stored as `dtype` needs on the GPU, roughly: (weights,
    /// one full-context session's KV cache). wgpu does not tell how much memory an adapter has,
    /// so these are for messages and planning; running out shows up as [`Error::OutOfMemory`].
    pub fn memory_estimate(config: &Config, dtype: WeightDtype) -> (u64, u64) {
        let count = |_: &str, rows: usize, cols: usize, _| {
            let dtype = if rows > 1 { dtype } else { WeightDtype::F32 };
            Ok(rows as u64 * dtype.row_bytes(cols) as u64)
        };
        let weights = loader::build_weights(config, !config.tie_word_embeddings, count)
            .map(|w| w.all().sum::<u64>())
            .unwrap_or(0);
        let kv = 2 * (config.n_layer * config.n_positions * config.kv_width()) as u64 * 4;
        (weights, kv)
    }

    /// The output projection: an explicit `lm_head` or the tied token embedding. (V, C)
    pub(crate) fn head(&self) -> &GpuTensor {
        self.weights.lm_head.as_ref().unwrap_or(&self.weights.wte)
    }

    /// The model's forward pass, as its family describes it.
    pub fn graph(&self) -> Graph<&GpuTensor> {
        crate::families::decoder(&self.config, &self.weights)
    }

    /// The fusion rules this model's plans may apply.
    pub fn fusions(&self) -> Fusions {
        self.fusions
    }

    /// Bytes of weights on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        let w = &self.weights;
        w.all().map(GpuTensor::bytes).sum::<u64>()
    }

    /// Weight bytes one decode step reads: every block's matrices and vectors, the final
    /// layernorm and the head (the embedding rows it gathers are negligible).
    pub fn decode_weight_bytes(&self) -> u64 {
        let w = &self.weights;
        self.weight_bytes()
            - w.wte.bytes()
            - w.wpe.as_ref().map_or(0, |t| t.bytes())
            - w.lm_head.as_ref().map_or(0, |t| t.bytes())
            + self.head().bytes()
    }

    /// FLOPs of a prefill of `t` tokens: 2 per multiply-add of the block matmuls, causal attention
    /// (QK^T and AV over on average t/2 keys) and the head for the last row.
    pub fn prefill_flops(&self, t: usize) -> f64 {
        let c = &self.config;
        let (l, ce, t) = (c.n_layer as f64, c.n_embd as f64, t as f64);
        let (qkv, q) = (c.qkv_width() as f64, c.q_width() as f64);
        let ffn = (c.fc_rows() + c.n_inner) as f64;
        let matmul = 2.0 * t * l * ce * (qkv + q + ffn);
        let attention = 2.0 * l * t * t * q;
        matmul + attention + 2.0 * c.vocab_size as f64 * ce
    }

    /// Number of weights (elements, whatever their storage).
    pub fn params(&self) -> u64 {
        self.weights.all().map(|t| (t.rows * t.cols) as u64).sum()
    }

    /// Whether the blocks' layer norms were folded into the projections after them at load
    /// ([`loader::LnFold`]), so that decode can fuse them into those GEMVs.
    pub fn layer_norms_folded(&self) -> bool {
        self.norms_folded
    }

    /// Rows of keys (or values) one layer's KV cache may hold on this adapter: one binding (or
    /// texture) per layer, shared by every slot, so a [`crate::Batch`] of B sequences fits
    /// `max_kv_rows() / B` positions each.
    pub fn max_kv_rows(&self) -> usize {
        match self.texture_linear {
            true => self.gpu.limits.max_texture_dimension_2d as usize,
            false => self.max_chunk_bytes as usize / (4 * self.config.kv_width()),
        }
    }

    /// Whether the linear layers read textures (see [`WeightLayout`]).
    pub fn uses_textures(&self) -> bool {
        self.texture_linear
    }

    /// How the weight matrices are stored.
    pub fn dtype(&self) -> WeightDtype {
        self.weights.wte.dtype
    }

    /// The storage formats of the weight matrices, most bytes first (`"q4+q8"` for a GGUF
    /// Q4_1 file with a Q8_0 token table; one name for a folder loaded with one dtype).
    pub fn weight_formats(&self) -> String {
        let mut by: Vec<(WeightDtype, u64)> = Vec::new();
        for t in self.weights.all().filter(|t| t.rows > 1) {
            for (rows, dtype) in t.formats() {
                let bytes = (dtype.stored_rows(rows) * dtype.row_bytes(t.cols)) as u64;
                match by.iter_mut().find(|(d, _)| *d == dtype) {
                    Some((_, b)) => *b += bytes,
                    None => by.push((dtype, bytes)),
                }
            }
        }
        by.sort_by_key(|&(_, b)| std::cmp::Reverse(b));
        let names: Vec<&str> = by.iter().map(|(d, _)| d.name()).collect();
        names.join("+")
    }

    /// Number of pieces the token table is stored in: buffers (1 unless it exceeds one binding),
    /// or, where a tied head holds it as textures (the texture layout), textures.
    pub fn wte_chunks(&self) -> usize {
        let wte = &self.weights.wte;
        wte.chunks.len().max(wte.textures.len())
    }
}

/// Whether a model folds its blocks' layer norms into c_attn and c_fc at load
/// (`loader::LnFold`): pre-LN blocks, in the texture layout where the decode GEMV that fuses
/// them in exists (subgroups of 8) and reads its input row through the uniform binding, with
/// f16 or q8 weights. With f32 weights the fused GEMV measured 1.5-2.7x slower than the plain
/// one in `wgpt bench --kernels` on lavapipe (f16 the same, q8 2-9% slower) and decode as a
/// whole 8x slower, a cause not yet found; f32 keeps its layernorm dispatches.
fn folds_layer_norms(
    gpu: &Engine,
    cfg: &Config,
    textures: bool,
    opts: &LoadOptions,
) -> Result<bool> {
    Ok(opts.fusions()?.has(Rule::FoldNorm)
        && cfg.pre_ln
        && opts.dtype != WeightDtype::F32
        && textures
        && kernels::subgroups_of_8(gpu)
        && cfg.n_embd as u32 <= kernels::wg::GEMV_UNIFORM_FLOATS)
}

/// Sets the row sums of every block's c_attn and c_fc weights as stored, which the GEMVs with a
/// folded layer norm fused in subtract mean times (matmul_texture_subgroup.wgsl's NORM).
/// Computed by the same GEMV on a row of ones, so they carry its dequantisation exactly.
fn folded_row_sums(gpu: &Engine, weights: &mut Weights<GpuTensor>, zero: &wgpu::Buffer) {
    let c = weights.layers.first().map_or(0, |l| l.c_attn_w.cols);
    let key = Key::new("matmul_texture_subgroup", "gemv_texture_subgroup")
        .with("WEIGHT_FORMAT", weights.wte.dtype.format().code())
        .layout(Layout::Linear {
            textures: true,
            extra: kernels::Extra::None,
        });
    let pipe = gpu.registry.get(gpu, &key);
    let ones = gpu.storage_uniform("ones", (c * 4) as u64);
    gpu.queue
        .write_buffer(&ones, 0, bytemuck::cast_slice(&vec![1.0f32; c]));
    let ones_texture = gpu.texture("ones", 1, c).create_view(&Default::default());
    let step = gpu.uniform("row_sums_step", &kernels::Step::new(1, 0, 0));
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipe);
        for (l, lw) in weights.layers.iter_mut().enumerate() {
            for (w, name) in [(&mut lw.c_attn_w, "c_attn"), (&mut lw.c_fc_w, "c_fc")] {
                let out = gpu.storage(&format!("h.{l}.{name}.row_sums"), (w.rows * 4) as u64);
                let io = kernels::LinearIo {
                    step: &step,
                    inp: &ones,
                    input_texture: Some(&ones_texture),
                    bias: (zero, false),
                    out: &out,
                    kv: None,
                    ln: None,
                    partials: None,
                };
                for (bind, n) in kernels::linear_binds(gpu, &pipe, w, &io) {
                    pass.set_bind_group(0, &bind, &[]);
                    pass.dispatch_workgroups(
                        n.div_ceil(4).div_ceil(kernels::wg::LINEAR_TEXTURE),
                        1,
                        1,
                    );
                }
                w.row_sums = Some(out);
            }
        }
    }
    gpu.queue.submit([enc.finish()]);
}

/// Where a load stores its tensors.
pub(crate) struct Placement<'a> {
    /// Where the weights pass on their way to the GPU.
    pub(crate) up: Uploader<'a>,
    /// The linear layers read textures.
    textures: bool,
    /// Rows of one weight texture at most.
    max_rows: usize,
    /// Bytes of one buffer at most.
    max_chunk_bytes: u64,
    /// The head is the token table (in the texture layout the embedding reads the head's
    /// textures).
    tied: bool,
}

impl<'a> Placement<'a> {
    pub(crate) fn new(gpu: &'a Engine, textures: bool, max_chunk_bytes: u64, tied: bool) -> Self {
        let max_rows = gpu.limits.max_texture_dimension_2d as usize;
        Placement {
            up: Uploader::new(gpu),
            textures,
            max_rows,
            max_chunk_bytes,
            tied,
        }
    }
}

/// Uploads one tensor from rows encoded as `dtype`: a linear layer's matrix, and a tied token
/// table (the head, which the embedding reads too), as textures in the texture layout, anything
/// else as buffers.
pub(crate) fn upload_tensor(
    p: &Placement,
    name: &str,
    (rows, cols): (usize, usize),
    dtype: WeightDtype,
    read: &mut crate::gpu::tensor::ReadEncoded,
) -> Result<GpuTensor> {
    let tied_table = p.tied && name == "wte.weight";
    if p.textures && (is_linear(name) || tied_table) {
        let chunks =
            GpuTensor::upload_texture_encoded(&p.up, name, rows, cols, dtype, p.max_rows, read)?;
        return Ok(GpuTensor::from_textures(rows, cols, dtype, chunks));
    }
    GpuTensor::upload_encoded(&p.up, name, rows, cols, dtype, p.max_chunk_bytes, read)
}

/// The storage of tensor `name`: the matrices the linear kernels and the embedding read take the
/// model's weight dtype; vectors and the position table stay f32.
fn stored_as(name: &str, rows: usize, dtype: WeightDtype) -> WeightDtype {
    if rows > 1 && name != "wpe.weight" {
        dtype
    } else {
        WeightDtype::F32
    }
}

/// `fill(label, rows, cols, pitch, (center, spread), dtype, transposed)` in [`Model::random`]: a
/// buffer of `rows` rows, `pitch` bytes apart, of `cols` random weights stored as `dtype`.
type FillBuffer<'a> =
    dyn FnMut(&str, usize, usize, usize, (f32, f32), WeightDtype, bool) -> wgpu::Buffer + 'a;

/// Block formats (q8, q4) quantise blocks of 32 weights along K (n_embd, or n_inner for the
/// MLP's down-projection).
fn check_blocks(cfg: &Config, dtype: WeightDtype) -> Result<()> {
    let block = dtype.format().block();
    let ks = [cfg.n_embd, cfg.n_inner, cfg.q_width()];
    if !ks.iter().all(|k| k.is_multiple_of(block)) {
        return Err(Error::DtypeUnsupported {
            dtype: dtype.name(),
            what: format!(
                "n_embd ({}), n_inner ({}) and NH x HS ({}) multiples of {block} (it quantises \
                 blocks of {block} along each row)",
                cfg.n_embd,
                cfg.n_inner,
                cfg.q_width()
            ),
        });
    }
    Ok(())
}

/// The linear layers' weight matrices (the token table when tied is handled apart).
fn is_linear(name: &str) -> bool {
    ["lm_head.weight", "project_in.weight", "project_out.weight"].contains(&name)
        || [
            ".c_attn.weight",
            ".c_proj.weight",
            ".c_fc.weight",
            ".c_q.weight",
            ".c_kv.weight",
        ]
        .iter()
        .any(|s| name.ends_with(s))
}

/// Whether the linear layers use textures, from the requested layout, the shapes and the adapter.
fn texture_linear(gpu: &Engine, cfg: &Config, opts: &LoadOptions) -> Result<bool> {
    let max_texels = gpu.limits.max_texture_dimension_2d as usize;
    // Activations are copied into textures row by row: rows of K floats must be 256-byte aligned.
    let fits = [cfg.n_embd, cfg.n_inner, cfg.word_embed_dim, cfg.q_width()]
        .iter()
        .all(|w| w.is_multiple_of(64))
        && cfg.head_size().is_multiple_of(4)
        && cfg.n_inner.max(cfg.n_embd).max(cfg.q_width()) / 4 <= max_texels
        && cfg.n_positions <= max_texels;
    let limits = crate::gpu::texture_layout_limits();
    match opts.layout {
        WeightLayout::Buffer => Ok(false),
        WeightLayout::Auto => Ok(fits
            && gpu.info.device_type == wgpu::DeviceType::Cpu
            && limits.check_limits(&gpu.limits)),
        WeightLayout::Texture if fits => {
            crate::gpu::check_limits(&gpu.limits, &limits, "the texture layout")?;
            Ok(true)
        }
        WeightLayout::Texture => Err(Error::Input(format!(
            "the texture layout needs n_embd ({}), n_inner ({}) and NH x HS ({}) multiples of 64 \
             and a head size ({}) that is a multiple of 4; use the buffer layout",
            cfg.n_embd,
            cfg.n_inner,
            cfg.q_width(),
            cfg.head_size()
        ))),
    }
}

/// A rotary model's frequencies (HS / 2), as the uniform rotary.wgsl reads.
fn inv_freq_tensor(gpu: &Engine, freqs: &[f32]) -> GpuTensor {
    let buf = kernels::rope_uniform(gpu, "rope.inv_freq", freqs);
    let chunk = crate::gpu::tensor::Chunk {
        buffer: buf,
        row0: 0,
        rows: 1,
        dtype: WeightDtype::F32,
    };
    GpuTensor {
        chunks: vec![chunk],
        ..GpuTensor::from_textures(1, freqs.len(), WeightDtype::F32, Vec::new())
    }
}

/// The sinusoidal position table, (n_ctx, C) f32 from position `offset`, computed on the GPU
/// (sinusoid.wgsl).
pub fn sinusoid_table(gpu: &Engine, n_ctx: usize, c: usize, offset: usize) -> Result<GpuTensor> {
    let table = gpu.storage("wpe.weight", (n_ctx * c * 4) as u64);
    let freq = kernels::sinusoid_frequencies(c);
    let params = kernels::SinusoidParams {
        c: c as u32,
        rows: n_ctx as u32,
        offset: offset as u32,
        _pad: 0,
    };
    let pipe = kernels::pipeline(gpu, "sinusoid", None, &[]);
    let bind = kernels::bind(
        gpu,
        &pipe,
        "sinusoid",
        &[
            &gpu.uniform("sinusoid", &params),
            &gpu.storage_init("freq", bytemuck::cast_slice(&freq)),
            &table,
        ],
    );
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipe);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups((c as u32 / 2).div_ceil(64), n_ctx as u32, 1);
    }
    gpu.queue.submit([enc.finish()]);
    GpuTensor::with_chunks(
        "wpe.weight",
        n_ctx,
        c,
        WeightDtype::F32,
        u64::MAX,
        |_, _, _| Ok(table.clone()),
    )
}

/// Copies the first `rows` rows of a row-major matrix buffer, rows `pitch` bytes apart (a multiple
/// of 256), into a texture of 16-byte texels.
pub(crate) fn copy_rows_to_texture(
    enc: &mut wgpu::CommandEncoder,
    buf: &wgpu::Buffer,
    tex: &wgpu::Texture,
    rows: u32,
    pitch: u32,
) {
    let width = tex.width();
    enc.copy_buffer_to_texture(
        wgpu::TexelCopyBufferInfo {
            buffer: buf,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(pitch),
                rows_per_image: None,
            },
        },
        tex.as_image_copy(),
        wgpu::Extent3d {
            width,
            height: rows,
            depth_or_array_layers: 1,
        },
    );
}

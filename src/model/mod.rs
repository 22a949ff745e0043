//! GPT-2 on the GPU: [`Model`] holds the weights and pipelines (built once at load); a
//! [`Session`] holds one sequence's KV cache, scratch activations and bind groups, and runs steps.

mod session;

pub use session::{Pick, Session};

use std::path::Path;
use std::sync::Arc;

use crate::config::Config;
use crate::gpu::Gpu;
use crate::gpu::kernels::{self, FillParams, Pipelines};
use crate::gpu::tensor::{GpuTensor, WeightDtype};
use crate::loader::{self, Checkpoint, Weights};
use crate::{Error, Result};

/// Load-time choices.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Split weights into buffers of at most this many bytes. `None`: the adapter's largest
    /// storage binding. Tests set it low to exercise the split path on small models.
    pub max_chunk_bytes: Option<u64>,
    /// How weight matrices are stored on the GPU (computation is f32 either way).
    pub dtype: WeightDtype,
}

/// A GPT-2 whose weights live in GPU buffers.
pub struct Model {
    pub gpu: Arc<Gpu>,
    pub config: Config,
    pub(crate) weights: Weights<GpuTensor>,
    pub(crate) pipelines: Pipelines,
    /// Bound in place of a bias the head does not have.
    pub(crate) zero: wgpu::Buffer,
    /// Largest buffer one binding may see (weights, activations and cache are sized below it).
    pub(crate) max_chunk_bytes: u64,
}

impl Model {
    /// Loads a Hugging Face GPT-2 folder (config.json + model.safetensors or its shards).
    pub fn load(gpu: Arc<Gpu>, dir: &Path, opts: &LoadOptions) -> Result<Model> {
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

    pub fn from_checkpoint(
        gpu: Arc<Gpu>,
        config: Config,
        ckpt: &Checkpoint,
        opts: &LoadOptions,
    ) -> Result<Model> {
        let max_chunk_bytes = Self::check_fits(&gpu, &config, opts)?;
        let t0 = std::time::Instant::now();
        let weights = loader::load_weights(ckpt, &config, |name, data, rows, cols| {
            GpuTensor::upload(
                &gpu,
                name,
                &data,
                rows,
                cols,
                stored_as(name, rows, opts.dtype),
                max_chunk_bytes,
            )
        })?;
        if weights.wpe.chunks.len() != 1 {
            return Err(Error::Limits(
                "the position table does not fit one binding on this adapter".into(),
            ));
        }
        let pipelines = Pipelines::new(&gpu, opts.dtype);
        let zero = gpu.storage("zero", 4);
        gpu.wait()?;
        let model = Model {
            gpu,
            config,
            weights,
            pipelines,
            zero,
            max_chunk_bytes,
        };
        log::info!(
            "loaded {} layers, C = {}, V = {}: {:.1} MB of weights in {:.2} s",
            model.config.n_layer,
            model.config.n_embd,
            model.config.vocab_size,
            model.weight_bytes() as f64 / 1e6,
            t0.elapsed().as_secs_f64()
        );
        Ok(model)
    }

    /// A model of shape `config` with pseudo-random weights generated on the GPU (for `wgpt
    /// bench`: no checkpoint, nothing crosses the bus). Matrices are uniform in +-0.02 as GPT-2's
    /// init, layernorm gains 1 +- 0.02.
    pub fn random(gpu: Arc<Gpu>, config: Config, opts: &LoadOptions, seed: u32) -> Result<Model> {
        let max_chunk_bytes = Self::check_fits(&gpu, &config, opts)?;
        let pipelines = Pipelines::new(&gpu, opts.dtype);
        let fill_f32 = kernels::pipeline(&gpu, "fill_random", None, &[("PACK_F16", 0.0)]);
        let fill_f16 = kernels::pipeline(&gpu, "fill_random", None, &[("PACK_F16", 1.0)]);
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        let mut salt = seed;
        let weights = loader::build_weights(&config, false, |name, rows, cols, _| {
            let center = if name.contains("ln_") && name.ends_with(".weight") {
                1.0
            } else {
                0.0
            };
            let dtype = stored_as(name, rows, opts.dtype);
            let fill = if dtype == WeightDtype::F16 {
                &fill_f16
            } else {
                &fill_f32
            };
            GpuTensor::with_chunks(name, rows, cols, dtype, max_chunk_bytes, |label, _, n| {
                let words = (n * cols * dtype.bytes() / 4) as u32;
                let buf = gpu.storage(label, words as u64 * 4);
                salt = salt.wrapping_add(0x9E37_79B9);
                let params = FillParams {
                    n: words,
                    seed: salt,
                    scale: 0.02,
                    center,
                };
                let bind = kernels::bind(
                    &gpu,
                    fill,
                    "fill_random",
                    &[&gpu.uniform("fill", &params), &buf],
                );
                let groups = words.div_ceil(256);
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(fill);
                pass.set_bind_group(0, &bind, &[]);
                pass.dispatch_workgroups(groups.min(65535), groups.div_ceil(65535), 1);
                buf
            })
        })?;
        gpu.queue.submit([enc.finish()]);
        let zero = gpu.storage("zero", 4);
        gpu.wait()?;
        Ok(Model {
            gpu,
            config,
            weights,
            pipelines,
            zero,
            max_chunk_bytes,
        })
    }

    /// The binding size weights are split below; errors if a layer cannot fit at all.
    fn check_fits(gpu: &Gpu, config: &Config, opts: &LoadOptions) -> Result<u64> {
        let max_chunk_bytes = opts
            .max_chunk_bytes
            .unwrap_or(u64::MAX)
            .min(gpu.max_binding_bytes());
        let widest = config.n_inner.max(3 * config.n_embd) as u64 * 4;
        let kv_layer = (config.n_positions * config.n_embd * 4) as u64;
        if kv_layer > max_chunk_bytes || widest > max_chunk_bytes {
            return Err(Error::Limits(format!(
                "one layer's KV cache needs {kv_layer} bytes in one binding, the adapter allows {max_chunk_bytes}; \
                 try another adapter"
            )));
        }
        Ok(max_chunk_bytes)
    }

    /// The output projection: an explicit `lm_head` or the tied token embedding. (V, C)
    pub(crate) fn head(&self) -> &GpuTensor {
        self.weights.lm_head.as_ref().unwrap_or(&self.weights.wte)
    }

    /// Bytes of weights on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        let w = &self.weights;
        let layers: u64 = w
            .layers
            .iter()
            .map(|l| {
                [
                    &l.ln_1_w,
                    &l.ln_1_b,
                    &l.c_attn_w,
                    &l.c_attn_b,
                    &l.attn_proj_w,
                    &l.attn_proj_b,
                    &l.ln_2_w,
                    &l.ln_2_b,
                    &l.c_fc_w,
                    &l.c_fc_b,
                    &l.mlp_proj_w,
                    &l.mlp_proj_b,
                ]
                .iter()
                .map(|t| t.bytes())
                .sum::<u64>()
            })
            .sum();
        layers
            + w.wte.bytes()
            + w.wpe.bytes()
            + w.ln_f_w.bytes()
            + w.ln_f_b.bytes()
            + w.lm_head.as_ref().map_or(0, |t| t.bytes())
    }

    /// Weight bytes one decode step reads: every block's matrices and vectors, the final
    /// layernorm and the head (the embedding rows it gathers are negligible).
    pub fn decode_weight_bytes(&self) -> u64 {
        let w = &self.weights;
        self.weight_bytes()
            - w.wte.bytes()
            - w.wpe.bytes()
            - w.lm_head.as_ref().map_or(0, |t| t.bytes())
            + self.head().bytes()
    }

    /// FLOPs of a prefill of `t` tokens: 2 per multiply-add of the block matmuls, causal attention
    /// (QK^T and AV over on average t/2 keys) and the head for the last row.
    pub fn prefill_flops(&self, t: usize) -> f64 {
        let c = &self.config;
        let (l, ce, inner, t) = (
            c.n_layer as f64,
            c.n_embd as f64,
            c.n_inner as f64,
            t as f64,
        );
        let matmul = 2.0 * t * l * (4.0 * ce * ce + 2.0 * ce * inner);
        let attention = 2.0 * l * t * t * ce;
        matmul + attention + 2.0 * c.vocab_size as f64 * ce
    }

    /// Number of weights (elements, whatever their storage).
    pub fn params(&self) -> u64 {
        let w = &self.weights;
        let n = |t: &GpuTensor| (t.rows * t.cols) as u64;
        let layers: u64 = w
            .layers
            .iter()
            .map(|l| {
                [
                    &l.ln_1_w,
                    &l.ln_1_b,
                    &l.c_attn_w,
                    &l.c_attn_b,
                    &l.attn_proj_w,
                    &l.attn_proj_b,
                    &l.ln_2_w,
                    &l.ln_2_b,
                    &l.c_fc_w,
                    &l.c_fc_b,
                    &l.mlp_proj_w,
                    &l.mlp_proj_b,
                ]
                .iter()
                .map(|t| n(t))
                .sum::<u64>()
            })
            .sum();
        layers
            + n(&w.wte)
            + n(&w.wpe)
            + n(&w.ln_f_w)
            + n(&w.ln_f_b)
            + w.lm_head.as_ref().map_or(0, n)
    }

    /// How the weight matrices are stored.
    pub fn dtype(&self) -> WeightDtype {
        self.weights.wte.dtype
    }

    /// Number of buffers the token embedding was split into (1 unless it exceeds one binding).
    pub fn wte_chunks(&self) -> usize {
        self.weights.wte.chunks.len()
    }
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

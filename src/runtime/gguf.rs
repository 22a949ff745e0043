//! Loading a GGUF file: its metadata as the config, its tensors uploaded packed
//! ([`crate::gguf::Source`]), one tensor at a time straight from the mapped file.

use std::sync::Arc;

use super::{LoadOptions, Model, Placement, inv_freq_tensor, texture_linear, upload_tensor};
use crate::gguf::Gguf;
use crate::gpu::Engine;
use crate::gpu::tensor::{GpuTensor, WeightDtype};
use crate::loader;
use crate::{Config, Result};

impl Model {
    /// Loads a GGUF file's model: the config from its metadata ([`Gguf::config`]), each matrix
    /// uploaded in the GPU format that holds its block type exactly
    /// ([`crate::gguf::packed_as`]; `opts.dtype` does not apply), vectors as f32. The layer
    /// norms stay separate dispatches: folding their gains needs the weights in f32.
    pub fn from_gguf(gpu: Arc<Engine>, gguf: &Gguf, opts: &LoadOptions) -> Result<Model> {
        gguf.check_types()?;
        let config = gguf.config()?;
        if opts.dtype != WeightDtype::F32 {
            log::warn!(
                "a GGUF file keeps its own block formats: dtype {} ignored",
                opts.dtype.name()
            );
        }
        gpu.clone()
            .scoped(|| Self::upload_gguf(gpu, config, gguf, opts))
    }

    fn upload_gguf(
        gpu: Arc<Engine>,
        config: Config,
        gguf: &Gguf,
        opts: &LoadOptions,
    ) -> Result<Model> {
        let max_chunk_bytes = Self::check_fits(&gpu, &config, opts)?;
        let textures = texture_linear(&gpu, &config, opts)?;
        let t0 = std::time::Instant::now();
        let explicit_head = gguf.tensor("output.weight").is_some();
        let placement = Placement::new(&gpu, textures, max_chunk_bytes, !explicit_head);
        let count = |_: &str, rows: usize, cols: usize, _| Ok((rows * cols) as u64);
        let total = loader::build_weights(&config, explicit_head, count)?
            .all()
            .sum::<u64>();
        let mut done = 0;
        let weights = loader::build_weights(&config, explicit_head, |name, rows, cols, _| {
            if name == "rope.inv_freq" {
                let rope = config
                    .rope
                    .as_ref()
                    .expect("rotary models have a rope config");
                return Ok(inv_freq_tensor(&gpu, &rope.inv_freq(config.head_dim)));
            }
            let src = gguf.source(&config, name, rows, cols)?;
            if src.widened {
                log::warn!(
                    "{name}: interleaved GGUF tensors of types no one format holds; stored as f32"
                );
            }
            // A vector's source rows are its elements.
            let width = if rows == 1 { cols } else { 1 };
            let mut parts = Vec::new();
            for &(row0, n, dtype) in src.runs() {
                let shape = if rows == 1 { (1, cols) } else { (n, cols) };
                let mut read =
                    |r: usize, k: usize| Ok(src.encoded(dtype, (row0 + r) * width, k * width));
                parts.push(upload_tensor(&placement, name, shape, dtype, &mut read)?);
            }
            let t = match parts.len() {
                1 => parts.pop().expect("one part"),
                _ => GpuTensor::stack(parts),
            };
            src.release();
            opts.advance(&mut done, (rows * cols) as u64, total);
            Ok(t)
        })?;
        placement.up.finish()?;
        Self::finish(
            gpu,
            config,
            weights,
            opts,
            (max_chunk_bytes, textures, false),
            t0,
        )
    }
}

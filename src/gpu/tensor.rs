//! Weights on the GPU: a 2-D f32 matrix split by rows into buffers that each fit one binding.
//!
//! Adapters cap how much of a buffer one shader binding may see (`max_storage_buffer_binding_size`:
//! 128 MiB on lavapipe, GPT-2's f32 token embedding is 154 MB). A matrix above that cap is stored as
//! several row ranges; kernels that read it run once per range.

use crate::gpu::Gpu;
use crate::{Error, Result};

/// How a weight matrix is stored on the GPU. Kernels always compute in f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightDtype {
    #[default]
    F32,
    /// IEEE half, two per u32 word (`unpack2x16float` in WGSL: no shader-f16 feature needed).
    F16,
}

impl WeightDtype {
    pub fn bytes(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::F16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
        }
    }
}

impl std::str::FromStr for WeightDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(WeightDtype::F32),
            "f16" => Ok(WeightDtype::F16),
            other => Err(Error::Input(format!(
                "unknown weight dtype {other:?}; use f32 or f16"
            ))),
        }
    }
}

/// One row range of a [`GpuTensor`].
pub struct Chunk {
    pub buffer: wgpu::Buffer,
    /// First row of the matrix held by this buffer.
    pub row0: usize,
    pub rows: usize,
}

/// One row range of a [`GpuTensor`] held as an rgba32float texture (see [`Gpu::texture`]).
pub struct TextureChunk {
    pub view: wgpu::TextureView,
    pub row0: usize,
    pub rows: usize,
}

/// A (rows, cols) matrix (a vector is one row) in one or more GPU buffers, or textures, or both
/// (the token table feeds the embedding from buffers and a tied head from textures).
pub struct GpuTensor {
    pub rows: usize,
    pub cols: usize,
    pub dtype: WeightDtype,
    /// Texture copies of the matrix, in row ranges, when the linear kernels read textures.
    pub textures: Vec<TextureChunk>,
    pub chunks: Vec<Chunk>,
}

impl GpuTensor {
    /// Uploads `data` (row-major, `rows * cols` values), splitting into buffers of at most
    /// `max_bytes` each.
    pub fn upload(
        gpu: &Gpu,
        label: &str,
        data: &[f32],
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
        max_bytes: u64,
    ) -> Result<Self> {
        debug_assert_eq!(data.len(), rows * cols);
        Self::with_chunks(label, rows, cols, dtype, max_bytes, |name, row0, n| {
            let part = &data[row0 * cols..(row0 + n) * cols];
            match dtype {
                WeightDtype::F32 => gpu.storage_init(name, bytemuck::cast_slice(part)),
                WeightDtype::F16 => {
                    let halves: Vec<half::f16> =
                        part.iter().map(|&v| half::f16::from_f32(v)).collect();
                    gpu.storage_init(name, bytemuck::cast_slice(&halves))
                }
            }
        })
    }

    /// Splits (rows, cols) into row ranges of at most `max_bytes` and asks `make(label, row0, n)`
    /// for each range's buffer.
    pub fn with_chunks(
        label: &str,
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
        max_bytes: u64,
        mut make: impl FnMut(&str, usize, usize) -> wgpu::Buffer,
    ) -> Result<Self> {
        let row_bytes = (cols * dtype.bytes()) as u64;
        let rows_per_chunk = (max_bytes / row_bytes) as usize;
        if rows_per_chunk == 0 {
            return Err(Error::Limits(format!(
                "one row of {label} takes {row_bytes} bytes, above the adapter's largest binding of {max_bytes} bytes"
            )));
        }
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < rows {
            let n = rows_per_chunk.min(rows - row0);
            let name = if n == rows {
                label.to_string()
            } else {
                format!("{label}[{row0}..{}]", row0 + n)
            };
            chunks.push(Chunk {
                buffer: make(&name, row0, n),
                row0,
                rows: n,
            });
            row0 += n;
        }
        Ok(GpuTensor {
            rows,
            cols,
            dtype,
            textures: Vec::new(),
            chunks,
        })
    }

    /// A matrix held only as weight textures (see [`Gpu::weight_texture`]) of at most `max_rows`
    /// rows each.
    pub fn upload_texture(
        gpu: &Gpu,
        label: &str,
        data: &[f32],
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
        max_rows: usize,
    ) -> Self {
        GpuTensor {
            rows,
            cols,
            dtype,
            textures: Self::texture_chunks(label, rows, max_rows, |name, row0, n| {
                gpu.weight_texture_init(name, &data[row0 * cols..(row0 + n) * cols], n, cols, dtype)
            }),
            chunks: Vec::new(),
        }
    }

    /// Row ranges of at most `max_rows`, each made into a texture by `make(label, row0, n)`.
    pub fn texture_chunks(
        label: &str,
        rows: usize,
        max_rows: usize,
        mut make: impl FnMut(&str, usize, usize) -> wgpu::Texture,
    ) -> Vec<TextureChunk> {
        (0..rows)
            .step_by(max_rows.max(1))
            .map(|row0| {
                let n = max_rows.min(rows - row0);
                let name = format!("{label}[{row0}..{}] texture", row0 + n);
                TextureChunk {
                    view: make(&name, row0, n).create_view(&Default::default()),
                    row0,
                    rows: n,
                }
            })
            .collect()
    }

    /// The buffer of a tensor that is known to be in one piece (vectors, per-layer matrices).
    pub fn single(&self) -> &wgpu::Buffer {
        &self.chunks[0].buffer
    }

    pub fn bytes(&self) -> u64 {
        (self.rows * self.cols * self.dtype.bytes()) as u64
    }
}

//! Weights on the GPU: a 2-D f32 matrix split by rows into buffers that each fit one binding.
//!
//! Adapters cap how much of a buffer one shader binding may see (`max_storage_buffer_binding_size`:
//! 128 MiB on lavapipe, GPT-2's f32 token embedding is 154 MB). A matrix above that cap is stored as
//! several row ranges; kernels that read it run once per range.

use crate::gpu::Gpu;
use crate::{Error, Result};

/// One row range of a [`GpuTensor`].
pub struct Chunk {
    pub buffer: wgpu::Buffer,
    /// First row of the matrix held by this buffer.
    pub row0: usize,
    pub rows: usize,
}

/// A (rows, cols) f32 matrix (a vector is one row) in one or more GPU buffers.
pub struct GpuTensor {
    pub rows: usize,
    pub cols: usize,
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
        max_bytes: u64,
    ) -> Result<Self> {
        debug_assert_eq!(data.len(), rows * cols);
        Self::with_chunks(label, rows, cols, max_bytes, |name, row0, n| {
            gpu.storage_init(
                name,
                bytemuck::cast_slice(&data[row0 * cols..(row0 + n) * cols]),
            )
        })
    }

    /// Splits (rows, cols) into row ranges of at most `max_bytes` and asks `make(label, row0, n)`
    /// for each range's buffer.
    pub fn with_chunks(
        label: &str,
        rows: usize,
        cols: usize,
        max_bytes: u64,
        mut make: impl FnMut(&str, usize, usize) -> wgpu::Buffer,
    ) -> Result<Self> {
        let row_bytes = (cols * 4) as u64;
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
        Ok(GpuTensor { rows, cols, chunks })
    }

    /// The buffer of a tensor that is known to be in one piece (vectors, per-layer matrices).
    pub fn single(&self) -> &wgpu::Buffer {
        &self.chunks[0].buffer
    }

    pub fn bytes(&self) -> u64 {
        (self.rows * self.cols * 4) as u64
    }
}

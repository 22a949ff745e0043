//! Weights on the GPU: a 2-D f32 matrix split by rows into buffers that each fit one binding.
//!
//! Adapters cap how much of a buffer one shader binding may see (`max_storage_buffer_binding_size`:
//! 128 MiB on lavapipe, GPT-2's f32 token embedding is 154 MB). A matrix above that cap is stored as
//! several row ranges; kernels that read it run once per range.

use crate::gpu::upload::Uploader;
use crate::loader::ReadRows;
use crate::{Error, Result};

/// How a weight matrix is stored on the GPU. Kernels always compute in f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightDtype {
    /// Single precision, 4 bytes per value (the default).
    #[default]
    F32,
    /// IEEE half, two per u32 word (`unpack2x16float` in WGSL: no shader-f16 feature needed).
    F16,
    /// Symmetric int8 with one f32 scale per block of [`Q8_BLOCK`] consecutive weights along a
    /// row (like llama.cpp's Q8_0). A row of K weights is stored as K int8 (four per word), then
    /// a scale area of K / 128 16-byte texels (rounded up) holding scales of its group of four
    /// rows: see [`encode`]. Needs K % 32 == 0; storage is padded to whole groups of four rows.
    Q8,
    /// Unsigned 4-bit weights with an f32 scale and minimum per block of 32 along a row (like
    /// llama.cpp's Q4_1; GGUF's Q4_0, Q4_1 and Q4_K load into it exactly): see
    /// [`crate::gpu::format::Nibbles`]. Needs K % 32 == 0.
    Q4,
    /// 5-bit weights, as q4 with a plane of high bits (like Q5_1; GGUF's Q5_0, Q5_1 and Q5_K).
    Q5,
    /// 6-bit weights with a scale per 16 (like Q6_K, which loads into it exactly).
    Q6,
    /// q4 with its scale and minimum in f16: 20 bytes per 32 weights, as Q4_1 (GGUF's Q4_0 and
    /// Q4_1 load into it exactly, and at their files' size).
    Q4H,
    /// q5 with its scale and minimum in f16, as Q5_1 (GGUF's Q5_0 and Q5_1 load into it).
    Q5H,
}

pub use crate::gpu::format::{Q8_BLOCK, Q8_GROUP};

impl WeightDtype {
    /// Every storage format.
    pub const ALL: [WeightDtype; 8] = [
        WeightDtype::F32,
        WeightDtype::F16,
        WeightDtype::Q8,
        WeightDtype::Q4,
        WeightDtype::Q5,
        WeightDtype::Q6,
        WeightDtype::Q4H,
        WeightDtype::Q5H,
    ];

    /// Bytes one stored row of `cols` weights takes (for q8: the int8s and the padded scales).
    pub fn row_bytes(self, cols: usize) -> usize {
        self.format().row_bytes(cols)
    }

    /// Rows stored for a matrix of `rows` rows: padded to whole groups of its format's.
    pub fn stored_rows(self, rows: usize) -> usize {
        rows.next_multiple_of(self.format().group())
    }

    /// `"f32"`, `"f16"`, `"q8"`, `"q6"`, `"q5"`, `"q4"`, `"q5h"` or `"q4h"`, the spelling
    /// [`FromStr`](std::str::FromStr) accepts.
    pub fn name(self) -> &'static str {
        self.format().name()
    }
}

impl std::str::FromStr for WeightDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(WeightDtype::F32),
            "f16" => Ok(WeightDtype::F16),
            "q8" => Ok(WeightDtype::Q8),
            "q4" => Ok(WeightDtype::Q4),
            "q5" => Ok(WeightDtype::Q5),
            "q6" => Ok(WeightDtype::Q6),
            "q4h" => Ok(WeightDtype::Q4H),
            "q5h" => Ok(WeightDtype::Q5H),
            other => Err(Error::option(
                "LoadOptions::dtype",
                format!("{other:?}"),
                "f32, f16, q8, q6, q5, q4, q5h or q4h",
            )),
        }
    }
}

/// One row range of a [`GpuTensor`].
pub struct Chunk {
    /// Storage buffer holding rows `row0 .. row0 + rows`, row-major in the tensor's dtype.
    pub buffer: wgpu::Buffer,
    /// First row of the matrix held by this buffer.
    pub row0: usize,
    /// Number of rows in this buffer.
    pub rows: usize,
    /// How its rows are stored (a tensor stacked from parts of different formats has chunks of
    /// each: [`GpuTensor::stack`]).
    pub dtype: WeightDtype,
}

/// One row range of a [`GpuTensor`] held as a texture (weights: raw bits in rgba32uint, see
/// [`Engine::weight_texture`]).
pub struct TextureChunk {
    /// View of the texture: one texel column per matrix row (transposed, see
    /// [`Engine::weight_texture`]).
    pub view: wgpu::TextureView,
    /// First row of the matrix held by this texture.
    pub row0: usize,
    /// Number of rows in this texture.
    pub rows: usize,
    /// How its rows are stored.
    pub dtype: WeightDtype,
}

/// A (rows, cols) matrix (a vector is one row) in one or more GPU buffers, or textures, or both
/// (the token table feeds the embedding from buffers and a tied head from textures).
pub struct GpuTensor {
    /// Rows of the matrix (1 for a vector such as a bias or layer-norm gain).
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
    /// How the values are stored (kernels compute in f32 either way); for a tensor stacked from
    /// parts of different formats, its first part's (each chunk names its own).
    pub dtype: WeightDtype,
    /// Texture copies of the matrix, in row ranges, when the linear kernels read textures.
    pub textures: Vec<TextureChunk>,
    /// Buffer row ranges covering the matrix in order; empty for a texture-only tensor.
    pub chunks: Vec<Chunk>,
    /// A weight with the layer norm before it folded in (`loader::LnFold`): the sums of its
    /// rows as stored (rows), which decode's GEMVs standardising their input need (NORM).
    pub row_sums: Option<wgpu::Buffer>,
}

impl GpuTensor {
    /// Uploads a (rows, cols) matrix stored as `dtype`, split into buffers of at most
    /// `max_bytes`, reading it in blocks of rows from `read(row0, n, out)` into `up`'s staging
    /// buffer: no full host copy of the matrix is ever made.
    pub fn upload(
        up: &Uploader,
        label: &str,
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
        max_bytes: u64,
        read: &mut ReadRows,
    ) -> Result<Self> {
        let mut encoded = f32_rows_encoded(read, cols, dtype);
        Self::upload_encoded(up, label, rows, cols, dtype, max_bytes, &mut encoded)
    }

    /// [`GpuTensor::upload`] from rows already in `dtype`'s encoding: `read(row0, n)` gives rows
    /// `row0 .. row0 + n` (`row0` starting a group) as [`encode`] lays them out (a GGUF file's
    /// blocks, repacked).
    pub fn upload_encoded(
        up: &Uploader,
        label: &str,
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
        max_bytes: u64,
        read: &mut ReadEncoded,
    ) -> Result<Self> {
        check_cols(label, cols, dtype)?;
        let row_bytes = dtype.row_bytes(cols);
        Self::with_chunks(label, rows, cols, dtype, max_bytes, |name, row0, n| {
            let bytes = (dtype.stored_rows(n) * row_bytes) as u64;
            let buf = up.gpu().device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(name),
                size: bytes.next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT).max(4),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            for (r, nb) in blocks(n, cols) {
                up.buffer(&buf, (r * row_bytes) as u64, &read(row0 + r, nb)?)?;
            }
            Ok(buf)
        })
    }

    /// Uploads a (rows, cols) matrix as weight textures (see [`Engine::weight_texture`]) of at most
    /// `max_rows` rows each, in blocks of rows from `read` like [`GpuTensor::upload`].
    pub fn upload_texture(
        up: &Uploader,
        label: &str,
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
        max_rows: usize,
        read: &mut ReadRows,
    ) -> Result<Vec<TextureChunk>> {
        let mut encoded = f32_rows_encoded(read, cols, dtype);
        Self::upload_texture_encoded(up, label, rows, cols, dtype, max_rows, &mut encoded)
    }

    /// [`GpuTensor::upload_texture`] from rows already encoded, as [`GpuTensor::upload_encoded`].
    pub fn upload_texture_encoded(
        up: &Uploader,
        label: &str,
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
        max_rows: usize,
        read: &mut ReadEncoded,
    ) -> Result<Vec<TextureChunk>> {
        check_cols(label, cols, dtype)?;
        let mut failed = None;
        let chunks = Self::texture_chunks(label, rows, max_rows, dtype, |name, row0, n| {
            let tex = up.gpu().weight_texture(name, n, cols, dtype);
            for (r, nb) in blocks(n, cols) {
                let written = read(row0 + r, nb).and_then(|e| up.weight_rows(&tex, r as u32, &e));
                if let Err(e) = written {
                    failed.get_or_insert(e);
                    break;
                }
            }
            tex
        });
        failed.map_or(Ok(chunks), Err)
    }

    /// Splits (rows, cols) into row ranges of at most `max_bytes` and asks `make(label, row0, n)`
    /// for each range's buffer.
    pub fn with_chunks(
        label: &str,
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
        max_bytes: u64,
        mut make: impl FnMut(&str, usize, usize) -> Result<wgpu::Buffer>,
    ) -> Result<Self> {
        let row_bytes = dtype.row_bytes(cols) as u64;
        // Chunks of whole q8 row groups, so padding never takes one past `max_bytes`.
        let group = dtype.stored_rows(1);
        let rows_per_chunk = (max_bytes / row_bytes) as usize / group * group;
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
                buffer: make(&name, row0, n)?,
                row0,
                rows: n,
                dtype,
            });
            row0 += n;
        }
        Ok(GpuTensor {
            rows,
            cols,
            dtype,
            textures: Vec::new(),
            chunks,
            row_sums: None,
        })
    }

    /// A matrix held only as textures.
    pub fn from_textures(
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
        textures: Vec<TextureChunk>,
    ) -> Self {
        GpuTensor {
            rows,
            cols,
            dtype,
            textures,
            chunks: Vec::new(),
            row_sums: None,
        }
    }

    /// Row ranges of at most `max_rows` stored as `dtype`, each made into a texture by
    /// `make(label, row0, n)`.
    pub fn texture_chunks(
        label: &str,
        rows: usize,
        max_rows: usize,
        dtype: WeightDtype,
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
                    dtype,
                }
            })
            .collect()
    }

    /// The buffer of a tensor that is known to be in one piece (vectors, per-layer matrices).
    pub fn single(&self) -> &wgpu::Buffer {
        &self.chunks[0].buffer
    }

    /// Size of the matrix in bytes as stored (q8: int8s, scales and padding rows), one copy.
    pub fn bytes(&self) -> u64 {
        let size = |rows: usize, d: WeightDtype| (d.stored_rows(rows) * d.row_bytes(self.cols)) as u64;
        match self.is_mixed() {
            false => size(self.rows, self.dtype),
            true => self.formats().map(|(rows, d)| size(rows, d)).sum(),
        }
    }

    /// (rows, format) of each stored piece: the buffer chunks, else the textures.
    pub fn formats(&self) -> impl Iterator<Item = (usize, WeightDtype)> + '_ {
        let buffers = self.chunks.iter().map(|c| (c.rows, c.dtype));
        let textures = self.textures.iter().map(|c| (c.rows, c.dtype));
        let (b, t) = match self.chunks.is_empty() {
            true => (None, Some(textures)),
            false => (Some(buffers), None),
        };
        b.into_iter().flatten().chain(t.into_iter().flatten())
    }

    /// Whether its pieces are stored in more than one format.
    pub fn is_mixed(&self) -> bool {
        self.formats().any(|(_, d)| d != self.dtype)
    }

    /// The matrices `parts` (of one width, each in its own format) one above the other: their
    /// chunks and textures, renumbered. A GGUF file's fused q/k/v whose parts are of different
    /// block types stays packed this way, each chunk running its format's kernel.
    pub fn stack(parts: Vec<GpuTensor>) -> GpuTensor {
        let mut out = GpuTensor {
            rows: 0,
            cols: parts.first().map_or(0, |p| p.cols),
            dtype: parts.first().map_or(WeightDtype::F32, |p| p.dtype),
            textures: Vec::new(),
            chunks: Vec::new(),
            row_sums: None,
        };
        for p in parts {
            let at = out.rows;
            out.rows += p.rows;
            (out.chunks).extend(p.chunks.into_iter().map(|c| Chunk { row0: at + c.row0, ..c }));
            (out.textures).extend(p.textures.into_iter().map(|c| TextureChunk {
                row0: at + c.row0,
                ..c
            }));
        }
        out
    }
}

/// Rows already in a dtype's encoding: `read(row0, n)`, see [`GpuTensor::upload_encoded`].
pub type ReadEncoded<'a> = dyn FnMut(usize, usize) -> Result<Vec<u8>> + 'a;

/// An encoded-rows reader over an f32 one.
pub(crate) fn f32_rows_encoded<'a>(
    read: &'a mut ReadRows,
    cols: usize,
    dtype: WeightDtype,
) -> impl FnMut(usize, usize) -> Result<Vec<u8>> + 'a {
    let mut block = Vec::new();
    move |row0, n| {
        block.clear();
        read(row0, n, &mut block)?;
        Ok(encode(&block, cols, dtype))
    }
}

/// Row blocks `(first, count)` of about 1 MiB of f32 covering `n` rows of `cols` values, each
/// starting on a q8 row group.
fn blocks(n: usize, cols: usize) -> impl Iterator<Item = (usize, usize)> {
    let per = ((1 << 18) / cols.max(1)).next_multiple_of(Q8_GROUP);
    (0..n).step_by(per).map(move |r| (r, per.min(n - r)))
}

/// Block formats quantise whole blocks along a row: rows must be whole blocks.
fn check_cols(label: &str, cols: usize, dtype: WeightDtype) -> Result<()> {
    let block = dtype.format().block();
    if !cols.is_multiple_of(block) {
        return Err(Error::DtypeUnsupported {
            dtype: dtype.name(),
            what: format!("rows of a multiple of {block} weights, but {label} has rows of {cols}"),
        });
    }
    Ok(())
}

/// Row-major rows of `cols` f32 values as the little-endian bytes of `dtype`, `row_bytes(cols)`
/// per stored row ([`Format::encode`](crate::gpu::format::Format::encode)); the first row
/// starts a group. Rows are padded with zeros to whole groups.
pub fn encode(values: &[f32], cols: usize, dtype: WeightDtype) -> Vec<u8> {
    dtype.format().encode(values, cols)
}

//! Weight storage formats, each behind one [`Format`]: how a (rows, cols) f32 matrix is packed
//! into GPU memory (the same bytes fill a buffer or a weight texture, 16 bytes a texel), the
//! code by which kernels pick its WGSL decoder (`shaders/format.wgsl` and
//! `shaders/format_<name>.wgsl`), and its exact CPU dequantisation, which the kernels' CPU twins
//! compute with. A new block format (GGUF's Q4_0, Q4_K, Q6_K, ...) is one implementation here,
//! one `format_<name>.wgsl` and a kernel test.

use crate::gpu::tensor::WeightDtype;

/// A weight storage format.
pub trait Format: Sync {
    /// Its name (`"q8"`), as `LoadOptions::dtype` and `--dtype` spell it.
    fn name(&self) -> &'static str;
    /// The `WEIGHT_FORMAT` code kernels branch on (`format.wgsl`'s `FORMAT_*`).
    fn code(&self) -> u32;
    /// Weights along a row that share a scale (1 for plain floats); rows must be whole blocks.
    fn block(&self) -> usize;
    /// Rows a kernel invocation reads together, whose storage comes in groups (q8's scales of
    /// four rows share a texel): matrices are padded, and chunks start, at a whole group.
    fn group(&self) -> usize {
        1
    }
    /// Bytes one stored row of `cols` weights takes.
    fn row_bytes(&self, cols: usize) -> usize;
    /// Row-major rows of `cols` values (the first starting a group) as stored:
    /// `row_bytes(cols)` per row, rows padded to whole groups.
    fn encode(&self, values: &[f32], cols: usize) -> Vec<u8>;
    /// The values the kernels compute with, from `rows` rows of [`encode`](Self::encode)'s
    /// bytes: exact, the CPU twin of the WGSL decoder.
    fn decode(&self, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32>;
}

/// Single precision: 4 bytes a weight.
pub struct F32;
/// IEEE half: two a word (`unpack2x16float`, no shader-f16 feature needed).
pub struct F16;
/// Symmetric int8, one f32 scale per block of [`Q8_BLOCK`] along a row (like llama.cpp's
/// Q8_0): a row is its `cols` int8, then a scale area of `cols / 128` 16-byte texels (rounded
/// up) in which row `4 g + j` holds, in texel `i`, the scales of block `4 i + j` of rows
/// `4 g .. 4 g + 4` (zeros where there is no such block or row), so the four rows one
/// invocation computes read their block's scales in one fetch. `format_q8.wgsl` decodes it.
pub struct Q8;
/// Unsigned 4-bit weights with an f32 scale and minimum per block of [`Q4_BLOCK`] along a row,
/// w = q scale + min: GGUF's Q4_0, Q4_1 and Q4_K repack into it exactly (`crate::gguf`). A row
/// is its `cols / 8` words of nibbles (word `j` of a block holds weights `8 j .. 8 j + 4` in
/// the low nibbles of its bytes and `8 j + 4 .. 8 j + 8` in the high ones, so a 16-byte texel
/// is one block), then a scale area of `cols / 128` 32-byte pairs of texels (rounded up) in
/// which row `4 g + j` holds, in pair `i`, the scales then the minimums of block `4 i + j` of
/// rows `4 g .. 4 g + 4`. `format_q4.wgsl` decodes it.
pub struct Q4;

/// Weights per q8 scale.
pub const Q8_BLOCK: usize = 32;
/// Rows whose scales of one block share a 16-byte texel.
pub const Q8_GROUP: usize = 4;
/// Weights per q4 scale and minimum.
pub const Q4_BLOCK: usize = 32;

impl WeightDtype {
    /// Its storage format.
    pub fn format(self) -> &'static dyn Format {
        match self {
            WeightDtype::F32 => &F32,
            WeightDtype::F16 => &F16,
            WeightDtype::Q8 => &Q8,
            WeightDtype::Q4 => &Q4,
        }
    }
}

impl Format for F32 {
    fn name(&self) -> &'static str {
        "f32"
    }
    fn code(&self) -> u32 {
        0
    }
    fn block(&self) -> usize {
        1
    }
    fn row_bytes(&self, cols: usize) -> usize {
        4 * cols
    }
    fn encode(&self, values: &[f32], _: usize) -> Vec<u8> {
        bytemuck::cast_slice(values).to_vec()
    }
    fn decode(&self, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
        bytemuck::pod_collect_to_vec(&bytes[..4 * rows * cols])
    }
}

impl Format for F16 {
    fn name(&self) -> &'static str {
        "f16"
    }
    fn code(&self) -> u32 {
        1
    }
    fn block(&self) -> usize {
        1
    }
    fn row_bytes(&self, cols: usize) -> usize {
        2 * cols
    }
    fn encode(&self, values: &[f32], _: usize) -> Vec<u8> {
        let halves: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
        bytemuck::cast_slice(&halves).to_vec()
    }
    fn decode(&self, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
        (bytes[..2 * rows * cols].chunks(2))
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()
    }
}

impl Q8 {
    /// Where the scale of block `b` of row `r` sits in a matrix of rows of `cols`.
    fn scale_at(&self, r: usize, b: usize, cols: usize) -> usize {
        let g = r / Q8_GROUP * Q8_GROUP;
        (g + b % Q8_GROUP) * self.row_bytes(cols) + cols + 16 * (b / Q8_GROUP) + 4 * (r % Q8_GROUP)
    }
}

impl Q8 {
    /// Stores block `b` of row `r`: its 32 int8 and its scale.
    pub(crate) fn put_block(&self, out: &mut [u8], cols: usize, r: usize, b: usize, q: &[i8; 32], d: f32) {
        let at = r * self.row_bytes(cols) + b * Q8_BLOCK;
        for (o, &v) in out[at..at + Q8_BLOCK].iter_mut().zip(q) {
            *o = v as u8;
        }
        let sc = self.scale_at(r, b, cols);
        out[sc..sc + 4].copy_from_slice(&d.to_le_bytes());
    }
}

impl Format for Q8 {
    fn name(&self) -> &'static str {
        "q8"
    }
    fn code(&self) -> u32 {
        2
    }
    fn block(&self) -> usize {
        Q8_BLOCK
    }
    fn group(&self) -> usize {
        Q8_GROUP
    }
    fn row_bytes(&self, cols: usize) -> usize {
        cols + 16 * cols.div_ceil(Q8_GROUP * Q8_BLOCK)
    }
    /// Each block of 32 quantised as [`crate::reference::quantize_q8`] does: scale =
    /// max |w| / 127, q = round(w / scale).
    fn encode(&self, values: &[f32], cols: usize) -> Vec<u8> {
        let row_bytes = self.row_bytes(cols);
        let rows = values.len() / cols.max(1);
        let mut out = vec![0u8; rows.next_multiple_of(Q8_GROUP) * row_bytes];
        for (r, row) in values.chunks(cols).enumerate() {
            for (b, block) in row.chunks(Q8_BLOCK).enumerate() {
                let scale = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                let q = &mut out[r * row_bytes + b * Q8_BLOCK..][..Q8_BLOCK];
                for (d, &v) in q.iter_mut().zip(block) {
                    let x = if scale > 0.0 { (v / scale).round() } else { 0.0 };
                    *d = x.clamp(-127.0, 127.0) as i8 as u8;
                }
                let at = self.scale_at(r, b, cols);
                out[at..at + 4].copy_from_slice(&scale.to_le_bytes());
            }
        }
        out
    }
    fn decode(&self, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
        let row_bytes = self.row_bytes(cols);
        let mut out = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for c in 0..cols {
                let at = self.scale_at(r, c / Q8_BLOCK, cols);
                let scale = f32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
                out.push(bytes[r * row_bytes + c] as i8 as f32 * scale);
            }
        }
        out
    }
}

impl Q4 {
    /// Where the scale of block `b` of row `r` sits in a matrix of rows of `cols` (its minimum
    /// is 16 bytes on).
    fn scale_at(&self, r: usize, b: usize, cols: usize) -> usize {
        let g = r / Q8_GROUP * Q8_GROUP;
        (g + b % Q8_GROUP) * self.row_bytes(cols) + cols / 2 + 32 * (b / Q8_GROUP) + 4 * (r % Q8_GROUP)
    }

    /// Stores block `b` of row `r`: its 32 nibbles and its scale and minimum (w = q s + m).
    pub(crate) fn put_block(&self, out: &mut [u8], cols: usize, r: usize, b: usize, q: &[u8; 32], s: f32, m: f32) {
        let at = r * self.row_bytes(cols) + b * 16;
        for j in 0..4 {
            for i in 0..4 {
                out[at + 4 * j + i] = q[8 * j + i] | (q[8 * j + 4 + i] << 4);
            }
        }
        let sc = self.scale_at(r, b, cols);
        out[sc..sc + 4].copy_from_slice(&s.to_le_bytes());
        out[sc + 16..sc + 20].copy_from_slice(&m.to_le_bytes());
    }

    /// A zeroed matrix of `rows` rows of `cols`, padded to whole groups.
    pub(crate) fn zeroed(&self, rows: usize, cols: usize) -> Vec<u8> {
        vec![0u8; rows.next_multiple_of(Q8_GROUP) * self.row_bytes(cols)]
    }
}

impl Format for Q4 {
    fn name(&self) -> &'static str {
        "q4"
    }
    fn code(&self) -> u32 {
        3
    }
    fn block(&self) -> usize {
        Q4_BLOCK
    }
    fn group(&self) -> usize {
        Q8_GROUP
    }
    fn row_bytes(&self, cols: usize) -> usize {
        cols / 2 + 32 * cols.div_ceil(Q8_GROUP * Q4_BLOCK)
    }
    /// Each block of 32 quantised as ggml's Q4_1 does: min = the smallest weight, scale =
    /// (max - min) / 15, q = round((w - min) / scale).
    fn encode(&self, values: &[f32], cols: usize) -> Vec<u8> {
        let rows = values.len() / cols.max(1);
        let mut out = self.zeroed(rows, cols);
        for (r, row) in values.chunks(cols).enumerate() {
            for (b, block) in row.chunks(Q4_BLOCK).enumerate() {
                let lo = block.iter().fold(f32::INFINITY, |m, &v| m.min(v));
                let hi = block.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let scale = (hi - lo) / 15.0;
                let mut q = [0u8; 32];
                for (d, &v) in q.iter_mut().zip(block) {
                    let x = if scale > 0.0 { ((v - lo) / scale).round() } else { 0.0 };
                    *d = x.clamp(0.0, 15.0) as u8;
                }
                self.put_block(&mut out, cols, r, b, &q, scale, lo);
            }
        }
        out
    }
    fn decode(&self, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
        let row_bytes = self.row_bytes(cols);
        let f32_at = |at: usize| f32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let mut out = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for c in 0..cols {
                let (b, i) = (c / Q4_BLOCK, c % Q4_BLOCK);
                let byte = bytes[r * row_bytes + 16 * b + 4 * (i / 8) + i % 4];
                let q = if i % 8 < 4 { byte & 15 } else { byte >> 4 };
                let sc = self.scale_at(r, b, cols);
                out.push(q as f32 * f32_at(sc) + f32_at(sc + 16));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every format's decode is the rounding its encode did: f32 exact, f16 the half rounding,
    /// q8 the reference's round trip; rows not a multiple of the group, blocks across texels.
    #[test]
    fn formats_round_trip() {
        let (rows, cols) = (7, 160);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i / cols) as f32))
            .collect();
        for dtype in [WeightDtype::F32, WeightDtype::F16, WeightDtype::Q8, WeightDtype::Q4] {
            let f = dtype.format();
            let bytes = f.encode(&values, cols);
            assert_eq!(bytes.len(), rows.next_multiple_of(f.group()) * f.row_bytes(cols));
            let got = f.decode(&bytes, rows, cols);
            let want: Vec<f32> = match dtype {
                WeightDtype::F32 => values.clone(),
                WeightDtype::F16 => values.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
                WeightDtype::Q8 => values
                    .chunks(cols)
                    .flat_map(crate::reference::q8_round_trip)
                    .collect(),
                WeightDtype::Q4 => values.chunks(32).flat_map(q4_round_trip).collect(),
            };
            assert_eq!(got, want, "{}", f.name());
        }
    }

    /// Q4_1's quantisation of one block, written out independently of the encoder.
    fn q4_round_trip(block: &[f32]) -> Vec<f32> {
        let lo = block.iter().cloned().fold(f32::INFINITY, f32::min);
        let hi = block.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let s = (hi - lo) / 15.0;
        block
            .iter()
            .map(|&v| ((v - lo) / s).round().clamp(0.0, 15.0) * s + lo)
            .collect()
    }
}

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
    /// Bytes of a stored row before its scale area (all of it for plain floats).
    fn value_bytes(&self, cols: usize) -> usize {
        self.row_bytes(cols)
    }
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
/// 4-, 5- and 6-bit weights in blocks of [`Q4_BLOCK`] along a row: the low four bits of every
/// weight in a nibble plane (word `j` of a block holds weights `8 j .. 8 j + 4` in the low
/// nibbles of its bytes and `8 j + 4 .. 8 j + 8` in the high ones, so a 16-byte texel is one
/// block), then a plane of the high bits (q5: one word a block, bit `i` of weight `i`; q6: two
/// words a block, two bits a weight, weights 0-15 in the first), padded to whole texels, then a
/// scale area of `cols / 128` 32-byte pairs of texels (rounded up) in which row `4 g + j`
/// holds, in pair `i`, two f32 of block `4 i + j` for each of rows `4 g .. 4 g + 4`: q4 and q5
/// a scale and a minimum, w = v s + m; q6 the scales of the block's two halves of 16,
/// w = (v - 32) s. q4h and q5h hold the pair as two f16 in one word, so their scale area is
/// `cols / 128` single texels, row `4 g + j` holding in texel `i` the pair of block `4 i + j` of
/// rows `4 g .. 4 g + 4` (scale in the low half). GGUF's Q4_0 and Q4_1 repack into q4h, Q4_K
/// into q4, Q5_0 and Q5_1 into q5h, Q5_K into q5, Q6_K into q6, exactly (`crate::gguf`).
/// `format_nibbles.wgsl` decodes them.
pub struct Nibbles {
    /// Bits above the nibble: 0, 1 or 2.
    high: usize,
    /// Scale and minimum in f16 (q4h, q5h), else f32.
    half: bool,
}

/// 4-bit weights: [`Nibbles`] with no high plane (like llama.cpp's Q4_1).
pub static Q4: Nibbles = Nibbles::new(0, false);
/// 5-bit weights: [`Nibbles`] with one high bit (like llama.cpp's Q5_1).
pub static Q5: Nibbles = Nibbles::new(1, false);
/// 6-bit weights with a scale per 16: [`Nibbles`] with two high bits (like llama.cpp's Q6_K).
pub static Q6: Nibbles = Nibbles::new(2, false);
/// [`Q4`] with f16 scales and minimums: llama.cpp's Q4_1 at its size.
pub static Q4H: Nibbles = Nibbles::new(0, true);
/// [`Q5`] with f16 scales and minimums: llama.cpp's Q5_1 at its size.
pub static Q5H: Nibbles = Nibbles::new(1, true);

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
            WeightDtype::Q5 => &Q5,
            WeightDtype::Q6 => &Q6,
            WeightDtype::Q4H => &Q4H,
            WeightDtype::Q5H => &Q5H,
        }
    }

    /// Its nibble format, if it is one.
    pub fn nibbles(self) -> Option<&'static Nibbles> {
        match self {
            WeightDtype::Q4 => Some(&Q4),
            WeightDtype::Q5 => Some(&Q5),
            WeightDtype::Q6 => Some(&Q6),
            WeightDtype::Q4H => Some(&Q4H),
            WeightDtype::Q5H => Some(&Q5H),
            _ => None,
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
    fn value_bytes(&self, cols: usize) -> usize {
        cols
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

impl Nibbles {
    const fn new(high: usize, half: bool) -> Self {
        Nibbles { high, half }
    }

    /// Bytes of the high-bit plane of a row of `cols`, padded to whole texels.
    fn high_bytes(&self, cols: usize) -> usize {
        (cols * self.high).div_ceil(128) * 16
    }

    /// Bytes of the scale area for each 128 weights of a row: a texel of f16 pairs, or a pair
    /// of texels of f32.
    fn scale_bytes(&self) -> usize {
        if self.half { 16 } else { 32 }
    }

    /// Where the first f32 of block `b` of row `r` sits in a matrix of rows of `cols` (the
    /// second is 16 bytes on), or its pair of f16.
    fn scale_at(&self, r: usize, b: usize, cols: usize) -> usize {
        let g = r / Q8_GROUP * Q8_GROUP;
        let area = cols / 2 + self.high_bytes(cols);
        let texel = self.scale_bytes() * (b / Q8_GROUP);
        (g + b % Q8_GROUP) * self.row_bytes(cols) + area + texel + 4 * (r % Q8_GROUP)
    }

    /// The two values of block `b` of row `r`.
    fn scales(&self, bytes: &[u8], r: usize, b: usize, cols: usize) -> (f32, f32) {
        let at = self.scale_at(r, b, cols);
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        match self.half {
            true => {
                let w = word(at);
                let h = |bits: u32| half::f16::from_bits(bits as u16).to_f32();
                (h(w & 0xffff), h(w >> 16))
            }
            false => (f32::from_bits(word(at)), f32::from_bits(word(at + 16))),
        }
    }

    /// Stores block `b` of row `r`: its 32 values (below 2^(4 + high)) and its two f32 (q4, q5:
    /// scale and minimum; q6: the halves' scales), rounded to f16 in q4h and q5h.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn put_block(&self, out: &mut [u8], cols: usize, r: usize, b: usize, v: &[u8; 32], s: f32, m: f32) {
        let row = r * self.row_bytes(cols);
        for j in 0..4 {
            for i in 0..4 {
                out[row + 16 * b + 4 * j + i] = (v[8 * j + i] & 15) | ((v[8 * j + 4 + i] & 15) << 4);
            }
        }
        let plane = row + cols / 2;
        for (i, &x) in v.iter().enumerate() {
            let hi = (x >> 4) as u32;
            let (word, bit) = match self.high {
                0 => continue,
                1 => (b, i),
                _ => (2 * b + i / 16, 2 * (i % 16)),
            };
            let at = plane + 4 * word;
            let w = u32::from_le_bytes(out[at..at + 4].try_into().expect("4 bytes")) | (hi << bit);
            out[at..at + 4].copy_from_slice(&w.to_le_bytes());
        }
        let sc = self.scale_at(r, b, cols);
        if self.half {
            let h = |x: f32| half::f16::from_f32(x).to_bits() as u32;
            out[sc..sc + 4].copy_from_slice(&(h(s) | (h(m) << 16)).to_le_bytes());
            return;
        }
        out[sc..sc + 4].copy_from_slice(&s.to_le_bytes());
        out[sc + 16..sc + 20].copy_from_slice(&m.to_le_bytes());
    }

    /// A zeroed matrix of `rows` rows of `cols`, padded to whole groups.
    pub(crate) fn zeroed(&self, rows: usize, cols: usize) -> Vec<u8> {
        vec![0u8; rows.next_multiple_of(Q8_GROUP) * self.row_bytes(cols)]
    }

    /// One block's values and its two f32, quantised from `w`: q4 and q5 as ggml's Q4_1 and
    /// Q5_1 (min and max; v = round((w - min) / scale)), q6 as a symmetric Q6_K without the
    /// super-block (per half: scale = max |w| / 31, v = round(w / scale) + 32).
    fn quantize(&self, w: &[f32]) -> ([u8; 32], f32, f32) {
        let mut v = [0u8; 32];
        if self.high == 2 {
            let scale = |h: &[f32]| h.iter().fold(0f32, |m, x| m.max(x.abs())) / 31.0;
            let (s0, s1) = (scale(&w[..16]), scale(&w[16..]));
            for (i, (d, &x)) in v.iter_mut().zip(w).enumerate() {
                let s = if i < 16 { s0 } else { s1 };
                let q = if s > 0.0 { (x / s).round() } else { 0.0 };
                *d = (q.clamp(-32.0, 31.0) + 32.0) as u8;
            }
            return (v, s0, s1);
        }
        let top = ((16usize << self.high) - 1) as f32;
        let lo = w.iter().fold(f32::INFINITY, |m, &x| m.min(x));
        let hi = w.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        // q4h and q5h quantise against the f16 scale and minimum they store.
        let stored = |x: f32| match self.half {
            true => half::f16::from_f32(x).to_f32(),
            false => x,
        };
        let (lo, scale) = (stored(lo), stored((hi - lo) / top));
        for (d, &x) in v.iter_mut().zip(w) {
            let q = if scale > 0.0 { ((x - lo) / scale).round() } else { 0.0 };
            *d = q.clamp(0.0, top) as u8;
        }
        (v, scale, lo)
    }

    /// Value `i` (unscaled, below 2^(4 + high)) of block `b` of row `r`.
    fn value(&self, bytes: &[u8], cols: usize, r: usize, b: usize, i: usize) -> u32 {
        let row = r * self.row_bytes(cols);
        let byte = bytes[row + 16 * b + 4 * (i / 8) + i % 4];
        let nibble = if i % 8 < 4 { byte & 15 } else { byte >> 4 } as u32;
        let word = |w: usize| {
            let at = row + cols / 2 + 4 * w;
            u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
        };
        let high = match self.high {
            0 => 0,
            1 => (word(b) >> i) & 1,
            _ => (word(2 * b + i / 16) >> (2 * (i % 16))) & 3,
        };
        nibble | (high << 4)
    }
}

impl Format for Nibbles {
    fn name(&self) -> &'static str {
        match self.half {
            true => ["q4h", "q5h"][self.high],
            false => ["q4", "q5", "q6"][self.high],
        }
    }
    fn code(&self) -> u32 {
        match self.half {
            true => 6 + self.high as u32,
            false => 3 + self.high as u32,
        }
    }
    fn block(&self) -> usize {
        Q4_BLOCK
    }
    fn group(&self) -> usize {
        Q8_GROUP
    }
    fn row_bytes(&self, cols: usize) -> usize {
        cols / 2 + self.high_bytes(cols) + self.scale_bytes() * cols.div_ceil(Q8_GROUP * Q4_BLOCK)
    }
    fn value_bytes(&self, cols: usize) -> usize {
        cols / 2 + self.high_bytes(cols)
    }
    fn encode(&self, values: &[f32], cols: usize) -> Vec<u8> {
        let rows = values.len() / cols.max(1);
        let mut out = self.zeroed(rows, cols);
        for (r, row) in values.chunks(cols).enumerate() {
            for (b, block) in row.chunks(Q4_BLOCK).enumerate() {
                let (v, s, m) = self.quantize(block);
                self.put_block(&mut out, cols, r, b, &v, s, m);
            }
        }
        out
    }
    fn decode(&self, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for c in 0..cols {
                let (b, i) = (c / Q4_BLOCK, c % Q4_BLOCK);
                let v = self.value(bytes, cols, r, b, i) as f32;
                let (s, m) = self.scales(bytes, r, b, cols);
                out.push(match self.high {
                    2 => (v - 32.0) * if i < 16 { s } else { m },
                    _ => v * s + m,
                });
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
        for dtype in WeightDtype::ALL {
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
                WeightDtype::Q4 => values.chunks(32).flat_map(|b| min_max_round_trip(b, 15.0)).collect(),
                WeightDtype::Q5 => values.chunks(32).flat_map(|b| min_max_round_trip(b, 31.0)).collect(),
                WeightDtype::Q6 => values.chunks(16).flat_map(symmetric_round_trip).collect(),
                WeightDtype::Q4H => values.chunks(32).flat_map(|b| half_round_trip(b, 15.0)).collect(),
                WeightDtype::Q5H => values.chunks(32).flat_map(|b| half_round_trip(b, 31.0)).collect(),
            };
            assert_eq!(got, want, "{}", f.name());
        }
    }

    /// Q4_1's (top 15) and Q5_1's (31) quantisation of one block, written out independently
    /// of the encoder.
    fn min_max_round_trip(block: &[f32], top: f32) -> Vec<f32> {
        let lo = block.iter().cloned().fold(f32::INFINITY, f32::min);
        let hi = block.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let s = (hi - lo) / top;
        block
            .iter()
            .map(|&v| ((v - lo) / s).round().clamp(0.0, top) * s + lo)
            .collect()
    }

    /// Q4_1's and Q5_1's quantisation with an f16 scale and minimum (ggml's own, as stored).
    fn half_round_trip(block: &[f32], top: f32) -> Vec<f32> {
        let h = |x: f32| half::f16::from_f32(x).to_f32();
        let lo = block.iter().cloned().fold(f32::INFINITY, f32::min);
        let hi = block.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let (s, m) = (h((hi - lo) / top), h(lo));
        block
            .iter()
            .map(|&v| ((v - m) / s).round().clamp(0.0, top) * s + m)
            .collect()
    }

    /// q6's quantisation of a half-block of 16: v - 32 = round(w / s), s = max |w| / 31.
    fn symmetric_round_trip(half: &[f32]) -> Vec<f32> {
        let s = half.iter().fold(0f32, |m, v| m.max(v.abs())) / 31.0;
        half.iter()
            .map(|&v| (v / s).round().clamp(-32.0, 31.0) * s)
            .collect()
    }
}

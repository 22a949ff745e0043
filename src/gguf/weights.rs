//! A GGUF file's tensors in the kernels' layout (the names of [`crate::loader::Weights`]):
//! llama.cpp's names mapped to wgpt's, Llama's Q and K rows put back in Hugging Face's order
//! (convert_hf_to_gguf permutes them for ggml's rotary layout; transformers' GGUF loader undoes
//! it the same way), gate and up rows interleaved as the Llama family reads them, and each
//! matrix's blocks repacked whole into the GPU format that holds its type exactly
//! ([`packed_as`]): VRAM about the file's size, never an f32 copy of a packed matrix.

use super::dequant::{dequantize_block, f16_at, scale_min_k4};
use super::{Gguf, TensorInfo};
use crate::Result;
use crate::config::{Config, Family};
use crate::gpu::format::{Format, Q8};
use crate::gpu::tensor::WeightDtype;

/// The GPU format that holds ggml type `ty` exactly (BF16 widened to f32), or `None` for the
/// types wgpt does not read.
pub fn packed_as(ty: &str) -> Option<WeightDtype> {
    Some(match ty {
        "F32" | "BF16" => WeightDtype::F32,
        "F16" => WeightDtype::F16,
        "Q8_0" => WeightDtype::Q8,
        "Q4_0" | "Q4_1" => WeightDtype::Q4H,
        "Q5_0" | "Q5_1" => WeightDtype::Q5H,
        "Q4_K" => WeightDtype::Q4,
        "Q5_K" => WeightDtype::Q5,
        "Q6_K" => WeightDtype::Q6,
        _ => return None,
    })
}

/// One tensor of the kernels' layout, found in a GGUF file: every row (element, for a vector)
/// is a row of one of the file's tensors.
pub struct Source<'a> {
    gguf: &'a Gguf,
    parts: Vec<&'a TensorInfo>,
    /// For each row: (index into `parts`, row there).
    rows: Vec<(usize, usize)>,
    /// Values per row (1 for a vector: its elements are read as rows).
    cols: usize,
    /// How it is stored on the GPU: its row ranges, each (first row, rows, format) (see
    /// [`Source::runs`]).
    runs: Vec<(usize, usize, WeightDtype)>,
    /// A matrix whose parts are of types no one packed format holds, interleaved (a gate of
    /// Q6_K next to an up-projection of Q5_K): stored as f32.
    pub widened: bool,
}

/// How a part's rows map into the kernels' tensor.
#[derive(Clone, Copy, PartialEq)]
enum Order {
    AsStored,
    /// Undo convert_hf_to_gguf's permutation of Llama's Q or K, heads of `hs` rows.
    Unpermute {
        hs: usize,
    },
}

impl Gguf {
    /// Where the kernels' tensor `name` ((rows, cols); a vector is one row) is in the file, its
    /// parts' shapes checked against `cfg`.
    pub(crate) fn source(
        &self,
        cfg: &Config,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Source<'_>> {
        let vector = rows == 1;
        let (rows, cols) = if vector { (cols, 1) } else { (rows, cols) };
        let layout = file_names(cfg, name)
            .ok_or_else(|| self.bad(format!("holds no tensor for wgpt's {name}")))?;
        let mut parts = Vec::new();
        let mut map = Vec::with_capacity(rows);
        // Gate and up: the only tensor of two parts, interleaved row by row.
        let gated = layout.len() == 2;
        for (i, (key, order)) in layout.iter().enumerate() {
            let t = self.tensor(key).ok_or_else(|| {
                self.bad(format!(
                    "has no tensor {key:?}, which a {} model needs",
                    cfg.model_type()
                ))
            })?;
            let part_rows = if gated {
                rows / 2
            } else {
                part_rows(cfg, name, i, rows)
            };
            let want: Vec<u64> = match vector {
                true => vec![part_rows as u64],
                false => vec![cols as u64, part_rows as u64],
            };
            if vector && t.ty.block != 1 {
                return Err(self.bad(format!(
                    "tensor {key:?} is a vector stored as {}; wgpt reads vectors (norms, biases) \
                     as F32, F16 or BF16",
                    t.ty.name
                )));
            }
            if t.dims != want {
                return Err(self.bad(format!(
                    "tensor {key:?} has shape {:?}, the file's metadata implies {want:?}",
                    t.dims
                )));
            }
            parts.push(t);
            if !gated {
                map.extend((0..part_rows).map(|r| (i, order.source_row(r))));
            }
        }
        if gated {
            map = (0..rows).map(|r| (r % 2, r / 2)).collect();
        }
        let types: Vec<WeightDtype> = (parts.iter())
            .map(|t| packed_as(t.ty.name).unwrap_or(WeightDtype::F32))
            .collect();
        let (runs, widened) = runs(&map, &types, vector);
        Ok(Source {
            gguf: self,
            parts,
            rows: map,
            cols,
            runs,
            widened,
        })
    }
}

/// The row ranges of a tensor whose row r is row `map[r].1` of part `map[r].0` (of packed
/// format `types[part]`), each (first row, rows, format), and whether it had to be widened to
/// f32. One range when the parts share a format (vectors are f32 whatever their parts are);
/// one per part when they do not and lie one after another (a fused q/k/v of Q4_K, Q4_K and
/// Q6_K: each kept packed, [`crate::gpu::tensor::GpuTensor::stack`]); interleaved parts (gate
/// and up) of q4, q5, q4h and q5h in the widest of them, which holds the others' blocks
/// exactly, others in f32.
fn runs(
    map: &[(usize, usize)],
    types: &[WeightDtype],
    vector: bool,
) -> (Vec<(usize, usize, WeightDtype)>, bool) {
    let rows = map.len();
    if vector || types.iter().all(|&t| t == types[0]) {
        let dtype = if vector { WeightDtype::F32 } else { types[0] };
        return (vec![(0, rows, dtype)], false);
    }
    // Stacked: the part changes once between parts; then neighbours of one format merge.
    let switches = map.windows(2).filter(|w| w[0].0 != w[1].0).count();
    if switches + 1 == types.len() {
        let mut runs: Vec<(usize, usize, WeightDtype)> = Vec::new();
        for (r, &(p, _)) in map.iter().enumerate() {
            match runs.last_mut() {
                Some((_, n, d)) if *d == types[p] => *n += 1,
                _ => runs.push((r, 1, types[p])),
            }
        }
        return (runs, false);
    }
    // q5 holds q4's blocks, and f32 scales f16 ones: the widest of q4, q5, q4h and q5h.
    use WeightDtype::{Q4, Q4H, Q5, Q5H};
    if !types.iter().all(|t| [Q4, Q5, Q4H, Q5H].contains(t)) {
        return (vec![(0, rows, WeightDtype::F32)], true);
    }
    let five = types.iter().any(|t| [Q5, Q5H].contains(t));
    let half = types.iter().all(|t| [Q4H, Q5H].contains(t));
    let dtype = match (five, half) {
        (true, true) => Q5H,
        (true, false) => Q5,
        (false, true) => Q4H,
        (false, false) => Q4,
    };
    (vec![(0, rows, dtype)], false)
}

impl Gguf {
    /// Refuses a file with tensors of a type wgpt cannot read, naming the types and the
    /// tensors (the first few of each).
    pub(crate) fn check_types(&self) -> Result<()> {
        let mut bad: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for t in &self.tensors {
            if !super::DEQUANTIZED.contains(&t.ty.name) {
                bad.entry(t.ty.name).or_default().push(&t.name);
            }
        }
        if bad.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = (bad.iter())
            .map(|(ty, names)| {
                let more = names.len().saturating_sub(3);
                let shown = names[..names.len().min(3)].join(", ");
                match more {
                    0 => format!("{ty} ({shown})"),
                    _ => format!("{ty} ({shown} and {more} more)"),
                }
            })
            .collect();
        Err(self.bad(format!(
            "has tensors of types wgpt does not run: {}; it runs {} (requantize with llama.cpp's \
             llama-quantize, e.g. to Q4_K_M or Q8_0)",
            list.join("; "),
            super::DEQUANTIZED.join(", ")
        )))
    }
}

impl Gguf {
    /// A 2-D tensor's rows as the GPU stores them: the format holding its type exactly
    /// ([`packed_as`]) and its bytes, repacked block by block (never dequantised); what
    /// [`crate::gpu::format::Format::decode`] of them gives is [`Gguf::dequantize`]'s values.
    pub fn pack(&self, t: &TensorInfo) -> Result<(WeightDtype, Vec<u8>)> {
        let (Some(dtype), &[cols, rows]) = (packed_as(t.ty.name), &t.dims[..]) else {
            return Err(self.bad(format!(
                "tensor {:?} ({}, shape {:?}) is not a 2-D matrix of a type wgpt reads",
                t.name, t.ty.name, t.dims
            )));
        };
        let (rows, cols) = (rows as usize, cols as usize);
        let src = Source {
            gguf: self,
            parts: vec![t],
            rows: (0..rows).map(|r| (0, r)).collect(),
            cols,
            runs: vec![(0, rows, dtype)],
            widened: false,
        };
        Ok((dtype, src.encoded(dtype, 0, rows)))
    }
}

impl Order {
    /// The stored row holding the kernels' row `r`. convert_hf_to_gguf stores Hugging Face's row
    /// `h HS + j HS/2 + i` (head h, half j) at `h HS + 2 i + j`.
    fn source_row(self, r: usize) -> usize {
        match self {
            Order::AsStored => r,
            Order::Unpermute { hs } => {
                let (h, j, i) = (r / hs, r % hs / (hs / 2), r % (hs / 2));
                h * hs + 2 * i + j
            }
        }
    }
}

/// Rows of part `i` of the kernels' tensor `name`: q, k, v of a fused projection.
fn part_rows(cfg: &Config, name: &str, i: usize, rows: usize) -> usize {
    if name.contains("attn.c_attn.") && cfg.family != Family::Gpt2 {
        [cfg.q_width(), cfg.kv_width(), cfg.kv_width()][i]
    } else {
        rows
    }
}

/// The file's tensors making up the kernels' tensor `name`, in order.
fn file_names(cfg: &Config, name: &str) -> Option<Vec<(String, Order)>> {
    let plain = |key: &str| Some(vec![(key.to_string(), Order::AsStored)]);
    let (layer, rest) = match name.strip_prefix("h.").and_then(|r| r.split_once('.')) {
        Some((l, rest)) => (l, rest),
        None => {
            return match name {
                "wte.weight" => plain("token_embd.weight"),
                "wpe.weight" => plain("position_embd.weight"),
                "ln_f.weight" => plain("output_norm.weight"),
                "ln_f.bias" => plain("output_norm.bias"),
                "lm_head.weight" => plain("output.weight"),
                _ => None,
            };
        }
    };
    let (stem, kind) = rest.rsplit_once('.')?;
    let key = |t: &str| format!("blk.{layer}.{t}.{kind}");
    let gpt2 = cfg.family == Family::Gpt2;
    let file = match stem {
        "ln_1" => "attn_norm",
        "ln_2" => "ffn_norm",
        "attn.c_proj" => "attn_output",
        "mlp.c_proj" => "ffn_down",
        "attn.c_attn" if gpt2 => "attn_qkv",
        "mlp.c_fc" if gpt2 => "ffn_up",
        "attn.c_attn" => {
            // Llama's Q and K are permuted; Qwen2's (NEOX rotary in ggml) are not.
            let llama = cfg.model_type() == "llama" || cfg.model_type() == "mistral";
            let order = |hs| match llama {
                true => Order::Unpermute { hs },
                false => Order::AsStored,
            };
            let hs = cfg.head_dim;
            return Some(vec![
                (key("attn_q"), order(hs)),
                (key("attn_k"), order(hs)),
                (key("attn_v"), Order::AsStored),
            ]);
        }
        "mlp.c_fc" => {
            return Some(vec![
                (key("ffn_gate"), Order::AsStored),
                (key("ffn_up"), Order::AsStored),
            ]);
        }
        _ => return None,
    };
    plain(&key(file))
}

impl Source<'_> {
    /// Rows `row0 .. row0 + n` as f32, dequantised as ggml does, appended to `out`.
    pub fn read_f32(&self, row0: usize, n: usize, out: &mut Vec<f32>) {
        for &(p, r) in &self.rows[row0..row0 + n] {
            let t = self.parts[p];
            for block in self.raw_row(t, r).chunks_exact(t.ty.bytes) {
                dequantize_block(t.ty.name, block, out);
            }
        }
    }

    /// Its row ranges, each (first row, rows, format): one, but for a matrix of parts in
    /// different formats (see `runs`).
    pub fn runs(&self) -> &[(usize, usize, WeightDtype)] {
        &self.runs
    }

    /// Rows `row0 .. row0 + n` (`row0` starting a group of the format's) as `dtype` (their
    /// run's) stores them: packed blocks repacked, not dequantised. Their file pages are
    /// released once read, so a big tensor (a token table) is not held whole.
    pub fn encoded(&self, dtype: WeightDtype, row0: usize, n: usize) -> Vec<u8> {
        let out = self.repacked(dtype, row0, n);
        self.release_rows(row0, n);
        out
    }

    fn repacked(&self, dtype: WeightDtype, row0: usize, n: usize) -> Vec<u8> {
        let cols = self.cols;
        if let Some(f) = dtype.nibbles() {
            let mut out = f.zeroed(n, cols);
            self.each_block(row0, n, |t, r, b, block| {
                let (v, s, m) = nibble_block(t.ty.name, block, b % 8);
                f.put_block(&mut out, cols, r, b, &v, s, m);
            });
            return out;
        }
        match dtype {
            WeightDtype::Q8 => {
                let mut out = vec![0u8; dtype.stored_rows(n) * Q8.row_bytes(cols)];
                self.each_block(row0, n, |_, r, b, block| {
                    let (q, d) = q8_block(block);
                    Q8.put_block(&mut out, cols, r, b, &q, d);
                });
                out
            }
            dtype => {
                let mut values = Vec::with_capacity(n * cols);
                self.read_f32(row0, n, &mut values);
                dtype.format().encode(&values, cols)
            }
        }
    }

    /// Lets the OS drop the file pages of rows `row0 .. row0 + n`: for each part, the span from
    /// the first to the last of its rows among them (they are near each other even where Q and
    /// K rows are permuted; a page dropped too early is only read again).
    fn release_rows(&self, row0: usize, n: usize) {
        for (p, t) in self.parts.iter().enumerate() {
            let rows = self.rows[row0..row0 + n].iter().filter(|&&(q, _)| q == p);
            let (lo, hi) = rows.fold((usize::MAX, 0), |(lo, hi), &(_, r)| (lo.min(r), hi.max(r)));
            if lo <= hi {
                let row_bytes = (self.cols_of(t) / t.ty.block) * t.ty.bytes;
                self.gguf
                    .release_range(t, lo * row_bytes, (hi + 1) * row_bytes);
            }
        }
    }

    /// Lets the OS drop the file pages of this tensor's parts (after its upload).
    pub fn release(&self) {
        for t in &self.parts {
            self.gguf.release(t);
        }
    }

    /// Calls `f(tensor, row, block of 32, its bytes)` for every block of 32 weights of rows
    /// `row0 .. row0 + n` (rows counted from `row0`); a 256-weight block is passed once per 32.
    fn each_block(
        &self,
        row0: usize,
        n: usize,
        mut f: impl FnMut(&TensorInfo, usize, usize, &[u8]),
    ) {
        for (i, &(p, r)) in self.rows[row0..row0 + n].iter().enumerate() {
            let t = self.parts[p];
            for (j, block) in self.raw_row(t, r).chunks_exact(t.ty.bytes).enumerate() {
                for sub in 0..t.ty.block / 32 {
                    f(t, i, j * t.ty.block / 32 + sub, block);
                }
            }
        }
    }

    /// The stored bytes of row `r` of `t`.
    fn raw_row<'b>(&'b self, t: &TensorInfo, r: usize) -> &'b [u8] {
        let row_bytes = (self.cols_of(t) / t.ty.block) * t.ty.bytes;
        &self.gguf.tensor_bytes(t)[r * row_bytes..(r + 1) * row_bytes]
    }

    /// Values per stored row of `t` (1 for a vector, whose elements are its rows).
    fn cols_of(&self, t: &TensorInfo) -> usize {
        if t.dims.len() == 1 { 1 } else { self.cols }
    }
}

/// A Q8_0 block as q8's int8s and scale: exact (ggml's value is q d either way).
fn q8_block(b: &[u8]) -> ([i8; 32], f32) {
    let mut q = [0i8; 32];
    q.iter_mut().zip(&b[2..34]).for_each(|(o, &v)| *o = v as i8);
    (q, f16_at(b))
}

/// Sub-block `sub` (of 32 weights) of a block of a 4-, 5- or 6-bit type as the nibble formats'
/// values and two f32: q4 and q5 w = v s + m, q6 w = (v - 32) s per half. Exact: each of ggml's
/// values ((q - 8) d, q d + m, d sc q - dmin m, d sc (q - 32), ...) is representable and is
/// what the one product and sum give.
fn nibble_block(ty: &str, b: &[u8], sub: usize) -> ([u8; 32], f32, f32) {
    let mut v = [0u8; 32];
    let d = f16_at(b);
    match ty {
        "Q4_0" | "Q4_1" | "Q5_0" | "Q5_1" => {
            let one = ty.ends_with('1');
            let qh = match ty.starts_with("Q5") {
                true => u32::from_le_bytes(b[2 + 2 * one as usize..][..4].try_into().expect("4")),
                false => 0,
            };
            let qs = &b[b.len() - 16..];
            for j in 0..16 {
                v[j] = (qs[j] & 15) | ((((qh >> j) & 1) as u8) << 4);
                v[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
            }
            let m = match (one, ty.starts_with("Q5")) {
                (true, _) => f16_at(&b[2..]),
                (false, false) => -8.0 * d,
                (false, true) => -16.0 * d,
            };
            (v, d, m)
        }
        "Q4_K" | "Q5_K" => {
            // 8 sub-blocks of 32 in 256; the k-th 32 bytes of qs hold sub-block 2k in their low
            // nibbles and 2k + 1 in the high ones; Q5_K's bit `sub` of qh[l] is the fifth bit.
            let (sc, mn) = scale_min_k4(sub, &b[4..16]);
            let (qh, qs) = match ty {
                "Q5_K" => (Some(&b[16..48]), &b[48..176]),
                _ => (None, &b[16..144]),
            };
            for (l, o) in v.iter_mut().enumerate() {
                let byte = qs[32 * (sub / 2) + l];
                let nibble = if sub % 2 == 1 { byte >> 4 } else { byte & 15 };
                let high = qh.map_or(0, |h| (h[l] >> sub) & 1);
                *o = nibble | (high << 4);
            }
            (v, d * sc, -(f16_at(&b[2..]) * mn))
        }
        _ => {
            // Q6_K: halves of 128 (ql 64 bytes, qh 32, 8 int8 scales each); sub-block t of a
            // half takes ql[l] or ql[l + 32], low or high nibble, and qh[l]'s bits 2t, 2t + 1.
            let (n, t) = (sub / 4, sub % 4);
            let (ql, qh, sc) = (&b[64 * n..], &b[128 + 32 * n..], &b[192 + 8 * n..]);
            let d = f16_at(&b[208..]);
            for (l, o) in v.iter_mut().enumerate() {
                let byte = ql[l + 32 * (t % 2)];
                let nibble = if t >= 2 { byte >> 4 } else { byte & 15 };
                *o = nibble | (((qh[l] >> (2 * t)) & 3) << 4);
            }
            let s = |i: usize| d * (sc[2 * t + i] as i8) as f32;
            (v, s(0), s(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use WeightDtype::{F32, Q4, Q5, Q6, Q8};

    /// Stacked parts keep each its format; interleaved ones share q5 when q4 and q5, else f32.
    #[test]
    fn runs_keep_parts_packed() {
        let stacked: Vec<(usize, usize)> = [(0, 4), (1, 2), (2, 2)]
            .iter()
            .flat_map(|&(p, n)| (0..n).map(move |r| (p, r)))
            .collect();
        assert_eq!(
            runs(&stacked, &[Q4, Q4, Q6], false),
            (vec![(0, 6, Q4), (6, 2, Q6)], false)
        );
        assert_eq!(
            runs(&stacked, &[Q4, Q8, Q6], false),
            (vec![(0, 4, Q4), (4, 2, Q8), (6, 2, Q6)], false)
        );
        assert_eq!(
            runs(&stacked, &[Q6, Q6, Q6], false),
            (vec![(0, 8, Q6)], false)
        );
        assert_eq!(
            runs(&stacked, &[Q4, Q8, Q6], true),
            (vec![(0, 8, F32)], false)
        );
        let interleaved: Vec<(usize, usize)> = (0..8).map(|r| (r % 2, r / 2)).collect();
        assert_eq!(
            runs(&interleaved, &[Q5, Q4], false),
            (vec![(0, 8, Q5)], false)
        );
        assert_eq!(
            runs(&interleaved, &[Q6, Q5], false),
            (vec![(0, 8, F32)], true)
        );
    }
}

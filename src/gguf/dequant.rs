//! The CPU twin of ggml's block formats: every supported tensor type dequantised to f32 as
//! ggml does.

use super::{Gguf, TensorInfo};
use crate::Result;

/// An f16 stored little-endian at `b[0..2]`.
pub(super) fn f16_at(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Q4_K's and Q5_K's 6-bit scale and minimum of sub-block `j` (ggml's `get_scale_min_k4`).
pub(super) fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (sc as f32, m as f32)
}

/// One block of `ty` as ggml dequantises it (ggml-quants.c `dequantize_row_*`), into `y`.
pub(super) fn dequantize_block(ty: &str, b: &[u8], y: &mut Vec<f32>) {
    match ty {
        "F32" => y.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        "F16" => y.push(f16_at(b)),
        "BF16" => y.push(half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        "Q8_0" => {
            let d = f16_at(b);
            y.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
        }
        "Q4_0" | "Q4_1" => {
            let (d, m, qs) = match ty {
                "Q4_0" => (f16_at(b), 0.0, &b[2..18]),
                _ => (f16_at(b), f16_at(&b[2..]), &b[4..20]),
            };
            let off = if ty == "Q4_0" { 8.0 } else { 0.0 };
            let half = |shift: u32| qs.iter().map(move |&q| ((q >> shift) & 0xF) as f32 - off);
            let lo: Vec<f32> = half(0).map(|x| x * d + m).collect();
            y.extend(lo);
            y.extend(half(4).map(|x| x * d + m));
        }
        "Q5_0" | "Q5_1" => {
            let (d, m, at) = match ty {
                "Q5_0" => (f16_at(b), 0.0, 2),
                _ => (f16_at(b), f16_at(&b[2..]), 4),
            };
            let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            let qs = &b[at + 4..at + 20];
            let off = if ty == "Q5_0" { 16.0 } else { 0.0 };
            let x = |j: usize, high: bool| {
                let (q, h) = match high {
                    false => (qs[j] & 0xF, ((qh >> j) << 4) & 0x10),
                    true => (qs[j] >> 4, (qh >> (j + 12)) & 0x10),
                };
                (q as u32 | h) as f32 - off
            };
            let lo: Vec<f32> = (0..16).map(|j| x(j, false) * d + m).collect();
            y.extend(lo);
            y.extend((0..16).map(|j| x(j, true) * d + m));
        }
        "Q4_K" | "Q5_K" => {
            let (d, min, scales) = (f16_at(b), f16_at(&b[2..]), &b[4..16]);
            let (qh, ql) = match ty {
                "Q4_K" => (&b[0..0], &b[16..144]),
                _ => (&b[16..48], &b[48..176]),
            };
            for (k, q) in ql.chunks(32).enumerate() {
                let (sc1, m1) = scale_min_k4(2 * k, scales);
                let (sc2, m2) = scale_min_k4(2 * k + 1, scales);
                let (d1, m1, d2, m2) = (d * sc1, min * m1, d * sc2, min * m2);
                let high = |l: usize, bit: usize| match qh.is_empty() {
                    true => 0.0,
                    false => ((qh[l] >> bit) & 1) as f32 * 16.0,
                };
                let lo: Vec<f32> = (0..32)
                    .map(|l| d1 * ((q[l] & 0xF) as f32 + high(l, 2 * k)) - m1)
                    .collect();
                y.extend(lo);
                y.extend((0..32).map(|l| d2 * ((q[l] >> 4) as f32 + high(l, 2 * k + 1)) - m2));
            }
        }
        "Q6_K" => {
            let (ql, qh, sc, d) = (&b[0..128], &b[128..192], &b[192..208], f16_at(&b[208..]));
            for n in 0..2 {
                let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..]);
                let mut out = [0f32; 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q = |lo: u8, shift: u32| {
                        ((lo as i32) | ((((qh[l] >> shift) & 3) as i32) << 4)) - 32
                    };
                    let s = |i: usize| sc[is + i] as i8 as f32;
                    out[l] = d * s(0) * q(ql[l] & 0xF, 0) as f32;
                    out[l + 32] = d * s(2) * q(ql[l + 32] & 0xF, 2) as f32;
                    out[l + 64] = d * s(4) * q(ql[l] >> 4, 4) as f32;
                    out[l + 96] = d * s(6) * q(ql[l + 32] >> 4, 6) as f32;
                }
                y.extend(out);
            }
        }
        _ => unreachable!("dequantize checks the type"),
    }
}

/// The types [`Gguf::dequantize`] reads.
pub const DEQUANTIZED: &[&str] = &[
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K",
];

impl Gguf {
    /// Tensor `t`'s values as ggml dequantises them (the CPU twin of its block format), in
    /// file order (innermost dimension first); other types are refused, naming the type.
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        if !DEQUANTIZED.contains(&t.ty.name) {
            return Err(self.bad(format!(
                "tensor {:?} is {}, which wgpt does not read (it reads {})",
                t.name,
                t.ty.name,
                DEQUANTIZED.join(", ")
            )));
        }
        let mut y = Vec::with_capacity((t.bytes as usize / t.ty.bytes) * t.ty.block);
        for block in self.tensor_bytes(t).chunks_exact(t.ty.bytes) {
            dequantize_block(t.ty.name, block, &mut y);
        }
        Ok(y)
    }
}

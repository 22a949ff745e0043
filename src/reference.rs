//! Plain-Rust CPU twins of every WGSL kernel, and an interpreter of model graphs built from
//! them ([`run`]), so every family has a whole-model CPU twin. Tests compare the GPU against
//! these; they favour clarity over speed (f64 accumulation where a sum runs long, so the twin is
//! the more accurate side).

use std::collections::HashMap;

use crate::config::{Activation, Config};
use crate::graph::{Act, Graph, Keys, NormKind, Op, Then};
use crate::loader::Weights;

/// embed.wgsl: `x[t] = wte[tokens[t]] + wpe[pos0 + t]`. wte (V, C), wpe (n_ctx, C) → (T, C)
pub fn embed(tokens: &[u32], wte: &[f32], wpe: &[f32], c: usize, pos0: usize) -> Vec<f32> {
    let mut x = vec![0.0; tokens.len() * c];
    for (t, &tok) in tokens.iter().enumerate() {
        for i in 0..c {
            x[t * c + i] = wte[tok as usize * c + i] + wpe[(pos0 + t) * c + i];
        }
    }
    x
}

/// layernorm.wgsl over rows of width C.
pub fn layernorm(x: &[f32], weight: &[f32], bias: &[f32], c: usize, eps: f32) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for (row, o) in x.chunks(c).zip(out.chunks_mut(c)) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        for i in 0..c {
            o[i] = ((row[i] as f64 - mean) * rstd * weight[i] as f64 + bias[i] as f64) as f32;
        }
    }
    out
}

/// layernorm.wgsl with RMS: Llama's RMSNorm over rows of width C, x / sqrt(mean(x²) + eps) · w.
pub fn rms_norm(x: &[f32], weight: &[f32], c: usize, eps: f32) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for (row, o) in x.chunks(c).zip(out.chunks_mut(c)) {
        let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (ms + eps as f64).sqrt();
        for i in 0..c {
            o[i] = (row[i] as f64 * rstd * weight[i] as f64) as f32;
        }
    }
    out
}

/// The attention heads of a qkv row (T, (NH + 2 NKV) HS): NH query heads, NKV key and value
/// heads (query head h reads key head h / (NH / NKV)), each HS wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    /// NH.
    pub nh: usize,
    /// NKV.
    pub nkv: usize,
    /// HS.
    pub hs: usize,
}

impl Heads {
    /// NH heads splitting C, each with its own key and value head (GPT-2's).
    pub fn mha(c: usize, nh: usize) -> Heads {
        Heads { nh, nkv: nh, hs: c / nh }
    }

    /// NH HS, where the keys start in a qkv row.
    pub fn q(&self) -> usize {
        self.nh * self.hs
    }

    /// NKV HS: one KV-cache row.
    pub fn kv(&self) -> usize {
        self.nkv * self.hs
    }

    /// A qkv row's width.
    pub fn qkv(&self) -> usize {
        self.q() + 2 * self.kv()
    }
}

/// rope.wgsl: rotary embeddings on the query and key heads of qkv (T, (NH + 2 NKV) HS) in
/// place, row t at position pos0 + t: dims i and i + HS/2 of each head turned by the f32 angle
/// position × inv_freq[i] (cos and sin in f64, as accurate as the f32 angle allows).
pub fn rope(qkv: &mut [f32], inv_freq: &[f32], h: Heads, pos0: usize) {
    let half = h.hs / 2;
    for (t, row) in qkv.chunks_mut(h.qkv()).enumerate() {
        for head in row[..h.q() + h.kv()].chunks_mut(h.hs) {
            for i in 0..half {
                let a = ((pos0 + t) as f32 * inv_freq[i]) as f64;
                let (sin, cos) = a.sin_cos();
                let (x1, x2) = (head[i] as f64, head[i + half] as f64);
                head[i] = (x1 * cos - x2 * sin) as f32;
                head[i + half] = (x2 * cos + x1 * sin) as f32;
            }
        }
    }
}

/// elementwise.wgsl's `gate`: interleaved pairs (gate i, up i) → act(gate i) · up i, so
/// (T, 2 width) → (T, width).
pub fn gate(x: &[f32], act: Activation) -> Vec<f32> {
    let mut g: Vec<f32> = x.iter().step_by(2).copied().collect();
    activate(&mut g, act);
    g.iter().zip(x.iter().skip(1).step_by(2)).map(|(g, u)| g * u).collect()
}

/// An activation in place.
pub fn activate(x: &mut [f32], act: Activation) {
    match act {
        Activation::GeluTanh => gelu(x),
        Activation::GeluErf => gelu_erf(x),
        Activation::Relu => relu(x),
        Activation::Silu => silu(x),
    }
}

/// x / (1 + e^-x).
pub fn silu(x: &mut [f32]) {
    for v in x {
        let z = *v as f64;
        *v = (z / (1.0 + (-z).exp())) as f32;
    }
}

/// matmul.wgsl: out (M, N) = a (M, K) @ w (N, K)^T + bias (N).
pub fn matmul(a: &[f32], w: &[f32], bias: Option<&[f32]>, k: usize, n: usize) -> Vec<f32> {
    let m = a.len() / k;
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        let ar = &a[i * k..(i + 1) * k];
        for j in 0..n {
            let wr = &w[j * k..(j + 1) * k];
            let dot: f64 = ar.iter().zip(wr).map(|(&x, &y)| x as f64 * y as f64).sum();
            out[i * n + j] = (dot + bias.map_or(0.0, |b| b[j] as f64)) as f32;
        }
    }
    out
}

/// q8 weight storage (`WeightDtype::Q8`): each block of 32 consecutive weights (rows are whole
/// blocks) becomes int8s `q = round(w / scale)` with `scale = max |w| / 127` (0 for an all-zero
/// block), so `|w - q * scale| <= scale / 2`. Returns (q, one scale per block).
pub fn quantize_q8(w: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(w.len().div_ceil(32));
    for block in w.chunks(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        scales.push(scale);
        for &v in block {
            let x = if scale > 0.0 {
                (v / scale).round()
            } else {
                0.0
            };
            q.push(x.clamp(-127.0, 127.0) as i8);
        }
    }
    (q, scales)
}

/// The weights the q8 kernels compute with: `q * scale` per block of 32.
pub fn dequantize_q8(q: &[i8], scales: &[f32]) -> Vec<f32> {
    q.iter()
        .enumerate()
        .map(|(i, &v)| v as f32 * scales[i / 32])
        .collect()
}

/// `w` as q8 storage holds it: [`dequantize_q8`] of [`quantize_q8`].
pub fn q8_round_trip(w: &[f32]) -> Vec<f32> {
    let (q, s) = quantize_q8(w);
    dequantize_q8(&q, &s)
}

/// kv_append.wgsl: writes the keys and values of qkv (T, (NH + 2 NKV) HS) into the caches
/// (n_ctx, NKV HS) at pos0.
pub fn kv_append(qkv: &[f32], k_cache: &mut [f32], v_cache: &mut [f32], h: Heads, pos0: usize) {
    let (q, kv) = (h.q(), h.kv());
    for (t, row) in qkv.chunks(h.qkv()).enumerate() {
        let dst = (pos0 + t) * kv;
        k_cache[dst..dst + kv].copy_from_slice(&row[q..q + kv]);
        v_cache[dst..dst + kv].copy_from_slice(&row[q + kv..q + 2 * kv]);
    }
}

/// attention.wgsl: causal softmax attention of the queries in qkv (T, (NH + 2 NKV) HS) at
/// positions pos0 + t over the caches (n_ctx, NKV HS) → (T, NH HS). Plain softmax over the
/// materialised scores, no online tricks.
pub fn attention(qkv: &[f32], k_cache: &[f32], v_cache: &[f32], h: Heads, pos0: usize) -> Vec<f32> {
    attend(qkv, k_cache, v_cache, h, |t| 0..pos0 + t + 1)
}

/// Softmax attention of each query row t of qkv over the key and value rows `keys(t)` of k, v
/// (rows, NKV HS), head by head, in f64. (T, NH HS).
fn attend(
    qkv: &[f32],
    k: &[f32],
    v: &[f32],
    heads: Heads,
    keys: impl Fn(usize) -> std::ops::Range<usize>,
) -> Vec<f32> {
    let Heads { nh, hs, .. } = heads;
    let (w, kv, group) = (heads.qkv(), heads.kv(), nh / heads.nkv);
    let t_len = qkv.len() / w;
    let scale = 1.0 / (hs as f64).sqrt();
    let c = heads.q();
    let mut out = vec![0.0; t_len * c];
    for t in 0..t_len {
        let keys = keys(t);
        for h in 0..nh {
            let q = &qkv[t * w + h * hs..t * w + (h + 1) * hs];
            let kh = h / group * hs;
            let scores: Vec<f64> = keys
                .clone()
                .map(|j| {
                    let kr = &k[j * kv + kh..j * kv + kh + hs];
                    q.iter()
                        .zip(kr)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            for d in 0..hs {
                let y: f64 = keys
                    .clone()
                    .zip(&exps)
                    .map(|(j, e)| e * v[j * kv + kh + d] as f64)
                    .sum();
                out[t * c + h * hs + d] = (y / sum) as f32;
            }
        }
    }
    out
}

/// gelu.wgsl: transformers' gelu_new.
pub fn gelu(x: &mut [f32]) {
    for v in x {
        let z = *v as f64;
        let u = (2.0 / std::f64::consts::PI).sqrt() * (z + 0.044715 * z * z * z);
        *v = (0.5 * z * (1.0 + u.tanh())) as f32;
    }
}

/// The relu epilogue: max(x, 0).
pub fn relu(x: &mut [f32]) {
    for v in x {
        *v = v.max(0.0);
    }
}

/// residual.wgsl: x += y.
pub fn residual(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// argmax.wgsl: first index of the largest value (NaN never wins).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] || x[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// sample.wgsl: inverse-CDF sampling from softmax(logits / temperature) at u in [0, 1).
pub fn sample(logits: &[f32], temperature: f32, u: f32) -> u32 {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / temperature as f64).exp())
        .collect();
    let total: f64 = e.iter().sum();
    let mut target = u as f64 * total;
    for (i, &p) in e.iter().enumerate() {
        if target < p {
            return i as u32;
        }
        target -= p;
    }
    (logits.len() - 1) as u32
}

/// A decoder forward pass on the CPU from host weights (as [`crate::loader::load_host_weights`]
/// makes them), its family's graph interpreted by [`run`]: logits (T, V) for `tokens` at
/// positions 0..T.
pub fn forward(cfg: &Config, w: &Weights<Vec<f32>>, tokens: &[u32]) -> Vec<f32> {
    run(&crate::families::decoder(cfg, w), &[tokens])
}

/// Interprets a graph on the CPU over `seqs`: one sequence for a decoder (positions from 0,
/// the head on every row: (T, V) logits), or packed sequences for an encoder ((B, C) pooled).
/// Returns the last op's output. Every family gets its whole-model CPU twin from this; each
/// op is the CPU twin of the kernel it lowers to.
pub fn run(g: &Graph<&Vec<f32>>, seqs: &[&[u32]]) -> Vec<f32> {
    let tokens: Vec<u32> = seqs.concat();
    let (mut row_spans, mut seq_spans) = (Vec::new(), Vec::new());
    for s in seqs {
        let span = [row_spans.len() as u32, s.len() as u32];
        seq_spans.push(span);
        row_spans.extend(std::iter::repeat_n(span, s.len()));
    }
    let mut acts: HashMap<Act, Vec<f32>> = HashMap::new();
    let mut caches: HashMap<usize, (Vec<f32>, Vec<f32>)> = HashMap::new();
    let mut last = Act::X;
    let d = &g.dims;
    let heads = Heads {
        nh: d.n_head,
        nkv: d.n_kv_head,
        hs: d.head_size,
    };
    for op in g.body.iter().chain(&g.head) {
        let (out, value) = match op {
            Op::Embed { tokens: table, positions, width, packed, out } => {
                let mut x = vec![0.0; tokens.len() * width];
                for (t, row) in x.chunks_mut(*width).enumerate() {
                    let pos = if *packed { t - row_spans[t][0] as usize } else { t };
                    for (i, v) in row.iter_mut().enumerate() {
                        if let Some((table, scale)) = table {
                            *v += scale * table[tokens[t] as usize * width + i];
                        }
                        if let Some(p) = positions {
                            *v += p[pos * width + i];
                        }
                    }
                }
                (*out, x)
            }
            Op::Norm { kind: NormKind::Rms, inp, out, gain, eps, .. } => (*out, rms_norm(&acts[inp], gain, d.c, *eps)),
            Op::Norm { inp, out, gain, bias, eps, .. } => {
                let zeros = vec![0.0; gain.len()];
                let b = bias.map_or(&zeros, |b| b);
                (*out, layernorm(&acts[inp], gain, b, d.c, *eps))
            }
            Op::Rope { qkv, inv_freq } => {
                let mut x = acts.remove(qkv).unwrap_or_default();
                rope(&mut x, inv_freq, heads, 0);
                (*qkv, x)
            }
            Op::Gate { inp, out, act } => (*out, gate(&acts[inp], *act)),
            Op::Linear { inp, out, dense, then } => {
                let (k, n) = (d.width(*inp), d.width(*out));
                let mut y = matmul(&acts[inp], dense.w, dense.b.map(|b| b.as_slice()), k, n);
                match then {
                    Then::Store => {}
                    Then::Act(a) => activate(&mut y, *a),
                    Then::Add => residual(&mut y, &acts[out]),
                }
                (*out, y)
            }
            // T5's ops need its encoder's output across two graphs: its twin is t5::reference.
            Op::StoreKv { .. } | Op::Attention { keys: Keys::Cross { .. }, .. } | Op::Attention { bias: Some(_), .. } => {
                panic!("reference::run interprets decoder-only and encoder graphs; T5's CPU twin is t5::reference")
            }
            Op::Attention { qkv, out, keys, n_head, .. } => {
                let qkv = &acts[qkv];
                let rows = qkv.len() / heads.qkv();
                let layer = match keys {
                    Keys::Cache { layer } => *layer,
                    Keys::Sequence => usize::MAX,
                    Keys::Cross { .. } => unreachable!("refused above"),
                };
                let cache = || vec![0.0; rows * heads.kv()];
                let (k, v) = caches.entry(layer).or_insert_with(|| (cache(), cache()));
                kv_append(qkv, k, v, heads, 0);
                let h = Heads { nh: *n_head, ..heads };
                let y = match keys {
                    Keys::Cache { .. } => attention(qkv, k, v, h, 0),
                    Keys::Sequence => attention_bidirectional(qkv, k, v, h, &row_spans),
                    Keys::Cross { .. } => unreachable!("refused above"),
                };
                (*out, y)
            }
            Op::Pool { inp, out, mode, normalize } => (*out, pool(&acts[inp], d.c, &seq_spans, *mode, *normalize)),
        };
        acts.insert(out, value);
        last = out;
    }
    acts.remove(&last).unwrap_or_default()
}

/// sample.wgsl with filters, done exactly (sorting instead of bisection): returns the token
/// drawn at `u` and which tokens the filters kept. The repetition penalty is applied to `logits`
/// in place (once per distinct id in `recent`), as the kernel does.
pub fn sample_filtered(
    logits: &mut [f32],
    recent: &[u32],
    s: &crate::Sampling,
    u: f32,
) -> (u32, Vec<bool>) {
    if s.repeat_penalty != 1.0 {
        let mut seen = std::collections::HashSet::new();
        for &id in recent {
            if (id as usize) < logits.len() && seen.insert(id) {
                let l = &mut logits[id as usize];
                *l = if *l > 0.0 {
                    *l / s.repeat_penalty
                } else {
                    *l * s.repeat_penalty
                };
            }
        }
    }
    let t = s.temperature as f64;
    let scaled: Vec<f64> = logits.iter().map(|&l| l as f64 / t).collect();
    let mx = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut order: Vec<usize> = (0..scaled.len()).collect();
    order.sort_by(|&a, &b| scaled[b].total_cmp(&scaled[a]));
    let mut threshold = f64::NEG_INFINITY;
    if s.top_k > 0 && (s.top_k as usize) < scaled.len() {
        threshold = scaled[order[s.top_k as usize - 1]];
    }
    if s.top_p < 1.0 {
        let kept: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| scaled[i] >= threshold)
            .collect();
        let total: f64 = kept.iter().map(|&i| (scaled[i] - mx).exp()).sum();
        let mut acc = 0.0;
        for &i in &kept {
            acc += (scaled[i] - mx).exp();
            if acc >= s.top_p as f64 * total {
                threshold = threshold.max(scaled[i]);
                break;
            }
        }
    }
    if s.min_p > 0.0 {
        threshold = threshold.max(mx + (s.min_p as f64).ln());
    }
    let kept: Vec<bool> = scaled.iter().map(|&x| x >= threshold.min(mx)).collect();
    let e: Vec<f64> = scaled
        .iter()
        .zip(&kept)
        .map(|(&x, &k)| if k { (x - mx).exp() } else { 0.0 })
        .collect();
    let total: f64 = e.iter().sum();
    let mut goal = u as f64 * total;
    let mut pick = kept.iter().rposition(|&k| k).unwrap_or(0);
    for (i, &p) in e.iter().enumerate() {
        if p > 0.0 && goal < p {
            pick = i;
            break;
        }
        goal -= p;
    }
    (pick as u32, kept)
}

/// top_candidates.wgsl: the `n` largest logits (ties to the lower id) with softmax probabilities.
pub fn top_candidates(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mx = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = logits.iter().map(|&l| (l as f64 - mx).exp()).sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order
        .iter()
        .take(n)
        .map(|&i| (i as u32, ((logits[i] as f64 - mx).exp() / z) as f32))
        .collect()
}

/// The sinusoidal position table (tensor2tensor / fairseq layout, as XGLM computes it), computed
/// in f64: row p is position p + `offset`; column i < C/2 is sin((p + offset) f_i), column
/// C/2 + i is cos((p + offset) f_i), with f_i = 10000^(-i / (C/2 - 1)). (n_ctx, C).
pub fn sinusoid(n_ctx: usize, c: usize, offset: usize) -> Vec<f32> {
    let half = c / 2;
    let step = (10000f64).ln() / (half.max(2) - 1) as f64;
    let mut out = vec![0.0; n_ctx * c];
    for p in 0..n_ctx {
        for i in 0..half {
            let angle = (p + offset) as f64 * (-(i as f64) * step).exp();
            out[p * c + i] = angle.sin() as f32;
            out[p * c + half + i] = angle.cos() as f32;
        }
    }
    out
}

/// erf in f64: its Maclaurin series below |x| = 2.5 (terms stay below ~500, so ~1e-13 of
/// cancellation), above it 1 - erfc(x) from erfc's continued fraction (converged to ~1e-16).
pub fn erf(x: f64) -> f64 {
    let z = x.abs();
    let r = if z < 2.5 {
        // erf(z) = 2/sqrt(pi) * sum_n (-1)^n z^(2n+1) / (n! (2n+1))
        let (mut term, mut sum) = (z, z);
        for n in 1..200 {
            term *= -z * z / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(z) = exp(-z^2) / sqrt(pi) * 1 / (z + (1/2) / (z + 1 / (z + (3/2) / (z + 2 / ...))))
        let mut f = z;
        for k in (1..80).rev() {
            f = z + (k as f64 / 2.0) / f;
        }
        1.0 - (-z * z).exp() / std::f64::consts::PI.sqrt() / f
    };
    r.copysign(x)
}

/// linear.wgsl's GELU_ERF epilogue (BERT's GELU): 0.5 x (1 + erf(x / sqrt 2)).
pub fn gelu_erf(x: &mut [f32]) {
    for v in x {
        let z = *v as f64;
        *v = (0.5 * z * (1.0 + erf(z / std::f64::consts::SQRT_2))) as f32;
    }
}

/// embed.wgsl's `embed_packed`: sequences packed in rows; row t is token `tokens[t]` at position
/// `t - spans[t][0]` (`spans[t]` = first row of its sequence, its length). wte (V, C), wpe (n_pos, C).
pub fn embed_packed(
    tokens: &[u32],
    wte: &[f32],
    wpe: &[f32],
    c: usize,
    spans: &[[u32; 2]],
) -> Vec<f32> {
    let mut x = vec![0.0; tokens.len() * c];
    for (t, &tok) in tokens.iter().enumerate() {
        let pos = t - spans[t][0] as usize;
        for i in 0..c {
            x[t * c + i] = wte[tok as usize * c + i] + wpe[pos * c + i];
        }
    }
    x
}

/// attention.wgsl's `attention_bidirectional` (and attention_texture.wgsl's): query row t of qkv
/// attends to the key and value rows `spans[t][0] .. + spans[t][1]` of k, v, its own
/// sequence's, with a plain softmax over the materialised scores.
pub fn attention_bidirectional(
    qkv: &[f32],
    k: &[f32],
    v: &[f32],
    h: Heads,
    spans: &[[u32; 2]],
) -> Vec<f32> {
    attend(qkv, k, v, h, |t| {
        spans[t][0] as usize..(spans[t][0] + spans[t][1]) as usize
    })
}

/// pool.wgsl: per sequence (`spans[s]` = first row, length, of x (T, C)) the mean, max or first
/// row, then with `normalize` divided by its L2 norm (at least 1e-12). → (B, C)
pub fn pool(
    x: &[f32],
    c: usize,
    spans: &[[u32; 2]],
    mode: crate::gpu::kernels::PoolMode,
    normalize: bool,
) -> Vec<f32> {
    use crate::gpu::kernels::PoolMode;
    let mut out = Vec::with_capacity(spans.len() * c);
    for &[first, n] in spans {
        let rows = &x[first as usize * c..(first + n) as usize * c];
        let v: Vec<f64> = (0..c)
            .map(|i| {
                let col = rows.chunks(c).map(|r| r[i] as f64);
                match mode {
                    PoolMode::Mean => col.sum::<f64>() / n as f64,
                    PoolMode::Max => col.fold(f64::NEG_INFINITY, f64::max),
                    PoolMode::Cls => rows[i] as f64,
                }
            })
            .collect();
        let norm = if normalize {
            v.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12)
        } else {
            1.0
        };
        out.extend(v.iter().map(|a| (a / norm) as f32));
    }
    out
}

/// A BERT forward pass on the CPU from host weights (as
/// [`load_host_encoder_weights`](crate::encoder::weights::load_host_encoder_weights) makes them),
/// its graph interpreted by [`run`]: the pooled embeddings (B, C) of `seqs`, packed as the GPU
/// packs them.
pub fn encoder_forward(
    cfg: &crate::encoder::EncoderConfig,
    w: &crate::encoder::EncoderWeights<Vec<f32>>,
    seqs: &[Vec<u32>],
    mode: crate::gpu::kernels::PoolMode,
    normalize: bool,
) -> Vec<f32> {
    let seqs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    run(&crate::families::bert::graph(cfg, w, mode, normalize), &seqs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn erf_matches_known_values() {
        // Values from Abramowitz & Stegun table 7.1 (and erf(inf) = 1).
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_047),
            (1.0, 0.842_700_792_949_715),
            (2.0, 0.995_322_265_018_953),
            (2.5, 0.999_593_047_982_555),
            (3.0, 0.999_977_909_503_001),
            (-1.0, -0.842_700_792_949_715),
            (10.0, 1.0),
        ] {
            let got = super::erf(x);
            assert!((got - want).abs() < 1e-14, "erf({x}) = {got}, want {want}");
        }
    }
}

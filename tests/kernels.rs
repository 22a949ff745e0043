//! Every WGSL kernel against its CPU twin in `wgpt::reference`, on awkward shapes: T = 1, 7, 33;
//! C not a multiple of the tile or workgroup; n_head not a power of two; head sizes above 64.
//! Each test prints the largest difference it saw.

mod common;

use common::*;
use wgpt::gpu::kernels::{
    ArgmaxParams, AttentionParams, EmbedParams, Epilogue, Kv, KvParams, KvWidths, LayerNormParams,
    LinearIo, MatmulParams, Pipelines, SampleParams, Step, bind, bind_at, linear_binds, wg,
};
use wgpt::gpu::tensor::{GpuTensor, TextureChunk, WeightDtype, encode};
use wgpt::gpu::upload::Uploader;
use wgpt::reference::{self, Heads};

struct Harness {
    gpu: std::sync::Arc<wgpt::Engine>,
    p: Pipelines,
}

impl Harness {
    fn new() -> Self {
        let gpu = gpu();
        let p = Pipelines::new(&gpu, WeightDtype::F32, true, None, &Epilogue::ALL);
        gpu.check().expect("pipelines compile");
        Harness { gpu, p }
    }
    fn f32s(&self, data: &[f32]) -> wgpu::Buffer {
        self.gpu.storage_init("test", bytemuck::cast_slice(data))
    }
    fn u32s(&self, data: &[u32]) -> wgpu::Buffer {
        self.gpu.storage_init("test", bytemuck::cast_slice(data))
    }
    fn step(&self, rows: usize, row0: usize, pos0: usize) -> wgpu::Buffer {
        let s = Step::new(rows as u32, row0 as u32, pos0 as u32);
        self.gpu.uniform("step", &s)
    }
    /// kv_append's widths for these heads.
    fn kv_widths(&self, h: Heads) -> wgpu::Buffer {
        let p = KvParams {
            q: h.q() as u32,
            kv: h.kv() as u32,
            hs: h.hs as u32,
            _pad: 0,
        };
        self.gpu.uniform("kv", &p)
    }
    /// The attention's parameters for these heads (scores scaled by 1 / sqrt(HS)).
    fn attention_params(&self, h: Heads) -> wgpu::Buffer {
        let p = AttentionParams {
            nkv: h.nkv as u32,
            ..AttentionParams::heads(h.nh as u32, h.hs as u32)
        };
        self.gpu.uniform("p", &p)
    }
    /// A placeholder for a binding a kernel only reads under a constant that is off (ROPE's
    /// frequencies, a uniform).
    fn none(&self) -> wgpu::Buffer {
        wgpt::gpu::kernels::rope_uniform(&self.gpu, "none", &[])
    }
    fn run(&self, pipe: &wgpu::ComputePipeline, bufs: &[&wgpu::Buffer], x: u32, y: u32) {
        dispatch(self, pipe, &bind(&self.gpu, pipe, "test", bufs), x, y);
    }
    fn read(&self, b: &wgpu::Buffer) -> Vec<f32> {
        self.gpu.download_f32(b).unwrap()
    }
}

/// Relative-to-magnitude error bound: f32 sums of n terms of size ~|x| err by ~n * 2^-24 * |x|;
/// the twin sums in f64. `slack` covers the terms' spread.
fn close(got: &[f32], want: &[f32], slack: f32) -> f32 {
    let diff = max_abs_diff(got, want);
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    assert!(diff <= slack * scale, "max diff {diff} > {slack} * {scale}");
    diff
}

/// Llama 2's rotary frequencies for head size `hs` (theta 10000, no scaling).
fn rope_freqs(hs: usize) -> Vec<f32> {
    let rope = wgpt::config::Rope {
        theta: 10000.0,
        scaling: wgpt::config::RopeScaling::None,
    };
    rope.inv_freq(hs)
}

#[test]
fn embed_matches_cpu_including_split_table() {
    let h = Harness::new();
    for (t, c, pos0) in [(1, 33, 0), (7, 60, 5), (33, 65, 20)] {
        let v = 37;
        let wte = random(v * c, 1, 1.0);
        let wpe = random(64 * c, 2, 1.0);
        let tokens: Vec<u32> = (0..t).map(|i| ((i * 11 + 3) % v) as u32).collect();
        let want = reference::embed(&tokens, &wte, &wpe, c, pos0);
        let x = h.f32s(&vec![f32::NAN; t * c]);
        // Two chunks of the token table, rows [0, 20) and [20, 37), one dispatch each.
        for (r0, r1) in [(0, 20), (20, v)] {
            let params = EmbedParams::new(c as u32, r0 as u32, (r1 - r0) as u32, 1.0);
            let chunk = h.f32s(&wte[r0 * c..r1 * c]);
            let bufs = [
                &h.step(t, 0, pos0),
                &h.gpu.uniform("p", &params),
                &h.u32s(&tokens),
                &chunk,
                &h.f32s(&wpe),
                &x,
            ];
            h.run(&h.p.embed, &bufs, (c as u32).div_ceil(64), t as u32);
        }
        // Pure copies and one add: exact.
        let d = close(&h.read(&x), &want, 0.0);
        println!("embed T={t} C={c} pos0={pos0}: max diff {d:e}");
    }
}

#[test]
fn layernorm_matches_cpu() {
    let h = Harness::new();
    let shapes = [(1, 33, 0), (7, 60, 2), (33, 769, 1)];
    check_layernorm(&h, "layernorm", &h.p.layernorm, |t| t, &shapes, 3);
}

/// The texture layout's layernorm (one invocation per row, vec4 loads: C % 4 == 0) against the
/// same twin; rows not a multiple of its 8-row workgroups.
#[test]
fn layernorm_rows_matches_cpu() {
    let h = Harness::new();
    let shapes = [(1, 4, 0), (7, 60, 2), (33, 772, 1)];
    let pipe = &h.p.textures().layernorm_rows;
    check_layernorm(&h, "layernorm_rows", pipe, |t| t.div_ceil(8), &shapes, 31);
}

/// layernorm_rows_texture (multi-row steps' norms before a linear layer in the texture layout:
/// rows from a texture into the layer's input texture, gain and bias from one uniform) against
/// the twin; rows not a multiple of its 8-row workgroups, C up to GPT-2's and one not a
/// multiple of 64. Rows of the output texture past T are left alone.
#[test]
fn layernorm_rows_texture_matches_cpu() {
    let h = Harness::new();
    let pipe = &h.p.textures().layernorm_rows_texture;
    for (t, c) in [(1, 64), (7, 192), (33, 768), (9, 100)] {
        let x: Vec<f32> = random(t * c, 80, 2.0).iter().map(|v| v + 5.0).collect();
        let (w, b) = (random(c, 81, 1.0), random(c, 82, 1.0));
        let want = reference::layernorm(&x, &w, &b, c, 1e-5);
        let mut gain_bias = vec![0.0; wg::GAIN_BIAS_BYTES as usize / 4];
        gain_bias[..c].copy_from_slice(&w);
        gain_bias[c..2 * c].copy_from_slice(&b);
        let gb = h
            .gpu
            .storage_uniform("gain_bias", gain_bias.len() as u64 * 4);
        h.gpu
            .queue
            .write_buffer(&gb, 0, bytemuck::cast_slice(&gain_bias));
        let params = LayerNormParams {
            c: c as u32,
            eps: 1e-5,
            _pad: [0; 2],
        };
        let xt = h
            .gpu
            .texture_init("x", &x, t, c)
            .create_view(&Default::default());
        // One row more than T, holding NaN: it must stay as it was.
        let out = h
            .gpu
            .texture_init("out", &vec![f32::NAN; (t + 1) * c], t + 1, c);
        let ov = out.create_view(&Default::default());
        let (step, pu) = (h.step(t, 0, 0), h.gpu.uniform("p", &params));
        let r = vec![
            (0, step.as_entire_binding()),
            (1, pu.as_entire_binding()),
            (6, wgpu::BindingResource::TextureView(&xt)),
            (7, gb.as_entire_binding()),
            (8, wgpu::BindingResource::TextureView(&ov)),
        ];
        let bg = bind_at(&h.gpu, pipe, "test", r);
        dispatch(&h, pipe, &bg, (t as u32).div_ceil(8), 1);
        let got = read_texture(&h, &out);
        // As layernorm_rows: normalised values are O(1), f32 statistics over C terms.
        let d = close(&got[..t * c], &want, 1e-5);
        assert!(got[t * c..].iter().all(|v| v.is_nan()), "row T was written");
        println!("layernorm_rows_texture T={t} C={c}: max diff {d:e}");
    }
}

/// `pipe` (a layernorm, `workgroups(T)` of them) against the twin on (T, C, row0) shapes.
fn check_layernorm(
    h: &Harness,
    name: &str,
    pipe: &wgpu::ComputePipeline,
    workgroups: fn(u32) -> u32,
    shapes: &[(usize, usize, usize)],
    seed: u64,
) {
    for &(t, c, row0) in shapes {
        // An offset mean makes the two-pass variance matter.
        let x: Vec<f32> = random((row0 + t) * c, seed, 2.0)
            .iter()
            .map(|v| v + 5.0)
            .collect();
        let w = random(c, seed + 1, 1.0);
        let b = random(c, seed + 2, 1.0);
        let want = reference::layernorm(&x[row0 * c..], &w, &b, c, 1e-5);
        let out = h.f32s(&vec![f32::NAN; t * c]);
        let params = LayerNormParams {
            c: c as u32,
            eps: 1e-5,
            _pad: [0; 2],
        };
        let bufs = [
            &h.step(t, row0, 0),
            &h.gpu.uniform("p", &params),
            &h.f32s(&x),
            &h.f32s(&w),
            &h.f32s(&b),
            &out,
        ];
        h.run(pipe, &bufs, workgroups(t as u32), 1);
        // Normalised values are O(1); f32 mean/variance over C <= 772 terms: ~1e-6 relative.
        let d = close(&h.read(&out), &want, 1e-5);
        println!("{name} T={t} C={c}: max diff {d:e}");
    }
}

/// Both linear kernels (the tiled matmul and the gemv used for few rows), with the weight split
/// into two row chunks writing columns [0, n1) and [n1, n) as a split head does.
#[test]
fn matmul_and_gemv_match_cpu_including_column_chunks() {
    let h = Harness::new();
    // K: multiples of 4 (vec4 rows) but not of the 32-wide K stage; N and M not of the tile.
    for (m, k, n) in [
        (1, 36, 17),
        (2, 60, 45),
        (4, 68, 9),
        (7, 60, 45),
        (33, 68, 100),
        (70, 100, 33),
        // Lanes of gemv going round K several times, ending mid-way.
        (3, 1028, 13),
    ] {
        let a = random(m * k, 6, 1.0);
        let w = random(n * k, 7, 1.0);
        let b = random(n, 8, 1.0);
        let want = reference::matmul(&a, &w, Some(&b), k, n);
        for (name, pipe) in linear_kernels(&h.p, Epilogue::Store) {
            let out = h.f32s(&vec![f32::NAN; m * n]);
            let n1 = n / 3 + 1;
            for (c0, c1) in [(0, n1), (n1, n)] {
                let params = MatmulParams {
                    k: k as u32,
                    n: (c1 - c0) as u32,
                    ldo: n as u32,
                    col0: c0 as u32,
                    has_bias: 1,
                    kv_c: 0,
                    ln_eps: 0.0,
                    kv_w: 0,
                };
                let chunk = h.f32s(&w[c0 * k..c1 * k]);
                let bufs = [
                    &h.step(m, 0, 0),
                    &h.gpu.uniform("p", &params),
                    &h.f32s(&a),
                    &chunk,
                    &h.f32s(&b),
                    &out,
                ];
                let cols = (c1 - c0) as u32;
                let (x, y) = linear_grid(name, cols, m as u32);
                h.run(pipe, &bufs, x, y);
            }
            // Dot products of K <= 1028 terms of size <= 1 in f32 against f64, relative to the
            // largest output (~sqrt(K) / 3): a few 1e-7.
            let d = close(&h.read(&out), &want, 1e-5);
            println!("{name} M={m} K={k} N={n}: max diff {d:e}");
        }
    }
}

#[test]
fn kv_append_and_attention_match_cpu() {
    let h = Harness::new();
    // (T, C, NH, pos0): HS = 11, 12, 20, 130 (two dims per invocation), keys across 64-blocks.
    for (t, c, nh, pos0) in [
        (1, 33, 3, 0),
        (7, 60, 5, 3),
        (33, 60, 3, 40),
        (1, 390, 3, 70),
        (7, 130, 1, 0),
    ] {
        let n_ctx = pos0 + t + 2;
        let hs = c / nh;
        // Earlier positions already in the cache; this step's k and v come from qkv.
        let mut k_cache = random(n_ctx * c, 9, 1.0);
        let mut v_cache = random(n_ctx * c, 10, 1.0);
        let qkv = random(t * 3 * c, 11, 2.0);
        let (kb, vb) = (h.f32s(&k_cache), h.f32s(&v_cache));
        let qkvb = h.f32s(&qkv);
        let step = h.step(t, 0, pos0);
        h.run(
            &h.p.kv_append,
            &[
                &step,
                &h.kv_widths(Heads::mha(c, nh)),
                &qkvb,
                &kb,
                &vb,
                &h.none(),
            ],
            (c as u32).div_ceil(64),
            t as u32,
        );
        reference::kv_append(&qkv, &mut k_cache, &mut v_cache, Heads::mha(c, nh), pos0);
        assert_eq!(h.read(&kb), k_cache, "kv_append k");
        assert_eq!(h.read(&vb), v_cache, "kv_append v");

        let out = h.f32s(&vec![f32::NAN; t * c]);
        let params = AttentionParams::heads(nh as u32, hs as u32);
        let want = reference::attention(&qkv, &k_cache, &v_cache, Heads::mha(c, nh), pos0);
        // The generic pipeline (head size read at run time) and one with it fixed, as models
        // build it.
        let fixed = wgpt::gpu::kernels::pipeline(&h.gpu, "attention", None, &[("HS", hs as f64)]);
        for (pipe, name) in [(&h.p.attention, "run-time HS"), (&fixed, "fixed HS")] {
            h.run(
                pipe,
                &[
                    &step,
                    &h.gpu.uniform("p", &params),
                    &qkvb,
                    &kb,
                    &vb,
                    &out,
                    &h.none(),
                ],
                nh as u32,
                t as u32,
            );
            // Outputs are convex combinations of values in [-1, 1]; online softmax in f32 over
            // <= 73 keys with scores up to ~|2 * sqrt(HS)|: ~1e-6.
            let d = close(&h.read(&out), &want, 1e-5);
            println!("attention ({name}) T={t} C={c} NH={nh} HS={hs} pos0={pos0}: max diff {d:e}");
        }
    }
}

/// Batched decode (step.wgsl): one row per sequence, row r at position pos[r] of KV-cache slot
/// slots[r] (rows in another order than their slots, as continuous batching leaves them),
/// through embed, kv_append and attention (buffer and texture variants), against the twins run
/// per sequence on its own slot. B = 5 rows at positions 0 .. 70 (one past a 64-key block).
#[test]
fn batched_rows_use_their_slots() {
    let h = Harness::new();
    let none = h.none();
    let (c, nh, n_ctx, v) = (60, 5, 72, 11);
    let (c4, nh4) = (64, 4); // the texture kernels need C % 4 == 0 and HS % 4 == 0
    let pos = [0usize, 5, 64, 70, 1];
    let slots = [3usize, 0, 4, 1, 2];
    let b = pos.len();
    let mut step = Step {
        batch: 1,
        slot_rows: n_ctx as u32,
        ..Step::new(b as u32, 0, 0)
    };
    for r in 0..b {
        (step.pos[r], step.slots[r]) = (pos[r] as u32, slots[r] as u32);
    }
    let stepb = h.gpu.uniform("step", &step);

    // embed: each row takes its own position's wpe row.
    let wte = random(v * c, 40, 1.0);
    let wpe = random(n_ctx * c, 41, 1.0);
    let tokens: Vec<u32> = (0..b as u32).map(|i| (i * 3 + 1) % v as u32).collect();
    let x = h.f32s(&vec![f32::NAN; b * c]);
    let params = EmbedParams::new(c as u32, 0, v as u32, 1.0);
    let bufs = [
        &stepb,
        &h.gpu.uniform("p", &params),
        &h.u32s(&tokens),
        &h.f32s(&wte),
        &h.f32s(&wpe),
        &x,
    ];
    h.run(&h.p.embed, &bufs, (c as u32).div_ceil(64), b as u32);
    let got = h.read(&x);
    for r in 0..b {
        let want = reference::embed(&tokens[r..r + 1], &wte, &wpe, c, pos[r]);
        assert_eq!(got[r * c..(r + 1) * c], want[..], "embed row {r}");
    }

    for (c, nh, textures) in [(c, nh, false), (c4, nh4, true)] {
        let hs = c / nh;
        let k_all = random(b * n_ctx * c, 42, 1.0);
        let v_all = random(b * n_ctx * c, 43, 1.0);
        let qkv = random(b * 3 * c, 44, 2.0);
        let params = AttentionParams::heads(nh as u32, hs as u32);
        let (qb, pu, out) = (
            h.f32s(&qkv),
            h.gpu.uniform("p", &params),
            h.f32s(&vec![f32::NAN; b * c]),
        );
        if textures {
            let t = |data: &[f32]| {
                h.gpu
                    .texture_init("kv", data, b * n_ctx, c)
                    .create_view(&Default::default())
            };
            let (kt, vt) = (t(&k_all), t(&v_all));
            let tp = h.p.textures();
            let view = wgpu::BindingResource::TextureView;
            let w = h.kv_widths(Heads::mha(c, nh));
            let res = vec![
                stepb.as_entire_binding(),
                w.as_entire_binding(),
                qb.as_entire_binding(),
                view(&kt),
                view(&vt),
                none.as_entire_binding(),
            ];
            let bg = wgpt::gpu::kernels::bind_resources(&h.gpu, &tp.kv_append_texture, "t", res);
            dispatch(
                &h,
                &tp.kv_append_texture,
                &bg,
                ((c / 4) as u32).div_ceil(64),
                b as u32,
            );
            let res = vec![
                stepb.as_entire_binding(),
                pu.as_entire_binding(),
                qb.as_entire_binding(),
                view(&kt),
                view(&vt),
                out.as_entire_binding(),
                none.as_entire_binding(),
            ];
            let bg = wgpt::gpu::kernels::bind_resources(&h.gpu, &tp.attention_texture, "t", res);
            dispatch(
                &h,
                &tp.attention_texture,
                &bg,
                (nh as u32).div_ceil(8),
                b as u32,
            );
        } else {
            let (kb, vb) = (h.f32s(&k_all), h.f32s(&v_all));
            h.run(
                &h.p.kv_append,
                &[
                    &stepb,
                    &h.kv_widths(Heads::mha(c, nh)),
                    &qb,
                    &kb,
                    &vb,
                    &h.none(),
                ],
                (c as u32).div_ceil(64),
                b as u32,
            );
            h.run(
                &h.p.attention,
                &[&stepb, &pu, &qb, &kb, &vb, &out, &h.none()],
                nh as u32,
                b as u32,
            );
        }
        let got = h.read(&out);
        let mut worst = 0f32;
        for r in 0..b {
            let slot = slots[r] * n_ctx * c..(slots[r] + 1) * n_ctx * c;
            let (mut k, mut vv) = (k_all[slot.clone()].to_vec(), v_all[slot].to_vec());
            let row = &qkv[r * 3 * c..(r + 1) * 3 * c];
            reference::kv_append(row, &mut k, &mut vv, Heads::mha(c, nh), pos[r]);
            let want = reference::attention(row, &k, &vv, Heads::mha(c, nh), pos[r]);
            // As the single-sequence attention: convex combinations of values in [-1, 1].
            worst = worst.max(close(&got[r * c..(r + 1) * c], &want, 1e-5));
        }
        println!(
            "batched kv_append + attention (textures: {textures}) B={b} C={c} NH={nh}: max diff {worst:e}"
        );
    }
}

/// The fused epilogues: GELU after the up-projection, the residual add after the down-projection,
/// against the CPU twins applied to the CPU matmul. Values reach |x| ~ 30, far into GELU's tails.
#[test]
fn linear_epilogues_match_cpu() {
    let h = Harness::new();
    for (m, k, n) in [(1, 36, 17), (7, 60, 45), (33, 68, 100), (7, 60, 46)] {
        let a = random(m * k, 21, 3.0);
        let w = random(n * k, 22, 1.0);
        let b = random(n, 23, 1.0);
        let x0 = random(m * n, 24, 1.0);
        let plain = reference::matmul(&a, &w, Some(&b), k, n);
        // Interleaved (gate, up) outputs: the first half of each output row is silu(g) * u.
        let mut gated = x0.clone();
        for (row, g) in gated.chunks_mut(n).zip(plain.chunks(n)) {
            let v = reference::gate(g, wgpt::config::Activation::Silu);
            row[..n / 2].copy_from_slice(&v);
        }
        let mut gelu = plain.clone();
        reference::gelu(&mut gelu);
        let mut resid = x0.clone();
        reference::residual(&mut resid, &plain);
        let (mut relu, mut gelu_erf) = (plain.clone(), plain.clone());
        reference::relu(&mut relu);
        reference::gelu_erf(&mut gelu_erf);
        let mut cases = vec![
            (Epilogue::Gelu, &gelu),
            (Epilogue::Residual, &resid),
            (Epilogue::Relu, &relu),
            (Epilogue::GeluErf, &gelu_erf),
        ];
        if n % 2 == 0 {
            cases.push((Epilogue::GatedSilu, &gated));
        }
        for (epi, want) in cases {
            // The gated rows are half as wide: ldo / 2 apart in the output (which keeps x0's
            // layout here, n wide, so the output stride is passed as 2n).
            let ldo = if epi == Epilogue::GatedSilu { 2 * n } else { n };
            for (name, pipe) in linear_kernels(&h.p, epi) {
                let params = MatmulParams {
                    k: k as u32,
                    n: n as u32,
                    ldo: ldo as u32,
                    col0: 0,
                    has_bias: 1,
                    kv_c: 0,
                    ln_eps: 0.0,
                    kv_w: 0,
                };
                let out = h.f32s(&x0);
                let bufs = [
                    &h.step(m, 0, 0),
                    &h.gpu.uniform("p", &params),
                    &h.f32s(&a),
                    &h.f32s(&w),
                    &h.f32s(&b),
                    &out,
                ];
                let (x, y) = linear_grid(name, n as u32, m as u32);
                h.run(pipe, &bufs, x, y);
                // Sums of K <= 68 terms of size <= 3 in f32 vs f64, then tanh or the erf
                // approximation (|error| <= 1.5e-7, times |x| / 2 in the GELU) in f32.
                let d = close(&h.read(&out), want, 1e-5);
                println!("{name} {epi:?} M={m} K={k} N={n}: max diff {d:e}");
            }
        }
    }
}

/// sinusoid.wgsl's position table against the formula in f64, positions up to 2048 (+ XGLM's
/// offset of 2), at XGLM-564M's width and a small one.
#[test]
fn sinusoid_table_matches_f64() {
    let h = Harness::new();
    for c in [1024usize, 36] {
        let n_ctx = 2049;
        let got = wgpt::runtime::sinusoid_table(&h.gpu, n_ctx, c, 2).unwrap();
        let got = h.read(&got.chunks[0].buffer);
        let want = reference::sinusoid(n_ctx, c, 2);
        let d = max_abs_diff(&got, &want);
        println!("sinusoid C={c} positions 2..{}: max diff {d:e}", n_ctx + 2);
        // The angle is exact before reduction; the reduction and the polynomials cost a few
        // f32 ulps of values in [-1, 1].
        assert!(d < 1e-6, "{d}");
    }
}

#[test]
fn argmax_matches_cpu_with_ties() {
    let h = Harness::new();
    for v in [1usize, 7, 257, 50257] {
        let mut logits = random(v, 14, 10.0);
        if v > 7 {
            // A tie between two maxima: the lower index wins, as in torch.argmax.
            logits[v - 2] = 20.0;
            logits[5] = 20.0;
            logits[3] = f32::NAN;
        }
        let tok = h.u32s(&[u32::MAX; 2]);
        let params = wgpt::gpu::kernels::ArgmaxParams {
            v: v as u32,
            n: 1,
            _pad: [0; 2],
        };
        h.run(
            &h.p.argmax,
            &[&h.gpu.uniform("p", &params), &h.f32s(&logits), &tok],
            1,
            1,
        );
        let got = bytemuck::cast_slice::<f32, u32>(&h.read(&tok))[0];
        assert_eq!(got, reference::argmax(&logits), "V={v}");
        println!("argmax V={v}: {got}");
    }
}

#[test]
fn f16_weights_match_cpu_on_rounded_weights() {
    let h = Harness::new();
    let p16 = Pipelines::new(&h.gpu, WeightDtype::F16, false, None, &Epilogue::ALL);
    let halves = |v: &[f32]| -> (Vec<f32>, wgpu::Buffer) {
        let hv: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
        (
            hv.iter().map(|x| x.to_f32()).collect(),
            h.gpu.storage_init("w16", bytemuck::cast_slice(&hv)),
        )
    };
    for (m, k, n) in [(1, 36, 17), (7, 60, 45), (33, 68, 100)] {
        let a = random(m * k, 16, 1.0);
        let (w, wb) = halves(&random(n * k, 17, 1.0));
        let b = random(n, 18, 1.0);
        let want = reference::matmul(&a, &w, Some(&b), k, n);
        let params = MatmulParams {
            k: k as u32,
            n: n as u32,
            ldo: n as u32,
            col0: 0,
            has_bias: 1,
            kv_c: 0,
            ln_eps: 0.0,
            kv_w: 0,
        };
        for (name, pipe) in linear_kernels(&p16, Epilogue::Store) {
            let out = h.f32s(&vec![f32::NAN; m * n]);
            let bufs = [
                &h.step(m, 0, 0),
                &h.gpu.uniform("p", &params),
                &h.f32s(&a),
                &wb,
                &h.f32s(&b),
                &out,
            ];
            let (x, y) = linear_grid(name, n as u32, m as u32);
            h.run(pipe, &bufs, x, y);
            // As the f32 test: the weights are exact halves, sums in f32 vs f64.
            let d = close(&h.read(&out), &want, 1e-5);
            println!("{name} f16 M={m} K={k} N={n}: max diff {d:e}");
        }
    }
    let (t, c, v) = (7, 60, 37);
    let (wte, wteb) = halves(&random(v * c, 19, 1.0));
    let wpe = random(16 * c, 20, 1.0);
    let tokens: Vec<u32> = (0..t).map(|i| ((i * 5 + 1) % v) as u32).collect();
    let x = h.f32s(&vec![f32::NAN; t * c]);
    let params = EmbedParams::new(c as u32, 0, v as u32, 1.0);
    let bufs = [
        &h.step(t, 0, 2),
        &h.gpu.uniform("p", &params),
        &h.u32s(&tokens),
        &wteb,
        &h.f32s(&wpe),
        &x,
    ];
    h.run(&p16.embed, &bufs, (c as u32).div_ceil(64), t as u32);
    assert_eq!(
        h.read(&x),
        reference::embed(&tokens, &wte, &wpe, c, 2),
        "f16 embed is exact"
    );
}

/// q8 weights (int8, one f32 scale per 32 along K) in the buffer kernels: the stored encoding
/// holds the twin's int8s and scales; matmul and gemv (the weight split in two row chunks as a
/// split head is) and embed (a split token table) against the CPU twins run on the dequantised
/// weights. K multiples of 32 (q8's block) but not of 128 (a partial scale texel); M, N ragged.
#[test]
fn q8_weights_match_cpu_on_dequantised_weights() {
    let h = Harness::new();
    // Three rows (one partial group of four, padded with zeros), K / 32 = 5 blocks (a partial
    // scale texel).
    let (rows, k) = (3, 160);
    let w = random(rows * k, 40, 1.0);
    let bytes = encode(&w, k, WeightDtype::Q8);
    let row_bytes = WeightDtype::Q8.row_bytes(k);
    assert_eq!(bytes.len(), 4 * row_bytes);
    let (q, scales) = reference::quantize_q8(&w);
    for r in 0..4 {
        let row = &bytes[r * row_bytes..(r + 1) * row_bytes];
        let stored_q: Vec<i8> = row[..k].iter().map(|&b| b as i8).collect();
        let want_q = if r < rows {
            &q[r * k..(r + 1) * k]
        } else {
            &[0; 160][..]
        };
        assert_eq!(stored_q, want_q, "row {r} int8s");
        for b in 0..k / 32 {
            // Block b's scale of row r: row 4 (r / 4) + b % 4 of the group, texel b / 4, lane r % 4.
            let at = (r / 4 * 4 + b % 4) * row_bytes + k + 16 * (b / 4) + 4 * (r % 4);
            let got = f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            let want = if r < rows {
                scales[r * k / 32 + b]
            } else {
                0.0
            };
            assert_eq!(got, want, "row {r} block {b} scale");
        }
    }

    block_formats_match_cpu(&h, WeightDtype::Q8);
}

/// The nibble formats (q4, q5: 4 or 5 bits with an f32 scale and minimum per 32 along K; q6: 6
/// bits with a scale per 16) in the buffer kernels, as
/// [`q8_weights_match_cpu_on_dequantised_weights`] tests q8's.
#[test]
fn nibble_weights_match_cpu_on_dequantised_weights() {
    let h = Harness::new();
    for dtype in [WeightDtype::Q4, WeightDtype::Q5, WeightDtype::Q6] {
        block_formats_match_cpu(&h, dtype);
    }
}

/// matmul and gemv (the weight split in two row chunks as a split head is) and embed (a split
/// token table) with a block format's weights against the CPU twins on the dequantised weights.
/// K multiples of 32 (the block) but not of 128 (a partial scale texel); M, N ragged.
fn block_formats_match_cpu(h: &Harness, dtype: WeightDtype) {
    let p = Pipelines::new(&h.gpu, dtype, false, None, &Epilogue::ALL);
    h.gpu.check().expect("pipelines compile");
    for (m, k, n) in [
        (1, 32, 17),
        (2, 96, 45),
        (4, 160, 9),
        (7, 64, 45),
        (33, 96, 100),
        (70, 800, 33),
    ] {
        let a = random(m * k, 41, 1.0);
        let w = random(n * k, 42, 1.0);
        let b = random(n, 43, 1.0);
        let want = reference::matmul(&a, &stored_weights(&w, dtype), Some(&b), k, n);
        for (name, pipe) in linear_kernels(&p, Epilogue::Store) {
            let out = h.f32s(&vec![f32::NAN; m * n]);
            let n1 = n / 3 + 1;
            for (c0, c1) in [(0, n1), (n1, n)] {
                let params = MatmulParams {
                    k: k as u32,
                    n: (c1 - c0) as u32,
                    ldo: n as u32,
                    col0: c0 as u32,
                    has_bias: 1,
                    kv_c: 0,
                    ln_eps: 0.0,
                    kv_w: 0,
                };
                let chunk = h
                    .gpu
                    .storage_init("w8", &encode(&w[c0 * k..c1 * k], k, dtype));
                let bufs = [
                    &h.step(m, 0, 0),
                    &h.gpu.uniform("p", &params),
                    &h.f32s(&a),
                    &chunk,
                    &h.f32s(&b),
                    &out,
                ];
                let (x, y) = linear_grid(name, (c1 - c0) as u32, m as u32);
                h.run(pipe, &bufs, x, y);
            }
            // The int8s (nibbles) are exact in f32 and each block's scale (and minimum) is applied
            // once to its f32 sums: no more roundings than with f32 weights, so the f32 test's
            // bound (sums of K <= 800 terms of size <= 1, f32 against f64, relative to the
            // largest output).
            let d = close(&h.read(&out), &want, 1e-5);
            println!("{name} {dtype:?} M={m} K={k} N={n}: max diff {d:e}");
        }
    }

    // The token table, split into two row chunks as a large one is.
    let (t, c, v, pos0) = (7, 96, 37, 2);
    let wte = random(v * c, 44, 1.0);
    let wpe = random(16 * c, 45, 1.0);
    let tokens: Vec<u32> = (0..t).map(|i| ((i * 5 + 1) % v) as u32).collect();
    let x = h.f32s(&vec![f32::NAN; t * c]);
    for (r0, r1) in [(0, 20), (20, v)] {
        let params = EmbedParams::new(c as u32, r0 as u32, (r1 - r0) as u32, 1.0);
        let chunk = h
            .gpu
            .storage_init("wte8", &encode(&wte[r0 * c..r1 * c], c, dtype));
        let bufs = [
            &h.step(t, 0, pos0),
            &h.gpu.uniform("p", &params),
            &h.u32s(&tokens),
            &chunk,
            &h.f32s(&wpe),
            &x,
        ];
        h.run(&p.embed, &bufs, (c as u32).div_ceil(64), t as u32);
    }
    let want = reference::embed(&tokens, &stored_weights(&wte, dtype), &wpe, c, pos0);
    // One f32 product q * scale (plus q4's minimum), as the twin's dequantisation, and one
    // add; a GPU may fuse q4's product and minimum (one rounding fewer): 1e-6 relative.
    let d = close(&h.read(&x), &want, 1e-6);
    println!("embed {dtype:?} T={t} C={c}: max diff {d:e}");
}

/// The texture-operand linear kernels (used on CPU adapters) against the CPU twin, epilogues
/// included, with f32 weights, f16 weights (eight halves per texel) and q8 weights (sixteen int8
/// per texel, scales four to a texel after them; K / 32 = 2, 4, 6, 128 blocks, so full and
/// partial scale texels); the twin gets the same rounded or dequantised weights. K is a multiple
/// of 64 as the texture layout requires; N and M ragged.
#[test]
fn texture_linear_kernels_match_cpu() {
    let h = Harness::new();
    for dtype in WeightDtype::ALL {
        let p = Pipelines::new(&h.gpu, dtype, true, None, &Epilogue::ALL);
        for (m, k, n) in [
            (1, 64, 17),
            (3, 128, 45),
            (33, 64, 100),
            (70, 192, 33),
            (4, 4096, 9),
        ] {
            let a = random(m * k, 25, 1.0);
            let w = random(n * k, 26, 1.0);
            // The weights as stored: what the twin multiplies by.
            let stored = stored_weights(&w, dtype);
            let b = random(n, 27, 1.0);
            let x0 = random(m * n, 28, 1.0);
            let plain = reference::matmul(&a, &stored, Some(&b), k, n);
            let mut resid = x0.clone();
            reference::residual(&mut resid, &plain);
            let wt = h.gpu.weight_texture_init("w", &w, n, k, dtype).unwrap();
            let wt = texture_tensor(wt, n, k, dtype);
            let t = p.textures();
            // The subgroup GEMM and GEMV must be there on adapters with subgroups of 8
            // (lavapipe), so that they are tested.
            let sg8 = wgpt::gpu::kernels::subgroups_of_8(&h.gpu);
            assert_eq!(t.matmul_texture_subgroup.is_some(), sg8);
            assert_eq!(t.gemv_texture_subgroup.is_some(), sg8);
            let mut kernels = vec![
                ("matmul_texture", &t.matmul_texture),
                ("gemv_texture", &t.gemv_texture),
            ];
            kernels.extend(
                (t.matmul_texture_subgroup.as_ref()).map(|sg| ("matmul_texture_subgroup", sg)),
            );
            kernels
                .extend((t.gemv_texture_subgroup.as_ref()).map(|sg| ("gemv_texture_subgroup", sg)));
            for (name, linear) in kernels {
                let pipe = linear.get(Epilogue::Residual);
                let out = h.f32s(&x0);
                let gemv = name.starts_with("gemv");
                run_texture_linear(&h, pipe, &a, &wt, Some(&b), &out, gemv);
                // As the buffer kernels: up to 4096 terms of size <= 1, f32 vs f64, relative to
                // the largest output. q8 sums x * q (q exact in f32) per block and scales once per
                // block: no more roundings than f32 weights, so the same bound.
                let d = close(&h.read(&out), &resid, 1e-5);
                println!("{name} {dtype:?} M={m} K={k} N={n}: max diff {d:e}");
            }
        }
    }
}

/// gemv_texture_kv (decode's qkv projection in the texture layout with subgroups) against the
/// CPU twin: its qkv output, and the key and value it writes into the cache textures at the
/// row's slot and position (every other cache row untouched), f32, f16 and q8 weights.
#[test]
fn texture_gemv_kv_appends_to_cache() {
    let h = Harness::new();
    let sg8 = wgpt::gpu::kernels::subgroups_of_8(&h.gpu);
    // (C, slot, position, n_ctx): C / 4 texels of a cache row are a multiple of 256 bytes, as
    // the readback copy needs.
    for (c, slot, pos, n_ctx) in [(64, 0, 0, 3), (192, 1, 5, 7)] {
        for dtype in WeightDtype::ALL {
            let p = Pipelines::new(&h.gpu, dtype, true, None, &[Epilogue::Store]);
            let pipe = p.textures().gemv_texture_kv.as_ref();
            // Must exist on adapters with subgroups of 8 (lavapipe), so that it is tested.
            assert_eq!(pipe.is_some(), sg8);
            let Some(pipe) = pipe else { continue };
            let a = random(c, 40, 1.0);
            let w = random(3 * c * c, 41, 1.0);
            let b = random(3 * c, 42, 1.0);
            let stored = stored_weights(&w, dtype);
            let want = reference::matmul(&a, &stored, Some(&b), c, 3 * c);
            let wt = h.gpu.weight_texture_init("w", &w, 3 * c, c, dtype).unwrap();
            let wt = texture_tensor(wt, 3 * c, c, dtype);
            let rows = 2 * n_ctx;
            let (k_tex, v_tex) = (h.gpu.texture("k", rows, c), h.gpu.texture("v", rows, c));
            let views = [&k_tex, &v_tex].map(|t| t.create_view(&Default::default()));
            let step = h.gpu.uniform(
                "step",
                &Step {
                    slot,
                    slot_rows: n_ctx as u32,
                    ..Step::new(1, 0, pos)
                },
            );
            let (at, au) = linear_input(&h, &a, 1, c);
            let (bb, out) = (h.f32s(&b), h.f32s(&vec![f32::NAN; 3 * c]));
            let io = LinearIo {
                step: &step,
                inp: &au,
                input_texture: Some(&at),
                bias: (&bb, true),
                out: &out,
                kv: Some(Kv::Append {
                    cache: [&views[0], &views[1]],
                    widths: KvWidths::mha(c as u32),
                }),
                ln: None,
                partials: None,
            };
            for (bg, n) in linear_binds(&h.gpu, pipe, &wt, &io) {
                dispatch(&h, pipe, &bg, n.div_ceil(4).div_ceil(8), 1);
            }
            // As texture_linear_kernels_match_cpu: <= 192 terms of size <= 1, f32 against f64.
            let got = h.read(&out);
            let d = close(&got, &want, 1e-5);
            // The cache holds exactly the key and value the kernel stored in qkv.
            let row = slot as usize * n_ctx + pos as usize;
            for (tex, part) in [(&k_tex, 1), (&v_tex, 2)] {
                let cache = read_texture(&h, tex);
                let mut expect = vec![0.0; rows * c];
                expect[row * c..(row + 1) * c].copy_from_slice(&got[part * c..(part + 1) * c]);
                assert_eq!(
                    max_abs_diff(&cache, &expect),
                    0.0,
                    "cache {part} of {dtype:?}"
                );
            }
            println!("gemv_texture_kv {dtype:?} C={c} slot={slot} pos={pos}: max diff {d:e}");
        }
    }
}

/// gemv_texture_attention (decode's qkv projection and attention in one dispatch, one workgroup
/// per head) then gemv_texture_append (the output projection, appending the step's key and
/// value) against the CPU twins, for f32, f16 and q8 weights, with and without the folded layer
/// norm: qkv, the attention's output over a cache of random earlier rows in a slot other than
/// the first, the projection with its residual, and the cache afterwards (exactly the earlier
/// rows plus this step's key and value). Head sizes 32, 64 (three heads) and 256 (the largest).
#[test]
fn texture_gemv_attention_matches_cpu() {
    let h = Harness::new();
    let no_rope = h.none();
    let eps = 1e-5;
    // (C, NH, position): no earlier keys, part of a block of 8, two whole blocks, four blocks
    // and one key.
    for (c, nh, pos) in [(64, 2, 0), (192, 3, 7), (128, 4, 16), (768, 3, 33)] {
        let hs = c / nh;
        let gpu = &h.gpu;
        assert!(
            wgpt::gpu::kernels::attends_in_gemv(gpu, Some(hs as u32)),
            "lavapipe has it"
        );
        for dtype in WeightDtype::ALL {
            let p = Pipelines::new(gpu, dtype, true, Some(hs as u32), &[Epilogue::Store]);
            let t = p.textures();
            let (Some(plain), Some(norm), Some(append)) = (
                &t.gemv_texture_attention,
                &t.gemv_texture_attention_norm,
                &t.gemv_texture_append,
            ) else {
                panic!("attends_in_gemv builds the attention pipelines");
            };
            let (slot, n_ctx) = (1, pos + 2);
            let rows = 2 * n_ctx;
            let x: Vec<f32> = random(c, 70, 3.0).iter().map(|v| v + 1.5).collect();
            let w = random(3 * c * c, 71, 0.2);
            let b = random(3 * c, 72, 1.0);
            let k_rows = random(rows * c, 73, 1.0);
            let v_rows = random(rows * c, 74, 1.0);
            let stored = stored_weights(&w, dtype);
            let sums: Vec<f32> = stored.chunks(c).map(|r| r.iter().sum()).collect();
            let (xt, xu) = linear_input(&h, &x, 1, c);
            let step = gpu.uniform(
                "step",
                &Step {
                    slot,
                    slot_rows: n_ctx as u32,
                    ..Step::new(1, 0, pos as u32)
                },
            );
            let wt = texture_tensor(
                gpu.weight_texture_init("w", &w, 3 * c, c, dtype).unwrap(),
                3 * c,
                c,
                dtype,
            );
            for (name, pipe, ln) in [("", plain, false), (" NORM", norm, true)] {
                let k_tex = gpu.texture_init("k", &k_rows, rows, c);
                let v_tex = gpu.texture_init("v", &v_rows, rows, c);
                let views = [&k_tex, &v_tex].map(|t| t.create_view(&Default::default()));
                let (bb, sb) = (h.f32s(&b), h.f32s(&sums));
                let (qkv, att_y) = (h.f32s(&vec![f32::NAN; 3 * c]), h.f32s(&vec![f32::NAN; c]));
                let io = LinearIo {
                    step: &step,
                    inp: &xu,
                    input_texture: Some(&xt),
                    bias: (&bb, true),
                    out: &qkv,
                    kv: Some(Kv::Attend {
                        cache: [&views[0], &views[1]],
                        att_y: &att_y,
                        widths: KvWidths::mha(c as u32),
                        inv_freq: &no_rope,
                    }),
                    ln: ln.then_some((&sb, eps)),
                    partials: None,
                };
                for (bg, _) in linear_binds(gpu, pipe, &wt, &io) {
                    dispatch(&h, pipe, &bg, nh as u32, 1);
                }
                // The twins: the projection of x (standardised with NORM), then attention over
                // the slot's rows 0 .. pos of the cache and this step's key and value.
                let xn = match ln {
                    true => reference::layernorm(&x, &vec![1.0; c], &vec![0.0; c], c, eps),
                    false => x.clone(),
                };
                let want_qkv = reference::matmul(&xn, &stored, Some(&b), c, 3 * c);
                let got_qkv = h.read(&qkv);
                // As texture_gemv_with_fused_norm_matches_cpu: C terms of size <= ~|x| (3.5)
                // times weights <= 0.2, f32 against f64, and the norm's statistics: 1e-4
                // relative to the largest output.
                let dq = close(&got_qkv, &want_qkv, 1e-4);
                let slot_rows = slot as usize * n_ctx * c..(slot as usize * n_ctx + pos) * c;
                let (mut kc, mut vc) = (
                    k_rows[slot_rows.clone()].to_vec(),
                    v_rows[slot_rows].to_vec(),
                );
                kc.extend_from_slice(&got_qkv[c..2 * c]);
                vc.extend_from_slice(&got_qkv[2 * c..]);
                let want_att = reference::attention(&got_qkv, &kc, &vc, Heads::mha(c, nh), pos);
                // Convex combinations of values in [-1, 1] (the step's own up to ~|qkv|), f32
                // online softmax against f64: as attention_texture, 1e-5 of the largest value.
                let da = close(&h.read(&att_y), &want_att, 1e-5);

                // gemv_texture_append: out += W2 a + b2, and the cache gains row pos of the slot.
                let a = random(c, 75, 1.0);
                let (w2, b2, resid) = (
                    random(c * c, 76, 1.0),
                    random(c, 77, 1.0),
                    random(c, 78, 1.0),
                );
                let stored2 = stored_weights(&w2, dtype);
                let mut want = reference::matmul(&a, &stored2, Some(&b2), c, c);
                want.iter_mut().zip(&resid).for_each(|(o, r)| *o += r);
                let wt2 = texture_tensor(
                    gpu.weight_texture_init("w2", &w2, c, c, dtype).unwrap(),
                    c,
                    c,
                    dtype,
                );
                let (at, au) = linear_input(&h, &a, 1, c);
                let (bb2, out) = (h.f32s(&b2), h.f32s(&resid));
                let io = LinearIo {
                    step: &step,
                    inp: &au,
                    input_texture: Some(&at),
                    bias: (&bb2, true),
                    out: &out,
                    kv: Some(Kv::Deferred {
                        cache: [&views[0], &views[1]],
                        qkv: &qkv,
                        widths: KvWidths::mha(c as u32),
                    }),
                    ln: None,
                    partials: None,
                };
                for (bg, n) in linear_binds(gpu, append, &wt2, &io) {
                    dispatch(&h, append, &bg, n.div_ceil(4).div_ceil(8), 1);
                }
                // As texture_linear_kernels_match_cpu's residual: C terms of size <= 1.
                let dp = close(&h.read(&out), &want, 1e-5);
                let row = slot as usize * n_ctx + pos;
                for (tex, before, part) in [(&k_tex, &k_rows, 1), (&v_tex, &v_rows, 2)] {
                    let mut expect = before.clone();
                    expect[row * c..(row + 1) * c]
                        .copy_from_slice(&got_qkv[part * c..(part + 1) * c]);
                    assert_eq!(
                        max_abs_diff(&read_texture(&h, tex), &expect),
                        0.0,
                        "cache {part}"
                    );
                }
                println!(
                    "gemv_texture_attention{name} {dtype:?} C={c} NH={nh} pos={pos}: qkv {dq:e}, \
                     attention {da:e}; gemv_texture_append {dp:e}"
                );
            }
        }
    }
}

/// gemv_texture_attention for the Llama family (grouped-query heads, the rope rotating the query
/// and key in registers, the RMSNorm before it fused in) then gemv_texture_append, against the
/// CPU twins: RMSNorm, the projection, the rope on the step's query and keys, attention over a
/// cache of random earlier rows in the second slot, and the cache afterwards. Heads (NH, NKV,
/// HS): MQA, SmolLM2's 9 of 3, 128-wide heads, and MHA with the rope; every weight format (f32
/// without the norm, which its GEMV does not scale).
#[test]
fn texture_gemv_attention_with_rope_and_gqa_matches_cpu() {
    use wgpt::gpu::kernels::{Extra, entry_pipeline, rope_uniform};
    use wgpt::gpu::registry::Layout;
    let h = Harness::new();
    let gpu = &h.gpu;
    let eps = 1e-5;
    for (nh, nkv, hs, pos) in [
        (3, 1, 64, 0),
        (9, 3, 64, 7),
        (4, 2, 128, 33),
        (2, 2, 64, 16),
    ] {
        assert!(
            wgpt::gpu::kernels::attends_in_gemv(gpu, Some(hs as u32)),
            "lavapipe has it"
        );
        let heads = Heads { nh, nkv, hs };
        let (q, kv, k) = (nh * hs, nkv * hs, nh * hs);
        let n = heads.qkv();
        let freqs = rope_freqs(hs);
        let (slot, n_ctx) = (1usize, pos + 2);
        let rows = 2 * n_ctx;
        let x: Vec<f32> = random(k, 80, 3.0).iter().map(|v| v + 1.5).collect();
        let gain: Vec<f32> = random(k, 81, 0.5).iter().map(|v| v + 1.0).collect();
        let (w, b) = (random(n * k, 82, 0.2), random(n, 83, 1.0));
        let (k_rows, v_rows) = (random(rows * kv, 84, 1.0), random(rows * kv, 85, 1.0));
        let step = gpu.uniform(
            "step",
            &Step {
                slot: slot as u32,
                slot_rows: n_ctx as u32,
                ..Step::new(1, 0, pos as u32)
            },
        );
        let (xt, xu) = linear_input(&h, &x, 1, k);
        let (bb, gb, fb) = (h.f32s(&b), h.f32s(&gain), rope_uniform(gpu, "f", &freqs));
        for dtype in WeightDtype::ALL {
            let norm = dtype != WeightDtype::F32;
            let format = ("WEIGHT_FORMAT", dtype.format().code() as f64);
            let norms = [("NORM", norm as u32 as f64), ("RMS", norm as u32 as f64)];
            let attend = entry_pipeline(
                gpu,
                "matmul_texture_subgroup",
                "gemv_texture_attention",
                Some(Layout::Linear {
                    textures: true,
                    extra: Extra::Attend,
                }),
                &[&[format, ("HS", hs as f64), ("ROPE", 1.0)][..], &norms].concat(),
            );
            let stored = stored_weights(&w, dtype);
            let wt = texture_tensor(
                gpu.weight_texture_init("w", &w, n, k, dtype).unwrap(),
                n,
                k,
                dtype,
            );
            let k_tex = gpu.texture_init("k", &k_rows, rows, kv);
            let v_tex = gpu.texture_init("v", &v_rows, rows, kv);
            let views = [&k_tex, &v_tex].map(|t| t.create_view(&Default::default()));
            let (qkv, att_y) = (h.f32s(&vec![f32::NAN; n]), h.f32s(&vec![f32::NAN; q]));
            let widths = KvWidths {
                q: q as u32,
                kv: kv as u32,
            };
            let io = LinearIo {
                step: &step,
                inp: &xu,
                input_texture: Some(&xt),
                bias: (&bb, true),
                out: &qkv,
                kv: Some(Kv::Attend {
                    cache: [&views[0], &views[1]],
                    att_y: &att_y,
                    widths,
                    inv_freq: &fb,
                }),
                ln: norm.then_some((&gb, eps)),
                partials: None,
            };
            for (bg, _) in linear_binds(gpu, &attend, &wt, &io) {
                dispatch(&h, &attend, &bg, nh as u32, 1);
            }
            let xn = match norm {
                true => reference::rms_norm(&x, &gain, k, eps),
                false => x.clone(),
            };
            let mut want_qkv = reference::matmul(&xn, &stored, Some(&b), k, n);
            reference::rope(&mut want_qkv, &freqs, heads, pos);
            let got_qkv = h.read(&qkv);
            // As texture_gemv_attention_matches_cpu: K terms of size <= ~|x| times weights <=
            // 0.2 and the norm's statistics, 1e-4 of the largest output (the rotation's cos and
            // sin add a few f32 roundings).
            let dq = close(&got_qkv, &want_qkv, 1e-4);
            let slot_rows = slot * n_ctx * kv..(slot * n_ctx + pos) * kv;
            let (mut kc, mut vc) = (
                k_rows[slot_rows.clone()].to_vec(),
                v_rows[slot_rows].to_vec(),
            );
            kc.extend_from_slice(&got_qkv[q..q + kv]);
            vc.extend_from_slice(&got_qkv[q + kv..]);
            let want_att = reference::attention(&got_qkv, &kc, &vc, heads, pos);
            // As texture_gemv_attention_matches_cpu: convex combinations, 1e-5 of the largest.
            let da = close(&h.read(&att_y), &want_att, 1e-5);

            // gemv_texture_append (N = C) copies the step's key and value into the cache.
            let append = entry_pipeline(
                gpu,
                "matmul_texture_subgroup",
                "gemv_texture_append",
                Some(Layout::Linear {
                    textures: true,
                    extra: Extra::Deferred,
                }),
                &[format, ("EPILOGUE", Epilogue::Residual as u32 as f64)],
            );
            let w2 = random(k * q, 86, 1.0);
            let wt2 = texture_tensor(
                gpu.weight_texture_init("w2", &w2, k, q, dtype).unwrap(),
                k,
                q,
                dtype,
            );
            let (b2, resid) = (random(k, 87, 1.0), random(k, 88, 1.0));
            let mut want =
                reference::matmul(&want_att, &stored_weights(&w2, dtype), Some(&b2), q, k);
            want.iter_mut().zip(&resid).for_each(|(o, r)| *o += r);
            let (at, au) = linear_input(&h, &want_att, 1, q);
            let (bb2, out) = (h.f32s(&b2), h.f32s(&resid));
            let io = LinearIo {
                step: &step,
                inp: &au,
                input_texture: Some(&at),
                bias: (&bb2, true),
                out: &out,
                kv: Some(Kv::Deferred {
                    cache: [&views[0], &views[1]],
                    qkv: &qkv,
                    widths,
                }),
                ln: None,
                partials: None,
            };
            for (bg, cols) in linear_binds(gpu, &append, &wt2, &io) {
                dispatch(&h, &append, &bg, cols.div_ceil(4).div_ceil(8), 1);
            }
            // As texture_linear_kernels_match_cpu's residual: NH HS terms of size <= 1.
            let dp = close(&h.read(&out), &want, 1e-5);
            let row = slot * n_ctx + pos;
            for (tex, before, part) in [(&k_tex, &k_rows, q), (&v_tex, &v_rows, q + kv)] {
                let mut expect = before.clone();
                expect[row * kv..(row + 1) * kv].copy_from_slice(&got_qkv[part..part + kv]);
                assert_eq!(
                    max_abs_diff(&read_texture(&h, tex), &expect),
                    0.0,
                    "cache at {part}"
                );
            }
            println!(
                "gemv_texture_attention ROPE NH={nh} NKV={nkv} HS={hs} pos={pos} {dtype:?}: \
                 qkv {dq:e}, attention {da:e}; gemv_texture_append {dp:e}"
            );
        }
    }
}

/// The decode GEMVs with a folded layer norm fused in (matmul_texture_subgroup.wgsl's NORM:
/// gemv_texture_subgroup and gemv_texture_kv) against the CPU twin: standardise x, then the
/// linear layer, for f32, f16 and q8 weights; the row sums are the twin's of the stored weights.
/// x has a mean far from 0 and a spread unlike 1, so both halves of the norm count.
#[test]
fn texture_gemv_with_fused_norm_matches_cpu() {
    let h = Harness::new();
    let sg8 = wgpt::gpu::kernels::subgroups_of_8(&h.gpu);
    let eps = 1e-5;
    // (K, N): N = 3C' for gemv_texture_kv's cache (C' a multiple of 4); K up to GPT-2's width.
    for (k, n) in [(64, 96), (192, 48), (768, 12)] {
        for dtype in WeightDtype::ALL {
            let p = Pipelines::new(&h.gpu, dtype, true, None, &Epilogue::ALL);
            let t = p.textures();
            // Must exist on adapters with subgroups of 8 (lavapipe), so that they are tested.
            assert_eq!(t.gemv_texture_norm.is_some(), sg8);
            assert_eq!(t.gemv_texture_kv_norm.is_some(), sg8);
            let (Some(norm), Some(kv_norm)) = (&t.gemv_texture_norm, &t.gemv_texture_kv_norm)
            else {
                continue;
            };
            let x: Vec<f32> = random(k, 43, 3.0).iter().map(|v| v + 1.5).collect();
            let w = random(n * k, 44, 1.0);
            let b = random(n, 45, 1.0);
            let stored = stored_weights(&w, dtype);
            let xn = reference::layernorm(&x, &vec![1.0; k], &vec![0.0; k], k, eps);
            let want = reference::matmul(&xn, &stored, Some(&b), k, n);
            let sums: Vec<f32> = stored.chunks(k).map(|r| r.iter().sum()).collect();
            let wt = h.gpu.weight_texture_init("w", &w, n, k, dtype).unwrap();
            let wt = texture_tensor(wt, n, k, dtype);
            let (bb, sb) = (h.f32s(&b), h.f32s(&sums));
            let cache = [0, 1].map(|_| h.gpu.texture("kv", 1, n / 3));
            let views = cache.each_ref().map(|t| t.create_view(&Default::default()));
            for (name, pipe, kv) in [
                ("gemv_texture_subgroup", norm.get(Epilogue::Store), None),
                (
                    "gemv_texture_kv",
                    kv_norm,
                    Some(Kv::Append {
                        cache: [&views[0], &views[1]],
                        widths: KvWidths::mha(n as u32 / 3),
                    }),
                ),
            ] {
                let out = norm_gemv(&h, pipe, &wt, &x, (&bb, (&sb, eps)), kv);
                // K terms of size <= ~|x| (3.5) in f32 against f64, times rstd, and the mean
                // times the row sums (E[x^2] - mean^2 loses a few bits more): 1e-4 relative to the
                // largest output.
                let d = close(&out, &want, 1e-4);
                println!("{name} NORM {dtype:?} K={k} N={n}: max diff {d:e}");
            }
        }
    }
}

/// gemv_texture_subgroup with an RMSNorm fused in (NORM and RMS: the norm's gain scales the
/// input as it is loaded, the weights stay as stored, so packed GGUF weights need no folding)
/// against the CPU twin: RMSNorm with a gain far from 1, then the linear layer, for every
/// format but f32 (whose NORM path reads its input unscaled; the planner does not fold there).
#[test]
fn texture_gemv_with_fused_rms_norm_matches_cpu() {
    let h = Harness::new();
    if !wgpt::gpu::kernels::subgroups_of_8(&h.gpu) {
        return;
    }
    let eps = 1e-5;
    for (k, n) in [(64, 36), (192, 20), (576, 12)] {
        for dtype in WeightDtype::ALL.into_iter().skip(1) {
            let layout = wgpt::gpu::registry::Layout::Linear {
                textures: true,
                extra: wgpt::gpu::kernels::Extra::None,
            };
            let constants = [
                ("WEIGHT_FORMAT", dtype.format().code() as f64),
                ("NORM", 1.0),
                ("RMS", 1.0),
            ];
            let linear = wgpt::gpu::kernels::Linear::new(
                &h.gpu,
                "matmul_texture_subgroup",
                "gemv_texture_subgroup",
                layout,
                &constants,
                &[Epilogue::Store],
            );
            let pipe = linear.get(Epilogue::Store);
            let x: Vec<f32> = random(k, 46, 3.0).iter().map(|v| v + 0.5).collect();
            let gain: Vec<f32> = random(k, 47, 1.0).iter().map(|v| 1.0 + v).collect();
            let w = random(n * k, 48, 1.0);
            let b = random(n, 49, 1.0);
            let xn = reference::rms_norm(&x, &gain, k, eps);
            let want = reference::matmul(&xn, &stored_weights(&w, dtype), Some(&b), k, n);
            let wt = h.gpu.weight_texture_init("w", &w, n, k, dtype).unwrap();
            let wt = texture_tensor(wt, n, k, dtype);
            let (bb, gb) = (h.f32s(&b), h.f32s(&gain));
            let out = norm_gemv(&h, pipe, &wt, &x, (&bb, (&gb, eps)), None);
            // K terms of size <= ~|gain x| (~7) in f32 against f64, times 1 / rms: 1e-4
            // relative to the largest output, as the layer-norm test.
            let d = close(&out, &want, 1e-4);
            println!("gemv_texture_subgroup NORM+RMS {dtype:?} K={k} N={n}: max diff {d:e}");
        }
    }
}

/// A decode GEMV with a norm fused in (`pipe`, NORM) over input row `x`: its outputs, with
/// `(bias, (row sums or RMS gain, eps))` bound and the cache of `kv` when it appends.
fn norm_gemv(
    h: &Harness,
    pipe: &wgpu::ComputePipeline,
    wt: &GpuTensor,
    x: &[f32],
    (bias, ln): (&wgpu::Buffer, (&wgpu::Buffer, f32)),
    kv: Option<Kv>,
) -> Vec<f32> {
    let (xt, xu) = linear_input(h, x, 1, x.len());
    let (step, out) = (h.step(1, 0, 0), h.f32s(&vec![f32::NAN; wt.rows]));
    let io = LinearIo {
        step: &step,
        inp: &xu,
        input_texture: Some(&xt),
        bias: (bias, true),
        out: &out,
        kv,
        ln: Some(ln),
        partials: None,
    };
    for (bg, cols) in linear_binds(&h.gpu, pipe, wt, &io) {
        dispatch(h, pipe, &bg, cols.div_ceil(4).div_ceil(8), 1);
    }
    h.read(&out)
}

/// gemv_texture_argmax (the head's GEMV leaving each workgroup's largest logit) then
/// argmax_partials, against the CPU twin: the logits, and a token that is exactly the first
/// largest of the logits the GPU stored, over two weight chunks, with the largest logit tied
/// between two rows in one lane, in two lanes of one workgroup, in two chunks, or in the second
/// chunk's first and last rows.
#[test]
fn texture_gemv_argmax_picks_first_largest() {
    let h = Harness::new();
    let sg8 = wgpt::gpu::kernels::subgroups_of_8(&h.gpu);
    let k = 64;
    for dtype in WeightDtype::ALL {
        let p = Pipelines::new(&h.gpu, dtype, true, None, &[Epilogue::Store]);
        let t = p.textures();
        // Must exist on adapters with subgroups of 8 (lavapipe), so that it is tested.
        assert_eq!(t.gemv_texture_argmax.is_some(), sg8);
        let Some(pipe) = &t.gemv_texture_argmax else {
            continue;
        };
        for (n, tie) in [
            (77, None),
            (1001, Some((64, 66))),
            (1001, Some((69, 90))),
            (1001, Some((200, 700))),
            (1001, Some((600, 1000))),
        ] {
            let x = random(k, 61, 1.0);
            let mut w = random(n * k, 60, 1.0);
            if let Some((a, b)) = tie {
                // Two equal rows along x: the largest logits (|x|^2 against ~|x|), a tie.
                let row: Vec<f32> = x.iter().map(|v| 3.0 * v).collect();
                w[a * k..(a + 1) * k].copy_from_slice(&row);
                w[b * k..(b + 1) * k].copy_from_slice(&row);
            }
            // Chunks of at most 512 rows (a multiple of 32, as the candidates' slots need).
            let chunks: Vec<TextureChunk> = (0..n)
                .step_by(512)
                .map(|row0| {
                    let rows = (n - row0).min(512);
                    let tex = (h.gpu).weight_texture_init(
                        "w",
                        &w[row0 * k..(row0 + rows) * k],
                        rows,
                        k,
                        dtype,
                    );
                    let view = tex.unwrap().create_view(&Default::default());
                    TextureChunk {
                        view,
                        row0,
                        rows,
                        dtype,
                    }
                })
                .collect();
            let wt = GpuTensor::from_textures(n, k, dtype, chunks);
            let want = reference::matmul(&x, &stored_weights(&w, dtype), None, k, n);
            let (xt, xu) = linear_input(&h, &x, 1, k);
            let (zero, step) = (h.f32s(&vec![0.0; n]), h.step(1, 0, 0));
            let out = h.f32s(&vec![f32::NAN; n]);
            let partials = h.u32s(&vec![7; 2 * n.div_ceil(32)]);
            let io = LinearIo {
                step: &step,
                inp: &xu,
                input_texture: Some(&xt),
                bias: (&zero, false),
                out: &out,
                kv: None,
                ln: None,
                partials: Some(&partials),
            };
            for (bg, cols) in linear_binds(&h.gpu, pipe, &wt, &io) {
                dispatch(&h, pipe, &bg, cols.div_ceil(4).div_ceil(8), 1);
            }
            let params = ArgmaxParams {
                v: n.div_ceil(32) as u32,
                n: 1,
                _pad: [0; 2],
            };
            let (params, token) = (h.gpu.uniform("argmax", &params), h.u32s(&[u32::MAX; 4]));
            let pick = &t.argmax_partials;
            let r = [&params, &partials, &token].map(|b| b.as_entire_binding());
            let bg = bind_at(&h.gpu, pick, "test", [0, 3, 2].into_iter().zip(r).collect());
            dispatch(&h, pick, &bg, 1, 1);
            // K = 64 terms of size <= 3, f32 against f64: 1e-5 relative to the largest logit.
            let logits = h.read(&out);
            let d = close(&logits, &want, 1e-5);
            let first = (0..n).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
            let got = h.read(&token)[0].to_bits() as usize;
            assert_eq!(got, first, "{dtype:?} N={n}: argmax_partials");
            if let Some((a, b)) = tie {
                assert_eq!(logits[a], logits[b], "{dtype:?}: the tied rows' logits");
                assert_eq!(got, a, "{dtype:?} N={n}: a tie goes to the lower index");
            }
            println!(
                "gemv_texture_argmax {dtype:?} N={n} tie {tie:?}: token {got}, max diff {d:e}"
            );
        }
    }
}

/// The whole of an rgba32float texture, row by row.
fn read_texture(h: &Harness, tex: &wgpu::Texture) -> Vec<f32> {
    // Copies into a buffer need rows of a multiple of 256 bytes: copy padded rows, then drop
    // the padding.
    let row_bytes = tex.width() as usize * 16;
    let pitch = row_bytes.next_multiple_of(256);
    let buf = h
        .gpu
        .storage("read", (pitch * tex.height() as usize) as u64);
    let mut enc = h.gpu.device.create_command_encoder(&Default::default());
    enc.copy_texture_to_buffer(
        tex.as_image_copy(),
        wgpu::TexelCopyBufferInfo {
            buffer: &buf,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(pitch as u32),
                rows_per_image: None,
            },
        },
        tex.size(),
    );
    h.gpu.queue.submit([enc.finish()]);
    let all = h.read(&buf);
    (all.chunks(pitch / 4))
        .flat_map(|row| row[..row_bytes / 4].to_vec())
        .collect()
}

/// The texture layout's KV cache and attention (CPU adapters): kv_append_texture then
/// attention_texture against the CPU twins; the cache is pre-filled through the same kernel.
#[test]
fn texture_kv_append_and_attention_match_cpu() {
    let h = Harness::new();
    let none = h.none();
    // (T, C, NH, pos0): HS = 16, 64, 16, 256 (the largest supported); keys up to 73.
    for (t, c, nh, pos0) in [
        (1, 64, 4, 0),
        (7, 192, 3, 3),
        (33, 128, 8, 40),
        (1, 768, 3, 70),
    ] {
        let n_ctx = pos0 + t + 2;
        let hs = c / nh;
        let k_tex = h
            .gpu
            .texture("k", n_ctx, c)
            .create_view(&Default::default());
        let v_tex = h
            .gpu
            .texture("v", n_ctx, c)
            .create_view(&Default::default());
        let (mut k_cache, mut v_cache) = (vec![0.0; n_ctx * c], vec![0.0; n_ctx * c]);
        // Earlier positions, then this step, both through kv_append_texture.
        let history = random(pos0.max(1) * 3 * c, 29, 1.0);
        let qkv = random(t * 3 * c, 30, 2.0);
        let steps: Vec<(&[f32], usize, usize)> = if pos0 > 0 {
            vec![(&history, pos0, 0), (&qkv, t, pos0)]
        } else {
            vec![(&qkv, t, 0)]
        };
        for (rows, n, at) in steps {
            let b = h.f32s(rows);
            let (step, w) = (h.step(n, 0, at), h.kv_widths(Heads::mha(c, nh)));
            let res = vec![
                step.as_entire_binding(),
                w.as_entire_binding(),
                b.as_entire_binding(),
                wgpu::BindingResource::TextureView(&k_tex),
                wgpu::BindingResource::TextureView(&v_tex),
                none.as_entire_binding(),
            ];
            let bg = wgpt::gpu::kernels::bind_resources(
                &h.gpu,
                &h.p.textures().kv_append_texture,
                "t",
                res,
            );
            dispatch(
                &h,
                &h.p.textures().kv_append_texture,
                &bg,
                ((c / 4) as u32).div_ceil(64),
                n as u32,
            );
            reference::kv_append(
                &rows[..n * 3 * c],
                &mut k_cache,
                &mut v_cache,
                Heads::mha(c, nh),
                at,
            );
        }
        let out = h.f32s(&vec![f32::NAN; t * c]);
        let params = AttentionParams::heads(nh as u32, hs as u32);
        let (step, pu, qb) = (
            h.step(t, 0, pos0),
            h.gpu.uniform("p", &params),
            h.f32s(&qkv),
        );
        let res = vec![
            step.as_entire_binding(),
            pu.as_entire_binding(),
            qb.as_entire_binding(),
            wgpu::BindingResource::TextureView(&k_tex),
            wgpu::BindingResource::TextureView(&v_tex),
            out.as_entire_binding(),
            none.as_entire_binding(),
        ];
        let want = reference::attention(&qkv, &k_cache, &v_cache, Heads::mha(c, nh), pos0);
        let fixed =
            wgpt::gpu::kernels::pipeline(&h.gpu, "attention_texture", None, &[("HS", hs as f64)]);
        for (pipe, name) in [
            (&h.p.textures().attention_texture, "run-time HS"),
            (&fixed, "fixed HS"),
        ] {
            let bg = wgpt::gpu::kernels::bind_resources(&h.gpu, pipe, "t", res.clone());
            dispatch(&h, pipe, &bg, (nh as u32).div_ceil(8), t as u32);
            // As the buffer attention: convex combinations of values in [-1, 1], f32 online
            // softmax.
            let d = close(&h.read(&out), &want, 1e-5);
            println!(
                "attention_texture ({name}) T={t} C={c} NH={nh} HS={hs} pos0={pos0}: max diff {d:e}"
            );
        }
    }
}

/// Weight textures are transposed (weight row n is texture column n) and a checkpoint streams
/// into them in blocks of rows through the uploader's staging buffers: written in two blocks at
/// an offset (a whole group of four rows, as q8 needs; 12 rows make a staging row of 192 bytes,
/// padded to 256), through staging buffers of 1 KiB that each block overflows (handed over,
/// then grown), a texture gives the same outputs through matmul_texture as the CPU twin.
#[test]
fn weight_texture_written_in_blocks_matches_cpu() {
    let h = Harness::new();
    let (m, k, n, split) = (5, 128, 37, 12);
    for dtype in WeightDtype::ALL {
        let p = Pipelines::new(&h.gpu, dtype, true, None, &[Epilogue::Store]);
        let a = random(m * k, 34, 1.0);
        let w = random(n * k, 35, 1.0);
        let stored = stored_weights(&w, dtype);
        let want = reference::matmul(&a, &stored, None, k, n);
        let tex = h.gpu.weight_texture("w", n, k, dtype);
        let up = Uploader::with_capacity(&h.gpu, 1024);
        up.weight_rows(&tex, 0, &encode(&w[..split * k], k, dtype))
            .unwrap();
        (up.weight_rows(&tex, split as u32, &encode(&w[split * k..], k, dtype))).unwrap();
        up.finish().unwrap();
        let wt = texture_tensor(tex, n, k, dtype);
        let out = h.f32s(&vec![f32::NAN; m * n]);
        let pipe = p.textures().matmul_texture.get(Epilogue::Store);
        run_texture_linear(&h, pipe, &a, &wt, None, &out, false);
        // As texture_linear_kernels_match_cpu: 128 terms of size <= 1, f32 against f64.
        let d = close(&h.read(&out), &want, 1e-5);
        println!("weights written in blocks {dtype:?} M={m} K={k} N={n}: max diff {d:e}");
    }
}

/// Buffer uploads through two staging buffers of 1 KiB: pieces that fill one (handed over,
/// then the other filled), the first taken back once the GPU has copied out of it, one piece
/// bigger than a buffer (grown), an odd-sized tail (padded to 4 bytes with zeros): bytes equal.
#[test]
fn uploader_writes_buffers_exactly() {
    let h = Harness::new();
    let bytes: Vec<u8> = (0..4097u32).map(|i| (i * 7 + i / 256) as u8).collect();
    let dst = h.gpu.storage("dst", 4100);
    let up = Uploader::with_capacity(&h.gpu, 1024);
    let pieces = [
        (0, 600),
        (600, 1000),
        (1000, 1500),
        (1500, 2000),
        (2000, 3400),
        (3400, 4097),
    ];
    for (from, to) in pieces {
        up.buffer(&dst, from as u64, &bytes[from..to]).unwrap();
    }
    up.finish().unwrap();
    let got: Vec<u8> = bytemuck::cast_slice(&h.read(&dst)).to_vec();
    assert_eq!(got[..4097], bytes[..]);
    assert_eq!(got[4097..], [0, 0, 0]);
}

/// Weights as a texture of `dtype` stores them: what the CPU twin multiplies by.
/// (Rows are whole blocks of 32, so the blocks of `w` cut into rows of 32 are the same.)
fn stored_weights(w: &[f32], dtype: WeightDtype) -> Vec<f32> {
    let f = dtype.format();
    f.decode(&f.encode(w, 32), w.len() / 32, 32)
}

/// A (rows, cols) weight held in one texture, as the loader makes them.
fn texture_tensor(tex: wgpu::Texture, rows: usize, cols: usize, dtype: WeightDtype) -> GpuTensor {
    let view = tex.create_view(&Default::default());
    GpuTensor::from_textures(
        rows,
        cols,
        dtype,
        vec![TextureChunk {
            view,
            row0: 0,
            rows,
            dtype,
        }],
    )
}

/// Runs texture-layout linear `pipe` on input `a` (K = w.cols) with the library's own bindings
/// (`linear_binds`): weights `w`, the bias if any, the epilogue into `out`; gemv_texture's grid
/// (one row per workgroup row) with `gemv`, else matmul_texture's (4 x 4 blocks).
fn run_texture_linear(
    h: &Harness,
    pipe: &wgpu::ComputePipeline,
    a: &[f32],
    w: &GpuTensor,
    bias: Option<&[f32]>,
    out: &wgpu::Buffer,
    gemv: bool,
) {
    let k = w.cols;
    let m = a.len() / k;
    let (at, au) = linear_input(h, a, m, k);
    let (step, bb) = (h.step(m, 0, 0), h.f32s(bias.unwrap_or(&[0.0])));
    let io = LinearIo {
        step: &step,
        inp: &au,
        input_texture: Some(&at),
        bias: (&bb, bias.is_some()),
        out,
        kv: None,
        ln: None,
        partials: None,
    };
    let y = if gemv {
        m as u32
    } else {
        (m as u32).div_ceil(4)
    };
    for (bg, n) in linear_binds(&h.gpu, pipe, w, &io) {
        dispatch(h, pipe, &bg, n.div_ceil(4).div_ceil(8), y);
    }
}

/// A linear layer's input (rows, k) as the texture layout binds it: a texture for the GEMMs, a
/// uniform-bindable buffer for the GEMVs.
fn linear_input(
    h: &Harness,
    a: &[f32],
    rows: usize,
    k: usize,
) -> (wgpu::TextureView, wgpu::Buffer) {
    let view = h
        .gpu
        .texture_init("a", a, rows, k)
        .create_view(&Default::default());
    let uniform = h.gpu.storage_uniform("a", (rows * k * 4) as u64);
    h.gpu
        .queue
        .write_buffer(&uniform, 0, bytemuck::cast_slice(a));
    (view, uniform)
}

fn dispatch(h: &Harness, pipe: &wgpu::ComputePipeline, bg: &wgpu::BindGroup, x: u32, y: u32) {
    let mut enc = h.gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(pipe);
        pass.set_bind_group(0, bg, &[]);
        pass.dispatch_workgroups(x, y, 1);
    }
    h.gpu.queue.submit([enc.finish()]);
    h.gpu.check().unwrap();
}

/// The sampler's filters against the exact CPU twin: the kept set (from the threshold the kernel
/// reports) and the drawn token, for temperature, top-k, top-p, min-p, the repetition penalty and
/// their combinations.
#[test]
fn sampler_filters_match_cpu() {
    use wgpt::Sampling;
    let h = Harness::new();
    let v = 1000;
    let base = random(v, 31, 4.0);
    let recent: Vec<u32> = vec![3, 17, 3, 999, 500, 17, 42];
    let cases = [
        Sampling {
            temperature: 1.0,
            ..Default::default()
        },
        Sampling {
            temperature: 0.7,
            top_k: 40,
            ..Default::default()
        },
        Sampling {
            temperature: 1.0,
            top_p: 0.9,
            ..Default::default()
        },
        Sampling {
            temperature: 1.3,
            min_p: 0.05,
            ..Default::default()
        },
        Sampling {
            temperature: 0.8,
            top_k: 50,
            top_p: 0.8,
            min_p: 0.02,
            ..Default::default()
        },
        Sampling {
            temperature: 1.0,
            repeat_penalty: 1.5,
            top_k: 20,
            ..Default::default()
        },
        Sampling {
            temperature: 2.0,
            top_k: 1,
            ..Default::default()
        },
    ];
    // Three rows in one dispatch, as a batched decode runs them: row 0 is greedy (inactive: the
    // kernel must leave it alone), rows 1 and 2 sample different logits with different draws
    // and penalty windows at different offsets of one buffer.
    let other = random(v, 77, 3.0);
    let recent2: Vec<u32> = vec![8, 8, 640];
    let mut all_recent = recent.clone();
    all_recent.extend(&recent2);
    for s in cases {
        for u in [0.0f32, 0.3, 0.77, 0.999] {
            let mut rows = [<SampleParams as bytemuck::Zeroable>::zeroed(); 64];
            rows[1] = SampleParams::new(v, &s, u, 0, recent.len());
            rows[2] = SampleParams::new(v, &s, 1.0 - u, recent.len(), recent2.len());
            let junk = vec![f32::NAN; v];
            let logits = h.f32s(&[junk, base.clone(), other.clone()].concat());
            let result = h.u32s(&[u32::MAX; 12]);
            let params = h.gpu.uniform("p", &rows);
            h.run(
                &h.p.sample,
                &[&params, &logits, &result, &h.u32s(&all_recent)],
                3,
                1,
            );
            let r: Vec<u32> = bytemuck::cast_slice::<f32, u32>(&h.read(&result)).to_vec();
            assert_eq!(r[..4], [u32::MAX; 4], "the greedy row was written");
            for (row, logits, window, u) in [(1, &base, &recent, u), (2, &other, &recent2, 1.0 - u)]
            {
                let r = &r[4 * row..4 * row + 4];
                let mut cpu_logits = logits.clone();
                let (want, kept) = reference::sample_filtered(&mut cpu_logits, window, &s, u);
                // The kernel's threshold, applied to the same (penalised, scaled) logits.
                let t = f32::from_bits(r[1]);
                let gpu_kept: Vec<bool> =
                    cpu_logits.iter().map(|&l| l / s.temperature >= t).collect();
                let n = kept.iter().filter(|&&k| k).count();
                assert_eq!(gpu_kept, kept, "{s:?}: kept sets differ (CPU keeps {n})");
                assert_eq!(r[0], want, "{s:?} u={u}");
                let lp = f32::from_bits(r[2]);
                assert!(lp <= 1e-6 && lp.is_finite(), "log-probability {lp}");
                // The model's log-probability: log-softmax of the penalised logits at T = 1. A
                // sum of 1000 exp terms in f32 against f64: 1e-4 is ~100 ulps of the log.
                let mx = cpu_logits.iter().fold(f32::MIN, |m, &l| m.max(l)) as f64;
                let z: f64 = cpu_logits.iter().map(|&l| (l as f64 - mx).exp()).sum();
                let model_lp = cpu_logits[want as usize] as f64 - mx - z.ln();
                let got_lp = f32::from_bits(r[3]) as f64;
                assert!((got_lp - model_lp).abs() < 1e-4, "{got_lp} vs {model_lp}");
                if u == 0.3 && row == 1 {
                    println!(
                        "{s:?}: keeps {n} of {v}, drew {want}, log p = {lp:.3} (model {got_lp:.3})"
                    );
                }
            }
        }
    }
}

/// argmax with N > 1 (the top-N candidates) against the CPU twin: same ids in the same order, probabilities equal to
/// f32 rounding of the softmax normaliser (a sum over V terms).
#[test]
fn top_candidates_match_cpu() {
    let h = Harness::new();
    for (v, n) in [(7usize, 3usize), (1000, 10), (50257, 64)] {
        let mut logits = random(v, 32, 6.0);
        if v > 10 {
            logits[9] = logits[5]; // a tie: the lower id comes first
        }
        let params = wgpt::gpu::kernels::ArgmaxParams {
            v: v as u32,
            n: n as u32,
            _pad: [0; 2],
        };
        let out = h.u32s(&vec![0; 2 * n]);
        h.run(
            &h.p.argmax,
            &[&h.gpu.uniform("p", &params), &h.f32s(&logits), &out],
            1,
            1,
        );
        let words: Vec<u32> = bytemuck::cast_slice::<f32, u32>(&h.read(&out)).to_vec();
        let got: Vec<(u32, f32)> = words
            .chunks(2)
            .map(|w| (w[0], f32::from_bits(w[1])))
            .collect();
        let want = reference::top_candidates(&logits, n.min(v));
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            want.iter().map(|w| w.0).collect::<Vec<_>>()
        );
        let d = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g.1 - w.1).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-5, "probability diff {d}");
        println!("argmax V={v} N={n}: ids equal, max prob diff {d:e}");
    }
}

/// Workgroups for the buffer linear kernels over an (m, n) output: gemv has 64 invocations of 4
/// columns per row, matmul 32 x 32 tiles.
/// The subgroup gemv exists wherever the adapter has subgroups, so its tests cannot silently
/// stop running.
#[test]
fn subgroup_gemv_is_built_where_subgroups_exist() {
    let h = Harness::new();
    let has = h.gpu.device.features().contains(wgpu::Features::SUBGROUP);
    println!(
        "SUBGROUP: {has}; gemv_subgroup built: {}",
        h.p.gemv_subgroup.is_some()
    );
    assert_eq!(h.p.gemv_subgroup.is_some(), has);
}

/// The buffer-layout linear kernels to check: the tiled matmul, gemv with its workgroup-memory
/// reduction, and gemv_subgroup where the adapter has subgroups (lavapipe does).
fn linear_kernels(p: &Pipelines, e: Epilogue) -> Vec<(&'static str, &wgpu::ComputePipeline)> {
    let mut v = vec![("matmul", &p.matmul), ("gemv", &p.gemv)];
    v.extend(p.gemv_subgroup.as_ref().map(|sg| ("gemv_subgroup", sg)));
    v.into_iter().map(|(name, l)| (name, l.get(e))).collect()
}

fn linear_grid(name: &str, n: u32, m: u32) -> (u32, u32) {
    if name.starts_with("gemv") {
        (n.div_ceil(4), m)
    } else {
        (n.div_ceil(32), m.div_ceil(32))
    }
}

/// Packs sequences of these lengths into rows: per row (first row of its sequence, its length),
/// and per sequence the same.
fn packed_spans(lengths: &[usize]) -> (Vec<[u32; 2]>, Vec<[u32; 2]>) {
    let (mut rows, mut seqs) = (Vec::new(), Vec::new());
    for &n in lengths {
        let span = [rows.len() as u32, n as u32];
        seqs.push(span);
        rows.extend(std::iter::repeat_n(span, n));
    }
    (rows, seqs)
}

fn spans_buffer(h: &Harness, spans: &[[u32; 2]]) -> wgpu::Buffer {
    h.gpu.storage_init("spans", bytemuck::cast_slice(spans))
}

/// BERT's erf GELU as a linear-layer epilogue, in all three linear kernels, against the twin
/// (whose erf is exact in f64; the kernels use Abramowitz & Stegun 7.1.26).
#[test]
fn gelu_erf_epilogue_matches_cpu() {
    let h = Harness::new();
    for (m, k, n) in [(1, 64, 17), (7, 64, 45), (33, 128, 100)] {
        // Pre-activations up to ~|8|: both GELU tails and the curved middle.
        let a = random(m * k, 31, 1.0);
        let w = random(n * k, 32, 0.5);
        let b = random(n, 33, 1.0);
        let mut want = reference::matmul(&a, &w, Some(&b), k, n);
        reference::gelu_erf(&mut want);
        let params = MatmulParams {
            k: k as u32,
            n: n as u32,
            ldo: n as u32,
            col0: 0,
            has_bias: 1,
            kv_c: 0,
            ln_eps: 0.0,
            kv_w: 0,
        };
        let (step, pu, bb) = (h.step(m, 0, 0), h.gpu.uniform("p", &params), h.f32s(&b));
        for (name, pipe) in linear_kernels(&h.p, Epilogue::GeluErf) {
            let out = h.f32s(&vec![f32::NAN; m * n]);
            let (x, y) = linear_grid(name, n as u32, m as u32);
            h.run(
                pipe,
                &[&step, &pu, &h.f32s(&a), &h.f32s(&w), &bb, &out],
                x,
                y,
            );
            // f32 sums of K <= 128 terms of size <= 0.5 against f64, then erf to 1.5e-7.
            let d = close(&h.read(&out), &want, 1e-5);
            println!("{name} GeluErf M={m} K={k} N={n}: max diff {d:e}");
        }
        let out = h.f32s(&vec![f32::NAN; m * n]);
        let wt = h
            .gpu
            .weight_texture_init("w", &w, n, k, WeightDtype::F32)
            .unwrap();
        let wt = texture_tensor(wt, n, k, WeightDtype::F32);
        let pipe = h.p.textures().matmul_texture.get(Epilogue::GeluErf);
        run_texture_linear(&h, pipe, &a, &wt, Some(&b), &out, false);
        // As above.
        let d = close(&h.read(&out), &want, 1e-5);
        println!("matmul_texture GeluErf M={m} K={k} N={n}: max diff {d:e}");
    }
}

/// A tied token table held only as the head's weight textures (the texture layout): the
/// embedding reads its rows from two textures split at row 20 (the second ending in a partial
/// group of four rows), in every storage format, against the twin on the stored weights. Widths
/// 64, 192 and 320 (192 and 320 leave a partial q8 and nibble scale texel); tokens in both
/// textures, the last row included.
#[test]
fn embed_texture_matches_cpu() {
    let h = Harness::new();
    let v = 37;
    for dtype in WeightDtype::ALL {
        let code = [("WEIGHT_FORMAT", dtype.format().code() as f64)];
        let pipe =
            wgpt::gpu::kernels::entry_pipeline(&h.gpu, "embed", "embed_texture", None, &code);
        for (t, c, pos0) in [(1, 64, 0), (7, 192, 5), (33, 320, 20)] {
            let wte = random(v * c, 36, 1.0);
            let wpe = random(64 * c, 37, 1.0);
            let tokens: Vec<u32> = (0..t).map(|i| ((i * 11 + 36) % v) as u32).collect();
            let want = reference::embed(&tokens, &stored_weights(&wte, dtype), &wpe, c, pos0);
            let x = h.f32s(&vec![f32::NAN; t * c]);
            for (r0, r1) in [(0, 20), (20, v)] {
                let params = EmbedParams {
                    positions: 1,
                    ..EmbedParams::new(c as u32, r0 as u32, (r1 - r0) as u32, 1.0)
                };
                let tex =
                    (h.gpu
                        .weight_texture_init("wte", &wte[r0 * c..r1 * c], r1 - r0, c, dtype))
                    .unwrap();
                let view = tex.create_view(&Default::default());
                let (step, u, tb, pb) = (
                    h.step(t, 0, pos0),
                    h.gpu.uniform("p", &params),
                    h.u32s(&tokens),
                    h.f32s(&wpe),
                );
                let r = vec![
                    (0, step.as_entire_binding()),
                    (1, u.as_entire_binding()),
                    (2, tb.as_entire_binding()),
                    (4, pb.as_entire_binding()),
                    (5, x.as_entire_binding()),
                    (7, wgpu::BindingResource::TextureView(&view)),
                ];
                let bg = bind_at(&h.gpu, &pipe, "embed_texture", r);
                dispatch(&h, &pipe, &bg, (c as u32).div_ceil(64), t as u32);
            }
            // As the buffer embedding's block formats: one product with the scale (and q4's
            // minimum), which a GPU may fuse, and one add: 1e-6 relative.
            let d = close(&h.read(&x), &want, 1e-6);
            println!("embed_texture {dtype:?} T={t} C={c} pos0={pos0}: max diff {d:e}");
        }
    }
}

/// Encoders' embedding: sequences packed in rows, each row at its position within its sequence.
#[test]
fn embed_packed_matches_cpu() {
    let h = Harness::new();
    let pipe = wgpt::gpu::kernels::entry_pipeline(&h.gpu, "embed", "embed_packed", None, &[]);
    for (lengths, c) in [(vec![1], 33), (vec![3, 4], 60), (vec![10, 1, 22], 65)] {
        let t: usize = lengths.iter().sum();
        let v = 37;
        let wte = random(v * c, 34, 1.0);
        let wpe = random(32 * c, 35, 1.0);
        let tokens: Vec<u32> = (0..t).map(|i| ((i * 11 + 3) % v) as u32).collect();
        let (rows, _) = packed_spans(&lengths);
        let want = reference::embed_packed(&tokens, &wte, &wpe, c, &rows);
        let x = h.f32s(&vec![f32::NAN; t * c]);
        // Two chunks of the token table, one dispatch each.
        for (r0, r1) in [(0, 20), (20, v)] {
            let params = EmbedParams::new(c as u32, r0 as u32, (r1 - r0) as u32, 1.0);
            let (step, pu, tb) = (
                h.step(t, 0, 0),
                h.gpu.uniform("p", &params),
                h.u32s(&tokens),
            );
            let (chunk, pb, sb) = (
                h.f32s(&wte[r0 * c..r1 * c]),
                h.f32s(&wpe),
                spans_buffer(&h, &rows),
            );
            h.run(
                &pipe,
                &[&step, &pu, &tb, &chunk, &pb, &x, &sb],
                (c as u32).div_ceil(64),
                t as u32,
            );
        }
        // Copies and one add: exact.
        let d = close(&h.read(&x), &want, 0.0);
        println!("embed_packed lengths={lengths:?} C={c}: max diff {d:e}");
    }
}

/// Encoders' attention (buffer and texture variants): every row sees all rows of its own
/// sequence and none of the others', sequences of 1 to 70 rows (one past a 64-key block).
#[test]
fn bidirectional_attention_matches_cpu() {
    let h = Harness::new();
    let none = h.none();
    let gpu = &h.gpu;
    let buffer_pipe =
        wgpt::gpu::kernels::entry_pipeline(gpu, "attention", "attention_bidirectional", None, &[]);
    let texture_pipe = wgpt::gpu::kernels::entry_pipeline(
        gpu,
        "attention_texture",
        "attention_texture_bidirectional",
        None,
        &[],
    );
    // (lengths, C, NH): HS = 11, 12, 20, 130 for buffers; textures need C % 4 and HS % 4 == 0.
    let buffer_cases = [
        (vec![1], 33, 3),
        (vec![3, 4], 60, 5),
        (vec![20, 13], 60, 3),
        (vec![2, 70, 1], 390, 3),
    ];
    let texture_cases = [
        (vec![1], 64, 4),
        (vec![3, 4], 192, 3),
        (vec![20, 13], 128, 8),
        (vec![2, 70, 1], 768, 3),
    ];
    for (textures, cases) in [(false, buffer_cases), (true, texture_cases)] {
        for (lengths, c, nh) in cases {
            let t: usize = lengths.iter().sum();
            let hs = c / nh;
            let (rows, _) = packed_spans(&lengths);
            let qkv = random(t * 3 * c, 36, 2.0);
            let (mut k, mut v) = (vec![0.0; t * c], vec![0.0; t * c]);
            reference::kv_append(&qkv, &mut k, &mut v, Heads::mha(c, nh), 0);
            let want = reference::attention_bidirectional(&qkv, &k, &v, Heads::mha(c, nh), &rows);
            let out = h.f32s(&vec![f32::NAN; t * c]);
            let params = AttentionParams::heads(nh as u32, hs as u32);
            let (step, pu, qb, sb) = (
                h.step(t, 0, 0),
                gpu.uniform("p", &params),
                h.f32s(&qkv),
                spans_buffer(&h, &rows),
            );
            let name = if textures {
                let kt = gpu
                    .texture_init("k", &k, t, c)
                    .create_view(&Default::default());
                let vt = gpu
                    .texture_init("v", &v, t, c)
                    .create_view(&Default::default());
                let res = vec![
                    step.as_entire_binding(),
                    pu.as_entire_binding(),
                    qb.as_entire_binding(),
                    wgpu::BindingResource::TextureView(&kt),
                    wgpu::BindingResource::TextureView(&vt),
                    out.as_entire_binding(),
                    none.as_entire_binding(),
                    sb.as_entire_binding(),
                ];
                let bg = wgpt::gpu::kernels::bind_resources(gpu, &texture_pipe, "t", res);
                dispatch(&h, &texture_pipe, &bg, (nh as u32).div_ceil(8), t as u32);
                "attention_texture_bidirectional"
            } else {
                let (kb, vb) = (h.f32s(&k), h.f32s(&v));
                h.run(
                    &buffer_pipe,
                    &[&step, &pu, &qb, &kb, &vb, &out, &h.none(), &sb],
                    nh as u32,
                    t as u32,
                );
                "attention_bidirectional"
            };
            // Convex combinations of values in [-2, 2]; online softmax in f32 over <= 70 keys
            // with scores up to ~|4 sqrt(HS)|, as for the causal kernels.
            let d = close(&h.read(&out), &want, 1e-5);
            println!("{name} lengths={lengths:?} C={c} NH={nh} HS={hs}: max diff {d:e}");
        }
    }
}

/// Sentence pooling: mean, max and [CLS], with and without L2 normalisation.
#[test]
fn pool_matches_cpu() {
    use wgpt::gpu::kernels::{PoolMode, PoolParams};
    let h = Harness::new();
    let pipe = wgpt::gpu::kernels::pipeline(&h.gpu, "pool", None, &[]);
    for (lengths, c) in [(vec![1], 33), (vec![7, 1], 65), (vec![33, 5, 70], 769)] {
        let t: usize = lengths.iter().sum();
        let x = random(t * c, 37, 3.0);
        let (_, seqs) = packed_spans(&lengths);
        for mode in [PoolMode::Mean, PoolMode::Max, PoolMode::Cls] {
            for normalize in [false, true] {
                let want = reference::pool(&x, c, &seqs, mode, normalize);
                let out = h.f32s(&vec![f32::NAN; seqs.len() * c]);
                let params = PoolParams {
                    c: c as u32,
                    mode: mode as u32,
                    normalize: normalize as u32,
                    _pad: 0,
                };
                let bufs = [
                    &h.gpu.uniform("p", &params),
                    &h.f32s(&x),
                    &spans_buffer(&h, &seqs),
                    &out,
                ];
                h.run(&pipe, &bufs, seqs.len() as u32, 1);
                // Sums of <= 70 values of size <= 3 in f32 against f64, one division (and a
                // norm over <= 769 squares): ~1e-6 relative.
                let d = close(&h.read(&out), &want, 1e-5);
                println!(
                    "pool {mode:?} normalize={normalize} lengths={lengths:?} C={c}: max diff {d:e}"
                );
            }
        }
    }
}

/// RMSNorm (layernorm.wgsl and layernorm_rows.wgsl with RMS) against its twin, rows offset
/// from zero mean so a kernel that still subtracted the mean would fail.
#[test]
fn rms_norm_matches_cpu() {
    let h = Harness::new();
    let rows = wgpt::gpu::kernels::entry_pipeline;
    let pipes = [
        (
            rows(&h.gpu, "layernorm", "layernorm", None, &[("RMS", 1.0)]),
            [(1, 33, 0), (7, 60, 2), (33, 769, 1)],
            false,
        ),
        (
            rows(
                &h.gpu,
                "layernorm_rows",
                "layernorm_rows",
                None,
                &[("RMS", 1.0)],
            ),
            [(1, 4, 0), (7, 60, 2), (33, 772, 1)],
            true,
        ),
    ];
    for (pipe, shapes, per_row) in pipes {
        for (t, c, row0) in shapes {
            let x: Vec<f32> = random((row0 + t) * c, 51, 2.0)
                .iter()
                .map(|v| v + 3.0)
                .collect();
            let w = random(c, 52, 1.0);
            let want = reference::rms_norm(&x[row0 * c..], &w, c, 1e-6);
            let out = h.f32s(&vec![f32::NAN; t * c]);
            let params = LayerNormParams {
                c: c as u32,
                eps: 1e-6,
                _pad: [0; 2],
            };
            // No bias: the planner binds a 16-byte placeholder, which RMS never reads.
            let bufs = [
                &h.step(t, row0, 0),
                &h.gpu.uniform("p", &params),
                &h.f32s(&x),
                &h.f32s(&w),
                &h.f32s(&[0.0; 4]),
                &out,
            ];
            let groups = if per_row {
                (t as u32).div_ceil(8)
            } else {
                t as u32
            };
            h.run(&pipe, &bufs, groups, 1);
            // Normalised values are O(1) times |w| <= 1; f32 sums of C <= 772 squares: ~1e-6.
            let d = close(&h.read(&out), &want, 1e-5);
            println!("rms_norm (per row: {per_row}) T={t} C={c}: max diff {d:e}");
        }
    }
}

/// rope.wgsl against its twin: head counts not powers of two, fewer key heads than query heads,
/// positions far past 2π (the kernel reduces the angle; the twin takes cos and sin in f64), and
/// llama3-scaled frequencies.
#[test]
fn rope_matches_cpu() {
    use wgpt::config::{Rope, RopeScaling};
    let h = Harness::new();
    let pipe = wgpt::gpu::kernels::pipeline(&h.gpu, "rope", None, &[]);
    let llama3 = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original: 16.0,
    };
    let cases = [
        (1, 4, 2, 16, 0, RopeScaling::None),
        (7, 3, 1, 20, 5, RopeScaling::Linear { factor: 2.0 }),
        (33, 5, 5, 12, 40, RopeScaling::None),
        (7, 6, 2, 64, 20_000, llama3),
    ];
    for (t, nh, nkv, hs, pos0, scaling) in cases {
        let heads = Heads { nh, nkv, hs };
        let inv_freq = Rope {
            theta: 10000.0,
            scaling,
        }
        .inv_freq(hs);
        let mut qkv = random(t * heads.qkv(), 53, 2.0);
        let buf = h.f32s(&qkv);
        let params = AttentionParams {
            nkv: nkv as u32,
            ..AttentionParams::heads(nh as u32, hs as u32)
        };
        let bufs = [
            &h.step(t, 0, pos0),
            &h.gpu.uniform("p", &params),
            &wgpt::gpu::kernels::rope_uniform(&h.gpu, "f", &inv_freq),
            &buf,
        ];
        let pairs = ((nh + nkv) * hs / 2) as u32;
        h.run(&pipe, &bufs, pairs.div_ceil(64), t as u32);
        reference::rope(&mut qkv, &inv_freq, heads, pos0);
        // |x| <= 2; cos and sin of a reduced f32 angle are within a few ulps of the f64 ones
        // taken of the same f32 angle: ~1e-6 of the values (values are left alone: exact).
        let d = close(&h.read(&buf), &qkv, 4e-6);
        println!("rope T={t} NH={nh} NKV={nkv} HS={hs} pos0={pos0}: max diff {d:e}");
    }
}

/// elementwise.wgsl's gate (SwiGLU's silu(gate) * up) against its twin, widths not a multiple
/// of the 64-wide workgroup, gates deep into both tails.
#[test]
fn gate_matches_cpu() {
    let h = Harness::new();
    let act = Epilogue::Silu as u32 as f64;
    let pipe =
        wgpt::gpu::kernels::entry_pipeline(&h.gpu, "elementwise", "gate", None, &[("ACT", act)]);
    for (t, width) in [(1, 60), (7, 130), (33, 64)] {
        let x = random(t * 2 * width, 54, 30.0);
        let want = reference::gate(&x, wgpt::config::Activation::Silu);
        let out = h.f32s(&vec![f32::NAN; t * width]);
        let params = wgpt::gpu::kernels::WidthParams {
            width: width as u32,
            _pad: [0; 3],
        };
        let bufs = [
            &h.step(t, 0, 0),
            &h.gpu.uniform("p", &params),
            &h.f32s(&x),
            &out,
        ];
        h.run(&pipe, &bufs, (width as u32).div_ceil(64), t as u32);
        // One exp and a few roundings per value, |values| up to ~900: 1e-6 relative.
        let d = close(&h.read(&out), &want, 1e-6);
        println!("gate T={t} width={width}: max diff {d:e}");
    }
}

/// attention_texture_tile (a prefill's attention by tiles of 8 queries of one head, the lanes
/// scoring 8 keys at a time) against the twin, with and without ROPE (the queries rotated as
/// they are read; the cached keys as kv_append leaves them), in the second cache slot over
/// earlier keys: T = 1, 7, 33 (a tile cut short), groups of 1 to 6 query heads, HS 32 and 64.
#[test]
fn attention_texture_tile_matches_cpu() {
    use wgpt::gpu::kernels::{bind_resources, entry_pipeline};
    let h = Harness::new();
    // (T, NH, NKV, HS, pos0)
    for (t, nh, nkv, hs, pos0) in [
        (1, 3, 1, 64, 0),
        (7, 6, 1, 32, 3),
        (33, 9, 3, 64, 0),
        (33, 5, 5, 64, 40),
        (9, 2, 1, 32, 6),
    ] {
        let heads = Heads { nh, nkv, hs };
        let (slot, n_ctx) = (1usize, pos0 + t + 3);
        let freq = rope_freqs(hs);
        let qkv = random(t * heads.qkv(), 90, 2.0);
        let (k0, v0) = (
            random(2 * n_ctx * heads.kv(), 91, 1.0),
            random(2 * n_ctx * heads.kv(), 92, 1.0),
        );
        let step = h.gpu.uniform(
            "step",
            &Step {
                slot: slot as u32,
                slot_rows: n_ctx as u32,
                ..Step::new(t as u32, 0, pos0 as u32)
            },
        );
        let (pu, qb, fb) = (
            h.attention_params(heads),
            h.f32s(&qkv),
            wgpt::gpu::kernels::rope_uniform(&h.gpu, "f", &freq),
        );
        for rope in [false, true] {
            let mut rotated = qkv.clone();
            if rope {
                reference::rope(&mut rotated, &freq, heads, pos0);
            }
            // The slot's cache with this step's keys and values appended, as kv_append leaves it.
            let slot_rows = slot * n_ctx * heads.kv()..(slot + 1) * n_ctx * heads.kv();
            let (mut k, mut v) = (
                k0[slot_rows.clone()].to_vec(),
                v0[slot_rows.clone()].to_vec(),
            );
            reference::kv_append(&rotated, &mut k, &mut v, heads, pos0);
            let want = reference::attention(&rotated, &k, &v, heads, pos0);
            let (mut kall, mut vall) = (k0.clone(), v0.clone());
            kall[slot_rows.clone()].copy_from_slice(&k);
            vall[slot_rows].copy_from_slice(&v);
            let tex = |data: &[f32]| {
                (h.gpu.texture_init("kv", data, 2 * n_ctx, heads.kv()))
                    .create_view(&Default::default())
            };
            let (kt, vt) = (tex(&kall), tex(&vall));
            let view = wgpu::BindingResource::TextureView;
            let out = h.f32s(&vec![f32::NAN; t * heads.q()]);
            let c = [("HS", hs as f64), ("ROPE", rope as u8 as f64)];
            let pipe = entry_pipeline(
                &h.gpu,
                "attention_texture_subgroup",
                "attention_texture_tile",
                None,
                &c,
            );
            let res = vec![
                step.as_entire_binding(),
                pu.as_entire_binding(),
                qb.as_entire_binding(),
                view(&kt),
                view(&vt),
                out.as_entire_binding(),
                fb.as_entire_binding(),
            ];
            let bg = bind_resources(&h.gpu, &pipe, "t", res);
            dispatch(&h, &pipe, &bg, (t as u32).div_ceil(8), nh as u32);
            // As attention_texture: convex combinations of values in [-1, 1] (the step's own up
            // to ~2), an f32 online softmax against f64: 1e-5 of the largest value.
            let d = close(&h.read(&out), &want, 1e-5);
            println!(
                "attention_texture_tile (rope: {rope}) T={t} NH={nh} NKV={nkv} HS={hs} pos0={pos0}: max diff {d:e}"
            );
        }
    }
}

/// Grouped- and multi-query attention (NKV < NH, query head h reads key head h / (NH / NKV)),
/// and heads whose total width is not C: kv_append and attention in both layouts against the
/// twins, over keys already in the cache; and with ROPE (the rope_attend fusion), kv_append
/// rotating the keys it caches and the attention its queries, against rope.wgsl's twin first.
#[test]
fn grouped_query_attention_matches_cpu() {
    use wgpt::gpu::kernels::{bind_resources, entry_pipeline};
    let h = Harness::new();
    // (T, NH, NKV, HS, pos0): groups of 2, 3 and 6, one query head per key head, HS = 12..64.
    for (t, nh, nkv, hs, pos0) in [
        (1, 4, 2, 16, 0),
        (7, 6, 2, 12, 3),
        (33, 3, 1, 20, 40),
        (7, 6, 1, 64, 70),
        (1, 5, 5, 8, 9),
    ] {
        let heads = Heads { nh, nkv, hs };
        let n_ctx = pos0 + t + 2;
        let k0 = random(n_ctx * heads.kv(), 55, 1.0);
        let v0 = random(n_ctx * heads.kv(), 56, 1.0);
        let qkv = random(t * heads.qkv(), 57, 2.0);
        let freq = rope_freqs(hs);
        let (step, pu, qb, widths, fb) = (
            h.step(t, 0, pos0),
            h.attention_params(heads),
            h.f32s(&qkv),
            h.kv_widths(heads),
            wgpt::gpu::kernels::rope_uniform(&h.gpu, "f", &freq),
        );
        for rope in [false, true] {
            let mut rotated = qkv.clone();
            if rope {
                reference::rope(&mut rotated, &freq, heads, pos0);
            }
            let (mut k, mut v) = (k0.clone(), v0.clone());
            reference::kv_append(&rotated, &mut k, &mut v, heads, pos0);
            let want = reference::attention(&rotated, &k, &v, heads, pos0);
            let c = [("ROPE", rope as u8 as f64)];
            for textures in [false, true] {
                let out = h.f32s(&vec![f32::NAN; t * heads.q()]);
                if textures {
                    let tex = |data: &[f32]| {
                        h.gpu
                            .texture_init("kv", data, n_ctx, heads.kv())
                            .create_view(&Default::default())
                    };
                    let (kt, vt) = (tex(&k0), tex(&v0));
                    let view = wgpu::BindingResource::TextureView;
                    let append =
                        entry_pipeline(&h.gpu, "kv_append_texture", "kv_append_texture", None, &c);
                    let res = vec![
                        step.as_entire_binding(),
                        widths.as_entire_binding(),
                        qb.as_entire_binding(),
                        view(&kt),
                        view(&vt),
                        fb.as_entire_binding(),
                    ];
                    let bg = bind_resources(&h.gpu, &append, "t", res);
                    dispatch(
                        &h,
                        &append,
                        &bg,
                        ((heads.kv() / 4) as u32).div_ceil(64),
                        t as u32,
                    );
                    // By heads (decode), and by rows (steps of several rows): the same result.
                    let by_rows = h.f32s(&vec![f32::NAN; t * heads.q()]);
                    for (entry, o, grid) in [
                        (
                            "attention_texture",
                            &out,
                            ((nh as u32).div_ceil(8), t as u32),
                        ),
                        (
                            "attention_texture_rows",
                            &by_rows,
                            ((t as u32).div_ceil(8), nh as u32),
                        ),
                    ] {
                        let attend = entry_pipeline(&h.gpu, "attention_texture", entry, None, &c);
                        let res = vec![
                            step.as_entire_binding(),
                            pu.as_entire_binding(),
                            qb.as_entire_binding(),
                            view(&kt),
                            view(&vt),
                            o.as_entire_binding(),
                            fb.as_entire_binding(),
                        ];
                        let bg = bind_resources(&h.gpu, &attend, "t", res);
                        dispatch(&h, &attend, &bg, grid.0, grid.1);
                    }
                    let d = close(&h.read(&by_rows), &want, 1e-5);
                    println!("attention_texture_rows (rope: {rope}) T={t} NH={nh}: max diff {d:e}");
                } else {
                    let (kb, vb) = (h.f32s(&k0), h.f32s(&v0));
                    let append = entry_pipeline(&h.gpu, "kv_append", "kv_append", None, &c);
                    h.run(
                        &append,
                        &[&step, &widths, &qb, &kb, &vb, &fb],
                        (heads.kv() as u32).div_ceil(64),
                        t as u32,
                    );
                    // Cached keys: copies, or the rotation's few roundings (|k| <= 2).
                    let kd = max_abs_diff(&h.read(&kb), &k);
                    assert!(kd <= 1e-6, "kv_append k (rope: {rope}): {kd}");
                    assert_eq!(h.read(&vb), v, "kv_append v");
                    let attend = entry_pipeline(&h.gpu, "attention", "attention", None, &c);
                    h.run(
                        &attend,
                        &[&step, &pu, &qb, &kb, &vb, &out, &fb],
                        nh as u32,
                        t as u32,
                    );
                }
                // Convex combinations of values in [-1, 1]; online softmax in f32 over <= 105
                // keys: ~1e-6, as for plain attention; rotated queries and keys add a few ulps.
                let d = close(&h.read(&out), &want, 1e-5);
                println!(
                    "GQA attention (textures: {textures}, rope: {rope}) T={t} NH={nh} NKV={nkv} HS={hs} pos0={pos0}: max diff {d:e}"
                );
            }
        }
    }
}

/// Every weight format's WGSL decoder (format_*.wgsl, read here through the embedding's gather
/// of token rows) gives exactly its CPU dequantisation (`Format::decode`), rows not a multiple
/// of q8's group of four, blocks spread over two scale texels.
#[test]
fn every_format_decodes_as_its_cpu_twin() {
    let h = Harness::new();
    let (v, c, t) = (7, 160, 9);
    let table = random(v * c, 61, 2.0);
    let tokens: Vec<u32> = (0..t).map(|i| ((i * 5 + 2) % v) as u32).collect();
    for dtype in WeightDtype::ALL {
        let f = dtype.format();
        let bytes = f.encode(&table, c);
        let rows = f.decode(&bytes, v, c);
        let code = [("WEIGHT_FORMAT", f.code() as f64)];
        let pipe = wgpt::gpu::kernels::pipeline(&h.gpu, "embed", None, &code);
        let x = h.f32s(&vec![f32::NAN; t * c]);
        let params = EmbedParams {
            positions: 0,
            ..EmbedParams::new(c as u32, 0, v as u32, 1.0)
        };
        let bufs = [
            &h.step(t, 0, 0),
            &h.gpu.uniform("p", &params),
            &h.u32s(&tokens),
            &h.gpu.storage_init("table", &bytes),
            &h.f32s(&[0.0; 4]),
            &x,
        ];
        h.run(&pipe, &bufs, (c as u32).div_ceil(64), t as u32);
        let want: Vec<f32> = tokens
            .iter()
            .flat_map(|&tok| rows[tok as usize * c..(tok as usize + 1) * c].to_vec())
            .collect();
        // A decode is a bit pattern and at most one multiply (q8's scale): exact.
        assert_eq!(h.read(&x), want, "{}", f.name());
        println!("{}: {t} rows of {c} decoded exactly", f.name());
    }
}

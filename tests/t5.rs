//! T5 encoder-decoders against transformers (tests/fixtures/t5, made by make_t5_fixtures.py):
//! the configuration of both flavours, the relative position buckets for distances -300 to 300
//! in both directions, and the CPU twin of the forward pass (teacher-forced decoder logits and
//! greedy outputs) on a T5 v1.0 (ReLU, tied head) and a flan-T5-style model (gated GELU, untied
//! head, NH HS != C, saved in bf16).

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;
use wgpt::loader::Checkpoint;
use wgpt::t5::reference::{self, T5Weights};
use wgpt::t5::{FeedForward, T5Config, relative_position_bucket};

fn t5_fixture(name: &str) -> std::path::PathBuf {
    fixture("t5").join(name)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn configs_of_both_flavours() {
    let v1 = T5Config::from_file(&t5_fixture("t5-v1_0/config.json")).unwrap();
    assert_eq!(v1.feed_forward, FeedForward::Relu);
    assert!(v1.tie_word_embeddings);
    assert_eq!(v1.inner_dim(), v1.d_model);
    let flan = T5Config::from_file(&t5_fixture("flan-t5-odd/config.json")).unwrap();
    assert_eq!(flan.feed_forward, FeedForward::GatedGelu);
    assert!(!flan.tie_word_embeddings);
    assert_ne!(flan.inner_dim(), flan.d_model);
    assert_eq!(flan.decoder_start_token_id, 0);
    assert_eq!(flan.eos_token_id, 1);
}

/// An unknown feed_forward_proj, a decoder's model_type, a missing size: each named.
#[test]
fn bad_configs_are_named() {
    let text = std::fs::read_to_string(t5_fixture("t5-v1_0/config.json")).unwrap();
    let path = Path::new("config.json");
    let bad = text.replace("\"relu\"", "\"gated-swish\"");
    let e = T5Config::from_json(&bad, path).unwrap_err().to_string();
    assert!(e.contains("gated-swish") && e.contains("gated-gelu"), "{e}");
    let bad = text.replace("\"t5\"", "\"gpt2\"");
    let e = T5Config::from_json(&bad, path).unwrap_err().to_string();
    assert!(e.contains("gpt2") && e.contains("t5"), "{e}");
    let bad = text.replace(
        "\"relative_attention_max_distance\": 128",
        "\"relative_attention_max_distance\": 16",
    );
    let e = T5Config::from_json(&bad, path).unwrap_err().to_string();
    assert!(e.contains("relative_attention_max_distance = 16"), "{e}");
    let bad = text.replace(
        "\"relative_attention_num_buckets\": 32",
        "\"relative_attention_num_buckets\": 1",
    );
    let e = T5Config::from_json(&bad, path).unwrap_err().to_string();
    assert!(e.contains("relative_attention_num_buckets = 1"), "{e}");
    // The bucket function itself stays in range on degenerate tables (no panic).
    for buckets in [1, 2, 3] {
        for d in [-300i64, -1, 0, 1, 300] {
            for bidirectional in [false, true] {
                let b = relative_position_bucket(d, bidirectional, buckets, 128);
                assert!(b < buckets.max(1), "{d} {bidirectional} {buckets}: {b}");
            }
        }
    }
    let bad = text.replace("\"d_model\"", "\"d_modelx\"");
    let e = T5Config::from_json(&bad, path).unwrap_err().to_string();
    assert!(e.contains("d_model"), "{e}");
}

/// transformers' `_relative_position_bucket` for every distance from -300 to 300, encoder
/// (bidirectional) and decoder (causal), two bucket settings.
#[test]
fn relative_position_buckets_match_transformers() {
    let cases = json(&fixture("t5/buckets.json"));
    let mut checked = 0;
    for case in cases.as_array().unwrap() {
        let bidirectional = case["bidirectional"].as_bool().unwrap();
        let n = case["num_buckets"].as_u64().unwrap() as usize;
        let max = case["max_distance"].as_u64().unwrap() as usize;
        let rel: Vec<i64> = serde_json::from_value(case["relative_positions"].clone()).unwrap();
        let want: Vec<usize> = serde_json::from_value(case["buckets"].clone()).unwrap();
        assert_eq!(rel.len(), 601);
        for (&r, &b) in rel.iter().zip(&want) {
            let got = relative_position_bucket(r, bidirectional, n, max);
            assert_eq!(
                got, b,
                "distance {r}, bidirectional {bidirectional}, {n} buckets, max {max}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4 * 601);
    // A max_distance within the exact range (a config T5Config refuses) still gives a bucket
    // in range, never an index past the table.
    for (d, bidirectional, max) in [(-300, false, 4), (300, true, 2), (-9, false, 8)] {
        assert!(relative_position_bucket(d, bidirectional, 16, max) < 16);
    }
}

/// The CPU twin: teacher-forced decoder logits within 1e-3 of the logit scale, greedy outputs
/// identical, for both flavours.
#[test]
fn cpu_twin_matches_transformers() {
    for name in ["t5-v1_0", "flan-t5-odd"] {
        let dir = t5_fixture(name);
        let cfg = T5Config::from_file(&dir.join("config.json")).unwrap();
        let ckpt = Checkpoint::open(&dir).unwrap();
        let w = T5Weights::load(&ckpt, &cfg).unwrap();
        let e = json(&dir.join("expected.json"));
        let tok = wgpt::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        for (i, s) in e["sources"].as_array().unwrap().iter().enumerate() {
            let src = ids(&s["input_ids"]);
            // The tokenizer's post-processor appends </s>, as transformers' tok(text) does.
            assert_eq!(tok.encode(s["text"].as_str().unwrap()).unwrap(), src);
            let enc = reference::encode(&cfg, &w, &src);
            let logits = reference::decode_logits(&cfg, &w, &enc, &ids(&s["decoder_ids"]));
            let (_, want) = read_npy(&dir.join(format!("logits_{i}.npy")));
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = max_abs_diff(&logits, &want);
            println!("{name} source {i}: max |logit diff| {d:.2e} (logit scale {scale:.1})");
            // f64 sums against PyTorch's f32: a few ulps of each value through 5 blocks.
            assert!(d < 1e-3 * scale, "{name} source {i}: {d}");
            let greedy = reference::generate_greedy(&cfg, &w, &src, 16);
            assert_eq!(greedy, ids(&s["greedy_ids"]), "{name} source {i}");
        }
    }
}

/// t5-v1_0 copied without the tensors `drop` names.
fn t5_without(drop: impl Fn(&str) -> bool) -> tempfile::TempDir {
    let dir = t5_fixture("t5-v1_0");
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(dir.join(f), tmp.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().filter(|(n, _)| !drop(n)).collect();
    safetensors::serialize_to_file(kept, None, &tmp.path().join("model.safetensors")).unwrap();
    tmp
}

/// A checkpoint without its relative attention bias is refused, naming the tensor.
#[test]
fn missing_relative_attention_bias_is_named() {
    let dir = t5_fixture("t5-v1_0");
    let cfg = T5Config::from_file(&dir.join("config.json")).unwrap();
    let tmp = t5_without(|n| n.contains("relative_attention_bias"));
    let ckpt = Checkpoint::open(tmp.path()).unwrap();
    let err = T5Weights::load(&ckpt, &cfg).err().unwrap().to_string();
    assert!(err.contains("relative_attention_bias"), "{err}");
}

/// `n` values uniform in [-scale, scale], from `seed`.
fn rand(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = wgpt::runtime::generate::SplitMix64(seed);
    (0..n).map(|_| (r.next_f32() * 2.0 - 1.0) * scale).collect()
}

/// One dispatch of entry point `entry` of kernel family `family` over `(x, y)` workgroups, with
/// bindings `res`.
fn run_entry(
    gpu: &wgpt::Engine,
    family: &'static str,
    entry: &'static str,
    res: Vec<(u32, wgpu::BindingResource)>,
    (x, y): (usize, usize),
) {
    use wgpt::gpu::kernels::{bind_at, entry_pipeline};
    let pipe = entry_pipeline(gpu, family, entry, None, &[]);
    let bg = bind_at(gpu, &pipe, "t", res);
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipe);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(x as u32, y as u32, 1);
    }
    gpu.queue.submit([enc.finish()]);
}

/// The T5 entry points of attention.wgsl and attention_texture.wgsl (the relative position bias
/// added to unscaled scores) against the CPU twin: causal over a KV cache from a position offset (the decoder), and
/// bidirectional over packed sequences (the encoder); T = 1, 7, 33 rows, NH = 3, 5 and 9, HS 20,
/// 12 and 8, buckets 32 / 128 and 16 / 64, distances past max_distance.
#[test]
fn biased_attention_kernels_match_cpu() {
    use wgpt::gpu::kernels::{AttentionParams, Step};
    let gpu = wgpt::Engine::new(None).unwrap();
    let run = |family, entry, bufs: &[(u32, &wgpu::Buffer)], grid| {
        let res = bufs
            .iter()
            .map(|(i, b)| (*i, b.as_entire_binding()))
            .collect();
        run_entry(&gpu, family, entry, res, grid);
    };
    for (t, nh, hs, buckets, max_d, pos0) in [
        (1, 3, 20, 32, 128, 0),
        (7, 5, 12, 16, 64, 3),
        (33, 3, 20, 16, 20, 200), // keys up to 232 back: far past max_distance
        (7, 9, 8, 32, 128, 5),    // more heads than a texture workgroup's 8
    ] {
        let w = nh * hs;
        let table = rand(buckets * nh, 5, 3.0);
        let qkv = rand(t * 3 * w, 6, 1.0);
        let keys = pos0 + t;
        for bidirectional in [false, true] {
            // Causal: the cache holds keys 0 .. pos0 + t (the step's own appended at the end).
            // Bidirectional: two sequences packed in the rows, the cache is the step's rows.
            let n_keys = if bidirectional { t } else { keys };
            let mut k = rand(n_keys * w, 7, 1.0);
            let mut v = rand(n_keys * w, 8, 1.0);
            let row0 = n_keys - t;
            for r in 0..t {
                let at = &qkv[r * 3 * w..(r + 1) * 3 * w];
                k[(row0 + r) * w..(row0 + r + 1) * w].copy_from_slice(&at[w..2 * w]);
                v[(row0 + r) * w..(row0 + r + 1) * w].copy_from_slice(&at[2 * w..]);
            }
            let q: Vec<f32> = (0..t)
                .flat_map(|r| qkv[r * 3 * w..r * 3 * w + w].to_vec())
                .collect();
            let lengths = if bidirectional && t > 1 {
                vec![t / 3, t - t / 3]
            } else {
                vec![t]
            };
            let mut want = Vec::new();
            let mut spans: Vec<[u32; 2]> = Vec::new();
            let mut start = 0;
            for &n in &lengths {
                let (q0, tk, k0) = match bidirectional {
                    true => (0, n, start),
                    false => (pos0, keys, 0),
                };
                let bias = wgpt::t5::position_bias(&table, nh, (q0, n, tk), bidirectional, max_d);
                let kk = &k[k0 * w..(k0 + tk) * w];
                let vv = &v[k0 * w..(k0 + tk) * w];
                let qq = &q[start * w..(start + n) * w];
                if bidirectional {
                    want.extend(reference::attend(qq, kk, vv, (nh, hs), Some(&bias), false));
                } else {
                    // Causal from pos0: query i sees keys 0 ..= pos0 + i, which the twin's
                    // `causal` (keys 0 ..= i) does not express: one query at a time.
                    for i in 0..n {
                        let b: Vec<f32> = (0..nh)
                            .flat_map(|h| {
                                bias[(h * n + i) * tk..(h * n + i) * tk + pos0 + i + 1].to_vec()
                            })
                            .collect();
                        let sub = |x: &[f32]| x[..(pos0 + i + 1) * w].to_vec();
                        want.extend(reference::attend(
                            &qq[i * w..(i + 1) * w],
                            &sub(kk),
                            &sub(vv),
                            (nh, hs),
                            Some(&b),
                            false,
                        ));
                    }
                }
                spans.extend(std::iter::repeat_n([start as u32, n as u32], n));
                start += n;
            }
            let words = wgpt::t5::attention_bias(&table, nh, bidirectional, max_d).unwrap();
            let step = Step {
                slot_rows: n_keys as u32,
                ..Step::new(t as u32, 0, pos0 as u32)
            };
            let params = AttentionParams {
                scale: 1.0, // T5 scales nothing
                ..AttentionParams::heads(nh as u32, hs as u32)
            };
            let out = gpu.storage_init("out", bytemuck::cast_slice(&vec![f32::NAN; t * w]));
            let buf = |name: &str, d: &[f32]| gpu.storage_init(name, bytemuck::cast_slice(d));
            let bias_uniform = gpu.uniform_zeroed("bias", 4 * words.len() as u64);
            gpu.queue
                .write_buffer(&bias_uniform, 0, bytemuck::cast_slice(&words));
            let none = gpu.uniform("none", &[0f32; 128]);
            let (stepb, pb) = (gpu.uniform("step", &step), gpu.uniform("p", &params));
            let (qb, kb, vb) = (buf("qkv", &qkv), buf("k", &k), buf("v", &v));
            let sb = gpu.storage_init("spans", bytemuck::cast_slice(&spans));
            let mut bufs = vec![
                (0, &stepb),
                (1, &pb),
                (2, &qb),
                (3, &kb),
                (4, &vb),
                (5, &out),
            ];
            bufs.extend([(6, &none), (8, &bias_uniform)]);
            let entry = match bidirectional {
                true => {
                    bufs.push((7, &sb));
                    "attention_bidirectional_biased"
                }
                false => "attention_biased",
            };
            run("attention", entry, &bufs, (nh, t));
            let got = gpu.download_f32(&out).unwrap();
            let d = max_abs_diff(&got, &want);
            println!("{entry} T={t} NH={nh} HS={hs} from {pos0}: max diff {d:e}");
            // Convex combinations of values in [-1, 1], an online softmax in f32 over <= 233
            // keys with scores up to ~|HS + 3|: a few f32 ulps of the exponent's sums.
            assert!(d < 1e-5, "{entry}: {d}");
            // The texture layout's: the cache in rgba32float textures, WG = 8 heads a workgroup.
            let tex = |name: &str, d: &[f32]| {
                gpu.texture_init(name, d, n_keys, w)
                    .create_view(&Default::default())
            };
            let (kt, vt) = (tex("k", &k), tex("v", &v));
            let out = gpu.storage_init("out", bytemuck::cast_slice(&vec![f32::NAN; t * w]));
            let mut res = vec![
                (0, stepb.as_entire_binding()),
                (1, pb.as_entire_binding()),
                (2, qb.as_entire_binding()),
                (3, wgpu::BindingResource::TextureView(&kt)),
                (4, wgpu::BindingResource::TextureView(&vt)),
                (5, out.as_entire_binding()),
                (6, none.as_entire_binding()),
                (8, bias_uniform.as_entire_binding()),
            ];
            let entry = match bidirectional {
                true => {
                    res.push((7, sb.as_entire_binding()));
                    "attention_texture_bidirectional_biased"
                }
                false => "attention_texture_biased",
            };
            run_entry(&gpu, "attention_texture", entry, res, (nh.div_ceil(8), t));
            let d = max_abs_diff(&gpu.download_f32(&out).unwrap(), &want);
            println!("{entry} T={t} NH={nh} HS={hs} from {pos0}: max diff {d:e}");
            assert!(d < 1e-5, "{entry}: {d}");
        }
    }
}

/// Loads a T5 fixture with `layout` and `dtype` on the test adapter.
fn load_t5(name: &str, layout: wgpt::WeightLayout, dtype: wgpt::WeightDtype) -> wgpt::Model {
    let opts = wgpt::LoadOptions {
        layout,
        dtype,
        ..Default::default()
    };
    wgpt::Model::load(gpu(), &t5_fixture(name), &opts).unwrap()
}

/// The GPU encoder-decoder: teacher-forced decoder logits of every source against
/// transformers', and greedy outputs identical, for both flavours, in each operand layout the
/// widths allow (t5-v1_0's widths are multiples of 64, flan-t5-odd's are not).
#[test]
fn gpu_logits_and_greedy_match_transformers() {
    use wgpt::{Pick, Session, WeightDtype, WeightLayout};
    for (name, layouts) in [
        (
            "t5-v1_0",
            &[WeightLayout::Texture, WeightLayout::Buffer][..],
        ),
        ("flan-t5-odd", &[WeightLayout::Buffer][..]),
    ] {
        let dir = t5_fixture(name);
        let e = json(&dir.join("expected.json"));
        for &layout in layouts {
            let model = load_t5(name, layout, WeightDtype::F32);
            let mut session = Session::new(&model).unwrap();
            for (i, s) in e["sources"].as_array().unwrap().iter().enumerate() {
                let src = ids(&s["input_ids"]);
                session.encode(&src).unwrap();
                let logits = session.logits(&ids(&s["decoder_ids"])).unwrap();
                let (_, want) = read_npy(&dir.join(format!("logits_{i}.npy")));
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = max_abs_diff(&logits, &want);
                println!(
                    "{name} {layout:?} source {i}: max |logit diff| {d:.2e} (scale {scale:.1})"
                );
                // f32 sums in another order than PyTorch's through up to 5 blocks.
                assert!(d < 1e-3 * scale, "{name} {layout:?} source {i}: {d}");
                session.encode(&src).unwrap();
                let start = model.config.t5.as_ref().unwrap().decoder_start_token_id;
                let mut next = session.next_token(&[start], Pick::Greedy).unwrap();
                let mut out = vec![next];
                while out.len() < 16 && next != 1 {
                    next = session.next_token(&[next], Pick::Greedy).unwrap();
                    out.push(next);
                }
                assert_eq!(out, ids(&s["greedy_ids"]), "{name} {layout:?} source {i}");
            }
        }
    }
}

/// Teacher-forced logits of t5-v1_0's first source on `model`, and transformers'.
fn first_source_logits(model: &wgpt::Model) -> (Vec<f32>, Vec<f32>) {
    let dir = t5_fixture("t5-v1_0");
    let e = json(&dir.join("expected.json"));
    let s = &e["sources"][0];
    let mut session = wgpt::Session::new(model).unwrap();
    session.encode(&ids(&s["input_ids"])).unwrap();
    let logits = session.logits(&ids(&s["decoder_ids"])).unwrap();
    (logits, read_npy(&dir.join("logits_0.npy")).1)
}

/// The same logits a token at a time: decode steps, with their own kernels and fusions.
fn first_source_decoded(model: &wgpt::Model) -> Vec<f32> {
    let e = json(&t5_fixture("t5-v1_0").join("expected.json"));
    let s = &e["sources"][0];
    let mut session = wgpt::Session::new(model).unwrap();
    session.encode(&ids(&s["input_ids"])).unwrap();
    let dec = ids(&s["decoder_ids"]);
    dec.iter()
        .flat_map(|&t| session.logits(&[t]).unwrap())
        .collect()
}

/// f16 and q8 weights in both layouts stay near transformers' f32 logits; the buffer layout's
/// q8 (nothing folded into it) matches the CPU twin on the same dequantised weights.
#[test]
fn gpu_weight_formats() {
    use wgpt::{WeightDtype, WeightLayout};
    let dir = t5_fixture("t5-v1_0");
    let cfg = T5Config::from_file(&dir.join("config.json")).unwrap();
    let e = json(&dir.join("expected.json"));
    let s = &e["sources"][0];
    for layout in [WeightLayout::Texture, WeightLayout::Buffer] {
        for (dtype, tol) in [
            // Relative to the logit scale, about 3x the measured: f16 rounds each weight by
            // 2^-11 (measured 2.7e-3 in all), q8 by up to 1/254 of its block's largest (5.8e-2:
            // this random init's activations grow large through the unscaled attention).
            (WeightDtype::F16, 1e-2),
            (WeightDtype::Q8, 0.15),
        ] {
            let model = load_t5("t5-v1_0", layout, dtype);
            let (got, want) = first_source_logits(&model);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = max_abs_diff(&got, &want);
            println!("{layout:?} {dtype:?}: max |logit diff| {d:.2e} (scale {scale:.1})");
            assert!(d < tol * scale, "{layout:?} {dtype:?}: {d}");
            if layout == WeightLayout::Buffer && dtype == WeightDtype::Q8 {
                let ckpt = Checkpoint::open(&dir).unwrap();
                let mut w = T5Weights::load(&ckpt, &cfg).unwrap();
                quantise_matrices(&mut w);
                let src = ids(&s["input_ids"]);
                let enc = reference::encode(&cfg, &w, &src);
                let twin = reference::decode_logits(&cfg, &w, &enc, &ids(&s["decoder_ids"]));
                let d = max_abs_diff(&got, &twin);
                println!("{layout:?} {dtype:?}: against the twin on q8 weights {d:.2e}");
                // Both on the same dequantised weights: f32 against f64 sums.
                assert!(d < 1e-4 * scale, "q8 twin: {d}");
            }
        }
    }
}

/// Every matrix of `w` through q8 and back, as the loader stores them (vectors and the
/// position bias tables stay f32).
fn quantise_matrices(w: &mut T5Weights) {
    use wgpt::reference::q8_round_trip;
    let q = |m: &mut Vec<f32>| *m = q8_round_trip(m);
    q(&mut w.shared);
    w.lm_head.iter_mut().for_each(q);
    for b in w.encoder.iter_mut().chain(w.decoder.iter_mut()) {
        let a = &mut b.self_attn;
        [&mut a.q, &mut a.k, &mut a.v, &mut a.o]
            .into_iter()
            .for_each(q);
        if let Some((_, a)) = &mut b.cross {
            [&mut a.q, &mut a.k, &mut a.v, &mut a.o]
                .into_iter()
                .for_each(q);
        }
        match &mut b.ff {
            reference::Ff::Relu { wi, wo } => [wi, wo].into_iter().for_each(q),
            reference::Ff::Gated { wi_0, wi_1, wo } => [wi_0, wi_1, wo].into_iter().for_each(q),
        }
    }
}

/// Every fusion rule off gives the fused plan's logits, in prefill and in decode steps: f32
/// weights in the texture layout (its decode GEMVs append to the KV cache), f16 in buffers.
#[test]
fn gpu_fusions_on_and_off() {
    use wgpt::{Fusions, WeightDtype, WeightLayout};
    for (layout, dtype) in [
        (WeightLayout::Texture, WeightDtype::F32),
        (WeightLayout::Buffer, WeightDtype::F16),
    ] {
        let load = |fuse| {
            let opts = wgpt::LoadOptions {
                layout,
                dtype,
                fuse: Some(fuse),
                ..Default::default()
            };
            wgpt::Model::load(gpu(), &t5_fixture("t5-v1_0"), &opts).unwrap()
        };
        let (fused, plain) = (load(Fusions::all()), load(Fusions::none()));
        let kernels = |m: &wgpt::Model| wgpt::Session::new(m).unwrap().kernels(1).len();
        println!(
            "{layout:?} {dtype:?}: {} dispatches a decode step fused, {} not",
            kernels(&fused),
            kernels(&plain)
        );
        let (prefill, want) = first_source_logits(&fused);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (what, a, b) in [
            (
                "prefill fused vs not",
                prefill.clone(),
                first_source_logits(&plain).0,
            ),
            (
                "decode fused vs not",
                first_source_decoded(&fused),
                first_source_decoded(&plain),
            ),
            ("decode vs prefill", first_source_decoded(&fused), prefill),
        ] {
            let d = max_abs_diff(&a, &b);
            println!("{layout:?} {dtype:?} {what}: max diff {d:.2e}");
            // The same products, summed in another order by the fused kernels.
            assert!(d < 1e-5 * scale, "{layout:?} {dtype:?} {what}: {d}");
        }
    }
}

/// The library's streaming path on an encoder-decoder: `Session::encode`, then a `Generator`
/// from the start token; greedy ids as transformers' (stopping at EOS, which is kept), seeded
/// sampling that repeats, stop strings cut the text, cancellation ends the stream.
#[test]
fn generator_streams_from_the_source() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use wgpt::{GenerateOptions, Generator, Sampling, Session, StopReason};
    let dir = t5_fixture("t5-v1_0");
    let e = json(&dir.join("expected.json"));
    let model = load_t5("t5-v1_0", wgpt::WeightLayout::Auto, wgpt::WeightDtype::F32);
    let tok = wgpt::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let start = [model.config.t5.as_ref().unwrap().decoder_start_token_id];
    let mut session = Session::new(&model).unwrap();
    let greedy = GenerateOptions {
        max_tokens: 16,
        ..Default::default()
    };
    let mut run = |src: &[u32], opts: &GenerateOptions| {
        session.encode(src).unwrap();
        let mut g = Generator::new(&mut session, Some(&tok), &start, opts).unwrap();
        let mut streamed = String::new();
        for ev in g.by_ref() {
            let ev = ev.unwrap();
            streamed += &ev.piece;
            if let Some(c) = &opts.cancel {
                c.store(true, Ordering::Relaxed);
            }
        }
        let out = g.into_generation();
        assert_eq!(streamed, out.text);
        out
    };
    // Source 2's greedy output ends in EOS (id 1) within 16 tokens.
    let s2 = &e["sources"][2];
    let out = run(&ids(&s2["input_ids"]), &greedy);
    assert_eq!(out.ids, ids(&s2["greedy_ids"]));
    assert_eq!(out.stopped_by, StopReason::Eos);
    let s0 = &e["sources"][0];
    let src0 = ids(&s0["input_ids"]);
    let out = run(&src0, &greedy);
    assert_eq!(out.ids, ids(&s0["greedy_ids"]));
    let sampled = GenerateOptions {
        sampling: Sampling {
            temperature: 0.9,
            top_k: 40,
            ..Default::default()
        },
        seed: 7,
        ..greedy.clone()
    };
    let (a, b) = (run(&src0, &sampled), run(&src0, &sampled));
    assert_eq!(a.ids, b.ids, "a seeded sample repeats");
    // A stop string from the middle of the greedy text: the text ends before it.
    let full = out.text.clone();
    let stop = full[full.len() / 2..].chars().take(3).collect::<String>();
    let cut = run(
        &src0,
        &GenerateOptions {
            stop: vec![stop.clone()],
            ..greedy.clone()
        },
    );
    assert_eq!(cut.stopped_by, StopReason::StopString);
    assert!(
        full.starts_with(&cut.text) && !cut.text.contains(&stop),
        "{cut:?}"
    );
    let cancel = Arc::new(AtomicBool::new(false));
    let cancelled = run(
        &src0,
        &GenerateOptions {
            cancel: Some(cancel),
            ..greedy
        },
    );
    assert_eq!(cancelled.stopped_by, StopReason::Cancelled);
    assert_eq!(cancelled.ids.len(), 1);
}

/// Misuse and bad input get clear errors: decoding before a source, a source on a decoder-only
/// model, an empty, too long or out-of-vocabulary source, a checkpoint missing its position
/// bias (through the GPU loader).
#[test]
fn bad_input_is_refused() {
    use wgpt::{Pick, Session};
    let model = load_t5("t5-v1_0", wgpt::WeightLayout::Auto, wgpt::WeightDtype::F32);
    let mut s = Session::with_context(&model, 16).unwrap();
    let e = s.next_token(&[0], Pick::Greedy).unwrap_err().to_string();
    assert!(e.contains("Session::encode"), "{e}");
    let e = s.encode(&[]).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    let e = s.encode(&[3; 17]).unwrap_err().to_string();
    assert!(e.contains("17 tokens") && e.contains("at most 16"), "{e}");
    let e = s.encode(&[3, 250]).unwrap_err().to_string();
    assert!(e.contains("250"), "{e}");
    // Still usable after the refusals; a fork carries the source's cross caches along.
    s.encode(&[3, 4, 1]).unwrap();
    let first = s.next_token(&[0], Pick::Greedy).unwrap();
    let mut f = s.fork().unwrap();
    assert_eq!(f.source_len(), 3);
    assert_eq!(f.logits(&[first]).unwrap(), s.logits(&[first]).unwrap());
    let e = wgpt::Batch::new(&model, 2).err().unwrap().to_string();
    assert!(e.contains("encoder-decoder"), "{e}");
    let gpt2 = wgpt::Model::load(gpu(), &fixture("gpt2-tiny"), &Default::default()).unwrap();
    let e = Session::new(&gpt2)
        .unwrap()
        .encode(&[1, 2])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("encoder-decoder") && e.contains("decoder"),
        "{e}"
    );
    // The GPU loader names a missing bias table.
    let tmp = t5_without(|n| n.starts_with("encoder.block.0.layer.0.SelfAttention.relative"));
    let e = wgpt::Model::load(gpu(), tmp.path(), &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("encoder.block.0.layer.0.SelfAttention.relative_attention_bias"),
        "{e}"
    );
}

fn wgpt_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_wgpt"))
        .args(args)
        .env_remove("WGPT_ADAPTER")
        .output()
        .expect("run wgpt")
}

/// `wgpt generate`, `logits --decoder-ids`, `info` and `bench` on a T5 folder; `--decoder-ids`
/// refused on a decoder-only model, and its absence on a T5.
#[test]
fn cli_runs_encoder_decoders() {
    let dir = t5_fixture("t5-v1_0");
    let d = dir.to_str().unwrap();
    let e = json(&dir.join("expected.json"));
    let s = &e["sources"][0];
    let text = s["text"].as_str().unwrap();
    let o = wgpt_cli(&[
        "generate",
        "--model",
        d,
        "--prompt",
        text,
        "--temperature",
        "0",
        "-n",
        "16",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(ids(&summary["ids"]), ids(&s["greedy_ids"]));
    assert_eq!(ids(&summary["source_ids"]), ids(&s["input_ids"]));
    assert_eq!(ids(&summary["prompt_ids"]), vec![0]);
    let out = tempfile::tempdir().unwrap();
    let npy = out.path().join("l.npy");
    let dec: Vec<String> = ids(&s["decoder_ids"]).iter().map(u32::to_string).collect();
    let o = wgpt_cli(&[
        "logits",
        "--model",
        d,
        "--prompt",
        text,
        "--decoder-ids",
        &dec.join(","),
        "--out",
        npy.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (shape, got) = read_npy(&npy);
    let (_, want) = read_npy(&dir.join("logits_0.npy"));
    assert_eq!(shape, vec![dec.len() as u64, 250]);
    // As the library's logits (gpu_logits_and_greedy_match_transformers).
    assert!(
        max_abs_diff(&got, &want) < 1e-2,
        "{}",
        max_abs_diff(&got, &want)
    );
    let o = wgpt_cli(&[
        "logits",
        "--model",
        d,
        "--prompt",
        text,
        "--out",
        "/dev/null",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--decoder-ids START"),
        "{err}"
    );
    let gpt2 = fixture("gpt2-tiny");
    let o = wgpt_cli(&[
        "logits",
        "--model",
        gpt2.to_str().unwrap(),
        "--ids",
        "1,2",
        "--decoder-ids",
        "0,1",
        "--out",
        "/dev/null",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("decoder-only"), "{err}");
    for cmd in ["chat", "serve"] {
        let o = wgpt_cli(&[cmd, "--model", d]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("wgpt generate"),
            "{cmd}: {err}"
        );
    }
    let o = wgpt_cli(&["info", "--model", d]);
    let info = String::from_utf8_lossy(&o.stdout);
    assert!(
        info.contains("relative position bias") && info.contains("encoder 2 layers"),
        "{info}"
    );
    let o = wgpt_cli(&["bench", "--model", d, "-p", "8", "-n", "4", "-r", "1"]);
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && report.contains("encode t/s"),
        "{report}"
    );
}

/// attention_cross and attention_texture_cross (T5's cross-attention: queries alone in their
/// rows, every key of the source from spans[0], unscaled, no bias) against the CPU twin:
/// T = 1, 7 and 33 decoder rows over 1, 13 and 70 source rows at an offset in the cache, NH =
/// 3, 5 and 9.
#[test]
fn cross_attention_kernels_match_cpu() {
    use wgpt::gpu::kernels::{AttentionParams, Step};
    let gpu = wgpt::Engine::new(None).unwrap();
    for (t, src, nh, hs, first) in [(1, 1, 3, 20, 0), (7, 13, 5, 12, 2), (33, 70, 9, 8, 5)] {
        let w = nh * hs;
        let rows = first + src;
        let (q, k, v) = (
            rand(t * w, 1, 1.0),
            rand(rows * w, 2, 1.0),
            rand(rows * w, 3, 1.0),
        );
        let window = |x: &[f32]| x[first * w..].to_vec();
        let want = reference::attend(&q, &window(&k), &window(&v), (nh, hs), None, false);
        let step = Step::new(t as u32, 0, 9); // decoder positions do not matter here
        let params = AttentionParams {
            scale: 1.0,
            ..AttentionParams::heads(nh as u32, hs as u32)
        };
        let (stepb, pb) = (gpu.uniform("step", &step), gpu.uniform("p", &params));
        let buf = |name: &str, d: &[f32]| gpu.storage_init(name, bytemuck::cast_slice(d));
        let span = gpu.storage_init("span", bytemuck::cast_slice(&[first as u32, src as u32]));
        let none = gpu.uniform("none", &[0f32; 128]);
        let (qb, kb, vb) = (buf("q", &q), buf("k", &k), buf("v", &v));
        let texture = |name: &str, d: &[f32]| {
            gpu.texture_init(name, d, rows, w)
                .create_view(&Default::default())
        };
        let (kt, vt) = (texture("k", &k), texture("v", &v));
        for (family, entry, textures) in [
            ("attention", "attention_cross", false),
            ("attention_texture", "attention_texture_cross", true),
        ] {
            let out = buf("out", &vec![f32::NAN; t * w]);
            let [kr, vr] = match textures {
                true => [&kt, &vt].map(wgpu::BindingResource::TextureView),
                false => [&kb, &vb].map(|b| b.as_entire_binding()),
            };
            let res = vec![
                (0, stepb.as_entire_binding()),
                (1, pb.as_entire_binding()),
                (2, qb.as_entire_binding()),
                (3, kr),
                (4, vr),
                (5, out.as_entire_binding()),
                (6, none.as_entire_binding()),
                (7, span.as_entire_binding()),
            ];
            let x = if textures { nh.div_ceil(8) } else { nh };
            run_entry(&gpu, family, entry, res, (x, t));
            let d = max_abs_diff(&gpu.download_f32(&out).unwrap(), &want);
            println!("{entry} T={t} source {src} NH={nh} HS={hs}: max diff {d:e}");
            // Convex combinations of values in [-1, 1], an online softmax in f32 over <= 70
            // keys with scores up to |HS|: a few f32 ulps.
            assert!(d < 1e-5, "{entry}: {d}");
        }
    }
}

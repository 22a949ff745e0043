//! The whole model against Hugging Face transformers (fixtures from tests/fixtures/make_fixtures.py),
//! and the KV-cache, chunked-prefill and split-weight paths against the plain one.

mod common;

use common::*;
use wgpt::{LoadOptions, Model, Pick, Session, Tokenizer, reference};

/// Logits within this of transformers'. The fixtures' logits reach |66| (peaky on purpose);
/// f32 sums over C <= 64 and a different summation order than PyTorch's give errors of ~1e-5
/// here. f16/bf16 checkpoints are compared with references computed in f32 from the same rounded
/// weights, so the same bound holds for them.
const LOGIT_TOL: f32 = 1e-3;

fn load(name: &str, opts: &LoadOptions) -> Model {
    Model::load(gpu(), &fixture(name), opts).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn logits_match_transformers() {
    for name in FIXTURES {
        let dir = fixture(name);
        let e = expected(&dir);
        let (shape, want) = read_npy(&dir.join("logits.npy"));
        let model = load(name, &LoadOptions::default());
        let ids = full_sequence(&e);
        assert_eq!(
            shape,
            vec![ids.len() as u64, model.config.vocab_size as u64]
        );
        let got = Session::new(&model).unwrap().logits(&ids).unwrap();
        let diff = max_abs_diff(&got, &want);
        println!(
            "{name}: T = {}, max |logit - transformers| = {diff:.2e}",
            ids.len()
        );
        assert!(diff < LOGIT_TOL, "{name}: max diff {diff}");
    }
}

#[test]
fn greedy_continuations_match_transformers() {
    for name in FIXTURES {
        let dir = fixture(name);
        let e = expected(&dir);
        let model = load(name, &LoadOptions::default());
        let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        assert_eq!(
            tok.encode(&e.prompt).unwrap(),
            e.prompt_ids,
            "{name}: prompt tokenization"
        );
        let got = greedy(&model, &e.prompt_ids, e.greedy_ids.len());
        println!(
            "{name}: {} greedy tokens, min margin {:.3}",
            got.len(),
            e.min_margin
        );
        assert_eq!(got, e.greedy_ids, "{name}: greedy continuation differs");
    }
}

/// Decoding token by token over the KV cache gives the logits of a full recompute.
#[test]
fn kv_cache_decode_equals_full_recompute() {
    let name = "gpt2-odd";
    let e = expected(&fixture(name));
    let model = load(name, &LoadOptions::default());
    let ids = full_sequence(&e);
    let full = Session::new(&model).unwrap().logits(&ids).unwrap();
    let mut s = Session::new(&model).unwrap();
    // Prefill a prefix, then one token per step.
    let split = 5;
    let mut stepped = s.logits(&ids[..split]).unwrap();
    for &t in &ids[split..] {
        stepped.extend(s.logits(&[t]).unwrap());
    }
    assert_eq!(s.position(), ids.len());
    let diff = max_abs_diff(&full, &stepped);
    println!(
        "KV-cache decode vs full recompute, T = {}: max diff {diff:.2e}",
        ids.len()
    );
    // Same kernels, same per-element summation order; only the attention blocks differ in which
    // keys share a block, so differences stay at f32 rounding of the logits' size (|66| * 1e-7 * a few).
    assert!(diff < 1e-4, "max diff {diff}");
}

/// Weights split across many buffers, prefill in chunks of t_max tokens and the head in chunks
/// of rows: the same logits as the plain path.
#[test]
fn split_weights_and_chunked_prefill_match() {
    let name = "gpt2-odd";
    let e = expected(&fixture(name));
    let (_, want) = read_npy(&fixture(name).join("logits.npy"));
    // 16 KiB: wte (384 x 60 f32 = 90 KiB) splits in 6, c_fc in 4; t_max = 17 tokens, 10 head rows.
    let opts = LoadOptions {
        max_chunk_bytes: Some(16 * 1024),
        ..Default::default()
    };
    let model = load(name, &opts);
    assert!(model.wte_chunks() > 1);
    let ids = full_sequence(&e);
    let got = Session::new(&model).unwrap().logits(&ids).unwrap();
    let diff = max_abs_diff(&got, &want);
    println!(
        "split weights: {} wte chunks, max diff vs transformers {diff:.2e}",
        model.wte_chunks()
    );
    assert!(diff < LOGIT_TOL, "max diff {diff}");
    let greedy = greedy(&model, &e.prompt_ids, e.greedy_ids.len());
    assert_eq!(greedy, e.greedy_ids);
}

#[test]
fn session_reset_and_context_limit() {
    let model = load("gpt2-tiny", &LoadOptions::default());
    let n_ctx = model.config.n_positions;
    let mut s = Session::new(&model).unwrap();
    let first = s.next_token(&[1, 2, 3], Pick::Greedy).unwrap();
    s.reset();
    assert_eq!(s.position(), 0);
    assert_eq!(s.next_token(&[1, 2, 3], Pick::Greedy).unwrap(), first);
    // Filling the context exactly works; one more token is a clear error.
    let fill = vec![5u32; n_ctx - 3];
    s.next_token(&fill, Pick::Greedy).unwrap();
    let err = s.next_token(&[1], Pick::Greedy).unwrap_err().to_string();
    assert!(err.contains("context is full"), "{err}");
    let err = Session::new(&model)
        .unwrap()
        .next_token(&[], Pick::Greedy)
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty"), "{err}");
    let err = Session::new(&model)
        .unwrap()
        .next_token(&[100_000], Pick::Greedy)
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
}

/// Same seed, same tokens; another seed, other tokens; a very low temperature and top-k = 1 are
/// greedy; the repetition penalty changes what a looping continuation does; the filters run.
#[test]
fn sampling_is_seeded() {
    use wgpt::Sampling;
    let dir = fixture("gpt2-tiny");
    let model = load("gpt2-tiny", &LoadOptions::default());
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let e = expected(&dir);
    let run = |sampling: Sampling, seed: u64| {
        let mut s = Session::new(&model).unwrap();
        let opts = wgpt::GenerateOptions {
            max_tokens: 24,
            sampling,
            seed,
            stop_at_eos: false,
            context_shift: None,
            ..Default::default()
        };
        wgpt::generate_ids(&mut s, Some(&tok), &e.prompt_ids, &opts, |_| {})
            .unwrap()
            .ids
    };
    let t = |temperature: f32| Sampling {
        temperature,
        ..Default::default()
    };
    // Temperature 8 flattens these peaky logits enough that seeds matter.
    let a = run(t(8.0), 1);
    assert_eq!(a, run(t(8.0), 1), "same seed must give the same tokens");
    assert_ne!(a, run(t(8.0), 2), "different seeds should differ");
    assert_eq!(run(t(1e-4), 3), e.greedy_ids[..24], "T -> 0 is greedy");
    assert_eq!(
        run(Sampling { top_k: 1, ..t(8.0) }, 4),
        e.greedy_ids[..24],
        "top-k = 1 is greedy"
    );
    // The greedy continuation repeats tokens (84 84 84 ...); a strong penalty breaks that.
    let penalised = run(
        Sampling {
            repeat_penalty: 3.0,
            top_k: 1,
            ..t(1.0)
        },
        5,
    );
    assert_ne!(penalised, e.greedy_ids[..24]);
    let repeats = penalised.windows(2).filter(|w| w[0] == w[1]).count();
    assert!(
        repeats < 3,
        "penalised continuation still repeats: {penalised:?}"
    );
    let filtered = run(
        Sampling {
            top_k: 20,
            top_p: 0.9,
            min_p: 0.05,
            ..t(1.5)
        },
        6,
    );
    assert_eq!(
        filtered,
        run(
            Sampling {
                top_k: 20,
                top_p: 0.9,
                min_p: 0.05,
                ..t(1.5)
            },
            6
        )
    );
}

/// A checkpoint split into shards with a `model.safetensors.index.json`, as transformers writes
/// big models, loads to the same logits.
#[test]
fn sharded_checkpoint_loads() {
    let src = fixture("gpt2-tiny");
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let views: Vec<(String, safetensors::tensor::TensorView)> = part
            .iter()
            .map(|n| (n.to_string(), st.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &dir.path().join(file)).unwrap();
        for n in part {
            weight_map.insert(n.to_string(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let e = expected(&src);
    let (_, want) = read_npy(&src.join("logits.npy"));
    let model = Model::load(gpu(), dir.path(), &LoadOptions::default()).unwrap();
    let got = Session::new(&model)
        .unwrap()
        .logits(&full_sequence(&e))
        .unwrap();
    let diff = max_abs_diff(&got, &want);
    println!("sharded (2 files): max diff vs transformers {diff:.2e}");
    assert!(diff < LOGIT_TOL);

    // A shard name that tries to leave the folder is refused.
    let bad = serde_json::json!({"weight_map": {"wte.weight": "../x.safetensors"}});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        bad.to_string(),
    )
    .unwrap();
    let err = Model::load(gpu(), dir.path(), &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a plain file name"), "{err}");
}

/// f16 weight storage against transformers' f32 logits. Rounding every weight to 11 bits of
/// mantissa moved these deliberately peaky logits (|max| ~66) by at most 0.036 when measured
/// (5e-4 of the logit scale); the fixtures' top-2 margins (>= 0.13) keep greedy choices.
#[test]
fn f16_weights_stay_close_to_transformers() {
    let opts = LoadOptions {
        dtype: wgpt::gpu::tensor::WeightDtype::F16,
        ..Default::default()
    };
    // Every fixture in the layout auto picks, and gpt2-tiny (whose widths allow it) in both.
    let texture = LoadOptions {
        layout: wgpt::WeightLayout::Texture,
        ..opts.clone()
    };
    let buffer = LoadOptions {
        layout: wgpt::WeightLayout::Buffer,
        ..opts.clone()
    };
    let runs = FIXTURES
        .iter()
        .map(|n| (*n, &opts))
        .chain([("gpt2-tiny", &texture), ("gpt2-tiny", &buffer)]);
    for (name, opts) in runs {
        let dir = fixture(name);
        let e = expected(&dir);
        let (_, want) = read_npy(&dir.join("logits.npy"));
        let model = load(name, opts);
        let ids = full_sequence(&e);
        let got = Session::new(&model).unwrap().logits(&ids).unwrap();
        let diff = max_abs_diff(&got, &want);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let greedy = greedy(&model, &e.prompt_ids, e.greedy_ids.len());
        let agree = greedy
            .iter()
            .zip(&e.greedy_ids)
            .take_while(|(a, b)| a == b)
            .count();
        let layout = if model.uses_textures() {
            "textures"
        } else {
            "buffers"
        };
        println!(
            "{name} f16 ({layout}): max |logit diff| {diff:.3e} (logit scale {scale:.1}), greedy agrees for {agree}/32 tokens"
        );
        // 2^-11 relative per weight, accumulated over two or three layers: allow ~3x the measured.
        assert!(diff < 1.5e-3 * scale, "{name}: {diff}");
        assert!(agree >= 24, "{name}: greedy agreed for only {agree} tokens");
    }
}

/// q8 weight storage (int8, an f32 scale per 32 weights along K) against transformers' f32
/// logits, in both layouts on gpt2-tiny and in the auto layout (buffers) on gpt2-bf16; the two
/// fixtures whose widths are not multiples of 32 are refused with a clear error.
#[test]
fn q8_weights_stay_close_to_transformers() {
    use wgpt::WeightLayout;
    use wgpt::gpu::tensor::WeightDtype;
    let q8 = |layout| LoadOptions {
        dtype: WeightDtype::Q8,
        layout,
        ..Default::default()
    };
    for (name, layout) in [
        ("gpt2-tiny", WeightLayout::Texture),
        ("gpt2-tiny", WeightLayout::Buffer),
        ("gpt2-bf16", WeightLayout::Auto),
    ] {
        let dir = fixture(name);
        let e = expected(&dir);
        let (_, want) = read_npy(&dir.join("logits.npy"));
        let model = load(name, &q8(layout));
        assert_eq!(model.uses_textures(), layout == WeightLayout::Texture);
        let ids = full_sequence(&e);
        let got = Session::new(&model).unwrap().logits(&ids).unwrap();
        let diff = max_abs_diff(&got, &want);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        // The kernels themselves: the CPU forward on the same dequantised weights.
        let cfg = wgpt::Config::from_file(&dir.join("config.json")).unwrap();
        let ckpt = wgpt::loader::Checkpoint::open(&dir).unwrap();
        // Folded as the model folded them, if it did (the quantised weights are the folded).
        let mut fold = wgpt::loader::LnFold::default();
        let host = wgpt::loader::load_weights(&ckpt, &cfg, |name, rows, cols, read| {
            let q8_host = |name: &str, rows, _, read: &mut wgpt::loader::ReadRows| {
                let mut v = Vec::new();
                read(0, rows, &mut v)?;
                // Matrices are stored as q8; vectors and the position table stay f32.
                let q8 = rows > 1 && name != "wpe.weight";
                Ok(if q8 { reference::q8_round_trip(&v) } else { v })
            };
            match model.layer_norms_folded() {
                true => fold.make(name, rows, cols, read, q8_host),
                false => q8_host(name, rows, cols, read),
            }
        })
        .unwrap();
        let twin = max_abs_diff(&got, &reference::forward(&cfg, &host, &ids));
        let greedy = greedy(&model, &e.prompt_ids, e.greedy_ids.len());
        let agree = greedy
            .iter()
            .zip(&e.greedy_ids)
            .take_while(|(a, b)| a == b)
            .count();
        println!(
            "{name} q8 ({layout:?}): max |logit diff| {diff:.3e} (logit scale {scale:.1}: {:.2e} of it), \
             vs the CPU forward on the dequantised weights {twin:.2e}; greedy agrees for {agree}/32 tokens",
            diff / scale
        );
        // Against the twin on the same weights only f32 summation differs, as for f32 weights.
        assert!(twin < LOGIT_TOL, "{name}: {twin} from the CPU twin");
        // Each weight moves by up to half its block's step, max |w| / 254 (~0.4%, ~0.1% rms),
        // and the errors compound through the layers and the head: measured 1.35e-2 of the logit
        // scale (0.89 of 65.9) on gpt2-tiny, 0.91e-2 on gpt2-bf16. Allow ~2x.
        assert!(diff < 3e-2 * scale, "{name}: {diff}");
        // Measured 32/32 on both. The logit error exceeds the smallest top-2 margins of these
        // continuations (0.14 on gpt2-tiny, 0.16 on gpt2-bf16), so a flip on another adapter's
        // summation order is possible: allow one in the last few tokens.
        assert!(agree >= 28, "{name}: greedy agreed for only {agree} tokens");
        if layout == WeightLayout::Buffer {
            // Weights split into buffers: q8 chunks are whole groups of four rows (wte: 384 rows
            // of 80 bytes in chunks of 204 and 180 rows, the second padded), same logits.
            let split = LoadOptions {
                max_chunk_bytes: Some(16 * 1024 + 3 * 80),
                ..q8(layout)
            };
            let model = load(name, &split);
            assert_eq!(model.wte_chunks(), 2);
            let d = max_abs_diff(&Session::new(&model).unwrap().logits(&ids).unwrap(), &got);
            // Smaller chunks also mean shorter steps, whose rows may go through gemv rather
            // than the tiled matmul: the same products summed in another order, a few ulps of
            // the logit scale (one ulp of 65.9 is 7.6e-6; measured 1.1e-5).
            assert!(d < 1e-6 * scale, "{name}: split q8 weights differ by {d}");
        }
    }
    for name in ["gpt2-odd", "gpt2-f16-noprefix"] {
        let err = Model::load(gpu(), &fixture(name), &q8(WeightLayout::Auto))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("multiples of 32") && err.contains("use f16 or f32"),
            "{name}: {err}"
        );
    }
}

/// Both operand layouts of the linear layers, forced, against transformers: storage buffers (what
/// GPUs use) and textures (what CPU adapters use), on the fixture whose widths allow both.
#[test]
fn buffer_and_texture_layouts_match_transformers() {
    use wgpt::WeightLayout;
    let name = "gpt2-tiny";
    let e = expected(&fixture(name));
    let (_, want) = read_npy(&fixture(name).join("logits.npy"));
    for layout in [WeightLayout::Buffer, WeightLayout::Texture] {
        let model = load(
            name,
            &LoadOptions {
                layout,
                ..Default::default()
            },
        );
        assert_eq!(model.uses_textures(), layout == WeightLayout::Texture);
        let got = Session::new(&model)
            .unwrap()
            .logits(&full_sequence(&e))
            .unwrap();
        let diff = max_abs_diff(&got, &want);
        let greedy = greedy(&model, &e.prompt_ids, e.greedy_ids.len());
        println!("{layout:?}: max diff vs transformers {diff:.2e}");
        assert!(diff < LOGIT_TOL, "{layout:?}: {diff}");
        assert_eq!(greedy, e.greedy_ids, "{layout:?}");
    }
    // Widths that are not multiples of 64 cannot use textures: a clear error when asked for.
    let opts = LoadOptions {
        layout: WeightLayout::Texture,
        ..Default::default()
    };
    let err = Model::load(gpu(), &fixture("gpt2-odd"), &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("multiples of 64"), "{err}");
}

/// Loading reports progress after each tensor, ending at the total, which counts every weight.
#[test]
fn load_reports_progress() {
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let progress = wgpt::Progress(Arc::new(move |done, total| {
        sink.lock().unwrap().push((done, total))
    }));
    let model = load(
        "gpt2-odd",
        &LoadOptions {
            progress: Some(progress),
            ..Default::default()
        },
    );
    let seen = seen.lock().unwrap();
    let total = model.params();
    assert!(seen.len() > 10, "one report per tensor");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "progress only grows"
    );
    assert!(seen.iter().all(|&(_, t)| t == total));
    assert_eq!(seen.last().unwrap().0, total);
}

/// Past n_positions: an error by default; with a context shift, generation goes on (the session
/// restarts on the prompt head and the recent tokens), deterministically.
#[test]
fn context_shift_generates_past_the_context() {
    let dir = fixture("gpt2-tiny");
    let model = load("gpt2-tiny", &LoadOptions::default());
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let e = expected(&dir);
    let n_ctx = model.config.n_positions;
    let run = |max_tokens: usize, context_shift| {
        let mut s = Session::new(&model).unwrap();
        let opts = wgpt::GenerateOptions {
            max_tokens,
            sampling: wgpt::Sampling {
                temperature: 3.0,
                ..Default::default()
            },
            seed: 9,
            stop_at_eos: false,
            context_shift,
            ..Default::default()
        };
        wgpt::generate_ids(&mut s, Some(&tok), &e.prompt_ids, &opts, |_| {})
            .map(|g| (g.ids, s.position()))
    };
    let err = run(3 * n_ctx, None).unwrap_err().to_string();
    assert!(err.contains("the context holds 64"), "{err}");
    let (ids, pos) = run(3 * n_ctx, Some(4)).unwrap();
    assert_eq!(ids.len(), 3 * n_ctx);
    assert!(pos <= n_ctx, "the cache never overflows");
    assert_eq!(ids, run(3 * n_ctx, Some(4)).unwrap().0, "deterministic");
    // Until the context fills, the tokens are those of a run that never needs to shift.
    let fits = run(n_ctx + 1 - e.prompt_ids.len(), None).unwrap().0;
    assert_eq!(ids[..fits.len()], fits[..]);
    assert_ne!(
        ids[fits.len()..],
        ids[..ids.len() - fits.len()],
        "it keeps generating, not replaying"
    );
}

/// Stop strings end generation with the text cut before them; a cancel flag set from the
/// callback (as another thread would) ends it between tokens; EOS is reported.
#[test]
fn stop_strings_and_cancellation() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use wgpt::StopReason;
    let dir = fixture("gpt2-tiny");
    let model = load("gpt2-tiny", &LoadOptions::default());
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let e = expected(&dir);
    let full = tok.decode(&e.greedy_ids).unwrap();
    let generate = |opts: &wgpt::GenerateOptions,
                    cancel_after: Option<(usize, Arc<AtomicBool>)>| {
        let mut s = Session::new(&model).unwrap();
        let mut n = 0;
        wgpt::generate_ids(&mut s, Some(&tok), &e.prompt_ids, opts, |_| {
            n += 1;
            if let Some((after, flag)) = &cancel_after {
                if n == *after {
                    flag.store(true, Ordering::Relaxed);
                }
            }
        })
        .unwrap()
    };
    // A stop string from the middle of the greedy text (" is", as decoded by the tokenizer).
    let stop = full[8..11].to_string();
    let opts = wgpt::GenerateOptions {
        max_tokens: 32,
        stop: vec![stop.clone()],
        stop_at_eos: false,
        ..Default::default()
    };
    let g = generate(&opts, None);
    assert_eq!(g.stopped_by, StopReason::StopString);
    assert!(!g.text.contains(&stop), "{:?} still holds {stop:?}", g.text);
    assert!(full.starts_with(&g.text) && g.ids.len() < 32);

    let flag = Arc::new(AtomicBool::new(false));
    let opts = wgpt::GenerateOptions {
        max_tokens: 32,
        stop_at_eos: false,
        cancel: Some(flag.clone()),
        ..Default::default()
    };
    let g = generate(&opts, Some((5, flag)));
    assert_eq!(g.stopped_by, StopReason::Cancelled);
    assert_eq!(g.ids, e.greedy_ids[..5]);

    let g = generate(
        &wgpt::GenerateOptions {
            max_tokens: 32,
            stop_at_eos: false,
            ..Default::default()
        },
        None,
    );
    assert_eq!((g.stopped_by, g.ids.len()), (StopReason::MaxTokens, 32));
}

/// OPT (pre-LN and post-LN, ReLU, positions offset by 2, separate q/k/v) and XGLM (sinusoidal
/// positions computed on the GPU, scaled token embeddings, erf GELU) against transformers: the
/// same tolerances as GPT-2, in both operand layouts.
#[test]
fn opt_and_xglm_match_transformers() {
    for name in ["opt-tiny", "opt-postln", "xglm-tiny"] {
        let dir = fixture(name);
        let e = expected(&dir);
        let (_, want) = read_npy(&dir.join("logits.npy"));
        for layout in [wgpt::WeightLayout::Buffer, wgpt::WeightLayout::Texture] {
            let opts = LoadOptions {
                layout,
                ..Default::default()
            };
            let model = Model::load(gpu(), &dir, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
            let got = Session::new(&model)
                .unwrap()
                .logits(&full_sequence(&e))
                .unwrap();
            let diff = max_abs_diff(&got, &want);
            println!(
                "{name} ({layout:?}): {}; max |logit - transformers| = {diff:.2e}",
                model.config.describe()
            );
            // The same bound as GPT-2; XGLM's erf GELU is an approximation within 1.5e-7.
            assert!(diff < LOGIT_TOL, "{name}: max diff {diff}");
            assert_eq!(greedy(&model, &e.prompt_ids, 32), e.greedy_ids, "{name}");
        }
    }
}

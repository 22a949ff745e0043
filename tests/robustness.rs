//! Hostile or broken files, GPU errors as values, concurrency and drop safety (issue 6). The
//! 10,000-token run, which measures memory, is alone in `tests/long_run.rs`.

mod common;

use std::path::Path;

use common::*;
use wgpt::loader::Checkpoint;
use wgpt::{
    Error, GenerateOptions, Generator, LoadOptions, Model, Pick, Sampling, Session, Tokenizer,
};

/// A copy of a fixture folder to break.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixture(name)).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    dir
}

/// A safetensors file from a raw header (JSON) and data section.
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

fn open_err(dir: &Path) -> String {
    match Checkpoint::open(dir) {
        Ok(_) => panic!("{} opens", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_weights_are_an_error() {
    let dir = copy_fixture("gpt2-bf16");
    let path = dir.path().join("model.safetensors");
    let full = std::fs::read(&path).unwrap();
    for len in [0, 7, 8, 100, full.len() / 2, full.len() - 1] {
        std::fs::write(&path, &full[..len]).unwrap();
        let msg = open_err(dir.path());
        assert!(msg.contains("not a valid safetensors file"), "{len}: {msg}");
        assert!(Model::load(gpu(), dir.path(), &LoadOptions::default()).is_err());
    }
}

#[test]
fn header_claiming_2_40_bytes_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.safetensors"), {
        let mut v = (1u64 << 40).to_le_bytes().to_vec();
        v.extend_from_slice(b"{}");
        v
    })
    .unwrap();
    let msg = open_err(dir.path());
    assert!(msg.contains("not a valid safetensors file"), "{msg}");
    // A tensor claiming 2^40 bytes of a 16-byte file.
    let big =
        r#"{"wte.weight":{"dtype":"F32","shape":[274877906944],"data_offsets":[0,1099511627776]}}"#;
    std::fs::write(
        dir.path().join("model.safetensors"),
        raw_safetensors(big, &[0; 16]),
    )
    .unwrap();
    assert!(open_err(dir.path()).contains("not a valid safetensors file"));
    // Shapes whose element count overflows.
    let huge =
        r#"{"wte.weight":{"dtype":"F32","shape":[4294967296,4294967296,2],"data_offsets":[0,0]}}"#;
    let e = Checkpoint::from_bytes(raw_safetensors(huge, &[]), Path::new("x")).err();
    assert!(e.is_some());
}

#[test]
fn overlapping_tensors_are_an_error() {
    let header = r#"{"wte.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"wpe.weight":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let e = Checkpoint::from_bytes(raw_safetensors(header, &[0; 12]), Path::new("x"));
    let msg = e.err().unwrap().to_string();
    assert!(msg.contains("invalid offset"), "{msg}");
}

/// Shard names that would read outside the model folder are refused before any file is opened.
#[test]
fn shard_index_cannot_escape_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "../../etc/passwd",
        "/etc/passwd",
        "..",
        ".",
        "",
        "a\\..\\b",
        "c:x",
    ] {
        let index = serde_json::json!({"weight_map": {"wte.weight": name}});
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        let msg = open_err(dir.path());
        assert!(msg.contains("not a plain file name"), "{name:?}: {msg}");
    }
}

/// A config.json with an absurd layer count or size is refused at once (the layer count used
/// to make the load walk 10^18 layers before reading a weight).
#[test]
fn absurd_configs_are_refused_quickly() {
    let dir = copy_fixture("gpt2-bf16");
    let t0 = std::time::Instant::now();
    for (field, value) in [
        ("n_layer", serde_json::json!(1_000_000_000_000_000_000u64)),
        ("n_embd", serde_json::json!(1u64 << 62)),
        ("n_positions", serde_json::json!(u64::MAX)),
        ("vocab_size", serde_json::json!(1u64 << 40)),
    ] {
        let mut cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture("gpt2-bf16/config.json")).unwrap(),
        )
        .unwrap();
        cfg[field] = value;
        std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
        let e = Model::load(gpu(), dir.path(), &LoadOptions::default()).err();
        assert!(matches!(e, Some(Error::Config { .. })), "{field}: {e:?}");
    }
    // Generous: each is one JSON parse; the old n_layer path never finished.
    assert!(t0.elapsed().as_secs() < 30);
}

/// A context whose KV cache cannot fit the adapter is refused before anything is allocated,
/// with the bytes needed and what to try.
#[test]
fn kv_cache_beyond_the_adapter_is_refused_up_front() {
    let gpu = gpu();
    let dir = copy_fixture("gpt2-bf16");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("gpt2-bf16/config.json")).unwrap())
            .unwrap();
    let c = cfg["n_embd"].as_u64().unwrap();
    // One layer's keys: n_positions x C f32, one row past the largest binding (and past
    // max_buffer_size where that is the smaller limit).
    let n_ctx = gpu.max_binding_bytes() / (4 * c) + 1;
    cfg["n_positions"] = n_ctx.into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let e = Model::load(gpu.clone(), dir.path(), &LoadOptions::default()).err();
    let msg = e.as_ref().map(ToString::to_string).unwrap_or_default();
    assert!(matches!(e, Some(Error::Limits(_))), "{e:?}");
    for part in [
        "needs",
        "bytes",
        "smaller context",
        "another adapter",
        "KV cache",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    // The same device goes on working.
    let model = Model::load(gpu, &fixture("gpt2-bf16"), &LoadOptions::default()).unwrap();
    let mut s = Session::with_context(&model, 16).unwrap();
    assert_eq!(s.n_ctx(), 16);
    assert!(s.next_token(&[1, 2, 3], Pick::Greedy).is_ok());
    let e = Session::with_context(&model, 65).err();
    assert!(matches!(e, Some(Error::Input(_))), "{e:?}");
}

/// A buffer beyond max_buffer_size, past every up-front check, is a wgpu validation error: it
/// comes back as a value (in a scope, or from `check`), and the device stays usable.
#[test]
fn allocation_beyond_max_buffer_size_is_an_error_value() {
    let gpu = gpu();
    let too_big = gpu.limits.max_buffer_size + 256;
    let e = gpu
        .scoped(|| {
            let _ = gpu.storage("too big", too_big);
            Ok(())
        })
        .err();
    assert!(matches!(e, Some(Error::Gpu(_))), "{e:?}");
    // Outside a scope the engine's own handler keeps it for `check`, instead of panicking.
    let _ = gpu.storage("too big", too_big);
    assert!(matches!(gpu.check(), Err(Error::Gpu(_))));
    assert!(gpu.check().is_ok(), "the error is reported once");
    let model = Model::load(gpu, &fixture("gpt2-bf16"), &LoadOptions::default()).unwrap();
    let e = expected(&fixture("gpt2-bf16"));
    let mut s = Session::new(&model).unwrap();
    assert_eq!(
        s.next_token(&e.prompt_ids, Pick::Greedy).unwrap(),
        e.greedy_ids[0]
    );
}

/// `Device::destroy` loses the device as a driver reset would: the next step and the next
/// allocation are errors, not panics, and a new engine works.
#[test]
fn lost_device_is_an_error_value() {
    let dir = fixture("gpt2-bf16");
    let e = expected(&dir);
    let gpu = gpu();
    let model = Model::load(gpu.clone(), &dir, &LoadOptions::default()).unwrap();
    let mut s = Session::new(&model).unwrap();
    let first = s.next_token(&e.prompt_ids, Pick::Greedy).unwrap();
    s.submit(&[first], Pick::Greedy).unwrap();
    gpu.device.destroy();
    let r = s.wait();
    assert!(r.is_err(), "a step in flight on a lost device: {r:?}");
    s.reset();
    let r = s.next_token(&e.prompt_ids, Pick::Greedy);
    assert!(matches!(r, Err(Error::DeviceLost(_))), "{r:?}");
    let r = Session::new(&model).err();
    assert!(matches!(r, Some(Error::DeviceLost(_))), "{r:?}");
    let r = Model::load(gpu.clone(), &dir, &LoadOptions::default()).err();
    assert!(matches!(r, Some(Error::DeviceLost(_))), "{r:?}");
    assert!(r.unwrap().to_string().contains("open a new one"));
    drop((s, model, gpu));
    let model = Model::load(common::gpu(), &dir, &LoadOptions::default()).unwrap();
    let mut s = Session::new(&model).unwrap();
    assert_eq!(s.next_token(&e.prompt_ids, Pick::Greedy).unwrap(), first);
}

/// Seeded sampling with context shifts in a 16-position window, `n` tokens.
fn sampled(model: &Model, prompt: &[u32], n: usize, seed: u64) -> Vec<u32> {
    let mut s = Session::with_context(model, 16).unwrap();
    let opts = GenerateOptions {
        max_tokens: n,
        sampling: Sampling {
            temperature: 1.0,
            ..Default::default()
        },
        seed,
        stop_at_eos: false,
        context_shift: Some(4),
        ..Default::default()
    };
    let g = wgpt::generate_ids(&mut s, None, prompt, &opts, |_| {}).unwrap();
    g.ids
}

/// Tokens per thread in the stress test: `WGPT_STRESS_TOKENS`, 200 by default.
fn stress_tokens() -> usize {
    std::env::var("WGPT_STRESS_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// 8 threads of seeded sampling on one model, with context shifts: each thread's tokens equal
/// a solo run with the same seed.
#[test]
fn eight_threads_match_solo_runs() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Model>();
    let dir = fixture("gpt2-f16-noprefix");
    let e = expected(&dir);
    let model = Model::load(gpu(), &dir, &LoadOptions::default()).unwrap();
    let n = stress_tokens();
    let seeds: Vec<u64> = (0..8).collect();
    let solo: Vec<Vec<u32>> = seeds
        .iter()
        .map(|&s| sampled(&model, &e.prompt_ids, n, s))
        .collect();
    let threaded: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = seeds
            .iter()
            .map(|&s| {
                let (model, prompt) = (&model, &e.prompt_ids);
                scope.spawn(move || sampled(model, prompt, n, s))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (t, s)) in threaded.iter().zip(&solo).enumerate() {
        assert_eq!(t.len(), n);
        assert_eq!(t, s, "thread {i}");
    }
    // Different seeds really sample differently (else the comparison proves little).
    assert!(solo.iter().any(|s| s != &solo[0]));
}

/// Dropping a session with a step in flight, a generator half-way, or the model and engine
/// with a step in flight leaves the device (or a new one) usable, with the same results.
#[test]
fn drops_mid_generation_are_safe() {
    let dir = fixture("gpt2-bf16");
    let e = expected(&dir);
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let gpu = gpu();
    let model = Model::load(gpu.clone(), &dir, &LoadOptions::default()).unwrap();
    let n = e.greedy_ids.len().min(8);
    let greedy = |model: &Model| {
        let mut s = Session::new(model).unwrap();
        let mut out = vec![s.next_token(&e.prompt_ids, Pick::Greedy).unwrap()];
        while out.len() < n {
            out.push(s.next_token(&[out[out.len() - 1]], Pick::Greedy).unwrap());
        }
        out
    };
    assert_eq!(greedy(&model), e.greedy_ids[..n]);
    // A session dropped with its step in flight.
    for _ in 0..3 {
        let mut s = Session::new(&model).unwrap();
        s.submit(&e.prompt_ids, Pick::Greedy).unwrap();
        drop(s);
    }
    gpu.wait().unwrap();
    assert_eq!(greedy(&model), e.greedy_ids[..n]);
    // A generator dropped between tokens and one dropped with a step in flight.
    let mut s = Session::new(&model).unwrap();
    let opts = GenerateOptions {
        max_tokens: 20,
        stop_at_eos: false,
        ..Default::default()
    };
    {
        let mut g = Generator::new(&mut s, Some(&tok), &e.prompt_ids, &opts).unwrap();
        g.next().unwrap().unwrap();
        g.next().unwrap().unwrap();
    }
    {
        let mut g = Generator::new(&mut s, Some(&tok), &[1], &opts).unwrap();
        let _ = g.poll_token(); // submits the step, which may still be running
    }
    s.reset();
    let mut out = vec![s.next_token(&e.prompt_ids, Pick::Greedy).unwrap()];
    while out.len() < n {
        out.push(s.next_token(&[out[out.len() - 1]], Pick::Greedy).unwrap());
    }
    assert_eq!(out, e.greedy_ids[..n]);
    // Model and engine dropped with a step in flight; a new engine works.
    let mut s = Session::new(&model).unwrap();
    s.submit(&e.prompt_ids, Pick::Greedy).unwrap();
    drop((s, model, gpu));
    let model = Model::load(common::gpu(), &dir, &LoadOptions::default()).unwrap();
    assert_eq!(greedy(&model), e.greedy_ids[..n]);
}

/// A tokenizer.json the tokenizers crate panics on (found by fuzzing) is an error.
#[test]
fn tokenizer_the_tokenizers_crate_panics_on_is_an_error() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions/tokenizer/decoder-key-not-string-panics.json");
    let e = Tokenizer::from_file(&path).err().map(|e| e.to_string());
    assert!(
        e.as_deref().is_some_and(|m| m.contains("malformed")),
        "{e:?}"
    );
    let bytes = std::fs::read(&path).unwrap();
    assert!(Tokenizer::from_bytes(&bytes).is_err());
}

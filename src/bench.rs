//! `wgpt bench`: prefill and decode figures for one adapter and model, comparable across machines
//! and vendors. The report is JSON with a versioned schema ([`SCHEMA`]); fields are documented on
//! the structs below and in README.md.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::runtime::{Model, Pick, Session};
use crate::{Error, Result};

/// Bumped whenever a field changes meaning or disappears (adding fields keeps the version).
pub const SCHEMA: &str = "wgpt-bench/1";

/// The JSON report of one `wgpt bench` (schema [`SCHEMA`]), as [`run`] returns it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The wgpt crate version that produced the report.
    pub wgpt_version: String,
    /// The adapter measured.
    pub adapter: AdapterReport,
    /// The model's shape and storage.
    pub model: ModelReport,
    /// Seconds to load (or generate) the weights and build the pipelines.
    pub load_s: f64,
    /// Peak resident host memory of the process after loading (Linux's VmHWM), bytes. On CPU
    /// adapters "VRAM" is host memory too, so it includes the weights themselves.
    #[serde(default)]
    pub load_peak_rss_bytes: Option<u64>,
    /// Bytes of the checkpoint files loaded (absent for random weights).
    #[serde(default)]
    pub checkpoint_bytes: Option<u64>,
    /// Bytes of GPU buffers: weights plus one session's KV cache and scratch.
    pub vram_bytes: u64,
    /// Of which the weights (what a load allocates; the session comes after its peak).
    #[serde(default)]
    pub weight_bytes: u64,
    /// One entry per `--prompt-len`, in the order given.
    pub runs: Vec<Run>,
    /// "gpu-timestamps" when per-kernel times come from timestamp queries, else "unavailable".
    pub kernel_timing: String,
    /// GPU milliseconds per kernel family for one decode step at the end of the first run.
    pub kernels_decode_ms: Vec<KernelTime>,
    /// The same for the prefill of the first run's prompt.
    pub kernels_prefill_ms: Vec<KernelTime>,
    /// Measured buffer-copy bandwidth, GB/s: the best of three 64 MiB (or the largest binding)
    /// buffer-to-buffer copies, each byte read and written. Absent in reports from other tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_gb_s: Option<f64>,
    /// Kernel microbenchmarks on GPT-2 shapes (with `--kernels`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_bench: Vec<KernelBench>,
    /// Batched decode throughput (with `--batch`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch_runs: Vec<BatchRun>,
}

/// Greedy decode of B sequences at once ([`crate::Batch`]), after a prefill of each.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchRun {
    /// B: sequences advanced per step.
    pub sequences: usize,
    /// Tokens each sequence was prefilled with (the first `--prompt-len`).
    pub prompt_len: usize,
    /// Batched steps timed (each gives one token per sequence).
    pub steps: usize,
    /// Median milliseconds per batched step.
    pub ms_per_step: f64,
    /// Tokens per second over all sequences: sequences / step time.
    pub decode_tok_s: f64,
}

/// The adapter, from wgpu's [`AdapterInfo`](wgpu::AdapterInfo).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdapterReport {
    /// Adapter name, e.g. "llvmpipe (LLVM 15.0.7, 256 bits)".
    pub name: String,
    /// PCI vendor id (0 where the backend does not report one).
    pub vendor: u32,
    /// wgpu backend, e.g. "Vulkan", "Metal", "Dx12", "Gl".
    pub backend: String,
    /// "DiscreteGpu", "IntegratedGpu", "Cpu", ...
    pub device_type: String,
    /// Driver name.
    pub driver: String,
    /// Driver version details.
    pub driver_info: String,
}

/// The model benchmarked.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelReport {
    /// The folder, or `random:SHAPE` for weights generated on the GPU.
    pub source: String,
    /// Weight storage on the GPU.
    pub dtype: String,
    /// "buffer" or "texture": where the linear layers' operands live.
    #[serde(default)]
    pub layout: String,
    /// L: transformer blocks.
    pub n_layer: usize,
    /// C: embedding width.
    pub n_embd: usize,
    /// NH: attention heads.
    pub n_head: usize,
    /// V: vocabulary size.
    pub vocab_size: usize,
    /// n_ctx: context length.
    pub n_positions: usize,
    /// Parameter count (a tied head counted once).
    pub params: u64,
    /// An encoder-decoder (T5): L is its decoder's, and each run's prefill is the encoder's
    /// pass over the prompt as its source.
    #[serde(default)]
    pub encoder_decoder: bool,
}

/// One (prompt length, generated tokens) configuration, medians over the repeats.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    /// Prompt tokens fed to the prefill.
    pub prompt_len: usize,
    /// Tokens generated per repeat, the first one from the prefill.
    pub gen_tokens: usize,
    /// Times the configuration was run; the figures are medians over them.
    pub repeats: usize,
    /// Prompt tokens per second of the prefill pass (which also yields the first new token).
    pub prefill_tok_s: f64,
    /// Time to first token, ms (= the prefill pass).
    pub ttft_ms: f64,
    /// Generated tokens per second after the first.
    pub decode_tok_s: f64,
    /// Median milliseconds per decode step (one token), over all steps of all repeats.
    pub ms_per_token_p50: f64,
    /// 90th-percentile milliseconds per decode step.
    pub ms_per_token_p90: f64,
    /// Compute dispatches recorded for one decode step.
    pub dispatches_per_token: usize,
    /// Weight bytes a decode step reads divided by its median time, GB/s.
    pub decode_weight_gb_s: f64,
    /// `decode_weight_gb_s` over the report's `copy_gb_s`: the share of the weight-bandwidth
    /// bound (weight bytes per token / copy bandwidth) that decode reaches. 0 where no copy
    /// bandwidth was measured (reports from other tools).
    #[serde(default)]
    pub decode_of_copy_bound: f64,
    /// Matmul and attention FLOPs of the prefill divided by its time, GFLOP/s.
    pub prefill_gflop_s: f64,
    /// Seconds of each repeat's prefill pass, in run order (the medians above come from these).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefill_s_samples: Vec<f64>,
    /// Seconds of each repeat's decode after the first token, in run order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decode_s_samples: Vec<f64>,
}

/// GPU time of one kernel family within a step, from timestamp queries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KernelTime {
    /// Kernel family, e.g. "gemv", "matmul", "attention", "layernorm".
    pub kernel: String,
    /// Milliseconds summed over the family's dispatches in the step.
    pub ms: f64,
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Prompt lengths to measure, one [`Run`] each; all above 0, and each plus `gen_tokens`
    /// within n_ctx.
    pub prompt_lens: Vec<usize>,
    /// Tokens to generate per run (the first comes from the prefill); above 0.
    pub gen_tokens: usize,
    /// Repeats of each configuration (medians are reported); above 0.
    pub repeat: usize,
    /// Copied to [`ModelReport::source`].
    pub source: String,
    /// Copied to [`Report::load_s`]: seconds the caller spent loading the model.
    pub load_s: f64,
    /// Copied to [`Report::load_peak_rss_bytes`].
    pub load_peak_rss_bytes: Option<u64>,
    /// Copied to [`Report::checkpoint_bytes`].
    pub checkpoint_bytes: Option<u64>,
    /// Batch sizes for the batched-decode measurement (none: skipped).
    pub batch_sizes: Vec<usize>,
}

/// The process's peak resident memory so far (VmHWM), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn median(v: &mut [f64]) -> f64 {
    percentile(v, 0.5)
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Deterministic token ids spread over the vocabulary (the timing does not depend on them).
fn prompt(len: usize, vocab: usize) -> Vec<u32> {
    (0..len).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

/// Runs the benchmark on `model`.
pub fn run(model: &Model, opts: &Options) -> Result<Report> {
    let cfg = &model.config;
    if opts.gen_tokens == 0 || opts.repeat == 0 || opts.prompt_lens.contains(&0) {
        let (option, value) = match opts.gen_tokens {
            0 => ("bench::Options::gen_tokens", 0),
            _ if opts.repeat == 0 => ("bench::Options::repeat", 0),
            _ => ("bench::Options::prompt_lens", 0),
        };
        return Err(Error::option(option, value, "above 0"));
    }
    if let Some(&p) = opts
        .prompt_lens
        .iter()
        .find(|&&p| p + opts.gen_tokens > cfg.n_positions)
    {
        let expected = format!(
            "each plus gen_tokens ({}) within the model's n_positions = {}",
            opts.gen_tokens, cfg.n_positions
        );
        return Err(Error::option("bench::Options::prompt_lens", p, &expected));
    }
    // A cache for the longest run, as llama-bench sizes its context (n_prompt + n_gen).
    let longest = opts.prompt_lens.iter().max().unwrap_or(&0) + opts.gen_tokens;
    let mut session = Session::with_context(model, longest.max(1))?;
    let weight_bytes = model.decode_weight_bytes() as f64;
    let mut runs = Vec::new();
    // One untimed pass first: drivers compile pipelines lazily on first use (lavapipe's JIT
    // takes over a second), which is load time, not inference time.
    first_token(&mut session, &prompt(opts.prompt_lens[0], cfg.vocab_size))?;
    session.reset();
    session.next_token(&[1], Pick::Greedy)?;
    let copy = copy_bandwidth(&model.gpu)?;
    for &p in &opts.prompt_lens {
        let ids = prompt(p, cfg.vocab_size);
        let (mut prefill, mut decode, mut steps) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..opts.repeat {
            session.reset();
            let (mut next, prefill_s) = first_token(&mut session, &ids)?;
            prefill.push(prefill_s);
            let t1 = Instant::now();
            for _ in 1..opts.gen_tokens {
                let ts = Instant::now();
                next = session.next_token(&[next], Pick::Greedy)?;
                steps.push(ts.elapsed().as_secs_f64());
            }
            decode.push(t1.elapsed().as_secs_f64());
        }
        let (prefill_s_samples, decode_s_samples) = (prefill.clone(), decode.clone());
        let prefill_s = median(&mut prefill);
        let decode_s = median(&mut decode);
        let p50 = percentile(&mut steps, 0.5);
        let flops = model.prefill_flops(p);
        runs.push(Run {
            prompt_len: p,
            gen_tokens: opts.gen_tokens,
            repeats: opts.repeat,
            prefill_tok_s: p as f64 / prefill_s,
            ttft_ms: prefill_s * 1e3,
            decode_tok_s: if opts.gen_tokens > 1 {
                (opts.gen_tokens - 1) as f64 / decode_s
            } else {
                0.0
            },
            ms_per_token_p50: p50 * 1e3,
            ms_per_token_p90: percentile(&mut steps, 0.9) * 1e3,
            dispatches_per_token: session.dispatches_per_token(),
            decode_weight_gb_s: if p50 > 0.0 {
                weight_bytes / p50 / 1e9
            } else {
                0.0
            },
            decode_of_copy_bound: if p50 > 0.0 {
                weight_bytes / p50 / 1e9 / copy
            } else {
                0.0
            },
            prefill_gflop_s: flops / prefill_s / 1e9,
            prefill_s_samples,
            decode_s_samples,
        });
    }

    // Per-kernel GPU time: the first prompt's prefill, then one decode step after it.
    session.reset();
    let ids = prompt(opts.prompt_lens[0], cfg.vocab_size);
    let to_ms = |v: Vec<(&str, f64)>| {
        v.into_iter()
            .map(|(k, s)| KernelTime {
                kernel: k.to_string(),
                ms: s * 1e3,
            })
            .collect::<Vec<_>>()
    };
    let (timing, prefill_k, decode_k) = match session.profile_step(&ids)? {
        Some(pre) => {
            let dec = session.profile_step(&[1])?.unwrap_or_default();
            ("gpu-timestamps", to_ms(pre), to_ms(dec))
        }
        None => ("unavailable", Vec::new(), Vec::new()),
    };

    let info = &model.gpu.info;
    Ok(Report {
        schema: SCHEMA.into(),
        wgpt_version: env!("CARGO_PKG_VERSION").into(),
        adapter: AdapterReport {
            name: info.name.clone(),
            vendor: info.vendor,
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
        },
        model: ModelReport {
            source: opts.source.clone(),
            dtype: model.weight_formats(),
            layout: if model.uses_textures() {
                "texture"
            } else {
                "buffer"
            }
            .into(),
            n_layer: cfg.n_layer,
            n_embd: cfg.n_embd,
            n_head: cfg.n_head,
            vocab_size: cfg.vocab_size,
            n_positions: cfg.n_positions,
            params: model.params(),
            encoder_decoder: cfg.t5.is_some(),
        },
        load_s: opts.load_s,
        load_peak_rss_bytes: opts.load_peak_rss_bytes,
        checkpoint_bytes: opts.checkpoint_bytes,
        vram_bytes: model.weight_bytes() + session.gpu_bytes(),
        weight_bytes: model.weight_bytes(),
        runs,
        kernel_timing: timing.into(),
        kernels_decode_ms: decode_k,
        kernels_prefill_ms: prefill_k,
        copy_gb_s: Some(copy),
        kernel_bench: Vec::new(),
        batch_runs: batch_runs(model, opts)?,
    })
}

/// The first token after a prompt of `ids`, and the seconds the report counts as its prefill:
/// a decoder's whole first step, or an encoder-decoder's encoder pass over `ids` as its source
/// alone (its decoder's first step then follows, uncounted).
fn first_token(session: &mut Session, ids: &[u32]) -> Result<(u32, f64)> {
    let start = (session.model().config.t5.as_deref()).map(|t5| t5.decoder_start_token_id);
    let t0 = Instant::now();
    match start {
        Some(start) => {
            session.encode(ids)?;
            session.model().gpu.wait()?;
            let encoded = t0.elapsed().as_secs_f64();
            Ok((session.next_token(&[start], Pick::Greedy)?, encoded))
        }
        None => {
            let next = session.next_token(ids, Pick::Greedy)?;
            Ok((next, t0.elapsed().as_secs_f64()))
        }
    }
}

/// Batched decode: B sequences prefilled with the first prompt length, then `gen_tokens` steps
/// of one token each, timed per step.
fn batch_runs(model: &Model, opts: &Options) -> Result<Vec<BatchRun>> {
    let p = opts.prompt_lens[0];
    let mut out = Vec::new();
    for &b in &opts.batch_sizes {
        // As llama-bench sizes its cache: the prompt and the generated tokens.
        let n_ctx = (p + opts.gen_tokens).min(model.config.n_positions);
        let mut batch = crate::Batch::with_context(model, b, n_ctx)?;
        let mut next = (0..b)
            .map(|i| batch.prefill(i, &prompt(p, model.config.vocab_size - i)))
            .collect::<Result<Vec<u32>>>()?;
        // The first step compiles nothing new but warms the batched path; not timed.
        next = batch.step(&next)?;
        let mut steps = Vec::new();
        for _ in 2..opts.gen_tokens {
            let t = Instant::now();
            next = batch.step(&next)?;
            steps.push(t.elapsed().as_secs_f64());
        }
        let ms = median(&mut steps) * 1e3;
        out.push(BatchRun {
            sequences: b,
            prompt_len: p,
            steps: steps.len(),
            ms_per_step: ms,
            decode_tok_s: if ms > 0.0 { b as f64 / ms * 1e3 } else { 0.0 },
        });
    }
    Ok(out)
}

/// A side-by-side table of several reports (`wgpt bench --compare`).
pub fn compare(reports: &[(String, Report)]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<28} {:<34} {:<9} {:<14} {:>6} {:>12} {:>11} {:>10} {:>9} {:>8}",
        "file",
        "adapter",
        "backend",
        "model",
        "prompt",
        "prefill t/s",
        "decode t/s",
        "p90 ms/t",
        "GB/s",
        "of copy"
    );
    for (file, r) in reports {
        for run in &r.runs {
            let shape = format!("L{} C{} {}", r.model.n_layer, r.model.n_embd, r.model.dtype);
            let _ = writeln!(
                s,
                "{:<28} {:<34} {:<9} {:<14} {:>6} {:>12.1} {:>11.1} {:>10.2} {:>9.2} {:>8}",
                truncate(file, 28),
                truncate(&r.adapter.name, 34),
                r.adapter.backend,
                shape,
                run.prompt_len,
                run.prefill_tok_s,
                run.decode_tok_s,
                run.ms_per_token_p90,
                run.decode_weight_gb_s,
                of_copy(run.decode_of_copy_bound)
            );
        }
    }
    s
}

/// A share of the copy bandwidth as a percentage, blank where none was measured.
fn of_copy(share: f64) -> String {
    if share > 0.0 {
        format!("{:.0}%", 100.0 * share)
    } else {
        String::new()
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// The names [`shape`] knows.
pub const SHAPES: &[&str] = &[
    "gpt2",
    "gpt2-medium",
    "gpt2-large",
    "gpt2-xl",
    "smollm2-135m",
    "qwen2.5-0.5b",
    "llama-3.2-1b",
];

/// Named model shapes for `--shape`: GPT-2's sizes, and the Llama-family models people run
/// locally, from their config.json (contexts capped at 8192 positions, so one session's KV
/// cache fits the bindings of small adapters; llama-bench measures far shorter ones).
pub fn shape(name: &str) -> Option<crate::Config> {
    let llama = |json: &str| {
        crate::Config::from_json(json, std::path::Path::new(name)).expect("a valid shape")
    };
    let (n_layer, n_embd, n_head) = match name {
        "gpt2" => (12, 768, 12),
        "gpt2-medium" => (24, 1024, 16),
        "gpt2-large" => (36, 1280, 20),
        "gpt2-xl" => (48, 1600, 25),
        // HuggingFaceTB/SmolLM2-135M(-Instruct).
        "smollm2-135m" => {
            return Some(llama(
                r#"{"model_type": "llama", "hidden_size": 576,
            "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
            "num_hidden_layers": 30, "vocab_size": 49152, "rope_theta": 100000,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": true}"#,
            ));
        }
        // Qwen/Qwen2.5-0.5B(-Instruct): q, k, v biases.
        "qwen2.5-0.5b" => {
            return Some(llama(
                r#"{"model_type": "qwen2", "hidden_size": 896,
            "intermediate_size": 4864, "num_attention_heads": 14, "num_key_value_heads": 2,
            "num_hidden_layers": 24, "vocab_size": 151936, "rope_theta": 1000000.0,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "tie_word_embeddings": true}"#,
            ));
        }
        // meta-llama/Llama-3.2-1B(-Instruct): llama3 scaling (its context is 131072).
        "llama-3.2-1b" => {
            return Some(llama(
                r#"{"model_type": "llama", "hidden_size": 2048,
            "intermediate_size": 8192, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 64, "num_hidden_layers": 16, "vocab_size": 128256, "rope_theta": 500000.0,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": true}"#,
            ));
        }
        _ => return None,
    };
    Some(crate::Config {
        n_layer,
        n_embd,
        n_head,
        n_kv_head: n_head,
        head_dim: n_embd / n_head,
        n_inner: 4 * n_embd,
        ..crate::Config::gpt2()
    })
}

/// One microbenchmark of `wgpt bench --kernels`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KernelBench {
    /// Kernel (entry point) measured, e.g. "gemv", "matmul", "attention".
    pub kernel: String,
    /// Shape in the crate's letters, e.g. "T=1 K=768 N=2304".
    pub shape: String,
    /// Milliseconds per dispatch, best of two timed rounds (wall clock).
    pub ms: f64,
    /// GB/s: bytes the kernel must move (weights, activations, cache) over its time.
    pub gb_s: f64,
    /// GFLOP/s: the kernel's floating-point operations over its time.
    pub gflop_s: f64,
    /// gb_s as a share of the measured buffer-copy bandwidth: the kernel's place on the roofline.
    pub of_copy_bandwidth: f64,
}

/// Times `reps` dispatches of one bind group, recorded in one pass, after one warm-up.
fn time_dispatch(
    gpu: &crate::Engine,
    pipe: &wgpu::ComputePipeline,
    bind: &wgpu::BindGroup,
    groups: (u32, u32),
    reps: u32,
) -> Result<f64> {
    let mut best = f64::MAX;
    for round in 0..3 {
        let n = if round == 0 { 1 } else { reps };
        let t0 = Instant::now();
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for _ in 0..n {
                pass.set_pipeline(pipe);
                pass.set_bind_group(0, bind, &[]);
                pass.dispatch_workgroups(groups.0, groups.1, 1);
            }
        }
        gpu.queue.submit([enc.finish()]);
        gpu.wait()?;
        if round > 0 {
            best = best.min(t0.elapsed().as_secs_f64() / n as f64);
        }
    }
    Ok(best)
}

/// Buffer-to-buffer copy bandwidth in GB/s (bytes read + written), the adapter's practical roof.
pub fn copy_bandwidth(gpu: &crate::Engine) -> Result<f64> {
    let bytes = (64u64 << 20).min(gpu.max_binding_bytes());
    let (src, dst) = (
        gpu.storage("copy_src", bytes),
        gpu.storage("copy_dst", bytes),
    );
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t0 = Instant::now();
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&src, 0, &dst, 0, bytes);
        gpu.queue.submit([enc.finish()]);
        gpu.wait()?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(2.0 * bytes as f64 / best / 1e9)
}

/// Microbenchmarks of each kernel family on GPT-2 shapes of width `c` (768 for GPT-2 small; NH =
/// c / 64), wall-clock over repeated dispatches, in the buffer or the texture layout; returns the
/// copy bandwidth and one row per kernel and shape.
pub fn kernels(
    gpu: &crate::Engine,
    dtype: crate::gpu::tensor::WeightDtype,
    textures: bool,
    c: u32,
) -> Result<(f64, Vec<KernelBench>)> {
    use crate::gpu::kernels::{Epilogue, Pipelines};
    if c == 0 || !c.is_multiple_of(64) {
        return Err(Error::Input(format!(
            "kernel benchmarks need a width that is a multiple of 64, not {c}"
        )));
    }
    let mut m = Micro {
        gpu,
        // The head size of GPT-2's shapes, fixed as a model's pipelines fix it.
        p: std::rc::Rc::new(Pipelines::new(
            gpu,
            dtype,
            textures,
            Some(64),
            &[Epilogue::Store],
        )),
        dtype,
        textures,
        c,
        copy: copy_bandwidth(gpu)?,
        rows: Vec::new(),
    };
    m.linear()?;
    m.attention()?;
    m.fused_attention()?;
    m.layernorm()?;
    gpu.check()?;
    Ok((m.copy, m.rows))
}

/// The state of `wgpt bench --kernels`: pipelines, shape, the rows measured so far.
struct Micro<'a> {
    gpu: &'a crate::Engine,
    p: std::rc::Rc<crate::gpu::kernels::Pipelines>,
    dtype: crate::gpu::tensor::WeightDtype,
    textures: bool,
    /// C; NH = C / 64.
    c: u32,
    /// Copy bandwidth, GB/s: each row's share of it.
    copy: f64,
    rows: Vec<KernelBench>,
}

impl Micro<'_> {
    fn step(&self, rows: u32, pos0: u32) -> wgpu::Buffer {
        self.gpu
            .uniform("step", &crate::gpu::kernels::Step::new(rows, 0, pos0))
    }

    fn f32s(&self, n: u32) -> wgpu::Buffer {
        self.gpu.storage("bench", n as u64 * 4)
    }

    fn push(&mut self, kernel: &str, shape: String, s: f64, bytes: f64, flops: f64) {
        let gb_s = bytes / s / 1e9;
        self.rows.push(KernelBench {
            kernel: kernel.into(),
            shape,
            ms: s * 1e3,
            gb_s,
            gflop_s: flops / s / 1e9,
            of_copy_bandwidth: gb_s / self.copy,
        });
    }

    fn linear(&mut self) -> Result<()> {
        use crate::gpu::kernels::{Epilogue, Linear, MatmulParams, bind, bind_at};
        use wgpu::BindingResource::TextureView as Tex;
        let (gpu, p, dtype, textures, c) =
            (self.gpu, self.p.clone(), self.dtype, self.textures, self.c);
        // Linear layers: c_attn, c_fc, the MLP's c_proj; gemv at T = 1, the tiled matmul at 128, 512.
        for (k, n) in [(c, 3 * c), (c, 4 * c), (4 * c, c)] {
            // Stored bytes of the (N, K) weight: for q8 one per weight plus the block scales.
            let wbytes = (n as usize * dtype.row_bytes(k as usize)) as u64;
            let w = gpu.storage("w", wbytes);
            let view = |t: wgpu::Texture| t.create_view(&Default::default());
            let (w_tex, x_tex) = (
                view(gpu.weight_texture("w", n as usize, k as usize, dtype)),
                view(gpu.texture("x", 512, k as usize)),
            );
            let (bias, x) = (self.f32s(n), gpu.storage_uniform("x", 512 * k as u64 * 4));
            for t in [1u32, 128, 512] {
                let out = self.f32s(t * n);
                let params = MatmulParams {
                    k,
                    n,
                    ldo: n,
                    col0: 0,
                    has_bias: 1,
                    kv_c: 0,
                    ln_eps: 0.0,
                    kv_w: 0,
                };
                let (st, pu) = (self.step(t, 0), gpu.uniform("p", &params));
                let few = t == 1;
                // At T = 1 without textures both gemv reductions, where subgroups exist. The bench
                // measures the plain-store epilogue.
                let candidates: Vec<(&str, &Linear, (u32, u32))> = match (textures, few) {
                    (false, true) => std::iter::once(("gemv", &p.gemv))
                        .chain(p.gemv_subgroup.as_ref().map(|sg| ("gemv_subgroup", sg)))
                        .map(|(name, pipe)| (name, pipe, (n.div_ceil(4), t)))
                        .collect(),
                    (false, false) => {
                        vec![("matmul", &p.matmul, (n.div_ceil(32), t.div_ceil(32)))]
                    }
                    // Both texture GEMVs and both GEMMs, where subgroups exist.
                    (true, true) => std::iter::once(("gemv_texture", &p.textures().gemv_texture))
                        .chain(
                            (p.textures().gemv_texture_subgroup.as_ref())
                                .map(|sg| ("gemv_texture_subgroup", sg)),
                        )
                        .chain(
                            (p.textures().gemv_texture_norm.as_ref())
                                .map(|sg| ("gemv_texture_norm", sg)),
                        )
                        .map(|(name, pipe)| (name, pipe, (n.div_ceil(4).div_ceil(8), t)))
                        .collect(),
                    (true, false) => {
                        std::iter::once(("matmul_texture", &p.textures().matmul_texture))
                            .chain(
                                (p.textures().matmul_texture_subgroup.as_ref())
                                    .map(|sg| ("matmul_texture_subgroup", sg)),
                            )
                            .map(|(name, pipe)| {
                                (name, pipe, (n.div_ceil(4).div_ceil(8), t.div_ceil(4)))
                            })
                            .collect()
                    }
                };
                for (name, linear, groups) in candidates {
                    let pipe = linear.get(Epilogue::Store);
                    let bg = if textures {
                        let r = vec![
                            st.as_entire_binding(),
                            pu.as_entire_binding(),
                            Tex(&x_tex),
                            Tex(&w_tex),
                            bias.as_entire_binding(),
                            out.as_entire_binding(),
                            crate::Engine::gemv_input(&x),
                        ];
                        // The layout's NORM row sums (unread here): the bias as a placeholder.
                        let mut r: Vec<_> = (0..).zip(r).collect();
                        r.push((9, bias.as_entire_binding()));
                        bind_at(gpu, pipe, "bench", r)
                    } else {
                        bind(gpu, pipe, "bench", &[&st, &pu, &x, &w, &bias, &out])
                    };
                    let s = time_dispatch(self.gpu, pipe, &bg, groups, if few { 20 } else { 2 })?;
                    let bytes = wbytes as f64 + 4.0 * t as f64 * (k + n) as f64;
                    self.push(
                        name,
                        format!("T={t} K={k} N={n}"),
                        s,
                        bytes,
                        2.0 * t as f64 * k as f64 * n as f64,
                    );
                }
            }
        }
        Ok(())
    }

    fn attention(&mut self) -> Result<()> {
        use crate::gpu::kernels::{AttentionParams, bind, bind_resources};
        use wgpu::BindingResource::TextureView as Tex;
        let (gpu, p, textures, c, nh) =
            (self.gpu, self.p.clone(), self.textures, self.c, self.c / 64);
        let kv_tex = [0, 1].map(|_| {
            gpu.texture("kv", 1024, c as usize)
                .create_view(&Default::default())
        });
        // Attention: one decode query over contexts of 128..1024 keys, and a 128-token prefill.
        let att = gpu.uniform("att", &AttentionParams::heads(nh, 64));
        let (k_cache, v_cache) = (self.f32s(1024 * c), self.f32s(1024 * c));
        // ROPE's frequencies: unread (the constant is off), bound all the same.
        let inv_freq = crate::gpu::kernels::rope_uniform(self.gpu, "none", &[]);
        for (t, ctx) in [(1u32, 128u32), (1, 512), (1, 1024), (128, 128)] {
            let (qkv, out, st) = (
                self.f32s(t * 3 * c),
                self.f32s(t * c),
                self.step(t, ctx - t),
            );
            let reps = if t == 1 { 20 } else { 2 };
            let (name, s) = if textures {
                let r = vec![
                    st.as_entire_binding(),
                    att.as_entire_binding(),
                    qkv.as_entire_binding(),
                    Tex(&kv_tex[0]),
                    Tex(&kv_tex[1]),
                    out.as_entire_binding(),
                    inv_freq.as_entire_binding(),
                ];
                let bg = bind_resources(gpu, &p.textures().attention_texture, "bench", r);
                (
                    "attention_texture",
                    time_dispatch(
                        gpu,
                        &p.textures().attention_texture,
                        &bg,
                        (nh.div_ceil(8), t),
                        reps,
                    )?,
                )
            } else {
                let bg = bind(
                    gpu,
                    &p.attention,
                    "bench",
                    &[&st, &att, &qkv, &k_cache, &v_cache, &out, &inv_freq],
                );
                (
                    "attention",
                    time_dispatch(self.gpu, &p.attention, &bg, (nh, t), reps)?,
                )
            };
            let keys = if t == 1 { ctx as f64 } else { ctx as f64 / 2.0 };
            let bytes = 2.0 * ctx as f64 * c as f64 * 4.0;
            self.push(
                name,
                format!("T={t} context={ctx}"),
                s,
                bytes,
                4.0 * t as f64 * keys * c as f64,
            );
        }
        Ok(())
    }

    fn fused_attention(&mut self) -> Result<()> {
        use crate::gpu::kernels::{MatmulParams, bind_at};
        use wgpu::BindingResource::TextureView as Tex;
        let (gpu, p, dtype, c, nh) = (self.gpu, self.p.clone(), self.dtype, self.c, self.c / 64);
        let kv_tex = [0, 1].map(|_| {
            gpu.texture("kv", 1024, c as usize)
                .create_view(&Default::default())
        });
        // Decode's qkv projection with the attention fused in, over contexts of 1 (the projection
        // alone) to 1024 keys.
        if let Some(pipe) = (p.texture.as_ref()).and_then(|t| t.gemv_texture_attention.as_ref()) {
            let (k, n) = (c, 3 * c);
            let wbytes = (n as usize * dtype.row_bytes(k as usize)) as u64;
            let w_tex = gpu.weight_texture("w", n as usize, k as usize, dtype);
            let x_tex = gpu.texture("x", 1, k as usize);
            let [w_tex, x_tex] = [w_tex, x_tex].map(|t| t.create_view(&Default::default()));
            let (bias, x, out, att_y) = (
                self.f32s(n),
                gpu.storage_uniform("x", k as u64 * 4),
                self.f32s(n),
                self.f32s(c),
            );
            let params = MatmulParams {
                k,
                n,
                ldo: n,
                col0: 0,
                has_bias: 1,
                kv_c: c,
                ln_eps: 0.0,
                kv_w: c,
            };
            let pu = gpu.uniform("p", &params);
            let no_rope = gpu.uniform_zeroed("no_rope", 4 * crate::gpu::kernels::ROPE_FREQS as u64);
            for ctx in [1u32, 128, 512, 1024] {
                let st = self.step(1, ctx - 1);
                let r = vec![
                    (0, st.as_entire_binding()),
                    (1, pu.as_entire_binding()),
                    (2, Tex(&x_tex)),
                    (3, Tex(&w_tex)),
                    (4, bias.as_entire_binding()),
                    (5, out.as_entire_binding()),
                    (6, crate::Engine::gemv_input(&x)),
                    (9, bias.as_entire_binding()),
                    (11, Tex(&kv_tex[0])),
                    (12, Tex(&kv_tex[1])),
                    (13, att_y.as_entire_binding()),
                    (15, no_rope.as_entire_binding()),
                ];
                let bg = bind_at(gpu, pipe, "bench", r);
                let s = time_dispatch(self.gpu, pipe, &bg, (nh, 1), 20)?;
                let bytes = wbytes as f64 + 2.0 * ctx as f64 * c as f64 * 4.0;
                let flops = 2.0 * k as f64 * n as f64 + 4.0 * ctx as f64 * c as f64;
                self.push(
                    "gemv_texture_attention",
                    format!("T=1 K={k} N={n} context={ctx}"),
                    s,
                    bytes,
                    flops,
                );
            }
        }
        Ok(())
    }

    fn layernorm(&mut self) -> Result<()> {
        use crate::gpu::kernels::{LayerNormParams, bind, bind_at, wg};
        use wgpu::BindingResource::TextureView as Tex;
        let (gpu, p, c) = (self.gpu, self.p.clone(), self.c);
        // Layernorm over a 128-token prefill.
        let t = 128u32;
        let ln = gpu.uniform(
            "ln",
            &LayerNormParams {
                c,
                eps: 1e-5,
                _pad: [0; 2],
            },
        );
        let bufs = [
            &self.step(t, 0),
            &ln,
            &self.f32s(t * c),
            &self.f32s(c),
            &self.f32s(c),
            &self.f32s(t * c),
        ];
        // The layout's own layer norm: one workgroup per row, or with textures one invocation.
        let (name, pipe, groups) = match &p.texture {
            Some(tp) => (
                "layernorm_rows",
                &tp.layernorm_rows,
                t.div_ceil(wg::LAYERNORM_ROWS),
            ),
            None => ("layernorm", &p.layernorm, t),
        };
        let bg = bind(gpu, pipe, "bench", &bufs);
        let s = time_dispatch(self.gpu, pipe, &bg, (groups, 1), 10)?;
        let (ln_bytes, ln_flops) = (2.0 * 4.0 * (t * c) as f64, 8.0 * (t * c) as f64);
        self.push(name, format!("T={t} C={c}"), s, ln_bytes, ln_flops);
        // With textures, prefill's norms before a linear layer read and write textures.
        if let Some(tp) = &p.texture {
            let [x, out] = [0, 1].map(|_| {
                gpu.texture("ln", t as usize, c as usize)
                    .create_view(&Default::default())
            });
            let gain_bias = gpu.storage_uniform("gain_bias", wg::GAIN_BIAS_BYTES);
            let r = vec![
                (0, bufs[0].as_entire_binding()),
                (1, ln.as_entire_binding()),
                (6, Tex(&x)),
                (7, gain_bias.as_entire_binding()),
                (8, Tex(&out)),
            ];
            let pipe = &tp.layernorm_rows_texture;
            let bg = bind_at(gpu, pipe, "bench", r);
            let s = time_dispatch(self.gpu, pipe, &bg, (t.div_ceil(wg::LAYERNORM_ROWS), 1), 10)?;
            self.push(
                "layernorm_rows_texture",
                format!("T={t} C={c}"),
                s,
                ln_bytes,
                ln_flops,
            );
        }
        Ok(())
    }
}

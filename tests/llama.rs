//! The Llama family (Llama with GQA / MQA and llama3 scaling, Mistral with HS != C / NH, Qwen2,
//! Phi-3) against transformers: greedy continuations and KV-cache decode in both layouts, f16
//! and q8 weights (with the RMS norms folded into the decode GEMVs), tokens as transformers
//! makes them (BOS, EOS lists, add_bos_token), chat templates byte for byte, and the CLI's
//! `generate --chat` and templated `chat`.

mod common;

use std::process::{Command, Stdio};

use common::*;
use wgpt::{
    ChatTemplate, LoadOptions, Message, Model, Session, Tokenizer, WeightDtype, WeightLayout,
};

const LLAMAS: &[&str] = &[
    "llama-gqa",
    "llama3-mqa",
    "mistral-hd",
    "qwen2-tiny",
    "phi3-tiny",
];

fn load(name: &str, layout: WeightLayout, dtype: WeightDtype) -> Model {
    let opts = LoadOptions {
        layout,
        dtype,
        ..Default::default()
    };
    Model::load(gpu(), &fixture(name), &opts).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// 32 greedy tokens as transformers picks them, and decoding token by token over the KV cache
/// (rotated keys cached) gives the logits of a full recompute, in both layouts.
#[test]
fn greedy_and_cached_decode_match_transformers() {
    for name in LLAMAS {
        let e = expected(&fixture(name));
        for layout in [WeightLayout::Buffer, WeightLayout::Texture] {
            let model = load(name, layout, WeightDtype::F32);
            assert_eq!(greedy(&model, &e.prompt_ids, 32), e.greedy_ids, "{name}");
            let ids = full_sequence(&e);
            let full = Session::new(&model).unwrap().logits(&ids).unwrap();
            let mut s = Session::new(&model).unwrap();
            let mut stepped = s.logits(&ids[..5]).unwrap();
            for &t in &ids[5..] {
                stepped.extend(s.logits(&[t]).unwrap());
            }
            let diff = max_abs_diff(&full, &stepped);
            println!("{name} {layout:?}: cached decode vs full recompute {diff:.2e}");
            // Same kernels and per-element order; only the attention's key blocks differ: f32
            // rounding of logits of size ~|60|.
            assert!(diff < 1e-4, "{name} {layout:?}: {diff}");
        }
    }
}

/// f16 and q8 weights in both layouts (the texture layout folding the RMS norms into decode's
/// GEMVs): against the CPU twin on the same stored weights (only f32 summation differs), and
/// against transformers' f32 logits with GPT-2's tolerances.
#[test]
fn f16_and_q8_weights_stay_close_to_transformers() {
    for name in ["llama-gqa", "mistral-hd", "qwen2-tiny"] {
        let dir = fixture(name);
        let e = expected(&dir);
        let (_, want) = read_npy(&dir.join("logits.npy"));
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let ids = full_sequence(&e);
        for (dtype, layout) in [
            (WeightDtype::F16, WeightLayout::Texture),
            (WeightDtype::F16, WeightLayout::Buffer),
            (WeightDtype::Q8, WeightLayout::Texture),
            (WeightDtype::Q8, WeightLayout::Buffer),
        ] {
            let model = load(name, layout, dtype);
            let folded = model.layer_norms_folded();
            assert_eq!(folded, layout == WeightLayout::Texture, "{name}: fold_norm");
            let got = Session::new(&model).unwrap().logits(&ids).unwrap();
            let diff = max_abs_diff(&got, &want);
            let twin = max_abs_diff(&got, &stored_twin(name, dtype, folded, &ids));
            let g = greedy(&model, &e.prompt_ids, 32);
            let agree = g
                .iter()
                .zip(&e.greedy_ids)
                .take_while(|(a, b)| a == b)
                .count();
            println!(
                "{name} {dtype:?} {layout:?} (norms folded: {folded}): max |logit diff| {diff:.3e} of scale {scale:.1} ({:.2e} of it), {twin:.2e} from the CPU twin on the stored weights; greedy agrees for {agree}/32",
                diff / scale
            );
            // The kernels: f32 sums in another order than the twin's f64, as for f32 weights.
            assert!(
                twin < 1e-3,
                "{name} {dtype:?} {layout:?}: {twin} from the twin"
            );
            // The storage: f16 rounds each weight by up to 2^-11 (measured up to 1.45e-3 of the
            // logit scale: these fixtures' final norm gain x16 makes the logits peaky); q8 by
            // up to half a block's step (measured up to 5.0e-2, GPT-2's fixtures 1.4e-2: two
            // quantised matrices more per block, SwiGLU's product of two). Allow ~1.5x.
            let tol = match dtype {
                WeightDtype::F16 => 2.5e-3,
                _ => 7.5e-2,
            };
            assert!(diff < tol * scale, "{name} {dtype:?} {layout:?}: {diff}");
            // Top-2 margins here are 0.11-0.45 while the storage moves logits by up to ~1.8
            // (q8): the continuation may part from transformers', but not at its first token.
            assert!(agree >= 1, "{name} {dtype:?} {layout:?}: {agree}");
        }
    }
}

/// The CPU forward of `name` on its weights as stored in `dtype` (folded as the model folded
/// them): f16 rounding or q8's round trip on the matrices, vectors in f32.
fn stored_twin(name: &str, dtype: WeightDtype, folded: bool, ids: &[u32]) -> Vec<f32> {
    let dir = fixture(name);
    let cfg = wgpt::Config::from_file(&dir.join("config.json")).unwrap();
    let ckpt = wgpt::loader::Checkpoint::open(&dir).unwrap();
    let mut fold = wgpt::loader::LnFold::default();
    let host = wgpt::loader::load_weights(&ckpt, &cfg, |name, rows, cols, read| {
        let stored = |_: &str, rows, _, read: &mut wgpt::loader::ReadRows| {
            let mut v = Vec::new();
            read(0, rows, &mut v)?;
            Ok(match (rows > 1, dtype) {
                (true, WeightDtype::Q8) => wgpt::reference::q8_round_trip(&v),
                (true, WeightDtype::F16) => {
                    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
                }
                _ => v,
            })
        };
        match folded {
            true => fold.make(name, rows, cols, read, stored),
            false => stored(name, rows, cols, read),
        }
    })
    .unwrap();
    wgpt::reference::forward(&cfg, &host, ids)
}

/// Dispatches per decode token, and what each family's choices print.
#[test]
fn decode_plan_and_description() {
    let model = load("llama-gqa", WeightLayout::Texture, WeightDtype::F16);
    let s = Session::new(&model).unwrap();
    let kernels = s.kernels(1);
    println!("llama-gqa decode, f16 textures: {kernels:?}");
    // Per layer: qkv (its RMS norm folded in), kv_append (rotating the keys), attention
    // (rotating the queries), o_proj + residual, gate_up (norm folded, SwiGLU in its store),
    // down + residual; then embed, the final norm, the head and the argmax.
    assert_eq!(s.dispatches_per_token(), 6 * 2 + 4, "{kernels:?}");
    assert!(!kernels.contains(&"rope") && !kernels.contains(&"gate"));
    let d = model.config.describe();
    for part in [
        "grouped-query: 4 query heads of 16 in 2 groups of 2",
        "gated: down(SiLU(x Wg) * (x Wu))",
        "rotary (theta 10000)",
        "RMSNorm before each sublayer",
        "untied",
    ] {
        assert!(d.contains(part), "{part:?} not in {d}");
    }
}

/// BOS from the post-processor (llama3-mqa) or from tokenizer_config.json's add_bos_token; EOS
/// lists from config.json / generation_config.json.
#[test]
fn tokens_as_transformers_makes_them() {
    let dir = fixture("llama3-mqa");
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let e = expected(&dir);
    assert_eq!(tok.encode(&e.prompt).unwrap(), e.prompt_ids);
    assert_eq!(e.prompt_ids[0], 384, "<|begin_of_text|>");
    let cfg = wgpt::Config::from_file(&dir.join("config.json")).unwrap();
    assert_eq!(cfg.eos_token_ids, [387, 383]);

    // A tokenizer.json that adds nothing, and add_bos_token asking for BOS.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("gpt2-tiny").join("tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .unwrap();
    let plain = Tokenizer::from_dir(tmp.path())
        .unwrap()
        .encode("hi")
        .unwrap();
    let config = r#"{"add_bos_token": true, "bos_token": {"content": "<|endoftext|>"}}"#;
    std::fs::write(tmp.path().join("tokenizer_config.json"), config).unwrap();
    let tok = Tokenizer::from_dir(tmp.path()).unwrap();
    assert_eq!(tok.encode("hi").unwrap(), [&[383][..], &plain].concat());
    assert_eq!(
        tok.encode_plain("hi").unwrap(),
        plain,
        "no BOS mid-sequence"
    );
    std::fs::write(
        tmp.path().join("tokenizer_config.json"),
        r#"{"add_bos_token": true, "bos_token": "<s>"}"#,
    )
    .unwrap();
    let err = Tokenizer::from_dir(tmp.path()).err().unwrap().to_string();
    assert!(err.contains("bos_token"), "{err}");
}

/// Each chat.json case (made by transformers' apply_chat_template) renders byte for byte and
/// encodes to the same ids: a ChatML template in tokenizer_config.json (Qwen2.5's, with its
/// default system turn) and a Llama-3 one in chat_template.jinja using bos_token and `trim`.
#[test]
fn chat_templates_render_as_transformers() {
    for name in ["qwen2-tiny", "llama3-mqa"] {
        let dir = fixture(name);
        let tok = Tokenizer::from_dir(&dir).unwrap();
        let template = ChatTemplate::from_dir(&dir).unwrap().expect("a template");
        let chat: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("chat.json")).unwrap()).unwrap();
        for case in chat["cases"].as_array().unwrap() {
            let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
            let prompt = case["add_generation_prompt"].as_bool().unwrap();
            let text = template.render(&messages, prompt).unwrap();
            assert_eq!(
                text,
                case["text"].as_str().unwrap(),
                "{name} {}",
                case["name"]
            );
            let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(
                tok.encode_plain(&text).unwrap(),
                ids,
                "{name} {}",
                case["name"]
            );
        }
        println!("{name}: {} cases", chat["cases"].as_array().unwrap().len());
    }
    // A base model has none.
    assert!(
        ChatTemplate::from_dir(&fixture("llama-gqa"))
            .unwrap()
            .is_none()
    );
}

fn wgpt_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wgpt"))
}

/// `generate --chat` renders one user turn (after `--system`'s) and stops at the end of turn;
/// `chat` keeps the conversation in the cache and runs only the new suffix each turn.
#[test]
fn cli_chat_uses_the_template() {
    // qwen2-tiny with a context of 256 (rotary positions: no table to grow; the fixture's 64
    // holds no more than one turn of Qwen's default system prompt).
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixture("qwen2-tiny")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    let config = std::fs::read_to_string(tmp.path().join("config.json")).unwrap();
    let config = config.replace(
        "\"max_position_embeddings\": 64",
        "\"max_position_embeddings\": 256",
    );
    std::fs::write(tmp.path().join("config.json"), config).unwrap();
    let dir = tmp.path().to_path_buf();
    let chat: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("chat.json")).unwrap()).unwrap();
    assert!(
        wgpt::Config::from_file(&dir.join("config.json"))
            .unwrap()
            .n_positions
            == 256
    );
    let ids_of = |case: &str| -> Vec<u64> {
        let c = chat["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == case)
            .unwrap();
        serde_json::from_value(c["ids"].clone()).unwrap()
    };
    for (system, case) in [(None, "user"), (Some("You are terse."), "system_user")] {
        let mut cmd = wgpt_cmd();
        cmd.args([
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--chat",
            "-n",
            "8",
            "--json",
        ]);
        cmd.args(["--prompt", "Why is the sky blue?"]);
        if let Some(s) = system {
            cmd.args(["--system", s]);
        }
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        let out = String::from_utf8(o.stdout).unwrap();
        let json: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        let prompt: Vec<u64> = serde_json::from_value(json["prompt_ids"].clone()).unwrap();
        assert_eq!(prompt, ids_of(case), "{case}");
    }
    // A base model has no template: --chat says so.
    let o = wgpt_cmd()
        .args([
            "generate",
            "--model",
            fixture("llama-gqa").to_str().unwrap(),
        ])
        .args(["--chat", "--prompt", "hi"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no chat template"),
        "{err}"
    );

    // Two turns through `wgpt chat`: the second prefill is the new suffix only.
    let mut child = wgpt_cmd()
        .args([
            "chat",
            "--model",
            dir.to_str().unwrap(),
            "--temperature",
            "0",
            "-n",
            "6",
        ])
        .args(["--system", "You are terse."])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let stdin = child.stdin.as_mut().unwrap();
    stdin
        .write_all(b"Why is the sky blue?\nAnd sunsets?\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let prefills: Vec<usize> = err
        .lines()
        .filter_map(|l| l.split("prefill ").nth(1))
        .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
        .collect();
    println!("chat prefills: {prefills:?}\n{err}");
    assert_eq!(prefills.len(), 2, "{err}");
    assert_eq!(prefills[0], ids_of("system_user").len());
    // The second turn renders the whole conversation again; the cache already holds the first
    // turn, so only its reply's end and the new turn run (far fewer than the whole).
    let whole = ids_of("multi_turn").len();
    assert!(prefills[1] < whole / 2, "{prefills:?} of {whole}");
}

/// A device with only the limits wgpt asks for (four storage buffers and three uniforms per
/// kernel): the Llama kernels fit them (rotary frequencies in a uniform), the tokens are
/// transformers'.
#[test]
fn runs_within_the_required_limits() {
    let (device, queue) = app_device();
    let engine = wgpt::Engine::from_device(device, queue).unwrap();
    let dir = fixture("llama3-mqa");
    let e = expected(&dir);
    for fuse in [wgpt::Fusions::all(), wgpt::Fusions::none()] {
        let opts = LoadOptions {
            layout: WeightLayout::Buffer,
            fuse: Some(fuse),
            ..Default::default()
        };
        let model = Model::load(engine.clone(), &dir, &opts).unwrap();
        assert_eq!(greedy(&model, &e.prompt_ids, 16), e.greedy_ids[..16]);
    }
}

/// `wgpt bench`'s Llama shapes build with random weights made on the GPU (their rotary
/// frequencies computed, not random) and decode in both layouts.
#[test]
fn bench_shapes_run() {
    for name in ["smollm2-135m", "qwen2.5-0.5b", "llama-3.2-1b"] {
        let cfg = wgpt::bench::shape(name).unwrap();
        assert_eq!(
            cfg.model_type(),
            if name.starts_with("qwen") {
                "qwen2"
            } else {
                "llama"
            }
        );
        // Two layers and a short context keep it small; the widths are the model's.
        let cfg = wgpt::Config {
            n_layer: 2,
            n_positions: 64,
            ..cfg
        };
        for layout in [WeightLayout::Buffer, WeightLayout::Texture] {
            let opts = LoadOptions {
                layout,
                dtype: WeightDtype::Q8,
                ..Default::default()
            };
            let model = Model::random(gpu(), cfg.clone(), &opts, 7).unwrap();
            let mut s = Session::new(&model).unwrap();
            let logits = s.logits(&[1, 2, 3]).unwrap();
            assert!(logits.iter().all(|x| x.is_finite()), "{name} {layout:?}");
            let mut next = wgpt::reference::argmax(&logits[logits.len() - cfg.vocab_size..]);
            for _ in 0..3 {
                next = s.next_token(&[next], wgpt::Pick::Greedy).unwrap();
            }
            println!(
                "{name} {layout:?}: {} dispatches per token",
                s.dispatches_per_token()
            );
        }
    }
}

/// A copy of fixture `name` in a temporary folder, for breaking one file of it.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixture(name)).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    tmp
}

/// `wgpt args...` fails with exit code 1, no panic, and every needle in its stderr.
fn fails_with(args: &[&str], needles: &[&str]) {
    let o = wgpt_cmd().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {n:?} not in {err}");
    }
}

/// Bad Llama-family folders and chat templates: one clear error naming the file or tensor.
#[test]
fn bad_llama_folders_and_templates() {
    // A template that raises, one that does not parse, tokenizer_config.json that is not JSON.
    let tmp = copy_fixture("qwen2-tiny");
    let d = tmp.path().to_str().unwrap().to_string();
    let chat = ["generate", "--model", &d, "--chat", "--prompt", "hi"];
    let config = |template: &str| {
        let v = serde_json::json!({"chat_template": template, "eos_token": "<|im_end|>"});
        std::fs::write(tmp.path().join("tokenizer_config.json"), v.to_string()).unwrap();
    };
    config("{{ raise_exception('System role not supported') }}");
    fails_with(
        &chat,
        &["tokenizer_config.json", "System role not supported"],
    );
    config("{% for m in messages %}");
    fails_with(&chat, &["tokenizer_config.json", "chat template"]);
    std::fs::write(
        tmp.path().join("tokenizer_config.json"),
        "{\"chat_template\": ",
    )
    .unwrap();
    fails_with(&chat, &["tokenizer_config.json"]);

    // A key projection of the wrong shape (config.json says 2 KV heads, the weights 4).
    let tmp = copy_fixture("llama-gqa");
    let d = tmp.path().to_str().unwrap().to_string();
    let config = std::fs::read_to_string(tmp.path().join("config.json")).unwrap();
    let wrong = config.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 4");
    std::fs::write(tmp.path().join("config.json"), wrong).unwrap();
    let generate = ["generate", "--model", &d, "--prompt", "hi", "-n", "2"];
    fails_with(&generate, &["layers.0.self_attn.k_proj.weight", "shape"]);
    // Rotary scaling wgpt does not compute.
    let yarn = config.replace(
        "\"rope_type\": \"default\"",
        "\"rope_type\": \"yarn\", \"factor\": 4.0",
    );
    std::fs::write(tmp.path().join("config.json"), yarn).unwrap();
    fails_with(&generate, &["config.json", "yarn"]);
    // A missing tensor names itself.
    std::fs::write(tmp.path().join("config.json"), &config).unwrap();
    let st = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let renamed = header.replace(
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.1.mlp.upp_proj.weight",
    );
    assert_eq!(renamed.len(), header.len() + 1);
    let mut out = ((n + 1) as u64).to_le_bytes().to_vec();
    out.extend(renamed.as_bytes());
    out.extend(&bytes[8 + n..]);
    std::fs::write(&st, out).unwrap();
    fails_with(&generate, &["layers.1.mlp.up_proj.weight", "missing"]);
}

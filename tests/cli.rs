//! The `wgpt` binary end to end: generation and logits against the fixtures, `info`, and every
//! kind of bad input giving one clear message, a non-zero exit and no panic.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn wgpt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgpt"))
        .args(args)
        .env_remove("WGPT_ADAPTER")
        .output()
        .expect("run wgpt")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `args`, expects failure with a message containing every one of `needles`.
fn fails_with(args: &[&str], needles: &[&str]) {
    let o = wgpt(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "{args:?} should fail; stderr: {err}");
    assert_eq!(
        o.status.code(),
        Some(1),
        "{args:?}: exit code; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for n in needles {
        assert!(
            err.contains(n),
            "{args:?}: {n:?} not in error message:\n{err}"
        );
    }
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or("");
    println!("{line}");
}

/// A copy of a fixture folder that a test may break.
fn copy_of(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture(name).join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn p(d: &Path) -> &str {
    d.to_str().unwrap()
}

#[test]
fn generate_json_matches_transformers_greedy() {
    let dir = fixture("gpt2-tiny");
    let e = expected(&dir);
    let n = e.greedy_ids.len().to_string();
    let o = wgpt(&[
        "generate",
        "--model",
        p(&dir),
        "--prompt",
        &e.prompt,
        "-n",
        &n,
        "--ignore-eos",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    let last = out.lines().last().unwrap();
    let j: serde_json::Value = serde_json::from_str(last).unwrap();
    let ids: Vec<u32> = j["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, e.greedy_ids);
    assert!(j["prefill_tok_s"].as_f64().unwrap() > 0.0);
    assert!(j["decode_tok_s"].as_f64().unwrap() > 0.0);
    assert!(j["text"].is_string());
    // The stream printed the prompt and then the text.
    assert!(out.starts_with(&e.prompt));
    assert!(stderr(&o).contains("decode"), "summary on stderr");
}

#[test]
fn logits_npy_matches_transformers() {
    let dir = fixture("gpt2-odd");
    let e = expected(&dir);
    let mut ids = e.prompt_ids.clone();
    ids.extend(&e.greedy_ids[..e.greedy_ids.len() - 1]);
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("l.npy");
    let o = wgpt(&[
        "logits",
        "--model",
        p(&dir),
        "--ids",
        &list.join(","),
        "--out",
        p(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (shape, got) = read_npy(&out);
    let (want_shape, want) = read_npy(&dir.join("logits.npy"));
    assert_eq!(shape, want_shape);
    // As in tests/model.rs: logits up to |66|, f32 rounding ~1e-5.
    assert!(max_abs_diff(&got, &want) < 1e-3);

    // --prompt tokenizes with the folder's tokenizer.json.
    let o = wgpt(&[
        "logits",
        "--model",
        p(&dir),
        "--prompt",
        &e.prompt,
        "--out",
        p(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (shape, got) = read_npy(&out);
    assert_eq!(shape, vec![e.prompt_ids.len() as u64, 384]);
    let v = 384;
    assert!(max_abs_diff(&got, &want[..e.prompt_ids.len() * v]) < 1e-3);
}

#[test]
fn info_lists_adapters() {
    let o = wgpt(&["info"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    for field in [
        "[0]",
        "backend",
        "device type",
        "driver",
        "max_storage_buffer_binding_size",
        "shader-f16",
    ] {
        assert!(out.contains(field), "{field} missing from:\n{out}");
    }
    fails_with(
        &["info", "--adapter", "no-such-gpu-xyz"],
        &["matches no adapter", "wgpt info"],
    );
    // --model names the family and its variant choices.
    let o = wgpt(&["info", "--model", p(&fixture("opt-postln"))]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    for choice in [
        "family       opt",
        "LayerNorm after each residual add",
        "down(ReLU(x Wup))",
        "64-wide embeddings projected in and out",
        "chat         none",
    ] {
        assert!(out.contains(choice), "{choice:?} not in {out}");
    }
}

/// OPT and XGLM folders generate through the CLI exactly as GPT-2 ones: transformers' greedy.
#[test]
fn other_families_generate() {
    for name in ["opt-tiny", "xglm-tiny"] {
        let e = expected(&fixture(name));
        let ids: Vec<String> = e.prompt_ids.iter().map(u32::to_string).collect();
        let out = tempfile::tempdir().unwrap();
        let npy = out.path().join("l.npy");
        let o = wgpt(&[
            "logits",
            "--model",
            p(&fixture(name)),
            "--ids",
            &ids.join(","),
            "--out",
            p(&npy),
        ]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let (_, got) = read_npy(&npy);
        let v = got.len() / ids.len();
        let last = &got[got.len() - v..];
        let best = (0..v).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap();
        assert_eq!(best as u32, e.greedy_ids[0], "{name}");
    }
}

#[test]
fn bad_folders_give_clear_errors() {
    fails_with(
        &["generate", "--model", "/no/such/folder", "--prompt", "hi"],
        &["/no/such/folder", "model folder not found"],
    );

    let d = copy_of("gpt2-tiny");
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    fails_with(
        &[
            "logits",
            "--model",
            p(d.path()),
            "--ids",
            "1,2",
            "--out",
            "/tmp/x.npy",
        ],
        &["config.json"],
    );

    let d = copy_of("gpt2-tiny");
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    fails_with(
        &[
            "logits",
            "--model",
            p(d.path()),
            "--ids",
            "1,2",
            "--out",
            "/tmp/x.npy",
        ],
        &["model.safetensors"],
    );

    let d = copy_of("gpt2-tiny");
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    fails_with(
        &["generate", "--model", p(d.path()), "--prompt", "hi"],
        &["tokenizer.json", "not found"],
    );

    let d = copy_of("gpt2-tiny");
    std::fs::write(d.path().join("tokenizer.json"), "{ not json").unwrap();
    fails_with(
        &["generate", "--model", p(d.path()), "--prompt", "hi"],
        &["tokenizer.json", "cannot load tokenizer"],
    );

    let d = copy_of("gpt2-tiny");
    std::fs::write(
        d.path().join("config.json"),
        "{\"model_type\": \"gpt2\", \"n_embd\": ",
    )
    .unwrap();
    fails_with(
        &[
            "logits",
            "--model",
            p(d.path()),
            "--ids",
            "1",
            "--out",
            "/tmp/x.npy",
        ],
        &["config.json", "malformed JSON"],
    );

    let d = copy_of("gpt2-tiny");
    let cfg = std::fs::read_to_string(d.path().join("config.json"))
        .unwrap()
        .replace("\"gpt2\"", "\"mamba\"");
    std::fs::write(d.path().join("config.json"), cfg).unwrap();
    fails_with(
        &[
            "logits",
            "--model",
            p(d.path()),
            "--ids",
            "1",
            "--out",
            "/tmp/x.npy",
        ],
        &["unsupported model_type \"mamba\"", "supports: gpt2"],
    );

    let d = copy_of("gpt2-tiny");
    let bytes = std::fs::read(d.path().join("model.safetensors")).unwrap();
    std::fs::write(
        d.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    fails_with(
        &[
            "logits",
            "--model",
            p(d.path()),
            "--ids",
            "1",
            "--out",
            "/tmp/x.npy",
        ],
        &["model.safetensors", "truncated"],
    );
}

#[test]
fn bad_tensors_give_clear_errors() {
    let (v, n_ctx, c, l, nh, inner) = (50, 16, 8, 1, 2, 32);
    let make = |tensors: Vec<RawTensor>| {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("config.json"),
            gpt2_config_json(v, n_ctx, c, l, nh, inner),
        )
        .unwrap();
        write_safetensors(d.path(), &tensors);
        d
    };
    let good = random_gpt2(v, n_ctx, c, l, inner, 1);
    let out = tempfile::tempdir().unwrap();
    let npy = out.path().join("x.npy");
    let run = |d: &tempfile::TempDir, needles: &[&str]| {
        let args = [
            "logits",
            "--model",
            p(d.path()),
            "--ids",
            "1,2",
            "--out",
            p(&npy),
        ];
        if needles.is_empty() {
            let o = wgpt(&args);
            assert!(o.status.success(), "{}", stderr(&o));
        } else {
            fails_with(&args, needles);
        }
    };

    // The untouched synthetic checkpoint loads.
    run(&make(good.clone()), &[]);

    // Wrong shape: the tensor is named, with both shapes.
    let mut t = good.clone();
    let i = t
        .iter()
        .position(|x| x.0 == "transformer.h.0.mlp.c_fc.weight")
        .unwrap();
    t[i] = f32_tensor(
        "transformer.h.0.mlp.c_fc.weight",
        &[c, inner - 1],
        &vec![0.0; c * (inner - 1)],
    );
    run(
        &make(t),
        &["h.0.mlp.c_fc.weight", "shape [8, 31]", "[8, 32]"],
    );

    // Wrong dtype.
    let mut t = good.clone();
    let i = t
        .iter()
        .position(|x| x.0 == "transformer.wpe.weight")
        .unwrap();
    t[i].1 = safetensors::Dtype::I32;
    run(&make(t), &["wpe.weight", "dtype I32"]);

    // A missing tensor.
    let t: Vec<RawTensor> = good
        .iter()
        .filter(|x| x.0 != "transformer.ln_f.bias")
        .cloned()
        .collect();
    run(&make(t), &["ln_f.bias", "missing"]);
}

#[test]
fn bad_prompts_and_options_give_clear_errors() {
    let dir = fixture("gpt2-tiny");
    let m = p(&dir);
    fails_with(
        &["generate", "--model", m, "--prompt", ""],
        &["prompt is empty"],
    );
    // n_positions is 64 here.
    fails_with(
        &[
            "generate",
            "--model",
            m,
            "--prompt",
            "The lazy dog sat in the sun",
            "-n",
            "60",
        ],
        &["the context holds 64", "--max-tokens"],
    );
    fails_with(
        &[
            "generate",
            "--model",
            m,
            "--prompt",
            "hi",
            "--adapter",
            "no-such-gpu-xyz",
        ],
        &["matches no adapter"],
    );
    fails_with(
        &[
            "generate",
            "--model",
            m,
            "--prompt",
            "hi",
            "--temperature=-1",
        ],
        &["--temperature"],
    );
    fails_with(
        &["generate", "--model", m, "--prompt", "hi", "--top-p=1.5"],
        &["--top-p"],
    );
    fails_with(
        &["generate", "--model", m, "--prompt", "hi", "--min-p=1"],
        &["--min-p"],
    );
    fails_with(
        &[
            "generate",
            "--model",
            m,
            "--prompt",
            "hi",
            "--repeat-penalty=0",
        ],
        &["--repeat-penalty"],
    );
    fails_with(
        &[
            "logits",
            "--model",
            m,
            "--ids",
            "1,999",
            "--out",
            "/tmp/x.npy",
        ],
        &["token id 999", "vocab_size = 384"],
    );
    let long: Vec<String> = (0..65).map(|i| (i % 300).to_string()).collect();
    fails_with(
        &[
            "logits",
            "--model",
            m,
            "--ids",
            &long.join(","),
            "--out",
            "/tmp/x.npy",
        ],
        &["context is full", "n_positions = 64"],
    );
}

/// `--dtype q8` generates (agreement with transformers is measured in tests/model.rs); widths
/// that are not whole q8 blocks, and unknown dtypes, are clear errors.
#[test]
fn q8_dtype_generates_and_refuses_odd_widths() {
    let dir = fixture("gpt2-tiny");
    let e = expected(&dir);
    let o = wgpt(&[
        "generate",
        "--model",
        p(&dir),
        "--prompt",
        &e.prompt,
        "-n",
        "8",
        "--ignore-eos",
        "--json",
        "--dtype",
        "q8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    let j: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(j["ids"].as_array().unwrap().len(), 8);
    let odd = fixture("gpt2-odd");
    fails_with(
        &[
            "generate",
            "--model",
            p(&odd),
            "--prompt",
            "hi",
            "--dtype",
            "q8",
        ],
        &["n_embd (60)", "multiples of 32", "--dtype f16"],
    );
    // A usage error (clap's exit code 2).
    let o = wgpt(&[
        "generate",
        "--model",
        p(&dir),
        "--prompt",
        "hi",
        "--dtype",
        "q3",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("f32, f16, q8, q6, q5, q4, q5h or q4h"),
        "{}",
        stderr(&o)
    );
}

/// `--top N` prints, on stderr, the N most likely tokens at each step; in greedy mode the first
/// is the token generated.
#[test]
fn generate_top_candidates() {
    let dir = fixture("gpt2-tiny");
    let e = expected(&dir);
    let o = wgpt(&[
        "generate",
        "--model",
        p(&dir),
        "--prompt",
        &e.prompt,
        "-n",
        "5",
        "--ignore-eos",
        "--top",
        "3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.trim_start().starts_with("[top 3]"))
        .collect();
    assert_eq!(lines.len(), 5, "{err}");
    assert!(
        lines.iter().all(|l| l.matches(" | ").count() == 2),
        "{lines:?}"
    );
    let out = String::from_utf8(o.stdout).unwrap();
    let j: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let ids: Vec<u32> = j["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(
        ids,
        e.greedy_ids[..5],
        "--top must not change what is generated"
    );
    // Out of range: a usage error from the argument parser (exit code 2), naming the limit.
    let o = wgpt(&[
        "generate",
        "--model",
        p(&dir),
        "--prompt",
        "hi",
        "--top",
        "65",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("0..=64"), "{}", stderr(&o));
}

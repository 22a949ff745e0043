//! The default model of `assets/default`: what ships (sizes, config, tensors, tokenizer), that the
//! binary carries it (no --model needed), and that it writes stable, mostly-word text.

mod common;

use std::path::Path;
use std::process::Command;

use wgpt::loader::Checkpoint;

fn assets() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/default")
}

#[test]
fn shipped_model_invariants() {
    let dir = assets();
    // At most 20 MB on disk, all files together.
    let bytes: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(bytes <= 20_000_000, "assets/default is {bytes} bytes");

    let cfg = wgpt::Config::from_file(&dir.join("config.json")).unwrap();
    assert_eq!(
        (
            cfg.n_layer,
            cfg.n_embd,
            cfg.n_head,
            cfg.vocab_size,
            cfg.n_positions
        ),
        (4, 256, 8, 4096, 256)
    );
    assert_eq!(cfg.n_inner, 1024);
    assert_eq!(cfg.eos_token_ids, [4095]);

    // The tensors transformers saves for a GPT2LMHeadModel with a tied head, f32.
    let ckpt = Checkpoint::open(&dir).unwrap();
    assert!(!ckpt.explicit_head(), "the head is tied to wte");
    let (c, v, n) = (256, 4096, 256);
    ckpt.check("wte.weight", &[v, c]).unwrap();
    ckpt.check("wpe.weight", &[n, c]).unwrap();
    for l in 0..4 {
        ckpt.check(&format!("h.{l}.attn.c_attn.weight"), &[c, 3 * c])
            .unwrap();
        ckpt.check(&format!("h.{l}.mlp.c_fc.weight"), &[c, 4 * c])
            .unwrap();
    }
    let host = wgpt::loader::load_host_weights(&ckpt, &cfg).unwrap();
    let params: usize = host.all().map(Vec::len).sum();
    assert_eq!(params, 4_273_664, "parameters, as assets/README.md says");
    assert!(host.all().flatten().all(|x| x.is_finite()));

    // Tokenizer: 4096 entries, <|endoftext|> last, byte-level round trip.
    let tok = wgpt::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    assert_eq!(tok.vocab_size(), 4096);
    assert_eq!(tok.token_id("<|endoftext|>"), Some(4095));
    for text in [
        "The borrow checker rejects `&mut x` twice.",
        "fn main() {\n    println!(\"héllo, wörld 🦀\");\n}",
        "  leading spaces, tabs\tand ünïcödé ✓",
    ] {
        let ids = tok.encode(text).unwrap();
        assert!(ids.iter().all(|&i| i < 4095), "{text:?}");
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
    // Common words of the training text are single tokens.
    for w in [" the", " borrow", " Rust", " function"] {
        assert_eq!(tok.encode(w).unwrap().len(), 1, "{w:?}");
    }
}

#[cfg(feature = "default-model")]
#[test]
fn embedded_model_is_the_shipped_one() {
    let dir = assets();
    let d = wgpt::default_model::WEIGHTS;
    assert_eq!(d, std::fs::read(dir.join("model.safetensors")).unwrap());
    assert_eq!(
        wgpt::default_model::TOKENIZER_JSON,
        std::fs::read(dir.join("tokenizer.json")).unwrap()
    );
    assert_eq!(
        wgpt::default_model::config().unwrap(),
        wgpt::Config::from_file(&dir.join("config.json")).unwrap()
    );
    // The same logits from the embedded bytes as from the folder.
    let gpu = common::gpu();
    let a = wgpt::default_model::load(gpu.clone(), &Default::default()).unwrap();
    let b = wgpt::Model::load(gpu, &dir, &Default::default()).unwrap();
    let ids = wgpt::default_model::tokenizer()
        .unwrap()
        .encode("Ownership is")
        .unwrap();
    let la = wgpt::Session::new(&a).unwrap().logits(&ids).unwrap();
    let lb = wgpt::Session::new(&b).unwrap().logits(&ids).unwrap();
    assert_eq!(la, lb);
}

fn generate(args: &[&str]) -> String {
    // Run from elsewhere: the binary must not need the source tree to find its model.
    let o = Command::new(env!("CARGO_BIN_EXE_wgpt"))
        .arg("generate")
        .args(args)
        .current_dir(std::env::temp_dir())
        .env_remove("WGPT_ADAPTER")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{args:?}: {err}");
    String::from_utf8(o.stdout).unwrap()
}

/// Share of whitespace-separated pieces that are words: letters, maybe an apostrophe inside,
/// maybe punctuation around.
fn word_share(text: &str) -> f64 {
    let pieces: Vec<&str> = text.split_whitespace().collect();
    let words = pieces
        .iter()
        .filter(|p| {
            let w = p.trim_matches(|c: char| c.is_ascii_punctuation());
            !w.is_empty() && w.chars().all(|c| c.is_alphabetic() || c == '\'')
        })
        .count();
    words as f64 / pieces.len().max(1) as f64
}

#[test]
fn default_model_generates_stable_words() {
    let args = [
        "--prompt",
        "The borrow checker",
        "--temperature",
        "0.7",
        "--seed",
        "1",
        "-n",
        "48",
    ];
    let a = generate(&args);
    let b = generate(&args);
    assert_eq!(a, b, "same seed, same adapter: same text");
    let share = word_share(&a);
    println!("{a}\nwords: {:.0}%", 100.0 * share);
    assert!(a.starts_with("The borrow checker"));
    assert!(a.len() > 100, "{a:?}");
    assert!(share >= 0.7, "only {:.0}% words: {a:?}", 100.0 * share);

    // Greedy decoding is what transformers computes (assets/README.md), on any adapter.
    let greedy = generate(&["--prompt", "The Rust programming language", "-n", "12"]);
    assert!(
        greedy.starts_with("The Rust programming language.\n- Rust language language."),
        "{greedy:?}"
    );
}

//! Replays the fuzz corpus (`fuzz/corpus/<target>/`: seeds from the fixtures) and every
//! regression input (`fuzz/regressions/<target>/`: inputs that once crashed, hung or were
//! mishandled) through the same entry points the cargo-fuzz targets call (`wgpt::fuzz`), without
//! libFuzzer: none may panic. The long fuzz runs themselves are not part of the test suite.

mod common;

use std::path::Path;

use wgpt::{Config, Tokenizer};

fn inputs(kind: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

#[test]
fn corpus_and_regressions_replay_without_panics() {
    let cfg = Config::from_file(&common::fixture("gpt2-bf16/config.json")).unwrap();
    let tok = Tokenizer::from_file(&common::fixture("gpt2-tiny/tokenizer.json")).unwrap();
    let mut seeds = 0;
    for target in wgpt::fuzz::TARGETS {
        let corpus = inputs("corpus", target);
        assert!(!corpus.is_empty(), "fuzz/corpus/{target} has no seeds");
        seeds += corpus.len();
        for (name, data) in corpus.iter().chain(&inputs("regressions", target)) {
            let run = || match *target {
                "config" => wgpt::fuzz::config(data),
                "checkpoint" => wgpt::fuzz::checkpoint(&cfg, data),
                "index" => wgpt::fuzz::index(data),
                "tokenizer" => wgpt::fuzz::tokenizer(data),
                "prompt" => wgpt::fuzz::prompt(&tok, data),
                "gguf" => wgpt::fuzz::gguf(data),
                other => panic!("no replay for fuzz target {other}"),
            };
            let t0 = std::time::Instant::now();
            if std::panic::catch_unwind(run).is_err() {
                panic!("{name} panics in wgpt::fuzz::{target}");
            }
            // A hang in the fuzzer is an input taking seconds; these are all small.
            assert!(
                t0.elapsed().as_secs() < 10,
                "{name} takes {:?}",
                t0.elapsed()
            );
        }
    }
    assert!(seeds >= 5);
}

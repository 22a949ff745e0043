//! Fuzzes wgpt::fuzz::prompt (see src/fuzz.rs) through the gpt2-tiny fixture's tokenizer.
#![no_main]

use std::sync::LazyLock;

static TOKENIZER: LazyLock<wgpt::Tokenizer> = LazyLock::new(|| {
    let json = include_bytes!("../../tests/fixtures/gpt2-tiny/tokenizer.json");
    wgpt::Tokenizer::from_bytes(json).expect("fixture tokenizer")
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgpt::fuzz::prompt(&TOKENIZER, data));

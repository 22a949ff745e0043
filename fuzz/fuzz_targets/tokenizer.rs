//! Fuzzes wgpt::fuzz::tokenizer (see src/fuzz.rs).
#![no_main]

use std::sync::Once;

static QUIET: Once = Once::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // wgpt catches the tokenizers crate's panics on malformed files (Tokenizer::from_bytes);
    // libFuzzer's hook would abort on them first. A panic that escapes wgpt still reaches the
    // harness's catch_unwind and is reported as a crash.
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    wgpt::fuzz::tokenizer(data)
});
